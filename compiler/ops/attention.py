"""Attention over a sequence (Bahdanau, Cho & Bengio 2014; Luong et al. 2015).

Both ops return (context [N, Dv], weights [N, S]). `mask` [N, S] is 1 for real
positions and 0 for padding: padded positions get exactly zero weight, and so
exactly zero gradient. Used inside a decoder scan, everything that depends
only on the encoder states (keys @ U) is hoisted out of the loop."""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError

from ..ir import TensorType
from ..registry import OpDef, Sample, op

NEG = -1e9  # exp(NEG - max) is exactly 0 in float32 and float64 (and bfloat16)
NEG_FLOAT16 = -6e4  # float16's range ends at 65504: -1e9 would be -inf, and a row masked whole NaN


def masked_softmax(g, scores, mask):
    keep = g.apply("gt", mask, g.lift(0.0, like=mask))
    neg = NEG_FLOAT16 if scores.dtype == "float16" else NEG
    return g.apply("softmax", g.apply("where", keep, scores, g.lift(neg, like=scores)), axis=-1)


def _context(g, w, values):
    return g.apply("squeeze", g.apply("unsqueeze", w, axes=(-2,)) @ values, axes=(-2,))


def _check(query, keys, values, mask):
    if query.rank != 2 or keys.rank != 3 or values.rank != 3 or mask.rank != 2:
        raise ShapeError(f"attention needs query [N, D], keys [N, S, Dk], values [N, S, Dv], mask [N, S]; got "
                         f"{query.type}, {keys.type}, {values.type}, {mask.type}", hint="e.g. query [N, D] from dense(h_t, D), keys and values [N, S, D], mask [N, S] of the source positions")
    if keys.shape[1] != values.shape[1] or tuple(mask.shape) != tuple(keys.shape[:2]):
        raise ShapeError(f"keys {keys.type}, values {values.type} and mask {mask.type} disagree on [N, S]", hint="keys, values and mask must come from the same source: one batch N and one length S")


def _np_softmax(s, mask):
    s = np.where(mask > 0, s, NEG)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _mask_sample(rng, n, s):
    lengths = rng.integers(1, s + 1, size=n)
    return (np.arange(s)[None, :] < lengths[:, None]).astype(np.float64)


@op("dot_attention")
class DotAttention(OpDef):
    """Dot-product attention: weights = softmax(keys · query [/ sqrt(D)]) over unmasked positions."""

    gradgrad = True

    inputs = ("query", "keys", "values", "mask")
    attrs = {"scaled": False}
    composite = True

    def expand(self, g, query, keys, values, mask, scaled):
        _check(query, keys, values, mask)
        if keys.shape[-1] != query.shape[-1]:
            raise ShapeError(f"dot attention needs query and keys of the same width, got {query.type} and {keys.type}", hint="project the query to the keys' width first, e.g. dense(q, D) with D the last dim of the keys")
        scores = g.apply("squeeze", keys @ g.apply("unsqueeze", query, axes=(-1,)), axes=(-1,))
        if scaled:
            scores = scores * (1.0 / float(np.sqrt(query.shape[-1])))
        w = masked_softmax(g, scores, mask)
        return _context(g, w, values), w

    def ref(self, attrs, q, k, v, m):
        s = np.einsum("nsd,nd->ns", k, q)
        if attrs["scaled"]:
            s = s / np.sqrt(q.shape[-1])
        w = _np_softmax(s, m)
        return np.einsum("ns,nsd->nd", w, v), w

    def samples(self, rng):
        n = rng.normal
        return [Sample([n(size=(2, 3)), n(size=(2, 4, 3)), n(size=(2, 4, 5)), _mask_sample(rng, 2, 4)], grad_inputs=[0, 1, 2]),
                Sample([n(size=(3, 2)), n(size=(3, 5, 2)), n(size=(3, 5, 2)), _mask_sample(rng, 3, 5)], {"scaled": True},
                       grad_inputs=[0, 1, 2])]


@op("additive_attention")
class AdditiveAttention(OpDef):
    """Bahdanau attention: weights = softmax(v · tanh(query @ W + keys @ U)) over unmasked positions."""

    gradgrad = True

    inputs = ("query", "keys", "values", "mask", "W", "U", "v")
    composite = True

    def expand(self, g, query, keys, values, mask, W, U, v):
        _check(query, keys, values, mask)
        proj = g.apply("tanh", g.apply("unsqueeze", query @ W, axes=(-2,)) + keys @ U)  # [N, S, A]
        scores = proj @ v  # [N, S]
        w = masked_softmax(g, scores, mask)
        return _context(g, w, values), w

    def ref(self, attrs, q, k, vals, m, W, U, v):
        proj = np.tanh((q @ W)[:, None, :] + k @ U)
        w = _np_softmax(proj @ v, m)
        return np.einsum("ns,nsd->nd", w, vals), w

    def samples(self, rng):
        n = rng.normal
        return [Sample([n(size=(2, 3)), n(size=(2, 4, 5)), n(size=(2, 4, 5)), _mask_sample(rng, 2, 4),
                        n(size=(3, 6)), n(size=(5, 6)), n(size=(6,))], grad_inputs=[0, 1, 2, 4, 5, 6])]
