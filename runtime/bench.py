"""`flowgrad bench`: compile time, node counts, median training-step time,
samples/s and peak memory of one spec, measured in this process."""
from __future__ import annotations

import statistics
import time

import numpy as np

from compiler.gradcheck import DEFAULT_SYMBOLIC, random_batch
from compiler.training import (batch_dims, check_dims, check_dtype, compile_spec, dim_given, require_objectives,
                               step_float_type)
from spec.errors import FLAGS, KEYWORDS, ArgNames, FlowgradError
from spec.model import Spec

from .checks import MAX_THREADS, check_count, check_seed
from .memory import peak_rss_mb
from .session import ORT_ERRORS, pick_device
from .trainer import Trainer


def real_batch(spec: Spec, cm, batch_size: int, seed: int) -> dict | None:
    """The first batch of the spec's own training data (real sequence lengths), if it has data."""
    from .train import TrainOptions, load_data

    from spec.errors import DataError

    if not (spec.train or {}).get("data"):
        return None
    try:
        train_ds, _ = load_data(spec, cm, TrainOptions(names=FLAGS), seed)
    except DataError:  # resized by --set beyond its data: time it on random inputs
        return None
    # data smaller than the batch repeats its examples: the timed batch has the rows reported
    rows = np.arange(batch_size) % len(train_ds)
    return {k: np.ascontiguousarray(v[rows]) for k, v in train_ds.arrays.items()}


def bench(spec: Spec, batch_size: int | None = None, steps: int = 50, warmup: int = 5, device: str = "cpu",
          threads: int | None = None, seed: int = 0, steps_per_call: int = 1, cuda_graphs: bool = True,
          dtype: str | None = None, dims: dict | None = None, *, names: ArgNames = KEYWORDS) -> dict:
    """`dtype`: the graphs' float type (default train.dtype), as train's. `steps_per_call` > 1 times Trainer.train_steps (that many steps in one session call);
    step_ms is then a call's time over its steps. `warmup` counts calls, and the timed steps
    are whole calls: `steps` rounded up to a multiple of `steps_per_call`. `dims` sizes the
    symbolic dims other than the batch (a sequence length T) of a random batch, where the spec
    has no data (the data's batch sizes them); those it leaves out are 4. The result's `dims`
    are the sizes timed, `dims_defaulted` those of them that took the default."""
    # (batch_size=0 timed the spec's, 2.5 timed 2). The counts go on as ints, None as the default
    # that the hint to a bad one offers (steps=None was a TypeError), and the result holds ints:
    # steps=np.int64(20) came back as a NumPy integer, which json.dumps refused
    batch_size = check_count("batch_size", batch_size)
    steps = check_count("steps", steps) or 50
    steps_per_call = check_count("steps_per_call", steps_per_call) or 1
    warmup = check_count("warmup", warmup, 0, required=True)
    threads = check_count("threads", threads, most=MAX_THREADS)
    check_seed(seed)
    check_dtype(dtype)
    require_objectives(spec, "time")
    check_dims(spec, dims, names=names)
    from .train import check_steps_per_call

    check_steps_per_call(spec, steps_per_call, names)  # (it timed K steps of each objective in turn, which no run does)
    spec = spec.with_batch_size(batch_size)  # the graphs' layout choices follow the batch timed
    t0 = time.perf_counter()
    cm = compile_spec(spec, dtype)
    compile_s = time.perf_counter() - t0
    device = pick_device(device, names=names)
    batch_size = spec.batch_size
    # the batch dim is each input's first, whatever its name (x: [B, D] was timed at 4 rows)
    sizes = {d: batch_size for d in batch_dims(spec)}
    first = cm.graphs["train" if "train" in cm.graphs else next(k for k in cm.graphs if k.startswith("train"))]
    inputs = [i.name for i in first.inputs if i.role == "input"]
    rng = np.random.default_rng(seed)
    batch = real_batch(spec, cm, batch_size, seed)
    if batch is not None and dims:
        name = next(iter(dims))
        raise FlowgradError(f"{dim_given(name, names)}: bench times the first batch of the spec's data, which sizes {name}",
                            hint=f"leave out {'--dim' if names.flags else 'dims'}, or time a spec without data")
    defaulted = sorted({p for n in inputs for d in spec.inputs[n].shape if isinstance(d, str)
                        for p in [d] if p not in sizes and p not in (dims or {})}) if batch is None else []
    if batch is None:
        batch = random_batch(spec, inputs, rng, cm.float_dtype, {**sizes, **(dims or {})})
    # the sizes timed of the symbolic dims, as the batch has them (a random one's T is 4 unless --dim sets it)
    timed = {}
    for n, a in batch.items():
        for d, size in zip(spec.inputs[n].shape if n in spec.inputs else (), np.shape(a)):
            if isinstance(d, str) and d.isidentifier():
                timed.setdefault(d, int(size))
    trainer = Trainer(cm, device, threads, seed=seed, cuda_graphs=cuda_graphs)
    times = []
    k = steps_per_call
    for call in range(warmup + -(-steps // k)):
        t = time.perf_counter()
        for obj in cm.schedule:
            try:
                if k == 1:
                    trainer.train_step(obj, batch, lr=1e-4, step=call)
                else:
                    trainer.train_steps(obj, [batch] * k, [1e-4] * k, step=call * k)
            except ORT_ERRORS as ex:  # (a float64 convnet: the CPU provider has no float64 Conv)
                from .train import _step_failed

                raise _step_failed(ex, "timed training step", None, cm.float_dtype) from None
        if call >= warmup:
            times.append((time.perf_counter() - t) / k)
    median = statistics.median(times)
    return {
        "spec": spec.name,
        "device": device,
        "batch_size": batch_size,
        "dims": dict(sorted(timed.items())),
        "dims_defaulted": [d for d in defaulted if d in timed],
        "dtype": cm.float_dtype,
        # the type the timed steps compute in: under mixed_precision its half type, not dtype's
        "step_dtype": step_float_type(spec, cm.float_dtype),
        "compile_s": round(compile_s, 4),
        "nodes": {k: g.node_count for k, g in cm.graphs.items()},
        "step_ms": round(median * 1e3, 4),
        "samples_per_s": round(batch_size / median, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "steps": len(times) * k,  # timed: whole calls
        "steps_per_call": k,
        # onnxruntime's intra-op threads the steps ran with (None: its default, every core), as
        # run.json records a run's: a time means little without it
        "threads": threads,
        # on CUDA: whether the timed steps replayed captured CUDA graphs
        "cuda_graphs": bool(trainer.runners) and all(r.replays_cuda_graph for r in trainer.runners.values()),
    }
