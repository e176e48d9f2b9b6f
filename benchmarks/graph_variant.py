"""A hand-edited training graph against the one flowgrad compiles (and PyTorch), side by side.

To try a rewrite before writing it into the compiler: compile the spec, edit the training
graph into a variant with the same inputs and outputs, and time both as `flowgrad bench`
times a step (the spec's real data and initial state, IO binding), each in a fresh process,
alternating for several rounds:

    flowgrad compile models/char_lstm.yaml -o build      # then edit build/train.onnx into v.onnx
    python benchmarks/graph_variant.py models/char_lstm.yaml v.onnx --rounds 8 --torch char_lstm

It prints each round's three times and the medians of the paired ratios (variant / compiled,
and each over PyTorch with --torch). Pair only what ran in one round: a machine shared with
other load moves every time between rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def time_step(spec_path: str, overrides: list[str], variant: str | None, steps: int, threads: int) -> float:
    """Median ms of a training step of the spec, its train graph replaced by `variant` if given."""
    sys.path.insert(0, ROOT)
    import onnx

    from runtime import bench as B
    from spec import load_spec

    spec = load_spec(spec_path, overrides)
    if variant:
        compiled = B.compile_spec

        def with_variant(spec, dtype=None):
            cm = compiled(spec, dtype)
            model = onnx.load(variant)
            train = cm.graphs["train"]
            for what in ("input", "output"):
                want = [v.name for v in getattr(train.model.graph, what)]
                got = [v.name for v in getattr(model.graph, what)]
                if got != want:
                    raise SystemExit(f"{variant}: its {what}s {got} are not the compiled graph's {want}")
            train.model = model
            return cm

        B.compile_spec = with_variant
    return B.bench(spec, steps=steps, threads=threads, device="cpu")["step_ms"]


def _run(cmd: list[str]) -> float:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["step_ms"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("variant", help="an ONNX training graph with the compiled train graph's inputs and outputs")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="a spec override, as flowgrad's --set")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch", metavar="MODEL", help="also time benchmarks/torch_ref.py MODEL in each round")
    ap.add_argument("--time-one", choices=["compiled", "variant"], help=argparse.SUPPRESS)  # a round's process
    args = ap.parse_args(argv)
    if args.time_one:
        ms = time_step(args.spec, args.overrides, args.variant if args.time_one == "variant" else None,
                       args.steps, args.threads)
        print(json.dumps({"step_ms": ms}))
        return
    own = [sys.executable, os.path.abspath(__file__), args.spec, os.path.abspath(args.variant),
           "--steps", str(args.steps), "--threads", str(args.threads)] + [f"--set={o}" for o in args.overrides]
    torch_cmd = [sys.executable, os.path.join(HERE, "torch_ref.py"), args.torch, "--steps", str(args.steps),
                 "--threads", str(args.threads)] if args.torch else None
    ratios: dict[str, list[float]] = {"variant/compiled": [], "compiled/torch": [], "variant/torch": []}
    print(f"{'round':>5}{'compiled ms':>13}{'variant ms':>12}" + (f"{'torch ms':>10}" if torch_cmd else ""))
    for r in range(args.rounds):
        base, var = _run(own + ["--time-one", "compiled"]), _run(own + ["--time-one", "variant"])
        ratios["variant/compiled"].append(var / base)
        line = f"{r + 1:>5}{base:>13.3f}{var:>12.3f}"
        if torch_cmd:
            ref = _run(torch_cmd)
            ratios["compiled/torch"].append(base / ref)
            ratios["variant/torch"].append(var / ref)
            line += f"{ref:>10.3f}"
        print(line, flush=True)
    for name, values in ratios.items():
        if values:
            print(f"{name}: median {statistics.median(values):.3f} (rounds {min(values):.3f}-{max(values):.3f})")


if __name__ == "__main__":
    main()
