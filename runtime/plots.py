"""Pictures of runs, drawn headless with matplotlib."""
from __future__ import annotations

import json
import math
import os

from spec.errors import FLAGS, DataError

from . import jsontext


def save_figure(fig, output: str, dpi: int) -> None:
    """Write a figure; a format matplotlib does not know or a path it cannot write is a
    one-line error, and no partial file is left."""
    import io

    import matplotlib.pyplot as plt

    from spec.errors import FlowgradError

    from .checkpoint import atomic_write, make_parent_dir

    fmt = os.path.splitext(output)[1][1:].lower()
    names_folder = os.path.isdir(output) or output.endswith(("/", os.sep))  # (atomic_write refuses it)
    if not fmt and not names_folder:  # (a PNG went to the name as given: -o notes replaced the file notes)
        plt.close(fig)
        raise FlowgradError(f"cannot write a picture as {output!r}: its name has no image extension",
                            hint="give a file ending in .png, .svg or .pdf")
    fmt = fmt or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=dpi, format=fmt)
    except ValueError:
        raise FlowgradError(f"cannot write a {fmt!r} image: {output}", hint="name the file .png, .svg or .pdf") from None
    finally:
        plt.close(fig)
    make_parent_dir(output, names=FLAGS)  # (plots are the CLI's: their hints name -o)
    atomic_write(output, buf.getvalue(), hint="pick another path with -o")


def read_history(run_dir: str) -> list[dict]:
    """The epochs' records; a line cut short (a run killed while writing it) is left out."""
    from .checks import check_path

    run_dir = check_path("run_dir", run_dir, DataError, required=True)  # ("" was ' has no metrics.jsonl')
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise DataError(f"{run_dir} has no metrics.jsonl", hint="pass a directory written by 'flowgrad train'")
    try:
        with open(path, encoding="utf-8-sig") as f:  # (a Windows editor's byte-order mark: 'not a JSON record')
            # (each with its number in the file: the errors below counted the lines that were not blank)
            lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e})", hint="check that the file is a run's metrics log written by `flowgrad train`, and readable") from None
    history = []
    for i, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                continue
            raise DataError(f"{path}:{number}: not a JSON record", hint="the file is damaged") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: not a record of an epoch", hint="the file is damaged")
        # (another tool's metrics.jsonl: a record without its epoch was a KeyError traceback, and
        # values that are not numbers were drawn as categories)
        bad = "epoch" if not _is_number(record.get("epoch")) else next(
            (k for k, v in record.items() if k.startswith(("train_", "valid_")) and not jsontext.is_number(v)),
            None)
        if bad is not None:
            raise DataError(f"{path}:{number}: not a record of an epoch that flowgrad train writes "
                            f"({bad} is {'missing' if bad not in record else repr(record[bad])})",
                            hint="pass a run directory that 'flowgrad train' wrote")
        # a metric that was NaN is null (NaN in a file of an earlier flowgrad), an infinite one "Infinity" or
        # "-Infinity" (null in a file of an earlier flowgrad): read back as they were, gaps in their curves
        history.append({k: jsontext.number_of(v) if k.startswith(("train_", "valid_")) else v
                        for k, v in record.items()})
    return history


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _panel(key: str) -> tuple[str, str]:
    """The panel and the curve's name of a record's key. With several objectives each one's steps
    measure the metrics on their own batches (train_<objective>/<metric>), and validation measures
    them once (valid_<metric>): one metric's curves share its panel, the training ones named by
    objective. An objective's loss is its own panel, training's and validation's alike."""
    split, name = key.split("_", 1)
    objective, _, metric = name.rpartition("/")
    if objective and metric != "loss":
        return metric, f"{split} ({objective})"
    return name, split


def _curves(history: list[dict]) -> list[tuple[str, str, str]]:
    """(key, panel, curve) of each value a run's records hold. An objective whose loss is the
    spec's is validated as valid_loss, not valid_<objective>/loss: its validation curve joins
    that objective's training curve (it was a panel "loss" of its own, beside a panel
    "<objective>/loss" with the training curve alone)."""
    keys = {k: None for split in ("train_", "valid_") for r in history for k in r if k.startswith(split)}
    curves = [(key, *_panel(key)) for key in keys]
    if "valid_loss" in keys and "train_loss" not in keys:
        own = [panel for key, panel, curve in curves
               if curve == "train" and panel.endswith("/loss") and f"valid_{panel}" not in keys]
        if own:
            curves = [c for c in curves if c[0] != "valid_loss"] + [("valid_loss", panel, "valid") for panel in own]
    return curves


def plot_curves(run_dirs: list[str], output: str, warn=None) -> str:
    """Each measure's panel, the runs overlaid; `warn` is told of each run left out for having no
    metrics yet (one that has not finished an epoch), the others being drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    histories = {os.path.normpath(d): read_history(d) for d in run_dirs}
    # a run is named by its directory's name, or by its path where two runs share that name
    # (runs/a/mlp and runs/b/mlp were both "mlp")
    names = [os.path.basename(run) for run in histories]
    labels = {run: name if name and names.count(name) == 1 else run for run, name in zip(histories, names)}
    curves = {run: _curves(hist) for run, hist in histories.items()}
    measures = list(dict.fromkeys(panel for run_curves in curves.values() for _, panel, _ in run_curves))
    # the objectives' losses first, side by side, then the metrics: a GAN's discriminator/loss and
    # generator/loss were at opposite ends, its p_real and p_fake between them (a run of one
    # objective, whose "loss" is no objective's, keeps its order)
    measures.sort(key=lambda m: not m.endswith("/loss"))
    # An epoch records no number where every step of it overflowed in mixed precision and was
    # skipped: such a run has epochs, and was told to train for one
    skipped = "its epochs recorded no numbers: every training step overflowed in mixed precision and was skipped"
    if not measures:
        if any(histories.values()):
            run = next(r for r, h in histories.items() if h)
            raise DataError(f"{run}: {skipped}" if len(histories) == 1 else f"the runs recorded no metrics ({run}: {skipped})",
                            hint="train again without mixed_precision, or with a lower learning rate")
        raise DataError("the runs recorded no metrics yet", hint="train the runs for at least one epoch first (flowgrad train)")
    for run in histories:
        if not curves[run] and warn:  # (it was left out without a word)
            warn(f"{run}: {skipped}: drawing the other runs" if histories[run]
                 else f"{run} has no metrics yet (no epoch finished): drawing the other runs")
    # at most four panels a row: a GAN's or several models' dozen measures were one row 65 inches wide
    cols = min(4, len(measures))
    rows = math.ceil(len(measures) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(measures):]:
        ax.remove()
    for ax, measure in zip(axes.flat, measures):
        for (run, hist), color in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
            epochs = [r["epoch"] for r in hist]
            drawn = [(key, curve) for key, panel, curve in curves[run]
                     if panel == measure and any(r.get(key) is not None for r in hist)]
            for n, (key, curve) in enumerate(drawn):
                # validation solid, training dashed (each objective's its own dash where several share the panel)
                style = "-" if curve == "valid" else ("--", ":", "-.", (0, (5, 1, 1, 1)))[n % 4]
                # NaN or inf (a validation metric is not checked as training's are) is a gap, like a
                # value an epoch did not record: a point between two NaNs was drawn as nothing
                ys = [r.get(key) if _is_number(r.get(key)) and math.isfinite(r[key]) else None for r in hist]
                # a value with no neighbour (a one-epoch run) is no line: mark the points then
                alone = any(y is not None and (i == 0 or ys[i - 1] is None) and (i + 1 == len(ys) or ys[i + 1] is None)
                            for i, y in enumerate(ys))
                ax.plot(epochs, ys, linestyle=style, color=color, label=f"{labels[run]} {curve}", marker="o" if alone else None,
                        markersize=4)
            # an epoch the step limit stopped part-way (train --steps) is a hollow marker, named once
            # a run in the legend: it was drawn as a whole epoch
            partial = [(r["epoch"], r.get(key)) for key, _ in drawn for r in hist
                       if r.get("partial") is True and _is_number(r.get(key)) and math.isfinite(r[key])]
            if partial:
                ax.plot([e for e, _ in partial], [y for _, y in partial], linestyle="none", marker="o", markersize=6,
                        markerfacecolor="white", color=color,
                        label=f"{labels[run]} epoch {', '.join(dict.fromkeys(str(e) for e, _ in partial))}: partial")
        ax.set_title(measure)
        ax.set_xlabel("epoch")
        # epochs are whole numbers: the default locator ticked 1.25, 1.5, ... on a short run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        # the curves named explicitly: matplotlib leaves a label that starts with "_" out of a
        # legend it gathers itself, and a run in runs/_old had curves the legend did not name
        legend = ax.legend(ax.get_lines(), [line.get_label() for line in ax.get_lines()], fontsize=8)
        for text in legend.get_texts():  # a run in runs/mlp$x$ was drawn as math text, "mlp" and an italic x
            text.set_parse_math(False)
    fig.tight_layout()
    save_figure(fig, output, 110)
    return output


def _check_attention(run_dir: str, output_name: str) -> None:
    """A run with no attention to draw is told so before anything is exported (a GAN's run was
    told it "has no sampling graph" and to add a 'generate' section, as if that were all it lacked).
    A directory whose manifest cannot be read is left to export, which says what is wrong with it."""
    try:
        with open(os.path.join(run_dir, "graphs", "manifest.json"), encoding="utf-8") as f:
            graphs = json.load(f)["graphs"]
        outputs = [o["name"] for o in graphs["infer"]["outputs"]] if "infer" in graphs else []
        # a translator decodes by beam search; a language model's generate graph samples from a prompt,
        # and has no attention an output could name (it was told to add one)
        translator = "generate" in graphs and any(
            i["name"] == "beam_width" for i in graphs["generate"].get("inputs", []))
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not translator or output_name not in outputs:
        raise DataError(f"{run_dir} has no attention to draw: plot attention needs a translator, a spec with a "
                        f"'generate' section and an output {output_name!r}",
                        hint=("add e.g. 'attention: attn' under outputs (the scan's attention weights)"
                              if translator else
                              "train an attention model such as models/reverse_attention.yaml (its 'generate' "
                              "section and 'attention: attn' output), or add both to the spec"))
    # the text is read through the source vocabulary of a bundled seq2seq dataset: a run trained on
    # token ids of one's own has none (it was told that a temporary export "carries no source vocabulary")
    from .checkpoint import read_run_info

    info = read_run_info(run_dir, missing_ok=True)
    if info and "src_vocab" not in (info.get("meta") or {}):
        raise DataError(f"{run_dir} was trained on token ids without a vocabulary: plot attention reads --text "
                        "through the source vocabulary of a bundled seq2seq dataset (dates, reverse, copy)",
                        hint=f"export it and run it on ids: flowgrad export {run_dir} --graph infer -o model.onnx, then "
                             f"flowgrad predict model.onnx --data inputs.npz gives its {output_name!r} output")


def plot_attention(run_dir: str, text: str, output: str, output_name: str = "attention", checkpoint: str = "best") -> str:
    """Heat map of the attention weights while the run's model translates `text`:
    source characters across, generated characters down; `checkpoint` as export's."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .datasets_text import BOS, EOS, decode_target, encode_source
    from .export import export, load_model_safely, predict, translate_tokens

    _check_attention(run_dir, output_name)
    with tempfile.TemporaryDirectory() as tmp:
        gen, inf = os.path.join(tmp, "gen.onnx"), os.path.join(tmp, "infer.onnx")
        export(run_dir, gen, checkpoint, graph="generate", names=FLAGS)  # (flowgrad plot attention's: a hint names flags)
        export(run_dir, inf, checkpoint, graph="infer", names=FLAGS)
        if output_name not in [o.name for o in load_model_safely(inf).graph.output]:
            raise DataError(f"the spec has no output named {output_name!r}",
                            hint="add e.g. 'attention: attn' under outputs (the scan's attention weights)")
        tokens, meta = translate_tokens(gen, [text], beam_width=1)
        # the tokens as generated, up to an <eos>: one that stopped at max_len has none (a row
        # "<eos>" was drawn all the same, from a position the model never generated)
        ids = [int(i) for i in tokens[0]]
        ids = ids[:ids.index(EOS) + 1] if EOS in ids else ids
        result = decode_target(ids, meta)
        src = encode_source(text, meta)[None, :]
        outs = predict(inf, {"src": src, "src_len": np.asarray([len(text)]), "tgt_in": np.asarray([[BOS] + ids[:-1]])})
        weights = outs[output_name][0][:, :len(text)]  # [T, S]
    rows = [meta["tgt_vocab"][i] for i in ids]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.36 * len(text) + 1.5), max(3.0, 0.36 * len(rows) + 1.2)))
    ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="equal")
    ax.set_xticks(range(len(text)))
    ax.set_xticklabels([c if c != " " else "␣" for c in text], fontsize=9)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=9)
    ax.set_xlabel("source")
    ax.set_ylabel("generated")
    ax.set_title(f"{text!r} → {result!r}", fontsize=10, parse_math=False)  # ("$5 or $6" is no math)
    fig.tight_layout()
    save_figure(fig, output, 120)
    return output
