"""The JSON that flowgrad writes (metrics.jsonl, result.json, run.json, graphs/manifest.json, a
checkpoint's record, --json output) and how it reads a record's numbers back.

JSON has no NaN or Infinity: Python's json module writes them as the bare tokens NaN, Infinity
and -Infinity, which jq, JavaScript's JSON.parse and other strict parsers refuse. A number that
is not finite (a 0/0 precision, a loss that overflowed) is written as null, and the readers of a
record of metrics take null as NaN, as they took the NaN that files of earlier versions hold
(which Python's json still reads)."""
from __future__ import annotations

import json
import math
import numbers

NAN = float("nan")


def finite(value):
    """`value` with every NaN or infinite float (a NumPy one too) as None, in its dicts, lists
    and tuples at any depth."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value, **kwargs) -> str:
    """json.dumps of `value` as strict JSON: a number that is not finite is null."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def numbers_of(record):
    """A record of numbers read back (an epoch's metrics, the best record, running sums):
    each null, a number that was not finite when written, as NaN. Anything but a dict is
    returned as it is (a damaged file is its reader's to report)."""
    if not isinstance(record, dict):
        return record
    return {k: NAN if v is None else v for k, v in record.items()}


def checkpoint_record(meta: dict) -> dict:
    """A checkpoint's record with its metrics' nulls as NaN: its history of epochs (which
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
