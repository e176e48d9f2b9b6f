"""Neural-network ops: softmax, maxout, convolutions, pooling and normalisation.

Convolutions are NCHW and 2-D. Paddings are held as (top, left, bottom,
right), ONNX's order; a negative pad crops instead of padding. Cropping never
comes from a user's spec in practice, but it lets the gradient rules stay
closed under conv <-> conv_transpose: the weight gradient of a strided conv
whose input size does not divide evenly is a conv on a cropped input, and the
data gradient of a conv_transpose with output_padding is a conv whose end pad
is reduced by that padding.

Max pooling's gradient scatters to the first maximal entry of each window.
Windows that tile the input take MaxPool's own Indices output (the forward
MaxPool node computes them); other windows compute the argmax from a constant
window-index map (Gather, ArgMax), where onnx's reference evaluator and
onnxruntime would otherwise disagree.
"""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError

from ..ir import HALF_TYPES, TensorType, current_loc, dim_div, dim_mul, fmt_shape, normalize_axis
from ..registry import REQUIRED, OpDef, Sample, op, require_float


# ------------------------------------------------------------------ helpers
def _whole(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _show(v) -> str:
    """An argument as the spec writes it: [3, 3], not the tuple (3, 3) it is bound as."""
    return repr(list(v)) if isinstance(v, tuple) else repr(v)


def _pair(v, what: str, allow_zero: bool = False) -> tuple[int, int]:
    """(h, w) from an int or a pair of ints; an error names the argument (`what`), which the spec
    writes as `what=`, so that it points there."""
    kind = "a whole number of 0 or more" if allow_zero else "a positive integer"
    example = (f"{what}=1 on each side, or {what}=[1, 0] for height and width" if allow_zero
               else f"{what}=2, or {what}=[2, 1] for height and width")
    if _whole(v):
        out = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(_whole(i) for i in v):
        out = (int(v[0]), int(v[1]))
    else:
        out = None
    if out is None or min(out) < (0 if allow_zero else 1):
        raise ShapeError(f"{what} must be {kind} or a pair of them, got {_show(v)}", hint=f"write {example}", arg=what)
    return out


def _pads4(padding, what: str = "padding") -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, a pair (h, w), or a 4-tuple."""
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if not all(_whole(p) for p in padding):
            raise ShapeError(f"{what} must hold whole numbers, got {_show(padding)}",
                             hint=f"write {what} as one, a pair, or [top, left, bottom, right]", arg=what)
        return tuple(int(p) for p in padding)
    try:
        ph, pw = _pair(padding, what, allow_zero=True)
    except ShapeError as err:
        err.message = (f"{what} must be a whole number of 0 or more, a pair of them (height, width) or four "
                       f"(top, left, bottom, right), got {_show(padding)}")
        raise
    return (ph, pw, ph, pw)


def _spatial(t: TensorType, what: str) -> tuple[int, int]:
    if t.rank != 4:
        raise ShapeError(f"{what} must be 4-D (NCHW), got {fmt_shape(t.shape)}", hint="give it [N, C, H, W]; reshape a flat input first, e.g. reshape(x, [-1, 1, 28, 28])")
    h, w = t.shape[2], t.shape[3]
    if not (isinstance(h, int) and isinstance(w, int)):
        free = [str(d) for d in (h, w) if not isinstance(d, int)]
        example = f"dims: {{{free[0]}: 20}}, " if free[0].isidentifier() else ""
        raise ShapeError(f"the spatial dims of the {what} must be fixed numbers, got {fmt_shape(t.shape)}",
                         hint=f"give {' and '.join(free)} a fixed size under dims ({example}the data padded or cut to "
                              "it), or declare the input's spatial sizes as numbers")
    return h, w


def _same_dtype(a: TensorType, b: TensorType) -> None:
    require_float(a, "input")
    require_float(b, "weight")
    if a.dtype != b.dtype:
        raise ShapeError(f"input and weight have different dtypes {a.dtype} and {b.dtype}", hint=f"cast one to the other's type, e.g. cast(x, '{b.dtype}')")


def _divides(d, g: int) -> bool:
    return dim_div(d, g) is not None


class _ConvGeom:
    """Resolved geometry of one conv / conv_transpose application."""

    def __init__(self, attrs, in_hw, k_hw, transpose: bool = False):
        self.s = _pair(attrs["stride"], "stride")
        self.d = _pair(attrs["dilation"], "dilation")
        self.k = k_hw
        self.ke = tuple(self.d[i] * (self.k[i] - 1) + 1 for i in range(2))  # effective (dilated) kernel
        self.in_hw = in_hw
        padding = attrs["padding"]
        if isinstance(padding, str):
            if padding != "same" or transpose:
                raise ShapeError(
                    f"padding {padding!r} is not supported here",
                    hint="give an int, a pair (h, w), or (top, left, bottom, right)" + ("" if transpose else ", or 'same'"),
                    arg="padding",
                )
            pads = []
            for i in range(2):
                out = -(-in_hw[i] // self.s[i])
                pads.append(max((out - 1) * self.s[i] + self.ke[i] - in_hw[i], 0))
            self.pads = (pads[0] // 2, pads[1] // 2, pads[0] - pads[0] // 2, pads[1] - pads[1] // 2)
        else:
            self.pads = _pads4(padding)
        self.groups = attrs["groups"]
        if not _whole(self.groups) or self.groups < 1:
            raise ShapeError(f"groups must be a positive integer, got {self.groups!r}",
                             hint="write groups as a whole number of 1 or more that divides the channels", arg="groups")
        self.groups = int(self.groups)
        if transpose:
            self.op = _pair(attrs["output_padding"], "output_padding", allow_zero=True)
            # conv_transpose is the adjoint of a conv (output size -> input size) with these pads:
            pt, pl, pb, pr = self.pads
            self.adj_pads = (pt, pl, pb - self.op[0], pr - self.op[1])
            self.out_hw = tuple(
                self.s[i] * (in_hw[i] - 1) + self.ke[i] - self.adj_pads[i] - self.adj_pads[i + 2] for i in range(2)
            )
        else:
            span = [in_hw[i] + self.pads[i] + self.pads[i + 2] - self.ke[i] for i in range(2)]
            if min(span) < 0:
                raise ShapeError(
                    f"the input's spatial size {in_hw[0]}x{in_hw[1]} (padded by {self.pads}) is smaller than "
                    f"the (dilated) kernel {self.ke[0]}x{self.ke[1]}"
, hint="use a smaller kernel or dilation, or more padding")
            self.out_hw = tuple(span[i] // self.s[i] + 1 for i in range(2))
            self.rem = tuple(span[i] % self.s[i] for i in range(2))  # input rows/cols no window reaches
        if min(self.out_hw) < 1:
            raise ShapeError(f"the output would be empty ({self.out_hw[0]}x{self.out_hw[1]})", hint="use a smaller kernel or stride, or more padding")


def _crop_pad_np(a, pads4):
    """NumPy: pad axes 2, 3 by (top, left, bottom, right) with zeros; negative crops."""
    pt, pl, pb, pr = pads4
    a = np.pad(a, ((0, 0), (0, 0), (max(pt, 0), max(pb, 0)), (max(pl, 0), max(pr, 0))))
    h, w = a.shape[2], a.shape[3]
    return a[:, :, max(-pt, 0): h - max(-pb, 0), max(-pl, 0): w - max(-pr, 0)]


def _emit_crop_pad(e, name, shape_hw, pads4, out=None):
    """ONNX: zero-pad (positive) and crop (negative) axes 2, 3 of `name`, into `out`
    (a fresh name when None); returns the result's name."""
    pt, pl, pb, pr = pads4
    h, w = shape_hw
    crop, pad = min(pads4) < 0, max(pads4) > 0
    if crop:
        name = e.add(
            "Slice",
            [name, e.ints([max(-pt, 0), max(-pl, 0)]), e.ints([h - max(-pb, 0), w - max(-pr, 0)]), e.ints([2, 3])],
            [out] if out and not pad else 1,
        )
    if pad:
        pos = [max(p, 0) for p in pads4]
        name = e.add("Pad", [name, e.ints([0, 0, pos[0], pos[1], 0, 0, pos[2], pos[3]])], [out] if out else 1, mode="constant")
    return name


def _emit_conv(e, x, w, out, geom: _ConvGeom, in_hw):
    """Conv with possibly negative pads (those crop x first)."""
    pads = geom.pads
    if min(pads) < 0:
        x = _emit_crop_pad(e, x, in_hw, tuple(min(p, 0) for p in pads))
        pads = tuple(max(p, 0) for p in pads)
    e.add(
        "Conv", [x, w], [out], kernel_shape=list(geom.k), strides=list(geom.s), dilations=list(geom.d),
        pads=list(pads), group=geom.groups,
    )


def _emit_conv_transpose(e, x, w, out, geom: _ConvGeom, cin, cout):
    """ConvTranspose with geom.adj_pads (negative ones add zeros around the result).

    Grouped transposed convolutions other than depthwise ones are emitted as
    one ConvTranspose per group: onnx's reference evaluator mis-handles the
    general grouped case, and float64 checks run on it."""
    adj = geom.adj_pads
    pads = [max(p, 0) for p in adj]
    attrs = dict(kernel_shape=list(geom.k), strides=list(geom.s), dilations=list(geom.d), pads=pads)
    full_hw = tuple(geom.s[i] * (geom.in_hw[i] - 1) + geom.ke[i] - pads[i] - pads[i + 2] for i in range(2))
    target = out if min(adj) >= 0 else e.fresh("convt")
    G = geom.groups
    if G == 1 or (cin == G and cout == G):
        e.add("ConvTranspose", [x, w], [target], group=G, **attrs)
    else:
        xs = e.add("Split", [x], G, axis=1, num_outputs=G)
        ws = e.add("Split", [w], G, axis=0, num_outputs=G)
        parts = [e.add("ConvTranspose", [xi, wi], 1, group=1, **attrs) for xi, wi in zip(xs, ws)]
        e.add("Concat", parts, [target], axis=1)
    if min(adj) < 0:
        _emit_crop_pad(e, target, full_hw, tuple(-min(p, 0) for p in adj), out)


def _conv_weight_grad(x, gy, wshape, stride, dilation, pads, groups):
    """d<gy, conv(x, w)>/dw for a conv with these stride/dilation/pads/groups,
    as a conv of x and gy with their batch and channel axes swapped
    (stride and dilation trade places). Built only from IR ops."""
    G = groups
    gr = x.graph
    n, c, h, w = x.shape
    kh, kw = wshape[2], wshape[3]
    if (G == 1 and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and kh * kw <= IM2COL_MAX_TAPS
            and all(isinstance(d, int) for d in (c, h, w))):
        return _conv_weight_grad_gemm(x, gy, wshape, pads)
    if G == 1:
        xt = gr.apply("transpose", x, perm=(1, 0, 2, 3))  # [C, N, H, W]
    else:
        cg = dim_div(c, G)
        xt = gr.apply("reshape", x, shape=(n, G, cg, h, w))
        xt = gr.apply("transpose", xt, perm=(2, 1, 0, 3, 4))  # [C/G, G, N, H, W]
        xt = gr.apply("reshape", xt, shape=(cg, dim_mul(G, n), h, w))
    wt = gr.apply("transpose", gy, perm=(1, 0, 2, 3))  # [M, N, Ho, Wo]
    # rows/cols of x beyond the last window: crop them so the result is exactly kh x kw
    rem = [(h + pads[0] + pads[2] - (dilation[0] * (kh - 1) + 1)) % stride[0],
           (w + pads[1] + pads[3] - (dilation[1] * (kw - 1) + 1)) % stride[1]]
    p = (pads[0], pads[1], pads[2] - rem[0], pads[3] - rem[1])
    out = gr.apply("conv", xt, wt, stride=tuple(dilation), dilation=tuple(stride), padding=p, groups=G)
    dw = gr.apply("transpose", out, perm=(1, 0, 2, 3))
    assert tuple(dw.shape) == tuple(wshape), (dw.shape, wshape)
    return dw


# A stride-1 conv's weight gradient with at most this many kernel taps is one Gemm over
# shifted copies of the input; onnxruntime's Conv runs the equivalent batch-as-channels
# convolution (a kernel the size of the image) several times slower.
IM2COL_MAX_TAPS = 25
# Up to this many (tap, output position) pairs the shifted windows are one Gather with a
# constant index table (int32, 1 MB at most); larger images slice each window.
IM2COL_GATHER_MAX_ENTRIES = 1 << 18


def _conv_weight_grad_gemm(x, gy, wshape, pads):
    """dw[m, c, i, j] = sum over n, y, x of gy[n, m, y, x] * xpad[n, c, y + i, x + j]. With the
    input laid out [H*W, N, C] plus one row of zeros (the padding), one take gathers every
    window's rows as [kh*kw, Ho*Wo*N, C] (whole-row copies), and one batched product with gy
    laid out [M, Ho*Wo*N] gives [kh*kw, M, C]."""
    gr = x.graph
    m, c, kh, kw = wshape
    h, w = x.shape[2], x.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    xt = gr.apply("transpose", x, perm=(2, 3, 0, 1))  # [H, W, N, C]
    if kh * kw * ho * wo <= IM2COL_GATHER_MAX_ENTRIES:
        ii, jj, yy, xx = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(ho), np.arange(wo), indexing="ij")
        r, q = yy + ii - pads[0], xx + jj - pads[1]
        inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
        rows = np.where(inside, r * w + q, h * w).reshape(kh * kw, ho * wo).astype(np.int32)  # h * w: the zero row
        xt = gr.apply("pad", gr.apply("reshape", xt, shape=(h * w, -1, c)), pads=((0, 1), (0, 0), (0, 0)))
        windows = gr.apply("reshape", gr.apply("take", xt, gr.const(rows), axis=0), shape=(kh * kw, -1, c))
    else:  # a large image: the index table would bloat the file; slice each shifted window
        if any(pads):
            xt = gr.apply("pad", xt, pads=((pads[0], pads[2]), (pads[1], pads[3]), (0, 0), (0, 0)))
        taps = [gr.apply("index", xt, spec=(None, (i, i + ho, None), (j, j + wo, None))) for i in range(kh) for j in range(kw)]
        windows = gr.apply("reshape", gr.apply("concat", *taps, axis=0) if len(taps) > 1 else taps[0], shape=(kh * kw, -1, c))
    gyt = gr.apply("reshape", gr.apply("transpose", gy, perm=(1, 2, 3, 0)), shape=(m, -1))  # [M, Ho*Wo*N]
    dw = gr.apply("matmul", gyt, windows)  # [kh*kw, M, C]
    return gr.apply("reshape", gr.apply("transpose", dw, perm=(1, 2, 0)), shape=(m, c, kh, kw))


def _conv_np(x, w, stride, dilation, pads, groups):
    """Reference 2-D convolution (NCHW, weights [M, C/G, kh, kw])."""
    xp = _crop_pad_np(x, pads)
    n, c, h, wd = xp.shape
    m, cg, kh, kw = w.shape
    G = groups
    sh, sw = stride
    dh, dw = dilation
    ho = (h - (dh * (kh - 1) + 1)) // sh + 1
    wo = (wd - (dw * (kw - 1) + 1)) // sw + 1
    mg = m // G
    out = np.zeros((n, m, ho, wo), dtype=np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            for g in range(G):
                out[:, g * mg:(g + 1) * mg] += np.einsum(
                    "nchw,mc->nmhw", patch[:, g * cg:(g + 1) * cg], w[g * mg:(g + 1) * mg, :, i, j]
                )
    return out


def _conv_transpose_np(x, w, stride, dilation, adj_pads, groups):
    """Reference transposed convolution (weights [Cin, Cout/G, kh, kw])."""
    n, cin, h, wd = x.shape
    _, cog, kh, kw = w.shape
    G = groups
    cig = cin // G
    sh, sw = stride
    dh, dw = dilation
    fh = sh * (h - 1) + dh * (kh - 1) + 1
    fw = sw * (wd - 1) + dw * (kw - 1) + 1
    full = np.zeros((n, cog * G, fh, fw), dtype=np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            for g in range(G):
                contrib = np.einsum("nchw,co->nohw", x[:, g * cig:(g + 1) * cig], w[g * cig:(g + 1) * cig, :, i, j])
                full[:, g * cog:(g + 1) * cog, i * dh: i * dh + sh * (h - 1) + 1: sh, j * dw: j * dw + sw * (wd - 1) + 1: sw] += contrib
    return _crop_pad_np(full, tuple(-p for p in adj_pads))


# ------------------------------------------------------------------ softmax family
class _SoftmaxBase(OpDef):
    attrs = {"axis": -1}
    gradgrad = True

    def infer(self, attrs, x):
        require_float(x)
        if x.rank == 0:
            raise ShapeError(f"{self.name} needs a tensor of rank >= 1", hint="give it a tensor of rank 1 or more, e.g. [N, D]")
        normalize_axis(attrs["axis"], x.rank)
        return [x]

    def emit(self, e, node, ins, outs):
        e.add(self.onnx, ins, outs, axis=normalize_axis(node.attrs["axis"], node.inputs[0].rank))

    def samples(self, rng):
        return [
            Sample([rng.uniform(-2, 2, (3, 4))]),
            Sample([rng.uniform(-2, 2, (2, 3, 4))], {"axis": 1}),
            Sample([rng.uniform(-2, 2, (5,))], {"axis": 0}),
            # confident scores: probabilities that underflow keep their logs (-1600, not -inf)
            Sample([np.array([[-800.0, 800.0, 0.0], [100.0, -100.0, 0.0]])]),
        ]


@op("softmax")
class Softmax(_SoftmaxBase):
    """exp(x) / sum(exp(x)) along `axis` (default the last), computed stably."""

    onnx = "Softmax"

    def vjp(self, node, gouts):
        (g,) = gouts
        y = node.outputs[0]
        axis = normalize_axis(node.attrs["axis"], y.rank)
        s = g.graph.apply("sum", g * y, axis=axis, keepdims=True)
        return [y * (g - s)]

    def ref(self, attrs, x):
        z = np.exp(x - x.max(axis=attrs["axis"], keepdims=True))
        return z / z.sum(axis=attrs["axis"], keepdims=True)


@op("log_softmax")
class LogSoftmax(_SoftmaxBase):
    """x - log(sum(exp(x))) along `axis` (default the last), computed stably."""

    onnx = "LogSoftmax"

    def vjp(self, node, gouts):
        (g,) = gouts
        y = node.outputs[0]
        gr = g.graph
        axis = normalize_axis(node.attrs["axis"], y.rank)
        return [g - gr.apply("exp", y) * gr.apply("sum", g, axis=axis, keepdims=True)]

    def ref(self, attrs, x):
        m = x.max(axis=attrs["axis"], keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=attrs["axis"], keepdims=True))


@op("maxout")
class Maxout(OpDef):
    """Maxout: split `axis` (size K * pieces) into K groups of `pieces`
    consecutive entries and keep each group's maximum; the axis becomes K."""

    attrs = {"pieces": REQUIRED, "axis": -1}
    composite = True
    gradgrad = True

    def expand(self, g, x, pieces, axis):
        if not isinstance(pieces, (int, np.integer)) or pieces < 1:
            raise ShapeError(f"maxout: pieces must be a positive int, got {pieces!r}", hint="write pieces as a whole number of 1 or more, e.g. maxout(x, pieces=2)")
        axis = normalize_axis(axis, x.rank)
        size = x.shape[axis]
        k = dim_div(size, int(pieces))
        if k is None:
            raise ShapeError(
                f"maxout: axis {axis} of {fmt_shape(x.shape)} has size {size}, not a multiple of pieces={pieces}",
                hint="the maxout axis must hold K * pieces features", arg="pieces",
            )
        split = tuple(x.shape[:axis]) + (k, int(pieces)) + tuple(x.shape[axis + 1:])
        return g.apply("max", g.apply("reshape", x, shape=split), axis=axis + 1)

    def ref(self, attrs, x):
        axis = attrs["axis"] % x.ndim
        p = attrs["pieces"]
        split = x.shape[:axis] + (x.shape[axis] // p, p) + x.shape[axis + 1:]
        return x.reshape(split).max(axis=axis + 1)

    def samples(self, rng):
        # distinct values: no ties for the max
        return [
            Sample([rng.permutation(12).reshape(2, 6) / 4.0], {"pieces": 2}),
            Sample([rng.permutation(36).reshape(2, 6, 3) / 9.0 - 2.0], {"pieces": 3, "axis": 1}),
        ]


# ------------------------------------------------------------------ convolution
@op("conv")
class Conv(OpDef):
    """2-D convolution (cross-correlation), NCHW. x [N, C, H, W], w [M, C/groups, kh, kw]
    -> [N, M, Ho, Wo]. stride, dilation: int or (h, w); padding: int, (h, w),
    (top, left, bottom, right) or 'same' (output ceil(H / stride), any odd padding
    at the end); groups divides C and M. No bias: add one by broadcasting."""

    inputs = ("x", "w")
    attrs = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    gradgrad = True

    def geom(self, attrs, x: TensorType, w: TensorType) -> _ConvGeom:
        return _ConvGeom(attrs, _spatial(x, "input"), _spatial(w, "weight"))

    def infer(self, attrs, x, w):
        _same_dtype(x, w)
        geom = self.geom(attrs, x, w)
        G = geom.groups
        c, m, cg = x.shape[1], w.shape[0], w.shape[1]
        if dim_mul(cg, G) != c:
            raise ShapeError(
                f"input {fmt_shape(x.shape)} has {c} channels but weight {fmt_shape(w.shape)} expects "
                f"{cg}{f' x {G} groups' if G > 1 else ''}",
                hint="the weight is [out_channels, in_channels / groups, kh, kw]",
            )
        if not _divides(m, G):
            raise ShapeError(f"{m} output channels do not split into {G} groups", hint="use a groups that divides the output channels",
                             arg="groups")
        return [TensorType(x.dtype, (x.shape[0], m) + geom.out_hw)]

    def emit(self, e, node, ins, outs):
        x, w = node.inputs
        geom = self.geom(node.attrs, x.type, w.type)
        _emit_conv(e, ins[0], ins[1], outs[0], geom, geom.in_hw)

    def vjp(self, node, gouts):
        x, w = node.inputs
        (g,) = gouts
        geom = self.geom(node.attrs, x.type, w.type)
        gr = g.graph
        (kh, kw) = geom.k
        full = (kh - 1 - geom.pads[0], kw - 1 - geom.pads[1], kh - 1 - geom.pads[2], kw - 1 - geom.pads[3])
        if geom.s == (1, 1) and geom.d == (1, 1) and geom.groups == 1 and min(full) >= 0:
            # At stride 1 the input gradient is a plain convolution of g with the flipped,
            # transposed kernel: onnxruntime's Conv is faster than its ConvTranspose.
            flipped = gr.apply("index", gr.apply("transpose", w, perm=(1, 0, 2, 3)),
                               spec=((None, None, None), (None, None, None), (None, None, -1), (None, None, -1)))
            dx = gr.apply("conv", g, flipped, padding=full)
        else:
            dx = gr.apply(
                "conv_transpose", g, w, stride=geom.s, dilation=geom.d, padding=geom.pads,
                output_padding=geom.rem, groups=geom.groups,
            )
        assert tuple(dx.shape) == tuple(x.shape), (dx.shape, x.shape)
        dw = _conv_weight_grad(x, g, w.shape, geom.s, geom.d, geom.pads, geom.groups)
        return [dx, dw]

    def ref(self, attrs, x, w):
        geom = _ConvGeom(attrs, x.shape[2:], w.shape[2:])
        return _conv_np(x, w, geom.s, geom.d, geom.pads, geom.groups)

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(2, 3, 5, 5)), n(size=(4, 3, 3, 3))]),
            # stride 2 with an input size the stride does not divide (6 + 2 - 3 = 5)
            Sample([n(size=(1, 2, 6, 5)), n(size=(3, 2, 3, 3))], {"stride": 2, "padding": 1}),
            Sample([n(size=(1, 2, 6, 7)), n(size=(2, 2, 2, 3))], {"dilation": 2, "padding": (1, 2), "stride": (1, 2)}),
            Sample([n(size=(2, 4, 6, 5)), n(size=(6, 2, 3, 3))], {"groups": 2, "stride": 2}),
            Sample([n(size=(1, 2, 5, 4)), n(size=(2, 2, 3, 2))], {"padding": "same"}),
            # uneven padding: the weight gradient's gathered windows read the zero row on every side
            Sample([n(size=(2, 3, 4, 5)), n(size=(2, 3, 3, 3))], {"padding": (2, 0, 1, 1)}),
            Sample([n(size=(1, 2, 7, 6)), n(size=(2, 1, 2, 2))], {"groups": 2, "stride": 3, "dilation": (2, 1), "padding": (0, 1, 1, 0)}),
        ]


@op("conv_transpose")
class ConvTranspose(OpDef):
    """2-D transposed convolution, NCHW: the adjoint of conv. x [N, Cin, H, W],
    w [Cin, Cout/groups, kh, kw] -> [N, Cout, Ho, Wo] with
    Ho = stride*(H-1) + dilation*(kh-1) + 1 - pad_top - pad_bottom + output_padding.
    stride, dilation, output_padding: int or (h, w); padding: int, (h, w) or
    (top, left, bottom, right)."""

    inputs = ("x", "w")
    attrs = {"stride": 1, "padding": 0, "dilation": 1, "output_padding": 0, "groups": 1}
    gradgrad = True

    def geom(self, attrs, x: TensorType, w: TensorType) -> _ConvGeom:
        return _ConvGeom(attrs, _spatial(x, "input"), _spatial(w, "weight"), transpose=True)

    def infer(self, attrs, x, w):
        _same_dtype(x, w)
        geom = self.geom(attrs, x, w)
        G = geom.groups
        cin = x.shape[1]
        if w.shape[0] != cin:
            raise ShapeError(
                f"input {fmt_shape(x.shape)} has {cin} channels but weight {fmt_shape(w.shape)} expects {w.shape[0]}",
                hint="a conv_transpose weight is [in_channels, out_channels / groups, kh, kw]",
            )
        if not _divides(cin, G):
            raise ShapeError(f"{cin} input channels do not split into {G} groups", hint="use a groups that divides the input channels",
                             arg="groups")
        return [TensorType(x.dtype, (x.shape[0], dim_mul(w.shape[1], G)) + geom.out_hw)]

    def emit(self, e, node, ins, outs):
        x, w = node.inputs
        geom = self.geom(node.attrs, x.type, w.type)
        _emit_conv_transpose(e, ins[0], ins[1], outs[0], geom, x.shape[1], node.outputs[0].shape[1])

    def vjp(self, node, gouts):
        x, w = node.inputs
        (g,) = gouts
        geom = self.geom(node.attrs, x.type, w.type)
        gr = g.graph
        dx = gr.apply("conv", g, w, stride=geom.s, dilation=geom.d, padding=geom.adj_pads, groups=geom.groups)
        assert tuple(dx.shape) == tuple(x.shape), (dx.shape, x.shape)
        dw = _conv_weight_grad(g, x, w.shape, geom.s, geom.d, geom.adj_pads, geom.groups)
        return [dx, dw]

    def ref(self, attrs, x, w):
        geom = _ConvGeom(attrs, x.shape[2:], w.shape[2:], transpose=True)
        return _conv_transpose_np(x, w, geom.s, geom.d, geom.adj_pads, geom.groups)

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(2, 3, 4, 4)), n(size=(3, 2, 3, 3))]),
            Sample([n(size=(1, 2, 3, 4)), n(size=(2, 3, 3, 3))], {"stride": 2, "padding": 1, "output_padding": 1}),
            Sample([n(size=(1, 4, 3, 3)), n(size=(4, 2, 2, 2))], {"stride": 2, "dilation": (1, 2), "groups": 2}),
            # output_padding larger than the end pad: the extra rows are zeros
            Sample([n(size=(1, 2, 3, 3)), n(size=(2, 1, 2, 3))], {"stride": (3, 2), "padding": (0, 1, 0, 0), "output_padding": (2, 1)}),
        ]


# ------------------------------------------------------------------ pooling
class _PoolGeom:
    """The windows of a 2-D pooling: kernel k, stride s, padding p; with ceil_mode the output rounds up,
    adding a last window that may run past the bottom/right padding (PyTorch's rule: kept only when it
    starts inside the input or the left padding). pads (top, left, bottom, right) are the padding that
    makes every window whole: p on each side, and the overrun at the end."""

    def __init__(self, attrs, in_hw):
        self.k = _pair(attrs["kernel"], "kernel")
        self.ceil = bool(attrs.get("ceil_mode", False))
        self.count_pad = bool(attrs.get("count_include_pad", True))
        self.s = self.k if attrs["stride"] is None else _pair(attrs["stride"], "stride")
        self.p = _pair(attrs["padding"], "padding", allow_zero=True)
        for i in range(2):
            if self.p[i] >= self.k[i]:
                raise ShapeError(f"padding {_show(self.p)} must be smaller than the kernel {_show(self.k)}",
                                 hint="use a padding smaller than the kernel in each direction", arg="padding")
        self.in_hw = tuple(in_hw)
        span = [in_hw[i] + 2 * self.p[i] - self.k[i] for i in range(2)]
        if min(span) < 0:
            raise ShapeError(
                f"the input's spatial size {in_hw[0]}x{in_hw[1]} (padded by {self.p}) is smaller than the kernel {self.k}"
, hint="use a smaller kernel, or more padding")
        out = []
        for i in range(2):
            o = (span[i] + (self.s[i] - 1 if self.ceil else 0)) // self.s[i] + 1
            if self.ceil and (o - 1) * self.s[i] >= in_hw[i] + self.p[i]:
                o -= 1  # (a window starting in the end padding)
            out.append(o)
        self.out_hw = tuple(out)
        # (signed: negative where rows/cols past the last window are left over)
        self.end = tuple((out[i] - 1) * self.s[i] + self.k[i] - in_hw[i] - 2 * self.p[i] for i in range(2))
        self.pads = (self.p[0], self.p[1], self.p[0] + max(self.end[0], 0), self.p[1] + max(self.end[1], 0))

    @property
    def identity(self) -> bool:
        """Every entry its own window (a 1x1 kernel, stride 1, no padding): pooling passes x on, and
        the gradient g. (onnx.reference's MaxUnpool put g of every channel but the first at 0.)"""
        return self.k == (1, 1) and self.s == (1, 1) and not any(self.pads)

    def divisor(self) -> np.ndarray:
        """[Ho, Wo]: what avg_pool2d divides each window's sum by, as PyTorch: the window's entries inside
        the padded input (count_include_pad), or inside the input alone; a ceil_mode window's overrun
        never counts."""
        per_axis = []
        for i in range(2):
            start = np.arange(self.out_hw[i]) * self.s[i] - self.p[i]
            end = np.minimum(start + self.k[i], self.in_hw[i] + self.p[i])
            per_axis.append(end - start if self.count_pad else
                            np.minimum(end, self.in_hw[i]) - np.maximum(start, 0))
        return np.outer(per_axis[0], per_axis[1]).astype(np.float64)

    def uniform(self) -> bool:
        """Whether every window divides by kh * kw (ONNX AveragePool's count_include_pad)."""
        return bool(np.all(self.divisor() == self.k[0] * self.k[1]))

    def pad_np(self, x):
        """x zero-padded by pads, every window whole."""
        pt, pl, pb, pr = self.pads
        return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))

    def windows(self):
        """[Ho*Wo, kh*kw] flat input positions of each window's entries; a padding
        position repeats the window's first real entry (so it never wins alone)."""
        (kh, kw), (sh, sw), (ph, pw) = self.k, self.s, self.p
        H, W = self.in_hw
        ho, wo = self.out_hw
        out = np.empty((ho * wo, kh * kw), dtype=np.int64)
        for oh in range(ho):
            for ow in range(wo):
                h0, w0 = oh * sh - ph, ow * sw - pw
                first = max(h0, 0) * W + max(w0, 0)
                for i in range(kh):
                    for j in range(kw):
                        h, w = h0 + i, w0 + j
                        out[oh * wo + ow, i * kw + j] = h * W + w if 0 <= h < H and 0 <= w < W else first
        return out


def _pool_padding(e, geom: _PoolGeom, x: str, fill, apart: bool = False) -> tuple[str, list[int]]:
    """(input, pads) for a pooling node: unequal pads (and any pads, with `apart`) are applied
    apart with an explicit Pad of `fill`, because onnx's reference pooling misreads unequal pads.
    An unpadded pool reads x itself."""
    pt, pl, pb, pr = geom.pads
    if not any(geom.pads) or (pt, pl) == (pb, pr) and pt == pl and not apart:
        return x, list(geom.pads)
    pads = e.ints([0, 0, pt, pl, 0, 0, pb, pr])
    return e.add("Pad", [x, pads, e.const(fill)], mode="constant"), [0, 0, 0, 0]


def _pool_geom(attrs, x: TensorType) -> _PoolGeom:
    require_float(x)
    return _PoolGeom(attrs, _spatial(x, "input"))


def _emit_argmax_positions(e, geom: _PoolGeom, x: str) -> str:
    """int64 [N, C, Ho*Wo]: the flat H*W position of each window's first maximum."""
    H, W = geom.in_hw
    if geom.s == geom.k and not any(geom.pads):
        # Non-overlapping windows: MaxPool's own indices (flat over N*C*H*W) are
        # right on every runtime here and far cheaper than gathering each window.
        idx = _max_pool_indices(e, geom, x)
        pos = e.add("Mod", [idx, e.const(np.asarray(H * W, dtype=np.int64))])
        return e.add("Reshape", [pos, e.ints([0, 0, -1])])
    win = geom.windows()
    L, K = win.shape
    xf = e.add("Reshape", [x, e.ints([0, 0, H * W])])
    patches = e.add("Gather", [xf, e.const(win.reshape(-1))], axis=2)
    patches = e.add("Reshape", [patches, e.ints([0, 0, L, K])])
    arg = e.add("ArgMax", [patches], axis=3, keepdims=0, select_last_index=0)
    flat = e.add("Add", [arg, e.const(np.arange(L, dtype=np.int64) * K)])
    return e.add("Gather", [e.const(win.reshape(-1)), flat], axis=0)


def _max_pool_indices(e, geom: _PoolGeom, x: str) -> str:
    """MaxPool's indices output for unpadded windows over x. When the forward pass already
    pooled x with the same windows in this graph, that node gains the indices output
    instead of pooling x a second time."""
    window = {"kernel_shape": list(geom.k), "strides": list(geom.s)}
    for node in e.nodes:
        if node.op_type == "MaxPool" and list(node.input) == [x]:
            attrs = {a.name: list(a.ints) for a in node.attribute}
            if {k: attrs.get(k) for k in window} == window and not any(attrs.get("pads", [])) \
                    and set(attrs) <= {"kernel_shape", "strides", "pads"}:
                if len(node.output) == 1:
                    node.output.append(e.fresh("maxpool_indices"))
                return node.output[1]
    return e.add("MaxPool", [x], 2, **window)[1]


def _argmax_positions_np(geom: _PoolGeom, x):
    n, c = x.shape[:2]
    win = geom.windows()
    patches = x.reshape(n, c, -1)[:, :, win]  # [N, C, L, K]
    return win[np.arange(win.shape[0]), patches.argmax(axis=-1)]  # [N, C, L]


def _pool_samples_x(rng, shape):
    return rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 1.0  # distinct: no ties


_POOL_ATTRS = {"kernel": REQUIRED, "stride": None, "padding": 0, "ceil_mode": False}
_AVG_POOL_ATTRS = {**_POOL_ATTRS, "count_include_pad": True}
_POOL_CASES = [
    ((2, 2, 5, 5), {"kernel": 2}),  # stride 2 does not divide 5
    ((1, 2, 5, 4), {"kernel": 3, "stride": 1, "padding": 1}),  # overlapping windows
    ((1, 1, 6, 7), {"kernel": (3, 2), "stride": (2, 3), "padding": (1, 0)}),
    ((1, 1, 4, 4), {"kernel": 2, "stride": 1, "padding": (1, 0)}),
    ((2, 2, 4, 6), {"kernel": 2}),  # windows that tile the input
    ((1, 2, 6, 6), {"kernel": (3, 2)}),
    # ceil_mode: a last, partial window over the leftover rows/cols
    ((1, 2, 5, 5), {"kernel": 2, "ceil_mode": True}),
    ((1, 1, 6, 7), {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),  # past the padding on H only
    ((1, 1, 5, 5), {"kernel": 3, "stride": 3, "padding": 1, "ceil_mode": True}),  # one starting in the padding: none
    ((1, 1, 7, 6), {"kernel": (2, 3), "stride": (3, 2), "ceil_mode": True}),
    ((1, 2, 7, 5), {"kernel": 1}),  # every entry its own window: the identity
]
# avg_pool2d's own: padding not counted in the average, with and without ceil_mode
_AVG_POOL_CASES = _POOL_CASES + [
    ((1, 2, 5, 4), {"kernel": 3, "stride": 1, "padding": 1, "count_include_pad": False}),
    ((1, 1, 6, 7), {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}),
    ((2, 1, 6, 7), {"kernel": (3, 2), "stride": 2, "padding": (1, 0), "ceil_mode": True, "count_include_pad": False}),
    ((1, 1, 6, 7), {"kernel": (3, 2), "stride": 2, "padding": (1, 1), "ceil_mode": True}),
]


@op("max_pool2d")
class MaxPool2d(OpDef):
    """2-D max pooling, NCHW. kernel: int or (h, w); stride defaults to the kernel;
    padding (int or (h, w), smaller than the kernel) never wins the max.
    The gradient goes to the first maximal entry of each window."""

    attrs = dict(_POOL_ATTRS)
    gradgrad = True

    def infer(self, attrs, x):
        geom = _pool_geom(attrs, x)
        return [TensorType(x.dtype, tuple(x.shape[:2]) + geom.out_hw)]

    def emit(self, e, node, ins, outs):
        geom = _pool_geom(node.attrs, node.inputs[0].type)
        # -inf padding never wins the max. Written as a Pad: onnxruntime's MaxPool pads with the
        # float type's lowest number, which a window of -inf entries (-inf inputs, a masked
        # feature map) gave instead of -inf
        if geom.identity:
            e.add("Identity", ins, outs)
            return
        x, pads = _pool_padding(e, geom, ins[0], np.asarray(-np.inf, dtype=node.inputs[0].dtype), apart=True)
        e.add("MaxPool", [x], outs, kernel_shape=list(geom.k), strides=list(geom.s), pads=pads)

    def vjp(self, node, gouts):
        x = node.inputs[0]
        return [gouts[0].graph.apply("max_pool2d_grad", gouts[0], x, **node.attrs)]

    def ref(self, attrs, x):
        geom = _PoolGeom(attrs, x.shape[2:])
        n, c = x.shape[:2]
        return x.reshape(n, c, -1)[:, :, geom.windows()].max(axis=-1).reshape((n, c) + geom.out_hw)

    def samples(self, rng):
        return [Sample([_pool_samples_x(rng, s)], a) for s, a in _POOL_CASES]


@op("max_pool2d_grad")
class MaxPool2dGrad(OpDef):
    """The gradient of max_pool2d: g (pooled shape) added into zeros shaped like x
    at each window's first maximum of x. Linear in g; x only picks positions."""

    internal = True
    inputs = ("g", "x")
    attrs = dict(_POOL_ATTRS)
    gradgrad = True

    def infer(self, attrs, g, x):
        geom = _pool_geom(attrs, x)
        want = tuple(x.shape[:2]) + geom.out_hw
        if tuple(g.shape) != want or g.dtype != x.dtype:
            raise ShapeError(f"gradient {g} does not match the pooled shape {x.dtype}{fmt_shape(want)}", hint="declare the spatial dims as fixed sizes (numbers or names under dims)")
        return [x]

    def emit(self, e, node, ins, outs):
        x = node.inputs[1]
        geom = _pool_geom(node.attrs, x.type)
        H, W = geom.in_hw
        from .indexing import _scatter_add

        if geom.identity:
            e.add("Identity", [ins[0]], outs)
            return
        if geom.s == geom.k and not any(geom.pads) and (H, W) == tuple(o * k for o, k in zip(geom.out_hw, geom.k)):
            # Windows that tile the input: MaxUnpool puts g at MaxPool's own indices (each
            # window's first maximum) and zeros elsewhere, in one pass. (With rows or columns
            # left over, onnx.reference's MaxUnpool misplaces values: those scatter.)
            idx = _max_pool_indices(e, geom, ins[1])
            e.add("MaxUnpool", [ins[0], idx], outs, kernel_shape=list(geom.k), strides=list(geom.s))
            return
        pos = _emit_argmax_positions(e, geom, ins[1])
        gf = e.add("Reshape", [ins[0], e.ints([0, 0, geom.out_hw[0] * geom.out_hw[1]])])
        xf = e.add("Reshape", [ins[1], e.ints([0, 0, H * W])])
        # overlapping windows add several values into one entry: a ScatterElements with reduction
        # add, which onnxruntime's CPU provider has no float16 or bfloat16 kernel for (it failed at
        # the first step of a mixed-precision convnet): those sum in float32, as scatter_add's do
        scattered = e.fresh("scattered")
        _scatter_add(e, xf, pos, gf, x.dtype, [scattered], axis=2)
        e.add("Reshape", [scattered, e.ints([0, 0, H, W])], outs)

    def vjp(self, node, gouts):
        g, x = node.inputs
        return [gouts[0].graph.apply("max_pool2d_gather", gouts[0], x, **node.attrs), None]

    def ref(self, attrs, g, x):
        geom = _PoolGeom(attrs, x.shape[2:])
        n, c = x.shape[:2]
        pos = _argmax_positions_np(geom, x)
        out = np.zeros((n, c, x.shape[2] * x.shape[3]), dtype=g.dtype)
        gf = g.reshape(n, c, -1)
        for a in range(n):
            for b in range(c):
                np.add.at(out[a, b], pos[a, b], gf[a, b])
        return out.reshape(x.shape)

    def samples(self, rng):
        out = []
        for s, a in _POOL_CASES:
            x = _pool_samples_x(rng, s)
            geom = _PoolGeom({**_POOL_ATTRS, **a}, s[2:])
            out.append(Sample([rng.normal(size=s[:2] + geom.out_hw), x], a, grad_inputs=[0]))
        # ties (a ReLU's zeros): the whole gradient goes to each window's first maximum
        tied = np.maximum(np.round(rng.normal(size=(2, 2, 4, 6))), 0.0)
        out.append(Sample([rng.normal(size=(2, 2, 2, 3)), tied], {"kernel": 2}, grad_inputs=[0]))
        out.append(Sample([rng.normal(size=(1, 2, 2, 2)), np.maximum(np.round(rng.normal(size=(1, 2, 5, 5))), 0.0)],
                          {"kernel": 2}, grad_inputs=[0]))
        return out


@op("max_pool2d_gather")
class MaxPool2dGather(OpDef):
    """The entries of h (shaped like x) at each pooling window's first maximum of x,
    in the pooled shape: the adjoint of max_pool2d_grad."""

    internal = True
    inputs = ("h", "x")
    attrs = dict(_POOL_ATTRS)
    gradgrad = True

    def infer(self, attrs, h, x):
        geom = _pool_geom(attrs, x)
        if h != x:
            raise ShapeError(f"{h} does not match the pooled input {x}", hint="declare the spatial dims as fixed sizes (numbers or names under dims)")
        return [TensorType(x.dtype, tuple(x.shape[:2]) + geom.out_hw)]

    def emit(self, e, node, ins, outs):
        geom = _pool_geom(node.attrs, node.inputs[1].type)
        if geom.identity:
            e.add("Identity", [ins[0]], outs)
            return
        H, W = geom.in_hw
        pos = _emit_argmax_positions(e, geom, ins[1])
        hf = e.add("Reshape", [ins[0], e.ints([0, 0, H * W])])
        picked = e.add("GatherElements", [hf, pos], axis=2)
        e.add("Reshape", [picked, e.ints([0, 0, geom.out_hw[0], geom.out_hw[1]])], outs)

    def vjp(self, node, gouts):
        h, x = node.inputs
        return [gouts[0].graph.apply("max_pool2d_grad", gouts[0], x, **node.attrs), None]

    def ref(self, attrs, h, x):
        geom = _PoolGeom(attrs, x.shape[2:])
        n, c = x.shape[:2]
        pos = _argmax_positions_np(geom, x)
        return np.take_along_axis(h.reshape(n, c, -1), pos, axis=2).reshape((n, c) + geom.out_hw)

    def samples(self, rng):
        return [
            Sample([rng.normal(size=s), _pool_samples_x(rng, s)], a, grad_inputs=[0]) for s, a in _POOL_CASES
        ]


@op("avg_pool2d")
class AvgPool2d(OpDef):
    """2-D average pooling, NCHW. kernel: int or (h, w); stride defaults to the
    kernel; zero padding (int or (h, w)) counts in the average unless
    count_include_pad=false. ceil_mode=true rounds the output size up, as
    PyTorch: a last window past the padding averages its entries inside it."""

    attrs = dict(_AVG_POOL_ATTRS)
    gradgrad = True

    def infer(self, attrs, x):
        geom = _pool_geom(attrs, x)
        return [TensorType(x.dtype, tuple(x.shape[:2]) + geom.out_hw)]

    def emit(self, e, node, ins, outs):
        geom = _pool_geom(node.attrs, node.inputs[0].type)
        # zero padding counted in the average is plain zero padding: the sum over kh * kw, and
        # windows that count fewer entries (count_include_pad=false, ceil_mode) rescaled
        dtype = node.inputs[0].dtype
        x, pads = _pool_padding(e, geom, ins[0], np.asarray(0, dtype=dtype))
        uniform = geom.uniform()
        pooled = e.add("AveragePool", [x], outs if uniform else 1, kernel_shape=list(geom.k), strides=list(geom.s),
                       pads=pads, count_include_pad=1)
        if not uniform:
            scale = np.asarray(geom.k[0] * geom.k[1] / geom.divisor(), dtype=dtype)
            e.add("Mul", [pooled, e.const(scale)], outs)

    def vjp(self, node, gouts):
        x = node.inputs[0]
        return [gouts[0].graph.apply("avg_pool2d_grad", gouts[0], size=tuple(x.shape[2:]), **node.attrs)]

    def ref(self, attrs, x):
        geom = _PoolGeom(attrs, x.shape[2:])
        xp = geom.pad_np(x)
        (kh, kw), (sh, sw), (ho, wo) = geom.k, geom.s, geom.out_hw
        out = np.zeros(x.shape[:2] + (ho, wo), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                out += xp[:, :, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw]
        return out / geom.divisor()

    def samples(self, rng):
        return [Sample([rng.normal(size=s)], a) for s, a in _AVG_POOL_CASES]


@op("avg_pool2d_grad")
class AvgPool2dGrad(OpDef):
    """The gradient of avg_pool2d: each pooled g divided as its window's average
    divides, spread evenly over the window, into an input of spatial `size` (h, w).
    Linear; its own gradient is avg_pool2d."""

    internal = True
    inputs = ("g",)
    attrs = {**_AVG_POOL_ATTRS, "size": REQUIRED}
    gradgrad = True

    def geom(self, attrs, g: TensorType) -> _PoolGeom:
        require_float(g)
        _spatial(g, "gradient")
        size = _pair(attrs["size"], "size")
        geom = _PoolGeom(attrs, size)
        if tuple(g.shape[2:]) != geom.out_hw:
            raise ShapeError(f"gradient {g} does not match pooling an input of size {size}: {geom.out_hw}", hint="declare the spatial dims as fixed sizes (numbers or names under dims)")
        return geom

    def infer(self, attrs, g):
        geom = self.geom(attrs, g)
        return [TensorType(g.dtype, tuple(g.shape[:2]) + geom.in_hw)]

    def emit(self, e, node, ins, outs):
        g = node.inputs[0]
        geom = self.geom(node.attrs, g.type)
        c = g.shape[1]
        if not isinstance(c, int):
            raise ShapeError(f"avg_pool2d's gradient needs a fixed channel count, got {fmt_shape(g.shape)}", hint="declare the channel count C of [N, C, H, W] as a fixed size (a number or a name under dims)")
        kh, kw = geom.k
        w = e.const(np.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=g.dtype))
        H, W = geom.in_hw
        gin = ins[0]
        if not geom.uniform():  # windows dividing by fewer than kh * kw (see avg_pool2d)
            gin = e.add("Mul", [gin, e.const(np.asarray(kh * kw / geom.divisor(), dtype=g.dtype))])
        # output padding: input rows/cols past the last window; a ceil_mode window's overrun is cropped
        rem = tuple(max(-geom.end[i], 0) for i in range(2))
        cg = _ConvGeom(
            {"stride": geom.s, "dilation": 1, "padding": geom.pads, "groups": c, "output_padding": rem},
            geom.out_hw, geom.k, transpose=True,
        )
        assert cg.out_hw == (H, W), (cg.out_hw, H, W)
        _emit_conv_transpose(e, gin, w, outs[0], cg, c, c)

    def vjp(self, node, gouts):
        a = {k: v for k, v in node.attrs.items() if k != "size"}
        return [gouts[0].graph.apply("avg_pool2d", gouts[0], **a)]

    def ref(self, attrs, g):
        geom = _PoolGeom(attrs, _pair(attrs["size"], "size"))
        (kh, kw), (sh, sw), (ho, wo), (ph, pw) = geom.k, geom.s, geom.out_hw, geom.p
        H, W = geom.in_hw
        full = geom.pad_np(np.zeros(g.shape[:2] + (H, W), dtype=g.dtype))
        for i in range(kh):
            for j in range(kw):
                full[:, :, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw] += g / geom.divisor()
        return full[:, :, ph: ph + H, pw: pw + W]

    def samples(self, rng):
        out = []
        for s, a in _AVG_POOL_CASES:
            geom = _PoolGeom({**_AVG_POOL_ATTRS, **a}, s[2:])
            out.append(Sample([rng.normal(size=s[:2] + geom.out_hw)], {**a, "size": s[2:]}))
        return out


@op("global_avg_pool")
class GlobalAvgPool(OpDef):
    """Mean over all spatial axes (2 and after), keeping them as size 1: [N, C, H, W] -> [N, C, 1, 1]."""

    composite = True
    gradgrad = True

    def expand(self, g, x):
        if x.rank < 3:
            raise ShapeError(f"global_avg_pool needs [N, C, spatial...], got {fmt_shape(x.shape)}", hint="give it [N, C, H, W]; reshape a flat input first")
        return g.apply("mean", x, axis=tuple(range(2, x.rank)), keepdims=True)

    def ref(self, attrs, x):
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)

    def samples(self, rng):
        return [Sample([rng.normal(size=(2, 3, 4, 5))]), Sample([rng.normal(size=(2, 3, 4))])]


def _adaptive_windows(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: each output's average over its window of one axis, as F.adaptive_avg_pool2d's:
    rows floor(i * n_in / n_out) up to ceil((i + 1) * n_in / n_out) (overlapping where they do not
    divide, repeating rows where n_out > n_in)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        start, end = i * n_in // n_out, -(-(i + 1) * n_in // n_out)
        a[i, start:end] = 1.0 / (end - start)
    return a


@op("adaptive_avg_pool2d")
class AdaptiveAvgPool2d(OpDef):
    """F.adaptive_avg_pool2d, NCHW: the average over output_size (int or (h, w)) windows. Sizes that
    divide the input are avg_pool2d with kernel = stride = input / output; others average torch's
    windows (floor(i * H / h) to ceil((i + 1) * H / h), also for an output larger than the input), as
    the products A_h @ x @ A_w^T of fixed averaging matrices (their gradient: matmul's).
    global_avg_pool is output_size 1."""

    attrs = {"output_size": REQUIRED}
    composite = True
    gradgrad = True

    def expand(self, g, x, output_size):
        require_float(x)
        (H, W), (oh, ow) = _spatial(x.type, "input"), _pair(output_size, "output_size")
        if H % oh == 0 and W % ow == 0:
            return g.apply("avg_pool2d", x, kernel=(H // oh, W // ow))
        rows = g.const(_adaptive_windows(H, oh), dtype=x.dtype)
        cols = g.const(_adaptive_windows(W, ow).T, dtype=x.dtype)
        return g.apply("matmul", g.apply("matmul", rows, x), cols)

    def ref(self, attrs, x):
        (oh, ow) = _pair(attrs["output_size"], "output_size")
        H, W = x.shape[2:]
        out = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
        for i in range(oh):
            h0, h1 = i * H // oh, -(-(i + 1) * H // oh)
            for j in range(ow):
                w0, w1 = j * W // ow, -(-(j + 1) * W // ow)
                out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
        return out

    def samples(self, rng):
        n = rng.normal
        return [Sample([n(size=(2, 3, 4, 6))], {"output_size": 2}),  # avg_pool2d, kernel [2, 3]
                Sample([n(size=(1, 2, 6, 6))], {"output_size": (3, 1)}),
                Sample([n(size=(2, 2, 7, 5))], {"output_size": 3}),  # overlapping windows
                Sample([n(size=(1, 2, 5, 4))], {"output_size": (2, 4)}),  # one axis divides, one not
                Sample([n(size=(1, 1, 3, 2))], {"output_size": (5, 3)})]  # larger than the input


# ------------------------------------------------------------------ normalisation
def _per_channel(v, rank):
    """A [C] vector shaped to broadcast against [N, C, ...] of this rank."""
    if rank <= 2:
        return v
    return v.graph.apply("unsqueeze", v, axes=tuple(range(1, rank - 1)))


@op("batch_norm")
class BatchNorm(OpDef):
    """Batch normalisation over axis 1 of x ([N, C] or [N, C, H, W]); gamma, beta,
    running_mean, running_var are [C]. Training graphs normalise with the batch's
    statistics (biased variance) and update the running buffers with momentum
    (the unbiased variance, as PyTorch); eval/infer graphs use the running stats."""

    inputs = ("x", "gamma", "beta", "running_mean", "running_var")
    attrs = {"momentum": 0.1, "eps": 1e-5}
    composite = True
    gradgrad = True

    def expand(self, g, x, gamma, beta, running_mean, running_var, momentum, eps):
        require_float(x)
        _check_norm_numbers("batch_norm", eps, momentum)
        if x.rank < 2:
            raise ShapeError(f"batch_norm needs [N, C, ...], got {fmt_shape(x.shape)}", hint="give it [N, C] or [N, C, H, W]")
        c = x.shape[1]
        for name, v in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
            if tuple(v.shape) != (c,):
                raise ShapeError(f"batch_norm: {name} must be [{c}] (one per channel of {fmt_shape(x.shape)}), got {fmt_shape(v.shape)}", hint=f"give {name} the shape [{c}], one entry per channel")
        axes = (0,) + tuple(range(2, x.rank))
        if g.mode == "train":
            count = 1
            for a in axes:
                count = dim_mul(count, x.shape[a])
            if count == 1:
                raise ShapeError(
                    f"batch_norm: training needs more than one value per channel, got {fmt_shape(x.shape)}",
                    hint="use a batch larger than 1",
                )
            if isinstance(count, str) and "*" not in count:  # one dim alone, such as the batch's N:
                # a batch of one row leaves each channel one value (checked against the data before training)
                g.batch_statistics.append((count, current_loc()))
            mean = g.apply("mean", x, axis=axes)  # [C]
            centered = x - _per_channel(mean, x.rank)
            var = g.apply("mean", centered * centered, axis=axes)  # biased, [C]
            mean_buffer, var_buffer = _graph_input_name(running_mean), _graph_input_name(running_var)
            if mean_buffer and var_buffer and g.scan_step:
                raise ShapeError(
                    "batch_norm: in a scan's step it cannot update its running averages, which would keep their "
                    "initial values (mean 0, variance 1) for evaluation and the exported model",
                    hint="normalise a step with layer_norm (or a cell's layer_norm=true), or apply batch_norm to "
                         "the scan's outputs outside the block")
            if mean_buffer and var_buffer:
                # The averages move in the buffers' own type: in mixed precision the step reads
                # the float32 buffers cast to the half type, and averaging there rounded them to
                # it every step, so that a batch statistic within momentum * half an ulp of the
                # average never moved it (bfloat16 kept running means 5% off the batches').
                stored_mean, stored_var = _stored(running_mean), _stored(running_var)
                # Bessel's n / (n - 1) in float32 at least: a float16 count past 65504 (a batch of
                # 32 images of 64 x 64) was inf, inf / inf NaN, and every running variance NaN
                n = g.apply("numel", x, axis=axes, dtype="float32" if stored_var.dtype in HALF_TYPES else stored_var.dtype)
                unbiased = g.cast(g.apply("stop_gradient", var), stored_var.dtype) * g.cast(n / (n - 1.0), stored_var.dtype)
                # A layer applied more than once in a step (a block called on real and on generated
                # data) moves its averages once per application, each from where the one before
                # left them, as successive calls of a PyTorch module do: every batch counts.
                last_mean = g.buffer_updates.get(mean_buffer, stored_mean)
                last_var = g.buffer_updates.get(var_buffer, stored_var)
                batch_mean = g.cast(g.apply("stop_gradient", mean), stored_mean.dtype)
                g.buffer_updates[mean_buffer] = (1.0 - momentum) * last_mean + momentum * batch_mean
                g.buffer_updates[var_buffer] = (1.0 - momentum) * last_var + momentum * unbiased
                g.running_averages.update((mean_buffer, var_buffer))
        else:
            mean, var = running_mean, running_var
            centered = x - _per_channel(mean, x.rank)
        scale = gamma / g.apply("sqrt", var + eps)
        return centered * _per_channel(scale, x.rank) + _per_channel(beta, x.rank)

    def ref(self, attrs, x, gamma, beta, running_mean, running_var):
        """Training mode (what the op tests build)."""
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        return (x - mean) / np.sqrt(var + attrs["eps"]) * gamma.reshape(shape) + beta.reshape(shape)

    def samples(self, rng):
        def params(c):
            return [rng.uniform(0.5, 1.5, c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2.0, c)]

        return [
            Sample([rng.normal(size=(4, 3))] + params(3), grad_inputs=[0, 1, 2]),
            Sample([rng.normal(size=(2, 3, 3, 2))] + params(3), {"eps": 1e-3}, grad_inputs=[0, 1, 2]),
        ]


@op("layer_norm")
class LayerNorm(OpDef):
    """Layer normalisation over the axes from `axis` (default the last) to the end,
    with elementwise gamma and beta shaped like those axes."""

    inputs = ("x", "gamma", "beta")
    attrs = {"eps": 1e-5, "axis": -1}
    composite = True
    gradgrad = True

    def expand(self, g, x, gamma, beta, eps, axis):
        require_float(x)
        _check_norm_numbers("layer_norm", eps)
        axis = normalize_axis(axis, x.rank)
        norm_shape = tuple(x.shape[axis:])
        for name, v in (("gamma", gamma), ("beta", beta)):
            if tuple(v.shape) != norm_shape:
                raise ShapeError(
                    f"layer_norm: {name} must be {fmt_shape(norm_shape)} (the normalised axes of {fmt_shape(x.shape)}), "
                    f"got {fmt_shape(v.shape)}"
, hint=f"give {name} the shape {fmt_shape(norm_shape)}, the normalised axes of the input")
        axes = tuple(range(axis, x.rank))
        centered = x - g.apply("mean", x, axis=axes, keepdims=True)
        var = g.apply("mean", centered * centered, axis=axes, keepdims=True)
        return centered / g.apply("sqrt", var + eps) * gamma + beta

    def ref(self, attrs, x, gamma, beta):
        axes = tuple(range(attrs["axis"] % x.ndim, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = x.var(axis=axes, keepdims=True)
        return (x - mean) / np.sqrt(var + attrs["eps"]) * gamma + beta

    def samples(self, rng):
        n = rng.normal
        return [
            Sample([n(size=(3, 4)), rng.uniform(0.5, 1.5, 4), n(size=4)]),
            Sample([n(size=(2, 3, 4)), rng.uniform(0.5, 1.5, (3, 4)), n(size=(3, 4))], {"axis": -2, "eps": 1e-3}),
        ]


def _check_norm_numbers(name: str, eps, momentum=None) -> None:
    """eps below 0 takes the square root of a negative variance (NaN), and a momentum outside
    [0, 1] weighs the running averages by a negative factor: both trained without a word."""
    if not eps >= 0:
        raise ShapeError(f"{name}: eps must be 0 or more, got {eps!r}", arg="eps",
                         hint="eps is added to the variance before its square root, e.g. eps=1e-5")
    if momentum is not None and not 0 <= momentum <= 1:
        raise ShapeError(f"{name}: momentum must be in [0, 1], got {momentum!r}", arg="momentum",
                         hint="the weight of each batch in the running averages, e.g. momentum=0.1")


def _stored(v):
    """The graph input that v casts (a buffer read in mixed precision's compute dtype), else v."""
    if v.producer is not None and v.producer.op.name == "cast" and v.producer.inputs[0].producer is None:
        return v.producer.inputs[0]
    return v


def _graph_input_name(v) -> str | None:
    """The name of the graph input that v is, or that v casts (a buffer read in mixed
    precision's compute dtype); None for a computed value."""
    if v.producer is not None and v.producer.op.name == "cast":
        v = v.producer.inputs[0]
    return v.name if v.producer is None else None
