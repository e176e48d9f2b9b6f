"""Seeing the model: `flowgrad graph` (spec view, --backward, --optimized, --expand) and `flowgrad summary`."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from compiler import training
from compiler.ir import producers_of
from compiler.training import check_spec, compile_spec, objectives_of
from spec import load_spec
from spec import model as S
from spec.errors import FLAGS

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "models").glob("*.yaml"))
MLP = ROOT / "models" / "mlp.yaml"
CHAR_LSTM = ROOT / "models" / "char_lstm.yaml"
HAVE_DOT = shutil.which("dot") is not None

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch):
    import cli

    for console in (cli.out, cli.err):
        monkeypatch.setattr(console, "width", 200)


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == code, result.output
    return result


# ---------------------------------------------------------------- reading DOT back
_ID = r'("(?:[^"\\]|\\.)*"|[A-Za-z_][\w.]*)'
_NODE = re.compile(r"^\s*" + _ID + r"\s*\[(.*)\]\s*$")
_EDGE = re.compile(r"^\s*" + _ID + r"\s*->\s*" + _ID + r"\s*(\[(.*)\])?\s*$")
_CLASS = re.compile(r'(?:^|\s)class=(?:"([^"]*)"|([^\s\]]+))')


def dot_nodes(text: str) -> dict[str, str]:
    """Node id -> its class attribute, for every node statement that has one."""
    nodes = {}
    for line in text.splitlines():
        if _EDGE.match(line):
            continue
        m = _NODE.match(line)
        if not m or m.group(1) in ("graph", "node", "edge"):
            continue
        attrs = m.group(2)
        attrs = re.sub(r"label=<.*?>(?= \w+=|$)", "", attrs)  # HTML labels hold no class=, but skip them
        c = _CLASS.search(attrs)
        if c:
            nodes[m.group(1).strip('"')] = c.group(1) or c.group(2)
    return nodes


def dot_edges(text: str) -> list[tuple[str, str, str]]:
    out = []
    for line in text.splitlines():
        m = _EDGE.match(line)
        if m:
            out.append((m.group(1).strip('"'), m.group(2).strip('"'), m.group(4) or ""))
    return out


# ---------------------------------------------------------------- what the spec says, counted here
def names_read(e) -> list[str]:
    """Every Name in an expression tree (walked generically over the dataclass fields)."""
    out = []
    if isinstance(e, S.Name):
        out.append(e.id)
    if isinstance(e, S.Expr):
        for v in vars(e).values():
            for c in (v if isinstance(v, list) else v.values() if isinstance(v, dict) else [v]):
                out += names_read(c)
    return out


def spec_node_count(spec, low) -> int:
    return (len(spec.inputs) + len(low.params) + len(spec.graph) + (spec.loss is not None)
            + len(spec.metrics) + len(spec.outputs))


def blocks_used(e, spec) -> set[str]:
    """The blocks an expression runs: called `G(z)` or scanned `scan(decode, ...)`, and the blocks
    those blocks' graphs run in turn."""
    found = set()

    def direct(x):
        out = set()
        if isinstance(x, S.Call) and x.func in spec.blocks:
            out.add(x.func)
        if isinstance(x, S.Name) and x.id in spec.blocks:
            out.add(x.id)
        if isinstance(x, S.Expr):
            for v in vars(x).values():
                for c in (v if isinstance(v, list) else v.values() if isinstance(v, dict) else [v]):
                    out |= direct(c)
        return out

    todo = direct(e)
    while todo:
        b = todo.pop()
        if b not in found:
            found.add(b)
            for a in spec.blocks[b].graph:
                todo |= direct(a.expr)
    return found


def loss_name(spec, obj) -> str:
    """What the gradient boxes are the gradient of: `loss`, or the graph entry an objective names."""
    return "loss" if obj.loss is spec.loss else obj.loss.targets[0]


def on_path_to_loss(spec, low, obj) -> set[str]:
    """Spec values on a path from a parameter the objective trains to its loss, from the names each
    expression reads. A layer's parameters `h.W` feed its entry `h`; a block's parameters `D.h1.W`
    (declared in the block or made by its layer calls) feed every entry that runs the block (calls it,
    scans it, or runs a block that does), and so do the outer values the block's graph reads."""
    entry = {t: ",".join(a.targets) for a in spec.graph for t in a.targets}
    succ: dict[str, set[str]] = {}

    def key(name):
        return entry.get(name, name if name in low.params or name in spec.inputs else None)

    def block_reads(b):
        blk = spec.blocks[b]
        local = {*blk.inputs, *blk.params, *(t for a in blk.graph for t in a.targets)}
        names = [n for a in blk.graph for n in names_read(a.expr) if n not in local and n.split(".")[0] not in local]
        return names + [p for p in low.params if p.startswith(b + ".")]

    sink = "loss" if obj.loss is spec.loss else entry[obj.loss.targets[0]]
    readers = [(",".join(a.targets), a.expr) for a in spec.graph]
    if obj.loss is spec.loss:
        readers.append(("loss", spec.loss.expr))
    for target, expr in readers:
        names = names_read(expr)
        for b in blocks_used(expr, spec):
            names += block_reads(b)
        for n in names:
            if key(n):
                succ.setdefault(key(n), set()).add(target)
    for p in low.params:
        head = p.split(".")[0]
        if "." in p and head in entry:
            succ.setdefault(p, set()).add(entry[head])
    trained = [n for n, p in low.params.items() if p.kind == "param" and p.trainable
               and any(fnmatch.fnmatchcase(n, g) for g in obj.param_globs)
               and not any(fnmatch.fnmatchcase(n, g) for g in obj.frozen)]
    assert trained, obj.name
    down, stack = set(trained), list(trained)
    while stack:
        for s in succ.get(stack.pop(), ()):
            if s not in down:
                down.add(s)
                stack.append(s)
    pred: dict[str, set[str]] = {}
    for a, bs in succ.items():
        for b in bs:
            pred.setdefault(b, set()).add(a)
    up, stack = {sink}, [sink]
    while stack:
        for s in pred.get(stack.pop(), ()):
            if s not in up:
                up.add(s)
                stack.append(s)
    return down & up


SPEC_KINDS = {"input", "param", "buffer", "node", "loss", "metric", "output"}


# ---------------------------------------------------------------- graph: the spec view
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_graph_has_one_box_per_spec_node_and_a_gradient_per_value_on_the_loss_path(path, tmp_path):
    spec = load_spec(str(path))
    low = check_spec(spec)
    out = tmp_path / "g.dot"
    invoke("graph", path, "-o", out)
    text = out.read_text()
    nodes = dot_nodes(text)
    assert set(nodes.values()) <= SPEC_KINDS
    assert len(nodes) == spec_node_count(spec, low)
    for name in [*spec.inputs, *low.params, *(t for a in spec.graph for t in a.targets)]:
        assert any(k.endswith("/" + name) or name in k.split("/")[-1].split(",") for k in nodes), name
    # edges follow the names: x -> h1 for `h1: ...(x @ W1 ...)`
    if path == MLP:
        edges = {(a, b) for a, b, _ in dot_edges(text)}
        assert {("input/x", "node/h1"), ("param/W1", "node/h1"), ("node/h1", "node/h2"),
                ("node/logits", "loss/loss"), ("input/y", "metric/accuracy")} <= edges

    # --backward draws the first objective by default (named in the title when there are several),
    # any other with --objective NAME: each counted against its own loss and trained parameters.
    objectives = objectives_of(spec)
    runs = [(objectives[0], ())] + [(o, ("--objective", o.name)) for o in objectives[1:]]
    for obj, extra in runs:
        out_b = tmp_path / f"b_{obj.name}.dot"
        invoke("graph", path, "--backward", *extra, "-o", out_b)
        text_b = out_b.read_text()
        if len(objectives) > 1:
            assert f"(objective {obj.name})" in text_b
        nodes_b = dot_nodes(text_b)
        grads = [k for k, c in nodes_b.items() if c == "grad"]
        assert len(nodes_b) - len(grads) == spec_node_count(spec, low)
        expected = on_path_to_loss(spec, low, obj)
        assert len(grads) == len(expected), (obj.name, sorted(grads), sorted(expected))
        # the same values, by name: grad/<kind>/<name(s)> against the names counted here
        assert {k.split("/", 2)[2] for k in grads} == expected, obj.name
        trained = [n for n, p in low.params.items() if p.kind == "param" and p.trainable
                   and any(fnmatch.fnmatchcase(n, g) for g in obj.param_globs)]
        for p in trained:
            assert f"∂{loss_name(spec, obj)}/∂{p}</B>" in text_b
        # The gradient arrows run back: from the loss's gradient towards the parameters' (drawn reversed).
        back = [(a, b) for a, b, attrs in dot_edges(text_b) if a.startswith("grad/") and "dir=back" in attrs]
        assert back and all(b.startswith("grad/") for _, b in back)


def test_backward_edges_come_from_autodiff():
    from compiler.visual import SpecGraph, backward_nodes

    sg = SpecGraph(load_spec(str(MLP)))
    loss_key, boxes, edges = backward_nodes(sg)
    assert loss_key == "loss/loss"
    assert set(edges) == {
        ("loss/loss", "node/logits"), ("node/logits", "node/h2"), ("node/h2", "node/h1"),
        ("node/logits", "param/W3"), ("node/logits", "param/b3"), ("node/h2", "param/W2"),
        ("node/h2", "param/b2"), ("node/h1", "param/W1"), ("node/h1", "param/b1"),
    }
    assert [tuple(v.shape) for v in boxes["param/W1"].values] == [(64, 256)]
    assert [tuple(v.shape) for v in boxes["node/h1"].values] == [("N", 256)]


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_graph_svg_is_xml_with_the_spec_names(path, tmp_path):
    spec = load_spec(str(path))
    low = check_spec(spec)
    out = tmp_path / "g.svg"
    res = invoke("graph", path, "--backward", "-o", out)
    assert res.stdout.strip() == str(out)
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(t for t in root.itertext())
    obj = objectives_of(spec)[0]  # --backward draws the first objective by default
    for name in [*spec.inputs, *low.params, *(t for a in spec.graph for t in a.targets), "loss",
                 *(m.targets[0] for m in spec.metrics), *(o.targets[0] for o in spec.outputs), *spec.blocks]:
        assert name in text, name
    assert f"∂{loss_name(spec, obj)}/∂" in text
    if len(objectives_of(spec)) > 1:
        assert f"objective {obj.name}" in text


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")
def test_graph_png(tmp_path):
    out = tmp_path / "g.png"
    invoke("graph", MLP, "-o", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_without_graphviz_writes_dot_and_says_how_to_install(tmp_path, monkeypatch):
    import compiler.visual as visual

    monkeypatch.setattr(visual.shutil, "which", lambda name: None)
    res = invoke("graph", MLP, "-o", tmp_path / "g.svg")
    assert (tmp_path / "g.dot").exists() and not (tmp_path / "g.svg").exists()
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert "apt-get install graphviz" in lines[0] and "brew install graphviz" in lines[0]
    assert res.stdout.strip() == str(tmp_path / "g.dot")


def test_graph_writes_a_file_readable_as_open_would_make_it(tmp_path):
    # atomic_write's temporary was made owner-only (0600) by mkstemp; the picture must not stay so
    mask = os.umask(0o022)
    try:
        invoke("graph", MLP, "-o", tmp_path / "g.dot")
    finally:
        os.umask(mask)
    assert (tmp_path / "g.dot").stat().st_mode & 0o777 == 0o644


def test_a_missing_python_package_is_a_one_line_error_with_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)  # `import graphviz` fails as if not installed
    res = invoke("graph", MLP, "-o", tmp_path / "g.svg", code=1)
    assert "lacks the package 'graphviz'" in res.stderr and "pip install 'graphviz'" in res.stderr
    assert "Traceback" not in res.stderr


def test_graph_refuses_an_unknown_format(tmp_path):
    res = invoke("graph", MLP, "-o", tmp_path / "g.bmp", code=1)
    assert ".svg" in res.stderr


def test_graph_unknown_objective(tmp_path):
    res = invoke("graph", MLP, "--backward", "--objective", "mian", "-o", tmp_path / "g.dot", code=1)
    assert "main" in res.stderr


# ---------------------------------------------------------------- graph --optimized
def _optimized_training_nodes(spec):
    """The IR nodes of the optimized training step, caught from compiler.training.build_train itself."""
    caught = []
    real = training.optimize

    def spy(values):
        out = real(values)
        caught.append(out)
        return out

    training.optimize = spy
    try:
        training.build_train(spec, objectives_of(spec)[0], spec.train.get("dtype", "float32"))
    finally:
        training.optimize = real
    return producers_of(caught[0])


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_optimized_graph_has_one_box_per_ir_op(path, tmp_path):
    spec = load_spec(str(path))
    out = tmp_path / "o.dot"
    invoke("graph", path, "--optimized", "-o", out)
    text = out.read_text()
    ops = [c for c in dot_nodes(text).values() if c.startswith("op ")]
    nodes = _optimized_training_nodes(spec)
    # constants are written into the ops that read them (they are ONNX initializers, not ops)
    real_ops = [n for n in nodes if n.op.name != "constant"]
    assert len(ops) == len(real_ops)
    assert f"{len(real_ops)} ops (+{len(nodes) - len(real_ops)} constants)" in text
    assert {c.split()[1] for c in ops} == {"forward", "grad", "update"}
    assert "subgraph cluster_" in text  # clustered by the spec entry the ops came from


def test_optimized_graph_labels_ops_with_their_spec_location(tmp_path):
    out = tmp_path / "o.dot"
    invoke("graph", MLP, "--optimized", "-o", out)
    text = out.read_text()
    assert "<B>relu</B>" in text and "16:15" in text  # relu(...) in h1's entry, line 16
    assert "gemm(a, b, c)" in text  # the fused x @ W1 + b1


def test_optimized_graph_draws_a_value_read_twice_as_one_edge(tmp_path):
    """Adam's mul(g, g) read one value twice and was drawn with two parallel edges from it; it is
    one edge now, labelled ×2."""
    import collections
    import re

    out = tmp_path / "o.dot"
    invoke("graph", MLP, "--optimized", "-o", out)
    text = out.read_text()
    edges = collections.Counter(re.findall(r"^\s*(\S+) -> (\S+) ", text, re.M))
    assert edges and max(edges.values()) == 1
    twice = re.findall(r"^\s*(\S+) -> (\S+) \[label=\"×2\"", text, re.M)
    assert len(twice) == 1
    assert re.search(rf"^\s*{twice[0][1]} \[label=<<B>mul</B>", text, re.M)


def test_expand_says_which_way_each_step_runs_and_links_every_carried_state(tmp_path):
    """A bidirectional layer's two step clusters were both "enc: scan step (14 ops)"; they say
    forward and backward now. The dashed link from a step to its entry started at the step's last op
    alone (an LSTM's new h): each op that makes a carried state is linked (its new c too)."""
    import re

    bi, lstm = tmp_path / "bi.dot", tmp_path / "lstm.dot"
    invoke("graph", ROOT / "models" / "dates_attention.yaml", "--expand", "-o", bi)
    invoke("graph", CHAR_LSTM, "--expand", "-o", lstm)
    labels = re.findall(r'label="(enc: scan step[^"]*)"', bi.read_text())
    assert labels == ["enc: scan step, forward (14 ops)", "enc: scan step, backward (14 ops)"]
    assert re.findall(r'label="(hs: scan step[^"]*)"', lstm.read_text()) == ["hs: scan step (12 ops)"]
    text = lstm.read_text()
    links = re.findall(r'^\s*"(body/node/hs/0/\d+)" -> "node/hs" \[.*style=dashed', text, re.M)
    ops = {k: re.search(rf'^\s*"{k}" \[label=<<B>(\w+)</B>', text, re.M).group(1) for k in links}
    assert sorted(ops.values()) == ["add", "mul"]  # c' = f*c + i*g, and h' = o * tanh(c')


def test_scan_is_one_box_unless_expanded(tmp_path):
    out, out_x = tmp_path / "c.dot", tmp_path / "cx.dot"
    invoke("graph", CHAR_LSTM, "-o", out)
    invoke("graph", CHAR_LSTM, "--expand", "-o", out_x)
    plain, expanded = out.read_text(), out_x.read_text()
    assert "body" not in dot_nodes(plain).values() and "box3d" in plain
    body = [c for c in dot_nodes(expanded).values() if c == "body"]
    assert len(body) > 5 and "scan step" in expanded
    # the expanded picture keeps exactly one box per spec node besides the body
    assert len([c for c in dot_nodes(expanded).values() if c != "body"]) == len(dot_nodes(plain))
    opt, opt_x = tmp_path / "o.dot", tmp_path / "ox.dot"
    invoke("graph", CHAR_LSTM, "--optimized", "-o", opt)
    invoke("graph", CHAR_LSTM, "--optimized", "--expand", "-o", opt_x)
    assert "ops inside" in opt.read_text() and "body" not in dot_nodes(opt.read_text()).values()
    assert "body" in dot_nodes(opt_x.read_text()).values()


def test_optimized_expand_draws_each_step_with_its_edges(tmp_path):
    """graph --optimized --expand drew a scan's step ops as loose boxes, no edge between them nor
    from the state, sequence slices and weights they read, named by id() (another .dot in every
    process); --expand of the spec view drew them with their edges."""
    outs = []
    for k in range(2):
        path = tmp_path / f"ox{k}.dot"
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "graph", str(CHAR_LSTM), "--optimized", "--expand", "-o",
                        str(path)], check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": str(k + 1)},
                       timeout=120)
        outs.append(path.read_text())
    assert outs[0] == outs[1]
    nodes, edges = dot_nodes(outs[0]), dot_edges(outs[0])
    body = {n for n, c in nodes.items() if c == "body"}
    ops = {n for n in body if "/in/" not in n}  # the step's ops, besides its inputs
    assert len(ops) > 10
    inside = [(a, b) for a, b, _ in edges if a in body and b in ops]
    # every op of a step reads a step input or another op of the step
    assert {b for _, b in inside} == ops
    assert any(a in ops for a, _ in inside) and any(a not in ops for a, _ in inside)
    # each body is linked to the scan op that runs it
    # a forward and a backward scan, each linked from the ops of its two carried states (h and c, δh and δc)
    links = [b for a, b, _ in edges if a in ops and b not in body]
    assert len(set(links)) == 2 and sorted(links.count(b) for b in set(links)) == [2, 2]


BLOCK_SPEC = """\
flowgrad: 1
name: blocky
dims: {E: 3, H: 4}
inputs:
  x: {shape: [N, T, E]}
params:
  V: {shape: [H, H], init: glorot_uniform}
blocks:
  step:
    in: [x_t, h]
    params:
      W: {shape: [E, H], init: glorot_uniform}
      U: {shape: [H, H], init: orthogonal}
    graph:
      a, z: split(x_t @ W + h @ U, 2, axis=-1)
      h2: tanh(concat(a, z, axis=-1) @ V)
    out: [h2]
graph:
  hs: scan(step, over=x, init=[zeros(N, H)])
loss: mean(hs * hs)
"""


def test_blocks_expand_into_their_entries(tmp_path):
    path = tmp_path / "blocky.yaml"
    path.write_text(BLOCK_SPEC)
    plain, expanded = tmp_path / "p.dot", tmp_path / "x.dot"
    invoke("graph", path, "--backward", "-o", plain)
    invoke("graph", path, "--backward", "--expand", "-o", expanded)
    nodes = dot_nodes(plain.read_text())
    # V is read inside the block: it still feeds the entry that runs the block, and gets a gradient
    assert ("param/V", "node/hs") in {(a, b) for a, b, _ in dot_edges(plain.read_text())}
    assert {"grad/param/V", "grad/param/step.W", "grad/param/step.U", "grad/node/hs"} <= set(nodes)
    text = expanded.read_text()
    assert "block step(x_t, h) -&gt; h2" in text or "block step(x_t, h) -> h2" in text
    assert "<B>a, z</B>" in text and "<B>h2</B>" in text
    body = [k for k, c in dot_nodes(text).items() if c == "body"]
    assert len(body) == 2 + 2 + 2  # inputs x_t, h; params W, U; entries (a, z), h2


TWICE_SPEC = """\
flowgrad: 1
name: twice
dims: {E: 3, H: 4}
inputs:
  x: {shape: [N, E]}
  y: {shape: [N, E]}
blocks:
  f:
    in: [v]
    graph:
      h: dense(v, H, act=tanh)
    out: [h]
graph:
  a: f(x)
  b: f(y)
  c: dense(b, H)
  la: mean(a * a)
  lb: mean(c * c)
train:
  objectives:
    first: {loss: la, params: "f.*"}
    second: {loss: lb, params: "c.*"}
"""


def test_a_block_used_twice_and_the_objective_drawn(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(TWICE_SPEC)
    out = tmp_path / "f.dot"
    invoke("graph", path, "-o", out)
    edges = {(a, b) for a, b, _ in dot_edges(out.read_text())}
    # the block's parameters (made by its first use) feed both entries that call it
    assert {("param/f.h.W", "node/a"), ("param/f.h.W", "node/b"), ("param/f.h.b", "node/b")} <= edges
    for objective, extra, grads in [
        ("first", (), {"param/f.h.W", "param/f.h.b", "node/a", "node/la"}),
        ("second", ("--objective", "second"), {"param/c.W", "param/c.b", "node/c", "node/lb"}),
    ]:
        out = tmp_path / f"{objective}.dot"
        invoke("graph", path, "--backward", *extra, "-o", out)
        text = out.read_text()
        assert f"(objective {objective})" in text
        assert {k[len("grad/"):] for k, c in dot_nodes(text).items() if c == "grad"} == grads
        loss = "la" if objective == "first" else "lb"
        assert f"∂{loss}/∂{loss} = 1</B>" in text
    res = invoke("graph", path, "--backward", "--objective", "secnod", "-o", tmp_path / "x.dot", code=1)
    assert "second" in res.stderr



def test_a_block_used_twice_stacks_its_weights_once(tmp_path):
    """The invisible edges that stack an entry's weights in rows were written once per call of
    the gan's blocks (D.h1.W -> D.h2.b twice): each edge is in the file once."""
    invoke("graph", ROOT / "models" / "gan.yaml", "-o", tmp_path / "gan.dot")
    out = (tmp_path / "gan.dot").read_text()
    edges = re.findall(r"^\s*(\S+ -> \S+) \[style=invis\]", out, re.M)
    assert edges and len(edges) == len(set(edges))

# ---------------------------------------------------------------- summary
@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_summary_parameter_count_matches_the_initial_state(path):
    spec = load_spec(str(path))
    r = json.loads(invoke("summary", path, "--json").stdout)
    cm = compile_spec(spec, graphs=())
    state = cm.initial_state()
    assert r["totals"]["params"] == sum(state[n].size for n, p in cm.params.items() if p.kind == "param")
    assert sum(p["count"] for p in r["params"]) == sum(state[n].size for n in cm.params)
    assert [n["name"] for n in r["nodes"] if n["kind"] == "node"] == [", ".join(a.targets) for a in spec.graph]
    t = r["totals"]
    assert t["training_flops_per_step"] > 2 * t["forward_flops_per_step"] > 0
    # layer shorthands: the parameters (and buffers) an entry makes add up to those not declared in the spec
    made = sum(n["params"] + n["buffers"] for n in r["nodes"])
    assert made == sum(p["count"] for p in r["params"] if p["name"] not in spec.params)
    made = sum(n["params"] for n in r["nodes"])
    assert made == sum(p["count"] for p in r["params"] if p["name"] not in spec.params and p["kind"] == "param")


def test_summary_flops_of_the_mlp_by_hand():
    r = json.loads(invoke("summary", MLP, "--json").stdout)
    t = r["totals"]
    B, D, H, K = 64, 64, 256, 10  # train.batch_size and the dims of models/mlp.yaml
    assert r["batch_size"] == B
    matmul = 2 * D * H + 2 * H * H + 2 * H * K
    assert t["forward_matmul_flops_per_example"] == matmul
    assert t["forward_matmul_flops_per_step"] == B * matmul
    kinds = t["forward_flops_by_kind"]
    assert t["forward_flops_per_step"] == sum(kinds.values())
    assert kinds["conv"] == 0
    # bias adds and relus at least, 1 per element; dropout, softmax and the loss a few more
    assert B * (2 * H + 2 * H + K) <= kinds["elementwise"] <= B * 20 * (2 * H + K)
    # training: the forward products, the weight gradients (same size) and the gradients of h1 and h2
    # (not of the input x, which nothing trains)
    assert t["training_matmul_flops_per_step"] == 3 * B * matmul - B * 2 * D * H
    per_node = {n["name"]: n for n in r["nodes"]}
    assert per_node["h1"]["matmul_flops_per_example"] == 2 * D * H
    assert per_node["logits"]["matmul_flops_per_example"] == 2 * H * K
    # --batch-size sets N
    r2 = json.loads(invoke("summary", MLP, "--json", "--batch-size", "8").stdout)
    assert r2["totals"]["forward_matmul_flops_per_step"] == 8 * matmul


def test_summary_counts_conv_and_scan_flops():
    r = json.loads(invoke("summary", ROOT / "models" / "convnet.yaml", "--json").stdout)
    per_node = {n["name"]: n for n in r["nodes"]}
    # conv2d(x, 32, 3, padding=1) on [N, 1, 8, 8]: 2 * Cout * Hout * Wout * Cin * kh * kw per example
    assert per_node["c1"]["conv_flops_per_example"] == 2 * 32 * 8 * 8 * 1 * 3 * 3
    assert per_node["c1"]["params"] == 32 * 1 * 3 * 3 + 32
    one = json.loads(invoke("summary", CHAR_LSTM, "--json").stdout)
    assert one["dims_counted_as_1"] == ["T"]
    sixty_four = json.loads(invoke("summary", CHAR_LSTM, "--json", "--dim", "T=64").stdout)
    E, H, V = 64, 256, 97
    step = 2 * E * 4 * H + 2 * H * 4 * H + 2 * H * V  # input projection, recurrence, logits
    assert sixty_four["totals"]["forward_matmul_flops_per_example"] == 64 * step
    assert one["totals"]["forward_matmul_flops_per_example"] == step



# (specs of several objectives: see test_summary_forward_flops_are_the_objectives_step's)
ONE_LOSS = [p for p in MODELS if "objectives" not in load_spec(str(p)).train]


@pytest.mark.parametrize("path", ONE_LOSS, ids=[p.stem for p in ONE_LOSS])
def test_summary_forward_flops_add_up_the_entries_a_step_computes(path):
    """An entry's FLOPs counted the nodes its lowering made that nothing reads, which no compiled
    graph runs: cae's J, jacobian(h, x), counted the gradient of h.W on its way to the gradient
    of x (1,597,440 per example for 1,069,056), so the nodes added up to more than the forward
    FLOPs. A spec with one loss computes every entry, loss and metric forward (not the outputs)."""
    r = json.loads(invoke("summary", path, "--json").stdout)
    entries = sum(n["flops_per_example"] for n in r["nodes"] if n["kind"] != "output")
    assert r["totals"]["forward_flops_per_example"] == pytest.approx(entries)
    if path.stem == "cae":
        D = H = 64  # the tiled forward product and the one-hot rows' product back to x, per row of J
        J = next(n for n in r["nodes"] if n["name"] == "J")
        assert J["matmul_flops_per_example"] == 2 * (2 * H * D * H)


@pytest.mark.parametrize("name, objective, left_out", [
    ("gan", "discriminator", ["g_loss"]), ("gan", "generator", ["d_loss"]),
    ("semisupervised", "classify", ["h_noisy", "recon", "reconstruct"]), ("semisupervised", "reconstruct", ["classify"])])
def test_summary_forward_flops_are_the_objectives_step(name, objective, left_out):
    """A spec whose objectives name graph entries (no loss:) counted its forward FLOPs from its
    metrics alone: gan's left out both losses, semisupervised's --objective reconstruct counted
    19,734 per example, its classifier, and none of its 35,000 of reconstruction. The forward
    FLOPs are what the objective's training step computes forward: its loss and the metrics."""
    r = json.loads(invoke("summary", ROOT / "models" / f"{name}.yaml", "--json", "--objective", objective).stdout)
    assert r["totals"]["training_objective"] == objective
    counted = sum(n["flops_per_example"] for n in r["nodes"] if n["kind"] != "output" and n["name"] not in left_out)
    assert r["totals"]["forward_flops_per_example"] == pytest.approx(counted)
    assert r["totals"]["training_flops_per_example"] > r["totals"]["forward_flops_per_example"]
    # the table says whose step its totals count
    table = invoke("summary", ROOT / "models" / f"{name}.yaml", "--objective", objective).stdout
    assert f"forward FLOPs ({objective}) " in table and f"training FLOPs ({objective}) " in table


def test_summary_counts_buffers_apart_from_a_layers_parameters(tmp_path):
    """The nodes table's params of a stateful LSTM (345,088) and of a batch_norm (128 for 32
    channels) counted their buffers, the carried state and the running averages, which the
    totals count apart: the LSTM has 328,704 parameters. The running averages' update is part
    of the forward FLOPs, as of the node's."""
    spec = tmp_path / "bn.yaml"
    spec.write_text("flowgrad: 1\nname: bn\ndims: {D: 6, C: 32}\ninputs:\n  x: {shape: [N, D]}\n"
                    "graph:\n  a: dense(x, C)\n  b: batch_norm(a)\nloss: mean(b * b)\n")
    r = json.loads(invoke("summary", spec, "--json").stdout)
    b = next(n for n in r["nodes"] if n["name"] == "b")
    assert (b["params"], b["buffers"]) == (2 * 32, 2 * 32)
    assert r["totals"]["params"] == 6 * 32 + 32 + 2 * 32 and r["totals"]["buffers"] == 2 * 32
    assert r["totals"]["forward_flops_per_example"] == pytest.approx(sum(n["flops_per_example"] for n in r["nodes"]))
    lstm = json.loads(invoke("summary", ROOT / "models" / "char_lstm_stateful.yaml", "--json").stdout)
    hs = next(n for n in lstm["nodes"] if n["name"] == "hs")
    E, H = 64, 256
    assert hs["params"] == E * 4 * H + H * 4 * H + 4 * H and hs["buffers"] == 2 * 32 * H
    table = invoke("summary", ROOT / "models" / "char_lstm_stateful.yaml").stdout
    assert "345,088" not in table and "328,704" in table


def test_summary_sizes_an_output_by_an_integer_scalar_input(tmp_path):
    """The gan's samples, zeros(count, Z) through the generator, were counted as one row
    whatever --dim said, and --dim count=16 was refused ('no symbolic dim count'); count
    is listed as a dim counted as 1 and --dim values it."""
    gan = ROOT / "models" / "gan.yaml"
    one = json.loads(invoke("summary", gan, "--json").stdout)
    sixteen = json.loads(invoke("summary", gan, "--json", "--dim", "count=16").stdout)
    assert one["dims_counted_as_1"] == ["count"] and sixteen["dims_counted_as_1"] == []
    flops = lambda r: next(n for n in r["nodes"] if n["name"] == "samples")["flops_per_step"]  # noqa: E731
    assert flops(sixteen) == pytest.approx(16 * flops(one))
    # an integer scalar input that sizes nothing is no dim
    spec = tmp_path / "shift.yaml"
    spec.write_text("flowgrad: 1\nname: shift\ndims: {D: 3}\ninputs:\n  x: {shape: [N, D]}\n"
                    "  k: {shape: [], dtype: int64}\ngraph:\n  y: x * cast(k, 'float32')\noutputs:\n  y: y\n")
    assert json.loads(invoke("summary", spec, "--json").stdout)["dims_counted_as_1"] == []

@pytest.mark.parametrize("name", ["gan", "vae"])
def test_summary_counts_an_output_drawn_count_rows_per_row_drawn(name):
    """gan's samples, G(normal(zeros(count, Z))), read 844 FLOPs per example: its FLOPs divided
    by the batch N (64), which does not size it, where one sample costs what one example's fake
    does (54,016). An output whose leading dim is a count input's counts per row drawn, and the
    table says so."""
    path = ROOT / "models" / f"{name}.yaml"
    for extra in ([], ["--dim", "count=16"], ["--batch-size", "8"]):
        r = json.loads(invoke("summary", path, "--json", *extra).stdout)
        samples = next(n for n in r["nodes"] if n["name"] == "samples")
        count = r["dims"].get("count", 1)
        assert samples["flops_per"] == "count"
        assert samples["flops_per_example"] == pytest.approx(samples["flops_per_step"] / count)
        batch = [n for n in r["nodes"] if n["kind"] != "output"]
        assert all(n["flops_per"] == "example" for n in batch)
        assert all(n["flops_per_example"] == pytest.approx(n["flops_per_step"] / r["batch_size"]) for n in batch)
        if name == "gan":  # the same generator on the same noise size, per row
            fake = next(n for n in r["nodes"] if n["name"] == "fake")
            assert samples["flops_per_example"] == pytest.approx(fake["flops_per_example"]) == 54016
    table = invoke("summary", path).stdout
    row = next(line for line in table.splitlines() if "samples" in line)
    assert " per count row" in row


def test_summary_refuses_a_float16_step_that_check_refuses():
    """summary --dtype float16 counted mlp's step, whose Adam eps (1e-8) float16 rounds to 0,
    which check --dtype float16 refuses: summary refuses it with the same located error."""
    mlp = ROOT / "models" / "mlp.yaml"
    refused = invoke("summary", mlp, "--dtype", "float16", code=1)
    assert "which float16 rounds to 0" in refused.stderr and "mlp.yaml:27:14" in refused.stderr
    assert refused.stderr == invoke("check", mlp, "--dtype", "float16", code=1).stderr
    assert refused.stdout == ""
    with pytest.raises(Exception, match="float16 rounds to 0"):
        from compiler import visual
        visual.summary(load_spec(str(mlp)), dtype="float16", names=FLAGS)
    # a larger eps trains, and is counted
    assert json.loads(invoke("summary", mlp, "--dtype", "float16", "--json",
                             "--set", "train.optimizer.adam.eps=1e-4").stdout)["totals"]["training_flops_per_step"] > 0


def test_summary_lists_and_values_a_size_an_op_makes(tmp_path):
    """arange(n) is [L], a dim no input declares: summary counted it as 1 without saying so
    (the note named n alone), and --dim L=5 was refused ('no symbolic dim L')."""
    spec = tmp_path / "ar.yaml"
    spec.write_text("flowgrad: 1\nname: ar\ndims: {D: 3, H: 4}\ninputs:\n  x: {shape: [N, D]}\n"
                    "  n: {shape: [], dtype: int64}\ngraph:\n  h: dense(x, H)\n"
                    "  r: dense(unsqueeze(cast(arange(n), 'float32'), axes=1), H)\n"
                    "loss: mean(h) + mean(r)\n")
    one = json.loads(invoke("summary", spec, "--json").stdout)
    assert one["dims_counted_as_1"] == ["L"]
    assert "symbolic dims counted as 1: L " in invoke("summary", spec).stderr
    five = json.loads(invoke("summary", spec, "--json", "--dim", "L=5").stdout)
    assert five["dims_counted_as_1"] == [] and five["dims"]["L"] == 5
    flops = lambda r: next(n for n in r["nodes"] if n["name"] == "r")["flops_per_example"]  # noqa: E731
    assert flops(five) == pytest.approx(5 * flops(one))


def test_summary_batch_size_sizes_a_stateful_layers_buffers():
    """summary --batch-size 4 of a stateful LSTM listed its carried-state buffers with
    train.batch_size (32) rows, as no run at batch 4 has them, while counting FLOPs for 4."""
    path = ROOT / "models" / "char_lstm_stateful.yaml"
    r = json.loads(invoke("summary", path, "--json", "--batch-size", "4").stdout)
    buffers = {p["name"]: p for p in r["params"] if p["kind"] == "buffer"}
    assert buffers and all(p["shape"][0] == 4 for p in buffers.values()), buffers
    assert r["totals"]["buffers"] == sum(p["count"] for p in buffers.values()) == 2 * 4 * 256
    cm = compile_spec(load_spec(str(path)).with_batch_size(4), graphs=())
    assert {n: list(p.shape) for n, p in cm.params.items() if p.kind == "buffer"} == \
        {n: p["shape"] for n, p in buffers.items()}


def test_summary_counts_a_bias_add_only_for_a_gemm_with_a_bias():
    """A weight gradient's gemm (hᵀ @ δ, beta 0, emitted without C) was counted an add per
    output element for a bias it does not have: 32,768 FLOPs too many in mlp's training step."""
    from compiler.visual import node_flops, training_step

    nodes = [n for n in training_step(load_spec(str(MLP))).nodes if n.op.name == "gemm"]
    env = {"N": 64}
    no_bias = [n for n in nodes if float(n.attrs["beta"]) == 0.0]
    assert no_bias and len(no_bias) < len(nodes)  # weight gradients, and the forward x @ W + b
    for n in nodes:
        f = node_flops(n, env)
        m, k = n.outputs[0].shape
        assert f.get("elementwise", 0) == (0 if n in no_bias else 64 * k if m == "N" else m * k), (n.attrs, f)


@pytest.mark.parametrize("name", ["cae", "char_lstm_stateful", "dates_attention"])
def test_summary_counts_no_flops_for_copies_and_reshapes(name):
    """reshape_dims (a Reshape), precomputed (an Identity), tile_batch / tile_rows (Tile) and
    one_hot_blocks compute nothing, like the shape and copy ops they are."""
    from compiler.ir import body_nodes
    from compiler.visual import node_flops, training_step

    copies = {"reshape_dims", "precomputed", "tile_batch", "tile_rows", "one_hot_blocks"}
    seen = []

    def walk(nodes):
        for n in nodes:
            walk(body_nodes(n) or [])
            if n.op.name in copies:
                seen.append(n.op.name)
                assert node_flops(n, {"N": 64}) == {}, n.op.name

    spec = load_spec(str(ROOT / "models" / f"{name}.yaml"))
    walk(training_step(spec).nodes)
    assert seen


def test_compare_flop_bound_counts_every_objective_of_a_step():
    """benchmarks/compare.py times a gan step as `flowgrad bench` runs it (the discriminator's
    update, then the generator's): its FLOP bound must count both objectives' training FLOPs."""
    import importlib.util

    spec_ = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    compare = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(compare)
    gan = ROOT / "models" / "gan.yaml"
    per = {}
    for name in ("discriminator", "generator"):
        t = json.loads(invoke("summary", gan, "--json", "--objective", name).stdout)["totals"]
        per[name] = t["training_matmul_flops_per_step"] + t["training_conv_flops_per_step"]
    assert compare.training_flops("models/gan.yaml", []) == per["discriminator"] + per["generator"]
    mlp = json.loads(invoke("summary", MLP, "--json").stdout)["totals"]
    assert compare.training_flops("models/mlp.yaml", []) == mlp["training_matmul_flops_per_step"]


def test_summary_training_flops_are_the_products_the_compiled_step_runs(tmp_path, monkeypatch):
    """The FLOP bound of benchmarks/compare.py's dates_attention row counted its sources as 31
    characters from a table written by hand, and summary counted the gradient of each embedding
    (a one-hot product into the 70-row table, as compiled) as one add per element: a seventh of
    the step's product FLOPs went uncounted. Here the matrix products onnxruntime runs in one
    training step (its profile, Scan bodies included) are summed and compared; the sequence
    sizes come from the batch timed, as compare.py now reads them."""
    import importlib.util
    import math

    import onnxruntime as ort

    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.trainer import Trainer
    from spec import load_spec

    spec_ = importlib.util.spec_from_file_location("compare", ROOT / "benchmarks" / "compare.py")
    compare = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(compare)
    overrides = ["dims.H=8", "dims.A=6", "dims.E=4", "train.data.options.n=300", "train.batch_size=16"]
    path = "models/dates_attention.yaml"
    assert compare.sequence_dims(path, overrides) == ["S=31", "T=11"]  # what the bundled dates data pads to

    class Profiled(ort.SessionOptions):
        def __init__(self):
            super().__init__()
            self.enable_profiling = True
            self.profile_file_prefix = str(tmp_path / "profile")

    spec = load_spec(str(ROOT / path), overrides)
    cm = compile_spec(spec)
    batch = real_batch(spec, cm, spec.batch_size, 0)
    monkeypatch.setattr(ort, "SessionOptions", Profiled)
    trainer = Trainer(cm, "cpu", 1, seed=0, cuda_graphs=False)
    trainer.train_step(cm.schedule[0], batch, lr=1e-4, step=0)
    events = json.loads(open(trainer.runners["train"].session.end_profiling()).read())
    ran = 0
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") != "Node" or args.get("op_name") not in ("MatMul", "FusedMatMul", "Gemm", "FusedGemm"):
            continue
        a, out = [list(d.values())[0] for d in args["input_type_shape"][:1] + args["output_type_shape"][:1]]
        if args["op_name"] == "MatMul" and a[0] == 1 and len(a) == 2:
            continue  # a row of ones times the rows: a bias gradient's sum_to, which summary counts as a reduction
        m = out[-2] if len(out) > 1 else 1
        k = a[-1] if args["op_name"] == "MatMul" or a[-2] == m else a[-2]  # (the other dim of A, transposed or not)
        ran += 2 * math.prod(out) * k
    counted = compare.training_flops(path, overrides)
    assert ran == counted, (ran, counted)


def test_summary_training_conv_flops_are_the_convolutions_the_compiled_step_runs(tmp_path, monkeypatch):
    """avg_pool2d's gradient is emitted as a depthwise ConvTranspose (a 1 / (kh * kw) kernel) and
    was counted as pooling, one FLOP per window element and no conv FLOPs: this step ran 1,182,720
    conv FLOPs, of which summary's training conv count had 1,105,920 (a 3x3 average pool over
    [8, 16, 8, 4] is 73,728 of them). Here the Conv and ConvTranspose kernels onnxruntime runs in one training step (its
    profile; grouped convolutions run a kernel per group) are summed and compared, over
    convolutions with strides, padding, dilation and groups."""
    import math

    import numpy as np
    import onnxruntime as ort

    from compiler.gradcheck import random_batch
    from runtime.trainer import Trainer

    path = tmp_path / "conv.yaml"
    path.write_text("""flowgrad: 1
name: conv
inputs:
  x: {shape: [N, 4, 16, 16]}
  y: {shape: [N], dtype: int64}
graph:
  c1: conv2d(x, 8, 3, stride=2, padding=1, act=relu)
  c2: conv2d(c1, 8, 3, padding=2, dilation=2, groups=4)
  c3: conv2d(c2, 16, [3, 1], stride=[1, 2], padding=[1, 0], groups=8, bias=false)
  p: avg_pool2d(c3, 3, stride=1, padding=1)
  q: avg_pool2d(max_pool2d(p, 2), [2, 1], stride=[1, 1])
  logits: dense(flatten(q), 10)
loss: cross_entropy(logits, y)
train: {batch_size: 8}
""")

    class Profiled(ort.SessionOptions):
        def __init__(self):
            super().__init__()
            self.enable_profiling = True
            self.profile_file_prefix = str(tmp_path / "profile")

    spec = load_spec(str(path))
    cm = compile_spec(spec)
    batch = random_batch(spec, ["x", "y"], np.random.default_rng(0), "float32", {"N": 8})
    monkeypatch.setattr(ort, "SessionOptions", Profiled)
    trainer = Trainer(cm, "cpu", 1, seed=0, cuda_graphs=False)
    trainer.train_step(cm.schedule[0], batch, lr=1e-4, step=0)
    events = json.loads(open(trainer.runners["train"].session.end_profiling()).read())
    ran = 0
    for ev in events:
        args = ev.get("args", {})
        if ev.get("cat") != "Node" or args.get("op_name") not in ("Conv", "FusedConv", "ConvTranspose"):
            continue
        (x, w), out = [list(d.values())[0] for d in args["input_type_shape"][:2]], \
            list(args["output_type_shape"][0].values())[0]
        # 2 FLOPs a multiply-add: each output (a transposed one: each input) reads w[1:] of weights
        ran += 2 * math.prod(x if args["op_name"] == "ConvTranspose" else out) * math.prod(w[1:])
    t = json.loads(invoke("summary", path, "--json").stdout)["totals"]
    assert ran == t["training_conv_flops_per_step"], (ran, t["training_conv_flops_per_step"])


def test_summary_table_and_check_points_at_it():
    out = invoke("summary", MLP).stdout
    assert "mlp: nodes" in out and "mlp: parameters" in out and "training FLOPs" in out
    assert "85,002" in out
    res = invoke("check", MLP)
    assert res.stdout.rstrip().endswith("spec OK")
    assert "flowgrad summary" in res.stderr


def test_summary_bad_dim():
    res = invoke("summary", MLP, "--dim", "T", code=1)
    assert "NAME=INTEGER" in res.stderr
    # a dim the inputs lack, the batch dim, or a zero size was taken, and silently changed nothing
    # (or the per-step counts without the per-example ones)
    for dim, words in (("Q=5", "no symbolic dim 'Q'"), ("N=4", "the batch dim"), ("T=0", "at least 1")):
        res = invoke("summary", CHAR_LSTM, "--dim", dim, code=1)
        assert words in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_plot_curves_reads_a_history_cut_short_and_refuses_a_damaged_one(tmp_path):
    from runtime.plots import read_history
    from spec.errors import DataError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2, "tra')  # a run killed mid-write
    assert read_history(str(tmp_path)) == [{"epoch": 1, "train_loss": 1.0}]
    for text in ("[1, 2]\n", "{bad\n{\"epoch\": 1}\n"):
        path.write_text(text)
        with pytest.raises(DataError, match="metrics.jsonl:1:"):
            read_history(str(tmp_path))
    path.write_bytes(b"\xff\xfe\n")
    with pytest.raises(DataError, match="unreadable"):
        read_history(str(tmp_path))


def test_plot_curves_names_a_damaged_line_by_its_number_in_the_file(tmp_path):
    """Blank lines (an edited file, trailing newlines) are skipped, and a damaged line after them
    was named by its count among the lines that were not blank: metrics.jsonl:2 for line 4."""
    from runtime.plots import read_history
    from spec.errors import DataError

    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n\n\n{"epoch": "x"}\n'
                                            '{"epoch": 2, "train_loss": 0.5}\n')
    with pytest.raises(DataError, match="metrics.jsonl:4: not a record of an epoch"):
        read_history(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('\n{"epoch": 1, "train_loss": 1.0}\n\n{bad\n{"epoch": 2}\n')
    with pytest.raises(DataError, match="metrics.jsonl:4: not a JSON record"):
        read_history(str(tmp_path))


def test_plot_curves_draws_a_one_epoch_run(tmp_path, monkeypatch):
    """A line through one point is invisible: a run of one epoch (or a value between gaps) gets markers."""
    import runtime.plots as plots

    one, three = tmp_path / "one", tmp_path / "three"
    one.mkdir(), three.mkdir()
    (one / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.0, "valid_loss": 1.9}\n')
    (three / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.0}\n{"epoch": 2, "train_loss": 1.5, "valid_loss": 1.4}\n'
                                         '{"epoch": 3, "train_loss": 1.2}\n')
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    plots.plot_curves([str(one), str(three)], str(tmp_path / "c.png"))
    lines = {line.get_label(): line for line in figs[0].axes[0].get_lines()}
    assert set(lines) == {"one train", "one valid", "three train", "three valid"}
    for label in ("one train", "one valid", "three valid"):  # a single point each: drawn as a marker
        assert lines[label].get_marker() not in (None, "None", "", " "), label
    assert lines["three train"].get_marker() in (None, "None", "", " ")  # a line: as before


def test_plot_curves_tells_apart_runs_of_the_same_name(tmp_path, monkeypatch):
    """Runs were labelled by their directory's name alone: runs/a/mlp and runs/b/mlp were two
    curves called "mlp train"; they are labelled by their paths now (and a run given twice, once
    with a trailing slash, is drawn once)."""
    import runtime.plots as plots

    for sub in ("a/mlp", "b/mlp", "c/other"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n')
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    runs = [str(tmp_path / "a" / "mlp"), str(tmp_path / "b" / "mlp") + "/", str(tmp_path / "c" / "other"),
            str(tmp_path / "c" / "other") + "/"]
    plots.plot_curves(runs, str(tmp_path / "c.png"))
    labels = [line.get_label() for line in figs[0].axes[0].get_lines()]
    assert labels == [f"{tmp_path / 'a' / 'mlp'} train", f"{tmp_path / 'b' / 'mlp'} train", "other train"]


def test_plot_curves_wraps_many_measures_into_rows(tmp_path, monkeypatch):
    """Every measure was a panel in one row: a GAN's, or a few models' together, made a picture
    dozens of inches wide; four panels a row now."""
    import runtime.plots as plots

    record = {"epoch": 1, **{f"train_m{k}": 1.0 for k in range(6)}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    plots.plot_curves([str(tmp_path)], str(tmp_path / "c.png"))
    assert [ax.get_title() for ax in figs[0].axes] == [f"m{k}" for k in range(6)]
    assert tuple(figs[0].get_size_inches()) == (20, 8)


def test_plot_curves_marks_a_value_between_nans(tmp_path, monkeypatch):
    """A validation metric may be NaN or inf (only training's are checked): a value between two
    of them was a line to nowhere, and so drawn as nothing at all; NaN and inf are gaps now."""
    import runtime.plots as plots

    (tmp_path / "metrics.jsonl").write_text(
        '{"epoch": 1, "train_loss": 1.0, "valid_loss": NaN}\n{"epoch": 2, "train_loss": 0.5, "valid_loss": 0.7}\n'
        '{"epoch": 3, "train_loss": 0.4, "valid_loss": Infinity}\n')
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    plots.plot_curves([str(tmp_path)], str(tmp_path / "c.png"))
    valid = next(line for line in figs[0].axes[0].get_lines() if line.get_label().endswith("valid"))
    assert valid.get_marker() not in (None, "None", "", " ")
    figs[0].canvas.draw()
    assert figs[0].axes[0].get_ylim()[1] < 10  # (inf is no point to scale the axis to)


@pytest.mark.parametrize("epochs", [[1], [1, 2], [4, 5, 6], list(range(1, 41))])
def test_plot_curves_ticks_whole_epochs(epochs, tmp_path, monkeypatch):
    """Epochs are whole numbers: a short run's axis was ticked 1.00, 1.25, 1.50, ... (and one
    epoch's 0.96, 0.98, 1.00, ...)."""
    import runtime.plots as plots

    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"epoch": {e}, "train_loss": {1 / e}}}\n' for e in epochs))
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    plots.plot_curves([str(tmp_path)], str(tmp_path / "c.png"))
    ax = figs[0].axes[0]
    figs[0].canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(t == int(t) for t in ticks), ticks
    assert epochs[0] in ticks or len(epochs) > 10  # (a long run is ticked every few epochs)


def test_plot_attention_draws_the_tokens_as_generated(tmp_path, monkeypatch):
    """The rows were the translation's characters and then "<eos>" always: a translation that
    stopped at max_len without one was drawn with an extra "<eos>" row, from a position the model
    never generated."""
    import numpy as np

    import runtime.plots as plots
    from runtime import datasets_text as T
    from runtime import export as E
    from runtime.api import load, train

    spec = load(str(ROOT / "models" / "reverse_attention.yaml"), [
        "dims.H=4", "dims.E=4", "dims.A=4", "train.data.options.n=60", "train.data.options.max_len=6"])
    run = train(spec, run_dir=str(tmp_path / "run"), steps=1, threads=1, device="cpu").run_dir
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    real = E.translate_tokens
    for tokens, rows in (([5, 6, 7], ["c", "d", "e"]), ([5, T.EOS, 0], ["c", "<eos>"])):
        def fake(*args, tokens=tokens, **kwargs):
            return np.asarray([tokens]), real(*args, **kwargs)[1]
        monkeypatch.setattr(E, "translate_tokens", fake)
        plots.plot_attention(run, "abc", str(tmp_path / "a.png"))
        ax = figs[-1].axes[0]
        assert [t.get_text() for t in ax.get_yticklabels()] == rows
        assert ax.get_images()[0].get_array().shape == (len(rows), 3)


def test_graph_output_paths_are_made_or_refused_in_one_line(tmp_path):
    """A path under a file (or an unwritable place) ended graph with an OSError traceback;
    export, predict, plot and graph now make missing directories and refuse such paths alike."""
    (tmp_path / "file").write_text("")
    res = invoke("graph", MLP, "-o", tmp_path / "file" / "g.dot", code=1)
    assert "a file is in the way" in res.output and "pick another path" in res.output
    invoke("graph", MLP, "-o", tmp_path / "new" / "dir" / "g.dot")
    assert (tmp_path / "new" / "dir" / "g.dot").read_text().startswith("digraph")


def test_graph_dot_is_the_same_in_every_process(tmp_path):
    """Cluster ids took Python's hash() of a string, which changes per process: the same spec
    gave a different .dot each time."""
    outs = []
    for k in range(2):
        path = tmp_path / f"g{k}.dot"
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "graph", str(ROOT / "models" / "gan.yaml"), "-o", str(path)],
                       check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": str(k + 1)}, timeout=120)
        outs.append(path.read_text())
    assert "cluster_" in outs[0] and outs[0] == outs[1]


def test_plot_curves_draws_a_metric_of_several_objectives_in_one_panel(tmp_path, monkeypatch):
    """With several objectives each one's steps measure the metrics (train_discriminator/p_real,
    train_generator/p_real) and validation measures them once (valid_p_real): the training curves
    and the validation curve of one metric were in different panels. They share the metric's
    panel now; each objective's loss keeps its own, training's and validation's together."""
    import runtime.plots as plots

    record = {"epoch": 1, "train_discriminator/loss": 0.9, "train_discriminator/p_real": 0.5,
              "train_generator/loss": 1.4, "train_generator/p_real": 0.6, "valid_p_real": 0.7,
              "valid_discriminator/loss": 0.6, "valid_generator/loss": 1.7}
    (tmp_path / "gan").mkdir()
    (tmp_path / "gan" / "metrics.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "epoch": 2}) + "\n")
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    plots.plot_curves([str(tmp_path / "gan")], str(tmp_path / "c.png"))
    panels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in figs[0].axes}
    assert panels == {"discriminator/loss": ["gan train", "gan valid"], "generator/loss": ["gan train", "gan valid"],
                      "p_real": ["gan train (discriminator)", "gan train (generator)", "gan valid"]}
    styles = [line.get_linestyle() for line in figs[0].axes[2].get_lines()]
    assert len(set(styles)) == 3  # (the two objectives' training curves told apart)



def test_plot_curves_draws_the_validation_of_the_objective_whose_loss_is_the_specs_beside_its_training(tmp_path, monkeypatch):
    """An objective whose loss is the spec's (loss: loss) is trained as train_first/loss and validated
    as valid_loss: the two were panels of their own, "first/loss" with the training curve alone
    and "loss" with the validation curve alone. A spec loss that no objective minimises keeps its
    panel."""
    import runtime.plots as plots

    shared = {"epoch": 1, "train_first/loss": 0.9, "train_second/loss": 1.4, "train_first/err": 0.5,
              "train_second/err": 0.6, "valid_loss": 1.2, "valid_err": 0.7, "valid_second/loss": 1.7}
    apart = {"epoch": 1, "train_first/loss": 0.9, "train_second/loss": 1.4, "valid_loss": 3.1,
             "valid_first/loss": 1.3, "valid_second/loss": 1.7}
    panels, drawn = [], {}
    for name, record in (("shared", shared), ("apart", apart)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, "epoch": 2}) + "\n")
        figs = []
        monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
        plots.plot_curves([str(tmp_path / name)], str(tmp_path / "c.png"))
        panels.append({ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in figs[0].axes})
        drawn[name] = {ax.get_title(): list(ax.get_lines()[-1].get_ydata()) for ax in figs[0].axes}
    assert panels[0] == {"first/loss": ["shared train", "shared valid"], "second/loss": ["shared train", "shared valid"],
                         "err": ["shared train (first)", "shared train (second)", "shared valid"]}
    assert drawn["shared"]["first/loss"] == [1.2, 1.2]  # valid_loss
    assert panels[1] == {"first/loss": ["apart train", "apart valid"], "second/loss": ["apart train", "apart valid"],
                         "loss": ["apart valid"]}
    assert drawn["apart"]["first/loss"] == [1.3, 1.3] and drawn["apart"]["loss"] == [3.1, 3.1]

def test_plot_curves_puts_the_objectives_losses_side_by_side(tmp_path, monkeypatch):
    """A GAN's panels were discriminator/loss, p_real, p_fake, generator/loss (the order of the
    record's keys): the two losses at opposite ends. The objectives' losses come first now, then
    the metrics; a run of one objective keeps its order."""
    import runtime.plots as plots

    gan = {"epoch": 1, "train_discriminator/loss": 0.9, "train_discriminator/p_real": 0.5,
           "train_discriminator/p_fake": 0.2, "train_generator/loss": 1.4, "train_generator/p_real": 0.6,
           "train_generator/p_fake": 0.3, "valid_p_real": 0.7, "valid_p_fake": 0.1,
           "valid_discriminator/loss": 0.6, "valid_generator/loss": 1.7}
    mlp = {"epoch": 1, "train_acc": 0.5, "train_loss": 1.0, "valid_acc": 0.6, "valid_loss": 0.9}
    titles = []
    for name, record in (("gan", gan), ("mlp", mlp)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        figs = []
        monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
        plots.plot_curves([str(tmp_path / name)], str(tmp_path / "c.png"))
        titles.append([ax.get_title() for ax in figs[0].axes])
    assert titles == [["discriminator/loss", "generator/loss", "p_real", "p_fake"], ["acc", "loss"]]


def test_plot_curves_says_which_run_has_no_metrics_yet(tmp_path):
    """A run that had not finished an epoch (an empty metrics.jsonl) was left out of the picture
    without a word; it is named now, and the others drawn."""
    for name, text in (("done", '{"epoch": 1, "train_loss": 1.0}\n'), ("started", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(text)
    res = invoke("plot", "curves", tmp_path / "done", tmp_path / "started", "-o", tmp_path / "c.png")
    lines = [line for line in res.stderr.splitlines() if "warning" in line]
    assert lines == [f"warning: {tmp_path / 'started'} has no metrics yet (no epoch finished): drawing the other runs"]
    assert (tmp_path / "c.png").is_file()


def test_plot_curves_of_a_run_whose_every_step_overflowed_says_so(tmp_path):
    """A mixed-precision run whose every step overflowed records epochs without a number: plot
    curves said that the runs recorded no metrics yet and to train them for an epoch, as though
    no epoch had finished (its metrics.jsonl held three)."""
    lines = "".join(f'{{"epoch": {e}, "step": {8 * e}, "lr": 0.001, "seconds": 0.1}}\n' for e in (1, 2, 3))
    for name, text in (("overflowed", lines), ("done", '{"epoch": 1, "train_loss": 1.0}\n')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(text)
    res = invoke("plot", "curves", tmp_path / "overflowed", "-o", tmp_path / "c.png", code=1)
    assert res.stderr.startswith(f"error: {tmp_path / 'overflowed'}: its epochs recorded no numbers: every training "
                                 "step overflowed in mixed precision and was skipped")
    assert "mixed_precision" in res.stderr and "at least one epoch" not in res.stderr
    res = invoke("plot", "curves", tmp_path / "done", tmp_path / "overflowed", "-o", tmp_path / "c.png")
    assert f"warning: {tmp_path / 'overflowed'}: its epochs recorded no numbers" in res.stderr


@pytest.mark.parametrize("graphs, hint", [
    ({"infer": {"outputs": [{"name": "samples"}]}}, "models/reverse_attention.yaml"),  # a GAN's
    ({"infer": {"outputs": [{"name": "probs"}]}, "generate": {"inputs": [{"name": "prompt"}]}},
     "models/reverse_attention.yaml"),  # a language model's
    ({"infer": {"outputs": [{"name": "probs"}]}, "generate": {"inputs": [{"name": "src"}, {"name": "beam_width"}]}},
     "add e.g. 'attention: attn' under outputs"),  # a translator's that returns no attention
])
def test_plot_attention_of_a_run_without_attention_says_so(graphs, hint, tmp_path):
    """A GAN's run was told it "has no sampling graph" and that "the spec needs a 'generate'
    section", as though that were all it lacked; it is told it has no attention to draw, and how
    a spec gets one, before anything is exported. A language model's (char_lstm's) was told to add
    'attention: attn' under outputs, the weights of an attention scan it does not have: only a
    translator is, and a language model is pointed at an attention model."""
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "manifest.json").write_text(json.dumps({"flowgrad_manifest": 1, "graphs": graphs}))
    res = invoke("plot", "attention", tmp_path, "--text", "abc", "-o", tmp_path / "a.png", code=1)
    assert f"error: {tmp_path} has no attention to draw: plot attention needs a translator" in res.stderr
    assert hint in res.stderr and "sampling graph" not in res.stderr


def test_plot_attention_of_a_translator_trained_on_ids_names_the_run(tmp_path):
    """A translator trained on token ids of one's own (an .npz, or arrays) has no vocabulary to read
    --text with: plot attention exported two graphs into a temporary folder and then said
    '/tmp/tmpXXXX/gen.onnx carries no source vocabulary', a file the user never had, with the hint to
    export a run trained on a bundled dataset. It names the run now, before exporting anything."""
    import numpy as np

    from runtime.api import load, train

    rng = np.random.default_rng(0)
    n, s, t = 8, 5, 4
    data = {"src": rng.integers(1, 6, (n, s)), "src_len": rng.integers(1, s + 1, n),
            "tgt_in": rng.integers(0, 6, (n, t)), "tgt": rng.integers(0, 6, (n, t)),
            "tgt_mask": np.ones((n, t), np.float32)}
    spec = load(str(ROOT / "models" / "reverse_attention.yaml"), [
        "dims.SV=6", "dims.TV=6", "dims.H=4", "dims.E=4", "dims.A=4", "generate.bos=5", "generate.eos=4"])
    run = train(spec, data=data, valid=0.25, run_dir=str(tmp_path / "run"), steps=1, threads=1, device="cpu",
                progress=False).run_dir
    res = invoke("plot", "attention", run, "--text", "abc", "-o", tmp_path / "a.png", code=1)
    assert f"error: {run} was trained on token ids without a vocabulary" in res.stderr
    assert "gen.onnx" not in res.stderr and "flowgrad predict" in res.stderr
    assert not (tmp_path / "a.png").exists()


def test_plot_curves_names_a_run_whose_directory_starts_with_an_underscore(tmp_path, monkeypatch):
    """matplotlib leaves out of a legend it gathers a label starting with "_": runs/_old's curves
    were drawn, and the legend named only the other run's."""
    import runtime.plots as plots

    for name in ("_old", "new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0, "valid_loss": 0.9}\n'
                                                      '{"epoch": 2, "train_loss": 0.5, "valid_loss": 0.6}\n')
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    plots.plot_curves([str(tmp_path / "_old"), str(tmp_path / "new")], str(tmp_path / "c.png"))
    legend = figs[0].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["_old train", "_old valid", "new train", "new valid"]


def test_plot_curves_marks_an_epoch_the_step_limit_cut_short(tmp_path, monkeypatch):
    """A run that --steps stopped mid-epoch drew its last, partial, epoch as a whole one; its
    record says "partial" (train writes it), and the epoch is a hollow marker the legend names."""
    import runtime.plots as plots

    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "metrics.jsonl").write_text(
        '{"epoch": 1, "step": 23, "train_loss": 1.0, "valid_loss": 0.9}\n'
        '{"epoch": 2, "step": 30, "partial": true, "train_loss": 0.5, "valid_loss": 0.6}\n')
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    plots.plot_curves([str(tmp_path / "mlp")], str(tmp_path / "c.png"))
    lines = figs[0].axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["mlp train", "mlp valid", "mlp epoch 2: partial"]
    marks = lines[-1]
    assert list(marks.get_xdata()) == [2, 2] and list(marks.get_ydata()) == [0.5, 0.6]
    assert marks.get_markerfacecolor() == "white" and marks.get_linestyle() == "None"
    assert [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()][-1] == "mlp epoch 2: partial"


def test_plot_curves_names_a_run_with_dollars_as_written(tmp_path, monkeypatch):
    """A run in runs/mlp$x$ was named in the legend as math text: "mlp" and an italic x."""
    import runtime.plots as plots

    (tmp_path / "mlp$x$").mkdir()
    (tmp_path / "mlp$x$" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2, "train_loss": 0.5}\n')
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    plots.plot_curves([str(tmp_path / "mlp$x$")], str(tmp_path / "c.png"))
    texts = figs[0].axes[0].get_legend().get_texts()
    assert [(t.get_text(), t.get_parse_math()) for t in texts] == [("mlp$x$ train", False)]
