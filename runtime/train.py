"""The training loop: data, run directory, checkpoints, validation, early
stopping, progress. Everything random is a function of the seed: data order
of (seed, epoch), in-graph randomness of (seed, step), initial parameters of
(seed, parameter name). So a resumed run replays the uninterrupted one."""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from compiler.training import (CompiledModel, batch_dims, check_dtype, compile_spec, require_objectives, schedule_of,
                               trained_names)
from spec import model as S
from spec.errors import ArgNames, DataError, FlowgradError, SpecError, did_you_mean

from . import data as D
from . import jsontext
from .checks import MAX_SEED, MAX_THREADS, check_count, check_flag, check_path, check_seed, enclosing_run  # noqa: F401  (the API imported them from here)
from .checkpoint import (atomic_write, checkpoint_bytes, checkpoint_meta, holds_its_best, load_checkpoint,
                         read_run_info, remove_stale_temporaries)
from .schedules import Plateau, check_schedule_fits, improves, lr_schedule

CHECKPOINT = "checkpoint.npz"
# Mixed precision skips a step whose gradients overflow and halves the loss scale; this
# many in a row (a scale divided by 2^25) means no scale helps.
MAX_OVERFLOWS = 25
BEST = "best.npz"
# The best checkpoint that a record of part of an epoch (a step limit's stop) replaced: a resume
# with a larger limit redoes that record, and the best goes back to what it was before it.
BEST_BEFORE_PARTIAL = "best.before_partial.npz"
# What a run writes in its directory (besides its lock and temporaries).
RUN_WRITES = (CHECKPOINT, BEST, BEST_BEFORE_PARTIAL, "spec.yaml", "run.json", "result.json", "metrics.jsonl", "graphs")


@dataclass
class TrainOptions:
    run_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    seed: int | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    data: str | Mapping | None = None  # a path, or (from the API) arrays in memory: input name -> array
    valid: str | float | Mapping | None = None  # a fraction, a path, or arrays in memory
    resume: bool = False
    overwrite: bool = False
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    accumulate: int = 1
    steps_per_call: int = 1  # >1: that many steps in one session call (the step graph in a Loop)
    checkpoint_every: int = 0  # steps; 0 = at the end of each epoch only
    progress: bool = True
    dtype: str | None = None
    cuda_graphs: bool = True  # on CUDA, replay captured steps where they can be
    # how messages name these options: keywords (seed=3), or the CLI's flags (--seed 3); no default,
    # as the CLI, runtime.api and bench each build these and a wrong default misnamed them silently
    names: ArgNames = field(kw_only=True)


@dataclass
class TrainResult:
    run_dir: str
    device: str
    steps: int
    epochs: int
    seconds: float
    final: dict
    best: dict
    history: list
    stopped: str = "finished"
    warm_start: dict | None = None  # --init-from: {"from", "taken": [names], "kept": {name: why}}

    def to_json(self) -> dict:
        keys = ("run_dir", "device", "steps", "epochs", "seconds", "final", "best", "stopped")
        return {**{k: getattr(self, k) for k in keys}, **({"init_from": self.warm_start} if self.warm_start else {})}


# ---------------------------------------------------------------- data
def needed_inputs(cm: CompiledModel, kinds=("train", "eval")) -> list[str]:
    names = []
    for k, g in cm.graphs.items():
        if k.split("_")[0] in kinds:
            for i in g.inputs:
                if i.role == "input" and i.name not in names:
                    names.append(i.name)
    return names


TEST_SPLIT_SEED = 7919  # the test fraction's shuffle differs from the validation one's


def data_source(spec: S.Spec, opts: TrainOptions) -> dict:
    """Where a run's data comes from, as run.json records it for later readers (plots):
    {"path": absolute .npz path}, {"dataset": name, "options": {...}} or D.IN_MEMORY (arrays
    the API was given), with "valid": a fraction, an absolute .npz path, D.IN_MEMORY or None."""
    cfg = spec.train.get("data", {}) or {}
    if D.in_memory(opts.data):
        source: dict = dict(D.IN_MEMORY)
    elif opts.data:
        source = {"path": os.path.abspath(opts.data)}
    elif "path" in cfg:
        source = {"path": beside_spec(spec, cfg["path"], "path")}
    elif "dataset" in cfg:
        source = {"dataset": cfg["dataset"], "options": cfg.get("options")}
        if cfg["dataset"] in D.DATASET_VERSIONS:  # (its generator's: see _bundled_dataset_changed)
            source["version"] = D.DATASET_VERSIONS[cfg["dataset"]]
    else:
        source = {}
    if D.in_memory(opts.valid):
        valid = dict(D.IN_MEMORY)
    elif opts.valid is not None:
        valid = _fraction_or_path(opts.valid)
    else:
        valid = _fraction_or_path(cfg.get("valid"), "valid", spec.locate("train", "data", "valid") if "valid" in cfg else None)
    if isinstance(valid, str):  # --valid's file is where the user is
        valid = os.path.abspath(valid) if opts.valid is not None else beside_spec(spec, valid, "valid")
    test = spec_test(spec)
    return {**source, "valid": valid, **({"test": beside_spec(spec, test, "test")} if isinstance(test, str) else {})}


def beside_spec(spec: S.Spec, path: str, key: str | None = None) -> str:
    """A data file the spec names: relative to the spec file (or, for a spec given as
    text, to the working directory). A run directory's spec.yaml is a copy of the spec the run
    trained, made elsewhere: a relative train.data.<key> in it is where the run read that file
    (its run.json records where), so that the run's own spec.yaml resumes it."""
    if key and not os.path.isabs(path):
        recorded = _recorded_data_path(spec, key, path)
        if recorded:
            return recorded
    # (beside the file as it was read: spec.path, as given, is relative to where the script was then)
    return os.path.abspath(os.path.join(os.path.dirname(spec.file), path) if spec.file else path)


def _recorded_data_path(spec: S.Spec, key: str, path: str) -> str | None:
    """Where run.json beside `spec`'s file, a run's spec.yaml, records that the run read
    train.data.<key> (path, valid or test) written `path`; None for any other spec file."""
    if not spec.file or os.path.basename(spec.file) != "spec.yaml" or not os.path.isfile(spec.file):
        return None
    try:
        recorded = (read_run_info(os.path.dirname(spec.file)).get("data_source") or {}).get(key)
    except FlowgradError:
        return None
    # the recorded path ends as `path` does, less the steps up (../data/d.npz read data/d.npz
    # above the spec the run was given, which the recorded path does not show)
    parts = os.path.normpath(path).split(os.sep)
    while parts and parts[0] == os.pardir:
        parts.pop(0)
    suffix = os.sep + os.path.join(*parts) if parts else None
    return recorded if suffix and isinstance(recorded, str) and recorded.endswith(suffix) else None


def load_spec_npz(spec: S.Spec, key: str, path: str) -> D.Dataset:
    """The .npz that the spec's train.data.<key> (path, valid or test) names, at `path` (where
    beside_spec puts it): its errors point at that key, and a missing file's hint says where a
    relative path is read from."""
    loc = spec.locate("train", "data", key)
    D.check_data_path(path, loc, key=f"train.data.{key}", spec_path=spec.file if spec.file and os.path.isfile(spec.file) else None)
    return D.load_npz(path, loc, spec.inputs)


def input_dtypes(cm: CompiledModel) -> dict[str, str]:
    """Each data input's dtype in the compiled graphs (a float input declared float16 or
    float64 keeps that type; other floats take the model's), which its arrays are cast to."""
    return {i.name: i.dtype for g in cm.graphs.values() for i in g.inputs if i.role == "input"}


def load_data(spec: S.Spec, cm: CompiledModel, opts: TrainOptions, seed: int) -> tuple[D.Dataset, D.Dataset | None]:
    cfg = spec.train.get("data", {}) or {}
    loc = spec.locate("train", "data") if "data" in spec.train else spec.locate("train") if spec.train else None
    source = data_source(spec, opts)
    if opts.data is not None:  # (a file or arrays: as given)
        train_ds, where = D.load_given(opts.data, opts.names("data"), spec.inputs)
    elif "path" in source:
        train_ds, where = load_spec_npz(spec, "path", source["path"]), source["path"]
    elif "dataset" in source:
        train_ds = D.load_bundled(cfg["dataset"], cfg.get("options"), loc)
        where = f"dataset {cfg['dataset']!r}"
    else:
        names = opts.names
        raise DataError(f"no training data: the spec has no train.data and no {names('data')} was given", loc,
                        f"add train: {{data: {{dataset: digits}}}} or pass {names.given(data='train.npz')}")
    needed = needed_inputs(cm)
    dtypes = input_dtypes(cm)
    D.check_against_spec(train_ds, spec, needed, where, cm.index_bounds, dtypes, cm.length_bounds,
                         cm.least_sizes, cm.ignored_labels)
    _check_labelled_is_read(train_ds, spec, needed)
    train_ds = D.only(train_ds, needed)
    test = spec_test(spec)
    if isinstance(test, str):  # a held-out file: checked now (what eval reads), evaluated with flowgrad eval --data
        test_path = beside_spec(spec, test, "test")
        D.check_against_spec(load_spec_npz(spec, "test", test_path), spec,
                             needed_inputs(cm, ("eval",)), test_path, cm.index_bounds, dtypes, cm.length_bounds,
                             cm.least_sizes, cm.ignored_labels)
    # the errors name the one the user gave: --valid (valid=), or the spec's
    valid_name = opts.names("valid") if opts.valid is not None else "valid"
    given = opts.names.given(valid=opts.valid) if opts.valid is not None else f"valid {source['valid']}"
    _refuse_fractions_over_one(source["valid"], test, given, valid_name,  # (the spec's valid, or --valid's)
                               spec.locate("train", "data", "test") if "test" in cfg else loc)  # (at test, as check says)
    total = len(train_ds)
    valid_cfg = source["valid"]
    valid_ds = None
    if isinstance(valid_cfg, (str, dict)):  # a file, or arrays given in memory (D.IN_MEMORY)
        given = opts.valid if D.in_memory(opts.valid) else valid_cfg  # (a valid= file: as its absolute path)
        valid_ds, valid_where = D.load_given(given, valid_name, spec.inputs) if opts.valid is not None else \
            (load_spec_npz(spec, "valid", valid_cfg), valid_cfg)
        D.check_against_spec(valid_ds, spec, needed, valid_where, cm.index_bounds, dtypes, cm.length_bounds,
                         cm.least_sizes, cm.ignored_labels)
        valid_ds = D.only(valid_ds, needed)
        train_ds, _ = split_like_training(train_ds, spec, None, seed)
    else:
        train_ds, valid_ds = split_like_training(train_ds, spec, valid_cfg, seed)
    if not len(train_ds):
        raise DataError(f"no examples are left to train on: {where} holds {total} and the validation (and test) "
                        f"split took them all", loc, f"lower {valid_name} (or test), or use more data")
    _check_fits_the_step(train_ds, spec, cm, where)
    train_ds = D.cast_for(train_ds, dtypes)
    if valid_ds is not None:
        valid_ds = D.cast_for(valid_ds, dtypes)
    return train_ds, valid_ds


def _check_fits_the_step(ds: D.Dataset, spec: S.Spec, cm: CompiledModel, where) -> None:
    """A float16 mixed-precision step casts the float inputs it reads to float16: a value
    beyond 65504 becomes inf there, and every step of its batch overflows and is skipped (on a
    GPU; the CPU widens those casts away). Refused as --dtype float16 refuses it; validation,
    in float32, is not concerned."""
    if not any(o.mixed and o.mixed.compute == "float16" for o in cm.objectives):
        return
    for name, a in ds.arrays.items():
        decl = spec.inputs.get(name)
        if decl is not None and decl.dtype == "float32" and a.dtype.kind == "f":
            D.check_fits(a, "float16", D.array_named(where, name), decl.loc, " in the mixed-precision step",
                         "; or train with mixed_precision: bfloat16, which has float32's range")


def _check_labelled_is_read(ds: D.Dataset, spec: S.Spec, needed: list[str]) -> None:
    """labelled digits' K only reaches training through the has_label mask: a spec whose graphs
    read no has_label input (D.only drops the array) would train on every example's label,
    as if labelled were not there. Refused, as the datasets refuse other settings they would ignore."""
    k = (ds.meta or {}).get("labelled")
    if k is None or "has_label" in needed:
        return
    declared = "has_label" in spec.inputs
    raise DataError(f"dataset {ds.name!r}: labelled {k} keeps {k} labels through a has_label mask, but the spec "
                    f"{'declares has_label and never reads it' if declared else 'has no input has_label'}: "
                    "training would read every example's label", _labelled_loc(spec),
                    "weight the loss by has_label (input has_label: {shape: [N]}, as models/semisupervised.yaml "
                    "does), or drop labelled to train on every label")


def split_like_training(ds: D.Dataset, spec: S.Spec, valid: float | None, seed: int) -> tuple[D.Dataset, D.Dataset | None]:
    """(training examples, validation examples) of a run's data, as training splits it: a
    test fraction held out first, from its own shuffle (neither trained on nor validated on),
    then the validation fraction: a seeded sample; when train.shuffle is off (ordered data,
    streams) both are the last examples instead, the test ones last of all."""
    ds, _ = split_off_test(ds, spec, seed)
    if not valid:
        return ds, None
    if spec.train.get("shuffle", True):
        return D.split(ds, float(valid), seed, _labelled_loc(spec))
    return D.split_last(ds, float(valid), _labelled_loc(spec))


def _labelled_loc(spec: S.Spec):
    """Where a split that leaves fewer training examples than labelled digits' K points."""
    return spec.locate("train", "data", "options", "labelled")


def split_off_test(ds: D.Dataset, spec: S.Spec, seed: int) -> tuple[D.Dataset, D.Dataset | None]:
    """(the examples left, the test fraction train.data.test holds out of them or None)."""
    test = spec_test(spec)
    if isinstance(test, float) and test:
        if not spec.train.get("shuffle", True):  # ordered data (streams): a random sample would break the order
            return D.split_last(ds, test, _labelled_loc(spec))
        return D.split(ds, test, seed + TEST_SPLIT_SEED, _labelled_loc(spec))
    return ds, None


def held_out_test(spec: S.Spec, run_dir: str, info: dict, cm: CompiledModel,
                  names: ArgNames) -> tuple[D.Dataset, str]:
    """(the examples a run held out for testing, what they are): the file train.data.test
    names, or the fraction it split off before training, rebuilt from the data source and
    seed in run.json. The rebuilt training examples must hash as the run's did, or the
    split would be of other data. `names`: how the hints name the caller's arguments."""
    test = spec_test(spec)
    source = info.get("data_source") or {}
    hint = f"pass the test examples with {names.given(data='FILE.npz')}"
    if not test:
        raise DataError(f"{run_dir}: its spec holds out no test data (train.data.test)",
                        hint=f"{hint}, or train with train: {{data: {{test: 0.1}}}}")
    if isinstance(test, str):
        if "test" not in source:  # (a run.json written before runs recorded it)
            path = beside_spec(spec, test, "test")
            return load_spec_npz(spec, "test", path), path
        path = source["test"]  # where training read it: the run directory's spec.yaml is a copy, elsewhere
        if not os.path.exists(path):  # (its hint spoke of a relative path read beside that copy)
            raise DataError(f"test file {path!r} does not exist: {os.path.join(run_dir, 'run.json')} records it "
                            "as the training run's train.data.test", hint=f"{hint} (where the file is now)")
        return load_spec_npz(spec, "test", path), path
    seed = int(info.get("seed", 0))
    if "dataset" in source:
        ds, where = D.load_bundled(source["dataset"], source.get("options")), f"dataset {source['dataset']!r}"
    elif "path" in source:
        ds, where = D.load_npz(source["path"], None, spec.inputs), source["path"]
    elif source.get("arrays"):
        raise DataError(f"{run_dir} was trained on arrays given in memory, which its run.json does not hold: the "
                        f"test examples it held out of them (train.data.test {test}) cannot be rebuilt",
                        hint=hint if names.flags else f"{hint}, or as arrays, {names('data')}={{...}}")
    else:
        raise DataError(f"{run_dir}: its run.json does not say where its data came from", hint=hint)
    ds = D.only(ds, needed_inputs(cm))
    dtypes = input_dtypes(cm)
    D.check_against_spec(ds, spec, needed_inputs(cm), where, cm.index_bounds, dtypes, cm.length_bounds,
                         cm.least_sizes, cm.ignored_labels, trained=True)
    valid = source.get("valid")
    trained, _ = split_like_training(ds, spec, None if isinstance(valid, str) else valid, seed)
    if "data_hash" not in info:  # a run.json written before runs recorded it
        raise DataError(f"{run_dir}: its run.json does not record a hash of its training data, so its held-out "
                        "test examples cannot be rebuilt with certainty", hint=hint)
    if info.get("dtype") == cm.float_dtype and D.cast_for(trained, dtypes).fingerprint() != info["data_hash"]:
        changed = _bundled_dataset_changed(source, source)
        if changed:  # (the source is the run's own: only the generator can have changed)
            raise DataError(f"{changed}: the test examples {run_dir} held out cannot be rebuilt",
                            hint=f"{hint}, or start a new run from its weights with "
                                 f"{names.given(init_from=run_dir, run_dir='NEW_DIR')}")
        raise DataError(f"{where} has changed since {run_dir} was trained on it: its held-out test examples "
                        "cannot be rebuilt", hint=hint)
    _, held = split_off_test(ds, spec, seed)
    return held, f"the {len(held)} test examples held out of {where}"


def _refuse_fractions_over_one(valid, test, given: str, valid_name: str, loc) -> None:
    """valid takes its fraction of what test leaves: two fractions of 1 or more leave nothing to train on."""
    if isinstance(test, float) and test and isinstance(valid, float) and valid + test >= 1:
        raise DataError(f"{given} and test {test} must sum to less than 1 (they sum to "
                        f"{round(valid + test, 12):g})", loc,
                        f"test holds out its fraction of the data and {valid_name} its fraction of the rest; "
                        "lower one of them so that the two sum to less than 1")


def check_data_section(spec: S.Spec) -> None:
    """What train refuses in the spec's data section as written, before reading any data, for
    `flowgrad check` (train checks it against the flags it is given: --valid may replace the
    spec's valid, --data its dataset): a bundled dataset's unknown option or a value it refuses,
    and valid and test fractions that leave nothing to train on."""
    cfg = spec.train.get("data") or {}
    name, options = cfg.get("dataset"), cfg.get("options") or {}
    if name in D.BUNDLED and isinstance(options, dict):
        known = D.dataset_options(name)
        for key in options:
            if key not in known:
                raise DataError(f"dataset {name!r} has no option {key!r}", spec.locate("train", "data", "options", key),
                                did_you_mean(str(key), known) or f"options of {name}: {', '.join(known) or 'none'}")
        # and their values, as making the examples checks them (seq_len: 0 passed check, refused by train)
        D.load_bundled(name, options, spec.locate("train", "data"), check_only=True)
    if "valid" in cfg:
        valid = _fraction_or_path(cfg["valid"], "valid", spec.locate("train", "data", "valid"))
        _refuse_fractions_over_one(valid, spec_test(spec), f"valid {valid}", "valid", spec.locate("train", "data", "test"))


def spec_test(spec: S.Spec) -> float | str | None:
    """train.data.test: a fraction held out (a number, or a string that reads as one, as
    valid's) or the path of a file."""
    test = (spec.train.get("data") or {}).get("test")
    return _fraction_or_path(test, "test", spec.locate("train", "data", "test") if test is not None else None)


def _fraction_or_path(valid, what: str = "valid", loc=None):
    """--valid 0.1 (or 0: none) is a fraction of the training data; anything else a file."""
    if isinstance(valid, str):
        try:
            value = float(valid)
        except ValueError:
            return valid
    elif valid is None:
        return None
    elif isinstance(valid, (bool, np.bool_)) or not isinstance(valid, (int, float, np.integer, np.floating)):
        raise DataError(f"{what} {valid!r} is neither a fraction nor a path", loc, "give e.g. 0.2, or a path to an .npz")
    else:
        value = float(valid)
    if not 0.0 <= value < 1.0:  # (nan fails this too)
        e = DataError(f"{what} {valid} is not a fraction in [0, 1)", loc, "give e.g. 0.2, or a path to an .npz")
        e.exit_code = 2 if what.startswith("--") else 1  # a flag's value out of its range, as click's are
        raise e
    return value


def valid_batch_size(batch_size: int) -> int:
    """The batch size of validation: the training one, or 256 where that is larger."""
    return max(batch_size, 256)


def batches(ds: D.Dataset, batch_size: int, order: np.ndarray | None = None, start: int = 0, drop_last: bool = False,
            least: int = 1):
    """(position, batch) of `batch_size` examples each, the last one shorter unless `drop_last`;
    one shorter than `least` joins the batch before it (evaluation's batches, for a spec that
    slices the examples' dim: least_rows)."""
    n = len(ds)
    idx = np.arange(n) if order is None else order
    if drop_last:
        n -= n % batch_size
    for i in range(start, n, batch_size):
        end = n if n - (i + batch_size) < least else i + batch_size
        yield i, {k: np.ascontiguousarray(v[idx[i:end]]) for k, v in ds.arrays.items()}
        if end == n:
            break


def eval_batches(ds: D.Dataset, batch_size: int, least: int = 1):
    """Evaluation's batches, of `batch_size` examples and none shorter than `least` (least_rows):
    a short last one joins the batch before it."""
    return (b for _, b in batches(ds, max(batch_size, least), least=least))


def least_rows(spec: S.Spec, cm: CompiledModel) -> int:
    """The fewest examples a batch may have where the spec slices the examples' dim (x[1:]: 2), else 1."""
    return max([1] + [int(r["least"]) for r in examples_least_sizes(spec, cm).values() if isinstance(r.get("least"), int)])


def examples_least_sizes(spec: S.Spec, cm: CompiledModel) -> dict[str, dict]:
    """The least sizes (CompiledModel.least_sizes) of the dims that the examples' dim is in (N, N*T)."""
    from compiler.ir import dim_symbols

    examples = batch_dims(spec)
    return {d: r for d, r in cm.least_sizes.items() if set(dim_symbols(d)) & examples}


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


# ---------------------------------------------------------------- run directory
@contextlib.contextmanager
def run_lock(run_dir: str, names: ArgNames):
    """One training run per run directory, whether the other runs in another process or another thread."""
    import fcntl

    path = os.path.join(run_dir, ".lock")
    f = open(path, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise FlowgradError(f"another flowgrad run is training in {run_dir} (in this process or another)",
                            hint=f"wait for it to finish, or use {names('run_dir')} for a separate run") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _training_now(run_dir: str) -> bool:
    """Whether another run holds `run_dir`'s lock (it is training there and has not yet written
    its first checkpoint, say)."""
    import fcntl

    try:
        with open(os.path.join(run_dir, ".lock")) as f:  # (read-only: a run that is not there makes no file)
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


@contextlib.contextmanager
def _removed_if_left_empty(run_dir: str, fresh: bool):
    """A run directory this run made goes again if the run stops before writing anything into
    it (a bad --init-from, a spec that does not compile): no empty run is left to trip on."""
    try:
        yield
    except BaseException:
        if fresh and set(os.listdir(run_dir)) <= {".lock"}:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def run_dir_of(spec: S.Spec, opts: TrainOptions) -> str:
    return opts.run_dir or os.path.join("runs", spec.name)


def prepare_run_dir(spec: S.Spec, opts: TrainOptions) -> str:
    run_dir = run_dir_of(spec, opts)
    names = opts.names
    if os.path.lexists(run_dir) and not os.path.isdir(run_dir):
        # (os.makedirs said 'File exists', and the hint spoke of the parent folder; a resume said
        # there was no checkpoint in it, and to train without --resume first)
        what = "a symbolic link to nothing" if os.path.islink(run_dir) else "a file"
        raise FlowgradError(f"the run directory {run_dir} is {what}, not a directory",
                            hint=f"pick a new or empty directory with {names('run_dir')}")
    outer = enclosing_run(run_dir)
    if outer:  # (runs/mlp/graphs nested a new run among another run's graphs)
        raise FlowgradError(f"the run directory {run_dir} is inside the run {outer}",
                            hint=f"pick a directory outside other runs with {names('run_dir')}")
    ckpt, best = os.path.join(run_dir, CHECKPOINT), os.path.join(run_dir, BEST)
    # best.npz alone is a run too: one an earlier flowgrad stopped between the first epoch's two writes (best first)
    if (os.path.exists(ckpt) or os.path.exists(best)) and not opts.resume and not opts.overwrite:
        raise FlowgradError(f"{run_dir} already holds a run (its checkpoint would be lost)",
                            hint=f"continue it with {names.given(resume=True)}, start over with {names.given(overwrite=True)}, "
                                 f"or pick {names('run_dir')}")
    if opts.resume and not os.path.exists(ckpt) and _training_now(run_dir):
        # (it said there was nothing to resume and to train without resume first, which the lock then refused)
        raise FlowgradError(f"another flowgrad run is training in {run_dir} and has written no checkpoint yet",
                            hint=f"wait for it to finish, or use {names('run_dir')} for a separate run")
    if opts.resume and not os.path.exists(ckpt):
        raise FlowgradError(f"nothing to resume: no checkpoint in {run_dir}", hint=(
            f"{best} is a whole checkpoint of its epoch: copy it to {ckpt} and {names.given(resume=True)} to go on "
            "from there" if os.path.exists(best) else f"train without {names.given(resume=True)} first"))
    if os.path.isdir(run_dir) and not os.path.exists(os.path.join(run_dir, "run.json")) and not os.path.exists(ckpt):
        # not a run: files of these names are someone else's (a project's spec.yaml, say), and
        # the run would write over them
        theirs = sorted(set(os.listdir(run_dir)) & set(RUN_WRITES))
        if theirs:
            raise FlowgradError(f"{run_dir} is not a run directory, and training would replace its "
                                f"{', '.join(theirs)}",
                                hint=f"pick a new or empty directory with {names('run_dir')} (or one that flowgrad train wrote)")
    try:
        os.makedirs(run_dir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # (its hint spoke of the parent's permissions)
        raise FlowgradError(f"cannot create the run directory {run_dir}: a file is in the way",
                            hint=f"pick another with {names('run_dir')}") from None
    except OSError as e:
        raise FlowgradError(f"cannot create the run directory {run_dir}: {e.strerror}", hint=f"check that the parent folder exists and is writable, or pick another with {names('run_dir')}") from None
    if not os.access(run_dir, os.W_OK):
        raise FlowgradError(f"the run directory {run_dir} is not writable", hint=f"pick another with {names('run_dir')}")
    return run_dir


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


# ---------------------------------------------------------------- the loop
def train(spec: S.Spec, opts: TrainOptions, on_epoch=None) -> TrainResult:
    """Train, turning the file system's refusals (full disk, no permission) into a clean error."""
    try:
        return _train(spec, opts, on_epoch)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise FlowgradError(f"cannot write the run: {e.strerror or e}{where}",
                            hint=_unwritten_run_hint(run_dir_of(spec, opts), opts.names)
                            or "check the run directory's permissions and free space; the last checkpoint "
                               f"is intact, continue with {opts.names.given(resume=True)}") from None


def _train(spec: S.Spec, opts: TrainOptions, on_epoch=None) -> TrainResult:
    # (imported here: flowgrad check reads this module's check of the data section, and importing
    # onnxruntime for it was about 50 ms of every check)
    from .session import ORT_ERRORS, pick_device
    from .trainer import Trainer

    _check_options(opts)
    names = opts.names
    require_objectives(spec, "train")
    t_start = time.perf_counter()
    spec = spec.with_batch_size(opts.batch_size)  # the graphs' layout choices follow the batch trained with
    cfg = spec.train or {}
    seed = int(opts.seed if opts.seed is not None else cfg.get("seed", 0))
    if opts.accumulate > 1 and cfg.get("mixed_precision"):
        raise FlowgradError(f"{names('accumulate')} does not work with train.mixed_precision",
                            spec.locate("train", "mixed_precision"),  # (where the spec turns it on)
                            hint="its loss scaling needs each update's gradients in one step: leave out one of the two")
    if opts.resume and (opts.overwrite or opts.init_from):
        raise FlowgradError(f"{names.given(resume=True)} continues the run; it does not combine with "
                            f"{names.given(overwrite=True) if opts.overwrite else names('init_from')}",
                            hint=f"{names.given(overwrite=True)} or {names('init_from')} start a new run: leave out "
                                 f"{names.given(resume=True)}")
    if opts.steps_per_call > 1 and opts.accumulate > 1:
        raise FlowgradError(f"{names('steps_per_call')} does not work with {names('accumulate')}",
                            hint="an accumulated update already runs several batches per update: leave out one of the two")
    check_steps_per_call(spec, opts.steps_per_call, names)
    device = pick_device(opts.device, names=names)
    fresh = not os.path.exists(run_dir_of(spec, opts))
    run_dir = prepare_run_dir(spec, opts)
    # (the lock first: a run that finds another process training there removes nothing of its)
    with run_lock(run_dir, names), _removed_if_left_empty(run_dir, fresh):
        for directory in (run_dir, os.path.join(run_dir, "graphs")):  # of a process killed while writing
            remove_stale_temporaries(directory)
        ckpt_path = os.path.join(run_dir, CHECKPOINT)
        state, meta, warm_start = None, {}, None
        dtype = opts.dtype
        if opts.resume:  # read first: the run's seed orders and splits the data
            state, meta = load_checkpoint(ckpt_path, names, "resume")
            # what the run was trained on and in: without it, the checks below could not refuse a
            # resume on other data or in another float type
            info = read_run_info(run_dir, hint="a resume reads the run's data and float type from it: restore it, "
                                               "or start a new run from its weights with "
                                               f"{names.given(init_from=run_dir, run_dir='NEW_DIR')}")
            _check_same_model(spec, run_dir, info, names)
            _check_arrays_given_again(run_dir, info, opts, names)
            seed = _resumed_seed(meta, opts.seed, seed, ckpt_path, names)
            dtype = _resumed_dtype(info, opts.dtype, ckpt_path, run_dir, names)
            # the records of the epochs it covers: from metrics.jsonl (an earlier flowgrad's
            # checkpoint carries them itself), read before anything of the run is written
            meta = {**meta, "history": _resumed_history(run_dir, meta, ckpt_path, names)}
        cm = compile_spec(spec, dtype, frozen=opts.freeze, names=names)
        train_ds, valid_ds = load_data(spec, cm, opts, seed)
        streams = (train_ds.meta or {}).get("streams")
        if streams and (spec.batch_size != streams or cfg.get("shuffle", True)):
            # rows w*B + b continue rows (w-1)*B + b: only unshuffled batches of B rows do so
            raise DataError(f"the data is laid out as {streams} text streams: train it with batch_size {streams} "
                            f"and shuffle: false (got batch_size {spec.batch_size}, shuffle "
                            f"{str(cfg.get('shuffle', True)).lower()})", spec.locate("train", "data"),
                            "each batch row carries its state into the same row of the next batch")
        if streams and len(train_ds) % streams and not cfg.get("drop_last"):
            # the carried state has `streams` rows: a short last batch fails in the graph, an epoch in
            raise DataError(f"the data is laid out as {streams} text streams, and the {len(train_ds)} training rows "
                            f"end an epoch with a batch of {len(train_ds) % streams}: the carried state needs "
                            f"{streams} rows", spec.locate("train", "drop_last") if "drop_last" in cfg
                            else spec.locate("train"), "add drop_last: true to the train section")
        _check_stateful_batches(spec, cm, len(train_ds))
        _check_batch_statistics(spec, cm, len(train_ds), names, batch_given=opts.batch_size is not None)
        mixed = any(o.mixed for o in cm.objectives)
        mixed_type = next((o.mixed.compute for o in cm.objectives if o.mixed), None)  # (a hint names it)
        batch_size = spec.batch_size
        n_batches = len(train_ds) // batch_size if cfg.get("drop_last") else -(-len(train_ds) // batch_size)
        if not n_batches:
            raise DataError(f"drop_last leaves no batch: {len(train_ds)} training examples, batch size {batch_size}",
                            spec.locate("train", "drop_last"), "lower the batch size, or leave out drop_last")
        _check_batch_slices(spec, cm, train_ds, valid_ds, names, batch_given=opts.batch_size is not None)
        steps_per_epoch = -(-n_batches // opts.accumulate)  # an epoch's last update may take fewer batches
        epochs = opts.epochs or cfg.get("epochs")
        max_steps = opts.steps or cfg.get("steps")
        if not epochs and not max_steps:
            epochs = 10
        # with both limits the first one reached ends the run, and the lr schedule plans for it
        total_steps = min(max_steps, epochs * steps_per_epoch) if max_steps and epochs else \
            max_steps or epochs * steps_per_epoch
        length = f"{total_steps} optimizer step{'s' if total_steps > 1 else ''}" + (
            f" ({epochs} epoch{'s' if epochs > 1 else ''} of {steps_per_epoch})"
            if epochs and total_steps == epochs * steps_per_epoch else "")
        check_schedule_fits(spec, total_steps, length, steps_per_epoch)
        _check_every_fits(spec, cm, total_steps, length, steps_per_epoch)
        epochs = epochs or -(-total_steps // steps_per_epoch)

        trained = {o.name: trained_names(cm.params, o) for o in cm.objectives}
        optimizers = {o.name: o.optimizer.name for o in cm.objectives}
        every = {o.name: o.every for o in cm.objectives}
        if opts.resume:
            _check_same_optimizers(meta.get("optimizers"), optimizers, ckpt_path, run_dir, names)
            _check_same_every(meta, every, spec, ckpt_path, run_dir, names)
            # before the shapes: another --freeze also resizes the flat optimizer state, which
            # _check_state would blame on a changed spec (a parameter the checkpoint lacks is one)
            if "trained" in meta and meta["trained"] != trained and all(p in state for p in cm.params) \
                    and not _reorder_optimizer_state(cm, state, meta["trained"], trained):
                # the optimizer's flat state vectors follow the trained parameters, in order
                raise DataError(f"{ckpt_path} was written training other parameters than this run would "
                                f"({_difference(meta['trained'], trained)})",
                                hint=f"resume with the run's own {names('freeze')} (and spec), or start over with "
                                     f"{names.given(overwrite=True)} or {names('init_from')}")
            _check_same_optimizer_state(cm, state, seed, ckpt_path, run_dir, names)
            _check_state(cm, state, ckpt_path, seed, names)
            _check_vocabulary(run_dir, train_ds.meta, f"{names.given(resume=True)} {run_dir}", names)
            _check_same_batches(meta, {"batch_size": batch_size, "accumulate": opts.accumulate}, ckpt_path, run_dir,
                                names, batch_given=opts.batch_size is not None)
            given = {"data": opts.data, "valid": opts.valid}  # (as the user gave them: --valid 0, not 0.0)
            _check_same_examples(run_dir, info, train_ds, cm.float_dtype, names, data_source(spec, opts), given)
            _check_same_validation(run_dir, info, meta, valid_ds, cm.float_dtype, names, data_source(spec, opts),
                                   given["valid"])
        elif opts.init_from:
            state, warm_start = _warm_start(cm, opts.init_from, seed, names)
            _check_vocabulary(opts.init_from, train_ds.meta, names.given(init_from=opts.init_from), names,
                              warm_start=True)
        # now, not after an epoch: an --overwrite has not yet removed the run it replaces
        plateau_cfg = (cfg.get("lr_schedule") or {}).get("plateau")
        if plateau_cfg:
            _check_plateau_validated(spec, valid_ds is not None, names)
        check_watched_metrics(spec, cm, valid_ds is not None)
        trainer = Trainer(cm, device, opts.threads, state, seed, cuda_graphs=opts.cuda_graphs)
        _write_run_files(spec, cm, run_dir, device, seed, opts, train_ds, valid_ds, resumed=bool(meta),
                         warm_start=warm_start)

        # a plateau schedule's rates: those its epochs' records leave (replayed below, once the
        # records a resume goes on from are known)
        plateau = Plateau(plateau_cfg, metric_mode(plateau_cfg, cm), {o.name: o.optimizer.hp["lr"] for o in cm.objectives}) \
            if plateau_cfg else None
        schedules = {o.name: lr_schedule(o.optimizer.hp["lr"], cfg.get("lr_schedule"), total_steps, steps_per_epoch,
                                         **({"rate": lambda name=o.name: plateau.lrs[name]} if plateau else {}))
                     for o in cm.objectives}
        partial = meta.get("partial")
        kept_best = os.path.join(run_dir, BEST_BEFORE_PARTIAL)
        resumes_partial = bool(partial) and int(meta.get("step", 0)) < total_steps
        if resumes_partial:
            # a run that its step limit stopped mid-epoch, resumed with a larger one: the epoch goes
            # on from where the steps stopped, and its record (of part of the epoch) is made anew
            meta = {**meta, **partial, "history": list(meta.get("history", []))[:-1]}
            if os.path.exists(kept_best):
                os.replace(kept_best, os.path.join(run_dir, BEST))
        elif not partial and os.path.exists(kept_best):
            # left by a run killed between keeping the best aside and the checkpoint that records its
            # partial epoch: no checkpoint waits for it, and a later partial epoch must not take it.
            # Killed after that epoch's best.npz was written, best.npz holds weights that the
            # checkpoint's best record does not name, and the copy those it does: it goes back.
            named = (meta.get("best") or {}).get("step")
            if named is not None and _written_at(kept_best) == named != _written_at(os.path.join(run_dir, BEST)):
                os.replace(kept_best, os.path.join(run_dir, BEST))
            else:
                os.remove(kept_best)
        if meta and not resumes_partial and holds_its_best(meta) and _written_at(os.path.join(run_dir, BEST)) != meta["step"]:
            # best.npz is written after the checkpoint of its epoch: a run stopped between the two (or
            # whose best.npz found the disk full) left the best before it, and the checkpoint holds
            # the best's weights. (best.npz went first, and a stop between them left it of an epoch
            # that the checkpoint and metrics.jsonl do not cover: kept by a resume that did not redo it.)
            with open(ckpt_path, "rb") as f:
                atomic_write(os.path.join(run_dir, BEST), f.read(), names=names)
        step = int(meta.get("step", 0))
        overflows = int(meta.get("overflows", 0))  # mixed precision's overflowed steps in a row, across a resume
        epoch = int(meta.get("epoch", 0))
        position = int(meta.get("position", 0))
        history = list(meta.get("history", []))
        best = dict(meta.get("best", {}))
        bad_epochs = int(meta.get("bad_epochs", 0))
        if plateau:
            plateau.replay(history)
        stopping = cfg.get("early_stopping")
        stopped = "finished"
        if stopping and history and bad_epochs >= int(stopping.get("patience", 5)):
            # resuming a run that early stopping ended: it stays ended (a larger patience goes on)
            stopped = f"early stopping: {stopping['metric']} did not improve for {bad_epochs} epoch{'s' if bad_epochs != 1 else ''}"
        elif meta and (epoch >= epochs or step >= total_steps):
            # (it said 'finished after 3 epochs' to a resume with --epochs 1, as if it had trained)
            stopped = (f"nothing more to train (this resume's limit of {total_steps} step{'s' if total_steps != 1 else ''} "
                       "was reached before it)")

        def checkpoint(pos, also_best=False, partial=None, record=None):
            state = trainer.state_numpy()
            # never replace a good checkpoint with NaNs; at an epoch's end (pos 0) `epoch` already counts
            # the epoch just ended, which the message names (it named the next one)
            _check_state_finite(state, step, epoch - 1 if pos == 0 else epoch, run_dir, names)
            # The epochs' records are metrics.jsonl's lines, not the checkpoint's: it holds how many it
            # covers ("records"), which a resume cuts metrics.jsonl back to. (The whole history in each
            # checkpoint made a run of many epochs write bytes in the square of their number.)
            data = checkpoint_bytes(state, {
                "step": step, "epoch": epoch, "position": pos, "records": len(history), "best": best,
                "bad_epochs": bad_epochs, "seed": seed, "names": sorted(trainer.state), "trained": trained,
                "optimizers": optimizers, "every": every, "batch_size": batch_size, "accumulate": opts.accumulate,
                "overflows": overflows,
                # mid-epoch: the running sums of the epoch's metrics, so that a resumed epoch reports the same
                "epoch_sums": sums if pos else {}, "epoch_count": count if pos else 0, "epoch_rows": rows if pos else {},
                **({"partial": partial} if partial else {})})
            if also_best and partial and os.path.exists(os.path.join(run_dir, BEST)):
                # whole or not at all, before the checkpoint that a resume renames this copy back for
                with open(os.path.join(run_dir, BEST), "rb") as f:
                    atomic_write(os.path.join(run_dir, BEST_BEFORE_PARTIAL), f.read(), names=names)
            # the epoch's line before the checkpoints that cover it, synced
            lines_end = _append_metrics(run_dir, record) if record is not None else None
            try:
                atomic_write(ckpt_path, data, hint=_unwritten_run_hint(run_dir, names), names=names)
            except FlowgradError:
                # not written (a full disk): the line goes again, so that metrics.jsonl, which plot curves
                # draws, ends where the checkpoint does (cutting a file back needs no space)
                if lines_end is not None:
                    with contextlib.suppress(OSError):
                        os.truncate(os.path.join(run_dir, "metrics.jsonl"), lines_end)
                raise
            if also_best:  # after it: stopped between the two, the checkpoint holds the best, which a resume copies
                atomic_write(os.path.join(run_dir, BEST), data, hint=_unwritten_run_hint(run_dir, names), names=names)

        if resumes_partial:
            # The partial epoch's checkpoint covers its record, which metrics.jsonl is cut back past:
            # first the checkpoint of where the epoch goes on from (a mid-epoch one, without that
            # record), so that a resume stopped before its next checkpoint finds the lines that the
            # run's checkpoint covers. (It found one line too few, and was refused for good.)
            sums, count = dict(meta.get("epoch_sums", {})), int(meta.get("epoch_count", 0))
            rows = dict(meta.get("epoch_rows") or {k: count for k in sums})
            checkpoint(position)
        _rewrite_metrics(run_dir, history, names)

        # where an epoch's batches end: drop_last leaves out the short remainder
        epoch_end = len(train_ds) - (len(train_ds) % batch_size if cfg.get("drop_last") else 0)
        progress = _Progress(opts.progress, epochs, steps_per_epoch)
        with progress:
            while epoch < epochs and step < total_steps and stopped == "finished":
                order = epoch_order(seed, epoch, len(train_ds)) if cfg.get("shuffle", True) else None
                if not position:  # (the last batch's state, from the end of each stream, started its beginning)
                    trainer.set_carried({k: np.zeros_like(v) for k, v in trainer.carried().items()})
                # resumed mid-epoch: go on with the epoch's running sums from the checkpoint
                sums, count = (dict(meta.get("epoch_sums", {})), int(meta.get("epoch_count", 0))) if position else ({}, 0)
                # the rows behind each sum: an objective's steps that overflowed in mixed precision book nothing
                rows = dict(meta.get("epoch_rows") or {k: count for k in sums}) if position else {}
                t_epoch = time.perf_counter()
                progress.start_epoch(epoch, position // (batch_size * opts.accumulate))
                reached = position  # the data position after the last step
                group: list = []  # the batches of one update (--accumulate)
                pending: list = []  # (position after it, batch) of the steps of one call (--steps-per-call)

                def finish_step(name, scalars, n) -> None:
                    """Book one step's results (none when it overflowed in mixed precision)."""
                    nonlocal overflows
                    if mixed and np.isnan(scalars.get("loss", 0.0)):
                        # the step's gradients overflowed in float16 (the graph then reports a NaN
                        # loss): it changed nothing but the loss scale. An inf loss of a step kept
                        # is no overflow: the update was made, and _check_finite stops the run.
                        overflows += 1
                        if overflows >= MAX_OVERFLOWS:
                            raise FlowgradError(
                                f"every training step overflowed for {overflows} steps in mixed precision "
                                f"(step {step}, epoch {epoch + 1}); training stopped",
                                hint=f"the model's values exceed {mixed_type}'s range even unscaled; train without "
                                     f"mixed_precision, or lower the learning rate; checkpoints are in {run_dir}")
                        return
                    overflows = 0
                    _check_finite(scalars, step, epoch, run_dir, names)
                    for k, v in scalars.items():
                        key = k if len(cm.schedule) == 1 else f"{name}/{k}"
                        sums[key] = sums.get(key, 0.0) + v * n
                        rows[key] = rows.get(key, 0) + n

                def end_step(n, next_pos) -> bool:
                    """Count one step; True when training has reached its last step."""
                    nonlocal count, step, reached
                    count += n
                    step += 1
                    reached = next_pos
                    progress.advance({k: v / rows[k] for k, v in sums.items()}, count / max(time.perf_counter() - t_epoch, 1e-9))
                    if opts.checkpoint_every and step % opts.checkpoint_every == 0 and next_pos < len(train_ds):
                        checkpoint(next_pos)
                    return step >= total_steps

                def run_pending() -> bool:
                    """The pending steps in one session call (a lone step as a plain step)."""
                    name = cm.schedule[0]
                    batches_ = [b for _, b in pending]
                    try:
                        if len(pending) == 1:
                            results = [trainer.train_step(name, batches_[0], schedules[name](step), step)]
                        else:
                            results = trainer.train_steps(name, batches_, [schedules[name](step + i)
                                                                           for i in range(len(pending))], step)
                    except ORT_ERRORS as ex:
                        steps = f"step {step}" if len(pending) == 1 else f"steps {step}-{step + len(pending) - 1}"
                        raise _step_failed(ex, f"training {steps} (epoch {epoch + 1})", run_dir, cm.float_dtype) from None
                    done = False
                    for (next_pos, b), scalars in zip(pending, results):
                        finish_step(name, scalars, _rows(b))
                        done = end_step(_rows(b), next_pos)
                    pending.clear()
                    return done

                for pos, batch in batches(train_ds, batch_size, order, position, bool(cfg.get("drop_last", False))):
                    next_pos = pos + batch_size
                    if opts.steps_per_call > 1:
                        if pending and _shapes(pending[0][1]) != _shapes(batch) and run_pending():
                            break  # a short last batch does not stack with the others
                        pending.append((next_pos, batch))
                        ahead = step + len(pending)
                        if (len(pending) == opts.steps_per_call or next_pos >= epoch_end or ahead >= total_steps
                                or (opts.checkpoint_every and ahead % opts.checkpoint_every == 0)) and run_pending():
                            break
                        continue
                    group.append(batch)
                    if len(group) < opts.accumulate and next_pos < epoch_end:  # an epoch's last update may take fewer
                        continue
                    n = sum(_rows(b) for b in group)
                    # Several objectives each run the batch: each starts its stateful layers and scans
                    # from the states the batch before ended with (the objective before must not move
                    # them on by a batch), and the last one to run them carries its states to the next.
                    carried = trainer.carried() if len(cm.schedule) > 1 else {}
                    ended = {}
                    for name in cm.schedule:
                        objective = trainer.objectives[name]
                        if not objective.runs_at(step):  # (every: K, at the K-th update, the 2K-th, ...)
                            continue
                        if carried and name != cm.schedule[0]:
                            trainer.set_carried(carried)
                        lr = schedules[name](step)  # (where the run is: a schedule ends with the run)
                        own = objective.own_step(step)
                        try:
                            if opts.accumulate > 1:
                                scalars = trainer.accumulate_step(name, group, lr, own)
                            else:
                                scalars = trainer.train_step(name, group[0], lr, own)
                        except ORT_ERRORS as ex:
                            raise _step_failed(ex, f"training step {step} (epoch {epoch + 1})", run_dir, cm.float_dtype) from None
                        finish_step(name, scalars, n)
                        if carried:
                            moved = trainer.carried_by(name, opts.accumulate > 1)
                            ended.update({k: v for k, v in trainer.carried().items() if k in moved})
                    if carried:
                        trainer.set_carried({**carried, **ended})
                    group = []
                    if end_step(n, next_pos):
                        break
                if pending:
                    run_pending()
                position = 0
                partial = None
                if step >= total_steps and reached < epoch_end:  # the step limit stopped the run mid-epoch
                    # what a resume with a larger limit goes on from (this record is then redone)
                    partial = {"epoch": epoch, "position": reached, "epoch_sums": dict(sums), "epoch_count": count,
                               "epoch_rows": dict(rows), "best": dict(best), "bad_epochs": bad_epochs}
                # a partial epoch's record says so (plot curves marks it: it was drawn as a whole epoch)
                record = {"epoch": epoch + 1, "step": step, **({"partial": True} if partial else {}),
                          **{f"train_{k}": v / rows[k] for k, v in sums.items()}}
                # the learning rate of the epoch's last update (each objective's, with several)
                lrs = {"lr" if len(schedules) == 1 else f"{name}/lr": schedules[name](step - 1)
                       for name in dict.fromkeys(cm.schedule)}
                if valid_ds is not None:
                    try:
                        record.update({f"valid_{k}": v for k, v in trainer.evaluate(
                            eval_batches(valid_ds, valid_batch_size(batch_size), least_rows(spec, cm))).items()})
                    except ORT_ERRORS as ex:
                        raise _step_failed(ex, f"validation after epoch {epoch + 1}", run_dir, cm.float_dtype) from None
                record.update(lrs)
                record["seconds"] = round(time.perf_counter() - t_start, 3)
                epoch += 1
                # "best" follows the early-stopping metric, else the validation (or training) loss: its
                # lowest, or its highest where the optimizers maximize it
                # (the watched metric was checked before training, against what the run reports: an
                # epoch may lack it, where an objective of every: K or every overflowed step booked none)
                key = stopping["metric"] if stopping else ("valid_loss" if "valid_loss" in record else "train_loss")
                mode = metric_mode(stopping, cm)
                # NaN compares false with everything: a NaN record is never better, and any number
                # beats a NaN best (else a NaN first epoch stayed the best for good). A record without
                # the key counts as NaN where the other has it: a mixed-precision epoch whose every
                # step overflowed books no train_loss. Where neither has it (a GAN's train_loss), the
                # last epoch is the best.
                value, held = record.get(key, math.nan), best.get(key, math.nan)
                improved = not best or key not in record and key not in best or not np.isnan(value) and (
                    np.isnan(held) or improves(value, held, mode))
                bad_epochs = 0 if improved else bad_epochs + 1
                if improved:
                    best = dict(record)
                history.append(record)
                if plateau and not partial:  # the next epoch's rate (a partial epoch's record is redone)
                    plateau.step(record.get(plateau.metric))
                checkpoint(0, also_best=improved, partial=partial, record=record)
                progress.end_epoch(record)
                if on_epoch:
                    on_epoch(record)
                if stopping and bad_epochs >= int(stopping.get("patience", 5)):
                    stopped = f"early stopping: {stopping['metric']} did not improve for {bad_epochs} epoch{'s' if bad_epochs != 1 else ''}"
        result = TrainResult(run_dir, device, step, epoch, time.perf_counter() - t_start,
                             history[-1] if history else {}, best, history, stopped, warm_start)
        atomic_write(os.path.join(run_dir, "result.json"), jsontext.dumps(result.to_json(), indent=2).encode(), names=names)
        return result


def reported_names(cm: CompiledModel, validated: bool) -> list[str]:
    """The numbers an epoch's record reports: each objective's training loss and metrics (named
    by objective where there are several), and with validation data the eval graph's."""
    names = []
    for name in dict.fromkeys(cm.schedule):
        graph = cm.graphs["train" if name == "main" else f"train_{name}"]
        names += [f"train_{o.name if len(cm.schedule) == 1 else f'{name}/{o.name}'}"
                  for o in graph.outputs if o.role in ("loss", "metric")]
    if validated and "eval" in cm.graphs:
        names += [f"valid_{o.name}" for o in cm.graphs["eval"].outputs if o.role in ("loss", "metric")]
    return names


# The train sections that watch a metric of the epochs' records, each with a metric and a mode
# (early_stopping, lr_schedule: {plateau: ...}): named, and its direction decided, alike.
WATCHING = (("early_stopping",), ("lr_schedule", "plateau"))


def check_watched_metrics(spec: S.Spec, cm: CompiledModel | None, validated: bool, dtype: str | None = None) -> None:
    """Each metric a train section watches (early_stopping, a plateau schedule) is reported and its
    direction known (check_watched_metric). `cm` None: compiled here, in `dtype` (check's --dtype;
    None: the spec's), only if a section watches one (flowgrad check, which leaves the graphs
    uncompiled otherwise)."""
    sections = [section for section in WATCHING if _in_train(spec, section)]
    if sections and cm is None:
        cm = compile_spec(spec, dtype, graphs=("train", "eval"))
    for section in sections:
        check_watched_metric(spec, section, reported_names(cm, validated))


def _in_train(spec: S.Spec, section: tuple[str, ...]) -> dict | None:
    """train.<section> of the spec (early_stopping, lr_schedule.plateau), None where it has none."""
    node = spec.train or {}
    for key in section:
        node = node.get(key) if isinstance(node, dict) else None
    return node or None


def metric_mode(watching: dict | None, cm: CompiledModel) -> str:
    """min or max: a watching section's mode, else the loss's (check_watched_metric refuses a
    metric whose direction is not a loss's without a mode)."""
    return (watching or {}).get("mode") or loss_mode(cm, (watching or {}).get("metric"))


def loss_mode(cm: CompiledModel, metric=None) -> str:
    """Which way a loss improves: down, but up where every objective's optimizer maximizes it
    (its best epoch, best.npz, is its highest); a metric naming one objective's loss
    (valid_generator/loss) goes that objective's way."""
    named = [o for o in cm.objectives if metric is not None and str(metric).endswith(f"_{o.name}/loss")]
    objectives = named or cm.objectives
    return "max" if objectives and all(o.optimizer.hp.get("maximize") for o in objectives) else "min"


def check_watched_metric(spec: S.Spec, section: tuple[str, ...], reported: list[str]) -> None:
    """The metric that train.<section> watches is reported, and whether larger or smaller is
    better is known: its mode, or min for a loss. The metric first: a misspelt one (valid_acuracy)
    was asked for its mode, and refused as not reported only once the user had added one."""
    watching = _in_train(spec, section)
    metric = watching["metric"]
    what = ".".join(section)
    unsure = "mode" not in watching and "loss" not in str(metric)  # (only a loss has a default: its optimizers' direction)
    if metric not in reported:
        close = did_you_mean(str(metric), reported)
        raise FlowgradError(f"{what} metric {metric!r} is not reported",
                            spec.locate("train", *section, "metric"),
                            (f"{close} (reported: {', '.join(reported)})" if close else f"reported: {', '.join(reported)}")
                            + ("; and add mode: max or mode: min" if unsure else ""))
    if unsure:
        raise SpecError(f"{what}: is a larger or a smaller {metric} better?",
                        spec.locate("train", *section, "metric"),
                        "add mode: max (accuracy, say) or mode: min; only a loss defaults (to min, or max where its optimizers maximize)")


def _check_plateau_validated(spec: S.Spec, validated: bool, names: ArgNames) -> None:
    """A plateau schedule steps with a validation metric at each epoch's end: a run without
    validation data has none to step with (refused before anything of the run is written)."""
    if validated:
        return
    metric = spec.train["lr_schedule"]["plateau"]["metric"]
    raise FlowgradError(f"train.lr_schedule.plateau watches {metric}, but this run has no validation data",
                        spec.locate("train", "lr_schedule", "plateau", "metric"),
                        f"hold out validation examples: add valid: 0.1 (a fraction, or an .npz file) under "
                        f"train.data, or pass {names.given(valid='0.1')}")


def _check_stateful_batches(spec: S.Spec, cm: CompiledModel, rows: int) -> None:
    """A stateful layer or scan starts each batch row from the state the same row of the batch
    before ended with: shuffled batches gave it another sequence's state (it trained without a
    word), and an epoch's short last batch failed in onnxruntime's Reshape of the carried state,
    after a whole epoch of training, with a hint about class ids."""
    cfg = spec.train
    stateful = sorted({k.rsplit(".", 1)[0] for k, p in cm.params.items() if p.carried})
    if not stateful:
        return
    which = (f"stateful entries {', '.join(repr(s) for s in stateful)} carry" if len(stateful) > 1
             else f"stateful entry {stateful[0]!r} carries")
    if cfg.get("shuffle", True):
        raise DataError(f"the {which} each batch row's state into the same row of the next batch, but "
                        "the training data is shuffled: each row would start from another sequence's state",
                        spec.locate("train", "shuffle") if "shuffle" in cfg else spec.locate("train"),
                        "add shuffle: false to the train section, with data whose batches continue each other "
                        "(the text dataset's streams option lays text out so), or drop stateful=")
    B = spec.batch_size
    if rows % B and not cfg.get("drop_last"):
        raise DataError(f"the {which} a state of {B} rows (the batch size), and the {rows} training rows "
                        f"end an epoch with a batch of {rows % B}", spec.locate("train", "drop_last")
                        if "drop_last" in cfg else spec.locate("train"), "add drop_last: true to the train section")


def _check_batch_statistics(spec: S.Spec, cm: CompiledModel, rows: int, names: ArgNames,
                            batch_given: bool = False) -> None:
    """A training batch of one example leaves a batch_norm over [N, C] one value per channel: no
    variance to normalise by, and an unbiased one of 0 / 0 for its running average. PyTorch refuses
    such a batch; here the running variance became NaN, and the run stopped at the end of the epoch
    saying to lower the learning rate. So data whose batches include one of a single example (a
    batch size of 1, or an epoch's short last batch) is refused before training, at the batch_norm."""
    examples = batch_dims(spec)
    found = [(dim, loc) for kind, g in cm.graphs.items() if kind.startswith("train")
             for dim, loc in g.batch_statistics if dim in examples]
    if not found:
        return
    B, drop_last = spec.batch_size, bool(spec.train.get("drop_last"))
    # the batch size as it was given (--batch-size 1 was told 'batch_size 1')
    given = names.given(batch_size=B) if batch_given else \
        f"train.batch_size {B}" + ("" if "batch_size" in spec.train else ", its default")
    where = names("batch_size") if batch_given else "train.batch_size"
    if B == 1 and rows >= 1:
        what = f"{given} gives batches of one example"
    elif rows % B == 1 and not drop_last:
        what = f"the {rows} training examples end an epoch with a batch of one ({given})"
    else:
        return
    dim, loc = found[0]
    raise DataError(f"batch_norm normalises each channel by its statistics over the batch ({dim}), and {what}: "
                    "one value per channel has no variance, and the running variance would become NaN", loc,
                    f"add drop_last: true to the train section, or use a batch size ({where}) that leaves no batch "
                    "of one" if B > 1 else f"use a batch size ({where}) of 2 or more")


def _check_batch_slices(spec: S.Spec, cm: CompiledModel, train_ds: D.Dataset, valid_ds: D.Dataset | None,
                        names: ArgNames, batch_given: bool = False) -> None:
    """A slice of the examples' dim (x[1:], or r[-2:] of r: reshape(x, [-1, 3])) holds for a batch
    of enough rows: a shorter one (a batch size below that, an epoch's short last batch) was
    computed on fewer rows than the graph's shape says, without a word. Refused before training,
    at the slice. (Validation's batches take a short last one into the batch before it.)"""
    least = examples_least_sizes(spec, cm)
    if not least:
        return
    examples = batch_dims(spec)
    B, drop_last, rows = spec.batch_size, bool(spec.train.get("drop_last")), len(train_ds)
    given = names.given(batch_size=B) if batch_given else \
        f"train.batch_size {B}" + ("" if "batch_size" in spec.train else ", its default")
    where = names("batch_size") if batch_given else "train.batch_size"
    axis = " or ".join(sorted(examples))
    shapes = {k: spec.inputs[k].shape for k in train_ds.arrays if k in spec.inputs}
    others = {k: v for k, v in D.dim_sizes(train_ds.arrays, shapes, "the training data").items() if k not in examples}
    smallest = B if drop_last or not rows % B else rows % B
    what = f"a batch of {given}" if smallest == B else f"the last batch of the {rows} training examples ({given})"
    D.check_least_sizes(least, {**{d: (smallest, what) for d in examples}, **others},
                        (f"use a larger batch size ({where})" if smallest == B else
                         f"add drop_last: true to the train section, or use a batch size ({where}) that leaves no "
                         "shorter batch") + f", or do not slice the examples' dim {axis}")
    if valid_ds is not None and len(valid_ds):
        n = len(valid_ds)
        smallest = min(n, max(valid_batch_size(B), least_rows(spec, cm)))  # (eval_batches')
        D.check_least_sizes(least, {**{d: (smallest, f"the {n} validation examples") for d in examples}, **others},
                            f"hold out more validation examples, or do not slice the examples' dim {axis}")


def _check_every_fits(spec: S.Spec, cm: CompiledModel, total_steps: int, length: str, steps_per_epoch: int) -> None:
    """An objective of every: K steps at least once an epoch, so that each epoch's record has its
    numbers, and so at least once in the run."""
    for o in cm.objectives:
        loc = spec.locate("train", "objectives", o.name, "every") if o.every > 1 else None
        if o.every > total_steps:
            raise FlowgradError(f"objective {o.name!r} takes a step every {o.every} updates, but the run makes "
                                f"{length}: it would never train", loc,
                                f"lower every to at most {total_steps}, or train for more steps")
        if o.every > steps_per_epoch:
            raise FlowgradError(f"objective {o.name!r} takes a step every {o.every} updates, but an epoch makes "
                                f"{steps_per_epoch}: epochs would pass without its step, and record none of its numbers",
                                loc, f"lower every to at most {steps_per_epoch}, or make more updates an epoch "
                                     "(a smaller batch_size)")


def check_steps_per_call(spec: S.Spec, steps_per_call: int, names: ArgNames) -> None:
    """Several steps per call run one objective's step graph in a Loop: a schedule of several
    objectives alternates their steps, one call each (training and bench alike)."""
    if steps_per_call > 1 and len(schedule_of(spec)) > 1:
        cfg = spec.train or {}
        raise FlowgradError(
            f"{names('steps_per_call')} does not work with a schedule of several objectives "
            f"({', '.join(schedule_of(spec))})",
            spec.locate("train", "schedule") if "schedule" in cfg else spec.locate("train", "objectives"),
            f"their steps alternate, one call each: leave out {names('steps_per_call')}")


def _check_options(opts: TrainOptions) -> None:
    """The options the CLI bounds, bounded the same way when they come through the API (an
    epochs=0 trained the spec's epochs, a negative batch size or epoch count trained nothing).
    Paths come back as str (a pathlib.Path is one), counts as int (a NumPy integer is one: run.json
    and the checkpoint's record of threads=np.int64(1) or accumulate=np.int64(2) were json's
    TypeError); data and valid may be arrays in memory instead (a mapping), read and checked with
    the spec as a file is."""
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    for name, least in (("epochs", 1), ("steps", 1), ("batch_size", 1), ("checkpoint_every", 0), ("accumulate", 1),
                        ("steps_per_call", 1)):
        value = check_count(name, getattr(opts, name), least, has_default=name != "checkpoint_every")
        # None is the option left out, as the hint to a bad value says (accumulate=None was a TypeError)
        setattr(opts, name, defaults[name] if value is None else value)
    opts.threads = check_count("threads", opts.threads, most=MAX_THREADS)
    for name in ("run_dir", "init_from"):
        setattr(opts, name, check_path(name, getattr(opts, name)))
    opts.data = D.data_argument("data", opts.data)
    if not isinstance(opts.valid, (int, float, np.integer, np.floating)):  # (a fraction, checked with the spec's)
        opts.valid = D.data_argument("valid", opts.valid)
    # named as the caller gave them, valid= or --valid (a missing valid= file was a 'data file',
    # and its hint spoke of --data); only valid may be a fraction: data="1.5" was "not a fraction",
    # data="0.5" went unchecked
    data_file = None if D.in_memory(opts.data) else opts.data
    valid_file = None if D.in_memory(opts.valid) else \
        opts.valid if isinstance(_fraction_or_path(opts.valid, opts.names("valid")), str) else None
    for name, path in (("data", data_file), ("valid", valid_file)):
        if path is not None:
            D.check_data_path(path, flag=opts.names(name))
    for name in ("resume", "overwrite", "progress", "cuda_graphs"):
        check_flag(name, getattr(opts, name))
    if isinstance(opts.freeze, str) or not isinstance(opts.freeze, (list, tuple)) \
            or not all(isinstance(f, str) for f in opts.freeze):  # (freeze="W1" froze "W" and "1")
        raise FlowgradError(f"freeze must be a list of parameter names, got {opts.freeze!r}",
                            hint='e.g. freeze=["W1", "b1"] (globs such as "enc_*" too)')
    opts.seed = check_seed(opts.seed)
    check_dtype(opts.dtype)


def _resumed_seed(meta: dict, asked: int | None, default: int, path: str, names: ArgNames) -> int:
    """The seed a resumed run continues with: the one it was trained with (its data order,
    validation split and dropout masks follow it), whatever the spec now says; a --seed that
    differs is refused."""
    if "seed" not in meta:
        return default
    seed = int(meta["seed"])
    if asked is not None and int(asked) != seed:
        raise FlowgradError(f"{names.given(seed=asked)} differs from the seed {seed} that {path} was trained with",
                            hint="a resumed run keeps its seed (data order, validation split, dropout): leave out "
                                 f"{names('seed')}, or start over with {names.given(overwrite=True)}")
    return seed


def _resumed_dtype(info: dict, asked: str | None, path: str, run_dir: str, names: ArgNames) -> str | None:
    """The float type a resumed run continues in: the one it was trained in (run.json), as eval
    and export read it, whatever the spec's train.dtype now says; a --dtype that differs is
    refused. (A resume without the run's --dtype went on in the spec's float type.)"""
    trained = info.get("dtype")
    if not isinstance(trained, str):  # a run.json from before runs recorded it
        return asked
    if asked is not None and asked != trained:
        raise FlowgradError(f"{names.given(dtype=asked)} differs from the float type {trained} that {path} was "
                            "trained in",
                            hint=f"a resumed run keeps its float type: leave out {names('dtype')}, or start a new run "
                                 f"from its weights with {names.given(init_from=run_dir, dtype=asked, run_dir='NEW_DIR')}")
    return trained


def _check_same_model(spec: S.Spec, run_dir: str, info: dict, names: ArgNames) -> None:
    """A resumed run goes on with the model it was trained as, which its spec.yaml holds (see
    spec.compare): an edited activation or dropout rate keeps every parameter's shape, and the
    checkpoint's weights would go on training as another model's. (A run without a spec.yaml,
    or with one this flowgrad cannot read, is left to the checkpoint's shape checks; so is a run
    whose run.json predates the float type's record: the flowgrad that wrote it copied the spec
    file into spec.yaml without the --set overrides the run trained with.)"""
    trained_path = os.path.join(run_dir, "spec.yaml")
    if not os.path.isfile(trained_path) or "dtype" not in info:
        return
    if not spec.overrides and os.path.isfile(spec.path) and os.path.samefile(spec.path, trained_path):
        return  # (the run's own spec.yaml; with --set overrides it is another model, and is compared)
    from spec.compare import model_change
    from spec.loader import load_spec

    try:
        trained = load_spec(trained_path, names=names)
    except FlowgradError:
        return
    change = model_change(trained, spec)
    if change:
        raise SpecError(change.describe(run_dir), change.loc,
                        hint=f"resume with the spec the run trained, {trained_path} "
                             f"({names.given(resume=True, run_dir=run_dir)}), or start a new run from its "
                             f"weights: {names.given(init_from=run_dir, run_dir='NEW_DIR')}")


def _check_same_batches(meta: dict, now: dict, path: str, run_dir: str, names: ArgNames,
                        batch_given: bool = False) -> None:
    """A resumed run goes on with the batches it was trained with: its step count and lr
    schedule count those batches, so another batch size or another --accumulate would
    continue a different run from the middle of this one. (`batch_given`: the batch size is the
    caller's (--batch-size, batch_size=), not the spec's train.batch_size; the error names the
    one that differs.)"""
    for key, name in {"batch_size": names("batch_size") if batch_given else "train.batch_size",
                      "accumulate": names("accumulate")}.items():
        if key in meta and meta[key] != now[key]:
            raise DataError(f"{path} was trained with another {name} ({meta[key]}, now {now[key]})",
                            # (it said "the run's own train.batch_size" to a run trained with --batch-size 8,
                            # whose spec.yaml holds the spec's 32: the value itself is what resumes it)
                            hint=f"resume with {names.given(**{key: meta[key]})}, as it trained, or start a new run "
                                 f"from its weights: {names.given(init_from=run_dir, run_dir='NEW_DIR')}")


def _check_same_optimizers(before: dict | None, now: dict, path: str, run_dir: str, names: ArgNames) -> None:
    """A resumed run goes on with the optimizers it was trained with: another one reads the
    checkpoint's optimizer state as its own (Adam's m and v as AdamW's, RMSProp's velocity as
    SGD's), or leaves it behind to be taken up again later, stale. (A checkpoint written before
    runs recorded their optimizers is not checked.)"""
    for obj, name in (before or {}).items():
        if obj in now and now[obj] != name:
            which = "" if len(now) == 1 else f" for objective {obj}"
            raise DataError(f"{path} was trained with the {name} optimizer{which}, and the spec now asks for "
                            f"{now[obj]}: the checkpoint's optimizer state is {name}'s",
                            hint="resume with the run's own optimizer (its spec.yaml has it; another lr is fine), "
                                 "or start a new run from its weights: "
                                 f"{names.given(init_from=run_dir, run_dir='NEW_DIR')}")


def _check_same_every(meta: dict, now: dict, spec: S.Spec, path: str, run_dir: str, names: ArgNames) -> None:
    """A resumed objective steps as often as it did: its optimizer's own step count (Adam's bias
    correction) is derived from the run's step and its every, so another every would take the
    moments of its steps so far for those of more or fewer steps. (A checkpoint written before
    every existed stepped each objective on every update.)"""
    before = meta.get("every") or {}
    for obj, k in now.items():
        was = before.get(obj, 1) if "optimizers" in meta else k
        if was != k:
            raise DataError(f"{path} was trained with objective {obj} stepping every {was} update{'s' if was > 1 else ''}, "
                            f"and the spec now says every: {k}: its optimizer counts its steps by it",
                            spec.locate("train", "objectives", obj, "every") if k > 1 else None,
                            f"resume with the run's own every (its spec.yaml has it), or start a new run from its "
                            f"weights: {names.given(init_from=run_dir, run_dir='NEW_DIR')}")


# the optimizer setting that keeps a kind of state, for a resume whose settings changed to name it
STATE_SETTING = {"velocity": "momentum", "max_v": "amsgrad", "mean_grad": "centered"}


def _check_same_optimizer_state(cm: CompiledModel, state: dict, seed: int, path: str, run_dir: str,
                                names: ArgNames) -> None:
    """The checkpoint holds the optimizer state this run's optimizer settings keep, no more, no less:
    sgd resumed with its momentum turned off carried the velocity on in its checkpoints, and turned
    on again later took it up, stale; turned on, the missing velocity was blamed on a changed spec."""
    from compiler.optim.base import possible_state_names

    kinds = possible_state_names()
    want = cm.initial_state(seed)
    is_state = lambda k: "/" in k and k.split("/", 1)[0] in kinds and k not in cm.params  # noqa: E731
    extra = sorted(k for k in state if is_state(k) and k not in want)
    missing = sorted(k for k in want if is_state(k) and k not in state)
    if extra or missing:
        what = f"holds {extra[0]}, which" if extra else f"lacks {missing[0]}, which"
        keeps = "this run's optimizer settings do not keep" if extra else "this run's optimizer settings keep"
        setting = STATE_SETTING.get((extra or missing)[0].split("/", 1)[0], "momentum")
        raise DataError(f"{path} {what} {keeps}: the optimizer's settings changed since it was written ({setting}?)",
                        hint="resume with the run's own optimizer settings (its spec.yaml has them; another lr is "
                             f"fine), or start a new run from its weights: {names.given(init_from=run_dir, run_dir='NEW_DIR')}")


def _reorder_optimizer_state(cm: CompiledModel, state: dict, before: dict, now: dict) -> bool:
    """A checkpoint's fused optimizer state (one flat vector per kind: Adam's m, v) laid out in
    the order this run trains the parameters, where the spec lists the same ones in another
    order (its params sorted, say); False, leaving `state` as it was, where they differ."""
    if set(before) != set(now) or any(sorted(before[o]) != sorted(now[o]) for o in now):
        return False
    for obj in cm.objectives:
        old, new = before[obj.name], now[obj.name]
        ends = np.cumsum([state[p].size for p in old])[:-1]
        for kind in obj.optimizer.state_names:
            key = f"{kind}/{obj.name}"  # (a per-parameter state, kind/<parameter>, is found by name)
            if key in state and state[key].size == sum(state[p].size for p in old):
                pieces = dict(zip(old, np.split(state[key], ends)))
                state[key] = np.concatenate([pieces[p] for p in new]) if new else state[key]
    return True


def _difference(before: dict, now: dict) -> str:
    for obj in sorted(set(before) | set(now)):
        gone = [p for p in before.get(obj, []) if p not in now.get(obj, [])]
        new = [p for p in now.get(obj, []) if p not in before.get(obj, [])]
        if gone or new:
            return f"objective {obj}: " + "; ".join(filter(None, [gone and f"then also {', '.join(gone)}",
                                                                  new and f"now also {', '.join(new)}"]))
    return "the same parameters in another order"


def _rows(batch: dict) -> int:
    return len(next(iter(batch.values())))


def _shapes(batch: dict) -> dict:
    return {k: np.shape(v) for k, v in batch.items()}


def _check_state_finite(state: dict, step: int, epoch: int, run_dir: str, names: ArgNames) -> None:
    bad = [k for k, v in state.items() if v.dtype.kind == "f" and not np.all(np.isfinite(v))]
    if bad:
        raise FlowgradError(
            f"{', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} became NaN or inf at step {step} "
            f"(epoch {epoch + 1}); training stopped",
            hint=_last_good_hint(run_dir, names),
        )


def _last_good_hint(run_dir: str, names: ArgNames) -> str:
    if not os.path.exists(os.path.join(run_dir, CHECKPOINT)):  # (it stopped before the first, or after
        # --overwrite removed the old run's): it spoke of a checkpoint there and of --resume, which finds none
        return "no checkpoint was written before it; lower the learning rate or add clip_norm, and train again"
    return (f"the last good checkpoint is in {run_dir}; lower the learning rate or add clip_norm, then "
            f"{names.given(resume=True)} or {names.given(overwrite=True)}")


def _step_failed(ex: Exception, what: str, run_dir: str | None, float_dtype: str = "float32") -> FlowgradError:
    """onnxruntime refused to run a step: nearly always data the graph cannot take.
    `run_dir` None: no run's checkpoints to speak of (bench)."""
    detail = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
    detail = detail.split("Status Message: ")[-1]
    if re.match(r"\S+\.(cc|h|cpp):\d+ ", detail):  # a C++ source position and signature: keep what follows
        detail = re.split(r"\] |\) ", detail)[-1]
    # (a CUDA session with a node no provider takes says so from deep in its setup)
    unplaced = re.search(r"Provider type for (\w+) node", detail)
    if "NOT_IMPLEMENTED" in detail or unplaced:
        detail = f"no provider has a kernel for its {unplaced.group(1)} node in these types" if unplaced \
            else detail.split("NOT_IMPLEMENTED : ")[-1]
        if float_dtype == "float64":  # (the CPU provider has float64 products, not convolutions, pooling or Erf)
            hint = ("onnxruntime has no float64 kernel for that op: train in float32; flowgrad gradcheck checks "
                    "float64 gradients of any op on onnx's reference evaluator")
        else:
            hint = "this device's provider lacks a kernel for that op and type; with mixed_precision, try float16 " \
                   "instead of bfloat16"
        return FlowgradError(f"onnxruntime cannot run the {what}: {detail}", hint=hint)
    hint = "check the data's values, e.g. class ids must be below the number of classes"
    if run_dir is not None:
        hint += (f"; the last checkpoint in {run_dir} is intact" if os.path.exists(os.path.join(run_dir, CHECKPOINT))
                 else "; no checkpoint was written before it")
    return FlowgradError(f"onnxruntime failed in the {what}: {detail}", hint=hint)


def _check_finite(scalars, step, epoch, run_dir, names: ArgNames):
    # The loss alone: a metric's NaN says nothing of the training (a masked accuracy over a batch
    # that the mask leaves empty is 0/0), and parameters that overflow are caught on their own.
    for k, v in scalars.items():
        if k == "loss" and not np.isfinite(v):
            raise FlowgradError(
                f"{k} became {v} at step {step} (epoch {epoch + 1}); training stopped",
                hint=_last_good_hint(run_dir, names),
            )


def _check_state(cm: CompiledModel, state: dict, path: str, seed: int, names: ArgNames):
    """The checkpoint's state fits the compiled model. A checkpoint without loss-scale state (a
    run trained without mixed precision, resumed with it; or one written before the count of
    skipped steps existed) starts it as a new run would: mixed_precision is a train setting that
    a resume may change, as it may the other way round."""
    want = cm.initial_state(seed)
    for name, _ in (entry for o in cm.objectives for entry in cm.state_specs(o)):
        if name.startswith("loss_scale") and name not in state:
            state[name] = want[name]
    # A scale above this run's max_scale (a bfloat16 run's 2^24, resumed in float16) would
    # overflow the half type's loss seed: each step would be skipped until it halved below it.
    for o in cm.objectives:
        key = f"loss_scale/{o.name}"
        if o.mixed and key in state and float(state[key]) > o.mixed.max_scale:
            state[key] = np.asarray(o.mixed.max_scale, dtype=np.asarray(state[key]).dtype)
    missing = [k for k in want if k not in state]
    if missing:
        raise DataError(f"checkpoint {path} lacks {', '.join(missing[:5])}",
                        hint=f"the spec changed since it was written; train anew with {names.given(overwrite=True)}")
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise DataError(f"checkpoint {path}: {k} has shape {list(state[k].shape)}, the spec now says {list(v.shape)}",
                            hint=f"the spec changed since it was written; train anew with {names.given(overwrite=True)}")


VOCABULARY_KEYS = ("vocab", "src_vocab", "tgt_vocab")


def _check_vocabulary(run_dir: str, meta: dict, how: str, names: ArgNames, warm_start: bool = False) -> None:
    """Token ids mean the vocabulary's tokens: a run continued, or warm-started, on data whose
    vocabulary differs would read every embedding row as another token. `how`: what the caller
    asked for, as they wrote it (--resume runs/a, init_from="runs/a")."""
    if not os.path.isdir(run_dir):  # --init-from RUN/best.npz: the run that wrote it, if the file is still in it
        run_dir = os.path.dirname(run_dir) or "."
        if not os.path.isfile(os.path.join(run_dir, "run.json")):
            return
    before = read_run_info(run_dir, missing_ok=True).get("meta") or {}
    for key in VOCABULARY_KEYS:
        if key in before and key in meta and list(before[key]) != list(meta[key]):
            raise DataError(
                f"{how}: that run was trained on data whose {key} differs from this data's "
                f"({len(before[key])} tokens, then {len(meta[key])}; token ids would change meaning)",
                hint=f"use the data that run was trained on, or leave out {names('init_from')} to train from scratch"
                if warm_start else f"train anew with {names.given(overwrite=True)}, or use the data the run was trained on")


def _bundled_dataset_changed(then: dict, now: dict) -> str | None:
    """Why a run's bundled dataset gives other examples though the run's data options did not
    change, or None: `then` is the run's recorded data source, `now` the one drawn today. The
    generator's version differs, or the run predates versions and the dataset, options and
    splits are those it recorded (so that only the generator can have changed)."""
    name = then.get("dataset")
    if not name or now.get("dataset") != name or name not in D.DATASET_VERSIONS:
        return None
    plain = lambda v: json.loads(jsontext.dumps(v, default=str))  # noqa: E731  (as run.json holds it)
    if plain(then.get("options")) != plain(now.get("options")):
        return None
    version = D.DATASET_VERSIONS[name]
    if "version" in then:
        if then["version"] == version:
            return None
        was = f"the run was trained on its version {then['version']}, this flowgrad draws version {version}"
    elif any(plain(then.get(k)) != plain(now.get(k)) for k in ("valid", "test")):
        return None  # a split edited since: the usual refusal names it
    else:
        was = f"the run's run.json predates dataset versions, this flowgrad draws version {version}"
    return f"the bundled dataset {name!r} changed in this flowgrad version ({was})"


def _changed_source(then: dict, now: dict, given: dict, names: ArgNames) -> str | None:
    """What of a run's recorded data source (run.json's data_source) differs now, in the words
    of the argument or spec key that gave it, or None. `given`: the data and valid arguments as
    the user gave them (None: not given), named as `names` name them."""
    plain = lambda v: _shown(json.loads(jsontext.dumps(v, default=str)))  # noqa: E731  (as run.json holds it)
    where = lambda s: s.get("path") or (f"dataset {s['dataset']!r}" if s.get("dataset")  # noqa: E731
                                        else _shown(D.IN_MEMORY) if s.get("arrays") else "no data")
    if where(then) != where(now):
        given_as = _given(names, "data", given["data"]) if given.get("data") is not None \
            else f"train.data {where(now)}"
        return f"{given_as}, where the run had {where(then)}"
    for key, name in (("options", "train.data.options"), ("valid", "train.data.valid"), ("test", "train.data.test")):
        if plain(then.get(key)) != plain(now.get(key)):
            given_as = _given(names, "valid", given["valid"]) if key == "valid" and given.get("valid") is not None \
                else f"{name} {plain(now.get(key))}"
            return f"{given_as}, where the run had {plain(then.get(key))}"
    return None


def _shown(value):
    """A data source's entry as messages show it: arrays given in memory (D.IN_MEMORY) in words."""
    return "arrays given in memory" if value == D.IN_MEMORY else value


def _given(names: ArgNames, key: str, value) -> str:
    """The data or valid argument as the user gave it: data="train.npz", --valid 0.1, or for
    arrays in memory (never spelt out) 'arrays given as data='."""
    return f"arrays given as {names(key)}=" if D.in_memory(value) else names.given(**{key: value})


def _check_arrays_given_again(run_dir: str, info: dict, opts: TrainOptions, names: ArgNames) -> None:
    """A run trained (or validated) on arrays given in memory resumes only when given arrays again:
    its run.json records no file to read them from, and the spec's own data would be other examples
    (or none). Arrays or a file given are compared with the run's by their hash, as any data is."""
    then = info.get("data_source") if isinstance(info.get("data_source"), dict) else {}
    missing = [(key, what, file) for key, had, given, what, file in (
        ("data", then.get("arrays"), opts.data, "trained", "FILE.npz"),
        ("valid", then.get("valid") == D.IN_MEMORY, opts.valid, "validated", "VALID.npz")) if had and given is None]
    if not missing:
        return
    keys = [key for key, _, _ in missing]  # (both at once: given data=, it was then told of valid=)
    files = {key: file if len(missing) > 1 else "FILE.npz" for key, _, file in missing}
    again = (f"save them with numpy.savez and pass the file{'s' if len(missing) > 1 else ''}, "
             f"{names.given(resume=True, **files)}" if names.flags else
             f"pass the same arrays again ({names.given(resume=True)}, {', '.join(f'{k}={{...}}' for k in keys)})")
    raise DataError(f"{names.given(resume=True)} {run_dir}: the run was {' and '.join(w for _, w, _ in missing)} on "
                    f"arrays given in memory (the API's {' and '.join(f'{k}=' for k in keys)}), and this resume gives "
                    f"{'neither' if len(missing) > 1 else 'none'}",
                    hint=f"{again}, or start a new run from its weights with "
                         f"{names.given(init_from=run_dir, run_dir='NEW_DIR')}")


def _check_same_examples(run_dir: str, before: dict, train_ds: D.Dataset, float_dtype: str, names: ArgNames,
                         source: dict | None = None, given: dict | None = None) -> None:
    """A resumed run trains on the examples it was trained on: with another split (valid or test
    edited) or data file, the data positions in its checkpoint point at other examples, and
    examples it validated on would be trained on. (`before`: the run's run.json; `source`: this
    run's data_source, to tell a bundled dataset whose generator changed since from data the user
    changed, and to name what changed; `given`: --data and --valid as given, None where not, to name them.)"""
    trained_on, dtype = before.get("data_hash"), before.get("dtype")
    if trained_on is None or dtype is None:  # a run.json from before runs recorded them
        return
    # (float inputs are hashed as cast to the model's float type: another --dtype hashes otherwise)
    if dtype == float_dtype and trained_on != train_ds.fingerprint():
        then = before.get("data_source")
        changed = _bundled_dataset_changed(then, source or {}) if isinstance(then, dict) else None
        if changed:
            raise DataError(f"{names.given(resume=True)} {run_dir}: {changed}, so the examples the run was trained "
                            "on cannot be drawn again",
                            hint=f"start a new run from its weights with "
                                 f"{names.given(init_from=run_dir, run_dir='NEW_DIR')}, or train anew with "
                                 f"{names.given(overwrite=True)}")
        which = _changed_source(then, source, given or {}, names) if isinstance(then, dict) and source else None
        arrays = isinstance(then, dict) and bool(then.get("arrays"))  # (run.json holds no copy of them)
        other = f"other arrays given as {names('data')}=, or another validation or test split" if arrays \
            else "another data file, validation or test split, or data options"
        raise DataError(f"{names.given(resume=True)} {run_dir}: the training examples differ from those the run was "
                        f"trained on ({which or other})",
                        hint=("resume with the arrays the run was trained on and its splits" if arrays else
                              "resume with the run's data and splits (its run.json has them)")
                        + f", or start a new run from its weights with {names.given(init_from=run_dir, run_dir='NEW_DIR')}")


def _valid_hash(valid_ds: D.Dataset | None) -> str | None:
    """run.json's record of the examples a run validates on (None: it does not validate)."""
    return valid_ds.fingerprint() if valid_ds is not None else None


def _check_same_validation(run_dir: str, before: dict, meta: dict, valid_ds: D.Dataset | None, float_dtype: str,
                           names: ArgNames, source: dict, valid_given) -> None:
    """A resumed run validates on the examples it validated on: with others (another --valid file,
    the same file edited, validation added or left out), its records and the choice of best.npz
    would compare numbers of two validation sets. (`before`: the run's run.json, `meta`: its
    checkpoint's; `source`: this run's data_source; `valid_given`: --valid as given, None if it was not.)"""
    if "valid_hash" in before:
        if before.get("dtype") != float_dtype or before["valid_hash"] == _valid_hash(valid_ds):
            return
    else:  # a run.json from before runs recorded it: whether the run validated shows in its records
        history = meta.get("history") or []
        if not history or any(k.startswith("valid_") for k in history[-1]) == (valid_ds is not None):
            return
    then = before.get("data_source") if isinstance(before.get("data_source"), dict) else {}
    was, now = then.get("valid") or None, source.get("valid") or None  # (a fraction 0 validates on nothing)
    if was != now:
        given = _given(names, "valid", valid_given) if valid_given is not None else \
            f"train.data.valid {now}" if now is not None else "no validation data"
        which = f"{given}, where the run had {_shown(was) if was is not None else 'none'}"
    elif isinstance(now, str):
        which = f"{now} has changed since the run validated on it"
    elif now == D.IN_MEMORY:
        which = f"other arrays given as {names('valid')}= than those it validated on"
    else:
        which = "another validation split"
    raise DataError(f"{names.given(resume=True)} {run_dir}: the validation examples differ from those the run "
                    f"validated on ({which}); its records and best.npz would compare two validation sets",
                    hint=("resume with the arrays the run validated on" if was == D.IN_MEMORY
                          else "resume with the run's validation data (its run.json has it)")
                    + f", or start a new run from its weights with {names.given(init_from=run_dir, run_dir='NEW_DIR')}")


def _warm_start(cm: CompiledModel, run_dir: str, seed: int, names: ArgNames) -> tuple[dict, dict]:
    """(the initial state with every parameter that run has by name and shape, a report:
    the parameters taken, and why each other one keeps its initial values)."""
    path = os.path.join(run_dir, CHECKPOINT) if os.path.isdir(run_dir) else run_dir
    try:
        source, _ = load_checkpoint(path, names, "init_from")
    except DataError as e:  # ("no checkpoint at X" did not say which flag gave X)
        raise DataError(f"{names.given(init_from=run_dir)}: {e.message}", e.loc, e.hint) from None
    state = cm.initial_state(seed)
    taken, kept = [], {}
    # a stateful layer's carried state (hs.h0) starts each epoch from zeros: not a weight to take,
    # keep or leave behind (a stateful run's were listed as left unused by a spec without them)
    for k in (k for k, p in cm.params.items() if not p.carried):
        if k not in source:
            kept[k] = "not in that run"
        elif source[k].shape != state[k].shape:
            kept[k] = f"shape {list(source[k].shape)} there, {list(state[k].shape)} here"
        else:
            state[k] = source[k].astype(state[k].dtype)
            taken.append(k)
    if not taken:
        raise DataError(f"{names.given(init_from=run_dir)}: no parameter matches this spec by name and shape",
                        hint=f"give {names('init_from')} a run of a spec with the same parameter names and shapes")
    # that run's parameters this spec has none of (a layer removed, or made without them, as
    # batch_norm(affine=false)'s gamma and beta): their trained values are left behind, said so
    # (the optimizer's and loss scaling's state, "kind/name", is not a parameter)
    carried = _carried_in(run_dir)
    unused = [k for k in source if k not in cm.params and "/" not in k and k not in carried]
    return state, {"from": os.path.abspath(run_dir), "taken": taken, "kept": kept, "unused": unused}


def _carried_in(run_dir: str) -> set[str]:
    """The carried states (a stateful layer's) of the run `run_dir`, as its graphs/manifest.json
    marks them; none known for a checkpoint given as a file, or a run of an earlier flowgrad."""
    try:
        with open(os.path.join(run_dir, "graphs", "manifest.json"), encoding="utf-8") as f:
            params = json.load(f)["params"]
        return {k for k, p in params.items() if isinstance(p, dict) and p.get("carried")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def _write_run_files(spec, cm, run_dir, device, seed, opts, train_ds, valid_ds, resumed, warm_start=None):
    if resumed and warm_start is None:  # a resumed run keeps the record of where its weights came from
        try:
            with open(os.path.join(run_dir, "run.json")) as f:
                warm_start = json.load(f).get("init_from")
        except (OSError, ValueError, AttributeError):
            warm_start = None
    # result.json says how the last training process of the run ended, and only once it has: a
    # resume stopped part-way (killed, a full disk) left the result of the process before it, a
    # "finished" run whose epochs, steps and best disagreed with metrics.jsonl and the checkpoint
    # (it goes before the first step, is written whole when the process ends)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(run_dir, "result.json"))
    if not resumed:
        # a run started over (--overwrite): the old run's checkpoints go with its spec and graphs,
        # else a stop before the first new checkpoint left them beside the new run's files, for
        # --resume or export to take as this run's (and its metrics.jsonl, which plot curves drew
        # as the new run's)
        for name in (CHECKPOINT, BEST, BEST_BEFORE_PARTIAL, "metrics.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(run_dir, name))
    names = opts.names  # (a full disk's hint names resuming as the caller would)
    info = {
        "spec": spec.name, "seed": seed, "dtype": cm.float_dtype, "device": device, "threads": opts.threads,
        "data": train_ds.name, "data_source": data_source(spec, opts),
        "data_hash": train_ds.fingerprint(), "valid_hash": _valid_hash(valid_ds), "versions": _versions(),
        "resumed": resumed,
        "argv": sys.argv, "meta": train_ds.meta,
        **({"init_from": warm_start} if warm_start else {}),
    }
    # run.json first: it marks the directory as a run's. Written last, a new run stopped while
    # writing its spec.yaml or graphs (a full disk, Ctrl-C) left a directory of those files and no
    # run.json, which every later train refused, --overwrite too, as someone else's folder.
    hint = _unwritten_run_hint(run_dir, names)
    atomic_write(os.path.join(run_dir, "run.json"), jsontext.dumps(info, indent=2).encode(), hint=hint, names=names)
    _write_spec_as_trained(spec, os.path.join(run_dir, "spec.yaml"), names, hint)
    _remove_other_graphs(cm, os.path.join(run_dir, "graphs"))
    cm.save(os.path.join(run_dir, "graphs"), hint, names)


def _unwritten_run_hint(run_dir: str, names: ArgNames) -> str | None:
    """The hint for a run's file that cannot be written (a full disk): None, atomic_write's own
    ('the previous checkpoint is intact; free some space and --resume'), once the run has a
    checkpoint; with best.npz alone (a run of an earlier flowgrad, which wrote the first epoch's
    best.npz before its checkpoint.npz), to copy it to checkpoint.npz and resume, or start over; before either there is nothing to resume
    (--resume said 'nothing to resume: no checkpoint'), and the run is trained again as it was started."""
    ckpt, best = os.path.join(run_dir, CHECKPOINT), os.path.join(run_dir, BEST)
    if os.path.exists(ckpt):
        return None
    if os.path.exists(best):  # (an earlier flowgrad's run: --resume reads checkpoint.npz only)
        return (f"free some space (or make the run directory writable), then copy {best} to {ckpt} and "
                f"{names.given(resume=True)} to go on from its epoch, or start over with {names.given(overwrite=True)}")
    return (f"no checkpoint was written yet ({names.given(resume=True)} would find none): free some space (or make "
            "the run directory writable) and train again as before")


def _remove_other_graphs(cm: CompiledModel, directory: str) -> None:
    """A run's graphs/ holds the graphs of the spec it trains, no others: a graph of the spec it
    trained before (--overwrite, or a resume of an edited spec) that this one lacks, such as a
    sampling graph, was left there for export to take, with this run's weights baked in."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.endswith(".onnx") and name[:-len(".onnx")] not in cm.graphs:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


def _write_spec_as_trained(spec: S.Spec, target: str, names: ArgNames, hint: str | None = None) -> None:
    """The run's spec.yaml is the spec it trained: the file's text as it was read (comments kept), or, with
    --set overrides or a spec given as data, the YAML of the spec after them, so that eval,
    export and plots read the shapes the checkpoint has."""
    if spec.text is not None and not spec.overrides:
        # the text as it was read (the file read again may have been rewritten since)
        if not (os.path.exists(target) and os.path.exists(spec.file) and os.path.samefile(spec.file, target)):
            atomic_write(target, spec.text.encode("utf-8"), hint=hint, names=names)
        return
    from spec.yamltree import dump_yaml, to_plain

    if spec.override_names.flags:
        origin = os.path.basename(spec.path) + "".join(f" --set {o}" for o in spec.overrides)
    else:  # (the API's load(path, overrides=[...]))
        origin = os.path.basename(spec.path) + (
            f", overrides={json.dumps(list(spec.overrides), ensure_ascii=False)}" if spec.overrides else "")
    # one comment line: an override's line break (--set 'a={b:\n c}') began a line of YAML that ended the spec
    origin = re.sub("[\r\n\x85\u2028\u2029]", lambda m: ascii(m.group())[1:-1], origin)
    text = dump_yaml(to_plain(spec.raw), sort_keys=False, allow_unicode=True, width=100)
    atomic_write(target, f"# the spec this run trained: {origin}\n{text}".encode(), hint=hint, names=names)


def _a_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _written_at(path: str):
    """The step a checkpoint was written at (its record alone is read), None if it cannot be read."""
    return (checkpoint_meta(path) or {}).get("step")


def _rewrite_metrics(run_dir, history, names: ArgNames):
    """metrics.jsonl as the records of the epochs a run starts from: none for a new run; for a
    resumed one, those its checkpoint covers (the lines of epochs after it, which a resume from
    best.npz or a kill between an epoch's line and its checkpoint leaves, are redone)."""
    atomic_write(os.path.join(run_dir, "metrics.jsonl"), "".join(jsontext.dumps(r) + "\n" for r in history).encode(),
                 names=names)


def _append_metrics(run_dir: str, record: dict) -> int:
    """An epoch's line at the end of metrics.jsonl, on disk before the checkpoint that counts it
    is written: a checkpoint never covers a line that a crash could still lose. (Cut short by a
    crash, the line is past what the last checkpoint covers, and the resume drops it.) Returns
    the file's length before it."""
    with open(os.path.join(run_dir, "metrics.jsonl"), "ab") as f:
        end = f.tell()
        f.write((jsontext.dumps(record) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    return end


def _resumed_history(run_dir: str, meta: dict, ckpt_path: str, names: ArgNames) -> list[dict]:
    """The records of the epochs that a resumed checkpoint covers: the first meta["records"] lines
    of metrics.jsonl (the lines after them are of epochs the resume redoes). A checkpoint of an
    earlier flowgrad carries its history itself. A metrics.jsonl without the lines the checkpoint
    covers (removed, cut short or edited) is refused before anything of the run is written: the
    resumed file would lack those epochs, and early stopping's best and plots read them."""
    if isinstance(meta.get("history"), list):
        return list(meta["history"])
    n = meta.get("records", meta.get("epoch", 0))
    n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0
    if not n:
        return []
    path = os.path.join(run_dir, "metrics.jsonl")
    covers = (f"{os.path.basename(ckpt_path)} covers {n} epoch{'s' if n != 1 else ''} "
              "(a resume goes on from their records)")
    hint = (f"restore the run's metrics.jsonl, or start a new run from its weights with "
            f"{names.given(init_from=run_dir, run_dir='NEW_DIR')}")
    history = []
    try:
        # (utf-8-sig: a file saved by a Windows editor starts with a byte-order mark, which made its
        # first line 'not the record of epoch 1')
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if len(history) == n:
                    break
                if not line.strip():
                    continue
                i = len(history)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                # (a metric edited into text was taken: plot curves then refused the file, and as the final
                # record, train's summary table failed on it in a traceback)
                if not isinstance(record, dict) or not _a_number(record.get("epoch")) or record["epoch"] != i + 1 \
                        or not all(jsontext.is_number(v) for k, v in record.items()
                                   if k.startswith(("train_", "valid_"))):
                    raise DataError(f"{names.given(resume=True)} {run_dir}: {path}:{number} is not the record of "
                                    f"epoch {i + 1}, and {covers}", hint=hint)
                history.append(jsontext.numbers_of(record))
    except FileNotFoundError:
        raise DataError(f"{names.given(resume=True)} {run_dir}: {path} is missing, and {covers}",
                        hint=hint) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{names.given(resume=True)} {run_dir}: {path} is unreadable "
                        f"({getattr(e, 'strerror', None) or type(e).__name__}), and {covers}", hint=hint) from None
    if len(history) < n:
        raise DataError(f"{names.given(resume=True)} {run_dir}: {path} holds the records of {len(history)} "
                        f"epoch{'s' if len(history) != 1 else ''}, and {covers}", hint=hint)
    return history


class _Progress:
    """A rich progress bar on stderr: epoch, step, loss, metric, samples/s."""

    def __init__(self, enabled: bool, epochs: int, steps_per_epoch: int):
        self.enabled = enabled
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.bar = None
        self.ended = None  # the task of the last epoch that ended, still drawn by the bar

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from .console import widen_off_terminal

            self.console = widen_off_terminal(Console(stderr=True))
            self.bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console, transient=False)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def start_epoch(self, epoch, done):
        if self.bar is not None:
            if self.ended is not None:
                # The epoch before is printed once, above the bar, and its task dropped: kept as a
                # task, every refresh drew every epoch so far again (500 epochs of one step took 104 s).
                (task,) = [t for t in self.bar.tasks if t.id == self.ended]
                self.bar.remove_task(self.ended)
                self.console.print(self.bar.make_tasks_table([task]))
                self.ended = None
            self.task = self.bar.add_task("", total=self.steps, completed=done, epoch=f"{epoch + 1}/{self.epochs}", info="")

    def advance(self, running: dict, rate: float):
        if self.bar is not None:
            info = "  ".join(f"{k} {v:.4f}" for k, v in running.items()) + f"  {rate:,.0f} samples/s"
            self.bar.update(self.task, advance=1, info=info)

    def end_epoch(self, record):
        if self.bar is not None:
            info = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("train_", "valid_")))
            self.bar.update(self.task, info=info)
            self.ended = self.task
