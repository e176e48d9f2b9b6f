"""`flowgrad gradcheck` (compiler/gradcheck.py): it checks each parameter at a point off the
kinks of relu, max, abs and the like, tells a probe across a kink from a wrong gradient, and
still fails a wrong gradient."""
from __future__ import annotations

import os

import numpy as np
import pytest

from compiler.gradcheck import check_gradients_off_kinks, gradcheck_spec
from spec import load_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp.yaml")


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_an_input_of_another_float_type_is_fed_in_it(dtype):
    """An input declared float16 (or float64) in a float32 model keeps that type in the graphs, but
    the random batch of gradcheck and bench was made in the model's type: onnxruntime refused it
    ('Unexpected input data type') and both commands ended in a traceback."""
    from runtime.bench import bench
    from spec import spec_from_text

    spec = spec_from_text("flowgrad: 1\nname: d\ninputs:\n  x: {shape: [N, 4]}\n"
                          f"  m: {{shape: [N, 4], dtype: {dtype}}}\n  y: {{shape: [N], dtype: int64}}\n"
                          "graph:\n  logits: dense(x * cast(m, 'float32'), 3)\nloss: cross_entropy(logits, y)\n")
    report = gradcheck_spec(spec)
    assert all(err < 1e-4 for err in report["main"].values()), report
    assert bench(spec, steps=2, warmup=0)["steps"] == 2


@pytest.mark.parametrize("H", [2, 3, 4])
def test_mlp_with_few_units_passes(H):
    """With H=4 (2, 3) the dropout mask zeroed every hidden unit of the check's batch, so the
    zero bias b2 sat exactly on its relu's kink: its central difference was half a one-sided
    slope and gradcheck reported b2 FAIL with a relative error near 1 on a correct model."""
    for seed in (0, 1):
        report = gradcheck_spec(load_spec(MLP, [f"dims.H={H}"]), seed=seed)
        for p, err in report["main"].items():
            assert err < 1e-5, f"H={H} seed={seed} {p}: {err:.2e}"


def _relu_sum(xs):
    return float(np.sum(np.maximum(xs[0], 0.0)))


def test_a_probe_across_a_kink_is_drawn_again():
    # x[0] lies 3e-7 from relu's kink, inside the stencil of step 1e-6; the others are far from it
    x = np.array([3e-7, 1.0, 2.0, -1.0, 0.5, -0.25])
    grad = (x > 0).astype(float)
    rng = np.random.default_rng(0)
    err = check_gradients_off_kinks(_relu_sum, x, grad, _relu_sum([x]), rng, n_directions=0, n_coords=30)
    assert err < 1e-8
    # on the kink along every probe: nothing is checkable, which is not a pass nor a failure
    one = np.array([3e-7])
    assert np.isnan(check_gradients_off_kinks(_relu_sum, one, np.ones(1), _relu_sum([one]), rng, n_directions=0))


def test_a_wrong_gradient_still_fails_across_a_kink():
    one = np.array([3e-7])
    rng = np.random.default_rng(0)
    assert check_gradients_off_kinks(_relu_sum, one, np.array([0.5]), _relu_sum([one]), rng) > 0.1
    x = np.array([0.3, -0.7, 1.2])
    assert check_gradients_off_kinks(_relu_sum, x, np.ones(3), _relu_sum([x]), rng) > 0.1  # relu' = 1 everywhere
    assert check_gradients_off_kinks(_relu_sum, x, np.array([1.0, np.nan, 1.0]), _relu_sum([x]), rng) == np.inf


@pytest.mark.parametrize("wrong", ["passes_negatives", "halved"])
def test_a_wrong_relu_gradient_fails_the_whole_model_check(monkeypatch, wrong):
    """Moving the check off the kinks must not hide a wrong gradient rule."""
    from compiler.registry import get_op

    relu = type(get_op("relu"))

    def vjp(self, node, gouts):
        g = gouts[0]
        if wrong == "halved":
            y = node.outputs[0]
            return [g.graph.apply("where", y.graph.apply("gt", y, y.graph.lift(0.0, like=y)),
                                  g * 0.5, g.graph.lift(0.0, like=g))]
        return [g]  # relu'(x) = 1 for every x

    monkeypatch.setattr(relu, "vjp", vjp)
    report = gradcheck_spec(load_spec(MLP, ["dims.H=8"]), seed=0)
    assert max(report["main"][p] for p in ("W1", "b1", "W2", "b2")) > 1e-2, report


STATEFUL = os.path.join(ROOT, "models", "char_lstm_stateful.yaml")


def test_a_stateful_recurrent_spec_is_checked_at_the_checks_batch():
    """Its carried state has train.batch_size rows (32) and the check's batch 3: a Reshape
    of the state ended gradcheck (and gradcheck_spec) in an onnxruntime traceback."""
    report = gradcheck_spec(load_spec(STATEFUL, ["dims.H=16", "dims.E=8"]), seed=0)
    assert set(report["main"]) == {"e.W", "hs.W", "hs.U", "hs.b", "logits.W", "logits.b"}
    for p, err in report["main"].items():
        assert err < 1e-5, f"{p}: {err:.2e}"


@pytest.mark.parametrize("batch", ["N", "2", "B"])
def test_a_stateful_layer_is_checked_at_its_inputs_batch(tmp_path, batch):
    """The check's batch is the inputs' leading dim as it sizes them: 3 for N, a literal
    one as written, 4 for another symbolic name."""
    path = tmp_path / "s.yaml"
    path.write_text("flowgrad: 1\nname: s\ndims: {E: 3, H: 3}\ninputs:\n"
                    f"  x: {{shape: [{batch}, T, E]}}\ngraph:\n  hs: gru(x, H, stateful=true)\n"
                    "loss: mean(hs * hs) + mean(hs)\ntrain: {batch_size: 16}\n")
    report = gradcheck_spec(load_spec(str(path)), seed=0)
    assert report["main"] and max(report["main"].values()) < 1e-5, report


@pytest.mark.parametrize("features", [
    "flatten(top)",                           # k-max pooling over time: only the top values reach the loss
    "concat(flatten(top), mean(h, axis=1), axis=-1)",  # the top values beside another path
])
def test_topk_values_pass_their_gradient_to_the_entries_they_took(tmp_path, features):
    """topk had no gradient at all: k-max pooling was refused as 'parameter ... never reaches
    the loss', and beside another path its values were taken as constants, so training
    followed a wrong gradient that gradcheck failed."""
    path = tmp_path / "kmax.yaml"
    path.write_text("flowgrad: 1\nname: kmax\ndims: {V: 7, E: 4, H: 3, K: 2}\n"
                    "inputs:\n  x: {shape: [N, T], dtype: int64}\n  y: {shape: [N], dtype: int64}\n"
                    "graph:\n  h: rnn(embedding(x, V, E), H)\n"
                    "  top, idx: topk(transpose(h, [0, 2, 1]), 2, axis=-1)\n"
                    f"  logits: dense({features}, K)\n"
                    "loss: cross_entropy(logits, y)\n")
    report = gradcheck_spec(load_spec(str(path)), seed=0)
    assert set(report["main"]) == {"h.W", "h.rnn2.W", "h.rnn2.U", "h.rnn2.b", "logits.W", "logits.b"}, report
    for p, err in report["main"].items():
        assert err < 1e-5, f"{p}: {err:.2e}"


def test_a_parameter_pruned_from_the_gradients_is_told_in_the_specs_words(monkeypatch):
    """A spec's lone loss has no objective params, which the hint told to leave the parameter out of."""
    from compiler.training import CompiledModel
    from spec.errors import GradientError

    real = CompiledModel.trained_params
    monkeypatch.setattr(CompiledModel, "trained_params", lambda self, obj: real(self, obj) + ["ghost"])
    with pytest.raises(GradientError) as e:
        gradcheck_spec(load_spec(MLP, ["dims.H=4"]))
    assert (e.value.message, e.value.hint) == ("parameter 'ghost' does not reach the loss", "use it in the loss")
