"""The Python API (runtime.api, runtime.export) as a script author calls it: every argument's
wrong types and values end in flowgrad's own one-line errors, named as the API names them."""
from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import pytest
import yaml

from runtime.api import bench, check, compile, evaluate_run, export, gradcheck, load, predict, summary, train
from spec.errors import FLAGS, DataError, ExportArgumentError, ExportError, FlowgradError, SpecError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp.yaml")
CHAR_LSTM = os.path.join(ROOT, "models", "char_lstm.yaml")
SMALL = ["dims.H=32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch run of the small MLP and its export."""
    base = tmp_path_factory.mktemp("api")
    train(load(MLP, SMALL), run_dir=str(base / "run"), epochs=1, threads=1, device="cpu")
    export(str(base / "run"), str(base / "mlp.onnx"))
    return base


def test_load_takes_overrides_as_a_list_for_paths_text_and_dicts():
    """overrides="dims.H=128" was read one character at a time ("bad override 'd'"), a dict with
    overrides was a ValueError, a Spec's overrides were dropped without a word, and YAML text
    was taken for a path (a message of many lines, "cannot read flowgrad: 1 ...")."""
    text = open(MLP).read()
    for spec in (MLP, pathlib.Path(MLP), text, yaml.safe_load(text)):
        assert load(spec, overrides=["dims.H=7"]).dims["H"] == 7
    assert load(text).name == "mlp"
    for bad in ("dims.H=128", [3], 5):
        with pytest.raises(SpecError, match="^overrides must be a list of KEY=VALUE strings"):
            load(MLP, overrides=bad)
    with pytest.raises(SpecError, match="this one is a loaded Spec"):
        load(load(MLP), overrides=["dims.H=7"])
    for bad in (3, None, ["models/mlp.yaml"], b"models/mlp.yaml"):
        with pytest.raises(SpecError, match="^spec must be a path, YAML text, a dict or a Spec, got"):
            load(bad)


def test_compile_output_is_checked_as_compile_o_is(tmp_path, run):
    """compile(output="") wrote nothing without a word, output=3 was os.path's TypeError, an
    existing file a FileExistsError, and a run directory (or its graphs/) had its graphs
    replaced by another spec's, which its checkpoints no longer fit. A folder deeper inside a run
    (RUN/graphs/new) was written into, though README says compile -o refuses any folder inside one."""
    spec = load(MLP, ["dims.H=8"])
    (tmp_path / "file").write_text("x")
    before = (run / "run" / "graphs" / "train.onnx").read_bytes()
    for output, words in (("", "^output is an empty path"), (3, "^output must be a path, got int"),
                          (str(tmp_path / "file"), "file exists and is not a directory"),
                          (str(run / "run"), "is a run directory"),
                          (str(run / "run" / "graphs"), "is inside a run directory"),
                          (str(run / "run" / "graphs" / "new" / "deeper"), "is inside a run directory")):
        with pytest.raises(FlowgradError, match=words):
            compile(spec, output=output)
    assert before == (run / "run" / "graphs" / "train.onnx").read_bytes()
    assert not (run / "run" / "graphs" / "new").exists()
    compile(spec, output=tmp_path / "build")  # a pathlib.Path is a path
    assert (tmp_path / "build" / "manifest.json").is_file()


def test_train_refuses_unknown_options_and_values_of_the_wrong_type(tmp_path, run):
    """train(epoch=1) was TrainOptions' TypeError; run_dir=3 os.path's; freeze="W1" froze "W"
    and "1"; overwrite="no" (truthy) started the run over and lost its checkpoints."""
    spec = load(MLP, SMALL)
    with pytest.raises(FlowgradError, match="^train\\(\\) has no option 'epoch'") as e:
        train(spec, epoch=1, run_dir=str(tmp_path / "r"))
    assert "did you mean 'epochs'" in e.value.hint
    for option, words in ((dict(run_dir=3), "^run_dir must be a path, got int"),
                          (dict(data=["a.npz"]), "^data must be a path or a mapping of input name to array, got list"),
                          (dict(valid=b"v.npz"), "^valid must be a path or a mapping of input name to array, got bytes"),
                          (dict(init_from=""), "^init_from is an empty path"),
                          (dict(freeze="W1"), "^freeze must be a list of parameter names"),
                          (dict(freeze=[1]), "^freeze must be a list of parameter names"),
                          (dict(resume="no"), "^resume must be True or False, got 'no'"),
                          (dict(progress=None), "^progress must be True or False"),
                          (dict(cuda_graphs=1), "^cuda_graphs must be True or False")):
        with pytest.raises(FlowgradError, match=words):
            train(spec, **{"epochs": 1, "device": "cpu", "run_dir": str(tmp_path / "r"), **option})
        assert not (tmp_path / "r").exists()
    ckpt = (run / "run" / "checkpoint.npz").read_bytes()
    with pytest.raises(FlowgradError, match="^overwrite must be True or False, got 'no'"):
        train(spec, epochs=1, device="cpu", run_dir=str(run / "run"), overwrite="no")
    assert (run / "run" / "checkpoint.npz").read_bytes() == ckpt
    # a pathlib.Path is a path
    result = train(spec, epochs=1, device="cpu", threads=1, run_dir=tmp_path / "p")
    assert result.run_dir == str(tmp_path / "p") and (tmp_path / "p" / "checkpoint.npz").is_file()


def test_evaluate_run_checks_its_arguments_before_it_compiles(tmp_path, run):
    """evaluate_run(batch_size=None) was a TypeError in the batching, data=3 was taken for
    file descriptor 3 ("data file 3 does not exist", or a file that happened to be open), data=""
    was "data file '' does not exist", a bad device was found only after the spec was compiled
    and the data read, and a missing file's hint spoke of the CLI's --data."""
    x = np.random.default_rng(0).random((8, 64), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8) % 10)
    good = dict(run_dir=str(run / "run"), data=str(tmp_path / "d.npz"), device="cpu")
    for option, words in ((dict(batch_size=None), "^batch_size must be an integer of at least 1, got None"),
                          (dict(data=3), "^data must be a path or a mapping of input name to array, got int"),
                          (dict(data=""), "^data is an empty path"),
                          (dict(run_dir=None), "^run_dir must be a path, got NoneType"),
                          (dict(device="gpu", run_dir=str(tmp_path)), "^unknown device 'gpu'")):
        with pytest.raises(FlowgradError, match=words):
            evaluate_run(**{**good, **option})
    with pytest.raises(DataError, match="^data file '.*nope.npz' does not exist") as e:
        evaluate_run(**{**good, "data": str(tmp_path / "nope.npz")})
    assert "--data" not in e.value.hint
    metrics = evaluate_run(run / "run", tmp_path / "d.npz", device="cpu")  # pathlib.Paths are paths
    assert metrics == evaluate_run(**good) and set(metrics) == {"loss", "accuracy"}


def test_export_and_predict_take_paths_and_refuse_other_arguments(tmp_path, run):
    """export(run_dir=3) or output=3 ended in os.path's TypeError, a pathlib.Path output in an
    AttributeError (str.endswith); predict(3, ...) read file descriptor 3 as a model; feeds as a
    list, None or a dict with an int key were a ValueError or TypeError from inside predict."""
    for kwargs, words in ((dict(run_dir=3), "^run_dir must be a path, got int"),
                          (dict(output=3), "^output must be a path, got int"),
                          (dict(output=None), "^output must be a path, got NoneType"),
                          (dict(output=""), "^output is an empty path")):
        with pytest.raises(ExportArgumentError, match=words):
            export(**{"run_dir": str(run / "run"), "output": str(tmp_path / "m.onnx"), **kwargs})
    info = export(run / "run", tmp_path / "m.onnx")
    assert info["path"] == str(tmp_path / "m.onnx") and (tmp_path / "m.onnx").is_file()
    x = np.random.default_rng(0).random((2, 64), dtype=np.float32)
    assert predict(tmp_path / "m.onnx", {"x": x})["probs"].shape == (2, 10)
    with pytest.raises(ExportArgumentError, match="^model_path must be a path, got int"):
        predict(3, {"x": x})
    for feeds, words in (([x], "got list"), (None, "got NoneType"), (x, "got ndarray"),
                         ({0: x}, "got a dict with the key 0")):
        with pytest.raises(ExportArgumentError, match="^feeds must be a dict of input name to array, " + words):
            predict(str(tmp_path / "m.onnx"), feeds)


def test_train_names_a_missing_data_or_valid_file_by_its_keyword(tmp_path):
    """train(valid="nope.npz") said "data file ... does not exist", with a hint about the CLI's
    --data; data= and valid= are named as given, before any run file is written."""
    spec = load(MLP, SMALL)
    (tmp_path / "folder").mkdir()
    for name in ("data", "valid"):
        with pytest.raises(DataError, match=f"^{name} file 'nope.npz' does not exist") as e:
            train(spec, **{name: "nope.npz", "run_dir": str(tmp_path / "r"), "device": "cpu"})
        assert "--" not in e.value.hint and f"given with {name} starts" in e.value.hint
        with pytest.raises(DataError, match=f"^{name} file '.*folder' is a directory"):
            train(spec, **{name: str(tmp_path / "folder"), "run_dir": str(tmp_path / "r"), "device": "cpu"})
    assert not (tmp_path / "r").exists()


def test_train_reads_data_as_a_path_even_where_it_looks_like_a_number(tmp_path):
    """Only valid= may be a fraction: train(data="1.5") said "data 1.5 is not a fraction in [0, 1)",
    and data="0.5" skipped the check of its file, found missing only after the spec compiled."""
    spec = load(MLP, SMALL)
    for number in ("1.5", "0.5"):
        with pytest.raises(DataError, match=f"^data file '{number}' does not exist") as e:
            train(spec, data=number, run_dir=str(tmp_path / "r"), device="cpu")
        assert "given with data starts" in e.value.hint
    assert not (tmp_path / "r").exists()


def test_predicts_hints_name_the_apis_arguments(tmp_path, run):
    """predict() missing an input said "the data file has: y" to a caller who gave a dict; the
    generators' refusals told an API caller only of the CLI's --data, --text and --beam-width."""
    from runtime.export import generate_text, generator_feeds

    with pytest.raises(DataError, match="^the model needs input\\(s\\) x") as e:
        predict(str(run / "mlp.onnx"), {"y": np.zeros(2, np.int64)})
    assert e.value.hint == "the inputs given: y"
    with pytest.raises(ExportArgumentError, match="is not a text generator") as e:
        generate_text(str(run / "mlp.onnx"), "a")
    assert "predict()" in e.value.hint
    with pytest.raises(ExportArgumentError, match="is not a generator") as e:
        generator_feeds(str(run / "mlp.onnx"), 2)
    assert "predict()" in e.value.hint and "generate_text()" in e.value.hint


def _refused(words, **options):
    """train()'s refusal, whose message and hint name the API's keywords, never a CLI flag."""
    with pytest.raises(FlowgradError) as e:
        train(options.pop("spec", None) or load(MLP, SMALL), threads=1, device="cpu", **options)
    text = str(e.value)
    for w in words:
        assert w in text, (w, text)
    assert "--" not in text and "\n" not in e.value.message, text
    return e.value


def test_trains_refusals_name_the_apis_keywords(tmp_path, run):
    """train(run_dir=r, seed=3, resume=True) said "--seed 3 differs ...": a script author
    typed keywords, not the CLI's flags. Each refusal of the run directory, of options that do
    not combine, of a resume that would continue another run, and of a warm start names the
    keyword as it was typed (seed=3, resume=True, run_dir); flowgrad train keeps its flags."""
    import shutil

    r = str(tmp_path / "run")
    shutil.copytree(run / "run", r)
    # the run directory
    _refused(["already holds a run", "continue it with resume=True, start over with overwrite=True, or pick run_dir"],
             run_dir=r)
    _refused(["nothing to resume", "train without resume=True first"], run_dir=str(tmp_path / "new"), resume=True)
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "spec.yaml").write_text("mine")
    _refused(["not a run directory", "pick a new or empty directory with run_dir"], run_dir=str(tmp_path / "project"))
    # options that do not combine
    _refused(["resume=True continues the run; it does not combine with overwrite=True",
              "overwrite=True or init_from start a new run: leave out resume=True"], run_dir=r, resume=True,
             overwrite=True)
    _refused(["it does not combine with init_from"], run_dir=r, resume=True, init_from=r)
    _refused(["steps_per_call does not work with accumulate"], run_dir=r, steps_per_call=2, accumulate=2)
    _refused(["accumulate does not work with train.mixed_precision"], run_dir=str(tmp_path / "mixed"), accumulate=2,
             spec=load(MLP, SMALL + ["train.mixed_precision=float16"]))
    # a resume that would continue another run
    _refused(["seed=3 differs from the seed 0", "leave out seed, or start over with overwrite=True"], run_dir=r,
             resume=True, seed=3)
    _refused(['dtype="float64" differs from the float type float32', "leave out dtype",
              f'init_from="{r}", dtype="float64", run_dir="NEW_DIR"'], run_dir=r, resume=True, dtype="float64")
    _refused(["another accumulate (1, now 2)", f'init_from="{r}", run_dir="NEW_DIR"'], run_dir=r, resume=True,
             accumulate=2)
    _refused(["training other parameters", "resume with the run's own freeze (and spec), or start over with "
              "overwrite=True or init_from"], run_dir=r, resume=True, freeze=["W1"])
    _refused([f"resume=True {r}: the training examples differ", f'start a new run from its weights with init_from="{r}", run_dir="NEW_DIR"'],
             run_dir=r, resume=True, valid="0.3")
    _refused(["dim H is now 16", f'init_from="{r}", run_dir="NEW_DIR"'], run_dir=r, resume=True,
             spec=load(MLP, ["dims.H=16"]))
    bare = str(tmp_path / "bare")  # a run without its spec.yaml: the checkpoint's shapes tell
    shutil.copytree(r, bare)
    os.remove(os.path.join(bare, "spec.yaml"))
    _refused(["has shape", "train anew with overwrite=True"], run_dir=bare, resume=True, spec=load(MLP, ["dims.H=16"]))
    # a warm start, frozen parameters, the data
    from runtime.checkpoint import checkpoint_bytes

    (tmp_path / "other.npz").write_bytes(checkpoint_bytes({"V": np.zeros(3, np.float32)}, {}))
    other = str(tmp_path / "other.npz")
    _refused([f'init_from="{other}": no parameter matches', "give init_from a run"], run_dir=str(tmp_path / "warm"),
             init_from=other)
    _refused(["freeze fewer parameters (freeze)"], run_dir=str(tmp_path / "frozen"), freeze=["*"])
    no_data = yaml.safe_load(open(MLP))
    del no_data["train"]["data"]
    _refused(["no data was given", 'pass data="train.npz"'], run_dir=str(tmp_path / "nodata"), spec=load(no_data))
    # a damaged checkpoint, and a run another process trains in
    damaged = str(tmp_path / "damaged")
    shutil.copytree(r, damaged)
    open(os.path.join(damaged, "checkpoint.npz"), "wb").close()
    os.remove(os.path.join(damaged, "best.npz"))  # (with it, the hint points at it: see below)
    _refused(["is empty", "the file is truncated or corrupted: train anew with overwrite=True"],
             run_dir=damaged, resume=True)
    import fcntl

    with open(os.path.join(r, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _refused(["another flowgrad run is training", "or use run_dir for a separate run"], run_dir=r,
                 resume=True)


def test_a_runs_failure_mid_training_names_resuming_as_the_api_does(tmp_path, monkeypatch):
    """A loss that became inf said "then --resume or --overwrite" to a caller of train(), and a
    full disk "free some space and --resume"."""
    import errno

    import runtime.checkpoint as C

    _refused(["became", "then resume=True or overwrite=True"], run_dir=str(tmp_path / "run"), epochs=1,
             checkpoint_every=1, spec=load(MLP, SMALL + ["train.optimizer={sgd: {lr: 1e30}}"]))

    def full(f, data, path):
        if path.endswith("best.npz"):
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    monkeypatch.setattr(C, "_write", full)
    # (the first epoch's checkpoint.npz is written, its best.npz not: the checkpoint resumes)
    _refused(["No space left on device", "the previous checkpoint is intact; free some space and resume=True"],
             run_dir=str(tmp_path / "full"), epochs=1)
    # (and before the first checkpoint there is nothing to resume)
    monkeypatch.setattr(C, "_write", lambda f, data, path: full(f, data, path.replace("checkpoint.npz", "best.npz")))
    _refused(["No space left on device", "no checkpoint was written yet (resume=True would find none)"],
             run_dir=str(tmp_path / "empty"), epochs=1)


def test_a_run_that_fails_before_its_first_checkpoint_does_not_offer_one(tmp_path):
    """A loss that became nan at step 1, before any checkpoint, was told 'the last good checkpoint
    is in RUN', then to resume, which found nothing to resume; training again needs no overwrite."""
    e = _refused(["loss became nan at step 1", "no checkpoint was written before it"], run_dir=str(tmp_path / "run"),
                 epochs=1, spec=load(MLP, SMALL + ["train.optimizer={sgd: {lr: 1e30}}"]))
    assert "resume" not in e.hint and "last good checkpoint" not in e.hint
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_loads_override_errors_name_the_override_as_given():
    """load(path, overrides=["dims.H"]) was located at "--set dims.H:1:1" and hinted "e.g. --set
    dims.H=32": the caller gave a list, not a flag. The location names the override as given in
    overrides=, its columns count within it, and the hints show overrides=[...]."""
    for overrides, where, hint in (
            (["dims.H"], 'overrides=["dims.H"]:1:1', 'e.g. overrides=["dims.H=32"]'),
            (["dims.H=8", "dims.X.y=3"], 'overrides=["dims.X.y=3"]:1:18', "expected one of"),
            (["train.data.valid.x=1"], 'overrides=["train.data.valid.x=1"]:1:30',
             'overrides can only set keys inside a mapping; set train.data.valid itself, '
             'e.g. overrides=["train.data.valid=VALUE"]'),
            (["inputs.x.shape.5=1"], 'overrides=["inputs.x.shape.5=1"]:1:28', 'e.g. overrides=["inputs.x.shape=[...]"]'),
            (["dims.H=[1"], 'overrides=["dims.H=[1"]:1:22', "")):
        for spec in (MLP, open(MLP).read(), yaml.safe_load(open(MLP))):
            with pytest.raises(SpecError) as e:
                load(spec, overrides=overrides)
            assert str(e.value).startswith(where + ": ") and hint in str(e.value) and "--" not in str(e.value), \
                str(e.value)


def test_evaluate_runs_and_exports_hints_name_their_keywords(tmp_path, run):
    """evaluate_run(run_dir) on a run without held-out test data hinted "pass the test examples
    with --data FILE.npz", and export()'s refusals of an output said "pick another path with
    -o": the keywords are data= and output. flowgrad eval and export keep their flags."""
    import shutil
    import subprocess
    import sys

    with pytest.raises(DataError, match="holds out no test data") as e:
        evaluate_run(str(run / "run"), device="cpu")
    assert 'pass the test examples with data="FILE.npz"' in e.value.hint and "--" not in e.value.hint
    damaged = str(tmp_path / "damaged")
    shutil.copytree(run / "run", damaged)
    for name in ("best.npz", "checkpoint.npz"):
        open(os.path.join(damaged, name), "wb").close()
    with pytest.raises(DataError, match="is empty") as e:
        evaluate_run(damaged, device="cpu")
    assert "(export and eval: checkpoint best or last), or train anew with overwrite=True" in e.value.hint
    with pytest.raises(DataError, match="is empty") as e:
        export(damaged, str(tmp_path / "m.onnx"))
    assert "checkpoint best or last" in e.value.hint and "--" not in e.value.hint
    (tmp_path / "file").write_text("x")
    for output, words in ((str(run / "run" / "metrics.jsonl"), "is one of the run's own files"),
                          (str(tmp_path / "file" / "m.onnx"), "a file is in the way")):
        with pytest.raises(ExportArgumentError, match=words) as e:
            export(str(run / "run"), output)
        assert e.value.hint == "pick another path with output", e.value.hint
    with pytest.raises(ExportError, match="no ONNX file at") as e:
        predict(str(tmp_path / "none.onnx"), {})
    assert "export(run_dir, output)" in e.value.hint
    # the CLI's words
    res = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "eval", str(run / "run"), "--device", "cpu"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "pass the test examples with --data FILE.npz" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "export", str(run / "run"), "-o",
                          str(tmp_path / "file" / "m.onnx")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "pick another path with -o" in res.stderr, res.stderr


def test_export_and_compile_replace_only_files_of_their_own_kind(tmp_path, run):
    """export(run, "models/mlp.yaml") replaced the spec with an ONNX model without a word, and
    compile(output=DIR) another program's manifest.json. A file not of the kind written is
    refused, named, with a hint naming output; a previous export is written over as before."""
    import shutil

    spec = tmp_path / "mlp.yaml"
    shutil.copy(MLP, spec)
    with pytest.raises(ExportArgumentError, match=f"^{spec} exists and is not an ONNX model") as e:
        export(str(run / "run"), spec)
    assert e.value.hint == "pick another output path with output"
    assert spec.read_text() == open(MLP).read()
    for _ in range(2):
        assert export(str(run / "run"), tmp_path / "m.onnx")["path"] == str(tmp_path / "m.onnx")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "manifest.json").write_text('{"name": "my web app"}')
    with pytest.raises(FlowgradError, match="manifest.json exists and is not") as e:
        compile(MLP, output=tmp_path / "build")
    assert e.value.hint == "pick another output path with output"
    assert (tmp_path / "build" / "manifest.json").read_text() == '{"name": "my web app"}'
    assert not (tmp_path / "build" / "train.onnx").exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("notes")
    with pytest.raises(FlowgradError, match=f"^{notes} exists and is not a directory") as e:
        compile(MLP, output=notes)
    assert e.value.hint == "pick another output path with output"
    assert notes.read_text() == "notes"


def _refused_as_flowgrad_train(words, **options):
    """The same refusal through the options flowgrad train builds (names=FLAGS): its words are
    the CLI's flags, as they were."""
    from runtime.train import TrainOptions
    from runtime.train import train as run_training
    from spec.errors import FLAGS

    spec = options.pop("spec", None) or load(MLP, SMALL)
    with pytest.raises(FlowgradError) as e:
        run_training(spec, TrainOptions(threads=1, device="cpu", progress=False, names=FLAGS, **options))
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    return e.value


def _copy_of_run(run, tmp_path, name="r") -> str:
    import shutil

    r = str(tmp_path / name)
    shutil.copytree(run / "run", r)
    return r


def test_a_resume_with_another_optimizer_names_init_from_as_a_keyword(tmp_path, run):
    """train(spec with sgd, resume=True) of a run trained with adam was told to start a new run
    "--init-from RUN --run-dir NEW_DIR"."""
    r = _copy_of_run(run, tmp_path)
    sgd = load(MLP, SMALL + ["train.optimizer={sgd: {lr: 0.01}}"])
    _refused(["was trained with the adam optimizer, and the spec now asks for sgd",
              f'start a new run from its weights: init_from="{r}", run_dir="NEW_DIR"'],
             spec=sgd, run_dir=r, resume=True, epochs=2)
    _refused_as_flowgrad_train([f"start a new run from its weights: --init-from {r} --run-dir NEW_DIR"],
                               spec=load(MLP, SMALL + ["train.optimizer={sgd: {lr: 0.01}}"]), run_dir=r,
                               resume=True, epochs=2)


def test_a_damaged_checkpoint_and_a_lone_best_npz_are_answered_with_keywords(tmp_path, run):
    """A resume from a damaged checkpoint.npz hinted "copy it over ... and --resume", "--init-from
    BEST --run-dir NEW_DIR" and "(--overwrite would remove it)", and a run holding best.npz alone
    "copy it to ... and --resume", to a caller of train()."""
    r = _copy_of_run(run, tmp_path)
    ckpt, best = os.path.join(r, "checkpoint.npz"), os.path.join(r, "best.npz")
    data = open(ckpt, "rb").read()
    with open(ckpt, "wb") as f:
        f.write(data[:len(data) // 2])
    _refused([f"checkpoint {ckpt} is unreadable", f"{best} is a checkpoint too: copy it over {ckpt} and resume=True "
              f'to go on from its epoch, or start a new run from it with init_from="{best}", run_dir="NEW_DIR" '
              "(overwrite=True would remove it)"], run_dir=r, resume=True, epochs=2)
    _refused_as_flowgrad_train([f"copy it over {ckpt} and --resume to go on from its epoch, or start a new run from "
                                f"it with --init-from {best} --run-dir NEW_DIR (--overwrite would remove it)"],
                               run_dir=r, resume=True, epochs=2)
    os.remove(ckpt)
    _refused([f"nothing to resume: no checkpoint in {r}",
              f"{best} is a whole checkpoint of its epoch: copy it to {ckpt} and resume=True to go on from there"],
             run_dir=r, resume=True, epochs=2)
    _refused(["already holds a run", "continue it with resume=True"], run_dir=r, epochs=2)
    _refused_as_flowgrad_train([f"copy it to {ckpt} and --resume to go on from there"], run_dir=r, resume=True,
                               epochs=2)


def test_a_freeze_glob_that_matches_no_parameter_is_named_as_the_keyword(tmp_path):
    """train(freeze=["W1", "zz*"]) said "--freeze 'zz*' matches no parameter"."""
    _refused(["freeze 'zz*' matches no parameter", "parameters: W1, b1"], run_dir=str(tmp_path / "run"),
             freeze=["W1", "zz*"], epochs=1)
    assert not (tmp_path / "run").exists()
    _refused_as_flowgrad_train(["--freeze 'zz*' matches no parameter"], run_dir=str(tmp_path / "run"),
                               freeze=["W1", "zz*"], epochs=1)


def test_init_from_errors_name_the_keyword_as_given(tmp_path, run):
    """train(init_from=PATH) of no checkpoint, of a file that is not one, or of a damaged one said
    "--init-from PATH: ...", and the damaged one's hint spoke of --checkpoint and --overwrite."""
    none, text, empty = str(tmp_path / "none"), tmp_path / "notes.npz", tmp_path / "empty.npz"
    text.write_text("notes")
    empty.write_bytes(b"")
    _refused([f'init_from="{none}": no checkpoint at {none}'], run_dir=str(tmp_path / "a"), init_from=none, epochs=1)
    _refused([f'init_from="{text}": {text} is not a checkpoint'], run_dir=str(tmp_path / "a"), init_from=str(text),
             epochs=1)
    _refused([f'init_from="{empty}": checkpoint {empty} is empty',
              "the file is truncated or corrupted: give init_from another run or checkpoint"],
             run_dir=str(tmp_path / "a"), init_from=str(empty), epochs=1)
    assert not (tmp_path / "a").exists()
    _refused_as_flowgrad_train([f"--init-from {none}: no checkpoint at {none}"], run_dir=str(tmp_path / "a"),
                               init_from=none, epochs=1)
    _refused_as_flowgrad_train(["the file is truncated or corrupted: give --init-from another run or checkpoint"],
                               run_dir=str(tmp_path / "a"), init_from=str(empty), epochs=1)
    # a run whose checkpoint.npz is damaged and whose best.npz is whole: the hint (which said to take "the run's
    # other checkpoint" with export's and eval's checkpoint, or to train anew with overwrite) names best.npz
    r = _copy_of_run(run, tmp_path)
    ckpt, best = os.path.join(r, "checkpoint.npz"), os.path.join(r, "best.npz")
    open(ckpt, "wb").close()
    for given in (r, ckpt):
        _refused([f'init_from="{given}": checkpoint {ckpt} is empty',
                  f'the file is truncated or corrupted; {best} is whole: start from it with init_from="{best}"'],
                 run_dir=str(tmp_path / "a"), init_from=given, epochs=1)
        _refused_as_flowgrad_train([f"start from it with --init-from {best}"], run_dir=str(tmp_path / "a"),
                                   init_from=given, epochs=1)
    open(best, "wb").close()  # (both damaged: neither is offered)
    _refused(["give init_from another run or checkpoint"], run_dir=str(tmp_path / "a"), init_from=r, epochs=1)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("content", [None, '{"seed": 0, "dtype": "flo', "[]"])
def test_a_resume_of_a_run_whose_run_json_is_damaged_names_init_from_as_a_keyword(tmp_path, run, content):
    """train(resume=True) of a run whose run.json was missing or malformed hinted "restore it, or
    start a new run from its weights with --init-from RUN --run-dir NEW_DIR"."""
    r = _copy_of_run(run, tmp_path)
    info = os.path.join(r, "run.json")
    if content is None:
        os.remove(info)
    else:
        with open(info, "w") as f:
            f.write(content)
    e = _refused(["run.json", f'restore it, or start a new run from its weights with init_from="{r}", '
                  'run_dir="NEW_DIR"'], run_dir=r, resume=True, epochs=2)
    assert e.message.startswith(f"{r} has no run.json" if content is None else f"{info} is")
    _refused_as_flowgrad_train([f"restore it, or start a new run from its weights with --init-from {r} "
                                "--run-dir NEW_DIR"], run_dir=r, resume=True, epochs=2)


def test_an_override_of_a_key_the_spec_leaves_out_is_shown_as_overrides():
    """load(path, overrides=["train.data.options.labelled=40"]) hinted "set it whole: --set
    'train.data.options={labelled: 40}'", quoted for a shell the caller never used."""
    with pytest.raises(SpecError) as e:
        load(MLP, overrides=["train.data.options.labelled=40"])
    assert e.value.hint == ('expected one of: dataset, valid; or, to add options, set it whole: '
                            'overrides=["train.data.options={labelled: 40}"]'), e.value.hint
    assert load(MLP, overrides=["train.data.options={labelled: 40}"]).train["data"]["options"] == {"labelled": 40}


def test_argument_names_have_no_default_where_a_caller_could_forget_them():
    """TrainOptions named options as keywords by default and the output helpers as flags, so
    flowgrad bench's TrainOptions() would have spoken of data= to a CLI user, and a new API
    caller of refuse_replacing of -o: without a default, a forgotten one fails at once."""
    from compiler.training import compile_spec
    from runtime.checkpoint import make_parent_dir, refuse_replacing, refuse_run_file
    from runtime.train import TrainOptions

    for call in (TrainOptions, lambda: refuse_run_file("x.onnx"), lambda: refuse_replacing("x.onnx", "onnx"),
                 lambda: make_parent_dir("x.onnx"), lambda: compile_spec(load(MLP), frozen=["W1"])):
        with pytest.raises(TypeError):
            call()
    assert TrainOptions(names=FLAGS).names is FLAGS


# ---------------------------------------------------------------- arrays given in memory
def _digits(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples start:stop of the digits, read-only: an array flowgrad wrote into would fail."""
    from runtime.data import load_digits

    ds = load_digits()
    x, y = ds.arrays["x"][start:stop].copy(), ds.arrays["y"][start:stop].copy()
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _final(result) -> dict:
    return {k: v for k, v in result.final.items() if k != "seconds"}


def test_training_on_arrays_is_training_on_the_same_arrays_saved_to_an_npz(tmp_path):
    """train(spec, data={"x": x, "y": y}) trains exactly as on those arrays saved with numpy.savez
    (a list too, as np.asarray reads it; np.load's NpzFile is a mapping), never writing into the
    caller's arrays; run.json records that they were given in memory, with the same hash."""
    import json

    spec, x, y = load(MLP, SMALL), *_digits(0, 200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    opts = dict(epochs=2, threads=1, device="cpu")
    from_file = train(spec, data=str(tmp_path / "d.npz"), run_dir=str(tmp_path / "file"), **opts)
    with np.load(tmp_path / "d.npz") as z:
        for data, name in (({"x": x, "y": y.tolist()}, "arrays"), (z, "npzfile")):
            result = train(spec, data=data, run_dir=str(tmp_path / name), **opts)
            assert _final(result) == _final(from_file)
            info = json.loads((tmp_path / name / "run.json").read_text())
            assert info["data_source"] == {"arrays": "given in memory", "valid": 0.2}
            assert info["data_hash"] == json.loads((tmp_path / "file" / "run.json").read_text())["data_hash"]
    with np.load(tmp_path / "file" / "checkpoint.npz") as a, np.load(tmp_path / "arrays" / "checkpoint.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k.startswith("W"))


def test_a_resume_from_arrays_is_given_the_same_arrays_again(tmp_path):
    """A run trained on arrays given in memory resumes on the same arrays, exactly as if it had
    not stopped; a resume without them (the spec's digits would be other examples) or with other
    arrays is refused in one line naming the keyword, and the run is left as it was."""
    spec, (x, y), (vx, vy) = load(MLP, SMALL), _digits(0, 150), _digits(150, 200)
    data, valid = {"x": x, "y": y}, {"x": vx, "y": vy}
    opts = dict(threads=1, device="cpu")
    whole = train(spec, data=data, valid=valid, run_dir=str(tmp_path / "whole"), epochs=2, **opts)
    r = str(tmp_path / "r")
    train(spec, data=data, valid=valid, run_dir=r, epochs=1, **opts)
    ckpt = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    resume = dict(run_dir=r, resume=True, epochs=2)
    for given, words in (
            (dict(valid=valid), [f"resume=True {r}: the run was trained on arrays given in memory (the API's data=), "
                                 "and this resume gives none", "pass the same arrays again (resume=True, data={...})"]),
            (dict(data=data), ["the run was validated on arrays given in memory (the API's valid=)"]),
            (dict(data={"x": x[:-1], "y": y[:-1]}, valid=valid),
             ["the training examples differ", "(other arrays given as data=, or another validation or test split)",
              "resume with the arrays the run was trained on"]),
            (dict(data=data, valid={"x": vx, "y": vy[::-1]}),
             ["the validation examples differ", "(other arrays given as valid= than those it validated on)"]),
            (dict(data=data, valid=0.2), ["valid=0.2, where the run had arrays given in memory"])):
        e = _refused(words, spec=spec, **resume, **given)
        assert isinstance(e, DataError)
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == ckpt
    assert _final(train(spec, data=data, valid=valid, **resume, **opts)) == _final(whole)


@pytest.mark.parametrize("data, words", [
    ({}, "^data= holds no arrays"),
    ({1: [0.5]}, "^data= has the key 1 \\(int\\): arrays are named by the spec's input names"),
    ({"x": [[0.5] * 64, [0.5] * 3], "y": [1, 2]}, 'data\\["x"\\] is ragged: its rows are not all of one shape'),
    ({"x": np.array([None, None]), "y": [1, 2]}, 'data\\["x"\\] is an object array'),
    ({"x": np.full((2, 64), "a"), "y": [1, 2]}, 'data\\["x"\\] has dtype <U1, the spec declares float32'),
    ({"x": np.zeros((3, 64)), "y": [1, 2]}, 'data\\["y"\\] has 2 examples, but data\\["x"\\] has 3'),
    ({"x": np.zeros((2, 63)), "y": [1, 2]}, 'data\\["x"\\] has size 63 in dim 1, the spec declares 64'),
    ({"x": np.zeros((2, 64)), "y": [1, 12]}, 'data\\["y"\\] has the value 12'),
    ({"x": np.zeros((2, 64))}, "data= has no array named 'y'"),
    ({"x": np.zeros((0, 64)), "y": np.zeros(0, np.int64)}, 'data\\["x"\\] is empty'),
])
def test_a_bad_mapping_of_arrays_is_refused_in_one_line_naming_the_array(tmp_path, data, words):
    """Arrays given in memory pass the checks of an .npz's (names, shapes, dtypes, lengths, index
    bounds), and what no .npz holds (a key that is not a name, ragged or object arrays) is refused
    too: a one-line DataError naming data= or data["x"], never a traceback or a file."""
    with pytest.raises(DataError, match=words) as e:
        train(load(MLP, SMALL), data=data, run_dir=str(tmp_path / "r"), device="cpu")
    assert "\n" not in e.value.message and ".npz" not in str(e.value)
    assert not (tmp_path / "r").exists()


def test_evaluate_run_takes_arrays_and_says_what_a_run_on_arrays_cannot_rebuild(tmp_path, run):
    """evaluate_run(run, data={...}) is evaluate_run on the same arrays saved to an .npz; a run
    trained on arrays given in memory, whose run.json holds no copy of them, is told to pass its
    held-out test examples (evaluate_run without data) and has none for plot samples to
    reconstruct, where these read the spec's data (other examples) or said nothing useful."""
    from runtime.samples import samples_of

    x, y = _digits(0, 40)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    metrics = evaluate_run(run / "run", data=str(tmp_path / "d.npz"), device="cpu")
    assert evaluate_run(run / "run", data={"x": x, "y": y}, device="cpu") == metrics
    with np.load(tmp_path / "d.npz") as z:
        assert evaluate_run(run / "run", data=z, device="cpu") == metrics
    with pytest.raises(DataError, match='data\\["y"\\] has 1 examples, but data\\["x"\\] has 40'):
        evaluate_run(run / "run", data={"x": x, "y": y[:1]}, device="cpu")
    spec = load(MLP, SMALL + ["train.data.test=0.2"])
    train(spec, data={"x": x, "y": y}, run_dir=str(tmp_path / "t"), epochs=1, threads=1, device="cpu")
    with pytest.raises(DataError, match="was trained on arrays given in memory, which its run.json does not hold: "
                                        "the test examples it held out") as e:
        evaluate_run(tmp_path / "t", device="cpu")
    assert "data={...}" in e.value.hint
    dae = load(os.path.join(ROOT, "models", "dae.yaml"), ["dims.H=8"])
    train(dae, data={"x": x}, run_dir=str(tmp_path / "dae"), epochs=1, threads=1, device="cpu")
    with pytest.raises(DataError, match="no examples of its data to reconstruct"):
        samples_of(str(tmp_path / "dae"), 4)


def test_evaluating_a_run_on_data_of_another_fixed_size_asks_for_the_trained_size(tmp_path, run):
    """A trained run's fixed sizes are the data's to take: evaluating the MLP (x [N, 64]) on
    arrays of 63 features was told to 'declare that dim as 63 (or as a symbolic dim such as N)',
    a spec its weights were trained for; training is still told it may declare the size."""
    x, y = _digits(0, 40)
    with pytest.raises(DataError, match="has size 63 in dim 1, the spec declares 64") as e:
        evaluate_run(run / "run", data={"x": x[:, :63], "y": y}, device="cpu")
    assert e.value.hint == "give the array with 64 in dim 1, the size the model was trained with"
    with pytest.raises(DataError, match="has size 63 in dim 1, the spec declares 64") as e:
        train(load(MLP, SMALL), data={"x": x[:, :63], "y": y}, run_dir=str(tmp_path / "r"), device="cpu")
    assert "or declare that dim as 63" in e.value.hint


def test_arrays_given_in_memory_are_not_copied_whole(tmp_path, run):
    """Training and evaluating on arrays given in memory reads them where they are: a large array
    is not copied whole (it was copied on arrival, and again to hash it), and stays unmodified. A
    validation split copies the examples once, into the two parts; no split copies nothing."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x, y = rng.random((40_000, 64), dtype=np.float32), rng.integers(0, 10, 40_000)
    x.flags.writeable = y.flags.writeable = False
    before = x.copy()
    opts = dict(steps=1, threads=1, device="cpu", batch_size=64)
    for what, call, most in (
            ("train", lambda: train(load(MLP, SMALL), data={"x": x, "y": y}, valid=0,
                                    run_dir=str(tmp_path / "r0"), **opts), 0.5),
            ("a split", lambda: train(load(MLP, SMALL), data={"x": x, "y": y}, valid=0.2,
                                      run_dir=str(tmp_path / "r1"), **opts), 1.5),
            ("evaluate_run", lambda: evaluate_run(run / "run", data={"x": x, "y": y}, device="cpu"), 0.5)):
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            call()
            peak = tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()
        assert peak < most * x.nbytes, f"{what}: {peak / x.nbytes:.2f} times the array's size"
    assert np.array_equal(x, before)


def test_a_closed_np_load_result_is_refused_before_anything_runs(tmp_path, run):
    """np.load's result used after its with block (with np.load(p) as z: ..., then data=z) has
    closed its file: train and evaluate_run ended in an AttributeError traceback ('NoneType'
    object has no attribute 'open'); it is refused in one line naming the keyword, with a hint."""
    x, y = _digits(0, 40)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with np.load(tmp_path / "d.npz") as z:
        pass
    for call in (lambda: train(load(MLP, SMALL), data=z, run_dir=str(tmp_path / "r"), device="cpu"),
                 lambda: train(load(MLP, SMALL), data={"x": x, "y": y}, valid=z, run_dir=str(tmp_path / "r")),
                 lambda: evaluate_run(run / "run", data=z, device="cpu")):
        with pytest.raises(FlowgradError, match="is np.load's result after its file was closed") as e:
            call()
        assert "\n" not in e.value.message and "inside the with block" in e.value.hint
    assert not (tmp_path / "r").exists()


def test_a_resume_without_the_arrays_names_every_one_it_needs_at_once(tmp_path):
    """A run trained and validated on arrays given in memory, resumed with neither, is told of
    both (data= and valid=) in one refusal: it was told of data= alone, and once given that, of
    valid=; flowgrad train --resume is told to pass both files."""
    spec, (x, y), (vx, vy) = load(MLP, SMALL), _digits(0, 150), _digits(150, 200)
    r = str(tmp_path / "r")
    train(spec, data={"x": x, "y": y}, valid={"x": vx, "y": vy}, run_dir=r, steps=1, threads=1, device="cpu")
    _refused([f"resume=True {r}: the run was trained and validated on arrays given in memory (the API's data= and "
              "valid=), and this resume gives neither", "(resume=True, data={...}, valid={...})"],
             spec=spec, run_dir=r, resume=True)
    _refused_as_flowgrad_train(["the run was trained and validated on arrays given in memory",
                                "--resume --data FILE.npz --valid VALID.npz"], spec=spec, run_dir=r, resume=True)


def _spec_reading(folder, data_path: str) -> str:
    """models/mlp.yaml, 16 hidden units, written into `folder` reading its data from `data_path`."""
    text = open(MLP).read().replace("data: {dataset: digits, valid: 0.2}", f"data: {{path: {data_path}, valid: 0.2}}")
    assert data_path in text
    (folder / "spec.yaml").write_text(text.replace("H: 256", "H: 16"))
    return str(folder / "spec.yaml")


def test_a_spec_loaded_by_a_relative_path_reads_its_data_beside_it_after_a_chdir(tmp_path, monkeypatch):
    """A script that loaded "spec.yaml" (naming train.data.path d.npz) and then changed the working
    directory was told "train.data.path file '.../elsewhere/d.npz' does not exist" and that "the spec
    has no file", though the spec was read from one and d.npz lay beside it: relative data paths are
    read beside the spec file as it was read, wherever the script is when it trains."""
    import json

    (tmp_path / "specs").mkdir(), (tmp_path / "elsewhere").mkdir()
    _spec_reading(tmp_path / "specs", "d.npz")
    np.savez(tmp_path / "specs" / "d.npz", **dict(zip("xy", _digits(0, 100))))
    monkeypatch.chdir(tmp_path / "specs")
    spec = load("spec.yaml")
    monkeypatch.chdir(tmp_path / "elsewhere")
    train(spec, run_dir="run", epochs=1, threads=1, device="cpu")
    info = json.loads((tmp_path / "elsewhere" / "run" / "run.json").read_text())
    assert info["data_source"]["path"] == str(tmp_path / "specs" / "d.npz")


def test_a_runs_spec_yaml_is_the_spec_that_trained_though_its_file_changed_since(tmp_path):
    """A sweep script that loaded sweep.yaml (16 hidden units), rewrote the file for its next run
    (32) and then trained the spec it had loaded got a run whose spec.yaml was the rewritten file:
    evaluate_run() then said the checkpoint's W1 [64, 16] did not fit the spec's [64, 32]. The run's
    spec.yaml is now the text the spec was read from, comments and all."""
    text = open(MLP).read()
    path = tmp_path / "sweep.yaml"
    path.write_text(text.replace("H: 256", "H: 16"))
    spec = load(path)
    path.write_text(text.replace("H: 256", "H: 32"))
    train(spec, run_dir=str(tmp_path / "run"), epochs=1, threads=1, device="cpu")
    assert (tmp_path / "run" / "spec.yaml").read_text() == text.replace("H: 256", "H: 16")
    x, y = _digits(0, 20)
    assert set(evaluate_run(tmp_path / "run", data={"x": x, "y": y})) == {"loss", "accuracy"}


def test_predict_refuses_a_ragged_list_or_a_pickled_array_in_one_line(tmp_path, run):
    """predict(model, {"x": [[...64 numbers], [3 numbers]]}) ended in NumPy's ValueError ('setting an
    array element with a sequence ... inhomogeneous shape') from inside predict, and so did np.load's
    result holding an object array; both are one-line DataErrors naming the input, as train()'s
    data= refuses them."""
    model = str(run / "mlp.onnx")
    with pytest.raises(DataError, match="mlp.onnx: input 'x' is ragged: its rows are not all of one shape"):
        predict(model, {"x": [[0.0] * 64, [0.0] * 3]})
    np.savez(tmp_path / "objects.npz", x=np.array([np.zeros(64), np.zeros(3)], dtype=object))
    with np.load(tmp_path / "objects.npz") as z, pytest.raises(DataError, match="input 'x' must hold numbers, got object"):
        predict(model, z)
    assert predict(model, {"x": [[0.0] * 64] * 2})["probs"].shape == (2, 10)


def test_predicts_hint_writes_the_models_input_shapes_as_the_spec_does(run):
    """predict(model, {"x": x}) with x of the wrong rank hinted "the model's inputs: x float32
    ['N', 64]", Python's list with the dim's name quoted, where every other message writes a shape
    as the spec does, [N, 64]."""
    with pytest.raises(DataError, match="has rank 3, the model expects 2") as e:
        predict(str(run / "mlp.onnx"), {"x": np.zeros((1, 2, 64), np.float32)})
    assert e.value.hint == "the model's inputs: x float32 [N, 64]"


def test_compile_into_an_earlier_build_leaves_no_graph_of_the_other_spec(tmp_path):
    """compile(char_lstm, output="build") then compile(mlp, output="build") left char_lstm's
    generate.onnx beside mlp's graphs and manifest, for a reader of the folder to take for mlp's
    sampling graph (a run's graphs/ folder already dropped such graphs). The graphs the earlier
    manifest lists and the new spec lacks go; other .onnx files in the folder are the user's."""
    build = tmp_path / "build"
    compile(load(os.path.join(ROOT, "models", "char_lstm.yaml"), ["dims.H=8", "dims.E=4"]), output=build)
    assert (build / "generate.onnx").is_file()
    (build / "mine.onnx").write_bytes((build / "infer.onnx").read_bytes())
    compile(load(MLP, ["dims.H=8"]), output=build)
    assert sorted(os.listdir(build)) == ["apply.onnx", "eval.onnx", "grads.onnx", "infer.onnx", "manifest.json",
                                         "mine.onnx", "train.onnx"]


def test_a_compile_that_fails_part_way_leaves_no_manifest_of_the_earlier_build(tmp_path, monkeypatch):
    """A compile into char_lstm's build that failed at its manifest (a full disk) left char_lstm's
    manifest, listing its sampling graph, beside mlp's graphs: a folder that read as a whole build of
    neither. The earlier manifest goes first, the new one is written last."""
    import errno

    import runtime.checkpoint as C

    build = tmp_path / "build"
    compile(load(os.path.join(ROOT, "models", "char_lstm.yaml"), ["dims.H=8", "dims.E=4"]), output=build)
    real_write = C._write

    def full(f, data, path):
        if path.endswith("manifest.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data, path)

    monkeypatch.setattr(C, "_write", full)
    with pytest.raises(FlowgradError, match="No space left on device"):
        compile(load(MLP, ["dims.H=8"]), output=build)
    assert not (build / "manifest.json").exists()


def test_device_cuda_without_cuda_is_refused_in_the_apis_words(tmp_path, run, monkeypatch):
    """train(spec, device="cuda") on a machine without CUDA was told "--device cuda was asked for"
    and to "use --device cpu", flags a script never typed (so were evaluate_run and predict); the
    API now says device="cuda" and device="cpu", and flowgrad train keeps its flags."""
    import runtime.session

    monkeypatch.setattr(runtime.session, "cuda_available", lambda: False)
    calls = (lambda: train(load(MLP, SMALL), run_dir=str(tmp_path / "r"), epochs=1, device="cuda"),
             lambda: evaluate_run(run / "run", data={"x": _digits(0, 5)[0], "y": _digits(0, 5)[1]}, device="cuda"),
             lambda: predict(str(run / "mlp.onnx"), {"x": np.zeros((1, 64), np.float32)}, device="cuda"))
    for call in calls:
        with pytest.raises(FlowgradError, match='^device="cuda" was asked for, but onnxruntime cannot create') as e:
            call()
        assert e.value.hint.endswith('or use device="cpu"')
    from runtime.session import pick_device

    with pytest.raises(FlowgradError, match="^--device cuda was asked for") as e:
        pick_device("cuda", names=FLAGS)
    assert e.value.hint.endswith("or use --device cpu")


def test_load_takes_a_dict_holding_numpys_numbers_and_ordered_dicts():
    """A sweep's dict spec with dims.H = np.int64(32) or lr = np.float64(0.01) (np.logspace's) was
    refused as "cannot turn the dict into YAML: ('cannot represent an object', np.int64(32))", and an
    OrderedDict with the whole dict's repr in the message. NumPy's numbers and arrays are read as
    Python's, any mapping as a dict; what a spec cannot hold is named by its key path."""
    import collections
    from decimal import Decimal

    d = yaml.safe_load(open(MLP).read())
    spec = load({**d, "dims": {"D": 64, "H": np.int64(32), "K": 10},
                 "train": {**d["train"], "optimizer": {"adam": {"lr": np.logspace(-3, -1, 3)[1]}}}})
    assert spec.dims["H"] == 32 and spec.train["optimizer"] == {"adam": {"lr": 0.01}}
    assert load(collections.OrderedDict(d)).dims == load(d).dims
    assert load({**d, "dims": {np.str_(k): v for k, v in d["dims"].items()}}).dims == load(d).dims  # (a key of NumPy's)
    with pytest.raises(SpecError, match="^cannot turn the dict into YAML: train.optimizer.adam.lr is a Decimal\n"):
        load({**d, "train": {**d["train"], "optimizer": {"adam": {"lr": Decimal("0.01")}}}})


def test_float_type_hints_name_the_apis_dtype_beside_the_flag():
    """compile(spec, dtype="float64") of a mixed-precision spec was told to "leave train.dtype (and
    --dtype) at float32", and a parameter declaring dtype float64 to compile "(--dtype float64)": a
    flag only; these compiler hints, which know no caller, name the API's dtype= beside it."""
    text = open(MLP).read()
    with pytest.raises(SpecError, match="mixed precision keeps float32 master weights") as e:
        compile(load(text.replace("batch_size: 64", "batch_size: 64\n  mixed_precision: float16")), dtype="float64")
    assert e.value.hint == "leave train.dtype (and --dtype, or the Python API's dtype=) at float32"
    with pytest.raises(SpecError, match="parameter 'W1' declares dtype float64") as e:
        compile(load(text.replace("init: he_uniform}", "init: he_uniform, dtype: float64}", 1)))
    assert e.value.hint.endswith('(--dtype float64; dtype="float64" in the Python API)')


def test_train_takes_numpys_integers_for_its_counts(tmp_path):
    """A sweep's train(threads=np.int64(1)) or accumulate=np.int64(2) (np.arange's) passed the
    checks and then ended in json's "Object of type int64 is not JSON serializable" writing
    run.json or the first checkpoint, a TypeError that left a run with no checkpoint behind."""
    import json

    spec = load(MLP, ["dims.H=8"])
    counts = dict(threads=np.int64(1), accumulate=np.int64(2), steps=np.int32(3), batch_size=np.int64(32),
                  seed=np.uint8(3), checkpoint_every=np.int64(2), steps_per_call=np.int16(1))
    result = train(spec, run_dir=str(tmp_path / "r"), device="cpu", **counts)
    assert result.steps == 3
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["threads"] == 1 and info["seed"] == 3
    assert (tmp_path / "r" / "checkpoint.npz").is_file()


def test_train_takes_none_for_a_count_as_the_count_left_out(tmp_path):
    """train(accumulate=None) or steps_per_call=None passed the checks, whose hint to a bad value
    says to leave it out for the default, and then failed in a comparison: "'>' not supported
    between instances of 'NoneType' and 'int'"."""
    spec = load(MLP, ["dims.H=8"])
    result = train(spec, run_dir=str(tmp_path / "r"), device="cpu", steps=2, accumulate=None, steps_per_call=None,
                   checkpoint_every=None)
    assert result.steps == 2


def test_evaluate_run_reads_a_run_trained_with_freeze(tmp_path):
    """A run trained with freeze=["W1"] was refused by evaluate_run (and flowgrad eval): "checkpoint
    RUN/best.npz: m/main has shape [...], the spec now says [...]", with a hint to train anew, as
    its optimizer state, which covers the parameters it trained, was taken for a changed spec's."""
    rng = np.random.default_rng(0)
    data = {"x": rng.random((96, 64), dtype=np.float32), "y": rng.integers(0, 10, 96)}
    run_dir = str(tmp_path / "frozen")
    train(load(MLP, ["dims.H=8"]), run_dir=run_dir, device="cpu", threads=1, epochs=1, data=data, freeze=["W1", "b*"])
    metrics = evaluate_run(run_dir, data=data, device="cpu")
    export(run_dir, str(tmp_path / "frozen.onnx"))
    labels = predict(str(tmp_path / "frozen.onnx"), {"x": data["x"]})["label"]
    assert metrics["accuracy"] == pytest.approx(np.mean(labels == data["y"]))


def test_a_runs_files_follow_the_umask_the_process_has_when_it_trains(tmp_path):
    """The mode of every file written whole (checkpoints, run.json, spec.yaml, exports) was the
    one open() would give under the umask the process had when flowgrad was imported: a
    notebook that set os.umask(0o077) later still wrote its checkpoints readable by everyone."""
    mask = os.umask(0o077)
    try:
        train(load(MLP, ["dims.H=8"]), run_dir=str(tmp_path / "r"), device="cpu", steps=2)
        export(str(tmp_path / "r"), str(tmp_path / "r.onnx"))
    finally:
        os.umask(mask)
    for path in (*(tmp_path / "r").iterdir(), *(tmp_path / "r" / "graphs").iterdir(), tmp_path / "r.onnx"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_an_import_that_a_ctrl_c_cut_short_leaves_the_process_able_to_compile(monkeypatch):
    """A Ctrl-C (a notebook's interrupt) during the first compile's import of an op family left
    the ops that family had registered, and Python forgot the half-run module: every later
    compile and train in that process failed with RuntimeError "op 'constant' registered twice"
    (the optimizers, imported with runtime.api, the same way). The module is imported again."""
    import importlib
    import sys

    import compiler.ops  # noqa: F401  (as a first compile imports it)
    from compiler.optim import base
    from compiler.registry import REGISTRY

    saved = dict(REGISTRY), dict(base.OPTIMIZERS)  # (put back as they were below)
    try:
        for module in ("compiler.ops.elementwise", "compiler.optim.adaptive"):  # what an interrupted import leaves
            monkeypatch.delitem(sys.modules, module)
            importlib.import_module(module)
        assert compile(load(MLP, ["dims.H=8"])).graphs
    finally:
        REGISTRY.clear(), REGISTRY.update(saved[0])
        base.OPTIMIZERS.clear(), base.OPTIMIZERS.update(saved[1])
    with pytest.raises(RuntimeError, match="op 'exp' registered twice"):  # another class of that name is a bug still
        from compiler.registry import op
        op("exp")(type("Other", (), {}))


def test_a_ctrl_c_while_a_file_is_written_leaves_no_temporary_open_or_behind(tmp_path, run, monkeypatch):
    """A Ctrl-C while export() (or a checkpoint) was being written left its .tmp- file beside the
    output, which nothing removes outside a run directory; one between the temporary's creation
    and its wrapping in a file object left its descriptor open for the life of the process."""
    import runtime.checkpoint as C

    def interrupted(f, data, path):
        f.write(data[:10])
        raise KeyboardInterrupt

    open_fds = lambda: len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0  # noqa: E731
    before = open_fds()
    monkeypatch.setattr(C, "_write", interrupted)
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            export(str(run / "run"), str(tmp_path / "m.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert open_fds() <= before


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_inside_numpys_zip_writer_stays_a_ctrl_c(monkeypatch):
    """A Ctrl-C that landed as numpy.savez opened a checkpoint's next array in the archive surfaced
    as numpy's ValueError "Can't close the ZIP file while there is an open writing handle on it"
    (the CLI printed a traceback for its 'training stopped by Ctrl-C' line and exit code 130)."""
    import zipfile

    from runtime.checkpoint import checkpoint_bytes, predictions_bytes

    real, calls = zipfile._ZipWriteFile.__init__, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) % 2 == 0:  # the second array of each archive
            raise KeyboardInterrupt
        real(self, *args, **kwargs)

    monkeypatch.setattr(zipfile._ZipWriteFile, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_bytes({"W": np.zeros(3, np.float32)}, {"step": 1})
    with pytest.raises(KeyboardInterrupt):
        predictions_bytes({"a": np.zeros(2), "b": np.ones(2)})
    import gc

    gc.collect()  # (the half-written archive raised the ValueError again as it was collected)


def test_predictions_of_strings_are_archived_as_numpy_savez_archives_them():
    """predict -o of a model with a string output (ONNX's Cast to STRING) wrote its .npz with
    numpy.savez, which pickles object arrays; the writer that replaced it refused them with
    numpy's ValueError "Object arrays cannot be saved when allow_pickle=False", a traceback."""
    import io

    from runtime.checkpoint import predictions_bytes

    words = np.array([["1.5", "2"], ["3", "x"]], dtype=object)
    data = predictions_bytes({"y": words, "n": np.arange(2)})
    with np.load(io.BytesIO(data), allow_pickle=True) as z:
        assert z["y"].tolist() == words.tolist() and z["n"].tolist() == [0, 1]


def test_freezing_every_parameter_is_told_in_the_callers_words():
    """train(freeze=["*"]) and flowgrad train --freeze '*' were both told "freeze ['*'] keeps all of
    its parameters fixed", a Python list the CLI user never typed."""
    from compiler.training import compile_spec
    from spec.errors import KEYWORDS

    spec = load(MLP, ["dims.H=4"])
    for names, words in ((KEYWORDS, 'freeze=["*"] keeps all'), (FLAGS, "--freeze '*' keeps all")):
        with pytest.raises(SpecError, match="^the loss trains no parameters: " + re.escape(words)):
            compile_spec(spec, frozen=["*"], names=names, graphs=("train",))


def test_predict_refuses_feeds_the_model_has_no_input_for(tmp_path, run):
    """predict() left out a feed the model does not read without a word: a sampler fed
    {"prompt": ..., "temprature": 0.2} sampled at its default temperature. ignore_extra=True
    leaves such arrays out (flowgrad predict --data with an .npz that also holds labels)."""
    model = str(run / "mlp.onnx")
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(DataError, match="^the model has no input 'y' \\(nor 'scale'\\)\n") as e:
        predict(model, {"x": x, "y": np.zeros(2, np.int64), "scale": np.ones(1)})
    assert e.value.hint == "its inputs are x: leave the others out, or pass ignore_extra=True"
    kept = predict(model, {"x": x, "y": np.zeros(2, np.int64)}, ignore_extra=True)
    np.testing.assert_array_equal(kept["probs"], predict(model, {"x": x})["probs"])
    with pytest.raises(ExportArgumentError, match="^ignore_extra must be True or False"):
        predict(model, {"x": x}, ignore_extra="yes")


def test_predict_refuses_booleans_for_integer_inputs(tmp_path, run):
    """A bool array fed to an integer input (ids, labels, counts, a beam width) went in as 0 and 1:
    beam_width=True decoded with one beam. A float input still takes a boolean mask as 0 and 1."""
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])
    out = helper.make_tensor_value_info("out", TensorProto.INT64, ["N"])
    graph = helper.make_graph([helper.make_node("Identity", ["ids"], ["out"])], "ids", [ids], [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10),
              str(tmp_path / "ids.onnx"))
    with pytest.raises(DataError, match="input 'ids' must hold integers, got bool"):
        predict(str(tmp_path / "ids.onnx"), {"ids": np.array([True, False])})
    model = str(run / "mlp.onnx")
    out = predict(model, {"x": np.ones((1, 64), bool)})
    np.testing.assert_array_equal(out["probs"], predict(model, {"x": np.ones((1, 64), np.float32)})["probs"])


def test_importing_the_api_leaves_onnxruntime_s_process_logger_alone():
    """Importing runtime.session set onnxruntime's default logger to errors only for the whole
    process, hiding the warnings of a program's own onnxruntime sessions; the CLI alone does so."""
    import subprocess
    import sys

    probe = ("import onnxruntime as ort\n"
             "calls = []\n"
             "ort.set_default_logger_severity = lambda level: calls.append(level)\n"
             "import runtime.api, runtime.session, runtime.export\n"
             "print(calls)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def _cli_json(*args) -> dict:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, [str(a) for a in args] + ["--json"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_check_gradcheck_summary_and_bench_return_what_their_verbs_print_with_json():
    """A script had only load, compile, train, export, predict and evaluate_run: checking a spec,
    its gradients, its FLOPs or its step time meant running the CLI and parsing its output. The
    API's check, gradcheck, summary and bench return what the verbs print with --json."""
    lstm = os.path.join(ROOT, "models", "char_lstm.yaml")
    assert check(MLP) == _cli_json("check", MLP)
    assert check(load(MLP, SMALL), dtype="float64") == _cli_json("check", MLP, "--set", SMALL[0], "--dtype", "float64")
    assert summary(lstm, batch_size=8, dims={"T": 16}) == _cli_json("summary", lstm, "--batch-size", "8", "--dim", "T=16")
    ours, theirs = gradcheck(load(MLP, SMALL), seed=3), _cli_json("gradcheck", MLP, "--set", SMALL[0], "--seed", "3")
    assert ours["passed"] and ours["seed"] == 3 and len(ours["checks"]) == 6  # W1..W3, b1..b3
    assert [(c["parameter"], c["status"]) for c in ours["checks"]] == [(c["parameter"], c["status"]) for c in theirs["checks"]]
    assert ours["worst_relative_error"] == pytest.approx(theirs["worst_relative_error"], rel=1e-3)
    assert gradcheck(load(MLP, SMALL), tolerance=0.0)["passed"] is False
    timed = bench(load(MLP, SMALL), steps=2, threads=1)
    assert timed.keys() == _cli_json("bench", MLP, "--set", SMALL[0], "--steps", "2", "--threads", "1").keys()
    assert timed["step_ms"] > 0 and timed["threads"] == 1 and timed["batch_size"] == load(MLP).batch_size


@pytest.mark.parametrize("call, words, hint", [
    (lambda: summary(CHAR_LSTM, dims={"X": 3}), "dims\\['X'\\]: the spec's inputs have no symbolic dim 'X'", "besides the batch: T"),
    (lambda: summary(CHAR_LSTM, dims={"N": 3}), "dims\\['N'\\]: N is the batch dim", "set it with batch_size"),
    (lambda: summary(CHAR_LSTM, dims={"T": 2.5}), "dims\\['T'\\] = 2.5: a size must be a whole number of at least 1",
     "e.g. dims['T'] = 64"),
    (lambda: summary(CHAR_LSTM, dims=["T=64"]), "dims must be a dict of dim name to size, got list", 'dims={"T": 64}'),
    (lambda: summary(CHAR_LSTM, batch_size=0), "batch_size must be an integer of at least 1", "batch_size"),
    (lambda: summary(CHAR_LSTM, objective="critic"), "unknown objective 'critic'", "objectives: main"),
    (lambda: gradcheck(MLP, seed=-1), "seed must be an integer of at least 0", "seed"),
    (lambda: gradcheck(MLP, tolerance=float("nan")), "tolerance must be 0 or more and finite", "tolerance=1e-4"),
    (lambda: check(MLP, dtype="float8"), "float8", None),
    (lambda: bench(MLP, steps=0), "steps must be an integer of at least 1", "steps"),
    (lambda: bench(MLP, cuda_graphs="no"), "cuda_graphs must be True or False", "cuda_graphs=False"),
    (lambda: bench(MLP, dims={"T": 3}), "dims\\['T'\\]: the spec's inputs have no symbolic dim 'T'", "none"),
    (lambda: bench(os.path.join(ROOT, "models", "gan.yaml"), steps_per_call=2),
     "steps_per_call does not work with a schedule of several objectives", "leave out steps_per_call"),
    (lambda: bench(CHAR_LSTM, steps=1, dims={"T": 64}), "dims\\['T'\\]: bench times the first batch of the spec's data",
     "leave out dims"),
    # (a dim of the spec's dims: section was told only "its symbolic dims besides the batch: none")
    (lambda: summary(MLP, dims={"H": 32}), "dims\\['H'\\]: H is the spec's dims.H \\(256\\), not a symbolic dim",
     'load(spec, overrides=["dims.H=32"])'),
])
def test_the_inspecting_verbs_refuse_bad_arguments_by_their_keywords(call, words, hint):
    """The API's check, gradcheck, summary and bench name their keywords where the CLI names
    --dim, --batch-size and --tolerance: one-line FlowgradErrors, before any model runs."""
    with pytest.raises(FlowgradError, match=words) as e:
        call()
    assert "--" not in e.value.message and "\n" not in e.value.message
    if hint:
        assert hint in e.value.hint and "--" not in e.value.hint



def test_native_errors_stay_hidden_when_the_script_captured_sys_stderr():
    """onnxruntime's CUDA loader errors were hidden from fd 2 only while sys.stderr had a file
    descriptor: a script that captured sys.stderr (redirect_stderr, a notebook) saw them printed."""
    import subprocess
    import sys

    probe = ("import contextlib, io, os\n"
             "from runtime.session import _silenced_stderr\n"
             "with contextlib.redirect_stderr(io.StringIO()), _silenced_stderr():\n"
             "    os.write(2, b'native error\\n')\n"
             "os.write(2, b'after\\n')\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stderr == "after\n"



def test_gradcheck_takes_none_for_its_defaults_and_numpy_floats_quietly(recwarn):
    """gradcheck(spec, seed=None) was NumPy's TypeError from its SeedSequence, and a tolerance of
    np.float32(1e-3) printed NumPy's 'overflow encountered in cast' warning."""
    assert gradcheck(load(MLP, SMALL), seed=None, tolerance=None)["seed"] == 0
    assert gradcheck(load(MLP, SMALL), tolerance=np.float32(1e-3))["passed"]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]



def test_bench_takes_numpy_and_none_counts_and_returns_what_json_writes():
    """bench(steps=None) and steps_per_call=None were TypeErrors from inside the timing loop,
    and bench(steps=np.int64(2), threads=np.int64(1)) returned NumPy integers that json.dumps
    refused. None is the default, as the hint to a bad count says, and the result holds ints."""
    timed = bench(load(MLP, SMALL), steps=np.int64(2), threads=np.int64(1), steps_per_call=np.int64(2),
                  batch_size=np.int32(8), cuda_graphs=np.bool_(True))
    assert json.loads(json.dumps(timed))["steps"] == 2
    assert type(timed["steps_per_call"]) is int and type(timed["threads"]) is int and timed["batch_size"] == 8
    assert bench(load(MLP, SMALL), steps=None, steps_per_call=None, threads=1)["steps"] == 50



@pytest.mark.parametrize("call, words, hint", [
    (lambda: bench(CHAR_LSTM, steps=1, dims={"T": 8}), "dims\\['T'\\]: bench times the first batch of the spec's data",
     "leave out dims"),
    (lambda: bench(os.path.join(ROOT, "models", "gan.yaml"), steps=1, steps_per_call=2),
     "steps_per_call does not work with a schedule of several objectives", "leave out steps_per_call"),
])
def test_bench_names_its_keywords_where_the_cli_names_its_flags(call, words, hint):
    """bench(dims={"T": 8}) on a spec with data was told '--dim T: ...' and to leave out --dim,
    and a steps_per_call with a schedule of several objectives was told of --steps-per-call."""
    with pytest.raises(FlowgradError, match=words) as e:
        call()
    assert "--" not in e.value.message and hint in e.value.hint and "--" not in e.value.hint


@pytest.mark.parametrize("call", [
    lambda dtype: train(load(MLP, SMALL), dtype=dtype, steps=1, run_dir=os.devnull + "/never"),
    lambda dtype: bench(load(MLP, SMALL), dtype=dtype, steps=1),
    lambda dtype: compile(MLP, dtype=dtype),
    lambda dtype: check(MLP, dtype=dtype),
    lambda dtype: summary(MLP, dtype=dtype),
])
def test_a_numpy_dtype_is_refused_as_a_float_types_name(call):
    """dtype=np.dtype("float64") equals "float64" and passed the check, then went on to run.json and
    bench's result, which json refused: train() and bench() failed with a TypeError after they had
    compiled and trained. A dtype is a string, as the hint says."""
    for dtype in (np.dtype("float64"), np.float64):
        with pytest.raises(SpecError, match="dtype must be a float type's name") as e:
            call(dtype)
        assert '"float64"' in e.value.hint


def test_summary_and_bench_return_numpy_sizes_as_ints():
    """summary(spec, dims={"T": np.int64(64)}) returned the size as a NumPy integer in its result's
    dims, which json.dumps refused, though it prints as summary --json's 64."""
    counted = summary(CHAR_LSTM, batch_size=np.int64(4), dims={"T": np.int64(16)})
    assert json.loads(json.dumps(counted)) == summary(CHAR_LSTM, batch_size=4, dims={"T": 16})
    spec = yaml.safe_load(open(CHAR_LSTM))
    del spec["train"]["data"]  # (random inputs: bench then takes dims)
    timed = bench(spec, steps=1, threads=1, dims={"T": np.int64(5)})
    assert json.loads(json.dumps(timed))["dims"]["T"] == 5
    with pytest.raises(FlowgradError, match=re.escape("dims['T'] = 2.0: a size must be a whole number")):
        summary(CHAR_LSTM, dims={"T": 2.0})


def test_predict_on_a_compiled_graph_points_at_export(run):
    """predict() on a run's graphs/infer.onnx (or compile -o's) said that the model needs input(s)
    W1, b1, W2, ..., and that the inputs given were x, with no word that the file is a compiled
    graph whose weights are inputs and that export writes the model to run."""
    with pytest.raises(ExportError, match="is a compiled graph, whose parameters are inputs, not an exported model") as e:
        predict(run / "run" / "graphs" / "infer.onnx", {"x": np.zeros((1, 64), np.float32)})
    assert 'export(run_dir, "model.onnx")' in e.value.hint and "\n" not in e.value.message
    assert set(predict(run / "mlp.onnx", {"x": np.zeros((1, 64), np.float32)})) == {"probs", "label"}


def test_a_resume_of_a_run_that_is_training_and_has_no_checkpoint_yet_says_so(tmp_path):
    """train(resume=True) on a run directory another run was training in, before its first
    checkpoint, said 'nothing to resume: no checkpoint' and to train without resume=True first,
    which the other run's lock then refused."""
    import fcntl

    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FlowgradError, match="another flowgrad run is training in .* no checkpoint yet") as e:
            train(load(MLP, SMALL), run_dir=run_dir, resume=True, steps=1)
        assert "wait for it to finish" in e.value.hint
    with pytest.raises(FlowgradError, match="nothing to resume: no checkpoint"):  # (once it is gone)
        train(load(MLP, SMALL), run_dir=run_dir, resume=True, steps=1)


def test_predict_refuses_a_before_run_that_is_no_function(run):
    """predict(model, feeds, before_run=3) read and checked the inputs, then ended in Python's
    TypeError ('int' object is not callable) from inside predict."""
    with pytest.raises(ExportArgumentError, match="before_run must be a function, got int"):
        predict(run / "mlp.onnx", {"x": np.zeros((1, 64), np.float32)}, before_run=3)
    shapes = []
    predict(run / "mlp.onnx", {"x": np.zeros((2, 64), np.float32)}, before_run=shapes.append)
    assert shapes == [{"probs": (2, 10), "label": (2,)}]


def test_predict_names_a_whole_number_beyond_int64(run):
    """predict() given a Python int beyond int64's range (x as 2**70, or a seed of 2**70) said that
    the input must hold numbers, got object: NumPy reads such a number as an object."""
    with pytest.raises(DataError, match=re.escape("input 'x' holds 1180591620717411303424, outside the range of int64")):
        predict(run / "mlp.onnx", {"x": [[2**70] * 64]})
    with pytest.raises(DataError, match="input 'x' must hold numbers, got <U1"):
        predict(run / "mlp.onnx", {"x": [["a"] * 64]})
