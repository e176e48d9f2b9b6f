"""PyTorch eager references of the models in models/, timed the way
`flowgrad bench` times them: same architecture, batch, optimizer and data
shapes, median of the per-step times after a warm-up. Prints one JSON line.

    python benchmarks/torch_ref.py mlp --steps 50 --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from torch import nn


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
    def __init__(self, vocab=103, emb=64, hidden=256):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.out(h)


def char_lstm():
    return CharLSTM(), "tokens"


SEQUENCE = {"char_lstm": (103, 64)}  # vocab, sequence length
MODELS = {"mlp": (mlp, 64), "mlp_big": (mlp_big, 256), "convnet": (convnet, 64), "char_lstm": (char_lstm, 32),
          "maxout": None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=[m for m, v in MODELS.items() if v])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build, default_batch = MODELS[args.model]
    batch = args.batch_size or default_batch
    net, shape = build()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    if shape == "tokens":  # a language model: the spec's own text data, next-token targets
        vocab, seq = SEQUENCE[args.model]
        data = torch.randint(0, vocab, (batch, seq + 1))
        x, y = data[:, :-1], data[:, 1:]
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    else:
        x = torch.rand(batch, *shape)
        y = torch.randint(0, 2, (batch,))
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
        float(loss), float(acc)
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(json.dumps({"framework": "pytorch", "model": args.model, "batch_size": batch, "step_ms": median * 1e3,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
