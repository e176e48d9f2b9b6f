"""flowgrad vs PyTorch eager, side by side on this machine.

Each measurement runs in a fresh process; flowgrad and PyTorch alternate for
several rounds and the table reports the median of the per-process medians
and their ratio (below 1.0: flowgrad is faster).

    pip install torch==2.13.0          # CPU wheel, only for this benchmark
    python benchmarks/compare.py --rounds 5 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# row name -> (spec, overrides for flowgrad, torch_ref model or "script.py:model" for another reference)
ROWS = {
    "mlp": ("models/mlp.yaml", ["train.batch_size=128"], "mlp"),
    # 784-1024-1024-10 at batch 256, no dropout: matmul-bound
    "mlp_big": ("models/mlp.yaml", ["dims.D=784", "dims.H=1024", "train.batch_size=256",
                                    "graph.h1=relu(x @ W1 + b1)", "graph.h2=relu(h1 @ W2 + b2)"], "mlp_big"),
    "convnet": ("models/convnet.yaml", [], "convnet"),
    "char_lstm": ("models/char_lstm.yaml", [], "char_lstm"),
    "dates_attention": ("models/dates_attention.yaml", [], "dates_attention"),
    # generative models: a step of the gan is one discriminator and one generator update
    "dae": ("models/dae.yaml", [], "generative_ref.py:dae"),
    "vae": ("models/vae.yaml", [], "generative_ref.py:vae"),
    "gan": ("models/gan.yaml", [], "generative_ref.py:gan"),
}




def gemm_rate(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """FLOP/s that onnxruntime reaches on one large float32 MatMul here: the probe
    behind each row's lower bound."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from compiler.emit import ort_disabled_optimizers

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    g = helper.make_graph([helper.make_node("MatMul", ["a", "a"], ["y"])], "probe", [a], [y])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # the rewrites flowgrad's own sessions leave out (none for this float32 product today)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=ort_disabled_optimizers(model))
    x = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    sess.run(None, {"a": x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"a": x})
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / statistics.median(times)


def training_flops(spec: str, overrides: list[str]) -> float:
    """Matrix-product and convolution FLOPs of one training step (flowgrad summary): as
    `flowgrad bench` times it, a step runs every objective of the spec's schedule (the gan:
    the discriminator's update, then the generator's)."""
    total = 0
    dims = sequence_dims(spec, overrides)
    for objective, times in Counter(schedule(spec, overrides)).items():
        cmd = flowgrad_cmd() + ["summary", spec, "--json", "--objective", objective]
        for o in overrides:
            cmd += ["--set", o]
        for d in dims:
            cmd += ["--dim", d]
        totals = run_json_text(cmd)["totals"]
        total += times * (totals["training_matmul_flops_per_step"] + totals["training_conv_flops_per_step"])
    return float(total)


def sequence_dims(spec: str, overrides: list[str]) -> list[str]:
    """NAME=SIZE of each symbolic dim besides the batch, read off the batch `flowgrad bench`
    times (the first of the spec's own data): the sizes of the graph that row runs. (A table of
    them written here out of the data's shapes would go stale with the data.)"""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from spec import load_spec

    s = load_spec(os.path.join(ROOT, spec), overrides)
    batch = real_batch(s, compile_spec(s), s.batch_size, 0) or {}
    sizes = {}
    for name, decl in s.inputs.items():
        for axis, dim in list(enumerate(decl.shape))[1:]:
            if isinstance(dim, str) and dim.isidentifier() and name in batch:
                sizes[dim] = batch[name].shape[axis]
    return [f"{k}={v}" for k, v in sizes.items()]


def schedule(spec: str, overrides: list[str]) -> list[str]:
    """The objectives one training step runs, in order (`flowgrad bench` runs them all)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from compiler.training import schedule_of
    from spec import load_spec

    return schedule_of(load_spec(os.path.join(ROOT, spec), overrides))


def run_json_text(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr}")
    return json.loads(res.stdout)


def reference_cmd(ref: str, steps: int, threads: int, overrides=()) -> list[str]:
    script, _, model = ref.rpartition(":")
    head = [sys.executable, os.path.join(HERE, script), "bench", model] if script else \
        [sys.executable, os.path.join(HERE, "torch_ref.py"), model]
    batch = [o.split("=", 1)[1] for o in overrides if o.startswith("train.batch_size=")]
    if batch and not script:  # the same batch as flowgrad's row
        head += ["--batch-size", batch[0]]
    return head + ["--steps", str(steps), "--threads", str(threads)]


def flowgrad_cmd():
    exe = shutil.which("flowgrad") or os.path.join(os.path.dirname(sys.executable), "flowgrad")
    return [exe] if os.path.exists(exe) else [sys.executable, os.path.join(ROOT, "cli.py")]


def run_json(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", nargs="*", default=list(ROWS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("PyTorch is needed for the reference: pip install torch==2.13.0")
    # The probe runs before every row and the fastest reading counts: a bound must not
    # loosen because other load slowed one probe.
    rates = [gemm_rate(args.threads)]
    results = []
    for row in args.rows:
        rates.append(gemm_rate(args.threads))
        spec, overrides, ref = ROWS[row]
        fg, pt, fg_mem, pt_mem, nodes = [], [], [], [], None
        for _ in range(args.rounds):
            cmd = flowgrad_cmd() + ["bench", spec, "--json", "--steps", str(args.steps), "--threads", str(args.threads),
                                    "--device", "cpu"]
            for o in overrides:
                cmd += ["--set", o]
            r = run_json(cmd)
            fg.append(r["step_ms"])
            fg_mem.append(r["peak_rss_mb"])
            # several objectives (gan): the training graphs of one step together
            nodes = r["nodes"].get("train") or sum(n for k, n in r["nodes"].items() if k.startswith("train_"))
            r = run_json(reference_cmd(ref, args.steps, args.threads, overrides))
            pt.append(r["step_ms"])
            pt_mem.append(r["peak_rss_mb"])
        f, p = statistics.median(fg), statistics.median(pt)
        # each round's two processes ran back to back: their ratio shows how far the machine's noise moves it
        paired = [a / b for a, b in zip(fg, pt)]
        results.append({"row": row, "flowgrad_ms": round(f, 3), "pytorch_ms": round(p, 3), "ratio": round(f / p, 3),
                        "round_ratios": [min(paired), max(paired)], "best_ratio": round(min(fg) / min(pt), 3),
                        "training_flops": training_flops(spec, overrides),
                        "flowgrad_rss_mb": round(statistics.median(fg_mem)), "pytorch_rss_mb": round(statistics.median(pt_mem)),
                        "train_nodes": nodes})
    rate = max(rates)
    for r in results:
        bound = r["training_flops"] / rate * 1e3
        r["flop_bound_ms"] = round(bound, 3)
        r["flowgrad_over_bound"] = round(r["flowgrad_ms"] / bound, 2) if bound else None
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'model':<16}{'flowgrad ms':>12}{'pytorch ms':>12}{'ratio':>7}{'rounds':>12}{'best':>6}{'bound ms':>10}"
          f"{'fg/bound':>9}{'RSS MB fg/pt':>15}{'nodes':>7}")
    for r in results:
        lo, hi = r["round_ratios"]
        print(f"{r['row']:<16}{r['flowgrad_ms']:>12.3f}{r['pytorch_ms']:>12.3f}{r['ratio']:>7.2f}{f'{lo:.2f}-{hi:.2f}':>12}"
              f"{r['best_ratio']:>6.2f}"
              f"{r['flop_bound_ms']:>10.3f}{r['flowgrad_over_bound'] or 0:>9.2f}{r['flowgrad_rss_mb']:>8}/{r['pytorch_rss_mb']:<6}"
              f"{r['train_nodes']:>7}")
    print(f"(median of {args.rounds} alternating fresh processes, {args.steps} steps each, {args.threads} threads; rounds = "
          f"the lowest and highest ratio of one round's back-to-back pair; best = fastest process over fastest process, "
          f"the least disturbed by other load; bound = training matmul+conv FLOPs / "
          f"{rate / 1e9:.1f} GFLOP/s, onnxruntime's best rate on a 1024x1024 MatMul here)")


if __name__ == "__main__":
    main()
