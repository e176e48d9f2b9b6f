"""Optimizers with per-coordinate step sizes: AdaGrad, RMSProp, Adam, AdamW."""
from __future__ import annotations

from .base import Optimizer, optimizer


def _sqrt(x):
    return x.graph.apply("sqrt", x)


@optimizer("adagrad")
class AdaGrad(Optimizer):
    defaults = {"eps": 1e-10, "weight_decay": 0.0}
    state_names = ("sum_sq",)

    def update(self, p, grad, state, lr, t):
        grad = self.decayed(p, grad)
        s = state["sum_sq"] + grad * grad
        return p - lr * grad / (_sqrt(s) + self.hp["eps"]), {"sum_sq": s}


@optimizer("rmsprop")
class RMSProp(Optimizer):
    defaults = {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0}

    @property
    def state_names(self):
        return ("mean_sq", "velocity") if self.hp["momentum"] else ("mean_sq",)

    def update(self, p, grad, state, lr, t):
        grad = self.decayed(p, grad)
        a = self.hp["alpha"]
        ms = a * state["mean_sq"] + (1.0 - a) * (grad * grad)
        step = grad / (_sqrt(ms) + self.hp["eps"])
        if not self.hp["momentum"]:
            return p - lr * step, {"mean_sq": ms}
        v = self.hp["momentum"] * state["velocity"] + step
        return p - lr * v, {"mean_sq": ms, "velocity": v}


@optimizer("adam")
class Adam(Optimizer):
    defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    state_names = ("m", "v")
    decoupled = False

    def update(self, p, grad, state, lr, t):
        b1, b2, eps, wd = self.hp["beta1"], self.hp["beta2"], self.hp["eps"], self.hp["weight_decay"]
        if not self.decoupled:
            grad = self.decayed(p, grad)
        m = b1 * state["m"] + (1.0 - b1) * grad
        v = b2 * state["v"] + (1.0 - b2) * (grad * grad)
        g = p.graph
        # Bias corrections depend only on t: scalars computed once per step.
        c1 = 1.0 - g.binary("pow", b1, t)
        c2 = 1.0 - g.binary("pow", b2, t)
        step_size = lr * _sqrt(c2) / c1
        new_p = p - step_size * m / (_sqrt(v) + eps * _sqrt(c2))
        if self.decoupled and wd:
            new_p = new_p - (lr * wd) * p
        return new_p, {"m": m, "v": v}


@optimizer("adamw")
class AdamW(Adam):
    defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}
    decoupled = True
