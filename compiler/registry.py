"""The op registry: one OpDef per op holds everything about it.

An OpDef keeps, in one place, the op's attributes, its shape/dtype rule
(`infer`), its ONNX emission (`emit`), its gradient rule written in IR ops
(`vjp`), a NumPy reference (`ref`) and sample inputs (`samples`) that drive
the tests. A *composite* op has no emission or gradient of its own: it
`expand`s into other ops, and its gradient follows from theirs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from spec.errors import FlowgradError, ShapeError, SpecError, did_you_mean

from .ir import Graph, Node, TensorType, Value, current_loc

REQUIRED = object()  # marks an attribute without default


@dataclass
class Sample:
    """One test case: input arrays (float64 for float inputs) and attributes."""

    inputs: list
    attrs: dict = field(default_factory=dict)
    # indices of inputs whose gradient is checked; default: every float input
    grad_inputs: list | None = None
    name: str = ""
    # False where the sample sits on a kink of the gradient (smooth_l1_loss at |d| = beta): finite
    # differences of the gradient average its two sides there, so only the first gradient is checked
    gradgrad: bool = True


def _attr_kind(default, value) -> str | None:
    """What an attribute must be, judged by its default, when `value` is not that; else None.
    (Only unambiguous defaults: a float, a bool or a string; ints may also take pairs, e.g. kernel sizes.)"""
    import numpy as np

    if isinstance(default, bool):
        ok = isinstance(value, (bool, np.bool_)) or (type(value) is int and value in (0, 1))
        return None if ok else "true or false"
    if isinstance(default, float):
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        return None if ok else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


class OpDef:
    name: str = ""
    family: str = ""
    doc: str = ""
    inputs: tuple = ("x",)  # names of tensor inputs, for docs and call binding
    variadic: bool = False  # takes any number of tensor inputs
    attrs: dict = {}  # attribute name -> default (or REQUIRED)
    internal_attrs: tuple = ()  # attributes the compiler sets and specs cannot write
    choices: dict = {}  # attribute name -> the words it takes (reduction: mean, sum, none)
    internal: bool = False  # made by the compiler (gradients, lowering, rewrites), not written in a spec
    n_outputs: int = 1
    nondiff: bool = False  # no gradient flows through (argmax, comparisons, random)
    composite: bool = False  # built from other ops by `expand`
    onnx: str | None = None  # ONNX op type for a 1:1 emission
    # test knobs (OpInfo style)
    tol: dict = {}
    gradgrad: bool = False  # second-order test runs for this op
    check_onnx_shapes: bool = True  # strict ONNX shape inference must agree

    # -- called by Graph.apply ------------------------------------------------
    def build(self, g: Graph, inputs: list, attrs: dict):
        attrs = self.bind_attrs(attrs)
        inputs = [g.lift(x) if not isinstance(x, Value) else x for x in inputs]
        if not self.variadic and len(inputs) != len(self.inputs):
            raise SpecError(
                f"{self.name}() takes {len(self.inputs)} tensor argument(s) ({', '.join(self.inputs)}), got {len(inputs)}",
                current_loc(), f"usage: {self.usage()}",
            )
        if self.composite:
            try:
                return self.expand(g, *inputs, **attrs)
            except FlowgradError as e:
                if e.loc is None:  # raised by expand itself (the ops it applies locate their own errors)
                    self._locate(e)
                raise
        try:
            types = self.infer(attrs, *[v.type for v in inputs])
        except FlowgradError as e:
            self._locate(e)
            raise
        outs = g.add_node(self, inputs, attrs, list(types))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _locate(self, e: FlowgradError) -> None:
        """An error of this op: at the spec text being lowered, its message starting with the op's name."""
        e.loc = e.loc or current_loc()
        if not e.message.startswith((f"{self.name}:", f"{self.name}()")):
            e.message = f"{self.name}: {e.message}"

    def bind_attrs(self, given: dict) -> dict:
        out = {}
        for key in given:
            if key not in self.attrs:
                hint = did_you_mean(key, self.attrs) or (
                    f"{self.name}() takes " + (", ".join(self.attrs) if self.attrs else "no keyword arguments")
                )
                raise SpecError(f"{self.name}() has no argument {key!r}", current_loc(), hint)
        for key, default in self.attrs.items():
            if key in given:
                out[key] = given[key]
                want = _attr_kind(default, given[key])
                if want:
                    raise SpecError(f"{self.name}() argument {key!r} must be {want}, got {given[key]!r}",
                                    current_loc(), f"usage: {self.usage()}", arg=key)
                if key in self.choices and given[key] not in self.choices[key]:
                    words = ", ".join(self.choices[key])
                    close = did_you_mean(given[key], self.choices[key])
                    raise SpecError(f"{self.name}: unknown {key} {given[key]!r}", current_loc(),
                                    f"{close} ({key} is one of {words})" if close else f"write one of: {words}",
                                    arg=key)
            elif default is REQUIRED:
                raise SpecError(f"{self.name}() needs the argument {key!r}", current_loc(), f"usage: {self.usage()}")
            else:
                out[key] = default
        return out

    def usage(self) -> str:
        """The call as a spec writes it, e.g. softmax(x, axis=-1), for hints."""
        from .lower import signature

        return signature(self)

    # -- the op's definition (overridden per op) ------------------------------
    def infer(self, attrs: dict, *types: TensorType) -> list[TensorType]:
        raise NotImplementedError

    def emit(self, e, node: Node, ins: list[str], outs: list[str]) -> None:
        if self.onnx is None:
            raise NotImplementedError(f"{self.name} has no ONNX emission")
        e.add(self.onnx, ins, outs)

    vjp: Callable | None = None  # (self, node, gouts) -> list[Value | None]

    def expand(self, g: Graph, *inputs: Value, **attrs):
        raise NotImplementedError

    ref: Callable | None = None  # (self, attrs, *arrays) -> array or tuple

    def samples(self, rng: np.random.Generator) -> list[Sample]:
        return []


REGISTRY: dict[str, OpDef] = {}


def op(name: str):
    """Class decorator registering one op under `name`; a duplicate is a bug. The same class
    again is its module run again: a Ctrl-C during the first compile's import of an op family
    left the ops it had registered, and every later compile in that process failed with "op
    'constant' registered twice"."""

    def register(cls):
        old = type(REGISTRY[name]) if name in REGISTRY else None
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise RuntimeError(f"op {name!r} registered twice")
        inst = cls()
        inst.name = name
        inst.family = cls.__module__.rsplit(".", 1)[-1]
        if not inst.doc and cls.__doc__:
            inst.doc = " ".join(cls.__doc__.split())
        REGISTRY[name] = inst
        return cls

    return register


def get_op(name: str) -> OpDef:
    _load_ops()
    try:
        return REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown op {name!r}", current_loc(),
                        op_hint(name, REGISTRY) or "`flowgrad ops` lists the ops") from None


# Ops as papers and other libraries name them, whose spelling is far from flowgrad's name (act=rectifier,
# as the Theano tutorials write it, is far from relu) or close to another op's (expit to exp).
OTHER_NAMES = {"rectifier": "relu", "rectify": "relu", "logistic": "sigmoid", "expit": "sigmoid",
               "swish": "silu"}


def op_hint(name: str, choices) -> str | None:
    """'did you mean ...?' for an unknown op: the op it is another name of, else the close names among `choices`."""
    other = OTHER_NAMES.get(str(name).lower())
    return f"did you mean {other!r}?" if other else did_you_mean(name, choices)


def all_ops() -> dict[str, OpDef]:
    _load_ops()
    return dict(sorted(REGISTRY.items()))


_loaded = False


def _load_ops():
    global _loaded
    if not _loaded:
        _loaded = True
        from . import ops  # noqa: F401  (registers every family)


# ------------------------------------------------------------------ helpers
def same_type(attrs, x: TensorType, *rest) -> list[TensorType]:
    return [x]


def require_float(t: TensorType, what: str = "input") -> None:
    from .ir import FLOAT_DTYPES

    if t.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{what} must be a float tensor, got {t.dtype}", hint="cast it with cast(x, 'float32')")


def require_dtype(name, attr: str = "dtype") -> str:
    """A dtype name that the compiler can emit (as written in a spec: 'float32', 'int64', 'bool', ...)."""
    from .ir import FLOAT_DTYPES, INT_DTYPES

    known = FLOAT_DTYPES + INT_DTYPES + ("bool",)
    if name not in known:
        hint = (did_you_mean(name, known) if isinstance(name, str) else None) or f"choose one of {', '.join(known)}"
        raise ShapeError(f"unknown dtype {name!r}", hint=hint, arg=attr)
    return name


class Unary(OpDef):
    """Elementwise op of one float tensor, same shape out; emitted 1:1."""

    inputs = ("x",)

    def infer(self, attrs, x):
        require_float(x)
        return [x]

    def emit(self, e, node, ins, outs):
        e.add(self.onnx, ins, outs, **self.onnx_attrs(node.attrs))

    def onnx_attrs(self, attrs) -> dict:
        return {}


def float_samples(*shapes, low=-2.0, high=2.0, n_inputs=1):
    """Sampler for elementwise ops: each shape tuple gives one sample of n_inputs arrays."""

    def make(self, rng):
        out = []
        for shape in shapes:
            ins = [rng.uniform(low, high, size=shape) for _ in range(n_inputs)]
            out.append(Sample(ins))
        return out

    return make
