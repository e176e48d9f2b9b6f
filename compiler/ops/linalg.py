"""Matrix products."""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError

from ..ir import TensorType, broadcast_shapes, fmt_shape
from ..registry import OpDef, Sample, op, require_float


def swap_last(x):
    perm = list(range(x.rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return x.graph.apply("transpose", x, perm=tuple(perm))


@op("matmul")
class MatMul(OpDef):
    """a @ b with NumPy semantics: batched and broadcasting; 1-D operands are vectors."""

    inputs = ("a", "b")
    gradgrad = True

    def emit(self, e, node, ins, outs):
        a, b = node.inputs
        if b.rank == 1 and a.rank >= 2:
            # onnxruntime multiplies by a one-column matrix ~17x faster than by a 1-D vector
            column = e.add("Unsqueeze", [ins[1], e.ints([1])])
            e.add("Squeeze", [e.add("MatMul", [ins[0], column]), e.ints([-1])], outs)
        else:
            e.add("MatMul", ins, outs)

    def infer(self, attrs, a, b):
        require_float(a, "left operand of @")
        require_float(b, "right operand of @")
        if a.dtype != b.dtype:
            raise ShapeError(f"operands of @ have different dtypes {a.dtype} and {b.dtype}", hint=f"cast one side to the other's type, e.g. cast(x, '{a.dtype}')")
        if a.rank == 0 or b.rank == 0:
            raise ShapeError("@ needs operands of rank >= 1", hint="use * to scale by a scalar")
        sa = a.shape if a.rank > 1 else (1,) + tuple(a.shape)
        sb = b.shape if b.rank > 1 else tuple(b.shape) + (1,)
        if sa[-1] != sb[-2]:
            raise ShapeError(
                f"shape mismatch in a @ b: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}",
                hint=f"the last dim of a ({sa[-1]}) must equal the {'only' if b.rank == 1 else 'second-to-last'} dim of b ({sb[-2]})",
            )
        batch = broadcast_shapes(sa[:-2], sb[:-2], what="batch dims of @")
        out = tuple(batch) + ((sa[-2],) if a.rank > 1 else ()) + ((sb[-1],) if b.rank > 1 else ())
        return [TensorType(a.dtype, out)]

    def vjp(self, node, gouts):
        a, b = node.inputs
        (g,) = gouts
        gr = g.graph
        if b.rank == 2 and a.rank > 2 and isinstance(a.shape[-1], int) and isinstance(b.shape[-1], int):
            # A shared matrix applied to every row of a batch ([.., K] @ [K, M]): its gradient is one
            # product over all rows, not a product per batch entry summed afterwards.
            rows_a = gr.apply("reshape", a, shape=(-1, a.shape[-1]))
            rows_g = gr.apply("reshape", g, shape=(-1, b.shape[-1]))
            gb = gr.apply("transpose", rows_a) @ rows_g
            return [g @ swap_last(b), gb]
        # View vectors as matrices so one rule serves every case.
        a2 = a if a.rank > 1 else gr.apply("unsqueeze", a, axes=(0,))
        b2 = b if b.rank > 1 else gr.apply("unsqueeze", b, axes=(1,))
        g2 = g
        if a.rank == 1:
            g2 = gr.apply("unsqueeze", g2, axes=(g2.rank - (0 if b.rank == 1 else 1),))
        if b.rank == 1:
            g2 = gr.apply("unsqueeze", g2, axes=(g2.rank,))
        ga = g2 @ swap_last(b2)
        gb = swap_last(a2) @ g2
        ga = gr.apply("sum_to", ga, shape=tuple(a2.shape)) if ga.shape != a2.shape else ga
        gb = gr.apply("sum_to", gb, shape=tuple(b2.shape)) if gb.shape != b2.shape else gb
        if a.rank == 1:
            ga = gr.apply("squeeze", ga, axes=(0,))
        if b.rank == 1:
            gb = gr.apply("squeeze", gb, axes=(1,))
        return [ga, gb]

    def ref(self, attrs, a, b):
        return np.matmul(a, b)

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(3, 4)), n(size=(4, 5))]),
            Sample([n(size=(2, 3, 4)), n(size=(4, 5))]),
            Sample([n(size=(2, 3, 4)), n(size=(2, 4, 2))]),
            Sample([n(size=(2, 1, 3, 4)), n(size=(3, 4, 2))]),
            Sample([n(size=(4,)), n(size=(4, 3))]),
            Sample([n(size=(3, 4)), n(size=(4,))]),
            Sample([n(size=(2, 3, 4)), n(size=(4,))]),
            Sample([n(size=(4,)), n(size=(4,))]),
        ]


@op("gemm")
class Gemm(OpDef):
    """alpha * op(a) @ op(b) + beta * c for matrices (op = optional transpose); made by rewrites."""

    internal = True
    inputs = ("a", "b", "c")
    attrs = {"trans_a": False, "trans_b": False, "alpha": 1.0, "beta": 1.0}
    gradgrad = True

    def infer(self, attrs, a, b, c):
        if a.rank != 2 or b.rank != 2:
            raise ShapeError("gemm needs matrices", hint="give it two matrices [M, K] and [K, N]")
        m, k = (a.shape[1], a.shape[0]) if attrs["trans_a"] else a.shape
        k2, n = (b.shape[1], b.shape[0]) if attrs["trans_b"] else b.shape
        if k != k2:
            raise ShapeError(f"gemm inner dims differ: {k} and {k2}", hint="the inner dims must be equal: [M, K] and [K, N]")
        out = (m, n)
        if broadcast_shapes(c.shape, out) != out:
            raise ShapeError(f"gemm bias {fmt_shape(c.shape)} does not broadcast to {fmt_shape(out)}", hint=f"give a bias that broadcasts to {fmt_shape(out)}, e.g. [{out[1]}]")
        return [TensorType(a.dtype, out)]

    def emit(self, e, node, ins, outs):
        at = node.attrs
        if float(at["beta"]) == 0.0:
            ins = ins[:2]  # no bias: Gemm's C is optional
        e.add("Gemm", ins, outs, transA=int(at["trans_a"]), transB=int(at["trans_b"]),
              alpha=float(at["alpha"]), beta=float(at["beta"]) if len(ins) == 3 else None)

    def vjp(self, node, gouts):
        a, b, c = node.inputs
        (g,) = gouts
        gr = g.graph
        at = node.attrs
        A = swap_last(a) if at["trans_a"] else a
        B = swap_last(b) if at["trans_b"] else b
        ga = g @ swap_last(B)
        gb = swap_last(A) @ g
        if at["trans_a"]:
            ga = swap_last(ga)
        if at["trans_b"]:
            gb = swap_last(gb)
        if at["alpha"] != 1.0:
            ga, gb = ga * at["alpha"], gb * at["alpha"]
        gc = g * at["beta"] if at["beta"] != 1.0 else g
        return [ga, gb, gr.apply("sum_to", gc, shape=tuple(c.shape))]

    def ref(self, attrs, a, b, c):
        A = a.T if attrs["trans_a"] else a
        B = b.T if attrs["trans_b"] else b
        return attrs["alpha"] * (A @ B) + attrs["beta"] * c

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(3, 4)), n(size=(4, 5)), n(size=(5,))]),
            Sample([n(size=(4, 3)), n(size=(5, 4)), n(size=(3, 5))], {"trans_a": True, "trans_b": True}),
            Sample([n(size=(3, 4)), n(size=(5, 4)), n(size=(1, 5))], {"trans_b": True, "alpha": 0.5, "beta": 2.0}),
        ]
