"""Ops that repeat a batch, for exact Jacobians with batched cotangents."""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError

from ..ir import TensorType, dim_mul
from ..registry import REQUIRED, OpDef, Sample, op


@op("tile_batch")
class TileBatch(OpDef):
    """x [N, ...] repeated `times` times along axis 0: [times*N, ...]."""

    internal = True
    attrs = {"times": REQUIRED}
    gradgrad = True

    def infer(self, attrs, x):
        if x.rank < 1:
            raise ShapeError("tile_batch needs a tensor with a batch axis", hint="give it a tensor [N, ...] whose axis 0 is the batch")
        _check_times(attrs["times"])
        return [TensorType(x.dtype, (dim_mul(int(attrs["times"]), x.shape[0]),) + tuple(x.shape[1:]))]

    def emit(self, e, node, ins, outs):
        e.add("Tile", [ins[0], e.ints([int(node.attrs["times"])] + [1] * (node.inputs[0].rank - 1))], outs)

    def vjp(self, node, gouts):
        x = node.inputs[0]
        g = gouts[0].graph
        rest = tuple(d if isinstance(d, int) else -1 for d in x.shape[1:])
        if sum(1 for d in rest if d == -1):
            raise ShapeError("tile_batch gradient needs fixed feature dims", hint="declare the trailing dims as fixed sizes (numbers or names under dims)")
        stacked = g.apply("reshape", gouts[0], shape=(int(node.attrs["times"]), -1) + rest)
        return [g.apply("sum", stacked, axis=0)]

    def ref(self, attrs, x):
        return np.concatenate([x] * int(attrs["times"]), axis=0)

    def samples(self, rng):
        return [Sample([rng.normal(size=(2, 3))], {"times": 3}), Sample([rng.normal(size=(3,))], {"times": 2})]


@op("one_hot_blocks")
class OneHotBlocks(OpDef):
    """[blocks*N, blocks] with 1 at column m in the rows of repeat m (ref gives the rows)."""

    internal = True
    attrs = {"blocks": REQUIRED, "dtype": None}
    nondiff = True

    def infer(self, attrs, ref):
        return [TensorType(attrs["dtype"] or ref.dtype, (ref.shape[0], int(attrs["blocks"])))]

    def emit(self, e, node, ins, outs):
        from ..emit import onnx_dtype

        blocks = int(node.attrs["blocks"])
        i64 = lambda v: e.const(np.asarray(v, dtype=np.int64))  # noqa: E731
        rows = e.add("Gather", [e.add("Shape", ins), i64(0)], axis=0)
        per_block = e.add("Div", [rows, i64(blocks)])
        which = e.add("Div", [e.add("Range", [i64(0), rows, i64(1)]), per_block])
        hit = e.add("Equal", [e.add("Unsqueeze", [which, e.ints([1])]), e.const(np.arange(blocks, dtype=np.int64))])
        e.add("Cast", [hit], outs, to=onnx_dtype(node.outputs[0].dtype))

    def ref(self, attrs, ref):
        blocks = int(attrs["blocks"])
        n = ref.shape[0] // blocks
        return np.repeat(np.eye(blocks, dtype=attrs["dtype"] or ref.dtype), n, axis=0)

    def samples(self, rng):
        return [Sample([rng.normal(size=(6, 4))], {"blocks": 3}), Sample([rng.normal(size=(4,))], {"blocks": 2})]


@op("tile_rows")
class TileRows(OpDef):
    """Each row of x [N, ...] repeated `times` times in place: row n*times + k is x[n] ([times*N, ...])."""

    internal = True
    attrs = {"times": REQUIRED}
    gradgrad = True

    def infer(self, attrs, x):
        if x.rank < 1:
            raise ShapeError("tile_rows needs a tensor with a batch axis", hint="give it a tensor [N, ...] whose axis 0 is the batch")
        _check_times(attrs["times"])
        return [TensorType(x.dtype, (dim_mul(int(attrs["times"]), x.shape[0]),) + tuple(x.shape[1:]))]

    def emit(self, e, node, ins, outs):
        x = node.inputs[0]
        k = int(node.attrs["times"])
        u = e.add("Unsqueeze", [ins[0], e.ints([1])])
        tiled = e.add("Tile", [u, e.ints([1, k] + [1] * (x.rank - 1))])
        rest = [d if isinstance(d, int) else 0 for d in x.shape[1:]]  # unknown trailing dims copy through
        if any(not isinstance(d, int) for d in x.shape[1:]):
            shape = e.add("Concat", [e.ints([-1]), e.add("Slice", [e.add("Shape", [ins[0]]), e.ints([1]), e.ints([x.rank])])], axis=0)
            e.add("Reshape", [tiled, shape], outs)
        else:
            e.add("Reshape", [tiled, e.ints([-1] + rest)], outs)

    def vjp(self, node, gouts):
        x = node.inputs[0]
        g = gouts[0].graph
        rest = tuple(d if isinstance(d, int) else -1 for d in x.shape[1:])
        if -1 in rest:
            raise ShapeError("tile_rows gradient needs fixed trailing dims", hint="declare the trailing dims as fixed sizes (numbers or names under dims)")
        grouped = g.apply("reshape", gouts[0], shape=(-1, int(node.attrs["times"])) + rest)
        return [g.apply("sum", grouped, axis=1)]

    def ref(self, attrs, x):
        return np.repeat(x, int(attrs["times"]), axis=0)

    def samples(self, rng):
        return [Sample([rng.normal(size=(2, 3))], {"times": 3}), Sample([rng.integers(0, 9, size=(3, 2))], {"times": 2})]


@op("reshape_dims")
class ReshapeDims(OpDef):
    """x reshaped to `dims`, whose entries are ints or (ref, axis): that dim of the ref-th extra
    input. Gives a fixed-shape tensor a run-time batch dim (the sizes must agree when it runs)."""

    internal = True
    inputs = ("x",)
    variadic = True
    attrs = {"dims": REQUIRED}
    gradgrad = True

    def infer(self, attrs, x, *refs):
        dims = attrs["dims"]
        ok = isinstance(dims, (tuple, list)) and all(
            (type(d) is int and d >= 0) or (isinstance(d, (tuple, list)) and len(d) == 2 and all(type(i) is int for i in d)
                                            and 0 <= d[0] < len(refs) and -refs[d[0]].rank <= d[1] < refs[d[0]].rank)
            for d in dims)
        if not ok:
            raise ShapeError(f"reshape_dims: dims must be sizes or (input, axis) pairs, got {dims!r}", arg="dims", hint="give each dim as an integer size")
        shape = tuple(d if isinstance(d, int) else refs[d[0]].shape[d[1]] for d in dims)
        if all(isinstance(d, int) for d in (*x.shape, *shape)) and int(np.prod(x.shape)) != int(np.prod(shape)):
            raise ShapeError(f"reshape_dims: cannot reshape {x} to {list(shape)}", arg="dims", hint="the target must hold as many elements as the input")
        return [TensorType(x.dtype, shape)]

    def emit(self, e, node, ins, outs):
        runs: list[list] = []  # consecutive sizes: [ints] or [ref, first axis, end axis]
        for d in node.attrs["dims"]:
            if isinstance(d, int):
                if runs and runs[-1][0] == "ints":
                    runs[-1][1].append(d)
                else:
                    runs.append(["ints", [d]])
                continue
            ref, axis = d[0], d[1] % node.inputs[1 + d[0]].rank
            if runs and runs[-1][0] == "dims" and runs[-1][1] == ref and runs[-1][3] == axis:
                runs[-1][3] = axis + 1
            else:
                runs.append(["dims", ref, axis, axis + 1])
        parts = [e.ints(r[1]) if r[0] == "ints" else e.add("Shape", [ins[1 + r[1]]], start=r[2], end=r[3])
                 for r in runs]
        e.add("Reshape", [ins[0], e.add("Concat", parts, axis=0) if len(parts) > 1 else parts[0]], outs)

    def vjp(self, node, gouts):
        x = node.inputs[0]
        dims = tuple(d if isinstance(d, int) else (0, i) for i, d in enumerate(x.shape))  # x's own unknown dims
        back = gouts[0].graph.apply("reshape_dims", gouts[0], x, dims=dims)
        return [back] + [None] * (len(node.inputs) - 1)

    def ref(self, attrs, x, *refs):
        return x.reshape([d if isinstance(d, int) else refs[d[0]].shape[d[1]] for d in attrs["dims"]])

    def samples(self, rng):
        return [Sample([rng.normal(size=(2, 3)), rng.normal(size=(2, 5))], {"dims": ((0, 0), 3)}, grad_inputs=[0]),
                Sample([rng.normal(size=(6,)), rng.normal(size=(3, 1))], {"dims": ((0, 0), 2)}, grad_inputs=[0])]


def _check_times(times) -> None:
    if isinstance(times, bool) or not isinstance(times, (int, np.integer)) or times < 1:
        raise ShapeError(f"times must be a positive integer, got {times!r}", arg="times", hint="write times as a whole number of 1 or more, e.g. times=4")
