"""Checks of the nn ops beyond the registry-driven table in test_ops.py:
the float32 path on onnxruntime (the float64 table runs convolutions and
average pooling on onnx's reference evaluator), batch_norm's eval mode and
running-buffer updates, symbolic batch dims, and error messages."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from compiler.autodiff import grad
from compiler.check import Runner
from compiler.emit import emit_model
from compiler.ir import Graph
from compiler.registry import all_ops
from spec.errors import FlowgradError, ShapeError

NN_OPS = {name: o for name, o in all_ops().items() if o.family == "nn"}


def _cases():
    out = []
    for op in NN_OPS.values():
        rng = np.random.default_rng(zlib.crc32(op.name.encode()))
        for i, s in enumerate(op.samples(rng)):
            out.append(pytest.param(op, s, id=f"{op.name}-{i}"))
    return out


def _forward_and_grads(op, sample, dtype, prefer):
    """Run op and the gradient of a fixed weighted sum of its output, in `dtype`."""
    g = Graph(float_dtype=dtype)
    arrays = [np.asarray(a, dtype=dtype) if np.asarray(a).dtype.kind == "f" else np.asarray(a) for a in sample.inputs]
    ins = [g.add_input(f"in{i}", a.dtype.name, a.shape) for i, a in enumerate(arrays)]
    out = g.apply(op.name, *ins, **sample.attrs)
    w = np.random.default_rng(0).normal(size=[int(d) for d in out.shape]).astype(dtype)
    loss = g.apply("sum", out * g.const(w))
    which = sample.grad_inputs if sample.grad_inputs is not None else [
        i for i, a in enumerate(arrays) if a.dtype.kind == "f"
    ]
    grads = grad([loss], [ins[i] for i in which])
    outputs = [("y", out)] + [(f"g{i}", gv) for i, gv in zip(which, grads) if gv is not None]
    model = emit_model(g, [(f"in{i}", v) for i, v in enumerate(ins)], outputs)
    runner = Runner(model, prefer=prefer)
    return runner, runner({f"in{i}": a for i, a in enumerate(arrays)})


@pytest.mark.parametrize("op,sample", _cases())
def test_float32_on_onnxruntime(op, sample):
    """float32 forward matches the NumPy reference, and float32 gradients on
    onnxruntime match the float64 ones (which run on the reference evaluator)."""
    run32, got32 = _forward_and_grads(op, sample, "float32", "ort")
    assert run32.backend == "onnxruntime"
    want = op.ref(op.bind_attrs(sample.attrs), *[np.asarray(a) for a in sample.inputs])
    assert got32["y"].dtype == np.float32
    np.testing.assert_allclose(got32["y"], want, rtol=1e-4, atol=1e-4)
    _, got64 = _forward_and_grads(op, sample, "float64", "reference")
    for k in got64:
        if k.startswith("g"):
            np.testing.assert_allclose(got32[k], got64[k], rtol=1e-4, atol=1e-4, err_msg=k)


# ------------------------------------------------------------------ batch_norm
def _bn_graph(mode, x, gamma, beta, rm, rv, **attrs):
    g = Graph(float_dtype="float64", mode=mode)
    ins = [
        g.add_input("x", "float64", x.shape),
        g.add_input("gamma", "float64", gamma.shape, kind="param"),
        g.add_input("beta", "float64", beta.shape, kind="param"),
        g.add_input("bn.running_mean", "float64", rm.shape, kind="buffer"),
        g.add_input("bn.running_var", "float64", rv.shape, kind="buffer"),
    ]
    y = g.apply("batch_norm", *ins, **attrs)
    return g, ins, y


def _bn_data(shape=(4, 3, 2, 2)):
    rng = np.random.default_rng(1)
    c = shape[1]
    return (rng.normal(size=shape) * 2 + 1, rng.uniform(0.5, 1.5, c), rng.normal(size=c),
            rng.normal(size=c), rng.uniform(0.5, 2.0, c))


@pytest.mark.parametrize("mode", ["eval", "infer"])
def test_batch_norm_eval_uses_running_stats(mode):
    x, gamma, beta, rm, rv = _bn_data()
    g, ins, y = _bn_graph(mode, x, gamma, beta, rm, rv, eps=1e-3)
    assert g.buffer_updates == {}
    # the gradient reaches x, gamma and beta only
    loss = g.apply("sum", y * y)
    gx, gg, gb, grm, grv = grad([loss], ins)
    assert grm is not None and grv is not None  # eval: the output depends on the running stats
    model = emit_model(g, [(v.name, v) for v in ins], [("y", y), ("gx", gx)])
    feeds = dict(zip([v.name for v in ins], [x, gamma, beta, rm, rv]))
    got = Runner(model)(feeds)
    s = (1, -1, 1, 1)
    want = (x - rm.reshape(s)) / np.sqrt(rv.reshape(s) + 1e-3) * gamma.reshape(s) + beta.reshape(s)
    np.testing.assert_allclose(got["y"], want, rtol=1e-10)
    np.testing.assert_allclose(got["gx"], 2 * want * (gamma / np.sqrt(rv + 1e-3)).reshape(s), rtol=1e-10)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 3)])
def test_batch_norm_train_buffer_updates(shape):
    x, gamma, beta, rm, rv = _bn_data(shape)
    g, ins, y = _bn_graph("train", x, gamma, beta, rm, rv, momentum=0.25)
    assert set(g.buffer_updates) == {"bn.running_mean", "bn.running_var"}
    new_rm, new_rv = g.buffer_updates["bn.running_mean"], g.buffer_updates["bn.running_var"]
    assert new_rm.shape == (3,) and new_rv.shape == (3,)
    model = emit_model(g, [(v.name, v) for v in ins], [("y", y), ("rm", new_rm), ("rv", new_rv)])
    got = Runner(model)(dict(zip([v.name for v in ins], [x, gamma, beta, rm, rv])))
    axes = (0,) + tuple(range(2, x.ndim))
    np.testing.assert_allclose(got["rm"], 0.75 * rm + 0.25 * x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(got["rv"], 0.75 * rv + 0.25 * x.var(axis=axes, ddof=1), rtol=1e-12)
    # no gradient flows into the buffers, not even through the updates
    loss = g.apply("sum", y * y) + g.apply("sum", new_rm) + g.apply("sum", new_rv)
    grads = grad([loss], ins)
    assert grads[0] is not None
    gm, gv = grads[3], grads[4]
    # d(update)/d(buffer) is the (1 - momentum) decay only; the batch stats enter through stop_gradient
    model = emit_model(g, [(v.name, v) for v in ins], [("gx", grads[0]), ("gm", gm), ("gv", gv)])
    got = Runner(model)(dict(zip([v.name for v in ins], [x, gamma, beta, rm, rv])))
    np.testing.assert_allclose(got["gm"], np.full(3, 0.75))
    np.testing.assert_allclose(got["gv"], np.full(3, 0.75))
    # and the x gradient is that of the normalised output alone
    loss_y = g.apply("sum", y * y)
    (gx_y,) = grad([loss_y], [ins[0]])
    model = emit_model(g, [(v.name, v) for v in ins], [("a", grads[0]), ("b", gx_y)])
    got = Runner(model)(dict(zip([v.name for v in ins], [x, gamma, beta, rm, rv])))
    np.testing.assert_allclose(got["a"], got["b"], rtol=1e-12)


def test_batch_norm_applied_twice_in_a_step_counts_both_batches():
    """A block with batch_norm called on two inputs (a GAN's discriminator on real and on
    generated digits) kept the update of the last call only: the running averages that
    evaluation and the export normalise with were those of the generated digits alone. Each
    call now moves them from where the one before left them, as two calls of a PyTorch
    module do."""
    x, gamma, beta, rm, rv = _bn_data((5, 3))
    g, ins, y = _bn_graph("train", x, gamma, beta, rm, rv, momentum=0.25)
    x2 = g.apply("exp", ins[0]) * 3.0
    g.apply("batch_norm", x2, *ins[1:], momentum=0.25)
    model = emit_model(g, [(v.name, v) for v in ins], [("rm", g.buffer_updates["bn.running_mean"]),
                                                       ("rv", g.buffer_updates["bn.running_var"])])
    got = Runner(model)(dict(zip([v.name for v in ins], [x, gamma, beta, rm, rv])))
    b = np.exp(x) * 3.0
    np.testing.assert_allclose(got["rm"], 0.75 * (0.75 * rm + 0.25 * x.mean(0)) + 0.25 * b.mean(0), rtol=1e-12)
    np.testing.assert_allclose(got["rv"], 0.75 * (0.75 * rv + 0.25 * x.var(0, ddof=1)) + 0.25 * b.var(0, ddof=1),
                               rtol=1e-12)


def test_batch_norm_train_needs_several_values():
    x, gamma, beta, rm, rv = _bn_data((1, 3))
    with pytest.raises(ShapeError, match="more than one value per channel"):
        _bn_graph("train", x, gamma, beta, rm, rv)


# ------------------------------------------------------------------ symbolic batch
def test_conv_and_pool_with_symbolic_batch():
    g = Graph(float_dtype="float32")
    x = g.add_input("x", "float32", ("N", 4, 7, 6))
    w = g.add_input("w", "float32", (6, 2, 3, 3), kind="param")
    h = g.apply("conv", x, w, stride=2, padding=1, groups=2)
    assert h.shape == ("N", 6, 4, 3)
    h = g.apply("relu", h)
    m = g.apply("max_pool2d", h, kernel=2, stride=1)
    a = g.apply("avg_pool2d", h, kernel=(2, 3), padding=(1, 1))
    loss = g.apply("sum", m) + g.apply("sum", a * a)
    gx, gw = grad([loss], [x, w])
    assert gx.shape == x.shape and gw.shape == w.shape
    model = emit_model(g, [("x", x), ("w", w)], [("loss", loss), ("gx", gx), ("gw", gw)])
    run = Runner(model)
    assert run.backend == "onnxruntime"
    rng = np.random.default_rng(0)
    for n in (1, 3):
        xs = rng.normal(size=(n, 4, 7, 6)).astype(np.float32)
        ws = rng.normal(size=(6, 2, 3, 3)).astype(np.float32)
        got = run({"x": xs, "w": ws})
        assert got["gx"].shape == xs.shape and got["gw"].shape == ws.shape
        # against the same graph in float64 with static shapes
        g2 = Graph(float_dtype="float64")
        x2 = g2.add_input("x", "float64", xs.shape)
        w2 = g2.add_input("w", "float64", ws.shape)
        h2 = g2.apply("relu", g2.apply("conv", x2, w2, stride=2, padding=1, groups=2))
        l2 = g2.apply("sum", g2.apply("max_pool2d", h2, kernel=2, stride=1))
        a2 = g2.apply("avg_pool2d", h2, kernel=(2, 3), padding=(1, 1))
        l2 = l2 + g2.apply("sum", a2 * a2)
        gx2, gw2 = grad([l2], [x2, w2])
        want = Runner(emit_model(g2, [("x", x2), ("w", w2)], [("gx", gx2), ("gw", gw2)]))(
            {"x": xs.astype(np.float64), "w": ws.astype(np.float64)}
        )
        np.testing.assert_allclose(got["gx"], want["gx"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(got["gw"], want["gw"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("pool,attrs", [
    ("max_pool2d", {"kernel": 2}),
    ("max_pool2d", {"kernel": 3, "stride": 2, "padding": 1}),
    ("avg_pool2d", {"kernel": 2, "stride": 1, "padding": 1}),
])
@pytest.mark.parametrize("source", ["pad", "conv_transpose"])
@pytest.mark.parametrize("with_grad", [False, True])
def test_pooling_a_zero_padded_tensor_on_onnxruntime(pool, attrs, source, with_grad):
    """onnxruntime's PadFusion folds a zero Pad into the pool reading it: a max pool took the
    zeros for its own padding (a negative map's pooled zeros came out as its values), and
    folded pads that reach the kernel made onnxruntime refuse the session. An eval graph (the
    pool alone) and a training one (its gradient too) agree with the reference evaluator."""
    from compiler.check import reference_evaluator

    g = Graph(float_dtype="float32")
    x = g.add_input("x", "float32", (2, 2, 3, 3))
    w = g.add_input("w", "float32", (2, 2, 2, 2))
    if source == "pad":
        h = g.apply("pad", x, pads=((0, 0), (0, 0), (0, 1), (1, 1)))
    else:  # output_padding beyond the end pad: zero rows and columns after the last window
        h = g.apply("conv_transpose", x, w, stride=2, output_padding=1)
    y = g.apply(pool, h, **attrs)
    outs = [("y", y)]
    if with_grad:
        (gx,) = grad([g.apply("sum", y * y)], [x])
        outs.append(("gx", gx))
    model = emit_model(g, [("x", x), ("w", w)], outs)
    rng = np.random.default_rng(0)
    # every value below the zeros the padding adds
    feeds = {"x": -rng.uniform(1, 2, (2, 2, 3, 3)).astype(np.float32), "w": rng.uniform(1, 2, (2, 2, 2, 2)).astype(np.float32)}
    run = Runner(model)
    assert run.backend == "onnxruntime"
    got = run(feeds)
    want = dict(zip([o.name for o in model.graph.output], reference_evaluator(model).run(None, feeds)))
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("padding", [1, (2, 0, 1, 1)])
def test_conv_weight_gradient_gathers_or_slices_its_windows_alike(monkeypatch, padding):
    """Small images gather the shifted windows with an index table; images beyond the
    table's size limit slice them. Both give the same weight gradient."""
    from compiler.ops import nn

    def weight_grad():
        g = Graph(float_dtype="float64")
        x, w = g.add_input("x", "float64", (2, 3, 5, 6)), g.add_input("w", "float64", (4, 3, 3, 3))
        y = g.apply("conv", x, w, padding=padding)
        (gw,) = grad([g.apply("sum", y * y)], [w])
        ops = {n.op.name for n in g.nodes}
        rng = np.random.default_rng(1)
        feeds = {"x": rng.normal(size=(2, 3, 5, 6)), "w": rng.normal(size=(4, 3, 3, 3))}
        return Runner(emit_model(g, [("x", x), ("w", w)], [("gw", gw)]))(feeds)["gw"], ops

    gathered, ops = weight_grad()
    assert "take" in ops and "concat" not in ops
    monkeypatch.setattr(nn, "IM2COL_GATHER_MAX_ENTRIES", 0)
    sliced, ops = weight_grad()
    assert "concat" in ops
    np.testing.assert_allclose(gathered, sliced, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ errors
def _g():
    return Graph(float_dtype="float64")


def test_maxout_must_divide():
    g = _g()
    x = g.add_input("x", "float64", (2, 7))
    with pytest.raises(ShapeError, match="not a multiple of pieces=3"):
        g.apply("maxout", x, pieces=3)


def test_conv_channel_mismatch():
    g = _g()
    x = g.add_input("x", "float64", (2, 3, 5, 5))
    w = g.add_input("w", "float64", (4, 2, 3, 3))
    with pytest.raises(ShapeError, match=r"conv: input \[2, 3, 5, 5\] has 3 channels"):
        g.apply("conv", x, w)


def test_conv_input_smaller_than_kernel():
    g = _g()
    x = g.add_input("x", "float64", (2, 3, 2, 5))
    w = g.add_input("w", "float64", (4, 3, 3, 3))
    with pytest.raises(ShapeError, match="smaller than the \\(dilated\\) kernel"):
        g.apply("conv", x, w)


def test_conv_bad_groups_and_padding():
    g = _g()
    x = g.add_input("x", "float64", (2, 4, 5, 5))
    w = g.add_input("w", "float64", (3, 2, 3, 3))
    with pytest.raises(ShapeError, match="do not split into 2 groups"):
        g.apply("conv", x, w, groups=2)
    w2 = g.add_input("w2", "float64", (4, 4, 3, 3))
    with pytest.raises(ShapeError, match="padding 'valid' is not supported"):
        g.apply("conv", x, w2, padding="valid")


def test_pool_padding_must_be_smaller_than_kernel():
    g = _g()
    x = g.add_input("x", "float64", (1, 1, 5, 5))
    with pytest.raises(ShapeError, match="smaller than the kernel"):
        g.apply("max_pool2d", x, kernel=2, padding=2)


def test_layer_norm_gamma_shape():
    g = _g()
    x = g.add_input("x", "float64", (2, 3, 4))
    gamma = g.add_input("gamma", "float64", (3,))
    beta = g.add_input("beta", "float64", (4,))
    with pytest.raises(ShapeError, match=r"gamma must be \[4\]"):
        g.apply("layer_norm", x, gamma, beta)


@pytest.mark.parametrize("op", ["dot_attention", "additive_attention"])
def test_attention_shape_errors_show_types_not_internal_values(op):
    """The attention ops' shape errors printed internal reprs (<enc#10335 float32[N, S, 128]>)."""
    g = Graph("float32")
    q, k = g.add_input("q", "float32", ("N", 4)), g.add_input("k", "float32", ("N", 5, 4))
    v, m = g.add_input("v", "float32", ("N", 6, 4)), g.add_input("m", "float32", ("N", 5))
    extra = [g.add_input(n, "float32", s) for n, s in (("W", (4, 3)), ("U", (4, 3)), ("a", (3,)))] \
        if op == "additive_attention" else []
    with pytest.raises(ShapeError) as e:
        g.apply(op, q, k, v, m, *extra)
    assert "disagree on [N, S]" in e.value.message and "#" not in e.value.message and "<" not in e.value.message


LAYER_SPEC = """\
flowgrad: 1
name: layers
dims: {K: 3}
inputs:
  img: {shape: [N, 1, 6, 6]}
  ids: {shape: [N, 4], dtype: int64}
params:
  CW: {shape: [2, 1, 3, 3], init: he_uniform, trainable: false}
graph:
  out: %s
loss: mean(out * out)
"""


@pytest.mark.parametrize("call, words", [
    # with the tensors given, these were dropped without a word (bias=false kept no bias anyway)
    ("conv2d(img, CW, bias=false)", "has no argument 'bias'"),
    ("conv2d(img, CW, init=zeros)", "has no argument 'init'"),
    ("conv2d(img, CW, strid=2)", "did you mean 'stride'"),
])
def test_conv2d_with_tensors_refuses_the_layer_arguments(call, words):
    from compiler.training import check_spec
    from spec import SpecError, spec_from_text

    with pytest.raises(SpecError, match=words) as e:
        check_spec(spec_from_text(LAYER_SPEC % call, "l.yaml"))
    assert str(e.value).startswith("l.yaml:10:"), str(e.value)


@pytest.mark.parametrize("call, words", [
    ("dense(img[:, 0, 0, :], K, W=DW, init=zeros)", "not with W="),
    # embedding and conv2d dropped init= beside W= without a word
    ("embedding(ids, 6, 3, W=DW, init=zeros)", "embedding.. takes init= .* not with W="),
    ("conv2d(img, 2, 3, W=CW, init=zeros)", "conv2d.. takes init= .* not with W="),
    ("dense(img[:, 0, 0, :], K, bias=false, b=Db)", "b= and bias=false"),
])
def test_layers_refuse_arguments_they_would_drop(call, words):
    """dense(x, K, W=..., init=...) ignored init (as embedding's and conv2d's layer forms did), and
    bias=false with b= ignored b."""
    from compiler.training import check_spec
    from spec import SpecError, spec_from_text

    text = LAYER_SPEC.replace("graph:", "  DW: {shape: [6, 3], init: zeros}\n  Db: {shape: [3], init: zeros}\ngraph:")
    with pytest.raises(SpecError, match=words) as e:
        check_spec(spec_from_text(text % call, "l.yaml"))
    assert str(e.value).startswith("l.yaml:12:"), str(e.value)


@pytest.mark.parametrize("call, words", [
    # the sizes were dropped without a word: W= made the shape, whatever the call wrote
    ("dense(img[:, 0, 0, :], 5, W=DW, bias=false)", "dense(): W= is [6, 3], but its input's 6 features and units=5 "
                                                     "make its weight [6, 5]"),
    ("embedding(ids, 4, 6, W=DW)", "embedding(): W= is [6, 3], but vocab=4 and dim=6 make its weight [4, 6]"),
    ("conv2d(img, 2, 5, W=CW, bias=false)", "conv2d(): W= is [2, 1, 3, 3], but channels=2, the input's 1 channels "
                                            "and kernel 5x5 make its weight [2, 1, 5, 5]"),
    ("conv2d(img, 3, 3, W=CW)", "make its weight [3, 1, 3, 3]"),
    ("dense(img[:, 0, 0, 0:3], 6, W=DW)", "wrap it in transpose"),  # a tied decoder's weight, untransposed
])
def test_layers_given_a_weight_refuse_sizes_it_does_not_have(call, words):
    from compiler.training import check_spec
    from spec import spec_from_text

    text = LAYER_SPEC.replace("graph:", "  DW: {shape: [6, 3], init: zeros, trainable: false}\ngraph:")
    with pytest.raises(ShapeError) as e:
        check_spec(spec_from_text(text % call, "l.yaml"))
    assert words in str(e.value), str(e.value)
    assert str(e.value).startswith("l.yaml:11:") and e.value.hint, str(e.value)
    # sizes that fit the given weight still take it
    for fits in ("dense(img[:, 0, 0, :], 3, W=DW)", "dense(embedding(ids, 6, 3, W=DW), 2)", "conv2d(img, 2, 3, W=CW)"):
        check_spec(spec_from_text(text % fits, "l.yaml"))


def test_embedding_sizes_by_keyword_make_the_table():
    """embedding(ids, vocab=5, dim=3) fell through to the op (a table argument) and failed."""
    from compiler.training import check_spec
    from spec import spec_from_text

    for call in ("embedding(ids, vocab=5, dim=3)", "embedding(ids, 5, dim=3)", "embedding(ids, 5, 3)"):
        low = check_spec(spec_from_text(LAYER_SPEC % call, "l.yaml"))
        assert tuple(low.env["out"].shape) == ("N", 4, 3), call
        assert tuple(low.params["out.W"].shape) == (5, 3), call


def test_layer_usages_name_the_arguments_they_take():
    """The usages (the hints of a layer's errors) are its reference: dense's showed act=relu as if a
    default, conv2d's left out groups, bias, init, W and b, embedding's called vocab 'vocab_size'
    (its errors say 'vocab'), the recurrent layers' left out init, return_state, dropout, stateful, unroll."""
    import re

    import compiler.recurrent  # noqa: F401  (registers the recurrent layers)
    from compiler.layers import LAYERS
    from compiler.training import check_spec
    from spec import spec_from_text

    # arguments a layer refuses with its own error (act= of an lstm, axis= of batch_norm...)
    refused = {"batch_norm": {"axis"}, "layer_norm": {"momentum"}, "lstm": {"act", "linear_before_reset"},
               "gru": {"act"}, "rnn": {"linear_before_reset"}, "lstm_cell": {"act", "linear_before_reset"},
               "gru_cell": {"act"}, "rnn_cell": {"linear_before_reset"}, "bidirectional": {"cell"}}
    for name, layer in LAYERS.items():
        words = set(re.findall(r"\w+", layer.usage))
        missing = set(layer.keywords) | set(layer.positional)
        assert missing - words - refused.get(name, set()) == set(), (name, layer.usage)
    assert "act=relu (default: none)" in LAYERS["dense"].usage
    check_spec(spec_from_text(LAYER_SPEC % "embedding(ids, 5, dim=3)", "l.yaml"))


_CONV_ARGS_SPEC = """\
flowgrad: 1
name: conv_args
inputs:
  x: {shape: [N, 4, 8, 8]}
params:
  Wt: {shape: [4, 2, 3, 3], init: he_uniform}
  Wc: {shape: [6, 4, 3, 3], init: he_uniform}
graph:
  c: EXPR
loss: mean(c)
"""


@pytest.mark.parametrize("layer, applied", [
    ("dense(img[:, 0, 0, :], 3, act=gelu(approximate='tanh'))", "gelu(dense(img[:, 0, 0, :], 3), approximate='tanh')"),
    ("dense(img[:, 0, 0, :], 3, act=elu(alpha=0.7))", "elu(dense(img[:, 0, 0, :], 3), alpha=0.7)"),
    ("conv2d(img, 2, 3, act=softplus(beta=2, threshold=1))", "softplus(conv2d(img, 2, 3), beta=2, threshold=1)"),
    ("conv2d(img, CW, act=hardtanh(min_val=-0.1, max_val=0.2))", "hardtanh(conv2d(img, CW), min_val=-0.1, max_val=0.2)"),
    ("dense(img[:, 0, 0, :], 3, act=leaky_relu(alpha=0.3))", "leaky_relu(dense(img[:, 0, 0, :], 3), alpha=0.3)"),
])
def test_act_takes_an_op_with_its_options(layer, applied):
    """The README lists act='s ops with their options (leaky_relu(alpha), softplus(beta, threshold),
    gelu with approximate='tanh'), but act=gelu(approximate='tanh') was evaluated as a call of gelu on
    nothing: 'gelu() is missing the argument(s) x'. It applies the op with those options to the output."""
    from compiler.check import Runner
    from compiler.training import compile_spec
    from spec import spec_from_text

    x = np.random.default_rng(0).normal(size=(2, 1, 6, 6)).astype(np.float32)
    outs = []
    for call in (layer, applied):
        cm = compile_spec(spec_from_text(LAYER_SPEC.replace("loss:", "outputs: {o: out}\nloss:") % call, "l.yaml"),
                          graphs=("infer",))
        state = cm.initial_state(0)
        graph = cm.graphs["infer"]
        feeds = {i.name: (x if i.name == "img" else state[i.name]) for i in graph.model.graph.input}
        outs.append(Runner(graph.model)(feeds)["o"])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-7)
    assert np.abs(outs[0]).max() > 0


@pytest.mark.parametrize("act, takes", [("maximum(b=2)", "2"), ("fill(dims=[3])", "several"), ("constant(value=1.0)", "none")])
def test_act_of_an_op_of_several_tensors_is_refused(act, takes):
    """(fill, of any number of tensors, was said to take 1, and constant, of none, several)"""
    from compiler.training import check_spec
    from spec import spec_from_text

    with pytest.raises(FlowgradError, match=f"act= applies an op of one tensor, and [a-z]+ takes {takes}\n"):
        check_spec(spec_from_text(LAYER_SPEC % f"dense(img[:, 0, 0, :], 3, act={act})", "l.yaml"))


@pytest.mark.parametrize("act, hint", [
    ("hardtanh(0.0, 6.0)", "write act=hardtanh(min_val=0.0, max_val=6.0)"),
    ("elu(0.5)", "write act=elu(alpha=0.5)"),
    ("relu(img)", "write act=relu"),
])
def test_act_of_an_op_with_positional_options_names_them(act, hint):
    """README lists act='s ops as hardtanh(min_val, max_val), elu(alpha), and nn.Hardtanh(0.0, 6.0)
    takes them in order, but act=hardtanh(0.0, 6.0) read 0.0 as x ('max_val must be above
    min_val, got min_val=6.0, max_val=1.0') and act=elu(0.5) said 'act must name an op such as
    relu, got <elu#5 float32[]>'. Each is told to name the options, at the first of them."""
    from compiler.training import check_spec
    from spec import spec_from_text

    with pytest.raises(FlowgradError, match="takes its options by name") as err:
        check_spec(spec_from_text(LAYER_SPEC % f"dense(img[:, 0, 0, :], 3, act={act})", "l.yaml"))
    assert err.value.hint == hint
    assert (err.value.loc.line, err.value.loc.col) == (10, 38 + len(act.split("(")[0]) + 1)  # (its first option)


@pytest.mark.parametrize("expr, arg, message", [
    ("conv2d(x, 8, 3, stride=0)", "stride=0", "conv2d: stride must be a positive integer or a pair of them, got 0"),
    ("conv2d(x, 8, 3, padding=-1)", "padding=-1", "conv2d: padding must be a whole number of 0 or more"),
    ("conv2d(x, 8, 3, dilation=[1, 0])", "dilation=", "conv2d: dilation must be a positive integer or a pair of them, got [1, 0]"),
    ("conv2d(x, 8, 3, groups=3)", "groups=3", "conv2d: input channels 4 are not divisible by groups=3"),
    ("conv2d(x, 8, 3, groups=0)", "groups=0", "conv2d: groups must be a positive integer, got 0"),
    ("conv2d(x, 0, 3)", "0, 3", "conv2d: channels must be a positive integer, got 0"),
    ("conv2d(x, Wc, stride=0)", "stride=0", "conv2d: stride must be a positive integer"),
    ("conv(x, Wc, padding=-2)", "padding=-2", "conv: padding must be a whole number of 0 or more"),
    ("conv(x, Wc, 0)", "0)", "conv: stride must be a positive integer"),
    ("conv_transpose(x, Wt, stride=0)", "stride=0", "conv_transpose: stride must be a positive integer"),
    ("conv_transpose(x, Wt, groups=3)", "groups=3", "conv_transpose: 4 input channels do not split into 3 groups"),
    ("conv_transpose(x, Wt, output_padding=-1)", "output_padding=-1", "conv_transpose: output_padding must be a whole number of 0 or more"),
    ("max_pool2d(x, 0)", "0)", "max_pool2d: kernel must be a positive integer or a pair of them, got 0"),
    ("max_pool2d(x, 2, padding=-1)", "padding=-1", "max_pool2d: padding must be a whole number of 0 or more"),
    ("avg_pool2d(x, 2, stride=[2, 0])", "stride=", "avg_pool2d: stride must be a positive integer or a pair of them, got [2, 0]"),
    ("avg_pool2d(x, 2, padding=2)", "padding=2", "avg_pool2d: padding [2, 2] must be smaller than the kernel [2, 2]"),
    ("adaptive_avg_pool2d(x, 0)", "0)", "adaptive_avg_pool2d: output_size must be a positive integer or a pair of them, got 0"),
    ("adaptive_avg_pool2d(x, output_size=[3, -1])", "output_size=", "adaptive_avg_pool2d: output_size must be a positive"),
])
def test_conv_and_pool_argument_errors_point_at_the_argument(expr, arg, message):
    """conv2d(x, C, 3, stride=0) and padding=-1 were located at the whole entry, and groups=3 said 'input channels
    ... are not divisible' without the op's name: each is now at the argument, named after the call written."""
    from compiler.training import check_spec
    from spec.loader import spec_from_text

    text = _CONV_ARGS_SPEC.replace("EXPR", expr)
    with pytest.raises(FlowgradError) as info:
        check_spec(spec_from_text(text, "conv.yaml"))
    line = text.splitlines().index(f"  c: {expr}")
    col = text.splitlines()[line].index(arg) + 1
    assert str(info.value).startswith(f"conv.yaml:{line + 1}:{col}: {message}"), str(info.value)
    assert info.value.hint


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("attrs", [{"kernel": 3, "stride": 1, "padding": 1}, {"kernel": 2, "padding": 1},
                                   {"kernel": (3, 2), "stride": (2, 1), "padding": (1, 0)}])
def test_a_max_pool_over_minus_inf_entries_and_padding_is_minus_inf(dtype, attrs):
    """onnxruntime's MaxPool pads with the float type's lowest number: a padded window whose
    entries were all -inf (a map masked with -inf) pooled to -3.4e38 instead of -inf, as
    PyTorch's max_pool2d gives. The padding is a Pad of -inf: windows of -inf entries pool to -inf,
    the others as before, and the gradient still goes to each window's first maximum."""
    g = Graph(float_dtype=dtype)
    x = g.add_input("x", dtype, (1, 2, 4, 5))
    c = g.add_input("c", dtype, (1, 2) + NN_OPS["max_pool2d"].infer({**{"stride": None, "padding": 0}, **attrs},
                                                                      x.type)[0].shape[2:])
    y = g.apply("max_pool2d", x, **attrs)
    (gx,) = grad([g.apply("sum", y * c)], [x])
    model = emit_model(g, [("x", x), ("c", c)], [("y", y), ("gx", gx)])
    rng = np.random.default_rng(0)
    feeds = {"x": np.where(rng.uniform(size=(1, 2, 4, 5)) < 0.7, -np.inf, rng.normal(size=(1, 2, 4, 5))).astype(dtype)}
    feeds["x"][0, 1] = -np.inf  # the second channel all -inf
    feeds["c"] = rng.normal(size=c.shape).astype(dtype)
    run = Runner(model)
    assert run.backend == "onnxruntime"
    got = run(feeds)
    full = {"stride": None, "padding": 0, **attrs}
    want = NN_OPS["max_pool2d"].ref(full, feeds["x"])
    assert np.isneginf(want).any() and np.isneginf(want[0, 1]).all()
    np.testing.assert_array_equal(got["y"], want)
    np.testing.assert_array_equal(got["gx"], all_ops()["max_pool2d_grad"].ref(full, feeds["c"], feeds["x"]))
