"""Autoregressive sampling as a deployment graph (the spec's `generate`).

The graph takes `prompt` (int64 token ids [P]), `max_len` (int64), `temperature`
(float; 0 picks the most likely token) and `seed` (int64), and returns
`tokens` [max_len] (none at max_len 0 or below: see _lengths), in the int type of the spec's
token input (generate.input; a beam search's tokens too). It runs the
spec's graph over the prompt once, carrying out every recurrent layer's final
state, then loops: sample a token from the last logits (Gumbel-max with the
counter-based generator, so a seed replays exactly), feed it through the graph
as a one-step input, repeat. A model of a fixed window of C tokens (logits [N, V], the
token after the window: nlm.yaml) carries the last C tokens instead and runs the whole graph
on each window (_build_window_sampler). Everything is standard ONNX: any onnxruntime user
can generate with the one file.
"""
from __future__ import annotations

import numpy as np

from spec import model as S
from spec.errors import SpecError, did_you_mean

from .ir import PASSTHROUGH_OPS, Graph, Value, at, fmt_shape, passed_from, producers_of
from .lower import SPEC_FLOAT_NAMES, Lowering
from .ops.scan import Body
from .recurrent import StepBuilder, run_scan


def _sample(g, logits: Value, temperature: Value, seed: Value, step: Value, salt: int) -> Value:
    """argmax(logits / T + Gumbel noise): a sample of softmax(logits / T), T the temperature.

    Computed as argmax(logits / max(T, 1) + noise * min(T, 1)), the same argmax for T > 0,
    so that T = 0 picks the most likely token and neither term overflows: the noise scaled
    by a huge T (above about 2e37) was inf, and argmax took the first of several infs. A half
    type's model samples in float32: drawn in float16, the uniform's steps near 1 capped the
    noise near 7.6, and a token ~9.6 or more below the best logit was never drawn."""
    if logits.dtype in ("float16", "bfloat16"):
        logits, temperature = g.cast(logits, "float32"), g.cast(temperature, "float32")
    u = g.apply("uniform", logits, seed, step, salt=salt)
    # keeps log's arguments above 0: 1e-20 is 0 in float16, where a draw of 0 made NaN at T = 0
    tiny = g.lift(max(1e-20, float(np.finfo(u.dtype).tiny)), like=u)
    gumbel = -g.apply("log", -g.apply("log", u + tiny) + tiny)
    one = g.lift(1.0, like=temperature)
    scaled = logits / g.apply("maximum", temperature, one) + gumbel * g.apply("minimum", temperature, one)
    return g.apply("argmax", scaled, axis=-1)


def _depends_on(v, source: Value) -> bool:
    if not isinstance(v, Value):
        return False
    if v is source:
        return True
    return any(x is source for node in producers_of([v]) for x in node.inputs)


def _lengths(g, max_len: Value) -> tuple[Value, Value]:
    """The loop's steps and the tokens kept, for a `max_len` input of any value: (arange of
    max(max_len, 1), arange of max(max_len, 0)). The loop runs at least once, since neither
    onnxruntime's Scan nor onnx.reference's runs over zero steps (both failed at max_len 0, where
    a plain onnxruntime user gets its error); the tokens are then cut to max_len, none at 0 or
    below, and what the loop's one step found is thrown away."""
    steps = g.apply("arange", g.apply("maximum", max_len, g.lift(1, like=max_len)))
    kept = g.apply("arange", g.apply("maximum", max_len, g.lift(0, like=max_len)))
    return steps, kept


class _StepLowering(Lowering):
    """The spec's graph evaluated inside the sampling loop: parameters are read
    from outside the loop, the token input is the token just sampled."""

    def __init__(self, outer: Lowering, sb: StepBuilder, token_input: str, token: Value, states: dict):
        self.spec = outer.spec
        self.graph = sb.graph
        self.params = outer.params
        self.inputs = {token_input: token}
        self.env = {}
        self._defs = dict(outer._defs)
        self._evaluating = []
        self._param_edges = {}
        self._target = None
        self._layer_calls = 0
        self._sb = sb
        self._token_input = token_input
        self._outer = outer
        self._outer_token = outer.inputs[token_input]
        self.recurrent_state = states
        self.recurrent_final = {}

    def lookup(self, name, loc):
        if name in self.params and name not in self.env and name not in self._defs:
            return self._sb.capture(self.params[name].value)
        if name != self._token_input and name in self._outer.env and not _depends_on(self._outer.env[name], self._outer_token):
            v = self._outer.env[name]  # computed once before the loop (the encoder, its mask, ...)
            return self._sb.capture(v) if isinstance(v, Value) else v
        if name in self.spec.inputs and name != self._token_input:
            return self._sb.capture(self._outer.lookup(name, loc))
        return super().lookup(name, loc)

    def input_value(self, name):
        return self.inputs[name]

    def add_param(self, name, shape, init_kind, init_args=None, trainable=True, loc=None, kind="param", seed=None):
        return self._sb.capture(self.params[name].value)


def _check_config(spec: S.Spec):
    from .training import length_bounds

    cfg = spec.generate
    token_input, logits_name = cfg["input"], cfg["logits"]
    if token_input not in spec.inputs:
        raise SpecError(f"generate.input {token_input!r} is not an input", spec.locate("generate", "input"),
                        did_you_mean(token_input, spec.inputs)
                        or f"name the int input of the tokens: {', '.join(spec.inputs) or 'the spec has no inputs'}")
    # keys of the other kind of decoding were read by neither (temperature of a beam search, beams of a sampler)
    seq2seq = "bos" in cfg
    for key in ("temperature",) if seq2seq else ("eos", "pad", "beam_width", "length_penalty"):
        if key in cfg:
            raise SpecError(f"generate.{key} is for {'a language model (no bos)' if seq2seq else 'sequence-to-sequence decoding (with bos)'}, "
                            f"and this spec {'has' if seq2seq else 'has no'} bos", spec.locate("generate", key),
                            "beam search takes no temperature: leave it out" if seq2seq
                            else "add bos for beam search, or leave it out: a language model samples up to max_len tokens")
    decl = spec.inputs[token_input]
    if decl.dtype not in ("int64", "int32") or len(decl.shape) != 2:
        raise SpecError(f"generate.input {token_input!r} must be int token ids [N, T], got "
                        f"{decl.dtype}{fmt_shape(decl.shape)}", spec.locate("generate", "input"),
                        f"declare it as inputs: {{{token_input}: {{shape: [N, T], dtype: int64}}}}")
    if logits_name not in {t for a in spec.graph for t in a.targets}:
        raise SpecError(f"generate.logits {logits_name!r} is not a graph node", spec.locate("generate", "logits"),
                        did_you_mean(logits_name, [t for a in spec.graph for t in a.targets])
                        or "name the graph entry that scores the vocabulary, [N, T, vocab]")
    # the logits as the spec computes them, before decoding feeds the tokens one at a time
    checked = Lowering(spec, mode="infer")
    checked.recurrent_state, checked.recurrent_final = {}, {}  # the states a sampler would carry
    logits = checked.evaluate_name(logits_name)
    tokens = checked.inputs[token_input]
    if isinstance(logits, Value) and logits.rank == 2:
        # a model of a fixed window of tokens (nlm.yaml: the last C words, flattened) scores the next
        # one, [N, V]: the sampler carries the window and runs the whole graph on it at every step
        return token_input, logits_name, decl, set(), _window_size(spec, logits_name, logits, tokens)
    if not isinstance(logits, Value) or logits.rank != 3:
        raise SpecError(f"generate.logits {logits_name!r} must be [N, T, vocab], got "
                        f"{getattr(logits, 'type', logits)}", spec.locate("generate", "logits"),
                        "decoding needs a score of the vocabulary at every step of the tokens, from a recurrent "
                        "layer that reads them (lstm(embedding(x, V, E), H)), or of the token after a fixed "
                        "window of them, [N, vocab]")
    if not any(_depends_on(f, tokens) for finals in checked.recurrent_final.values() for f in finals):
        # refused here, on the graph as trained: lowered over a prompt [1, P], a graph without
        # one (a transformer) met its first reshape to [N, T, ...] and was refused there
        raise SpecError("generate needs a recurrent layer (rnn, lstm, gru or a scan) that reads generate.input to "
                        "carry the context from one sampled token to the next", spec.locate("generate", "logits"),
                        f"run the tokens through e.g. lstm(embedding({token_input}, V, D), H) before the logits; a "
                        "model that attends over its tokens (a transformer) has no state to carry, but samples as "
                        f"a model of a fixed window: {token_input} [N, C] (C under dims) and logits [N, vocab] "
                        "for the token after it (the last position's)")
    _refuse_mixed_steps(spec, token_input, logits_name, decl)
    # the inputs that count the tokens' steps (lengths=len over padded sentences or targets), as the
    # export records them: every token decoding feeds is real
    # (and read for nothing else: a length read as a number would be the prompt's, or 1, when decoding)
    counts = {k for k, b in length_bounds(spec, checked.graph).items() if b["of"] == token_input and b["axis"] == 1
              and _only_in_step_masks(checked.inputs[k], checked.graph.nodes, False,
                                      lambda u: u.producer is not None and u.producer.op.name == "positions")}
    return token_input, logits_name, decl, counts, None


# ops that combine the entries along an axis (`axis`: one, several, or all where None); logsumexp
# is built of max and sum, which are here
_ALONG_AXIS = ("sum", "mean", "max", "min", "argmax", "argmin", "softmax", "log_softmax", "topk")


def _mixed_axes(node) -> set[int]:
    """The axes of its first input along which `node` combines the entries (a softmax over the steps)."""
    x = node.inputs[0]
    rank = x.rank
    if node.op.name not in _ALONG_AXIS:
        return set()
    axis = node.attrs.get("axis")
    if axis is None:
        return set(range(rank))
    return {a % rank for a in (axis if isinstance(axis, (list, tuple)) else (axis,))}


def _refuse_mixed_steps(spec: S.Spec, token_input: str, logits_name: str, decl):
    """Decoding runs the graph on one token at a time, carrying only the recurrent layers' states:
    outside them, a reduction or softmax along the tokens' steps (mean(hs, axis=1)) would see that
    one step, and the decoder sampled silently from other logits than the model computes. The
    graph is lowered with the tokens' steps as a dim of their own, so that a source's steps of
    the same name (src [N, T] attended over after the decoder) are not taken for them; a graph
    that needs the two to be one size cannot decode one token at a time anyway, and is left to
    the checks that follow."""
    from spec.errors import FlowgradError

    steps = f"{token_input}'s steps"
    probe = Lowering(spec, mode="infer")
    probe.recurrent_state, probe.recurrent_final = {}, {}
    tokens = probe.graph.add_input(token_input, decl.dtype, (decl.shape[0], steps), kind="input", loc=decl.loc)
    probe.inputs[token_input] = tokens
    try:
        logits = probe.evaluate_name(logits_name)
    except FlowgradError:
        return
    if not isinstance(logits, Value):
        return
    for node in producers_of([logits]):
        if node.op.name == "scan" or not node.inputs or not _depends_on(node.inputs[0], tokens):
            continue
        shape = node.inputs[0].shape
        mixed = [a for a in _mixed_axes(node) if a < len(shape) and shape[a] == steps]
        if node.op.name == "matmul" and len(node.inputs) == 2 and len(shape) >= 1 and shape[-1] == steps:
            mixed.append(len(shape) - 1)  # a product that sums over the steps (attention over the tokens)
        if mixed:
            raise SpecError(f"generate: the logits combine the tokens' steps ({node.op.name} along axis {mixed[0]}, "
                            f"the steps of generate.input {token_input!r}), which decoding one token at a time "
                            "cannot reproduce", node.loc or spec.locate("generate", "logits"),
                            "let the steps reach one another through the recurrent layers only: outside them, "
                            "reduce over the features, not over time")


def _window_size(spec: S.Spec, logits_name: str, logits: Value, tokens: Value) -> int:
    """The C of a window model: generate.input [N, C] of a fixed C, the logits [N, vocab] one row
    per window (the next token's scores). Anything else cannot be fed the last C tokens."""
    token_input = spec.generate["input"]
    if "bos" in spec.generate:
        raise SpecError(f"generate.logits {logits_name!r} must be [N, T, vocab] for beam search (with bos), got "
                        f"{logits.type}", spec.locate("generate", "logits"),
                        "a sequence-to-sequence decoder scores the vocabulary at every step of the tokens")
    C = tokens.shape[1]
    if not isinstance(C, int):
        raise SpecError(f"generate.logits {logits_name!r} is {logits.type}, the next token after a window, but "
                        f"generate.input {token_input!r} has no fixed window size: {tokens.type}",
                        spec.locate("generate", "logits"),
                        f"give {token_input} a window of a fixed size ([N, C], C under dims) for logits [N, vocab], "
                        "or score every step of the tokens, [N, T, vocab], with a recurrent layer")
    if logits.shape[0] != tokens.shape[0]:
        raise SpecError(f"generate.logits {logits_name!r} must be [{tokens.shape[0]}, vocab], one row per window of "
                        f"generate.input {token_input!r} {tokens.type}, got {logits.type}",
                        spec.locate("generate", "logits"),
                        "name the node that scores the token after each window (dense(h, V) over the window's rows)")
    return C


def _first_pass(low: Lowering, logits_name: str, loc):
    """Run the graph over the first tokens; returns the last position's logits and the carried states."""
    low.recurrent_state, low.recurrent_final = {}, {}
    logits = low.evaluate_name(logits_name)
    if not isinstance(logits, Value) or logits.rank != 3:
        raise SpecError(f"generate.logits {logits_name!r} must be [N, T, vocab], got "
                        f"{getattr(logits, 'type', logits)}", low.spec.locate("generate", "logits"),
                        "name the graph node that scores the vocabulary at every step of the tokens, [N, T, vocab]")
    if not low.recurrent_final:
        raise SpecError("generate needs a recurrent layer (rnn, lstm, gru or a scan) to carry the context", loc,
                        "run the tokens through e.g. lstm(embedding(tokens, V, D), H) before the logits")
    last = low.graph.apply("index", logits, spec=((None, None, None), -1))  # [N, V]
    # Only layers that read the tokens carry state; the rest (an encoder) runs once.
    token = low.inputs[low.spec.generate["input"]]
    for node in producers_of([logits]):
        if node.op.name == "scan" and node.attrs.get("reverse") and any(_depends_on(v, token) for v in node.inputs):
            # decoding knows only the tokens so far: a pass from the end reads what is not written yet
            raise SpecError("generate: a recurrent layer reads the tokens backwards (reverse, or bidirectional): "
                            "decoding one token at a time cannot reproduce it", node.loc or loc,
                            "a language model that generates reads its tokens forwards only")
    prefixes = [p for p, finals in low.recurrent_final.items() if any(_depends_on(f, token) for f in finals)]
    if not prefixes:
        raise SpecError("generate needs a recurrent layer that reads generate.input to carry the context", loc,
                        f"feed generate.input ({low.spec.generate['input']}) into the rnn, lstm, gru or scan "
                        "that computes the logits")
    return last, prefixes, [s for p in prefixes for s in low.recurrent_final[p]]


def _step(low, sb, token_input, decl, token, prefixes, c_states, logits_name, counts=()):
    """The graph on one new token [N] inside the loop: (logits [N, V], new states). `counts`: the
    values (in the loop) of inputs that count the tokens' steps, whose masks read positions."""
    bg = sb.graph
    carried, k = {}, 0
    for p in prefixes:
        n = len(low.recurrent_final[p])
        carried[p] = c_states[k:k + n]
        k += n
    tok = bg.apply("unsqueeze", bg.cast(token, decl.dtype), axes=(1,))  # [N, 1]
    step_low = _StepLowering(low, sb, token_input, tok, carried)
    new_logits = step_low.evaluate_name(logits_name)
    new_last = bg.apply("index", new_logits, spec=((None, None, None), -1))
    # The loop sees one token at a time: what reads a token's place in the sequence would
    # read 0 at every step and decode silently otherwise than the model computes.
    nodes = producers_of([new_last])
    for node in nodes:
        if node.op.name in ("positions", "shift") and any(_depends_on(v, tok) for v in node.inputs) \
                and not _masks_steps(node, nodes, {v.id for v in counts}):
            raise SpecError(f"generate: the logits read the tokens' positions ({node.op.name}), which decoding "
                            "one token at a time cannot reproduce", node.loc or low.spec.locate("generate"),
                            "let the tokens reach the logits through the recurrent layers only (no position "
                            "embeddings, no shifts over time)")
    return new_last, [s for p in prefixes for s in step_low.recurrent_final[p]]


def _only_in_step_masks(v: Value, nodes, positions: bool, other) -> bool:
    """Whether every reader of `v` (through reshapes and casts) is a mask of steps, positions < lengths
    (lengths=len builds it), `v` on the positions side or the lengths side, and `other(the other side)`."""
    readers = {}
    for n in nodes:
        for x in n.inputs:
            readers.setdefault(x.id, []).append(n)
    todo = [v]
    while todo:
        x = todo.pop()
        for n in readers.get(x.id, []):
            if n.op.name in PASSTHROUGH_OPS:
                todo += n.outputs
                continue
            if n.op.name not in ("lt", "gt"):
                return False
            small, big = n.inputs if n.op.name == "lt" else reversed(n.inputs)
            mine, theirs = (small, big) if positions else (big, small)
            if passed_from(mine).id != v.id or not other(passed_from(theirs)):
                return False
    return True


def _masks_steps(node, nodes, counts: set) -> bool:
    """Whether a positions node is only compared with a count of the steps (the mask of lengths=len:
    positions(x) < len), which is 1 at every token decoding feeds, as it is over the whole sequence."""
    return node.op.name == "positions" and bool(counts) and \
        _only_in_step_masks(node.outputs[0], nodes, True, lambda u: u.id in counts)


def build_generator(spec: S.Spec, dtype: str):
    """The decoding graph's Builder, or None when the spec has no `generate`."""
    if not spec.generate:
        return None
    if "bos" in spec.generate:
        return _build_beam_search(spec, dtype)
    return _build_sampler(spec, dtype)


def _sampler_inputs(spec: S.Spec, dtype: str):
    """A sampler's lowering of the spec and its inputs: prompt [P], max_len, temperature, seed."""
    low = Lowering(spec, mode="infer", float_dtype=dtype)
    g = low.graph
    return (low, g.add_input("prompt", "int64", ("P",)), g.add_input("max_len", "int64", ()),
            g.add_input("temperature", dtype, ()), g.add_input("seed", "int64", ()))


def _reads_besides_prompt(spec: S.Spec, token_input: str, name: str, more_hint: str = "") -> SpecError:
    """The refusal of a language model's logits that read the input `name` besides the tokens."""
    return SpecError(f"generate: the logits read the input {name!r} besides generate.input {token_input!r}, and a "
                     "language model samples from a prompt alone", spec.locate("generate", "logits"),
                     f"compute the logits from {token_input} alone{more_hint}")


def _build_sampler(spec: S.Spec, dtype: str):
    """Language models: continue a prompt by sampling."""
    from .training import _Builder

    token_input, logits_name, decl, counts, window = _check_config(spec)
    if window is not None:
        return _build_window_sampler(spec, dtype, token_input, logits_name, decl, window)
    loc = spec.locate("generate")
    low, prompt, max_len, temperature, seed = _sampler_inputs(spec, dtype)
    g = low.graph
    low.inputs[token_input] = g.apply("unsqueeze", g.cast(prompt, decl.dtype), axes=(0,))  # [1, P]
    with at(loc):
        # An input that counts the tokens' steps (lstm(e, H, lengths=len), a language model of padded
        # sentences) is the prompt's length: every token of the prompt and each sampled one is real
        # (its [N] met the prompt's [1, P] in the layer's scan, refused as a state of a block the
        # spec never wrote). Any other input is none of the sampler's.
        for name in sorted(_inputs_read(spec, logits_name) - {token_input}):
            if name not in counts:
                raise _reads_besides_prompt(spec, token_input, name, f", or add bos to decode from {name} as a "
                                            "sequence-to-sequence model does")
            ones = g.apply("fill", low.inputs[token_input], dims=((0, 0), (0, 1)), value=1, dtype=spec.inputs[name].dtype)
            low.inputs[name] = g.apply("sum", ones, axis=1)  # [1]: the prompt's length
        last, prefixes, states = _first_pass(low, logits_name, loc)
        # The loop: carries = (logits of the last token, every recurrent state).
        sb = StepBuilder(g)
        bg = sb.graph
        t = bg.add_input("t", "int64", ())
        c_logits = bg.add_input("logits", last.dtype, last.shape)
        c_states = [bg.add_input(f"state{k}", v.dtype, v.shape, unique=True) for k, v in enumerate(states)]
        token = _sample(bg, c_logits, sb.capture(temperature), sb.capture(seed), t, salt=1)  # [1]
        new_last, new_states = _step(low, sb, token_input, decl, token, prefixes, c_states, logits_name,
                                     [sb.capture(low.inputs[name]) for name in counts])
        body = Body(bg, [c_logits] + c_states, [t], sb.nonseqs, [new_last] + new_states, [token])
        steps, kept = _lengths(g, max_len)
        res = run_scan(g, body, [last] + states, [steps], sb.nonseq_outer, stack=(False,) * (1 + len(states)))
        tokens = g.apply("take", g.apply("reshape", res[-1], shape=(-1,)), kept, axis=0)
        tokens = g.cast(tokens, decl.dtype)  # the ids in the token input's int type (an int32 model's were int64)
    b = _Builder(low.graph, spec.name)
    b.out("tokens", "output", tokens)
    return b


def _build_window_sampler(spec: S.Spec, dtype: str, token_input: str, logits_name: str, decl, C: int):
    """A language model of a fixed window of C tokens (Bengio et al. 2003; logits [N, V], the next
    token's): the loop carries the last C tokens, [1, C]. The first window is the prompt's last C
    tokens, padded at the front with id 0 (the text dataset's <unk> wherever it has one: at character
    level, and at word level with max_vocab) when the prompt is shorter; each step samples a token
    from the window's logits, shifts it onto the window and runs the whole graph on the new window."""
    from .training import _Builder

    loc = spec.locate("generate")
    low, prompt, max_len, temperature, seed = _sampler_inputs(spec, dtype)
    g = low.graph
    with at(loc):
        others = sorted(_inputs_read(spec, logits_name) - {token_input})
        if others:
            raise _reads_besides_prompt(spec, token_input, others[0])
        # window[i] = prompt[P - C + i], or 0 before the prompt's start: a concat of C zeros and the
        # prompt has no static size (C + P), so each entry sums the prompt's ids where its position matches
        pos = g.apply("positions", prompt, axis=0)  # [P]
        length = g.apply("sum", g.apply("fill", prompt, dims=((0, 0),), value=1, dtype="int64"), axis=0)
        wanted = g.const(np.arange(C, dtype=np.int64)) + (length - g.lift(C, like=length))  # [C]
        hit = g.apply("eq", g.apply("unsqueeze", wanted, axes=(1,)), g.apply("unsqueeze", pos, axes=(0,)))  # [C, P]
        last_c = g.apply("sum", g.cast(hit, "int64") * g.apply("unsqueeze", prompt, axes=(0,)), axis=1)  # [C]
        window0 = g.apply("unsqueeze", g.cast(last_c, decl.dtype), axes=(0,))  # [1, C]
        low.inputs[token_input] = window0
        first = low.evaluate_name(logits_name)  # [1, V]
        # The loop: carries = (the logits of the window, the window).
        sb = StepBuilder(g)
        bg = sb.graph
        t = bg.add_input("t", "int64", ())
        c_logits = bg.add_input("logits", first.dtype, first.shape)
        c_window = bg.add_input("window", window0.dtype, window0.shape)
        token = _sample(bg, c_logits, sb.capture(temperature), sb.capture(seed), t, salt=1)  # [1]
        tok = bg.apply("unsqueeze", bg.cast(token, decl.dtype), axes=(1,))  # [1, 1]
        new_window = bg.apply("concat", bg.apply("index", c_window, spec=((None, None, None), (1, None, None))), tok, axis=1)
        step_low = _StepLowering(low, sb, token_input, new_window, None)
        new_logits = step_low.evaluate_name(logits_name)
        body = Body(bg, [c_logits, c_window], [t], sb.nonseqs, [new_logits, new_window], [token])
        steps, kept = _lengths(g, max_len)
        res = run_scan(g, body, [first, window0], [steps], sb.nonseq_outer, stack=(False, False))
        tokens = g.apply("take", g.apply("reshape", res[-1], shape=(-1,)), kept, axis=0)
        tokens = g.cast(tokens, decl.dtype)
    b = _Builder(low.graph, spec.name)
    b.out("tokens", "output", tokens)
    return b


class _BeamLowering(Lowering):
    """The graph with every data input repeated per beam: row n*K + k is beam k of example n."""

    def __init__(self, spec, dtype, beams: int, token_input: str):
        super().__init__(spec, mode="infer", float_dtype=dtype)
        self.beams = beams
        self.token_input = token_input
        self.sources = {}

    def input_value(self, name):
        if name not in self.inputs:
            decl = self.spec.inputs[name]
            dtype = self.graph.float_dtype if decl.dtype in SPEC_FLOAT_NAMES else decl.dtype
            x = self.graph.add_input(name, dtype, tuple(decl.shape), kind="input", loc=decl.loc)
            self.sources[name] = x
            self.inputs[name] = self.graph.apply("tile_rows", x, times=self.beams)
        return self.inputs[name]


def _dead_score(dtype: str) -> float:
    """A beam score far below any real one: -1e9, or float16's -6e4 (-1e9 rounds to -inf
    there, with NumPy's overflow warning at every build)."""
    return -6.0e4 if dtype == "float16" else -1e9


def _build_beam_search(spec: S.Spec, dtype: str):
    """Sequence to sequence: beam search (width 1: greedy) with per-row end-of-sequence bookkeeping.

    Inputs: the spec's source inputs, `beam_width` (1..K, K = generate.beam_width at
    compile time), `max_len` and `length_penalty`. Outputs: `tokens` [N, max_len]
    (padded after end-of-sequence) and `scores` [N] (length-normalised log-probability). A
    max_len of 0 (or below) decodes nothing: tokens [N, 0], and scores 0, the log-probability
    of the empty hypothesis, as though the loop had run no step."""
    from .training import _Builder

    token_input, logits_name, decl, counts, _ = _check_config(spec)
    cfg = spec.generate
    loc = spec.locate("generate")
    K = int(cfg.get("beam_width", 4))
    bos, eos, pad = int(cfg["bos"]), int(cfg.get("eos", cfg["bos"])), int(cfg.get("pad", 0))
    low = _BeamLowering(spec, dtype, K, token_input)
    g = low.graph
    beam_width = g.add_input("beam_width", "int64", ())
    max_len = g.add_input("max_len", "int64", ())
    alpha = g.add_input("length_penalty", dtype, ())
    with at(loc):
        # The first tokens: <bos> in every row; the row count comes from a source input.
        read = _inputs_read(spec, logits_name)
        src = next((n for n in spec.inputs if n != token_input and n in read and n not in counts), None)
        if src is None:
            raise SpecError("beam search needs a source input besides generate.input", loc,
                            f"the logits must also read an input to translate from (e.g. src [N, S]), "
                            f"not only {token_input}; without bos the spec samples as a language model")
        # an input along the tokens' steps besides them (a target-side mask fed to the decoder's
        # loop) has no values while decoding: the export asked for it, and decoding failed
        steps = decl.shape[1] if len(decl.shape) > 1 and isinstance(decl.shape[1], str) else None
        per_step = [n for n in spec.inputs if n not in (token_input, src) and n in read and n not in counts
                    and steps in spec.inputs[n].shape[1:]]
        if steps and per_step:
            raise SpecError(f"beam search feeds the decoder the tokens it generates, and the logits also read "
                            f"{per_step[0]!r}, which has their steps ({steps}): it has no values while decoding",
                            spec.locate("inputs", per_step[0]),
                            f"compute what the decoder reads at each step from {token_input} and the source "
                            f"alone (a target-side mask belongs in the loss, not in the logits)")
        ref = low.input_value(src)
        low.inputs[token_input] = g.apply("fill", ref, dims=((0, 0), 1), value=bos, dtype=decl.dtype)
        for name in counts:  # [N*K]: each pass feeds one real token (a decoder given lengths=tgt_len)
            low.inputs[name] = g.apply("fill", ref, dims=((0, 0),), value=1, dtype=spec.inputs[name].dtype)
        last, prefixes, states = _first_pass(low, logits_name, loc)  # [N*K, V]
        V = last.shape[-1]
        if not isinstance(V, int):
            raise SpecError(f"beam search needs a fixed vocabulary size in the logits, got {last.type}", loc,
                            "give the logits' last axis a fixed size: a number or a name declared under dims")
        # eos and pad index the logits: beyond them a hypothesis never ends, and pad's row does not exist
        for key, value in (("eos", eos), ("pad", pad)):
            if value >= V:
                given = key if key in cfg else "bos"  # (eos is bos when absent)
                raise SpecError(f"generate.{key} is {value}, but the logits {logits_name!r} have {V} entries (ids 0 to {V - 1})",
                                spec.locate("generate", given),
                                f"give a token id below {V}" + (" (eos is bos when absent)" if given != key else ""))
        source = low.sources[src]
        beam_pos = g.apply("positions", g.apply("fill", source, dims=(K,), dtype="int64"), axis=0)  # [K]
        scores0 = g.apply("where", g.apply("eq", beam_pos, g.lift(0, like=beam_pos)),
                          g.lift(0.0, like=last), g.lift(_dead_score(last.dtype), like=last))  # only beam 0 is live at first
        scores0 = g.apply("broadcast_like", scores0, g.apply("fill", source, dims=((0, 0), K), dtype=dtype))  # [N, K]
        finished0 = g.apply("fill", source, dims=((0, 0), K), value=0.0, dtype="bool")
        lengths0 = g.apply("fill", source, dims=((0, 0), K), dtype=dtype)
        steps, kept = _lengths(g, max_len)
        seqs0 = g.apply("fill", source, steps, dims=((0, 0), K, (1, 0)), value=pad, dtype="int64")  # [N, K, L]

        sb = StepBuilder(g)
        bg = sb.graph
        t = bg.add_input("t", "int64", ())
        c_logits = bg.add_input("logits", last.dtype, last.shape)
        c_scores = bg.add_input("scores", dtype, scores0.shape)
        c_fin = bg.add_input("finished", "bool", finished0.shape)
        c_len = bg.add_input("lengths", dtype, lengths0.shape)
        c_seqs = bg.add_input("seqs", "int64", seqs0.shape)
        c_states = [bg.add_input(f"state{k}", v.dtype, v.shape, unique=True) for k, v in enumerate(states)]

        logp = bg.apply("reshape", bg.apply("log_softmax", c_logits, axis=-1), shape=(-1, K, V))  # [N, K, V]
        # A finished hypothesis only extends with <pad>, at no cost.
        pad_row = np.full(V, _dead_score(dtype), dtype=dtype)
        pad_row[pad] = 0.0
        logp = bg.apply("where", bg.apply("unsqueeze", c_fin, axes=(-1,)), bg.const(pad_row), logp)
        cand = bg.apply("reshape", bg.apply("unsqueeze", c_scores, axes=(-1,)) + logp, shape=(-1, K * V))
        top, idx = bg.apply("topk", cand, k=K, axis=-1)  # [N, K]
        parent, token = bg.apply("divmod", idx, d=V)
        # Beams past the requested width never survive; a width below 1 is 1 (at 0 no beam
        # survived, and a plain onnxruntime user got the dead beams' tokens and scores of -4e8)
        width = g.apply("maximum", beam_width, g.lift(1, like=beam_width))
        live = bg.apply("lt", bg.apply("unsqueeze", sb.capture(beam_pos), axes=(0,)), sb.capture(width))
        new_scores = bg.apply("where", live, top, bg.lift(_dead_score(top.dtype), like=top))
        was_done = bg.apply("take_along_axis", c_fin, parent, axis=-1)
        token = bg.apply("where", was_done, bg.lift(pad, like=token), token)
        new_fin = bg.apply("logical_or", was_done, bg.apply("eq", token, bg.lift(eos, like=token)))
        new_len = bg.apply("take_along_axis", c_len, parent, axis=-1) + bg.cast(bg.apply("logical_not", was_done), dtype)
        seqs = bg.apply("take_along_axis", c_seqs, bg.apply("broadcast_like", bg.apply("unsqueeze", parent, axes=(-1,)), c_seqs), axis=1)
        at_t = bg.apply("eq", sb.capture(steps), t)  # [L]
        seqs = bg.apply("where", at_t, bg.apply("unsqueeze", token, axes=(-1,)), seqs)
        moved = []
        for st in c_states:  # each surviving hypothesis continues from its parent's state
            rest = tuple(st.shape[1:])
            s3 = bg.apply("reshape", st, shape=(-1, K) + rest)
            idx3 = bg.apply("broadcast_like", bg.apply("reshape", parent, shape=(-1, K) + (1,) * len(rest)), s3)
            moved.append(bg.apply("reshape", bg.apply("take_along_axis", s3, idx3, axis=1), shape=(-1,) + rest))
        flat_token = bg.apply("reshape", token, shape=(-1,))
        new_last, new_states = _step(low, sb, token_input, decl, flat_token, prefixes, moved, logits_name,
                                     [sb.capture(low.inputs[name]) for name in counts])
        body = Body(bg, [c_logits, c_scores, c_fin, c_len, c_seqs] + c_states, [t], sb.nonseqs,
                    [new_last, new_scores, new_fin, new_len, seqs] + new_states, [])
        res = run_scan(g, body, [last, scores0, finished0, lengths0, seqs0] + states, [steps], sb.nonseq_outer,
                       stack=(False,) * (5 + len(states)))
        scores, lengths, seqs = res[1], res[3], res[4]
        # max_len 0: no step counts, and each row's best is the empty hypothesis beam 0 starts with
        ran = g.apply("gt", max_len, g.lift(0, like=max_len))
        scores, lengths = g.apply("where", ran, scores, scores0), g.apply("where", ran, lengths, lengths0)
        seqs = g.apply("take", seqs, kept, axis=2)
        # Dead beams (past the width, or padding the first step where the vocabulary is smaller
        # than the beam) end with a length of their own under a score of -1e9: at a large alpha
        # its penalty outweighed that score, and a hypothesis the search had dropped came out
        real = g.apply("gt", scores, g.lift(_dead_score(scores.dtype) / 2, like=scores))
        best, norm = length_normalised_best(g, scores, lengths, alpha, real)
        best_seq = g.apply("take_along_axis", seqs, g.apply("broadcast_like", g.apply("unsqueeze", best, axes=(-1,)),
                                                            g.apply("index", seqs, spec=((None, None, None), (0, 1, None))), ), axis=1)
        tokens = g.cast(g.apply("squeeze", best_seq, axes=(1,)), decl.dtype)  # in the token input's int type
        best_score = g.apply("squeeze", g.apply("take_along_axis", norm, best, axis=-1), axes=(1,))
    b = _Builder(low.graph, spec.name)
    b.out("tokens", "output", tokens)
    b.out("scores", "output", best_score)
    return b


def length_normalised_best(g: Graph, scores: Value, lengths: Value, alpha: Value,
                           real: Value | None = None) -> tuple[Value, Value]:
    """GNMT's length penalty over [N, K] hypotheses: score / ((L + 5) / 6) ** alpha; returns the
    best beam of each row [N, 1] and the normalised scores. Ranked by their log magnitude (scores
    are log-probabilities, <= 0): a large alpha overflowed the power to inf, every normalised score
    to -0, and the best was beam 0, the best raw score, the opposite of what alpha asks. `real`
    [N, K] (bool): the hypotheses that may be picked; the others are never the best."""
    magnitude = g.apply("log", g.apply("neg", scores)) - alpha * g.apply("log", (lengths + 5.0) / 6.0)
    if real is not None:
        magnitude = g.apply("where", real, magnitude, g.lift(float("inf"), like=magnitude))
    best = g.apply("argmin", magnitude, axis=-1, keepdims=True)
    return best, g.apply("neg", g.apply("exp", magnitude))


def _inputs_read(spec, logits_name) -> set[str]:
    """The inputs the logits are computed from, through graph entries and the blocks they run (finds
    the source input). Not every input an expression mentions: a per-token loss written as a graph
    entry reads the labels (tgt), and a decoder that took them for its source needed them fed."""
    from .lower import blocks_in, names_in

    entries = {t: a.expr for a in spec.graph for t in a.targets}
    found, seen, todo = set(), set(), [logits_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in spec.inputs:
            found.add(name)
        if name in entries:
            todo += names_in(entries[name]) + blocks_in(entries[name], spec.blocks)
        if name in spec.blocks:
            block = spec.blocks[name]
            # a block's own inputs, parameters and entries are its names, not the spec's (an input named tgt, say)
            local = set(block.inputs) | set(block.params) | {t for a in block.graph for t in a.targets}
            for a in block.graph:
                todo += [n for n in names_in(a.expr) if n not in local] + blocks_in(a.expr, spec.blocks)
    return found
