"""How calls in a spec bind their arguments, for every kind of callable a spec can call: the
registry's ops, the layer shorthands (recurrent layers and cells included), blocks called as
functions and the special forms. Each mistake in binding is a located error, as Python would
refuse the call, never a silently different call."""
from __future__ import annotations

import pytest

from compiler import recurrent  # noqa: F401  (registers the recurrent layers and cells)
from compiler.layers import LAYERS
from compiler.lower import spec_attrs
from compiler.registry import all_ops
from compiler.training import check_spec
from spec import SpecError, spec_from_text
from spec.errors import FlowgradError

SPEC = """flowgrad: 1
name: binding
dims: {D: 8, H: 4, T: 5}
inputs:
  x: {shape: [N, D]}
  s: {shape: [N, T, D]}
params:
  W: {shape: [D, H], init: zeros}
blocks:
  f:
    in: [a]
    graph:
      b2: a * 2
    out: [b2]
graph:
  out: %s
loss: mean(x @ W)
"""
LINE = SPEC.splitlines().index("  out: %s") + 1
START = len("  out: ") + 1  # column of the call's first character


def error(call: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        check_spec(spec_from_text(SPEC % call, "b.yaml"), objectives=False)
    return info.value


def column_of(call: str, part: str) -> int:
    return START + call.rindex(part)


def _op_calls():
    """Each op a spec can call with a parameter after its first, that parameter given positionally
    and by keyword."""
    for name, op in all_ops().items():
        if op.internal:
            continue
        params = [] if op.variadic else [*op.inputs, *spec_attrs(op)]
        if len(params) >= 2:
            yield name, f"{name}({', '.join(['x'] * len(params))}, {params[-1]}=x)", params[-1]


def _layer_calls():
    for name, layer in LAYERS.items():
        pos = layer.positional
        if name == "bidirectional":
            args = ["lstm", "s", "3"]
        else:
            args = ["x"] + ["3"] * (len(pos) - 1)
        yield name, f"{name}({', '.join(args)}, {pos[-1]}=2)", pos[-1]


CALLS = [*_op_calls(), *_layer_calls()]


@pytest.mark.parametrize("name, call, param", CALLS, ids=[f"{n}:{c}" for n, c, _ in CALLS])
def test_an_argument_given_positionally_and_by_keyword_is_refused_at_the_keyword(name, call, param):
    """conv2d(x, 8, 3, kernel=0) took kernel=0 and dropped the 3 without a word; normal(x, 0.0,
    mean=0.0) took the 0.0 for std; dense(x, 3, units=2) made 2 units. Python refuses such a call."""
    err = error(call)
    assert f"{name}() got {param!r} twice" in err.message, str(err)
    assert (err.loc.line, err.loc.col) == (LINE, column_of(call, f"{param}=")), str(err)
    assert "not both" in err.hint


def test_the_calls_cover_every_op_with_two_parameters_and_every_layer():
    names = {n for n, _, _ in CALLS}
    assert {"conv2d", "dense", "embedding", "lstm", "lstm_cell", "bidirectional", "additive_attention",
            "batch_norm"} <= names
    assert {"softmax", "normal", "split", "cross_entropy", "nll", "conv"} <= names


# (given more arguments, these call the op of their name, which takes them)
LAYERS_WITH_AN_OPS_NAME = {"batch_norm", "layer_norm", "additive_attention"}


@pytest.mark.parametrize("name", sorted(set(LAYERS) - LAYERS_WITH_AN_OPS_NAME))
def test_a_layer_given_too_many_positional_arguments_is_refused_at_the_first_extra_one(name):
    layer = LAYERS[name]
    args = ["lstm", "s", "3"] if name == "bidirectional" else ["x"] + ["3"] * (len(layer.positional) - 1)
    call = f"{name}({', '.join(args)}, 7)"
    err = error(call)
    assert f"{name}() takes {len(layer.positional)} positional arguments, got {len(args) + 1}" in err.message, str(err)
    assert (err.loc.line, err.loc.col) == (LINE, column_of(call, "7")), str(err)


@pytest.mark.parametrize("call, message, at", [
    # grad, hvp and jacobian said "grad() takes 2 arguments" at the whole call, of a keyword as of a count
    ("grad(mean(x), wrt=x)", "grad() takes no keyword arguments, got 'wrt'", "wrt="),
    ("hvp(mean(x), x, v=x)", "hvp() takes no keyword arguments, got 'v'", "v="),
    ("jacobian(x @ W, x, x)", "jacobian() takes 2 argument(s) (y, x), got 3", "x)"),
    ("grad(mean(x), x, x)", "grad() takes 2 argument(s) (scalar, wrt), got 3", "x)"),
    ("grad(mean(x))", "grad() is missing the argument(s) wrt", "grad("),
    # a block called with too many arguments was pointed at the whole call
    ("f(x, x)", "block 'f' takes 1 argument(s) (a), got 2", "x)"),
    ("f(x, a=x)", "block 'f' takes no keyword arguments, got 'a'", "a="),
    ("f()", "block 'f' is missing the argument(s) a", "f("),
])
def test_blocks_and_special_forms_bind_as_the_layers_do(call, message, at):
    err = error(call)
    assert message in err.message, str(err)
    assert (err.loc.line, err.loc.col) == (LINE, column_of(call, at) if at != call[:len(at)] else START), str(err)
    assert err.hint


def test_concat_of_nothing_hints_at_the_call_it_takes():
    """Its hint wrote concat([a, b, ...], axis=0), a list, which concat refuses."""
    with pytest.raises(FlowgradError) as info:
        check_spec(spec_from_text(SPEC % "concat()", "b.yaml"), objectives=False)
    err = info.value
    assert "usage: concat(a, b, ..., axis=0)" in err.hint, str(err)
