"""What hoisting changes: median training-step time of a recurrent spec with
the state-independent work moved out of its loops (the default) and without,
measured alternately in this process.

    python benchmarks/hoisting.py models/char_lstm.yaml --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compiler.recurrent as recurrent  # noqa: E402
from runtime.bench import bench  # noqa: E402
from spec import load_spec  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    spec = load_spec(args.spec)
    times = {True: [], False: []}
    nodes = {}
    for _ in range(args.rounds):
        for hoist in (True, False):
            recurrent.HOIST = hoist
            r = bench(spec, steps=args.steps, threads=args.threads)
            times[hoist].append(r["step_ms"])
            nodes[hoist] = r["nodes"]["train"]
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"{spec.name}: median step {on:.2f} ms hoisted, {off:.2f} ms not hoisted (ratio {on / off:.2f}); "
          f"training graph nodes {nodes[True]} vs {nodes[False]}")


if __name__ == "__main__":
    main()
