"""Stochastic gradient descent with optional (Nesterov) momentum."""
from __future__ import annotations

from .base import Optimizer, optimizer


@optimizer("sgd")
class SGD(Optimizer):
    defaults = {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0}

    @property
    def state_names(self):
        return ("velocity",) if self.hp["momentum"] else ()

    def update(self, p, grad, state, lr, t):
        grad = self.decayed(p, grad)
        mu = self.hp["momentum"]
        if not mu:
            return p - lr * grad, {}
        # PyTorch's form: v = mu*v + g; step along g + mu*v (Nesterov) or v.
        v = mu * state["velocity"] + grad
        step = grad + mu * v if self.hp["nesterov"] else v
        return p - lr * step, {"velocity": v}
