"""How a call in a spec binds its arguments: one place, for every callable a spec can call.

Ops, layer shorthands, recurrent layers and cells, blocks called as functions and the
special forms grad, hvp and jacobian all bind `f(a, b, k=v)` as Python binds a call:
positional arguments fill the parameters in order, a keyword names one of them, and

- an argument given both positionally and by keyword (`conv2d(x, 8, 3, kernel=5)`),
- more positional arguments than the parameters that take them,
- a keyword the callable does not take (with 'did you mean' among its keywords),
- a required argument left out

are each a located error: at the keyword, at the first argument too many, at the
unknown keyword, at the call. A keyword given twice never gets here: the expression
parser refuses it (spec/expr.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from spec.errors import SpecError, did_you_mean


class BindingError(SpecError):
    """A call whose arguments do not fit what it calls (rather than a value the callable refused)."""


@dataclass
class Params:
    """What a callable takes, for binding a call to it."""

    what: str  # the callable as messages name it: "conv2d()", "block 'step'"
    positional: tuple = ()  # given by position, or by keyword where keywords are taken
    keyword_only: tuple = ()
    required: tuple = ()
    usage: str = ""  # the call as a spec writes it, for hints
    varargs: bool = False  # any number of positional arguments, none of them a named parameter
    keywords: bool = True  # False: every argument is positional (blocks, grad, hvp, jacobian)
    hint: str = ""  # what to write, where the usage alone would not say it (a block's 'in' order)


def _text(expr) -> str:
    from spec.expr import unparse

    try:
        return unparse(expr)
    except TypeError:  # (not an expression: a call built by the compiler)
        return "..."


def _usage_hint(p: Params) -> str:
    return p.hint or f"usage: {p.usage}"


def bind(p: Params, e, args: list, kwargs: dict) -> tuple[dict, dict]:
    """(values, locs): each parameter given -> its value, and -> where the call writes it.

    `args` and `kwargs` are the call's arguments (expressions or their values), in the
    order of `e.args` and `e.kwargs`; `e` is the call (S.Call) for locations. Positional
    arguments of a `varargs` callable are bound to the names "0", "1", ...
    """
    arg_loc = lambda i: e.args[i].loc if i < len(e.args) else e.loc  # noqa: E731
    kw_loc = lambda k: e.kwarg_locs.get(k, e.loc)  # noqa: E731
    values, locs = {}, {}
    if p.varargs:
        for i, a in enumerate(args):
            values[str(i)] = a
            locs[str(i)] = arg_loc(i)
    else:
        n = len(p.positional)
        if len(args) > n:  # located at the first argument too many
            if p.keywords:
                most = "at most " if any(name not in p.required for name in p.positional) else ""
                takes = f"{most}{n} positional argument{'' if n == 1 else 's'}"
            else:
                takes = f"{n} argument(s) ({', '.join(p.positional)})"
            raise BindingError(f"{p.what} takes {takes}, got {len(args)}", arg_loc(n), _usage_hint(p))
        for name, a, i in zip(p.positional, args, range(len(args))):
            values[name] = a
            locs[name] = arg_loc(i)
    for k, v in kwargs.items():
        if not p.keywords:
            raise BindingError(f"{p.what} takes no keyword arguments, got {k!r}", kw_loc(k), _usage_hint(p))
        known = (() if p.varargs else p.positional) + p.keyword_only
        if k not in known:
            raise BindingError(f"{p.what} has no argument {k!r}", kw_loc(k),
                               did_you_mean(k, known) or _usage_hint(p))
        if k in values:  # Python's "got multiple values for argument"
            i = p.positional.index(k)
            raise BindingError(f"{p.what} got {k!r} twice: {_text(e.args[i])} as argument {i + 1}, and "
                               f"{k}={_text(e.kwargs.get(k))}", kw_loc(k),
                               f"give it once, positionally or as {k}=..., not both; usage: {p.usage}")
        values[k] = v
        locs[k] = kw_loc(k)
    missing = [name for name in p.required if name not in values]
    if missing:
        raise BindingError(f"{p.what} is missing the argument(s) {', '.join(missing)}", e.loc, _usage_hint(p))
    return values, locs
