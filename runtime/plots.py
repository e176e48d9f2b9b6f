"""Pictures of runs, drawn headless with matplotlib."""
from __future__ import annotations

import json
import os

from spec.errors import DataError


def read_history(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise DataError(f"{run_dir} has no metrics.jsonl", hint="pass a directory written by 'flowgrad train'")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(run_dirs: list[str], output: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {d.rstrip("/"): read_history(d) for d in run_dirs}
    measures = []
    for hist in histories.values():
        for rec in hist:
            for k in rec:
                name = k.split("_", 1)[1] if k.startswith(("train_", "valid_")) else None
                if name and name not in measures:
                    measures.append(name)
    if not measures:
        raise DataError("the runs recorded no metrics yet")
    fig, axes = plt.subplots(1, len(measures), figsize=(5 * len(measures), 4), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        for (run, hist), color in zip(histories.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
            label = os.path.basename(run) or run
            epochs = [r["epoch"] for r in hist]
            for split, style in (("train", "--"), ("valid", "-")):
                key = f"{split}_{measure}"
                ys = [r.get(key) for r in hist]
                if any(y is not None for y in ys):
                    ax.plot(epochs, ys, style, color=color, label=f"{label} {split}")
        ax.set_title(measure)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
