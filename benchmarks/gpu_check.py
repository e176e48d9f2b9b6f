"""On a machine with a GPU, four checks, each printing a table:

1. Step agreement: every spec in models/ on CUDA and on the CPU from the same
   parameters: the relative difference of the gradients, of the losses of seven
   training steps (two batches in turn, then a short one; changing learning
   rates) and of the parameters' change; and whether mixed-precision (float16,
   bfloat16) steps on CUDA stay finite and agree with and without CUDA graphs.
2. Training agreement: models/mlp.yaml and models/convnet.yaml trained for a
   few epochs on both devices with the same seed reach the same validation
   accuracy (within 1%).
3. Step times on CUDA, each in a fresh process: flowgrad one step per call,
   16 steps per call (the step graph in a Loop), mixed precision float16 and
   bfloat16, and PyTorch eager on CUDA (when torch has CUDA).
4. Mixed precision by size: the step time of float32, float16 and bfloat16
   steps on CUDA as the MLP and the convnet grow (fresh processes); mixed
   precision pays once the products are large enough for the tensor cores to
   outweigh the casts.

    python benchmarks/gpu_check.py [--epochs 3] [--timing mlp convnet ...] [--json results.json]

Exits non-zero when CUDA is unavailable or the devices disagree.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from runtime.api import load, train  # noqa: E402
from runtime.session import cuda_available  # noqa: E402

# Tolerances of CUDA against the CPU: float32 arithmetic in another order moves a loss or a
# gradient by ~1e-6. (Adam's first update, lr * g / |g|, is printed but not judged: it
# turns a gradient that should be zero, and is 1e-9 on one device and -1e-9 on the
# other, into a full step of either sign.)
LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-4
SUBPROCESS_TIMEOUT_S = 180


def step_agreement(names: list[str]) -> tuple[bool, list[dict]]:
    from compiler.gradcheck import random_batch
    from compiler.training import batch_dims, compile_spec
    from runtime.bench import real_batch
    from runtime.trainer import Trainer

    ok, rows = True, []
    print(f"{'spec':<22}{'loss rel diff':>15}{'grad rel diff':>15}{'update rel diff':>17}{'fp16':>8}{'bf16':>8}"
          f"{'graph':>7}  (cuda vs cpu; graph: steps replayed as a CUDA graph)")
    for name in names:
        row = {"spec": name}
        try:
            spec = load(os.path.join(ROOT, "models", f"{name}.yaml"))
            cm = compile_spec(spec)
            first = cm.graphs["train" if "train" in cm.graphs else next(k for k in cm.graphs if k.startswith("train"))]
            inputs = [i.name for i in first.inputs if i.role == "input"]
            batch = real_batch(spec, cm, spec.batch_size, 0) or random_batch(
                spec, inputs, np.random.default_rng(0), cm.float_dtype, {d: spec.batch_size for d in batch_dims(spec)})
            # Six steps on alternating batches and changing learning rates, so that each of
            # the two buffer sets' CUDA graphs is replayed after its capture (a replay that
            # kept a stale input would train on one batch throughout), then a short batch like
            # an epoch's last (it runs the general session).
            flipped = {k: np.ascontiguousarray(v[::-1]) for k, v in batch.items()}
            batches = [batch, batch, flipped, flipped, batch, flipped]
            if not spec.train.get("drop_last"):
                batches.append({k: np.ascontiguousarray(v[:5]) for k, v in batch.items()})
            results = {}
            for device in ("cpu", "cuda"):
                trainer = Trainer(cm, device, seed=0)
                before = trainer.state_numpy()
                losses = [trainer.train_step(obj, b, lr=1e-3 * (step + 1), step=step)["loss"]
                          for step, b in enumerate(batches) for obj in cm.schedule]
                after = trainer.state_numpy()
                results[device] = (np.array(losses), {k: after[k] - before[k] for k in cm.params})
                if device == "cuda":  # did every step graph run as a captured CUDA graph?
                    row["cuda_graph"] = all(r.replays_cuda_graph for r in trainer.runners.values())
            (l_cpu, d_cpu), (l_gpu, d_gpu) = results["cpu"], results["cuda"]
            row["loss_rel"] = float(np.max(np.abs(l_gpu - l_cpu) / (np.abs(l_cpu) + 1e-12)))
            flat_cpu = np.concatenate([d_cpu[k].ravel() for k in sorted(d_cpu)])
            flat_gpu = np.concatenate([d_gpu[k].ravel() for k in sorted(d_gpu)])
            row["update_rel"] = float(np.linalg.norm(flat_gpu - flat_cpu) / (np.linalg.norm(flat_cpu) + 1e-30))
            row["grad_rel"] = _gradient_agreement(cm, batch)
            row["agree"] = bool(row["loss_rel"] <= LOSS_RTOL and row["grad_rel"] <= GRAD_RTOL
                                and np.all(np.isfinite(flat_gpu)))
            for compute in ("float16", "bfloat16"):
                row[compute] = _mixed_step(name, compute, batches[:6])
        except Exception as e:  # a check that reports every spec, not the first failure
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            row["agree"] = False
            traceback.print_exc(file=sys.stdout)
        ok &= row["agree"]
        rows.append(row)
        if "error" in row:
            print(f"{name:<22}  ERROR {row['error']}")
        else:
            print(f"{name:<22}{row['loss_rel']:>15.2e}{row['grad_rel']:>15.2e}{row['update_rel']:>17.2e}"
                  f"{row['float16']:>8}{row['bfloat16']:>8}{'yes' if row['cuda_graph'] else 'no':>7}"
                  + ("" if row["agree"] else "  DISAGREE"))
    return ok, rows


def _gradient_agreement(cm, batch) -> float:
    """The largest relative difference, over objectives, of all gradients computed on CUDA
    and on the CPU from the initial parameters (the gradients-only graphs)."""
    from runtime.session import to_device
    from runtime.trainer import GraphRunner

    worst = 0.0
    for kind in (k for k in cm.graphs if k.startswith("grads")):
        grads = {}
        for device in ("cpu", "cuda"):
            state = {k: to_device(np.asarray(v), device) for k, v in cm.initial_state(0).items()}
            runner = GraphRunner(cm.graphs[kind], device, None)
            _, out = runner.run(state, {}, batch, {"step": 0, "seed": 0, "lr": 1e-3})
            grads[device] = np.concatenate([out[k].numpy().ravel() for k in sorted(out)])
        diff = np.linalg.norm(grads["cuda"] - grads["cpu"]) / (np.linalg.norm(grads["cpu"]) + 1e-30)
        worst = max(worst, float(diff) if np.all(np.isfinite(grads["cuda"])) else np.inf)
    return worst


# the spacing of the compute dtype's numbers just above 1 (bits of mantissa: 10 and 7)
_EPSILON = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def _mixed_step(name: str, compute: str, batches) -> str:
    """'ok' when mixed-precision steps on CUDA give finite losses, the same with and without
    CUDA graphs (the captured session is specialised to the batch shape, and onnxruntime
    optimises it apart), else what went wrong. "The same" is within a few units of the
    compute dtype's rounding: two CUDA runs of one spec are not bitwise equal in mixed
    precision (dates_attention in bfloat16, which captures no graph, differed by 6e-3)."""
    from compiler.training import compile_spec
    from runtime.trainer import Trainer

    try:
        spec = load(os.path.join(ROOT, "models", f"{name}.yaml"), [f"train.mixed_precision={compute}"])
        cm = compile_spec(spec)
        losses = {}
        for graphs in (True, False):
            trainer = Trainer(cm, "cuda", seed=0, cuda_graphs=graphs)
            losses[graphs] = np.array([trainer.train_step(obj, b, lr=1e-3, step=step)["loss"]
                                       for step, b in enumerate(batches) for obj in cm.schedule])
        # a step whose scaled gradients overflow is skipped and reports a NaN loss; both runs
        # must skip the same steps, and not all of them
        kept = {k: np.isfinite(v) for k, v in losses.items()}
        if not kept[True].any():
            return "nan"
        if (kept[True] != kept[False]).any():
            print(f"  {name} {compute}: the runs with and without CUDA graphs skip different steps")
            return "graph"
        a, b = losses[True][kept[True]], losses[False][kept[False]]
        diff = float(np.max(np.abs(a - b) / (np.abs(b) + 1e-12)))
        if diff > 4 * _EPSILON[compute]:
            print(f"  {name} {compute}: losses with and without CUDA graphs differ by {diff:.2e} (relative)")
            return "graph"
        return "ok"
    except Exception as e:
        print(f"  {name} {compute}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        return type(e).__name__[:7]


def training_agreement(names: list[str], epochs: int) -> tuple[bool, list[dict]]:
    from runtime.bench import bench
    from runtime.checkpoint import load_checkpoint

    ok, rows = True, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            spec = load(os.path.join(ROOT, "models", f"{name}.yaml"))
            res, secs = {}, {}
            for device in ("cuda", "cpu"):
                t = time.perf_counter()
                res[device] = train(spec, run_dir=os.path.join(tmp, f"{name}-{device}"), epochs=epochs, device=device)
                secs[device] = time.perf_counter() - t
            acc = {d: r.final.get("valid_accuracy") for d, r in res.items()}
            a, _ = load_checkpoint(os.path.join(tmp, f"{name}-cuda", "checkpoint.npz"))
            b, _ = load_checkpoint(os.path.join(tmp, f"{name}-cpu", "checkpoint.npz"))
            drift = max(float(np.max(np.abs(a[k] - b[k])) / (np.max(np.abs(b[k])) + 1e-12)) for k in b)
            agree = abs(acc["cuda"] - acc["cpu"]) <= 0.01
            ok &= agree
            times = {d: bench(spec, device=d)["step_ms"] for d in ("cuda", "cpu")}
            rows.append({"spec": name, "epochs": epochs, "accuracy": acc, "seconds": secs, "drift": drift,
                         "step_ms": times, "agree": agree})
            print(f"{name}: {epochs} epochs, valid accuracy cuda {acc['cuda']:.4f} cpu {acc['cpu']:.4f} "
                  f"({'agree' if agree else 'DISAGREE'}; max relative parameter drift {drift:.2e}); "
                  f"train {secs['cuda']:.1f} s cuda, {secs['cpu']:.1f} s cpu; "
                  f"median step cuda {times['cuda']:.3f} ms, cpu {times['cpu']:.3f} ms")
    return ok, rows


def _step_ms(cmd: list[str]) -> tuple[float | None, str | None]:
    """(median step ms, None) from a `bench --json` command, or (None, why it failed)."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        return None, lines[-1][:160] if lines else "failed"
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])["step_ms"], None
    except (IndexError, KeyError, ValueError):
        return None, "no step time in its output"


TIMING_COLUMNS = ("fg 1/call", "fg 16/call", "fg fp16", "fg bf16", "pytorch")


def timing(rows: list[str], steps: int, device: str = "cuda", columns=TIMING_COLUMNS) -> list[dict]:
    """Median step times on `device`, flowgrad and PyTorch eager, each in a fresh process."""
    from compare import ROWS, flowgrad_cmd, reference_cmd

    out = []
    head = TIMING_COLUMNS
    print(f"{'model':<16}" + "".join(f"{h:>11}" for h in (*head, "1/call/pt", "best/pt")) + f"  (ms per step, {device})")
    for row in rows:
        spec, overrides, ref = ROWS[row]
        base = flowgrad_cmd() + ["bench", spec, "--json", "--steps", str(steps), "--device", device]
        for o in overrides:
            base += ["--set", o]
        commands = {"fg 1/call": base, "fg 16/call": base + ["--steps-per-call", "16"],
                    "fg fp16": base + ["--set", "train.mixed_precision=float16"],
                    "fg bf16": base + ["--set", "train.mixed_precision=bfloat16"],
                    "pytorch": reference_cmd(ref, steps, 1, overrides) + ["--device", device]}
        cells, why = {}, {}
        for column, cmd in commands.items():
            cells[column], why[column] = _step_ms(cmd) if column in columns else (None, None)
        fg = [v for k, v in cells.items() if k != "pytorch" and v is not None]
        pt = cells["pytorch"]
        ratios = {"one_over_pytorch": cells["fg 1/call"] / pt if pt and cells["fg 1/call"] else None,
                  "best_over_pytorch": min(fg) / pt if pt and fg else None}
        out.append({"row": row, **cells, **ratios, "why": {k: v for k, v in why.items() if v}})
        text = "".join(f"{v:>11.3f}" if v is not None else f"{'-':>11}" for v in [*cells.values(), *ratios.values()])
        notes = "; ".join(f"{k}: {v}" for k, v in why.items() if v)
        print(f"{row:<16}{text}", ("  " + notes) if notes else "")
    return out


_WIDE_MLP = ["dims.D=784", "graph.h1=relu(x @ W1 + b1)", "graph.h2=relu(h1 @ W2 + b2)"]
# after compare.py's mlp_big and convnet rows, which they grow
MIXED_ROWS = {
    "mlp_4096": ("models/mlp.yaml", _WIDE_MLP + ["dims.H=4096", "train.batch_size=1024"]),
    "mlp_8192": ("models/mlp.yaml", _WIDE_MLP + ["dims.H=8192", "train.batch_size=2048"]),
    "convnet_wide": ("models/convnet.yaml", ["dims.C1=128", "dims.C2=256", "dims.H=1024", "train.batch_size=512"]),
}


def mixed_precision_scaling(steps: int, device: str = "cuda") -> list[dict]:
    """Step times of float32, float16 and bfloat16 training as the models grow, each in a
    fresh process, and the speed-up of each narrow type over float32."""
    from compare import ROWS, flowgrad_cmd

    rows = {"mlp_big": ROWS["mlp_big"][:2], "mlp_4096": MIXED_ROWS["mlp_4096"], "mlp_8192": MIXED_ROWS["mlp_8192"],
            "convnet": ROWS["convnet"][:2], "convnet_wide": MIXED_ROWS["convnet_wide"]}
    out = []
    print(f"{'model':<16}{'float32':>10}{'float16':>10}{'bfloat16':>10}{'fp32/fp16':>11}{'fp32/bf16':>11}"
          f"  (ms per step, {device})")
    for row, (spec, overrides) in rows.items():
        base = flowgrad_cmd() + ["bench", spec, "--json", "--steps", str(steps), "--device", device]
        for o in overrides:
            base += ["--set", o]
        cells, why = {}, {}
        for compute in ("float32", "float16", "bfloat16"):
            extra = [] if compute == "float32" else ["--set", f"train.mixed_precision={compute}"]
            cells[compute], why[compute] = _step_ms(base + extra)
        fp32 = cells["float32"]
        speedups = {f"over_{c}": fp32 / cells[c] if fp32 and cells[c] else None for c in ("float16", "bfloat16")}
        out.append({"row": row, "overrides": overrides, **cells, **speedups, "why": {k: v for k, v in why.items() if v}})
        text = "".join(f"{v:>10.3f}" if v is not None else f"{'-':>10}" for v in cells.values())
        text += "".join(f"{v:>11.2f}" if v is not None else f"{'-':>11}" for v in speedups.values())
        notes = "; ".join(f"{k}: {v}" for k, v in why.items() if v)
        print(f"{row:<16}{text}", ("  " + notes) if notes else "")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--models", nargs="*", default=["mlp", "convnet"], help="trained on both devices")
    ap.add_argument("--step-check", nargs="*", default=None,
                    help="specs whose single steps are compared (default: all of models/)")
    ap.add_argument("--timing", nargs="*",
                    default=["mlp", "mlp_big", "convnet", "char_lstm", "dates_attention", "dae", "vae", "gan"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--columns", nargs="*", choices=TIMING_COLUMNS, default=list(TIMING_COLUMNS),
                    help="which step times to measure")
    ap.add_argument("--only", nargs="*", choices=["steps", "training", "timing", "mixed"],
                    default=["steps", "training", "timing", "mixed"],
                    help="run only these checks")
    ap.add_argument("--json", default=None, help="also write every number to this file")
    args = ap.parse_args()
    if not cuda_available():
        raise SystemExit("CUDA is not available to onnxruntime here (install onnxruntime-gpu, CUDA 13, cuDNN 9)")
    names = args.step_check if args.step_check is not None else sorted(
        os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "models", "*.yaml")))
    report, ok = {}, True
    if "steps" in args.only:
        agree, report["steps"] = step_agreement(names)
        ok &= agree
    if "training" in args.only:
        agree, report["training"] = training_agreement(args.models, args.epochs)
        ok &= agree
    if "timing" in args.only:
        report["timing"] = timing(args.timing, args.steps, columns=args.columns)
    if "mixed" in args.only:
        report["mixed_precision"] = mixed_precision_scaling(args.steps)
    if args.json:
        from runtime.jsontext import dumps  # strict JSON: a NaN is null, an infinity "Infinity"

        with open(args.json, "w") as f:
            f.write(dumps(report, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
