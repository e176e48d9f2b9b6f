"""Every spec in models/: it compiles, its whole-model gradient matches finite
differences in float64 (on shrunk dims), its training graph runs the same on
onnxruntime and onnx's reference evaluator, and a few steps lower the loss."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import yaml

from compiler.check import Runner, reference_run
from compiler.gradcheck import SYMBOLIC_SIZES, gradcheck_spec, random_batch
from compiler.training import compile_spec
from runtime.trainer import Trainer
from spec import load_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(glob.glob(os.path.join(ROOT, "models", "*.yaml")))
IDS = [os.path.splitext(os.path.basename(m))[0] for m in MODELS]


def shrunk(path: str, size: int = 5):
    """The spec with every literal dim above 8 set to `size`, for fast checks."""
    with open(path) as f:
        dims = (yaml.safe_load(f) or {}).get("dims") or {}
    overrides = [f"dims.{k}={size}" for k, v in dims.items() if isinstance(v, int) and v > 8]
    # The random batches have SYMBOLIC_SIZES["N"] rows; stateful layers keep state for batch_size rows.
    overrides.append(f"train.batch_size={SYMBOLIC_SIZES['N']}")
    return load_spec(path, overrides)


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_whole_model_gradient(path):
    report = gradcheck_spec(shrunk(path), seed=1)
    assert report, "no objective to check"
    for objective, errors in report.items():
        for param, err in errors.items():
            assert err < 1e-5, f"{objective}/{param}: relative error {err:.2e}"
            # exactly 0 only when both gradients are 0: the batch does not exercise this parameter
            assert err > 0, f"{objective}/{param}: gradient identically zero on the check's batch"


def _feeds(cm, graph, seed=0, batch=None):
    state = cm.initial_state(seed)
    rng = np.random.default_rng(seed)
    names = [i.name for i in graph.inputs if i.role == "input"]
    feeds = batch or random_batch(cm.spec, names, rng, cm.float_dtype)
    for i in graph.inputs:
        if i.name in state:
            feeds[i.name] = state[i.name]
        elif i.role == "control":
            feeds[i.name] = np.asarray({"lr": 1e-3, "step": 3, "seed": seed}[i.name], dtype=i.dtype)
    return feeds


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_training_graph_portable(path):
    """onnx.reference runs every compiled training graph and agrees with onnxruntime."""
    cm = compile_spec(shrunk(path), graphs=("train", "eval"))
    for kind, graph in cm.graphs.items():
        feeds = _feeds(cm, graph)
        ort_out = Runner(graph.model)(feeds)
        ref_out = reference_run(graph.model, feeds)
        for k, v in ort_out.items():
            np.testing.assert_allclose(ref_out[k], v, rtol=2e-4, atol=2e-5, err_msg=f"{kind}:{k}")


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_few_steps_lower_the_loss(path):
    spec = shrunk(path, size=16)
    cm = compile_spec(spec, graphs=("train",))
    names = [i.name for i in cm.graphs[next(iter(cm.graphs))].inputs if i.role == "input"]
    batch = random_batch(spec, names, np.random.default_rng(0), "float32")
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    losses = []
    for step in range(8):
        for obj in cm.schedule:
            losses.append(trainer.train_step(obj, batch, lr=3e-3 if obj else 0, step=step)["loss"])
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses


def test_compile_writes_every_graph(tmp_path):
    cm = compile_spec(load_spec(os.path.join(ROOT, "models", "mlp.yaml")))
    written = cm.save(str(tmp_path))
    names = sorted(os.path.basename(w) for w in written)
    assert names == ["apply.onnx", "eval.onnx", "grads.onnx", "infer.onnx", "manifest.json", "train.onnx"]
    train = cm.graphs["train"]
    roles = {i.role for i in train.inputs}
    assert {"input", "param", "state", "control"} <= roles
    assert {o.role for o in train.outputs} == {"loss", "metric", "next"}
    # Only the default ONNX domain appears.
    for g in cm.graphs.values():
        assert all(n.domain in ("", "ai.onnx") for n in g.model.graph.node)
        assert [o.domain for o in g.model.opset_import] == [""]
