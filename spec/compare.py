"""What a spec defines as a model, apart from how it trains it: its dims, inputs, parameters,
blocks, graph, loss and objectives' losses. A resumed run goes on with the model its checkpoint
was trained as; an edit to any of these (an activation, a dropout rate, a new graph entry)
would continue a different model from the middle of the old one's training, even where every
parameter keeps its shape. Outputs, metrics, generation and the train section's settings
(epochs, lr, clip_norm, ...) leave the model as it was, and resume's own checks cover the
train settings that matter (optimizer, batch size, data, seed)."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import Loc
from .expr import unparse
from .model import Block, InputDecl, ParamDecl, Spec


@dataclass(frozen=True)
class ModelChange:
    """One part of the model that differs: `what` names it ("graph entry 'h1'"); `now` and
    `then` are its text in the new spec and in the run's (None: it is not there); `loc` is
    where the new spec has it (or the section that lost it)."""

    what: str
    now: str | None
    then: str | None
    loc: Loc

    def describe(self, run: str) -> str:
        """The change in words, `run` naming the run that trained the other spec (a long text
        shortened to the part that differs, with '...' for what the two have in common)."""
        if self.then is None:
            return f"{self.what} ({_shorten(self.now)}) is new: {run} trained without it"
        if self.now is None:
            return f"{self.what} ({_shorten(self.then)}) that {run} trained is gone"
        now, then = _difference(self.now, self.then)
        return f"{self.what} is now {now}; {run} trained {then}"


LONG = 60  # characters of an entry's text shown whole in a message
CONTEXT = 16  # characters shown either side of what differs in a longer one


def _shorten(text: str) -> str:
    return text if len(text) <= LONG else text[:LONG - 3].rstrip() + "..."


def _difference(now: str, then: str) -> tuple[str, str]:
    """`now` and `then`, each cut down to what differs and some context where either is long."""
    if max(len(now), len(then)) <= LONG:
        return now, then
    head = 0
    while head < min(len(now), len(then)) and now[head] == then[head]:
        head += 1
    tail = 0
    while tail < min(len(now), len(then)) - head and now[-1 - tail] == then[-1 - tail]:
        tail += 1
    start = max(0, head - CONTEXT)
    while 0 < start < head and now[start - 1] not in " ,([":  # (from the start of a word)
        start -= 1

    def cut(text: str) -> str:
        end = min(len(text), len(text) - tail + CONTEXT)
        middle = text[start:end]
        if len(middle) > 2 * LONG:  # (what differs is long itself)
            middle, end = middle[:2 * LONG - 3].rstrip(), len(text) + 1
        return ("..." if start else "") + middle + ("..." if end != len(text) else "")

    return cut(now), cut(then)


def model_change(then: Spec, now: Spec) -> ModelChange | None:
    """The first part of `now`'s model that differs from `then`'s, or None when the two specs
    define one model."""
    then_parts, now_parts = _parts(then), _parts(now)
    for key, part in now_parts.items():
        before = then_parts.get(key)
        if before is None or before.text != part.text:
            return ModelChange(key[1], part.text, before and before.text, now.locate(*part.where(before)))
    for key, part in then_parts.items():
        if key not in now_parts:  # (located at what held it: the section, or the block)
            return ModelChange(key[1], None, part.text, now.locate(*part.path[:-1]))
    return None


@dataclass(frozen=True)
class _Part:
    """A part of the model: its text, its path in the spec's tree, and the (text, path) of each
    of its pieces (a parameter's shape, init, trainable, ...) to point at the one that differs."""

    text: str
    path: tuple
    pieces: tuple = ()

    def where(self, before: "_Part | None") -> tuple:
        """The path of the value that differs from `before`'s: a --set's where one gave it, and
        a parameter's init rather than its shape."""
        for (text, path), (was, _) in zip(self.pieces, before.pieces if before else ()):
            if text != was:
                return path
        return self.path


def _parts(spec: Spec) -> dict[tuple[str, str], _Part]:
    """(section, the part's name in messages) -> the part."""
    parts = {}
    for name, value in spec.dims.items():
        parts["dims", f"dim {name}"] = _Part(str(value), ("dims", name))
    for name, decl in spec.inputs.items():
        path = ("inputs", name)
        parts["inputs", f"input '{name}'"] = _Part(_input_text(decl), path, (
            (_shape(decl.shape), path + ("shape",)), (decl.dtype, path + ("dtype",))))
    for name, decl in spec.params.items():
        parts["params", f"parameter {name}"] = _param(decl, ("params", name))
    graph = spec.raw.get("graph") if isinstance(spec.raw, dict) else None
    for entry in spec.graph:
        parts["graph", _entry_name(entry)] = _Part(unparse(entry.expr), ("graph", _key_of(graph, entry)))
    blocks = spec.raw.get("blocks") if isinstance(spec.raw, dict) else None
    for name, block in spec.blocks.items():
        path = ("blocks", name)
        parts["blocks", f"block {name}"] = _Part(_block_text(block), path, (
            (block.inputs, path + ("in",)), (block.outputs, path + ("out",))))
        for param, decl in block.params.items():
            parts["blocks", f"block {name}'s parameter {param}"] = _param(decl, path + ("params", param))
        graph = (blocks or {}).get(name, {}).get("graph") if isinstance((blocks or {}).get(name), dict) else None
        for entry in block.graph:
            parts["blocks", f"block {name}'s {_entry_name(entry)}"] = _Part(
                unparse(entry.expr), path + ("graph", _key_of(graph, entry)))
    if spec.loss is not None:
        parts["loss", "the loss"] = _Part(unparse(spec.loss.expr), ("loss",))
    for name, objective in ((spec.train or {}).get("objectives") or {}).items():
        parts["train", f"objective {name}'s loss"] = _Part(str(objective.get("loss")).strip(),
                                                           ("train", "objectives", name, "loss"))
    return parts


def _key_of(graph, entry) -> str:
    """The key of a graph entry as written ("ctx, alpha" or "ctx,alpha"), to locate its value."""
    for key in graph if isinstance(graph, dict) else ():
        if [t.strip() for t in str(key).split(",")] == entry.targets:
            return key
    return entry.targets[0]


def _param(decl: ParamDecl, path: tuple) -> _Part:
    return _Part(_param_text(decl), path, (
        (_shape(decl.shape), path + ("shape",)), (decl.dtype, path + ("dtype",)),
        (_init_text(decl, seed=False), path + ("init",)), (decl.seed, path + ("seed",)),
        (decl.trainable, path + ("trainable",))))


def _shape(shape) -> str:
    return f"[{', '.join(map(str, shape))}]"


def _entry_name(entry) -> str:
    return f"graph entry '{', '.join(entry.targets)}'"


def _input_text(decl: InputDecl) -> str:
    return f"{_shape(decl.shape)} {decl.dtype}"


def _param_text(decl: ParamDecl) -> str:
    frozen = "" if decl.trainable else ", not trainable"
    return f"{_shape(decl.shape)} {decl.dtype}, init {_init_text(decl)}{frozen}"


def _init_text(decl: ParamDecl, seed: bool = True) -> str:
    args = ", ".join(f"{k}={_number(v)}" for k, v in sorted(decl.init.args.items()) if seed or k != "seed")
    return f"{decl.init.kind}({args})"


def _number(value):
    """An initializer's argument as text, a number by its value: std: 1 and std: 1.0 (or a
    gain written as 1 beside the default 1.0) are one initializer."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == value:
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)
    return value


def _block_text(block: Block) -> str:
    return f"in [{', '.join(block.inputs)}], out [{', '.join(block.outputs)}]"
