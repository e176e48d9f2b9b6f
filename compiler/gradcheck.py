"""Whole-spec gradient check: the symbolic gradient of each objective's loss
against central finite differences in float64, per parameter, along random
directions plus a few sampled coordinates.

Finite differences verify a gradient only where the loss is differentiable: at a
kink of relu, max, abs and the like (a zero bias under units that dropout zeroed,
say) the two one-sided slopes differ and the central difference is their mean,
which no gradient rule gives. So the check runs at a point moved off the kinks
(each trained parameter plus a small random perturbation, a point training could
reach), and a probe whose stencil still crosses a kink is told apart from a wrong
gradient by its one-sided differences and drawn again (`check_gradients_off_kinks`)."""
from __future__ import annotations

import dataclasses

import numpy as np

from spec import model as S

from .check import Runner, relative_error
from .lower import SPEC_FLOAT_NAMES
from .training import compile_spec, require_objectives

SYMBOLIC_SIZES = {"N": 3}
DEFAULT_SYMBOLIC = 4
JITTER = 0.1  # each trained parameter moves by N(0, (JITTER * its RMS, or JITTER where it is all zeros)^2)


def random_batch(spec: S.Spec, names: list[str], rng: np.random.Generator, dtype: str = "float64",
                 sizes: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs of the declared shapes (symbolic dims small); integer
    inputs are 0 or 1, which is a valid class or token id for any model. A float input takes
    `dtype`, the model's, unless it declares another float type, which its graph input keeps."""
    sizes = {**SYMBOLIC_SIZES, **(sizes or {})}
    out = {}
    for name in names:
        decl = spec.inputs[name]
        shape = [d if isinstance(d, int) else sizes.get(d, DEFAULT_SYMBOLIC) for d in decl.shape]
        if decl.dtype.startswith("float"):
            # (a float16 mask of a float32 model was made float32: onnxruntime refused it, a traceback)
            out[name] = rng.uniform(0.0, 1.0, shape).astype(dtype if decl.dtype in SPEC_FLOAT_NAMES else decl.dtype)
        elif decl.dtype == "bool":
            out[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[name] = rng.integers(0, 2, shape).astype(decl.dtype)
    return out


def check_batch_size(spec: S.Spec, sizes: dict[str, int] | None = None) -> int | None:
    """The rows of the check's random batch: the leading dim of the spec's inputs as
    random_batch sizes them, where they agree on one; else None."""
    sizes = {**SYMBOLIC_SIZES, **(sizes or {})}
    leading = {d if isinstance(d, int) else sizes.get(d, DEFAULT_SYMBOLIC)
               for decl in spec.inputs.values() if decl.shape for d in decl.shape[:1]}
    return leading.pop() if len(leading) == 1 else None


def gradcheck_spec(spec: S.Spec, seed: int = 0, n_directions: int = 2, n_coords: int = 3, eps: float = 1e-6) -> dict:
    """{objective: {parameter: worst relative error}}; NaN for a parameter that no probe
    could check (each one's stencil crossed a kink of the loss, see the module's doc)."""
    # l1/l2 decay is added to the gradient by the optimizer step, not part of
    # the loss, so it stays out of a check of d(loss)/d(param); so does mixed precision,
    # a half type computing the same gradient (it refuses the float64 the check runs in).
    require_objectives(spec, "check")
    spec = dataclasses.replace(spec, train={k: v for k, v in spec.train.items()
                                            if k not in ("l1", "l2", "mixed_precision")})
    # A stateful recurrent layer carries its state across batches in buffers of
    # train.batch_size rows: sized for the check's batch, not the spec's (the gradient of
    # one batch's loss does not depend on how many rows a batch has).
    spec = spec.with_batch_size(check_batch_size(spec))
    cm = compile_spec(spec, "float64", graphs=("grads",))
    rng = np.random.default_rng(seed)
    state = cm.initial_state(seed)
    _move_off_kinks(cm, state, np.random.default_rng([seed, 1]))
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

                raise GradientError(f"parameter {p!r} does not reach {obj.its_loss}",
                                    hint="use it in the loss" + (", or leave it out of the objective's params"
                                                                 if obj.declared else ""))  # (the lone loss has none)

            def loss_at(xs, p=p):
                return float(runner({**feeds, p: xs[0]})["loss"])

            errors[p] = check_gradients_off_kinks(loss_at, feeds[p], base[f"grad/{p}"], float(base["loss"]), rng,
                                                  n_directions, n_coords, eps)
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


def _move_off_kinks(cm, state: dict, rng: np.random.Generator) -> None:
    """Each trained parameter plus a small random perturbation: initial values put many
    pre-activations exactly on a kink (zero biases under inputs that dropout or a relu
    zeroed), where finite differences cannot verify a gradient; at a perturbed point the
    kinks lie a random distance away, almost surely far more than the difference step."""
    for name, p in cm.params.items():
        if p.kind != "param" or not p.trainable or name not in state or state[name].dtype.kind != "f":
            continue
        value = state[name]
        rms = float(np.sqrt(np.mean(np.square(value)))) if value.size else 0.0
        scale = JITTER * (rms if rms > 0 and np.isfinite(rms) else 1.0)
        state[name] = (value + scale * rng.normal(size=value.shape)).astype(value.dtype)


def check_gradients_off_kinks(f, x: np.ndarray, grad: np.ndarray, f0: float, rng: np.random.Generator,
                              n_directions: int = 2, n_coords: int = 3, eps: float = 1e-6,
                              max_redraws: int = 10) -> float:
    """Worst relative error between the symbolic `grad` of scalar f at x (f(x) = f0) and
    central differences, along `n_directions` random directions and `n_coords` sampled
    coordinates. A probe whose stencil crosses a non-differentiable point of f is not a
    check of the gradient: there the one-sided differences disagree with each other and
    the symbolic directional derivative matches one of them (the side x lies on) far
    better than their mean. Such a probe is drawn again, up to `max_redraws` times in
    all; NaN if no probe could be checked. A wrong gradient matches neither side, so it
    still fails (as does a NaN or infinite one)."""
    x = np.asarray(x)
    g = np.asarray(grad, dtype=np.float64)

    def draw(coordinate: bool) -> np.ndarray:
        if not coordinate:
            return rng.normal(size=x.shape)
        d = np.zeros(x.shape)
        d.reshape(-1)[int(rng.integers(x.size))] = 1.0
        return d

    kinds = [False] * n_directions + ([True] * n_coords if x.size else [])
    worst, checked, redraws = 0.0, 0, 0
    while kinds:
        coordinate = kinds.pop(0)
        d = draw(coordinate)
        plus, minus = f([x + eps * d]), f([x - eps * d])
        numeric = (plus - minus) / (2 * eps)
        symbolic = float(np.sum(g * d))
        scale = max(abs(numeric), abs(symbolic), 1e-3)
        err = relative_error(numeric, symbolic)
        if not np.isfinite(err):  # a nan or inf gradient (or loss) is a failure
            return float("inf")
        forward, backward = (plus - f0) / eps, (f0 - minus) / eps
        gap = abs(forward - backward)
        if gap > 1e-6 * scale and min(abs(symbolic - forward), abs(symbolic - backward)) < 0.01 * gap:
            if redraws < max_redraws:  # across a kink: not checkable along d, so another probe of the same kind
                redraws += 1
                kinds.append(coordinate)
            continue
        worst = max(worst, err)
        checked += 1
    return worst if checked or not x.size else float("nan")
