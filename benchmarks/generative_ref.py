"""PyTorch references of models/dae.yaml, models/vae.yaml and models/gan.yaml.

Same data (flowgrad's bundled digits, the same train/valid split and the same
batch order per epoch), same architecture and initialisation (Glorot-uniform
weights, zero biases), same optimizer, batch size and number of steps. Two
uses, each printing one JSON line:

    python benchmarks/generative_ref.py quality vae --threads 2   # train; validation neg. ELBO
    python benchmarks/generative_ref.py quality dae --threads 2   # train; validation reconstruction error
    python benchmarks/generative_ref.py bench gan --steps 50      # median step time, as `flowgrad bench`

Noise comes from torch's generator (flowgrad's from its counter-based hash):
the same distributions, not the same draws.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from runtime.memory import peak_rss_mb  # noqa: E402


def spec_config(model: str) -> dict:
    from spec import load_spec

    s = load_spec(os.path.join(ROOT, "models", f"{model}.yaml"))
    train = s.train
    opt = train["optimizer"] if "optimizer" in train else None
    return {"dims": dict(s.dims), "batch_size": int(train["batch_size"]), "epochs": int(train["epochs"]),
            "seed": int(train.get("seed", 0)), "valid": float(train["data"]["valid"]), "optimizer": opt,
            "objectives": train.get("objectives")}


def glorot(layer: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


# ---------------------------------------------------------------- models
class DAE(nn.Module):
    """models/dae.yaml: masking noise, sigmoid encoder, decoder tied to it (W transposed)."""

    def __init__(self, D=64, H=128, p=0.25):
        super().__init__()
        self.W = nn.Parameter(torch.empty(D, H))
        nn.init.xavier_uniform_(self.W)
        self.b = nn.Parameter(torch.zeros(H))
        self.c = nn.Parameter(torch.zeros(D))
        self.p = p

    def forward(self, x):
        x_in = x * (torch.rand_like(x) >= self.p) if self.training else x
        h = torch.sigmoid(x_in @ self.W + self.b)
        logits = h @ self.W.t() + self.c
        loss = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).mean()
        return loss, {"recon_error": F.mse_loss(torch.sigmoid(logits), x)}


class VAE(nn.Module):
    """models/vae.yaml: MLP encoder to (mu, logvar), reparameterized sample, MLP decoder to logits."""

    def __init__(self, D=64, H=128, Z=8):
        super().__init__()
        self.enc = glorot(nn.Linear(D, H))
        self.mu = glorot(nn.Linear(H, Z))
        self.logvar = glorot(nn.Linear(H, Z))
        self.dec_h = glorot(nn.Linear(Z, H))
        self.dec_out = glorot(nn.Linear(H, D))

    def decode(self, z):
        return self.dec_out(F.relu(self.dec_h(z)))

    def forward(self, x):
        e = F.relu(self.enc(x))
        mu, logvar = self.mu(e), self.logvar(e)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # every mode, as flowgrad's reparameterize
        logits = self.decode(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).mean()
        kl = (-0.5 * (1 + logvar - mu * mu - torch.exp(logvar)).sum(-1)).mean()
        return rec + kl, {"neg_elbo": rec + kl, "kl": kl}


class GAN(nn.Module):
    """models/gan.yaml: MLP generator and discriminator (dropout, leaky rectifiers)."""

    def __init__(self, P=64, H=128, Z=16, alpha=0.01):
        super().__init__()
        self.Z = Z
        self.G = nn.Sequential(glorot(nn.Linear(Z, H)), nn.ReLU(), glorot(nn.Linear(H, H)), nn.ReLU(),
                               glorot(nn.Linear(H, P)), nn.Sigmoid())
        self.D = nn.Sequential(glorot(nn.Linear(P, H)), nn.LeakyReLU(alpha), nn.Dropout(0.3),
                               glorot(nn.Linear(H, H)), nn.LeakyReLU(alpha), glorot(nn.Linear(H, 1)))


def gan_alpha() -> float:
    """The discriminator's leaky-rectifier slope as models/gan.yaml writes it (0.01: leaky_relu's default)."""
    import re

    with open(os.path.join(ROOT, "models", "gan.yaml")) as f:
        m = re.search(r"alpha=([0-9.]+)", f.read())
    return float(m.group(1)) if m else 0.01


def adam(params, cfg):
    hp = cfg["adam"]
    return torch.optim.Adam(params, lr=hp["lr"], betas=(hp.get("beta1", 0.9), hp.get("beta2", 0.999)), eps=hp.get("eps", 1e-8))


def build(model: str):
    cfg = spec_config(model)
    d = cfg["dims"]
    if model == "dae":
        net = DAE(d["D"], d["H"])
        return cfg, net, [adam(net.parameters(), cfg["optimizer"])]
    if model == "vae":
        net = VAE(d["D"], d["H"], d["Z"])
        return cfg, net, [adam(net.parameters(), cfg["optimizer"])]
    net = GAN(d["P"], d["H"], d["Z"], gan_alpha())
    objs = cfg["objectives"]
    return cfg, net, [adam(net.D.parameters(), objs["discriminator"]["optimizer"]),
                      adam(net.G.parameters(), objs["generator"]["optimizer"])]


def gan_step(net: GAN, opts, x):
    """One discriminator update, then one generator update (the spec's schedule)."""
    opt_d, opt_g = opts
    z = torch.randn(len(x), net.Z, device=x.device)
    d_real, d_fake = net.D(x), net.D(net.G(z).detach())
    d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, 0.9))
              + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    d_fake = net.D(net.G(z))
    with torch.no_grad():
        p_real = torch.sigmoid(net.D(x)).mean()
    g_loss = F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return d_loss.item(), g_loss.item(), p_real.item()


# ---------------------------------------------------------------- data, as flowgrad's runtime prepares it
def digits(cfg):
    from runtime.data import load_digits, split

    train_ds, valid_ds = split(load_digits(), cfg["valid"], cfg["seed"])
    return torch.from_numpy(train_ds.arrays["x"]), torch.from_numpy(valid_ds.arrays["x"])


def epoch_order(seed, epoch, n):
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, 7]).permutation(n)  # runtime/train.py's order


def evaluate(net, x_valid, batch=256):
    net.eval()
    sums, n = {}, 0
    with torch.no_grad():
        for i in range(0, len(x_valid), batch):
            xb = x_valid[i:i + batch]
            loss, metrics = net(xb)
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(xb)
            n += len(xb)
    net.train()
    return {f"valid_{k}": v / n for k, v in sums.items()}


def quality(model: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg, net, (opt,) = build(model)
    torch.manual_seed(cfg["seed"])
    x_train, x_valid = digits(cfg)
    bs, steps = cfg["batch_size"], 0
    t0 = time.perf_counter()
    history = []
    for epoch in range(cfg["epochs"]):
        order = torch.from_numpy(epoch_order(cfg["seed"], epoch, len(x_train)))
        for i in range(0, len(x_train), bs):
            loss, _ = net(x_train[order[i:i + bs]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        history.append(evaluate(net, x_valid))
    return {"framework": "pytorch", "model": model, "epochs": cfg["epochs"], "steps": steps,
            "seconds": round(time.perf_counter() - t0, 2), "final": history[-1],
            "best_valid_loss": min(h["valid_loss"] for h in history)}


def bench(model: str, steps: int, warmup: int, threads: int, device: str = "cpu") -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg, net, opts = build(model)
    # Module.to moves parameters in place, so the optimizers built above still hold them
    net.to(device)
    x_train, _ = digits(cfg)
    x = x_train[:cfg["batch_size"]].contiguous().to(device)  # flowgrad bench's batch: the first of the spec's data
    times = []
    for step in range(warmup + steps):
        t = time.perf_counter()
        if model == "gan":
            gan_step(net, opts, x)
        else:
            loss, metrics = net(x)
            opts[0].zero_grad(set_to_none=True)
            loss.backward()
            opts[0].step()
            float(loss), [float(v) for v in metrics.values()]
        if step >= warmup:
            times.append(time.perf_counter() - t)
    return {"framework": "pytorch", "model": model, "device": device, "batch_size": cfg["batch_size"],
            "step_ms": statistics.median(times) * 1e3,
            "peak_rss_mb": peak_rss_mb()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["quality", "bench"])
    ap.add_argument("model", choices=["dae", "vae", "gan"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="bench on cpu or cuda (each step reads its losses, which waits for the GPU)")
    args = ap.parse_args()
    if args.what == "quality":
        if args.model == "gan":
            raise SystemExit("a GAN has no likelihood to compare: see benchmarks/gan_coverage.py")
        print(json.dumps(quality(args.model, args.threads)))
    else:
        print(json.dumps(bench(args.model, args.steps, args.warmup, args.threads, args.device)))


if __name__ == "__main__":
    main()
