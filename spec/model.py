"""The parsed spec: what spec/ hands to compiler/.

Every node keeps the Loc of the text it came from so that compiler errors
point at the spec. Expressions are a small tree (Expr subclasses) built from
Python's `ast` by spec/expr.py; nothing here is ever evaluated as Python.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

from .errors import FLAGS, ArgNames, Loc


# ---------------------------------------------------------------- expressions
@dataclass
class Expr:
    loc: Loc


@dataclass
class Name(Expr):
    id: str  # may be dotted ("h.W"): only valid where it names a parameter


@dataclass
class Const(Expr):
    value: Union[int, float, bool, str, None]


@dataclass
class BinOp(Expr):
    op: str  # one of + - * / @ **
    left: Expr
    right: Expr
    op_loc: Loc | None = field(default=None, compare=False)  # the operator itself, for errors such as shape mismatches


@dataclass
class UnaryOp(Expr):
    op: str  # one of - + not
    operand: Expr


@dataclass
class Compare(Expr):
    op: str  # one of == != < <= > >=
    left: Expr
    right: Expr
    op_loc: Loc | None = field(default=None, compare=False)


@dataclass
class Call(Expr):
    func: str
    args: list[Expr]
    kwargs: dict[str, Expr]
    func_loc: Loc | None = None
    kwarg_locs: dict[str, Loc] = field(default_factory=dict)


@dataclass
class Slice(Expr):
    start: Expr | None
    stop: Expr | None
    step: Expr | None


@dataclass
class Subscript(Expr):
    value: Expr
    # each a Slice, an Expr (integer index), Const(None) for a new axis or
    # Const(Ellipsis) for all the axes in between (x[..., -1])
    index: list[Expr]


@dataclass
class ListExpr(Expr):
    items: list[Expr]


# ---------------------------------------------------------------- declarations
# A shape dimension: a concrete int, or the name of a symbolic dim (e.g. "N")
# that stays unknown until run time.
ShapeDim = Union[int, str]


@dataclass
class InitSpec:
    kind: str  # zeros, constant, normal, uniform, glorot_uniform, ...
    args: dict[str, Any]
    loc: Loc


@dataclass
class InputDecl:
    name: str
    shape: list[ShapeDim]
    dtype: str  # float32 (default; means "the compile float type"), int64, bool, ...
    loc: Loc
    doc: str = ""


@dataclass
class ParamDecl:
    name: str
    shape: list[int]
    init: InitSpec
    loc: Loc
    trainable: bool = True
    dtype: str = "float32"
    seed: int | None = None  # of this parameter's initializer; None: derived from train.seed
    doc: str = ""


@dataclass
class Assign:
    """`targets: expr` — one graph entry (several targets for tuple unpacking)."""

    targets: list[str]
    expr: Expr
    loc: Loc  # the key's position
    target_locs: list[Loc] = field(default_factory=list)


@dataclass
class Block:
    name: str
    inputs: list[str]
    params: dict[str, ParamDecl]
    graph: list[Assign]
    outputs: list[str]
    loc: Loc
    output_locs: list[Loc] = field(default_factory=list)  # where each name of `out` is written

    def output_loc(self, i: int) -> Loc:
        return self.output_locs[i] if i < len(self.output_locs) else self.loc


DEFAULT_BATCH_SIZE = 32  # spec/schema.json's default for train.batch_size


@dataclass
class Spec:
    path: str
    version: int
    name: str
    doc: str
    dims: dict[str, int]
    inputs: dict[str, InputDecl]
    params: dict[str, ParamDecl]
    graph: list[Assign]
    outputs: list[Assign]
    loss: Assign | None
    metrics: list[Assign]
    blocks: dict[str, Block]
    train: dict[str, Any]  # validated by the schema; plain Python values
    raw: Any  # the located YAML tree (spec.loader.LocMap), for locating anything
    dim_locs: dict[str, Loc] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)  # autoregressive sampling for export
    overrides: tuple[str, ...] = ()  # the --set overrides applied to the file at `path`
    override_names: ArgNames = FLAGS  # how the caller gave them: --set flags, or the API's overrides=
    # a spec read from a file: its absolute path as it was read (`path` is as given, for messages;
    # a script may change the working directory between loading a spec and training it, and the
    # relative data paths it names are read beside the file, wherever the script is by then)
    file: str | None = None
    # and its text as it was read: a run's spec.yaml is the spec that trained, not the file as a
    # script may have rewritten it since (the next configuration of a sweep, say)
    text: str | None = None

    @property
    def batch_size(self) -> int:
        """Examples per optimizer step: train.batch_size, or the schema's default."""
        return int((self.train or {}).get("batch_size") or DEFAULT_BATCH_SIZE)

    def with_batch_size(self, batch_size: int | None) -> "Spec":
        """This spec training with another batch size (a --batch-size override), or itself."""
        if not batch_size or batch_size == self.batch_size:
            return self
        return dataclasses.replace(self, train={**(self.train or {}), "batch_size": int(batch_size)})

    def locate(self, *path) -> Loc:
        """Loc of the value at `path` in the YAML tree (e.g. "train", "optimizer")."""
        from .loader import locate

        return locate(self.raw, path, self.path)
