"""Recurrence: the scan op against the same computation unrolled in the IR
(forward values and symbolic gradients to 1e-9 in float64, and against
finite differences), truncated backpropagation through time against an
unrolled graph with stop_gradient on the early steps, second- and third-order
gradients (the gradient differentiated again) the same way, spec-level scan over
blocks and the ready-made cells under the whole-spec gradient check, and
hoisting of state-independent work out of the ONNX Loop bodies.

The cells are compared against ONNX's own LSTM/GRU/RNN ops in
tests/test_cells.py."""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import pytest

import compiler.recurrent as recurrent
from compiler.autodiff import grad
from compiler.check import Runner, check_gradients, reference_run
from compiler.emit import emit_model
from compiler.gradcheck import gradcheck_spec, random_batch
from compiler.ir import Graph
from compiler.ops.scan import Body
from compiler.training import compile_spec
from spec import spec_from_text
from spec.errors import FlowgradError, GradientError, ShapeError, SpecError

F = "float64"
N, T, E, H = 2, 4, 3, 3


# ---------------------------------------------------------------------------- step functions
# Each builds one step in graph g from (carries, sequence slices, non-sequences)
# and returns (new carries, extra outputs). The same function builds the scan's
# body and every step of the unrolled graph, so both compute the same thing.
def rnn_step(g, carries, seqs, ps):
    (h,), (x,), (W, U, b) = carries, seqs, ps
    return [g.apply("tanh", x @ W + h @ U + b)], []


def lstm_step(g, carries, seqs, ps):
    (h, c), (x,), (W, U, b) = carries, seqs, ps
    i, f, gg, o = g.apply("split", x @ W + h @ U + b, sections=4, axis=-1)
    c2 = g.apply("sigmoid", f) * c + g.apply("sigmoid", i) * g.apply("tanh", gg)
    return [g.apply("sigmoid", o) * g.apply("tanh", c2), c2], []


def extras_step(g, carries, seqs, ps):
    (h,), (x,), (W, U, b, W2) = carries, seqs, ps
    h2 = g.apply("tanh", x @ W + h @ U + b)
    # one extra reads the state, one does not (it is hoisted out of the loop whole)
    return [h2], [g.apply("sigmoid", h2) * 2.0 + h, g.apply("tanh", x @ W2)]


def masked(step):
    """Padded steps (mask 0) keep the state; the extras are multiplied by the mask."""
    def f(g, carries, seqs, ps):
        *xs, m = seqs
        new, extras = step(g, carries, xs, ps)
        keep = g.apply("gt", g.apply("unsqueeze", m, axes=(1,)), g.lift(0.0, like=m))
        mcol = g.apply("unsqueeze", m, axes=(1,))
        return [g.apply("where", keep, n, c) for n, c in zip(new, carries)], [y * mcol for y in extras]
    return f


def encoder_step(g, carries, seqs, ps):
    """Reads an outer graph value (an encoder state) besides the weights."""
    (h,), (x,), (W, U, V, enc) = carries, seqs, ps
    h2 = g.apply("tanh", x @ W + h @ U + enc @ V)
    return [h2], [h2 * enc]


def two_seq_step(g, carries, seqs, ps):
    (h,), (x, u), (W, U, b) = carries, seqs, ps
    h2 = g.apply("tanh", x @ W + h @ U + b) * g.apply("sigmoid", u) + u * 0.5
    return [h2], [h2 * u]


S, A = 5, 2


def attention_step(g, carries, seqs, ps):
    """An attention decoder: the state queries a memory (a non-sequence [N, S, H]). The
    gradients of the memory (a batched product per step), of v (a product summed over the
    batch) and of W (a product with concat(x_t, ctx_t)) are pushed out of the backward loop."""
    (h,), (x,), (W, U, b, Wa, Ua, v, mem) = carries, seqs, ps
    ctx, alpha = g.apply("additive_attention", h, mem, mem, g.const(np.ones((N, S))), Wa, Ua, v)
    h2 = g.apply("tanh", g.apply("concat", x, ctx, axis=-1) @ W + h @ U + b)
    return [h2], [alpha]


def no_seq_step(g, carries, seqs, ps):
    (h,), (), (U, b) = carries, seqs, ps
    h2 = g.apply("tanh", h @ U + b)
    return [h2], [h2 * h2]


@dataclass
class Form:
    step: Callable
    states: int = 1
    seqs: tuple = (("x", (N, E)),)  # name, shape of one step
    params: tuple = (("W", (E, H)), ("U", (H, H)), ("b", (H,)))
    reverse: bool = False
    mask: bool = False
    encoder: bool = False  # the step reads enc = tanh(z @ Z), computed in the outer graph
    truncate: int | None = None
    length: int | None = None  # a scan over no sequence


LSTM_PARAMS = (("W", (E, 4 * H)), ("U", (H, 4 * H)), ("b", (4 * H,)))
FORMS = {
    "forward": Form(rnn_step),
    "reverse": Form(rnn_step, reverse=True),
    "states": Form(lstm_step, states=2, params=LSTM_PARAMS),
    "states_reverse": Form(lstm_step, states=2, params=LSTM_PARAMS, reverse=True),
    "extras": Form(extras_step, params=Form.params + (("W2", (E, H)),)),
    "mask": Form(masked(extras_step), params=Form.params + (("W2", (E, H)),), mask=True),
    "mask_reverse": Form(masked(lstm_step), states=2, params=LSTM_PARAMS, mask=True, reverse=True),
    "nonseqs": Form(encoder_step, params=(("W", (E, H)), ("U", (H, H)), ("V", (H, H))), encoder=True),
    "two_seqs": Form(two_seq_step, seqs=(("x", (N, E)), ("u", (N, H)))),
    "no_seq": Form(no_seq_step, seqs=(), params=(("U", (H, H)), ("b", (H,))), length=T),
    "attention": Form(attention_step, params=(("W", (E + H, H)), ("U", (H, H)), ("b", (H,)), ("Wa", (H, A)),
                                              ("Ua", (H, A)), ("v", (A,)), ("mem", (N, S, H)))),
}
TRUNCATED = {
    "forward_k2": Form(rnn_step, truncate=2),
    "reverse_k2": Form(rnn_step, reverse=True, truncate=2),
    "states_k1": Form(lstm_step, states=2, params=LSTM_PARAMS, truncate=1),
    "extras_k3": Form(extras_step, params=Form.params + (("W2", (E, H)),), truncate=3),
    "mask_k2": Form(masked(extras_step), params=Form.params + (("W2", (E, H)),), mask=True, truncate=2, reverse=True),
    "nonseqs_k2": Form(encoder_step, params=(("W", (E, H)), ("U", (H, H)), ("V", (H, H))), encoder=True, truncate=2),
    "k_is_T": Form(lstm_step, states=2, params=LSTM_PARAMS, truncate=T),
    "k_over_T": Form(rnn_step, reverse=True, truncate=T + 3),
}


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def form_inputs(form: Form, rng) -> dict[str, np.ndarray]:
    feeds = {f"s{k}": rng.normal(size=(N, H)) * 0.5 for k in range(form.states)}
    for name, shape in form.seqs:
        feeds[name] = rng.normal(size=(T,) + shape)
    if form.mask:
        # time-major [T, N]: the second sequence is padded after 2 steps, the first after 3
        feeds["m"] = np.array([[1, 1], [1, 1], [1, 0], [0, 0]], dtype=F)
    for name, shape in form.params:
        feeds[name] = rng.normal(size=shape) * 0.5
    if form.encoder:
        feeds["z"] = rng.normal(size=(N, E))
        feeds["Z"] = rng.normal(size=(E, H)) * 0.5
    return feeds


def build(form: Form, mode: str, feeds: dict):
    """The form as 'scan' (the op as is), 'hoisted' (through run_scan), 'unroll' (run_scan's
    unroll=True) or 'unrolled' (the reference, written out here).

    Returns (graph, inputs by name, named outputs [T, ...] in time order)."""
    g = Graph(float_dtype=F)
    ins = {k: g.add_input(k, F, v.shape) for k, v in feeds.items()}
    init = [ins[f"s{k}"] for k in range(form.states)]
    seqs = [ins[n] for n, _ in form.seqs] + ([ins["m"]] if form.mask else [])
    params = [ins[n] for n, _ in form.params]
    if form.encoder:
        params.append(g.apply("tanh", ins["z"] @ ins["Z"]))
    if mode == "unrolled":
        states = list(init)
        stacked = [[None] * T for _ in range(form.states)]
        extras = None
        order = range(T - 1, -1, -1) if form.reverse else range(T)
        for i, t in enumerate(order):
            xs = [g.apply("index", s, spec=(t,)) for s in seqs]
            ps = list(params)
            cs = list(states)
            if form.truncate is not None and i < T - form.truncate:
                sg = lambda v: g.apply("stop_gradient", v)  # noqa: E731
                cs, xs, ps = [sg(v) for v in cs], [sg(v) for v in xs], [sg(v) for v in ps]
            states, ys = form.step(g, cs, xs, ps)
            if extras is None:
                extras = [[None] * T for _ in ys]
            for k, s in enumerate(states):
                stacked[k][t] = s
            for k, y in enumerate(ys):
                extras[k][t] = y
        outs = [g.apply("concat", *[g.apply("unsqueeze", v, axes=(0,)) for v in vs], axis=0)
                for vs in stacked + extras]
    else:
        bg = Graph(float_dtype=F)
        carries = [bg.add_input(f"c{k}", F, v.shape) for k, v in enumerate(init)]
        seq_in = [bg.add_input(f"x{k}", F, v.shape[1:]) for k, v in enumerate(seqs)]
        p_in = [bg.add_input(f"p{k}", F, v.shape) for k, v in enumerate(params)]
        new, ys = form.step(bg, carries, seq_in, p_in)
        body = Body(bg, carries, seq_in, p_in, new, ys)
        if mode == "scan":
            res = g.apply("scan", *init, *seqs, *params, body=body, reverse=form.reverse, truncate=form.truncate,
                          length=form.length)
            outs = list(res) if isinstance(res, tuple) else [res]
        else:
            outs = recurrent.run_scan(g, body, init, seqs, params, reverse=form.reverse, truncate=form.truncate,
                                      length=form.length, unroll=mode == "unroll")
    return g, ins, outs


def loss_and_grads(form: Form, mode: str, feeds: dict, weights_seed: int):
    """Forward outputs, loss = sum_k <w_k, out_k> with fixed random w_k, and its gradient
    w.r.t. every input, all from one emitted ONNX model. Returns (results, runner)."""
    g, ins, outs = build(form, mode, feeds)
    rng = np.random.default_rng(weights_seed)
    loss = None
    for o in outs:
        term = g.apply("sum", o * g.const(rng.normal(size=[int(d) for d in o.shape])))
        loss = term if loss is None else loss + term
    names = list(ins)
    grads = grad([loss], [ins[n] for n in names])
    outputs = [("loss", loss)] + [(f"out{k}", o) for k, o in enumerate(outs)]
    outputs += [(f"grad/{n}", gv) for n, gv in zip(names, grads) if gv is not None]
    model = emit_model(g, [(n, ins[n]) for n in names], outputs)
    runner = Runner(model)
    got = runner(feeds)
    for n in names:  # inputs the loss does not reach (truncated away) have zero gradient
        got.setdefault(f"grad/{n}", np.zeros_like(feeds[n]))
    return got, runner, model


def _compare(a: dict, b: dict, tol=1e-9):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


@pytest.mark.parametrize("name", list(FORMS))
def test_scan_equals_unrolled(name):
    form = FORMS[name]
    feeds = form_inputs(form, np.random.default_rng(_seed(name)))
    want, _, _ = loss_and_grads(form, "unrolled", feeds, _seed(name) + 1)
    got, runner, model = loss_and_grads(form, "scan", feeds, _seed(name) + 1)
    hoisted, _, _ = loss_and_grads(form, "hoisted", feeds, _seed(name) + 1)
    unrolled, _, unrolled_model = loss_and_grads(form, "unroll", feeds, _seed(name) + 1)
    assert any(n.op_type == "Scan" for n in model.graph.node)
    assert not any(n.op_type in ("Scan", "Loop") for n in unrolled_model.graph.node)
    _compare(got, want)
    _compare(hoisted, want)
    _compare(unrolled, want)
    # ... and the symbolic gradient agrees with central differences (not w.r.t. the
    # 0/1 mask, whose `where` is discontinuous at 0).
    names = [n for n in feeds if n != "m"]

    def f(xs):
        return float(runner({**feeds, **dict(zip(names, xs))})["loss"])

    err = check_gradients(f, [feeds[n] for n in names], [got[f"grad/{n}"] for n in names],
                          np.random.default_rng(_seed(name) + 2), n_directions=3, n_coords=4)
    assert err < 1e-7, f"relative error {err:.2e}"


def test_mask_keeps_state_and_zeroes_outputs():
    form = FORMS["mask"]
    feeds = form_inputs(form, np.random.default_rng(3))
    got, _, _ = loss_and_grads(form, "hoisted", feeds, 4)
    hs, y0, y1 = got["out0"], got["out1"], got["out2"]
    m = feeds["m"]
    for t in range(T):
        for n in range(N):
            if m[t, n] == 0:
                prev = hs[t - 1, n] if t else feeds["s0"][n]
                np.testing.assert_array_equal(hs[t, n], prev)
                assert not y0[t, n].any() and not y1[t, n].any()
            else:
                assert np.abs(y1[t, n]).sum() > 0
    # the gradient w.r.t. padded inputs is zero
    assert not got["grad/x"][3].any() and not got["grad/x"][2, 1].any()


@pytest.mark.parametrize("name", list(TRUNCATED))
def test_truncated_scan_equals_stop_gradient_unrolled(name):
    form = TRUNCATED[name]
    feeds = form_inputs(form, np.random.default_rng(_seed(name)))
    want, _, _ = loss_and_grads(form, "unrolled", feeds, _seed(name) + 1)
    got, _, _ = loss_and_grads(form, "scan", feeds, _seed(name) + 1)
    hoisted, _, _ = loss_and_grads(form, "hoisted", feeds, _seed(name) + 1)
    # unroll=True honours the truncation (it silently kept the loop)
    unrolled, _, unrolled_model = loss_and_grads(form, "unroll", feeds, _seed(name) + 1)
    assert not any(n.op_type in ("Scan", "Loop") for n in unrolled_model.graph.node)
    _compare(got, want)
    _compare(hoisted, want)
    _compare(unrolled, want)
    if form.truncate < T:
        # truncation changes the gradient: the early steps and the initial state get none
        full = Form(**{**form.__dict__, "truncate": None})
        untrunc, _, _ = loss_and_grads(full, "scan", feeds, _seed(name) + 1)
        np.testing.assert_allclose(untrunc["loss"], got["loss"], rtol=1e-12)
        assert not np.allclose(untrunc["grad/W"], got["grad/W"])
        assert not got["grad/s0"].any()
        early = slice(0, T - form.truncate) if not form.reverse else slice(form.truncate, T)
        assert not got["grad/x"][early].any()
    else:
        full = Form(**{**form.__dict__, "truncate": None})
        untrunc, _, _ = loss_and_grads(full, "scan", feeds, _seed(name) + 1)
        _compare(got, untrunc)


# ---------------------------------------------------------------------------- spec level
HEAD = """\
flowgrad: 1
name: t
dims: {E: 3, H: 3}
"""

SCAN_SPEC = HEAD + """\
inputs:
  x: {shape: [N, T, E]}
  m: {shape: [N, T], dtype: int64}
params:
  V: {shape: [H, H], init: glorot_uniform}
  h0: {shape: [H], init: {uniform: {low: -0.5, high: 0.5}}}
blocks:
  step:
    in: [x_t, h, c]
    params:
      W: {shape: [E, 2*H], init: glorot_uniform}
      U: {shape: [H, 2*H], init: orthogonal}
      b: {shape: [2*H], init: {uniform: {low: -0.5, high: 0.5}}}
    graph:
      a, z: split(x_t @ W + h @ U + b, 2, axis=-1)
      c2: sigmoid(z) * c + tanh(a @ V)
      h2: tanh(c2) * sigmoid(a)
      y: h2 * c2
    out: [h2, c2, y]
graph:
  init: zeros(N, H) + h0
  hs, cs, ys: scan(step, over=x, init=[init, zeros(N, H)], axis=1, reverse=true, mask=m)
loss: mean(hs * hs) + mean(cs) + sum(ys * ys)
"""

LENGTHS = HEAD + """\
inputs:
  x: {shape: [N, T, E]}
  len: {shape: [N], dtype: int64}
"""
# random_batch draws integer inputs as 0 or 1: `len + 2` gives lengths 2 or 3 of T = 4.
CELL_SPECS = {
    "scan": SCAN_SPEC,
    "lstm_lengths": LENGTHS + "graph:\n  hs: lstm(x, H, lengths=len + 2)\nloss: mean(hs * hs) + mean(hs)\n",
    "lstm_reverse_mask": HEAD + "inputs:\n  x: {shape: [N, T, E]}\n  m: {shape: [N, T], dtype: int64}\n"
                         "graph:\n  hs: lstm(x, H, mask=m, reverse=true)\nloss: mean(hs * hs) + mean(hs)\n",
    "gru_ln_lbr": LENGTHS + "graph:\n  hs: gru(x, H, layer_norm=true, lengths=len + 2)\n"
                  "loss: mean(hs * hs) + mean(hs)\n",
    "gru_ln_no_lbr": LENGTHS + "graph:\n  hs: gru(x, H, layer_norm=true, linear_before_reset=false)\n"
                     "loss: mean(hs * hs) + mean(hs)\n",
    "lstm_ln": LENGTHS + "graph:\n  hs: lstm(x, H, layer_norm=true, lengths=len + 2)\nloss: mean(hs * hs) + mean(hs)\n",
    "rnn_ln": LENGTHS + "graph:\n  hs: rnn(x, H, layer_norm=true, reverse=true)\nloss: mean(hs * hs) + mean(hs)\n",
    "bidir_concat": LENGTHS + "graph:\n  hs: bidirectional(lstm, x, H, merge=concat, lengths=len + 2)\n"
                    "loss: mean(hs * hs) + mean(hs)\n",
    "bidir_sum": LENGTHS + "graph:\n  hs: bidirectional(gru, x, H, merge=sum)\nloss: mean(hs * hs) + mean(hs)\n",
    "lstm_layers2": LENGTHS + "graph:\n  hs, h, c: lstm(x, H, layers=2, return_state=true, lengths=len + 2)\n"
                    "loss: mean(hs * hs) + mean(h) + mean(c * c)\n",
    "gru_layers2": LENGTHS + "graph:\n  hs: gru(x, H, layers=2, reverse=true)\nloss: mean(hs * hs) + mean(hs)\n",
    "bidir_layers2": LENGTHS + "graph:\n  hs: bidirectional(gru, x, H, layers=2, lengths=len + 2)\n"
                     "loss: mean(hs * hs) + mean(hs)\n",
    # a 2-layer encoder-decoder: the encoder's final states of every layer (each row's at its own last
    # step, the first layer's from a learnt h0) start the decoder's layers; the loss reads the decoder
    # alone, so the encoder's second layer gets its gradient through the stacked states only
    "lstm_layers2_encoder_decoder": LENGTHS + """\
  y: {shape: [N, T, E]}
params:
  h0: {shape: [2, 1, H], init: {uniform: {low: -0.5, high: 0.5}}}
graph:
  enc, h, c: lstm(x, H, layers=2, lengths=len + 2, init=[zeros(2, N, H) + h0, zeros(2, N, H)], return_state=all)
  dec, dh, dc: lstm(y, H, layers=2, reverse=true, init=[h, c], return_state=all)
  dg: gru(y, H, layers=2, dropout=0.3, init=[h[::-1] + c])
loss: mean(dec * dec) + mean(dh) + mean(dc * dc) + mean(dg * dg)
""",
    # a bidirectional encoder's states per layer and direction ([4, N, H] from a learnt h0, each
    # row's at its own last step forwards, at step 0 backwards) start a bidirectional decoder, and
    # its top layer's two directions ([N, 2H]) an lstm of 2H units; the loss reads the decoders alone
    "bidir_states_encoder_decoder": LENGTHS + """\
  y: {shape: [N, T, E]}
params:
  h0: {shape: [4, 1, H], init: {uniform: {low: -0.5, high: 0.5}}}
graph:
  enc, h, c: bidirectional(lstm, x, H, layers=2, merge=sum, dropout=0.3, lengths=len + 2,
                           init=[zeros(4, N, H) + h0, zeros(4, N, H)], return_state=all)
  top, th, tc: bidirectional(lstm, x, H, lengths=len + 2, return_state=true)
  dec, dh: bidirectional(gru, y, H, layers=2, init=[h + c], return_state=all)
  dl: lstm(y, 2 * H, init=[th, tc])
loss: mean(dec * dec) + mean(dh) + mean(dl * dl)
""",
    "scan_length": HEAD + """\
inputs:
  z: {shape: [N, H]}
blocks:
  step:
    in: [h]
    params:
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(h @ U + z)
    out: [h2]
graph:
  hs: scan(step, init=[z], length=4)
loss: mean(hs * hs) + mean(hs)
""",
    "scan_two_seqs_axis0": HEAD + """\
inputs:
  x: {shape: [T, N, E]}
  u: {shape: [T, N, H]}
blocks:
  step:
    in: [x_t, u_t, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(x_t @ W + h @ U) * sigmoid(u_t)
      y: h2 + u_t
    out: [h2, y]
graph:
  hs, ys: scan(step, over=[x, u], init=[zeros(N, H)], axis=0, truncate=9)
loss: mean(hs * hs) + mean(ys * ys)
""",
}


def _grads(spec, seed=1):
    cm = compile_spec(spec, "float64", graphs=("grads",))
    graph = cm.graphs["grads"]
    feeds = random_batch(spec, [i.name for i in graph.inputs if i.role == "input"], np.random.default_rng(seed))
    state = cm.initial_state(seed)
    for i in graph.inputs:
        if i.name in state:
            feeds[i.name] = state[i.name]
        elif i.role == "control":
            feeds[i.name] = np.asarray(0, dtype=i.dtype)
    return cm, Runner(graph.model)(feeds)


@pytest.mark.parametrize("name", list(CELL_SPECS))
def test_spec_gradcheck(name):
    spec = spec_from_text(CELL_SPECS[name], f"{name}.yaml")
    report = gradcheck_spec(spec, seed=1)
    errors = report["main"]
    assert errors
    for p, err in errors.items():
        # 1e-5: a direction whose derivative is near 1e-3 carries ~1e-9 of the central
        # difference's own error (rnn_ln's hs.U at seed 1), ~1e-6 relative
        assert err < 1e-5, f"{p}: relative error {err:.2e}"
    # The check is not vacuous: every parameter gets a gradient.
    cm, got = _grads(spec)
    for p in errors:
        assert np.abs(got[f"grad/{p}"]).max() > 1e-6, f"{p} gets no gradient"


def test_spec_scan_params():
    spec = spec_from_text(SCAN_SPEC, "scan.yaml")
    cm = compile_spec(spec, "float64", graphs=("grads",))
    assert sorted(cm.params) == ["V", "h0", "step.U", "step.W", "step.b"]
    assert cm.params["step.W"].shape == (3, 6) and cm.params["step.U"].init_kind == "orthogonal"


def test_spec_mask_semantics():
    """mask= at spec level: padded steps keep the state and output zeros."""
    text = HEAD + """\
inputs:
  x: {shape: [N, T, E]}
  m: {shape: [N, T]}
blocks:
  step:
    in: [x_t, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(x_t @ W + h @ U)
      y: h2 + 1.0
      a: argmax(h2, axis=-1) + 1
    out: [h2, y, a]
graph:
  hs, ys, picks: scan(step, over=x, init=[zeros(N, H)], mask=m)
outputs:
  hs: hs
  ys: ys
  picks: picks
"""
    cm = compile_spec(spec_from_text(text, "mask.yaml"), "float64", graphs=("infer",))
    state = cm.initial_state(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, T, E))
    m = np.array([[1, 1, 1, 0], [1, 0, 1, 0]], dtype=F)  # a hole, then padding
    got = Runner(cm.graphs["infer"].model)({"x": x, "m": m, **{k: state[k] for k in ("step.W", "step.U")}})
    hs, ys = got["hs"], got["ys"]
    assert hs.shape == (N, T, H) and ys.shape == (N, T, H)
    np.testing.assert_array_equal(hs[1, 1], hs[1, 0])
    np.testing.assert_array_equal(hs[0, 3], hs[0, 2])
    np.testing.assert_array_equal(hs[1, 3], hs[1, 2])
    assert not ys[1, 1].any() and not ys[:, 3].any() and ys[0, :3].all() and ys[1, 2].all()
    # integer outputs too (they kept the padded step's value)
    picks = got["picks"]
    assert picks.dtype == np.int64 and (picks == 0).tolist() == (m == 0).tolist()
    W, U = state["step.W"], state["step.U"]
    h = np.zeros((N, H))
    for t in range(T):
        h = np.where(m[:, t, None] > 0, np.tanh(x[:, t] @ W + h @ U), h)
        np.testing.assert_allclose(hs[:, t], h, rtol=1e-12, atol=1e-12)


TRUNC_SPEC = """\
flowgrad: 1
name: t
dims: {E: 3, H: 3, T: 4}
inputs:
  x: {shape: [N, T, E]}
params:
  W: {shape: [E, H], init: glorot_uniform}
  U: {shape: [H, H], init: orthogonal}
  h0: {shape: [H], init: {uniform: {low: -0.5, high: 0.5}}}
blocks:
  step:
    in: [x_t, h]
    graph:
      h2: tanh(x_t @ W + h @ U)
    out: [h2]
  frozen:
    in: [x_t, h]
    graph:
      h2: tanh(stop_gradient(x_t) @ stop_gradient(W) + stop_gradient(h) @ stop_gradient(U))
    out: [h2]
graph:
  init: zeros(N, H) + h0
%s
loss: mean(hs * hs) + mean(hs)
"""


@pytest.mark.parametrize("reverse", [False, True])
def test_spec_truncate_equals_stop_gradient(reverse):
    """truncate=2 over T=4: the gradient of the two-scan split whose first part is frozen."""
    rev = ", reverse=true" if reverse else ""
    trunc = TRUNC_SPEC % f"  hs: scan(step, over=x, init=[init], truncate=2{rev})"
    if not reverse:
        split = ("  early: scan(frozen, over=x[:, 0:2], init=[init])\n"
                 "  late: scan(step, over=x[:, 2:4], init=[early[:, -1]])\n"
                 "  hs: concat(early, late, axis=1)")
    else:
        split = ("  early: scan(frozen, over=x[:, 2:4], init=[init], reverse=true)\n"
                 "  late: scan(step, over=x[:, 0:2], init=[early[:, 0]], reverse=true)\n"
                 "  hs: concat(late, early, axis=1)")
    full = TRUNC_SPEC % f"  hs: scan(step, over=x, init=[init]{rev})"
    # h0 reaches the loss only through the initial state, before the last 2 steps: refused while it
    # trains (it would get no gradient), so it is a fixed initial state here
    with pytest.raises(GradientError, match="'h0' gets no gradient.*truncate=2 cuts off"):
        compile_spec(spec_from_text(trunc, "trunc.yaml"), "float64", graphs=("grads",))
    fixed = lambda text: text.replace("high: 0.5}}}", "high: 0.5}}, trainable: false}")  # noqa: E731
    a = _grads(spec_from_text(fixed(trunc), "trunc.yaml"))[1]
    b = _grads(spec_from_text(fixed(TRUNC_SPEC % split), "split.yaml"))[1]
    c = _grads(spec_from_text(fixed(full), "full.yaml"))[1]
    assert sorted(a) == sorted(b) == ["grad/U", "grad/W", "loss"]
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(a["loss"], c["loss"], rtol=1e-12)
    assert not np.allclose(a["grad/W"], c["grad/W"])


UNROLL_TRUNC_SPEC = HEAD.replace("H: 3}", "H: 3, T: 4}") + """\
inputs:
  x: {shape: [N, T, E]}
  m: {shape: [N, T], dtype: int64}
  len: {shape: [N], dtype: int64}
blocks:
  step:
    in: [x_t, h, c]
    params:
      W: {shape: [E, H], init: glorot_uniform}
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(x_t @ W + h @ U) * sigmoid(c)
      c2: c + h2
      y: h2 * c2
    out: [h2, c2, y]
graph:
%s
loss: mean(hs * hs) + mean(hs)
"""


@pytest.mark.parametrize("graph", [
    "  hs, cs, ys: scan(step, over=x, init=[zeros(N, H), zeros(N, H)], truncate=2%s)",
    "  hs, cs, ys: scan(step, over=x, init=[zeros(N, H), zeros(N, H)], truncate=1, reverse=true, mask=m%s)",
    "  hs: lstm(x, H, truncate=2, lengths=len + 2%s)",
    "  hs: gru(x, H, truncate=3, reverse=true%s)",
    "  hs: bidirectional(rnn, x, H, layers=2, truncate=2, lengths=len + 2%s)",
], ids=["scan", "scan_reverse_mask", "lstm_lengths", "gru_reverse", "bidirectional_layers"])
def test_an_unrolled_truncated_scan_has_the_loops_gradient(graph):
    """unroll=true with truncate=K writes the steps out and lets gradients flow back K steps, as the
    loop does: it silently kept the loop (the spec's unroll=true did nothing)."""
    text = UNROLL_TRUNC_SPEC % graph
    results = {}
    for kw in ("", ", unroll=true"):
        cm, results[kw] = _grads(spec_from_text(text % kw, "trunc.yaml"))
        loops = [n.op_type for n in cm.graphs["grads"].model.graph.node if n.op_type in ("Scan", "Loop")]
        assert bool(loops) == (kw == ""), loops
    looped, unrolled = results.values()
    assert sorted(looped) == sorted(unrolled)
    for k in looped:
        np.testing.assert_allclose(unrolled[k], looped[k], rtol=1e-12, atol=1e-14, err_msg=k)
    # not vacuous: the truncation changes the gradient
    full = _grads(spec_from_text(re.sub(r", truncate=\d+", "", text % ", unroll=true"), "full.yaml"))[1]
    assert any(not np.allclose(full[k], unrolled[k]) for k in unrolled if k.startswith("grad/"))


# ---------------------------------------------------------------------------- hoisting
LSTM_SPEC = HEAD + """\
inputs:
  x: {shape: [N, T, E]}
  y: {shape: [N, T, H]}
graph:
  hs: lstm(x, H)
loss: mean((hs - y) * (hs - y))
"""


def _loops(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The graph's Scan nodes in order: the forward scan precedes its gradient."""
    return [n for n in model.graph.node if n.op_type == "Scan"]


def _attr(node: onnx.NodeProto, name: str):
    (attr,) = [a for a in node.attribute if a.name == name]
    return onnx.helper.get_attribute_value(attr)


def _body(loop: onnx.NodeProto) -> onnx.GraphProto:
    (attr,) = [a for a in loop.attribute if a.name == "body"]
    return attr.g


def _matmuls(nodes) -> list[onnx.NodeProto]:
    return [n for n in nodes if n.op_type in ("MatMul", "Gemm")]


def _compile(text, dtype, graphs, hoist=True, monkeypatch=None):
    if monkeypatch is not None:
        monkeypatch.setattr(recurrent, "HOIST", hoist)
    return compile_spec(spec_from_text(text, "t.yaml"), dtype, graphs=graphs)


def test_lstm_loops_are_hoisted(monkeypatch):
    cm = _compile(LSTM_SPEC, "float32", ("train",), True, monkeypatch)
    model = cm.graphs["train"].model
    fwd, bwd = _loops(model)
    # Forward step: only h @ U stays in the loop.
    fbody = _body(fwd)
    (mm,) = _matmuls(fbody.node)
    assert "hs.U" in mm.input
    assert not any("hs.W" in n.input for n in fbody.node)
    assert fwd.input[2:] and all(i not in ("hs.W", "hs.b") for i in fwd.input)
    # The input projection is one product over all steps, outside the loop.
    (proj,) = [n for n in _matmuls(model.graph.node) if "hs.W" in n.input]
    shapes = {v.name: v.type.tensor_type.shape for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    dims = [d.dim_param or d.dim_value for d in shapes[proj.output[0]].dim]
    assert dims == ["T", "N", 4 * H]  # x @ W for every step at once
    # Backward step: it propagates δ @ Uᵀ and nothing else (h @ U is read from what the
    # forward loop saved, not recomputed); dU = Σ_t h_{t-1}ᵀ δ_t is one product outside,
    # not a sum carried by the loop.
    bbody = _body(bwd)
    made = {o: n for n in bbody.node for o in n.output}
    mms = _matmuls(bbody.node)
    assert not any("hs.W" in n.input for n in bbody.node)
    assert len(mms) == 1
    for n in mms:  # a dU term would be transpose(h_{t-1}) @ δ_t
        first = made.get(n.input[0])
        assert first is None or first.op_type != "Transpose", "dU computed in the backward loop"
    n_carries = len(bwd.input) - _attr(bwd, "num_scan_inputs")
    assert n_carries == 2, "the backward loop carries only ∂h and ∂c (no gradient accumulators)"
    assert len(fwd.input) - _attr(fwd, "num_scan_inputs") == 2
    # The gate derivatives depend on forward values only: they are computed for all steps
    # at once outside, so the step keeps ∂h + ∂y_t, ∂c, the four gate cotangents, δ @ Uᵀ
    # and ∂c ⊙ f (seven nodes), instead of recomputing the gates (forty-odd).
    assert [n.op_type for n in bbody.node].count("Sigmoid") == 0
    assert len(bbody.node) <= 8, [n.op_type for n in bbody.node]


def test_backward_reads_the_states_before_each_step_from_the_forward_loop():
    """The state before step t is the forward Scan's own output (an input of the step written
    out each step), not the stacked states shifted by a Slice and a Concat of the whole
    sequence; and the stacked cell states, which nothing else reads, are not kept."""
    cm = _compile(LSTM_SPEC, "float32", ("train", "eval"), True)
    model = cm.graphs["train"].model
    fwd, _ = _loops(model)
    fbody = _body(fwd)
    state_inputs = [i.name for i in fbody.input[:2]]
    made = {o: n for n in fbody.node for o in n.output}
    written = [o.name for o in fbody.output[2:]]
    for state in state_inputs:  # h_{t-1} and c_{t-1} leave the step as they came in
        assert any(made[o].op_type == "Identity" and made[o].input == [state] for o in written if o in made)
    assert not [n for n in model.graph.node if n.op_type == "Slice"], "a shift of the states"
    # per step: h_t (the layer's output), h_{t-1}, c_{t-1}, and the saved gate activations
    assert len(fbody.output) - 2 == 3 + 5
    # The eval graph keeps only the stacked h_t (c_t is read by nothing).
    (efwd,) = _loops(cm.graphs["eval"].model)
    assert len(_body(efwd).output) == 2 + 1


def test_truncation_keeps_no_stacked_state_nothing_reads():
    """A truncated scan's step mask reads its number of steps from a sequence, so a state only
    the loop reads (c here: its gradient needs no state before each step) is still not kept."""
    text = HEAD + """\
inputs:
  x: {shape: [N, T, E]}
blocks:
  step:
    in: [x_t, c, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
      U: {shape: [H, H], init: orthogonal}
    graph:
      c2: c + tanh(x_t @ W + h @ U)
      h2: tanh(c2)
    out: [c2, h2]
graph:
  cs, hs: scan(step, over=x, init=[zeros(N, H), zeros(N, H)]TRUNCATE)
loss: mean(hs * hs)
"""
    outputs = []
    for truncate in ("", ", truncate=2"):
        fwd, _ = _loops(_compile(text.replace("TRUNCATE", truncate), "float32", ("train",)).graphs["train"].model)
        outputs.append(len(_body(fwd).output))
    assert outputs[1] == outputs[0]


def test_gru_backward_step_factors_the_update_gate():
    """h' = (1 - z) * n + z * h: the z-gate cotangent δ*h - δ*n is regrouped to δ * (h - n),
    with h - n computed for all steps outside, so the backward step has no negation."""
    cm = _compile(LSTM_SPEC.replace("lstm(x, H)", "gru(x, H)"), "float32", ("train",))
    _, bwd = _loops(cm.graphs["train"].model)
    ops = [n.op_type for n in _body(bwd).node]
    assert "Neg" not in ops and "Sub" not in ops, ops
    assert len(ops) <= 9, ops


def test_attention_decoder_gradients_leave_the_backward_loop():
    """The weight gradients of an attention decoder are sums over time of products whose
    first factor the forward pass saved: the GRU input weights (a product with
    concat(y_t, ctx_t), computed from saved values) and the encoder states read through
    the context (a batched product alpha_t ⊗ dctx_t) are each one product over all steps
    outside; the backward loop carries only dL/ds and d(keys), an elementwise sum."""
    from test_models import shrunk

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cm = compile_spec(shrunk(os.path.join(root, "models", "dates_attention.yaml")), graphs=("train",))
    loops = _loops(cm.graphs["train"].model)
    carries = [len(n.input) - _attr(n, "num_scan_inputs") for n in loops]
    decoder_backward = max(loops, key=lambda n: len(_body(n).node))
    assert len(decoder_backward.input) - _attr(decoder_backward, "num_scan_inputs") <= 2, carries
    assert len(_body(decoder_backward).node) <= 32, [n.op_type for n in _body(decoder_backward).node]


def test_unhoisted_loop_keeps_the_projection(monkeypatch):
    cm = _compile(LSTM_SPEC, "float32", ("train",), False, monkeypatch)
    fwd, _ = _loops(cm.graphs["train"].model)
    assert len(_matmuls(_body(fwd).node)) == 2


HOIST_SPECS = {"lstm": LSTM_SPEC, "scan": SCAN_SPEC, "gru_ln_lbr": CELL_SPECS["gru_ln_lbr"],
               "bidir_concat": CELL_SPECS["bidir_concat"]}


@pytest.mark.parametrize("name", list(HOIST_SPECS))
def test_hoisting_does_not_change_results(name, monkeypatch):
    text = HOIST_SPECS[name]
    spec = spec_from_text(text, "t.yaml")
    results = []
    for hoist in (True, False):
        cm = _compile(text, "float64", ("train",), hoist, monkeypatch)
        graph = cm.graphs["train"]
        feeds = random_batch(spec, [i.name for i in graph.inputs if i.role == "input"], np.random.default_rng(5))
        state = cm.initial_state(5)
        for i in graph.inputs:
            if i.name in state:
                # the initial biases are zero: make them count
                feeds[i.name] = state[i.name] + (0.1 if i.role == "param" and "." in i.name else 0.0)
            elif i.role == "control":
                feeds[i.name] = np.asarray({"lr": 0.1, "step": 2, "seed": 5}[i.name], dtype=i.dtype)
        loops = _loops(graph.model)
        results.append((Runner(graph.model)(feeds), sum(len(_matmuls(_body(n).node)) for n in loops)))
    (on, mm_on), (off, mm_off) = results
    assert mm_on < mm_off
    assert sorted(on) == sorted(off)
    for k in on:
        np.testing.assert_allclose(on[k], off[k], rtol=1e-12, atol=1e-14, err_msg=k)


# ---------------------------------------------------------------------------- portability
@pytest.mark.parametrize("name", ["lstm", "scan"])
def test_training_graph_runs_on_reference_evaluator(name):
    text = HOIST_SPECS[name]
    spec = spec_from_text(text, "t.yaml")
    cm = compile_spec(spec, "float32", graphs=("train",))
    graph = cm.graphs["train"]
    assert _loops(graph.model)
    feeds = random_batch(spec, [i.name for i in graph.inputs if i.role == "input"], np.random.default_rng(2),
                         "float32")
    _assert_onnxruntime_matches_reference(cm, graph, feeds)


def _assert_onnxruntime_matches_reference(cm, graph, feeds, what=""):
    """The graph run by onnxruntime and by onnx's reference evaluator on the data `feeds`, with
    the initial state and fixed lr, step and seed, gives the same outputs."""
    feeds, state = dict(feeds), cm.initial_state(2)
    for i in graph.inputs:
        if i.name in state:
            feeds[i.name] = state[i.name]
        elif i.role == "control":
            feeds[i.name] = np.asarray({"lr": 1e-2, "step": 3, "seed": 2}[i.name], dtype=i.dtype)
    runner = Runner(graph.model)
    assert runner.backend == "onnxruntime"
    ort_out, ref_out = runner(feeds), reference_run(graph.model, feeds)
    assert sorted(ort_out) == sorted(ref_out)
    for k, v in ort_out.items():
        np.testing.assert_allclose(ref_out[k], v, rtol=2e-4, atol=2e-5, err_msg=f"{what} {k}".strip())


def test_char_lstm_training_graph_over_97_characters_runs_on_reference_evaluator():
    """The cross entropy picks among 97 classes: onnx.reference's GatherElements (numpy's choose)
    takes at most 64, so char_lstm's train and eval graphs failed in it."""
    from spec import load_spec

    spec = load_spec(os.path.join(os.path.dirname(__file__), "..", "models", "char_lstm.yaml"), ["dims.H=8", "dims.E=4"])
    cm = compile_spec(spec, "float32", graphs=("train", "eval"))
    for kind in ("train", "eval"):
        graph = cm.graphs[kind]
        feeds = {i.name: np.random.default_rng(3).integers(0, 97, (2, 5)).astype(np.int64)
                 for i in graph.inputs if i.role == "input"}
        _assert_onnxruntime_matches_reference(cm, graph, feeds, kind)


def test_unrolled_scan_equals_the_loop():
    """`unroll=true` writes a fixed-length scan out step by step: same values, same gradients."""
    from compiler.gradcheck import random_batch
    from compiler.training import compile_spec
    from spec import spec_from_text

    text = """
flowgrad: 1
name: unroll
dims: {V: 7, E: 3, H: 4, T: 5}
inputs:
  x: {shape: [N, T], dtype: int64}
  y: {shape: [N], dtype: int64}
graph:
  hs: gru(embedding(x, V, E), H, unroll=UNROLL, reverse=true)
  logits: dense(hs[:, 0], V)
loss: cross_entropy(logits, y)
train:
  optimizer: {sgd: {lr: 0.1}}
  dtype: float64
"""
    results = []
    for flag in ("false", "true"):
        cm = compile_spec(spec_from_text(text.replace("UNROLL", flag), "unroll.yaml"), graphs=("grads",))
        graph = cm.graphs["grads"]
        loops = [n for n in graph.model.graph.node if n.op_type == "Scan"]
        assert bool(loops) == (flag == "false")
        feeds = random_batch(cm.spec, ["x", "y"], np.random.default_rng(0))
        feeds["x"] = np.random.default_rng(1).integers(0, 7, size=(3, 5))
        state = cm.initial_state(0)
        feeds.update({i.name: state[i.name] for i in graph.inputs if i.name in state})
        feeds.update({i.name: np.asarray(0) for i in graph.inputs if i.role == "control"})
        results.append(Runner(graph.model)(feeds))
    for k in results[0]:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-12, atol=1e-14, err_msg=k)


# ---------------------------------------------------------------------------- second order
def _probe(g, values, like, rng):
    """sum_k <u_k, values_k> with fixed random u_k shaped like `like` (one drawn per entry,
    also where a value is None, so that every mode draws the same u)."""
    probe = None
    for v, ref in zip(values, like):
        u = rng.normal(size=[int(d) for d in ref.shape])
        if v is not None:
            term = g.apply("sum", v * g.const(u))
            probe = term if probe is None else probe + term
    return probe


def higher_order(form: Form, mode: str, feeds: dict, seed: int, order: int = 2):
    """loss = sum_k <w_k, out_k>, its gradient G w.r.t. every input, and `order` - 1 times
    more: probe = <u, G> (the gradient read by a loss, as a gradient penalty reads it) and its
    gradient H u w.r.t. every input (order 3: that once more). Returns (results, runner, names,
    model): results hold the last probe and its gradient "h/NAME" (zeros where it does not reach)."""
    g, ins, outs = build(form, mode, feeds)
    rng = np.random.default_rng(seed)
    names = [n for n in ins if n != "m"]  # not the 0/1 mask, whose `where` is discontinuous
    xs = [ins[n] for n in names]
    probe = _probe(g, outs, outs, rng)
    for _ in range(order - 1):
        probe = _probe(g, grad([probe], xs), xs, rng)
    hs = grad([probe], xs)
    outputs = [("probe", probe)] + [(f"h/{n}", h) for n, h in zip(names, hs) if h is not None]
    model = emit_model(g, [(n, ins[n]) for n in ins], outputs)
    runner = Runner(model)
    got = runner(feeds)
    for n in names:
        got.setdefault(f"h/{n}", np.zeros_like(feeds[n]))
    return got, runner, names, model


@pytest.mark.parametrize("name", list(FORMS) + list(TRUNCATED))
def test_second_order_equals_unrolled(name):
    """A scan's gradient differentiated again (its second-order terms: a gradient penalty, a
    Hessian-vector product) equals that of the same steps written out, to 1e-9 in float64,
    for every form: reverse, several states, extra outputs, masks, non-sequences, two
    sequences, no sequence, an attention decoder, truncated ones (whose written-out steps
    before the last K read their inputs through stop_gradient, so the second derivative
    treats them as constants, as the first does); and, untruncated, it agrees with central
    differences of the first-order gradient. It was a GradientError."""
    form = {**FORMS, **TRUNCATED}[name]
    feeds = form_inputs(form, np.random.default_rng(_seed(name)))
    want, _, _, _ = higher_order(form, "unrolled", feeds, _seed(name) + 1)
    got, runner, names, model = higher_order(form, "scan", feeds, _seed(name) + 1)
    hoisted, _, _, _ = higher_order(form, "hoisted", feeds, _seed(name) + 1)
    assert any(n.op_type == "Scan" for n in model.graph.node)
    _compare(got, want)
    _compare(hoisted, want)
    assert max(np.abs(got[f"h/{n}"]).max() for n in names) > 1e-3
    if form.truncate is None or form.truncate >= T:
        def f(xs):
            return float(runner({**feeds, **dict(zip(names, xs))})["probe"])

        err = check_gradients(f, [feeds[n] for n in names], [got[f"h/{n}"] for n in names],
                              np.random.default_rng(_seed(name) + 2), n_directions=3, n_coords=4)
        assert err < 1e-6, f"relative error {err:.2e}"


@pytest.mark.parametrize("name", ["forward", "states", "mask_reverse"])
def test_second_order_without_hoisting_equals_unrolled(name, monkeypatch):
    form = FORMS[name]
    feeds = form_inputs(form, np.random.default_rng(_seed(name)))
    want, _, _, _ = higher_order(form, "unrolled", feeds, _seed(name) + 1)
    monkeypatch.setattr(recurrent, "HOIST", False)
    got, _, _, _ = higher_order(form, "scan", feeds, _seed(name) + 1)
    _compare(got, want)


@pytest.mark.parametrize("name", ["forward", "states", "attention"])
def test_third_order_equals_unrolled(name):
    """The second-order graph of a scan is differentiated again like any other."""
    form = FORMS[name]
    feeds = form_inputs(form, np.random.default_rng(_seed(name)))
    want, _, _, _ = higher_order(form, "unrolled", feeds, _seed(name) + 1, order=3)
    got, runner, names, _ = higher_order(form, "scan", feeds, _seed(name) + 1, order=3)
    _compare(got, want, tol=1e-8)

    def f(xs):
        return float(runner({**feeds, **dict(zip(names, xs))})["probe"])

    err = check_gradients(f, [feeds[n] for n in names], [got[f"h/{n}"] for n in names],
                          np.random.default_rng(_seed(name) + 2))
    assert err < 1e-6, f"relative error {err:.2e}"


PENALTY_HEAD = """flowgrad: 1
name: gp
dims: {E: 3, H: 4TDIM}
inputs:
  x: {shape: [N, T, E]}
  len: {shape: [N], dtype: int64}
  m: {shape: [N, T], dtype: int64}
"""
PENALTY_BLOCK = """blocks:
  step:
    in: [x_t, h, c]
    params:
      W: {shape: [E, 2*H], init: glorot_uniform}
      U: {shape: [H, 2*H], init: orthogonal}
      b: {shape: [2*H], init: {uniform: {low: -0.5, high: 0.5}}}
    graph:
      a, z: split(dropout(x_t, rate=0.3) @ W + h @ U + b, 2, axis=-1)
      c2: sigmoid(z) * c + tanh(a)
      h2: tanh(c2) * sigmoid(a)
      y: h2 * c2
    out: [h2, c2, y]
"""
# A gradient (w.r.t. the input or a weight) read by the loss: the training graph differentiates
# the scan's gradient again. LOOP is the place of scan's (or the layer's) unroll=.
PENALTIES = {
    "rnn_input": "graph:\n  hs: rnn(x, HLOOP)\n  gx: grad(sum(hs * hs), x)\nloss: mean(hs) + mean(gx * gx)\n",
    "lstm_input": "graph:\n  hs: lstm(x, HLOOP)\n  gx: grad(sum(hs * hs), x)\nloss: mean(hs) + mean(gx * gx)\n",
    "gru_lengths": "graph:\n  hs: gru(x, H, lengths=len + 2LOOP)\n  gx: grad(sum(hs * hs), x)\n"
                   "loss: mean(hs) + mean(gx * gx)\n",
    "gru_layer_norm": "graph:\n  hs: gru(x, H, layer_norm=true, linear_before_reset=falseLOOP)\n"
                      "  gx: grad(sum(hs * hs), x)\nloss: mean(hs) + mean(gx * gx)\n",
    "lstm_ln_reverse": "graph:\n  hs: lstm(x, H, layer_norm=true, reverse=true, lengths=len + 2LOOP)\n"
                       "  gx: grad(sum(hs * hs), x)\nloss: mean(hs) + mean(gx * gx)\n",
    "lstm_layers2": "graph:\n  hs, h, c: lstm(x, H, layers=2, return_state=trueLOOP)\n"
                    "  gx: grad(sum(hs * hs) + sum(c), x)\nloss: mean(hs) + mean(gx * gx)\n",
    "bidirectional": "graph:\n  hs: bidirectional(gru, x, H, lengths=len + 2LOOP)\n  gx: grad(sum(hs * hs), x)\n"
                     "loss: mean(hs) + mean(gx * gx)\n",
    "rnn_truncated": "graph:\n  hs: rnn(x, H, truncate=2LOOP)\n  gx: grad(sum(hs * hs), x)\n"
                     "loss: mean(hs) + mean(gx * gx)\n",
    "input_projection": "params:\n  P: {shape: [E, E], init: glorot_uniform}\ngraph:\n  hs: rnn(x @ P, HLOOP)\n"
                        "  gp: grad(sum(hs * hs), P)\nloss: mean(hs) + sum(gp * gp)\n",
    "block_mask_dropout": PENALTY_BLOCK + "graph:\n  hs, cs, ys: scan(step, over=x, init=[zeros(N, H), zeros(N, H)], "
                          "reverse=true, mask=mLOOP)\n  f: mean(hs * hs) + mean(cs) + sum(ys * ys)\n"
                          "  gU: grad(f, step.U)\n  gx: grad(f, x)\nloss: f + sum(gU * gU) + mean(gx * gx)\n",
    "block_length": "blocks:\n  step:\n    in: [h]\n    params:\n      U: {shape: [H, H], init: orthogonal}\n"
                    "    graph:\n      h2: tanh(h @ U + z)\n    out: [h2]\ngraph:\n  z: x[:, 0] @ Z\n"
                    "  hs: scan(step, init=[z], length=3LOOP)\n  gz: grad(sum(hs * hs), Z)\n"
                    "loss: mean(hs) + sum(gz * gz)\nparams:\n  Z: {shape: [E, H], init: glorot_uniform}\n",
    "nested": "blocks:\n  inner:\n    in: [g]\n    params:\n      U: {shape: [H, H], init: orthogonal}\n"
              "    graph:\n      g2: tanh(g @ U)\n    out: [g2]\n  step:\n    in: [x_t, h]\n    params:\n"
              "      W: {shape: [E, H], init: glorot_uniform}\n    graph:\n"
              "      gs: scan(inner, init=[tanh(x_t @ W) + h], length=2LOOP)\n      h2: sum(gs, axis=1)\n"
              "    out: [h2]\ngraph:\n  hs: scan(step, over=x, init=[zeros(N, H)]LOOP)\n"
              "  gx: grad(sum(hs * hs), x)\nloss: mean(hs) + mean(gx * gx)\n",
}


@pytest.mark.parametrize("name", list(PENALTIES))
def test_gradient_penalty_through_a_recurrent_layer(name):
    """A loss reading a gradient of a recurrent model (w.r.t. its input or a weight) trains:
    its gradient equals that of the steps written out (unroll=true) to 1e-9 and, untruncated,
    central differences of the loss (also with T symbolic). It was refused with 'second-order
    gradients through scan are not supported'."""
    body = PENALTIES[name]
    spec_text = PENALTY_HEAD + body + "train:\n  optimizer: {sgd: {lr: 0.1}}\n"
    fixed = spec_text.replace("TDIM", ", T: 4")
    cm, looped = _grads(spec_from_text(fixed.replace("LOOP", ""), "gp.yaml"))
    loops = [n for n in cm.graphs["grads"].model.graph.node if n.op_type in ("Scan", "Loop")]
    assert loops
    cm, unrolled = _grads(spec_from_text(fixed.replace("LOOP", ", unroll=true"), "gp.yaml"))
    assert not [n for n in cm.graphs["grads"].model.graph.node if n.op_type in ("Scan", "Loop")]
    _compare(looped, unrolled)
    if "truncate" not in body:
        for text in (fixed, spec_text.replace("TDIM", "")):
            report = gradcheck_spec(spec_from_text(text.replace("LOOP", ""), "gp.yaml"), seed=1)
            worst = max(e for errs in report.values() for e in errs.values())
            assert worst < 1e-5, report


@pytest.mark.parametrize("name", ["lstm_ln_reverse", "block_mask_dropout"])
def test_a_gradient_penalty_runs_on_the_reference_evaluator(name):
    """The second-order loops (initial states from outer values, reverse ones among them) are
    standard ONNX: onnx's reference evaluator computes what onnxruntime does."""
    text = PENALTY_HEAD.replace("TDIM", "") + PENALTIES[name].replace("LOOP", "") \
        + "train:\n  optimizer: {sgd: {lr: 0.1}}\n"
    spec = spec_from_text(text, "gp.yaml")
    cm = compile_spec(spec, "float64", graphs=("grads",))
    graph = cm.graphs["grads"]
    # the forward loop, and per grad(...) its backward loop and that loop's derivative, and the
    # forward loop's backward pass of the training graph
    assert len(_loops(graph.model)) == {"lstm_ln_reverse": 4, "block_mask_dropout": 6}[name]
    feeds = random_batch(spec, [i.name for i in graph.inputs if i.role == "input"], np.random.default_rng(2))
    state = cm.initial_state(2)
    for i in graph.inputs:
        if i.name in state:
            feeds[i.name] = state[i.name]
        elif i.role == "control":
            feeds[i.name] = np.asarray(2 if i.name == "seed" else 0, dtype=i.dtype)
    ort_out = Runner(graph.model)(feeds)
    ref_out = reference_run(graph.model, feeds)
    assert sorted(ort_out) == sorted(ref_out)
    for k, v in ort_out.items():
        np.testing.assert_allclose(ref_out[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


def test_a_block_calling_a_block_shares_the_inner_parameters():
    from compiler.gradcheck import gradcheck_spec
    from compiler.training import check_spec
    from spec import spec_from_text

    text = """flowgrad: 1
name: nested
dims: {D: 4, H: 3}
inputs:
  x: {shape: [N, D]}
blocks:
  inner:
    in: [u]
    graph:
      h: dense(u, H, act=tanh)
    out: [h]
  outer:
    in: [v]
    graph:
      k: inner(v) * 2.0 + inner(v * 0.5)
    out: [k]
graph:
  y: outer(x)
loss: mean(y * y)
train:
  optimizer: {sgd: {lr: 0.1}}
  dtype: float64
"""
    spec = spec_from_text(text, "nested.yaml")
    assert sorted(check_spec(spec).params) == ["inner.h.W", "inner.h.b"]
    errors = gradcheck_spec(spec)["main"]
    assert max(errors.values()) < 1e-6, errors


NESTED_SPEC = HEAD.replace("H: 3}", "H: 3, T: 3}") + """\
inputs:
  x: {shape: [N, T, E]}
blocks:
  inner:
    in: [c]
    params:
      U: {shape: [H, H], init: orthogonal}
    graph:
      c2: tanh(c @ U)
    out: [c2]
  step:
    in: [x_t, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
    graph:
      cs: scan(inner, length=2, init=[tanh(x_t @ W) + h], axis=0)
      h2: cs[1]
    out: [h2]
graph:
  hs: scan(step, over=x, init=[zeros(N, H)]%s)
loss: sum(hs * hs)
"""


def nested_step(g, carries, seqs, ps):
    """A step running a scan of its own (over the step's slice, stacked states and an extra)."""
    (h,), (x,), (W, U, b) = carries, seqs, ps
    bg = Graph(float_dtype=F)
    c, xi, u = bg.add_input("c", F, h.shape), bg.add_input("x", F, x.shape), bg.add_input("u", F, U.shape)
    c2 = bg.apply("tanh", c @ u + xi)
    xs = g.apply("concat", *[g.apply("unsqueeze", x * float(k + 1), axes=(0,)) for k in range(3)], axis=0)
    states, ys = g.apply("scan", x @ W + h, xs, U, body=Body(bg, [c], [xi], [u], [c2], [c2 * c2]))
    return [g.apply("index", states, spec=(2,)) + b], [g.apply("sum", ys, axis=0)]


def test_a_scan_inside_a_scan_keeps_what_its_own_gradient_saves():
    """A scan's gradient adds outputs (what the backward pass reads) to the scan's step, which
    the scan nodes cloned from it shared: the inner scan of an unrolled step (one clone per
    step), or of the step each gradient recomputes. Each clone added its own outputs to the one
    step, and the backward passes read another clone's: unroll=true gave a nested scan wrong
    gradients (errors of 0.8 and 1.6 against finite differences), and so did a second grad()."""
    loop, unrolled = (spec_from_text(NESTED_SPEC % kw, "nested.yaml") for kw in ("", ", unroll=true"))
    assert max(gradcheck_spec(unrolled, seed=1)["main"].values()) < 1e-6
    (_, want), (_, got) = _grads(loop), _grads(unrolled)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)
    # two gradients of one graph, each against the written-out scan's
    form = Form(nested_step)
    feeds = form_inputs(form, np.random.default_rng(1))
    results = []
    for mode in ("unrolled", "scan"):
        g, ins, outs = build(form, mode, feeds)
        loss = g.apply("sum", outs[0] * outs[0]) + g.apply("sum", outs[1])
        outputs = []
        for j in range(2):
            outputs += [(f"grad{j}/{n}", gv) for n, gv in zip(ins, grad([loss], list(ins.values())))]
        results.append(Runner(emit_model(g, list(ins.items()), outputs))(feeds))
    _compare(results[1], results[0])


def test_a_mask_from_lengths_gets_no_gradient_in_the_backward_loop(monkeypatch):
    """Nothing differentiable flows into a mask cast from lengths: the backward step neither
    computes nor outputs a per-step gradient for it ([N] values)."""
    cm = _compile(CELL_SPECS["lstm_lengths"], "float64", ("train",), True, monkeypatch)
    _, bwd = _loops(cm.graphs["train"].model)
    ranks = [len(o.type.tensor_type.shape.dim) for o in _body(bwd).output]
    n_states = len(bwd.input) - _attr(bwd, "num_scan_inputs")
    assert 1 not in ranks[n_states:], ranks


def test_bidirectional_stacks_its_layers_and_refuses_what_it_cannot_do():
    spec = spec_from_text(CELL_SPECS["bidir_layers2"], "b.yaml")
    params = set(compile_spec(spec, graphs=("infer",)).params)
    for layer in ("l1", "l2"):
        for direction in ("fw", "bw"):
            assert f"hs.{layer}.{direction}.W" in params, (layer, direction, params)
    # the second layer reads both directions of the first
    assert compile_spec(spec, graphs=("infer",)).params["hs.l2.fw.W"].shape[0] == 2 * 3
    for bad in ("reverse=true", "stateful=true", "init=[zeros(N, H)]", "layers=0"):
        text = LENGTHS + f"graph:\n  hs: bidirectional(gru, x, H, {bad})\nloss: mean(hs * hs)\n"
        with pytest.raises(SpecError) as e:
            compile_spec(spec_from_text(text, "b.yaml"))
        assert str(e.value).startswith("b.yaml:"), str(e.value)


STEP_SPEC = HEAD + """\
inputs:
  x: {shape: [N, %s, E]}
  y: {shape: [N, %s, E]}
blocks:
  step:
    in: [x_t, y_t, h]
    params:
      U: {shape: [H, H], init: orthogonal}
      W: {shape: [E, H], init: glorot_uniform}
    graph:
      h2: tanh(h @ U + %s)
    out: [h2]
graph:
  hs: scan(step, over=[x, y], init=[zeros(N, H)])
loss: mean(hs * hs)
"""


@pytest.mark.parametrize("lengths", [("T", "T"), (4, 4)])
def test_a_step_that_reads_no_slice_of_its_sequences_runs_once_per_step(lengths, monkeypatch):
    """Hoisting leaves such a step no sequence: it still runs T times, as without hoisting."""
    text = STEP_SPEC % (*lengths, "1.0")
    got = _grads(spec_from_text(text, "s.yaml"))[1]
    monkeypatch.setattr(recurrent, "HOIST", False)
    want = _grads(spec_from_text(text, "s.yaml"))[1]
    for k in want:
        if k.startswith("grad/"):
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("lengths", [(4, 1), ("T", "S")])
def test_sequences_of_different_lengths_are_a_located_error(lengths):
    """Hoisting used to broadcast the shorter sequence's product over every step."""
    text = STEP_SPEC % (*lengths, "x_t @ W + y_t @ W")
    with pytest.raises(ShapeError, match="sequences have different lengths") as e:
        compile_spec(spec_from_text(text, "s.yaml"))
    assert str(e.value).startswith("s.yaml:")


BAD_ARGS_SPEC = HEAD + """\
inputs:
  x: {shape: [N, T, E]}
  s: {shape: []}
blocks:
  step:
    in: [x_t, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
    graph:
      h2: tanh(x_t @ W + h)
    out: [h2]
  lstep:
    in: [h]
    params:
      U: {shape: [H, H], init: glorot_uniform}
    graph:
      h2: tanh(h @ U)
    out: [h2]
graph:
  hs: %s
loss: mean(hs * hs) + s + mean(x)
"""


@pytest.mark.parametrize("call, words", [
    ("scan(step, over=x, init=[zeros(N, H)], mask=1.0)", "mask must be a tensor"),
    ("scan(step, over=x, init=[zeros(N, H)], truncate=[2])", "truncate must be a positive whole number"),
    ("scan(step, over=x, init=[zeros(N, H)], reverse=2)", "reverse must be true or false"),
    ("scan(step, over=s, init=[zeros(N, H)])", "batch and a time axis"),
    ("scan(step, over=x, init=[zeros(N, H)], length=3)", "over= or length=, not both"),
    ("scan(lstep, init=[zeros(N, H)], length=2.5)", "length must be a positive whole number"),
    ("scan(lstep, init=[zeros(N, H)], length=x)", "length must be a positive whole number"),
    # an axis past the sequences' rank wrapped around: axis=3 of [N, T, E] scanned over N
    ("scan(step, over=x, init=[zeros(N, H)], axis=3)", "axis 3 is out of range for a sequence"),
    ("scan(step, over=x, init=[zeros(N, H)], axis=-4)", "axis -4 is out of range for a sequence"),
    ("scan(step, over=x, init=[zeros(N, H)], axis=true)", "axis must be a whole number"),
    ("scan(step, over=x, init=[zeros(N, H)], axis=[0])", "axis must be a whole number"),
    ("lstm(x, H, truncate=x)", "truncate must be a positive whole number"),
    ("bidirectional(gru, x, H, truncate=0)", "truncate must be a positive whole number"),
    ("lstm(x, H, reverse=maybe)", "reverse must be true or false"),
    ("lstm(x, H, act=relu)", "act= is for rnn"),
    ("rnn(x, H, act=foo)", "act must be one of"),
    ("gru(x, H, lengths=s)", "lengths must be a vector"),
    ("lstm(x, H, stateful=true, reverse=true)", "stateful="),
    ("lstm(x, H, dropout=2)", "dropout between layers must be a rate"),
    # read by gru only, or between stacked layers only: they were accepted and silently ignored
    ("lstm(x, H, linear_before_reset=false)", "linear_before_reset= is for gru"),
    ("rnn(x, H, linear_before_reset=false)", "linear_before_reset= is for gru"),
    ("gru(x, H, dropout=0.5)", "dropout= acts between stacked layers"),
    ("bidirectional(lstm, x, H, dropout=0.5)", "dropout= acts between stacked layers"),
    # init= started the bottom layer alone, the ones above from zeros (an encoder's final states given to
    # a stacked decoder)
    ("gru(x, H, layers=2, init=[zeros(N, H)])", r"init= gives one layer's states, and this gru has 2 layers: "
                                                r"h0 is float32\[N, 3\]"),
    ("lstm(x, H, layers=3, init=[zeros(N, H), zeros(N, H)])", "this lstm has 3 layers"),
    ("lstm(x, H, return_state=both)", "return_state must be true, false or all, got 'both'"),
    ("lstm(x, H, return_state=x)", r"return_state must be true, false or all, got the tensor float32\[N, T, 3\]"),
    # (bidirectional() refused return_state: "returns the merged sequence only")
    ("bidirectional(gru, x, H, return_state=both)", "return_state must be true, false or all, got 'both'"),
    # the one-step cells took any act= and read flags loosely (bool("no") is true)
    ("lstm_cell(x[:, 0, :], zeros(N, H), zeros(N, H), act=relu)[0]", "act= is for rnn"),
    ("rnn_cell(x[:, 0, :], zeros(N, H), act=softplus)", "act must be one of"),
    ("gru_cell(x[:, 0, :], zeros(N, H), linear_before_reset=no)", "linear_before_reset must be true or false"),
    ("rnn_cell(x[:, 0, :], zeros(N, H), layer_norm=maybe)", "layer_norm must be true or false"),
    ("x + normal(x, std=-1)", "normal needs std >= 0"),
    ("x + uniform(x, low=2, high=1)", "uniform needs low < high"),
    ("x + bernoulli(x, p=3)", "bernoulli needs a probability"),
])
def test_bad_scan_arguments_are_located_errors(call, words):
    with pytest.raises(SpecError, match=words) as e:
        compile_spec(spec_from_text(BAD_ARGS_SPEC % call, "bad.yaml"), graphs=("train",))
    assert str(e.value).startswith("bad.yaml:23:"), str(e.value)



def test_an_entry_named_all_is_named_where_return_state_reads_it():
    """return_state=all reads the word all, which an entry of that name hides: the error names it."""
    text = BAD_ARGS_SPEC.replace("  hs: %s", "  all: x * 2.0\n  hs, h: gru(x, H, layers=2, return_state=all)")
    with pytest.raises(SpecError, match="return_state must be true, false or all, got the tensor") as e:
        compile_spec(spec_from_text(text, "bad.yaml"), graphs=("train",))
    assert e.value.loc.line == 24 and "entry named all" in e.value.hint, str(e.value)


@pytest.mark.parametrize("call, words", [
    ("lstm(x, H, init=[zeros(N, H)])", r"init= gives 1 state\(s\), and an lstm carries 2: init=\[h0, c0\]"),
    ("rnn(x, H, init=[zeros(N, H), zeros(N, H)])", "an rnn carries 1"),
    ("lstm(x, H, init=[zeros(N, H), zeros(N, 2 * H)])", r"init= state c0 is float32\[N, 6\], but the lstm's states are "
                                                         r"float32\[N, 3\]"),
    ("gru(x, H, init=[cast(zeros(N, H), 'int64')])", "init= state h0 is int64"),
    # a bidirectional encoder's return_state=true states, [N, 2H], given to a decoder of H units
    ("gru(x, H, init=[zeros(N, 2 * H)])", r"init= state h0 is float32\[N, 6\].*\n.*\[N, 6\] is what a bidirectional "
                                          r"layer of 3 units gives with return_state=true: give this gru 6 units, or "
                                          r"map each state to 3 first \(dense\(\.\.\., 3, act=tanh\)\)"),
    # stacked states [layers, N, H] (PyTorch's h_0, c_0): of another number of layers, or width, or batch
    ("lstm(x, H, layers=2, init=[zeros(3, N, H), zeros(3, N, H)])",
     r"init= state h0 is float32\[3, N, 3\], stacked for 3 layer\(s\), and this lstm has 2 layers"),
    ("gru(x, H, init=[zeros(2, N, H)])", r"stacked for 2 layer\(s\), and this gru has 1 layer\n.*\(or as float32\[N, 3\]\), or set layers=2"),
    ("gru(x, H, layers=2, init=[zeros(2, N, 2 * H)])", r"init= state h0 is float32\[2, N, 6\], but the gru's states "
                                                       r"are float32\[2, N, 3\] \(the batch of its input and units=3, "
                                                       r"for each of its 2 layers\)"),
    ("lstm(x, H, layers=2, init=[zeros(2, N, H), zeros(2, 5, H)])", r"init= state c0 is float32\[2, 5, 3\]"),
    ("rnn(x, H, layers=2, init=[zeros(2, N, H), zeros(2, N, H)])", r"an rnn carries 1: init=\[h0\], each float32\[2, N, 3\]"),
    ("lstm_cell(x[:, 0, :], zeros(N, H), zeros(N, 2 * H))[0]", r"lstm_cell.. needs its states of one shape: c is float32\[N, 6\]"),
    # a bidirectional layer's: stacked [2 * layers, N, H] per layer and direction, as PyTorch's h_0
    ("bidirectional(lstm, x, H, init=[zeros(2, N, H)])",
     r"init= gives 1 state\(s\), and a bidirectional lstm carries 2 per direction: init=\[h0, c0\], each "
     r"float32\[2, N, 3\]"),
    ("bidirectional(gru, x, H, init=[zeros(N, H)])",
     r"init= gives one direction's states, and this bidirectional gru has 2 directions: h0 is float32\[N, 3\]\n"
     r".*stacked float32\[2, N, 3\], layer k's forward direction at 2k, its reverse at 2k \+ 1"),
    ("bidirectional(gru, x, H, layers=2, init=[zeros(N, H)])", "2 directions in each of its 2 layers"),
    ("bidirectional(gru, x, H, init=[zeros(N, 2 * H)])",
     r"init= state h0 is float32\[N, 6\], the two directions concatenated \(what return_state=true gives\)"),
    ("bidirectional(lstm, x, H, layers=2, init=[zeros(2, N, H), zeros(2, N, H)])",
     r"init= state h0 is float32\[2, N, 3\], 2 slice\(s\), and this bidirectional lstm has 2 layers of 2 "
     r"directions, 4 slices\n.*as float32\[4, N, 3\].*, or set layers=1"),
    ("bidirectional(gru, x, H, layers=2, init=[zeros(4, N, 2 * H)])",
     r"init= state h0 is float32\[4, N, 6\], but the bidirectional gru's states are float32\[4, N, 3\] \(the "
     r"batch of its input and units=3, for each direction of each of its 2 layers\)"),
    ("bidirectional(lstm, x, H, init=[zeros(2, N, H), cast(zeros(2, N, H), 'int64')])", r"init= state c0 is int64"),
])
def test_recurrent_initial_states_are_checked_in_the_layers_words(call, words):
    """init= of the wrong count or shape reached the scan under the layer, whose error spoke of a
    block and a step the spec never wrote ('scan inputs do not match its step's inputs'), and an
    lstm_cell's c narrower than h failed in a mul inside the cell."""
    with pytest.raises(FlowgradError, match=words) as e:
        compile_spec(spec_from_text(BAD_ARGS_SPEC % call, "bad.yaml"), graphs=("train",))
    assert str(e.value).startswith("bad.yaml:23:") and "step" not in str(e.value), str(e.value)

def test_an_lstm_cells_state_of_one_row_for_all_sequences_still_broadcasts():
    """The check of the cell's states against each other refuses a c of another width or dtype,
    not a learnt c0 of one row [1, H] beside h [N, H], which broadcasts as it did before."""
    def loss(c):
        text = BAD_ARGS_SPEC.replace("  hs: %s", "  hs, cs: %s") % f"lstm_cell(x[:, 0, :], zeros(N, H), {c})"
        spec = spec_from_text(text, "cell.yaml")
        return _grads(spec)[1]["loss"]

    np.testing.assert_allclose(loss("zeros(1, H) + 0.5"), loss("zeros(N, H) + 0.5"), rtol=1e-12)


INT_OUTPUTS_SPEC = HEAD + """\
inputs:
  x: {shape: [N, T, E]}
blocks:
  step:
    in: [x_t, h, k]
    params:
      W: {shape: [E, H], init: glorot_uniform}
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(x_t @ W + h @ U) * cast(k, 'float64')
      k2: k + 1
      a: argmax(h2, axis=-1)
    out: [h2, k2%s]
graph:
  hs, ks%s: scan(step, over=x, init=[zeros(N, H), cast(zeros(N, H), 'int64') + 1]%s)
loss: sum(hs * hs)
"""


@pytest.mark.parametrize("kw", ["", ", reverse=true", ", unroll=true"])
def test_integer_states_and_outputs_of_a_differentiated_scan(kw):
    """An integer state (a step counter) or per-step output (an argmax) gets no cotangent: the
    scan's gradient used to fail on it (AttributeError), and must equal the gradient without it."""
    with_int = _grads(spec_from_text(INT_OUTPUTS_SPEC % (", a", ", am", kw), "int.yaml"))[1]
    without = _grads(spec_from_text(INT_OUTPUTS_SPEC % ("", "", kw), "int.yaml"))[1]
    assert sorted(with_int) == sorted(without) == ["grad/step.U", "grad/step.W", "loss"]
    for k in without:
        np.testing.assert_allclose(with_int[k], without[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert np.abs(with_int["grad/step.U"]).max() > 1e-6


COUNTER_SPEC = HEAD + """\
inputs:
  x: {shape: [N, T, E]}
  m: {shape: [N, T]}
blocks:
  step:
    in: [x_t, h, k]
    params:
      W: {shape: [E, H], init: glorot_uniform}
    graph:
      h2: tanh(x_t @ W + h) + cast(k, 'float64')
      k2: k + 1
    out: [h2, k2]
graph:
  hs, ks: scan(step, over=x, init=[zeros(N, H), cast(0, 'int64')], mask=m%s)
loss: mean(hs * hs)
"""


@pytest.mark.parametrize("kw", ["", ", unroll=true"])
def test_a_masked_scan_refuses_a_state_without_a_batch_axis(kw):
    """A mask keeps each sequence's state at its padded steps, which a scalar state cannot do: the
    loop's error blamed the block for changing the state's shape, and unroll=true silently gave the
    counter a batch axis (ks came out [N, T], not [T])."""
    with pytest.raises(SpecError, match="state 'k' is a scalar int64\\[\\] with no batch axis") as e:
        compile_spec(spec_from_text(COUNTER_SPEC % kw, "counter.yaml"), graphs=("train",))
    assert str(e.value).startswith("counter.yaml:17:"), str(e.value)


SHARED_STATE_SPEC = """\
flowgrad: 1
name: t
dims: {E: 3, H: 3, T: 4}
inputs:
  x: {shape: [N, T, E]}
  m: {shape: [N, T]}
params:
  W: {shape: [E, H], init: glorot_uniform}
  h0: {shape: [1, H], init: {uniform: {low: -0.5, high: 0.5}}}
blocks:
  step:
    in: [x_t, h, k]
    graph:
      h2: tanh(x_t @ W + h)
      k2: k * 0.9 + 0.1
    out: [h2, k2]
graph:
  hs, ks: scan(step, over=x, init=[zeros(N, H), %s], mask=m%s)
loss: mean(hs * hs) + mean(ks)
"""


@pytest.mark.parametrize("kw", ["", ", unroll=true"])
def test_a_masked_scan_refuses_a_state_of_one_row_for_all_sequences(kw):
    """A state of one row broadcast to every sequence (a trained h0 [1, H]) cannot be kept per
    sequence at the padded steps: the loop blamed the block ('the step returns a state of type
    float32[N, 3] for one of type float32[1, 3]', with the hint to return each state with the shape
    it takes, which it did), and unroll=true failed in the gradient ('sum_to: cannot sum [1, 3] to
    [N, 3]'). It is refused at init=; a row per sequence is fine."""
    with pytest.raises(SpecError, match="state 'k' is float64\\[1, 3\\], one row for all N sequences") as e:
        compile_spec(spec_from_text(SHARED_STATE_SPEC % ("h0", kw), "shared.yaml"), "float64", graphs=("grads",))
    assert str(e.value).startswith("shared.yaml:18:30:"), str(e.value)
    assert "zeros(N, H) + h0" in e.value.hint
    report = gradcheck_spec(spec_from_text(SHARED_STATE_SPEC % ("zeros(N, H) + h0", kw), "shared.yaml"), seed=1)
    assert max(report["main"].values()) < 1e-6


AXIS_SPEC = HEAD.replace("H: 3}", "H: 3, X: 2}") + """\
inputs:
  x: {shape: [%s]}
blocks:
  step:
    in: [x_t, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(x_t @ W + h @ U)
      y: sum(h2, axis=-1)
      s: sum(h2 * h2)
    out: [h2, y, s]
graph:
  hs, ys, ss: scan(step, over=x, init=[zeros(%s)], axis=%s%s)
outputs: {hs: hs, ys: ys, ss: ss}
loss: mean(hs * hs) + mean(ys * ys) + mean(ss)
"""
# (the sequences' layout, the state's, the time axis counted from the front)
AXIS_LAYOUTS = {
    "NTE": ("N, T, E", "N, H", 1),
    "NET": ("N, E, T", "N, H", 2),
    "TNE": ("T, N, E", "N, H", 0),
    "NXTE": ("N, X, T, E", "N, X, H", 2),
    "TNXE": ("T, N, X, E", "N, X, H", 0),
}


def _scan_along(x: np.ndarray, axis: int, W, U, reverse=False, mask=None):
    """NumPy: the AXIS_SPEC step along `axis` of x; mask [N, T] keeps the state and zeroes the
    outputs at padded steps. Returns the states, ys and ss stacked time-major."""
    xs = np.moveaxis(x, axis, 0)
    h = np.zeros(xs.shape[1:-1] + (W.shape[1],))
    hs, ys, ss = [None] * len(xs), [None] * len(xs), [None] * len(xs)
    for t in (range(len(xs) - 1, -1, -1) if reverse else range(len(xs))):
        h2 = np.tanh(xs[t] @ W + h @ U)
        y, s = h2.sum(-1), (h2 * h2).sum()
        if mask is not None:
            m = mask[:, t].reshape((-1,) + (1,) * (h2.ndim - 1))
            h2, y, s = np.where(m > 0, h2, h), y * m[..., 0], s
        h = h2
        hs[t], ys[t], ss[t] = h2, y, s
    return np.stack(hs), np.stack(ys), np.stack(ss)


def _run_infer(text: str, feeds: dict, name="axis.yaml"):
    cm = compile_spec(spec_from_text(text, name), "float64", graphs=("infer",))
    state = cm.initial_state(0)
    graph = cm.graphs["infer"]
    return Runner(graph.model)({**feeds, **{i.name: state[i.name] for i in graph.inputs if i.name in state}}), state


@pytest.mark.parametrize("layout", list(AXIS_LAYOUTS))
def test_negative_and_positive_axes_give_the_same_layout(layout):
    """axis=-2 of [N, T, E] is axis=1: every output puts time where the sequences have it (or last,
    when it has fewer axes). A per-step [N] came back [N, T] with axis=1 but [T, N] with axis=-2,
    and one of [N, X, T, E] came back [T, N, X] with axis=2: each output counted the axis itself."""
    xs, hs_shape, a = AXIS_LAYOUTS[layout]
    sizes = {"N": 2, "T": 4, "E": 3, "X": 2}
    x = np.random.default_rng(0).normal(size=[sizes[d] for d in xs.split(", ")])
    rank = x.ndim
    results = {}
    for axis in (a, a - rank):
        text = AXIS_SPEC % (xs, hs_shape, axis, "")
        results[axis], state = _run_infer(text, {"x": x})
        # the gradient check of the same scan, against central differences
        errors = gradcheck_spec(spec_from_text(text, "axis.yaml"), seed=1)["main"]
        assert errors and max(errors.values()) < 1e-6, errors
    want = _scan_along(x, a, state["step.W"], state["step.U"])
    for axis, got in results.items():
        for k, w in zip(("hs", "ys", "ss"), want):
            np.testing.assert_allclose(got[k], np.moveaxis(w, 0, min(a, w.ndim - 1)), rtol=1e-12, atol=1e-12,
                                       err_msg=f"{k}, axis={axis}")


def test_a_negative_axis_must_be_the_same_axis_of_every_sequence():
    """axis=-1 is axis 2 of [N, E, T] but axis 1 of [N, T]: one of them was scanned along another axis."""
    text = HEAD + """\
inputs:
  x: {shape: [N, E, T]}
  u: {shape: [N, T]}
blocks:
  step:
    in: [x_t, u_t, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
    graph:
      h2: tanh(x_t @ W + h) * unsqueeze(u_t, axes=-1)
    out: [h2]
graph:
  hs: scan(step, over=[x, u], init=[zeros(N, H)], axis=-1)
loss: mean(hs * hs)
"""
    with pytest.raises(SpecError, match="axis -1 is axis 2 of a sequence .* but axis 1 of a sequence") as e:
        compile_spec(spec_from_text(text, "axes.yaml"))
    assert str(e.value).startswith("axes.yaml:16:51"), str(e.value)
    # the same position counted from the front: each sequence's time axis
    compile_spec(spec_from_text(text.replace("over=[x, u], init=[zeros(N, H)], axis=-1",
                                             "over=[x, u], init=[zeros(N, H)], axis=2").replace("[N, T]}", "[N, X, T]}")
                                .replace("H: 3}", "H: 3, X: 1}").replace("unsqueeze(u_t, axes=-1)", "u_t"), "axes.yaml"))


LENGTH_AXIS_SPEC = HEAD + """\
inputs:
  z: {shape: [N, H]}
blocks:
  step:
    in: [h]
    params:
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(h @ U + z)
      y: sum(h2, axis=-1)
    out: [h2, y]
graph:
  hs, ys: scan(step, init=[z], length=4, axis=%s)
outputs: {hs: hs, ys: ys}
loss: mean(hs * hs) + mean(ys)
"""


def test_a_scan_over_no_sequence_counts_a_negative_axis_from_its_largest_output():
    """With no sequence to count from, a negative axis counts from the end of the largest output:
    axis=-1 is axis 2 of the stacked states [N, H, T], and the per-step [N] comes back [N, T] as with
    axis=2. Each output counted it itself: axis=-2 gave that [N] back [T, N], axis=1 [N, T]."""
    z = np.random.default_rng(0).normal(size=(N, H))
    for pos, neg in ((2, -1), (1, -2), (0, -3)):
        a, state = _run_infer(LENGTH_AXIS_SPEC % pos, {"z": z})
        b, _ = _run_infer(LENGTH_AXIS_SPEC % neg, {"z": z})
        hs, h = [], z
        for _ in range(4):
            h = np.tanh(h @ state["step.U"] + z)
            hs.append(h)
        hs = np.stack(hs)
        for got in (a, b):
            np.testing.assert_allclose(got["hs"], np.moveaxis(hs, 0, pos), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got["ys"], np.moveaxis(hs.sum(-1), 0, min(pos, 1)), rtol=1e-12, atol=1e-12)
    with pytest.raises(SpecError, match="axis -4 is out of range for outputs of rank 3") as e:
        compile_spec(spec_from_text(LENGTH_AXIS_SPEC % -4, "len.yaml"))
    assert str(e.value).startswith("len.yaml:16:"), str(e.value)


MASK_AXIS_SPEC = (AXIS_SPEC.replace("  x: {shape: [%s]}\n", "  x: {shape: [%s]}\n  m: {shape: [N, T], dtype: int64}\n")
                  .replace("      s: sum(h2 * h2)\n", "").replace("out: [h2, y, s]", "out: [h2, y]")
                  .replace("hs, ys, ss: scan", "hs, ys: scan").replace("outputs: {hs: hs, ys: ys, ss: ss}",
                                                                     "outputs: {hs: hs, ys: ys}")
                  .replace(" + mean(ss)", ""))


@pytest.mark.parametrize("kw", ["", ", reverse=true", ", unroll=true", ", reverse=true, unroll=true"])
@pytest.mark.parametrize("layout", list(AXIS_LAYOUTS))
def test_a_scan_mask_is_batch_by_time_whatever_the_axis(layout, kw):
    """mask= is [N, T] (batch, time) whatever axis= the sequences scan, as its error says: it was moved
    as the sequences were, so with axis=0 it was read as [T, N] (an [N, T] mask failed in a `where`
    of the block), and with axis=2 of [N, E, T] or of [N, X, T, E] it was not moved at all. Values
    against NumPy, gradients against central differences and across the axis' two spellings."""
    xs, hs_shape, a = AXIS_LAYOUTS[layout]
    sizes = {"N": 2, "T": 4, "E": 3, "X": 2}
    x = np.random.default_rng(0).normal(size=[sizes[d] for d in xs.split(", ")])
    m = np.array([[1, 1, 1, 0], [1, 0, 1, 0]])  # a hole, then padding
    grads = {}
    for axis in (a, a - x.ndim):
        text = MASK_AXIS_SPEC % (xs, hs_shape, axis, ", mask=m" + kw)
        got, state = _run_infer(text, {"x": x, "m": m}, "mask.yaml")
        hs, ys = _scan_along(x, a, state["step.W"], state["step.U"], reverse="reverse" in kw, mask=m)[:2]
        np.testing.assert_allclose(got["hs"], np.moveaxis(hs, 0, a), rtol=1e-12, atol=1e-12, err_msg=f"axis={axis}")
        np.testing.assert_allclose(got["ys"], np.moveaxis(ys, 0, min(a, ys.ndim - 1)), rtol=1e-12, atol=1e-12,
                                   err_msg=f"axis={axis}")
        spec = spec_from_text(text, "mask.yaml")
        errors = gradcheck_spec(spec, seed=1)["main"]
        assert errors and max(errors.values()) < 1e-6, errors
        grads[axis] = _grads(spec)[1]
    first, second = grads.values()
    for k in first:
        np.testing.assert_allclose(second[k], first[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("xs, mask, axis, words", [
    # the layout the mask used to be read in with axis=0
    ("T, N, E", "T, N", 0, r"mask float64\[T, N\] has N steps where the scan runs T[\s\S]*transpose\(m\)"),
    ("N, T, E", "T, N", -2, r"mask float64\[T, N\] has N steps where the scan runs T[\s\S]*transpose\(m\)"),
    ("N, T, E", "N, S", 1, r"mask float64\[N, S\] has S steps where the scan runs T"),
    ("N, T, E", "S, T", 1, r"mask float64\[S, T\] is for S sequences, but the block's 'h2' is float64\[N, 3\]"),
    ("N, T, E", "N, T, E", 1, r"mask must be \[N, T\] \(batch, time\), got float64\[N, T, 3\]"),
])
def test_a_scan_mask_of_another_layout_is_a_located_error(xs, mask, axis, words):
    text = (MASK_AXIS_SPEC % (xs, "N, H", axis, ", mask=m")).replace("m: {shape: [N, T], dtype: int64}",
                                                                     f"m: {{shape: [{mask}]}}")
    with pytest.raises(ShapeError, match=words) as e:
        compile_spec(spec_from_text(text, "mask.yaml"), "float64")
    assert str(e.value).startswith("mask.yaml:18:"), str(e.value)
    assert "mask is [N, T] (batch, time) whatever axis= the sequences scan" in str(e.value)


@pytest.mark.parametrize("kw", ["", ", unroll=true"])
def test_a_masked_scan_refuses_a_per_step_output_without_a_batch_axis(kw):
    """A mask zeroes each sequence's outputs at its padded steps, which a scalar per step (a sum over
    the batch) cannot take: it came back [N, T], one masked copy of the batch's sum per sequence,
    where the same scan without mask= gave [T]."""
    text = (AXIS_SPEC % ("N, T, E", "N, H", 1, ", mask=m" + kw)).replace(
        "  x: {shape: [N, T, E]}\n", "  x: {shape: [N, T, E]}\n  m: {shape: [N, T]}\n")
    with pytest.raises(ShapeError, match="output 's' is a scalar float64\\[\\] with no batch axis") as e:
        compile_spec(spec_from_text(text, "scalar.yaml"), "float64")
    assert str(e.value).startswith("scalar.yaml:17:18:"), str(e.value)


AXIS_BLAME_SPEC = HEAD + """\
inputs:
  x: {shape: %s}
blocks:
  step:
    in: [x_t, h]
    graph:
      h2: dense(concat(x_t, %s, axis=1), H, act=tanh)
    out: [h2]
graph:
  hs: scan(step, over=x, init=[zeros(N, H)]%s)
loss: mean(hs * hs)
"""


def test_a_scan_axis_that_is_not_time_is_blamed_at_axis():
    """axis=2 of [N, T, E] gave each step [N, T], and the block's concat said 'concat along axis 1 mixes the
    symbolic sizes T, 3' from inside the block: the axis is at fault, and the error says so at axis=."""
    text = AXIS_BLAME_SPEC % ("[N, T, E]", "h", ", axis=2")
    with pytest.raises(ShapeError, match=r"scan\(\) axis=2 makes each step's x_t \[N, T\] \(axis 2 of x \[N, T, 3\] "
                                        r"taken as time\), on which block 'step' fails at line 10, column \d+: concat:") as e:
        compile_spec(spec_from_text(text, "axis.yaml"))
    assert str(e.value).startswith("axis.yaml:13:46:"), str(e.value)
    assert "each step gets x_t [N, 3], which the block takes: leave out axis=" in e.value.hint
    compile_spec(spec_from_text(AXIS_BLAME_SPEC % ("[N, T, E]", "h", ""), "axis.yaml"))
    compile_spec(spec_from_text(AXIS_BLAME_SPEC % ("[N, E, T]", "h", ", axis=2"), "axis.yaml"))
    compile_spec(spec_from_text(AXIS_BLAME_SPEC % ("[T, N, E]", "h", ", axis=0"), "axis.yaml"))
    # a block that fails whatever the axis keeps its own error, located in the block
    with pytest.raises(ShapeError, match="^axis.yaml:10:.*concat") as e:
        compile_spec(spec_from_text(AXIS_BLAME_SPEC % ("[T, N, E]", "transpose(h)", ", axis=0"), "axis.yaml"))


TRUNCATED_INIT_SPEC = """\
flowgrad: 1
name: trunc
dims: {E: 4, H: 8%s}
inputs:
  x: {shape: [N, %s, E]}
  y: {shape: [N], dtype: int64}
params:
  h0: {shape: [H], init: zeros}
blocks:
  step:
    in: [x_t, h]
    graph:
      h_new: dense(x_t, H) + dense(h, H, act=tanh)
    out: [h_new]
graph:
  hs: scan(step, over=x, init=[broadcast_like(h0, zeros(N, H))], truncate=%d%s)
  logits: dense(hs[:, -1], 3)
loss: cross_entropy(logits, y)%s
"""


@pytest.mark.parametrize("steps, unroll", [("6", ", unroll=true"), ("6", ""), ("T", ""), ("6", ", reverse=true")])
def test_a_trained_initial_state_that_truncate_cuts_off_is_refused(steps, unroll):
    """truncate=3 over 6 steps cuts the gradient before the step that reads the initial state: unroll=true said
    'parameter h0 never reaches the loss' without a word of truncate=, and the loop trained h0 with zeros."""
    dims = ", T: 6" if steps == "6" else ""
    text = TRUNCATED_INIT_SPEC % (dims, steps if steps == "T" else "T", 3, unroll, "")
    with pytest.raises(GradientError) as e:
        compile_spec(spec_from_text(text, "trunc.yaml"), graphs=("train",))
    line = text.splitlines().index(next(t for t in text.splitlines() if "truncate=" in t)) + 1
    col = text.splitlines()[line - 1].index("truncate=") + 1
    assert str(e.value).startswith(
        f"trunc.yaml:{line}:{col}: parameter 'h0' gets no gradient: it reaches the loss only through an initial "
        f"state, which truncate=3 cuts off (the gradient flows back 3 of the {steps} steps)"), str(e.value)
    assert "trainable: false" in e.value.hint and "truncate=" in e.value.hint
    # a truncate that reaches the first step, h0 fixed, or h0 reaching the loss another way: all train it as said
    compile_spec(spec_from_text(TRUNCATED_INIT_SPEC % (", T: 6", "T", 6, unroll, ""), "trunc.yaml"), graphs=("train",))
    compile_spec(spec_from_text(text.replace("init: zeros}", "init: zeros, trainable: false}"), "trunc.yaml"),
                 graphs=("train",))
    compile_spec(spec_from_text(TRUNCATED_INIT_SPEC % (dims, "T", 3, unroll, " + 1e-3 * l2(h0)"), "trunc.yaml"),
                 graphs=("train",))


NESTED_TRUNCATED_INIT_SPEC = """\
flowgrad: 1
name: t
dims: {E: 3, H: 3, T: 3, S: 4}
inputs:
  x: {shape: [N, T, S, E]}
  y: {shape: [N], dtype: int64}
params:
  h0: {shape: [H], init: zeros}
blocks:
  step:
    in: [x_t, h]
    graph:
      h_new: dense(x_t, H) + dense(h, H, act=tanh)
    out: [h_new]
  outer:
    in: [xs_t, g]
    graph:
      INNER
      g2: tanh(hs[:, -1] + g)
    out: [g2]
graph:
  gs: scan(outer, over=x, init=[zeros(N, H)]OUTER)
  logits: dense(gs[:, -1], 3)
loss: cross_entropy(logits, y)EXTRA
"""


@pytest.mark.parametrize("inner, outer", [
    ("hs: scan(step, over=xs_t, init=[zeros_like(g) + h0], truncate=2)", ""),
    ("hs: scan(step, over=xs_t, init=[zeros_like(g) + h0], truncate=2, unroll=true)", ""),
    ("hs: scan(step, over=xs_t, init=[zeros_like(g) + h0], truncate=2)", ", unroll=true"),
    ("hs: gru(xs_t, H, init=[zeros_like(g) + h0], truncate=2)", ""),
])
def test_a_trained_initial_state_that_a_nested_truncate_cuts_off_is_refused(inner, outer):
    """A scan with truncate=K inside another scan's step: its trained initial state got a zero gradient without
    a word (unroll=true: 'never reaches the loss', without a word of truncate=), where a top-level one is refused."""
    text = NESTED_TRUNCATED_INIT_SPEC.replace("INNER", inner).replace("OUTER", outer)
    with pytest.raises(GradientError) as e:
        compile_spec(spec_from_text(text.replace("EXTRA", ""), "trunc.yaml"), graphs=("train",))
    line = text.splitlines().index(next(t for t in text.splitlines() if "truncate=" in t)) + 1
    col = text.splitlines()[line - 1].index("truncate=") + 1
    assert str(e.value).startswith(
        f"trunc.yaml:{line}:{col}: parameter 'h0' gets no gradient: it reaches the loss only through an initial "
        "state, which truncate=2 cuts off (the gradient flows back 2 of the 4 steps)"), str(e.value)
    # a truncate that reaches the first step, h0 fixed, or h0 reaching the loss another way: all train it
    for ok in (text.replace("EXTRA", "").replace("truncate=2", "truncate=4"),
               text.replace("EXTRA", "").replace("init: zeros}", "init: zeros, trainable: false}"),
               text.replace("EXTRA", " + 1e-3 * l2(h0)")):
        compile_spec(spec_from_text(ok, "trunc.yaml"), graphs=("train",))


def test_a_nested_truncated_scan_equals_stop_gradient_unrolled():
    """truncate=2 over 4 steps of a scan inside another scan's step: the gradient of the inner scan split in two
    whose first part is frozen (float64), and with truncate=4 that of no truncate."""
    base = TRUNC_SPEC.replace("T: 4}", "T: 3, S: 4}").replace("[N, T, E]", "[N, T, S, E]").replace(
        "high: 0.5}}}", "high: 0.5}}, trainable: false}").replace("graph:\n  init:", """\
  outer:
    in: [xs_t, g]
    graph:
INNER
      g2: tanh(hs[:, -1] @ U + g) + 0.1 * mean(hs, axis=1)
    out: [g2, hs]
graph:
  init:""")
    base = base % "  gs, hs: scan(outer, over=x, init=[init])"
    inner = lambda s: base.replace("INNER", s)  # noqa: E731
    a = _grads(spec_from_text(inner("      hs: scan(step, over=xs_t, init=[g], truncate=2)"), "a.yaml"))[1]
    b = _grads(spec_from_text(inner("      early: scan(frozen, over=xs_t[:, 0:2], init=[g])\n"
                                    "      late: scan(step, over=xs_t[:, 2:4], init=[early[:, -1]])\n"
                                    "      hs: concat(early, late, axis=1)"), "b.yaml"))[1]
    c = _grads(spec_from_text(inner("      hs: scan(step, over=xs_t, init=[g])"), "c.yaml"))[1]
    d = _grads(spec_from_text(inner("      hs: scan(step, over=xs_t, init=[g], truncate=4)"), "d.yaml"))[1]
    assert sorted(a) == sorted(b) == ["grad/U", "grad/W", "loss"]
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(d[k], c[k], rtol=1e-9, atol=1e-12, err_msg=k)
    assert not np.allclose(a["grad/W"], c["grad/W"])


SHARED_LAYERS_SPEC = HEAD + """\
inputs:
  x: {shape: [N, T, H]}
blocks:
  step:
    in: [x_t, h]
    params:
      W: {shape: [H, H], init: glorot_uniform}
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(x_t @ W + h @ U)
    out: [h2]
  layer:
    in: [a]
    graph:
      b: scan(step, over=a, init=[zeros(N, H)])
    out: [b]
graph:
%s
loss: mean(out * out)
"""


@pytest.mark.parametrize("graph", [
    "  out: scan(step, over=scan(step, over=x, init=[zeros(N, H)]), init=[zeros(N, H)])",
    # entries are order-free: the second layer asks for the first while it is lowered
    "  out: scan(step, over=h1, init=[zeros(N, H)])\n  h1: scan(step, over=x, init=[zeros(N, H)])",
    "  out: layer(layer(x))",
    "  out: layer(h1)\n  h1: layer(x)",
])
def test_a_block_applied_to_its_own_output_is_two_layers_not_a_block_that_runs_itself(graph):
    """Two recurrent layers sharing one step's weights: the second scan's sequence (or the second
    call's argument) is the first's output, computed outside the block. It was computed while the
    block was entered, and refused with "block 'step' runs itself (step -> step)"; the block is now
    entered for its step alone. Its gradient is the two scans', and a step that does scan itself is
    still refused."""
    spec = spec_from_text(SHARED_LAYERS_SPEC % graph, "shared.yaml")
    assert max(gradcheck_spec(spec, seed=1)["main"].values()) < 1e-6
    cm, got = _grads(spec)
    two = SHARED_LAYERS_SPEC.replace("blocks:\n", "blocks:\n" + """\
  step2:
    in: [x_t, h]
    graph:
      h2: tanh(x_t @ step.W + h @ step.U)
    out: [h2]
""") % "  out: scan(step2, over=scan(step, over=x, init=[zeros(N, H)]), init=[zeros(N, H)])"
    _, want = _grads(spec_from_text(two, "two.yaml"))
    for k in ("loss", "grad/step.W", "grad/step.U"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)
    itself = SHARED_LAYERS_SPEC.replace("h2: tanh(x_t @ W + h @ U)", "h2: tanh(x_t @ W + h @ U) + scan(step, over=x, init=[h])[:, -1]")
    with pytest.raises(SpecError, match=r"block 'step' runs itself \(step -> step\)"):
        compile_spec(spec_from_text(itself % graph, "itself.yaml"), "float64", graphs=("grads",))


def test_a_small_constant_sequence_is_scanned_step_by_step():
    """Hoisting keeps a step's small constants in the step (recurrent.SMALL_CONSTANT): a scan
    over a constant sequence of a few entries ([3, 2] here) had the whole sequence copied into
    the step as if it were one step's slice, and the graph failed onnx's check ('Inferred shape
    and existing shape differ in rank') instead of scanning it."""
    g = Graph(float_dtype="float64")
    s0 = g.add_input("s0", "float64", (2,))
    xs = np.arange(6.0).reshape(3, 2)
    bg = Graph(float_dtype="float64")
    s, x_t = bg.add_input("s", "float64", (2,)), bg.add_input("x_t", "float64", (2,))
    (out,) = recurrent.run_scan(g, Body(bg, [s], [x_t], [], [s * x_t + 1.0]), [s0], [g.const(xs)], [])
    want = [np.ones(2)]
    for x in xs:
        want.append(want[-1] * x + 1.0)
    got = Runner(emit_model(g, [("s0", s0)], [("states", out)]))({"s0": np.ones(2)})["states"]
    np.testing.assert_allclose(got, want[1:], rtol=1e-12)  # the states after each step
