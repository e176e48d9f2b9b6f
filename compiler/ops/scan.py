"""scan: a step subgraph applied along time with carried state (Theano's scan).

The node's inputs are the initial carries, the sequences (time-major,
[T, ...]) and the non-sequences (weights and other values the step reads).
Its outputs are, for each carry, either all its states stacked over time
([T, ...], the state after each step) or only the final one, then the step's
extra outputs stacked over time.

The gradient is another scan running the other way over the saved states:
its step recomputes the forward step from the state before it and applies
the step's own (symbolic) gradient. Gradients of non-sequences that are sums
over time of `A_tᵀ @ B_t`, of batched `a_t @ b_t` or of broadcast reductions
(A and a from values the forward pass saved, even through a few batchable
ops) are pushed out of the loop and computed once over all steps as one
product; the rest accumulates in carries. Everything in the backward step
that does not depend on the carried cotangents (gate derivatives, recomputed
activations) is regrouped and computed for all steps at once outside the loop.

The gradient can be differentiated again (a gradient penalty, a Hessian-vector product):
the backward step reads the forward values it needs (states before each step, saved
products and activations) as outputs of the forward scan, whose gradient takes their
cotangents in turn, and a state a scan returns only at its end (the backward scan's
cotangents and sums) gets its final cotangent as the initial state of the reverse loop.
A first-order graph is built exactly as without this.

A scan over sequences is emitted as an ONNX Scan (it slices its inputs and
writes each step's outputs in place, with directions for reverse scans); one
with a length and no sequences as a Loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from spec.errors import ShapeError

from ..ir import Graph, TensorType, Value, dim_mul, fmt_shape, is_float, normalize_axis, producers_of
from ..registry import REQUIRED, OpDef, Sample, get_op, op


@dataclass(eq=False)
class Body:
    """The step function: a Graph with its inputs and outputs in scan order."""

    graph: Graph
    carries: list  # body inputs: the state before the step
    seqs: list  # body inputs: the step's slice of each sequence
    nonseqs: list  # body inputs: values read every step
    new_carries: list  # body outputs: the state after the step
    extras: list = field(default_factory=list)  # body outputs stacked over time
    # Once a scan saves for its backward pass: (its own extras' count, the saved products);
    # the saved products and the states before each step then follow its own extras.
    saved: tuple | None = None

    def __repr__(self) -> str:  # stable, for CSE keys and messages
        return f"Body#{id(self)}"


def clone(values: list[Value], mapping: dict[int, Value], g: Graph, saved: dict[int, Value] | None = None) -> list[Value]:
    """Rebuild the nodes computing `values` in graph g, body inputs replaced via `mapping`.
    A node whose output is in `saved` is not recomputed: the saved value stands for it
    (and still carries the node's gradient)."""
    env = dict(mapping)
    for node in producers_of(values):
        ins = [env[v.id] for v in node.inputs]
        if saved and len(node.outputs) == 1 and node.outputs[0].id in saved:
            outs = g.add_node(get_op("precomputed"), [saved[node.outputs[0].id]] + ins,
                              {"of": node.op.name, "of_attrs": dict(node.attrs)}, [node.outputs[0].type])
        else:
            outs = g.add_node(node.op, ins, dict(node.attrs), [o.type for o in node.outputs])
        for o, n in zip(node.outputs, outs):
            env[o.id] = n
            n.name = o.name
    return [env[v.id] for v in values]


def _time_len(seqs) -> object:
    return seqs[0].shape[0] if seqs else None


@op("scan")
class Scan(OpDef):
    """Apply `body` along axis 0 of the sequences, carrying state (see compiler/ops/scan.py)."""

    inputs = ("xs",)
    variadic = True
    attrs = {"body": REQUIRED, "reverse": False, "stack": None, "length": None, "truncate": None}
    check_onnx_shapes = True

    # ------------------------------------------------------------------ shapes
    def split_inputs(self, attrs, inputs):
        b = attrs["body"]
        nc, ns = len(b.carries), len(b.seqs)
        return inputs[:nc], inputs[nc:nc + ns], inputs[nc + ns:]

    def stack_flags(self, attrs) -> tuple:
        b = attrs["body"]
        return tuple(attrs["stack"]) if attrs["stack"] is not None else (True,) * len(b.carries)

    def infer(self, attrs, *types):
        b: Body = attrs["body"]
        init, seqs, nonseqs = self.split_inputs(attrs, list(types))
        if len(init) != len(b.carries) or len(seqs) != len(b.seqs) or len(nonseqs) != len(b.nonseqs):
            raise ShapeError("scan inputs do not match its step's inputs", hint="give the block its inputs in order: the sequences' steps first, then the states")
        for t, v in zip(init, b.carries):
            if t.shape != v.shape or t.dtype != v.dtype:
                raise ShapeError(f"initial state {t} does not match the step's state {v.type}",
                                 hint="the step must return each state with the shape and dtype it takes")
        T = attrs["length"]
        for t, v in zip(seqs, b.seqs):
            if t.rank != v.rank + 1 or tuple(t.shape[1:]) != tuple(v.shape):
                raise ShapeError(f"sequence {t} does not match the step's slice {v.type}", hint="each sequence is the block's input with a leading time axis, [T, ...]")
            if T is None:
                T = t.shape[0]
            elif t.shape[0] != T:
                raise ShapeError(f"sequences have different lengths {T} and {t.shape[0]}", hint="give every sequence the same number of steps along axis 0")
        if T is None:
            raise ShapeError("scan needs a sequence or a length", hint="give scan a sequence to run over (over=...)")
        for v, n in zip(b.carries, b.new_carries):
            if v.type != n.type:
                raise ShapeError(f"the step returns a state of type {n.type} for one of type {v.type}", hint="make the block return each state with the shape and dtype it takes")
        outs = []
        for flag, c in zip(self.stack_flags(attrs), b.new_carries):
            outs.append(TensorType(c.dtype, ((T,) + tuple(c.shape)) if flag else tuple(c.shape)))
        for y in b.extras:
            outs.append(TensorType(y.dtype, (T,) + tuple(y.shape)))
        return outs

    # ------------------------------------------------------------------ reference
    def ref(self, attrs, *arrays):
        from ..interp import evaluate

        b: Body = attrs["body"]
        init, seqs, nonseqs = self.split_inputs(attrs, list(arrays))
        T = seqs[0].shape[0] if seqs else int(attrs["length"])
        order = range(T - 1, -1, -1) if attrs["reverse"] else range(T)
        state = list(init)
        stacked = [[None] * T for _ in b.new_carries]
        extras = [[None] * T for _ in b.extras]
        for t in order:
            feeds = {v.id: a for v, a in zip(b.carries, state)}
            feeds.update({v.id: s[t] for v, s in zip(b.seqs, seqs)})
            feeds.update({v.id: a for v, a in zip(b.nonseqs, nonseqs)})
            outs = evaluate(b.new_carries + b.extras, feeds)
            state = outs[:len(b.new_carries)]
            for k, s in enumerate(state):
                stacked[k][t] = s
            for j, y in enumerate(outs[len(b.new_carries):]):
                extras[j][t] = y
        results = []
        for flag, st, fin in zip(self.stack_flags(attrs), stacked, state):
            results.append(np.stack(st) if flag else fin)
        results += [np.stack(e) for e in extras]
        return tuple(results) if len(results) != 1 else results[0]

    # ------------------------------------------------------------------ ONNX
    def emit(self, e, node, ins, outs):
        from ..emit import emit_nodes, value_info
        from onnx import helper

        b: Body = node.attrs["body"]
        nc, ns = len(b.carries), len(b.seqs)
        init, seqs, nonseqs = ins[:nc], ins[nc:nc + ns], ins[nc + ns:]
        if seqs:
            return _emit_scan(e, node, ins, outs)
        # A scan over a length alone: a Loop.
        length = e.const(np.asarray(int(node.attrs["length"]), dtype=np.int64))
        body = e.child()
        it, cond = e.fresh("t"), e.fresh("cond")
        names: dict[int, str] = {}
        carry_in = []
        for v in b.carries:
            names[v.id] = e.fresh(v.name or "state")
            carry_in.append(names[v.id])
        for v, outer in zip(b.nonseqs, nonseqs):
            names[v.id] = outer  # read from outer scope
        emit_nodes(body, producers_of(b.new_carries + b.extras), names)
        # Loop body outputs: condition, carries, then the per-step outputs to stack.
        body_outs = [body.add("Identity", [cond])]
        # A state computed in the step leaves under its own name; one that is a step
        # input or an outer value needs a copy (onnxruntime refuses those as outputs).
        computed = _computed_in_step(producers_of(b.new_carries + b.extras))
        carry_out, seen = [], set()
        for v in b.new_carries:
            if v.id in computed and names[v.id] not in seen:
                carry_out.append(names[v.id])
            else:
                carry_out.append(body.add("Identity", [names[v.id]]))
            seen.add(carry_out[-1])
        flags = node.op.stack_flags(node.attrs)
        # Per-step outputs leave the body flattened: onnx.reference's Loop concatenates
        # them where onnxruntime stacks them, and for 1-D values both agree.
        wanted = [v for f, v in zip(flags, b.new_carries) if f] + list(b.extras)
        per_step = list({v.id: v for v in wanted}.values())  # a value wanted twice leaves the loop once
        which = [[v.id for v in per_step].index(v.id) for v in wanted]
        flat = body.ints([-1])
        stacked = [body.add("Reshape", [names[v.id], flat]) for v in per_step]
        # A step output with several unknown dims cannot be unflattened from constants:
        # its shape leaves the loop as an extra carried value.
        shaped = [v for v in per_step if not _unflatten_code(v.shape)]
        shape_in = [e.fresh("step_shape") for _ in shaped]
        shape_out = [body.add("Shape", [names[v.id]]) for v in shaped]
        body_outs += carry_out + shape_out + stacked
        out_types = ([v.type for v in b.new_carries] + [TensorType("int64", (v.rank,)) for v in shaped]
                     + [TensorType(v.dtype, (_flat_size(v.shape),)) for v in per_step])
        graph = helper.make_graph(
            body.nodes, f"{node.outputs[0].name or 'scan'}_step",
            [value_info(it, "int64", ()), value_info(cond, "bool", ())]
            + [value_info(n, v.dtype, v.shape) for n, v in zip(carry_in, b.carries)]
            + [value_info(n, "int64", (v.rank,)) for n, v in zip(shape_in, shaped)],
            [value_info(body_outs[0], "bool", ())]
            + [value_info(n, t.dtype, t.shape) for n, t in zip(body_outs[1:], out_types)],
        )
        finals = [e.fresh("final") for _ in b.carries]
        final_shapes = [e.fresh("step_shape") for _ in shaped]
        loop_stacked = [e.fresh("stacked") for _ in stacked]
        shape_init = [e.ints([0] * v.rank) for v in shaped]
        # An explicit `true` condition: onnx.reference runs no iteration when it is omitted.
        e.add("Loop", [length, e.const(np.asarray(True)), *init, *shape_init], finals + final_shapes + loop_stacked, body=graph)
        unflat = []
        for st, v in zip(loop_stacked, per_step):
            code = _unflatten_code(v.shape)
            if code:
                target = e.ints(code)
            else:
                target = e.add("Concat", [e.ints([-1]), final_shapes[shaped.index(v)]], axis=0)
            unflat.append(e.add("Reshape", [st, target]))
        loop_stacked = [unflat[i] for i in which]
        # Map to the node's outputs: per carry its stack or its final value, then the extras.
        k = 0
        src = []
        for f, fin in zip(flags, finals):
            if f:
                src.append(loop_stacked[k])
                k += 1
            else:
                src.append(fin)
        src += loop_stacked[k:]
        for i, (s, o) in enumerate(zip(src, outs)):
            is_stack = i >= len(flags) or flags[i]
            if node.attrs["reverse"] and is_stack:
                # Loop stacks in iteration order; scan's outputs are in time order.
                e.add("Slice", [s, e.ints([-1]), e.ints([np.iinfo(np.int64).min]), e.ints([0]), e.ints([-1])], [o])
            else:
                e.add("Identity", [s], [o])

    # ------------------------------------------------------------------ gradient
    def vjp(self, node, gouts):
        g: Graph = node.outputs[0].graph
        b: Body = node.attrs["body"]
        reverse = bool(node.attrs["reverse"])
        flags = self.stack_flags(node.attrs)
        init, seqs, nonseqs = self.split_inputs(node.attrs, node.inputs)
        nc = len(b.carries)
        if nc and flags[0]:
            T = node.outputs[0].shape[0]
        else:
            T = seqs[0].shape[0] if seqs else node.attrs["length"]
        n_y, products, saved_outer, prevs = _save_for_backward(node, T)
        # (the outputs it has just added have no cotangents)
        gouts = list(gouts) + [None] * (len(node.outputs) - len(gouts))
        g_stacked, g_ys = gouts[:nc], gouts[nc:nc + n_y]
        # A state the scan returns only at its end (a backward scan's carried cotangents and
        # sums, differentiated again) has the final state's cotangent, which starts the loop.
        g_final = [None if f else gv for f, gv in zip(flags, g_stacked)]
        g_stacked = [gv if f else None for f, gv in zip(flags, g_stacked)]
        # Cotangents of what the scan saved for its backward pass (read by a gradient that is
        # differentiated again): of the saved products and activations, and of the states
        # before each step.
        g_products, g_prevs = gouts[nc + n_y:nc + n_y + len(products)], gouts[nc + n_y + len(products):]

        bg = Graph(float_dtype=b.graph.float_dtype, mode=b.graph.mode, mixed_precision=b.graph.mixed_precision)
        lam = [bg.add_input(f"lam{k}", c.dtype, c.shape) for k, c in enumerate(b.carries)]
        prev_t = [bg.add_input(f"prev{k}", c.dtype, c.shape) for k, c in enumerate(b.carries)]
        seq_t = [bg.add_input(f"seq{k}", v.dtype, v.shape) for k, v in enumerate(b.seqs)]
        # Cotangents that are zeros (states or outputs nothing outside reads) are not fed in,
        # nor the None of integer states and outputs (a counter, an argmax per step).
        is_zero = lambda v: v is None or (v.producer is not None and v.producer.op.name == "zeros_like")  # noqa: E731
        live_c = [k for k, v in enumerate(g_stacked) if not is_zero(v)]
        live_y = [k for k, v in enumerate(g_ys) if not is_zero(v)]
        live_sv = [k for k, v in enumerate(g_products) if not is_zero(v)]
        live_pv = [k for k, v in enumerate(g_prevs) if not is_zero(v)]
        g_stacked = [g_stacked[k] for k in live_c]
        g_ys = [g_ys[k] for k in live_y]
        g_products = [g_products[k] for k in live_sv]
        g_prevs = [g_prevs[k] for k in live_pv]
        gc_t = [bg.add_input(f"gc{k}", b.carries[k].dtype, b.carries[k].shape) for k in live_c]
        gy_t = [bg.add_input(f"gy{k}", b.extras[k].dtype, b.extras[k].shape) for k in live_y]
        gsv_t = [bg.add_input(f"gsaved{k}", products[k].dtype, products[k].shape) for k in live_sv]
        gpv_t = [bg.add_input(f"gprev{k}", b.carries[k].dtype, b.carries[k].shape) for k in live_pv]
        saved_t = [bg.add_input(f"saved{k}", v.dtype, v.shape) for k, v in enumerate(products)]
        p_in = [bg.add_input(f"p{k}", v.dtype, v.shape) for k, v in enumerate(b.nonseqs)]
        extra_seq_outer, extra_seq_in = [], []
        truncate = node.attrs["truncate"]
        if truncate:
            # (it reads only the number of steps: of a sequence where there is one, so that no
            # per-step output is kept for it alone)
            extra_seq_outer.append(g.apply("step_mask", seqs[0] if seqs else prevs[0], keep=int(truncate),
                                           reverse=reverse, dtype=b.graph.float_dtype))
            extra_seq_in.append(bg.add_input("keep", b.graph.float_dtype, ()))

        mapping = {v.id: n for v, n in zip(b.carries, prev_t)}
        mapping.update({v.id: n for v, n in zip(b.seqs, seq_t)})
        mapping.update({v.id: n for v, n in zip(b.nonseqs, p_in)})
        outs = clone(b.new_carries + b.extras[:n_y] + [products[k] for k in live_sv], mapping, bg,
                     {v.id: sv for v, sv in zip(products, saved_t)})
        gc_of = dict(zip(live_c, gc_t))
        cot = [lam[k] + gc_of[k] if k in gc_of else lam[k] for k in range(nc)] + list(gy_t) + gsv_t + gpv_t
        outs = outs[:nc] + [outs[nc + k] for k in live_y] + outs[nc + n_y:] + [prev_t[k] for k in live_pv]
        if truncate:
            cot = [c * extra_seq_in[0] for c in cot]
        from ..autodiff import grad

        float_p = [i for i, v in enumerate(b.nonseqs) if is_float(v.dtype)]
        # Sequences nothing differentiable flows into (a mask made from lengths) get no gradient.
        live_s = [k for k, o in enumerate(seqs) if _has_gradient(o)]
        wrt = prev_t + [seq_t[k] for k in live_s] + [p_in[i] for i in float_p]
        grads = grad(outs, wrt, cot)
        for n in bg.nodes:
            if n.op.name == "precomputed":
                # Differentiated: what the saved value stands for need not be computed again.
                n.inputs = n.inputs[:1]
        zero = lambda v: bg.apply("zeros_like", v)  # noqa: E731
        new_lam = [gv if gv is not None else zero(v) for gv, v in zip(grads[:nc], prev_t)]
        g_seq = grads[nc:nc + len(live_s)]
        g_p = grads[nc + len(live_s):]

        # Non-sequence gradients: push sums over time out of the loop where possible.
        seq_outer = {v.id: o for v, o in zip(prev_t + seq_t + gc_t + gy_t + saved_t + gsv_t + gpv_t,
                                             prevs + seqs + g_stacked + g_ys + saved_outer + g_products + g_prevs)}
        nonseq_outer = {v.id: o for v, o in zip(p_in, nonseqs)}
        pushed_terms: list[list] = []  # per float nonseq: [(kind, outer A or None, body B, shape, wrappers)]
        accumulate: list = []  # per float nonseq: body value summed in a carry, or None
        for gv, i in zip(g_p, float_p):
            if gv is None:
                pushed_terms.append([])
                accumulate.append(None)
                continue
            terms, rest = _split_terms(gv, seq_outer, nonseq_outer, g)
            pushed_terms.append(terms)
            accumulate.append(rest)
        acc_in = []
        acc_out = []
        acc_index = []
        for k, (i, rest) in enumerate(zip(float_p, accumulate)):
            if rest is not None:
                a = bg.add_input(f"acc{k}", rest.dtype, rest.shape)
                acc_in.append(a)
                acc_out.append(a + rest)
                acc_index.append(k)
        body_extras = [gv if gv is not None else zero(seq_t[k]) for gv, k in zip(g_seq, live_s)]
        pushed_values = []
        for terms in pushed_terms:
            for _, _, bval, _, _ in terms:
                if bval not in pushed_values:
                    pushed_values.append(bval)
        body_extras += pushed_values
        bbody = Body(bg, lam + acc_in, prev_t + seq_t + gc_t + gy_t + extra_seq_in + saved_t + gsv_t + gpv_t, p_in,
                     new_lam + acc_out, body_extras)
        lam_init = [g.apply("zeros_like", s0) if is_zero(gf) else gf for s0, gf in zip(init, g_final)]
        acc_init = [g.apply("zeros_like", nonseqs[float_p[k]]) for k in acc_index]
        flags_b = (False,) * (nc + len(acc_in))
        b_seqs = [*prevs, *seqs, *g_stacked, *g_ys, *extra_seq_outer, *saved_outer, *g_products, *g_prevs]
        b_nonseqs = list(nonseqs)
        from ..recurrent import HOIST, gather_state_free_factors, hoist

        if HOIST:
            # What does not depend on the cotangents (Uᵀ, the gate derivatives, ...) runs
            # once outside, over all steps; regrouped first so it leaves as few slices as it can.
            gather_state_free_factors(bbody)
            bbody, b_seqs, b_nonseqs = hoist(bbody, b_seqs, b_nonseqs, g, per_step=True)
        res = g.apply("scan", *lam_init, *acc_init, *b_seqs, *b_nonseqs,
                      body=bbody, reverse=not reverse, stack=flags_b, length=node.attrs["length"] if not seqs else None)
        res = list(res) if isinstance(res, tuple) else [res]
        d_init = res[:nc]
        d_acc = res[nc:nc + len(acc_in)]
        stacked_out = res[nc + len(acc_in):]
        d_seqs = [None] * len(seqs)
        for k, d in zip(live_s, stacked_out[:len(live_s)]):
            d_seqs[k] = d
        pushed_stacked = dict(zip([v.id for v in pushed_values], stacked_out[len(live_s):]))

        d_nonseq = [None] * len(nonseqs)
        for k, i in enumerate(float_p):
            total = d_acc[acc_index.index(k)] if k in acc_index else None
            for kind, outer_a, bval, shape, wrappers in pushed_terms[k]:
                B = pushed_stacked[bval.id]
                if kind == "matmul":
                    # sum_t A_tᵀ @ B_t as one product over all steps
                    A2 = g.apply("reshape", outer_a, shape=(-1, outer_a.shape[-1]))
                    B2 = g.apply("reshape", B, shape=(-1, B.shape[-1]))
                    term = g.apply("matmul", g.apply("transpose", A2), B2)
                    if tuple(term.shape) != tuple(shape):  # a batched product summed over its batch
                        term = g.apply("reshape", term, shape=tuple(shape))
                elif kind == "bmatmul":
                    # sum_t a_t @ b_t = [a_1 .. a_T] @ [b_1; ..; b_T]: time joins the contracted axis
                    r = bval.rank
                    A = g.apply("transpose", outer_a, perm=(*range(1, r), 0, r))  # [..., M, T, K]
                    A = g.apply("reshape", A, shape=(*outer_a.shape[1:-1], -1))
                    Bt = g.apply("transpose", B, perm=(*range(1, r - 1), 0, r - 1, r))  # [..., T, K, P]
                    Bt = g.apply("reshape", Bt, shape=(*B.shape[1:-2], -1, B.shape[-1]))
                    term = g.apply("matmul", A, Bt)
                else:
                    term = g.apply("sum_to", B, shape=shape)
                for w in wrappers:  # innermost first
                    term = g.add_node(w.op, [term], dict(w.attrs), list(w.op.infer(w.attrs, term.type)))[0]
                total = term if total is None else total + term
            d_nonseq[i] = total
        return list(d_init) + list(d_seqs) + d_nonseq

    def samples(self, rng):
        return [
            Sample(*_rnn_sample(rng, reverse=False)),
            Sample(*_rnn_sample(rng, reverse=True)),
            Sample(*_rnn_sample(rng, reverse=False, two_states=True)),
        ]


@op("shift")
class Shift(OpDef):
    """The states before each step: [s0, x[0], ..., x[T-2]] along axis 0 (reverse: [x[1], ..., x[T-1], s0])."""

    internal = True
    inputs = ("x", "first")
    attrs = {"reverse": False}
    gradgrad = True

    def infer(self, attrs, x, first):
        if x.rank != first.rank + 1 or tuple(x.shape[1:]) != tuple(first.shape) or x.dtype != first.dtype:
            raise ShapeError(f"shift: {first} is not one step of {x}", hint="give the first step the shape of one step of the sequence, x[0]")
        return [x]

    def emit(self, e, node, ins, outs):
        x, first = ins
        head = e.add("Unsqueeze", [first, e.ints([0])])
        big = np.iinfo(np.int64).max
        if node.attrs["reverse"]:
            rest = e.add("Slice", [x, e.ints([1]), e.ints([big]), e.ints([0])])
            e.add("Concat", [rest, head], outs, axis=0)
        else:
            rest = e.add("Slice", [x, e.ints([0]), e.ints([-1]), e.ints([0])])
            e.add("Concat", [head, rest], outs, axis=0)

    def vjp(self, node, gouts):
        (gy,) = gouts
        x, first = node.inputs
        g = gy.graph
        rev = node.attrs["reverse"]
        # What moved one step later flows one step back; the end that was dropped gets zeros.
        gx = g.apply("shift", gy, g.apply("zeros_like", first), reverse=not rev)
        gfirst = g.apply("index", gy, spec=(-1 if rev else 0,))
        return [gx, gfirst]

    def ref(self, attrs, x, first):
        if attrs["reverse"]:
            return np.concatenate([x[1:], first[None]], axis=0)
        return np.concatenate([first[None], x[:-1]], axis=0)

    def samples(self, rng):
        x, f = rng.normal(size=(4, 2, 3)), rng.normal(size=(2, 3))
        return [Sample([x, f]), Sample([x, f], {"reverse": True}), Sample([rng.normal(size=(1, 2)), rng.normal(size=(2,))])]


@op("arange")
class Arange(OpDef):
    """0, 1, ..., n-1 (int64) for an int64 scalar n; the length is the symbolic dim L."""

    inputs = ("n",)
    nondiff = True

    def infer(self, attrs, n):
        if n.shape != () or n.dtype != "int64":
            raise ShapeError(f"arange needs an int64 scalar, got {n}", hint="pass an int64 scalar, e.g. an input of shape [] and dtype int64")
        return [TensorType("int64", ("L",))]

    def emit(self, e, node, ins, outs):
        e.add("Range", [e.const(np.asarray(0, dtype=np.int64)), ins[0], e.const(np.asarray(1, dtype=np.int64))], outs)

    def ref(self, attrs, n):
        return np.arange(int(n), dtype=np.int64)

    def samples(self, rng):
        return [Sample([np.asarray(5, dtype=np.int64)]), Sample([np.asarray(1, dtype=np.int64)])]


@op("positions")
class Positions(OpDef):
    """0, 1, ..., n-1 (int64) for the size n of x along `axis`."""

    attrs = {"axis": 0}
    nondiff = True

    def infer(self, attrs, x):
        if x.rank == 0:
            raise ShapeError(f"positions() needs a tensor with an axis, got a scalar {x}", arg="x", hint="give it a sequence of rank 1 or more, e.g. [T, N]")
        return [TensorType("int64", (x.shape[normalize_axis(attrs["axis"], x.rank)],))]

    def emit(self, e, node, ins, outs):
        n = e.add("Gather", [e.add("Shape", ins), e.const(np.asarray(node.attrs["axis"] % node.inputs[0].rank, dtype=np.int64))], axis=0)
        e.add("Range", [e.const(np.asarray(0, dtype=np.int64)), n, e.const(np.asarray(1, dtype=np.int64))], outs)

    def ref(self, attrs, x):
        return np.arange(x.shape[attrs["axis"]], dtype=np.int64)

    def samples(self, rng):
        return [Sample([rng.normal(size=(2, 5))], {"axis": 1}), Sample([rng.normal(size=(3,))])]


@op("step_mask")
class StepMask(OpDef):
    """1.0 for the last `keep` steps along axis 0 of x (the first `keep` when reverse), else 0."""

    internal = True
    attrs = {"keep": REQUIRED, "reverse": False, "dtype": "float32"}
    nondiff = True

    def infer(self, attrs, x):
        keep = attrs["keep"]
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 0:
            raise ShapeError(f"step_mask needs a non-negative integer keep, got {keep!r}", arg="keep", hint="write keep as a whole number of 0 or more")
        if x.rank == 0:
            raise ShapeError(f"step_mask needs a tensor with steps along axis 0, got a scalar {x}", arg="x", hint="give it a sequence [T, ...] of rank 1 or more")
        return [TensorType(attrs["dtype"], (x.shape[0],))]

    def emit(self, e, node, ins, outs):
        from ..emit import onnx_dtype

        length = e.add("Gather", [e.add("Shape", ins), e.const(np.asarray(0, dtype=np.int64))], axis=0)
        steps = e.add("Range", [e.const(np.asarray(0, dtype=np.int64)), length, e.const(np.asarray(1, dtype=np.int64))])
        keep = e.const(np.asarray(int(node.attrs["keep"]), dtype=np.int64))
        if node.attrs["reverse"]:
            m = e.add("Less", [steps, keep])
        else:
            m = e.add("GreaterOrEqual", [steps, e.add("Sub", [length, keep])])
        e.add("Cast", [m], outs, to=onnx_dtype(node.attrs["dtype"]))

    def ref(self, attrs, x):
        T = x.shape[0]
        t = np.arange(T)
        m = t < attrs["keep"] if attrs["reverse"] else t >= T - attrs["keep"]
        return m.astype(attrs["dtype"])

    def samples(self, rng):
        x = rng.normal(size=(5, 2))
        return [Sample([x], {"keep": 2}), Sample([x], {"keep": 3, "reverse": True}), Sample([x], {"keep": 9})]


# Activations the forward step also outputs for the backward pass, which would otherwise
# recompute them (a Scan writes step outputs in place: keeping them costs only memory).
SAVED_ACTIVATIONS = ("sigmoid", "tanh", "softmax", "relu", "exp")


def _save_for_backward(node, T):
    """Have the forward scan also output, stacked over time in time order, what its backward
    step reads: the matrix products and activations of its step (so they are not computed
    again: memory for time) and the state before each step. Adds outputs to the node in
    place, once. Returns (the step's own extra outputs' count, the saved products in the
    step, their outer stacks, the outer stacks of the states before each step). A gradient
    differentiated again reads these outputs, and the scan's vjp takes their cotangents.

    The states before the steps are the stacked states shifted by one step, but a Scan
    writes each step's output in place, where the shift copies both whole sequences again
    (a Slice and a Concat); a stacked state that only the shift read then stops being kept."""
    b: Body = node.attrs["body"]
    if b.saved is None:
        # The step is shared by the nodes cloned from this one (a scan inside a step that is
        # differentiated: each backward pass clones it); those cloned before keep theirs.
        b = replace(b, extras=list(b.extras))
        node.attrs = {**node.attrs, "body": b}
        n_own = len(b.extras)
        products = _products_to_save(b)
        b.extras += products + b.carries
        b.saved = (n_own, products)
    n_own, products = b.saved
    nc = len(b.carries)
    # A node cloned from a saving one has its outputs already; the saving one gets them here.
    for v in b.extras[len(node.outputs) - nc:]:
        node.outputs.append(Value(node.outputs[0].graph, TensorType(v.dtype, (T,) + tuple(v.shape)), node,
                                  len(node.outputs), loc=node.loc))
    outer = node.outputs[nc + n_own:]
    return n_own, products, outer[:len(products)], outer[len(products):]


def _products_to_save(b: Body) -> list:
    """The matrix products (or the gates' pre-activations they feed) and the activations of
    the step that depend on the state."""
    inside = producers_of(b.new_carries + b.extras)
    carried = {v.id for v in b.carries}
    depends: set[int] = set(carried)
    readers: dict[int, list] = {}
    for n in inside:
        for v in n.inputs:
            readers.setdefault(v.id, []).append(n)
    products = []
    for n in inside:
        if any(v.id in depends for v in n.inputs):
            depends.update(o.id for o in n.outputs)
            if n.op.name in SAVED_ACTIVATIONS and n.outputs[0].id not in {v.id for v in b.extras}:
                products.append(n.outputs[0])
            if n.op.name in ("matmul", "gemm") and n.outputs[0].id not in {v.id for v in b.extras}:
                saved = n.outputs[0]
                # h @ U + (x @ W)_t: keep the sum (the gates' pre-activation), which the
                # step computes as one Gemm and the backward step needs as it is.
                users = readers.get(saved.id, [])
                if len(users) == 1 and users[0].op.name == "add" and users[0].outputs[0].type == saved.type:
                    other = [v for v in users[0].inputs if v is not saved]
                    if len(other) == 1 and other[0].id not in depends:
                        saved = users[0].outputs[0]
                if not _only_feeds_saved_activations(saved, readers):
                    products.append(saved)
    return products


def _only_feeds_saved_activations(v: Value, readers: dict) -> bool:
    """Whether everything the step computes from v (through splits and reshapes) is a saved
    activation: the backward step then never needs v itself."""
    todo, seen = [v], set()
    while todo:
        u = todo.pop()
        if u.id in seen:
            continue
        seen.add(u.id)
        users = readers.get(u.id, [])
        if not users:
            return False  # a step output
        for n in users:
            if n.op.name in ("split", "reshape", "index", "squeeze", "unsqueeze"):
                todo.extend(n.outputs)
            elif n.op.name not in SAVED_ACTIVATIONS:
                return False
    return True


@op("precomputed")
class Precomputed(OpDef):
    """`saved`, standing for op `of` applied to the other inputs (a value the forward pass
    kept); its gradient is that op's gradient w.r.t. those inputs. Once that gradient is
    built the other inputs are dropped, and it is `saved` as it is: differentiated again,
    the cotangent goes to `saved`, an output of the scan that kept it."""

    internal = True
    inputs = ("saved",)
    variadic = True
    attrs = {"of": REQUIRED, "of_attrs": REQUIRED}

    def infer(self, attrs, saved, *inputs):
        return [saved]

    def emit(self, e, node, ins, outs):
        e.add("Identity", ins[:1], outs)

    def vjp(self, node, gouts):
        from ..ir import Node

        if len(node.inputs) == 1:
            # Once its gradient is built, what it stands for is no longer computed: the saved
            # value is read as it is (the scan that saved it differentiates it further).
            return list(gouts)
        of = get_op(node.attrs["of"])
        stand_in = Node(of, node.inputs[1:], dict(node.attrs["of_attrs"]), outputs=node.outputs, loc=node.loc)
        return [None] + list(of.vjp(stand_in, gouts))

    def ref(self, attrs, saved, *inputs):
        return saved

    def samples(self, rng):
        a, b = rng.normal(size=(2, 3)), rng.normal(size=(3, 4))
        return [Sample([a @ b, a, b], {"of": "matmul", "of_attrs": {}}, grad_inputs=[]),
                Sample([a @ b], {"of": "matmul", "of_attrs": {}})]


def _emit_scan(e, node, ins, outs):
    """Emit a scan with sequences as an ONNX Scan: it slices the sequences and writes each
    step's outputs into place, where a Loop would gather and concatenate them."""
    from ..emit import emit_nodes, value_info, values_read
    from onnx import helper

    b: Body = node.attrs["body"]
    nc, ns = len(b.carries), len(b.seqs)
    init, seqs = ins[:nc], ins[nc:nc + ns]
    # A stacked output nothing reads is not written each step (a stacked state then leaves
    # as its final value): e.g. a state whose backward pass reads the states before the steps.
    is_read = (lambda v: True) if e.read is None else (lambda v: v.id in e.read)  # noqa: E731
    flags = [f and is_read(o) for f, o in zip(node.op.stack_flags(node.attrs), node.outputs)]
    extras = [(y, o) for y, o in zip(b.extras, node.outputs[nc:]) if is_read(o)]
    step_values = b.new_carries + [y for y, _ in extras]
    body = e.child()
    names: dict[int, str] = {}
    carry_in = [e.fresh(v.name or "state") for v in b.carries]
    seq_in = [e.fresh(v.name or "x_t") for v in b.seqs]
    names.update({v.id: n for v, n in zip(b.carries, carry_in)})
    names.update({v.id: n for v, n in zip(b.seqs, seq_in)})
    for v, outer in zip(b.nonseqs, ins[nc + ns:]):
        names[v.id] = outer  # read from the outer scope
    step_nodes = producers_of(step_values)
    body.read = values_read(step_nodes, step_values)
    emit_nodes(body, step_nodes, names)
    # Every body output needs a name of its own, computed in the body.
    computed = _computed_in_step(step_nodes)
    taken: set[str] = set()

    def own(v: Value) -> str:
        name = names[v.id]
        if v.id not in computed or name in taken:
            name = body.add("Identity", [name])
        taken.add(name)
        return name

    carry_out = [own(v) for v in b.new_carries]
    wanted = [v for f, v in zip(flags, b.new_carries) if f] + [y for y, _ in extras]
    per_step = list({v.id: v for v in wanted}.values())  # a value wanted twice leaves the loop once
    which = [[v.id for v in per_step].index(v.id) for v in wanted]
    scan_out = [own(v) for v in per_step]
    graph = helper.make_graph(
        body.nodes, f"{node.outputs[0].name or 'scan'}_step",
        [value_info(n, v.dtype, v.shape) for n, v in zip(carry_in + seq_in, b.carries + b.seqs)],
        [value_info(n, v.dtype, v.shape) for n, v in zip(carry_out + scan_out, b.new_carries + per_step)],
    )
    finals = [e.fresh("final") for _ in b.carries]
    stacked = [e.fresh("stacked") for _ in per_step]
    directions = {}
    if node.attrs["reverse"]:  # read and write from the last step back
        directions = {"scan_input_directions": [1] * ns}
        if per_step:
            directions["scan_output_directions"] = [1] * len(per_step)
    e.add("Scan", [*init, *seqs], finals + stacked, body=graph, num_scan_inputs=ns, **directions)
    src, k = [], 0
    for f, fin, o in zip(flags, finals, node.outputs):
        if f:
            src.append(stacked[which[k]])
            k += 1
        elif is_read(o):
            src.append(fin)
        else:
            src.append(None)
    read_extras = iter(which[k:])
    src += [stacked[next(read_extras)] if is_read(o) else None for o in node.outputs[nc:]]
    for s_, o in zip(src, outs):
        if s_ is not None:
            e.add("Identity", [s_], [o])


def _computed_in_step(nodes) -> set[int]:
    """Ids of the values the step's nodes compute in the body. A constant is not one of
    them: it is an initializer of the outermost graph, which the body reads from there, so a
    step output that is a constant (a literal state, or one folded from constants) needs a
    copy in the body as an outer value does."""
    return {v.id for n in nodes if n.op.name != "constant" for v in n.outputs}


def _has_gradient(v: Value) -> bool:
    """Whether a gradient can flow into v: a float value that some float graph input reaches
    through differentiable ops (not, say, a mask cast from comparisons of lengths)."""
    stack, seen = [v], set()
    while stack:
        u = stack.pop()
        if u.id in seen or not is_float(u.dtype):
            continue
        seen.add(u.id)
        p = u.producer
        if p is None:
            return True
        if not p.op.nondiff:
            stack.extend(p.inputs)
    return False


def _flat_size(shape):
    size = 1
    for d in shape:
        size = dim_mul(size, d)
    return size


def _unflatten_code(step_shape) -> list[int] | None:
    """Reshape code for [T, prod(step_shape)] -> [T, *step_shape]; None with several unknown dims."""
    code = [0] + [d if isinstance(d, int) else -1 for d in step_shape]
    return code if code.count(-1) <= 1 else None


def _split_terms(gv: Value, seq_outer: dict, nonseq_outer: dict, g: Graph):
    """Split a per-step gradient into pushable terms and an accumulated rest.

    A term is a product summed over time whose first factor does not depend on the
    carried cotangents, so its stack over time can be had outside (`_stacked_outside`):
    ("matmul", A, B) for A_tᵀ @ B_t of matrices (or of batches summed over the batch),
    ("bmatmul", A, B) for batched a_t @ b_t,
    ("sum", None, B) for a broadcast reduction; the second factor B is stacked by the
    loop. Linear reshaping of a term (squeeze, sum_to, ...) is applied after the sum."""
    terms, rest = [], []

    def term(v: Value):
        p = v.producer
        if p is None:
            return None
        if p.op.name in _LINEAR_WRAPPERS and len(p.inputs) == 1:
            inner = term(p.inputs[0])
            if inner is not None:
                inner[3].append(p)
                return inner
        rows = _transposed_rows(v) if v.rank == 2 else None
        if rows is not None:
            outer = _stacked_outside(rows[0], seq_outer, nonseq_outer, g)
            if outer is not None:
                return ["matmul", outer, rows[1], [], v.shape]
        if p.op.name == "matmul" and v.rank >= 3:
            a, bval = p.inputs
            if a.rank == bval.rank == v.rank and tuple(a.shape[:-2]) == tuple(bval.shape[:-2]) \
                    and isinstance(bval.shape[-1], int):  # (the stacked B is reshaped with its last dim)
                outer = _stacked_outside(a, seq_outer, nonseq_outer, g)
                if outer is not None:
                    return ["bmatmul", outer, bval, [], v.shape]
        if p.op.name == "sum_to" and v.rank >= 2 and all(d == 1 for d in v.shape[:-2]):
            # sum over the batch of x_tᵀ @ b_t (batched): one product over all (t, batch) rows
            src = p.inputs[0]
            rows = _transposed_rows(src) if src.rank >= 3 and tuple(src.shape[-2:]) == tuple(v.shape[-2:]) else None
            if rows is not None and isinstance(rows[0].shape[-1], int) and isinstance(rows[1].shape[-1], int):
                outer = _stacked_outside(rows[0], seq_outer, nonseq_outer, g)
                if outer is not None:
                    return ["matmul", outer, rows[1], [], v.shape]
        if p.op.name == "sum_to":
            src = p.inputs[0]
            lead = src.rank - v.rank
            if lead > 0 and tuple(src.shape[lead:]) == tuple(v.shape):
                return ["sum", None, src, [], v.shape]
        return None

    def visit(v: Value):
        p = v.producer
        if p is not None and p.op.name == "add" and p.inputs[0].type == v.type and p.inputs[1].type == v.type:
            visit(p.inputs[0])
            visit(p.inputs[1])
            return
        t = term(v)
        if t is None:
            rest.append(v)
        else:
            kind, outer, bval, wrappers, shape = t
            terms.append((kind, outer, bval, shape, wrappers))

    visit(gv)
    total = None
    for r in rest:
        total = r if total is None else total + r
    return terms, total


def _transposed_rows(v: Value):
    """(x, b) when v = swap_last(x) @ b with the same batch dims: sums of xᵀ b over rows."""
    p = v.producer
    if p is None or p.op.name != "matmul":
        return None
    a, b = p.inputs
    ap = a.producer
    if ap is None or ap.op.name != "transpose" or b.rank != a.rank or tuple(a.shape[:-2]) != tuple(b.shape[:-2]):
        return None
    swap = tuple(range(a.rank - 2)) + (a.rank - 1, a.rank - 2)
    return (ap.inputs[0], b) if ap.op.perm(ap.attrs, a.rank) == swap else None


# Ops that commute with a sum over time: a term wrapped in them is summed first.
_LINEAR_WRAPPERS = {"squeeze", "unsqueeze", "reshape", "sum_to", "transpose", "neg"}


def _stacked_outside(v: Value, seq_outer: dict, nonseq_outer: dict, g: Graph):
    """v for every step at once, [T, ...], built outside the loop from the stacked
    sequences (None when v depends on a carry, or on an op that cannot be batched)."""
    from ..recurrent import _batch_polymorphic

    if v.id in seq_outer:
        return seq_outer[v.id]
    if v.producer is None:
        return None  # a carry or a non-sequence: not a stack over time
    outer: dict[int, tuple] = {}  # body value id -> (outer value, stacked over time)
    for node in producers_of([v]):
        ins = []
        for x in node.inputs:
            if x.id in seq_outer:
                ins.append((seq_outer[x.id], True))
            elif x.id in nonseq_outer:
                ins.append((nonseq_outer[x.id], False))
            elif x.id in outer:
                ins.append(outer[x.id])
            else:
                return None  # a carry, or a body input with no outer value
        stacked = any(st for _, st in ins)
        attrs = dict(node.attrs)
        if stacked:
            name = node.op.name
            if name == "transpose":
                perm = node.op.perm(node.attrs, node.inputs[0].rank)
                moved = [q for q in perm if node.inputs[0].shape[q] != 1]
                if moved != sorted(moved):
                    return None  # a real transpose of every step's values costs more than it saves
                attrs["perm"] = (0, *[q + 1 for q in perm])
            elif name == "unsqueeze":
                attrs["axes"] = tuple(a + 1 for a in node.op.out_axes(node.attrs, node.inputs[0].rank))
            elif name == "squeeze":
                attrs["axes"] = tuple(a + 1 for a in node.op.norm_axes(node.attrs, node.inputs[0].type))
            elif not _batch_polymorphic(node, ["seq" if st else "const" for _, st in ins]):
                return None
        vals = [x for x, _ in ins]
        res = g.add_node(node.op, vals, attrs, list(node.op.infer(attrs, *[x.type for x in vals])))
        for o, r in zip(node.outputs, res):
            outer[o.id] = (r, stacked)
    value, stacked = outer[v.id]
    return value if stacked else None


def _rnn_sample(rng, reverse=False, two_states=False, truncate=None):
    """A tanh RNN step over [T=4, N=2, E=3] with H=3, as a scan sample."""
    g = Graph(float_dtype="float64")
    h = g.add_input("h", "float64", (2, 3))
    x = g.add_input("x", "float64", (2, 3))
    W = g.add_input("W", "float64", (3, 3))
    U = g.add_input("U", "float64", (3, 3))
    carries = [h]
    h2 = g.apply("tanh", x @ W + h @ U)
    new = [h2]
    extras = [g.apply("sigmoid", h2) * 2.0]
    if two_states:
        c = g.add_input("c", "float64", (2, 3))
        carries.append(c)
        new = [h2 * c, c + h2]
    body = Body(g, carries, [x], [W, U], new, extras)
    ins = [rng.normal(size=(2, 3)) * 0.5 for _ in carries] + [rng.normal(size=(4, 2, 3)),
                                                               rng.normal(size=(3, 3)) * 0.5, rng.normal(size=(3, 3)) * 0.5]
    return ins, {"body": body, "reverse": reverse, "truncate": truncate}
