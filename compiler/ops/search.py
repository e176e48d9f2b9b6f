"""Ops for searching over outputs (beam search): top-k and integer divmod."""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError

from ..ir import TensorType, normalize_axis
from ..registry import REQUIRED, OpDef, Sample, op


@op("topk")
class TopK(OpDef):
    """The k largest entries along `axis`, largest first: (values, int64 indices). The
    values' gradient goes to the entries they were taken from (k-max pooling)."""

    attrs = {"k": REQUIRED, "axis": -1}
    n_outputs = 2
    gradgrad = True

    def infer(self, attrs, x):
        axis = normalize_axis(attrs["axis"], x.rank)
        k = int(attrs["k"])
        if isinstance(x.shape[axis], int) and k > x.shape[axis]:
            raise ShapeError(f"k={k} is larger than the axis ({x.shape[axis]})", arg="k", hint=f"use a k of at most {x.shape[axis]}")
        shape = tuple(k if i == axis else d for i, d in enumerate(x.shape))
        return [TensorType(x.dtype, shape), TensorType("int64", shape)]

    def emit(self, e, node, ins, outs):
        axis = normalize_axis(node.attrs["axis"], node.inputs[0].rank)
        e.add("TopK", [ins[0], e.ints([int(node.attrs["k"])])], outs, axis=axis, largest=1, sorted=1)

    def vjp(self, node, gouts):
        # the values are take_along_axis(x, indices): their cotangent is scattered back there
        (x,), (_, idx) = node.inputs, node.outputs
        return [gouts[0].graph.apply("scatter_add_along_axis", x, idx, gouts[0], axis=node.attrs["axis"])]

    def ref(self, attrs, x):
        axis = normalize_axis(attrs["axis"], x.ndim)
        idx = np.argsort(-x, axis=axis, kind="stable")
        idx = np.take(idx, np.arange(int(attrs["k"])), axis=axis)
        return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)

    def samples(self, rng):
        x = rng.permutation(24).reshape(4, 6).astype(np.float64)  # distinct values: no ties
        return [Sample([x], {"k": 3}), Sample([x], {"k": 2, "axis": 0})]


@op("divmod")
class DivMod(OpDef):
    """Floor division and remainder of integers by a positive constant: (x // d, x % d), as
    in Python and NumPy (for negative x too: -7 gives (-3, 2))."""

    attrs = {"d": REQUIRED}
    nondiff = True
    n_outputs = 2

    def infer(self, attrs, x):
        if x.dtype not in ("int64", "int32"):
            raise ShapeError(f"divmod needs integers, got {x.dtype}", hint="give it an int64 or int32 tensor; cast floats with cast(x, 'int64')")
        d = attrs["d"]
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ShapeError(f"divmod needs a positive integer d, got {d!r}", arg="d", hint="write d as a whole number of 1 or more")
        return [x, x]

    def emit(self, e, node, ins, outs):
        d = e.const(np.asarray(int(node.attrs["d"]), dtype=node.inputs[0].dtype))
        # ONNX's integer Mod floors (the sign of d) but its Div truncates toward zero: the
        # quotient is taken from the remainder, (x - x % d) / d, exact and floored
        rem = e.add("Mod", [ins[0], d], [outs[1]])
        e.add("Div", [e.add("Sub", [ins[0], rem]), d], [outs[0]])

    def ref(self, attrs, x):
        return x // int(attrs["d"]), x % int(attrs["d"])

    def samples(self, rng):
        return [Sample([rng.integers(0, 50, size=(3, 4))], {"d": 7}),
                Sample([np.asarray([-7, -6, -1, 0, 1, 6, 7, -21])], {"d": 3})]
