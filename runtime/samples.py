"""Samples of trained unsupervised and generative models, and pictures of them.

Two kinds of model, told apart by their inference graph's inputs:

- a *generator* (VAE, GAN): an integer `count` and `seed` (the spec's outputs
  draw noise with `normal(zeros(count, Z))`), and no data input or none with
  an image output of its rows (a VAE that also outputs the code of x, which
  is fed no rows); it is run to draw `count` digits;
- an *auto-encoder* (DAE, CAE): a float data input; held-out examples are
  corrupted with the spec's own noise (its masking_noise / gaussian_noise,
  else masking noise with p = 0.25) and reconstructed, giving
  input / corrupted / reconstructed triples.

`plot_samples` draws either as a grid of images, headless (matplotlib Agg).
Everything runs the run directory's compiled inference graph on onnxruntime
with the trained parameters of its checkpoint.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from spec.errors import DataError

from .checks import check_count, check_path, check_seed

MAX_SAMPLES = 100_000  # digits a plot draws at most
MAX_MOSAIC_INCHES = 40.0  # the longest side of a generator's grid of digits (4,400 pixels at 110 dpi)


@dataclass
class Samples:
    kind: str  # "generator" or "reconstruction"
    images: dict[str, np.ndarray]  # row label -> [n, H, W] in [0, 1]
    note: str = ""
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- the run's inference graph
class InferRunner:
    """graphs/infer.onnx of a run with its checkpoint's parameters bound."""

    def __init__(self, run_dir: str, checkpoint: str = "best"):
        from .checkpoint import check_checkpoint, checkpoint_path, load_checkpoint

        check_checkpoint(checkpoint)  # (checkpoint="Best" read the last one)
        run_dir = check_path("run_dir", run_dir, DataError, required=True)  # ("" was ' is not a run directory')
        graph = os.path.join(run_dir, "graphs", "infer.onnx")
        manifest = os.path.join(run_dir, "graphs", "manifest.json")
        if not os.path.isfile(manifest):
            raise DataError(f"{run_dir} is not a run directory", hint="pass a directory written by 'flowgrad train'")
        if not os.path.isfile(graph):
            raise DataError(f"{run_dir} has no inference graph", hint="the spec needs an 'outputs' section")
        ckpt = checkpoint_path(run_dir, checkpoint)  # (checkpoint.npz where there is no best yet)
        if not os.path.exists(ckpt):
            raise DataError(f"{run_dir} has no checkpoint yet", hint="train it first")
        state, _ = load_checkpoint(ckpt)
        with open(manifest) as f:
            self.manifest = json.load(f)
        info = self.manifest["graphs"]["infer"]
        self.inputs = {i["name"]: i for i in info["inputs"]}
        self.outputs = [o["name"] for o in info["outputs"]]
        self.output_shapes = {o["name"]: o["shape"] for o in info["outputs"]}
        self.params = {n: state[n] for n, i in self.inputs.items() if i["role"] in ("param", "buffer")}
        from .export import load_model_safely
        from .session import make_session

        self.session = make_session(load_model_safely(graph), "cpu")  # a run directory may come from someone else

    def data_inputs(self) -> list[dict]:
        return [i for i in self.inputs.values() if i["role"] == "input"]

    def count_input(self) -> str | None:
        """The integer scalar input that sizes a generator's batch."""
        for i in self.data_inputs():
            if i["shape"] == [] and i["dtype"].startswith("int"):
                return i["name"]
        return None

    def float_input(self) -> dict | None:
        return next((i for i in self.data_inputs() if i["dtype"].startswith("float")), None)

    def sized_by(self, dim: str) -> list[str]:
        """The outputs whose first axis is the symbolic dim `dim` (a batch, or a generator's count)."""
        return [o for o in self.outputs if self.output_shapes[o][:1] == [dim]]

    def __call__(self, feeds: dict) -> dict[str, np.ndarray]:
        full = dict(self.params)
        for name, i in self.inputs.items():
            if name in feeds:
                full[name] = np.asarray(feeds[name], dtype=i["dtype"])
            elif i["role"] == "input" and i["shape"][:1] and isinstance(i["shape"][0], str):
                # a batch input the picture does not show (a VAE's x beside its generator's count):
                # no rows of it, so that the graph runs and only the outputs sized by it are empty
                full[name] = np.zeros([0] + [d if isinstance(d, int) else 1 for d in i["shape"][1:]], dtype=i["dtype"])
        missing = [n for n in self.inputs if n not in full]
        if missing:
            raise DataError(f"the inference graph needs input(s) {', '.join(missing)}, which a picture cannot supply",
                            hint="give the spec outputs that read the data input alone (auto-encoders) or a count and seed alone (generators)")
        return dict(zip(self.outputs, self.session.run(None, full)))


# ---------------------------------------------------------------- images
def as_images(a: np.ndarray) -> np.ndarray:
    """[n, D] with D a square (64 -> 8x8), or [n, 1, H, W] / [n, H, W] -> [n, H, W]."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 4 and a.shape[1] == 1:
        return a[:, 0]
    if a.ndim == 3:
        return a
    if a.ndim == 2:
        side = int(round(math.sqrt(a.shape[1])))
        if side * side == a.shape[1]:
            return a.reshape(len(a), side, side)
    raise DataError(f"cannot show values of shape {list(a.shape)} as images",
                    hint="outputs of [n, D] with D a square number, or [n, 1, H, W], can be shown")


def _image_shaped(shape: list) -> bool:
    """Whether outputs of this (manifest) shape can be shown by as_images."""
    if len(shape) == 2 and isinstance(shape[1], int):
        return int(round(math.sqrt(shape[1]))) ** 2 == shape[1]
    return len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)


def _image_output(runner: InferRunner, outs: dict, prefer: tuple, dim: str | None = None) -> str:
    """The output to show: the first of `prefer`, else the first float output that looks like
    images; with `dim`, only outputs whose first axis is that dim (a reconstruction has the
    examples' rows, a generator's samples its count's)."""
    if dim is not None and runner.sized_by(dim):
        outs = {k: v for k, v in outs.items() if k in runner.sized_by(dim)}
    for name in prefer:
        if name in outs:
            return name
    for name, v in outs.items():  # the first float output that looks like images
        if v.dtype.kind == "f" and v.ndim in (2, 3, 4):
            try:
                as_images(v)
                return name
            except DataError:
                continue
    raise DataError(f"no output of the inference graph looks like images (outputs: {', '.join(outs)})",
                    hint="name the output 'samples' (generators) or 'reconstruction' (auto-encoders)")


# ---------------------------------------------------------------- generators
def _check_count_and_seed(count: int, seed: int) -> None:
    check_seed(seed)  # (a negative one drew digits, or ended in NumPy's ValueError for an auto-encoder)
    check_count("count", count, most=MAX_SAMPLES)  # (1.5 went into the graph's int64 count)


def generate(run_dir: str, count: int = 64, seed: int = 0, checkpoint: str = "best") -> Samples:
    runner = InferRunner(run_dir, checkpoint)
    name = runner.count_input()
    if name is None:
        raise DataError(f"{run_dir} is not a generator: its inference graph has no integer count input", hint="give a run whose spec generates samples from a count input, e.g. a VAE or GAN decoder")
    _check_count_and_seed(count, seed)
    outs = runner({name: count, "seed": seed})
    key = _image_output(runner, outs, ("samples",), name)
    return Samples("generator", {"samples": as_images(outs[key])}, f"{count} sample{'' if count == 1 else 's'}, seed {seed}",
                   {"output": key})


# ---------------------------------------------------------------- auto-encoders
def spec_noise(spec) -> list[tuple[str, float]] | None:
    """The corruption of the first masking_noise / gaussian_noise call in the spec's graph (or
    in a block it calls), as (kind, level) steps, innermost first: gaussian_noise(masking_noise(x, p), sigma)
    masks, then adds noise (showing the outer step alone hid the masking)."""
    from spec import model as S

    found = []

    def step(e) -> tuple[str, float]:
        key = "p" if e.func == "masking_noise" else "sigma"
        level = {"masking_noise": 0.25, "gaussian_noise": 0.1}[e.func]
        if key in e.kwargs and isinstance(e.kwargs[key], S.Const):
            level = float(e.kwargs[key].value)
        elif len(e.args) > 1 and isinstance(e.args[1], S.Const):
            level = float(e.args[1].value)
        return e.func, level

    def walk(e):
        if isinstance(e, S.Call):
            if e.func in ("masking_noise", "gaussian_noise") and not found:
                chain = [step(e)]
                while e.args and isinstance(e.args[0], S.Call) and e.args[0].func in ("masking_noise", "gaussian_noise"):
                    e = e.args[0]
                    chain.append(step(e))
                found.append(chain[::-1])
        if isinstance(e, S.Expr):
            for v in vars(e).values():
                for c in (v if isinstance(v, list) else v.values() if isinstance(v, dict) else [v]):
                    if isinstance(c, S.Expr):
                        walk(c)
        # a block the graph calls, after its arguments: its noise is the spec's too (a DAE's
        # gaussian_noise in an encoder block was shown as the default masking noise p=0.25)
        if isinstance(e, S.Call) and e.func in spec.blocks and e.func not in entered:
            entered.add(e.func)
            for a in spec.blocks[e.func].graph:
                walk(a.expr)

    entered: set[str] = set()
    for a in spec.graph:
        walk(a.expr)
    return found[0] if found else None


def corrupt(x: np.ndarray, noise: list[tuple[str, float]], seed: int) -> np.ndarray:
    """x corrupted by each (kind, level) step in turn."""
    rng = np.random.default_rng([seed, 31337])
    for kind, level in noise:
        if kind == "masking_noise":
            x = np.where(rng.uniform(size=x.shape) >= level, x, 0).astype(x.dtype)
        else:
            x = np.clip(x + level * rng.normal(size=x.shape), 0, 1).astype(x.dtype)
    return x


def describe_noise(noise: list[tuple[str, float]]) -> str:
    return ", then ".join(f"masking noise p={level:g}" if kind == "masking_noise" else f"gaussian noise sigma={level:g}"
                          for kind, level in noise)


def held_out_examples(spec, run_dir: str, name: str, count: int, seed: int) -> tuple[np.ndarray, bool]:
    """(`count` examples of input `name` the run did not train on (its validation split), else of
    its data; whether they are held out). More than there are is an error (it drew fewer)."""
    from . import data as D

    from .checkpoint import read_run_info

    cfg = spec.train.get("data", {}) or {}
    info = read_run_info(run_dir)
    run_seed = int(info.get("seed", 0))
    # where the run's data came from (--data and --valid included); older runs: their spec
    source = info.get("data_source") or {**cfg, "valid": cfg.get("valid")}
    valid = source.get("valid")
    if valid == D.IN_MEMORY:  # (arrays given to the API, which run.json does not hold): the training examples
        valid = None
    if source.get("arrays"):
        raise DataError(f"{run_dir} was trained on arrays given in memory, which its run.json does not hold: there "
                        "are no examples of its data to reconstruct",
                        hint="save the arrays with numpy.savez and train on the file (train.data.path, or "
                             "data=PATH), or reconstruct your examples with predict on the exported model")
    if "dataset" in source:
        ds = D.load_bundled(source["dataset"], source.get("options"))
    elif "path" in source:
        from .train import beside_spec

        ds = D.load_npz(beside_spec(spec, source["path"]))
    else:
        raise DataError("the run's spec names no data to reconstruct", hint="train the run with data (train.data in the spec, or --data) so its examples can be reconstructed")
    held_out = bool(valid) and not isinstance(valid, bool)
    if isinstance(valid, str):
        ds = D.load_npz(valid)
    elif isinstance(valid, (int, float)) and not isinstance(valid, bool) and valid:
        from .train import split_like_training

        # the arrays training counted and split (the spec's inputs), the split it made
        _, ds = split_like_training(D.only(ds, list(spec.inputs)), spec, float(valid), run_seed)
    if name not in ds.arrays:
        raise DataError(f"the run's data has no array {name!r}", hint=f"the run's data has: {', '.join(ds.arrays)}")
    x = ds.arrays[name]
    if count > len(x):
        what = "examples the run held out for validation" if held_out else "examples of the run's data"
        raise DataError(f"--count {count} is more than the {len(x)} {what}",
                        hint=f"reconstruct at most {len(x)} of them (--count {len(x)})")
    idx = np.sort(np.random.default_rng([seed, 4242]).permutation(len(x))[:count])
    return x[idx], held_out


def reconstruct(run_dir: str, count: int = 16, seed: int = 0, checkpoint: str = "best",
                noise: list[tuple[str, float]] | None = None) -> Samples:
    from spec import load_spec

    _check_count_and_seed(count, seed)
    runner = InferRunner(run_dir, checkpoint)
    inp = runner.float_input()
    if inp is None:
        raise DataError(f"{run_dir}: its inference graph takes no float data to reconstruct", hint="give a run whose model takes a float input to reconstruct, e.g. an autoencoder")
    spec = load_spec(os.path.join(run_dir, "spec.yaml"))
    noise = noise or spec_noise(spec) or [("masking_noise", 0.25)]
    x, held_out = held_out_examples(spec, run_dir, inp["name"], count, seed)
    x = x.astype(inp["dtype"])
    x_noisy = corrupt(x, noise, seed)
    feeds = {inp["name"]: x_noisy, "seed": seed}
    if runner.count_input() is not None:  # a generator's count beside the data: the graph reads it too
        feeds[runner.count_input()] = len(x)
    outs = runner(feeds)
    key = _image_output(runner, outs, ("reconstruction",), inp["shape"][0] if inp["shape"] else None)
    what = describe_noise(noise)
    return Samples("reconstruction", {"input": as_images(x), "corrupted": as_images(x_noisy),
                                      "reconstructed": as_images(outs[key])},
                   # (a run without a validation split has none held out: they were titled held-out)
                   f"{'held-out' if held_out else 'training'} digits, {what}", {"output": key, "noise": [list(n) for n in noise]})


def samples_of(run_dir: str, count: int | None = None, seed: int = 0, checkpoint: str = "best",
               noise: list[tuple[str, float]] | None = None) -> Samples:
    runner = InferRunner(run_dir, checkpoint)
    sizer, inp = runner.count_input(), runner.float_input()
    # a generator: a count input and no data input, or a data input with no output of its rows
    # (a VAE whose outputs are samples and the code of x) beside outputs of the count's rows
    reconstructs = inp is not None and bool(inp["shape"]) and any(
        _image_shaped(runner.output_shapes[o]) for o in runner.sized_by(inp["shape"][0]))
    if sizer is not None and (inp is None or (not reconstructs and runner.sized_by(sizer))):
        if noise is not None:
            raise DataError(f"{run_dir} holds a generator: it draws new digits and corrupts none",
                            hint="--corrupt is for auto-encoders' input / corrupted / reconstructed triples")
        return generate(run_dir, 64 if count is None else count, seed, checkpoint)  # (count=0 drew 64)
    return reconstruct(run_dir, 16 if count is None else count, seed, checkpoint, noise)


# ---------------------------------------------------------------- pictures
def _mosaic(images: np.ndarray, cols: int, pad: int = 1) -> np.ndarray:
    n, h, w = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), np.nan, dtype=np.float32)
    for k in range(n):
        r, c = divmod(k, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[k]
    return out


def plot_samples(run_dir: str, output: str, count: int | None = None, seed: int = 0, checkpoint: str = "best",
                 noise: list[tuple[str, float]] | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.textpath import TextPath

    s = samples_of(run_dir, count, seed, checkpoint, noise)
    name = os.path.basename(os.path.normpath(run_dir))
    title = f"{name}: {s.note}"
    # the figure is at least as wide as its title: a few digits' picture was narrower, and
    # --count 1 was titled "1 samples, se"
    # (a run in runs/gan$2$ is its name as written, not math text: the $ escaped here, and the title not parsed)
    title_w = TextPath((0, 0), title.replace("$", r"\$"), size=10).get_extents().width / 72 + 0.3
    cmap = plt.get_cmap("gray_r").with_extremes(bad="#c9cfdb")  # bad: the gaps between digits
    inch = 0.1  # per pixel: an 8x8 digit is 0.8 inch wide
    if s.kind == "generator":
        imgs = np.clip(s.images["samples"], 0, 1)
        cols = min(len(imgs), max(8, int(math.ceil(math.sqrt(len(imgs))))))
        m = _mosaic(imgs, cols)
        # a large grid gets smaller pixels: at 0.1 inch each, --count 100000 was a 31,000-pixel square
        # whose drawing took over 20 GB (the process was killed)
        inch = min(inch, MAX_MOSAIC_INCHES / max(m.shape))
        fig = plt.figure(figsize=(max(inch * m.shape[1], title_w), inch * m.shape[0] + 0.35))
        ax = fig.add_axes((0, 0, 1, inch * m.shape[0] / (inch * m.shape[0] + 0.35)))
        ax.imshow(m, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")  # (centred in a wider figure)
        ax.set_axis_off()
        fig.suptitle(title, fontsize=10, y=0.995, va="top", parse_math=False)
    else:
        labels = list(s.images)
        n = len(s.images["input"])
        cols = min(n, 8)
        bands = -(-n // cols)
        row_h = inch * (s.images["input"].shape[1] + 2)
        gap = 0.25
        label_w = 1.1
        ratios = []
        for b in range(bands):
            ratios += [row_h] * len(labels) + ([gap] if b < bands - 1 else [])
        width = inch * (cols * (s.images["input"].shape[2] + 1) + 1)
        height = sum(ratios) + 0.4
        fig_w = max(width + label_w, title_w)
        fig = plt.figure(figsize=(fig_w, height))
        gs = fig.add_gridspec(len(ratios), 1, height_ratios=ratios, hspace=0.0, left=label_w / fig_w,
                              right=(label_w + width) / fig_w, top=1 - 0.4 / height, bottom=0.0)
        k = 0
        for b in range(bands):
            for label in labels:
                ax = fig.add_subplot(gs[k])
                k += 1
                part = np.clip(s.images[label][b * cols:(b + 1) * cols], 0, 1)
                ax.imshow(_mosaic(part, cols), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            k += 1  # the gap between bands
        fig.suptitle(title, fontsize=10, y=0.995, va="top", parse_math=False)
    from .plots import save_figure

    save_figure(fig, output, 110)
    return output
