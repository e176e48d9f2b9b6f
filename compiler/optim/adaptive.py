"""Optimizers with per-coordinate step sizes: AdaGrad, RMSProp, Adam, AdamW."""
from __future__ import annotations

from .base import Optimizer, optimizer


def _sqrt(x):
    return x.graph.apply("sqrt", x)


@optimizer("adagrad")
class AdaGrad(Optimizer):
    defaults = {"eps": 1e-10, "weight_decay": 0.0, "lr_decay": 0.0, "initial_accumulator_value": 0.0}
    state_names = ("sum_sq",)

    def state_init(self, kind):
        return float(self.hp["initial_accumulator_value"]) if kind == "sum_sq" else 0.0

    def update(self, p, grad, state, lr, t):
        grad = self.decayed(p, self.ascent(grad))
        if self.hp["lr_decay"]:
            lr = lr / (1.0 + (t - 1.0) * self.hp["lr_decay"])  # PyTorch's clr
        s = state["sum_sq"] + grad * grad
        return p - lr * grad / (_sqrt(s) + self.hp["eps"]), {"sum_sq": s}


@optimizer("rmsprop")
class RMSProp(Optimizer):
    defaults = {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False, "weight_decay": 0.0}

    @property
    def state_names(self):
        return ("mean_sq",) + (("mean_grad",) if self.hp["centered"] else ()) \
            + (("velocity",) if self.hp["momentum"] else ())

    def update(self, p, grad, state, lr, t):
        grad = self.decayed(p, self.ascent(grad))
        a = self.hp["alpha"]
        ms = a * state["mean_sq"] + (1.0 - a) * (grad * grad)
        new = {"mean_sq": ms}
        if self.hp["centered"]:  # the variance's estimate: E[g^2] - E[g]^2
            mg = a * state["mean_grad"] + (1.0 - a) * grad
            new["mean_grad"] = mg
            step = grad / (_sqrt(ms - mg * mg) + self.hp["eps"])
        else:
            step = grad / (_sqrt(ms) + self.hp["eps"])
        if not self.hp["momentum"]:
            return p - lr * step, new
        v = self.hp["momentum"] * state["velocity"] + step
        return p - lr * v, {**new, "velocity": v}


@optimizer("adam")
class Adam(Optimizer):
    defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    decoupled = False

    @property
    def state_names(self):
        return ("m", "v", "max_v") if self.hp["amsgrad"] else ("m", "v")

    def update(self, p, grad, state, lr, t):
        b1, b2, eps, wd = self.hp["beta1"], self.hp["beta2"], self.hp["eps"], self.hp["weight_decay"]
        grad = self.ascent(grad)
        if not self.decoupled:
            grad = self.decayed(p, grad)
        m = b1 * state["m"] + (1.0 - b1) * grad
        v = b2 * state["v"] + (1.0 - b2) * (grad * grad)
        new = {"m": m, "v": v}
        g = p.graph
        if self.hp["amsgrad"]:
            # PyTorch's: the running max of the raw (not bias-corrected) second moment, divided by
            # this step's bias correction sqrt(1 - beta2^t) in the denominator
            new["max_v"] = g.apply("maximum", state["max_v"], v)
        # Bias corrections depend only on t: scalars computed once per step.
        c1 = 1.0 - g.binary("pow", b1, t)
        c2 = 1.0 - g.binary("pow", b2, t)
        step_size = lr * _sqrt(c2) / c1
        new_p = p - step_size * m / (_sqrt(new.get("max_v", v)) + eps * _sqrt(c2))
        if self.decoupled and wd:
            new_p = new_p - (lr * wd) * p
        return new_p, new


@optimizer("adamw")
class AdamW(Adam):
    defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False}
    decoupled = True
