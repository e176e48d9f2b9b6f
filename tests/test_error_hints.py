"""Every user-facing error says what to do: each place in the package that builds a
FlowgradError (or a subclass) gives it a hint.

An AST walk over spec/, compiler/, runtime/ and cli.py finds every call of an error
class (or of a parameter that takes one, `error=DataError`) and refuses one without a
hint, with a hint of None, or with a hint that can be None: a bare did_you_mean(...) or
any function annotated `-> str | None`, a dict's .get(key), `... if cond else None`, or
a variable that one of its bindings can leave None (a parameter defaulting to None or
annotated `| None`, an assignment of any of these, an unpacked or loop value the walk
cannot follow). `x or "what to do"` is always a hint. A site that users cannot reach
may go in ALLOWED, with the reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

import spec.errors as errors_module
from spec.errors import FlowgradError, MultiError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "cli.py"] + sorted(p for d in ("spec", "compiler", "runtime") for p in (ROOT / d).rglob("*.py"))

# Classes whose constructor takes a message, a location and a hint (MultiError and its
# subclasses gather errors built elsewhere, which this walk checks where they are built).
ERROR_CLASSES = {name for name, cls in vars(errors_module).items()
                 if isinstance(cls, type) and issubclass(cls, FlowgradError) and not issubclass(cls, MultiError)}

# (path, text in the message) -> why users cannot reach the site. Keep it short.
ALLOWED: dict[tuple[str, str], str] = {}


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_UNKNOWN = object()  # a binding whose value the walk cannot follow (a loop variable, unpacking)


def _admits_none(annotation: ast.expr | None) -> bool:
    """Whether a type annotation lets the value be None: `str | None`, `Optional[str]`."""
    if annotation is None:
        return False
    text = ast.unparse(annotation).strip("'\"")
    if text.startswith(("Optional[", "typing.Optional[")):
        return True
    parts, depth, part = [], 0, ""
    for ch in text:  # the top-level members of a union (not tuple[str, str | None]'s)
        depth += (ch == "[") - (ch == "]")
        if ch == "|" and depth == 0:
            parts.append(part.strip())
            part = ""
        else:
            part += ch
    return "None" in [*parts, part.strip()] and text != "None"


def _returns_none(tree: ast.AST) -> set[str]:
    """Names of the functions and methods whose return annotation admits None (did_you_mean's
    str | None): a hint that calls one may be None."""
    return {f.name for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and _admits_none(f.returns)}


RETURNS_NONE = set().union(*(_returns_none(ast.parse(p.read_text())) for p in SOURCES))


def _names_in(target: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _bindings(scope: ast.AST, name: str) -> list:
    """What `name` is bound to in `scope` (a function or the module; not in scopes nested in
    it): values, _UNKNOWN, or ("param", arg, default) for a parameter."""
    out = []
    if isinstance(scope, _SCOPES):
        args = scope.args
        positional = args.posonlyargs + args.args
        defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
        for arg, default in [*zip(positional, defaults), *zip(args.kwonlyargs, args.kw_defaults)]:
            if arg.arg == name:
                out.append(("param", arg, default))
        body = scope.body if isinstance(scope.body, list) else [scope.body]
    else:
        body = scope.body
    todo = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, (*_SCOPES, ast.ClassDef)):
            continue  # (their own scopes)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    out.append(node.value)
                elif isinstance(target, (ast.Tuple, ast.List)) and name in _names_in(target):
                    pairs = isinstance(node.value, (ast.Tuple, ast.List)) and len(node.value.elts) == len(target.elts)
                    out.extend(v for t, v in zip(target.elts, node.value.elts) if isinstance(t, ast.Name) and t.id == name) \
                        if pairs else out.append(_UNKNOWN)
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and isinstance(node.target, ast.Name) \
                and node.target.id == name and node.value is not None:
            out.append(node.value)
        elif isinstance(node, (ast.For, ast.AsyncFor)) and name in _names_in(node.target):
            out.append(_UNKNOWN)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            out.extend(_UNKNOWN for item in node.items if item.optional_vars is not None
                       and name in _names_in(item.optional_vars))
        todo.extend(ast.iter_child_nodes(node))
    return out


def _may_be_none(hint: ast.expr, scopes: tuple = (), seen: frozenset = frozenset()) -> bool:
    """Whether the hint expression can be None or empty. `scopes`: the function(s) around it,
    innermost last, and the module first, where the names it reads are bound."""
    if isinstance(hint, ast.Constant):
        return hint.value is None or hint.value == ""
    if isinstance(hint, ast.IfExp):
        return _may_be_none(hint.body, scopes, seen) or _may_be_none(hint.orelse, scopes, seen)
    if isinstance(hint, ast.BoolOp):  # `a or b` is b when a is empty; `a and b` may be either
        values = hint.values[-1:] if isinstance(hint.op, ast.Or) else hint.values
        return any(_may_be_none(v, scopes, seen) for v in values)
    if isinstance(hint, ast.Call):
        name = getattr(hint.func, "id", getattr(hint.func, "attr", None))
        if name == "get" and isinstance(hint.func, ast.Attribute):  # a dict's .get: None unless a default
            return len(hint.args) < 2 or _may_be_none(hint.args[1], scopes, seen)
        return name in RETURNS_NONE or name == "did_you_mean"  # None when nothing is close: add `or ...`
    if isinstance(hint, ast.Name) and hint.id not in seen:
        for depth in range(len(scopes) - 1, -1, -1):  # innermost first, as Python looks names up
            found = _bindings(scopes[depth], hint.id)
            if found:
                outer, inner = scopes[:depth + 1], seen | {hint.id}
                return any(_binding_may_be_none(b, outer, inner) for b in found)
    return False  # an f-string, a sum of strings, an attribute (another error's hint), an import


def _binding_may_be_none(binding, scopes: tuple, seen: frozenset) -> bool:
    if binding is _UNKNOWN:
        return True
    if isinstance(binding, tuple):  # a parameter: None by its default or its annotation
        _, arg, default = binding
        return (default is not None and _may_be_none(default, scopes, seen)) or _admits_none(arg.annotation)
    return _may_be_none(binding, scopes, seen)


def _error_params(scope: ast.AST) -> set[str]:
    """Parameters that take an error class (`error: type[FlowgradError] = FlowgradError`): a
    call of one builds an error."""
    if not isinstance(scope, _SCOPES):
        return set()
    args = scope.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    return {a.arg for a, d in [*zip(positional, defaults), *zip(args.kwonlyargs, args.kw_defaults)]
            if d is not None and getattr(d, "id", getattr(d, "attr", None)) in ERROR_CLASSES}


def _calls(node: ast.AST, scopes: tuple, params: frozenset):
    """(call, scopes around it, error-class parameter names in reach) for each call under `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _SCOPES):
            yield from _calls(child, (*scopes, child), params | _error_params(child))
            continue
        if isinstance(child, ast.Call):
            yield child, scopes, params
        yield from _calls(child, scopes, params)


def error_calls(source: str):
    """(line, message start, hint expression or None, scopes) of each error-class call in `source`."""
    tree = ast.parse(source)
    for node, scopes, params in _calls(tree, (tree,), frozenset()):
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if name not in ERROR_CLASSES and not (isinstance(node.func, ast.Name) and name in params):
            continue
        hint = next((k.value for k in node.keywords if k.arg == "hint"), None)
        if hint is None and len(node.args) >= 3:
            hint = node.args[2]
        message = ast.unparse(node.args[0]) if node.args else ""
        yield node.lineno, message, hint, scopes


def unhinted(source: str) -> list[tuple[int, str]]:
    return [(line, message) for line, message, hint, scopes in error_calls(source)
            if hint is None or _may_be_none(hint, scopes)]


def test_the_walk_sees_the_error_classes_and_their_calls():
    assert {"SpecError", "ShapeError", "DataError", "GradientError", "ExportError", "FlowgradError"} <= ERROR_CLASSES
    calls = sum(len(list(error_calls(p.read_text()))) for p in SOURCES)
    assert calls > 400, calls  # the package raises hundreds of them: a walk that finds few is broken


def test_the_walk_catches_a_missing_hint():
    bad = '''
def f(x):
    raise ShapeError(f"bad {x}")
def g(x):
    raise SpecError("bad", loc, did_you_mean(x, ["a"]))
def h(x):
    raise DataError("bad", hint="fix it" if x else None)
def k(x):
    raise FlowgradError("bad", loc, None)
def ok(x):
    raise SpecError("fine", loc, did_you_mean(x, ["a"]) or "choose a")
'''
    assert [line for line, _ in unhinted(bad)] == [3, 5, 7, 9]


def test_the_walk_follows_a_hint_passed_in_a_variable():
    """A hint in a variable is as good as what the variable can hold: flagged where a binding
    of it can be None (a None default or annotation, `None` on one branch, a bare did_you_mean
    or a function annotated `-> str | None`, a dict's .get, an unpacked or loop value), and
    not where every binding is a hint. The walk does not follow the order of statements: a
    variable set to None and then to a hint everywhere is flagged (give it the hint at once)."""
    bad = '''
def a(x):
    hint = None
    if x:
        hint = "fix it"
    raise DataError("bad", hint=hint)
def b(x, hint=None):
    raise DataError("bad", hint=hint)
def c(x, hint: str | None = "fix it"):
    raise DataError("bad", None, hint)
def d(x):
    close = did_you_mean(x, ["a"])
    raise SpecError("bad", loc, close)
def e(x):
    what, hint = TABLE[x]
    raise SpecError("bad", loc, hint)
def f(x):
    hint = HINTS.get(x)
    raise SpecError("bad", loc, hint=hint)
def g(x):
    for hint in x:
        pass
    raise SpecError("bad", loc, hint=hint)
def h(x):
    hint = _example(x) if x else "fix it"
    raise SpecError("bad", loc, hint=hint)
def k(x, error=DataError):
    raise error("bad")
def m(x):
    def inner():
        raise DataError("bad", hint=MODULE_NONE)
MODULE_NONE = None
'''
    assert [line for line, _ in unhinted(bad)] == [6, 8, 10, 13, 16, 19, 23, 26, 28, 31]
    good = '''
HINT = "fix it"
def a(x):
    hint = "fix it"
    if x:
        hint = f"fix {x}"
    raise DataError("bad", hint=hint)
def b(x, hint: str = "fix it"):
    raise DataError("bad", hint=hint)
def c(x, hint=None):
    raise DataError("bad", hint=hint or "fix it")
def d(x):
    close = did_you_mean(x, ["a"]) or "choose a"
    hint = close
    raise SpecError("bad", loc, hint)
def e(x, err):
    raise SpecError("bad", loc, err.hint)
def f(x):
    hint = HINTS.get(x, "fix it")
    raise SpecError("bad", loc, hint=HINT if x else hint)
def g(x):
    hint = None
    def inner(hint="fix it"):  # its own hint
        raise SpecError("bad", loc, hint=hint)
    return inner
def h(x):
    what, hint = "x", "fix it"
    raise SpecError(what, loc, hint)
def k(x, error=DataError):
    raise error("bad", hint="fix it")
'''
    assert unhinted(good) == []


def test_every_error_has_a_hint():
    missing = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        for line, message in unhinted(path.read_text()):
            if not any(rel == where and text in message for where, text in ALLOWED):
                missing.append(f"{rel}:{line}: {message[:80]}")
    assert not missing, "errors without a hint (say what the user should do):\n" + "\n".join(missing)


def test_allowed_entries_have_reasons():
    assert len(ALLOWED) <= 5
    assert all(reason.strip() for reason in ALLOWED.values())
