"""Training-curve figure: loss, accuracy and learning rate per epoch.

Built on :class:`matplotlib.figure.Figure` directly, without pyplot: nothing global (the
backend, the list of open figures) changes, and saving renders with Agg.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_history(history: list[dict[str, Any]], title: str = "") -> Figure:
    """Three panels (loss, accuracy, learning rate) against the epoch.

    Args:
        history: per-epoch records with ``epoch``, ``train_loss``, ``test_loss``,
            ``train_acc``, ``test_acc`` (fractions) and ``lr``.
        title: figure title (e.g. the run's model and regime).

    Returns:
        The figure (the caller saves it; it is not registered with pyplot).
    """
    fig = Figure(figsize=(12, 3.4), constrained_layout=True)
    axes = fig.subplots(1, 3)
    epochs = [row["epoch"] for row in history]
    ax = axes[0]
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax.plot(epochs, [r["test_loss"] for r in history], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.legend()
    ax = axes[1]
    ax.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train")
    ax.plot(epochs, [100 * r["test_acc"] for r in history], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    ax = axes[2]
    ax.plot(epochs, [r["lr"] for r in history], "o-", color="tab:gray")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate (epoch start)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    return fig
