"""Input checks shared by every stage. Each raises a one-line, actionable error."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any

import numpy as np

from ncood.errors import ConfigError, ShapeError
from ncood.registry import closest


def as_2d_float(x, name: str, *, dtype=np.float64, copy: bool = False) -> np.ndarray:
    """Return ``x`` as a finite 2-D float array ``(n_samples, n_features)``."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ShapeError(
            f"{name} must be a 2-D array (n_samples, n_features); got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ShapeError(f"{name} is empty (0 samples); pass at least one sample")
    arr = arr.astype(dtype, copy=copy) if arr.dtype != dtype else arr
    check_finite(arr, name)
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise if ``arr`` has NaN or inf, saying how many and where the first one is."""
    if not np.isfinite(arr).all():
        bad = ~np.isfinite(arr)
        n_bad = int(bad.sum())
        first = np.argwhere(bad)[0].tolist()
        raise ShapeError(
            f"{name} contains {n_bad} NaN/inf value(s) (first at index {first}); "
            "check the model output or drop those samples"
        )


def as_labels(y, n: int, name: str = "labels", num_classes: int | None = None) -> np.ndarray:
    """Return integer labels of length ``n`` in ``[0, num_classes)``."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeError(f"{name} must have shape ({n},); got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise ShapeError(f"{name} must be integers; got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n and arr.min() < 0:
        raise ShapeError(f"{name} must be >= 0; got minimum {int(arr.min())}")
    if num_classes is not None and n and arr.max() >= num_classes:
        raise ShapeError(
            f"{name} must lie in 0..{num_classes - 1} (num_classes={num_classes}); "
            f"got {int(arr.max())}"
        )
    return arr


def check_width(got: int, expected: int, what: str, owner: str) -> None:
    """Raise the sklearn-style width error: 'X has 64 features, but NECO is expecting 512'."""
    if got != expected:
        raise ShapeError(
            f"{what} has {got} features, but {owner} is expecting {expected} features as "
            "input; use features from the same layer/model the object was fitted on"
        )


def check_number(
    value,
    name: str,
    owner: str,
    *,
    kind: type = numbers.Real,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
):
    """Validate a scalar hyperparameter the scikit-learn way and return it."""
    lo_b = "(" if low_open else "["
    hi_b = ")" if high_open else "]"
    rng = f"{lo_b}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi_b}"
    typename = "an int" if kind is numbers.Integral else "a float"
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok:
        if low is not None and (value <= low if low_open else value < low):
            ok = False
        if high is not None and (value >= high if high_open else value > high):
            ok = False
        if isinstance(value, float) and not np.isfinite(value):
            ok = False
    if not ok:
        raise ConfigError(
            f"The {name!r} parameter of {owner} must be {typename} in the range {rng}. "
            f"Got {value!r} instead."
        )
    return value


# ---------------------------------------------------------------------- configs
def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp)
        return isinstance(value, dict) and all(
            _type_ok(a, k) and _type_ok(b, v) for a, b in value.items()
        )
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise.

    Nested dataclass fields are built recursively; ``where`` names the mapping in errors
    (``config.data.ood``).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping; got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"unknown key {where}.{key}{closest(str(key), names)}; valid keys: "
                f"{', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{where}.{key}")
        elif not _type_ok(value, tp):
            expected = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
            raise ConfigError(
                f"{where}.{key} must be of type {expected}; got {value!r} ({type(value).__name__})"
            )
        else:
            kwargs[key] = value
    return cls(**kwargs)
