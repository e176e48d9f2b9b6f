"""Does the GAN draw every digit? Classify its samples with a convnet trained on real digits.

Trains (or reuses) models/gan.yaml and models/convnet.yaml, exports both, draws
1,000 digits from the exported generator (on onnxruntime: seed and count in),
classifies them with the exported convnet and prints the class histogram. The
check passes when all 10 classes appear and none has more than 25% of the samples.

    python benchmarks/gan_coverage.py                  # train both (about 1-2 min on 2 cores)
    python benchmarks/gan_coverage.py --gan runs/gan --classifier runs/convnet
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def flowgrad(*args):
    exe = shutil.which("flowgrad") or os.path.join(os.path.dirname(sys.executable), "flowgrad")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, os.path.join(ROOT, "cli.py")]
    res = subprocess.run(cmd + list(args), cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: flowgrad {' '.join(args)}\n{res.stderr}")
    return res.stdout


def ensure_run(spec: str, run_dir: str, threads: int):
    if os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
        return
    print(f"training {spec} into {run_dir} ...", file=sys.stderr)
    flowgrad("train", spec, "--run-dir", run_dir, "--quiet", "--threads", str(threads), "--overwrite")


def session(path, threads: int | None = None):
    """A CPU session of an exported model, made as flowgrad predict makes it: onnxruntime's
    rewrites that flowgrad turns off stay off (the blocked layout that crashes on float16
    graphs with a Scan, float32 scales in float64 products), and half-type ops without CPU
    kernels run widened."""
    from runtime.session import make_session

    return make_session(path, "cpu", threads)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gan", default="runs/gan", help="GAN run directory (trained from models/gan.yaml if missing)")
    ap.add_argument("--classifier", default="runs/convnet",
                    help="convnet run directory (trained from models/convnet.yaml if missing)")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-share", type=float, default=0.25)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    gan_dir = os.path.join(ROOT, args.gan) if not os.path.isabs(args.gan) else args.gan
    clf_dir = os.path.join(ROOT, args.classifier) if not os.path.isabs(args.classifier) else args.classifier
    ensure_run("models/gan.yaml", gan_dir, args.threads)
    ensure_run("models/convnet.yaml", clf_dir, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        gen_path, clf_path = os.path.join(tmp, "gan.onnx"), os.path.join(tmp, "convnet.onnx")
        flowgrad("export", gan_dir, "-o", gen_path)
        flowgrad("export", clf_dir, "-o", clf_path)
        gen = session(gen_path, args.threads)
        (samples,) = gen.run(["samples"], {"count": np.asarray(args.samples, np.int64),
                                           "seed": np.asarray(args.seed, np.int64)})
        clf = session(clf_path, args.threads)
        probs, labels = clf.run(["probs", "label"], {"x": samples.reshape(-1, 1, 8, 8).astype(np.float32)})
    counts = np.bincount(labels, minlength=10)
    shares = counts / counts.sum()
    confidence = probs.max(axis=1)
    with open(os.path.join(clf_dir, "result.json")) as f:
        clf_acc = json.load(f).get("best", {}).get("valid_accuracy")
    if clf_acc is None:  # (result.json writes an accuracy that is not finite as null)
        clf_acc = float("nan")
    ok = bool((counts > 0).all() and shares.max() <= args.max_share)
    result = {"samples": int(counts.sum()), "seed": args.seed, "counts": counts.tolist(),
              "classes_covered": int((counts > 0).sum()), "max_share": round(float(shares.max()), 4),
              "min_share": round(float(shares.min()), 4), "mean_confidence": round(float(confidence.mean()), 4),
              "confident_share": round(float((confidence > 0.9).mean()), 4),
              "classifier_valid_accuracy": clf_acc, "pass": ok}
    if args.json:
        from runtime.jsontext import dumps

        print(dumps(result, indent=2))
    else:
        print(f"GAN samples classified by the convnet (valid accuracy {clf_acc:.3f} on real digits), "
              f"{result['samples']} samples, seed {args.seed}")
        print("class   " + "".join(f"{k:>6}" for k in range(10)))
        print("count   " + "".join(f"{c:>6}" for c in counts))
        print("share % " + "".join(f"{100 * s:>6.1f}" for s in shares))
        print(f"classes covered: {result['classes_covered']}/10, largest share {100 * shares.max():.1f}% "
              f"(limit {100 * args.max_share:.0f}%), smallest {100 * shares.min():.1f}%")
        print(f"classifier confidence: mean {confidence.mean():.3f}, {100 * result['confident_share']:.1f}% of samples above 0.9")
        print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
