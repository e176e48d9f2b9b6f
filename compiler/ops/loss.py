"""Losses and weight penalties, built as composites of numerically stable ops,
so their gradients (and gradients of those) follow from the primitives.

`reduction` is "mean" (default: the mean over all loss elements), "sum" or
"none" (the per-element losses)."""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError, SpecError

from ..ir import broadcast_shapes, current_loc, fmt_shape, is_float, normalize_axis
from ..registry import REGISTRY, OpDef, Sample, op, require_float

REDUCTIONS = ("mean", "sum", "none")


def _reduce(g, v, reduction):
    """v reduced as `reduction` says, one of REDUCTIONS (the losses' choices: checked where the call binds)."""
    return v if reduction == "none" else g.apply(reduction, v)


def _np_reduce(v, reduction):
    return {"mean": np.mean, "sum": np.sum}.get(reduction, np.asarray)(v)


def log_softmax(g, x, axis):
    """log_softmax(x) along axis: the `log_softmax` primitive (compiler/ops/nn.py);
    until that exists, x - max - log(sum(exp(x - max))) built here."""
    if "log_softmax" in REGISTRY:
        return g.apply("log_softmax", x, axis=axis)
    m = g.apply("stop_gradient", g.apply("max", x, axis=axis, keepdims=True))
    z = x - m
    return z - g.apply("log", g.apply("sum", g.apply("exp", z), axis=axis, keepdims=True))


def _np_log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# What turns scores into probabilities, refused where a loss takes scores (logits) or log-probabilities.
_SQUASHES = ("softmax", "sigmoid")
# Ops whose output holds values of their first input, moved, selected or recast, never combined:
# probabilities stay probabilities through them.
_MOVES_VALUES = ("identity", "cast", "stop_gradient", "reshape", "reshape_like", "reshape_dims", "flatten",
                 "transpose", "unsqueeze", "squeeze", "index", "slice")


def _squashed_by(v):
    """The softmax or sigmoid node (an op of _SQUASHES) whose output `v` is, seen through ops that only
    move or select values; None if `v` is not one. Graph entries and layer activations (act=softmax)
    are plain values of the graph, so an earlier entry's softmax is found too. A scan's output is seen
    through too: its states and per-step outputs are the step's values, stacked over time (or the last),
    and a value the step reads as it is (a sequence's slice, a non-sequence) is that of the scan's input."""
    frames = []  # the scan nodes whose step v is in, innermost last
    for _ in range(256):
        node = getattr(v, "producer", None)
        if node is None:
            if not frames:
                return None
            scan = frames.pop()  # a step's input: the scan's sequence or non-sequence it reads
            body = scan.attrs["body"]
            ids = [x.id for x in body.seqs + body.nonseqs]
            if v.id not in ids:
                return None  # a state: its first value is the initial one, whatever that is
            v = scan.inputs[len(body.carries) + ids.index(v.id)]
            continue
        if node.op.name in _SQUASHES:
            return node
        if node.op.name == "scan":
            body = node.attrs["body"]
            outs = body.new_carries + body.extras
            i = next(k for k, o in enumerate(node.outputs) if o.id == v.id)
            if body.saved is not None or i >= len(outs):
                return None
            frames.append(node)
            v = outs[i]
            continue
        if node.op.name not in _MOVES_VALUES or not node.inputs:
            return None
        v = node.inputs[0]
    return None


def refuse_probabilities(loss: str, logits, own: str | None) -> None:
    """`loss` takes logits and applies `own` (softmax, sigmoid) itself: probabilities already squashed by
    one of _SQUASHES would be squashed twice, and train badly without a sign, so they are refused.
    With `own` None, `loss` takes log-probabilities (nll): probabilities, which it would read as their
    logs, are refused the same way."""
    node = _squashed_by(logits)
    if node is None:
        return
    sq = node.op.name
    where = f" (line {node.loc.line}, column {node.loc.col})" if node.loc is not None else ""
    if own is None:
        raise ShapeError(f"these log-probabilities are the output of {sq}{where}, probabilities; {loss} takes their "
                         f"log, so it would read each probability as a log-probability",
                         hint=f"{loss} takes log-probabilities: " + (
                             "write log_softmax(...) (act=log_softmax) for the softmax, or give the scores to "
                             "cross_entropy, which applies the softmax itself" if sq == "softmax" else
                             "write log(sigmoid(...)) for the sigmoid, or leave it out and give the scores to "
                             "cross_entropy"),
                         arg="log_probs")
    twice = "it would be applied twice" if sq == own else "they would be squashed twice"
    raise ShapeError(f"these logits are the output of {sq}{where}; {loss} applies {own} itself, so {twice}",
                     hint=f"{loss} takes logits: leave out the {sq} (or act={sq}) and pass the scores it is applied to",
                     arg="logits")


def _pick(g, lp, labels, axis):
    """lp[..., labels[...], ...] along axis: the log-probability of each label."""
    if labels.rank != lp.rank - 1:
        raise ShapeError(f"labels {fmt_shape(labels.shape)} must have the shape of the scores {fmt_shape(lp.shape)} "
                         f"without axis {axis}", hint="class-id labels are one axis shorter than the scores, e.g. [N] for scores [N, C]")
    want = [d for i, d in enumerate(lp.shape) if i != axis]
    for i, (got, d) in enumerate(zip(labels.shape, want)):  # in the loss's words, not its take_along_axis's
        if got != d:
            raise ShapeError(f"labels {fmt_shape(labels.shape)} must have the shape of the scores {fmt_shape(lp.shape)} "
                             f"without axis {axis}, but their axis {i} is {got}, not {d}",
                             hint="declare the labels and the inputs the scores come from with the same dims "
                                  "(a name such as T, or the same number)")
    idx = g.apply("unsqueeze", labels, axes=(axis,))
    return g.apply("squeeze", g.apply("take_along_axis", lp, idx, axis=axis), axes=(axis,))


@op("cross_entropy")
class CrossEntropy(OpDef):
    """Softmax cross-entropy of `logits` [..., K, ...] (classes on `axis`) against
    integer class ids `labels` (the logits' shape without `axis`) or float
    probability targets of the logits' shape (soft labels). label_smoothing
    mixes the targets with the uniform distribution. ignore_index=k: labels k
    add nothing and get no gradient, and the mean is over the other labels
    (PyTorch's; its default is -100, here none; a batch of ignored labels alone
    gives 0, where PyTorch's mean is NaN). weight=[w1, ..., wK]: class k's
    log-probability weighs wk, in the label's term and the smoothing's, and with
    class ids the mean divides by the labels' weights summed, not their count
    (PyTorch's). Stable: uses log_softmax.
    Takes logits: an output of softmax or sigmoid (squashed twice) is refused."""

    inputs = ("logits", "labels")
    attrs = {"axis": -1, "reduction": "mean", "label_smoothing": 0.0, "ignore_index": None, "weight": None}
    choices = {"reduction": REDUCTIONS}
    composite = True
    gradgrad = True

    def expand(self, g, logits, labels, axis, reduction, label_smoothing, ignore_index, weight):
        if not is_float(logits.dtype) and is_float(labels.dtype):
            # cross_entropy(y, logits): require_float's 'cast it to float32' would have the class
            # ids cast and read as scores
            raise ShapeError(f"the logits come first and the labels second, but argument 1 is {logits.dtype}"
                             f"{fmt_shape(logits.shape)} and argument 2 is {labels.dtype}{fmt_shape(labels.shape)}",
                             hint="swap them: cross_entropy(logits, labels)", arg="logits")
        require_float(logits, "logits")
        refuse_probabilities("cross_entropy", logits, "softmax")
        if not 0 <= label_smoothing <= 1:  # outside, the targets get negative weights: a loss without a minimum
            raise ShapeError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}", arg="label_smoothing",
                             hint="the weight of the uniform distribution in the targets, e.g. label_smoothing=0.1")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))):
            raise ShapeError(f"ignore_index must be a class id (an integer), got {ignore_index!r}", arg="ignore_index",
                             hint="the label that adds nothing to the loss, e.g. ignore_index=-100 (PyTorch's) or 0")
        axis = normalize_axis(axis, logits.rank)
        w = _class_weights(weight, "weight", logits, axis, "the weight of each class, e.g. weight=[1.0, 5.0, 1.0] "
                           "for a rare class 1")
        lp = log_softmax(g, logits, axis)
        # the weights along the classes' axis, broadcasting against lp
        wb = None if w is None else g.const(w.reshape([-1 if i == axis else 1 for i in range(lp.rank)]),
                                            dtype=lp.dtype)
        keep = picked = None
        if is_float(labels.dtype):
            if ignore_index is not None:  # (as PyTorch, which ignores it there)
                raise ShapeError(f"ignore_index={ignore_index} picks out class-id labels, and these are soft labels "
                                 f"{labels.dtype}{fmt_shape(labels.shape)}", arg="ignore_index",
                                 hint="give a soft label of all zeros the weight 0 instead, or leave out ignore_index")
            if labels.rank == logits.rank - 1:  # shaped like class ids, but float
                raise ShapeError(f"class-id labels must be integers, got {labels.dtype}{fmt_shape(labels.shape)}",
                                 hint=f"declare them with dtype: int64, or give soft labels of the logits' shape "
                                      f"{fmt_shape(logits.shape)}", arg="labels")
            if tuple(labels.shape) != tuple(logits.shape):
                raise ShapeError(f"soft labels {fmt_shape(labels.shape)} must have the logits' shape {fmt_shape(logits.shape)}",
                                 hint="or give integer class ids", arg="labels")
            t = g.cast(labels, logits.dtype)
            # A class masked out of the logits (-inf, so log-probability -inf) that the targets
            # give no weight adds 0 (0 * log 0 = 0), not 0 * -inf = NaN; elsewhere lp is unchanged.
            zero = g.lift(0.0, like=lp)
            weighed = g.apply("logical_or", g.apply("ne", t, zero), g.apply("gt", lp, g.lift(-np.inf, like=lp)))
            tlp = t * g.apply("where", weighed, lp, zero)
            loss = -g.apply("sum", tlp if wb is None else tlp * wb, axis=axis)
        elif labels.dtype in ("int32", "int64"):
            if labels.rank == logits.rank and tuple(labels.shape) == tuple(logits.shape):
                # one-hot targets declared int64: _pick's 'one axis shorter' left them to guess why
                raise ShapeError(f"labels {labels.dtype}{fmt_shape(labels.shape)} have the logits' shape, as one-hot "
                                 "or soft labels do, but these are integers, read as class ids",
                                 hint=f"declare one-hot labels as floats (dtype: float32), or give class ids "
                                      f"{fmt_shape([d for i, d in enumerate(logits.shape) if i != axis])} "
                                      "with dtype: int64", arg="labels")
            if ignore_index is not None:  # an ignored label picks class 0, whose loss is then dropped
                keep = g.apply("ne", labels, g.lift(int(ignore_index), like=labels))
                labels = g.apply("where", keep, labels, g.apply("zeros_like", labels))
            loss = -_pick(g, lp, labels, axis)
            if w is not None:  # the label's class weight, which the mean divides by
                picked = g.apply("take", g.const(w, dtype=lp.dtype), labels, axis=0)
                loss = loss * picked
        else:
            raise ShapeError(f"labels must be integer class ids or float probabilities, got {labels.dtype}", hint="declare the labels with dtype: int64 for class ids, or as floats with the scores' shape")
        if label_smoothing:
            smooth = -g.apply("mean", lp if wb is None else lp * wb, axis=axis)
            loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
        if keep is None and picked is None:
            return _reduce(g, loss, reduction)
        if keep is not None:
            loss = g.apply("where", keep, loss, g.apply("zeros_like", loss))
        if reduction != "mean":
            return _reduce(g, loss, reduction)
        # the mean over the labels kept, each counting its class weight
        count = g.cast(keep, loss.dtype) if keep is not None else g.apply("ones_like", loss)
        if picked is not None:
            count = count * picked
        # kept from 0 by the type's least normal number (no labels kept: a loss of 0), written
        # sum / maximum(count, floor), the masked mean that evaluation and --accumulate add up over
        # batches as over one batch of all of them (compiler.training.ratio_parts)
        kept = g.apply("sum", count)
        return g.apply("sum", loss) / g.apply("maximum", kept, g.lift(float(np.finfo(kept.dtype).tiny), like=kept))

    def ref(self, attrs, logits, labels):
        axis = normalize_axis(attrs["axis"], logits.ndim)
        lp = _np_log_softmax(logits, axis)
        w = None if attrs["weight"] is None else np.asarray(attrs["weight"], dtype=np.float64)
        wb = 1.0 if w is None else w.reshape([-1 if i == axis else 1 for i in range(lp.ndim)])
        keep = True
        if attrs["ignore_index"] is not None:
            keep = labels != attrs["ignore_index"]
            labels = np.where(keep, labels, 0)
        if labels.dtype.kind == "f":
            with np.errstate(invalid="ignore"):  # 0 * -inf of a masked class: np.where puts the 0
                loss = -(np.where((labels != 0) | (lp > -np.inf), labels * lp, 0.0) * wb).sum(axis=axis)
            count = np.ones(loss.shape)
        else:
            count = np.broadcast_to(keep, labels.shape).astype(np.float64)
            loss = -np.take_along_axis(lp, np.expand_dims(labels, axis), axis=axis).squeeze(axis)
            if w is not None:
                loss = loss * w[labels]
                count = count * w[labels]
        if attrs["label_smoothing"]:
            e = attrs["label_smoothing"]
            loss = (1 - e) * loss - e * (lp * wb).mean(axis=axis)
        loss = np.where(keep, loss, 0.0)
        if attrs["reduction"] != "mean":
            return _np_reduce(loss, attrs["reduction"])
        return np.asarray(loss.sum() / (count.sum() if count.sum() > 0 else 1.0))

    def samples(self, rng):
        n = rng.normal
        soft = rng.uniform(size=(3, 4))
        soft /= soft.sum(-1, keepdims=True)
        masked = np.array([[False, True, False, False], [False, False, True, True], [True, False, False, False]])
        soft_masked = np.where(masked, 0.0, rng.uniform(0.1, 1.0, size=(3, 4)))
        soft_masked /= soft_masked.sum(-1, keepdims=True)
        return [
            Sample([n(size=(5, 4)) * 3, np.array([0, 3, 1, 1, 2])], grad_inputs=[0]),
            Sample([n(size=(2, 3, 4)), np.array([[0, 2, 1], [3, 3, 0]])], {"reduction": "none"}, grad_inputs=[0]),
            Sample([n(size=(2, 3, 4)), np.array([[0, 2, 1, 1], [0, 1, 2, 2]])], {"axis": 1, "reduction": "sum"},
                   grad_inputs=[0]),
            Sample([n(size=(3, 4)), soft]),
            Sample([n(size=(4, 3)) + 50.0, np.array([2, 0, 1, 1])], {"label_smoothing": 0.1}, grad_inputs=[0]),
            # soft targets with classes masked out of the logits (-inf) and given no weight: those
            # add 0 to the loss and get 0 gradient (0 * -inf made the loss NaN)
            Sample([np.where(masked, -np.inf, n(size=(3, 4))), soft_masked], grad_inputs=[0]),
            # ignore_index: those labels add nothing, and the mean is over the others (PyTorch's)
            Sample([n(size=(5, 4)), np.array([0, -100, 3, -100, 1])], {"ignore_index": -100}, grad_inputs=[0]),
            Sample([n(size=(2, 4, 3)), np.array([[0, 2, 2], [3, 1, 2]])],
                   {"axis": 1, "ignore_index": 2, "label_smoothing": 0.2}, grad_inputs=[0]),
            Sample([n(size=(2, 3, 4)), np.array([[0, 2, 1], [3, 0, 0]])], {"ignore_index": 0, "reduction": "none"},
                   grad_inputs=[0]),
            Sample([n(size=(2, 3)), np.array([1, 1])], {"ignore_index": 1}, grad_inputs=[0]),  # all ignored: 0
            # weight: each label's term weighs its class's weight, and the mean divides by those summed
            Sample([n(size=(5, 4)), np.array([0, 3, 1, 1, 2])], {"weight": (0.5, 2.0, 1.0, 0.25)}, grad_inputs=[0]),
            Sample([n(size=(2, 4, 3)), np.array([[0, 2, 2], [3, 1, 2]])],
                   {"axis": 1, "ignore_index": 2, "label_smoothing": 0.2, "weight": (1.0, 3.0, 0.0, 0.5)},
                   grad_inputs=[0]),
            Sample([n(size=(2, 3, 4)), np.array([[0, 2, 1], [3, 0, 0]])],
                   {"weight": (2.0, 0.5, 1.0, 1.5), "reduction": "none", "label_smoothing": 0.1}, grad_inputs=[0]),
            Sample([n(size=(3, 4)), soft], {"weight": (1.0, 0.5, 2.0, 3.0), "label_smoothing": 0.3}),
        ]


@op("nll")
class Nll(OpDef):
    """Negative log-likelihood of integer `labels` given `log_probs` (classes on `axis`).
    Takes log-probabilities: an output of softmax or sigmoid (probabilities) is refused."""

    inputs = ("log_probs", "labels")
    attrs = {"axis": -1, "reduction": "mean"}
    choices = {"reduction": REDUCTIONS}
    composite = True
    gradgrad = True

    def expand(self, g, log_probs, labels, axis, reduction):
        require_float(log_probs, "log_probs")
        refuse_probabilities("nll", log_probs, None)
        axis = normalize_axis(axis, log_probs.rank)
        return _reduce(g, -_pick(g, log_probs, labels, axis), reduction)

    def ref(self, attrs, lp, labels):
        axis = normalize_axis(attrs["axis"], lp.ndim)
        return _np_reduce(-np.take_along_axis(lp, np.expand_dims(labels, axis), axis=axis).squeeze(axis), attrs["reduction"])

    def samples(self, rng):
        return [
            Sample([rng.normal(size=(4, 3)), np.array([0, 2, 2, 1])], grad_inputs=[0]),
            Sample([rng.normal(size=(2, 3)), np.array([1, 0])], {"reduction": "none"}, grad_inputs=[0]),
        ]


@op("binary_cross_entropy")
class BinaryCrossEntropy(OpDef):
    """Sigmoid cross-entropy of `logits` z against targets t in [0, 1]:
    max(z, 0) - z * t + log(1 + exp(-|z|)), stable for any z (softplus only
    sees -|z| <= 0), with the exact gradient sigmoid(z) - t also at z = 0.
    pos_weight p (a number, or one per class of the last axis) weighs the
    positive term: -p * t * log(sigmoid(z)) - (1 - t) * log(1 - sigmoid(z)),
    PyTorch's binary_cross_entropy_with_logits.
    Takes logits: an output of sigmoid or softmax (squashed twice) is refused."""

    inputs = ("logits", "targets")
    attrs = {"reduction": "mean", "pos_weight": None}
    choices = {"reduction": REDUCTIONS}
    composite = True
    gradgrad = True

    def expand(self, g, z, t, reduction, pos_weight):
        require_float(z, "logits")
        pw = _pos_weight(pos_weight, z)
        refuse_probabilities("binary_cross_entropy", z, "sigmoid")
        _require_comparable("binary_cross_entropy", z, t, arg="targets")
        t = g.cast(t, z.dtype)
        # -|z| as z where z <= 0, else -z: at z = 0 its slope is z's, 1, so
        # relu'(0) + sigmoid(0) * 1 = 1/2 = sigmoid(0) is exact there (abs would
        # give sign(0) = 0, and minimum(z, -z) half of each slope, 0: a gradient of -t).
        neg_abs = g.apply("where", g.apply("gt", z, g.lift(0.0, like=z)), -z, z)
        softplus = g.apply("relu", z) + g.apply("softplus", neg_abs)  # log(1 + exp(z)) = -log(1 - sigmoid(z))
        loss = softplus - z * t
        if pw is not None:  # (p - 1) * t * -log(sigmoid(z)) more, that log being softplus(z) - z
            loss = loss + g.const(pw - 1.0, dtype=z.dtype) * t * (softplus - z)
        return _reduce(g, loss, reduction)

    def ref(self, attrs, z, t):
        loss = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        if attrs["pos_weight"] is not None:
            loss = loss + (np.asarray(attrs["pos_weight"], dtype=float) - 1.0) * t * (np.logaddexp(0, z) - z)
        return _np_reduce(loss, attrs["reduction"])

    def samples(self, rng):
        return [
            Sample([rng.uniform(-3, 3, (4, 3)), rng.uniform(0, 1, (4, 3))]),
            Sample([rng.uniform(-40, 40, (6,)), (rng.uniform(size=6) > 0.5).astype(np.float64)], {"reduction": "sum"},
                   grad_inputs=[0]),
            Sample([rng.uniform(-3, 3, (2, 3)), rng.uniform(0, 1, (3,))], {"reduction": "none"}),
            Sample([rng.uniform(-3, 3, (4, 3)), rng.uniform(0, 1, (4, 3))], {"pos_weight": 3.0}),
            Sample([rng.uniform(-3, 3, (4, 3)), rng.uniform(0, 1, (4, 3))], {"pos_weight": (0.5, 2.0, 4.0),
                                                                          "reduction": "sum"}),
        ]


def _pos_weight(pos_weight, z):
    """binary_cross_entropy's pos_weight as an array broadcasting against the logits z, or None."""
    return _class_weights(pos_weight, "pos_weight", z, -1, "the weight of the positive targets, e.g. pos_weight=3.0 "
                          "for 1 positive to 3 negatives, or pos_weight=[1.0, 4.0] per class")


def _class_weights(value, arg, z, axis, hint):
    """A loss's per-class weights `value` (a list of numbers 0 or more, one per entry of the logits z's
    `axis`; pos_weight may also be one number), as a float64 array, or None; else refused at `arg`."""
    if value is None:
        return None
    scalar_ok = arg == "pos_weight"
    try:
        w = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        w = None
    if w is None or w.ndim > 1 or (w.ndim == 0 and not scalar_ok) or not np.all(np.isfinite(w)) or np.any(w < 0):
        what = "a number 0 or more, or a list of them (one per class)" if scalar_ok else \
            "a list of numbers 0 or more, one per class"
        raise ShapeError(f"{arg} must be {what}, got {value!r}", arg=arg, hint=hint)
    axis = axis % z.rank if z.rank else axis
    if w.ndim == 1 and (z.rank == 0 or z.shape[axis] != w.shape[0]):
        where = "last axis" if axis in (-1, z.rank - 1) else f"axis {axis}"
        raise ShapeError(f"{arg} has {w.shape[0]} entries, one per class, but the logits {fmt_shape(z.shape)} "
                         f"have {z.shape[axis] if z.rank else 'no'} classes on their {where}", arg=arg,
                         hint=f"give one weight per entry of the logits' {where}"
                              + (", or one number for all" if scalar_ok else ""))
    return w


def _require_comparable(name: str, a, b, arg: str = "b") -> None:
    """The two sides of an entry-by-entry loss broadcast; else the error came from the
    subtraction inside it ('sub: shapes [N, 10] and [N] of the operands do not broadcast'), an op
    the user never wrote. And one of them has the shape they broadcast to: a prediction [N, 1]
    against targets [N] made [N, N], every prediction against every target, and a loss of the
    wrong thing."""
    try:
        out = broadcast_shapes(a.shape, b.shape)
    except ShapeError:
        ids = "; class ids go to cross_entropy(logits, labels)" if not is_float(b.dtype) else ""
        raise ShapeError(f"its arguments {a.dtype}{fmt_shape(a.shape)} and {b.dtype}{fmt_shape(b.shape)} do not "
                         f"broadcast, and {name} compares them entry by entry", arg=arg,
                         hint=f"give both one shape, e.g. a target declared as {fmt_shape(a.shape)}{ids}") from None
    if tuple(out) not in (tuple(a.shape), tuple(b.shape)):
        # (the side with the axis of 1 named by its shape: 'declare the target as [N, 1]' was wrong of
        # mse(y, pred) with a target y [N, 1] and a pred [N])
        hint = "give both one shape, e.g. drop the axis of 1 with squeeze(x, axes=...)"
        for one, other in ((a, b), (b, a)):
            if one.rank == other.rank + 1 and one.shape[-1] == 1 and tuple(one.shape[:-1]) == tuple(other.shape):
                hint = (f"give both one shape, e.g. drop the axis of 1 of the {fmt_shape(one.shape)} one with "
                        f"squeeze(x, axes=-1), or declare the {fmt_shape(other.shape)} one as {fmt_shape(one.shape)}")
        raise ShapeError(f"its arguments {fmt_shape(a.shape)} and {fmt_shape(b.shape)} broadcast to {fmt_shape(out)}: "
                         f"{name} would compare every entry of one with every entry of the other", arg=arg, hint=hint)


@op("mse")
class Mse(OpDef):
    """Mean squared error (a - b) ** 2 (one side broadcast to the other's shape), reduced by `reduction`."""

    inputs = ("a", "b")
    attrs = {"reduction": "mean"}
    choices = {"reduction": REDUCTIONS}
    composite = True
    gradgrad = True

    def expand(self, g, a, b, reduction):
        _require_comparable("mse", a, b)
        d = a - b
        return _reduce(g, d * d, reduction)

    def ref(self, attrs, a, b):
        return _np_reduce((a - b) ** 2, attrs["reduction"])

    def samples(self, rng):
        n = rng.normal
        return [Sample([n(size=(3, 4)), n(size=(3, 4))]), Sample([n(size=(2, 3)), n(size=(3,))], {"reduction": "sum"}),
                Sample([n(size=(5,)), n(size=(5,))], {"reduction": "none"})]


@op("l1_loss")
class L1Loss(OpDef):
    """Mean absolute error |a - b| (one side broadcast to the other's shape), reduced by `reduction`."""

    inputs = ("a", "b")
    attrs = {"reduction": "mean"}
    choices = {"reduction": REDUCTIONS}
    composite = True
    gradgrad = True

    def expand(self, g, a, b, reduction):
        _require_comparable("l1_loss", a, b)
        return _reduce(g, g.apply("abs", a - b), reduction)

    def ref(self, attrs, a, b):
        return _np_reduce(np.abs(a - b), attrs["reduction"])

    def samples(self, rng):
        n = rng.normal
        return [Sample([n(size=(3, 4)), n(size=(3, 4))]), Sample([n(size=(2, 3)), n(size=(3,))], {"reduction": "sum"})]


class _HuberLike(OpDef):
    """smooth_l1_loss and huber_loss: quadratic in d = a - b where |d| < t (the attribute `knob`), linear
    beyond, with one slope at |d| = t; one side may broadcast to the other's shape."""

    inputs = ("a", "b")
    choices = {"reduction": REDUCTIONS}
    composite = True
    gradgrad = True
    knob = ""

    def pieces(self, t):
        """(q, m): the loss is q * d**2 where |d| < t, else m * (|d| - t / 2)."""
        raise NotImplementedError

    def threshold(self, attrs) -> float:
        t = attrs[self.knob]
        least = "0 or more" if self.name == "smooth_l1_loss" else "more than 0"
        if not np.isfinite(t) or t < 0 or (t == 0 and self.name != "smooth_l1_loss"):
            raise ShapeError(f"{self.knob} must be a number {least}, got {t!r}", arg=self.knob,
                             hint=f"the |a - b| below which the loss is quadratic, e.g. {self.knob}=1.0"
                                  + (" (0 gives l1_loss)" if self.name == "smooth_l1_loss" else ""))
        return float(t)

    def expand(self, g, a, b, reduction, **attrs):
        t = self.threshold(attrs)
        _require_comparable(self.name, a, b)
        d = a - b
        q, m = self.pieces(t)
        ad = g.apply("abs", d)
        if t == 0:  # all of it linear (smooth_l1_loss with beta=0 is l1_loss, as in PyTorch)
            return _reduce(g, m * ad, reduction)
        # |d| = t takes the linear side, as PyTorch; the slopes agree there
        loss = g.apply("where", g.apply("lt", ad, g.lift(t, like=ad)), q * (d * d), m * (ad - 0.5 * t))
        return _reduce(g, loss, reduction)

    def ref(self, attrs, a, b):
        t = float(attrs[self.knob])
        q, m = self.pieces(t)
        ad = np.abs(a - b)
        return _np_reduce(np.where(ad < t, q * ad * ad, m * (ad - 0.5 * t)), attrs["reduction"])

    def samples(self, rng):
        n = rng.normal
        a = np.array([-2.0, -1.0, -0.75, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0])
        b = np.zeros_like(a)
        t0 = self.attrs[self.knob]
        kink = {self.knob: 0.5}  # a - b exactly at -t and t, and just inside and outside
        near = np.array([-0.5, 0.5, -0.499, 0.499, -0.501, 0.501, 0.1, -1.3])
        return [
            Sample([n(size=(3, 4)) * 2 * t0, n(size=(3, 4))]),
            Sample([n(size=(2, 3)) * 2, n(size=(3,))], {"reduction": "sum", self.knob: 0.7}),
            Sample([a, b], {"reduction": "none"}, gradgrad=False),
            Sample([near + 0.25, np.full(8, 0.25)], kink, gradgrad=False),
            Sample([near * 1.1, np.zeros(8)], {**kink, "reduction": "sum"}),  # around the kink, off it
        ] + ([Sample([n(size=(4,)), n(size=(4,))], {"beta": 0.0, "reduction": "none"})]
             if self.name == "smooth_l1_loss" else [])


@op("smooth_l1_loss")
class SmoothL1Loss(_HuberLike):
    """PyTorch's smooth_l1_loss of d = a - b (one side broadcast to the other's shape): 0.5 * d**2 / beta
    where |d| < beta, else |d| - 0.5 * beta; beta=0 is l1_loss. Reduced by `reduction`."""

    attrs = {"reduction": "mean", "beta": 1.0}
    knob = "beta"

    def pieces(self, t):
        return 0.5 / t if t else 0.0, 1.0


@op("huber_loss")
class HuberLoss(_HuberLike):
    """PyTorch's huber_loss of d = a - b (one side broadcast to the other's shape): 0.5 * d**2
    where |d| < delta, else delta * (|d| - 0.5 * delta) (delta * smooth_l1_loss with beta=delta).
    Reduced by `reduction`."""

    attrs = {"reduction": "mean", "delta": 1.0}
    knob = "delta"

    def pieces(self, t):
        return 0.5, t


class _Penalty(OpDef):
    inputs = ("param",)
    variadic = True
    composite = True
    gradgrad = True

    def term(self, g, p):
        raise NotImplementedError

    def expand(self, g, *params):
        if not params:
            raise SpecError(f"{self.name}() needs at least one tensor", current_loc(), hint=f"pass the tensors to penalise, e.g. {self.name}(W1, W2)")
        total = None
        for i, p in enumerate(params):
            if p.rank == 0 and p.producer is not None and p.producer.op.name == "constant":
                # (l2(W, 1e-4) read as a weight added 1e-4 to an unweighted penalty)
                value = p.producer.attrs["value"].item()
                raise SpecError(f"{self.name}() argument {i + 1} is the number {value:g}, not a tensor to penalise",
                                current_loc(), hint=f"weigh the penalty by multiplying it: {value:g} * {self.name}(W)",
                                arg=str(i))
            require_float(p, f"argument of {self.name}()")
            t = g.apply("sum", self.term(g, p))
            total = t if total is None else total + g.cast(t, total.dtype)
        return total

    def samples(self, rng):
        n = rng.normal
        return [Sample([n(size=(3, 4))]), Sample([n(size=(3, 4)), n(size=(4,)), n(size=(2, 2, 2))])]


@op("l2")
class L2(_Penalty):
    """Sum of squares of all given tensors, a weight penalty: 1e-4 * l2(W1, W2)."""

    def term(self, g, p):
        return p * p

    def ref(self, attrs, *ps):
        return np.asarray(sum(np.sum(p * p) for p in ps))


@op("l1")
class L1(_Penalty):
    """Sum of absolute values of all given tensors, a sparsity penalty."""

    gradgrad = False

    def term(self, g, p):
        return g.apply("abs", p)

    def ref(self, attrs, *ps):
        return np.asarray(sum(np.sum(np.abs(p)) for p in ps))
