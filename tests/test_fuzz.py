"""Fuzzing the front end: mutated specs end in success or a FlowgradError, never another exception.

The specs in models/ (plus two seeds with blocks, scan and objectives, which
no model uses) are mutated by hypothesis: keys dropped, renamed and
duplicated, shapes and numbers perturbed, expressions spliced from one spec
into another, values swapped for other types, text truncated or chopped.
Each mutant goes through spec_from_text -> check_spec, and some through
compile_spec; anything but a FlowgradError is a bug (a traceback for a user).

CI runs a bounded number of examples; a longer run:

    FLOWGRAD_FUZZ_EXAMPLES=5000 python -m pytest tests/test_fuzz.py -n 2
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from compiler.training import check_spec, compile_spec
from spec import spec_from_text
from spec.errors import FlowgradError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("FLOWGRAD_FUZZ_EXAMPLES", "150"))

SCAN_SEED = """\
flowgrad: 1
name: scanned
dims: {E: 3, H: 4, K: 5}
inputs:
  x: {shape: [N, T, E]}
  m: {shape: [N, T], dtype: int64}
  y: {shape: [N, T], dtype: int64}
params:
  h0: {shape: [H], init: {uniform: {low: -0.5, high: 0.5}}}
blocks:
  step:
    in: [x_t, h, c]
    params:
      W: {shape: [E, 2*H], init: glorot_uniform}
      U: {shape: [H, 2*H], init: orthogonal}
    graph:
      a, z: split(x_t @ W + h @ U, 2, axis=-1)
      c2: sigmoid(z) * c + tanh(a)
      h2: tanh(c2) * sigmoid(a)
    out: [h2, c2]
graph:
  init: zeros(N, H) + h0
  hs, cs: scan(step, over=x, init=[init, zeros(N, H)], axis=1, reverse=true, mask=m)
  logits: dense(hs + cs[:, :, 0:1], K)
outputs:
  probs: softmax(logits)
loss: cross_entropy(logits, y)
metrics:
  accuracy: mean(argmax(logits, axis=-1) == y)
train:
  optimizer: {sgd: {lr: 0.1, momentum: 0.9}}
  lr_schedule: {cosine: {min_lr: 1.0e-5}, warmup: 10}
  clip_norm: 1.0
  batch_size: 8
"""

OBJECTIVES_SEED = """\
flowgrad: 1
name: gan
dims: {Z: 4, D: 6, H: 8}
inputs:
  z: {shape: [N, Z]}
  x: {shape: [N, D]}
params:
  G_W: {shape: [Z, D], init: he_normal}
  D_W: {shape: [D, H], init: {normal: {std: 0.1}}}
  D_v: {shape: [H], init: zeros}
graph:
  fake: tanh(z @ G_W)
  real_score: sum(relu(x @ D_W) * D_v, axis=-1)
  fake_score: sum(relu(fake @ D_W) * D_v, axis=-1)
  d_loss: mean(softplus(-real_score)) + mean(softplus(fake_score))
  g_loss: mean(softplus(-fake_score))
outputs:
  sample: fake
train:
  objectives:
    discriminator: {loss: d_loss, params: "D_*", optimizer: {adam: {lr: 2.0e-4, beta1: 0.5}}}
    generator: {loss: g_loss, params: ["G_*"], optimizer: {adam: {lr: 2e-4}}}
  schedule: [discriminator, generator]
  l2: 1.0e-5
"""

SEEDS = {p.name: p.read_text() for p in sorted((ROOT / "models").glob("*.yaml"))}
SEEDS["(seed) scanned.yaml"] = SCAN_SEED
SEEDS["(seed) objectives.yaml"] = OBJECTIVES_SEED
TREES = {name: yaml.safe_load(text) for name, text in SEEDS.items()}
EXPR_SECTIONS = ("graph", "outputs", "metrics")


def _expressions(tree) -> list[str]:
    out = [tree["loss"]] if isinstance(tree.get("loss"), str) else []
    for section in EXPR_SECTIONS:
        out += [v for v in (tree.get(section) or {}).values() if isinstance(v, str)]
    for b in (tree.get("blocks") or {}).values():
        out += [v for v in b["graph"].values() if isinstance(v, str)]
    return out


EXPRESSIONS = sorted({e for t in TREES.values() for e in _expressions(t)})
# pieces of expressions: names, calls, numbers, operators (for building new ones)
TOKENS = sorted({tok for e in EXPRESSIONS for tok in re.findall(r"[A-Za-z_][\w.]*|\d+\.?\d*|\S", e)})
NASTY_NUMBERS = [0, -1, 1, 2, 3, 5, 7, 16, 64, 0.25, -0.0, 0.5, -2.5, 1e-300, 1e308, 2**31, 2**40, 2**63, 10**30, math.inf, -math.inf,
                 math.nan, True, False, None, "3", "1e-4", "", "N", "H", "2*H", "H//0", "-H", "H/3", "1e400"]
NASTY_VALUES = NASTY_NUMBERS + [[], {}, [1], ["N"], {"a": 1}, "relu(x)", "x @ x", "zeros(N, N)", "[x, x]",
                                "__class__", "x[", "f(**k)", "lambda: 1", "'a' * 3", "x" * 200]
NASTY_KEYS = ["", "x", "W", "N", "loss", "graph", "1", "a b", "h.W", "__init__", "dims", "in", "scan", "lambda",
              "dense", "T", "é", "step"]


def _paths(tree, prefix=()):
    """Every (path, value) in a plain tree, containers included."""
    yield prefix, tree
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))


def _parent(tree, path):
    node = tree
    for step in path[:-1]:
        node = node[step]
    return node


def _replace(tree, path, value):
    if not path:
        return value
    _parent(tree, path)[path[-1]] = value
    return tree


def _rename(d: dict, old, new) -> dict:
    return {(new if k == old else k): v for k, v in d.items()}


# ------------------------------------------------------------------ tree mutations
def drop_key(data, tree):
    keyed = [p for p, _ in _paths(tree) if p and isinstance(_parent(tree, p), dict)]
    if not keyed:
        return tree
    path = data.draw(st.sampled_from(keyed))
    del _parent(tree, path)[path[-1]]
    return tree


def rename_key(data, tree):
    keyed = [p for p, _ in _paths(tree) if p and isinstance(_parent(tree, p), dict)]
    if not keyed:
        return tree
    path = data.draw(st.sampled_from(keyed))
    old = path[-1]
    new = data.draw(st.one_of(st.sampled_from(NASTY_KEYS), st.just(old + "s"), st.just(old[:-1]),
                              st.just(old[::-1]), st.text(min_size=1, max_size=6)))
    parent_path = path[:-1]
    return _replace(tree, parent_path, _rename(_parent(tree, path), old, new))


def perturb_number(data, tree):
    leaves = [p for p, v in _paths(tree) if p and isinstance(v, (int, float))]
    if not leaves:
        return tree
    path = data.draw(st.sampled_from(leaves))
    return _replace(tree, path, data.draw(st.sampled_from(NASTY_NUMBERS)))


def perturb_shape(data, tree):
    shapes = [p for p, v in _paths(tree) if p and p[-1] == "shape" and isinstance(v, list)]
    if not shapes:
        return tree
    path = data.draw(st.sampled_from(shapes))
    shape = list(_parent(tree, path)[path[-1]])
    how = data.draw(st.sampled_from(["set", "drop", "add", "swap", "empty"]))
    if how == "set" and shape:
        shape[data.draw(st.integers(0, len(shape) - 1))] = data.draw(st.sampled_from(NASTY_NUMBERS))
    elif how == "drop" and shape:
        shape.pop(data.draw(st.integers(0, len(shape) - 1)))
    elif how == "add":
        shape.insert(data.draw(st.integers(0, len(shape))), data.draw(st.sampled_from(NASTY_NUMBERS + [7, "N"])))
    elif how == "swap":
        shape.reverse()
    else:
        shape = []
    return _replace(tree, path, shape)


def splice_expression(data, tree):
    """An expression of this spec replaced by another spec's, or by one built from their tokens."""
    slots = [p for p, v in _paths(tree) if len(p) >= 2 and isinstance(v, str)
             and (p[0] in EXPR_SECTIONS or p == ("loss",) or (p[0] == "blocks" and "graph" in p))]
    if isinstance(tree.get("loss"), str):
        slots.append(("loss",))
    if not slots:
        return tree
    path = data.draw(st.sampled_from(slots))
    new = data.draw(st.one_of(
        st.sampled_from(EXPRESSIONS),
        st.lists(st.sampled_from(TOKENS), min_size=1, max_size=12).map(" ".join),
        st.builds(lambda a, b, op: f"{a} {op} {b}", st.sampled_from(EXPRESSIONS), st.sampled_from(EXPRESSIONS),
                  st.sampled_from(["+", "-", "*", "/", "@", "**", "==", "<"])),
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from([t for t in TOKENS if t.isidentifier()]),
                  st.sampled_from(EXPRESSIONS)),
    ))
    return _replace(tree, path, new)


def add_entry(data, tree):
    """A new graph entry (maybe clashing with a name, maybe unused) or expression section entry."""
    section = data.draw(st.sampled_from(["graph", "outputs", "metrics", "params", "inputs", "dims"]))
    key = data.draw(st.one_of(st.sampled_from(NASTY_KEYS), st.sampled_from([t for t in TOKENS if t.isidentifier()])))
    value = data.draw(st.one_of(st.sampled_from(EXPRESSIONS), st.sampled_from(NASTY_VALUES),
                                st.just({"shape": ["N", 3]}), st.just({"shape": [3], "init": "zeros"})))
    if not isinstance(tree.get(section), dict):
        tree[section] = {}
    tree[section][key] = value
    return tree


def change_type(data, tree):
    paths = [p for p, _ in _paths(tree) if p]
    if not paths:
        return tree
    return _replace(tree, data.draw(st.sampled_from(paths)), data.draw(st.sampled_from(NASTY_VALUES)))


def swap_names(data, tree):
    """One name in an expression replaced by another name of the spec: valid syntax, wrong meaning."""
    slots = [p for p, v in _paths(tree) if len(p) >= 2 and isinstance(v, str)
             and (p[0] in EXPR_SECTIONS or (p[0] == "blocks" and "graph" in p))]
    if isinstance(tree.get("loss"), str):
        slots.append(("loss",))
    if not slots:
        return tree
    path = data.draw(st.sampled_from(slots))
    expr = _parent(tree, path)[path[-1]]
    names = sorted(set(re.findall(r"[A-Za-z_][\w.]*", expr)))
    defined = sorted({str(k) for section in ("dims", "inputs", "params", "graph", "blocks")
                      for k in (tree.get(section) if isinstance(tree.get(section), dict) else {})}
                     | {"axis", "rate", "N", "T", "true"})
    if not names or not defined:
        return tree
    old, new = data.draw(st.sampled_from(names)), data.draw(st.sampled_from(defined))
    return _replace(tree, path, re.sub(rf"\b{re.escape(old)}\b", new, expr, count=1))


# Mutations that keep a spec loadable come more often, so that check and
# compile see many near-valid specs, not only what the schema refuses.
TREE_MUTATIONS = [drop_key, rename_key, perturb_number, perturb_number, perturb_shape, perturb_shape,
                  splice_expression, splice_expression, splice_expression, swap_names, swap_names, add_entry,
                  change_type]


# ------------------------------------------------------------------ text mutations
def truncate(data, text):
    return text[:data.draw(st.integers(0, len(text)))]


def duplicate_line(data, text):
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    i = data.draw(st.integers(0, len(lines) - 1))
    return "".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])


def chop(data, text):
    """Delete, insert or replace a few characters."""
    i = data.draw(st.integers(0, len(text)))
    j = min(len(text), i + data.draw(st.integers(0, 8)))
    filler = data.draw(st.one_of(st.just(""), st.sampled_from(list(":-[]{}&*!|>'\"#\t\n ,%@`?") + ["\x00", "\ufeff"]),
                                 st.text(max_size=4)))
    return text[:i] + filler + text[j:]


def swap_lines(data, text):
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    i, j = data.draw(st.integers(0, len(lines) - 1)), data.draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines)


TEXT_MUTATIONS = [truncate, duplicate_line, chop, swap_lines]


def _dump(tree) -> str:
    try:
        return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=10_000)
    except (yaml.YAMLError, ValueError, TypeError):
        return yaml.safe_dump({"flowgrad": 1}, sort_keys=False)


def _mutant(data) -> tuple[str, str]:
    name = data.draw(st.sampled_from(sorted(SEEDS)), label="seed")
    ops = data.draw(st.lists(st.sampled_from(TREE_MUTATIONS + TEXT_MUTATIONS), min_size=1, max_size=3), label="mutations")
    tree = yaml.safe_load(SEEDS[name])
    text = None
    for op in ops:
        if op in TREE_MUTATIONS:
            if text is not None:  # back to a tree, if the text still is one
                try:
                    parsed = yaml.safe_load(text)
                except yaml.YAMLError:
                    continue
                if not isinstance(parsed, dict):
                    continue
                tree, text = parsed, None
            tree = op(data, tree)
        else:
            text = op(data, text if text is not None else _dump(tree))
    return name, text if text is not None else _dump(tree)


def _outcome(text: str, name: str, compile_too: bool) -> str:
    """"ok", or the stage that refused the mutant; any other exception fails the test."""
    stage = "load"
    try:
        spec = spec_from_text(text, name)
        stage = "check"
        check_spec(spec)
        if compile_too:
            stage = "compile"
            compile_spec(spec, graphs=("train", "eval", "infer"))
    except FlowgradError as e:
        assert str(e).strip(), "an error without a message"
        assert "Traceback" not in str(e)
        return f"refused by {stage}"
    return "ok"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_mutated_specs_fail_cleanly(data):
    name, text = _mutant(data)
    note(text)
    compile_too = data.draw(st.integers(0, 3), label="compile") == 0
    event(_outcome(text, name, compile_too) + (" (compiled)" if compile_too else ""))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seeds_are_valid(name):
    """The fuzzer starts from specs that compile, so every refusal comes from a mutation."""
    assert _outcome(SEEDS[name], name, compile_too=True) == "ok"


@pytest.mark.parametrize("host", sorted(SEEDS))
def test_every_expression_spliced_into_every_spec(host):
    """Exhaustively: every expression of every seed as the last graph entry of `host`
    (the one the loss reads, so its shape and dtype matter downstream)."""
    tree = yaml.safe_load(SEEDS[host])
    slot = [k for k, v in tree["graph"].items() if isinstance(v, str)][-1]
    for expr in EXPRESSIONS:
        tree["graph"][slot] = expr
        _outcome(_dump(tree), host, compile_too=False)


# ------------------------------------------------------------------ every op, wrong arguments
OPS_SPEC = """\
flowgrad: 1
name: ops
dims: {C: 3}
inputs:
  v: {shape: [N]}
  m: {shape: [N, C]}
  t: {shape: [N, 2, 4]}
  img: {shape: [N, 1, 8, 8]}
  ids: {shape: [N], dtype: int64}
  idm: {shape: [N, C], dtype: int64}
  flag: {shape: [N, C], dtype: bool}
params:
  s: {shape: [], init: zeros}
  w: {shape: [C, C], init: glorot_uniform}
graph:
  probe: %s
outputs:
  out: probe
"""
ARGS = ["v", "m", "t", "img", "ids", "idm", "flag", "s", "w", "0", "-1", "2", "1.5", "true", "'float32'", "'relu'",
        "[1, 2]", "[0, -1]", "[]", "m > 0", "w.T", "probe", "N", "C"]
ATTR_VALUES = ["-5", "-1", "0", "1", "2", "3", "100", "0.5", "true", "false", "'x'", "'float32'", "[2, 2]",
               "[0, -1]", "[]", "relu", "m", "(1, 2)", "'same'", "10**12"]


def _callables() -> dict[str, list[str]]:
    """Every op and layer shorthand a spec can call, with the keywords it takes."""
    from compiler import layers, recurrent  # noqa: F401  (registers the cells)
    from compiler.registry import all_ops

    out = {n: [*o.inputs, *o.attrs] for n, o in all_ops().items()}
    for n, layer in layers.LAYERS.items():
        out[n] = sorted({*out.get(n, []), *layer.positional, *layer.keywords})
    return out


CALLABLES = _callables()


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 150, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_op_with_wrong_arguments(data):
    """Each op and layer called with arguments of the wrong rank, dtype or kind: a located error, never a crash."""
    name = data.draw(st.sampled_from(sorted(CALLABLES)), label="op")
    args = data.draw(st.lists(st.sampled_from(ARGS), max_size=4), label="args")
    keywords = CALLABLES[name] + ["axis", "bogus"]
    kwargs = data.draw(st.dictionaries(st.sampled_from(keywords), st.sampled_from(ATTR_VALUES), max_size=3), label="kwargs")
    expr = f"{name}({', '.join(args + [f'{k}={v}' for k, v in kwargs.items()])})"
    note(expr)
    text = OPS_SPEC % expr.replace("w.T", "transpose(w)")
    event(_outcome(text, "ops.yaml", compile_too=data.draw(st.booleans(), label="compile")))


def test_ops_spec_is_valid():
    assert _outcome(OPS_SPEC % "relu(m) @ w", "ops.yaml", compile_too=True) == "ok"


@pytest.mark.parametrize("expr, outcome", [
    ("pow(a=-5, b=-5)", "refused by compile"),  # folding an integer power met numpy's ValueError
    ("sum(s, axis=0)", "ok"),  # a scalar's axis 0: nothing to reduce (was an ONNX shape error)
    ("mean(0, axis=0)", "ok"),
    ("argmax(s, axis=0)", "refused by check"),  # no axis to find an index along
    ("pad(0, [])", "ok"),  # a scalar padded on no axis (numpy refused the empty pad list)
    ("transpose(s)", "ok"),  # a scalar has no axes: ONNX cannot write an empty perm
])
def test_earlier_fuzz_finds(expr, outcome):
    """Cases long fuzzing runs (FLOWGRAD_FUZZ_EXAMPLES=3000 to 6000) found crashing."""
    assert _outcome(OPS_SPEC % expr, "ops.yaml", compile_too=True) == outcome
