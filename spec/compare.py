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
        """The change in words, `run` naming the run that trained the other spec."""
        if self.then is None:
            return f"{self.what} ({self.now}) is new: {run} trained without it"
        if self.now is None:
            return f"{self.what} ({self.then}) that {run} trained is gone"
        return f"{self.what} is now {self.now}; {run} trained {self.then}"


def model_change(then: Spec, now: Spec) -> ModelChange | None:
    """The first part of `now`'s model that differs from `then`'s, or None when the two specs
    define one model."""
    then_parts, now_parts = _parts(then), _parts(now)
    for key, (text, loc) in now_parts.items():
        before = then_parts.get(key)
        if before is None or before[0] != text:
            return ModelChange(key[1], text, before and before[0], loc)
    for key, (text, _) in then_parts.items():
        if key not in now_parts:
            return ModelChange(key[1], None, text, _section_loc(now, key[0]))
    return None


def _parts(spec: Spec) -> dict[tuple[str, str], tuple[str, Loc]]:
    """(section, the part's name in messages) -> (its text, where it is)."""
    parts = {}
    for name, value in spec.dims.items():  # (located at the value: a --set's, where one gave it)
        parts["dims", f"dim {name}"] = str(value), spec.locate("dims", name)
    for name, decl in spec.inputs.items():
        parts["inputs", f"input '{name}'"] = _input_text(decl), spec.locate("inputs", name)
    for name, decl in spec.params.items():
        parts["params", f"parameter {name}"] = _param_text(decl), spec.locate("params", name)
    for entry in spec.graph:
        parts["graph", _entry_name(entry)] = unparse(entry.expr), spec.locate("graph", entry.targets[0])
    for name, block in spec.blocks.items():
        parts["blocks", f"block {name}"] = _block_text(block), block.loc
        for param, decl in block.params.items():
            parts["blocks", f"block {name}'s parameter {param}"] = _param_text(decl), decl.loc
        for entry in block.graph:
            parts["blocks", f"block {name}'s {_entry_name(entry)}"] = unparse(entry.expr), entry.loc
    if spec.loss is not None:
        parts["loss", "the loss"] = unparse(spec.loss.expr), spec.loss.loc
    for name, objective in ((spec.train or {}).get("objectives") or {}).items():
        parts["train", f"objective {name}'s loss"] = (str(objective.get("loss")).strip(),
                                                       spec.locate("train", "objectives", name, "loss"))
    return parts


def _entry_name(entry) -> str:
    return f"graph entry '{', '.join(entry.targets)}'"


def _input_text(decl: InputDecl) -> str:
    return f"[{', '.join(map(str, decl.shape))}] {decl.dtype}"


def _param_text(decl: ParamDecl) -> str:
    args = ", ".join(f"{k}={_number(v)}" for k, v in sorted(decl.init.args.items()))
    frozen = "" if decl.trainable else ", not trainable"
    return f"[{', '.join(map(str, decl.shape))}] {decl.dtype}, init {decl.init.kind}({args}){frozen}"


def _number(value):
    """An initializer's argument as text, a number by its value: std: 1 and std: 1.0 (or a
    gain written as 1 beside the default 1.0) are one initializer."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == value:
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)
    return value


def _block_text(block: Block) -> str:
    return f"in [{', '.join(block.inputs)}], out [{', '.join(block.outputs)}]"


def _section_loc(spec: Spec, section: str) -> Loc:
    return spec.locate(section)  # (a section that is gone altogether: the spec's top)
