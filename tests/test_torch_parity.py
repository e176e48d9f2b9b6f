"""flowgrad's layers and losses against torch.nn.functional, as a user porting a PyTorch model
expects them: each op with its options, its value and the gradient of a fixed weighted sum of
it, in float64 (skipped without torch)."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.autodiff import grad
from compiler.check import Runner
from compiler.emit import emit_model
from compiler.ir import Graph

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _flowgrad(op, arrays, attrs, which, mode):
    g = Graph(float_dtype="float64")
    g.mode = mode
    ins = [g.add_input(f"in{i}", a.dtype.name, a.shape) for i, a in enumerate(arrays)]
    out = g.apply(op, *ins, **attrs)
    w = np.random.default_rng(0).normal(size=[int(d) for d in out.shape])
    grads = grad([g.apply("sum", out * g.const(w))], [ins[i] for i in which])
    model = emit_model(g, [(f"in{i}", v) for i, v in enumerate(ins)],
                       [("y", out)] + [(f"g{i}", gv) for i, gv in zip(which, grads)])
    got = Runner(model, prefer="reference")({f"in{i}": a for i, a in enumerate(arrays)})
    return got["y"], [got[f"g{i}"] for i in which], w


def _torch(fn, arrays, which, w):
    ts = [torch.tensor(a, requires_grad=i in which) for i, a in enumerate(arrays)]
    y = fn(*ts)
    (y * torch.tensor(w)).sum().backward()
    return y.detach().numpy(), [ts[i].grad.numpy() for i in which]


def _check(op, arrays, attrs, fn, which=None, mode="train"):
    arrays = [np.asarray(a) for a in arrays]
    which = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"] if which is None else which
    y, grads, w = _flowgrad(op, arrays, attrs, which, mode)
    want_y, want_grads = _torch(fn, arrays, which, w)
    np.testing.assert_allclose(y, want_y, rtol=1e-9, atol=1e-12, err_msg=f"{op} {attrs}: value")
    for i, got, want in zip(which, grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=f"{op} {attrs}: gradient of input {i}")


_rng = np.random.default_rng(7)
_Z = _rng.normal(size=(5, 4)) * 2
_Z3 = _rng.normal(size=(2, 4, 3))
_Y = np.array([0, -100, 3, -100, 1])
_Y3 = np.array([[0, 3, 1], [2, 2, 0]])
_P = _rng.uniform(size=(5, 4))
_P /= _P.sum(-1, keepdims=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_ignore_index_matches_torch(reduction, smoothing):
    _check("cross_entropy", [_Z, _Y], {"reduction": reduction, "ignore_index": -100, "label_smoothing": smoothing},
           lambda z, y: F.cross_entropy(z, y, reduction=reduction, label_smoothing=smoothing), which=[0])
    _check("cross_entropy", [_Z3, _Y3], {"axis": 1, "ignore_index": 2, "reduction": reduction,
                                         "label_smoothing": smoothing},
           lambda z, y: F.cross_entropy(z, y, ignore_index=2, reduction=reduction, label_smoothing=smoothing),
           which=[0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(reduction):
    y = np.where(_Y < 0, 2, _Y)
    _check("cross_entropy", [_Z, y], {"reduction": reduction}, lambda z, t: F.cross_entropy(z, t, reduction=reduction),
           which=[0])
    _check("cross_entropy", [_Z, y], {"reduction": reduction, "label_smoothing": 0.1},
           lambda z, t: F.cross_entropy(z, t, reduction=reduction, label_smoothing=0.1), which=[0])
    _check("cross_entropy", [_Z, _P], {"reduction": reduction, "label_smoothing": 0.2},
           lambda z, t: F.cross_entropy(z, t, reduction=reduction, label_smoothing=0.2))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_weight_matches_torch(reduction, smoothing):
    """weight= with class ids (the mean divides by the labels' weights), ignore_index, label_smoothing
    (weighted too), and with probability targets (a plain mean)."""
    w = (0.5, 2.0, 1.0, 0.25)
    wt = torch.tensor(w, dtype=torch.float64)
    _check("cross_entropy", [_Z, _Y], {"reduction": reduction, "ignore_index": -100, "label_smoothing": smoothing,
                                       "weight": w},
           lambda z, y: F.cross_entropy(z, y, weight=wt, reduction=reduction, label_smoothing=smoothing), which=[0])
    _check("cross_entropy", [_Z3, _Y3], {"axis": 1, "ignore_index": 2, "reduction": reduction,
                                         "label_smoothing": smoothing, "weight": w},
           lambda z, y: F.cross_entropy(z, y, weight=wt, ignore_index=2, reduction=reduction,
                                        label_smoothing=smoothing), which=[0])
    _check("cross_entropy", [_Z, _P], {"reduction": reduction, "label_smoothing": smoothing, "weight": w},
           lambda z, t: F.cross_entropy(z, t, weight=wt, reduction=reduction, label_smoothing=smoothing))


@pytest.mark.parametrize("pos_weight", [None, 3.0, (0.5, 2.0, 4.0, 1.0)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_pos_weight_matches_torch(pos_weight, reduction):
    t = np.random.default_rng(3).uniform(size=_Z.shape)
    z = np.concatenate([_Z[:4] * 5, np.zeros((1, 4))])  # a row of logits at 0, where |z| has a kink
    pw = None if pos_weight is None else torch.tensor(pos_weight)
    _check("binary_cross_entropy", [z, t], {"reduction": reduction, "pos_weight": pos_weight},
           lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction, pos_weight=pw))


@pytest.mark.parametrize("padding_idx", [None, 0, 2, -1])
def test_embedding_padding_idx_matches_torch(padding_idx):
    """The padding row is looked up as it is, and gets no gradient (F.embedding's padding_idx)."""
    ids = np.array([[0, 2, 5], [2, 1, 0]])
    table = np.random.default_rng(4).normal(size=(6, 3))
    _check("embedding", [ids, table], {"padding_idx": padding_idx},
           lambda i, t: F.embedding(i, t, padding_idx=padding_idx), which=[1])


_X = np.random.default_rng(5).normal(size=(2, 4, 7, 6))


@pytest.mark.parametrize("attrs", [{}, {"stride": 2, "padding": 1}, {"padding": "same"},
                                   {"padding": "same", "dilation": 2}, {"dilation": (2, 1), "stride": (1, 2)}])
def test_conv_matches_torch(attrs):
    w = np.random.default_rng(6).normal(size=(6, 4, 3, 3))
    _check("conv", [_X, w], attrs, lambda x, k: F.conv2d(x, k, **attrs))
    wg = np.random.default_rng(6).normal(size=(8, 1, 3, 2))  # depthwise: groups = channels
    _check("conv", [_X, wg], {**attrs, "groups": 4}, lambda x, k: F.conv2d(x, k, groups=4, **attrs))


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), ((3, 2), (2, 1), (1, 0)), (3, 1, 1)])
def test_pools_match_torch(kernel, stride, padding):
    attrs = {"kernel": kernel, "stride": stride, "padding": padding}
    _check("max_pool2d", [_X], attrs, lambda x: F.max_pool2d(x, kernel, stride, padding))
    _check("avg_pool2d", [_X], attrs, lambda x: F.avg_pool2d(x, kernel, stride, padding))  # count_include_pad=True
    _check("global_avg_pool", [_X], {}, lambda x: F.adaptive_avg_pool2d(x, 1))


@pytest.mark.parametrize("output_size", [1, (7, 3), (1, 2), 3, (4, 5), (2, 6), (10, 9)])
def test_adaptive_avg_pool2d_matches_torch(output_size):
    """adaptive_avg_pool2d(x, output_size) over a 7x6 input: sizes that divide it (avg_pool2d's
    windows), sizes that do not (torch's overlapping windows) and sizes larger than the input."""
    _check("adaptive_avg_pool2d", [_X], {"output_size": output_size},
           lambda x: F.adaptive_avg_pool2d(x, output_size))


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), ((3, 2), (2, 1), (1, 0)), (3, 1, 1),
                                                   (3, 3, 1), ((2, 3), (3, 2), (0, 1))])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_ceil_mode_and_count_include_pad_match_torch(kernel, stride, padding, ceil_mode):
    """ceil_mode's last windows (past the padding, or dropped where they would start in it), and
    avg_pool2d's divisor without the padding (count_include_pad=False)."""
    x = _X[:, :, :, :5]  # 7x5: strides 2 and 3 leave rows and cols over
    attrs = {"kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
    _check("max_pool2d", [x], attrs, lambda a: F.max_pool2d(a, kernel, stride, padding, ceil_mode=ceil_mode))
    for count in (True, False):
        _check("avg_pool2d", [x], {**attrs, "count_include_pad": count},
               lambda a: F.avg_pool2d(a, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=count))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 3)])
def test_batch_norm_matches_torch(mode, shape):
    rng = np.random.default_rng(8)
    args = [rng.normal(size=shape), rng.uniform(0.5, 1.5, 3), rng.normal(size=3), rng.normal(size=3),
            rng.uniform(0.5, 2.0, 3)]
    _check("batch_norm", args, {"eps": 1e-3}, lambda x, g, b, m, v: F.batch_norm(
        x, m.detach().clone(), v.detach().clone(), g, b, training=mode == "train", eps=1e-3), which=[0, 1, 2], mode=mode)


def test_layer_norm_softmax_and_activations_match_torch():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(2, 3, 4, 5)) * 3
    _check("layer_norm", [x, rng.normal(size=5), rng.normal(size=5)], {}, lambda a, g, b: F.layer_norm(a, (5,), g, b))
    _check("layer_norm", [x, rng.normal(size=(4, 5)), rng.normal(size=(4, 5))], {"axis": -2, "eps": 1e-3},
           lambda a, g, b: F.layer_norm(a, (4, 5), g, b, eps=1e-3))
    for axis in (-1, 0, 1):
        _check("softmax", [x], {"axis": axis}, lambda a: F.softmax(a, axis))
        _check("log_softmax", [x], {"axis": axis}, lambda a: F.log_softmax(a, axis))
    _check("leaky_relu", [x], {"alpha": 0.2}, lambda a: F.leaky_relu(a, 0.2))
    _check("softplus", [x * 10], {}, F.softplus)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_losses_and_nll_match_torch(reduction):
    t = np.random.default_rng(10).uniform(size=_Z.shape)
    _check("mse", [_Z, t], {"reduction": reduction}, lambda a, b: F.mse_loss(a, b, reduction=reduction))
    _check("l1_loss", [_Z, t], {"reduction": reduction}, lambda a, b: F.l1_loss(a, b, reduction=reduction))
    lp = _Z - np.log(np.exp(_Z).sum(-1, keepdims=True))
    y = np.where(_Y < 0, 2, _Y)
    _check("nll", [lp, y], {"reduction": reduction}, lambda a, b: F.nll_loss(a, b, reduction=reduction), which=[0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("t", [1.0, 0.5, 0.0])
def test_smooth_l1_and_huber_match_torch(reduction, t):
    """At and around the kink |a - b| = beta (delta), where the loss turns from quadratic to linear."""
    b = np.round(np.random.default_rng(11).uniform(size=_Z.shape) * 8) / 8
    a = b + np.array([-1.0, -0.5, 0.5, 1.0])  # a - b at +-0.5 and +-1 exactly
    a = np.concatenate([a[:2], b[2:] + _Z[2:]])
    _check("smooth_l1_loss", [a, b], {"reduction": reduction, "beta": t},
           lambda x, y: F.smooth_l1_loss(x, y, reduction=reduction, beta=t))
    if t:
        _check("huber_loss", [a, b], {"reduction": reduction, "delta": t},
               lambda x, y: F.huber_loss(x, y, reduction=reduction, delta=t))


# Activations a port reaches for, at random points and where they are hard: far out both ways (no
# overflow: silu(-100) is -0.0, not nan) and at their kinks, where the gradient is torch's choice.
_FAR = np.array([-100.0, -30.0, -8.0, -3.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 3.0, 8.0, 30.0, 100.0])
_ACT_X = np.concatenate([np.random.default_rng(11).normal(size=20) * 3, _FAR])
ACTIVATIONS = [
    ("erf", {}, torch.erf),
    ("gelu", {}, F.gelu),
    ("gelu", {"approximate": "tanh"}, lambda a: F.gelu(a, approximate="tanh")),
    ("silu", {}, F.silu),
    ("elu", {}, F.elu),
    ("elu", {"alpha": 0.5}, lambda a: F.elu(a, 0.5)),
    ("hardtanh", {}, F.hardtanh),
    ("softplus", {"beta": 2.5, "threshold": 20.0}, lambda a: F.softplus(a, 2.5, 20.0)),
    ("softplus", {"beta": 0.5, "threshold": 5.0}, lambda a: F.softplus(a, 0.5, 5.0)),
    ("hardtanh", {"min_val": 0.0, "max_val": 3.0}, lambda a: F.hardtanh(a, 0.0, 3.0)),
]


@pytest.mark.parametrize("op, attrs, fn", ACTIVATIONS, ids=[f"{o}-{a}" for o, a, _ in ACTIVATIONS])
def test_activations_match_torch(op, attrs, fn):
    _check(op, [_ACT_X], attrs, fn)


_TORCH_INIT_SPEC = """
flowgrad: 1
name: t
dims: {D: 300, U: 200, C: 12, O: 40}
inputs:
  x: {shape: [N, D]}
  img: {shape: [N, C, 8, 8]}
params:
  V: {shape: [U], init: {torch_uniform: {fan_in: 300}}}
graph:
  h: dense(x, U, init=torch_uniform)
  c: conv2d(img, O, [3, 5], init=torch_uniform)
  g: conv2d(img, O, 3, groups=4, init=torch_uniform)
  k: dense(x, U)
loss: mean(h * V) + mean(c) + mean(g) + mean(k)
"""


def _torch_init_state(seed=0):
    from compiler.training import compile_spec
    from spec import spec_from_text

    return compile_spec(spec_from_text(_TORCH_INIT_SPEC, "t.yaml"), "float64").initial_state(seed)


def test_torch_uniform_draws_dense_and_conv2d_weights_and_biases_as_torch_reset_parameters():
    """init=torch_uniform gives dense's and conv2d's W and b PyTorch's default distributions: the same
    bound as nn.Linear's / nn.Conv2d's reset_parameters (fan_in = in_features, in_channels / groups
    * kh * kw), uniform inside it (std bound / sqrt(3)), as torch's own draws of the same layers;
    seeded per parameter name as the other initialisers (the same seed, the same numbers)."""
    state = _torch_init_state()
    torch.manual_seed(0)
    mods = {"h": torch.nn.Linear(300, 200), "c": torch.nn.Conv2d(12, 40, (3, 5)),
            "g": torch.nn.Conv2d(12, 40, 3, groups=4)}
    for name, mod in mods.items():
        for ours, theirs in ((state[f"{name}.W"], mod.weight), (state[f"{name}.b"], mod.bias)):
            theirs = theirs.detach().numpy().astype(np.float64)
            fan_in = {"h": 300, "c": 12 * 3 * 5, "g": 3 * 3 * 3}[name]
            bound = 1 / np.sqrt(fan_in)
            for v in (ours, theirs):  # (within 6 standard errors of n draws)
                n, std = v.size, bound / np.sqrt(3)
                assert bound * (1 - 10 / n) < np.abs(v).max() <= bound, (name, v.shape)
                assert abs(v.std() - std) < 6 * std * np.sqrt(0.2 / n), (name, v.shape)
                assert abs(v.mean()) < 6 * std / np.sqrt(n), (name, v.shape)
            assert ours.size == theirs.size, name
    assert state["c.W"].shape == (40, 12, 3, 5) and state["g.W"].shape == (40, 3, 3, 3)
    np.testing.assert_array_less(np.abs(state["V"]), 1 / np.sqrt(300))  # a bias under params: names fan_in
    assert np.abs(state["V"]).max() > 0.9 / np.sqrt(300)
    assert not state["k.b"].any()  # the other initialisers keep the zero bias
    again = _torch_init_state()
    for name in ("h.W", "h.b", "c.W", "c.b"):
        np.testing.assert_array_equal(state[name], again[name])
    assert not np.array_equal(state["h.W"], _torch_init_state(seed=1)["h.W"])


_TORCH_RECURRENT_INIT_SPEC = """
flowgrad: 1
name: t
inputs:
  x: {shape: [N, 5, 20]}
graph:
  l: lstm(x, 64, weight_init=torch_uniform)
  g: bidirectional(gru, x, 48, weight_init=torch_uniform)
  r: rnn(x, 32, layers=2, weight_init=torch_uniform)
  k: lstm(x, 16)
loss: mean(l) + mean(g) + mean(r) + mean(k)
"""


def test_torch_uniform_draws_recurrent_weights_and_biases_as_torch_reset_parameters():
    """weight_init=torch_uniform gives lstm's, gru's (bidirectional too) and rnn's W, U and biases
    nn.LSTM's / nn.GRU's / nn.RNN's reset_parameters distribution, U(+-1/sqrt(hidden_size)), as torch's
    own draws of the same layers (within a few standard errors): GRU's b and bu are b_ih and b_hh, an
    LSTM's or RNN's one b is b_ih + b_hh. The default (glorot_uniform W, orthogonal U, zero biases)
    is unchanged; init=torch_uniform (the initial states' keyword) is refused with the hint."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    def state(seed=0):
        return compile_spec(spec_from_text(_TORCH_RECURRENT_INIT_SPEC, "t.yaml"), "float64").initial_state(seed)

    st = state()
    torch.manual_seed(0)
    lstm, gru, rnn = torch.nn.LSTM(20, 64), torch.nn.GRU(20, 48, bidirectional=True), torch.nn.RNN(20, 32, num_layers=2)
    t = lambda p: p.detach().numpy().astype(np.float64)  # noqa: E731
    pairs = [  # (ours, torch's, hidden_size, summed draws)
        (st["l.W"], t(lstm.weight_ih_l0), 64, 1), (st["l.U"], t(lstm.weight_hh_l0), 64, 1),
        (st["l.b"], t(lstm.bias_ih_l0 + lstm.bias_hh_l0), 64, 2),
        (st["r.l2.W"], t(rnn.weight_ih_l1), 32, 1), (st["r.l2.b"], t(rnn.bias_ih_l1 + rnn.bias_hh_l1), 32, 2)]
    for d, sfx in (("fw", ""), ("bw", "_reverse")):
        pairs += [(st[f"g.{d}.W"], t(getattr(gru, "weight_ih_l0" + sfx)), 48, 1),
                  (st[f"g.{d}.U"], t(getattr(gru, "weight_hh_l0" + sfx)), 48, 1),
                  (st[f"g.{d}.b"], t(getattr(gru, "bias_ih_l0" + sfx)), 48, 1),
                  (st[f"g.{d}.bu"], t(getattr(gru, "bias_hh_l0" + sfx)), 48, 1)]
    for ours, theirs, H, k in pairs:
        assert ours.size == theirs.size
        bound = 1 / np.sqrt(H)
        std = bound * np.sqrt(k / 3)
        for v in (ours, theirs):  # (within 6 standard errors of n draws)
            n = v.size
            assert np.abs(v).max() <= k * bound
            assert np.abs(v).max() > (bound * (1 - 10 / n) if k == 1 else bound), (v.shape, H)
            assert abs(v.std() - std) < 6 * std * np.sqrt(0.2 / n), (v.shape, H)
            assert abs(v.mean()) < 6 * std / np.sqrt(n), (v.shape, H)
    assert not st["k.b"].any() and np.abs(st["k.W"]).max() > 1 / np.sqrt(16)  # the default: zeros, glorot
    np.testing.assert_allclose(st["k.U"] @ st["k.U"].T, np.eye(16), atol=1e-12)  # orthogonal U
    again, other = state(), state(seed=1)
    for name in ("l.W", "l.b", "g.bw.bu", "r.l1.U"):
        np.testing.assert_array_equal(st[name], again[name])
        assert not np.array_equal(st[name], other[name])
    from spec.errors import SpecError

    with pytest.raises(SpecError, match="weight_init=torch_uniform"):
        compile_spec(spec_from_text(_TORCH_RECURRENT_INIT_SPEC.replace("64, weight_init", "64, init"), "t.yaml"))


@pytest.mark.parametrize("padding_idx", [0, 3, -1])
def test_embedding_padding_row_starts_at_zeros_as_nn_embedding(padding_idx):
    """embedding(ids, V, E, padding_idx=p) drew its padding row as the others, where nn.Embedding
    starts it at zeros; now it starts at zeros, and every other row (and a table without
    padding_idx) is drawn as before."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    def state(call):
        text = ("flowgrad: 1\nname: t\ninputs:\n  ids: {shape: [N], dtype: int64}\n"
                f"graph:\n  e: {call}\nloss: mean(e)\n")
        return compile_spec(spec_from_text(text, "t.yaml"), "float64").initial_state(0)["e.W"]

    padded, plain = state(f"embedding(ids, 6, 4, padding_idx={padding_idx})"), state("embedding(ids, 6, 4)")
    want = torch.nn.Embedding(6, 4, padding_idx=padding_idx).weight.detach().numpy()
    assert not padded[padding_idx].any() and not want[padding_idx].any()
    rest = [i for i in range(6) if i != padding_idx % 6]
    np.testing.assert_array_equal(padded[rest], plain[rest])
    assert plain[padding_idx].all()


def test_batch_norm_and_layer_norm_layers_without_affine_match_torch():
    """batch_norm(x, affine=false) and layer_norm(x, elementwise_affine=false) were told 'no argument';
    now they make no gamma and beta, as nn.BatchNorm2d(affine=False) and
    nn.LayerNorm(elementwise_affine=False): the loss, its gradient and the running averages match."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    text = """flowgrad: 1
name: t
inputs:
  x: {shape: [N, 3, 4, 5]}
params:
  s: {shape: [3, 1, 1], init: {normal: {mean: 1.0, std: 0.3}}}
graph:
  b: batch_norm(x * s, affine=false, momentum=0.2)
  l: layer_norm(b, axis=-2, elementwise_affine=false)
loss: mean(l * l * l)
"""
    cm = compile_spec(spec_from_text(text, "t.yaml"), "float64", graphs=("grads",))
    assert set(cm.params) == {"s", "b.running_mean", "b.running_var"}
    state = cm.initial_state(0)
    x = np.random.default_rng(8).normal(size=(2, 3, 4, 5)) * 2 + 1
    got = Runner(cm.graphs["grads"].model)({"x": x, **{k: state[k] for k in cm.params}})

    s = torch.tensor(state["s"], requires_grad=True)
    bn, ln = torch.nn.BatchNorm2d(3, affine=False, momentum=0.2).double(), \
        torch.nn.LayerNorm((4, 5), elementwise_affine=False).double()
    assert not list(bn.parameters()) and not list(ln.parameters())
    loss = (ln(bn(torch.tensor(x) * s)) ** 3).mean()
    loss.backward()
    np.testing.assert_allclose(got["loss"], loss.item(), rtol=1e-9)
    np.testing.assert_allclose(got["grad/s"], s.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["next/b.running_mean"], bn.running_mean.numpy(), rtol=1e-9)
    np.testing.assert_allclose(got["next/b.running_var"], bn.running_var.numpy(), rtol=1e-9)
