"""Stepping compiled graphs with device-resident state.

Parameters, buffers and optimizer state live as OrtValues on the device.
A training step reads them as inputs and writes a second set of buffers as
the `next/*` outputs (IOBinding), then swaps the two sets; the binding of
each of the two arrangements is kept, so a step only refreshes the batch and
the control scalars. Nothing goes through NumPy inside the loop except the
batch (copied in once) and the scalar loss and metrics (copied out).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from compiler.training import CompiledGraph, CompiledModel

from .checks import MAX_THREADS, check_count, check_seed
from .session import ORT_ERRORS, empty_like, make_session, ort_device, to_device, unpool_by_scatter, with_fixed_dims


# Inputs held as device-resident state; "grad" inputs (gradient accumulation's sums) are
# fresh tensors each call, so they are bound on every run rather than kept in a binding.
STATE_ROLES = ("param", "buffer", "state", "grad")
# A step's bindings kept per runner and session: two alternating buffer sets, or more when
# several objectives swap their parameters on an uneven schedule.
KEPT_BINDINGS = 4
# CUDA graphs a runner may capture (each holds its own buffers): a schedule whose buffer sets
# never repeat would otherwise capture a new one every step. Past it, steps run uncaptured.
MAX_CUDA_GRAPHS = 8
# Batches of another shape in a row after which the captured session is made again for the
# new shape (a run resumed at an epoch's short last batch would otherwise keep that one).
RESPECIALISE_AFTER = 3


class GraphRunner:
    """One compiled graph in one session, fed from a shared state dict."""

    def __init__(self, graph: CompiledGraph, device: str, threads: int | None, prefix: str = "",
                 cuda_graphs: bool = True):
        """`prefix`: the graph's names for state, outputs and scalars carry it (a looped step graph).
        `cuda_graphs`: on CUDA, capture and replay steps where they can be (see run)."""
        self.graph = graph
        self.prefix = prefix
        self.device = device
        self.session = make_session(graph.model, device, threads)
        self.input_roles = {i.name: i.role for i in graph.inputs}
        self.input_dtypes = {i.name: np.dtype(i.dtype) for i in graph.inputs}
        cut = len(prefix)
        key = lambda n: n[cut:] if n.startswith(prefix) else n  # noqa: E731  (the state dict's keys drop the prefix)
        # (graph name, state key) pairs
        self.state_inputs = [(n, key(n)) for n, r in self.input_roles.items() if r in STATE_ROLES and r != "grad"]
        self.grad_inputs = [(n, key(n)) for n, r in self.input_roles.items() if r == "grad"]
        self.batch_inputs = [n for n, r in self.input_roles.items() if r == "input"]
        self.control_inputs = [n for n, r in self.input_roles.items() if r not in STATE_ROLES and r != "input"]
        self.scalar_outputs = [o for o in graph.outputs if o.role in ("loss", "metric", "part")]
        self.next_outputs = [(o.name, o.name[cut + len("next/"):]) for o in graph.outputs if o.role == "next"]
        self.other_outputs = [o.name for o in graph.outputs if o.role not in ("loss", "metric", "part", "next")]
        self._bindings: list[_Binding] = []  # the most recently used first
        self.threads = threads
        # On a GPU the steps are bound by launching kernels: a batch of the first batch's shape
        # runs a session specialised to that shape (its shape arithmetic folded away), which
        # onnxruntime records as a CUDA graph and replays; other shapes run `session`.
        self.capture = cuda_graphs and device == "cuda" and _capturable(self)
        self._captured: tuple[tuple, ort.InferenceSession] | None = None  # (batch shapes and dtypes, session)
        self._captured_bindings: list[_Binding] = []
        self._graphs = 0  # CUDA graphs captured (one per captured binding): the next one's id
        self._misses = 0  # batches in a row that did not fit the captured session

    def data_inputs(self) -> list[str]:
        return list(self.batch_inputs)

    @property
    def replays_cuda_graph(self) -> bool:
        """Whether steps replay a captured CUDA graph: a binding of the captured session ran
        three times or more (onnxruntime captures on the first or second run of a graph)."""
        return self.capture and any(b.runs >= 3 for b in self._captured_bindings)

    def run(self, state: dict[str, ort.OrtValue], spare: dict[str, ort.OrtValue], batch: dict[str, np.ndarray],
            control: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, ort.OrtValue]]:
        for _, key in self.next_outputs:
            if key not in spare:
                spare[key] = empty_like(state[key], self.device)
        bound = [state[key] for _, key in self.state_inputs] + [spare[key] for _, key in self.next_outputs]
        session = self._session_for(batch)
        captured = session is not self.session
        kept = self._captured_bindings if captured else self._bindings
        binding = next((b for b in kept if b.binds(bound)), None)
        if binding is None:
            if captured and self._graphs >= MAX_CUDA_GRAPHS:
                self._stop_capture()
                return self.run(state, spare, batch, control)
            binding = _Binding(self, bound, session)
        kept[:] = [binding] + [b for b in kept if b is not binding][:KEPT_BINDINGS - 1]
        for name, key in self.grad_inputs:
            binding.io.bind_ortvalue_input(name, state[key])
        binding.feed(batch, control)
        try:
            session.run_with_iobinding(binding.io, binding.run_options)
        except ORT_ERRORS:
            if not captured:
                raise
            # a capture onnxruntime could not make (or bad data, which the general session
            # reports in turn): this step and every later one run uncaptured
            self._stop_capture()
            return self.run(state, spare, batch, control)
        binding.runs += 1
        scalars, others = binding.results()
        # The freshly written buffers become the state; the old ones are reused next step.
        for _, key in self.next_outputs:
            state[key], spare[key] = spare[key], state[key]
        return scalars, others

    def _session_for(self, batch: dict[str, np.ndarray]) -> ort.InferenceSession:
        if not self.capture:
            return self.session
        arrays = [np.asarray(batch[n]) for n in self.batch_inputs]
        # a captured graph reads its buffers without checking them: a batch of another shape
        # or dtype must not reach it
        key = tuple((a.shape, a.dtype.newbyteorder("=")) for a in arrays)
        if self._captured is not None and self._captured[0] != key:
            self._misses += 1
            if self._misses < RESPECIALISE_AFTER:
                return self.session
            self._captured, self._captured_bindings = None, []
        self._misses = 0
        if self._captured is None:
            try:
                model = with_fixed_dims(self.graph.model, {n: a.shape for n, a in zip(self.batch_inputs, arrays)})
                self._captured = (key, make_session(unpool_by_scatter(model), self.device, self.threads, cuda_graph=True))
            except Exception:  # noqa: BLE001  (capture is a speed-up: e.g. a node only the CPU runs)
                self._stop_capture()
                return self.session
        return self._captured[1]

    def _stop_capture(self) -> None:
        self.capture, self._captured, self._captured_bindings = False, None, []


def _capturable(runner: GraphRunner) -> bool:
    """A CUDA graph replays fixed buffers: no control flow (onnxruntime cannot capture it),
    no per-run inputs (gradients), no outputs of run-dependent shape, and no evaluation
    sums and counts: a count made from shapes is computed on the host, and copying it to
    its bound output fails the capture and leaves the device unusable for the process
    (so the fallback to the general session cannot run either)."""
    control_flow = {"Loop", "Scan", "If"}
    return (not runner.grad_inputs and not runner.other_outputs and all(not o.shape for o in runner.scalar_outputs)
            and not any(o.role == "part" for o in runner.scalar_outputs)
            and not any(n.op_type in control_flow for n in runner.graph.model.graph.node))


class _Binding:
    """An IOBinding with one set of state buffers bound as inputs and another as the next/*
    outputs. Training alternates between two such sets, so each step only refreshes the
    batch and the control scalars (in place) instead of binding every tensor again: the
    Python side of a step is then a small share even of the smallest models' steps. The
    batch and control inputs live on the session's device: onnxruntime copies a CPU input
    to the GPU when it is bound, so a CPU buffer refreshed in place would never reach a GPU
    session, while a device buffer's in-place update writes the memory the binding reads.
    Outputs of run-dependent shape are bound again before each run: onnxruntime would
    otherwise write the next run's values into the previous run's result."""

    def __init__(self, runner: GraphRunner, bound: list[ort.OrtValue], session: ort.InferenceSession):
        self.runner = runner
        self.bound = bound  # held, so that their ids cannot be reused while this binding lives
        self.session = session
        self.io = io = session.io_binding()
        self.run_options = None
        self.runs = 0
        captured = session is not runner.session
        if captured:  # one CUDA graph per binding: its buffers are that graph's
            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry("gpu_graph_id", str(runner._graphs))
            runner._graphs += 1
        n_in = len(runner.state_inputs)
        for (name, _), v in zip(runner.state_inputs, bound[:n_in]):
            io.bind_ortvalue_input(name, v)
        for (name, _), v in zip(runner.next_outputs, bound[n_in:]):
            io.bind_ortvalue_output(name, v)
        # Static-shaped scalars (loss, metrics) land in buffers of their own; others (a looped
        # step's per-step values, gradients) are allocated by onnxruntime and fetched.
        self.scalars: dict[str, ort.OrtValue] = {}
        self.fetched = [o.name for o in runner.scalar_outputs if o.shape] + runner.other_outputs
        for o in runner.scalar_outputs:
            if not o.shape:  # a captured graph writes device memory only
                where = ort_device(runner.device) if captured else ("cpu", 0)
                self.scalars[o.name] = ort.OrtValue.ortvalue_from_shape_and_type([], np.dtype(o.dtype).type, *where)
                io.bind_ortvalue_output(o.name, self.scalars[o.name])
        self.fed: dict[str, tuple[ort.OrtValue, tuple, np.dtype]] = {}  # batch and control inputs

    def binds(self, bound: list[ort.OrtValue]) -> bool:
        return len(bound) == len(self.bound) and all(a is b for a, b in zip(bound, self.bound))

    def feed(self, batch: dict[str, np.ndarray], control: dict) -> None:
        dtypes = self.runner.input_dtypes
        values = [(n, batch[n]) for n in self.runner.batch_inputs]
        values += [(n, np.asarray(control[n], dtype=dtypes[n])) for n in self.runner.control_inputs]
        for name, a in values:
            # native byte order (the buffer is copied as raw bytes), C order, and a scalar stays
            # 0-d (ascontiguousarray would make it [1])
            a = np.asarray(a)
            a = np.require(a, dtype=a.dtype.newbyteorder("="), requirements="C")
            held = self.fed.get(name)
            if held is not None and held[1:] == (a.shape, a.dtype):
                held[0].update_inplace(a)
            else:  # a first step, or a batch of another size (the last of an epoch)
                self.fed[name] = (_owned(a, self.runner.device), a.shape, a.dtype)
                self.io.bind_ortvalue_input(name, self.fed[name][0])
        for name in self.fetched:
            self.io.bind_output(name, "cpu")

    def results(self) -> tuple[dict[str, float], dict[str, ort.OrtValue]]:
        cut = len(self.runner.prefix)
        scalars = {n[cut:]: _scalars(v.numpy()) for n, v in self.scalars.items()}
        others = {}
        if self.fetched:
            outs = dict(zip(self.fetched, self.io.get_outputs()[-len(self.fetched):]))
            scalars.update({o.name[cut:]: _scalars(outs[o.name].numpy()) for o in self.runner.scalar_outputs if o.shape})
            others = {n: outs[n] for n in self.runner.other_outputs}
        return scalars, others


def _owned(a: np.ndarray, device: str) -> ort.OrtValue:
    """An OrtValue on `device` with its own copy of a: updating it in place never writes into a."""
    v = ort.OrtValue.ortvalue_from_shape_and_type(list(a.shape), a.dtype.type, *ort_device(device))
    v.update_inplace(np.require(a, requirements="C"))
    return v


class Trainer:
    def __init__(self, cm: CompiledModel, device: str = "cpu", threads: int | None = None,
                 state: dict[str, np.ndarray] | None = None, seed: int = 0, cuda_graphs: bool = True):
        check_count("threads", threads, most=MAX_THREADS)  # (threads=2.5 was onnxruntime's TypeError)
        check_seed(seed)
        self.cm = cm
        self.device = device
        self.seed = seed
        init = cm.initial_state(seed) if state is None else state
        self.state = {k: to_device(np.asarray(v, dtype=_dtype_of(cm, k, v)), device) for k, v in init.items()}
        self.spare: dict[str, ort.OrtValue] = {}
        self.objectives = {o.name: o for o in cm.objectives}
        self.runners: dict[str, GraphRunner] = {}
        self.threads = threads
        self.cuda_graphs = cuda_graphs

    def runner(self, kind: str) -> GraphRunner:
        if kind not in self.runners:
            self.runners[kind] = GraphRunner(self.cm.graphs[kind], self.device, self.threads, cuda_graphs=self.cuda_graphs)
        return self.runners[kind]

    def train_step(self, objective: str, batch: dict[str, np.ndarray], lr: float, step: int) -> dict[str, float]:
        kind = "train" if objective == "main" else f"train_{objective}"
        control = {"lr": lr, "step": step, "seed": self.seed}
        scalars, _ = self.runner(kind).run(self.state, self.spare, batch, control)
        return scalars

    def train_steps(self, objective: str, batches: list[dict[str, np.ndarray]], lrs: list[float], step: int) -> list[dict[str, float]]:
        """len(batches) training steps in one session call (the step graph inside a Loop; see
        compiler/multistep.py), from `step` on; returns each step's loss and metrics."""
        from compiler.multistep import PREFIX, multi_step, stack_batches

        kind = ("train" if objective == "main" else f"train_{objective}") + "_steps"
        if kind not in self.runners:
            self.runners[kind] = GraphRunner(multi_step(self.cm.graphs[kind[:-len("_steps")]]), self.device, self.threads,
                                             prefix=PREFIX)
        runner = self.runners[kind]
        control = {PREFIX + "lr": np.asarray(lrs, dtype=runner.input_dtypes.get(PREFIX + "lr", np.float32)),
                   PREFIX + "step": step, "seed": self.seed}
        scalars, _ = runner.run(self.state, self.spare, stack_batches(batches), control)
        return [{k: float(v[i]) for k, v in scalars.items()} for i in range(len(batches))]

    def accumulate_step(self, objective: str, batches: list[dict[str, np.ndarray]], lr: float, step: int) -> dict[str, float]:
        """One update from the gradient of several batches together (gradients-only, then
        apply-only graph): each batch's mean gradient weighted by its rows, as one batch of all
        of them would give (an epoch's last batch may be shorter), or, for a loss that is a
        ratio of sums (a masked mean), by its count (the unmasked entries); each batch draws
        its own random numbers (dropout, noise), as the rows of one batch do."""
        suffix = "" if objective == "main" else f"_{objective}"
        grads_runner = self.runner("grads" + suffix)
        total: dict[str, np.ndarray] = {}
        dtypes: dict[str, np.dtype] = {}
        sums: dict[str, float] = {}
        rows = [len(next(iter(b.values()))) for b in batches]
        n, counted, floor = sum(rows), 0.0, 0.0
        for i, (batch, r) in enumerate(zip(batches, rows)):
            # the i-th batch's stream: the seed's high 32 bits moved by i (the first keeps the run's)
            seed = (self.seed + (i << 32) + 2**63) % 2**64 - 2**63
            control = {"step": step, "seed": seed, "lr": lr}
            scalars, grads = grads_runner.run(self.state, self.spare, batch, control)
            count = scalars.pop("loss/count", None)  # (its totals are divided by the counts' below)
            floor = scalars.pop("loss/floor", floor)  # (sum / maximum(count, 1.0): at least 1.0)
            # a ratio's batch is its sum over maximum(count, floor): times that, the sum's gradient
            # (weighed by a count below the floor, a batch moved the weights count / floor as far)
            w = r / n if count is None else max(count, floor) if count else 0.0
            if w:  # (a batch of no unmasked entry adds nothing, not its gradient of 0/0)
                for k, v in grads.items():
                    # summed in float32 at least: a float16 gradient times a count of thousands of
                    # tokens overflowed to inf (and stopped the run), where one large batch did not
                    g = v.numpy()
                    dtypes[k] = g.dtype
                    a = g.astype(np.promote_types(g.dtype, np.float32)) * w
                    total[k] = a if k not in total else total[k] + a
            for k, v in scalars.items():
                weight = w if k == "loss" else r / n  # the loss of one batch of all of them, as its gradient
                sums[k] = sums.get(k, 0.0) + (v * weight if weight else 0.0)
            counted += count or 0.0
        if count is not None:
            # over all the batches' entries, as one batch of them: a count kept from 0 (a floor) by
            # the loss is kept from 0 here too
            counted = max(counted, floor)
            if not total:  # no batch had an unmasked entry: the update is NaN, as the loss is (0 / 0),
                # or, where the loss keeps its count from 0, that of a gradient of 0
                total = {k: np.full_like(v.numpy(), 0.0 if counted else np.nan) for k, v in grads.items()}
            for k in total:
                total[k] /= counted or 1.0
            if "loss" in sums:
                sums["loss"] = sums["loss"] / counted if counted else float("nan")
        for k, v in total.items():
            self.state[k] = to_device(v.astype(dtypes.get(k, v.dtype), copy=False), self.device)
        self.runner("apply" + suffix).run(self.state, self.spare, {}, {"lr": lr, "step": step, "seed": self.seed})
        for k in total:
            del self.state[k]
        return sums

    def evaluate(self, batches) -> dict[str, float]:
        """The eval graph's loss and metrics over all the batches: a mean or a ratio of sums
        (compiler/training.py, ratio_parts) as its total sum over its total count, anything
        else as the mean of its batch values weighted by their rows."""
        if "eval" not in self.cm.graphs:
            return {}
        runner = self.runner("eval")
        parts = {o.name for o in runner.scalar_outputs if o.role == "part"}
        totals: dict[str, float] = {}
        floors: dict[str, float] = {}  # a ratio's constant least count (sum / maximum(count, 1.0))
        count = 0
        for batch in batches:
            n = len(next(iter(batch.values())))
            scalars, _ = runner.run(self.state, self.spare, batch, {"seed": self.seed, "step": 0})
            for k, v in scalars.items():
                if k.endswith("/floor") and k in parts:
                    floors[k] = v
                else:
                    totals[k] = totals.get(k, 0.0) + (v if k in parts else v * n)
            count += n
        means = {k: v / max(count, 1) for k, v in totals.items() if k not in parts}
        for k in means:
            if f"{k}/sum" in parts:
                means[k] = _ratio(totals[f"{k}/sum"], max(totals[f"{k}/count"], floors.get(f"{k}/floor", 0.0)))
        return means

    def carried(self) -> dict[str, np.ndarray]:
        """Copies of the states that stateful layers and scans carry from one batch to the next
        (none where the spec has none); an epoch starts them from zeros."""
        return {k: np.array(self.state[k].numpy(), copy=True) for k, p in self.cm.params.items() if p.carried}

    def carried_by(self, objective: str, accumulate: bool) -> set[str]:
        """The carried states that an objective's step moves on (those its loss reads)."""
        kind = ("grads" if accumulate else "train") + ("" if objective == "main" else f"_{objective}")
        return {k for _, k in self.runner(kind).next_outputs if self.cm.params.get(k) and self.cm.params[k].carried}

    def set_carried(self, values: dict[str, np.ndarray]) -> None:
        """Carried states set in place (the buffers the sessions' bindings hold)."""
        for k, a in values.items():
            self.state[k].update_inplace(np.require(a, dtype=_dtype_of(self.cm, k, a), requirements="C"))

    def state_numpy(self) -> dict[str, np.ndarray]:
        """A snapshot: copies, since on the CPU OrtValue.numpy() is a view of a buffer that
        a later step reuses for its outputs."""
        return {k: np.array(v.numpy(), copy=True) for k, v in self.state.items()}


def _ratio(total: float, count: float) -> float:
    return total / count if count else float("nan")  # as the metric on all entries at once: 0/0


def _scalars(a: np.ndarray):
    return float(a) if a.ndim == 0 else a


def _dtype_of(cm: CompiledModel, name: str, value) -> str:
    return cm.float_dtype if np.asarray(value).dtype.kind == "f" else np.asarray(value).dtype.name
