"""Autoregressive sampling as a deployment graph (the spec's `generate`).

The graph takes `prompt` (int64 token ids [P]), `max_len` (int64), `temperature`
(float; 0 picks the most likely token) and `seed` (int64), and returns
`tokens` [max_len]. It runs the spec's graph over the prompt once, carrying
out every recurrent layer's final state, then loops: sample a token from the
last logits (Gumbel-max with the counter-based generator, so a seed replays
exactly), feed it through the graph as a one-step input, repeat. Everything
is standard ONNX: any onnxruntime user can generate with the one file.
"""
from __future__ import annotations

from spec import model as S
from spec.errors import SpecError, did_you_mean

from .ir import Value, at
from .lower import Lowering
from .ops.scan import Body
from .recurrent import StepBuilder, run_scan


def _sample(g, logits: Value, temperature: Value, seed: Value, step: Value, salt: int) -> Value:
    """argmax(logits + temperature * Gumbel noise): a sample of softmax(logits / temperature)."""
    u = g.apply("uniform", logits, seed, step, salt=salt)
    tiny = g.lift(1e-20, like=u)
    gumbel = -g.apply("log", -g.apply("log", u + tiny) + tiny)
    return g.apply("argmax", logits + temperature * gumbel, axis=-1)


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
        self._target = None
        self._layer_calls = 0
        self._sb = sb
        self._token_input = token_input
        self.recurrent_state = states
        self.recurrent_final = {}

    def lookup(self, name, loc):
        if name in self.params and name not in self.env and name not in self._defs:
            return self._sb.capture(self.params[name].value)
        if name in self.spec.inputs and name != self._token_input:
            raise SpecError(f"generation feeds only {self._token_input!r}, but the graph also reads {name!r}", loc)
        return super().lookup(name, loc)

    def input_value(self, name):
        return self.inputs[name]

    def add_param(self, name, shape, init_kind, init_args=None, trainable=True, loc=None, kind="param", seed=None):
        return self._sb.capture(self.params[name].value)


def build_generator(spec: S.Spec, dtype: str):
    """The sampling graph's Builder outputs, or None when the spec has no `generate`."""
    from .training import _Builder

    cfg = spec.generate
    if not cfg:
        return None
    token_input, logits_name = cfg["input"], cfg["logits"]
    loc = spec.locate("generate")
    if token_input not in spec.inputs:
        raise SpecError(f"generate.input {token_input!r} is not an input", spec.locate("generate", "input"),
                        did_you_mean(token_input, spec.inputs))
    decl = spec.inputs[token_input]
    if decl.dtype not in ("int64", "int32") or len(decl.shape) != 2:
        raise SpecError(f"generate.input {token_input!r} must be int token ids [N, T]", spec.locate("generate", "input"))
    if logits_name not in {t for a in spec.graph for t in a.targets}:
        raise SpecError(f"generate.logits {logits_name!r} is not a graph node", spec.locate("generate", "logits"))

    low = Lowering(spec, mode="infer", float_dtype=dtype)
    g = low.graph
    prompt = g.add_input("prompt", "int64", ("P",))
    max_len = g.add_input("max_len", "int64", ())
    temperature = g.add_input("temperature", dtype, ())
    seed = g.add_input("seed", "int64", ())
    low.inputs[token_input] = g.apply("unsqueeze", g.cast(prompt, decl.dtype), axes=(0,))  # [1, P]
    low.recurrent_state, low.recurrent_final = {}, {}
    with at(loc):
        logits = low.evaluate_name(logits_name)
        if not isinstance(logits, Value) or logits.rank != 3:
            raise SpecError(f"generate.logits {logits_name!r} must be [N, T, vocab], got "
                            f"{getattr(logits, 'type', logits)}", spec.locate("generate", "logits"))
        if not low.recurrent_final:
            raise SpecError("generate needs a recurrent layer (rnn, lstm or gru) to carry the context", loc)
        last = g.apply("index", logits, spec=(0, -1))  # [V]
        prefixes = list(low.recurrent_final)
        states = [s for p in prefixes for s in low.recurrent_final[p]]
        counts = [len(low.recurrent_final[p]) for p in prefixes]

        # The loop: carries = (logits of the last token, every recurrent state).
        steps = g.apply("arange", max_len)
        sb = StepBuilder(g)
        bg = sb.graph
        t = bg.add_input("t", "int64", ())
        c_logits = bg.add_input("logits", last.dtype, last.shape)
        c_states = [bg.add_input(f"state{k}", s.dtype, s.shape, unique=True) for k, s in enumerate(states)]
        token = _sample(bg, c_logits, sb.capture(temperature), sb.capture(seed), t, salt=1)
        carried, k = {}, 0
        for p, n in zip(prefixes, counts):
            carried[p] = c_states[k:k + n]
            k += n
        step_low = _StepLowering(low, sb, token_input, bg.apply("reshape", bg.cast(token, decl.dtype), shape=(1, 1)), carried)
        new_logits = step_low.evaluate_name(logits_name)
        new_last = bg.apply("index", new_logits, spec=(0, -1))
        new_states = [s for p in prefixes for s in step_low.recurrent_final[p]]
        body = Body(bg, [c_logits] + c_states, [t], sb.nonseqs, [new_last] + new_states, [token])
        res = run_scan(g, body, [last] + states, [steps], sb.nonseq_outer, optimize=False, stack=(False,) * (1 + len(states)))
    b = _Builder(low)
    b.out("tokens", "output", res[-1])
    return b

