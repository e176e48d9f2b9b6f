"""benchmarks/ scripts that have no other test."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "graph_variant.py"


def test_graph_variant_times_an_edited_training_graph_beside_the_compiled_one(tmp_path):
    from compiler.training import compile_spec
    from spec import load_spec

    overrides = ["dims.H=8"]
    cm = compile_spec(load_spec(str(ROOT / "models" / "mlp.yaml"), overrides))
    model = cm.graphs["train"].model
    model.graph.node.insert(0, onnx.helper.make_node("Identity", ["lr"], ["lr_copy"]))  # an edit that changes nothing
    onnx.save(model, tmp_path / "variant.onnx")
    cmd = [sys.executable, str(SCRIPT), str(ROOT / "models" / "mlp.yaml"), str(tmp_path / "variant.onnx"),
           "--set", "dims.H=8", "--rounds", "2", "--steps", "2", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = res.stdout.splitlines()
    assert rows[0].split() == ["round", "compiled", "ms", "variant", "ms"] and len(rows) == 4
    assert rows[3].startswith("variant/compiled: median ")

    other = compile_spec(load_spec(str(ROOT / "models" / "char_lstm.yaml"), ["dims.H=8", "dims.E=4"]))
    onnx.save(other.graphs["train"].model, tmp_path / "other.onnx")
    res = subprocess.run(cmd[:3] + [str(tmp_path / "other.onnx")] + cmd[4:], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "are not the compiled graph's" in res.stderr


def test_cuda_ops_compares_every_sample_forward_and_gradient(tmp_path):
    """benchmarks/cuda_ops.py (run on a GPU machine) dry-run on the CPU against itself: a row
    per op and float type, every sample agreeing; its difference counts NaN and inf placed
    apart as a disagreement."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from cuda_ops import _difference

    cmd = [sys.executable, str(ROOT / "benchmarks" / "cuda_ops.py"), "--device", "cpu", "--workers", "1",
           "--ops", "sigmoid", "softmax", "--json", str(tmp_path / "ops.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split() for line in res.stdout.splitlines()[1:-1]]
    assert [r[:2] for r in rows] == [["sigmoid", "float32"], ["sigmoid", "float64"],
                                     ["softmax", "float32"], ["softmax", "float64"]]
    runs = json.loads((tmp_path / "ops.json").read_text())
    assert runs and all(r["agree"] and r["diff"] == 0.0 for r in runs)
    assert any(r["op"] == "sigmoid" and r["dtype"] == "float32" for r in runs)
    nan = np.array([1.0, np.nan])
    assert _difference(nan, nan) == 0.0 and _difference(nan, np.array([1.0, 2.0])) == np.inf
    assert _difference(np.array([1.0, np.inf]), np.array([1.0, -np.inf])) == np.inf
    assert _difference(np.array([1.0, 2.0]), np.array([1.0, 2.5])) == 0.2
