"""PyTorch eager references of the models in models/, timed the way
`flowgrad bench` times them: same architecture, batch, optimizer and data
shapes, median of the per-step times after a warm-up. Prints one JSON line.

    python benchmarks/torch_ref.py mlp --steps 50 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime.memory import peak_rss_mb  # noqa: E402


def mlp(hidden=256, depth=2, d_in=64, k=10, dropout=0.2):
    layers, width = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, k)), (d_in,)


def mlp_big():
    return mlp(hidden=1024, depth=2, d_in=784, k=10, dropout=0.0)


def convnet():
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(128, 10),
    )
    return net, (1, 8, 8)


class CharLSTM(nn.Module):
    def __init__(self, vocab=97, emb=64, hidden=256):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.out(h)


def char_lstm():
    return CharLSTM(), "tokens"


class DatesAttention(nn.Module):
    """models/dates_attention.yaml in PyTorch: bidirectional GRU encoder over packed
    sources, GRU decoder cell with additive attention, teacher forcing."""

    def __init__(self, sv=70, tv=14, e=32, h=64, a=64):
        super().__init__()
        self.src_emb, self.tgt_emb = nn.Embedding(sv, e), nn.Embedding(tv, e)
        self.enc = nn.GRU(e, h, batch_first=True, bidirectional=True)
        self.s0 = nn.Linear(2 * h, h)
        self.W, self.U, self.v = nn.Linear(h, a, bias=False), nn.Linear(2 * h, a, bias=False), nn.Linear(a, 1, bias=False)
        self.cell = nn.GRUCell(e + 2 * h, h)
        self.out = nn.Linear(h + 2 * h, tv)

    def forward(self, src, src_len, tgt_in):
        packed = nn.utils.rnn.pack_padded_sequence(self.src_emb(src), src_len.cpu(), batch_first=True, enforce_sorted=False)
        enc, _ = self.enc(packed)
        enc, _ = nn.utils.rnn.pad_packed_sequence(enc, batch_first=True, total_length=src.shape[1])
        src_len = src_len.to(src.device)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_len[:, None]
        s = torch.tanh(self.s0((enc * mask[..., None]).sum(1) / src_len[:, None]))
        keys = self.U(enc)
        outs = []
        for y_t in self.tgt_emb(tgt_in).unbind(1):
            scores = self.v(torch.tanh(self.W(s)[:, None, :] + keys)).squeeze(-1).masked_fill(~mask, -1e9)
            ctx = (torch.softmax(scores, -1)[..., None] * enc).sum(1)
            s = self.cell(torch.cat([y_t, ctx], -1), s)
            outs.append(torch.cat([s, ctx], -1))
        return self.out(torch.stack(outs, 1))


def dates_attention():
    return DatesAttention(), "seq2seq"


SEQUENCE = {"char_lstm": (97, 64)}  # vocab (the text dataset's character alphabet), sequence length
MODELS = {"mlp": (mlp, 64), "mlp_big": (mlp_big, 256), "convnet": (convnet, 64), "char_lstm": (char_lstm, 32),
          "dates_attention": (dates_attention, 64), "maxout": None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=[m for m, v in MODELS.items() if v])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (each step ends by reading the loss, which waits for the GPU)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build, default_batch = MODELS[args.model]
    batch = args.batch_size or default_batch
    net, shape = build()
    net = net.to(dev)
    # models/mlp.yaml trains with l2: 1e-5, added to the gradient: Adam's (coupled) weight_decay
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-5 if args.model in ("mlp", "mlp_big") else 0.0)
    loss_fn = nn.CrossEntropyLoss()
    if shape == "seq2seq":  # the bundled dates task, as flowgrad bench feeds it
        import sys as _sys, os as _os

        _sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
        from runtime.datasets_text import load_dates

        d = load_dates(n=batch, seed=0).arrays
        src, src_len, tgt_in = (torch.from_numpy(d[k]).to(dev) for k in ("src", "src_len", "tgt_in"))
        y, tmask = torch.from_numpy(d["tgt"]).to(dev), torch.from_numpy(d["tgt_mask"]).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        times = []
        for step in range(args.warmup + args.steps):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            logits = net(src, src_len, tgt_in)
            per = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
            loss = (per * tmask.reshape(-1)).sum() / tmask.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            loss.item()
            if step >= args.warmup:
                times.append(time.perf_counter() - t)
        median = statistics.median(times)
        print(json.dumps({"framework": "pytorch", "model": args.model, "device": args.device, "batch_size": batch, "step_ms": median * 1e3,
                          "peak_rss_mb": peak_rss_mb()}))
        return
    if shape == "tokens":  # a language model: the spec's own text data, next-token targets
        vocab, seq = SEQUENCE[args.model]
        data = torch.randint(0, vocab, (batch, seq + 1), device=dev)
        x, y = data[:, :-1], data[:, 1:]
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    else:
        x = torch.rand(batch, *shape, device=dev)
        y = torch.randint(0, 2, (batch,), device=dev)
    times = []
    for step in range(args.warmup + args.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = net(x)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        acc = (logits.argmax(-1) == y).float().mean()
        loss.backward()
        if shape == "tokens":
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        loss.item(), acc.item()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(json.dumps({"framework": "pytorch", "model": args.model, "device": args.device, "batch_size": batch, "step_ms": median * 1e3,
                      "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main()
