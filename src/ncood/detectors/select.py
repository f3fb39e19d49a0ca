"""Hyperparameter selection on validation data (OpenOOD's "APS" mode, done safely).

Every candidate of a grid is fitted on the ID train set and scored on an ID validation
split (held out from the training data) and a validation OOD set that must be disjoint
from every test OOD set; the candidate with the highest validation AUROC wins. Test sets
are never an argument here, so selection cannot look at them.

```python
from ncood.detectors.select import select
res = select("react", None, train_z, train_y, head,
             val_id=(val_z, val_logits), val_ood=(vood_z, vood_logits))
res.params        # {"percentile": 90}   -> create_detector("react", **res.params)
res.candidates    # [{"params": {...}, "auroc": 0.93}, ...] in grid order
```

Default grids (:func:`default_grid`): the detector class's ``grid`` attribute (OpenOOD
v1.5's sweep where it has one; see docs/detectors.md), else ``DEFAULT_GRIDS`` below for
detectors defined elsewhere; a detector without tunable hyperparameters has the single
candidate ``{}``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ncood.collapse.stats import ClassStats
from ncood.detectors.base import create_detector, detector_class
from ncood.errors import ConfigError, ShapeError
from ncood.metrics import auroc

# Grids of detectors whose class does not carry one (defined in modules owned elsewhere).
DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    # OpenOOD v1.5 configs/postprocessors/react.yml
    "react": {"percentile": [85, 90, 95, 99]},
    # ncood's own: the explained-variance fraction that fixes NECO's dimension
    "neco": {"variance": [0.8, 0.9, 0.95, 0.99]},
}


def default_grid(name: str) -> dict[str, list]:
    """The documented grid of detector ``name`` (``{}`` if it has no hyperparameters)."""
    cls = detector_class(name)
    grid = getattr(cls, "grid", None) or DEFAULT_GRIDS.get(name, {})
    return {k: list(v) for k, v in grid.items()}


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of :func:`select`.

    Attributes:
        detector: registry name.
        params: the chosen hyperparameters (grid values merged over ``fixed``).
        val_auroc: the chosen candidate's validation AUROC.
        grid: the grid searched, ``{param: [values]}``.
        candidates: every candidate in grid order, ``{"params", "auroc"}``.
        n_val_id, n_val_ood: validation sample counts.
    """

    detector: str
    params: dict[str, Any]
    val_auroc: float
    grid: dict[str, list]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    n_val_id: int = 0
    n_val_ood: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for results tables and reports)."""
        return {
            "detector": self.detector,
            "params": dict(self.params),
            "val_auroc": self.val_auroc,
            "grid": {k: list(v) for k, v in self.grid.items()},
            "candidates": [dict(c) for c in self.candidates],
            "n_val_id": self.n_val_id,
            "n_val_ood": self.n_val_ood,
        }


def _pair(value, name: str) -> tuple[Any, Any]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 2:
        raise ShapeError(
            f"{name} must be a pair (features (n, D), logits (n, C)); got "
            f"{type(value).__name__}; pass e.g. {name}=(features, logits)"
        )
    return value[0], value[1]


def _candidates(name: str, grid: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    valid = detector_class(name).param_names()
    for key, values in grid.items():
        if key not in valid:
            raise ConfigError(
                f"grid of {name!r} has no parameter {key!r}; valid parameters: "
                f"{', '.join(valid) if valid else '(none)'}"
            )
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(
                f"grid[{key!r}] of {name!r} must be a non-empty list of values; got {values!r}"
            )
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def select(
    name: str,
    grid: Mapping[str, Sequence] | None,
    train_features,
    train_labels,
    head,
    *,
    val_id: tuple[Any, Any],
    val_ood: tuple[Any, Any],
    fixed: Mapping[str, Any] | None = None,
    stats=None,
) -> SelectionResult:
    """Choose the hyperparameters of detector ``name`` by validation AUROC.

    Args:
        name: registered detector name.
        grid: ``{param: [values]}``; every combination is tried (in the order of the
            keys and values). ``None`` = :func:`default_grid`.
        train_features, train_labels, head: what ``Detector.fit`` takes (ID train).
        val_id: ``(features (n, D), logits (n, C))`` of an ID validation split held out
            from the training data.
        val_ood: ``(features, logits)`` of a validation OOD set, disjoint from every
            test OOD set (the caller's responsibility: no test set is passed here).
        fixed: hyperparameters held fixed for every candidate.
        stats: optional precomputed ``ClassStats`` of the train set (shared by every
            candidate of a ``uses_stats`` detector; computed once otherwise).

    Returns:
        :class:`SelectionResult`. Ties in validation AUROC go to the earliest candidate
        in grid order.

    Raises:
        ConfigError: unknown detector or parameter, an empty grid entry, or a value the
            detector rejects.
    """
    grid = default_grid(name) if grid is None else {k: list(v) for k, v in grid.items()}
    fixed = dict(fixed or {})
    overlap = set(fixed) & set(grid)
    if overlap:
        raise ConfigError(
            f"parameters {sorted(overlap)} of {name!r} are both fixed and in the grid; "
            "pass each in one place"
        )
    candidates = _candidates(name, grid) or [{}]
    cands = [create_detector(name, **fixed, **c) for c in candidates]  # validates all first
    id_z, id_f = _pair(val_id, "val_id")
    ood_z, ood_f = _pair(val_ood, "val_ood")
    cls = detector_class(name)
    if cls.uses_stats and stats is None and train_features is not None:
        stats = ClassStats.from_features(
            train_features, train_labels, head.num_classes, name="train features"
        )
    results = []
    for params, det in zip(candidates, cands, strict=True):
        det.fit(
            train_features if (det.needs_train_features or stats is None) else None,
            train_labels,
            head,
            stats=stats if det.uses_stats else None,
        )
        value = auroc(det.score(id_z, id_f), det.score(ood_z, ood_f))
        results.append({"params": {**fixed, **params}, "auroc": float(value)})
    best = max(range(len(results)), key=lambda i: (results[i]["auroc"], -i))
    return SelectionResult(
        detector=name,
        params=dict(results[best]["params"]),
        val_auroc=results[best]["auroc"],
        grid=grid,
        candidates=results,
        n_val_id=int(len(id_z) if id_z is not None else len(id_f)),
        n_val_ood=int(len(ood_z) if ood_z is not None else len(ood_f)),
    )
