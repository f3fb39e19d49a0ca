"""Collapse across training: every NC metric and NC5 at every snapshot.

Papyan, Han & Donoho (PNAS 2020, arXiv 2008.08186) show the metrics shrinking during the
terminal phase of training (after the training error reaches zero); NECO (Ben Ammar et
al., ICLR 2024, arXiv 2310.06823) adds NC5, the ID/OOD orthogonality, which should grow
with it. :func:`epoch_analysis` computes all of them per snapshot and marks the first
epoch with zero training error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ncood.collapse.metrics import HEAD_SCALARS, collapse_metrics, nc5, nc5_centred, to_jsonable
from ncood.collapse.stats import ClassStats
from ncood.errors import ShapeError
from ncood.types import FeatureSet, LinearHead

log = logging.getLogger(__name__)


class Snapshot(NamedTuple):
    """One training snapshot: the train features, the head and the OOD features.

    ``train_error`` is the training error in ``[0, 1]``, or ``None`` to compute it from
    ``train.logits`` (the snapshot's own predictions on these samples).
    """

    epoch: int
    train: FeatureSet
    head: LinearHead
    train_error: float | None
    ood: Mapping[str, FeatureSet]


@dataclass
class EpochResult:
    """Metrics per snapshot, in epoch order.

    Attributes:
        epochs: epoch numbers.
        metrics: one dict per epoch: every :func:`collapse_metrics` entry, plus
            ``train_error``, ``nc5 {ood_name: float}`` and ``nc5_centred {ood_name: float}``.
        zero_error_epoch: first epoch whose training error is 0, or ``None``.
    """

    epochs: list[int]
    metrics: list[dict[str, Any]]
    zero_error_epoch: int | None
    ood_names: list[str] = field(default_factory=list)

    def series(self, key: str) -> np.ndarray:
        """``(n_epochs,)`` values of one scalar metric (``"nc5/<ood>"`` for NC5)."""
        if key.startswith("nc5/") or key.startswith("nc5_centred/"):
            group, name = key.split("/", 1)
            return np.array([m[group].get(name, np.nan) for m in self.metrics], dtype=float)
        return np.array([m.get(key, np.nan) for m in self.metrics], dtype=float)

    def table(self) -> list[dict[str, Any]]:
        """One row per epoch with the scalar metrics."""
        rows = []
        for epoch, m in zip(self.epochs, self.metrics, strict=True):
            row: dict[str, Any] = {"epoch": epoch, "train_error": m["train_error"]}
            row.update({k: m[k] for k in HEAD_SCALARS if k in m})
            row.update({f"nc5/{k}": v for k, v in m["nc5"].items()})
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "epochs": self.epochs,
                "zero_error_epoch": self.zero_error_epoch,
                "ood": self.ood_names,
                "table": self.table(),
                "metrics": self.metrics,
            }
        )


def train_error_from_logits(fs: FeatureSet) -> float:
    """Fraction of ``fs`` whose ``argmax(logits)`` differs from its label."""
    if fs.labels is None:
        raise ShapeError(f"feature set {fs.name!r} has no labels; the train split needs labels")
    pred = np.asarray(fs.logits).argmax(axis=1)
    return float(np.mean(pred != fs.labels))


def epoch_analysis(
    snapshots: Iterable[Snapshot | tuple],
    *,
    zero_tol: float = 0.0,
    chunk_size: int | None = None,
) -> EpochResult:
    """NC1-NC5 at every snapshot of a training run.

    Args:
        snapshots: ``(epoch, train FeatureSet, head, train_error, {ood_name: FeatureSet})``
            tuples or :class:`Snapshot` objects, in any order (sorted by epoch).
        zero_tol: training error at or below this counts as zero (default: exactly 0).
        chunk_size: rows per chunk.

    Returns:
        :class:`EpochResult`.
    """
    snaps = sorted((Snapshot(*s) for s in snapshots), key=lambda s: s.epoch)
    if not snaps:
        raise ShapeError("no snapshots given; pass at least one (epoch, train, head, ...) tuple")
    epochs, metrics = [], []
    ood_names: list[str] = []
    for snap in snaps:
        fs = snap.train
        if fs.labels is None:
            raise ShapeError(f"train features of epoch {snap.epoch} have no labels")
        stats = ClassStats.from_features(fs.features, fs.labels, snap.head.num_classes)
        m = collapse_metrics(fs.features, fs.labels, snap.head, stats=stats, chunk_size=chunk_size)
        err = snap.train_error
        m["train_error"] = float(train_error_from_logits(fs) if err is None else err)
        m["train_error_source"] = "logits" if err is None else "given"
        m["nc5"], m["nc5_centred"] = {}, {}
        for name, ood in snap.ood.items():
            m["nc5"][name] = nc5(None, None, ood.features, stats=stats, chunk_size=chunk_size)
            m["nc5_centred"][name] = nc5_centred(
                None, None, ood.features, stats=stats, chunk_size=chunk_size
            )
            if name not in ood_names:
                ood_names.append(name)
        log.info("epoch %d: nc1=%.4g train_error=%.4g", snap.epoch, m["nc1"], m["train_error"])
        epochs.append(int(snap.epoch))
        metrics.append(m)
    zero = next(
        (e for e, m in zip(epochs, metrics, strict=True) if m["train_error"] <= zero_tol), None
    )
    return EpochResult(epochs=epochs, metrics=metrics, zero_error_epoch=zero, ood_names=ood_names)
