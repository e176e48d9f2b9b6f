"""Lowering: a parsed Spec -> an IR Graph of primitive ops.

Graph entries are order-free: a name is evaluated when first needed, and a
cycle is reported with the chain of names. Expressions map onto registry ops;
layer shorthands (compiler/layers.py) create their own named parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spec import model as S
from spec.errors import FlowgradError, Loc, ShapeError, SpecError, did_you_mean
from spec.expr import unparse

from .ir import FLOAT_DTYPES, INT_DTYPES, Graph, TensorType, Value, at, is_float
from .registry import REQUIRED, all_ops, get_op, op_hint


@dataclass
class ParamInfo:
    name: str
    value: Value
    init_kind: str
    init_args: dict
    trainable: bool
    loc: Loc | None
    kind: str = "param"  # or "buffer" (non-trained state such as running statistics)
    seed: int | None = None
    stored: Value | None = None  # the graph input, where `value` is its cast to the compute dtype
    carried: bool = False  # a stateful layer's or scan's state: the one the step before ended with (a buffer)

    @property
    def input(self) -> Value:
        """The graph input holding the parameter (in the stored dtype)."""
        return self.stored if self.stored is not None else self.value

    @property
    def shape(self):
        return tuple(self.value.shape)


_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}
_COMPARE = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
_PY_BINOPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "**": lambda a, b: _bounded_pow(a, b),
}


# How a spec names its float type, which is the model's compute dtype (float64 in gradient
# checks, float16/bfloat16 in mixed precision).
SPEC_FLOAT_NAMES = ("float32", "float")


def _bounded_pow(a, b):
    """a ** b of two constants, refusing integer powers too big to compute (10**10**10 would not finish)
    and a result that is no real number."""
    if type(a) is int and type(b) is int and abs(a) > 1 and b > 64 and b * abs(a).bit_length() > 4096:
        raise OverflowError("the result is too large")
    try:
        result = a ** b
    except OverflowError:  # (its own words: "(34, 'Numerical result out of range')")
        raise OverflowError("the result is too large for a float") from None
    if isinstance(result, complex):
        # Python's power of a negative number to a fraction, (-8) ** 0.5, is complex; the spec was
        # refused at the number, as "cannot use (1.7e-16+2.83j) in arithmetic ... a string or list"
        raise ValueError("a negative number to a fractional power is not a real number")
    return result


def _int64(value, loc):
    """An integer constant, which must fit the int64 tensors it may become."""
    if type(value) is int and not -2**63 <= value < 2**63:
        raise SpecError(f"the integer {_short(value)} is too large", loc, "integers must fit in 64 bits; write a float, e.g. 1e30")
    return value


def _numbers_need_floats(op, attrs: dict, args: list) -> bool:
    """Whether an op given only whole numbers (a dim, a literal) takes floats alone, as sqrt, exp
    and tanh do: its shape rule refuses them as int64 scalars."""
    if not args or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) \
            or not any(isinstance(a, int) for a in args):
        return False
    try:
        op.infer(op.bind_attrs(attrs), *[TensorType("int64", ())] * len(args))
    except ShapeError as ex:
        return "float" in str(ex)
    except Exception:  # (an op whose rule wants other arguments says so when it is applied)
        return False
    return False


def _whole_float_hint(v, written: S.Expr) -> str | None:
    """The way to write a size that / made a float: H / 2 in an expression is 4.0, and // is not
    written there (as layers._int_arg says of a layer's units); None for other values."""
    divides = any(isinstance(x, S.BinOp) and x.op == "/" for x in _subexpressions(written))
    if type(v) is float and v.is_integer() and divides:
        return (f"/ in an expression gives a float ({int(v)}.0): name the size under dims:, "
                f"e.g. dims: {{H2: H/2}}, and write H2")
    return None


def _subexpressions(e: S.Expr) -> list:
    out, stack = [], [e]
    while stack:
        x = stack.pop()
        out.append(x)
        if isinstance(x, (S.BinOp, S.Compare)):
            stack += [x.left, x.right]
        elif isinstance(x, S.UnaryOp):
            stack.append(x.operand)
        elif isinstance(x, S.ListExpr):
            stack += x.items
    return out


def _is_negative(v) -> bool:
    return type(v) in (int, float) and v < 0


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


class Lowering:
    """Evaluates a spec's expressions into one Graph."""

    def __init__(self, spec: S.Spec, mode: str = "train", float_dtype: str | None = None, stored_dtype: str | None = None):
        """`stored_dtype`: parameters and float inputs enter the graph in this dtype and are
        cast to `float_dtype` for the computation (mixed precision's master weights)."""
        self.spec = spec
        self.calls: dict = {}  # spec location -> the op, layer or block the spec calls there, for messages
        float_dtype = float_dtype or spec.train.get("dtype", "float32")
        self.stored_dtype = stored_dtype or float_dtype
        # a half type computing for float32 storage is a mixed-precision step: the spec's numbers
        # beyond its range saturate there, where a pure float16 compile refuses them
        self.graph = Graph(float_dtype=float_dtype, mode=mode, mixed_precision=self.stored_dtype != float_dtype)
        self.graph.batch_size = spec.batch_size
        self.params: dict[str, ParamInfo] = {}
        self.inputs: dict[str, Value] = {}
        self.env: dict[str, Any] = {}
        self._defs: dict[str, tuple[S.Assign, int]] = {}
        self._evaluating: list[str] = []
        self._param_edges: dict[tuple[str, str], str] = {}  # (entry, entry it needs for a parameter) -> the parameter
        self._target: str | None = None
        self._layer_calls = 0
        # a loss lowered once per spec loss: a layer written in it (cross_entropy(dense(h, K), y))
        # would make its parameters again under another name at a second lowering
        self.losses: dict[int, Value] = {}
        for a in spec.graph:
            for i, t in enumerate(a.targets):
                self._defs[t] = (a, i)
        for name, p in spec.params.items():
            self._check_param_dtype(name, p)
            self.add_param(name, p.shape, p.init.kind, p.init.args, p.trainable, p.loc, seed=p.init.args.get("seed"))

    def _check_param_dtype(self, name: str, p: S.ParamDecl) -> None:
        """Parameters are stored in the compile float type (float32 names it): another declared
        type would be silently replaced by it, so it is refused."""
        if p.dtype in SPEC_FLOAT_NAMES or p.dtype == self.stored_dtype:
            return
        try:
            loc = self.spec.locate("params", name, "dtype")
        except Exception:  # noqa: BLE001  (a spec given as a dict without locations)
            loc = None
        raise SpecError(f"parameter {name!r} declares dtype {p.dtype}, but parameters are stored in the graphs' "
                        f"float type, {self.stored_dtype}", loc or p.loc,
                        f"leave dtype out (float32 means the compile float type), or compile with train.dtype "
                        f"{p.dtype} (--dtype {p.dtype}; dtype=\"{p.dtype}\" in the Python API)")

    # ------------------------------------------------------------------ params
    def add_param(self, name, shape, init_kind, init_args=None, trainable=True, loc=None, kind="param", seed=None) -> Value:
        if name in self.params:
            raise SpecError(f"parameter {name!r} is defined twice", loc, f"first defined at {self.params[name].loc}")
        unknown = [d for d in shape if not isinstance(d, int)]
        if unknown:  # e.g. dense(x, H) over an x whose last dim is a symbolic size
            from .ir import current_loc

            raise ShapeError(f"parameter {name!r} would have shape [{', '.join(map(str, shape))}], but the size "
                             f"{unknown[0]} is only known at run time", current_loc() or loc,
                             f"declare {unknown[0]} under dims, so that it has a value")
        v = stored = self.graph.add_input(name, self.stored_dtype, tuple(shape), kind=kind, loc=loc)
        if self.stored_dtype != self.graph.float_dtype:
            v = self.graph.cast(stored, self.graph.float_dtype)
        self.params[name] = ParamInfo(name, v, init_kind, dict(init_args or {}), trainable and kind == "param", loc, kind, seed,
                                      stored if v is not stored else None)
        return v

    # ------------------------------------------------------------------ names
    def input_value(self, name: str) -> Value:
        if name not in self.inputs:
            decl = self.spec.inputs[name]
            is_float = decl.dtype in SPEC_FLOAT_NAMES
            dtype = self.stored_dtype if is_float else decl.dtype
            v = self.graph.add_input(name, dtype, tuple(decl.shape), kind="input", loc=decl.loc)
            self.inputs[name] = self.graph.cast(v, self.graph.float_dtype) if is_float and dtype != self.graph.float_dtype else v
        return self.inputs[name]

    def known_names(self) -> list[str]:
        return [*self._defs, *self.spec.inputs, *self.params, *self.spec.dims]

    def lookup(self, name: str, loc: Loc | None):
        if name in self.env:
            return self.env[name]
        if name in self._defs:
            return self.evaluate_name(name)
        if name in self.spec.inputs:
            return self.input_value(name)
        if name in self.params:
            return self.params[name].value
        if name in self.spec.dims:
            return self.spec.dims[name]
        if name in ("true", "false"):  # YAML spelling of booleans, e.g. layer_norm=true
            return name == "true"
        if "." in name:
            # A dotted name refers to a parameter a layer shorthand creates:
            # evaluate the layer's node first, then look again.
            head = name.split(".", 1)[0]
            if head in self._defs:
                self._needs(head, name)
                if name in self.params:
                    return self.params[name].value
            elif head in self.spec.blocks:
                made = self._block_param(name, head, loc)
                if made is not None:
                    return made
            raise SpecError(
                f"{name!r} is not a parameter",
                loc,
                did_you_mean(name, self.params) or "dotted names may only name parameters, such as 'h.W' made by 'h: dense(...)'",
            )
        sized = next((n for n, decl in self.spec.inputs.items() if name in decl.shape), None)
        if sized is not None:
            # a symbolic size such as the batch N is declared, in an input's shape: 'undefined
            # name' and the hint to declare it sent the user to declare it again
            decl = self.spec.inputs[sized]
            raise SpecError(f"{name!r} is a size of input {sized!r} (shape [{', '.join(map(str, decl.shape))}]), "
                            "known only at run time: it is not a value of the graph", loc,
                            f"zeros({name}, ...), ones({name}, ...) and reshape's target (reshape(x, [{name}, -1, 4])) "
                            f"take it alone as a size; a number needs a dim under dims:")
        if name in (*FLOAT_DTYPES, *INT_DTYPES, "bool", *SPEC_FLOAT_NAMES):
            # cast(y, to=float32) takes the bare word (a keyword's value may be one), but a type
            # given positionally, cast(y, float32), is read as a value, and was 'undefined'
            raise SpecError(f"undefined name {name!r}", loc,
                            f"a type given as an argument is a string: '{name}', e.g. cast(x, '{name}')")
        # An output or a metric is declared, but only for the deployment graph or the report:
        # expressions read graph entries. 'undefined name' with the hint to declare it sent the
        # user to declare under graph: a name the spec already declares.
        for section, entries in (("outputs", self.spec.outputs), ("metrics", self.spec.metrics)):
            decl = next((a for a in entries if name in a.targets), None)
            if decl is not None:
                kind = "an output" if section == "outputs" else "a metric"
                raise SpecError(f"{name!r} is {kind}, and expressions read graph entries, not {section}", loc,
                                f"move its expression under graph: ({name}: {unparse(decl.expr)}) and write "
                                f"{name}: {name} under {section}; or use the graph entry it is computed from")
        if name in ("inf", "nan", "pi") and name not in self.known_names():
            # a port of masked_fill(mask, float('-inf')) or math.pi: the hint was a name one letter
            # away ('did you mean 'nf'?'), or where names come from
            hints = {"inf": "a mask fills with a large finite number instead: where(keep, scores, -1e9) (a number "
                            "beyond the float type's range is refused)",
                     "pi": "write the number: 3.141592653589793",
                     "nan": "a NaN is no value to compute with: write a number"}
            raise SpecError(f"undefined name {name!r}: expressions have no named numbers", loc, hints[name])
        # The loss is no graph entry either: 'undefined name' with the hint 'logits' (or none)
        # for loss / log(2) in a metric, where the schema said the loss was readable as `loss`.
        if name == "loss" and self.spec.loss is not None:
            raise SpecError("'loss' is the spec's loss, and expressions read graph entries, not the loss", loc,
                            f"move its expression under graph: (loss_value: {unparse(self.spec.loss.expr)}), write "
                            f"loss: loss_value and read loss_value")
        # A block, an op or a layer written without its call ('z: mix', 'act' aside) was pointed at
        # a parameter of the block ('mix.M') or told to declare the name
        if name in self.spec.blocks:
            inputs = ", ".join(self.spec.blocks[name].inputs)
            raise SpecError(f"{name!r} is a block, not a value", loc,
                            f"call it on its inputs ({inputs}): {name}({inputs}), or scan it: scan({name}, over=...)")
        from .layers import LAYERS

        if name in _SPECIAL_FORMS or name in LAYERS or name in {n for n, op in all_ops().items() if not op.internal}:
            raise SpecError(f"{name!r} is an op, not a value", loc,
                            f"call it on its arguments, {name}(...): 'flowgrad ops' gives its signature")
        # (no close name, as for 'Wl' against 'W1': the hint still says where names come from)
        raise SpecError(f"undefined name {name!r}", loc, did_you_mean(name, self.known_names())
                        or "declare it under inputs, params, dims or graph (a block's: in, params, graph); "
                           "names are case-sensitive")

    def _needs(self, entry: str, param: str) -> None:
        """Evaluate the graph entry `entry` for the parameter `param` its layers (or the block it
        calls first) make: noted, so that a cycle through it says that it is a parameter's."""
        if self._evaluating:
            self._param_edges[(self._evaluating[-1], entry)] = param
        self.evaluate_name(entry)

    def _block_param(self, name: str, block_name: str, loc: Loc | None):
        """A block's parameter (`enc.h.W`, `cell.U`) read where no call of the block has been
        lowered yet: graph entries are evaluated in the order they are needed (the loss's first
        in training, the file's in check), so it was 'not a parameter' to one and read by the other.
        A parameter declared under the block's params: is made here, as its first use would
        make it; one a layer of the block makes is made by lowering the graph entries that call
        the block, as a layer's own parameter (h.W) is by its entry. None if neither makes it."""
        block = self.spec.blocks[block_name]
        rest = name[len(block_name) + 1:]
        if rest in block.params:
            p = block.params[rest]
            self.add_param(name, p.shape, p.init.kind, p.init.args, p.trainable, p.loc, seed=p.init.args.get("seed"))
            return self.params[name].value
        callers = [a.targets[0] for a in self.spec.graph if block_name in blocks_called(a.expr, self.spec.blocks)]
        for entry in callers:  # (one being computed, this read's own or one it is read for, is passed over)
            if entry in self.env or any(t in self._evaluating for t in self._defs[entry][0].targets):
                continue
            self._needs(entry, name)
            if name in self.params:
                return self.params[name].value
        if not any(n.startswith(f"{block_name}.") for n in self.params):
            # no call of the block lowered yet, nor one that could be before this read
            raise SpecError(f"{name!r} is made by the first call of block {block_name!r}, and is read here before "
                            "any call of it", loc,
                            f"the layers of a block make their parameters when it is first called (their shapes "
                            f"come from its inputs): call {block_name}(...) in a graph entry of its own that this one "
                            f"reads, or declare the weight under the block's params:")
        return None

    def evaluate_name(self, name: str):
        if name in self.env:
            return self.env[name]
        assign, _ = self._defs[name]
        self._check_cycle(self._evaluating, name)
        if len(self._evaluating) >= _DEEP:
            self._evaluate_dependencies(name)
        self._evaluating.append(name)
        try:
            self.evaluate_assign(assign)
        finally:
            self._evaluating.pop()
        return self.env[name]

    def _check_cycle(self, path: list[str], name: str) -> None:
        """Needing `name` while computing `path` (innermost last) is a cycle if it is on the path."""
        assign, _ = self._defs[name]
        # `a, b: f(...)` is one entry: needing b while computing a is a cycle too
        busy = next((t for t in path if t in assign.targets), None)
        if busy is not None:
            cycle = path[path.index(busy):] + [name]
            if len(cycle) > 12:
                cycle = cycle[:6] + [f"... ({len(cycle) - 11} more)"] + cycle[-5:]
            same = "" if busy == name else f" ('{name}' comes from the same entry as '{busy}')"
            full = path[path.index(busy):] + [name]
            edge = next(((a, b) for a, b in zip(full, full[1:]) if (a, b) in self._param_edges), None)
            if edge is not None:
                # the cycle runs through a parameter that a layer makes (logits.W read by the embedding
                # that logits is computed from): 'use scan for recurrence' sent the user to the wrong tool
                reader, maker = edge
                param = self._param_edges[edge]
                head = param.split(".", 1)[0]
                if head in self.spec.blocks:
                    made = f"block {head!r} makes at its first call, in '{maker}'"
                    hint = (f"a block's layers make their parameters at its first call (their shapes come from its "
                            f"inputs), so what that call reads cannot read them: declare the weight under the "
                            f"block's params: (blocks: {{{head}: {{params: ...}}}}) and use it in the block's graph; "
                            f"it can then be read anywhere as {head}.NAME")
                else:
                    made = f"the layer of '{maker}' makes"
                    hint = ("a layer makes its parameters when its entry is computed (their shapes come from its "
                            "inputs): tie them the other way, making the weight in the layer computed first and "
                            "giving it to the other with W= (e.g. logits: dense(hs, V, W=transpose(e.W))), or "
                            "declare the weight under params: and give it to both")
                raise SpecError(f"cycle in the graph: {' -> '.join(cycle)}{same}: '{reader}' reads '{param}', which "
                                f"{made}, and '{maker}' is computed from '{reader}'", assign.loc, hint)
            raise SpecError(f"cycle in the graph: {' -> '.join(cycle)}{same}", assign.loc,
                            "a node cannot depend on itself; use scan for recurrence")

    def _evaluate_dependencies(self, name: str) -> None:
        """Evaluate the entries that `name` needs, deepest first, without recursion.

        Entries are evaluated lazily and recursively, so a long chain of them
        (a1: a0 + 1, a2: a1 + 1, ...) would exhaust Python's stack. Deep in
        such a chain the rest of it is walked here, iteratively, in the order
        the recursion would take, and evaluated from its far end.
        """
        path = list(self._evaluating) + [name]
        stack = [(name, iter(names_in(self._defs[name][0].expr)))]
        done = set()
        while stack:
            current, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                path.pop()
                done.add(current)
                if current != name:
                    self.evaluate_name(current)
                continue
            if dep not in self._defs and dep.split(".", 1)[0] in self._defs:  # h.W needs h
                self._param_edges[(current, dep.split(".", 1)[0])] = dep
                dep = dep.split(".", 1)[0]
            if dep not in self._defs or dep in self.env or dep in done:
                continue
            self._check_cycle(path, dep)
            path.append(dep)
            stack.append((dep, iter(names_in(self._defs[dep][0].expr))))

    def evaluate_assign(self, a: S.Assign):
        saved = self._target, self._layer_calls
        self._target, self._layer_calls = a.targets[0] if len(a.targets) == 1 else "_".join(a.targets), 0
        try:
            value = self.eval(a.expr)
        finally:
            self._target, self._layer_calls = saved
        # an entry overridden by --set keeps the file's key: its count of values is the override's
        where = a.loc if a.expr.loc is None or a.expr.loc.file == a.loc.file else a.expr.loc
        if len(a.targets) == 1:
            if isinstance(value, tuple):  # else the tuple surfaces later, at a use of the name
                raise SpecError(f"'{a.targets[0]}' is given {len(value)} values, but names one", where,
                                f"name each of them: '{a.targets[0]}, ...: ...' (one name per value)")
            self.env[a.targets[0]] = value
        else:
            if not isinstance(value, tuple) or len(value) != len(a.targets):
                n = len(value) if isinstance(value, tuple) else 1
                raise SpecError(f"cannot unpack {n} value(s) into {len(a.targets)} names", where,
                                f"write {n} target names, e.g. '{', '.join('abcdefgh'[:n]) if n <= 8 else 'a, b, ...'}'"
                                if n > 1 else "the value is one tensor: give it a single target name")
            for t, v in zip(a.targets, value):
                self.env[t] = v
        for t in a.targets:
            v = self.env[t]
            if isinstance(v, Value) and v.name is None and v.producer is not None:
                v.name = t  # emitted ONNX names follow the spec's names
        return value

    def evaluate_all(self) -> None:
        for a in self.spec.graph:
            if a.targets[0] not in self.env:
                self.evaluate_name(a.targets[0])  # tracked, so a cycle is reported from its first entry in the file

    def symbolic_dim(self, name: str):
        """(input Value, axis) of the first data input whose declared shape has the symbolic dim
        `name` (a graph that reads no other input for anything else takes the size from one it
        reads: rewrites.sizes_from_inputs_read)."""
        for n, decl in self.spec.inputs.items():
            if name in decl.shape:
                return self.lookup(n, decl.loc), list(decl.shape).index(name)
        return None

    def fill(self, e: S.Call, value: float) -> Value:
        """zeros(N, H) / ones(...): dims are ints, dims names, or symbolic dims of the inputs (N)."""
        dims, refs = [], []
        for a in e.args:
            if isinstance(a, S.Name) and a.id in self.spec.inputs and self.spec.inputs[a.id].shape == [] \
                    and self.spec.inputs[a.id].dtype.startswith("int"):
                # zeros(count, Z): a scalar integer input gives a size at run time (generators' sample count)
                refs.append(self.lookup(a.id, a.loc))
                dims.append((len(refs) - 1, a.id))
                continue
            if isinstance(a, S.Name) and a.id not in self.spec.dims and a.id not in self._defs:
                found = self.symbolic_dim(a.id)
                if found is None:
                    raise SpecError(f"{a.id!r} is neither a dim nor a symbolic dim of an input", a.loc,
                                    did_you_mean(a.id, list(self.spec.dims)) or "declare it under dims:")
                refs.append(found[0])
                dims.append((len(refs) - 1, found[1]))
                continue
            d = self.eval(a)
            if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                raise SpecError(f"{e.func}() dims must be non-negative integers, got {d!r}", a.loc,
                                _whole_float_hint(d, a) or
                                f"write sizes as integers, dim names or size arithmetic, e.g. {e.func}(N, 2*H)")
            dims.append(d)
        with at(e.loc):
            return self.graph.apply("fill", *refs, dims=tuple(dims), value=value, dtype=self.graph.float_dtype)

    def layer_name(self, fn: str) -> str:
        """Parameter prefix for a layer shorthand call in the current entry."""
        self._layer_calls += 1
        base = self._target or fn
        return base if self._layer_calls == 1 else f"{base}.{fn}{self._layer_calls}"

    # ------------------------------------------------------------------ expressions
    def eval(self, e: S.Expr):
        with at(e.loc):
            return self._eval(e)

    def tensor(self, e: S.Expr) -> Value:
        v = self.eval(e)
        if isinstance(v, Value):
            return v
        if isinstance(v, (bool, int, float)):
            return self.graph.lift(v)
        if isinstance(v, tuple) and all(isinstance(x, Value) for x in v):  # an op with several results
            what = f"{e.func}(...)" if isinstance(e, S.Call) else "this expression"
            names = ", ".join("abcdefgh"[:len(v)]) if len(v) <= 8 else "a, b, ..."
            raise SpecError(f"{what} gives {len(v)} tensors where one is expected", e.loc,
                            f"unpack them in a graph entry, '{names}: {what}', and use one by its name")
        raise SpecError(f"expected a tensor, got {type(v).__name__} {v!r}", e.loc,
                        "write a name, a number or an expression here; strings and lists are options of ops, "
                        "e.g. cast(x, 'float32')")

    def _eval(self, e: S.Expr):
        g = self.graph
        if isinstance(e, S.Name):
            return self.lookup(e.id, e.loc)
        if isinstance(e, S.Const):
            return _int64(e.value, e.loc)
        if isinstance(e, S.ListExpr):
            return [self.eval(i) for i in e.items]
        if isinstance(e, S.UnaryOp):
            v = self.eval(e.operand)
            if not isinstance(v, (Value, bool, int, float)):
                # a list, string, None or an op's several results: Python's - raised a TypeError
                # traceback, and its `not` gave the constant's truthiness (not [1] was False)
                raise SpecError(f"cannot use {unparse(e.operand)} with '{e.op}'", e.operand.loc,
                                f"'{e.op}' takes a tensor or a number; a string or list is only an op's option")
            if e.op == "not":
                return g.apply("logical_not", v) if isinstance(v, Value) else (not v)
            if e.op == "-":
                return -v
            return v
        if isinstance(e, S.BinOp):
            a, b = self.eval(e.left), self.eval(e.right)
            if not isinstance(a, Value) and not isinstance(b, Value):
                try:
                    result = _PY_BINOPS[e.op](a, b)
                except Exception as ex:
                    # (-8) ** 0.5 is shown as written: -8 ** 0.5 reads as -(8 ** 0.5)
                    left = f"({a})" if e.op == "**" and _is_negative(a) else _short(a)
                    raise SpecError(f"cannot compute {left} {e.op} {_short(b)}: {ex}", e.loc,
                                    "check the constants on both sides; arithmetic on constants takes numbers") from None
                return _int64(result, e.loc)
            if e.op == "@":
                a, b = self._as_tensor(a, e.left, "left"), self._as_tensor(b, e.right, "right")
                self._check_matmul_shapes(a, b, e)
                with at(e.op_loc or e.loc):  # shape errors point at the operator
                    return g.apply("matmul", a, b)
            self._check_operands(a, b, e)
            a, b = self._lift_number(a, b, e.left), self._lift_number(b, a, e.right)
            with at(e.op_loc or e.loc):
                return g.binary(_BINOPS[e.op], a, b)
        if isinstance(e, S.Compare):
            a, b = self.eval(e.left), self.eval(e.right)
            if not isinstance(a, Value) and not isinstance(b, Value):
                raise SpecError(f"comparison of two constants: {_short(a)} {e.op} {_short(b)}", e.op_loc or e.loc,
                                "a comparison needs a tensor on one side; write true or false if a constant was meant")
            self._check_operands(a, b, e)
            a, b = self._lift_number(a, b, e.left), self._lift_number(b, a, e.right)
            with at(e.op_loc or e.loc):
                return g.binary(_COMPARE[e.op], a, b)
        if isinstance(e, S.Call):
            return self.call(e)
        if isinstance(e, S.Subscript):
            x = self.tensor(e.value)
            return g.apply("index", x, spec=tuple(self._index_item(i) for i in e.index))
        raise SpecError(f"unsupported expression {type(e).__name__}", e.loc,
                        "use names, numbers, arithmetic, comparisons, op calls and subscripts; `flowgrad ops` lists the ops")

    def dim_name(self, d) -> str:
        """A size as the spec may spell it: 64 -> 'D' when D is the one dim of that value."""
        names = [n for n, v in self.spec.dims.items() if v == d] if isinstance(d, int) else []
        return names[0] if len(names) == 1 else str(d)

    def _dim_text(self, d) -> str:
        """64 -> 'D = 64' when D is the one dim of that value, else '64'."""
        name = self.dim_name(d)
        return f"{name} = {d}" if name != str(d) else name

    def _check_matmul_shapes(self, a: Value, b: Value, e: S.BinOp) -> None:
        """A user-written `a @ b` whose inner dims differ, told with the operands as written."""
        if a.rank == 0 or b.rank == 0 or a.dtype != b.dtype:
            return  # the op's own checks say these
        sa = a.shape if a.rank > 1 else (1,) + tuple(a.shape)
        sb = b.shape if b.rank > 1 else tuple(b.shape) + (1,)
        if sa[-1] == sb[-2]:
            return
        from .ir import fmt_shape

        def text(x: S.Expr, v: Value, side: str) -> str:
            t = unparse(x)
            return t if len(t) <= 30 else f"the {side} operand {fmt_shape(v.shape)}"

        lt, rt = text(e.left, a, "left"), text(e.right, b, "right")
        which = "only" if b.rank == 1 else "first" if b.rank == 2 else "second-to-last"
        hint = (f"the last dim of {lt} ({self._dim_text(sa[-1])}) must equal the {which} dim of {rt} "
                f"({self._dim_text(sb[-2])})")
        if a.rank >= 2 and b.rank >= 2 and b.shape[-1] == a.shape[-2] and a.rank == b.rank == 2:
            swapped = fmt_shape((b.shape[0], a.shape[1]))
            hint = f"swap the operands: {rt} @ {lt} fits, and gives {swapped}"
        elif (isinstance(e.right, S.Name) and e.right.id in self.spec.params and b.rank == 2 and a.rank >= 2
              and isinstance(sa[-1], int) and isinstance(e.left, S.Name) and e.left.id in self.spec.inputs):
            # e.g. x [N, D] @ W1 declared [63, 256]: one of the two declarations is what to change
            named = self.dim_name
            w_shape = lambda first: f"[{first}, {named(b.shape[1])}]"  # noqa: E731
            shape = [named(d) for d in self.spec.inputs[e.left.id].shape]
            x_shape = lambda last: f"[{', '.join([*shape[:-1], last])}]"  # noqa: E731
            x_named, w_named = shape[-1] != str(sa[-1]), named(sb[-2]) != str(sb[-2])
            if w_named and not x_named:
                hint = (f"{rt} takes inputs of width {self._dim_text(sb[-2])}: declare input '{lt}' with "
                        f"shape {x_shape(named(sb[-2]))}")
            elif x_named and not w_named:
                hint = (f"input '{lt}' is {x_shape(shape[-1])}, with {shape[-1]} = {sa[-1]}: declare {rt} with "
                        f"shape {w_shape(shape[-1])}")
            else:
                hint = f"declare {rt} with shape {w_shape(shape[-1])}, or input '{lt}' with shape {x_shape(named(sb[-2]))}"
        raise ShapeError(f"shape mismatch in {lt} @ {rt}: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}",
                         e.op_loc or e.loc, hint)

    def _as_tensor(self, v, e, side):
        if isinstance(e, S.Name) and e.id in self.spec.dims and not isinstance(v, Value):
            raise SpecError(f"{e.id} is a dim, the number {v}, but @ needs a tensor on both sides", e.loc,
                            "write an input, a parameter or a graph entry here; to scale by the number, use * instead of @")
        if not isinstance(v, Value):
            raise SpecError(f"@ needs tensors on both sides, got {v!r}", e.loc, "use * to scale by a number")
        if not is_float(v.dtype):  # located at the operand, not at the whole product
            raise ShapeError(f"matmul: {side} operand of @ must be a float tensor, got {v.dtype}", e.loc,
                             "cast it with cast(x, 'float32')")
        return v

    def _lift_number(self, x, other, written: S.Expr):
        """A number beside a tensor as a tensor of its type, made where the number is written: one
        beyond the type's range (x * 1e40) or one an integer tensor cannot hold (j + 3000000000) is
        told at the number, not at the operator."""
        if isinstance(x, Value) or not isinstance(other, Value):
            return x
        with at(written.loc):
            return self.graph.lift(x, like=other)

    def _check_operands(self, a, b, e):
        for v, side in ((a, e.left), (b, e.right)):
            if not isinstance(v, (Value, bool, int, float)):
                raise SpecError(f"cannot use {v!r} in arithmetic", side.loc,
                                "arithmetic takes tensors and numbers; a string or list is only an op's option")

    def _index_item(self, item):
        if isinstance(item, S.Slice):
            parts = [None if p is None else self.eval(p) for p in (item.start, item.stop, item.step)]
            for p, src in zip(parts, (item.start, item.stop, item.step)):
                if p is not None and not isinstance(p, int):
                    raise SpecError(f"slice bounds must be integers, got {getattr(p, 'type', p)!s}", src.loc,
                                    _whole_float_hint(p, src) or
                                    "write integers or dims, e.g. x[:, 1:H]; to pick entries by a tensor use "
                                    "take(x, ids, axis=...)")
            if parts[2] == 0:
                raise SpecError("slice step cannot be zero", item.step.loc, "use a positive step, or a negative one to reverse")
            return tuple(parts)
        v = self.eval(item)
        if v is None or isinstance(v, int) or v is Ellipsis:
            return v
        number = isinstance(v, float) and not isinstance(v, bool)  # (x[:, 1.0] was pointed at take)
        raise SpecError(f"indices must be integers, slices or None, got {getattr(v, 'type', v)!s}", item.loc,
                        _whole_float_hint(v, item) or ("write the index as an integer, e.g. x[:, 1]" if number else
                                                       "use take(x, ids, axis=...) to index with a tensor"))

    def call(self, e: S.Call):
        from . import layers, recurrent  # noqa: F401  (recurrent registers its cells as layers)
        from .binding import BindingError

        self.__dict__.setdefault("calls", {}).setdefault(e.loc, e.func)  # (subclasses may skip __init__)
        if e.func in self.spec.blocks and (e.func in _SPECIAL_FORMS or e.func in all_ops() or e.func in layers.LAYERS):
            raise SpecError(f"block {e.func!r} has the name of an op: {e.func}(...) would be ambiguous",
                            self.spec.blocks[e.func].loc, "give the block another name")
        if e.func == "scan":
            from .recurrent import lower_scan

            return lower_scan(self, e)
        if e.func in ("grad", "hvp", "jacobian"):
            from . import higher

            return getattr(higher, f"lower_{e.func}")(self, e)
        if e.func == "bidirectional" and e.args and isinstance(e.args[0], S.Name):
            from . import recurrent  # noqa: F401  (registers the cells)
            from .layers import LAYERS

            _refuse_given_weights(e)
            args = [e.args[0].id] + [self.eval(a) for a in e.args[1:]]
            return self._run_layer(LAYERS["bidirectional"], e, args, self._eval_kwargs(e))
        if e.func in ("zeros", "ones"):
            if e.kwargs:  # else zeros(N, H, dtype=...) went on as an unknown op, and N was 'undefined'
                k = next(iter(e.kwargs))
                raise SpecError(f"{e.func}() has no argument {k!r}", e.kwarg_locs.get(k, e.loc),
                                f"{e.func}(N, H) takes only sizes and gives the model's float type; "
                                f"cast(...) it for another one")
            return self.fill(e, 0.0 if e.func == "zeros" else 1.0)
        if e.func in self.spec.blocks:
            return self.call_block(e)
        self._check_keywords(e)
        if e.func == "reshape":
            # reshape(q, [N, T, H, D]): a symbolic dim of an input (the batch N, a length T) is a
            # size of the target, as in torch's q.view(B, T, H, D); it was 'not a value of the graph'
            args = [self._reshape_target(a) if i == 1 else self.eval(a) for i, a in enumerate(e.args)]
            kwargs = {k: self._reshape_target(v) if k == "shape" else self.eval(v) for k, v in e.kwargs.items()}
        else:
            args = [self.eval(a) for a in e.args]
            kwargs = self._eval_kwargs(e)
        layer = layers.LAYERS.get(e.func)
        if layer is not None and layer.applies(args, kwargs):
            return self._run_layer(layer, e, args, kwargs)
        op = get_op_at(e)
        try:
            return self.apply_op(op, e, args, kwargs)
        except BindingError as err:
            # a layer and an op of one name (layer_norm(x), layer_norm(x, gamma, beta)): the
            # arguments picked the op, and the user may have meant the layer
            if layer is not None:
                err.hint = f"{err.hint}, or the layer: {layer.usage}"
            raise

    def _run_layer(self, layer, e: S.Call, args: list, kwargs: dict):
        """A layer shorthand; arguments of a kind it does not expect are the user's mistake, located."""
        try:
            return layer(self, e, args, kwargs)
        except _RULE_ERRORS as ex:
            given = ", ".join([*(_kind(a) for a in args), *(f"{k}={_kind(v)}" for k, v in kwargs.items())])
            raise SpecError(f"{e.func}() cannot take ({given})", e.loc, f"usage: {layer.usage}") from ex

    def call_block(self, e: S.Call):
        """`block(a, b)`: the block's graph applied to the arguments, inline. Its parameters
        (`<block>.<name>`) are shared by every call, so `D(x)` and `D(fake)` use one discriminator."""
        from .recurrent import entering_block

        from .binding import Params, bind

        block = self.spec.blocks[e.func]
        inputs = tuple(block.inputs)
        bind(Params(f"block {e.func!r}", positional=inputs, required=inputs, keywords=False,
                    usage=f"{e.func}({', '.join(inputs)})",
                    hint=f"pass its inputs ({', '.join(inputs)}) positionally, in the block's 'in' order"),
             e, e.args, e.kwargs)
        # The arguments before the block is entered: computed outside it, they may call it too
        # (layer(layer(x)) is two calls one after the other, not a block that runs itself).
        args = [self.tensor(a) for a in e.args]
        with entering_block(e.func, e.func_loc or e.loc):
            return self._call_block(e, block, args)

    def _call_block(self, e: S.Call, block, args: list):
        from .recurrent import _block_lowering

        body = _block_lowering(self, block, self.graph, lambda v: v, dict(zip(block.inputs, args)),
                               call=f"{e.func}@{call_site(e)}")
        outs = []
        try:
            for name in block.outputs:
                v = body.lookup(name, block.output_loc(len(outs)))
                outs.append(v if isinstance(v, Value) else self.graph.lift(v))
        except FlowgradError as err:
            # located in the block's body, which every call shares: say which call fed it (and,
            # for a block called from a block, the calls around that one)
            if err.loc is not None and e.loc is not None and err.loc != e.loc:
                call = f"in the call {e.func}(...) at line {e.loc.line}, column {e.loc.col}"
                err.hint = f"{err.hint}; {call}" if err.hint else call
            raise
        return tuple(outs) if len(outs) > 1 else outs[0]

    def _reshape_target(self, e: S.Expr):
        """reshape's shape: a list whose entries may name symbolic dims of the inputs (N, T), kept
        as those dims (the op copies a dim at its input's position or infers the one -1 it needs)."""
        if not isinstance(e, S.ListExpr):
            return self.eval(e)
        out = []
        for item in e.items:
            if isinstance(item, S.Name) and item.id not in self.spec.dims and item.id not in self._defs \
                    and item.id not in self.env and self.symbolic_dim(item.id) is not None:
                out.append(self._symbolic_size(item.id))
            else:
                out.append(self.eval(item))
        return out

    def _symbolic_size(self, name: str):
        """The size a symbolic dim of the inputs has in this lowering: that of an input already read
        that declares it, such as N of the tokens: 1 where decoding feeds them as one window or one
        prompt [1, P] (reshape(q, [N, T, NH, D]) was refused there: 'cannot reshape [1, 16, 16] to
        [N, 16, 2, 8]'); the dim itself in training, or where no input read declares it. The tokens
        that decoding feeds (generate.input) come first: a source [N, T] beside target tokens [N, T]
        has the source's length, where the decoder's steps are the tokens'."""
        tokens = (self.spec.generate or {}).get("input")
        for n in sorted(self.spec.inputs, key=lambda n: n != tokens):
            decl, v = self.spec.inputs[n], self.inputs.get(n)
            if isinstance(v, Value) and name in decl.shape and v.rank == len(decl.shape):
                return v.shape[list(decl.shape).index(name)]
        return name

    def _eval_kwargs(self, e: S.Call) -> dict:
        kwargs = {}
        for k, v in e.kwargs.items():
            if isinstance(v, S.Name) and self._is_word(v.id):
                kwargs[k] = v.id  # act=relu, init=he_normal, merge=sum: words, not values
            elif k == "act" and isinstance(v, S.Call) and e.func in ("dense", "conv2d") \
                    and v.func in all_ops() and v.func not in self.spec.blocks:
                # act=gelu(approximate='tanh'): the op with its options, applied by the layer to its
                # output (it was evaluated as a call, 'gelu() is missing the argument(s) x')
                if v.args:  # act=hardtanh(0.0, 6.0) read 0.0 as x ('max_val must be above min_val, got
                    # min_val=6.0, max_val=1.0'), act=elu(0.5) said 'act must name an op, got <elu#5 float32[]>'
                    op = all_ops()[v.func]
                    names = [a for a in op.attrs if a not in getattr(op, "internal_attrs", ())]
                    opts = ", ".join(f"{n}={unparse(a)}" for n, a in zip(names, v.args)) \
                        if 0 < len(v.args) <= len(names) else "..."
                    raise SpecError(f"act={v.func}(...) applies {v.func} to this layer's output, and takes its "
                                    f"options by name, got {len(v.args)} positional", v.args[0].loc or v.loc,
                                    f"write act={v.func}({opts})" if names else f"write act={v.func}")
                kwargs[k] = v
            else:
                kwargs[k] = self.eval(v)
        return kwargs

    def _is_word(self, name: str) -> bool:
        """A bare keyword value that names nothing in the spec is a word (an op or option name)."""
        return not (name in self.env or name in self.known_names() or name in ("true", "false") or "." in name)

    def _check_keywords(self, e: S.Call):
        """Refuse a keyword that neither the layer shorthand nor the op of that name takes, at the keyword,
        before its value is evaluated (`dense(x, H, activation=relu)` is not an undefined name 'relu')."""
        from . import layers

        layer, op = layers.LAYERS.get(e.func), all_ops().get(e.func)
        if layer is None and op is None:
            return  # an unknown op is reported by get_op_at
        known = [*(layer.positional + layer.keywords if layer else ()), *(op.inputs + spec_attrs(op) if op else ())]
        for k in e.kwargs:
            if k not in known:
                usage = layer.usage if layer else signature(op)
                _refuse_given_weights(e)
                raise SpecError(f"{e.func}() has no argument {k!r}", e.kwarg_locs.get(k, e.loc),
                                did_you_mean(k, dict.fromkeys(known)) or f"usage: {usage}")

    def apply_op(self, op, e: S.Call, args: list, kwargs: dict):
        """Bind the arguments as Python would (compiler/binding.py): tensors first (op.inputs), then
        attributes in declared order; a variadic op's positional arguments are all tensors."""
        from .binding import Params, bind

        g = self.graph
        attr_names = tuple(spec_attrs(op))
        required = tuple(k for k in attr_names if op.attrs[k] is REQUIRED)
        if op.variadic:
            params = Params(f"{op.name}()", keyword_only=attr_names, required=required, usage=signature(op),
                            varargs=True)
        else:
            params = Params(f"{op.name}()", positional=tuple(op.inputs) + attr_names,
                            required=tuple(op.inputs) + required, usage=signature(op))
        values, arg_locs = bind(params, e, args, kwargs)
        if op.variadic:
            tensors = [values[str(i)] for i in range(len(args))]
        else:
            tensors = [values[n] for n in op.inputs]
        attrs = {k: values[k] for k in attr_names if k in values}
        for i, t in enumerate(tensors):
            if not isinstance(t, (Value, bool, int, float)):
                # shown as the spec writes it (a list of tensors printed the compiler's own values)
                name = str(i) if op.variadic else op.inputs[i]
                written = e.args[i] if i < len(e.args) else e.kwargs.get(name)
                hint = f"usage: {signature(op)}"
                if op.variadic and isinstance(t, list):
                    hint = (f"{op.name} takes its tensors one by one, not in a list: "
                            f"{op.name}(a, b, ...{', ' + spec_attrs(op)[0] + '=...' if spec_attrs(op) else ''})")
                raise SpecError(f"{op.name}() argument {i + 1} must be a tensor or a number, got "
                                f"{unparse(written) if written is not None else repr(t)}",
                                arg_locs.get(name, e.loc), hint)
        for k, v in attrs.items():
            if isinstance(v, Value):
                raise SpecError(f"{op.name}() argument {k!r} must be a constant, not a tensor", arg_locs.get(k, e.loc),
                                f"write {k} as a constant; usage: {signature(op)}")
            if isinstance(v, list):
                attrs[k] = tuple(v)
        for k in ("to", "dtype"):
            # as for float inputs and parameters (else a cast(mask, 'float32') in mixed
            # precision would silently widen the step or break its products)
            if attrs.get(k, op.attrs.get(k)) in SPEC_FLOAT_NAMES:
                attrs[k] = g.float_dtype
        # Python numbers take the dtype of the tensors they meet: a float tensor's, else an integer
        # one's, as in x + 1 (maximum(src_len, 1) over int32 lengths made an int64 1 and was refused)
        like = next((t for t in tensors if isinstance(t, Value) and is_float(t.dtype)), None) or \
            next((t for t in tensors if isinstance(t, Value) and t.dtype in INT_DTYPES), None)
        if like is None and _numbers_need_floats(op, attrs, tensors):
            # sqrt(D) of a dim, as Python's math.sqrt(4) and torch.sqrt of an integer: the number as a
            # float (it was 'sqrt: input must be a float tensor, got int64')
            tensors = [float(t) for t in tensors]
        names = [str(i) for i in range(len(tensors))] if op.variadic else list(op.inputs)
        lifted = []
        for name, t in zip(names, tensors):
            with at(arg_locs.get(name, e.loc)):  # (maximum(j, 3000000000): at the number)
                lifted.append(t if isinstance(t, Value) else g.lift(t, like=like))
        tensors = lifted
        try:
            return g.apply(op.name, *tensors, **attrs)
        except FlowgradError as err:
            # An op's error about one of its arguments (err.arg) points at that argument.
            if err.arg in arg_locs and err.loc == e.loc:
                err.loc = arg_locs[err.arg]
            err.hint = self._divided_attr_hint(op, e, attrs) or err.hint
            raise
        except _RULE_ERRORS as ex:
            # An argument of the wrong kind (cast(x, 'foo'), split(x, 'a'), concat(2)) that the op's rule choked on.
            if not attrs:
                kinds = ", ".join(str(t.type) for t in tensors) or "no tensors"
                raise SpecError(f"{op.name}() cannot take {kinds}", e.loc, f"usage: {signature(op)}") from ex
            what = ", ".join(f"{k}={v!r}" for k, v in attrs.items())
            raise SpecError(f"{op.name}() cannot use {what}", arg_locs.get(next(iter(attrs))) if len(attrs) == 1 else e.loc,
                            self._divided_attr_hint(op, e, attrs) or f"usage: {signature(op)}") from ex

    @staticmethod
    def _divided_attr_hint(op, e: S.Call, attrs: dict) -> str | None:
        """How to write a size an op refused that / made a float (reshape(x, [-1, D / 2, 2]),
        split(x, D / 2), one_hot(y, K / 2)): their hints gave the usage, or 'e.g. one_hot(y, 10)'."""
        positional = () if op.variadic else tuple(op.inputs) + tuple(spec_attrs(op))
        for k, v in attrs.items():
            if type(op.attrs.get(k)) is float:
                continue  # a rate or an epsilon: a float there is no size (dropout(x, rate=2/2) is refused otherwise)
            i = positional.index(k) if k in positional else len(e.args)
            written = e.kwargs.get(k) or (e.args[i] if i < len(e.args) else None)
            for item in (v if isinstance(v, tuple) else (v,)):
                if written is not None and (hint := _whole_float_hint(item, written)):
                    return hint
        return None


# Calls the lowering handles itself, before ops, layers and blocks.
_SPECIAL_FORMS = ("scan", "grad", "hvp", "jacobian", "bidirectional", "zeros", "ones")

# (usage, what it is) of the special forms besides bidirectional (a layer), for `flowgrad ops`.
SPECIAL_FORM_DOCS = {
    "scan": ("scan(block, over=x | [x, y], init=[h0, c0], axis=1, reverse=false, mask=m, truncate=K, length=T, "
             "unroll=false, stateful=false)",
             "The block applied along an axis with carried state; its gradient is a reverse-time loop."),
    "grad": ("grad(y, x)", "The gradient of the scalar y with respect to x: a graph, which can be differentiated again."),
    "hvp": ("hvp(y, x, v)", "The Hessian-vector product d/dx <dy/dx, v>, v held fixed."),
    "jacobian": ("jacobian(y, x)", "J [N, M, D] of per-example y [N, M] and x [N, D]: J[n, m, d] = dy[n, m] / dx[n, d]."),
    "zeros": ("zeros(N, H)", "Zeros of the model's float type, sized by dims (N: the batch)."),
    "ones": ("ones(N, H)", "Ones of the model's float type, sized by dims (N: the batch)."),
}


def _refuse_given_weights(e: S.Call) -> None:
    """A recurrent layer or cell given weights (W=, U=, b=, bu=), as dense(..., W=) takes them to share
    them: refused with the way to share a recurrent layer's weights (the layer's usage did not say)."""
    k = next((k for k in e.kwargs if k in ("W", "U", "b", "bu")), None)
    if k is None or e.func not in ("rnn", "lstm", "gru", "bidirectional", "rnn_cell", "lstm_cell", "gru_cell"):
        return
    if e.func.endswith("_cell"):
        hint = (f"{e.func}() makes its own weights in its block, and every use of the block shares them: scan (or "
                f"call) the same block wherever the cell's weights are to be shared")
    else:
        layer = "bidirectional(lstm, v, H)" if e.func == "bidirectional" else f"{e.func}(v, H)"
        hint = (f"{e.func}() makes its own weights: to run the same ones over two inputs, write it in a block "
                f"(blocks: {{enc: {{in: [v], graph: {{h: '{layer}'}}, out: [h]}}}}) and call the block on each, "
                f"enc(a) and enc(b), whose calls share its parameters (enc.h.W, ...)")
    raise SpecError(f"{e.func}() has no argument {k!r}", e.kwarg_locs.get(k, e.loc), hint)


# What an op's shape rule or a layer raises when handed an argument of a kind it does not expect.
_RULE_ERRORS = (TypeError, ValueError, AttributeError, IndexError, KeyError, ZeroDivisionError)


# Depth of nested entries from which the rest of a chain is evaluated iteratively (see _evaluate_dependencies).
_DEEP = 24


def call_site(e: S.Call) -> str:
    """Where a call is written (file:line:column: an override given with --set has its own), the
    key of what is kept per call written in the spec, not per evaluation."""
    return str(e.loc) if e.loc else f"@{id(e)}"


def blocks_called(e, blocks) -> set[str]:
    """The blocks an expression runs: called (`enc(x)`) or scanned (`scan(cell, ...)`), and the
    blocks those run in turn."""
    return set(blocks_reached(blocks_in(e, blocks), blocks))


def blocks_in(e, blocks) -> list[str]:
    """The blocks an expression uses: scan(block, ...) or a direct call block(...)."""
    out: list[str] = []

    def walk(x):
        if isinstance(x, S.Call):
            if x.func in blocks:
                out.append(x.func)
            if x.func == "scan" and x.args and isinstance(x.args[0], S.Name) and x.args[0].id in blocks:
                out.append(x.args[0].id)
        if isinstance(x, S.Expr):
            for v in vars(x).values():
                for c in (v if isinstance(v, list) else v.values() if isinstance(v, dict) else [v]):
                    if isinstance(c, S.Expr):
                        walk(c)

    walk(e)
    return list(dict.fromkeys(out))


def blocks_reached(names: list[str], blocks) -> list[str]:
    """The blocks `names` use, directly or through the blocks they call (a block calling a block)."""
    out = list(dict.fromkeys(names))
    for name in out:  # grows while walked
        for a in blocks[name].graph:
            out += [b for b in blocks_in(a.expr, blocks) if b not in out]
    return out


def names_in(e) -> list[str]:
    """The names an expression reads, in evaluation order (a scanned block or bidirectional's cell is not a value)."""
    out, stack = [], [e]
    while stack:
        x = stack.pop()
        if isinstance(x, S.Name):
            out.append(x.id)
            continue
        if isinstance(x, S.Call):
            args = x.args[1:] if x.func in ("scan", "bidirectional") else x.args
            kids = [*args, *x.kwargs.values()]
        elif isinstance(x, (S.BinOp, S.Compare)):
            kids = [x.left, x.right]
        elif isinstance(x, S.UnaryOp):
            kids = [x.operand]
        elif isinstance(x, S.Subscript):
            kids = [x.value, *x.index]
        elif isinstance(x, S.Slice):
            kids = [x.start, x.stop, x.step]
        elif isinstance(x, S.ListExpr):
            kids = list(x.items)
        else:
            kids = []
        stack.extend(reversed([k for k in kids if k is not None]))
    return out


def _kind(v) -> str:
    """A short description of an argument for messages: a tensor's type, else the value."""
    return str(v.type) if isinstance(v, Value) else repr(v)


def get_op_at(e: S.Call):
    from . import layers

    with at(e.func_loc or e.loc):
        ops = {name: op for name, op in all_ops().items() if not op.internal}
        if e.func not in ops:
            choices = list(ops) + list(layers.LAYERS)
            raise SpecError(f"unknown op {e.func!r}", e.func_loc or e.loc,
                            op_hint(e.func, choices) or "run 'flowgrad ops' to list the ops")
        return ops[e.func]


def spec_attrs(op) -> tuple:
    """The attributes a spec may give an op, in declared order."""
    return tuple(k for k in op.attrs if k not in op.internal_attrs)


def signature(op) -> str:
    parts = ["*" + op.inputs[0] + "s" if op.variadic else n for n in ([op.inputs[0]] if op.variadic else op.inputs)]
    for k in spec_attrs(op):
        d = op.attrs[k]
        parts.append(k if d is REQUIRED else f"{k}={d!r}")
    return f"{op.name}({', '.join(parts)})"
