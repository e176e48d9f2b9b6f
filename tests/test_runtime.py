"""The training runtime: loop, checkpoints and exact resume, export, predict."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

from runtime import data as D
from runtime.api import load, train
from runtime.checkpoint import load_checkpoint
from runtime.export import export, predict
from runtime.schedules import lr_schedule
from spec.errors import KEYWORDS, DataError, FlowgradError, SpecError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp.yaml")
SMALL = ["dims.H=32"]


def test_digits_bundled():
    ds = D.load_digits()
    assert ds.arrays["x"].shape == (1797, 64) and ds.arrays["x"].dtype == np.float32
    assert 0.0 <= ds.arrays["x"].min() and ds.arrays["x"].max() <= 1.0
    assert sorted(set(ds.arrays["y"].tolist())) == list(range(10))
    img = D.load_digits(images=True)
    assert img.arrays["x"].shape == (1797, 1, 8, 8)


def test_train_export_predict(tmp_path):
    spec = load(MLP)
    result = train(spec, run_dir=str(tmp_path / "run"), epochs=3, threads=1, device="cpu")
    assert result.epochs == 3 and result.steps > 0
    assert result.final["valid_accuracy"] > 0.9
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["seed"] == 0 and info["data_hash"] and info["versions"]["onnxruntime"]

    model = tmp_path / "mlp.onnx"
    export(str(tmp_path / "run"), str(model))
    x = D.load_digits().arrays["x"][:20]
    outs = predict(str(model), {"x": x})
    assert outs["probs"].shape == (20, 10)
    np.testing.assert_allclose(outs["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(outs["label"], outs["probs"].argmax(axis=1))
    # inputs that would give meaningless outputs are refused, as training's data checks refuse them
    for bad, match in ((np.full((2, 64), np.nan), "NaN or inf"), (np.full((2, 64), 1e300), r"input 'x' holds 1e\+300, beyond float32's range")):
        with pytest.raises(DataError, match=match):
            predict(str(model), {"x": bad})

    # A fresh Python with only onnxruntime and numpy reproduces the predictions.
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "p = s.run(['probs'], {'x': np.load(sys.argv[2])})[0]\n"
        "np.save(sys.argv[3], p)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-I", "-c", script, str(model), str(tmp_path / "x.npy"), str(tmp_path / "p.npy")],
                   check=True, env=env, cwd=str(tmp_path))
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), outs["probs"], rtol=1e-6)


def test_existing_run_is_not_overwritten(tmp_path):
    spec = load(MLP, SMALL)
    train(spec, run_dir=str(tmp_path / "run"), epochs=1, threads=1, device="cpu")
    with pytest.raises(FlowgradError, match="already holds a run"):
        train(spec, run_dir=str(tmp_path / "run"), epochs=1, threads=1, device="cpu")


def test_resume_continues_exactly(tmp_path):
    spec = load(MLP, SMALL)
    full = train(spec, run_dir=str(tmp_path / "full"), epochs=4, threads=1, device="cpu")
    train(spec, run_dir=str(tmp_path / "part"), epochs=2, threads=1, device="cpu")
    resumed = train(spec, run_dir=str(tmp_path / "part"), epochs=4, threads=1, device="cpu", resume=True)
    a, _ = load_checkpoint(str(tmp_path / "full" / "checkpoint.npz"))
    b, _ = load_checkpoint(str(tmp_path / "part" / "checkpoint.npz"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    timeless = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert timeless(resumed.history) == timeless(full.history)


def test_resume_keeps_the_seed_the_run_was_trained_with(tmp_path):
    """A run trained with --seed 5 and resumed without --seed continues with seed 5 (data
    order, validation split, dropout), not the spec's; another --seed is refused."""
    spec = load(MLP, SMALL)
    full = train(spec, run_dir=str(tmp_path / "full"), epochs=3, seed=5, threads=1, device="cpu")
    train(spec, run_dir=str(tmp_path / "part"), epochs=1, seed=5, threads=1, device="cpu")
    with pytest.raises(FlowgradError, match="^seed=3 differs from the seed 5"):
        train(spec, run_dir=str(tmp_path / "part"), epochs=3, seed=3, threads=1, device="cpu", resume=True)
    resumed = train(spec, run_dir=str(tmp_path / "part"), epochs=3, threads=1, device="cpu", resume=True)
    a, _ = load_checkpoint(str(tmp_path / "full" / "checkpoint.npz"))
    b, meta = load_checkpoint(str(tmp_path / "part" / "checkpoint.npz"))
    assert meta["seed"] == 5
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    timeless = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert timeless(resumed.history) == timeless(full.history)
    with open(tmp_path / "part" / "run.json") as f:
        assert json.load(f)["seed"] == 5


@pytest.mark.parametrize("option", [dict(epochs=0), dict(epochs=-1), dict(steps=0), dict(batch_size=0),
                                    dict(batch_size=-5), dict(threads=-1), dict(seed=-1), dict(epochs=2.5),
                                    dict(checkpoint_every=-1), dict(accumulate=1.5), dict(accumulate=0),
                                    dict(steps_per_call=2.5), dict(steps_per_call=True), dict(steps_per_call=0)])
def test_api_options_are_bounded_like_the_cli_flags(tmp_path, option):
    """train(spec, epochs=0) trained the spec's 40 epochs, epochs=-1 or batch_size=-5 trained
    nothing and reported "finished"; each is refused like its CLI flag, before any run file."""
    name = next(iter(option))  # named as the caller wrote it: train(epochs=0) said "--epochs"
    with pytest.raises(FlowgradError, match=f"^{name} must be an integer of at least"):
        train(load(MLP, SMALL), run_dir=str(tmp_path / "run"), device="cpu", **option)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "float8"])
def test_api_dtype_is_checked_like_the_cli_flag(tmp_path, dtype):
    """compile(spec, dtype="bfloat16") compiled graphs that train(dtype="bfloat16") failed to
    run (a RuntimeError of onnxruntime's); an int8 failed with a shape error at the spec's line."""
    from runtime.api import compile

    with pytest.raises(FlowgradError, match=f"^unknown dtype '{dtype}'"):  # the keyword, not the CLI's --dtype
        compile(load(MLP, SMALL), dtype=dtype)
    with pytest.raises(FlowgradError, match=f"^unknown dtype '{dtype}'"):
        train(load(MLP, SMALL), run_dir=str(tmp_path / "run"), device="cpu", dtype=dtype)
    assert not (tmp_path / "run").exists()


def test_api_evaluation_batch_size_is_bounded(tmp_path):
    """evaluate_run(batch_size=-1) returned {} (no metrics, no error); batch_size=0 a ValueError."""
    from runtime.api import evaluate_run

    train(load(MLP, SMALL), run_dir=str(tmp_path / "run"), epochs=1, threads=1, device="cpu")
    x = np.random.default_rng(0).random((8, 64), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8) % 10)
    for bad in (0, -1):
        with pytest.raises(FlowgradError, match="^batch_size must be an integer of at least 1"):
            evaluate_run(str(tmp_path / "run"), str(tmp_path / "d.npz"), device="cpu", batch_size=bad)
    assert set(evaluate_run(str(tmp_path / "run"), str(tmp_path / "d.npz"), device="cpu")) == {"loss", "accuracy"}


def test_api_export_and_predict_check_their_options_like_the_cli(tmp_path):
    """export(checkpoint="bset") exported the last checkpoint, predict(device="tpu") or
    device="auto" ran on the CPU without a word, predict(threads=-1) ran: the CLI refuses each."""
    from runtime.api import export, predict

    from spec.errors import ExportError

    train(load(MLP, SMALL), run_dir=str(tmp_path / "run"), epochs=1, threads=1, device="cpu")
    # each an ExportError, as the export API's other errors are (a plain FlowgradError slipped
    # past code catching ExportError)
    for kwargs, words in (({"checkpoint": "bset"}, "unknown checkpoint 'bset'"), ({"graph": "train"}, "unknown graph"),
                          ({"output": str(tmp_path / "run" / "run.json")}, "is one of the run's own files"),
                          ({"output": str(tmp_path / "run" / "run.json" / "m.onnx")}, "a file is in the way")):
        with pytest.raises(ExportError, match=words):
            export(**{"run_dir": str(tmp_path / "run"), "output": str(tmp_path / "m.onnx"), **kwargs})
    assert not (tmp_path / "m.onnx").exists()
    export(str(tmp_path / "run"), str(tmp_path / "m.onnx"), checkpoint="last")
    x = {"x": np.random.default_rng(0).random((2, 64), dtype=np.float32)}
    with pytest.raises(ExportError, match="unknown device 'tpu'"):
        predict(str(tmp_path / "m.onnx"), x, device="tpu")
    for bad in (0, -1, 1.5):
        with pytest.raises(ExportError, match="^threads must be an integer of at least 1"):
            predict(str(tmp_path / "m.onnx"), x, threads=bad)
    assert predict(str(tmp_path / "m.onnx"), x, threads=1)["probs"].shape == (2, 10)


def test_export_refuses_a_checkpoint_whose_shapes_differ_from_the_runs_graphs(tmp_path):
    """A run started over with --overwrite and other dims, stopped before its first checkpoint,
    holds the new graphs and the old checkpoints: export baked the old [64, 16] weights into
    the [64, 32] graph and wrote a model (onnx's checker let it through)."""
    import shutil

    train(load(MLP, ["dims.H=16"]), run_dir=str(tmp_path / "old"), epochs=1, threads=1, device="cpu")
    train(load(MLP, SMALL), run_dir=str(tmp_path / "new"), epochs=1, threads=1, device="cpu")
    for name in ("best.npz", "checkpoint.npz"):
        shutil.copyfile(tmp_path / "old" / name, tmp_path / "new" / name)
    with pytest.raises(FlowgradError, match=r"W1 has shape \[64, 16\] there, the graph takes \[64, 32\]"):
        export(str(tmp_path / "new"), str(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.onnx").exists()
    export(str(tmp_path / "old"), str(tmp_path / "m.onnx"))  # a run's own checkpoint fits


def test_a_run_started_over_and_stopped_before_its_first_checkpoint_keeps_no_old_one(tmp_path, monkeypatch):
    """--overwrite replaced spec.yaml, run.json and the graphs at once but left the old run's
    checkpoints until the new run wrote its own: stopped before that, --resume went on from the
    old weights under the new run's record. The old checkpoints now go with the old files, and
    so does the old result.json (its final and best numbers read as the new run's)."""
    import runtime.trainer

    run_dir = str(tmp_path / "r")
    train(load(MLP, SMALL), run_dir=run_dir, epochs=1, threads=1, device="cpu")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.trainer.Trainer, "train_step", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(load(MLP, SMALL), run_dir=run_dir, epochs=1, threads=1, device="cpu", overwrite=True, seed=4)
    monkeypatch.undo()
    assert not (tmp_path / "r" / "checkpoint.npz").exists() and not (tmp_path / "r" / "best.npz").exists()
    assert not (tmp_path / "r" / "result.json").exists()
    with pytest.raises(FlowgradError, match="nothing to resume"):
        train(load(MLP, SMALL), run_dir=run_dir, epochs=1, threads=1, device="cpu", resume=True)
    # stopped just before the new run's metrics.jsonl is begun: the old run's lines went on
    # beside the new run.json, and plot curves drew them as the new run's
    import runtime.train

    train(load(MLP, SMALL), run_dir=run_dir, epochs=1, threads=1, device="cpu", overwrite=True)
    monkeypatch.setattr(runtime.train, "_rewrite_metrics", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(load(MLP, SMALL), run_dir=run_dir, epochs=1, threads=1, device="cpu", overwrite=True, seed=4)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_a_run_its_step_limit_stopped_mid_epoch_resumes_where_it_stopped(tmp_path):
    """--steps 30 (an epoch is 23 steps) ends in epoch 2; resumed with --steps 46, the run
    skipped the rest of epoch 2 (its checkpoint said: next epoch, position 0) and ended unlike
    an uninterrupted --steps 46 run. Now it goes on with epoch 2's batches and records."""
    spec = load(MLP, SMALL)
    common = dict(threads=1, device="cpu", seed=3)
    full = train(spec, run_dir=str(tmp_path / "full"), steps=46, **common)
    first = train(spec, run_dir=str(tmp_path / "part"), steps=30, **common)
    assert first.steps == 30 and [h["step"] for h in first.history] == [23, 30]
    assert [h.get("partial") for h in first.history] == [None, True]  # (plot curves marks it)
    again = train(spec, run_dir=str(tmp_path / "part"), steps=30, resume=True, **common)  # done: nothing more
    assert again.steps == 30 and [h["step"] for h in again.history] == [23, 30]
    # (it was reported 'finished' as if this resume had trained)
    assert again.stopped == "nothing more to train (this resume's limit of 30 steps was reached before it)"
    resumed = train(spec, run_dir=str(tmp_path / "part"), steps=46, resume=True, **common)
    a, _ = load_checkpoint(str(tmp_path / "full" / "checkpoint.npz"))
    b, _ = load_checkpoint(str(tmp_path / "part" / "checkpoint.npz"))
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    timeless = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert timeless(resumed.history) == timeless(full.history)
    with open(tmp_path / "part" / "metrics.jsonl") as f:
        assert [(r["step"], r.get("partial")) for r in map(json.loads, f)] == [(23, None), (46, None)]
    # (a limit of one step read '1 steps')
    assert train(spec, run_dir=str(tmp_path / "part"), steps=1, resume=True, **common).stopped == \
        "nothing more to train (this resume's limit of 1 step was reached before it)"


def test_a_resume_of_a_partial_epoch_stopped_before_its_next_checkpoint_resumes_again(tmp_path, monkeypatch):
    """A resume with a larger step limit cuts metrics.jsonl back past the partial epoch's line,
    which it redoes; stopped (Ctrl-C, a kill) before its first checkpoint, the run's checkpoint
    still covered that line, and every later --resume was refused: 'metrics.jsonl holds the
    records of 1 epoch, and checkpoint.npz covers 2 epochs'. The resume first writes the
    checkpoint of where the epoch goes on from."""
    import runtime.trainer

    spec = load(MLP, SMALL)
    common = dict(threads=1, device="cpu", seed=3, progress=False)
    full = train(spec, run_dir=str(tmp_path / "full"), steps=46, **common)
    run = tmp_path / "part"
    train(spec, run_dir=str(run), steps=30, **common)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.trainer.Trainer, "train_step", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(spec, run_dir=str(run), steps=46, resume=True, **common)
    monkeypatch.undo()
    resumed = train(spec, run_dir=str(run), steps=46, resume=True, **common)
    timeless = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert timeless(resumed.history) == timeless(full.history)
    with open(run / "metrics.jsonl") as f:
        assert timeless(map(json.loads, f)) == timeless(full.history)
    for name in ("checkpoint.npz", "best.npz"):
        a, _ = load_checkpoint(str(tmp_path / "full" / name))
        b, _ = load_checkpoint(str(run / name))
        assert all(np.array_equal(a[k], b[k]) for k in a), name


def test_a_resumed_partial_epoch_gives_back_the_best_it_replaced(tmp_path):
    """The record of a partial epoch (valid 0.226) beat the best (epoch 4, 0.254) and wrote
    best.npz; resumed with more steps, the whole epoch (0.332) did not, and best.npz kept the
    partial epoch's weights, which the run's record (best: epoch 4) and an uninterrupted run
    do not have. The best it replaced now comes back when the record is redone."""
    spec = load(MLP, [*SMALL, "train.optimizer={sgd: {lr: 0.5}}"])
    common = dict(threads=1, device="cpu", seed=3, progress=False)
    full = train(spec, run_dir=str(tmp_path / "full"), steps=115, **common)
    first = train(spec, run_dir=str(tmp_path / "part"), steps=97, **common)
    assert first.best["step"] == 97 and full.best["step"] == 92  # (what makes this case)
    resumed = train(spec, run_dir=str(tmp_path / "part"), steps=115, resume=True, **common)
    assert resumed.best["step"] == 92
    a, _ = load_checkpoint(str(tmp_path / "full" / "best.npz"))
    b, meta = load_checkpoint(str(tmp_path / "part" / "best.npz"))
    assert meta["step"] == 92 and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_full_disk_while_keeping_the_replaced_best_leaves_best_npz_whole(tmp_path, monkeypatch):
    """A step limit's record that beats the best first copies best.npz aside; that copy was a plain
    shutil.copyfile, so a full disk left a truncated best.before_partial.npz, and the next
    --resume with a larger limit renamed it over best.npz: export then found best.npz unreadable.
    The copy is now written whole or not at all."""
    import errno
    import shutil

    import runtime.checkpoint as C

    spec = load(MLP, [*SMALL, "train.optimizer={sgd: {lr: 0.5}}"])
    common = dict(threads=1, device="cpu", seed=3, progress=False)
    run = tmp_path / "part"
    train(spec, run_dir=str(run), steps=97, **common)  # a partial epoch that is the best so far

    def full(f, data: bytes) -> None:
        f.write(data[:len(data) // 3])  # part of it made it to disk
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def copy(src, dst, **kwargs):
        with open(src, "rb") as a, open(dst, "wb") as b:
            full(b, a.read())

    real_copy, real_write = shutil.copyfile, C._write
    # the disk fills up while the best is copied aside, whichever way the copy writes
    monkeypatch.setattr(shutil, "copyfile", lambda src, dst, **kw: copy(src, dst)
                        if str(dst).endswith("best.before_partial.npz") else real_copy(src, dst, **kw))
    monkeypatch.setattr(C, "_write", lambda f, data, path: full(f, data) if path.endswith("best.before_partial.npz")
                        else real_write(f, data, path))
    with pytest.raises(FlowgradError, match="No space left on device"):
        train(spec, run_dir=str(run), steps=98, resume=True, **common)  # its record beats the best too
    monkeypatch.undo()
    resumed = train(spec, run_dir=str(run), steps=115, resume=True, **common)
    assert resumed.best["step"] == 92
    _, meta = load_checkpoint(str(run / "best.npz"))
    assert meta["step"] == 92
    export(str(run), str(tmp_path / "m.onnx"))


def test_a_stale_copy_of_the_best_is_never_renamed_over_best_npz(tmp_path):
    """A run killed after copying best.npz aside for a partial epoch's record, before its checkpoint
    said so, left best.before_partial.npz behind; a later run that its step limit stopped mid-epoch
    without a new best, resumed with a larger limit, renamed that stale copy over best.npz, and
    export took weights the run's record does not name. A resume from a checkpoint without a
    partial epoch now removes the copy, which nothing can be waiting for."""
    import shutil

    spec = load(MLP, [*SMALL, "train.optimizer={sgd: {lr: 0.5}}"])
    common = dict(threads=1, device="cpu", seed=3, progress=False)
    full = train(spec, run_dir=str(tmp_path / "full"), steps=184, **common)
    run = tmp_path / "part"
    train(spec, run_dir=str(run), steps=161, **common)  # seven whole epochs
    train(spec, run_dir=str(tmp_path / "other"), steps=23, **{**common, "seed": 4})
    shutil.copyfile(tmp_path / "other" / "best.npz", run / "best.before_partial.npz")  # what the kill left
    stopped = train(spec, run_dir=str(run), steps=162, resume=True, **common)  # mid-epoch, no new best
    assert stopped.best["step"] == 161
    train(spec, run_dir=str(run), steps=184, resume=True, **common)
    a, _ = load_checkpoint(str(tmp_path / "full" / "best.npz"))
    b, meta = load_checkpoint(str(run / "best.npz"))
    assert meta["step"] == full.best["step"] and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("limit", [97, 115])
def test_a_run_stopped_between_a_partial_epochs_best_and_its_checkpoint_keeps_the_best_it_named(tmp_path,
                                                                                                limit):
    """A step limit's record that beats the best copies best.npz aside, then writes its checkpoint
    and best.npz. (best.npz went before the checkpoint: stopped between them, the checkpoint of
    the epoch before named the best of step 92, best.npz held step 97's weights, and the resume
    removed the copy, the only file with step 92's weights.) Stopped between the checkpoint and
    best.npz, a resume to the same limit takes the checkpoint as the best it names, and one with a
    larger limit puts the copy back, as the uninterrupted run's best."""
    import runtime.train as T

    spec = load(MLP, [*SMALL, "train.optimizer={sgd: {lr: 0.5}}"])
    common = dict(threads=1, device="cpu", seed=3, progress=False)
    full = train(spec, run_dir=str(tmp_path / "full"), steps=115, **common)
    run = tmp_path / "part"
    real = T.atomic_write

    def stopped(path, *args, **kwargs):
        if path.endswith("best.npz") and (run / "best.before_partial.npz").exists():
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    T.atomic_write = stopped
    try:
        with pytest.raises(KeyboardInterrupt):
            train(spec, run_dir=str(run), steps=97, **common)
    finally:
        T.atomic_write = real
    assert load_checkpoint(str(run / "best.npz"))[1]["step"] == 92  # (what makes this case)
    assert load_checkpoint(str(run / "checkpoint.npz"))[1]["best"]["step"] == 97
    train(spec, run_dir=str(run), steps=limit, resume=True, **common)
    if limit == 97:  # (nothing more to train) the best is the one the checkpoint names
        assert load_checkpoint(str(run / "best.npz"))[1]["step"] == 97
    resumed = train(spec, run_dir=str(run), steps=115, resume=True, **common)
    assert resumed.best["step"] == full.best["step"] == 92
    a, _ = load_checkpoint(str(tmp_path / "full" / "best.npz"))
    b, meta = load_checkpoint(str(run / "best.npz"))
    assert meta["step"] == 92 and all(np.array_equal(a[k], b[k]) for k in a)


def _flowgrad():
    exe = os.path.join(os.path.dirname(sys.executable), "flowgrad")
    return [exe] if os.path.exists(exe) else [sys.executable, os.path.join(ROOT, "cli.py")]


def test_sigkill_mid_epoch_then_resume_matches(tmp_path):
    """A real `flowgrad train` process killed with SIGKILL, then --resume, ends
    with the same parameters as an uninterrupted run."""
    args = ["train", MLP, "--set", "dims.H=32", "--epochs", "6", "--threads", "1", "--device", "cpu",
            "--checkpoint-every", "7", "--quiet"]
    ref = subprocess.run(_flowgrad() + args + ["--run-dir", str(tmp_path / "ref")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(_flowgrad() + args + ["--run-dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    ckpt = run / "checkpoint.npz"
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            _, meta = load_checkpoint(str(ckpt))
            if meta["step"] >= 10 and meta["position"] > 0:  # a mid-epoch checkpoint exists
                break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, meta = load_checkpoint(str(ckpt))
    assert meta["step"] < 6 * 23

    res = subprocess.run(_flowgrad() + args + ["--run-dir", str(run), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, _ = load_checkpoint(str(tmp_path / "ref" / "checkpoint.npz"))
    b, _ = load_checkpoint(str(ckpt))
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_bad_npz_is_a_clean_error(tmp_path):
    spec = load(MLP, SMALL)
    np.savez(tmp_path / "bad.npz", x=np.zeros((10, 64), np.float32), label=np.zeros(10, np.int64))
    with pytest.raises(DataError, match="no array named 'y'"):
        train(spec, run_dir=str(tmp_path / "r1"), data=str(tmp_path / "bad.npz"), valid=0, epochs=1)
    np.savez(tmp_path / "nan.npz", x=np.full((10, 64), np.nan, np.float32), y=np.zeros(10, np.int64))
    with pytest.raises(DataError, match="NaN"):
        train(spec, run_dir=str(tmp_path / "r2"), data=str(tmp_path / "nan.npz"), epochs=1)
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 3), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="object array"):
        train(spec, run_dir=str(tmp_path / "r3"), data=str(tmp_path / "obj.npz"), epochs=1)
    import io
    import zipfile

    buf = io.BytesIO()
    np.save(buf, np.zeros((3, 64), np.float32))
    with zipfile.ZipFile(tmp_path / "header.npz", "w") as z:  # a header numpy cannot parse, whole in the zip
        z.writestr("x.npy", buf.getvalue().replace(b"'descr': '<f4'", b"'descr': <f4xy"))
        buf = io.BytesIO()
        np.save(buf, np.zeros(3, np.int64))
        z.writestr("y.npy", buf.getvalue())
    with pytest.raises(DataError, match="header or data is damaged"):
        train(spec, run_dir=str(tmp_path / "r4"), data=str(tmp_path / "header.npz"), epochs=1)


def test_a_scalar_input_that_training_reads_is_refused_at_its_declaration(tmp_path):
    """An input declared shape [] that the loss reads (a scale t in x * w * t) passed the data's
    checks as a 0-d array, and training ended in an IndexError traceback where the batches are cut;
    evaluation too. It is refused at the input's declaration, before a run directory is made."""
    spec = ("flowgrad: 1\nname: s\ninputs:\n  x: {shape: [N, 4]}\n  t: {shape: []}\nparams:\n"
            "  w: {shape: [4], init: ones}\nloss: mean(x * w * t)\n")
    data = {"x": np.ones((8, 4), np.float32), "t": np.array(2.0, np.float32)}
    for given in (data, {"t": data["t"], "x": data["x"]}):
        with pytest.raises(DataError, match=r"input 't' is a scalar \(shape \[\]\) that training and evaluation "
                                            r"read") as e:
            train(spec, run_dir=str(tmp_path / "r"), data=given, valid=0, epochs=1)
        assert e.value.loc.line == 5 and "declare it with the batch dim first ([N]" in e.value.hint
    assert not (tmp_path / "r").exists()
    train(spec.replace("t: {shape: []}", "t: {shape: [N, 1]}"), run_dir=str(tmp_path / "r"),
          data={"x": data["x"], "t": np.full((8, 1), 2.0, np.float32)}, valid=0, epochs=1)
    with pytest.raises(DataError, match="input 't' is a scalar"):  # evaluation's data, checked the same way
        D.check_against_spec(D.Dataset(data, "d.npz"), load(spec), ["x", "t"], "d.npz")


def test_only_the_arrays_the_graphs_read_count_the_examples(tmp_path):
    """Another array stored first in the file (of another length) neither sets the number of
    examples nor the split; other members of the archive (a README) are left alone."""
    from runtime.train import TrainOptions, load_data

    spec = load(MLP, SMALL)
    from compiler.training import compile_spec

    cm = compile_spec(spec)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (100, 64)).astype(np.float32), rng.integers(0, 10, 100)
    np.savez(tmp_path / "extra.npz", a_meta=np.arange(10), x=x, y=y, z=np.zeros(3))
    import zipfile

    with zipfile.ZipFile(tmp_path / "extra.npz", "a") as z:
        z.writestr("README.txt", "notes")
    train_ds, valid_ds = load_data(spec, cm, TrainOptions(names=KEYWORDS, data=str(tmp_path / "extra.npz"), valid="0.2"), 0)
    assert (len(train_ds), len(valid_ds)) == (80, 20) and set(train_ds.arrays) == {"x", "y"}
    np.savez(tmp_path / "bytes_y.npz", x=x)
    with zipfile.ZipFile(tmp_path / "bytes_y.npz", "a") as z:
        z.writestr("y", "not an array")
    with pytest.raises(DataError, match="member 'y' is not a numpy array"):
        train(spec, run_dir=str(tmp_path / "r"), data=str(tmp_path / "bytes_y.npz"), epochs=1)


@pytest.mark.parametrize("x, y, match", [
    (np.full((20, 64), 1e300), None, "beyond float32's range"),
    (None, np.full(20, 2**63 + 1, dtype=np.uint64), "outside the range of int64"),
])
def test_values_that_would_change_when_cast_are_refused(tmp_path, x, y, match):
    """float64 beyond float32 would become inf, uint64 beyond int64 would wrap: refused,
    naming the array, instead of training on other numbers."""
    spec = load(MLP, SMALL)
    x = np.zeros((20, 64), np.float32) if x is None else x
    y = np.zeros(20, np.int64) if y is None else y
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=match):
        train(spec, run_dir=str(tmp_path / "r"), data=str(tmp_path / "d.npz"), epochs=1)


def test_unreadable_archives_and_missing_test_files_are_clean_errors(tmp_path, monkeypatch):
    """An encrypted archive (numpy raises RuntimeError) is a DataError; so is a
    train.data.test file that does not exist (it used to be ignored)."""
    import runtime.data as D

    spec = load(MLP, SMALL)
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 64), np.float32), y=np.zeros(20, np.int64))

    def encrypted(*a, **k):
        raise RuntimeError("File x.npy is encrypted, password required for extraction")

    with monkeypatch.context() as m:
        m.setattr(D.np, "load", encrypted)
        with pytest.raises(DataError, match="not a readable .npz file .*password required"):
            D.load_npz(str(tmp_path / "d.npz"))
    with pytest.raises(DataError, match="does not exist"):
        train(load(MLP, SMALL + [f"train.data.test={tmp_path / 'missing.npz'}"]), run_dir=str(tmp_path / "r"),
              data=str(tmp_path / "d.npz"), epochs=1)


def test_a_float16_input_trains_from_float32_data(tmp_path):
    """An input declared float16 in a float32 model keeps that type in the graphs: its
    arrays are cast to it (they were cast to float32, and the first step failed)."""
    spec = load(MLP, SMALL + ["inputs.x.dtype=float16", "graph.h1=relu(cast(x, 'float32') @ W1 + b1)"])
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).uniform(0, 1, (32, 64)), y=np.zeros(32, np.int64))
    result = train(spec, run_dir=str(tmp_path / "r"), data=str(tmp_path / "d.npz"), epochs=1, threads=1, device="cpu")
    assert np.isfinite(result.final["train_loss"])


def test_validation_settings_are_read_as_given(tmp_path):
    """valid fractions from the API are checked like --valid's; a spec's validation file is
    found beside the spec, like its training file; the test fraction is checked against the
    validation fraction in effect; a split that leaves nothing to train on says so."""
    spec = load(MLP, SMALL)
    for bad in (1.5, True, -0.5, float("nan")):
        with pytest.raises(DataError, match="valid"):
            train(spec, run_dir=str(tmp_path / "r"), valid=bad, epochs=1)
    (tmp_path / "specs" / "data").mkdir(parents=True)
    x, y = np.random.default_rng(0).uniform(0, 1, (40, 64)).astype(np.float32), np.zeros(40, np.int64)
    np.savez(tmp_path / "specs" / "data" / "train.npz", x=x, y=y)
    np.savez(tmp_path / "specs" / "data" / "valid.npz", x=x[:8], y=y[:8])
    text = open(MLP).read().replace("data: {dataset: digits, valid: 0.2}", "data: {path: data/train.npz, valid: data/valid.npz}")
    (tmp_path / "specs" / "mlp.yaml").write_text(text)
    result = train(load(str(tmp_path / "specs" / "mlp.yaml"), SMALL), run_dir=str(tmp_path / "beside"), epochs=1,
                   threads=1, device="cpu")  # (from another working directory than the spec's)
    assert "valid_loss" in result.final
    result = train(load(MLP, SMALL + ["train.data.test=0.85"]), run_dir=str(tmp_path / "t"), valid="0", epochs=1,
                   threads=1, device="cpu")
    assert "valid_loss" not in result.final
    # train.shuffle off (ordered data): the last examples validate, whatever train.data holds
    from runtime.train import TrainOptions, load_data
    from runtime.train import train as run_training
    from compiler.training import compile_spec
    from spec.errors import FLAGS

    ordered = load(MLP, SMALL + ["train.shuffle=false"])
    np.savez(tmp_path / "ordered.npz", x=np.arange(40 * 64, dtype=np.float32).reshape(40, 64), y=y)
    tr, va = load_data(ordered, compile_spec(ordered), TrainOptions(names=KEYWORDS, data=str(tmp_path / "ordered.npz"), valid="0.25"), 0)
    assert va.arrays["x"][:, 0].tolist() == [64.0 * i for i in range(30, 40)]
    np.savez(tmp_path / "one.npz", x=x[:1], y=y[:1])
    with pytest.raises(DataError, match="no examples are left to train on") as e:
        train(spec, run_dir=str(tmp_path / "one"), data=str(tmp_path / "one.npz"), epochs=1)
    assert e.value.hint.startswith("lower valid (or test)")
    with pytest.raises(DataError, match="no examples are left to train on") as e:  # the hint names --valid, given
        run_training(spec, TrainOptions(run_dir=str(tmp_path / "one"), data=str(tmp_path / "one.npz"), valid="0.5",
                                        epochs=1, names=FLAGS))  # (as flowgrad train does)
    assert e.value.hint.startswith("lower --valid (or test)")
    with pytest.raises(DataError, match="no examples are left to train on") as e:  # train()'s keyword
        train(spec, run_dir=str(tmp_path / "one"), data=str(tmp_path / "one.npz"), valid="0.5", epochs=1)
    assert e.value.hint.startswith("lower valid (or test)")


def test_nan_loss_stops_with_the_step(tmp_path):
    spec = load(MLP, SMALL + ["train.optimizer.adam.lr=1e30"])
    with pytest.raises(FlowgradError, match=r"at step \d+"):
        train(spec, run_dir=str(tmp_path / "run"), epochs=3, threads=1, device="cpu")


def test_lr_schedules():
    const = lr_schedule(0.1, None, 100, 10)
    assert const(0) == const(99) == 0.1
    cos = lr_schedule(0.1, {"cosine": {"min_lr": 0.0}}, 100, 10)
    assert cos(0) == pytest.approx(0.1) and cos(99) == pytest.approx(0.0)  # the last of 100 steps: min_lr
    assert cos(49) > 0.05 > cos(50) and all(cos(k) >= cos(k + 1) for k in range(99))
    warm = lr_schedule(0.1, {"constant": {}, "warmup": 10}, 100, 10)
    assert warm(0) == pytest.approx(0.01) and warm(9) == pytest.approx(0.1) and warm(50) == 0.1
    step = lr_schedule(0.1, {"step": {"every": 10, "gamma": 0.5}}, 100, 10)
    assert step(9) == 0.1 and step(10) == 0.05


def test_steps_reuse_their_bindings_without_changing_results():
    """A step binds the state once per buffer set and refreshes the batch and control scalars in
    place: the losses and parameters equal those of steps that bind everything afresh, a last
    batch of another size is bound anew, and the caller's batch arrays are never written."""
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.trainer import Trainer
    from spec import load_spec

    spec = load_spec(os.path.join(ROOT, "models", "mlp.yaml"))
    cm = compile_spec(spec)
    full = real_batch(spec, cm, 64, 0)
    batches = [{k: v[:32].copy() for k, v in full.items()}, {k: v[32:].copy() for k, v in full.items()},
               {k: v[16:48].copy() for k, v in full.items()}, {k: v[:5].copy() for k, v in full.items()}]
    originals = [{k: v.copy() for k, v in b.items()} for b in batches]
    results = []
    for fresh in (False, True):
        trainer = Trainer(cm, "cpu", threads=1, seed=3)
        losses = []
        for step, batch in enumerate(batches):
            if fresh:
                trainer.runner("train")._bindings.clear()
            losses.append(trainer.train_step("main", batch, 0.01, step)["loss"])
        results.append((losses, {k: v.numpy().copy() for k, v in trainer.state.items()}))
    assert results[0][0] == results[1][0]
    for k in results[0][1]:
        np.testing.assert_array_equal(results[0][1][k], results[1][1][k], err_msg=k)
    for b, o in zip(batches, originals):
        for k in b:
            np.testing.assert_array_equal(b[k], o[k])
    assert len(set(results[0][0])) == len(batches)  # each step saw its own batch


def test_scalar_parameters_and_fetched_outputs_keep_their_shapes(monkeypatch):
    """Control scalars are bound 0-d (a [1] lr would make a scalar parameter's update [1]), and
    a fetched result (a gradient) is not overwritten by the next run of the same graph."""
    from compiler import training
    from compiler.training import compile_spec
    from runtime.trainer import Trainer
    from spec import spec_from_dict

    monkeypatch.setattr(training, "FUSED_UPDATE_MAX_ELEMENTS", 0)  # one update per parameter
    spec = spec_from_dict({
        "flowgrad": 1, "name": "scalar_param",
        "inputs": {"x": {"shape": ["N", 3]}, "y": {"shape": ["N", 2]}},
        "params": {"W": {"shape": [3, 2], "init": "glorot_uniform"}, "s": {"shape": [], "init": "ones"}},
        "graph": {"p": "x @ W * s"},
        "loss": "mean((p - y) ** 2)",
        "train": {"optimizer": {"adam": {"lr": 0.01}}},
    })
    cm = compile_spec(spec)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(4, 3)).astype(np.float32), "y": rng.normal(size=(4, 2)).astype(np.float32)}
               for _ in range(3)]
    trainer = Trainer(cm, "cpu", threads=1)
    for step, b in enumerate(batches):
        trainer.train_step("main", b, 0.01, step)
    assert trainer.state_numpy()["s"].shape == ()
    runner = trainer.runner("grads")
    _, first = runner.run(trainer.state, trainer.spare, batches[0], {"step": 0, "seed": 0, "lr": 0.01})
    kept = {k: v.numpy().copy() for k, v in first.items()}
    _, second = runner.run(trainer.state, trainer.spare, batches[1], {"step": 1, "seed": 0, "lr": 0.01})
    for k in kept:
        np.testing.assert_array_equal(first[k].numpy(), kept[k], err_msg=k)
        assert not np.array_equal(second[k].numpy(), kept[k]), k


def test_batches_in_any_byte_order_and_bindings_off_the_cpu(monkeypatch):
    """A big-endian batch trains like the native one (the in-place refresh copies raw bytes),
    and a runner for another device keeps its batch and control inputs on that device
    (onnxruntime copies a CPU input to the GPU when it is bound, so a CPU buffer refreshed in
    place would go stale there): the same losses as on the CPU, bindings reused."""
    from compiler.training import compile_spec
    from runtime import session as session_module
    from runtime import trainer as trainer_module
    from runtime.bench import real_batch
    from runtime.trainer import Trainer
    from spec import load_spec

    spec = load_spec(os.path.join(ROOT, "models", "mlp.yaml"))
    cm = compile_spec(spec)
    native = real_batch(spec, cm, 16, 0)
    swapped = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in native.items()}
    batches = [native, {k: v[::-1].copy() for k, v in native.items()}, native]
    losses = []
    for batch in (native, swapped):
        trainer = Trainer(cm, "cpu", threads=1, seed=3)
        losses.append([trainer.train_step("main", batch, 0.01, step)["loss"] for step in range(3)])
    assert losses[0] == losses[1]
    on_cpu = Trainer(cm, "cpu", threads=1, seed=3)
    expected = [on_cpu.train_step("main", b, 0.01 * (step + 1), step)["loss"] for step, b in enumerate(batches)]
    placed = []
    for module in (trainer_module, session_module):
        monkeypatch.setattr(module, "ort_device", lambda device: placed.append(device) or ("cpu", 0))
    trainer = Trainer(cm, "cpu", threads=1, seed=3)
    runner = trainer.runner("train")
    runner.device = "cuda"  # as a CUDA runner takes it; the session itself stays on the CPU
    placed.clear()  # (the trainer's state was made for "cpu")
    got = [trainer.train_step("main", b, 0.01 * (step + 1), step)["loss"] for step, b in enumerate(batches)]
    assert got == expected
    assert placed and set(placed) == {"cuda"}  # every fed input and spare buffer was made on the runner's device
    assert len(runner._bindings) == 2  # the two alternating buffer sets, each bound once


def test_a_state_snapshot_is_not_overwritten_by_later_steps():
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.trainer import Trainer
    from spec import load_spec

    spec = load_spec(os.path.join(ROOT, "models", "mlp.yaml"))
    cm = compile_spec(spec)
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    before = trainer.state_numpy()
    kept = {k: v.copy() for k, v in before.items()}
    for step in range(3):  # the state's two buffer sets alternate: the first is written again
        trainer.train_step("main", real_batch(spec, cm, 16, 0), 0.01, step)
    for k in kept:
        np.testing.assert_array_equal(before[k], kept[k], err_msg=k)


def test_steps_of_the_first_batch_shape_run_a_shape_specialised_session(monkeypatch):
    """On CUDA, a batch of the first batch's shape and dtypes runs a session with the symbolic
    dims fixed (captured as a CUDA graph there); other batches (an epoch's last) run the
    general session, a shape that keeps coming gets the specialised session made again, and
    a session or capture that fails, or too many graphs, fall back to the general session.
    Exercised here on the CPU: the same losses and parameters as a runner without it."""
    from compiler.training import compile_spec
    from runtime import trainer as trainer_module
    from runtime.bench import real_batch
    from runtime.trainer import Trainer, _capturable
    from spec import load_spec

    spec = load_spec(os.path.join(ROOT, "models", "mlp.yaml"))
    cm = compile_spec(spec)
    full = real_batch(spec, cm, 64, 0)

    def rows(a, b):
        return {k: v[a:b].copy() for k, v in full.items()}

    def train(batches, capture, broken=None):
        trainer = Trainer(cm, "cpu", threads=1, seed=3)
        runner = trainer.runner("train")
        runner.capture = capture and _capturable(runner)
        losses = []
        for step, b in enumerate(batches):
            if broken and step == 3:
                broken(runner)
            losses.append(trainer.train_step("main", b, 0.01 * (1 + step % 3), step)["loss"])
        return runner, losses, trainer.state_numpy()

    def same_as_plain(batches, capture=True, broken=None):
        _, plain_losses, plain_state = train(batches, False)
        runner, losses, state = train(batches, capture, broken)
        assert losses == plain_losses
        for k in plain_state:
            np.testing.assert_array_equal(state[k], plain_state[k], err_msg=k)
        return runner

    # full batches of changing data, an epoch's short last batch among them
    batches = [rows(i % 32, i % 32 + 32) for i in range(8)]
    batches[4] = rows(10, 15)
    runner = same_as_plain(batches)
    assert runner.replays_cuda_graph
    (x_shape, _), (y_shape, _) = runner._captured[0]
    assert (x_shape, y_shape) == ((32, 64), (32,))
    inputs = {i.name: i.shape for i in runner._captured[1].get_inputs()}
    assert inputs["x"] == [32, 64]
    assert len(runner._captured_bindings) == 2 and all(b.session is runner.session for b in runner._bindings)
    # a batch of the captured shape in another dtype goes to the general session, which
    # refuses it (a replay would have read the previous batch's buffer without a check)
    trainer = Trainer(cm, "cpu", threads=1, seed=3)
    runner = trainer.runner("train")
    runner.capture = _capturable(runner)
    for step in range(4):
        trainer.train_step("main", rows(0, 32), 0.01, step)
    wide = {**rows(0, 32), "x": rows(0, 32)["x"].astype(np.float64)}
    assert runner._session_for(wide) is runner.session
    with pytest.raises(RuntimeError, match="data type"):
        trainer.train_step("main", wide, 0.01, 4)

    # a run resumed at an epoch's short last batch: full batches in a row get their own session
    runner = same_as_plain([rows(0, 10)] + [rows(i, i + 32) for i in range(8)])
    assert runner.replays_cuda_graph and runner._captured[0][0][0] == (32, 64)

    def refuse(runner):  # the captured session's runs fail (a capture onnxruntime refuses)
        def fail(*args):
            raise RuntimeError("capture refused")
        monkeypatch.setattr(runner._captured[1], "run_with_iobinding", fail)

    runner = same_as_plain([rows(i, i + 32) for i in range(6)], broken=refuse)
    assert not runner.capture and not runner.replays_cuda_graph

    monkeypatch.setattr(trainer_module, "MAX_CUDA_GRAPHS", 1)  # the second buffer set would be a second graph
    runner = same_as_plain([rows(i, i + 32) for i in range(6)])
    assert not runner.capture
    monkeypatch.undo()

    made = trainer_module.make_session

    def no_capture(model, device, threads, cuda_graph=False):
        if cuda_graph:  # e.g. a node only the CPU provider runs
            raise RuntimeError("This session cannot use the graph capture feature")
        return made(model, device, threads)

    monkeypatch.setattr(trainer_module, "make_session", no_capture)
    runner = same_as_plain([rows(i, i + 32) for i in range(6)])
    assert not runner.capture and not runner.replays_cuda_graph


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_max_unpool_written_as_a_scatter_computes_the_same_step(dtype):
    """A captured CUDA step must not hold MaxUnpool (the CUDA provider has none): the same
    convnet step with it written as a ScatterElements gives the same outputs."""
    from compiler.check import reference_evaluator
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.session import unpool_by_scatter, with_fixed_dims
    from spec import load_spec

    extra = ["train.mixed_precision=float16"] if dtype == "float16" else []
    spec = load_spec(os.path.join(ROOT, "models", "convnet.yaml"), ["dims.C1=4", "dims.C2=8", "dims.H=16", *extra])
    cm = compile_spec(spec)
    g = cm.graphs["train"]
    assert any(n.op_type == "MaxUnpool" for n in g.model.graph.node)
    batch = real_batch(spec, cm, 8, 0)
    state = cm.initial_state(0)
    feeds = {i.name: np.asarray(state[i.name] if i.name in state else {**batch, "lr": 0.01, "step": 3, "seed": 1}[i.name],
                                dtype=i.dtype) for i in g.inputs}
    rewritten = unpool_by_scatter(with_fixed_dims(g.model, {"x": (8, 1, 8, 8), "y": (8,)}))
    assert not any(n.op_type == "MaxUnpool" for n in rewritten.graph.node)
    onnx.checker.check_model(rewritten, full_check=True)
    names = [o.name for o in g.model.graph.output]
    want = reference_evaluator(g.model).run(None, feeds)  # (onnxruntime's fusions differ between the two)
    got = reference_evaluator(rewritten).run(None, feeds)
    for k, a, b in zip(names, got, want):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_shifts_written_for_cuda_compute_the_same_step():
    """CUDA sessions and exported files get each BitShift (the dropout hash's) as exact
    float64 arithmetic: the same mlp training step, bit for bit."""
    from compiler.emit import all_nodes
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.session import make_session, shifts_in_float64
    from spec import load_spec

    spec = load_spec(os.path.join(ROOT, "models", "mlp.yaml"))
    cm = compile_spec(spec)
    g = cm.graphs["train"]
    assert any(n.op_type == "BitShift" for n in all_nodes(g.model.graph))
    batch = real_batch(spec, cm, 16, 0)
    state = cm.initial_state(0)
    feeds = {i.name: np.asarray(state[i.name] if i.name in state else {**batch, "lr": 0.01, "step": 3, "seed": 1}[i.name],
                                dtype=i.dtype) for i in g.inputs}
    rewritten = shifts_in_float64(g.model)
    assert not any(n.op_type == "BitShift" for n in all_nodes(rewritten.graph))
    onnx.checker.check_model(rewritten, full_check=True)
    for a, b in zip(make_session(rewritten).run(None, feeds), make_session(g.model).run(None, feeds)):
        np.testing.assert_array_equal(a, b)


def test_shifts_in_loop_bodies_are_written_for_cuda_too():
    """A BitShift inside a Scan's step (a random op in a recurrent step) is rewritten as well."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    from runtime.session import make_session, shifts_in_float64

    body = helper.make_graph(
        [helper.make_node("BitShift", ["x", "sixteen"], ["y"], direction="RIGHT"),
         helper.make_node("Add", ["acc", "y"], ["acc_next"])], "step",
        [helper.make_tensor_value_info("acc", TP.UINT32, [3]), helper.make_tensor_value_info("x", TP.UINT32, [3])],
        [helper.make_tensor_value_info("acc_next", TP.UINT32, [3]), helper.make_tensor_value_info("y", TP.UINT32, [3])])
    graph = helper.make_graph(
        [helper.make_node("Scan", ["acc0", "xs"], ["acc", "ys"], num_scan_inputs=1, body=body)], "loop",
        [helper.make_tensor_value_info("acc0", TP.UINT32, [3]), helper.make_tensor_value_info("xs", TP.UINT32, [4, 3])],
        [helper.make_tensor_value_info("acc", TP.UINT32, [3]), helper.make_tensor_value_info("ys", TP.UINT32, [4, 3])],
        [numpy_helper.from_array(np.asarray(16, np.uint32), "sixteen")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rewritten = shifts_in_float64(model)
    assert [n.op_type for n in rewritten.graph.node[0].attribute[0].g.node] == ["Cast", "Mul", "Cast", "Add"]
    xs = np.random.default_rng(0).integers(0, 2**32, size=(4, 3), dtype=np.uint64).astype(np.uint32)
    xs[0] = [0, 2**32 - 1, 65535]  # the ends of the range
    feeds = {"acc0": np.zeros(3, np.uint32), "xs": xs}
    for m in (model, rewritten):
        np.testing.assert_array_equal(make_session(m).run(None, feeds)[1], xs // 65536)


def test_shift_rewrite_keeps_other_shifts_and_takes_fresh_names():
    """Left shifts and amounts that are not scalars stay BitShifts; new names never collide
    with the graph's own (here a tensor already named like the rewrite's first choice)."""
    from onnx import TensorProto as TP
    from onnx import helper, numpy_helper

    from runtime.session import make_session, shifts_in_float64

    graph = helper.make_graph(
        [helper.make_node("BitShift", ["x", "k"], ["y"], direction="RIGHT"),
         helper.make_node("BitShift", ["x", "k"], ["left"], direction="LEFT"),
         helper.make_node("BitShift", ["x", "k1"], ["vector_amount"], direction="RIGHT"),
         helper.make_node("Identity", ["x"], ["y_wide"]), helper.make_node("Identity", ["x"], ["shift_scale_3"])], "g",
        [helper.make_tensor_value_info("x", TP.UINT32, [3])],
        [helper.make_tensor_value_info(n, TP.UINT32, [3]) for n in ("y", "left", "vector_amount", "y_wide", "shift_scale_3")],
        [numpy_helper.from_array(np.asarray(3, np.uint32), "k"), numpy_helper.from_array(np.asarray([3], np.uint32), "k1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rewritten = shifts_in_float64(model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [n.op_type for n in rewritten.graph.node].count("BitShift") == 2
    x = np.asarray([0, 9, 2**32 - 1], np.uint32)
    for a, b in zip(make_session(rewritten).run(None, {"x": x}), make_session(model).run(None, {"x": x})):
        np.testing.assert_array_equal(a, b)


def test_cuda_graphs_can_be_turned_off(monkeypatch):
    """`--no-cuda-graphs` (TrainOptions.cuda_graphs, Trainer(cuda_graphs=False)): a CUDA
    runner then never specialises or captures."""
    from compiler.training import compile_spec
    from runtime import trainer as trainer_module
    from runtime.train import TrainOptions
    from runtime.trainer import GraphRunner
    from spec import load_spec

    made = trainer_module.make_session
    monkeypatch.setattr(trainer_module, "make_session", lambda model, device, threads, cuda_graph=False: made(model, "cpu", threads))
    cm = compile_spec(load_spec(os.path.join(ROOT, "models", "mlp.yaml")))
    assert GraphRunner(cm.graphs["train"], "cuda", 1).capture
    assert not GraphRunner(cm.graphs["train"], "cuda", 1, cuda_graphs=False).capture
    assert TrainOptions(names=KEYWORDS).cuda_graphs
    out = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert "--no-cuda-graphs" in out.stdout


def test_resuming_or_warm_starting_on_data_with_another_vocabulary_is_refused(tmp_path):
    """Token ids mean the run's vocabulary: a run trained when the characters had another
    order (an older flowgrad) must not go on reading every embedding row as another one."""
    spec = load(os.path.join(ROOT, "models", "char_lstm.yaml"), ["dims.H=8", "dims.E=4", "train.batch_size=8"])
    run = tmp_path / "run"
    train(spec, run_dir=str(run), steps=2, threads=1, device="cpu")
    info = json.loads((run / "run.json").read_text())
    info["meta"]["vocab"] = info["meta"]["vocab"][::-1]
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="vocab differs"):
        train(spec, run_dir=str(run), steps=4, threads=1, device="cpu", resume=True)
    with pytest.raises(DataError, match="vocab differs") as e:
        train(spec, run_dir=str(tmp_path / "warm"), steps=1, threads=1, device="cpu", init_from=str(run))
    assert "leave out init_from" in e.value.hint and "overwrite" not in e.value.hint  # (a new run has nothing to overwrite)
    # a checkpoint file of the run, as a damaged checkpoint.npz's hint offers best.npz, was taken on any data
    with pytest.raises(DataError, match="vocab differs"):
        train(spec, run_dir=str(tmp_path / "warm"), steps=1, threads=1, device="cpu", init_from=str(run / "best.npz"))
    # the run's own vocabulary resumes, from the spec copy in the run directory too
    info["meta"]["vocab"] = info["meta"]["vocab"][::-1]
    (run / "run.json").write_text(json.dumps(info))
    resumed = train(load(str(run / "spec.yaml"), ["dims.H=8", "dims.E=4", "train.batch_size=8"]), run_dir=str(run),
                    steps=4, threads=1, device="cpu", resume=True)
    assert resumed.steps == 4


def test_eval_compiles_the_spec_the_run_trained(tmp_path):
    """A run trained with --set overrides, from a spec given as data, or in float64: its
    spec.yaml and run.json say what it trained, so eval builds graphs its checkpoint fits."""
    import yaml

    from runtime.api import evaluate_run

    digits = D.load_digits()
    np.savez(tmp_path / "d.npz", x=digits.arrays["x"][:100], y=digits.arrays["y"][:100])
    runs = {
        "set": (load(MLP, ["dims.H=16"]), {}),
        "dict": (load({**yaml.safe_load(open(MLP)), "dims": {"D": 64, "H": 12, "K": 10}}), {}),
        "f64": (load(MLP, ["dims.H=8"]), {"dtype": "float64"}),
    }
    for name, (spec, extra) in runs.items():
        run = tmp_path / name
        train(spec, run_dir=str(run), steps=3, threads=1, device="cpu", **extra)
        metrics = evaluate_run(str(run), str(tmp_path / "d.npz"), device="cpu", threads=1)
        assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1, name
    # (the header named the API's overrides as flowgrad's --set flags, which the caller never typed)
    assert (tmp_path / "set" / "spec.yaml").read_text().splitlines()[0] == \
        '# the spec this run trained: mlp.yaml, overrides=["dims.H=16"]'
    assert json.loads((tmp_path / "f64" / "run.json").read_text())["dtype"] == "float64"
    with pytest.raises(FlowgradError, match="unknown checkpoint"):
        evaluate_run(str(tmp_path / "set"), str(tmp_path / "d.npz"), checkpoint="newest", device="cpu")


def test_seeds_apart_by_a_multiple_of_2_to_the_32_differ_in_weights_and_data_order():
    """Initial weights and data order read the seed's low 32 bits only: seeds 5 and 5 + 2**32
    started alike (their dropout, which reads all 64 bits, differed). Seeds below 2**32 keep
    the streams they had."""
    import zlib

    from compiler.init import param_rng
    from runtime.train import epoch_order

    big = 5 + 2**32
    assert not np.array_equal(param_rng(5, "W").random(4), param_rng(big, "W").random(4))
    assert not np.array_equal(epoch_order(5, 0, 50), epoch_order(big, 0, 50))
    assert np.array_equal(param_rng(5, "W").random(4), np.random.default_rng([5, zlib.crc32(b"W")]).random(4))
    assert np.array_equal(epoch_order(5, 1, 50), np.random.default_rng([5, 1, 7]).permutation(50))


def test_eval_without_data_reads_the_test_examples_the_run_held_out(tmp_path):
    """train.data.test held examples out of training and validation, but no command could
    evaluate on them: eval needed a file. Without --data it now rebuilds the run's split
    (from run.json's data source and seed), or reads the test file the spec names."""
    from runtime.api import evaluate_run

    digits = D.load_digits()
    np.savez(tmp_path / "d.npz", **digits.arrays)
    spec = load(MLP, ["dims.H=16", "train.data.test=0.25"])
    run = str(tmp_path / "run")
    train(spec, run_dir=run, data=str(tmp_path / "d.npz"), steps=5, threads=1, device="cpu")
    _, held = D.split(D.only(digits, ["x", "y"]), 0.25, 0 + 7919)  # the held-out fraction, as training split it
    np.savez(tmp_path / "held.npz", **held.arrays)
    assert evaluate_run(run, device="cpu") == evaluate_run(run, str(tmp_path / "held.npz"), device="cpu")

    changed = dict(digits.arrays)
    changed["y"] = changed["y"][::-1].copy()
    np.savez(tmp_path / "d.npz", **changed)
    with pytest.raises(DataError, match="has changed since .* was trained on it") as e:
        evaluate_run(run, device="cpu")
    assert 'data="FILE.npz"' in e.value.hint and "--" not in e.value.hint  # (evaluate_run's keyword)

    with_file = load(MLP, ["dims.H=16", f"train.data.test={tmp_path / 'held.npz'}"])
    train(with_file, run_dir=str(tmp_path / "file"), data=str(tmp_path / "d.npz"), steps=2, threads=1, device="cpu")
    assert evaluate_run(str(tmp_path / "file"), device="cpu") == evaluate_run(str(tmp_path / "file"), str(tmp_path / "held.npz"), device="cpu")
    os.rename(tmp_path / "held.npz", tmp_path / "moved.npz")  # the hint spoke of a path beside the run's spec.yaml
    with pytest.raises(DataError, match=f"^test file '{tmp_path / 'held.npz'}' does not exist: "
                                        f"{tmp_path / 'file' / 'run.json'} records it as the training run's") as e:
        evaluate_run(str(tmp_path / "file"), device="cpu")
    assert e.value.loc is None and e.value.hint == 'pass the test examples with data="FILE.npz" (where the file is now)'
    no_test = str(tmp_path / "none")
    train(load(MLP, ["dims.H=16"]), run_dir=no_test, data=str(tmp_path / "d.npz"), steps=1, threads=1, device="cpu")
    with pytest.raises(DataError, match="holds out no test data"):
        evaluate_run(no_test, device="cpu")
    info = json.loads(open(os.path.join(run, "run.json")).read())  # as runs written before the hash was kept
    del info["data_hash"]
    with open(os.path.join(run, "run.json"), "w") as f:
        json.dump(info, f)
    with pytest.raises(DataError, match="does not record a hash of its training data"):
        evaluate_run(run, device="cpu")


def test_api_threads_are_bounded_like_the_cli_flag(tmp_path):
    """--threads stops at 1024; train(threads=2000) went on and spent minutes starting
    onnxruntime's thread pools for a two-step run, and predict, evaluate_run and bench did the same."""
    from runtime.api import predict
    from runtime.bench import bench

    with pytest.raises(FlowgradError, match="^threads must be at most 1,024, got 2000"):
        train(load(MLP, SMALL), run_dir=str(tmp_path / "run"), device="cpu", threads=2000)
    assert not (tmp_path / "run").exists()
    with pytest.raises(FlowgradError, match="^threads must be at most 1,024"):
        predict(str(tmp_path / "m.onnx"), {}, threads=2000)
    with pytest.raises(FlowgradError, match="^threads must be at most 1,024"):
        bench(load(MLP, SMALL), threads=2000)
    from compiler.training import compile_spec
    from runtime.trainer import Trainer  # the API's step-level class, checked by the same helper

    cm = compile_spec(load(MLP, SMALL))
    for kwargs, words in (({"threads": 2000}, "threads must be at most 1,024"),  # (minutes of thread pools)
                          ({"threads": 2.5}, "threads must be an integer of at least 1"),  # (onnxruntime's TypeError)
                          ({"seed": -1}, "seed must be an integer of at least 0")):
        with pytest.raises(FlowgradError, match=f"^{words}"):
            Trainer(cm, "cpu", **kwargs)


def test_evaluation_graphs_with_sums_and_counts_are_not_captured_as_cuda_graphs():
    """An eval graph's per-batch counts come from shapes, on the host: captured on CUDA, the
    copy into the bound output failed the capture and every later CUDA call of the process
    (validation of mlp and convnet ended in a cuBLAS error)."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer, _capturable
    from spec import load_spec

    cm = compile_spec(load_spec(os.path.join(ROOT, "models", "mlp.yaml")), graphs=("train", "eval"))
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    assert any(o.role == "part" for o in trainer.runner("eval").scalar_outputs)
    assert not _capturable(trainer.runner("eval"))
    assert _capturable(trainer.runner("train"))


def test_a_run_on_an_older_bundled_dataset_is_told_the_dataset_changed(tmp_path):
    """The reverse, copy and dates generators (and labelled digits) draw other examples than
    they did: a run trained on the old ones was refused on --resume for 'another data file,
    validation or test split, or data options', which the user had not changed, and eval
    without --data said the data 'has changed'. run.json records the generator's version, and
    a version that differs (or none, with the hash differing) is named as the cause."""
    from runtime.api import evaluate_run

    spec = load(MLP, ["dims.H=8", "train.data.test=0.25"])
    run = str(tmp_path / "run")
    train(spec, run_dir=run, steps=2, threads=1, device="cpu")
    path = os.path.join(run, "run.json")
    info = json.loads(open(path).read())
    assert info["data_source"]["dataset"] == "digits" and info["data_source"]["version"] == D.DATASET_VERSIONS["digits"]

    def rewrite(**source):
        old = json.loads(open(path).read())
        old["data_hash"] = "0" * 16  # as the old generator's examples hash
        old["data_source"] = {k: v for k, v in {**old["data_source"], **source}.items() if v is not None}
        with open(path, "w") as f:
            json.dump(old, f)

    for version, words in ((1, "the run was trained on its version 1, this flowgrad draws version 2"),
                           (None, "the run's run.json predates dataset versions")):
        rewrite(version=version)
        with pytest.raises(DataError, match="the bundled dataset 'digits' changed in this flowgrad version") as e:
            train(spec, run_dir=run, steps=3, threads=1, device="cpu", resume=True)
        assert words in e.value.message and "another data file" not in e.value.message
        assert f'init_from="{run}", run_dir="NEW_DIR"' in e.value.hint and "\n" not in e.value.message
        with pytest.raises(DataError, match="the bundled dataset 'digits' changed in this flowgrad version") as e:
            evaluate_run(run, device="cpu")
        assert words in e.value.message and 'data="FILE.npz"' in e.value.hint and "init_from=" in e.value.hint
    # the user's own change is still named as such: another split, or the same version
    rewrite(version=None)
    with pytest.raises(DataError, match=re.escape('(valid="0.3", where the run had 0.2)')):
        train(spec, run_dir=run, steps=3, threads=1, device="cpu", resume=True, valid="0.3")
    rewrite(version=D.DATASET_VERSIONS["digits"])
    with pytest.raises(DataError, match="another data file, validation or test split, or data options"):
        train(spec, run_dir=run, steps=3, threads=1, device="cpu", resume=True)
    with pytest.raises(DataError, match="has changed since .* was trained on it"):
        evaluate_run(run, device="cpu")


TAGGER = """
flowgrad: 1
name: tagger
dims: {V: 7, E: 4, H: 5, K: 2}
inputs:
  x: {shape: [N, T], dtype: int64}
  len: {shape: [N], dtype: int64}
  y: {shape: [N, T], dtype: int64}
graph:
  mask: cast(unsqueeze(positions(x, axis=1), axes=0) < unsqueeze(len, axes=1), 'float32')
  hs: gru(embedding(x, V, E), H, lengths=len)
  logits: dense(hs, K)
outputs:
  tags: argmax(logits, axis=-1)
loss: sum(cross_entropy(logits, y, reduction='none') * mask) / sum(mask)
train: {optimizer: {adam: {lr: 0.01}}, batch_size: 4, epochs: 1}
"""


def test_lengths_beyond_their_sequences_are_refused_in_train_eval_and_predict(tmp_path):
    """A length above the steps of the sequence it counts was taken as all of them, without a word,
    by training, eval and predict alike: each refuses it, naming the array, the example, the
    value and the sequence's time axis."""
    from runtime.api import evaluate_run

    (tmp_path / "tagger.yaml").write_text(TAGGER)
    spec = load(str(tmp_path / "tagger.yaml"))
    rng = np.random.default_rng(0)
    x, y, lengths = rng.integers(0, 7, (12, 6)), rng.integers(0, 2, (12, 6)), rng.integers(0, 7, 12)
    np.savez(tmp_path / "good.npz", x=x, y=y, len=lengths)
    long = lengths.copy()
    long[[3, 8]] = 40, 7
    np.savez(tmp_path / "long.npz", x=x, y=y, len=long)
    message = r"long.npz: array 'len' holds the length 40 at example 3, beyond the 6 steps of array 'x' \(its dim 1\)"
    with pytest.raises(DataError, match=message) as e:
        train(spec, run_dir=str(tmp_path / "bad"), data=str(tmp_path / "long.npz"), epochs=1)
    assert e.value.loc.line == 7 and "0 to 6" in e.value.hint  # at the declaration of len
    train(spec, run_dir=str(tmp_path / "run"), data=str(tmp_path / "good.npz"), epochs=1, threads=1, device="cpu")
    with pytest.raises(DataError, match=message):
        evaluate_run(str(tmp_path / "run"), str(tmp_path / "long.npz"), threads=1, device="cpu")
    export(str(tmp_path / "run"), str(tmp_path / "tagger.onnx"))
    assert predict(str(tmp_path / "tagger.onnx"), {"x": x, "len": lengths})["tags"].shape == (12, 6)
    with pytest.raises(DataError, match=r"input 'len' holds the length 40 at example 3, beyond the 6 steps of input 'x'"):
        predict(str(tmp_path / "tagger.onnx"), {"x": x, "len": long})
    # a model from someone else may say anything there: what is not such a record is not read as one
    model = onnx.load(str(tmp_path / "tagger.onnx"))
    for odd in ('{"len": 3}', '{"len": {"of": ["x"], "axis": 1, "least": 0}}', '[1]', '{"len": {"of": "x", "axis": 9, "least": 0}}'):
        next(p for p in model.metadata_props if p.key == "flowgrad.lengths").value = odd
        onnx.save(model, str(tmp_path / "odd.onnx"))
        assert predict(str(tmp_path / "odd.onnx"), {"x": x, "len": lengths})["tags"].shape == (12, 6)


SLICER = """flowgrad: 1
name: slicer
dims: {E: 3}
inputs:
  x: {shape: [N, T, E]}
  y: {shape: [N]}
graph:
  s: x[:, -1:-4:-2]
  tail: slice(x, [-2], [2147483647], axes=[1])
  p: sum(dense(s, 1), axis=[1, 2]) + sum(tail, axis=[1, 2])
outputs:
  p: p
loss: mean((p - y) ** 2)
train: {optimizer: {adam: {lr: 0.01}}, batch_size: 4, epochs: 1}
"""


def test_data_shorter_than_a_slice_of_a_symbolic_dim_assumes_is_refused_at_the_slice(tmp_path):
    """x[:, -1:-4:-2] on a symbolic T has 2 steps where T >= 3, 1 where T is 2: the graph said 2, and
    training on T = 2 failed in onnxruntime, far from the spec. Train, eval and predict refuse such
    data at the slice; data of T 3 and more runs, with the values of NumPy's slices (the bound
    2147483647 is the end of T)."""
    from runtime.api import evaluate_run

    (tmp_path / "slicer.yaml").write_text(SLICER)
    spec = load(str(tmp_path / "slicer.yaml"))
    rng = np.random.default_rng(0)
    data = {t: {"x": rng.normal(size=(8, t, 3)).astype("float32"), "y": rng.normal(size=8).astype("float32")}
            for t in (2, 3, 6)}
    for t, arrays in data.items():
        np.savez(tmp_path / f"t{t}.npz", **arrays)
    message = r"t2.npz: array 'x' has T = 2, but the slice \[-1:-4:-2\] of T needs T of 3 or more"
    with pytest.raises(DataError, match=message) as e:
        train(spec, run_dir=str(tmp_path / "bad"), data=str(tmp_path / "t2.npz"), epochs=1)
    assert (e.value.loc.line, e.value.loc.col) == (8, 6) and "T of 3 or more" in e.value.hint
    train(spec, run_dir=str(tmp_path / "run"), data=str(tmp_path / "t3.npz"), epochs=1, threads=1, device="cpu")
    with pytest.raises(DataError, match=message):
        evaluate_run(str(tmp_path / "run"), str(tmp_path / "t2.npz"), threads=1, device="cpu")
    export(str(tmp_path / "run"), str(tmp_path / "slicer.onnx"))
    best = tmp_path / "run" / "best.npz"  # (what export bakes in, where the run kept one)
    state = load_checkpoint(str(best if best.exists() else tmp_path / "run" / "checkpoint.npz"))[0]
    for t in (3, 6):
        x = data[t]["x"]
        got = predict(str(tmp_path / "slicer.onnx"), {"x": x})["p"]
        assert got.shape == (8,)
        s = x[:, -1:-4:-2].astype("float64")
        want = (s @ state["p.W"] + state["p.b"]).sum(axis=(1, 2)) + x[:, -2:].sum(axis=(1, 2))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError, match=r"input 'x' has T = 2, but the slice \[-1:-4:-2\] of T"):
        predict(str(tmp_path / "slicer.onnx"), {"x": data[2]["x"]})


SHIFT_LM = """flowgrad: 1
name: shift_lm
dims: {V: 97, E: 16, H: 32}
inputs:
  x: {shape: [N, T], dtype: int64, doc: character ids}
graph:
  inp: x[:, :-1]
  tgt: x[:, 1:]
  e: embedding(inp, V, E)
  hs: lstm(e, H)
  logits: dense(hs, V)
outputs:
  probs: softmax(logits)
loss: cross_entropy(logits, tgt)
train:
  data: {dataset: text, valid: 0.05, options: {level: char, seq_len: 16}}
  optimizer: {adam: {lr: 0.01}}
  batch_size: 16
  epochs: 1
"""


def test_a_language_model_that_shifts_its_tokens_trains_exports_and_predicts(tmp_path):
    """inp: x[:, :-1] and tgt: x[:, 1:] on x [N, T] were refused ('cannot slice the symbolic dim T
    with [1::1]'): a language model written by hand could not shift its tokens. Both are [N, T-1],
    so cross_entropy takes them; the model trains on the bundled text with a falling loss, exports
    and predicts on several T, and data with T of 1, which the shift leaves nothing of, is refused
    at the slice."""
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.trainer import Trainer

    (tmp_path / "lm.yaml").write_text(SHIFT_LM)
    spec = load(str(tmp_path / "lm.yaml"))
    cm = compile_spec(spec)
    assert cm.least_sizes["T"]["least"] == 2
    batch = real_batch(spec, cm, 16, 0)
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    losses = [trainer.train_step("main", batch, 0.01, step)["loss"] for step in range(8)]
    assert losses[0] > 4.0 and all(b < a for a, b in zip(losses, losses[1:])), losses
    train(spec, run_dir=str(tmp_path / "run"), steps=10, threads=1, device="cpu")
    export(str(tmp_path / "run"), str(tmp_path / "lm.onnx"))
    for t in (2, 5, 9):
        x = np.random.default_rng(t).integers(0, 97, (3, t))
        probs = predict(str(tmp_path / "lm.onnx"), {"x": x})["probs"]
        assert probs.shape == (3, t - 1, 97)
        np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    with pytest.raises(DataError, match=r"input 'x' has T = 1, but the slice \[:-1\] of T needs T of 2 or more"):
        predict(str(tmp_path / "lm.onnx"), {"x": np.zeros((2, 1), dtype=np.int64)})
    np.savez(tmp_path / "short.npz", x=np.zeros((4, 1), dtype=np.int64))
    with pytest.raises(DataError, match=r"array 'x' has T = 1, but the slice \[:-1\] of T needs T of 2 or more") as e:
        train(spec, run_dir=str(tmp_path / "short"), data=str(tmp_path / "short.npz"), epochs=1)
    assert e.value.loc.line == 7


BATCH_SLICE = """flowgrad: 1
name: batch_slice
inputs:
  x: {shape: [N, 3]}
  y: {shape: [N, 3]}
graph:
  h: dense(x, 3)
  d: h[1:] - y[:-1]
outputs:
  out: h
loss: mean(d * d)
train:
  optimizer: {sgd: {lr: 0.01}}
  batch_size: 4
  epochs: 1
  shuffle: false
"""


def test_a_slice_of_the_examples_dim_is_checked_against_every_batch_before_training(tmp_path):
    """h[1:] of the examples' dim N needs batches of 2 rows or more: 5 examples in batches of 4
    trained without a word, the last batch of 1 computing on no rows where the graph said N-1
    (the data check skipped the first dim). Refused before any step, at the slice, where a batch
    (the short last one, or every one) is too short; drop_last trains. Validation and eval take a
    short last batch into the one before it; predict checks its rows against its own graph's
    slices (the loss's h[1:] does not bound it)."""
    from runtime.api import evaluate_run

    (tmp_path / "b.yaml").write_text(BATCH_SLICE)
    spec = load(str(tmp_path / "b.yaml"))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(5, 3)).astype("float32"), "y": rng.normal(size=(5, 3)).astype("float32")}
    with pytest.raises(DataError, match=r"b.yaml:8:6: the last batch of the 5 training examples \(train.batch_size 4\) has N = 1, "
                                        r"but the slice \[1:\] of N needs N of 2 or more") as e:
        train(spec, run_dir=str(tmp_path / "run"), data=data)
    assert e.value.loc.line == 8 and "drop_last: true" in e.value.hint
    assert not (tmp_path / "run").exists()  # (refused before the run directory took anything)
    with pytest.raises(DataError, match=r": a batch of batch_size=1 has N = 1, but the slice \[1:\] of N needs N of 2"):
        train(spec, run_dir=str(tmp_path / "run"), data=data, batch_size=1)
    with pytest.raises(DataError, match=r"data\[\"x\"\] has N = 1, but the slice \[1:\] of N needs N of 2 or more"):
        train(spec, run_dir=str(tmp_path / "run"), data={k: v[:1] for k, v in data.items()}, batch_size=1)
    (tmp_path / "d.yaml").write_text(BATCH_SLICE.replace("shuffle: false", "shuffle: false\n  drop_last: true"))
    valid = {k: np.concatenate([v, v]) for k, v in data.items()}  # (10 rows: eval batches of 3 end with one)
    r = train(load(str(tmp_path / "d.yaml")), run_dir=str(tmp_path / "run"), data=data, valid=valid)
    assert np.isfinite(r.final["valid_loss"])
    assert np.isfinite(evaluate_run(str(tmp_path / "run"), valid, batch_size=3)["loss"])
    with pytest.raises(DataError, match=r"data\[\"x\"\] has N = 1, but the slice \[1:\] of N needs N of 2 or more"):
        evaluate_run(str(tmp_path / "run"), {k: v[:1] for k, v in data.items()})
    export(str(tmp_path / "run"), str(tmp_path / "b.onnx"))
    assert predict(str(tmp_path / "b.onnx"), {"x": data["x"][:1]})["out"].shape == (1, 3)


def test_a_slice_of_a_reshaped_product_of_dims_is_checked_against_the_data(tmp_path):
    """r[-6:-1] of r: reshape(h, [-1, 3]) on h [N, T, 6] slices a dim of 2*N*T, which no input
    declares: its least size (6) was recorded under nothing the data check read, and data of
    2*N*T = 4 trained without a word. The product is sized from the data's N and T: a short last
    batch, short data and short predict inputs are refused at the slice."""
    (tmp_path / "p.yaml").write_text("""flowgrad: 1
name: product_slice
inputs:
  x: {shape: [N, T, 6]}
graph:
  h: dense(x, 6)
  r: reshape(h, [-1, 3])
  s: r[-6:-1]
outputs:
  out: sum(s)
loss: mean(s * s)
train:
  optimizer: {sgd: {lr: 0.01}}
  batch_size: 4
  epochs: 1
""")
    spec = load(str(tmp_path / "p.yaml"))
    x = np.random.default_rng(0).normal(size=(5, 2, 6)).astype("float32")
    with pytest.raises(DataError, match=r"p.yaml:8:6: the last batch of the 5 training examples \(train.batch_size 4\) "
                                        r"has 2\*N\*T = 4, but the slice \[-6:-1\] of 2\*N\*T needs 2\*N\*T of 6 or more"):
        train(spec, run_dir=str(tmp_path / "run"), data={"x": x})
    with pytest.raises(DataError, match=r"data\[\"x\"\] has 2\*N\*T = 4, but the slice \[-6:-1\] of 2\*N\*T"):
        train(spec, run_dir=str(tmp_path / "run"), data={"x": x[:1]})
    train(spec, run_dir=str(tmp_path / "run"), data={"x": x}, batch_size=5)
    export(str(tmp_path / "run"), str(tmp_path / "p.onnx"))
    assert np.isfinite(predict(str(tmp_path / "p.onnx"), {"x": x[:2]})["out"])
    with pytest.raises(DataError, match=r"input 'x' has 2\*N\*T = 2, but the slice \[-6:-1\] of 2\*N\*T needs"):
        predict(str(tmp_path / "p.onnx"), {"x": x[:1, :1]})


def test_a_slice_in_a_scan_step_is_checked_against_the_data(tmp_path):
    """A scan step that slices its carried state h [N, S, 4] with h[:, -3:-1] recorded no least
    size (the step's nodes were not looked into): data of S = 2 failed in onnxruntime's training
    step ("Indices vs updates dimensions differs"). It is refused before the run, at the slice in
    the block (it was told at the scan call: the step's nodes took the call's place when hoisting
    rebuilt them)."""
    (tmp_path / "s.yaml").write_text("""flowgrad: 1
name: scan_slice
inputs:
  x: {shape: [N, T, 4]}
  m: {shape: [N, S, 4]}
blocks:
  step:
    in: [x_t, h]
    graph:
      c: sum(h[:, -3:-1], axis=1)
      o: dense(concat(x_t, c, axis=-1), 4)
      h2: h * tanh(unsqueeze(o, axes=1))
    out: [h2, o]
graph:
  hs, outs: scan(step, over=x, init=[m])
outputs:
  out: outs
loss: mean(outs * outs)
train:
  optimizer: {sgd: {lr: 0.01}}
  batch_size: 4
  epochs: 1
""")
    spec = load(str(tmp_path / "s.yaml"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 4)).astype("float32")
    with pytest.raises(DataError, match=r"data\[\"m\"\] has S = 2, but the slice \[-3:-1\] of S needs S of 3 or more") as e:
        train(spec, run_dir=str(tmp_path / "run"), data={"x": x, "m": rng.normal(size=(8, 2, 4)).astype("float32")})
    assert e.value.loc is not None and e.value.loc.file.endswith("s.yaml") and (e.value.loc.line, e.value.loc.col) == (10, 14)
    m = rng.normal(size=(8, 3, 4)).astype("float32")
    train(spec, run_dir=str(tmp_path / "run"), data={"x": x, "m": m})
    export(str(tmp_path / "run"), str(tmp_path / "s.onnx"))
    assert predict(str(tmp_path / "s.onnx"), {"x": x, "m": m})["out"].shape == (8, 3, 4)
    with pytest.raises(DataError, match=r"input 'm' has S = 2, but the slice \[-3:-1\] of S needs S of 3 or more"):
        predict(str(tmp_path / "s.onnx"), {"x": x, "m": m[:, :2]})


def test_predict_refuses_ids_beyond_the_vocabulary_as_training_does(tmp_path):
    """An id at or beyond an embedding's rows, which training refuses naming the input, reached
    onnxruntime in predict and failed in its Gather ("indices element out of data bounds"), with
    a hint about shapes and dtypes: the export records the bound and predict names the input."""
    (tmp_path / "tagger.yaml").write_text(TAGGER)
    rng = np.random.default_rng(0)
    x, y, lengths = rng.integers(0, 7, (12, 6)), rng.integers(0, 2, (12, 6)), rng.integers(0, 7, 12)
    np.savez(tmp_path / "good.npz", x=x, y=y, len=lengths)
    train(load(str(tmp_path / "tagger.yaml")), run_dir=str(tmp_path / "run"), data=str(tmp_path / "good.npz"),
          epochs=1, threads=1, device="cpu")
    export(str(tmp_path / "run"), str(tmp_path / "tagger.onnx"))
    assert predict(str(tmp_path / "tagger.onnx"), {"x": x, "len": lengths})["tags"].shape == (12, 6)
    big = x.copy()
    big[4, 2] = 7
    with pytest.raises(DataError, match=r"tagger.onnx: input 'x' has the value 7 \(first too large at example 4\), "
                                        r"but it indexes a table of 7 rows") as e:
        predict(str(tmp_path / "tagger.onnx"), {"x": big, "len": lengths})
    assert "0 to 6" in e.value.hint
    # a model from someone else may say anything there: what is not such a record is not read as one
    model = onnx.load(str(tmp_path / "tagger.onnx"))
    for odd in ('{"x": 3}', '{"x": [0, "rows"]}', '[1]', '{"x": [7, 5]}', '{"x": [7, "{9}"]}', "{"):
        next(p for p in model.metadata_props if p.key == "flowgrad.bounds").value = odd
        onnx.save(model, str(tmp_path / "odd.onnx"))
        assert predict(str(tmp_path / "odd.onnx"), {"x": x, "len": lengths})["tags"].shape == (12, 6)
    # a language model trained on an .npz (no vocabulary in its metadata): its prompt feeds generate.input
    (tmp_path / "lm.yaml").write_text(TAGGER.replace("name: tagger", "name: lm").replace("  len: {shape: [N], dtype: int64}\n", "")
                                      .replace("  mask: cast(unsqueeze(positions(x, axis=1), axes=0) < unsqueeze(len, axes=1), 'float32')\n", "")
                                      .replace(", lengths=len", "").replace("dense(hs, K)", "dense(hs, V)")
                                      .replace("tags: argmax(logits, axis=-1)", "probs: softmax(logits)\ngenerate: {input: x, logits: logits, max_len: 3}")
                                      .replace("sum(cross_entropy(logits, y, reduction='none') * mask) / sum(mask)", "cross_entropy(logits, y)"))
    np.savez(tmp_path / "lm.npz", x=x, y=x)
    train(load(str(tmp_path / "lm.yaml")), run_dir=str(tmp_path / "lm"), data=str(tmp_path / "lm.npz"), epochs=1, threads=1,
          device="cpu")
    export(str(tmp_path / "lm"), str(tmp_path / "lm.onnx"))
    feeds = {"max_len": np.array(3), "temperature": np.array(1.0, np.float32), "seed": np.array(0)}
    assert predict(str(tmp_path / "lm.onnx"), {"prompt": np.array([1, 2, 6]), **feeds})["tokens"].shape == (3,)
    with pytest.raises(DataError, match=r"lm.onnx: input 'prompt' has the value 7 \(first too large at position 2\), "
                                        r"but it indexes a table of 7 rows"):
        predict(str(tmp_path / "lm.onnx"), {"prompt": np.array([1, 2, 7]), **feeds})


@pytest.mark.parametrize("ids", [
    "broadcast_like(label, x)",  # a conditional generator's one label, broadcast to its count
    "transpose(label2)", "label2[:, 0:2]", "label2[:, 0]",
])
def test_index_bounds_follow_ids_through_ops_that_only_move_them(ids):
    """Ids that reach a table through an op that only moves or repeats them (a cGAN's label,
    broadcast_like(label, zeros(count)), or ids transposed or sliced) had no bound recorded: the
    export left a label beyond the table to onnxruntime's Gather ("indices element out of data
    bounds"), where predict names the input."""
    from compiler.training import check_spec, index_bounds

    name = "label" if "label," in ids else "label2"
    spec = load(TAGGER.replace("  y: {shape: [N, T], dtype: int64}\n",
                               "  y: {shape: [N, T], dtype: int64}\n  label: {shape: [], dtype: int64}\n"
                               "  label2: {shape: [N, T], dtype: int64}\n")
               .replace("  tags: argmax(logits, axis=-1)\n", f"  tags: argmax(logits, axis=-1)\n  e: embedding({ids}, hs.W)\n"))
    bounds = index_bounds(check_spec(spec, objectives=False).graph)
    assert bounds[name] == (7, "it indexes a table of {} rows")


def test_a_scalar_id_beyond_its_table_is_named_without_an_example():
    """A conditional generator's one label beyond the table was said to be 'first too large at
    example 0': a scalar input has no examples."""
    with pytest.raises(DataError) as err:
        D.check_below(np.array(12), 10, "input 'label'", "it indexes a table of 10 rows", None, "give ids below 10")
    assert str(err.value).startswith("input 'label' has the value 12, but it indexes a table of 10 rows")


@pytest.mark.parametrize("graph, bounds", [
    # lengths= of a recurrent layer ties len to the axis of x its embedding's steps come from
    ("hs: gru(embedding(x, V, E), H, lengths=len)", {"len": {"of": "x", "axis": 1, "least": 0}}),
    ("hs: bidirectional(lstm, embedding(x, V, E), H, lengths=len)", {"len": {"of": "x", "axis": 1, "least": 0}}),
    # a mask written out (here the other way round)
    ("hs: embedding(x, V, E) * unsqueeze(cast(unsqueeze(len, axes=1) > unsqueeze(positions(x, axis=1), axes=0), "
     "'float32'), axes=-1)", {"len": {"of": "x", "axis": 1, "least": 0}}),
    # read otherwise, len counts nothing the spec says: no bound
    ("hs: embedding(x, V, E) * unsqueeze(unsqueeze(cast(len, 'float32'), axes=1), axes=-1)", {}),
])
def test_length_bounds_come_from_what_the_spec_compares_lengths_with(graph, bounds):
    from compiler.training import check_spec, length_bounds

    spec = load(TAGGER.replace("  hs: gru(embedding(x, V, E), H, lengths=len)", "  " + graph)
               .replace("  mask: cast(unsqueeze(positions(x, axis=1), axes=0) < unsqueeze(len, axes=1), 'float32')\n", "")
               .replace(" * mask) / sum(mask)", ")"))
    assert length_bounds(spec, check_spec(spec, objectives=False).graph) == bounds


def test_lengths_an_attention_reads_are_at_least_1(tmp_path):
    """A source of no steps masks every position of its attention, whose softmax then weighs the
    padding alone: where an attention's mask is made from the lengths, 0 is refused too."""
    from compiler.training import check_spec, length_bounds

    spec = load(os.path.join(ROOT, "models", "reverse_attention.yaml"))
    bounds = length_bounds(spec, check_spec(spec, objectives=False).graph)
    assert bounds == {"src_len": {"of": "src", "axis": 1, "least": 1}}
    src = np.ones((3, 5), np.int64)
    with pytest.raises(DataError, match=r"d.npz: array 'src_len' holds the length 0 at example 1, but every row of "
                                        r"'src' needs at least 1 step: an attention reads the mask made from it"):
        D.check_lengths({"src": src, "src_len": np.array([5, 0, 2])}, bounds, "d.npz")
    D.check_lengths({"src": src, "src_len": np.array([5, 1, 2])}, bounds, "d.npz")


@pytest.mark.parametrize("schedule, message, hint", [
    ("train.lr_schedule={constant: {}, warmup: 50}",
     "train.lr_schedule.warmup 50 is not shorter than the run, 12 optimizer steps (3 epochs of 4): the "
     "learning rate would not reach lr before the run's last step, if at all", "e.g. warmup: 1, or train for more"),
    ("train.lr_schedule={cosine: {}, warmup: 12}", "and the cosine would never anneal it", "warmup: 1"),
    ("train.lr_schedule={cosine: {}, warmup: 11}",
     "train.lr_schedule.warmup 11 leaves the cosine one optimizer step of the run, 12 optimizer steps (3 epochs of "
     "4): that step takes lr, and the cosine never anneals it to min_lr", "warmup: 1"),
    ("train.lr_schedule={step: {every: 12}}",
     "train.lr_schedule.step.every 12 is not shorter than the run, 12 optimizer steps (3 epochs of 4): "
     "the learning rate would never decay", "decay within the run, e.g. every: 4"),
    ("train.lr_schedule={step: {every_epochs: 3}}",
     "train.lr_schedule.step.every_epochs 3 is not shorter than the run, 12 optimizer steps (3 epochs of 4): "
     "the learning rate would never decay", "decay within the run, e.g. every_epochs: 1"),
])
def test_a_schedule_the_run_ends_before_is_refused_at_it(tmp_path, schedule, message, hint):
    """warmup: 500 over a run of 12 steps never reached lr (nor annealed a cosine after it), a
    warmup of 11 left a cosine its last step at lr, and step every 12 never decayed, without a
    word: each is refused before training, located."""
    spec = load(MLP, SMALL + ["train.batch_size=400", schedule])
    with pytest.raises(SpecError) as e:
        train(spec, run_dir=str(tmp_path / "run"), epochs=3, threads=1, device="cpu")
    assert message in e.value.message and hint in e.value.hint
    number = re.findall(r"\d+", schedule)[-1]  # located at the warmup's or every's value in the override
    assert e.value.loc.col == len('overrides=["') + 1 + schedule.rindex(number)
    assert not os.path.exists(tmp_path / "run" / "checkpoint_last.npz")


def test_every_epochs_over_a_run_shorter_than_an_epoch_hints_at_every(tmp_path):
    """A run of 3 optimizer steps, an epoch being 4, with step: {every_epochs: 1} is refused (it would
    never decay); the hint said 'e.g. every_epochs: 1', the very value refused. It points at every:
    in optimizer steps, which can decay within the run."""
    spec = load(MLP, SMALL + ["train.batch_size=400", "train.lr_schedule={step: {every_epochs: 1}}"])
    with pytest.raises(SpecError) as e:
        train(spec, run_dir=str(tmp_path / "run"), epochs=3, steps=3, threads=1, device="cpu")
    assert "every_epochs 1 is not shorter than the run, 3 optimizer steps" in e.value.message
    assert "every_epochs: 1" not in e.value.hint and "every: 1" in e.value.hint


@pytest.mark.parametrize("steps, schedule, refused, hint", [
    (1, "{warmup: 5}", "warmup: 1", "a run of 1 optimizer step has no room for a warmup: leave out warmup"),
    (2, "{cosine: {}, warmup: 5}", "warmup: 1", "a run of 2 optimizer steps has no room for a warmup"),
    (2, "{cosine: {}, warmup: 1}", "warmup: 1", "has no room for a warmup"),
    (3, "{cosine: {}, warmup: 5}", None, "e.g. warmup: 1, or train for more steps"),
    (1, "{step: {every: 5}}", "every: 1", "a run of one optimizer step never decays: train for more steps"),
    (1, "{step: {every_epochs: 1}}", "every: 1", "but a run of one never decays: train for more epochs"),
])
def test_a_schedule_refused_for_a_short_run_hints_at_nothing_that_is_refused_too(tmp_path, steps, schedule,
                                                                                refused, hint):
    """--steps 1 with step: {every: 5} was told 'e.g. every: 1', with warmup: 5 'e.g. warmup: 1', and
    --steps 2 with a cosine after warmup: 5 'e.g. warmup: 1': values each refused in their turn, since
    no warmup or decay interval fits such a run. The hint says so; where one fits, it is the example."""
    spec = load(MLP, SMALL + ["train.batch_size=400", f"train.lr_schedule={schedule}"])
    with pytest.raises(SpecError) as e:
        train(spec, run_dir=str(tmp_path / "run"), epochs=3, steps=steps, threads=1, device="cpu")
    assert hint in e.value.hint, e.value.hint
    if refused:
        assert refused not in e.value.hint


def test_progress_draws_the_current_epoch_only(capsys, monkeypatch):
    """Each epoch was a task of one progress bar, and every refresh drew them all again: 500 epochs
    of one step took 104 s in a terminal against 1.5 s with -q. An ended epoch's line is printed
    once and its task dropped; every epoch's line is still there."""
    from runtime.train import _Progress

    monkeypatch.setenv("COLUMNS", "200")
    with _Progress(True, 300, 2) as progress:
        for epoch in range(300):
            progress.start_epoch(epoch, 0)
            assert len(progress.bar.tasks) <= 2
            for _ in range(2):
                progress.advance({"train_loss": 1.0}, 100.0)
            progress.end_epoch({"epoch": epoch + 1, "train_loss": 1.0 / (epoch + 1)})
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 300
    assert lines[0].startswith("epoch 1/300") and "train_loss 1.0000" in lines[0]
    assert lines[-1].startswith("epoch 300/300") and "train_loss 0.0033" in lines[-1]


def test_predict_runs_many_rows_in_batches(tmp_path, monkeypatch):
    """predict ran all its rows through the model at once: 10,000 digits through the convnet took
    350 MB, 30,000 850 MB (25 KB a row for outputs of 44 bytes). A model whose output rows each
    depend on their input row alone (the export records it) runs in batches, with the same outputs;
    one that mixes the rows (here a batch mean) runs whole."""
    import onnxruntime as ort

    import runtime.export as E

    rows_run = []
    run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run",
                        lambda self, out, feeds, *a: rows_run.append(len(next(iter(feeds.values())))) or run(self, out, feeds, *a))
    x = D.load_digits().arrays["x"][:1000]
    for outputs, batched in (({"probs": "softmax(logits)"}, True), ({"centred": "logits - mean(logits, axis=0)"}, False)):
        spec = load(MLP, overrides=SMALL + [f"outputs={json.dumps(outputs)}"])
        run_dir = str(tmp_path / f"run{batched}")
        train(spec, run_dir=run_dir, steps=2, threads=1, device="cpu", progress=False)
        model = str(tmp_path / f"m{batched}.onnx")
        export(run_dir, model)
        assert ("rows" in E.model_metadata(onnx.load(model))) == batched
        monkeypatch.setattr(E, "PREDICT_ROWS", 300)
        rows_run.clear()
        (got,) = predict(model, {"x": x}).values()
        assert rows_run == ([300, 300, 300, 100] if batched else [1000])
        monkeypatch.setattr(E, "PREDICT_ROWS", 1 << 20)
        (whole,) = predict(model, {"x": x}).values()
        np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-7)


def _column_walk_max_pool():
    """onnx's reference MaxPool walking each window as onnxruntime's CUDA kernel does:
    column by column, naming the first strict maximum in that order (unpadded 2-D windows)."""
    from onnx.reference.op_run import OpRun

    class MaxPool(OpRun):
        def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
                 storage_order=None, strides=None):
            assert not any(pads or []) and not ceil_mode and set(dilations or [1]) == {1}
            (kh, kw), (sh, sw) = kernel_shape, strides or kernel_shape
            n, c, H, W = x.shape
            ho, wo = (H - kh) // sh + 1, (W - kw) // sw + 1
            y, idx = np.empty((n, c, ho, wo), x.dtype), np.empty((n, c, ho, wo), np.int64)
            for a, b, i, j in np.ndindex(n, c, ho, wo):
                best = None
                for w in range(j * sw, j * sw + kw):
                    for h in range(i * sh, i * sh + kh):
                        if best is None or x[a, b, h, w] > x[a, b, best[0], best[1]]:
                            best = (h, w)
                h, w = best
                y[a, b, i, j] = x[a, b, h, w]
                idx[a, b, i, j] = (a * c + b) * H * W + (h * W + w if not storage_order else h + w * H)
            return y, idx

    return MaxPool


def test_max_pool_indices_name_the_first_tied_maximum_row_by_row_on_cuda_too():
    """Max pooling's gradient goes to each window's first maximum row by row (onnxruntime's CPU
    MaxPool, PyTorch). onnxruntime's CUDA MaxPool walks windows column by column: with ties (a
    ReLU's zeros) its Indices named another entry, and a device check found max_pool2d_grad 26%
    off the CPU's. CUDA sessions pool the H/W-swapped input with storage_order=1
    (runtime.session.max_pool_indices_row_major): here a reference MaxPool walking as CUDA's
    does names the CPU's entries."""
    from onnx import TensorProto as TP
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    from runtime.session import make_session, max_pool_indices_row_major

    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 3], strides=[2, 3])], "pool",
        [helper.make_tensor_value_info("x", TP.FLOAT, [2, 3, 4, 6])],
        [helper.make_tensor_value_info("y", TP.FLOAT, [2, 3, 2, 2]), helper.make_tensor_value_info("idx", TP.INT64, [2, 3, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rewritten = max_pool_indices_row_major(model)
    onnx.checker.check_model(rewritten, full_check=True)
    x = np.maximum(np.round(np.random.default_rng(0).normal(size=(2, 3, 4, 6))), 0).astype(np.float32)  # ties
    y, idx = make_session(model).run(None, {"x": x})
    cuda_like = _column_walk_max_pool()
    y_col, idx_col = ReferenceEvaluator(model, new_ops=[cuda_like]).run(None, {"x": x})
    assert (idx_col != idx).any()  # the column walk names other tied entries
    y_swapped, idx_swapped = ReferenceEvaluator(rewritten, new_ops=[cuda_like]).run(None, {"x": x})
    np.testing.assert_array_equal(y_swapped, y)
    np.testing.assert_array_equal(idx_swapped, idx)
    np.testing.assert_array_equal(y_col, y)


def test_max_pool_rewrite_for_cuda_keeps_the_convnet_step():
    """The rewritten convnet training step (its pooling's gradient reads MaxPool's indices) gives
    the same results on onnxruntime's CPU provider, bit for bit; a pool with no indices read is
    left alone, and loop bodies are rewritten too."""
    from compiler.emit import all_nodes
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.session import make_session, max_pool_indices_row_major
    from spec import load_spec

    spec = load_spec(os.path.join(ROOT, "models", "convnet.yaml"))
    cm = compile_spec(spec)
    g = cm.graphs["train"]
    batch = real_batch(spec, cm, 16, 0)
    state = cm.initial_state(0)
    feeds = {i.name: np.asarray(state[i.name] if i.name in state else {**batch, "lr": 0.01, "step": 3, "seed": 1}[i.name],
                                dtype=i.dtype) for i in g.inputs}
    rewritten = max_pool_indices_row_major(g.model)
    pools = [n for n in all_nodes(rewritten.graph) if n.op_type == "MaxPool"]
    assert pools and all(any(a.name == "storage_order" and a.i == 1 for a in n.attribute) for n in pools)
    onnx.checker.check_model(rewritten, full_check=True)
    for a, b in zip(make_session(rewritten).run(None, feeds), make_session(g.model).run(None, feeds)):
        np.testing.assert_array_equal(a, b)
    forward = cm.graphs["eval"].model  # pools with no indices: unchanged
    assert max_pool_indices_row_major(forward) is forward


def test_max_pool_rewrite_for_cuda_reaches_the_pools_in_loop_bodies():
    """test_max_pool_rewrite_for_cuda_keeps_the_convnet_step says loop bodies are rewritten too, but
    the convnet has no loop: here a Scan's step pools its slice and reads the indices, and the
    rewritten step pools the swapped input (storage_order=1) with the same values and indices
    (distinct values: which of tied maxima it names is the CUDA kernel's matter)."""
    from onnx import TensorProto as TP
    from onnx import helper

    from compiler.emit import all_nodes
    from runtime.session import make_session, max_pool_indices_row_major

    step = helper.make_graph(
        [helper.make_node("MaxPool", ["x_t"], ["y_t", "i_t"], kernel_shape=[2, 3], strides=[1, 2]),
         helper.make_node("Identity", ["s"], ["s_next"])], "step",
        [helper.make_tensor_value_info("s", TP.FLOAT, [1]), helper.make_tensor_value_info("x_t", TP.FLOAT, [1, 2, 4, 7])],
        [helper.make_tensor_value_info("s_next", TP.FLOAT, [1]), helper.make_tensor_value_info("y_t", TP.FLOAT, [1, 2, 3, 3]),
         helper.make_tensor_value_info("i_t", TP.INT64, [1, 2, 3, 3])])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Scan", ["s0", "xs"], ["s_last", "ys", "idx"], num_scan_inputs=1, body=step)], "loop",
        [helper.make_tensor_value_info("s0", TP.FLOAT, [1]), helper.make_tensor_value_info("xs", TP.FLOAT, [3, 1, 2, 4, 7])],
        [helper.make_tensor_value_info("s_last", TP.FLOAT, [1]), helper.make_tensor_value_info("ys", TP.FLOAT, [3, 1, 2, 3, 3]),
         helper.make_tensor_value_info("idx", TP.INT64, [3, 1, 2, 3, 3])]),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rewritten = max_pool_indices_row_major(model)
    onnx.checker.check_model(rewritten, full_check=True)
    pools = [n for n in all_nodes(rewritten.graph) if n.op_type == "MaxPool"]
    assert len(pools) == 1 and any(a.name == "storage_order" and a.i == 1 for a in pools[0].attribute)
    # (no ties: the CPU's row walk over the swapped input names a window's tied maxima column by column)
    xs = np.random.default_rng(0).normal(size=(3, 1, 2, 4, 7)).astype(np.float32)
    feeds = {"s0": np.zeros(1, np.float32), "xs": xs}
    for a, b in zip(make_session(rewritten).run(None, feeds), make_session(model).run(None, feeds)):
        np.testing.assert_array_equal(a, b)


def test_cuda_sessions_multiply_by_recurrent_weights_without_the_transposes():
    """compiler.rewrites.weights_first_in_loops writes a step's h @ U as (U^T @ h^T)^T for the
    CPU's MatMul; CUDA sessions get MatMul(h, U) back (runtime.session.weights_last_in_loops):
    no Transpose is left in the LSTM's steps, and the training step computes the same values."""
    from compiler.emit import all_nodes
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.session import make_session, weights_last_in_loops
    from spec import load_spec

    spec = load_spec(os.path.join(ROOT, "models", "char_lstm.yaml"), ["dims.E=8"])  # (H 256: weights first)
    cm = compile_spec(spec)
    g = cm.graphs["train"]
    steps = [a.g for n in g.model.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body"]
    assert len(steps) == 2 and all(any(n.op_type == "Transpose" for n in s.node) for s in steps)
    rewritten = weights_last_in_loops(g.model)
    onnx.checker.check_model(rewritten, full_check=True)
    steps = [a.g for n in rewritten.graph.node if n.op_type == "Scan" for a in n.attribute if a.name == "body"]
    assert not any(n.op_type == "Transpose" for s in steps for n in s.node)
    assert sum(n.op_type == "MatMul" for s in steps for n in s.node) == 2
    batch = real_batch(spec, cm, 8, 0)
    state = cm.initial_state(0)
    feeds = {i.name: np.asarray(state[i.name] if i.name in state else {**batch, "lr": 0.01, "step": 3, "seed": 1}[i.name],
                                dtype=i.dtype) for i in g.inputs}
    for a, b in zip(make_session(rewritten).run(None, feeds), make_session(g.model).run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # (float32 products in another order)
    mlp = compile_spec(load_spec(os.path.join(ROOT, "models", "mlp.yaml"))).graphs["train"].model
    assert weights_last_in_loops(mlp) is mlp  # no loops: unchanged


def _weights_first_scan(h0: str, xs: str, outputs: list[str]):
    """A Scan node whose step multiplies its state h [2, 3] by the outer wt [4, 3] weights-first."""
    from onnx import TensorProto as TP
    from onnx import helper

    body = helper.make_graph(
        [helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0]),
         helper.make_node("MatMul", ["wt", "ht"], ["m"]),
         helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0]),
         helper.make_node("Add", ["y", "x_t"], ["out_t"]),
         helper.make_node("Identity", ["h"], ["h_next"])], "step",
        [helper.make_tensor_value_info("h", TP.FLOAT, [2, 3]), helper.make_tensor_value_info("x_t", TP.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("h_next", TP.FLOAT, [2, 3]), helper.make_tensor_value_info("out_t", TP.FLOAT, [2, 4])])
    return helper.make_node("Scan", [h0, xs], outputs, num_scan_inputs=1, body=body)


def test_weights_last_transposes_a_weight_given_as_it_is_once_outside_the_loop():
    """W^T given to the model as it is (no Transpose makes it): the rewrite transposes it once,
    outside the loop, and the step multiplies by that; a loop inside a loop's step is rewritten
    too (the outer step's nodes are copied when it is rebuilt: the inner one goes first)."""
    from onnx import TensorProto as TP
    from onnx import helper

    from runtime.session import make_session, weights_last_in_loops

    graph = helper.make_graph(
        [_weights_first_scan("h0", "xs", ["h_last", "outs"])], "loop",
        [helper.make_tensor_value_info(n, TP.FLOAT, s) for n, s in (("wt", [4, 3]), ("h0", [2, 3]), ("xs", [5, 2, 4]))],
        [helper.make_tensor_value_info("h_last", TP.FLOAT, [2, 3]), helper.make_tensor_value_info("outs", TP.FLOAT, [5, 2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rewritten = weights_last_in_loops(model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [(n.op_type, list(n.input)) for n in rewritten.graph.node] == [("Transpose", ["wt"]), ("Scan", ["h0", "xs"])]
    step = rewritten.graph.node[1].attribute[0].g
    assert [(n.op_type, list(n.input)) for n in step.node][0] == ("MatMul", ["h", rewritten.graph.node[0].output[0]])
    rng = np.random.default_rng(0)
    feeds = {"wt": rng.normal(size=(4, 3)).astype(np.float32), "h0": rng.normal(size=(2, 3)).astype(np.float32),
             "xs": rng.normal(size=(5, 2, 4)).astype(np.float32)}
    for a, b in zip(make_session(rewritten).run(None, feeds), make_session(model).run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    outer_step = helper.make_graph(  # a product of its own too: the step is rebuilt
        [_weights_first_scan("g", "xs_o", ["g_last", "outs_o"]), helper.make_node("Identity", ["g_last"], ["g_next"]),
         helper.make_node("Transpose", ["g"], ["gt"], perm=[1, 0]), helper.make_node("MatMul", ["wt", "gt"], ["m2"]),
         helper.make_node("Transpose", ["m2"], ["y2"], perm=[1, 0])],
        "outer", [helper.make_tensor_value_info("g", TP.FLOAT, [2, 3]), helper.make_tensor_value_info("xs_o", TP.FLOAT, [5, 2, 4])],
        [helper.make_tensor_value_info("g_next", TP.FLOAT, [2, 3]), helper.make_tensor_value_info("outs_o", TP.FLOAT, [5, 2, 4]),
         helper.make_tensor_value_info("y2", TP.FLOAT, [2, 4])])
    nested = helper.make_model(helper.make_graph(
        [helper.make_node("Scan", ["h0", "xss"], ["h_last", "outs", "ys"], num_scan_inputs=1, body=outer_step)], "loops",
        [helper.make_tensor_value_info(n, TP.FLOAT, s) for n, s in (("wt", [4, 3]), ("h0", [2, 3]), ("xss", [3, 5, 2, 4]))],
        [helper.make_tensor_value_info("h_last", TP.FLOAT, [2, 3]), helper.make_tensor_value_info("outs", TP.FLOAT, [3, 5, 2, 4]),
         helper.make_tensor_value_info("ys", TP.FLOAT, [3, 2, 4])]),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rewritten = weights_last_in_loops(nested)
    onnx.checker.check_model(rewritten, full_check=True)
    outer = rewritten.graph.node[1].attribute[0].g
    assert [n.op_type for n in outer.node] == ["Scan", "Identity", "MatMul"]
    assert [n.op_type for n in outer.node[0].attribute[0].g.node] == ["MatMul", "Add", "Identity"]
    feeds = {"wt": feeds["wt"], "h0": feeds["h0"], "xss": rng.normal(size=(3, 5, 2, 4)).astype(np.float32)}
    for a, b in zip(make_session(rewritten).run(None, feeds), make_session(nested).run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_weights_last_reuses_a_transpose_made_after_the_loop_only_before_it():
    """A W^T whose transpose the graph makes after the loop (an output of its own): the rewritten
    step read that transpose's output, made after the Scan, and onnx's checker refused the graph
    ('Nodes in a graph must be topologically sorted'); the transpose it reuses is made before."""
    from onnx import TensorProto as TP
    from onnx import helper

    from runtime.session import make_session, weights_last_in_loops

    graph = helper.make_graph(
        [_weights_first_scan("h0", "xs", ["h_last", "outs"]), helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0])],
        "loop", [helper.make_tensor_value_info(n, TP.FLOAT, s) for n, s in (("wt", [4, 3]), ("h0", [2, 3]), ("xs", [5, 2, 4]))],
        [helper.make_tensor_value_info("h_last", TP.FLOAT, [2, 3]), helper.make_tensor_value_info("outs", TP.FLOAT, [5, 2, 4]),
         helper.make_tensor_value_info("w", TP.FLOAT, [3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    rewritten = weights_last_in_loops(model)
    onnx.checker.check_model(rewritten, full_check=True)
    assert [(n.op_type, list(n.output)) for n in rewritten.graph.node] == [("Transpose", ["w"]), ("Scan", ["h_last", "outs"])]
    assert [(n.op_type, list(n.input)) for n in rewritten.graph.node[1].attribute[0].g.node][0] == ("MatMul", ["h", "w"])
    rng = np.random.default_rng(0)
    feeds = {"wt": rng.normal(size=(4, 3)).astype(np.float32), "h0": rng.normal(size=(2, 3)).astype(np.float32),
             "xs": rng.normal(size=(5, 2, 4)).astype(np.float32)}
    for a, b in zip(make_session(rewritten).run(None, feeds), make_session(model).run(None, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


_HEADS = """flowgrad: 1
name: heads
dims: {E: 6, NH: 2, D: 3}
inputs:
  x: {shape: [N, T, E]}
params:
  s: {shape: [E], init: ones}
graph:
  q: transpose(reshape(x * s, [N, T, NH, D]), [0, 2, 1, 3])
  a: softmax(q @ transpose(q, [0, 1, 3, 2]), axis=-1) @ q
  o: reshape(transpose(a, [0, 2, 1, 3]), shape=[N, T, E])
outputs:
  out: o
loss: mean(o * o)
train:
  optimizer: {sgd: {lr: 0.01}}
"""


def test_reshape_takes_the_symbolic_dims_of_the_inputs():
    """Splitting [N, T, E] into heads, as torch's q.view(B, T, nh, d) does, could not be written:
    reshape(q, [N, T, NH, D]) was refused ("'N' is a size of input 'x', known only at run time")
    and -1 stands for one dim only, so a multi-head attention over a symbolic batch and length had
    no reshape. The target now names the inputs' symbolic dims; a target that would need two
    inferred dims at run time, or holds another size, is refused at the reshape."""
    from compiler.check import Runner
    from compiler.training import compile_spec
    from spec import spec_from_text

    cm = compile_spec(spec_from_text(_HEADS, "h.yaml"), "float64", graphs=("infer", "grads"))

    for n, t in ((3, 5), (1, 2)):
        x = np.random.default_rng(n).normal(size=(n, t, 6))
        q = x.reshape(n, t, 2, 3).transpose(0, 2, 1, 3)
        s = q @ q.transpose(0, 1, 3, 2)
        w = np.exp(s - s.max(-1, keepdims=True))
        want = ((w / w.sum(-1, keepdims=True)) @ q).transpose(0, 2, 1, 3).reshape(n, t, 6)
        np.testing.assert_allclose(Runner(cm.graphs["infer"].model)({"x": x, "s": np.ones(6)})["out"], want, rtol=1e-12)
        grads = Runner(cm.graphs["grads"].model)({"x": x, "s": np.ones(6)})
        np.testing.assert_allclose(grads["loss"], np.mean(want * want), rtol=1e-12)
    with pytest.raises(FlowgradError, match=r"h.yaml:9:31: .*cannot reshape \[N, T, 6\] \(6\*N\*T elements\) "
                                            r"to \[N, T, 4, 3\]"):
        compile_spec(spec_from_text(_HEADS.replace("NH: 2", "NH: 4"), "h.yaml"), "float64", graphs=("infer",))
    with pytest.raises(FlowgradError, match=r"h.yaml:9:31: .*with one unknown dim"):
        compile_spec(spec_from_text(_HEADS.replace("[N, T, NH, D]", "[T, N, NH, D]"), "h.yaml"), "float64",
                     graphs=("infer",))


def test_learned_positions_refuse_a_sequence_longer_than_their_table(tmp_path):
    """embedding(positions(x, axis=1), P, E), a learned position per step, indexes P rows: data of
    T > P failed inside onnxruntime's training step ('indices element out of data bounds', with a
    hint about class ids), and so did predict on the export. Both refuse it before the run, at the
    lookup; positions of x[:, 1:] (T - 1 of them) take T of P + 1."""
    (tmp_path / "p.yaml").write_text("""flowgrad: 1
name: learned_positions
dims: {P: 6, E: 3}
inputs:
  x: {shape: [N, T], dtype: int64}
graph:
  e: embedding(x, 5, E) + embedding(positions(x, axis=1), P, E)
  f: embedding(positions(x[:, 1:], axis=1), P, E)
  y: sum(e, axis=1) + sum(f)
outputs:
  out: y
loss: mean(y * y)
train:
  optimizer: {sgd: {lr: 0.01}}
  batch_size: 4
  epochs: 1
""")
    spec = load(str(tmp_path / "p.yaml"))
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match=r"data\[\"x\"\] has T = 7, but positions of T index a table of 6 rows") as e:
        train(spec, run_dir=str(tmp_path / "run"), data={"x": rng.integers(0, 5, size=(8, 7))})
    assert (e.value.loc.line, e.value.loc.col) == (7, 27) and "T of 6 or fewer" in e.value.hint  # the embedding
    train(spec, run_dir=str(tmp_path / "run"), data={"x": rng.integers(0, 5, size=(8, 6))})
    export(str(tmp_path / "run"), str(tmp_path / "p.onnx"))
    assert predict(str(tmp_path / "p.onnx"), {"x": rng.integers(0, 5, size=(2, 6))})["out"].shape == (2, 3)
    with pytest.raises(DataError, match=r"input 'x' has T = 9, but positions of T index a table of 6 rows"):
        predict(str(tmp_path / "p.onnx"), {"x": rng.integers(0, 5, size=(2, 9))})

    (tmp_path / "q.yaml").write_text((tmp_path / "p.yaml").read_text().replace(
        "e: embedding(x, 5, E) + embedding(positions(x, axis=1), P, E)", "e: embedding(x, 5, E)"))
    shifted = load(str(tmp_path / "q.yaml"))  # positions of T - 1 steps: T of 7 fits 6 rows
    train(shifted, run_dir=str(tmp_path / "run_q"), data={"x": rng.integers(0, 5, size=(8, 7))})
    # (the table has 6 rows, and T of 8 needs 7 of them: it said 'positions of T index a table of 7
    # rows', and its hint asked for a table of 8)
    with pytest.raises(DataError, match=r"has T = 8, but positions of T-1 index a table of 6 rows") as e:
        train(shifted, run_dir=str(tmp_path / "run_q2"), data={"x": rng.integers(0, 5, size=(8, 8))})
    assert e.value.hint == "give data with T of 7 or fewer, or a table of 7 rows or more"
