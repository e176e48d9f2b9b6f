"""Parameter initialisers. Each parameter draws from its own stream, seeded by
the run seed and the parameter's name, so adding a parameter does not change
the others' initial values."""
from __future__ import annotations

import zlib

import numpy as np

from spec.errors import SpecError

from spec.loader import INIT_KINDS as INITS  # the schema's list (one place to change it)


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out): dense weights are [in, out]; conv weights [out, in, k...]."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    field = int(np.prod(shape[2:]))
    return shape[1] * field, shape[0] * field


def param_rng(seed: int, name: str, own_seed: int | None = None) -> np.random.Generator:
    if own_seed is not None:
        return np.random.default_rng(own_seed)
    return np.random.default_rng([seed, zlib.crc32(name.encode())])  # (a seed past 2**32 is several words)


def initial_value(kind: str, args: dict, shape, dtype: str, rng: np.random.Generator, loc=None) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    fan_in, fan_out = fans(shape)
    if kind == "zeros":
        v = np.zeros(shape)
    elif kind == "ones":
        v = np.ones(shape)
    elif kind == "constant":
        v = np.full(shape, float(args.get("value", 0.0)))
    elif kind == "normal":
        v = rng.normal(float(args.get("mean", 0.0)), float(args.get("std", 0.01)), shape)
    elif kind == "uniform":
        v = rng.uniform(float(args.get("low", -0.05)), float(args.get("high", 0.05)), shape)
    elif kind == "glorot_uniform":
        a = np.sqrt(6.0 / (fan_in + fan_out)) * float(args.get("gain", 1.0))
        v = rng.uniform(-a, a, shape)
    elif kind == "glorot_normal":
        v = rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)) * float(args.get("gain", 1.0)), shape)
    elif kind == "he_uniform":
        a = np.sqrt(6.0 / fan_in) * float(args.get("gain", 1.0))
        v = rng.uniform(-a, a, shape)
    elif kind == "he_normal":
        v = rng.normal(0.0, np.sqrt(2.0 / fan_in) * float(args.get("gain", 1.0)), shape)
    elif kind == "torch_uniform":
        a = 1.0 / np.sqrt(float(args.get("fan_in") or _torch_fan_in(shape, loc)))
        # (a layer's `summed`: one bias standing for torch's b_ih + b_hh, the sum of that many draws)
        v = sum(rng.uniform(-a, a, shape) for _ in range(int(args.get("summed", 1))))
    elif kind == "orthogonal":
        v = _orthogonal(shape, rng) * float(args.get("gain", 1.0))
    else:
        from spec.loader import INIT_KINDS, init_hint

        raise SpecError(f"unknown initialiser {kind!r}", loc,
                        init_hint(str(kind)) or f"choose from {', '.join(INIT_KINDS)}")
    if args.get("zero_rows"):  # (a layer's: embedding's padding row; the other rows are drawn as without it)
        v[list(args["zero_rows"])] = 0
    return np.asarray(v, dtype=dtype)


def bias_init(weight_kind: str, weight_shape, fan_in: int | None = None, summed: int = 1) -> tuple[str, dict]:
    """The initialiser of the bias a layer makes beside its weight, by the weight's: zeros (Keras's
    default), but torch_uniform draws the bias from the weight's bound, as nn.Linear's and nn.Conv2d's
    reset_parameters do (fan_in of the weight: in_features, or in_channels / groups * kh * kw), or
    from the `fan_in` a layer names: a recurrent cell's hidden_size, as nn.RNN/LSTM/GRU's
    reset_parameters draw every weight and bias from U(+-1/sqrt(hidden_size)). `summed` 2: a bias that
    stands for two of torch's (an LSTM's or RNN's one b for b_ih + b_hh) draws as their sum."""
    if weight_kind == "torch_uniform":
        return "torch_uniform", {"fan_in": fan_in or fans(weight_shape)[0], **({"summed": summed} if summed > 1 else {})}
    return "zeros", {}


def _torch_fan_in(shape, loc=None) -> int:
    if len(shape) < 2:  # (torch: "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions")
        raise SpecError(f"torch_uniform needs a parameter of rank >= 2 or a fan_in, got shape {list(shape)}", loc,
                        "a bias takes its weight's fan_in: init: {torch_uniform: {fan_in: 128}} "
                        "(in_features, or in_channels / groups * kh * kw)")
    return fans(shape)[0]


def _orthogonal(shape, rng) -> np.ndarray:
    if len(shape) < 2:
        raise SpecError(f"orthogonal init needs a parameter of rank >= 2, got shape {list(shape)}",
                        hint="use it for weight matrices and kernels; a bias or scale takes zeros, ones or normal")
    rows, cols = shape[0], int(np.prod(shape[1:]))
    a = rng.normal(size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # makes the distribution uniform (Mezzadri 2007)
    if rows < cols:
        q = q.T
    return q[:rows, :cols].reshape(shape)
