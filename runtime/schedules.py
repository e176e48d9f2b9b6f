"""Learning-rate schedules: a function of the update count, fed to the graph's
`lr` input each step (so changing a schedule never recompiles)."""
from __future__ import annotations

import math

from spec.errors import SpecError


def check_schedule_fits(spec, total_steps: int, length: str) -> None:
    """A warmup or a step decay that the run ends before reaching changes nothing it promises:
    a warmup of more steps than the run leaves the learning rate below lr to the end (and a
    cosine after it never anneals, nor does one after a warmup of all steps but the last: that
    step takes lr), a step decay every more steps than the run never decays.
    `length` says how the run got its `total_steps` ('300 optimizer steps (30 epochs of 10)')."""
    cfg = (spec.train or {}).get("lr_schedule") or {}
    warmup = cfg.get("warmup") or 0
    if warmup >= total_steps:
        raise SpecError(f"train.lr_schedule.warmup {warmup} is not shorter than the run, {length}: the learning "
                        f"rate would not reach lr before the run's last step, if at all"
                        + (", and the cosine would never anneal it" if "cosine" in cfg else ""),
                        spec.locate("train", "lr_schedule", "warmup"),
                        f"warm up over a part of the run, e.g. warmup: {max(total_steps // 10, 1)}, or train for "
                        f"more steps")
    if "cosine" in cfg and warmup and warmup == total_steps - 1:
        # the one update after the warmup takes lr: the cosine never reaches min_lr
        raise SpecError(f"train.lr_schedule.warmup {warmup} leaves the cosine one optimizer step of the run, "
                        f"{length}: that step takes lr, and the cosine never anneals it to min_lr",
                        spec.locate("train", "lr_schedule", "warmup"),
                        f"warm up over a part of the run, e.g. warmup: {max(total_steps // 10, 1)}, or train for "
                        f"more steps")
    every = (cfg.get("step") or {}).get("every")
    if every is not None and every >= total_steps:
        raise SpecError(f"train.lr_schedule.step.every {every} is not shorter than the run, {length}: the learning "
                        f"rate would never decay",
                        spec.locate("train", "lr_schedule", "step", "every"),
                        f"decay within the run, e.g. every: {max(total_steps // 3, 1)}, or train for more steps")


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
            every = int(args["every"])  # (the schema requires it)
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
