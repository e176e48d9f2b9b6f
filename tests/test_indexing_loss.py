"""Indexing and loss ops beyond the table-driven tests: symbolic batch dims
(forward and gradient, on onnxruntime and onnx.reference), subscript specs,
repeated-index accumulation, numerical stability and error messages."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.autodiff import grad
from compiler.check import Runner, reference_run
from compiler.emit import emit_model
from compiler.ir import Graph
from spec.errors import FlowgradError, ShapeError


def compile_fn(fn, specs, wrt=(), dtype="float64"):
    """specs: name -> (dtype, shape). fn(g, *inputs) -> Value. Outputs y and, for
    each input name in wrt, the gradient of sum(y * w) with w a graph input."""
    g = Graph(float_dtype=dtype)
    ins = {n: g.add_input(n, dt, shape) for n, (dt, shape) in specs.items()}
    y = fn(g, *ins.values())
    outs = [("y", y)]
    inputs = list(ins.items())
    if wrt:
        w = g.add_input("w", y.dtype, y.shape)
        inputs.append(("w", w))
        gs = grad([g.apply("sum", y * w)], [ins[n] for n in wrt])
        outs += [(f"g_{n}", gv) for n, gv in zip(wrt, gs)]
    return emit_model(g, inputs, outs), y


def run_all(model, feeds):
    got = Runner(model)(feeds)
    again = reference_run(model, feeds)
    for k in got:
        np.testing.assert_allclose(again[k], got[k], rtol=1e-12, atol=1e-12)
    return got


# ------------------------------------------------------------------ subscripts on a symbolic batch
INDEX_CASES = [
    ((0,), lambda a: a[0]),
    ((-1,), lambda a: a[-1]),
    (((-3, None, None),), lambda a: a[-3:]),
    (((1, 3, None),), lambda a: a[1:3]),
    (((None, None, -1),), lambda a: a[::-1]),
    (((None, None, None), (1, 4, 2)), lambda a: a[:, 1:4:2]),
    ((Ellipsis, -1), lambda a: a[..., -1]),
    ((None,), lambda a: a[None]),
    (((-3, -1, None), None, (None, None, -2)), lambda a: a[-3:-1, None, ::-2]),
    ((Ellipsis, None, 2), lambda a: a[..., None, 2]),
    # the first entries, an open start counting from the start (refused, with a hint to do just that)
    (((None, 2, None),), lambda a: a[:2]),
    (((None, 3, 2),), lambda a: a[:3:2]),
    # backwards between bounds on one side of the symbolic dim (refused, with a hint to do just that)
    (((-1, -4, -2),), lambda a: a[-1:-4:-2]),
    (((3, 0, -2),), lambda a: a[3:0:-2]),
    (((None, -3, -1),), lambda a: a[:-3:-1]),
]


@pytest.mark.parametrize("spec,np_fn", INDEX_CASES, ids=[str(c[0]) for c in INDEX_CASES])
def test_index_symbolic_batch(spec, np_fn):
    model, y = compile_fn(lambda g, x: g.apply("index", x, spec=spec), {"x": ("float64", ("N", 5))}, wrt=("x",))
    rng = np.random.default_rng(0)
    for n in (4, 6):
        x = rng.normal(size=(n, 5))
        want = np_fn(x)
        w = rng.normal(size=want.shape)
        got = run_all(model, {"x": x, "w": w})
        np.testing.assert_array_equal(got["y"], want)
        assert len(y.shape) == want.ndim
        gx = np.zeros_like(x)
        np_fn(gx)[...] += w  # the gradient of a view is the scatter of w
        np.testing.assert_allclose(got["g_x"], gx)


# bounds of INT_MAX (2**31 - 1) or beyond read as the end they point past (INT_MAX and sys.maxsize
# for "to the end")
BIG_END_CASES = [
    (((None, None, None), (-2, 2**31 - 1, None)), lambda a: a[:, -2:]),
    (((None, None, None), (0, 2**63 - 1, None)), lambda a: a),
    (((None, None, None), (2**31, None, -1)), lambda a: a[:, ::-1]),
    (((None, None, None), (-(2**31 - 1), 3, None)), lambda a: a[:, :3]),  # (from the start: T >= 3 below)
]


@pytest.mark.parametrize("spec,np_fn", BIG_END_CASES, ids=[str(c[0]) for c in BIG_END_CASES])
def test_slice_big_ends_read_as_the_end_of_a_symbolic_dim(spec, np_fn):
    """x[:, -2:2147483647] on a symbolic T was refused, x[:, 0:2147483647] was [N, 2147483647] (and
    failed in onnxruntime): a bound of INT_MAX or beyond is the end it points past, on every T the
    slice's size holds for (values and gradients on onnxruntime and onnx.reference)."""
    model, y = compile_fn(lambda g, x: g.apply("index", x, spec=spec), {"x": ("float64", ("N", "T"))}, wrt=("x",))
    rng = np.random.default_rng(0)
    for n, t in ((2, 3), (3, 4), (2, 7)):
        x = rng.normal(size=(n, t))
        want = np_fn(x)
        w = rng.normal(size=want.shape)
        got = run_all(model, {"x": x, "w": w})
        np.testing.assert_array_equal(got["y"], want)
        gx = np.zeros_like(x)
        np_fn(gx)[...] += w
        np.testing.assert_allclose(got["g_x"], gx)


def test_slice_to_the_end_of_a_symbolic_dim_from_its_start_is_refused_at_the_slice():
    """slice(e, [1], [2147483647], axes=[1]) on a symbolic T was [N, 2147483646, E]: it compiled, then
    failed in onnxruntime ('invalid expand shape'). It is e[:, 1:], whose size follows T: refused
    as that is, saying that the bound reads as the end. A bound of a million is a bound (a long
    dim may have one): slice(e, [-2], [1000000]) mixes ends and is refused as x[-2:1000000] is."""
    g = Graph()
    x = g.add_input("x", "float32", ("N", "T", 4))
    with pytest.raises(ShapeError, match=r"cannot slice the symbolic dim T with \[-2:1000000\]\n"):
        g.apply("slice", x, starts=(-2,), ends=(1000000,), axes=(1,))
    assert g.apply("slice", x, starts=(1,), ends=(2**31 - 1,), axes=(1,)).shape == ("N", "T-1", 4)  # (x[:, 1:])
    for starts, ends, steps in (((2,), (2**63 - 1,), (2,)), ((-1,), (-(2**31),), (-2,))):
        with pytest.raises(ShapeError, match=r"symbolic dim T .*reads as the end of T") as e:
            g.apply("slice", x, starts=starts, ends=ends, axes=(1,), steps=steps)
        assert "size under dims" in e.value.hint


def test_least_sizes_of_symbolic_slices():
    """The least size of a symbolic dim that each slice's static size holds for (the data is checked
    against it before a run): x[:, -1:-4:-2] has 2 entries where T >= 3, 1 where T is 2."""
    from compiler.training import least_sizes

    g = Graph()
    x = g.add_input("x", "float32", ("N", "T", 4))
    g.apply("index", x, spec=((None, None, None), (-1, -4, -2)))
    assert least_sizes(g) == {"T": {"least": 3, "slice": "[-1:-4:-2]", "at": ""}}
    g.apply("index", x, spec=((None, None, None), (1, 4, 2)))
    g.apply("index", x, spec=((-2, None, None),))  # (the batch: 2 or more rows)
    g.apply("index", x, spec=((None, None, None), (-2, 2**31 - 1, None)))
    assert {k: v["least"] for k, v in least_sizes(g).items()} == {"T": 4, "N": 2}


def test_shifts_of_a_symbolic_dim_combine_and_pad_back_in_their_gradients():
    """x[:, 1:] and x[:, :-1] of a symbolic T were refused ('cannot slice the symbolic dim T with
    [1::1]'), so a language model could not shift its tokens. Their size is T less the entries cut
    off, "T-1" (x[:, 1:-1]: "T-2"), so that the two combine; the gradient pads back to T. Values
    and gradients against NumPy on T = 2..6, and data shorter than a shift needs refused."""
    from compiler.training import least_sizes

    g = Graph(float_dtype="float64")
    x = g.add_input("x", "float64", ("N", "T"))
    w = g.add_input("w", "float64", ("N", "T"))
    ahead = g.apply("index", x, spec=((None, None, None), (1, None, None)))
    behind = g.apply("index", x, spec=((None, None, None), (None, -1, None)))
    inner = g.apply("slice", x, starts=(1,), ends=(-1,), axes=(1,))
    inner2 = g.apply("index", ahead, spec=((None, None, None), (None, -1, None)))  # (T-1 shifted again: T-2)
    assert ahead.shape == behind.shape == ("N", "T-1") and inner.shape == inner2.shape == ("N", "T-2")
    wa = g.apply("index", w, spec=((None, None, None), (1, None, None)))
    loss = g.apply("sum", ahead * behind) + g.apply("sum", inner * inner2) + g.apply("sum", ahead * wa)
    (gx,) = grad([loss], [x])
    assert gx.shape == ("N", "T")
    model = emit_model(g, [("x", x), ("w", w)], [("loss", loss), ("gx", gx), ("ahead", ahead), ("behind", behind), ("inner", inner)])
    onnx.checker.check_model(model, full_check=True)
    runner = Runner(model)
    for t in range(2, 7):
        xv, wv = np.random.default_rng(t).normal(size=(2, 3, t))
        got = runner({"x": xv, "w": wv})
        np.testing.assert_allclose(got["ahead"], xv[:, 1:])
        np.testing.assert_allclose(got["behind"], xv[:, :-1])
        np.testing.assert_allclose(got["inner"], xv[:, 1:-1])
        want = np.zeros_like(xv)
        want[:, :-1] += xv[:, 1:]
        want[:, 1:] += xv[:, :-1] + wv[:, 1:]
        want[:, 1:-1] += 2 * xv[:, 1:-1]
        np.testing.assert_allclose(got["loss"], (xv[:, 1:] * xv[:, :-1]).sum() + (xv[:, 1:-1] ** 2).sum() + (xv[:, 1:] * wv[:, 1:]).sum())
        np.testing.assert_allclose(got["gx"], want)
    assert least_sizes(g)["T"]["least"] == 3  # (x[:, 1:-1] has one entry or more where T >= 3)
    with pytest.raises(ShapeError, match="cannot pad the symbolic dim T"):
        g.apply("pad", x, pads=((0, 0), (1, 0)))
    with pytest.raises(ShapeError, match="cannot pad the symbolic dim T-1"):
        g.apply("pad", ahead, pads=((0, 0), (1, 1)))


def test_index_static_matches_numpy_and_second_order():
    x = np.arange(60.0).reshape(3, 4, 5)
    model, _ = compile_fn(lambda g, x: g.apply("index", x, spec=(1, None, (None, None, -2), Ellipsis, (1, -1, None))),
                          {"x": ("float64", (3, 4, 5))})
    np.testing.assert_array_equal(run_all(model, {"x": x})["y"], x[1, None, ::-2, ..., 1:-1])


def test_slice_symbolic_needs_one_sided_bounds():
    g = Graph()
    x = g.add_input("x", "float32", ("N", 3))
    with pytest.raises(ShapeError, match="symbolic dim N"):
        g.apply("index", x, spec=((1, None, 2),))
    for spec in (((-2, None, -1),), ((None, 1, -1),), ((-1, 2, -1),), ((None, -1, 2),), ((-1, 2, None),)):  # sizes that follow N
        with pytest.raises(ShapeError, match="symbolic dim N"):
            g.apply("index", x, spec=spec)
    with pytest.raises(ShapeError, match="out of range"):
        g.apply("index", x, spec=(Ellipsis, 3))
    with pytest.raises(ShapeError, match="too many indices"):
        g.apply("index", x, spec=(0, 0, 0))


def test_pad_slice_roundtrip_and_errors():
    g = Graph()
    x = g.add_input("x", "float32", ("N", 3))
    y = g.apply("pad", x, pads=((0, 0), (2, 1)), value=1.0)
    assert y.shape == ("N", 6)
    with pytest.raises(ShapeError, match="symbolic"):
        g.apply("pad", x, pads=((1, 0), (0, 0)))
    with pytest.raises(ShapeError, match="negative"):
        g.apply("pad", x, pads=((0, 0), (-1, 0)))


# ------------------------------------------------------------------ gather / scatter
def test_take_embedding_symbolic_with_repeats():
    model, y = compile_fn(lambda g, ids, t: g.apply("embedding", ids, t),
                          {"ids": ("int64", ("N", 3)), "table": ("float64", (5, 4))}, wrt=("table",))
    assert y.shape == ("N", 3, 4)
    rng = np.random.default_rng(1)
    table = rng.normal(size=(5, 4))
    for n in (2, 5):
        ids = rng.integers(0, 3, size=(n, 3))  # many repeats
        w = rng.normal(size=(n, 3, 4))
        got = run_all(model, {"ids": ids, "table": table, "w": w})
        np.testing.assert_allclose(got["y"], table[ids])
        want = np.zeros_like(table)
        np.add.at(want, ids, w)
        np.testing.assert_allclose(got["g_table"], want)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_scatter_add_symbolic_index_shapes(axis):
    """scatter_add with 2-D indices and symbolic dims around them (the runtime-shape path)."""
    shape = [3, 4, 2]
    def fn(g, like, idx, upd):
        return g.apply("scatter_add", like, idx, upd, axis=axis)

    like_shape = tuple("N" if i == 0 and axis != 0 else d for i, d in enumerate(shape))
    idx_shape = ("M", 2)
    upd_shape = tuple(like_shape[:axis]) + idx_shape + tuple(like_shape[axis + 1:])
    model, _ = compile_fn(fn, {"like": ("float64", like_shape), "idx": ("int64", idx_shape),
                               "upd": ("float64", upd_shape)}, wrt=("upd",))
    rng = np.random.default_rng(axis)
    for m in (1, 3):
        like = rng.normal(size=shape)
        idx = rng.integers(-shape[axis], shape[axis], size=(m, 2))
        upd = rng.normal(size=tuple(shape[:axis]) + (m, 2) + tuple(shape[axis + 1:]))
        out_w = rng.normal(size=shape)
        got = run_all(model, {"like": like, "idx": idx, "upd": upd, "w": out_w})
        want = np.zeros(shape)
        moved = np.moveaxis(want, axis, 0)
        np.add.at(moved, idx.reshape(-1), np.moveaxis(upd.reshape(upd.shape[:axis] + (-1,) + upd.shape[axis + 2:]), axis, 0))
        np.testing.assert_allclose(got["y"], want)
        np.testing.assert_allclose(got["g_upd"], np.take(out_w, idx, axis=axis))


@pytest.mark.parametrize("rows", [97, 2000])
def test_scatter_add_of_many_repeated_rows_on_several_threads(rows):
    """An embedding's gradient at a real size (2048 ids, rows of 256), run by onnxruntime on
    four threads: every repeated row's updates add up (onnxruntime's ScatterND with
    reduction="add" adds slices in parallel and lost some; the emitted forms must not)."""
    from runtime.session import make_session

    model, _ = compile_fn(lambda g, like, idx, upd: g.apply("scatter_add", like, idx, upd, axis=0),
                          {"like": ("float32", (rows, 256)), "idx": ("int64", (32, 64)),
                           "upd": ("float32", (32, 64, 256))}, dtype="float32")
    rng = np.random.default_rng(rows)
    feeds = {"like": np.zeros((rows, 256), np.float32), "idx": rng.integers(0, 97, size=(32, 64)),
             "upd": rng.normal(size=(32, 64, 256)).astype(np.float32)}
    want = np.zeros((rows, 256))
    np.add.at(want, feeds["idx"].reshape(-1), feeds["upd"].reshape(-1, 256))
    session = make_session(model, threads=4)
    for _ in range(3):
        np.testing.assert_allclose(session.run(None, feeds)[0], want, rtol=1e-4, atol=1e-4)


def test_take_along_axis_repeats_accumulate():
    model, _ = compile_fn(lambda g, x, i: g.apply("take_along_axis", x, i, axis=1),
                          {"x": ("float64", ("N", 3)), "i": ("int64", ("N", 4))}, wrt=("x",))
    x = np.arange(6.0).reshape(2, 3)
    i = np.array([[0, 0, 0, 2], [1, -1, 1, 1]])
    w = np.ones((2, 4))
    got = run_all(model, {"x": x, "i": i, "w": w})
    np.testing.assert_array_equal(got["y"], np.take_along_axis(x, i, 1))
    np.testing.assert_array_equal(got["g_x"], [[3, 0, 1], [0, 3, 1]])


def test_concat_split_symbolic():
    def fn(g, a, b):
        c = g.apply("concat", a, b, axis=0)
        assert c.shape == ("2*N", 3)
        p, q = g.apply("split", c, sections=2, axis=0)
        return g.apply("concat", q * 2.0, p, axis=1)

    model, y = compile_fn(fn, {"a": ("float64", ("N", 3)), "b": ("float64", ("N", 3))}, wrt=("a", "b"))
    assert y.shape == ("N", 6)
    rng = np.random.default_rng(2)
    for n in (1, 4):
        a, b, w = rng.normal(size=(n, 3)), rng.normal(size=(n, 3)), rng.normal(size=(n, 6))
        got = run_all(model, {"a": a, "b": b, "w": w})
        np.testing.assert_allclose(got["y"], np.concatenate([2 * b, a], axis=1))
        np.testing.assert_allclose(got["g_a"], w[:, 3:])
        np.testing.assert_allclose(got["g_b"], 2 * w[:, :3])


def test_concat_errors():
    g = Graph()
    a = g.add_input("a", "float32", ("N", 3))
    b = g.add_input("b", "float32", ("M", 3))
    with pytest.raises(ShapeError, match="symbolic sizes"):
        g.apply("concat", a, b, axis=0)
    with pytest.raises(ShapeError, match="along axis 1"):
        g.apply("concat", a, b, axis=1)
    with pytest.raises(ShapeError, match="equal parts"):
        g.apply("split", g.add_input("c", "float32", (5,)), sections=2)


def test_one_hot_runs_on_onnxruntime_float32():
    g = Graph(float_dtype="float32")
    ids = g.add_input("ids", "int64", ("N",))
    y = g.apply("one_hot", ids, depth=4)
    assert y.dtype == "float32" and y.shape == ("N", 4)
    run = Runner(emit_model(g, [("ids", ids)], [("y", y)]))
    assert run.backend == "onnxruntime"
    np.testing.assert_array_equal(run({"ids": np.array([3, 0, 7, -1])})["y"],
                                  [[0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


# ------------------------------------------------------------------ losses
def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_symbolic_batch_and_gradient(dtype):
    g = Graph(float_dtype=dtype)
    z = g.add_input("z", dtype, ("N", 5))
    t = g.add_input("t", "int64", ("N",))
    loss = g.apply("cross_entropy", z, t)
    assert loss.shape == ()
    (gz,) = grad([loss], [z])
    run = Runner(emit_model(g, [("z", z), ("t", t)], [("loss", loss), ("gz", gz)]))
    assert run.backend == "onnxruntime"
    rng = np.random.default_rng(3)
    for n in (2, 7):
        zv = (rng.normal(size=(n, 5)) * 30).astype(dtype)  # large logits: must stay finite and exact
        tv = rng.integers(0, 5, size=n)
        got = run({"z": zv, "t": tv})
        zz = zv.astype(np.float64)
        lp = zz - zz.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(got["loss"], -lp[np.arange(n), tv].mean(), rtol=tol)
        np.testing.assert_allclose(got["gz"], (_np_softmax(zz) - np.eye(5)[tv]) / n, rtol=tol, atol=tol)


def test_cross_entropy_of_confident_logits_on_the_reference_evaluator():
    """Logits ±100 in float32: onnx.reference's LogSoftmax took the log of its softmax, whose
    smallest probabilities underflow to 0, so the loss was inf there where onnxruntime gives
    200; compiler.check's reference evaluator computes it stably, as onnxruntime does."""
    g = Graph(float_dtype="float32")
    z = g.add_input("z", "float32", ("N", 3))
    t = g.add_input("t", "int64", ("N",))
    loss = g.apply("cross_entropy", z, t, reduction="none")
    (gz,) = grad([g.apply("sum", loss)], [z])
    model = emit_model(g, [("z", z), ("t", t)], [("loss", loss), ("gz", gz)])
    feeds = {"z": np.array([[-100, 100, 0], [60, -60, 0]], np.float32), "t": np.array([0, 1])}
    got = run_all(model, feeds)
    np.testing.assert_allclose(got["loss"], [200, 120], rtol=1e-6)
    np.testing.assert_allclose(got["gz"], [[-1, 1, 0], [1, -1, 0]], atol=1e-6)


def test_cross_entropy_soft_labels_match_hard():
    g = Graph(float_dtype="float64")
    z = g.add_input("z", "float64", (4, 3))
    t = g.add_input("t", "int64", (4,))
    hard = g.apply("cross_entropy", z, t, reduction="none")
    soft = g.apply("cross_entropy", z, g.apply("one_hot", t, depth=3), reduction="none")
    got = Runner(emit_model(g, [("z", z), ("t", t)], [("h", hard), ("s", soft)]))(
        {"z": np.random.default_rng(4).normal(size=(4, 3)), "t": np.array([0, 2, 1, 2])})
    np.testing.assert_allclose(got["h"], got["s"], rtol=1e-12)


def test_cross_entropy_reduction_errors():
    g = Graph()
    z = g.add_input("z", "float32", (4, 3))
    t = g.add_input("t", "int64", (4,))
    with pytest.raises(FlowgradError, match="reduction"):
        g.apply("cross_entropy", z, t, reduction="avg")
    with pytest.raises(ShapeError):
        g.apply("cross_entropy", z, g.add_input("t2", "int64", (3,)))


def test_binary_cross_entropy_is_stable():
    g = Graph(float_dtype="float32")
    z = g.add_input("z", "float32", (6,))
    t = g.add_input("t", "float32", (6,))
    loss = g.apply("binary_cross_entropy", z, t, reduction="none")
    (gz,) = grad([g.apply("sum", loss)], [z])
    got = Runner(emit_model(g, [("z", z), ("t", t)], [("l", loss), ("g", gz)]))(
        {"z": np.array([-200, -30, 0, 0.5, 30, 200], np.float32), "t": np.array([0, 1, 0.5, 1, 0, 1], np.float32)})
    assert np.all(np.isfinite(got["l"])) and np.all(np.isfinite(got["g"]))
    zz = np.array([-200, -30, 0, 0.5, 30, 200.0])
    tt = np.array([0, 1, 0.5, 1, 0, 1.0])
    np.testing.assert_allclose(got["l"], np.maximum(zz, 0) - zz * tt + np.log1p(np.exp(-np.abs(zz))), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(got["g"], 1 / (1 + np.exp(-zz)) - tt, atol=1e-6)


def test_weight_penalties():
    g = Graph(float_dtype="float64")
    w1 = g.add_input("w1", "float64", (3, 4))
    w2 = g.add_input("w2", "float64", (4,))
    reg = 1e-4 * g.apply("l2", w1, w2) + g.apply("l1", w1, w2)
    g1, g2 = grad([reg], [w1, w2])
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=4)
    got = Runner(emit_model(g, [("w1", w1), ("w2", w2)], [("r", reg), ("g1", g1), ("g2", g2)]))({"w1": a, "w2": b})
    np.testing.assert_allclose(got["r"], 1e-4 * ((a**2).sum() + (b**2).sum()) + np.abs(a).sum() + np.abs(b).sum())
    np.testing.assert_allclose(got["g1"], 2e-4 * a + np.sign(a))
    np.testing.assert_allclose(got["g2"], 2e-4 * b + np.sign(b))


# ------------------------------------------------------------------ probabilities where logits go
_CLASSIFIER = """
flowgrad: 1
name: probs
dims: {D: 8, K: 3}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
  t: {shape: [N, D]}
graph:
  ENTRY
loss: LOSS
"""


@pytest.mark.parametrize("entry, loss", [
    ("p: dense(x, K, act=softmax)", "cross_entropy(p, y)"),
    ("p: softmax(dense(x, K))", "cross_entropy(transpose(transpose(p)), y)"),
    ("p: sigmoid(dense(x, K))", "cross_entropy(p, y)"),
    ("p: sigmoid(dense(x, D))", "binary_cross_entropy(p, t)"),
    ("p: dense(x, D, act=softmax)", "binary_cross_entropy(cast(p, 'float32'), t)"),
])
def test_losses_that_take_logits_refuse_probabilities(entry, loss):
    """Softmax (or sigmoid) outputs given to a loss that applies its own were squashed twice and trained badly
    without a word; an earlier entry's softmax and a layer's act=softmax are found through moves and casts."""
    from compiler.training import check_spec
    from spec.loader import spec_from_text

    spec = spec_from_text(_CLASSIFIER.replace("ENTRY", entry).replace("LOSS", loss))
    with pytest.raises(FlowgradError, match=r"these logits are the output of (softmax|sigmoid)") as info:
        check_spec(spec)
    assert "takes logits: leave out the" in info.value.hint


@pytest.mark.parametrize("entry, loss", [
    ("p: dense(x, K, act=softmax)", "nll(p, y)"),
    ("p: softmax(dense(x, K))", "nll(transpose(transpose(p)), y)"),
    ("p: sigmoid(dense(x, K))", "nll(cast(p, 'float32'), y)"),
])
def test_nll_refuses_probabilities(entry, loss):
    """nll takes log-probabilities: a softmax's (or sigmoid's) output was read as log-probabilities, a loss
    whose minimum puts no weight on the labels, accepted without a word."""
    from compiler.training import check_spec
    from spec.loader import spec_from_text

    spec = spec_from_text(_CLASSIFIER.replace("ENTRY", entry).replace("LOSS", loss))
    with pytest.raises(FlowgradError, match=r"these log-probabilities are the output of (softmax|sigmoid)") as info:
        check_spec(spec)
    assert "nll takes log-probabilities: write log" in info.value.hint


@pytest.mark.parametrize("entry, loss", [
    ("p: log_softmax(dense(x, K))", "cross_entropy(p, y)"),          # log-probabilities are logits: the same loss
    ("p: log(softmax(dense(x, K)))", "cross_entropy(p, y)"),
    ("p: softmax(dense(x, K))", "mean(-sum(one_hot(y, depth=K) * log(p), axis=-1))"),  # probabilities, on purpose
    ("p: softmax(dense(x, K))", "nll(log(p), y)"),
    ("p: log_softmax(dense(x, K))", "nll(p, y)"),
    ("r: dense(x, D)\n  p: sigmoid(r)", "binary_cross_entropy(r, p)"),       # a sigmoid as the targets
    ("p: sigmoid(dense(x, D))", "mse(p, t) + binary_cross_entropy(dense(p, D), t)"),  # a layer over probabilities
])
def test_losses_that_take_logits_accept_what_is_not_squashed_twice(entry, loss):
    from compiler.training import check_spec
    from spec.loader import spec_from_text

    check_spec(spec_from_text(_CLASSIFIER.replace("ENTRY", entry).replace("LOSS", loss)))
