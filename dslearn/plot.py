"""Plot helpers: loss curves straight from metrics logs."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt

from .train.metrics import read_metrics


def plot_loss_curves(runs: dict[str, str | os.PathLike] | str | os.PathLike, ax=None,
                     train_key: str = "loss", val_key: str = "val_bpb", title: str | None = None):
    """Training loss (left axis, nats/token) and validation bits per byte (right axis) of one or
    more runs, given as {label: run_dir} or one run_dir. Returns the matplotlib Axes."""
    if not isinstance(runs, dict):
        runs = {os.path.basename(os.fspath(runs).rstrip("/")): runs}
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    ax2 = ax.twinx()
    for i, (label, path) in enumerate(runs.items()):
        color = f"C{i}"
        train, val = read_metrics(path, "train"), read_metrics(path, "val")
        ax.plot([r["step"] for r in train], [r[train_key] for r in train], color=color, alpha=0.5,
                label=f"{label}: train loss")
        if val:
            ax2.plot([r["step"] for r in val], [r[val_key] for r in val], "o-", color=color, ms=3,
                     label=f"{label}: validation {val_key.replace('val_', '')}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax2.set_ylabel("validation bits per byte")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8)
    ax.set_title(title or "Training curves")
    ax.grid(alpha=0.3)
    return ax
