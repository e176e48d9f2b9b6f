"""A corpus of specs that load (YAML and schema are fine) but that the compiler
must refuse: each file in bad_specs/compile/ holds one mistake and starts with

    # expect: LINE:COL: message | hint

The error must be a FlowgradError located at LINE:COL (the offending text: the
operator, the argument, the declaration...), and `flowgrad check` must report
it on its first line with exit code 1 and no traceback.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from compiler.training import check_spec, compile_spec
from spec import load_spec
from spec.errors import FlowgradError

HERE = Path(__file__).parent
COMPILE = sorted((HERE / "bad_specs" / "compile").glob("*.yaml"))
LOADER = sorted((HERE / "bad_specs").glob("*.yaml"))

# Mistakes the schema or loader already catches, kept in the corpus because
# they belong with the training-section ones (negative lr is not a compiler error).
CAUGHT_AT_LOAD = {"negative_lr.yaml", "unknown_optimizer.yaml", "schedule_unknown.yaml"}

LOC = re.compile(r"^(\d+):(\d+): ")


def expectations(path: Path) -> list[tuple[str, str]]:
    """[(LINE:COL: message, hint)] from the file's '# expect: ' lines."""
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            where_message, _, hint = line[len("# expect: "):].partition(" | ")
            out.append((where_message, hint))
    return out


def first_error(path: Path) -> tuple[str, FlowgradError]:
    """(stage, error): the first FlowgradError of load -> check -> compile."""
    try:
        spec = load_spec(str(path))
    except FlowgradError as e:
        return "load", e
    try:
        check_spec(spec)
    except FlowgradError as e:
        return "check", e
    with pytest.raises(FlowgradError) as info:
        compile_spec(spec)
    return "compile", info.value


def test_corpus_is_complete():
    assert len(COMPILE) >= 25
    for path in COMPILE:
        exp = expectations(path)
        assert len(exp) == 1, f"{path.name}: one '# expect:' line per file"
        assert LOC.match(exp[0][0]), f"{path.name}: the expectation starts with LINE:COL"
        assert exp[0][1].strip(), f"{path.name}: the expectation records the hint after ' | '"
    assert CAUGHT_AT_LOAD <= {p.name for p in COMPILE}


@pytest.mark.parametrize("path", COMPILE, ids=[p.name for p in COMPILE])
def test_compile_error(path):
    (where_message, hint), = expectations(path)
    stage, err = first_error(path)
    if path.name in CAUGHT_AT_LOAD:
        assert stage in ("load", "check", "compile")
    else:
        assert stage != "load", f"the schema caught it, not the compiler: {err}"
    report = str(err)
    assert f"{path}:{where_message}" in report, report
    assert err.hint and err.hint.strip(), f"no hint: {report}"
    assert hint in report, report
    assert "Traceback" not in report


@pytest.mark.parametrize("path", COMPILE, ids=[p.name for p in COMPILE])
def test_check_finds_what_compile_finds(path):
    """`check` is the dry run of `compile`: nothing that compile refuses passes it."""
    stage, _ = first_error(path)
    assert stage in ("load", "check")


@pytest.mark.parametrize("path", COMPILE, ids=[p.name for p in COMPILE])
def test_compile_refuses_what_check_refuses(path):
    """and `train` compiles what `check` refuses nothing of: a layer that only an output read
    passed compile and trained without its weights moving, where check refused the spec."""
    stage, err = first_error(path)
    if stage != "check":
        return
    with pytest.raises(FlowgradError) as info:
        compile_spec(load_spec(str(path)))
    assert str(info.value) == str(err)



def test_compile_accepts_a_layer_written_in_the_loss():
    """check passed loss: cross_entropy(dense(h, K), y), and train refused it: 'parameter dense.W
    never reaches the loss' (compile lowered the loss a second time, which made the layer's
    weights again as dense2.W). The loss is lowered once and its layer trains."""
    from spec import spec_from_text

    text = """flowgrad: 1
name: inline
dims: {D: 6, H: 5, K: 3}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
graph:
  h: dense(x, H, act=relu)
loss: cross_entropy(dense(h, K), y)
"""
    cm = compile_spec(spec_from_text(text, "inline.yaml"), graphs=("train",))
    assert list(cm.params) == ["h.W", "h.b", "dense.W", "dense.b"]
    assert {f"next/{p}" for p in cm.params} <= {o.name for o in cm.graphs["train"].outputs}


@pytest.mark.parametrize("name", ["loss_of_fixed_parameters.yaml", "loss_without_parameters.yaml"])
def test_a_lone_loss_that_trains_nothing_is_told_nothing_of_objectives(name):
    """A spec's lone loss is 'the loss', not objective 'main': its refusals still hinted to 'leave
    the objective out' and that 'its params ['*'] match none of: (no parameters)', words of an
    objectives section the spec does not have."""
    _, err = first_error(next(p for p in COMPILE if p.name == name))
    assert "objective" not in str(err) and "params [" not in str(err), str(err)

runner = CliRunner()


@pytest.mark.parametrize("path", LOADER + COMPILE, ids=[f"{p.parent.name}/{p.name}" for p in LOADER + COMPILE])
def test_cli_check_reports_the_error(path):
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 1, result.output
    # an uncaught exception would show up here, not in the output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    first = result.output.splitlines()[0]
    assert first.startswith("error: "), result.output
    exp = expectations(path)
    locs = [m.group(0).rstrip(": ") for m in (LOC.match(w) for w, _ in exp) if m]
    if locs:
        assert any(f"{path}:{loc}:" in first for loc in locs), (locs, result.output)
    else:  # e.g. the alias bomb, whose expectation names no position
        assert any(w in first for w, _ in exp), result.output
    if path in COMPILE:
        (where_message, hint), = exp
        assert LOC.sub("", where_message) in first, result.output
        assert hint in result.output, result.output
