"""Safe YAML -> a tree of dicts and lists that remembers where everything was.

Only PyYAML's *composer* is used (SafeLoader, pure Python, so marks carry
exact character indices); the tree is then built here from the node graph,
which lets us refuse what a spec never needs and a hostile file might use:
alias bombs, deep nesting, duplicate keys, non-string keys, custom tags.

The located tree:
  LocMap(dict)  .loc (the mapping's start), .key_locs[k], .value_locs[k],
                .key_srcs[k] / .value_srcs[k] (ScalarSrc of string scalars)
  LocList(list) .loc, .item_locs[i], .item_srcs[i] (ScalarSrc or None)
Scalars are plain Python values (str, int, float, bool, None).
"""
from __future__ import annotations

import bisect
import functools
import re

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from .errors import Loc, SpecError

# A spec is a few kB. PyYAML's pure-Python parser reads about 100,000 values a
# second, so these limits keep refusing a hostile or mistaken file well under a second.
MAX_BYTES = 1_000_000      # anything this big is a mistake or an attack
MAX_VALUES = 10_000        # values (keys, scalars, lists, mappings) as written, before expanding aliases
MAX_ALIASES = 100          # a spec may reuse a block of settings, not build a tree of aliases
MAX_NODES = 1_000_000      # after expanding aliases
MAX_DEPTH = 50             # specs nest about 6 levels deep

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
# YAML 1.1 forms of numbers that are not what they look like (YAML 1.2 dropped both)
_OCTAL = re.compile(r"^[-+]?0[0-7_]*[0-7][0-7_]*$")
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_CONSTRUCT = {
    "tag:yaml.org,2002:null": SafeConstructor.construct_yaml_null,
    "tag:yaml.org,2002:bool": SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:int": SafeConstructor.construct_yaml_int,
    "tag:yaml.org,2002:float": SafeConstructor.construct_yaml_float,
}
# Implicit tags that a spec has no use for; the text is kept as a string
# (a doc line such as `doc: 2024-01-01` should not become a datetime).
_AS_TEXT = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}



def _decimal_comma_hint(key: ScalarNode) -> str | None:
    """The hint for a number key that a decimal comma made: {valid: 0,2} is valid: 0 and a key 2."""
    mark, text = key.start_mark, key.value
    before = (mark.buffer or "")[:mark.index]
    whole = re.search(r"(?<![\w.])(\d+),$", before)
    if whole is None or not text.isdigit():
        return None
    return f"a decimal point is written '.', not ',': {whole.group(1)}.{text}"

class LocMap(dict):
    """A YAML mapping that knows where each key and value came from."""

    def __init__(self, loc: Loc | None = None):
        super().__init__()
        self.loc = loc
        self.key_locs: dict[str, Loc] = {}
        self.value_locs: dict[str, Loc] = {}
        self.key_srcs: dict[str, ScalarSrc] = {}
        self.value_srcs: dict[str, ScalarSrc] = {}

    def set(self, key: str, value, key_loc: Loc, value_loc: Loc, value_src: "ScalarSrc | None" = None):
        self[key] = value
        self.key_locs.setdefault(key, key_loc)
        self.value_locs[key] = value_loc
        if value_src is None:
            self.value_srcs.pop(key, None)
        else:
            self.value_srcs[key] = value_src


class LocList(list):
    """A YAML sequence that knows where each item came from."""

    def __init__(self, loc: Loc | None = None):
        super().__init__()
        self.loc = loc
        self.item_locs: list[Loc] = []
        self.item_srcs: list[ScalarSrc | None] = []


class ScalarSrc:
    """Where each character of a string scalar sits in the file.

    Expressions live in scalars, and an error inside one should point at the
    offending sub-expression, not at the start of the value. Quotes, escapes,
    block-scalar indicators and folded line breaks all shift characters, so
    the value is aligned with its raw source text.
    """

    def __init__(self, file: str, value: str, raw: str, line: int, col: int, style: str | None):
        self.file = file
        self.value = value
        self.raw = raw          # the scalar's source text, from its first character
        self.line = line        # 1-based position of raw[0]
        self.col = col
        self.style = style      # None (plain), "'", '"', '|' or '>'
        self._cols: list[tuple[int, int]] | None = None

    @property
    def loc(self) -> Loc:
        return Loc(self.file, self.line, self.col)

    @property
    def quoted(self) -> bool:
        return self.style in ("'", '"')

    def loc_at(self, index: int) -> Loc:
        """Loc of value[index] (index == len(value) means just past the end)."""
        if self._cols is None:
            self._cols = self._align()
        if not self._cols:
            return self.loc
        line, col = self._cols[max(0, min(index, len(self._cols) - 1))]
        if index >= len(self._cols):
            col += index - len(self._cols) + 1
        return Loc(self.file, line, col)

    def _align(self) -> list[tuple[int, int]]:
        chars = self._raw_chars()
        if not chars:
            return []
        out = []
        j = 0
        for ch in self.value:
            k, skipped = j, 0
            # Walk the source forward to this character, stepping over what
            # YAML removed: quotes, backslashes, indentation, line breaks.
            while k < len(chars) and chars[k][0] != ch:
                if ch.isspace() and chars[k][0].isspace():
                    break  # a line break folded into a space, or the reverse
                if not chars[k][0].isspace():
                    skipped += 1
                    if skipped > 10:
                        k = len(chars)
                        break
                k += 1
            if k < len(chars):
                out.append(chars[k][1])
                j = k + 1
            else:  # an escape such as \n or \x41 that we cannot see through
                out.append(chars[min(j, len(chars) - 1)][1])
        return out

    def _raw_chars(self) -> list[tuple[str, tuple[int, int]]]:
        """(character, (line, col)) of the source, without a block scalar's header and indentation."""
        raw, line, col = self.raw, self.line, self.col
        block = self.style in ("|", ">") and "\n" in raw
        if block:
            raw = raw[raw.index("\n") + 1:]
            line, col = line + 1, 1
        lines = raw.split("\n")
        indent = 0
        if block:
            content = [ln for ln in lines if ln.strip()]
            indent = min((len(ln) - len(ln.lstrip(" ")) for ln in content), default=0)
        chars = []
        for i, text in enumerate(lines):
            start = min(indent, len(text) - len(text.lstrip(" "))) if block else 0
            for c in range(start, len(text)):
                chars.append((text[c], (line + i, (col if i == 0 else 1) + c)))
            if i < len(lines) - 1:
                chars.append(("\n", (line + i, (col if i == 0 else 1) + len(text))))
        return chars


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts aliases and nesting while composing."""

    def __init__(self, stream, file: str):
        super().__init__(stream)
        self.file = file
        self.aliases = 0
        self.depth = 0
        self.values = 0

    def compose_node(self, parent, index):
        self.values += 1
        if self.values > MAX_VALUES:
            raise SpecError(f"the YAML document has more than {MAX_VALUES:,} values",
                            _mark_loc(self.file, self.peek_event().start_mark),
                            "a spec is a short file; keep data in .npz files")
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise SpecError(
                    f"too many YAML aliases (more than {MAX_ALIASES})",
                    _mark_loc(self.file, self.peek_event().start_mark),
                    "a spec needs few aliases (*name); write the values out")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise SpecError(f"YAML nested more than {MAX_DEPTH} levels deep",
                            _mark_loc(self.file, self.peek_event().start_mark),
                            "a spec nests only a few levels; check the brackets and indentation")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# YAML 1.1 (PyYAML) reads `1e-4` as a string because it wants a dot; people
# write learning rates that way, so accept YAML 1.2 exponent floats too.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the strings _Loader reads as numbers: safe_dump wrote the string
    '1e5' (a name, a doc) unquoted, which the spec read back as the number 100000.0."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def dump_yaml(value, **options) -> str:
    """YAML text of plain data (safe_dump's options) that load_yaml reads back as the same values."""
    return yaml.dump(value, Dumper=_Dumper, **options)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def text_loc(file: str, text: str, index: int, col_offset: int = 0) -> Loc:
    """Loc of text[index] as YAML's marks count it: lines end at \\n, \\r\\n or a lone \\r, and a
    byte-order mark takes no column (counting \\n alone put a control character of a file with
    old Mac line ends on line 1, and one on a BOM's line a column too far)."""
    starts = [m.end() for m in _LINE_BREAK.finditer(text, 0, index)]
    start = starts[-1] if starts else 0
    col = index - start + 1
    if not starts:
        col += col_offset - (1 if text.startswith("\ufeff") and index > 0 else 0)
    return Loc(file, len(starts) + 1, col)


# Line breaks to YAML 1.1 (so to PyYAML's marks), not to editors, which show them as nothing or as
# a space (U+2028 and U+2029 come with text copied from web pages and documents).
_YAML_ONLY_BREAKS = {"\x85": "NEXT LINE", "\u2028": "LINE SEPARATOR", "\u2029": "PARAGRAPH SEPARATOR"}


@functools.lru_cache(maxsize=8)
def _line_starts(text: str) -> list[int] | None:
    """Where each line of `text` starts, as editors count lines, when YAML counts more (None if it
    counts the same). Cached: every mark of one document holds the same text."""
    if not any(c in text for c in _YAML_ONLY_BREAKS):
        return None
    return [0] + [m.end() for m in _LINE_BREAK.finditer(text)]


def _mark_loc(file: str, mark, col_offset: int = 0) -> Loc:
    starts = _line_starts(mark.buffer) if isinstance(getattr(mark, "buffer", None), str) else None
    if starts is not None:  # (PyYAML's own line would be one more per U+2028 above it than the editor's)
        line = bisect.bisect_right(starts, mark.pointer) - 1
        col = mark.pointer - starts[line] + 1 - (line == 0 and mark.buffer.startswith("\ufeff") and mark.pointer > 0)
        return Loc(file, line + 1, col + (col_offset if line == 0 else 0))
    return Loc(file, mark.line + 1, mark.column + 1 + (col_offset if mark.line == 0 else 0))


def parse_yaml(text: str, file: str, col_offset: int = 0):
    """Parse one YAML document into a located tree.

    Returns (value, loc, src): the root value, where it starts, and its
    ScalarSrc when it is a string. col_offset shifts columns on the first
    line (for values taken from the middle of a command-line string).
    """
    if len(text) > MAX_BYTES:
        raise SpecError(f"spec is too large ({len(text):,} characters; the limit is {MAX_BYTES:,})",
                        Loc(file, 1, 1), "a spec is a short YAML file; keep data in .npz files")
    loader = None
    try:
        loader = _Loader(text, file)  # the reader checks for control characters here
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        raise _yaml_error(e, file, col_offset, getattr(loader, "marks", [])) from None
    except yaml.reader.ReaderError as e:
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        raise SpecError(f"cannot read YAML: character {char} is not allowed",
                        text_loc(file, text, e.position, col_offset), "remove the control character") from None
    except yaml.YAMLError as e:  # anything else the parser may raise
        raise SpecError(f"cannot read YAML: {e}", Loc(file, 1, 1),
                        "check the YAML syntax: indentation with spaces, closed brackets and quotes") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is None:
        return None, Loc(file, 1, 1 + col_offset), None
    _check_size(node, file, col_offset)
    builder = _Builder(file, text, loader, col_offset)
    value, src = builder.build(node)
    return value, builder.loc(node.start_mark), src


def load_yaml(text: str, file: str):
    """The located tree of `text` (None for an empty document)."""
    return parse_yaml(text, file)[0]


def _yaml_error(e: yaml.MarkedYAMLError, file: str, col_offset: int, open_marks: list) -> SpecError:
    """open_marks: the parser's stack of where the collections it is inside begin."""
    mark = e.problem_mark or e.context_mark
    loc = _mark_loc(file, mark, col_offset) if mark else Loc(file, 1, 1)
    problem = e.problem or e.context or "invalid YAML"
    if e.context and e.problem:
        problem = f"{problem} ({e.context})"
    hint = "quote a value that contains ': ' or ' #', or that starts with one of [ ] { } * & ! | > @ ` % ,"
    if "\\t" in problem or "tab" in problem:
        hint = _tab_hint(mark, col_offset)
    elif odd := next(filter(None, (_yaml_only_break(m) for m in (e.problem_mark, e.context_mark) if m)), None):
        hint = (f"line {_mark_loc(file, odd[1], col_offset).line} holds the invisible character U+{ord(odd[0]):04X} "
                f"({_YAML_ONLY_BREAKS[odd[0]]}), which YAML reads as a line break: remove it")
    elif "single document" in problem:
        hint = "a spec is one YAML document; remove the '---' separator"
    elif "undefined alias" in problem:
        hint = "an alias (*name) must come after its anchor (&name)"
    elif e.context and "flow" in e.context and open_marks:
        # A flow sequence's or mapping's error marks its bracket, but a flow node's (`a: [` at the
        # end of the file) marks the missing value; the innermost open collection is the bracket.
        bracket = open_marks[-1]
        opened = bracket.buffer[bracket.pointer] if bracket.buffer else "bracket"
        hint = f"the '{opened}' at {_mark_loc(file, bracket, col_offset)} is not closed where expected"
    return SpecError(f"invalid YAML: {problem}", loc, hint)


def _yaml_only_break(mark) -> tuple[str, object] | None:
    """(character, mark): a character on the mark's line (as editors count lines) that YAML alone
    reads as a line break."""
    text = mark.buffer if isinstance(getattr(mark, "buffer", None), str) else ""
    starts = _line_starts(text) if text else None
    if starts is None:
        return None
    line = bisect.bisect_right(starts, mark.pointer) - 1
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    return next(((c, mark) for c in text[starts[line]:end] if c in _YAML_ONLY_BREAKS), None)


def _tab_hint(mark, col_offset: int = 0) -> str:
    """A tab the reader refuses is not always indentation: PyYAML also refuses one after a key's
    ':', between a flow list's items, inside an unquoted value and at the end of a line (unseen),
    where 'indent with spaces' pointed at nothing to indent (as in a --set value: col_offset)."""
    if mark is None or not mark.buffer:
        return "indent with spaces; YAML does not allow tabs for indentation"
    text, at = mark.buffer, mark.pointer
    start = max(text.rfind(c, 0, at) for c in "\r\n") + 1
    ends = [i for i in (text.find(c, at) for c in "\r\n\0") if i >= 0]
    before, after = text[start:at], text[at:min(ends, default=len(text))]
    if not before.strip() and not (col_offset and start == 0):
        return "indent with spaces; YAML does not allow tabs for indentation"
    if not after.strip():
        return "remove the tab at the end of the line; flowgrad's YAML reader takes tabs only in quoted values and comments"
    return ("write a space instead of the tab, or quote the value; flowgrad's YAML reader takes tabs only in quoted "
            "values and comments")


def _children(node):
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_size(root, file: str, col_offset: int) -> None:
    """Refuse alias cycles and documents that expand beyond MAX_NODES or MAX_DEPTH.

    Measured on the node graph, where an alias is a shared node, so a
    billion-laughs document is refused in microseconds instead of being
    expanded. Iterative, because alias chains can be deeper than Python's stack.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    entered: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in kids)
            depth[key] = 1 + max((depth[id(c)] for c in kids), default=0)
            entered.discard(key)
            problem = None
            if size[key] > MAX_NODES:
                problem = f"YAML aliases expand to more than {MAX_NODES:,} values"
            elif depth[key] > MAX_DEPTH:
                problem = f"YAML aliases nest more than {MAX_DEPTH} levels deep"
            if problem:
                raise SpecError(problem, _mark_loc(file, node.start_mark, col_offset),
                                "a spec needs few aliases (*name); write the values out")
            continue
        if key in size:
            continue
        entered.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in entered:
                raise SpecError("a YAML alias refers to a value that contains it (a cycle)",
                                _mark_loc(file, child.start_mark, col_offset),
                                "an alias (*name) cannot be used inside its own anchor (&name)")
            if id(child) not in size:
                stack.append((child, False))


_KIND = {MappingNode: "a mapping", SequenceNode: "a list", ScalarNode: "a value"}


class _Builder:
    def __init__(self, file: str, text: str, loader: _Loader, col_offset: int):
        self.file = file
        self.text = text
        self.loader = loader
        self.col_offset = col_offset

    def loc(self, mark) -> Loc:
        return _mark_loc(self.file, mark, self.col_offset)

    def build(self, node):
        """(value, ScalarSrc or None) for a node."""
        if isinstance(node, ScalarNode):
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                raise self.tag_error(node)
            out = LocList(self.loc(node.start_mark))
            for item in node.value:
                value, src = self.build(item)
                out.append(value)
                out.item_locs.append(self.loc(item.start_mark))
                out.item_srcs.append(src)
            return out, None
        if node.tag != _MAP:
            raise self.tag_error(node)
        return self.mapping(node), None

    def tag_error(self, node) -> SpecError:
        return SpecError(f"unsupported YAML tag {node.tag!r}", self.loc(node.start_mark),
                         "a spec uses plain YAML values; remove the !tag")

    def src(self, node) -> ScalarSrc:
        raw = self.text[node.start_mark.index:node.end_mark.index]
        start = self.loc(node.start_mark)
        return ScalarSrc(self.file, node.value, raw, start.line, start.col, node.style)

    def scalar(self, node: ScalarNode):
        if node.tag == _STR or node.tag in _AS_TEXT:
            return node.value, self.src(node)
        construct = _CONSTRUCT.get(node.tag)
        if construct is None:
            raise self.tag_error(node)
        if node.tag in (_INT, _FLOAT) and node.style is None:
            self.check_number_form(node)
        try:
            return construct(self.loader, node), None
        except (ValueError, OverflowError, yaml.YAMLError) as e:
            raise SpecError(f"cannot read {node.value!r}: {e}", self.loc(node.start_mark),
                            "quote the value to keep it as text, or drop its !!tag") from None

    def check_number_form(self, node: ScalarNode) -> None:
        """Refuse YAML 1.1's number forms that a reader takes for decimals: 010 is 8, 1:30 is 90."""
        text = node.value
        if _OCTAL.match(text) and SafeConstructor.construct_yaml_int(self.loader, node) != int(text.replace("_", "")):
            value = SafeConstructor.construct_yaml_int(self.loader, node)
            decimal = text[:1].strip("0123456789_") + text.lstrip("+-0_")
            raise SpecError(f"'{text}' is read as the octal number {value}: a leading zero makes YAML read base 8",
                            self.loc(node.start_mark), f"write {decimal} without the leading zero")
        if _SEXAGESIMAL.match(text):
            value = _CONSTRUCT[node.tag](self.loader, node)
            raise SpecError(f"'{text}' is read as the base-60 number {value}", self.loc(node.start_mark),
                            "YAML reads numbers with ':' as minutes and seconds; quote the value if it is text")

    def key(self, node) -> str:
        loc = self.loc(node.start_mark)
        if not isinstance(node, ScalarNode):
            raise SpecError(f"a key must be a string, not {_KIND[type(node)]}", loc,
                            "write keys as plain names")
        value, _ = self.scalar(node)
        if not isinstance(value, str):
            raise SpecError(f"a key must be a string, got {node.value!r} (read as {type(value).__name__})",
                            loc, _decimal_comma_hint(node) or f"quote the key: '{node.value}':")
        return value

    def mapping(self, node: MappingNode) -> LocMap:
        out = LocMap(self.loc(node.start_mark))
        explicit = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.key(key_node)
            if key in explicit:
                first = self.loc(explicit[key].start_mark)
                raise SpecError(f"duplicate key '{key}' (first defined at {first})",
                                self.loc(key_node.start_mark),
                                "each key may appear once in a mapping; remove or rename one")
            explicit[key] = key_node
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                # `<<: *defaults` — keys written out in this mapping win
                for key, k_node, v_node in self.merged(value_node):
                    if key not in explicit and key not in out:
                        self.put(out, key, k_node, v_node)
            else:
                self.put(out, self.key(key_node), key_node, value_node)
        return out

    def put(self, out: LocMap, key: str, key_node, value_node) -> None:
        value, src = self.build(value_node)
        out.set(key, value, self.loc(key_node.start_mark), self.loc(value_node.start_mark), src)
        if key_node.tag == _STR:
            out.key_srcs[key] = self.src(key_node)

    def merged(self, node):
        """(key, key node, value node) of the mappings merged by `<<`, first one winning."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        seen = set()
        for source in sources:
            if not isinstance(source, MappingNode):
                raise SpecError("'<<' (merge) takes a mapping or a list of mappings",
                                self.loc(source.start_mark), "write <<: *name, or <<: [*a, *b], where each anchor "
                                "marks a mapping")
            for key_node, value_node in source.value:
                if key_node.tag == _MERGE:
                    for item in self.merged(value_node):
                        if item[0] not in seen:
                            seen.add(item[0])
                            yield item
                    continue
                key = self.key(key_node)
                if key not in seen:
                    seen.add(key)
                    yield key, key_node, value_node


def locate(tree, path, file: str = "<spec>") -> Loc:
    """Loc of the value at `path` (keys and list indices) in a located tree.

    Where the path leaves the tree, the Loc of the deepest part that exists.
    """
    loc = getattr(tree, "loc", None) or Loc(file, 1, 1)
    node = tree
    for step in path:
        if isinstance(node, LocMap) and step in node:
            loc, node = node.value_locs.get(step, loc), node[step]
        elif isinstance(node, LocList) and isinstance(step, int) and -len(node) <= step < len(node):
            loc, node = node.item_locs[step], node[step]
        else:
            break
    return loc


def locate_key(tree, path, file: str = "<spec>") -> Loc:
    """Loc of the key that ends `path` (for a list index, the item)."""
    if not path:
        return locate(tree, path, file)
    parent = tree
    for step in path[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError):
            return locate(tree, path, file)
    last = path[-1]
    if isinstance(parent, LocMap) and last in parent.key_locs:
        return parent.key_locs[last]
    return locate(tree, path, file)


def to_plain(value):
    """The tree as plain dicts and lists (for handing to code that does not care where)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value
