"""Sampling inside the exported graph of a language model."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import onnx
import pytest

from runtime.api import export, load, train
from runtime.export import generate_text, load_model_safely, model_metadata, predict
from runtime.datasets_text import encode_text
from spec.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    spec = load(os.path.join(ROOT, "models", "char_lstm.yaml"),
                ["dims.H=32", "dims.E=16", "train.data.options.seq_len=16"])
    result = train(spec, run_dir=str(tmp / "run"), steps=30, threads=1, device="cpu")
    gen = tmp / "gen.onnx"
    probs = tmp / "probs.onnx"
    export(result.run_dir, str(gen))
    export(result.run_dir, str(probs), graph="infer")
    return str(gen), str(probs)


def test_greedy_generation_matches_step_by_step_decoding(exported):
    gen, probs = exported
    meta = model_metadata(load_model_safely(gen))
    text_meta = {"vocab": meta["vocab"], "level": meta["level"], "unk": meta.get("unk")}
    prompt = encode_text("The ", text_meta)
    out = predict(gen, {"prompt": prompt, "max_len": np.asarray(12), "temperature": np.asarray(0.0, np.float32),
                        "seed": np.asarray(0)})["tokens"]
    assert out.shape == (12,)
    # The same model without the loop: run the whole prefix, take the most likely next token.
    seq = list(prompt)
    for _ in range(12):
        p = predict(probs, {"x": np.asarray([seq], dtype=np.int64)})["probs"]
        seq.append(int(np.argmax(p[0, -1])))
    assert out.tolist() == seq[len(prompt):]


def test_sampling_is_seeded_and_uses_the_temperature(exported):
    gen, _ = exported
    a = generate_text(gen, "def ", max_len=40, temperature=1.0, seed=3)
    b = generate_text(gen, "def ", max_len=40, temperature=1.0, seed=3)
    c = generate_text(gen, "def ", max_len=40, temperature=1.0, seed=4)
    assert a == b and a != c
    assert len(a) == 40


def test_a_huge_temperature_samples_every_token_alike(exported):
    """A temperature near float32's largest value samples (almost) uniformly. The noise was
    scaled by the temperature and overflowed to inf above about 2e37, and argmax then took the
    first of several infs: the lowest token ids were drawn far more often than the others."""
    gen, _ = exported
    n, vocab = 2000, len(model_metadata(load_model_safely(gen))["vocab"])
    for temperature in (1e30, 3e38):
        tokens = predict(gen, {"prompt": np.asarray([5, 6]), "max_len": np.asarray(n),
                               "temperature": np.asarray(temperature, np.float32), "seed": np.asarray(1)})["tokens"]
        counts = np.bincount(tokens, minlength=vocab)
        chi2 = float(((counts - n / vocab) ** 2 / (n / vocab)).sum())  # about vocab - 1 = 96 when uniform
        assert chi2 < 2 * vocab, (temperature, chi2, counts[:5])


def test_a_float16_model_decodes_greedily_whatever_the_seed(tmp_path):
    """At temperature 0 the seed changes nothing. In a float16 graph the noise's 1e-20 guard
    was 0: a uniform draw of exactly 0 (one in 2048) made that token's noise -inf, times a
    temperature of 0 NaN, and argmax returned token 0 at such steps (seed 68, step 17 here)."""
    spec = load(os.path.join(ROOT, "models", "char_lstm.yaml"),
                ["dims.H=8", "dims.E=4", "train.data.options.seq_len=8", "train.optimizer={sgd: {lr: 0.1}}",
                 "train.dtype=float16"])
    result = train(spec, run_dir=str(tmp_path / "run"), steps=2, threads=1, device="cpu")
    export(result.run_dir, str(tmp_path / "gen.onnx"))
    tokens = [predict(str(tmp_path / "gen.onnx"), {"prompt": np.asarray([5, 6]), "max_len": np.asarray(20),
                                                    "temperature": np.asarray(0.0, np.float32),
                                                    "seed": np.asarray(seed)})["tokens"].tolist() for seed in (0, 68)]
    assert tokens[0] == tokens[1]


def test_sampled_ids_beyond_the_vocabulary_print_as_unk(tmp_path):
    """dims.V may exceed the text's vocabulary (training only needs ids below it), and the
    sampler can draw the extra ids: predict --text ended with an IndexError traceback."""
    spec = load(os.path.join(ROOT, "models", "char_lstm.yaml"),
                ["dims.H=8", "dims.E=4", "dims.V=120", "train.data.options.seq_len=8"])
    result = train(spec, run_dir=str(tmp_path / "run"), steps=1, threads=1, device="cpu")
    gen = str(tmp_path / "gen.onnx")
    export(result.run_dir, gen)
    meta = model_metadata(load_model_safely(gen))
    feeds = {"prompt": encode_text("hi", {**meta, "level": "char"}), "max_len": np.asarray(50),
             "temperature": np.asarray(50.0, np.float32), "seed": np.asarray(1)}
    tokens = predict(gen, feeds)["tokens"].tolist()
    vocab = meta["vocab"]
    assert max(tokens) >= len(vocab)  # (almost uniform over 120 ids)
    assert generate_text(gen, "hi", max_len=50, temperature=50.0, seed=1) == \
        "".join(vocab[i] if i < len(vocab) else "<unk>" for i in tokens)


def test_an_infinite_temperature_is_refused(exported):
    gen, _ = exported
    with pytest.raises(DataError, match="finite"):
        generate_text(gen, "def ", max_len=5, temperature=float("inf"))


def test_predict_refuses_negative_ids(exported):
    """Gather would read a negative id from the end of the table: refused, as in training data."""
    _, probs = exported
    with pytest.raises(DataError, match="negative values"):
        predict(probs, {"x": np.asarray([[3, -1, 2]], dtype=np.int64)})


def test_predict_takes_a_sampler_max_len_of_0_and_refuses_a_negative_one_and_a_negative_temperature(exported):
    """Raw inputs, as generate_text checks them: max_len 0 failed inside the Scan with
    onnxruntime's message, and predict refused it; it generates nothing now, as the graph does.
    A negative max_len (the graph reads it as 0) is refused as every negative count is, and a
    negative temperature sampled from the negated logits."""
    gen, _ = exported
    feeds = {"prompt": np.asarray([5, 6]), "max_len": np.asarray(3), "temperature": np.asarray(1.0, np.float32),
             "seed": np.asarray(0)}
    assert predict(gen, feeds)["tokens"].shape == (3,)
    empty = predict(gen, {**feeds, "max_len": np.asarray(0)})["tokens"]
    assert empty.shape == (0,) and empty.dtype == np.int64
    for change, words in (({"max_len": np.asarray(-1)}, "'max_len' holds negative values"),
                          ({"temperature": np.asarray(-1.0, np.float32)}, "'temperature' must be 0 or more and finite, got -1.0")):
        with pytest.raises(DataError, match=words):
            predict(gen, {**feeds, **change})


def test_predict_refuses_an_empty_prompt(exported):
    gen, _ = exported
    with pytest.raises(DataError, match="the prompt is empty"):
        predict(gen, {"prompt": np.zeros(0, np.int64), "max_len": np.asarray(5), "temperature": np.asarray(1.0, np.float32),
                      "seed": np.asarray(0)})


def test_a_seed_is_bounded_as_every_verbs_seed_is(exported):
    """A model's seed input keys its random streams and may hold any int64 (only ids and counts
    are >= 0), but seed= and --seed take 0 to 2**63 - 1 in every verb: predict --seed -1 sampled
    where train, gradcheck and plot samples refuse it, and seed=1.5 sampled with seed 1."""
    from typer.testing import CliRunner

    from cli import app
    from spec.errors import FlowgradError

    gen, _ = exported
    feeds = {"prompt": np.asarray([1, 2], np.int64), "max_len": np.asarray(3), "temperature": np.asarray(1.0, np.float32)}
    assert predict(gen, {**feeds, "seed": np.asarray(-3)})["tokens"].size == 3
    for bad in (-3, 1.5, True, 2**63):
        with pytest.raises(FlowgradError, match="^seed must be"):
            generate_text(gen, "def ", max_len=5, temperature=1.0, seed=bad)
    res = CliRunner().invoke(app, ["predict", gen, "--text", "def ", "--seed", "-1"])
    assert res.exit_code == 2 and "--seed" in res.output


def test_exported_files_hold_no_bit_shifts(exported):
    """The sampler's hash runs its shifts as float64 arithmetic in an exported file, so that
    onnxruntime's CUDA provider (it has no BitShift) runs the whole decoding loop."""
    from compiler.emit import all_nodes

    for path in exported:
        assert not any(n.op_type == "BitShift" for n in all_nodes(onnx.load(path).graph))


def test_exported_files_hold_no_unused_initializers(exported):
    """Rewriting the shifts left their uint32 amounts behind, and onnxruntime warned about
    each unused initializer whenever anyone loaded the exported file."""
    from compiler.emit import all_nodes

    for path in exported:
        graph = onnx.load(path).graph
        read = {name for n in all_nodes(graph) for name in n.input} | {o.name for o in graph.output}
        assert [t.name for t in graph.initializer if t.name not in read] == []


def test_generator_runs_on_the_reference_evaluator(exported):
    from compiler.check import reference_evaluator

    gen, _ = exported
    model = onnx.load(gen)
    feeds = {"prompt": np.asarray([1, 2, 3], dtype=np.int64), "max_len": np.asarray(6),
             "temperature": np.asarray(0.0, np.float32), "seed": np.asarray(0)}
    ref = reference_evaluator(model).run(None, feeds)[0]
    assert ref.tolist() == predict(gen, feeds)["tokens"].tolist()


def test_a_prompt_reads_characters_outside_the_alphabet_as_unk_and_an_empty_one_is_an_error(exported):
    from spec.errors import FlowgradError

    gen, _ = exported
    meta = model_metadata(load_model_safely(gen))
    assert encode_text("\u2603 s", {"vocab": meta["vocab"], "level": "char", "unk": meta["unk"]}).tolist()[0] == 0
    assert len(generate_text(gen, "\u2603 snowman", max_len=5, seed=1)) >= 5
    with pytest.raises(FlowgradError, match="empty"):
        generate_text(gen, "", max_len=5)


def test_unset_decoding_arguments_take_the_specs_values_and_bad_ones_are_errors(exported):
    from spec.errors import FlowgradError

    gen, _ = exported
    meta = model_metadata(load_model_safely(gen))
    spec_temperature = float(meta["generate.temperature"])
    assert generate_text(gen, "def ", max_len=20, seed=5) == \
        generate_text(gen, "def ", max_len=20, seed=5, temperature=spec_temperature)
    assert generate_text(gen, "def ", max_len=8, seed=5, with_prompt=True).startswith("def ")
    assert generate_text(gen, "def ", max_len=0) == "" and generate_text(gen, "def ", max_len=0, with_prompt=True) == "def "
    for kwargs, words in (({"seed": 2**70}, "seed must be at most 2\\*\\*63 - 1"),
                          ({"max_len": -1}, "^max_len must be an integer of at least 0, got -1"),
                          ({"max_len": 2.5}, "max_len must be an integer"),  # (it generated 2 tokens)
                          ({"max_len": float("nan")}, "max_len must be an integer"),  # (int()'s ValueError)
                          ({"max_len": "5"}, "max_len must be an integer"),
                          ({"max_len": 5.0}, "max_len must be an integer"),  # (taken, as predict's count was)
                          ({"temperature": "0.5"}, "temperature must be 0 or more"),  # (float() took the string)
                          ({"temperature": "hot"}, "temperature must be 0 or more"),  # (float()'s ValueError)
                          ({"temperature": True}, "temperature must be 0 or more"),
                          ({"temperature": -1.0}, "temperature must be"), ({"beam_width": 2}, "beam width"),
                          ({"with_prompt": "no"}, "^with_prompt must be True or False")):  # (it gave the prompt back)
        with pytest.raises(FlowgradError, match=words):
            generate_text(gen, "def ", **{"max_len": 5, **kwargs})


def test_predict_text_refuses_flags_it_would_ignore_and_temperatures_beyond_float32(exported, tmp_path):
    """-o with --text, and --seed or --max-len with --data, were silently ignored; a temperature
    beyond float32 warned about an overflow and then blamed the 'input' for being inf."""
    from typer.testing import CliRunner

    from cli import app

    gen, _ = exported
    np.savez(tmp_path / "in.npz", prompt=np.asarray([5, 6]), max_len=np.asarray(3),
             temperature=np.asarray(1.0, np.float32), seed=np.asarray(0))
    for args, words in ((["--text", "def ", "-o", str(tmp_path / "out.npz")], "-o writes the arrays"),
                        (["--text", "def ", "--temperature", "1e39"], "--temperature must be at most 3.40282e+38, got 1e+39"),
                        (["--data", str(tmp_path / "in.npz"), "--seed", "3"], "--seed is for --text"),
                        (["--data", str(tmp_path / "in.npz"), "--max-len", "3"], "--max-len is for --text")):
        res = CliRunner().invoke(app, ["predict", gen, "--device", "cpu", *args])
        assert res.exit_code == 1 and "Traceback" not in res.output and "Warning" not in res.output, res.output
        assert words in res.output and res.output.startswith("error:"), res.output
    assert not (tmp_path / "out.npz").exists()
    res = CliRunner().invoke(app, ["predict", gen, "--text", "def ", "--max-len", "5", "--seed", "3", "--threads", "1"])
    assert res.exit_code == 0 and res.output.startswith("def ")


def test_a_generator_whose_logits_read_token_positions_is_refused():
    """Decoding feeds one token at a time, so positions() there reads 0 at every step: the
    export would silently sample from another model than the one trained."""
    from compiler.training import compile_spec
    from spec import spec_from_text
    from spec.errors import SpecError

    text = open(os.path.join(ROOT, "models", "char_lstm.yaml")).read().replace(
        "  hs: lstm(e, H)\n", "  hs: lstm(e + embedding(positions(x, axis=1), 512, E), H)\n")
    with pytest.raises(SpecError, match="positions") as e:
        compile_spec(spec_from_text(text, "pos.yaml"))
    assert str(e.value).startswith("pos.yaml:12:")
    # a layer reading the tokens backwards cannot decode forwards either
    spec_text = open(os.path.join(ROOT, "models", "char_lstm.yaml")).read()
    for layer in ("lstm(e, H, reverse=true)", "bidirectional(gru, e, H)"):
        with pytest.raises(SpecError, match="backwards"):
            compile_spec(spec_from_text(spec_text.replace("  hs: lstm(e, H)\n", f"  hs: {layer}\n"), "b.yaml"))


def _graph_runner(cm, state: dict):
    """run(kind, feeds): the compiled graph `kind` on `feeds` and the parameters in `state` it reads."""
    from compiler.check import Runner

    def run(kind, feeds):
        graph = cm.graphs[kind]
        return Runner(graph.model)({**feeds, **{i.name: state[i.name] for i in graph.inputs if i.name in state}})
    return run


# attention over a source whose steps have the tokens' dim name (src and tgt_in both [N, T])
LUONG = """flowgrad: 1
name: luong
dims: {SV: 9, TV: 7, E: 6, H: 8}
inputs:
  src: {shape: [N, T], dtype: int64}
  tgt_in: {shape: [N, T], dtype: int64}
  tgt: {shape: [N, T], dtype: int64}
graph:
  enc, h: gru(embedding(src, SV, E), H, return_state=true)
  dec: gru(embedding(tgt_in, TV, E), H, init=[h])
  w: softmax(dec @ transpose(enc, [0, 2, 1]), axis=-1)
  logits: dense(concat(dec, w @ enc, axis=-1), TV)
outputs:
  probs: softmax(logits)
generate: {input: tgt_in, logits: logits, bos: 1, eos: 2, max_len: 7}
loss: cross_entropy(logits, tgt)
train: {optimizer: {adam: {lr: 0.01}}, batch_size: 16}
"""


def test_a_generator_whose_logits_combine_the_tokens_steps_is_refused():
    """A mean or softmax over the steps outside the recurrent layer sees the one token decoding
    feeds at a time: the export sampled greedily other tokens than the model's argmax over the prefix."""
    from compiler.training import compile_spec
    from spec import spec_from_text
    from spec.errors import SpecError

    spec_text = open(os.path.join(ROOT, "models", "char_lstm.yaml")).read()
    for logits in ("dense(hs + mean(hs, axis=1, keepdims=true), V)", "dense(hs * softmax(hs, axis=1), V)"):
        text = spec_text.replace("  logits: dense(hs, V)\n", f"  logits: {logits}\n")
        with pytest.raises(SpecError, match="combine the tokens' steps") as e:
            compile_spec(spec_from_text(text, "mix.yaml"))
        assert str(e.value).startswith("mix.yaml:13:") and "over the features, not over time" in e.value.hint
    # over the features it decodes as before
    compile_spec(spec_from_text(spec_text.replace("  logits: dense(hs, V)\n",
                                                  "  logits: dense(hs * softmax(hs, axis=-1), V)\n"), "ok.yaml"))
    # and so does attention over a source whose steps have the tokens' dim name (src and tgt_in [N, T])
    compile_spec(spec_from_text(LUONG, "luong.yaml"))


def test_predict_refuses_inputs_that_disagree_on_a_shared_dim(tmp_path):
    """Two inputs with the batch dim N must hold the same N (onnxruntime would broadcast 1)."""
    from onnx import TensorProto as TP
    from onnx import helper

    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TP.FLOAT, ["N", 2]),
                           helper.make_tensor_value_info("b", TP.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, ["N", 2])])
    path = str(tmp_path / "add.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    assert predict(path, {"a": np.ones((3, 2)), "b": np.ones((3, 2))})["y"].shape == (3, 2)
    with pytest.raises(DataError, match="N = 1 in dim 0, but input 'a' has N = 3"):
        predict(path, {"a": np.ones((3, 2)), "b": np.ones((1, 2))})


@pytest.mark.parametrize("model, key, words", [
    ("char_lstm", "beam_width=2", "generate.beam_width is for sequence-to-sequence decoding"),
    ("char_lstm", "eos=0", "generate.eos is for sequence-to-sequence decoding"),
    ("char_lstm", "length_penalty=1.0", "generate.length_penalty is for sequence-to-sequence"),
    ("dates_attention", "temperature=0.5", "generate.temperature is for a language model"),
])
def test_generate_keys_of_the_other_decoder_are_refused(model, key, words):
    """A sampler read no beams, a beam search no temperature: they were accepted and ignored."""
    from compiler.training import check_spec
    from spec.errors import SpecError

    spec = load(os.path.join(ROOT, "models", f"{model}.yaml"), [f"generate.{key}"])
    with pytest.raises(SpecError, match=words) as e:
        check_spec(spec)
    assert str(e.value).startswith(f'overrides=["generate.{key}"]:1:'), str(e.value)  # (as load() was given it)


@pytest.mark.parametrize("prompt", [(3, 7, 1, 9, 4), (5, 8), (6,), ()])
def test_a_language_model_of_a_fixed_window_samples_from_its_last_words(prompt):
    """nlm.yaml (Bengio et al. 2003: the last C=3 words, flattened; logits [N, V]) could not
    generate: given a generate section it was told its logits were not [N, T, vocab] and that a
    model of a fixed window of tokens cannot decode. Its sampler carries the last C tokens: greedy
    decoding is the inference graph run on each successive window, the first one the prompt's
    last C words, padded at the front with id 0 (the text dataset's <unk>) when the prompt is
    shorter; onnx's reference evaluator decodes alike."""
    from compiler.check import Runner, reference_evaluator
    from compiler.training import compile_spec

    spec = load(os.path.join(ROOT, "models", "nlm.yaml"), ["dims.V=40", "dims.E=4", "dims.H=8"])
    cm = compile_spec(spec, "float64", graphs=("infer", "generate"))
    state = cm.initial_state(3)

    def feeds(kind, f):
        return {**f, **{i.name: state[i.name] for i in cm.graphs[kind].inputs if i.name in state}}

    f = feeds("generate", {"prompt": np.asarray(prompt, dtype=np.int64), "max_len": np.asarray(8),
                           "temperature": np.asarray(0.0), "seed": np.asarray(0)})
    out = Runner(cm.graphs["generate"].model)(f)["tokens"]
    seq = [0, 0, 0] + list(prompt)
    for _ in range(8):
        probs = Runner(cm.graphs["infer"].model)(feeds("infer", {"x": np.asarray([seq[-3:]])}))["probs"]
        seq.append(int(np.argmax(probs[0])))
    assert len(set(seq[-8:])) > 1  # not a constant continuation
    assert out.tolist() == seq[-8:]
    assert reference_evaluator(cm.graphs["generate"].model).run(None, f)[0].tolist() == out.tolist()


@pytest.mark.parametrize("logits, words", [
    # a mean over a sequence of any length: no window of a fixed size to carry
    ("dense(mean(embedding(x, V, E), axis=1), V)", "generate.input 'x' has no fixed window size: int64[N, T]"),
    # one row per token of the window, not per window
    ("dense(reshape(embedding(x, V, E), [-1, E]), V)", "must be [N, vocab], one row per window"),
])
def test_a_window_language_model_whose_logits_do_not_score_the_next_token_is_refused(logits, words):
    """Logits [N, V] are read as the token after a window [N, C] of a fixed C: over tokens of any
    length, or with other rows than the windows', the sampler could not feed them the last C tokens.
    Each is refused at generate.logits, saying what the logits must be."""
    from compiler.training import check_spec
    from spec import spec_from_text
    from spec.errors import SpecError

    shape = "[N, T]" if "mean" in logits else "[N, C]"
    text = (f"flowgrad: 1\nname: w\ndims: {{V: 12, E: 4, C: 3}}\ninputs:\n  x: {{shape: {shape}, dtype: int64}}\n"
            f"graph:\n  logits: {logits}\ngenerate: {{input: x, logits: logits}}\n")
    with pytest.raises(SpecError, match=re.escape(words)) as e:
        check_spec(spec_from_text(text, "w.yaml"), objectives=False)
    assert str(e.value).startswith("w.yaml:8:"), str(e.value)


@pytest.fixture(scope="module")
def nlm_exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nlm")
    spec = load(os.path.join(ROOT, "models", "nlm.yaml"),
                ["dims.V=200", "dims.E=8", "dims.H=16", "train.data.options.max_vocab=200"])
    result = train(spec, run_dir=str(tmp / "run"), steps=20, threads=1, device="cpu")
    gen = tmp / "nlm.onnx"
    export(result.run_dir, str(gen))
    return str(gen)


def test_a_window_language_model_replays_a_seed_and_predict_text_prints_words(nlm_exported):
    """The exported nlm samples text from a prompt of words: a seed replays it, another draws other
    words, and flowgrad predict --text "the object" prints the prompt and 30 words (the spec's max_len)."""
    from typer.testing import CliRunner

    from cli import app

    a = generate_text(nlm_exported, "the object", max_len=20, temperature=1.0, seed=3)
    assert a == generate_text(nlm_exported, "the object", max_len=20, temperature=1.0, seed=3)
    assert a != generate_text(nlm_exported, "the object", max_len=20, temperature=1.0, seed=4)
    assert len(a.split(" ")) == 20
    res = CliRunner().invoke(app, ["predict", nlm_exported, "--text", "the object", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("the object ") and len(res.stdout.split()) >= 2 + 30, res.stdout


@pytest.mark.parametrize("key, words", [("pad=50", "generate.pad is 50, but the logits 'logits' have 14 entries"),
                                        ("eos=14", "generate.eos is 14, but the logits 'logits' have 14 entries")])
def test_beam_search_token_ids_beyond_the_logits_are_refused(key, words):
    """pad indexes the logits (an IndexError traceback), and an eos beyond them is never
    emitted (a beam search in which no hypothesis could end)."""
    from compiler.training import check_spec
    from spec.errors import SpecError

    spec = load(os.path.join(ROOT, "models", "dates_attention.yaml"), [f"generate.{key}"])
    with pytest.raises(SpecError, match=words) as e:
        check_spec(spec)
    assert str(e.value).startswith(f'overrides=["generate.{key}"]:1:'), str(e.value)  # (as load() was given it)


def test_bad_arguments_of_the_export_api_are_export_errors(exported, tmp_path):
    """Code catching ExportError around the export API missed its argument checks: a bad seed,
    device or thread count raised a plain FlowgradError, a bad max_len, temperature or model
    kind a DataError. Each is an ExportArgumentError now: an ExportError, and still a DataError."""
    from runtime.export import generator_feeds, translate
    from spec.errors import ExportArgumentError, ExportError

    gen, probs = exported
    calls = [(generate_text, (gen, "def "), {"seed": -1}, "seed must be"),
             (generate_text, (gen, "def "), {"max_len": -1}, "max_len must be"),
             (generate_text, (gen, "def "), {"max_len": 2.0}, "max_len must be"),
             (generate_text, (gen, "def "), {"temperature": -1.0}, "temperature must be"),
             (generate_text, (gen, "def "), {"beam_width": 2}, "a beam width is for"),
             (generate_text, (gen, "def "), {"length_penalty": 1.0}, "a length penalty is for"),
             (generate_text, (gen, "def "), {"device": "tpu"}, "unknown device"),
             (generate_text, (gen, "def "), {"threads": 0}, "threads must be"),
             (generate_text, (gen, ""), {}, "the prompt is empty"),  # (predict's DataError)
             (generate_text, (gen, [5, 6]), {}, "the prompt must be a string"),  # (tokenized "[5, 6]")
             (generate_text, (probs, "def "), {}, "is not a text generator"),
             (predict, (probs, {"x": np.zeros((1, 16), np.int64)}), {"device": "tpu"}, "unknown device"),
             (predict, (probs, {"x": np.zeros((1, 16), np.int64)}), {"threads": 2.0}, "threads must be"),
             (generator_feeds, (gen, 2), {}, "is not a generator"),
             (generator_feeds, (gen, 2), {"seed": 2**64}, "seed must be"),
             (translate, (gen, ["abc"]), {}, "carries no source vocabulary"),
             (translate, (gen, "abc"), {}, "texts must be a list of strings")]
    for function, args, kwargs, words in calls:
        with pytest.raises(ExportError, match=words) as caught:
            function(*args, **kwargs)
        assert isinstance(caught.value, ExportArgumentError) and isinstance(caught.value, DataError), (words, caught)
        assert caught.value.hint, words


def test_a_whole_float_max_len_of_the_spec_is_the_default_it_says(exported, tmp_path):
    """The spec's schema takes generate.max_len: 5.0 as an integer, and the export carries it as
    5.0: generate_text (and flowgrad predict --text) without max_len refused it, "max_len must be an
    integer of at least 1, got 5.0" with the hint "leave max_len out for the default", which it was."""
    from spec import load_spec

    assert load_spec(os.path.join(ROOT, "models", "char_lstm.yaml"), ["generate.max_len=5.0"]).generate["max_len"] == 5
    m = onnx.load(exported[0])
    for p in m.metadata_props:
        if p.key == "flowgrad.generate.max_len":
            p.value = "5.0"
    gen = str(tmp_path / "g.onnx")
    onnx.save(m, gen)
    assert len(generate_text(gen, "def ", temperature=0.0)) == 5
    with pytest.raises(DataError, match="^max_len must be an integer of at least 0, got 5.0"):  # (given, it is refused)
        generate_text(gen, "def ", max_len=5.0)


def test_predict_bounds_max_len_as_it_bounds_count(exported):
    """--max-len, bounded below only, named the API's keyword where --count names its flag:
    --max-len 2000000 ended in "max_len must be at most 1,048,576"."""
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, ["predict", exported[0], "--text", "def ", "--max-len", str(2**20 + 1)])
    assert res.exit_code == 2 and "Invalid value for '--max-len'" in res.output and "1048576" in res.output, res.output


GENERATORS = sorted(name for name in os.listdir(os.path.join(ROOT, "models"))
                    if name.endswith(".yaml") and "\ngenerate:" in open(os.path.join(ROOT, "models", name)).read())


@pytest.mark.parametrize("name", GENERATORS)
def test_a_plain_onnxruntime_user_s_max_len_of_0_or_below_generates_nothing(name):
    """Every decoding graph (a sampler's, a translator's beam search) failed inside its Scan at
    max_len 0, on onnxruntime ("Invalid dim0_offset of 0") and on onnx.reference alike, for any
    onnxruntime user who fed it: it generates nothing now, tokens with a length axis of 0 (and a
    translator's scores 0, the empty hypothesis's), and a negative max_len is read as 0; longer
    ones decode as before. The graph passes the checker and strict shape inference."""
    import onnxruntime as ort

    from compiler.check import reference_evaluator
    from compiler.training import compile_spec
    from spec import load_spec

    assert len(GENERATORS) >= 4  # char_lstm, char_lstm_stateful, dates_attention, reverse_attention
    cm = compile_spec(load_spec(os.path.join(ROOT, "models", name)), graphs=("generate",))
    model = cm.graphs["generate"].model
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)
    state = cm.initial_state()
    feeds = {i.name: state[i.name] for i in model.graph.input if i.name in state}
    sampler = "prompt" in {i.name for i in model.graph.input}
    if sampler:
        feeds.update(prompt=np.asarray([1, 2, 3]), temperature=np.asarray(0.5, cm.float_dtype), seed=np.asarray(1))
    else:
        feeds.update(src=np.asarray([[3, 4, 5, 0], [6, 7, 8, 9]]), src_len=np.asarray([3, 4]), beam_width=np.asarray(2),
                     length_penalty=np.asarray(0.6, cm.float_dtype))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = reference_evaluator(model)
    runs = {}
    for max_len in (3, 1, 0, -4):
        f = {**feeds, "max_len": np.asarray(max_len)}
        ours, ref = session.run(None, f), reference.run(None, f)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        runs[max_len] = ours
    tokens = {n: outs[0] for n, outs in runs.items()}
    assert tokens[3].shape == ((3,) if sampler else (2, 3)) and tokens[1].shape == ((1,) if sampler else (2, 1))
    for n in (0, -4):
        assert tokens[n].shape == ((0,) if sampler else (2, 0)) and tokens[n].dtype == np.int64
        if not sampler:
            np.testing.assert_array_equal(runs[n][1], np.zeros(2, runs[n][1].dtype))  # the scores
    if sampler:  # a step's token depends on the steps before it only
        assert tokens[1].tolist() == tokens[3][:1].tolist()


def test_predict_max_len_0_prints_the_prompt_alone_as_the_graph_generates_nothing(exported):
    """flowgrad predict --max-len 0 was refused by typer (at least 1) where the exported graph
    now generates nothing: it prints the prompt with no continuation; a negative one is refused."""
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, ["predict", exported[0], "--text", "def ", "--max-len", "0", "--device", "cpu"])
    assert res.exit_code == 0 and res.stdout == "def \n", res.output
    res = CliRunner().invoke(app, ["predict", exported[0], "--text", "def ", "--max-len", "-1"])
    assert res.exit_code == 2 and "Invalid value for '--max-len'" in res.output


def _greedy_decoding_equals_the_inference_graph(text: str, seed: int = 3, prompt=(3, 7, 1), steps: int = 8):
    """The spec's sampler at temperature 0 (with its initial weights) against the inference graph
    run on the whole prefix at each step, taking the most likely next token."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    cm = compile_spec(spec_from_text(text, "lm.yaml"), "float64", graphs=("infer", "generate"))
    state = cm.initial_state(seed)
    run = _graph_runner(cm, state)

    out = run("generate", {"prompt": np.asarray(prompt), "max_len": np.asarray(steps), "temperature": np.asarray(0.0),
                           "seed": np.asarray(0)})["tokens"]
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(np.argmax(run("infer", {"x": np.asarray([seq])})["probs"][0, -1])))
    assert len(set(seq[len(prompt):])) > 1  # not a constant continuation, which any state would give
    assert out.tolist() == seq[len(prompt):]


CHAR_AWARE = """\
flowgrad: 1
name: char_aware
dims: {V: 12, E: 4, H: 5, W: 3, C: 6}
inputs:
  x: {shape: [N, T], dtype: int64}
  y: {shape: [N, T], dtype: int64}
params:
  spell: {shape: [V, W], init: {uniform: {low: 0.0, high: 5.9}}, trainable: false}
blocks:
  charstep:
    in: [c_t, hc]
    params:
      Wc: {shape: [E, H], init: {normal: {std: 1.0}}}
      Uc: {shape: [H, H], init: orthogonal}
    graph:
      hc2: tanh(c_t @ Wc + hc @ Uc)
    out: [hc2]
graph:
  ce: embedding(cast(take(spell, x), 'int64'), C, E)
%s
  logits: dense(hs, V)
outputs:
  probs: softmax(logits)
generate: {input: x, logits: logits, max_len: 8}
loss: cross_entropy(logits, y)
"""


@pytest.mark.parametrize("words", [
    # each token's characters by a scan over axis 2, then the tokens by a GRU
    "  cs: scan(charstep, over=ce, init=[zeros(N, T, H)], axis=2)\n  hs: gru(cs[:, :, -1], H)",
    # the same with a ready-made RNN over the characters, the tokens' rows as its batch
    "  hc: rnn(reshape(ce, [-1, W, E]), H)\n"
    "  hs: gru(reshape_like(hc[:, -1], zeros(1, 1, H) * unsqueeze(cast(x, 'float32'), axes=-1)), H)",
])
def test_a_recurrent_layer_over_each_tokens_characters_starts_afresh_at_every_generated_token(words):
    """A character-aware language model reads each token's characters with a scan (or rnn) of its
    own, inside the one over the tokens. Decoding carried that inner layer's state after the prompt
    from one token to the next, as though it ran over the tokens: the scan generated other tokens
    than the model predicts (and the rnn failed to compile: 'initial state float32[P, 5] does not
    match the step's state float32[1, 5]'). Only layers over the tokens' time axis carry state."""
    _greedy_decoding_equals_the_inference_graph(CHAR_AWARE % words)


BLOCK_LM = """\
flowgrad: 1
name: block_lm
dims: {V: 12, E: 5, H: 5}
inputs:
  x: {shape: [N, T], dtype: int64}
  y: {shape: [N, T], dtype: int64}
blocks:
  step:
    in: [x_t, h]
    params:
      W: {shape: [E, H], init: {normal: {std: 1.0}}}
      U: {shape: [H, H], init: orthogonal}
    graph:
      h2: tanh(x_t @ W + h @ U)
    out: [h2]
  encoder:
    in: [a]
    graph:
      hs: %s
    out: [hs]
graph:
  e: embedding(x, V, E)
%s
  logits: dense(hs, V)
outputs:
  probs: softmax(logits)
generate: {input: x, logits: logits, max_len: 8}
loss: cross_entropy(logits, y)
"""


@pytest.mark.parametrize("layer, calls", [
    ("scan(step, over=a, init=[zeros(N, H)])", "  hs: encoder(e)"),
    ("lstm(a, H)", "  hs: encoder(e)"),
    # called twice: each call carries its own states
    ("scan(step, over=a, init=[zeros(N, H)])", "  hs: encoder(h1)\n  h1: encoder(e)"),
    ("gru(a, H)", "  hs: encoder(encoder(e))"),
    # no block call: two scans in one entry
    ("scan(step, over=a, init=[zeros(N, H)])",
     "  hs: scan(step, over=scan(step, over=e, init=[zeros(N, H)]), init=[zeros(N, H)])"),
])
def test_a_recurrent_layer_in_a_block_called_as_a_function_carries_its_state_when_decoding(layer, calls):
    """A language model whose scan (or lstm) sits in a block called inline (hs: encoder(e)) was
    refused by export and check: 'generate needs a recurrent layer (rnn, lstm, gru or a scan) to
    carry the context'. The block's layers carry their states as the caller's own do, each call's
    apart; and two scans in one entry, which carried one state for both, carry one each."""
    _greedy_decoding_equals_the_inference_graph(BLOCK_LM % (layer, calls), seed=5)


INIT_LM = """\
flowgrad: 1
name: init_lm
dims: {V: 12, E: 5, H: 5}
inputs:
  x: {shape: [N, T], dtype: int64}
  y: {shape: [N, T], dtype: int64}
params:
  h0: {shape: [1, H], init: {normal: {std: 1.0}}}
graph:
  e: embedding(x, V, E)
  hs: %s
  logits: dense(hs, V)
outputs:
  probs: softmax(logits)
generate: {input: x, logits: logits, max_len: 8}
loss: cross_entropy(logits, y)
"""


@pytest.mark.parametrize("layer", ["gru(e, H, init=[zeros(N, H) + h0])", "lstm(e, H, init=[zeros(N, H) + h0, zeros(N, H) + h0])"])
def test_a_recurrent_layer_with_a_learnt_initial_state_carries_its_state_when_sampling(layer):
    """A layer given init= (a learnt h0) started every generated token from h0 instead of the
    state after the tokens before it."""
    _greedy_decoding_equals_the_inference_graph(INIT_LM % layer)


LENGTHS_LM = """\
flowgrad: 1
name: padded_sentences
dims: {V: 9, E: 4, H: 5}
inputs:
  x: {shape: [N, T], dtype: int64}
  y: {shape: [N, T], dtype: int64}
  n: {shape: [N], dtype: %s}
  m: {shape: [N, T]}
graph:
  e: embedding(x, V, E)
  hs: %s
  logits: dense(hs, V)
outputs:
  probs: softmax(logits)
generate: {input: x, logits: logits, max_len: 8}
loss: sum(cross_entropy(logits, y, reduction='none') * m) / sum(m)
"""


@pytest.mark.parametrize("dtype, layer", [("int64", "lstm(e, H, lengths=n)"), ("int32", "gru(e, H, lengths=n)"),
                                          ("int64", "rnn(e, H, mask=cast(positions(x, axis=1) < unsqueeze(n, axes=1), 'float32'))")])
def test_a_language_model_of_padded_sentences_samples_from_its_prompt(dtype, layer):
    """A language model trained on padded sentences of one's own, its layer given lengths=n, was
    refused by check and export with 'scan: the step returns a state of type float32[N, 5] for one of
    type float32[1, 5]' and the hint to make a block the spec never wrote return its states: the
    sampler fed the lengths input [N] beside the prompt [1, P]. The lengths are the prompt's (every
    token of the prompt and each sampled one is real): greedy sampling equals the inference graph
    run on the prefix padded to a width of 16 with its length."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    cm = compile_spec(spec_from_text(LENGTHS_LM % (dtype, layer), "lm.yaml"), "float64", graphs=("infer", "generate"))
    assert [i.name for i in cm.graphs["generate"].inputs if i.name not in cm.initial_state(3)] == \
        ["prompt", "max_len", "temperature", "seed"]
    state = cm.initial_state(3)
    run = _graph_runner(cm, state)

    prompt, steps = [3, 7, 1], 8
    out = run("generate", {"prompt": np.asarray(prompt), "max_len": np.asarray(steps), "temperature": np.asarray(0.0),
                           "seed": np.asarray(0)})["tokens"]
    seq = list(prompt)
    for _ in range(steps):
        x = np.zeros((1, 16), np.int64)
        x[0, :len(seq)] = seq
        probs = run("infer", {"x": x, "n": np.asarray([len(seq)], dtype=dtype)})["probs"]
        seq.append(int(np.argmax(probs[0, len(seq) - 1])))
    assert len(set(seq[len(prompt):])) > 1
    assert out.tolist() == seq[len(prompt):]


def test_a_language_model_reading_another_input_is_told_it_samples_from_a_prompt_alone():
    """A language model whose logits read an input besides its tokens (a topic vector) was told
    about a scan's states of a block it never wrote; it is told at generate.logits which input."""
    from compiler.training import check_spec
    from spec import spec_from_text
    from spec.errors import SpecError

    text = (LENGTHS_LM % ("int64", "lstm(e, H)")).replace("  m: {shape: [N, T]}", "  m: {shape: [N, T]}\n  topic: {shape: [N, 4]}") \
        .replace("logits: dense(hs, V)", "logits: dense(hs + unsqueeze(dense(topic, H), axes=1), V)")
    with pytest.raises(SpecError) as e:
        check_spec(spec_from_text(text, "lm.yaml"))
    assert e.value.message == ("generate: the logits read the input 'topic' besides generate.input 'x', and a "
                               "language model samples from a prompt alone")
    assert "add bos" in e.value.hint


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_half_type_sampler_draws_tokens_far_below_the_best(dtype):
    """A float16 sampler drew its uniform noise in float16, whose steps near 1 capped the Gumbel
    noise near 7.6: a token more than ~9.6 below the best logit was never drawn. Against one token at
    0 and 100,000 at -10, softmax gives the best 1 / (1 + 1e5 e^-10) = 18%; the float16 sampler gave
    it every time. The sample is drawn in float32 whatever the model's type."""
    from compiler.check import Runner
    from compiler.emit import emit_model
    from compiler.generate import _sample
    from compiler.ir import Graph

    g = Graph(float_dtype=dtype)
    logits = g.add_input("logits", dtype, (1, 100_001))
    temperature = g.add_input("temperature", dtype, ())
    seed, step = g.add_input("seed", "int64", ()), g.add_input("step", "int64", ())
    token = _sample(g, logits, temperature, seed, step, salt=1)
    run = Runner(emit_model(g, [("logits", logits), ("temperature", temperature), ("seed", seed), ("step", step)],
                            [("token", token)]))
    scores = np.full((1, 100_001), -10.0, dtype)
    scores[0, 0] = 0.0
    draws = [int(run({"logits": scores, "temperature": np.asarray(1.0, dtype), "seed": np.asarray(s),
                      "step": np.asarray(0)})["token"][0]) for s in range(200)]
    best = draws.count(0) / len(draws)
    assert 0.08 < best < 0.3, best


def test_predict_text_json_is_the_prompt_and_the_text(exported):
    """predict had no --json: a script reading a generated text took all of stdout for it. --json
    prints {"prompt", "text"}, the text that predict prints without it."""
    from typer.testing import CliRunner

    from cli import app

    gen, _ = exported
    args = ["predict", gen, "--text", "def ", "--max-len", "5", "--seed", "3", "--threads", "1", "--device", "cpu"]
    plain, res = CliRunner().invoke(app, args), CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0 and plain.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"prompt": "def ", "text": plain.stdout[:-1]}


def test_an_int32_language_model_generates_int32_tokens(tmp_path):
    """A language model whose token input is int32 exported a sampler whose tokens were int64: the
    generated ids follow the token input's int type, the file passes onnx's checker with its
    shape inference, and predict prints and writes them as before."""
    from typer.testing import CliRunner

    from cli import app

    spec = load(os.path.join(ROOT, "models", "char_lstm.yaml"),
                ["dims.H=8", "dims.E=4", "train.data.options.seq_len=8", "inputs.x.dtype=int32", "inputs.y.dtype=int32"])
    result = train(spec, run_dir=str(tmp_path / "run"), steps=2, threads=1, device="cpu")
    gen = str(tmp_path / "gen.onnx")
    export(result.run_dir, gen)
    model = load_model_safely(gen)
    onnx.checker.check_model(model, full_check=True)
    assert {o.name: o.type.tensor_type.elem_type for o in model.graph.output} == {"tokens": onnx.TensorProto.INT32}
    out = predict(gen, {"prompt": np.asarray([5, 6]), "max_len": np.asarray(6), "temperature": np.asarray(0.0, np.float32),
                        "seed": np.asarray(0)})["tokens"]
    assert out.dtype == np.int32 and out.shape == (6,)
    text = generate_text(gen, "The ", max_len=6, temperature=0.0)
    assert len(text) == 6
    runner = CliRunner()
    res = runner.invoke(app, ["predict", gen, "--text", "The ", "--max-len", "6", "--temperature", "0"])
    assert res.exit_code == 0 and res.stdout == f"The {text}\n", res.output
    np.savez(tmp_path / "feeds.npz", prompt=np.asarray([5, 6]), max_len=np.asarray(6), temperature=np.asarray(0.0),
             seed=np.asarray(0))
    res = runner.invoke(app, ["predict", gen, "--data", str(tmp_path / "feeds.npz")])
    assert res.exit_code == 0 and "tokens: shape [6] dtype int32" in res.stdout, res.output
    assert res.stdout.split("\n", 1)[1].strip() == str(out)


RESHAPING_LM = """\
flowgrad: 1
name: reshaping_lm
dims: {V: 12, E: 4, H: 6}
inputs:
  x: {shape: [N, T], dtype: int64}
  y: {shape: [N, T], dtype: int64}
graph:
  e: embedding(x, V, E)
  hs: gru(e, H)
  halves: reshape(hs, [N, T, 2, 3])
  logits: dense(reshape(tanh(halves) * halves, [N, T, H]), V)
outputs:
  probs: softmax(logits)
generate: {input: x, logits: logits, max_len: 8}
loss: cross_entropy(logits, y)
"""

WINDOW_ATTENTION_LM = """\
flowgrad: 1
name: window_attention_lm
dims: {V: 12, E: 8, NH: 2, D: 4, C: 5}
inputs:
  x: {shape: [N, C], dtype: int64}
  y: {shape: [N], dtype: int64}
graph:
  pos: positions(x, axis=1)
  causal: reshape(pos, [1, 1, C, 1]) >= reshape(pos, [1, 1, 1, C])
  h: embedding(x, V, E) + embedding(pos, C, E)
  q: transpose(reshape(dense(h, E), [N, C, NH, D]), [0, 2, 1, 3])
  k: transpose(reshape(dense(h, E), [N, C, NH, D]), [0, 2, 3, 1])
  v: transpose(reshape(dense(h, E), [N, C, NH, D]), [0, 2, 1, 3])
  a: softmax(where(causal, q @ k / sqrt(D), -1e9), axis=-1) @ v
  o: h + dense(reshape(transpose(a, [0, 2, 1, 3]), [N, C, E]), E)
  logits: dense(o[:, -1], V)
outputs:
  probs: softmax(logits)
generate: {input: x, logits: logits, max_len: 8}
loss: cross_entropy(logits, y)
"""


def test_a_language_model_that_reshapes_by_the_batch_and_steps_decodes():
    """reshape(hs, [N, T, 2, 3]) in a recurrent language model, and a model of a fixed window
    that splits attention heads as README shows (reshape(dense(h, E), [N, C, NH, D])), could not
    generate: the sampler feeds a prompt [1, P], one token [1, 1] or one window [1, C], and the
    reshapes were refused at check and export ('cannot reshape [1, P, 6] (6*P elements) to [N, T, 2,
    3] (6*N*T)'). A symbolic dim of a reshape's target takes the size the tokens have there: greedy
    decoding is the inference graph run on the whole prefix (on each window) at each step."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    _greedy_decoding_equals_the_inference_graph(RESHAPING_LM, seed=1)
    cm = compile_spec(spec_from_text(WINDOW_ATTENTION_LM, "lm.yaml"), "float64", graphs=("infer", "generate"))
    state = cm.initial_state(2)
    run = _graph_runner(cm, state)

    prompt = [3, 7, 1, 9, 4, 2]
    out = run("generate", {"prompt": np.asarray(prompt), "max_len": np.asarray(8), "temperature": np.asarray(0.0),
                           "seed": np.asarray(0)})["tokens"]
    seq = list(prompt)
    for _ in range(8):
        seq.append(int(np.argmax(run("infer", {"x": np.asarray([seq[-5:]])})["probs"][0])))
    assert len(set(seq[len(prompt):])) > 1
    assert out.tolist() == seq[len(prompt):]


def test_a_translator_that_reshapes_by_the_tokens_steps_decodes_where_the_source_shares_their_name():
    """A reshape by T in a decoder whose source declares the same T (src and tgt_in both [N, T]) took
    the source's length where beam search feeds one target token: 'cannot reshape [4*N, 1, 16] to
    [4*N, T, 2, 8]' at check and export. T is the tokens' there (generate.input's), and greedy
    decoding (beam width 1) is the inference graph's argmax on each prefix."""
    from compiler.training import compile_spec
    from spec import spec_from_text

    text = LUONG.replace("  logits: dense(concat(dec, w @ enc, axis=-1), TV)\n",
                         "  both: reshape(reshape(concat(dec, w @ enc, axis=-1), [N, T, 2, H]), [N, T, 16])\n"
                         "  logits: dense(both, TV)\n")
    assert "both:" in text
    cm = compile_spec(spec_from_text(text, "luong.yaml"), "float64", graphs=("infer", "generate"))
    state = cm.initial_state(3)
    run = _graph_runner(cm, state)

    src = np.asarray([[3, 5, 8, 4, 6, 7, 2]])
    out = run("generate", {"src": src, "beam_width": np.asarray(1), "max_len": np.asarray(5),
                           "length_penalty": np.asarray(0.0)})["tokens"][0].tolist()
    seq = [1]
    for _ in range(5):
        # (the inference graph takes tgt_in as long as src, both [N, T]: the prefix padded, read causally)
        prefix = np.asarray([seq + [0] * (src.shape[1] - len(seq))])
        seq.append(int(np.argmax(run("infer", {"src": src, "tgt_in": prefix})["probs"][0, len(seq) - 1])))
        if seq[-1] == 2:
            break
    assert len(set(seq[1:])) > 1 and out[:len(seq) - 1] == seq[1:]
