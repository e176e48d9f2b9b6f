"""The ready-made cells against ONNX's built-in LSTM, GRU and RNN operators,
given the same weights, on onnxruntime in float32.

flowgrad's cells use PyTorch's layout: lstm gates i, f, g, o in the columns
of W [E, 4H] and U [H, 4H] with one bias b; gru gates r, z, n with W [E, 3H],
U [H, 3H], an input bias b and a hidden bias bu. ONNX's operators take the
transposed matrices per direction, W [D, G*H, E] and R [D, G*H, H], gates in
the order i, o, f, c (LSTM) or z, r, h (GRU), and B [D, 2*G*H] = (Wb, Rb)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.check import Runner
from compiler.emit import IR_VERSION, OPSET
from compiler.training import compile_spec
from spec import spec_from_text

N, T, E, H = 2, 4, 3, 3
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# ONNX's gate k is flowgrad's gate ORDER[cell][k]
ORDER = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}
ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
LENGTHS = np.array([4, 2], dtype=np.int64)


def _spec(graph: str, lengths: bool, outputs: list[str]) -> str:
    return (
        "flowgrad: 1\nname: cells\ndims: {E: 3, H: 3}\ninputs:\n  x: {shape: [N, T, E]}\n"
        + ("  len: {shape: [N], dtype: int64}\n" if lengths else "")
        + f"graph:\n  {graph}\noutputs:\n" + "".join(f"  {o}: {o}\n" for o in outputs)
    )


def _params(cell: str, rng, inputs: int = E) -> dict[str, np.ndarray]:
    G = GATES[cell]
    p = {"W": rng.normal(size=(inputs, G * H)) * 0.6, "U": rng.normal(size=(H, G * H)) * 0.6,
         "b": rng.normal(size=(G * H,)) * 0.3}
    if cell == "gru":
        p["bu"] = rng.normal(size=(G * H,)) * 0.3
    return {k: v.astype(np.float32) for k, v in p.items()}


def _onnx_weights(cell: str, p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One direction's W [G*H, E], R [G*H, H], B [2*G*H] in ONNX's layout and gate order."""
    G, order = GATES[cell], ORDER[cell]

    def mat(m):
        blocks = np.split(m, G, axis=1)
        return np.concatenate([blocks[k].T for k in order], axis=0)

    def vec(v):
        parts = np.split(v, G)
        return np.concatenate([parts[k] for k in order])

    rb = vec(p["bu"]) if "bu" in p else np.zeros(G * H, np.float32)
    return mat(p["W"]), mat(p["U"]), np.concatenate([vec(p["b"]), rb])


def _onnx_run(cell: str, dirs: list[dict], x: np.ndarray, direction: str, lengths=None, **attrs) -> list[np.ndarray]:
    """ONNX's operator over x [N, T, E] (batch-major); returns Y [T, D, N, H], Y_h[, Y_c]."""
    ws = [_onnx_weights(cell, p) for p in dirs]
    W, R, B = (np.stack([w[i] for w in ws]).astype(np.float32) for i in range(3))
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(B, "B")]
    ins = ["X", "W", "R", "B"]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, E])]
    if lengths is not None:
        ins.append("L")
        graph_inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [N]))
    outs = ["Y", "Y_h"] + (["Y_c"] if cell == "lstm" else [])
    node = helper.make_node(ONNX_OP[cell], ins, outs, hidden_size=H, direction=direction, **attrs)
    graph = helper.make_graph([node], "ref", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    runner = Runner(model)
    assert runner.backend == "onnxruntime"
    feeds = {"X": np.ascontiguousarray(x.transpose(1, 0, 2))}
    if lengths is not None:
        feeds["L"] = lengths.astype(np.int32)
    got = runner(feeds)
    return [got[o] for o in outs]


def _flowgrad_run(text: str, params: dict[str, np.ndarray], x: np.ndarray, lengths=None, inputs=None) -> dict:
    cm = compile_spec(spec_from_text(text, "cells.yaml"), "float32", graphs=("infer",))
    graph = cm.graphs["infer"]
    assert sorted(cm.params) == sorted(params), (sorted(cm.params), sorted(params))
    feeds = {"x": x, **params, **(inputs or {})}
    if lengths is not None:
        feeds["len"] = lengths
    runner = Runner(graph.model)
    assert runner.backend == "onnxruntime"
    return runner(feeds)


def _close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=what)


CASES = [
    # cell, flowgrad keywords, ONNX direction, ONNX attributes, lengths
    ("lstm", "", "forward", {}, False),
    ("lstm", ", reverse=true", "reverse", {}, False),
    ("lstm", ", lengths=len", "forward", {}, True),
    ("lstm", ", reverse=true, lengths=len", "reverse", {}, True),
    ("gru", "", "forward", {"linear_before_reset": 1}, False),
    ("gru", ", linear_before_reset=true", "forward", {"linear_before_reset": 1}, False),
    ("gru", ", linear_before_reset=false", "forward", {"linear_before_reset": 0}, False),
    ("gru", ", linear_before_reset=false, reverse=true", "reverse", {"linear_before_reset": 0}, False),
    ("gru", ", reverse=true, lengths=len", "reverse", {"linear_before_reset": 1}, True),
    ("rnn", "", "forward", {}, False),
    ("rnn", ", reverse=true, lengths=len", "reverse", {}, True),
    ("rnn", ", act=relu", "forward", {"activations": ["Relu"]}, False),
]


@pytest.mark.parametrize("cell,kw,direction,attrs,use_len", CASES,
                         ids=[f"{c[0]}{c[1].replace(', ', '-').replace('=', '_')}" for c in CASES])
def test_cell_matches_onnx_operator(cell, kw, direction, attrs, use_len):
    rng = np.random.default_rng(len(kw) + 10 * GATES[cell])
    x = rng.normal(size=(N, T, E)).astype(np.float32)
    p = _params(cell, rng)
    lengths = LENGTHS if use_len else None
    states = ["h", "c"] if cell == "lstm" else ["h"]
    targets = ", ".join(["hs"] + states)
    text = _spec(f"{targets}: {cell}(x, H, return_state=true{kw})", use_len, ["hs"] + states)
    prefix = targets.replace(", ", "_")
    got = _flowgrad_run(text, {f"{prefix}.{k}": v for k, v in p.items()}, x, lengths)
    want = _onnx_run(cell, [p], x, direction, lengths, **attrs)
    _close(got["hs"], want[0][:, 0].transpose(1, 0, 2), "hs vs Y")
    _close(got["h"], want[1][0], "final h vs Y_h")
    if cell == "lstm":
        _close(got["c"], want[2][0], "final c vs Y_c")
    if use_len:  # padded steps output zeros
        assert not got["hs"][1, 2:].any()


def test_gru_reset_variants_differ():
    """linear_before_reset changes the computation (the check above is not vacuous)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, T, E)).astype(np.float32)
    p = _params("gru", rng)
    a = _onnx_run("gru", [p], x, "forward", linear_before_reset=1)[0]
    b = _onnx_run("gru", [p], x, "forward", linear_before_reset=0)[0]
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("cell,merge,use_len", [("lstm", "concat", False), ("gru", "sum", False),
                                                 ("lstm", "sum", True), ("gru", "concat", True)])
def test_bidirectional_matches_onnx_operator(cell, merge, use_len):
    rng = np.random.default_rng(7 + GATES[cell])
    x = rng.normal(size=(N, T, E)).astype(np.float32)
    fw, bw = _params(cell, rng), _params(cell, rng)
    lengths = LENGTHS if use_len else None
    kw = f", merge={merge}" + (", lengths=len" if use_len else "")
    text = _spec(f"bi: bidirectional({cell}, x, H{kw})", use_len, ["bi"])
    params = {**{f"bi.fw.{k}": v for k, v in fw.items()}, **{f"bi.bw.{k}": v for k, v in bw.items()}}
    got = _flowgrad_run(text, params, x, lengths)["bi"]
    attrs = {"linear_before_reset": 1} if cell == "gru" else {}
    Y = _onnx_run(cell, [fw, bw], x, "bidirectional", lengths, **attrs)[0]  # [T, 2, N, H]
    Yf, Yb = Y[:, 0].transpose(1, 0, 2), Y[:, 1].transpose(1, 0, 2)
    want = np.concatenate([Yf, Yb], axis=-1) if merge == "concat" else Yf + Yb
    assert got.shape == want.shape
    _close(got, want, "bidirectional vs Y")


@pytest.mark.parametrize("cell,use_len", [("lstm", False), ("gru", False), ("rnn", False), ("lstm", True),
                                          ("gru", True)])
def test_stacked_layers_match_torch_from_stacked_initial_states(cell, use_len):
    """init= of a layers=2 layer takes each state stacked [2, N, H], layer k starting from its
    slice, and return_state=all gives every layer's final states stacked: PyTorch's nn.LSTM,
    nn.GRU and nn.RNN with num_layers=2, (h_0, c_0) in and (h_n, c_n) out, given the same
    weights. With lengths= each row's final states are at its own last step, as of a packed
    sequence. (init= of a stacked layer was refused, and return_state=true gives the top layer's.)"""
    torch = pytest.importorskip("torch")
    K = 2
    rng = np.random.default_rng(30 + GATES[cell] + use_len)
    x = rng.normal(size=(N, T, E)).astype(np.float32)
    layers = [_params(cell, rng) for _ in range(K)]  # E == H: the second layer's W is [H, G*H]
    states = ["h", "c"] if cell == "lstm" else ["h"]
    init = {f"{s}0": rng.normal(size=(K, N, H)).astype(np.float32) for s in states}
    targets = ", ".join(["hs"] + states)
    text = _spec(f"{targets}: {cell}(x, H, layers=2, init=[{', '.join(init)}], return_state=all"
                 + (", lengths=len)" if use_len else ")"), use_len, ["hs"] + states)
    text = text.replace("graph:", "".join(f"  {s}: {{shape: [2, N, H]}}\n" for s in init) + "graph:")
    prefix = targets.replace(", ", "_")
    params = {f"{prefix}.l{k + 1}.{n}": v for k, p in enumerate(layers) for n, v in p.items()}
    got = _flowgrad_run(text, params, x, LENGTHS if use_len else None, init)

    ys, finals = _torch_run(torch, cell, [[p] for p in layers], states, init, x, use_len)
    assert got["h"].shape == (K, N, H)
    _close(got["hs"], ys, "hs vs torch's output")
    for s, want in zip(states, finals):
        _close(got[s], want, f"stacked final {s} vs torch's {s}_n")


def _torch_run(torch, cell, layers, states, init, x, use_len):
    """torch's nn.LSTM/GRU/RNN of len(layers) layers given flowgrad's weights, one dict per direction
    of each layer (two: bidirectional), from the stacked initial states `init`, over x (packed by
    LENGTHS with use_len): (its output, its final states), as arrays."""
    bidirectional = len(layers[0]) == 2
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](
        E, H, num_layers=len(layers), batch_first=True, bidirectional=bidirectional)
    with torch.no_grad():
        for k, directions in enumerate(layers):
            for suffix, p in zip(("", "_reverse"), directions):
                getattr(module, f"weight_ih_l{k}{suffix}").copy_(torch.from_numpy(p["W"].T.copy()))
                getattr(module, f"weight_hh_l{k}{suffix}").copy_(torch.from_numpy(p["U"].T.copy()))
                getattr(module, f"bias_ih_l{k}{suffix}").copy_(torch.from_numpy(p["b"]))
                getattr(module, f"bias_hh_l{k}{suffix}").copy_(torch.from_numpy(p.get("bu", np.zeros_like(p["b"]))))
        h0 = tuple(torch.from_numpy(init[f"{s}0"]) for s in states)
        xs = torch.from_numpy(x)
        if use_len:
            xs = torch.nn.utils.rnn.pack_padded_sequence(xs, torch.from_numpy(LENGTHS), batch_first=True,
                                                         enforce_sorted=False)
        ys, finals = module(xs, h0 if cell == "lstm" else h0[0])
        if use_len:
            ys = torch.nn.utils.rnn.pad_packed_sequence(ys, batch_first=True, total_length=T)[0]
    return ys.numpy(), [f.numpy() for f in (finals if cell == "lstm" else (finals,))]


@pytest.mark.parametrize("cell,K,merge,use_len", [("lstm", 1, "concat", False), ("lstm", 1, "sum", True),
                                                   ("lstm", 2, "concat", True), ("gru", 1, "concat", True),
                                                   ("gru", 2, "concat", False), ("gru", 2, "concat", True),
                                                   ("rnn", 2, "concat", True)])
def test_bidirectional_states_match_torch(cell, K, merge, use_len):
    """init= of a bidirectional layer takes each state stacked [2K, N, H] and return_state=all gives
    them so, layer-major as PyTorch's h_0 and h_n of a bidirectional nn.LSTM/GRU/RNN (layer k's
    forward direction at 2k, its reverse at 2k + 1); return_state=true gives the top layer's two
    directions concatenated [N, 2H], as torch.cat((h_n[-2], h_n[-1]), 1). With lengths= (packed
    sequences) the forward direction's final states are at each row's own last step, the reverse
    one's at step 0; merge= changes the sequence only. (bidirectional() refused init= and
    return_state: "returns the merged sequence only".)"""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(40 + 3 * GATES[cell] + 2 * K + use_len)
    x = rng.normal(size=(N, T, E)).astype(np.float32)
    width = {"concat": 2 * H, "sum": H}[merge]
    layers = [[_params(cell, rng, E if k == 0 else width) for _ in ("fw", "bw")] for k in range(K)]
    states = ["h", "c"] if cell == "lstm" else ["h"]
    init = {f"{s}0": rng.normal(size=(2 * K, N, H)).astype(np.float32) for s in states}
    targets = ", ".join(["hs"] + states)
    prefix = targets.replace(", ", "_")
    params = {f"{prefix}{'' if K == 1 else f'.l{k + 1}'}.{d}.{n}": v
              for k, pair in enumerate(layers) for d, p in zip(("fw", "bw"), pair) for n, v in p.items()}
    got = {}
    for ret in ("all", "true"):
        text = _spec(f"{targets}: bidirectional({cell}, x, H, layers={K}, merge={merge}, "
                     f"init=[{', '.join(init)}], return_state={ret}" + (", lengths=len)" if use_len else ")"),
                     use_len, ["hs"] + states)
        text = text.replace("graph:", "".join(f"  {s}: {{shape: [{2 * K}, N, H]}}\n" for s in init) + "graph:")
        got[ret] = _flowgrad_run(text, params, x, LENGTHS if use_len else None, init)

    ys, finals = _torch_run(torch, cell, layers, states, init, x, use_len)
    if merge == "sum":  # (one layer: torch's layers above the first read the directions concatenated)
        ys = ys[..., :H] + ys[..., H:]
    for ret in ("all", "true"):
        _close(got[ret]["hs"], ys, f"return_state={ret}: hs vs torch's output")
    for s, want in zip(states, finals):
        assert got["all"][s].shape == (2 * K, N, H)
        _close(got["all"][s], want, f"return_state=all: {s} vs torch's {s}_n")
        _close(got["true"][s], np.concatenate([want[-2], want[-1]], axis=-1),
               f"return_state=true: {s} vs torch's {s}_n[-2], {s}_n[-1] concatenated")


def test_int32_lengths_mask_as_int64_ones_do():
    """lengths= of an int32 input was compared with the steps' int64 positions: check failed
    with "lt: cannot compare int64 with float32" (or int32), naming an op the spec never wrote."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, T, E)).astype(np.float32)
    p = _params("gru", rng)
    text = _spec("hs: gru(x, H, lengths=len)", True, ["hs"])
    want = _flowgrad_run(text, {f"hs.{k}": v for k, v in p.items()}, x, LENGTHS)["hs"]
    got = _flowgrad_run(text.replace("dtype: int64", "dtype: int32"), {f"hs.{k}": v for k, v in p.items()}, x,
                        LENGTHS.astype(np.int32))["hs"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("layer", ["gru(x, H, lengths=len)", "bidirectional(lstm, x, H, lengths=len)"])
def test_float_lengths_are_refused_at_the_argument(layer):
    from spec.errors import SpecError

    text = _spec(f"hs: {layer}", True, ["hs"]).replace("dtype: int64", "dtype: float32")
    with pytest.raises(SpecError, match=r"lengths must count steps in whole numbers \(int64\), got float32\[N\]") as e:
        compile_spec(spec_from_text(text, "cells.yaml"), "float32", graphs=("infer",))
    assert e.value.loc.col == len("  hs: ") + 1 + layer.index("lengths=") and "dtype: int64" in e.value.hint


def test_a_bidirectional_stack_of_states_becomes_a_stacked_decoders_as_readme_writes_it():
    """README's spelling for a stacked decoder of 2H units started from a 2-layer bidirectional
    encoder: its [2K, N, H] states (layer k's forward at 2k, reverse at 2k + 1) reshaped to
    [K, N, 2H], each layer's two directions side by side, forward first."""
    text = """flowgrad: 1
name: bi_to_stack
dims: {E: 3, H: 4}
inputs:
  x: {shape: [N, T, E]}
graph:
  enc, h: bidirectional(gru, x, H, layers=2, return_state=all)
  h2: reshape(transpose(reshape(h, [2, 2, -1, H]), [0, 2, 1, 3]), [2, -1, 2 * H])
outputs:
  h: h
  h2: h2
"""
    cm = compile_spec(spec_from_text(text, "bi.yaml"), "float32", graphs=("infer",))
    x = np.random.default_rng(5).normal(size=(3, 4, 3)).astype(np.float32)
    out = Runner(cm.graphs["infer"].model)({"x": x, **cm.initial_state(0)})
    h, h2 = out["h"], out["h2"]
    assert h.shape == (4, 3, 4) and h2.shape == (2, 3, 8)
    for k in range(2):
        np.testing.assert_array_equal(h2[k], np.concatenate([h[2 * k], h[2 * k + 1]], axis=-1))
