"""Stepping compiled graphs with device-resident state.

Parameters, buffers and optimizer state live as OrtValues on the device.
Each training step binds them as inputs and binds a second set of buffers
as the `next/*` outputs (IOBinding), then swaps the two sets: nothing goes
through NumPy inside the loop except the batch (copied in once) and the
scalar loss and metrics (copied out).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from compiler.training import CompiledGraph, CompiledModel

from .session import empty_like, make_session, to_device


class GraphRunner:
    """One compiled graph in one session, fed from a shared state dict."""

    def __init__(self, graph: CompiledGraph, device: str, threads: int | None, prefix: str = ""):
        """`prefix`: the graph's names for state, outputs and scalars carry it (a looped step graph)."""
        self.graph = graph
        self.prefix = prefix
        self.device = device
        self.session = make_session(graph.model, device, threads)
        self.binding = self.session.io_binding()
        self.input_roles = {i.name: i.role for i in graph.inputs}
        self.input_dtypes = {i.name: np.dtype(i.dtype) for i in graph.inputs}
        self.scalar_outputs = [o.name for o in graph.outputs if o.role in ("loss", "metric")]
        self.next_outputs = [o.name for o in graph.outputs if o.role == "next"]
        self.other_outputs = [o.name for o in graph.outputs if o.role not in ("loss", "metric", "next")]

    def data_inputs(self) -> list[str]:
        return [n for n, r in self.input_roles.items() if r == "input"]

    def run(self, state: dict[str, ort.OrtValue], spare: dict[str, ort.OrtValue], batch: dict[str, np.ndarray],
            control: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, ort.OrtValue]]:
        b = self.binding
        cut = len(self.prefix)
        for name, role in self.input_roles.items():
            if role in ("param", "buffer", "state", "grad"):
                b.bind_ortvalue_input(name, state[name[cut:] if name.startswith(self.prefix) else name])
            elif role == "input":
                b.bind_cpu_input(name, batch[name])
            else:
                b.bind_cpu_input(name, np.asarray(control[name], dtype=self.input_dtypes[name]))
        for name in self.scalar_outputs + self.other_outputs:
            b.bind_output(name, "cpu")
        for name in self.next_outputs:
            key = name[cut + len("next/"):]
            if key not in spare:
                spare[key] = empty_like(state[key], self.device)
            b.bind_ortvalue_output(name, spare[key])
        self.session.run_with_iobinding(b)
        outs = dict(zip(self.scalar_outputs + self.other_outputs + self.next_outputs, b.get_outputs()))  # bound order
        scalars = {n[cut:]: _scalars(outs[n].numpy()) for n in self.scalar_outputs}
        others = {n: outs[n] for n in self.other_outputs}
        # The freshly written buffers become the state; the old ones are reused next step.
        for name in self.next_outputs:
            key = name[cut + len("next/"):]
            state[key], spare[key] = spare[key], state[key]
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        return scalars, others


class Trainer:
    def __init__(self, cm: CompiledModel, device: str = "cpu", threads: int | None = None,
                 state: dict[str, np.ndarray] | None = None, seed: int = 0):
        self.cm = cm
        self.device = device
        self.seed = seed
        init = cm.initial_state(seed) if state is None else state
        self.state = {k: to_device(np.asarray(v, dtype=_dtype_of(cm, k, v)), device) for k, v in init.items()}
        self.spare: dict[str, ort.OrtValue] = {}
        self.objectives = {o.name: o for o in cm.objectives}
        self.runners: dict[str, GraphRunner] = {}
        self.threads = threads

    def runner(self, kind: str) -> GraphRunner:
        if kind not in self.runners:
            self.runners[kind] = GraphRunner(self.cm.graphs[kind], self.device, self.threads)
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
        """One update from the mean gradient of several batches (gradients-only, then apply-only graph)."""
        suffix = "" if objective == "main" else f"_{objective}"
        grads_runner = self.runner("grads" + suffix)
        total: dict[str, np.ndarray] = {}
        sums: dict[str, float] = {}
        for i, batch in enumerate(batches):
            control = {"step": step, "seed": self.seed, "lr": lr}
            scalars, grads = grads_runner.run(self.state, self.spare, batch, control)
            for k, v in grads.items():
                a = v.numpy()
                total[k] = a.copy() if k not in total else total[k] + a
            for k, v in scalars.items():
                sums[k] = sums.get(k, 0.0) + v
        n = len(batches)
        for k, v in total.items():
            self.state[k] = to_device(v / n, self.device)
        self.runner("apply" + suffix).run(self.state, self.spare, {}, {"lr": lr, "step": step, "seed": self.seed})
        for k in total:
            del self.state[k]
        return {k: v / n for k, v in sums.items()}

    def evaluate(self, batches) -> dict[str, float]:
        """Example-weighted means of the eval graph's loss and metrics."""
        if "eval" not in self.cm.graphs:
            return {}
        runner = self.runner("eval")
        totals: dict[str, float] = {}
        count = 0
        for batch in batches:
            n = len(next(iter(batch.values())))
            scalars, _ = runner.run(self.state, self.spare, batch, {"seed": self.seed, "step": 0})
            for k, v in scalars.items():
                totals[k] = totals.get(k, 0.0) + v * n
            count += n
        return {k: v / max(count, 1) for k, v in totals.items()}

    def state_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.state.items()}


def _scalars(a: np.ndarray):
    return float(a) if a.ndim == 0 else a


def _dtype_of(cm: CompiledModel, name: str, value) -> str:
    return cm.float_dtype if np.asarray(value).dtype.kind == "f" else np.asarray(value).dtype.name
