"""Exact-match accuracy of an exported sequence-to-sequence model on a
held-out set that shares no example with training: for dates, calendar dates
disjoint from the training ones; for reversal, fresh random strings.

    flowgrad train models/dates_attention.yaml && flowgrad export runs/dates_attention -o dates.onnx
    python benchmarks/seq2seq_accuracy.py dates.onnx --task dates --n 2000
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runtime import datasets_text as T  # noqa: E402
from runtime.export import predict  # noqa: E402


def held_out(task: str, n: int):
    if task == "dates":
        return T.load_dates(n=n, seed=12345, split="test")
    if task == "reverse":
        # strings of another seed, less those that models/reverse_attention.yaml trains or
        # validates on (short strings recur: its data holds every string of one or two letters,
        # and about 6% of a fresh draw would be seen ones)
        seen = set(map(bytes, T.load_reverse(n=20000, seed=0, max_len=20).arrays["src"].astype(np.uint8)))
        ds = T.load_reverse(n=4 * n, seed=12345, max_len=20)
        fresh = np.flatnonzero([bytes(r) not in seen for r in ds.arrays["src"].astype(np.uint8)])[:n]
        if len(fresh) < n:
            raise SystemExit(f"only {len(fresh)} strings unseen in training")
        return ds.subset(fresh)
    raise SystemExit(f"unknown task {task}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--task", choices=["dates", "reverse"], default="dates")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--beams", type=int, nargs="*", default=[1, 4])
    args = ap.parse_args()
    ds = held_out(args.task, args.n)
    want = [T.decode_target(r, ds.meta) for r in ds.arrays["tgt"]]
    max_len = ds.arrays["tgt"].shape[1]
    for beam in args.beams:
        t0 = time.perf_counter()
        got = []
        for i in range(0, len(want), 500):
            outs = predict(args.model, {"src": ds.arrays["src"][i:i + 500], "src_len": ds.arrays["src_len"][i:i + 500],
                                        "beam_width": np.asarray(beam), "max_len": np.asarray(max_len),
                                        "length_penalty": np.asarray(0.6, dtype=np.float32)})
            got += [T.decode_target(r, ds.meta) for r in outs["tokens"]]
        acc = np.mean([g == w for g, w in zip(got, want)])
        print(f"{args.task}: beam {beam}: exact match {acc:.4f} on {len(want)} held-out examples "
              f"({time.perf_counter() - t0:.1f} s)")
        bad = [(T.decode_source(s, ds.meta), g, w) for s, g, w in zip(ds.arrays["src"], got, want) if g != w][:5]
        for s, g, w in bad:
            print(f"  {s!r}: got {g!r}, want {w!r}")


if __name__ == "__main__":
    main()
