"""Graph rewrites: they keep every model's numerics and shrink its graphs;
unit checks of each rewrite on small hand-built IR graphs; and the
numerical stabilisation of log(softmax), log(sigmoid) and log(1 - sigmoid)."""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
import yaml

from compiler.autodiff import grad
from compiler.check import Runner
from compiler.emit import emit_model
from compiler.gradcheck import random_batch
from compiler.ir import Graph, producers_of
from compiler.rewrites import (LOOKUP_FOLD_MAX_ROWS, WEIGHTS_FIRST_MIN_ENTRIES, const_value, fold_lookup_products,
                               merge_random_draws, optimize, pool_before_activation, weights_first_in_loops)
from compiler.training import compile_spec
from spec import load_spec, spec_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(glob.glob(os.path.join(ROOT, "models", "*.yaml")))
IDS = [os.path.splitext(os.path.basename(m))[0] for m in MODELS]


from test_models import shrunk  # noqa: E402  (the same shrinking as the whole-model tests)


# ------------------------------------------------------------------ whole models
@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_rewrites_keep_model_numerics_and_shrink_graphs(path):
    spec = shrunk(path)
    opt = compile_spec(spec, graphs=("train", "eval", "infer"), optimize_graph=True)
    raw = compile_spec(spec, graphs=("train", "eval", "infer"), optimize_graph=False)
    kinds = tuple(raw.graphs)  # train, or train_<objective> for each of several objectives
    assert set(opt.graphs) == set(raw.graphs)
    assert {"eval", "infer"} <= set(kinds) and any(k.split("_")[0] == "train" for k in kinds)
    rng = np.random.default_rng(0)
    state = opt.initial_state(0)
    for name in state:  # optimizer state as mid-training: non-zero, second moments positive
        if "/" in name:
            state[name] = np.abs(rng.normal(scale=0.1, size=state[name].shape)).astype(np.float32)
    data = random_batch(spec, list(spec.inputs), rng, "float32")
    control = {"lr": np.float32(0.01), "step": np.int64(3), "seed": np.int64(11)}
    for kind in kinds:
        go, gr = opt.graphs[kind], raw.graphs[kind]
        assert [(o.name, o.dtype) for o in go.outputs] == [(o.name, o.dtype) for o in gr.outputs]
        assert go.node_count < gr.node_count, f"{kind}: {go.node_count} nodes optimized, {gr.node_count} not"
        feeds = {}
        for i in gr.inputs:
            src = state if i.name in state else data if i.role == "input" else control
            feeds[i.name] = np.asarray(src[i.name], dtype=i.dtype)
        # the optimized graph needs no input the plain one does not
        assert {i.name for i in go.inputs} <= set(feeds)
        out_o = Runner(go.model)({i.name: feeds[i.name] for i in go.inputs})
        out_r = Runner(gr.model)(feeds)
        assert set(out_o) == set(out_r)
        for k, v in out_r.items():
            assert np.all(np.isfinite(v)) if v.dtype.kind == "f" else True
            if v.dtype.kind == "f":
                np.testing.assert_allclose(out_o[k], v, rtol=1e-5, atol=1e-7, err_msg=f"{kind}:{k}")
            else:
                np.testing.assert_array_equal(out_o[k], v, err_msg=f"{kind}:{k}")


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_fused_update_reads_its_state_alike_in_train_and_apply(path):
    """A training step is the update of its gradients: the train graph and the grads graph
    followed by the apply graph (--accumulate) give the same parameters and optimizer state
    from the same state. A fused update keeps one flat vector per kind of optimizer state
    (Adam's m, v) over the concatenated parameters; the apply graph concatenated them in the
    order the spec check met them, the train graph in the order its own lowering did (for
    dates_attention, a decoder's embedding before the encoder), so each read the other's
    moments as those of other parameters."""
    spec = shrunk(path)
    cm = compile_spec(spec, graphs=("train", "grads", "apply"))
    rng = np.random.default_rng(0)
    state = cm.initial_state(0)
    for name in state:  # optimizer state as mid-training: each entry its own
        if "/" in name:
            state[name] = np.abs(rng.normal(scale=0.1, size=state[name].shape)).astype(np.float32)
    feeds = {**state, **random_batch(spec, list(spec.inputs), rng, "float32"),
             "lr": np.float32(0.01), "step": np.int64(3), "seed": np.int64(11)}
    for obj in cm.objectives:
        suffix = "" if obj.name == "main" else f"_{obj.name}"
        train, grads, apply = (cm.graphs[k + suffix] for k in ("train", "grads", "apply"))
        stepped = Runner(train.model)({i.name: np.asarray(feeds[i.name], i.dtype) for i in train.inputs})
        g = Runner(grads.model)({i.name: np.asarray(feeds[i.name], i.dtype) for i in grads.inputs})
        applied = Runner(apply.model)({i.name: np.asarray({**feeds, **g}[i.name], i.dtype) for i in apply.inputs})
        assert set(applied) <= set(stepped)
        for k, v in applied.items():
            np.testing.assert_allclose(v, stepped[k], rtol=1e-5, atol=1e-7, err_msg=f"{obj.name}:{k}")


# ------------------------------------------------------------------ hand-built graphs
def run_graph(g: Graph, outputs: dict, feeds: dict) -> dict:
    """Emit the graph for `outputs` (inputs: every graph input it needs) and run it."""
    needed = {v.id for n in producers_of(outputs.values()) for v in n.inputs} | {v.id for v in outputs.values()}
    ins = [(name, gi.value) for name, gi in g.inputs.items() if gi.value.id in needed]
    model = emit_model(g, ins, list(outputs.items()))
    return Runner(model)({n: feeds[n] for n, _ in ins})


def emitted(g: Graph, outputs: dict):
    needed = {v.id for n in producers_of(outputs.values()) for v in n.inputs} | {v.id for v in outputs.values()}
    ins = [(name, gi.value) for name, gi in g.inputs.items() if gi.value.id in needed]
    return emit_model(g, ins, list(outputs.items()))


def ops_of(values) -> list[str]:
    return [n.op.name for n in producers_of(values)]


def test_cse_merges_duplicate_subexpressions():
    g = Graph("float64")
    x = g.add_input("x", "float64", (3, 4))
    y = g.add_input("y", "float64", (3, 4))
    a = g.apply("exp", x * y)
    b = g.apply("exp", x * y)
    out = a + b
    assert ops_of([out]) == ["mul", "exp", "mul", "exp", "add"]
    (opt,) = optimize([out])
    assert sorted(ops_of([opt])) == ["add", "exp", "mul"]
    add = opt.producer
    assert add.inputs[0] is add.inputs[1]
    rng = np.random.default_rng(0)
    fx, fy = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    got = run_graph(g, {"out": opt}, {"x": fx, "y": fy})["out"]
    np.testing.assert_allclose(got, 2 * np.exp(fx * fy), rtol=1e-12)


def test_cse_keeps_nodes_that_differ_in_attributes_or_randomness():
    g = Graph("float32", mode="train")
    x = g.add_input("x", "float32", (3, 4))
    a = g.apply("leaky_relu", x, alpha=0.1)
    b = g.apply("leaky_relu", x, alpha=0.2)
    s0 = g.apply("sum", x, axis=0)
    s1 = g.apply("sum", x, axis=(0,), keepdims=True)
    d1 = g.apply("dropout", x, rate=0.5)
    d2 = g.apply("dropout", x, rate=0.5)
    outs = optimize([a - b, s0, s1, d1 - d2])
    names = ops_of(outs)
    assert names.count("leaky_relu") == 2
    assert names.count("sum") == 2
    assert names.count("random_bits") == 2, "two dropouts must draw two masks"
    fx = np.random.default_rng(1).uniform(1, 2, (3, 4)).astype(np.float32)
    res = run_graph(g, dict(zip(["lr", "s0", "s1", "dd"], outs)), {"x": fx, "seed": np.asarray(3, np.int64), "step": np.asarray(0, np.int64)})
    np.testing.assert_allclose(res["lr"], np.zeros((3, 4)), atol=0)  # x > 0: both are x
    assert np.any(res["dd"] != 0)


def test_constant_folding_makes_one_constant():
    g = Graph("float64")
    x = g.add_input("x", "float64", (3,))
    c = g.apply("exp", g.const(np.zeros(3)) * g.const(2.0)) * (g.const(3.0) + g.const(4.0))  # = 7, as [3]
    out = x * c
    assert len(producers_of([out])) > 2
    (opt,) = optimize([out])
    nodes = producers_of([opt])
    assert [n.op.name for n in nodes] == ["constant", "mul"]
    folded = const_value(nodes[0].outputs[0])
    assert folded.dtype == np.float64
    np.testing.assert_array_equal(folded, np.full(3, 7.0))
    got = run_graph(g, {"out": opt}, {"x": np.arange(3.0)})["out"]
    np.testing.assert_array_equal(got, 7 * np.arange(3.0))


def test_constant_folding_keeps_the_dtype():
    g = Graph("float32")
    x = g.add_input("x", "float32", (2,))
    c = g.apply("sqrt", g.const(np.asarray([4.0, 9.0], dtype=np.float32)))
    (opt,) = optimize([x + c])
    consts = [n for n in producers_of([opt]) if n.op.name == "constant"]
    assert len(consts) == 1 and const_value(consts[0].outputs[0]).dtype == np.float32
    assert opt.dtype == "float32"



def test_constant_folding_agrees_with_the_emitted_leaky_relu_in_float64():
    """ONNX's LeakyRelu takes alpha as a float32 attribute: in a float64 graph alpha=0.2 acted
    as 0.20000000298, so folding a constant (NumPy, 0.2) changed results by 1e-9 and the
    forward disagreed with its own gradient (g * 0.2)."""
    g = Graph("float64")
    x = g.add_input("x", "float64", (4,))
    c = g.apply("leaky_relu", g.const(np.asarray([-1.0, 2.0, -3.0, 0.0])), alpha=0.2)
    outs = {"y": g.apply("leaky_relu", x, alpha=0.2), "z": x * c}
    (folded,) = optimize([outs["z"]])
    assert ops_of([folded]) == ["constant", "mul"]
    fx = np.asarray([-1.0, 2.0, -3.0, 0.0])
    got = run_graph(g, {**outs, "folded": folded}, {"x": fx})
    np.testing.assert_array_equal(got["y"], np.where(fx > 0, fx, 0.2 * fx))
    np.testing.assert_array_equal(got["z"], got["folded"])

IDENTITIES = {
    "x*1": lambda g, x: x * 1.0,
    "1*x": lambda g, x: 1.0 * x,
    "x+0": lambda g, x: x + 0.0,
    "0+x": lambda g, x: 0.0 + x,
    "x-0": lambda g, x: x - 0.0,
    "x/1": lambda g, x: x / 1.0,
    "neg(neg(x))": lambda g, x: -(-x),
    "transpose(transpose(x))": lambda g, x: g.apply("transpose", g.apply("transpose", x)),
    "transpose3d_inverse": lambda g, x3: g.apply("transpose", g.apply("transpose", x3, perm=(1, 2, 0)), perm=(2, 0, 1)),
    "cast_same": lambda g, x: g.apply("cast", x, to="float32"),
    "chain": lambda g, x: -(-(g.apply("transpose", g.apply("transpose", x * 1.0 + 0.0)))),
}


@pytest.mark.parametrize("name", list(IDENTITIES))
def test_identities_vanish(name):
    g = Graph("float32")
    shape = (2, 3, 4) if "3d" in name else (2, 3)
    x = g.add_input("x", "float32", shape)
    y = IDENTITIES[name](g, x)
    assert y is not x and y.shape == x.shape
    out = g.apply("exp", y)
    (opt,) = optimize([out])
    nodes = producers_of([opt])
    assert [n.op.name for n in nodes] == ["exp"], [n.op.name for n in nodes]
    assert nodes[0].inputs[0] is x
    model = emitted(g, {"out": opt})
    assert [n.op_type for n in model.graph.node] == ["Exp"]
    assert not model.graph.initializer


NOT_IDENTITIES = {
    # the type would change: x [3] * ones [2, 3] broadcasts
    "x*ones_broadcast": lambda g, x: x * g.const(np.ones((2, 3), dtype=np.float32)),
    "x*2": lambda g, x: x * 2.0,
    "x+1": lambda g, x: x + 1.0,
    "0-x": lambda g, x: 0.0 - x,
    "1/x": lambda g, x: 1.0 / x,
    "neg": lambda g, x: -x,
}


@pytest.mark.parametrize("name", list(NOT_IDENTITIES))
def test_non_identities_stay(name):
    g = Graph("float32")
    x = g.add_input("x", "float32", (3,))
    y = NOT_IDENTITIES[name](g, x)
    (opt,) = optimize([y])
    assert len(producers_of([opt])) >= 1 and opt is not x
    fx = np.asarray([0.5, 1.5, -2.0], dtype=np.float32)
    got = run_graph(g, {"y": opt}, {"x": fx})["y"]
    want = {"x*ones_broadcast": np.broadcast_to(fx, (2, 3)), "x*2": fx * 2, "x+1": fx + 1, "0-x": -fx,
            "1/x": 1 / fx, "neg": -fx}[name]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_non_inverse_transposes_stay():
    g = Graph("float32")
    x = g.add_input("x", "float32", (2, 3, 4))
    y = g.apply("transpose", g.apply("transpose", x, perm=(1, 2, 0)), perm=(1, 2, 0))
    (opt,) = optimize([y])
    assert opt is not x and opt.shape == (4, 2, 3)
    fx = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    got = run_graph(g, {"y": opt}, {"x": fx})["y"]
    np.testing.assert_array_equal(got, fx.transpose(1, 2, 0).transpose(1, 2, 0))


def _gemm_nodes(model):
    return [n for n in model.graph.node if n.op_type == "Gemm"]


def _attr(node, name):
    return next((a.i for a in node.attribute if a.name == name), 0)


def test_matmul_by_a_vector_is_emitted_with_a_matrix():
    """onnxruntime multiplies by a 1-D vector ~17x slower than by a one-column matrix:
    the emitted MatMul never sees a rank-1 operand, and the result is the same."""
    import onnx

    g = Graph("float64")
    x = g.add_input("x", "float64", ("N", 5, 4))
    v = g.add_input("v", "float64", (4,))
    model = emitted(g, {"out": x @ v})
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    (mm,) = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert [ranks[i] for i in mm.input] == [3, 2]
    f = {"x": np.random.default_rng(0).normal(size=(2, 5, 4)), "v": np.arange(4.0)}
    np.testing.assert_allclose(run_graph(g, {"out": x @ v}, f)["out"], f["x"] @ f["v"], rtol=1e-12)


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_becomes_gemm(bias_first):
    g = Graph("float32")
    x = g.add_input("x", "float32", ("N", 3))
    W = g.add_input("W", "float32", (3, 2))
    b = g.add_input("b", "float32", (2,))
    out = (b + x @ W) if bias_first else (x @ W + b)
    (opt,) = optimize([out])
    assert ops_of([opt]) == ["gemm"]
    model = emitted(g, {"out": opt})
    assert [n.op_type for n in model.graph.node] == ["Gemm"]
    rng = np.random.default_rng(0)
    f = {"x": rng.normal(size=(5, 3)).astype(np.float32), "W": rng.normal(size=(3, 2)).astype(np.float32),
         "b": rng.normal(size=(2,)).astype(np.float32)}
    got = run_graph(g, {"out": opt}, f)["out"]
    np.testing.assert_allclose(got, f["x"] @ f["W"] + f["b"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cshape", [(), (1,), (4, 1), (1, 2), (4, 2)])
def test_gemm_bias_broadcasts(cshape):
    g = Graph("float32")
    x = g.add_input("x", "float32", (4, 3))
    W = g.add_input("W", "float32", (3, 2))
    c = g.add_input("c", "float32", cshape)
    (opt,) = optimize([x @ W + c])
    assert ops_of([opt]) == ["gemm"]
    rng = np.random.default_rng(4)
    f = {"x": rng.normal(size=(4, 3)).astype(np.float32), "W": rng.normal(size=(3, 2)).astype(np.float32),
         "c": rng.normal(size=cshape).astype(np.float32)}
    np.testing.assert_allclose(run_graph(g, {"out": opt}, f)["out"], f["x"] @ f["W"] + f["c"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ta,tb", [(True, False), (False, True), (True, True)])
def test_gemm_folds_transposed_operands(ta, tb):
    g = Graph("float64")
    a = g.add_input("a", "float64", (3, 4) if ta else (4, 3))
    bm = g.add_input("bm", "float64", (2, 3) if tb else (3, 2))
    c = g.add_input("c", "float64", (4, 2))
    A = g.apply("transpose", a) if ta else a
    B = g.apply("transpose", bm, perm=(1, 0)) if tb else bm
    (opt,) = optimize([A @ B + c])
    node = opt.producer
    assert node.op.name == "gemm" and node.attrs["trans_a"] == ta and node.attrs["trans_b"] == tb
    assert node.inputs[0] is a and node.inputs[1] is bm
    model = emitted(g, {"out": opt})
    assert [n.op_type for n in model.graph.node] == ["Gemm"], "no Transpose may be left"
    (gemm,) = _gemm_nodes(model)
    assert _attr(gemm, "transA") == int(ta) and _attr(gemm, "transB") == int(tb)
    rng = np.random.default_rng(2)
    f = {"a": rng.normal(size=(3, 4) if ta else (4, 3)), "bm": rng.normal(size=(2, 3) if tb else (3, 2)),
         "c": rng.normal(size=(4, 2))}
    want = (f["a"].T if ta else f["a"]) @ (f["bm"].T if tb else f["bm"]) + f["c"]
    np.testing.assert_allclose(run_graph(g, {"out": opt}, f)["out"], want, rtol=1e-12)


def test_gemm_fusion_leaves_shared_or_batched_matmuls():
    g = Graph("float64")
    x = g.add_input("x", "float64", (4, 3))
    W = g.add_input("W", "float64", (3, 2))
    b = g.add_input("b", "float64", (2,))
    x3 = g.add_input("x3", "float64", (2, 4, 3))
    m = x @ W
    shared = m + b  # m is also an output of its own: fusing would compute it twice
    batched = x3 @ W + b  # rank 3: Gemm takes matrices only
    outs = optimize([shared, m, batched])
    assert "gemm" not in ops_of(outs)
    rng = np.random.default_rng(3)
    f = {"x": rng.normal(size=(4, 3)), "W": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,)),
         "x3": rng.normal(size=(2, 4, 3))}
    res = run_graph(g, dict(zip(["s", "m", "bt"], outs)), f)
    np.testing.assert_allclose(res["s"], f["x"] @ f["W"] + f["b"], rtol=1e-12)
    np.testing.assert_allclose(res["bt"], f["x3"] @ f["W"] + f["b"], rtol=1e-12)


@pytest.mark.parametrize("wshape", [(64, 64), (64, 128)])
def test_dense_over_a_sequence_is_one_gemm_over_all_rows(wshape):
    g = Graph("float64")
    x = g.add_input("x", "float64", ("T", "N", wshape[0]))
    W = g.add_input("W", "float64", wshape)
    b = g.add_input("b", "float64", (wshape[1],))
    (opt,) = optimize([x @ W + b])
    assert opt.shape == ("T", "N", wshape[1])
    assert "gemm" in ops_of([opt]) and "add" not in ops_of([opt])
    model = emitted(g, {"out": opt})
    assert [n.op_type for n in model.graph.node if n.op_type in ("Gemm", "MatMul", "Add")] == ["Gemm"]
    rng = np.random.default_rng(5)
    f = {"x": rng.normal(size=(3, 5, wshape[0])), "W": rng.normal(size=wshape), "b": rng.normal(size=wshape[1:])}
    np.testing.assert_allclose(run_graph(g, {"out": opt}, f)["out"], f["x"] @ f["W"] + f["b"], rtol=1e-12)


def _lookup_then_dense(rows: int, ids_shape, bias=True):
    """take(table, ids), time-major as a recurrent layer reads it, times W (+ b)."""
    g = Graph("float64")
    table = g.add_input("table", "float64", (rows, 3))
    ids = g.add_input("ids", "int64", ids_shape)
    W = g.add_input("W", "float64", (3, 5))
    b = g.add_input("b", "float64", (5,))
    x = g.apply("transpose", g.apply("take", table, ids, axis=0), perm=(1, 0, 2))
    y = x @ W + b if bias else x @ W
    return g, y, (table, W, b)


@pytest.mark.parametrize("bias", [True, False])
def test_lookup_then_product_projects_the_table(bias):
    """take(table, ids) @ W + b -> take(table @ W + b, ids): same values, same gradients."""
    rng = np.random.default_rng(3)
    f = {"table": rng.normal(size=(7, 3)), "ids": rng.integers(0, 7, size=(4, 6)), "W": rng.normal(size=(3, 5)),
         "b": rng.normal(size=5)}
    results = []
    for fold in (False, True):
        g, y, params = _lookup_then_dense(7, ("N", "T"), bias)
        loss = g.apply("sum", g.apply("tanh", y))
        if fold:
            fold_lookup_products([loss])
            assert y.producer.op.name == "take" and y.producer.inputs[0].shape == (7, 5)
            assert y.producer.inputs[1].producer.op.name == "transpose"  # the time-major order moved onto the ids
        grads = grad([loss], params if bias else params[:2])
        outs = optimize([y, *grads])
        results.append(run_graph(g, {f"o{k}": v for k, v in enumerate(outs)}, f))
    for k in results[0]:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-12, atol=1e-12, err_msg=k)
    want = np.transpose(f["table"][f["ids"]], (1, 0, 2)) @ f["W"] + (f["b"] if bias else 0)
    np.testing.assert_allclose(results[1]["o0"], want, rtol=1e-12)


@pytest.mark.parametrize("rows, ids_shape", [(LOOKUP_FOLD_MAX_ROWS + 1, ("N", "T")), (50, (4, 6))])
def test_lookup_fold_keeps_large_tables_and_few_lookups(rows, ids_shape):
    """A table above the size limit, or fewer ids than table rows: projecting the rows stays cheaper."""
    g, y, _ = _lookup_then_dense(rows, ids_shape)
    fold_lookup_products([y])
    assert y.producer.op.name == "add" and y.producer.inputs[0].producer.op.name == "matmul"


def _conv_pool(form: str, pool: dict):
    """conv(x, W) [+ b] [-> relu] -> max_pool2d, in float64 for exact comparisons."""
    g = Graph("float64")
    x = g.add_input("x", "float64", ("N", 2, 4, 6))
    W = g.add_input("W", "float64", (3, 2, 3, 3))
    b = g.add_input("b", "float64", (3,))
    a = g.apply("conv", x, W, padding=1)
    if "bias" in form:
        a = a + g.apply("reshape", b, shape=(3, 1, 1))
    if "relu" in form:
        a = g.apply("relu", a)
    y = g.apply("max_pool2d", a, **pool)
    return g, y, (x, W, b) if "bias" in form else (x, W)


POOLS = [{"kernel": 2}, {"kernel": 3, "stride": 1, "padding": 1}]


@pytest.mark.parametrize("pool", POOLS, ids=["tiled", "overlapping"])
@pytest.mark.parametrize("form", ["bias+relu", "relu", "bias"])
def test_pooling_moves_before_the_activation_and_bias(form, pool):
    """max_pool2d(relu(a + b)) -> relu(max_pool2d(a) + b): the same values and the same gradients
    (up to the order of sums), ties included: integer inputs and weights make many equal window
    entries, and a gradient sent to another tied entry would be off by whole units."""
    rng = np.random.default_rng(5)
    f = {"x": rng.integers(-2, 3, size=(2, 2, 4, 6)).astype(float), "W": rng.integers(-1, 2, size=(3, 2, 3, 3)).astype(float),
         "b": np.array([0.0, -1.0, 2.0])}
    results = []
    for rewrite in (False, True):
        g, y, params = _conv_pool(form, pool)
        loss = g.apply("sum", g.apply("tanh", y) * g.lift(np.arange(1.0, 1.0 + np.prod(y.shape[1:])).reshape(y.shape[1:])))
        if rewrite:
            pool_before_activation([loss])
            first = "relu" if "relu" in form else "add"
            assert y.producer.op.name == first
            assert any(n.op.name == "max_pool2d" and n.inputs[0].producer.op.name == "conv" for n in producers_of([y]))
        grads = grad([loss], params)
        outs = optimize([y, *grads])
        results.append(run_graph(g, {f"o{k}": v for k, v in enumerate(outs)}, f))
    assert np.count_nonzero(results[0]["o1"]) > 0
    for k in results[0]:
        np.testing.assert_allclose(results[1][k], results[0][k], rtol=1e-13, atol=1e-13, err_msg=k)


def test_pooling_stays_after_values_read_elsewhere_or_varying_biases():
    """A relu output read by another node, or a bias that varies over the image, keeps its place."""
    g, y, _ = _conv_pool("bias+relu", {"kernel": 2})
    r = y.producer.inputs[0]
    pool_before_activation([y, r])
    assert y.producer.op.name == "max_pool2d" and y.producer.inputs[0] is r
    g = Graph("float64")
    a = g.add_input("a", "float64", (2, 3, 4, 6))
    per_pixel = g.add_input("bias", "float64", (4, 6))
    y = g.apply("max_pool2d", a + per_pixel, kernel=2)
    pool_before_activation([y])
    assert y.producer.op.name == "max_pool2d" and y.producer.inputs[0].producer.op.name == "add"


def test_forward_pooling_also_gives_the_backward_its_indices():
    """The training graph pools each input once: the forward MaxPool also returns the indices
    its gradient scatters to; the inference graph keeps the plain one-output MaxPool."""
    spec = spec_from_dict({
        "flowgrad": 1, "name": "pool_once", "dims": {"K": 3},
        "inputs": {"x": {"shape": ["N", 1, 6, 6]}, "y": {"shape": ["N"], "dtype": "int64"}},
        "graph": {"c": "conv2d(x, 4, 3, padding=1, act=relu)", "p": "max_pool2d(c, 2)", "logits": "dense(flatten(p), K)"},
        "outputs": {"probs": "softmax(logits)"},
        "loss": "cross_entropy(logits, y)",
        "train": {"optimizer": {"sgd": {"lr": 0.1}}, "batch_size": 4},
    })
    cm = compile_spec(spec)
    pools = [n for n in cm.graphs["train"].model.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 1 and len(pools[0].output) == 2
    pools = [n for n in cm.graphs["infer"].model.graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 1 and len(pools[0].output) == 1


def _lstm_spec(hidden: int, batch_size: int):
    return spec_from_dict({
        "flowgrad": 1, "name": "weights_first", "dims": {"V": 11, "E": 8, "H": hidden},
        "inputs": {"x": {"shape": ["N", "T"], "dtype": "int64"}, "y": {"shape": ["N", "T"], "dtype": "int64"}},
        "graph": {"hs": "lstm(embedding(x, V, E), H)", "logits": "dense(hs, V)"},
        "outputs": {"probs": "softmax(logits)"},
        "loss": "cross_entropy(logits, y)",
        "train": {"optimizer": {"adam": {"lr": 0.01}}, "batch_size": batch_size, "dtype": "float64"},
    })


def _weights_first_products(model) -> int:
    """MatMuls inside loop bodies whose left operand comes from outside the loop."""
    count = 0
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                inner = {o for n in a.g.node for o in n.output} | {i.name for i in a.g.input}
                count += sum(n.op_type == "MatMul" and n.input[0] not in inner for n in a.g.node)
    return count


def test_loop_products_run_weights_first_for_small_batches():
    """With few rows per step, h @ U in the forward and backward loops becomes (U^T @ h^T)^T
    (onnxruntime then packs h^T, not U, on every step): the same training step, to float64
    rounding, as the graph compiled without rewrites."""
    hidden = 128
    assert hidden * 4 * hidden >= WEIGHTS_FIRST_MIN_ENTRIES
    spec = _lstm_spec(hidden, batch_size=4)
    opt = compile_spec(spec, graphs=("train", "infer"))
    raw = compile_spec(spec, graphs=("train", "infer"), optimize_graph=False)
    assert _weights_first_products(opt.graphs["train"].model) == 2  # the forward step and the backward step
    assert _weights_first_products(opt.graphs["infer"].model) == 0  # deployment batches may be of any size
    rng = np.random.default_rng(2)
    state = opt.initial_state(0)
    data = {"x": rng.integers(0, 11, size=(4, 5)), "y": rng.integers(0, 11, size=(4, 5))}
    control = {"lr": np.float64(0.01), "step": np.int64(3), "seed": np.int64(11)}
    for kind in ("train", "infer"):
        feeds = {i.name: np.asarray({**state, **data, **control}[i.name], dtype=i.dtype) for i in raw.graphs[kind].inputs}
        out_o = Runner(opt.graphs[kind].model)({i.name: feeds[i.name] for i in opt.graphs[kind].inputs})
        out_r = Runner(raw.graphs[kind].model)(feeds)
        for k, v in out_r.items():
            np.testing.assert_allclose(out_o[k], v, rtol=1e-10, atol=1e-12, err_msg=f"{kind}:{k}")
    # Many rows per step (here from a --batch-size override), or a small weight: products stay as they are.
    assert _weights_first_products(compile_spec(spec.with_batch_size(256), graphs=("train",)).graphs["train"].model) == 0
    assert _weights_first_products(compile_spec(_lstm_spec(32, 4), graphs=("train",)).graphs["train"].model) == 0


def _weights_first_products_nested(graph) -> int:
    count = 0
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                inner = {o for n in a.g.node for o in n.output} | {i.name for i in a.g.input}
                count += sum(n.op_type == "MatMul" and n.input[0] not in inner for n in a.g.node)
                count += _weights_first_products_nested(a.g)
    return count


def test_weights_first_in_nested_loops():
    """A scan whose step runs an LSTM: the inner loops (forward, and recomputed in the outer
    backward step) run weights-first, and the training step matches the unrewritten one."""
    spec = spec_from_dict({
        "flowgrad": 1, "name": "nested_scan", "dims": {"D": 3, "H": 128},
        "inputs": {"x": {"shape": ["N", "T", "S", "D"]}},
        "blocks": {"step": {"in": ["xt", "h"], "graph": {"inner": "lstm(xt, H)", "h2": "tanh(h + inner[:, -1])"},
                            "out": ["h2"]}},
        "graph": {"hs": "scan(step, over=x, init=[zeros(N, H)], axis=1)"},
        "loss": "mean(hs * hs)",
        "train": {"optimizer": {"sgd": {"lr": 0.1}}, "batch_size": 4, "dtype": "float64"},
    })
    opt = compile_spec(spec, graphs=("train",))
    raw = compile_spec(spec, graphs=("train",), optimize_graph=False)
    assert _weights_first_products_nested(opt.graphs["train"].model.graph) >= 3
    rng = np.random.default_rng(6)
    state = opt.initial_state(0)
    feeds = {**state, "x": rng.normal(size=(4, 3, 5, 3)), "lr": np.float64(0.1), "step": np.int64(0), "seed": np.int64(0)}
    out_o = Runner(opt.graphs["train"].model)({i.name: np.asarray(feeds[i.name], i.dtype) for i in opt.graphs["train"].inputs})
    out_r = Runner(raw.graphs["train"].model)({i.name: np.asarray(feeds[i.name], i.dtype) for i in raw.graphs["train"].inputs})
    for k, v in out_r.items():
        np.testing.assert_allclose(out_o[k], v, rtol=1e-10, atol=1e-12, err_msg=k)


def test_weights_first_steps_shared_by_several_loops():
    """One step applied by two scans with different weights (as a gradient's recomputation
    shares its forward's step): each rewritten scan gets a step of its own, and both keep
    their values."""
    from compiler.ops.scan import Body

    H = 128

    def build():
        g = Graph("float64")
        xs = g.add_input("xs", "float64", (5, 2, 4 * H))
        U1, U2 = g.add_input("U1", "float64", (H, 4 * H)), g.add_input("U2", "float64", (H, 4 * H))
        bg = Graph("float64")
        h, x, U = bg.add_input("h", "float64", (2, H)), bg.add_input("x", "float64", (2, 4 * H)), bg.add_input("U", "float64", (H, 4 * H))
        z = bg.apply("tanh", x + h @ U)
        new_h = bg.apply("slice", z, starts=(0,), ends=(H,), axes=(1,))
        step = Body(bg, [h], [x], [U], [new_h])
        h0 = g.const(np.zeros((2, H)))
        a = g.apply("scan", h0, xs, U1, body=step)
        b = g.apply("scan", h0, xs, U2, body=step)
        return g, [a, b]

    rng = np.random.default_rng(4)
    feeds = {"xs": rng.normal(size=(5, 2, 4 * H)), "U1": rng.normal(size=(H, 4 * H)) * 0.05,
             "U2": rng.normal(size=(H, 4 * H)) * 0.05}
    g, outs = build()
    want = run_graph(g, {"a": outs[0], "b": outs[1]}, feeds)
    g, outs = build()
    shared = outs[0].producer.attrs["body"]
    assert outs[1].producer.attrs["body"] is shared
    weights_first_in_loops(outs, rows_hint=None)  # 2 rows: static, no hint needed
    bodies = [o.producer.attrs["body"] for o in outs]
    assert bodies[0] is not bodies[1] and shared not in bodies and len(shared.nonseqs) == 1
    for o in outs:
        body = o.producer.attrs["body"]
        assert len(body.nonseqs) == 2 and len(o.producer.inputs) == 4
        assert [n.op.name for n in producers_of(body.new_carries) if n.op.name in ("matmul", "gemm")] == ["matmul"]
    got = run_graph(g, {"a": outs[0], "b": outs[1]}, feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)


def _compiled_pair_agree(spec, graphs=("train", "infer"), rtol=1e-10):
    """The graphs compiled with and without rewrites give the same outputs (float64), and
    onnx.reference runs the rewritten ones with the same results."""
    from compiler.check import reference_run

    opt = compile_spec(spec, graphs=graphs)
    raw = compile_spec(spec, graphs=graphs, optimize_graph=False)
    rng = np.random.default_rng(3)
    state = opt.initial_state(0)
    data = random_batch(spec, list(spec.inputs), rng)
    control = {"lr": 0.01, "step": 3, "seed": 11}
    for kind in raw.graphs:
        feeds = {i.name: np.asarray({**control, **data, **state}[i.name], dtype=i.dtype) for i in raw.graphs[kind].inputs}
        opt_feeds = {i.name: feeds[i.name] for i in opt.graphs[kind].inputs}
        out_o = Runner(opt.graphs[kind].model)(opt_feeds)
        out_r = Runner(raw.graphs[kind].model)(feeds)
        ref = reference_run(opt.graphs[kind].model, opt_feeds)
        assert set(out_o) == set(out_r)
        for k, v in out_r.items():
            np.testing.assert_allclose(out_o[k], v, rtol=rtol, atol=1e-12, err_msg=f"{kind}:{k}")
            np.testing.assert_allclose(ref[k], out_o[k], rtol=rtol, atol=1e-12, err_msg=f"{kind}:{k} (reference)")


@pytest.mark.parametrize("loop", ["length", "over"])
@pytest.mark.parametrize("state", ["exp(0.0)", "2.0"])
def test_a_step_state_that_is_a_constant(loop, state):
    """A step's state folded from constants (exp(0.0)), or written as a literal, is a constant
    of the outermost graph: the loop's body returned that outer name as its output, which
    ONNX refuses ('Graph output ... is not an output of any node in graph'), so the spec
    did not compile (with the rewrites, or at all for the literal). The body now copies it.
    A scan over x whose step does not read x keeps its step unhoisted, as a length= loop does."""
    spec = spec_from_dict({
        "flowgrad": 1, "name": "constant_state", "dims": {"E": 3, "H": 4},
        "inputs": {"x": {"shape": ["N", "T", "E"] if loop == "over" else ["N", "E"]}},
        "params": {"P": {"shape": ["E", "H"], "init": "glorot_uniform"}},
        "blocks": {"step": {"in": (["x_t"] if loop == "over" else []) + ["h", "k"],
                            "graph": {"h2": "tanh(h @ transpose(P) @ P)", "k2": state}, "out": ["h2", "k2"]}},
        "graph": {"h0": "tanh(x[:, 0] @ P)" if loop == "over" else "tanh(x @ P)",
                  "hs, ks": "scan(step, over=x, init=[h0, mean(x) * 0.0], axis=1)" if loop == "over"
                  else "scan(step, init=[h0, mean(x) * 0.0], length=3)"},
        "outputs": {"hs": "hs", "ks": "ks"},
        "loss": "mean(hs * hs) + mean(ks)",
        "train": {"optimizer": {"sgd": {"lr": 0.1}}, "dtype": "float64"},
    })
    _compiled_pair_agree(spec)


def test_random_draws_of_one_shape_share_one_hash():
    """Draws with the same seed, step and shape become rows of one random_bits (the second
    draw's shape source depending on the first draw's result, as stacked dropouts do); a draw
    of another shape stays alone; every draw keeps its bits."""
    def build():
        g = Graph("float32")
        seed, step = g.add_input("seed", "int64", ()), g.add_input("step", "int64", ())
        x = g.add_input("x", "float32", ("N", 6))
        b1 = g.apply("random_bits", seed, step, x, salt=1, pairs=True)
        h = x * g.cast(b1, "float32")  # the next draw is shaped like a value made from this one
        b2 = g.apply("random_bits", seed, step, h, salt=2, pairs=True)
        b3 = g.apply("random_bits", seed, step, g.add_input("z", "float32", (3,)), salt=3, pairs=True)
        b4 = g.apply("random_bits", seed, step, x, salt=4)  # 32 bits per entry, not pairs
        return g, [b1, b2, b3, b4]

    feeds = {"seed": np.asarray(5), "step": np.asarray(2), "x": np.ones((4, 6), np.float32), "z": np.zeros(3, np.float32)}
    g, draws = build()
    want = run_graph(g, {f"b{k}": v for k, v in enumerate(draws)}, feeds)
    g, draws = build()
    merge_random_draws(draws)
    assert [d.producer.op.name for d in draws] == ["take", "take", "random_bits", "random_bits"]
    assert draws[0].producer.inputs[0] is draws[1].producer.inputs[0]
    assert draws[0].producer.inputs[0].producer.attrs["salt"] == (1, 2)
    got = run_graph(g, {f"b{k}": v for k, v in enumerate(draws)}, feeds)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_dead_code_is_not_emitted():
    g = Graph("float32")
    x = g.add_input("x", "float32", (2, 3))
    unused = g.add_input("unused", "float32", (2, 3))
    g.apply("log", g.apply("sigmoid", unused))  # dead: nothing reads it
    g.apply("exp", x) * g.const(3.0)  # dead too
    out = g.apply("tanh", -(-x) * 1.0)  # the negations and the multiply disappear
    (opt,) = optimize([out])
    model = emitted(g, {"out": opt})
    assert [n.op_type for n in model.graph.node] == ["Tanh"]
    assert [i.name for i in model.graph.input] == ["x"]
    assert not model.graph.initializer


def test_compiled_graphs_take_only_the_inputs_they_use():
    spec = shrunk(os.path.join(ROOT, "models", "mlp.yaml"))
    cm = compile_spec(spec, graphs=("eval", "infer"))
    infer_in = {i.name for i in cm.graphs["infer"].inputs}
    assert "y" not in infer_in and "lr" not in infer_in and "step" not in infer_in
    assert not any("/" in n for n in infer_in)  # no optimizer state
    for kind in ("eval", "infer"):
        # dropout is off outside training, so no random bits or their seed
        model = cm.graphs[kind].model
        assert "seed" not in {i.name for i in model.graph.input}
        used = {name for n in model.graph.node for name in n.input}
        assert {i.name for i in model.graph.input} <= used



def test_labels_read_for_their_shape_alone_are_not_inference_inputs():
    """An output that reads the labels only for their shape (zeros_like(y), positions(y, axis=1),
    numel(y, axis=1)) made the inference graph take y, so predict asked for labels. The sizes
    now come from x, which has the same dims."""
    import onnxruntime as ort

    from spec import spec_from_text

    text = """flowgrad: 1
name: shapes_of_labels
dims: {D: 3, K: 2}
inputs:
  x: {shape: [N, T, D]}
  y: {shape: [N, T], dtype: int64}
graph:
  logits: dense(x, K)
outputs:
  ends: argmax(logits, axis=-1) + zeros_like(y)
  where: positions(y, axis=1)
  scaled: softmax(logits) * numel(y, axis=1)
loss: cross_entropy(logits, y)
"""
    cm = compile_spec(spec_from_text(text, "labels.yaml"), "float64", graphs=("eval", "infer"))
    assert "y" in {i.name for i in cm.graphs["eval"].model.graph.input}
    model = cm.graphs["infer"].model
    assert {i.name for i in model.graph.input} == {"x", "logits.W", "logits.b"}
    params = cm.initial_state(0)
    params["logits.b"] = np.array([0.3, -0.2])
    x = np.random.default_rng(0).normal(size=(4, 5, 3))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ends, where, scaled = sess.run(["ends", "where", "scaled"], {"x": x, **params})
    logits = x @ params["logits.W"] + params["logits.b"]
    np.testing.assert_array_equal(ends, logits.argmax(-1))
    np.testing.assert_array_equal(where, np.arange(5))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(scaled, 5 * probs / probs.sum(-1, keepdims=True), rtol=1e-12)

# ------------------------------------------------------------------ stabilisation
def _value_and_grad(g: Graph, y, x, feeds):
    """y and d(sum(y * w))/dx for a fixed random weighting w, run through ONNX."""
    w = g.add_input("w", y.dtype, y.shape)
    (gx,) = grad([g.apply("sum", y * w)], [x])
    y_opt, gx_opt = optimize([y, gx])
    return run_graph(g, {"y": y_opt, "gx": gx_opt}, feeds), (y_opt, gx_opt)


def test_log_softmax_is_stable():
    g = Graph("float32")
    x = g.add_input("x", "float32", (2, 2))
    y = g.apply("log", g.apply("softmax", x))
    assert y.producer.op.name == "log_softmax"
    assert "softmax" not in ops_of([y]) and "log" not in ops_of([y])
    fx = np.asarray([[1000.0, -1000.0], [3.0, 3.0]], dtype=np.float32)
    fw = np.asarray([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)
    res, (y_opt, gx_opt) = _value_and_grad(g, y, x, {"x": fx, "w": fw})
    assert "softmax" not in ops_of([y_opt, gx_opt])
    np.testing.assert_allclose(res["y"], [[0.0, -2000.0], [-np.log(2), -np.log(2)]], rtol=1e-6)
    assert np.all(np.isfinite(res["gx"]))
    p = np.asarray([[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(res["gx"], fw - p * fw.sum(axis=1, keepdims=True), rtol=1e-6, atol=1e-6)


def test_log_sigmoid_is_stable():
    g = Graph("float32")
    x = g.add_input("x", "float32", (4,))
    y = g.apply("log", g.apply("sigmoid", x))
    assert "softplus" in ops_of([y]) and "log" not in ops_of([y]) and "sigmoid" not in ops_of([y])
    fx = np.asarray([1000.0, -1000.0, 0.0, 5.0], dtype=np.float32)
    fw = np.ones(4, dtype=np.float32)
    res, _ = _value_and_grad(g, y, x, {"x": fx, "w": fw})
    np.testing.assert_allclose(res["y"], [0.0, -1000.0, -np.log(2), -np.log1p(np.exp(-5.0))], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(res["gx"]))
    sig_neg = 1 / (1 + np.exp(fx.astype(np.float64).clip(-50, 50)))  # d/dx log sigmoid(x) = sigmoid(-x)
    np.testing.assert_allclose(res["gx"], sig_neg, rtol=1e-6, atol=1e-6)


def test_log_one_minus_sigmoid_is_stable():
    g = Graph("float32")
    x = g.add_input("x", "float32", (4,))
    y = g.apply("log", 1.0 - g.apply("sigmoid", x))
    assert "softplus" in ops_of([y]) and "log" not in ops_of([y]) and "sigmoid" not in ops_of([y])
    fx = np.asarray([1000.0, -1000.0, 0.0, 5.0], dtype=np.float32)
    fw = np.ones(4, dtype=np.float32)
    res, _ = _value_and_grad(g, y, x, {"x": fx, "w": fw})
    np.testing.assert_allclose(res["y"], [-1000.0, 0.0, -np.log(2), -np.log1p(np.exp(5.0))], rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(res["gx"]))
    sig = 1 / (1 + np.exp(-fx.astype(np.float64).clip(-50, 50)))  # d/dx log(1 - sigmoid(x)) = -sigmoid(x)
    np.testing.assert_allclose(res["gx"], -sig, rtol=1e-6, atol=1e-6)


def test_log_sum_exp_is_stable():
    """log(sum(exp(z))) written out (a mixture density network's likelihood, torch.logsumexp
    ported) gave inf where exp(z) overflowed (z of 1000) and -inf where every exp(z) underflowed
    (z of -1000), and NaN gradients. It is built as logsumexp, whose largest entry is taken out
    first; the gradient is the softmax of z. A row of -inf (every entry masked) stays -inf."""
    g = Graph("float32")
    x = g.add_input("x", "float32", (4, 3))
    y = g.apply("log", g.apply("sum", g.apply("exp", x), axis=-1))
    assert y.producer.op.name == "squeeze" and "exp" in ops_of([y])
    assert [n for n in ops_of([y]) if n == "max"]
    fx = np.asarray([[1000.0, 999.0, 0.0], [-1000.0, -1001.0, -1002.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]],
                    dtype=np.float32)
    fw = np.asarray([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
    res, _ = _value_and_grad(g, y, x, {"x": fx, "w": fw})
    x64 = fx.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    want = (np.log(np.exp(x64 - m).sum(axis=1, keepdims=True)) + m)[:, 0]
    np.testing.assert_allclose(res["y"], want, rtol=1e-6)
    p = np.exp(x64 - want[:, None])
    np.testing.assert_allclose(res["gx"], p * fw[:, None], rtol=1e-5, atol=1e-6)
    g = Graph("float32")
    x = g.add_input("x", "float32", (2, 2))
    y = g.apply("logsumexp", x, axis=1)
    out = run_graph(g, {"y": optimize([y])[0]}, {"x": np.asarray([[-np.inf, -np.inf], [np.inf, 0.0]], np.float32)})
    np.testing.assert_array_equal(out["y"], [-np.inf, np.inf])


def test_stabilised_forms_in_a_spec():
    """The same stabilisation when the spec writes the unstable forms: the loss and
    its gradients stay finite for logits of magnitude 1000."""
    spec = spec_from_dict({
        "flowgrad": 1,
        "name": "stable",
        "dims": {"D": 2, "K": 3},
        "inputs": {"x": {"shape": ["N", "D"]}, "t": {"shape": ["N"]}, "y": {"shape": ["N", "K"]}},
        "params": {"w": {"shape": ["D"], "init": "ones"}, "V": {"shape": ["D", "K"], "init": "ones"}},
        "graph": {"z": "x @ w", "logits": "x @ V"},
        "loss": "-mean(t * log(sigmoid(z)) + (1 - t) * log(1 - sigmoid(z))) - mean(sum(y * log(softmax(logits)), axis=-1))",
        "train": {"optimizer": {"sgd": {"lr": 0.1}}},
    })
    cm = compile_spec(spec, graphs=("grads",))
    graph = cm.graphs["grads"]
    nodes = graph.model.graph.node
    made = {o: n for n in nodes for o in n.output}
    assert "LogSoftmax" in {n.op_type for n in nodes}
    # The only logs left are softplus's log(1 + e ** -|z|), of a value in [1, 2].
    logs = [n for n in nodes if n.op_type == "Log"]
    assert logs and all(made[n.input[0]].op_type == "Add" and
                        [made[i].op_type for i in made[n.input[0]].input if i in made][:1] == ["Exp"] for n in logs)
    x = np.asarray([[1000.0, 0.0], [-1000.0, 0.0], [0.0, 1000.0]], dtype=np.float32)
    V = np.asarray([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=np.float32)
    feeds = {"x": x, "t": np.asarray([0.0, 1.0, 0.0], np.float32), "y": np.eye(3, dtype=np.float32)[[1, 0, 2]],
             "w": np.ones(2, np.float32), "V": V}
    out = Runner(graph.model)({i.name: feeds[i.name] for i in graph.inputs})
    for k, v in out.items():
        assert np.all(np.isfinite(v)), k
    # z = [1000, -1000, 1000] against t = [0, 1, 0]: each row costs 1000; the logits rows
    # [1000, -1000, 0], [-1000, 1000, 0], [0, 1000, -1000] against classes 1, 0, 2 cost 2000 each
    np.testing.assert_allclose(out["loss"], 1000.0 + 2000.0, rtol=1e-5)


def test_fresh_names_cost_linear_time():
    """A graph of n nodes of one op type named its outputs in O(n^2): each name probed `add`,
    `add_2`, ... from the start (a 800-layer MLP compiled in 18.8 s, 12 of them naming).
    The names stay those of the first free suffix, a reserved one skipped."""
    from compiler.emit import Emitter

    class Counting(set):
        probes = 0

        def __contains__(self, item):
            Counting.probes += 1
            return super().__contains__(item)

    e = Emitter()
    e._used = Counting()
    e.reserve("add_3")
    child = e.child()
    names = [e.fresh("add"), e.fresh("add"), child.fresh("add"), e.fresh("add")]
    assert names == ["add", "add_2", "add_4", "add_5"]
    Counting.probes = 0
    for _ in range(5000):
        e.fresh("add")
    assert Counting.probes < 3 * 5000
