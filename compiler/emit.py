"""ONNX emission: IR graph -> onnx.ModelProto at one pinned opset.

Each op emits itself through the small builder below (`Emitter.add`);
this module only names values, collects constants as initializers and
wraps the result in a checked model.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .ir import Graph, Value, producers_of

OPSET = 21
# onnxruntime 1.31 accepts IR versions up to 13 while onnx 1.23 writes 14 by
# default; opset 21 belongs to IR version 10, which every runtime we target reads.
IR_VERSION = 10


def onnx_dtype(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def value_info(name: str, dtype: str, shape) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, int) else str(d) for d in shape]
    return helper.make_tensor_value_info(name, onnx_dtype(dtype), dims)


class Emitter:
    """Collects ONNX nodes and initializers with unique names."""

    def __init__(self, parent: "Emitter | None" = None):
        self.nodes: list[onnx.NodeProto] = []
        self.parent = parent
        # Ids of the IR values something in this graph reads (None: take every value as read),
        # so that an op with several outputs may skip computing those nothing reads.
        self.read: set[int] | None = None
        if parent is None:
            self.initializers: dict[str, onnx.TensorProto] = {}
            self._const_names: dict[tuple, str] = {}
            self._used: set[str] = set()
            # The next suffix to try for each hint: names are only ever added, so the first
            # free one never moves back, and a graph of n nodes named alike costs O(n), not O(n^2).
            self._next: dict[str, int] = {}
        else:
            # A subgraph (a Loop body) shares names and constants with the
            # outermost graph: constants live there and are read from outer scope.
            self.initializers = parent.initializers
            self._const_names = parent._const_names
            self._used = parent._used
            self._next = parent._next

    def child(self) -> "Emitter":
        return Emitter(self)

    def fresh(self, hint: str) -> str:
        hint = hint.replace("/", "_") or "v"
        i = self._next.get(hint, 1)
        name = hint if i == 1 else f"{hint}_{i}"
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._next[hint] = i
        self._used.add(name)
        return name

    def reserve(self, name: str) -> None:
        self._used.add(name)

    def add(self, op_type: str, inputs: Sequence[str], outputs=1, **attrs):
        """Add one ONNX node. `outputs` is a count (fresh names) or a list of names.
        Returns the output name, or the list of names when there are several."""
        if isinstance(outputs, int):
            outputs = [self.fresh(op_type.lower()) for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def const(self, value, dtype=None, name: str | None = None) -> str:
        """An initializer holding `value`; equal constants share one name."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if name is None and key in self._const_names:
            return self._const_names[key]
        name = name or self.fresh("c")
        self._used.add(name)
        self.initializers[name] = numpy_helper.from_array(arr, name)
        self._const_names.setdefault(key, name)
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))


def emit_nodes(e: Emitter, nodes, names: dict[int, str], claimed: dict[int, str] | None = None) -> None:
    """Emit IR nodes in order; `names` maps Value ids to ONNX names and is filled in."""
    for node in nodes:
        ins = [names[v.id] for v in node.inputs]
        outs = []
        for v in node.outputs:
            n = (claimed or {}).get(v.id) or e.fresh(v.name or node.op.name)
            names[v.id] = n
            outs.append(n)
        node.op.emit(e, node, ins, outs)


def emit_model(
    graph: Graph,
    inputs: Sequence[tuple[str, Value]],
    outputs: Sequence[tuple[str, Value]],
    initializers: dict[str, np.ndarray] | None = None,
    name: str = "flowgrad",
    doc: str = "",
    metadata: dict[str, str] | None = None,
    check: bool = True,
) -> onnx.ModelProto:
    """Emit the nodes that `outputs` need. `inputs` become graph inputs;
    `initializers` (name -> array) bind some of those inputs to fixed values
    (listed as initializers, not inputs)."""
    e = Emitter()
    names: dict[int, str] = {}
    for in_name, v in inputs:
        names[v.id] = in_name
        e.reserve(in_name)
    out_names = [n for n, _ in outputs]
    for n in out_names:
        e.reserve(n)

    nodes = producers_of([v for _, v in outputs])
    # An output computed by a node takes the output's name directly; an output
    # that is an input, a constant, or a second name for a value needs an Identity.
    claimed: dict[int, str] = {}
    identities: list[tuple[str, Value]] = []
    for out_name, v in outputs:
        if v.id in names or v.id in claimed or (v.producer is not None and v.producer.op.name == "constant"):
            identities.append((out_name, v))
        else:
            claimed[v.id] = out_name

    missing = [v for node in nodes for v in node.inputs if v.producer is None and v.id not in names]
    if missing:
        raise ValueError(f"graph inputs not provided for emission: {missing}")

    e.read = values_read(nodes, [v for _, v in outputs])
    emit_nodes(e, nodes, names, claimed)
    for out_name, v in identities:
        e.add("Identity", [names[v.id]], [out_name])

    init_protos = []
    graph_inputs = []
    for in_name, v in inputs:
        if initializers and in_name in initializers:
            arr = np.asarray(initializers[in_name], dtype=v.dtype)
            init_protos.append(numpy_helper.from_array(arr, in_name))
        else:
            graph_inputs.append(value_info(in_name, v.dtype, v.shape))
    used = _names_read(e.nodes) | {n for n, _ in outputs}
    constants = [t for n, t in e.initializers.items() if n in used]  # an op may have emitted one it then skipped
    g = helper.make_graph(
        e.nodes,
        name,
        graph_inputs,
        [value_info(n, v.dtype, v.shape) for n, v in outputs],
        initializer=init_protos + constants,
        doc_string=doc,
    )
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="flowgrad",
    )
    if metadata:
        helper.set_model_props(model, metadata)
    keep_zero_pads_out_of_pools(model)
    widen_unsupported_types(model)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def values_read(nodes, outputs) -> set[int]:
    """Ids of the values these IR nodes read, and of the graph's outputs."""
    return {v.id for n in nodes for v in n.inputs} | {v.id for v in outputs}


def _names_read(nodes) -> set[str]:
    """Every value name the nodes read, inside Loop bodies too."""
    names: set[str] = set()
    for n in nodes:
        names.update(n.input)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= _names_read(a.g.node)
                names.update(o.name for o in a.g.output)
    return names


_POOLS = ("MaxPool", "AveragePool")


def keep_zero_pads_out_of_pools(model: onnx.ModelProto) -> int:
    """A Pad of zeros that a MaxPool or AveragePool reads pads with -0.0 instead. onnxruntime's
    PadFusion (a rewrite it makes by default, in any session) folds a Pad whose fill is all zero
    bytes into the `pads` of the pool that reads it: a MaxPool then takes
    the zeros for its own padding, which never wins the max, so the pool of a zero-padded
    tensor (a conv_transpose whose output_padding adds zero rows, a spec's pad(...)) gave
    other values on onnxruntime than in the op's definition, in eval graphs and exports (a
    training step's MaxPool, which also returns its indices, is left alone); and the folded
    pads may reach the kernel, which onnxruntime refuses when it makes the session ('Pad
    should be smaller than kernel'). -0.0 equals 0.0 in every comparison and sum, and is not
    all zero bytes. A Pad that other nodes read as well gets a twin for the pools. Returns
    the number of pools whose Pad was changed."""
    graphs = list(all_graphs(model.graph))
    readers: dict[str, int] = {}
    for g in graphs:
        for n in g.node:
            for i in n.input:
                readers[i] = readers.get(i, 0) + 1
        for o in g.output:
            readers[o.name] = readers.get(o.name, 0) + 1
    consts = {t.name: t for t in model.graph.initializer}
    used = set(readers) | {o for g in graphs for n in g.node for o in n.output} | set(consts)
    dtypes = None
    count = 0
    for g in graphs:  # (PadFusion works within one graph: a Pad and the pool reading it)
        producer = {o: n for n in g.node for o in n.output}
        twins: dict[str, str] = {}
        for pool in [n for n in g.node if n.op_type in _POOLS]:
            pad = producer.get(pool.input[0])
            if pad is None or pad.op_type != "Pad" or (len(pad.input) > 3 and pad.input[3]):
                continue  # (a Pad of some axes: PadFusion leaves it)
            fill = pad.input[2] if len(pad.input) > 2 else ""
            if fill and (fill not in consts or numpy_helper.to_array(consts[fill]).tobytes().strip(b"\0")):
                continue  # a computed or non-zero fill: never folded
            if dtypes is None:
                inferred = onnx.shape_inference.infer_shapes(model)
                dtypes = {v.name: v.type.tensor_type.elem_type for typed in all_graphs(inferred.graph)
                          for v in [*typed.input, *typed.value_info, *typed.output]}
                dtypes.update({t.name: t.data_type for t in model.graph.initializer})
            elem = dtypes.get(pad.input[0])
            if not elem:
                continue
            minus_zero = f"pad_fill_minus_zero_{helper.tensor_dtype_to_np_dtype(elem).name}"
            if minus_zero not in consts:
                value = np.asarray(-0.0, dtype=helper.tensor_dtype_to_np_dtype(elem))
                consts[minus_zero] = numpy_helper.from_array(value, minus_zero)
                model.graph.initializer.append(consts[minus_zero])
            if readers.get(pad.output[0], 0) == 1:
                del pad.input[2:]
                pad.input.append(minus_zero)
            else:  # read elsewhere too: the pool reads a twin, the original keeps its zeros
                if pad.output[0] not in twins:
                    name, i = pad.output[0] + "_for_pool", 1
                    while name in used:
                        i += 1
                        name = f"{pad.output[0]}_for_pool_{i}"
                    used.add(name)
                    twin = helper.make_node("Pad", [pad.input[0], pad.input[1], minus_zero], [name], mode="constant")
                    g.node.insert(next(i for i, n in enumerate(g.node) if n is pad) + 1, twin)
                    twins[pad.output[0]] = name
                pool.input[0] = twins[pad.output[0]]
            count += 1
    return count


# Narrow float types that some ops at OPSET do not take (Conv, MaxPool, Cos lack bfloat16).
_NARROW = {TensorProto.BFLOAT16: "tensor(bfloat16)", TensorProto.FLOAT16: "tensor(float16)"}


def widen_unsupported_types(model: onnx.ModelProto, op_types: set[str] | None = None) -> int:
    """Where a float16/bfloat16 value meets an op whose schema at OPSET lacks that type
    (mixed precision), the op runs in float32 between Casts: the graph stays standard ONNX
    and the rest of the step keeps its narrow arithmetic. With `op_types`, nodes of those
    types are widened instead, whatever their schema says (a runtime with no kernel for
    them in the narrow type). Returns the number of nodes widened."""
    if not narrow_types(model):
        return 0
    inferred = onnx.shape_inference.infer_shapes(model)
    # Each graph's value types, its enclosing graphs' visible too (a body reads outer values).
    scopes: list[tuple[onnx.GraphProto, dict[str, int]]] = []

    def collect(graph: onnx.GraphProto, typed: onnx.GraphProto, outer: dict[str, int]) -> None:
        types = dict(outer)
        for v in [*typed.input, *typed.value_info, *typed.output]:
            types[v.name] = v.type.tensor_type.elem_type
        types.update({t.name: t.data_type for t in typed.initializer})
        scopes.append((graph, types))
        for node, typed_node in zip(graph.node, typed.node):
            for a, typed_a in zip(node.attribute, typed_node.attribute):
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g, typed_a.g, types)

    collect(model.graph, inferred.graph, {})
    used = {n for _, types in scopes for n in types} | {o for n in all_nodes(model.graph) for o in n.output}

    def fresh(name: str) -> str:
        new, i = f"{name}_f32", 1
        while new in used:
            i += 1
            new = f"{name}_f32_{i}"
        used.add(new)
        return new

    def formal(params, i: int) -> str:
        return params[min(i, len(params) - 1)].type_str  # a variadic parameter is the last

    count = 0
    for graph, types in reversed(scopes):  # bodies first: rebuilding a graph copies its nodes' bodies
        nodes = []
        wide_of: dict[str, str] = {}  # a narrow value -> its float32 twin in this graph
        for node in graph.node:
            schema = onnx.defs.get_schema(node.op_type, OPSET, node.domain)
            allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
            input_vars = [formal(schema.inputs, i) for i in range(len(node.input))] if schema.inputs else []
            widened = set()  # the type variables computed in float32
            for name, var in zip(node.input, input_vars):
                t = types.get(name)
                lacking = _NARROW.get(t) not in allowed.get(var, ()) if op_types is None else node.op_type in op_types
                if name and t in _NARROW and var in allowed and lacking and "tensor(float)" in allowed[var]:
                    widened.add(var)
            if not widened:
                nodes.append(node)
                continue
            count += 1
            for i, (name, var) in enumerate(zip(node.input, input_vars)):
                if name and var in widened:
                    if name not in wide_of:
                        wide_of[name] = fresh(name)
                        nodes.append(helper.make_node("Cast", [name], [wide_of[name]], to=TensorProto.FLOAT))
                    node.input[i] = wide_of[name]
            casts_back = []
            for i, name in enumerate(node.output):
                var, narrow = formal(schema.outputs, i), types.get(name)
                # back to the narrow type it had: outputs of a widened type variable, and those
                # whose type follows the inputs' without a variable of their own (no dtype attribute)
                if name and narrow in _NARROW and (var in widened or var not in input_vars):
                    # (readers widened in turn cast the rounded value again: every reader sees
                    # the narrow value, as without the widening)
                    wide = fresh(name)
                    node.output[i] = wide
                    casts_back.append(helper.make_node("Cast", [wide], [name], to=narrow))
            nodes += [node, *casts_back]
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def narrow_types(model: onnx.ModelProto) -> frozenset[int]:
    """The float16/bfloat16 types that the model casts to (mixed precision's compute types)."""
    return frozenset(t for n in all_nodes(model.graph) if n.op_type == "Cast" and (t := _attr(n, "to")) in _NARROW)


def _attr(node: onnx.NodeProto, name: str):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)


def all_graphs(graph: onnx.GraphProto):
    """A graph and, depth first, the subgraphs (Loop and Scan bodies) of its nodes."""
    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(a.g)


def all_nodes(graph: onnx.GraphProto):
    for g in all_graphs(graph):
        yield from g.node


def narrow_values(model: onnx.ModelProto) -> bool:
    """Whether the graph's inputs or constants are float16/bfloat16 (a --dtype float16 model)."""
    narrow = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
    return any(i.type.tensor_type.elem_type in narrow for i in model.graph.input) \
        or any(t.data_type in narrow for t in model.graph.initializer)


def ort_disabled_optimizers(model: onnx.ModelProto) -> list[str]:
    """onnxruntime's rewrites to turn off for this model, in every session made of it.
    Its blocked-layout rewrite (NchwcTransformer, which speeds up float32 convolutions only)
    crashes the process while making sessions of some float16 graphs with a Scan (an LSTM's
    eval graph): it stays out of narrow models. So does FuseFp16InitializerToFp32NodeTransformer,
    which rewrites the top graph alone, not a Loop's body: a stateful LSTM's mixed-precision step
    then rounded otherwise as a plain step than inside --steps-per-call's Loop, so a run with K > 1
    (whose lone steps are plain ones) and a resume from a --steps stop between K's went apart."""
    if narrow_types(model) or narrow_values(model):
        return ["NchwcTransformer", "FuseFp16InitializerToFp32NodeTransformer"]
    return exact_float64_optimizers(model)


def exact_float64_optimizers(model: onnx.ModelProto) -> list[str]:
    """onnxruntime's rewrites to turn off for a float64 model: MatMulScaleFusion folds a
    product's constant factor (0.3 * (a @ b)) into a scale attribute, which is a float32, so
    float64 results came out with float32's relative error (4e-8)."""
    double = onnx.TensorProto.DOUBLE
    if any(i.type.tensor_type.elem_type == double for i in model.graph.input) \
            or any(t.data_type == double for t in model.graph.initializer):
        return ["MatMulScaleFusion"]
    return []
