"""Graph rewrites that keep emitted graphs small and fast.

`optimize(outputs)` runs, in one topological pass: algebraic identities
(x*1, x+0, cast to the same dtype, ...), constant folding of anything that
depends only on constants (with the ops' own NumPy references), and common
subexpression elimination across forward and backward. Then MatMul+Add and
transposed operands are fused into Gemm. Dead code never reaches emission:
only the nodes the outputs need are emitted.

Numerical stabilisation (log(softmax) -> log_softmax, log(sigmoid) ->
-softplus(-x)) happens when those ops are built, before differentiation, so
the gradient is also the stable one (see the `log` op). `rewrite_forward`
changes the forward graph before the gradient is built (a lookup followed by
a product projects the table; max pooling moves before a ReLU and a bias), and
`weights_first_in_loops` runs after `optimize` (products by a recurrent weight
inside loop steps, for small batches). `sizes_from_inputs_read` runs on every
emitted graph, optimized or not: a data input read for its shape alone takes its
sizes from an input the graph computes with.
"""
from __future__ import annotations

import numpy as np

from spec.errors import FlowgradError

from .ir import Graph, Node, Value, at, producers_of, reads_shape_only
from .registry import get_op

# Folding results larger than this stay computed at run time, to keep files small.
MAX_FOLDED_ELEMENTS = 1 << 16
_NEVER_FOLD = {"random_bits"}


def const_value(v: Value):
    if v.producer is not None and v.producer.op.name == "constant":
        return np.asarray(v.producer.attrs["value"])
    return None


def _is_fill(v: Value, fill: float) -> bool:
    c = const_value(v)
    return c is not None and c.size > 0 and bool(np.all(c == fill))


def _attrs_key(attrs: dict):
    items = []
    for k, v in sorted(attrs.items()):
        if isinstance(v, np.ndarray):
            v = (v.dtype.str, v.shape, v.tobytes())
        items.append((k, repr(v) if not isinstance(v, tuple) or not v or not isinstance(v[0], str) else v))
    return tuple(items)


def _simplify(node: Node) -> Value | None:
    """A Value that node's (single) output equals, without the node."""
    name = node.op.name
    ins = node.inputs
    out = node.outputs[0]
    same = lambda x: x.type == out.type  # noqa: E731  (replacement must keep the type)
    if name == "mul":
        a, b = ins
        if _is_fill(b, 1) and same(a):
            return a
        if _is_fill(a, 1) and same(b):
            return b
    elif name in ("add", "sub"):
        a, b = ins
        if _is_fill(b, 0) and same(a):
            return a
        if name == "add" and _is_fill(a, 0) and same(b):
            return b
    elif name == "div":
        if _is_fill(ins[1], 1) and same(ins[0]):
            return ins[0]
    elif name == "neg":
        p = ins[0].producer
        if p is not None and p.op.name == "neg":
            return p.inputs[0]
    elif name in ("cast", "identity", "broadcast_like", "reshape"):
        if same(ins[0]):
            return ins[0]
    elif name == "transpose":
        p = ins[0].producer
        if p is not None and p.op.name == "transpose":
            inner = p.op.perm(p.attrs, p.inputs[0].rank)
            outer = node.op.perm(node.attrs, ins[0].rank)
            if [inner[i] for i in outer] == list(range(len(outer))):
                return p.inputs[0]
    return None


def _fold(node: Node):
    if node.op.name in _NEVER_FOLD or node.op.name == "constant" or node.op.ref is None:
        return None
    # Decide by the inferred shapes, before computing anything: a constant
    # such as zeros_like(W) of a huge W must not be materialized here.
    if sum(_static_size(o.shape) for o in node.outputs) > MAX_FOLDED_ELEMENTS:
        return None
    if node.op.name in ("zeros_like", "ones_like") and all(isinstance(d, int) for d in node.inputs[0].shape):
        fill = 0 if node.op.name == "zeros_like" else 1
        return [np.full([int(d) for d in node.inputs[0].shape], fill, dtype=node.inputs[0].dtype)]
    values = [const_value(v) for v in node.inputs]
    if not node.inputs or any(v is None for v in values):
        return None
    try:
        result = node.op.ref(node.attrs, *values)
    except FlowgradError as e:  # a constant the op refuses: point at the spec text that made it
        e.loc = e.loc or node.loc
        raise
    results = list(result) if isinstance(result, tuple) else [result]
    if sum(np.size(r) for r in results) > MAX_FOLDED_ELEMENTS:
        return None
    return [np.asarray(r, dtype=o.dtype).reshape([int(d) for d in o.shape]) for r, o in zip(results, node.outputs)]


def _static_size(shape) -> float:
    """Elements of a shape; infinite when a dim is symbolic (never folded)."""
    n = 1
    for d in shape:
        if not isinstance(d, int):
            return float("inf")
        n *= d
    return n


def optimize(outputs: list[Value]) -> list[Value]:
    """Rewrite the graph that computes `outputs`; returns the (possibly new) output Values."""
    if not outputs:
        return outputs
    g = outputs[0].graph
    repl: dict[int, Value] = {}
    seen: dict[tuple, Node] = {}

    def resolve(v: Value) -> Value:
        while v.id in repl:
            v = repl[v.id]
        return v

    for node in producers_of(outputs):
        node.inputs = [resolve(v) for v in node.inputs]
        if node.op.name == "scan":
            _optimize_body(node.attrs["body"])
        if len(node.outputs) == 1:
            r = _simplify(node)
            if r is not None:
                repl[node.outputs[0].id] = r
                continue
        folded = _fold(node)
        if folded is not None:
            for o, arr in zip(node.outputs, folded):
                c = g.apply("constant", value=arr)
                c.name = o.name
                repl[o.id] = _dedupe(c, seen, repl)
            continue
        key = (node.op.name, tuple(v.id for v in node.inputs), _attrs_key(node.attrs))
        if key in seen:
            for a, b in zip(node.outputs, seen[key].outputs):
                repl[a.id] = b
            continue
        seen[key] = node
    outputs = [resolve(v) for v in outputs]
    return fuse_gemm(outputs)


def _optimize_body(body) -> None:
    """The same rewrites inside a scan's step (in place)."""
    n = len(body.new_carries)
    new = optimize(body.new_carries + body.extras)
    body.new_carries, body.extras = new[:n], new[n:]


def sizes_from_inputs_read(outputs: list[Value], data_inputs: set[int]) -> None:
    """A data input that the graph reads for its shape alone (zeros(N, H) with N found in the
    labels tgt declared first, zeros_like(y), positions(y, axis=1)) gets its sizes from the inputs
    the graph computes with, which have the same symbolic dims, in place; otherwise the inference
    and decoding graphs needed the labels fed for their shape alone. A fill's sizes point at the
    other input; another reader gets a stand-in of zeros of the same shape and dtype. Inputs
    repeated per beam (tile_rows) count as their input. `data_inputs`: the ids of the graph's
    data inputs."""
    nodes = producers_of(outputs)
    shape_only = lambda n, i: reads_shape_only(n, i) or n.op.name == "positions"  # noqa: E731
    computed = {v.id for v in outputs}  # reached from the outputs by more than a shape
    for n in reversed(nodes):
        if any(o.id in computed for o in n.outputs):
            computed.update(v.id for i, v in enumerate(n.inputs) if not shape_only(n, i))

    def repeats(v: Value):
        """(the data input v is, or repeats per beam; how) or None."""
        how = []
        while v.producer is not None and v.producer.op.name == "tile_rows":
            how.append(v.producer.attrs["times"])
            v = v.producer.inputs[0]
        return (v, tuple(how)) if v.id in data_inputs else None

    read = [v for n in nodes for v in n.inputs if v.id in computed and repeats(v)]

    def found(name, ref: Value):
        """(an input the graph computes with, its axis of the dim `name`), or None."""
        other = next((v for v in read if isinstance(name, str) and name in v.shape
                      and repeats(v)[1] == repeats(ref)[1]), None)
        return other and (other, list(other.shape).index(name))

    stand_ins = {}
    for n in nodes:
        for i, ref in enumerate(n.inputs):
            if ref.id in computed or not shape_only(n, i) or not repeats(ref):
                continue
            if n.op.name == "fill":
                dims = list(n.attrs["dims"])
                sized = [k for k, d in enumerate(dims) if isinstance(d, tuple) and d[0] == i]
                if not sized or not all(isinstance(dims[k][1], int) for k in sized):
                    continue  # (a size given at run time by the value of an input)
                names = {ref.shape[dims[k][1]] for k in sized}
                where = found(names.pop(), ref) if len(names) == 1 else None
                if where is not None:
                    n.inputs[i] = where[0]
                    for k in sized:
                        dims[k] = (i, where[1])
                    n.attrs = {**n.attrs, "dims": tuple(dims)}
                continue
            if ref.id not in stand_ins:
                wheres = [d if isinstance(d, int) else found(d, ref) for d in ref.shape]
                if any(w is None for w in wheres):
                    continue
                others = list({id(w[0]): w[0] for w in wheres if not isinstance(w, int)}.values())
                dims = tuple(w if isinstance(w, int) else (others.index(w[0]), w[1]) for w in wheres)
                stand_ins[ref.id] = ref.graph.apply("fill", *others, dims=dims, dtype=ref.dtype)
            n.inputs[i] = stand_ins[ref.id]


def emission_rewrites(outputs: list[Value], rows_hint: int | None) -> None:
    """The rewrites after `optimize` that only choose how values get computed: products in loop
    steps (weights_first_in_loops) and random draws (merge_random_draws)."""
    weights_first_in_loops(outputs, rows_hint)
    merge_random_draws(outputs)


def merge_random_draws(outputs: list[Value]) -> None:
    """random_bits nodes of one graph that read the same seed and step and draw the same shape
    (the two uniforms of a normal, dropouts on equal-sized layers) become rows of one
    random_bits over all their salts, in place: the same bits, from one evaluation of the
    hash instead of one per draw (a few dozen small kernels each)."""
    nodes = producers_of(outputs)
    position = {id(n): i for i, n in enumerate(nodes)}
    groups: dict[tuple, list[Node]] = {}
    for n in nodes:
        if n.op.name == "random_bits" and not isinstance(n.attrs["salt"], tuple):
            seed, step, like = n.inputs
            groups.setdefault((seed.id, step.id, tuple(like.shape), bool(n.attrs["pairs"])), []).append(n)
    for group in groups.values():
        if len(group) < 2:
            continue
        # The shape comes from the like computed first: it cannot depend on any draw of the group
        # (each draw comes after its own like).
        like = min((n.inputs[2] for n in group), key=lambda v: position.get(id(v.producer), -1))
        seed, step = group[0].inputs[:2]
        g = like.graph
        with at(group[0].loc):
            rows = g.apply("random_bits", seed, step, like, salt=tuple(int(n.attrs["salt"]) for n in group),
                           pairs=group[0].attrs["pairs"])
        for k, n in enumerate(group):
            n.op, n.inputs, n.attrs = get_op("take"), [rows, g.const(np.asarray(k, dtype=np.int64))], {"axis": 0}


# A product by a loop-invariant weight of at least this many entries may run weights-first.
WEIGHTS_FIRST_MIN_ENTRIES = 1 << 16


def weights_first_in_loops(outputs: list[Value], rows_hint: int | None) -> None:
    """x @ W inside a scan's step, W [K, M] read unchanged every step, becomes (W^T @ x^T)^T,
    with W^T computed once outside the loop; for steps of few rows.

    onnxruntime's MatMul packs its right operand on every call. In a step the right operand is
    the weight (a recurrent matrix), packed again each step; weights-first packs x^T instead
    ([K, rows]) and adds two transposes of the step's rows, which pays while
    rows * 2 * (K + M) < K * M. `rows_hint` stands for a symbolic row count (the batch the
    spec trains with); without one the products stay. A rewritten scan gets a step of its
    own: steps are shared between scan nodes (a gradient's recomputation clones the node)."""
    for node in producers_of(outputs):
        if node.op.name != "scan" or not _wants_weights_first(node, rows_hint):
            continue
        body = _own_step(node.attrs["body"])
        node.attrs = {**node.attrs, "body": body}
        weights_first_in_loops(body.new_carries + body.extras, rows_hint)  # loops inside the step
        outer = _read_every_step(node)
        transposed: dict[int, Value] = {}  # weight id -> its transpose, a new step input
        for n in producers_of(body.new_carries + body.extras):
            product = _weights_first_candidate(n, outer, rows_hint)
            if product is None:
                continue
            x, w, bias = product
            if w.id not in transposed:
                w_outer = outer[w.id]
                p = w_outer.producer
                if p is not None and p.op.name == "transpose" and tuple(p.op.perm(p.attrs, 2)) == (1, 0):
                    wt_outer = p.inputs[0]
                else:
                    wt_outer = node.outputs[0].graph.apply("transpose", w_outer, perm=(1, 0))
                wt = body.graph.add_input(f"{w.name or 'weight'}_T", w.dtype, tuple(wt_outer.shape), unique=True)
                body.nonseqs.append(wt)
                node.inputs = node.inputs + [wt_outer]
                transposed[w.id] = wt
            g = body.graph
            with at(n.loc):
                yt = g.apply("matmul", transposed[w.id], g.apply("transpose", x, perm=(1, 0)))
                if bias is None:
                    n.op, n.inputs, n.attrs = get_op("transpose"), [yt], {"perm": (1, 0)}
                else:
                    n.op, n.inputs, n.attrs = get_op("add"), [g.apply("transpose", yt, perm=(1, 0)), bias], {}


def _read_every_step(node: Node) -> dict[int, Value]:
    """A scan's step inputs read unchanged every step (by Value id) -> the outer values they are."""
    body = node.attrs["body"]
    _, _, nonseqs = node.op.split_inputs(node.attrs, node.inputs)
    return {v.id: outer for v, outer in zip(body.nonseqs, nonseqs)}


def _wants_weights_first(node: Node, rows_hint: int | None) -> bool:
    body = node.attrs["body"]
    outer = _read_every_step(node)
    return any(_weights_first_candidate(n, outer, rows_hint) is not None
               or (n.op.name == "scan" and _wants_weights_first(n, rows_hint))
               for n in producers_of(body.new_carries + body.extras))


def _own_step(body):
    """A copy of a scan's step (its graph, inputs and nodes), to rewrite without touching the
    scan nodes that share the original."""
    from .ops.scan import Body, clone

    bg = Graph(float_dtype=body.graph.float_dtype, mode=body.graph.mode, mixed_precision=body.graph.mixed_precision)
    mapping: dict[int, Value] = {}

    def inputs(values):
        copies = [bg.add_input(v.name, v.dtype, v.shape, unique=True) for v in values]
        mapping.update({v.id: c for v, c in zip(values, copies)})
        return copies

    carries, seqs, nonseqs = inputs(body.carries), inputs(body.seqs), inputs(body.nonseqs)
    outs = clone(body.new_carries + body.extras, mapping, bg)
    for old, new in zip(producers_of(body.new_carries + body.extras), producers_of(outs)):
        new.loc = old.loc  # the copy's nodes keep their spec locations (messages, drawings)
    n = len(body.new_carries)
    return Body(bg, carries, seqs, nonseqs, outs[:n], outs[n:])


def _weights_first_candidate(n: Node, outer: dict, rows_hint: int | None):
    """(x, W, bias or None) when node n is x @ W (+ bias) by a loop-invariant W worth it."""
    if n.op.name == "matmul":
        (x, w), bias = n.inputs, None
    elif n.op.name == "gemm" and not n.attrs["trans_a"] and not n.attrs["trans_b"] and n.attrs["alpha"] == 1.0 \
            and n.attrs["beta"] in (0.0, 1.0):
        x, w, bias = n.inputs
        bias = bias if n.attrs["beta"] == 1.0 else None
    else:
        return None
    if w.id not in outer or x.rank != 2 or w.rank != 2 or not all(isinstance(d, int) for d in w.shape):
        return None
    d = x.shape[0]
    rows = d if isinstance(d, int) else rows_hint if d.isidentifier() else None  # the hint is for a batch dim, not N*T
    K, M = w.shape
    if rows is None or K * M < WEIGHTS_FIRST_MIN_ENTRIES or rows * 2 * (K + M) >= K * M:
        return None
    return x, w, bias


def _dedupe(c: Value, seen: dict, repl: dict) -> Value:
    node = c.producer
    key = ("constant", (), _attrs_key(node.attrs))
    if key in seen:
        return seen[key].outputs[0]
    seen[key] = node
    return c


def _use_counts(outputs: list[Value], nodes: list[Node]) -> dict[int, int]:
    uses: dict[int, int] = {}
    for n in nodes:
        for v in n.inputs:
            uses[v.id] = uses.get(v.id, 0) + 1
    for v in outputs:
        uses[v.id] = uses.get(v.id, 0) + 1
    return uses


def _untransposed(v: Value) -> tuple[Value, bool]:
    p = v.producer
    if p is not None and p.op.name == "transpose" and v.rank == 2 and p.op.perm(p.attrs, 2) == (1, 0):
        return p.inputs[0], True
    return v, False


def fuse_gemm(outputs: list[Value]) -> list[Value]:
    """add(matmul(a, b), c) -> gemm(a, b, c) for matrices, folding transposes of a and b."""
    nodes = producers_of(outputs)
    uses = _use_counts(outputs, nodes)
    repl: dict[int, Value] = {}
    # A product whose only use is an addition becomes a Gemm with that bias instead.
    added = {v.id for n in nodes if n.op.name == "add" for v in n.inputs if uses.get(v.id, 0) == 1}
    for node in nodes:
        node.inputs = [repl.get(v.id, v) for v in node.inputs]
        if node.op.name == "matmul" and node.outputs[0].id not in added and _transposed_matmul(node, repl):
            continue
        if node.op.name != "add":
            continue
        for mm, c in (node.inputs, node.inputs[::-1]):
            p = mm.producer
            if p is None or p.op.name != "matmul" or uses.get(mm.id, 0) != 1:
                continue
            a, b = p.inputs
            if a.rank > 2 and b.rank == 2 and c.rank <= 1 and node.outputs[0].shape == mm.shape \
                    and _static_size(b.shape) >= ROWS_GEMM_MIN_WEIGHTS:
                fused = _rows_gemm(a, b, c)
                fused.name = node.outputs[0].name
                repl[node.outputs[0].id] = fused
                break
            if a.rank != 2 or b.rank != 2 or c.rank > 2 or node.outputs[0].shape != mm.shape:
                continue
            a0, ta = _untransposed(a)
            b0, tb = _untransposed(b)
            g = node.outputs[0].graph
            fused = g.apply("gemm", a0, b0, c, trans_a=ta, trans_b=tb)
            fused.name = node.outputs[0].name
            repl[node.outputs[0].id] = fused
            break
    return [repl.get(v.id, v) for v in outputs]


# A dense layer over a sequence becomes reshape + Gemm + reshape when its weight has at
# least this many entries (below it, the reshapes cost more than the bias pass they save).
ROWS_GEMM_MIN_WEIGHTS = 4096


def _rows_gemm(x: Value, w: Value, bias: Value) -> Value:
    """x @ w + bias for x of rank > 2 (a dense layer over a sequence) as one Gemm over
    all rows: the bias is added by the product instead of by a pass over the result."""
    g = x.graph
    rows = g.apply("reshape", x, shape=(-1, x.shape[-1]))
    w0, tw = _untransposed(w)
    y = g.apply("gemm", rows, w0, bias, trans_b=tw)
    lead = tuple(d if isinstance(d, int) else (0, i) for i, d in enumerate(x.shape[:-1]))
    return g.apply("reshape_dims", y, x, dims=lead + (w.shape[-1],))


def _transposed_matmul(node, repl) -> bool:
    """matmul of matrices with a transposed operand -> gemm with no bias (the transpose becomes an attribute)."""
    a, b = node.inputs
    if a.rank != 2 or b.rank != 2:
        return False
    a0, ta = _untransposed(a)
    b0, tb = _untransposed(b)
    if not (ta or tb):
        return False
    g = node.outputs[0].graph
    zero = g.const(np.zeros((), dtype=node.outputs[0].dtype))
    fused = g.apply("gemm", a0, b0, zero, trans_a=ta, trans_b=tb, beta=0.0)
    fused.name = node.outputs[0].name
    repl[node.outputs[0].id] = fused
    return True


def fold_lookup_products(outputs: list[Value]) -> None:
    """take(table, ids) @ W + b -> take(table @ W + b, ids), in place, before differentiation.

    An embedding followed by a linear map (a recurrent layer's input projection,
    a dense layer over embeddings) multiplies every looked-up row by W; for a
    small table it is cheaper to project the table once and look up projected
    rows, and the gradient then scatters into the projected table instead of
    running two products over every row. Transposes of the looked-up rows that
    keep the feature axis last move onto the ids."""
    # Consumers before producers: an add folds its bias in before its product is seen alone.
    for node in reversed(producers_of(outputs)):
        if node.op.name == "add":
            mm, bias = _product_and_bias(node)
        elif node.op.name == "matmul":
            mm, bias = node.outputs[0], None
        else:
            continue
        if mm is None:
            continue
        rows, w = mm.producer.inputs
        lookup = _lookup_of(rows) if w.rank == 2 else None
        if lookup is None:
            continue
        table, ids = lookup
        with at(node.loc):
            projected = table @ w if bias is None else table @ w + bias
        if projected.shape == (table.shape[0], w.shape[1]):
            node.op, node.inputs, node.attrs = get_op("take"), [projected, ids], {"axis": 0}


def rewrite_forward(outputs: list[Value]) -> None:
    """The rewrites that change which form gets differentiated; run on the forward graph
    before the gradient is built, so the backward pass follows the cheaper form."""
    fold_lookup_products(outputs)
    pool_before_activation(outputs)


def pool_before_activation(outputs: list[Value]) -> None:
    """max_pool2d(relu(a + b)) -> relu(max_pool2d(a) + b), in place, for b constant over
    each pooling window (a conv's per-channel bias) and intermediate values read only here.

    Max pooling commutes with any non-decreasing function and with adding a per-window
    constant, and the gradient still reaches each window's first maximum of a. The
    activation, the bias and the activation's gradient then run on the pooled tensor, a
    quarter of the elements for 2x2 windows."""
    nodes = producers_of(outputs)
    uses = _use_counts(outputs, nodes)
    sole = lambda v: uses.get(v.id) == 1  # noqa: E731
    for node in nodes:
        if node.op.name != "max_pool2d":
            continue
        a, relu, bias = node.inputs[0], False, None
        if a.producer is not None and a.producer.op.name == "relu" and sole(a):
            a, relu = a.producer.inputs[0], True
        p = a.producer
        if p is not None and p.op.name == "add" and sole(a):
            for x, b in (p.inputs, p.inputs[::-1]):
                if x.type == a.type and _constant_per_window(b, a.rank):
                    a, bias = x, b
                    break
        if not relu and bias is None:
            continue
        with at(node.loc):
            pooled = node.outputs[0].graph.apply("max_pool2d", a, **node.attrs)
            if relu and bias is not None:
                pooled = pooled + bias
        if relu:
            node.op, node.inputs, node.attrs = get_op("relu"), [pooled], {}
        else:
            node.op, node.inputs, node.attrs = get_op("add"), [pooled, bias], {}


def _constant_per_window(b: Value, rank: int) -> bool:
    """True when b, broadcast against a rank-`rank` NCHW tensor, is constant over H and W."""
    if b.rank > rank:
        return False
    return ((1,) * (rank - b.rank) + tuple(b.shape))[-2:] == (1, 1)


def _product_and_bias(node: Node):
    """(matmul output, bias) of add(matmul(x, W), b) with b a vector along the last axis."""
    for mm, b in (node.inputs, node.inputs[::-1]):
        p = mm.producer
        if p is not None and p.op.name == "matmul" and b.rank <= 1 and node.outputs[0].shape == mm.shape:
            return mm, b
    return None, None


def _lookup_of(rows: Value):
    """(table, ids) when `rows` are rows of a small 2-D table looked up by ids, possibly
    transposed with the feature axis kept last; ids come back permuted to match."""
    perms = []
    v = rows
    while v.producer is not None and v.producer.op.name == "transpose":
        p = v.producer
        perm = p.op.perm(p.attrs, p.inputs[0].rank)
        if perm[-1] != len(perm) - 1:
            return None
        perms.append(perm[:-1])
        v = p.inputs[0]
    p = v.producer
    if p is None or p.op.name != "take" or p.attrs.get("axis", 0) != 0:
        return None
    table, ids = p.inputs
    if table.rank != 2 or not isinstance(table.shape[0], int) or table.shape[0] > LOOKUP_FOLD_MAX_ROWS:
        return None
    looked_up = _static_size(ids.shape)
    if looked_up <= table.shape[0]:  # fewer rows than the table: projecting the rows is cheaper
        return None
    g = ids.graph
    for perm in reversed(perms):
        ids = g.apply("transpose", ids, perm=perm)
    return table, ids


# Tables up to this many rows are projected whole (the gradient's scatter into them is
# then a one-hot product, compiler/ops/indexing.py); larger vocabularies keep the rows.
LOOKUP_FOLD_MAX_ROWS = 512
