"""Reverse-mode differentiation over the IR.

The gradient is built from the ops' own `vjp` rules into the same Graph, so
it is an ordinary graph: it can be rewritten, emitted, and differentiated
again (grad of grad).
"""
from __future__ import annotations

from typing import Sequence

from spec.errors import GradientError

from .ir import Graph, Value, at, is_float, producers_of


def grad(ys: Sequence[Value], wrt: Sequence[Value], gys: Sequence[Value | None] | None = None) -> list[Value | None]:
    """d(sum_i <gys[i], ys[i]>)/d wrt, as new Values; None where wrt does not reach ys.

    `gys` defaults to ones for each y (so a scalar loss gives its gradient)."""
    ys = list(ys)
    if not ys:
        return [None] * len(wrt)
    g: Graph = ys[0].graph
    gys = list(gys) if gys is not None else [None] * len(ys)

    # Only nodes on a path from some wrt to some y matter.
    wrt_ids = {v.id for v in wrt}
    depends: set[int] = set(wrt_ids)
    path_nodes = []
    for node in producers_of(ys):
        if node.op.nondiff:
            continue
        if any(v.id in depends for v in node.inputs):
            depends.update(o.id for o in node.outputs)
            path_nodes.append(node)

    cot: dict[int, Value] = {}

    def accumulate(v: Value, gv: Value) -> None:
        if gv.shape != v.shape or gv.dtype != v.dtype:
            raise AssertionError(f"gradient for {v} has type {gv.type}")
        cot[v.id] = cot[v.id] + gv if v.id in cot else gv

    for y, gy in zip(ys, gys):
        if y.id in depends and is_float(y.dtype):
            accumulate(y, gy if gy is not None else g.apply("ones_like", y))

    for node in reversed(path_nodes):
        gouts = [cot.get(o.id) for o in node.outputs]
        if all(go is None for go in gouts):
            continue
        if node.op.vjp is None:
            raise GradientError(f"op {node.op.name!r} has no gradient rule", node.loc,
                                "keep it off the path from the parameters to the loss, or wrap its input in "
                                "stop_gradient(...); `flowgrad ops` shows which ops have gradients")
        gouts = [
            go if go is not None else (g.apply("zeros_like", o) if is_float(o.dtype) else None)
            for go, o in zip(gouts, node.outputs)
        ]
        first = len(g.nodes)
        with at(node.loc):  # gradient nodes point at the spec text of the node they differentiate
            in_grads = node.op.vjp(node, gouts)
        for made in g.nodes[first:]:  # and remember it, for errors that name what the spec wrote
            if made.grad_of is None:
                made.grad_of = node
        for v, gv in zip(node.inputs, in_grads):
            if gv is not None and v.id in depends and is_float(v.dtype):
                accumulate(v, gv)

    return [cot.get(v.id) for v in wrt]
