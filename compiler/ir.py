"""The IR: a graph of primitive ops over typed values.

A Graph is built by applying registered ops to Values; every application
runs the op's shape/dtype rule at once, so a Value always knows its type.
Nodes are appended in construction order, which is therefore a topological
order. Gradients are built into the same Graph with the same ops, so they
can be differentiated again.

Shapes are tuples of dims; a dim is an int or a symbolic product such as
"N" or "N*T" (see `dim_mul`), which stays unknown until run time.
"""
from __future__ import annotations

import contextlib
import contextvars
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, Union

import ml_dtypes  # (registers NumPy's "bfloat16" dtype name; its finfo knows it)
import numpy as np

from spec.errors import Loc, ShapeError

Dim = Union[int, str]
Shape = tuple

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int32", "int64", "uint32", "uint8")
# Order used for implicit promotion in mixed arithmetic (bool < ints < floats).
_PROMOTION = ("bool", "uint8", "int32", "uint32", "int64", "float16", "bfloat16", "float32", "float64")


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def promote_dtypes(a: str, b: str) -> str:
    return a if _PROMOTION.index(a) >= _PROMOTION.index(b) else b


# ------------------------------------------------------------------ dims
def _factors(d: Dim) -> tuple[int, list[str]]:
    if isinstance(d, int):
        return d, []
    coef, names = 1, []
    for part in d.split("*"):
        if part.isdigit():
            coef *= int(part)
        else:
            names.append(part[1:-1] if part.startswith("(") and part.endswith(")") else part)
    return coef, names


def _join(coef: int, names: list[str]) -> Dim:
    if not names:
        return coef
    names = sorted(names)
    parts = ([str(coef)] if coef != 1 else []) + names
    # a shifted dim among factors keeps its parentheses: N*(T-1)
    return "*".join(f"({p})" if "-" in p and len(parts) > 1 else p for p in parts)


def dim_shift(d: Dim) -> tuple[str, int] | None:
    """A named dim less a constant as (name, constant): "T-1" is ("T", 1), "T" ("T", 0) (the
    size of x[:, 1:] or x[:, :-1] on a symbolic T); None for anything else (an int, a product)."""
    if not isinstance(d, str):
        return None
    name, sep, k = d.partition("-")
    if not name.isidentifier() or (sep and not (k.isdigit() and int(k) > 0)):
        return None
    return name, int(k) if sep else 0


def dim_less(d: Dim, k: int) -> Dim | None:
    """The dim d less k ("T" less 1 is "T-1", "T-1" less -1 is "T"); None where that has no name
    (d not a name less a constant, or more than the name)."""
    if isinstance(d, int):
        return d - k
    shift = dim_shift(d)
    if shift is None or shift[1] + k < 0:
        return None
    name, total = shift[0], shift[1] + k
    return f"{name}-{total}" if total else name


def dim_symbols(d: Dim) -> list[str]:
    """The dim names a dim is made of ("N*(T-1)": N, T)."""
    _, names = _factors(d)
    return [dim_shift(n)[0] if dim_shift(n) else n for n in names]


def dim_value(d: Dim, sizes: dict, default: int | None = None) -> int | None:
    """The size of dim `d` where its names have the `sizes` given ("2*N*(T-1)" with N 4 and T 3:
    16); a name not in `sizes` counts as `default`, or makes it None."""
    if isinstance(d, int):
        return d
    out, names = _factors(d)
    for part in names:
        name, k = dim_shift(part) or (part, 0)
        size = sizes.get(name, default)
        if size is None:
            return None
        out *= max(int(size) - k, 0)
    return out


def dim_mul(a: Dim, b: Dim) -> Dim:
    ca, na = _factors(a)
    cb, nb = _factors(b)
    return _join(ca * cb, na + nb)


def dim_div(a: Dim, b: Dim) -> Dim | None:
    """a / b when it divides exactly, else None."""
    ca, na = _factors(a)
    cb, nb = _factors(b)
    rest = list(na)
    for n in nb:
        if n not in rest:
            return None
        rest.remove(n)
    if cb == 0 or ca % cb:
        return None
    return _join(ca // cb, rest)


def numel(shape: Sequence[Dim]) -> Dim:
    out: Dim = 1
    for d in shape:
        out = dim_mul(out, d)
    return out


def is_static(shape: Sequence[Dim]) -> bool:
    return all(isinstance(d, int) for d in shape)


def fmt_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def broadcast_shapes(*shapes: Sequence[Dim], what: str = "operands") -> tuple:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError(
                f"shapes {' and '.join(fmt_shape(s) for s in shapes)} of the {what} do not broadcast",
                hint="broadcasting aligns trailing dims; each pair must be equal or 1",
            )
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def normalize_axis(axis: int, rank: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ShapeError(f"axis must be an integer, got {axis!r}", hint="write e.g. axis=-1 (the last axis)", arg="axis")
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} is out of range for a tensor of rank {rank}",
                         hint=f"use an axis from {-rank} to {rank - 1} (-1 is the last)" if rank
                         else "a scalar has no axes: reduce or index a tensor of rank 1 or more", arg="axis")
    return axis % rank if rank else 0


# ------------------------------------------------------------------ types
@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{fmt_shape(self.shape)}"


# The spec location that ops being built now should report errors at.
_current_loc: contextvars.ContextVar[Loc | None] = contextvars.ContextVar("loc", default=None)


@contextlib.contextmanager
def at(loc: Loc | None):
    token = _current_loc.set(loc)
    try:
        yield
    finally:
        _current_loc.reset(token)


def current_loc() -> Loc | None:
    return _current_loc.get()


_ids = itertools.count()


class Value:
    """One tensor in the graph: a graph input, or an output of a node."""

    __slots__ = ("graph", "type", "producer", "index", "name", "loc", "id", "__weakref__")
    __array_priority__ = 1000  # so numpy scalars defer to our operators

    def __init__(self, graph: "Graph", type: TensorType, producer=None, index=0, name=None, loc=None):
        self.graph = graph
        self.type = type
        self.producer = producer
        self.index = index
        self.name = name
        self.loc = loc
        self.id = next(_ids)

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def rank(self) -> int:
        return len(self.type.shape)

    def __repr__(self) -> str:
        who = self.name or (self.producer.op.name if self.producer else "input")
        return f"<{who}#{self.id} {self.type}>"

    def __hash__(self):
        return self.id

    def __eq__(self, other):  # identity; element-wise equality is the `eq` op
        return self is other

    # Arithmetic builds nodes, with dtype promotion and Python scalars lifted.
    def __add__(self, o): return self.graph.binary("add", self, o)
    def __radd__(self, o): return self.graph.binary("add", o, self)
    def __sub__(self, o): return self.graph.binary("sub", self, o)
    def __rsub__(self, o): return self.graph.binary("sub", o, self)
    def __mul__(self, o): return self.graph.binary("mul", self, o)
    def __rmul__(self, o): return self.graph.binary("mul", o, self)
    def __truediv__(self, o): return self.graph.binary("div", self, o)
    def __rtruediv__(self, o): return self.graph.binary("div", o, self)
    def __pow__(self, o): return self.graph.binary("pow", self, o)
    def __matmul__(self, o): return self.graph.apply("matmul", self, o)
    def __neg__(self): return self.graph.apply("neg", self)


@dataclass(eq=False)
class Node:
    op: Any  # compiler.registry.OpDef
    inputs: list
    attrs: dict
    outputs: list = field(default_factory=list)
    loc: Loc | None = None
    grad_of: "Node | None" = None  # for a node of a gradient: the node whose gradient rule made it

    def __repr__(self) -> str:
        return f"<{self.op.name} {self.inputs} -> {self.outputs}>"


@dataclass
class GraphInput:
    value: Value
    kind: str  # "input" (data), "param", "buffer", "state" (optimizer), "control" (lr, step, seed)
    init: Any = None  # for params: the spec's InitSpec


class Graph:
    """A growing list of nodes; the unit that autodiff, rewrites and emission work on."""

    def __init__(self, float_dtype: str = "float32", mode: str = "train", mixed_precision: bool = False):
        self.nodes: list[Node] = []
        self.inputs: dict[str, GraphInput] = {}
        self.float_dtype = float_dtype
        self.mode = mode  # "train", "eval" or "infer": ops like dropout read it
        # True for a mixed-precision step (float32 master weights, computed in a half type) and the
        # steps of its scans: there a number beyond the half type's range saturates to its largest
        # value (a mask's -1e9 stays finite), where elsewhere it is refused (_float_scalar)
        self.mixed_precision = mixed_precision
        # buffer name -> new value; written by ops such as batch_norm in train mode
        self.buffer_updates: dict[str, Value] = {}
        # those of them that average the batches (batch_norm's running statistics): a mixed-precision
        # step skipped for overflow leaves them as they were, while a stateful scan's carried
        # states go on with the data (held only where they overflowed themselves)
        self.running_averages: set[str] = set()
        # batch_norms in train mode whose per-channel count is one symbolic dim alone (x [N, C], or
        # [N, C, 1, 1]): (that dim, where the spec writes the batch_norm). A batch where it is 1 has no
        # variance: training refuses data that would end an epoch with such a batch (PyTorch refuses it too)
        self.batch_statistics: list[tuple[str, object]] = []
        # True for the step of a scan (compiler/recurrent.py's StepBuilder): a buffer update
        # written in it would never leave the loop
        self.scan_step = False
        # The initial states of scans whose truncate=K cuts the gradient before they are read (K below
        # their steps, or a symbolic length): (initial values, K, steps, where truncate= is written).
        # Training refuses a parameter that reaches the loss only through them (it would get no gradient).
        self.truncated_inits: list[tuple[list, int, Any, Loc | None]] = []
        self._random_salt = itertools.count(1)
        # The batch the spec trains with, when known: a hint for layout choices that depend on
        # the row count (compiler/rewrites.py); graphs still accept any batch.
        self.batch_size: int | None = None

    # -------------------------------------------------------------- building
    def add_input(self, name: str, dtype: str, shape, kind: str = "input", init=None, loc=None, unique=False) -> Value:
        if unique:  # internal inputs (scan steps) take a free variant of the name
            base, k = name, 1
            while name in self.inputs:
                k += 1
                name = f"{base}_{k}"
        if name in self.inputs:
            raise ValueError(f"graph input {name!r} defined twice")
        what = {"param": "parameter", "buffer": "buffer", "state": "optimizer state"}.get(kind, "input")
        _check_dims(tuple(shape), f"{what} {name!r}", loc or current_loc())
        v = Value(self, TensorType(dtype, tuple(shape)), name=name, loc=loc)
        self.inputs[name] = GraphInput(v, kind, init)
        return v

    def input(self, name: str) -> Value:
        return self.inputs[name].value

    def apply(self, op_name: str, *inputs, **attrs):
        """Apply a registered op; returns its output Value, or a tuple when it has several."""
        from .registry import get_op

        op = get_op(op_name)
        return op.build(self, list(inputs), attrs)

    def add_node(self, op, inputs: list, attrs: dict, out_types: list[TensorType]) -> list[Value]:
        loc = current_loc()
        for t in out_types:
            _check_dims(t.shape, op.name, loc)
            if t.dtype not in _PROMOTION:
                raise ShapeError(f"{op.name}: unknown dtype {t.dtype!r}", loc, f"choose one of: {', '.join(_PROMOTION)}")
        node = Node(op, list(inputs), attrs, loc=loc)
        node.outputs = [Value(self, t, node, i, loc=loc) for i, t in enumerate(out_types)]
        self.nodes.append(node)
        return node.outputs

    def const(self, value, dtype: str | None = None) -> Value:
        dtype = dtype or (self.float_dtype if isinstance(value, float) else None)
        if isinstance(value, (float, np.floating)) and dtype is not None and is_float(str(dtype)):
            return self.apply("constant", value=_float_scalar(value, str(dtype), self))
        return self.apply("constant", value=np.asarray(value, dtype=dtype))

    def lift(self, x, like: Value | None = None) -> Value:
        """A Value for x; Python numbers take the dtype of `like` (or the float dtype)."""
        if isinstance(x, Value):
            return x
        if isinstance(x, (bool, np.bool_)):
            return self.const(np.asarray(x, dtype=bool))
        if like is not None and isinstance(x, (int, float, np.number)):
            dtype = like.dtype if (is_float(like.dtype) or isinstance(x, (int, np.integer))) else self.float_dtype
            if dtype == "bool":  # an integer meeting booleans is an integer (b == 2 is false, as in NumPy), not True
                dtype = "int64"
            if isinstance(x, (int, np.integer)) and np.dtype(dtype).kind in "iu" and \
                    not np.iinfo(dtype).min <= int(x) <= np.iinfo(dtype).max:
                raise ShapeError(f"the number {x} does not fit the {dtype} it is combined with", current_loc(),
                                 hint=f"{dtype} holds {np.iinfo(dtype).min} to {np.iinfo(dtype).max}; "
                                      "cast the other operand to a wider type first")
            return self.const(_float_scalar(x, dtype, self) if is_float(dtype) else np.asarray(x, dtype=dtype))
        if isinstance(x, float):
            return self.const(_float_scalar(x, self.float_dtype, self))
        if isinstance(x, int):
            return self.const(np.asarray(x, dtype=np.int64))
        return self.const(np.asarray(x))

    def cast(self, x: Value, dtype: str) -> Value:
        return x if x.dtype == dtype else self.apply("cast", x, to=dtype)

    def binary(self, op_name: str, a, b) -> Value:
        """Elementwise binary op with Python scalars lifted and dtypes promoted once, here."""
        a = self.lift(a, like=b if isinstance(b, Value) else None)
        b = self.lift(b, like=a)
        target = promote_dtypes(a.dtype, b.dtype)
        if op_name in ("div", "pow") and not is_float(target):
            target = self.float_dtype  # / and ** are float even between integers of one dtype
        if a.dtype != target or b.dtype != target:
            a, b = self.cast(a, target), self.cast(b, target)
        return self.apply(op_name, a, b)

    def rng_inputs(self) -> tuple[Value, Value]:
        """The (seed, step) control inputs that all in-graph randomness is a
        pure function of, created on first use."""
        if "seed" not in self.inputs:
            self.add_input("seed", "int64", (), kind="control")
            self.add_input("step", "int64", (), kind="control")
        return self.input("seed"), self.input("step")

    def random_salt(self) -> int:
        """A distinct integer for each random op, so their streams differ."""
        return next(self._random_salt)


# ONNX dims are int64, but its shape inference and onnxruntime's kernels
# overflow on dims of 2**31 and more; no model needs one (sizes are
# products of dims, so the spec's own limit alone does not prevent them).
MAX_DIM = 2**31 - 1


def _check_dims(shape: tuple, what: str, loc) -> None:
    for d in shape:
        if isinstance(d, int) and not 0 <= d <= MAX_DIM:
            raise ShapeError(f"{what}: a dimension of {fmt_shape(shape)} is {'negative' if d < 0 else 'too large'} "
                             f"(the limit is {MAX_DIM:,})", loc, "check the dims and sizes this value is made from")


# The half float types: a count or a sum of many entries can pass their range (65504 in float16)
HALF_TYPES = ("float16", "bfloat16")


def _float_scalar(x, dtype: str, g: "Graph | None" = None) -> np.ndarray:
    """x as a `dtype` scalar, for graph g. A number beyond the type's range is refused (it became
    inf, with NumPy's warning printed; in float16, compiled with --dtype float16, x * 1e5 was x *
    65504 without a word). Only in the half type of a mixed-precision step (g.mixed_precision)
    does it saturate to the largest finite value: a mask's -1e9 stays finite, as meant."""
    with np.errstate(over="ignore"):
        arr = np.asarray(x, dtype=dtype)
    if np.isfinite(x) and not np.isfinite(arr):
        largest = float(ml_dtypes.finfo(dtype).max)  # (np.finfo refuses bfloat16: a ValueError traceback)
        if dtype in ("float16", "bfloat16") and g is not None and g.mixed_precision:
            return np.asarray(np.copysign(largest, x), dtype=dtype)
        if dtype == "float32":
            wider = ', or compile with train.dtype float64 (--dtype float64; dtype="float64" in the Python API)'
        elif dtype in ("float16", "bfloat16") and (g is None or g.float_dtype == dtype):
            wider = ' (rescale the values it meets), or compile with train.dtype float32 (--dtype float32; dtype="float32" in the Python API)'
        elif dtype in ("float16", "bfloat16"):  # a tensor the spec casts to the half type
            wider = f", or cast the {dtype} tensor it is used with to {g.float_dtype} first"
        else:
            wider = ""
        raise ShapeError(f"the number {float(x):g} is beyond the range of {dtype} (up to {largest:{'.4g' if largest > 1e6 else 'g'}})",
                         current_loc(),
                         hint="write a smaller number" + wider)
    return arr


def producers_of(values: Iterable[Value]) -> list[Node]:
    """The nodes needed to compute `values`, each after the nodes it reads from."""
    order: list[Node] = []
    done: set[int] = set()
    for root in values:
        if root.producer is None or id(root.producer) in done:
            continue
        stack = [(root.producer, 0)]
        while stack:
            node, i = stack.pop()
            if i < len(node.inputs):
                stack.append((node, i + 1))
                dep = node.inputs[i].producer
                if dep is not None and id(dep) not in done:
                    done.add(id(dep))  # claimed now; emitted when its own inputs are done
                    stack.append((dep, 0))
            else:
                order.append(node)
        done.add(id(root.producer))
    return order


def body_nodes(node: Node) -> list[Node] | None:
    """The nodes of a subgraph op's body (scan's step, a block call), or None for a plain op."""
    for v in node.attrs.values():
        outs = getattr(v, "new_carries", None)
        if outs is not None and isinstance(getattr(v, "graph", None), Graph):  # a scan Body
            return producers_of(list(outs) + list(getattr(v, "extras", [])))
        if isinstance(v, Graph):
            return list(v.nodes)
    return None


def reads_shape_only(node: Node, i: int) -> bool:
    """Whether `node` reads only the shape of its input i (zeros_like, a fill's sizes, a
    broadcast's ref)."""
    if node.op.name in ("zeros_like", "ones_like", "fill", "numel"):
        return True
    names = getattr(node.op, "inputs", ())
    return i < len(names) and names[i] in ("like", "ref")


# Ops that pass a value's entries on, whatever its shape or type becomes: a lengths input read
# through them is still the lengths (compiler.training.length_bounds, compiler.generate).
PASSTHROUGH_OPS = ("unsqueeze", "squeeze", "reshape", "identity", "cast")


def passed_from(v: Value) -> Value:
    """The value `v` is passed on from through PASSTHROUGH_OPS (itself, where none made it)."""
    while v.producer is not None and v.producer.op.name in PASSTHROUGH_OPS:
        v = v.producer.inputs[0]
    return v
