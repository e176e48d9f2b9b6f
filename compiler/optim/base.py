from __future__ import annotations

import math
from dataclasses import dataclass

from spec.errors import Loc, SpecError, did_you_mean

OPTIMIZERS: dict[str, type] = {}


def optimizer(name: str):
    def register(cls):
        old = OPTIMIZERS.get(name)  # the same class again is its module imported again, after a Ctrl-C cut it short
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise RuntimeError(f"optimizer {name!r} registered twice")
        cls.name = name
        OPTIMIZERS[name] = cls
        return cls

    return register


class Optimizer:
    name = ""
    defaults: dict = {}
    state_names: tuple = ()

    def __init__(self, hp: dict):
        self.hp = {"maximize": False, **self.defaults, **hp}

    def state_init(self, kind: str) -> float:
        """The value a state tensor of this kind starts at (Adagrad's initial_accumulator_value; else 0)."""
        return 0.0

    def update(self, p, grad, state: dict, lr, t):
        """(new parameter, {state name: new value}); all arguments are IR Values
        except t, the float 1-based update count as a Value."""
        raise NotImplementedError

    def ascent(self, grad):
        """maximize: PyTorch negates the gradient before anything else the optimizer does (its weight
        decay included: the decay still pulls the weights toward 0)."""
        return -grad if self.hp["maximize"] else grad

    def decayed(self, p, grad):
        """Coupled (L2) weight decay: added to the gradient."""
        wd = self.hp.get("weight_decay", 0.0)
        return grad + wd * p if wd else grad


def possible_state_names() -> set[str]:
    """Every kind of optimizer state any optimizer keeps, whatever its settings (momentum adds a
    velocity to sgd and rmsprop, centered a mean_grad to rmsprop, amsgrad a max_v to adam and
    adamw): what a checkpoint's optimizer state can be called."""
    from . import adaptive, sgd  # noqa: F401  (they register the optimizers)

    everything = {"momentum": 0.9, "centered": True, "amsgrad": True}
    return {n for cls in OPTIMIZERS.values() for hp in ({}, everything) for n in cls(hp).state_names}


def optimizer_from_config(cfg: dict, loc: Loc | None = None) -> Optimizer:
    """{adam: {lr: 1e-3}} -> an Optimizer; the schema already checked the keys."""
    if not isinstance(cfg, dict) or len(cfg) != 1:
        raise SpecError("optimizer must be a mapping with exactly one optimizer name", loc,
                        f"for example {{adam: {{lr: 0.001}}}}; choose from {', '.join(OPTIMIZERS)}")
    (name, hp), = cfg.items()
    if name not in OPTIMIZERS:
        raise SpecError(f"unknown optimizer {name!r}", loc, did_you_mean(name, OPTIMIZERS) or f"choose from {', '.join(OPTIMIZERS)}")
    hp = dict(hp or {})
    for k, v in hp.items():  # YAML's .nan and .inf pass the schema's number checks
        if isinstance(v, float) and not math.isfinite(v):
            raise SpecError(f"optimizer {name!r}: {k} must be a finite number, got {v}", loc,
                            f"write {k} as a finite number (YAML reads .nan, .inf and 1e400 as not finite)")
    if "lr" not in hp:
        raise SpecError(f"optimizer {name!r} needs lr", loc, f"write e.g. {name}: {{lr: 0.01}}")
    if not hp["lr"] > 0:
        raise SpecError(f"lr must be positive, got {hp['lr']}", loc, "use a number above 0, e.g. lr: 0.01")
    if hp.get("nesterov") and not hp.get("momentum"):
        raise SpecError("nesterov needs momentum", loc, "for example {sgd: {lr: 0.1, momentum: 0.9, nesterov: true}}")
    if hp.get("nesterov") and hp.get("dampening"):
        raise SpecError(f"nesterov needs dampening 0, not dampening {hp['dampening']}", loc,
                        "leave out dampening or nesterov (torch.optim.SGD refuses the two together too), e.g. "
                        "{sgd: {lr: 0.1, momentum: 0.9, nesterov: true}}")
    return OPTIMIZERS[name](hp)
