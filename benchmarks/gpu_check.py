"""On a machine with a GPU: train models/mlp.yaml and models/convnet.yaml on
CUDA and on the CPU with the same seed, check that the results agree within
tolerance, and print median step times for both devices.

    python benchmarks/gpu_check.py [--epochs 5]
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
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
