"""grad/hvp/jacobian inside a spec against closed forms, in float64."""
from __future__ import annotations

import numpy as np

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
