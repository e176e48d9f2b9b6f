"""The JSON that flowgrad writes (metrics.jsonl, result.json, run.json, graphs/manifest.json, a
checkpoint's record, --json output) and how it reads a record's numbers back.

JSON has no NaN or Infinity: Python's json module writes them as the bare tokens NaN, Infinity
and -Infinity, which jq, JavaScript's JSON.parse and other strict parsers refuse. A NaN (a 0/0
precision) is written as null, and an infinite number (a loss that overflowed) as the string
"Infinity" or "-Infinity" (what JavaScript's Number() and Python's float() read back); the readers
of a record of metrics take null as NaN and those strings as the infinities, as they took the
bare tokens that files of earlier versions hold (which Python's json still reads). Files written
before infinities were kept hold null for them too, and read as NaN as they did."""
from __future__ import annotations

import json
import math
import numbers

NAN = float("nan")
# how an infinite number is written, and read back
INFINITIES = {"Infinity": math.inf, "-Infinity": -math.inf}


def finite(value):
    """`value` with every NaN float (a NumPy one too) as None and every infinite one as "Infinity"
    or "-Infinity", in its dicts, lists and tuples at any depth."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if math.isfinite(value):
            return value
        return None if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """json.dumps of `value` as strict JSON: a NaN is null, an infinity "Infinity" or "-Infinity"."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def is_number(v) -> bool:
    """Whether `v`, read from a record of numbers, is a number as dumps writes one: a number (not
    a bool), null (a NaN) or "Infinity" / "-Infinity"."""
    if isinstance(v, str):
        return v in INFINITIES
    return v is None or isinstance(v, (int, float)) and not isinstance(v, bool)


def number_of(v):
    """One value of a record of numbers read back: null as NaN, "Infinity" and "-Infinity" as
    the infinities, anything else as it is."""
    if v is None:
        return NAN
    return INFINITIES.get(v, v) if isinstance(v, str) else v


def numbers_of(record):
    """A record of numbers read back (an epoch's metrics, the best record, running sums):
    each null, a NaN when written, as NaN, each "Infinity" and "-Infinity" as the infinity it
    was. Anything but a dict is returned as it is (a damaged file is its reader's to report)."""
    if not isinstance(record, dict):
        return record
    return {k: number_of(v) for k, v in record.items()}


def checkpoint_record(meta: dict) -> dict:
    """A checkpoint's record with its metrics' nulls as NaN and "Infinity"s as floats: its history of epochs (which
    checkpoints of earlier versions carry; metrics.jsonl holds it now), its best record and the
    running sums of an epoch it stopped in (also those a step limit kept aside as `partial`), as
    the training loop and the API's readers had them before they were written."""
    meta = dict(meta)
    if isinstance(meta.get("history"), list):
        meta["history"] = [numbers_of(r) for r in meta["history"]]
    for key in ("best", "epoch_sums"):
        if key in meta:
            meta[key] = numbers_of(meta[key])
    if isinstance(meta.get("partial"), dict):
        meta["partial"] = {**meta["partial"], **{k: numbers_of(meta["partial"][k])
                                                  for k in ("best", "epoch_sums") if k in meta["partial"]}}
    return meta
