"""The expression whitelist: what parses to which tree, what is refused, and where errors point."""
import pytest

from spec import Loc, SpecError, parse_expr, spec_from_text
from spec.expr import unparse
from spec.model import BinOp, Call, Compare, Const, ListExpr, Name, Slice, Subscript, UnaryOp

AT = Loc("models/m.yaml", 14, 9)


def tree(e):
    """An Expr as nested tuples, without locations, for comparing shapes of trees."""
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Const):
        return ("const", e.value)
    if isinstance(e, BinOp):
        return (e.op, tree(e.left), tree(e.right))
    if isinstance(e, UnaryOp):
        return ("unary" + e.op, tree(e.operand))
    if isinstance(e, Compare):
        return (e.op, tree(e.left), tree(e.right))
    if isinstance(e, Call):
        return ("call", e.func, [tree(a) for a in e.args], {k: tree(v) for k, v in e.kwargs.items()})
    if isinstance(e, Subscript):
        return ("sub", tree(e.value), [tree(i) for i in e.index])
    if isinstance(e, Slice):
        return ("slice", *(None if p is None else tree(p) for p in (e.start, e.stop, e.step)))
    if isinstance(e, ListExpr):
        return ("list", [tree(i) for i in e.items])
    raise TypeError(e)


ALLOWED = [
    ("x", "x"),
    ("h.W", "h.W"),
    ("enc.layer1.W", "enc.layer1.W"),
    ("3", ("const", 3)),
    ("1e-4", ("const", 1e-4)),
    ("2.5", ("const", 2.5)),
    ("True", ("const", True)),
    ("None", ("const", None)),
    ("'same'", ("const", "same")),
    ("-1", ("const", -1)),
    ("+2", ("const", 2)),
    ("-x", ("unary-", "x")),
    ("not m", ("unarynot", "m")),
    ("a + b", ("+", "a", "b")),
    ("a - b * c", ("-", "a", ("*", "b", "c"))),
    ("(a - b) / c", ("/", ("-", "a", "b"), "c")),
    ("x @ W", ("@", "x", "W")),
    ("x ** 2", ("**", "x", ("const", 2))),
    ("-x ** 2", ("unary-", ("**", "x", ("const", 2)))),
    ("a == b", ("==", "a", "b")),
    ("a != b", ("!=", "a", "b")),
    ("a < b", ("<", "a", "b")),
    ("a <= b", ("<=", "a", "b")),
    ("a > b", (">", "a", "b")),
    ("a >= b", (">=", "a", "b")),
    ("relu(x)", ("call", "relu", ["x"], {})),
    ("dense(h, K, act=relu)", ("call", "dense", ["h", "K"], {"act": "relu"})),
    ("split(h, 2, axis=-1)", ("call", "split", ["h", ("const", 2)], {"axis": ("const", -1)})),
    ("nn.conv(x, pad='same')", ("call", "nn.conv", ["x"], {"pad": ("const", "same")})),
    ("f(g(x))", ("call", "f", [("call", "g", ["x"], {})], {})),
    ("x[0]", ("sub", "x", [("const", 0)])),
    ("x[-1]", ("sub", "x", [("const", -1)])),
    ("x[:, 1:3]", ("sub", "x", [("slice", None, None, None), ("slice", ("const", 1), ("const", 3), None)])),
    ("x[::2]", ("sub", "x", [("slice", None, None, ("const", 2))])),
    ("x[None]", ("sub", "x", [("const", None)])),
    ("x[:, None, i]", ("sub", "x", [("slice", None, None, None), ("const", None), "i"])),
    ("f(x)[0]", ("sub", ("call", "f", ["x"], {}), [("const", 0)])),
    ("x[..., -1]", ("sub", "x", [("const", Ellipsis), ("const", -1)])),
    ("[a, b]", ("list", ["a", "b"])),
    ("(a, b)", ("list", ["a", "b"])),
    ("scan(step, over=e, init=[zeros(N, H), zeros(N, H)], axis=1)",
     ("call", "scan", ["step"], {"over": "e", "init": ("list", [("call", "zeros", ["N", "H"], {})] * 2),
                                 "axis": ("const", 1)})),
    ("mean(argmax(logits, axis=-1) == y)",
     ("call", "mean", [("==", ("call", "argmax", ["logits"], {"axis": ("const", -1)}), "y")], {})),
]


@pytest.mark.parametrize("text,expected", ALLOWED, ids=[a for a, _ in ALLOWED])
def test_allowed(text, expected):
    assert tree(parse_expr(text, AT)) == expected


@pytest.mark.parametrize("text", [a for a, _ in ALLOWED])
def test_unparse_round_trip(text):
    e = parse_expr(text, AT)
    assert tree(parse_expr(unparse(e), AT)) == tree(e)


# text, words the message must contain, column (relative to the start of the text)
FORBIDDEN = [
    ("lambda y: y", "lambda", 0),
    ("[v for v in xs]", "comprehension", 0),
    ("{v for v in xs}", "comprehension", 0),
    ("{k: v for k in xs}", "comprehension", 0),
    ("sum(v for v in xs)", "generator", 3),
    ("__import__('os')", "'__import__'", 0),
    ("__import__('os').system('ls')", "attribute access '.system'", 0),
    ("x.__class__", "'__class__'", 0),
    ("f(__x__=1)", "'__x__'", 2),
    ("f(x).y", "attribute access '.y'", 0),
    ("x[0].T", "attribute access '.T'", 0),
    ("f(*xs)", "'*' unpacking", 2),
    ("f(**kw)", "'**' unpacking", 2),
    ("x[*i]", "'*' unpacking", 2),
    ("(y := x)", "':='", 1),
    ("f'{x}'", "f-string", 0),
    ("a and b", "'and'", 2),
    ("a or b", "'or'", 2),
    ("a if c else b", "'if ... else'", 2),
    ("{'a': 1}", "dict literal", 0),
    ("{a, b}", "set literal", 0),
    ("a % b", "'%'", 2),
    ("a // b", "'//'", 2),
    ("a | b", "'|'", 2),
    ("a & b", "'&'", 2),
    ("a ^ b", "'^'", 2),
    ("a << 1", "'<<'", 2),
    ("a >> 1", "'>>'", 2),
    ("~a", "'~'", 0),
    ("a < b < c", "chained comparison", 0),
    ("a in b", "'in'", 2),
    ("a is None", "'is'", 2),
    ("a is not None", "'is not'", 2),
    ("..., x", "'...' is only allowed in a subscript", 0),
    ("x[..., 0, ...]", "only one '...'", 10),
    ("1j", "complex", 0),
    ("b'x'", "bytes", 0),
    ("f(x)(y)", "calling the result", 0),
    ("relu(x @ W) % 2", "'%'", 12),
    ("relu(x @ (W // 2))", "'//'", 12),
]


@pytest.mark.parametrize("text,words,col", FORBIDDEN, ids=[a for a, _, _ in FORBIDDEN])
def test_forbidden(text, words, col):
    with pytest.raises(SpecError) as info:
        parse_expr(text, AT)
    e = info.value
    assert words in e.message
    assert e.loc == Loc("models/m.yaml", 14, 9 + col), str(e)
    assert e.hint
    assert "\n" not in e.message


@pytest.mark.parametrize("text,op", [("a and b", "logical_and"), ("a & b", "logical_and"), ("a or b", "logical_or"),
                                     ("a | b", "logical_or")])
def test_boolean_operators_point_at_the_mask_ops(text, op):
    """'&' and 'and' were told to use where(condition, a, b), and there was no logical_and for two
    masks (logical_or and logical_not there were)."""
    with pytest.raises(SpecError) as info:
        parse_expr(text, AT)
    assert f"use {op}(a, b)" in info.value.hint

@pytest.mark.parametrize("text,words,col", [
    ("relu(x", "never closed", 4),
    ("a +", "unexpected end", 3),
    ("a = b", "invalid syntax", 2),
    ("x[1:", "never closed", 1),
    ("f(a=1, a=2)", "repeated", 7),
    ("a b", "invalid syntax", 2),
])
def test_syntax_errors_point_at_the_column(text, words, col):
    with pytest.raises(SpecError) as info:
        parse_expr(text, AT)
    assert words in info.value.message
    assert info.value.loc.col == 9 + col
    assert info.value.message.startswith("invalid expression")


def test_quoted_scalars_start_one_column_later():
    with pytest.raises(SpecError) as info:
        parse_expr("a % b", AT, quoted=True)
    assert info.value.loc == Loc("models/m.yaml", 14, 9 + 1 + 2)
    e = parse_expr("a + b", AT, quoted=True)
    assert e.right.loc.col == 9 + 1 + 4


def test_node_locations_and_call_details():
    e = parse_expr("dense(h, K, act=relu) + b", AT)
    assert e.loc.col == 9
    call = e.left
    assert call.func_loc.col == 9
    assert call.args[1].loc.col == 9 + 9
    assert call.kwarg_locs["act"].col == 9 + 12
    assert call.kwargs["act"].loc.col == 9 + 16
    assert e.right.loc.col == 9 + 24


def test_empty_long_and_deep_expressions_are_spec_errors():
    for text in ["", "   ", "-" * 100_000 + "x", "(" * 300 + "x" + ")" * 300,
                 "+".join(["1"] * 5000), "f(" * 150 + "x" + ")" * 150, "1" * 5000]:
        with pytest.raises(SpecError):
            parse_expr(text, AT)


def test_strings_are_never_evaluated():
    # a call of anything is just a Call node; the compiler checks the name
    e = parse_expr("open('/etc/passwd')", AT)
    assert tree(e) == ("call", "open", [("const", "/etc/passwd")], {})


def _spec(graph_lines: str) -> str:
    return "flowgrad: 1\nname: t\ninputs:\n  x: {shape: [N, 4]}\ngraph:\n" + graph_lines


def _error(text):
    with pytest.raises(SpecError) as info:
        spec_from_text(text, "models/t.yaml")
    return info.value


def _at(text, loc):
    """The source text starting at loc."""
    return text.split("\n")[loc.line - 1][loc.col - 1:]


@pytest.mark.parametrize("line", [
    "  h: relu(x @ W) % 2",
    "  h: 'relu(x @ W) % 2'",
    '  h: "relu(x @ W) % 2"',
    '  h: "relu(\\"a\\") + relu(x @ W) % 2"',
    "  h: 'relu(''a'') + relu(x @ W) % 2'",
])
def test_spec_errors_point_at_the_operator(line):
    text = _spec(line + "\n")
    e = _error(text)
    assert _at(text, e.loc).startswith("% 2"), (e, _at(text, e.loc))


def test_block_scalars_map_lines_and_columns():
    text = _spec(
        "  h: |\n"
        "    relu(x @ W1 +\n"
        "         b1) // 2\n"
        "  g: >\n"
        "    tanh(x)\n"
        "    + y % 3\n"
        "  k: relu(x\n"
        "     + z) if c else d\n")
    e = _error(text)
    errors = getattr(e, "errors", [e])
    found = {_at(text, err.loc)[:4] for err in errors}
    assert found == {"// 2", "% 3", "if c"}, [str(x) for x in errors]


def test_expression_locations_inside_a_loaded_spec():
    text = _spec("  h: dropout(relu(x @ W1 + b1), rate=0.5)\n  'g': \"h @ W2\"\n")
    from spec import spec_from_text as load
    s = load(text, "models/t.yaml")
    h, g = s.graph
    relu = h.expr.args[0]
    assert _at(text, relu.loc).startswith("relu(")
    assert _at(text, relu.args[0].right.loc).startswith("b1)")
    assert _at(text, h.expr.kwarg_locs["rate"]).startswith("rate=")
    assert _at(text, g.expr.right.loc).startswith("W2\"")
    assert _at(text, g.target_locs[0]).startswith("g'")


def test_literal_block_may_break_lines_anywhere():
    text = _spec("  h: |\n    relu(x) +\n      relu(-x)\n  c: 0.5\n  t: true\n")
    s = spec_from_text(text, "models/t.yaml")
    h, c, t = s.graph
    assert tree(h.expr) == ("+", ("call", "relu", ["x"], {}), ("call", "relu", [("unary-", "x")], {}))
    assert _at(text, h.expr.right.loc).startswith("relu(-x)")
    assert tree(c.expr) == ("const", 0.5) and tree(t.expr) == ("const", True)


def test_several_errors_are_one_spec_error():
    from spec import MultiError
    text = _spec("  a: x % 2\n  b: x // 2\n")
    with pytest.raises(MultiError) as info:
        spec_from_text(text, "models/t.yaml")
    assert isinstance(info.value, SpecError)
    assert [str(e.loc) for e in info.value.errors] == ["models/t.yaml:6:8", "models/t.yaml:7:8"]
    assert str(info.value).count("\n") == 3  # one line and one hint line each


def test_modulo_hint_names_the_op_that_does_it(tmp_path):
    """'%' and '//' are refused with a hint that says how to write them on integers (it said
    that tensors have no integer division or modulo, though divmod is an op), and the form
    the hint shows compiles."""
    from compiler.training import check_spec
    from spec import spec_from_text

    for text in ("y % 2", "y // 2"):
        with pytest.raises(SpecError) as info:
            parse_expr(text, AT)
        assert "'q, r: divmod(x, d)'" in info.value.hint
    spec = spec_from_text("""
flowgrad: 1
name: parity
inputs:
  x: {shape: [N, 4]}
  y: {shape: [N], dtype: int64}
graph:
  q, r: divmod(y, 2)
  logit: sum(dense(x, 1), axis=1)
loss: binary_cross_entropy(logit, cast(r, 'float32'))
""", str(tmp_path / "parity.yaml"))
    check_spec(spec)


# A graph entry z of the expression under test, over an input x [N, 4].
Z_SPEC = """flowgrad: 1
name: t
inputs:
  x: {{shape: [N, 4]}}
params:
  W: {{shape: [4, 1], init: zeros}}
graph:
  z: {expr}
loss: mean(z @ W)
"""


@pytest.mark.parametrize("expr, shown", [
    ("x * -None", "None"), ("reshape(x, -[2, 2])", "[2, 2]"), ("x[-None]", "None"),
    ("x * -split(x, 2, axis=1)", "split(x, 2, axis=1)"), ("where(not [1], x, x)", "[1]"),
])
def test_unary_operator_of_a_list_or_none_is_refused_at_its_operand(expr, shown):
    """- of a list, None or an op's several results ended in Python's TypeError traceback,
    and `not [1]` took the list's truthiness (False); each is refused at the operand."""
    from compiler.training import check_spec

    text = Z_SPEC.format(expr=expr)
    spec = spec_from_text(text, "models/t.yaml")
    with pytest.raises(SpecError) as info:
        check_spec(spec)
    assert f"cannot use {shown} with '" in info.value.message
    assert _at(text, info.value.loc).startswith(shown)


@pytest.mark.parametrize("expr, message", [
    ("x * (-8) ** (1 / 3)", "cannot compute (-8) ** 0.3333333333333333: a negative number to a fractional power "
                            "is not a real number"),
    ("x * 2.0 ** 10000", "cannot compute 2.0 ** 10000: the result is too large for a float"),
])
def test_power_of_constants_without_a_real_result_says_so(expr, message):
    """(-8) ** (1/3) of constants is Python's complex number, which was refused as 'cannot use
    (1.0000000000000002+1.7320508075688772j) in arithmetic' with a hint about strings and lists;
    2.0 ** 10000 said "(34, 'Numerical result out of range')"."""
    from compiler.training import check_spec

    spec = spec_from_text(Z_SPEC.format(expr=expr), "models/t.yaml")
    with pytest.raises(SpecError) as info:
        check_spec(spec)
    assert info.value.message == message
    assert str(info.value.loc) == "models/t.yaml:8:10"


@pytest.mark.parametrize("expr, divided", [
    ("zeros(N, H / 2)", True), ("x[:, :H / 2]", True), ("x[:, H / 4]", True),
    ("reshape(x, [-1, H / 2, 2])", True), ("split(x, H / 2, axis=1)[0]", True), ("one_hot(y, H / 2)", True),
    ("x[:, 1.0]", False), ("reshape(x, [-1, 2.0, 2])", False),
])
def test_a_size_that_division_made_a_float_is_told_how_to_be_written(expr, divided):
    """H / 2 is a float in an expression, where // is not written: a slice bound, an index, a
    size of zeros() or an op's size attribute made by / was refused with hints to use
    take(x, ids), to write sizes as integers, or the op's usage, none of which says how to halve a
    dim; as a layer's units (173db55), each now has the hint to name the size under dims:."""
    from compiler.training import check_spec
    from spec.errors import FlowgradError

    spec = spec_from_text(f"""flowgrad: 1
name: t
dims: {{H: 4}}
inputs:
  x: {{shape: [N, H]}}
  y: {{shape: [N], dtype: int64}}
params:
  W: {{shape: [1], init: zeros}}
graph:
  z: {expr}
loss: mean(z) * mean(W)
""", "models/t.yaml")
    with pytest.raises(FlowgradError) as info:
        check_spec(spec)
    assert info.value.hint.startswith("/ in an expression gives a float") == divided, info.value


def test_a_float_op_of_a_dim_takes_it_as_a_float():
    """sqrt(D) of a dim, an attention's scale, was refused ('sqrt: input must be a float tensor,
    got int64', with a cast hint) where Python's math.sqrt(4) and torch.sqrt of an integer give a
    float; a whole number given alone to an op that takes floats is now a float. An op that takes
    integers keeps it an integer (zeros(D) is still int-sized, abs(D) an int64)."""
    import numpy as np

    from compiler.training import compile_spec
    from runtime.session import make_session

    text = ("flowgrad: 1\nname: t\ndims: {D: 4}\ninputs:\n  x: {shape: [N, D]}\ngraph:\n  h: dense(x, 2)\n"
            "  y: h / sqrt(D) + exp(0) + tanh(D) + cast(abs(D), 'float32')\noutputs:\n  out: y\nloss: mean(y * y)\n")
    cm = compile_spec(spec_from_text(text, "models/t.yaml"))
    state = cm.initial_state(0)
    g = cm.graphs["infer"]
    x = np.ones((3, 4), np.float32)
    out = make_session(g.model).run(None, {i.name: x if i.name == "x" else state[i.name] for i in g.inputs})[0]
    h = x @ state["h.W"] + state["h.b"]
    np.testing.assert_allclose(out, h / 2 + 1 + np.tanh(4) + 4, rtol=1e-6)
