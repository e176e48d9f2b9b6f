"""From a spec to its compiled graphs: training (per objective), eval,
inference, gradients-only and apply-only, plus a manifest that says which
graph does what and how every input and output is named.

Naming: parameters and buffers keep their spec names (`W1`, `h.W`,
`bn.running_mean`); optimizer state is a flat vector per kind and
objective, `<state>/<objective>` (`m/main`), where the objective trains up to
FUSED_UPDATE_MAX_ELEMENTS values, else `<state>/<param>` (`m/W1`, or
`m/generator/G.h.W` in a spec that names its objectives);
updated tensors come out as `next/<name>`; gradients as `grad/<param>`;
control inputs are `lr` (float scalar), `step` (int64, updates done so
far) and `seed` (int64).
"""
from __future__ import annotations

import fnmatch
import json
import os
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from spec import model as S
from spec.errors import FLAGS, ArgNames, GradientError, ShapeError, SpecError, SpecWarning, unknown_choice

from .autodiff import grad
from .emit import IR_VERSION, OPSET, emit_model
from .init import initial_value, param_rng
from .ir import HALF_TYPES, Graph, Node, Value, at, is_float, normalize_axis, passed_from, producers_of
from .lower import Lowering, ParamInfo
from .optim import Optimizer, optimizer_from_config
from .rewrites import emission_rewrites, optimize, rewrite_forward, sizes_from_inputs_read


@dataclass
class Objective:
    name: str
    loss: S.Assign
    param_globs: list[str]
    optimizer: Optimizer
    clip_norm: float | None
    l1: float
    l2: float
    loc: Any = None
    frozen: list[str] = field(default_factory=list)  # globs of parameters kept fixed
    frozen_by: str = "freeze"  # the argument that gave them, as the caller named it (--freeze, freeze)
    frozen_as: str = ""  # and as the caller wrote it (--freeze 'G.*', freeze=["G.*"])
    mixed: "MixedPrecision | None" = None
    declared: bool = True  # False for the one objective of a spec's top-level `loss`
    every: int = 1  # takes a step on every `every`-th update of the run (a GAN's generator beside its critic)

    def runs_at(self, step: int) -> bool:
        """Whether it takes a step at the run's update `step` (from 0): the every-th, 2*every-th, ..."""
        return (step + 1) % self.every == 0

    def own_step(self, step: int) -> int:
        """Its updates before the run's update `step`: Adam's bias correction counts them, as
        torch.optim's state['step'] does, where the run's count would take it for further on."""
        return (step + 1) // self.every - 1

    @property
    def called(self) -> str:
        """How messages name it: the spec's lone loss has no objective name the user wrote."""
        return f"objective {self.name!r}" if self.declared else "the loss"

    @property
    def its_loss(self) -> str:
        return f"the loss of objective {self.name!r}" if self.declared else "the loss"


@dataclass
class MixedPrecision:
    """Compute in float16/bfloat16, keep parameters and optimizer state in the stored dtype,
    and scale the loss dynamically (PyTorch's GradScaler rule): a step whose gradients are
    not finite changes nothing but halves the scale; `growth_interval` finite steps in a
    row double it, up to `max_scale`."""

    compute: str
    init_scale: float
    growth_interval: int
    max_scale: float

    @staticmethod
    def of(cfg) -> "MixedPrecision | None":
        if cfg is None:
            return None
        cfg = {"compute": cfg} if isinstance(cfg, str) else dict(cfg)
        compute = cfg["compute"]
        # float16's largest finite value is 65504: the scaled loss seed must stay below it
        max_scale = float(cfg.get("max_scale", 2.0 ** 15 if compute == "float16" else 2.0 ** 24))
        return MixedPrecision(compute, float(cfg.get("init_scale", min(2.0 ** 15, max_scale))),
                              int(cfg.get("growth_interval", 2000)), max_scale)


# Up to this many trained values, an objective's optimizer state is one flat
# vector per kind (m, v, ...) and the update runs once over the concatenated
# parameters: a few large ops instead of a dozen per parameter. Above it, the
# concatenation's copies would cost more than the per-op overhead saved.
FUSED_UPDATE_MAX_ELEMENTS = 1 << 20


def fused_update(params: dict[str, ParamInfo], obj: "Objective") -> bool:
    sizes = [int(np.prod(params[n].shape)) for n in trained_names(params, obj)]
    return sum(sizes) <= FUSED_UPDATE_MAX_ELEMENTS


def state_layout(params: dict[str, ParamInfo], obj: "Objective") -> list[tuple[str, tuple]]:
    """Names and shapes of an objective's optimizer state: `<kind>/<objective>` flat vectors for a
    fused update, else `<kind>/<parameter>` shaped like each parameter."""
    trained = trained_names(params, obj)
    scaling = [(f"loss_scale/{obj.name}", ()), (f"loss_scale_steps/{obj.name}", ()),
               (f"loss_scale_skipped/{obj.name}", ())] if obj.mixed else []
    if fused_update(params, obj):
        total = sum(int(np.prod(params[n].shape)) for n in trained)
        return [(f"{s}/{obj.name}", (total,)) for s in obj.optimizer.state_names] + scaling
    return [(f"{s}/{state_key(obj, n)}", tuple(params[n].shape)) for n in trained for s in obj.optimizer.state_names] \
        + scaling


def state_key(obj: "Objective", param: str) -> str:
    """Whose optimizer state a per-parameter slot is: the parameter's, within its objective
    when the spec names objectives (two may train one shared parameter, each its own way)."""
    return param if obj.name == "main" else f"{obj.name}/{param}"


def trained_names(params: dict[str, ParamInfo], obj: Objective) -> list[str]:
    """The parameters an objective updates: trainable, matching its globs, not frozen."""
    return [n for n, p in params.items()
            if p.kind == "param" and p.trainable and _matches(n, obj.param_globs) and not _matches(n, obj.frozen)]


@dataclass
class GraphIO:
    name: str
    role: str  # input | param | buffer | state | control | loss | metric | part | output | next | grad
    dtype: str
    shape: list

    def to_json(self):
        return {"name": self.name, "role": self.role, "dtype": self.dtype, "shape": [d if isinstance(d, int) else str(d) for d in self.shape]}


@dataclass
class CompiledGraph:
    kind: str
    model: onnx.ModelProto
    inputs: list[GraphIO]
    outputs: list[GraphIO]
    objective: str | None = None
    # a training step's batch_norms whose statistics count one dim alone (see Graph.batch_statistics)
    batch_statistics: list = field(default_factory=list)
    # a deployment graph's dim that numbers the examples of its data inputs and outputs, each output
    # row computed from that row of the inputs alone (see independent_rows): predict runs it in batches
    rows: str | None = None
    # the least sizes that the slices this graph runs assume (see least_sizes): export hands a
    # deployment graph's to predict, where a slice that the loss alone reads does not count
    least_sizes: dict | None = None

    @property
    def node_count(self) -> int:
        return len(self.model.graph.node)


@dataclass
class CompiledModel:
    spec: S.Spec
    float_dtype: str
    params: dict[str, ParamInfo]
    objectives: list[Objective]
    graphs: dict[str, CompiledGraph] = field(default_factory=dict)
    compile_seconds: float = 0.0
    # data input -> (exclusive upper bound of its values, what it indexes, "{}" for the bound): checked before training
    index_bounds: dict[str, tuple[int, str]] = field(default_factory=dict)
    # labels input -> the ignore_index of the cross_entropy that takes it: that value is no class id
    # (it may be negative, or beyond index_bounds), checked before training as one
    ignored_labels: dict[str, int] = field(default_factory=dict)
    # lengths input -> the sequence whose rows' steps it counts (see length_bounds): checked before training
    # and kept in the manifest, whence export hands it to predict
    length_bounds: dict[str, dict] = field(default_factory=dict)
    # symbolic dim -> the least size that a slice of it assumes (see least_sizes): checked before
    # training, and kept in the manifest, whence export hands it to predict
    least_sizes: dict[str, dict] = field(default_factory=dict)

    # ---------------------------------------------------------------- state
    def state_specs(self, objective: Objective) -> list[tuple[str, tuple]]:
        """(state input name, shape) of an objective's optimizer state."""
        return state_layout(self.params, objective)

    def trained_params(self, objective: Objective) -> list[str]:
        return trained_names(self.params, objective)

    def initial_state(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Initial parameters and buffers (seeded per name) and the optimizer state's start: zeros,
        but for Adagrad's initial_accumulator_value."""
        state = {}
        for name, p in self.params.items():
            rng = param_rng(seed, name, p.seed)
            state[name] = initial_value(p.init_kind, p.init_args, p.shape, self.float_dtype, rng, p.loc)
        for obj in self.objectives:
            for sname, shape in self.state_specs(obj):
                kind = sname.split("/", 1)[0]
                fill = obj.mixed.init_scale if kind == "loss_scale" else \
                    0 if kind.startswith("loss_scale") else obj.optimizer.state_init(kind)
                state[sname] = np.full(shape, fill, dtype=self.float_dtype)
        return state

    # ---------------------------------------------------------------- files
    def manifest(self) -> dict:
        return {
            "flowgrad_manifest": 1,
            "name": self.spec.name,
            "opset": OPSET,
            "ir_version": IR_VERSION,
            "float_dtype": self.float_dtype,
            "params": {
                # (carried: a stateful layer's state, zeroed at each epoch's start, not a trained value)
                n: {"shape": list(p.shape), "kind": p.kind, "trainable": p.trainable, "init": p.init_kind,
                    **({"carried": True} if p.carried else {})}
                for n, p in self.params.items()
            },
            "objectives": {
                o.name: {
                    "params": self.trained_params(o),
                    "optimizer": o.optimizer.name,
                    "hyper": o.optimizer.hp,
                    "state": [s for s, _ in self.state_specs(o)],
                }
                for o in self.objectives
            },
            "schedule": self.schedule,
            "generate": dict(self.spec.generate),
            "lengths": self.length_bounds,
            "least_sizes": self.least_sizes,
            # data input -> [the exclusive bound of its ids or labels, what it indexes]: export hands it to predict
            "index_bounds": {k: [size, what] for k, (size, what) in self.index_bounds.items()},
            "graphs": {
                k: {
                    "file": f"{k}.onnx",
                    "objective": g.objective,
                    "nodes": g.node_count,
                    "inputs": [i.to_json() for i in g.inputs],
                    "outputs": [o.to_json() for o in g.outputs],
                    **({"rows": g.rows} if g.rows else {}),
                    **({"least_sizes": g.least_sizes} if g.least_sizes is not None else {}),
                }
                for k, g in self.graphs.items()
            },
        }

    @property
    def schedule(self) -> list[str]:
        return schedule_of(self.spec)

    def save(self, directory: str, hint: str | None = None, names: ArgNames = FLAGS) -> list[str]:
        """Write the graphs and the manifest, each file whole or not at all: a run's resume
        writes them again, and a full disk must not leave the run's graphs truncated.
        `hint` for a directory that is not a run's, `names` for a run's (see atomic_write)."""
        from runtime.checkpoint import atomic_write
        from runtime.jsontext import dumps  # (strict JSON: a NaN is null, an infinity "Infinity")

        os.makedirs(directory, exist_ok=True)
        written = []
        for k, g in self.graphs.items():
            path = os.path.join(directory, f"{k}.onnx")
            atomic_write(path, g.model.SerializeToString(), hint, names)
            written.append(path)
        path = os.path.join(directory, "manifest.json")
        atomic_write(path, dumps(self.manifest(), indent=2, default=_json_default).encode(), hint, names)
        written.append(path)
        return written


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def _matches(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


COMPILE_FLOAT_TYPES = ("float32", "float64", "float16")  # what --dtype (and train.dtype) takes


def check_dtype(dtype: str | None, name: str = "dtype") -> None:
    """A float type given through the API (or, named "--dtype", the CLI), checked as --dtype is
    (bfloat16 failed in the first step with onnxruntime's message, an int8 with a shape error at
    the spec's first product). The message names the keyword or flag the user wrote."""
    if dtype is not None and not isinstance(dtype, str):  # (np.dtype("float64") equals "float64", and went on
        # to run.json and bench's result, which json refused: train() failed with a TypeError after it began)
        raise SpecError(f"{name} must be a float type's name, got {dtype!r}",
                        hint="choose " + ", ".join(f'"{t}"' for t in COMPILE_FLOAT_TYPES[:-1])
                             + f' or "{COMPILE_FLOAT_TYPES[-1]}" (a string)')
    if dtype is not None and dtype not in COMPILE_FLOAT_TYPES:
        raise unknown_choice(dtype, name, COMPILE_FLOAT_TYPES, SpecError)


# -------------------------------------------------------------------- objectives
def schedule_of(spec: S.Spec) -> list[str]:
    """The objectives' names in the order a training step runs them."""
    sched = (spec.train or {}).get("schedule")
    return list(sched) if sched else [o.name for o in objectives_of(spec)]


def require_objectives(spec: S.Spec, what: str) -> None:
    """A spec without a loss (nor train.objectives) compiles its inference graph only: nothing
    to train, time or check (training ended in 'no examples are left to train on', bench in a
    StopIteration traceback, gradcheck passed with an empty table)."""
    if not objectives_of(spec):
        raise SpecError(f"the spec has no loss, so there is nothing to {what}", None,
                        "add a 'loss:' (or train.objectives) to the spec")


def objectives_of(spec: S.Spec) -> list[Objective]:
    train = spec.train or {}
    mixed = MixedPrecision.of(train.get("mixed_precision"))
    for key in ("init_scale", "max_scale"):
        # the scale is float32 state: beyond its range the step's graph could not be made (an
        # unlocated error), and one that rounds to 0 unscales every gradient to 0/0
        value, f32 = getattr(mixed, key, None), np.finfo(np.float32)
        if value is not None and not float(f32.tiny) <= value <= float(f32.max):
            raise SpecError(f"mixed_precision {key} {value:g} is {'beyond' if value > 1 else 'below'} the range of float32, "
                            f"the type the loss scale is kept in", _loc(spec, "train", "mixed_precision", key),
                            "a loss scale between 1 and 2^24 (bfloat16's max_scale) is plenty; leave it out for the default")
    if mixed is not None and mixed.init_scale > mixed.max_scale:  # (the first growth would clamp it silently)
        raise SpecError(f"mixed_precision init_scale {mixed.init_scale:g} is above its max_scale {mixed.max_scale:g}",
                        _loc(spec, "train", "mixed_precision", "init_scale"),
                        "lower init_scale, or raise max_scale (float16 keeps it at 2^15 or less by default)")
    common = dict(clip_norm=train.get("clip_norm"), l1=float(train.get("l1", 0.0)), l2=float(train.get("l2", 0.0)),
                  mixed=mixed)
    default_opt = train.get("optimizer", {"sgd": {"lr": 0.01}})
    if "objectives" not in train:
        if spec.loss is None:
            return []
        opt = optimizer_from_config(default_opt, _loc(spec, "train", "optimizer"))
        return [Objective("main", spec.loss, ["*"], opt, loc=spec.loss.loc, declared=False, **common)]
    out = []
    graph_names = {t for a in spec.graph for t in a.targets}
    for name, cfg in train["objectives"].items():
        loc = _loc(spec, "train", "objectives", name)
        loss_name = cfg["loss"]
        if loss_name == "loss" and spec.loss is not None:
            loss = spec.loss
        elif loss_name in graph_names:
            loss = S.Assign([loss_name], S.Name(loc=_loc(spec, "train", "objectives", name, "loss"), id=loss_name), loc)
        else:
            from spec.errors import did_you_mean

            raise SpecError(f"objective {name!r} names an unknown loss {loss_name!r}", _loc(spec, "train", "objectives", name, "loss"),
                            did_you_mean(loss_name, graph_names | {"loss"}) or "name a graph node or 'loss'")
        globs = cfg.get("params", "*")
        globs = [globs] if isinstance(globs, str) else list(globs)
        opt = optimizer_from_config(cfg.get("optimizer", default_opt), _loc(spec, "train", "objectives", name))
        out.append(Objective(name, loss, globs, opt, loc=loc,
                             clip_norm=cfg.get("clip_norm", common["clip_norm"]), l1=common["l1"], l2=common["l2"],
                             mixed=common["mixed"], every=int(cfg.get("every", 1))))  # (the schema takes 2.0 as an integer)
    schedule = list(train.get("schedule", []))
    for s in schedule:
        if s not in train["objectives"]:
            from spec.errors import did_you_mean

            raise SpecError(f"schedule names an unknown objective {s!r}", _loc(spec, "train", "schedule"),
                            did_you_mean(str(s), train["objectives"])
                            or f"name objectives of train.objectives: {', '.join(train['objectives'])}")
        if schedule.count(s) > 1:
            # a repeat would be the same step again: the same batch, random draws and Adam step count
            others = [o for o in train["objectives"] if o != s]
            raise SpecError(f"schedule names objective {s!r} {schedule.count(s)} times", _loc(spec, "train", "schedule"),
                            "each objective takes one step per batch: name each once, and for several steps of one per "
                            "step of another (a WGAN critic's n_critic of 5), give the other every: 5"
                            + (f" (train.objectives.{others[0]}.every)" if len(others) == 1 else ""))
    if all(o.every > 1 for o in out):
        raise SpecError("no objective takes a step on every update: the batches between their steps would "
                        "go unused", _loc(spec, "train", "objectives", out[0].name, "every"),
                        "leave every out of the objective that steps each batch (a critic), and give every: K to "
                        "the one that steps once per K of them (its generator)")
    left_out = [name for name in train["objectives"] if schedule and name not in schedule]
    if left_out:
        raise SpecError(f"schedule leaves out objective {left_out[0]!r}: it would never train", _loc(spec, "train", "schedule"),
                        "add it to the schedule, or remove the objective")
    return out


def _loc(spec, *path):
    try:
        return spec.locate(*path)
    except Exception:
        return None


# -------------------------------------------------------------------- graph builders
def _missing_batch_axis(low: Lowering, err: ShapeError) -> ShapeError:
    """A shape error in the loss of a spec that reads an input declared without the batch axis the
    other inputs have (x: {shape: [D]} beside y: {shape: [N]}): told at that input, where the fix is."""
    decls = [low.spec.inputs[n] for n in low.inputs if n in low.spec.inputs]
    batched = [d for d in decls if d.shape and isinstance(d.shape[0], str)]
    flat = [d for d in decls if d.shape and not any(isinstance(x, str) for x in d.shape)
            and d.dtype.startswith(("float", "bfloat"))]
    if not batched or len(flat) != 1:
        return err
    x, other = flat[0], batched[0]
    batch = other.shape[0]
    shown = [low.dim_name(d) for d in x.shape]
    return ShapeError(f"input {x.name!r} has no batch axis {batch}: it is declared [{', '.join(shown)}], while "
                      f"{other.name!r} is [{', '.join(low.dim_name(d) for d in other.shape)}]", x.loc,
                      f"declare {x.name} with shape [{', '.join([str(batch), *shown])}], the batch first")


def _scalar_loss(low: Lowering, obj_loss: S.Assign) -> Value:
    if id(obj_loss) in low.losses:
        return low.losses[id(obj_loss)]
    with at(obj_loss.loc):
        try:
            if isinstance(obj_loss.expr, S.Name) and obj_loss.expr.id in low._defs:
                loss = low.evaluate_name(obj_loss.expr.id)
            else:
                loss = low.eval(obj_loss.expr)
        except ShapeError as err:
            better = _missing_batch_axis(low, err)
            if better is err:
                raise
            raise better from err
    if not isinstance(loss, Value) or not is_float(loss.dtype) or loss.shape != ():
        what = loss.type if isinstance(loss, Value) else f"{len(loss)} values" if isinstance(loss, tuple) else repr(loss)
        raise ShapeError(f"the loss must be a float scalar, got {what}", obj_loss.expr.loc,
                         "reduce it, e.g. mean(...) or sum(...)")
    low.losses[id(obj_loss)] = loss
    return loss


def _tensor_entry(low: Lowering, a: S.Assign, kind: str) -> Value:
    """The value of a metric or an output: one tensor, or a number made one."""
    v = low.eval(a.expr)
    if isinstance(v, tuple):
        raise SpecError(f"{kind} {a.targets[0]!r} is {len(v)} values, not one tensor", a.expr.loc,
                        "name them in the graph ('a, b: ...') and give the one you want")
    if isinstance(v, (bool, int, float)) or (isinstance(v, list) and all(
            isinstance(i, (bool, int, float)) for i in v)):
        v = low.graph.lift(v)
    if not isinstance(v, Value):
        if isinstance(v, list):
            raise SpecError(f"{kind} {a.targets[0]!r} must be a tensor or a number, not a list of tensors",
                            a.expr.loc, f"give each tensor its own {kind}")
        example = ("one number per batch, e.g. mean(argmax(logits, axis=-1) == y), or remove the entry"
                   if kind == "metric" else "e.g. softmax(logits)")
        raise SpecError(f"{kind} {a.targets[0]!r} must be a tensor or a number, not {v!r}", a.expr.loc,
                        f"write an expression over the graph's values, {example}")
    return v


def _metrics(low: Lowering, spec: S.Spec) -> dict[str, Value]:
    out = {}
    for m in spec.metrics:
        v = _tensor_entry(low, m, "metric")
        if v.shape != ():
            raise ShapeError(f"metric {m.targets[0]!r} must be a scalar, got {v.type}", m.expr.loc, "reduce it, e.g. mean(...)")
        # a mixed-precision step reports a float32 metric (a count past 65504) as it is, not through its half type
        wide = low.graph.mixed_precision and is_float(v.dtype) and v.dtype not in HALF_TYPES
        out[m.targets[0]] = v if wide else low.graph.cast(v, low.graph.float_dtype)
    return out


class _Builder:
    """Collects the named inputs and outputs of one emitted graph."""

    def __init__(self, graph: Graph, model_name: str):
        self.g = graph
        self.model_name = model_name
        self.outputs: list[tuple[str, str, Value]] = []

    def out(self, name, role, v):
        self.outputs.append((name, role, v))

    def emit(self, kind: str, optimize_graph: bool, doc: str, objective=None) -> CompiledGraph:
        values = [v for _, _, v in self.outputs]
        least = least_sizes(self.g, values)  # (before the rewrites, which may fold its slices away)
        if optimize_graph:
            rewrite_forward(values)
            values = optimize(values)
            # The training step runs on the spec's batches; deployment graphs see batches of any size.
            emission_rewrites(values, self.g.batch_size if kind.startswith(("train", "grads")) else None)
        sizes_from_inputs_read(values, {gi.value.id for gi in self.g.inputs.values() if gi.kind == "input"})
        outs = [(n, v) for (n, _, _), v in zip(self.outputs, values)]
        needed = {v.id for node in producers_of(values) for v in node.inputs} | {v.id for v in values}
        ins = []
        for name, gi in self.g.inputs.items():
            if gi.value.id in needed:
                ins.append((name, gi))
        model = emit_model(self.g, [(n, gi.value) for n, gi in ins], outs, name=f"{self.model_name}_{kind}", doc=doc)
        return CompiledGraph(
            kind,
            model,
            [GraphIO(n, gi.kind, gi.value.dtype, list(gi.value.shape)) for n, gi in ins],
            [GraphIO(n, role, v.dtype, list(v.shape)) for (n, role, _), v in zip(self.outputs, values)],
            objective,
            rows=independent_rows([gi.value for _, gi in ins if gi.kind == "input"], values) if kind == "infer" else None,
            least_sizes=least,
        )


# Ops whose rows the check below does not follow (loops, draws numbered by the element, copies,
# pads and scatters of rows, attention, batch statistics): a deployment graph that runs one on its
# inputs is predicted whole, as it was before.
_ROWS_UNFOLLOWED = {
    "scan", "random_bits", "uniform", "box_muller", "normal", "bernoulli", "dropout", "masking_noise",
    "gaussian_noise", "reparameterize", "pad", "index", "shift", "tile_rows", "tile_batch", "one_hot_blocks",
    "scatter_add", "scatter_add_along_axis", "precomputed", "dot_attention", "additive_attention", "batch_norm",
}


def independent_rows(data: list[Value], values: list[Value]) -> str | None:
    """The symbolic dim that numbers the examples of every data input and every output (their
    first), where each output row is computed from that row of the inputs alone, so that the graph
    gives the same rows run on all the inputs at once or in batches; else None."""
    from .higher import _mixes_examples

    if not data or not values:
        return None
    batch = data[0].shape[0] if data[0].rank else None
    if not isinstance(batch, str) or any(not v.rank or v.shape[0] != batch for v in (*data, *values)):
        return None
    depends = {v.id for v in data}
    for node in producers_of(values):
        flags = [v.id in depends for v in node.inputs]
        if not any(flags):
            continue
        name, ins = node.op.name, node.inputs
        if name in _ROWS_UNFOLLOWED:
            return None
        if name == "take":  # ids of the examples pick rows of a fixed table (an embedding's)
            if flags[0] and (flags[1] or int(node.attrs.get("axis", 0)) % ins[0].rank == 0):
                return None
        elif name == "slice" and node.attrs.get("axes") is None:  # (all axes from the first)
            if any(f and v.rank and v.shape[0] == batch for v, f in zip(ins, flags)):
                return None
        elif _mixes_examples(node, flags, batch):
            return None
        if any(not o.rank or o.shape[0] != batch or batch in o.shape[1:] for o in node.outputs):
            return None  # the examples moved off the first axis, or along another one too (h @ transpose(h))
        depends.update(o.id for o in node.outputs)
    return batch


def _gradients(low: Lowering, loss: Value, obj: Objective, trained: list[str], seed: Value | None = None) -> dict[str, Value]:
    """Gradients of the loss (times `seed`, when given) with the train section's penalties."""
    values = [low.params[n].value for n in trained]
    _refuse_truncated_away(low, loss, trained)
    grads = grad([loss], values, [seed] if seed is not None else None)
    out = {}
    for n, gv in zip(trained, grads):
        if gv is None:
            raise _unreached(n, low.params[n], obj, low.spec, loss)
        out[n] = gv
    if seed is not None:
        return out
    return _penalized(low, obj, out)


def _gradient_cut(loss: Value, param: Value):
    """The op without a gradient (argmax, a comparison, stop_gradient...) through which the loss
    reads `param`, or None when the loss does not read it at all."""
    order = producers_of([loss])
    live = _reaching([loss], cut_truncated=False)
    reads = {param.id}
    for node in order:
        if any(i.id in reads for i in node.inputs):
            reads.update(o.id for o in node.outputs)
    return next((node for node in order if node.op.nondiff and any(o.id in live for o in node.outputs)
                 and any(i.id in reads for i in node.inputs)), None)


_COMPARE_SYMBOLS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _unreached(name: str, param, obj: Objective, spec: S.Spec, loss: Value | None = None) -> GradientError:
    cut = _gradient_cut(loss, param.value) if loss is not None else None
    if cut is not None and cut.loc is not None:
        op = cut.op.name
        what = (f"the comparison {_COMPARE_SYMBOLS[op]}" if op in _COMPARE_SYMBOLS
                else "not" if op == "logical_not" else f"{op}()")
        hint = (f"remove stop_gradient() if {name} is to learn from this loss, or mark {name} 'trainable: false'"
                if op == "stop_gradient" else
                f"compute the loss from the scores {what} picks from (e.g. cross_entropy of them and the labels), "
                f"and keep {what} for metrics" if op in ("argmax", "argmin") else
                f"compute the loss from the float values before {what}, and keep {what} for metrics")
        return GradientError(f"{obj.its_loss} reads parameter {name!r} only through {what}, "
                             f"which passes no gradient", cut.loc, hint)
    declared = name in spec.params or any(name == f"{b}.{p}" for b, block in spec.blocks.items() for p in block.params)
    keep = ("mark it 'trainable: false'" if declared  # (a layer's weights have no declaration to mark)
            else f"keep it at its initial values with --freeze '{name.rsplit('.', 1)[0]}.*' (freeze= in the Python API)")
    ways = ["use it in the loss", keep] + (["leave it out of the objective's params"] if obj.declared else [])
    return GradientError(f"parameter {name!r} never reaches {obj.its_loss}", param.loc,
                         ", ".join(ways[:-1]) + (", or " if len(ways) > 2 else " or ") + ways[-1])


def _refuse_unreached(check: Lowering, obj: Objective) -> None:
    """A parameter an objective trains that its loss never reads, as check_spec's gradients find
    it: the objective's graphs lower only what its loss and the metrics read, so a layer that only
    an output (or another objective's loss) reads was left out of them, and trained it not at all
    without a word, where flowgrad check refused the spec."""
    trained = trained_names(check.params, obj)
    if not trained:
        return  # (build_train says why)
    loss = _scalar_loss(check, obj.loss)
    _refuse_truncated_away(check, loss, trained)  # (which says why truncate= leaves one unreached)
    live = _reaching([loss], cut_truncated=False)
    for n in trained:
        if check.params[n].value.id not in live:
            raise _unreached(n, check.params[n], obj, check.spec, loss)


def _reaching(roots: list[Value], cut_truncated: bool) -> set[int]:
    """Ids of the values whose change moves `roots` (through differentiable ops). With `cut_truncated`,
    a scan's truncate=K cuts its initial states off where it runs more than K steps (or a symbolic
    number): the loop's gradient zeroes their cotangents, as an unrolled scan's stop_gradient does."""
    live = {v.id for v in roots}
    for node in reversed(producers_of(roots)):
        if node.op.nondiff or not any(o.id in live for o in node.outputs):
            continue
        ins = node.inputs
        if cut_truncated and node.op.name == "scan":
            ins = _scan_reaching(node, live)
        live.update(v.id for v in ins)
    return live


def _scan_reaching(node, live: set[int]) -> list[Value]:
    """The inputs of a scan node that move its live outputs, looking into its step: a truncate=K
    inside the step (a scan or a recurrent layer in the block a scan runs) cuts the initial states it
    reads off as its own does, so a parameter read only by them is not reached either."""
    body = node.attrs["body"]
    nc = len(body.carries)
    keep = [True] * len(node.inputs)
    outs = body.new_carries + body.extras
    if body.saved is None and len(outs) == len(node.outputs) == nc + len(body.extras):
        roots = {b.id: b for o, b in zip(node.outputs, outs) if o.id in live}
        while True:  # a state the step reads makes the step before's new state live
            inner = _reaching(list(roots.values()), cut_truncated=True) if roots else set()
            more = {b.id: b for c, b in zip(body.carries, body.new_carries) if c.id in inner and b.id not in roots}
            if not more:
                break
            roots.update(more)
        keep = [b.id in inner for b in body.carries + body.seqs + body.nonseqs]
    if node.attrs.get("truncate"):
        steps = node.inputs[nc].shape[0] if body.seqs else node.attrs.get("length")
        if not (isinstance(steps, int) and steps <= node.attrs["truncate"]):
            keep[:nc] = [False] * nc
    ins = [x for x, k in zip(node.inputs, keep) if k]
    return ins


def _refuse_truncated_away(low: Lowering, loss: Value, trained: list[str]) -> None:
    """A trained parameter that reaches the loss only through the initial state of a scan whose
    truncate=K cuts the gradient before the last K steps gets no gradient: unroll=true found it
    unreachable (an error that did not say why) and the loop gave it zeros without a word."""
    if not low.graph.truncated_inits:
        return
    live = _reaching([loss], cut_truncated=True)
    for n in trained:
        v = low.params[n].value
        if v.id in live:
            continue
        for init, k, steps, loc in low.graph.truncated_inits:
            if v.id in _reaching(init, cut_truncated=True):
                raise GradientError(
                    f"parameter {n!r} gets no gradient: it reaches the loss only through an initial state, which "
                    f"truncate={k} cuts off (the gradient flows back {k} of the {steps} steps)",
                    loc or low.params[n].loc,
                    f"truncate=K lets gradients flow back K steps, and the initial state is read before them: "
                    f"mark {n!r} trainable: false for a fixed initial state, or leave out truncate= to learn it")


def _penalized(low: Lowering, obj: Objective, out: dict[str, Value]) -> dict[str, Value]:
    """Penalties from the train section act on the gradient directly."""
    for n in out:
        p = low.params[n].input
        if obj.l2:
            out[n] = out[n] + obj.l2 * p
        if obj.l1:
            out[n] = out[n] + obj.l1 * low.graph.apply("sign", p)
    return out


def _apply_updates(g: Graph, obj: Objective, params: dict[str, Value], grads: dict[str, Value], states: dict[str, Value],
                   lr: Value, step: Value, fused: bool):
    """New params and optimizer state, with global-norm clipping first. The optimizer's step
    count t (Adam's bias corrections) counts the updates made: with mixed precision, steps
    skipped for overflowing gradients do not count, as in PyTorch's GradScaler."""
    t = g.cast(step, g.float_dtype) + 1.0
    if obj.mixed:
        t = t - states[f"loss_scale_skipped/{obj.name}"]
    names = list(grads)
    shapes = {n: tuple(params[n].shape) for n in names}
    if fused:
        def flat(vs):
            parts = [g.apply("reshape", v, shape=(-1,)) for v in vs]
            return g.apply("concat", *parts, axis=0) if len(parts) > 1 else parts[0]

        grads = {"*": flat([grads[n] for n in names])}
        params = {"*": flat([params[n] for n in names])}
    if obj.clip_norm:
        total = None
        for gv in grads.values():
            # float16 squares overflow past 255: a norm of inf would scale every gradient to 0
            wide = g.cast(gv, "float32") if gv.dtype == "float16" else gv
            s = g.apply("sum", wide * wide)
            total = s if total is None else total + s
        norm = g.apply("sqrt", total)
        scale = g.apply("minimum", g.lift(1.0, like=norm), obj.clip_norm / (norm + 1e-6))
        grads = {n: gv * (g.cast(scale, gv.dtype) if gv.dtype != scale.dtype else scale) for n, gv in grads.items()}
    new_params, new_states = {}, {}
    for n, gv in grads.items():
        key = obj.name if fused else state_key(obj, n)
        st = {s: states[f"{s}/{key}"] for s in obj.optimizer.state_names}
        p_new, st_new = obj.optimizer.update(params[n], gv, st, lr, t)
        new_params[n] = p_new
        for s, v in st_new.items():
            new_states[f"{s}/{key}"] = v
    if fused:
        new_params = _unflatten(g, new_params["*"], names, shapes)
    return new_params, new_states


def _skip_overflow(g: Graph, obj: Objective, params: dict, grads: dict, new_params: dict, states: dict, new_states: dict):
    """Dynamic loss scaling: keep the update only where every gradient is finite, and
    move the scale (see MixedPrecision). Returns the new parameters and states, and a scalar
    that is 0 for a kept step and NaN for a skipped one."""
    total = None
    for gv in grads.values():
        s = g.apply("sum", gv)
        total = s if total is None else total + s
    finite = g.apply("eq", total - total, g.lift(0.0, like=total))  # inf - inf and nan - nan are nan
    keep = lambda new, old: g.apply("where", finite, new, old)  # noqa: E731
    new_params = {n: keep(v, params[n]) for n, v in new_params.items()}
    new_states = {n: keep(v, states[n]) for n, v in new_states.items()}
    m = obj.mixed
    scale, steps = states[f"loss_scale/{obj.name}"], states[f"loss_scale_steps/{obj.name}"]
    zero = g.lift(0.0, like=steps)
    counted = g.apply("where", finite, steps + 1.0, zero)
    grow = g.apply("ge", counted, g.lift(float(m.growth_interval), like=steps))
    grown = g.apply("minimum", g.apply("where", grow, scale * 2.0, scale), g.lift(m.max_scale, like=scale))
    new_states[f"loss_scale/{obj.name}"] = g.apply("where", finite, grown, scale * 0.5)
    new_states[f"loss_scale_steps/{obj.name}"] = g.apply("where", grow, zero, counted)
    skipped = states[f"loss_scale_skipped/{obj.name}"]
    new_states[f"loss_scale_skipped/{obj.name}"] = g.apply("where", finite, skipped, skipped + 1.0)
    return new_params, new_states, total - total


def _unflatten(g: Graph, flat: Value, names: list[str], shapes: dict[str, tuple]) -> dict[str, Value]:
    sizes = [int(np.prod(shapes[n])) for n in names]
    parts = g.apply("split", flat, sections=sizes, axis=0) if len(names) > 1 else (flat,)
    parts = parts if isinstance(parts, tuple) else (parts,)
    return {n: g.apply("reshape", p, shape=tuple(shapes[n])) for n, p in zip(names, parts)}


def _add_state_inputs(g: Graph, params: dict[str, ParamInfo], obj: Objective) -> tuple[dict, Value, Value]:
    states = {name: g.input(name) if name in g.inputs else g.add_input(name, g.float_dtype, shape, kind="state")
              for name, shape in state_layout(params, obj)}
    lr = g.add_input("lr", g.float_dtype, (), kind="control")
    step = g.input("step") if "step" in g.inputs else g.add_input("step", "int64", (), kind="control")
    return states, lr, step


def step_float_type(spec: S.Spec, dtype: str) -> str:
    """The float type a training step computes in: under train.mixed_precision its half type
    (the parameters and optimizer state, the master weights, stay in `dtype`), else `dtype`."""
    mixed = MixedPrecision.of((spec.train or {}).get("mixed_precision"))
    return mixed.compute if mixed and dtype == "float32" else dtype


def _training_lowering(spec, obj, dtype):
    low = Lowering(spec, mode="train", float_dtype=obj.mixed.compute if obj.mixed else dtype, stored_dtype=dtype)
    g = low.graph
    g.rng_inputs()  # seed and step exist even when unused by randomness (step drives Adam)
    loss = _scalar_loss(low, obj.loss)
    metrics = _metrics(low, spec)
    return low, loss, metrics, _trained(spec, low, obj)


def _trained(spec, low: Lowering, obj: Objective) -> list[str]:
    trained = trained_names(low.params, obj)
    if not trained:
        # the lone loss's objective has no params: to point at
        where = (_loc(spec, "train", "objectives", obj.name, "params") if obj.declared else None) or obj.loc
        matched = [n for n, p in low.params.items() if p.kind == "param" and _matches(n, obj.param_globs)]
        frozen = [n for n in matched if low.params[n].trainable]  # (so kept fixed by freeze)
        if frozen:  # (its message blamed the objective's params for matching none)
            # (as the caller wrote it: flowgrad train --freeze '*' was told "freeze ['*']")
            raise SpecError(f"{obj.called} trains no parameters: {obj.frozen_as or obj.frozen} keeps all of "
                            f"its parameters fixed ({', '.join(frozen)})", None,
                            f"freeze fewer parameters ({obj.frozen_by}), so that "
                            + ("each objective trains at least one" if obj.declared else "some are trained"))
        if matched:
            raise SpecError(f"{obj.called} trains no parameters: all of its parameters are marked "
                            f"trainable: false ({', '.join(matched)})", where,
                            "mark one of them trainable" + (", or leave the objective out" if obj.declared else ""))
        if not obj.declared:  # (its params ['*'] are no words of the spec's: the spec has no parameter)
            raise SpecError(f"{obj.called} trains no parameters: the spec has none", where,
                            "compute the loss from a layer, such as dense(x, K), or from a parameter declared under params")
        raise SpecError(f"{obj.called} trains no parameters", where,
                        f"its params {obj.param_globs} match none of: {', '.join(low.params) or '(no parameters)'}")
    return trained


def build_train(spec, obj: Objective, dtype: str, optimize_graph=True, gradients_only=False) -> CompiledGraph:
    low, loss, metrics, trained = _training_lowering(spec, obj, dtype)
    g = low.graph
    if optimize_graph:  # before differentiation, so the gradient follows the cheaper form
        rewrite_forward([loss, *metrics.values()])
    if obj.mixed:
        if gradients_only:
            raise SpecError("mixed precision trains with one graph per step: gradient accumulation is not available",
                            _loc(spec, "train", "mixed_precision"), "leave out --accumulate (accumulate= in the Python API), or mixed_precision")
        scale = g.add_input(f"loss_scale/{obj.name}", dtype, (), kind="state")
        raw = _gradients(low, loss, obj, trained, seed=g.cast(scale, loss.dtype))  # (a loss the spec casts, or a count made float32)
        g.float_dtype = dtype  # the update runs on the stored (master) parameters
        grads = _penalized(low, obj, {n: g.cast(gv, dtype) * (1.0 / scale) for n, gv in raw.items()})
    else:
        grads = _gradients(low, loss, obj, trained)
    b = _Builder(low.graph, spec.name)
    reported_loss = g.cast(loss, dtype)
    if not gradients_only:
        states, lr, step = _add_state_inputs(g, low.params, obj)
        params = {n: low.params[n].input for n in trained}
        new_params, new_states = _apply_updates(g, obj, params, grads, states, lr, step, fused_update(low.params, obj))
        if obj.mixed:
            new_params, new_states, skipped = _skip_overflow(g, obj, params, grads, new_params, states, new_states)
            # a skipped step reports a NaN loss, the runtime's only mark of an overflow (it stops a
            # run that only overflows), whether the loss or only the gradients overflowed
            reported_loss = reported_loss + g.cast(skipped, dtype)
    b.out("loss", "loss", reported_loss)
    for k, v in metrics.items():
        b.out(k, "metric", g.cast(v, dtype) if is_float(v.dtype) else v)
    if gradients_only:
        for n, gv in grads.items():
            b.out(f"grad/{n}", "grad", gv)
        # A masked mean's batches weigh by their unmasked entries, not their rows, for the update
        # of K batches to be that of one batch K times larger: its count, where no parameter moves
        # it (a mean's count, its entries, goes with the rows).
        parts = ratio_parts(loss, batch_dims(spec))
        moved = {low.params[n].input.id for n in trained}
        if parts is not None and parts[1].producer.op.name != "numel" and \
                not any(v.id in moved for node in producers_of([parts[1]]) for v in node.inputs):
            b.out("loss/count", "part", parts[1])
            if parts[2] is not None:
                b.out("loss/floor", "part", parts[2])
    else:
        for n, v in new_params.items():
            b.out(f"next/{n}", "next", v)
        for n, v in new_states.items():
            b.out(f"next/{n}", "next", v)
    for n, v in g.buffer_updates.items():
        v = g.cast(v, dtype)
        if obj.mixed and n in g.running_averages:
            # a skipped step changes nothing: not the running averages either (a batch whose
            # activations overflowed would leave infinite ones for evaluation)
            v = g.apply("where", g.apply("eq", skipped, g.lift(0.0, like=skipped)), v, g.input(n))
        elif obj.mixed:
            # a carried state goes on with the data, skipped step or not, unless it overflowed:
            # an infinite state would overflow every later step
            finite = g.apply("eq", g.apply("sum", v - v), g.lift(0.0, like=v))  # inf - inf is nan
            v = g.apply("where", finite, v, g.input(n))
        b.out(f"next/{n}", "next", v)
    kind = ("grads" if gradients_only else "train") + ("" if obj.name == "main" else f"_{obj.name}")
    compiled = b.emit(kind, optimize_graph, f"{'gradients' if gradients_only else 'training step'} of objective {obj.name}",
                      obj.name)
    compiled.batch_statistics = list(g.batch_statistics)
    return compiled


def build_apply(spec, obj: Objective, dtype: str, params: dict[str, ParamInfo], optimize_graph=True) -> CompiledGraph:
    g = Graph(float_dtype=dtype, mode="train")
    # In the order the training step meets them (its lowering's, not the spec check's): a fused
    # update concatenates the parameters, and each slice of the flat optimizer state must belong
    # to the same parameter in both graphs.
    trained = _training_lowering(spec, obj, dtype)[3]
    pv = {n: g.add_input(n, dtype, params[n].shape, kind="param") for n in trained}
    gv = {n: g.add_input(f"grad/{n}", dtype, params[n].shape, kind="grad") for n in trained}
    states, lr, step = _add_state_inputs(g, params, obj)
    new_params, new_states = _apply_updates(g, obj, pv, gv, states, lr, step, fused_update(params, obj))
    b = _Builder(g, spec.name)
    for n, v in {**new_params, **new_states}.items():
        b.out(f"next/{n}", "next", v)
    kind = "apply" + ("" if obj.name == "main" else f"_{obj.name}")
    return b.emit(kind, optimize_graph, f"optimizer update of objective {obj.name}", obj.name)


def build_eval(spec, dtype, optimize_graph=True) -> CompiledGraph | None:
    objectives = objectives_of(spec)
    # A lone objective's loss is the run's loss: training reports it as train_loss, so validation
    # reports it as valid_loss (where it names a graph value, not the spec's loss, validation
    # reported no loss: best.npz followed the training loss, early stopping on valid_loss was refused).
    loss = objectives[0].loss if len(objectives) == 1 else spec.loss
    if loss is None and not spec.metrics and len(objectives) < 2:
        return None
    low = Lowering(spec, mode="eval", float_dtype=dtype)
    b = _Builder(low.graph, spec.name)
    scalars = {"loss": ("loss", _scalar_loss(low, loss))} if loss is not None else {}
    scalars.update({k: ("metric", v) for k, v in _metrics(low, spec).items()})
    if len(objectives) > 1:  # each objective's own loss, as training reports it (train_<objective>/loss)
        scalars.update({f"{o.name}/loss": ("metric", _scalar_loss(low, o.loss)) for o in objectives
                        if o.loss is not spec.loss})
    for k, (role, v) in scalars.items():
        b.out(k, role, v)
        parts = ratio_parts(v, batch_dims(spec))
        if parts is not None:  # (suffixes: an objective's loss is "<objective>/loss", whatever its name)
            b.out(f"{k}/sum", "part", parts[0])
            b.out(f"{k}/count", "part", parts[1])
            if parts[2] is not None:
                b.out(f"{k}/floor", "part", parts[2])
    return b.emit("eval", optimize_graph, "loss and metrics, dropout off")


def batch_dims(spec) -> set:
    """The symbolic dims that number the examples: the first of each input's dims, where it is one."""
    return {d.shape[0] for d in spec.inputs.values() if d.shape and isinstance(d.shape[0], str)}


def parse_dims(items) -> dict:
    """--dim NAME=SIZE flags (summary, bench) as {NAME: SIZE}; anything else is refused."""
    from spec.errors import FlowgradError

    dims = {}
    for item in items or []:
        name, _, value = item.partition("=")
        try:  # ('²' is a digit to isdigit, and int() refused it with a traceback)
            size = int(value) if value.strip().isdigit() else None
        except ValueError:
            size = None
        if not name.strip() or size is None:
            raise FlowgradError(f"--dim {item!r} is not NAME=INTEGER", hint="e.g. --dim T=64")
        dims[name.strip()] = size
    return dims


def dim_given(name, names: ArgNames, value=None) -> str:
    """A size given to a symbolic dim as the caller wrote it: --dim T=64, or dims['T'] = 64."""
    if names.flags:
        return f"--dim {name}" + ("" if value is None else f"={value}")
    return f"dims[{name!r}]" + ("" if value is None else f" = {value!r}")


def check_dims(spec, dims: dict | None, sizes: set | None = None, *, names) -> None:
    """Sizes given to symbolic dims (summary's and bench's --dim, the API's dims=): each names a
    symbolic dim of the spec's inputs (or one of `sizes`, that the spec's values have) other than
    the batch, and is a whole number of at least 1. `names`: the CLI's flags or the API's keywords,
    as the messages name them."""
    from runtime.checks import is_whole_number
    from spec.errors import FlowgradError, did_you_mean

    from .ir import dim_symbols

    def symbols(d):
        return dim_symbols(d) if isinstance(d, str) else []

    if dims is not None and not isinstance(dims, Mapping):  # (a list of "T=64" was read key by key)
        raise FlowgradError(f"dims must be a dict of dim name to size, got {type(dims).__name__}",
                            hint='e.g. dims={"T": 64}')
    batch = {p for decl in spec.inputs.values() if decl.shape for p in symbols(decl.shape[0])}
    symbolic = {p for decl in spec.inputs.values() for d in decl.shape for p in symbols(d)} | set(sizes or ())
    for name, value in (dims or {}).items():
        if name in batch:
            raise FlowgradError(f"{dim_given(name, names)}: {name} is the batch dim", hint=f"set it with {names('batch_size')}")
        if name not in symbolic and isinstance(name, str) and name in spec.dims:
            # (a dim of the spec's dims: section was told only of the inputs' symbolic dims, "none" for
            # the MLP's H, with no word of how to size it)
            fixed = f'load(spec, overrides=["dims.{name}={value}"])' if not names.flags else f"--set dims.{name}={value}"
            raise FlowgradError(f"{dim_given(name, names)}: {name} is the spec's dims.{name} ({spec.dims[name]}), not a symbolic dim "
                                "of its inputs", hint=f"set it in the spec, e.g. {fixed}")
        if name not in symbolic:
            raise FlowgradError(f"{dim_given(name, names)}: the spec's inputs have no symbolic dim {name!r}",
                                hint=did_you_mean(str(name), symbolic - batch)
                                or f"its symbolic dims besides the batch: {', '.join(sorted(symbolic - batch)) or 'none'}")
        if not is_whole_number(value) or value < 1:
            raise FlowgradError(f"{dim_given(name, names, value)}: a size must be a whole number of at least 1",
                                hint=f"e.g. {dim_given(name, names, 64)}")


def ratio_parts(v: Value, batch_dims: set) -> tuple[Value, Value, Value | None] | None:
    """(sum, count, floor) with v = sum / maximum(count, floor) (floor None: sum / count), when
    v is a mean over all the entries of a tensor of
    examples (one of its dims a symbolic batch dim, transposed or flattened as it may be) or a
    ratio of two sums, or of two means, over all entries of such tensors (a masked mean:
    sum(loss * mask) / sum(mask), mean(loss * mask) / mean(mask)), scaled by constants
    anywhere in it (100 * sum(hit * mask) / sum(mask), -sum(logp * mask) / sum(mask), a mean
    over log(2.0)), its count kept from 0 by a constant or not (sum(ce * m) / maximum(sum(m),
    1.0): the floor). Evaluation adds each batch's sum and count, so that such a metric over a
    dataset is the one over all its entries, whatever the batches; a batch's value weighted by
    its rows would count a token of a short batch as much as one of a long batch. The parts
    are at least float32: a count in float16 ends at 65504."""
    from .ops.reduce import reduce_axes

    g = v.graph
    wide = "float64" if v.dtype == "float64" else "float32"

    def full(node, name) -> bool:
        """A reduction of all entries of examples (a mean of per-batch values, such as a mean
        over the batch axis first, stays a batch value)."""
        if node is None or node.op.name != name:
            return False
        x = node.inputs[0]
        examples = any(isinstance(d, str) and any(part in batch_dims for part in d.split("*")) for d in x.shape)
        return examples and len(reduce_axes(node.attrs["axis"], x.rank)) == x.rank

    def constant(u: Value) -> bool:
        """A number computed from constants alone (0.5, log(2.0))."""
        return u.producer is not None and u.rank == 0 and all(
            i.producer is not None for n in producers_of([u]) for i in n.inputs)

    def terms(u: Value):
        """(kind, sum, count[, floor]): u = sum / count, a sum over examples ("sum", count None),
        a mean over them ("mean", count the entries) or a ratio of two sums ("ratio"; with a
        floor, sum / maximum(count, floor))."""
        p = u.producer
        if p is None or u.rank != 0:
            return None
        if full(p, "sum"):
            return "sum", g.cast(u, wide), None
        if full(p, "mean"):
            count = g.apply("numel", p.inputs[0], dtype=wide)
            return "mean", g.cast(u, wide) * count, count
        a = p.inputs[0] if p.inputs else None
        if p.op.name == "cast" and is_float(u.dtype) and a.dtype != "bool":  # (a count summed as int64)
            return terms(a)
        if p.op.name == "neg":
            t = terms(a)
            return t and (t[0], -t[1], *t[2:])
        if p.op.name == "mul":
            for a, c in (p.inputs, p.inputs[::-1]):
                t = terms(a) if constant(c) else None
                if t is not None:
                    return t[0], t[1] * g.cast(c, wide), *t[2:]
        if p.op.name == "div":
            a, c = p.inputs
            if constant(c):
                t = terms(a)
                return t and (t[0], t[1] / g.cast(c, wide), *t[2:])
            ta, tc = terms(a), terms(c)
            if ta is not None and tc is not None and ta[0] == tc[0] == "sum":
                return "ratio", ta[1], tc[1]
            guard = c.producer
            if ta is not None and ta[0] == "sum" and guard is not None and guard.op.name == "maximum":
                for s, floor in (guard.inputs, guard.inputs[::-1]):
                    ts = terms(s) if constant(floor) else None
                    if ts is not None and ts[0] == "sum":  # a count kept from 0: sum / maximum(count, 1.0)
                        return "ratio", ta[1], ts[1], g.cast(floor, wide)
            if ta is not None and tc is not None and ta[0] == tc[0] == "mean":
                # mean(a) / mean(c) = sum(a) / sum(c) * (entries of c / entries of a), a ratio that
                # tensors of examples keep from batch to batch
                return "ratio", ta[1] * (tc[2] / ta[2]), tc[1]
        return None

    if v.rank != 0 or not is_float(v.dtype):
        return None
    t = terms(v)
    return None if t is None or t[0] == "sum" else (t[1], t[2], t[3] if len(t) > 3 else None)


def build_infer(spec, dtype, optimize_graph=True) -> CompiledGraph | None:
    if not spec.outputs:
        return None
    low = Lowering(spec, mode="infer", float_dtype=dtype)
    g = low.graph

    def rng_inputs():  # deployment graphs draw from `seed` alone: step is fixed at 0
        if "seed" not in g.inputs:
            g.add_input("seed", "int64", (), kind="control")
        return g.input("seed"), g.const(np.asarray(0, dtype=np.int64))

    g.rng_inputs = rng_inputs
    b = _Builder(low.graph, spec.name)
    for a in spec.outputs:
        b.out(a.targets[0], "output", _tensor_entry(low, a, "output"))
    return b.emit("infer", optimize_graph, "deployment outputs")


# The graphs' own inputs and outputs besides the spec's (controls, the loss).
RESERVED_NAMES = ("lr", "step", "seed", "loss")


def _check_io_names(spec: S.Spec) -> None:
    """Graph inputs and outputs share one namespace in ONNX: a spec input, output or metric
    named like another, or like a control input or the loss, is a located error."""
    for name, decl in spec.inputs.items():
        if name in RESERVED_NAMES:
            raise SpecError(f"input {name!r} has the name of a graph's own {'output' if name == 'loss' else 'input'}",
                            decl.loc, f"{', '.join(RESERVED_NAMES)} are reserved: rename the input")
    # parameters are inputs of every graph (an output W beside a parameter W failed ONNX's check,
    # "'W' has been used as output names multiple times", in a traceback after check said OK)
    seen = {**{n: "a parameter" for n in spec.params}, **{n: "an input" for n in spec.inputs}}
    for kind, entries in (("output", spec.outputs), ("metric", spec.metrics)):
        for a in entries:
            for name, loc in zip(a.targets, a.target_locs or [a.loc] * len(a.targets)):
                if name in RESERVED_NAMES or name in seen:
                    taken = f"{seen[name]}'s" if name in seen else "a graph's own"
                    raise SpecError(f"{kind} {name!r} has {taken} name", loc,
                                    f"outputs, metrics, inputs and parameters need names of their own; "
                                    f"{', '.join(RESERVED_NAMES)} are reserved")
                seen[name] = f"an {kind}" if kind == "output" else f"a {kind}"


def check_float_types(spec: S.Spec, dtype: str | None = None) -> None:
    """What the spec's objectives cannot train in the compile float type, refused alike by
    check, compile and summary (Adam's eps, 0 in float16)."""
    dtype = dtype or spec.train.get("dtype", "float32")
    for obj in objectives_of(spec):
        _check_float_type(spec, obj, dtype)


def _optimizer_loc(spec: S.Spec, obj: Objective):
    """Where an objective's optimizer is written: its own under train.objectives, else
    train.optimizer, else the objective (the default sgd). (locate gives a missing key's parent:
    a GAN's optimizer was pointed at the train section's first line.)"""
    train = spec.train or {}
    own = (train.get("objectives") or {}).get(obj.name) if obj.declared else None
    if isinstance(own, dict) and "optimizer" in own:
        return _loc(spec, "train", "objectives", obj.name, "optimizer")
    return _loc(spec, "train", "optimizer") if "optimizer" in train else obj.loc


def _check_float_type(spec: S.Spec, obj: Objective, dtype: str) -> None:
    """What an objective's training cannot do in the compile float type (check refuses it too)."""
    if obj.mixed and dtype != "float32":
        raise SpecError(f"mixed precision keeps float32 master weights, but the graphs are compiled for {dtype}",
                        _loc(spec, "train", "mixed_precision"), "leave train.dtype (and --dtype, or the Python API's dtype=) at float32")
    eps = obj.optimizer.hp.get("eps") if hasattr(obj.optimizer, "hp") else None
    if dtype == "float16" and eps is not None and np.float16(eps) == 0:
        raise SpecError(f"{type(obj.optimizer).__name__} divides by eps={eps:g}, which float16 rounds to 0: a "
                        f"zero gradient would step by 0/0", _optimizer_loc(spec, obj),
                        "train with mixed_precision: float16 (float32 weights and optimizer state) instead of "
                        "dtype float16, or raise eps to 1e-4")
    lr = getattr(obj.optimizer, "hp", {}).get("lr")
    if dtype == "float16" and isinstance(lr, (int, float)) and np.float16(lr) == 0:  # (the step's lr input is float16)
        raise SpecError(f"lr={lr:g} is 0 in float16: no step would move a weight", _optimizer_loc(spec, obj),
                        "train with mixed_precision: float16 (float32 weights and optimizer state) instead of dtype "
                        "float16, or raise lr above 3e-8 (float16's smallest positive value is 6e-8)")
    # A decay rate that float16 rounds to 1 keeps its average from ever taking a gradient: Adam's
    # bias correction 1 - beta^t is then 0 (beta2: no step moves a weight, silently; beta1: 0/0),
    # RMSProp's mean square stays 0.
    hp = getattr(obj.optimizer, "hp", {})
    for name in ("beta1", "beta2", "alpha"):
        rate = hp.get(name)
        if dtype == "float16" and isinstance(rate, (int, float)) and rate < 1 and np.float16(rate) == 1:
            raise SpecError(f"{type(obj.optimizer).__name__}'s {name}={rate:g} is 1 in float16, so 1 - {name} is 0: "
                            f"its running average would never take a gradient", _optimizer_loc(spec, obj),
                            f"train with mixed_precision: float16 (float32 weights and optimizer state) instead of "
                            f"dtype float16, or lower {name} to 0.9995 (float16's largest below 1) or less")


def _check_generated_ids(spec: S.Spec, low: Lowering) -> None:
    """The ids decoding feeds back into generate.input (bos, and every token the logits score)
    must index what that input indexes (an embedding's rows): beyond it, the exported graph
    failed in onnxruntime at run time (a Gather out of bounds)."""
    cfg = spec.generate
    bound = index_bounds(low.graph).get(cfg["input"])
    if bound is None:
        return
    rows, what = bound
    if "bos" in cfg and int(cfg["bos"]) >= rows:
        raise SpecError(f"generate.bos is {cfg['bos']}, but generate.input {cfg['input']!r} is read as ids below {rows} "
                        f"({what.format(rows)})", _loc(spec, "generate", "bos"),
                        f"give a bos id from 0 to {rows - 1}, or enlarge the table the tokens index")
    logits = low.env.get(cfg["logits"])
    vocab = logits.shape[-1] if isinstance(logits, Value) and logits.rank >= 1 else None
    if isinstance(vocab, int) and vocab > rows:
        raise SpecError(f"generate.logits {cfg['logits']!r} scores {vocab} tokens, but generate.input {cfg['input']!r} "
                        f"is read as ids below {rows} ({what.format(rows)}): a generated id from {rows} on could "
                        f"not be fed back", _loc(spec, "generate", "logits"),
                        "give the logits and the tokens' table one vocabulary size (one dim for both)")


def check_spec(spec: S.Spec, dtype: str | None = None, objectives: bool = True) -> Lowering:
    """Evaluate every expression once (shapes, names, ops) without emitting; with `objectives`, also
    what compiling would refuse: an objective's unknown loss, or parameters it cannot train."""
    dtype = dtype or spec.train.get("dtype", "float32")
    _check_io_names(spec)
    # what the training step computes in (check shows a mixed-precision step's values in its
    # half type, its master weights float32); without objectives, the compile float type
    low = Lowering(spec, mode="train", float_dtype=step_float_type(spec, dtype) if objectives else dtype, stored_dtype=dtype)
    low.evaluate_all()
    loss = _scalar_loss(low, spec.loss) if spec.loss is not None else None
    _metrics(low, spec)
    for a in spec.outputs:
        _tensor_entry(low, a, "output")
    if objectives:
        for obj in objectives_of(spec):
            _check_float_type(spec, obj, dtype)  # ("spec OK" for --dtype float16 and Adam, which compile refused; summary: check_float_types)
            obj_loss = loss if obj.loss is spec.loss else _scalar_loss(low, obj.loss)
            _gradients(low, obj_loss, obj, _trained(spec, low, obj))
    if spec.generate:  # what compiling the decoding graph would refuse
        from .generate import build_generator

        build_generator(spec, dtype)
        _check_generated_ids(spec, low)
    low.warnings = unused_entries(spec) + (_untrained_params(low.params, objectives_of(spec)) if objectives else [])
    return low


def _untrained_params(params: dict[str, ParamInfo], objectives: list) -> list[SpecWarning]:
    """Trainable parameters that no objective's params: globs take (nor --freeze leaves out): they
    keep their initial values, which may be meant (training a part of a model) but went unsaid.
    A spec without a loss has no objectives and trains nothing: it is an inference-only spec (train
    refuses it with its own message), so its parameters are not each "left out by a glob"."""
    if not objectives:
        return []
    trained = {n for obj in objectives for n in trained_names(params, obj)}
    frozen = {n for obj in objectives for n in params if _matches(n, obj.frozen)}
    return [SpecWarning(f"parameter '{n}' is trained by no objective: no params: glob takes it, so it keeps its "
                        "initial values", p.loc, "add it to an objective's params, or mark it 'trainable: false' "
                        "if it is meant to stay as it starts")
            for n, p in params.items()
            if p.kind == "param" and p.trainable and n not in trained and n not in frozen]


def index_bounds(g: Graph) -> dict[str, tuple[int, str]]:
    """Integer data inputs used as indices of a fixed-size axis (embedding ids, class labels),
    with that size: values at or above it would only fail (or gather garbage) at run time."""
    inputs = {gi.value.id: name for name, gi in g.inputs.items() if gi.kind == "input"}
    # ops whose output holds only values of their first input: a conditional generator's label
    # broadcast to its count, broadcast_like(label, zeros(count)), or ids sliced or transposed
    # (the bound was not recorded, and predict left an id beyond the table to onnxruntime's Gather)
    passthrough = {"unsqueeze", "squeeze", "reshape", "reshape_like", "identity", "cast", "flatten", "broadcast_like",
                   "transpose", "slice", "index"}

    def source(v):
        while v.id not in inputs and v.producer is not None:
            if v.producer.op.name in passthrough:
                v = v.producer.inputs[0]
            elif ignored_label(v) is not None:  # cross_entropy's labels with ignore_index's put to 0
                v = v.producer.inputs[1]
            else:
                break
        return inputs.get(v.id)

    bounds: dict[str, tuple[int, str]] = {}
    for node in g.nodes:
        name, size, what = None, None, ""
        if node.op.name == "take" and node.inputs[0].rank >= 1:
            axis = node.attrs.get("axis", 0) % node.inputs[0].rank
            name, size, what = source(node.inputs[1]), node.inputs[0].shape[axis], "it indexes a table of {} rows"
        elif node.op.name == "take_along_axis":
            axis = node.attrs.get("axis", -1) % node.inputs[0].rank
            name, size, what = source(node.inputs[1]), node.inputs[0].shape[axis], "the model has {} classes"
        elif node.op.name == "one_hot":
            name, size, what = source(node.inputs[0]), node.attrs["depth"], "its one_hot has {} classes"
        if name is not None and isinstance(size, int) and (name not in bounds or size < bounds[name][0]):
            bounds[name] = (int(size), what)
    return bounds


def ignored_label(v: Value) -> int | None:
    """k where v is where(ne(x, k), x, zeros_like(x)), cross_entropy's labels x with its
    ignore_index=k put to 0 (compiler/ops/loss.py), else None."""
    from .rewrites import const_value

    p = v.producer
    if p is None or p.op.name != "where":
        return None
    cond, x, other = p.inputs
    if cond.producer is None or cond.producer.op.name != "ne" or cond.producer.inputs[0] is not x or \
            other.producer is None or other.producer.op.name != "zeros_like" or other.producer.inputs[0] is not x:
        return None
    k = const_value(cond.producer.inputs[1])
    return None if k is None or np.ndim(k) else int(k)


def ignored_labels(g: Graph) -> dict[str, int]:
    """Integer data inputs that are labels of a cross_entropy with ignore_index=k, with k: the
    data may hold k (PyTorch's -100, or a class id beyond the classes) where a label is ignored."""
    inputs = {gi.value.id: name for name, gi in g.inputs.items() if gi.kind == "input"}
    out: dict[str, int] = {}
    for node in g.nodes:
        for v in node.outputs:
            k = ignored_label(v)
            if k is not None and node.inputs[1].id in inputs:
                out[inputs[node.inputs[1].id]] = k
    return out


def least_sizes(g: Graph, values: list[Value] | None = None) -> dict[str, dict]:
    """{symbolic dim: {"least": n, "slice": "[-1:-4:-2]", "at": where the spec writes it}} for the
    slices whose static size holds only where the dim has n entries or more (x[:, -1:-4:-2] reads
    2 steps of T where T >= 3, 1 where T is 2: the graph said 2, and the gradient's inputs failed
    in onnxruntime). Data with a shorter dim is refused before it runs, at the slice. A product
    of dims (reshape(x, [-1, 3]) of x [N, T, 6] is [2*N*T, 3]) is recorded as it is written, and
    checked with the sizes the data gives its dims (runtime.data.check_least_sizes). The slices in
    scan steps and block calls count: their dims are the graph's. `values`: the slices that
    compute them alone (a deployment graph's outputs), else all of the graph's.

    A dim's record also holds {"most": n, "rows": r, "rows_at": ...} where positions() of it
    (or of it less a constant, n - r) index a table of r rows (embedding(positions(x, axis=1),
    P, E), a learned position per step): data with a longer dim failed inside onnxruntime's
    Gather, and is refused before it runs, at the lookup."""
    from .ir import body_nodes, dim_shift
    from .ops.indexing import _slice_plan

    out: dict[str, dict] = {}
    todo = list(g.nodes if values is None else producers_of(values))
    while todo:
        node = todo.pop(0)
        if node.op.name == "take":
            _record_positions_lookup(node, out)
        if node.op.name != "slice":
            todo.extend(body_nodes(node) or [])
            continue
        for a in _slice_plan(node.attrs, node.inputs[0].shape):
            if a.kind not in ("symbolic", "shift"):
                continue
            # (a slice of T-1 that needs 3 entries needs T of 4)
            dim, least = dim_shift(a.dim) or (a.dim, 0)
            least += a.least
            if least > out.get(dim, {}).get("least", 0):
                out.setdefault(dim, {}).update(least=least, slice=a.text(), at=str(node.loc) if node.loc else "")
    return out


def _record_positions_lookup(take: Node, out: dict[str, dict]) -> None:
    """Records the most entries a symbolic dim may have where positions() of it are the indices
    of `take` (a lookup) into a table whose rows are known."""
    from .ir import dim_shift

    table, idx = take.inputs
    p = idx.producer
    while p is not None and p.op.name == "unsqueeze":
        p = p.inputs[0].producer
    if p is None or p.op.name != "positions":
        return
    x = p.inputs[0]
    rows = table.shape[normalize_axis(take.attrs["axis"], table.rank)]
    shift = dim_shift(x.shape[normalize_axis(p.attrs["axis"], x.rank)])
    if shift is None or not isinstance(rows, int):
        return
    dim, less = shift
    most = rows + less  # (positions of T-1 that index 12 rows allow T of 13)
    if dim in out and "most" in out[dim] and out[dim]["most"] <= most:
        return  # (the smallest table bounds the dim)
    out.setdefault(dim, {}).update(most=most, rows=rows, rows_at=str(take.loc) if take.loc else "")


def length_bounds(spec: S.Spec, g: Graph) -> dict[str, dict]:
    """Integer data inputs that count the steps of a sequence's rows, each with that sequence:
    {lengths input: {"of": the data input, "axis": its time axis, "least": 0 or 1}}. The spec
    ties them where it compares steps with lengths, `positions(x, axis=k) < lengths` (the mask
    that lengths= of rnn, lstm, gru and bidirectional builds, or one written out so); the
    bound is the size of that axis of x, found on the data input x is computed from. A length
    above it would be taken as all the steps, without a word. A row of no steps is refused
    (least 1) where its mask reaches an attention, whose softmax would then weigh the padding."""
    inputs = {gi.value.id: name for name, gi in g.inputs.items() if gi.kind == "input"}

    def sequence_input(v, axis):
        """The data input, and its axis, of the size `v` has at `axis` (itself, or one it is computed from)."""
        size, todo, seen = v.shape[axis], [v], set()
        while todo:
            v = todo.pop(0)
            if v.id in inputs:  # (axis 0 of a data input is its examples)
                at_axis = [i for i, d in enumerate(v.shape) if i and d == size]
                if at_axis:
                    return inputs[v.id], at_axis[0]
            elif v.producer is not None and v.id not in seen:
                seen.add(v.id)
                todo += v.producer.inputs
        return None

    attended = _attention_mask_inputs(spec)
    bounds: dict[str, dict] = {}
    for node in g.nodes:
        if node.op.name not in ("lt", "gt"):
            continue
        steps, lengths = (passed_from(v) for v in (node.inputs if node.op.name == "lt" else reversed(node.inputs)))
        if steps.producer is None or steps.producer.op.name != "positions" or lengths.id not in inputs:
            continue
        x = steps.producer.inputs[0]
        found = sequence_input(x, steps.producer.attrs.get("axis", 0) % x.rank)
        name = inputs[lengths.id]
        if found is not None and name not in bounds:  # (one sequence per lengths input: the first compared)
            bounds[name] = {"of": found[0], "axis": found[1], "least": 1 if name in attended else 0}
    return bounds


def _attention_mask_inputs(spec: S.Spec) -> set[str]:
    """The data inputs an attention's mask (additive_attention's or dot_attention's) is computed
    from, through graph entries, the blocks' included."""
    from .lower import names_in

    entries = {t: a.expr for a in [*spec.graph, *(b for k in spec.blocks.values() for b in k.graph)]
               for t in a.targets}
    todo = [c.kwargs.get("mask", c.args[3] if len(c.args) > 3 else None) for c in spec_calls(spec)
            if c.func in ("additive_attention", "dot_attention")]
    found, seen = set(), set()
    while todo:
        e = todo.pop()
        for name in names_in(e) if e is not None else ():
            if name in spec.inputs:
                found.add(name)
            elif name in entries and name not in seen:
                seen.add(name)
                todo.append(entries[name])
    return found


def unused_entries(spec: S.Spec) -> list[SpecWarning]:
    """A warning for each graph entry that no loss, metric, output, objective or generate section
    needs, directly or through other entries and blocks: located at the entry."""
    from .lower import blocks_in, names_in

    entries = {t: a for a in spec.graph for t in a.targets}
    read_by: dict[str, list] = {}  # name -> the entries that read it (used or not), in spec order
    for a in spec.graph:
        for n in names_in(a.expr):
            readers = read_by.setdefault(n.split(".", 1)[0], [])
            if not readers or readers[-1] is not a:  # (an entry that reads it twice, once)
                readers.append(a)
    root_exprs = [a.expr for a in [spec.loss, *spec.metrics, *spec.outputs] if a is not None]
    roots = [n for e in root_exprs for n in [*names_in(e), *blocks_in(e, spec.blocks)]]
    roots += [str(o.get("loss")) for o in (spec.train.get("objectives") or {}).values() if isinstance(o, dict)]
    roots += [v for v in (spec.generate or {}).values() if isinstance(v, str)]
    seen_blocks, used, todo = set(), set(), list(roots)
    while todo:
        name = todo.pop().split(".", 1)[0]
        if name in used:
            continue
        used.add(name)
        exprs = [entries[name].expr] if name in entries else []
        if name in spec.blocks and name not in seen_blocks:  # a block that runs reads outer names too
            seen_blocks.add(name)
            exprs += [b.expr for b in spec.blocks[name].graph]
            todo += spec.blocks[name].outputs
        for e in exprs:
            todo += names_in(e)
            todo += blocks_in(e, spec.blocks)
    out = []
    for a in spec.graph:
        if any(t in used for t in a.targets):
            continue
        what = ", ".join(a.targets)
        # every entry that reads it: naming only the first ("only 'b' reads it") was untrue of a
        # value that 'c' reads too
        readers = list(dict.fromkeys(", ".join(r.targets) for t in a.targets for r in read_by.get(t, []) if r is not a))
        if not readers:
            msg = f"graph entry '{what}' is never used"
        elif len(readers) == 1:
            msg = f"graph entry '{what}' reaches no loss, metric or output (only '{readers[0]}' reads it, and nothing uses that)"
        else:
            names = ", ".join(f"'{r}'" for r in readers[:-1]) + f" and '{readers[-1]}'"
            msg = f"graph entry '{what}' reaches no loss, metric or output (only {names} read it, and nothing uses them)"
        out.append(SpecWarning(msg, a.loc, "use it in the loss, a metric or an output, or remove it"))
    for name, block in spec.blocks.items():
        if name not in used:
            out.append(SpecWarning(f"block '{name}' is never run", block.loc,
                                   "call it (or scan it) from the graph, a loss, a metric or an output, or remove it"))
    for name, decl in spec.inputs.items():
        if name not in used:  # (data feeds it and every graph asks for nothing of it)
            out.append(SpecWarning(f"input '{name}' is never read", decl.loc,
                                   "use it in the graph, a loss, a metric or an output, or remove it"))
    return sorted(out, key=lambda w: (w.loc.line, w.loc.col) if w.loc else (0, 0))  # in the file's order


def spec_calls(spec: S.Spec):
    """Every call the spec writes: in its graph, its blocks' graphs, its loss, metrics and outputs."""
    entries = [*spec.graph, *(a for b in spec.blocks.values() for a in b.graph), *spec.metrics, *spec.outputs]
    for entry in entries + ([spec.loss] if spec.loss else []):
        yield from (x for x in _subexprs(entry.expr) if isinstance(x, S.Call))


def _subexprs(e):
    """An expression and every expression in it."""
    stack = [e]
    while stack:
        x = stack.pop()
        yield x
        if isinstance(x, S.Call):
            stack += [*x.args, *x.kwargs.values()]
        elif isinstance(x, (S.BinOp, S.Compare)):
            stack += [x.left, x.right]
        elif isinstance(x, S.UnaryOp):
            stack.append(x.operand)
        elif isinstance(x, S.Subscript):
            stack += [x.value, *x.index]
        elif isinstance(x, S.ListExpr):
            stack += x.items
        elif isinstance(x, S.Slice):
            stack += [p for p in (x.start, x.stop, x.step) if p is not None]


def compile_spec(spec: S.Spec, dtype: str | None = None, optimize_graph: bool = True,
                 graphs: tuple = ("train", "eval", "infer", "grads", "apply", "generate"), frozen: list[str] = (),
                 names: ArgNames | None = None) -> CompiledModel:
    """Compile every graph of a spec. `frozen` globs name parameters that no objective updates;
    `names`, required with them, says how its messages name them (freeze, or the CLI's --freeze)."""
    if frozen and names is None:
        raise TypeError("compile_spec: pass names (FLAGS or KEYWORDS) with frozen, which its messages name")
    t0 = time.perf_counter()
    dtype = dtype or spec.train.get("dtype", "float32")
    check = check_spec(spec, dtype, objectives=False)  # the graphs built below check the objectives
    objectives = objectives_of(spec)
    if frozen:
        # each glob on its own: a misspelt one beside one that matches froze less than asked, without a word
        for glob in frozen:
            if not any(_matches(n, [glob]) for n in check.params):
                raise SpecError(f"{names('freeze')} {glob!r} matches no parameter", None,
                                f"parameters: {', '.join(check.params)}")
        for o in objectives:
            o.frozen, o.frozen_by = list(frozen), names("freeze")
            o.frozen_as = (" ".join(f"{names('freeze')} {shlex.quote(g)}" for g in frozen) if names.flags
                           else f"{names('freeze')}={json.dumps(list(frozen), ensure_ascii=False)}")
    for obj in objectives:
        _refuse_unreached(check, obj)
    cm = CompiledModel(spec, dtype, check.params, objectives, index_bounds=index_bounds(check.graph),
                       ignored_labels=ignored_labels(check.graph),
                       length_bounds=length_bounds(spec, check.graph), least_sizes=least_sizes(check.graph))
    for obj in objectives:
        suffix = "" if obj.name == "main" else f"_{obj.name}"
        _check_float_type(spec, obj, dtype)
        if "train" in graphs:
            cm.graphs["train" + suffix] = build_train(spec, obj, dtype, optimize_graph)
        if obj.mixed:
            continue  # one graph per step: no separate gradient and update graphs to accumulate with
        if "grads" in graphs:
            cm.graphs["grads" + suffix] = build_train(spec, obj, dtype, optimize_graph, gradients_only=True)
        if "apply" in graphs:
            cm.graphs["apply" + suffix] = build_apply(spec, obj, dtype, check.params, optimize_graph)
    if "eval" in graphs:
        ev = build_eval(spec, dtype, optimize_graph)
        if ev is not None:
            cm.graphs["eval"] = ev
    if "infer" in graphs:
        inf = build_infer(spec, dtype, optimize_graph)
        if inf is not None:
            cm.graphs["infer"] = inf
    if "generate" in graphs and spec.generate:
        from .generate import build_generator

        cm.graphs["generate"] = build_generator(spec, dtype).emit("generate", optimize_graph, "autoregressive sampling")
    cm.compile_seconds = time.perf_counter() - t0
    return cm
