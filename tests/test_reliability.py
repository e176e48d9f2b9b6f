"""Reliability and safety: hostile YAML, bad data, interrupted and failing runs,
ONNX files from strangers, two processes on one run directory, and the
warnings of `flowgrad check`.

Every user-facing failure must end in a clean error: exit code 1, a message
(located where there is a spec line to point at) and no traceback.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data
from typer.testing import CliRunner

from cli import app
from compiler.training import check_spec
from runtime.checkpoint import load_checkpoint
from spec import load_spec, spec_from_text
from spec.errors import FlowgradError, SpecError

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "mlp.yaml")
SMALL = ["--set", "dims.H=32", "--threads", "1", "--device", "cpu", "--quiet"]
X_LINE = f"{MLP}:6:3"  # where models/mlp.yaml declares its inputs x and y
Y_LINE = f"{MLP}:7:3"

runner = CliRunner()


def invoke(*args, code: int):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    return result


def error_line(result) -> str:
    return next(line for line in result.output.splitlines() if line.startswith("error: "))


def _flowgrad() -> list[str]:
    exe = Path(sys.executable).parent / "flowgrad"
    return [str(exe)] if exe.exists() else [sys.executable, str(ROOT / "cli.py")]


def same_state(a_path, b_path) -> None:
    a, _ = load_checkpoint(str(a_path))
    b, _ = load_checkpoint(str(b_path))
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def timeless(path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in Path(path).read_text().splitlines()]


# ====================================================================== warnings of `check`
UNUSED = """\
flowgrad: 1
name: m
dims: {D: 4}
inputs:
  x: {shape: [N, D]}
params:
  W: {shape: [D, D], init: zeros}
graph:
  h: x @ W
  junk: relu(h)
  junk2: junk * 2.0
  left, right: split(h, 2, axis=-1)
  side: mean(x)
blocks:
  step:
    in: [h_t]
    graph:
      out: h_t + side
    out: [out]
outputs:
  y: step(left)
loss: mean(h)
"""


def test_check_warns_about_unused_entries_with_their_location(tmp_path):
    path = tmp_path / "unused.yaml"
    path.write_text(UNUSED)
    warnings = [str(w) for w in check_spec(load_spec(str(path))).warnings]
    assert warnings == [
        f"{path}:10:3: graph entry 'junk' reaches no loss, metric or output (only 'junk2' reads it, and nothing uses that)"
        "\n  hint: use it in the loss, a metric or an output, or remove it",
        f"{path}:11:3: graph entry 'junk2' is never used\n  hint: use it in the loss, a metric or an output, or remove it",
    ]  # 'left, right' is used through 'left', and 'side' inside the block that an output runs
    result = invoke("check", path, code=0)
    assert f"warning: {path}:10:3: graph entry 'junk' reaches no loss" in result.output
    assert f"warning: {path}:11:3: graph entry 'junk2' is never used" in result.output
    assert "spec OK (2 warnings)" in result.output


def test_check_warns_about_blocks_never_run_and_inputs_never_read(tmp_path):
    """A block nothing runs and an input nothing reads passed check without a word (only graph
    entries were looked at); data still had to provide the input."""
    path = tmp_path / "unused.yaml"
    path.write_text(UNUSED.replace("  x: {shape: [N, D]}\n", "  x: {shape: [N, D]}\n  z: {shape: [N, D]}\n", 1)
                    .replace("blocks:\n", "blocks:\n  idle:\n    in: [a]\n    graph:\n      b: a * 2\n    out: [b]\n", 1))
    warnings = [w.message for w in check_spec(load_spec(str(path))).warnings]
    assert "input 'z' is never read" in warnings and "block 'idle' is never run" in warnings
    assert warnings.index("input 'z' is never read") < warnings.index("block 'idle' is never run")  # file order


def test_check_warns_about_a_parameter_no_objective_trains(tmp_path):
    """Objectives whose params: globs leave a trainable parameter out trained without it, and it kept
    its initial values without a word (which may be meant, but went unsaid)."""
    path = tmp_path / "objectives.yaml"
    path.write_text("""\
flowgrad: 1
name: m
dims: {D: 4}
inputs:
  x: {shape: [N, D]}
params:
  W: {shape: [D, D], init: zeros}
  V: {shape: [D, D], init: zeros}
  U: {shape: [D, D], init: zeros}
graph:
  la: mean(x @ W)
  lb: mean(x @ V + x @ U)
loss: la
train:
  objectives:
    a: {loss: la, params: [W]}
    b: {loss: lb, params: [V]}
  optimizer: {sgd: {lr: 0.1}}
""")
    warnings = [str(w) for w in check_spec(load_spec(str(path))).warnings]
    assert warnings == [f"{path}:9:3: parameter 'U' is trained by no objective: no params: glob takes it, so it keeps "
                        "its initial values\n  hint: add it to an objective's params, or mark it 'trainable: false' "
                        "if it is meant to stay as it starts"]


def test_check_does_not_warn_about_parameters_of_a_spec_without_a_loss(tmp_path):
    """A spec without a loss (an inference-only spec) was told, for each of its parameters, that
    "no params: glob takes it", though it names no globs and has no objective to take them."""
    path = tmp_path / "inference.yaml"
    path.write_text("""\
flowgrad: 1
name: m
dims: {D: 4}
inputs:
  x: {shape: [N, D]}
params:
  W: {shape: [D, D], init: zeros}
outputs:
  y: x @ W
""")
    assert check_spec(load_spec(str(path))).warnings == []


def test_check_names_every_entry_that_reads_an_unused_one(tmp_path):
    """A value read by two entries that nothing uses was said to be read by the first alone
    ("only 'dead_b' reads it"), though 'dead_c' read it too."""
    path = tmp_path / "readers.yaml"
    path.write_text("""\
flowgrad: 1
name: readers
dims: {D: 5, H: 4, K: 3}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
graph:
  h: tanh(dense(x, H))
  dead: relu(h)
  dead_b: dead * dead
  dead_c: dead + 1
  logits: dense(h, K)
loss: cross_entropy(logits, y)
""")
    warnings = [w.one_line() for w in check_spec(load_spec(str(path))).warnings]
    assert warnings == [
        f"{path}:9:3: graph entry 'dead' reaches no loss, metric or output (only 'dead_b' and 'dead_c' read it, "
        "and nothing uses them)",
        f"{path}:10:3: graph entry 'dead_b' is never used",
        f"{path}:11:3: graph entry 'dead_c' is never used",
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*.yaml")), ids=lambda p: p.name)
def test_models_have_no_unused_entries(path):
    assert [str(w) for w in check_spec(load_spec(str(path))).warnings] == []


# ====================================================================== hostile YAML
HEAD = "flowgrad: 1\nname: m\ninputs: {x: {shape: [N, 4]}}\nparams: {W: {shape: [4], init: zeros}}\n"


def _laughs(levels=9, width=9):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "flowgrad: 1\nname: bomb\n" + "\n".join(lines) + "\n"


HOSTILE = {
    "billion laughs": (_laughs(), "YAML aliases expand to more than"),
    "merge-key bomb": ("flowgrad: 1\nname: m\na: &a {" + ", ".join(f"k{i}: {i}" for i in range(50)) + "}\n"
                       + "".join(f"b{i}: &b{i} {{<<: [*a, *b{i - 1}]}}\n" if i else "b0: &b0 {<<: *a}\n" for i in range(60)),
                       "YAML aliases"),
    "alias cycle": ("flowgrad: 1\nname: m\nx: &x [1, *x]\n", "cycle"),
    "alias chain": ("flowgrad: 1\nname: m\na0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 90)),
                    "nest more than"),
    "6 MB of comment": ("flowgrad: 1\nname: m\n" + "#" * 6_000_000 + "\n", "too large"),
    "1.5 MB string": ("flowgrad: 1\nname: m\ndoc: '" + "a" * 1_500_000 + "'\n", "too large"),
    "60k keys": ("flowgrad: 1\nname: m\n" + "".join(f"k{i}: {i}\n" for i in range(60_000)), "more than 10,000 values"),
    "30k values": ("flowgrad: 1\nname: m\ndoc: [" + ", ".join(["1"] * 30_000) + "]\n", "more than 10,000 values"),
    "deep flow nesting": ("flowgrad: 1\nname: m\nx: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested more than"),
    "deep block nesting": ("flowgrad: 1\nname: m\n" + "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n",
                           "nested more than"),
    "integer key": (HEAD + "graph:\n  1: x\n", "a key must be a string"),
    "float key": (HEAD + "graph:\n  1.5: x\n", "a key must be a string"),
    "null key": (HEAD + "graph:\n  ~: x\n", "a key must be a string"),
    "boolean key": (HEAD + "graph:\n  yes: x\n", "a key must be a string"),
    "list key": (HEAD + "graph:\n  ? [a, b]\n  : x\n", "a key must be a string, not a list"),
    "mapping key": (HEAD + "graph:\n  ? {a: 1}\n  : x\n", "a key must be a string, not a mapping"),
    "duplicate top-level key": (HEAD + "name: n\n", "duplicate key 'name'"),
    "duplicate nested key": (HEAD + "graph: {h: x, h: x * W}\n", "duplicate key 'h'"),
    "python tag": (HEAD + "doc: !!python/object/apply:os.system ['echo pwned']\n", "unsupported YAML tag"),
    "NUL character": ("flowgrad: 1\nname: m\ndoc: \"a\x00b\"\n", "cannot read YAML"),
    "10**10**10": (HEAD + "graph:\n  h: x * W * 10**10**10\nloss: mean(h)\n", "too large"),
    "2**(2**30)": (HEAD + "graph:\n  h: x * W * 2**1073741824\nloss: mean(h)\n", "too large"),
    "5000-digit integer": (HEAD + "graph:\n  h: x * " + "9" * 5000 + "\nloss: mean(h)\n", "too long"),
    "deep expression": (HEAD + "graph:\n  h: " + "-" * 3000 + "x\nloss: mean(h)\n", "too deeply nested"),
    "10,001-character expression": (HEAD + "graph:\n  h: " + "(" * 5000 + "x" + ")" * 5000 + "\nloss: mean(h)\n",
                                    "too long"),
    "huge size": (HEAD.replace("[4]", "[1099511627777]"), "too large"),
}


@pytest.mark.parametrize("text,message", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_yaml_is_refused_fast_and_small(text, message):
    t0 = time.process_time()  # the CPU time it takes: other load on a shared machine does not count
    with pytest.raises(FlowgradError) as info:
        check_spec(spec_from_text(text, "hostile.yaml"))
    seconds = time.process_time() - t0
    assert message in str(info.value)
    assert seconds < 2.0, f"{seconds:.2f} s"
    tracemalloc.start()
    try:
        with pytest.raises(FlowgradError):
            check_spec(spec_from_text(text, "hostile.yaml"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200e6 + 3 * len(text), f"{peak / 1e6:.0f} MB"


def test_hostile_files_through_the_cli(tmp_path):
    """The same, from files: invalid UTF-8, a NUL byte, a directory, a file too large."""
    cases = {
        "latin1.yaml": ("flowgrad: 1\nname: m\ndoc: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        "nul.yaml": (b"flowgrad: 1\nname: m\x00\n", "cannot read YAML"),
        "big.yaml": (b"flowgrad: 1\nname: m\n" + b"#" * 2_000_000, "too large"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        t0 = time.perf_counter()
        result = invoke("check", tmp_path / name, code=1)
        assert message in error_line(result) and time.perf_counter() - t0 < 2.0
    assert "is a directory" in error_line(invoke("check", tmp_path, code=1))


def test_a_long_chain_of_entries_and_blocks_that_run_themselves():
    """No recursion limit is hit by long chains, and recursion by blocks is refused."""
    chain = HEAD + "graph:\n  a0: x * W\n" + "".join(f"  a{i}: a{i - 1} + 1.0\n" for i in range(1, 1500)) + "loss: mean(a1499)\n"
    check_spec(spec_from_text(chain, "chain.yaml"))
    cyclic = chain.replace("a0: x * W", "a0: x * W + a1499")
    with pytest.raises(SpecError, match=r"cycle in the graph: a0 -> a1499 -> .* \(1490 more\) -> .* -> a1 -> a0"):
        check_spec(spec_from_text(cyclic, "chain.yaml"))
    mutual = HEAD + """\
blocks:
  f:
    in: [a]
    graph: {b: g(a) + 1.0}
    out: [b]
  g:
    in: [a]
    graph: {b: f(a) * 2.0}
    out: [b]
graph:
  h: f(x * W)
loss: mean(h)
"""
    with pytest.raises(SpecError, match=r"block 'f' runs itself \(f -> g -> f\)"):
        check_spec(spec_from_text(mutual, "blocks.yaml"))


# ====================================================================== bad data
def _x(n=50, d=64):
    return np.random.default_rng(0).random((n, d), dtype=np.float32)


def _y(n=50):
    return np.random.default_rng(1).integers(0, 10, n)


def _write_npz(path, **arrays):
    np.savez(path, **arrays)


def _truncated(path, keep):
    np.savez(path, x=_x(), y=_y())
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


def _bad_crc(path):
    np.savez(path, x=_x(), y=_y())
    data = bytearray(path.read_bytes())
    i = data.find(b"\x93NUMPY") + 400  # inside x's (uncompressed) bytes
    data[i:i + 64] = bytes(64)
    path.write_bytes(bytes(data))


BAD_DATA = {
    # name: (writer, message, spec line the error points at or None)
    "wrong name": (lambda p: _write_npz(p, x=_x(), label=_y()), "no array named 'y'", Y_LINE),
    "wrong rank": (lambda p: _write_npz(p, x=_x().reshape(50, 8, 8), y=_y()), "array 'x' has rank 3 [50, 8, 8], the spec declares [N, 64]", X_LINE),
    "wrong size": (lambda p: _write_npz(p, x=_x(d=63), y=_y()), "array 'x' has size 63 in dim 1", X_LINE),
    "float labels": (lambda p: _write_npz(p, x=_x(), y=_y().astype(np.float32)), "array 'y' has dtype float32", Y_LINE),
    "complex features": (lambda p: _write_npz(p, x=_x().astype(np.complex64), y=_y()), "array 'x' has dtype complex64", X_LINE),
    "text features": (lambda p: _write_npz(p, x=np.full((50, 64), "a"), y=_y()), "array 'x' has dtype <U1", X_LINE),
    "unequal lengths": (lambda p: _write_npz(p, x=_x(), y=_y(40)), "array 'y' has 40 examples, but array 'x' has 50", Y_LINE),
    "NaN": (lambda p: _write_npz(p, x=np.where(np.arange(64) == 3, np.nan, _x()).astype(np.float32), y=_y()),
            "array 'x' has NaN or inf values (first at example 0)", X_LINE),
    "inf": (lambda p: _write_npz(p, x=np.concatenate([_x(9), np.full((1, 64), np.inf, np.float32), _x(40)]), y=_y()),
            "array 'x' has NaN or inf values (first at example 9)", X_LINE),
    "negative labels": (lambda p: _write_npz(p, x=_x(), y=-_y() - 1), "array 'y' has negative values", Y_LINE),
    "labels above the class count": (lambda p: _write_npz(p, x=_x(), y=_y() + 100), "but the model has 10 classes", Y_LINE),
    "empty arrays": (lambda p: _write_npz(p, x=_x(0), y=_y(0)), "array 'x' is empty", X_LINE),
    "no arrays": (lambda p: _write_npz(p), "contains no arrays", None),
    "pickled object array": (lambda p: _write_npz(p, x=np.array([{"a": 1}] * 50, dtype=object), y=_y()),
                             "array 'x' is an object array (pickled Python objects)", X_LINE),
    "truncated in the middle": (lambda p: _truncated(p, lambda n: n // 2), "not a readable .npz file", None),
    "truncated at the end": (lambda p: _truncated(p, lambda n: n - 10), "not a readable .npz file", None),
    "corrupted bytes": (_bad_crc, "Bad CRC-32", None),
    "a .npy file": (lambda p: (np.save(p.with_suffix(".npy"), _x()), os.replace(p.with_suffix(".npy"), p)),
                    "is a single .npy array, not an .npz archive", None),
    "a pickle": (lambda p: p.write_bytes(__import__("pickle").dumps({"x": _x(), "y": _y()})), "not an .npz file", None),
    "a text file": (lambda p: p.write_text("x,y\n0.5,1\n"), "not an .npz file", None),
}


@pytest.mark.parametrize("name", list(BAD_DATA))
def test_bad_data_is_refused_before_training(tmp_path, name):
    write, message, line = BAD_DATA[name]
    path = tmp_path / "data.npz"
    write(path)
    run = tmp_path / "run"
    result = invoke("train", MLP, *SMALL, "--data", path, "--valid", path, "--epochs", "1", "--run-dir", run, code=1)
    first = error_line(result)
    assert message in first, result.output
    if line:
        assert first.startswith(f"error: {line}: "), first  # the spec line that declares the array
    assert not (run / "checkpoint.npz").exists() and not (run / "run.json").exists()  # before training started


def test_bad_validation_data_is_named(tmp_path):
    np.savez(tmp_path / "train.npz", x=_x(), y=_y())
    np.savez(tmp_path / "valid.npz", x=_x(d=32), y=_y())
    result = invoke("train", MLP, *SMALL, "--data", tmp_path / "train.npz", "--valid", tmp_path / "valid.npz",
                    "--run-dir", tmp_path / "run", code=1)
    assert f"{X_LINE}: {tmp_path / 'valid.npz'}: array 'x' has size 32 in dim 1" in error_line(result)


def test_symbolic_dims_must_agree_across_arrays(tmp_path):
    spec = tmp_path / "seq.yaml"
    spec.write_text("flowgrad: 1\nname: seq\ndims: {E: 4}\ninputs:\n  x: {shape: [N, T, E]}\n"
                    "  y: {shape: [N, T], dtype: int64}\ngraph:\n  logits: dense(x, 3)\n"
                    "loss: cross_entropy(logits, y)\ntrain: {optimizer: {sgd: {lr: 0.1}}}\n")
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 7, 4), np.float32), y=np.zeros((5, 6), np.int64))
    result = invoke("train", spec, "--data", tmp_path / "d.npz", "--quiet", "--run-dir", tmp_path / "run", code=1)
    assert f"{spec}:6:3: " in error_line(result)
    assert "array 'y' has size 6 in dim 1 (T), but array 'x' has T = 7" in error_line(result)


def test_ids_beyond_an_embedding_table_are_refused_before_training(tmp_path):
    spec = tmp_path / "emb.yaml"
    spec.write_text("flowgrad: 1\nname: emb\ndims: {V: 5, E: 3}\ninputs:\n  x: {shape: [N], dtype: int64}\n"
                    "  y: {shape: [N], dtype: int64}\ngraph:\n  logits: dense(embedding(x, V, E), 2)\n"
                    "loss: cross_entropy(logits, y)\ntrain: {optimizer: {sgd: {lr: 0.1}}}\n")
    np.savez(tmp_path / "d.npz", x=np.array([0, 4, 7, 1]), y=np.array([0, 1, 1, 0]))
    result = invoke("train", spec, "--data", tmp_path / "d.npz", "--quiet", "--run-dir", tmp_path / "run", code=1)
    assert error_line(result).startswith(f"error: {spec}:5:3: ")
    assert "array 'x' has the value 7 (first too large at example 2), but it indexes a table of 5 rows" in error_line(result)


def test_labels_out_of_range_stop_cleanly_at_the_first_step(tmp_path, monkeypatch):
    """Where the data check cannot see an index (say, one used inside a loop), onnxruntime's
    refusal still ends the run with one line naming the step."""
    import compiler.training

    monkeypatch.setattr(compiler.training, "index_bounds", lambda g: {})
    np.savez(tmp_path / "d.npz", x=_x(), y=_y() + 100)
    result = invoke("train", MLP, *SMALL, "--data", tmp_path / "d.npz", "--run-dir", tmp_path / "run", code=1)
    assert "onnxruntime failed in the training step 0 (epoch 1): GatherElements op: Out of range value" in error_line(result)


# ====================================================================== interrupted runs
def _wait(proc, until, what: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if until():
            return
        assert proc.poll() is None, f"the run ended before {what}: {proc.stderr.read().decode()[-2000:]}"
        time.sleep(0.0005)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def _tmp_files(run):
    return [p.name for p in Path(run).iterdir() if p.name.startswith(".tmp-")] if Path(run).exists() else []


def _checkpoint_step(path) -> int:
    try:
        return load_checkpoint(str(path))[1]["step"]
    except FlowgradError:  # not written yet, or being replaced just now
        return -1


def test_three_sigkills_then_resume_equal_an_uninterrupted_run(tmp_path):
    """A real `flowgrad train` killed with SIGKILL three times: mid-epoch, while a checkpoint's
    temporary file is being written, and just after an epoch ended; each time resumed."""
    args = _flowgrad() + ["train", MLP, *SMALL, "--epochs", "8", "--checkpoint-every", "3", "--seed", "5"]
    ref = subprocess.run(args + ["--run-dir", str(tmp_path / "ref")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    ckpt = run / "checkpoint.npz"
    start = lambda *extra: subprocess.Popen(args + ["--run-dir", str(run), *extra],  # noqa: E731
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # 1. mid-epoch, once a checkpoint from inside an epoch exists
    proc = start()
    _wait(proc, lambda: _checkpoint_step(ckpt) >= 6, "a mid-epoch checkpoint")
    _kill(proc)
    steps = [_checkpoint_step(ckpt)]
    # 2. while a checkpoint is being written: right after its temporary file appears
    proc = start("--resume")
    _wait(proc, lambda: bool(_tmp_files(run)), "a checkpoint's temporary file")
    _kill(proc)
    steps.append(_checkpoint_step(ckpt))  # the previous or the new checkpoint, whole either way
    # 3. just after an epoch ended (its line in metrics.jsonl is written before its checkpoints)
    metrics = run / "metrics.jsonl"
    done = len(metrics.read_text().splitlines())
    proc = start("--resume")
    _wait(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) > done, "the end of an epoch")
    _kill(proc)
    steps.append(_checkpoint_step(ckpt))
    assert all(s > 0 for s in steps) and steps[-1] < 8 * 23, steps
    # 4. to the end
    final = subprocess.run(args + ["--run-dir", str(run), "--resume"], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr

    same_state(tmp_path / "ref" / "checkpoint.npz", ckpt)
    same_state(tmp_path / "ref" / "best.npz", run / "best.npz")
    assert timeless(run / "metrics.jsonl") == timeless(tmp_path / "ref" / "metrics.jsonl")
    assert _tmp_files(run) == []  # a killed write's temporary file is cleaned up


def _train_in_process(tmp_path, name, *extra, code=0):
    return invoke("train", MLP, *SMALL, "--epochs", "2", "--checkpoint-every", "5", "--run-dir", tmp_path / name,
                  *extra, code=code)


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import runtime.checkpoint as C

    real, calls = C._write, []

    def fill_the_disk(f, data, path):
        if path.endswith("checkpoint.npz"):
            calls.append(path)
            if len(calls) == 2:
                f.write(data[:len(data) // 3])  # part of it made it to disk
                raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data, path)

    monkeypatch.setattr(C, "_write", fill_the_disk)
    result = _train_in_process(tmp_path, "run", code=1)
    run = tmp_path / "run"
    assert f"cannot write {os.path.abspath(run / 'checkpoint.npz')}: No space left on device" in result.output \
        or f"cannot write {run / 'checkpoint.npz'}: No space left on device" in result.output, result.output
    assert "the previous checkpoint is intact" in result.output
    _, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert meta["step"] == 5  # the first checkpoint, whole
    assert _tmp_files(run) == []
    # once there is space again, --resume ends where an uninterrupted run ends
    monkeypatch.setattr(C, "_write", real)
    _train_in_process(tmp_path, "run", "--resume")
    _train_in_process(tmp_path, "ref")
    same_state(tmp_path / "ref" / "checkpoint.npz", run / "checkpoint.npz")


def test_a_resume_that_fills_the_disk_leaves_the_run_readable(tmp_path, monkeypatch):
    """A resume writes the run's spec.yaml and graphs again. spec.yaml was a plain copy and the
    graphs plain onnx.save_model calls, both truncating the old file first: a full disk there
    left an empty spec.yaml or graph, and eval, export and plot of the run failed until a
    resume got through. They are now written whole or not at all, as checkpoints are."""
    import shutil

    import compiler.training
    import runtime.checkpoint as C

    spec = tmp_path / "mlp.yaml"  # a spec without --set overrides: spec.yaml is a copy of the file
    spec.write_text(Path(MLP).read_text().replace("H: 256", "H: 32"))
    common = ["--threads", "1", "--device", "cpu", "--quiet", "--run-dir", tmp_path / "run"]
    invoke("train", spec, "--epochs", "1", *common, code=0)
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in (run / "spec.yaml", run / "graphs" / "infer.onnx")}

    def full(f, data: bytes) -> None:
        f.write(data[:len(data) // 3])
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def write_fully(data, path):  # a plain write of `path` on a full disk
        with open(path, "wb") as f:
            full(f, data)

    real_copy, real_save, real_write = shutil.copyfile, compiler.training.onnx.save_model, C._write
    for name in ("spec.yaml", "infer.onnx"):  # the disk fills up while this file is written, however it is
        monkeypatch.setattr(shutil, "copyfile", lambda src, dst, **kw: write_fully(
            Path(src).read_bytes(), dst) if str(dst).endswith(name) else real_copy(src, dst, **kw))
        monkeypatch.setattr(compiler.training.onnx, "save_model", lambda model, path, *a, **kw: write_fully(
            model.SerializeToString(), path) if str(path).endswith(name) else real_save(model, path, *a, **kw))
        monkeypatch.setattr(C, "_write", lambda f, data, path: full(f, data) if path.endswith(name)
                            else real_write(f, data, path))
        result = invoke("train", spec, "--epochs", "2", "--resume", *common, code=1)
        assert "No space left on device" in error_line(result)
        monkeypatch.undo()
        assert all(p.read_bytes() == b for p, b in before.items()), name
        invoke("export", run, "-o", tmp_path / "m.onnx", code=0)


@pytest.mark.parametrize("stop", ["full disk", "ctrl-c"])
@pytest.mark.parametrize("name", ["spec.yaml", "infer.onnx", "manifest.json"])
def test_a_new_run_stopped_while_writing_its_files_can_be_trained_again(tmp_path, monkeypatch, name, stop):
    """A new run writes its spec.yaml, graphs and run.json before its first step. Stopped while
    writing the spec or the graphs (the disk full, Ctrl-C), it left them without the run.json
    that marks a run's directory, and every later train, --overwrite included, refused the
    directory as someone else's ('is not a run directory, and training would replace its graphs,
    spec.yaml'). The same command now trains there once it can write."""
    import runtime.checkpoint as C

    real_write = C._write

    def stopped(f, data, path):
        if path.endswith(name):
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            f.write(data[:len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data, path)

    monkeypatch.setattr(C, "_write", stopped)
    run = tmp_path / "run"
    args = ["train", MLP, *SMALL, "--epochs", "1", "--run-dir", run]
    invoke(*args, code=130 if stop == "ctrl-c" else 1)
    monkeypatch.setattr(C, "_write", real_write)
    invoke(*args, code=0)
    invoke("export", run, "-o", tmp_path / "m.onnx", code=0)


@pytest.mark.parametrize("name", ["infer.onnx", "checkpoint.npz"])
def test_a_new_run_that_fills_the_disk_before_its_first_checkpoint_is_not_sent_to_resume(tmp_path, monkeypatch,
                                                                                          name):
    """A full disk before a run's first checkpoint (writing its graphs, or its first epoch's
    checkpoint, which best.npz follows) said 'the previous checkpoint is intact; free some space and --resume', and the
    resume said 'nothing to resume: no checkpoint'. It now says there is nothing to resume yet,
    and to train again as before, which then trains."""
    import runtime.checkpoint as C

    real_write = C._write

    def full(f, data, path):
        if path.endswith(name):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data, path)

    monkeypatch.setattr(C, "_write", full)
    run = tmp_path / "run"
    args = ["train", MLP, *SMALL, "--epochs", "1", "--run-dir", run]
    result = invoke(*args, code=1)
    assert "No space left on device" in error_line(result)
    assert "previous checkpoint is intact" not in result.output
    assert "no checkpoint was written yet (--resume would find none)" in result.output, result.output
    assert "train again as before" in result.output
    monkeypatch.setattr(C, "_write", real_write)
    invoke(*args, code=0)


def test_a_disk_full_between_the_first_checkpoint_and_best_says_how_to_go_on(tmp_path, monkeypatch):
    """The first epoch writes checkpoint.npz, then best.npz. (best.npz went first: a full disk
    between the two left best.npz alone, which --resume does not read.) A full disk at best.npz
    keeps the checkpoint, which holds the best; --resume writes best.npz from it."""
    import runtime.checkpoint as C

    real_write = C._write

    def full(f, data, path):
        if path.endswith("best.npz"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(f, data, path)

    monkeypatch.setattr(C, "_write", full)
    run = tmp_path / "run"
    args = ["train", MLP, *SMALL, "--epochs", "1", "--run-dir", run]
    result = invoke(*args, code=1)
    assert "No space left on device" in error_line(result)
    assert not (run / "best.npz").exists() and (run / "checkpoint.npz").exists()
    assert "the previous checkpoint is intact; free some space and --resume" in " ".join(result.output.split())
    monkeypatch.setattr(C, "_write", real_write)
    invoke(*args, "--resume", code=0)
    assert (run / "best.npz").read_bytes() == (run / "checkpoint.npz").read_bytes()


def _damage(kind: str, path: Path) -> None:
    import io

    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "a flipped byte":
        path.write_bytes(data[:600] + bytes([data[600] ^ 0xFF]) + data[601:])
    else:  # the arrays whole, but no record, or a record that is not one
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        if kind == "a record that is a list":
            arrays["__meta__"] = np.frombuffer(b"[1, 2]", np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("kind", ["truncated", "empty", "a flipped byte", "no record", "a record that is a list"])
def test_a_damaged_checkpoint_is_one_line_with_a_hint(tmp_path, kind):
    """A checkpoint with all its arrays but a record that was not a dict got through to
    meta.get (a traceback); one without the record, or an unreadable one, said so without a
    hint. Every damaged checkpoint now gets one line and a hint, wherever it is read."""
    run = tmp_path / "run"
    _train_in_process(tmp_path, "run")
    for name in ("checkpoint.npz", "best.npz"):
        _damage(kind, run / name)
    for args in (["train", MLP, *SMALL, "--epochs", "3", "--run-dir", run, "--resume"],
                 ["export", run, "-o", tmp_path / "m.onnx"],
                 ["train", MLP, *SMALL, "--epochs", "1", "--run-dir", tmp_path / "new", "--init-from", run]):
        result = invoke(*args, code=1)
        lines = result.output.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  hint: "), result.output
        assert "checkpoint" in lines[0]


@pytest.mark.parametrize("content", [None, "", '{"seed": 0, "dtype": "flo', "[]"])
def test_a_resume_or_warm_start_from_a_run_whose_run_json_is_damaged_is_one_line(tmp_path, content):
    """A resume read run.json in three places, each skipping its check when the file was missing,
    cut short or empty: the run went on unchecked (on other data, or in another float type, it
    would not have been refused), and wrote a new run.json over the damaged one as if all were
    well; a run.json that was a list ended in a traceback, as did --init-from such a run. Both now
    stop at the file, and the checkpoint is left as it was."""
    run = tmp_path / "run"
    _train_in_process(tmp_path, "run")
    before = (run / "checkpoint.npz").read_bytes()
    if content is None:
        (run / "run.json").unlink()
    else:
        (run / "run.json").write_text(content)
    result = _train_in_process(tmp_path, "run", "--resume", "--epochs", "3", code=1)
    assert str(run) in error_line(result) and "run.json" in error_line(result)
    assert f"--init-from {run}" in result.output
    assert (run / "checkpoint.npz").read_bytes() == before
    assert (run / "run.json").exists() == (content is not None)
    if content is not None:
        assert (run / "run.json").read_text() == content
        result = _train_in_process(tmp_path, "new", "--init-from", run, code=1)
        assert f"{run / 'run.json'} is" in error_line(result) and "malformed" in error_line(result)


def test_a_damaged_last_checkpoint_points_a_resume_at_best_npz_not_at_overwrite(tmp_path):
    """A resume from a damaged checkpoint.npz hinted 'train anew with --overwrite', which removes
    the run's best.npz, whole and the run's best. Now the hint says best.npz is a checkpoint too,
    and resumed from it (here the first epoch's: early stopping keeps the largest loss) the run
    replays the epochs after it exactly."""
    worst_is_best = ["--set", "train.early_stopping={metric: valid_loss, mode: max, patience: 100}", "--epochs", "4"]
    _train_in_process(tmp_path, "ref", *worst_is_best)
    run = tmp_path / "run"
    _train_in_process(tmp_path, "run", *worst_is_best)
    assert load_checkpoint(str(run / "best.npz"))[1]["epoch"] == 1
    _damage("truncated", run / "checkpoint.npz")
    result = _train_in_process(tmp_path, "run", "--resume", *worst_is_best, code=1)
    assert f"checkpoint {run / 'checkpoint.npz'} is unreadable" in error_line(result)
    hint = " ".join(result.output.split())
    assert f"{run / 'best.npz'} is a checkpoint too: copy it over {run / 'checkpoint.npz'} and --resume" in hint
    assert "--overwrite would remove it" in hint
    (run / "checkpoint.npz").write_bytes((run / "best.npz").read_bytes())
    _train_in_process(tmp_path, "run", "--resume", *worst_is_best)
    same_state(tmp_path / "ref" / "checkpoint.npz", run / "checkpoint.npz")
    assert timeless(run / "metrics.jsonl") == timeless(tmp_path / "ref" / "metrics.jsonl")


@pytest.mark.parametrize("damage", ["removed", "cut short", "edited", "a number edited into text"])
def test_a_resume_whose_metrics_jsonl_lacks_the_epochs_its_checkpoint_covers_is_one_line(tmp_path, damage):
    """A checkpoint records how many of metrics.jsonl's lines it covers, and a resume goes on from
    them. A metrics.jsonl that lacks them (removed, cut short, or a line edited into another
    epoch's) is refused with a hint before anything of the run is written; put back, it resumes."""
    run = tmp_path / "run"
    _train_in_process(tmp_path, "run")
    metrics = run / "metrics.jsonl"
    kept = {p: p.read_bytes() for p in (run / "checkpoint.npz", run / "best.npz", run / "run.json", metrics)}
    lines = metrics.read_text().splitlines(keepends=True)
    if damage == "removed":
        metrics.unlink()
    elif damage == "cut short":
        metrics.write_text(lines[0])
    elif damage == "edited":
        metrics.write_text(lines[0] + lines[0])
    else:  # (taken as it was: plot curves then refused the file, and as the final record the table failed)
        metrics.write_text(lines[0] + re.sub(r'"train_loss": [^,]+', '"train_loss": "0.5x"', lines[1]))
    damaged = metrics.read_bytes() if metrics.exists() else None
    result = _train_in_process(tmp_path, "run", "--resume", "--epochs", "3", code=1)
    lines_out = result.output.strip().splitlines()
    assert len(lines_out) == 2 and lines_out[1].startswith("  hint: "), result.output
    said = {"removed": f"{metrics} is missing", "cut short": f"{metrics} holds the records of 1 epoch",
            "edited": f"{metrics}:2 is not the record of epoch 2",
            "a number edited into text": f"{metrics}:2 is not the record of epoch 2"}[damage]
    assert error_line(result) == f"error: --resume {run}: {said}, and checkpoint.npz covers 2 epochs (a resume " \
                                 "goes on from their records)", result.output
    assert f"restore the run's metrics.jsonl, or start a new run from its weights with --init-from {run}" in \
        " ".join(result.output.split())
    assert (metrics.read_bytes() if metrics.exists() else None) == damaged
    assert all(p.read_bytes() == b for p, b in kept.items() if p != metrics)
    metrics.write_bytes(kept[metrics])
    _train_in_process(tmp_path, "run", "--resume", "--epochs", "3")
    assert [r["epoch"] for r in timeless(metrics)] == [1, 2, 3]


def test_a_metrics_jsonl_saved_by_a_windows_editor_resumes_and_plots(tmp_path):
    """metrics.jsonl opened and saved in a Windows editor: a byte-order mark, CRLF line ends and
    a blank line at the end. The mark made its first line 'not the record of epoch 1' to a resume
    and 'not a JSON record' to plot curves; both read the file, and the resume writes it plainly."""
    run = tmp_path / "run"
    _train_in_process(tmp_path, "run")
    _train_in_process(tmp_path, "ref", "--epochs", "3")
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(b"\xef\xbb\xbf" + metrics.read_bytes().replace(b"\n", b"\r\n") + b"\r\n")
    invoke("plot", "curves", run, "-o", tmp_path / "curves.png", code=0)
    _train_in_process(tmp_path, "run", "--resume", "--epochs", "3")
    assert timeless(metrics) == timeless(tmp_path / "ref" / "metrics.jsonl")
    assert not metrics.read_bytes().startswith(b"\xef") and b"\r" not in metrics.read_bytes()


def test_a_run_stopped_between_its_first_checkpoint_and_best_writes_keeps_its_best(tmp_path, monkeypatch):
    """best.npz is written after the checkpoint of its epoch: stopped between the two in the first
    epoch, the run holds checkpoint.npz alone, which eval and export read as its best, a train
    without --resume or --overwrite refuses to replace, and --resume goes on from. A run dir that
    holds best.npz alone (an earlier flowgrad wrote best.npz first; a train into it took it for new
    and removed that best.npz) says how to go on from it."""
    import runtime.train as T

    args = ("--epochs", "2", "--checkpoint-every", "0")
    _train_in_process(tmp_path, "ref", *args)
    real = T.atomic_write

    def stopped_before_the_best(path, data, hint=None, **kwargs):
        if path.endswith("best.npz"):
            raise KeyboardInterrupt
        return real(path, data, hint, **kwargs)

    monkeypatch.setattr(T, "atomic_write", stopped_before_the_best)
    _train_in_process(tmp_path, "run", *args, code=130)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert not (run / "best.npz").exists()
    result = _train_in_process(tmp_path, "run", *args, code=1)
    assert f"{run} already holds a run" in error_line(result)
    invoke("export", run, "-o", tmp_path / "m.onnx", code=0)
    _train_in_process(tmp_path, "run", *args, "--resume")
    same_state(tmp_path / "ref" / "checkpoint.npz", run / "checkpoint.npz")
    same_state(tmp_path / "ref" / "best.npz", run / "best.npz")

    old = tmp_path / "old"  # best.npz alone
    _train_in_process(tmp_path, "old", "--epochs", "1", "--checkpoint-every", "0")
    (old / "checkpoint.npz").unlink()
    best = (old / "best.npz").read_bytes()
    result = _train_in_process(tmp_path, "old", *args, code=1)
    assert f"{old} already holds a run" in error_line(result)
    result = _train_in_process(tmp_path, "old", *args, "--resume", code=1)
    assert f"{old / 'best.npz'} is a whole checkpoint of its epoch: copy it to {old / 'checkpoint.npz'}" in \
        " ".join(result.output.split())
    assert (old / "best.npz").read_bytes() == best
    (old / "checkpoint.npz").write_bytes(best)
    _train_in_process(tmp_path, "old", *args, "--resume")
    same_state(tmp_path / "ref" / "checkpoint.npz", old / "checkpoint.npz")


def _npz_writes_stopped_at(monkeypatch, n: int, stop=KeyboardInterrupt):
    """The n-th write of a checkpoint or best.npz raises `stop` (Ctrl-C, a full disk) before the rename."""
    import runtime.checkpoint as C

    real, calls = C._write, []

    def stopped(f, data, path):
        if path.endswith(("checkpoint.npz", "best.npz")):
            calls.append(path)
            if len(calls) == n:
                raise stop() if stop is KeyboardInterrupt else OSError(errno.ENOSPC, "No space left on device")
        real(f, data, path)

    monkeypatch.setattr(C, "_write", stopped)
    return calls


def test_a_resume_stopped_part_way_leaves_no_stale_result_json(tmp_path, monkeypatch):
    """result.json said how the last process that finished ended: a resume stopped part-way left
    the earlier process's 'finished after 2 epochs' beside a metrics.jsonl and checkpoint of 3. A
    training process now removes it as it starts, and writes it whole when it ends."""
    args = ("--checkpoint-every", "0")
    _train_in_process(tmp_path, "run", *args)
    run = tmp_path / "run"
    assert json.loads((run / "result.json").read_text())["epochs"] == 2
    _npz_writes_stopped_at(monkeypatch, 3)  # epoch 3's two writes, then epoch 4's first
    _train_in_process(tmp_path, "run", *args, "--resume", "--epochs", "4", code=130)
    monkeypatch.undo()
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 3
    assert not (run / "result.json").exists()
    _train_in_process(tmp_path, "run", *args, "--resume", "--epochs", "4")
    result = json.loads((run / "result.json").read_text())
    assert result["epochs"] == 4 and result["stopped"] == "finished"
    assert timeless(run / "metrics.jsonl")[-1] == {k: v for k, v in result["final"].items() if k != "seconds"}


@pytest.mark.parametrize("resume_epochs", ["1", "2"])
def test_best_npz_is_of_an_epoch_the_checkpoint_covers_after_a_stop_between_an_epochs_writes(
        tmp_path, monkeypatch, resume_epochs):
    """An epoch that improves writes best.npz and checkpoint.npz. best.npz went first: stopped
    between the two, best.npz held epoch 2's weights and the checkpoint epoch 1's, and a resume
    with --epochs 1 (or one whose redone epoch did not improve) kept best.npz from an epoch that
    metrics.jsonl and the checkpoint do not cover. The checkpoint now goes first, and a resume
    (eval and export too) take the checkpoint as the best where its own record is the best."""
    from runtime.checkpoint import checkpoint_path

    args = ("--epochs", "2", "--checkpoint-every", "0")
    _train_in_process(tmp_path, "ref", *args)
    calls = _npz_writes_stopped_at(monkeypatch, 4)  # epoch 2's second write
    _train_in_process(tmp_path, "run", *args, code=130)
    monkeypatch.undo()
    assert len(calls) == 4
    run = tmp_path / "run"
    # meanwhile, the best that eval and export take is the best record's
    _, ckpt_meta = load_checkpoint(str(run / "checkpoint.npz"))
    _, best_meta = load_checkpoint(checkpoint_path(str(run), "best"))
    assert best_meta["step"] == ckpt_meta["best"]["step"]
    _train_in_process(tmp_path, "run", "--epochs", resume_epochs, "--checkpoint-every", "0", "--resume")
    _, ckpt_meta = load_checkpoint(str(run / "checkpoint.npz"))
    _, best_meta = load_checkpoint(str(run / "best.npz"))
    covered = [r["step"] for r in timeless(run / "metrics.jsonl")[:ckpt_meta["records"]]]
    assert best_meta["step"] == ckpt_meta["best"]["step"] in covered
    same_state(tmp_path / "ref" / "best.npz", run / "best.npz")
    same_state(tmp_path / "ref" / "checkpoint.npz", run / "checkpoint.npz")


def test_a_full_disk_at_an_epochs_checkpoint_keeps_the_run_as_its_last_checkpoint(tmp_path, monkeypatch):
    """A full disk at an epoch's checkpoint said which file and why, but left metrics.jsonl (and
    so plot curves) a line ahead of the checkpoint, and best.npz of that epoch, which the
    checkpoint does not cover. The line goes again (cut back, which a full disk allows), best.npz
    is not written, and --resume ends as the uninterrupted run."""
    from runtime.plots import read_history

    args = ("--epochs", "2", "--checkpoint-every", "0")
    _train_in_process(tmp_path, "ref", *args)
    _npz_writes_stopped_at(monkeypatch, 3, OSError)  # epoch 2's first write
    result = _train_in_process(tmp_path, "run", *args, code=1)
    monkeypatch.undo()
    run = tmp_path / "run"
    line = " ".join(result.output.split())
    assert "No space left on device" in error_line(result) and "checkpoint.npz" in error_line(result), line
    assert "the previous checkpoint is intact; free some space and --resume" in line, line
    _, meta = load_checkpoint(str(run / "checkpoint.npz"))
    _, best = load_checkpoint(str(run / "best.npz"))
    assert meta["epoch"] == meta["records"] == 1 and best["step"] == meta["step"]
    assert len(read_history(str(run))) == 1
    assert not (run / "result.json").exists()
    _train_in_process(tmp_path, "run", *args, "--resume")
    same_state(tmp_path / "ref" / "checkpoint.npz", run / "checkpoint.npz")
    same_state(tmp_path / "ref" / "best.npz", run / "best.npz")
    assert timeless(run / "metrics.jsonl") == timeless(tmp_path / "ref" / "metrics.jsonl")


def test_a_resume_on_other_examples_is_refused(tmp_path):
    """A resume with another validation split (--valid, or the spec's valid edited) went on
    silently: the checkpoint's data position pointed into other examples, and the run trained
    on examples it had validated on, its best then compared across two validation sets."""
    _train_in_process(tmp_path, "run")
    result = _train_in_process(tmp_path, "run", "--resume", "--epochs", "3", "--valid", "0.05", code=1)
    assert "the training examples differ from those the run was trained on" in error_line(result)
    assert "--init-from" in result.output
    _train_in_process(tmp_path, "run", "--resume", "--epochs", "3")  # its own split goes on


def test_unwritable_run_directory(tmp_path, monkeypatch):
    import runtime.checkpoint as C

    # a directory that becomes unwritable after the first checkpoint (simulated: tests may run as root)
    real = C._temporary

    def refuse(directory):
        if os.path.exists(tmp_path / "run" / "checkpoint.npz"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(directory)

    monkeypatch.setattr(C, "_temporary", refuse)
    result = _train_in_process(tmp_path, "run", code=1)
    assert f"cannot write in {tmp_path / 'run'}: Permission denied" in result.output
    assert "check the run directory's permissions and free space" in result.output
    assert load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))[1]["step"] == 5
    # a run directory that cannot be written from the start
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK and os.path.exists(path))
    result = _train_in_process(tmp_path, "other", code=1)
    assert f"the run directory {tmp_path / 'other'} is not writable" in error_line(result)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a read-only directory anyway; the simulated case above covers it")
def test_read_only_run_directory_for_real(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        result = _train_in_process(tmp_path, "run", code=1)
        assert "is not writable" in error_line(result)
    finally:
        run.chmod(0o755)


def test_nan_loss_stops_with_the_step_and_keeps_a_finite_checkpoint(tmp_path):
    result = _train_in_process(tmp_path, "run", "--set", "train.optimizer={sgd: {lr: 1.0e+30}}",
                               "--checkpoint-every", "1", code=1)
    m = re.search(r"loss became (nan|inf) at step (\d+) \(epoch 1\); training stopped", result.output)
    assert m, result.output
    state, meta = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert meta["step"] == int(m.group(2))  # the last checkpoint before the bad step
    assert all(np.isfinite(v).all() for v in state.values())


def test_a_nan_validation_metric_never_holds_the_best(tmp_path, monkeypatch):
    """Validation scalars are not checked like training ones: a first epoch whose early-stopping
    metric was NaN (a 0/0 in a metric, say) became the best, no number compares better than NaN,
    so best.npz kept epoch 1 for good and early stopping ended the run 'not improving' while
    valid_accuracy rose. A NaN is never better than a number, and a number always beats it."""
    from runtime.trainer import Trainer

    real, calls = Trainer.evaluate, []

    def nan_first(self, batches):
        metrics = real(self, batches)
        calls.append(1)
        return {**metrics, "accuracy": float("nan")} if len(calls) == 1 else metrics

    monkeypatch.setattr(Trainer, "evaluate", nan_first)
    result = invoke("train", MLP, *SMALL, "--epochs", "4", "--json", "--run-dir", tmp_path / "run",
                    "--set", "train.early_stopping={metric: valid_accuracy, mode: max, patience: 2}", code=0)
    out = json.loads(result.stdout)
    assert out["stopped"] == "finished" and out["epochs"] == 4
    assert out["best"]["epoch"] > 1 and out["best"]["valid_accuracy"] == out["best"]["valid_accuracy"]  # not NaN
    _, meta = load_checkpoint(str(tmp_path / "run" / "best.npz"))
    assert meta["step"] == out["best"]["step"]


def test_parameters_that_become_inf_never_reach_the_checkpoint(tmp_path, monkeypatch):
    from runtime.trainer import Trainer

    real, calls = Trainer.state_numpy, []

    def overflowing(self):
        state = real(self)
        calls.append(1)
        if len(calls) >= 3:  # the third checkpoint: W1 overflowed in the update
            state["W1"] = state["W1"] * np.float32(np.inf)
        return state

    monkeypatch.setattr(Trainer, "state_numpy", overflowing)
    result = _train_in_process(tmp_path, "run", code=1)
    assert "W1 became NaN or inf at step 15 (epoch 1); training stopped" in error_line(result)
    state, meta = load_checkpoint(str(tmp_path / "run" / "checkpoint.npz"))
    assert meta["step"] == 10 and all(np.isfinite(v).all() for v in state.values())


def test_parameters_that_become_inf_in_an_epochs_last_step_name_that_epoch(tmp_path):
    """Checked at the end of the epoch, the message named the next epoch: a parameter that overflowed
    in the second (last) step of the first epoch was said to do so 'at step 2 (epoch 2)'."""
    from runtime.api import train
    from spec.errors import FlowgradError

    spec = ("flowgrad: 1\nname: t\ninputs:\n  x: {shape: [N, 1]}\nparams:\n  w: {shape: [1], init: zeros}\n"
            "loss: mean(tanh(x * w))\ntrain:\n  optimizer: {sgd: {lr: 1.0e+39}}\n  batch_size: 2\n")  # lr inf in float32
    with pytest.raises(FlowgradError, match=re.escape("w became NaN or inf at step 2 (epoch 1); training stopped")):
        with np.errstate(over="ignore"):
            train(spec, data={"x": np.ones((4, 1), np.float32)}, valid=0, epochs=3, run_dir=str(tmp_path / "r"),
                  threads=1, device="cpu")


def test_a_metric_of_0_over_0_in_a_training_step_does_not_stop_the_run(tmp_path):
    """A masked accuracy, sum(m * ok) / sum(m), over a training batch whose mask is all 0 is 0/0: the
    run stopped there with 'acc became nan at step 1 (epoch 1)' and the hint to lower the learning
    rate, though the loss and the parameters were fine (the semi-supervised digits' labelled ones,
    a few per batch, leave some batches without one). A NaN or inf loss still stops the run."""
    from runtime.api import train

    spec = ("flowgrad: 1\nname: t\ninputs:\n  x: {shape: [N, 1]}\n  m: {shape: [N]}\n"
            "params:\n  w: {shape: [1], init: ones}\nloss: mean((x * w - 1) ** 2)\n"
            "metrics:\n  acc: sum(m * x[:, 0] * w) / sum(m)\n"
            "train:\n  optimizer: {sgd: {lr: 0.1}}\n  batch_size: 2\n  shuffle: false\n")
    data = {"x": np.ones((4, 1), np.float32), "m": np.array([1, 1, 0, 0], np.float32)}
    valid = {"x": np.ones((4, 1), np.float32), "m": np.array([1, 0, 0, 0], np.float32)}
    result = train(spec, data=data, valid=valid, epochs=2, run_dir=str(tmp_path / "r"), threads=1, device="cpu")
    assert result.epochs == 2 and result.stopped == "finished"
    assert np.isnan(result.final["train_acc"]) and np.isfinite(result.final["valid_acc"])
    with pytest.raises(FlowgradError, match=re.escape("loss became nan at step 1 (epoch 1)")):
        train(spec.replace("loss: mean(", "loss: sum(m) / sum(m) * mean("), data=data, valid=valid, epochs=2,
              run_dir=str(tmp_path / "s"), threads=1, device="cpu")


# ====================================================================== ONNX files from strangers
def _matmul_model(weight: onnx.TensorProto) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("MatMul", ["x", weight.name], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weight])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _external(location: str, name: str = "W") -> onnx.TensorProto:
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), name)
    set_external_data(w, location=location, offset=0, length=24)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    return w


def _subgraph_escape() -> onnx.ModelProto:
    """The escaping tensor hides in an If node's branch, not among the top-level initializers."""
    def branch(name):
        return helper.make_graph([helper.make_node("Identity", ["W"], ["out"])], name, [],
                                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 2])],
                                 [_external("../outside/secret.bin")])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then"), else_branch=branch("else"))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.fixture
def stranger(tmp_path):
    """A model directory next to a directory of secrets."""
    (tmp_path / "outside").mkdir()
    np.full(6, 7.0, np.float32).tofile(tmp_path / "outside" / "secret.bin")
    models = tmp_path / "models"
    models.mkdir()
    np.savez(tmp_path / "x.npz", x=np.ones((4, 3), np.float32))
    return tmp_path


STRANGE_MODELS = {
    "absolute path": (lambda d: _matmul_model(_external(str(d / "outside" / "secret.bin"))), "points outside the model's directory"),
    "'..' path": (lambda d: _matmul_model(_external("../outside/secret.bin")), "points outside the model's directory"),
    "symlink out": (lambda d: (os.symlink(d / "outside" / "secret.bin", d / "models" / "link.bin"),
                               _matmul_model(_external("link.bin")))[1], "points outside the model's directory"),
    "escape in a subgraph": (lambda d: _subgraph_escape(), "points outside the model's directory"),
    "NUL in the path": (lambda d: _matmul_model(_external("a\x00b")), "points outside the model's directory"),
    "missing data file": (lambda d: _matmul_model(_external("weights.bin")), "the external data of tensor 'W' is missing"),
    "short data file": (lambda d: ((d / "models" / "short.bin").write_bytes(bytes(8)),
                                   _matmul_model(_external("short.bin")))[1], "cannot read its external data"),
    "unknown op": (lambda d: helper.make_model(helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])]), opset_imports=[helper.make_opsetid("", 21)]),
        "onnxruntime cannot run this model"),
}
MALFORMED = {
    "truncated protobuf": (lambda good: good[:len(good) // 2], "is not a valid ONNX model"),
    "random bytes": (lambda good: bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)), "is not a valid ONNX model"),
    "empty file": (lambda good: b"", "holds no graph"),
}


@pytest.mark.parametrize("name", list(STRANGE_MODELS))
def test_predict_refuses_models_that_reach_outside_or_cannot_run(stranger, name):
    build, message = STRANGE_MODELS[name]
    path = stranger / "models" / "m.onnx"
    onnx.save(build(stranger), str(path))
    result = invoke("predict", path, "--data", stranger / "x.npz", "--device", "cpu", code=1)
    assert message in error_line(result), result.output
    assert "7.0" not in result.output  # nothing of the secret was read


@pytest.mark.parametrize("name", list(MALFORMED))
def test_predict_refuses_malformed_protobufs(stranger, name):
    make, message = MALFORMED[name]
    good = _matmul_model(numpy_helper.from_array(np.ones((3, 2), np.float32), "W")).SerializeToString()
    path = stranger / "models" / "m.onnx"
    path.write_bytes(make(good))
    assert message in error_line(invoke("predict", path, "--data", stranger / "x.npz", "--device", "cpu", code=1))


def test_predict_with_external_data_inside_the_directory_and_wrong_inputs(stranger):
    np.full(6, 2.0, np.float32).tofile(stranger / "models" / "weights.bin")
    path = stranger / "models" / "m.onnx"
    onnx.save(_matmul_model(_external("weights.bin")), str(path))
    result = invoke("predict", path, "--data", stranger / "x.npz", "--device", "cpu", "-o", stranger / "y.npz", code=0)
    assert np.array_equal(np.load(stranger / "y.npz")["y"], np.full((4, 2), 6.0, np.float32)), result.output
    np.savez(stranger / "wide.npz", x=np.ones((4, 5), np.float32))
    result = invoke("predict", path, "--data", stranger / "wide.npz", "--device", "cpu", code=1)
    assert "input 'x' has size 5 in dim 1, the model expects 3" in error_line(result)


def test_export_refuses_a_run_whose_graph_reaches_outside(tmp_path):
    run = tmp_path / "run"
    invoke("train", MLP, *SMALL, "--steps", "2", "--run-dir", run, code=0)
    invoke("export", run, "-o", tmp_path / "ok.onnx", code=0)
    (tmp_path / "outside").mkdir()
    np.full(6, 7.0, np.float32).tofile(tmp_path / "outside" / "secret.bin")
    onnx.save(_matmul_model(_external("../../outside/secret.bin")), str(run / "graphs" / "infer.onnx"))
    result = invoke("export", run, "-o", tmp_path / "m.onnx", code=1)
    assert "points outside the model's directory" in error_line(result)
    assert not (tmp_path / "m.onnx").exists()
    (run / "graphs" / "manifest.json").write_text("{not json")
    onnx.save(_matmul_model(numpy_helper.from_array(np.ones((3, 2), np.float32), "W")), str(run / "graphs" / "infer.onnx"))
    assert "manifest.json is unreadable or malformed" in error_line(invoke("export", run, "-o", tmp_path / "m.onnx", code=1))


# ====================================================================== two processes, one run directory
def test_a_second_process_cannot_train_in_the_same_run_directory(tmp_path):
    run = tmp_path / "run"
    args = _flowgrad() + ["train", MLP, *SMALL, "--run-dir", str(run), "--checkpoint-every", "5"]
    first = subprocess.Popen(args + ["--epochs", "12"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # run.json is written while the lock is held, before the first step; a checkpoint follows
        _wait(first, lambda: (run / "run.json").exists() and (run / "checkpoint.npz").exists(), "a checkpoint")
        first.send_signal(signal.SIGSTOP)  # paused, it still holds the lock: no race with its end
        for flags in (["--overwrite"], ["--resume"]):
            second = subprocess.run(args + ["--epochs", "1", *flags], capture_output=True, text=True, timeout=120)
            assert second.returncode == 1, second.stderr
            assert f"another flowgrad run is training in {run}" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
        out = first.communicate(timeout=120)[1].decode()
    assert first.returncode == 0, out
    state, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert meta["epoch"] == 12 and all(np.isfinite(v).all() for v in state.values())


@pytest.mark.parametrize("sig, code, words", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_run_stopped_by_a_signal_says_what_it_keeps_and_how_to_go_on(tmp_path, sig, code, words):
    """SIGTERM ended `flowgrad train` without a word (Python's default), Ctrl-C with click's
    bare "aborted": now one line names the checkpoint kept and the hint is the resume."""
    run = tmp_path / "run"
    args = _flowgrad() + ["train", MLP, *SMALL, "--run-dir", str(run), "--checkpoint-every", "5"]
    proc = subprocess.Popen(args + ["--epochs", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait(proc, lambda: (run / "checkpoint.npz").exists(), "a checkpoint")
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == code, out
    assert "Traceback" not in out
    _, meta = load_checkpoint(str(run / "checkpoint.npz"))
    assert f"error: training stopped by {words}; {run} keeps its checkpoint of step {meta['step']}" in " ".join(out.split())
    assert "--resume" in out
    again = subprocess.run(args + ["--epochs", "50", "--steps", str(meta["step"] + 5), "--resume"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("first, second, code, words", [(signal.SIGTERM, signal.SIGINT, 143, "SIGTERM"),
                                                         (signal.SIGINT, signal.SIGINT, 130, "Ctrl-C")])
def test_a_second_signal_while_a_stopped_run_winds_down_changes_nothing(tmp_path, monkeypatch, capsys, first, second,
                                                                      code, words):
    """Ctrl-C pressed twice (or a SIGTERM, then a Ctrl-C) while the run wound down raised a second
    KeyboardInterrupt inside the handler of the first: no line said what the run kept, and a
    SIGTERM ended with 130. Here the second signal comes while the handler reads the checkpoint."""
    import typer

    import cli
    import runtime.checkpoint as C

    run = tmp_path / "run"
    run.mkdir()
    C.save_checkpoint(str(run / "checkpoint.npz"), {"w": np.zeros(2, np.float32)}, {"step": 7})
    real = C.load_checkpoint

    def pressed_again(path):
        os.kill(os.getpid(), second)
        return real(path)

    monkeypatch.setattr(C, "load_checkpoint", pressed_again)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with cli._stopped_by_signals("spec.yaml", str(run)):
            os.kill(os.getpid(), first)
            time.sleep(5)  # (the handler raises at once)
        ended = "not stopped"
    except typer.Exit as e:
        ended = e.exit_code
    except KeyboardInterrupt as e:
        ended = repr(e)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert ended == code
    assert f"error: training stopped by {words}; {run} keeps its checkpoint of step 7" in " ".join(
        capsys.readouterr().err.split())


def test_ctrl_c_while_the_command_line_starts_is_no_traceback():
    """Ctrl-C in the first moments of any flowgrad command, while cli.py's imports load, ended in
    a KeyboardInterrupt traceback through typer's or rich's modules. Here it comes while
    rich.table is being imported."""
    pressed = (
        "import os, signal, sys\n"
        "class Press:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'rich.table':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, Press())\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import cli\n"
        "print('not stopped')\n")
    result = subprocess.run([sys.executable, "-c", pressed], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "")


def test_ctrl_c_while_typer_builds_the_command_is_no_traceback():
    """After the imports, typer builds the click command from the verbs' functions (reading their
    type hints) before click's main, which ends an interrupted command with exit code 130, takes
    over: Ctrl-C there (found by pressing it at random moments of a real flowgrad train) ended in
    a KeyboardInterrupt traceback through typer's and typing's modules."""
    pressed = (
        "import os, signal, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import cli, typer.main\n"
        "real = typer.main.get_command\n"
        "def pressed(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(*args, **kwargs)\n"
        "typer.main.get_command = pressed\n"
        "sys.argv = ['flowgrad', 'ops']\n"
        "cli.main()\n"
        "print('not stopped')\n")
    result = subprocess.run([sys.executable, "-c", pressed], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "")


def test_an_npz_too_large_to_read_is_not_called_a_bomb(tmp_path, monkeypatch):
    """An honest .npz of arrays saved uncompressed (numpy.savez) beyond the size read from one
    file was refused as 'what looks like a decompression bomb', with the hint to save the arrays
    uncompressed, as they were. It now says how large they are and what the limit is."""
    import runtime.data as data
    from spec.errors import DataError

    monkeypatch.setattr(data, "MAX_UNPACKED_BYTES", 1 << 20)
    path = tmp_path / "large.npz"
    np.savez(path, x=np.random.default_rng(0).random((1 << 16, 4), dtype=np.float32), y=np.zeros(1 << 16, np.int64))
    with pytest.raises(DataError) as e:
        data.load_npz(str(path))
    assert re.search(r"large\.npz: its arrays hold [\d.]+ GiB, more than the [\d.]+ GiB that flowgrad reads from one "
                     r"\.npz", e.value.message), e.value.message
    assert "bomb" not in str(e.value) and "uncompressed" not in str(e.value)
    assert "train(data=" in e.value.hint


@pytest.mark.parametrize("limit", ["MAX_UNPACKED_BYTES", "RATIO_CHECKED_ABOVE"])
def test_npz_decompression_bomb_is_refused_before_unpacking(tmp_path, monkeypatch, limit):
    """Zeros pack about a thousandfold; with the limits scaled down, 16 MiB stands in for a bomb."""
    import zipfile

    import runtime.data as data
    from spec.errors import DataError

    monkeypatch.setattr(data, limit, 1 << 20)
    monkeypatch.setattr(data, "MAX_PACKING_RATIO", 100)
    path = tmp_path / "bomb.npz"
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {**header, "shape": (1 << 22,)})
            f.write(bytes(1 << 24))
    with pytest.raises(DataError, match="would unpack"):
        data.load_npz(str(path))
