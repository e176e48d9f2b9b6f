"""Optimizers, written as IR so their updates are part of the training graph.

Each optimizer names its per-parameter state tensors (initialised to zeros)
and builds the update from the gradient, the state, the learning rate (a
graph input, so schedules need no recompile) and the 1-based update count t.
"""
from __future__ import annotations

from spec.errors import SpecError, did_you_mean

from .base import OPTIMIZERS, Optimizer, optimizer_from_config
from . import sgd, adaptive  # noqa: F401  (registers them)

__all__ = ["OPTIMIZERS", "Optimizer", "optimizer_from_config"]
