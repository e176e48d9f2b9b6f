"""Every user-facing error says what to do: each place in the package that builds a
FlowgradError (or a subclass) gives it a hint.

An AST walk over spec/, compiler/, runtime/ and cli.py finds every call of an error
class and refuses one without a hint, with a hint of None, or with a hint that can
be None (a bare did_you_mean(...), or `... if cond else None`). A site that users
cannot reach may go in ALLOWED, with the reason.
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


def _may_be_none(hint: ast.expr) -> bool:
    if isinstance(hint, ast.Constant):
        return hint.value is None or hint.value == ""
    if isinstance(hint, ast.Call) and getattr(hint.func, "id", getattr(hint.func, "attr", None)) == "did_you_mean":
        return True  # None when nothing is close: give it a fallback with `or`
    if isinstance(hint, ast.IfExp):
        return _may_be_none(hint.body) or _may_be_none(hint.orelse)
    return False


def error_calls(source: str):
    """(line, message start, hint expression or None) of each error-class call in `source`."""
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if name not in ERROR_CLASSES:
            continue
        hint = next((k.value for k in node.keywords if k.arg == "hint"), None)
        if hint is None and len(node.args) >= 3:
            hint = node.args[2]
        message = ast.unparse(node.args[0]) if node.args else ""
        yield node.lineno, message, hint


def unhinted(source: str) -> list[tuple[int, str]]:
    return [(line, message) for line, message, hint in error_calls(source) if hint is None or _may_be_none(hint)]


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
