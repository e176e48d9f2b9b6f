"""Unsupervised and generative models: the noise ops, the models in models/
(dae, cae, vae, gan, semisupervised) on real digits, the contractive
penalty's exact Jacobian and its gradient, block calls sharing parameters,
the semi-supervised dataset option, exported generators run with onnxruntime
alone, and `flowgrad plot samples`."""
from __future__ import annotations

import re

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from compiler.gradcheck import gradcheck_spec
from compiler.ir import Graph
from compiler.training import check_spec, compile_spec, trained_names
from runtime import data as D
from runtime.api import train
from runtime.export import export
from runtime.trainer import Trainer
from spec import load_spec, spec_from_text
from spec.errors import DataError, SpecError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = {m: os.path.join(ROOT, "models", f"{m}.yaml") for m in ("dae", "cae", "vae", "gan", "semisupervised")}
SMALL = {"dae": ["dims.H=16"], "cae": ["dims.H=8"], "vae": ["dims.H=16", "dims.Z=2"],
         "gan": ["dims.H=16", "dims.Z=4"], "semisupervised": ["dims.H=16"]}


@pytest.fixture(scope="module")
def digits():
    ds = D.load_digits(labelled=100)
    return {k: np.ascontiguousarray(v[:64]) for k, v in ds.arrays.items()}


# ---------------------------------------------------------------- noise ops
@pytest.mark.parametrize("mode", ["eval", "infer"])
@pytest.mark.parametrize("op,attrs", [("masking_noise", {"p": 0.5}), ("gaussian_noise", {"sigma": 0.3}),
                                      ("dropout", {"rate": 0.5})])
def test_noise_is_identity_outside_training(op, attrs, mode):
    g = Graph(float_dtype="float32", mode=mode)
    x = g.add_input("x", "float32", (4, 8))
    assert g.apply(op, x, **attrs) is x
    assert not g.nodes and "seed" not in g.inputs  # nothing drawn


def test_noise_in_train_mode():
    from compiler.check import Runner
    from compiler.emit import emit_model

    g = Graph(float_dtype="float32", mode="train")
    x = g.add_input("x", "float32", (200, 50))
    outs = {"masked": g.apply("masking_noise", x, p=0.3), "gauss": g.apply("gaussian_noise", x, sigma=0.5)}
    ins = [(n, gi.value) for n, gi in g.inputs.items()]
    run = Runner(emit_model(g, ins, list(outs.items())))
    xs = np.ones((200, 50), np.float32)
    got = run({"x": xs, "seed": np.asarray(3, np.int64), "step": np.asarray(1, np.int64)})
    zero = got["masked"] == 0
    assert set(np.unique(got["masked"])) <= {0.0, 1.0}  # no rescaling of what is kept
    assert abs(zero.mean() - 0.3) < 0.02
    noise = got["gauss"] - 1
    assert abs(noise.std() - 0.5) < 0.02 and abs(noise.mean()) < 0.02
    again = run({"x": xs, "seed": np.asarray(3, np.int64), "step": np.asarray(2, np.int64)})
    assert not np.array_equal(again["masked"], got["masked"])  # a fresh mask every step


def test_reparameterize_draws_in_every_mode():
    for mode in ("train", "eval", "infer"):
        g = Graph(float_dtype="float32", mode=mode)
        mu = g.add_input("mu", "float32", (3, 2))
        out = g.apply("reparameterize", mu, mu)
        assert out is not mu and "seed" in g.inputs


# ---------------------------------------------------------------- models on real digits
def _steps(trainer, objective, batch, n, lr=3e-3):
    return [trainer.train_step(objective, batch, lr=lr, step=s)["loss"] for s in range(n)]


@pytest.mark.parametrize("model", ["dae", "cae", "vae", "semisupervised"])
def test_model_compiles_and_learns(model, digits):
    cm = compile_spec(load_spec(MODEL[model], SMALL[model]), graphs=("train",))
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    for name in cm.schedule:
        losses = _steps(trainer, name, digits, 12)
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], (name, losses)


def test_gan_objectives_each_lower_their_loss(digits):
    cm = compile_spec(load_spec(MODEL["gan"], SMALL["gan"]), graphs=("train",))
    assert cm.schedule == ["discriminator", "generator"]
    # The parameter groups: the blocks' parameters, disjoint, each objective updating its own.
    d = set(trained_names(cm.params, next(o for o in cm.objectives if o.name == "discriminator")))
    g = set(trained_names(cm.params, next(o for o in cm.objectives if o.name == "generator")))
    assert d and g and not d & g and d | g == set(cm.params)
    assert all(n.startswith("D.") for n in d) and all(n.startswith("G.") for n in g)
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    d_losses = _steps(trainer, "discriminator", digits, 10)
    assert d_losses[-1] < d_losses[0], d_losses
    g_losses = _steps(trainer, "generator", digits, 10)  # against the now fixed discriminator
    assert g_losses[-1] < g_losses[0], g_losses


def test_block_calls_share_parameters():
    spec = load_spec(MODEL["gan"], SMALL["gan"])
    cm = compile_spec(spec, graphs=("train",))
    # D is called on real and on generated digits, G in training and in the outputs: one set each.
    assert sorted(cm.params) == sorted(f"{b}.{layer}.{w}" for b, layers in (("G", ("h1", "h2", "out")),
                                                                         ("D", ("h1", "h2", "logit")))
                                       for layer in layers for w in ("W", "b"))


def test_dae_evaluates_clean_input(digits):
    """Eval mode sees x itself: the metric equals a NumPy forward pass without noise (tied weights)."""
    cm = compile_spec(load_spec(MODEL["dae"], SMALL["dae"]), graphs=("eval",))
    trainer = Trainer(cm, "cpu", threads=1, seed=0)
    got = trainer.evaluate([{"x": digits["x"]}])
    s = cm.initial_state(0)
    x = digits["x"].astype(np.float64)
    h = 1 / (1 + np.exp(-(x @ s["h.W"] + s["h.b"])))
    r = 1 / (1 + np.exp(-(h @ s["h.W"].T + s["logits.b"])))
    np.testing.assert_allclose(got["recon_error"], np.mean((r - x) ** 2), rtol=1e-4)


# ---------------------------------------------------------------- the contractive penalty
JACOBIAN = """
flowgrad: 1
name: jac
dims: {D: 5, H: 3}
inputs:
  x: {shape: [N, D]}
graph:
  h: dense(x, H, act=sigmoid)
outputs:
  h: h
  J: jacobian(h, x)
"""


def test_jacobian_of_a_sigmoid_layer_is_the_closed_form(tmp_path):
    from compiler.check import Runner

    spec = spec_from_text(JACOBIAN, str(tmp_path / "jac.yaml"))
    cm = compile_spec(spec, "float64", graphs=("infer",))
    state = cm.initial_state(0)
    state["h.b"] = np.random.default_rng(1).normal(size=3)
    x = np.random.default_rng(0).uniform(size=(4, 5))
    out = Runner(cm.graphs["infer"].model)({"x": x, "h.W": state["h.W"], "h.b": state["h.b"]})
    h = out["h"]
    want = (h * (1 - h))[:, :, None] * state["h.W"].T[None, :, :]  # J[n] = diag(h(1-h)) W^T
    assert out["J"].shape == (4, 3, 5)
    np.testing.assert_allclose(out["J"], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("h, why", [
    ("x - mean(x, axis=0, keepdims=True)", "mean() reduces over the batch axis"),
    ("x / sum(x * x)", "sum() reduces over the batch axis"),
    ("softmax(x, axis=0)", "softmax() works along the batch axis"),
    ("sigmoid(batch_norm(x))", "mean() reduces over the batch axis"),  # training mode: batch statistics
    ("x @ (transpose(x) @ x)", "a product (matmul) sums over the batch axis"),
    ("x[::-1]", "slice() works along the batch axis"),
    ("x - mean(unsqueeze(x, 0), axis=1)", "mean() reduces over the batch axis"),
])
def test_jacobian_refuses_y_that_mixes_the_examples(tmp_path, h, why):
    """J[n] = d y[n] / d x[n] is exact only when y[n] depends on x[n] alone: a y built from
    batch statistics gave silently wrong Jacobians (a contractive penalty over batch_norm)."""
    from spec.errors import GradientError

    text = JACOBIAN.replace("h: dense(x, H, act=sigmoid)", f"h: {h}")
    with pytest.raises(GradientError, match=f"example by example, but {re.escape(why)}"):
        compile_spec(spec_from_text(text, str(tmp_path / "jac.yaml")))


@pytest.mark.parametrize("h", ["maxout(x, 5)", "flatten(reshape(x, [-1, 5, 1]))"])
def test_jacobian_through_reshapes_that_name_the_batch_dim(tmp_path, h):
    """maxout and flatten reshape to targets naming N: rebuilt on the repeated batch, they
    take its length (it failed with a raw reshape message). Checked against finite differences."""
    from compiler.check import Runner

    text = JACOBIAN.replace("h: dense(x, H, act=sigmoid)", f"h: {h}")
    cm = compile_spec(spec_from_text(text, str(tmp_path / "jac.yaml")), "float64", graphs=("infer",))
    run = Runner(cm.graphs["infer"].model)
    x = np.random.default_rng(0).normal(size=(3, 5))
    out = run({"x": x})
    fd = np.zeros(out["J"].shape)
    for n in range(3):
        for d in range(5):
            step = np.zeros_like(x)
            step[n, d] = 1e-6
            fd[n, :, d] = (run({"x": x + step})["h"][n] - run({"x": x - step})["h"][n]) / 2e-6
    np.testing.assert_allclose(out["J"], fd, atol=1e-7)


@pytest.mark.parametrize("h", ["grad(sum(tanh(x * 2)), x)", "x[:, 1:] * 3", "concat(x, x, axis=1)",
                               "reshape(reshape(x, [-1, 1, 5]) @ transpose(reshape(x, [-1, 1, 5]), perm=[0, 2, 1]), [-1, 1])"])
def test_jacobian_takes_per_example_ys_whatever_their_path(tmp_path, h):
    """What keeps the examples apart compiles: a batch sum read only for its shape (a
    per-example gradient), feature slices and concatenations, products batched per example."""
    text = JACOBIAN.replace("h: dense(x, H, act=sigmoid)", f"h: {h}")
    compile_spec(spec_from_text(text, str(tmp_path / "jac.yaml")), graphs=("infer",))


@pytest.mark.parametrize("loss", ["contraction", "loss"])
def test_cae_penalty_gradient_matches_finite_differences(loss):
    """The penalty's gradient goes through the exact Jacobian (second order), end to end in float64."""
    # The penalty alone (the decoder bias then only reaches the loss with a zero weight), then the whole loss.
    overrides = ["dims.D=6", "dims.H=4"] + (["loss=contraction + 0 * reconstruction"] if loss == "contraction" else [])
    report = gradcheck_spec(load_spec(MODEL["cae"], overrides), seed=2)
    errors = report["main"]
    assert set(errors) == {"h.W", "h.b", "logits.b"}
    assert max(errors.values()) < 1e-6, errors


# ---------------------------------------------------------------- semi-supervised data
def test_digits_labelled_option():
    ds = D.load_bundled("digits", {"labelled": 100})
    mask = ds.arrays["has_label"]
    assert mask.dtype == np.float32 and mask.sum() == 100
    assert np.bincount(ds.arrays["y"][mask == 1], minlength=10).tolist() == [10] * 10
    train_ds, valid_ds = D.split(ds, 0.2, seed=0)
    # All 100 labelled digits are training digits; validation keeps every label.
    assert train_ds.arrays["has_label"].sum() == 100
    assert np.bincount(train_ds.arrays["y"][train_ds.arrays["has_label"] == 1], minlength=10).tolist() == [10] * 10
    assert valid_ds.arrays["has_label"].min() == 1
    again, _ = D.split(D.load_bundled("digits", {"labelled": 100}), 0.2, seed=0)
    assert np.array_equal(again.arrays["has_label"], train_ds.arrays["has_label"])
    assert "has_label" not in D.load_bundled("digits").arrays
    with pytest.raises(DataError, match="labelled"):
        D.load_bundled("digits", {"labeled": 100})
    for bad in (0, 2.0, 5000):  # (an np.int64 was refused, as a float is)
        with pytest.raises(DataError, match="^dataset 'digits': option labelled must be"):
            D.load_bundled("digits", {"labelled": bad})
    assert D.load_bundled("digits", {"labelled": np.int64(100)}).arrays["has_label"].sum() == 100


# ---------------------------------------------------------------- exported generators
FRESH = r"""
import hashlib, json, sys
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
out = {"inputs": sorted((i.name, i.type) for i in s.get_inputs())}
for seed, count in ((1, 6), (1, 6), (2, 6), (1, 3)):
    (x,) = s.run(["samples"], {"seed": np.asarray(seed, np.int64), "count": np.asarray(count, np.int64)})
    out.setdefault("shapes", []).append(list(x.shape))
    out.setdefault("hashes", []).append(hashlib.sha256(x.tobytes()).hexdigest())
    out.setdefault("ranges", []).append([float(x.min()), float(x.max())])
    if (seed, count) == (1, 3):
        out["prefix"] = x.tolist()
    if (seed, count) == (1, 6):
        out["first"] = x[:3].tolist()
out["flowgrad_loaded"] = sorted(m for m in ("compiler", "runtime", "spec", "cli") if m in sys.modules)
print(json.dumps(out))
"""


@pytest.mark.parametrize("model", ["vae", "gan"])
def test_exported_generator_runs_without_flowgrad(model, tmp_path):
    run_dir = str(tmp_path / "run")
    train(load_spec(MODEL[model], SMALL[model]), run_dir=run_dir, steps=3, threads=1, device="cpu")
    path = str(tmp_path / "gen.onnx")
    info = export(run_dir, path)
    assert sorted(info["inputs"]) == ["count", "seed"] and info["outputs"] == ["samples"]
    script = tmp_path / "fresh.py"
    script.write_text(FRESH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-I", str(script), path], capture_output=True, text=True, cwd=str(tmp_path),
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["flowgrad_loaded"] == []
    assert out["inputs"] == [("count", "tensor(int64)"), ("seed", "tensor(int64)")] or \
        out["inputs"] == [["count", "tensor(int64)"], ["seed", "tensor(int64)"]]
    assert out["shapes"] == [[6, 64], [6, 64], [6, 64], [3, 64]]
    h = out["hashes"]
    assert h[0] == h[1] and h[0] != h[2]  # seeded: same seed, same digits; another seed, others
    assert all(0.0 <= lo and hi <= 1.0 for lo, hi in out["ranges"])  # pixel intensities
    # A smaller count draws the same first digits (to rounding: matrix products of other shapes)
    np.testing.assert_allclose(out["prefix"], out["first"], rtol=1e-5, atol=1e-6)


def test_predict_draws_from_a_generator_with_count_and_seed(tmp_path):
    """A generator's inputs are a count and a seed: predict takes them as flags (it needed an
    .npz of two scalars, and --seed was silently ignored with --data)."""
    from typer.testing import CliRunner

    from cli import app
    from runtime.export import predict

    run_dir = str(tmp_path / "run")
    train(load_spec(MODEL["vae"], SMALL["vae"]), run_dir=run_dir, steps=3, threads=1, device="cpu")
    path = str(tmp_path / "gen.onnx")
    export(run_dir, path)
    invoke = lambda *a: CliRunner().invoke(app, ["predict", path, "--device", "cpu", *map(str, a)])  # noqa: E731
    for seed in (7, 8):
        res = invoke("--count", 5, "--seed", seed, "-o", tmp_path / f"s{seed}.npz")
        assert res.exit_code == 0, res.output
        want = predict(path, {"count": np.asarray(5), "seed": np.asarray(seed)})["samples"]
        np.testing.assert_array_equal(np.load(tmp_path / f"s{seed}.npz")["samples"], want)
    assert not np.array_equal(np.load(tmp_path / "s7.npz")["samples"], np.load(tmp_path / "s8.npz")["samples"])
    assert invoke("--count", 2).exit_code == 0  # seed 0
    for count in (0, 2**20 + 1):  # bounded as plot samples --count is, by the flag's own range
        res = invoke("--count", count)
        assert res.exit_code == 2 and "Invalid value for '--count'" in res.output, res.output
    from runtime.export import generator_feeds

    for count in (0, 1.5, 2.0, True, "2", None):  # through the API: named count, not --count; 1.5 drew 1
        with pytest.raises(DataError, match="^count must be an integer of at least 1"):  # sample, and 2.0 was
            generator_feeds(path, count)  # taken where samples_of(count=2.0) was refused: one checker now
    with pytest.raises(DataError, match="^count must be at most 1,048,576"):
        generator_feeds(path, 2**20 + 1)
    assert generator_feeds(path, np.int64(3))["count"] == 3
    for args, words in ((["--count", 2, "--temperature", 1], "--temperature is for --text"),
                        (["--count", 2, "--text", "a"], "give one of"), ([], "give one of")):
        res = invoke(*args)
        assert res.exit_code == 1 and "Traceback" not in res.output and words in res.output, res.output
    for count in (0, 10**11):  # the same bound with --data: a huge count tried to allocate terabytes
        with pytest.raises(DataError, match="^input 'count' must be (an integer of at least 1|at most 1,048,576)"):
            predict(path, {"count": np.asarray(count), "seed": np.asarray(1)})


def test_predict_count_takes_a_generator_whatever_its_spec_named_the_count(tmp_path):
    """The count is the spec's integer scalar input, whatever its name: plot samples drew from a
    spec's `n: {shape: [], dtype: int64}`, but predict --count said 'not a generator: its
    inputs are n, seed, not count and seed'. A huge n is refused with --data too."""
    from runtime.export import generator_feeds, predict

    text = open(MODEL["vae"]).read().replace("  count: {shape: [], dtype: int64,", "  n: {shape: [], dtype: int64,")
    text = text.replace("zeros(count, Z)", "zeros(n, Z)")
    assert "zeros(n, Z)" in text and "  n: {" in text
    (tmp_path / "vae.yaml").write_text(text)
    run_dir = str(tmp_path / "run")
    train(load_spec(str(tmp_path / "vae.yaml"), SMALL["vae"]), run_dir=run_dir, steps=2, threads=1, device="cpu")
    path = str(tmp_path / "gen.onnx")
    export(run_dir, path)
    feeds = generator_feeds(path, 4, seed=3)
    assert sorted(feeds) == ["n", "seed"] and feeds["n"] == 4
    assert predict(path, feeds)["samples"].shape == (4, 64)
    with pytest.raises(DataError, match="^input 'n' must be at most 1,048,576"):
        predict(path, {"n": np.asarray(10**11), "seed": np.asarray(1)})


def test_predict_count_takes_an_int32_count(tmp_path):
    """A count declared int32 sizes the samples as an int64 one does: plot samples drew from it,
    but predict --count said 'not a generator: its inputs are count, seed, not count and seed'."""
    from typer.testing import CliRunner

    from cli import app
    from runtime.export import generator_feeds, predict

    text = open(MODEL["vae"]).read().replace("count: {shape: [], dtype: int64,", "count: {shape: [], dtype: int32,")
    assert "dtype: int32" in text
    (tmp_path / "vae.yaml").write_text(text)
    run_dir = str(tmp_path / "run")
    train(load_spec(str(tmp_path / "vae.yaml"), SMALL["vae"]), run_dir=run_dir, steps=2, threads=1, device="cpu")
    path = str(tmp_path / "gen.onnx")
    export(run_dir, path)
    feeds = generator_feeds(path, 4, seed=3)
    assert feeds["count"].dtype == np.int32 and feeds["count"] == 4
    assert predict(path, feeds)["samples"].shape == (4, 64)
    res = CliRunner().invoke(app, ["predict", path, "--count", "5", "--seed", "3", "-o", str(tmp_path / "s.npz")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "s.npz")["samples"].shape == (5, 64)


# A conditional VAE: its samples are drawn for one digit, an input beside count and seed
CVAE = """\
flowgrad: 1
name: cvae
dims: {D: 64, H: 16, Z: 2, K: 10}
inputs:
  x: {shape: [N, D]}
  y: {shape: [N], dtype: int64}
  count: {shape: [], dtype: int64}
  digit: {shape: [], dtype: int64}
  weights: {shape: [K]}
blocks:
  decode:
    in: [z, c]
    graph:
      h: dense(concat(z, c, axis=-1), H, act=relu)
      logits: dense(h, D)
    out: [logits]
graph:
  cy: one_hot(y, K)
  enc: dense(concat(x, cy, axis=-1), H, act=relu)
  mu: dense(enc, Z)
  logvar: dense(enc, Z)
  z: reparameterize(mu, logvar)
  logits: decode(z, cy)
  reconstruction: mean(sum(binary_cross_entropy(logits, x, reduction='none'), axis=-1))
  kl: mean(-0.5 * sum(1 + logvar - mu * mu - exp(logvar), axis=-1))
outputs:
  samples: sigmoid(decode(normal(zeros(count, Z)), one_hot(digit, K) + zeros(count, K)))
loss: reconstruction + kl
train:
  data: {dataset: digits, valid: 0.2}
  batch_size: 64
"""


def _conditional_generator(tmp_path, weighted: bool = False) -> str:
    """A conditional VAE trained a few steps and exported: inputs count, digit and seed (and a
    float [10] `weights` mixing the classes in place of the digit where `weighted`)."""
    text = CVAE if not weighted else CVAE.replace("one_hot(digit, K) + zeros(count, K)", "weights + zeros(count, K)")
    (tmp_path / "cvae.yaml").write_text(text)
    run_dir = str(tmp_path / ("wrun" if weighted else "run"))
    train(load_spec(str(tmp_path / "cvae.yaml")), run_dir=run_dir, steps=3, threads=1, device="cpu")
    path = str(tmp_path / ("wcvae.onnx" if weighted else "cvae.onnx"))
    export(run_dir, path)
    return path


def test_predict_count_draws_from_a_conditional_generator_with_input(tmp_path):
    """A conditional generator (a VAE drawing a given digit) takes an input besides count and
    seed: predict --count said 'is not a generator: its inputs are count, digit, seed, not count
    and seed', and the digit had to go in an .npz for --data. --input digit=3 gives it; the
    count is the integer scalar input --input leaves out. Mistakes are one line and a hint."""
    from typer.testing import CliRunner

    from cli import app
    from runtime.export import predict

    path = _conditional_generator(tmp_path)
    invoke = lambda *a: CliRunner().invoke(app, ["predict", path, "--device", "cpu", *map(str, a)])  # noqa: E731
    drawn = {}
    for digit, seed, name in ((3, 7, "a"), (3, 7, "b"), (5, 7, "c"), (3, 8, "d")):
        res = invoke("--count", 4, "--seed", seed, "--input", f"digit={digit}", "-o", tmp_path / f"{name}.npz")
        assert res.exit_code == 0, res.output
        drawn[name] = np.load(tmp_path / f"{name}.npz")["samples"]
        assert drawn[name].shape == (4, 64)
    np.testing.assert_array_equal(drawn["a"], drawn["b"])  # the same seed and digit: the same samples
    assert not np.array_equal(drawn["a"], drawn["c"]) and not np.array_equal(drawn["a"], drawn["d"])
    want = predict(path, {"count": np.asarray(4), "seed": np.asarray(7), "digit": np.asarray(5)})["samples"]
    np.testing.assert_array_equal(drawn["c"], want)
    res = invoke("--count", 2, "--input", "digit=3", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["outputs"]["samples"]["shape"] == [2, 64], res.output
    for args, error, hint in (
            ([], f"{path} has the integer scalar inputs count, digit besides seed: --count gives one of them, "
                 "--input the others", "e.g. --input digit=VALUE (then count is the count)"),
            (["--input", "digit"], "bad --input 'digit': expected NAME=VALUE (no '=')", "e.g. --input digit=3"),
            (["--input", "=3"], "bad --input '=3': expected NAME=VALUE", "e.g. --input digit=3"),
            (["--input", "digit=3", "--input", "digit=5"], "--input digit is given twice (digit=3 and digit=5)",
             "give each input once"),
            (["--input", "digt=3"], f"--input digt: {path} has no input 'digt'", "did you mean 'digit'?"),
            (["--input", "seed=3"], "--input seed: the seed is given by --seed", "give it as --seed 3"),
            (["--input", "digit=3", "--input", "count=4"], "--input count: 'count' is the generator's count, "
             "which --count gives", "leave --input count out and give --count 4"),
            # (the digit was taken for the count without a word)
            (["--input", "count=3"], "--input count: 'count' is the generator's count, which --count gives",
             "leave --input count out and give --count 3"),
            (["--input", "digit=three"], "--input digit=three: three is not a number or a JSON list",
             "e.g. --input digit=3"),
            (["--input", "digit=3.5"], "--input digit must hold integers, got 3.5", "digit takes a number (int64)"),
            (["--input", "digit=3.0"], "--input digit must hold integers, got 3.0", "digit takes a number (int64)"),
            (["--input", "digit=-1"], "--input digit holds negative values (-1)", "none is negative"),
            (["--input", "digit=12"], "--input digit has the value 12, but its one_hot has 10 classes",
             "give values from 0 to 9"),
            (["--input", "digit=[3]"], "--input digit must be a number, got a list of 1", "digit takes a number"),
            (["--input", "digit=true"], "--input digit must be a number, got true", "digit takes a number"),
            (["--input", "digit=1e999"], "--input digit must hold integers, got Infinity", "digit takes a number"),
            (["--input", f"digit={2**64}"], f"--input digit holds {2**64}, outside the range of int64",
             "digit takes a number")):
        res = invoke("--count", 2, *args)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert res.stderr.splitlines()[0] == f"error: {error}", res.stderr
        assert res.stderr.splitlines()[1].startswith("  hint: ") and hint in res.stderr.splitlines()[1], res.stderr
        assert len(res.stderr.splitlines()) == 2, res.stderr
    # --input is for --count: a text generator reads its prompt and flags, --data every input
    np.savez(tmp_path / "in.npz", count=np.asarray(2), seed=np.asarray(0), digit=np.asarray(3))
    for args, hint in ((["--data", tmp_path / "in.npz"], "the .npz gives every input"),
                       (["--text", "a"], "--text reads a prompt with")):
        res = invoke(*args, "--input", "digit=3")
        assert res.exit_code == 1 and "error: --input digit=3 is for --count" in res.stderr, res.output
        assert hint in res.stderr
    # its .npz for --data is bounded as --count is: the count is the integer scalar that the export
    # does not record as ids (a count of 2**30 beside a digit tried to allocate gigabytes)
    np.savez(tmp_path / "big.npz", count=np.asarray(2**30), seed=np.asarray(0), digit=np.asarray(3))
    res = invoke("--data", tmp_path / "big.npz")
    assert res.exit_code == 1 and res.stderr.startswith("error: input 'count'") and "Traceback" not in res.output, \
        res.output
    res = invoke("--data", tmp_path / "in.npz", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["outputs"]["samples"]["shape"] == [2, 64], res.output
    # an unconditional generator is as before: --count alone, and its count is no --input
    vae_run = str(tmp_path / "vae")
    train(load_spec(MODEL["vae"], SMALL["vae"]), run_dir=vae_run, steps=2, threads=1, device="cpu")
    export(vae_run, str(tmp_path / "vae.onnx"))
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "vae.onnx"), "--count", "3", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["outputs"]["samples"]["shape"] == [3, 64], res.output
    res = CliRunner().invoke(app, ["predict", str(tmp_path / "vae.onnx"), "--count", "3", "--input", "count=5"])
    assert res.exit_code == 1 and res.stderr.splitlines() == [
        "error: --input count: 'count' is the generator's count, which --count gives",
        "  hint: leave --input count out and give --count 5"], res.stderr


def test_predict_inputs_list_example_is_quoted_for_the_shell(tmp_path):
    """predict's --help and hints showed a list as --input weights=[0.1,0.9]: unquoted, zsh
    refuses it ('no matches found', [...] is a glob) and any shell splits [0.1, 0.9] at the
    space, so a user copying it got an error before flowgrad ran, or '[0.1, is not a number or
    a JSON list' with the same unquoted example. The examples are quoted, as a shell needs."""
    from typer.testing import CliRunner

    from cli import app

    model = str(tmp_path / "g.onnx")  # (--input is read before the model)
    for text, hint in (("weights", "--input 'weights=[0.1,0.9]' for a list (quoted for the shell)"),
                       ("w=[0.1,", "--input 'w=[0.1,0.9]' for a list (quoted for the shell)")):
        res = CliRunner().invoke(app, ["predict", model, "--count", "2", "--input", text])
        assert res.exit_code == 1 and res.stderr.splitlines()[1].endswith(hint), res.output
    res = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "300"})
    assert "--input 'weights=[0.1,0.9]'" in " ".join(res.output.split()), res.output

def test_generator_feeds_takes_a_conditional_generators_inputs(tmp_path):
    """generator_feeds(path, count, seed) refused a conditional generator ('not count and seed');
    its `inputs` gives the other inputs by name, checked against the model's: the dtype (a float
    input takes numbers, cast to float32 within its range), the shape (a [10] input a list of
    10), and the API's words in the messages (inputs['weights'], not --input)."""
    from runtime.export import generator_feeds, predict

    path = _conditional_generator(tmp_path, weighted=True)
    mix = [0.0] * 8 + [0.5, 0.5]
    feeds = generator_feeds(path, 3, seed=4, inputs={"weights": mix})
    assert sorted(feeds) == ["count", "seed", "weights"] and feeds["count"] == 3 and feeds["seed"] == 4
    assert feeds["weights"].dtype == np.float32 and feeds["weights"].shape == (10,)
    one = predict(path, feeds)["samples"]
    assert one.shape == (3, 64)
    np.testing.assert_array_equal(one, predict(path, generator_feeds(path, 3, 4, {"weights": np.asarray(mix)}))["samples"])
    assert not np.array_equal(one, predict(path, generator_feeds(path, 3, 4, {"weights": [1.0] + [0.0] * 9}))["samples"])
    for inputs, words in (
            (None, f"^{re.escape(path)} also takes the input\\(s\\) weights \\(a conditional generator\\): give it "
                   "with inputs="),
            ([("weights", mix)], "^inputs must be a dict of input name to value, got list"),
            ({"weights": [0.1, 0.9]}, r"^inputs\['weights'\] must be a list of 10 numbers, got a list of 2"),
            ({"weights": 0.5}, r"^inputs\['weights'\] must be a list of 10 numbers, got a number"),
            ({"weights": [[0.1] * 10]}, r"^inputs\['weights'\] must be a list of 10 numbers, got an array of shape \[1, 10\]"),
            ({"weights": [0.1] * 9 + [float("nan")]}, r"^inputs\['weights'\] has NaN or inf values"),
            ({"weights": [0.1] * 9 + [1e39]}, r"^inputs\['weights'\] holds 1e\+39, beyond float32's range"),
            ({"weights": [0.1] * 9 + [True]}, r"^inputs\['weights'\] must be numbers"),
            ({"weights": "0.5"}, r"^inputs\['weights'\] must be a number or a list of numbers, got '0.5'"),
            ({"weights": [[0.1], [0.1, 0.2]]}, r"^inputs\['weights'\] is ragged"),
            ({"weights": mix, "count": 3}, r"^inputs\['count'\]: 'count' is the generator's count, which count= gives"),
            ({"weights": mix, "seed": 3}, r"^inputs\['seed'\]: the seed is given by seed=")):
        with pytest.raises(DataError, match=words) as e:  # (an ExportArgumentError, a DataError too)
            generator_feeds(path, 3, inputs=inputs)
        assert e.value.hint, e.value
    with pytest.raises(DataError, match="^count must be an integer of at least 1"):  # the count as before
        generator_feeds(path, 0, inputs={"weights": mix})


# ---------------------------------------------------------------- pictures
def test_plot_samples(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    for model in ("vae", "dae"):
        run_dir = str(tmp_path / model)
        train(load_spec(MODEL[model], SMALL[model]), run_dir=run_dir, steps=2, threads=1, device="cpu")
        png = tmp_path / f"{model}.png"
        res = runner.invoke(app, ["plot", "samples", run_dir, "-o", str(png), "--count", "16"])
        assert res.exit_code == 0, res.output
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000

    from runtime.samples import samples_of
    from spec.errors import FlowgradError

    gen = samples_of(str(tmp_path / "vae"), count=10, seed=3)
    assert gen.kind == "generator" and gen.images["samples"].shape == (10, 8, 8)
    assert gen.note == "10 samples, seed 3"
    assert samples_of(str(tmp_path / "vae"), count=1).note == "1 sample, seed 0"  # (the title said "1 samples")
    rec = samples_of(str(tmp_path / "dae"), count=5, seed=3)
    assert rec.kind == "reconstruction" and list(rec.images) == ["input", "corrupted", "reconstructed"]
    assert rec.meta["noise"] == [["masking_noise", 0.25]]  # the spec's own corruption
    masked = rec.images["corrupted"] == 0
    assert np.all(rec.images["input"][~masked] == rec.images["corrupted"][~masked])
    res = runner.invoke(app, ["plot", "samples", str(tmp_path), "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 1 and "not a run directory" in res.output
    # user mistakes are one-line errors, and no partial file is left
    for args, words in ((["-o", str(tmp_path / "p.xyz")], "cannot write a 'xyz' image"),
                        (["-o", str(tmp_path / "x.png"), "--corrupt", "0.5"], "corrupts none")):
        res = runner.invoke(app, ["plot", "samples", str(tmp_path / "vae"), *args])
        assert res.exit_code == 1 and words in res.output, (args, res.output)
        assert isinstance(res.exception, SystemExit), (args, res.exception)  # not a traceback
    assert not (tmp_path / "p.xyz").exists()
    # --seed is 0 to 2**63 - 1, as in every verb (10**20 said "fit in 64 bits", with the count)
    res = runner.invoke(app, ["plot", "samples", str(tmp_path / "vae"), "-o", str(tmp_path / "x.png"), "--seed", str(10**20)])
    assert res.exit_code == 2 and "--seed" in res.output
    res = runner.invoke(app, ["plot", "samples", str(tmp_path / "vae"), "-o", str(tmp_path / "x.png"), "--count", str(10**10)])
    assert res.exit_code == 2 and "--count" in res.output
    for bad in (0, 1.5, 2.0, 10**10):  # count=0 drew 64 digits, 1.5 went into the graph's int64 count
        with pytest.raises(FlowgradError, match="^count must be"):
            samples_of(str(tmp_path / "vae"), count=bad)
    for run in ("vae", "dae"):  # seed=-1 drew digits (vae), or ended in NumPy's ValueError (dae)
        with pytest.raises(FlowgradError, match="^seed must be an integer of at least 0"):
            samples_of(str(tmp_path / run), count=2, seed=-1)


BLOCK_CALL = """
flowgrad: 1
name: calls
dims: {D: 4, H: 3}
inputs:
  x: {shape: [N, D]}
  count: {shape: [], dtype: int64}
blocks:
  enc:
    in: [v]
    graph:
      h: dense(v, H, act=tanh)
    out: [h]
graph:
  a: enc(x)
  b: enc(2 * x)
outputs:
  noise: normal(zeros(count, H))
loss: mean(a * b)
"""


def test_block_call_shares_parameters_and_checks_arity(tmp_path):
    from spec.errors import SpecError

    spec = spec_from_text(BLOCK_CALL, str(tmp_path / "calls.yaml"))
    cm = compile_spec(spec, graphs=("train", "infer"))
    assert sorted(cm.params) == ["enc.h.W", "enc.h.b"]  # two calls, one set
    infer = cm.graphs["infer"]
    assert [(i.name, i.dtype, i.shape) for i in infer.inputs] == [("count", "int64", []), ("seed", "int64", [])]
    assert infer.outputs[0].shape == ["count", 3]
    bad = BLOCK_CALL.replace("b: enc(2 * x)", "b: enc(x, x)")
    with pytest.raises(SpecError, match=r"block 'enc' takes 1 argument\(s\) \(v\), got 2") as info:
        compile_spec(spec_from_text(bad, str(tmp_path / "bad.yaml")))
    assert (info.value.loc.line, info.value.loc.col) == (16, 13)  # at the argument too many


READ_BEFORE_CALL = """
flowgrad: 1
name: readfirst
dims: {D: 4, H: 3}
inputs:
  x: {shape: [N, T, D]}
blocks:
  enc:
    in: [v]
    graph:
      h: dense(v, H, act=tanh)
    out: [h]
  cell:
    in: [x_t, s]
    params:
      U: {shape: [H, H], init: orthogonal}
    graph:
      s2: tanh(enc(x_t) + s @ U)
    out: [s2]
graph:
  tied: tanh(mean(x, axis=1) @ enc.h.W) @ cell.U
  states: scan(cell, over=x, init=[zeros(N, H)])
  z: sum(tied * states[:, -1, :], axis=-1)
loss: mean(z * z)
"""


def test_a_blocks_parameters_are_read_before_the_block_is_first_called(tmp_path):
    """enc.h.W (made by enc's layer at its first call) and cell.U (declared under the block's
    params:) read by an entry lowered before any call of their blocks: 'not a parameter', though
    the same spec with the entries in another order compiled; flowgrad check (the file's order)
    and train (the loss's) disagreed on one spec. The weights are the ones the calls use, their
    gradients summing both uses."""
    spec = spec_from_text(READ_BEFORE_CALL, str(tmp_path / "first.yaml"))
    check_spec(spec)
    cm = compile_spec(spec, graphs=("train",))
    assert sorted(cm.params) == ["cell.U", "enc.h.W", "enc.h.b"]
    report = gradcheck_spec(spec, seed=1)
    assert max(report["main"].values()) < 1e-6, report
    # in the file, the call first (check was fine), but the loss reads `tied` first (train was not)
    called_first = READ_BEFORE_CALL.replace("  tied: tanh(mean(x, axis=1) @ enc.h.W) @ cell.U\n", "").replace(
        "  z: sum(", "  tied: tanh(mean(x, axis=1) @ enc.h.W) @ cell.U\n  z: sum(")
    assert called_first.index("states: scan") < called_first.index("tied:")
    spec = spec_from_text(called_first, str(tmp_path / "second.yaml"))
    check_spec(spec)
    assert sorted(compile_spec(spec, graphs=("train",)).params) == ["cell.U", "enc.h.W", "enc.h.b"]
    # a layer's parameter of a block that nothing calls before the read: said so, with the way out
    alone = READ_BEFORE_CALL.replace("s2: tanh(enc(x_t) + s @ U)", "s2: tanh(x_t @ transpose(U[:, :1]) + s @ U)"
                                     ).replace("dims: {D: 4, H: 3}", "dims: {D: 3, H: 3}")
    with pytest.raises(SpecError, match=r"'enc.h.W' is made by the first call of block 'enc', and is read here "
                                        r"before any call of it") as info:
        check_spec(spec_from_text(alone, str(tmp_path / "alone.yaml")))
    assert "call enc(...) in a graph entry" in info.value.hint
    # a call that needs what reads its weight: a cycle, said to be through the block's parameter
    cyclic = READ_BEFORE_CALL.replace("s2: tanh(enc(x_t) + s @ U)", "s2: tanh(enc(x_t * mean(tied)) + s @ U)")
    with pytest.raises(SpecError, match=r"cycle in the graph: tied -> states -> tied: 'tied' reads 'enc.h.W', which "
                                        r"block 'enc' makes at its first call, in 'states'") as info:
        check_spec(spec_from_text(cyclic, str(tmp_path / "cyclic.yaml")))
    assert "params:" in info.value.hint and "scan" not in info.value.hint


TIED_IN_BLOCK = """
flowgrad: 1
name: tiedblock
dims: {D: 6, H: 4}
inputs:
  x: {shape: [N, D]}
blocks:
  ae:
    in: [v]
    graph:
      h: dense(v, H, act=sigmoid)
      r: dense(h, D, W=transpose(ae.h.W))
    out: [r]
graph:
  h: dense(x, H, act=sigmoid)
  rec: ae(x)
loss: mse(rec, x) + mean(h)
"""


def test_a_tied_layer_in_a_block_reads_the_blocks_own_weight(tmp_path):
    """In a block with an entry h, 'h.W' was the enclosing graph's h.W (a tied decoder tied to
    another layer without a word) while 'h' is the block's own entry: refused, naming ae.h.W."""
    cm = compile_spec(spec_from_text(TIED_IN_BLOCK, str(tmp_path / "ok.yaml")), graphs=("train",))
    assert sorted(cm.params) == ["ae.h.W", "ae.h.b", "ae.r.b", "h.W", "h.b"]
    wrong = TIED_IN_BLOCK.replace("W=transpose(ae.h.W)", "W=transpose(h.W)")
    with pytest.raises(SpecError, match=r"'h.W' in block 'ae' names the parameter of the enclosing graph's entry 'h', "
                                        r"not that of the block's own entry 'h', which is 'ae.h.W'") as info:
        check_spec(spec_from_text(wrong, str(tmp_path / "wrong.yaml")))
    assert (info.value.loc.line, info.value.loc.col) == (12, 34)
    assert info.value.hint.startswith("write ae.h.W for the block's own parameter")
    # without an h outside, h.W is no parameter (as before): the hint names the block's
    alone = wrong.replace("  h: dense(x, H, act=sigmoid)\n", "").replace(" + mean(h)", "")
    with pytest.raises(SpecError, match=r"'h.W' is not a parameter") as info:
        check_spec(spec_from_text(alone, str(tmp_path / "alone.yaml")))
    assert "ae.h.W" in info.value.hint
    # the block's own weight read before the block's entry that makes it
    early = TIED_IN_BLOCK.replace("r: dense(h, D, W=transpose(ae.h.W))", "r: dense(h * mean(v @ ae.h.W), D, W=transpose(ae.h.W))")
    early = early.replace("      h: dense(v, H, act=sigmoid)\n      r:", "      r:").replace("    out: [r]", "      h: dense(v, H, act=sigmoid)\n    out: [r]")
    assert early.index("r: dense") < early.index("h: dense(v")
    assert sorted(compile_spec(spec_from_text(early, str(tmp_path / "early.yaml")), graphs=("train",)).params) == \
        ["ae.h.W", "ae.h.b", "ae.r.b", "h.W", "h.b"]


@pytest.mark.parametrize("call, hint", [
    ("bidirectional(gru, b, H, U=ha.U)", "write it in a block (blocks: {enc: {in: [v], graph: {h: 'bidirectional(lstm, v, H)'}"),
    ("gru(b, H, bu=ha.b)", "write it in a block (blocks: {enc: {in: [v], graph: {h: 'gru(v, H)'}"),
])
def test_a_recurrent_layer_given_weights_is_told_to_share_them_through_a_block(tmp_path, call, hint):
    """dense takes W= to share a weight, the recurrent layers none: their usage alone did not say how
    two sequences run through one layer's weights."""
    text = BLOCK_CALL_SEQ.replace("hb: rnn(b, H)", f"hb: {call}")
    with pytest.raises(SpecError, match=r"has no argument '(U|bu)'") as info:
        check_spec(spec_from_text(text, str(tmp_path / "seq.yaml")))
    assert hint in info.value.hint and "enc(a) and enc(b)" in info.value.hint
    cell = BLOCK_CALL_SEQ.replace("hb: rnn(b, H)", "hb: scan(c, over=b, init=[zeros(N, H)])").replace(
        "graph:\n  ha:", "blocks:\n  c: {in: [x_t, h], graph: {h2: 'rnn_cell(x_t, h, W=ha.W)'}, out: [h2]}\ngraph:\n  ha:")
    with pytest.raises(SpecError, match=r"rnn_cell\(\) has no argument 'W'") as info:
        check_spec(spec_from_text(cell, str(tmp_path / "cell.yaml")))
    assert "scan (or call) the same block" in info.value.hint
    assert compile_spec(spec_from_text(BLOCK_CALL_SEQ, str(tmp_path / "ok.yaml")), graphs=("train",))


BLOCK_CALL_SEQ = """
flowgrad: 1
name: pairs
dims: {E: 4, H: 3}
inputs:
  a: {shape: [N, T, E]}
  b: {shape: [N, T, E]}
graph:
  ha: rnn(a, H)
  hb: rnn(b, H)
loss: mean(ha[:, -1, :] * hb[:, -1, :])
"""


def test_reconstructions_read_the_data_the_run_trained_on(tmp_path):
    """A spec's relative train.data.path, and --data / --valid, are where the run's data came
    from; plot samples reads them from run.json, not relative to the run's spec copy."""
    from runtime.samples import samples_of

    specs = tmp_path / "specs"
    specs.mkdir()
    x = D.load_digits().arrays["x"]
    np.savez(specs / "mine.npz", x=x[:300])
    text = open(MODEL["dae"]).read().replace("data: {dataset: digits, valid: 0.2}", "data: {path: mine.npz, valid: 0.2}")
    assert "path: mine.npz" in text
    (specs / "dae.yaml").write_text(text)
    train(load_spec(str(specs / "dae.yaml"), SMALL["dae"]), run_dir=str(tmp_path / "run"), steps=2, threads=1,
          device="cpu")
    rec = samples_of(str(tmp_path / "run"), count=4, seed=1)
    assert rec.images["input"].shape == (4, 8, 8)
    # --data and --valid given at training time
    np.savez(tmp_path / "valid.npz", x=x[300:310] * 0 + 0.5)
    train(load_spec(MODEL["dae"], SMALL["dae"]), run_dir=str(tmp_path / "run2"), steps=2, threads=1, device="cpu",
          data=str(specs / "mine.npz"), valid=str(tmp_path / "valid.npz"))
    rec = samples_of(str(tmp_path / "run2"), count=4, seed=1)
    np.testing.assert_allclose(rec.images["input"], 0.5)  # the validation file's digits


@pytest.mark.parametrize("axis, shape", [(-1, (2,)), (-3, (3, 2, 2)), (1, (3, 2, 2)), (2, (2, 2))])
def test_layer_norm_shorthand_shapes_gamma_and_beta_like_the_normalised_axes(tmp_path, axis, shape):
    """layer_norm(x, axis=k) makes gamma and beta over axes k.. (it made them over the last
    axis only, and the op then refused them)."""
    text = f"""
flowgrad: 1
name: ln
inputs:
  x: {{shape: [N, 3, 2, 2]}}
graph:
  h: layer_norm(x, axis={axis})
outputs:
  h: h
loss: mean(h * h)
"""
    cm = compile_spec(spec_from_text(text, str(tmp_path / "ln.yaml")))
    assert cm.params["h.gamma"].shape == shape and cm.params["h.beta"].shape == shape


def test_plot_samples_of_a_vae_that_also_outputs_its_code(tmp_path):
    """A generator whose outputs also read the data (samples from a count, and the code of x)
    draws samples; one whose outputs reconstruct x as well reconstructs. Both ended in
    onnxruntime's ValueError traceback: the graph's other input was never fed."""
    from runtime.samples import samples_of

    text = open(MODEL["vae"]).read().replace("  samples: sigmoid(decode(normal(zeros(count, Z))))",
                                             "  samples: sigmoid(decode(normal(zeros(count, Z))))\n  code: mu")
    assert "code: mu" in text
    (tmp_path / "vae.yaml").write_text(text)
    train(load_spec(str(tmp_path / "vae.yaml"), SMALL["vae"]), run_dir=str(tmp_path / "gen"), steps=2, threads=1,
          device="cpu")
    gen = samples_of(str(tmp_path / "gen"), count=5, seed=1)
    assert gen.kind == "generator" and gen.images["samples"].shape == (5, 8, 8)
    (tmp_path / "both.yaml").write_text(text.replace("  code: mu", "  code: mu\n  reconstruction: sigmoid(logits)"))
    train(load_spec(str(tmp_path / "both.yaml"), SMALL["vae"]), run_dir=str(tmp_path / "both"), steps=2, threads=1,
          device="cpu")
    rec = samples_of(str(tmp_path / "both"), count=3, seed=1)
    assert rec.kind == "reconstruction" and rec.meta["output"] == "reconstruction"
    assert rec.images["reconstructed"].shape == (3, 8, 8)


def test_plot_samples_corrupts_with_every_step_of_the_spec_noise(tmp_path):
    """gaussian_noise(masking_noise(x, p), sigma) masks, then adds noise: the corrupted row
    showed the outer gaussian noise alone, not what the model was trained to undo."""
    from runtime.samples import samples_of

    text = open(MODEL["dae"]).read().replace("masking_noise(x, p=0.25)", "gaussian_noise(masking_noise(x, p=0.5), sigma=0.05)")
    assert "sigma=0.05" in text
    (tmp_path / "dae.yaml").write_text(text)
    train(load_spec(str(tmp_path / "dae.yaml"), SMALL["dae"]), run_dir=str(tmp_path / "run"), steps=2, threads=1,
          device="cpu")
    rec = samples_of(str(tmp_path / "run"), count=16, seed=2)
    assert rec.meta["noise"] == [["masking_noise", 0.5], ["gaussian_noise", 0.05]]
    assert "masking noise p=0.5, then gaussian noise sigma=0.05" in rec.note
    x, noisy = rec.images["input"], rec.images["corrupted"]
    assert (noisy != x).mean() > 0.5  # noise nearly everywhere ...
    dark = x > 0.5
    assert 0.3 < (noisy[dark] < 0.25).mean() < 0.7  # ... and about half of the ink masked


def test_plot_samples_corrupts_with_the_noise_of_a_block_the_graph_calls(tmp_path):
    """A DAE whose encoder block adds gaussian_noise(v, sigma=0.4) was shown corrupted by the
    default masking noise p=0.25: only the spec's top-level graph was searched for its noise."""
    from runtime.samples import samples_of

    text = open(MODEL["dae"]).read()
    text = text.replace("  x_noisy: masking_noise(x, p=0.25)            # train mode only; eval and infer see x\n", "")
    text = text.replace("  h: dense(x_noisy, H, act=sigmoid)", "  h: enc(x)")
    text = text.replace("graph:\n", "blocks:\n  enc:\n    in: [v]\n    graph:\n      vn: gaussian_noise(v, sigma=0.4)\n"
                                    "      h: dense(vn, H, act=sigmoid)\n    out: [h]\ngraph:\n", 1)
    text = text.replace("W=transpose(h.W)", "W=transpose(enc.h.W)")
    assert "x_noisy" not in text and "enc(x)" in text
    (tmp_path / "dae.yaml").write_text(text)
    train(load_spec(str(tmp_path / "dae.yaml"), SMALL["dae"]), run_dir=str(tmp_path / "run"), steps=2, threads=1,
          device="cpu")
    rec = samples_of(str(tmp_path / "run"), count=4, seed=1)
    assert rec.meta["noise"] == [["gaussian_noise", 0.4]]
    assert "gaussian noise sigma=0.4" in rec.note


@pytest.mark.parametrize("kind", ["generator", "reconstruction"])
def test_plot_samples_title_fits_a_picture_of_few_digits(kind, tmp_path, monkeypatch):
    """The figure was as wide as its digits: plot samples runs/vae --count 1 was titled
    "1 samples, se", and a DAE's two triples cut "dae: held-out digits, ..." at both edges."""
    import runtime.plots as plots
    import runtime.samples as samples

    note = "1 sample, seed 0" if kind == "generator" else "held-out digits, masking noise p=0.25"
    images = ({"samples": np.zeros((1, 8, 8))} if kind == "generator" else
              {k: np.zeros((1, 8, 8)) for k in ("input", "corrupted", "reconstructed")})
    monkeypatch.setattr(samples, "samples_of", lambda *a, **k: samples.Samples(kind, images, note))
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: figs.append(fig))
    samples.plot_samples(str(tmp_path / "a_run_named_at_length"), str(tmp_path / "s.png"))
    fig = figs[0]
    fig.canvas.draw()
    title = fig._suptitle.get_window_extent()
    assert fig._suptitle.get_text() == f"a_run_named_at_length: {note}"
    assert 0 <= title.x0 and title.x1 <= fig.bbox.width, (title, fig.bbox)
    for ax in fig.axes:  # the digits are all in the picture
        box = ax.get_window_extent()
        assert 0 <= box.x0 and box.x1 <= fig.bbox.width + 0.5


def test_plot_samples_of_many_digits_draws_a_picture_of_bounded_size(tmp_path, monkeypatch):
    """--count takes up to 100,000 digits: at 0.1 inch a pixel their grid was a 31,000-pixel
    square, and drawing it took over 20 GB (the process was killed). A large grid now shrinks
    its pixels; a small one keeps them."""
    import runtime.plots as plots
    import runtime.samples as samples

    sizes = {}
    for n in (64, samples.MAX_SAMPLES):
        images = {"samples": np.zeros((n, 8, 8), np.float32)}
        monkeypatch.setattr(samples, "samples_of", lambda *a, **k: samples.Samples("generator", images, "many"))
        monkeypatch.setattr(plots, "save_figure", lambda fig, output, dpi: sizes.setdefault(n, fig.get_size_inches() * dpi))
        samples.plot_samples(str(tmp_path / "run"), str(tmp_path / "s.png"), count=n)
    assert sizes[64][0] == pytest.approx(0.1 * 110 * (8 * 9 + 1))  # 8 digits across, 11 pixels to a pixel
    assert max(sizes[samples.MAX_SAMPLES]) <= 4500, sizes


def test_generator_feeds_given_every_integer_input_leaves_none_for_the_count(tmp_path):
    """A generator whose count is not named count (n), with every integer scalar input given by
    inputs=, has none left for count= to give: refused, naming them."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper

    from runtime.export import generator_feeds
    from spec.errors import ExportError

    ints = [helper.make_tensor_value_info(n, TP.INT64, []) for n in ("n", "digit", "seed")]
    graph = helper.make_graph([helper.make_node("Add", ["n", "digit"], ["y"])], "g", ints,
                              [helper.make_tensor_value_info("y", TP.INT64, [])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), tmp_path / "g.onnx")
    path = str(tmp_path / "g.onnx")
    assert sorted(generator_feeds(path, 3, 1, {"digit": 2})) == ["digit", "n", "seed"]  # n is the count
    with pytest.raises(ExportError, match=r"inputs= gives every integer scalar input of .*g\.onnx \(n, digit\): none is "
                                          r"left for count= to give"):
        generator_feeds(path, 3, 1, {"digit": 2, "n": 4})


def test_generator_feeds_hints_that_a_bool_input_takes_true_or_false(tmp_path):
    """A conditional generator with a bool input (flag) given --input flag=1 was refused as
    "--input flag must be true or false, got 1" with the hint "flag takes a number (bool)",
    which --input flag=0 then met again: the hint says it takes true or false."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper

    from runtime.export import generator_feeds
    from spec.errors import ExportError

    ins = [helper.make_tensor_value_info("count", TP.INT64, []), helper.make_tensor_value_info("seed", TP.INT64, []),
           helper.make_tensor_value_info("flag", TP.BOOL, []), helper.make_tensor_value_info("mask", TP.BOOL, [2])]
    graph = helper.make_graph([helper.make_node("Not", ["flag"], ["y"]), helper.make_node("Not", ["mask"], ["z"])],
                              "g", ins, [helper.make_tensor_value_info("y", TP.BOOL, []),
                                         helper.make_tensor_value_info("z", TP.BOOL, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), tmp_path / "g.onnx")
    path = str(tmp_path / "g.onnx")
    feeds = generator_feeds(path, 3, 1, {"flag": True, "mask": [True, False]})
    assert feeds["flag"].dtype == np.bool_ and feeds["mask"].tolist() == [True, False]
    with pytest.raises(ExportError) as e:
        generator_feeds(path, 3, 1, {"flag": 1, "mask": [True, False]})
    assert e.value.message == "inputs['flag'] must be true or false, got 1"
    assert e.value.hint == "flag takes true or false (bool)"
    with pytest.raises(ExportError) as e:
        generator_feeds(path, 3, 1, {"flag": True, "mask": [1, 0]})
    assert e.value.hint == "mask takes a list of 2 values true or false (bool)"
    with pytest.raises(ExportError) as e:
        generator_feeds(path, 3, 1, {"flag": True})
    assert "e.g. inputs={\"mask\": VALUE}, a list of 2 values true or false (bool)" in e.value.hint


def test_a_conditional_generators_ids_are_not_taken_for_its_count(tmp_path):
    """A conditional generator whose count is named n: --count 4 --input n=3 drew 3 samples of
    digit 4 (the one integer scalar --input left out, the digit, was taken for the count). The
    export records the digit as ids (of a one_hot of 10 classes): n is then the count, and giving
    it with --input is refused with the flags to write."""
    from typer.testing import CliRunner

    from cli import app

    (tmp_path / "cvae.yaml").write_text(CVAE.replace("count", "n"))
    train(load_spec(str(tmp_path / "cvae.yaml")), run_dir=str(tmp_path / "run"), steps=2, threads=1, device="cpu")
    path = str(tmp_path / "cvae.onnx")
    export(str(tmp_path / "run"), path)
    res = CliRunner().invoke(app, ["predict", path, "--count", "4", "--input", "n=3", "--json"])
    assert res.exit_code == 1 and res.stderr.splitlines() == [
        "error: --input n: 'digit' is read as ids (below 10), so 'n' is the generator's count, which --count gives",
        "  hint: give --input digit=VALUE and --count 3"], res.stderr
    res = CliRunner().invoke(app, ["predict", path, "--count", "4", "--input", "digit=3", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["outputs"]["samples"]["shape"] == [4, 64], res.output


def test_a_float_input_given_a_whole_number_takes_it_as_a_float(tmp_path):
    """--input scale=100000000000000000000 for a float input was checked against int64's range
    ('outside the range of float32'), though 1e20 is a float32; a whole number is read as a float
    there, and beyond float32's range refused as such."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper

    from runtime.export import generator_feeds
    from spec.errors import ExportError

    ins = [helper.make_tensor_value_info("n", TP.INT64, []), helper.make_tensor_value_info("seed", TP.INT64, []),
           helper.make_tensor_value_info("scale", TP.FLOAT, [])]
    graph = helper.make_graph([helper.make_node("Identity", ["scale"], ["y"])], "g", ins,
                              [helper.make_tensor_value_info("y", TP.FLOAT, [])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), tmp_path / "g.onnx")
    path = str(tmp_path / "g.onnx")
    feeds = generator_feeds(path, 3, 1, {"scale": 10**20})
    assert feeds["scale"].dtype == np.float32 and feeds["scale"] == np.float32(1e20) and feeds["n"] == 3
    with pytest.raises(ExportError, match=r"holds 1e\+40, beyond float32's range"):
        generator_feeds(path, 3, 1, {"scale": 10**40})


def test_a_list_holding_a_whole_number_beyond_int64_is_read_as_its_scalar_is(tmp_path):
    """--input 'weights=[100000000000000000000,1]' for a float input was refused as "must be
    numbers, got values of no number type" (NumPy read the list as objects), though the same
    number alone is taken as 1e20; and an integer input given [9223372036854775808, 1] was told
    it "must hold integers". A list's whole numbers are read as its scalar is: floats for a float
    input, and beyond int64's range refused with the number for an integer one."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper

    from runtime.export import generator_feeds
    from spec.errors import ExportError

    ins = [helper.make_tensor_value_info("n", TP.INT64, []), helper.make_tensor_value_info("seed", TP.INT64, []),
           helper.make_tensor_value_info("weights", TP.FLOAT, [2]), helper.make_tensor_value_info("ids", TP.INT64, [2])]
    graph = helper.make_graph([helper.make_node("Identity", ["weights"], ["y"])], "g", ins,
                              [helper.make_tensor_value_info("y", TP.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), tmp_path / "g.onnx")
    path = str(tmp_path / "g.onnx")
    feeds = generator_feeds(path, 3, 1, {"weights": [10**20, 1], "ids": [1, 2]})
    assert feeds["weights"].dtype == np.float32 and feeds["weights"].tolist() == [np.float32(1e20), 1.0]
    with pytest.raises(ExportError, match=r"holds 1e\+40, beyond float32's range"):
        generator_feeds(path, 3, 1, {"weights": [10**40, 1], "ids": [1, 2]})
    for big in (10**20, 2**63):
        with pytest.raises(ExportError) as e:
            generator_feeds(path, 3, 1, {"weights": [0.5, 1], "ids": [big, 1]})
        assert e.value.message == f"inputs['ids'] holds {big}, outside the range of int64"
