"""Compile time: every spec in models/, and a synthetic deep MLP at growing
depths (how compile time grows with depth).

    python benchmarks/compile_time.py --depths 10 50 100 200
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from compiler.training import compile_spec  # noqa: E402
from spec import load_spec, spec_from_dict  # noqa: E402


def deep_mlp(depth: int, width: int = 64) -> dict:
    graph = {"h0": "x"}
    for i in range(1, depth + 1):
        graph[f"h{i}"] = f"dense(h{i - 1}, H, act=relu)"
    graph["logits"] = f"dense(h{depth}, K)"
    return {
        "flowgrad": 1, "name": f"mlp{depth}", "dims": {"D": width, "H": width, "K": 10},
        "inputs": {"x": {"shape": ["N", "D"]}, "y": {"shape": ["N"], "dtype": "int64"}},
        "graph": graph, "loss": "cross_entropy(logits, y)",
        "outputs": {"probs": "softmax(logits)"},
        "train": {"optimizer": {"adam": {"lr": 0.001}}},
    }


def timed(spec, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        cm = compile_spec(spec)
        best = min(best, time.perf_counter() - t)
    return best, sum(g.node_count for g in cm.graphs.values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", type=int, nargs="*", default=[10, 50, 100, 200])
    args = ap.parse_args()
    for path in sorted(glob.glob(os.path.join(ROOT, "models", "*.yaml"))):
        s, n = timed(load_spec(path))
        print(f"{os.path.basename(path):28s} {s:7.3f} s  {n:6d} nodes in all graphs")
    for depth in args.depths:
        s, n = timed(spec_from_dict(deep_mlp(depth)), repeats=1)
        print(f"{'mlp, depth ' + str(depth):28s} {s:7.3f} s  {n:6d} nodes in all graphs")


if __name__ == "__main__":
    main()
