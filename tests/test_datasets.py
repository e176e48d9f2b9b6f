"""Bundled token datasets: text (language models) and the seq2seq tasks
dates, reverse and copy."""
from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pytest

from runtime import data as D
from runtime import datasets_text as T
from spec.errors import KEYWORDS, DataError

SEQ2SEQ_ARRAYS = {"src": np.int64, "src_len": np.int64, "tgt_in": np.int64, "tgt": np.int64, "tgt_mask": np.float32}


def _json_roundtrip(meta: dict) -> None:
    assert json.loads(json.dumps(meta)) == meta


# --------------------------------------------------------------------- text
def test_text_char_windows_shapes_and_shift():
    ds = T.load_text(seq_len=32)
    x, y = ds.arrays["x"], ds.arrays["y"]
    assert x.dtype == np.int64 and y.dtype == np.int64
    assert x.shape == y.shape and x.shape[1] == 32 and x.shape[0] > 10000
    vocab = ds.meta["vocab"]
    assert ds.meta["level"] == "char" and len(vocab) == len(set(vocab))
    assert 0 <= x.min() and max(x.max(), y.max()) < len(vocab)
    # y is x shifted by one token, and consecutive windows tile the stream.
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(y[:-1, -1], x[1:, 0])
    text = T.corpus()
    assert T.decode_text(x[:3], ds.meta) == text[:96]
    assert T.decode_text(y[0], ds.meta) == text[1:33]
    _json_roundtrip(ds.meta)


def test_text_stride_and_vocab_order():
    ds = T.load_text(seq_len=10, stride=3)
    x, y = ds.arrays["x"], ds.arrays["y"]
    np.testing.assert_array_equal(x[1, :7], x[0, 3:])
    n_tokens = len(T.corpus())
    assert len(x) == (n_tokens - 11) // 3 + 1
    assert T.decode_text(y[-1], ds.meta) == T.corpus()[3 * (len(x) - 1) + 1:][:10]
    # Characters: <unk>, newline, printable ASCII, whatever the corpus holds.
    assert ds.meta["vocab"] == ["<unk>", "\n"] + [chr(c) for c in range(32, 127)] and ds.meta["unk"] == 0


def test_text_characters_have_a_fixed_alphabet_whatever_the_python_release():
    """Each CPython release ships its own help text; a char model's vocabulary (its spec's V)
    must not change with it: typographic quotes and dashes read as ASCII, the rest as <unk>."""
    meta = T.load_text(seq_len=8).meta
    assert len(meta["vocab"]) == 97
    text = "\u201cit\u2019s\u201d \u2014 caf\u00e9\tok\u00a0ok\u2026"
    assert T.decode_text(T.encode_text(text, meta), meta) == '"it\'s" - caf<unk> ok ok<unk>'
    assert T.encode_text("\u4e2d", meta).tolist() == [0]
    assert T.decode_text(T.encode_text("a\r\nb", meta), meta) == "a\nb"  # Windows line ends
    # a generator exported before the fixed alphabet has no <unk>: its error says what to do
    old = {"vocab": ["a", "b"], "level": "char", "unk": None}
    with pytest.raises(DataError, match="not in the vocabulary") as e:
        T.encode_text("abc", old)
    assert "leave it out" in e.value.hint
    with pytest.raises(DataError, match="max_vocab applies to level: word"):
        T.load_text(max_vocab=50)


def test_text_char_round_trip_and_lowercase():
    ds = T.load_text()
    s = "def f(x):\n    return x ** 2  # the answer"
    assert T.decode_text(T.encode_text(s, ds.meta), ds.meta) == s
    low = T.load_text(lowercase=True)
    assert len(low.meta["vocab"]) < len(ds.meta["vocab"])
    assert not any(c.isupper() for c in low.meta["vocab"])
    assert T.decode_text(T.encode_text("Hello", low.meta), low.meta) == "hello"


def test_text_word_level_and_max_vocab():
    ds = T.load_text(level="word", seq_len=16, max_vocab=200)
    vocab = ds.meta["vocab"]
    assert ds.meta["level"] == "word" and len(vocab) == 200 and vocab[0] == "<unk>" and ds.meta["unk"] == 0
    assert ds.arrays["x"].shape[1] == 16 and ds.arrays["x"].max() < 200
    assert (ds.arrays["x"] == 0).any()  # rare words became <unk>
    assert {"the", ".", ",", "("} <= set(vocab)
    np.testing.assert_array_equal(ds.arrays["x"][:, 1:], ds.arrays["y"][:, :-1])
    words = "the value of x is ( a , x ) ."
    assert T.decode_text(T.encode_text(words, ds.meta), ds.meta) == words
    assert T.decode_text(T.encode_text("the zzyzx", ds.meta), ds.meta) == "the <unk>"
    full = T.load_text(level="word")
    assert full.meta["unk"] is None and "<unk>" not in full.meta["vocab"]
    _json_roundtrip(ds.meta)


def test_text_context_ngrams():
    ds = T.load_text(context=4)
    x, y = ds.arrays["x"], ds.arrays["y"]
    assert x.shape == (len(T.corpus()) - 4, 4) and y.shape == (len(x),)
    assert x.dtype == np.int64 and y.dtype == np.int64
    np.testing.assert_array_equal(x[1:, :3], x[:-1, 1:])
    np.testing.assert_array_equal(x[1:, 3], y[:-1])
    assert T.decode_text(x[10], ds.meta) + T.decode_text(y[10:11], ds.meta) == T.corpus()[10:15]

    sub = T.load_text(context=4, max_examples=500, seed=3)
    assert sub.arrays["x"].shape == (500, 4) and sub.arrays["y"].shape == (500,)
    assert sub.fingerprint() == T.load_text(context=4, max_examples=500, seed=3).fingerprint()
    assert sub.fingerprint() != T.load_text(context=4, max_examples=500, seed=4).fingerprint()
    # Each subsampled example is a real (context, next) pair of the stream.
    text = T.corpus()
    for i in range(0, 500, 50):
        ctx = T.decode_text(sub.arrays["x"][i], sub.meta)
        assert ctx + T.decode_text(sub.arrays["y"][i:i + 1], sub.meta) in text


def test_text_deterministic_and_bundled():
    a = D.load_bundled("text", {"seq_len": 8, "max_examples": 100, "seed": 1})
    b = D.load_bundled("text", {"seq_len": 8, "max_examples": 100, "seed": 1})
    c = D.load_bundled("text", {"seq_len": 8, "max_examples": 100, "seed": 2})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.arrays["x"].shape == (100, 8)


@pytest.mark.parametrize("options, words", [
    ({"level": "bytes"}, "level"),
    ({"level": "words"}, "level"),
    ({"seq_len": 0}, "seq_len"),
    ({"seq_len": -5}, "seq_len"),
    ({"seq_len": 3.5}, "seq_len"),
    ({"seq_len": True}, "seq_len"),
    ({"seq_len": 10_000_000}, "seq_len"),
    ({"stride": 0}, "stride"),
    ({"max_vocab": 1}, "max_vocab"),
    ({"lowercase": "yes"}, "lowercase"),
    ({"seed": -1}, "seed"),
    ({"context": 0}, "context"),
    ({"context": 3, "stride": 2}, "stride"),
    ({"context": 3, "seq_len": 16}, "seq_len"),  # (it was ignored: examples of 3 tokens)
    ({"max_examples": 0}, "max_examples"),
    ({"seqlen": 8}, "seqlen"),
    ({"context": 3, "streams": 4}, "streams"),  # (context returned before streams was looked at)
    ({"context": 3, "streams": "abc"}, "streams"),
])
def test_text_bad_options(options, words):
    with pytest.raises(DataError) as e:
        D.load_bundled("text", options)
    assert words in e.value.message and "\n" not in e.value.message and e.value.hint


@pytest.mark.parametrize("options, words", [
    ({"max_examples": -1}, "max_examples"),
    ({"max_examples": "abc"}, "max_examples"),
    ({"max_examples": 2.5}, "max_examples"),
    ({"seed": -1, "max_examples": 10}, "seed"),
    ({"seed": "abc"}, "seed"),
])
def test_segment_bad_options_are_located_errors(options, words):
    """The segment dataset validates its options (they raised ValueError and TypeError, or a
    bad seed passed), and an option error points at the spec's data section."""
    from spec.errors import Loc

    where = Loc("spec.yaml", 20, 9)
    with pytest.raises(DataError) as e:
        D.load_bundled("segment", options, where)
    assert words in e.value.message and e.value.hint and e.value.loc == where


@pytest.mark.parametrize("dataset, options, hint", [
    ("text", {"seed": 1}, "or set max_examples"),
    ("text", {"seed": 0, "context": 3}, "or set max_examples"),
    ("text", {"seed": 2, "streams": 4}, "streams keeps every window in order"),
    ("segment", {"seed": 1}, "or set max_examples"),
    ("segment", {"seed": 7, "stride": 24}, "or set max_examples"),
])
def test_text_and_segment_refuse_a_seed_without_max_examples(dataset, options, hint):
    """seed picks the max_examples sample; without max_examples every example is taken in
    order, and {seed: 1} and {seed: 2} gave the same data without a word."""
    from spec.errors import Loc

    where = Loc("spec.yaml", 20, 9)
    with pytest.raises(DataError, match=f"dataset '{dataset}': seed picks the max_examples sample") as e:
        D.load_bundled(dataset, options, where)
    assert hint in e.value.hint and e.value.loc == where and "\n" not in e.value.message
    sampled = {**options, "max_examples": 50}
    sampled.pop("streams", None)
    assert D.load_bundled(dataset, sampled).fingerprint() != D.load_bundled(dataset, {**sampled, "seed": 99}).fingerprint()


@pytest.mark.parametrize("dataset, options", [
    ("text", {"seq_len": 4096, "max_examples": 10_000_000, "seed": 1}),
    ("text", {"context": 3, "max_examples": 10_000_000, "seed": 0}),
    ("segment", {"seq_len": 4096, "max_examples": 10_000_000, "seed": 1}),
])
def test_text_and_segment_refuse_a_seed_when_max_examples_takes_every_example(dataset, options):
    """A max_examples at least the number of examples takes them all, in order: {seed: 1} and
    {seed: 2} gave the same data without a word, as without max_examples (refused alike)."""
    from spec.errors import Loc

    where = Loc("spec.yaml", 20, 9)
    with pytest.raises(DataError, match=f"dataset '{dataset}': seed picks the max_examples sample, and "
                                        "max_examples 10000000 takes every one of the") as e:
        D.load_bundled(dataset, options, where)
    assert "drop seed" in e.value.hint and "max_examples below" in e.value.hint
    assert e.value.loc == where and "\n" not in e.value.message
    everything = {k: v for k, v in options.items() if k != "seed"}  # without the seed: every example, in order
    assert len(D.load_bundled(dataset, everything)) < 10_000_000


# -------------------------------------------------------------------- dates
def _strptime_pattern(fmt: str) -> str:
    return fmt.replace("%-d", "%d").replace("%-m", "%m").replace("%o", "%d")


def _parse(text: str, fmt: str) -> dt.date:
    """A rendered date read back with datetime.strptime (case and runs of
    spaces are ignored by strptime; ordinal suffixes are stripped)."""
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text, flags=re.IGNORECASE)
    d = dt.datetime.strptime(text, _strptime_pattern(fmt)).date()
    if "%y" in fmt:  # the dataset's century rule: 50-99 -> 19xx, 00-49 -> 20xx
        yy = d.year % 100
        d = d.replace(year=1900 + yy if yy >= 50 else 2000 + yy)
    return d


def _parse_any(text: str) -> set[dt.date]:
    found = set()
    for fmt in T.FORMATS:
        try:
            found.add(_parse(text, fmt))
        except ValueError:
            pass
    return found


EDGE_DATES = [dt.date(1950, 1, 1), dt.date(2049, 12, 31), dt.date(2000, 2, 29), dt.date(1968, 5, 1),
              dt.date(1969, 12, 31), dt.date(2011, 11, 11), dt.date(2003, 3, 3), dt.date(1972, 9, 22),
              dt.date(2012, 12, 13), dt.date(1999, 1, 2)]


def test_date_formats_parse_back_and_are_unambiguous():
    assert len(T.FORMATS) >= 12
    assert T.render_date(dt.date(2026, 11, 26), 0) == "26 November 2026"
    assert T.render_date(dt.date(2026, 11, 26), 4) == "Thursday, 26 November 2026"
    assert T.render_date(dt.date(2026, 11, 22), T.FORMATS.index("%B %o, %Y")) == "November 22nd, 2026"
    rng = np.random.default_rng(0)
    dates = EDGE_DATES + [T.DATE_MIN + dt.timedelta(days=int(k)) for k in rng.integers(36524, size=40)]
    for d in dates:
        for i, fmt in enumerate(T.FORMATS):
            for text in (T.render_date(d, i), T.render_date(d, i, rng)):
                assert _parse(text, fmt) == d, (text, fmt)
                # No other format reads the same string as another date.
                assert _parse_any(text) == {d}, (text, fmt)
                if "%A" in fmt or "%a" in fmt:
                    assert T.WEEKDAYS[d.weekday()][:3].lower() in text.lower()


def test_dates_arrays_and_pairs():
    ds = T.load_dates(n=400, seed=5)
    S, Tl = ds.meta["src_len"], ds.meta["tgt_len"]
    assert {k: v.dtype for k, v in ds.arrays.items()} == SEQ2SEQ_ARRAYS
    assert ds.arrays["src"].shape == (400, S) and ds.arrays["src_len"].shape == (400,)
    assert Tl == 11 and all(ds.arrays[k].shape == (400, 11) for k in ("tgt_in", "tgt", "tgt_mask"))
    assert (ds.meta["pad"], ds.meta["bos"], ds.meta["eos"]) == (0, 1, 2)
    assert ds.meta["src_vocab"][:3] == ds.meta["tgt_vocab"][:3] == ["<pad>", "<bos>", "<eos>"]
    _json_roundtrip(ds.meta)
    seen_formats = set()
    for i in range(400):
        src = T.decode_source(ds.arrays["src"][i], ds.meta)
        iso = T.decode_target(ds.arrays["tgt"][i], ds.meta)
        assert len(src) == ds.arrays["src_len"][i]
        assert T.decode_target(ds.arrays["tgt_in"][i], ds.meta) == iso
        assert _parse_any(src) == {dt.date.fromisoformat(iso)}, src
        assert T.DATE_MIN <= dt.date.fromisoformat(iso) <= T.DATE_MAX
        seen_formats.add(src)
    assert len(seen_formats) > 350  # varied
    lettered = [s for s in seen_formats if any(c.isalpha() for c in s)]
    assert any(s == s.lower() for s in lettered) and any(s == s.upper() for s in lettered)
    assert any(s != s.lower() and s != s.upper() for s in lettered) and any("  " in s for s in seen_formats)


def test_dates_train_test_disjoint():
    train, test = T._dates_of("train"), T._dates_of("test")
    assert not set(train) & set(test)
    assert len(train) + len(test) == (T.DATE_MAX - T.DATE_MIN).days + 1
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.25
    a = T.load_dates(n=3000, split="train", seed=0)
    b = T.load_dates(n=1000, split="test", seed=0)
    c = T.load_dates(n=1000, split="test", seed=9)
    targets = lambda ds: {T.decode_target(r, ds.meta) for r in ds.arrays["tgt"]}  # noqa: E731
    assert not targets(a) & (targets(b) | targets(c))
    assert b.meta["split"] == "test" and a.meta["src_vocab"] == b.meta["src_vocab"]
    assert a.arrays["src"].shape[1] == b.arrays["src"].shape[1]


def test_dates_deterministic():
    a, b = T.load_dates(n=200, seed=3), D.load_bundled("dates", {"n": 200, "seed": 3})
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != T.load_dates(n=200, seed=4).fingerprint()


def test_encode_source_for_arbitrary_text():
    meta = T.dates_meta()
    assert meta == {k: v for k, v in T.load_dates(n=2).meta.items() if k != "split"}
    ids = T.encode_source("26 November 2026", meta)
    assert ids.shape == (meta["src_len"],) and ids.dtype == np.int64
    assert (ids[16:] == 0).all() and (ids[:16] > 2).all()
    assert T.decode_source(ids, meta) == "26 November 2026"
    assert T.encode_source("1.2.2003", meta, length=8).shape == (8,)
    with pytest.raises(DataError):
        T.encode_source("26 November 2026!", meta)
    with pytest.raises(DataError):
        T.encode_source("x" * (meta["src_len"] + 1), meta)
    tgt_vocab = meta["tgt_vocab"]
    ids = [tgt_vocab.index(c) for c in "2026-11-26"] + [2, 0, 0]
    assert T.decode_target([1] + ids, meta) == "2026-11-26"


@pytest.mark.parametrize("options, words", [
    ({"split": "valid"}, "split"),
    ({"split": 1}, "split"),
    ({"n": 0}, "n"),
    ({"n": "10"}, "n"),
    ({"seed": -2}, "seed"),
    ({"seq_len": 8}, "seq_len"),
])
def test_dates_bad_options(options, words):
    with pytest.raises(DataError) as e:
        D.load_bundled("dates", options)
    assert words in e.value.message and "\n" not in e.value.message and e.value.hint


# ----------------------------------------------------------- reverse / copy
def _check_masks(ds) -> None:
    a = ds.arrays
    src, src_len, tgt_in, tgt, mask = a["src"], a["src_len"], a["tgt_in"], a["tgt"], a["tgt_mask"]
    n, S = src.shape
    T_ = tgt.shape[1]
    assert all(len(v) == n for v in a.values())
    # Sources: real ids then padding, exactly src_len of them.
    np.testing.assert_array_equal((src != 0).sum(1), src_len)
    np.testing.assert_array_equal(src != 0, np.arange(S)[None, :] < src_len[:, None])
    # Targets: the mask covers the target and its <eos>, nothing else.
    n_tgt = mask.sum(1).astype(np.int64)
    np.testing.assert_array_equal(mask, (np.arange(T_)[None, :] < n_tgt[:, None]).astype(np.float32))
    np.testing.assert_array_equal(tgt[np.arange(n), n_tgt - 1], 2)
    np.testing.assert_array_equal(tgt != 0, mask == 1)
    assert (tgt_in[:, 0] == 1).all()
    np.testing.assert_array_equal(np.where(tgt[:, :-1] == 2, 0, tgt[:, :-1]), tgt_in[:, 1:])
    assert not np.isin(src, [1, 2]).any() and not (tgt_in == 2).any()


@pytest.mark.parametrize("task", ["reverse", "copy"])
def test_reverse_copy(task):
    ds = D.load_bundled(task, {"n": 300, "min_len": 2, "max_len": 9, "alphabet": 5, "seed": 1})
    assert {k: v.dtype for k, v in ds.arrays.items()} == SEQ2SEQ_ARRAYS
    assert ds.arrays["src"].shape == (300, 9) and ds.arrays["tgt"].shape == (300, 10)
    assert ds.meta["src_vocab"] == ds.meta["tgt_vocab"] == ["<pad>", "<bos>", "<eos>", "a", "b", "c", "d", "e"]
    lens = ds.arrays["src_len"]
    assert lens.min() == 2 and lens.max() == 9
    np.testing.assert_array_equal(ds.arrays["tgt_mask"].sum(1), lens + 1)
    for i in range(300):
        s = T.decode_source(ds.arrays["src"][i], ds.meta)
        t = T.decode_target(ds.arrays["tgt"][i], ds.meta)
        assert set(s) <= set("abcde") and t == (s[::-1] if task == "reverse" else s)
        assert T.decode_source(T.encode_source(s, ds.meta), ds.meta) == s
    _check_masks(ds)
    _json_roundtrip(ds.meta)
    again = D.load_bundled(task, {"n": 300, "min_len": 2, "max_len": 9, "alphabet": 5, "seed": 1})
    other = D.load_bundled(task, {"n": 300, "min_len": 2, "max_len": 9, "alphabet": 5, "seed": 2})
    assert ds.fingerprint() == again.fingerprint() != other.fingerprint()


def test_seq2seq_masks_dates():
    _check_masks(T.load_dates(n=300, seed=2))


def test_reverse_defaults():
    ds = T.load_reverse(n=50)
    assert ds.arrays["src"].shape == (50, 20) and ds.arrays["tgt_in"].shape == (50, 21)
    assert len(ds.meta["src_vocab"]) == 29


@pytest.mark.parametrize("task", ["reverse", "copy"])
@pytest.mark.parametrize("options, words", [
    ({"min_len": 5, "max_len": 3}, "min_len"),
    ({"min_len": 0}, "min_len"),
    ({"alphabet": 27}, "alphabet"),
    ({"alphabet": 0}, "alphabet"),
    ({"n": -1}, "n"),
    ({"max_len": 2.0}, "max_len"),
    ({"length": 3}, "length"),
])
def test_reverse_copy_bad_options(task, options, words):
    with pytest.raises(DataError) as e:
        D.load_bundled(task, options)
    assert words in e.value.message and "\n" not in e.value.message and e.value.hint


@pytest.mark.parametrize("task, options", [("reverse", {"n": 20000, "max_len": 20}), ("dates", {"n": 20000}),
                                           ("copy", {"n": 3000, "max_len": 4, "alphabet": 8})])
def test_seq2seq_examples_are_distinct_so_validation_is_not_trained_on(task, options):
    """The generated examples were drawn with replacement: 76 of the 1,000 validation rows of
    models/reverse_attention.yaml's data were training rows too (15 of dates_attention's).
    Now no source recurs (a date not even in another case or spacing), whatever the split."""
    ds = D.load_bundled(task, options)
    norm = lambda d: [" ".join(T.decode_source(r, ds.meta).lower().split()) for r in d.arrays["src"]]  # noqa: E731
    assert len(set(norm(ds))) == len(ds) == options["n"]
    train, valid = D.split(ds, 0.05, 0)
    assert len(valid) == options["n"] // 20 and not set(norm(train)) & set(norm(valid))
    again = D.load_bundled(task, options)
    assert again.fingerprint() == ds.fingerprint()


@pytest.mark.parametrize("task, options, most", [
    ("reverse", {"n": 40, "min_len": 1, "max_len": 3, "alphabet": 3}, 39),
    ("copy", {"n": 33, "min_len": 5, "max_len": 5, "alphabet": 2}, 32),
    ("reverse", {"n": 2, "max_len": 1, "alphabet": 1}, 1),
    ("dates", {"n": 200000, "split": "test"}, None),
    ("dates", {"n": len(T._dates_of("test")) * len(T.FORMATS), "split": "test"}, None),
])
def test_seq2seq_refuses_more_examples_than_there_are_distinct_ones(task, options, most):
    """The number the error gives is the number there are: an n beyond the (date, format) pairs
    was refused with the pairs' count (131,868 for the test split), and that n was then refused
    with the distinct examples' (131,415), as some pairs read alike."""
    from spec.errors import Loc

    if task == "dates":
        most = len({T.render_date(d, f) for d in T._dates_of("test") for f in range(len(T.FORMATS))})
    where = Loc("spec.yaml", 3, 9)
    with pytest.raises(DataError) as e:
        D.load_bundled(task, options, where)
    assert f"n {options['n']} is more than the {most} distinct" in e.value.message and "\n" not in e.value.message
    assert f"n <= {most}" in e.value.hint and e.value.loc == where
    # exactly as many as there are: every one of them
    ds = D.load_bundled(task, {**options, "n": most})
    sources = {" ".join(T.decode_source(r, ds.meta).lower().split()) for r in ds.arrays["src"]}
    assert len(sources) == most and len(ds) == most


def test_dates_as_many_as_there_are_distinct_ones(monkeypatch):
    """Two formats read alike on some dates (15 May 2026 in '%d %B %Y' and '%-d %b %Y'), so
    there are fewer distinct examples than (date, format) pairs; an n between the two is
    refused once they are counted, and that many are every one of them."""
    pool = (dt.date(2026, 5, 15), dt.date(2026, 5, 3), dt.date(2026, 11, 26))
    monkeypatch.setattr(T, "_dates_of", lambda split: pool)
    most = len({T.render_date(d, f) for d in pool for f in range(len(T.FORMATS))})
    assert most < len(pool) * len(T.FORMATS)
    with pytest.raises(DataError, match=f"n {most + 1} is more than the {most} distinct examples of its test split"):
        T.load_dates(n=most + 1, split="test")
    ds = T.load_dates(n=most, split="test")
    assert len({" ".join(T.decode_source(r, ds.meta).lower().split()) for r in ds.arrays["src"]}) == most


def test_seq2seq_benchmark_held_out_sets_share_no_example_with_training():
    """benchmarks/seq2seq_accuracy.py's held-out sets share no source with the bundled models'
    training data (a fresh draw of reverse strings repeated about a tenth of them)."""
    import importlib.util
    import pathlib

    from spec import load_spec

    root = pathlib.Path(__file__).resolve().parent.parent
    spec_ = importlib.util.spec_from_file_location("seq2seq_accuracy", root / "benchmarks" / "seq2seq_accuracy.py")
    bench = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(bench)
    for task, model in (("reverse", "reverse_attention.yaml"), ("dates", "dates_attention.yaml")):
        data = load_spec(str(root / "models" / model)).train["data"]
        trained = D.load_bundled(data["dataset"], data.get("options"))
        held = bench.held_out(task, 1000)
        assert len(held) == 1000
        seen = {T.decode_source(r, trained.meta) for r in trained.arrays["src"]}
        sources = [T.decode_source(r, held.meta) for r in held.arrays["src"]]
        targets = {T.decode_target(r, trained.meta) for r in trained.arrays["tgt"]}
        assert not [s for s in sources if s in seen], task
        if task == "dates":  # no calendar date in common
            assert not [t for t in (T.decode_target(r, held.meta) for r in held.arrays["tgt"]) if t in targets]


# ------------------------------------------------------------------ splits
def _model_spec(name: str, overrides: list[str]):
    import pathlib

    from spec import load_spec

    return load_spec(str(pathlib.Path(__file__).resolve().parent.parent / "models" / name), overrides)


@pytest.mark.parametrize("overrides", [[], ["train.shuffle=false"], ["train.shuffle=false", "train.data.test=0.1"]])
def test_labelled_digits_are_all_training_examples_however_the_data_is_split(overrides):
    """labelled: K marks K training examples, and every validation example keeps its label:
    with shuffle: false (validation from the last examples) some of the K were validation
    examples, training saw 78 labels of 100 and validation only 22."""
    from runtime.train import split_like_training

    spec = _model_spec("semisupervised.yaml", overrides)
    ds = D.load_bundled("digits", {"labelled": 100})
    train, valid = split_like_training(ds, spec, 0.2, 0)
    assert train.arrays["has_label"].sum() == 100
    np.testing.assert_array_equal(np.bincount(train.arrays["y"][train.arrays["has_label"] == 1]), [10] * 10)
    assert (valid.arrays["has_label"] == 1).all()


def test_labelled_digits_mark_exactly_k_or_refuse():
    """labelled: K marked fewer than K without a word: a class with fewer digits than its share
    had them all marked and the shortfall was dropped (labelled: 1797 marked 1787), and a split
    leaving fewer than K training digits marked what it could (labelled: 1400 with valid: 0.2
    trained on 1387 labels; 1500 on 1409). Now the other classes make up a shortfall, and a
    split that leaves fewer than K training examples is refused, pointing at labelled."""
    from runtime.train import split_like_training

    full = D.load_bundled("digits", {"labelled": 1797})
    assert full.arrays["has_label"].sum() == 1797
    train, _ = D.split(D.load_bundled("digits", {"labelled": 1400}), 0.2, 0)
    counts = np.bincount(train.arrays["y"][train.arrays["has_label"] == 1], minlength=10)
    assert counts.sum() == 1400 and counts.max() - counts.min() <= 8
    # (classes with fewer training digits than 140 have all of them marked, the others more)
    sizes = np.bincount(train.arrays["y"], minlength=10)
    assert ((counts == sizes) | (counts >= 140)).all()
    # (with a test fraction, the test split refuses first when it leaves fewer than K)
    for labelled, valid, test, left in ((1500, 0.2, None, 1438), (1400, 0.2, 0.1, 1294), (1700, 0.1, 0.1, 1617)):
        spec = _model_spec("semisupervised.yaml", [] if test is None else [f"train.data.test={test}"])
        ds = D.load_bundled("digits", {"labelled": labelled})
        with pytest.raises(DataError, match=f"labelled {labelled} is more than the {left} examples left to train on") as e:
            split_like_training(ds, spec, valid, 0)
        assert f"labelled: {left} or fewer" in e.value.hint and "\n" not in e.value.message
        assert e.value.loc == spec.locate("train", "data", "options", "labelled") and e.value.loc.line == 36
    spec = _model_spec("semisupervised.yaml", [])
    train, _ = split_like_training(D.load_bundled("digits", {"labelled": 1438}), spec, 0.2, 0)
    assert train.arrays["has_label"].sum() == 1438 == len(train)


@pytest.mark.parametrize("model, inputs", [("mlp.yaml", "has no input has_label"),
                                           ("semisupervised.yaml", "declares has_label and never reads it")])
def test_labelled_digits_refused_where_the_spec_reads_no_has_label(tmp_path, model, inputs):
    """labelled: K reaches training only through the has_label mask: models/mlp.yaml with
    options {labelled: 5} trained on the labels of all 1,438 training digits without a word (the
    array was dropped as no graph read it). Refused, pointing at labelled."""
    from runtime.api import train

    overrides = ["train.data.options={labelled: 5}"]
    if model == "semisupervised.yaml":  # the mask declared, but the loss no longer weighted by it
        overrides.append("graph.classify=mean(cross_entropy(logits, y, reduction=none))")
    spec = _model_spec(model, overrides)
    with pytest.raises(DataError, match=f"dataset 'digits': labelled 5 keeps 5 labels through a has_label mask, "
                                        f"but the spec {inputs}: training would read every example's label") as e:
        train(spec, steps=1, device="cpu", threads=1, run_dir=str(tmp_path / "r"))
    assert e.value.loc == spec.locate("train", "data", "options", "labelled") and "drop labelled" in e.value.hint
    assert not (tmp_path / "r").exists()


def test_a_spec_reading_has_label_of_digits_without_labelled_is_told_to_add_it(tmp_path):
    """models/semisupervised.yaml without its labelled option was told "dataset 'digits' gives
    the arrays x, y: name the spec's inputs after them", though has_label is no array to rename
    an input after: the digits make it with labelled: K."""
    from runtime.api import train

    spec = _model_spec("semisupervised.yaml", ["train.data.options={}"])
    with pytest.raises(DataError, match="dataset 'digits': no array named 'has_label'") as e:
        train(spec, steps=1, device="cpu", threads=1, run_dir=str(tmp_path / "r"))
    assert e.value.hint.startswith("dataset 'digits' gives has_label with its labelled option: add options: "
                                   "{labelled: K} to train.data")
    assert e.value.loc == spec.inputs["has_label"].loc


def test_a_test_fraction_of_ordered_data_keeps_the_order():
    """With shuffle: false the test fraction, as the validation one, is the last examples: a
    random test sample took rows out of the text streams, and a stateful model's batches no
    longer continued each other (a third of its rows read another stream's text)."""
    from runtime.train import split_like_training, split_off_test

    B = 4
    spec = _model_spec("char_lstm_stateful.yaml", [f"train.data.options.streams={B}", "train.data.options.seq_len=16",
                                                   "train.data.test=0.1"])
    ds = D.load_bundled("text", spec.train["data"]["options"])
    train, valid = split_like_training(ds, spec, 0.05, 0)
    x, y = train.arrays["x"], train.arrays["y"]
    n = len(x) // B * B
    # row b of each batch continues row b of the batch before
    np.testing.assert_array_equal(x[B:n, 0], y[:n - B, -1])
    _, test = split_off_test(ds, spec, 0)
    n_test = len(test)
    np.testing.assert_array_equal(test.arrays["x"], ds.arrays["x"][-n_test:])
    np.testing.assert_array_equal(valid.arrays["x"], ds.arrays["x"][-n_test - len(valid):-n_test])


def test_text_streams_without_drop_last_refuse_a_short_last_batch(tmp_path):
    """Streams split for validation leave rows that are not a whole batch; without drop_last the
    epoch's short last batch failed in onnxruntime ("cannot be reshaped") after a whole epoch.
    (The text is this Python's pydoc help, whose length changes with its version: the share
    held out for validation is picked to leave a short batch; 3.12's text left none at 3%.)"""
    from compiler.training import compile_spec
    from runtime.api import train
    from runtime.train import TrainOptions, load_data

    for valid in (0.03, 0.04, 0.05):
        spec = _model_spec("char_lstm_stateful.yaml", ["dims.H=4", "dims.E=2", "train.data.options.streams=4",
                                                       "train.batch_size=4", "train.data.options.seq_len=4000",
                                                       "train.drop_last=false", f"train.data.valid={valid}"])
        rows = len(load_data(spec, compile_spec(spec), TrainOptions(names=KEYWORDS), 0)[0])
        if rows % 4:
            break
    with pytest.raises(DataError, match=f"the {rows} training rows end an epoch with a batch of {rows % 4}:") as e:
        train(spec, epochs=1, device="cpu", threads=1, run_dir=str(tmp_path / "r"))
    assert "train.drop_last=false:" in str(e.value) and "drop_last: true" in e.value.hint


def test_dataset_options_are_counts_checked_as_the_api_checks_them():
    """Whole numbers within their bounds, refused with the option's name (one checker with
    the API's counts: runtime.checks)."""
    for bad, words in ((2.5, "an integer of at least 1, got 2.5"), (5.0, "an integer of at least 1, got 5.0"),
                       (0, "an integer of at least 1, got 0"), (2000, "at most 1,000, got 2000")):
        with pytest.raises(DataError, match=f"^dataset 'reverse': option max_len must be {words}"):
            T.load_reverse(n=40, seed=1, max_len=bad)


@pytest.mark.parametrize("dataset, options, words", [
    ("reverse", {"n": None}, "option n is empty (null)"),  # (a TypeError traceback)
    ("copy", {"seed": None}, "option seed is empty (null)"),
    ("dates", {"seed": None, "n": 10}, "option seed is empty (null)"),
    ("segment", {"seq_len": None}, "option seq_len is empty (null)"),
    ("text", {"seq_len": None}, "option seq_len is empty (null)"),  # (read as 64 without a word)
    ("text", {"max_examples": None, "seed": 3}, "option max_examples is empty (null)"),
    ("digits", {"labelled": None}, "option labelled is empty (null)"),  # (no has_label, without a word)
    ("text", {1: 2}, "has no option 1"),  # (a TypeError: keywords must be strings)
    ("segment", {True: 2}, "has no option True"),
])
def test_dataset_options_that_are_null_or_not_names_are_refused(dataset, options, words):
    """An option written without a value (`n:` or `n: null`) crashed reverse, copy, dates and
    segment with a TypeError, and text and the digits read it as left out; a key that is not
    a name (`1: 2`) crashed the text datasets. Both are refused, at the data section."""
    from spec.errors import Loc

    where = Loc("spec.yaml", 20, 9)
    with pytest.raises(DataError) as e:
        D.load_bundled(dataset, options, where)
    assert words in e.value.message and e.value.hint and e.value.loc == where and "\n" not in e.value.message


@pytest.mark.parametrize("dataset", D.BUNDLED)
def test_every_bundled_datasets_option_errors_are_worded_alike(dataset):
    """The digits said "digits option labelled must be ..." and "unknown option(s) for the
    digits: labeled" (with no closest name as a hint), where the text datasets said "dataset
    'text': option seq_len must be ..." and "dataset 'text' has no option 'seqlen'" (did you
    mean 'seq_len'?). Every bundled dataset now says it the text datasets' way."""
    option = D.dataset_options(dataset)[0]
    with pytest.raises(DataError) as e:
        D.load_bundled(dataset, {option + "x": 1})
    assert e.value.message == f"dataset {dataset!r} has no option {option + 'x'!r}"
    assert e.value.hint.startswith(f"did you mean {option!r}")
    counted = {"digits": "labelled", "digits_images": "labelled", "text": "seq_len", "segment": "seq_len"}.get(dataset, "n")
    with pytest.raises(DataError) as e:
        D.load_bundled(dataset, {counted: 0})
    assert e.value.message.startswith(f"dataset {dataset!r}: option {counted} must be an integer of at least ")
    assert e.value.message.endswith(", got 0")


def test_dataset_options_lists_every_keyword_of_each_loader():
    assert D.dataset_options("digits") == D.dataset_options("digits_images") == ["labelled"]
    assert D.dataset_options("text") == ["level", "seq_len", "stride", "max_vocab", "lowercase", "seed", "context",
                                         "max_examples", "streams"]
    assert D.dataset_options("segment") == ["seq_len", "stride", "max_examples", "seed"]
    assert D.dataset_options("dates") == ["n", "seed", "split"]
    for task in ("reverse", "copy"):
        assert D.dataset_options(task) == ["n", "min_len", "max_len", "alphabet", "seed"]


def test_every_option_of_every_bundled_dataset_is_documented():
    """The options were documented only in the loaders' docstrings: README's 'Bundled
    datasets' has a row for each, and the schema's train.data.options (docs/schema.md) names each."""
    import os

    from spec.loader import schema

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = readme.split("## Bundled datasets\n", 1)[1].split("\n## ", 1)[0]
    described = schema()["properties"]["train"]["properties"]["data"]["properties"]["options"]["description"]
    for name in D.BUNDLED:
        assert f"**{name}**" in section, name
        assert f"{name}:" in described or f"{name}," in described, name
        for option in D.dataset_options(name):
            assert f"| `{option}` |" in section, (name, option)
            assert re.search(rf"\b{option} \(", described), (name, option)


@pytest.mark.parametrize("load, options", [
    (T.load_dates, {"n": 5}),
    (T.load_reverse, {"n": 5}),
    (T.load_text, {"seq_len": 8, "max_examples": 5}),
])
def test_a_dataset_seed_has_the_bounds_of_every_seed(load, options):
    """A bundled dataset's seed is at most 2**63 - 1, as train.seed and --seed are: 2**70 was
    taken, though no run could record it as the int64 every other seed is."""
    load(seed=2**63 - 1, **options)
    with pytest.raises(DataError, match="seed must be at most"):
        load(seed=2**70, **options)


@pytest.mark.parametrize("inputs, words", [
    ("x: {shape: [N, 1, 8, 8]}", "declare x: {shape: [N, 64]} (digits_images gives"),
    ("x: {shape: [N, 63]}", "declare x: {shape: [N, 64]}"),
    ("image: {shape: [N, 64]}", "dataset 'digits' gives the arrays x, y: name the spec's inputs"),
    ("x: {shape: [N, 64], dtype: int64}", "declare x: {shape: [N, 64]}"),
])
def test_a_spec_that_does_not_fit_a_bundled_dataset_is_told_how_to_declare_it(tmp_path, inputs, words):
    """A bundled dataset's arrays are fixed: the hints said to save or reshape the array
    'before saving it', or listed what 'the file' has, though there is no file to change."""
    from compiler.training import compile_spec
    from runtime.train import input_dtypes, needed_inputs
    from spec import spec_from_text

    name = inputs.split(":")[0]
    spec = spec_from_text(f"""
flowgrad: 1
name: fit
inputs:
  {inputs}
  y: {{shape: [N], dtype: int64}}
graph:
  logits: dense(flatten(cast({name}, 'float32')), 10)
loss: cross_entropy(logits, y)
train:
  data: {{dataset: digits}}
""", str(tmp_path / "fit.yaml"))
    cm = compile_spec(spec)
    ds = D.load_bundled("digits")
    with pytest.raises(DataError) as info:
        D.check_against_spec(ds, spec, needed_inputs(cm), "dataset 'digits'", cm.index_bounds, input_dtypes(cm))
    assert words in info.value.hint and "sav" not in info.value.hint and "file" not in info.value.hint


def test_train_and_check_name_the_same_unknown_option_first(tmp_path):
    """With two misspelt options, check named the first as written (seqlen) and train the first in
    sort order (lvl): fixing what one said, the other then named the other."""
    from runtime.data import load_bundled
    from runtime.train import check_data_section
    from spec import load_spec
    from spec.errors import DataError

    import pathlib

    text = (pathlib.Path(__file__).resolve().parent.parent / "models" / "char_lstm.yaml").read_text().replace(
        "options: {level: char, seq_len: 64}", "options: {seqlen: 64, lvl: char}")
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match="has no option 'seqlen'"):
        check_data_section(load_spec(str(path)))
    with pytest.raises(DataError, match="has no option 'seqlen'"):
        load_bundled("text", {"seqlen": 64, "lvl": "char"})


@pytest.mark.parametrize("name, options", [("text", {"seq_len": 32}), ("text", {"context": 3}),
                                           ("text", {"seq_len": 16, "streams": 4}), ("dates", {"n": 50}),
                                           ("reverse", {"n": 50}), ("copy", {"n": 50}), ("segment", {})])
def test_a_check_only_load_makes_no_examples_and_leaves_loading_as_it_was(name, options, monkeypatch):
    """load_bundled(check_only=True) (flowgrad check) stops where a loader has checked its options
    and would start making examples; a refusal raises as a full load does. Either way the next
    load makes its examples: the check-only mode ends with the call."""
    assert D.load_bundled(name, options, check_only=True) is None
    with pytest.raises(DataError):
        D.load_bundled(name, {**options, "seed": -1}, check_only=True)
    assert not T.CHECKING_OPTIONS_ONLY.get()
    assert len(D.load_bundled(name, options)) > 0
