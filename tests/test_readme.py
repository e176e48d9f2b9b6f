"""README's examples, run as a user who trusts them would: its spec checks and
trains, its Python snippets run (with fewer steps), and every `flowgrad` command
it shows names a verb and flags that the CLI has."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest
import typer

from cli import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)


def blocks(lang: str) -> list[str]:
    return [text for kind, text in BLOCKS if kind == lang]


def python_block(first_import: str) -> str:
    (text,) = [b for b in blocks("python") if first_import in b]
    return text


def readme_commands() -> list[list[str]]:
    """Every `flowgrad ...` command of the sh blocks (comments dropped, `&&` chains split) and
    of the text's code spans (`flowgrad train SPEC --accumulate K`)."""
    lines = [line.split("#")[0] for block in blocks("sh") for line in block.splitlines()]
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    lines += [" ".join(span.split()) for span in re.findall(r"`(flowgrad [^`]+)`", prose)]
    out = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part)
            if words and words[0] == "flowgrad":
                out.append(words[1:])
    return out


def test_every_command_readme_shows_names_flags_its_verb_takes():
    """A flag renamed or dropped in the CLI left README showing a command that fails."""
    root = typer.main.get_command(app)
    commands = readme_commands()
    assert len(commands) >= 20
    for words in commands:
        cmd, rest = root, [w for w in words if w != "--debug"]  # (the one flag before the verb)
        while rest and hasattr(cmd, "commands") and rest[0] in cmd.commands:  # `plot curves`
            cmd = cmd.commands[rest.pop(0)]
        if rest[:1] == ["VERB"]:  # `flowgrad --debug VERB ...`
            continue
        if rest == ["--version"]:  # flowgrad's own flag, without a verb
            assert "--version" in {o for p in root.params for o in p.opts}
            continue
        assert cmd is not root, words
        flags = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for w in rest:
            if w.startswith("-"):
                assert w.split("=")[0] in flags, f"README: flowgrad {' '.join(words)}: {w} is not a flag of {cmd.name}"


def test_readmes_spec_checks_and_trains(tmp_path):
    from compiler.training import check_spec
    from runtime.api import train
    from spec import load_spec

    (text,) = blocks("yaml")
    path = tmp_path / "mlp.yaml"
    path.write_text(text)
    spec = load_spec(str(path))
    low = check_spec(spec)
    assert {"logits.W", "logits.b"} <= set(low.params)  # "creates logits.W and logits.b"
    assert train(spec, run_dir=str(tmp_path / "run"), steps=2, threads=1, device="cpu").steps == 2


def test_readmes_python_api_snippet_runs(tmp_path, monkeypatch):
    """The snippet as written, with one epoch of two steps instead of five epochs."""
    code = python_block("from runtime.api import load,")
    assert "epochs=5," in code
    code = code.replace("epochs=5,", "epochs=1, steps=2, threads=1, device='cpu',")
    os.makedirs(tmp_path / "models")
    shutil.copy(os.path.join(ROOT, "models", "mlp.yaml"), tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    env = {"x": np.random.default_rng(0).random((3, 64), dtype=np.float32)}
    exec(compile(code, "README.md", "exec"), env)
    assert type(env["cm"]).__name__ == "CompiledModel" and (tmp_path / "build" / "manifest.json").is_file()
    assert type(env["result"]).__name__ == "TrainResult" and env["result"].history
    assert set(env["outputs"]) == {"probs", "label"} and env["outputs"]["probs"].shape == (3, 10)


def test_readmes_inspecting_verbs_snippet_runs(tmp_path, monkeypatch):
    """check, gradcheck, summary and bench as the snippet calls them, bench with two steps."""
    code = python_block("from runtime.api import bench, check")
    assert "steps=20" in code
    code = code.replace("steps=20", "steps=2, threads=1")
    os.makedirs(tmp_path / "models")
    for name in ("mlp.yaml", "char_lstm.yaml"):
        shutil.copy(os.path.join(ROOT, "models", name), tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    assert env["report"]["name"] == "mlp" and env["report"]["trainable_values"] > 0
    assert env["flops"] > 1e9 and env["step_ms"] > 0


def test_readmes_arrays_snippet_runs(tmp_path, monkeypatch):
    """The snippet of arrays given in memory as written, on digits, with one step an epoch: the
    resume continues the run, and evaluate_run reads its arrays."""
    from runtime.data import load_digits

    code = python_block("from runtime.api import evaluate_run, train")
    assert code.count('run_dir="runs/mlp-arrays"') == 2
    code = code.replace('run_dir="runs/mlp-arrays"', 'run_dir="runs/mlp-arrays", threads=1, device="cpu"')
    os.makedirs(tmp_path / "models")
    shutil.copy(os.path.join(ROOT, "models", "mlp.yaml"), tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    x, y = load_digits().arrays.values()
    env = {"x_train": x[:64], "y_train": y[:64], "x_valid": x[64:96], "y_valid": y[64:96],
           "x_test": x[96:128], "y_test": y[96:128]}
    exec(compile(code, "README.md", "exec"), env)
    assert env["result"].epochs == 5 and set(env["metrics"]) == {"loss", "accuracy"}
    assert json.loads((tmp_path / "runs" / "mlp-arrays" / "result.json").read_text())["epochs"] == 8


def test_readmes_generator_snippet_runs(tmp_path, monkeypatch):
    """The exported VAE runs on onnxruntime alone: 16 digits of 64 pixels in [0, 1], and the
    CLI's --count 16 --seed 7 draws the same ones."""
    from runtime.api import export, load, train
    from runtime.export import generator_feeds, predict

    spec = load(os.path.join(ROOT, "models", "vae.yaml"), ["dims.H=16"])
    result = train(spec, run_dir=str(tmp_path / "vae"), steps=2, threads=1, device="cpu")
    monkeypatch.chdir(tmp_path)
    export(result.run_dir, "vae.onnx")
    env: dict = {}
    exec(compile(python_block("onnxruntime as ort"), "README.md", "exec"), env)
    digits = env["digits"]
    assert digits.shape == (16, 64) and 0 <= digits.min() and digits.max() <= 1
    cli = predict("vae.onnx", generator_feeds("vae.onnx", 16, 7))["samples"]
    np.testing.assert_array_equal(cli, digits)


def test_readmes_quoted_api_messages_are_the_apis(tmp_path):
    """Python API: what README quotes of load()'s and train()'s refusals is what they say (a
    resume with another seed was once said to hint init_from=, which only other refusals do)."""
    from runtime.api import load, train
    from spec.errors import FlowgradError

    prose = " ".join(README.split())

    def refusal(call) -> str:
        with pytest.raises(FlowgradError) as e:
            call()
        return f"{e.value} hint: {e.value.hint}"

    quoted = """overrides=["dims.X=3"]:1:18: ... the spec has no dim 'X'"""
    assert quoted in prose
    head, tail = quoted.split(" ... ")
    said = refusal(lambda: load(os.path.join(ROOT, "models", "mlp.yaml"), overrides=["dims.X=3"]))
    assert said.startswith(head) and tail in said
    spec = load(os.path.join(ROOT, "models", "mlp.yaml"), overrides=["dims.H=8"])
    r = str(tmp_path / "mlp")
    train(spec, run_dir=r, steps=1, threads=1, device="cpu", progress=False)
    assert "`seed=3 differs from the seed 0 ...` and to leave out `seed`" in prose
    said = refusal(lambda: train(spec, run_dir=r, resume=True, seed=3, threads=1, device="cpu"))
    assert "seed=3 differs from the seed 0" in said and "leave out seed" in said
    assert """at `init_from="runs/mlp", run_dir="NEW_DIR"`""" in prose
    sgd = load(os.path.join(ROOT, "models", "mlp.yaml"), overrides=["dims.H=8", "train.optimizer={sgd: {lr: 0.1}}"])
    said = refusal(lambda: train(sgd, run_dir=r, resume=True, threads=1, device="cpu"))
    assert f'init_from="{r}", run_dir="NEW_DIR"' in said
    assert """(`init_from="runs/b": no checkpoint at ...`)""" in prose
    missing = str(tmp_path / "b")
    said = refusal(lambda: train(spec, run_dir=str(tmp_path / "c"), init_from=missing, device="cpu"))
    assert said.startswith(f'init_from="{missing}": no checkpoint at')
    assert "(`epoch=`, with the closest name)" in prose
    assert "did you mean 'epochs'?" in refusal(lambda: train(spec, epoch=1))
    assert """(`overwrite="no"` is refused, not taken as true)""" in prose
    assert "overwrite" in refusal(lambda: train(spec, run_dir=r, overwrite="no"))


def test_readmes_count_of_broken_specs_holds():
    """'a corpus of over N broken specs (tests/bad_specs/)': at least N spec files are there."""
    (n,) = re.findall(r"over (\d+) broken specs", " ".join(README.split()))
    found = [f for _, _, files in os.walk(os.path.join(ROOT, "tests", "bad_specs")) for f in files if f.endswith(".yaml")]
    assert len(found) > int(n)


def test_readmes_set_promises_hold():
    """'a key the spec leaves out is set whole (--set 'train.data.options={labelled: 40}'), and ...
    a dim the spec neither defines nor uses (a misspelt dims.h), is refused with the closest name'."""
    from spec import load_spec
    from spec.errors import FlowgradError

    prose = " ".join(README.split())
    assert "(`--set 'train.data.options={labelled: 40}'`)" in prose and "(a misspelt `dims.h`)" in prose
    mlp = os.path.join(ROOT, "models", "mlp.yaml")
    assert load_spec(mlp, ["train.data.options={labelled: 40}"]).raw["train"]["data"]["options"] == {"labelled": 40}
    with pytest.raises(FlowgradError) as e:
        load_spec(mlp, ["dims.h=3"])
    assert "did you mean 'H'?" in e.value.hint
    with pytest.raises(FlowgradError) as e:  # a path through a key the spec lacks: the override that adds it
        load_spec(mlp, ["train.data.options.labelled=40"])
    assert "train.data.options={labelled: 40}" in e.value.hint


LAYER_NAMES_SPEC = """flowgrad: 1
name: names
dims: {V: 10, E: 5, H: 4, K: 3}
inputs:
  x: {shape: [N, T], dtype: int64}
  y: {shape: [N], dtype: int64}
graph:
%s
loss: cross_entropy(logits, y)
"""


@pytest.mark.parametrize("entries, names, shapes", [
    (["h: rnn(embedding(x, V, E), H)", "logits: dense(mean(h, axis=1), K)"],
     ["h.W", "h.rnn2.W", "h.rnn2.U", "h.rnn2.b"], {"h.W": (10, 5), "h.rnn2.W": (5, 4)}),
    (["h: mean(embedding(x, V, E), axis=1)", "logits: dense(dense(h, H), K)"],
     ["logits.W", "logits.b", "logits.dense2.W", "logits.dense2.b"], {"logits.W": (5, 4), "logits.dense2.W": (4, 3)}),
    (["e: embedding(x, V, E)", "h: rnn(e, H)", "logits: dense(mean(h, axis=1), K)"],
     ["e.W", "h.W", "h.U", "h.b"], {"e.W": (10, 5), "h.W": (5, 4)}),
    (["e: embedding(x, V, E)", "h, s: rnn(e, H, return_state=true)", "logits: dense(s, K)"], ["h_s.W"], {}),
])
def test_readmes_layer_parameter_names_hold(entries, names, shapes):
    """README says how a layer's parameters are named, with a layer inside another in one entry
    (h: rnn(embedding(x, V, E), H) makes h.W and h.rnn2.*), which it did not describe: each name
    it shows is the name the compiler gives, and the one of an entry's several layers that takes
    the entry's name is the one README says."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    prose = " ".join(README.split())
    assert "**Layer parameters are named after their graph entry.**" in prose
    example = entries[0] if "h: mean" not in entries[0] else "logits: dense(dense(h, H), K)"
    assert f"`{example}`" in prose, example
    for name in names:
        assert f"`{name}`" in prose, name
    cm = compile_spec(spec_from_text(LAYER_NAMES_SPEC % "".join(f"  {e}\n" for e in entries)))
    assert set(names) <= set(cm.params), list(cm.params)
    for name, shape in shapes.items():
        assert tuple(cm.params[name].value.shape) == shape, name


def test_readmes_joined_entry_name_collision_holds():
    """README: an entry named h_s beside h, s: rnn(...) is refused, as both make h_s.W."""
    from compiler.training import compile_spec
    from spec import spec_from_text
    from spec.errors import FlowgradError

    assert "\"parameter 'h_s.W' is defined twice\"" in " ".join(README.split())
    entries = ["e: embedding(x, V, E)", "h, s: rnn(e, H, return_state=true)", "h_s: dense(s, K)", "logits: h_s"]
    with pytest.raises(FlowgradError, match="parameter 'h_s.W' is defined twice"):
        compile_spec(spec_from_text(LAYER_NAMES_SPEC % "".join(f"  {e}\n" for e in entries)))


def test_readmes_multi_head_attention_compiles_and_matches_its_reshapes(tmp_path):
    """The Porting paragraph's multi-head attention lines, with the h, keep and v they assume,
    make a spec that checks: heads split by reshape(..., [N, T, NH, D]) and joined back."""
    from compiler.training import check_spec
    from spec import load_spec

    (lines,) = [b for b in blocks("") if "reshape(dense(h, E), [N, T, NH, D])" in b]
    graph = "\n".join(line.split("#")[0].rstrip() for line in lines.strip("\n").splitlines())
    (tmp_path / "mha.yaml").write_text(f"""flowgrad: 1
name: mha
dims: {{E: 8, NH: 2, D: 4, V: 11}}
inputs:
  x: {{shape: [N, T], dtype: int64}}
  lengths: {{shape: [N], dtype: int64}}
graph:
  h: embedding(x, V, E)
  keep: unsqueeze(positions(x, axis=1) < unsqueeze(lengths, axes=1), axes=[1, 2])
  v: transpose(reshape(dense(h, E), [N, T, NH, D]), [0, 2, 1, 3])
{graph}
loss: mean(o * o)
""")
    low = check_spec(load_spec(str(tmp_path / "mha.yaml")))
    assert tuple(low.env["o"].shape) == ("N", "T", 8)
