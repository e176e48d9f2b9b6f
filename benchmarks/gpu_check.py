"""On a machine with a GPU: train models/mlp.yaml and models/convnet.yaml on
CUDA and on the CPU with the same seed, check that the results agree within
tolerance, and print median step times for both devices. Then time training
steps on CUDA side by side: flowgrad one step per call, 16 steps per call (the
step graph in a Loop), in mixed precision (float16), and PyTorch eager on
CUDA (when torch has CUDA).

    python benchmarks/gpu_check.py [--epochs 5] [--timing mlp convnet char_lstm dates_attention]
Exits non-zero when CUDA is unavailable or the devices disagree.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from runtime.api import load, train  # noqa: E402
from runtime.bench import bench  # noqa: E402
from runtime.checkpoint import load_checkpoint  # noqa: E402
from runtime.session import cuda_available  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=["mlp", "convnet"])
    ap.add_argument("--timing", nargs="*", default=["mlp", "mlp_big", "convnet", "char_lstm", "dates_attention"])
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    if not cuda_available():
        raise SystemExit("CUDA is not available to onnxruntime here (install onnxruntime-gpu, CUDA 13, cuDNN 9)")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = load(os.path.join(ROOT, "models", f"{name}.yaml"))
            res = {}
            for device in ("cuda", "cpu"):
                r = train(spec, run_dir=os.path.join(tmp, f"{name}-{device}"), epochs=args.epochs, device=device)
                res[device] = r
            acc = {d: r.final.get("valid_accuracy") for d, r in res.items()}
            a, _ = load_checkpoint(os.path.join(tmp, f"{name}-cuda", "checkpoint.npz"))
            b, _ = load_checkpoint(os.path.join(tmp, f"{name}-cpu", "checkpoint.npz"))
            import numpy as np

            drift = max(float(np.max(np.abs(a[k] - b[k])) / (np.max(np.abs(b[k])) + 1e-12)) for k in b)
            agree = abs(acc["cuda"] - acc["cpu"]) <= 0.01
            ok &= agree
            times = {d: bench(spec, device=d)["step_ms"] for d in ("cuda", "cpu")}
            print(f"{name}: valid accuracy cuda {acc['cuda']:.4f} cpu {acc['cpu']:.4f} "
                  f"({'agree' if agree else 'DISAGREE'}; max relative parameter drift {drift:.2e}); "
                  f"median step cuda {times['cuda']:.3f} ms, cpu {times['cpu']:.3f} ms")
    timing(args.timing, args.steps)
    sys.exit(0 if ok else 1)


def timing(rows, steps, device="cuda"):
    """Median step times on `device`, flowgrad and PyTorch eager, each model in fresh processes."""
    import json
    import subprocess

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from compare import ROWS, flowgrad_cmd, reference_cmd

    def run(cmd):
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            return None, res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"
        return json.loads(res.stdout.strip().splitlines()[-1])["step_ms"], None

    print(f"{'model':<16}{'fg 1/call':>11}{'fg 16/call':>12}{'fg fp16':>10}{'pytorch':>10}  (ms per step, {device})")
    for row in rows:
        spec, overrides, ref = ROWS[row]
        base = flowgrad_cmd() + ["bench", spec, "--json", "--steps", str(steps), "--device", device]
        for o in overrides:
            base += ["--set", o]
        one, _ = run(base)
        many, _ = run(base + ["--steps-per-call", "16"])
        half, why = run(base + ["--set", "train.mixed_precision=float16"])
        torch_ms = None
        if ":" not in ref:
            torch_ms, _ = run(reference_cmd(ref, steps, 1, overrides) + ["--device", device])
        cells = [f"{v:.3f}" if v is not None else "-" for v in (one, many, half, torch_ms)]
        print(f"{row:<16}{cells[0]:>11}{cells[1]:>12}{cells[2]:>10}{cells[3]:>10}" + (f"  fp16: {why}" if why else ""))


if __name__ == "__main__":
    main()
