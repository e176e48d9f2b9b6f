"""Running emitted graphs for checking: onnxruntime where it has kernels,
onnx's reference evaluator where it does not (e.g. float64 Conv), and
finite-difference gradient checks shared by the tests and `flowgrad gradcheck`."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .emit import ort_disabled_optimizers


class Runner:
    """Runs one model; `backend` says which runtime took it."""

    def __init__(self, model: onnx.ModelProto, prefer: str = "ort"):
        self.model = model
        self.backend = "reference"
        self._sess = None
        if prefer == "ort":
            import onnxruntime as ort

            from runtime.ortlog import session_options

            opts = session_options()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            try:
                self._sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                                  disabled_optimizers=ort_disabled_optimizers(model))
                self.backend = "onnxruntime"
            except Exception as e:  # no kernel for some op/dtype: use the reference evaluator
                if "NOT_IMPLEMENTED" not in str(e) and "Could not find an implementation" not in str(e):
                    raise
        if self._sess is None:
            self._ref = reference_evaluator(model)
        self.output_names = [o.name for o in model.graph.output]

    def __call__(self, feeds: dict) -> dict:
        if self._sess is not None:
            outs = self._sess.run(None, feeds)
        else:
            outs = self._ref.run(None, feeds)
        return dict(zip(self.output_names, outs))


def sample_graph(op, sample, dtype: str | None = None):
    """One op applied to a sample of its table: (graph, its inputs in0, in1, ..., the op's outputs,
    the input arrays). The graph is float64 with the sample's arrays as they are, or, given a
    `dtype`, of that float type with the float arrays cast to it. tests/test_ops.py and
    benchmarks/cuda_ops.py build their graphs so."""
    from .ir import Graph

    g = Graph(float_dtype=dtype or "float64")
    arrays = [np.asarray(x) for x in sample.inputs]
    if dtype is not None:
        arrays = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    ins = [g.add_input(f"in{i}", a.dtype.name, a.shape) for i, a in enumerate(arrays)]
    out = g.apply(op.name, *ins, **sample.attrs)
    return g, ins, list(out) if isinstance(out, tuple) else [out], arrays


def weighted_sum(g, outs, rng):
    """sum_k sum(out_k * w_k) over the float outputs, each w_k drawn from `rng`: (that loss, or None
    where no output is a float, and the weights)."""
    from .ir import is_float

    loss, weights = None, []
    for v in outs:
        if not is_float(v.dtype):
            continue
        w = rng.normal(size=[int(d) for d in v.shape]).astype(v.dtype)
        weights.append(w)
        term = g.apply("sum", v * g.const(w))
        loss = term if loss is None else loss + term
    return loss, weights


def sample_grad_inputs(sample) -> list[int]:
    """The inputs of a sample that its gradient checks differentiate: the sample's grad_inputs, else
    its float inputs."""
    if sample.grad_inputs is not None:
        return list(sample.grad_inputs)
    return [i for i, x in enumerate(sample.inputs) if np.asarray(x).dtype.kind == "f"]


def reference_evaluator(model: onnx.ModelProto):
    """onnx's ReferenceEvaluator, with a Scan that also runs backwards, a GatherElements
    that picks among any number of entries and a LogSoftmax that keeps its digits.

    ONNX's Scan takes `scan_input_directions`/`scan_output_directions` (1: the sequence
    is read, or the output written, from its last step back); flowgrad emits reverse
    scans with them, and onnx.reference's Scan refuses them, so this one completes it.
    onnx.reference's GatherElements is numpy's choose, which takes at most 64 choices: a
    cross entropy over more than 64 classes (char_lstm's 97 characters) failed in it.
    onnx.reference's LogSoftmax is the log of its Softmax: an entry whose probability
    underflows (float32 logits 104 below the largest, float16 ones 17 below) came out -inf,
    so a cross entropy of confident logits was inf where onnxruntime gives its value; this
    one is x - max - log(sum(exp(x - max))), as the op is defined. onnx.reference's Erf
    rounds every value to float32 (1e-8 off in a float64 graph, noise to the finite
    differences of a gradient check); this one keeps float64's digits."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_scan import Scan as ReferenceScan

    class Scan(ReferenceScan):
        op_domain = ""

        def __init__(self, onnx_node, run_params):
            OpRun.__init__(self, onnx_node, run_params)
            n = self.num_scan_inputs
            self.read_backwards = [bool(d) for d in (self.scan_input_directions or [])] + [False] * n
            self.write_backwards = [bool(d) for d in (self.scan_output_directions or [])]
            self.scan_input_directions = self.scan_output_directions = None  # handled here
            self.input_directions_ = [0] * n
            self.input_axes_ = list(self.scan_input_axes or [0] * n)
            if any(self.input_axes_) or any(self.scan_output_axes or []):
                raise RuntimeError("Scan along axes other than 0 is not implemented here")
            self.input_names = self.body.input_names
            self.output_names = self.body.output_names

        def _run(self, *args, context=None, **attributes):
            n_state = len(args) - self.num_scan_inputs
            args = [a[::-1] if i >= n_state and self.read_backwards[i - n_state] else a for i, a in enumerate(args)]
            outs = list(super()._run(*args, context=context, **attributes))
            for k, backwards in enumerate(self.write_backwards):
                if backwards:
                    outs[n_state + k] = np.ascontiguousarray(outs[n_state + k][::-1])
            return tuple(outs)

    class GatherElements(OpRun):
        op_domain = ""

        def _run(self, data, indices, axis=None):
            return (np.take_along_axis(data, indices.astype(np.int64), axis=axis or 0),)

    class LogSoftmax(OpRun):
        op_domain = ""

        def _run(self, x, axis=None):
            axis = -1 if axis is None else axis
            if x.size == 0:
                return (x,)
            z = x - x.max(axis=axis, keepdims=True)
            with np.errstate(divide="ignore"):  # a row of -inf but one: log(1) = 0 for that one
                return ((z - np.log(np.exp(z).sum(axis=axis, keepdims=True))).astype(x.dtype),)

    class Erf(OpRun):
        op_domain = ""

        def _run(self, x):
            from .ops.elementwise import np_erf

            return (np_erf(x).astype(x.dtype),)

    return ReferenceEvaluator(model, new_ops=[Scan, GatherElements, LogSoftmax, Erf])


def reference_run(model: onnx.ModelProto, feeds: dict) -> dict:
    return Runner(model, prefer="reference")(feeds)


def fd_directional(f: Callable[[list], float], xs: list, direction: list, eps: float = 1e-6) -> float:
    """Central difference of scalar f along `direction` at xs."""
    plus = [np.asarray(x + eps * d) for x, d in zip(xs, direction)]
    minus = [np.asarray(x - eps * d) for x, d in zip(xs, direction)]
    return (f(plus) - f(minus)) / (2 * eps)


def relative_error(numeric: float, symbolic: float) -> float:
    """|numeric - symbolic| over the larger of the two, or over 1e-3 for derivatives near zero
    (where a relative error would judge the finite difference's own rounding)."""
    return abs(numeric - symbolic) / max(abs(numeric), abs(symbolic), 1e-3)


def check_gradients(
    f: Callable[[list], float],
    xs: list,
    grads: list,
    rng: np.random.Generator,
    n_directions: int = 2,
    n_coords: int = 3,
    eps: float = 1e-6,
) -> float:
    """Worst relative error between symbolic `grads` of scalar f at xs and
    central finite differences, along random directions and a few sampled
    coordinates (as JAX's check_grads and PyTensor's verify_grad do)."""
    worst = 0.0
    probes = []
    for _ in range(n_directions):
        probes.append([rng.normal(size=np.shape(x)) for x in xs])
    for _ in range(n_coords):
        k = int(rng.integers(len(xs)))
        if np.size(xs[k]) == 0:
            continue
        d = [np.zeros(np.shape(x)) for x in xs]
        flat = d[k].reshape(-1)
        flat[int(rng.integers(flat.size))] = 1.0
        probes.append(d)
    for d in probes:
        numeric = fd_directional(f, xs, d, eps)
        symbolic = float(sum(np.sum(g * di) for g, di in zip(grads, d)))
        err = relative_error(numeric, symbolic)
        if not np.isfinite(err):  # a nan or inf gradient (or loss) is a failure; max(worst, nan) kept worst
            err = float("inf")
        worst = max(worst, err)
    return worst
