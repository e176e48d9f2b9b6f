"""Ops that only move data: reshape, flatten, transpose, squeeze, unsqueeze."""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError

from ..ir import TensorType, dim_div, dim_mul, fmt_shape, normalize_axis, numel
from ..registry import REQUIRED, OpDef, Sample, op


def resolve_reshape(in_shape, target) -> tuple:
    """The output shape of reshaping `in_shape` to `target` (one entry may be -1)."""
    target = tuple(target)
    flag = next((d for d in target if isinstance(d, (bool, np.bool_))), None)
    if flag is not None:  # True is 1 to Python, but no size: it reached ONNX as a boolean dim
        raise ShapeError(f"reshape target {fmt_shape(target)} holds the boolean {flag}, not a size", arg="shape", hint="write sizes as integers, e.g. reshape(x, [1, 6])")
    if sum(1 for d in target if d == -1) > 1:
        raise ShapeError(f"reshape target {fmt_shape(target)} has more than one -1", hint="use -1 for at most one dim; write the others out")
    known = 1
    for d in target:
        if d != -1:
            known = dim_mul(known, d)
    total = numel(in_shape)
    if -1 in target:
        rest = dim_div(total, known)
        if rest is None:
            raise ShapeError(f"cannot reshape {fmt_shape(in_shape)} to {fmt_shape(target)}", arg="shape", hint=f"the target's fixed sizes multiply to {known}, which must divide the input's size {total}; "
                             "keep a symbolic dim such as N whole and reshape only the fixed ones")
        return tuple(rest if d == -1 else d for d in target)
    if known != total:
        raise ShapeError(f"cannot reshape {fmt_shape(in_shape)} ({total} elements) to {fmt_shape(target)} ({known})", arg="shape", hint=f"the target must hold {total} elements; use -1 for one dim to have it computed")
    return target


def reshape_code(in_shape, out_shape) -> list[int]:
    """ONNX Reshape's shape input for out_shape: ints as they are, a symbolic
    dim copied from the same position of the input (0) or inferred (-1)."""
    code = []
    for i, d in enumerate(out_shape):
        if isinstance(d, int):
            code.append(d)
        elif i < len(in_shape) and in_shape[i] == d:
            code.append(0)
        else:
            code.append(-1)
    if code.count(-1) > 1:
        raise ShapeError(f"cannot express reshape {fmt_shape(in_shape)} -> {fmt_shape(out_shape)} with one unknown dim", arg="shape", hint="a symbolic dim of the target (N, T) is copied from the same axis of the input, and one "
                         "other may be inferred: write the rest as numbers or declared dims, or transpose first")
    if 0 in out_shape:
        raise ShapeError("reshape to an empty dim is not supported", hint="give every dim of the target a size of 1 or more")
    return code


def reshape_back(g, x):
    """g (of x's size) reshaped to x's shape: by a static reshape where ONNX can write the
    target with one unknown dim, else to x's shape read at run time (the gradient of
    [N, T, E] -> [N*T, E] reshapes [N*T, E] back to [N, T, E], two unknown dims)."""
    try:
        reshape_code(g.shape, x.shape)
    except ShapeError:
        return x.graph.apply("reshape_like", g, x)
    return x.graph.apply("reshape", g, shape=tuple(x.shape))


@op("reshape")
class Reshape(OpDef):
    """x with a new shape of the same size; one dim may be -1."""

    attrs = {"shape": REQUIRED}
    gradgrad = True

    def infer(self, attrs, x):
        shape = resolve_reshape(x.shape, attrs["shape"])
        reshape_code(x.shape, shape)  # refused here, at the spec's reshape, not when the graph is emitted
        return [TensorType(x.dtype, shape)]

    def emit(self, e, node, ins, outs):
        code = reshape_code(node.inputs[0].shape, node.outputs[0].shape)
        e.add("Reshape", [ins[0], e.ints(code)], outs)

    def vjp(self, node, gouts):
        return [reshape_back(gouts[0], node.inputs[0])]

    def ref(self, attrs, x):
        return x.reshape(attrs["shape"])

    def samples(self, rng):
        x = rng.normal(size=(2, 3, 4))
        return [Sample([x], {"shape": (6, 4)}), Sample([x], {"shape": (2, -1)}), Sample([x], {"shape": (24,)})]


@op("reshape_like")
class ReshapeLike(OpDef):
    """x with the shape of `like`, of the same size (like's values are not used)."""

    inputs = ("x", "like")
    gradgrad = True

    def infer(self, attrs, x, like):
        if numel(x.shape) != numel(like.shape):
            raise ShapeError(f"cannot reshape {fmt_shape(x.shape)} to the shape {fmt_shape(like.shape)} of another size",
                             hint="give a `like` with as many elements as x")
        return [TensorType(x.dtype, like.shape)]

    def emit(self, e, node, ins, outs):
        e.add("Reshape", [ins[0], e.add("Shape", [ins[1]])], outs)

    def vjp(self, node, gouts):
        return [reshape_back(gouts[0], node.inputs[0]), None]

    def ref(self, attrs, x, like):
        return x.reshape(like.shape)

    def samples(self, rng):
        return [Sample([rng.normal(size=(6, 4)), rng.normal(size=(2, 3, 4))], grad_inputs=[0]),
                Sample([rng.normal(size=(2, 3, 4)), rng.normal(size=(24,))], grad_inputs=[0])]


@op("flatten")
class Flatten(OpDef):
    """x reshaped to 2-D: dims before `axis` become rows, the rest columns."""

    gradgrad = True

    attrs = {"axis": 1}
    composite = True

    def expand(self, g, x, axis):
        # axis in [-rank, rank], as ONNX Flatten: -1 leaves the last dim as the columns
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.rank <= axis <= x.rank:
            raise ShapeError(f"flatten axis must be an integer from {-x.rank} to {x.rank}, got {axis!r}", arg="axis", hint=f"use an axis from {-x.rank} to {x.rank}, e.g. flatten(x, axis=1)")
        axis = int(axis) + x.rank if axis < 0 else int(axis)
        rows, cols = numel(x.shape[:axis]), numel(x.shape[axis:])
        return g.apply("reshape", x, shape=(rows, cols))

    def ref(self, attrs, x):
        a = attrs["axis"]
        return x.reshape(int(np.prod(x.shape[:a])), -1)

    def samples(self, rng):
        x = rng.normal(size=(2, 3, 4))
        return [Sample([x]), Sample([x], {"axis": 2}), Sample([x], {"axis": -1}), Sample([x], {"axis": -3}),
                Sample([x], {"axis": 3})]


@op("transpose")
class Transpose(OpDef):
    """x with its axes permuted by `perm` (reversed when omitted)."""

    attrs = {"perm": None}
    gradgrad = True

    def perm(self, attrs, rank):
        perm = tuple(range(rank))[::-1] if attrs["perm"] is None else tuple(normalize_axis(p, rank) for p in attrs["perm"])
        if sorted(perm) != list(range(rank)):
            raise ShapeError(f"perm {attrs['perm']} is not a permutation of the {rank} axes", hint=f"list each axis from 0 to {rank - 1} once, e.g. perm={list(range(rank))[::-1]}")
        return perm

    def infer(self, attrs, x):
        perm = self.perm(attrs, x.rank)
        return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]

    def emit(self, e, node, ins, outs):
        perm = list(self.perm(node.attrs, node.inputs[0].rank))
        if perm == sorted(perm):  # nothing moves (a scalar has no axes: ONNX cannot even write its perm)
            e.add("Identity", ins, outs)
            return
        e.add("Transpose", ins, outs, perm=perm)

    def vjp(self, node, gouts):
        perm = self.perm(node.attrs, node.inputs[0].rank)
        inverse = tuple(int(i) for i in np.argsort(perm))
        return [gouts[0].graph.apply("transpose", gouts[0], perm=inverse)]

    def ref(self, attrs, x):
        return np.transpose(x, self.perm(attrs, x.ndim))

    def samples(self, rng):
        x = rng.normal(size=(2, 3, 4))
        return [Sample([x]), Sample([x], {"perm": (1, 0, 2)}), Sample([rng.normal(size=(3, 5))])]


@op("unsqueeze")
class Unsqueeze(OpDef):
    """x with new size-1 axes inserted at `axes` (positions in the output)."""

    attrs = {"axes": REQUIRED}
    gradgrad = True

    def out_axes(self, attrs, rank):
        axes = (attrs["axes"],) if isinstance(attrs["axes"], int) else tuple(attrs["axes"])
        out_rank = rank + len(axes)
        norm = sorted(normalize_axis(a, out_rank) for a in axes)
        if len(set(norm)) != len(norm):
            raise ShapeError(f"unsqueeze axes {axes} repeat", hint="name each axis once")
        return tuple(norm)

    def infer(self, attrs, x):
        axes = self.out_axes(attrs, x.rank)
        dims = iter(x.shape)
        shape = tuple(1 if i in axes else next(dims) for i in range(x.rank + len(axes)))
        return [TensorType(x.dtype, shape)]

    def emit(self, e, node, ins, outs):
        e.add("Unsqueeze", [ins[0], e.ints(self.out_axes(node.attrs, node.inputs[0].rank))], outs)

    def vjp(self, node, gouts):
        axes = self.out_axes(node.attrs, node.inputs[0].rank)
        return [gouts[0].graph.apply("squeeze", gouts[0], axes=axes)]

    def ref(self, attrs, x):
        return np.expand_dims(x, self.out_axes(attrs, x.ndim))

    def samples(self, rng):
        return [Sample([rng.normal(size=(3, 4))], {"axes": (0,)}), Sample([rng.normal(size=(3, 4))], {"axes": (1, 3)})]


@op("squeeze")
class Squeeze(OpDef):
    """x without the size-1 axes listed in `axes`."""

    attrs = {"axes": REQUIRED}
    gradgrad = True

    def norm_axes(self, attrs, x):
        axes = (attrs["axes"],) if isinstance(attrs["axes"], int) else tuple(attrs["axes"])
        norm = tuple(sorted(normalize_axis(a, x.rank) for a in axes))
        if len(set(norm)) != len(norm):  # as unsqueeze: its gradient (an unsqueeze) refused them
            raise ShapeError(f"squeeze axes {axes} repeat", hint="name each axis once")
        for a in norm:
            if x.shape[a] != 1:
                raise ShapeError(f"cannot squeeze axis {a} of size {x.shape[a]} in {fmt_shape(x.shape)}",
                                 hint="squeeze removes axes of size 1; reshape or index to drop others")
        return norm

    def infer(self, attrs, x):
        axes = self.norm_axes(attrs, x)
        return [TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]

    def emit(self, e, node, ins, outs):
        e.add("Squeeze", [ins[0], e.ints(self.norm_axes(node.attrs, node.inputs[0].type))], outs)

    def vjp(self, node, gouts):
        axes = self.norm_axes(node.attrs, node.inputs[0].type)
        return [gouts[0].graph.apply("unsqueeze", gouts[0], axes=axes)]

    def ref(self, attrs, x):
        axes = (attrs["axes"],) if isinstance(attrs["axes"], int) else tuple(attrs["axes"])
        return np.squeeze(x, axis=axes)

    def samples(self, rng):
        return [Sample([rng.normal(size=(3, 1, 4))], {"axes": (1,)}), Sample([rng.normal(size=(1, 3, 1))], {"axes": (0, -1)})]
