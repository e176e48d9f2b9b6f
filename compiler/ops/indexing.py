"""Indexing and data movement by position: concat, split, slice, pad, take
(gather), scatter_add, take_along_axis, embedding, one_hot and `index`, the
op behind the spec's subscript syntax x[0], x[:, 1:3], x[..., -1], x[None].

Gradients pair up so that each is again differentiable: slice <-> pad (or
scatter_add where a slice has a step or a symbolic dim), take <-> scatter_add,
take_along_axis <-> scatter_add_along_axis, concat <-> split.
"""
from __future__ import annotations

import numpy as np
import onnx

from spec.errors import GradientError, ShapeError

from ..ir import TensorType, _factors, _join, dim_less, dim_shift, fmt_shape, normalize_axis
from ..registry import REQUIRED, OpDef, Sample, op, require_dtype

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
INDEX_DTYPES = ("int32", "int64")
# A bound this far from 0 on a symbolic dim reads as the end it points past (ONNX's and C's habit
# of INT_MAX, or sys.maxsize, for "to the end"): x[:, -2:2147483647] is x[:, -2:]. Not less: a
# million could be a real bound of a long dim, read as the end without a word; such a bound holds
# for data at least that long, which is checked before a run (least_sizes).
TO_THE_END = 2**31 - 1


def dim_add(a, b):
    """a + b for dims; symbolic dims add when they are multiples of the same
    product ("N" + "2*N" = "3*N"), otherwise the sum has no name: None."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    ca, na = _factors(a)
    cb, nb = _factors(b)
    if sorted(na) != sorted(nb) or not na:
        return None
    return _join(ca + cb, na)


def _require_index(t: TensorType, what="indices"):
    if t.dtype not in INDEX_DTYPES:
        raise ShapeError(f"{what} must be an int32/int64 tensor, got {t.dtype}", hint="cast it with cast(i, 'int64')")


# ------------------------------------------------------------------ concat / split
@op("concat")
class Concat(OpDef):
    """Join tensors along `axis`; all other dims must agree."""

    inputs = ("x",)
    variadic = True
    attrs = {"axis": 0}
    gradgrad = True

    def infer(self, attrs, *xs):
        if not xs:
            raise ShapeError("concat needs at least one tensor", hint="usage: concat(a, b, ..., axis=0)")
        first = xs[0]
        axis = normalize_axis(attrs["axis"], first.rank)
        total = first.shape[axis]
        for t in xs:
            if t.dtype != first.dtype:
                # an integer beside a float is usually ids that were meant to be embedded: casting
                # the float to int64, as the hint said when the ids came first, truncates it
                mixed = {first.dtype.startswith("float"), t.dtype.startswith("float")} == {True, False}
                raise ShapeError(f"cannot concat {first.dtype} with {t.dtype}",
                                 hint="cast the integer tensor with cast(x, 'float32'), or look up ids first with "
                                      "embedding(ids, V, E)" if mixed else f"cast them to one type first, e.g. cast(x, '{first.dtype}')")
            if t.rank != first.rank:
                raise ShapeError(f"cannot concat tensors of ranks {first.rank} and {t.rank}", hint="reshape them to one rank first, e.g. reshape(x, [N, 1])")
            for i, (d, e) in enumerate(zip(first.shape, t.shape)):
                if i != axis and d != e:
                    raise ShapeError(
                        f"cannot concat {fmt_shape(first.shape)} with {fmt_shape(t.shape)} along axis {axis}",
                        hint="every dim except the concatenation axis must agree",
                    )
        for t in xs[1:]:
            total = dim_add(total, t.shape[axis])
            if total is None:
                raise ShapeError(f"concat along axis {axis} mixes the symbolic sizes {', '.join(str(t.shape[axis]) for t in xs)}", hint="concatenate along an axis of fixed sizes, or declare the sizes under dims")
        shape = list(first.shape)
        shape[axis] = total
        return [TensorType(first.dtype, tuple(shape))]

    def emit(self, e, node, ins, outs):
        e.add("Concat", ins, outs, axis=normalize_axis(node.attrs["axis"], node.inputs[0].rank))

    def vjp(self, node, gouts):
        (g,) = gouts
        xs = node.inputs
        axis = normalize_axis(node.attrs["axis"], xs[0].rank)
        sizes = [x.shape[axis] for x in xs]
        if len(xs) == 1:
            return [g]
        if all(isinstance(s, int) for s in sizes):
            parts = g.graph.apply("split", g, sections=tuple(sizes), axis=axis)
        elif len(set(sizes)) == 1:
            parts = g.graph.apply("split", g, sections=len(xs), axis=axis)
        else:
            raise GradientError(f"cannot differentiate concat of the symbolic sizes {sizes} along axis {axis}", hint="concatenate along an axis of fixed sizes, or declare the sizes under dims")
        return list(parts)

    def ref(self, attrs, *xs):
        return np.concatenate(xs, axis=attrs["axis"])

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(2, 3)), n(size=(4, 3))]),
            Sample([n(size=(2, 3)), n(size=(2, 1)), n(size=(2, 2))], {"axis": -1}),
            Sample([n(size=(2, 3, 2)), n(size=(2, 3, 2))], {"axis": 1}),
            Sample([n(size=(3,))]),
        ]


@op("split")
class Split(OpDef):
    """Split x along `axis` into `sections` equal parts (an int) or parts of the
    given sizes (a list); returns a tuple of tensors."""

    attrs = {"sections": REQUIRED, "axis": -1}
    gradgrad = True

    def sizes(self, attrs, x: TensorType):
        axis = normalize_axis(attrs["axis"], x.rank)
        d = x.shape[axis]
        sec = attrs["sections"]
        if isinstance(sec, (int, np.integer)):
            sec = int(sec)
            if sec < 1:
                raise ShapeError(f"split into {sec} parts", hint="split into 1 or more parts, e.g. split(x, 2, axis=-1)")
            if isinstance(d, int):
                if d % sec:
                    raise ShapeError(f"cannot split a dim of size {d} into {sec} equal parts",
                                     hint="give the part sizes as a list")
                return axis, [d // sec] * sec
            from ..ir import dim_div

            part = dim_div(d, sec)
            if part is None:
                raise ShapeError(f"cannot split the symbolic dim {d} into {sec} equal parts", hint="split an axis of fixed size, or give a dim the parts divide, e.g. 2*H into 2")
            return axis, [part] * sec
        sizes = [int(s) for s in sec]
        if any(s < 0 for s in sizes):
            raise ShapeError(f"split sizes {sizes} must not be negative", hint="give sizes of 0 or more that add up to the axis")
        if not isinstance(d, int):
            raise ShapeError(f"cannot split the symbolic dim {d} into the fixed sizes {sizes}", hint="split into equal parts, e.g. split(x, 2, axis=...), or declare the size under dims")
        if sum(sizes) != d:
            raise ShapeError(f"split sizes {sizes} add up to {sum(sizes)}, but the dim has size {d}", hint=f"make the sizes add up to {d}")
        return axis, sizes

    def infer(self, attrs, x):
        axis, sizes = self.sizes(attrs, x)
        out = []
        for s in sizes:
            shape = list(x.shape)
            shape[axis] = s
            out.append(TensorType(x.dtype, tuple(shape)))
        return out

    def emit(self, e, node, ins, outs):
        axis, sizes = self.sizes(node.attrs, node.inputs[0].type)
        if all(isinstance(s, int) for s in sizes):
            e.add("Split", [ins[0], e.ints(sizes)], outs, axis=axis)
        else:
            e.add("Split", [ins[0]], outs, axis=axis, num_outputs=len(sizes))

    def vjp(self, node, gouts):
        axis, _ = self.sizes(node.attrs, node.inputs[0].type)
        if len(gouts) == 1:
            return [gouts[0]]
        return [gouts[0].graph.apply("concat", *gouts, axis=axis)]

    def ref(self, attrs, x):
        axis, sizes = self.sizes(attrs, TensorType(x.dtype.name, x.shape))
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))

    def samples(self, rng):
        x = rng.normal(size=(4, 6))
        return [
            Sample([x], {"sections": 3}),
            Sample([x], {"sections": (1, 3, 2)}),
            Sample([x], {"sections": 2, "axis": 0}),
            Sample([x], {"sections": (4,), "axis": 0}),
        ]


# ------------------------------------------------------------------ slice / pad
def subscript(start, end, step) -> str:
    """A slice as a subscript writes it: [1:4:2], [-3:-1] (a step of 1 unwritten), [1:], [:-1]."""
    bounds = f"{'' if start is None else start}:{'' if end is None else end}"
    return f"[{bounds}]" if step == 1 else f"[{bounds}:{step}]"


class _AxisSlice:
    """One axis of a slice: `kind` is 'static' (known dim), 'symbolic'
    (bounds on one side of a symbolic dim), 'shift' (step 1 from a start counted from the
    beginning to an end counted from the end of a symbolic dim: x[:, 1:] of T is T-1 long,
    `length` a dim such as "T-1"), or 'reverse' (x[::-1] on any dim)."""

    __slots__ = ("axis", "start", "end", "step", "kind", "length", "dim")

    def __init__(self, axis, start, end, step, kind, length, dim):
        self.axis, self.start, self.end, self.step = axis, start, end, step
        self.kind, self.length, self.dim = kind, length, dim

    @property
    def least(self) -> int:
        """The least size of the dim that a 'symbolic' slice's static length holds for: past
        its last position read (x[:, 1:4:2] needs T >= 4, x[:, -1:-4:-2] T >= 3). Shorter data
        would have fewer entries than the graph's shape says."""
        if self.kind == "shift":  # (at least one entry: x[:, 1:-1] needs T >= 3)
            return (self.start or 0) + (-self.end if self.end is not None else 0) + 1
        if self.kind != "symbolic":
            return 0
        return max((p + 1 if p >= 0 else -p for p in self.positions()), default=0)

    def text(self) -> str:
        """The slice as a subscript writes it: [1:4:2], [-3:-1] (a step of 1 unwritten), a shift [:-1] or [1:]."""
        return subscript(self.start or None, self.end, self.step)

    def positions(self) -> list[int]:
        """Indices along the axis that the slice reads (negative ones count from the end)."""
        if self.kind == "static":
            return list(range(*slice(self.start, self.end, self.step).indices(self.dim)))
        start = self.start if self.start is not None else 0
        return [start + self.step * j for j in range(self.length)]


def _slice_plan(attrs, shape) -> list[_AxisSlice]:
    """Normalized per-axis slices; axes the slice leaves whole are dropped."""
    starts, ends = list(attrs["starts"]), list(attrs["ends"])
    rank = len(shape)
    axes = list(range(len(starts))) if attrs["axes"] is None else list(attrs["axes"])
    steps = [1] * len(starts) if attrs["steps"] is None else list(attrs["steps"])
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError("slice needs starts, ends, axes and steps of the same length", hint="give one start, end and step per axis")
    axes = [normalize_axis(a, rank) for a in axes]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"slice axes {axes} repeat", hint="name each axis once")
    plan = []
    for axis, s, t, st in zip(axes, starts, ends, steps):
        s = None if s is None else int(s)
        t = None if t is None else int(t)
        st = 1 if st is None else int(st)
        if st == 0:
            raise ShapeError("slice step cannot be zero", hint="use a non-zero step, e.g. x[::2] or x[::-1]")
        d = shape[axis]
        if isinstance(d, int):
            length = len(range(*slice(s, t, st).indices(d)))
            if (length == d and st == 1) or d == 0:
                continue
            if st == -1 and length == d:
                plan.append(_AxisSlice(axis, s, t, st, "reverse", d, d))
                continue
            plan.append(_AxisSlice(axis, s, t, st, "static", length, d))
            continue
        # A symbolic dim: the length is known only when both bounds count from
        # the same end, and holds for data where the dim is long enough (_AxisSlice.least,
        # which the data is checked against before a run: compiler.training.least_sizes).
        # A bound of TO_THE_END or beyond is the end it points past.
        given = (s, t)
        if st > 0:
            s = None if s is not None and s <= -TO_THE_END else s
            t = None if t is not None and t >= TO_THE_END else t
        else:
            s = None if s is not None and s >= TO_THE_END else s
            t = INT64_MIN if t is not None and t <= -TO_THE_END else t
        big = t is None or t >= INT64_MAX // 2
        if st == 1 and s in (None, 0) and big:
            continue
        if st == -1 and s in (None, -1) and (t is None or t <= INT64_MIN // 2):
            plan.append(_AxisSlice(axis, s, t, st, "reverse", d, d))
            continue
        if st > 0 and t is not None and not big and ((0 if s is None else s) >= 0) == (t >= 0):
            s = 0 if s is None else s  # (x[:, :2], the first two steps: an open start is the first entry)
            length = max(0, -(-(t - s) // st))
        elif st > 0 and s is not None and s < 0 and (t is None or big):
            length = -(-(-s) // st)
        elif st < 0 and t is not None and t > INT64_MIN // 2 and ((-1 if s is None else s) >= 0) == (t >= 0):
            # backwards between bounds counted from one end (x[-1:-4:-2], x[5:1:-1]; an open start
            # is the last entry, x[:-4:-1])
            s = -1 if s is None else s
            length = max(0, len(range(s, t, st)))
        elif (st == 1 and (s is None or s >= 0) and (t is None or big or t < 0)
              and dim_less(d, (s or 0) + (0 if t is None or big else -t)) is not None):
            # a shift: from the start's entry to the end's, counted from either end (x[:, 1:],
            # x[:, :-1], x[:, 2:-1]): the dim less both, "T-1"; data needs one entry or more
            s, t = s or 0, None if t is None or big else t
            plan.append(_AxisSlice(axis, s, t, st, "shift", dim_less(d, s + (0 if t is None else -t)), d))
            continue
        else:
            gs, gt = given
            written = subscript(gs, gt, st)
            ends = [b for b in given if b is not None and abs(b) >= TO_THE_END]
            raise ShapeError(
                f"cannot slice the symbolic dim {d} with {written}"
                + (f" (a bound of {ends[0]} reads as the end of {d}: the size of "
                   f"{subscript(s, None if t is None or t <= INT64_MIN // 2 else t, st)} follows {d})"
                   if ends else ""),
                hint="the output size must not depend on the dim: count both bounds from the start or both from the "
                     "end (x[-3:-1], x[1:4:2], x[-1:-4:-2]), shift it by step 1 (x[1:], x[:-1], x[1:-1]: T-1, T-2), "
                     "or reverse it whole (x[::-1])"
                     + (f"; or give {d} a size under dims" if ends else ""),
            )
        plan.append(_AxisSlice(axis, s, t, st, "symbolic", length, d))
    return plan


@op("slice")
class Slice(OpDef):
    """x[starts:ends:steps] on `axes` (default 0, 1, ...), with ONNX Slice (=
    Python) semantics: negative indices count from the end, bounds clamp, None
    means open. Slicing a symbolic dim needs both bounds counted from the same end
    (a bound of 2147483647, INT_MAX, or beyond is the end), and its data at least
    as long as the slice's size assumes (x[:, -1:-4:-2]: 3 steps), which train,
    eval and predict check before running; or step 1 from a start counted from the
    beginning to an end counted from the end (x[:, 1:], x[:, :-1], x[:, 1:-1]), whose
    size is the dim less both ("T-1", "T-2": x[:, :-1] and x[:, 1:] combine), on data
    of one entry more than that or longer."""

    attrs = {"starts": REQUIRED, "ends": REQUIRED, "axes": None, "steps": None}
    gradgrad = True

    def infer(self, attrs, x):
        shape = list(x.shape)
        for a in _slice_plan(attrs, x.shape):
            shape[a.axis] = a.length
        return [TensorType(x.dtype, tuple(shape))]

    def emit(self, e, node, ins, outs):
        plan = _slice_plan(node.attrs, node.inputs[0].shape)
        if not plan:
            e.add("Identity", ins, outs)
            return
        starts, ends, steps = [], [], []
        for a in plan:
            if a.kind == "static":
                # Python's clamped bounds: ONNX clamps a negative step's start before the
                # beginning to 0 (one element) and reads a stop of -1 as the last element
                start, stop, step = slice(a.start, a.end, a.step).indices(a.dim)
                if a.length == 0:
                    start, stop, step = 0, 0, 1
                elif step < 0 and stop < 0:
                    stop = INT64_MIN
                starts.append(start), ends.append(stop), steps.append(step)
                continue
            starts.append(a.start if a.start is not None else (0 if a.step > 0 else INT64_MAX))
            ends.append(a.end if a.end is not None else (INT64_MAX if a.step > 0 else INT64_MIN))
            steps.append(a.step)
        e.add("Slice", [ins[0], e.ints(starts), e.ints(ends), e.ints([a.axis for a in plan]), e.ints(steps)], outs)

    def vjp(self, node, gouts):
        """Undo the slice axis by axis: a reversal by reversing, a step or a
        symbolic dim by scatter_add into the axis, plain static ranges by one pad."""
        x = node.inputs[0]
        (g,) = gouts
        gr = g.graph
        plan = _slice_plan(node.attrs, x.shape)
        padded = [a for a in plan if (a.kind == "static" and a.step == 1) or a.kind == "shift"]
        pending = [a for a in plan if a not in padded]
        while pending:
            a = pending.pop()
            if a.kind == "reverse":
                g = gr.apply("slice", g, starts=(None,), ends=(None,), axes=(a.axis,), steps=(-1,))
                continue
            # zeros of the intermediate shape: x still sliced on the axes not yet undone
            rest = [b for b in pending + padded if b.kind != "reverse"]
            like = x
            if rest:
                like = gr.apply("slice", x, starts=tuple(b.start for b in rest), ends=tuple(b.end for b in rest),
                                axes=tuple(b.axis for b in rest), steps=tuple(b.step for b in rest))
            pos = gr.const(np.asarray(a.positions(), dtype=np.int64))
            g = gr.apply("scatter_add", like, pos, g, axis=a.axis)
        if padded:
            pads = [(0, 0)] * x.rank
            for a in padded:
                if a.kind == "shift":  # (T-1 back to T: pad by the entries cut off)
                    pads[a.axis] = (a.start, 0 if a.end is None else -a.end)
                    continue
                begin = a.positions()[0] if a.length else 0
                pads[a.axis] = (begin, a.dim - begin - a.length)
            g = gr.apply("pad", g, pads=tuple(pads))
        return [g]

    def ref(self, attrs, x):
        idx = [slice(None)] * x.ndim
        axes = range(len(attrs["starts"])) if attrs["axes"] is None else attrs["axes"]
        steps = [1] * len(attrs["starts"]) if attrs["steps"] is None else attrs["steps"]
        for a, s, t, st in zip(axes, attrs["starts"], attrs["ends"], steps):
            idx[a] = slice(s, t, st)
        return x[tuple(idx)]

    def samples(self, rng):
        x = rng.normal(size=(4, 5, 3))
        return [
            Sample([x], {"starts": (1,), "ends": (3,)}),
            Sample([x], {"starts": (0, -4), "ends": (100, -1), "axes": (0, 1)}),
            Sample([x], {"starts": (0, 4), "ends": (4, None), "axes": (0, 1), "steps": (2, -2)}),
            Sample([x], {"starts": (None,), "ends": (None,), "axes": (-1,), "steps": (-1,)}),
            Sample([x], {"starts": (1, 0, 2), "ends": (2, 5, 3), "axes": (0, 1, 2), "steps": (1, 3, 1)}),
            Sample([x], {"starts": (7,), "ends": (9,)}),
            # a negative step whose start is before the beginning: empty, as in Python
            Sample([x], {"starts": (-100,), "ends": (None,), "axes": (1,), "steps": (-1,)}),
            Sample([x], {"starts": (-5, -2), "ends": (-9, -100), "axes": (0, 1), "steps": (-2, -1)}),
            # shifts, which a symbolic dim also takes (T-1, T-2): x[:, 1:], x[:, :-1], x[:, 1:-1]
            Sample([x], {"starts": (1,), "ends": (None,), "axes": (1,)}),
            Sample([x], {"starts": (None,), "ends": (-1,), "axes": (1,)}),
            Sample([x], {"starts": (1,), "ends": (-1,), "axes": (1,)}),
        ]


def _pad_pairs(pads, rank):
    """Pads as (before, after) per axis. Accepts one (before, after) pair per
    axis, or a flat list in ONNX order [begin_0, ..., begin_n, end_0, ..., end_n]."""
    pads = list(pads)
    if pads and all(isinstance(p, (int, np.integer)) for p in pads):
        if len(pads) != 2 * rank:
            raise ShapeError(f"flat pads need 2 * rank = {2 * rank} numbers, got {len(pads)}",
                             hint="or give one (before, after) pair per axis")
        pairs = list(zip(pads[:rank], pads[rank:]))
    else:
        pairs = [tuple(p) for p in pads]
        if len(pairs) != rank or any(len(p) != 2 for p in pairs):
            raise ShapeError(f"pad needs one (before, after) pair per axis ({rank}), got {pads}", hint=f"give {rank} (before, after) pairs, e.g. pad(x, {[[0, 0]] * rank})")
    pairs = [(int(b), int(a)) for b, a in pairs]
    if any(b < 0 or a < 0 for b, a in pairs):
        raise ShapeError(f"pads {pairs} must not be negative", hint="use slice to crop")
    return pairs


@op("pad")
class Pad(OpDef):
    """x surrounded by `value` (constant padding). `pads` has one (before, after)
    pair per axis, as in numpy.pad; a flat list of 2 * rank ints is read in ONNX
    order [begins..., ends...]. A symbolic dim cannot be padded, except a shifted one
    back to at most its name ("T-1" by one: "T"; a shifting slice's gradient)."""

    attrs = {"pads": REQUIRED, "value": 0.0}
    gradgrad = True

    def infer(self, attrs, x):
        shape = []
        for d, (b, a) in zip(x.shape, _pad_pairs(attrs["pads"], x.rank)):
            if not isinstance(d, int) and (b or a):
                if dim_less(d, -(b + a)) is None or not dim_shift(d)[1]:
                    raise ShapeError(f"cannot pad the symbolic dim {d}", hint="pad axes of fixed size only; pad symbolic axes with 0, 0")
                d = dim_less(d, -(b + a))
            shape.append(d + b + a if isinstance(d, int) else d)
        return [TensorType(x.dtype, tuple(shape))]

    def emit(self, e, node, ins, outs):
        x = node.inputs[0]
        pairs = _pad_pairs(node.attrs["pads"], x.rank)
        flat = [b for b, _ in pairs] + [a for _, a in pairs]
        if not any(flat):
            e.add("Identity", ins, outs)
            return
        value = e.const(np.asarray(node.attrs["value"], dtype=x.dtype))
        e.add("Pad", [ins[0], e.ints(flat), value], outs, mode="constant")

    def vjp(self, node, gouts):
        x = node.inputs[0]
        pairs = _pad_pairs(node.attrs["pads"], x.rank)
        axes = [i for i, (b, a) in enumerate(pairs) if b or a]
        if not axes:
            return [gouts[0]]
        return [gouts[0].graph.apply("slice", gouts[0], starts=tuple(pairs[i][0] for i in axes),
                                     ends=tuple(pairs[i][0] + x.shape[i] if isinstance(x.shape[i], int)
                                                else (-pairs[i][1] or None) for i in axes), axes=tuple(axes))]

    def ref(self, attrs, x):
        pairs = _pad_pairs(attrs["pads"], x.ndim)
        if not pairs:  # a scalar: nothing to pad (numpy reads an empty pad list as floats)
            return np.array(x)
        return np.pad(x, pairs, constant_values=attrs["value"])

    def samples(self, rng):
        x = rng.normal(size=(2, 3))
        return [
            Sample([x], {"pads": ((1, 0), (2, 1))}),
            Sample([x], {"pads": (0, 1, 2, 0), "value": -1.5}),
            Sample([rng.normal(size=(2, 2, 2))], {"pads": ((0, 0), (0, 0), (1, 1))}),
        ]


# ------------------------------------------------------------------ gather / scatter
@op("take")
class Take(OpDef):
    """x indexed along `axis` by an integer tensor of any shape (ONNX Gather,
    numpy.take): the result has shape x.shape[:axis] + indices.shape + x.shape[axis+1:].
    Negative indices count from the end."""

    inputs = ("x", "indices")
    attrs = {"axis": 0}
    gradgrad = True

    def infer(self, attrs, x, idx):
        _require_index(idx)
        if x.rank == 0:
            raise ShapeError("cannot take from a scalar", hint="take picks along an axis: give it a tensor of rank 1 or more")
        axis = normalize_axis(attrs["axis"], x.rank)
        return [TensorType(x.dtype, tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))]

    def emit(self, e, node, ins, outs):
        e.add("Gather", ins, outs, axis=normalize_axis(node.attrs["axis"], node.inputs[0].rank))

    def vjp(self, node, gouts):
        x, idx = node.inputs
        return [gouts[0].graph.apply("scatter_add", x, idx, gouts[0], axis=node.attrs["axis"]), None]

    def ref(self, attrs, x, idx):
        return np.take(x, idx, axis=attrs["axis"])

    def samples(self, rng):
        x = rng.normal(size=(5, 3))
        return [
            Sample([x, np.array([0, 4, 1, 1, 4, 4])]),
            Sample([x, np.array([[2, -1], [0, 2]])], {"axis": 1}),
            Sample([x, np.array(3)]),
            Sample([rng.normal(size=(2, 4, 3)), np.array([[3, 3, 0]])], {"axis": 1}),
            # no indices: the gradient scatters nothing (an empty selection of columns)
            Sample([x, np.zeros((2, 0), np.int64)], {"axis": 1}),
        ]


def _scatter_add(e, like: str, indices: str, updates: str, dtype: str, outs, axis: int) -> None:
    """ScatterElements adding `updates` into zeros shaped like `like`. In float16 and bfloat16
    the sums run in float32 (onnxruntime's CPU provider has no such kernel, and repeated
    indices accumulate better there)."""
    from ..emit import onnx_dtype

    if dtype not in ("float16", "bfloat16"):
        e.add("ScatterElements", [_scatter_target(e, like, dtype), indices, updates], outs, axis=axis, reduction="add")
        return
    wide = e.add("Cast", [updates], to=onnx.TensorProto.FLOAT)
    summed = e.add("ScatterElements", [_scatter_target(e, like, "float32"), indices, wide], axis=axis, reduction="add")
    e.add("Cast", [summed], outs, to=onnx_dtype(dtype))


# scatter_add into a [rows, E] table with at most this many rows is a one-hot product.
ONE_HOT_ROWS = 512


def _scatter_target(e, shape_src: str, dtype: str) -> str:
    """ONNX zeros with the shape of the tensor named shape_src."""
    from .elementwise import _scalar_tensor

    return e.add("ConstantOfShape", [e.add("Shape", [shape_src])], value=_scalar_tensor(0, dtype))


@op("scatter_add")
class ScatterAdd(OpDef):
    """Zeros shaped like `like` with `updates` added at `indices` along `axis`:
    the transpose of take (repeated indices accumulate). updates has shape
    like.shape[:axis] + indices.shape + like.shape[axis+1:]; like's values are unused."""

    inputs = ("like", "indices", "updates")
    attrs = {"axis": 0}
    gradgrad = True

    def infer(self, attrs, like, idx, upd):
        _require_index(idx)
        if like.rank == 0:
            raise ShapeError("cannot scatter into a scalar", hint="scatter into a tensor of rank 1 or more")
        axis = normalize_axis(attrs["axis"], like.rank)
        want = tuple(like.shape[:axis]) + tuple(idx.shape) + tuple(like.shape[axis + 1:])
        if tuple(upd.shape) != want:
            raise ShapeError(f"scatter_add updates have shape {fmt_shape(upd.shape)}, expected {fmt_shape(want)}",
                             hint="updates = like.shape[:axis] + indices.shape + like.shape[axis+1:]")
        return [TensorType(upd.dtype, tuple(like.shape))]

    @staticmethod
    def one_hot_product(node) -> bool:
        """Whether the node is emitted as a one-hot product (a Gemm of [indices, rows] one-hot
        rows with the updates): 2 * rows * width FLOPs per index, which `flowgrad summary`
        counts as matrix-product FLOPs."""
        like, _, upd = node.inputs
        return normalize_axis(node.attrs["axis"], like.rank) == 0 and like.rank == 2 \
            and isinstance(like.shape[0], int) and like.shape[0] <= ONE_HOT_ROWS \
            and isinstance(like.shape[1], int) and upd.dtype in ("float32", "float64")

    def emit(self, e, node, ins, outs):
        like, idx, upd = node.inputs
        axis = normalize_axis(node.attrs["axis"], like.rank)
        k = idx.rank
        if self.one_hot_product(node):
            # A small table (an embedding's gradient over a character vocabulary): one-hot rows
            # times the updates is one Gemm, where ScatterElements adds row by row. (Not
            # ScatterND with reduction="add": onnxruntime adds its slices on parallel threads,
            # and repeated rows lose updates on a many-core host.)
            rows = like.shape[0]
            ids = e.add("Reshape", [ins[1], e.ints([-1])])
            if idx.dtype != "int64":
                ids = e.add("Cast", [ids], to=onnx.TensorProto.INT64)
            ids = e.add("Mod", [ids, e.const(np.asarray(rows, np.int64))])  # -1 is the last row, as in take
            # built [rows, indices]: the product reads it untransposed, which onnxruntime
            # multiplies ~10% faster than the [indices, rows] one-hot transposed
            hit = e.add("Equal", [e.const(np.arange(rows, dtype=np.int64).reshape(rows, 1)), e.add("Unsqueeze", [ids, e.ints([0])])])
            from ..emit import onnx_dtype

            one_hot = e.add("Cast", [hit], to=onnx_dtype(upd.dtype))
            u = e.add("Reshape", [ins[2], e.ints([-1, like.shape[1]])])
            e.add("MatMul", [one_hot, u], outs)
            return
        # Flatten the indices to one axis so one ScatterElements does it all.
        flat_upd_shape = tuple(upd.shape[:axis]) + (-1,) + tuple(upd.shape[axis + k:])
        if all(isinstance(d, int) for d in upd.shape):
            from ..ir import numel

            n = numel(idx.shape)
            # allowzero: with no indices n is 0, which Reshape would otherwise read as "keep that dim"
            u = e.add("Reshape", [ins[2], e.ints(flat_upd_shape[:axis] + (n,) + flat_upd_shape[axis + 1:])], allowzero=1)
        elif k == 1:
            u = ins[2]
        else:
            s = e.add("Shape", [ins[2]])
            parts = []
            if axis:
                parts.append(e.add("Slice", [s, e.ints([0]), e.ints([axis])]))
            parts.append(e.ints([-1]))
            if axis + k < upd.rank:
                parts.append(e.add("Slice", [s, e.ints([axis + k]), e.ints([upd.rank])]))
            u = e.add("Reshape", [ins[2], e.add("Concat", parts, axis=0)])
        i = e.add("Reshape", [ins[1], e.ints([1] * axis + [-1] + [1] * (like.rank - axis - 1))])
        if idx.dtype != "int64":
            i = e.add("Cast", [i], to=onnx.TensorProto.INT64)
        i = e.add("Expand", [i, e.add("Shape", [u])])
        _scatter_add(e, ins[0], i, u, upd.dtype, outs, axis=axis)

    def vjp(self, node, gouts):
        _, idx, _ = node.inputs
        return [None, None, gouts[0].graph.apply("take", gouts[0], idx, axis=node.attrs["axis"])]

    def ref(self, attrs, like, idx, upd):
        axis = normalize_axis(attrs["axis"], like.ndim)
        out = np.zeros(like.shape, dtype=upd.dtype)
        moved = np.moveaxis(out, axis, 0)  # a view: adding into it fills out
        u = np.moveaxis(upd.reshape(upd.shape[:axis] + (-1,) + upd.shape[axis + idx.ndim:]), axis, 0)
        np.add.at(moved, idx.reshape(-1), u)
        return out

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(4, 3)), np.array([0, 2, 0, 3, 0]), n(size=(5, 3))], grad_inputs=[2]),
            Sample([n(size=(4, 3)), np.array([[0, -1], [3, -1]], dtype=np.int32), n(size=(2, 2, 3))], grad_inputs=[2]),
            Sample([n(size=(2, 5)), np.array([[1, -1], [1, 1]]), n(size=(2, 2, 2))], {"axis": 1}, grad_inputs=[2]),
            Sample([n(size=(3, 4, 2)), np.array([3, 3]), n(size=(3, 2, 2))], {"axis": -2}, grad_inputs=[2]),
        ]


def _along_axis_check(x: TensorType, idx: TensorType, axis: int, what: str):
    _require_index(idx)
    if x.rank == 0:
        raise ShapeError(f"{what}: needs a tensor with an axis, got a scalar {x}", hint="give it a tensor of rank 1 or more")
    if idx.rank != x.rank:
        raise ShapeError(f"{what}: indices have rank {idx.rank}, but the tensor has rank {x.rank}", hint="the indices must have the tensor's rank; use unsqueeze(ids, axis=...) to add an axis")
    for i, (d, e) in enumerate(zip(x.shape, idx.shape)):
        if i != axis and d != e:
            raise ShapeError(f"{what}: indices {fmt_shape(idx.shape)} and tensor {fmt_shape(x.shape)} differ on axis {i}",
                             hint="all dims except the indexed axis must agree")


@op("take_along_axis")
class TakeAlongAxis(OpDef):
    """out[..., j, ...] = x[..., indices[..., j, ...], ...] along `axis` (ONNX
    GatherElements, numpy.take_along_axis); indices have x's rank and equal
    dims off the axis; the result has the shape of indices."""

    inputs = ("x", "indices")
    attrs = {"axis": -1}
    gradgrad = True

    def infer(self, attrs, x, idx):
        axis = normalize_axis(attrs["axis"], x.rank)
        _along_axis_check(x, idx, axis, "take_along_axis")
        return [TensorType(x.dtype, tuple(idx.shape))]

    def emit(self, e, node, ins, outs):
        e.add("GatherElements", ins, outs, axis=normalize_axis(node.attrs["axis"], node.inputs[0].rank))

    def vjp(self, node, gouts):
        x, idx = node.inputs
        return [gouts[0].graph.apply("scatter_add_along_axis", x, idx, gouts[0], axis=node.attrs["axis"]), None]

    def ref(self, attrs, x, idx):
        return np.take_along_axis(x, idx, axis=attrs["axis"])

    def samples(self, rng):
        x = rng.normal(size=(3, 4))
        return [
            Sample([x, np.array([[0], [3], [-1]])]),
            Sample([x, np.array([[0, 1, 1, 3], [2, 2, 2, 2], [1, 0, 3, 0]])], {"axis": 1}),
            Sample([x, np.array([[2, 0, 1, 1], [2, 2, 0, 1]])], {"axis": 0}),
        ]


@op("scatter_add_along_axis")
class ScatterAddAlongAxis(OpDef):
    """Zeros shaped like `like` with updates[..., j, ...] added at position
    indices[..., j, ...] of `axis` (ONNX ScatterElements with reduction add): the
    transpose of take_along_axis. indices and updates have the same shape."""

    inputs = ("like", "indices", "updates")
    attrs = {"axis": -1}
    gradgrad = True

    def infer(self, attrs, like, idx, upd):
        axis = normalize_axis(attrs["axis"], like.rank)
        _along_axis_check(like, idx, axis, "scatter_add_along_axis")
        if tuple(upd.shape) != tuple(idx.shape):
            raise ShapeError(f"updates {fmt_shape(upd.shape)} and indices {fmt_shape(idx.shape)} must have one shape", hint="give updates the shape of the indices")
        return [TensorType(upd.dtype, tuple(like.shape))]

    def emit(self, e, node, ins, outs):
        like, idx, upd = node.inputs
        _scatter_add(e, ins[0], ins[1], ins[2], upd.dtype, outs, axis=normalize_axis(node.attrs["axis"], like.rank))

    def vjp(self, node, gouts):
        _, idx, _ = node.inputs
        return [None, None, gouts[0].graph.apply("take_along_axis", gouts[0], idx, axis=node.attrs["axis"])]

    def ref(self, attrs, like, idx, upd):
        out = np.zeros(like.shape, dtype=upd.dtype)
        axis = normalize_axis(attrs["axis"], like.ndim)
        full = list(np.indices(idx.shape, sparse=True))
        full[axis] = idx
        np.add.at(out, tuple(full), upd)
        return out

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(3, 4)), np.array([[0, 0, 3], [1, -1, 1], [2, 2, 2]]), n(size=(3, 3))], grad_inputs=[2]),
            Sample([n(size=(3, 2)), np.array([[0, 1], [0, 0], [2, 0], [0, 0]]), n(size=(4, 2))], {"axis": 0},
                   grad_inputs=[2]),
        ]


@op("embedding")
class Embedding(OpDef):
    """Rows of `table` [V, E] looked up by integer `ids` of any shape: ids.shape + [E].
    padding_idx=k (PyTorch's): row k is looked up as it is but gets no gradient
    (a negative k counts from the end)."""

    inputs = ("ids", "table")
    attrs = {"padding_idx": None}
    composite = True
    gradgrad = True

    def expand(self, g, ids, table, padding_idx):
        if table.rank != 2:
            raise ShapeError(f"embedding table must be [vocab, dim], got {fmt_shape(table.shape)}", hint="give a table [vocab, dim], or write embedding(ids, vocab, dim) to declare one")
        rows = g.apply("take", table, ids, axis=0)
        if padding_idx is None:
            return rows
        vocab = table.shape[0]
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) or (
                isinstance(vocab, int) and not -vocab <= padding_idx < vocab):
            raise ShapeError(f"padding_idx must be a row of the table [{vocab}, {table.shape[1]}], got {padding_idx!r}",
                             arg="padding_idx", hint=f"the id of the padding token, e.g. padding_idx=0")
        if padding_idx < 0:
            if not isinstance(vocab, int):
                raise ShapeError(f"padding_idx={padding_idx} counts from the end of a table of {vocab} rows, a size "
                                 "known at run time", arg="padding_idx", hint="give the padding id itself, e.g. padding_idx=0")
            padding_idx += vocab
        pad = g.apply("eq", ids, g.lift(int(padding_idx), like=ids))
        pad = g.apply("unsqueeze", pad, axes=(ids.rank,))
        return g.apply("where", pad, g.apply("stop_gradient", rows), rows)

    def ref(self, attrs, ids, table):
        return table[ids]

    def samples(self, rng):
        t = rng.normal(size=(5, 3))
        return [Sample([np.array([[1, 4, 1], [0, 0, 2]]), t]), Sample([np.array([3, 3, 3, 0]), t]),
                # padding_idx: the rows of the padding ids are looked up, and get no gradient, which finite
                # differences do not see (test_torch_parity.py checks it against F.embedding)
                Sample([np.array([[1, 4, 1], [0, 0, 2]]), t], {"padding_idx": 0}, grad_inputs=[]),
                Sample([np.array([3, 4, 4, 0]), t], {"padding_idx": -1}, grad_inputs=[])]


@op("one_hot")
class OneHot(OpDef):
    """ids.shape + [depth]: 1 at each id's position, else 0, in `dtype` (default:
    the graph's float dtype). Ids outside [0, depth) give an all-zero row."""

    inputs = ("ids",)
    attrs = {"depth": REQUIRED, "dtype": None}
    nondiff = True

    def build(self, g, inputs, attrs):
        if attrs.get("dtype") is None:
            attrs = dict(attrs, dtype=g.float_dtype)
        return super().build(g, inputs, attrs)

    def infer(self, attrs, ids):
        _require_index(ids, "one_hot ids")
        depth = attrs["depth"]
        if not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ShapeError(f"one_hot depth must be a positive int, got {depth!r}", hint="write depth as the number of classes, e.g. one_hot(y, 10)")
        dtype = attrs["dtype"] if isinstance(attrs["dtype"], str) else np.dtype(attrs["dtype"]).name
        return [TensorType(require_dtype(dtype), tuple(ids.shape) + (int(depth),))]

    def emit(self, e, node, ins, outs):
        from ..emit import onnx_dtype

        ids = node.inputs[0]
        dt = ids.dtype
        rng = e.add("Range", [e.const(np.asarray(0, dt)), e.const(np.asarray(node.attrs["depth"], dt)),
                              e.const(np.asarray(1, dt))])
        hit = e.add("Equal", [e.add("Unsqueeze", [ins[0], e.ints([-1])]), rng])
        e.add("Cast", [hit], outs, to=onnx_dtype(node.outputs[0].dtype))

    def ref(self, attrs, ids):
        return (ids[..., None] == np.arange(attrs["depth"])).astype(attrs["dtype"] or "float64")

    def samples(self, rng):
        return [Sample([np.array([0, 2, 1, 2])], {"depth": 3}),
                Sample([np.array([[4, 0], [7, -1]])], {"depth": 5, "dtype": "float32"})]


# ------------------------------------------------------------------ subscripts
def _index_items(spec) -> list:
    """The subscript items as a list: spec is a tuple (or list) of items; a
    bare int, None, Ellipsis or Python slice stands for a 1-tuple."""
    if isinstance(spec, (tuple, list)):
        return list(spec)
    return [spec]


def _is_slice_triple(item) -> bool:
    return (isinstance(item, (tuple, list)) and len(item) == 3
            and all(p is None or isinstance(p, (int, np.integer)) for p in item)
            and not any(isinstance(p, bool) for p in item))


def _index_plan(spec, shape):
    """(slice starts/ends/axes/steps, axes to squeeze, axes to unsqueeze) for spec on shape."""
    items = []
    for it in _index_items(spec):
        if isinstance(it, slice):
            it = (it.start, it.stop, it.step)
        elif isinstance(it, str) and it in ("...", "Ellipsis"):
            it = Ellipsis
        elif isinstance(it, list):
            it = tuple(it)
        items.append(it)
    n_ell = sum(1 for it in items if it is Ellipsis)
    if n_ell > 1:
        raise ShapeError("an index can have only one ...", hint="write ... once, e.g. x[..., 0]")
    used = sum(1 for it in items if it is not None and it is not Ellipsis)
    rank = len(shape)
    if used > rank:
        raise ShapeError(f"too many indices ({used}) for a tensor of rank {rank}", hint=f"give at most {rank} indices")
    if n_ell:
        at = items.index(Ellipsis)
        items = items[:at] + [(None, None, None)] * (rank - used) + items[at + 1:]
    else:
        items = items + [(None, None, None)] * (rank - used)
    starts, ends, axes, steps, squeeze, unsqueeze = [], [], [], [], [], []
    axis = 0  # input axis
    out_pos = 0  # position in the final output
    for it in items:
        if it is None:
            unsqueeze.append(out_pos)
            out_pos += 1
        elif isinstance(it, (int, np.integer)) and not isinstance(it, bool):
            i = int(it)
            d = shape[axis]
            if isinstance(d, int) and not -d <= i < d:
                raise ShapeError(f"index {i} is out of range for axis {axis} of size {d}", hint=f"use an index from {-d} to {d - 1}")
            starts.append(i)
            ends.append(i + 1 if i != -1 else None)
            axes.append(axis)
            steps.append(1)
            squeeze.append(axis)
            axis += 1
        elif _is_slice_triple(it):
            s, t, st = (None if p is None else int(p) for p in it)
            if (s, t, st or 1) != (None, None, 1):
                starts.append(s)
                ends.append(t)
                axes.append(axis)
                steps.append(1 if st is None else st)
            axis += 1
            out_pos += 1
        else:
            raise ShapeError(f"cannot index with {it!r}",
                             hint="use ints, start:stop:step slices, None and ...; take(x, ids) indexes with a tensor")
    return (tuple(starts), tuple(ends), tuple(axes), tuple(steps)), tuple(squeeze), tuple(unsqueeze)


@op("index")
class Index(OpDef):
    """x[spec], the spec's subscript syntax. `spec` is a tuple with one item per
    subscript position: an int i (picks index i, drops the axis; negative counts
    from the end), a (start, stop, step) triple with None for an open part (a
    slice, keeps the axis), None (a new axis of size 1), or Ellipsis / "..."
    (as many whole axes as needed). Axes not mentioned are kept whole. Example:
    x[..., 1:3, None, -1] is spec=(Ellipsis, (1, 3, None), None, -1)."""

    internal = True
    attrs = {"spec": REQUIRED}
    composite = True
    gradgrad = True

    def expand(self, g, x, spec):
        (starts, ends, axes, steps), squeeze, unsqueeze = _index_plan(spec, x.shape)
        y = x
        if axes:
            y = g.apply("slice", y, starts=starts, ends=ends, axes=axes, steps=steps)
        if squeeze:
            y = g.apply("squeeze", y, axes=squeeze)
        if unsqueeze:
            y = g.apply("unsqueeze", y, axes=unsqueeze)
        return y

    def ref(self, attrs, x):
        key = []
        for it in _index_items(attrs["spec"]):
            if isinstance(it, (tuple, list)):
                key.append(slice(*it))
            elif isinstance(it, str):
                key.append(Ellipsis)
            else:
                key.append(it)
        return np.asarray(x[tuple(key)])

    def samples(self, rng):
        x = rng.normal(size=(3, 4, 5))
        return [
            Sample([x], {"spec": (0,)}),
            Sample([x], {"spec": ((None, None, None), (1, 3, None))}),
            Sample([x], {"spec": (Ellipsis, -1)}),
            Sample([x], {"spec": (None,)}),
            Sample([x], {"spec": (1, None, (None, None, -2), Ellipsis, (1, -1, None))}),
            Sample([x], {"spec": ("...", None, 2)}),
        ]
