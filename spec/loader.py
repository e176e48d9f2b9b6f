"""Spec files -> Spec objects: YAML, overrides, JSON Schema, names, sizes, expressions.

Every mistake becomes a SpecError located in the file (or in the --set
string it came from); independent mistakes are reported together as a
MultiSpecError (both a SpecError and a MultiError), one located line each.
"""
from __future__ import annotations

import ast
import functools
import json
import keyword
import math
import os
import re
import shlex
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import FLAGS, ArgNames, FlowgradError, Loc, MultiError, MultiSpecError, SpecError, did_you_mean
from .expr import ast_parse, parse_expr
from .model import Assign, Block, Const, Expr, InitSpec, InputDecl, ParamDecl, Spec
from .yamltree import (MAX_BYTES, LocList, LocMap, ScalarSrc, dump_yaml, load_yaml, locate, locate_key,
                       parse_yaml, text_loc, to_plain)

__all__ = [
    "load_spec", "spec_from_dict", "spec_from_text", "apply_override", "validate_tree",
    "schema", "schema_default", "eval_size", "LocMap", "LocList", "ScalarSrc", "locate",
    "locate_key", "load_yaml", "to_plain", "SPEC_VERSION", "DTYPES", "INIT_KINDS", "OPTIMIZERS",
    "LR_SCHEDULES",
]

SPEC_VERSION = 1
MAX_SIZE = 2 ** 40  # a size beyond this is a typo, and keeps size arithmetic cheap


# ---------------------------------------------------------------- entry points
def home_hint(path: str) -> str | None:
    """A hint for a path that starts with '~', which only a shell expands (unquoted): flowgrad reads
    it as a folder named '~' in the working directory."""
    if path.startswith("~"):
        return f"'~' is expanded by a shell only where it is not quoted: write {os.path.expanduser(path)}"
    return None


def load_spec(path: str, overrides=(), names: ArgNames = FLAGS) -> Spec:
    """Load, validate and parse the spec file at `path`, after applying `--set` overrides
    (`names`: whether messages show them as --set's or as the API's overrides=)."""
    path = str(path)
    if not path.strip():  # (it said "no such spec file: ", naming nothing)
        raise SpecError("the spec's path is empty", hint="give the path of a spec YAML file, e.g. models/mlp.yaml")
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise SpecError(f"spec is too large ({size:,} bytes; the limit is {MAX_BYTES:,})",
                            Loc(path, 1, 1), "a spec is a short YAML file; keep data in .npz files")
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SpecError(f"no such spec file: {path}", hint=home_hint(path) or
                        "check the path (a relative one starts at the working directory)") from None
    except IsADirectoryError:
        raise SpecError(f"{path} is a directory, not a spec file",
                        hint="name the .yaml file inside it, e.g. models/mlp.yaml") from None
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}",
                        hint="check that the file is readable (its permissions) and not locked by another program") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # (Windows Notepad's "Unicode")
        raise SpecError("the file is UTF-16 text, not UTF-8", Loc(path, 1, 1),
                        "save the spec as UTF-8 (in Notepad: Save As, Encoding: UTF-8)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # at the byte itself (it said column 1, and counted \n alone as a line end)
        before = data[:e.start].decode("utf-8")
        raise SpecError(f"the file is not UTF-8 text (byte 0x{data[e.start]:02x})",
                        text_loc(path, before + "?", len(before)),
                        "save the spec as UTF-8") from None
    return spec_from_text(text, path, overrides, names)


def spec_from_text(text: str, path: str = "<string>", overrides=(), names: ArgNames = FLAGS) -> Spec:
    """Parse a spec from YAML text; `path` names it in error messages."""
    tree = load_yaml(text, path)
    if tree is None:
        raise SpecError("the spec is empty", Loc(path, 1, 1), "start with 'flowgrad: 1'")
    if not isinstance(tree, LocMap):
        raise SpecError(f"a spec must be a YAML mapping of keys, not {_describe(tree)}",
                        getattr(tree, "loc", None) or Loc(path, 1, 1), "start with 'flowgrad: 1'")
    new_dims = [added for text_ in overrides if (added := apply_override(tree, text_, names))]
    _check_new_dims(tree, new_dims)
    _check_version(tree, path)
    _raise_all(validate_tree(tree, path))
    spec = _SpecBuilder(tree, path).build()
    spec.overrides, spec.override_names = tuple(overrides), names
    if not (path.startswith("<") and path.endswith(">")):  # (not "<string>" or "<dict>": a file's path)
        # where it is now, and what it said: the script may change directory, or rewrite the file,
        # before it trains the spec (see Spec.file and Spec.text)
        spec.file = os.path.abspath(path)
        if os.path.isfile(path):
            spec.text = text
    return spec


def spec_from_dict(d: dict, name: str = "<dict>", overrides=(), names: ArgNames = FLAGS) -> Spec:
    """Parse a spec given as Python data; errors point into its YAML dump."""
    try:
        text = dump_yaml(_plain_data(d), sort_keys=False, allow_unicode=True, width=float("inf"))
    except yaml.YAMLError as e:
        raise SpecError(f"cannot turn the dict into YAML: {e}",
                        hint="use only dicts, lists, strings, numbers, booleans and None") from None
    return spec_from_text(text, name, overrides, names)


_MAX_DICT_DEPTH = 100  # far beyond any spec; a dict that holds itself would recurse without end


def _plain_data(value, where: str = "", depth: int = 0):
    """A spec given as Python data, in the types safe_dump writes: a script's numbers are often
    NumPy's (dims from np.int64 arithmetic, a learning rate from np.logspace) and its mappings
    OrderedDicts or other Mappings, which safe_dump refused as 'cannot represent an object' (with
    the whole mapping's repr in the message). Anything else is named by its key path."""
    import numpy as np

    if depth > _MAX_DICT_DEPTH:
        raise SpecError(f"the dict is nested more than {_MAX_DICT_DEPTH} levels deep",
                        hint="a spec is a few levels of dicts and lists; does the dict hold itself?")
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, Mapping):
        plain = {}
        for k, v in value.items():  # keys too: names made by NumPy (np.str_) are refused as values are
            key = _plain_data(k, where, depth + 1)
            if isinstance(key, list):
                raise SpecError(f"cannot turn the dict into YAML: {where or 'it'} has a key {k!r}, a {type(k).__name__}",
                                hint="use only dicts, lists, strings, numbers, booleans and None")
            plain[key] = _plain_data(v, f"{where}.{key}" if where else str(key), depth + 1)
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain_data(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, (np.generic, np.ndarray)) and value.dtype.kind in "biufU":
        return _plain_data(value.tolist(), where, depth)  # (a scalar's item, an array's nested lists)
    for plain in (bool, int, float, str):  # their subclasses (an IntEnum, say), as the plain value
        if isinstance(value, plain):
            return plain(value)
    raise SpecError(f"cannot turn the dict into YAML: {where or 'it'} is a {type(value).__name__}",
                    hint="use only dicts, lists, strings, numbers, booleans and None")


# ---------------------------------------------------------------- overrides

def _index(key: str) -> int | None:
    """A list index in a --set path: ASCII digits only ('2' is; '²' passed str.isdigit() and
    ended in int()'s ValueError traceback)."""
    return int(key) if key.isascii() and key.isdigit() else None


def _refuse_index(path_text: str, here: str, node, key: str, loc, names: ArgNames) -> None:
    """An index past the end of a list said the list was 'not a mapping' and that --set could
    only set keys inside one, though an index within it is set."""
    if isinstance(node, LocList) and _index(key) is not None:
        raise SpecError(f"cannot set '{path_text}': {here} has {len(node)} item{'s' * (len(node) != 1)}, "
                        f"so there is no item {key}", loc,
                        f"items count from 0: give an index below {len(node)}, or set {here} itself, "
                        f"e.g. {names.given(overrides=f'{here}=[...]')}")
    if isinstance(node, LocList):
        raise SpecError(f"cannot set '{path_text}': {here} is a list, and {key!r} is not an index in it", loc,
                        f"set an item by its index, e.g. {names.given(overrides=f'{here}.0=VALUE')}, or the list "
                        f"itself, e.g. {names.given(overrides=f'{here}=[...]')}")


def _nested(keys: list[str], value: str) -> str:
    """The flow mapping that sets `value` at the dotted path `keys`: {a: {b: 4}}."""
    for key in reversed(keys):
        value = f"{{{key}: {value}}}"
    return value


def apply_override(tree: LocMap, text: str, names: ArgNames = FLAGS) -> tuple[str, SpecError] | None:
    """Apply one `--set key.path=value` to the tree. The value is YAML (safe). A dim the spec
    did not define comes back, with the error to raise if nothing in the spec uses it."""
    # the override as the caller gave it (--set dims.H=32, or the API's overrides=["dims.H=32"]),
    # which locations point into: `start` characters come before its text
    start = len(names("overrides")) + (1 if names.flags else 3)
    origin = f"{names('overrides')} {text}" if names.flags else f'{names("overrides")}=["{text}"]'
    if "=" not in text:
        raise SpecError(f"bad override '{text}': expected KEY=VALUE", Loc(origin, 1, 1),
                        f"e.g. {names.given(overrides='dims.H=32')}")
    path_text, value_text = text.split("=", 1)
    keys = [k.strip() for k in path_text.split(".")]
    if not all(keys):
        raise SpecError(f"bad override '{text}': empty key in '{path_text}'", Loc(origin, 1, start + 1),
                        "write a dotted path, e.g. train.optimizer.sgd.lr=0.01")
    value_col = start + len(path_text) + 1  # 0-based column of the value
    value, value_loc, src = parse_yaml(value_text, origin, col_offset=value_col)
    # columns of each key in the path, for locating the key that does not exist
    cols, col = [], start + len(path_text) - len(path_text.lstrip()) + 1
    for k in keys:
        cols.append(col)
        col += len(k) + 1

    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        here = ".".join(keys[:i]) or "the spec"
        if isinstance(node, LocMap):
            if key not in node:
                # a key the spec leaves out (train.data.options) is added whole, with what is under it
                whole = f"{'.'.join(keys[:i + 1])}={_nested(keys[i + 1:], value_text.strip())}"
                raise SpecError(f"cannot set '{path_text}': {here} has no key '{key}'", Loc(origin, 1, cols[i]),
                                did_you_mean(key, [k for k in node if isinstance(k, str)])
                                or _choices_hint(key, node.keys(), f"{here} is empty") + f"; or, to add {key}, "
                                f"set it whole: {names.given(overrides=shlex.quote(whole) if names.flags else whole)}")
            node = node[key]
        elif isinstance(node, LocList) and _index(key) is not None and _index(key) < len(node):
            node = node[int(key)]
        else:
            _refuse_index(path_text, here, node, key, Loc(origin, 1, cols[i]), names)
            raise SpecError(f"cannot set '{path_text}': {here} is {_describe(node)}, not a mapping",
                            Loc(origin, 1, cols[i]), _set_inside_hint(here, names))
    last = keys[-1]
    # (a block's graph too: blocks.F.graph.hs added an entry beside 'hs, h', refused as 'hs' already defined)
    if (keys[:-1] == ["graph"] or len(keys) == 4 and keys[0] == "blocks" and keys[2] == "graph") \
            and isinstance(node, LocMap) and last not in node:
        last = _graph_entry_key(node, last, ".".join(keys[:-1]), path_text, value_text, Loc(origin, 1, cols[-1]), names)
    if isinstance(node, LocMap):
        new_dim = None
        if keys[:-1] == ["dims"] and last not in node:
            new_dim = last, SpecError(f"cannot set '{path_text}': the spec has no dim '{last}'",
                                      Loc(origin, 1, cols[-1]),
                                      _choices_hint(last, node.keys(), "the spec has no dims"))
        node.set(last, value, Loc(origin, 1, cols[-1]), value_loc, src)
        return new_dim
    elif isinstance(node, LocList) and _index(last) is not None and _index(last) < len(node):
        node[int(last)] = value
        node.item_locs[int(last)] = value_loc
        node.item_srcs[int(last)] = src
    else:
        here = ".".join(keys[:-1])
        _refuse_index(path_text, here, node, last, Loc(origin, 1, cols[-1]), names)
        raise SpecError(f"cannot set '{path_text}': {here} is {_describe(node)}, not a mapping",
                        Loc(origin, 1, cols[-1]), _set_inside_hint(here, names))


def _graph_entry_key(graph: LocMap, key: str, where: str, path_text: str, value_text: str, loc: Loc,
                     names: ArgNames) -> str:
    """The graph's key that an override of `key` sets: an entry of several values written with
    other spacing (graph.hs,h for 'hs, h') is that entry. One that names some of an entry's values
    is refused, naming the entry (it added an entry beside it, refused as 'hs' already defined).
    `where`: the graph's path, graph or blocks.F.graph."""
    wanted = [t.strip() for t in key.split(",")]
    for existing in (k for k in graph if isinstance(k, str)):
        targets = [t.strip() for t in existing.split(",")]
        if targets == wanted:
            return existing
        if set(targets) & set(wanted):
            whole = f"{where}.{existing}={value_text.strip()}"
            raise SpecError(f"cannot set '{path_text}': '{sorted(set(targets) & set(wanted))[0]}' is computed by "
                            f"the graph entry '{existing}'", loc,
                            f"override that entry as the spec writes it, all its values: "
                            f"{names.given(overrides=shlex.quote(whole) if names.flags else whole)}")
    return key


def _set_inside_hint(here: str, names: ArgNames) -> str:
    return (f"{names('overrides')} can only set keys inside a mapping; set {here} itself, "
            f"e.g. {names.given(overrides=f'{here}=VALUE')}")


def _check_new_dims(tree: LocMap, new_dims: list[tuple[str, SpecError]]) -> None:
    """A dim that only --set defines is a misspelt one (H stays at its old size), unless the
    spec uses its name: a symbolic size of an input (T of [N, T], fixed by dims.T=16), or an
    expression another --set wrote."""
    if not new_dims:
        return
    used = _dim_words(tree)
    for name, err in new_dims:
        if name not in used:
            raise err


def _dim_words(tree: LocMap) -> set[str]:
    """The names a spec may mean as dims: in sizes (dims, and the shapes of inputs and of
    params, blocks' too) and the plain names of expressions (graph, blocks' graphs, outputs,
    loss, metrics). Not every word of the spec: a misspelt dim that was a word of a doc, an
    op's or a keyword's name or the dataset's (dims.digit, dims.relu) was taken as used."""
    words: set[str] = set()

    def size(value):
        if isinstance(value, str):
            words.update(re.findall(r"[^\W\d]\w*", value))

    def shapes(section):
        for decl in (section or {}).values():
            if isinstance(decl, dict) and isinstance(decl.get("shape"), list):
                for item in decl["shape"]:
                    size(item)

    def expressions(section):
        for text in (section or {}).values() if isinstance(section, dict) else [section]:
            if not isinstance(text, str):
                continue
            try:
                parsed = ast_parse(f"({text})")
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                size(text)  # (the build reports it, located; until then every word counts)
                continue
            calls = {id(n.func) for n in ast.walk(parsed) if isinstance(n, ast.Call)}
            words.update(n.id for n in ast.walk(parsed) if isinstance(n, ast.Name) and id(n) not in calls)

    for value in (tree.get("dims") or {}).values() if isinstance(tree.get("dims"), dict) else []:
        size(value)
    shapes(tree.get("inputs"))
    shapes(tree.get("params"))
    for section in ("graph", "outputs", "metrics"):
        expressions(tree.get(section))
    expressions(tree.get("loss"))
    blocks = tree.get("blocks")
    for block in blocks.values() if isinstance(blocks, dict) else []:
        if isinstance(block, dict):
            shapes(block.get("params"))
            expressions(block.get("graph"))
    return words


# ---------------------------------------------------------------- schema
@functools.lru_cache(maxsize=None)
def _schema_text() -> str:
    return (Path(__file__).parent / "schema.json").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _schema() -> dict:
    return json.loads(_schema_text())


def schema() -> dict:
    """The JSON Schema of spec files (a fresh copy)."""
    return json.loads(_schema_text())


# The vocabularies, as the schema defines them (one place to change them).
DTYPES = tuple(_schema()["$defs"]["dtype"]["enum"])
INIT_KINDS = tuple(_schema()["$defs"]["init"]["then"]["enum"])
OPTIMIZERS = tuple(_schema()["$defs"]["optimizer"]["properties"])

# Other libraries' names for the initialisers, which difflib finds nothing close to.
INIT_ALIASES = {
    "xavier": ("glorot_uniform", "glorot_normal"), "xavier_uniform": ("glorot_uniform",),
    "xavier_normal": ("glorot_normal",), "glorot": ("glorot_uniform", "glorot_normal"),
    "kaiming": ("he_normal", "he_uniform"), "he": ("he_normal", "he_uniform"),
    "kaiming_normal": ("he_normal",), "kaiming_uniform": ("he_uniform",), "msra": ("he_normal",),
    "gaussian": ("normal",), "random_normal": ("normal",), "random_uniform": ("uniform",),
    "zero": ("zeros",), "one": ("ones",),
    "pytorch": ("torch_uniform",), "torch": ("torch_uniform",), "torch_default": ("torch_uniform",),
}


def init_hint(word) -> str | None:
    """'did you mean ...?' for an unknown initialiser, aliases (xavier, kaiming) included; None if nothing is close."""
    if not isinstance(word, str):
        return None
    names = INIT_ALIASES.get(word.lower().replace("-", "_"))
    if names:
        what = "flowgrad's names" if len(names) > 1 else "flowgrad's name"
        return "did you mean " + " or ".join(repr(n) for n in names) + f"? ({what} for {word})"
    return did_you_mean(word, INIT_KINDS)
LR_SCHEDULES = tuple(k for k in _schema()["properties"]["train"]["properties"]["lr_schedule"]["properties"]
                     if k != "warmup")


@functools.lru_cache(maxsize=None)
def _validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_schema())


def schema_default(*path: str):
    """The schema's default for a key path, e.g. schema_default("train", "optimizer", "adam", "beta1").

    None when the schema declares no default. Runtime code should take its
    defaults from here so that docs/schema.md stays true.
    """
    s = _schema()
    node = s
    for key in path:
        node = _resolve(s, node)
        props = node.get("properties", {})
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif isinstance(node.get("else"), dict) and key in node["else"].get("properties", {}):
            node = node["else"]["properties"][key]
        else:
            raise KeyError(".".join(path))
    if "default" in node:
        return node["default"]
    return _resolve(s, node).get("default")


def _resolve(root: dict, node: dict) -> dict:
    """Follow a local $ref; the referring node's own keys win."""
    while "$ref" in node:
        target = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def validate_tree(tree: LocMap, file: str) -> list[SpecError]:
    """Every schema violation in the tree, each as a located SpecError."""
    errors, seen = [], set()
    for e in _validator().iter_errors(tree):
        if list(e.absolute_path)[:1] == ["flowgrad"]:
            continue  # checked first, with a better message
        for err in _schema_errors(e, tree, file):
            key = (err.loc, err.message)
            if key not in seen:
                seen.add(key)
                errors.append(err)
    located = {loc for loc, _ in seen}
    return errors + [e for e in _non_finite(tree, [], file) if e.loc not in located]


def _non_finite(node, path, file) -> list[SpecError]:
    """Every nan or inf written as a YAML number (.nan, .inf, 1e400): no setting of a spec takes one."""
    out = []
    if isinstance(node, LocMap):
        for key, value in node.items():
            if isinstance(value, float) and not math.isfinite(value):
                out.append(SpecError(f"{_where(path + [key])} must be a finite number, not {value}",
                                     node.value_locs.get(key) or node.loc, "write a finite number"))
            else:
                out += _non_finite(value, path + [key], file)
    elif isinstance(node, LocList):
        for i, value in enumerate(node):
            if isinstance(value, float) and not math.isfinite(value):
                out.append(SpecError(f"{_where(path + [i])} must be a finite number, not {value}",
                                     node.item_locs[i], "write a finite number"))
            else:
                out += _non_finite(value, path + [i], file)
    return out


def _where(path) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out or "the spec"


def _describe(value) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_short(value)!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _short(text: str, n: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _learning_rates(train) -> list[tuple[str | None, str, float]]:
    """[(objective or None, where its lr is written, lr)] of the run's optimizers, as training
    reads them: an objective without an optimizer takes train.optimizer, and a spec without one
    sgd's lr 0.01."""
    def lr_of(optimizer, where):
        if not isinstance(optimizer, dict) or len(optimizer) != 1:
            return None
        (kind, settings), = optimizer.items()
        if not isinstance(settings, dict) or not _is_number(settings.get("lr")):
            return None
        return f"{where}.{kind}.lr", settings["lr"]

    default = lr_of(train.get("optimizer"), "train.optimizer") if "optimizer" in train else \
        ("the default optimizer, sgd", 0.01)
    objectives = train.get("objectives")
    if not isinstance(objectives, dict) or not objectives:
        return [(None, *default)] if default else []
    out = []
    for name, cfg in objectives.items():
        if isinstance(cfg, dict) and "optimizer" in cfg:
            found = lr_of(cfg["optimizer"], f"train.objectives.{name}.optimizer")
        else:
            found = default
        if found:
            out.append((name, *found))
    return out


def _choices_hint(word: str, choices, none: str) -> str:
    """A close choice, else all of them, else `none` (what to do where nothing is taken)."""
    choices = [c for c in choices if isinstance(c, str)]
    hint = did_you_mean(word, choices)
    if hint is None:
        hint = "expected one of: " + ", ".join(sorted(choices)) if choices else none
    return hint


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "object": "a mapping", "array": "a list", "null": "empty"}


def _schema_errors(e, tree, file) -> list[SpecError]:
    path = list(e.absolute_path)
    where = _where(path)
    loc = locate(tree, path, file)
    value = e.instance
    hint = e.schema.get("x-hint") if isinstance(e.schema, dict) else None
    v = e.validator

    if v == "additionalProperties":
        allowed = list(e.schema.get("properties", {}))
        patterns = list(e.schema.get("patternProperties", {}))
        out = []
        for key in value:
            if key in allowed or any(re.search(p, key) for p in patterns):
                continue
            inside = f"in {where}" if path else "at the top level"
            name, colon, rest = key.partition(":")
            # {std:0.1}: YAML reads a colon with no space after it as part of the key
            unspaced = f"write a space after the colon: {{{name}: {rest}}}" if colon and name in allowed and rest else None
            out.append(SpecError(f"unknown key '{key}' {inside}", locate_key(tree, path + [key], file), unspaced or
                                 e.schema.get("x-key-hints", {}).get(key)  # (another library's name for a key)
                                 or (init_hint(key) if set(allowed) >= set(INIT_KINDS) else None)
                                 or _choices_hint(key, allowed, f"{where or 'it'} takes no keys: remove '{key}'")))
        return out
    if v == "required":
        # (a key written {lr:0.5} is missing as lr: its unknown-key error says to add the space)
        missing = [k for k in e.validator_value if k not in value
                   and not any(isinstance(w, str) and w.startswith(f"{k}:") for w in value)]
        inside = f"in {where}" if path else "at the top level"
        return [SpecError(f"missing required key '{k}' {inside}", loc,
                          _required_hint(path, k)) for k in missing]
    if v == "type":
        types = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        want = " or ".join(_TYPE_WORDS.get(t, t) for t in types)
        if isinstance(value, (list, dict)) and hint is None:
            hint = "YAML reads [...] as a list and {...} as a mapping; quote the value if it is text"
        return [SpecError(f"{where} must be {want}, not {_describe(value)}", loc,
                          hint or _join(f"write {want}", _example(e.schema, path)))]
    if v == "enum":
        options = ", ".join(str(o) for o in e.validator_value)
        if isinstance(value, str):
            close = init_hint(value) if tuple(e.validator_value) == INIT_KINDS else did_you_mean(value, e.validator_value)
            hint = close or f"expected one of: {options}"
        return [SpecError(f"{where} must be one of {options}, not {_describe(value)}", loc,
                          hint or f"expected one of: {options}")]
    if v == "const":
        return [SpecError(f"{where} must be {e.validator_value!r}, not {_describe(value)}", loc,
                          hint or f"write {_key(path)}: {_flow(e.validator_value)}")]
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[v]
        return [SpecError(f"{where} must be {sign} {e.validator_value}, not {value}", loc,
                          hint or _join(_range_words(e.schema), _example(e.schema, path)))]
    if v == "minLength":
        return [SpecError(f"{where} must not be an empty string", loc,
                          hint or _example(e.schema, path) or f"write a value, or leave {_key(path)} out")]
    if v == "pattern":
        return [SpecError(f"{where} {_describe(value)} has characters that are not allowed", loc,
                          hint or f"it must match {e.validator_value}")]
    if v == "minItems":
        return [SpecError(f"{where} needs at least {e.validator_value} item(s)", loc,
                          hint or _join(_join(f"list at least {e.validator_value} item(s)", _example(e.schema, path, list)),
                                        _leave_out(e.schema, path)))]
    if v == "minProperties":
        choices = list(e.schema.get("properties", {}))
        if choices and e.schema.get("maxProperties") == 1:
            return [SpecError(f"{where} needs one of: {', '.join(choices)}", loc,
                              hint or _join(f"write one of them", _example(e.schema, path)))]
        return [SpecError(f"{where} must not be empty", loc,
                          hint or _join("give it at least one entry", _example(e.schema, path)))]
    if v == "maxProperties":
        keys = ", ".join(f"'{k}'" for k in value)
        return [SpecError(f"{where} takes exactly one key, got {keys}", loc,
                          hint or _join("keep one of them", _example(e.schema, path)))]
    if v in ("oneOf", "anyOf"):
        branches = e.validator_value
        if all(set(b) == {"required"} for b in branches):
            names = " or ".join(f"'{r}'" for b in branches for r in b["required"])
            if not isinstance(value, dict):  # (required passes anything else: its type error says what is wrong,
                return []  # where data: train.npz was also told it 'takes only one of 'dataset' or 'path'')
            if e.context:
                return [SpecError(f"{where} needs {names}", loc, hint or f"add {names}")]
            return [SpecError(f"{where} takes only one of {names}", loc,
                              hint or "keep one of them and remove the other")]
        from jsonschema.exceptions import best_match

        # A branch that took the value's type and failed inside it says what is wrong
        # (compute: float8), where the others only say that the type does not fit. A mapping's
        # unknown or missing key fails at the mapping itself, only in a branch that takes mappings
        # ({compute: float16, growth: 2} was told that mixed_precision is not a mapping).
        inside = [c for c in e.context if len(c.relative_path) > 0 or c.validator in ("additionalProperties", "required")]
        best = best_match(inside or e.context)
        if best is not None:
            return _schema_errors(best, tree, file)
    return [SpecError(f"{where}: {e.message}", loc,
                      hint or _example(e.schema, path) or "see docs/schema.md for what this key takes")]


def _key(path) -> str:
    """The last key of a schema path (the name the user wrote), or 'it' for a list item."""
    return next((str(p) for p in reversed(path) if isinstance(p, str)), "it")


def _flow(value) -> str:
    """A value as the user would write it in a spec (YAML flow style)."""
    text = dump_yaml(value, default_flow_style=True, allow_unicode=True, width=float("inf")).strip()
    return text[:-3].strip() if text.endswith("\n...") or text.endswith("...") else text


def _example(sub, path, kind=None) -> str | None:
    """'e.g. key: value' from the schema's examples (or default) for the key at `path`;
    `kind` (e.g. list) picks an example of that type when there is one."""
    if not isinstance(sub, dict) or not path or not isinstance(path[-1], str):
        return None
    if sub.get("examples"):
        fitting = [x for x in sub["examples"] if kind is None or isinstance(x, kind)]
        return f"e.g. {path[-1]}: {_flow((fitting or sub['examples'])[0])}"
    if "default" in sub:
        return f"e.g. {path[-1]}: {_flow(sub['default'])} (the default)"
    return None


def _leave_out(sub, path) -> str | None:
    if isinstance(sub, dict) and "default" in sub and path and isinstance(path[-1], str):
        return f"or leave {path[-1]} out (default: {_flow(sub['default'])})"
    return None


def _range_words(sub) -> str:
    """'use a number above 0 and below 1' from a schema's bounds."""
    if not isinstance(sub, dict):
        return "use a number in the allowed range"
    what = "a whole number" if sub.get("type") == "integer" else "a number"
    words = [f"{w} {sub[k]}" for k, w in (("minimum", "of at least"), ("exclusiveMinimum", "above"),
                                          ("maximum", "of at most"), ("exclusiveMaximum", "below")) if k in sub]
    return f"use {what} " + " and ".join(words) if words else "use a number in the allowed range"


def _join(first: str, second: str | None) -> str:
    return f"{first}, {second}" if second else first


def _required_hint(path, key) -> str:
    examples = {
        "name": "e.g. name: mlp",
        "inputs": "e.g. inputs: {x: {shape: [N, D]}}",
        "shape": "e.g. shape: [N, D]",
        "init": "e.g. init: glorot_uniform (or zeros, normal, ...)",
        "lr": "e.g. lr: 0.01",
        "graph": "e.g. graph: {h2: tanh(x_t @ W + h @ U)}",
        "in": "e.g. in: [x_t, h]",
        "out": "e.g. out: [h2]",
    }
    if key == "shape" and "params" in path:  # (a block's params too)
        # a parameter's sizes are fixed when it is created: the input example's N (a size known
        # only at run time) would be refused next ("the size N is only known at run time")
        return "e.g. shape: [D, H], with sizes from dims: or numbers"
    return examples.get(key) or f"add {key}: under {_where(path)} (docs/schema.md says what it takes)"


def _check_version(tree: LocMap, file: str) -> None:
    if "flowgrad" not in tree:
        raise SpecError("missing required key 'flowgrad' (the spec language version)",
                        tree.loc or Loc(file, 1, 1), "start the spec with 'flowgrad: 1'")
    version = tree["flowgrad"]
    if type(version) is not int or version != SPEC_VERSION:
        raise SpecError(f"unsupported spec version {version!r}", tree.value_locs["flowgrad"],
                        f"this flowgrad reads spec version {SPEC_VERSION}: write 'flowgrad: {SPEC_VERSION}'")


def _raise_all(errors: list[FlowgradError]) -> None:
    if not errors:
        return
    errors = sorted(errors, key=lambda e: (e.loc.file, e.loc.line, e.loc.col) if e.loc else ("", 0, 0))
    if len(errors) == 1:
        raise errors[0]
    raise MultiSpecError(errors)


# ---------------------------------------------------------------- sizes
def eval_size(value, dims: dict[str, int], loc: Loc, src: ScalarSrc | None = None,
              symbolic: bool = False, what: str = "a shape", later=(), defining: str | None = None) -> int | str:
    """A size: an int, or a string of integer arithmetic over `dims`.

    With symbolic=True a bare name that is not a dim is returned as is (a
    dim that stays unknown until run time, like the batch size N). `what`
    says where the size is ("dim 'G'", "the shape of parameter 'W'");
    `later` names dims defined further down, for a better hint.
    """
    if isinstance(value, float) and value.is_integer():
        if abs(value) > MAX_SIZE:
            raise SpecError(f"size {value:g} in {what} is too large", loc, _SIZE_HINT)
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SpecError(f"sizes in {what} must be integers or expressions over dims, not {_describe(value)}",
                        loc, _SIZE_HINT)
    if isinstance(value, int):
        if abs(value) > MAX_SIZE:
            raise SpecError(f"size {value} in {what} is too large", loc, _SIZE_HINT)
        return _positive(value, loc, what, str(value))
    at = src.loc_at if src is not None else (lambda i: Loc(loc.file, loc.line, loc.col + i))
    text = value.strip()
    lead = len(value) - len(value.lstrip())
    if symbolic and text.isidentifier() and text not in dims:
        _check_name(text, at(lead), "symbolic size")
        return text
    try:
        tree = ast_parse(text)
    except SyntaxError as e:
        col = max((e.offset or 1) - 1, 0)
        raise SpecError(f"invalid size '{text}' in {what}: {e.msg}", at(lead + col), _SIZE_HINT) from None
    except (ValueError, RecursionError, MemoryError):
        raise SpecError(f"invalid size '{text}' in {what}", at(lead), _SIZE_HINT) from None

    def node_loc(node) -> Loc:
        return at(lead + node.col_offset)

    def ev(node) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            result = node.value
        elif isinstance(node, ast.Name):
            if node.id not in dims:
                raise SpecError(f"unknown dim '{node.id}' in {what}", node_loc(node),
                                _unknown_dim_hint(node.id, dims, symbolic, later, defining))
            result = dims[node.id]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            result = -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Div):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                result = a + b
            elif isinstance(node.op, ast.Sub):
                result = a - b
            elif isinstance(node.op, ast.Mult):
                result = a * b
            elif b == 0:
                raise SpecError(f"division by zero in size '{text}' in {what}", node_loc(node),
                                "check the dims it divides by: each must be 1 or more")
            elif isinstance(node.op, ast.FloorDiv):
                result = a // b
            elif a % b:
                raise SpecError(f"size '{text}' in {what} is not a whole number ({a} / {b})",
                                node_loc(node), "use // to round down")
            else:
                result = a // b
        else:
            raise SpecError(f"size '{text}' in {what} may only use integers, dim names, "
                            "+ - * // / and parentheses", node_loc(node), _SIZE_HINT)
        if abs(result) > MAX_SIZE:
            raise SpecError(f"size '{text}' in {what} is too large", node_loc(node),
                            f"a size must stay under 2**40 ({MAX_SIZE:,}); check the dims it is made of")
        return result

    return _positive(ev(tree.body), loc, what, text)


_SIZE_HINT = "a size is an integer or an expression over dims, e.g. 4*H or H//2"


def _unknown_dim_hint(name, dims, symbolic, later=(), defining=None) -> str:
    if name == defining:  # (--set dims.H=H*2 was told to use numbers or the dims D)
        return f"a dim cannot be defined by itself: give '{name}' a number, or an expression of the dims above it"
    if name in later:
        return f"'{name}' is defined further down; a dim may only use the dims above it"
    hint = did_you_mean(name, list(dims) + list(later))
    if hint:
        return hint
    if symbolic:
        return "a symbolic size such as N must stand alone; arithmetic needs dims"
    if dims:
        return f"sizes here must be concrete: use numbers or the dims {', '.join(dims)}"
    return "define it under dims, e.g. dims: {H: 256}"


def _positive(value: int, loc: Loc, what: str, text: str) -> int:
    if value < 1:
        shown = f"'{text}'" if text == str(value) else f"'{text}' (= {value})"
        raise SpecError(f"size {shown} in {what} is not a positive integer", loc, _SIZE_HINT)
    return value


# ---------------------------------------------------------------- names
_KIND_WORDS = {"dim": "a dim", "size": "an input's symbolic size", "input": "an input", "param": "a parameter", "block": "a block",
               "graph": "a graph value", "loss": "the loss", "block input": "a block input"}


def _check_name(name: str, loc: Loc, what: str) -> None:
    if not name.isidentifier():
        raise SpecError(f"{what} name '{name}' is not a valid name", loc,
                        "use letters, digits and '_', not starting with a digit")
    if unicodedata.normalize("NFKC", name) != name:
        # Python's parser reads identifiers in NFKC form: expressions would name another value
        marks = [c for c in name if unicodedata.combining(c)]
        if marks and unicodedata.normalize("NFC", name) == unicodedata.normalize("NFKC", name):
            # (a decomposed 'é', e + U+0301, as macOS file names and some editors write it: the two forms
            # look alike, and "would read as 'é'" named no difference)
            mark = marks[0]
            raise SpecError(f"{what} name '{name}' is written with the combining character U+{ord(mark):04X} "
                            f"({unicodedata.name(mark, 'a combining mark')}), which expressions join to the letter "
                            "before it: they would name another value", loc,
                            "type the accented letter as one character (save the file with composed, NFC, text)")
        raise SpecError(f"{what} name '{name}' would read as '{unicodedata.normalize('NFKC', name)}' in expressions",
                        loc, "write it in its plain (NFKC) form")
    if keyword.iskeyword(name):
        raise SpecError(f"{what} name '{name}' is a Python keyword", loc,
                        "expressions could not refer to it; choose another name")
    if name.startswith("__") and name.endswith("__"):
        raise SpecError(f"{what} name '{name}' is not allowed", loc,
                        "names that start and end with '__' are reserved")
    if name in ("true", "false"):
        raise SpecError(f"{what} name '{name}' is not allowed", loc,
                        f"expressions read {name} as a boolean (layer_norm={name}); choose another name")


class _Names:
    """One namespace: reports a name defined twice at its second definition."""

    def __init__(self, errors: list):
        self.errors = errors
        self.defined: dict[str, tuple[str, Loc]] = {}

    def add(self, name: str, kind: str, loc: Loc) -> None:
        if name in self.defined:
            other_kind, other_loc = self.defined[name]
            hint = "every name (dims, inputs, params, blocks, graph values) must be unique; rename one"
            if other_kind == "size":
                hint = (f"{name} is a size an input's shape leaves to run time (zeros({name}, ...) reads it); "
                        f"rename this one, or declare {name} under dims: to fix the size")
            self.errors.append(SpecError(
                f"'{name}' is already defined as {_KIND_WORDS[other_kind]} at {other_loc}", loc, hint))
        else:
            self.defined[name] = (kind, loc)


# ---------------------------------------------------------------- the spec
class _SpecBuilder:
    def __init__(self, tree: LocMap, file: str):
        self.tree = tree
        self.file = file
        self.errors: list[FlowgradError] = []
        self.dims: dict[str, int] = {}
        self.dim_locs: dict[str, Loc] = {}
        self.graph_targets: list[tuple[str, Loc]] = []  # top-level graph, even entries that failed

    def attempt(self, fn, *args):
        """Run one independent step; keep its error and go on to report others."""
        try:
            return fn(*args)
        except MultiError as e:
            self.errors.extend(e.errors)
        except SpecError as e:
            self.errors.append(e)
        return None

    def build(self) -> Spec:
        t = self.tree
        # Sizes come first and stop at the first error: later errors would
        # only repeat it as unknown dims.
        self.build_dims(t.get("dims") or LocMap())

        inputs = {}
        for name, decl in (t.get("inputs") or {}).items():
            inputs[name] = self.attempt(self.build_input, t["inputs"], name, decl)
        params = self.build_params(t.get("params") or LocMap(), "params")
        blocks = {}
        for name, b in (t.get("blocks") or {}).items():
            blocks[name] = self.attempt(self.build_block, t["blocks"], name, b)
        graph = self.build_graph(t.get("graph") or LocMap(), self.graph_targets)
        outputs = self.build_named_exprs(t.get("outputs") or LocMap(), "output")
        metrics = self.build_named_exprs(t.get("metrics") or LocMap(), "metric")
        loss = None
        if "loss" in t:
            loss_loc = t.key_locs["loss"]
            expr = self.attempt(self.expr, t, "loss")
            loss = Assign(["loss"], expr, loss_loc, [loss_loc]) if expr is not None else None
        self.check_names(t)
        train = to_plain(t.get("train") or {})
        self.attempt(self.check_train, t.get("train") or LocMap())
        _raise_all(self.errors)
        return Spec(
            path=self.file, version=t["flowgrad"], name=t["name"], doc=t.get("doc") or "",
            dims=dict(self.dims), inputs=inputs, params=params, graph=graph, outputs=outputs,
            loss=loss, metrics=metrics, blocks=blocks, train=train, raw=t, dim_locs=dict(self.dim_locs),
            generate=to_plain(t.get("generate") or {}))

    # -- dims, inputs, params
    def build_dims(self, dims: LocMap) -> None:
        names = list(dims)
        for i, (name, value) in enumerate(dims.items()):
            loc = dims.key_locs[name]
            _check_name(name, loc, "dim")
            self.dims[name] = eval_size(value, self.dims, dims.value_locs[name], dims.value_srcs.get(name),
                                        what=f"dim '{name}'", later=names[i + 1:], defining=name)
            self.dim_locs[name] = loc

    def shape(self, shape: LocList, symbolic: bool, what: str) -> list:
        return [eval_size(item, self.dims, shape.item_locs[i], shape.item_srcs[i], symbolic=symbolic, what=what)
                for i, item in enumerate(shape)]

    def build_input(self, parent: LocMap, name: str, decl: LocMap) -> InputDecl:
        loc = parent.key_locs[name]
        _check_name(name, loc, "input")
        shape = self.shape(decl["shape"], symbolic=True, what=f"the shape of input '{name}'")
        return InputDecl(name, shape, decl.get("dtype", "float32"), loc, decl.get("doc", ""))

    def build_params(self, params: LocMap, where: str) -> dict[str, ParamDecl]:
        out = {}
        for name, decl in params.items():
            out[name] = self.attempt(self.build_param, params, name, decl, where)
        return out

    def build_param(self, parent: LocMap, name: str, decl: LocMap, where: str) -> ParamDecl:
        loc = parent.key_locs[name]
        _check_name(name, loc, "parameter")
        shape = self.shape(decl["shape"], symbolic=False, what=f"the shape of parameter '{name}'")
        init = self.build_init(decl, f"{where}.{name}.init")
        if init.kind == "orthogonal" and len(shape) < 2:  # caught here, not when training starts
            raise SpecError(f"{where}.{name}.init: orthogonal needs a parameter of rank 2 or more, "
                            f"got shape {shape}", decl.value_locs["init"],
                            "use it for weight matrices and kernels; a bias or scale takes zeros, ones or normal")
        if init.kind == "torch_uniform" and len(shape) < 2 and not init.args.get("fan_in"):
            raise SpecError(f"{where}.{name}.init: torch_uniform needs a parameter of rank 2 or more, or a fan_in, "
                            f"got shape {shape}", decl.value_locs["init"],
                            "a bias takes its weight's fan_in: init: {torch_uniform: {fan_in: 128}} "
                            "(in_features, or in_channels / groups * kh * kw)")
        return ParamDecl(name, shape, init, loc, trainable=decl.get("trainable", True),
                         dtype=decl.get("dtype", "float32"), seed=decl.get("seed"), doc=decl.get("doc", ""))

    def build_init(self, decl: LocMap, where: str) -> InitSpec:
        init, loc = decl["init"], decl.value_locs["init"]
        if isinstance(init, str):
            kind, args = init, {}
            if kind == "constant":
                raise SpecError(f"{where} 'constant' needs a value", loc,
                                "write init: {constant: {value: 0.5}}")
        else:
            kind = next(iter(init))
            args = dict(to_plain(init[kind]) or {})
            if kind == "uniform" and args.get("low", -0.05) >= args.get("high", 0.05):
                raise SpecError(f"{where}: uniform needs low < high, got low={args.get('low', -0.05)}, "
                                f"high={args.get('high', 0.05)}", init.value_locs[kind],
                                "write e.g. init: {uniform: {low: -0.05, high: 0.05}} (those are the defaults)")
        # Fill in the documented defaults, so the compiler needs no copy of them.
        for key in ("mean", "std", "low", "high", "gain"):
            default = self.init_default(kind, key)
            if default is not None:
                args.setdefault(key, default)
        if decl.get("seed") is not None:
            args["seed"] = decl["seed"]  # also ParamDecl.seed; the compiler reads it here
        return InitSpec(kind, args, loc)

    @staticmethod
    def init_default(kind: str, key: str):
        try:
            return schema_default("params", "p", "init", kind, key)
        except KeyError:
            return None

    # -- blocks
    def build_block(self, parent: LocMap, name: str, b: LocMap) -> Block:
        loc = parent.key_locs[name]
        _check_name(name, loc, "block")
        local = _Names(self.errors)
        for size, kind, size_loc in self.symbolic_sizes(self.tree):  # (zeros(N, H) in the block reads the size)
            local.add(size, kind, size_loc)
        inputs = list(b["in"])
        for i, arg in enumerate(inputs):
            self.attempt(_check_name, arg, b["in"].item_locs[i], "block input")
            local.add(arg, "block input", b["in"].item_locs[i])
        params = self.build_params(b.get("params") or LocMap(), f"blocks.{name}.params")
        for pname in b.get("params") or {}:
            local.add(pname, "param", b["params"].key_locs[pname])
        targets = []
        graph = self.build_graph(b["graph"], targets)
        for target, tloc in targets:
            local.add(target, "graph", tloc)
        for i, out in enumerate(b["out"]):
            self.attempt(_check_name, out, b["out"].item_locs[i], "block output")
        return Block(name, inputs, {k: v for k, v in params.items() if v is not None}, graph,
                     list(b["out"]), loc, list(b["out"].item_locs))

    # -- expressions
    def expr(self, parent: LocMap, key: str) -> Expr:
        value, loc = parent[key], parent.value_locs[key]
        if not isinstance(value, str):  # a number or boolean written directly
            return Const(loc, value)
        src = parent.value_srcs.get(key)
        where = src.loc_at if src is not None else None
        return parse_expr(value, loc, quoted=bool(src and src.quoted), where=where)

    def build_graph(self, graph: LocMap, seen: list) -> list[Assign]:
        """The entries of a graph; `seen` collects (target, Loc), also of entries that failed."""
        out = []
        for key in graph:
            targets = self.attempt(self.targets, graph, key)
            expr = self.attempt(self.expr, graph, key)
            if targets is not None:
                seen.extend(zip(*targets))
                if expr is not None:
                    out.append(Assign(targets[0], expr, graph.key_locs[key], targets[1]))
        return out

    def targets(self, graph: LocMap, key: str) -> tuple[list[str], list[Loc]]:
        """The names in a key such as "i, f, o, g", each with its Loc."""
        src = graph.key_srcs.get(key)
        key_loc = graph.key_locs[key]
        at = src.loc_at if src is not None else (lambda i: Loc(key_loc.file, key_loc.line, key_loc.col + i))
        names, locs, start = [], [], 0
        for part in key.split(","):
            name = part.strip()
            loc = at(start + len(part) - len(part.lstrip()))
            if not name:
                raise SpecError(f"empty target in '{key}'", loc, "write targets as 'a' or 'a, b'")
            _check_name(name, loc, "target")
            if name in names:
                raise SpecError(f"target '{name}' appears twice in '{key}'", loc,
                                "give each value its own name, e.g. 'a, b'")
            names.append(name)
            locs.append(loc)
            start += len(part) + 1
        return names, locs

    def build_named_exprs(self, section: LocMap, what: str) -> list[Assign]:
        out = []
        for name in section:
            loc = section.key_locs[name]
            self.attempt(_check_name, name, loc, what)
            expr = self.attempt(self.expr, section, name)
            if expr is not None:
                out.append(Assign([name], expr, loc, [loc]))
        return out

    # -- cross checks
    def check_names(self, t: LocMap) -> None:
        defined = []
        for section, kind in (("dims", "dim"), ("inputs", "input"), ("params", "param"), ("blocks", "block")):
            part = t.get(section) or LocMap()
            defined += [(name, kind, part.key_locs[name]) for name in part]
        defined += [(name, "graph", loc) for name, loc in self.graph_targets]
        defined += self.symbolic_sizes(t)
        if "loss" in t:
            defined.append(("loss", "loss", t.key_locs["loss"]))
        # the second definition in file order is the one reported
        defined.sort(key=lambda d: (d[2].file != self.file, d[2].line, d[2].col))
        names = _Names(self.errors)
        for name, kind, loc in defined:
            names.add(name, kind, loc)

    def symbolic_sizes(self, t: LocMap) -> list:
        """(name, "size", Loc) of each symbolic size of the inputs' shapes (N of [N, D]), where it is
        first written. It is a name too: a graph entry, parameter or block named N was taken by
        expressions (N * x) while zeros(N, H) took the batch size, or the entry as its size."""
        out, seen = [], set()
        for decl in (t.get("inputs") or {}).values():
            shape = decl.get("shape") if isinstance(decl, LocMap) else None
            for i, item in enumerate(shape if isinstance(shape, LocList) else []):
                name = item.strip() if isinstance(item, str) else None
                if name and name.isidentifier() and name not in self.dims and name not in seen:
                    seen.add(name)
                    out.append((name, "size", shape.item_locs[i]))
        return out

    def check_lr_floor(self, train: LocMap, schedule: LocMap) -> None:
        """A cosine's min_lr is where it anneals each objective's lr to: above an lr, the
        'annealing' would raise that learning rate over the run."""
        cosine = schedule.get("cosine")
        if not isinstance(cosine, LocMap) or not _is_number(cosine.get("min_lr")):
            return
        min_lr = cosine["min_lr"]
        lrs = _learning_rates(train)
        above = [(name, where, lr) for name, where, lr in lrs if min_lr > lr]
        if not above:
            return
        name, where, lr = min(above, key=lambda a: a[2])
        lowest = min(lr for _, _, lr in lrs)
        example = f"min_lr: {lowest / 100:g}" if lowest > 0 else "min_lr: 0"
        if len(lrs) > 1:
            message = (f"train.lr_schedule.cosine.min_lr {min_lr:g} is above objective {name}'s lr {lr:g} "
                       f"({where}): the cosine would raise that learning rate, not lower it")
            hint = (f"min_lr applies to every objective's lr: write one at or below the lowest, {lowest:g}, "
                    f"e.g. {example}, or 0 to anneal to zero")
        else:
            message = (f"train.lr_schedule.cosine.min_lr {min_lr:g} is above the lr {lr:g} it anneals from "
                       f"({where}): the cosine would raise the learning rate, not lower it")
            hint = f"write a min_lr at or below {lr:g}, e.g. {example}, or 0 to anneal to zero"
        raise SpecError(message, cosine.value_locs["min_lr"], hint)

    def check_train(self, train: LocMap) -> None:
        schedule = train.get("lr_schedule")
        if isinstance(schedule, LocMap):
            kinds = [k for k in schedule if k in LR_SCHEDULES]
            if len(kinds) > 1:
                raise SpecError(f"train.lr_schedule takes one schedule, got {', '.join(kinds)}",
                                schedule.key_locs[kinds[1]], "keep one of them (warmup may go with any)")
            self.attempt(self.check_lr_floor, train, schedule)
            step = schedule.get("step")
            if isinstance(step, LocMap) and ("every" in step) == ("every_epochs" in step):
                both = "every" in step
                raise SpecError("train.lr_schedule.step takes " + ("one of every and every_epochs, got both" if both
                                                                   else "every (optimizer steps) or every_epochs"),
                                step.key_locs["every_epochs"] if both else schedule.key_locs["step"],
                                "every: 1000 decays every 1000 updates, every_epochs: 10 every 10 epochs "
                                "(PyTorch's StepLR stepped per epoch)")
            plateau = schedule.get("plateau")
            metric = plateau.get("metric") if isinstance(plateau, LocMap) else None
            if isinstance(metric, str) and metric and not metric.startswith("valid_"):
                # as torch's scheduler.step(val_loss) after each epoch's validation
                raise SpecError(f"train.lr_schedule.plateau.metric {metric!r} is not a validation value: a "
                                "plateau schedule watches the epoch's validation", plateau.value_locs["metric"],
                                "write valid_loss, or valid_<metric> for a validation metric (valid_accuracy)")
        objectives = train.get("objectives") or {}
        order = train.get("schedule")
        if order is not None and not objectives:
            raise SpecError("train.schedule lists objectives, but train.objectives is missing",
                            train.key_locs["schedule"], "define them under train.objectives")
        for i, name in enumerate(order or []):
            if name not in objectives:
                raise SpecError(f"unknown objective '{name}' in train.schedule", order.item_locs[i],
                                _choices_hint(name, objectives, "name objectives of train.objectives"))
