"""The JSON files of a run are JSON: a metric that was NaN or infinite (a 0/0 in a validation
metric, a loss that overflowed) was written into metrics.jsonl, result.json and the checkpoints'
records as the bare tokens NaN, Infinity and -Infinity, which jq, JavaScript's JSON.parse and
other strict parsers refuse. A NaN is null now and an infinity the string "Infinity" or
"-Infinity", and flowgrad's readers take them back as NaN and the infinities, as they took the
bare tokens that files of earlier versions hold (and the nulls that versions which wrote
infinities as null hold, as NaN)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from runtime import jsontext
from runtime.checkpoint import META_KEY, load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "mlp.yaml")
# digits: 1437 training examples, 23 steps an epoch of 64
SMALL = ["--set", "dims.H=8", "--threads", "1", "--device", "cpu", "--quiet"]
STOPPING = ["--set", "train.early_stopping={metric: valid_accuracy, mode: max, patience: 2}"]

runner = CliRunner()


def invoke(*args, code: int = 0):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    return result


def _refuse(constant):
    raise ValueError(f"not JSON: {constant}")


def strict(text: str):
    """`text` read as a strict parser reads it: NaN, Infinity and -Infinity refused."""
    return json.loads(text, parse_constant=_refuse)


def _meta_text(path) -> str:
    with np.load(path, allow_pickle=False) as z:
        return bytes(z[META_KEY]).decode()


@pytest.fixture
def not_finite_first(monkeypatch):
    """Validation (not checked as training's scalars are) reports a NaN accuracy and an infinite
    loss after the first epoch, a -inf accuracy after the second, then the real numbers."""
    from runtime.trainer import Trainer

    real, calls = Trainer.evaluate, []

    def evaluate(self, batches):
        metrics = real(self, batches)
        calls.append(1)
        if len(calls) == 1:
            return {**metrics, "accuracy": float("nan"), "loss": float("inf")}
        if len(calls) == 2:
            return {**metrics, "accuracy": float("-inf")}
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return calls


def test_every_file_of_a_run_with_a_metric_not_finite_is_strict_json(tmp_path, not_finite_first):
    run = tmp_path / "run"
    # 30 steps: the second epoch stops part-way, and its checkpoint keeps the best aside as partial
    out = strict(invoke("train", MLP, *SMALL, *STOPPING, "--steps", "30", "--json", "--run-dir", run).stdout)
    files = {p: p.read_text() for p in (run / "result.json", run / "run.json", run / "graphs" / "manifest.json")}
    for path, text in files.items():
        strict(text)
    records = [strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["partial"] is True
    assert records[0]["valid_accuracy"] is None and records[0]["valid_loss"] == "Infinity"
    assert records[1]["valid_accuracy"] == "-Infinity" and math.isfinite(records[1]["valid_loss"])
    result = strict(files[run / "result.json"])
    assert result == out and result["best"] == records[1]  # (any number beats a NaN best, -inf too)
    for name in ("checkpoint.npz", "best.npz"):
        meta = strict(_meta_text(run / name))
        assert meta["records"] == 2 and "history" not in meta  # (the epochs' records are metrics.jsonl's)
    assert meta["partial"]["best"]["valid_accuracy"] is None and meta["best"]["valid_accuracy"] == "-Infinity"
    # the readers: NaN where the number was NaN, the infinity where it was infinite
    _, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert math.isnan(meta["partial"]["best"]["valid_accuracy"]) and meta["best"]["valid_accuracy"] == -math.inf
    from runtime.plots import read_history

    history = read_history(str(run))
    assert math.isnan(history[0]["valid_accuracy"]) and history[0]["valid_loss"] == math.inf
    assert history[1]["valid_accuracy"] == -math.inf
    picture = tmp_path / "curves.png"
    assert invoke("plot", "curves", run, "-o", picture).stdout.strip() == str(picture) and picture.exists()


@pytest.mark.parametrize("older", [False, True], ids=["null", "bare NaN of an earlier flowgrad"])
def test_a_resume_reads_a_best_that_was_not_finite_as_nan(tmp_path, not_finite_first, older):
    """A run whose first epoch's early-stopping metric was NaN, resumed: its best record reads
    back as NaN (null did not compare with numbers), which the next epoch's number beats; its
    records stay strict JSON. A run written before, with NaN in its files, resumes as it did."""
    run = tmp_path / "run"
    invoke("train", MLP, *SMALL, *STOPPING, "--epochs", "1", "--run-dir", run)
    if older:  # the files as an earlier flowgrad wrote them: NaN and Infinity as bare tokens, and the
        # epochs' records in the checkpoint
        state, meta = load_checkpoint(str(run / "checkpoint.npz"))
        meta["history"] = [jsontext.numbers_of(json.loads(line))
                           for line in (run / "metrics.jsonl").read_text().splitlines()]
        del meta["records"]
        meta["history"][0]["valid_loss"] = meta["best"]["valid_loss"] = float("inf")  # (as it was)
        text = json.dumps(meta)
        assert "NaN" in text and "Infinity" in text
        np.savez(run / "checkpoint.npz", **{f"t:{k}": v for k, v in state.items()},
                 **{META_KEY: np.frombuffer(text.encode(), dtype=np.uint8)})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta["history"]))
        assert "NaN" in (run / "metrics.jsonl").read_text()
        from runtime.plots import read_history

        assert math.isnan(read_history(str(run))[0]["valid_accuracy"])
    out = strict(invoke("train", MLP, *SMALL, *STOPPING, "--epochs", "3", "--resume", "--json", "--run-dir", run).stdout)
    assert out["stopped"] == "finished" and out["epochs"] == 3
    assert out["best"]["epoch"] == 3 and math.isfinite(out["best"]["valid_accuracy"])  # (epoch 2's was -inf)
    records = [strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["valid_accuracy"] for r in records][:2] == [None, "-Infinity"]
    assert records[0]["valid_loss"] == "Infinity"
    strict(_meta_text(run / "checkpoint.npz"))
    _, best = load_checkpoint(str(run / "best.npz"))
    assert best["step"] == out["best"]["step"] and best["records"] == 3


def test_the_dumps_of_run_files_write_null_for_nan_and_strings_for_infinities():
    value = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5, 2], "c": (np.float32("nan"), True),
             "d": np.float64(0.25), "e": None, "f": np.float32("-inf")}
    assert strict(jsontext.dumps(value)) == {"a": None, "b": ["Infinity", "-Infinity", 1.5, 2], "c": [None, True],
                                            "d": 0.25, "e": None, "f": "-Infinity"}
    meta = jsontext.checkpoint_record(strict(jsontext.dumps(
        {"history": [{"epoch": 1, "valid_loss": float("nan")}], "best": {"valid_loss": float("inf")},
         "epoch_sums": {"loss": float("inf")}, "partial": {"best": {"valid_loss": None}, "epoch": 2}, "step": 3})))
    assert math.isnan(meta["history"][0]["valid_loss"]) and meta["history"][0]["epoch"] == 1
    assert meta["best"]["valid_loss"] == meta["epoch_sums"]["loss"] == math.inf
    assert math.isnan(meta["partial"]["best"]["valid_loss"]) and meta["partial"]["epoch"] == 2 and meta["step"] == 3


@pytest.fixture
def infinite_first(monkeypatch):
    """Validation reports an accuracy of +inf and a loss of -inf after the first epoch, then the
    real numbers."""
    from runtime.trainer import Trainer

    real, calls = Trainer.evaluate, []

    def evaluate(self, batches):
        metrics = real(self, batches)
        calls.append(1)
        return {**metrics, "accuracy": math.inf, "loss": -math.inf} if len(calls) == 1 else metrics

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return calls


def test_infinities_survive_the_run_files_and_a_resume_keeps_an_infinite_best(tmp_path, infinite_first):
    """An infinite metric was written as null and read back as NaN, as a NaN is: a resumed run's
    best of +inf accuracy became NaN, which the next epoch's number beat, so the resumed run's best
    differed from an uninterrupted run's. "Infinity" and "-Infinity" are strict JSON and read back
    as the infinities by resume, plot curves and load_checkpoint."""
    run = tmp_path / "run"
    invoke("train", MLP, *SMALL, *STOPPING, "--epochs", "1", "--run-dir", run)
    record = strict((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["valid_accuracy"] == "Infinity" and record["valid_loss"] == "-Infinity"
    _, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert meta["best"]["valid_accuracy"] == math.inf and meta["best"]["valid_loss"] == -math.inf
    out = strict(invoke("train", MLP, *SMALL, *STOPPING, "--epochs", "2", "--resume", "--json", "--run-dir", run).stdout)
    assert out["epochs"] == 2 and out["best"]["epoch"] == 1 and out["best"]["valid_accuracy"] == "Infinity"
    assert strict((run / "result.json").read_text()) == out
    _, best = load_checkpoint(str(run / "best.npz"))
    assert best["step"] == out["best"]["step"] and best["best"]["valid_accuracy"] == math.inf
    from runtime.plots import read_history

    history = read_history(str(run))
    assert history[0]["valid_accuracy"] == math.inf and history[0]["valid_loss"] == -math.inf
    assert math.isfinite(history[1]["valid_accuracy"])
    picture = tmp_path / "curves.png"
    assert invoke("plot", "curves", run, "-o", picture).stdout.strip() == str(picture) and picture.exists()


def test_nulls_of_earlier_files_still_read_as_nan():
    """A file written when infinities were null reads as it did: null as NaN."""
    assert math.isnan(jsontext.numbers_of({"valid_loss": None})["valid_loss"])
    assert jsontext.numbers_of({"epoch": 1, "valid_loss": "Infinity"}) == {"epoch": 1, "valid_loss": math.inf}
