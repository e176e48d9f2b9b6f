"""onnxruntime sessions: quiet device choice, thread settings, IOBinding.

`pick_device("auto")` takes CUDA when onnxruntime-gpu can really create its
CUDA provider, else the CPU, without letting onnxruntime's loader print its
loud errors about missing CUDA libraries.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from functools import lru_cache

import numpy as np
import onnx
import onnxruntime as ort

from compiler.emit import _all_nodes, widen_unsupported_types
from spec.errors import FlowgradError

ort.set_default_logger_severity(3)


@contextlib.contextmanager
def _silenced_stderr():
    """Hide what native code writes to fd 2 (onnxruntime's CUDA loader errors)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            sys.stderr.flush()
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10).SerializeToString()


@lru_cache(maxsize=None)
def cuda_available() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        with _silenced_stderr():
            sess = ort.InferenceSession(_probe_model(), opts, providers=["CUDAExecutionProvider"])
        return sess.get_providers()[0] == "CUDAExecutionProvider"
    except Exception:
        return False


def pick_device(device: str) -> str:
    if device not in ("auto", "cuda", "cpu"):
        raise FlowgradError(f"unknown device {device!r}", hint="choose auto, cuda or cpu")
    if device == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if device == "cuda":
        raise FlowgradError(
            "--device cuda was asked for, but onnxruntime cannot create its CUDA provider here",
            hint="install onnxruntime-gpu with CUDA 13 and cuDNN 9 libraries, or use --device cpu",
        )
    return "cpu"


def _ort_errors() -> tuple:
    from onnxruntime.capi import onnxruntime_pybind11_state as st

    names = ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NoSuchFile", "InvalidProtobuf",
             "NotImplemented", "EPFail")
    return (RuntimeError, *(getattr(st, n) for n in names if hasattr(st, n)))


# What onnxruntime raises when a session cannot be made or run (IOBinding runs raise RuntimeError).
ORT_ERRORS = _ort_errors()


def make_session(model: onnx.ModelProto | bytes | str, device: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # float32 stays float32 on a GPU, as on the CPU (onnxruntime would use TF32 products,
    # rounding their operands to 10 mantissa bits); mixed_precision is the faster, explicit path
    providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"] if device == "cuda" \
        else ["CPUExecutionProvider"]
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    widened: set[str] = set()
    while True:
        try:
            return ort.InferenceSession(data, opts, providers=providers)
        except ORT_ERRORS as err:
            # onnxruntime has no kernel for some ops in bfloat16 (ArgMax, Log, comparisons on
            # CUDA; nearly all on the CPU): those run in float32 between Casts
            missing = _MISSING_KERNEL.search(str(err))
            op_type = missing and (missing.group(1) or missing.group(2))
            if not op_type or not isinstance(model, onnx.ModelProto):
                raise
            # an op the model lacks, or one already widened, comes from an expanded function
            more = {op_type} if op_type in _op_types(model) - widened else _function_ops(model) - widened
            if not more:
                raise
            widened |= more
            wide = onnx.ModelProto()
            wide.CopyFrom(model)
            if not widen_unsupported_types(wide, widened):
                raise
            data = wide.SerializeToString()


def _op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in _all_nodes(model.graph)}


def _function_ops(model: onnx.ModelProto) -> set[str]:
    """The model's ops that onnxruntime may expand into their ONNX function body (Softmax into
    ReduceMax, Sub, Exp, ...) when it has no kernel for them: an op missing a kernel that the
    model does not contain comes from one of those."""
    from compiler.emit import OPSET

    def expands(op_type):
        schema = onnx.defs.get_schema(op_type, OPSET)
        return schema.has_function or schema.has_context_dependent_function

    return {t for t in _op_types(model) if expands(t)}


# What onnxruntime says when no kernel of a provider takes a node's types.
_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(|Provider type for (\w+) node")


def ort_device(device: str) -> tuple[str, int]:
    return ("cuda", 0) if device == "cuda" else ("cpu", 0)


def to_device(arr: np.ndarray, device: str) -> ort.OrtValue:
    kind, idx = ort_device(device)
    # np.ascontiguousarray would make a scalar (a loss scale) one-dimensional
    return ort.OrtValue.ortvalue_from_numpy(np.require(arr, requirements="C"), kind, idx)


def empty_like(v: ort.OrtValue, device: str) -> ort.OrtValue:
    kind, idx = ort_device(device)
    return ort.OrtValue.ortvalue_from_shape_and_type(v.shape(), _np_type(v), kind, idx)


def _np_type(v: ort.OrtValue):
    t = v.data_type()  # e.g. "tensor(float)"
    return {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
            "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}[t]
