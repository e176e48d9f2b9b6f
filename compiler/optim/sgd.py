"""Stochastic gradient descent with optional (Nesterov, dampened) momentum."""
from __future__ import annotations

from .base import Optimizer, optimizer


@optimizer("sgd")
class SGD(Optimizer):
    defaults = {"momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}

    @property
    def state_names(self):
        return ("velocity",) if self.hp["momentum"] else ()

    def update(self, p, grad, state, lr, t):
        grad = self.decayed(p, self.ascent(grad))
        mu, d = self.hp["momentum"], self.hp["dampening"]
        if not mu:
            return p - lr * grad, {}
        # PyTorch's form: v = mu*v + (1 - dampening)*g, the first v being g itself (from a zero
        # velocity at t = 1, undampened); step along g + mu*v (Nesterov) or v.
        if d:
            g = p.graph
            later = g.apply("minimum", t - 1.0, g.lift(1.0, like=t))  # 0 at the first update, 1 after
            v = mu * state["velocity"] + (1.0 - d * later) * grad
        else:
            v = mu * state["velocity"] + grad
        step = grad + mu * v if self.hp["nesterov"] else v
        return p - lr * step, {"velocity": v}
