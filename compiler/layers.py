"""Layer shorthands: calls in a spec that create their own named parameters.

`h: dense(x, H, act=relu)` makes the parameters `h.W` and `h.b`; passing
`W=...` / `b=...` uses given tensors instead (weight tying). The layer calls of
one entry are counted in the order they are computed, a layer's arguments before
it: the first takes the entry's name, the k-th a numbered prefix (`h.dense2.W`),
so `h: rnn(embedding(x, V, E), H)` makes h.W (the table) and h.rnn2.* (README,
"Layer parameters are named after their graph entry"). Checkpoints depend on it.
"""
from __future__ import annotations

import numpy as np

from spec.errors import ShapeError, SpecError

from .init import bias_init
from .ir import Value, at, fmt_shape, is_float, normalize_axis


def _int_arg(v, what, loc, op: str):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        hint = f"write {what} as a whole number of 1 or more, e.g. {2 if what == 'layers' else 64}"
        if isinstance(v, float) and v.is_integer() and v >= 1:
            # H / 2 in an expression is a float, and // is not written there: a dim is (dims: {H2: H/2})
            hint = (f"/ in an expression gives a float ({int(v)}.0): name the size under dims:, "
                    f"e.g. dims: {{H2: H/2}}, and write {what} as H2")
        raise SpecError(f"{op}: {what} must be a positive integer, got {v!r}", loc, hint)
    return v


def _init(v, default: str, default_args: dict | None = None, loc=None) -> tuple[str, dict]:
    """An init= argument: the name of an initialiser (`he_normal`), which takes no settings here (an
    expression cannot hold a mapping such as `{normal: {std: 0.1}}`: an initialiser with settings is
    declared on a parameter under params:, and given to the layer as W=)."""
    from spec.loader import init_hint

    from .init import INITS

    if v is None:
        return default, dict(default_args or {})
    if isinstance(v, str) and v in INITS:
        return v, {}
    close = init_hint(v) if isinstance(v, str) else None
    raise SpecError(f"unknown initialiser {v!r}", loc, close or f"choose one of {', '.join(INITS)}")


def _check_given_weight(layer: str, W, want: tuple, e, sizes: str) -> None:
    """A weight given as W= against the shape the call's own sizes make it (`sizes`: those
    arguments, named): the sizes were dropped without a word, so that dense(h, 24,
    W=transpose(E.W), bias=false) made 97 units where the spec says 24."""
    loc = e.kwarg_locs.get("W", e.loc)
    if not isinstance(W, Value):
        raise SpecError(f"{layer}(): W= must be a tensor, got {W!r}", loc, "give a parameter or an expression, e.g. W=transpose(e.W)")
    clash = W.rank != len(want) or any(isinstance(w, int) and isinstance(d, int) and w != d for w, d in zip(want, W.shape))
    if not clash:
        return
    if W.rank == 2 == len(want) and not any(isinstance(w, int) and isinstance(d, int) and w != d
                                             for w, d in zip(want, reversed(W.shape))):
        hint = "it is that weight transposed: wrap it in transpose(...), as a tied layer does (W=transpose(h.W))"
    else:
        hint = f"give W= a tensor {fmt_shape(want)}, or write sizes in the call that fit W="
    raise ShapeError(f"{layer}(): W= is {fmt_shape(W.shape)}, but {sizes} make its weight {fmt_shape(want)}", loc, hint)


def _check_given_bias(layer: str, b, units: int, e, sizes: str) -> None:
    """A bias given as b= against the [units] the call makes its bias: a wrong one was a generic
    'add: shapes ... do not broadcast', or broadcast into a bias of other units."""
    loc = e.kwarg_locs.get("b", e.loc)
    if not isinstance(b, Value):
        raise SpecError(f"{layer}(): b= must be a tensor, got {b!r}", loc, "give a parameter or an expression, e.g. b=h.b")
    if b.rank != 1 or (isinstance(b.shape[0], int) and b.shape[0] != units):
        raise ShapeError(f"{layer}(): b= is {fmt_shape(b.shape)}, but {sizes} make its bias [{units}]", loc,
                         f"give b= a tensor [{units}], or write sizes in the call that fit b=")


def _refuse_init_with_weight(layer: str, W, a: dict, e) -> None:
    """init= initialises the weight a layer makes: with W= given there is none, and init= was dropped."""
    if W is not None and a.get("init") is not None:
        raise SpecError(f"{layer}() takes init= for the weight it makes, not with W=", e.kwarg_locs.get("init", e.loc),
                        f"leave out init=, or W= to let {layer} make its weight")


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class Layer:
    name = ""
    # keyword arguments the shorthand accepts (besides its positional ones)
    keywords: tuple = ()
    positional: tuple = ()

    def applies(self, args, kwargs) -> bool:
        return True

    def bind(self, e, args, kwargs) -> dict:
        """The call's arguments by parameter name, bound as Python binds them (compiler/binding.py)."""
        from .binding import Params, bind

        bound, _ = bind(Params(f"{self.name}()", positional=self.positional, keyword_only=self.keywords,
                               required=self.required, usage=self.usage), e, args, kwargs)
        if "bias" in bound and not isinstance(bound["bias"], bool):  # bias="false" would read as true
            raise SpecError(f"bias must be true or false, got {bound['bias']!r}", e.kwarg_locs.get("bias", e.loc),
                            "write bias=true or bias=false, without quotes")
        return bound

    required: tuple = ()
    usage = ""
    doc = ""  # what `flowgrad ops` says of the shorthand: what it computes, the parameters it makes

    def activate(self, low, y, act, e):
        if act is None:
            return y
        from spec import model as S

        if isinstance(act, S.Call):  # act=gelu(approximate='tanh'): an op of one tensor with its options
            from .registry import all_ops

            op = all_ops()[act.func]
            if op.variadic or len(op.inputs) != 1:
                n = "several" if op.variadic else len(op.inputs) or "none"  # (fill said 'takes 1', constant 'several')
                raise SpecError(f"act= applies an op of one tensor, and {act.func} takes {n}",
                                e.kwarg_locs.get("act", e.loc), "apply it to this layer's output instead")
            return low.apply_op(op, act, [y], low._eval_kwargs(act))
        if not isinstance(act, str):
            raise SpecError(f"act must name an op such as relu, got {act!r}", e.kwarg_locs.get("act", e.loc),
                            "write the op's name without quotes, e.g. act=relu or act=tanh; `flowgrad ops` lists them")
        from .registry import all_ops, op_hint

        ops = all_ops()  # (an op, not a layer: act=dense said "unknown op 'dense'", and suggested 'dense')
        if act not in ops:
            loc = e.kwarg_locs.get("act", e.loc)
            if act in LAYERS:
                raise SpecError(f"act= applies an op to the output, and {act} is a layer", loc,
                                f"apply {act}(...) to this layer's output instead; act= takes an op such as relu")
            if act in low.spec.blocks:  # (it was an unknown op, with ops of a similar name as the hint)
                raise SpecError(f"act= applies an op to the output, and {act} is a block", loc,
                                f"call {act}(...) on this layer's output instead; act= takes an op such as relu")
            raise SpecError(f"unknown op {act!r}", loc, op_hint(act, ops) or "run 'flowgrad ops' to list the ops")
        return low.graph.apply(act, y)


class Dense(Layer):
    name = "dense"
    doc = "x @ W + b over x's last axis, making NAME.W [in, units] and NAME.b [units]; act= applies an op after."
    positional = ("x", "units")
    keywords = ("act", "bias", "init", "W", "b")
    required = ("x", "units")
    usage = "dense(x, units, act=relu (default: none), bias=true, init=glorot_uniform (torch_uniform: W and b as nn.Linear), W=..., b=...)"

    def __call__(self, low, e, args, kwargs):
        a = self.bind(e, args, kwargs)
        x = a["x"]
        if not isinstance(x, Value):
            raise SpecError(f"dense() needs a tensor input, got {x!r}", e.loc, f"usage: {self.usage}")
        units = _int_arg(a["units"], "units", _arg_loc(e, "units", 1), "dense")
        if x.rank < 1:
            raise ShapeError(f"dense() needs an input of rank >= 1, got the scalar {x.type}", e.loc,
                             "dense maps the last axis: give it features [D] or a batch [N, D]")
        if not is_float(x.dtype):  # (it said 'matmul: left operand of @ must be a float tensor', ops never written)
            raise ShapeError(f"dense() maps float features, and its input is {x.type}", _arg_loc(e, "x", 0),
                             "token or class ids are looked up with embedding(x, V, E) first; numbers stored as "
                             "integers are cast(x, 'float32')")
        prefix = low.layer_name("dense")
        W = a.get("W")
        # a given W takes no init, and no bias takes no b: each would be dropped without a word
        _refuse_init_with_weight("dense", W, a, e)
        kind = None  # (the weight's initialiser, which picks the bias's: bias_init)
        if a.get("bias", True) is False and a.get("b") is not None:
            raise SpecError("dense() got b= and bias=false", e.kwarg_locs.get("b", e.loc), "leave out one of the two")
        if W is None:
            kind, args_ = _init(a.get("init"), "glorot_uniform", loc=e.kwarg_locs.get("init"))
            W = low.add_param(f"{prefix}.W", (x.shape[-1], units), kind, args_, loc=e.loc)
        else:
            _check_given_weight("dense", W, (x.shape[-1], units), e, f"its input's {x.shape[-1]} features and units={units}")
        y = low.graph.apply("matmul", x, W)
        if a.get("bias", True):
            b = a.get("b")
            if b is None:
                b = low.add_param(f"{prefix}.b", (units,), *bias_init(kind, W.shape), loc=e.loc)
            else:
                _check_given_bias("dense", b, units, e, f"units={units}")
            y = y + b
        return self.activate(low, y, a.get("act"), e)


class Conv2d(Layer):
    name = "conv2d"
    doc = ("2-D convolution of x [N, C, H, W], making NAME.W [channels, C / groups, kh, kw] and NAME.b "
           "[channels]; with tensors W (and b) given, the convolution by them.")
    positional = ("x", "channels", "kernel")
    keywords = ("stride", "padding", "dilation", "groups", "act", "bias", "init", "W", "b")
    required = ("x", "channels", "kernel")
    usage = ("conv2d(x, channels, kernel, stride=1, padding=0, dilation=1, groups=1, act=relu (default: none), "
             "bias=true, init=he_uniform (torch_uniform: W and b as nn.Conv2d), W=..., b=...) or conv2d(x, W, b, stride=1, padding=0, dilation=1, "
             "groups=1, act=...)")
    # what conv2d(x, W[, b]) with explicit tensors takes besides them
    raw_keywords = ("stride", "padding", "dilation", "groups", "act")

    def __call__(self, low, e, args, kwargs):
        if len(args) >= 2 and isinstance(args[1], Value):
            # conv2d(x, W[, b]) with explicit tensors: the raw op plus a bias.
            x, W = args[0], args[1]
            for k in kwargs:  # bias=, init=, W=, b= were dropped without a word: the tensors are given
                if k not in self.raw_keywords:
                    from spec.errors import did_you_mean

                    raise SpecError(f"conv2d(x, W{', b' if len(args) > 2 else ''}) with tensors has no argument {k!r}",
                                    e.kwarg_locs.get(k, e.loc),
                                    did_you_mean(k, self.raw_keywords)
                                    or f"it takes {', '.join(self.raw_keywords)}; pass a bias tensor as its third argument"
                                       " (or leave it out)")
            if len(args) > 3:  # (located at the first argument too many, as binding locates one)
                raise SpecError(f"conv2d(x, W, b) takes 3 tensors, got {len(args)} arguments", e.args[3].loc,
                                f"usage: {self.usage}")
            y = self._conv(low, e, x, W, {k: v for k, v in kwargs.items() if k in ("stride", "padding", "dilation", "groups")})
            if len(args) > 2:
                y = y + low.graph.apply("reshape", args[2], shape=(-1, 1, 1))
            return self.activate(low, y, kwargs.get("act"), e)
        a = self.bind(e, args, kwargs)
        x = a["x"]
        if not isinstance(x, Value) or x.rank != 4:
            got = x.type if isinstance(x, Value) else repr(x)
            raise ShapeError(f"conv2d() needs an NCHW input of rank 4, got {got}", e.kwarg_locs.get("x") or (e.args[0].loc if e.args else e.loc),
                             "reshape it to [N, C, H, W] first" if isinstance(x, Value)
                             else f"pass a tensor [N, C, H, W] as the first argument; usage: {self.usage}")
        channels = _int_arg(a["channels"], "channels", _arg_loc(e, "channels", 1), "conv2d")
        kernel = _pair(a["kernel"])
        if len(kernel) != 2 or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in kernel):
            raise SpecError(f"conv2d: kernel must be a positive integer or a pair of them, got {a['kernel']!r}",
                            _arg_loc(e, "kernel", 2), "write kernel=3 for a 3x3 kernel, or kernel=[3, 5] for height and width")
        kh, kw = kernel
        groups = a.get("groups", 1)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise SpecError(f"conv2d: groups must be a positive integer, got {groups!r}", _arg_loc(e, "groups"),
                            "write groups as a whole number of 1 or more that divides the channels")
        prefix = low.layer_name("conv2d")
        W = a.get("W")
        _refuse_init_with_weight("conv2d", W, a, e)
        kind = None
        if W is None:
            if not isinstance(x.shape[1], int) or x.shape[1] % groups:
                raise ShapeError(f"conv2d: input channels {x.shape[1]} are not divisible by groups={groups}",
                                 _arg_loc(e, "groups"),
                                 "use a groups that divides the input channels (a fixed size, axis 1 of [N, C, H, W])")
            kind, args_ = _init(a.get("init"), "he_uniform", loc=e.kwarg_locs.get("init"))
            W = low.add_param(f"{prefix}.W", (channels, x.shape[1] // groups, kh, kw), kind, args_, loc=e.loc)
        else:
            in_group = x.shape[1] // groups if isinstance(x.shape[1], int) else x.shape[1]
            _check_given_weight("conv2d", W, (channels, in_group, kh, kw), e,
                                f"channels={channels}, the input's {x.shape[1]} channels"
                                + (f" in {groups} groups" if groups > 1 else "") + f" and kernel {kh}x{kw}")
        conv_attrs = {k: a[k] for k in ("stride", "padding", "dilation", "groups") if k in a}
        y = self._conv(low, e, x, W, conv_attrs)
        if a.get("bias", True):
            b = a.get("b")
            if b is None:
                b = low.add_param(f"{prefix}.b", (channels,), *bias_init(kind, W.shape), loc=e.loc)
            else:
                _check_given_bias("conv2d", b, channels, e, f"channels={channels}")
            y = y + low.graph.apply("reshape", b, shape=(channels, 1, 1))
        return self.activate(low, y, a.get("act"), e)

    @staticmethod
    def _conv(low, e, x, W, attrs):
        """The conv op, its errors in the words of the call the spec wrote (conv2d: stride must be ...),
        one about an argument (stride=0, padding=-1) pointing at that argument."""
        from spec.errors import FlowgradError

        try:
            return _at_argument(e, lambda: low.graph.apply("conv", x, W, **attrs))
        except FlowgradError as err:
            if err.message.startswith("conv: "):
                err.message = "conv2d: " + err.message[len("conv: "):]
            raise


def _arg_loc(e, name: str, position: int | None = None):
    """Where the call writes argument `name`: as name=..., else at `position`, else the call."""
    if name in e.kwarg_locs:
        return e.kwarg_locs[name]
    if position is not None and position < len(e.args):
        return e.args[position].loc
    return e.loc


class Embedding(Layer):
    name = "embedding"
    positional = ("ids", "vocab", "dim")
    keywords = ("init", "W", "padding_idx")
    required = ("ids", "vocab", "dim")
    doc = "Rows of a table NAME.W [vocab, dim] looked up by integer ids: [..., dim] (or of a table given)."
    usage = ("embedding(ids, vocab, dim, init=... (default: normal with std 1), W=..., padding_idx=None) or "
             "embedding(ids, table, padding_idx=None)")

    def applies(self, args, kwargs):
        # embedding(ids, V, E) or embedding(ids, vocab=V, dim=E): sizes, not a table
        if len(args) >= 2:
            return not isinstance(args[1], Value)
        return "vocab" in kwargs or "dim" in kwargs

    def __call__(self, low, e, args, kwargs):
        a = self.bind(e, args, kwargs)
        vocab = _int_arg(a["vocab"], "vocab", _arg_loc(e, "vocab", 1), "embedding")
        dim = _int_arg(a["dim"], "dim", _arg_loc(e, "dim", 2), "embedding")
        W = a.get("W")
        _refuse_init_with_weight("embedding", W, a, e)
        if W is None:
            kind, args_ = _init(a.get("init"), "normal", {"std": 1.0}, loc=e.kwarg_locs.get("init"))
            pad = a.get("padding_idx")
            if isinstance(pad, int) and not isinstance(pad, bool) and -vocab <= pad < vocab:
                args_["zero_rows"] = [pad % vocab]  # the padding row starts at zeros, as nn.Embedding's
            W = low.add_param(f"{low.layer_name('embedding')}.W", (vocab, dim), kind, args_, loc=e.loc)
        else:
            _check_given_weight("embedding", W, (vocab, dim), e, f"vocab={vocab} and dim={dim}")
        pad = {"padding_idx": a["padding_idx"]} if a.get("padding_idx") is not None else {}
        return _at_argument(e, lambda: low.graph.apply("embedding", a["ids"], W, **pad))


class Norm(Layer):
    """batch_norm(x) / layer_norm(x): the shorthand when only x is given."""

    positional = ("x",)
    required = ("x",)

    def __init__(self, name):
        self.name = name
        # PyTorch's names: BatchNorm's affine=, LayerNorm's elementwise_affine=
        self.affine = "affine" if name == "batch_norm" else "elementwise_affine"
        self.keywords = ("eps", "momentum", "axis", self.affine)
        self.usage = f"{name}(x, eps=1e-5" + (", momentum=0.1" if name == "batch_norm" else ", axis=-1") + \
            f", {self.affine}=true)"
        self.doc = ("Normalises x [N, C, ...] per channel over the batch, making NAME.gamma, NAME.beta [C] and the "
                    "buffers NAME.running_mean, NAME.running_var" if name == "batch_norm" else
                    "Normalises x over its axes from `axis` on, making NAME.gamma and NAME.beta shaped like them") + \
            f"; {self.affine}=false makes no gamma and beta (scale 1, shift 0)"

    def _scale_shift(self, low, e, affine, prefix, shape, dtype):
        """NAME.gamma and NAME.beta, or with affine false the constants 1 and 0 in their place."""
        if not isinstance(affine, bool):  # ("false" in quotes would read as true)
            raise SpecError(f"{self.name}(): {self.affine} must be true or false, got {affine!r}",
                            e.kwarg_locs.get(self.affine, e.loc), f"write {self.affine}=true or {self.affine}=false, without quotes")
        if affine:
            return (low.add_param(f"{prefix}.gamma", shape, "ones", loc=e.loc),
                    low.add_param(f"{prefix}.beta", shape, "zeros", loc=e.loc))
        g = low.graph
        return tuple(g.cast(g.const(np.full(shape, v, dtype=g.float_dtype)), dtype) for v in (1.0, 0.0))

    def applies(self, args, kwargs):
        return len(args) == 1

    def __call__(self, low, e, args, kwargs):
        a = self.bind(e, args, kwargs)
        x = a.pop("x")
        affine = a.pop(self.affine, True)
        prefix = low.layer_name(self.name)
        if self.name == "batch_norm":
            if x.rank < 2:
                raise ShapeError(f"batch_norm() needs an input [N, C, ...], got {x.type}", e.loc,
                                 "give it [N, C] or [N, C, H, W]; it normalises each channel C over the batch")
            c = x.shape[1]
            gamma, beta = self._scale_shift(low, e, affine, prefix, (c,), x.dtype)
            mean = low.add_param(f"{prefix}.running_mean", (c,), "zeros", loc=e.loc, kind="buffer")
            var = low.add_param(f"{prefix}.running_var", (c,), "ones", loc=e.loc, kind="buffer")
            return _at_argument(e, lambda: low.graph.apply("batch_norm", x, gamma, beta, mean, var, **a))
        # gamma and beta are shaped like the normalised axes: `axis` to the last
        if x.rank < 1:
            raise ShapeError(f"layer_norm() needs an input with an axis to normalise, got the scalar {x.type}", e.loc,
                             "give it a tensor such as [N, D]; it normalises from axis= (default -1) to the last axis")
        try:
            first = normalize_axis(a.get("axis", -1), x.rank)
        except ShapeError as err:
            raise ShapeError(f"layer_norm(): {err.message}", e.loc, err.hint) from None
        shape = tuple(x.shape[first:])
        if not all(isinstance(d, int) for d in shape):
            raise ShapeError(f"layer_norm() normalises axes {first}.. of {x.type}, which must be fixed sizes", e.loc,
                             "gamma and beta are shaped like those axes: leave the batch axis out")
        gamma, beta = self._scale_shift(low, e, affine, prefix, shape, x.dtype)
        return _at_argument(e, lambda: low.graph.apply("layer_norm", x, gamma, beta, **a))


def _at_argument(e, build):
    """build(), an error about one of the call's keyword arguments pointing at that argument."""
    from spec.errors import FlowgradError

    try:
        return build()
    except FlowgradError as err:
        if err.arg in e.kwarg_locs:
            err.loc = e.kwarg_locs[err.arg]
        raise


LAYERS = {
    "dense": Dense(),
    "conv2d": Conv2d(),
    "embedding": Embedding(),
    "batch_norm": Norm("batch_norm"),
    "layer_norm": Norm("layer_norm"),
}
