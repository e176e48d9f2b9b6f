"""Every registered op, every sample: forward vs the NumPy reference, inferred
shapes vs the runtime and ONNX's strict shape inference, and the symbolic
gradient (and, where declared, the gradient of the gradient) vs central
finite differences in float64. One table drives all of it: the registry."""
from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest

from compiler.autodiff import grad
from compiler.check import Runner, check_gradients, reference_run, sample_grad_inputs, sample_graph, weighted_sum
from compiler.emit import emit_model
from compiler.ir import Graph
from compiler.registry import OpDef, all_ops

OPS = all_ops()


def _cases():
    out = []
    for op in OPS.values():
        rng = np.random.default_rng(zlib.crc32(op.name.encode()))
        for i, s in enumerate(op.samples(rng)):
            out.append(pytest.param(op, s, id=f"{op.name}-{i}"))
    return out


CASES = _cases()


def _grad_inputs(sample):
    return sample_grad_inputs(sample)


def _rng(op, sample_id=0):
    return np.random.default_rng(zlib.crc32(op.name.encode()) + 7 * sample_id)


def _build(op, sample):
    return sample_graph(op, sample)


def _ref_outputs(op, sample, arrays):
    r = op.ref(op.bind_attrs(sample.attrs), *arrays)
    return list(r) if isinstance(r, tuple) else [r]


def _tol(op, key, default):
    return op.tol.get(key, default)


@pytest.mark.parametrize("op,sample", CASES)
def test_forward_and_shapes(op, sample):
    g, ins, outs, arrays = _build(op, sample)
    model = emit_model(g, [(f"in{i}", v) for i, v in enumerate(ins)], [(f"out{k}", v) for k, v in enumerate(outs)])
    feeds = {f"in{i}": a for i, a in enumerate(arrays)}
    runner = Runner(model)
    got = runner(feeds)
    want = _ref_outputs(op, sample, arrays)
    rtol = _tol(op, "forward", 1e-7)
    for k, (v, w) in enumerate(zip(outs, want)):
        y = got[f"out{k}"]
        # A symbolic dim (a data-dependent size such as arange's) matches any runtime size.
        assert len(y.shape) == len(v.shape) and all(
            d == r for d, r in zip(v.shape, y.shape) if isinstance(d, int)), f"inferred {v.shape}, runtime {y.shape}"
        assert y.dtype == np.dtype(v.dtype)
        np.testing.assert_allclose(y, w, rtol=rtol, atol=rtol)
    # The same graph on onnx's reference evaluator gives the same values.
    if runner.backend == "onnxruntime":
        again = reference_run(model, feeds)
        for k in range(len(outs)):
            np.testing.assert_allclose(again[f"out{k}"], got[f"out{k}"], rtol=1e-7, atol=1e-9)
    # Strict ONNX shape inference agrees with ours wherever it knows a dim.
    if op.check_onnx_shapes:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
        for o, v in zip(inferred.graph.output, outs):
            dims = o.type.tensor_type.shape.dim
            assert len(dims) == len(v.shape)
            for d, ours in zip(dims, v.shape):
                if d.HasField("dim_value"):
                    assert d.dim_value == ours


def _weighted_sum_graph(op, sample):
    """loss = sum_k sum(out_k * w_k) with fixed random w_k, and its gradient."""
    g, ins, outs, arrays = _build(op, sample)
    loss, weights = weighted_sum(g, outs, _rng(op))
    return g, ins, loss, arrays, weights


def _numeric_loss(op, sample, weights):
    def f(arrays):
        outs = [o for o in _ref_outputs(op, sample, arrays) if np.asarray(o).dtype.kind == "f"]
        return float(sum(np.sum(o * w) for o, w in zip(outs, weights)))

    return f


GRAD_CASES = [c for c in CASES if not c.values[0].nondiff and not c.values[0].name == "constant" and _grad_inputs(c.values[1])]


@pytest.mark.parametrize("op,sample", GRAD_CASES)
def test_vjp(op, sample):
    g, ins, loss, arrays, weights = _weighted_sum_graph(op, sample)
    which = _grad_inputs(sample)
    grads = grad([loss], [ins[i] for i in which])
    outputs = [(f"g{i}", gv) for i, gv in zip(which, grads) if gv is not None]
    model = emit_model(g, [(f"in{i}", v) for i, v in enumerate(ins)], outputs)
    got = Runner(model)({f"in{i}": a for i, a in enumerate(arrays)})
    sym = [got[f"g{i}"] if f"g{i}" in got else np.zeros_like(arrays[i]) for i in which]

    base = list(arrays)
    f_all = _numeric_loss(op, sample, weights)

    def f(xs):
        full = list(base)
        for i, x in zip(which, xs):
            full[i] = x
        return f_all(full)

    err = check_gradients(f, [arrays[i] for i in which], sym, _rng(op, 1))
    assert err < _tol(op, "vjp", 1e-5), f"relative error {err:.2e}"


GRADGRAD_CASES = [c for c in GRAD_CASES if c.values[0].gradgrad and c.values[1].gradgrad]


@pytest.mark.parametrize("op,sample", GRADGRAD_CASES)
def test_vjp_of_vjp(op, sample):
    """The gradient graph differentiated again matches finite differences of the gradient."""
    g, ins, loss, arrays, weights = _weighted_sum_graph(op, sample)
    which = _grad_inputs(sample)
    xs = [ins[i] for i in which]
    first = grad([loss], xs)
    rng = _rng(op, 2)
    probe = None
    us = []
    for gv, x in zip(first, xs):
        if gv is None:
            us.append(None)
            continue
        u = rng.normal(size=[int(d) for d in x.shape])
        us.append(u)
        term = g.apply("sum", gv * g.const(u))
        probe = term if probe is None else probe + term
    if probe is None:
        pytest.skip("gradient does not depend on the inputs")
    second = grad([probe], xs)
    outputs = [(f"p", probe)] + [(f"h{i}", hv) for i, hv in zip(which, second) if hv is not None]
    model = emit_model(g, [(f"in{i}", v) for i, v in enumerate(ins)], outputs)
    run = Runner(model)
    feeds = {f"in{i}": a for i, a in enumerate(arrays)}
    got = run(feeds)
    sym = [got[f"h{i}"] if f"h{i}" in got else np.zeros_like(arrays[i]) for i in which]

    def f(vals):
        fd = dict(feeds)
        for i, v in zip(which, vals):
            fd[f"in{i}"] = v
        return float(run(fd)["p"])

    err = check_gradients(f, [arrays[i] for i in which], sym, _rng(op, 3))
    assert err < _tol(op, "vjp_vjp", 1e-5), f"relative error {err:.2e}"


def test_registry_complete():
    problems = []
    for name, op in OPS.items():
        if op.ref is None:
            problems.append(f"{name}: no NumPy reference")
        if not op.samples(np.random.default_rng(0)):
            problems.append(f"{name}: no samples")
        if not op.doc:
            problems.append(f"{name}: no doc")
        if op.composite:
            continue
        if not op.nondiff and op.vjp is None:
            problems.append(f"{name}: no gradient rule (set nondiff=True if none exists)")
        if op.onnx is None and type(op).emit is OpDef.emit:
            problems.append(f"{name}: no ONNX emission")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("op, x, want", [
    ("max", [3.0, 3.0, 1.0, 3.0], [1 / 3, 1 / 3, 0.0, 1 / 3]),
    ("min", [-3.0, -3.0, 1.0, -3.0], [1 / 3, 1 / 3, 0.0, 1 / 3]),
    ("max", [1.0, 2.0, 0.0, 2.0], [0.0, 0.5, 0.0, 0.5]),
])
def test_max_and_min_share_the_gradient_among_ties(op, x, want):
    """Tied extremes share the gradient evenly (torch.amax's subgradient): it sums to the
    output's gradient, where giving it whole to each tie counted it once per tie."""
    g = Graph(float_dtype="float64")
    w = g.add_input("w", "float64", (4,))
    (gw,) = grad([g.apply(op, w)], [w])
    got = Runner(emit_model(g, [("w", w)], [("gw", gw)]))({"w": np.asarray(x)})["gw"]
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("op, pick", [("maximum", np.maximum), ("minimum", np.minimum)])
def test_maximum_and_minimum_share_the_gradient_of_a_tie(op, pick):
    """maximum(a, b) gave a tie's whole gradient to a (PyTensor's choice), unlike the max and
    min reductions here and torch.maximum, which share it: maximum(a, b) and maximum(b, a) had
    different gradients, and central differences, which measure the even share at a tie,
    disagreed with both. Ties now share it evenly; away from ties the winner takes it all.
    (b broadcasts: its gradient sums its share over a's rows.)"""
    g = Graph(float_dtype="float64")
    a_in, b_in = g.add_input("a", "float64", (2, 3)), g.add_input("b", "float64", (3,))
    y = g.apply(op, a_in, b_in)
    weights = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    ga, gb = grad([g.apply("sum", y * g.const(weights))], [a_in, b_in])
    run = Runner(emit_model(g, [("a", a_in), ("b", b_in)], [("ga", ga), ("gb", gb)]))
    a = np.array([[1.0, 2.0, -3.0], [0.5, 2.0, 7.0]])
    b = np.array([1.0, 0.0, 7.0])  # ties at a[0, 0], a[1, 2]
    got = run({"a": a, "b": b})
    tie = a == b
    a_wins = pick(a, b + 0.0) == a
    want_a = np.where(tie, 0.5, np.where(a_wins, 1.0, 0.0)) * weights
    want_b = (np.where(tie, 0.5, np.where(a_wins, 0.0, 1.0)) * weights).sum(0)
    np.testing.assert_allclose(got["ga"], want_a)
    np.testing.assert_allclose(got["gb"], want_b)
    # central differences agree, at the ties and away from them
    f = lambda xs: float(np.sum(pick(xs[0], xs[1]) * weights))  # noqa: E731
    assert check_gradients(f, [a, b], [got["ga"], got["gb"]], np.random.default_rng(0), n_coords=6) < 1e-8
    away = a + 0.25  # no ties
    got = run({"a": away, "b": b})
    assert check_gradients(f, [away, b], [got["ga"], got["gb"]], np.random.default_rng(1), n_coords=6) < 1e-8


def test_maxout_shares_the_gradient_among_ties_in_each_group():
    g = Graph(float_dtype="float64")
    w = g.add_input("w", "float64", (1, 4))
    (gw,) = grad([g.apply("sum", g.apply("maxout", w, pieces=2))], [w])
    got = Runner(emit_model(g, [("w", w)], [("gw", gw)]))({"w": np.asarray([[2.0, 2.0, 1.0, 5.0]])})["gw"]
    np.testing.assert_allclose(got, [[0.5, 0.5, 0.0, 1.0]])


def test_check_gradients_fails_on_nan_gradients():
    """A nan symbolic gradient (or a nan loss) is an infinite error: max(worst, nan) kept the
    previous worst, so every gradient check passed whatever nan the gradient held."""
    rng = np.random.default_rng(0)
    x = np.array([1.0, 2.0])
    assert check_gradients(lambda xs: float(np.sum(xs[0] ** 2)), [x], [2 * x], rng) < 1e-6
    assert check_gradients(lambda xs: float(np.sum(xs[0] ** 2)), [x], [np.array([np.nan, 4.0])], rng) == np.inf
    assert check_gradients(lambda xs: float("nan"), [x], [2 * x], rng) == np.inf


def test_squeeze_refuses_repeated_axes():
    """squeeze(x, axes=(1, -2)) of a rank-3 x named axis 1 twice: the forward pass took it,
    and building its gradient failed with "unsqueeze axes (1, 1) repeat"."""
    from spec.errors import ShapeError

    g = Graph(float_dtype="float64")
    x = g.add_input("x", "float64", (2, 1, 3))
    with pytest.raises(ShapeError, match="squeeze axes .* repeat"):
        g.apply("squeeze", x, axes=(1, -2))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_keeps_its_digits(dtype):
    """onnxruntime's Sigmoid computes small values as differences near 1/2 (float32) or 1
    (float64): float32 sigmoid(-8) had 4 correct digits, sigmoid(-17) was twice its value and
    larger than sigmoid(-16), and everything below -18 was 0 (float64: 3 digits at -30, 0 from
    -37 on), and the gradient y * (1 - y) with them. The op is 1 / (1 + e ** -x) now; the
    gates of the built-in LSTM and GRU, which only need its absolute accuracy, keep Sigmoid."""
    x = np.array([-100.0, -80.0, -37.0, -30.0, -20.0, -18.0, -17.0, -16.0, -8.0, -1.0, 0.0, 2.0, 15.0], dtype=dtype)
    x = x[x > {"float32": -87.0, "float64": -700.0}[dtype]]  # (values beyond are below the smallest normal float)
    want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    g = Graph(float_dtype=dtype)
    v = g.add_input("x", dtype, x.shape)
    y = g.apply("sigmoid", v)
    (gv,) = grad([g.apply("sum", y)], [v])
    got = Runner(emit_model(g, [("x", v)], [("y", y), ("g", gv)]))({"x": x})
    rtol = {"float32": 1e-6, "float64": 1e-14}[dtype]
    np.testing.assert_allclose(got["y"], want, rtol=rtol, atol=0)
    neg = x < 0  # (above 0, 1 - y loses digits to the rounding of y, as it does in PyTorch)
    np.testing.assert_allclose(got["g"][neg], (want * (1 - want))[neg], rtol=4 * rtol, atol=0)
    assert np.all(np.diff(got["y"]) > 0)


def test_softplus_gradient_keeps_its_digits_in_float32():
    """softplus'(x) = sigmoid(x): onnxruntime's float32 Sigmoid gave twice the value at x = -17
    and 0 from x = -18 on, so softplus, binary_cross_entropy and log(sigmoid(x)) had wrong or
    zero gradients for confident logits. The gradient is exp(x - softplus(x)) instead."""
    x = np.array([-85.0, -50.0, -20.0, -18.0, -17.0, -16.0, -10.0, -1.0, 0.0, 3.0, 20.0], dtype=np.float32)
    want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    for build in (lambda g, v: g.apply("softplus", v), lambda g, v: -g.apply("log", g.apply("sigmoid", -v)),
                  lambda g, v: g.apply("binary_cross_entropy", v, g.apply("zeros_like", v), reduction="none")):
        g = Graph(float_dtype="float32")
        v = g.add_input("x", "float32", x.shape)
        (gv,) = grad([g.apply("sum", build(g, v))], [v])
        got = Runner(emit_model(g, [("x", v)], [("g", gv)]))({"x": x})["g"]
        np.testing.assert_allclose(got, want, rtol=2e-6)


NARROW_ACTIVATIONS = [("erf", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"}), ("silu", {}), ("elu", {}), ("elu", {"alpha": 0.5}),
                      ("hardtanh", {}), ("softplus", {"beta": 2.0}), ("softplus", {"beta": 0.5, "threshold": 20.0})]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("name, attrs", NARROW_ACTIVATIONS, ids=[f"{n}-{a}" for n, a in NARROW_ACTIVATIONS])
def test_activations_stay_finite_far_out_in_float16_and_float32(name, attrs, dtype):
    """Each activation's value and gradient in a float16 and a float32 graph, far out both ways
    (no e ** x that overflows to inf and meets a 0: silu(-1000) is -0.0, not nan), agree with
    the float64 ones to the type's precision."""
    x = np.array([-1000.0, -100.0, -30.0, -8.0, -2.5, -1.0, -1e-3, 0.0, 1e-3, 1.0, 2.5, 8.0, 30.0, 100.0, 1000.0])
    got = {}
    for dt in (dtype, "float64"):
        g = Graph(float_dtype=dt)
        v = g.add_input("x", dt, x.shape)
        y = g.apply(name, v, **attrs)
        (gv,) = grad([g.apply("sum", y)], [v])
        got[dt] = Runner(emit_model(g, [("x", v)], [("y", y), ("g", gv)]))({"x": x.astype(dt)})
    tol = {"float16": 2e-3, "float32": 1e-6}[dtype]
    for k in ("y", "g"):
        assert got[dtype][k].dtype == np.dtype(dtype) and np.all(np.isfinite(got[dtype][k])), (k, got[dtype][k])
        np.testing.assert_allclose(got[dtype][k], got["float64"][k], rtol=tol, atol=tol, err_msg=k)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_softplus_of_a_large_beta_stays_x_at_the_types_largest_values(dtype):
    """softplus(x, beta=2) divided relu(beta x) by beta, and beta x overflowed to inf near the type's
    largest values (x = 60000 in float16, 3e38 in float32), where the value is x and the gradient 1."""
    top = float(np.finfo(dtype).max)
    x = np.array([-top, -top / 3, -1.0, 0.0, 1.0, top / 3, top], dtype=dtype)
    g = Graph(float_dtype=dtype)
    v = g.add_input("x", dtype, x.shape)
    y = g.apply("softplus", v, beta=2.0)
    (gv,) = grad([g.apply("sum", y)], [v])
    for run in (Runner, reference_run):
        model = emit_model(g, [("x", v)], [("y", y), ("g", gv)])
        got = run(model)({"x": x}) if run is Runner else run(model, {"x": x})
        far = np.abs(x) > 1
        np.testing.assert_array_equal(got["y"][far], np.maximum(x, 0)[far])
        np.testing.assert_array_equal(got["g"][far], (x > 0)[far].astype(dtype))


@pytest.mark.parametrize("name, attrs", [a for a in NARROW_ACTIVATIONS if a[0] != "hardtanh"],
                         ids=[f"{n}-{a}" for n, a in NARROW_ACTIVATIONS if n != "hardtanh"])
def test_activations_gradient_of_gradient_stays_finite_far_out_in_float16(name, attrs):
    """The gradient of each activation's gradient in float16 arithmetic (onnx's reference evaluator;
    onnxruntime's CPU widens float16, as a GPU does not): gelu(approximate='tanh')'s was nan from
    |x| = 256 on, where its t = tanh(K (x + C x ** 3)) read x ** 2 = inf times 1 - t ** 2 = 0."""
    x = np.array([-60000.0, -1000.0, -300.0, -100.0, -8.0, -1.0, 0.0, 1.0, 8.0, 100.0, 300.0, 1000.0, 60000.0])
    g = Graph(float_dtype="float16")
    v = g.add_input("x", "float16", x.shape)
    (gv,) = grad([g.apply("sum", g.apply(name, v, **attrs))], [v])
    (hv,) = grad([g.apply("sum", gv)], [v])
    got = reference_run(emit_model(g, [("x", v)], [("h", hv)]), {"x": x.astype(np.float16)})["h"]
    assert np.all(np.isfinite(got)), dict(zip(x, got))


@pytest.mark.parametrize("op,shape,attrs", [
    ("sum", (10_000_000,), {}),
    ("mean", (10_000_000,), {}),
    ("mean", (4, 2, 1024, 1024), {"axis": (0, 2, 3), "keepdims": True}),  # batch_norm's per-channel mean, N*H*W = 2**22
    ("sum", (4, 2, 1024, 1024), {"axis": (0, 2, 3)}),
    # sum_to: a conv bias's gradient over a large batch of feature maps, [C, 1, 1]
    ("sum_to", (4, 2, 1024, 1024), {"shape": (2, 1, 1)}),
])
def test_float32_sum_and_mean_over_millions_of_values_keep_their_digits(op, shape, attrs):
    """onnxruntime's float32 ReduceSum and ReduceMean accumulate nearly serially: over 10M values
    in [1, 1.1] the sum and mean were 1.8e-3 off, a per-channel mean over [4, 2, 1024, 1024]
    1.8e-5. Where each output takes 2**20 values or more, sum and mean reduce one axis at a
    time (a long axis split in two), within 1e-6 of float64; onnx's checker, strict shape
    inference and its reference evaluator agree with the staged graph."""
    x = (1 + 0.1 * np.random.default_rng(0).random(shape)).astype(np.float32)
    g = Graph(float_dtype="float32")
    v = g.add_input("x", "float32", shape)
    y = g.apply(op, v, **attrs)
    model = emit_model(g, [("x", v)], [("y", y)])
    assert len(model.graph.node) > 1  # staged
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    assert [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == list(y.shape)
    if op == "sum_to":  # (the leading axes go, the others sum to 1)
        lead = x.ndim - len(attrs["shape"])
        axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(attrs["shape"]) if d == 1 and shape[lead + i] != 1)
        want = x.astype(np.float64).sum(axis=axes, keepdims=True).reshape(attrs["shape"])
    else:
        want = getattr(np, op)(x.astype(np.float64), axis=attrs.get("axis"), keepdims=attrs.get("keepdims", False))
    got = Runner(model)({"x": x})["y"]
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(reference_run(model, {"x": x})["y"], want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype,shape,real,attrs,nodes", [
    ("float32", ("n", 2 ** 21), (3, 2 ** 21), {"axis": 1}, ["Reshape", "ReduceSum", "ReduceSum"]),
    ("float32", (2 ** 21, "n"), (2 ** 21, 2), {"axis": 0, "keepdims": True}, ["Reshape", "ReduceSum", "ReduceSum"]),
    ("float32", ("n", 1024, 1024), (2, 1024, 1024), {}, ["ReduceSum"] * 3),
    ("float32", ("n", 1024, 512), (2, 1024, 512), {"axis": (0, 1, 2)}, ["ReduceSum"]),  # 2**19 known values
    ("float32", (1048573,), (1048573,), {}, ["ReduceSum"]),  # a prime length: no split, as it was
    ("float64", (2 ** 21,), (2 ** 21,), {}, ["ReduceSum"]),
    ("float16", (2 ** 20,), (2 ** 20,), {"keepdims": True}, ["Reshape", "ReduceSum", "ReduceSum"]),
])
def test_a_sum_is_staged_only_where_each_output_takes_millions_of_known_values(dtype, shape, real, attrs, nodes):
    """Symbolic dims count as 1; float64 keeps one ReduceSum; the staged graph's values and
    shapes are the sum's."""
    g = Graph(float_dtype=dtype)
    v = g.add_input("x", dtype, shape)
    y = g.apply("sum", v, **attrs)
    model = emit_model(g, [("x", v)], [("y", y)])
    assert [n.op_type for n in model.graph.node] == nodes
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    x = np.random.default_rng(1).random(real).astype(dtype) / (1 if dtype != "float16" else 2 ** 20)
    want = np.sum(x.astype(np.float64), axis=attrs.get("axis"), keepdims=attrs.get("keepdims", False))
    for run in (Runner(model), lambda feeds: reference_run(model, feeds)):
        got = run({"x": x})["y"]
        assert got.shape == want.shape and got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want, rtol={"float16": 2e-3, "float32": 3e-5, "float64": 1e-12}[dtype])
