"""The command line, through typer's CliRunner (plus one real run of the installed command)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer.main
from typer.testing import CliRunner

from cli import app

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "models").glob("*.yaml"))
MLP = str(ROOT / "models" / "mlp.yaml")
BAD = str(ROOT / "tests" / "bad_specs" / "compile" / "unknown_op.yaml")

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch):
    """cli's rich consoles took their width from the terminal at import: make it wide and fixed."""
    import cli

    for console in (cli.out, cli.err):
        monkeypatch.setattr(console, "width", 200)


def invoke(*args, code=0):
    # a fixed, wide terminal: tables and help boxes do not wrap whatever the caller's COLUMNS
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "LINES": "50"})
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    return result


# ---------------------------------------------------------------- check / compile / ops
@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_check_models(path):
    out = invoke("check", path).stdout
    assert f"{path.stem}: nodes" in out and f"{path.stem}: parameters" in out
    # The table shows each model's logits (or, in a model without, its last node) with its shape.
    from compiler.training import check_spec
    from spec import load_spec

    spec = load_spec(str(path))
    name = "logits" if "logits" in {t for a in spec.graph for t in a.targets} else spec.graph[-1].targets[0]
    logits = check_spec(spec).env[name]
    assert name in out and "[" + ", ".join(map(str, logits.shape)) + "]" in out
    assert out.rstrip().endswith("spec OK")


def test_check_and_summary_show_the_spec_doc():
    """docs/schema.md: doc is 'shown by flowgrad check and flowgrad summary' (neither printed it)."""
    doc = "Rectifier MLP with dropout on the 8x8 handwritten digits; softmax output."
    assert doc in invoke("check", MLP).stdout
    assert doc in invoke("summary", MLP).stdout
    assert json.loads(invoke("summary", MLP, "--json").stdout)["doc"] == doc


def test_check_counts_only_trained_values(tmp_path):
    """'N trainable values' counted parameters marked trainable: false too."""
    spec = tmp_path / "frozen.yaml"
    spec.write_text(Path(MLP).read_text().replace("b1: {shape: [H], init: zeros}",
                                                  "b1: {shape: [H], init: zeros, trainable: false}"))
    assert "trainable: false" in spec.read_text()
    full = invoke("check", MLP).stdout
    frozen = invoke("check", spec).stdout
    count = lambda out: int(out.split(" trainable values")[0].split(", ")[-1].replace(",", ""))  # noqa: E731
    assert count(full) - count(frozen) == 256  # b1 is [H], H = 256


def test_check_set_changes_a_shape():
    default = invoke("check", MLP).stdout
    assert "[N, 256]" in default and "[N, 32]" not in default
    out = invoke("check", MLP, "--set", "dims.H=32").stdout
    assert "[N, 32]" in out and "[N, 256]" not in out
    assert "[64, 32]" in out  # W1 follows the dim


def test_check_bad_set_path():
    result = invoke("check", MLP, "--set", "dimz.H=32", code=1)
    assert "--set dimz.H=32:1:7: cannot set 'dimz.H'" in result.output
    assert "did you mean 'dims'?" in result.output



def test_check_refuses_the_data_section_train_refuses(tmp_path):
    """check said 'spec OK' of valid 0.2 with test 0.9, and of a misspelt dataset option, which
    train refused before reading any data: check refuses them too, located in the spec."""
    res = invoke("check", MLP, "--set", "train.data.test=0.9", code=1)
    assert "valid 0.2 and test 0.9 must sum to less than 1 (they sum to 1.1)" in res.stderr
    spec = tmp_path / "semi.yaml"
    spec.write_text((ROOT / "models" / "semisupervised.yaml").read_text().replace("labelled: 100", "labeled: 100"))
    res = invoke("check", spec, code=1)
    assert res.stderr.startswith(f"error: {spec}:36:") and "dataset 'digits' has no option 'labeled'" in res.stderr
    assert "did you mean 'labelled'?" in res.stderr


@pytest.mark.parametrize("option, words", [
    ("level=chars", "unknown level 'chars'"),
    ("seq_len=0", "option seq_len must be an integer of at least 1, got 0"),
    ("seq_len=2.5", "option seq_len must be an integer of at least 1, got 2.5"),
    ("max_vocab=1", "option max_vocab must be an integer of at least 2, got 1"),
    ("seq_len=10000000", "seq_len 10000000 is not shorter than the"),
])
def test_check_refuses_a_dataset_option_value_that_train_refuses(option, words):
    """check named a bundled dataset's unknown options but said 'spec OK' of values its loader
    refuses (level: chars, seq_len: 0 or 2.5, a seq_len longer than the text), which train then
    refused once it read the data. check refuses them as train does, at the data section, without
    making the examples."""
    spec = ROOT / "models" / "char_lstm.yaml"
    res = invoke("check", spec, "--set", f"train.data.options.{option}", code=1)
    assert res.stderr.startswith(f"error: {spec}:21:9: dataset 'text': ") and words in res.stderr
    assert invoke("train", spec, "--set", f"train.data.options.{option}", "--steps", "1", code=1).stderr.endswith(res.stderr)


def test_check_refuses_more_dates_than_are_distinct_as_train_does():
    """dates n: 131500 of the test split, more than its 131415 distinct examples (the (date,
    format) pairs less those that read alike), passed check as 'spec OK' and was refused by train
    once it had drawn them all. check draws them too where n exceeds the split's dates (one
    format alone tells those apart)."""
    spec = ROOT / "models" / "dates_attention.yaml"
    option = "train.data.options={n: 131500, split: test}"
    res = invoke("check", spec, "--set", option, code=1)
    assert res.stderr.startswith(f"error: {spec}:38:9: dataset 'dates': n 131500 is more than the 131415 distinct")
    assert invoke("train", spec, "--set", option, "--steps", "1", code=1).stderr.endswith(res.stderr)


def test_check_refuses_a_segment_sample_that_train_refuses():
    """The segment dataset's max_examples with a seed that takes every window (max_examples:
    100000 of its 6489) passed check as 'spec OK', though train refuses it once it counts the
    windows: check counts them too."""
    spec = ROOT / "models" / "birnn_tagger.yaml"
    option = "train.data.options={seq_len: 48, max_examples: 100000, seed: 1}"
    res = invoke("check", spec, "--set", option, code=1)
    assert res.stderr.startswith(f"error: {spec}:21:9: dataset 'segment': seed picks the max_examples sample")
    assert invoke("train", spec, "--set", option, "--steps", "1", code=1).stderr.endswith(res.stderr)


def strict_json(text: str):
    """`text` read as jq or any strict parser reads it: NaN, Infinity and -Infinity refused."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def table_rows(text: str, title: str) -> list[list[str]]:
    """The cells of each row of the table titled `title` in `text`, as rich draws it."""
    lines = text.splitlines()
    rows = []
    for line in lines[lines.index(title) + 1:]:
        if line.startswith("└"):
            return rows
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    raise AssertionError(f"table {title!r} has no end")


FROZEN_NUMBER_UNUSED = """flowgrad: 1
name: t
dims: {D: 3}
inputs:
  x: {shape: [N, D]}
params:
  W: {shape: [D, D], init: glorot_uniform}
  U: {shape: [D], init: zeros, trainable: false}
graph:
  c: 2.0
  k: D * 2
  h: x @ W * c
loss: mean(h)
"""


@pytest.mark.parametrize("which", ["mlp.yaml", "char_lstm_stateful.yaml", "frozen, a number, a warning"])
def test_check_json_is_what_the_tables_show(which, tmp_path):
    """check had no --json: a CI job gating on a spec's validity and its parameter count scraped
    the tables. check --json prints their rows, the counts and the warnings, and only that."""
    from compiler.training import check_spec
    from spec import load_spec

    path = ROOT / "models" / which
    if not path.exists():
        path = tmp_path / "t.yaml"
        path.write_text(FROZEN_NUMBER_UNUSED)
    shown, res = invoke("check", path), invoke("check", path, "--json")
    r = strict_json(res.stdout)  # (all of stdout: the doc line and the tables' headline are left out)
    assert set(r) == {"name", "doc", "nodes", "params", "tensors", "trainable_values", "warnings",
                      "step_dtype", "master_dtype"}
    name = r["name"]
    dims = lambda shape: "[" + ", ".join(map(str, shape)) + "]"  # noqa: E731
    assert [[n["name"], n["op"], dims(n["shape"]) if n["shape"] is not None else repr(n["value"]), n["dtype"] or ""]
            for n in r["nodes"]] == table_rows(shown.stdout, f"{name}: nodes")
    assert [[p["name"], dims(p["shape"]), p["init"], p["kind"]] for p in r["params"]] \
        == table_rows(shown.stdout, f"{name}: parameters")
    warned = f" ({len(r['warnings'])} warning{'s' * (len(r['warnings']) != 1)})" if r["warnings"] else ""
    assert shown.stdout.rstrip().endswith(
        f"{r['tensors']} tensors, {r['trainable_values']:,} trainable values; spec OK{warned}")
    # ... and what the compiler makes of the spec
    spec = load_spec(str(path))
    low = check_spec(spec)
    assert name == spec.name and r["doc"] == spec.doc
    assert [n["name"] for n in r["nodes"]] == [t for a in spec.graph for t in a.targets]
    for n in r["nodes"]:
        v = low.env[n["name"]]
        assert (n["shape"], n["dtype"]) == ((list(v.shape), v.dtype) if hasattr(v, "shape") else (None, None))
    assert [(p["name"], p["shape"], p["count"]) for p in r["params"]] \
        == [(k, list(p.shape), int(np.prod(p.shape))) for k, p in low.params.items()]
    assert r["tensors"] == len(low.params)
    assert r["trainable_values"] == sum(int(np.prod(p.shape)) for p in low.params.values()
                                        if p.kind == "param" and p.trainable)
    # the warnings are those check prints (on stderr, with --json too); the pointer to summary is not
    printed = [line for line in shown.stderr.splitlines() if line.startswith("warning: ")]
    assert [f"warning: {w['message']}" for w in r["warnings"]] == printed
    assert [line for line in res.stderr.splitlines() if line.startswith("warning: ")] == printed
    assert "flowgrad summary" in shown.stderr and "flowgrad summary" not in res.stderr
    if which.startswith("frozen"):
        assert r["nodes"][:2] == [{"name": "c", "op": "const", "shape": None, "dtype": None, "value": 2.0},
                                  {"name": "k", "op": "mul", "shape": None, "dtype": None, "value": 6}]
        assert [p["kind"] for p in r["params"]] == ["param", "frozen"] and r["trainable_values"] == 9
        assert r["warnings"] == [{"message": f"{path}:11:3: graph entry 'k' is never used",
                                  "hint": "use it in the loss, a metric or an output, or remove it"}]
    elif which == "char_lstm_stateful.yaml":
        assert {p["name"]: p["kind"] for p in r["params"]}["hs.h0"] == "buffer"


def test_check_names_each_entrys_op_as_summary_does(tmp_path):
    """check named an entry written with an operator by its expression's class: mlp's logits,
    h2 @ W3 + b3, was a 'binop' (summary: add), m < 0 a 'compare', -x a 'unaryop' and x[0] a
    'subscript', so check and summary (and the pictures) named one entry two ways."""
    path = tmp_path / "ops.yaml"
    path.write_text("flowgrad: 1\nname: ops\ndims: {D: 3}\ninputs:\n  x: {shape: [N, D]}\n"
                    "params:\n  W: {shape: [D, D], init: glorot_uniform}\ngraph:\n  a: x @ W\n  b: a + 1.0\n"
                    "  c: -b\n  m: c < 0.0\n  r: c[:, 0]\n  s: r\nloss: mean(s * cast(m[:, 0], 'float32'))\n")
    for spec in (path, *MODELS):
        checked = json.loads(invoke("check", spec, "--json").stdout)["nodes"]
        summed = json.loads(invoke("summary", spec, "--json").stdout)["nodes"]
        ops = {t: n["op"] for n in summed if n["kind"] == "node" for t in n["name"].split(", ")}
        assert {n["name"]: n["op"] for n in checked} == ops, spec
    assert {n["name"]: n["op"] for n in json.loads(invoke("check", path, "--json").stdout)["nodes"]} == \
        {"a": "matmul", "b": "add", "c": "neg", "m": "<", "r": "index", "s": "alias"}
    assert "binop" not in invoke("check", MODELS[MODELS.index(ROOT / "models" / "mlp.yaml")]).stdout


def test_a_slice_in_a_message_is_written_as_it_is(tmp_path):
    """rich read ':-1:' in 'cannot slice the symbolic dim T with [1:-1:1]' as the emoji code of a
    thumbs-down and printed [1👎1]: the consoles take no emoji codes. (x[:, 1:-1] is T-2 long
    now; x[:, 1:-1:2] is refused.)"""
    path = tmp_path / "s.yaml"
    path.write_text("flowgrad: 1\nname: s\ninputs:\n  x: {shape: [N, T]}\ngraph:\n"
                    "  a: slice(x, [1], [-1], axes=[1], steps=[2])\nloss: mean(a)\n")
    for verb in ("check", "summary"):
        res = invoke(verb, path, code=1)
        assert "cannot slice the symbolic dim T with [1:-1:2]" in res.stderr, res.stderr
        assert "\N{THUMBS DOWN SIGN}" not in res.stderr


def test_check_json_of_a_bad_spec_prints_only_the_error():
    res = invoke("check", BAD, "--json", code=1)
    assert res.stdout == ""
    assert res.stderr == f"error: {BAD}:14:7: unknown op 'rleu'\n  hint: did you mean 'relu' or 'le'?\n"

def test_compile_writes_every_graph(tmp_path):
    out_dir = tmp_path / "build"
    result = invoke("compile", MLP, "--set", "dims.H=16", "-o", out_dir)
    names = {"train.onnx", "eval.onnx", "infer.onnx", "grads.onnx", "apply.onnx", "manifest.json"}
    assert names <= {p.name for p in out_dir.iterdir()}
    written = result.stdout.split()
    assert {Path(p).name for p in written} == names
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"train", "eval", "infer", "grads", "apply"}
    assert manifest["float_dtype"] == "float32"
    assert manifest["params"]["W1"]["shape"] == [64, 16]
    onnx.checker.check_model(onnx.load(str(out_dir / "infer.onnx")))


def test_compile_float64(tmp_path):
    invoke("compile", MLP, "--set", "dims.H=8", "--dtype", "float64", "-o", tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["float_dtype"] == "float64"
    model = onnx.load(str(tmp_path / "infer.onnx"))
    x = next(i for i in model.graph.input if i.name == "x")
    assert x.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert "float64" in invoke("check", MLP, "--set", "dims.H=8", "--dtype", "float64").stdout


def test_compile_into_a_folder_with_a_directory_in_a_graphs_place(tmp_path):
    """compile -o DIR, where DIR/manifest.json was a directory, wrote the graphs and then said
    'cannot write DIR/manifest.json: it names a directory' with the hint to write to
    DIR/manifest.json/NAME, a name compile does not take; it now says so before writing."""
    (tmp_path / "manifest.json").mkdir()
    res = invoke("compile", MLP, "--set", "dims.H=8", "-o", tmp_path, code=1)
    assert f"error: {tmp_path / 'manifest.json'} is a directory, where the compiled graphs' manifest.json goes" \
        in res.stderr and "hint: pick another directory with -o" in res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


@pytest.mark.parametrize("command", ["check", "compile"])
def test_unknown_dtype(command, tmp_path):
    result = invoke(command, MLP, "--dtype", "float8", "-o", tmp_path, code=2) if command == "compile" \
        else invoke(command, MLP, "--dtype", "float8", code=2)
    assert "unknown --dtype 'float8'" in result.output
    assert "float32, float64 or float16" in result.output
    assert not list(tmp_path.iterdir())


def test_ops_table():
    out = invoke("ops").stdout
    for text in ("flowgrad ops", "matmul(a, b)", "relu(x)", "composite"):
        assert text in out


def test_ops_json():
    rows = json.loads(invoke("ops", "--json").stdout)
    assert len(rows) > 50
    keys = [(r["family"] in ("layer", "special form"), r["name"]) for r in rows]
    assert len(keys) == len(set(keys))  # a name is at most once an op and once a shorthand
    for r in rows:
        assert r["signature"].startswith(r["name"] + "("), r
        assert r["doc"].strip(), f"op {r['name']} has no doc"
        assert r["gradient"] in ("yes", "none", "composite")
    by_name = {r["name"]: r for r in rows}
    assert by_name["softmax"]["signature"] == "softmax(x, axis=-1)"
    assert by_name["argmax"]["gradient"] == "none"


def test_ops_lists_the_layer_shorthands_and_special_forms():
    """`flowgrad ops` listed ops only: dense, lstm, bidirectional, scan(block, ...) and the other
    calls a spec writes most were nowhere but in error hints, and scan's row showed the
    internal op (xs, body=...) the special form builds."""
    from compiler import recurrent  # noqa: F401
    from compiler.layers import LAYERS

    rows = json.loads(invoke("ops", "--json").stdout)
    layers = {r["name"]: r for r in rows if r["family"] == "layer"}
    assert set(layers) == set(LAYERS) >= {"dense", "conv2d", "embedding", "lstm", "gru", "rnn", "bidirectional", "lstm_cell"}
    assert layers["dense"]["signature"] == LAYERS["dense"].usage
    forms = {r["name"]: r for r in rows if r["family"] == "special form"}
    assert set(forms) == {"scan", "grad", "hvp", "jacobian", "zeros", "ones"}
    assert forms["scan"]["signature"].startswith("scan(block, over=")
    from compiler.recurrent import SCAN_KEYWORDS  # (stateful= was taken and not listed)
    assert set(re.findall(r"(\w+)=", forms["scan"]["signature"])) == set(SCAN_KEYWORDS)
    assert not [r for r in rows if r["name"] == "scan" and r["family"] != "special form"]
    assert "lstm(x, units" in invoke("ops").stdout


# ---------------------------------------------------------------- train / gradcheck / export / predict
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run: (run directory, the JSON it printed)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", MLP, "--set", "dims.H=16", "--epochs", "1", "--run-dir", run_dir,
                    "--quiet", "--json", "--device", "cpu", "--threads", "1")
    return run_dir, json.loads(result.stdout)


def test_train_json(trained):
    run_dir, info = trained
    assert info["epochs"] == 1 and info["steps"] > 0
    assert Path(info["run_dir"]) == run_dir
    assert np.isfinite(info["final"]["train_loss"]) and 0 <= info["final"]["valid_accuracy"] <= 1
    for name in ("run.json", "checkpoint.npz", "graphs/manifest.json", "graphs/infer.onnx"):
        assert (run_dir / name).exists(), name



def test_train_headline_counts_one_epoch_and_one_step_in_the_singular(tmp_path):
    """The run's headline said 'finished after 1 epochs, 1 steps'."""
    result = invoke("train", MLP, "--set", "dims.H=8", "--steps", "1", "--run-dir", tmp_path / "run",
                    "--device", "cpu", "--threads", "1")
    assert "mlp: finished after 1 epoch, 1 step, " in result.stderr


@pytest.mark.parametrize("given", [("--valid", "0,2"), ("--set", "train.data.valid=0,2")])
def test_a_fraction_with_a_decimal_comma_is_told_to_use_a_point(given, tmp_path):
    """--valid 0,2 (a European decimal) was read as a file named '0,2', told only to check the path."""
    res = invoke("train", MLP, *given, "--steps", "1", "--run-dir", tmp_path / "run", code=1)
    assert "0,2' does not exist" in res.stderr and "hint: a fraction is written with a decimal point: 0.2" in res.stderr


def test_a_quoted_tilde_is_told_to_be_written_out(tmp_path):
    """'~/x.yaml' quoted (or in a spec, where no shell expands it) was 'no such spec file' with the
    hint to check the path, which looks right: the hint now says '~' is the shell's, and the path."""
    home = os.path.expanduser("~")
    res = invoke("check", "~/no_such_spec.yaml", code=1)
    assert f"hint: '~' is expanded by a shell only where it is not quoted: write {home}/no_such_spec.yaml" in res.stderr
    res = invoke("train", MLP, "--set", "train.data={path: ~/no_such.npz}", "--steps", "1", "--run-dir",
                 tmp_path / "run", code=1)
    assert f"write {home}/no_such.npz" in res.stderr

def test_train_several_steps_per_call(trained, tmp_path):
    _, one = trained
    result = invoke("train", MLP, "--set", "dims.H=16", "--epochs", "1", "--run-dir", tmp_path / "run",
                    "--quiet", "--json", "--device", "cpu", "--threads", "1", "--steps-per-call", "8")
    info = json.loads(result.stdout)
    assert info["steps"] == one["steps"]
    assert info["final"]["train_loss"] == pytest.approx(one["final"]["train_loss"], rel=1e-5)
    assert "--steps-per-call" in invoke("train", MLP, "--steps-per-call", "0", code=2).output  # typer says why


def test_a_seed_beyond_int64_is_refused_not_a_traceback(tmp_path):
    """The graphs take the seed as an int64: 2**63 ended training (and gradcheck) with an
    OverflowError traceback at the first step, after the run directory was written."""
    from runtime.api import train
    from spec.errors import FlowgradError

    big = str(2**63)
    assert "--seed" in invoke("train", MLP, "--seed", big, "--run-dir", tmp_path / "run", code=2).output
    assert not (tmp_path / "run").exists()
    assert "--seed" in invoke("gradcheck", MLP, "--set", "dims.H=4", "--seed", big, code=2).output
    result = invoke("check", MLP, "--set", f"train.seed={big}", code=1)
    assert "train.seed must be <= 9223372036854775807" in result.output
    with pytest.raises(FlowgradError, match="^seed must be at most"):  # named as the API caller wrote it
        train(MLP, run_dir=str(tmp_path / "api"), seed=2**63, steps=1, device="cpu")


def test_predict_writes_exactly_the_named_file_or_says_why_not(trained, tmp_path):
    run_dir, _ = trained
    model = tmp_path / "m.onnx"
    invoke("export", run_dir, "-o", model)
    np.savez(tmp_path / "in.npz", x=np.zeros((3, 64), dtype=np.float32))
    invoke("predict", model, "--data", tmp_path / "in.npz", "-o", tmp_path / "out.bin", "--device", "cpu")
    assert set(np.load(tmp_path / "out.bin")) >= {"probs"} and not (tmp_path / "out.bin.npz").exists()
    # a missing directory is made, as export and plot make theirs
    invoke("predict", model, "--data", tmp_path / "in.npz", "-o", tmp_path / "new" / "dir" / "y.npz", "--device", "cpu")
    assert set(np.load(tmp_path / "new" / "dir" / "y.npz")) >= {"probs"}
    (tmp_path / "file").write_text("")
    res = invoke("predict", model, "--data", tmp_path / "in.npz", "-o", tmp_path / "file" / "y.npz", code=1)
    assert "a file is in the way" in res.stderr and "Traceback" not in res.stderr


def test_export_leaves_an_earlier_file_whole_when_the_write_fails(trained, tmp_path, monkeypatch):
    import runtime.checkpoint as C

    run_dir, _ = trained
    model = tmp_path / "m.onnx"
    invoke("export", run_dir, "-o", model)
    before = model.read_bytes()

    def full_disk(f, data, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(C, "_write", full_disk)
    res = invoke("export", run_dir, "-o", model, code=1)
    assert "No space left" in res.stderr
    assert model.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_gradcheck_of_a_truncated_recurrence_says_why_it_differs(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("flowgrad: 1\nname: t\ndoc: an lstm, no stop_gradient\ndims: {E: 3, H: 3}\n"
                    "inputs:\n  x: {shape: [N, T, E]}\n"
                    "graph:\n  hs: lstm(x, H, truncate=1)\nloss: mean(hs * hs) + mean(hs)\n")
    res = invoke("gradcheck", path, code=1)
    assert "FAIL" in res.stdout and "truncate=K cuts backpropagation through time on purpose" in res.stderr
    assert "stop_gradient(...) holds" not in res.stderr  # (the word in its doc is no call)


def test_gradcheck_of_a_stop_gradient_says_why_it_differs(tmp_path):
    # it failed without a word, as though the gradient were wrong
    path = tmp_path / "s.yaml"
    path.write_text("flowgrad: 1\nname: s\ndims: {D: 3}\ninputs:\n  x: {shape: [N, D]}\n"
                    "params:\n  W: {shape: [D, D], init: glorot_uniform}\ngraph:\n  h: x @ W\nloss: mean(stop_gradient(h) * h)\n")
    res = invoke("gradcheck", path, code=1)
    assert "FAIL" in res.stdout and "stop_gradient(...) holds its argument constant on purpose" in res.stderr
    assert "truncate" not in res.stderr


def test_gradcheck():
    out = invoke("gradcheck", MLP, "--set", "dims.H=8").stdout
    assert "gradient check" in out
    for p in ("W1", "b1", "W2", "b2", "W3", "b3"):
        assert p in out
    assert "ok" in out and "FAIL" not in out


@pytest.mark.parametrize("H", ["2", "4"])
def test_gradcheck_of_a_few_relu_units_passes(H):
    """With H=4 (2, 3) dropout zeroed every hidden unit of the check's batch and the zero bias
    b2 sat on its relu's kink: gradcheck said b2 FAIL (relative error ~1) on a correct model."""
    out = invoke("gradcheck", MLP, "--set", f"dims.H={H}").stdout
    assert "ok" in out and "FAIL" not in out


def test_gradcheck_of_a_stateful_language_model():
    """Its carried LSTM state has the spec's 32 rows, the check's batch 3: gradcheck ended in
    onnxruntime's Reshape traceback ('Input shape:{32,256}, requested shape:{3,256}')."""
    out = invoke("gradcheck", ROOT / "models" / "char_lstm_stateful.yaml").stdout
    assert "hs.U" in out and "ok" in out and "FAIL" not in out


def test_gradcheck_says_which_parameters_it_could_not_check(monkeypatch):
    import compiler.gradcheck

    monkeypatch.setattr(compiler.gradcheck, "gradcheck_spec",
                        lambda spec, seed: {"main": {"W": 1e-9, "b": float("nan")}})
    res = invoke("gradcheck", MLP, "--seed", "3")
    assert "not checkable here" in res.stdout and "FAIL" not in res.stdout
    assert "b: every probe crossed a non-differentiable point" in res.stderr and "--seed 3" in res.stderr


def test_gradcheck_of_a_mixed_precision_spec_checks_its_float64_gradient():
    """The check runs in float64: a spec with train.mixed_precision was refused, its message
    telling the user to leave a --dtype they never gave at float32."""
    out = invoke("gradcheck", MLP, "--set", "dims.H=8", "--set", "train.mixed_precision=float16").stdout
    assert "ok" in out and "FAIL" not in out


def gradcheck_table(text: str, name: str) -> list[list[str]]:
    return table_rows(text, f"{name}: gradient check (float64, central differences)")


def as_table(checks: list[dict]) -> list[list[str]]:
    """gradcheck --json's records as its table shows them."""
    def error(c):  # (an infinite error is "Infinity" in JSON, 'inf' in the table)
        return "-" if c["status"] == "not checkable here" else "inf" if c["relative_error"] == "Infinity" \
            else f"{c['relative_error']:.2e}"

    return [[c["objective"], c["parameter"], error(c), c["status"]] for c in checks]


def test_gradcheck_json_is_what_the_table_shows():
    """gradcheck had no --json: a CI job gating on every gradient passing, with the worst relative
    error, scraped the table. gradcheck --json prints its records, the tolerance and seed given,
    the worst error and whether the check passed, and nothing else on stdout."""
    from compiler.training import compile_spec
    from spec import load_spec

    args = ("gradcheck", ROOT / "models" / "gan.yaml", "--set", "dims.H=4", "--seed", "3", "--tolerance", "1e-5")
    shown, res = invoke(*args), invoke(*args, "--json")
    r = strict_json(res.stdout)
    assert set(r) == {"name", "seed", "tolerance", "passed", "worst_relative_error", "checks"}
    assert (r["name"], r["seed"], r["tolerance"], r["passed"]) == ("gan", 3, 1e-5, True)
    assert as_table(r["checks"]) == gradcheck_table(shown.stdout, "gan")
    # a record per objective and each parameter it trains
    cm = compile_spec(load_spec(str(ROOT / "models" / "gan.yaml"), ["dims.H=4"]), "float64", graphs=("grads",))
    assert [(c["objective"], c["parameter"]) for c in r["checks"]] \
        == [(o.name, p) for o in cm.objectives for p in cm.trained_params(o)]
    assert all(c["status"] == "ok" and 0 <= c["relative_error"] <= 1e-5 for c in r["checks"])
    assert r["worst_relative_error"] == max(c["relative_error"] for c in r["checks"])
    assert res.stderr == shown.stderr == ""


def test_gradcheck_json_of_a_failing_check_exits_1(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("flowgrad: 1\nname: t\ndims: {E: 3, H: 3}\ninputs:\n  x: {shape: [N, T, E]}\n"
                    "graph:\n  hs: lstm(x, H, truncate=1)\nloss: mean(hs * hs) + mean(hs)\n")
    shown, res = invoke("gradcheck", path, code=1), invoke("gradcheck", path, "--json", code=1)
    r = strict_json(res.stdout)
    assert r["passed"] is False and r["tolerance"] == 1e-4 and r["seed"] == 0
    assert as_table(r["checks"]) == gradcheck_table(shown.stdout, "t")
    assert [(c["parameter"], c["status"]) for c in r["checks"]] == [("hs.W", "FAIL"), ("hs.U", "FAIL"), ("hs.b", "FAIL")]
    assert r["worst_relative_error"] == max(c["relative_error"] for c in r["checks"]) > 1e-4
    assert "truncate=K cuts backpropagation through time on purpose" in res.stderr  # (the note, on stderr)


@pytest.mark.parametrize("error, passed", [(float("nan"), True), (float("inf"), False)])
def test_gradcheck_json_of_an_unchecked_or_an_infinite_error(error, passed, monkeypatch):
    """A parameter that no probe could check has no error and does not fail the check; an
    infinite error (a NaN or infinite gradient) fails it, and is "Infinity" as strict JSON writes
    an infinite number (the unchecked one's is null)."""
    import compiler.gradcheck

    monkeypatch.setattr(compiler.gradcheck, "gradcheck_spec", lambda spec, seed: {"main": {"W": 1e-9, "b": error}})
    code = 0 if passed else 1
    shown, res = invoke("gradcheck", MLP, code=code), invoke("gradcheck", MLP, "--json", code=code)
    r = strict_json(res.stdout)
    status = "not checkable here" if passed else "FAIL"
    assert r["checks"] == [{"objective": "main", "parameter": "W", "relative_error": 1e-9, "status": "ok"},
                           {"objective": "main", "parameter": "b", "relative_error": None if passed else "Infinity",
                            "status": status}]
    assert as_table(r["checks"]) == gradcheck_table(shown.stdout, "mlp")
    assert r["passed"] is passed and r["worst_relative_error"] == (1e-9 if passed else "Infinity")


def test_export_and_predict_round_trip(trained, tmp_path):
    run_dir, _ = trained
    model = tmp_path / "mlp.onnx"
    result = invoke("export", run_dir, "-o", model)
    assert result.stdout.strip() == str(model) and model.exists()
    assert "inputs x -> outputs probs, label" in result.output
    x = np.random.default_rng(0).uniform(0, 1, (7, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    # the path written on stdout, as export prints its (predict -o printed nothing there: $(...) was empty)
    assert invoke("predict", model, "--data", tmp_path / "in.npz", "-o", out, "--device", "cpu").stdout == f"{out}\n"
    with np.load(out) as got:
        probs, label = got["probs"], got["label"]
    assert probs.shape == (7, 10) and label.shape == (7,)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(label, probs.argmax(axis=1))
    # without -o the outputs are printed
    printed = invoke("predict", model, "--data", tmp_path / "in.npz", "--device", "cpu").stdout
    assert "probs: shape [7, 10] dtype float32" in printed
    # a long 1-D output shows its first 50 values, not 10 of them as a column of one-value rows
    np.savez(tmp_path / "in60.npz", x=np.random.default_rng(1).uniform(0, 1, (60, 64)).astype(np.float32))
    printed = invoke("predict", model, "--data", tmp_path / "in60.npz", "--device", "cpu").stdout
    labels = printed.split("label: shape [60] dtype int64\n")[1]
    assert "[[" not in labels and len(labels.replace("[", " ").replace("]", " ").split()) == 50, labels


@pytest.mark.parametrize("what", ["empty", "missing", "file"])
@pytest.mark.parametrize("verb", ["export", "eval"])
def test_export_or_eval_of_a_non_run_directory(verb, what, tmp_path):
    """eval said 'no such spec file: DIR/spec.yaml', without a hint, where export says what to pass."""
    target = {"empty": tmp_path, "missing": tmp_path / "nope", "file": tmp_path / "a.txt"}[what]
    if what == "file":
        target.write_text("hi")
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 64), np.float32))
    args = ["-o", tmp_path / "m.onnx"] if verb == "export" else ["--data", tmp_path / "in.npz"]
    result = invoke(verb, target, *args, code=1)
    assert result.output.startswith(f"error: {target} is not a run directory")
    assert "hint:" in result.output and "flowgrad train" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_predict_count_needs_a_generator(trained, tmp_path):
    run_dir, _ = trained
    model = tmp_path / "m.onnx"
    invoke("export", run_dir, "-o", model)
    res = invoke("predict", model, "--count", "3", code=1)
    assert "is not a generator: its inputs are x, not count and seed" in res.output


def test_predict_refuses_a_second_text(tmp_path):
    """predict --text "26 November 2026" --text "abc" printed the translation of the last text alone,
    without a word about the first."""
    res = invoke("predict", tmp_path / "m.onnx", "--text", "26 November 2026", "--text", "abc", code=1)
    assert "error: --text is given 2 times; predict reads one prompt" in res.output
    assert "hint: run predict once per text" in res.output


def test_predict_on_a_non_onnx_file(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_text("this is not a model\n")
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 64), np.float32))
    result = invoke("predict", bogus, "--data", tmp_path / "in.npz", code=1)
    assert result.output.startswith(f"error: {bogus} is not a valid ONNX model")
    result = invoke("predict", tmp_path / "missing.onnx", "--data", tmp_path / "in.npz", code=1)
    assert "no ONNX file at" in result.output and "hint: pass a model that 'flowgrad export" in result.output


def test_a_missing_spec_file_is_one_line_and_a_hint(tmp_path):
    """README: user mistakes end with a message and a hint; a mistyped spec path had no hint."""
    result = invoke("check", tmp_path / "nope.yaml", code=1)
    assert result.output.startswith(f"error: no such spec file: {tmp_path / 'nope.yaml'}")
    assert "hint: check the path" in result.output


def test_a_path_with_a_control_character_is_shown_whole_on_one_line(tmp_path):
    """A path from a list with Windows line ends ends in '\\r': the message, printed line by line, lost it
    and said 'no such spec file: mlp.yaml' of a file that exists, and a line break in a run directory's
    path put half the message on an 'error:' line of its own."""
    result = invoke("check", MLP + "\r", code=1)
    assert result.output.splitlines() == [f"error: no such spec file: {MLP}\\r",
                                          "  hint: check the path (a relative one starts at the working directory)"]
    (tmp_path / "run\n").mkdir()
    lines = invoke("eval", tmp_path / "run\n", code=1).output.splitlines()
    assert lines[0] == f"error: {tmp_path}/run\\n is not a run directory" and lines[1].startswith("  hint:")
    assert len(lines) == 2


# ---------------------------------------------------------------- help
COMMANDS = sorted(typer.main.get_command(app).commands)


def test_top_level_help():
    out = invoke("--help").stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(name):
    command = typer.main.get_command(app).commands[name]
    out = invoke(name, "--help").stdout
    assert f"Usage: flowgrad {name}" in " ".join(out.split())
    assert (command.help or "").strip(), f"{name} has no description"
    for param in command.params:
        assert (getattr(param, "help", None) or "").strip(), f"{name}: {param.name} has no help text"
        for flag in getattr(param, "opts", []):
            if flag.startswith("--"):
                assert flag in out, f"{name} --help does not show {flag}"


# ---------------------------------------------------------------- the installed command
FLOWGRAD = Path(sys.executable).parent / "flowgrad"


@pytest.mark.skipif(not FLOWGRAD.exists(), reason="flowgrad is not installed next to this Python")
def test_installed_command():
    env = {**os.environ, "COLUMNS": "120"}
    ok = subprocess.run([str(FLOWGRAD), "check", MLP], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "spec OK" in ok.stdout
    bad = subprocess.run([str(FLOWGRAD), "check", BAD], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stdout + bad.stderr
    assert bad.stderr.startswith(f"error: {BAD}:14:7: unknown op 'rleu'"), bad.stderr
    assert "did you mean 'relu'" in bad.stderr


def test_an_export_over_the_protobuf_limit_keeps_its_weights_beside_the_model(trained, tmp_path, monkeypatch):
    """Above 2 GB the weights go to a .data file, and onnx checks the model from its files
    (an in-memory check of such a model fails); tried here with the limit lowered."""
    import runtime.export as X

    run_dir, _ = trained
    monkeypatch.setattr(X, "EXTERNAL_DATA_BYTES", 1000)
    model = tmp_path / "big.onnx"
    invoke("export", run_dir, "-o", model)
    assert (tmp_path / "big.onnx.data").stat().st_size > 1000
    # export() names the files it wrote, and export --json counts the bytes of both (one rule, export's,
    # decides where the weights go: cli kept a copy of it)
    info = X.export(str(run_dir), str(tmp_path / "api.onnx"))
    assert info["files"] == [str(tmp_path / "api.onnx"), str(tmp_path / "api.onnx.data")]
    r = strict_json(invoke("export", run_dir, "-o", tmp_path / "json.onnx", "--json").stdout)
    assert r["bytes"] == sum((tmp_path / f).stat().st_size for f in ("json.onnx", "json.onnx.data"))
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 64), dtype=np.float32))
    invoke("predict", model, "--data", tmp_path / "in.npz", "--device", "cpu")


def test_user_mistakes_found_by_a_bug_hunt_are_one_line_errors(trained, tmp_path):
    """Each is a located or one-line error with exit code 1, not a traceback or a silent success."""
    import zipfile

    run_dir, _ = trained
    bad = tmp_path / "model[v2].yaml"  # brackets in a path: printed as they are
    bad.write_text("flowgrad: 1\nname: m\ngraph:\n  y: nope(1)\n")
    assert "model[v2].yaml:1:1: missing required key" in invoke("check", bad, code=1).stderr
    shadow = tmp_path / "shadow.yaml"
    shadow.write_text(open(MLP).read().replace("graph:", "blocks:\n  relu:\n    in: [v]\n    graph: {o: v * 0}\n"
                                                        "    out: [o]\ngraph:", 1))
    assert "has the name of an op" in invoke("check", shadow, code=1).stderr
    clash = tmp_path / "clash.yaml"
    clash.write_text(open(MLP).read().replace("  label: argmax(logits, axis=-1)", "  x: argmax(logits, axis=-1)"))
    assert "output 'x' has an input's name" in invoke("check", clash, code=1).stderr
    res = invoke("compile", MLP, "--set", "dims.H=8", "-o", Path(run_dir) / "graphs", code=1)
    assert "inside a run directory" in res.stderr
    assert "run's own files" in invoke("export", run_dir, "-o", Path(run_dir) / "best.npz", code=1).stderr
    huge = tmp_path / "huge.npz"  # an array header claiming a terabyte
    with zipfile.ZipFile(huge, "w") as z:
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**11, 16)})
            f.write(b"\0" * 64)
    res = invoke("eval", run_dir, "--data", huge, "--device", "cpu", code=1)
    assert "huge.npz" in res.stderr and "Traceback" not in res.stderr


def test_bench_times_the_batch_it_reports(tmp_path):
    """Data smaller than --batch-size repeats its examples up to the batch (it timed the data's
    1,797 rows and reported samples/s for 16,384)."""
    from runtime.bench import real_batch
    from spec import load_spec

    from compiler.training import compile_spec

    spec = load_spec(MLP, ["dims.H=8"])
    batch = real_batch(spec, compile_spec(spec, graphs=("train",)), 4000, 0)
    assert all(len(v) == 4000 for v in batch.values())


def test_bench_times_a_batch_of_the_rows_it_reports_whatever_the_batch_dim_is_named(tmp_path, monkeypatch):
    """A spec without data is timed on random inputs, whose batch dim was sized only where it was
    named N: x: [B, D] was timed on 4 rows and reported as batch 256, 1.16 M samples/s where a
    spec naming it N ran 145 k."""
    from runtime import bench as B
    from runtime.trainer import Trainer
    from spec import load_spec

    spec = tmp_path / "b.yaml"
    spec.write_text("flowgrad: 1\nname: b\ndims: {D: 3}\ninputs:\n  x: {shape: [B, D]}\n"
                    "graph:\n  h: dense(x, D)\nloss: mse(h, x)\ntrain:\n  batch_size: 256\n")
    rows = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, obj, batch, **kw: rows.append(len(batch["x"]))
                        or step(self, obj, batch, **kw))
    r = B.bench(load_spec(str(spec)), steps=2, warmup=0)
    assert r["batch_size"] == 256 and rows == [256, 256]
    rows.clear()
    assert B.bench(load_spec(str(spec)), 32, steps=1, warmup=0)["batch_size"] == 32 and rows == [32]


def test_bench_reports_and_takes_the_sizes_of_the_dims_it_times(tmp_path, monkeypatch):
    """A spec without data was timed on a random batch whose T (x: [N, T, D]) was 4, which
    neither the table nor --json said. bench reports the sizes it timed, says which took the
    default, and takes --dim NAME=SIZE as summary does, refused alike."""
    from runtime.trainer import Trainer

    spec = tmp_path / "seq.yaml"
    spec.write_text("flowgrad: 1\nname: seq\ndims: {D: 3, H: 8}\ninputs:\n  x: {shape: [N, T, D]}\n"
                    "graph:\n  h: dense(x, H)\nloss: mean(h * h)\ntrain: {batch_size: 16}\n")
    shapes = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, obj, batch, **kw: shapes.append(batch["x"].shape)
                        or step(self, obj, batch, **kw))
    r = json.loads(invoke("bench", spec, "--steps", "1", "--json").stdout)
    assert r["dims"] == {"N": 16, "T": 4} and r["dims_defaulted"] == ["T"] and shapes[-1] == (16, 4, 3)
    assert re.search(r"dim T\s+│\s+4 \(default; --dim to set\)", invoke("bench", spec, "--steps", "1").stdout)
    r = json.loads(invoke("bench", spec, "--steps", "1", "--json", "--dim", "T=32").stdout)
    assert r["dims"] == {"N": 16, "T": 32} and r["dims_defaulted"] == [] and shapes[-1] == (16, 32, 3)
    table = invoke("bench", spec, "--steps", "1", "--dim", "T=32").stdout
    assert re.search(r"dim T\s+│\s+32 │", table) and "default" not in table
    # refused as summary refuses them, with the same words
    for flag in ("T=0", "Q=3", "N=3", "T=x"):
        bench_err = invoke("bench", spec, "--dim", flag, code=1).stderr
        assert bench_err == invoke("summary", spec, "--dim", flag, code=1).stderr and "--dim" in bench_err
    # a spec with data: its batch sizes T, which the report gives; --dim is refused
    lstm = ROOT / "models" / "char_lstm.yaml"
    assert json.loads(invoke("bench", lstm, "--steps", "1", "--json").stdout)["dims"] == {"N": 32, "T": 64}
    assert "sizes T" in invoke("bench", lstm, "--steps", "1", "--dim", "T=8", code=1).stderr


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_check_shows_a_mixed_precision_step_in_its_half_type(half):
    """check of a spec trained under train.mixed_precision showed its nodes float32, the type of
    its master weights, where the training step computes them in the half type. It shows the
    step's type, and says the parameters stay float32 (JSON: step_dtype, master_dtype)."""
    mixed = ("--set", f"train.mixed_precision={half}")
    r = json.loads(invoke("check", MLP, *mixed, "--json").stdout)
    assert (r["step_dtype"], r["master_dtype"]) == (half, "float32")
    assert {n["dtype"] for n in r["nodes"]} == {half}
    text = invoke("check", MLP, *mixed).stdout
    assert f"the training step computes in {half}" in text and "(master weights) stay float32" in text
    plain = json.loads(invoke("check", MLP, "--json").stdout)
    assert (plain["step_dtype"], plain["master_dtype"]) == ("float32", "float32")
    assert {n["dtype"] for n in plain["nodes"]} == {"float32"}
    assert "mixed precision" not in invoke("check", MLP).stdout


def test_bench_takes_dtype_as_the_other_verbs_do():
    """check, compile, train, graph and summary take --dtype; bench had no such flag, so a
    float64 or float16 training step could not be timed without editing train.dtype."""
    common = ["--set", "dims.H=8", "--steps", "2", "--batch-size", "8", "--threads", "1", "--json"]
    assert json.loads(invoke("bench", MLP, *common).stdout)["dtype"] == "float32"
    assert json.loads(invoke("bench", MLP, *common, "--dtype", "float64").stdout)["dtype"] == "float64"
    sgd = ["--set", "train.optimizer={sgd: {lr: 0.1}}"]  # (Adam's eps is 0 in float16, for train too)
    assert json.loads(invoke("bench", MLP, *common, *sgd, "--dtype", "float16").stdout)["dtype"] == "float16"
    res = invoke("bench", MLP, *common, "--dtype", "float8", code=2)
    assert "unknown --dtype 'float8'" in res.stderr and "float32, float64 or float16" in res.stderr
    train_help = " ".join(invoke("train", "--help").stdout.split())
    bench_help = " ".join(invoke("bench", "--help").stdout.split())
    assert "Float type of the compiled graphs: float32, float64 or float16." in bench_help
    assert "Float type of the compiled graphs: float32, float64 or float16." in train_help
    assert "float64" in invoke("bench", MLP, "--set", "dims.H=8", "--steps", "1", "--threads", "1",
                               "--dtype", "float64").stdout  # (the table says what it timed)
    from runtime.bench import bench
    from spec import FlowgradError, load_spec

    with pytest.raises(FlowgradError, match="^unknown dtype 'float8'"):  # the API names its keyword
        bench(load_spec(MLP, ["dims.H=8"]), dtype="float8")


def test_bench_of_an_op_without_a_float64_kernel_ends_in_one_line():
    """bench --dtype float64 of the convnet ended in a traceback from onnxruntime (its CPU
    provider has no float64 Conv), where train says so in one line with a hint."""
    res = invoke("bench", str(ROOT / "models" / "convnet.yaml"), "--dtype", "float64", "--steps", "1",
                 "--batch-size", "4", "--threads", "1", code=1)
    assert "Traceback" not in res.output
    assert res.stderr.startswith("error: onnxruntime cannot run the timed training step: ")
    assert "Conv" in res.stderr and "no float64 kernel for that op" in res.stderr


def test_bench_of_a_mixed_precision_spec_says_the_steps_type():
    """bench of a spec with train.mixed_precision: bfloat16 timed bfloat16 steps, but its table
    and --json said float32 alone (the master weights' type), as for a float32 spec."""
    common = [MLP, "--set", "dims.H=8", "--steps", "1", "--batch-size", "8", "--threads", "1"]
    mixed = json.loads(invoke("bench", *common, "--set", "train.mixed_precision=bfloat16", "--json").stdout)
    assert (mixed["dtype"], mixed["step_dtype"]) == ("float32", "bfloat16")
    plain = json.loads(invoke("bench", *common, "--json").stdout)
    assert (plain["dtype"], plain["step_dtype"]) == ("float32", "float32")
    table = " ".join(invoke("bench", *common, "--set", "train.mixed_precision=bfloat16").stdout.split())
    assert "float32 (steps in bfloat16, mixed precision)" in table


def test_bench_reports_the_steps_it_timed():
    """With steps_per_call 3, steps=4 times two calls (6 steps): it reported 4; steps_per_call 0
    through the API divided by zero."""
    from runtime.bench import bench
    from spec import FlowgradError, load_spec

    spec = load_spec(MLP, ["dims.H=8"])
    r = bench(spec, batch_size=8, steps=4, warmup=1, steps_per_call=3, threads=1)
    assert r["steps"] == 6 and r["steps_per_call"] == 3
    with pytest.raises(FlowgradError, match="^steps_per_call must be an integer of at least 1"):
        bench(spec, steps_per_call=0)
    for bad in (0, -8, 2.5, 8.0):  # batch_size=0 timed the spec's batch, 2.5 a batch of 2, -8 failed in NumPy
        with pytest.raises(FlowgradError, match="^batch_size must be an integer of at least 1"):
            bench(spec, batch_size=bad)


def test_bench_reports_the_threads_it_ran_with():
    """bench --threads 1 --json recorded the device, dtype, batch and steps per call of its
    timing, but not the threads it ran with, so two records could not be compared."""
    common = ["--set", "dims.H=8", "--steps", "2", "--json"]
    assert json.loads(invoke("bench", MLP, *common, "--threads", "1").stdout)["threads"] == 1
    assert json.loads(invoke("bench", MLP, *common).stdout)["threads"] is None  # onnxruntime's default
    table = invoke("bench", MLP, "--set", "dims.H=8", "--steps", "2", "--threads", "1", "--steps-per-call", "2").stdout
    assert re.search(r"threads\s*│\s*1\b", table) and re.search(r"steps per call\s*│\s*2\b", table), table


@pytest.mark.parametrize("args, words", [
    (["train", MLP, "--threads", "0"], "Invalid value for '--threads'"),
    (["train", MLP, "--thread", "2"], "No such option: --thread"),
    (["check"], "Missing argument"),
    (["bogus"], "No such command 'bogus'"),
])
def test_a_bad_flag_is_one_line_and_a_hint(args, words):
    """click's usage errors printed a boxed panel of several lines; the command gives one
    error line and a hint, as for every other user mistake (exit code 2, click's for usage)."""
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 2 and lines[0].startswith("error: ") and words in lines[0], res.stderr
    assert lines[1].strip().startswith("hint: see ") and lines[1].rstrip().endswith("--help"), res.stderr


def test_names_the_output_cannot_encode_are_escaped_not_a_traceback(tmp_path):
    """Output in another encoding than UTF-8 (a terminal or a redirect in a Latin-1 locale) ended check
    and summary of a spec named in Chinese in a UnicodeEncodeError traceback."""
    spec = tmp_path / "u.yaml"
    spec.write_text(Path(MLP).read_text().replace("doc: Rectifier MLP", "doc: Réseau 中文 MLP").replace(
        "W1", "W中"), encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    for verb in ("check", "summary"):
        res = subprocess.run([sys.executable, str(ROOT / "cli.py"), verb, str(spec)], capture_output=True,
                             timeout=120, env=env)
        assert res.returncode == 0, res.stderr.decode("latin-1")
        assert "Réseau \\u4e2d\\u6587 MLP".encode("latin-1") in res.stdout and b"W\\u4e2d" in res.stdout


@pytest.mark.parametrize("args, verb", [(["check", MLP], "check"), (["plot", "curves", "runs/none"], "plot curves")])
def test_debug_after_the_verb_says_where_it_goes(args, verb):
    """flowgrad check spec.yaml --debug said 'No such option: --debug' and to see check's --help,
    which does not list it: --debug is the command's own option, given before the verb."""
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args, "--debug"], capture_output=True, text=True,
                         timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines[0] == "error: No such option: --debug", res.stderr
    assert lines[1].strip() == f"hint: --debug goes before the verb: cli.py --debug {verb} ...", res.stderr


@pytest.mark.parametrize("verb", [["eval", "runs/none"], ["export", "runs/none", "-o", "m.onnx"],
                                  ["plot", "samples", "runs/none"]])
def test_checkpoint_is_refused_alike_by_every_verb(verb, tmp_path):
    """eval said "unknown checkpoint 'Best'" (and only after reading the run), export and plot
    samples "unknown --checkpoint 'Best'"; one check, one message, naming the flag."""
    result = invoke(*verb, "--checkpoint", "Best", code=2)
    assert "unknown --checkpoint 'Best'" in result.output and "choose best or last" in result.output


def test_api_samples_refuse_an_unknown_checkpoint():
    """samples_of(run, checkpoint="Best") drew from the last checkpoint without a word."""
    from runtime.samples import samples_of
    from spec.errors import FlowgradError

    with pytest.raises(FlowgradError, match="^unknown checkpoint 'Best'"):
        samples_of("runs/none", checkpoint="Best")


def test_predict_and_export_leave_a_runs_graphs_alone(trained, tmp_path):
    """The run's own files were only those beside run.json: predict -o RUN/graphs/infer.onnx
    wrote its .npz over the run's inference graph (export then said it was not a valid ONNX
    model), and export -o RUN/graphs/train.onnx replaced the training graph the checkpoints fit."""
    run_dir, _ = trained
    model = tmp_path / "m.onnx"
    invoke("export", run_dir, "-o", model)
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 64), np.float32))
    graphs = Path(run_dir) / "graphs"
    before = {p.name: p.read_bytes() for p in graphs.iterdir()}
    for target in (graphs / "infer.onnx", graphs / "manifest.json", graphs / "new.npz"):
        res = invoke("predict", model, "--data", tmp_path / "in.npz", "-o", target, "--device", "cpu", code=1)
        assert "is one of the run's own files" in res.stderr
    res = invoke("export", run_dir, "-o", graphs / "train.onnx", code=1)
    assert "is one of the run's own files" in res.stderr
    res = invoke("predict", model, "--data", tmp_path / "in.npz", "-o", Path(run_dir) / "best.before_partial.npz",
                 code=1)
    assert "is one of the run's own files" in res.stderr
    assert {p.name: p.read_bytes() for p in graphs.iterdir()} == before
    assert not (Path(run_dir) / "best.before_partial.npz").exists()


def test_predict_refuses_to_write_over_its_own_model_or_data(trained, tmp_path):
    """predict MODEL --data X -o MODEL (or -o X) wrote the outputs' .npz over the model or the
    inputs it had just read, and said 'wrote ...': the exported model was gone."""
    run_dir, _ = trained
    model = tmp_path / "m.onnx"
    invoke("export", run_dir, "-o", model)
    data = tmp_path / "in.npz"
    np.savez(data, x=np.zeros((2, 64), np.float32))
    before = model.read_bytes(), data.read_bytes()
    res = invoke("predict", model, "--data", data, "-o", model, "--device", "cpu", code=1)
    assert f"-o {model} is the model's file" in res.stderr and "hint:" in res.stderr
    res = invoke("predict", model, "--data", data, "-o", tmp_path / "." / "in.npz", "--device", "cpu", code=1)
    assert "is --data's file" in res.stderr
    assert (model.read_bytes(), data.read_bytes()) == before
    invoke("predict", model, "--data", data, "-o", tmp_path / "out.npz", "--device", "cpu")


def test_outputs_replace_only_files_of_their_own_kind(trained, tmp_path):
    """export -o models/mlp.yaml replaced the spec with an ONNX model without a word, predict -o
    notes.txt the notes with an .npz, and compile -o DIR a manifest.json or NAME.onnx that was
    not flowgrad's. Each refuses a file not of its kind, naming it; a previous export, outputs
    .npz or compiled graphs (and an empty file) are written over as before."""
    import shutil

    run_dir, _ = trained
    spec = tmp_path / "mlp.yaml"
    shutil.copy(MLP, spec)
    notes = tmp_path / "notes.txt"
    notes.write_text("notes")
    res = invoke("export", run_dir, "-o", spec, code=1)
    assert f"{spec} exists and is not an ONNX model" in res.stderr and "pick another output path with -o" in res.stderr
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    for _ in range(2):
        invoke("export", run_dir, "-o", model)
    data = tmp_path / "in.npz"
    np.savez(data, x=np.zeros((2, 64), np.float32))
    shutil.copy(model, tmp_path / "other.onnx")
    for target, words in ((notes, "is not an .npz of outputs"), (spec, "is not an .npz of outputs"),
                          (tmp_path / "other.onnx", "is not an .npz of outputs")):
        res = invoke("predict", model, "--data", data, "-o", target, "--device", "cpu", code=1)
        assert f"{target} exists and {words}" in res.stderr and "-o" in res.stderr
    shutil.copy(run_dir / "checkpoint.npz", tmp_path / "kept.npz")
    res = invoke("predict", model, "--data", data, "-o", tmp_path / "kept.npz", "--device", "cpu", code=1)
    assert "is not an .npz of outputs" in res.stderr
    for _ in range(2):
        invoke("predict", model, "--data", data, "-o", tmp_path / "out.npz", "--device", "cpu")
    for name in ("infer.onnx", "manifest.json"):
        build = tmp_path / name.replace(".", "_")
        for _ in range(2):
            invoke("compile", MLP, "--set", "dims.H=8", "-o", build)
        shutil.copy(spec, build / name)
        res = invoke("compile", MLP, "--set", "dims.H=8", "-o", build, code=1)
        assert f"{build / name} exists and is not" in res.stderr and "-o" in res.stderr
    # a plain file as compile's -o was 'cannot write the graphs to notes.txt: File exists'
    res = invoke("compile", MLP, "--set", "dims.H=8", "-o", notes, code=1)
    assert f"{notes} exists and is not a directory" in res.stderr and "pick another output path with -o" in res.stderr
    assert spec.read_text() == open(MLP).read() and notes.read_text() == "notes"


def test_predict_replaces_earlier_outputs_but_not_an_npz_of_data(trained, tmp_path):
    """predict -o refused only a file that was no .npz of arrays, and its own --data: it wrote its
    outputs over any other .npz of data (a training set's x and y, the inputs of another run)
    without a word. Such a file is refused, naming its arrays; the outputs predict wrote before
    (marked so; or holding exactly the outputs, as before predict marked them) are written over,
    and the outputs read as before with numpy."""
    run_dir, _ = trained
    model = tmp_path / "m.onnx"
    invoke("export", run_dir, "-o", model)
    data, train_set, other = tmp_path / "in.npz", tmp_path / "train.npz", tmp_path / "inputs.npz"
    np.savez(data, x=np.zeros((2, 64), np.float32))
    np.savez(train_set, x=np.ones((3, 64), np.float32), y=np.zeros(3, np.int64))
    np.savez_compressed(other, x=np.ones((4, 64), np.float32))
    for target, shown in ((train_set, "x, y"), (other, "x")):
        before = target.read_bytes()
        res = invoke("predict", model, "--data", data, "-o", target, "--device", "cpu", code=1)
        assert f"error: {target} is an .npz of data ({shown}), not earlier outputs: writing there would replace it" \
            in res.stderr, res.stderr
        assert "hint: pick another output path with -o (outputs replace only the outputs predict wrote before)" \
            in res.stderr, res.stderr
        assert target.read_bytes() == before
    out = tmp_path / "out.npz"
    for _ in range(2):  # its own earlier output is replaced
        invoke("predict", model, "--data", data, "-o", out, "--device", "cpu")
    with np.load(out) as z:
        assert sorted(z.files) == ["label", "probs"] and z["probs"].shape == (2, 10)
    # outputs written before predict marked its files: the arrays it writes, and no others
    with np.load(out) as z:
        np.savez(tmp_path / "old.npz", **{k: z[k] for k in z.files})
    invoke("predict", model, "--data", data, "-o", tmp_path / "old.npz", "--device", "cpu")
    # another model's outputs, which predict wrote, are replaced too
    from runtime.checkpoint import predictions_bytes

    (tmp_path / "gen.npz").write_bytes(predictions_bytes({"tokens": np.arange(5)}))
    invoke("predict", model, "--data", data, "-o", tmp_path / "gen.npz", "--device", "cpu")
    with np.load(tmp_path / "gen.npz") as z:
        assert sorted(z.files) == ["label", "probs"]


def test_train_does_not_write_a_run_over_a_directory_of_other_files(tmp_path):
    """--run-dir named a directory that holds no run but files of a run's names (a project
    folder with its spec.yaml): training wrote the run there, replacing the user's spec.yaml
    with the YAML of the spec after --set (its comments gone) and their result.json."""
    project = tmp_path / "project"
    project.mkdir()
    spec = project / "spec.yaml"
    spec.write_text(Path(MLP).read_text())
    (project / "result.json").write_text("my notes\n")
    before = spec.read_text()
    res = invoke("train", spec, "--set", "dims.H=8", "--steps", "1", "--run-dir", project, "--quiet", "--device", "cpu",
                 code=1)
    assert f"error: {project} is not a run directory, and training would replace its result.json, spec.yaml" \
        in res.stderr
    assert "hint: pick a new or empty directory with --run-dir" in res.stderr
    invoke("train", spec, "--set", "dims.H=8", "--steps", "1", "--run-dir", project, "--quiet", "--device", "cpu",
           "--overwrite", code=1)
    assert spec.read_text() == before and (project / "result.json").read_text() == "my notes\n"
    assert sorted(p.name for p in project.iterdir()) == ["result.json", "spec.yaml"]
    # an empty directory, a new one, and a run's own directory are run directories
    (tmp_path / "empty").mkdir()
    for run in (tmp_path / "empty", tmp_path / "new", tmp_path / "new"):
        invoke("train", MLP, "--set", "dims.H=8", "--steps", "1", "--run-dir", run, "--quiet", "--device", "cpu",
               *(["--overwrite"] if (run / "run.json").exists() else []))


def test_a_run_dir_that_is_a_file_says_so(tmp_path):
    """--run-dir naming a file said 'cannot create the run directory notes.txt: File exists' with
    a hint about the parent folder, and with --resume 'nothing to resume: no checkpoint in
    notes.txt' and to train without --resume first; a file on the way to it said 'Not a
    directory'. The file is left alone."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    for run_dir, extra, words in ((notes, [], "is a file, not a directory"),
                                  (notes, ["--resume"], "is a file, not a directory"),
                                  (notes, ["--overwrite"], "is a file, not a directory"),
                                  (tmp_path / "dangling", [], "is a symbolic link to nothing, not a directory"),
                                  (notes / "run", [], "a file is in the way")):
        res = invoke("train", MLP, "--set", "dims.H=8", "--steps", "1", "--run-dir", run_dir, "--quiet",
                     "--device", "cpu", *extra, code=1)
        assert "error: " in res.stderr and str(run_dir) in res.stderr and words in res.stderr, res.stderr
        assert "File exists" not in res.stderr and "Not a directory" not in res.stderr
        assert "hint:" in res.stderr and "--run-dir" in res.stderr
    assert notes.read_text() == "mine\n"


def test_a_resumed_run_keeps_its_float_type(tmp_path):
    """--resume compiled the spec in --dtype, or without it in float32: a float64 run resumed
    without its --dtype went on in float32 (run.json then said float32), and one resumed with
    another --dtype skipped the check that it trains on its own examples, so --valid 0.3 took
    examples it had validated on into training without a word."""
    run = tmp_path / "run"
    common = ["--set", "dims.H=8", "--run-dir", run, "--quiet", "--device", "cpu", "--threads", "1"]
    invoke("train", MLP, *common, "--steps", "2", "--dtype", "float64")
    invoke("train", MLP, *common, "--steps", "4", "--resume")
    assert json.loads((run / "run.json").read_text())["dtype"] == "float64"
    from runtime.checkpoint import load_checkpoint

    state, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert meta["step"] == 4 and state["W1"].dtype == np.float64
    res = invoke("train", MLP, *common, "--steps", "6", "--resume", "--dtype", "float32", "--valid", "0.3", code=1)
    assert "--dtype float32 differs from the float type float64 that" in res.stderr and "hint:" in res.stderr
    res = invoke("train", MLP, *common, "--steps", "6", "--resume", "--valid", ".30", code=1)
    assert "the training examples differ from those the run was trained on" in res.stderr
    assert "(--valid .30, where the run had 0.2)" in res.stderr  # (it named no flag; then as 0.3, not as typed)
    assert f"from its weights with --init-from {run} --run-dir NEW_DIR" in res.stderr  # (a bare --init-from)
    res = invoke("train", MLP, *common, "--steps", "6", "--resume", "--set", "train.data.valid=0.1", code=1)
    assert "(train.data.valid 0.1, where the run had 0.2)" in res.stderr
    invoke("train", MLP, *common, "--steps", "6", "--resume", "--dtype", "float64")


def test_a_runs_spec_yaml_names_the_overrides_as_given(tmp_path):
    """The header of a run's spec.yaml names flowgrad train's overrides as --set flags (and the
    API's as overrides=, tests/test_runtime.py)."""
    run = tmp_path / "run"
    invoke("train", MLP, "--set", "dims.H=8", "--set", "train.batch_size=32", "--steps", "1", "--run-dir", run,
           "--quiet", "--device", "cpu", "--threads", "1")
    assert (run / "spec.yaml").read_text().splitlines()[0] == \
        "# the spec this run trained: mlp.yaml --set dims.H=8 --set train.batch_size=32"
    # an override with a line break wrote the rest of it on a line of its own, which ended the run's spec.yaml
    # (eval and export said its YAML was invalid)
    invoke("train", MLP, "--set", "train.optimizer={sgd:\n {lr: 0.1}}", "--set", "dims.H=8", "--steps", "1",
           "--run-dir", run, "--quiet", "--device", "cpu", "--threads", "1", "--overwrite")
    assert (run / "spec.yaml").read_text().splitlines()[0] == \
        "# the spec this run trained: mlp.yaml --set train.optimizer={sgd:\\n {lr: 0.1}} --set dims.H=8"
    invoke("export", run, "-o", tmp_path / "m.onnx")


def test_a_runs_spec_yaml_reads_back_strings_that_look_like_numbers(tmp_path):
    """With --set, the run's spec.yaml is the spec's YAML dump, which wrote the name '1e5' unquoted:
    eval (and the API's load of a run) then read it as the number 100000.0 and refused the run's own spec."""
    spec = tmp_path / "m.yaml"
    spec.write_text(Path(MLP).read_text().replace("name: mlp", "name: '1e5'"))
    run = tmp_path / "run"
    invoke("train", spec, "--set", "dims.H=8", "--set", "train.data.test=0.1", "--steps", "1", "--run-dir", run,
           "--quiet", "--device", "cpu", "--threads", "1")
    assert "name: '1e5'" in (run / "spec.yaml").read_text()
    invoke("eval", run, "--device", "cpu")


def test_a_resume_validates_on_the_examples_the_run_validated_on(tmp_path):
    """run.json hashed the training examples only: a resume with another --valid file, or the
    same file edited, went on without a word, its records and best.npz comparing two validation
    sets; one that added validation to a run without ended in a KeyError traceback."""
    from runtime import data as D

    digits = D.load_digits().arrays
    np.savez(tmp_path / "d.npz", x=digits["x"][:600], y=digits["y"][:600])
    for name, rows in (("v1", slice(600, 800)), ("v2", slice(800, 1000))):
        np.savez(tmp_path / f"{name}.npz", x=digits["x"][rows], y=digits["y"][rows])
    run = tmp_path / "run"
    common = ["--set", "dims.H=8", "--data", tmp_path / "d.npz", "--run-dir", run, "--quiet", "--device", "cpu",
              "--threads", "1"]
    invoke("train", MLP, *common, "--valid", tmp_path / "v1.npz", "--epochs", "1")
    assert json.loads((run / "run.json").read_text())["valid_hash"]
    res = invoke("train", MLP, *common, "--valid", tmp_path / "v2.npz", "--epochs", "2", "--resume", code=1)
    assert f"error: --resume {run}: the validation examples differ from those the run validated on " \
           f"(--valid {tmp_path / 'v2.npz'}, where the run had {tmp_path / 'v1.npz'})" in res.stderr
    assert f"--init-from {run} --run-dir NEW_DIR" in res.stderr
    edited = dict(np.load(tmp_path / "v1.npz"))
    np.savez(tmp_path / "v1.npz", x=edited["x"], y=edited["y"][::-1].copy())
    res = invoke("train", MLP, *common, "--valid", tmp_path / "v1.npz", "--epochs", "2", "--resume", code=1)
    assert f"({tmp_path / 'v1.npz'} has changed since the run validated on it)" in res.stderr
    res = invoke("train", MLP, *common, "--valid", "0", "--epochs", "2", "--resume", code=1)
    assert f"(--valid 0, where the run had {tmp_path / 'v1.npz'})" in res.stderr  # (it showed "--valid 0.0")
    np.savez(tmp_path / "v1.npz", **edited)  # its own examples again
    invoke("train", MLP, *common, "--valid", tmp_path / "v1.npz", "--epochs", "2", "--resume")
    # a run without validation, resumed with it
    invoke("train", MLP, *common, "--valid", "0", "--epochs", "1", "--overwrite")
    assert json.loads((run / "run.json").read_text())["valid_hash"] is None
    res = invoke("train", MLP, *common, "--valid", tmp_path / "v2.npz", "--epochs", "2", "--resume", code=1)
    assert f"(--valid {tmp_path / 'v2.npz'}, where the run had none)" in res.stderr
    # a run.json from before runs recorded the hash resumes as before, and one that adds validation is refused
    info = json.loads((run / "run.json").read_text())
    del info["valid_hash"]
    (run / "run.json").write_text(json.dumps(info))
    res = invoke("train", MLP, *common, "--valid", tmp_path / "v2.npz", "--epochs", "2", "--resume", code=1)
    assert "the validation examples differ" in res.stderr
    invoke("train", MLP, *common, "--valid", "0", "--epochs", "2", "--resume")
    v1 = tmp_path / "v1.npz"
    invoke("train", MLP, *common, "--valid", v1, "--epochs", "1", "--overwrite")
    info = json.loads((run / "run.json").read_text())
    del info["valid_hash"]
    (run / "run.json").write_text(json.dumps(info))
    invoke("train", MLP, *common, "--valid", tmp_path / "v2.npz", "--epochs", "2", "--resume")


@pytest.mark.parametrize("content", ["garbage", "[1]", '{"meta": [1]}', None])
def test_a_damaged_run_json_is_one_line_for_export_and_plot_samples(content, tmp_path):
    """export read run.json catching only OSError: a run.json cut short or not a record ended in
    json's JSONDecodeError or an AttributeError traceback; plot samples of an auto-encoder did
    the same, and one without run.json ended in FileNotFoundError's."""
    import shutil

    run = tmp_path / "dae"
    invoke("train", ROOT / "models" / "dae.yaml", "--set", "dims.H=4", "--steps", "1", "--run-dir", run, "--quiet",
           "--device", "cpu", "--threads", "1")
    if content is None:
        (run / "run.json").unlink()
        invoke("export", run, "-o", tmp_path / "m.onnx")  # (export needs nothing from run.json)
        res = invoke("plot", "samples", run, "-o", tmp_path / "s.png", code=1)
        assert f"error: {run} has no run.json" in res.stderr
    else:
        (run / "run.json").write_text(content)
        for args in (["export", run, "-o", tmp_path / "m.onnx"], ["plot", "samples", run, "-o", tmp_path / "s.png"]):
            res = invoke(*args, code=1)
            assert res.stderr.startswith(f"error: {run / 'run.json'} is ") and "malformed" in res.stderr
            assert "hint: pass a run directory that 'flowgrad train' wrote" in res.stderr
        assert not (tmp_path / "m.onnx").exists()
    assert not (tmp_path / "s.png").exists()
    shutil.rmtree(run)


def test_a_spec_without_a_loss_has_nothing_to_train_time_or_check(tmp_path):
    """Such a spec compiles its inference graph only: train --data said 'no examples are left to
    train on: x.npz holds 0' (the examples of no input), bench ended in a StopIteration traceback
    and gradcheck printed an empty table and exited 0, as if every gradient had passed."""
    spec = tmp_path / "noloss.yaml"
    spec.write_text("flowgrad: 1\nname: t\ninputs:\n  x: {shape: [N, 3]}\ngraph:\n  y: relu(x)\noutputs:\n  o: y\n")
    np.savez(tmp_path / "x.npz", x=np.ones((10, 3), np.float32))
    for args, what in ((["train", spec, "--data", tmp_path / "x.npz", "--run-dir", tmp_path / "run", "--quiet"],
                        "train"), (["bench", spec, "--steps", "1"], "time"), (["gradcheck", spec], "check")):
        res = invoke(*args, code=1)
        assert res.stderr.startswith(f"error: the spec has no loss, so there is nothing to {what}\n"), res.stderr
        assert "hint: add a 'loss:'" in res.stderr
    assert not (tmp_path / "run").exists()
    invoke("compile", spec, "-o", tmp_path / "build")  # its inference graph


def test_paths_and_shapes_are_printed_as_they_are_and_commands_quoted(tmp_path):
    """rich read a [bracketed] part of a path, or a shape starting with a lowercase dim, as
    markup and dropped it: check's warning and its 'flowgrad summary' line, compile's table,
    train's 'run written to' and its suggested commands, and the 'wrote' lines of export and
    plot showed '.../runs /...' for '.../runs [v2]/...', and check and summary showed [t, N]
    as an empty cell. The suggested commands now quote a path with spaces for the shell."""
    folder = tmp_path / "my runs [v2]"
    folder.mkdir()
    spec = folder / "m.yaml"
    spec.write_text("flowgrad: 1\nname: m\ninputs:\n  x: {shape: [t, N]}\nparams:\n  w: {shape: [4], init: ones}\n"
                    "graph:\n  y: relu(x) * mean(w)\n  unused: relu(x)\nloss: mean(y)\n")
    res = invoke("check", spec)
    assert f"warning: {spec}:9:3: graph entry 'unused' is never used" in res.stderr
    assert f"flowgrad summary '{spec}'" in res.stderr
    assert "[t, N]" in res.stdout and "[t, N]" in invoke("summary", spec).stdout
    res = invoke("compile", spec, "-o", folder / "build")
    assert str(folder / "build" / "eval.onnx") in res.stderr
    run = folder / "run 1"
    res = invoke("train", MLP, "--set", "dims.H=4", "--steps", "1", "--run-dir", run, "--quiet", "--device", "cpu")
    assert f"run written to {run}\n" in res.stderr
    assert f"flowgrad plot curves '{run}' -o '{run / 'curves.png'}'" in res.stderr
    assert f"flowgrad export '{run}' -o mlp.onnx" in res.stderr
    assert f"wrote {folder / 'm.onnx'}: inputs x" in invoke("export", run, "-o", folder / "m.onnx").stderr
    assert f"wrote {folder / 'c.png'}" in invoke("plot", "curves", run, "-o", folder / "c.png").stderr
    assert f"wrote {folder / 'g.dot'}" in invoke("graph", spec, "-o", folder / "g.dot").stderr


def test_an_objective_left_nothing_to_train_says_why(tmp_path):
    """--freeze '*' (or one freezing every parameter of an objective), and parameters all marked
    trainable: false, were said to be an objective whose params ['*'] 'match none of: W1, b1,
    ...', the very parameters it lists, located at the spec's loss: the flag went unnamed."""
    res = invoke("train", MLP, "--set", "dims.H=4", "--steps", "1", "--run-dir", tmp_path / "run", "--quiet",
                 "--freeze", "*", code=1)
    assert res.stderr.startswith("error: the loss trains no parameters: --freeze '*' keeps all of its "
                                 "parameters fixed (W1, b1, W2, b2, W3, b3)\n"), res.stderr
    assert "hint: freeze fewer parameters (--freeze)" in res.stderr and "match none" not in res.stderr
    res = invoke("train", ROOT / "models" / "gan.yaml", "--set", "dims.H=4", "--steps", "1", "--run-dir",
                 tmp_path / "run", "--quiet", "--freeze", "G.*", code=1)
    assert "objective 'generator' trains no parameters: --freeze 'G.*' keeps all of its parameters fixed" in res.stderr
    fixed = [f"params.{p}.trainable=false" for p in ("W1", "b1", "W2", "b2", "W3", "b3")]
    res = invoke("check", MLP, *[a for f in fixed for a in ("--set", f)], code=1)
    assert "trains no parameters: all of its parameters are marked trainable: false (W1, b1," in res.stderr
    assert not (tmp_path / "run").exists()


def test_a_freeze_glob_that_matches_nothing_names_the_flag(tmp_path):
    """--freeze 'zz*' said "frozen parameters ['zz*'] match no parameter", not naming the flag;
    and a misspelt glob beside one that matched (--freeze W1 --freeze 'zz*') trained with W1
    alone frozen, without a word."""
    for globs in (["zz*"], ["W1", "zz*"]):
        res = invoke("train", MLP, "--set", "dims.H=4", "--steps", "1", "--run-dir", tmp_path / "run", "--quiet",
                     *[a for g in globs for a in ("--freeze", g)], code=1)
        assert res.stderr.startswith("error: --freeze 'zz*' matches no parameter\n"), res.stderr
        assert "hint: parameters: W1, b1, W2, b2, W3, b3" in res.stderr
        assert not (tmp_path / "run").exists()


def test_graph_and_summary_refuse_flags_they_would_ignore(tmp_path):
    """graph --objective without --backward or --optimized drew the flow graph and took any name,
    even a misspelt one; --backward with --optimized drew the optimized step alone; summary
    --objective of a spec without a loss took any name."""
    res = invoke("graph", MLP, "--objective", "mian", "-o", tmp_path / "g.dot", code=1)
    assert "--objective mian picks whose gradients to draw, with --backward or --optimized" in res.stderr
    res = invoke("graph", MLP, "--backward", "--optimized", "-o", tmp_path / "g.dot", code=1)
    assert "--backward and --optimized draw two different pictures" in res.stderr
    assert not (tmp_path / "g.dot").exists()
    assert "unknown objective 'mian'" in invoke("graph", MLP, "--backward", "--objective", "mian", "-o",
                                                tmp_path / "g.dot", code=1).stderr
    invoke("graph", MLP, "--backward", "--objective", "main", "-o", tmp_path / "g.dot")
    spec = tmp_path / "noloss.yaml"
    spec.write_text("flowgrad: 1\nname: t\ninputs:\n  x: {shape: [N, 3]}\ngraph:\n  y: relu(x)\noutputs:\n  o: y\n")
    res = invoke("summary", spec, "--objective", "main", code=1)
    assert "the spec has no loss, so it has no gradients or training step" in res.stderr
    invoke("summary", spec)


def test_plot_samples_reconstructs_the_count_asked_or_says_why_not(tmp_path):
    """--count beyond the examples the run held out drew them all without a word (--count 1000
    of an auto-encoder validating on 360 digits drew 360), and a run without a validation split
    reconstructed training digits under the title 'held-out digits'."""
    from runtime.samples import samples_of

    common = ["--set", "dims.H=4", "--steps", "1", "--quiet", "--device", "cpu", "--threads", "1"]
    dae = ROOT / "models" / "dae.yaml"
    invoke("train", dae, *common, "--run-dir", tmp_path / "dae", "--valid", "0.01")  # 18 of 1,797 digits
    res = invoke("plot", "samples", tmp_path / "dae", "--count", "19", "-o", tmp_path / "s.png", code=1)
    assert "--count 19 is more than the 18 examples the run held out for validation" in res.stderr
    assert "hint: reconstruct at most 18 of them (--count 18)" in res.stderr and not (tmp_path / "s.png").exists()
    s = samples_of(str(tmp_path / "dae"), count=18)
    assert len(s.images["input"]) == 18 and s.note.startswith("held-out digits")
    invoke("train", dae, *common, "--run-dir", tmp_path / "all", "--valid", "0")
    assert samples_of(str(tmp_path / "all"), count=3).note.startswith("training digits")
    assert "more than the 1797 examples of the run's data" in invoke(
        "plot", "samples", tmp_path / "all", "--count", "1798", "-o", tmp_path / "s.png", code=1).stderr


def test_bench_refuses_steps_per_call_where_training_does():
    """bench --steps-per-call 8 of the GAN timed 8 discriminator steps in one call, then 8
    generator steps, and reported the per-step time of a run that train refuses to make (its
    objectives alternate, one step each per batch)."""
    gan = ROOT / "models" / "gan.yaml"
    res = invoke("bench", gan, "--set", "dims.H=4", "--steps", "2", "--steps-per-call", "2", "--threads", "1", code=1)
    assert "--steps-per-call does not work with a schedule of several objectives (discriminator, generator)" \
        in res.stderr and "hint: their steps alternate" in res.stderr
    invoke("bench", gan, "--set", "dims.H=4", "--steps", "2", "--threads", "1", "--batch-size", "8")


def test_compile_does_not_write_into_a_run_directory_itself(trained):
    """compile -o RUN_DIR (not inside it: the directory itself) wrote train.onnx, manifest.json
    and the other graphs beside the run's checkpoints and run.json."""
    run_dir, _ = trained
    before = sorted(p.name for p in Path(run_dir).iterdir())
    for target in (run_dir, f"{run_dir}/"):
        res = invoke("compile", MLP, "--set", "dims.H=8", "-o", target, code=1)
        assert f"{target} is a run directory" in res.stderr and "pick another directory with -o" in res.stderr
    assert sorted(p.name for p in Path(run_dir).iterdir()) == before


@pytest.mark.parametrize("args", [[], ["plot"]])
def test_a_bare_command_prints_its_help_without_an_empty_error(args):
    """'flowgrad' and 'flowgrad plot' alone printed their help, then 'error: ' with nothing after
    it and a hint to see the --help just shown."""
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "120"})
    assert "Usage:" in res.stdout and "Commands" in res.stdout
    assert "error" not in res.stderr and "hint" not in res.stderr, res.stderr
    assert res.returncode == 2  # click's, as for a usage mistake


@pytest.mark.parametrize("args", [
    ["train", MLP, "--data", ""], ["train", MLP, "--init-from", " "], ["train", MLP, "--run-dir", ""],
    ["train", MLP, "--valid", ""], ["predict", "m.onnx", "--count", "1", "-o", ""], ["graph", MLP, "-o", ""],
])
def test_an_empty_option_is_refused_not_taken_as_not_given(args, tmp_path, monkeypatch):
    """A path given as '' (a script's --data "$DATA" with DATA unset) was taken as not given:
    train --data '' trained on the spec's own data, --init-from '' started from scratch and
    --run-dir '' wrote runs/<name>, each without a word; predict -o '' printed the outputs
    and graph -o '' wrote <name>.svg."""
    monkeypatch.chdir(tmp_path)  # where runs/mlp and mlp.svg went
    flag = next(a for i, a in enumerate(args) if a.startswith("-") and not str(args[i + 1]).strip())
    extra = ["--run-dir", tmp_path / "run"] if args[0] == "train" and flag != "--run-dir" else []
    res = invoke(*args, *extra, "--steps", "1", "--quiet", code=1) if args[0] == "train" else invoke(*args, code=1)
    assert res.stderr.startswith(f"error: {flag} is empty\n") and f"hint: give {flag} a value" in res.stderr
    assert not (tmp_path / "run").exists() and not Path("runs/mlp").exists() and not Path("mlp.svg").exists()


@pytest.mark.parametrize("args", [
    ["compile", MLP, "-o", ""], ["eval", "RUN", "--data", ""], ["export", "RUN", "-o", ""],
    ["plot", "curves", "RUN", "-o", ""], ["plot", "samples", "RUN", "-o", " "],
    ["plot", "attention", "RUN", "--text", "a", "-o", ""],
])
def test_every_verb_refuses_an_empty_option(args, trained):
    """The other verbs' empty options were refused by what came after, in words that missed the
    point: export -o '' said 'cannot write : No such file or directory' with the hint to free
    some space, compile -o '' 'cannot write the graphs to : ...', eval --data '' that the
    --data file '' does not exist."""
    run_dir, _ = trained
    args = [str(run_dir) if a == "RUN" else a for a in args]
    flag = next(a for i, a in enumerate(args) if a.startswith("-") and not str(args[i + 1]).strip())
    res = invoke(*args, code=1)
    assert res.stderr.startswith(f"error: {flag} is empty\n") and f"hint: give {flag} a value" in res.stderr
    # export's -o has no default to fall back on: its hint offered to leave it out, which click refuses
    assert ("leave it out" in res.stderr) == (args[0] != "export"), res.stderr


@pytest.mark.parametrize("args, words", [
    (["check", ""], "the spec's path is empty"), (["train", ""], "the spec's path is empty"),
    (["predict", "", "--count", "1"], "model_path is an empty path"),
    (["plot", "curves", ""], "run_dir is an empty path"), (["plot", "samples", ""], "run_dir is an empty path"),
])
def test_an_empty_path_argument_is_named(args, words):
    """A spec, model or run given as '' was refused in words that named nothing: 'no such spec
    file: ', 'no ONNX file at ', ' has no metrics.jsonl', ' is not a run directory'."""
    res = invoke(*args, code=1)
    assert res.stderr.startswith(f"error: {words}\n") and "hint: give" in res.stderr, res.stderr


def test_the_api_refuses_an_empty_path(tmp_path):
    from runtime.api import train
    from spec.errors import FlowgradError

    with pytest.raises(FlowgradError, match="^data is an empty path"):
        train(MLP, run_dir=str(tmp_path / "run"), data="", steps=1)


def test_one_concept_one_help_and_bound(tmp_path):
    """--checkpoint read 'best or last.' in eval and plot samples and 'best (by validation) or
    last.' in export; --max-len had no bound (2000000 was refused after the model loaded, as
    'max_len must be at most', not by typer as --count is); --beam-width and bench's
    --batch-size did not say their defaults; --steps did not say that train.epochs still ends a
    run first (its default of 40 epochs for the MLP, say)."""
    commands = typer.main.get_command(app).commands
    plot = commands["plot"].commands

    def helps(command):
        return {p.opts[0]: p.help for p in command.params if getattr(p, "opts", None)}

    checkpoint = {helps(c)["--checkpoint"] for c in (commands["eval"], commands["export"], plot["samples"],
                                                      plot["attention"])}
    assert len(checkpoint) == 1 and "early_stopping" in checkpoint.pop()
    assert "generate.beam_width, else 4" in helps(commands["predict"])["--beam-width"]
    assert "train.batch_size" in helps(commands["bench"])["--batch-size"]
    assert "first limit reached" in helps(commands["train"])["--steps"]
    # train's --seed did not say that it overrides train.seed (as --epochs, --steps and --batch-size
    # say of theirs), nor its default; --quiet hid the 'training mlp on cpu' line too
    assert "overrides train.seed, whose default is 0" in helps(commands["train"])["--seed"]
    assert "training NAME on DEVICE" in helps(commands["train"])["--quiet"]
    assert "training mlp on" not in invoke("train", MLP, "--set", "dims.H=4", "--steps", "1", "--quiet",
                                           "--run-dir", tmp_path / "run", "--device", "cpu").stderr
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "predict", "m.onnx", "--text", "a", "--max-len",
                          str(2**20 + 1)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Invalid value for '--max-len'" in res.stderr


@pytest.mark.parametrize("line, why", [('{"step": 5, "train_loss": 0.5}', "epoch is missing"),
                                       ('{"epoch": 1, "train_loss": "0.5"}', "train_loss is '0.5'"),
                                       ('{"epoch": "1", "train_loss": 0.5}', "epoch is '1'")])
def test_plot_curves_of_another_tools_metrics_is_one_line(line, why, tmp_path):
    """A directory with another tool's metrics.jsonl: a record without 'epoch' ended in a KeyError
    traceback, and values that are not numbers were drawn as a categorical axis."""
    (tmp_path / "metrics.jsonl").write_text(line + "\n" + '{"epoch": 2, "train_loss": 0.4}\n')
    res = invoke("plot", "curves", tmp_path, "-o", tmp_path / "c.png", code=1)
    assert f"metrics.jsonl:1: not a record of an epoch that flowgrad train writes ({why})" in res.stderr
    assert "hint:" in res.stderr and not (tmp_path / "c.png").exists()


def test_a_run_dir_inside_another_run_is_refused(tmp_path):
    """train --run-dir runs/mlp/graphs nested a new run among another run's graph files."""
    run = tmp_path / "run"
    invoke("train", MLP, "--set", "dims.H=4", "--steps", "1", "--run-dir", run, "--quiet", "--device", "cpu")
    for inner in (run / "graphs", run / "sub" / "deeper"):
        res = invoke("train", MLP, "--set", "dims.H=4", "--steps", "1", "--run-dir", inner, "--quiet", "--device", "cpu",
                     code=1)
        assert f"error: the run directory {inner} is inside the run {run}" in res.stderr
        assert "hint: pick a directory outside other runs with --run-dir" in res.stderr
    assert not (run / "graphs" / "run.json").exists() and not (run / "sub").exists()


def test_plot_to_a_name_without_an_image_extension_is_refused(tmp_path):
    """plot curves RUN -o notes wrote a PNG under that name, replacing the user's file notes
    (flowgrad graph refuses such a name)."""
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n')
    notes = tmp_path / "notes"
    notes.write_text("mine\n")
    res = invoke("plot", "curves", tmp_path, "-o", notes, code=1)
    assert f"cannot write a picture as '{notes}': its name has no image extension" in res.stderr
    assert "hint: give a file ending in .png, .svg or .pdf" in res.stderr
    assert notes.read_text() == "mine\n"


@pytest.mark.parametrize("verb", [["train", MLP, "--steps", "1", "--quiet"], ["eval", "runs/none"],
                                  ["predict", "m.onnx", "--count", "1"], ["bench", MLP]])
def test_device_is_refused_alike_by_every_verb(verb, tmp_path):
    """--device gpu was "unknown device 'gpu'", where --checkpoint and --dtype say "unknown
    --checkpoint 'Best'" and "unknown --dtype 'float8'"; and eval said first that runs/none is not
    a run, predict that there is no m.onnx, before the flag."""
    result = invoke(*verb, "--device", "gpu", code=2)
    assert result.stderr.startswith("error: unknown --device 'gpu'\n") and "choose auto, cuda or cpu" in result.stderr


@pytest.mark.parametrize("args, words, hint", [
    (["train", MLP, "--steps", "1", "--quiet", "--valid", "1.5"], "--valid 1.5 is not a fraction in [0, 1)", "0.2"),
    (["train", MLP, "--steps", "1", "--quiet", "--valid", "nan"], "--valid nan is not a fraction in [0, 1)", "0.2"),
    (["train", MLP, "--steps", "1", "--quiet", "--valid", "missing.npz"], "--valid file 'missing.npz' does not exist",
     "a relative path given with --valid starts at the working directory"),
    (["train", MLP, "--steps", "1", "--quiet", "--data", "missing.npz"], "--data file 'missing.npz' does not exist",
     "a relative path given with --data starts at the working directory"),
    (["eval", "runs/none", "--data", "missing.npz"], "--data file 'missing.npz' does not exist", "with --data"),
    (["predict", "m.onnx", "--data", "missing.npz"], "--data file 'missing.npz' does not exist", "with --data"),
    (["export", "runs/none", "-o", "m.onnx", "--graph", "bogus"], "unknown --graph 'bogus'", "choose infer or generate"),
])
def test_errors_about_a_flags_value_name_the_flag(args, words, hint, tmp_path, monkeypatch):
    """Checks shared with the API named its keywords: --valid 1.5 was "valid 1.5 is not a
    fraction", --graph bogus "unknown graph 'bogus'", and a missing --valid file was a 'data file'
    whose hint said a path given with --data starts at the working directory. The API's words
    stay (valid=1.5 is "valid 1.5 ...", export(graph=) "unknown graph")."""
    monkeypatch.chdir(tmp_path)
    code = 2 if "fraction" in words or "unknown" in words else 1  # (a value none of the flag's, a file's absence)
    res = invoke(*args, "--run-dir", tmp_path / "run", code=code) if args[0] == "train" else invoke(*args, code=code)
    assert res.stderr.startswith(f"error: {words}\n") and hint in res.stderr
    assert not (tmp_path / "run").exists()
    from runtime.api import train
    from runtime.export import export
    from spec import FlowgradError

    with pytest.raises(FlowgradError, match=r"^valid 1\.5 is not a fraction"):
        train(MLP, valid=1.5, run_dir=str(tmp_path / "api"), device="cpu")
    with pytest.raises(FlowgradError, match="^valid file 'missing.npz' does not exist"):  # (not the CLI's --data)
        train(MLP, valid="missing.npz", run_dir=str(tmp_path / "api"), device="cpu")
    with pytest.raises(FlowgradError, match="^unknown graph 'bogus'"):
        export(str(tmp_path / "none"), str(tmp_path / "m.onnx"), graph="bogus")


@pytest.mark.parametrize("key", ["path", "valid", "test"])
def test_a_missing_file_the_spec_names_is_located_at_its_key_and_read_beside_the_spec(key, tmp_path, monkeypatch):
    """A spec's own train.data.path (valid, test) that did not exist was a 'data file' located at
    train.data, whose hint said a relative path "given with --data" starts at the working
    directory, to a caller who gave no --data (or used the API). It names the key, points at it,
    and says the path is read beside the spec file; a spec given as data reads it from the
    working directory."""
    import re

    import yaml

    from runtime import data as D
    from runtime.api import train
    from spec import FlowgradError

    digits = D.load_digits().arrays
    np.savez(tmp_path / "d.npz", x=digits["x"][:200], y=digits["y"][:200])
    raw = yaml.safe_load(Path(MLP).read_text())
    raw["train"]["data"] = {"path": str(tmp_path / "d.npz"), key: "missing.npz"}
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "m.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if f"{key}: missing.npz" in text)
    res = invoke("train", spec, "--steps", "1", "--quiet", "--device", "cpu", "--run-dir", tmp_path / "run", code=1)
    missing = tmp_path / "specs" / "missing.npz"
    assert res.stderr.startswith(f"error: {spec}:{line}:") and \
        f"train.data.{key} file '{missing}' does not exist" in res.stderr
    assert f"a relative train.data.{key} is read beside the spec file (in {tmp_path / 'specs'})" in res.stderr
    assert "--data" not in res.stderr
    with pytest.raises(FlowgradError, match=re.escape(f"train.data.{key} file '{missing}' does not exist")) as e:
        train(str(spec), run_dir=str(tmp_path / "run"), device="cpu", steps=1)
    assert "beside the spec file" in e.value.hint and "--" not in e.value.hint
    in_cwd = tmp_path / "missing.npz"
    with pytest.raises(FlowgradError, match=re.escape(f"train.data.{key} file '{in_cwd}' does not exist")) as e:
        train(raw, run_dir=str(tmp_path / "run"), device="cpu", steps=1)
    assert f"the spec has no file, so a relative train.data.{key} starts at the working directory" in e.value.hint
    assert not (tmp_path / "run").exists()


def test_checks_pointer_to_summary_keeps_the_overrides():
    """check --set dims.H=32 pointed at 'flowgrad summary models/mlp.yaml', the counts of the
    spec without the override (H=256)."""
    res = invoke("check", MLP, "--set", "dims.H=32", "--set", "train.optimizer={sgd: {lr: 0.1}}", "--dtype", "float64")
    assert f"flowgrad summary {MLP} --set dims.H=32 --set 'train.optimizer={{sgd: {{lr: 0.1}}}}' --dtype float64" \
        in res.stderr


def test_summary_dim_with_a_superscript_digit_is_one_line():
    """str.isdigit() takes '²': --dim T=² passed the check and ended in int()'s ValueError traceback."""
    res = invoke("summary", ROOT / "models" / "char_lstm.yaml", "--dim", "T=²", code=1)
    assert "--dim 'T=²' is not NAME=INTEGER" in res.stderr and "hint: e.g. --dim T=64" in res.stderr


@pytest.mark.parametrize("override, words", [
    ("inputs.x.shape.²=5", "inputs.x.shape is a list, and '²' is not an index in it"),
    ("inputs.x.shape.5=5", "inputs.x.shape has 2 items, so there is no item 5"),
    ("inputs.x.shape.x.y=5", "inputs.x.shape is a list, and 'x' is not an index in it"),
])
def test_set_into_a_list_says_how_to_index_it(override, words):
    """--set inputs.x.shape.²=5 ended in int()'s ValueError traceback (str.isdigit() takes '²'),
    and an index past the end, or a name, was 'a list, not a mapping' with the hint that --set
    only sets keys inside a mapping, though inputs.x.shape.1=5 sets an item."""
    res = invoke("check", MLP, "--set", override, code=1)
    assert f"--set {override}:1:22: cannot set '{override.split('=')[0]}': {words}" in res.stderr
    assert "hint:" in res.stderr and "only set keys inside a mapping" not in res.stderr
    assert "[8, 256]" in invoke("check", MLP, "--set", "inputs.x.shape.1=8", "--set", "params.W1.shape.0=8").stdout


def test_an_output_that_names_a_directory_says_so(trained, tmp_path):
    """export -o DIR said 'cannot write DIR: Is a directory' with the hint 'free some space', and
    -o new/ (a directory to be) 'cannot write new/: Not a directory'."""
    run_dir, _ = trained
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 64), np.float32))
    for target in (tmp_path, f"{tmp_path / 'new'}/"):
        for args in (["export", run_dir, "-o", target], ["plot", "curves", run_dir, "-o", target],
                     ["predict", tmp_path / "m.onnx", "--data", tmp_path / "in.npz", "-o", target]):
            if args[0] == "predict" and not (tmp_path / "m.onnx").exists():
                invoke("export", run_dir, "-o", tmp_path / "m.onnx")
            res = invoke(*args, code=1)
            assert f"error: cannot write {target}: it names a directory, not a file" in res.stderr, res.stderr
            assert "hint: give the path of the file to write" in res.stderr and "space" not in res.stderr
    assert not (tmp_path / "new").exists()


def test_ops_the_compiler_makes_are_neither_listed_nor_callable(tmp_path):
    """fill, precomputed, max_pool2d_grad, tile_rows, ... (what gradients, lowering and rewrites
    build) were listed by flowgrad ops and callable from a spec, where their errors spoke of
    the compiler's attributes ("precomputed() needs the argument 'of'"). A spec calling one is
    told the op is unknown, as for any name it cannot use."""
    from compiler.registry import all_ops

    internal = sorted(name for name, op in all_ops().items() if op.internal)
    assert {"fill", "precomputed", "max_pool2d_grad", "tile_rows", "gemm", "random_bits"} <= set(internal)
    listed = {r["name"] for r in json.loads(invoke("ops", "--json").stdout)}
    assert not listed & set(internal)
    for name in internal:
        spec = tmp_path / f"{name}.yaml"
        spec.write_text("flowgrad: 1\nname: t\ninputs:\n  x: {shape: [N, 4]}\ngraph:\n"
                        f"  h: {name}(x)\nloss: mean(h)\n")
        assert f"{spec}:6:6: unknown op '{name}'" in invoke("check", str(spec), code=1).output


def test_output_to_a_file_or_pipe_is_not_cut_at_80_columns(tmp_path):
    """Piped or redirected (a log, grep), tables and the progress line were drawn 80 columns wide
    and cut: summary listed 'enc.bidirectional…' for five different parameters, and each epoch's
    line in a log read 'epo… train_loss ... valid_accura…', its epoch and last metric gone."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "summary", str(ROOT / "models" / "dates_attention.yaml")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and "…" not in res.stdout, res.stdout
    assert "enc.bidirectional2.fw.W" in res.stdout and "enc.bidirectional2.bw.bu" in res.stdout
    # (each title line was padded with spaces to its table's width: 650 columns for ops)
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "ops"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and res.stdout.startswith("flowgrad ops\n"), res.stdout[:200]
    assert not any(line.endswith(" ") for line in res.stdout.splitlines())
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", MLP, "--set", "dims.H=4", "--epochs", "2",
                          "--set", "train.batch_size=1024", "--device", "cpu", "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and "…" not in res.stderr, res.stderr
    assert lines[1].startswith("epoch 2/2") and "valid_accuracy" in lines[1]


def test_eval_prints_valid_json_when_a_metric_is_not_finite(tmp_path):
    """eval printed '"accuracy": -Infinity' for a metric that was infinite on its --data: not
    JSON, and jq or any strict parser refused the whole output. Such a value is null for a NaN,
    "-Infinity" for -inf."""
    run = tmp_path / "run"
    invoke("train", MLP, "--set", "dims.H=4", "--set", "metrics.accuracy=mean(log(x + 1))", "--steps", "1",
           "--run-dir", run, "--quiet", "--device", "cpu")
    np.savez(tmp_path / "neg.npz", x=-np.ones((4, 64), np.float32), y=np.zeros(4, np.int64))
    out = invoke("eval", run, "--data", tmp_path / "neg.npz", "--device", "cpu").stdout

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    metrics = json.loads(out, parse_constant=refuse)
    assert metrics["accuracy"] == "-Infinity" and np.isfinite(metrics["loss"])


def test_plot_attention_takes_checkpoint_as_export_does(tmp_path, monkeypatch):
    """plot attention had no --checkpoint: it always drew the best epoch's attention, where eval,
    export and plot samples read --checkpoint last too (and plot attention RUN --checkpoint last
    was 'No such option')."""
    import runtime.export as E

    run = tmp_path / "run"
    invoke("train", ROOT / "models" / "reverse_attention.yaml", "--set", "dims.H=4", "--set", "dims.E=4",
           "--set", "dims.A=4", "--set", "train.data.options.n=60", "--set", "train.data.options.max_len=6",
           "--steps", "1", "--run-dir", run, "--quiet", "--device", "cpu", "--threads", "1")
    real, read = E.export, []
    monkeypatch.setattr(E, "export", lambda run_dir, output, checkpoint="best", *a, **kw: (
        read.append(checkpoint), real(run_dir, output, checkpoint, *a, **kw))[1])
    for which in ("last", "best"):
        res = invoke("plot", "attention", run, "--text", "abc", "-o", tmp_path / f"{which}.png", "--checkpoint", which)
        assert res.stdout.strip() == str(tmp_path / f"{which}.png") and (tmp_path / f"{which}.png").exists()
    assert read == ["last", "last", "best", "best"]
    res = invoke("plot", "attention", run, "--text", "abc", "--checkpoint", "Best", code=2)
    assert res.stderr.startswith("error: unknown --checkpoint 'Best'\n") and "choose best or last" in res.stderr


def test_eval_takes_json_as_the_other_verbs_do(trained, tmp_path):
    """train, bench, summary and ops print JSON with --json; eval, which prints JSON anyway,
    refused it ('No such option: --json', exit code 2) in a script passing --json to each verb."""
    run_dir, _ = trained
    np.savez(tmp_path / "in.npz", x=np.zeros((3, 64), np.float32), y=np.zeros(3, np.int64))
    plain = invoke("eval", run_dir, "--data", tmp_path / "in.npz", "--device", "cpu").stdout
    assert invoke("eval", run_dir, "--data", tmp_path / "in.npz", "--device", "cpu", "--json").stdout == plain
    assert set(json.loads(plain)) == {"loss", "accuracy"}


def test_version():
    """flowgrad --version was 'No such option: --version' (exit code 2)."""
    from importlib.metadata import version

    res = invoke("--version")
    assert res.stdout == f"flowgrad {version('flowgrad')}\n" and not res.stderr
    res = subprocess.run([sys.executable, str(ROOT / "cli.py"), "check", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "hint: --version goes before the verb: cli.py --version" in res.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["ops", "--json"], ["check", MLP], ["--version"]])
def test_output_to_a_full_disk_is_one_line(args):
    """Output to a full disk (> /dev/full) ended each verb in a traceback of the print that failed."""
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], stdout=full, stderr=subprocess.PIPE,
                             text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
    assert res.stderr.endswith("error: cannot write the output: No space left on device\n"
                               "  hint: free some space, or send the output elsewhere\n"), res.stderr


def test_a_batch_of_one_through_batch_norm_names_the_flag(tmp_path):
    """--batch-size 1 of a spec with a batch_norm was told 'batch_size 1 gives batches of one
    example', with the hint 'use a batch size of 2 or more', not naming the flag it typed."""
    spec = tmp_path / "bn.yaml"
    spec.write_text("flowgrad: 1\nname: bn\ninputs:\n  x: {shape: [N, 4]}\n  y: {shape: [N], dtype: int64}\n"
                    "graph:\n  h: batch_norm(dense(x, 8))\n  logits: dense(h, 3)\nloss: cross_entropy(logits, y)\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(20, 4)).astype(np.float32), y=rng.integers(0, 3, 20))
    res = invoke("train", spec, "--data", tmp_path / "d.npz", "--batch-size", "1", "--run-dir", tmp_path / "r",
                 "--quiet", "--device", "cpu", code=1)
    assert "bn.yaml:7:6: batch_norm normalises each channel" in res.stderr
    assert "and --batch-size 1 gives batches of one example" in res.stderr, res.stderr
    assert "hint: use a batch size (--batch-size) of 2 or more" in res.stderr
    res = invoke("train", spec, "--data", tmp_path / "d.npz", "--set", "train={batch_size: 19}", "--run-dir",
                 tmp_path / "r", "--quiet", "--device", "cpu", code=1)
    assert "a batch of one (train.batch_size 19)" in res.stderr, res.stderr


def test_predict_o_writes_its_outputs_without_a_copy_in_memory(tmp_path):
    """predict -o built the whole .npz in memory before writing it, holding the outputs twice (the
    arrays and the archive): the archive is now written into its temporary file as it goes."""
    import tracemalloc

    import cli

    probs = np.zeros((1_000_000, 20), np.float32)  # 80 MB
    tracemalloc.start()
    try:
        cli._write_npz(str(tmp_path / "out.npz"), {"probs": probs})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40e6, peak
    with np.load(tmp_path / "out.npz") as z:
        assert z["probs"].shape == probs.shape


def test_a_verb_that_runs_no_model_works_without_onnxruntime():
    """main() set onnxruntime's logger by importing it before any verb ran: without onnxruntime
    installed, every verb ended in its import's traceback, flowgrad ops and --help too, which run
    no model (as a verb that needs it did, which its own import says)."""
    probe = ("import sys, runpy\n"
             "sys.modules['onnxruntime'] = None  # `import onnxruntime` fails as if not installed\n"
             "sys.argv = ['flowgrad', 'ops', '--json']\n"
             f"runpy.run_path({str(ROOT / 'cli.py')!r}, run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert any(r["name"] == "matmul" for r in json.loads(res.stdout)) and "Traceback" not in res.stderr


def test_help_and_the_verbs_that_run_no_model_do_not_import_onnxruntime():
    """main() imported onnxruntime on every run only to quiet its process-wide logger: about 50 ms
    of the 215 ms of flowgrad --help, and of check, ops and summary, which make no session."""
    probe = ("import contextlib, io, json, sys\n"
             "import cli\n"
             "for argv in (['--help'], ['ops', '--json'], ['check', sys.argv[1]], ['summary', sys.argv[1]]):\n"
             "    sys.argv = ['flowgrad', *argv]\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "        cli.main()\n"
             "print(json.dumps('onnxruntime' in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", probe, MLP], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) is False


def test_the_command_quiets_onnxruntime_s_logger_before_its_first_session(tmp_path):
    """The logger is set when the command first makes a session (not on import, not by the API):
    predict and gradcheck set it to errors only, once, before any InferenceSession was made."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10),
              str(tmp_path / "relu.onnx"))
    np.savez(tmp_path / "x.npz", x=np.array([[-1.0, 2.0]], np.float32))
    probe = ("import contextlib, io, json, sys\n"
             "import onnxruntime as ort\n"
             "events = []\n"
             "ort.set_default_logger_severity = lambda level: events.append(level)\n"
             "made = ort.InferenceSession\n"
             "ort.InferenceSession = lambda *a, **k: (events.append('session'), made(*a, **k))[1]\n"
             "import cli\n"
             "for argv in json.loads(sys.argv[1]):\n"
             "    sys.argv = ['flowgrad', *argv]\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "        cli.main()\n"
             "    print(json.dumps(events))\n"
             "    events.clear()\n")
    verbs = [["predict", str(tmp_path / "relu.onnx"), "--data", str(tmp_path / "x.npz"), "--device", "cpu"],
             ["gradcheck", MLP, "--set", "dims.H=2", "--set", "dims.D=3"]]
    res = subprocess.run([sys.executable, "-c", probe, json.dumps(verbs)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    for line in res.stdout.splitlines():
        events = json.loads(line)
        assert events[0] == 3 and events.count(3) == 1 and "session" in events, events


def test_compile_json_is_what_its_table_shows(tmp_path):
    """compile had no --json: a build script scraped its table (on stderr) for the node counts.
    compile --json prints the files written and each graph's file, nodes, inputs and outputs,
    the rows of the table, and nothing else; --quiet prints nothing."""
    shown = invoke("compile", MLP, "--set", "dims.H=8", "-o", tmp_path / "a")
    r = strict_json((res := invoke("compile", MLP, "--set", "dims.H=8", "-o", tmp_path / "b", "--json")).stdout)
    assert res.stderr == ""
    assert set(r) == {"name", "dtype", "step_dtype", "compile_seconds", "output", "graphs", "files"}
    assert (r["name"], r["dtype"], r["step_dtype"], r["output"]) == ("mlp", "float32", "float32", str(tmp_path / "b"))
    assert r["compile_seconds"] > 0
    # under mixed precision the step computes in its half type, the weights stay float32 (as check --json says)
    mixed = strict_json(invoke("compile", MLP, "--set", "dims.H=8", "--set", "train.mixed_precision=bfloat16", "-o",
                               tmp_path / "m", "--json").stdout)
    assert (mixed["dtype"], mixed["step_dtype"]) == ("float32", "bfloat16")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [g["graph"] for g in r["graphs"]] == list(manifest["graphs"])
    for g in r["graphs"]:
        m = manifest["graphs"][g["graph"]]
        assert g["file"] == str(tmp_path / "b" / m["file"]) and g["nodes"] == m["nodes"]
        assert g["inputs"] == [i["name"] for i in m["inputs"]] and g["outputs"] == [o["name"] for o in m["outputs"]]
        assert len(onnx.load(g["file"]).graph.node) == g["nodes"]
    assert r["files"] == [g["file"] for g in r["graphs"]] + [str(tmp_path / "b" / "manifest.json")]
    title = next(line for line in shown.stderr.splitlines() if line.startswith("mlp compiled in "))
    assert table_rows(shown.stderr, title) == [
        [g["graph"], str(g["nodes"]), str(len(g["inputs"])), str(len(g["outputs"])), g["file"].replace("/b/", "/a/")]
        for g in r["graphs"]]
    assert shown.stdout.split() == [f.replace("/b/", "/a/") for f in r["files"]]
    quiet = invoke("compile", MLP, "--set", "dims.H=8", "-o", tmp_path / "c", "--quiet")
    assert (quiet.stdout, quiet.stderr) == ("", "") and (tmp_path / "c" / "manifest.json").is_file()
    # an error is the one-line message alone, no half of a JSON document
    res = invoke("compile", BAD, "-o", tmp_path / "d", "--json", code=1)
    assert res.stdout == "" and res.stderr.startswith(f"error: {BAD}:14:7: unknown op 'rleu'\n")
    assert invoke("compile", BAD, "-o", tmp_path / "d", "-q", code=1).stderr == res.stderr


def test_check_quiet_prints_only_warnings_and_errors(tmp_path):
    """check --quiet: the exit code says whether the spec is usable; no tables, no pointer to summary,
    the warnings still on stderr."""
    res = invoke("check", MLP, "--quiet")
    assert (res.stdout, res.stderr) == ("", "")
    spec = tmp_path / "t.yaml"
    spec.write_text(FROZEN_NUMBER_UNUSED)
    res = invoke("check", spec, "-q")
    assert res.stdout == "" and res.stderr == (f"warning: {spec}:11:3: graph entry 'k' is never used\n"
                                               "  hint: use it in the loss, a metric or an output, or remove it\n")
    res = invoke("check", BAD, "-q", code=1)
    assert res.stdout == "" and res.stderr == f"error: {BAD}:14:7: unknown op 'rleu'\n  hint: did you mean 'relu' or 'le'?\n"


def test_gradcheck_quiet_says_only_which_parameters_failed():
    """gradcheck --quiet prints nothing when every gradient passes; a failed check, which without
    the table would be an exit code alone, is one error line naming the parameters that failed."""
    small = ["--set", "dims.H=2", "--set", "dims.D=3"]
    res = invoke("gradcheck", MLP, *small, "--quiet")
    assert (res.stdout, res.stderr) == ("", "")
    r = json.loads(invoke("gradcheck", MLP, *small, "--tolerance", "0", "--json", code=1).stdout)
    failed = [c for c in r["checks"] if c["status"] == "FAIL"]
    assert failed
    res = invoke("gradcheck", MLP, *small, "--tolerance", "0", "-q", code=1)
    worst = ", ".join(f"{c['parameter']} ({c['relative_error']:.2e})" for c in failed)
    assert res.stdout == "" and res.stderr == (
        f"error: mlp: the gradient of {worst} differs from finite differences by more than --tolerance 0\n"
        "  hint: run without --quiet for every parameter's error\n")


def test_export_json_describes_the_model_written(trained, tmp_path):
    """export had no --json: its inputs and outputs were read from a line on stderr. export --json
    prints the path, the inputs and outputs, the parameters baked in and the bytes written."""
    run_dir, _ = trained
    shown = invoke("export", run_dir, "-o", tmp_path / "a.onnx")
    res = invoke("export", run_dir, "-o", tmp_path / "b.onnx", "--json")
    r = strict_json(res.stdout)
    assert res.stderr == "" and set(r) == {"path", "inputs", "outputs", "parameters", "parameter_bytes", "bytes"}
    model = onnx.load(str(tmp_path / "b.onnx"))
    assert r["path"] == str(tmp_path / "b.onnx") and r["bytes"] == (tmp_path / "b.onnx").stat().st_size
    assert r["inputs"] == [i.name for i in model.graph.input] == ["x"]
    assert r["outputs"] == [o.name for o in model.graph.output]
    assert r["parameters"] == len(model.graph.initializer) - sum(  # (the graph's own constants too)
        1 for i in model.graph.initializer if i.name not in json.loads((run_dir / "graphs" / "manifest.json").read_text())["params"])
    assert r["parameter_bytes"] == sum(onnx.numpy_helper.to_array(i).nbytes for i in model.graph.initializer
                                       if i.name in {"W1", "b1", "W2", "b2", "W3", "b3"})
    assert shown.stderr == f"wrote {tmp_path / 'a.onnx'}: inputs x -> outputs {', '.join(r['outputs'])}\n"
    res = invoke("export", tmp_path / "nothing", "-o", tmp_path / "c.onnx", "--json", code=1)
    assert res.stdout == "" and res.stderr.startswith("error: ") and "hint:" in res.stderr


def test_predict_json_prints_the_outputs_or_describes_the_file(trained, tmp_path):
    """predict had no --json: its outputs were printed as NumPy shows them, cut after 10 rows.
    --json prints each output's shape, dtype and values (strict JSON); with -o, the file written;
    outputs too large to print are refused before any of it, pointing to -o."""
    from runtime.export import predict

    run_dir, _ = trained
    model = str(tmp_path / "m.onnx")
    invoke("export", run_dir, "-o", model)
    x = np.random.default_rng(0).random((3, 64), np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    r = strict_json(invoke("predict", model, "--data", tmp_path / "x.npz", "--json", "--device", "cpu").stdout)
    want = predict(model, {"x": x})
    assert list(r) == ["outputs"] and list(r["outputs"]) == list(want)
    for k, v in want.items():
        assert r["outputs"][k]["shape"] == list(v.shape) and r["outputs"][k]["dtype"] == str(v.dtype)
        np.testing.assert_array_equal(np.asarray(r["outputs"][k]["values"], v.dtype), v)
    res = invoke("predict", model, "--data", tmp_path / "x.npz", "--json", "-o", tmp_path / "y.npz", "--device", "cpu")
    assert res.stderr == "" and strict_json(res.stdout) == {
        "path": str(tmp_path / "y.npz"), "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in want.items()}}
    with np.load(tmp_path / "y.npz") as z:
        assert set(z.files) == set(want)
    np.savez(tmp_path / "big.npz", x=np.zeros((20_000, 64), np.float32))
    res = invoke("predict", model, "--data", tmp_path / "big.npz", "--json", "--device", "cpu", code=1)
    assert res.stdout == "" and res.stderr.startswith("error: the outputs hold 220,000 values, more than --json prints")
    assert "hint: write them to an .npz with -o" in res.stderr


def test_predict_json_refuses_outputs_too_many_to_print_before_running_the_model(trained, tmp_path, monkeypatch):
    """The outputs' shapes (N from the inputs) say 220,000 values: --json refused them only after
    the model had run on all 20,000 rows; now before it runs, with the same message. What the
    shapes do not tell is still counted after the run."""
    import onnxruntime as ort

    import cli
    from runtime import export

    run_dir, _ = trained
    model = str(tmp_path / "m.onnx")
    invoke("export", run_dir, "-o", model)
    np.savez(tmp_path / "big.npz", x=np.zeros((20_000, 64), np.float32))
    ran = []
    real_run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: ran.append(1) or real_run(self, *a, **k))
    res = invoke("predict", model, "--data", tmp_path / "big.npz", "--json", "--device", "cpu", code=1)
    assert res.stdout == "" and res.stderr.startswith("error: the outputs hold 220,000 values, more than --json prints")
    assert "hint: write them to an .npz with -o" in res.stderr and ran == []
    invoke("predict", model, "--data", tmp_path / "big.npz", "-o", tmp_path / "y.npz", "--device", "cpu")
    assert ran  # (-o writes them all)
    ran.clear()
    monkeypatch.setattr(cli, "MAX_JSON_VALUES", 10)  # 3 rows' outputs: known before the run too
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 64), np.float32))
    res = invoke("predict", model, "--data", tmp_path / "x.npz", "--json", "--device", "cpu", code=1)
    assert res.stderr.startswith("error: the outputs hold 33 values, more than --json prints (at most 10)") and ran == []
    monkeypatch.setattr(export, "_known_output_shapes", lambda outputs, sizes: {})  # as a decoder's: unknown
    res = invoke("predict", model, "--data", tmp_path / "x.npz", "--json", "--device", "cpu", code=1)
    assert res.stderr.startswith("error: the outputs hold 33 values, more than --json prints (at most 10)") and ran


def test_check_compiles_a_watched_metrics_graphs_in_its_dtype(tmp_path, monkeypatch):
    """check --dtype float16 of a spec with early_stopping compiled the graphs that report its
    metric in float32 (the spec's type), not in the type it was asked to check; now in float16."""
    import runtime.train as T

    dtypes, real = [], T.compile_spec

    def compiled(spec, dtype=None, **kw):
        cm = real(spec, dtype, **kw)
        dtypes.append(cm.float_dtype)
        return cm

    monkeypatch.setattr(T, "compile_spec", compiled)
    text = (ROOT / "models" / "mlp.yaml").read_text().replace("  seed: 0\n", "  seed: 0\n"
        "  early_stopping: {metric: valid_accuracy, mode: max, patience: 3}\n").replace(
        "{adam: {lr: 0.001}}", "{sgd: {lr: 0.01}}")
    path = tmp_path / "m.yaml"
    path.write_text(text)
    invoke("check", path, "--dtype", "float16")
    invoke("check", path)
    assert dtypes == ["float16", "float32"]


@pytest.mark.parametrize("watching, message", [
    ("  early_stopping: {metric: valid_acuracy, mode: max, patience: 3}\n",
     "early_stopping metric 'valid_acuracy' is not reported"),
    ("  lr_schedule: {plateau: {metric: valid_los}}\n", "lr_schedule.plateau metric 'valid_los' is not reported"),
    ("  early_stopping: {metric: valid_accuracy, patience: 3}\n", "early_stopping: is a larger or a smaller valid_accuracy better?"),
])
def test_check_refuses_a_watched_metric_that_train_refuses(tmp_path, watching, message):
    """A misspelt early_stopping or plateau metric, or one of unknown direction, passed check ('spec OK')
    and was refused by train after the data was read; check says it, located at the metric."""
    text = (ROOT / "models" / "mlp.yaml").read_text().replace("  seed: 0\n", "  seed: 0\n" + watching)
    path = tmp_path / "m.yaml"
    path.write_text(text)
    res = invoke("check", path, code=1)
    line = 1 + text.splitlines().index(watching.rstrip("\n"))
    assert f"m.yaml:{line}:" in res.stderr and message in res.stderr, res.stderr
    good = text.replace("valid_acuracy", "valid_accuracy").replace("valid_los}", "valid_loss}").replace(
        "{metric: valid_accuracy, patience: 3}", "{metric: valid_accuracy, mode: max, patience: 3}")
    path.write_text(good)
    invoke("check", path)


def test_train_suggests_an_export_only_for_a_spec_that_has_something_to_export(tmp_path):
    """A spec without outputs (or a generate section) has no deployment graph, yet train ended with
    'export the model: flowgrad export RUN -o NAME.onnx', a command that then failed with 'RUN has
    no inference graph'."""
    spec = tmp_path / "nooutputs.yaml"
    spec.write_text("flowgrad: 1\nname: t\ninputs:\n  x: {shape: [N, 3]}\ngraph:\n  y: dense(x, 2)\n"
                    "loss: mean(y * y)\n")
    np.savez(tmp_path / "x.npz", x=np.ones((4, 3), np.float32))
    res = invoke("train", spec, "--data", tmp_path / "x.npz", "--steps", "1", "--run-dir", tmp_path / "run",
                 "--quiet", "--device", "cpu")
    assert f"flowgrad plot curves {tmp_path / 'run'}" in res.stderr
    assert "flowgrad export" not in res.stderr
    res = invoke("train", MLP, "--set", "dims.H=4", "--steps", "1", "--run-dir", tmp_path / "mlp", "--quiet",
                 "--device", "cpu")
    assert f"flowgrad export {tmp_path / 'mlp'} -o mlp.onnx" in res.stderr
