"""Validation bits per character of models/char_lstm.yaml after the same number
of training steps in flowgrad and in PyTorch (same architecture, data, batch,
optimizer, clipping; PyTorch with its default initialisation and with the
spec's), plus the median step time of each, side by side.

    python benchmarks/char_lstm_quality.py --steps 400
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from runtime import data as D  # noqa: E402
from runtime.api import load, train  # noqa: E402


def flowgrad_init(net) -> None:
    """The spec's initialisation: embedding N(0, 1) (as PyTorch's), input weights Glorot-
    uniform over (E, 4H), recurrent weights orthogonal, output weights Glorot-uniform, every
    bias zero (PyTorch's LSTM defaults: all uniform in +-1/sqrt(H), two biases)."""
    from torch import nn

    nn.init.xavier_uniform_(net.lstm.weight_ih_l0)  # [4H, E]: the same bound as (E, 4H)
    nn.init.orthogonal_(net.lstm.weight_hh_l0)
    nn.init.zeros_(net.lstm.bias_ih_l0)
    nn.init.zeros_(net.lstm.bias_hh_l0)
    nn.init.xavier_uniform_(net.out.weight)
    nn.init.zeros_(net.out.bias)


def torch_run(train_ds, valid_ds, steps, batch, threads, seed, init="pytorch"):
    import torch
    from torch import nn

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from torch_ref import CharLSTM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = CharLSTM()
    if init == "flowgrad":
        flowgrad_init(net)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    x_all, y_all = torch.from_numpy(train_ds.arrays["x"]), torch.from_numpy(train_ds.arrays["y"])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_all))
    times, pos = [], 0
    for _ in range(steps):
        if pos + batch > len(order):
            order, pos = rng.permutation(len(x_all)), 0
        idx = torch.from_numpy(order[pos:pos + batch])
        pos += batch
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = net(x_all[idx])
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y_all[idx].reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        times.append(time.perf_counter() - t)
    with torch.no_grad():
        xv, yv = torch.from_numpy(valid_ds.arrays["x"]), torch.from_numpy(valid_ds.arrays["y"])
        total = 0.0
        for i in range(0, len(xv), 256):
            lg = net(xv[i:i + 256])
            total += float(loss_fn(lg.reshape(-1, lg.shape[-1]), yv[i:i + 256].reshape(-1))) * len(xv[i:i + 256])
    return total / len(xv) / math.log(2), statistics.median(times[5:]) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pytorch-init", nargs="*", choices=["pytorch", "flowgrad"], default=["pytorch", "flowgrad"],
                    help="PyTorch runs with its default initialisation, with the spec's, or both")
    args = ap.parse_args()
    spec = load(os.path.join(ROOT, "models", "char_lstm.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train(spec, run_dir=tmp, steps=args.steps, threads=args.threads, device="cpu", seed=args.seed)
        fg_seconds = time.perf_counter() - t0
    fg_bpc = res.final["valid_bits_per_char"]
    full = D.load_bundled("text", {"level": "char", "seq_len": 64})
    train_ds, valid_ds = D.split(full, 0.05, args.seed)
    print(f"after {args.steps} steps: valid bits/char flowgrad {fg_bpc:.4f} "
          f"(wall {fg_seconds:.1f} s incl. compile and validation)")
    for init in args.pytorch_init:
        pt_bpc, pt_ms = torch_run(train_ds, valid_ds, args.steps, 32, args.threads, args.seed, init)
        print(f"  pytorch, {init} initialisation: {pt_bpc:.4f} (flowgrad / pytorch {fg_bpc / pt_bpc:.3f}; "
              f"median step {pt_ms:.1f} ms)")


if __name__ == "__main__":
    main()
