"""Counter-based randomness in standard ONNX ops.

Every random number is a pure function of the graph's int64 control inputs
`seed` and `step`, a per-op `salt` and the element's flat (row-major) index,
so a resumed run replays the same masks and every runtime computes the same
bits. No RandomUniform/RandomNormal/Bernoulli (they keep hidden state) and no
Bitwise ops: only uint32 Add/Mul (which wrap mod 2**32), right shifts (BitShift,
written as exact float64 arithmetic for onnxruntime's CUDA provider, which has
none) and casts.

The hash (this is its specification; `hash_bits` below is the executable one,
and `random_bits` must reproduce it bit for bit). All arithmetic is mod 2**32:

    R(x)   = rot16(x * (2*x + 1))           one round
    rot16(x) = x // 2**16 + x * 2**16       rotate by 16 bits

x -> x * (2x + 1) is a permutation of the 32-bit integers (RC6's quadratic
function; the product is non-linear in both the additive and the bitwise
sense, which is what xor-shift gives other hashes and what add/shift/multiply
alone cannot), but its bit k depends only on bits 0..k of x; the rotation
brings the well-mixed high half down for the next round. Three rounds reach
full avalanche (each input bit flips each output bit with probability 0.5 +-
0.005, the sampling noise); two do not.

    seed_lo = seed mod 2**32, seed_hi = floor(seed / 2**32) mod 2**32
    base    = R(R(R(R(seed_lo + 0x6A09E667) + seed_hi) + (step mod 2**32)))
    key     = base + salt * 0x9E3779B9
    bits[i] = R(R(R(i + key) + key + 0x85EBCA6B) + key + 2 * 0x85EBCA6B)

`base` is computed once per model on scalars. Keying every element round
(with distinct round offsets) means two streams are never shifted copies of
each other: a different seed, step or salt changes all three round keys.
Each stream is a permutation of the indices, so no two elements of one
tensor (of fewer than 2**32 elements) share their 32 bits. Steps count mod 2**32.

Floats take the top bits: float32 24, float16 11, float64 32 (u = top * 2**-bits,
exact, in [0, 1)).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from spec.errors import ShapeError, SpecError

from ..ir import TensorType, Value, _float_scalar, current_loc, is_float, is_static
from ..registry import REQUIRED, OpDef, Sample, op
from .elementwise import emit_u32_shift_right

GOLDEN = 0x9E3779B9  # salt multiplier: floor(2**32 / golden ratio), odd
ROUND = 0x85EBCA6B  # offset between the three element round keys
SEED_OFFSET = 0x6A09E667
MANTISSA_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 32}


def draw_dtype(dtype: str) -> str:
    """The type normal() and bernoulli() draw in: float32 for the half types, whose 8 or 11
    random bits would cap |z| at 3.3 (bfloat16) or 3.9 (float16) and shrink the variance, and
    round a probability to a multiple of 2^-8 or 2^-11; the result is then cast to the half type."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype
U32 = np.uint32


# ------------------------------------------------------------------ the specification, in NumPy
def _round_np(x):
    x = x * (x + x + U32(1))
    return x // U32(1 << 16) + x * U32(1 << 16)


def base_key(seed: int, step: int) -> np.uint32:
    """The per-(seed, step) key all random ops of one step derive theirs from."""
    seed, step = int(seed), int(step)
    lo = U32(seed % 2**32)
    hi = U32((seed // 2**32) % 2**32)
    with np.errstate(over="ignore"):
        h = _round_np(lo + U32(SEED_OFFSET))
        h = _round_np(h + hi)
        h = _round_np(h + U32(step % 2**32))
        return _round_np(h)


def op_key(seed: int, step: int, salt: int) -> np.uint32:
    with np.errstate(over="ignore"):
        return base_key(seed, step) + U32((salt * GOLDEN) % 2**32)


def hash_bits(seed: int, step: int, salt: int, shape, pairs: bool = False) -> np.ndarray:
    """uint32 random bits for a tensor of `shape`: the reference for random_bits. With
    `pairs`, one hash serves two entries: entry 2j holds hash j and entry 2j + 1 the same
    hash shifted up by 16 bits, so each entry's top 16 bits are an independent draw."""
    shape = tuple(int(d) for d in shape)
    n = int(np.prod(shape, dtype=np.int64))
    k = op_key(seed, step, salt)
    x = (np.arange((n + 1) // 2 if pairs else n, dtype=np.int64) % 2**32).astype(U32)
    with np.errstate(over="ignore"):
        for r in range(3):
            x = _round_np(x + (k + U32((r * ROUND) % 2**32)))
        if pairs:
            x = np.stack([x, x * U32(1 << 16)], axis=-1).reshape(-1)[:n]
    return x.reshape(shape)


def bits_to_unit(bits: np.ndarray, dtype: str, open_low: bool = False) -> np.ndarray:
    """Uniform floats in [0, 1) from the top mantissa bits (in (0, 1] with open_low)."""
    m = MANTISSA_BITS[dtype]
    top = bits // U32(1 << (32 - m)) if m < 32 else bits
    v = top.astype(dtype)
    if open_low:
        v = v + np.asarray(1, dtype)
    return v * np.asarray(2.0**-m, dtype)


def _float_dtype_for(like_dtype: str, graph_dtype: str) -> str:
    return like_dtype if is_float(like_dtype) else graph_dtype


# ------------------------------------------------------------------ the primitive
def _emit_round(e, x: str) -> str:
    u = lambda v: e.const(np.asarray(v, dtype=U32))  # noqa: E731
    t = e.add("Add", [e.add("Add", [x, x]), u(1)])
    p = e.add("Mul", [x, t])
    return e.add("Add", [emit_u32_shift_right(e, p, 16), e.add("Mul", [p, u(1 << 16)])])


def _emit_base_key(e, seed: str, step: str) -> str:
    """base_key in ONNX, emitted once per (seed, step) pair and model."""
    cache = e.__dict__.setdefault("_random_base_keys", {})
    if (seed, step) in cache:
        return cache[(seed, step)]
    u = lambda v: e.const(np.asarray(v, dtype=U32))  # noqa: E731
    two32 = e.const(np.asarray(2**32, dtype=np.int64))
    lo = e.add("Cast", [seed], to=TensorProto.UINT32)  # wraps: the low 32 bits
    below = e.add("Mod", [seed, two32])  # in [0, 2**32): the sign follows the divisor
    hi = e.add("Cast", [e.add("Div", [e.add("Sub", [seed, below]), two32])], to=TensorProto.UINT32)
    h = _emit_round(e, e.add("Add", [lo, u(SEED_OFFSET)]))
    h = _emit_round(e, e.add("Add", [h, hi]))
    h = _emit_round(e, e.add("Add", [h, e.add("Cast", [step], to=TensorProto.UINT32)]))
    h = _emit_round(e, h)
    cache[(seed, step)] = h
    return h


def _scalar_int(t: TensorType, what: str):
    if t.dtype != "int64" or t.rank != 0:
        raise ShapeError(f"{what} must be an int64 scalar, got {t}", hint=f"pass {what} as an int64 scalar input (shape [], dtype int64)")


@op("random_bits")
class RandomBits(OpDef):
    """uint32 random bits shaped like `like`: a pure function of the int64
    scalars seed and step, the op's `salt` and each element's flat index
    (the hash in compiler/ops/random.py). Values of `like` are not used.
    With a tuple of salts the result has one row per salt, [S, *like.shape]:
    the same bits as S separate draws, in one evaluation of the hash."""

    internal = True
    inputs = ("seed", "step", "like")
    attrs = {"salt": REQUIRED, "pairs": False}
    nondiff = True

    def infer(self, attrs, seed, step, like):
        _scalar_int(seed, "seed")
        _scalar_int(step, "step")
        salts = attrs["salt"] if isinstance(attrs["salt"], tuple) else (attrs["salt"],)
        if not salts or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in salts):
            raise ShapeError(f"salt must be an int or a tuple of them, got {attrs['salt']!r}", hint="write salt as an integer, e.g. salt=1")
        rows = (len(salts),) if isinstance(attrs["salt"], tuple) else ()
        return [TensorType("uint32", rows + tuple(like.shape))]

    def emit(self, e, node, ins, outs):
        like = node.inputs[2]
        u = lambda v: e.const(np.asarray(v, dtype=U32))  # noqa: E731
        i64 = lambda v: e.const(np.asarray(v, dtype=np.int64))  # noqa: E731
        salt = node.attrs["salt"]
        rows = isinstance(salt, tuple)
        offsets = np.asarray([(int(v) * GOLDEN) % 2**32 for v in (salt if rows else (salt,))], dtype=U32)
        # one key per row ([S, 1]), broadcast over the element indices
        key = e.add("Add", [_emit_base_key(e, ins[0], ins[1]), u(offsets.reshape(-1, 1) if rows else offsets[0])])
        lead = [len(salt)] if rows else []
        pairs = bool(node.attrs["pairs"])
        if is_static(like.shape):
            size = int(np.prod(like.shape, dtype=np.int64))
            n, count = i64(size), i64((size + 1) // 2 if pairs else size)
            shape = e.ints(lead + list(like.shape))
        else:
            like_shape = e.add("Shape", [ins[2]])
            n = count = e.add("ReduceProd", [like_shape], keepdims=0)
            if pairs:
                count = e.add("Div", [e.add("Add", [n, i64(1)]), i64(2)])
            shape = e.add("Concat", [e.ints(lead), like_shape], axis=0) if rows else like_shape
        x = e.add("Cast", [e.add("Range", [i64(0), count, i64(1)])], to=TensorProto.UINT32)
        for r in range(3):
            k = key if r == 0 else e.add("Add", [key, u((r * ROUND) % 2**32)])
            x = _emit_round(e, e.add("Add", [x, k]))
        if pairs:  # entries 2j and 2j + 1: the hash, and the hash shifted up by 16 bits
            shifted = e.add("Mul", [x, u(1 << 16)])
            x = e.add("Reshape", [e.add("Concat", [e.add("Unsqueeze", [x, e.ints([-1])]),
                                                   e.add("Unsqueeze", [shifted, e.ints([-1])])], axis=-1),
                                  e.ints(lead + [-1])])
            if not any(isinstance(d, int) and d % 2 == 0 for d in like.shape):  # maybe odd: one too many
                x = e.add("Slice", [x, e.ints([0]), e.add("Reshape", [n, e.ints([1])]), e.ints([-1])])
        e.add("Reshape", [x, shape], outs)

    def ref(self, attrs, seed, step, like):
        salt, pairs = attrs["salt"], bool(attrs["pairs"])
        if isinstance(salt, tuple):
            return np.stack([hash_bits(int(seed), int(step), int(v), like.shape, pairs) for v in salt])
        return hash_bits(int(seed), int(step), int(salt), like.shape, pairs)

    def samples(self, rng):
        s = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
        return [
            Sample([s(0), s(0), np.zeros((3, 4))], {"salt": 1}),
            Sample([s(12345), s(7), np.zeros((2, 3, 5))], {"salt": 3}),
            Sample([s(-1), s(2**40 + 3), np.zeros(())], {"salt": 0}),
            Sample([s(2**62 + 17), s(1), np.zeros((7,), dtype=np.int64)], {"salt": 2**40}),
            Sample([s(5), s(9), np.zeros((3, 4))], {"salt": 6, "pairs": True}),
            Sample([s(5), s(9), np.zeros((3, 5))], {"salt": 6, "pairs": True}),  # an odd count
            # several draws at once: rows equal to the separate draws
            Sample([s(8), s(2), np.zeros((2, 3))], {"salt": (4, 5, 9)}),
            Sample([s(8), s(2), np.zeros((3, 5))], {"salt": (1, 2), "pairs": True}),
            Sample([s(8), s(2), np.zeros(())], {"salt": (7, 3)}),
        ]


# ------------------------------------------------------------------ composites
def _rng_sample(rng, shape, salt, attrs=None, like=None):
    s = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    like = np.zeros(shape) if like is None else like
    return Sample([like, s(rng.integers(0, 2**31)), s(rng.integers(0, 1000))], dict(attrs or {}, salt=salt),
                  grad_inputs=[])


class RandomComposite(OpDef):
    """A composite drawing random numbers. The spec writes op(x, ...): seed and
    step are then the graph's control inputs (g.rng_inputs()) and salt the next
    g.random_salt(). Two trailing tensor inputs (seed, step) and an explicit
    salt may be given instead (tests, or a caller owning its own stream)."""

    inputs = ("like",)
    composite = True
    n_salts = 1
    # a spec's salt could repeat one the graph hands out (two dropouts, one mask)
    internal_attrs = ("salt",)

    def build(self, g, inputs, attrs):
        attrs = self.bind_attrs(attrs)
        inputs = [x if isinstance(x, Value) else g.lift(x) for x in inputs]
        n = len(self.inputs)
        if len(inputs) not in (n, n + 2):
            raise SpecError(f"{self.name}() takes {n} tensor argument(s) ({', '.join(self.inputs)}), got {len(inputs)}",
                            current_loc(), hint=f"usage: {self.usage()}")
        salt = attrs.pop("salt")
        if salt is None:
            salt = g.random_salt()
            for _ in range(self.n_salts - 1):
                g.random_salt()  # reserve salt + 1, ...
        rng = inputs[n:] or None
        return self.expand(g, *inputs[:n], rng=rng, salt=int(salt), **attrs)

    def bits(self, g, like, rng, salt, pairs=False):
        seed, step = rng if rng else g.rng_inputs()
        return g.apply("random_bits", seed, step, like, salt=salt, pairs=pairs)

    def unit(self, g, like, rng, salt, dtype, open_low=False):
        """Uniform in [0, 1) (or (0, 1] with open_low) of dtype, shaped like `like`."""
        m = MANTISSA_BITS[dtype]
        bits = self.bits(g, like, rng, salt)
        if m < 32:
            bits = g.apply("div", bits, g.const(np.asarray(1 << (32 - m), dtype=U32)))
        v = g.cast(bits, dtype)
        if open_low:
            v = v + g.const(np.asarray(1, dtype=dtype))
        return v * g.const(np.asarray(2.0**-m, dtype=dtype))

    @staticmethod
    def ref_args(attrs, seed, step):
        return int(seed), int(step), 1 if attrs["salt"] is None else int(attrs["salt"])


def setting(value: float, dtype: str, arg: str, g) -> np.ndarray:
    """An op's float setting (normal's mean, gaussian_noise's sigma) as a `dtype` scalar of graph g:
    one beyond the type's range is refused as the spec's other numbers are, at its keyword (arg)."""
    try:
        return _float_scalar(float(value), dtype, g)
    except ShapeError as err:
        err.arg = arg
        raise


def _wider(dtype: str, g) -> str | None:
    """The compile float type that holds more than `dtype`, where `dtype` is the graph's own."""
    return {"float32": "float64", "float16": "float32"}.get(dtype) if dtype == g.float_dtype else None


def _below(high: float, low: float, dtype: str) -> np.ndarray:
    """The largest value of dtype below high (not below low): uniform's upper bound."""
    hi, lo = np.asarray(high, dtype=dtype), np.asarray(low, dtype=dtype)
    return np.maximum(np.nextafter(hi, np.asarray(-np.inf, dtype=dtype)), lo)


@op("uniform")
class Uniform(RandomComposite):
    """Uniform random numbers in [low, high) shaped like `like` (values unused),
    in like's float dtype (else the graph's), from 24 random bits for float32. u * (high -
    low) + low can round up to high (low=1, high=2: 1 + (1 - 2^-11) is 2 in float16): such
    draws take the largest value below high instead."""

    attrs = {"low": 0.0, "high": 1.0, "salt": None}

    def expand(self, g, like, rng, salt, low, high):
        if not low < high:
            raise SpecError(f"uniform needs low < high, got low={low}, high={high}", current_loc(), hint="give a low below high, e.g. low=0, high=1")
        dtype = _float_dtype_for(like.dtype, g.float_dtype)
        u = self.unit(g, like, rng, salt, dtype)
        if (low, high) != (0.0, 1.0):
            # bounds beyond the float type's range are refused, as the spec's numbers are (they were inf)
            lo, _ = g.const(setting(low, dtype, "low", g)), setting(high, dtype, "high", g)
            try:
                width = g.const(float(high - low), dtype)
            except ShapeError:  # (each bound fits: it was 'the number 6e+38', which the spec never wrote)
                raise ShapeError(f"uniform's bounds low={low:g} and high={high:g} are {high - low:g} apart, beyond "
                                 f"the range of {dtype} (up to {float(np.finfo(dtype).max):.4g})", current_loc(),
                                 hint="draw from narrower bounds" + (f", or compile with train.dtype {wider} (--dtype {wider}; "
                                 f'dtype="{wider}" in the Python API)' if (wider := _wider(dtype, g)) else "")) from None
            u = u * width + lo
            u = g.apply("minimum", u, g.const(_below(high, low, dtype)))
        return u

    def ref(self, attrs, like, seed, step):
        seed, step, salt = self.ref_args(attrs, seed, step)
        dtype = _float_dtype_for(like.dtype.name, "float64")
        u = bits_to_unit(hash_bits(seed, step, salt, like.shape), dtype)
        if (attrs["low"], attrs["high"]) != (0.0, 1.0):
            u = u * np.asarray(attrs["high"] - attrs["low"], dtype) + np.asarray(attrs["low"], dtype)
            u = np.minimum(u, _below(attrs["high"], attrs["low"], dtype))
        return u

    def samples(self, rng):
        return [_rng_sample(rng, (3, 4), 1), _rng_sample(rng, (2, 5), 4, {"low": -2.0, "high": 3.0}),
                _rng_sample(rng, (3, 4), 2, {"low": 1.0, "high": 2.0}),
                _rng_sample(rng, (6,), 2, like=np.zeros(6, dtype=np.float32))]


@op("box_muller")
class BoxMuller(OpDef):
    """sqrt(-2 log u1) * cos(2 pi u2): a standard normal from two uniforms,
    u1 in (0, 1] and u2 in [0, 1) (no gradient; the step behind normal())."""

    internal = True
    inputs = ("u1", "u2")
    nondiff = True
    tol = {"forward": 1e-6}

    def infer(self, attrs, u1, u2):
        if not is_float(u1.dtype) or u1 != u2:
            raise ShapeError(f"box_muller needs two float tensors of one type, got {u1} and {u2}", hint="give two float tensors of one shape and dtype")
        return [u1]

    def emit(self, e, node, ins, outs):
        dt = node.inputs[0].dtype
        c = lambda v: e.const(np.asarray(v, dtype=dt))  # noqa: E731
        r = e.add("Sqrt", [e.add("Mul", [e.add("Log", [ins[0]]), c(-2.0)])])
        e.add("Mul", [r, e.add("Cos", [e.add("Mul", [ins[1], c(2 * np.pi)])])], outs)

    def ref(self, attrs, u1, u2):
        dt = u1.dtype
        return np.sqrt(np.log(u1) * np.asarray(-2.0, dt)) * np.cos(u2 * np.asarray(2 * np.pi, dt))

    def samples(self, rng):
        return [Sample([rng.uniform(1e-3, 1, (3, 4)), rng.uniform(0, 1, (3, 4))]),
                Sample([np.array([1.0, 2.0**-24, 0.5]), np.array([0.0, 0.25, 0.999])])]


@op("normal")
class Normal(RandomComposite):
    """Normal random numbers (mean, std) shaped like `like`, by Box-Muller from
    two uniform streams (salts salt and salt + 1): sqrt(-2 log u1) cos(2 pi u2)
    with u1 in (0, 1], so log never sees 0."""

    attrs = {"mean": 0.0, "std": 1.0, "salt": None}
    n_salts = 2
    tol = {"forward": 1e-6}

    def expand(self, g, like, rng, salt, mean, std):
        if not std >= 0:
            raise SpecError(f"normal needs std >= 0, got {std}", current_loc(), hint="use a std of 0 or more, e.g. std=1")
        dtype = _float_dtype_for(like.dtype, g.float_dtype)
        work = draw_dtype(dtype)
        c = lambda v, arg: g.const(setting(v, work, arg, g))  # noqa: E731  (a mean beyond the type's range is refused)
        if work != dtype:  # drawn in float32, then cast: a float16 mean=1e5 was inf, without a word
            for v, arg in ((std, "std"), (mean, "mean")):
                setting(v, dtype, arg, g)
        u1 = self.unit(g, like, rng, salt, work, open_low=True)
        u2 = self.unit(g, like, rng, salt + 1, work)
        z = g.apply("box_muller", u1, u2)
        if (mean, std) != (0.0, 1.0):
            z = z * c(std, "std") + c(mean, "mean")
        return z if work == dtype else g.cast(z, dtype)

    def ref(self, attrs, like, seed, step):
        seed, step, salt = self.ref_args(attrs, seed, step)
        dtype = _float_dtype_for(like.dtype.name, "float64")
        work = draw_dtype(dtype)
        u1 = bits_to_unit(hash_bits(seed, step, salt, like.shape), work, open_low=True)
        u2 = bits_to_unit(hash_bits(seed, step, salt + 1, like.shape), work)
        z = BoxMuller.ref(None, {}, u1, u2)
        if (attrs["mean"], attrs["std"]) != (0.0, 1.0):
            z = z * np.asarray(attrs["std"], work) + np.asarray(attrs["mean"], work)
        return z.astype(dtype)

    def samples(self, rng):
        return [_rng_sample(rng, (3, 4), 1), _rng_sample(rng, (5,), 7, {"mean": 1.0, "std": 0.5})]


@op("bernoulli")
class Bernoulli(RandomComposite):
    """1 with probability p, else 0, shaped like `like`, in like's float dtype (else the graph's).
    The half types draw and compare in float32: their own 11 (float16) or 8 (bfloat16) random
    bits, against p rounded to the half type, made every p a multiple of 2^-11 or 2^-8
    (p = 65535/65536 drew only ones)."""

    attrs = {"p": 0.5, "salt": None}

    def expand(self, g, like, rng, salt, p):
        if not 0.0 <= p <= 1.0:
            raise SpecError(f"bernoulli needs a probability p in [0, 1], got {p}", current_loc(), hint="use a probability from 0 to 1, e.g. p=0.5")
        dtype = _float_dtype_for(like.dtype, g.float_dtype)
        work = draw_dtype(dtype)
        hit = g.apply("lt", self.unit(g, like, rng, salt, work), g.const(np.asarray(p, dtype=work)))
        return g.cast(hit, dtype)

    def ref(self, attrs, like, seed, step):
        seed, step, salt = self.ref_args(attrs, seed, step)
        dtype = _float_dtype_for(like.dtype.name, "float64")
        work = draw_dtype(dtype)
        u = bits_to_unit(hash_bits(seed, step, salt, like.shape), work)
        return (u < np.asarray(attrs["p"], work)).astype(dtype)

    def samples(self, rng):
        return [_rng_sample(rng, (4, 5), 1), _rng_sample(rng, (10,), 3, {"p": 0.2})]


def _dropout_threshold(rate: float) -> int:
    return int(np.ceil(rate * 65536.0))


@op("dropout")
class Dropout(RandomComposite):
    """In train mode, each entry of x is zeroed with probability `rate` (to 16 bits:
    ceil(rate * 2^16) / 2^16) and the rest scaled by 1 / (1 - rate); in eval and
    infer mode, x unchanged. The mask compares 16 random bits per entry (random_bits
    with pairs: one hash for two entries) and is a function of (seed, step, salt):
    replayable."""

    inputs = ("x",)
    attrs = {"rate": 0.5, "salt": None}
    gradgrad = True

    def expand(self, g, x, rng, salt, rate):
        if not 0.0 <= rate <= 1.0:
            raise SpecError(f"dropout rate must be in [0, 1], got {rate}", current_loc(), arg="rate",
                            hint="use a rate from 0 to 1, e.g. dropout(x, rate=0.5)")
        if not is_float(x.dtype):
            raise ShapeError(f"dropout needs a float tensor, got {x.dtype}", hint="cast it with cast(x, 'float32')")
        if g.mode != "train" or rate == 0.0:
            return x
        zero = g.const(np.asarray(0, dtype=x.dtype))
        if rate == 1.0:
            return x * zero
        # 16 bits per entry (half the hashing of 32): the entry is dropped when its top
        # 16 bits are below k = ceil(rate * 2^16).
        k = _dropout_threshold(rate)
        if k >= 1 << 16:
            return x * zero
        keep = g.apply("ge", self.bits(g, x, rng, salt, pairs=True), g.const(np.asarray(k << 16, dtype=U32)))
        # x times a 0 / 1/(1-rate) mask (as PyTorch's dropout): the backward pass multiplies by the same
        # mask, and onnxruntime runs Mul at several times the speed of Where.
        scale = 1.0 / (1.0 - rate)
        with np.errstate(over="ignore"):
            representable = np.isfinite(np.asarray(scale, dtype=x.dtype))
        if not representable:
            # beyond float16's 65504 (rate above 1 - 2**-16): the mask was 0 * inf = NaN at every
            # dropped entry; the product runs in float32, and only a kept value too large to hold overflows
            mask = g.cast(keep, "float32") * g.const(np.asarray(scale, dtype=np.float32))
            return g.cast(g.cast(x, "float32") * mask, x.dtype)
        mask = g.cast(keep, x.dtype) * g.const(np.asarray(scale, dtype=x.dtype))
        return x * mask

    def ref(self, attrs, x, seed, step):
        seed, step, salt = self.ref_args(attrs, seed, step)
        rate = attrs["rate"]
        if rate == 0.0:
            return x
        k = _dropout_threshold(rate)
        if k >= 1 << 16:
            return x * 0
        top = hash_bits(seed, step, salt, x.shape, pairs=True) // U32(1 << 16)
        work = x.dtype if np.isfinite(np.asarray(1.0 / (1.0 - rate), x.dtype)) else np.float32
        return (x.astype(work) * ((top >= k).astype(work) * np.asarray(1.0 / (1.0 - rate), work))).astype(x.dtype)

    def samples(self, rng):
        s = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
        n = rng.normal
        return [
            Sample([n(size=(4, 5)), s(3), s(11)], {"salt": 1}, grad_inputs=[0]),
            Sample([n(size=(10,)), s(0), s(0)], {"rate": 0.2, "salt": 5}, grad_inputs=[0]),
            Sample([n(size=(3,)), s(0), s(0)], {"rate": 0.0, "salt": 1}, grad_inputs=[0]),
        ]
