"""Elementwise ops, constants, casts, comparisons and broadcasting helpers."""
from __future__ import annotations

import math

import numpy as np

from spec.errors import ShapeError

from ..ir import TensorType, broadcast_shapes, fmt_shape, is_float
from ..registry import REQUIRED, OpDef, Sample, Unary, float_samples, op, require_dtype, require_float


def _sum_to(g, shape):
    return g.graph.apply("sum_to", g, shape=tuple(shape))


# ------------------------------------------------------------------ leaves
@op("constant")
class Constant(OpDef):
    """A fixed tensor (emitted as an initializer)."""

    internal = True
    inputs = ()
    attrs = {"value": REQUIRED}
    nondiff = True

    def infer(self, attrs):
        v = np.asarray(attrs["value"])
        return [TensorType(v.dtype.name, v.shape)]

    def emit(self, e, node, ins, outs):
        e.const(node.attrs["value"], name=outs[0])

    def ref(self, attrs):
        return np.asarray(attrs["value"])

    def samples(self, rng):
        return [Sample([], {"value": rng.normal(size=(2, 3))}), Sample([], {"value": np.arange(4)})]


@op("cast")
class Cast(OpDef):
    """Convert to another dtype (bool -> float gives 0/1)."""

    gradgrad = True

    attrs = {"to": REQUIRED}

    def infer(self, attrs, x):
        return [TensorType(require_dtype(attrs["to"], "to"), x.shape)]

    def emit(self, e, node, ins, outs):
        from ..emit import onnx_dtype

        e.add("Cast", ins, outs, to=onnx_dtype(node.attrs["to"]))

    def vjp(self, node, gouts):
        (x,) = node.inputs
        if not is_float(node.attrs["to"]) or not is_float(x.dtype):
            return [None]
        return [x.graph.cast(gouts[0], x.dtype)]

    def ref(self, attrs, x):
        return x.astype(attrs["to"])

    def samples(self, rng):
        return [
            Sample([rng.normal(size=(3, 4))], {"to": "float32"}, grad_inputs=[]),
            Sample([rng.normal(size=(3,))], {"to": "float64"}),
            Sample([rng.normal(size=(5,)) > 0], {"to": "float64"}),
        ]


@op("identity")
class Identity(Unary):
    """The input, unchanged."""

    gradgrad = True

    onnx = "Identity"

    def infer(self, attrs, x):
        return [x]

    def vjp(self, node, gouts):
        return [gouts[0]]

    def ref(self, attrs, x):
        return x

    samples = float_samples((3, 2))


@op("stop_gradient")
class StopGradient(Unary):
    """The input, but no gradient flows back through it."""

    onnx = "Identity"
    nondiff = True

    def infer(self, attrs, x):
        return [x]

    def ref(self, attrs, x):
        return x

    samples = float_samples((3, 2))


@op("zeros_like")
class ZerosLike(OpDef):
    """Zeros with the shape and dtype of x."""

    nondiff = True
    fill = 0

    def infer(self, attrs, x):
        return [x]

    def emit(self, e, node, ins, outs):
        dtype = node.inputs[0].dtype
        shape = e.add("Shape", ins)
        e.add("ConstantOfShape", [shape], outs, value=_scalar_tensor(self.fill, dtype))

    def ref(self, attrs, x):
        return np.full_like(x, self.fill)

    samples = float_samples((2, 3))


@op("ones_like")
class OnesLike(ZerosLike):
    """Ones with the shape and dtype of x."""

    fill = 1


def _scalar_tensor(v, dtype):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray([v], dtype=dtype))


@op("fill")
class Fill(OpDef):
    """A tensor filled with `value`; `dims` entries are ints, (ref, axis): that dim of the
    ref-th input, or (ref, name): the value of the ref-th input, an integer scalar (a size
    given at run time, such as a generator's sample count; `name` labels the dim)."""

    internal = True
    inputs = ("refs",)
    variadic = True
    attrs = {"dims": REQUIRED, "value": 0.0, "dtype": "float32"}
    nondiff = True

    def infer(self, attrs, *refs):
        shape = []
        for d in attrs["dims"]:
            if isinstance(d, int):
                shape.append(d)
            elif isinstance(d[1], str):
                i, name = d
                if refs[i].rank != 0 or not refs[i].dtype.startswith(("int", "uint")):
                    raise ShapeError(f"a size read from a tensor needs an integer scalar, got {refs[i]}", hint="pass a scalar integer input (shape [], dtype int64) as the size")
                shape.append(name)
            else:
                i, axis = d
                shape.append(refs[i].shape[axis])
        return [TensorType(attrs["dtype"], tuple(shape))]

    def emit(self, e, node, ins, outs):
        parts = []
        for d in node.attrs["dims"]:
            if isinstance(d, int):
                parts.append(e.ints([d]))
            elif isinstance(d[1], str):
                from onnx import TensorProto

                size = e.add("Cast", [ins[d[0]]], to=TensorProto.INT64)
                parts.append(e.add("Reshape", [size, e.ints([1])]))
            else:
                i, axis = d
                parts.append(e.add("Gather", [e.add("Shape", [ins[i]]), e.ints([axis])], axis=0))
        shape = e.add("Concat", parts, axis=0) if len(parts) > 1 else (parts[0] if parts else e.ints([]))
        e.add("ConstantOfShape", [shape], outs, value=_scalar_tensor(node.attrs["value"], node.attrs["dtype"]))

    def ref(self, attrs, *refs):
        shape = [d if isinstance(d, int) else int(refs[d[0]]) if isinstance(d[1], str) else refs[d[0]].shape[d[1]]
                 for d in attrs["dims"]]
        return np.full(shape, attrs["value"], dtype=attrs["dtype"])

    def samples(self, rng):
        return [Sample([rng.normal(size=(3, 2))], {"dims": ((0, 0), 4), "dtype": "float64"}),
                Sample([], {"dims": (2, 3), "value": 1.5, "dtype": "float64"}),
                Sample([np.asarray(5, dtype=np.int64)], {"dims": ((0, "count"), 3), "dtype": "float64"})]


@op("broadcast_like")
class BroadcastLike(OpDef):
    """x broadcast to the shape of ref (ref's values are not used)."""

    gradgrad = True

    inputs = ("x", "ref")

    def infer(self, attrs, x, ref):
        out = broadcast_shapes(x.shape, ref.shape)
        if out != tuple(ref.shape):
            raise ShapeError(f"cannot broadcast {fmt_shape(x.shape)} to {fmt_shape(ref.shape)}", hint="each pair of dims, aligned from the right, must be equal or 1 in the first operand")
        return [TensorType(x.dtype, ref.shape)]

    def emit(self, e, node, ins, outs):
        e.add("Expand", [ins[0], e.add("Shape", [ins[1]])], outs)

    def vjp(self, node, gouts):
        return [_sum_to(gouts[0], node.inputs[0].shape), None]

    def ref(self, attrs, x, ref):
        return np.broadcast_to(x, ref.shape).copy()

    def samples(self, rng):
        return [
            Sample([rng.normal(size=(3,)), rng.normal(size=(2, 3))], grad_inputs=[0]),
            Sample([rng.normal(size=(2, 1)), rng.normal(size=(2, 4))], grad_inputs=[0]),
        ]


# Sums over leading axes of at least this many columns run as a product with a row of ones.
ROWS_SUM_MIN_WIDTH = 64


def _ones_row(e, x, lead: int, rows: str) -> str:
    """A [1, R] row of ones, R the product of x's first `lead` dims (those of `rows`, x as
    [R, width]); one per leading dims and dtype in each graph, a constant when they are static."""
    cache = e.__dict__.setdefault("_ones_rows", {})
    key = (tuple(x.shape[:lead]), x.dtype)
    if key not in cache:
        if all(isinstance(d, int) for d in key[0]):
            cache[key] = e.const(np.ones((1, int(np.prod(key[0]))), dtype=x.dtype))
        else:
            count = e.add("Slice", [e.add("Shape", [rows]), e.ints([0]), e.ints([1])])
            cache[key] = e.add("ConstantOfShape", [e.add("Concat", [e.ints([1]), count], axis=0)],
                               value=_scalar_tensor(1, x.dtype))
    return cache[key]


def _reduce_sum(e, x, src: str, axes, keepdims: int, outs) -> None:
    """ReduceSum of x over `axes`, staged where each output takes millions of values (a bias's
    gradient over a large batch of feature maps), as sum's (reduce.emit_staged)."""
    from .reduce import emit_staged

    if not emit_staged(e, "ReduceSum", x, src, axes, keepdims, outs):
        e.add("ReduceSum", [src, e.ints(axes)], outs, keepdims=keepdims)


@op("sum_to")
class SumTo(OpDef):
    """Sum x down to `shape` (undoing a broadcast): the gradient of broadcasting."""

    gradgrad = True

    attrs = {"shape": REQUIRED}

    def plan(self, xshape, shape):
        """(axes to reduce, number of leading axes to drop)."""
        lead = len(xshape) - len(shape)
        if lead < 0:
            raise ShapeError(f"cannot sum {fmt_shape(xshape)} to the larger rank {fmt_shape(shape)}", hint="reduce the extra axes with sum(x, axis=...) first")
        axes = list(range(lead))
        for i, d in enumerate(shape):
            xd = xshape[lead + i]
            if d == xd:
                continue
            if d != 1:
                raise ShapeError(f"cannot sum {fmt_shape(xshape)} to {fmt_shape(shape)}", hint="each pair of dims, aligned from the right, must be equal or 1 in the target")
            axes.append(lead + i)
        return axes, lead

    def build(self, g, inputs, attrs):
        x = inputs[0]
        if tuple(x.shape) == tuple(attrs["shape"]):
            return x  # nothing was broadcast: no node at all
        return super().build(g, inputs, attrs)

    def infer(self, attrs, x):
        self.plan(x.shape, attrs["shape"])
        return [TensorType(x.dtype, tuple(attrs["shape"]))]

    def emit(self, e, node, ins, outs):
        x = node.inputs[0]
        axes, lead = self.plan(x.shape, node.attrs["shape"])
        tail = x.shape[lead:]
        if axes == list(range(lead)) and lead and tail and all(isinstance(d, int) for d in tail) \
                and int(np.prod(tail)) >= ROWS_SUM_MIN_WIDTH and x.dtype in ("float32", "float64"):
            # (a dense layer's bias gradient) onnxruntime's ReduceSum over leading axes walks
            # each column down the rows; a row of ones times the rows is one small product,
            # a fifth of the time for [128, 256]
            width = int(np.prod(tail))
            rows = ins[0] if x.rank == 2 else e.add("Reshape", [ins[0], e.ints([-1, width])])
            summed = e.add("MatMul", [_ones_row(e, x, lead, rows), rows])
            e.add("Reshape", [summed, e.ints(list(tail))], outs)
        elif axes == list(range(lead)):  # only leading axes go: one reduction, no squeeze
            _reduce_sum(e, x, ins[0], axes, 0, outs)
        elif lead:
            kept = e.fresh("summed")
            _reduce_sum(e, x, ins[0], axes, 1, [kept])
            e.add("Squeeze", [kept, e.ints(range(lead))], outs)
        else:
            _reduce_sum(e, x, ins[0], axes, 1, outs)

    def vjp(self, node, gouts):
        return [gouts[0].graph.apply("broadcast_like", gouts[0], node.inputs[0])]

    def ref(self, attrs, x):
        axes, lead = self.plan(x.shape, attrs["shape"])
        return x.sum(axis=tuple(axes), keepdims=True).reshape(attrs["shape"])

    def samples(self, rng):
        return [
            Sample([rng.normal(size=(2, 3, 4))], {"shape": (3, 4)}),
            Sample([rng.normal(size=(2, 3, 4))], {"shape": (3, 1)}),
            Sample([rng.normal(size=(2, 3))], {"shape": (1, 3)}),
            # rows wide enough for the product with a row of ones (ROWS_SUM_MIN_WIDTH)
            Sample([rng.normal(size=(5, 64))], {"shape": (64,)}),
            Sample([rng.normal(size=(2, 3, 4, 16))], {"shape": (4, 16)}),
        ]


# ------------------------------------------------------------------ binary arithmetic
class Binary(OpDef):
    inputs = ("a", "b")
    gradgrad = True

    def infer(self, attrs, a, b):
        if a.dtype != b.dtype:
            raise ShapeError(f"operands have different dtypes {a.dtype} and {b.dtype}", hint=f"cast one side to the other's type, e.g. cast(x, '{a.dtype}')")
        if a.dtype == "bool":
            raise ShapeError("arithmetic on booleans (comparisons) is not defined",
                             hint="cast them with cast(x, 'float32'), or use logical_and / logical_or / logical_not")
        return [TensorType(a.dtype, broadcast_shapes(a.shape, b.shape))]

    def samples(self, rng):
        return [
            Sample([rng.uniform(-2, 2, (3, 4)), rng.uniform(-2, 2, (3, 4))]),
            Sample([rng.uniform(-2, 2, (2, 3, 4)), rng.uniform(-2, 2, (4,))]),
            Sample([rng.uniform(-2, 2, (3, 1)), rng.uniform(-2, 2, (1, 5))]),
            Sample([rng.uniform(-2, 2, ()), rng.uniform(-2, 2, (2, 2))]),
        ]


@op("add")
class Add(Binary):
    """a + b, broadcasting."""

    onnx = "Add"

    def vjp(self, node, gouts):
        a, b = node.inputs
        return [_sum_to(gouts[0], a.shape), _sum_to(gouts[0], b.shape)]

    def ref(self, attrs, a, b):
        return a + b


@op("sub")
class Sub(Binary):
    """a - b, broadcasting."""

    onnx = "Sub"

    def vjp(self, node, gouts):
        a, b = node.inputs
        return [_sum_to(gouts[0], a.shape), _sum_to(-gouts[0], b.shape)]

    def ref(self, attrs, a, b):
        return a - b


@op("mul")
class Mul(Binary):
    """a * b, broadcasting."""

    onnx = "Mul"

    def vjp(self, node, gouts):
        a, b = node.inputs
        (g,) = gouts
        return [_sum_to(g * b, a.shape), _sum_to(g * a, b.shape)]

    def ref(self, attrs, a, b):
        return a * b


def emit_u32_shift_right(e, x: str, bits: int, out=1):
    """x // 2**bits for a uint32 tensor x: one BitShift, which onnxruntime's CPU provider
    runs in a third of the time of the exact float64 form (a cast, a power-of-two scale, a
    truncating cast) and a sixth of a uint32 Div. Its CUDA provider has no BitShift: CUDA
    sessions and exported files get the float64 form (runtime/session.py, shifts_in_float64)."""
    return e.add("BitShift", [x, e.const(np.asarray(bits, dtype=np.uint32))], out, direction="RIGHT")


@op("div")
class Div(Binary):
    """a / b, broadcasting."""

    onnx = "Div"

    def emit(self, e, node, ins, outs):
        a, b = node.inputs
        d = b.producer.attrs["value"] if b.producer is not None and b.producer.op.name == "constant" else None
        if a.dtype == "uint32" and d is not None and np.size(d) == 1 and b.rank <= a.rank:
            d = int(np.asarray(d).reshape(()))
            if d > 0 and d & (d - 1) == 0:
                emit_u32_shift_right(e, ins[0], d.bit_length() - 1, outs)
                return
        e.add("Div", ins, outs)

    def vjp(self, node, gouts):
        a, b = node.inputs
        (g,) = gouts
        ga = g / b
        return [_sum_to(ga, a.shape), _sum_to(-ga * node.outputs[0], b.shape)]

    def ref(self, attrs, a, b):
        return a / b

    def samples(self, rng):
        return [
            Sample([rng.uniform(-2, 2, (3, 4)), rng.uniform(0.5, 2, (3, 4))]),
            Sample([rng.uniform(-2, 2, (2, 3)), rng.uniform(0.5, 2, (3,))]),
        ]


@op("pow")
class Pow(Binary):
    """a ** b, broadcasting (a > 0 where b is not an integer)."""

    onnx = "Pow"

    def build(self, g, inputs, attrs):
        a, b = inputs
        c = b.producer.attrs["value"] if b.producer is not None and b.producer.op.name == "constant" else None
        if c is not None and np.ndim(c) == 0 and a.dtype == b.dtype:
            if c == 2:  # a*a is cheaper than Pow and so is its gradient
                return a * a
            if c == 1:
                return a
        return super().build(g, inputs, attrs)

    def vjp(self, node, gouts):
        a, b = node.inputs
        (g,) = gouts
        gr = g.graph
        y = node.outputs[0]
        w = gr.apply
        zero, one = gr.lift(0.0, like=a), gr.lift(1.0, like=a)
        # At a = 0 the formulas meet 0 * inf: b * a ** (b - 1) with b = 0 (a ** 0 is the
        # constant 1: slope 0) and y * log(a) with b >= 0 (0 ** b is constant near such b:
        # slope 0, as torch takes it). There the base is read as 1 instead, which gives
        # those zeros, and their own gradients stay finite (no 0 * inf through a where).
        nonzero = w("ne", a, zero)
        fixed = b.producer.attrs["value"] if b.producer is not None and b.producer.op.name == "constant" else None
        if fixed is not None and np.all(np.asarray(fixed) != 0):  # x ** 2 and the like: b is never 0
            d_a = b * (a ** (b - 1.0))
        else:
            flat_in_a = w("logical_not", w("logical_or", nonzero, w("ne", b, zero)))  # a == 0 and b == 0
            d_a = b * (w("where", flat_in_a, one, a) ** (b - 1.0))
        flat_in_b = w("logical_not", w("logical_or", nonzero, w("lt", b, zero)))  # a == 0 and b >= 0
        d_b = y * w("log", w("where", flat_in_b, one, a))
        return [_sum_to(g * d_a, a.shape), _sum_to(g * d_b, b.shape)]

    def ref(self, attrs, a, b):
        if np.asarray(b).dtype.kind in "iu" and np.any(np.asarray(b) < 0):
            raise ShapeError("an integer raised to a negative integer power", hint="write the base as a float, e.g. 2.0 ** -1")
        return a**b

    def samples(self, rng):
        return [
            Sample([rng.uniform(0.5, 2, (3, 4)), rng.uniform(-2, 2, (3, 4))]),
            Sample([rng.uniform(0.5, 2, (2, 3)), np.asarray(2.0)]),
            # a zero base: the slope in b of 0 ** b (b >= 0) is 0, not 0 * log(0) = nan
            Sample([np.array([0.0, 0.0, 0.0, 0.5, 2.0]), np.array([2.5, 0.5, 1.0, 0.0, 1.5])], grad_inputs=[1]),
            # a zero exponent: the slope in a of a ** 0 is 0, at a = 0 too (not 0 * 0 ** -1 = nan)
            Sample([np.array([0.0, 0.7, 1.3]), np.zeros(3)], grad_inputs=[0]),
        ]


@op("maximum")
class Maximum(Binary):
    """Elementwise max(a, b), broadcasting; ties share the gradient evenly (half to each)."""

    onnx = "Max"

    def vjp(self, node, gouts):
        # Ties share the gradient evenly, as torch.maximum and jax.numpy.maximum do and as the max
        # and min reductions here share it among tied elements: maximum(a, b) and maximum(b, a)
        # then have the same gradients, and it is what central differences measure at a tie
        # ((max(da, db) + min(da, db)) / 2 along any direction). (PyTensor and TensorFlow give
        # all of it to a; so did this op.)
        a, b = node.inputs
        (g,) = gouts
        gr = g.graph
        a_wins, b_wins = (gr.apply("gt", a, b), gr.apply("lt", a, b)) if node.op.name == "maximum" \
            else (gr.apply("lt", a, b), gr.apply("gt", a, b))
        zero = gr.lift(0.0, like=g)
        half = gr.apply("where", gr.apply("eq", a, b), g * 0.5, zero)
        return [
            _sum_to(gr.apply("where", a_wins, g, half), a.shape),
            _sum_to(gr.apply("where", b_wins, g, half), b.shape),
        ]

    def ref(self, attrs, a, b):
        return np.maximum(a, b)


@op("minimum")
class Minimum(Maximum):
    """Elementwise min(a, b), broadcasting; ties share the gradient evenly (half to each)."""

    onnx = "Min"

    def ref(self, attrs, a, b):
        return np.minimum(a, b)


# ------------------------------------------------------------------ comparisons and selection
class Comparison(OpDef):
    inputs = ("a", "b")
    nondiff = True
    onnx_op = ""
    negate = False
    np_fn = None

    def infer(self, attrs, a, b):
        if a.dtype != b.dtype:
            raise ShapeError(f"cannot compare {a.dtype} with {b.dtype}", hint=f"cast one side to the other's type, e.g. cast(x, '{a.dtype}')")
        if a.dtype == "bool" and self.onnx_op != "Equal":  # ONNX orders numbers only
            raise ShapeError("booleans can be compared with == and != only", hint="cast them with cast(x, 'float32')")
        return [TensorType("bool", broadcast_shapes(a.shape, b.shape))]

    def emit(self, e, node, ins, outs):
        if self.negate:
            e.add("Not", [e.add(self.onnx_op, ins)], outs)
        else:
            e.add(self.onnx_op, ins, outs)

    def ref(self, attrs, a, b):
        return type(self).np_fn(a, b)

    def samples(self, rng):
        a = rng.integers(0, 3, (3, 4)).astype(np.float64)
        return [Sample([a, rng.integers(0, 3, (3, 4)).astype(np.float64)]), Sample([a, np.asarray(1.0)])]


def _comparison(name, onnx_op, np_fn, negate=False, doc=""):
    cls = type(name, (Comparison,), {"onnx_op": onnx_op, "np_fn": staticmethod(np_fn), "negate": negate, "__doc__": doc})
    op(name)(cls)


_comparison("eq", "Equal", np.equal, doc="a == b elementwise (bool).")
_comparison("ne", "Equal", np.not_equal, negate=True, doc="a != b elementwise (bool).")
_comparison("lt", "Less", np.less, doc="a < b elementwise (bool).")
_comparison("le", "LessOrEqual", np.less_equal, doc="a <= b elementwise (bool).")
_comparison("gt", "Greater", np.greater, doc="a > b elementwise (bool).")
_comparison("ge", "GreaterOrEqual", np.greater_equal, doc="a >= b elementwise (bool).")


@op("logical_not")
class LogicalNot(OpDef):
    """not x, for bool tensors."""

    nondiff = True
    onnx = "Not"

    def infer(self, attrs, x):
        if x.dtype != "bool":
            raise ShapeError(f"'not' needs a bool tensor, got {x.dtype}", hint="'not' takes a comparison, e.g. not (x > 0); for numbers use 1 - x")
        return [x]

    def ref(self, attrs, x):
        return np.logical_not(x)

    def samples(self, rng):
        return [Sample([rng.normal(size=(3,)) > 0])]


class _LogicalBinary(OpDef):
    """A logical op of two bool tensors (broadcasting): logical_or and logical_and, which the
    refusals of 'or', '|', 'and' and '&' point to."""

    inputs = ("a", "b")
    nondiff = True

    def infer(self, attrs, a, b):
        if a.dtype != "bool" or b.dtype != "bool":
            # (in its own words: logical_or's hint said to write (x > 0) or (y > 0), which is refused)
            raise ShapeError(f"{self.name}() needs bool tensors, got {a.dtype} and {b.dtype}",
                             hint=f"it takes comparisons, e.g. {self.name}(x > 0, y > 0); cast a number with "
                                  "x != 0 first")
        return [TensorType("bool", broadcast_shapes(a.shape, b.shape))]

    def samples(self, rng):
        return [Sample([rng.normal(size=(3, 4)) > 0, rng.normal(size=(4,)) > 0])]


@op("logical_or")
class LogicalOr(_LogicalBinary):
    """a or b, for bool tensors (broadcasting)."""

    onnx = "Or"

    def ref(self, attrs, a, b):
        return np.logical_or(a, b)


@op("logical_and")
class LogicalAnd(_LogicalBinary):
    """a and b, for bool tensors (broadcasting)."""

    onnx = "And"

    def ref(self, attrs, a, b):
        return np.logical_and(a, b)


@op("where")
class Where(OpDef):
    """Select a where cond is true, else b (broadcasting)."""

    inputs = ("cond", "a", "b")
    onnx = "Where"
    gradgrad = True

    def infer(self, attrs, c, a, b):
        if c.dtype != "bool":
            raise ShapeError(f"where() needs a bool condition, got {c.dtype}", hint="compare first, e.g. where(x > 0, x, 0)",
                             arg="cond")
        if a.dtype != b.dtype:
            raise ShapeError(f"where() branches have different dtypes {a.dtype} and {b.dtype}", hint=f"cast one branch to the other's type, e.g. cast(b, '{a.dtype}')")
        return [TensorType(a.dtype, broadcast_shapes(c.shape, a.shape, b.shape))]

    def vjp(self, node, gouts):
        c, a, b = node.inputs
        (g,) = gouts
        zero = g.graph.lift(0.0, like=g)
        w = g.graph.apply
        return [None, _sum_to(w("where", c, g, zero), a.shape), _sum_to(w("where", c, zero, g), b.shape)]

    def ref(self, attrs, c, a, b):
        return np.where(c, a, b)

    def samples(self, rng):
        return [
            Sample([rng.normal(size=(3, 4)) > 0, rng.normal(size=(3, 4)), rng.normal(size=(3, 4))]),
            Sample([rng.normal(size=(3, 4)) > 0, rng.normal(size=(4,)), np.asarray(0.5)]),
        ]


# ------------------------------------------------------------------ unary math
@op("neg")
class Neg(Unary):
    """-x."""

    onnx = "Neg"
    gradgrad = True

    def vjp(self, node, gouts):
        return [-gouts[0]]

    def ref(self, attrs, x):
        return -x

    samples = float_samples((3, 4))


@op("exp")
class Exp(Unary):
    """e ** x."""

    onnx = "Exp"
    gradgrad = True

    def vjp(self, node, gouts):
        return [gouts[0] * node.outputs[0]]

    def ref(self, attrs, x):
        return np.exp(x)

    samples = float_samples((3, 4), ())


@op("log")
class Log(Unary):
    """Natural logarithm (x > 0)."""

    onnx = "Log"
    gradgrad = True

    def build(self, g, inputs, attrs):
        # Stabilise at construction, so the gradient is the stable one too.
        p = inputs[0].producer if hasattr(inputs[0], "producer") else None
        if p is not None:
            if p.op.name == "softmax":
                return g.apply("log_softmax", p.inputs[0], axis=p.attrs["axis"])
            if p.op.name == "sum" and p.inputs[0].producer is not None and p.inputs[0].producer.op.name == "exp":
                # log(sum(exp(z))): overflowed above z of 89 in float32, and was log(0) = -inf where every z is below -104
                return g.apply("logsumexp", p.inputs[0].producer.inputs[0], **p.attrs)
            if p.op.name == "sigmoid":  # log(sigmoid(z)) = -softplus(-z)
                return -g.apply("softplus", -p.inputs[0])
            if p.op.name == "sub":  # log(1 - sigmoid(z)) = -softplus(z)
                one, s = p.inputs
                c = one.producer
                if (c is not None and c.op.name == "constant" and np.all(np.asarray(c.attrs["value"]) == 1)
                        and s.producer is not None and s.producer.op.name == "sigmoid" and s.shape == p.outputs[0].shape):
                    return -g.apply("softplus", s.producer.inputs[0])
        return super().build(g, inputs, attrs)

    def vjp(self, node, gouts):
        return [gouts[0] / node.inputs[0]]

    def ref(self, attrs, x):
        return np.log(x)

    samples = float_samples((3, 4), low=0.3, high=3.0)


@op("sqrt")
class Sqrt(Unary):
    """Square root (x > 0)."""

    onnx = "Sqrt"
    gradgrad = True

    def vjp(self, node, gouts):
        return [gouts[0] * 0.5 / node.outputs[0]]

    def ref(self, attrs, x):
        return np.sqrt(x)

    samples = float_samples((3, 4), low=0.3, high=3.0)


@op("abs")
class Abs(Unary):
    """|x| (gradient sign(x))."""

    onnx = "Abs"
    gradgrad = True

    def vjp(self, node, gouts):
        return [gouts[0] * gouts[0].graph.apply("sign", node.inputs[0])]

    def ref(self, attrs, x):
        return np.abs(x)

    samples = float_samples((3, 4))


@op("sign")
class Sign(Unary):
    """-1, 0 or 1 by the sign of x (no gradient)."""

    onnx = "Sign"
    nondiff = True

    def ref(self, attrs, x):
        return np.sign(x)

    samples = float_samples((3, 4))


@op("relu")
class Relu(Unary):
    """max(x, 0)."""

    onnx = "Relu"
    gradgrad = True

    def vjp(self, node, gouts):
        # y > 0 exactly where x > 0; reading the output lets the pre-activation be freed
        # after the forward pass (the next layer keeps y for its own weight gradient).
        y = node.outputs[0]
        g = gouts[0]
        return [g.graph.apply("where", y.graph.apply("gt", y, y.graph.lift(0.0, like=y)), g, g.graph.lift(0.0, like=g))]

    def ref(self, attrs, x):
        return np.maximum(x, 0)

    samples = float_samples((3, 4))


@op("leaky_relu")
class LeakyRelu(Unary):
    """x where x > 0, else alpha * x."""

    onnx = "LeakyRelu"
    attrs = {"alpha": 0.01}
    gradgrad = True

    def onnx_attrs(self, attrs):
        return {"alpha": float(attrs["alpha"])}

    def emit(self, e, node, ins, outs):
        alpha, dtype = float(node.attrs["alpha"]), node.inputs[0].dtype
        if dtype == "float64" and float(np.float32(alpha)) != alpha:
            # LeakyRelu's alpha is a float32 attribute: 0.2 would act as 0.20000000298 on
            # float64 values (and disagree with the gradient and constant folding, which use 0.2)
            pos = e.add("Greater", [ins[0], e.const(np.asarray(0.0, dtype=dtype))])
            e.add("Where", [pos, ins[0], e.add("Mul", [ins[0], e.const(np.asarray(alpha, dtype=dtype))])], outs)
        else:
            super().emit(e, node, ins, outs)

    def vjp(self, node, gouts):
        x, g = node.inputs[0], gouts[0]
        pos = x.graph.apply("gt", x, x.graph.lift(0.0, like=x))
        return [g.graph.apply("where", pos, g, g * node.attrs["alpha"])]

    def ref(self, attrs, x):
        return np.where(x > 0, x, attrs["alpha"] * x)

    def samples(self, rng):
        return [Sample([rng.uniform(-2, 2, (3, 4))]), Sample([rng.uniform(-2, 2, (5,))], {"alpha": 0.2})]


@op("tanh")
class Tanh(Unary):
    """Hyperbolic tangent."""

    onnx = "Tanh"
    gradgrad = True

    def vjp(self, node, gouts):
        y = node.outputs[0]
        return [gouts[0] * (1.0 - y * y)]

    def ref(self, attrs, x):
        return np.tanh(x)

    samples = float_samples((3, 4))


def _emit_sigmoid(e, x: str, dtype: str, outs=1, gate: bool = False):
    """sigmoid(x) as Sigmoid.emit explains: 1 / (1 + e ** -x) in float32 and float64."""
    if gate or dtype not in ("float32", "float64"):
        return e.add("Sigmoid", [x], outs)
    one = e.const(np.asarray(1, dtype=dtype))
    return e.add("Reciprocal", [e.add("Add", [e.add("Exp", [e.add("Neg", [x])]), one])], outs)


@op("sigmoid")
class Sigmoid(Unary):
    """1 / (1 + e ** -x)."""

    onnx = "Sigmoid"
    gradgrad = True
    # gate: a gate of a built-in recurrent cell, which multiplies a state and needs only
    # Sigmoid's absolute accuracy (an ulp of 1), in one kernel of each step
    attrs = {"gate": False}
    internal_attrs = ("gate",)

    def emit(self, e, node, ins, outs):
        # onnxruntime's Sigmoid computes e ** x / (1 + e ** x) for x < 0 as a difference near
        # 1/2 (float32) or 1 (float64): float32 values had 4 digits at x = -8, were twice too
        # large at -17 (larger than at -16) and 0 from -18 on, float64 ones had 3 digits at -30
        # and were 0 from -37 on. 1 / (1 + e ** -x) keeps every digit: e ** -x overflows to inf
        # only where the value is below the smallest normal float. (float16 keeps Sigmoid: its
        # e ** -x overflows from x = -11 on, where the value is still a float16.)
        _emit_sigmoid(e, ins[0], node.inputs[0].dtype, outs, gate=node.attrs["gate"])

    def vjp(self, node, gouts):
        y = node.outputs[0]
        return [gouts[0] * y * (1.0 - y)]

    def ref(self, attrs, x):
        with np.errstate(over="ignore"):  # e ** -x = inf: the value is 0 (below the smallest float)
            return 1.0 / (1.0 + np.exp(-x))

    def samples(self, rng):
        return [Sample([rng.uniform(-2, 2, (3, 4))]),
                # far out both ways: small values keep their digits (see test_sigmoid_keeps_its_digits)
                Sample([np.array([-700.0, -100.0, -37.0, -20.0, -17.0, -8.0, 0.0, 8.0, 17.0, 40.0])])]


@op("softplus")
class Softplus(Unary):
    """log(1 + e ** x), computed stably; with beta, log(1 + e ** (beta * x)) / beta, and with
    threshold, x where beta * x > threshold (torch's Softplus, whose default threshold is 20;
    flowgrad's, none, computes the curve everywhere)."""

    attrs = {"beta": 1.0, "threshold": None}
    gradgrad = True

    def infer(self, attrs, x):
        if attrs["beta"] <= 0:
            raise ShapeError(f"beta must be above 0, got {attrs['beta']}", arg="beta",
                             hint="softplus(x, beta) is log(1 + e ** (beta * x)) / beta; PyTorch's default is 1.0")
        t = attrs["threshold"]
        if t is not None and (isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.number))):
            raise ShapeError(f"threshold must be a number, got {t!r}", arg="threshold",
                             hint="beta * x above it gives x itself, e.g. threshold=20 as PyTorch")
        return super().infer(attrs, x)

    def emit(self, e, node, ins, outs):
        # max(z, 0) + log1p(u), u = e ** -|z| in (0, 1], z = beta x: nothing overflows. ONNX has no
        # Log1p, and log(1 + u) is 0 once 1 + u rounds to 1 (z below -17 in float32). With
        # w = 1 + u rounded, log1p(u) = log(w) - ((w - 1) - u) / w to second order in the
        # rounding error: exact to a few ulps, and u itself where w is 1. (onnxruntime's
        # own Softplus is slower and as inexact as log(1 + u).)
        x, dtype = ins[0], node.inputs[0].dtype
        beta, threshold = float(node.attrs["beta"]), node.attrs["threshold"]
        one = e.const(np.asarray(1, dtype=dtype))
        z = x if beta == 1 else e.add("Mul", [x, e.const(np.asarray(beta, dtype=dtype))])
        u = e.add("Exp", [e.add("Neg", [e.add("Abs", [z])])])
        w = e.add("Add", [u, one])
        rounding = e.add("Div", [e.add("Sub", [e.add("Sub", [w, one]), u]), w])
        soft = e.add("Sub", [e.add("Log", [w]), rounding])  # log1p(u)
        if beta != 1:  # max(x, 0) + log1p(u) / beta: max(z, 0) / beta overflowed where beta x does (beta > 1)
            soft = e.add("Div", [soft, e.const(np.asarray(beta, dtype=dtype))])
        y = e.add("Add", [e.add("Relu", [x]), soft], outs if threshold is None else 1)
        if threshold is not None:
            e.add("Where", [e.add("Greater", [z, e.const(np.asarray(threshold, dtype=dtype))]), x, y], outs)

    def vjp(self, node, gouts):
        # sigmoid(z) as exp(z - softplus(z)) (= exp(log sigmoid(z))), z = beta x: exact to a few ulps
        # for any z, down to the smallest floats. onnxruntime's float32 Sigmoid computes small values
        # as differences near 1/2: twice too large at z = -17 and 0 from z = -18 on, which made the
        # gradient of softplus, binary_cross_entropy and log(sigmoid(.)) wrong or 0 there. Above the
        # threshold y is x, and this is 1.
        x, y = node.inputs[0], node.outputs[0]
        beta = float(node.attrs["beta"])
        d = x - y if beta == 1 else (x - y) * beta
        return [gouts[0] * x.graph.apply("exp", d)]

    def ref(self, attrs, x):
        beta, threshold = attrs["beta"], attrs["threshold"]
        y = np.logaddexp(0.0, beta * x) / beta
        return y if threshold is None else np.where(beta * x > threshold, x, y)

    def samples(self, rng):
        return [Sample([rng.uniform(-4, 4, size=(3, 4))]),
                Sample([np.array([-200.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 200.0])]),  # far out, both ways
                Sample([np.array([-745.0, -100.0, -40.0, -20.0, -17.0, -15.0])]),  # tiny values keep their digits
                Sample([rng.uniform(-4, 4, size=(3, 4))], {"beta": 2.5}),
                Sample([np.array([-200.0, -30.0, -1e-3, 0.0, 1e-3, 1.9, 2.1, 30.0, 200.0])], {"beta": 0.5}),
                # linear above the threshold (beta x = 3 here): a jump of log1p(e ** -3) / beta at it
                Sample([np.array([-5.0, -1e-3, 0.0, 1.2, 1.4, 1.6, 1.8, 5.0, 300.0])],
                       {"beta": 2.0, "threshold": 3.0}),
                Sample([np.array([-30.0, 0.0, 19.9, 20.1, 40.0])], {"threshold": 20.0})]


def np_erf(x):
    """erf of an array, to float64's digits (math.erf; NumPy has none)."""
    return np.vectorize(math.erf, otypes=[np.float64])(x)


@op("erf")
class Erf(Unary):
    """The error function, 2 / sqrt(pi) times the integral of e ** -t ** 2 from 0 to x (torch.erf)."""

    onnx = "Erf"
    gradgrad = True

    def vjp(self, node, gouts):
        x = node.inputs[0]
        return [gouts[0] * (2.0 / np.sqrt(np.pi)) * x.graph.apply("exp", -(x * x))]

    def ref(self, attrs, x):
        return np_erf(x)

    def samples(self, rng):
        return [Sample([rng.uniform(-3, 3, (3, 4))]),
                Sample([np.array([-30.0, -6.0, -1e-3, 0.0, 1e-3, 6.0, 30.0])])]  # far out both ways: slope 0


_GELU_TANH_K = float(np.sqrt(2.0 / np.pi))  # gelu(approximate='tanh'): 0.5 x (1 + tanh(K (x + C x ** 3)))
_GELU_TANH_C = 0.044715


@op("gelu")
class Gelu(Unary):
    """x * P(N(0, 1) < x) = 0.5 * x * (1 + erf(x / sqrt(2))), as torch's GELU; with
    approximate='tanh', 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x ** 3)))."""

    attrs = {"approximate": "none"}
    choices = {"approximate": ("none", "tanh")}
    gradgrad = True

    def emit(self, e, node, ins, outs):
        # Composed as torch computes it, not ONNX's Gelu (opset 20): its function body, which
        # runtimes without a kernel (onnx.reference) run, writes sqrt(2 / pi) and 0.044715 as
        # float32 constants, 3e-8 off in a float64 graph. (onnxruntime has no float64 Erf: a
        # float64 graph of the exact form runs on the reference evaluator.)
        x, dtype = ins[0], node.inputs[0].dtype

        def c(v):
            return e.const(np.asarray(v, dtype=dtype))

        if node.attrs["approximate"] == "tanh":
            cube = e.add("Mul", [e.add("Mul", [x, x]), x])
            inner = e.add("Mul", [e.add("Add", [x, e.add("Mul", [cube, c(_GELU_TANH_C)])]), c(_GELU_TANH_K)])
            s = e.add("Tanh", [inner])
        else:
            s = e.add("Erf", [e.add("Mul", [x, c(1.0 / np.sqrt(2.0))])])
        e.add("Mul", [e.add("Mul", [x, c(0.5)]), e.add("Add", [s, c(1.0)])], outs)

    def vjp(self, node, gouts):
        x, g = node.inputs[0], gouts[0]
        gr = x.graph
        if node.attrs["approximate"] == "none":
            # Phi(x) + x phi(x): e ** (-x ** 2 / 2) is 0, not inf, far out, so x phi(x) is 0 there
            cdf = 0.5 + 0.5 * gr.apply("erf", x * float(1.0 / np.sqrt(2.0)))
            pdf = gr.apply("exp", x * x * -0.5) * float(1.0 / np.sqrt(2.0 * np.pi))
            return [g * (cdf + x * pdf)]
        # 0.5 (1 + t) + 0.5 x (1 - t ** 2) K (1 + 3 C x ** 2), t = tanh(K (x + C x ** 3)). t is +-1 and
        # 1 - t ** 2 is 0 from |x| = 10 on (in float64 too); t and the polynomial read x clipped there, so
        # that a float16 x ** 2, inf from |x| = 256 on, does not make 0 * inf = nan, here or in the
        # gradient of this gradient (t's own, 1 - t ** 2 = 0 times x ** 2).
        xc = gr.apply("minimum", gr.apply("maximum", x, gr.lift(-10.0, like=x)), gr.lift(10.0, like=x))
        t = gr.apply("tanh", (xc + xc * xc * xc * _GELU_TANH_C) * _GELU_TANH_K)
        slope = (xc * xc * (3.0 * _GELU_TANH_C) + 1.0) * _GELU_TANH_K
        return [g * (0.5 + 0.5 * t + x * 0.5 * (1.0 - t * t) * slope)]

    def ref(self, attrs, x):
        if attrs["approximate"] == "tanh":
            return 0.5 * x * (1.0 + np.tanh(_GELU_TANH_K * (x + _GELU_TANH_C * x ** 3)))
        return 0.5 * x * (1.0 + np_erf(x / np.sqrt(2.0)))

    def samples(self, rng):
        far = np.array([-100.0, -20.0, -8.0, -3.0, -1e-3, 0.0, 1e-3, 3.0, 8.0, 20.0, 100.0])
        return [Sample([rng.uniform(-4, 4, (3, 4))]), Sample([far]),
                Sample([rng.uniform(-4, 4, (3, 4))], {"approximate": "tanh"}), Sample([far], {"approximate": "tanh"})]


@op("silu")
class Silu(Unary):
    """x * sigmoid(x), also called swish (torch's SiLU)."""

    gradgrad = True

    def emit(self, e, node, ins, outs):
        # (ONNX has no Swish at the opset.) x * sigmoid(x) with sigmoid's emission: its e ** -x
        # is inf far below 0, where the product is -0.0, never inf * 0 = nan.
        e.add("Mul", [ins[0], _emit_sigmoid(e, ins[0], node.inputs[0].dtype)], outs)

    def vjp(self, node, gouts):
        # sigmoid(x) (1 + x (1 - sigmoid(x))), as torch's silu_backward
        x = node.inputs[0]
        s = x.graph.apply("sigmoid", x)
        return [gouts[0] * s * (1.0 + x * (1.0 - s))]

    def ref(self, attrs, x):
        with np.errstate(over="ignore"):
            return x / (1.0 + np.exp(-x))

    def samples(self, rng):
        return [Sample([rng.uniform(-4, 4, (3, 4))]),
                Sample([np.array([-700.0, -100.0, -30.0, -1.2785, -1e-3, 0.0, 1e-3, 30.0, 100.0, 700.0])])]


@op("elu")
class Elu(Unary):
    """x where x > 0, else alpha * (e ** x - 1), as torch's ELU."""

    attrs = {"alpha": 1.0}
    gradgrad = True

    def infer(self, attrs, x):
        if attrs["alpha"] < 0:
            raise ShapeError(f"alpha must be 0 or more, got {attrs['alpha']}", arg="alpha",
                             hint="elu tends to -alpha far below 0 (PyTorch's default alpha=1.0); "
                                  "a negative alpha would make it rise again")
        return super().infer(attrs, x)

    def emit(self, e, node, ins, outs):
        # Not ONNX's Elu: onnxruntime computes e ** x - 1, which loses the digits of small x
        # (float32: 1% off at x = -1e-6, where torch's expm1 has them all), and has no float64
        # kernel. e ** x - 1 = 2t / (1 - t), t = tanh(x / 2), keeps them: t is accurate near 0,
        # and 1 - t, in [1, 2) for x <= 0, cancels nothing (-1 far out, nothing overflows).
        x, dtype = ins[0], node.inputs[0].dtype

        def c(v):
            return e.const(np.asarray(v, dtype=dtype))

        t = e.add("Tanh", [e.add("Mul", [e.add("Min", [x, c(0.0)]), c(0.5)])])
        expm1 = e.add("Div", [e.add("Add", [t, t]), e.add("Sub", [c(1.0), t])])
        e.add("Add", [e.add("Relu", [x]), e.add("Mul", [expm1, c(node.attrs["alpha"])])], outs)

    def vjp(self, node, gouts):
        # alpha e ** x at x <= 0 (x = 0 included, as torch), read at min(x, 0): e ** x of a
        # large x is inf, and its 0 share would be nan in the gradient of the gradient
        x, g = node.inputs[0], gouts[0]
        gr = x.graph
        neg = g * (gr.apply("exp", gr.apply("minimum", x, gr.lift(0.0, like=x))) * float(node.attrs["alpha"]))
        return [gr.apply("where", gr.apply("gt", x, gr.lift(0.0, like=x)), g, neg)]

    def ref(self, attrs, x):
        return np.where(x > 0, x, attrs["alpha"] * np.expm1(np.minimum(x, 0)))

    def samples(self, rng):
        kinks = np.array([-800.0, -100.0, -30.0, -1.0, -1e-3, -1e-4, 1e-4, 1e-3, 1.0, 30.0, 800.0])
        return [Sample([rng.uniform(-3, 3, (3, 4))]), Sample([kinks]), Sample([kinks], {"alpha": 0.5}),
                Sample([rng.uniform(-3, 3, (5,))], {"alpha": 2.5}),
                # at the kink and a step of a central difference from it: values only (the
                # difference would average the two slopes)
                Sample([np.array([-1e-7, 0.0, 1e-7])], {"alpha": 0.5}, grad_inputs=[])]


@op("hardtanh")
class Hardtanh(Unary):
    """x clipped to [min_val, max_val], as torch's Hardtanh (its gradient 0 at the ends too)."""

    attrs = {"min_val": -1.0, "max_val": 1.0}
    gradgrad = True

    def infer(self, attrs, x):
        if not attrs["min_val"] < attrs["max_val"]:
            raise ShapeError(f"max_val must be above min_val, got min_val={attrs['min_val']}, "
                             f"max_val={attrs['max_val']}", arg="max_val",
                             hint="hardtanh clips x to [min_val, max_val] (PyTorch's default [-1, 1])")
        return super().infer(attrs, x)

    def emit(self, e, node, ins, outs):
        dtype = node.inputs[0].dtype
        lo, hi = (e.const(np.asarray(node.attrs[k], dtype=dtype)) for k in ("min_val", "max_val"))
        e.add("Clip", [ins[0], lo, hi], outs)

    def vjp(self, node, gouts):
        x, g = node.inputs[0], gouts[0]
        gr = x.graph
        inside = gr.apply("logical_and", gr.apply("gt", x, gr.lift(float(node.attrs["min_val"]), like=x)),
                          gr.apply("lt", x, gr.lift(float(node.attrs["max_val"]), like=x)))
        return [gr.apply("where", inside, g, gr.lift(0.0, like=g))]

    def ref(self, attrs, x):
        return np.clip(x, attrs["min_val"], attrs["max_val"])

    def samples(self, rng):
        return [Sample([rng.uniform(-2, 2, (3, 4))]),
                Sample([np.array([-1e30, -1.001, -0.999, 0.0, 0.999, 1.001, 1e30])]),
                Sample([rng.uniform(-1, 8, (5,))], {"min_val": 0.0, "max_val": 6.0}),  # relu6
                Sample([np.array([-1.0, 1.0, 0.0, 6.0])], {"min_val": 0.0, "max_val": 6.0}, grad_inputs=[])]  # kinks
