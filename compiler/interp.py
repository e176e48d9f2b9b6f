"""A NumPy interpreter for IR graphs, built from the ops' own references.
It serves as the reference of ops whose semantics is a subgraph (scan)."""
from __future__ import annotations

import numpy as np

from .ir import Value, producers_of


def evaluate(outputs: list[Value], feeds: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Values of `outputs` given arrays for the graph inputs they need (keyed by Value id)."""
    env = dict(feeds)
    for node in producers_of(outputs):
        args = [env[v.id] for v in node.inputs]
        result = node.op.ref(node.attrs, *args)
        results = result if isinstance(result, tuple) else (result,)
        for v, r in zip(node.outputs, results):
            env[v.id] = np.asarray(r, dtype=v.dtype)
    return [env[v.id] for v in outputs]
