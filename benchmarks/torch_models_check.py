"""Whole bundled models against independent PyTorch re-implementations, in
float64: each spec in models/ (dims shrunk, random parts switched off with
--set-style overrides or fed the graph's own noise) is written again in
PyTorch from what the spec says, and on one batch of its bundled data the
compiled `eval` graph's loss and metrics, the `grads` graph's gradients of
every trained parameter and one `apply` step of the spec's optimizer must
agree with PyTorch's (torch.autograd, torch.optim). torch is a benchmark-only
dependency, so this check lives here rather than in tests/ (where it would
only ever be skipped):

    pip install torch==2.13.0          # CPU wheel
    python benchmarks/torch_models_check.py      # or: python -m pytest benchmarks/torch_models_check.py
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
try:
    import torch
except ImportError:
    if __name__ == "__main__":
        sys.exit("this check needs PyTorch: pip install torch==2.13.0 (the CPU wheel)")
    pytest.skip("needs PyTorch", allow_module_level=True)
F = torch.nn.functional

from compiler.check import Runner  # noqa: E402
from compiler.training import compile_spec  # noqa: E402
from runtime.api import load  # noqa: E402
from runtime.data import load_bundled  # noqa: E402

N = 12  # examples in the batch
WORST_GRADIENT_ERROR: dict[str, float] = {}  # spec -> worst relative gradient error seen (for reports)


def _t(a):
    return torch.as_tensor(np.asarray(a))


def dense(v, p, name, act=None):
    y = v @ p[f"{name}.W"] + p[f"{name}.b"]
    return act(y) if act is not None else y


def accuracy(logits, y):
    return (logits.argmax(-1) == y).double().mean()


def bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def compiled(path, overrides):
    spec = load(os.path.join(ROOT, path), overrides)
    return spec, compile_spec(spec, "float64")


def first_batch(spec, n=N):
    data = spec.train["data"]
    ds = load_bundled(data["dataset"], dict(data.get("options") or {}))
    out = {}
    for name, decl in spec.inputs.items():
        if name in ds.arrays:
            dtype = "float64" if decl.dtype.startswith("float") else decl.dtype
            out[name] = np.ascontiguousarray(ds.arrays[name][:n]).astype(dtype)
    return out


def start_params(cm, seed=0):
    """The spec's initial parameters, with the zero-initialised ones (biases) made
    non-zero, so that every term they enter is seen."""
    state = cm.initial_state(seed)
    rng = np.random.default_rng(seed + 1)
    params = {}
    for name in cm.params:
        v = state[name]
        if not np.any(v):
            v = rng.normal(scale=0.3, size=v.shape)
        params[name] = v.astype("float64")
    return params


def run(cm, kind, values):
    g = cm.graphs[kind]
    feeds = {i.name: np.asarray(values[i.name], dtype=i.dtype) for i in g.inputs}
    return Runner(g.model)(feeds)


def torch_optimizer(obj, tensors):
    hp = obj.optimizer.hp
    name = obj.optimizer.name
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        kw = {"betas": (hp.get("beta1", 0.9), hp.get("beta2", 0.999)), "eps": hp.get("eps", 1e-8)}
        if "weight_decay" in hp:
            kw["weight_decay"] = hp["weight_decay"]
        return cls(tensors, lr=hp["lr"], **kw)
    if name == "sgd":
        return torch.optim.SGD(tensors, lr=hp["lr"], momentum=hp.get("momentum", 0.0),
                               nesterov=hp.get("nesterov", False), weight_decay=hp.get("weight_decay", 0.0))
    raise NotImplementedError(name)


def check_model(path, overrides, reference, losses=None, extra=None, n=N, batch_fn=None):
    """reference(params, batch, train) -> {"loss"|objective loss name: scalar, metric: scalar}.
    `losses` maps an objective to the reference's key for its loss (default: "loss")."""
    spec, cm = compiled(path, overrides)
    params = start_params(cm)
    batch = first_batch(spec, n)
    if batch_fn is not None:
        batch = batch_fn(batch)
    control = {"seed": 0, "step": 0}
    if extra is not None:
        batch = {**batch, **extra(cm, params, batch)}
    tb = {k: _t(v) for k, v in batch.items()}

    def torch_params():
        return {k: _t(v).clone().requires_grad_(True) for k, v in params.items()}

    # loss and metrics in eval mode
    with torch.no_grad():
        want = reference(torch_params(), tb, train=False)
    got = run(cm, "eval", {**params, **batch, **control})
    checked = [k for k in got if "/" not in k]
    assert checked
    for k in checked:
        np.testing.assert_allclose(got[k], want[k].item(), rtol=1e-10, atol=1e-12, err_msg=f"eval {k}")

    # gradients of every trained parameter, and one optimizer step
    for obj in cm.objectives:
        suffix = "" if obj.name == "main" else f"_{obj.name}"
        trained = cm.trained_params(obj)
        tp = torch_params()
        out = reference(tp, tb, train=True)
        loss = out[(losses or {}).get(obj.name, "loss")]
        tgrads = torch.autograd.grad(loss, [tp[p] for p in trained])
        g = run(cm, f"grads{suffix}", {**params, **batch, **control})
        np.testing.assert_allclose(g["loss"], loss.item(), rtol=1e-10, atol=1e-12, err_msg=f"{obj.name} loss")
        for p, tg in zip(trained, tgrads):
            tg = tg.numpy()
            err = np.max(np.abs(g[f"grad/{p}"] - tg)) / max(np.max(np.abs(tg)), 1e-300)
            assert err < 1e-9, f"{obj.name}: gradient of {p}: relative error {err:.3g}"
            WORST_GRADIENT_ERROR[path] = max(WORST_GRADIENT_ERROR.get(path, 0.0), err)

        state = cm.initial_state(0)
        lr = obj.optimizer.hp["lr"]
        applied = run(cm, f"apply{suffix}", {**state, **params, **{f"grad/{p}": g[f"grad/{p}"] for p in trained},
                                             "lr": lr, "step": 0})
        leaves = [_t(params[p]).clone().requires_grad_(True) for p in trained]
        for leaf, p in zip(leaves, trained):
            leaf.grad = _t(g[f"grad/{p}"]).clone()
        torch_optimizer(obj, leaves).step()
        for leaf, p in zip(leaves, trained):
            np.testing.assert_allclose(applied[f"next/{p}"], leaf.detach().numpy(), rtol=1e-10, atol=1e-13,
                                       err_msg=f"{obj.name}: update of {p}")
    return spec, cm


# ------------------------------------------------------------------ maxout
def maxout(z, pieces):
    return z.reshape(*z.shape[:-1], z.shape[-1] // pieces, pieces).amax(-1)


def test_maxout():
    def ref(p, b, train):
        h1 = maxout(dense(b["x"], p, "z1"), 4)
        h2 = maxout(dense(h1, p, "z2"), 4)
        logits = dense(h2, p, "logits")
        return {"loss": F.cross_entropy(logits, b["y"]), "accuracy": accuracy(logits, b["y"])}

    check_model("models/maxout.yaml", ["dims.H=6", "graph.h1=dropout(maxout(z1, P), rate=0.0)",
                                       "graph.h2=dropout(maxout(z2, P), rate=0.0)"], ref)


# ------------------------------------------------------------------ convnet
def test_convnet():
    def ref(p, b, train):
        c1 = F.relu(F.conv2d(b["x"], p["c1.W"], p["c1.b"], padding=1))
        c2 = F.relu(F.conv2d(c1, p["c2.W"], p["c2.b"], padding=1))
        f = F.max_pool2d(c2, 2).flatten(1)
        logits = dense(dense(f, p, "h", F.relu), p, "logits")
        return {"loss": F.cross_entropy(logits, b["y"]), "accuracy": accuracy(logits, b["y"])}

    check_model("models/convnet.yaml", ["dims.C1=3", "dims.C2=4", "dims.H=8",
                                        "graph.h=dropout(dense(f, H, act=relu), rate=0.0)"], ref)


# ------------------------------------------------------------------ nlm
def test_nlm():
    def ref(p, b, train):
        e = p["e.W"][b["x"]]
        logits = dense(dense(e.flatten(1), p, "h", torch.tanh), p, "logits")
        return {"loss": F.cross_entropy(logits, b["y"]), "accuracy": accuracy(logits, b["y"])}

    check_model("models/nlm.yaml", ["dims.V=40", "dims.E=4", "dims.H=8", "train.data.options.max_vocab=40"], ref)


# ------------------------------------------------------------------ birnn_tagger
def gru(x, W, U, b, bu, reverse=False):
    """PyTorch's GRU (torch.nn.GRU's equations, gate order r, z, n; b = b_ih, bu = b_hh)
    over x [N, T, E] from a zero state; W [E, 3H], U [H, 3H]."""
    n, t_len, _ = x.shape
    H = U.shape[0]
    h = x.new_zeros(n, H)
    outs = [None] * t_len
    for t in (reversed(range(t_len)) if reverse else range(t_len)):
        gi = x[:, t] @ W + b
        gh = h @ U + bu
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        cand = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * cand + z * h
        outs[t] = h
    return torch.stack(outs, 1)


def test_gru_reference_is_torch_nn_gru():
    """The hand-written reference below is torch.nn.GRU with its weights transposed."""
    torch.manual_seed(0)
    net = torch.nn.GRU(3, 4, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    want, _ = net(x)
    got = gru(x, net.weight_ih_l0.T, net.weight_hh_l0.T, net.bias_ih_l0, net.bias_hh_l0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_birnn_tagger():
    def ref(p, b, train):
        e = p["e.W"][b["x"]]
        fw = gru(e, p["hs.fw.W"], p["hs.fw.U"], p["hs.fw.b"], p["hs.fw.bu"])
        bw = gru(e, p["hs.bw.W"], p["hs.bw.U"], p["hs.bw.b"], p["hs.bw.bu"], reverse=True)
        logits = dense(torch.cat([fw, bw], -1), p, "logits")
        y = b["y"]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return {"loss": loss, "accuracy": accuracy(logits, y)}

    check_model("models/birnn_tagger.yaml", ["dims.E=4", "dims.H=5", "train.data.options.seq_len=7"], ref, n=4)


# ------------------------------------------------------------------ auto-encoders
def test_dae():
    """Masking noise off (p=0): the noise is the graph's own hash; the rest is the model."""
    def ref(p, b, train):
        x = b["x"]
        h = dense(x, p, "h", torch.sigmoid)
        logits = h @ p["h.W"].T + p["logits.b"]
        return {"loss": bce(logits, x).sum(-1).mean(), "recon_error": F.mse_loss(torch.sigmoid(logits), x)}

    check_model("models/dae.yaml", ["dims.H=8", "graph.x_noisy=masking_noise(x, p=0.0)"], ref)


def test_cae():
    """The contractive penalty through torch.func's per-example Jacobian, differentiated again."""
    def ref(p, b, train):
        x = b["x"]

        def encode(W, bias, v):
            return torch.sigmoid(v @ W + bias)

        h = encode(p["h.W"], p["h.b"], x)
        logits = h @ p["h.W"].T + p["logits.b"]
        J = torch.func.vmap(torch.func.jacrev(encode, argnums=2), in_dims=(None, None, 0))(p["h.W"], p["h.b"], x)
        contraction = (J * J).sum((1, 2)).mean()
        reconstruction = bce(logits, x).sum(-1).mean()
        return {"loss": reconstruction + 0.1 * contraction, "contraction": contraction,
                "recon_error": F.mse_loss(torch.sigmoid(logits), x)}

    check_model("models/cae.yaml", ["dims.H=8"], ref)


def test_vae():
    """The reparameterization's eps is the graph's own: metrics eps_i_j read it back
    ((z - mu) / exp(logvar / 2), entry by entry) from the eval graph, which draws
    in every mode, with the training graphs' seed and step."""
    n, Z = 4, 3
    entries = [(i, j) for i in range(n) for j in range(Z)]
    overrides = ["dims.H=8", f"dims.Z={Z}"] + [f"metrics.eps_{i}_{j}=mean(((z - mu) / exp(logvar / 2))[{i}, {j}])"
                                               for i, j in entries]

    def eps_of(cm, params, batch):
        out = run(cm, "eval", {**params, **batch, "seed": 0, "step": 0})
        return {"eps": np.array([[out[f"eps_{i}_{j}"] for j in range(Z)] for i in range(n)])}

    def ref(p, b, train):
        x, eps = b["x"], b["eps"]
        enc = dense(x, p, "enc", F.relu)
        mu, logvar = dense(enc, p, "mu"), dense(enc, p, "logvar")
        z = mu + torch.exp(logvar / 2) * eps
        logits = dense(dense(z, p, "decode.h", F.relu), p, "decode.logits")
        reconstruction = bce(logits, x).sum(-1).mean()
        kl = (-0.5 * (1 + logvar - mu * mu - torch.exp(logvar)).sum(-1)).mean()
        return {"loss": reconstruction + kl, "neg_elbo": reconstruction + kl, "kl": kl,
                **{f"eps_{i}_{j}": eps[i, j] for i, j in entries}}

    _, cm = check_model("models/vae.yaml", overrides, ref, extra=eps_of, n=n)
    eps = eps_of(cm, start_params(cm), first_batch(cm.spec, n))["eps"]
    assert np.all(np.isfinite(eps)) and 0.2 < np.std(eps) < 5  # a draw of N(0, 1), not zeros


# ------------------------------------------------------------------ semisupervised
def test_semisupervised():
    """Dropout and masking noise off; each objective's gradients over its own parameters."""
    def ref(p, b, train):
        x, y, has = b["x"], b["y"], b["has_label"]
        h = dense(x, p, "encode.h", F.relu)
        logits = dense(h, p, "logits")
        recon = h @ p["encode.h.W"].T + p["recon.b"]
        classify = (has * F.cross_entropy(logits, y, reduction="none")).sum() / torch.clamp(has.sum(), min=1.0)
        return {"classify": classify, "reconstruct": bce(recon, x).sum(-1).mean(), "accuracy": accuracy(logits, y)}

    check_model("models/semisupervised.yaml", ["dims.H=8", "graph.logits=dense(dropout(h, rate=0.0), K)",
                                               "graph.h_noisy=encode(masking_noise(x, p=0.0))"], ref,
                losses={"classify": "classify", "reconstruct": "reconstruct"},
                batch_fn=lambda b: {**b, "has_label": (np.arange(N) % 3 == 0).astype("float64")})


# ------------------------------------------------------------------ gan
def test_gan():
    """Both objectives. The generator's noise is named (graph.noise) and read back entry by
    entry as metrics; the discriminator's dropout is off."""
    n, Z = 4, 3
    entries = [(i, j) for i in range(n) for j in range(Z)]
    overrides = ["dims.H=8", f"dims.Z={Z}", "graph.noise=normal(zeros(N, Z))", "graph.fake=G(noise)",
                 "blocks.D.graph.h1=dense(v, H, act=leaky_relu)"]
    overrides += [f"metrics.noise_{i}_{j}=mean(noise[{i}, {j}])" for i, j in entries]

    def noise_of(cm, params, batch):
        out = run(cm, "eval", {**params, **batch, "seed": 0, "step": 0})
        return {"noise": np.array([[out[f"noise_{i}_{j}"] for j in range(Z)] for i in range(n)])}

    def D(p, v):
        h1 = dense(v, p, "D.h1", F.leaky_relu)
        return dense(dense(h1, p, "D.h2", F.leaky_relu), p, "D.logit")

    def ref(p, b, train):
        noise = b["noise"]
        fake = torch.sigmoid(dense(dense(dense(noise, p, "G.h1", F.relu), p, "G.h2", F.relu), p, "G.out"))
        d_real, d_fake = D(p, b["x"]), D(p, fake)
        d_loss = bce(d_real, torch.full_like(d_real, 0.9)).mean() + bce(d_fake, torch.zeros_like(d_fake)).mean()
        g_loss = bce(d_fake, torch.ones_like(d_fake)).mean()
        return {"d_loss": d_loss, "g_loss": g_loss, "p_real": torch.sigmoid(d_real).mean(),
                "p_fake": torch.sigmoid(d_fake).mean(), **{f"noise_{i}_{j}": noise[i, j] for i, j in entries}}

    _, cm = check_model("models/gan.yaml", overrides, ref, extra=noise_of, n=n,
                        losses={"discriminator": "d_loss", "generator": "g_loss"})
    noise = noise_of(cm, start_params(cm), first_batch(cm.spec, n))["noise"]
    assert 0.2 < np.std(noise) < 5


# ------------------------------------------------------------------ the random parts, fed back
def entry_metrics(name, expr, n, m):
    return [f"metrics.{name}_{i}_{j}=mean(({expr})[{i}, {j}])" for i in range(n) for j in range(m)]


def read_entries(out, name, n, m):
    return np.array([[out[f"{name}_{i}_{j}"] for j in range(m)] for i in range(n)])


def test_maxout_dropout_masks():
    """Dropout on: the masks (rescaled, h / maxout(z)) are read back from the grads graph's
    metrics, which it computes in train mode."""
    n, H = 2, 3
    overrides = [f"dims.H={H}", "graph.a1=maxout(z1, P)", "graph.h1=dropout(a1, rate=0.2)",
                 "graph.a2=maxout(z2, P)", "graph.h2=dropout(a2, rate=0.2)"]
    overrides += entry_metrics("m1", "h1 / a1", n, H) + entry_metrics("m2", "h2 / a2", n, H)

    def masks(cm, params, batch):
        out = run(cm, "grads", {**params, **batch, "seed": 0, "step": 0})
        return {"m1": read_entries(out, "m1", n, H), "m2": read_entries(out, "m2", n, H)}

    def ref(p, b, train):
        m1, m2 = (b["m1"], b["m2"]) if train else (torch.ones(n, H), torch.ones(n, H))
        h1 = maxout(dense(b["x"], p, "z1"), 4) * m1
        h2 = maxout(dense(h1, p, "z2"), 4) * m2
        logits = dense(h2, p, "logits")
        return {"loss": F.cross_entropy(logits, b["y"]), "accuracy": accuracy(logits, b["y"]),
                **{f"m{k}_{i}_{j}": m[i, j] for k, m in ((1, m1), (2, m2)) for i in range(n) for j in range(H)}}

    _, cm = check_model("models/maxout.yaml", overrides, ref, extra=masks, n=n)
    m = masks(cm, start_params(cm), first_batch(cm.spec, n))
    values = np.concatenate([m["m1"].ravel(), m["m2"].ravel()])
    np.testing.assert_allclose(values[values != 0], 1 / 0.8, rtol=1e-12)  # kept entries scaled by 1 / (1 - rate)
    assert (values == 0).any() and (values != 0).any()


def test_dae_masking_noise():
    """Masking noise on: the corrupted input is read back from the grads graph's metrics."""
    n, D = 1, 64
    overrides = ["dims.H=8"] + entry_metrics("xn", "x_noisy", n, D)

    def noisy(cm, params, batch):
        out = run(cm, "grads", {**params, **batch, "seed": 0, "step": 0})
        return {"x_noisy": read_entries(out, "xn", n, D)}

    def ref(p, b, train):
        x = b["x"]
        h = dense(b["x_noisy"] if train else x, p, "h", torch.sigmoid)
        logits = h @ p["h.W"].T + p["logits.b"]
        return {"loss": bce(logits, x).sum(-1).mean(), "recon_error": F.mse_loss(torch.sigmoid(logits), x),
                **{f"xn_{0}_{j}": x[0, j] for j in range(D)}}

    _, cm = check_model("models/dae.yaml", overrides, ref, extra=noisy, n=n)
    batch = first_batch(cm.spec, n)
    xn = noisy(cm, start_params(cm), batch)["x_noisy"]
    x = batch["x"]
    assert np.all((xn == x) | (xn == 0))  # masked, never rescaled
    assert ((xn == 0) & (x != 0)).any()


# ------------------------------------------------------------------ the train section's settings
@pytest.mark.parametrize("optimizer", [
    "{adam: {lr: 0.01, beta1: 0.8, beta2: 0.99, eps: 1.0e-6}}",
    "{adamw: {lr: 0.01, weight_decay: 0.1}}",
    "{sgd: {lr: 0.1, momentum: 0.9, nesterov: true}}",
])
def test_penalties_clipping_and_optimizer_follow_torch(optimizer):
    """l2 and l1 (in the gradient, as their terms in a PyTorch loss would put them) and
    global-norm clipping (torch.nn.utils.clip_grad_norm_), then torch.optim's step: the
    `train` graph and `grads` + `apply` make the same update as PyTorch."""
    l1, l2, clip = 1e-3, 1e-2, 0.05
    overrides = ["dims.V=40", "dims.E=4", "dims.H=8", "train.data.options.max_vocab=40", f"train.l1={l1}",
                 f"train.l2={l2}", f"train.clip_norm={clip}", f"train.optimizer={optimizer}"]
    spec, cm = compiled("models/nlm.yaml", overrides)
    (obj,) = cm.objectives
    params = start_params(cm)
    batch = first_batch(spec)
    trained = cm.trained_params(obj)
    lr = obj.optimizer.hp["lr"]

    leaves = {p: _t(params[p]).clone().requires_grad_(True) for p in trained}
    e = leaves["e.W"][_t(batch["x"])]
    h = torch.tanh(e.flatten(1) @ leaves["h.W"] + leaves["h.b"])
    loss = F.cross_entropy(h @ leaves["logits.W"] + leaves["logits.b"], _t(batch["y"]))
    penalty = sum(l2 / 2 * (v * v).sum() + l1 * v.abs().sum() for v in leaves.values())
    (loss + penalty).backward()
    norm = torch.nn.utils.clip_grad_norm_(list(leaves.values()), clip)
    assert norm > clip  # clipping engaged
    torch_optimizer(obj, list(leaves.values())).step()

    state = cm.initial_state(0)
    values = {**state, **params, **batch, "lr": lr, "step": 0, "seed": 0}
    trained_out = run(cm, "train", values)
    np.testing.assert_allclose(trained_out["loss"], loss.item(), rtol=1e-10)  # the penalties are not in it
    g = run(cm, "grads", values)
    applied = run(cm, "apply", {**values, **{k: v for k, v in g.items() if k.startswith("grad/")}})
    for p in trained:
        want = leaves[p].detach().numpy()
        np.testing.assert_allclose(trained_out[f"next/{p}"], want, rtol=1e-10, atol=1e-13, err_msg=f"train: {p}")
        np.testing.assert_allclose(applied[f"next/{p}"], want, rtol=1e-10, atol=1e-13, err_msg=f"apply: {p}")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
