"""The Python API: the CLI's verbs as functions.

    from runtime.api import load, check, compile, train, export, predict
    spec = load("models/mlp.yaml", overrides=["dims.H=128"])
    result = train(spec, epochs=5)
    export(result.run_dir, "mlp.onnx")

check, gradcheck, summary and bench return what their verbs print with --json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Mapping

from compiler.training import CompiledModel, check_dtype, compile_spec, trained_names
from spec import load_spec, spec_from_dict, spec_from_text
from spec.errors import KEYWORDS, ArgNames, FlowgradError, SpecError, did_you_mean
from spec.model import Spec

from . import data as D
from .checkpoint import check_checkpoint, checkpoint_path, load_checkpoint, refuse_replacing
from .export import export, predict  # noqa: F401  (part of the API)
from .session import pick_device
from .checks import (MAX_THREADS, check_count, check_flag, check_number, check_path, check_seed, enclosing_run,
                     is_whole_number)
from .train import TrainOptions, TrainResult, eval_batches, held_out_test, input_dtypes, least_rows, needed_inputs
from .train import train as _train
from .trainer import Trainer


def load(spec: str | os.PathLike | dict | Spec, overrides: list[str] | None = None) -> Spec:
    """A Spec from a YAML path, YAML text (a string of several lines), a dict (same structure
    as the YAML), or a Spec; `overrides` are `flowgrad --set`'s KEY=VALUE strings."""
    if overrides is not None and (isinstance(overrides, str) or not isinstance(overrides, (list, tuple))
                                  or not all(isinstance(o, str) for o in overrides)):
        # (a string was read one character at a time, as overrides 'd', 'i', ...)
        raise SpecError(f"overrides must be a list of KEY=VALUE strings, got {overrides!r}",
                        hint='e.g. overrides=["dims.H=128"]')
    overrides = list(overrides or [])
    if isinstance(spec, Spec):
        if overrides:  # (they were dropped without a word)
            raise SpecError("overrides apply to a spec as it is read: this one is a loaded Spec",
                            hint="pass its path, text or dict with the overrides instead")
        return spec
    if isinstance(spec, Mapping):  # (an OrderedDict, say)
        return spec_from_dict(spec, overrides=overrides, names=KEYWORDS)
    if isinstance(spec, str) and "\n" in spec:  # YAML text (it was read as a path, and its text printed as one)
        return spec_from_text(spec, "<string>", overrides, KEYWORDS)
    if not isinstance(spec, (str, os.PathLike)):
        raise SpecError(f"spec must be a path, YAML text, a dict or a Spec, got {type(spec).__name__}",
                        hint='e.g. load("models/mlp.yaml")')
    return load_spec(os.fspath(spec), overrides, KEYWORDS)


def save_graphs(cm: CompiledModel, output: str, names: ArgNames = KEYWORDS) -> list[str]:
    """Write the compiled graphs and manifest.json into the directory `output` (`names`: how
    hints name it, as the keyword or the CLI's -o), never into a run directory: its graphs
    belong to its checkpoints, which another spec's graphs would no longer fit; nor over files
    of the same names that are not compiled graphs."""
    name = names("output")
    if enclosing_run(output):  # any folder inside a run, however deep (RUN/graphs/new was written into)
        raise FlowgradError(f"{output} is inside a run directory", hint="its graphs belong to the run's "
                            f"checkpoints: pick another directory with {name}")
    if os.path.isfile(os.path.join(output, "run.json")):  # (the graphs went in beside its checkpoints)
        raise FlowgradError(f"{output} is a run directory", hint="its graphs are in its graphs/ folder, and belong "
                            f"to the run's checkpoints: pick another directory with {name}")
    refuse_replacing(output, "directory", names=names)
    files = {os.path.join(output, f"{graph}.onnx"): "onnx" for graph in cm.graphs}
    files[os.path.join(output, "manifest.json")] = "manifest"
    for path, kind in files.items():
        if os.path.isdir(path):  # (atomic_write's hint, to give the file's path, is for outputs the user names)
            raise FlowgradError(f"{path} is a directory, where the compiled graphs' {os.path.basename(path)} goes",
                                hint=f"pick another directory with {name}")
        refuse_replacing(path, kind, names=names)
    stale = _earlier_graphs(output, cm)
    try:
        # The earlier manifest goes first and the new one is written last: a save that fails part way
        # leaves graphs without a manifest, no build, rather than one spec's manifest beside another's graphs.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output, "manifest.json"))
        written = cm.save(output, hint=f"pick a writable directory with {name}, or free some space")
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return written
    except OSError as e:
        raise FlowgradError(f"cannot write the graphs to {output}: {e.strerror or e}",
                            hint=f"pick a writable directory with {name}") from None


def _earlier_graphs(output: str, cm: CompiledModel) -> list[str]:
    """The graph files that the compiled graphs written to `output` before (its manifest.json
    lists them) and that `cm` lacks: a sampling graph of another spec's (generate.onnx) was left
    beside the new manifest and graphs, for a reader of the folder to take for this spec's. Other
    .onnx files there, which no manifest lists, are the user's."""
    try:
        with open(os.path.join(output, "manifest.json"), encoding="utf-8") as f:
            graphs = json.load(f).get("graphs")
    except (OSError, ValueError, AttributeError):
        return []
    files = [g.get("file") for g in graphs.values() if isinstance(g, dict)] if isinstance(graphs, dict) else []
    ours = {f"{graph}.onnx" for graph in cm.graphs}
    return [os.path.join(output, f) for f in files  # (a bare file name only: nothing outside the folder)
            if isinstance(f, str) and f.endswith(".onnx") and f == os.path.basename(f) and f not in ours
            and os.path.isfile(os.path.join(output, f))]


def _sizes(dims):
    """`dims` as a dict whose whole numbers are Python ints: a size given as a NumPy integer
    (dims={"T": np.int64(64)}) came back in the result as one, which json.dumps refused. Other
    values, and a `dims` that is no mapping, are left for check_dims to refuse."""
    if not isinstance(dims, Mapping):
        return dims
    return {name: int(size) if is_whole_number(size) else size for name, size in dims.items()}


def check(spec: str | os.PathLike | dict | Spec, dtype: str | None = None) -> dict:
    """Validate a spec and infer every shape, as `flowgrad check` does; returns what `check --json`
    prints: each graph entry's op, shape and dtype, each parameter's shape, init, kind and count,
    the trainable values, and the warnings (message and hint) that check prints. A spec that
    compile would refuse raises the same error."""
    from .reports import check_spec_report

    check_dtype(dtype)
    return check_spec_report(load(spec), dtype)[1]


def gradcheck(spec: str | os.PathLike | dict | Spec, seed: int = 0, tolerance: float = 1e-4) -> dict:
    """Each parameter's symbolic gradient against central finite differences in float64, as
    `flowgrad gradcheck` does; returns what `gradcheck --json` prints: "passed", the worst
    relative error, and per objective and parameter its error and status (ok, FAIL above
    `tolerance`, or 'not checkable here' where every probe crossed a kink of the loss)."""
    from .reports import gradcheck_report

    seed = check_seed(seed) or 0  # (None, the seed left out, reached NumPy's SeedSequence as a TypeError)
    tolerance = check_number("tolerance", tolerance, 0.0, sys.float_info.max,
                             hint="give a finite number of 0 or more, e.g. tolerance=1e-4")
    tolerance = 1e-4 if tolerance is None else tolerance
    return gradcheck_report(load(spec), seed, tolerance)


def summary(spec: str | os.PathLike | dict | Spec, batch_size: int | None = None, dims: Mapping | None = None,
            objective: str | None = None, dtype: str | None = None) -> dict:
    """Nodes, parameters and FLOPs (forward and training, per step and per example) of a spec,
    as `flowgrad summary` counts them; returns what `summary --json` prints. `batch_size` is the
    batch dim's value (default train.batch_size), `dims` gives other symbolic dims
    ({"T": 64}; those left out count as 1), `objective` whose training step to count."""
    from compiler import visual

    check_dtype(dtype)
    batch_size = check_count("batch_size", batch_size)  # (an int: a NumPy one went on into the result)
    if objective is not None and not isinstance(objective, str):
        raise FlowgradError(f"objective must be an objective's name, got {type(objective).__name__}",
                            hint='e.g. objective="generator"')
    s = load(spec)
    if objective is not None:  # (a spec without a loss has no training step: any name was taken)
        visual.pick_objective(s, objective)
    return visual.summary(s, batch_size, dtype, _sizes(dims), objective,
                          names=KEYWORDS)


def bench(spec: str | os.PathLike | dict | Spec, steps: int = 50, batch_size: int | None = None, device: str = "cpu",
          threads: int | None = None, steps_per_call: int = 1, cuda_graphs: bool = True, dtype: str | None = None,
          dims: Mapping | None = None) -> dict:
    """The median training-step time of a spec on its data (a random batch where it has none),
    with compile time, node counts and peak memory, as `flowgrad bench` times it; returns what
    `bench --json` prints (step_ms, samples_per_s, compile_s, nodes, peak_rss_mb, ...)."""
    from .bench import bench as time_steps

    cuda_graphs = check_flag("cuda_graphs", cuda_graphs)  # (as train's: a NumPy bool is one, "no" is refused)
    s = load(spec)
    return time_steps(s, batch_size, steps, device=device, threads=threads,
                      steps_per_call=steps_per_call, cuda_graphs=cuda_graphs, dtype=dtype,
                      dims=_sizes(dims), names=KEYWORDS)


def compile(spec: str | os.PathLike | dict | Spec, dtype: str | None = None,  # noqa: A001
            output: str | os.PathLike | None = None) -> CompiledModel:
    """The spec's graphs (train, eval, infer, grads, apply; generate with a `generate` section) in
    `dtype` (default train.dtype); with `output`, also written there with manifest.json, as
    `flowgrad compile -o` does."""
    check_dtype(dtype)
    output = check_path("output", output)  # ("" wrote nothing, without a word)
    cm = compile_spec(load(spec), dtype)
    if output is not None:
        save_graphs(cm, output)
    return cm


def train(spec: str | os.PathLike | dict | Spec, **options) -> TrainResult:
    """Train a spec; keyword options are those of TrainOptions (epochs, device, run_dir, ...).
    data= (a path, or arrays in memory: {"x": x, "y": y}) takes the place of the spec's train.data
    path or dataset; the spec's test, and its valid where no valid= is given, still split it."""
    known = [f.name for f in dataclasses.fields(TrainOptions) if f.name != "names"]  # (the API names keywords)
    for name in options:
        if name not in known:  # (TrainOptions' TypeError)
            raise FlowgradError(f"train() has no option {name!r}",
                                hint=did_you_mean(name, known) or f"its options: {', '.join(known)}")
    s = load(spec)
    opts = TrainOptions(**{"progress": False, **options}, names=KEYWORDS)
    return _train(s, opts)


def _frozen_in(cm: CompiledModel, meta: dict) -> list[str]:
    """The parameters that the run whose checkpoint `meta` describes kept fixed (train's freeze=,
    --freeze): those `cm` trains and no objective of the checkpoint's did. Its optimizer state
    covers the others alone, as the run's graphs were compiled."""
    then = meta.get("trained")
    if not isinstance(then, dict):  # (a checkpoint that predates the record)
        return []
    kept = {n for names in then.values() if isinstance(names, list) for n in names}
    return sorted({n for o in cm.objectives for n in trained_names(cm.params, o)} - kept)


def evaluate_run(run_dir: str | os.PathLike, data: str | os.PathLike | Mapping | None = None, checkpoint: str = "best", device: str = "auto",
                 threads: int | None = None, batch_size: int = 256, *, names: ArgNames = KEYWORDS) -> dict:
    """Loss and metrics of a run's best (or last) checkpoint on the .npz at `data` (or on arrays
    given in memory, data={"x": x, "y": y}), or without data on the test examples its spec held out
    (train.data.test), as `flowgrad eval` prints them.
    `names`: how hints name the arguments (the keywords; flowgrad eval passes its flags)."""
    from runtime.session import ORT_ERRORS, check_device
    from runtime.train import _check_state

    # the arguments first, before the spec is compiled and the data read (data=3 was taken for
    # file descriptor 3, batch_size=None a TypeError); flowgrad eval leaves its flags to these
    run_dir = check_path("run_dir", run_dir, required=True)
    data = D.data_argument("data", data)
    if data is not None and not D.in_memory(data):
        D.check_data_path(data, flag=names("data"))  # (its hint spoke of flowgrad's --data)
    check_checkpoint(checkpoint, names("checkpoint"))
    check_device(device, names("device"))
    check_count("batch_size", batch_size, required=True)  # (None is no batch size: its default is 256)
    check_count("threads", threads, most=MAX_THREADS)
    if not os.path.isfile(os.path.join(run_dir, "spec.yaml")):  # (read as a spec path, it said "no such spec file")
        raise FlowgradError(f"{run_dir} is not a run directory",
                            hint="pass the directory that 'flowgrad train' wrote, e.g. runs/mlp")
    spec = load_spec(os.path.join(run_dir, "spec.yaml"))
    try:
        with open(os.path.join(run_dir, "run.json")) as f:
            info = json.load(f)
        seed = int(info.get("seed", 0))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise FlowgradError(f"{run_dir}: run.json is missing or malformed ({type(e).__name__})",
                            hint="pass a run directory that 'flowgrad train' wrote") from None
    ckpt = checkpoint_path(run_dir, checkpoint)  # (checkpoint.npz where there is no best yet)
    state, meta = load_checkpoint(ckpt, names)
    # the batch size the run trained with (a --batch-size is not in its spec.yaml): the carried states
    # of stateful layers and scans have its rows, and the spec's train.batch_size refused them
    spec = spec.with_batch_size(meta.get("batch_size"))
    cm = compile_spec(spec, info.get("dtype"))  # the float type the run trained in
    frozen = _frozen_in(cm, meta)
    if frozen:  # (the optimizer state of a run trained with freeze= was taken for a changed spec's)
        cm = compile_spec(spec, info.get("dtype"), frozen=frozen, names=names)
    _check_state(cm, state, ckpt, seed, names)
    if data is None:
        ds, data = held_out_test(spec, run_dir, info, cm, names)
    else:
        ds, data = D.load_given(data, names("data"), spec.inputs)
    needed = needed_inputs(cm, ("eval",))
    dtypes = input_dtypes(cm)
    D.check_against_spec(ds, spec, needed, data, cm.index_bounds, dtypes, cm.length_bounds,
                         cm.least_sizes, cm.ignored_labels, trained=True)
    ds = D.cast_for(D.only(ds, needed), dtypes)
    trainer = Trainer(cm, pick_device(device, names=names), threads, state, seed)
    try:
        return trainer.evaluate(eval_batches(ds, batch_size, least_rows(spec, cm)))
    except ORT_ERRORS as ex:
        from runtime.train import _step_failed

        raise _step_failed(ex, "evaluation", run_dir, cm.float_dtype) from None
