"""Optimizers against a NumPy transcription of PyTorch's torch.optim update
rules, in float64: the compiled `train` graph (stepped by the runtime's
Trainer) must follow the reference step by step, where the reference is fed
the gradients of the compiled `grads` graph at the reference's own
parameters. Also: `apply` agrees with `train`, `lr` is a graph input, and
the step counter drives Adam's bias correction."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from compiler.check import Runner
from compiler.training import compile_spec
from runtime.trainer import Trainer
from spec import spec_from_dict

RTOL = 1e-10
ATOL = 1e-14
D, K, N = 3, 2, 5
STEPS = 5


def make_spec(optimizer: dict, **train):
    return spec_from_dict({
        "flowgrad": 1,
        "name": "lin",
        "dims": {"D": D, "K": K},
        "inputs": {"x": {"shape": ["N", "D"]}, "y": {"shape": ["N", "K"]}},
        "params": {"W": {"shape": ["D", "K"], "init": "normal"}, "b": {"shape": ["K"], "init": "zeros"}},
        "loss": "mean((x @ W + b - y) ** 2)",
        "train": {"optimizer": optimizer, "dtype": "float64", **train},
    })


def raw_grads_runner(spec):
    """The compiled gradients-only graph of the loss alone (no l1/l2 penalty,
    no clipping): the input of the reference's own penalty and clipping."""
    bare = dataclasses.replace(spec, train={k: v for k, v in spec.train.items() if k not in ("l1", "l2", "clip_norm")})
    cm = compile_spec(bare, "float64", graphs=("grads",))
    runner = Runner(cm.graphs["grads"].model)

    def grads(params, batch):
        out = runner({**params, **batch})
        return {n: out[f"grad/{n}"] for n in params}

    return grads


def batches(seed=0, n=STEPS):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(N, D)), "y": rng.normal(size=(N, K))} for _ in range(n)]


def start_params(seed=1):
    rng = np.random.default_rng(seed)
    return {"W": rng.normal(size=(D, K)), "b": rng.normal(scale=0.5, size=(K,))}


# ------------------------------------------------------------------ the NumPy reference (torch.optim)
class Reference:
    """torch.optim's single-tensor update rules (amsgrad, maximize, dampening, centered,
    lr_decay and initial_accumulator_value included), preceded by the train section's
    penalties (added to the gradient) and global-norm clipping
    (torch.nn.utils.clip_grad_norm_)."""

    def __init__(self, optimizer: dict, clip_norm=None, l1=0.0, l2=0.0):
        (self.name, hp), = optimizer.items()
        self.hp = dict(hp)
        self.clip_norm, self.l1, self.l2 = clip_norm, l1, l2
        self.state: dict[str, dict] = {}
        self.clip_scales: list[float] = []

    def step(self, params: dict, grads: dict, lr: float, t: int) -> dict:
        """New parameters; t is PyTorch's 1-based step count."""
        grads = {n: g + self.l2 * params[n] + self.l1 * np.sign(params[n]) for n, g in grads.items()}
        if self.clip_norm:
            total = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
            coef = min(self.clip_norm / (total + 1e-6), 1.0)
            self.clip_scales.append(coef)
            grads = {n: g * coef for n, g in grads.items()}
        if self.hp.get("maximize"):  # torch negates the gradient before the optimizer's own work
            grads = {n: -g for n, g in grads.items()}
        return {n: getattr(self, self.name)(n, params[n].copy(), grads[n].copy(), lr, t) for n in params}

    def sgd(self, n, p, g, lr, t):
        mu, wd, nesterov = self.hp.get("momentum", 0.0), self.hp.get("weight_decay", 0.0), self.hp.get("nesterov", False)
        dampening = self.hp.get("dampening", 0.0)
        if wd:
            g = g + wd * p
        if mu:
            st = self.state.setdefault(n, {})
            st["buf"] = g.copy() if "buf" not in st else mu * st["buf"] + (1 - dampening) * g
            g = g + mu * st["buf"] if nesterov else st["buf"]
        return p - lr * g

    def adagrad(self, n, p, g, lr, t):
        eps, wd = self.hp.get("eps", 1e-10), self.hp.get("weight_decay", 0.0)
        st = self.state.setdefault(n, {"sum": np.full_like(p, self.hp.get("initial_accumulator_value", 0.0))})
        if wd:
            g = g + wd * p
        clr = lr / (1 + (t - 1) * self.hp.get("lr_decay", 0.0))
        st["sum"] = st["sum"] + g * g
        return p - clr * g / (np.sqrt(st["sum"]) + eps)

    def rmsprop(self, n, p, g, lr, t):
        alpha, eps = self.hp.get("alpha", 0.99), self.hp.get("eps", 1e-8)
        mu, wd = self.hp.get("momentum", 0.0), self.hp.get("weight_decay", 0.0)
        st = self.state.setdefault(n, {"square_avg": np.zeros_like(p), "buf": np.zeros_like(p), "grad_avg": np.zeros_like(p)})
        if wd:
            g = g + wd * p
        st["square_avg"] = alpha * st["square_avg"] + (1 - alpha) * g * g
        if self.hp.get("centered"):
            st["grad_avg"] = st["grad_avg"] + (1 - alpha) * (g - st["grad_avg"])  # torch's lerp_
            avg = np.sqrt(st["square_avg"] - st["grad_avg"] ** 2) + eps
        else:
            avg = np.sqrt(st["square_avg"]) + eps
        if mu > 0:
            st["buf"] = mu * st["buf"] + g / avg
            return p - lr * st["buf"]
        return p - lr * g / avg

    def adam(self, n, p, g, lr, t, decoupled=False):
        b1, b2 = self.hp.get("beta1", 0.9), self.hp.get("beta2", 0.999)
        eps = self.hp.get("eps", 1e-8)
        wd = self.hp.get("weight_decay", 0.01 if decoupled else 0.0)
        st = self.state.setdefault(n, {"exp_avg": np.zeros_like(p), "exp_avg_sq": np.zeros_like(p),
                                       "max_exp_avg_sq": np.zeros_like(p)})
        if decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
        st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
        bias_correction1 = 1 - b1 ** t
        bias_correction2 = 1 - b2 ** t
        step_size = lr / bias_correction1
        if self.hp.get("amsgrad"):
            st["max_exp_avg_sq"] = np.maximum(st["max_exp_avg_sq"], st["exp_avg_sq"])
            denom = np.sqrt(st["max_exp_avg_sq"]) / np.sqrt(bias_correction2) + eps
        else:
            denom = np.sqrt(st["exp_avg_sq"]) / np.sqrt(bias_correction2) + eps
        return p - step_size * st["exp_avg"] / denom

    def adamw(self, n, p, g, lr, t):
        return self.adam(n, p, g, lr, t, decoupled=True)


class TorchReference:
    """torch.optim itself (foreach=False, float64), stepped with the same gradients, penalties
    and clipping (torch.nn.utils.clip_grad_norm_) as Reference: what a PyTorch script does."""

    CLASSES = {"sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}

    def __init__(self, optimizer: dict, clip_norm=None, l1=0.0, l2=0.0):
        self.torch = pytest.importorskip("torch")
        (self.name, hp), = optimizer.items()
        self.kw = dict(hp)
        if "beta1" in self.kw or "beta2" in self.kw:  # flowgrad's beta1, beta2 are PyTorch's betas
            self.kw["betas"] = (self.kw.pop("beta1", 0.9), self.kw.pop("beta2", 0.999))
        self.clip_norm, self.l1, self.l2 = clip_norm, l1, l2
        self.tensors: dict | None = None
        self.opt = None
        self.clip_scales: list[float] = []

    def step(self, params: dict, grads: dict, lr: float, t: int) -> dict:
        torch = self.torch
        if self.opt is None:
            self.tensors = {n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in params.items()}
            cls = getattr(torch.optim, self.CLASSES[self.name])
            self.opt = cls(list(self.tensors.values()), foreach=False, **self.kw)
        with torch.no_grad():
            for n, v in params.items():
                self.tensors[n].copy_(torch.from_numpy(np.asarray(v, dtype=np.float64)))
        for n, g in grads.items():
            p = params[n]
            self.tensors[n].grad = torch.from_numpy(g + self.l2 * p + self.l1 * np.sign(p))
        if self.clip_norm:
            total = float(torch.nn.utils.clip_grad_norm_(list(self.tensors.values()), self.clip_norm))
            self.clip_scales.append(min(self.clip_norm / (total + 1e-6), 1.0))
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        for st in self.opt.state.values():  # torch's own step count is flowgrad's t
            assert "step" not in st or int(st["step"]) == t
        return {n: self.tensors[n].detach().numpy().copy() for n in params}

    def state(self, n: str) -> dict:
        return {k: v.numpy() for k, v in self.opt.state[self.tensors[n]].items() if k != "step"}


CONFIGS = {
    "sgd": ({"sgd": {"lr": 0.1}}, {}),
    "sgd_momentum": ({"sgd": {"lr": 0.1, "momentum": 0.9}}, {}),
    "sgd_nesterov": ({"sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True}}, {}),
    "sgd_weight_decay": ({"sgd": {"lr": 0.1, "weight_decay": 0.3}}, {}),
    "sgd_momentum_weight_decay": ({"sgd": {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.3}}, {}),
    "adagrad": ({"adagrad": {"lr": 0.1}}, {}),
    "adagrad_eps_weight_decay": ({"adagrad": {"lr": 0.1, "eps": 0.05, "weight_decay": 0.2}}, {}),
    "rmsprop": ({"rmsprop": {"lr": 0.01}}, {}),
    "rmsprop_alpha_eps": ({"rmsprop": {"lr": 0.01, "alpha": 0.8, "eps": 0.05}}, {}),
    "rmsprop_momentum": ({"rmsprop": {"lr": 0.01, "momentum": 0.9}}, {}),
    "rmsprop_momentum_weight_decay": ({"rmsprop": {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.2}}, {}),
    "adam": ({"adam": {"lr": 0.05}}, {}),
    "adam_betas_eps": ({"adam": {"lr": 0.05, "beta1": 0.5, "beta2": 0.9, "eps": 0.05}}, {}),
    "adam_weight_decay": ({"adam": {"lr": 0.05, "weight_decay": 0.3}}, {}),
    "adamw": ({"adamw": {"lr": 0.05, "weight_decay": 0.3}}, {}),
    "adamw_default_decay": ({"adamw": {"lr": 0.05}}, {}),
    "clip_norm_sgd": ({"sgd": {"lr": 0.1}}, {"clip_norm": 0.05}),
    "clip_norm_adam": ({"adam": {"lr": 0.05}}, {"clip_norm": 0.05}),
    "clip_norm_inactive": ({"sgd": {"lr": 0.1, "momentum": 0.9}}, {"clip_norm": 1e6}),
    "l1": ({"sgd": {"lr": 0.1}}, {"l1": 0.05}),
    "l2": ({"sgd": {"lr": 0.1}}, {"l2": 0.1}),
    "l1_l2_clip_momentum": ({"sgd": {"lr": 0.1, "momentum": 0.9}}, {"l1": 0.05, "l2": 0.1, "clip_norm": 0.1}),
    "l2_adamw": ({"adamw": {"lr": 0.05, "weight_decay": 0.1}}, {"l2": 0.1}),
    # torch.optim's options: SGD's dampening (from the second update on), maximize everywhere,
    # Adagrad's lr_decay and initial_accumulator_value, RMSprop's centered, Adam's amsgrad
    "sgd_dampening": ({"sgd": {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}}, {}),
    "sgd_dampening_one_weight_decay_clip": ({"sgd": {"lr": 0.1, "momentum": 0.5, "dampening": 1.0, "weight_decay": 0.3}},
                                            {"clip_norm": 0.05}),
    "sgd_dampening_no_momentum": ({"sgd": {"lr": 0.1, "dampening": 0.5}}, {}),
    "sgd_maximize": ({"sgd": {"lr": 0.1, "maximize": True}}, {}),
    "sgd_nesterov_maximize_weight_decay": ({"sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.3,
                                                    "maximize": True}}, {}),
    "sgd_dampening_maximize_l1_l2_clip": ({"sgd": {"lr": 0.1, "momentum": 0.9, "dampening": 0.5, "maximize": True}},
                                          {"l1": 0.05, "l2": 0.1, "clip_norm": 0.1}),
    "adagrad_lr_decay": ({"adagrad": {"lr": 0.1, "lr_decay": 0.5}}, {}),
    "adagrad_initial_accumulator_value": ({"adagrad": {"lr": 0.1, "initial_accumulator_value": 0.2}}, {}),
    "adagrad_maximize": ({"adagrad": {"lr": 0.1, "maximize": True}}, {}),
    "adagrad_all_weight_decay_clip": ({"adagrad": {"lr": 0.1, "lr_decay": 0.3, "initial_accumulator_value": 0.1, "eps": 0.01,
                                                   "weight_decay": 0.2, "maximize": True}}, {"clip_norm": 0.05}),
    "rmsprop_centered": ({"rmsprop": {"lr": 0.01, "centered": True}}, {}),
    "rmsprop_centered_momentum_weight_decay_clip": ({"rmsprop": {"lr": 0.01, "alpha": 0.8, "centered": True, "momentum": 0.5,
                                                                 "weight_decay": 0.2}}, {"clip_norm": 0.05}),
    "rmsprop_maximize_momentum": ({"rmsprop": {"lr": 0.01, "momentum": 0.9, "maximize": True}}, {}),
    "adam_amsgrad": ({"adam": {"lr": 0.05, "beta2": 0.5, "amsgrad": True}}, {}),
    "adam_amsgrad_weight_decay_clip": ({"adam": {"lr": 0.05, "beta1": 0.5, "beta2": 0.6, "eps": 0.01, "amsgrad": True,
                                                 "weight_decay": 0.3}}, {"clip_norm": 0.05}),
    "adamw_amsgrad": ({"adamw": {"lr": 0.05, "beta2": 0.5, "amsgrad": True, "weight_decay": 0.3}}, {}),
    "adam_maximize_weight_decay": ({"adam": {"lr": 0.05, "weight_decay": 0.3, "maximize": True}}, {}),
    "adamw_maximize_amsgrad": ({"adamw": {"lr": 0.05, "beta2": 0.5, "amsgrad": True, "maximize": True}}, {}),
}


def reference_for(optimizer, train, kind="numpy"):
    cls = TorchReference if kind == "torch" else Reference
    return cls(optimizer, train.get("clip_norm"), train.get("l1", 0.0), train.get("l2", 0.0))


def initial_trainer_state(cm, params):
    """The compiled model's initial optimizer state (zeros, or Adagrad's initial_accumulator_value)
    and the given parameters."""
    state = {k: v for k, v in cm.initial_state().items() if k not in cm.params}
    return {**state, **{n: v.copy() for n, v in params.items()}}


def assert_amsgrad_engaged(state: dict):
    """max_v differs from v somewhere: the test tests the running maximum."""
    maxes = [k for k in state if k.startswith("max_v/")]
    assert maxes and any(np.any(state[k] > state["v/" + k.split("/", 1)[1]]) for k in maxes), \
        "the second moment never fell: amsgrad's maximum was never used"


def assert_params_close(got, want, what):
    for n in want:
        np.testing.assert_allclose(got[n], want[n], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {n}")


@pytest.mark.parametrize("reference", ["numpy", "torch"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_graph_follows_torch_reference(name, reference):
    """numpy: the NumPy transcription of torch.optim's rules; torch: torch.optim itself (skipped
    without torch), to 1e-12."""
    optimizer, train = CONFIGS[name]
    spec = make_spec(optimizer, **train)
    cm = compile_spec(spec, graphs=("train",))
    assert cm.float_dtype == "float64"
    grads_at = raw_grads_runner(spec)
    ref = reference_for(optimizer, train, reference)
    lr = next(iter(optimizer.values()))["lr"]
    rtol = 1e-12 if reference == "torch" else RTOL

    params = start_params()
    trainer = Trainer(cm, "cpu", threads=1, state=initial_trainer_state(cm, params))
    for step, batch in enumerate(batches()):
        params = ref.step(params, grads_at(params, batch), lr, t=step + 1)
        trainer.train_step("main", batch, lr=lr, step=step)
        got = trainer.state_numpy()
        for n in params:
            np.testing.assert_allclose(got[n], params[n], rtol=rtol, atol=ATOL, err_msg=f"{name} step {step}: {n}")
    if next(iter(optimizer.values())).get("amsgrad"):
        assert_amsgrad_engaged(got)
    if train.get("clip_norm") == 1e6:
        assert all(s == 1.0 for s in ref.clip_scales)
    elif train.get("clip_norm"):
        assert all(s < 1.0 for s in ref.clip_scales), "clipping never engaged; the test would not test it"


def test_raw_gradient_is_the_analytic_gradient():
    """The reference's input: the grads graph gives d/dW, d/db of mean((xW + b - y)^2)."""
    spec = make_spec({"sgd": {"lr": 0.1}})
    grads_at = raw_grads_runner(spec)
    params, batch = start_params(), batches(n=1)[0]
    r = batch["x"] @ params["W"] + params["b"] - batch["y"]
    dr = 2 * r / r.size
    g = grads_at(params, batch)
    np.testing.assert_allclose(g["W"], batch["x"].T @ dr, rtol=1e-12)
    np.testing.assert_allclose(g["b"], dr.sum(axis=0), rtol=1e-12)


def test_grads_graph_includes_penalties():
    """With l1/l2 the grads graph (which feeds `apply` in gradient accumulation)
    returns the penalised gradient, the same one `train` steps along."""
    spec = make_spec({"sgd": {"lr": 0.1}}, l1=0.05, l2=0.1)
    cm = compile_spec(spec, graphs=("grads",))
    params, batch = start_params(), batches(n=1)[0]
    out = Runner(cm.graphs["grads"].model)({**params, **batch})
    raw = raw_grads_runner(spec)(params, batch)
    for n in params:
        np.testing.assert_allclose(out[f"grad/{n}"], raw[n] + 0.1 * params[n] + 0.05 * np.sign(params[n]), rtol=1e-12)


def _feeds(graph, values: dict) -> dict:
    feeds = {}
    for i in graph.inputs:
        feeds[i.name] = np.asarray(values[i.name], dtype=i.dtype)
    return feeds


@pytest.mark.parametrize("name", ["sgd_nesterov", "rmsprop_momentum", "adam_weight_decay", "adamw", "l1_l2_clip_momentum",
                                  "sgd_dampening_maximize_l1_l2_clip", "adagrad_all_weight_decay_clip",
                                  "rmsprop_centered_momentum_weight_decay_clip", "adam_amsgrad_weight_decay_clip"])
def test_apply_graph_matches_train_graph(name):
    """`apply` fed the `grads` graph's gradients makes the same update as `train`."""
    optimizer, train = CONFIGS[name]
    cm = compile_spec(make_spec(optimizer, **train), graphs=("train", "grads", "apply"))
    runners = {k: Runner(g.model) for k, g in cm.graphs.items()}
    rng = np.random.default_rng(7)
    params = start_params()
    state = initial_trainer_state(cm, params)
    for sname in state:
        if "/" in sname:  # non-zero optimizer state, as mid-training (second moments positive)
            state[sname] = np.abs(rng.normal(size=state[sname].shape)) * 0.1
    batch = batches(n=1)[0]
    control = {"lr": 0.03, "step": 3, "seed": 0}
    values = {**state, **batch, **control}
    train_out = runners["train"](_feeds(cm.graphs["train"], values))
    grads = runners["grads"](_feeds(cm.graphs["grads"], values))
    apply_out = runners["apply"](_feeds(cm.graphs["apply"], {**values, **grads}))
    assert set(apply_out) == {k for k in train_out if k.startswith("next/")}
    for k, v in apply_out.items():
        np.testing.assert_allclose(v, train_out[k], rtol=RTOL, atol=ATOL, err_msg=k)
    np.testing.assert_allclose(grads["loss"], train_out["loss"], rtol=RTOL)


@pytest.mark.parametrize("name", ["sgd_momentum", "adam", "adamw", "clip_norm_adam"])
def test_lr_is_a_graph_input(name):
    """Changing lr between steps needs no recompile, and each step uses the lr it is given."""
    optimizer, train = CONFIGS[name]
    spec = make_spec(optimizer, **train)
    cm = compile_spec(spec, graphs=("train",))
    graph = cm.graphs["train"]
    lr_in = [i for i in graph.inputs if i.name == "lr"]
    assert lr_in and lr_in[0].role == "control" and lr_in[0].dtype == "float64" and lr_in[0].shape == []
    model_bytes = graph.model.SerializeToString()

    grads_at = raw_grads_runner(spec)
    ref = reference_for(optimizer, train)
    lrs = [0.1, 0.02, 0.3, 0.0, 0.05]
    params = start_params()
    trainer = Trainer(cm, "cpu", threads=1, state=initial_trainer_state(cm, params))
    for step, (batch, lr) in enumerate(zip(batches(), lrs)):
        before = trainer.state_numpy()
        params = ref.step(params, grads_at(params, batch), lr, t=step + 1)
        trainer.train_step("main", batch, lr=lr, step=step)
        got = trainer.state_numpy()
        assert_params_close(got, params, f"{name} step {step} lr {lr}")
        if lr == 0.0:
            for n in ("W", "b"):
                np.testing.assert_array_equal(got[n], before[n])
    assert graph.model.SerializeToString() == model_bytes  # the same compiled graph throughout

    # The same state and batch under two learning rates: different steps, each as the reference says.
    state = initial_trainer_state(cm, start_params())
    batch = batches(n=1)[0]
    runner = Runner(graph.model)
    outs = {}
    for lr in (0.01, 0.2):
        outs[lr] = runner(_feeds(graph, {**state, **batch, "lr": lr, "step": 0, "seed": 0}))
        want = reference_for(optimizer, train).step(start_params(), grads_at(start_params(), batch), lr, t=1)
        assert_params_close({n: outs[lr][f"next/{n}"] for n in want}, want, f"lr={lr}")
    assert not np.allclose(outs[0.01]["next/W"], outs[0.2]["next/W"])


def test_step_counter_drives_adam_bias_correction():
    """step is the number of updates done so far: step 0 is t=1, where Adam's
    bias-corrected first step is lr * g / (|g| + eps) from zero moments."""
    optimizer = {"adam": {"lr": 0.05, "eps": 1e-3}}
    spec = make_spec(optimizer)
    cm = compile_spec(spec, graphs=("train",))
    graph = cm.graphs["train"]
    step_in = [i for i in graph.inputs if i.name == "step"]
    assert step_in and step_in[0].role == "control" and step_in[0].dtype == "int64"
    runner = Runner(graph.model)
    params, batch = start_params(), batches(n=1)[0]
    g = raw_grads_runner(spec)(params, batch)
    zero_state = initial_trainer_state(cm, params)

    out0 = runner(_feeds(graph, {**zero_state, **batch, "lr": 0.05, "step": 0, "seed": 0}))
    for n in params:
        step0 = params[n] - out0[f"next/{n}"]
        assert np.all(np.isfinite(step0))
        np.testing.assert_allclose(step0, 0.05 * g[n] / (np.abs(g[n]) + 1e-3), rtol=1e-9)

    # Further along, the same zero moments and gradient give the t = step + 1 correction.
    for step in (1, 4, 99):
        out = runner(_feeds(graph, {**zero_state, **batch, "lr": 0.05, "step": step, "seed": 0}))
        want = Reference(optimizer).step(params, g, 0.05, t=step + 1)
        assert_params_close({n: out[f"next/{n}"] for n in want}, want, f"step {step}")
        assert not np.allclose(out["next/W"], out0["next/W"])


@pytest.mark.parametrize("name", ["adam", "sgd_nesterov", "rmsprop_momentum"])
def test_fused_update_equals_per_parameter_update(name, monkeypatch):
    """Small models update all parameters as one flat vector; large ones per parameter. Same numbers."""
    import compiler.training as training
    from runtime.trainer import Trainer

    optimizer, train = CONFIGS[name]
    spec = make_spec(optimizer, clip_norm=0.5, **train)
    results = {}
    for limit in (training.FUSED_UPDATE_MAX_ELEMENTS, 0):
        monkeypatch.setattr(training, "FUSED_UPDATE_MAX_ELEMENTS", limit)
        cm = compile_spec(spec, graphs=("train",))
        fused = training.fused_update(cm.params, cm.objectives[0])
        assert fused == (limit > 0)
        trainer = Trainer(cm, "cpu", threads=1, state=initial_trainer_state(cm, start_params()))
        for step, batch in enumerate(batches()):
            trainer.train_step("main", batch, lr=0.05, step=step)
        results[fused] = {k: v for k, v in trainer.state_numpy().items() if k in cm.params}
    for k in results[True]:
        np.testing.assert_allclose(results[True][k], results[False][k], rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ the training loop: schedules, accumulation, resume
def _torch_schedulers():
    """flowgrad's lr_schedule settings and the torch.optim.lr_scheduler code a PyTorch script
    would write for them, stepped once per optimizer update (TOTAL updates, SPE per epoch)."""
    from torch.optim import lr_scheduler as L

    total, spe, w = TOTAL_UPDATES, 4, 5
    lin = lambda o: L.LinearLR(o, start_factor=1 / w, end_factor=1.0, total_iters=w - 1)  # noqa: E731
    return {
        "constant": ({"constant": {}}, lambda o: L.LambdaLR(o, lambda k: 1.0)),
        "step": ({"step": {"every": 6, "gamma": 0.5}}, lambda o: L.StepLR(o, 6, 0.5)),
        "step_default_gamma": ({"step": {"every": 6}}, lambda o: L.StepLR(o, 6)),
        # PyTorch's per-epoch StepLR(step_size=2), stepped once an epoch: every update of an epoch
        # takes its rate, which a StepLR of 2 epochs' updates stepped per update gives too
        "step_epochs": ({"step": {"every_epochs": 2, "gamma": 0.5}}, lambda o: L.StepLR(o, 2 * spe, 0.5)),
        # gamma per epoch applied smoothly: torch's ExponentialLR of gamma ** (1 / steps per epoch)
        # stepped per update (ExponentialLR(gamma) stepped per epoch agrees at each epoch's first update)
        "exponential": ({"exponential": {"gamma": 0.5}}, lambda o: L.ExponentialLR(o, 0.5 ** (1 / spe))),
        # the last update takes min_lr: T_max is the number of updates less one
        "cosine": ({"cosine": {"min_lr": 0.001}}, lambda o: L.CosineAnnealingLR(o, total - 1, 0.001)),
        "cosine_null": ({"cosine": None}, lambda o: L.CosineAnnealingLR(o, total - 1)),
        # a warmup's first update takes lr / warmup, its last lr
        "warmup": ({"warmup": w}, lin),
        "warmup_constant": ({"warmup": w, "constant": None}, lin),
        # the cosine starts after the warmup ...
        "warmup_cosine": ({"warmup": w, "cosine": {"min_lr": 0.001}},
                          lambda o: L.SequentialLR(o, [lin(o), L.CosineAnnealingLR(o, total - w - 1, 0.001)], [w])),
        # ... a step or exponential decay counts from the first update, under the warmup
        "warmup_step": ({"warmup": w, "step": {"every": 3, "gamma": 0.5}},
                        lambda o: L.ChainedScheduler([lin(o), L.StepLR(o, 3, 0.5)])),
        "warmup_exponential": ({"warmup": w, "exponential": {"gamma": 0.5}},
                               lambda o: L.ChainedScheduler([lin(o), L.ExponentialLR(o, 0.5 ** (1 / spe))])),
    }


TOTAL_UPDATES = 20


@pytest.mark.parametrize("kind", ["constant", "step", "step_default_gamma", "step_epochs", "exponential", "cosine", "cosine_null",
                                  "warmup", "warmup_constant", "warmup_cosine", "warmup_step", "warmup_exponential"])
def test_lr_schedules_follow_torch_lr_scheduler(kind):
    """Each lr_schedule gives, at update k, the lr that the PyTorch scheduler written for it
    (stepped once per optimizer step) gives (see the schema's lr_schedule descriptions)."""
    torch = pytest.importorskip("torch")
    import warnings

    from runtime.schedules import lr_schedule

    cfg, make = _torch_schedulers()[kind]
    ours = lr_schedule(0.1, cfg, TOTAL_UPDATES, 4)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (SequentialLR's and ChainedScheduler's notes on step order)
        sched = make(opt)
        want = []
        for _ in range(TOTAL_UPDATES):
            want.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    np.testing.assert_allclose([ours(k) for k in range(TOTAL_UPDATES)], want, rtol=1e-12, atol=0)
    if kind == "exponential":  # torch's per-epoch ExponentialLR at each epoch's first update
        assert all(abs(ours(4 * e) - 0.1 * 0.5 ** e) < 1e-15 for e in range(5))


# a validation loss that falls, stalls, wobbles within the threshold, falls again and ends flat (a
# NaN epoch counts as no improvement, as in torch), and an accuracy read the other way round
PLATEAU_LOSSES = [1.0, 0.8, 0.79995, 0.8, 0.81, 0.7, 0.7, 0.69, 0.6999, 0.5, 0.5, 0.5, float("nan"), 0.5, 0.4999,
                  0.45, 0.45, 0.45, 0.45, 0.45, 0.45, 0.45, 0.44] + [0.44] * 12
PLATEAU_CASES = {
    "defaults": {},
    "rel": {"factor": 0.5, "patience": 1, "threshold": 0.01},
    "abs": {"factor": 0.5, "patience": 1, "threshold": 0.01, "threshold_mode": "abs"},
    "patience_0": {"factor": 0.5, "patience": 0, "threshold": 0},
    "cooldown": {"factor": 0.5, "patience": 1, "cooldown": 2},
    "min_lr": {"factor": 0.3, "patience": 0, "min_lr": 0.002},
    "eps": {"factor": 0.9, "patience": 0, "min_lr": 0.0, "eps": 0.005},
    "max_rel": {"mode": "max", "factor": 0.5, "patience": 1, "threshold": 0.01},
    "max_abs_cooldown": {"mode": "max", "factor": 0.5, "patience": 1, "threshold": 0.05, "threshold_mode": "abs",
                         "cooldown": 1, "min_lr": 0.01},
}


@pytest.mark.parametrize("case", list(PLATEAU_CASES))
def test_the_plateau_schedule_follows_torch_reduce_lr_on_plateau(case):
    """lr_schedule: {plateau: {...}} gives, after each epoch's value of its metric, the lr of torch's
    ReduceLROnPlateau(optimizer, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr,
    eps) stepped with that value (its defaults as torch's; max mode on an accuracy), for each
    objective's lr (param group); a replay of the values (what a resume does) ends in the same state."""
    torch = pytest.importorskip("torch")
    from runtime.schedules import Plateau

    settings = PLATEAU_CASES[case]
    mode = settings.get("mode", "min")
    values = PLATEAU_LOSSES if mode == "min" else [1 - v for v in PLATEAU_LOSSES]
    lrs = {"first": 0.1, "second": 0.03}
    ours = Plateau({"metric": "valid_accuracy" if mode == "max" else "valid_loss", **settings}, mode, lrs)
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs.values()])
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **{"mode": mode, **settings})
    got, want = [], []
    for value in values:
        ours.step(value)
        theirs.step(value)
        got.append(list(ours.lrs.values()))
        want.append([g["lr"] for g in opt.param_groups])
    assert got == want  # (the same float operations: exactly)
    assert len({tuple(w) for w in want}) > 1, "the lr never fell: the case tests nothing"
    assert (ours.best, ours.bad_epochs, ours.cooldown_counter) == (theirs.best, theirs.num_bad_epochs,
                                                                   theirs.cooldown_counter)
    records = [{"epoch": i + 1, ours.metric: v} for i, v in enumerate(values)]
    replayed = Plateau({"metric": ours.metric, **settings}, mode, lrs).replay(records)
    assert vars(replayed) == {**vars(ours), "best": replayed.best} and replayed.best == ours.best


def test_a_warmup_scales_the_plateau_rate_as_torch_linear_lr_chained_with_it():
    """{plateau: {...}, warmup: W}: update k (from 0) takes (k + 1) / W of the plateau's rate, as
    torch's LinearLR(1/W, total_iters=W - 1) stepped per update with ReduceLROnPlateau stepped per
    epoch on the same optimizer: a reduction at an epoch's end inside the warmup lowers the rate it
    ramps to, and the warmup goes on from where it was."""
    torch = pytest.importorskip("torch")
    import warnings

    from runtime.schedules import Plateau, lr_schedule

    w, spe, epochs = 7, 3, 6
    losses = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    cfg = {"plateau": {"metric": "valid_loss", "factor": 0.5, "patience": 0}, "warmup": w}
    plateau = Plateau(cfg["plateau"], "min", {"main": 0.1})
    ours = lr_schedule(0.1, cfg, epochs * spe, spe, rate=lambda: plateau.lrs["main"])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, total_iters=w - 1)
        reduce = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        got, want = [], []
        for epoch in range(epochs):
            for k in range(epoch * spe, (epoch + 1) * spe):
                got.append(ours(k))
                want.append(opt.param_groups[0]["lr"])
                opt.step()
                warm.step()
            plateau.step(losses[epoch])
            reduce.step(losses[epoch])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # epoch 2 does not improve: from update 6, the warmup's last, the rate is halved, and halved
    # again after epoch 3
    assert got[5] == pytest.approx(0.1 * 6 / w) and got[6] == pytest.approx(0.05) and got[9] == pytest.approx(0.025)


def _loop_spec(optimizer):
    return spec_from_dict({
        "flowgrad": 1, "name": "lin", "dims": {"D": D, "K": K},
        "inputs": {"x": {"shape": ["N", "D"]}, "y": {"shape": ["N", "K"]}},
        "params": {"W": {"shape": ["D", "K"], "init": "ones"}, "b": {"shape": ["K"], "init": "ones"}},
        "loss": "mean((x @ W + b - y) ** 2)",
        "train": {"optimizer": optimizer, "dtype": "float64", "shuffle": False, "batch_size": 3, "clip_norm": 0.5,
                  "lr_schedule": {"warmup": 2, "step": {"every": 3, "gamma": 0.5}}},
    })


LOOP_CONFIGS = ["adam_weight_decay", "adamw", "sgd_nesterov", "rmsprop_momentum", "adagrad", "adam_amsgrad_weight_decay_clip",
                "adamw_maximize_amsgrad", "sgd_dampening", "sgd_dampening_maximize_l1_l2_clip",
                "rmsprop_centered_momentum_weight_decay_clip", "adagrad_all_weight_decay_clip"]


@pytest.mark.parametrize("reference", ["numpy", "torch"])
@pytest.mark.parametrize("name", LOOP_CONFIGS)
def test_the_training_loop_counts_updates_across_accumulation_and_a_resume(tmp_path, name, reference):
    """flowgrad train --accumulate 2 --freeze b, stopped after 5 updates and resumed to 11, makes
    the updates of torch.optim stepping once per 2 batches: Adam's t counts the updates (it goes
    on from 6 after the resume, not from 1), the schedule's lr is that of the update, the gradient
    is clipped after the 2 batches are summed, and the frozen b never moves (nor decays). The
    optimizer state goes on across the resume: amsgrad's max_v, centered's mean_grad, dampened
    momentum (dampened from the second update on, not again from the first after the resume),
    Adagrad's sums from initial_accumulator_value and its lr_decay's t."""
    from runtime import api
    from runtime.checkpoint import load_checkpoint

    optimizer = CONFIGS[name][0]
    spec = _loop_spec(optimizer)
    rng = np.random.default_rng(3)
    data = {"x": rng.normal(size=(20, D)), "y": rng.normal(size=(20, K))}  # 7 batches: 4 updates an epoch
    run_dir = str(tmp_path / "run")
    common = dict(data=data, run_dir=run_dir, threads=1, accumulate=2, freeze=["b"])
    api.train(spec, steps=5, **common)
    state, meta = load_checkpoint(f"{run_dir}/checkpoint.npz")
    assert meta["step"] == 5
    hp = next(iter(optimizer.values()))
    if hp.get("amsgrad"):  # the checkpoint keeps the running maximum, for the resume to go on with
        assert_amsgrad_engaged(state)
    if hp.get("centered"):
        assert "mean_grad/main" in state and np.any(state["mean_grad/main"] != 0)
    api.train(spec, steps=11, resume=True, **common)
    state, meta = load_checkpoint(f"{run_dir}/checkpoint.npz")
    assert meta["step"] == 11

    grads_at = raw_grads_runner(spec)
    lr0 = next(iter(optimizer.values()))["lr"]
    ref = reference_for(optimizer, {"clip_norm": 0.5}, reference)
    params = {"W": np.ones((D, K)), "b": np.ones(K)}
    groups = [(0, 6), (6, 12), (12, 18), (18, 20)]
    for t in range(1, 12):
        lo, hi = groups[(t - 1) % 4]
        batch = {k: v[lo:hi] for k, v in data.items()}
        lr = lr0 * min(1.0, t / 2) * 0.5 ** ((t - 1) // 3)
        params = {"W": ref.step({"W": params["W"]}, {"W": grads_at(params, batch)["W"]}, lr, t)["W"], "b": params["b"]}
    assert ref.clip_scales and min(ref.clip_scales) < 1.0, "clipping never engaged; the test would not test it"
    np.testing.assert_allclose(state["W"], params["W"], rtol=1e-11, atol=1e-14)
    np.testing.assert_array_equal(state["b"], np.ones(K))


@pytest.mark.parametrize("path", ["fresh", "steps_per_call", "init_from", "resume"])
def test_adagrad_initial_accumulator_value_starts_every_run(tmp_path, path):
    """Adagrad's sums start at initial_accumulator_value (not the zeros other optimizer state starts
    at) in a new run, with several steps per call, and warm-started with --init-from (which takes
    the weights alone); a resume goes on with the checkpoint's sums. Each run makes torch.optim's
    updates (lr_decay's t counting from the run's first update)."""
    from runtime import api
    from runtime.checkpoint import load_checkpoint

    optimizer = {"adagrad": {"lr": 0.1, "initial_accumulator_value": 0.5, "lr_decay": 0.2}}
    spec = _loop_spec(optimizer)
    rng = np.random.default_rng(4)
    data = {"x": rng.normal(size=(12, D)), "y": rng.normal(size=(12, K))}  # 4 batches of 3
    common = dict(data=data, threads=1)
    start = {"W": np.ones((D, K)), "b": np.ones(K)}
    first = 0
    if path in ("init_from", "resume"):  # a first run of 4 updates, then 4 more in the run under test
        api.train(spec, steps=4, run_dir=str(tmp_path / "a"), **common)
        before, _ = load_checkpoint(str(tmp_path / "a" / "checkpoint.npz"))
        assert np.all(before["sum_sq/main"] > 0.5)
        if path == "init_from":
            start = {n: before[n] for n in start}
        else:
            first = 4
    if path == "init_from":
        api.train(spec, steps=4, run_dir=str(tmp_path / "b"), init_from=str(tmp_path / "a"), **common)
    elif path == "resume":
        api.train(spec, steps=8, run_dir=str(tmp_path / "a"), resume=True, **common)
    else:
        api.train(spec, steps=4, run_dir=str(tmp_path / "b"), steps_per_call=2 if path == "steps_per_call" else 1,
                  **common)
    state, _ = load_checkpoint(str(tmp_path / ("a" if path == "resume" else "b") / "checkpoint.npz"))

    grads_at = raw_grads_runner(spec)
    ref = Reference(optimizer, clip_norm=0.5)
    params = start
    for t in range(1, first + 5):
        batch = {k: v[3 * ((t - 1) % 4): 3 * ((t - 1) % 4) + 3] for k, v in data.items()}
        lr = 0.1 * min(1.0, t / 2) * 0.5 ** ((t - 1) // 3)
        params = ref.step(params, grads_at(params, batch), lr, t)
    for n in params:
        np.testing.assert_allclose(state[n], params[n], rtol=1e-11, atol=1e-14, err_msg=n)
    sums = np.concatenate([ref.state[n]["sum"].ravel() for n in ("W", "b")])
    np.testing.assert_allclose(state["sum_sq/main"], sums, rtol=1e-11)


def test_a_checkpoint_without_the_new_state_resumes_and_a_changed_option_is_named(tmp_path):
    """A run of Adam (or RMSprop) without amsgrad (centered), as every run before these options
    existed, resumes as it did; turning amsgrad on for the resume is refused as turning momentum
    on is, naming amsgrad (the checkpoint lacks the running maximum it would go on with)."""
    from runtime import api
    from spec.errors import FlowgradError

    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(12, D)), "y": rng.normal(size=(12, K))}
    common = dict(data=data, threads=1, run_dir=str(tmp_path / "run"))
    api.train(_loop_spec({"adam": {"lr": 0.05}}), steps=4, **common)
    assert api.train(_loop_spec({"adam": {"lr": 0.05}}), steps=6, resume=True, **common).steps == 6
    with pytest.raises(FlowgradError) as info:
        api.train(_loop_spec({"adam": {"lr": 0.05, "amsgrad": True}}), steps=8, resume=True, **common)
    assert "lacks max_v/main" in info.value.message and "amsgrad" in info.value.message


# ------------------------------------------------------------------ bad settings
BAD_OPTIMIZERS = [
    ("{sgd: {lr: -0.1}}", "train.optimizer.sgd.lr must be > 0, not -0.1", "above 0"),
    ("{sgd: {lr: .nan}}", "train.optimizer.sgd.lr must be a finite number, not nan", "finite"),
    ("{sgd: {lr: true}}", "train.optimizer.sgd.lr must be a number, not the boolean true", "lr: 0.1"),
    ("{sgd: {lr: 0.1, momentum: 1}}", "train.optimizer.sgd.momentum must be < 1, not 1", "below 1"),
    ("{sgd: {lr: 0.1, nesterov: true}}", "nesterov needs momentum", "momentum: 0.9, nesterov: true"),
    ("{sgd: {lr: 0.1, momentum: 0.0, nesterov: true}}", "nesterov needs momentum", "momentum: 0.9, nesterov: true"),
    ("{sgd: {lr: 0.1, momentum: 0.9, dampening: 1.5}}", "train.optimizer.sgd.dampening must be <= 1, not 1.5", "at most 1"),
    ("{sgd: {lr: 0.1, momentum: 0.9, dampening: -0.1}}", "train.optimizer.sgd.dampening must be >= 0, not -0.1", "at least 0"),
    ("{sgd: {lr: 0.1, momentum: 0.9, nesterov: true, dampening: 0.1}}", "nesterov needs dampening 0, not dampening 0.1",
     "leave out dampening or nesterov"),
    ("{sgd: {lr: 0.1, maximize: 'true'}}", "train.optimizer.sgd.maximize must be true or false, not the string 'true'",
     "maximize: false"),
    ("{adam: {lr: 0.1, beta1: 1.0}}", "train.optimizer.adam.beta1 must be < 1, not 1.0", "below 1"),
    ("{adamw: {lr: 0.1, beta2: -0.1}}", "train.optimizer.adamw.beta2 must be >= 0, not -0.1", "at least 0"),
    ("{adam: {lr: 0.1, betas: [0.9, 0.99]}}", "unknown key 'betas' in train.optimizer.adam",
     "write PyTorch's betas=(b1, b2) as beta1: b1, beta2: b2"),
    ("{adamw: {lr: 0.1, betas: [0.9, 0.99]}}", "unknown key 'betas' in train.optimizer.adamw", "beta1: b1, beta2: b2"),
    ("{adam: {lr: 0.1, amsgrad: 'yes'}}", "train.optimizer.adam.amsgrad must be true or false, not the string 'yes'",
     "amsgrad: false"),
    ("{adamw: {lr: 0.1, amsgrad: 1}}", "train.optimizer.adamw.amsgrad must be true or false, not the number 1", "true or false"),
    ("{adamw: {lr: 0.1, weight_decay: -1}}", "train.optimizer.adamw.weight_decay must be >= 0, not -1", "at least 0"),
    ("{adagrad: {lr: 0.1, eps: 0}}", "train.optimizer.adagrad.eps must be > 0, not 0", "above 0"),
    ("{rmsprop: {lr: 0.1, alpha: 1}}", "train.optimizer.rmsprop.alpha must be < 1, not 1", "below 1"),
    ("{rmsprop: {lr: 0.1, centered: 'on'}}", "train.optimizer.rmsprop.centered must be true or false, not the string 'on'",
     "centered: false"),
    ("{adagrad: {lr: 0.1, lr_decay: -0.1}}", "train.optimizer.adagrad.lr_decay must be >= 0, not -0.1", "at least 0"),
    ("{adagrad: {lr: 0.1, initial_accumulator_value: -1}}",
     "train.optimizer.adagrad.initial_accumulator_value must be >= 0, not -1", "at least 0"),
    ("{adagrad: {lr: 0.1, initial_accumulator_value: .inf}}",
     "train.optimizer.adagrad.initial_accumulator_value must be a finite number, not inf", "finite"),
    ("{adam: {lr: 0.1, maximise: true}}", "unknown key 'maximise' in train.optimizer.adam", "maximize"),
]


@pytest.mark.parametrize("optimizer, message, hint", BAD_OPTIMIZERS)
def test_a_bad_optimizer_setting_is_one_located_line_with_a_hint(optimizer, message, hint):
    """Never silently accepted: a bad value (or a PyTorch key flowgrad does not take) is refused when
    the spec is read or compiled, on one line at its file:line, with a hint."""
    from compiler.training import objectives_of
    from spec import spec_from_text
    from spec.errors import SpecError

    text = ("flowgrad: 1\nname: lin\ndims: {D: 3}\ninputs:\n  x: {shape: [N, D]}\nparams:\n  W: {shape: [D], init: normal}\n"
            f"loss: mean((x @ W) ** 2)\ntrain:\n  optimizer: {optimizer}\n")
    with pytest.raises(SpecError) as info:
        objectives_of(spec_from_text(text, "models/bad.yaml"))
    e = info.value
    errs = getattr(e, "errors", None) or [e]
    assert len(errs) == 1
    e = errs[0]
    assert e.message == message and hint in e.hint
    assert "\n" not in e.message and "\n" not in e.hint
    assert e.loc.file == "models/bad.yaml" and e.loc.line == 10 and e.loc.col >= 14


@pytest.mark.parametrize("name", [n for n in CONFIGS if any(k in n for k in ("dampening", "maximize", "amsgrad", "centered",
                                                                             "lr_decay", "initial_accumulator"))])
def test_the_options_graphs_are_standard_onnx(name):
    """Each torch.optim option's train, grads and apply graphs (fused and per parameter, float32 and
    float64, and the train graph looped for several steps per call) pass onnx.checker and strict
    shape inference at the declared opset."""
    import onnx

    import compiler.training as training
    from compiler.multistep import multi_step

    optimizer, train = CONFIGS[name]
    for dtype in ("float32", "float64"):
        for limit in (training.FUSED_UPDATE_MAX_ELEMENTS, 0):
            old, training.FUSED_UPDATE_MAX_ELEMENTS = training.FUSED_UPDATE_MAX_ELEMENTS, limit
            try:
                cm = compile_spec(make_spec(optimizer, **train), dtype, graphs=("train", "grads", "apply"))
            finally:
                training.FUSED_UPDATE_MAX_ELEMENTS = old
            models = [g.model for g in cm.graphs.values()] + [multi_step(cm.graphs["train"]).model]
            for model in models:
                onnx.checker.check_model(model, full_check=True)
                onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


BAD_PLATEAUS = [
    ("{metric: valid_loss, factor: 1}", "train.lr_schedule.plateau.factor must be < 1, not 1", "below 1"),
    ("{metric: valid_loss, factor: 1.5}", "train.lr_schedule.plateau.factor must be < 1, not 1.5", "below 1"),
    ("{metric: valid_loss, factor: 0}", "train.lr_schedule.plateau.factor must be > 0, not 0", "above 0"),
    ("{metric: valid_loss, patience: -1}", "train.lr_schedule.plateau.patience must be >= 0, not -1", "at least 0"),
    ("{metric: valid_loss, cooldown: -1}", "train.lr_schedule.plateau.cooldown must be >= 0, not -1", "at least 0"),
    ("{metric: valid_loss, min_lr: -1}", "train.lr_schedule.plateau.min_lr must be >= 0, not -1", "at least 0"),
    ("{metric: valid_loss, threshold: -0.1}", "train.lr_schedule.plateau.threshold must be >= 0, not -0.1",
     "at least 0"),
    ("{metric: valid_loss, threshold_mode: relative}",
     "train.lr_schedule.plateau.threshold_mode must be one of rel, abs, not the string 'relative'", "rel, abs"),
    ("{metric: valid_loss, mode: maximum}",
     "train.lr_schedule.plateau.mode must be one of min, max, not the string 'maximum'", "did you mean 'max'?"),
    ("{metric: train_loss}", "train.lr_schedule.plateau.metric 'train_loss' is not a validation value: a plateau "
     "schedule watches the epoch's validation", "write valid_loss"),
    ("{metric: valid_loss, verbose: true}", "unknown key 'verbose' in train.lr_schedule.plateau", "metrics.jsonl"),
    ("{factor: 0.5}", "missing required key 'metric' in train.lr_schedule.plateau", "metric"),
]


@pytest.mark.parametrize("plateau, message, hint", BAD_PLATEAUS)
def test_a_bad_plateau_setting_is_one_located_line_with_a_hint(plateau, message, hint):
    """lr_schedule: {plateau: ...} with a factor of 1 or more (torch: 'Factor should be < 1.0'), a
    negative patience, cooldown, min_lr or threshold, another threshold_mode or mode, a training
    value as its metric, or torch's verbose, is refused when the spec is read: one line at the key,
    with a hint. (An unreported metric, one without a mode, and a run without validation data are
    refused before training: test_runtime_features.py.)"""
    from compiler.training import objectives_of
    from spec import spec_from_text
    from spec.errors import SpecError

    text = ("flowgrad: 1\nname: lin\ndims: {D: 3}\ninputs:\n  x: {shape: [N, D]}\nparams:\n  W: {shape: [D], init: normal}\n"
            f"loss: mean((x @ W) ** 2)\ntrain:\n  optimizer: {{sgd: {{lr: 0.1}}}}\n  lr_schedule: {{plateau: {plateau}}}\n")
    with pytest.raises(SpecError) as info:
        objectives_of(spec_from_text(text, "models/bad.yaml"))
    errs = getattr(info.value, "errors", None) or [info.value]
    assert len(errs) == 1
    e = errs[0]
    assert e.message == message and hint in e.hint
    assert "\n" not in e.message and "\n" not in e.hint
    line = text.splitlines()[10]
    assert e.loc.file == "models/bad.yaml" and e.loc.line == 11 and e.loc.col > line.index("plateau:") + 1


def _every_spec(every: int) -> dict:
    return {
        "flowgrad": 1, "name": "two", "dims": {"D": D, "K": K},
        "inputs": {"x": {"shape": ["N", "D"]}, "y": {"shape": ["N", "K"]}},
        "params": {"W": {"shape": ["D", "K"], "init": "ones"}, "V": {"shape": ["D", "K"], "init": "ones"}},
        "graph": {"c_loss": "mean((x @ W - y) ** 2)", "g_loss": "mean((x @ V + y) ** 2)"},
        "train": {"dtype": "float64", "shuffle": False, "batch_size": 3, "lr_schedule": {"warmup": 3},
                  "objectives": {"critic": {"loss": "c_loss", "params": "W", "optimizer": {"adam": {"lr": 0.1}}},
                                 "generator": {"loss": "g_loss", "params": "V", "every": every,
                                               "optimizer": {"adam": {"lr": 0.05, "beta1": 0.5}}}}},
    }


@pytest.mark.parametrize("reference", ["numpy", "torch"])
def test_an_objective_of_every_k_steps_once_per_k_updates_counting_its_own_steps(tmp_path, reference):
    """A WGAN's critic takes n_critic steps, each on its own batch, per step of its generator:
    train.objectives.generator.every: 3 makes it step on updates 3, 6, ... on their batches, while
    the critic steps on each. The generator's Adam counts its own steps (bias correction from its
    first step, as torch.optim's state['step']), and its warmup follows the run's updates; a run
    stopped at update 4 and resumed to 9 makes the updates of two Adams stepped in that loop."""
    from runtime import api
    from runtime.checkpoint import load_checkpoint

    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(27, D)), "y": rng.normal(size=(27, K))}  # 9 batches of 3: an epoch
    run_dir = str(tmp_path / "run")
    spec = spec_from_dict(_every_spec(3))
    api.train(spec, data=data, run_dir=run_dir, threads=1, steps=4)
    api.train(spec, data=data, run_dir=run_dir, threads=1, steps=9, resume=True)
    state, meta = load_checkpoint(f"{run_dir}/checkpoint.npz")
    assert meta["step"] == 9

    critic = reference_for({"adam": {"lr": 0.1}}, {}, reference)
    generator = reference_for({"adam": {"lr": 0.05, "beta1": 0.5}}, {}, reference)
    W, V, generator_steps, moved = np.ones((D, K)), np.ones((D, K)), 0, []
    for t in range(1, 10):
        x, y = data["x"][3 * (t - 1):3 * t], data["y"][3 * (t - 1):3 * t]
        warmup = min(1.0, t / 3)  # at the run's update t, for both
        W = critic.step({"W": W}, {"W": 2 * x.T @ (x @ W - y) / y.size}, 0.1 * warmup, t)["W"]
        if t % 3 == 0:
            generator_steps += 1
            V = generator.step({"V": V}, {"V": 2 * x.T @ (x @ V + y) / y.size}, 0.05 * warmup, generator_steps)["V"]
        moved.append(V)
    np.testing.assert_allclose(state["W"], W, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(state["V"], V, rtol=1e-11, atol=1e-14)
    assert np.array_equal(moved[1], moved[0]) and not np.array_equal(moved[2], moved[1])  # V moved at update 3 only


@pytest.mark.parametrize("change, words", [
    ({"critic": {"every": 2}, "generator": {"every": 2}}, "no objective takes a step on every update"),
    ({"generator": {"every": 10}}, "takes a step every 10 updates, but an epoch makes 9"),
    ({"generator": {"every": 5}, "steps": 4}, "takes a step every 5 updates, but the run makes 4 optimizer steps"),
])
def test_an_every_that_would_leave_batches_or_epochs_without_a_step_is_refused(tmp_path, change, words):
    """every: K on each objective left the batches between their steps unused, and one larger than
    an epoch's updates left epochs that recorded none of its numbers: both refused, located."""
    from runtime import api
    from spec.errors import FlowgradError

    raw = _every_spec(1)
    steps = change.pop("steps", 27)
    for name, keys in change.items():
        raw["train"]["objectives"][name].update(keys)
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=(27, D)), "y": rng.normal(size=(27, K))}
    with pytest.raises(FlowgradError, match=words) as e:
        api.train(spec_from_dict(raw), data=data, run_dir=str(tmp_path / "run"), threads=1, steps=steps)
    assert e.value.loc is not None and "\n" not in e.value.message
