"""Several training steps per session call (compiler/multistep.py): the step graph inside
an ONNX Loop gives exactly the parameters and losses of one call per step."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from compiler.check import reference_evaluator
from compiler.multistep import multi_step, stack_batches
from compiler.training import compile_spec
from runtime.trainer import Trainer
from test_models import shrunk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batches(cm, k, seed=0):
    from compiler.gradcheck import random_batch

    graph = cm.graphs["train"]
    names = [i.name for i in graph.inputs if i.role == "input"]
    return [random_batch(cm.spec, names, np.random.default_rng(seed + i), cm.float_dtype, {"N": 6}) for i in range(k)]


@pytest.mark.parametrize("model", ["mlp", "dae", "convnet", "char_lstm"])
def test_k_steps_in_one_call_equal_k_calls(model):
    """Dropout and noise draw from (seed, step): the looped steps see the same steps."""
    cm = compile_spec(shrunk(os.path.join(ROOT, "models", f"{model}.yaml")), graphs=("train",))
    batches = _batches(cm, 4)
    lrs = [0.01, 0.02, 0.005, 0.01]
    one, many = Trainer(cm, "cpu", 1, seed=3), Trainer(cm, "cpu", 1, seed=3)
    each = [one.train_step("main", b, lr, 7 + i) for i, (b, lr) in enumerate(zip(batches, lrs))]
    looped = many.train_steps("main", batches, lrs, 7)
    assert [sorted(s) for s in looped] == [sorted(s) for s in each]
    for a, b in zip(each, looped):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k
    s1, s2 = one.state_numpy(), many.state_numpy()
    assert set(s1) == set(s2)
    for k in s1:
        np.testing.assert_allclose(s2[k], s1[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_the_looped_graph_is_standard_onnx_and_runs_on_the_reference_evaluator():
    cm = compile_spec(shrunk(os.path.join(ROOT, "models", "mlp.yaml")), graphs=("train",))
    looped = multi_step(cm.graphs["train"])
    onnx.checker.check_model(looped.model, full_check=True)
    onnx.shape_inference.infer_shapes(looped.model, strict_mode=True)
    batches = _batches(cm, 3)
    state = cm.initial_state(0)
    feeds = {**stack_batches(batches), "steps/lr": np.full(3, 0.01, np.float32), "steps/step": np.asarray(0),
             "seed": np.asarray(0)}
    for i in looped.inputs:
        if i.name.startswith("steps/") and i.name[len("steps/"):] in state:
            feeds[i.name] = state[i.name[len("steps/"):]]
    out = dict(zip([o.name for o in looped.model.graph.output], reference_evaluator(looped.model).run(None, feeds)))
    trainer = Trainer(cm, "cpu", 1)
    losses = [s["loss"] for s in trainer.train_steps("main", batches, [0.01] * 3, 0)]
    np.testing.assert_allclose(out["steps/loss"], losses, rtol=1e-5)
    for k, v in trainer.state_numpy().items():
        np.testing.assert_allclose(out[f"steps/next/{k}"], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_an_objective_that_reads_other_parameters_loops_too():
    """A GAN's discriminator step reads the generator's parameters without updating them:
    the looped graph reads them from outside the loop."""
    cm = compile_spec(shrunk(os.path.join(ROOT, "models", "gan.yaml")), graphs=("train",))
    name = cm.schedule[0]
    graph = cm.graphs[f"train_{name}"]
    read_only = [i.name for i in graph.inputs if i.role == "param" and f"next/{i.name}" not in
                 {o.name for o in graph.outputs}]
    assert read_only
    from compiler.gradcheck import random_batch

    names = [i.name for i in graph.inputs if i.role == "input"]
    batches = [random_batch(cm.spec, names, np.random.default_rng(i), cm.float_dtype, {"N": 6}) for i in range(3)]
    one, many = Trainer(cm, "cpu", 1, seed=2), Trainer(cm, "cpu", 1, seed=2)
    each = [one.train_step(name, b, 0.01, 4 + i) for i, b in enumerate(batches)]
    looped = many.train_steps(name, batches, [0.01] * 3, 4)
    for a, b in zip(each, looped):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k
    s1, s2 = one.state_numpy(), many.state_numpy()
    for k in s1:
        np.testing.assert_allclose(s2[k], s1[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_calls_of_different_lengths_reuse_one_runner():
    """K steps then fewer (the end of an epoch): each call's per-step losses are its own."""
    cm = compile_spec(shrunk(os.path.join(ROOT, "models", "mlp.yaml")), graphs=("train",))
    batches = _batches(cm, 5)
    one, many = Trainer(cm, "cpu", 1, seed=3), Trainer(cm, "cpu", 1, seed=3)
    each = [one.train_step("main", b, 0.01, i) for i, b in enumerate(batches)]
    # the third call runs on the first call's buffers, with one step instead of two
    looped = [s for i, j in ((0, 2), (2, 4), (4, 5)) for s in many.train_steps("main", batches[i:j], [0.01] * (j - i), i)]
    assert [s["loss"] for s in looped] == pytest.approx([s["loss"] for s in each], rel=1e-6)


def _trained(tmp_path, name, overrides=(), **options):
    from runtime.api import load, train
    from runtime.checkpoint import load_checkpoint

    spec = load(os.path.join(ROOT, "models", "mlp.yaml"), ["dims.H=32", *overrides])
    result = train(spec, run_dir=str(tmp_path / name), threads=1, device="cpu", **options)
    state, meta = load_checkpoint(str(tmp_path / name / "checkpoint.npz"))
    return result, state, meta


@pytest.mark.parametrize("options", [
    dict(epochs=2),
    dict(steps=30, checkpoint_every=7),
    # mixed precision whose first steps overflow (each skipped in the graph, the loss scale
    # halved), then train: the scale is carried from step to step inside the call
    dict(steps=20, overrides=["train.mixed_precision={compute: float16, init_scale: 1.0e+9, max_scale: 1.0e+9}"]),
])
def test_training_with_several_steps_per_call_equals_one_step_per_call(tmp_path, options):
    """Calls of 4 steps: an epoch's short last batch runs alone, a checkpoint or the last
    step ends a call early; losses, parameters and positions are those of one step per call."""
    one, a, meta_a = _trained(tmp_path, "one", **options)
    four, b, meta_b = _trained(tmp_path, "four", steps_per_call=4, **options)
    assert (four.steps, four.epochs) == (one.steps, one.epochs)
    assert {k: meta_b[k] for k in ("step", "epoch", "position")} == {k: meta_a[k] for k in ("step", "epoch", "position")}
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for h1, h4 in zip(one.history, four.history, strict=True):
        for k, v in h1.items():
            if k != "seconds":
                assert h4[k] == pytest.approx(v, rel=1e-5), k


def test_a_call_ends_at_a_checkpoint_step_and_the_checkpoint_holds_that_step(tmp_path, monkeypatch):
    """--checkpoint-every 6 with calls of 4 steps (4 + 2): the step-6 checkpoint equals the
    one of a run of single steps, and a run resumed from it (as after a kill) ends where an
    uninterrupted run does."""
    import runtime.train as T
    from runtime.checkpoint import load_checkpoint

    written = {}
    real_write = T.atomic_write

    def keep(path, data, **kwargs):
        if os.path.basename(path) == "checkpoint.npz":
            written.setdefault(os.path.basename(os.path.dirname(path)), []).append(data)
        real_write(path, data, **kwargs)

    monkeypatch.setattr(T, "atomic_write", keep)
    _, full, _ = _trained(tmp_path, "four", epochs=1, steps_per_call=4, checkpoint_every=6)
    _trained(tmp_path, "one", epochs=1, checkpoint_every=6)
    mid = {}
    for run in ("four", "one"):
        path = tmp_path / f"{run}.npz"
        path.write_bytes(written[run][0])
        mid[run] = load_checkpoint(str(path))
    (a, meta_a), (b, meta_b) = mid["one"], mid["four"]
    assert meta_b["step"] == 6 and meta_b["position"] > 0
    assert {k: meta_b[k] for k in ("step", "epoch", "position")} == {k: meta_a[k] for k in ("step", "epoch", "position")}
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    os.replace(tmp_path / "four.npz", tmp_path / "four" / "checkpoint.npz")
    _, resumed, _ = _trained(tmp_path, "four", epochs=1, steps_per_call=4, resume=True)
    for k in full:
        np.testing.assert_allclose(resumed[k], full[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("per_call", [1, 4])
def test_a_step_whose_loss_is_not_finite_stops_training_at_that_step(tmp_path, monkeypatch, per_call):
    """A non-finite loss in the middle of a call stops the run with that step's number, as
    with one step per call, and leaves the last checkpoint as it was."""
    from runtime.trainer import Trainer
    from spec.errors import FlowgradError

    real_step, real_steps = Trainer.train_step, Trainer.train_steps

    def poisoned(results, first):
        return [dict(r, loss=float("nan")) if first + i == 5 else r for i, r in enumerate(results)]

    monkeypatch.setattr(Trainer, "train_step", lambda self, o, b, lr, step: poisoned([real_step(self, o, b, lr, step)], step)[0])
    monkeypatch.setattr(Trainer, "train_steps", lambda self, o, bs, lrs, step: poisoned(real_steps(self, o, bs, lrs, step), step))
    with pytest.raises(FlowgradError, match="loss became nan at step 5 "):
        _trained(tmp_path, "run", steps=12, steps_per_call=per_call, checkpoint_every=4)
    from runtime.checkpoint import load_checkpoint

    _, meta = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert meta["step"] == 4


def test_steps_per_call_refuses_what_it_cannot_do(tmp_path):
    from runtime.api import load, train
    from spec.errors import FlowgradError

    mlp = load(os.path.join(ROOT, "models", "mlp.yaml"), ["dims.H=32"])
    with pytest.raises(FlowgradError, match="^steps_per_call does not work with accumulate"):  # (train()'s keywords)
        train(mlp, run_dir=str(tmp_path / "a"), steps=2, steps_per_call=4, accumulate=2, device="cpu")
    gan = load(os.path.join(ROOT, "models", "gan.yaml"))
    with pytest.raises(FlowgradError, match="several objectives") as e:
        train(gan, run_dir=str(tmp_path / "b"), steps=2, steps_per_call=4, device="cpu")
    assert "gan.yaml:47:" in str(e.value) and not (tmp_path / "b").exists()
    assert "leave out steps_per_call" in e.value.hint


def test_a_mixed_precision_stateful_lstm_steps_bit_for_bit_as_in_one_call_per_step(tmp_path):
    """onnxruntime's FuseFp16InitializerToFp32NodeTransformer rewrote the plain step graph and not
    the Loop's body, so a stateful LSTM's float16 step rounded otherwise in the two: calls of 3
    steps ended 2e-4 away from one step per call after 3 steps, and a run with K > 1 stopped by
    --steps between two calls' ends (its lone steps plain ones) resumed to other parameters."""
    from runtime.api import load, train

    spec = load(os.path.join(ROOT, "models", "char_lstm_stateful.yaml"),
                overrides=["dims.H=16", "dims.E=8", "train.mixed_precision=float16"])
    state = {}
    for k in (1, 3):
        train(spec, run_dir=str(tmp_path / f"k{k}"), threads=1, steps=3, steps_per_call=k)
        with np.load(tmp_path / f"k{k}" / "checkpoint.npz") as z:
            state[k] = {n: z[n] for n in z.files if n != "__meta__"}
    assert set(state[1]) == set(state[3])
    for n in state[1]:
        np.testing.assert_array_equal(state[3][n], state[1][n], err_msg=n)
