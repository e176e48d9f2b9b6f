"""Bundled token datasets that need no download: a language-model corpus and
three sequence-to-sequence tasks.

``runtime.data.load_bundled`` calls ``load_<name>(**options)`` with the spec's
``train.data.options`` mapping, so every keyword has a default and bad values
raise ``DataError`` (one line plus a hint). Everything is deterministic given
``seed``.

text
    CPython's ``pydoc_data.topics`` help text (~465k characters), joined in
    sorted key order with blank lines.

    - windows (default): ``x`` [N, seq_len] int64 token ids (seq_len 64 by default) and ``y``
      [N, seq_len] int64, the next token at each position
      (``y[i, t] == stream[start_i + t + 1]``), windows every ``stride``
      tokens (default ``seq_len``).
    - n-gram (``context=n``, Bengio et al. 2003): ``x`` [N, n] the previous n
      tokens and ``y`` [N] the next one, for every token after the first n (N = len(stream) - n;
      no seq_len or stride).

    Either mode can be subsampled with ``max_examples``, ``seed`` picking the
    sample (without ``max_examples``, or with one that takes every example, every example is
    taken in order, and ``seed`` is refused).
    meta: ``{"vocab": [...], "level": "char"|"word", "lowercase": bool,
    "unk": id or None}``. Characters use a fixed alphabet, whatever the
    Python release's text holds: ``<unk>`` (id 0), newline and printable
    ASCII (97 symbols; 71 with ``lowercase``); typographic quotes and dashes
    read as their ASCII forms, tabs and no-break spaces as spaces, carriage
    returns not at all, other characters as ``<unk>``. Words are ordered by decreasing frequency, then
    by word; ``max_vocab`` keeps the most frequent (the rest read as ``<unk>``).

dates, reverse, copy (sequence to sequence)
    Special ids 0 = <pad>, 1 = <bos>, 2 = <eos> in both vocabularies.

    - ``src`` [N, S] int64, padded with 0
    - ``src_len`` [N] int64
    - ``tgt_in`` [N, T] int64, <bos> + target, padded
    - ``tgt`` [N, T] int64, target + <eos>, padded
    - ``tgt_mask`` [N, T] float32, 1 for target positions including <eos>

    S and T depend only on the options (not on the sample), so train and test
    sets, and strings encoded later with ``encode_source``, share shapes.
    meta: ``{"src_vocab", "tgt_vocab", "pad": 0, "bos": 1, "eos": 2,
    "src_len": S, "tgt_len": T, "task": name}``.

    dates: human-written dates between 1950-01-01 and 2049-12-31 (in one of
    ``FORMATS``, with varied case and spacing) -> ISO ``YYYY-MM-DD``. The
    calendar dates are split by a hash into train (~80%) and test (~20%) sets
    that never share a date, whatever the seed.
    reverse: random lowercase strings -> the reversed string.
    copy: random lowercase strings -> the same string.

    The examples of each are distinct (no date in one format twice, whatever its
    case and spacing; no string twice), so a validation or test fraction split off
    them shares no source with the training rows. An n beyond the number of
    distinct examples is refused.
"""
from __future__ import annotations

import contextvars
import datetime as _dt
import functools
import hashlib
import re
import string

import numpy as np

from spec.errors import DataError, did_you_mean

from .checks import MAX_SEED, check_count
from .data import Dataset

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<bos>", "<eos>"]
UNK = "<unk>"
MAX_EXAMPLES = 10_000_000


# ------------------------------------------------------------------ options
def _reject_unknown(dataset: str, unknown: dict, known: list[str]) -> None:
    if not unknown:
        return
    name = next(iter(unknown))  # the first as written, as flowgrad check names it (it took the first in sort order)
    close = did_you_mean(name, known)
    hint = close or f"options of {dataset}: {', '.join(known)}"
    raise DataError(f"dataset {dataset!r} has no option {name!r}", None, hint)


def _int(dataset: str, name: str, value, lo: int, hi: int | None = None) -> int:
    return check_count(f"dataset {dataset!r}: option {name}", value, lo, most=hi, error=DataError,
                       hint=f"write a whole number, e.g. {name}: {lo}" + (f" (at most {hi})" if hi is not None else ""))


def _choice(dataset: str, name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        close = did_you_mean(value, choices) if isinstance(value, str) else None
        listed = f"{name} is one of: {', '.join(choices)}"
        raise DataError(f"dataset {dataset!r}: unknown {name} {value!r}", None,
                        f"{close} ({listed})" if close else listed)
    return value


def _bool(dataset: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise DataError(f"dataset {dataset!r}: option {name} must be true or false, got {value!r}", None,
                        f"write {name}: true or {name}: false")
    return value


def _seed_of_subsample(dataset: str, seed, max_examples: int | None, streams: int | None = None) -> int | None:
    """The seed of a max_examples subsample (None where none is given). Without max_examples
    every example is taken, in order, and a seed would do nothing: refused, as other options
    that would be ignored are (and by _subsample, a max_examples that takes every example)."""
    if seed is None:
        return None
    seed = _int(dataset, "seed", seed, 0, MAX_SEED)
    if max_examples is None:
        raise DataError(f"dataset {dataset!r}: seed picks the max_examples sample, and without max_examples every "
                        "example is taken in order", None,
                        "drop seed: streams keeps every window in order" if streams is not None else
                        "drop seed (train.seed seeds the shuffling and the validation split), or set max_examples")
    return seed


def _subsample(dataset: str, n_total: int, max_examples: int | None, seed: int | None) -> np.ndarray | None:
    """Sorted indices of a seeded subsample, or None to keep everything. A seed given with a
    max_examples that takes every example would do nothing: refused, as without max_examples."""
    if max_examples is None or max_examples >= n_total:
        if seed is not None and max_examples is not None:
            raise DataError(f"dataset {dataset!r}: seed picks the max_examples sample, and max_examples {max_examples} "
                            f"takes every one of the {n_total} examples, in order", None,
                            "drop seed (train.seed seeds the shuffling and the validation split), or set "
                            f"max_examples below {n_total}")
        return None
    rng = np.random.default_rng([0 if seed is None else seed, 0x7E47])
    return np.sort(rng.choice(n_total, size=max_examples, replace=False))


# --------------------------------------------------------------------- text
_WORD_RE = re.compile(r"\w+|[^\w\s]")


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    """The raw English text: pydoc_data.topics values in sorted key order."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Python installs
        raise DataError("the text dataset needs CPython's pydoc_data module, which this Python lacks", None,
                        "use a full CPython installation") from None
    return "\n\n".join(topics[k] for k in sorted(topics))


# The character alphabet does not depend on the corpus: each CPython release has its own help
# text, and a model's vocabulary size (a spec's dims) must not change with the Python running it.
CHAR_ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
_ASCII_FORMS = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                              "\u2014": "-", "\t": " ", "\u00a0": " ", "\r": None})


def char_vocab(lowercase: bool) -> list[str]:
    """The character vocabulary: <unk>, then the alphabet (without capitals when lowercased)."""
    return [UNK] + [c for c in CHAR_ALPHABET if not (lowercase and c.isupper())]


def _char_tokens(text: str) -> list[str]:
    return list(text.translate(_ASCII_FORMS))


def tokenize(text: str, level: str) -> list[str]:
    """Characters (typographic quotes and dashes in their ASCII forms), or words and
    punctuation marks (whitespace dropped)."""
    return _char_tokens(text) if level == "char" else _WORD_RE.findall(text)


@functools.lru_cache(maxsize=8)
def _text_stream(level: str, lowercase: bool, max_vocab: int | None) -> tuple[np.ndarray, tuple[str, ...], int | None]:
    text = corpus()
    if lowercase:
        text = text.lower()
    tokens = tokenize(text, level)
    if level == "char":
        ordered, unk = char_vocab(lowercase), 0
    else:
        counts: dict[str, int] = {}
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
        ordered = sorted(counts, key=lambda t: (-counts[t], t))
        unk = None
        if max_vocab is not None and len(ordered) > max_vocab:
            ordered = [UNK] + ordered[:max_vocab - 1]
            unk = 0
    index = {t: i for i, t in enumerate(ordered)}
    if unk is None:
        ids = np.fromiter((index[t] for t in tokens), dtype=np.int64, count=len(tokens))
    else:
        ids = np.fromiter((index.get(t, 0) for t in tokens), dtype=np.int64, count=len(tokens))
    ids.flags.writeable = False
    return ids, tuple(ordered), unk


class OptionsChecked(Exception):
    """A loader's options are checked, and its caller asked for no more (load_bundled's
    check_only: flowgrad check reads a data section without making its examples)."""


CHECKING_OPTIONS_ONLY = contextvars.ContextVar("checking_options_only", default=False)


def _options_checked() -> None:
    """Where a loader has checked its options and starts making examples."""
    if CHECKING_OPTIONS_ONLY.get():
        raise OptionsChecked


def load_text(level: str = "char", seq_len: int | None = None, stride: int | None = None, max_vocab: int | None = None,
              lowercase: bool = False, seed: int | None = None, context: int | None = None,
              max_examples: int | None = None, streams: int | None = None, **unknown) -> Dataset:
    """Language-model data from CPython's help text; see the module docstring.

    `streams=B` lays the text out for a stateful model: B contiguous parts of
    the stream, window w of part b at row w*B + b, so that batch w (rows
    w*B .. w*B+B-1, unshuffled) continues batch w-1 in every row."""
    ds = "text"
    _reject_unknown(ds, unknown, ["level", "seq_len", "stride", "max_vocab", "lowercase", "seed", "context",
                                  "max_examples", "streams"])
    level = _choice(ds, "level", level, ("char", "word"))
    given_seq_len = seq_len is not None  # (context examples have no seq_len: one given there is a mistake)
    seq_len = 64 if seq_len is None else _int(ds, "seq_len", seq_len, 1)
    if stride is not None:
        stride = _int(ds, "stride", stride, 1)
    if max_vocab is not None:
        max_vocab = _int(ds, "max_vocab", max_vocab, 2)
        if level == "char":
            raise DataError(f"dataset 'text': max_vocab applies to level: word; characters use a fixed alphabet "
                            f"of {len(char_vocab(False))} symbols", None, "drop max_vocab, or set level: word")
    lowercase = _bool(ds, "lowercase", lowercase)
    if context is not None:
        context = _int(ds, "context", context, 1)
        if stride is not None:
            raise DataError("dataset 'text': stride applies to seq_len windows, not to context (n-gram) examples",
                            None, "drop stride, or use max_examples to take fewer n-gram examples")
        if given_seq_len:
            raise DataError(f"dataset 'text': seq_len applies to windows, not to context (n-gram) examples of "
                            f"{context} tokens", None, "drop seq_len; context sets how many tokens each example reads")
    if max_examples is not None:
        max_examples = _int(ds, "max_examples", max_examples, 1)
    if streams is not None:
        streams = _int(ds, "streams", streams, 1)
        if stride is not None or max_examples is not None or context is not None:
            raise DataError("dataset 'text': streams keeps every window in order", None,
                            "drop stride, max_examples and context when using streams")
    seed = _seed_of_subsample(ds, seed, max_examples, streams)

    ids, vocab, unk = _text_stream(level, lowercase, max_vocab)
    L = len(ids)
    meta = {"vocab": list(vocab), "level": level, "lowercase": lowercase, "unk": unk}
    if context is not None:
        if context >= L:
            raise DataError(f"dataset 'text': context {context} leaves no examples in a stream of {L} tokens", None,
                            f"use context < {L}")
        n_total = L - context
        pick = _subsample(ds, n_total, max_examples, seed)
        _options_checked()  # (the stream is quick to read: what its length allows is checked too)
        starts = np.arange(n_total) if pick is None else pick
        x = ids[starts[:, None] + np.arange(context)[None, :]]
        y = ids[starts + context]
        return Dataset({"x": x.astype(np.int64), "y": y.astype(np.int64)}, "text", meta)

    if seq_len >= L:
        raise DataError(f"dataset 'text': seq_len {seq_len} is not shorter than the {L}-token stream", None,
                        f"use seq_len < {L}")
    if streams is not None:
        part = L // streams
        per = (part - 1) // seq_len  # windows per stream, each with its next-token targets
        if per < 1:
            raise DataError(f"dataset 'text': {streams} streams of {part} tokens hold no window of {seq_len}", None,
                            "use fewer streams or a shorter seq_len")
        _options_checked()
        starts = (np.arange(per)[:, None] * seq_len + np.arange(streams)[None, :] * part).reshape(-1)
        cols = np.arange(seq_len)[None, :]
        meta["streams"] = streams
        return Dataset({"x": ids[starts[:, None] + cols].astype(np.int64), "y": ids[starts[:, None] + cols + 1].astype(np.int64)},
                       "text", meta)
    stride = seq_len if stride is None else stride
    n_total = (L - seq_len - 1) // stride + 1  # windows with a full next-token target
    starts = np.arange(n_total, dtype=np.int64) * stride
    pick = _subsample(ds, n_total, max_examples, seed)
    _options_checked()
    if pick is not None:
        starts = starts[pick]
    cols = np.arange(seq_len)[None, :]
    x = ids[starts[:, None] + cols]
    y = ids[starts[:, None] + cols + 1]
    return Dataset({"x": x.astype(np.int64), "y": y.astype(np.int64)}, "text", meta)


def encode_text(text: str, meta: dict, error: type[DataError] = DataError) -> np.ndarray:
    """Token ids of `text` under a text dataset's meta (lowercased when it was); `error` is
    the class raised for a token outside the vocabulary."""
    if meta.get("lowercase"):
        text = text.lower()
    index = {t: i for i, t in enumerate(meta["vocab"])}
    unk = meta.get("unk")
    out = []
    for t in tokenize(text, meta["level"]):
        i = index.get(t, unk)
        if i is None:
            raise error(f"token {t!r} is not in the vocabulary", None,
                            "leave it out of the text" if meta["level"] == "char"
                            else "train with max_vocab set to map rare words to <unk>")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def decode_text(ids, meta: dict) -> str:
    """The text of token ids: characters joined, or words joined by spaces. Ids beyond the
    vocabulary (a model's dims.V may exceed it, and a sampler can draw them) read as <unk>."""
    vocab = meta["vocab"]
    toks = [vocab[i] if 0 <= i < len(vocab) else UNK for i in map(int, np.asarray(ids).reshape(-1))]
    return "".join(toks) if meta["level"] == "char" else " ".join(toks)


# --------------------------------------------------------- sequence to sequence
def _vocab(chars: str) -> list[str]:
    return SPECIALS + sorted(set(chars))


def _pack(sources: list[str], targets: list[str], src_vocab: list[str], tgt_vocab: list[str],
          S: int, T: int, task: str) -> Dataset:
    """Pad sources to S and targets (+ <eos>) to T with the shared id scheme."""
    n = len(sources)
    s_index = {c: i for i, c in enumerate(src_vocab)}
    t_index = {c: i for i, c in enumerate(tgt_vocab)}
    src = np.zeros((n, S), np.int64)
    src_len = np.zeros(n, np.int64)
    tgt_in = np.zeros((n, T), np.int64)
    tgt = np.zeros((n, T), np.int64)
    tgt_mask = np.zeros((n, T), np.float32)
    for i, (s, t) in enumerate(zip(sources, targets)):
        src[i, :len(s)] = [s_index[c] for c in s]
        src_len[i] = len(s)
        ti = [t_index[c] for c in t]
        tgt_in[i, 0] = BOS
        tgt_in[i, 1:len(ti) + 1] = ti
        tgt[i, :len(ti)] = ti
        tgt[i, len(ti)] = EOS
        tgt_mask[i, :len(ti) + 1] = 1.0
    meta = {"src_vocab": src_vocab, "tgt_vocab": tgt_vocab, "pad": PAD, "bos": BOS, "eos": EOS,
            "src_len": S, "tgt_len": T, "task": task}
    return Dataset({"src": src, "src_len": src_len, "tgt_in": tgt_in, "tgt": tgt, "tgt_mask": tgt_mask}, task, meta)


def encode_source(text: str, meta: dict, length: int | None = None, error: type[DataError] = DataError) -> np.ndarray:
    """Source ids [length] of an arbitrary string, padded with <pad> to
    `length` (default: the dataset's src_len). Its src_len is len(text). `error` is the class
    raised for a text the model cannot take."""
    length = meta.get("src_len", len(text)) if length is None else length
    index = {c: i for i, c in enumerate(meta["src_vocab"]) if i > EOS}
    bad = [c for c in text if c not in index]
    if bad:
        allowed = "".join(meta["src_vocab"][EOS + 1:])
        raise error(f"character {bad[0]!r} is not in the source vocabulary", None,
                        f"the model knows these characters: {allowed!r}")
    if len(text) > length:
        raise error(f"the text has {len(text)} characters, more than the {length} the model takes", None,
                        "shorten it")
    out = np.full(length, PAD, np.int64)
    out[:len(text)] = [index[c] for c in text]
    return out


def _decode(ids, vocab: list[str], stop_at_eos: bool) -> str:
    out = []
    for i in np.asarray(ids).reshape(-1):
        i = int(i)
        if i == EOS and stop_at_eos:
            break
        if i in (PAD, BOS, EOS) or not 0 <= i < len(vocab):
            continue
        out.append(vocab[i])
    return "".join(out)


def decode_target(ids, meta: dict) -> str:
    """The target string of ids: up to the first <eos>, <pad>/<bos> skipped."""
    return _decode(ids, meta["tgt_vocab"], True)


def decode_source(ids, meta: dict) -> str:
    """The source string of ids, padding dropped."""
    return _decode(ids, meta["src_vocab"], False)


# -------------------------------------------------------------------- dates
DATE_MIN = _dt.date(1950, 1, 1)
DATE_MAX = _dt.date(2049, 12, 31)
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# strftime-like templates rendered with English names whatever the locale:
# %d day 01-31, %-d day 1-31, %o ordinal day (1st, 22nd), %m month 01-12,
# %-m month 1-12, %B/%b month name/abbreviation, %A/%a weekday, %Y year, %y
# two-digit year (50-99 -> 19xx, 00-49 -> 20xx, exact over 1950-2049).
# Unambiguous by construction: numeric day/month orders are always
# day-month-year or year-month-day (never month-day-year), and a 2-digit year
# only comes last after a numeric or named month.
FORMATS = (
    "%d %B %Y",        # 26 November 2026
    "%B %d, %Y",       # November 26, 2026
    "%b %d %Y",        # Nov 26 2026
    "%d/%m/%Y",        # 26/11/2026
    "%A, %d %B %Y",    # Thursday, 26 November 2026
    "%Y.%m.%d",        # 2026.11.26
    "%-d %b %Y",       # 26 Nov 2026
    "%d-%b-%Y",        # 26-Nov-2026
    "%a %b %-d %Y",    # Thu Nov 26 2026
    "%o %B %Y",        # 26th November 2026
    "%B %o, %Y",       # November 26th, 2026
    "%-d.%-m.%Y",      # 26.11.2026
    "%d.%m.%y",        # 26.11.26
    "%A %B %-d %Y",    # Thursday November 26 2026
    "%Y/%m/%d",        # 2026/11/26
    "%b. %-d, %Y",     # Nov. 26, 2026
    "%a, %-d %b %y",   # Thu, 26 Nov 26
    "%Y-%m-%d",        # 2026-11-26
)
_DIRECTIVE = re.compile(r"%(-?[a-zA-Z])")
DATE_SRC_CHARS = string.ascii_letters + string.digits + " ,./-"
DATE_TGT_CHARS = string.digits + "-"


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _field(d: _dt.date, code: str) -> str:
    if code == "d":
        return f"{d.day:02d}"
    if code == "-d":
        return str(d.day)
    if code == "o":
        return _ordinal(d.day)
    if code == "m":
        return f"{d.month:02d}"
    if code == "-m":
        return str(d.month)
    if code == "B":
        return MONTHS[d.month - 1]
    if code == "b":
        return MONTHS[d.month - 1][:3]
    if code == "A":
        return WEEKDAYS[d.weekday()]
    if code == "a":
        return WEEKDAYS[d.weekday()][:3]
    if code == "Y":
        return f"{d.year:04d}"
    if code == "y":
        return f"{d.year % 100:02d}"
    raise ValueError(f"unknown date directive %{code}")


def render_date(date: _dt.date, fmt_index: int, rng: np.random.Generator | None = None) -> str:
    """`date` written in FORMATS[fmt_index]. Without `rng` the canonical
    rendering; with one, a random case (as is, lower, upper) and some spaces
    doubled."""
    text = _DIRECTIVE.sub(lambda m: _field(date, m.group(1)), FORMATS[fmt_index])
    return text if rng is None else _vary(text, rng)


def _vary(text: str, rng: np.random.Generator) -> str:
    """A canonical rendering in a random case (as is, lower, upper), some spaces doubled."""
    case = rng.random()
    if case < 0.25:
        text = text.lower()
    elif case < 0.4:
        text = text.upper()
    if " " in text:
        parts = text.split(" ")
        doubled = rng.random(len(parts) - 1) < 0.1
        text = parts[0] + "".join(("  " if dbl else " ") + p for dbl, p in zip(doubled, parts[1:]))
    return text


def date_split(date: _dt.date) -> str:
    """'test' for about a fifth of the calendar dates (fixed by a hash), else 'train'."""
    h = hashlib.blake2b(date.isoformat().encode(), digest_size=4).digest()
    return "test" if int.from_bytes(h, "little") % 5 == 0 else "train"


@functools.lru_cache(maxsize=2)
def _dates_of(split: str) -> tuple[_dt.date, ...]:
    days = (DATE_MAX - DATE_MIN).days + 1
    all_dates = (DATE_MIN + _dt.timedelta(days=i) for i in range(days))
    return tuple(d for d in all_dates if date_split(d) == split)


@functools.lru_cache(maxsize=1)
def date_src_len() -> int:
    """The longest source any format can produce, spaces doubled included.
    Every field's longest value shows up within one (non-leap) year."""
    year = [_dt.date(2049, 1, 1) + _dt.timedelta(days=i) for i in range(365)]
    longest = 0
    for f in range(len(FORMATS)):
        for d in year:
            s = render_date(d, f)
            longest = max(longest, len(s) + s.count(" "))
    return longest


def dates_meta() -> dict:
    """The dates task's meta without generating data (for encode_source)."""
    return _pack([], [], _vocab(DATE_SRC_CHARS), _vocab(DATE_TGT_CHARS), date_src_len(), 11, "dates").meta


def load_dates(n: int = 20000, seed: int = 0, split: str = "train", **unknown) -> Dataset:
    """Human-written dates -> ISO YYYY-MM-DD; train and test share no date.

    The n examples are distinct: no two render the same date in the same format, whatever
    their case and spacing (so a validation split shares no source with training). They are
    (date, format) pairs drawn without replacement, each in a random case and spacing."""
    ds = "dates"
    _reject_unknown(ds, unknown, ["n", "seed", "split"])
    n = _int(ds, "n", n, 1, MAX_EXAMPLES)
    seed = _int(ds, "seed", seed, 0, MAX_SEED)
    split = _choice(ds, "split", split, ("train", "test"))
    pool = _dates_of(split)
    if n <= len(pool):  # (any one format renders each date apart: only a larger n may exceed the distinct examples)
        _options_checked()
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, 0xDA7E])
    sources, targets, seen = [], [], set()
    for k in rng.permutation(len(pool) * len(FORMATS)).tolist():
        d, f = pool[k // len(FORMATS)], k % len(FORMATS)
        text = render_date(d, f)
        if text in seen:  # (two formats can read alike: '%d %B %Y' and '%-d %b %Y' on 15 May)
            continue
        seen.add(text)
        sources.append(_vary(text, rng))
        targets.append(d.isoformat())
        if len(sources) == n:
            break
    else:  # every pair tried: the distinct ones, fewer than the pairs where some read alike, are all there are
        raise DataError(f"dataset 'dates': n {n} is more than the {len(seen)} distinct examples of its {split} split "
                        "(each date in each format once)", None,
                        f"use n <= {len(seen)}: examples are distinct, so that no validation example is a training one")
    out = _pack(sources, targets, _vocab(DATE_SRC_CHARS), _vocab(DATE_TGT_CHARS), date_src_len(), 11, ds)
    out.meta["split"] = split
    return out


# ---------------------------------------------------------- reverse / copy
def _distinct_strings(rng: np.random.Generator, n: int, min_len: int, max_len: int, alphabet: int) -> list[np.ndarray]:
    """n distinct strings (letter ids) of min_len to max_len letters. Lengths are drawn
    uniformly; a length with fewer strings than were drawn for it (26 of one letter) takes
    them all, and the rest of its share goes to the lengths with strings to spare. The
    strings of each length are drawn without replacement; the list is shuffled."""
    lengths = np.arange(min_len, max_len + 1)
    caps = np.array([min(alphabet ** int(L), n) for L in lengths], dtype=np.int64)
    counts = np.bincount(rng.integers(len(lengths), size=n), minlength=len(lengths))
    while (counts > caps).any():
        excess = int((counts - caps).clip(0).sum())
        counts = np.minimum(counts, caps)
        spare = np.flatnonzero(counts < caps)
        counts += np.bincount(spare[rng.integers(len(spare), size=excess)], minlength=len(lengths))
    rows: list[np.ndarray] = []
    for L, c in zip(lengths.tolist(), counts.tolist()):
        if not c:
            continue
        if alphabet ** L <= 2 ** 62:  # index the strings of this length, and decode the drawn indices
            idx = rng.choice(alphabet ** L, size=c, replace=False)
            letters = idx[:, None] // (alphabet ** np.arange(L, dtype=np.int64))[None, :] % alphabet
        else:  # far more strings than examples: draw letters, redraw the (unlikely) repeats
            letters = rng.integers(alphabet, size=(c, L))
            while True:
                _, first = np.unique(letters, axis=0, return_index=True)
                if len(first) == c:
                    break
                letters = np.concatenate([letters[np.sort(first)], rng.integers(alphabet, size=(c - len(first), L))])
        rows.extend(letters)
    return [rows[i] for i in rng.permutation(n).tolist()]


def _strings(task: str, n, min_len, max_len, alphabet, seed, unknown: dict) -> Dataset:
    _reject_unknown(task, unknown, ["n", "min_len", "max_len", "alphabet", "seed"])
    n = _int(task, "n", n, 1, MAX_EXAMPLES)
    min_len = _int(task, "min_len", min_len, 1)
    max_len = _int(task, "max_len", max_len, 1, 1000)
    if min_len > max_len:
        raise DataError(f"dataset {task!r}: min_len {min_len} is greater than max_len {max_len}", None,
                        "use min_len <= max_len")
    alphabet = _int(task, "alphabet", alphabet, 1, 26)
    seed = _int(task, "seed", seed, 0, MAX_SEED)
    most = sum(alphabet ** L for L in range(min_len, max_len + 1))
    if n > most:
        letters = f"{alphabet} letter" + ("s" if alphabet > 1 else "")
        raise DataError(f"dataset {task!r}: n {n} is more than the {most} distinct strings of {min_len} to {max_len} "
                        f"letters over {letters}", None,
                        f"use n <= {most}, or a larger max_len or alphabet: examples are distinct, so that no "
                        "validation example is a training one")
    _options_checked()
    rng = np.random.default_rng([seed, 0x5E0 if task == "reverse" else 0xC0F])
    chars = np.array(list(string.ascii_lowercase[:alphabet]))
    sources = ["".join(chars[row]) for row in _distinct_strings(rng, n, min_len, max_len, alphabet)]
    targets = [s[::-1] for s in sources] if task == "reverse" else list(sources)
    vocab = _vocab(string.ascii_lowercase[:alphabet])
    return _pack(sources, targets, vocab, list(vocab), max_len, max_len + 1, task)


def load_reverse(n: int = 20000, min_len: int = 1, max_len: int = 20, alphabet: int = 26, seed: int = 0,
                 **unknown) -> Dataset:
    """Distinct random lowercase strings -> the reversed string."""
    return _strings("reverse", n, min_len, max_len, alphabet, seed, unknown)


def load_copy(n: int = 20000, min_len: int = 1, max_len: int = 20, alphabet: int = 26, seed: int = 0,
              **unknown) -> Dataset:
    """Distinct random lowercase strings -> the same string."""
    return _strings("copy", n, min_len, max_len, alphabet, seed, unknown)


# ------------------------------------------------------------------ word segmentation (tagging)
def load_segment(seq_len: int = 48, stride: int | None = None, max_examples: int | None = None,
                 seed: int | None = None, **unknown) -> Dataset:
    """Tagging where both directions matter: the corpus's words, lowercased
    and run together without spaces; each letter is tagged 1 when it ends a
    word. Telling where a word ends needs the letters before it and after it.
    ``max_examples`` takes a sample of the windows, picked by ``seed``.

    Arrays: x [N, T] int64 letter ids (a-z = 0..25), y [N, T] int64 tags."""
    _reject_unknown("segment", unknown, ["seq_len", "stride", "max_examples", "seed"])
    seq_len = _int("segment", "seq_len", seq_len, 2, 4096)
    stride = seq_len if stride is None else _int("segment", "stride", stride, 1, 4096)
    if max_examples is not None:
        max_examples = _int("segment", "max_examples", max_examples, 1)
    seed = _seed_of_subsample("segment", seed, max_examples)
    words = re.findall(r"[a-z]+", corpus().lower())
    letters = "".join(words)
    ends = np.zeros(len(letters), dtype=np.int64)
    np.put(ends, np.cumsum([len(w) for w in words]) - 1, 1)
    ids = np.frombuffer(letters.encode("ascii"), dtype=np.uint8).astype(np.int64) - ord("a")
    starts = np.arange(0, len(ids) - seq_len + 1, stride)
    keep = _subsample("segment", len(starts), max_examples, seed)
    _options_checked()  # (the corpus is quick to read: what its windows allow is checked too)
    if keep is not None:
        starts = starts[keep]
    window = starts[:, None] + np.arange(seq_len)[None, :]
    vocab = list(string.ascii_lowercase)
    return Dataset({"x": ids[window], "y": ends[window]}, "segment", {"vocab": vocab, "tags": ["inside", "end"]})
