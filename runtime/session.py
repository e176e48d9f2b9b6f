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

from compiler.emit import OPSET, all_nodes, narrow_types, ort_disabled_optimizers, widen_unsupported_types
from spec.errors import ArgNames, FlowgradError, unknown_choice

from .ortlog import session_options


@contextlib.contextmanager
def _silenced_stderr():
    """Hide what native code writes to fd 2 (onnxruntime's CUDA loader errors). Native code
    writes to the process's fd 2 whatever sys.stderr is: a script that captured sys.stderr
    (contextlib.redirect_stderr, a notebook) has one without a file descriptor, and the errors
    it was spared went on to the terminal."""
    fd = 2
    try:
        saved = os.dup(fd)
    except OSError:  # (no fd 2 at all: nothing to hide)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            with contextlib.suppress(AttributeError, OSError, ValueError):
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
    opts = session_options()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    opts.log_severity_level = 4
    try:
        with _silenced_stderr():
            sess = ort.InferenceSession(_probe_model(), opts, providers=["CUDAExecutionProvider"])
        return sess.get_providers()[0] == "CUDAExecutionProvider"
    except Exception:
        return False


def check_device(device, name: str = "device", error: type[FlowgradError] = FlowgradError) -> None:
    """auto, cuda or cpu; the message names the keyword or flag the user wrote, as --checkpoint's
    and --dtype's do (it said "unknown device 'gpu'" to a user who wrote --device gpu)."""
    if device not in ("auto", "cuda", "cpu"):
        raise unknown_choice(device, name, ("auto", "cuda", "cpu"), error)


def pick_device(device: str, error: type[FlowgradError] = FlowgradError, *, names: ArgNames) -> str:
    """The provider `device` names: auto, cuda or cpu. `error` is the class raised (the export
    API's ExportArgumentError); `names`, how the refusal of cuda names the argument (train(device=
    "cuda") was told '--device cuda was asked for' and to use --device cpu, flags it never typed)."""
    check_device(device, error=error)
    if device == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if device == "cuda":
        raise error(
            f"{names.given(device='cuda')} was asked for, but onnxruntime cannot create its CUDA provider here",
            hint=f"install onnxruntime-gpu with CUDA 13 and cuDNN 9 libraries, or use {names.given(device='cpu')}",
        )
    return "cpu"


def _ort_errors() -> tuple:
    from onnxruntime.capi import onnxruntime_pybind11_state as st

    names = ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NoSuchFile", "InvalidProtobuf",
             "NotImplemented", "EPFail")
    return (RuntimeError, *(getattr(st, n) for n in names if hasattr(st, n)))


# What onnxruntime raises when a session cannot be made or run (IOBinding runs raise RuntimeError).
ORT_ERRORS = _ort_errors()


def make_session(model: onnx.ModelProto | bytes | str, device: str = "cpu", threads: int | None = None,
                 cuda_graph: bool = False) -> ort.InferenceSession:
    """`cuda_graph`: onnxruntime records a CUDA graph per `gpu_graph_id` run option and
    replays it (the model's shapes must be fixed, every node on the GPU)."""
    opts = session_options()
    # onnxruntime's own error lines would print before flowgrad's one-line error, which
    # carries their message
    opts.log_severity_level = 4
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # float32 stays float32 on a GPU, as on the CPU (onnxruntime would use TF32 products,
    # rounding their operands to 10 mantissa bits); mixed_precision is the faster, explicit path
    cuda = {"use_tf32": "0", **({"enable_cuda_graph": "1"} if cuda_graph else {})}
    providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    if device == "cuda":
        model = cuda_form(model)
    narrow = narrow_types(model)
    disabled = ort_disabled_optimizers(model)
    disabling = {"disabled_optimizers": disabled} if disabled else {}
    if not narrow:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=providers, **disabling)
    # onnxruntime has no kernel for some ops in the narrow types (bfloat16 ArgMax, Log and
    # comparisons on CUDA; nearly everything on the CPU): those run in float32 between Casts.
    # Which ops is learned from its refusals, one op type a try, and kept for later sessions.
    learned = _LACKING_KERNELS.setdefault((device, narrow), set())
    present = {n.op_type for n in all_nodes(model.graph)}
    while True:
        wide = onnx.ModelProto()
        wide.CopyFrom(model)
        if learned & present:
            widen_unsupported_types(wide, learned)
        try:
            return ort.InferenceSession(wide.SerializeToString(), opts, providers=providers, **disabling)
        except ORT_ERRORS as err:
            missing = _MISSING_KERNEL.search(str(err))
            op_type = missing and (missing.group(1) or missing.group(2))
            if not op_type:
                raise
            # an op the model lacks, or one already widened, comes from an expanded function
            more = {op_type} if op_type in present - learned else _function_ops(present) - learned
            if not more:
                raise
            learned |= more


# (device, narrow types) -> op types onnxruntime was seen to lack kernels for in those types.
_LACKING_KERNELS: dict[tuple[str, frozenset], set[str]] = {}


def _function_ops(op_types: set[str]) -> set[str]:
    """The ops among these that onnxruntime may expand into their ONNX function body (Softmax
    into ReduceMax, Sub, Exp, ...) when it has no kernel for them: an op missing a kernel
    that the model does not contain comes from one of those."""
    def expands(op_type):
        schema = onnx.defs.get_schema(op_type, OPSET)
        return schema.has_function or schema.has_context_dependent_function

    return {t for t in op_types if expands(t)}


# What onnxruntime says when no kernel of a provider takes a node's types.
_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(|Provider type for (\w+) node")


def with_fixed_dims(model: onnx.ModelProto, shapes: dict[str, tuple]) -> onnx.ModelProto:
    """A copy of the model whose symbolic dims take the sizes they have in `shapes` (input
    name -> shape), wherever they appear in its inputs and outputs."""
    sizes = {}
    for i in model.graph.input:
        if i.name in shapes:
            for d, n in zip(i.type.tensor_type.shape.dim, shapes[i.name]):
                if d.dim_param:
                    sizes[d.dim_param] = int(n)
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for v in [*fixed.graph.input, *fixed.graph.output]:
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in sizes:
                d.dim_value = sizes[d.dim_param]  # (setting the value clears the name: a oneof)
    return fixed


def unpool_by_scatter(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each MaxUnpool (onnxruntime's CUDA provider has none, so it would run
    on the CPU, and a step with a CPU node cannot be captured as a CUDA graph) written as a
    ScatterElements of the pooled values at their flat indices into zeros, where the windows
    tile the input (the only MaxUnpool the compiler emits), so that the indices are distinct."""
    from onnx import TensorProto, helper

    def tiling(n) -> bool:  # windows that tile the input: distinct indices, output = input * stride
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        return attrs.get("kernel_shape") == attrs.get("strides") and not any(attrs.get("pads", ()))

    if not any(n.op_type == "MaxUnpool" and tiling(n) for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(out).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input, *inferred.output]}
    nodes = []
    for n in out.graph.node:
        if n.op_type != "MaxUnpool" or not tiling(n):
            nodes.append(n)
            continue
        values, indices = n.input[0], n.input[1]
        t = f"{n.output[0]}_unpool"  # (output names are unique: so are these)
        out.graph.initializer.append(helper.make_tensor(t + "_flat", TensorProto.INT64, [1], [-1]))
        if len(n.input) > 2 and n.input[2]:
            shape = n.input[2]
        else:
            strides = next(helper.get_attribute_value(a) for a in n.attribute if a.name == "strides")
            out.graph.initializer.append(helper.make_tensor(t + "_k", TensorProto.INT64, [2 + len(strides)],
                                                            [1, 1, *strides]))
            shape = t + "_shape"
            nodes += [helper.make_node("Shape", [values], [t + "_in"]),
                      helper.make_node("Mul", [t + "_in", t + "_k"], [shape])]
        nodes += [
            helper.make_node("Reshape", [values, t + "_flat"], [t + "_v"]),
            helper.make_node("Reshape", [indices, t + "_flat"], [t + "_i"]),
            helper.make_node("ReduceProd", [shape], [t + "_n"], keepdims=1),
            helper.make_node("ConstantOfShape", [t + "_n"], [t + "_z"],
                             value=helper.make_tensor("zero", types[values], [1], [0])),
            helper.make_node("ScatterElements", [t + "_z", t + "_i", t + "_v"], [t + "_s"], axis=0),
            helper.make_node("Reshape", [t + "_s", shape], [n.output[0]]),
        ]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def cuda_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as CUDA sessions run it: exact shifts, row-major max-pool indices, weights-last
    products in loops (each rewrite's docstring says why)."""
    return weights_last_in_loops(max_pool_indices_row_major(shifts_in_float64(model)))


def _graphs_inner_first(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """A graph's loop bodies, each after those inside it, then the graph: rebuilding a graph's
    node list copies its nodes, bodies and all, so a body is rewritten before its graph is."""
    inner = [g for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
             for g in _graphs_inner_first(a.g)]
    return inner + [graph]


def _replace_nodes(graph: onnx.GraphProto, replace) -> None:
    """Each node n of the graph (not of its bodies) replaced by the nodes replace(n) gives,
    where it gives any (None keeps n)."""
    nodes = []
    for n in graph.node:
        new = replace(n)
        nodes.extend([n] if new is None else new)
    del graph.node[:]
    graph.node.extend(nodes)


def _fresh_names(model: onnx.ModelProto):
    """A function giving names no tensor of the model has (nor an earlier call gave)."""
    taken = {name for n in all_nodes(model.graph) for name in [*n.input, *n.output]}
    taken |= {v.name for v in [*model.graph.input, *model.graph.output, *model.graph.initializer]}

    def fresh(hint: str) -> str:
        name, i = hint, 1
        while name in taken:
            i += 1
            name = f"{hint}_{i}"
        taken.add(name)
        return name

    return fresh


def shifts_in_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each right BitShift of uint32 values by a constant scalar k (the hash
    behind random ops, compiler/ops/random.py) written as Cast(Cast(x, double) * 2**-k,
    uint32), exact for 32-bit values, in loop bodies too. onnxruntime's CUDA provider has no
    BitShift (a CPU node in a CUDA step costs copies and its CUDA-graph capture): CUDA
    sessions and exported files get this form."""
    from onnx import TensorProto, helper, numpy_helper

    amounts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.UINT32}

    def shift(n):
        if n.op_type != "BitShift" or len(n.input) != 2 or n.input[1] not in amounts:
            return None
        right = any(a.name == "direction" and a.s == b"RIGHT" for a in n.attribute)
        k = amounts[n.input[1]]
        return int(k) if right and k.ndim == 0 and int(k) < 32 else None

    if not any(shift(n) is not None for n in all_nodes(model.graph)):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    fresh = _fresh_names(out)

    scales = {}

    def exact(n):
        k = shift(n)
        if k is None:
            return None
        if k not in scales:  # an outer-scope initializer, read by loop bodies too
            scales[k] = fresh(f"shift_scale_{k}")
            out.graph.initializer.append(helper.make_tensor(scales[k], TensorProto.DOUBLE, [], [2.0 ** -k]))
        wide, scaled = fresh(f"{n.output[0]}_wide"), fresh(f"{n.output[0]}_scaled")
        return [helper.make_node("Cast", [n.input[0]], [wide], to=TensorProto.DOUBLE),
                helper.make_node("Mul", [wide, scales[k]], [scaled]),
                helper.make_node("Cast", [scaled], list(n.output), to=TensorProto.UINT32)]

    for graph in _graphs_inner_first(out.graph):
        _replace_nodes(graph, exact)
    # the shift amounts no node reads any more go too (onnxruntime warns about each unused
    # initializer whenever it loads the file)
    read = {name for n in all_nodes(out.graph) for name in n.input}
    read |= {v.name for v in [*out.graph.input, *out.graph.output]}
    kept = [t for t in out.graph.initializer if t.name not in amounts or t.name in read]
    if len(kept) < len(out.graph.initializer):
        del out.graph.initializer[:]
        out.graph.initializer.extend(kept)
    return out


def max_pool_indices_row_major(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each 2-D MaxPool whose Indices output is read written over x with its
    H and W swapped (kernel, strides, pads and dilations swapped too, storage_order=1) between
    Transposes, in loop bodies too. Pooled values and indices are the same; what changes is
    which of a window's tied maxima (a ReLU's zeros) the indices name. onnxruntime's CUDA
    MaxPool walks a window column by column and names the first maximum in that order, its
    CPU MaxPool (and PyTorch) the first row by row, where max pooling's gradient goes
    (compiler/ops/nn.py): over the swapped input, CUDA's column walk is the row walk, and
    storage_order=1 gives the index in x's own layout. CUDA sessions get this form."""
    from onnx import helper

    def swapped(n) -> bool:
        if n.op_type != "MaxPool" or len(n.output) < 2 or not n.output[1]:
            return False
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        return len(attrs["kernel_shape"]) == 2 and not attrs.get("storage_order", 0) \
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"")

    if not any(swapped(n) for n in all_nodes(model.graph)):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    fresh = _fresh_names(out)

    def swap(n):
        if not swapped(n):
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        kept = {k: v for k, v in attrs.items() if k in ("ceil_mode", "auto_pad")}
        pairs = {k: list(attrs[k])[::-1] for k in ("kernel_shape", "strides", "dilations") if k in attrs}
        if "pads" in attrs:  # [top, left, bottom, right] -> [left, top, right, bottom]
            t, l, b, r = attrs["pads"]
            pairs["pads"] = [l, t, r, b]
        xt, yt, it = fresh(f"{n.input[0]}_hw"), fresh(f"{n.output[0]}_hw"), fresh(f"{n.output[1]}_hw")
        return [helper.make_node("Transpose", [n.input[0]], [xt], perm=[0, 1, 3, 2]),
                helper.make_node("MaxPool", [xt], [yt, it], storage_order=1, **kept, **pairs),
                helper.make_node("Transpose", [yt], [n.output[0]], perm=[0, 1, 3, 2]),
                helper.make_node("Transpose", [it], [n.output[1]], perm=[0, 1, 3, 2])]

    for graph in _graphs_inner_first(out.graph):
        _replace_nodes(graph, swap)
    return out


def weights_last_in_loops(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each loop body's Transpose(MatMul(W^T, Transpose(x))) written back as
    MatMul(x, W), W the input of the outer Transpose that makes W^T (a new one where none
    does). compiler.rewrites.weights_first_in_loops writes products by a recurrent weight
    weights-first for onnxruntime's CPU MatMul, which packs its right operand on every call
    (a char_lstm step is 13% slower without it on the CPU); on CUDA the two Transposes are
    two more kernel launches each step, in a loop whose steps are bound by launches. CUDA
    sessions get this form."""
    from onnx import helper

    made = {o: n for n in all_nodes(model.graph) for o in n.output}

    def transposed(n) -> bool:
        return n is not None and n.op_type == "Transpose" and len(n.input) == 1 and \
            [list(a.ints) for a in n.attribute if a.name == "perm"] == [[1, 0]]

    def candidates(body):
        """(outer Transpose node, MatMul node, inner Transpose node, x, W^T) of each product."""
        here = {o: n for n in body.node for o in n.output}
        reads: dict[str, int] = {}
        for n in all_nodes(body):  # (a loop inside the step may read a value of it)
            for name in n.input:
                reads[name] = reads.get(name, 0) + 1
        for name in {o.name for o in body.output}:
            reads[name] = reads.get(name, 0) + 1
        for n in body.node:
            product = here.get(n.input[0]) if transposed(n) else None
            if product is None or product.op_type != "MatMul" or reads[product.output[0]] != 1:
                continue
            wt, xt = product.input
            inner = here.get(xt)
            if wt in here or not transposed(inner) or reads[xt] != 1:
                continue  # (a weight made in the step changes every step)
            yield n, product, inner, inner.input[0], wt

    def bodies(graph) -> list:
        return _graphs_inner_first(graph)[:-1]

    if not any(True for b in bodies(model.graph) for _ in candidates(b)):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    fresh = _fresh_names(out)
    top = {v.name for v in [*out.graph.input, *out.graph.initializer]} | {o for n in out.graph.node for o in n.output}
    weights: dict[str, str] = {}  # W^T -> W
    new_transposes: list[str] = []  # the W^T whose transpose no node makes yet, or one after the loops

    def weight_of(wt: str) -> str | None:
        """The name of W for a W^T read in a loop (None where the loop cannot read one)."""
        if wt in weights:
            return weights[wt]
        maker = made.get(wt)
        if transposed(maker):  # W^T = Transpose(W): read W itself
            weights[wt] = maker.input[0]
            return weights[wt]
        existing = [n for n in out.graph.node if transposed(n) and n.input[0] == wt]
        if existing:  # a Transpose(W^T) of the graph, moved up with the new ones (it may come after the loop)
            weights[wt] = existing[0].output[0]
            out.graph.node.remove(existing[0])
        elif wt in top:  # W^T made outside every loop: its transpose is made there once
            weights[wt] = fresh(f"{wt}_T")
        else:
            return None
        new_transposes.append(wt)
        return weights[wt]

    for body in bodies(out.graph):
        swaps = {}  # first output -> the nodes in place of its node
        for last, product, inner, x, wt in list(candidates(body)):
            w = weight_of(wt)
            if w is not None:
                swaps[last.output[0]] = [helper.make_node("MatMul", [x, w], list(last.output))]
                swaps[product.output[0]] = swaps[inner.output[0]] = []
        if not swaps:
            continue
        _replace_nodes(body, lambda n: swaps.get(n.output[0]) if n.output else None)
        still = {o for n in body.node for o in n.output}
        kept = [v for v in body.value_info if v.name in still]
        del body.value_info[:]
        body.value_info.extend(kept)
    for wt in new_transposes:  # each right after what makes W^T, before any loop reading it
        after = next((i + 1 for i, n in enumerate(out.graph.node) if wt in n.output), 0)
        out.graph.node.insert(after, helper.make_node("Transpose", [wt], [weights[wt]], perm=[1, 0]))
    return out


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
