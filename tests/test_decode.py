"""Decoding inside the exported graph of an attention encoder-decoder: greedy
equals step-by-step decoding in Python, beam search equals a plain NumPy beam
search over the same model, beam width 1 equals greedy. And attention masks."""
from __future__ import annotations

import os

import numpy as np
import pytest

from compiler.autodiff import grad
from compiler.check import Runner
from compiler.emit import emit_model
from compiler.ir import Graph
from runtime import datasets_text as T
from runtime.api import export, load, train
from runtime.export import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 3  # the exported graph's largest beam


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decode")
    spec = load(os.path.join(ROOT, "models", "reverse_attention.yaml"), [
        "dims.H=16", "dims.E=8", "dims.A=16", "train.data.options.n=600", "train.data.options.max_len=6",
        "generate.max_len=7", f"generate.beam_width={K}", "dims.SV=29", "dims.TV=29"])
    result = train(spec, run_dir=str(tmp / "run"), steps=40, threads=1, device="cpu")
    gen, inf = str(tmp / "gen.onnx"), str(tmp / "infer.onnx")
    export(result.run_dir, gen, graph="generate")
    export(result.run_dir, inf, graph="infer")
    ds = T.load_reverse(n=6, seed=99, max_len=6)
    return gen, inf, ds


def _next_logp(inf, src, src_len, prefix):
    """log p(next token | source, prefix) from the inference graph, run on the whole prefix."""
    out = predict(inf, {"src": src[None], "src_len": np.asarray([src_len]), "tgt_in": np.asarray([prefix], dtype=np.int64)})
    return np.log(out["probs"][0, -1].astype(np.float64))


def _decode(gen, ds, beam, max_len=7, alpha=0.6):
    return predict(gen, {"src": ds.arrays["src"], "src_len": ds.arrays["src_len"], "beam_width": np.asarray(beam),
                         "max_len": np.asarray(max_len), "length_penalty": np.asarray(alpha, dtype=np.float32)})


def numpy_beam_search(inf, src, src_len, width, max_len=7, alpha=0.6, bos=T.BOS, eos=T.EOS, pad=T.PAD):
    """The reference: the same bookkeeping as the graph, one hypothesis at a time."""
    beams = [([], 0.0, False)]  # (tokens, score, finished)
    for _ in range(max_len):
        cands = []
        for k, (toks, score, done) in enumerate(beams):
            if done:
                cands.append((score, k, pad))
                continue
            logp = _next_logp(inf, src, src_len, [bos] + toks)
            cands += [(score + lp, k, v) for v, lp in enumerate(logp)]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))  # best first; ties by beam, then token
        new = []
        for score, k, v in cands[:width]:
            toks, _, done = beams[k]
            new.append((toks + [v], score, done or v == eos))
        beams = new
    def norm(b):  # GNMT length penalty; the length counts tokens up to and with end-of-sequence
        length = next((i + 1 for i, t in enumerate(b[0]) if t == eos), len(b[0]))
        return b[1] / ((5.0 + length) / 6.0) ** alpha
    best = max(beams, key=norm)
    return best[0], norm(best)


def test_greedy_equals_step_by_step_decoding(model):
    gen, inf, ds = model
    out = _decode(gen, ds, beam=1)
    # Not a trivial model: rows differ and do not all end at once.
    assert len({tuple(r) for r in out["tokens"].tolist()}) > 1
    for i in range(len(ds)):
        src, n = ds.arrays["src"][i], int(ds.arrays["src_len"][i])
        toks, done = [], False
        for _ in range(7):
            if done:
                toks.append(T.PAD)
                continue
            toks.append(int(np.argmax(_next_logp(inf, src, n, [T.BOS] + toks))))
            done = toks[-1] == T.EOS
        assert out["tokens"][i].tolist() == toks


@pytest.mark.parametrize("width", [2, 3])
def test_beam_search_equals_numpy_beam_search(model, width):
    gen, inf, ds = model
    out = _decode(gen, ds, beam=width)
    for i in range(len(ds)):
        toks, score = numpy_beam_search(inf, ds.arrays["src"][i], int(ds.arrays["src_len"][i]), width)
        assert out["tokens"][i].tolist() == toks
        assert out["scores"][i] == pytest.approx(score, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 50.0, 1000.0])
def test_the_length_penalty_ranks_hypotheses_at_any_alpha(alpha):
    """((L + 5) / 6) ** alpha overflowed float32 for a large alpha: every normalised score became
    -0, and the best was beam 0 (the best raw score), the opposite of what alpha asks."""
    from compiler.generate import length_normalised_best

    g = Graph(float_dtype="float32")
    scores, lengths = g.add_input("scores", "float32", (2, 3)), g.add_input("lengths", "float32", (2, 3))
    a = g.add_input("alpha", "float32", ())
    best, norm = length_normalised_best(g, scores, lengths, a)
    run = Runner(emit_model(g, [("scores", scores), ("lengths", lengths), ("alpha", a)], [("best", best), ("norm", norm)]))
    s = np.array([[-1.0, -1.5, -4.0], [-2.0, -0.0, -3.0]], np.float32)
    n = np.array([[2.0, 3.0, 60.0], [4.0, 1.0, 9.0]], np.float32)
    out = run({"scores": s, "lengths": n, "alpha": np.asarray(alpha, np.float32)})
    with np.errstate(divide="ignore"):  # (in logs: the powers overflow float64 too at alpha 1000)
        magnitude = np.log(-s.astype(np.float64)) - alpha * np.log((n + 5.0) / 6.0)
    assert out["best"][:, 0].tolist() == np.argmin(magnitude, axis=-1).tolist()
    np.testing.assert_allclose(out["norm"], -np.exp(magnitude), rtol=1e-5, atol=1e-37)  # (float32 underflows)
    if alpha == 1000.0:
        assert out["best"][:, 0].tolist() == [2, 1]  # the longest of row 0; row 1's probability-1 beam


def test_a_large_length_penalty_never_picks_a_beam_the_search_dropped(tmp_path):
    """Beams past the width, or padding the first step of a beam wider than the vocabulary, hold a
    score of -1e9 and grow as long as max_len: at alpha 1000 that length outweighed the score, and
    greedy decoding of "5" returned such a beam, ending in a <pad> where the search had <eos>."""
    spec = load(os.path.join(ROOT, "models", "dates_attention.yaml"), [
        "train.data.options.n=2000", "generate.beam_width=20", "dims.H=32", "dims.A=32"])  # 20 beams, 14 tokens
    result = train(spec, run_dir=str(tmp_path / "run"), steps=60, threads=1, device="cpu")
    gen, inf = str(tmp_path / "gen.onnx"), str(tmp_path / "infer.onnx")
    export(result.run_dir, gen, graph="generate")
    export(result.run_dir, inf, graph="infer")
    src = T.encode_source("5", T.load_dates(n=1).meta)
    out = predict(gen, {"src": src[None], "src_len": np.asarray([1]), "beam_width": np.asarray(1), "max_len": np.asarray(13),
                        "length_penalty": np.asarray(1000.0, dtype=np.float32)})
    greedy = predict(gen, {"src": src[None], "src_len": np.asarray([1]), "beam_width": np.asarray(1),
                           "max_len": np.asarray(13), "length_penalty": np.asarray(0.0, dtype=np.float32)})
    # width 1 keeps one hypothesis: whatever alpha is, it is the greedy one
    assert out["tokens"].tolist() == greedy["tokens"].tolist()
    toks, _ = numpy_beam_search(inf, src, 1, 1, max_len=13, alpha=0.0)
    assert out["tokens"][0].tolist() == toks


def test_beam_width_one_is_greedy(model):
    gen, inf, ds = model
    a = _decode(gen, ds, beam=1)
    toks = [numpy_beam_search(inf, ds.arrays["src"][i], int(ds.arrays["src_len"][i]), 1)[0] for i in range(len(ds))]
    assert a["tokens"].tolist() == toks
    # Every row is padded after its first end-of-sequence.
    for row in a["tokens"]:
        row = row.tolist()
        if T.EOS in row:
            assert all(t == T.PAD for t in row[row.index(T.EOS) + 1:])


def test_a_plain_onnxruntime_user_s_beam_width_outside_the_range_is_the_nearest_one(model):
    """The graph reads a width below 1 as 1 and one above generate.beam_width as that width
    (flowgrad's predict refuses both): at 0 no beam survived, and onnxruntime returned the
    dead beams' tokens with scores of -4e8."""
    import onnxruntime as ort

    gen, _, ds = model
    s = ort.InferenceSession(gen, providers=["CPUExecutionProvider"])
    feeds = {"src": ds.arrays["src"], "src_len": ds.arrays["src_len"], "max_len": np.asarray(7),
             "length_penalty": np.asarray(0.6, dtype=np.float32)}
    run = lambda width: s.run(None, {**feeds, "beam_width": np.asarray(width)})  # noqa: E731
    for low, high in ((0, 1), (-5, 1), (K + 2, K)):
        for a, b in zip(run(low), run(high)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", ["dot_attention", "additive_attention"])
def test_masked_positions_get_zero_weight_and_zero_gradient(op):
    rng = np.random.default_rng(0)
    g = Graph(float_dtype="float64")
    q = g.add_input("q", "float64", (2, 4))
    k = g.add_input("k", "float64", (2, 5, 4))
    v = g.add_input("v", "float64", (2, 5, 3))
    m = g.add_input("m", "float64", (2, 5))
    extra = []
    if op == "additive_attention":
        extra = [g.add_input(n, "float64", s) for n, s in (("W", (4, 6)), ("U", (4, 6)), ("a", (6,)))]
    ctx, w = g.apply(op, q, k, v, m, *extra)
    loss = g.apply("sum", ctx * g.const(rng.normal(size=(2, 3)))) + g.apply("sum", w * g.const(rng.normal(size=(2, 5))))
    gk, gv = grad([loss], [k, v])
    inputs = [("q", q), ("k", k), ("v", v), ("m", m)] + [(x.name, x) for x in extra]
    model = emit_model(g, inputs, [("w", w), ("gk", gk), ("gv", gv)])
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=np.float64)
    feeds = {"q": rng.normal(size=(2, 4)), "k": rng.normal(size=(2, 5, 4)), "v": rng.normal(size=(2, 5, 3)), "m": mask}
    feeds.update({x.name: rng.normal(size=x.shape) for x in extra})
    out = Runner(model)(feeds)
    off = mask == 0
    assert np.all(out["w"][off] == 0.0)
    assert np.all(out["gk"][off] == 0.0) and np.all(out["gv"][off] == 0.0)
    np.testing.assert_allclose(out["w"].sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(out["w"][~off] > 0)


def test_beam_widths_outside_the_compiled_range_and_empty_sources_are_errors(model):
    from runtime.export import translate
    from spec.errors import FlowgradError

    gen, _, _ = model
    for width, words in ((0, "of at least 1, got 0"), (K + 1, f"at most {K}, got {K + 1}")):
        with pytest.raises(FlowgradError, match=f"^beam_width must be (an integer )?{words}"):
            translate(gen, ["abc"], beam_width=width)
    with pytest.raises(FlowgradError, match="beam_width must be an integer"):  # (it decoded with 2 beams)
        translate(gen, ["abc"], beam_width=2.5)
    with pytest.raises(FlowgradError, match="empty"):
        translate(gen, [""])
    for bad in ("long", -1.0, float("nan"), float("inf")):  # a string was float()'s ValueError; the others decoded
        with pytest.raises(FlowgradError, match="^length_penalty must be 0 or more and finite"):
            translate(gen, ["abc"], length_penalty=bad)
    # (1e39 is 0 or more and finite, as the error said it was not: it is beyond the float32 input)
    with pytest.raises(FlowgradError, match=r"^length_penalty must be at most 3.40282e\+38, got 1e\+39"):
        translate(gen, ["abc"], length_penalty=1e39)
    for bad in (2.0, -1):  # 2.0 was taken for max_len, as generator_feeds took count=2.0
        with pytest.raises(FlowgradError, match="^max_len must be an integer of at least 0"):
            translate(gen, ["abc"], max_len=bad)
    from spec.errors import ExportError

    for texts, kwargs, words in ((["abc"], {"beam_width": K + 1}, "beam_width must be"),  # (predict's DataError)
                                 (["ab1"], {}, "not in the source vocabulary"),  # (DataErrors, missed by
                                 (["abcdefghijk"], {}, "more than the 6 the model takes"),  # except ExportError)
                                 (["abc", 5], {}, "texts must be a list of strings")):
        with pytest.raises(ExportError, match=words):
            translate(gen, texts, **kwargs)
    assert len(translate(gen, ["abc"], max_len=3)) == 1
    assert translate(gen, ["abc", "de"], max_len=0) == ["", ""]  # (onnxruntime's Scan failed: see test_generate)
    assert translate(gen, []) == []  # (np.stack raised a raw ValueError)


def test_a_translator_without_generate_max_len_decodes_up_to_its_target_length(model, tmp_path, monkeypatch):
    """docs/schema.md, generate.max_len: its default is 200 for a sampler, but a translator
    without one decodes up to its dataset's target length."""
    import onnx

    from runtime import export as E

    gen, _, _ = model
    m = onnx.load(gen)
    kept = [p for p in m.metadata_props if p.key != "flowgrad.generate.max_len"]
    del m.metadata_props[:]
    m.metadata_props.extend(kept)
    onnx.save(m, str(tmp_path / "gen.onnx"))
    fed, real = [], E.predict
    monkeypatch.setattr(E, "predict", lambda path, feeds, *a, **k: fed.append(int(feeds["max_len"])) or real(path, feeds, *a, **k))
    E.translate(str(tmp_path / "gen.onnx"), ["abc"])
    assert fed == [E.model_metadata(m)["tgt_len"]] and fed[0] != 200


def test_beam_search_refuses_a_temperature_and_a_seed(model):
    """Beam search draws nothing: predict --text with --temperature or --seed decoded as if
    neither was given, where a sampler's --beam-width is refused."""
    from runtime.export import generate_text
    from spec.errors import FlowgradError

    gen, _, _ = model
    for kwargs, words in (({"temperature": 0.5}, "a temperature"), ({"seed": 3}, "a seed")):
        with pytest.raises(FlowgradError, match=f"beam search: {words}"):
            generate_text(gen, "abc", **kwargs)
    assert generate_text(gen, "abc", beam_width=1) == generate_text(gen, "abc", beam_width=1, threads=1)


def test_predict_text_names_its_flags_where_the_api_names_keywords(model):
    """flowgrad predict --text --beam-width 9 was told 'beam_width must be at most 4', the API's
    keyword, where every other refusal of the CLI names its flags."""
    from typer.testing import CliRunner

    from cli import app
    from runtime.export import generate_text
    from spec.errors import FlowgradError

    gen, _, _ = model
    res = CliRunner().invoke(app, ["predict", gen, "--text", "abc", "--beam-width", "99", "--device", "cpu"])
    assert res.exit_code == 1 and res.output.startswith("error: --beam-width must be at most"), res.output
    with pytest.raises(FlowgradError, match="^beam_width must be at most"):
        generate_text(gen, "abc", beam_width=99)


def test_predict_text_takes_a_length_penalty_for_beam_search(model):
    """flowgrad predict --text decoded with the spec's length penalty alone (0.6), which the API's
    translate() and the export's input let a user set: --length-penalty gives it, as
    generate_text(length_penalty=) does, and a sampler or the other verbs refuse it."""
    from typer.testing import CliRunner

    from cli import app
    from runtime.export import generate_text, translate
    from spec.errors import FlowgradError

    gen, _, _ = model
    for penalty in (0.0, 2.0):
        res = CliRunner().invoke(app, ["predict", gen, "--text", "abc", "--length-penalty", str(penalty), "--device", "cpu"])
        assert res.exit_code == 0, res.output
        assert res.stdout.strip() == translate(gen, ["abc"], length_penalty=penalty)[0] \
            == generate_text(gen, "abc", length_penalty=penalty)
    res = CliRunner().invoke(app, ["predict", gen, "--text", "abc", "--length-penalty", "-1", "--device", "cpu"])
    assert res.exit_code == 1 and res.output.startswith("error: --length-penalty must be 0 or more"), res.output
    res = CliRunner().invoke(app, ["predict", gen, "--data", "x.npz", "--length-penalty", "1"])
    assert res.exit_code == 1 and "--length-penalty is for --text" in res.output, res.output
    with pytest.raises(FlowgradError, match="^length_penalty must be 0 or more"):
        generate_text(gen, "abc", length_penalty=float("nan"))


def test_raw_decoder_inputs_outside_their_ranges_are_errors(model):
    from spec.errors import FlowgradError

    gen, _, ds = model
    src, src_len = ds.arrays["src"][:2], ds.arrays["src_len"][:2]
    feeds = {"src": src, "src_len": src_len, "beam_width": np.asarray(1), "max_len": np.asarray(3),
             "length_penalty": np.asarray(0.6, dtype=np.float32)}
    predict(gen, feeds)
    for change, words in (({"src_len": np.asarray([-3, 2])}, "src_len"), ({"beam_width": np.asarray(0)}, "beam_width"),
                          ({"src": src * 0 + 999}, "vocabulary"), ({"max_len": np.asarray(-1)}, "max_len")):
        with pytest.raises(FlowgradError, match=words):
            predict(gen, {**feeds, **change})


def test_a_decoder_trained_on_an_npz_file_checks_its_inputs_too(tmp_path):
    """A run trained on an .npz carries no vocabulary, and predict took that for a model that
    is not a decoder: beam width 0 decoded nothing but dead beams (scores near -1e9), a beam
    wider than the compiled one decoded silently with the compiled one, and max_len 0 ended
    with onnxruntime's message about a Scan (it decodes nothing now, as any decoder's does)."""
    from spec.errors import FlowgradError

    ds = T.load_reverse(n=40, seed=1, max_len=6)
    np.savez(tmp_path / "data.npz", **ds.arrays)
    spec = load(os.path.join(ROOT, "models", "reverse_attention.yaml"), [
        "dims.H=4", "dims.E=4", "dims.A=4", f"train.data={{path: {tmp_path / 'data.npz'}, valid: 0.1}}",
        f"generate.beam_width={K}"])
    result = train(spec, run_dir=str(tmp_path / "run"), steps=1, threads=1, device="cpu")
    gen = str(tmp_path / "gen.onnx")
    export(result.run_dir, gen)
    feeds = {"src": ds.arrays["src"][:2], "src_len": ds.arrays["src_len"][:2], "beam_width": np.asarray(1),
             "max_len": np.asarray(3), "length_penalty": np.asarray(0.6, dtype=np.float32)}
    assert predict(gen, feeds)["tokens"].shape == (2, 3)
    for change, words in (({"beam_width": np.asarray(0)}, "'beam_width' must be an integer of at least 1, got 0"),
                          ({"beam_width": np.asarray(K + 1)}, f"'beam_width' must be at most {K}, got {K + 1}"),
                          ({"max_len": np.asarray(-1)}, "'max_len' holds negative values"),
                          # (a negative penalty, refused by translate(), decoded favouring short beams)
                          ({"length_penalty": np.asarray(-1.0, np.float32)}, "'length_penalty' must be 0 or more and finite, got -1.0")):
        with pytest.raises(FlowgradError, match=words):
            predict(gen, {**feeds, **change})
    assert predict(gen, {**feeds, "max_len": np.asarray(0)})["tokens"].shape == (2, 0)


def test_decoders_trained_on_token_ids_are_told_to_take_ids_for_text(tmp_path):
    """A translator trained on token ids given a text (flowgrad predict --text, generate_text) was
    told it 'is not a text generator (no prompt input or vocabulary)', with the hint to export a spec
    with a 'generate' section trained on text, which it was; translate() pointed only at a bundled
    dataset, and a language model of ids was told to add the generate section it has. Each is told
    it was trained on token ids, and which inputs predict() takes instead."""
    from runtime.export import generate_text, translate
    from spec.errors import ExportArgumentError

    rng = np.random.default_rng(0)
    s2s = {"src": rng.integers(1, 6, (8, 5)), "src_len": rng.integers(1, 6, 8), "tgt_in": rng.integers(0, 6, (8, 4)),
           "tgt": rng.integers(0, 6, (8, 4)), "tgt_mask": np.ones((8, 4), np.float32)}
    lm = {"x": rng.integers(0, 7, (8, 5)), "y": rng.integers(0, 7, (8, 5))}
    models = {}
    for name, path, data, sets in (
            ("s2s", "reverse_attention.yaml", s2s, ["dims.SV=6", "dims.TV=6", "generate.bos=5", "generate.eos=4",
                                                   "generate.pad=3", "dims.A=4"]),
            ("lm", "char_lstm.yaml", lm, ["dims.V=7"])):
        spec = load(os.path.join(ROOT, "models", path), sets + ["dims.H=4", "dims.E=4"])
        run = train(spec, data=data, valid=0.25, run_dir=str(tmp_path / name), steps=1, threads=1, device="cpu",
                    progress=False).run_dir
        models[name] = export(run, str(tmp_path / f"{name}.onnx"))["path"]
    words = "was trained on token ids: it carries no (source )?vocabulary"
    for call, inputs in ((lambda: generate_text(models["s2s"], "abc"), "src, src_len, beam_width, max_len and length_penalty"),
                         (lambda: translate(models["s2s"], ["abc"]), "src, src_len, beam_width, max_len and length_penalty"),
                         (lambda: generate_text(models["lm"], "abc"), "prompt, max_len, temperature and seed")):
        with pytest.raises(ExportArgumentError, match=words) as e:
            call()
        assert e.value.hint == f"give it ids with predict() (flowgrad predict --data): {inputs}"
    assert predict(models["s2s"], {"src": s2s["src"][:2], "src_len": s2s["src_len"][:2], "beam_width": np.asarray(2),
                                   "max_len": np.asarray(4), "length_penalty": np.asarray(0.6, np.float32)})["tokens"].shape == (2, 4)


def test_a_whole_float_max_len_of_the_spec_is_the_default_translate_takes(model, tmp_path):
    """translate() without max_len refused a spec's generate.max_len: 7.0, which the schema takes
    as an integer (as generate_text did)."""
    import onnx

    from runtime.export import translate

    gen, _, _ = model
    m = onnx.load(gen)
    for p in m.metadata_props:
        if p.key == "flowgrad.generate.max_len":
            p.value = "7.0"
    onnx.save(m, str(tmp_path / "g.onnx"))
    assert translate(str(tmp_path / "g.onnx"), ["abc"]) == translate(gen, ["abc"])


def test_a_float16_beam_search_builds_without_overflow():
    """Dead beams start far below any real score: -1e9 rounded to -inf in float16, with NumPy's
    overflow warning at every build of a float16 translator (export, check, compile)."""
    import warnings

    from compiler.generate import build_generator

    spec = load(os.path.join(os.path.dirname(__file__), "..", "models", "reverse_attention.yaml"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_generator(spec, "float16")


def _greedy_translation_equals_the_inference_graph(text: str, seed: int = 3, steps: int = 6, lengths: str | None = None):
    """The spec's beam search at width 1 (with its initial weights) against the inference graph
    run on each source alone and the whole prefix at each step, taking the most likely next
    token: the same tokens, and a score that is their log-probability (length_penalty 0), which
    tells a wrong state apart even where an untrained model repeats one token. `lengths`: an input
    that counts the prefix's tokens, given to the inference graph (the prefix padded to 16)."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    cm = compile_spec(spec_from_text(text, "s2s.yaml"), "float64", graphs=("infer", "generate"))
    state = cm.initial_state(seed)

    def run(kind, feeds):
        graph = cm.graphs[kind]
        return Runner(graph.model)({**feeds, **{i.name: state[i.name] for i in graph.inputs if i.name in state}})

    src = np.asarray([[3, 5, 4, 6], [7, 3, 0, 0], [6, 6, 5, 0]])
    src_len = np.asarray([4, 2, 3])
    out = run("generate", {"src": src, "src_len": src_len, "beam_width": np.asarray(1), "max_len": np.asarray(steps),
                           "length_penalty": np.asarray(0.0)})
    for i in range(len(src)):
        seq, logp = [T.BOS], 0.0
        while len(seq) <= steps and seq[-1] != T.EOS:
            feeds = {"src": src[i:i + 1], "src_len": src_len[i:i + 1], "tgt_in": np.asarray([seq])}
            if lengths:
                feeds.update(tgt_in=np.asarray([seq + [T.PAD] * (16 - len(seq))]), **{lengths: np.asarray([len(seq)])})
            probs = run("infer", feeds)["probs"][0, len(seq) - 1]
            seq.append(int(np.argmax(probs)))
            logp += float(np.log(probs[seq[-1]]))
        toks = seq[1:] + [T.PAD] * (steps + 1 - len(seq))  # padded after end-of-sequence
        assert out["tokens"][i].tolist() == toks
        assert out["scores"][i] == pytest.approx(logp, rel=1e-9)


INIT_DECODER = """\
flowgrad: 1
name: init_decoder
dims: {SV: 8, TV: 8, E: 4, H: 5}
inputs:
  src: {shape: [N, S], dtype: int64}
  src_len: {shape: [N], dtype: int64}
  tgt_in: {shape: [N, T], dtype: int64}
  tgt: {shape: [N, T], dtype: int64}
graph:
  xe: embedding(src, SV, E)
  enc, last: gru(xe, H, lengths=src_len, return_state=true)
  ys: embedding(tgt_in, TV, E)
  dec: %s
  logits: dense(dec, TV)
outputs:
  probs: softmax(logits)
generate: {input: tgt_in, logits: logits, bos: 1, eos: 2, max_len: 6}
loss: cross_entropy(logits, tgt)
"""


@pytest.mark.parametrize("decoder", ["gru(ys, H, init=[last])", "rnn(ys, H, init=[tanh(last)])",
                                     "lstm(ys, H, init=[last, zeros(N, H)])"])
def test_a_decoder_layer_started_from_the_encoder_carries_its_state_from_token_to_token(decoder):
    """A decoder written as a recurrent layer started from the encoder's final state
    (dec: lstm(ys, H, init=[h0, c0])) restarted from that state at every generated token: the
    exported beam search (and a language model's sampler, for a layer with init=) decoded other
    tokens than the model predicts from the prefix. init= is where the first token starts."""
    _greedy_translation_equals_the_inference_graph(INIT_DECODER % decoder)


STACKED_SEQ2SEQ = """\
flowgrad: 1
name: stacked_seq2seq
dims: {SV: 29, TV: 29, E: 8, H: 16}
inputs:
  src: {shape: [N, S], dtype: int64}
  src_len: {shape: [N], dtype: int64}
  tgt_in: {shape: [N, T], dtype: int64}
  tgt: {shape: [N, T], dtype: int64}
  tgt_mask: {shape: [N, T]}
graph:
  xe: embedding(src, SV, E)
  enc, h, c: lstm(xe, H, layers=2, lengths=src_len, return_state=all)
  ye: embedding(tgt_in, TV, E)
  dec: lstm(ye, H, layers=2, dropout=0.1, init=[h, c])
  logits: dense(dec, TV)
outputs:
  probs: softmax(logits)
generate: {input: tgt_in, logits: logits, bos: 1, eos: 2, max_len: 6}
loss: sum(cross_entropy(logits, tgt, reduction='none') * tgt_mask) / sum(tgt_mask)
train:
  data: {dataset: reverse, options: {n: 64, max_len: 5}}
  optimizer: {adam: {lr: 0.01}}
  batch_size: 32
"""


def test_a_two_layer_lstm_encoder_decoder_carries_every_layers_states():
    """The classic seq2seq of stacked LSTMs: the encoder's final h and c of every layer
    (return_state=all, [2, N, H] each) start the decoder's layers (init=[h, c]). init= of a
    2-layer lstm was refused, and the layers had to be written as entries of their own. It
    trains on the bundled reversal data with a falling loss, whose gradient reaches both of the
    encoder's layers through the states alone, and its beam search carries each decoder layer's
    state from token to token as the inference graph computes it."""
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.trainer import Trainer
    from spec import spec_from_text

    spec = spec_from_text(STACKED_SEQ2SEQ, "s2s.yaml")
    cm = compile_spec(spec)
    batch = real_batch(spec, cm, 32, 0)
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    before = {p: trainer.state[p].numpy().copy() for p in ("enc_h_c.l1.U", "enc_h_c.l2.U")}
    losses = [trainer.train_step("main", batch, 0.01, step)["loss"] for step in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    for p, was in before.items():  # the encoder's output is not read: its layers learn from the states
        assert np.abs(trainer.state[p].numpy() - was).max() > 1e-4, p
    _greedy_translation_equals_the_inference_graph(STACKED_SEQ2SEQ.replace("dropout=0.1, ", ""))


BIDIRECTIONAL_SEQ2SEQ = STACKED_SEQ2SEQ.replace(
    "  enc, h, c: lstm(xe, H, layers=2, lengths=src_len, return_state=all)\n",
    "  enc, h, c: bidirectional(lstm, xe, H, lengths=src_len, return_state=true)\n").replace(
    "  dec: lstm(ye, H, layers=2, dropout=0.1, init=[h, c])\n", "  dec: lstm(ye, 2 * H, init=[h, c])\n")


def test_a_decoder_started_from_a_bidirectional_encoders_states():
    """A seq2seq decoder starts from a bidirectional encoder's final states: return_state=true gives
    the top layer's two directions concatenated [N, 2H] (the forward one's at each source's last
    token, the reverse one's at its first), a decoder of 2H units' init=. bidirectional() refused
    return_state ("returns the merged sequence only"). It trains with a falling loss whose gradient
    reaches both directions through the states alone, and its beam search carries the decoder's
    state from token to token as the inference graph computes it."""
    from compiler.training import compile_spec
    from runtime.bench import real_batch
    from runtime.trainer import Trainer
    from spec import spec_from_text

    assert "bidirectional(lstm" in BIDIRECTIONAL_SEQ2SEQ and "lstm(ye, 2 * H" in BIDIRECTIONAL_SEQ2SEQ
    spec = spec_from_text(BIDIRECTIONAL_SEQ2SEQ, "s2s.yaml")
    cm = compile_spec(spec)
    batch = real_batch(spec, cm, 32, 0)
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    before = {p: trainer.state[p].numpy().copy() for p in ("enc_h_c.fw.U", "enc_h_c.bw.U")}
    losses = [trainer.train_step("main", batch, 0.01, step)["loss"] for step in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    for p, was in before.items():  # the encoder's output is not read: both directions learn from the states
        assert np.abs(trainer.state[p].numpy() - was).max() > 1e-4, p
    _greedy_translation_equals_the_inference_graph(BIDIRECTIONAL_SEQ2SEQ)


def test_an_attention_decoder_started_from_its_bidirectional_encoders_states():
    """models/dates_attention.yaml starts its decoder from tanh(dense(mean of the encoder's outputs));
    written with the encoder's final states instead (enc, eh: bidirectional(gru, ..., return_state=true),
    the two directions [N, 2H], and s0: dense(eh, H, act=tanh)), as Bahdanau et al. start theirs from
    the reverse direction's, its beam search decodes what the inference graph predicts."""
    with open(os.path.join(ROOT, "models", "dates_attention.yaml")) as f:
        text = f.read()
    for old, new in (("E: 32, H: 64, A: 64", "E: 4, H: 5, A: 4"),
                     ("  enc: bidirectional(gru, embedding(src, SV, E), H, lengths=src_len)\n",
                      "  enc, eh: bidirectional(gru, embedding(src, SV, E), H, lengths=src_len, return_state=true)\n"),
                     (next(line for line in text.splitlines(keepends=True) if line.startswith("  s0: ")),
                      "  s0: dense(eh, H, act=tanh)\n")):
        assert old in text, old
        text = text.replace(old, new)
    _greedy_translation_equals_the_inference_graph(text)


LABELS_FIRST = """\
flowgrad: 1
name: labels_first
dims: {SV: 8, TV: 8, E: 4, H: 5, A: 4}
inputs:
  tgt: {shape: [N, T], dtype: int64}
  tgt_mask: {shape: [N, T]}
  tgt_in: {shape: [N, T], dtype: int64}
  src: {shape: [N, S], dtype: int64}
  src_len: {shape: [N], dtype: int64}
blocks:
  decode:
    in: [y_t, s]
    graph:
      ctx, alpha: additive_attention(s, enc, A, mask=src_mask)
      s2: gru_cell(concat(y_t, ctx, axis=-1), s)
      out: concat(s2, ctx, axis=-1)
    out: [s2, out]
graph:
  src_mask: cast(unsqueeze(positions(src, axis=1), axes=0) < unsqueeze(src_len, axes=1), 'float32')
  enc: bidirectional(gru, embedding(src, SV, E), H, lengths=src_len)
  s0: dense(sum(enc * unsqueeze(src_mask, axes=-1), axis=1), H, act=tanh)
  states, outs: scan(decode, over=embedding(tgt_in, TV, E), init=[%s])
  logits: dense(outs, TV)
  token_loss: cross_entropy(logits, tgt, reduction='none') * tgt_mask
outputs:
  probs: softmax(logits)
generate: {input: tgt_in, logits: logits, bos: 1, eos: 2, max_len: 6}
loss: sum(token_loss) / sum(tgt_mask)
"""


def test_a_decoder_given_the_targets_lengths_decodes_from_its_source():
    """A decoder trained on padded targets with their lengths (dec: gru(ys, H, lengths=tgt_len)) was
    refused by check and export, 'generate: the logits read the tokens' positions', with the hint to
    leave out position embeddings it did not have (the mask lengths= makes compares positions with
    the lengths); declared before src, tgt_len was also taken for the source. Each token decoding
    feeds is real, as the lengths say: the decoder takes src, src_len and the decoding inputs, and
    greedy decoding equals the inference graph run on the prefix padded with its length."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    text = INIT_DECODER.replace("inputs:\n", "inputs:\n  tgt_len: {shape: [N], dtype: int64}\n") % \
        "gru(ys, H, init=[last], lengths=tgt_len)"
    cm = compile_spec(spec_from_text(text, "s2s.yaml"), graphs=("generate",))
    params = cm.initial_state(0)
    assert {i.name for i in cm.graphs["generate"].inputs if i.name not in params} == \
        {"src", "src_len", "beam_width", "max_len", "length_penalty"}
    _greedy_translation_equals_the_inference_graph(text, lengths="tgt_len")


def test_a_translator_whose_labels_are_declared_first_decodes_from_its_source():
    """Beam search took its rows from the first input other than generate.input that any graph
    entry mentions: with the labels declared before the source and a per-token loss written as a
    graph entry, that was tgt, which the exported decoder then needed fed (flowgrad predict --text:
    'the model needs input(s) tgt'). It reads the inputs the logits are computed from."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    cm = compile_spec(spec_from_text(LABELS_FIRST % "s0", "s2s.yaml"), "float64", graphs=("generate",))
    params = cm.initial_state(0)
    fed = {i.name for i in cm.graphs["generate"].inputs if i.name not in params}
    assert fed == {"src", "src_len", "beam_width", "max_len", "length_penalty"}
    _greedy_translation_equals_the_inference_graph(LABELS_FIRST % "s0")


def test_a_decoder_blocks_own_names_are_not_the_specs_inputs():
    """A decoder block whose step input is named like the labels (in: [tgt, s]) was taken to read
    the input tgt, which beam search then took for its source: the exported decoder needed tgt fed."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    text = (LABELS_FIRST % "s0").replace("in: [y_t, s]", "in: [tgt, s]").replace("concat(y_t, ctx", "concat(tgt, ctx")
    cm = compile_spec(spec_from_text(text, "s2s.yaml"), "float64", graphs=("generate",))
    params = cm.initial_state(0)
    assert {i.name for i in cm.graphs["generate"].inputs if i.name not in params} == \
        {"src", "src_len", "beam_width", "max_len", "length_penalty"}


def test_a_decoder_blocks_own_parameter_is_not_the_specs_input():
    """A decoder block's parameter named like the labels (params: {tgt: ...}) was taken, as its
    inputs were, for the input tgt, which beam search then took for its source."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    text = (LABELS_FIRST % "s0").replace("    in: [y_t, s]\n", "    in: [y_t, s]\n    params:\n      tgt: {shape: [H], init: zeros}\n") \
        .replace("s2: gru_cell(concat(y_t, ctx, axis=-1), s)", "s2: gru_cell(concat(y_t, ctx, axis=-1), s) + tgt")
    cm = compile_spec(spec_from_text(text, "s2s.yaml"), "float64", graphs=("generate",))
    params = cm.initial_state(0)
    assert {i.name for i in cm.graphs["generate"].inputs if i.name not in params} == \
        {"src", "src_len", "beam_width", "max_len", "length_penalty"}


@pytest.mark.parametrize("over", ["embedding(tgt_in, TV, E)", "zeros(N, 1, E) + embedding(tgt_in, TV, E)"])
def test_zeros_sized_by_the_batch_read_no_labels_in_the_inference_and_decoding_graphs(over):
    """zeros(N, H) took N from the first declared input with that dim: with the labels declared
    first, the inference graph and the exported decoder of a decoder started from zeros needed tgt
    fed for its row count alone ('the model needs input(s) tgt'). N comes from an input the graph
    reads anyway, whichever is lowered first (a zeros(N, ...) before the embedding of tgt_in)."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    init = "zeros(N, H) + s0"
    text = (LABELS_FIRST % init).replace("over=embedding(tgt_in, TV, E)", f"over={over}")
    cm = compile_spec(spec_from_text(text, "s2s.yaml"), "float64", graphs=("infer", "generate"))
    params = cm.initial_state(0)
    fed = {kind: {i.name for i in cm.graphs[kind].inputs if i.name not in params} for kind in ("infer", "generate")}
    assert fed == {"infer": {"tgt_in", "src", "src_len"},
                   "generate": {"src", "src_len", "beam_width", "max_len", "length_penalty"}}
    _greedy_translation_equals_the_inference_graph(text)


def test_a_translator_with_int32_tokens_decodes_int32_tokens():
    """A beam search over an int32 token input returned int64 tokens: they follow the token input's
    int type (the same ids as an int64 translator's), and the graph passes onnx's checker with its
    shape inference."""
    import onnx

    from compiler.training import compile_spec
    from spec import spec_from_text

    text = INIT_DECODER % "gru(ys, H, init=[last])"
    small = text.replace("tgt_in: {shape: [N, T], dtype: int64}", "tgt_in: {shape: [N, T], dtype: int32}")
    assert small != text
    feeds = {"src": np.asarray([[3, 5, 4, 6], [7, 3, 0, 0]]), "src_len": np.asarray([4, 2]), "beam_width": np.asarray(2),
             "max_len": np.asarray(5), "length_penalty": np.asarray(0.6)}
    outs = []
    for t in (text, small):
        cm = compile_spec(spec_from_text(t, "s2s.yaml"), "float64", graphs=("generate",))
        model = cm.graphs["generate"].model
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(model, strict_mode=True), full_check=True)
        state = cm.initial_state(3)
        outs.append(Runner(model)({**feeds, **{i.name: state[i.name] for i in cm.graphs["generate"].inputs
                                               if i.name in state}})["tokens"])
    assert outs[0].dtype == np.int64 and outs[1].dtype == np.int32
    assert outs[1].tolist() == outs[0].tolist()
