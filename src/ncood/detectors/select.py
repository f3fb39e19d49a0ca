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
from ncood.results import PENULTIMATE, row

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


def selectable(detectors: Sequence[str], wanted: Sequence[str] | None = None) -> list[str]:
    """The detectors a run selects hyperparameters for, in ``detectors`` order.

    Args:
        detectors: the run's detector names.
        wanted: ``None`` = every one of ``detectors`` whose :func:`default_grid` is not
            empty; else these names, each of which must be among ``detectors`` and have a
            grid.

    Raises:
        ConfigError: a wanted name that is not a run detector or has no grid.
    """
    if wanted is None:
        return [n for n in detectors if default_grid(n)]
    for name in wanted:
        if name not in detectors:
            raise ConfigError(
                f"detector {name!r} is not among the run's detectors "
                f"({', '.join(detectors) or 'none'}); add it to detectors or remove it"
            )
        if not default_grid(name):
            raise ConfigError(
                f"detector {name!r} has no hyperparameter grid, so there is nothing to "
                f"select; remove it (detectors with grids: "
                f"{', '.join(n for n in detectors if default_grid(n)) or 'none'})"
            )
    return list(dict.fromkeys(wanted))


def fixed_params(name: str, configured: Mapping[str, Any] | None) -> dict[str, Any]:
    """The configured hyperparameters of ``name`` held fixed during selection: every
    one except those its grid searches (which the chosen values replace)."""
    grid = default_grid(name)
    return {k: v for k, v in (configured or {}).items() if k not in grid}


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


def grid_candidates(name: str, grid: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every combination of ``grid`` (keys in order, the last varying fastest); ``[]`` for
    an empty grid. Raises ConfigError for a key ``name`` does not take or an empty list."""
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
    candidates = grid_candidates(name, grid) or [{}]
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
    return _chosen(
        name,
        grid,
        results,
        n_val_id=int(len(id_z) if id_z is not None else len(id_f)),
        n_val_ood=int(len(ood_z) if ood_z is not None else len(ood_f)),
    )


def _chosen(
    name: str,
    grid: dict[str, list],
    results: list[dict[str, Any]],
    *,
    n_val_id: int,
    n_val_ood: int,
) -> SelectionResult:
    """The candidate with the highest validation AUROC (ties: the earliest in grid order)."""
    best = max(range(len(results)), key=lambda i: (results[i]["auroc"], -i))
    return SelectionResult(
        detector=name,
        params=dict(results[best]["params"]),
        val_auroc=results[best]["auroc"],
        grid=grid,
        candidates=results,
        n_val_id=n_val_id,
        n_val_ood=n_val_ood,
    )


def select_from_scores(
    name: str,
    grid: Mapping[str, Sequence],
    candidates: Sequence[tuple[Mapping[str, Any], Any, Any]],
) -> SelectionResult:
    """Choose among candidates whose validation scores were computed elsewhere.

    For detectors that are not feature-array detectors (ODIN runs the network,
    :func:`ncood.odin.odin_select`): the caller scores the ID validation split and the
    validation OOD set with every candidate; the choice is the one :func:`select` makes.

    Args:
        name: the detector's name (recorded, not looked up in the registry).
        grid: the grid searched, ``{param: [values]}``.
        candidates: ``(params, id_scores (n_val_id,), ood_scores (n_val_ood,))`` per
            candidate, in grid order; scores higher = more in-distribution.

    Returns:
        :class:`SelectionResult`; ties in validation AUROC go to the earliest candidate.

    Raises:
        ConfigError: no candidates, or candidates scored on different sample counts.
    """
    if not candidates:
        raise ConfigError(f"no candidates to select {name!r} from; pass a non-empty grid")
    results = []
    sizes = set()
    for params, id_scores, ood_scores in candidates:
        sizes.add((len(id_scores), len(ood_scores)))
        results.append({"params": dict(params), "auroc": float(auroc(id_scores, ood_scores))})
    if len(sizes) != 1:
        raise ConfigError(
            f"the candidates of {name!r} were scored on different validation sample counts "
            f"{sorted(sizes)}; score every candidate on the same ID and OOD samples"
        )
    ((n_id, n_ood),) = sizes
    grid = {k: list(v) for k, v in grid.items()}
    return _chosen(name, grid, results, n_val_id=int(n_id), n_val_ood=int(n_ood))


def selection_rows(
    result: SelectionResult, *, val_ood: str, layer: str = PENULTIMATE, **keys: Any
) -> list[dict[str, Any]]:
    """Rows of the results table for one selection (the shared selection row schema).

    One ``selection_auroc`` row per candidate (``params`` = its hyperparameters, ``value``
    = its validation AUROC) and one ``selection_chosen`` row (the chosen hyperparameters
    and their validation AUROC); ``detector`` = ``result.detector``, ``ood`` = the
    validation OOD set, ``n_id`` / ``n_ood`` = the validation sample counts.

    Args:
        result: a :class:`SelectionResult`.
        val_ood: the name of the validation OOD set.
        layer: the row's layer (``"penultimate"``: the head).
        keys: ``regime``, ``seed``, ``epoch`` of the network.
    """
    common = dict(
        detector=result.detector,
        ood=val_ood,
        layer=layer,
        n_id=result.n_val_id,
        n_ood=result.n_val_ood,
        **keys,
    )
    rows = [row("selection_auroc", c["auroc"], params=c["params"], **common)
            for c in result.candidates]  # fmt: skip
    rows.append(row("selection_chosen", result.val_auroc, params=result.params, **common))
    return rows


def selection_meta(result: SelectionResult, *, val_ood: str) -> dict[str, Any]:
    """``run.json``'s ``meta["selection"][detector]`` entry of one selection."""
    return {
        "grid": {k: list(v) for k, v in result.grid.items()},
        "chosen": dict(result.params),
        "val_auroc": result.val_auroc,
        "val_ood": val_ood,
        "n_val_id": result.n_val_id,
        "n_val_ood": result.n_val_ood,
    }
