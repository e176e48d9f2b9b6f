"""Whole-spec gradient check: the symbolic gradient of each objective's loss
against central finite differences in float64, per parameter, along random
directions plus a few sampled coordinates."""
from __future__ import annotations

import dataclasses

import numpy as np

from spec import model as S

from .check import Runner, check_gradients
from .training import compile_spec, require_objectives

SYMBOLIC_SIZES = {"N": 3}
DEFAULT_SYMBOLIC = 4


def random_batch(spec: S.Spec, names: list[str], rng: np.random.Generator, dtype: str = "float64",
                 sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs of the declared shapes (symbolic dims small); integer
    inputs are 0 or 1, which is a valid class or token id for any model."""
    sizes = {**SYMBOLIC_SIZES, **(sizes or {})}
    out = {}
    for name in names:
        decl = spec.inputs[name]
        shape = [d if isinstance(d, int) else sizes.get(d, DEFAULT_SYMBOLIC) for d in decl.shape]
        if decl.dtype.startswith("float"):
            out[name] = rng.uniform(0.0, 1.0, shape).astype(dtype)
        elif decl.dtype == "bool":
            out[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[name] = rng.integers(0, 2, shape).astype(decl.dtype)
    return out


def gradcheck_spec(spec: S.Spec, seed: int = 0, n_directions: int = 2, n_coords: int = 3, eps: float = 1e-6) -> dict:
    """{objective: {parameter: worst relative error}}."""
    # l1/l2 decay is added to the gradient by the optimizer step, not part of
    # the loss, so it stays out of a check of d(loss)/d(param); so does mixed precision,
    # a half type computing the same gradient (it refuses the float64 the check runs in).
    require_objectives(spec, "check")
    spec = dataclasses.replace(spec, train={k: v for k, v in spec.train.items()
                                            if k not in ("l1", "l2", "mixed_precision")})
    cm = compile_spec(spec, "float64", graphs=("grads",))
    rng = np.random.default_rng(seed)
    state = cm.initial_state(seed)
    report = {}
    for obj in cm.objectives:
        kind = "grads" if obj.name == "main" else f"grads_{obj.name}"
        graph = cm.graphs[kind]
        runner = Runner(graph.model)
        data_names = [i.name for i in graph.inputs if i.role == "input"]
        feeds = random_batch(spec, data_names, rng)
        _spread_integers(feeds, spec, cm.index_bounds, rng)
        for i in graph.inputs:
            if i.name in state:
                feeds[i.name] = state[i.name]
            elif i.role == "control":
                feeds[i.name] = np.asarray(seed if i.name == "seed" else 0, dtype=i.dtype)
        base = runner(feeds)
        errors = {}
        for p in cm.trained_params(obj):
            if p not in feeds:  # pruned from the gradients graph: nothing flows from it to the loss
                from spec.errors import GradientError

                raise GradientError(f"parameter {p!r} does not reach the loss of objective {obj.name!r}",
                                    hint="use it in the graph, or leave it out of the objective's params")

            def loss_at(xs, p=p):
                return float(runner({**feeds, p: xs[0]})["loss"])

            errors[p] = check_gradients(loss_at, [feeds[p]], [base[f"grad/{p}"]], rng, n_directions, n_coords, eps)
        report[obj.name] = errors
    return report


def _spread_integers(feeds: dict, spec: S.Spec, bounds: dict, rng: np.random.Generator) -> None:
    """Integer inputs over their whole valid range, so that every path is exercised: ids and
    labels below the size of what they index, other integers (lengths) from 1 to the
    symbolic size. With only 0 and 1, lengths of 0 or 1 leave a recurrent U and an
    attention's weights without gradient."""
    for name, arr in feeds.items():
        if arr.dtype.kind not in "iu":
            continue
        high = bounds[name][0] if name in bounds else DEFAULT_SYMBOLIC + 1
        low = 0 if name in bounds else 1
        feeds[name] = rng.integers(low, max(high, low + 1), arr.shape).astype(arr.dtype)
