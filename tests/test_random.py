"""Counter-based randomness: onnxruntime, onnx's reference evaluator and the
NumPy specification agree bit for bit; streams are reproducible from (seed,
step, salt) and look independent; dropout behaves in train and eval mode."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from compiler.check import reference_evaluator

from compiler.emit import emit_model
from compiler.ir import Graph
from compiler.ops.random import bits_to_unit, hash_bits


def _ort(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def build(fn, shape=(4, 8), dtype="float32", mode="train"):
    """Graph with input x of `shape` and outputs fn(g, x) (a Value or a list)."""
    g = Graph(float_dtype=dtype, mode=mode)
    x = g.add_input("x", dtype, shape)
    outs = fn(g, x)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    inputs = [("x", x)] + [(n, gi.value) for n, gi in g.inputs.items() if n != "x"]
    model = emit_model(g, inputs, [(f"y{i}", v) for i, v in enumerate(outs)])
    return g, model


def feeds(x, seed=0, step=0, model=None):
    f = {"x": x, "seed": np.asarray(seed, np.int64), "step": np.asarray(step, np.int64)}
    names = {i.name for i in model.graph.input} if model is not None else set(f)
    return {k: v for k, v in f.items() if k in names}


def run_both(model, fd):
    a = _ort(model).run(None, fd)
    b = reference_evaluator(model).run(None, fd)
    return a, b


def bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def bits_graph(g, x, salt=1):
    seed, step = g.rng_inputs()
    return g.apply("random_bits", seed, step, x, salt=salt)


SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4), (64, 33)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed,step", [(0, 0), (42, 1000), (-7, 3), (2**40 + 1, 2**33 + 5)])
def test_random_bits_bit_exact(shape, seed, step):
    _, model = build(bits_graph, shape)
    fd = feeds(np.zeros(shape, np.float32), seed, step, model)
    a, b = run_both(model, fd)
    want = hash_bits(seed, step, 1, shape)
    assert a[0].dtype == np.uint32
    assert bit_equal(a[0], want), "onnxruntime differs from the NumPy specification"
    assert bit_equal(b[0], want), "onnx.reference differs from the NumPy specification"


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("op", ["uniform", "normal", "bernoulli"])
def test_composites_bit_exact(op, dtype):
    _, model = build(lambda g, x: g.apply(op, x), (5, 37), dtype)
    for seed, step in [(0, 0), (123, 45678)]:
        fd = feeds(np.zeros((5, 37), dtype), seed, step, model)
        a, b = run_both(model, fd)
        assert a[0].dtype == np.dtype(dtype)
        if op == "normal":
            # The bits and uniforms agree exactly, but Log and Cos are not
            # correctly rounded: the runtimes' libraries differ in the last
            # ulps (measured: float32 <= 4e-7, float64 <= 2e-15, float16 <= 8e-3).
            eps = float(np.finfo(dtype).eps)
            np.testing.assert_allclose(a[0], b[0], rtol=8 * eps, atol=8 * eps)
        else:
            assert bit_equal(a[0], b[0]), f"{op} {dtype}: onnxruntime and onnx.reference differ"


def test_uniform_and_bernoulli_match_spec():
    _, model = build(lambda g, x: [g.apply("uniform", x), g.apply("bernoulli", x, p=0.3)], (6, 10))
    fd = feeds(np.zeros((6, 10), np.float32), 9, 4, model)
    u, b = _ort(model).run(None, fd)
    want_u = bits_to_unit(hash_bits(9, 4, 1, (6, 10)), "float32")
    assert bit_equal(u, want_u)
    want_b = (bits_to_unit(hash_bits(9, 4, 2, (6, 10)), "float32") < np.float32(0.3)).astype(np.float32)
    assert bit_equal(b, want_b)
    assert u.min() >= 0.0 and u.max() < 1.0


def test_reproducible_and_distinct():
    _, model = build(lambda g, x: [g.apply("uniform", x), g.apply("uniform", x)], (16, 16))
    sess = _ort(model)
    x = np.zeros((16, 16), np.float32)
    a1, b1 = sess.run(None, feeds(x, 5, 10, model))
    a2, b2 = sess.run(None, feeds(x, 5, 10, model))
    assert bit_equal(a1, a2) and bit_equal(b1, b2), "same (seed, step) must replay the same values"
    assert not np.array_equal(a1, b1), "different salts must give different streams"
    a3, _ = sess.run(None, feeds(x, 5, 11, model))
    a4, _ = sess.run(None, feeds(x, 6, 10, model))
    assert np.mean(a1 == a3) < 0.01, "a different step must give different values"
    assert np.mean(a1 == a4) < 0.01, "a different seed must give different values"


def test_new_graph_same_salts_replays():
    """A resumed run rebuilds the graph: salts are assigned in build order, so masks replay."""
    def net(g, x):
        return g.apply("dropout", g.apply("dropout", x, rate=0.3) * 2.0, rate=0.3)

    x = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    outs = [_ort(build(net, (8, 8))[1]).run(None, feeds(x, 1, 77))[0] for _ in range(2)]
    assert bit_equal(outs[0], outs[1])


N = 100_000


def _corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_uniform_statistics():
    _, model = build(lambda g, x: g.apply("uniform", x), (N,))
    sess = _ort(model)
    x = np.zeros((N,), np.float32)
    u0 = sess.run(None, feeds(x, 3, 0))[0].astype(np.float64)
    u1 = sess.run(None, feeds(x, 3, 1))[0].astype(np.float64)
    assert abs(u0.mean() - 0.5) < 0.005
    assert abs(u0.var() - 1 / 12) < 0.002
    assert abs(_corr(u0[:-1], u0[1:])) < 0.02, "neighbouring elements correlate"
    assert abs(_corr(u0, u1)) < 0.02, "consecutive steps correlate"
    # every tenth of [0, 1) gets its share
    counts = np.bincount((u0 * 10).astype(int), minlength=10)
    assert np.all(np.abs(counts - N / 10) < 5 * np.sqrt(N / 10))


def test_uniform_statistics_across_steps():
    """One element followed over consecutive steps is a uniform, uncorrelated sequence."""
    _, model = build(lambda g, x: g.apply("uniform", x), (4,))
    sess = _ort(model)
    x = np.zeros((4,), np.float32)
    seq = np.array([sess.run(None, feeds(x, 11, s))[0] for s in range(20_000)], dtype=np.float64)
    for k in range(4):
        assert abs(seq[:, k].mean() - 0.5) < 0.01
        assert abs(_corr(seq[:-1, k], seq[1:, k])) < 0.03
    assert abs(_corr(seq[:, 0], seq[:, 1])) < 0.03


def test_normal_statistics():
    _, model = build(lambda g, x: g.apply("normal", x, mean=1.0, std=2.0), (N,))
    z = _ort(model).run(None, feeds(np.zeros((N,), np.float32), 0, 0))[0].astype(np.float64)
    assert np.all(np.isfinite(z))
    assert abs(z.mean() - 1.0) < 0.03
    assert abs(z.std() - 2.0) < 0.03
    s = (z - 1.0) / 2.0
    assert abs(np.mean(s**3)) < 0.05 and abs(np.mean(s**4) - 3.0) < 0.1
    assert abs(_corr(z[:-1], z[1:])) < 0.02


def test_bernoulli_rate():
    _, model = build(lambda g, x: g.apply("bernoulli", x, p=0.25), (N,))
    b = _ort(model).run(None, feeds(np.zeros((N,), np.float32), 2, 2))[0]
    assert set(np.unique(b)) <= {0.0, 1.0}
    assert abs(b.mean() - 0.25) < 0.01


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_train(rate):
    _, model = build(lambda g, x: g.apply("dropout", x, rate=rate), (200, 500))
    x = np.random.default_rng(1).uniform(1, 2, size=(200, 500)).astype(np.float32)
    y = _ort(model).run(None, feeds(x, 0, 3, model))[0]
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 0.01
    np.testing.assert_allclose(y[kept], x[kept] / np.float32(1 - rate), rtol=1e-6)
    y2 = _ort(model).run(None, feeds(x, 0, 4, model))[0]
    assert abs(_corr(kept, y2 != 0)) < 0.02, "masks of consecutive steps correlate"


def test_dropout_entries_sharing_a_hash_are_independent():
    """Entries 2j and 2j + 1 take the two halves of one hash: their masks must not correlate."""
    _, model = build(lambda g, x: g.apply("dropout", x, rate=0.5), (200, 500))
    x = np.ones((200, 500), np.float32)
    kept = (_ort(model).run(None, feeds(x, 7, 2, model))[0] != 0).reshape(-1)
    assert abs(kept.mean() - 0.5) < 0.01
    assert abs(_corr(kept[0::2], kept[1::2])) < 0.02
    assert abs(_corr(kept[1:-1:2], kept[2::2])) < 0.02  # across neighbouring hashes too


@pytest.mark.parametrize("mode", ["eval", "infer"])
def test_dropout_eval_is_identity(mode):
    g, model = build(lambda g, x: g.apply("dropout", x, rate=0.5), (3, 4), mode=mode)
    assert "seed" not in g.inputs, "eval-mode dropout should not need randomness"
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    y = _ort(model).run(None, {"x": x})[0]
    assert bit_equal(y, x)


def test_dropout_rate_edges():
    _, model = build(lambda g, x: [g.apply("dropout", x, rate=0.0), g.apply("dropout", x, rate=1.0)], (3, 4))
    x = np.ones((3, 4), np.float32)
    y0, y1 = _ort(model).run(None, feeds(x, 0, 0, model))
    assert bit_equal(y0, x) and not y1.any()


def test_float16_dropout_at_the_highest_rate_keeps_its_rate_and_finite_scale():
    """rate 65535/65536 keeps 1 entry in 2**16, scaled by 65536, beyond float16's 65504: the mask
    was 0 * inf, NaN at every dropped entry, and the kept ones inf. Now dropped entries are 0
    and kept ones x * 65536, exact while they fit float16 (the product runs in float32)."""
    from compiler.autodiff import grad

    rate = 65535 / 65536
    g = Graph(float_dtype="float16")
    x = g.add_input("x", "float16", (400, 500))
    y = g.apply("dropout", x, rate=rate)
    (gx,) = grad([g.apply("sum", y)], [x])
    seed, step = g.rng_inputs()
    model = emit_model(g, [("x", x), ("seed", seed), ("step", step)], [("y", y), ("gx", gx)])
    xv = np.full((400, 500), 2.0**-10, np.float16)
    yv, gv = _ort(model).run(None, feeds(xv, 0, 3))
    assert np.isfinite(yv).all() and set(np.unique(yv)) <= {0.0, 64.0}
    kept = yv != 0
    assert 0 < kept.sum() < 12  # about 200000 / 65536 = 3 kept
    np.testing.assert_array_equal(gv != 0, kept)
    assert (gv[~kept] == 0).all() and np.isinf(gv[kept]).all()  # 65536 itself: beyond float16
    ref = reference_evaluator(model).run(None, feeds(xv, 0, 3))[0]
    assert bit_equal(ref, yv)


def test_dropout_gradient_is_the_mask():
    from compiler.autodiff import grad

    g = Graph(float_dtype="float32")
    x = g.add_input("x", "float32", (6, 7))
    y = g.apply("dropout", x, rate=0.4)
    (gx,) = grad([g.apply("sum", y)], [x])
    seed, step = g.rng_inputs()
    model = emit_model(g, [("x", x), ("seed", seed), ("step", step)], [("y", y), ("gx", gx)])
    xv = np.random.default_rng(3).uniform(1, 2, size=(6, 7)).astype(np.float32)
    yv, gv = _ort(model).run(None, feeds(xv, 4, 5))
    np.testing.assert_array_equal(gv != 0, yv != 0)
    np.testing.assert_allclose(gv[gv != 0], 1 / 0.6, rtol=1e-6)


@pytest.mark.parametrize("op", ["random_bits", "uniform", "normal", "dropout"])
def test_symbolic_batch(op):
    def fn(g, x):
        if op == "random_bits":
            return bits_graph(g, x)
        return g.apply(op, x)

    _, model = build(fn, ("N", 8))
    onnx.checker.check_model(model, full_check=True)
    outs = {}
    for n in (3, 5):
        x = np.ones((n, 8), np.float32)
        a, b = run_both(model, feeds(x, 7, 9, model))
        assert a[0].shape == (n, 8)
        if op == "normal":
            np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-6)
        else:
            assert bit_equal(a[0], b[0])
        outs[n] = a[0]
    # Elements are numbered row-major: a larger batch extends a smaller one.
    assert bit_equal(outs[5][:3], outs[3])
    if op == "random_bits":
        assert bit_equal(outs[5], hash_bits(7, 9, 1, (5, 8)))


def test_base_key_emitted_once():
    _, model = build(lambda g, x: [g.apply("uniform", x), g.apply("normal", x), g.apply("dropout", x)], (4, 4))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Mod") == 1, "the (seed, step) key should be computed once per model"
    assert not {"RandomUniform", "RandomNormal", "Bernoulli", "BitwiseXor", "BitwiseAnd"} & set(ops)
    assert ops.count("Range") == 4  # one per random_bits node (normal has two)


def test_avalanche():
    """Each index bit flips each output bit with probability close to 1/2."""
    rng = np.random.default_rng(0)
    from compiler.ops.random import _round_np, op_key

    k = op_key(1, 2, 3)
    ROUND = 0x85EBCA6B

    def h(i):
        x = i
        with np.errstate(over="ignore"):
            for r in range(3):
                x = _round_np(x + (k + np.uint32((r * ROUND) % 2**32)))
        return x

    i = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32)
    y = h(i)
    worst = 0.0
    for j in range(32):
        d = y ^ h(i ^ np.uint32(1 << j))
        p = ((d[:, None] >> np.arange(32, dtype=np.uint32)) & 1).mean(0)
        worst = max(worst, float(np.abs(p - 0.5).max()))
    assert worst < 0.025


@pytest.mark.parametrize("divisor_shape", [(), (1,), (1, 1)])
def test_uint32_division_by_a_power_of_two_is_a_shift_that_keeps_broadcasting(divisor_shape):
    """x // 2**k for uint32 x: exact at the ends of the range, and a divisor of higher rank
    than x broadcasts x up as a Div would (it stays a Div)."""
    d = np.full(divisor_shape, 2**16, dtype=np.uint32)
    _, model = build(lambda g, x: g.apply("div", x, g.const(d)), (5,), dtype="uint32")
    x = np.asarray([0, 1, 65535, 65536, 2**32 - 1], np.uint32)
    a, b = run_both(model, {"x": x})
    want = x // d
    assert bit_equal(a[0], want) and bit_equal(b[0], want)


def test_a_sampling_loops_uniform_draws_divide_by_shifts_too():
    """A scan's step keeps the small constants it reads: hoisting its state-free part moved the
    uniform draw's divisor 256 out of char_lstm's sampling loop, where the step read it as an
    input, so the draw's uint32 division was emitted as a Div (slower than the shift, and no
    kernel in onnxruntime 1.18-1.20, which otherwise run the export)."""
    import os

    from compiler.emit import all_graphs
    from compiler.training import compile_spec
    from spec import load_spec

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cm = compile_spec(load_spec(os.path.join(root, "models", "char_lstm.yaml"), ["dims.H=8", "dims.E=4"]))
    model = onnx.shape_inference.infer_shapes(cm.graphs["generate"].model)
    divided = []
    for g in all_graphs(model.graph):
        types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
        divided += [types.get(n.input[0]) for n in g.node if n.op_type == "Div"]
    assert divided and onnx.TensorProto.UINT32 not in divided


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_uniform_never_reaches_high(dtype):  # (float32 reaches it once in 2^24 draws: not seen here)
    """uniform(low=1, high=2) is 1 + u, which rounds up to 2 for u = 1 - 2^-11 in float16 (one
    draw in 2048: 495 of a million were 2 before) and u = 1 - 2^-24 in float32."""
    n = 1 << 16
    _, model = build(lambda g, x: g.apply("uniform", x, low=1.0, high=2.0), (n,), dtype)
    x = np.zeros((n,), dtype)
    for step in range(4):
        a, b = run_both(model, feeds(x, 0, step, model))
        assert bit_equal(a[0], b[0])
        assert a[0].min() >= 1.0 and a[0].max() < 2.0, a[0].max()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_normal_in_a_half_type_is_drawn_in_float32(dtype):
    """From the half type's own 11 (float16) or 8 (bfloat16) random bits, |z| stopped at 3.9
    or 3.3 and the variance was 0.986 in bfloat16; the draw is float32's, then rounded."""
    n = 1 << 17
    _, model = build(lambda g, x: g.apply("normal", x), (n,), dtype)
    x = np.zeros((n,), np.float16 if dtype == "float16" else ml_dtypes.bfloat16)
    got = reference_evaluator(model).run(None, feeds(x, 0, 0, model))[0]
    assert got.dtype == x.dtype
    z = got.astype(np.float64)
    assert np.abs(z).max() > 4.0  # about 8 of 2^17 draws lie beyond 4
    assert abs(z.var() - 1.0) < 0.02
    _, model32 = build(lambda g, x: g.apply("normal", x), (n,), "float32")
    want = reference_evaluator(model32).run(None, feeds(np.zeros((n,), np.float32), 0, 0, model32))[0]
    assert np.array_equal(got, want.astype(x.dtype))  # the float32 draw, rounded


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bernoulli_in_a_half_type_keeps_its_probability(dtype):
    """The draw and the comparison run in float32: from the half type's own 11 or 8 random bits,
    against p rounded to the half type, p = 65535/65536 drew only ones and every p was a
    multiple of 2^-11 (float16) or 2^-8 (bfloat16)."""
    n = 1 << 18
    half = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    x = np.zeros((n,), half)
    for p, tol in ((65535 / 65536, 2e-5), (0.3 + 2.0**-12, 2e-3)):
        _, model = build(lambda g, x: g.apply("bernoulli", x, p=p), (n,), dtype)
        got = reference_evaluator(model).run(None, feeds(x, 0, 1, model))[0]
        assert got.dtype == x.dtype and set(np.unique(got.astype(np.float32))) <= {0.0, 1.0}
        _, model32 = build(lambda g, x: g.apply("bernoulli", x, p=p), (n,), "float32")
        want = reference_evaluator(model32).run(None, feeds(np.zeros((n,), np.float32), 0, 1, model32))[0]
        assert np.array_equal(got, want.astype(half))  # the float32 draw, cast
        assert 0 < n - got.astype(np.float64).sum()  # some zeros even at p = 65535/65536
        assert abs(got.astype(np.float64).mean() - p) < tol


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_masking_noise_in_a_half_type_keeps_its_probability(dtype):
    """masking_noise draws and compares in float32, as bernoulli does: from the half type's own
    11 or 8 random bits against p rounded to it, p = 0.001 masked 0.0015 (float16) or 0.004
    (bfloat16) of the entries in a mixed-precision step."""
    from compiler.registry import get_op

    n = 1 << 18
    half = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    x = np.ones((n,), half)
    for p, tol in ((0.001, 3e-4), (0.3 + 2.0**-12, 2e-3)):
        _, model = build(lambda g, x: g.apply("masking_noise", x, p=p), (n,), dtype)
        got = reference_evaluator(model).run(None, feeds(x, 0, 1, model))[0]
        assert got.dtype == x.dtype
        _, model32 = build(lambda g, x: g.apply("masking_noise", x, p=p), (n,), "float32")
        want = reference_evaluator(model32).run(None, feeds(np.ones((n,), np.float32), 0, 1, model32))[0]
        assert np.array_equal(got, want.astype(half))  # the float32 mask
        assert abs((got.astype(np.float64) == 0).mean() - p) < tol
        ref = get_op("masking_noise").ref({"p": p, "salt": 1}, x, np.int64(0), np.int64(1))
        assert np.array_equal(ref, got)


@pytest.mark.parametrize("op,attrs", [("normal", {"mean": 1e39}), ("normal", {"std": 1e39}),
                                      ("uniform", {"low": -1e39, "high": 0.0}), ("uniform", {"low": 0.0, "high": 1e39}),
                                      ("gaussian_noise", {"sigma": 1e39})])
def test_random_op_settings_beyond_the_float_type_are_refused(op, attrs):
    """normal(x, mean=1e39) in float32 compiled with NumPy's overflow warning and drew inf: the
    settings are numbers of the spec, refused as its other numbers are; float64 holds them."""
    import warnings

    from spec.errors import ShapeError

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ShapeError, match=r"^the number -?1e\+39 is beyond the range of float32"):
            build(lambda g, x: g.apply(op, x, **attrs), (3, 4), "float32")
        build(lambda g, x: g.apply(op, x, **attrs), (3, 4), "float64")


@pytest.mark.parametrize("op,attrs", [("normal", {"mean": 1e5}), ("normal", {"std": 1e5}),
                                      ("gaussian_noise", {"sigma": 1e5}), ("uniform", {"low": -1e5, "high": 0.0})])
def test_random_op_settings_beyond_float16_are_refused_in_a_float16_graph(op, attrs):
    """normal(x, mean=1e5) in a float16 graph draws in float32 and casts: its values were inf without
    a word (the float32 draw holds 1e5). Its settings are refused at their keyword against the type it
    returns, as float32 refuses 1e39; a mixed-precision step saturates them as its other numbers."""
    from spec.errors import ShapeError

    g = Graph(float_dtype="float16")
    with pytest.raises(ShapeError, match=r"^the number -?100000 is beyond the range of float16 \(up to 65504\)") as e:
        g.apply(op, g.add_input("x", "float16", (3, 4)), **attrs)
    assert e.value.arg == next(iter(attrs)) and "--dtype float32" in e.value.hint
    g = Graph(float_dtype="float16", mixed_precision=True)
    g.apply(op, g.add_input("x", "float16", (3, 4)), **attrs)


def test_uniform_bounds_too_far_apart_are_told_as_bounds():
    """uniform(x, low=-3e38, high=3e38) in float32, each bound within the type, was refused as 'the
    number 6e+38 is beyond the range of float32', a number the spec never wrote (high - low)."""
    from spec.errors import ShapeError

    with pytest.raises(ShapeError, match=r"^uniform's bounds low=-3e\+38 and high=3e\+38 are 6e\+38 apart, beyond "
                                         r"the range of float32") as e:
        build(lambda g, x: g.apply("uniform", x, low=-3e38, high=3e38), (3, 4), "float32")
    assert "narrower bounds" in e.value.hint and "--dtype float64" in e.value.hint
    build(lambda g, x: g.apply("uniform", x, low=-3e38, high=3e38), (3, 4), "float64")
    with pytest.raises(ShapeError, match=r"^uniform's bounds low=-40000 and high=40000 are 80000 apart") as e:
        build(lambda g, x: g.apply("uniform", x, low=-4e4, high=4e4), (3, 4), "float16")
    assert "--dtype float32" in e.value.hint  # (float16 had no hint of a wider type)
