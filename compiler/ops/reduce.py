"""Reductions over axes: sum, mean, max, min, logsumexp, argmax, argmin, numel."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from spec.errors import FlowgradError, ShapeError

from ..ir import HALF_TYPES, TensorType, fmt_shape, is_float, normalize_axis
from ..registry import OpDef, Sample, get_op, op, require_dtype, require_float


def reduce_axes(axis, rank: int) -> tuple:
    """Normalized, sorted axes; None means all."""
    if axis is None:
        return tuple(range(rank))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = sorted({normalize_axis(a, rank) for a in axes})
    if len(out) != len(axes):  # as NumPy, and as squeeze and unsqueeze: [0, -2] of a matrix names axis 0 twice
        raise ShapeError(f"axes {list(axes)} name an axis twice for a tensor of rank {rank}", arg="axis",
                         hint="name each axis once")
    return tuple(out) if rank else ()  # a scalar's axis 0 is the scalar itself: nothing to reduce


def reduced_shape(shape, axes, keepdims) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def refuse_empty(name: str, x, axes) -> None:
    """A reduction with no identity (mean, max, min, argmax, argmin) over an axis known to
    be empty has no value; onnxruntime would return a number anyway (0 for a mean)."""
    empty = [a for a in axes if x.shape[a] == 0]
    if empty:
        raise ShapeError(f"axis {empty[0]} of {x} is empty, and a {name} of no entries has no value",
                         hint="check the slice or shape that made it empty", arg="x")


def keep_reduced(g, node):
    """The cotangent of a reduction reshaped to keepdims form, ready to broadcast."""
    axes = reduce_axes(node.attrs["axis"], node.inputs[0].rank)
    if node.attrs["keepdims"] or not axes:
        return g
    return g.graph.apply("unsqueeze", g, axes=axes)


STAGED_MIN = 2 ** 20  # values summed into each output (known dims) from which a sum or mean is staged
SPLIT_MIN = 2 ** 16  # a reduced axis this long is split in two (where its length has a divisor near its root)
STAGED_TYPES = ("float32", "float16", "bfloat16")


def near_root_split(n: int):
    """(a, b) with a * b = n and b the largest divisor of n up to sqrt(n), where b is
    within a factor 8 of sqrt(n); None where n has no such divisor (a prime, twice one)."""
    r = math.isqrt(n)
    for b in range(r, max(r // 8, 1) - 1, -1):
        if n % b == 0:
            return (n // b, b) if b > 1 else None
    return None


def emit_staged(e, onnx_op: str, x, src: str, axes, keepdims: int, outs) -> bool:
    """A float32 (or half) ReduceSum / ReduceMean over `axes` of `x` as one reduction per
    axis, innermost first, where each output sums at least STAGED_MIN values (the known
    dims'; a symbolic dim counts as 1); a reduced axis of SPLIT_MIN or more is reshaped
    to [a, b] (a * b its length, b near its root) and reduced over b, then a. onnxruntime
    accumulates a reduction nearly serially: over 10M values in [1, 1.1] a float32 sum or
    mean was 1.8e-3 off. Returns False (nothing emitted) where it does not apply, or where
    staging would leave one reduction anyway (one axis with no divisor near its root)."""
    shape = x.shape
    if x.dtype not in STAGED_TYPES:
        return False
    if math.prod(d if isinstance(d, int) else 1 for d in (shape[a] for a in axes)) < STAGED_MIN:
        return False
    splits = {a: s for a in axes if isinstance(shape[a], int) and shape[a] >= SPLIT_MIN
              for s in [near_root_split(shape[a])] if s}
    if splits:
        first = min(splits)
        after = [d for d in shape[first + 1:] if not (isinstance(d, int) and 0 < d)]
        if len(after) > 1 or any(d == 0 for d in after):  # (Reshape could not say the dims after it)
            splits = {}
    stages = []  # (axis in the reshaped tensor, keepdims); each stage leaves the axes before it where they were
    for a in reversed(axes):
        n = a + sum(1 for s in splits if s < a)
        stages += [(n + 1, 0), (n, keepdims)] if a in splits else [(n, keepdims)]
    if len(stages) < 2:
        return False
    cur = src
    if splits:
        dims = []
        for i, d in enumerate(shape):
            if i in splits:
                dims += list(splits[i])
            elif i < first:
                dims.append(d if isinstance(d, int) else 0)  # (0: Reshape copies the input's dim)
            else:
                dims.append(d if isinstance(d, int) else -1)
        cur = e.add("Reshape", [cur, e.ints(dims)])
    for k, (a, keep) in enumerate(stages):
        last = k == len(stages) - 1
        cur = e.add(onnx_op, [cur, e.ints([a])], outs if last else 1, keepdims=keep)
    return True


class Reduction(OpDef):
    attrs = {"axis": None, "keepdims": False}
    onnx = ""
    np_fn = None
    needs_entries = True  # no value over nothing (a sum has one: 0)
    staged = False  # many values to each output: one axis at a time (emit_staged)

    def infer(self, attrs, x):
        if x.dtype == "bool":
            raise ShapeError(f"cannot {self.name} a bool tensor", hint="cast it first, e.g. cast(x, 'float32')")
        axes = reduce_axes(attrs["axis"], x.rank)
        if self.needs_entries:
            refuse_empty(self.name, x, axes)
        return [TensorType(x.dtype, reduced_shape(x.shape, axes, attrs["keepdims"]))]

    def emit(self, e, node, ins, outs):
        axes = reduce_axes(node.attrs["axis"], node.inputs[0].rank)
        if not axes:
            e.add("Identity", ins, outs)
            return
        keepdims = int(bool(node.attrs["keepdims"]))
        if self.staged and emit_staged(e, self.onnx, node.inputs[0], ins[0], axes, keepdims, outs):
            return
        e.add(self.onnx, [ins[0], e.ints(axes)], outs, keepdims=keepdims)

    def ref(self, attrs, x):
        axes = reduce_axes(attrs["axis"], x.ndim)
        return type(self).np_fn(x, axis=axes, keepdims=bool(attrs["keepdims"]))

    def samples(self, rng):
        x = rng.normal(size=(3, 4, 2))
        return [
            Sample([x]),
            Sample([x], {"axis": 1}),
            Sample([x], {"axis": (0, 2), "keepdims": True}),
            Sample([x], {"axis": -1}),
        ]


@op("sum")
class Sum(Reduction):
    """Sum over `axis` (an int, a list, or all when omitted)."""

    onnx = "ReduceSum"
    np_fn = staticmethod(np.sum)
    gradgrad = True
    needs_entries = False
    staged = True

    def vjp(self, node, gouts):
        x = node.inputs[0]
        return [x.graph.apply("broadcast_like", keep_reduced(gouts[0], node), x)]


@op("max")
class Max(Reduction):
    """Maximum over `axis`; the gradient goes to the maximal entries, shared evenly
    where several tie (as torch.amax: a subgradient, where the whole gradient to each
    tied entry would count it once per tie)."""

    gradgrad = True

    onnx = "ReduceMax"
    np_fn = staticmethod(np.max)

    def vjp(self, node, gouts):
        x = node.inputs[0]
        gr = x.graph
        y = keep_reduced(node.outputs[0], node)
        g = keep_reduced(gouts[0], node)
        hit = gr.cast(gr.apply("eq", x, gr.apply("broadcast_like", y, x)), x.dtype)
        ties = keep_reduced(gr.apply("sum", hit, **node.attrs), node)
        return [hit * gr.apply("broadcast_like", g / ties, x)]


@op("min")
class Min(Max):
    """Minimum over `axis`; the gradient goes to the minimal entries, shared evenly where
    several tie."""

    onnx = "ReduceMin"
    np_fn = staticmethod(np.min)


@op("logsumexp")
class LogSumExp(OpDef):
    """log(sum(exp(x))) over `axis` (all when omitted), computed stably, as torch.logsumexp: the
    largest entry is taken out first, so large entries do not overflow and very negative ones do
    not all underflow to log(0). Its gradient is the softmax of x over the axes. log(sum(exp(x)))
    written out is built as this op."""

    attrs = {"axis": None, "keepdims": False}
    composite = True
    gradgrad = True

    def expand(self, g, x, axis, keepdims):
        require_float(x.type)
        axes = reduce_axes(axis, x.rank)
        refuse_empty(self.name, x, axes)
        if not axes:
            return x
        m = g.apply("max", x, axis=axes, keepdims=True)
        # a row of infinities (or of -inf, all masked) subtracts 0 instead, as torch does; the shift
        # is a constant to the result, so it passes no gradient (and none through max's ties)
        finite = g.apply("eq", m - m, g.lift(0.0, like=m))
        m = g.apply("stop_gradient", g.apply("where", finite, m, g.apply("zeros_like", m)))
        total = g.apply("sum", g.apply("exp", x - m), axis=axes, keepdims=True)
        out = OpDef.build(get_op("log"), g, [total], {}) + m  # (the log op would build this op again)
        return out if keepdims else g.apply("squeeze", out, axes=axes)

    def ref(self, attrs, x):
        axes = reduce_axes(attrs["axis"], x.ndim)
        m = np.max(x, axis=axes, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
        return out if attrs["keepdims"] else np.squeeze(out, axis=axes)

    def samples(self, rng):
        # the reductions' axes, and entries whose exps overflow (1000) or all underflow (-1000)
        return Reduction.samples(self, rng) + [
            Sample([np.array([[1000.0, 999.0, 0.5], [-1000.0, -1001.0, -1002.5]])], {"axis": 1}),
        ]


@op("numel")
class Numel(OpDef):
    """Number of elements along `axis` (all when omitted), as a float scalar."""

    attrs = {"axis": None, "dtype": None}
    nondiff = True

    def build(self, g, inputs, attrs):
        x = inputs[0]
        attrs = self.bind_attrs(attrs)
        if attrs["dtype"] is not None:
            try:
                require_dtype(attrs["dtype"])
            except FlowgradError as e:
                self._locate(e)  # (at dtype=: it made a node of the name before it was checked)
                raise
        axes = reduce_axes(attrs["axis"], x.rank)
        dims = [x.shape[a] for a in axes]
        known = all(isinstance(d, int) for d in dims)
        total = int(np.prod(dims, dtype=np.int64)) if known else None
        dtype = attrs["dtype"] or _float_of(g, x)
        if dtype in HALF_TYPES and (total is None or total > float(ml_dtypes.finfo(dtype).max)):
            # a count past the half type's range (65504 in float16) was inf, without a word
            if attrs["dtype"] is None and g.mixed_precision:  # a mixed-precision step counts in float32
                dtype = attrs["dtype"] = "float32"
            elif known:
                e = ShapeError(f"its argument {fmt_shape(x.shape)} has {total:,} entries{'' if attrs['axis'] is None else ' along axis ' + str(attrs['axis'])}, "
                               f"beyond the range of {dtype} (up to {float(ml_dtypes.finfo(dtype).max):g})", arg="x",
                               hint="count in float32: numel(..., dtype='float32'), or compile with train.dtype float32 "
                                    "(--dtype float32), or train with mixed_precision")
                self._locate(e)
                raise e
        if known:  # known now: a constant, not a node
            return g.const(np.asarray(float(total), dtype=dtype))
        return super().build(g, inputs, attrs)

    def infer(self, attrs, x):
        return [TensorType(attrs["dtype"] or (x.dtype if is_float(x.dtype) else "float32"), ())]

    def emit(self, e, node, ins, outs):
        from ..emit import onnx_dtype

        axes = reduce_axes(node.attrs["axis"], node.inputs[0].rank)
        shape = e.add("Shape", ins)
        if len(axes) == 1:  # one axis: its size is the count
            count = e.add("Gather", [shape, e.const(np.asarray(axes[0], dtype=np.int64))], axis=0)
        else:
            count = e.add("ReduceProd", [e.add("Gather", [shape, e.ints(axes)], axis=0)], keepdims=0)
        e.add("Cast", [count], outs, to=onnx_dtype(node.outputs[0].dtype))

    def ref(self, attrs, x):
        axes = reduce_axes(attrs["axis"], x.ndim)
        return np.asarray(float(np.prod([x.shape[a] for a in axes])), dtype=x.dtype)

    def samples(self, rng):
        return [Sample([rng.normal(size=(3, 4))]), Sample([rng.normal(size=(3, 4))], {"axis": 0})]


def _float_of(g, x):
    return x.dtype if is_float(x.dtype) else g.float_dtype


@op("mean")
class Mean(Reduction):
    """Mean over `axis` (all when omitted); bool and int inputs count as floats."""

    onnx = "ReduceMean"
    np_fn = staticmethod(np.mean)
    gradgrad = True
    staged = True  # staged means: each stage averages equal-size groups, so the mean of means is the mean

    def build(self, g, inputs, attrs):
        x = inputs[0]
        if not is_float(x.dtype):
            x = g.cast(x, g.float_dtype)
        return super().build(g, [x], attrs)

    def vjp(self, node, gouts):
        x = node.inputs[0]
        gr = x.graph
        g = keep_reduced(gouts[0], node)
        if x.dtype in HALF_TYPES:
            # the count in float32, and the division (g is the reduced value: a scalar for a
            # whole mean): in float16 a count past 65504 was inf, every gradient 1/inf = 0
            count = gr.apply("numel", x, axis=node.attrs["axis"], dtype="float32")
            return [gr.apply("broadcast_like", gr.cast(gr.cast(g, "float32") / count, x.dtype), x)]
        count = gr.apply("numel", x, axis=node.attrs["axis"])
        return [gr.apply("broadcast_like", g / count, x)]


class ArgReduction(OpDef):
    attrs = {"axis": -1, "keepdims": False}
    nondiff = True
    onnx = ""
    np_fn = None

    def infer(self, attrs, x):
        if x.dtype == "bool":
            raise ShapeError(f"{self.name} needs numbers, got {x}", hint="cast it with cast(x, 'float32')", arg="x")
        if x.rank == 0:
            raise ShapeError(f"{self.name} of a scalar: there is no axis to find an index along", arg="x", hint="give it a tensor of rank 1 or more")
        axis = normalize_axis(attrs["axis"], x.rank)
        refuse_empty(self.name, x, (axis,))
        return [TensorType("int64", reduced_shape(x.shape, (axis,), attrs["keepdims"]))]

    def emit(self, e, node, ins, outs):
        from ..emit import onnx_dtype

        x = node.inputs[0]
        axis = normalize_axis(node.attrs["axis"], x.rank)
        keepdims = int(bool(node.attrs["keepdims"]))
        if not is_float(x.dtype):
            e.add(self.onnx, ins, outs, axis=axis, keepdims=keepdims)
            return
        # onnxruntime's CPU ArgMax/ArgMin pass over NaNs (argmax of [1, nan, 3] was 2); NumPy,
        # PyTorch and onnx's reference name the first NaN. (The max and min reductions keep
        # onnxruntime's way, which costs nothing: README, Precision.)
        nan = e.add("Cast", [e.add("IsNaN", ins)], to=onnx_dtype(x.dtype))
        first_nan = e.add("ArgMax", [nan], axis=axis, keepdims=keepdims)
        has_nan = e.add("Cast", [e.add("ReduceMax", [nan, e.ints([axis])], keepdims=keepdims)], to=onnx_dtype("bool"))
        e.add("Where", [has_nan, first_nan, e.add(self.onnx, ins, axis=axis, keepdims=keepdims)], outs)

    def ref(self, attrs, x):
        return type(self).np_fn(x, axis=attrs["axis"], keepdims=bool(attrs["keepdims"]))

    def samples(self, rng):
        nan = rng.normal(size=(4, 5))
        nan[0, 3] = nan[2, 1] = nan[2, 4] = np.nan  # onnxruntime's ArgMax/ArgMin passed over them
        return [Sample([rng.normal(size=(4, 5))]), Sample([rng.normal(size=(4, 5))], {"axis": 0, "keepdims": True}),
                Sample([nan]), Sample([nan], {"axis": 0, "keepdims": True}),
                Sample([np.array([[1, 5, 5, 2], [3, 3, 0, 0]])])]  # ties and integers: the first


@op("argmax")
class ArgMax(ArgReduction):
    """Index of the largest entry along `axis` (int64)."""

    onnx = "ArgMax"
    np_fn = staticmethod(np.argmax)


@op("argmin")
class ArgMin(ArgReduction):
    """Index of the smallest entry along `axis` (int64)."""

    onnx = "ArgMin"
    np_fn = staticmethod(np.argmin)
