"""Training features: several objectives on a schedule, frozen parameters,
warm starts, gradient accumulation, early stopping."""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest

from runtime.api import load, train
from runtime.checkpoint import load_checkpoint
from spec import spec_from_text
from spec.errors import FlowgradError, SpecError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TWO_OBJECTIVES = """
flowgrad: 1
name: two
dims: {D: 4}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N]}
params:
  A: {shape: [D], init: {normal: {std: 0.1}}}
  B: {shape: [D], init: {normal: {std: 0.1}}}
graph:
  pa: x @ A
  pb: x @ B
  la: mean((pa - y) ** 2)
  lb: mean((pb + pa - 2 * y) ** 2)
loss: la + lb
train:
  objectives:
    first: {loss: la, params: "A", optimizer: {sgd: {lr: 0.1}}}
    second: {loss: lb, params: "B", optimizer: {adam: {lr: 0.05}}}
  schedule: [first, second]
  batch_size: 16
"""

REGRESSION = """
flowgrad: 1
name: reg
dims: {D: 4, H: 8}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N]}
params:
  W1: {shape: [D, H], init: glorot_uniform}
  w2: {shape: [H], init: glorot_uniform}
graph:
  h: tanh(x @ W1)
  pred: h @ w2
outputs:
  pred: pred
loss: mean((pred - y) ** 2)
train:
  optimizer: {sgd: {lr: 0.05}}
  batch_size: 16
"""


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=64)).astype(np.float32)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return str(path)


def _spec(text, tmp_path, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return spec_from_text(text, str(p))


def _params(run_dir):
    state, _ = load_checkpoint(f"{run_dir}/checkpoint.npz")
    return state


def test_objectives_take_turns_on_their_own_parameters(tmp_path, data):
    spec = _spec(TWO_OBJECTIVES, tmp_path)
    result = train(spec, run_dir=str(tmp_path / "run"), data=data, epochs=30, threads=1, device="cpu")
    first, last = result.history[0], result.history[-1]
    assert last["train_first/loss"] < 0.5 * first["train_first/loss"]
    assert last["train_second/loss"] < 0.5 * first["train_second/loss"]
    state = _params(str(tmp_path / "run"))
    # Each objective has its own optimizer state: SGD none; Adam's m and v cover B only.
    assert "m/second" in state and "v/second" in state and "m/first" not in state
    assert state["m/second"].shape == (4,)
    np.testing.assert_allclose(state["A"], [1.0, -2.0, 0.5, 0.0], atol=0.1)


def test_frozen_parameters_do_not_move(tmp_path, data):
    spec = _spec(REGRESSION, tmp_path)
    train(spec, run_dir=str(tmp_path / "a"), data=data, epochs=2, threads=1, device="cpu")
    train(spec, run_dir=str(tmp_path / "b"), data=data, epochs=2, threads=1, device="cpu", freeze=["W1"])
    a, b = _params(str(tmp_path / "a")), _params(str(tmp_path / "b"))
    from compiler.training import compile_spec

    init = compile_spec(spec).initial_state(0)
    assert np.array_equal(b["W1"], init["W1"])
    assert not np.array_equal(a["W1"], init["W1"])
    assert not np.array_equal(b["w2"], init["w2"])
    with pytest.raises(FlowgradError, match="^freeze 'nothing\\*' matches no parameter"):  # (train()'s keyword)
        train(spec, run_dir=str(tmp_path / "c"), data=data, epochs=1, freeze=["nothing*"])


def test_warm_start_takes_parameters_by_name(tmp_path, data):
    spec = _spec(REGRESSION, tmp_path)
    train(spec, run_dir=str(tmp_path / "a"), data=data, epochs=3, threads=1, device="cpu")
    train(spec, run_dir=str(tmp_path / "b"), data=data, epochs=1, threads=1, device="cpu",
          init_from=str(tmp_path / "a"), freeze=["W1"])
    assert np.array_equal(_params(str(tmp_path / "a"))["W1"], _params(str(tmp_path / "b"))["W1"])


def test_warm_start_from_something_not_a_checkpoint_says_so_and_leaves_no_run_behind(tmp_path, data):
    """--init-from an exported .onnx model read it as a pickled array ('pickled (object) data'),
    and the failed run left a run directory holding only its lock. Its errors name --init-from:
    "no checkpoint at PATH" did not say which flag gave PATH."""
    spec = _spec(REGRESSION, tmp_path)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x0a\x12\x07flowgrad")  # protobuf bytes, as an export starts
    with pytest.raises(FlowgradError, match="not a checkpoint") as e:
        train(spec, run_dir=str(tmp_path / "b"), data=data, epochs=1, threads=1, device="cpu", init_from=str(model))
    assert "for predict" in e.value.hint
    assert e.value.message.startswith(f'init_from="{model}": ')  # (it did not name the argument; train()'s keyword)
    assert not (tmp_path / "b").exists()
    with pytest.raises(FlowgradError, match="no checkpoint at") as e:
        train(spec, run_dir=str(tmp_path / "b"), data=data, epochs=1, threads=1, device="cpu",
              init_from=str(tmp_path / "none"))
    assert e.value.message.startswith(f'init_from="{tmp_path / "none"}": ')
    assert not (tmp_path / "b").exists()


def test_warm_start_reports_the_parameters_it_left_at_their_initial_values(tmp_path, data):
    """--init-from a run whose w2 has another shape and which lacks the new bias b: W1 is taken,
    w2 and b keep their initial values, and the result, run.json and the CLI say which and why."""
    train(_spec(REGRESSION, tmp_path), run_dir=str(tmp_path / "a"), data=data, epochs=1, threads=1, device="cpu")
    changed = REGRESSION.replace("  w2: {shape: [H], init: glorot_uniform}",
                                 "  w2: {shape: [H, 1], init: glorot_uniform}\n  b: {shape: [], init: zeros}")
    changed = changed.replace("  pred: h @ w2\n", "  pred: (h @ w2)[:, 0] + b\n")
    path = tmp_path / "changed.yaml"
    path.write_text(changed)
    result = train(_spec(changed, tmp_path, "changed.yaml"), run_dir=str(tmp_path / "b"), data=data, epochs=1,
                   threads=1, device="cpu", init_from=str(tmp_path / "a"))
    want = {"from": str(tmp_path / "a"), "taken": ["W1"],
            "kept": {"w2": "shape [8] there, [8, 1] here", "b": "not in that run"}, "unused": []}
    assert result.warm_start == want
    assert result.to_json()["init_from"] == want
    with open(tmp_path / "b" / "run.json") as f:
        assert json.load(f)["init_from"] == want
    train(_spec(changed, tmp_path, "changed.yaml"), run_dir=str(tmp_path / "b"), data=data, epochs=2, threads=1,
          device="cpu", resume=True)
    with open(tmp_path / "b" / "run.json") as f:  # a resumed run keeps where its weights came from
        assert json.load(f)["init_from"] == want
    cli = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", str(path), "--data", data, "--epochs", "1",
                          "--threads", "1", "--device", "cpu", "--quiet", "--run-dir", str(tmp_path / "c"),
                          "--init-from", str(tmp_path / "a")], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr
    assert "warm-started 1 parameter from" in cli.stderr
    assert "w2 (shape [8] there, [8, 1] here), b (not in that run)" in " ".join(cli.stderr.split())
    # the other way: that run's b, which this spec has none of, is left behind, and said so (as a
    # batch_norm(affine=false) leaves a run's gamma and beta); optimizer state is not a parameter
    back = train(_spec(REGRESSION, tmp_path), run_dir=str(tmp_path / "d"), data=data, epochs=1, threads=1,
                 device="cpu", init_from=str(tmp_path / "b"))
    assert back.warm_start["unused"] == ["b"] and back.warm_start["kept"] == {"w2": "shape [8, 1] there, [8] here"}
    cli = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", str(tmp_path / "spec.yaml"), "--data",
                          data, "--epochs", "1", "--threads", "1", "--device", "cpu", "--quiet", "--run-dir",
                          str(tmp_path / "e"), "--init-from", str(tmp_path / "b")], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr
    assert "left unused, this spec has none of: b" in " ".join(cli.stderr.split())


def test_warm_start_leaves_a_stateful_layers_carried_state_out_of_its_report(tmp_path):
    """A stateful lstm's carried state (hs.h0, hs.c0: zeroed at each epoch's start) is not a
    weight: a spec without stateful= warm-started from a stateful run listed them as left
    unused, and one stateful run from another as taken; now neither lists them. A checkpoint
    given as a file says nothing of which entries are carried: they are listed as before."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 11, size=(9, 5)), y=rng.integers(0, 11, size=(9, 5)))
    common = dict(data=str(tmp_path / "d.npz"), valid="0", epochs=1, threads=1, device="cpu")
    stateful = _spec(STATEFUL_CELL.replace("HS", "hs: lstm(e, H, stateful=true)"), tmp_path, "a.yaml")
    plain = _spec(STATEFUL_CELL.replace("HS", "hs: lstm(e, H)"), tmp_path, "b.yaml")
    train(stateful, run_dir=str(tmp_path / "a"), **common)
    assert {"hs.h0", "hs.c0"} <= set(_params(str(tmp_path / "a")))
    back = train(plain, run_dir=str(tmp_path / "b"), init_from=str(tmp_path / "a"), **common).warm_start
    assert back["unused"] == [] and back["kept"] == {}
    again = train(stateful, run_dir=str(tmp_path / "c"), init_from=str(tmp_path / "a"), **common).warm_start
    assert not {"hs.h0", "hs.c0"} & set(again["taken"]) and again["kept"] == {} and again["unused"] == []
    assert set(again["taken"]) == set(back["taken"])  # the weights, alike in both
    forth = train(stateful, run_dir=str(tmp_path / "d"), init_from=str(tmp_path / "b"), **common).warm_start
    assert forth["kept"] == {} and forth["unused"] == []  # (the plain run has no carried state to give)
    file = train(plain, run_dir=str(tmp_path / "e"), init_from=str(tmp_path / "a" / "checkpoint.npz"), **common)
    assert sorted(file.warm_start["unused"]) == ["hs.c0", "hs.h0"]


def test_accumulated_gradients_equal_one_larger_batch(tmp_path, data):
    spec = _spec(REGRESSION, tmp_path)
    train(spec, run_dir=str(tmp_path / "big"), data=data, epochs=2, batch_size=32, threads=1, device="cpu")
    train(spec, run_dir=str(tmp_path / "acc"), data=data, epochs=2, batch_size=16, accumulate=2, threads=1, device="cpu")
    big, acc = _params(str(tmp_path / "big")), _params(str(tmp_path / "acc"))
    for k in big:
        np.testing.assert_allclose(acc[k], big[k], rtol=1e-5, atol=1e-6)


def test_accumulated_batches_of_unequal_sizes_weigh_by_their_rows_and_draw_their_own_noise(tmp_path, monkeypatch):
    """50 examples: 32 in one batch equal 16 + 16 accumulated, and 50 = 32 + 18 equal 16 + 16 +
    16 + 2 (an epoch's last, short batch weighs 2 rows, not a batch's worth)."""
    import runtime.trainer as T

    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    np.savez(tmp_path / "d50.npz", x=x, y=(x @ np.array([1.0, -2.0, 0.5, 0.0])).astype(np.float32))
    spec = _spec(REGRESSION, tmp_path)
    common = dict(data=str(tmp_path / "d50.npz"), valid="0", epochs=2, threads=1, device="cpu")
    train(spec, run_dir=str(tmp_path / "big"), batch_size=32, **common)
    seeds = []
    real_run = T.GraphRunner.run

    def run(self, state, spare, batch, control):
        if "grad" in {o.role for o in self.graph.outputs}:
            seeds.append(control["seed"])
        return real_run(self, state, spare, batch, control)

    monkeypatch.setattr(T.GraphRunner, "run", run)
    train(spec, run_dir=str(tmp_path / "acc"), batch_size=16, accumulate=2, **common)
    big, acc = _params(str(tmp_path / "big")), _params(str(tmp_path / "acc"))
    for k in big:
        np.testing.assert_allclose(acc[k], big[k], rtol=1e-5, atol=1e-6)
    assert seeds[:2] == [0, 1 << 32]  # the second batch of an update draws another stream


MASKED_SUM = """
flowgrad: 1
name: masked
dims: {D: 3, V: 4}
inputs:
  x: {shape: [N, T, D]}
  y: {shape: [N, T], dtype: int64}
  mask: {shape: [N, T]}
params:
  W: {shape: [D, V], init: glorot_uniform}
graph:
  ce: cross_entropy(x @ W, y, reduction='none')
loss: sum(ce * mask) / sum(mask)
train:
  optimizer: {sgd: {lr: LR}}
  shuffle: false
"""


def test_accumulated_batches_of_a_masked_mean_weigh_by_their_unmasked_entries(tmp_path):
    """A loss sum(ce * mask) / sum(mask) accumulated over batches of 5 moved the weights 0.13 away
    (of 0.7) from batches of 10: each batch's gradient was weighted by its rows, where one batch
    of all of them weighs each by its unmasked tokens. A batch of no unmasked token adds nothing."""
    text = MASKED_SUM.replace("LR", "0.5")
    rng = np.random.default_rng(0)
    mask = (rng.random((23, 5)) < np.linspace(0.1, 0.95, 23)[:, None]).astype(np.float32)
    mask[:5] = 0  # the first accumulated batch has no unmasked token
    data = {"x": rng.normal(size=(23, 5, 3)).astype(np.float32), "y": rng.integers(0, 4, (23, 5)), "mask": mask}
    common = dict(data=data, valid="0", epochs=2, threads=1, device="cpu")
    train(text, run_dir=str(tmp_path / "big"), batch_size=10, **common)
    train(text, run_dir=str(tmp_path / "acc"), batch_size=5, accumulate=2, **common)
    big, acc = _params(str(tmp_path / "big")), _params(str(tmp_path / "acc"))
    np.testing.assert_allclose(acc["W"], big["W"], rtol=1e-5, atol=1e-6)


def test_accumulated_batches_of_a_guarded_masked_mean_weigh_by_their_unmasked_entries(tmp_path):
    """sum(ce * mask) / maximum(sum(mask), 1.0), the semi-supervised model's loss, was taken for no
    ratio: its batches weighed by their rows (--accumulate 2 moved the weights unlike one batch of
    both), and its validation numbers were per-batch values weighted by rows. Now its sums and
    counts add up, and a group of batches with no unmasked entry at all makes no NaN update: its
    count is kept from 0 as the loss keeps it (the update of a loss of 0 / 1.0)."""
    from runtime.trainer import Trainer
    from compiler.training import compile_spec
    from spec import spec_from_text

    text = MASKED_SUM.replace("LR", "0.5").replace("sum(ce * mask) / sum(mask)", "sum(ce * mask) / maximum(sum(mask), 1.0)")
    rng = np.random.default_rng(0)
    mask = (rng.random((30, 5)) < np.linspace(0.1, 0.95, 30)[:, None]).astype(np.float32)
    mask[:5] = 0  # the first accumulated batch has no unmasked token
    mask[20:] = 0  # nor has the last group (batches 5 and 6) any
    data = {"x": rng.normal(size=(30, 5, 3)).astype(np.float32), "y": rng.integers(0, 4, (30, 5)), "mask": mask}
    common = dict(data=data, valid="0", epochs=2, threads=1, device="cpu")
    train(text, run_dir=str(tmp_path / "big"), batch_size=10, **common)
    train(text, run_dir=str(tmp_path / "acc"), batch_size=5, accumulate=2, **common)
    big, acc = _params(str(tmp_path / "big")), _params(str(tmp_path / "acc"))
    assert np.all(np.isfinite(acc["W"]))
    np.testing.assert_allclose(acc["W"], big["W"], rtol=1e-5, atol=1e-6)

    cm = compile_spec(spec_from_text(text), graphs=("eval",))
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    ce = None
    for rows in (data, {k: v[20:] for k, v in data.items()}):  # some unmasked entries; none at all
        logits = rows["x"].astype(np.float64) @ trainer.state_numpy()["W"].astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ce = -np.take_along_axis(logp, rows["y"][..., None], -1)[..., 0]
        want = (ce * rows["mask"]).sum() / max(rows["mask"].sum(), 1.0)
        for size in (3, 7, len(rows["x"])):
            got = trainer.evaluate([{k: v[i:i + size] for k, v in rows.items()} for i in range(0, len(rows["x"]), size)])
            assert got["loss"] == pytest.approx(want, rel=1e-5, abs=1e-7), size


@pytest.mark.parametrize("extra", ["", ", weight=[1.0, 2.0, 0.5, 3.0], label_smoothing=0.1"])
def test_cross_entropy_ignore_index_adds_up_over_batches_as_one_batch(tmp_path, extra):
    """cross_entropy(..., ignore_index=3) is a mean over the labels kept (weighed by weight=):
    its validation loss read 1.55 at batches of 3, 1.75 at 7 and 1.80 at all 23 rows (each
    batch's mean weighted by its rows), and --accumulate 2 moved the weights unlike one batch of
    both. Now its sums and counts add up over batches, a batch of ignored labels alone adding
    nothing."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer

    text = MASKED_SUM.replace("LR", "0.5").replace("  mask: {shape: [N, T]}\n", "").replace(
        "  ce: cross_entropy(x @ W, y, reduction='none')\nloss: sum(ce * mask) / sum(mask)",
        f"  logits: x @ W\nloss: cross_entropy(logits, y, ignore_index=3{extra})")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, (23, 5))
    y[rng.random((23, 5)) > np.linspace(0.1, 0.95, 23)[:, None]] = 3
    y[:5] = 3  # the first accumulated batch has no label kept
    data = {"x": rng.normal(size=(23, 5, 3)).astype(np.float32), "y": y}
    common = dict(data=data, valid="0", epochs=2, threads=1, device="cpu")
    train(text, run_dir=str(tmp_path / "big"), batch_size=10, **common)
    train(text, run_dir=str(tmp_path / "acc"), batch_size=5, accumulate=2, **common)
    big, acc = _params(str(tmp_path / "big")), _params(str(tmp_path / "acc"))
    np.testing.assert_allclose(acc["W"], big["W"], rtol=1e-5, atol=1e-6)

    trainer = Trainer(compile_spec(spec_from_text(text), graphs=("eval",)), "cpu", threads=1, seed=0)
    whole = trainer.evaluate([data])["loss"]
    for size in (3, 7):
        got = trainer.evaluate([{k: v[i:i + size] for k, v in data.items()} for i in range(0, 23, size)])
        assert got["loss"] == pytest.approx(whole, rel=1e-5), size


def test_cross_entropy_ignore_index_labels_are_taken_from_the_data(tmp_path):
    """cross_entropy(logits, y, ignore_index=-100), PyTorch's padding labels, could not be trained:
    the data was refused ('data["y"] has negative values'), and with ignore_index=3 a label 9 of
    4 classes was no longer checked, failing inside onnxruntime's GatherElements at step 0. Now
    the ignored value passes, ignored as in the loss, and any other label is checked as a class id."""
    text = MASKED_SUM.replace("LR", "0.5").replace("  mask: {shape: [N, T]}\n", "").replace(
        "  ce: cross_entropy(x @ W, y, reduction='none')\nloss: sum(ce * mask) / sum(mask)",
        "  logits: x @ W\nloss: cross_entropy(logits, y, ignore_index=-100)")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, (12, 5))
    y[rng.random((12, 5)) < 0.3] = -100
    data = {"x": rng.normal(size=(12, 5, 3)).astype(np.float32), "y": y}
    common = dict(valid="0", epochs=1, threads=1, device="cpu", batch_size=4)
    train(text, run_dir=str(tmp_path / "pad"), data=data, **common)
    # the ignored labels add nothing: the same run as one whose ignored labels are another class id
    text3 = text.replace("ignore_index=-100", "ignore_index=3")
    kept = y != -100
    data3 = {"x": data["x"], "y": np.where(kept, np.minimum(y, 2), 3)}
    data["y"] = np.where(kept, np.minimum(y, 2), -100)
    train(text, run_dir=str(tmp_path / "a"), data=data, **common)
    train(text3, run_dir=str(tmp_path / "b"), data=data3, **common)
    np.testing.assert_allclose(_params(str(tmp_path / "a"))["W"], _params(str(tmp_path / "b"))["W"], rtol=1e-6)
    for labels, said in ((np.where(kept, y, -5), "negative values"), (np.where(kept, y, 9), "has the value 9")):
        with pytest.raises(FlowgradError, match=said):
            train(text, run_dir=str(tmp_path / "bad"), data={"x": data["x"], "y": labels}, **common)
    data3["y"][0, 0] = 9
    with pytest.raises(FlowgradError, match="the model has 4 classes"):
        train(text3, run_dir=str(tmp_path / "bad3"), data=data3, **common)
    # PyTorch's padding label without ignore_index: told how to leave it out
    plain = text.replace(", ignore_index=-100", "")
    with pytest.raises(FlowgradError, match=r"has negative values \(first at example 0: -100\)") as e:
        train(plain, run_dir=str(tmp_path / "plain"), data={"x": data["x"], "y": np.where(kept, y, -100)}, **common)
    assert "cross_entropy(..., ignore_index=-100)" in e.value.hint


@pytest.mark.parametrize("guard, mask_of", [
    # a floor above a batch's count: few unmasked tokens, counted against maximum(sum(mask), 20.0)
    ("20.0", lambda r: (r < 0.3).astype(np.float32)),
    # soft weights, each batch's count below the floor of 1.0
    ("1.0", lambda r: (r * 0.02).astype(np.float32)),
])
def test_accumulated_batches_of_a_masked_mean_below_its_floor_move_as_one_batch(tmp_path, guard, mask_of):
    """A batch of sum(ce * mask) / maximum(sum(mask), floor) whose count is below the floor has
    its gradient divided by the floor, not by its count: --accumulate weighed it by its count, and
    moved the weights by a fraction of one batch of both's update (count / floor of it)."""
    text = MASKED_SUM.replace("LR", "0.5").replace("sum(ce * mask) / sum(mask)",
                                                   f"sum(ce * mask) / maximum(sum(mask), {guard})")
    rng = np.random.default_rng(1)
    mask = mask_of(rng.random((20, 5)))
    data = {"x": rng.normal(size=(20, 5, 3)).astype(np.float32), "y": rng.integers(0, 4, (20, 5)), "mask": mask}
    common = dict(data=data, valid="0", epochs=2, threads=1, device="cpu")
    train(text, run_dir=str(tmp_path / "big"), batch_size=10, **common)
    train(text, run_dir=str(tmp_path / "acc"), batch_size=5, accumulate=2, **common)
    big, acc = _params(str(tmp_path / "big")), _params(str(tmp_path / "acc"))
    np.testing.assert_allclose(acc["W"], big["W"], rtol=1e-5, atol=1e-6)


def test_accumulated_float16_gradients_of_many_tokens_do_not_overflow(tmp_path):
    """Each batch's float16 gradient was multiplied by its count (10,000 unmasked tokens) in
    float16: the products overflowed to inf and the run stopped ('W became NaN or inf at step
    1'), where one batch of all of them trained. The weighted sum is kept in float32."""
    text = MASKED_SUM.replace("LR", "0.001")
    rng = np.random.default_rng(0)
    data = {"x": ((rng.normal(size=(20, 1000, 3)) + 3) * 10).astype(np.float32),
            "y": np.zeros((20, 1000), np.int64), "mask": np.ones((20, 1000), np.float32)}
    common = dict(data=data, valid="0", epochs=1, threads=1, device="cpu", dtype="float16")
    train(text, run_dir=str(tmp_path / "big"), batch_size=20, **common)
    train(text, run_dir=str(tmp_path / "acc"), batch_size=10, accumulate=2, **common)
    big, acc = _params(str(tmp_path / "big")), _params(str(tmp_path / "acc"))
    assert acc["W"].dtype == np.float16
    np.testing.assert_allclose(acc["W"].astype(np.float32), big["W"].astype(np.float32), rtol=1e-2, atol=1e-3)


def test_early_stopping(tmp_path, data):
    text = REGRESSION + "  early_stopping: {metric: train_loss, mode: max, patience: 2}\n"
    spec = _spec(text, tmp_path)
    result = train(spec, run_dir=str(tmp_path / "run"), data=data, epochs=20, threads=1, device="cpu")
    # The loss falls every epoch, so "max" never improves after the first epoch.
    assert result.epochs == 3
    assert result.stopped == "early stopping: train_loss did not improve for 2 epochs"
    assert result.best["epoch"] == 1
    once = train(_spec(text.replace("patience: 2", "patience: 1"), tmp_path, "once.yaml"), run_dir=str(tmp_path / "once"),
                 data=data, epochs=20, threads=1, device="cpu")
    assert once.stopped == "early stopping: train_loss did not improve for 1 epoch"  # (it said '1 epochs')


def test_resuming_a_run_that_early_stopping_ended_trains_no_more(tmp_path, data):
    """--resume of an early-stopped run trained one more epoch (or more, when it improved):
    a run killed after its last checkpoint and resumed did not end as the uninterrupted one."""
    text = REGRESSION + "  early_stopping: {metric: train_loss, mode: max, patience: 2}\n"
    spec = _spec(text, tmp_path)
    opts = dict(run_dir=str(tmp_path / "run"), data=data, epochs=20, threads=1, device="cpu")
    first = train(spec, **opts)
    before = _params(opts["run_dir"])
    again = train(spec, resume=True, **opts)
    assert again.epochs == first.epochs == 3 and again.steps == first.steps
    assert again.stopped == first.stopped
    after = _params(opts["run_dir"])
    for k in before:
        assert np.array_equal(before[k], after[k]), k
    longer = _spec(text.replace("patience: 2", "patience: 3"), tmp_path, "longer.yaml")
    assert train(longer, resume=True, **opts).epochs == 4  # a larger patience goes on


def _record_bytes(path) -> int:
    """The size of a checkpoint's record (its __meta__), beside its tensors."""
    with np.load(path, allow_pickle=False) as z:
        return len(bytes(z["__meta__"]))


def _timeless(records) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _lines(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return _timeless(json.loads(line) for line in f)


def test_a_checkpoints_record_does_not_grow_with_the_epochs_of_the_run(tmp_path, data):
    """Each checkpoint carried the records of every epoch before it (and metrics.jsonl was
    written again from them on resume): a run of E epochs wrote bytes in E squared, and 2,000 epochs
    of a tiny model spent 16.7 s writing. A checkpoint now records how many of metrics.jsonl's
    lines it covers."""
    spec = _spec(REGRESSION, tmp_path)
    sizes = {}
    for epochs in (3, 30):
        run = tmp_path / f"run{epochs}"
        train(spec, run_dir=str(run), data=data, epochs=epochs, threads=1, device="cpu", progress=False)
        sizes[epochs] = [_record_bytes(run / name) for name in ("checkpoint.npz", "best.npz")]
        assert [r["epoch"] for r in _lines(run)] == list(range(1, epochs + 1))
        assert load_checkpoint(str(run / "checkpoint.npz"))[1]["records"] == epochs
    # (the digits of the step and of the best record's numbers may differ)
    assert all(abs(b - a) < 64 for a, b in zip(sizes[3], sizes[30])), sizes


def test_a_resume_from_an_earlier_checkpoint_redoes_the_records_and_the_patience_after_it(tmp_path, data):
    """metrics.jsonl is the run's record of its epochs: a resume from a checkpoint before the last
    one (best.npz, here the first epoch's) cuts it back to the epochs that checkpoint covers, and
    the epochs it redoes, and early stopping's count of epochs without improvement, are those of
    an uninterrupted run; so are they resumed from the last checkpoint."""
    text = REGRESSION + "  early_stopping: {metric: train_loss, mode: max, patience: 3}\n"
    spec = _spec(text, tmp_path)
    opts = dict(data=data, epochs=20, threads=1, device="cpu", progress=False)
    ref = train(spec, run_dir=str(tmp_path / "ref"), **opts)
    # the loss falls every epoch, so "max" never improves after the first epoch
    assert ref.epochs == 4 and ref.best["epoch"] == 1 and len(_lines(tmp_path / "ref")) == 4
    for start in ("checkpoint.npz", "best.npz"):
        run = tmp_path / start
        train(spec, run_dir=str(run), **{**opts, "epochs": 3})  # two epochs without improvement so far
        (run / "checkpoint.npz").write_bytes((run / start).read_bytes())
        resumed = train(spec, resume=True, run_dir=str(run), **opts)
        assert (resumed.epochs, resumed.stopped) == (ref.epochs, ref.stopped), start
        assert _timeless(resumed.history) == _timeless(ref.history) and _lines(run) == _lines(tmp_path / "ref")
        a, b = _params(str(tmp_path / "ref")), _params(str(run))
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_run_stopped_between_an_epochs_line_and_its_checkpoint_resumes_as_if_uninterrupted(tmp_path, data,
                                                                                           monkeypatch):
    """An epoch's line goes into metrics.jsonl before the checkpoint that covers it: stopped
    between the two, metrics.jsonl holds a line of an epoch that the resume trains again, and
    drops."""
    import runtime.train as T

    spec = _spec(REGRESSION, tmp_path)
    opts = dict(data=data, epochs=5, threads=1, device="cpu", progress=False)
    train(spec, run_dir=str(tmp_path / "ref"), **opts)
    real, written = T.atomic_write, []

    def stopped(path, *args, **kwargs):
        if path.endswith("checkpoint.npz"):
            written.append(path)
            if len(written) == 3:
                raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(T, "atomic_write", stopped)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(spec, run_dir=str(run), **opts)
    monkeypatch.undo()
    assert len(_lines(run)) == 3 and load_checkpoint(str(run / "checkpoint.npz"))[1]["epoch"] == 2
    resumed = train(spec, resume=True, run_dir=str(run), **opts)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4, 5]
    assert _lines(run) == _lines(tmp_path / "ref")


def test_a_checkpoint_of_an_earlier_flowgrad_with_the_epochs_records_resumes(tmp_path, data):
    """Checkpoints of earlier versions carry every epoch's record, and a resume wrote metrics.jsonl
    from them: such a run resumes so still, whatever its metrics.jsonl holds."""
    from runtime.checkpoint import checkpoint_bytes

    text = REGRESSION + "  early_stopping: {metric: train_loss, mode: max, patience: 3}\n"
    spec = _spec(text, tmp_path)
    opts = dict(data=data, epochs=20, threads=1, device="cpu", progress=False)
    ref = train(spec, run_dir=str(tmp_path / "ref"), **opts)
    run = tmp_path / "run"
    train(spec, run_dir=str(run), **{**opts, "epochs": 2})
    state, meta = load_checkpoint(str(run / "checkpoint.npz"))
    meta["history"] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    del meta["records"]
    (run / "checkpoint.npz").write_bytes(checkpoint_bytes(state, meta))
    (run / "metrics.jsonl").write_text("")  # (an earlier flowgrad wrote it again from the checkpoint)
    resumed = train(spec, resume=True, run_dir=str(run), **opts)
    assert (resumed.epochs, resumed.stopped) == (ref.epochs, ref.stopped)
    assert _timeless(resumed.history) == _timeless(ref.history) and _lines(run) == _lines(tmp_path / "ref")
    assert "history" not in load_checkpoint(str(run / "checkpoint.npz"))[1]


def test_stateful_lstm_continues_the_previous_batch():
    """With state carried across batches, the loss on batch 2 equals the loss of the same
    positions when the model reads batches 1 and 2 as one long sequence from a zero state."""
    import os

    from compiler.check import Runner
    from compiler.training import compile_spec
    from runtime.trainer import Trainer
    from spec import load_spec

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = load_spec(os.path.join(root, "models", "char_lstm_stateful.yaml"),
                     ["dims.H=6", "dims.E=4", "train.batch_size=3"])
    cm = compile_spec(spec, graphs=("train", "infer"))
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 97, size=(3, 2 * 5 + 1))
    b1 = {"x": stream[:, :5], "y": stream[:, 1:6]}
    b2 = {"x": stream[:, 5:10], "y": stream[:, 6:11]}
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    start = trainer.state_numpy()
    assert not start["hs.h0"].any() and not start["hs.c0"].any()
    trainer.train_step("main", b1, lr=0.0, step=0)
    assert trainer.state_numpy()["hs.h0"].any()
    loss2 = trainer.train_step("main", b2, lr=0.0, step=1)["loss"]

    infer = Runner(cm.graphs["infer"].model)
    feeds = {"x": stream[:, :10], **{k: v for k, v in start.items() if k in {i.name for i in cm.graphs["infer"].inputs}}}
    probs = infer(feeds)["probs"][:, 5:10]
    want = -np.mean(np.log(np.take_along_axis(probs, stream[:, 6:11, None], axis=-1)))
    assert loss2 == pytest.approx(want, rel=1e-5)


STATEFUL_CELL = """
flowgrad: 1
name: s
dims: {V: 11, E: 4, H: 6}
inputs:
  x: {shape: [N, T], dtype: int64}
  y: {shape: [N, T], dtype: int64}
blocks:
  step:
    in: [e_t, h, c]
    params:
      W: {shape: [E, 4*H], init: glorot_uniform}
      U: {shape: [H, 4*H], init: orthogonal}
      b: {shape: [4*H], init: zeros}
    graph:
      i, f, g, o: split(e_t @ W + h @ U + b, 4, axis=-1)
      c2: sigmoid(f) * c + sigmoid(i) * tanh(g)
      h2: sigmoid(o) * tanh(c2)
    out: [h2, c2]
graph:
  e: embedding(x, V, E)
  HS
  logits: dense(hs, V)
loss: cross_entropy(logits, y)
train: {batch_size: 3, shuffle: false, optimizer: {adam: {lr: 0.01}}}
"""


def test_a_stateful_scan_of_a_hand_written_cell_trains_as_the_stateful_layer():
    """scan(step, ..., stateful=true) carries its states across batches as lstm(e, H, stateful=true)
    does (scan had no stateful=, and a hand-written cell could not train a stateful language model):
    with the same weights, three steps over consecutive batches give the same losses and states."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer
    from spec import spec_from_text

    layer = compile_spec(spec_from_text(STATEFUL_CELL.replace("HS", "hs: lstm(e, H, stateful=true)"), "a.yaml"),
                         graphs=("train",))
    cell = compile_spec(spec_from_text(STATEFUL_CELL.replace(
        "HS", "hs, cs: scan(step, over=e, init=[zeros(N, H), zeros(N, H)], stateful=true)"), "b.yaml"), graphs=("train",))
    a = Trainer(layer, "cpu", threads=1, seed=0)
    start = a.state_numpy()
    same = {"step.W": "hs.W", "step.U": "hs.U", "step.b": "hs.b"}  # (the others are named alike)
    state = {k: start.get(same.get(k, k), v) for k, v in cell.initial_state(0).items()}  # (states: zeros)
    b = Trainer(cell, "cpu", threads=1, state=state, seed=0)
    stream = np.random.default_rng(0).integers(0, 11, size=(3, 3 * 5 + 1))
    for k in range(3):
        batch = {"x": stream[:, 5 * k:5 * k + 5], "y": stream[:, 5 * k + 1:5 * k + 6]}
        la = a.train_step("main", batch, lr=0.01, step=k)["loss"]
        lb = b.train_step("main", batch, lr=0.01, step=k)["loss"]
        assert lb == pytest.approx(la, rel=1e-5), k
    sa, sb = a.state_numpy(), b.state_numpy()
    assert sb["hs_cs.h0"].any()  # (the entry's name, its targets joined)
    for n in ("h0", "c0"):
        np.testing.assert_allclose(sb[f"hs_cs.{n}"], sa[f"hs.{n}"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scan, words", [
    ("scan(step, over=e, init=[zeros(N, H), zeros(N, H)], stateful=true, reverse=true)", "a reverse scan ends"),
    ("scan(step, over=e, init=[zeros(N, H), h0], stateful=true)", "state 'c' is not zeros"),
    ("scan(step, over=e, init=[zeros(N, H), zeros(1, H)], stateful=true)", "state 'c' is float32[1, 6], not a row"),
    ("scan(step, over=e, init=[zeros(N, H), zeros(N, H)], stateful=1)", "stateful must be true or false"),
])
def test_a_stateful_scan_refuses_what_it_cannot_carry(scan, words):
    from compiler.training import check_spec
    from spec import spec_from_text
    from spec.errors import SpecError

    text = STATEFUL_CELL.replace("HS", f"hs, cs: {scan}").replace("graph:\n  e:", "graph:\n  h0: zeros(N, H) + 1.0\n  e:")
    with pytest.raises(SpecError, match=re.escape(words)) as e:
        check_spec(spec_from_text(text, "s.yaml"))
    assert e.value.loc is not None and e.value.hint


STATEFUL_SCAN_IN_BLOCK = """
flowgrad: 1
name: s
dims: {E: 3, H: 4}
inputs:
  x: {shape: [N, T, E]}
  z: {shape: [N, T, E]}
blocks:
  cell:
    in: [x_t, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
    graph:
      h2: tanh(x_t @ W + h)
    out: [h2]
  enc:
    in: [s]
    graph:
      hs: scan(cell, over=s, init=[zeros(N, H)], stateful=true)
    out: [hs]
  outer:
    in: [x_t, g]
    graph:
      q: scan(cell, over=unsqueeze(x_t, axes=1), init=[zeros(N, H)], stateful=true)
      g2: g + mean(q, axis=1)
    out: [g2]
graph:
  a: A
  b: B
loss: mean(a * a) + mean(b)
train: {batch_size: 2, optimizer: {sgd: {lr: 0.1}}}
"""


@pytest.mark.parametrize("a, b, words", [
    ("enc(x)", "mean(z)", None),
    ("enc(x)", "enc(z)", "stateful= scan 'hs' is run more than once in a step"),
    ("scan(outer, over=x, init=[zeros(N, H)])", "mean(z)", "stateful= scan is in another scan's step"),
])
def test_a_stateful_scan_in_a_block(a, b, words):
    """In a block its buffer is named after the block (enc.hs.h0) and carried; a block called twice,
    or a scan's step, would carry one state for several runs, or never carry it: refused."""
    from compiler.training import check_spec, compile_spec
    from runtime.trainer import Trainer
    from spec import spec_from_text
    from spec.errors import SpecError

    spec = spec_from_text(STATEFUL_SCAN_IN_BLOCK.replace("  a: A", f"  a: {a}").replace("  b: B", f"  b: {b}"), "s.yaml")
    if words:
        with pytest.raises(SpecError, match=re.escape(words)):
            check_spec(spec)
        return
    trainer = Trainer(compile_spec(spec, graphs=("train",)), "cpu", threads=1, seed=0)
    ones = np.ones((2, 5, 3), np.float32)
    trainer.train_step("main", {"x": ones, "z": ones}, lr=0.1, step=0)
    assert trainer.state_numpy()["enc.hs.h0"].any()


def test_a_stateful_model_starts_each_epoch_from_zeros(tmp_path):
    """The state the last batch of an epoch ended with (each stream's end) started the next
    epoch's first batch (each stream's beginning). With the weights all but frozen, two epochs
    now read the same batches from the same states: their training losses are equal."""
    import os

    from runtime.api import train
    from spec import load_spec

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = load_spec(os.path.join(root, "models", "char_lstm_stateful.yaml"),
                     ["dims.H=4", "dims.E=2", "train.optimizer={sgd: {lr: 1e-12}}"])
    result = train(spec, run_dir=str(tmp_path / "run"), epochs=2, threads=1, device="cpu", progress=False)
    first, second = (h["train_loss"] for h in result.history)
    assert second == first  # (the weights do not move at this lr: the same computation, bit for bit)


def test_a_batch_size_override_sizes_the_carried_state(tmp_path):
    """`--batch-size` (TrainOptions.batch_size) trains a stateful model: the carried state has
    the overriding batch's rows (it had the spec's and the first step failed)."""
    import os

    from runtime.api import train
    from runtime.checkpoint import load_checkpoint
    from spec import load_spec

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = load_spec(os.path.join(root, "models", "char_lstm_stateful.yaml"),
                     ["dims.H=6", "dims.E=4", "train.data.options.streams=5"])  # the data laid out for 5 rows
    assert spec.batch_size == 32
    result = train(spec, batch_size=5, steps=2, device="cpu", run_dir=str(tmp_path / "run"))
    assert result.steps == 2
    state, _ = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert state["hs.h0"].shape == (5, 6) and state["hs.h0"].any()


@pytest.mark.parametrize("train_cfg, words", [
    ("  optimizer: {sgd: {lr: 0.1, nesterov: true}}\n", "nesterov needs momentum"),
    ("  drop_last: true\n  batch_size: 100\n", "drop_last leaves no batch"),
])
def test_training_settings_that_cannot_work_are_located_errors(tmp_path, data, train_cfg, words):
    text = REGRESSION.replace("  optimizer: {sgd: {lr: 0.05}}\n  batch_size: 16\n", train_cfg + (
        "  optimizer: {sgd: {lr: 0.05}}\n" if "optimizer" not in train_cfg else ""))
    with pytest.raises(FlowgradError, match=words) as e:
        train(_spec(text, tmp_path), run_dir=str(tmp_path / "r"), data=data, steps=2, threads=1, device="cpu")
    assert "spec.yaml:" in str(e.value)


def test_drop_last_with_accumulate_counts_an_epochs_last_short_update(tmp_path, data):
    """64 examples, batches of 16, 3 per update, drop_last: updates of 3 and 1 batches, two an epoch."""
    spec = _spec(REGRESSION + "  drop_last: true\n", tmp_path)
    res = train(spec, run_dir=str(tmp_path / "r"), data=data, valid="0", epochs=4, accumulate=3, threads=1,
                device="cpu")
    assert (res.epochs, res.steps) == (4, 8)


def test_drop_last_with_accumulate_makes_the_last_update_of_the_batches_left(tmp_path, data):
    """70 examples, batches of 16, 3 per update, drop_last: the epoch's 4 batches (64 rows) make
    updates of 3 and 1 batches, as 64 examples without drop_last do (the update of the fourth
    batch was never made: one step an epoch, its loss over 48 rows)."""
    x, y = np.load(data)["x"], np.load(data)["y"]
    np.savez(tmp_path / "d70.npz", x=np.concatenate([x, x[:6]]), y=np.concatenate([y, y[:6]]))
    common = dict(valid="0", epochs=2, accumulate=3, threads=1, device="cpu")
    dropped = train(_spec(REGRESSION + "  drop_last: true\n  shuffle: false\n", tmp_path, "drop.yaml"),
                    run_dir=str(tmp_path / "drop"), data=str(tmp_path / "d70.npz"), **common)
    whole = train(_spec(REGRESSION + "  shuffle: false\n", tmp_path), run_dir=str(tmp_path / "whole"), data=data,
                  **common)
    assert (dropped.epochs, dropped.steps) == (whole.epochs, whole.steps) == (2, 4)
    assert [r["train_loss"] for r in dropped.history] == [r["train_loss"] for r in whole.history]
    a, b = _params(str(tmp_path / "drop")), _params(str(tmp_path / "whole"))
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


BATCH_NORMED = REGRESSION.replace("  h: tanh(x @ W1)\n", "  h: tanh(batch_norm(x @ W1))\n")


@pytest.mark.parametrize("rows, batch_size, words", [
    (65, 16, r"end an epoch with a batch of one \(batch_size=16\)"),
    (64, 1, "batch_size=1 gives batches of one example"),
])
def test_batch_norm_over_a_batch_of_one_example_is_refused_before_training(tmp_path, rows, batch_size, words):
    """A batch of one example leaves batch_norm one value per channel: its running variance became
    NaN (0 / 0) and the run stopped after the epoch, saying to lower the learning rate. PyTorch
    refuses such a batch; so does training here, at the batch_norm, before the first step."""
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(rows, 4)).astype(np.float32), "y": rng.normal(size=rows).astype(np.float32)}
    with pytest.raises(FlowgradError, match=words) as e:
        train(_spec(BATCH_NORMED, tmp_path), run_dir=str(tmp_path / "r"), data=arrays, valid="0", epochs=1,
              batch_size=batch_size, threads=1, device="cpu")
    assert "spec.yaml:12:11:" in str(e.value) and "running variance" in str(e.value)
    assert not os.path.exists(tmp_path / "r" / "checkpoint.npz")
    assert "(batch_size)" in e.value.hint  # the keyword given, as flowgrad train names --batch-size
    # drop_last leaves the short batch out, and a batch_norm over images counts their pixels too
    res = train(_spec(BATCH_NORMED + "  drop_last: true\n", tmp_path, "dropped.yaml"), run_dir=str(tmp_path / "d"),
                data=arrays, valid="0", epochs=1, threads=1, device="cpu")
    assert np.isfinite(res.final["train_loss"])


def test_with_both_limits_the_lr_schedule_plans_for_the_one_reached_first(tmp_path, data, monkeypatch):
    import runtime.train as TR

    planned = []
    real = TR.lr_schedule
    monkeypatch.setattr(TR, "lr_schedule", lambda lr, cfg, total, per_epoch: planned.append(total) or real(lr, cfg, total, per_epoch))
    train(_spec(REGRESSION, tmp_path), run_dir=str(tmp_path / "r"), data=data, valid="0", epochs=1, steps=100,
          threads=1, device="cpu")
    assert planned == [4]  # 64 examples / 16 a batch: the epoch ends first


def test_an_objective_named_twice_in_the_schedule_is_a_located_error(tmp_path):
    from compiler.training import compile_spec

    text = open(os.path.join(ROOT, "models", "gan.yaml")).read().replace(
        "schedule: [discriminator, generator]", "schedule: [discriminator, discriminator, generator]")
    with pytest.raises(FlowgradError, match="2 times") as e:
        compile_spec(_spec(text, tmp_path, "gan.yaml"))
    assert "gan.yaml:47:" in str(e.value)


def test_two_objectives_sharing_a_parameter_keep_their_own_optimizer_state(monkeypatch):
    """With one flat state vector per objective (small models) or one slot per parameter
    (large ones), each objective's Adam moments are its own."""
    import compiler.training as CT

    spec = spec_from_text(open(os.path.join(ROOT, "models", "semisupervised.yaml")).read(), "semi.yaml")
    for limit in (CT.FUSED_UPDATE_MAX_ELEMENTS, 0):
        monkeypatch.setattr(CT, "FUSED_UPDATE_MAX_ELEMENTS", limit)
        cm = CT.compile_spec(spec, graphs=("train",))
        layouts = {o.name: {n for n, _ in CT.state_layout(cm.params, o)} for o in cm.objectives}
        shared = set(CT.trained_names(cm.params, cm.objectives[0])) & set(CT.trained_names(cm.params, cm.objectives[1]))
        assert shared, "the spec's objectives share the encoder"
        a, b = layouts.values()
        assert not (a & b), (limit, a & b)


def test_the_semisupervised_specs_labels_alone_overrides_train_the_classifier_alone(tmp_path):
    """The spec's doc names the --set overrides that train its classifier on the labels alone:
    they named only the schedule, which a schedule leaving out an objective refuses."""
    import re
    import shlex

    from spec import load_spec

    path = os.path.join(ROOT, "models", "semisupervised.yaml")
    doc = " ".join(load_spec(path).doc.split())
    words = shlex.split(re.search(r"labels alone: (.*)\.$", doc).group(1))
    overrides = [w for flag, w in zip(words, words[1:]) if flag == "--set"]
    assert overrides and len(overrides) * 2 == len(words)
    spec = load_spec(path, ["dims.H=16", *overrides])
    result = train(spec, run_dir=str(tmp_path / "r"), steps=2, threads=1, device="cpu")
    assert result.steps == 2 and set(spec.train["schedule"]) == {"classify"}


def test_resuming_with_other_frozen_parameters_is_refused(tmp_path, data):
    """The optimizer's flat state follows the trained parameters in order: resumed with another
    --freeze of the same total size, one parameter's moments would drive another."""
    spec = _spec(REGRESSION, tmp_path)  # W1 [4, 8] and w2 [8]
    train(spec, run_dir=str(tmp_path / "r"), data=data, steps=2, freeze=["W1"], threads=1, device="cpu")
    with pytest.raises(FlowgradError, match="other parameters") as e:
        train(spec, run_dir=str(tmp_path / "r"), data=data, steps=4, freeze=["w2"], resume=True, threads=1, device="cpu")
    assert "then also w2" in str(e.value) and "now also W1" in str(e.value)
    train(spec, run_dir=str(tmp_path / "r"), data=data, steps=4, freeze=["W1"], resume=True, threads=1, device="cpu")


def test_resuming_with_a_freeze_that_resizes_the_optimizer_state_names_the_freeze(tmp_path, data):
    """README: a resume with another --freeze is refused. One that changes how many values are
    trained also resizes the optimizer state, and was refused as if the spec had changed."""
    spec = _spec(REGRESSION.replace("sgd: {lr: 0.05}", "adam: {lr: 0.01}"), tmp_path)  # (sgd keeps no state)
    train(spec, run_dir=str(tmp_path / "r"), data=data, steps=2, threads=1, device="cpu")
    with pytest.raises(FlowgradError, match="other parameters") as e:
        train(spec, run_dir=str(tmp_path / "r"), data=data, steps=4, freeze=["W1"], resume=True, threads=1, device="cpu")
    assert "then also W1" in str(e.value) and "spec changed" not in str(e.value)


def test_stream_laid_data_refuses_other_batch_sizes_and_shuffling(tmp_path):
    """Rows of batch w continue the same rows of batch w - 1 only in unshuffled batches of as
    many rows as there are streams."""
    from spec import load_spec

    path = os.path.join(ROOT, "models", "char_lstm_stateful.yaml")
    for overrides, extra in ((["dims.H=6"], {"batch_size": 16}), (["dims.H=6", "train.shuffle=true"], {})):
        with pytest.raises(FlowgradError, match="32 text streams") as e:
            train(load_spec(path, overrides), steps=1, device="cpu", run_dir=str(tmp_path / "r"), **extra)
        assert "char_lstm_stateful.yaml:23:" in str(e.value)


def test_a_test_fraction_is_held_out_of_training(tmp_path, data):
    """train.data.test: 0.5 of 64 examples leaves 32 to train on (it was read by nothing, and the
    'held out' examples were trained on); with valid, the two fractions must sum to less than 1.
    The error said they 'leave no training data', which they do not: valid takes its fraction of
    what test leaves (0.5 and 0.5 would train on a quarter of the data)."""
    text = REGRESSION.replace("  batch_size: 16\n", f"  batch_size: 16\n  data: {{path: {data}, test: 0.5}}\n")
    res = train(_spec(text, tmp_path), run_dir=str(tmp_path / "r"), valid="0", epochs=1, threads=1, device="cpu")
    assert res.steps == 2  # 32 examples, batches of 16
    for valid, total in (("0.6", "1.1"), ("0.5", "1")):
        bad = text.replace("test: 0.5}", f"test: 0.5, valid: {valid}}}")
        with pytest.raises(FlowgradError, match=rf"valid {valid} and test 0.5 must sum to less than 1 \(they sum to "
                                                rf"{total}\)") as e:
            train(_spec(bad, tmp_path, "bad.yaml"), run_dir=str(tmp_path / "b"), epochs=1, threads=1, device="cpu")
        assert "no training data" not in str(e.value) and "valid its fraction of the rest" in e.value.hint
        assert "bad.yaml:" in str(e.value.loc)
    # given as valid= (--valid), the error names it (it said "valid 0.6", as if the spec said so)
    with pytest.raises(FlowgradError) as e:
        train(_spec(text, tmp_path), run_dir=str(tmp_path / "b"), valid="0.6", epochs=1, threads=1, device="cpu")
    assert e.value.message.startswith('valid="0.6" and test 0.5 must sum to less than 1')  # (as given)
    # at the spec's test, where flowgrad check points (it pointed at train.data, the mapping)
    loc = spec_from_text(text, "spec.yaml").locate("train", "data", "test")
    assert (e.value.loc.line, e.value.loc.col) == (loc.line, loc.col)
    assert "valid its fraction of the rest" in e.value.hint and "--" not in e.value.hint
    # a fraction quoted as a string reads as one, as valid's does (it was looked up as a file)
    quoted = text.replace("test: 0.5}", "test: '0.5'}")
    res = train(_spec(quoted, tmp_path, "quoted.yaml"), run_dir=str(tmp_path / "q"), valid="0", epochs=1, threads=1,
                device="cpu")
    assert res.steps == 2
    for wrong, words in [("test: '1.5'}", "test 1.5 is not a fraction"), ("test: 'nan'}", "test nan is not a fraction")]:
        with pytest.raises(FlowgradError, match=words) as e:
            train(_spec(text.replace("test: 0.5}", wrong), tmp_path, "w.yaml"), run_dir=str(tmp_path / "w"),
                  epochs=1, threads=1, device="cpu")
        assert "w.yaml:" in str(e.value.loc)


@pytest.mark.parametrize("train_cfg, words", [
    ("  early_stopping: {metric: valid_accuracy}\n", "larger or a smaller"),
    ("  optimizer: {adam: {lr: .inf}}\n", "finite"),
])
def test_settings_that_would_train_the_wrong_way_are_located_errors(tmp_path, data, train_cfg, words):
    """Early stopping on an accuracy with the default mode kept the worst epoch as best; an
    infinite lr ended in 'loss became nan', blaming the training."""
    text = REGRESSION.replace("  optimizer: {sgd: {lr: 0.05}}\n", train_cfg if "optimizer" in train_cfg
                              else "  optimizer: {sgd: {lr: 0.05}}\n" + train_cfg)
    text = text.replace("train:\n", "metrics:\n  accuracy: mean(abs(pred - y) < 0.5)\ntrain:\n")
    with pytest.raises(FlowgradError, match=words) as e:
        train(_spec(text, tmp_path), run_dir=str(tmp_path / "r"), data=data, valid="0.25", steps=1, threads=1,
              device="cpu")
    assert "spec.yaml:" in str(e.value)


def test_a_misspelt_early_stopping_metric_is_named_before_its_mode_is_asked_for(tmp_path, data):
    """valid_acuracy without a mode was asked 'is a larger or a smaller valid_acuracy better?', and
    refused as not reported only once the user had added mode: max."""
    text = REGRESSION.replace("train:\n", "metrics:\n  accuracy: mean(abs(pred - y) < 0.5)\ntrain:\n")
    text += "  early_stopping: {metric: valid_acuracy}\n"
    with pytest.raises(FlowgradError, match="early_stopping metric 'valid_acuracy' is not reported") as e:
        train(_spec(text, tmp_path), run_dir=str(tmp_path / "r"), data=data, valid="0.25", steps=1, threads=1,
              device="cpu")
    assert e.value.hint.startswith("did you mean 'valid_accuracy' or 'train_accuracy'? (reported: train_loss, ")
    assert e.value.hint.endswith("; and add mode: max or mode: min")
    assert "spec.yaml:" in str(e.value)


def test_a_bias_flag_must_be_true_or_false(tmp_path):
    from compiler.training import compile_spec

    text = REGRESSION.replace("h: tanh(x @ W1)", 'h: tanh(dense(x, H, bias="false"))')
    with pytest.raises(FlowgradError, match="bias must be true or false"):
        compile_spec(_spec(text, tmp_path))


def test_resume_does_not_combine_with_starting_over(tmp_path, data):
    spec = _spec(REGRESSION, tmp_path)
    train(spec, run_dir=str(tmp_path / "r"), data=data, steps=1, threads=1, device="cpu")
    for extra in ({"overwrite": True}, {"init_from": str(tmp_path / "r")}):
        with pytest.raises(FlowgradError, match="does not combine"):
            train(spec, run_dir=str(tmp_path / "r"), data=data, steps=2, resume=True, threads=1, device="cpu", **extra)


MASKED_METRICS = """
flowgrad: 1
name: masked
dims: {V: 5}
inputs:
  x: {shape: [N, T, V]}
  y: {shape: [N, T], dtype: int64}
  mask: {shape: [N, T]}
graph:
  logits: x * 2.0
loss: sum(cross_entropy(logits, y, reduction='none') * mask) / sum(mask)
metrics:
  token_accuracy: sum(cast(argmax(logits, axis=-1) == y, 'float32') * mask) / sum(mask)
  bits: cross_entropy(logits, y) / 0.6931471805599453
  batch_mean_of_means: mean(mean(x, axis=0))
"""


def test_evaluation_of_means_and_masked_ratios_is_over_all_entries_whatever_the_batches():
    """A masked mean over a dataset counts every unmasked token once: sum over sum, not the mean
    of batch values weighted by rows (a short batch's tokens would count more). Means over all
    entries are totals too; other metrics stay row-weighted means of batch values."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer

    cm = compile_spec(spec_from_text(MASKED_METRICS), graphs=("eval",))
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    rng = np.random.default_rng(0)
    n, t = 23, 6
    data = {"x": rng.normal(size=(n, t, 5)).astype(np.float32), "y": rng.integers(0, 5, (n, t)),
            "mask": (rng.random((n, t)) < np.linspace(0.1, 0.9, n)[:, None]).astype(np.float32)}
    logits = data["x"].astype(np.float64) * 2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, data["y"][..., None], -1)[..., 0]
    want = {"loss": (ce * data["mask"]).sum() / data["mask"].sum(),
            "token_accuracy": ((logits.argmax(-1) == data["y"]) * data["mask"]).sum() / data["mask"].sum(),
            "bits": ce.mean() / np.log(2)}
    for size in (1, 4, 7, n):
        batches = [{k: v[i:i + size] for k, v in data.items()} for i in range(0, n, size)]
        got = trainer.evaluate(batches)
        assert sorted(got) == ["batch_mean_of_means", "bits", "loss", "token_accuracy"]
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-5), (size, k)
        rows = [len(b["x"]) for b in batches]
        means = [b["x"].astype(np.float64).mean(0).mean() for b in batches]
        assert got["batch_mean_of_means"] == pytest.approx(np.dot(rows, means) / n, rel=1e-5, abs=1e-6)


EQUAL_RATIOS = """
flowgrad: 1
name: ratios
dims: {V: 5}
inputs:
  x: {shape: [N, T, V]}
  y: {shape: [N, T], dtype: int64}
  mask: {shape: [N, T]}
graph:
  ce: cross_entropy(x * 2.0, y, reduction='none')
  hit: cast(argmax(x, axis=-1) == y, 'float32')
  seen: mask > 0
loss: mean(ce * mask) / mean(mask)
metrics:
  percent: 100 * sum(hit * mask) / sum(mask)
  negated: -sum(-ce * mask) / sum(mask)
  bits: sum(ce * mask) / sum(mask) / log(2.0)
  counted: sum(cast(logical_and(argmax(x, axis=-1) == y, seen), 'int64')) / sum(cast(seen, 'int64'))
  time_major: sum(transpose(ce * mask)) / sum(transpose(mask))
  flat: sum(flatten(ce * mask, axis=0)) / sum(mask)
"""


def test_masked_means_written_in_equal_forms_are_over_all_entries_too():
    """100 * sum(hit * mask) / sum(mask) (the constant before the ratio), a negated ratio, one over
    log(2.0), mean(ce * mask) / mean(mask), counts summed as integers, and sums of transposed or
    flattened tensors were averaged per batch and weighted by rows, where the same ratio written
    sum(hit * mask) / sum(mask) * 100 was over all entries: 15.87 read 11.08 at batches of 4."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer

    cm = compile_spec(spec_from_text(EQUAL_RATIOS), graphs=("eval",))
    parts = {o.name for o in cm.graphs["eval"].outputs if o.role == "part"}
    assert parts == {f"{k}/{p}" for k in ("loss", "percent", "negated", "bits", "counted", "time_major", "flat")
                     for p in ("sum", "count")}
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    rng = np.random.default_rng(0)
    n, t = 23, 6
    data = {"x": rng.normal(size=(n, t, 5)).astype(np.float32), "y": rng.integers(0, 5, (n, t)),
            "mask": (rng.random((n, t)) < np.linspace(0.1, 0.9, n)[:, None]).astype(np.float32)}
    logits = data["x"].astype(np.float64) * 2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, data["y"][..., None], -1)[..., 0]
    m = data["mask"]
    masked_ce = (ce * m).sum() / m.sum()
    accuracy = ((data["x"].argmax(-1) == data["y"]) * m).sum() / m.sum()
    want = {"loss": masked_ce, "percent": 100 * accuracy, "negated": masked_ce, "bits": masked_ce / np.log(2),
            "counted": accuracy, "time_major": masked_ce, "flat": masked_ce}
    for size in (1, 4, 7, n):
        got = trainer.evaluate([{k: v[i:i + size] for k, v in data.items()} for i in range(0, n, size)])
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-5), (size, k)


@pytest.mark.parametrize("change, words", [
    ({"batch_size": 8}, "another batch_size (16, now 8)"),  # (it said "batch size", naming no argument)
    ({"accumulate": 2}, "another accumulate (1, now 2)"),
])
def test_resume_with_other_batches_is_refused(tmp_path, data, change, words):
    """The checkpoint's step count and lr schedule count its batches: resumed with another
    batch size or --accumulate, the run went on as a different run from the middle of this
    one, without a word."""
    spec = _spec(REGRESSION, tmp_path)
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=3, threads=1, device="cpu")
    train(spec, **opts)
    with pytest.raises(FlowgradError, match=re.escape(words)) as e:
        train(spec, resume=True, **{**opts, "steps": 6, **change})
    assert "init_from=" in e.value.hint and "--" not in e.value.hint  # (train()'s keywords, not the CLI's flags)
    assert train(spec, resume=True, **{**opts, "steps": 6}).steps == 6  # the run's own batches go on


def test_resume_after_the_specs_batch_size_changed_names_train_batch_size(tmp_path, data):
    """The batch size came from the spec, not from --batch-size: the error names the spec's key."""
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=3, threads=1, device="cpu")
    train(_spec(REGRESSION, tmp_path), **opts)
    edited = _spec(REGRESSION.replace("  batch_size: 16", "  batch_size: 8"), tmp_path, "edited.yaml")
    with pytest.raises(FlowgradError, match=re.escape("another train.batch_size (16, now 8)")):
        train(edited, resume=True, **{**opts, "steps": 6})


def test_resume_without_the_runs_batch_size_is_told_the_value_it_trained_with(tmp_path, data):
    """A run trained with batch_size=8 (the spec says 16) and resumed without it was told to
    resume with the run's own train.batch_size, which its spec.yaml gives as 16: the value it
    trained with is what resumes it."""
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=3, threads=1, device="cpu")
    spec = _spec(REGRESSION, tmp_path)
    train(spec, batch_size=8, **opts)
    with pytest.raises(FlowgradError, match=re.escape("another train.batch_size (8, now 16)")) as e:
        train(spec, resume=True, **{**opts, "steps": 6})
    assert e.value.hint.startswith("resume with batch_size=8, as it trained")
    assert train(spec, resume=True, batch_size=8, **{**opts, "steps": 6}).steps == 6


def test_an_objectives_overflowed_steps_leave_its_own_epoch_averages_alone(tmp_path, data, monkeypatch):
    """With several objectives in mixed precision, an epoch's rows were counted only for steps
    whose last objective did not overflow: the first objective's average was then a sum over
    some rows divided by others (here its loss came out about 3/4 of what it was)."""
    import runtime.train as T
    from runtime.trainer import Trainer

    spec = _spec(TWO_OBJECTIVES + "  mixed_precision: float16\n", tmp_path)
    seen = []
    plain = Trainer.train_step

    def second_overflows_every_other_step(self, objective, batch, lr, step):
        out = plain(self, objective, batch, lr, step)
        seen.append((objective, step, dict(out)))
        return {**out, "loss": float("nan")} if objective == "second" and step % 2 else out

    monkeypatch.setattr(Trainer, "train_step", second_overflows_every_other_step)
    result = train(spec, run_dir=str(tmp_path / "run"), data=data, epochs=1, valid="0", threads=1, device="cpu")
    # (float16's first steps overflow at the initial loss scale by themselves, too)
    first = [out["loss"] for obj, _, out in seen if obj == "first"]
    second = [out["loss"] if not step % 2 else np.nan for obj, step, out in seen if obj == "second"]
    assert np.isnan(second).sum() > np.isnan(first).sum() and not np.isnan(first).all()
    assert result.history[0]["train_first/loss"] == pytest.approx(np.nanmean(first), rel=1e-6)
    assert result.history[0]["train_second/loss"] == pytest.approx(np.nanmean(second), rel=1e-6)


def test_an_epoch_whose_every_step_overflowed_neither_ends_the_run_nor_becomes_the_best(tmp_path, data, monkeypatch):
    """A mixed-precision epoch whose every step overflowed books no train_loss: with no
    validation it became the best, and the next epoch with a loss ended in a KeyError traceback
    ('train_loss') where the best was compared. It counts as a NaN loss now."""
    from runtime.trainer import Trainer

    spec = _spec(REGRESSION + "  mixed_precision: float16\n", tmp_path)
    plain = Trainer.train_step

    def the_second_epoch_overflows(self, objective, batch, lr, step):  # (4 steps an epoch)
        out = plain(self, objective, batch, lr, step)
        return {**out, "loss": float("nan")} if 4 <= step < 8 else out

    monkeypatch.setattr(Trainer, "train_step", the_second_epoch_overflows)
    result = train(spec, run_dir=str(tmp_path / "run"), data=data, epochs=3, valid="0", threads=1, device="cpu")
    assert ["train_loss" in r for r in result.history] == [True, False, True]
    assert result.best["epoch"] in (1, 3) and "train_loss" in result.best


def test_each_objective_has_its_validation_loss(tmp_path, data):
    """Training reported train_<objective>/loss, validation only the spec's loss and metrics: a
    GAN (no single loss) had no validation loss at all, and early stopping could watch none."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer

    spec = _spec(TWO_OBJECTIVES, tmp_path)
    cm = compile_spec(spec, graphs=("eval",))
    state = cm.initial_state(0)
    d = dict(np.load(data))
    got = Trainer(cm, "cpu", threads=1, state=state, seed=0).evaluate([d])
    pa, pb = d["x"] @ state["A"], d["x"] @ state["B"]
    assert got["first/loss"] == pytest.approx(np.mean((pa - d["y"]) ** 2), rel=1e-5)
    assert got["second/loss"] == pytest.approx(np.mean((pb + pa - 2 * d["y"]) ** 2), rel=1e-5)
    assert got["loss"] == pytest.approx(got["first/loss"] + got["second/loss"], rel=1e-5)

    watched = _spec(TWO_OBJECTIVES + "  early_stopping: {metric: valid_second/loss, patience: 2}\n", tmp_path, "es.yaml")
    result = train(watched, run_dir=str(tmp_path / "run"), data=data, valid="0.25", epochs=3, threads=1, device="cpu")
    assert {"valid_first/loss", "valid_second/loss", "train_first/loss"} <= set(result.history[-1])
    assert result.best["valid_second/loss"] == min(r["valid_second/loss"] for r in result.history)


def test_objectives_named_sum_and_count_have_their_validation_losses(tmp_path, data):
    """Objective names are free: the losses of objectives named sum and count were taken for
    the sums and counts of the spec's loss (compiling failed with onnx's checker error, or evaluation
    ended in a KeyError)."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer

    text = (TWO_OBJECTIVES.replace("first:", "sum:").replace("second:", "count:").replace("[first, second]", "[sum, count]")
            .replace("loss: la + lb", "loss: mean((pa - y) ** 2 + (pb + pa - 2 * y) ** 2)"))
    cm = compile_spec(_spec(text, tmp_path), graphs=("eval",))
    state = cm.initial_state(0)
    d = dict(np.load(data))
    got = Trainer(cm, "cpu", threads=1, state=state, seed=0).evaluate([{k: v[:40] for k, v in d.items()},
                                                                      {k: v[40:] for k, v in d.items()}])
    pa, pb = d["x"] @ state["A"], d["x"] @ state["B"]
    assert sorted(got) == ["count/loss", "loss", "sum/loss"]
    assert got["sum/loss"] == pytest.approx(np.mean((pa - d["y"]) ** 2), rel=1e-5)
    assert got["count/loss"] == pytest.approx(np.mean((pb + pa - 2 * d["y"]) ** 2), rel=1e-5)
    assert got["loss"] == pytest.approx(got["sum/loss"] + got["count/loss"], rel=1e-5)


def test_objectives_without_a_spec_loss_or_metrics_have_validation_losses(tmp_path, data):
    """A spec of several objectives with no top-level loss and no metrics compiled no eval
    graph: validation reported nothing, and early stopping on valid_<objective>/loss was
    refused as a value the record lacks."""
    text = TWO_OBJECTIVES.replace("loss: la + lb\n", "") + "  early_stopping: {metric: valid_second/loss, patience: 2}\n"
    result = train(_spec(text, tmp_path), run_dir=str(tmp_path / "run"), data=data, valid="0.25", epochs=2, threads=1,
                   device="cpu")
    assert {"valid_first/loss", "valid_second/loss"} <= set(result.history[-1])
    assert "valid_loss" not in result.history[-1]


@pytest.mark.parametrize("other", ["adamw: {lr: 0.01}", "sgd: {lr: 0.05}"])
def test_resuming_with_another_optimizer_is_refused(tmp_path, data, other):
    """Resumed with another optimizer, a run went on without a word: AdamW read Adam's m and v
    as its own, and SGD left them in every later checkpoint, for a resume with Adam again to
    take up stale. Another lr is no other optimizer: that resume goes on."""
    adam = REGRESSION.replace("sgd: {lr: 0.05}", "adam: {lr: 0.01}")
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=2, threads=1, device="cpu")
    train(_spec(adam, tmp_path), **opts)
    with pytest.raises(FlowgradError, match="trained with the adam optimizer, and the spec now asks for") as e:
        train(_spec(adam.replace("adam: {lr: 0.01}", other), tmp_path), resume=True, **{**opts, "steps": 4})
    assert f'init_from="{tmp_path / "run"}", run_dir="NEW_DIR"' in e.value.hint  # (train()'s keywords)
    assert load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))[1]["step"] == 2  # left as it was
    assert train(_spec(adam.replace("0.01", "0.005"), tmp_path), resume=True, **{**opts, "steps": 4}).steps == 4


@pytest.mark.parametrize("first, then, words", [
    ("sgd: {lr: 0.05, momentum: 0.9}", "sgd: {lr: 0.05}", "holds velocity/main, which this run's optimizer settings do not keep"),
    ("sgd: {lr: 0.05}", "sgd: {lr: 0.05, momentum: 0.9}", "lacks velocity/main, which this run's optimizer settings keep"),
])
def test_resuming_with_momentum_turned_off_or_on_is_refused(tmp_path, data, first, then, words):
    """sgd resumed with its momentum turned off went on, and carried the velocity in its
    checkpoints for a resume with momentum again to take up, stale; turned on, the missing velocity
    was blamed on a changed spec. Both name the optimizer's settings."""
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=2, threads=1, device="cpu")
    train(_spec(REGRESSION.replace("sgd: {lr: 0.05}", first), tmp_path), **opts)
    with pytest.raises(FlowgradError, match=re.escape(words)) as e:
        train(_spec(REGRESSION.replace("sgd: {lr: 0.05}", then), tmp_path), resume=True, **{**opts, "steps": 4})
    assert "the optimizer's settings changed" in str(e.value) and "its spec.yaml has them" in e.value.hint


@pytest.mark.parametrize("edit, words", [
    (("tanh(x @ W1)", "relu(x @ W1)"), "spec.yaml:12:6: graph entry 'h' is now relu(x @ W1); {run} trained tanh(x @ W1)"),
    (("  pred: h @ w2\n", "  g: h * 2\n  pred: g @ w2\n"), "graph entry 'g' (h * 2) is new: {run} trained without it"),
    (("init: glorot_uniform}\n  w2", "init: he_normal}\n  w2"), "parameter W1 is now [4, 8] float32, init he_normal"),
    (("loss: mean((pred - y) ** 2)", "loss: mean(abs(pred - y))"), "the loss is now mean(abs(pred - y))"),
])
def test_resuming_an_edited_model_is_refused(tmp_path, data, edit, words):
    """Resumed after an edit that kept every parameter's shape (an activation, an initializer,
    a new graph entry, the loss), a run went on without a word: the checkpoint's weights went
    on training as another model's, and its records mixed the two. The run's spec.yaml is the
    model it trained; a resume with that file goes on, and so does one whose edits leave the
    model alone (lr, outputs, metrics, spacing)."""
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=2, threads=1, device="cpu")
    train(_spec(REGRESSION, tmp_path), **opts)
    with pytest.raises(SpecError, match=re.escape(words.format(run=tmp_path / "run"))) as e:
        train(_spec(REGRESSION.replace(*edit), tmp_path), resume=True, **{**opts, "steps": 4})
    assert e.value.hint == (f"resume with the spec the run trained, {tmp_path / 'run' / 'spec.yaml'} (resume=True, "
                            f'run_dir="{tmp_path / "run"}"), or start a new '
                            f'run from its weights: init_from="{tmp_path / "run"}", run_dir="NEW_DIR"')
    assert load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))[1]["step"] == 2  # left as it was
    assert "tanh(x @ W1)" in (tmp_path / "run" / "spec.yaml").read_text()
    same_model = (REGRESSION.replace("lr: 0.05", "lr: 0.01").replace("tanh(x @ W1)", "tanh(x@W1)")
                  .replace("outputs:\n  pred: pred\n", "outputs:\n  pred: pred\n  h: h\n")
                  + "metrics:\n  err: mean(abs(pred - y))\n")
    assert train(_spec(same_model, tmp_path), resume=True, **{**opts, "steps": 4}).steps == 4
    trained = spec_from_text((tmp_path / "run" / "spec.yaml").read_text(), str(tmp_path / "run" / "spec.yaml"))
    assert train(trained, resume=True, **{**opts, "steps": 6}).steps == 6


@pytest.mark.parametrize("again", ["overwrite", "resume"])
def test_a_run_started_over_or_resumed_keeps_no_graph_of_its_former_spec(tmp_path, data, again):
    """A run trained again from a spec that lacks a graph the former one had (no outputs here;
    a generate section removed, likewise) kept the former graph in graphs/, and export took
    it, baking this run's weights into the former spec's model."""
    from runtime.export import ExportError, export

    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=2, threads=1, device="cpu")
    train(_spec(REGRESSION, tmp_path), **opts)
    assert os.path.exists(tmp_path / "run" / "graphs" / "infer.onnx")
    no_outputs = REGRESSION.replace("outputs:\n  pred: pred\n", "")
    train(_spec(no_outputs, tmp_path), **{**opts, "steps": 4, again: True})
    assert not os.path.exists(tmp_path / "run" / "graphs" / "infer.onnx")
    assert os.path.exists(tmp_path / "run" / "graphs" / "train.onnx")
    with pytest.raises(ExportError, match="has no inference graph"):
        export(str(tmp_path / "run"), str(tmp_path / "m.onnx"))


def test_a_resume_removes_the_temporary_of_a_graph_write_that_was_killed(tmp_path, data):
    """A process killed while writing one of the run's graphs left its temporary file in graphs/
    for good: a resume removed only those beside the checkpoints."""
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=2, threads=1, device="cpu")
    train(_spec(REGRESSION, tmp_path), **opts)
    for left in (tmp_path / "run" / ".tmp-a", tmp_path / "run" / "graphs" / ".tmp-b"):
        left.write_bytes(b"half a file")
    train(_spec(REGRESSION, tmp_path), resume=True, **{**opts, "steps": 3})
    assert not [p for p in (tmp_path / "run").rglob(".tmp-*")]


def test_a_run_that_loses_the_race_for_a_new_run_directory_leaves_it_to_the_winner(tmp_path, data, monkeypatch):
    """Two trainings started at once into one new run directory both found it new; the one that
    did not get the lock removed the directory as its own empty leftover, under the other,
    which then failed to write its run ('No such file or directory')."""
    import fcntl

    import runtime.train as T

    real, holder = T.prepare_run_dir, []

    def raced(spec, opts):
        run_dir = real(spec, opts)
        holder.append(open(os.path.join(run_dir, ".lock"), "w"))  # the other process, a moment sooner
        fcntl.flock(holder[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        return run_dir

    monkeypatch.setattr(T, "prepare_run_dir", raced)
    try:
        with pytest.raises(FlowgradError, match="another flowgrad run is training in"):
            train(_spec(REGRESSION, tmp_path), run_dir=str(tmp_path / "new"), data=data, steps=1, threads=1, device="cpu")
        assert os.path.exists(tmp_path / "new" / ".lock")
    finally:
        for f in holder:
            f.close()


def test_an_early_stopping_metric_that_is_not_reported_is_refused_before_anything_is_removed(tmp_path, data):
    """A misspelled early_stopping metric was found only when the first epoch ended: an
    --overwrite had by then removed the run it replaced, and the epoch's training was lost too."""
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=2, threads=1, device="cpu")
    train(_spec(REGRESSION, tmp_path), **opts)
    kept = {name: (tmp_path / "run" / name).read_bytes() for name in ("checkpoint.npz", "best.npz")}
    misspelled = REGRESSION + "  early_stopping: {metric: valid_los, mode: min, patience: 2}\n"
    with pytest.raises(FlowgradError, match="early_stopping metric 'valid_los' is not reported") as e:
        train(_spec(misspelled, tmp_path), overwrite=True, valid="0.25", **opts)
    assert e.value.hint == "did you mean 'valid_loss' or 'train_loss'? (reported: train_loss, valid_loss)"
    assert {name: (tmp_path / "run" / name).read_bytes() for name in kept} == kept


STATEFUL_BLOCK = """
flowgrad: 1
name: stateful_block
dims: {E: 3, H: 4}
inputs:
  x: {shape: [N, T, E]}
  z: {shape: [N, T, E]}
blocks:
  enc:
    in: [s]
    graph:
      hs: lstm(s, H, stateful=true)
    out: [hs]
graph:
  a: enc(x)
  b: CALL
loss: mean(a * a) + mean(b)
train: {batch_size: 2, optimizer: {sgd: {lr: 0.1}}}
"""


def test_a_stateful_layer_in_a_block_carries_its_state():
    """Its state buffers are enc.hs.h0 and enc.hs.c0, but the step wrote them back as
    hs.h0 and hs.c0: the first training step ended in a KeyError traceback."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer
    from spec import spec_from_text

    cm = compile_spec(spec_from_text(STATEFUL_BLOCK.replace("CALL", "mean(z)"), "s.yaml"), graphs=("train",))
    assert {o.name for o in cm.graphs["train"].outputs} >= {"next/enc.hs.h0", "next/enc.hs.c0"}
    rng = np.random.default_rng(0)
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    assert not trainer.state_numpy()["enc.hs.h0"].any()
    trainer.train_step("main", {"x": rng.normal(size=(2, 5, 3)).astype(np.float32),
                                "z": rng.normal(size=(2, 5, 3)).astype(np.float32)}, lr=0.1, step=0)
    assert trainer.state_numpy()["enc.hs.h0"].any() and trainer.state_numpy()["enc.hs.c0"].any()


def test_a_stateful_layer_in_a_block_called_twice_is_refused():
    """Both calls would start from one stored state, and the next batch from whichever call ended last."""
    from compiler.training import check_spec
    from spec import spec_from_text
    from spec.errors import SpecError

    with pytest.raises(SpecError, match="stateful= layer 'hs' is applied more than once in a step") as e:
        check_spec(spec_from_text(STATEFUL_BLOCK.replace("CALL", "enc(z)"), "s.yaml"))
    assert (e.value.loc.line, e.value.loc.col) == (12, 22) and "init= and return_state=true" in e.value.hint


STATEFUL_IN_SCAN = """
flowgrad: 1
name: s
dims: {E: 3, H: 4, S: 5}
inputs:
  x: {shape: [N, T, S, E]}
blocks:
  enc:
    in: [s]
    graph:
      hs: lstm(s, H, stateful=true)
    out: [hs]
  outer:
    in: [xs_t, g]
    graph:
      hs: CALL
      g2: g + mean(hs, axis=1)
    out: [g2]
graph:
  gs: scan(outer, over=x, init=[zeros(N, H)])
loss: mean(gs * gs)
train: {batch_size: 2, optimizer: {sgd: {lr: 0.1}}}
"""


@pytest.mark.parametrize("call, where", [("lstm(xs_t, H, stateful=true)", (16, 25)), ("enc(xs_t)", (11, 22))])
def test_a_stateful_layer_in_a_scans_step_is_refused(call, where):
    """In a scan's step (directly or in a block the step calls) the layer read its stored state at every
    step and its new state never left the loop: it trained from a zero state that nothing updated, without a word."""
    from compiler.training import check_spec
    from spec import spec_from_text
    from spec.errors import SpecError

    with pytest.raises(SpecError, match="stateful= layer 'hs' is in a scan's step") as e:
        check_spec(spec_from_text(STATEFUL_IN_SCAN.replace("CALL", call), "s.yaml"))
    assert (e.value.loc.line, e.value.loc.col) == where and "init= and return_state=true" in e.value.hint


def test_resuming_with_the_runs_own_spec_yaml_and_an_override_compares_the_model(tmp_path, data):
    """The run's own spec.yaml given with a --set that edits the model went on without a word:
    the check took the file for the run's spec and left out the overrides on top of it."""
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=2, threads=1, device="cpu")
    train(_spec(REGRESSION, tmp_path), **opts)
    own = str(tmp_path / "run" / "spec.yaml")
    with pytest.raises(SpecError, match=re.escape("graph entry 'h' is now relu(x @ W1)")) as e:
        train(load(own, overrides=["graph.h=relu(x @ W1)"]), resume=True, **{**opts, "steps": 4})
    assert e.value.loc.file.startswith("overrides=")
    assert load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))[1]["step"] == 2
    # the same model through an override, and the file alone, go on
    assert train(load(own, overrides=["graph.h=tanh(x@W1)"]), resume=True, **{**opts, "steps": 3}).steps == 3
    assert train(own, resume=True, **{**opts, "steps": 4}).steps == 4


def test_resuming_a_run_of_an_older_flowgrad_with_its_overrides_goes_on(tmp_path, data):
    """A run that an older flowgrad trained with --set overrides holds the spec file without
    them (its run.json has no float type): resumed with the same overrides, it was refused as
    an edited model ("dim H is now 16; RUN trained 8"), with the hint to resume with a spec.yaml
    whose shapes its checkpoint does not have."""
    opts = dict(run_dir=str(tmp_path / "run"), data=data, steps=2, threads=1, device="cpu")
    path = str(tmp_path / "spec.yaml")
    (tmp_path / "spec.yaml").write_text(REGRESSION)
    train(load(path, overrides=["dims.H=16"]), **opts)
    run_json = tmp_path / "run" / "run.json"  # as that flowgrad left the run
    info = json.loads(run_json.read_text())
    del info["dtype"]
    run_json.write_text(json.dumps(info))
    (tmp_path / "run" / "spec.yaml").write_text(REGRESSION)
    assert train(load(path, overrides=["dims.H=16"]), resume=True, **{**opts, "steps": 3}).steps == 3


def test_the_runs_own_spec_yaml_reads_the_data_the_run_read(tmp_path, data):
    """A resume given the run's spec.yaml (as a refused resume's hint says) failed on a spec
    whose data path is relative: the copy read it beside itself, in the run directory, where
    no data is. Relative paths in a run's spec.yaml are where run.json records the run read
    them; a spec.yaml elsewhere still reads beside itself."""
    import shutil

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(data, project / "data" / "d.npz")
    text = REGRESSION.replace("train:\n", "train:\n  data: {path: data/d.npz, valid: data/d.npz}\n")
    opts = dict(run_dir=str(tmp_path / "run"), steps=2, threads=1, device="cpu")
    train(_spec(text, project), **opts)
    own = tmp_path / "run" / "spec.yaml"
    assert train(spec_from_text(own.read_text(), str(own)), resume=True, **{**opts, "steps": 3}).steps == 3
    # a path that steps up from the spec's directory (../data/d.npz), the run two levels down
    specs = project / "specs"
    specs.mkdir()
    up = dict(opts, run_dir=str(tmp_path / "runs" / "up"))
    train(_spec(text.replace("data/d.npz", "../data/d.npz"), specs), **up)
    own = tmp_path / "runs" / "up" / "spec.yaml"
    assert train(spec_from_text(own.read_text(), str(own)), resume=True, **{**up, "steps": 3}).steps == 3
    elsewhere = tmp_path / "other" / "spec.yaml"  # (no run.json beside it)
    elsewhere.parent.mkdir()
    elsewhere.write_text(own.read_text())
    with pytest.raises(FlowgradError, match="does not exist"):
        train(spec_from_text(elsewhere.read_text(), str(elsewhere)), run_dir=str(tmp_path / "run2"), steps=1,
              threads=1, device="cpu")


def test_resuming_with_the_parameters_listed_in_another_order_goes_on(tmp_path, data):
    """A spec whose params were listed in another order (a dict dumped with sorted keys) was
    refused on resume, as "training other parameters": Adam's flat m and v follow the order of
    the parameters. They are laid out in the new order, and the run goes on as it would have."""
    adam = REGRESSION.replace("sgd: {lr: 0.05}", "adam: {lr: 0.01}")
    swapped = adam.replace("  W1: {shape: [D, H], init: glorot_uniform}\n  w2: {shape: [H], init: glorot_uniform}\n",
                           "  w2: {shape: [H], init: glorot_uniform}\n  W1: {shape: [D, H], init: glorot_uniform}\n")
    assert swapped != adam
    opts = dict(data=data, threads=1, device="cpu")
    train(_spec(adam, tmp_path), run_dir=str(tmp_path / "whole"), steps=6, **opts)
    train(_spec(adam, tmp_path), run_dir=str(tmp_path / "run"), steps=3, **opts)
    assert train(_spec(swapped, tmp_path), run_dir=str(tmp_path / "run"), steps=6, resume=True, **opts).steps == 6
    whole, resumed = _params(str(tmp_path / "whole")), _params(str(tmp_path / "run"))
    for name in ("W1", "w2"):
        np.testing.assert_allclose(resumed[name], whole[name], rtol=1e-6, atol=1e-7)
    state, meta = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert meta["trained"] == {"main": ["w2", "W1"]}
    np.testing.assert_allclose(state["m/main"][:8], _params(str(tmp_path / "whole"))["m/main"][32:], rtol=1e-6, atol=1e-9)


def test_a_lone_objective_of_a_graph_value_is_validated_as_the_runs_loss(tmp_path, data):
    """One objective whose loss names a graph value (a fine-tuning of some parameters, say): training
    reported its loss as train_loss, but validation reported no loss at all, so best.npz followed the
    training loss and early stopping on valid_loss was refused as a value the record lacks."""
    text = (TWO_OBJECTIVES.replace("loss: la + lb\n", "")
            .replace("    second: {loss: lb, params: \"B\", optimizer: {adam: {lr: 0.05}}}\n", "")
            .replace("schedule: [first, second]", "early_stopping: {metric: valid_loss, patience: 5}"))
    result = train(_spec(text, tmp_path), run_dir=str(tmp_path / "run"), data=data, valid="0.25", epochs=2, threads=1,
                   device="cpu")
    d = dict(np.load(data))
    valid = {k: v[-16:] for k, v in d.items()}  # (shuffled split: check the value by evaluating the run instead)
    from runtime.api import evaluate_run
    got = evaluate_run(str(tmp_path / "run"), data=valid, checkpoint="last", device="cpu")
    state = _params(str(tmp_path / "run"))
    assert got["loss"] == pytest.approx(np.mean((valid["x"] @ state["A"] - valid["y"]) ** 2), rel=1e-5)
    assert "valid_loss" in result.history[-1]
    assert result.best["valid_loss"] == min(r["valid_loss"] for r in result.history)


STATEFUL_TWO_OBJECTIVES = """
flowgrad: 1
name: st
dims: {E: 2, H: 3}
inputs:
  x: {shape: [N, T, E]}
  y: {shape: [N, T, H]}
graph:
  hs: rnn(x, H, stateful=true)
  la: mean((hs - y) ** 2)
  lb: mean(hs ** 2)
train:
  dtype: float64
  objectives:
    first: {loss: la, params: "hs.*", optimizer: {sgd: {lr: 1.0e-30}}}
    second: {loss: LOSS, params: "hs.*", optimizer: {sgd: {lr: 1.0e-30}}}
  batch_size: 2
  shuffle: false
  drop_last: true
"""


@pytest.mark.parametrize("accumulate", [1, 2])
def test_objectives_of_a_stateful_scan_each_start_from_the_batch_befores_state(tmp_path, accumulate):
    """With several objectives, each one's step of a batch moved a stateful scan's carried state on: the
    second objective read the batch from the state the first had just ended the same batch with, and
    the next batch started two batches on. Now every objective starts a batch (or, with --accumulate,
    a group of batches) from where the batch before ended, and the last one carries its state on."""
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(8, 3, 2)), "y": rng.normal(size=(8, 3, 3))}
    opts = dict(data=data, valid=0, epochs=1, threads=1, device="cpu", accumulate=accumulate)
    # the same loss twice, the weights kept (lr 1e-30): the two objectives see the same batches alike
    twice = train(_spec(STATEFUL_TWO_OBJECTIVES.replace("LOSS", "la"), tmp_path), run_dir=str(tmp_path / "a"), **opts)
    assert twice.final["train_second/loss"] == pytest.approx(twice.final["train_first/loss"], rel=1e-12)
    once = STATEFUL_TWO_OBJECTIVES.replace('    second: {loss: LOSS, params: "hs.*", optimizer: {sgd: {lr: 1.0e-30}}}\n', "")
    alone = train(_spec(once, tmp_path, "once.yaml"), run_dir=str(tmp_path / "b"), **opts)
    assert twice.final["train_first/loss"] == pytest.approx(alone.final["train_loss"], rel=1e-12)
    np.testing.assert_allclose(_params(str(tmp_path / "a"))["hs.h0"], _params(str(tmp_path / "b"))["hs.h0"], rtol=1e-12)
    # a second objective whose loss reads the scan too, but another loss: its state is carried on
    other = train(_spec(STATEFUL_TWO_OBJECTIVES.replace("LOSS", "lb"), tmp_path, "other.yaml"), run_dir=str(tmp_path / "c"),
                  **opts)
    assert other.final["train_first/loss"] == pytest.approx(alone.final["train_loss"], rel=1e-12)
    np.testing.assert_allclose(_params(str(tmp_path / "c"))["hs.h0"], _params(str(tmp_path / "b"))["hs.h0"], rtol=1e-12)


@pytest.mark.parametrize("train_section, words", [
    ("batch_size: 2", "the training data is shuffled: each row would start from another sequence's state"),
    ("batch_size: 2, shuffle: true", "the training data is shuffled"),
    ("batch_size: 3, shuffle: false", "carries a state of 3 rows (the batch size), and the 8 training rows end an "
                                      "epoch with a batch of 2"),
])
@pytest.mark.parametrize("layer", ["rnn(x, H, stateful=true)", "scan(cell, over=x, init=[zeros(N, H)], stateful=true)"])
def test_a_stateful_model_on_shuffled_or_uneven_batches_is_refused(tmp_path, train_section, words, layer):
    """A stateful layer or scan trained on shuffled batches started each row from another sequence's
    state without a word; on rows that end an epoch with a short batch, a whole epoch trained before
    onnxruntime failed to reshape the carried state (with a hint about class ids). Both are refused
    before training, at the train section."""
    from spec.errors import DataError

    text = STATEFUL_TWO_OBJECTIVES.replace("graph:\n", "blocks:\n  cell:\n    in: [x_t, h]\n    params:\n"
                                           "      W: {shape: [E, H], init: glorot_uniform}\n"
                                           "    graph:\n      h2: tanh(x_t @ W + h)\n    out: [h2]\ngraph:\n", 1)
    text = text.replace("rnn(x, H, stateful=true)", layer).split("train:\n")[0]
    text += f"loss: la\ntrain: {{{train_section}, optimizer: {{sgd: {{lr: 0.1}}}}}}\n"
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(8, 3, 2)), "y": rng.normal(size=(8, 3, 3))}
    with pytest.raises(DataError, match=re.escape(words)) as e:
        train(_spec(text, tmp_path), run_dir=str(tmp_path / "run"), data=data, valid=0, epochs=1, threads=1, device="cpu")
    assert "'hs'" in str(e.value) and e.value.hint and e.value.loc.line == text.splitlines().index(
        next(line for line in text.splitlines() if line.startswith("train:"))) + 1
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz")
    fixed = text.replace(train_section, "batch_size: 2, shuffle: false")
    assert train(_spec(fixed, tmp_path, "fixed.yaml"), run_dir=str(tmp_path / "ok"), data=data, valid=0, epochs=1,
                 threads=1, device="cpu").steps == 4


def test_a_stateful_run_trained_with_another_batch_size_is_evaluated(tmp_path):
    """A stateful layer's carried state has a row per example of the batch trained with; a run trained
    with --batch-size 4 on a spec of batch_size 2 kept [4, 3] states, and flowgrad eval compiled its
    spec.yaml at batch size 2 and refused the checkpoint: 'hs.h0 has shape [4, 3], the spec now says
    [2, 3]' with the hint that the spec had changed. It evaluates as the run validated."""
    from runtime.api import evaluate_run

    once = STATEFUL_TWO_OBJECTIVES.split("train:\n")[0] + "loss: la\ntrain: {batch_size: 2, shuffle: false, " \
                                                           "optimizer: {sgd: {lr: 0.1}}}\n"
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(8, 3, 2)), "y": rng.normal(size=(8, 3, 3))}
    valid = {"x": rng.normal(size=(4, 3, 2)), "y": rng.normal(size=(4, 3, 3))}
    result = train(_spec(once, tmp_path), run_dir=str(tmp_path / "run"), data=data, valid=valid, epochs=1,
                   batch_size=4, threads=1, device="cpu")
    assert _params(str(tmp_path / "run"))["hs.h0"].shape == (4, 3)
    got = evaluate_run(str(tmp_path / "run"), data=valid, device="cpu")
    assert got["loss"] == pytest.approx(result.final["valid_loss"], rel=1e-6)


# ------------------------------------------------------------------ lr_schedule: {plateau: ...}
PLATEAU = REGRESSION + "  lr_schedule: {plateau: {metric: valid_loss, patience: 1, threshold: 0.05, cooldown: 2}}\n"


@pytest.fixture
def noise(tmp_path):
    """Targets unrelated to x: the validation loss soon stops improving."""
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(64, 4)).astype(np.float32), "y": rng.normal(size=64).astype(np.float32)}


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]


def test_the_plateau_schedule_lowers_the_lr_after_a_plateau_and_records_it(tmp_path, noise, monkeypatch):
    """lr_schedule: {plateau: ...} was refused ('unknown schedule'). Now the validation loss of a
    model fitting noise stops improving and the lr falls by factor after more than patience epochs
    without an improvement of 5%, each epoch's record (metrics.jsonl) giving the lr its updates
    took: those the Plateau stepped with the recorded valid_loss gives."""
    from runtime.schedules import Plateau
    from runtime.trainer import Trainer

    used = []
    real = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, name, batch, lr, step: used.append(lr) or
                        real(self, name, batch, lr, step))
    run_dir = str(tmp_path / "run")
    train(_spec(PLATEAU, tmp_path), run_dir=run_dir, data=noise, valid="0.25", epochs=12, threads=1, device="cpu")
    records = _records(run_dir)
    lrs = [r["lr"] for r in records]
    assert lrs[0] == 0.05 and lrs[-1] < 0.005 / 2, lrs  # (it fell at least twice)
    assert used == [lr for lr in lrs for _ in range(3)]  # 48 training examples, 3 updates an epoch
    plateau = Plateau({"metric": "valid_loss", "patience": 1, "threshold": 0.05, "cooldown": 2}, "min", {"main": 0.05})
    expected = []
    for r in records:
        expected.append(plateau.lrs["main"])
        plateau.step(r["valid_loss"])
    assert lrs == expected


def test_a_resumed_plateau_schedule_goes_on_as_the_uninterrupted_run(tmp_path, noise):
    """The plateau's state (best, bad epochs, cooldown, rate) is replayed from metrics.jsonl: a run
    stopped at an epoch's end in a cooldown, or in the middle of the epoch after it, and resumed,
    records the lrs and ends with the weights of the run that was not stopped."""
    from runtime.schedules import Plateau

    spec = _spec(PLATEAU, tmp_path)
    common = dict(data=noise, valid="0.25", threads=1, device="cpu")
    whole = str(tmp_path / "whole")
    train(spec, run_dir=whole, epochs=12, **common)
    records = _records(whole)
    settings = {"metric": "valid_loss", "patience": 1, "threshold": 0.05, "cooldown": 2}
    # the first epoch's end after a reduction: the cooldown has epochs to go
    k = next(k for k in range(1, 12)
             if Plateau(settings, "min", {"main": 0.05}).replay(records[:k]).cooldown_counter == 2)
    assert records[k]["lr"] < records[k - 1]["lr"]
    for stop in (dict(epochs=k), dict(steps=3 * (k + 1) + 1)):  # in the cooldown's first or second epoch
        run_dir = str(tmp_path / f"stopped_{len(os.listdir(tmp_path))}")
        train(spec, run_dir=run_dir, **stop, **common)
        train(spec, run_dir=run_dir, resume=True, epochs=12, **common)
        assert _records(run_dir) == records, stop
        resumed, uninterrupted = _params(run_dir), _params(whole)
        for name in uninterrupted:
            assert np.array_equal(resumed[name], uninterrupted[name]), (stop, name)


def test_the_plateau_schedule_with_a_warmup_ramps_up_to_its_rate(tmp_path, noise):
    """{plateau: ..., warmup: 4}: the first 4 updates ramp up to the plateau's rate, each epoch's
    record giving the rate of its last update."""
    text = PLATEAU.replace("cooldown: 2}}", "cooldown: 2}, warmup: 4}")
    run_dir = str(tmp_path / "run")
    train(_spec(text, tmp_path), run_dir=run_dir, data=noise, valid="0.25", epochs=8, threads=1, device="cpu")
    lrs = [r["lr"] for r in _records(run_dir)]
    assert lrs[0] == pytest.approx(0.05 * 3 / 4) and lrs[1] == 0.05 and lrs[-1] < 0.05, lrs


@pytest.mark.parametrize("schedule, valid, words, hint", [
    ("{plateau: {metric: valid_loss}}", "0", "train.lr_schedule.plateau watches valid_loss, but this run has no "
     "validation data", "hold out validation examples: add valid: 0.1"),
    ("{plateau: {metric: valid_los}}", "0.25", "lr_schedule.plateau metric 'valid_los' is not reported",
     "did you mean 'valid_loss'"),
    ("{plateau: {metric: valid_accuracy}}", "0.25", "lr_schedule.plateau: is a larger or a smaller valid_accuracy "
     "better?", "add mode: max (accuracy, say) or mode: min"),
])
def test_a_plateau_schedule_without_its_metric_is_refused_at_it_before_training(tmp_path, data, schedule, valid,
                                                                                  words, hint):
    """A plateau steps with a validation metric: without validation data, with a misspelt metric or
    one whose direction is not known (early_stopping's checks, shared), one located line with a
    hint, before anything of the run is written."""
    text = REGRESSION.replace("train:\n", "metrics:\n  accuracy: mean(abs(pred - y) < 0.5)\ntrain:\n")
    text += f"  lr_schedule: {schedule}\n"
    with pytest.raises(FlowgradError) as e:
        train(_spec(text, tmp_path), run_dir=str(tmp_path / "r"), data=data, valid=valid, epochs=2, threads=1,
              device="cpu")
    assert words in e.value.message and hint in e.value.hint and "\n" not in e.value.message + e.value.hint
    assert (e.value.loc.line, e.value.loc.col) == (22, len("  lr_schedule: {plateau: {metric: ") + 1)  # at the metric
    assert not os.path.exists(tmp_path / "r")


def _train_six_epochs(text: str, tmp_path):
    """REGRESSION-like `text` trained 6 epochs on 96 examples of a tanh regression, a quarter held out."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype("float32")
    data = {"x": x, "y": np.tanh(x @ rng.normal(size=4)).astype("float32")}
    return train(_spec(text, tmp_path), run_dir=str(tmp_path / "r"), data=data, valid="0.25", epochs=6, threads=1,
                 device="cpu")


def test_a_maximized_loss_keeps_its_highest_epoch_as_the_best(tmp_path):
    """An optimizer with maximize: true ascends its loss, so its best epoch is the highest: best.npz
    and result.json's best kept the lowest, the worst epoch of the run, as for a loss minimized.
    (With several objectives, the loss improves upward only where every optimizer maximizes it.)"""
    text = REGRESSION.replace("loss: mean((pred - y) ** 2)", "loss: -mean((pred - y) ** 2)") \
        .replace("{sgd: {lr: 0.05}}", "{sgd: {lr: 0.05, maximize: true}}")
    res = _train_six_epochs(text, tmp_path)
    losses = [r["valid_loss"] for r in res.history]
    assert losses[-1] > losses[0]  # (it ascends: the loss is a negated error)
    assert res.best["epoch"] == 1 + int(np.argmax(losses))
    best = load_checkpoint(f"{res.run_dir}/best.npz")[0]
    final = _params(res.run_dir)
    if res.best["epoch"] == len(losses):
        assert all(np.array_equal(best[k], final[k]) for k in ("W1", "w2"))


def test_an_objectives_maximized_loss_is_watched_upward(tmp_path):
    """early_stopping on valid_up/loss, the loss of an objective whose optimizer maximizes it, took
    it as one to lower (a loss's direction was max only where every objective maximized), so
    best.npz kept its lowest, worst epoch; a metric naming one objective's loss goes its way."""
    text = REGRESSION.replace("loss: mean((pred - y) ** 2)\n", "").replace(
        "  pred: h @ w2\n", "  pred: h @ w2\n  down: mean((pred - y) ** 2)\n  up: -mean((pred - y) ** 2)\n").replace(
        "  optimizer: {sgd: {lr: 0.05}}\n",
        "  objectives:\n"
        "    fit: {loss: down, params: W1, optimizer: {sgd: {lr: 0.05}}}\n"
        "    lift: {loss: up, params: w2, optimizer: {sgd: {lr: 0.05, maximize: true}}}\n"
        "  schedule: [fit, lift]\n"
        "  early_stopping: {metric: valid_lift/loss, patience: 100}\n")
    res = _train_six_epochs(text, tmp_path)
    ups = [r["valid_lift/loss"] for r in res.history]
    assert ups[-1] > ups[0]  # (it ascends: a negated error)
    assert res.best["epoch"] == 1 + int(np.argmax(ups))
