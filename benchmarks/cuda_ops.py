"""On a machine with a GPU: every registered op's samples (the table that drives
tests/test_ops.py), forward and gradient, run on onnxruntime's CUDA provider and on the
CPU, in float64 and in float32; prints each op's largest difference and whether some of
its nodes run on the CPU provider beside CUDA (a node with no CUDA kernel, or one of the
small shape computations onnxruntime keeps on the CPU).

    python benchmarks/cuda_ops.py [--workers 8] [--json cuda_ops.json]

Exits non-zero when CUDA is unavailable or some op's results disagree.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# float64 differs only by the order of the arithmetic; float32 by that and the kernels'
# own approximations (CUDA's expf, erff, tanhf): relative to each output's largest value.
RTOL = {"float64": 1e-9, "float32": 1e-4}


def _cases():
    from compiler.registry import all_ops

    out = []
    for op in all_ops().values():
        rng = np.random.default_rng(zlib.crc32(op.name.encode()))
        for i, s in enumerate(op.samples(rng)):
            out.append((op.name, i, s))
    return out


def _graph(op_name, sample, dtype):
    """The op's outputs and, where it has one, the gradient of a fixed weighted sum of them."""
    from compiler.autodiff import grad
    from compiler.check import sample_grad_inputs, sample_graph, weighted_sum
    from compiler.emit import emit_model
    from compiler.registry import all_ops

    op = all_ops()[op_name]
    g, ins, outs, arrays = sample_graph(op, sample, dtype)
    outputs = [(f"out{k}", v) for k, v in enumerate(outs)]
    which = sample_grad_inputs(sample)
    if not op.nondiff and op.name != "constant" and which:
        loss, _ = weighted_sum(g, outs, np.random.default_rng(zlib.crc32(op.name.encode())))
        if loss is not None:
            grads = grad([loss], [ins[i] for i in which])
            outputs += [(f"g{i}", gv) for i, gv in zip(which, grads) if gv is not None]
    model = emit_model(g, [(f"in{i}", v) for i, v in enumerate(ins)], outputs)
    return model, {f"in{i}": a for i, a in enumerate(arrays)}


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the larger output's largest finite value; inf where
    NaN or inf sit in different places."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    if a.dtype.kind not in "fc":
        return 0.0 if np.array_equal(a, b) else float("inf")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    if not np.array_equal(fa, fb) or not np.array_equal(a64[~fa], b64[~fb], equal_nan=True):
        return float("inf")
    if not fa.any():
        return 0.0
    scale = max(np.abs(a64[fa]).max(), np.abs(b64[fb]).max(), 1e-30)
    return float(np.abs(a64[fa] - b64[fb]).max() / scale)


def _check(case, device="cuda"):
    import onnxruntime as ort

    from compiler.check import reference_evaluator
    from compiler.emit import ort_disabled_optimizers
    from runtime.session import cuda_form, make_session

    op_name, index, sample = case
    rows = []
    for dtype in ("float64", "float32"):
        row = {"op": op_name, "sample": index, "dtype": dtype}
        try:
            model, feeds = _graph(op_name, sample, dtype)
        except Exception as e:  # a sample only float64 takes (an integer range, say)
            row["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
            continue
        names = [o.name for o in model.graph.output]
        try:
            cpu = make_session(model, "cpu", 1)
            want = dict(zip(names, cpu.run(None, feeds)))
        except Exception as e:
            if "NOT_IMPLEMENTED" not in str(e):
                raise
            # float64 Conv, AveragePool, MaxUnpool, Erf: onnxruntime's CPU provider lacks them
            want = dict(zip(names, reference_evaluator(model).run(None, feeds)))
            row["against"] = "reference"
        try:
            cuda = make_session(model, device, 1)
            if device == "cuda" and cuda.get_providers()[0] != "CUDAExecutionProvider":
                raise RuntimeError("no CUDA provider")
            got = dict(zip([o.name for o in cuda.get_outputs()], cuda.run(None, feeds)))
            row["diff"] = max((_difference(got[k], want[k]) for k in want), default=0.0)
            row["agree"] = row["diff"] <= RTOL[dtype]
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            row["agree"] = False
        if device != "cuda":
            rows.append(row)
            continue
        # which nodes CUDA leaves to the CPU: a session that may not fall back says the first
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        try:  # (the model as the CUDA session ran it)
            ort.InferenceSession(cuda_form(model).SerializeToString(), opts, providers=["CUDAExecutionProvider"],
                                 disabled_optimizers=ort_disabled_optimizers(model))
        except Exception:
            row["cpu_nodes"] = True
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--json", default=None)
    ap.add_argument("--ops", nargs="*", default=None, help="only these ops")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: the CPU against itself (a dry run of this script)")
    args = ap.parse_args()

    from runtime.session import cuda_available

    if args.device == "cuda" and not cuda_available():
        print("CUDA is not available to onnxruntime")
        sys.exit(2)
    cases = [c for c in _cases() if not args.ops or c[0] in args.ops]
    rows = []
    # spawned, not forked: a child forked after the parent made a CUDA context cannot make its own
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for r in pool.map(_check, cases, [args.device] * len(cases), chunksize=4):
            rows.extend(r)
    by_op: dict[tuple, list] = {}
    for r in rows:
        by_op.setdefault((r["op"], r["dtype"]), []).append(r)
    bad = 0
    print(f"{'op':<28}{'dtype':<9}{'samples':>8}{'worst diff':>12}  notes")
    for (op, dtype), rs in sorted(by_op.items()):
        ran = [r for r in rs if "skipped" not in r]
        worst = max((r.get("diff", float("inf")) for r in ran), default=0.0)
        disagree = [r for r in ran if not r.get("agree")]
        bad += len(disagree)
        notes = []
        if disagree:
            errors = sorted({r["error"][:150] for r in disagree if "error" in r})
            notes.append("DISAGREE #" + ",".join(str(r["sample"]) for r in disagree) + (": " + " | ".join(errors) if errors else ""))
        if any(r.get("cpu_nodes") for r in ran):
            notes.append("(some nodes on the CPU)")
        if any(r.get("against") for r in ran):
            notes.append("(against onnx's reference evaluator: no CPU kernel)")
        if len(ran) < len(rs):
            notes.append(f"{len(rs) - len(ran)} skipped")
        print(f"{op:<28}{dtype:<9}{len(ran):>8}{worst:>12.2e}  " + "  ".join(notes))
    print(f"{len(rows)} runs, {bad} disagree")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
