"""Expressions: Python syntax, parsed by `ast`, converted against a whitelist.

Nothing is ever evaluated. Every construct not listed in `_Converter` is
refused with a message that names it, located at the exact character.
"""
from __future__ import annotations

import ast
import warnings
from typing import Callable

from .errors import Loc, SpecError
from .model import BinOp, Call, Compare, Const, Expr, ListExpr, Name, Slice, Subscript, UnaryOp

MAX_EXPR_CHARS = 10_000
MAX_EXPR_DEPTH = 100

ALLOWED = ("names, numbers, strings, + - * / @ **, comparisons, not, calls like f(x, axis=1), "
           "subscripts like x[:, 0] and lists [a, b]")

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.MatMult: "@", ast.Pow: "**"}
_UNARY = {ast.USub: "-", ast.UAdd: "+", ast.Not: "not"}
_COMPARE = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}

# What is refused, and what to write instead. The hints name only ops that
# the compiler provides (compiler/ops); keep them in step with its registry.
_NO_INT_OPS = ("for integer tensors, 'q, r: divmod(x, d)' gives x // d and x % d by a positive constant; "
               "for floats use / and the ops in `flowgrad ops`")
_NO_BIT_OPS = "bit operations are not supported"
_REFUSED_BINOPS = {
    ast.Mod: ("'%'", _NO_INT_OPS),
    ast.FloorDiv: ("'//'", _NO_INT_OPS),
    ast.LShift: ("the bit shift '<<'", _NO_BIT_OPS),
    ast.RShift: ("the bit shift '>>'", _NO_BIT_OPS),
    ast.BitOr: ("'|'", "for bool masks use logical_or(a, b); to choose between values by a condition use "
                       "where(condition, a, b)"),
    ast.BitAnd: ("'&'", "for bool masks use logical_and(a, b); to choose between values by a condition use "
                        "where(condition, a, b)"),
    ast.BitXor: ("'^'", "for powers use '**'"),
}
_REFUSED_COMPARE = {
    ast.In: "'in'", ast.NotIn: "'not in'", ast.Is: "'is'", ast.IsNot: "'is not'",
}
_REFUSED_NODES = {
    ast.Lambda: ("a lambda", "define the computation as graph entries, or as a block"),
    ast.ListComp: ("a list comprehension", "use ops over whole tensors, or scan over a block"),
    ast.SetComp: ("a set comprehension", "use ops over whole tensors, or scan over a block"),
    ast.DictComp: ("a dict comprehension", "use ops over whole tensors, or scan over a block"),
    ast.GeneratorExp: ("a generator expression", "use ops over whole tensors, or scan over a block"),
    ast.NamedExpr: ("':=' (assignment)", "give the value its own graph entry: 'name: expression'"),
    ast.JoinedStr: ("an f-string", "use a plain string constant"),
    ast.FormattedValue: ("an f-string", "use a plain string constant"),
    ast.IfExp: ("'if ... else'", "use where(condition, a, b)"),
    ast.Dict: ("a dict literal", "pass options as keyword arguments: f(x, key=value)"),
    ast.Set: ("a set literal", "use a list: [a, b]"),
    ast.Starred: ("'*' unpacking", "pass the arguments one by one"),
    ast.Await: ("'await'", None),
    ast.Yield: ("'yield'", None),
    ast.YieldFrom: ("'yield from'", None),
    ast.Slice: ("a slice outside of [...]", "slices only appear in subscripts: x[1:3]"),
}


def parse_expr(text: str, loc: Loc, quoted: bool = False,
               where: Callable[[int], Loc] | None = None) -> Expr:
    """Parse one expression into the model's Expr tree.

    loc is where `text` starts in the file: the first character of a plain
    YAML scalar, or the opening quote of a quoted one (quoted=True: the text
    starts one column later). `where`, when given, maps an index into `text`
    to its Loc exactly (see yamltree.ScalarSrc.loc_at) and takes precedence;
    the loader always passes it, so multi-line and escaped scalars are exact.
    """
    if where is None:
        where = _simple_where(text, loc, quoted)
    if not text.strip():
        raise SpecError("empty expression", loc, "write an expression, e.g. relu(x @ W + b)")
    if len(text) > MAX_EXPR_CHARS:
        raise SpecError(f"expression is too long ({len(text):,} characters)", loc,
                        "split it into several graph entries")
    tree, parsed, shift = _parse(text, where)
    return _Converter(parsed, shift, where).convert(tree.body)


def _simple_where(text: str, loc: Loc, quoted: bool) -> Callable[[int], Loc]:
    """Index -> Loc for a scalar on one line (continuation lines: a best guess)."""
    first = loc.col + (1 if quoted else 0)

    def where(index: int) -> Loc:
        line = text.count("\n", 0, index)
        if line == 0:
            return Loc(loc.file, loc.line, first + index)
        return Loc(loc.file, loc.line + line, index - text.rfind("\n", 0, index))

    return where


def _parse(text: str, where):
    """(ast, the string parsed, shift): index i of the parsed string is text[i + shift].

    Leading whitespace is dropped (eval mode would call it an indent), and a
    multi-line expression gets parentheses so that it may break anywhere.
    """
    lead = len(text) - len(text.lstrip())
    body = text[lead:].rstrip()
    try:
        return ast_parse(body), body, lead
    except SyntaxError as first:
        if "\n" in body:
            wrapped = "(" + body + "\n)"
            try:
                return ast_parse(wrapped), wrapped, lead - 1
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                pass
        raise _syntax_error(first, body, lead, where) from None
    except (RecursionError, MemoryError):
        raise SpecError("expression is too deeply nested", where(lead),
                        "split it into several graph entries") from None
    except ValueError as e:  # e.g. a NUL character
        raise SpecError(f"invalid expression: {e}", where(lead),
                        "remove the control character (e.g. a NUL byte) from the expression") from None


def ast_parse(text: str):
    # Python warns about things like "1if"; the user gets our errors, not warnings on stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(text, mode="eval")


def _syntax_error(e: SyntaxError, body: str, lead: int, where) -> SpecError:
    lines = body.split("\n")
    lineno = min(max(e.lineno or 1, 1), len(lines))
    line_start = sum(len(s) + 1 for s in lines[:lineno - 1])
    # offset is 1-based in characters; 0 means "at the end of the input"
    col = (e.offset or 0) - 1
    if col < 0 or col > len(lines[lineno - 1]):
        col = len(lines[lineno - 1])
    msg = (e.msg or "invalid syntax").split("\n")[0]
    if msg == "invalid syntax" and lineno == len(lines) and col == len(lines[-1]):
        msg = "unexpected end of expression"
    if "Exceeds the limit" in msg:
        msg = "integer literal is too long"
    return SpecError(f"invalid expression: {msg}", where(lead + line_start + col),
                     f"expressions use Python syntax: {ALLOWED}")


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


class _Converter:
    def __init__(self, parsed: str, shift: int, where):
        self.where = where
        self.shift = shift
        # ast positions are (1-based line, UTF-8 byte column) of the parsed string
        self.lines = parsed.split("\n")
        self.line_starts = [0]
        for line in self.lines[:-1]:
            self.line_starts.append(self.line_starts[-1] + len(line) + 1)
        self.depth = 0

    def loc(self, node) -> Loc:
        line = min(node.lineno, len(self.lines)) - 1
        chars = len(self.lines[line].encode("utf-8")[:node.col_offset].decode("utf-8", "ignore"))
        return self.where(max(0, self.line_starts[line] + chars + self.shift))

    def refuse(self, node, what: str, hint: str | None = None, loc: Loc | None = None) -> SpecError:
        return SpecError(f"{what} is not allowed in an expression", loc or self.loc(node),
                         hint or f"expressions may use {ALLOWED}")

    def convert(self, node) -> Expr:
        self.depth += 1
        if self.depth > MAX_EXPR_DEPTH:
            raise SpecError("expression is too deeply nested", self.loc(node),
                            "split it into several graph entries")
        try:
            return self._convert(node)
        finally:
            self.depth -= 1

    def _convert(self, node) -> Expr:
        loc = self.loc(node)
        if isinstance(node, ast.Name):
            return Name(loc, self.name(node, node.id))
        if isinstance(node, ast.Constant):
            return Const(loc, self.constant(node))
        if isinstance(node, ast.Attribute):
            return Name(loc, self.dotted(node))
        if isinstance(node, ast.BinOp):
            op = type(node.op)
            if op not in _BINOPS:
                what, hint = _REFUSED_BINOPS.get(op, (f"the operator {op.__name__}", None))
                # point at the operator itself, which sits between the operands
                raise SpecError(f"{what} is not allowed in an expression",
                                self.operator_loc(node.left), hint or f"expressions may use {ALLOWED}")
            return BinOp(loc, _BINOPS[op], self.convert(node.left), self.convert(node.right),
                         op_loc=self.operator_loc(node.left))
        if isinstance(node, ast.UnaryOp):
            op = type(node.op)
            if op not in _UNARY:
                raise self.refuse(node, "'~'", "for booleans use logical_not(x)")
            operand = self.convert(node.operand)
            # fold -1 into a constant: attributes such as axis=-1 are plain numbers
            if op in (ast.USub, ast.UAdd) and isinstance(operand, Const) \
                    and type(operand.value) in (int, float):
                return Const(loc, -operand.value if op is ast.USub else operand.value)
            return UnaryOp(loc, _UNARY[op], operand)
        if isinstance(node, ast.Compare):
            if len(node.ops) > 1:
                raise self.refuse(node, "a chained comparison", "compare two values at a time: a < b")
            op = type(node.ops[0])
            if op not in _COMPARE:
                raise SpecError(f"{_REFUSED_COMPARE.get(op, 'this comparison')} is not allowed in an expression",
                                self.operator_loc(node.left), "use == != < <= > >=")
            return Compare(loc, _COMPARE[op], self.convert(node.left), self.convert(node.comparators[0]),
                           op_loc=self.operator_loc(node.left))
        if isinstance(node, ast.Call):
            return self.call(node, loc)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, loc)
        if isinstance(node, (ast.List, ast.Tuple)):
            return ListExpr(loc, [self.convert(item) for item in node.elts])
        if isinstance(node, ast.BoolOp):
            word = "and" if isinstance(node.op, ast.And) else "or"
            raise SpecError(f"'{word}' is not allowed in an expression", self.operator_loc(node.values[0]),
                            f"for bool masks use logical_{word}(a, b); to choose between values by a condition use "
                            "where(condition, a, b)")
        what, hint = _REFUSED_NODES.get(type(node), (f"'{type(node).__name__}'", None))
        # (refuse() gives the nodes without a hint of their own one; the 'if' points at the 'if',
        # not at the value before it)
        raise self.refuse(node, what, hint, self.operator_loc(node.body) if isinstance(node, ast.IfExp) else None)

    def name(self, node, name: str) -> str:
        if _is_dunder(name):
            raise SpecError(f"the name '{name}' is not allowed", self.loc(node),
                            "names that start and end with '__' are reserved")
        return name

    def constant(self, node: ast.Constant):
        value = node.value
        if value is Ellipsis:
            raise SpecError("'...' is only allowed in a subscript", self.loc(node), "e.g. x[..., -1]")
        if isinstance(value, complex):
            raise self.refuse(node, "a complex number", "flowgrad tensors are real")
        if isinstance(value, bytes):
            raise self.refuse(node, "a bytes literal", "use a plain string: 'text'")
        return value

    def dotted(self, node: ast.Attribute) -> str:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(self.name(node, node.attr))
            node = node.value
        if not isinstance(node, ast.Name):
            raise SpecError(f"attribute access '.{parts[-1]}' on an expression is not allowed",
                            self.loc(node), "only dotted parameter names like h.W are allowed")
        parts.append(self.name(node, node.id))
        return ".".join(reversed(parts))

    def operator_loc(self, left) -> Loc:
        """Loc of the operator after the operand `left`: the next character not a space or ')'."""
        line = left.end_lineno - 1
        chars = self.lines[line]
        col = len(chars.encode("utf-8")[:left.end_col_offset].decode("utf-8", "ignore"))
        while True:
            while col < len(chars) and chars[col] in " )\t":
                col += 1
            if col < len(chars) or line + 1 >= len(self.lines):
                break
            line, col, chars = line + 1, 0, self.lines[line + 1]
        return self.where(max(0, self.line_starts[line] + col + self.shift))

    def call(self, node: ast.Call, loc: Loc) -> Call:
        if isinstance(node.func, ast.Name):
            func = self.name(node.func, node.func.id)
        elif isinstance(node.func, ast.Attribute):
            func = self.dotted(node.func)
        else:
            self.convert(node.func)  # a lambda or other refused construct is named as such
            raise self.refuse(node.func, "calling the result of an expression",
                              "only named ops can be called, e.g. relu(x)")
        args = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.refuse(arg, "'*' unpacking", "pass the arguments one by one")
            args.append(self.convert(arg))
        kwargs, kwarg_locs = {}, {}
        for kw in node.keywords:
            if kw.arg is None:
                raise self.refuse(kw, "'**' unpacking", "pass keyword arguments one by one: f(x, axis=1)")
            self.name(kw, kw.arg)
            if kw.arg in kwargs:
                raise SpecError(f"invalid expression: keyword argument '{kw.arg}' repeated", self.loc(kw), "give each keyword once")
            kwargs[kw.arg] = self.convert(kw.value)
            kwarg_locs[kw.arg] = self.loc(kw)
        return Call(loc, func, args, kwargs, func_loc=self.loc(node.func), kwarg_locs=kwarg_locs)

    def subscript(self, node: ast.Subscript, loc: Loc) -> Subscript:
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        index = []
        for item in items:
            if isinstance(item, ast.Constant) and item.value is Ellipsis:
                if any(isinstance(i, Const) and i.value is Ellipsis for i in index):
                    raise SpecError("only one '...' is allowed in a subscript", self.loc(item),
                                    "'...' stands for all the axes in between")
                index.append(Const(self.loc(item), Ellipsis))  # all the axes in between
            elif isinstance(item, ast.Slice):
                index.append(Slice(self.slice_loc(item, node), *(
                    None if part is None else self.convert(part)
                    for part in (item.lower, item.upper, item.step))))
            elif isinstance(item, ast.Starred):
                raise self.refuse(item, "'*' unpacking", None)
            else:
                index.append(self.convert(item))
        return Subscript(loc, self.convert(node.value), index)

    def slice_loc(self, item: ast.Slice, node: ast.Subscript) -> Loc:
        # A bare ':' has a position in Python >= 3.9; fall back to the bracket.
        if getattr(item, "lineno", None) is not None:
            return self.loc(item)
        return self.loc(node)


# ---------------------------------------------------------------- back to text
_PREC = {"not": 2, "cmp": 3, "+": 4, "-": 4, "*": 5, "/": 5, "@": 5, "unary": 6, "**": 7, "atom": 9}


def unparse(expr: Expr) -> str:
    """Source text of an Expr, for messages such as "shape mismatch in 'x @ W1'"."""
    return _unparse(expr, 0)


def _unparse(e: Expr, outer: int) -> str:
    if isinstance(e, Name):
        text, prec = e.id, _PREC["atom"]
    elif isinstance(e, Const):
        text = "..." if e.value is Ellipsis else repr(e.value)
        prec = _PREC["unary"] if isinstance(e.value, (int, float)) and e.value < 0 else _PREC["atom"]
    elif isinstance(e, BinOp):
        prec = _PREC[e.op]
        if e.op == "**":  # right-associative, and binds tighter than a unary minus on its left
            left, right = _unparse(e.left, prec + 1), _unparse(e.right, _PREC["unary"])
        else:
            left, right = _unparse(e.left, prec), _unparse(e.right, prec + 1)
        text = f"{left} {e.op} {right}"
    elif isinstance(e, UnaryOp):
        if e.op == "not":
            prec = _PREC["not"]
            text = "not " + _unparse(e.operand, prec)
        else:
            prec = _PREC["unary"]
            text = e.op + _unparse(e.operand, prec)
    elif isinstance(e, Compare):
        prec = _PREC["cmp"]
        text = f"{_unparse(e.left, prec + 1)} {e.op} {_unparse(e.right, prec + 1)}"
    elif isinstance(e, Call):
        args = [_unparse(a, 0) for a in e.args] + [f"{k}={_unparse(v, 0)}" for k, v in e.kwargs.items()]
        text, prec = f"{e.func}({', '.join(args)})", _PREC["atom"]
    elif isinstance(e, Subscript):
        text = f"{_unparse(e.value, _PREC['atom'])}[{', '.join(_unparse(i, 0) for i in e.index)}]"
        prec = _PREC["atom"]
    elif isinstance(e, Slice):
        parts = ["" if p is None else _unparse(p, 0) for p in (e.start, e.stop)]
        if e.step is not None:
            parts.append(_unparse(e.step, 0))
        text, prec = ":".join(parts), _PREC["atom"]
    elif isinstance(e, ListExpr):
        text, prec = f"[{', '.join(_unparse(i, 0) for i in e.items)}]", _PREC["atom"]
    else:
        raise TypeError(f"not an expression: {e!r}")
    return f"({text})" if prec < outer else text


def names_in(e) -> list[str]:
    """Every name an expression mentions, in reading order."""
    out: list[str] = []

    def walk(x):
        if x is None:
            return
        if isinstance(x, Name):
            out.append(x.id)
        elif isinstance(x, (BinOp, Compare)):
            walk(x.left)
            walk(x.right)
        elif isinstance(x, UnaryOp):
            walk(x.operand)
        elif isinstance(x, Call):
            for a in x.args:
                walk(a)
            for v in x.kwargs.values():
                walk(v)
        elif isinstance(x, Subscript):
            walk(x.value)
            for i in x.index:
                walk(i)
        elif isinstance(x, Slice):
            walk(x.start)
            walk(x.stop)
            walk(x.step)
        elif isinstance(x, ListExpr):
            for i in x.items:
                walk(i)

    walk(e)
    return out
