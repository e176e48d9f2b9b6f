"""Mixed precision (train.mixed_precision): the step computes in float16 while parameters
and optimizer state stay float32, the loss is scaled dynamically, and a step whose
gradients overflow changes nothing but the scale."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from compiler.check import Runner, reference_evaluator
from compiler.training import compile_spec
from spec import load_spec
from spec.errors import KEYWORDS, FlowgradError, SpecError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp.yaml")
TINY = """flowgrad: 1
name: tiny
dims: {D: 8, H: 16, C: 3}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
graph:
  h: relu(dense(x, H))
  logits: dense(h, C)
loss: cross_entropy(logits, y)
metrics:
  accuracy: mean(argmax(logits, axis=-1) == y)
train:
  optimizer: OPTIMIZER
  mixed_precision: MIXED
  l2: 0.001
"""


def tiny(tmp_path, mixed="float16", optimizer="{adam: {lr: 0.01}}"):
    """The tiny spec; mixed=None leaves mixed_precision out."""
    text = TINY.replace("OPTIMIZER", optimizer)
    text = text.replace("MIXED", mixed) if mixed else text.replace("  mixed_precision: MIXED\n", "")
    path = tmp_path / f"tiny_{bool(mixed)}.yaml"
    path.write_text(text)
    return load_spec(str(path))


def batch(seed=0, n=16):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 8)).astype(np.float32), "y": rng.integers(0, 3, n)}


def run_steps(cm, state, data, steps, runner=None, first_step=0):
    g = cm.graphs["train"]
    runner = runner or Runner(g.model)
    outs = []
    for step in range(first_step, first_step + steps):
        control = {"lr": np.float32(0.01), "step": np.int64(step)}
        out = runner({i.name: np.asarray(state[i.name] if i.name in state else {**data, **control}[i.name], dtype=i.dtype)
                      for i in g.inputs})
        state = {**state, **{k[len("next/"):]: v for k, v in out.items() if k.startswith("next/")}}
        outs.append(out)
    return state, outs


def test_the_step_computes_in_float16_on_float32_weights(tmp_path):
    cm = compile_spec(tiny(tmp_path))
    g = cm.graphs["train"]
    assert {i.dtype for i in g.inputs if i.role in ("param", "state")} == {"float32"}
    assert {o.dtype for o in g.outputs if o.role in ("next", "loss")} == {"float32"}
    model = onnx.shape_inference.infer_shapes(g.model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    products = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert products and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in products if n.output[0] in types)
    # evaluation and deployment stay float32
    assert {i.dtype for i in cm.graphs["eval"].inputs if i.role == "param"} == {"float32"}
    assert cm.initial_state(0)["loss_scale/main"] == 2.0 ** 15


@pytest.mark.parametrize("compute", ["float16", "bfloat16"])
def test_training_in_mixed_precision_learns_and_matches_the_reference_evaluator(tmp_path, compute):
    """(onnxruntime's CPU provider has no bfloat16 products: Runner runs bfloat16 on the reference.)"""
    cm = compile_spec(tiny(tmp_path, mixed=compute))
    data = batch()
    state, outs = run_steps(cm, cm.initial_state(0), data, 30)
    losses = [float(o["loss"]) for o in outs]
    assert losses[-1] < 0.6 * losses[0]
    assert all(np.isfinite(losses))
    assert float(state["loss_scale_steps/main"]) == 30  # no overflow: every step counted
    g = cm.graphs["train"]
    feeds = {i.name: np.asarray(state[i.name] if i.name in state else {**data, "lr": 0.01, "step": 30}[i.name], dtype=i.dtype)
             for i in g.inputs}
    ref = dict(zip([o.name for o in g.model.graph.output], reference_evaluator(g.model).run(None, feeds)))
    ort = Runner(g.model)(feeds)
    # float16 rounding differs between the two (onnxruntime widens some ops internally): an
    # Adam step moves a weight by at most lr = 0.01, and they agree to half of that
    for k in ort:
        np.testing.assert_allclose(ref[k], ort[k], rtol=5e-3, atol=5e-3, err_msg=k)


def test_mixed_precision_update_is_close_to_the_float32_one(tmp_path):
    """One SGD step: the float16 arithmetic moves the float32 weights by nearly what float32 does."""
    mixed = compile_spec(tiny(tmp_path, optimizer="{sgd: {lr: 0.5}}"))
    plain = compile_spec(tiny(tmp_path, mixed=None, optimizer="{sgd: {lr: 0.5}}"))
    state = mixed.initial_state(0)
    s_mixed, _ = run_steps(mixed, state, batch(), 1)
    s_plain, _ = run_steps(plain, {k: v for k, v in state.items() if not k.startswith("loss_scale")}, batch(), 1)
    for name in plain.params:
        moved = s_plain[name] - state[name]
        assert np.abs(moved).max() > 0
        np.testing.assert_allclose(s_mixed[name] - state[name], moved, rtol=0.02, atol=2e-3 * np.abs(moved).max(), err_msg=name)


def test_an_overflowing_step_changes_nothing_and_halves_the_scale(tmp_path):
    cm = compile_spec(tiny(tmp_path))
    state, _ = run_steps(cm, cm.initial_state(0), batch(), 3)
    # a scale beyond float16's range (65504) makes every gradient infinite
    state["loss_scale/main"] = np.float32(2.0 ** 40)
    after, (out,) = run_steps(cm, state, batch(), 1, first_step=3)
    assert np.isnan(out["loss"])  # reported as skipped: the runtime counts it as an overflow
    for name, value in state.items():
        if not name.startswith("loss_scale"):
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert float(after["loss_scale/main"]) == 2.0 ** 39
    assert float(after["loss_scale_steps/main"]) == 0
    # and training goes on from there
    after["loss_scale/main"] = np.float32(1024.0)
    again, (out,) = run_steps(cm, after, batch(), 1, first_step=4)
    assert float(again["loss_scale_steps/main"]) == 1
    assert not np.array_equal(again["h.W"], after["h.W"])


def test_an_overflowing_step_leaves_batch_norms_running_averages(tmp_path):
    """A skipped step changes nothing, batch_norm's running averages included (they took the
    skipped batch's statistics, which are infinite where its activations overflowed float16)."""
    path = tmp_path / "bn.yaml"
    path.write_text(TINY.replace("  h: relu(dense(x, H))", "  h: relu(batch_norm(dense(x, H)))")
                    .replace("OPTIMIZER", "{adam: {lr: 0.01}}").replace("MIXED", "float16"))
    cm = compile_spec(load_spec(str(path)))
    state, _ = run_steps(cm, cm.initial_state(0), batch(), 3)
    # a scale beyond float16's range (65504) makes every gradient infinite
    state["loss_scale/main"] = np.float32(2.0 ** 40)
    after, (out,) = run_steps(cm, state, batch(1), 1, first_step=3)
    assert np.isnan(out["loss"])
    for name, value in state.items():
        if not name.startswith("loss_scale"):
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    # a step that is kept moves them
    kept, (out,) = run_steps(cm, {**after, "loss_scale/main": np.float32(1024.0)}, batch(2), 1, first_step=4)
    assert np.isfinite(out["loss"])
    for name in ("h.batch_norm2.running_mean", "h.batch_norm2.running_var"):
        assert not np.array_equal(kept[name], after[name]), name


def test_the_scale_grows_after_growth_interval_finite_steps_up_to_its_maximum(tmp_path):
    cm = compile_spec(tiny(tmp_path, mixed="{compute: float16, init_scale: 4, growth_interval: 3, max_scale: 16}"))
    state = cm.initial_state(0)
    scales = []
    for k in range(12):
        state, _ = run_steps(cm, state, batch(), 1, first_step=k)
        scales.append(float(state["loss_scale/main"]))
    assert scales == [4, 4, 8, 8, 8, 16, 16, 16, 16, 16, 16, 16]


def test_mixed_precision_trains_like_float32(tmp_path):
    """The digits MLP through the training loop: the same accuracy as float32 after 5 epochs."""
    from runtime.checkpoint import load_checkpoint
    from runtime.train import TrainOptions, train

    accuracy = {}
    for mixed in ("float16", None):
        extra = [f"train.mixed_precision={mixed}"] if mixed else []
        spec = load_spec(MLP, ["train.epochs=5", "dims.H=64"] + extra)
        result = train(spec, TrainOptions(names=KEYWORDS, run_dir=str(tmp_path / f"run_{mixed}"), progress=False, device="cpu"))
        accuracy[mixed] = result.final["valid_accuracy"]
    assert accuracy["float16"] > 0.85 and abs(accuracy["float16"] - accuracy[None]) < 0.02, accuracy
    state, _ = load_checkpoint(str(tmp_path / "run_float16" / "checkpoint.npz"))
    assert state["W1"].dtype == np.float32 and float(state["loss_scale/main"]) > 0


def test_mixed_precision_with_float16_master_weights_is_a_located_error(tmp_path):
    with pytest.raises(SpecError) as e:
        compile_spec(tiny(tmp_path), dtype="float16")
    assert "float32 master weights" in str(e.value) and e.value.loc is not None and e.value.loc.line == 15
    from compiler.training import check_spec  # check is compile's dry run: it passed this

    with pytest.raises(SpecError, match="float32 master weights"):
        check_spec(tiny(tmp_path), "float16")


def test_mixed_precision_refuses_gradient_accumulation(tmp_path):
    from runtime.train import TrainOptions, train

    with pytest.raises(FlowgradError) as err:
        train(tiny(tmp_path), TrainOptions(names=KEYWORDS, run_dir=str(tmp_path / "run"), progress=False, accumulate=2))
    assert err.value.message == "accumulate does not work with train.mixed_precision"
    # (it named no place, where the spec turns mixed precision on)
    assert err.value.loc is not None and err.value.loc.file.endswith("tiny_True.yaml") and err.value.loc.line == 15


def test_bfloat16_trains_the_digits_mlp_on_the_cpu(tmp_path):
    """(It once stopped with onnxruntime's NOT_IMPLEMENTED: the CPU provider has no bfloat16 Gemm.)"""
    from runtime.train import TrainOptions, train

    spec = load_spec(MLP, ["train.mixed_precision=bfloat16", "train.epochs=2", "dims.H=64"])
    result = train(spec, TrainOptions(names=KEYWORDS, run_dir=str(tmp_path / "run"), progress=False, device="cpu"))
    assert result.final["valid_accuracy"] > 0.7, result.final


def test_a_stateful_language_model_carries_its_state_in_mixed_precision():
    """The carried LSTM state is a float32 buffer that the float16 step reads through a
    cast: its next/ outputs keep the buffers' names (they once came out as next/None)."""
    from runtime.bench import real_batch
    from runtime.trainer import Trainer

    spec = load_spec(os.path.join(ROOT, "models", "char_lstm_stateful.yaml"),
                     ["train.mixed_precision=float16", "dims.H=16", "dims.E=8", "train.batch_size=4"])
    cm = compile_spec(spec)
    buffers = sorted(n for n, p in cm.params.items() if p.kind == "buffer")
    nexts = {o.name for o in cm.graphs["train"].outputs if o.role == "next"}
    assert buffers and {f"next/{n}" for n in buffers} <= nexts and "next/None" not in nexts
    trainer = Trainer(cm, "cpu", seed=0)
    data = real_batch(spec, cm, 4, 0)
    losses = [trainer.train_step("main", data, lr=1e-2, step=s)["loss"] for s in range(3)]
    assert np.all(np.isfinite(losses))
    state = trainer.state_numpy()
    assert all(state[n].dtype == np.float32 and np.any(state[n] != 0) for n in buffers)



UNBOUNDED_CELL = """flowgrad: 1
name: sums
dims: {H: 3, K: 2}
inputs:
  x: {shape: [N, T, H]}
  y: {shape: [N, T], dtype: int64}
blocks:
  step:
    in: [x_t, h]
    graph:
      h2: h + x_t
    out: [h2]
graph:
  hs: scan(step, over=x, init=[zeros(N, H)], stateful=true)
  logits: dense(hs, K)
loss: cross_entropy(logits, y)
train: {batch_size: 2, shuffle: false, optimizer: {adam: {lr: 0.01}}, mixed_precision: float16}
"""


def test_a_carried_state_that_overflows_is_held_and_one_that_does_not_goes_on():
    """A stateful scan's state under mixed precision: a batch that overflows float16 in the
    state (a running sum past 65504) is skipped, and its infinite state was carried into every
    later batch, which then all overflowed until the run stopped; it is now held. A step skipped
    for its gradients alone still carries its finite state on with the data."""
    from spec import spec_from_text

    cm = compile_spec(spec_from_text(UNBOUNDED_CELL, "sums.yaml"))
    (buffer,) = [n for n, p in cm.params.items() if p.kind == "buffer"]
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(2, 4, 3)).astype(np.float32), "y": rng.integers(0, 2, (2, 4))}
    state, _ = run_steps(cm, cm.initial_state(0), data, 2)
    assert np.all(np.isfinite(state[buffer])) and np.any(state[buffer] != 0)
    after, (out,) = run_steps(cm, state, {**data, "x": np.full((2, 4, 3), 3e4, np.float32)}, 1, first_step=2)
    assert np.isnan(out["loss"])
    np.testing.assert_array_equal(after[buffer], state[buffer])
    # gradients overflowing alone (a scale beyond float16's range): skipped, the state goes on
    after, (out,) = run_steps(cm, {**state, "loss_scale/main": np.float32(2.0 ** 40)}, data, 1, first_step=2)
    assert np.isnan(out["loss"])
    np.testing.assert_allclose(after[buffer], state[buffer] + data["x"].sum(1), rtol=1e-2)

CONV_NOISE = """flowgrad: 1
name: conv_noise
dims: {C: 4, K: 3}
inputs:
  x: {shape: [N, 1, 6, 6]}
  y: {shape: [N], dtype: int64}
graph:
  c: conv2d(x, C, 3, padding=1, act=relu)
  p: max_pool2d(c, 2)
  f: flatten(p) + 0.1 * normal(zeros(N, 36))
  logits: dense(f, K)
loss: cross_entropy(logits, y)
train:
  optimizer: {adam: {lr: 0.01}}
  mixed_precision: MIXED
"""


@pytest.mark.parametrize("compute", ["float16", "bfloat16"])
def test_ops_without_the_narrow_type_run_in_float32_between_casts(tmp_path, compute):
    """ONNX's Conv and MaxPool take no bfloat16 at the opset: the step casts around them and
    stays standard ONNX (strict shape inference); float16 needs none. A normal draw's Cos runs
    in float32 in both (the draw is float32's, rounded to the half type)."""
    path = tmp_path / "conv_noise.yaml"
    path.write_text(CONV_NOISE.replace("MIXED", compute))
    cm = compile_spec(load_spec(str(path)))
    g = cm.graphs["train"]
    model = onnx.shape_inference.infer_shapes(g.model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    narrow = getattr(onnx.TensorProto, compute.upper())
    widened = {"Conv", "MaxPool", "Cos"}
    for node in model.graph.node:
        if node.op_type in widened:
            want = onnx.TensorProto.FLOAT if compute == "bfloat16" or node.op_type == "Cos" else narrow
            assert types[node.input[0]] == want, (node.op_type, types[node.input[0]])
    assert any(types.get(n.output[0]) == narrow for n in model.graph.node if n.op_type in ("Gemm", "MatMul"))
    rng = np.random.default_rng(0)
    data = {"x": rng.uniform(size=(4, 1, 6, 6)).astype(np.float32), "y": rng.integers(0, 3, 4)}
    state = cm.initial_state(0)
    feeds = {i.name: np.asarray(state[i.name] if i.name in state else {**data, "lr": 0.01, "step": 0, "seed": 0}[i.name], dtype=i.dtype)
             for i in g.inputs}
    out = dict(zip([o.name for o in g.model.graph.output], reference_evaluator(g.model).run(None, feeds)))
    assert np.isfinite(out["loss"]) and float(out["next/loss_scale_steps/main"]) == 1


@pytest.mark.parametrize("compute", ["float16", "bfloat16"])
def test_overlapping_max_pooling_trains_in_mixed_precision_on_onnxruntime(tmp_path, compute):
    """Max pooling whose windows overlap (stride 1, padding 1) scatters its gradient with a
    ScatterElements that adds, which onnxruntime's CPU provider has no float16 kernel for:
    the first float16 step failed ('MLFloat16 data type is not supported with ScatterElements
    opset 16 when reduction is 'add''). It adds in float32 between casts, as scatter_add does,
    and the steps agree with the reference evaluator's."""
    from runtime.trainer import Trainer

    path = tmp_path / "conv_overlap.yaml"
    path.write_text(CONV_NOISE.replace("MIXED", compute).replace("max_pool2d(c, 2)", "max_pool2d(c, 3, stride=1, padding=1)")
                    .replace(" + 0.1 * normal(zeros(N, 36))", ""))
    cm = compile_spec(load_spec(str(path)))
    rng = np.random.default_rng(0)
    data = {"x": rng.uniform(size=(4, 1, 6, 6)).astype(np.float32), "y": rng.integers(0, 3, 4)}
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    losses = [trainer.train_step("main", data, lr=0.01, step=s)["loss"] for s in range(3)]
    assert np.all(np.isfinite(losses))
    _, outs = run_steps(cm, cm.initial_state(0), data, 3, reference_evaluator_runner(cm))
    np.testing.assert_allclose(losses, [float(o["loss"]) for o in outs], rtol=0.02)


def reference_evaluator_runner(cm):
    g = cm.graphs["train"]
    ref = reference_evaluator(g.model)
    names = [o.name for o in g.model.graph.output]
    return lambda feeds: dict(zip(names, ref.run(None, feeds)))


def test_bfloat16_trains_on_onnxruntime_where_kernels_are_missing(tmp_path):
    """onnxruntime's CPU provider has almost no bfloat16 kernels (Gemm, Relu, ArgMax; Softmax's
    function body): the session widens the nodes it cannot place to float32 between Casts,
    one op type at a time, and the steps agree with the reference evaluator's bfloat16 ones."""
    from runtime.session import make_session
    from runtime.trainer import Trainer

    cm = compile_spec(tiny(tmp_path, mixed="bfloat16"))
    make_session(cm.graphs["train"].model, "cpu", 1)  # would raise NOT_IMPLEMENTED (Gemm) unwidened
    data = batch()
    trainer = Trainer(cm, "cpu", threads=1)
    losses = [trainer.train_step("main", data, lr=0.01, step=s)["loss"] for s in range(30)]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.6 * losses[0]
    _, outs = run_steps(cm, cm.initial_state(0), data, 30)
    reference = [float(o["loss"]) for o in outs]
    np.testing.assert_allclose(losses, reference, rtol=0.05, atol=0.02)


def test_float16_attention_masks_with_a_finite_constant():
    """-1e9, attention's mask value, is -inf in float16: a row masked whole would be NaN."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy warns when a constant overflows
        cm = compile_spec(load_spec(os.path.join(ROOT, "models", "dates_attention.yaml"),
                                    ["train.mixed_precision=float16"]))
    constants = [onnx.numpy_helper.to_array(t) for t in cm.graphs["train"].model.graph.initializer]
    assert all(np.all(np.isfinite(c)) for c in constants if c.dtype.kind == "f")



def test_a_spec_number_beyond_float16_saturates_in_the_half_step(tmp_path):
    """A mask value written in a spec, where(m, logits, -1e9), became -inf in a float16 step (with
    NumPy's overflow warning printed): a row masked whole gave NaN. It saturates to -65504."""
    import warnings

    path = tmp_path / "masked.yaml"
    path.write_text(TINY.replace("  logits: dense(h, C)", "  logits: where(x[:, :3] > -5.0, dense(h, C), -1e9)")
                    .replace("OPTIMIZER", "{adam: {lr: 0.01}}").replace("MIXED", "float16"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        cm = compile_spec(load_spec(str(path)), graphs=("train",))
    halves = [onnx.numpy_helper.to_array(t) for t in cm.graphs["train"].model.graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT16]
    assert any(np.any(c == np.float16(-65504)) for c in halves)
    assert all(np.all(np.isfinite(c)) for c in halves)


def test_a_spec_number_beyond_bfloat16_saturates_in_the_bfloat16_step(tmp_path):
    """float32's lowest, -3.4e38, written as a mask value is beyond bfloat16's range (3.39e38):
    compiling the bfloat16 step ended in NumPy's ValueError 'data type bfloat16 not inexact', a
    traceback, where the number was to saturate as it does in float16."""
    import ml_dtypes

    path = tmp_path / "masked.yaml"
    path.write_text(TINY.replace("  logits: dense(h, C)", "  logits: where(x[:, :3] > -5.0, dense(h, C), -3.4e38)")
                    .replace("OPTIMIZER", "{adam: {lr: 0.01}}").replace("MIXED", "bfloat16"))
    cm = compile_spec(load_spec(str(path)), graphs=("train",))
    halves = [onnx.numpy_helper.to_array(t).view(ml_dtypes.bfloat16) if t.data_type == onnx.TensorProto.BFLOAT16
              else None for t in cm.graphs["train"].model.graph.initializer]
    halves = [c for c in halves if c is not None]
    lowest = -float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    assert any(np.any(c.astype(np.float64) == lowest) for c in halves)
    assert all(np.all(np.isfinite(c.astype(np.float64))) for c in halves)

# x * 1e5 written at the top of the graph, in a scan's step, and in a block called as a function
BEYOND_FLOAT16 = {
    "graph": """flowgrad: 1
name: big
dims: {D: 4, H: 6, C: 3}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
graph:
  logits: dense(relu(dense(x * 1e5, H)), C)
loss: cross_entropy(logits, y)
train:
  optimizer: {sgd: {lr: 0.1}}
""",
    "scan step": """flowgrad: 1
name: big
dims: {E: 4, H: 6, C: 3}
inputs:
  x: {shape: [N, T, E]}
  y: {shape: [N, T], dtype: int64}
blocks:
  step:
    in: [x_t, h]
    graph:
      h2: tanh(dense(x_t * 1e5, H) + h)
    out: [h2]
graph:
  hs: scan(step, over=x, init=[zeros(N, H)])
  logits: dense(hs, C)
loss: cross_entropy(logits, y)
train:
  optimizer: {sgd: {lr: 0.1}}
""",
    "block": """flowgrad: 1
name: big
dims: {D: 4, H: 6, C: 3}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
blocks:
  enc:
    in: [v]
    graph:
      e: relu(dense(v * 1e5, H))
    out: [e]
graph:
  logits: dense(enc(x), C)
loss: cross_entropy(logits, y)
train:
  optimizer: {sgd: {lr: 0.1}}
""",
}


def _onnx_constants(graph):
    """The float constants of an ONNX graph and of the graphs its nodes hold (a scan's step)."""
    out = [onnx.numpy_helper.to_array(t) for t in graph.initializer]
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                out.append(onnx.numpy_helper.to_array(a.t))
            out += [c for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
                    for c in _onnx_constants(sub)]
    return out


@pytest.mark.parametrize("where", list(BEYOND_FLOAT16))
def test_a_spec_number_beyond_float16_is_refused_in_a_float16_compile(tmp_path, where):
    """Compiled with --dtype float16 (not mixed precision), x * 1e5 became x * 65504 without a word:
    the saturation meant for a mixed-precision step's masks reached every half-type graph, the
    steps of its scans and its blocks too. The number is refused where it is written, as float32
    refuses 1e40; mixed precision still saturates it, and float32 keeps it."""
    from typer.testing import CliRunner

    from cli import app
    from compiler.training import check_spec

    text = BEYOND_FLOAT16[where]
    path = tmp_path / "big.yaml"
    path.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "1e5" in s)
    at = f"{path}:{line}:{text.splitlines()[line - 1].index('1e5') + 1}: "
    message = "the number 100000 is beyond the range of float16 (up to 65504)"
    for run in (lambda: compile_spec(load_spec(str(path)), "float16"), lambda: check_spec(load_spec(str(path)), "float16"),
                lambda: compile_spec(load_spec(str(path), ["train.dtype=float16"]))):
        with pytest.raises(FlowgradError) as e:
            run()
        assert str(e.value).startswith(at + message), str(e.value)
        assert "--dtype float32" in e.value.hint
    result = CliRunner().invoke(app, ["check", str(path), "--dtype", "float16"])
    assert result.exit_code == 1 and at + message in result.output.replace("\n", ""), result.output
    assert "Traceback" not in result.output

    cm = compile_spec(load_spec(str(path)))  # float32 holds it
    assert any(np.any(c == np.float32(1e5)) for c in _onnx_constants(cm.graphs["train"].model.graph))
    mixed = tmp_path / "mixed.yaml"  # a mixed-precision step saturates it, as it does a mask's -1e9
    mixed.write_text(text + "  mixed_precision: float16\n")
    cm = compile_spec(load_spec(str(mixed)), graphs=("train",))
    halves = [c for c in _onnx_constants(cm.graphs["train"].model.graph) if c.dtype == np.float16]
    assert any(np.any(c == np.float16(65504)) for c in halves)


def test_a_spec_number_beyond_a_tensor_cast_to_float16_is_refused(tmp_path):
    """In a float32 graph, cast(x, 'float16') * 1e5 was cast(x, 'float16') * 65504 without a word
    (the saturation of a mixed-precision step): it is refused at the number, with the hint to
    cast the tensor to the graph's type."""
    path = tmp_path / "cast.yaml"
    text = BEYOND_FLOAT16["graph"].replace("x * 1e5", "cast(cast(x, 'float16') * 1e5, 'float32')")
    path.write_text(text)
    with pytest.raises(FlowgradError) as e:
        compile_spec(load_spec(str(path)))
    assert str(e.value).startswith(f"{path}:8:{text.splitlines()[7].index('1e5') + 1}: the number 100000 is beyond the range of float16"), str(e.value)
    assert "cast the float16 tensor it is used with to float32 first" in e.value.hint


def test_batch_norm_running_statistics_update_in_mixed_precision(tmp_path):
    """The running mean and variance are float32 buffers that the float16 step reads through
    casts; they are updated as in float32 (they once were never updated: eval then used 0 and 1)."""
    from runtime.trainer import Trainer

    text = TINY.replace("  h: relu(dense(x, H))", "  h: relu(batch_norm(dense(x, H)))")
    steps = {}
    for mixed in ("float16", None):
        text_m = text.replace("MIXED", mixed) if mixed else text.replace("  mixed_precision: MIXED\n", "")
        path = tmp_path / f"bn_{mixed}.yaml"
        path.write_text(text_m.replace("OPTIMIZER", "{sgd: {lr: 0.01}}"))
        cm = compile_spec(load_spec(str(path)))
        buffers = sorted(n for n, p in cm.params.items() if p.kind == "buffer")
        assert len(buffers) == 2 and {f"next/{b}" for b in buffers} <= {o.name for o in cm.graphs["train"].outputs}
        trainer = Trainer(cm, "cpu", threads=1)
        for step in range(3):
            trainer.train_step("main", batch(step), 0.01, step)
        steps[mixed] = {b: trainer.state_numpy()[b] for b in buffers}
    for b in steps[None]:
        assert np.any(steps["float16"][b] != (0.0 if "mean" in b else 1.0)), b
        np.testing.assert_allclose(steps["float16"][b], steps[None][b], rtol=2e-2, atol=2e-3, err_msg=b)


@pytest.mark.parametrize("compute", ["float16", "bfloat16"])
def test_batch_norm_running_averages_move_in_float32_in_mixed_precision(tmp_path, compute):
    """The averages are float32 buffers and move in float32 (they were averaged in the half type,
    rounded to it each step: in bfloat16 a batch mean within momentum * half an ulp of the average
    never moved it, and after 60 steps on one batch the running means were up to 7% below the
    batch's). The batch statistics themselves are the half-precision step's (bfloat16 keeps 8 bits
    of each input: its variances are within 2% of float32's)."""
    from runtime.trainer import Trainer

    text = TINY.replace("  h: relu(dense(x, H))", "  h: relu(dense(batch_norm(x), H))")
    data = batch()
    data["x"] = (data["x"] * np.linspace(0.5, 3.0, 8) + np.linspace(-20.0, 20.0, 8)).astype(np.float32)
    final = {}
    for mixed in (compute, None):
        text_m = text.replace("MIXED", mixed) if mixed else text.replace("  mixed_precision: MIXED\n", "")
        path = tmp_path / f"bn_{mixed}.yaml"
        path.write_text(text_m.replace("OPTIMIZER", "{sgd: {lr: 1.0e-6}}"))
        trainer = Trainer(compile_spec(load_spec(str(path)), graphs=("train",)), "cpu", threads=1)
        for step in range(60):
            trainer.train_step("main", data, 1e-6, step)
        final[mixed] = trainer.state_numpy()
    for b in ("h.running_mean", "h.running_var"):
        np.testing.assert_allclose(final[compute][b], final[None][b], rtol=2e-2, err_msg=b)


def test_widening_works_per_scope_and_casts_each_value_once():
    """Hand-made graphs beyond what the compiler emits today: two Loop bodies that use one
    name with different types (only the bfloat16 Cos is widened), an op whose output type
    follows its input without a type variable of its own (cast back), and values read by
    several widened ops (cast once each; a widened op's output is rounded to bfloat16
    before the next reads it, as every reader sees it)."""
    from onnx import TensorProto as T
    from onnx import helper as h

    from compiler.emit import OPSET, widen_unsupported_types

    def vi(name, t, shape=(2,)):
        return h.make_tensor_value_info(name, t, list(shape))

    def checked(nodes, inputs, outputs, initializer=()):
        model = h.make_model(h.make_graph(nodes, "g", inputs, outputs, list(initializer)),
                             opset_imports=[h.make_opsetid("", OPSET)])
        count = widen_unsupported_types(model)
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        return count, model

    def body(name, t, op):
        return h.make_graph([h.make_node("Cast", ["outer"], ["v"], to=t), h.make_node(op, ["v"], ["w"]),
                             h.make_node("Identity", ["cond_in"], ["cond_out"]),
                             h.make_node("Cast", ["w"], ["res"], to=T.FLOAT)],
                            name, [vi("i", T.INT64, ()), vi("cond_in", T.BOOL, ())], [vi("cond_out", T.BOOL, ()), vi("res", T.FLOAT)])

    loops = [h.make_node("Cast", ["x"], ["outer"], to=T.FLOAT),
             h.make_node("Loop", ["M", "c"], ["a"], body=body("A", T.BFLOAT16, "Cos")),
             h.make_node("Loop", ["M", "c"], ["b"], body=body("B", T.FLOAT, "Identity"))]
    count, model = checked(loops, [vi("x", T.FLOAT)], [vi("a", T.FLOAT, (1, 2)), vi("b", T.FLOAT, (1, 2))],
                           [h.make_tensor("M", T.INT64, [], [1]), h.make_tensor("c", T.BOOL, [], [True])])
    assert count == 1
    body_a = model.graph.node[1].attribute[0].g
    assert [n.op_type for n in body_a.node][:4] == ["Cast", "Cast", "Cos", "Cast"]

    count, model = checked([h.make_node("Cast", ["x"], ["xb"], to=T.BFLOAT16), h.make_node("RandomNormalLike", ["xb"], ["r"]),
                            h.make_node("Add", ["r", "xb"], ["s"]), h.make_node("Cast", ["s"], ["y"], to=T.FLOAT)],
                           [vi("x", T.FLOAT)], [vi("y", T.FLOAT)])
    assert count == 1

    convs = [h.make_node("Cast", ["x"], ["xb"], to=T.BFLOAT16), h.make_node("Cast", ["w"], ["wb"], to=T.BFLOAT16),
             h.make_node("Conv", ["xb", "wb"], ["c1"]), h.make_node("Conv", ["xb", "wb"], ["c2"]),
             h.make_node("MaxPool", ["c1"], ["p"], kernel_shape=[1, 1]), h.make_node("Add", ["p", "c2"], ["s"]),
             h.make_node("Cast", ["s"], ["y"], to=T.FLOAT)]
    count, model = checked(convs, [vi("x", T.FLOAT, (1, 1, 2, 2))], [vi("y", T.FLOAT, (1, 1, 2, 2))],
                           [h.make_tensor("w", T.FLOAT, [1, 1, 1, 1], [2.0])])
    assert count == 3
    to_float = [n for n in model.graph.node if n.op_type == "Cast" and n.attribute[0].i == T.FLOAT]
    assert len(to_float) == 4  # xb and wb once each, c1 for MaxPool, and the output y


@pytest.mark.parametrize("extra", [["train.mixed_precision=float16"], []])
def test_float16_recurrent_sessions_do_not_crash_onnxruntime(tmp_path, extra):
    """onnxruntime 1.31's NCHWc rewrite killed the process (SIGSEGV) while making sessions of
    float16 graphs with a Scan (mixed precision, or --dtype float16): run in a subprocess, so
    a regression fails this test instead of the test run."""
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from spec import spec_from_text\n"
        "from compiler.training import compile_spec\n"
        "from compiler.gradcheck import random_batch\n"
        "from runtime.trainer import Trainer\n"
        "spec = spec_from_text('''flowgrad: 1\nname: t\ndims: {E: 4, H: 8}\ninputs:\n  x: {shape: [N, T, E]}\n"
        "graph:\n  hs: rnn(x, H)\nloss: mean(hs*hs) + mean(hs)\ntrain:\n  optimizer: {sgd: {lr: 0.01}}\n''', 't.yaml', "
        f"{extra!r})\n"
        f"cm = compile_spec(spec, {'None' if extra else repr('float16')}, graphs=('train',))\n"
        "batch = random_batch(spec, ['x'], np.random.default_rng(0), cm.float_dtype)\n"
        "loss = Trainer(cm, 'cpu', 1, seed=0).train_step('main', batch, 1e-2, 0)['loss']\n"
        "assert np.isfinite(loss), loss\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])


def _always_overflowing(tmp_path, mixed="float16"):
    """(a spec whose every mixed-precision step overflows, train options on its data): the loss
    is finite, the gradient of |w| at w = 0 is 0/0."""
    text = TINY.replace("OPTIMIZER", "{adam: {lr: 0.01}}").replace("MIXED", mixed).replace(
        "graph:", "params:\n  w: {shape: [3], init: zeros}\ngraph:").replace(
        "loss: cross_entropy(logits, y)", "loss: cross_entropy(logits, y) + 0.01 * sum(sqrt(w * w))")
    path = tmp_path / "nan.yaml"
    path.write_text(text)
    np.savez(tmp_path / "d.npz", **batch(n=64))
    return load_spec(str(path)), dict(run_dir=str(tmp_path / "run"), data=str(tmp_path / "d.npz"), valid="0",
                                      threads=1, device="cpu")


def test_a_run_whose_gradients_always_overflow_stops_though_its_loss_is_finite(tmp_path):
    """Every step is skipped: the run must stop after MAX_OVERFLOWS of them, not finish having
    never updated."""
    from runtime.api import train
    from runtime.train import MAX_OVERFLOWS

    spec, opts = _always_overflowing(tmp_path)
    with pytest.raises(FlowgradError, match=f"overflowed for {MAX_OVERFLOWS} steps"):  # (it stopped at the 26th)
        train(spec, steps=MAX_OVERFLOWS + 5, **opts)


def test_the_stop_after_overflows_names_the_half_type_of_the_step(tmp_path):
    """A bfloat16 run whose steps all overflowed was told its values exceed float16's range."""
    from runtime.api import train
    from runtime.train import MAX_OVERFLOWS

    spec, opts = _always_overflowing(tmp_path, "bfloat16")
    with pytest.raises(FlowgradError, match=f"overflowed for {MAX_OVERFLOWS} steps") as err:
        train(spec, steps=MAX_OVERFLOWS + 5, **opts)
    assert "exceed bfloat16's range" in err.value.hint and "float16's" not in err.value.hint.replace("bfloat16", "")


def test_a_run_trained_without_mixed_precision_resumes_with_it(tmp_path):
    """mixed_precision is a train setting that a resume may change: a run resumed without it
    went on, but one trained in float32 and resumed with it was refused ('checkpoint lacks
    loss_scale/main, ...: the spec changed since it was written; train anew with overwrite').
    Its loss scale starts as a new run's does."""
    from runtime.api import train

    np.savez(tmp_path / "d.npz", **batch(n=64))
    opts = dict(run_dir=str(tmp_path / "run"), data=str(tmp_path / "d.npz"), valid="0", threads=1, device="cpu")
    train(tiny(tmp_path, mixed=None), steps=2, **opts)
    result = train(tiny(tmp_path, mixed="{compute: float16, init_scale: 256}"), steps=5, resume=True, **opts)
    assert result.steps == 5
    with np.load(tmp_path / "run" / "checkpoint.npz") as ckpt:
        assert float(ckpt["t:loss_scale/main"]) == 256 and float(ckpt["t:loss_scale_steps/main"]) == 3


def test_training_data_beyond_float16s_range_is_refused_for_a_float16_step(tmp_path):
    """The float16 step casts its float inputs to float16: x = 1e5 became inf there and every
    step of its batches overflowed and was skipped (as onnx's reference evaluator, and a GPU,
    compute; the CPU widens the cast away), and a run whose every batch held one stopped after 25
    of them with the hint that the model's values exceed float16's range. --dtype float16
    refuses such data; so does a float16 mixed-precision run now. bfloat16 has float32's range."""
    from runtime.api import train
    from spec.errors import DataError

    spec = tiny(tmp_path)
    step = compile_spec(spec, graphs=("train",)).graphs["train"].model
    assert any(n.op_type == "Cast" and list(n.input) == ["x"] and n.attribute[0].i == onnx.TensorProto.FLOAT16
               for n in step.graph.node)
    data = batch(n=32)
    data["x"][5, 1] = 1e5
    np.savez(tmp_path / "d.npz", **data)
    opts = dict(data=str(tmp_path / "d.npz"), valid="0", threads=1, device="cpu", steps=1)
    with pytest.raises(DataError, match="holds 100000, beyond float16's range \\(it would become inf in the "
                                        "mixed-precision step\\)") as err:
        train(spec, run_dir=str(tmp_path / "run"), **opts)
    assert "mixed_precision: bfloat16" in err.value.hint and err.value.loc is not None
    assert train(tiny(tmp_path, mixed="bfloat16"), run_dir=str(tmp_path / "bf"), **opts).steps == 1


def test_a_bfloat16_run_resumed_in_float16_starts_within_float16s_scale(tmp_path):
    """A bfloat16 run's loss scale grows to 2^24; resumed with mixed_precision: float16, whose
    loss seed overflows above 65504, its steps were skipped one after another while the scale
    halved down to float16's (9 batches lost from 2^24). It starts at float16's max_scale."""
    from runtime.api import train

    np.savez(tmp_path / "d.npz", **batch(n=64))
    opts = dict(run_dir=str(tmp_path / "run"), data=str(tmp_path / "d.npz"), valid="0", threads=1, device="cpu")
    train(tiny(tmp_path, mixed="{compute: bfloat16, init_scale: 16777216}"), steps=2, **opts)
    train(tiny(tmp_path, mixed="float16"), steps=4, resume=True, **opts)
    with np.load(tmp_path / "run" / "checkpoint.npz") as ckpt:
        assert float(ckpt["t:loss_scale_skipped/main"]) == 0 and float(ckpt["t:loss_scale/main"]) == 2.0 ** 15


def test_overflows_in_a_row_count_across_a_resume(tmp_path):
    """The count of overflowed steps in a row restarted at 0 on --resume: a run stopped and
    resumed every 20 steps never reached the limit and trained on without an update."""
    from runtime.api import train
    from runtime.train import MAX_OVERFLOWS

    spec, opts = _always_overflowing(tmp_path)
    train(spec, steps=10, **opts)
    with pytest.raises(FlowgradError, match=f"overflowed for {MAX_OVERFLOWS} steps in mixed precision \\(step {MAX_OVERFLOWS - 1},"):
        train(spec, steps=MAX_OVERFLOWS + 10, resume=True, **opts)


def test_steps_skipped_for_overflow_do_not_count_for_adams_bias_correction(tmp_path):
    """Adam's first update after skipped steps is a first update (t = 1: each weight moves by
    about lr), as with PyTorch's GradScaler, which skips the optimizer's step; counting the
    skipped steps would shrink it (t = 4 after three skips: 0.58 of lr)."""
    cm = compile_spec(tiny(tmp_path))
    state = cm.initial_state(0)
    state["loss_scale/main"] = np.float32(2.0 ** 40)  # overflows until halved below float16's range
    skipped = 0
    data = batch()
    while True:
        after, (out,) = run_steps(cm, state, data, 1, first_step=skipped)
        if not np.isnan(out["loss"]):
            break
        state, skipped = after, skipped + 1
    assert skipped >= 3 and float(after["loss_scale_skipped/main"]) == skipped
    moved = np.abs(after["h.W"] - state["h.W"])
    moved = moved[moved > 0]
    # Adam's first step: |m_hat / sqrt(v_hat)| = 1 for every weight with a gradient, so each moves by lr = 0.01
    # (less where the l2 term, eps, or float16 gradients nearly cancel: the median is the check)
    assert abs(float(np.median(moved)) - 0.01) < 1e-4, float(np.median(moved))


def test_a_checkpoint_written_before_the_count_of_skipped_steps_resumes(tmp_path):
    """Mixed-precision checkpoints from before loss_scale_skipped existed resume, counting
    from zero, instead of being refused as written for another spec."""
    from runtime.api import train
    from runtime.checkpoint import load_checkpoint, save_checkpoint

    spec = tiny(tmp_path)
    data = tmp_path / "data.npz"
    np.savez(data, **batch(n=64))
    run = str(tmp_path / "run")
    train(spec, run_dir=run, data=str(data), steps=4, threads=1, device="cpu")
    path = os.path.join(run, "checkpoint.npz")
    state, meta = load_checkpoint(path)
    del state["loss_scale_skipped/main"]
    save_checkpoint(path, state, meta)
    best, best_meta = load_checkpoint(os.path.join(run, "best.npz"))  # eval reads best.npz: the same fill
    del best["loss_scale_skipped/main"]
    save_checkpoint(os.path.join(run, "best.npz"), best, best_meta)
    from runtime.api import evaluate_run

    assert np.isfinite(evaluate_run(run, str(data), device="cpu")["loss"])
    result = train(spec, run_dir=run, data=str(data), steps=8, threads=1, device="cpu", resume=True)
    assert result.steps == 8
    assert "loss_scale_skipped/main" in load_checkpoint(path)[0]


MEAN_OF_MANY = """flowgrad: 1
name: many
dims: {T: 1000}
inputs:
  x: {shape: [N, T]}
params:
  w: {shape: [T], init: ones}
graph:
  y: x * w
loss: mean(y)
train:
  optimizer: {sgd: {lr: 0.1}}
"""


@pytest.mark.parametrize("half", ["dtype", "mixed_precision"])
def test_a_mean_over_more_entries_than_float16_counts_still_has_a_gradient(tmp_path, half):
    """mean's gradient divided by its count cast to the float type: a mean over 100 x 1000
    entries in float16 divided by inf, and every gradient was 0 (the weights never moved,
    without a word, on the reference evaluator and wherever Cast gives float16's inf), in
    a --dtype float16 compile and in a mixed-precision step alike. The count and the
    division are float32 now; the step matches float32's."""
    path = tmp_path / "many.yaml"
    path.write_text(MEAN_OF_MANY + ("  mixed_precision: float16\n" if half == "mixed_precision" else ""))
    spec = load_spec(str(path))
    cm = compile_spec(spec, "float16" if half == "dtype" else "float32", graphs=("train",))
    cm32 = compile_spec(spec, "float32", graphs=("train",))
    x = np.random.default_rng(0).uniform(0.5, 1.5, (100, 1000))
    values = {**cm32.initial_state(0), "x": x, "lr": 1000.0, "step": 0}  # a large lr: a step float16 weights show
    want = Runner(cm32.graphs["train"].model)(feeds(cm32.graphs["train"], values))
    g = cm.graphs["train"]
    got = dict(zip([o.name for o in g.model.graph.output], reference_evaluator(g.model).run(None, feeds(g, values))))
    grad = (1.0 - got["next/w"].astype(np.float64)) / 1000.0
    np.testing.assert_allclose(grad, (1.0 - want["next/w"].astype(np.float64)) / 1000.0, rtol=1e-2)


def feeds(graph, values):
    return {i.name: np.asarray(values[i.name], dtype=i.dtype) for i in graph.inputs if i.name in values}


def test_a_count_past_65504_is_float32_in_a_mixed_precision_step(tmp_path):
    """numel(w) of a [300, 300] parameter in a mixed-precision step was float16's inf, without a
    word (the loss NaN); it counts in float32 there (what it meets is promoted), and the count
    is exact."""
    path = tmp_path / "count.yaml"
    path.write_text(TINY.replace("metrics:\n", "metrics:\n  count: numel(W) + 0.0 * mean(logits)\n")
                    .replace("graph:\n", "params:\n  W: {shape: [300, 300], init: ones, trainable: false}\ngraph:\n")
                    .replace("OPTIMIZER", "{sgd: {lr: 0.01}}").replace("MIXED", "float16"))
    cm = compile_spec(load_spec(str(path)), graphs=("train",))
    state, outs = run_steps(cm, cm.initial_state(0), batch(), 1)
    assert float(outs[0]["count"]) == 90000.0


def test_a_loss_divided_by_a_count_past_65504_trains_in_mixed_precision(tmp_path):
    """sum(y * y) / numel(W) with W [300, 300]: the count was float16's inf in a mixed-precision
    step and the loss 0, every gradient 0, without a word. The count is float32, the loss with it,
    and the gradient's seed takes the loss's type (a half seed for a float32 loss was an
    AssertionError traceback); the step matches float32's."""
    text = MEAN_OF_MANY.replace("dims: {T: 1000}", "dims: {T: 3}").replace("loss: mean(y)", "loss: sum(y * y) / numel(W)") \
        .replace("graph:", "  W: {shape: [300, 300], init: ones, trainable: false}\ngraph:")
    path = tmp_path / "cast.yaml"
    path.write_text(text + "  mixed_precision: float16\n")
    cm = compile_spec(load_spec(str(path)), graphs=("train",))
    plain = tmp_path / "plain.yaml"
    plain.write_text(text)
    ref = compile_spec(load_spec(str(plain)), graphs=("train",))
    data = {"x": np.random.default_rng(0).normal(size=(8, 3)) * 100.0}
    _, got = run_steps(cm, cm.initial_state(0), data, 1)
    _, want = run_steps(ref, ref.initial_state(0), data, 1)
    for k in want[0]:
        if k.startswith("next/") and not k.startswith("next/loss_scale"):
            np.testing.assert_allclose(got[0][k], want[0][k], rtol=2e-2, atol=2e-3, err_msg=k)
    assert np.all(got[0]["next/w"] != 1.0)
