"""Recurrence in specs: `scan` over blocks, and the ready-made cells
`rnn`, `lstm`, `gru` and `bidirectional(...)` built on the same scan op.

Before a scan node is made, everything in its step that does not depend on
the carried state is hoisted out of the loop (Theano's scan push-out): input
projections `x_t @ W + b` become one batched product over all time steps,
and loop-invariant values are computed once. Only the recurrent work stays
inside the loop; the gradient of the hoisted part is then outside too.
"""
from __future__ import annotations

import contextlib
import contextvars
from functools import lru_cache

import numpy as np

from spec import model as S
from spec.errors import FlowgradError, ShapeError, SpecError, did_you_mean

from .ir import Graph, TensorType, Value, at, current_loc, dim_mul, fmt_shape, is_float, normalize_axis
from .ops.scan import Body
from .registry import get_op

# The elementwise family's ops whose output shape follows another operand (a reference or sizes),
# not their operands': an extra leading time axis would not carry through them.
_SHAPED_BY_REFERENCE = {"broadcast_like", "fill", "sum_to"}


@lru_cache(maxsize=None)
def _elementwise() -> frozenset:
    """Ops whose meaning does not change when their sequence operands carry an extra leading time
    axis, so that they can run once over all steps: the registry's elementwise ops (an activation
    added there counts here too) and a precomputed value."""
    from .registry import all_ops

    return frozenset({n for n, o in all_ops().items() if o.family == "elementwise"} - _SHAPED_BY_REFERENCE
                     | {"precomputed"})
_LAST_AXIS = {"softmax", "log_softmax", "sum", "mean", "max", "min", "argmax", "argmin", "split", "concat"}


def _batch_polymorphic(node, kinds: list[str]) -> bool:
    """Whether the node computes the same thing on operands that carry an extra
    leading time axis (the "seq" ones): each such operand must already have the
    output's full rank, so that broadcasting puts time first, and ops with an
    axis must count it from the end."""
    name = node.op.name
    out_rank = node.outputs[0].rank
    seq_ins = [v for v, k in zip(node.inputs, kinds) if k == "seq"]
    if name in ("take", "embedding"):
        return kinds[0] != "seq" and node.attrs.get("axis", 0) == 0
    if any(v.rank != out_rank for v in seq_ins):
        return False
    if name in _elementwise():
        return True
    if name == "matmul":
        return all(v.rank >= 2 for v in node.inputs)
    if name in _LAST_AXIS:
        if name == "concat" and len(seq_ins) != len(node.inputs):
            return False
        axis = node.attrs.get("axis")
        axes = axis if isinstance(axis, (tuple, list)) else (axis,)
        return axis is not None and all(a < 0 for a in axes)
    return False


# Constants of at most this many entries that a step reads stay in it when its state-free part
# is hoisted out of the loop (larger ones are read from outside, not copied into the step).
SMALL_CONSTANT = 16


def hoist(body: Body, outer_seqs: list[Value], outer_nonseqs: list[Value], g: Graph, per_step: bool = True):
    """Move the state-independent part of `body` out of the loop: loop-invariant
    values, and (with `per_step`) values computed from the sequences alone, as one
    batched computation over all steps.

    Returns a new Body and the outer sequences and non-sequences it reads."""
    from .ir import producers_of

    kind: dict[int, str] = {}  # body value id -> "carry" | "seq" | "const"
    outer: dict[int, Value] = {}  # body value id -> outer Value (stacked [T, ...] for "seq")
    for v in body.carries:
        kind[v.id] = "carry"
    for v, o in zip(body.seqs, outer_seqs):
        kind[v.id], outer[v.id] = "seq", o
    for v, o in zip(body.nonseqs, outer_nonseqs):
        kind[v.id], outer[v.id] = "const", o
    outputs = body.new_carries + body.extras
    nodes = producers_of(outputs)
    for node in nodes:
        kinds = [kind.get(v.id, "const") for v in node.inputs]
        hoistable = "carry" not in kinds and node.op.name not in ("scan",) and (
            "seq" not in kinds or (per_step and _batch_polymorphic(node, kinds)))
        if not hoistable:
            for o in node.outputs:
                kind[o.id] = "carry"
            continue
        is_seq = "seq" in kinds
        with at(node.loc):
            res = g.add_node(node.op, [outer[v.id] for v in node.inputs], dict(node.attrs),
                             list(node.op.infer(node.attrs, *[outer[v.id].type for v in node.inputs])))
        for o, r in zip(node.outputs, res):
            kind[o.id] = "seq" if is_seq else "const"
            outer[o.id] = r
            r.name = o.name
    # The boundary: hoisted values read by what stays inside, or returned by the step.
    inside = [n for n in nodes if all(kind[o.id] == "carry" for o in n.outputs)]
    needed: list[Value] = []
    seen: set[int] = set()
    for v in [v for n in inside for v in n.inputs] + outputs:
        if kind.get(v.id, "const") != "carry" and v.id not in seen and v.id in outer:
            seen.add(v.id)
            needed.append(v)
    bg = Graph(float_dtype=body.graph.float_dtype, mode=body.graph.mode, mixed_precision=body.graph.mixed_precision)
    bg._random_salt = body.graph._random_salt
    mapping: dict[int, Value] = {}
    new_carries = [bg.add_input(c.name or f"state{k}", c.dtype, c.shape, unique=True) for k, c in enumerate(body.carries)]
    mapping.update({c.id: n for c, n in zip(body.carries, new_carries)})
    seqs, nonseqs, seq_outer, nonseq_outer = [], [], [], []
    for v in needed:
        p = outer[v.id].producer
        if kind[v.id] != "seq" and p is not None and p.op.name == "constant" \
                and np.size(p.attrs["value"]) <= SMALL_CONSTANT:
            # a small constant stays in the step, where emission can read it (a uint32 division by
            # 256 inside a sampling loop became a Div, not a shift, as a step input); a constant
            # sequence is sliced step by step as any other
            mapping[v.id] = bg.add_node(p.op, [], dict(p.attrs), [v.type])[0]
            continue
        if kind[v.id] == "seq":
            n = bg.add_input(v.name or "x_t", v.dtype, v.shape, unique=True)
            seqs.append(n)
            seq_outer.append(outer[v.id])
        else:
            n = bg.add_input(v.name or "p", v.dtype, v.shape, unique=True)
            nonseqs.append(n)
            nonseq_outer.append(outer[v.id])
        mapping[v.id] = n
    for node in inside:
        with at(node.loc):  # (the step's nodes keep their places in the block, not the scan call's)
            outs = bg.add_node(node.op, [mapping[v.id] for v in node.inputs], dict(node.attrs), [o.type for o in node.outputs])
        for o, n in zip(node.outputs, outs):
            mapping[o.id] = n
            n.name = o.name
    new = Body(bg, new_carries, seqs, nonseqs, [mapping[v.id] for v in body.new_carries],
               [mapping[v.id] for v in body.extras])
    return new, seq_outer, nonseq_outer


def gather_state_free_factors(body: Body) -> None:
    """Regroup the products of a step (in place) so that the factors that do not depend
    on the carried state meet in one value, which hoisting then computes for all steps
    at once: (s * a) * b -> s * (a * b), s * a - s * b -> s * (a - b), and
    concat(s1 * a1, s2 * a2) -> concat(s1, s2) * concat(a1, a2). A backward step is
    linear in its carried cotangents and multiplies them by chains of forward values
    (gate derivatives and the like); regrouped, those chains leave the loop and the
    step keeps a few multiplications per state."""
    from .ir import producers_of

    outputs = body.new_carries + body.extras
    nodes = producers_of(outputs)
    uses: dict[int, int] = {}
    for n in nodes:
        for v in n.inputs:
            uses[v.id] = uses.get(v.id, 0) + 1
    for v in outputs:
        uses[v.id] = uses.get(v.id, 0) + 2  # an output is read outside: never folded away
    g = body.graph
    stateful = {v.id for v in body.carries}

    def split(node):
        """(state-dependent input, state-free input) of a product with exactly one of each."""
        if node is None or node.op.name != "mul":
            return None
        a, b = node.inputs
        if (a.id in stateful) == (b.id in stateful):
            return None
        return (a, b) if a.id in stateful else (b, a)

    def term(v):
        """(sign, state-dependent factor, state-free factor) of s * a or -(s * a); of s or -s,
        with None for the factor 1."""
        sign = 1
        if v.producer is not None and v.producer.op.name == "neg":
            sign, v = -1, v.producer.inputs[0]
        sf = split(v.producer)
        if sf is None:
            return (sign, v, None) if v.id in stateful else None
        return (sign, *sf)

    for node in nodes:
        out = node.outputs[0]
        sf = split(node)
        if node.op.name in ("add", "sub"):
            terms = [term(v) for v in node.inputs]
            if all(t is not None for t in terms) and terms[0][1].id == terms[1][1].id \
                    and (terms[0][2] is not None or terms[1][2] is not None):
                # s*a + s*b -> s*(a + b) (with signs, and s alone as s*1): one product in the
                # step, the sum outside
                (sa, s1, a), (sb, _, b) = terms
                if node.op.name == "sub":
                    sb = -sb
                a, b = (1.0 if a is None else a), (1.0 if b is None else b)
                with at(node.loc):
                    first = a if sa > 0 else -a
                    free = first + b if sb > 0 else first - b
                if free.dtype == out.dtype and free.rank <= out.rank:
                    node.op, node.attrs, node.inputs = get_op("mul"), {}, [s1, free]
                    sf = (s1, free)
        if sf is not None:
            s, f = sf
            inner = split(s.producer)
            if inner is not None and uses.get(s.id) == 1:
                s2, f2 = inner
                merged = g.apply("mul", f2, f)
                if merged.dtype == out.dtype and merged.rank <= out.rank:
                    node.inputs = [s2, merged]
        elif node.op.name == "concat" and len(node.inputs) > 1:
            parts = [split(v.producer) for v in node.inputs]
            if all(p is not None and uses.get(v.id) == 1 and p[0].type == v.type and p[1].type == v.type
                   for p, v in zip(parts, node.inputs)):
                # counted from the end, so that hoisting can batch the state-free half over time
                axis = normalize_axis(node.attrs["axis"], out.rank) - out.rank
                with at(node.loc):
                    left = g.apply("concat", *[p[0] for p in parts], axis=axis)
                    right = g.apply("concat", *[p[1] for p in parts], axis=axis)
                stateful.add(left.id)
                node.op, node.attrs, node.inputs = get_op("mul"), {}, [left, right]
        if any(v.id in stateful for v in node.inputs):
            stateful.update(o.id for o in node.outputs)


# Hoist state-independent work out of scan steps (run_scan's default); off only to compare.
HOIST = True


def run_scan(g: Graph, body: Body, init: list[Value], seqs: list[Value], nonseqs: list[Value], reverse=False,
             truncate=None, length=None, optimize=None, stack=None, unroll=False, truncate_loc=None):
    """Apply `body` with hoisting (unless optimize=False, or HOIST is off); seqs are time-major.
    `unroll`: a fixed, short length is written out step by step instead of a loop.
    `truncate_loc`: where the spec writes truncate= (for the error about what it cuts off).
    Returns the scan node's outputs as a list."""
    if optimize is None:
        optimize = HOIST
    # The scan's own check, before hoisting takes the sequences apart: a hoisted product of a
    # shorter sequence would broadcast over the steps instead of failing.
    lengths = [s.shape[0] for s in seqs]
    if any(n != lengths[0] for n in lengths):
        raise ShapeError(f"scan: sequences have different lengths {', '.join(map(str, dict.fromkeys(lengths)))}",
                         current_loc(), "every sequence scanned together needs the same time length")
    steps = lengths[0] if seqs else length
    if truncate and not (isinstance(steps, int) and steps <= truncate):
        # the gradient stops before the first step, which alone reads the initial states (as the loop
        # zeroes their cotangents, so the unrolled steps read them through stop_gradient)
        g.truncated_inits.append((list(init), truncate, steps, truncate_loc or current_loc()))
    if body.graph.truncated_inits:
        # a truncate=K inside the step cuts off the initial states it reads there: what the step reads
        # them from (this scan's states, sequences and non-sequences) is cut off with them
        from .training import _reaching

        outer = dict(zip((v.id for v in body.carries + body.seqs + body.nonseqs), list(init) + seqs + nonseqs))
        for inner_init, k, n, loc in body.graph.truncated_inits:
            reached = _reaching(list(inner_init), cut_truncated=True)
            g.truncated_inits.append(([x for i, x in outer.items() if i in reached], k, n, loc))
    if optimize and seqs:
        hoisted = hoist(body, seqs, nonseqs, g)
        # A step left reading no sequence runs over a length, which must then be known here;
        # with a symbolic one the step keeps its sequences as they are.
        if hoisted[0].seqs or isinstance(steps, int):
            body, seqs, nonseqs = hoisted
    if unroll and isinstance(steps, int):
        return _unrolled(g, body, init, seqs, nonseqs, steps, reverse, stack, truncate)
    # a step that reads no slice of its sequences (after hoisting) still runs once per time step
    res = g.apply("scan", *init, *seqs, *nonseqs, body=body, reverse=reverse, truncate=truncate,
                  length=steps if not body.seqs else None, stack=stack)
    return list(res) if isinstance(res, tuple) else [res]


def _unrolled(g: Graph, body: Body, init, seqs, nonseqs, steps: int, reverse: bool, stack, truncate=None):
    """The scan written out: the step's nodes once per time step, outputs stacked in time order.
    With `truncate` K, the steps before the last K (in the order they run) read their state,
    sequences and non-sequences through stop_gradient, as the loop's gradient zeroes their
    cotangents: gradients flow back at most K steps."""
    from .ops.scan import clone

    flags = tuple(stack) if stack is not None else (True,) * len(init)
    state = list(init)
    per_step: list[list] = [[None] * steps for _ in body.new_carries + body.extras]
    frozen = max(0, steps - truncate) if truncate else 0
    sg = lambda v: g.apply("stop_gradient", v) if is_float(v.dtype) else v  # noqa: E731
    frozen_nonseqs = [sg(x) for x in nonseqs] if frozen else []
    for i, t in enumerate(range(steps - 1, -1, -1) if reverse else range(steps)):
        slices = [g.apply("index", s, spec=(t,)) for s in seqs]
        step_state, step_nonseqs = state, nonseqs
        if i < frozen:
            step_state, slices, step_nonseqs = [sg(x) for x in state], [sg(x) for x in slices], frozen_nonseqs
        mapping = {v.id: x for v, x in zip(body.carries, step_state)}
        mapping.update({v.id: x for v, x in zip(body.seqs, slices)})
        mapping.update({v.id: x for v, x in zip(body.nonseqs, step_nonseqs)})
        outs = clone(body.new_carries + body.extras, mapping, g)
        state = outs[:len(body.new_carries)]
        for k, o in enumerate(outs):
            per_step[k][t] = g.apply("unsqueeze", o, axes=(0,))
    stacked = [g.apply("concat", *vals, axis=0) if len(vals) > 1 else vals[0] for vals in per_step]
    res = [st if f else fin for f, st, fin in zip(flags, stacked, state)]
    return res + stacked[len(body.new_carries):]


def time_major(g: Graph, x: Value, axis: int) -> Value:
    if x.rank < 1:
        raise ShapeError(f"cannot scan over a scalar {x.type}",
                         hint="scan steps through an axis of a tensor: give over= a sequence [N, T, ...]")
    axis = axis % x.rank
    if axis == 0:
        return x
    perm = [axis] + [i for i in range(x.rank) if i != axis]
    return g.apply("transpose", x, perm=tuple(perm))


def from_time_major(g: Graph, x: Value, axis: int) -> Value:
    """x [T, ...] with its time axis moved to `axis` (counted from the front, as the sequences'
    was), or last when x has fewer axes: a per-step [N] of a scan over [N, T, E] comes back
    [N, T] whether the scan's axis was written 1 or -2."""
    axis = min(axis, x.rank - 1)
    if axis == 0:
        return x
    perm = list(range(1, x.rank))
    perm.insert(axis, 0)
    return g.apply("transpose", x, perm=tuple(perm))


def decoding_states(low, steps) -> dict | None:
    """The states that decoding (generate) carries from one call of the graph to the next, for a
    recurrent layer or scan of `steps` steps; None when not decoding, or when the layer does not step
    along the tokens' time axis: one over the characters of each token, or a fixed number of
    refinement steps, starts from its own init at every token (its state after the prompt's last
    token was the next token's initial state, with the prompt's length for a batch axis)."""
    carried = getattr(low, "recurrent_state", None)
    if carried is None:
        return None
    tokens = getattr(low, "_root", low).inputs.get(low.spec.generate["input"])
    return carried if tokens is not None and steps == tokens.shape[1] else None


class StepBuilder:
    """Builds a Body in its own Graph, capturing outer values as non-sequences."""

    def __init__(self, outer: Graph):
        self.outer = outer
        self.graph = Graph(float_dtype=outer.float_dtype, mode=outer.mode, mixed_precision=outer.mixed_precision)
        self.graph.scan_step = True
        self.graph._random_salt = outer._random_salt  # one salt stream: no two random ops alike
        self.graph.rng_inputs = self._rng_inputs
        self.nonseqs: list[Value] = []
        self.nonseq_outer: list[Value] = []
        self._captured: dict[int, Value] = {}

    def capture(self, v: Value) -> Value:
        if v.graph is self.graph:
            return v
        if v.id not in self._captured:
            n = self.graph.add_input(v.name or f"p{len(self.nonseqs)}", v.dtype, v.shape, unique=True)
            self._captured[v.id] = n
            self.nonseqs.append(n)
            self.nonseq_outer.append(v)
        return self._captured[v.id]

    def _rng_inputs(self):
        seed, step = self.outer.rng_inputs()
        return self.capture(seed), self.capture(step)


# -------------------------------------------------------------------- spec-level scan
_RUNNING: contextvars.ContextVar[tuple] = contextvars.ContextVar("running_blocks", default=())


@contextlib.contextmanager
def entering_block(name: str, loc):
    """Refuse a block that runs itself (by scan or by a call, directly or through other blocks)."""
    chain = _RUNNING.get()
    if name in chain:
        path = " -> ".join(chain[chain.index(name):] + (name,))
        raise SpecError(f"block {name!r} runs itself ({path})", loc,
                        "a block cannot contain itself; carry a state from step to step with scan's init instead")
    token = _RUNNING.set(chain + (name,))
    try:
        yield
    finally:
        _RUNNING.reset(token)


# the keywords scan() takes (flowgrad ops' usage of scan, lower.SPECIAL_FORM_DOCS, lists each)
SCAN_KEYWORDS = ("over", "init", "axis", "reverse", "mask", "truncate", "length", "unroll", "stateful")


def lower_scan(low, e: S.Call):
    """`outs: scan(block, over=x | [x, y], init=[h0, c0], axis=1, reverse=false, mask=m, truncate=K,
    length=K, unroll=false, stateful=false)`."""
    from .lower import Lowering, call_site

    if not e.args or not isinstance(e.args[0], S.Name):
        raise SpecError("scan() needs a block name first: scan(step, over=x, init=[h0])", e.loc,
                        hint="declare the step under blocks: and name it first")
    block_name = e.args[0].id
    block = low.spec.blocks.get(block_name)
    if block is None:
        raise SpecError(f"unknown block {block_name!r}", e.args[0].loc,
                        did_you_mean(block_name, low.spec.blocks) or "declare it under 'blocks:'")
    for k in e.kwargs:
        if k not in SCAN_KEYWORDS:
            raise SpecError(f"scan() has no argument {k!r}", e.kwarg_locs.get(k, e.loc),
                            did_you_mean(k, SCAN_KEYWORDS) or f"scan takes {', '.join(sorted(SCAN_KEYWORDS))}")
    if len(e.args) > 1:
        raise SpecError("scan() takes the block positionally and the rest by keyword", e.args[1].loc,
                        hint="write scan(step, over=x, init=[h0])")
    g = low.graph
    kw = {k: low.eval(v) for k, v in e.kwargs.items()}
    over = kw.get("over", [])
    over = list(over) if isinstance(over, (list, tuple)) else [over]
    init = kw.get("init", [])
    init = list(init) if isinstance(init, (list, tuple)) else [init]
    axis = kw.get("axis", 1)
    reverse = _scan_flag(kw, "reverse", e)
    truncate = _scan_count(kw, "truncate", e)
    length = _scan_count(kw, "length", e)
    unroll = _scan_flag(kw, "unroll", e)
    stateful = _scan_flag(kw, "stateful", e)
    if kw.get("mask") is not None and not isinstance(kw["mask"], Value):
        raise SpecError(f"scan() mask must be a tensor [N, T] of 1 (step) and 0 (padding), got {kw['mask']!r}",
                        e.kwarg_locs.get("mask", e.loc),
                        hint="an input m: {shape: [N, T]} (batch first, whatever axis= is), "
                             "or lengths= on the recurrent layers")
    for v, what in [(x, "over") for x in over] + [(x, "init") for x in init]:
        if not isinstance(v, Value):
            raise SpecError(f"scan() {what} must be tensors, got {v!r}", e.kwarg_locs.get(what, e.loc),
                            hint="pass graph values or inputs, e.g. over=[xs] for the sequences, "
                            "init=[zeros(N, H)] for the states")
    for x in over:
        if x.rank < 2:
            raise SpecError(f"scan() over= needs tensors with a batch and a time axis, got {x.type}",
                            e.kwarg_locs.get("over", e.loc),
                            hint="scan steps through axis 1 of [N, T, ...] by default; axis= picks another")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise SpecError(f"scan() axis must be a whole number, got {axis!r}", e.kwarg_locs.get("axis", e.loc),
                        hint="the sequences' time axis: axis=1 for [N, T, ...], axis=0 for [T, N, ...]")
    for x in over:
        if not -x.rank <= axis < x.rank:  # wrapped around, it scanned another axis without a word
            raise SpecError(f"scan() axis {axis} is out of range for a sequence {x.type}",
                             e.kwarg_locs.get("axis", e.loc), hint=f"use an axis from {-x.rank} to {x.rank - 1}")
    given_axis = axis
    if over:
        # Counted from the front from here on: the outputs put time at the same position (a
        # negative axis counted from each output's own end gave [T, N] for a per-step [N] of
        # axis=-2 where axis=1 gave [N, T]).
        axis = over[0].rank + axis if axis < 0 else axis
        for x in over[1:]:
            if (x.rank + given_axis if given_axis < 0 else given_axis) != axis:
                raise SpecError(f"scan() axis {given_axis} is axis {axis} of a sequence {over[0].type} but axis "
                                f"{x.rank + given_axis} of a sequence {x.type}", e.kwarg_locs.get("axis", e.loc),
                                hint="count the time axis from the front, the same position in every sequence "
                                     "(axis=1 for [N, T, ...])")
    if len(block.inputs) != len(over) + len(init):
        raise SpecError(f"block {block_name!r} takes {len(block.inputs)} inputs ({', '.join(block.inputs)}), "
                        f"but scan gives {len(over)} sequence(s) and {len(init)} state(s)", e.loc,
                        "the block's inputs are the sequences' steps first, then the states")
    if kw.get("mask") is not None:
        for name, v in zip(block.inputs[len(over):], init):
            if v.rank == 0:  # the loop refused it with a confusing message; unroll=true made it per-example
                raise SpecError(f"scan() mask= keeps each sequence's state at its padded steps, but state {name!r} "
                                f"is a scalar {v.type} with no batch axis", e.kwarg_locs.get("init", e.loc),
                                hint="give the state a batch axis, e.g. init=[zeros(N)], or scan without mask=")
            if v.shape[0] == 1 and kw["mask"].shape[0] != 1:
                # one row broadcast to every sequence (a parameter h0 [1, H]): the masked step's state had
                # a row per sequence, and the loop blamed the block for changing the state's shape
                raise SpecError(f"scan() mask= keeps each sequence's state at its padded steps, but state {name!r} "
                                f"is {v.type}, one row for all {kw['mask'].shape[0]} sequences",
                                e.kwarg_locs.get("init", e.loc),
                                hint="give the state a row per sequence, e.g. init=[zeros(N, H) + h0], "
                                     "or scan without mask=")
    seqs = [time_major(g, x, axis) for x in over]
    if not seqs and length is None:
        raise SpecError("scan() needs over= or length=", e.loc,
                        hint="over=x steps through x's time axis; length=K runs K steps without a sequence")
    if seqs and length is not None:
        raise SpecError("scan() takes over= or length=, not both", e.kwarg_locs.get("length", e.loc),
                        "the sequences' time axis sets the length")
    buffers = _stateful_init(low, e, block, init, reverse) if stateful else []
    if buffers:  # [B, ...] as the states' [N, ...]; N is B in training
        init = [g.apply("reshape_dims", stored, v, dims=((0, 0),) + tuple(v.shape[1:])) for (_, stored), v in zip(buffers, init)]
    carried = decoding_states(low, seqs[0].shape[0] if seqs else length)
    # one key per scan written in the spec, the same in every lowering: two in one entry
    # (scan(step, over=scan(step, ...))) carried one state for both
    key = f"scan:{getattr(low, 'state_prefix', '')}{low._target or block_name}@{call_site(e)}"
    if carried is not None and key in carried:
        init = list(carried[key])
    if carried is not None and seqs and seqs[0].shape[0] == 1 and kw.get("mask") is None:
        # One step (decoding a token): the block inline, without a loop.
        steps = [g.apply("index", x, spec=(0,)) for x in seqs]
        with entering_block(block_name, e.args[0].loc):
            body_low = _block_lowering(low, block, g, lambda v: v, dict(zip(block.inputs, steps + init)))
            new_carries, extras = _block_outputs(body_low, block, len(init), init)
        low.recurrent_final[key] = new_carries
        res = [g.apply("unsqueeze", v, axes=(0,)) for v in new_carries + extras]
        res = [from_time_major(g, r, axis) for r in res]
        return tuple(res) if len(res) > 1 else res[0]
    before = set(getattr(low, "_root", low).params)
    # The block is entered for its step only: its sequences and states, computed outside it, may be
    # scans of it too (scan(step, over=scan(step, over=x, ...), ...) is two layers of shared weights).
    with entering_block(block_name, e.args[0].loc):
        try:
            sb, seq_in, carry_in, new_carries, extras = _lower_step(low, block, [x.shape[1:] for x in seqs], over, init)
        except FlowgradError as err:
            if "axis" in e.kwargs and over and axis != 1:
                _blame_axis(low, e, block, over, init, axis, given_axis, before, err)
            raise
    mask = kw.get("mask")
    if mask is not None:
        _check_mask(mask, seqs[0].shape[0] if seqs else length,
                    [(name, v, block.output_loc(k)) for k, (name, v) in enumerate(zip(block.outputs, new_carries + extras))],
                    e)
        # [N, T] whatever the sequences' axis: it was moved as they were, so axis=0 read it as [T, N]
        # and a rank-4 sequence's axis=2 left it unmoved
        new_carries, extras, m_ins, m_seqs = _apply_mask(g, sb, carry_in, new_carries, extras,
                                                         time_major(g, g.cast(mask, g.float_dtype), 1))
        seq_in += m_ins
        seqs += m_seqs
    body = Body(sb.graph, carry_in, seq_in, sb.nonseqs, new_carries, extras)
    res = run_scan(g, body, init, seqs, sb.nonseq_outer, reverse=reverse, truncate=truncate,
                   length=length, unroll=unroll, truncate_loc=e.kwarg_locs.get("truncate"))
    if carried is not None:
        low.recurrent_final[key] = [g.apply("index", r, spec=(0 if reverse else -1,)) for r in res[:len(init)]]
    store_last_states(g, buffers, res)  # stateful=true: where the next batch starts
    if not over and axis < 0:
        # No sequence to count from: a negative axis counts from the end of the largest output.
        rank = max(r.rank for r in res)
        if axis < -rank:
            raise SpecError(f"scan() axis {axis} is out of range for outputs of rank {rank} or less",
                            e.kwarg_locs.get("axis", e.loc), hint=f"use an axis from {-rank} to {rank - 1}")
        axis += rank
    res = [from_time_major(g, r, axis) for r in res]
    return tuple(res) if len(res) > 1 else res[0]


def state_buffers(low, prefix: str, states: list[tuple[str, tuple]], loc, twice: SpecError) -> list[tuple[str, Value]]:
    """Buffers holding the states a training step starts from, those the step before ended with
    (zeros before the first): one `prefix.NAME0` per (NAME, shape of the training batch's rows).
    Returns (the buffer's graph input name, its value) each: a block's are `block.prefix.NAME0`
    (an update keyed by `prefix` matched no buffer, a KeyError traceback). `twice` is raised for
    a layer or scan run twice in a step (a block called twice), whose runs would carry one state."""
    from .ops.nn import _graph_input_name

    stored = [(name, low.add_param(f"{prefix}.{name}0", shape, "zeros", loc=loc, kind="buffer")) for name, shape in states]
    buffers = [(_graph_input_name(v) or f"{prefix}.{name}0", v) for name, v in stored]
    if any(key in low.graph.buffer_updates for key, _ in buffers):
        raise twice
    root = getattr(low, "_root", low)
    for key, _ in buffers:  # (the runtime starts each objective's step of a batch from them: see Trainer.carried)
        root.params[key].carried = True
    return buffers


def store_last_states(g: Graph, buffers: list[tuple[str, Value]], stacked: list, reverse: bool = False) -> None:
    """The states the step ends with (the last of each stacked [T, N, ...]) become the buffers'
    values for the next step, without a gradient."""
    for (key, stored), s in zip(buffers, stacked):
        last = g.apply("index", s, spec=(0 if reverse else -1,))
        g.buffer_updates[key] = g.apply("stop_gradient", g.apply("reshape_dims", last, dims=tuple(stored.shape)))


def _stateful_init(low, e, block, init: list, reverse: bool) -> list:
    """scan(..., stateful=true): the states a training step starts from are those the step before
    ended with (zeros before the first), kept as buffers of the training batch's rows; init= gives
    their shapes, and is where every other graph (eval, infer, generate) starts. Returns the
    states' buffers (state_buffers); none outside training."""
    g = low.graph
    loc = e.kwarg_locs.get("stateful", e.loc)
    if reverse:
        raise SpecError("stateful= carries the state a forward pass ends with into the next batch; a reverse "
                        "scan ends at the first step", loc, "drop reverse=, or drop stateful=")
    if g.mode != "train":  # (decoding's graphs run the step inside their own loop, one token at a time)
        return []
    if g.scan_step:  # (as a stateful layer in a step: it would start every step from the batch before)
        raise SpecError("stateful= scan is in another scan's step: it would start every step from the state "
                        "of the batch before, and the state it ends with never leaves the loop", loc,
                        "scan outside the other scan's block, or carry its states as that scan's own")
    if not init:
        raise SpecError("stateful= carries a scan's states across batches, and this scan has none", loc,
                        "give the states with init=, e.g. init=[zeros(N, H)], or drop stateful=")
    B = low.spec.batch_size
    names = block.inputs[len(block.inputs) - len(init):]
    for name, v in zip(names, init):
        p = v.producer
        zeros = p is not None and p.op.name == "fill" and float(p.attrs.get("value", 0.0)) == 0.0
        rows = v.rank >= 1 and (isinstance(v.shape[0], str) or v.shape[0] == B) \
            and all(isinstance(d, int) for d in v.shape[1:])
        if not (zeros and rows):
            raise SpecError(f"stateful= starts the first batch from zeros and each later one from the state the "
                            f"batch before ended with, a row per sequence; state {name!r} is "
                            + ("not zeros" if not zeros else f"{v.type}, not a row per sequence of fixed size"),
                            e.kwarg_locs.get("init", loc), "give each state as zeros with a row per sequence, "
                            "e.g. init=[zeros(N, H)]")
    prefix = low._target or block.name
    twice = SpecError(f"stateful= scan {prefix!r} is run more than once in a step: its runs would carry one state "
                      "between batches", loc, "call its block once per step, or give each stateful scan an entry of its own")
    return state_buffers(low, prefix, [(name, (B,) + tuple(v.shape[1:])) for name, v in zip(names, init)], e.loc, twice)


def _lower_step(low, block, step_shapes: list, over: list, init: list):
    """The block lowered as one step of a scan whose sequences' steps have `step_shapes`:
    (its StepBuilder, sequence and state inputs, new states, per-step outputs)."""
    sb = StepBuilder(low.graph)
    seq_in = [sb.graph.add_input(n, x.dtype, shape) for n, x, shape in zip(block.inputs, over, step_shapes)]
    carry_in = [sb.graph.add_input(n, v.dtype, v.shape) for n, v in zip(block.inputs[len(over):], init)]
    body_low = _block_lowering(low, block, sb.graph, sb.capture, dict(zip(block.inputs, seq_in + carry_in)))
    new_carries, extras = _block_outputs(body_low, block, len(init), carry_in)
    return sb, seq_in, carry_in, new_carries, extras


def _blame_axis(low, e, block, over: list, init: list, axis: int, given_axis: int, before: set,
                err: FlowgradError) -> None:
    """The block failed on the steps that scan's axis= cut; if it takes the steps of the default
    axis 1 ([N, T, ...] -> [N, ...]), the axis is at fault, not the block: raise that, at axis=."""
    root = getattr(low, "_root", low)
    # The failed step may have made the block's parameters with the wrong shapes: the trial makes its own
    # (the spec is refused either way).
    for n in [n for n in root.params if n not in before]:
        root.params.pop(n)
        root.graph.inputs.pop(n, None)
    try:
        _lower_step(low, block, [tuple(x.shape[:1]) + tuple(x.shape[2:]) for x in over], over, init)
    except FlowgradError:
        return  # the block fails on the default steps too: its own error stands
    names = block.inputs[:len(over)]
    got = ", ".join(f"{n} {fmt_shape(tuple(x.shape[:axis]) + tuple(x.shape[axis + 1:]))}" for n, x in zip(names, over))
    default = ", ".join(f"{n} {fmt_shape(tuple(x.shape[:1]) + tuple(x.shape[2:]))}" for n, x in zip(names, over))
    where = f" at line {err.loc.line}, column {err.loc.col}" if err.loc is not None else ""
    seq = f"{over[0].name} {fmt_shape(over[0].shape)}" if over[0].name else fmt_shape(over[0].shape)
    raise ShapeError(f"scan() axis={given_axis} makes each step's {got} (axis {axis} of {seq} taken as time), "
                     f"on which block {block.name!r} fails{where}: {err.message}",
                     e.kwarg_locs.get("axis", e.loc),
                     hint=f"axis= is the sequences' time axis; with axis=1, the default for [N, T, ...], each step "
                          f"gets {default}, which the block takes: leave out axis=") from err


def _scan_flag(kw: dict, name: str, e) -> bool:
    v = kw.get(name, False)
    if not isinstance(v, bool):
        raise SpecError(f"scan() {name} must be true or false, got {v!r}", e.kwarg_locs.get(name, e.loc),
                        hint="write true or false")
    return v


def _scan_count(kw: dict, name: str, e) -> int | None:
    """A positive whole number of steps, or None when not given."""
    v = kw.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpecError(f"scan() {name} must be a positive whole number of steps, got {v!r}",
                        e.kwarg_locs.get(name, e.loc),
                        hint=f"e.g. {name}=32")
    return v


def _check_mask(mask: Value, steps, outputs: list, e) -> None:
    """A scan's mask is [N, T], batch first and time second, whatever the sequences' axis: T the
    sequences' steps (or length=), N the first axis of the states and per-step outputs it masks."""
    loc = e.kwarg_locs.get("mask", e.loc)
    layout = "a scan's mask is [N, T] (batch, time) whatever axis= the sequences scan"
    if mask.rank != 2:
        raise ShapeError(f"scan() mask must be [N, T] (batch, time), got {mask.type}", loc,
                         hint=f"{layout}: one 1 (step) or 0 (padding) per sequence and step")
    if mask.shape[1] != steps:
        swapped = mask.shape[0] == steps
        raise ShapeError(f"scan() mask {mask.type} has {mask.shape[1]} steps where the scan runs {steps}", loc,
                         hint=f"{layout}" + ("; for a time-major mask [T, N] write transpose(m)" if swapped else ""))
    for name, v, out_loc in outputs:
        if v.rank == 0:  # a state is refused at init; an output came back [N, T], one copy per sequence
            raise ShapeError(f"scan() mask= zeroes each sequence's per-step outputs at its padded steps, but "
                             f"output {name!r} is a scalar {v.type} with no batch axis", out_loc,
                             hint="give it a batch axis (e.g. sum(..., axis=-1) per sequence), "
                                  "or scan without mask=")
        if len({mask.shape[0], v.shape[0]} - {1}) > 1:
            raise ShapeError(f"scan() mask {mask.type} is for {mask.shape[0]} sequences, but the block's "
                             f"{name!r} is {v.type}", loc,
                             hint=f"{layout}: its N is the first axis of the states and per-step outputs"
                                  + ("; for a time-major mask [T, N] write transpose(m)"
                                     if mask.shape[1] == v.shape[0] else ""))


def _apply_mask(g: Graph, sb: StepBuilder, carries, new_carries, extras, mask: Value):
    """Padded steps (mask 0) keep the state and output zeros. `mask` is time-major [T, N];
    it is shaped for broadcasting and compared once, for all steps, outside the loop.
    Returns the new carries and extras, and the step inputs with their outer sequences."""
    bg = sb.graph
    step_ins, outer, by_rank = [], [], {}

    def shaped(rank):  # (mask, keep flags) of the step, broadcastable against a value of this rank
        if rank not in by_rank:
            m = mask if rank <= 1 else g.apply("reshape", mask, shape=tuple(mask.shape) + (1,) * (rank - 1))
            keep = g.apply("gt", m, g.lift(0.0, like=m))
            pair = (bg.add_input("mask_t", bg.float_dtype, tuple(m.shape[1:]), unique=True),
                    bg.add_input("keep_t", "bool", tuple(keep.shape[1:]), unique=True))
            step_ins.extend(pair)
            outer.extend([m, keep])
            by_rank[rank] = pair
        return by_rank[rank]

    carried = [bg.apply("where", shaped(n.rank)[1], n, c) for c, n in zip(carries, new_carries)]
    outs = [y * shaped(y.rank)[0] if is_float(y.dtype)
            else bg.apply("where", shaped(y.rank)[1], y, bg.const(np.zeros((), dtype=y.dtype))) for y in extras]
    return carried, outs, step_ins, outer


def _block_lowering(outer, block, graph: Graph, capture, locals_: dict, call: str | None = None):
    """A Lowering of a block's graph into `graph`; outer values pass through `capture`.
    `call`: for a call of the block as a function (`encoder(e)`, not a scan's step), a name of
    that call, the same at every lowering of the spec: its recurrent layers and scans carry their
    states between decoding calls as the caller's own do, under that name."""
    from .lower import Lowering

    class BlockLowering(Lowering):
        def __init__(self):
            self.spec = outer.spec
            self.calls = outer.__dict__.setdefault("calls", {})
            self.graph = graph
            self.params = outer.params
            self.inputs = {}
            self.env = dict(locals_)
            self._defs = {t: (a, i) for a in block.graph for i, t in enumerate(a.targets)}
            self._evaluating = []
            self._param_edges = {}
            self._target = None
            self._layer_calls = 0
            self._root = getattr(outer, "_root", outer)  # the lowering that owns every parameter
            if call is not None and getattr(outer, "recurrent_state", None) is not None:
                self.recurrent_state, self.recurrent_final = outer.recurrent_state, outer.recurrent_final
                # each call's states apart: the block's entries are named alike in every call
                self.state_prefix = f"{getattr(outer, 'state_prefix', '')}{call}/"

        def known_names(self):
            return [*self.env, *self._defs, *block.params, *outer.known_names()]

        def lookup(self, name, loc):
            if name in self.env:
                return self.env[name]
            if name in self._defs:
                return self.evaluate_name(name)
            if name in block.params:
                p = block.params[name]
                return self.add_param(name, p.shape, p.init.kind, p.init.args, p.trainable, p.loc,
                                      seed=p.init.args.get("seed"))
            head = name.split(".", 1)[0]
            if head in self._defs:  # h.W of the block's own entry h, whose layer makes BLOCK.h.W
                self.evaluate_name(head)
                own = f"{block.name}.{name}"
                try:
                    outside = own in self._root.params and isinstance(outer.lookup(name, loc), Value)
                except SpecError:  # none outside: its error below names BLOCK.h.W
                    outside = False
                if outside:
                    # it read the enclosing graph's h.W, while h is the block's own entry: a tied
                    # decoder in a block was tied to another layer without a word
                    raise SpecError(f"{name!r} in block {block.name!r} names the parameter of the enclosing graph's "
                                    f"entry {head!r}, not that of the block's own entry {head!r}, which is {own!r}",
                                    loc, f"write {own} for the block's own parameter (a block's parameters are named "
                                         f"after the block); to read the enclosing graph's {name}, give the block's "
                                         f"entry {head!r} another name")
            elif name.startswith(f"{block.name}.") and name.split(".", 2)[1] in self._defs:
                self.evaluate_name(name.split(".", 2)[1])  # BLOCK.h.W read before the block's entry h
            try:
                v = outer.lookup(name, loc)
            except SpecError as err:
                if err.message == f"undefined name {name!r}":  # the block's own names are candidates too
                    err.hint = did_you_mean(name, self.known_names()) or err.hint
                raise
            return capture(v) if isinstance(v, Value) else v

        def add_param(self, name, shape, init_kind, init_args=None, trainable=True, loc=None, kind="param", seed=None):
            full = f"{block.name}.{name}"  # a block's parameters are shared by every use of the block
            made = self._root.params.get(full)
            if made is None:
                self._root.add_param(full, shape, init_kind, init_args, trainable, loc, kind, seed)
            elif tuple(made.value.shape) != tuple(shape):  # (it failed later, in an op the user never wrote)
                raise ShapeError(f"parameter {full!r} is {fmt_shape(shape)} in this use of block {block.name!r}, "
                                 f"but {fmt_shape(made.value.shape)} in an earlier one", loc,
                                 "a block's parameters are shared by all its uses: give it inputs of the same "
                                 "size each time, or write another block for the other size")
            return capture(outer.lookup(full, loc))  # through the outer lowering, which may capture it too

    return BlockLowering()


def _block_outputs(body_low, block, n_states: int, carry_in: list) -> tuple[list, list]:
    outs = []
    for name in block.outputs:
        v = body_low.lookup(name, block.output_loc(len(outs)))
        if not isinstance(v, Value):
            v = body_low.graph.lift(v)
        outs.append(v)
    if len(outs) < n_states:
        raise SpecError(f"block {block.name!r} returns {len(outs)} value(s) for {n_states} state(s)",
                        block.output_loc(len(outs) - 1) if outs else block.loc,
                        hint="a step returns its new states first, one per init, then any per-step outputs")
    new_carries, extras = outs[:n_states], outs[n_states:]
    for k, (c, n) in enumerate(zip(carry_in, new_carries)):
        if c.type != n.type:
            if c.shape != n.shape:
                raise ShapeError(f"block {block.name!r} returns state {block.outputs[k]!r} as {n.type}, "
                                 f"but takes it as {c.type}", block.output_loc(k),
                                 hint="a state keeps its type and shape from step to step")
            new_carries[k] = body_low.graph.cast(n, c.dtype)
    return new_carries, extras


# -------------------------------------------------------------------- ready-made cells
from .init import bias_init  # noqa: E402
from .layers import LAYERS, Layer, _arg_loc, _init, _int_arg  # noqa: E402


def _lstm_step(bg, xw, carries, U, bias_u, H, ln, extra):
    h, c = carries
    z = xw + h @ U
    if ln is not None:
        z = bg.apply("layer_norm", z, *ln[0])
    i, f, gg, o = bg.apply("split", z, sections=4, axis=-1)
    c2 = bg.apply("sigmoid", f, gate=True) * c + bg.apply("sigmoid", i, gate=True) * bg.apply("tanh", gg)
    cc = bg.apply("layer_norm", c2, *ln[1]) if ln is not None else c2
    h2 = bg.apply("sigmoid", o, gate=True) * bg.apply("tanh", cc)
    return [h2, c2]


def _gru_step(bg, xw, carries, U, bias_u, H, ln, linear_before_reset):
    (h,) = carries
    xrz, xn = bg.apply("split", xw, sections=[2 * H, H], axis=-1)
    # One product with the state for all the gates it feeds (a third of the loop's kernels).
    if linear_before_reset:
        hrz, hn = bg.apply("split", h @ U + bias_u, sections=[2 * H, H], axis=-1)
    else:
        Urz, Un = bg.apply("split", U, sections=[2 * H, H], axis=-1)
        brz, bn = bg.apply("split", bias_u, sections=[2 * H, H], axis=-1)
        hrz = h @ Urz + brz
    if ln is not None:
        hr, hz = bg.apply("split", hrz, sections=2, axis=-1)
        hrz = bg.apply("concat", bg.apply("layer_norm", hr, *ln[0]), bg.apply("layer_norm", hz, *ln[1]), axis=-1)
    # Both sigmoid gates in one pass over [N, 2H].
    r, z = bg.apply("split", bg.apply("sigmoid", xrz + hrz, gate=True), sections=2, axis=-1)
    if linear_before_reset:  # PyTorch and cuDNN: r gates the projected state
        n = bg.apply("tanh", xn + r * hn)
    else:  # Cho et al. 2014: r gates the state before projection
        n = bg.apply("tanh", xn + (r * h) @ Un + bn)
    return [n + z * (h - n)]  # (1 - z) * n + z * h in three kernels instead of four


def _rnn_step(bg, xw, carries, U, bias_u, H, ln, act):
    (h,) = carries
    z = xw + h @ U
    if ln is not None:
        z = bg.apply("layer_norm", z, *ln[0])
    return [bg.apply(act, z)]


CELLS = {  # name: (gates, states, step)
    "rnn": (1, 1, _rnn_step),
    "lstm": (4, 2, _lstm_step),
    "gru": (3, 1, _gru_step),
}


def cell_params(low, e, cell: str, E: int, H: int, prefix: str, layer_norm: bool, weight_init=None):
    """A cell's parameters (input W, recurrent U, bias b, GRU's hidden bias bu, layer-norm pairs).
    W and U start from glorot_uniform and orthogonal, or both from `weight_init` (the call's
    weight_init=); the biases from bias_init's rule: zeros, but under torch_uniform every weight and
    bias draws from U(+-1/sqrt(H)), as nn.RNN/LSTM/GRU's reset_parameters (fan_in = hidden_size): GRU's
    b and bu are torch's b_ih and b_hh; an LSTM's or RNN's one b is their sum (b_ih + b_hh)."""
    gates = CELLS[cell][0]
    if weight_init is None:
        w_init, u_init, kind = ("glorot_uniform", {}), ("orthogonal", {}), None
    else:
        kind, _ = _init(weight_init, "", loc=e.kwarg_locs.get("weight_init", e.loc))
        w_init = u_init = (kind, {"fan_in": H} if kind == "torch_uniform" else {})
    W = low.add_param(f"{prefix}.W", (E, gates * H), *w_init, loc=e.loc)
    U = low.add_param(f"{prefix}.U", (H, gates * H), *u_init, loc=e.loc)
    b = low.add_param(f"{prefix}.b", (gates * H,), *bias_init(kind, U.shape, H, 1 if cell == "gru" else 2), loc=e.loc)
    bu = low.add_param(f"{prefix}.bu", (gates * H,), *bias_init(kind, U.shape, H), loc=e.loc) if cell == "gru" else None
    if not layer_norm:
        return W, U, b, bu, None
    n_ln = 1 if cell == "rnn" else 2  # rnn normalizes only its pre-activation
    size = [gates * H, H] if cell == "lstm" else ([H, H] if cell == "gru" else [gates * H])
    ln = [(low.add_param(f"{prefix}.ln{k}.gamma", (size[k],), "ones", loc=e.loc),
           low.add_param(f"{prefix}.ln{k}.beta", (size[k],), "zeros", loc=e.loc)) for k in range(n_ln)]
    return W, U, b, bu, ln


def recurrent_layer(low, e, cell: str, x: Value, H: int, prefix: str, reverse=False, mask=None, init=None,
                    truncate=None, layer_norm=False, act="tanh", linear_before_reset=True, unroll=False,
                    stateful=False, weight_init=None):
    """One recurrent layer over x [N, T, E]; returns (hs [N, T, H], final states)."""
    g = low.graph
    gates, n_states, step = CELLS[cell]
    if x.rank != 3:
        raise ShapeError(f"{cell}() needs an input [N, T, features], got {x.type}", e.loc,
                         hint="a sequence layer reads [N, T, features]; a one-step cell reads [N, features]")
    E = x.shape[2]
    W, U, b, bu, ln_params = cell_params(low, e, cell, E, H, prefix, layer_norm, weight_init)
    carried = decoding_states(low, x.shape[1])
    key = getattr(low, "state_prefix", "") + prefix
    if carried is not None and key in carried:
        # the state after the tokens so far, whatever init= says: init= (a decoder's encoder
        # summary, a learnt h0) is where the first token starts, not every token
        init = carried[key]
    if carried is not None and x.shape[1] == 1 and mask is None:
        # One step (sampling a token): the cell inline, without a loop.
        init = init or [g.apply("fill", x, dims=((0, 0), H), dtype=g.float_dtype) for _ in range(n_states)]
        x0 = g.apply("index", x, spec=((None, None, None), 0))  # x[:, 0]: [N, E]
        ln = [tuple(pair) for pair in ln_params] if ln_params else None
        extra = {"lstm": None, "gru": linear_before_reset, "rnn": act}[cell]
        new = step(g, x0 @ W + b, list(init), U, bu, H, ln, extra)
        low.recurrent_final[key] = new
        return g.apply("unsqueeze", new[0], axes=(1,)), new
    sb = StepBuilder(g)
    bg = sb.graph
    xs = time_major(g, x, 1)
    x_t = bg.add_input("x_t", x.dtype, xs.shape[1:])
    carries = [bg.add_input(n, x.dtype, (x.shape[0], H)) for n in (["h", "c"][:n_states])]
    xw = x_t @ sb.capture(W) + sb.capture(b)  # hoisted out of the loop by run_scan
    ln = [tuple(sb.capture(p) for p in pair) for pair in ln_params] if ln_params else None
    extra = {"lstm": None, "gru": linear_before_reset, "rnn": act}[cell]
    new = step(bg, xw, carries, sb.capture(U), sb.capture(bu) if bu is not None else None, H, ln, extra)
    seqs, seq_in, extras = [xs], [x_t], []
    if mask is not None:
        new, extras, m_ins, m_seqs = _apply_mask(g, sb, carries, new, [new[0]], time_major(g, g.cast(mask, g.float_dtype), 1))
        seq_in += m_ins
        seqs += m_seqs
    buffers = []  # (graph input name, value: under mixed precision a cast of the stored buffer)
    if stateful and g.scan_step:
        # run once per step of the scan: each would start from the stored state, and the state it ends
        # with never leaves the loop (the stored one stayed zero and the layer trained without a word)
        raise SpecError(f"stateful= layer {prefix!r} is in a scan's step (a block that scan runs, or one it "
                        "calls): it would start every step from the state of the batch before, and the state "
                        "it ends with never leaves the loop", e.kwarg_locs.get("stateful", e.loc),
                        "apply the layer outside the scan's block, or carry its states as the scan's own with "
                        "init= and return_state=true")
    if stateful and g.mode == "train" and init is None:
        # Carried across batches: the state after this batch starts the next one.
        twice = SpecError(f"stateful= layer {prefix!r} is applied more than once in a step (a block called "
                          "twice): its calls would carry one state between batches", e.kwarg_locs.get("stateful", e.loc),
                          "call the block once per step, or carry the states yourself with init= and return_state=true")
        buffers = state_buffers(low, prefix, [(n, (low.spec.batch_size, H)) for n in ("h", "c")[:n_states]], e.loc, twice)
        init = [g.apply("reshape_dims", b, x, dims=((0, 0), H)) for _, b in buffers]  # [N, H]; N must be B
    if init is None:
        init = [g.apply("fill", x, dims=((0, 0), H), dtype=g.float_dtype) for _ in carries]
    body = Body(bg, carries, seq_in, sb.nonseqs, new, extras)
    res = run_scan(g, body, list(init), seqs, sb.nonseq_outer, reverse=reverse, truncate=truncate, unroll=unroll,
                   truncate_loc=e.kwarg_locs.get("truncate"))
    store_last_states(g, buffers, res[:n_states], reverse)
    stacked_states, ys = res[:n_states], res[n_states:]
    hs = ys[0] if ys else stacked_states[0]
    finals = [g.apply("index", s, spec=(0 if reverse else -1,)) for s in stacked_states]
    if carried is not None:
        low.recurrent_final[key] = finals
    return from_time_major(g, hs, 1), finals


class Recurrent(Layer):
    keywords = ("layers", "reverse", "mask", "lengths", "init", "truncate", "layer_norm", "return_state", "act", "unroll",
                "stateful",
                "linear_before_reset", "dropout", "weight_init")
    positional = ("x", "units")
    required = ("x", "units")

    def __init__(self, cell):
        self.name = cell
        self.usage = (f"{cell}(x, units, layers=1, reverse=false, mask=m | lengths=len, "
                      f"init=[{'h0, c0' if cell == 'lstm' else 'h0'}] (each [N, units], or [layers, N, units]), "
                      "truncate=K, layer_norm=false, return_state=false | true (the top layer's final states) "
                      "| all (every layer's, [layers, N, units]), "
                      "dropout=0 (between layers), stateful=false, unroll=false, "
                      "weight_init=glorot_uniform (W; U orthogonal; torch_uniform: W, U and biases as nn."
                      + {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[cell] + ")"
                      + {"rnn": ", act=tanh", "gru": ", linear_before_reset=true", "lstm": ""}[cell] + ")")
        self.doc = (f"{'An LSTM' if cell == 'lstm' else 'A GRU' if cell == 'gru' else 'An RNN'} over x [N, T, E]: the "
                    f"hidden states [N, T, units] (a scan with a symbolic backward loop), making NAME.W, NAME.U, "
                    f"NAME.b{', NAME.bu' if cell == 'gru' else ''} per layer.")

    def __call__(self, low, e, args, kwargs):
        a = self.bind(e, args, kwargs)
        x = a["x"]
        if not isinstance(x, Value):
            raise SpecError(f"{self.name}() needs a tensor input", e.loc,
                            hint=f"usage: {self.usage}")
        H = _int_arg(a["units"], "units", _arg_loc(e, "units", 1), self.name)
        _check_cell_args(a, e, self.name)
        n_layers = _int_arg(a.get("layers", 1), "layers", e.kwarg_locs.get("layers", e.loc), self.name)
        inits = _layer_inits(low.graph, _check_init(a, e, self.name, x, H, n_layers), n_layers)
        mask = _mask_of(low, e, x, a)
        _check_truncate(a, e)
        prefix = low.layer_name(self.name)
        hs, finals = x, []
        for layer in range(n_layers):
            name = prefix if n_layers == 1 else f"{prefix}.l{layer + 1}"
            if layer and a.get("dropout"):
                hs = low.graph.apply("dropout", hs, rate=float(a["dropout"]))
            hs, fin = recurrent_layer(low, e, self.name, hs, H, name, reverse=bool(a.get("reverse", False)), mask=mask,
                                      init=inits[layer], truncate=a.get("truncate"),
                                      layer_norm=bool(a.get("layer_norm", False)), act=a.get("act", "tanh"),
                                      linear_before_reset=bool(a.get("linear_before_reset", True)),
                                      unroll=bool(a.get("unroll", False)), stateful=bool(a.get("stateful", False)),
                                      weight_init=a.get("weight_init"))
            finals.append(fin)
        if a.get("return_state") == "all":  # every layer's final states, stacked [K, N, H] as init= takes them
            return (hs, *_stacked_finals(low.graph, finals))
        if a.get("return_state"):
            return (hs, *finals[-1])  # the top layer's [N, H]
        return hs


def _layer_inits(g, init: list | None, n_slices: int) -> list:
    """Each layer's initial states from init= as _check_init read it: a stacked [K, N, H] state gives
    layer k its slice; a [N, H] one (one layer) is that layer's. None where init= is left out.
    A bidirectional layer's [2K, N, H] has a slice per layer and direction (layer k's forward
    at 2k, its reverse at 2k + 1): `n_slices` is 2K."""
    if init is None:
        return [None] * n_slices
    return [[g.apply("index", v, spec=(k,)) if v.rank == 3 else v for v in init] for k in range(n_slices)]


def _stacked_finals(g, finals: list[list]) -> list:
    """Each state's finals (one list of states per layer, or per layer and direction as _layer_inits
    slices them) stacked [K, N, H] in that order: what return_state=all gives and init= takes."""
    return [g.apply("concat", *(g.apply("unsqueeze", fin[i], axes=(0,)) for fin in finals), axis=0)
            if len(finals) > 1 else g.apply("unsqueeze", finals[0][i], axes=(0,)) for i in range(len(finals[0]))]


def _check_truncate(a: dict, e) -> None:
    t = a.get("truncate")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        raise SpecError(f"truncate must be a positive whole number of steps, got {t!r}", e.kwarg_locs.get("truncate", e.loc),
                        hint="e.g. truncate=32")


RNN_ACTS = ("tanh", "relu", "sigmoid")


def _check_cell_args(a: dict, e, cell: str, bidirectional: bool = False) -> None:
    """The cells' keyword arguments that would otherwise be read loosely (bool("maybe")) or
    not at all (act= of an lstm): located errors."""
    where = lambda k: e.kwarg_locs.get(k, e.loc)  # noqa: E731
    if a.get("dropout") is not None:
        d = a["dropout"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise SpecError(f"dropout between layers must be a rate in [0, 1), got {d!r}", where("dropout"),
                            hint="e.g. dropout=0.2")
    r = a.get("return_state", False)
    if not isinstance(r, bool) and r != "all":
        shadowed = isinstance(r, Value) and r.name == "all"  # an entry named all is read as itself
        raise SpecError(f"return_state must be true, false or all, got {f'the tensor {r.type}' if isinstance(r, Value) else repr(r)}",
                        where("return_state"),
                        hint=("the entry named all is read here: rename it to write return_state=all" if shadowed else
                              "return_state=true gives the top layer's final states, its two directions "
                              "concatenated [N, 2 * H]; return_state=all every layer's, stacked [2 * layers, N, H]"
                              if bidirectional else
                              "return_state=true gives the top layer's final states [N, H]; return_state=all every "
                              "layer's, stacked [layers, N, H]"))
    for k in ("reverse", "layer_norm", "unroll", "stateful", "linear_before_reset"):
        if k in a and not isinstance(a[k], bool):
            raise SpecError(f"{k} must be true or false, got {a[k]!r}", where(k),
                            hint="write true or false")
    if "linear_before_reset" in a and cell != "gru":  # was read by gru only, ignored by the others
        raise SpecError(f"linear_before_reset= is for gru; {cell} has no reset gate", where("linear_before_reset"),
                        "leave it out")
    if a.get("dropout") and a.get("layers", 1) == 1 and not isinstance(a.get("layers", 1), bool):
        raise SpecError(f"dropout= acts between stacked layers, and this {cell} has one", where("dropout"),
                        "add layers=2 or more, or apply dropout(...) to its input or output")
    if "act" in a:
        if cell != "rnn":
            raise SpecError(f"act= is for rnn; {cell} has its own gate activations", where("act"), "leave it out")
        if a["act"] not in RNN_ACTS:
            raise SpecError(f"act must be one of {', '.join(RNN_ACTS)}, got {a['act']!r}", where("act"),
                            did_you_mean(str(a["act"]), RNN_ACTS) or f"write e.g. act={RNN_ACTS[0]}")
    lengths = a.get("lengths")
    if lengths is not None and (not isinstance(lengths, Value) or lengths.rank != 1):
        raise SpecError(f"lengths must be a vector [N] of sequence lengths, got {getattr(lengths, 'type', lengths)}",
                        where("lengths"),
                        hint="an int input [N] holding each row's number of steps")
    if lengths is not None and lengths.dtype not in ("int64", "int32"):
        # it was compared with the steps' int64 positions: "lt: cannot compare int64 with float32",
        # an op the spec never wrote
        raise SpecError(f"lengths must count steps in whole numbers (int64), got {lengths.type}", where("lengths"),
                        hint="declare the lengths input with dtype: int64, or pass cast(len, 'int64')")
    if a.get("stateful") and (a.get("init") is not None or a.get("reverse")):
        raise SpecError("stateful= carries the last state of a forward pass into the next batch: "
                        "it takes no init= and no reverse=", where("stateful"),
                        "drop init= and reverse=, or drop stateful=")


def _check_init(a: dict, e, cell: str, x: Value, H: int, n_layers: int = 1, directions: int = 1) -> list | None:
    """init= of a recurrent layer against the states it carries: a wrong count or shape reached the
    scan under the layer, whose error spoke of a block and a step the spec never wrote ('scan inputs do
    not match its step's inputs', 'initial state float32[N, 4] does not match the step's state').
    Each state is [N, H], or stacked [K, N, H] for K layers (PyTorch's h_0, c_0; what
    return_state=all gives), layer k starting from its slice; a [N, H] state of a stacked layer is
    refused, since it would start the first layer alone and the layers above from zeros. With
    `directions` 2 (bidirectional) each state is stacked [2K, N, H] layer-major, as PyTorch's h_0
    of a bidirectional module: layer k's forward direction at 2k, its reverse at 2k + 1.
    Returns the states, or None where init= is left out."""
    init = a.get("init")
    if init is None:
        return None
    names = ("h0", "c0")[:CELLS[cell][1]]
    from .init import INITS

    if isinstance(init, str) and init in INITS:  # dense's and conv2d's init= is their weights' initialiser
        raise SpecError(f"init= of a{'n' if cell[0] in 'lr' else ''} {cell} gives its initial states "
                        f"[{', '.join(names)}], not an initialiser ({init})", e.kwarg_locs.get("init", e.loc),
                        f"write weight_init={init} for the weights' initialiser")
    slices = n_layers * directions
    bi = directions > 1
    what = f"bidirectional {cell}" if bi else cell
    one = f"{x.dtype}{fmt_shape((x.shape[0], H))}"
    stacked = f"{x.dtype}{fmt_shape((slices, x.shape[0], H))}"
    want = one if slices == 1 else stacked
    loc = e.kwarg_locs.get("init", e.loc)
    listed = f"[{', '.join(names)}]"
    if not isinstance(init, (list, tuple)) or len(init) != len(names):
        got = f"{len(init)} state(s)" if isinstance(init, (list, tuple)) else "a tensor, not a list"
        raise SpecError(f"init= gives {got}, and {'an' if what[0] in 'lr' else 'a'} {what} carries {len(names)}"
                        f"{' per direction' if bi else ''}: init={listed}, each {want}", loc,
                        f"write init={listed}" + (" (its hidden and cell states)" if cell == "lstm" else ""))
    layers = f"{n_layers} layer{'s' if n_layers > 1 else ''}"
    order = "layer k's forward direction at 2k, its reverse at 2k + 1"
    for v, name in zip(init, names):
        if bi and isinstance(v, Value) and v.rank == 2 and v.dtype == x.dtype \
                and tuple(v.shape) == (x.shape[0], 2 * H):
            # what return_state=true gives: the two directions side by side, for a decoder of 2H units
            raise SpecError(f"init= state {name} is {v.type}, the two directions concatenated (what "
                            f"return_state=true gives), and this {what} takes them stacked: {stacked}", loc,
                            f"give each state as {stacked}, {order} (what return_state=all of a "
                            f"{n_layers}-layer bidirectional {cell} gives)")
        if slices > 1 and isinstance(v, Value) and v.rank == 2:
            # it started the first layer alone, and the layers above from zeros: an encoder's final
            # states given to a stacked decoder reached its bottom layer only, without a word
            if bi:
                raise SpecError(f"init= gives one direction's states, and this {what} has 2 directions"
                                f"{f' in each of its {layers}' if n_layers > 1 else ''}: {name} is {v.type}", loc,
                                f"give each state stacked {stacked}, {order} (what return_state=all of a "
                                f"{n_layers}-layer bidirectional {cell} gives, PyTorch's h_0)")
            raise SpecError(f"init= gives one layer's states, and this {cell} has {layers}: {name} is {v.type}, "
                            "and the layers above the first would start from zeros", loc,
                            f"give each state stacked for every layer, {stacked} (what return_state=all of a "
                            f"{n_layers}-layer {cell} gives), or stack the layers as entries of their own")
        if isinstance(v, Value) and v.rank == 3 and v.dtype == x.dtype and tuple(v.shape[1:]) == (x.shape[0], H) \
                and v.shape[0] != slices:
            if bi:
                other = v.shape[0] // 2 if isinstance(v.shape[0], int) and v.shape[0] % 2 == 0 else None
                raise ShapeError(f"init= state {name} is {v.type}, {v.shape[0]} slice(s), and this {what} has "
                                 f"{layers} of 2 directions, {slices} slices", loc,
                                 f"give each state as {stacked}, {order}"
                                 + (f", or set layers={other}" if other else ""))
            raise ShapeError(f"init= state {name} is {v.type}, stacked for {v.shape[0]} layer(s), and this {cell} has "
                             f"{layers}", loc, f"give each state as {stacked}, one [N, H] slice per layer"
                             + (f" (or as {one})" if n_layers == 1 else "") + f", or set layers={v.shape[0]}")
        if not isinstance(v, Value) or v.dtype != x.dtype or tuple(v.shape) not in (
                ((x.shape[0], H),) if slices == 1 else ()) + ((slices, x.shape[0], H),):
            got = v.type if isinstance(v, Value) else repr(v)
            each = (f", for each direction of each of its {layers})" if n_layers > 1 else ", for each direction)") \
                if bi else (f", for each of its {layers})" if n_layers > 1 else ")")
            # [N, 2H]: a bidirectional encoder's return_state=true, its two directions side by side
            doubled = isinstance(v, Value) and not bi and tuple(v.shape) == (x.shape[0], 2 * H)
            raise ShapeError(f"init= state {name} is {got}, but the {what}'s states are {want} (the batch of its input "
                             f"and units={H}" + each, loc, f"give each initial state as {want}"
                             + (f", {order}" if bi else "")
                             + (f"; [N, {2 * H}] is what a bidirectional layer of {H} units gives with "
                                f"return_state=true: give this {cell} {2 * H} units, or map each state to {H} first "
                                f"(dense(..., {H}, act=tanh))" if doubled else ""))
    return list(init)


def _mask_of(low, e, x, a):
    if a.get("mask") is not None and a.get("lengths") is not None:
        raise SpecError("give mask= or lengths=, not both", e.loc,
                        hint="lengths= is the shorter way to give the same padding")
    if a.get("lengths") is not None:
        lengths = a["lengths"]
        g = low.graph
        steps = g.apply("positions", x, axis=1)
        if lengths.dtype != steps.dtype:  # int32 lengths, compared with the int64 positions
            lengths = g.cast(lengths, steps.dtype)
        return g.cast(g.apply("lt", g.apply("unsqueeze", steps, axes=(0,)), g.apply("unsqueeze", lengths, axes=(1,))),
                      g.float_dtype)
    return a.get("mask")


class Bidirectional(Layer):
    name = "bidirectional"
    positional = ("cell", "x", "units")
    # a reverse pass is already in it; states carried across batches would be two, one per direction
    keywords = tuple(k for k in Recurrent.keywords if k not in ("reverse", "stateful")) + ("merge",)
    required = ("cell", "x", "units")
    doc = "A forward and a reverse layer of the cell over x [N, T, E], their states concatenated (or summed) per step."
    usage = ("bidirectional(lstm | gru | rnn, x, units, merge=concat | sum, layers=1, dropout=0 (between layers), "
             "mask=m | lengths=len, init=[h0, c0 (lstm)] (each [2 * layers, N, units]: layer k's forward "
             "direction at 2k, its reverse at 2k + 1), return_state=false | true (the top layer's final "
             "states, its directions concatenated [N, 2 * units]) | all (every layer's and direction's, "
             "[2 * layers, N, units]), truncate=K, layer_norm=false, unroll=false, act=tanh (rnn), "
             "linear_before_reset=true (gru), weight_init=glorot_uniform (W; U orthogonal; torch_uniform: "
             "W, U and biases as nn.LSTM/GRU/RNN(bidirectional=True)))")

    def __call__(self, low, e, args, kwargs):
        a = self.bind(e, args, kwargs)
        cell = a["cell"]
        if cell not in CELLS:
            raise SpecError(f"bidirectional() needs a cell (rnn, lstm or gru), got {cell!r}", e.args[0].loc if e.args else e.loc,
                            did_you_mean(str(cell), CELLS) or "write e.g. bidirectional(lstm, x, H)")
        merge = a.pop("merge", "concat")
        if merge not in ("concat", "sum"):
            close = did_you_mean(merge, ("concat", "sum")) if isinstance(merge, str) else None
            raise SpecError(f"merge must be concat or sum, got {merge!r}", e.kwarg_locs.get("merge", e.loc),
                            hint=f"{close} (merge=concat or merge=sum)" if close else "merge=concat or merge=sum")
        x, H = a.pop("x"), a.pop("units")
        a.pop("cell")
        if not isinstance(x, Value):
            raise SpecError("bidirectional() needs a tensor input", _arg_loc(e, "x", 1), hint=f"usage: {self.usage}")
        prefix = low.layer_name("bidirectional")
        _check_cell_args(a, e, cell, bidirectional=True)
        mask = _mask_of(low, e, x, a)
        _check_truncate(a, e)
        n_layers = _int_arg(a.get("layers", 1), "layers", e.kwarg_locs.get("layers", e.loc), "bidirectional")
        units = _int_arg(H, "units", _arg_loc(e, "units", 2), "bidirectional")
        # one slice per layer and direction, layer-major as PyTorch's h_0 and h_n of a bidirectional module
        inits = _layer_inits(low.graph, _check_init(a, e, cell, x, units, n_layers, directions=2), 2 * n_layers)
        merged, finals = x, []
        for layer in range(n_layers):  # each layer reads the merged sequence of the one below
            name = prefix if n_layers == 1 else f"{prefix}.l{layer + 1}"
            if layer and a.get("dropout"):
                merged = low.graph.apply("dropout", merged, rate=float(a["dropout"]))
            outs = []
            for d, (direction, rev) in enumerate((("fw", False), ("bw", True))):
                # the reverse direction's final states are those at step 0 (each row's own last step
                # for the forward one under lengths=), as recurrent_layer gives them
                hs, fin = recurrent_layer(low, e, cell, merged, units, f"{name}.{direction}", reverse=rev, mask=mask,
                                          init=inits[2 * layer + d], truncate=a.get("truncate"),
                                          layer_norm=bool(a.get("layer_norm", False)), act=a.get("act", "tanh"),
                                          linear_before_reset=bool(a.get("linear_before_reset", True)),
                                          unroll=bool(a.get("unroll", False)), weight_init=a.get("weight_init"))
                outs.append(hs)
                finals.append(fin)
            merged = outs[0] + outs[1] if merge == "sum" else low.graph.apply("concat", outs[0], outs[1], axis=-1)
        # the states are per direction whatever merge= does with the sequences
        g = low.graph
        if a.get("return_state") == "all":  # [2K, N, H]: layer k's forward at 2k, its reverse at 2k + 1
            return (merged, *_stacked_finals(g, finals))
        if a.get("return_state"):  # the top layer's directions side by side [N, 2H], for a decoder of 2H units
            return (merged, *(g.apply("concat", fw, bw, axis=-1) for fw, bw in zip(finals[-2], finals[-1])))
        return merged


for _cell in CELLS:
    LAYERS[_cell] = Recurrent(_cell)
LAYERS["bidirectional"] = Bidirectional()


class Cell(Layer):
    """rnn_cell(x, h) / gru_cell(x, h) / lstm_cell(x, h, c): one step, for blocks; returns the new state(s)."""

    keywords = ("layer_norm", "act", "linear_before_reset", "weight_init")

    def __init__(self, cell):
        self.cell = cell
        self.name = f"{cell}_cell"
        gates, n_states, _ = CELLS[cell]
        self.positional = ("x", "h", "c")[:1 + n_states]
        self.required = self.positional
        self.doc = ("One step of the cell, for a scan's block: the new state(s), making NAME.W, NAME.U, NAME.b"
                    + (", NAME.bu." if cell == "gru" else "."))
        self.usage = f"{self.name}({', '.join(self.positional)}, layer_norm=false" + \
            {"rnn": ", act=tanh", "gru": ", linear_before_reset=true", "lstm": ""}[cell] + \
            ", weight_init=glorot_uniform (W; U orthogonal; torch_uniform: W, U and biases as nn." + \
            {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}[cell] + "))"

    def __call__(self, low, e, args, kwargs):
        a = self.bind(e, args, kwargs)
        _check_cell_args(a, e, self.cell)  # act= of an lstm_cell, layer_norm="maybe": located errors
        gates, n_states, step = CELLS[self.cell]
        x, states = a["x"], [a[k] for k in self.positional[1:]]
        for v, k in zip([x] + states, self.positional):
            if not isinstance(v, Value) or v.rank != 2:
                raise ShapeError(f"{self.name}() needs {k} as [N, features], got {getattr(v, 'type', v)}", e.loc,
                                 hint="a one-step cell reads one step; for a sequence use lstm, gru or rnn")
        H = states[0].shape[-1]
        for v, k in zip(states[1:], self.positional[2:]):
            # (an lstm_cell's c narrower than h failed in a mul inside the cell); a row for all
            # sequences, a learnt c0 [1, H], broadcasts as it always did
            rows = {v.shape[0], states[0].shape[0]}
            if v.dtype != states[0].dtype or v.shape[-1] != H or (len(rows) > 1 and 1 not in rows):
                raise ShapeError(f"{self.name}() needs its states of one shape: {k} is {v.type}, h is {states[0].type}",
                                 e.loc, "give the cell and hidden states with the same batch and width")
        prefix = low.layer_name(self.name)
        W, U, b, bu, ln = cell_params(low, e, self.cell, x.shape[-1], H, prefix, bool(a.get("layer_norm")),
                                    a.get("weight_init"))
        extra = {"lstm": None, "gru": bool(a.get("linear_before_reset", True)), "rnn": a.get("act", "tanh")}[self.cell]
        new = step(low.graph, x @ W + b, states, U, bu, H, ln, extra)
        return tuple(new) if len(new) > 1 else new[0]


class Attention(Layer):
    """additive_attention(query, keys, units, values=keys, mask=m): Bahdanau attention with its own
    parameters; returns (context, weights). With tensors for W, U, v it is the raw op."""

    name = "additive_attention"
    doc = "Bahdanau attention with parameters of its own: (context, weights); with tensors W, U, v given, the op."
    positional = ("query", "keys", "units")
    keywords = ("values", "mask")
    required = ("query", "keys", "units")
    usage = "additive_attention(query, keys, units, values=keys, mask=m)"

    def applies(self, args, kwargs):
        return len(args) == 3 and not isinstance(args[2], Value)

    def __call__(self, low, e, args, kwargs):
        a = self.bind(e, args, kwargs)
        q, k = a["query"], a["keys"]
        units = _int_arg(a["units"], "units", _arg_loc(e, "units", 2), "additive_attention")
        for v, what in ((q, "query"), (k, "keys")):
            if not isinstance(v, Value):
                raise SpecError(f"additive_attention() needs {what} as a tensor", e.loc,
                                hint="usage: additive_attention(query, keys, units, values=keys, mask=m)")
        values = a.get("values", k)
        mask = a.get("mask")
        if mask is None:
            mask = low.graph.apply("fill", k, dims=((0, 0), (0, 1)), value=1.0, dtype=low.graph.float_dtype)
        prefix = low.layer_name("attention")
        W = low.add_param(f"{prefix}.W", (q.shape[-1], units), "glorot_uniform", loc=e.loc)
        U = low.add_param(f"{prefix}.U", (k.shape[-1], units), "glorot_uniform", loc=e.loc)
        v = low.add_param(f"{prefix}.v", (units,), "glorot_uniform", loc=e.loc)
        return low.graph.apply("additive_attention", q, k, values, low.graph.cast(mask, low.graph.float_dtype), W, U, v)


for _cell in CELLS:
    LAYERS[f"{_cell}_cell"] = Cell(_cell)
LAYERS["additive_attention"] = Attention()
