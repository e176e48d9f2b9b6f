"""Learning-rate schedules: a function of the update count, fed to the graph's
`lr` input each step (so changing a schedule never recompiles)."""
from __future__ import annotations

import math

from spec.errors import SpecError


def lr_schedule(base_lr: float, cfg: dict | None, total_steps: int, steps_per_epoch: int):
    cfg = dict(cfg or {})
    warmup = int(cfg.pop("warmup", 0) or 0)
    if not cfg:
        kind, args = "constant", {}
    elif len(cfg) == 1:
        (kind, args), = cfg.items()
        args = args or {}
    else:
        raise SpecError(f"lr_schedule takes one schedule, got {', '.join(cfg)}", hint="keep one of constant, step, exponential and cosine (warmup may go with it)")

    def base(step: int) -> float:
        if kind == "constant":
            return base_lr
        if kind == "step":
            every = int(args.get("every", steps_per_epoch * 10))
            return base_lr * float(args.get("gamma", 0.1)) ** (step // max(every, 1))
        if kind == "exponential":
            # gamma per epoch, applied smoothly per step
            return base_lr * float(args.get("gamma", 0.95)) ** (step / max(steps_per_epoch, 1))
        if kind == "cosine":
            lo = float(args.get("min_lr", 0.0))
            span = max(total_steps - warmup - 1, 1)  # the last step (total_steps - 1) takes min_lr
            t = min(max(step - warmup, 0) / span, 1.0)
            return lo + 0.5 * (base_lr - lo) * (1 + math.cos(math.pi * t))
        raise SpecError(f"unknown lr_schedule {kind!r}", hint="choose constant, step, exponential or cosine")

    def lr(step: int) -> float:
        value = base(step)
        if warmup and step < warmup:
            value *= (step + 1) / warmup
        return value

    base(0)  # reports an unknown schedule before training starts
    return lr
