"""Seeing the model: pictures (Graphviz DOT) and counts (parameters, FLOPs) of a spec.

Three pictures, all built from the compiler's own lowering and autodiff:

* `spec_dot`: the flow graph as written: one box per spec node (input,
  parameter, graph entry, loss, metric, output) with its expression, inferred
  shape and `line:col`; edges follow the names each expression reads.
  A block's parameters (`<block>.<name>`, declared in the block or made by
  its layer calls) are shared by its uses: they feed every entry that calls
  or scans the block, as do the outer values the block's graph reads.
* `spec_dot(..., backward=True)`: plus one gradient box per spec value on a
  path from a parameter the objective trains to the objective's loss (the
  first of `train.objectives` unless one is named; a graph entry that is an
  objective's loss is drawn as a loss). The boxes and their edges come
  from `compiler.autodiff.grad`: the cotangent of every spec value is asked
  for, and an edge runs from d/da to d/db when the IR that computes d/db reads
  d/da (through gradient ops only).
* `ir_dot`: the primitive ops of the optimized training step (what gets
  emitted), coloured forward / gradient / optimizer, clustered by the spec
  entry they came from.

`summary` counts parameters and FLOPs from the IR (see `node_flops`).
"""
from __future__ import annotations

import html
import os
import shutil
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from spec import model as S
from spec.expr import names_in
from spec.errors import FLAGS, FlowgradError, Loc, SpecError
from spec.expr import unparse

from .autodiff import grad
from .ir import Graph, Node, Value, at, body_nodes, dim_value, fmt_shape, is_float, producers_of
from .lower import Lowering, ParamInfo, blocks_in, blocks_reached

# ------------------------------------------------------------------ style
FONT = "Helvetica"
MONO = "Courier"
# kind -> (fill, border, shape, style)
STYLE = {
    "input": ("#dbeafe", "#2563eb", "box", "filled"),
    "param": ("#fef3c7", "#b45309", "box", "filled"),
    "buffer": ("#f3f4f6", "#6b7280", "box", "filled,dashed"),
    "node": ("#ffffff", "#374151", "box", "rounded,filled"),
    "block": ("#ffffff", "#374151", "box3d", "filled"),
    "loss": ("#fee2e2", "#dc2626", "box", "rounded,filled,bold"),
    "metric": ("#dcfce7", "#15803d", "box", "rounded,filled"),
    "output": ("#ede9fe", "#6d28d9", "box", "rounded,filled"),
    "grad": ("#ffedd5", "#ea580c", "box", "rounded,filled"),
}
EDGE = "#6b7280"
GRAD_EDGE = "#ea580c"
IR_FILL = {"forward": ("#ffffff", "#374151"), "grad": ("#ffedd5", "#ea580c"), "update": ("#dcfce7", "#15803d")}
MAX_EXPR = 46
PARAM_ROW = 3


def _e(text: Any) -> str:
    return html.escape(str(text), quote=False)


def shorten(text: str, limit: int = MAX_EXPR) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def loc_text(loc: Loc | None) -> str:
    return f"{loc.line}:{loc.col}" if loc else ""


def _shape_str(shape) -> str:
    return fmt_shape(shape) if len(shape) else "scalar"


def shape_text(v) -> str:
    if isinstance(v, Value):
        return _shape_str(v.shape)
    if isinstance(v, tuple):
        return ", ".join(shape_text(x) for x in v)
    return "const"


# ------------------------------------------------------------------ lowering with owners
class TrackingLowering(Lowering):
    """A Lowering that remembers which spec node each IR node and each
    layer-created parameter came from (the innermost entry being evaluated)."""

    def __init__(self, spec: S.Spec, mode: str = "train", float_dtype: str | None = None):
        self.node_owner: dict[int, str] = {}
        self.param_owner: dict[str, str | None] = {}
        self.param_reads: dict[str, list[str]] = {}  # owner key -> parameters it looked up by name
        self._owners: list[str] = []
        super().__init__(spec, mode, float_dtype)

    def add_param(self, name, *args, **kwargs):
        v = super().add_param(name, *args, **kwargs)
        self.param_owner[name] = self._owners[-1] if self._owners else None
        return v

    def lookup(self, name, loc):
        """Also notes the parameters each entry reads by name, among them a block's parameters
        (`D.h1.W`), which every use of the block looks up here, the first use making them."""
        v = super().lookup(name, loc)
        if self._owners and name in self.params and v is self.params[name].value:
            reads = self.param_reads.setdefault(self._owners[-1], [])
            if name not in reads:
                reads.append(name)
        return v

    def evaluate_assign(self, a: S.Assign):
        return self.owned(entry_key(a), lambda: super(TrackingLowering, self).evaluate_assign(a))

    def owned(self, key: str, fn: Callable):
        start = len(self.graph.nodes)
        self._owners.append(key)
        try:
            return fn()
        finally:
            self._owners.pop()
            for n in self.graph.nodes[start:]:
                self.node_owner.setdefault(id(n), key)


def entry_key(a: S.Assign) -> str:
    return "node/" + ",".join(a.targets)


# ------------------------------------------------------------------ the spec as nodes
@dataclass
class SpecNode:
    key: str  # unique: input/x, param/W1, node/h1, loss/loss, metric/accuracy, output/probs
    kind: str  # input | param | buffer | node | loss | metric | output
    name: str
    loc: Loc | None
    expr: S.Expr | None = None
    value: Any = None  # a Value, a tuple of them (several targets), or a Python constant
    reads: list[str] = field(default_factory=list)  # keys of the spec nodes it reads
    param: ParamInfo | None = None
    created_by: str | None = None  # layer parameters: the key of the entry that made them
    block: str | None = None  # a block's parameters (`<block>.<name>`): the block, shared by its uses
    blocks: list[str] = field(default_factory=list)  # blocks its expression calls
    shape_decl: tuple = ()  # inputs: the declared shape
    subgraphs: list = field(default_factory=list)  # its subgraph ops (scan), drawn as one box unless expanded

    @property
    def values(self) -> list[Value]:
        vs = self.value if isinstance(self.value, tuple) else (self.value,)
        return [v for v in vs if isinstance(v, Value)]

    @property
    def op(self) -> str:
        if self.kind in ("input", "param", "buffer"):
            return self.kind
        return op_word(self.expr)

    @property
    def expr_text(self) -> str:
        return unparse(self.expr) if self.expr is not None else ""


_BINOP_WORDS = {"@": "matmul", "+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow"}


def op_word(e: S.Expr | None) -> str:
    if isinstance(e, S.Call):
        return e.func
    if isinstance(e, S.BinOp):
        return _BINOP_WORDS.get(e.op, e.op)
    if isinstance(e, S.Compare):
        return e.op
    if isinstance(e, S.UnaryOp):
        return "neg" if e.op == "-" else e.op
    if isinstance(e, S.Name):
        return "alias"
    if isinstance(e, S.Subscript):
        return "index"
    if isinstance(e, S.Const):
        return "const"
    return type(e).__name__.lower() if e is not None else ""


def block_outer_names(block) -> list[str]:
    """Names a block's graph reads from outside it: the enclosing graph's values (a scan step reading
    `enc`), parameters read by name, dims. Its inputs, own parameters and entries (and the dotted
    names of the parameters its entries make) are local."""
    local = {*block.inputs, *block.params, *(t for a in block.graph for t in a.targets)}
    return [x for a in block.graph for x in names_in(a.expr) if x not in local and x.split(".")[0] not in local]


class SpecGraph:
    """A spec lowered once (training mode), seen as spec nodes with their values and reads."""

    def __init__(self, spec: S.Spec, dtype: str | None = None):
        self.spec = spec
        dtype = dtype or spec.train.get("dtype", "float32")
        self.low = low = TrackingLowering(spec, mode="train", float_dtype=dtype)
        self.nodes: dict[str, SpecNode] = {}
        low.evaluate_all()
        self.loss_value = None
        if spec.loss is not None:
            from .training import _scalar_loss

            self.loss_value = low.owned("loss/loss", lambda: _scalar_loss(low, spec.loss))
        self.sink_values: dict[str, Any] = {}
        for kind, entries in (("metric", spec.metrics), ("output", spec.outputs)):
            for a in entries:
                key = f"{kind}/{a.targets[0]}"
                self.sink_values[key] = low.owned(key, lambda a=a: low.eval(a.expr))

        # name -> key, for the names expressions read
        self.key_of: dict[str, str] = {}
        for name, decl in spec.inputs.items():
            self._add(SpecNode(f"input/{name}", "input", name, decl.loc, value=low.inputs.get(name),
                               shape_decl=tuple(decl.shape)))
        for name, p in low.params.items():
            kind = "buffer" if p.kind == "buffer" else "param"
            owner = low.param_owner.get(name)
            head = name.split(".", 1)[0]
            self._add(SpecNode(f"param/{name}", kind, name, p.loc, value=p.value, param=p,
                               created_by=owner if owner != f"param/{name}" else None,
                               block=head if "." in name and head in spec.blocks and name not in spec.params else None))
        for a in spec.graph:
            vals = tuple(low.env.get(t) for t in a.targets)
            self._add(SpecNode(entry_key(a), "node", ", ".join(a.targets), a.loc, a.expr,
                               vals[0] if len(vals) == 1 else vals,
                               blocks=blocks_in(a.expr, spec.blocks)), a.targets)
        if spec.loss is not None:
            self._add(SpecNode("loss/loss", "loss", "loss", spec.loss.loc, spec.loss.expr, self.loss_value))
        for kind, entries in (("metric", spec.metrics), ("output", spec.outputs)):
            for a in entries:
                key = f"{kind}/{a.targets[0]}"
                self._add(SpecNode(key, kind, a.targets[0], a.loc, a.expr, self.sink_values[key]))
        for node in low.graph.nodes:
            owner = low.node_owner.get(id(node))
            if owner in self.nodes and body_nodes(node) is not None:
                self.nodes[owner].subgraphs.append(node)
        for n in self.nodes.values():
            names = names_in(n.expr)
            for bname in blocks_reached(n.blocks, spec.blocks):  # what its blocks read from outside them
                names += block_outer_names(spec.blocks[bname])
            reads = [self.key_of[x] for x in names if x in self.key_of]
            reads += [f"param/{p}" for p, o in low.param_owner.items() if o == n.key]  # made by its layer calls
            reads += [f"param/{p}" for p in low.param_reads.get(n.key, [])]  # its blocks' (every use of a block)
            n.reads = [r for r in dict.fromkeys(reads) if r != n.key]

    def _add(self, n: SpecNode, names: list[str] | None = None):
        self.nodes[n.key] = n
        if n.kind in ("input", "param", "buffer"):
            self.key_of[n.name] = n.key
        for t in names or []:
            self.key_of[t] = n.key

    def of_kind(self, *kinds) -> list[SpecNode]:
        return [n for n in self.nodes.values() if n.kind in kinds]


# ------------------------------------------------------------------ backward (spec granularity)
@dataclass
class GradNode:
    key: str  # the spec node's key it is the gradient of
    values: list[Value]


def pick_objective(spec: S.Spec, name: str | None):
    from .training import objectives_of

    objs = objectives_of(spec)
    if not objs:
        raise SpecError("the spec has no loss, so it has no gradients or training step", None,
                        "add a 'loss:' (or train.objectives) to the spec")
    if name is None:
        return objs[0]
    for o in objs:
        if o.name == name:
            return o
    from spec.errors import did_you_mean

    raise SpecError(f"unknown objective {name!r}", None,
                    did_you_mean(name, [o.name for o in objs]) or f"objectives: {', '.join(o.name for o in objs)}")


def _diff_reach(nodes: list[Node], start: set[int]) -> set[int]:
    """Ids of values that depend on `start` through differentiable ops (as autodiff sees paths)."""
    depends = set(start)
    for node in nodes:
        if node.op.nondiff:
            continue
        if any(v.id in depends for v in node.inputs):
            depends.update(o.id for o in node.outputs)
    return depends


def backward_nodes(sg: SpecGraph, objective=None) -> tuple[str, dict[str, GradNode], list[tuple[str, str]]]:
    """(loss key, gradient boxes by spec key, edges (from key, to key)) of an objective.

    The cotangent of every spec value downstream of a trained parameter is
    computed by `compiler.autodiff.grad` in the spec's own graph; a box exists
    where it is not None, and d/da -> d/db where the gradient ops that compute
    d/db read d/da."""
    from .training import _scalar_loss, trained_names

    obj = objective or pick_objective(sg.spec, None)
    low, g = sg.low, sg.low.graph
    if obj.loss is sg.spec.loss:
        loss_key, loss = "loss/loss", sg.loss_value
    else:
        loss_key = sg.key_of[obj.loss.targets[0]]
        loss = _scalar_loss(low, obj.loss)
    trained = trained_names(low.params, obj)
    forward = producers_of([loss])
    reach = _diff_reach(forward, {low.params[n].value.id for n in trained})
    wrt_keys, wrt_vals = [], []
    for n in trained:
        wrt_keys.append(f"param/{n}")
        wrt_vals.append(low.params[n].value)
    for node in sg.of_kind("node", "loss"):
        if node.key == loss_key or node.kind == "node":
            for v in node.values:
                if v.id in reach and is_float(v.dtype):
                    wrt_keys.append(node.key)
                    wrt_vals.append(v)
    if loss_key not in wrt_keys and isinstance(loss, Value):
        wrt_keys.append(loss_key)
        wrt_vals.append(loss)
    start = len(g.nodes)
    cots = grad([loss], wrt_vals)
    grad_ids = {id(n) for n in g.nodes[start:]}
    boxes: dict[str, GradNode] = {}
    cot_keys: dict[int, list[str]] = {}
    for k, c in zip(wrt_keys, cots):
        if c is None:
            continue
        boxes.setdefault(k, GradNode(k, [])).values.append(c)
        cot_keys.setdefault(c.id, []).append(k)
    # Walk each gradient back through gradient ops to the gradients it is computed from.
    order = [loss_key] + [k for k in reversed(list(sg.nodes)) if k in boxes and k != loss_key]
    edges: list[tuple[str, str]] = []
    for k in order:
        if k not in boxes:
            continue
        stack = list(boxes[k].values)
        seen: set[int] = set()
        while stack:
            v = stack.pop()
            if v.id in seen:
                continue
            seen.add(v.id)
            if v.id in cot_keys and all(v is not b for b in boxes[k].values):
                for src in cot_keys[v.id]:
                    if src != k and (src, k) not in edges:
                        edges.append((src, k))
                continue
            p = v.producer
            if p is None or id(p) not in grad_ids:
                continue
            stack.extend(p.inputs)
    return loss_key, boxes, edges


# ------------------------------------------------------------------ DOT: the spec view
def _dot(title: str, rankdir: str = "TB"):
    import graphviz

    d = graphviz.Digraph("flowgrad", engine="dot")
    d.attr("graph", rankdir=rankdir, fontname=FONT, fontsize="16", labelloc="t", labeljust="l",
           label=title, nodesep="0.3", ranksep="0.45", bgcolor="white", pad="0.3", newrank="true")
    d.attr("node", fontname=FONT, fontsize="11", margin="0.14,0.06", penwidth="1.2")
    d.attr("edge", color=EDGE, arrowsize="0.7", penwidth="1.1")
    return d


def _spec_label(n: SpecNode) -> str:
    loc = f'<FONT POINT-SIZE="9" COLOR="#6b7280">{_e(loc_text(n.loc))}</FONT>'
    if n.kind in ("input", "param", "buffer"):
        shape = fmt_shape(n.param.shape) if n.param else fmt_shape(n.shape_decl)
        extra = ""
        if n.param is not None:
            extra = f"{n.param.init_kind}" + ("" if n.param.trainable or n.kind == "buffer" else ", frozen")
        elif n.kind == "input" and n.value is not None and n.value.dtype != "float32":
            extra = n.value.dtype
        second = " · ".join(x for x in (_e(extra), loc) if x)
        return (f'<<B>{_e(n.name)}</B>  <FONT FACE="{MONO}">{_e(shape)}</FONT>'
                f'<BR/><FONT POINT-SIZE="9">{second}</FONT>>')
    expr = shorten(n.expr_text)
    shape = shape_text(n.value)
    block = ""
    if n.blocks or n.subgraphs:
        ops = [x.op.name for x in n.subgraphs]
        what = ", ".join([f"block {b}" for b in n.blocks] or
                         [f"{ops.count(o)} {o}s" if ops.count(o) > 1 else o for o in dict.fromkeys(ops)])
        steps = sum(len([b for b in (body_nodes(x) or []) if not is_constant(b)]) for x in n.subgraphs)
        block = f'<FONT POINT-SIZE="9" COLOR="#6b7280">  {_e(what)}' + (f" · {steps} ops per step" if steps else "") + "</FONT>"
    return (f'<<B>{_e(n.name)}</B> = <FONT FACE="{MONO}">{_e(expr)}</FONT>'
            f'<BR/><FONT FACE="{MONO}"><B>{_e(shape)}</B></FONT>  {loc}{block}>')


def _node_attrs(kind: str, cls: str | None = None) -> dict:
    fill, color, shape, style = STYLE[kind]
    return dict(shape=shape, style=style, fillcolor=fill, color=color, **{"class": cls or kind})


def dot_id(key: str) -> str:
    return key.replace(":", "_")


def spec_dot(sg: SpecGraph, backward: bool = False, objective: str | None = None, expand: bool = False):
    """The flow graph as the user wrote it (a graphviz.Digraph); with backward, the gradient boxes too."""
    spec = sg.spec
    title = f"{spec.name}: flow graph" + (" and its gradients" if backward else "")
    grads: dict[str, GradNode] = {}
    gedges: list[tuple[str, str]] = []
    loss_key = None
    # train.objectives may name graph entries as their losses: drawn as losses (their class stays node)
    objs = (spec.train or {}).get("objectives") or {}
    loss_entries = {sg.key_of[c["loss"]] for c in objs.values() if isinstance(c, dict)
                    and isinstance(c.get("loss"), str) and sg.key_of.get(c["loss"], "").startswith("node/")}
    if backward:
        from .training import objectives_of

        obj = pick_objective(spec, objective)
        if objective or len(objectives_of(spec)) > 1:
            title += f" (objective {obj.name})"
        loss_key, grads, gedges = backward_nodes(sg, obj)
    kinds = [("input", "input"), ("param", "parameter"), ("node", "graph entry"), ("loss", "loss"),
             ("metric", "metric"), ("output", "output")] + ([("grad", "gradient")] if backward else [])
    legend = "  ".join(f'<FONT COLOR="{STYLE[k][1]}">■</FONT> {w}' for k, w in kinds)
    d = _dot(f'<<B>{_e(title)}</B>  <FONT POINT-SIZE="11" COLOR="#6b7280">{_e(spec.path)}</FONT>'
             f'<BR ALIGN="LEFT"/><FONT POINT-SIZE="10" COLOR="#374151">{legend}</FONT><BR ALIGN="LEFT"/>>')

    order = list(sg.nodes.values())
    if backward:  # the loss last, next to its gradient on the right
        order.sort(key=lambda n: n.key == loss_key)
    # The parameters a layer makes, when it makes many, sit together in a box of their own; a
    # block's parameters (shared by all its uses) in the block's box.
    made: dict[str, list[SpecNode]] = {}
    for n in order:
        group = f"block/{n.block}" if n.block else n.created_by
        if group:
            made.setdefault(group, []).append(n)
    grouped = {p.key: owner for owner, ps in made.items() if len(ps) > PARAM_ROW for p in ps}

    def group_label(owner: str, grads: bool = False) -> str:
        if owner.startswith("block/"):
            what = f"block {owner.split('/', 1)[1]}"
            return f"gradients of the parameters of {what}" if grads else f"parameters of {what}"
        return f"gradients of the parameters {sg.nodes[owner].name} made" if grads else f"made by {sg.nodes[owner].name}"
    clusters: dict[str, Any] = {}
    for n in order:
        kind = ("loss" if n.key in loss_entries else "block" if n.kind == "node" and (n.blocks or n.subgraphs)
                else n.kind)
        attrs = _node_attrs(kind, n.kind)
        if n.kind in ("param", "buffer"):
            attrs["fontsize"] = "10"
        target = d
        owner = grouped.get(n.key)
        if owner is not None:
            if owner not in clusters:
                ctx = d.subgraph(name=_cluster_id("params/" + owner))
                clusters[owner] = (ctx, ctx.__enter__())
                clusters[owner][1].attr(label=group_label(owner), style="rounded,dashed",
                                        color=STYLE["param"][1], fontcolor=STYLE["param"][1], fontsize="10",
                                        labeljust="l")
            target = clusters[owner][1]
        target.node(dot_id(n.key), _spec_label(n), tooltip=f"{n.name}: {n.expr_text or n.kind}", **attrs)
    for ctx, _ in clusters.values():
        ctx.__exit__(None, None, None)
    for n in order:
        for r in n.reads:
            src = sg.nodes[r]
            if src.kind in ("param", "buffer"):
                d.edge(dot_id(r), dot_id(n.key), color=STYLE["param"][1], penwidth="0.9", weight="1")
            else:  # the data path: kept straight
                d.edge(dot_id(r), dot_id(n.key), weight="6")

    # An entry's many parameters (a layer's weights) stack in rows of PARAM_ROW, not one wide row.
    stacked = set()  # (a block's weights, read by each of its calls, stack once)
    for n in order:
        ps = [r for r in n.reads if sg.nodes[r].kind in ("param", "buffer")]
        for a, b in zip(ps, ps[PARAM_ROW:]):
            if (a, b) not in stacked:
                stacked.add((a, b))
                d.edge(dot_id(a), dot_id(b), style="invis")
    if backward:
        # metrics and outputs one level below the loss, so the loss and its gradient sit side by side
        for n in sg.of_kind("metric", "output"):
            if loss_key in sg.nodes and sg.nodes[loss_key].kind == "loss":
                d.edge(dot_id(loss_key), dot_id(n.key), style="invis", weight="0")
        gclusters: dict[str, Any] = {}
        for k, gn in grads.items():
            node = sg.nodes[k]
            shape = ", ".join(_shape_str(v.shape) for v in gn.values)
            what = f"∂{_loss_name(sg, loss_key)}/∂{node.name}" + (" = 1" if k == loss_key else "")
            label = f'<<B>{_e(what)}</B>  <FONT FACE="{MONO}">{_e(shape)}</FONT>>'
            gid = dot_id("grad/" + k)
            owner = grouped.get(k)
            if owner is not None and owner not in gclusters:
                ctx = d.subgraph(name=_cluster_id("gparams/" + owner))
                gclusters[owner] = (ctx, ctx.__enter__())
                gclusters[owner][1].attr(label=group_label(owner, grads=True), style="rounded,dashed",
                                         color=GRAD_EDGE, fontcolor=GRAD_EDGE, fontsize="10", labeljust="l")
            target = gclusters[owner][1] if owner is not None else d
            target.node(gid, label, tooltip=f"gradient of the loss with respect to {node.name}", **_node_attrs("grad"))
            # on the same level as the value it is the gradient of, to its right
            with d.subgraph() as s:
                s.attr(rank="same")
                s.node(dot_id(k))
                s.node(gid)
            d.edge(dot_id(k), gid, style="invis", weight="4")
        for ctx, _ in gclusters.values():
            ctx.__exit__(None, None, None)
        for a, b in gedges:
            # Drawn as b -> a pointing back, so the gradients are laid out level with the values
            # they belong to while the arrows run from the loss back to the parameters.
            w = "1" if sg.nodes[b].kind in ("param", "buffer") else "6"
            d.edge(dot_id("grad/" + b), dot_id("grad/" + a), dir="back", color=GRAD_EDGE, penwidth="1.4", weight=w)
    if expand:
        _expand_subgraphs(d, sg)
    return d


def _loss_name(sg: SpecGraph, key: str) -> str:
    return sg.nodes[key].name if key in sg.nodes else "loss"


def _expand_subgraphs(d, sg: SpecGraph):
    """--expand: each block an entry runs drawn as a cluster of the block's own entries, and each
    scan that a layer (lstm, gru, ...) makes as a cluster of its step's ops, beside the entry."""
    for n in sg.nodes.values():
        for name in n.blocks:
            b = sg.spec.blocks[name]
            prefix = f"block/{n.key}/{name}"
            with d.subgraph(name=_cluster_id(prefix)) as c:
                c.attr(label=f"block {name}({', '.join(b.inputs)}) -> {', '.join(b.outputs)}", style="rounded,dashed",
                       color="#9ca3af", fontcolor="#4b5563", fontname=FONT, fontsize="11", labeljust="l")
                local = {t: f"{prefix}/{t}" for t in [*b.inputs, *b.params, *(t for a in b.graph for t in a.targets)]}
                for t in b.inputs:
                    c.node(dot_id(local[t]), f"<<B>{_e(t)}</B>>", **_node_attrs("input", "body"))
                for t, p in b.params.items():
                    c.node(dot_id(local[t]), f"<<B>{_e(t)}</B>  {_e(fmt_shape(p.shape))}>",
                           **_node_attrs("param", "body"), fontsize="10")
                for a in b.graph:
                    key = local[a.targets[0]]
                    for t in a.targets:
                        local[t] = key
                    c.node(dot_id(key), f'<<B>{_e(", ".join(a.targets))}</B> = <FONT FACE="{MONO}">'
                                        f'{_e(shorten(unparse(a.expr)))}</FONT>  <FONT POINT-SIZE="9" COLOR="#6b7280">'
                                        f'{_e(loc_text(a.loc))}</FONT>>', **_node_attrs("node", "body"))
                    for src in dict.fromkeys(local[r] for r in names_in(a.expr) if r in local):
                        if src != key:
                            c.edge(dot_id(src), dot_id(key))
                last = [local[o] for o in b.outputs if o in local]
            for o in last:
                d.edge(dot_id(o), dot_id(n.key), style="dashed", color="#9ca3af")
        if n.blocks:
            continue
        drawn: set[str] = set()
        for k, node in enumerate(n.subgraphs):
            prefix = f"body/{n.key}/{k}"
            body = body_nodes(node) or []
            with d.subgraph(name=_cluster_id(prefix)) as c:
                # which way each scan runs, where it runs backward or the entry has several (a
                # bidirectional layer's two were both "enc: scan step (14 ops)")
                way = ("backward" if node.attrs.get("reverse") else "forward") if (
                    len(n.subgraphs) > 1 or node.attrs.get("reverse")) else ""
                c.attr(label=f"{n.name}: {node.op.name} step{', ' + way if way else ''} ({len(body)} ops)",
                       style="rounded,dashed",
                       color="#9ca3af", fontcolor="#4b5563", fontname=FONT, fontsize="11", labeljust="l")
                ids = _draw_step_body(c, prefix, body, sg.low.params, drawn, fontsize="10", margin="0.08,0.03")
            for b in _step_ends(node, body):  # beside the entry, not above it: the link does not rank
                d.edge(ids[id(b)], dot_id(n.key), style="dashed", color="#9ca3af", constraint="false")


def _draw_step_body(c, prefix: str, body: list[Node], params, drawn: set[str], **attrs) -> dict[int, str]:
    """The ops of a scan's step into cluster `c` (constants are written into the ops that read
    them), with the edges between them and from the step's inputs (state, sequence slices,
    weights; those named in `params` drawn as parameters); {id(op): its dot id}. Ids count the
    ops, so the same spec gives the same .dot in every process."""
    ids = {id(b): dot_id(f"{prefix}/{i}") for i, b in enumerate(body)}
    for b in body:
        if is_constant(b):
            continue
        c.node(ids[id(b)], _ir_label(b), shape="box", style="rounded", **attrs, **{"class": "body"})
        times = [v.id for v in b.inputs]
        for v in {v.id: v for v in b.inputs}.values():  # a value read twice (mul(h, h)): one edge, ×2
            twice = {"label": f"×{times.count(v.id)}", "fontsize": "8"} if times.count(v.id) > 1 else {}
            if v.producer is None and v.name:  # the step's inputs: state, sequence slices, weights
                vid = dot_id(f"{prefix}/in/{v.name}")
                if vid not in drawn:
                    drawn.add(vid)
                    kind = "param" if v.name in params else "input"
                    c.node(vid, f'<<B>{_e(v.name)}</B> <FONT POINT-SIZE="8">{_e(_shape_str(v.shape))}</FONT>>',
                           shape="box", style="filled", fillcolor=STYLE[kind][0], color=STYLE[kind][1],
                           fontsize="9", height="0.22", **{"class": "body"})
                c.edge(vid, ids[id(b)], arrowsize="0.5", color="#9ca3af", **twice)
            elif v.producer is not None and id(v.producer) in ids and not is_constant(v.producer):
                c.edge(ids[id(v.producer)], ids[id(b)], arrowsize="0.5", **twice)
    return ids


# ------------------------------------------------------------------ the optimized training step
@dataclass
class IRStep:
    """The optimized training graph of one objective, with where each node came from."""

    nodes: list[Node]
    outputs: list[tuple[str, Value]]
    inputs: dict[str, Any]  # name -> GraphInput
    phase: dict[int, str]  # id(node) -> forward | grad | update
    cluster: dict[int, str]  # id(node) -> cluster key
    cluster_label: dict[str, str]
    objective: str
    loc_of: dict = field(default_factory=dict)  # id(node) -> Loc, for nodes the rewrites made


class _VjpAt:
    """Stands in for a forward node's op while autodiff runs: its gradient ops are
    built at the node's spec location and remembered as coming from it."""

    def __init__(self, op, node: Node, made: dict):
        self._op, self._node, self._made = op, node, made

    def __getattr__(self, name):
        return getattr(self._op, name)

    def vjp(self, node, gouts):
        g = node.outputs[0].graph
        start = len(g.nodes)
        with at(node.loc):
            out = self._op.vjp(node, gouts)
        for n in g.nodes[start:]:
            self._made.setdefault(id(n), node)
        return out


def training_step(spec: S.Spec, objective: str | None = None, dtype: str | None = None, optimize_graph: bool = True) -> IRStep:
    """Build the training step exactly as `compiler.training.build_train` does, keeping the IR."""
    from .rewrites import emission_rewrites, optimize, rewrite_forward
    from .training import _add_state_inputs, _apply_updates, _gradients, fused_update, trained_names

    obj = pick_objective(spec, objective)
    dtype = dtype or spec.train.get("dtype", "float32")
    low = TrackingLowering(spec, mode="train", float_dtype=dtype)
    g = low.graph
    g.rng_inputs()
    from .training import _scalar_loss

    loss_owner = "loss/loss" if obj.loss is spec.loss else entry_key(obj.loss)
    loss = low.owned(loss_owner, lambda: _scalar_loss(low, obj.loss))
    metrics = {}
    for m in spec.metrics:  # as training._metrics does
        def one(m=m):
            v = low.eval(m.expr)
            if not isinstance(v, Value):
                v = g.lift(v)
            return g.cast(v, g.float_dtype)
        metrics[m.targets[0]] = low.owned(f"metric/{m.targets[0]}", one)
    from .training import _trained

    trained = _trained(spec, low, obj)  # refuses an objective that trains nothing, as compile does
    if optimize_graph:
        rewrite_forward([loss, *metrics.values()])
    n_forward = len(g.nodes)
    made: dict[int, Node] = {}
    swapped = []
    for node in producers_of([loss]):
        if node.op.vjp is not None and not node.op.nondiff:
            swapped.append((node, node.op))
            node.op = _VjpAt(node.op, node, made)
    try:
        grads = _gradients(low, loss, obj, trained)
    finally:
        for node, op in swapped:
            node.op = op
    n_grad = len(g.nodes)
    states, lr, step = _add_state_inputs(g, low.params, obj)
    fused = fused_update(low.params, obj)
    new_params, new_states = _apply_updates(g, obj, {n: low.params[n].value for n in trained}, grads, states, lr, step,
                                            fused)
    outs = [("loss", loss), *metrics.items(), *((f"next/{n}", v) for n, v in new_params.items()),
            *((f"next/{n}", v) for n, v in new_states.items()), *((f"next/{n}", v) for n, v in g.buffer_updates.items())]
    before = {id(n): i for i, n in enumerate(g.nodes)}
    pre_matmuls = [n for n in g.nodes if n.op.name == "matmul"]
    values = [v for _, v in outs]
    if optimize_graph:
        values = optimize(values)
        emission_rewrites(values, g.batch_size)
    outs = [(name, v) for (name, _), v in zip(outs, values)]
    nodes = producers_of(values)

    phase: dict[int, str] = {}
    cluster: dict[int, str] = {}
    labels: dict[str, str] = {}
    loc_of: dict[int, Loc | None] = {}  # nodes made by the rewrites: the spec location of what they replace

    def entry_label(key):
        kind, name = key.split("/", 1)
        return name if kind == "node" else f"{kind} {name}" if kind != "loss" else "loss"

    for n in nodes:
        i = before.get(id(n))
        if i is None:
            continue  # made by the rewrites: placed below
        if i < n_forward:
            phase[id(n)] = "forward"
            key = low.node_owner.get(id(n))
            if key:
                cluster[id(n)] = key
                labels[key] = entry_label(key)
        elif i < n_grad:
            phase[id(n)] = "grad"
            src = made.get(id(n))
            key = low.node_owner.get(id(src)) if src is not None else None
            if key:
                cluster[id(n)] = "grad/" + key
                labels["grad/" + key] = f"∂ through {entry_label(key)}"
        else:
            phase[id(n)] = "update"
    # Rewrites make gemm (from a matmul + add) and folded constants: they take the matmul's
    # place, or their first consumer's.
    for n in nodes:
        if id(n) in phase:
            continue
        if n.op.name == "gemm":
            a, b = n.inputs[0], n.inputs[1]
            for mm in pre_matmuls:
                ins = [_untransposed(v) for v in mm.inputs]
                if ins[0] is a and ins[1] is b:
                    phase[id(n)] = phase.get(id(mm), "forward" if before[id(mm)] < n_forward else "grad" if before[id(mm)] < n_grad else "update")
                    loc_of[id(n)] = mm.loc
                    if id(mm) in cluster:
                        cluster[id(n)] = cluster[id(mm)]
                    elif before[id(mm)] < n_forward and low.node_owner.get(id(mm)):
                        cluster[id(n)] = low.node_owner[id(mm)]
                    elif made.get(id(mm)) is not None and low.node_owner.get(id(made[id(mm)])):
                        cluster[id(n)] = "grad/" + low.node_owner[id(made[id(mm)])]
                    break
    consumers: dict[int, list[Node]] = {}
    for n in nodes:
        for v in n.inputs:
            if v.producer is not None:
                consumers.setdefault(id(v.producer), []).append(n)
    # Optimizer ops: one cluster per trained parameter (its update and state), shared ones alone;
    # a fused update (every parameter as one flat vector) is one cluster.
    update_of: dict[int, str] = {}
    if fused:
        key = f"update/{obj.name}"
        labels[key] = f"update of all {len(trained)} parameters at once ({obj.optimizer.name})"
        for n in nodes:
            if phase.get(id(n)) == "update":
                cluster[id(n)] = key
        outs_for_update = []
    else:
        outs_for_update = outs
    for name, v in outs_for_update:
        if not name.startswith("next/"):
            continue
        pname = name.split("/")[-1]
        if pname not in low.params or pname not in trained:
            continue
        stack = [v]
        while stack:
            x = stack.pop()
            p = x.producer
            if p is None or phase.get(id(p)) != "update" or id(p) in update_of:
                continue
            update_of[id(p)] = pname
            stack.extend(p.inputs)
    shared = {id(n) for n in nodes if phase.get(id(n)) == "update"
              and len({update_of.get(id(c)) for c in consumers.get(id(n), [])} - {None}) > 1}
    for n in nodes:
        if phase.get(id(n)) == "update" and id(n) not in shared and id(n) in update_of:
            cluster[id(n)] = "update/" + update_of[id(n)]
            labels["update/" + update_of[id(n)]] = f"update {update_of[id(n)]} ({obj.optimizer.name})"
    # Whatever is left (constants, accumulations, the seed): with its first consumer.
    for _ in range(3):
        for n in reversed(nodes):
            if id(n) in cluster or id(n) in shared:
                continue
            for c in consumers.get(id(n), []):
                if id(c) in cluster:
                    cluster[id(n)] = cluster[id(c)]
                    phase.setdefault(id(n), phase.get(id(c), "forward"))
                    break
    for n in nodes:
        phase.setdefault(id(n), "forward")
        key = cluster.get(id(n))
        if key and key not in labels:
            labels[key] = f"∂ through {entry_label(key[5:])}" if key.startswith("grad/") else entry_label(key)
    return IRStep(nodes, outs, dict(g.inputs), phase, cluster, labels, obj.name, loc_of)


def _untransposed(v: Value) -> Value:
    p = v.producer
    if p is not None and p.op.name == "transpose" and v.rank == 2:
        return p.inputs[0]
    return v


def _step_ends(node: Node, body: list[Node]) -> list[Node]:
    """The ops of a scan's step that make its carried states (an LSTM's new h and new c), each linked
    to the scan: the link was from the step's last op alone (the new h). A body without carries
    (a block call's graph) is linked from its last op."""
    ops = {id(b) for b in body if not is_constant(b)}
    body_of = next((v for v in node.attrs.values() if getattr(v, "new_carries", None) is not None), None)
    ends = list({id(v.producer): v.producer for v in getattr(body_of, "new_carries", None) or []
                 if v.producer is not None and id(v.producer) in ops}.values())
    return ends or [b for b in body if not is_constant(b)][-1:]


def _body_length(node: Node, env: dict) -> int:
    """How many times a subgraph op runs its body (scan: the sequence length)."""
    body = node.attrs.get("body")
    if body is not None and hasattr(body, "carries") and hasattr(body, "seqs"):
        nc, ns = len(body.carries), len(body.seqs)
        seqs = node.inputs[nc:nc + ns]
        if seqs:
            return _dim_value(seqs[0].shape[0], env)
        if node.attrs.get("length") is not None:
            return _dim_value(node.attrs["length"], env)
    return 1


def _const_text(v: Value) -> str:
    import numpy as np

    arr = np.asarray(v.producer.attrs.get("value"))
    if arr.size == 1:
        x = arr.item()
        return repr(x) if isinstance(x, bool) else f"{x:.4g}"
    return f"const{fmt_shape(arr.shape)}"


def is_constant(n: Node) -> bool:
    return n.op.name == "constant"


def _ir_label(n: Node, extra: str = "", loc: Loc | None = None) -> str:
    """op name (constant operands written in: mul(·, 0.8)), output shape, spec line:col."""
    shape = ", ".join(_shape_str(o.shape) for o in n.outputs)
    name = n.op.name
    if name == "gemm":
        name = f"gemm(a{'ᵀ' if n.attrs.get('trans_a') else ''}, b{'ᵀ' if n.attrs.get('trans_b') else ''}, c)"
    elif any(v.producer is not None and is_constant(v.producer) for v in n.inputs):
        args = [_const_text(v) if v.producer is not None and is_constant(v.producer) else "·" for v in n.inputs]
        name = f"{name}({', '.join(args)})"
    loc = loc or n.loc
    loc = f'  <FONT POINT-SIZE="8" COLOR="#6b7280">{_e(loc_text(loc))}</FONT>' if loc else ""
    return f'<<B>{_e(name)}</B>{extra}<BR/><FONT FACE="{MONO}" POINT-SIZE="9">{_e(shape)}</FONT>{loc}>'


def _cluster_id(key: str) -> str:
    # the suffix keeps keys that differ only in punctuation apart; crc32, not hash(): the same
    # spec gives the same .dot in every process
    return "cluster_" + "".join(c if c.isalnum() else "_" for c in key) + f"_{zlib.crc32(key.encode()) % 10**6}"


def ir_dot(step: IRStep, spec: S.Spec, expand: bool = False):
    """One box per IR op of the optimized training step (constants are written into the ops that
    use them, as ONNX initializers are), clustered by the spec entry each op came from."""
    ops = [n for n in step.nodes if not is_constant(n)]
    n_const = len(step.nodes) - len(ops)
    d = _dot(f'<<B>{_e(spec.name)}: optimized training step</B>  <FONT POINT-SIZE="11" COLOR="#6b7280">'
             f'{len(ops)} ops (+{n_const} constants) · objective {_e(step.objective)} · </FONT>'
             f'<FONT POINT-SIZE="11" COLOR="#374151">forward</FONT><FONT POINT-SIZE="11" COLOR="#6b7280"> / </FONT>'
             f'<FONT POINT-SIZE="11" COLOR="#ea580c">gradient</FONT><FONT POINT-SIZE="11" COLOR="#6b7280"> / </FONT>'
             f'<FONT POINT-SIZE="11" COLOR="#15803d">optimizer</FONT>>')
    d.attr("graph", ranksep="0.25", nodesep="0.15")
    d.attr("node", fontsize="10", margin="0.08,0.03", height="0.3")
    d.attr("edge", arrowsize="0.5", penwidth="0.8")
    ids = {id(n): f"op{i}" for i, n in enumerate(ops)}
    inputs_by_value = {gi.value.id: (name, gi) for name, gi in step.inputs.items()}
    params = {name for name, gi in step.inputs.items() if gi.kind == "param"}
    groups: dict[str | None, list[Node]] = {}
    for n in ops:
        groups.setdefault(step.cluster.get(id(n)), []).append(n)
    drawn_inputs: set[str] = set()

    def input_id(v: Value, key) -> str:
        """Graph inputs are drawn once per cluster that reads them, next to their readers."""
        name, gi = inputs_by_value[v.id]
        nid = f"in/{key}/{name}"
        if nid not in drawn_inputs:
            drawn_inputs.add(nid)
            kind = "param" if gi.kind == "param" else "input"
            target = cluster_targets.get(key, d)
            target.node(nid, f'<<B>{_e(name)}</B> <FONT POINT-SIZE="8">{_e(_shape_str(gi.value.shape))}</FONT>>',
                        shape="box", style="filled", fillcolor=STYLE[kind][0], color=STYLE[kind][1],
                        fontsize="9", height="0.22", **{"class": f"tensor {gi.kind}"})
        return nid

    def draw(target, n: Node):
        phase = step.phase[id(n)]
        fill, color = IR_FILL[phase]
        cls = f"op {phase}"
        body = body_nodes(n)
        if body is not None and not expand:
            target.node(ids[id(n)], _ir_label(n, f'  <FONT POINT-SIZE="8">({len(body)} ops inside)</FONT>'),
                        shape="box3d", style="filled", fillcolor=fill, color=color, **{"class": cls})
            return
        target.node(ids[id(n)], _ir_label(n, loc=step.loc_of.get(id(n))), shape="box", style="rounded,filled",
                    fillcolor=fill, color=color,
                    **{"class": cls})
        if body is not None:
            # the step's ops with their edges (they were loose boxes, and named by id(): another
            # .dot in every process)
            with target.subgraph(name=_cluster_id("body" + ids[id(n)])) as c:
                c.attr(label=f"{n.op.name} body", style="dashed")
                body_ids = _draw_step_body(c, f"body/{ids[id(n)]}", body, params, set())
            for b in _step_ends(n, body):  # each carried state's op, beside the op, not above it
                target.edge(body_ids[id(b)], ids[id(n)], style="dashed", color="#9ca3af", constraint="false")

    cluster_targets: dict = {}
    stack = []
    for key, members in groups.items():
        if key is None:
            for n in members:
                draw(d, n)
            continue
        kind = "grad" if key.startswith("grad/") else "update" if key.startswith("update/") else "forward"
        color = IR_FILL[kind][1]
        ctx = d.subgraph(name=_cluster_id(key))
        c = ctx.__enter__()
        stack.append((ctx, c))
        cluster_targets[key] = c
        c.attr(label=step.cluster_label.get(key, key), style="rounded,dashed", color=color, fontcolor=color,
               fontname=FONT, fontsize="11", labeljust="l", margin="10")
        for n in members:
            draw(c, n)
    for n in ops:
        key = step.cluster.get(id(n))
        # a value an op reads twice (mul(g, g)) is one edge, labelled ×2: it was two parallel edges
        reads = [v for v in n.inputs if not (v.producer is not None and is_constant(v.producer))]
        times = {v.id: [r.id for r in reads].count(v.id) for v in reads}
        for v in {v.id: v for v in reads}.values():
            twice = {"label": f"×{times[v.id]}", "fontsize": "8"} if times[v.id] > 1 else {}
            if v.producer is None:
                if v.id in inputs_by_value:
                    d.edge(input_id(v, key), ids[id(n)], color="#9ca3af", **twice)
                continue
            src_phase, dst_phase = step.phase[id(v.producer)], step.phase[id(n)]
            if src_phase == dst_phase or src_phase == "grad":
                color = EDGE if dst_phase == "forward" else IR_FILL[dst_phase][1]
                d.edge(ids[id(v.producer)], ids[id(n)], color=color, **twice)
            else:  # a forward value the gradient or the optimizer reads: does not move the layout
                d.edge(ids[id(v.producer)], ids[id(n)], color="#d1d5db", penwidth="0.6", constraint="false", **twice)
    # The backward pass starts below the forward one: from the loss to the first gradient ops.
    loss_op = next((v.producer for name, v in step.outputs if name == "loss" and v.producer is not None), None)
    if loss_op is not None and id(loss_op) in ids:
        for n in ops:
            if step.phase[id(n)] == "grad" and not any(
                    v.producer is not None and step.phase.get(id(v.producer)) == "grad" and not is_constant(v.producer)
                    for v in n.inputs):
                d.edge(ids[id(loss_op)], ids[id(n)], style="invis")
    # subgraph contexts close (and so attach to the graph) after their input copies are drawn
    for ctx, _ in reversed(stack):
        ctx.__exit__(None, None, None)
    for name, v in step.outputs:
        d.node(f"out/{name}", f'<<FONT POINT-SIZE="9">{_e(name)}</FONT>>', shape="plaintext", height="0.2",
               **{"class": "tensor out"})
        if v.producer is not None and id(v.producer) in ids:
            d.edge(ids[id(v.producer)], f"out/{name}", style="dashed", color="#9ca3af")
    return d


# ------------------------------------------------------------------ writing pictures
RENDER_FORMATS = ("svg", "png", "pdf")
INSTALL_HINT = "Debian/Ubuntu: apt-get install graphviz, macOS: brew install graphviz"


def write_picture(d, path: str) -> tuple[str, str | None]:
    """Write a Digraph by the extension of `path`: .dot/.gv as text, .svg/.png/.pdf through `dot`.
    Returns (written path, a note when `dot` is missing and a .dot was written instead)."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in ("dot", "gv") + RENDER_FORMATS:
        raise FlowgradError(f"cannot write a graph as {path!r}", None,
                            "give a file ending in .svg, .png, .pdf or .dot")
    from runtime.checkpoint import atomic_write, make_parent_dir

    make_parent_dir(path, names=FLAGS)
    hint = "pick another path with -o"
    if ext in ("dot", "gv"):
        atomic_write(path, d.source.encode(), hint)
        return path, None
    if shutil.which("dot") is None:
        dot_path = os.path.splitext(path)[0] + ".dot"
        atomic_write(dot_path, d.source.encode(), hint)
        return dot_path, (f"Graphviz's 'dot' program is not installed, so wrote {dot_path} instead of {path}; "
                          f"install Graphviz ({INSTALL_HINT}) and run: dot -T{ext} {dot_path} -o {path}")
    atomic_write(path, d.pipe(format=ext), hint)
    return path, None


# ------------------------------------------------------------------ counting
def _dim_value(d, env: dict) -> int:
    return dim_value(d, env, 1)  # (a dim not given counts as 1)


def _numel(shape, env) -> int:
    out = 1
    for d in shape:
        out *= _dim_value(d, env)
    return out


_FREE = {
    "constant", "reshape", "transpose", "squeeze", "unsqueeze", "flatten", "identity", "stop_gradient",
    "broadcast_like", "cast", "slice", "concat", "split", "pad", "take", "take_along_axis", "one_hot", "index",
    "numel", "zeros_like", "ones_like", "embedding", "fill", "arange", "positions", "shift",
    "reshape_dims", "precomputed", "tile_batch", "tile_rows", "one_hot_blocks",  # a reshape, an identity, copies
}
_REDUCTIONS = {"sum", "mean", "max", "min", "argmax", "argmin", "sum_to"}


def node_flops(n: Node, env: dict) -> dict[str, int]:
    """FLOPs of one IR node by kind (matmul, conv, elementwise, reduction, other), symbolic
    dims valued by `env`.

    matmul 2·m·k·n (batched: per matrix); gemm 2·m·k·n plus 1 per element for its bias, if it has one;
    conv 2·N·Cout·Hout·Wout·(Cin/groups)·kh·kw (conv_transpose: the same from the input
    side); elementwise ops and random bits 1 per output element; reductions 1 per input
    element; softmax / log_softmax 3 per element; pooling and max pooling's gradients 1 per window
    element (avg_pool2d's gradient is the depthwise conv_transpose it is emitted as, 2 per window element); shape, copy and index ops 0; a subgraph op (scan) its body's FLOPs per step
    times its steps. scatter_add into a small table is the one-hot product it is emitted as:
    2·rows·width per index. (sum_to is a reduction, though a bias gradient's runs as a row of
    ones times the rows.)"""
    name = n.op.name
    out = n.outputs[0] if n.outputs else None
    if name in _FREE or out is None:
        return {}
    body = body_nodes(n)
    if body is not None:
        T = _body_length(n, env)
        return {k: T * f for k, f in _flops_total(body, env).items() if k != "total"}
    if name == "scatter_add" and n.op.one_hot_product(n):
        # (as emitted: the bound of benchmarks/compare.py takes the compiled graph's product
        # FLOPs, and the one-hot product of an embedding's gradient was a seventh of
        # dates_attention's, counted as one add per element)
        like = n.inputs[0]
        return {"matmul": 2 * like.shape[0] * like.shape[1] * _numel(n.inputs[1].shape, env)}
    if name == "matmul":
        a = n.inputs[0]
        return {"matmul": 2 * _numel(out.shape, env) * _dim_value(a.shape[-1], env)}
    if name == "gemm":
        a = n.inputs[0]
        k = _dim_value(a.shape[0] if n.attrs.get("trans_a") else a.shape[1], env)
        mn = _numel(out.shape, env)
        if float(n.attrs.get("beta", 1.0)) == 0.0:  # no bias: emitted without C (a weight gradient's product)
            return {"matmul": 2 * mn * k}
        return {"matmul": 2 * mn * k, "elementwise": mn}
    if name in ("conv", "conv_transpose"):
        w = n.inputs[1]
        per = _dim_value(w.shape[1], env) * _dim_value(w.shape[2], env) * _dim_value(w.shape[3], env)
        return {"conv": 2 * _numel((out if name == "conv" else n.inputs[0]).shape, env) * per}
    if name in _REDUCTIONS:
        return {"reduction": _numel(n.inputs[0].shape, env)}
    if name in ("softmax", "log_softmax"):
        return {"elementwise": 3 * _numel(out.shape, env)}
    if name.startswith(("max_pool2d", "avg_pool2d")):
        k = n.attrs.get("kernel", 1)
        kh, kw = (k, k) if isinstance(k, int) else tuple(k)
        first = n.inputs[0]
        if name == "avg_pool2d_grad":  # (as emitted: a depthwise ConvTranspose of a 1 / (kh * kw) kernel)
            return {"conv": 2 * _numel(first.shape, env) * kh * kw}
        return {"other": _numel(first.shape if name.endswith("_grad") else out.shape, env) * kh * kw}
    if name in ("scatter_add", "scatter_add_along_axis"):
        return {"elementwise": _numel(n.inputs[2].shape, env)}
    return {"elementwise": sum(_numel(o.shape, env) for o in n.outputs)}


def _flops_total(nodes, env) -> dict[str, int]:
    tot = {"total": 0, "matmul": 0, "conv": 0, "elementwise": 0, "reduction": 0, "other": 0}
    for n in nodes:
        for k, f in node_flops(n, env).items():
            tot[k] += f
            tot["total"] += f
    return tot


def _symbols(d) -> list[str]:
    from .ir import dim_symbols

    return dim_symbols(d) if isinstance(d, str) else []


def batch_env(spec: S.Spec, batch_size: int, dims: dict | None = None, sizes: set | None = None, *,
              names) -> tuple[dict, list[str]]:
    """Values of the symbolic dims: the inputs' leading dim is the batch, `dims` gives others
    (a sequence length T, or one of `sizes`: a size given by an integer scalar input, such as a
    generator's count); the rest count as 1 and are returned as the second item."""
    from .training import check_dims

    check_dims(spec, dims, sizes, names=names)
    env: dict = {}
    for decl in spec.inputs.values():
        if decl.shape:
            for part in _symbols(decl.shape[0]):
                env[part] = batch_size
    symbolic = {p for decl in spec.inputs.values() for d in decl.shape for p in _symbols(d)}
    symbolic |= set(sizes or ())
    env.update(dims or {})
    unset = sorted(symbolic - set(env))
    return env, unset


def count_inputs(spec: S.Spec) -> set[str]:
    """The integer scalar inputs, which size values at run time (a generator's count)."""
    return {name for name, decl in spec.inputs.items()
            if not decl.shape and str(decl.dtype).startswith(("int", "uint"))}


def rows_of(spec: S.Spec, value, env: dict, batch_size: int) -> tuple[str, int]:
    """What a value's per-example FLOPs are per, and how many of them a step has: a value whose
    leading dim is a count input's (samples: [count, P]) has a row per one drawn, not per
    example of the batch; any other (the batch's, a loss over it) is per example."""
    shape = getattr(value, "shape", None)
    if shape:
        lead = _symbols(shape[0])
        if len(lead) == 1 and lead[0] in count_inputs(spec):
            return lead[0], max(1, _dim_value(shape[0], env))
    return "example", batch_size


def summary(spec: S.Spec, batch_size: int | None = None, dtype: str | None = None, dims: dict | None = None,
            objective: str | None = None, *, names) -> dict:
    """Nodes, parameters and totals (parameter count, forward and training FLOPs per step).
    `names`: the CLI's flags or the API's keywords, as refusals of `dims` name them."""
    # the spec compiled as it trains at that batch size: a stateful layer's carried-state
    # buffers have batch-size rows, and the graphs' layout choices follow the batch
    spec = spec.with_batch_size(batch_size)
    B = int(spec.batch_size)
    from .training import check_float_types

    check_float_types(spec, dtype)  # (it counted a float16 step that check and compile refuse)
    sg = SpecGraph(spec, dtype)
    low = sg.low
    # the integer scalar inputs that size values at run time (zeros(count, Z)): a fill's dim named after one
    sizes = {d[1] for n in low.graph.nodes if n.op.name == "fill" for d in n.attrs["dims"]
             if isinstance(d, tuple) and isinstance(d[1], str)}
    # and a size an op makes (arange(n)'s L), in the counts as the others are

    def walk(nodes):
        for n in nodes:
            sizes.update(p for o in n.outputs for d in o.shape for p in _symbols(d))
            walk(body_nodes(n) or [])

    walk(low.graph.nodes)
    env, unset = batch_env(spec, B, dims, sizes, names=names)
    from .training import objectives_of

    def loss_of(o):
        return sg.loss_value if o.loss is spec.loss else low.env.get(o.loss.targets[0])

    objs = objectives_of(spec)
    entries = [v for a in spec.graph for v in (low.env.get(t) for t in a.targets)]
    # an entry's nodes that nothing reads compute nothing: the compiled graphs leave them out (the
    # gradient of the weights that jacobian(h, x) makes on its way to the gradient of the input)
    live = {id(n) for n in producers_of([v for v in [sg.loss_value, *map(loss_of, objs), *sg.sink_values.values(),
                                                           *low.graph.buffer_updates.values(), *entries]
                                         if isinstance(v, Value)])}
    by_owner: dict[str, list[Node]] = {}
    for n in low.graph.nodes:
        if id(n) in live:
            by_owner.setdefault(low.node_owner.get(id(n), ""), []).append(n)
    nodes = []
    for n in sg.nodes.values():
        if n.kind in ("input", "param", "buffer"):
            continue
        made = [p for p, o in low.param_owner.items() if o == n.key]
        fl = _flops_total(by_owner.get(n.key, []), env)
        per, rows = rows_of(spec, n.value, env, B)
        nodes.append({
            "name": n.name, "kind": n.kind, "op": n.op, "shape": shape_text(n.value),
            "expr": n.expr_text, "loc": loc_text(n.loc),
            # as the totals: a stateful layer's carried state and batch_norm's running averages
            # are buffers, not parameters
            "params": sum(_numel(low.params[p].shape, {}) for p in made if low.params[p].kind == "param"),
            "buffers": sum(_numel(low.params[p].shape, {}) for p in made if low.params[p].kind == "buffer"),
            # per row of what it has a row for: an example of the batch, or one of `count` rows drawn
            # (a generator's samples, zeros(count, Z) through it: not computed per example)
            "flops_per": per, "flops_per_step": fl["total"],
            "flops_per_example": fl["total"] / rows, "matmul_flops_per_example": fl["matmul"] / rows,
            "conv_flops_per_example": fl["conv"] / rows,
        })
    params = []
    for name, p in low.params.items():
        params.append({"name": name, "shape": list(p.shape), "count": _numel(p.shape, {}), "kind": p.kind,
                       "trainable": p.trainable, "init": p.init_kind,
                       "created_by": (low.param_owner.get(name) or "").split("/", 1)[-1] or None})
    # what the training step counted below computes forward: its objective's loss (a gan's d_loss,
    # a graph entry, where the spec has no loss:), the metrics and the buffers' updates
    # (batch_norm's running averages)
    step_loss = loss_of(pick_objective(spec, objective)) if objs else sg.loss_value
    targets = [v for v in [step_loss, *(sg.sink_values[f"metric/{m.targets[0]}"] for m in spec.metrics),
                           *low.graph.buffer_updates.values()]
               if isinstance(v, Value)]
    fwd = _flops_total(producers_of(targets), env) if targets else _flops_total(low.graph.nodes, env)
    totals = {
        "params": sum(x["count"] for x in params if x["kind"] == "param"),
        "trainable_params": sum(x["count"] for x in params if x["kind"] == "param" and x["trainable"]),
        "buffers": sum(x["count"] for x in params if x["kind"] == "buffer"),
        "batch_size": B,
        "forward_flops_per_step": fwd["total"],
        "forward_flops_per_example": fwd["total"] / B,
        "forward_matmul_flops_per_step": fwd["matmul"],
        "forward_matmul_flops_per_example": fwd["matmul"] / B,
        "forward_conv_flops_per_step": fwd["conv"],
        "forward_flops_by_kind": {k: v for k, v in fwd.items() if k != "total"},
    }
    if spec.loss is not None or spec.train.get("objectives"):
        step = training_step(spec, objective, dtype)
        tr = _flops_total(step.nodes, env)
        totals.update({
            "training_flops_per_step": tr["total"],
            "training_flops_per_example": tr["total"] / B,
            "training_matmul_flops_per_step": tr["matmul"],
            "training_conv_flops_per_step": tr["conv"],
            "training_ir_nodes": len(step.nodes),
            "training_ops": len([n for n in step.nodes if not is_constant(n)]),
            "training_objective": step.objective,
        })
    return {"name": spec.name, "doc": spec.doc, "path": spec.path, "batch_size": B, "dims": dict(sorted(env.items())),
            "dims_counted_as_1": unset,
            "nodes": nodes, "params": params, "totals": totals}
