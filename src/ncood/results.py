"""Results: every number ncood measures, as one row of one tidy table.

```python
from ncood.results import Results
res = Results.load("runs/default")            # results.csv + run.json
df = res.to_frame()                            # pandas DataFrame, one measurement a row
res.select(metric="auroc", ood="digits")       # rows matching every given column
res.pivot("detector", "ood", metric="auroc", regime="standard")   # a report table
```

Columns (``COLUMNS``; docs/results_schema.md is the reference). A column that does not
apply to a row is empty (``NaN``/``None``): NC metrics have no ``detector``/``ood``, a
per-class value has its class in ``i``, a class pair ``(i, j)``.

Text that is not a measurement (the config, environment, data sources, timings,
versions, findings) lives in :attr:`Results.meta`, written as ``run.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ncood.errors import ConfigError, NcoodError
from ncood.io import atomic_open, write_json

FORMAT_VERSION = 1
CSV_NAME = "results.csv"
META_NAME = "run.json"

#: Identifying columns, in order; then the measurement columns.
KEYS = ("regime", "seed", "epoch", "layer", "detector", "ood", "metric", "params", "i", "j")
VALUES = ("value", "ci_low", "ci_high", "n_id", "n_ood")
COLUMNS = KEYS + VALUES
_TEXT = ("regime", "layer", "detector", "ood", "metric", "params")
_INT = ("seed", "epoch", "i", "j", "n_id", "n_ood")
_FLOAT = ("value", "ci_low", "ci_high")

#: The layer name of the head's input (the penultimate features).
PENULTIMATE = "penultimate"


def _params_text(params: Mapping[str, Any] | str | None) -> str | None:
    """Hyperparameters as canonical JSON (sorted keys), so equal settings compare equal."""
    if params is None or isinstance(params, str):
        return params or None
    return json.dumps(dict(params), sort_keys=True, default=_plain) if params else None


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} into the results table")


def row(
    metric: str,
    value: float,
    *,
    regime: str | None = None,
    seed: int | None = None,
    epoch: int | None = None,
    layer: str | None = None,
    detector: str | None = None,
    ood: str | None = None,
    params: Mapping[str, Any] | str | None = None,
    i: int | None = None,
    j: int | None = None,
    ci: tuple[float, float] | None = None,
    n_id: int | None = None,
    n_ood: int | None = None,
) -> dict[str, Any]:
    """One measurement as a dict with every column (the unit :class:`Results` stores)."""
    lo, hi = ci if ci is not None else (None, None)
    return {
        "regime": regime,
        "seed": seed,
        "epoch": epoch,
        "layer": layer,
        "detector": detector,
        "ood": ood,
        "metric": metric,
        "params": _params_text(params),
        "i": i,
        "j": j,
        "value": None if value is None else float(value),
        "ci_low": None if lo is None else float(lo),
        "ci_high": None if hi is None else float(hi),
        "n_id": n_id,
        "n_ood": n_ood,
    }


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with exactly :data:`COLUMNS` in order and one dtype per column."""
    missing = [c for c in COLUMNS if c not in df.columns]
    for c in missing:
        df[c] = None
    df = df[list(COLUMNS)].copy()
    for c in _TEXT:
        df[c] = df[c].astype("object").where(df[c].notna(), None)
    for c in _INT:
        df[c] = pd.array(pd.to_numeric(df[c], errors="raise"), dtype="Int64")
    for c in _FLOAT:
        df[c] = pd.to_numeric(df[c], errors="raise").astype("float64")
    return df.reset_index(drop=True)


class Results:
    """The tidy table of one run (or several, concatenated), plus its metadata.

    Args:
        rows: measurements, each a dict from :func:`row` or a DataFrame with the columns.
        meta: JSON-serialisable run metadata (config, environment, data, durations,
            versions, findings); written as ``run.json``.
    """

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]] | pd.DataFrame | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if rows is None:
            frame = pd.DataFrame(columns=list(COLUMNS))
        elif isinstance(rows, pd.DataFrame):
            frame = rows.copy()
        else:
            frame = pd.DataFrame.from_records(list(rows), columns=list(COLUMNS))
        self._frame = _typed(frame)
        self.meta: dict[str, Any] = dict(meta or {})

    # ------------------------------------------------------------------ building
    def add(self, metric: str, value: float, **keys: Any) -> None:
        """Append one measurement (keywords as in :func:`row`)."""
        self.extend([row(metric, value, **keys)])

    def extend(self, rows: Iterable[Mapping[str, Any]] | Results) -> None:
        """Append rows (dicts from :func:`row`, or another Results' table)."""
        new = rows.to_frame() if isinstance(rows, Results) else Results(rows).to_frame()
        if len(new):
            parts = [f for f in (self._frame, new) if len(f)]
            self._frame = _typed(pd.concat(parts, ignore_index=True))

    @classmethod
    def concat(cls, parts: Iterable[Results], meta: Mapping[str, Any] | None = None) -> Results:
        """One Results holding the rows of every part (``meta`` of the first unless given)."""
        parts = list(parts)
        frames = [p.to_frame() for p in parts if len(p)]
        frame = pd.concat(frames, ignore_index=True) if frames else None
        return cls(frame, meta if meta is not None else (parts[0].meta if parts else None))

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._frame)

    def __repr__(self) -> str:
        return f"Results({len(self)} rows, metrics={sorted(self.metrics())})"

    def to_frame(self) -> pd.DataFrame:
        """The table as a pandas DataFrame (a copy: editing it leaves the Results alone)."""
        return self._frame.copy()

    def metrics(self) -> list[str]:
        return sorted(self._frame["metric"].dropna().unique())

    def values(self, column: str, **filters: Any) -> list[Any]:
        """Distinct non-empty values of ``column`` among the rows matching ``filters``,
        in the order they first appear (regimes, detectors, OOD sets keep run order)."""
        col = self.select(**filters)[column].dropna()
        return list(dict.fromkeys(col.tolist()))

    def select(self, **filters: Any) -> pd.DataFrame:
        """Rows where every given column equals the given value.

        ``None`` matches an empty cell; a list or tuple matches any of its values.
        """
        df = self._frame
        mask = np.ones(len(df), dtype=bool)
        for col, want in filters.items():
            if col not in COLUMNS:
                raise ConfigError(f"results have no column {col!r}; columns: {list(COLUMNS)}")
            if col == "params":
                want = _params_text(want) if not isinstance(want, (list, tuple)) else want
            series = df[col]
            if want is None:
                mask &= series.isna().to_numpy()
            elif isinstance(want, (list, tuple, set)):
                mask &= series.isin(list(want)).fillna(False).to_numpy(dtype=bool)
            else:
                mask &= (series == want).fillna(False).to_numpy(dtype=bool)
        return df[mask].copy()

    def value(self, **filters: Any) -> float:
        """The single value matching ``filters``; NaN when none matches.

        Raises:
            NcoodError: more than one row matches (add a filter).
        """
        df = self.select(**filters)
        if len(df) > 1:
            raise NcoodError(
                f"{len(df)} results rows match {filters}; add a filter (e.g. epoch, layer, seed)"
            )
        return float(df["value"].iloc[0]) if len(df) else math.nan

    def pivot(
        self, index: str | list[str], columns: str | list[str], *, agg: str = "mean", **filters
    ) -> pd.DataFrame:
        """``value`` of the rows matching ``filters`` as an ``index x columns`` table.

        Rows and columns keep the order their labels first appear in. Several rows per
        cell (e.g. seeds) are combined by ``agg`` (``"mean"``, ``"std"``, ``"count"``, ...).
        """
        df = self.select(**filters)
        idx = [index] if isinstance(index, str) else list(index)
        cols = [columns] if isinstance(columns, str) else list(columns)
        if df.empty:
            return pd.DataFrame()
        out = df.pivot_table(index=idx, columns=cols, values="value", aggfunc=agg, sort=False)
        return out

    def seed_summary(self, **filters: Any) -> pd.DataFrame:
        """Mean, std (ddof=1) and count over seeds of every other key combination."""
        df = self.select(**filters)
        keys = [k for k in KEYS if k != "seed"]
        g = df.groupby(keys, dropna=False, sort=False)["value"]
        out = g.agg(mean="mean", std=lambda v: v.std(ddof=1), n="count").reset_index()
        return out

    # ------------------------------------------------------------------ disk
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``results.csv`` and ``run.json`` into ``directory`` (atomically)."""
        d = Path(directory)
        with atomic_open(d / CSV_NAME, "w") as fh:
            # repr-exact floats: a value read back compares equal to the one written
            self._frame.to_csv(fh, index=False, float_format=None, lineterminator="\n")
        write_json(d / META_NAME, {"results_format": FORMAT_VERSION, **self.meta})
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Results:
        """Read what :meth:`save` wrote; a missing or foreign file raises one clear error."""
        d = Path(directory)
        csv, meta_path = d / CSV_NAME, d / META_NAME
        if not csv.is_file():
            raise NcoodError(
                f"{str(d)!r} holds no {CSV_NAME}; point at the output directory of `ncood run`, "
                "`ncood score` or `ncood collapse`"
            )
        try:
            frame = pd.read_csv(csv, float_precision="round_trip", keep_default_na=True)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise NcoodError(f"cannot read {str(csv)!r} ({exc}); re-run to recreate it") from exc
        unknown = [c for c in frame.columns if c not in COLUMNS]
        if unknown:
            raise NcoodError(
                f"{str(csv)!r} has columns {unknown} this ncood does not know; it was written by "
                "another version (see results_format in run.json)"
            )
        meta: dict[str, Any] = {}
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError as exc:
                raise NcoodError(f"{str(meta_path)!r} is corrupt ({exc})") from exc
        version = meta.pop("results_format", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise NcoodError(
                f"{str(d)!r} holds results format {version}; this ncood reads format "
                f"{FORMAT_VERSION}: re-run with this version or install the one that wrote it"
            )
        return cls(frame, meta)
