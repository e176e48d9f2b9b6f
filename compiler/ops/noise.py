"""Noise for unsupervised and generative models, composed from the
counter-based random ops (compiler/ops/random.py): every draw is a pure
function of the graph's `seed` and `step`, the op's salt and the element
index, so training replays exactly and finite differences are well defined.

- masking_noise(x, p): denoising auto-encoders' corruption (train mode only)
- gaussian_noise(x, sigma): additive noise (train mode only)
- reparameterize(mu, logvar): a VAE's sample mu + exp(logvar / 2) * eps, in
  every mode (a generator draws in deployment graphs too)
"""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError, SpecError

from ..ir import current_loc, is_float
from ..registry import Sample, op
from .random import BoxMuller, RandomComposite, bits_to_unit, hash_bits, draw_dtype, setting


def _s(v):
    return np.asarray(v, dtype=np.int64)


def _require_float(x, what):
    if not is_float(x.dtype):
        raise ShapeError(f"{what} needs a float tensor, got {x.dtype}", hint="cast it with cast(x, 'float32')")


def _np_normal(seed, step, salt, shape, dtype):
    """normal()'s reference: Box-Muller on streams salt and salt + 1."""
    work = draw_dtype(dtype)
    u1 = bits_to_unit(hash_bits(seed, step, salt, shape), work, open_low=True)
    u2 = bits_to_unit(hash_bits(seed, step, salt + 1, shape), work)
    return BoxMuller.ref(None, {}, u1, u2).astype(dtype)


@op("masking_noise")
class MaskingNoise(RandomComposite):
    """In train mode, each entry of x is set to 0 with probability `p` (no
    rescaling of the others, as in denoising auto-encoders); in eval and infer
    mode, x unchanged. The mask is uniform(x) >= p: a function of (seed, step, salt). The half
    types draw and compare in float32, as bernoulli does: their own 11 (float16) or 8 (bfloat16)
    random bits against p rounded to the half type masked p = 0.001 at 0.0015 or 0.004."""

    inputs = ("x",)
    attrs = {"p": 0.25, "salt": None}
    gradgrad = True

    def expand(self, g, x, rng, salt, p):
        if not 0.0 <= p <= 1.0:
            raise SpecError(f"masking_noise p must be in [0, 1], got {p}", current_loc(), hint="use a probability from 0 to 1, e.g. p=0.1")
        _require_float(x, "masking_noise")
        if g.mode != "train" or p == 0.0:
            return x
        zero = g.const(np.asarray(0, dtype=x.dtype))
        work = draw_dtype(x.dtype)
        keep = g.apply("ge", self.unit(g, x, rng, salt, work), g.const(np.asarray(p, dtype=work)))
        return g.apply("where", keep, x, zero)

    def ref(self, attrs, x, seed, step):
        seed, step, salt = self.ref_args(attrs, seed, step)
        if attrs["p"] == 0.0:
            return x
        work = draw_dtype(x.dtype.name)
        u = bits_to_unit(hash_bits(seed, step, salt, x.shape), work)
        return np.where(u >= np.asarray(attrs["p"], work), x, 0).astype(x.dtype)

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(4, 5)), _s(3), _s(11)], {"salt": 1}, grad_inputs=[0]),
            Sample([n(size=(10,)), _s(0), _s(0)], {"p": 0.7, "salt": 5}, grad_inputs=[0]),
            Sample([n(size=(3,)), _s(0), _s(0)], {"p": 0.0, "salt": 1}, grad_inputs=[0]),
        ]


@op("gaussian_noise")
class GaussianNoise(RandomComposite):
    """In train mode, x + sigma * normal(x) (a fresh draw each step); in eval
    and infer mode, x unchanged."""

    inputs = ("x",)
    attrs = {"sigma": 0.1, "salt": None}
    n_salts = 2
    gradgrad = True
    tol = {"forward": 1e-6}

    def expand(self, g, x, rng, salt, sigma):
        if sigma < 0:
            raise SpecError(f"gaussian_noise sigma must be >= 0, got {sigma}", current_loc(), hint="use a standard deviation of 0 or more, e.g. sigma=0.1")
        _require_float(x, "gaussian_noise")
        if g.mode != "train" or sigma == 0.0:
            return x
        eps = g.apply("normal", x, *(rng or ()), salt=salt)
        return x + eps * g.const(setting(sigma, x.dtype, "sigma", g))  # (a sigma beyond the type's range is refused)

    def ref(self, attrs, x, seed, step):
        seed, step, salt = self.ref_args(attrs, seed, step)
        if attrs["sigma"] == 0.0:
            return x
        eps = _np_normal(seed, step, salt, x.shape, x.dtype.name)
        return x + eps * np.asarray(attrs["sigma"], x.dtype)

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(4, 5)), _s(3), _s(11)], {"salt": 1}, grad_inputs=[0]),
            Sample([n(size=(6,)), _s(7), _s(0)], {"sigma": 2.0, "salt": 4}, grad_inputs=[0]),
        ]


@op("reparameterize")
class Reparameterize(RandomComposite):
    """mu + exp(logvar / 2) * eps with eps ~ normal(mu): a sample of
    N(mu, exp(logvar)) that is differentiable in mu and logvar (the VAE's
    reparameterization trick). Draws in every mode, so a deployment graph samples."""

    inputs = ("mu", "logvar")
    attrs = {"salt": None}
    n_salts = 2
    gradgrad = True
    tol = {"forward": 1e-6}

    def expand(self, g, mu, logvar, rng, salt):
        _require_float(mu, "reparameterize")
        if mu.type != logvar.type:
            raise ShapeError(f"reparameterize needs mu and logvar of one type, got {mu.type} and {logvar.type}", hint="give mu and logvar one shape and dtype, e.g. two dense(h, Z) of the same h")
        eps = g.apply("normal", mu, *(rng or ()), salt=salt)
        return mu + g.apply("exp", logvar * g.const(np.asarray(0.5, dtype=mu.dtype))) * eps

    def ref(self, attrs, mu, logvar, seed, step):
        seed, step, salt = self.ref_args(attrs, seed, step)
        eps = _np_normal(seed, step, salt, mu.shape, mu.dtype.name)
        return mu + np.exp(logvar * np.asarray(0.5, mu.dtype)) * eps

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(4, 3)), n(size=(4, 3)), _s(5), _s(2)], {"salt": 1}, grad_inputs=[0, 1]),
            Sample([n(size=(7,)), rng.uniform(-3, 1, size=(7,)), _s(0), _s(0)], {"salt": 9}, grad_inputs=[0, 1]),
        ]
