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
