"""The numbers users give flowgrad's functions (counts, lengths, seeds, temperatures), and the
paths and switches the API takes, checked in one place, so that every verb and function takes
and refuses the same values with the same words: a count is an int (or a NumPy integer) within
its bounds; a float, even 2.0, a bool, a string or NaN is refused with a one-line error and a
hint, never rounded. The CLI's flags are bounded by typer before any of this; the message
names the keyword as the caller wrote it.

`error` is the class raised (the export API raises its ExportArgumentError, data checks a
DataError); this module imports nothing heavy, so `predict` stays quick to load."""
from __future__ import annotations

import os

import numpy as np

from spec.errors import FlowgradError

# The graphs take the seed as an int64 input (NumPy's streams take no negative seed).
MAX_SEED = 2**63 - 1
# onnxruntime's intra-op threads, as --threads bounds them (threads=2000 took minutes to start a session)
MAX_THREADS = 1024
# Tokens a decoder generates, beams it keeps, samples a generator draws in one run, at most
# (a huge count tried to allocate terabytes); predict's --count has the same bound.
MAX_COUNT = 1 << 20
MAX_COUNT_WHY = "a run holds at most that many tokens, steps, beams or samples"
# What a float32 graph input holds (a temperature of 1e39 became inf).
FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_whole_number(value) -> bool:
    """A Python or NumPy integer, not a bool (which Python counts as one)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_count(name: str, value, least: int = 1, has_default: bool = True, most: int | None = None,
                error: type[FlowgradError] = FlowgradError, hint: str | None = None,
                most_hint: str | None = None, required: bool = False) -> int | None:
    """`value` as an int, or None where it is None (unset) and not `required`: an integer of at
    least `least` (and at most `most`). `hint` replaces the default hints; `most_hint` says why
    a value above `most` is too large."""
    if value is None and not required:
        return None
    shown = value.item() if isinstance(value, np.generic) else value  # (not np.int64(0))
    if not is_whole_number(value) or value < least:
        raise error(f"{name} must be an integer of at least {least}, got {shown!r}",
                    hint=hint or (f"leave {name} out for the default" if has_default
                                  else f"give {name} a whole number of at least {least}"))
    if most is not None and value > most:
        raise error(f"{name} must be at most {'2**63 - 1' if most == MAX_SEED else f'{most:,}'}, got {shown!r}",
                    hint=most_hint or hint or (f"leave {name} out for the default" if has_default
                                               else f"give {name} a whole number of at most {most:,}"))
    return int(value)


def check_seed(seed, name: str = "seed", error: type[FlowgradError] = FlowgradError) -> int | None:
    """A seed, bounded as every verb's --seed is: an integer from 0 to 2**63 - 1."""
    return check_count(name, seed, 0, most=MAX_SEED, error=error)


def check_number(name: str, value, least: float, most: float = FLOAT32_MAX,
                 error: type[FlowgradError] = FlowgradError, hint: str | None = None) -> float | None:
    """`value` as a float, or None where it is None: a finite int or float (not a bool or a
    string) of at least `least` and at most `most` (a float32 input's range by default)."""
    if value is None:
        return None
    shown = value.item() if isinstance(value, np.generic) else value
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    # (NaN and inf fail the comparison; a NumPy float compared as a Python one: np.float32(1e-3)
    # against a bound beyond float32 printed NumPy's "overflow encountered in cast" warning)
    if not number or not least <= shown <= most:
        # a finite number above `most` (1e39 beyond a float32) is "0 or more and finite": name the bound it passes
        bound = f"at most {most:g}" if number and least <= shown < float("inf") else f"{least:g} or more and finite"
        raise error(f"{name} must be {bound}, got {shown!r}" if not number else f"{name} must be {bound}, got {shown}",
                    hint=hint or f"give {name} a number from {least:g} to {most:g}")
    return float(value)


def check_path(name: str, value, error: type[FlowgradError] = FlowgradError, required: bool = False) -> str | None:
    """A path given to the API, as a str, or None where it is None (unset) and not `required`:
    a str or an os.PathLike (pathlib.Path) that is not empty. (An int or a list ended in
    os.path's TypeError, a pathlib.Path in an AttributeError, and "" was taken as not given.)"""
    if value is None and not required:
        return None
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):
        raise error(f"{name} must be a path, got {type(value).__name__}",
                    hint=f"give {name} as a str or a pathlib.Path")
    if not path.strip():
        raise error(f"{name} is an empty path", hint=f"give {name} a path" + ("" if required else ", or leave it out (None)"))
    return path


def check_flag(name: str, value, error: type[FlowgradError] = FlowgradError) -> bool:
    """A switch given to the API: True or False (a NumPy bool too). Any other value is refused:
    resume="no" or overwrite="false" was truthy, and started over a run whose checkpoints
    were then lost."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be True or False, got {value!r}", hint=f"give {name}=True or {name}=False")
    return bool(value)


def enclosing_run(path: str) -> str | None:
    """The run directory (a folder with a run.json) that `path` lies inside, at any depth above it;
    None when there is none. What compile writes, or a new run, there would sit among that run's
    files (its graphs belong to its checkpoints)."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.isfile(os.path.join(folder, "run.json")):
            return folder
        if os.path.dirname(folder) == folder:
            return None
        folder = os.path.dirname(folder)
