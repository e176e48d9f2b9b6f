"""User-facing errors. Every mistake a user can make becomes one of these,
carrying where in which file it happened and how to fix it."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A position in a spec file; line and col are 1-based."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def shifted(self, line_offset: int = 0, col: int | None = None) -> "Loc":
        return Loc(self.file, self.line + line_offset, self.col if col is None else col)


class FlowgradError(Exception):
    """Base class of errors caused by the user's input (exit code 1; see unknown_choice)."""

    exit_code = 1

    def __init__(self, message: str, loc: Loc | None = None, hint: str | None = None, arg: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.hint = hint
        self.arg = arg  # the op argument at fault, if one is: the compiler then points at it

    def one_line(self) -> str:
        where = f"{self.loc}: " if self.loc else ""
        return f"{where}{self.message}"

    def __str__(self) -> str:
        text = self.one_line()
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


def unknown_choice(value, name: str, choices: tuple[str, ...], error: type[FlowgradError] = FlowgradError) -> FlowgradError:
    """The refusal of a value that is none of `choices`, naming the keyword or flag the user
    wrote. A flag's (--device gpu) is a usage error, exit code 2 as click gives a value out of
    its range (it was 1)."""
    e = error(f"unknown {name} {value!r}", hint="choose " + ", ".join(choices[:-1]) + " or " + choices[-1])
    if name.startswith("--"):
        e.exit_code = 2
    return e


@dataclass(frozen=True)
class ArgNames:
    """How a message names an argument the caller gave: as the CLI's flag (--init-from runs/a)
    or as the API's keyword (init_from="runs/a"). Whoever takes the arguments picks one (the
    CLI FLAGS, runtime.api KEYWORDS) and hands it on, so that each message is written once
    and still tells its reader what they typed. Only the API's own functions (export, predict,
    evaluate_run, save_graphs) default to KEYWORDS, their callers' words; TrainOptions, the
    output helpers of runtime.checkpoint and compile_spec's frozen take no default, as a caller
    that forgot to pass one got the other words without a sign."""

    flags: bool

    def __call__(self, keyword: str) -> str:
        """The argument's name: --init-from (-o for output, --set for overrides), or init_from."""
        if not self.flags:
            return keyword
        return _FLAG_OF.get(keyword, "--" + keyword.replace("_", "-"))

    def given(self, **args) -> str:
        """Arguments as the caller writes them: "--resume --seed 3", or "resume=True, seed=3"
        (a keyword that takes a list shows its one value in a list)."""
        if self.flags:
            return " ".join(self(k) if v is True else f"{self(k)} {v}" for k, v in args.items())
        return ", ".join(f"{k}={_literal(k, v)}" for k, v in args.items())


_FLAG_OF = {"output": "-o", "overrides": "--set", "inputs": "--input"}  # the flags not spelt --KEYWORD-IN-DASHES
_LIST_KEYWORDS = ("overrides", "freeze")  # a repeatable flag is a list keyword


def _literal(keyword: str, value) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)  # ("NEW_DIR", 3, True)
    return f"[{text}]" if keyword in _LIST_KEYWORDS else text


FLAGS = ArgNames(flags=True)
KEYWORDS = ArgNames(flags=False)


class SpecError(FlowgradError):
    """The spec file is malformed: YAML, schema, expressions, names."""


class ShapeError(FlowgradError):
    """Shapes or dtypes do not fit together."""


class GradientError(FlowgradError):
    """A gradient that was asked for cannot be formed (e.g. a parameter that never reaches the loss)."""


class ExportError(FlowgradError):
    """A model cannot be emitted or exported."""


class DataError(FlowgradError):
    """A data file does not match the spec."""


class ExportArgumentError(ExportError, DataError):
    """A bad argument of the export API (runtime.export's export, predict, generate_text, translate
    and generator_feeds): an unknown checkpoint or device, a count, length, seed or temperature
    out of range, a model of the wrong kind for the call. Caught by `except ExportError`, and by
    `except DataError` as its counts, lengths and temperatures were before."""


class MultiError(FlowgradError):
    """Several independent problems found at once (e.g. schema validation)."""

    def __init__(self, errors: list[FlowgradError]):
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, first.loc, first.hint)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class SpecWarning(FlowgradError):
    """Not a mistake that stops anything, but likely not what was meant (e.g. a graph entry that
    nothing uses). Collected and reported by `flowgrad check`, never raised."""


def did_you_mean(word: str, choices) -> str | None:
    """A 'did you mean ...?' hint, or None when nothing is close."""
    import difflib

    choices = list(dict.fromkeys(choices))  # (a block's names and the spec's may repeat one)
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    if len(word) == 2:  # 'h3' for 'h2' keeps half the letters of the name, which no ratio takes for close
        close += [c for c in choices if isinstance(c, str) and len(c) == 2 and c[0] == word[0] and c not in close][:3 - len(close)]
    if not close:  # a name in the other case: dims.h for H (one letter is never close by ratio)
        close = [c for c in choices if isinstance(c, str) and c.lower() == word.lower()]
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"


class MultiSpecError(MultiError, SpecError):
    """Several problems in one spec: caught by `except SpecError` and by `except MultiError`."""
