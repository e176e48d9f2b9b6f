"""Learning-rate schedules: a function of the update count, fed to the graph's
`lr` input each step (so changing a schedule never recompiles); a plateau schedule's
rate also follows the validation records, one step of it at each epoch's end."""
from __future__ import annotations

import math

from spec.errors import SpecError


def check_schedule_fits(spec, total_steps: int, length: str, steps_per_epoch: int) -> None:
    """A warmup or a step decay that the run ends before reaching changes nothing it promises:
    a warmup of more steps than the run leaves the learning rate below lr to the end (and a
    cosine after it never anneals, nor does one after a warmup of all steps but the last: that
    step takes lr), a step decay every more steps than the run never decays.
    `length` says how the run got its `total_steps` ('300 optimizer steps (30 epochs of 10)')."""
    cfg = (spec.train or {}).get("lr_schedule") or {}
    warmup = cfg.get("warmup") or 0
    # a hint's example must pass these checks itself: a warmup leaves a step after it (two for a
    # cosine), a decay interval is below the run's steps; a run too short for any is told so
    longest_warmup = total_steps - (2 if "cosine" in cfg else 1)
    warmup_hint = (f"warm up over a part of the run, e.g. warmup: {min(max(total_steps // 10, 1), longest_warmup)}, "
                   f"or train for more steps" if longest_warmup >= 1 else
                   f"a run of {length} has no room for a warmup: leave out warmup, or train for more steps")
    if warmup >= total_steps:
        raise SpecError(f"train.lr_schedule.warmup {warmup} is not shorter than the run, {length}: the learning "
                        f"rate would not reach lr before the run's last step, if at all"
                        + (", and the cosine would never anneal it" if "cosine" in cfg else ""),
                        spec.locate("train", "lr_schedule", "warmup"), warmup_hint)
    if "cosine" in cfg and warmup and warmup == total_steps - 1:
        # the one update after the warmup takes lr: the cosine never reaches min_lr
        raise SpecError(f"train.lr_schedule.warmup {warmup} leaves the cosine one optimizer step of the run, "
                        f"{length}: that step takes lr, and the cosine never anneals it to min_lr",
                        spec.locate("train", "lr_schedule", "warmup"), warmup_hint)
    every = (cfg.get("step") or {}).get("every")
    decay = f"e.g. every: {max(total_steps // 3, 1)}, or" if total_steps > 1 else "but a run of one never decays:"
    if every is not None and every >= total_steps:
        raise SpecError(f"train.lr_schedule.step.every {every} is not shorter than the run, {length}: the learning "
                        f"rate would never decay",
                        spec.locate("train", "lr_schedule", "step", "every"),
                        f"decay within the run, {decay} train for more steps" if total_steps > 1 else
                        "a run of one optimizer step never decays: train for more steps")
    epochs = (cfg.get("step") or {}).get("every_epochs")
    if epochs is not None and epochs * steps_per_epoch >= total_steps:
        raise SpecError(f"train.lr_schedule.step.every_epochs {epochs} is not shorter than the run, {length}: the "
                        f"learning rate would never decay", spec.locate("train", "lr_schedule", "step", "every_epochs"),
                        f"decay within the run, e.g. every_epochs: {max(total_steps // steps_per_epoch // 3, 1)}, or "
                        f"train for more epochs" if total_steps > steps_per_epoch else
                        f"the run is not longer than an epoch ({steps_per_epoch} optimizer steps): decay by optimizer "
                        f"steps, {decay} train for more epochs")


def improves(value: float, best: float, mode: str, threshold: float = 0.0, threshold_mode: str = "rel") -> bool:
    """Whether `value` is better than `best`, as torch's ReduceLROnPlateau.is_better: for mode min,
    value < best * (1 - threshold) (rel) or value < best - threshold (abs); for max, value >
    best * (1 + threshold) or value > best + threshold. A NaN value is never better. Early stopping
    compares with threshold 0 (any improvement counts); a plateau schedule with its threshold."""
    if mode == "max":
        return value > (best * (1 + threshold) if threshold_mode == "rel" else best + threshold)
    return value < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)


class Plateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau, stepped with the watched metric at each epoch's
    end: after more than `patience` epochs in a row without an improvement (see `improves`),
    each learning rate becomes max(lr * factor, min_lr) (unchanged where that changes it by eps
    or less), and the next `cooldown` epochs count no bad epochs. Its state (best, bad epochs,
    cooldown counter, rates) is a function of the metric's values: a resume replays the records."""

    def __init__(self, cfg: dict, mode: str, lrs: dict[str, float]):
        from spec.loader import schema_default

        def setting(key):
            value = cfg.get(key)
            return schema_default("train", "lr_schedule", "plateau", key) if value is None else value

        self.metric, self.mode = cfg["metric"], mode
        self.factor, self.patience = float(setting("factor")), int(setting("patience"))
        self.threshold, self.threshold_mode = float(setting("threshold")), str(setting("threshold_mode"))
        self.cooldown, self.min_lr, self.eps = int(setting("cooldown")), float(setting("min_lr")), float(setting("eps"))
        self.lrs = {name: float(lr) for name, lr in lrs.items()}
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0
        self.cooldown_counter = 0

    def step(self, value) -> bool:
        """One epoch's value of the metric (None or NaN: no improvement); True if the rates fell."""
        value = math.nan if value is None else float(value)
        if improves(value, self.best, self.mode, self.threshold, self.threshold_mode):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.bad_epochs = 0  # (bad epochs in the cooldown do not count)
        if self.bad_epochs <= self.patience:
            return False
        for name, old in self.lrs.items():
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.lrs[name] = new
        self.cooldown_counter, self.bad_epochs = self.cooldown, 0
        return True

    def replay(self, records) -> "Plateau":
        """Step it with the metric of each whole epoch's record (a partial epoch's is redone)."""
        for record in records:
            if not record.get("partial"):
                self.step(record.get(self.metric))
        return self


def lr_schedule(base_lr: float, cfg: dict | None, total_steps: int, steps_per_epoch: int, rate=None):
    """The learning rate of each optimizer step, a function of its count. A plateau schedule's
    rate is `rate()` (its Plateau's current rate of this objective), base_lr without one."""
    cfg = dict(cfg or {})
    warmup = int(cfg.pop("warmup", 0) or 0)
    if not cfg:
        kind, args = "constant", {}
    elif len(cfg) == 1:
        (kind, args), = cfg.items()
        args = args or {}
    else:
        raise SpecError(f"lr_schedule takes one schedule, got {', '.join(cfg)}",
                        hint="keep one of constant, step, exponential, cosine and plateau (warmup may go with it)")

    def base(step: int) -> float:
        if kind == "constant":
            return base_lr
        if kind == "step":  # (the spec's check requires one of every and every_epochs)
            every = int(args["every"]) if "every" in args else int(args["every_epochs"]) * max(steps_per_epoch, 1)
            return base_lr * float(args.get("gamma", 0.1)) ** (step // max(every, 1))
        if kind == "exponential":
            # gamma per epoch, applied smoothly per step
            return base_lr * float(args.get("gamma", 0.95)) ** (step / max(steps_per_epoch, 1))
        if kind == "cosine":
            lo = float(args.get("min_lr", 0.0))
            span = max(total_steps - warmup - 1, 1)  # the last step (total_steps - 1) takes min_lr
            t = min(max(step - warmup, 0) / span, 1.0)
            return lo + 0.5 * (base_lr - lo) * (1 + math.cos(math.pi * t))
        if kind == "plateau":  # the rate its epochs' metric left (the warmup scales it, as the others)
            return rate() if rate is not None else base_lr
        raise SpecError(f"unknown lr_schedule {kind!r}", hint="choose constant, step, exponential, cosine or plateau")

    def lr(step: int) -> float:
        value = base(step)
        if warmup and step < warmup:
            value *= (step + 1) / warmup
        return value

    base(0)  # reports an unknown schedule before training starts
    return lr
