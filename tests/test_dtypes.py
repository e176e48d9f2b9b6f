"""The dtype rules: comparisons give bool and mean() takes it as float, integer
labels stay int64, Python numbers take the dtype of the tensor they meet, and
one spec emits consistent float16 / float32 / float64 graphs."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto
from compiler.check import reference_evaluator

from compiler.check import Runner
from compiler.emit import emit_model
from compiler.gradcheck import random_batch
from compiler.ir import Graph
from compiler.training import compile_spec
from spec import load_spec, spec_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp.yaml")
ONNX_FLOATS = {TensorProto.FLOAT16: "float16", TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}


def shrunk(path: str, size: int = 5, extra=()):
    """The spec with every literal dim above 8 set to `size` (as in test_models)."""
    with open(path) as f:
        dims = (yaml.safe_load(f) or {}).get("dims") or {}
    return load_spec(path, [f"dims.{k}={size}" for k, v in dims.items() if isinstance(v, int) and v > 8] + list(extra))


def feeds_for(graph, values: dict) -> dict:
    return {i.name: np.asarray(values[i.name], dtype=i.dtype) for i in graph.inputs}


def float_types_in(model: onnx.ModelProto) -> set[str]:
    """Every float type anywhere in the model: inputs, outputs, initializers,
    Cast targets, and the inferred types of all intermediate values."""
    found = set()
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        t = v.type.tensor_type.elem_type
        if t in ONNX_FLOATS:
            found.add(ONNX_FLOATS[t])
    for init in g.initializer:
        if init.data_type in ONNX_FLOATS:
            found.add(ONNX_FLOATS[init.data_type])
    for n in g.node:
        if n.op_type == "Cast":
            to = next(a.i for a in n.attribute if a.name == "to")
            if to in ONNX_FLOATS:
                found.add(ONNX_FLOATS[to])
    return found


# ------------------------------------------------------------------ bool -> float, int labels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_accuracy_metric_compiles_and_counts(dtype):
    """mean(argmax(logits, axis=-1) == y): int64 == int64 is bool, and mean takes it as float."""
    spec = shrunk(MLP)
    cm = compile_spec(spec, dtype=dtype, graphs=("eval", "infer"))
    ev = cm.graphs["eval"]
    acc = next(o for o in ev.outputs if o.name == "accuracy")
    assert acc.role == "metric" and acc.dtype == dtype and acc.shape == []
    rng = np.random.default_rng(0)
    data = random_batch(spec, ["x", "y"], rng, dtype, sizes={"N": 12})
    data["y"] = rng.integers(0, 5, 12).astype(np.int64)  # K is 5 once shrunk
    state = cm.initial_state(0)
    out = Runner(ev.model)(feeds_for(ev, {**state, **data}))
    labels = Runner(cm.graphs["infer"].model)(feeds_for(cm.graphs["infer"], {**state, **data}))["label"]
    assert labels.dtype == np.int64
    assert out["accuracy"].dtype == np.dtype(dtype)
    assert float(out["accuracy"]) == pytest.approx(np.mean(labels == data["y"]))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_int_labels_stay_int64(dtype):
    cm = compile_spec(shrunk(MLP, extra=["train.optimizer={adam: {lr: 0.001, eps: 1.0e-4}}"]), dtype=dtype)
    for kind, graph in cm.graphs.items():
        ins = {i.name: i for i in graph.inputs}
        if "y" in ins:
            assert ins["y"].dtype == "int64", kind
            onnx_y = next(v for v in graph.model.graph.input if v.name == "y")
            assert onnx_y.type.tensor_type.elem_type == TensorProto.INT64
            # the labels are compared and gathered as integers, never cast to float
            assert not [n for n in graph.model.graph.node if n.op_type == "Cast" and "y" in n.input], kind
        if "step" in ins:
            assert ins["step"].dtype == "int64"
    label = next(o for o in cm.graphs["infer"].outputs if o.name == "label")
    assert label.dtype == "int64"


def test_comparison_and_mean_in_the_ir():
    g = Graph("float64")
    logits = g.add_input("logits", "float64", ("N", 4))
    y = g.add_input("y", "int64", ("N",))
    hit = g.apply("argmax", logits, axis=-1) == y
    assert hit is not None
    eq = g.binary("eq", g.apply("argmax", logits, axis=-1), y)
    assert eq.dtype == "bool"
    acc = g.apply("mean", eq)
    assert acc.dtype == "float64" and acc.shape == ()


# ------------------------------------------------------------------ Python numbers
@pytest.mark.parametrize("tensor_dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("graph_dtype", ["float32", "float64"])
def test_python_float_takes_the_tensor_dtype(tensor_dtype, graph_dtype):
    g = Graph(graph_dtype)
    x = g.add_input("x", tensor_dtype, (3,))
    results = {
        "x*0.5": x * 0.5, "0.5*x": 0.5 * x, "x+1.5": x + 1.5, "1-x": 1 - x, "x/3": x / 3, "2.0/x": 2.0 / x,
        "x**2.5": x ** 2.5, "x-0.25": x - 0.25, "max": g.binary("maximum", x, 0.5),
    }
    for what, v in results.items():
        assert v.dtype == tensor_dtype, what
        for node_input in v.producer.inputs:
            assert node_input.dtype == tensor_dtype, what  # the constant was made in x's dtype, not cast
    ge = g.binary("gt", x, 0.5)
    assert ge.dtype == "bool" and ge.producer.inputs[1].dtype == tensor_dtype


def test_python_numbers_meeting_integers():
    g = Graph("float32")
    y = g.add_input("y", "int64", (3,))
    assert (y + 1).dtype == "int64" and (2 * y).dtype == "int64"
    assert (y * 0.5).dtype == "float32"  # an int tensor and a float: the graph's float dtype
    assert (y / 2).dtype == "float32"  # / is true division, as in Python, even between two ints
    assert (y / y).dtype == "float32" and g.binary("pow", 2, y).dtype == "float32"
    assert g.binary("eq", y, 1).dtype == "bool" and g.binary("eq", y, 1).producer.inputs[1].dtype == "int64"


def test_python_integers_meeting_booleans_keep_their_value():
    """b == 2 is false everywhere, as in NumPy: the 2 is not made a bool (True) to meet b."""
    spec = spec_from_dict({"flowgrad": 1, "name": "flags", "inputs": {"b": {"shape": ["N"], "dtype": "bool"}},
                           "outputs": {"eq2": "b == 2", "ne2": "b != 2", "eq1": "b == 1", "ne0": "b != 0",
                                       "neg": "b == -1", "lt2": "b < 2", "plus": "b + 2", "is_true": "b == True"}})
    graph = compile_spec(spec, graphs=("infer",)).graphs["infer"]
    b = np.asarray([True, False, True])
    out = Runner(graph.model)({"b": b})
    want = {"eq2": b == 2, "ne2": b != 2, "eq1": b == 1, "ne0": b != 0, "neg": b == -1, "lt2": b < 2, "plus": b + 2,
            "is_true": b == True}  # noqa: E712
    for name, w in want.items():
        assert out[name].dtype == w.dtype, name
        np.testing.assert_array_equal(out[name], w, err_msg=name)


def test_integer_division_in_a_spec_is_true_division():
    spec = spec_from_dict({"flowgrad": 1, "name": "div", "inputs": {"y": {"shape": ["N"], "dtype": "int64"}},
                           "outputs": {"half": "y / 2", "ratio": "y / (y + 5)", "power": "2 ** y", "avg": "mean(y / 2)",
                                       "plus": "y + 1"}})
    graph = compile_spec(spec, "float64", graphs=("infer",)).graphs["infer"]
    assert {o.name: o.dtype for o in graph.outputs} == {"half": "float64", "ratio": "float64", "power": "float64",
                                                          "avg": "float64", "plus": "int64"}
    y = np.asarray([1, 3, -3], dtype=np.int64)
    out = Runner(graph.model)({"y": y})
    np.testing.assert_array_equal(out["half"], [0.5, 1.5, -1.5])
    np.testing.assert_allclose(out["ratio"], y / (y + 5), rtol=1e-15)
    np.testing.assert_allclose(out["power"], [2.0, 8.0, 0.125], rtol=1e-15)
    np.testing.assert_allclose(out["avg"], 1 / 6, rtol=1e-15)
    np.testing.assert_array_equal(out["plus"], y + 1)


def test_python_floats_in_a_spec_take_the_input_dtype():
    """A float64 input in a float32 spec: the numbers it meets are float64, so nothing is cast or narrowed."""
    exprs = {
        "a": "z * 0.5 + 1", "b": "maximum(z, 0.5)", "c": "where(z > 0, z, 0.0)", "d": "2.0 ** z",
        "e": "-log(1 - sigmoid(z))", "f": "mean(z) / 3", "g": "relu(z) * 0.1 - 0.2 / (z + 3)",
        "h": "leaky_relu(z, 0.2) + abs(z) * 1e-3", "i": "softmax(z * 2.0)", "j": "sum(z * z) * 0.5",
    }
    spec = spec_from_dict({"flowgrad": 1, "name": "mixed", "inputs": {"z": {"shape": ["N"], "dtype": "float64"}},
                           "outputs": exprs})
    cm = compile_spec(spec, graphs=("infer",))
    assert cm.float_dtype == "float32"
    graph = cm.graphs["infer"]
    assert all(o.dtype == "float64" for o in graph.outputs)
    assert float_types_in(graph.model) == {"float64"}
    z = np.asarray([-1.5, 0.0, 0.25, 2.0])
    out = Runner(graph.model)({"z": z})
    np.testing.assert_allclose(out["a"], z * 0.5 + 1, rtol=1e-15)
    np.testing.assert_allclose(out["e"], np.logaddexp(0, z), rtol=1e-15)
    np.testing.assert_allclose(out["g"], np.maximum(z, 0) * 0.1 - 0.2 / (z + 3), rtol=1e-15)


def test_python_integers_in_an_op_call_take_the_integer_input_dtype():
    """maximum(src_len, 1) over int32 lengths (the bundled translators' expression, on data of
    one's own) was refused: 'maximum: operands have different dtypes int32 and int64', where
    src_len + 1 took the int32. A number in an op's call takes an integer tensor's dtype too."""
    exprs = {"a": "maximum(n, 1)", "b": "minimum(3, n)", "c": "where(n > 1, n, 0)", "d": "n + 1",
             "e": "maximum(n, 1) * f", "g": "where(n > 1, f, 0)"}
    spec = spec_from_dict({"flowgrad": 1, "name": "ints", "inputs": {"n": {"shape": ["N"], "dtype": "int32"},
                                                                    "f": {"shape": ["N"]}}, "outputs": exprs})
    graph = compile_spec(spec, graphs=("infer",)).graphs["infer"]
    assert {o.name: o.dtype for o in graph.outputs} == {"a": "int32", "b": "int32", "c": "int32", "d": "int32",
                                                          "e": "float32", "g": "float32"}
    n, f = np.asarray([0, 1, 5], dtype=np.int32), np.asarray([1.5, 2.0, -1.0], dtype=np.float32)
    out = Runner(graph.model)({"n": n, "f": f})
    np.testing.assert_array_equal(out["a"], np.maximum(n, 1))
    np.testing.assert_array_equal(out["b"], np.minimum(3, n))
    np.testing.assert_array_equal(out["c"], np.where(n > 1, n, 0))
    np.testing.assert_array_equal(out["g"], np.where(n > 1, f, 0))


# ------------------------------------------------------------------ float16 / float64 emission
@pytest.fixture(scope="module")
def mlp_models():
    # Adam's default eps (1e-8) is 0 in float16 (see test_float16_adaptive_optimizer_is_refused_with_a_hint)
    spec = shrunk(MLP, size=16, extra=["train.optimizer={adam: {lr: 0.001, eps: 1.0e-4}}"])
    return spec, {dt: compile_spec(spec, dtype=dt) for dt in ("float16", "float32", "float64")}


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_emission_in_one_float_dtype(mlp_models, dtype):
    spec, cms = mlp_models
    cm = cms[dtype]
    assert cm.float_dtype == dtype
    assert set(cm.graphs) == {"train", "grads", "apply", "eval", "infer"}
    for kind, graph in cm.graphs.items():
        onnx.checker.check_model(graph.model, full_check=True)
        g = graph.model.graph
        # an evaluation's sums and counts (role "part") are at least float32: they add up over batches
        parts = {o.name for o in graph.outputs if o.role == "part"}
        float_io = [v for v in list(g.input) + list(g.output) if v.type.tensor_type.elem_type in ONNX_FLOATS]
        assert float_io, kind
        for v in float_io:
            want = ("float32" if dtype == "float16" else dtype) if v.name in parts else dtype
            assert ONNX_FLOATS[v.type.tensor_type.elem_type] == want, f"{kind}: {v.name}"
        for io in graph.inputs + graph.outputs:
            assert io.dtype in (dtype, "int64", "bool") or io.name in parts, f"{kind}: {io.name} {io.dtype}"
        # and no other float type hides inside (constants, casts, intermediates), except
        # that float16 scatter-adds (gradients of gathers) sum in float32, as do an evaluation's
        # sums and counts, and the random bits' hash shifts its uint32 words through float64 (exactly)
        wide = {"float32"} if dtype == "float16" and (parts or any(n.op_type == "ScatterElements" for n in g.node)) else set()
        if any(t.data_type == TensorProto.UINT32 for t in g.initializer):  # the hash's constants
            wide |= {"float64"}
        assert float_types_in(graph.model) - (wide - {dtype}) == {dtype}, kind
    state = cm.initial_state(0)
    for name, v in state.items():
        assert v.dtype == np.dtype(dtype), name


def _train_inputs(spec, cm32, n=8):
    rng = np.random.default_rng(0)
    data = random_batch(spec, ["x", "y"], rng, "float32", sizes={"N": n})
    data["y"] = rng.integers(0, 10, n).astype(np.int64)
    state = cm32.initial_state(0)
    return {**state, **data, "lr": 0.01, "step": 0, "seed": 3}


def test_float16_train_graph_runs_on_the_reference_evaluator(mlp_models):
    """onnxruntime's CPU provider has no float16 MatMul: the float16 training graph
    runs on onnx.reference and its loss is close to the float32 loss on the same
    (rounded) inputs, dropout masks included."""
    spec, cms = mlp_models
    values = _train_inputs(spec, cms["float32"])
    g16, g32 = cms["float16"].graphs["train"], cms["float32"].graphs["train"]
    f16 = feeds_for(g16, values)
    assert f16["x"].dtype == np.float16 and f16["W1"].dtype == np.float16 and f16["y"].dtype == np.int64
    out16 = dict(zip([o.name for o in g16.model.graph.output], reference_evaluator(g16.model).run(None, f16)))
    # float32 from the same float16-rounded values, so only the arithmetic differs
    out32 = Runner(g32.model)({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in f16.items()})
    assert out16["loss"].dtype == np.float16
    assert np.isfinite(out16["loss"])
    np.testing.assert_allclose(float(out16["loss"]), float(out32["loss"]), rtol=2e-2)
    assert float(out16["accuracy"]) == pytest.approx(float(out32["accuracy"]))


def test_float16_recurrent_eval_graph_runs_on_onnxruntime_as_on_the_reference_evaluator():
    """The checks' Runner made its onnxruntime session with the blocked-layout rewrite on, which
    crashes the process (a segmentation fault) on a float16 graph with a Scan: checking a float16
    LSTM killed the test run or `flowgrad gradcheck`. It turns off what training's sessions do."""
    spec = shrunk(os.path.join(ROOT, "models", "char_lstm.yaml"), extra=["train.optimizer={adam: {lr: 0.001, eps: 1.0e-4}}"])
    g = compile_spec(spec, dtype="float16", graphs=("eval",)).graphs["eval"]
    rng = np.random.default_rng(0)
    values = {**compile_spec(spec, graphs=()).initial_state(0), "x": rng.integers(0, 5, (3, 4)), "y": rng.integers(0, 5, (3, 4))}
    feeds = feeds_for(g, values)
    got = Runner(g.model)(feeds)
    want = dict(zip([o.name for o in g.model.graph.output], reference_evaluator(g.model).run(None, feeds)))
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=2e-3, err_msg=k)


def test_float16_sgd_step_is_finite_and_close():
    spec = shrunk(MLP, size=16, extra=["train.optimizer={sgd: {lr: 0.1, momentum: 0.9}}"])
    cm16 = compile_spec(spec, dtype="float16", graphs=("train",))
    cm32 = compile_spec(spec, dtype="float32", graphs=("train",))
    g16, g32 = cm16.graphs["train"], cm32.graphs["train"]
    f16 = feeds_for(g16, _train_inputs(spec, cm32))
    out16 = dict(zip([o.name for o in g16.model.graph.output], reference_evaluator(g16.model).run(None, f16)))
    out32 = Runner(g32.model)({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in f16.items()})
    for k, v in out32.items():
        assert np.all(np.isfinite(out16[k])), k
        if k.startswith("next/"):
            np.testing.assert_allclose(out16[k].astype(np.float32), v, rtol=2e-2, atol=2e-3, err_msg=k)


def test_float16_clip_norm_sums_squares_in_float32():
    """Gradients of a few hundred square past float16's largest value (65504): the norm
    was inf, the clip scale 0, and the step changed nothing. The norm is now taken in
    float32, and the clipped step matches float32's."""
    spec = shrunk(MLP, size=16, extra=["train.optimizer={sgd: {lr: 0.01}}", "train.clip_norm=1.0"])
    cm16 = compile_spec(spec, dtype="float16", graphs=("train",))
    cm32 = compile_spec(spec, dtype="float32", graphs=("train",))
    g16, g32 = cm16.graphs["train"], cm32.graphs["train"]
    values = _train_inputs(spec, cm32)
    values["x"] = np.asarray(values["x"]) * 300.0  # first-layer gradients of a few hundred
    f16 = feeds_for(g16, values)
    out16 = dict(zip([o.name for o in g16.model.graph.output], reference_evaluator(g16.model).run(None, f16)))
    out32 = Runner(g32.model)({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in f16.items()})
    moved = out16["next/W1"].astype(np.float32) - f16["W1"].astype(np.float32)
    assert np.abs(moved).max() > 0, "the clipped float16 step changed nothing"
    np.testing.assert_allclose(out16["next/W1"].astype(np.float32), out32["next/W1"], rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("optimizer", ["{adam: {lr: 0.001}}", "{rmsprop: {lr: 0.001}}", "{adagrad: {lr: 0.01}}"])
def test_float16_adaptive_optimizer_is_refused_with_a_hint(optimizer):
    """eps (1e-8, 1e-10) rounds to 0 in float16, so a zero gradient would step by 0/0 = NaN:
    pure float16 Adam is refused at compile time, pointing at mixed precision."""
    from spec.errors import SpecError

    spec = shrunk(MLP, size=16, extra=[f"train.optimizer={optimizer}"])
    with pytest.raises(SpecError) as e:
        compile_spec(spec, dtype="float16", graphs=("train",))
    assert "rounds to 0" in str(e.value) and "mixed_precision" in e.value.hint
    assert e.value.loc is not None
    # check is compile's dry run: it said "spec OK" for what compile then refused
    from compiler.training import check_spec

    with pytest.raises(SpecError, match="rounds to 0"):
        check_spec(spec, "float16")


@pytest.mark.parametrize("optimizer, rate", [("{adam: {lr: 0.01, eps: 1.0e-4, beta2: 0.9999}}", "beta2"),
                                             ("{adamw: {lr: 0.01, eps: 1.0e-4, beta1: 0.9999}}", "beta1"),
                                             ("{rmsprop: {lr: 0.01, eps: 1.0e-4, alpha: 0.9999}}", "alpha")])
def test_float16_decay_rate_that_rounds_to_1_is_refused(optimizer, rate):
    """float16 rounds 0.9999 to 1: Adam's beta2 then made every bias correction 0, and a pure
    float16 run trained for its epochs without moving a weight (beta1: NaN; RMSProp's alpha: its
    mean square stayed 0), where float32 trains. It is refused as eps that rounds to 0 is."""
    from compiler.training import check_spec
    from spec.errors import SpecError

    spec = shrunk(MLP, size=16, extra=[f"train.optimizer={optimizer}"])
    with pytest.raises(SpecError, match=f"{rate}=0.9999 is 1 in float16") as e:
        check_spec(spec, "float16")
    assert "mixed_precision" in e.value.hint and "0.9995" in e.value.hint and e.value.loc is not None
    compile_spec(spec, dtype="float32", graphs=("train",))
    compile_spec(shrunk(MLP, size=16, extra=[f"train.optimizer={optimizer.replace('0.9999', '0.9995')}"]),
                 dtype="float16", graphs=("train",))


def test_float16_lr_that_rounds_to_0_is_refused():
    """The step's lr input is float16, which rounds 1e-8 to 0: a --dtype float16 run trained
    for all its epochs without moving a weight, without a word."""
    from compiler.training import check_spec
    from spec.errors import SpecError

    spec = shrunk(MLP, size=16, extra=["train.optimizer={sgd: {lr: 1.0e-8}}"])
    with pytest.raises(SpecError, match="lr=1e-08 is 0 in float16: no step would move a weight") as e:
        check_spec(spec, "float16")
    assert "mixed_precision" in e.value.hint and e.value.loc is not None
    check_spec(spec, "float32")
    check_spec(shrunk(MLP, size=16, extra=["train.optimizer={sgd: {lr: 1.0e-7}}"]), "float16")


def test_float16_refusal_of_an_objectives_optimizer_points_at_it():
    """A GAN's objectives each write their optimizer: the refusal of Adam's eps in float16
    pointed at the train section's first line (data:), the parent that locate gives of the
    train.optimizer the spec does not have."""
    from compiler.training import check_spec
    from spec import load_spec
    from spec.errors import SpecError

    path = os.path.join(ROOT, "models", "gan.yaml")
    lines = open(path).read().splitlines()
    with pytest.raises(SpecError, match="rounds to 0") as e:
        check_spec(load_spec(path), "float16")
    assert lines[e.value.loc.line - 1].lstrip().startswith("discriminator:")
    assert lines[e.value.loc.line - 1][e.value.loc.col - 1:].startswith("{adam:")


def test_same_spec_float64_matches_float32(mlp_models):
    """The float64 graphs compute what the float32 ones do, more precisely."""
    spec, cms = mlp_models
    values = _train_inputs(spec, cms["float32"])
    for kind in ("train", "eval", "infer"):
        g64, g32 = cms["float64"].graphs[kind], cms["float32"].graphs[kind]
        out64 = Runner(g64.model)(feeds_for(g64, values))
        out32 = Runner(g32.model)(feeds_for(g32, values))
        for k, v in out32.items():
            assert out64[k].dtype == (np.float64 if v.dtype == np.float32 else v.dtype), k
            if v.dtype.kind == "f":
                np.testing.assert_allclose(out64[k], v, rtol=1e-4, atol=1e-5, err_msg=f"{kind}:{k}")
            else:
                np.testing.assert_array_equal(out64[k], v)


def test_float16_constants_in_hand_built_graph():
    """A float16 graph built by hand: Python numbers become float16 constants, and it emits and runs."""
    g = Graph("float16")
    x = g.add_input("x", "float16", (4,))
    y = g.apply("log", 1.0 - g.apply("sigmoid", x * 2.0)) + 0.5
    model = emit_model(g, [("x", x)], [("y", y)])
    assert float_types_in(model) == {"float16"}
    fx = np.asarray([-3.0, 0.0, 1.0, 3.0], dtype=np.float16)
    (got,) = reference_evaluator(model).run(None, {"x": fx})
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), -np.logaddexp(0, 2 * fx.astype(np.float64)) + 0.5, rtol=5e-3, atol=5e-3)


def test_float64_products_by_constants_stay_float64_on_onnxruntime():
    """onnxruntime's MatMulScaleFusion stores a product's constant factor as a float32 attribute:
    0.3 * (a @ b) in a float64 graph came out 4e-8 off, enough to spoil float64 gradient checks.
    Sessions of float64 models (the checker's and training's) leave that rewrite out."""
    from onnx import helper

    from runtime.session import make_session

    double = TensorProto.DOUBLE
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Mul", ["m", "c"], ["y"])], "scaled",
        [helper.make_tensor_value_info("a", double, [4, 4]), helper.make_tensor_value_info("b", double, [4, 4])],
        [helper.make_tensor_value_info("y", double, [4, 4])], [helper.make_tensor("c", double, [], [0.3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 4)), rng.random((4, 4))
    want = 0.3 * (a @ b)
    assert Runner(model).backend == "onnxruntime"
    np.testing.assert_allclose(Runner(model)({"a": a, "b": b})["y"], want, rtol=1e-14)
    np.testing.assert_allclose(make_session(model).run(None, {"a": a, "b": b})[0], want, rtol=1e-14)


def test_every_onnxruntime_session_leaves_out_the_shared_rewrites(tmp_path):
    """benchmarks/compare.py's MatMul probe and benchmarks/gan_coverage.py made their own
    sessions with every onnxruntime rewrite on: a float64 export's scaled products came out with
    float32's error there, and a float16 one with a Scan could crash the process. Each session
    outside runtime/session.py (make_session's home) passes compiler.emit's
    ort_disabled_optimizers, or is made by make_session."""
    import ast
    import importlib.util
    from pathlib import Path

    from onnx import helper

    root = Path(ROOT)
    sources = [root / "cli.py", *sorted(p for d in ("spec", "compiler", "runtime", "benchmarks") for p in (root / d).rglob("*.py"))]
    plain = []
    for path in sources:
        if path == root / "runtime" / "session.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "InferenceSession" \
                    and not any(k.arg == "disabled_optimizers" for k in node.keywords):
                plain.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not plain, f"onnxruntime sessions without the shared disabled_optimizers: {plain}"

    double = TensorProto.DOUBLE  # the float64 product by a constant of the test above, from a file
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["m"]), helper.make_node("Mul", ["m", "c"], ["y"])], "scaled",
        [helper.make_tensor_value_info("a", double, [4, 4]), helper.make_tensor_value_info("b", double, [4, 4])],
        [helper.make_tensor_value_info("y", double, [4, 4])], [helper.make_tensor("c", double, [], [0.3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), tmp_path / "m.onnx")
    spec = importlib.util.spec_from_file_location("gan_coverage", root / "benchmarks" / "gan_coverage.py")
    gan_coverage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gan_coverage)
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 4)), rng.random((4, 4))
    got = gan_coverage.session(str(tmp_path / "m.onnx")).run(None, {"a": a, "b": b})[0]
    np.testing.assert_allclose(got, 0.3 * (a @ b), rtol=1e-14)


def test_a_parameter_dtype_other_than_the_float_type_is_refused_not_ignored():
    """params.<p>.dtype float64 (or float16) in a float32 model was silently stored and trained
    as float32; it is a located error, and fine where it is the type compiled for."""
    from compiler.training import compile_spec
    from spec.errors import SpecError

    def spec(dtype, train_dtype=None):
        return spec_from_dict({"flowgrad": 1, "name": "p", "inputs": {"x": {"shape": ["N", 4]}},
                               "params": {"W": {"shape": [4, 2], "init": "glorot_uniform", "dtype": dtype}},
                               "loss": "mean(x @ W)",
                               "train": {"optimizer": {"sgd": {"lr": 0.1}}, **({"dtype": train_dtype} if train_dtype else {})}})

    for dtype in ("float64", "float16"):
        with pytest.raises(SpecError, match=f"parameter 'W' declares dtype {dtype}"):
            compile_spec(spec(dtype))
    assert compile_spec(spec("float64", "float64")).initial_state(0)["W"].dtype == np.float64
    assert compile_spec(spec("float32", "float64")).initial_state(0)["W"].dtype == np.float64
    mixed = spec("float16")
    mixed.train["mixed_precision"] = "float16"
    with pytest.raises(SpecError, match="stored in the graphs' float type, float32"):  # master weights stay float32
        compile_spec(mixed)


def test_float64_training_of_a_convnet_says_which_kernel_is_missing(tmp_path):
    """onnxruntime's CPU provider has no float64 Conv: the hint spoke of mixed precision."""
    from runtime.api import train
    from spec.errors import FlowgradError

    spec = shrunk(os.path.join(ROOT, "models", "convnet.yaml"), extra=["dims.K=10"])  # the digits have 10 classes
    with pytest.raises(FlowgradError, match="Conv") as e:
        train(spec, run_dir=str(tmp_path / "r"), steps=1, threads=1, device="cpu", dtype="float64")
    assert "no float64 kernel" in e.value.hint and "mixed_precision" not in e.value.hint


def test_a_node_no_cuda_provider_takes_is_named_as_a_missing_kernel():
    """A float64 convnet's CUDA session fails in its setup (no provider takes float64 ConvTranspose);
    onnxruntime's words were passed on as a C++ assertion with a hint about class ids."""
    from runtime.train import _step_failed

    said = ("[ONNXRuntimeError] : 1 : FAIL : Exception during initialization: /onnxruntime_src/onnxruntime/core/"
            "optimizer/transformer_memcpy.cc:253 bool onnxruntime::TransformerMemcpyImpl::IsNodeCompatibleWithProvider"
            "(const onnxruntime::Node&) const !node_provider_type.empty() was false. Provider type for ConvTranspose "
            "node with name '' is not set.")
    e = _step_failed(RuntimeError(said), "training step 0 (epoch 1)", "runs/r", "float64")
    assert str(e).startswith("onnxruntime cannot run the training step 0 (epoch 1): no provider has a kernel for its "
                             "ConvTranspose node in these types\n")
    assert "no float64 kernel" in e.hint


def test_gan_coverage_sessions_take_its_threads(tmp_path, monkeypatch):
    """benchmarks/gan_coverage.py's --threads reached the training runs but not its two
    sessions: session(path) was called without it, so they took every core."""
    import importlib.util
    import sys
    from pathlib import Path

    from runtime import session as runtime_session

    spec = importlib.util.spec_from_file_location("gan_coverage", Path(ROOT) / "benchmarks" / "gan_coverage.py")
    gan_coverage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gan_coverage)
    made = []

    class Fake:
        def run(self, names, feeds):
            if "count" in feeds:
                return [np.zeros((40, 64), np.float32)]
            probs = np.eye(10, dtype=np.float32)[np.arange(40) % 10]
            return [probs, probs.argmax(axis=1)]

    def make_session(path, device, threads=None):
        made.append(threads)
        return Fake()

    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "result.json").write_text('{"best": {"valid_accuracy": 0.9}}')
    monkeypatch.setattr(gan_coverage, "ensure_run", lambda *a: None)
    monkeypatch.setattr(gan_coverage, "flowgrad", lambda *a: "")
    monkeypatch.setattr(runtime_session, "make_session", make_session)
    monkeypatch.setattr(sys, "argv", ["gan_coverage.py", "--gan", str(tmp_path / "gan"), "--classifier",
                                      str(tmp_path / "clf"), "--threads", "3", "--json"])
    with pytest.raises(SystemExit):
        gan_coverage.main()
    assert made == [3, 3]


def test_a_float16_count_past_65504_is_refused_where_numel_is_written(tmp_path):
    """numel(w) of a [300, 300] parameter in a --dtype float16 compile was the constant inf,
    without a word (a loss of sum(...) * numel(w) came out -inf). It is refused at the call,
    with float32 counting as the hint; float32 keeps the count."""
    from spec.errors import FlowgradError

    text = """flowgrad: 1
name: count
dims: {A: 300}
inputs:
  x: {shape: [N, A]}
params:
  w: {shape: [A, A], init: ones}
graph:
  y: sum(x * w[0, :]) * numel(w)
loss: mean(y)
train:
  optimizer: {sgd: {lr: 0.1}}
"""
    path = tmp_path / "count.yaml"
    path.write_text(text)
    with pytest.raises(FlowgradError) as e:
        compile_spec(load_spec(str(path)), dtype="float16", graphs=("train",))
    assert str(e.value).startswith(f"{path}:9:{text.splitlines()[8].index('numel(w)') + 7}: numel: ") and \
        "numel: its argument [300, 300] has 90,000 entries, beyond the range of float16 (up to 65504)" in str(e.value), str(e.value)
    assert "numel(..., dtype='float32')" in e.value.hint  # (not 'x', which this spec's input is called)
    compile_spec(load_spec(str(path)), dtype="float32", graphs=("train",))


def test_float16_batch_norm_running_variance_over_more_than_65504_values_is_finite():
    """batch_norm's running variance takes n / (n - 1) of its per-channel count: 20 images of
    64 x 64 give 81,920 values a channel, inf in float16, and inf / inf made every running
    variance NaN (eval then normalised by NaN). The ratio is float32 now."""
    spec = spec_from_dict(yaml.safe_load("""flowgrad: 1
name: bn
dims: {C: 2, H: 64, W: 64}
inputs:
  x: {shape: [N, C, H, W]}
params:
  w: {shape: [C], init: ones}
graph:
  y: batch_norm(x) * w[None, :, None, None]
loss: mean(y)
train:
  optimizer: {sgd: {lr: 0.1}}
"""))
    cm16 = compile_spec(spec, dtype="float16", graphs=("train",))
    cm32 = compile_spec(spec, dtype="float32", graphs=("train",))
    x = np.random.default_rng(0).normal(size=(20, 2, 64, 64)) * 0.1
    values = {**cm32.initial_state(0), "x": x, "lr": 0.1, "step": 0}
    g16, g32 = cm16.graphs["train"], cm32.graphs["train"]
    out16 = dict(zip([o.name for o in g16.model.graph.output], reference_evaluator(g16.model).run(None, feeds_for(g16, values))))
    out32 = Runner(g32.model)(feeds_for(g32, values))
    var = [k for k in out32 if k.startswith("next/") and k.endswith("running_var")]
    assert var
    for k in var:
        np.testing.assert_allclose(out16[k].astype(np.float32), out32[k], rtol=2e-3, err_msg=k)
