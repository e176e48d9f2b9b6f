"""Gradients inside the spec: `grad(expr, wrt)`, `hvp(expr, wrt, v)` and
`jacobian(y, x)`. The compiler differentiates symbolically when the spec is
compiled; the results are ordinary nodes, which the training graph then
differentiates again (a contractive penalty, a gradient penalty)."""
from __future__ import annotations

import numpy as np

from spec import model as S
from spec.errors import GradientError, ShapeError, SpecError

from .autodiff import grad
from .ir import Value, at, dim_mul, fmt_shape, is_float, producers_of, reads_shape_only


def _tensor_args(low, e: S.Call, names: tuple) -> list[Value]:
    """The call's arguments, `names` in order (each required, none by keyword), as tensors."""
    from .binding import Params, bind

    usage = f"{e.func}({', '.join(names)})"
    bind(Params(f"{e.func}()", positional=names, required=names, usage=usage, keywords=False), e, e.args, e.kwargs)
    if not isinstance(e.args[1], S.Name):
        # an expression made here is a new value, which nothing in y reads: its gradient
        # would be zeros whatever y is
        raise SpecError(f"{e.func}() differentiates with respect to a named value (an input, a parameter or a graph "
                        "entry), not an expression", e.args[1].loc,
                        "name the expression in the graph (z: x * 2) and compute y from that name")
    vals = [low.eval(a) for a in e.args]
    for i, (v, a) in enumerate(zip(vals, e.args)):
        if not isinstance(v, Value) or not is_float(v.dtype):
            hint = f"usage: {usage}"
            if isinstance(v, Value) and i == 1:  # the value differentiated with respect to
                hint = ("integers (ids, labels, lengths) have no gradient: differentiate with respect to a float "
                        "value computed from them, named in the graph (e: embedding(ids, V, E), then "
                        f"{e.func}(..., e{', ...' if len(names) > 2 else ''}))")
            raise SpecError(f"{e.func}() argument {names[i]} must be a float tensor, got "
                            f"{v.type if isinstance(v, Value) else repr(v)}", a.loc, hint)
    return vals


def _grad_of(y: Value, x: Value, e: S.Call) -> Value:
    if y.shape != ():
        raise ShapeError(f"{e.func}() needs a scalar to differentiate, got {y.type}", e.args[0].loc,
                         "reduce it first, e.g. sum(...) or mean(...); use jacobian(y, x) for every output")
    (gx,) = grad([y], [x])
    if gx is None:  # x does not reach y: the gradient is exactly zero
        return x.graph.apply("zeros_like", x)
    return gx


def lower_grad(low, e: S.Call) -> Value:
    y, x = _tensor_args(low, e, ("scalar", "wrt"))
    with at(e.loc):
        return _grad_of(y, x, e)


def lower_hvp(low, e: S.Call) -> Value:
    """Hessian-vector product H v = d/dx <d y/dx, v>, v held fixed in that derivative
    (v may depend on x, as a gradient does; the training graph still differentiates v)."""
    y, x, v = _tensor_args(low, e, ("scalar", "wrt", "v"))
    if v.shape != x.shape:
        raise ShapeError(f"hvp() vector {v.type} must have the shape of wrt {x.type}", e.args[2].loc,
                         "usage: hvp(scalar, wrt, v), with v shaped like wrt")
    with at(e.loc):
        g = _grad_of(y, x, e)
        (hv,) = grad([g], [x], [v])  # v is the cotangent: a constant of this pass, not a function of x
        return hv if hv is not None else x.graph.apply("zeros_like", x)


def lower_jacobian(low, e: S.Call) -> Value:
    """jacobian(y, x) for per-example y [N, M] and x [N, D]: J [N, M, D], J[n, m, d] = d y[n, m] / d x[n, d].

    Exact, with one backward pass: the subgraph from x to y is rebuilt on a
    batch repeated M times, and the cotangent picks output m in repeat m."""
    y, x = _tensor_args(low, e, ("y", "x"))
    if y.rank != 2 or x.rank != 2 or y.shape[0] != x.shape[0]:
        raise ShapeError(f"jacobian() needs y [N, M] and x [N, D] with the same batch dim, got {y.type} and {x.type}",
                         e.loc, "flatten per-example values to [N, features] first")
    M = y.shape[1]
    if not isinstance(M, int):
        raise ShapeError(f"jacobian() needs a fixed number of outputs, got {y.type}", e.args[0].loc,
                         "y's second dim must be a fixed size: a number or a name declared under dims")
    g = low.graph
    with at(e.loc):
        x_rep = g.apply("tile_batch", x, times=M)  # [M*N, D]: repeat m is rows m*N .. m*N+N-1
        y_rep = _rebuild(y, x, x_rep, e, M, getattr(low, "calls", {}))
        picks = g.apply("one_hot_blocks", y_rep, blocks=M)  # [M*N, M]: 1 at column m in repeat m
        (gx,) = grad([y_rep], [x_rep], [picks])
        if gx is None:
            return g.apply("fill", x, dims=((0, 0), M, x.shape[1]), dtype=x.dtype)
        J = g.apply("reshape", gx, shape=(M, -1, x.shape[1]))  # [M, N, D]
        return g.apply("transpose", J, perm=(1, 0, 2))


def _mixes_examples(node, depends: list[bool], batch) -> str | None:
    """Why `node` would combine different examples of its inputs that depend on x, or None.
    The batch is followed by its dim: a symbolic batch dim N marks the axes that hold
    examples wherever they move (a fixed batch size only marks axis 0)."""
    from .ops.reduce import Reduction, reduce_axes

    name, ins, attrs = node.op.name, node.inputs, node.attrs

    def batch_axes(v) -> set:
        if not isinstance(batch, int):
            return {i for i, d in enumerate(v.shape) if d == batch}
        return {0} if v.rank and v.shape[0] == batch else set()

    marked = [(v, batch_axes(v)) for v, d in zip(ins, depends) if d]
    marked = [(v, axes) for v, axes in marked if axes]
    if not marked:
        return None
    if isinstance(node.op, Reduction):
        if any(set(reduce_axes(attrs.get("axis"), v.rank)) & axes for v, axes in marked):
            return f"{name}() reduces over the batch axis"
        return None
    if name in ("matmul", "gemm"):
        a, b = ins[0], ins[1]
        if name == "matmul":
            contracted = {a.id: a.rank - 1, b.id: b.rank - 2 if b.rank >= 2 else 0}
        else:
            contracted = {a.id: 0 if attrs.get("trans_a") else 1, b.id: 1 if attrs.get("trans_b") else 0}
        if any(contracted.get(v.id) in axes for v, axes in marked):
            return f"a product ({name}) sums over the batch axis"
        return None
    if name == "sum_to":
        # the gradient of a broadcast: summed over the rows of a bias, a gamma or any value
        # broadcast along the batch, it adds up every example's part
        summed, _ = node.op.plan(ins[0].shape, attrs["shape"])
        if set(summed) & batch_axes(ins[0]):
            return "a gradient sums over the batch axis (of a value broadcast over the examples, such as a bias)"
        return None
    if name == "reshape":
        if not batch_axes(node.outputs[0]):
            return f"a reshape to {fmt_shape(node.outputs[0].shape)} merges the batch axis with others"
        return None
    if name == "transpose":
        return None if not isinstance(batch, int) or tuple(node.op.perm(attrs, ins[0].rank))[0] == 0 else \
            "a transpose moves the batch axis"
    axes_attr = attrs.get("axes")
    if name in ("slice", "squeeze", "unsqueeze") and axes_attr is not None:
        listed = axes_attr if isinstance(axes_attr, (tuple, list)) else (axes_attr,)
        for v, axes in marked:
            rank = node.outputs[0].rank if name == "unsqueeze" else v.rank
            touched = {int(i) % rank for i in listed if i is not None} if rank else set()
            if name == "unsqueeze" and not isinstance(batch, int):
                continue  # the new axis only moves the batch dim, which stays marked
            if touched & axes:
                return f"{name}() works along the batch axis"
        return None
    axis = attrs.get("axis")
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) and name not in ("sum_to", "broadcast_like"):
        if any(v.rank and int(axis) % v.rank in axes for v, axes in marked):
            return f"{name}() works along the batch axis"
    return None


def _rebuild(y: Value, x: Value, x_new: Value, e: S.Call, times: int, calls: dict) -> Value:
    """y's subgraph from x applied to x_new, x repeated `times` times along the batch, shapes
    re-inferred. Other inputs are unchanged, except per-example ones (batch dim first, such as
    a mask input), which are repeated alike. `calls`: the spec's calls by location, to name them."""
    g = x.graph
    batch = x.shape[0]
    env = {x.id: x_new}
    tiled: dict[int, Value] = {}
    data = {i.value.id for i in g.inputs.values() if i.kind == "input"}
    examples: dict[int, bool] = {}

    def other(v: Value) -> Value:
        if not v.rank or v.shape[0] != batch:
            return v
        if isinstance(batch, int) and not _per_example(v, data, batch, examples):
            return v  # a fixed batch size cannot tell examples from a parameter's rows by the dim alone
        if v.id not in tiled:
            tiled[v.id] = g.apply("tile_batch", v, times=times)
        return tiled[v.id]
    mixed: dict[int, str] = {}
    for node in producers_of([y]):
        if not any(v.id in env for v in node.inputs):
            continue
        if node.op.name == "numel":
            # a count of the entries y is computed on (a mean's gradient divides by it): the
            # original batch's, as a fixed batch size folds it, not the repeated batch's
            continue
        if node.op.name in ("scan", "random_bits"):
            raise GradientError(f"jacobian() cannot rebuild {node.op.name!r} on a repeated batch", e.loc,
                                "compute the jacobian of a deterministic, feed-forward part")
        # values whose rows mix examples, and why: a mixing node, or one reading such a value
        # (shapes aside: a gradient's ones_like of a batch sum reads only its shape)
        why = _mixes_examples(node, [v.id in env for v in node.inputs], x.shape[0])
        if why and node.op.name != "sum_to" and _spec_node(node) is not node:
            # an op of a gradient rule, which the spec never wrote: name the call it differentiates
            written = _spec_node(node)
            op = calls.get(written.loc, written.op.name)
            why = (f"the gradient of {op}() at {_at(written.loc)} sums over the batch axis",
                   _GRADIENT_HINT.format(op=op))
        why = why or next(
            (mixed[v.id] for i, v in enumerate(node.inputs) if v.id in mixed and not reads_shape_only(node, i)), None)
        if why:
            mixed.update({o.id: why for o in node.outputs})
        ins = [env[v.id] if v.id in env else v if reads_shape_only(node, i) else other(v)
               for i, v in enumerate(node.inputs)]
        attrs = node.attrs
        if node.op.name == "reshape" and list(attrs["shape"]).count(batch) == 1 and -1 not in attrs["shape"] \
                and not isinstance(batch, int):
            # a target naming the batch dim (flatten, maxout): the rebuilt batch is M times longer
            attrs = {**attrs, "shape": tuple(-1 if d == batch else d for d in attrs["shape"])}
        elif node.op.name == "reshape" and isinstance(batch, int) and attrs["shape"] and attrs["shape"][0] == batch:
            # a fixed batch size marks axis 0 only: the rebuilt rows are `times` times as many
            attrs = {**attrs, "shape": (batch * times,) + tuple(attrs["shape"][1:])}
        elif node.op.name == "sum_to":
            # the axes the sum keeps (the batch among them) have the sizes of the rebuilt input
            src, lead = node.inputs[0], node.inputs[0].rank - len(attrs["shape"])
            attrs = {**attrs, "shape": tuple(ins[0].shape[lead + j] if d == src.shape[lead + j] else d
                                             for j, d in enumerate(attrs["shape"]))}
        out = g.apply(node.op.name, *ins, **attrs)
        outs = out if isinstance(out, tuple) else (out,)
        for o, n in zip(node.outputs, outs):
            env[o.id] = n
    if y.id in mixed:
        why, hint = mixed[y.id] if isinstance(mixed[y.id], tuple) else (mixed[y.id], None)
        raise GradientError(f"jacobian() needs y computed from x example by example, but {why}", e.loc,
                            hint or "y[n] must depend on x[n] alone (batch statistics such as batch_norm in "
                            "training mix the examples); differentiate a per-example part")
    if y.id not in env:
        return g.apply("fill", x_new, dims=((0, 0), y.shape[1]), dtype=y.dtype)
    return env[y.id]


_GRADIENT_HINT = ("jacobian() follows a gradient only where it stays per example, as the gradient with respect "
                  "to x does (jacobian(grad(f, x), x)); the gradient with respect to {op}()'s weight or bias adds "
                  "up every example's part, so y[n] depends on every x[m]. For how it changes with x, write "
                  "grad(sum(y), x) (the Jacobian summed over y's entries) or hvp(f, x, v)")


def _spec_node(node):
    """The node the spec wrote that `node` comes from: itself, or for a node of a gradient rule
    (of a gradient rule...) the node it differentiates."""
    while node.grad_of is not None:
        node = node.grad_of
    return node


def _at(loc) -> str:
    return f"{loc.line}:{loc.col}" if loc is not None else "its spec location"


def _per_example(v: Value, data: set, batch: int, memo: dict) -> bool:
    """For a fixed batch size: whether axis 0 of v holds the examples, as it does for the spec's
    inputs (`data`, ids) and for what is computed from them without mixing the examples or
    moving them off axis 0 (a mask m * 2, not transpose(m), nor a parameter). Such a value is
    repeated with x; one that is not stays as it is. `memo` keeps the answers by Value id."""
    if v.id not in memo:
        for node in producers_of([v]):
            if all(o.id in memo for o in node.outputs):
                continue
            depends = [memo.get(u.id, u.id in data) for u in node.inputs]
            keeps = any(depends) and _mixes_examples(node, depends, batch) is None
            for o in node.outputs:
                memo[o.id] = keeps and o.rank > 0 and o.shape[0] == batch
        memo.setdefault(v.id, v.id in data)
    return memo[v.id]
