"""grad/hvp/jacobian inside a spec against closed forms, in float64."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.check import Runner
from compiler.training import compile_spec
from spec import spec_from_text


def _infer(text, tmp_path, feeds, state=None):
    cm = compile_spec(spec_from_text(text, str(tmp_path / "t.yaml")), "float64", graphs=("infer",))
    graph = cm.graphs["infer"]
    state = {**cm.initial_state(0), **(state or {})}
    return Runner(graph.model)({**feeds, **{i.name: state[i.name] for i in graph.inputs if i.name in state}}), state


def test_hvp_holds_v_fixed_when_v_depends_on_wrt(tmp_path):
    """hvp(y, x, v) is H v: with y = sum(x^3), H = diag(6x), so hvp(y, x, x) = 6 x^2. Differentiating
    <grad, v> with v = x itself gave H v + grad = 9 x^2."""
    text = """
flowgrad: 1
name: hv
dims: {D: 3}
inputs:
  x: {shape: [N, D]}
outputs:
  hv: hvp(sum(x * x * x), x, x)
  hw: hvp(sum(x * x * x), x, tanh(x))
"""
    x = np.random.default_rng(0).normal(size=(2, 3))
    out, _ = _infer(text, tmp_path, {"x": x})
    np.testing.assert_allclose(out["hv"], 6 * x * x, rtol=1e-12)
    np.testing.assert_allclose(out["hw"], 6 * x * np.tanh(x), rtol=1e-12)


@pytest.mark.parametrize("batch", ["N", "4"])
def test_jacobian_with_another_per_example_input(tmp_path, batch):
    """y built from x and another [N, ...] input (a mask): the other input is repeated with x
    (it failed: 'mul: shapes [2*N, 2] and [N, 2] of the operands do not broadcast'). With a
    fixed batch size (x [4, D]) the mask, and what is computed from it example by example, was
    left unrepeated ('mul: shapes [8, 2] and [4, 2] ...'): an input's rows are its examples,
    whatever their count, where a parameter's are not."""
    text = """
flowgrad: 1
name: jm
dims: {D: 3, H: 2}
inputs:
  x: {shape: [BATCH, D]}
  m: {shape: [BATCH, H]}
graph:
  h: dense(x, H, act=sigmoid)
outputs:
  h: h
  J: jacobian(h * (m * 2 - 1), x)
""".replace("BATCH", batch)
    rng = np.random.default_rng(1)
    x, m = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    out, state = _infer(text, tmp_path, {"x": x, "m": m})
    h = out["h"]
    want = (h * (1 - h) * (m * 2 - 1))[:, :, None] * state["h.W"].T[None, :, :]
    np.testing.assert_allclose(out["J"], want, rtol=1e-10, atol=1e-14)


def test_jacobian_of_an_hvp_along_an_input_with_a_fixed_batch_size(tmp_path):
    """jacobian(hvp(y, x, v), x) with x and v [3, D]: v, an input, is repeated with x (it failed
    to compile: 'mul: shapes [3, 4] and [18, 4] of the operands do not broadcast'). With
    y = sum(tanh(x W)), hvp = ((-2 t (1 - t^2)) * (v W)) W^T for t = tanh(x W), and its
    Jacobian in x is checked against central differences."""
    text = """
flowgrad: 1
name: jh
dims: {D: 3, H: 4}
inputs:
  x: {shape: [3, D]}
  v: {shape: [3, D]}
params:
  W: {shape: [D, H], init: glorot_uniform}
graph:
  hv: hvp(sum(tanh(x @ W)), x, v)
outputs:
  hv: hv
  J: jacobian(hv, x)
"""
    rng = np.random.default_rng(5)
    x, v = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    out, state = _infer(text, tmp_path, {"x": x, "v": v})
    W = state["W"]
    t = np.tanh(x @ W)
    np.testing.assert_allclose(out["hv"], (-2 * t * (1 - t * t) * (v @ W)) @ W.T, rtol=1e-10)
    fd = np.zeros_like(out["J"])
    for n in range(3):
        for d in range(3):
            step = np.zeros_like(x)
            step[n, d] = 1e-6
            up, _ = _infer(text, tmp_path, {"x": x + step, "v": v}, state)
            down, _ = _infer(text, tmp_path, {"x": x - step, "v": v}, state)
            fd[n, :, d] = (up["hv"][n] - down["hv"][n]) / 2e-6
    np.testing.assert_allclose(out["J"], fd, rtol=1e-6, atol=1e-8)


def test_jacobian_through_a_reshape_naming_a_fixed_batch_size(tmp_path):
    """x [3, D] with a reshape to [3, 2, 2] (maxout): the rebuilt batch is M times longer (it
    failed: 'reshape: cannot reshape [6, 4] (24 elements) to [3, 2, 2] (12)')."""
    text = """
flowgrad: 1
name: jf
dims: {D: 3}
inputs:
  x: {shape: [3, D]}
graph:
  z: x @ W
  y: maxout(z, 2)
params:
  W: {shape: [D, 4], init: glorot_uniform}
outputs:
  z: z
  J: jacobian(y, x)
"""
    x = np.random.default_rng(2).normal(size=(3, 3))
    out, state = _infer(text, tmp_path, {"x": x})
    z = out["z"].reshape(3, 2, 2)
    pick = z.argmax(-1)  # [3, 2]: the winning piece of each unit
    cols = np.arange(2)[None, :] * 2 + pick  # [3, 2]: the column of z it came from
    want = np.stack([state["W"][:, cols[n]].T for n in range(3)])  # [3, 2, D]
    np.testing.assert_allclose(out["J"], want, rtol=1e-12)


def test_second_order_through_a_product_of_a_sequence(tmp_path):
    """x [N, T, E] @ W differentiated twice: the weight gradient flattens x and the output's
    gradient to [N*T, ...], and the second derivative reshapes [N*T, H] back to [N, T, H],
    two unknown dims in one ONNX Reshape (it failed to compile: 'cannot express reshape
    [N*T, 2] -> [N, T, 2] with one unknown dim'). It reads the shape at run time instead.
    With y = sum((x W)^2), H W = 2 XᵀX W for the rows X of x."""
    text = """
flowgrad: 1
name: hw
dims: {E: 3, H: 2}
inputs:
  x: {shape: [N, T, E]}
params:
  W: {shape: [E, H], init: glorot_uniform}
outputs:
  hw: hvp(sum((x @ W) * (x @ W)), W, W)
"""
    x = np.random.default_rng(3).normal(size=(2, 5, 3))
    out, state = _infer(text, tmp_path, {"x": x})
    rows = x.reshape(-1, 3)
    np.testing.assert_allclose(out["hw"], 2 * rows.T @ rows @ state["W"], rtol=1e-12)


def test_hvp_through_a_recurrent_layer(tmp_path):
    """hvp(y, x, v) of an LSTM's output differentiates the scan's gradient again (it was
    refused: 'second-order gradients through scan are not supported'): it equals the central
    difference of grad(y, x) along v, and what the steps written out (unroll=true) give."""
    text = """
flowgrad: 1
name: hl
dims: {E: 3, H: 4, T: 5}
inputs:
  x: {shape: [N, T, E]}
  v: {shape: [N, T, E]}
graph:
  hs: lstm(x, H, reverse=true, UNROLL)
  y: sum(hs * hs) + sum(tanh(hs))
outputs:
  g: grad(y, x)
  hv: hvp(y, x, v)
"""
    rng = np.random.default_rng(4)
    x, v = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
    out, state = _infer(text.replace("UNROLL", "unroll=false"), tmp_path, {"x": x, "v": v})
    eps = 1e-5
    up, _ = _infer(text.replace("UNROLL", "unroll=false"), tmp_path, {"x": x + eps * v, "v": v}, state)
    down, _ = _infer(text.replace("UNROLL", "unroll=false"), tmp_path, {"x": x - eps * v, "v": v}, state)
    np.testing.assert_allclose(out["hv"], (up["g"] - down["g"]) / (2 * eps), rtol=1e-6, atol=1e-8)
    unrolled, _ = _infer(text.replace("UNROLL", "unroll=true"), tmp_path, {"x": x, "v": v}, state)
    np.testing.assert_allclose(out["hv"], unrolled["hv"], rtol=1e-10, atol=1e-12)
    assert np.abs(out["hv"]).max() > 1e-2


@pytest.mark.parametrize("batch", ["N", "4"])
def test_jacobian_of_the_gradient_of_a_mean(tmp_path, batch):
    """jacobian(grad(mean(h * h), x), x): the per-example blocks of the Hessian of a mean over
    the batch. The mean's gradient divides by its count of entries, and with a symbolic batch
    the rebuilt graph counted the repeated batch (M times as many rows), so every block came
    out M times too small without a word (a fixed batch size folded the count), and
    jacobian(h / numel(x, axis=0), x) was refused as working along the batch axis. With
    h = tanh(x W + b) and f = mean(h²) over N x M entries, J[n] = W diag((2 - 6h²)(1 - h²)) Wᵀ / (N M)."""
    text = """
flowgrad: 1
name: jg
dims: {D: 3, M: 3}
inputs:
  x: {shape: [BATCH, D]}
graph:
  h: dense(x, M, act=tanh)
outputs:
  h: h
  J: jacobian(grad(mean(h * h), x), x)
  K: jacobian(h / numel(x, axis=0), x)
""".replace("BATCH", batch)
    x = np.random.default_rng(6).normal(size=(4, 3))
    out, state = _infer(text, tmp_path, {"x": x})
    h, W = out["h"], state["h.W"]
    curvature = (2 - 6 * h * h) * (1 - h * h) / h.size  # [N, M]
    want = np.einsum("im,nm,jm->nij", W, curvature, W)
    np.testing.assert_allclose(out["J"], want, rtol=1e-10, atol=1e-14)
    # a count of the batch is a number, not a mix of examples (it was refused as one)
    np.testing.assert_allclose(out["K"], np.einsum("nm,im->nmi", (1 - h * h) / 4, W), rtol=1e-12)


@pytest.mark.parametrize("batch", ["N", "4"])
@pytest.mark.parametrize("wrt", ["b", "ln.gamma"])
def test_jacobian_refuses_a_gradient_summed_over_the_examples(tmp_path, batch, wrt):
    """y = h * grad(f, b) for a bias b (or a layer_norm's gamma) reads every example: the
    gradient of a value broadcast over the batch sums the examples' parts. jacobian(y, x) of
    such a y was built on the repeated batch without a word, its blocks wrong (of
    h * grad(sum(h * h), b), 1.7 times their size away, whatever the batch; here, through
    layer_norm's gradient, the bias's failed to compile instead). It is refused, as a batch
    mean is."""
    from spec.errors import GradientError

    text = """
flowgrad: 1
name: jb
dims: {D: 3, M: 2}
inputs:
  x: {shape: [BATCH, D]}
params:
  W: {shape: [D, M], init: glorot_uniform}
  b: {shape: [M], init: glorot_uniform}
graph:
  h: tanh(x @ W + b)
  ln: layer_norm(h)
  y: h * grad(sum(ln * ln * ln), WRT)
outputs:
  J: jacobian(y, x)
""".replace("BATCH", batch).replace("WRT", wrt)
    with pytest.raises(GradientError, match="example by example, but a gradient sums over the batch axis") as e:
        compile_spec(spec_from_text(text, str(tmp_path / "t.yaml")), "float64", graphs=("infer",))
    assert e.value.loc.line == 15  # the jacobian


@pytest.mark.parametrize("batch", ["N", "4"])
def test_jacobian_of_a_gradient_through_a_row_broadcast(tmp_path, batch):
    """A gradient through a value broadcast along each row (h + h[:, 0:1], a keepdims
    reduction, layer_norm, softmax's max) sums back to [N, 1], a target the rebuild on the
    repeated batch kept as it was: jacobian(grad(...), x) failed to compile ('sum_to: cannot
    sum [4*N, 5] to [N, 1]'). With f = (x W + b) A, A = I + e0 1ᵀ (column 0 added to every
    column), grad(sum(f²), x) = 2 f Aᵀ Wᵀ and each block of its Jacobian is 2 W A Aᵀ Wᵀ."""
    text = """
flowgrad: 1
name: jr
dims: {D: 4, K: 5}
inputs:
  x: {shape: [BATCH, D]}
graph:
  h: dense(x, K)
  f: h + h[:, 0:1]
  ln: layer_norm(h)
outputs:
  J: jacobian(grad(sum(f * f), x), x)
  L: jacobian(grad(sum(ln * ln * ln), x), x)
  g: grad(sum(ln * ln * ln), x)
""".replace("BATCH", batch)
    x = np.random.default_rng(7).normal(size=(4, 4))
    out, state = _infer(text, tmp_path, {"x": x})
    A = np.eye(5)
    A[0, :] += 1
    V = state["h.W"] @ A
    np.testing.assert_allclose(out["J"], np.broadcast_to(2 * V @ V.T, (4, 4, 4)), rtol=1e-10)
    fd = np.zeros_like(out["L"])  # layer_norm's: against central differences of its gradient
    for d in range(4):
        step = np.zeros_like(x)
        step[:, d] = 1e-6
        up, _ = _infer(text, tmp_path, {"x": x + step}, state)
        down, _ = _infer(text, tmp_path, {"x": x - step}, state)
        fd[:, :, d] = (up["g"] - down["g"]) / 2e-6
    np.testing.assert_allclose(out["L"], fd, rtol=1e-6, atol=1e-7)
