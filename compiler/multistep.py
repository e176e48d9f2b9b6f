"""Several training steps per session call: the training graph inside an ONNX Loop.

`multi_step(graph)` wraps a compiled training step so that one run takes K
minibatches stacked on a new leading axis (each data input `x` becomes
`steps/x` of shape [K, ...]) and K learning rates (`steps/lr`, [K]), starts
at `steps/step`, and carries parameters, buffers and optimizer state (inputs
`steps/<name>`) from one iteration to the next inside the graph. It returns
the final state (`steps/next/<name>`) and each iteration's loss and metrics
stacked ([K], `steps/<name>`); outer names carry the prefix because a Loop
body may not reuse them. Nothing leaves the device between the K steps, and the per-step cost
outside onnxruntime (binding, Python) is paid once per call.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .emit import onnx_dtype, value_info
from .training import CompiledGraph, GraphIO

PREFIX = "steps/"


def multi_step(graph: CompiledGraph) -> CompiledGraph:
    model = graph.model
    step_graph = model.graph
    nexts = {o.name: o for o in graph.outputs if o.role == "next"}
    # State the step updates is carried; what it only reads (another objective's parameters)
    # is read from the outer graph under its own name, like the seed.
    carried = [i for i in graph.inputs if i.role in ("param", "buffer", "state") and f"next/{i.name}" in nexts]
    data = [i for i in graph.inputs if i.role == "input"]
    scalars = [o for o in graph.outputs if o.role in ("loss", "metric")]

    # Loop body: (iteration, condition, carried state...) -> (condition, new state..., scalars...).
    # Names inside the body must not repeat outer names, so the step's own inputs keep their
    # names there and the outer graph takes `steps/` names.
    it, cond = f"{PREFIX}iteration", f"{PREFIX}cond"
    pre: list[onnx.NodeProto] = []
    for i in data:
        pre.append(helper.make_node("Gather", [PREFIX + i.name, it], [i.name], axis=0))
    names = {i.name for i in graph.inputs}
    if "lr" in names:
        pre.append(helper.make_node("Gather", [PREFIX + "lr", it], ["lr"], axis=0))
    if "step" in names:
        pre.append(helper.make_node("Add", [PREFIX + "step", it], ["step"]))
    cond_out = f"{PREFIX}cond_out"
    post = [helper.make_node("Identity", [cond], [cond_out])]
    carry_outs, scalar_outs = [f"next/{i.name}" for i in carried], []
    # Each step's scalars leave as [1]: onnx.reference's Loop concatenates per-step outputs
    # where onnxruntime stacks them, and a reshape to [K] after the loop suits both.
    one = helper.make_tensor(f"{PREFIX}one", onnx.TensorProto.INT64, [1], [1])
    flat = helper.make_tensor(f"{PREFIX}flat", onnx.TensorProto.INT64, [1], [-1])
    for o in scalars:
        copy = f"{PREFIX}this_step/{o.name}"
        post.append(helper.make_node("Reshape", [o.name, one.name], [copy]))
        scalar_outs.append(copy)
    body = helper.make_graph(
        pre + list(step_graph.node) + post, f"{step_graph.name}_loop_body",
        [value_info(it, "int64", ()), value_info(cond, "bool", ())]
        + [value_info(i.name, i.dtype, i.shape) for i in carried],
        [value_info(cond_out, "bool", ())]
        + [value_info(n, i.dtype, i.shape) for n, i in zip(carry_outs, carried)]
        + [value_info(n, o.dtype, [1]) for n, o in zip(scalar_outs, scalars)],
        value_info=list(step_graph.value_info),
    )
    outer_nodes = []
    first = PREFIX + data[0].name if data else None
    count = f"{PREFIX}count"
    outer_nodes.append(helper.make_node("Shape", [first], [count + "_shape"], start=0, end=1))
    outer_nodes.append(helper.make_node("Squeeze", [count + "_shape"], [count]))
    true = helper.make_tensor(f"{PREFIX}true", onnx.TensorProto.BOOL, [], [True])
    finals = [f"{PREFIX}next/{i.name}" for i in carried]
    stacked = [PREFIX + o.name for o in scalars]
    loop_out = [f"{PREFIX}stacked/{o.name}" for o in scalars]
    outer_nodes.append(helper.make_node("Loop", [count, true.name] + [PREFIX + i.name for i in carried], finals + loop_out,
                                        body=body))
    outer_nodes += [helper.make_node("Reshape", [a, flat.name], [b]) for a, b in zip(loop_out, stacked)]

    outer_inputs = []
    io_inputs = []
    for i in graph.inputs:
        if i.role == "input":
            shape = ["K"] + list(i.shape)
            outer_inputs.append(value_info(PREFIX + i.name, i.dtype, shape))
            io_inputs.append(GraphIO(PREFIX + i.name, "input", i.dtype, shape))
        elif i.name == "lr":
            outer_inputs.append(value_info(PREFIX + "lr", i.dtype, ["K"]))
            io_inputs.append(GraphIO(PREFIX + "lr", "control", i.dtype, ["K"]))
        elif i.name == "step":
            outer_inputs.append(value_info(PREFIX + "step", i.dtype, []))
            io_inputs.append(GraphIO(PREFIX + "step", "control", i.dtype, []))
        elif i in carried:
            outer_inputs.append(value_info(PREFIX + i.name, i.dtype, i.shape))
            io_inputs.append(GraphIO(PREFIX + i.name, i.role, i.dtype, list(i.shape)))
        else:  # read-only state and controls such as the seed: the step reads them as they are
            outer_inputs.append(value_info(i.name, i.dtype, i.shape))
            io_inputs.append(i)
    outer_outputs = [value_info(n, i.dtype, i.shape) for n, i in zip(finals, carried)]
    outer_outputs += [value_info(n, o.dtype, ["K"]) for n, o in zip(stacked, scalars)]
    io_outputs = [GraphIO(n, "next", i.dtype, list(i.shape)) for n, i in zip(finals, carried)]
    io_outputs += [GraphIO(n, o.role, o.dtype, ["K"]) for n, o in zip(stacked, scalars)]
    outer = helper.make_graph(outer_nodes, f"{step_graph.name}_steps", outer_inputs, outer_outputs,
                              initializer=list(step_graph.initializer) + [true, one, flat])
    looped = helper.make_model(outer, opset_imports=list(model.opset_import), producer_name=model.producer_name,
                               doc_string=f"{model.doc_string} (K steps per run)")
    looped.ir_version = model.ir_version
    return CompiledGraph(graph.kind + "_steps", looped, io_inputs, io_outputs, graph.objective)


def stack_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """K minibatches as the looped graph's `steps/...` inputs."""
    return {PREFIX + k: np.stack([b[k] for b in batches]) for k in batches[0]}
