"""Plain containers that flow between the stages: :class:`LinearHead`, :class:`FeatureSet`,
:class:`FeatureDir`.

This module is the leaf of the package: it imports nothing of ncood but errors,
validation and io.

A FeatureSet is what ``extract`` produces for one split of one dataset. It is saved as
one directory of ``.npy`` files plus ``meta.json``, written atomically (the ``meta.json``
is written last and lists every array with its shape and dtype, so a truncated or edited
directory is detected on load), and loaded memory-mapped.

Features computed elsewhere enter through :meth:`FeatureDir.from_arrays` (arrays in
Python) or a directory of ``.npz`` files (:func:`load_npz_feature_dir`, the layout of
``docs/byom.md``); :func:`load_feature_dir` reads either layout.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncood.errors import CheckpointError, ConfigError, DataError, ShapeError
from ncood.io import atomic_open, safe_name, safe_names, save_npy, write_json
from ncood.validation import as_labels, check_finite

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class LinearHead:
    """The final linear layer ``f = W z + b`` of a classifier.

    Args:
        weight: ``(n_classes, n_features)``.
        bias: ``(n_classes,)``.
    """

    weight: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        w = np.asarray(self.weight, dtype=np.float64)
        b = np.asarray(self.bias, dtype=np.float64)
        if w.ndim != 2:
            raise ShapeError(f"head weight must be 2-D (n_classes, n_features); got {w.shape}")
        if b.shape != (w.shape[0],):
            raise ShapeError(
                f"head bias must have shape ({w.shape[0]},) to match weight {w.shape}; "
                f"got {b.shape}"
            )
        check_finite(w, "head weight")
        check_finite(b, "head bias")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(n, D) -> (n, C)`` logits in float64."""
        return np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias

    def save(self, path: str | os.PathLike) -> None:
        """Save as ``.npz`` (atomically)."""
        with atomic_open(path, "wb") as fh:
            np.savez(fh, weight=self.weight, bias=self.bias)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearHead:
        try:
            with np.load(path, allow_pickle=False) as npz:
                return cls(npz["weight"], npz["bias"])
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"cannot read linear head {str(path)!r} ({exc}); re-run `ncood extract`"
            ) from exc


@dataclass
class FeatureSet:
    """Features of one split of one dataset, as seen by one network.

    Args:
        features: penultimate features ``(n_samples, n_features)``.
        logits: ``(n_samples, n_classes)``.
        labels: ``(n_samples,)`` int64, or ``None`` for unlabelled (OOD) data.
        name: e.g. ``"fashion_mnist/train"``.
        meta: free-form description (checkpoint hash, dataset, split, transform, layers).
        layers: optional per-layer pooled features, ``{layer_name: (n_samples, d_layer)}``.
    """

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray | None = None
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = np.asarray(self.features)
        lg = np.asarray(self.logits)
        if f.ndim != 2:
            raise ShapeError(f"features of {self.name!r} must be 2-D; got shape {f.shape}")
        if lg.ndim != 2 or lg.shape[0] != f.shape[0]:
            raise ShapeError(
                f"logits of {self.name!r} must have shape ({f.shape[0]}, n_classes); got {lg.shape}"
            )
        self.features, self.logits = f, lg
        if self.labels is not None:
            self.labels = as_labels(self.labels, f.shape[0], f"labels of {self.name!r}")
        for key, arr in list(self.layers.items()):
            arr = np.asarray(arr)
            if arr.ndim != 2 or arr.shape[0] != f.shape[0]:
                raise ShapeError(
                    f"layer {key!r} of {self.name!r} must have shape ({f.shape[0]}, d); "
                    f"got {arr.shape}"
                )
            self.layers[key] = arr

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def check_finite(self) -> None:
        """Raise a clear error if features or logits hold NaN/inf."""
        check_finite(np.asarray(self.features), f"features of {self.name!r}")
        check_finite(np.asarray(self.logits), f"logits of {self.name!r}")

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"features": self.features, "logits": self.logits}
        if self.labels is not None:
            out["labels"] = self.labels
        for key, arr in self.layers.items():
            out[f"layer.{key}"] = arr
        return out

    def save(self, directory: str | os.PathLike, *, link: bool = False) -> Path:
        """Write every array as ``.npy`` then ``meta.json`` (last, so it marks completeness).

        Args:
            directory: the feature set's directory (created).
            link: hard-link an array that is a read-only memory map of a whole ``.npy``
                file (as :meth:`load` returns them) instead of copying it; a copy where
                linking is not possible (another file system). Files are only ever
                replaced, never written in place, so a link cannot change afterwards.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta_path = d / "meta.json"
        if meta_path.exists():
            meta_path.unlink()  # an entry without meta.json is incomplete, never trusted
        listing = {}
        for key, arr in self.arrays().items():
            if not (link and _link_npy(arr, d / f"{key}.npy")):
                save_npy(d / f"{key}.npy", arr)
            listing[key] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        write_json(
            meta_path,
            {"format": FORMAT_VERSION, "name": self.name, "arrays": listing, "meta": self.meta},
        )
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, *, mmap: bool = True) -> FeatureSet:
        """Load a saved FeatureSet (memory-mapped by default); a damaged entry raises."""
        d = Path(directory)
        meta_path = d / "meta.json"
        try:
            doc = json.loads(meta_path.read_text())
            listing = doc["arrays"]
        except FileNotFoundError:
            raise CheckpointError(
                f"{str(d)!r} is not a complete feature set (no meta.json); "
                "re-run `ncood extract` to recreate it"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{str(meta_path)!r} is corrupt ({exc}); delete {str(d)!r} and re-run "
                "`ncood extract`"
            ) from exc
        arrays = {}
        for key, spec in listing.items():
            path = d / f"{key}.npy"
            try:
                arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise CheckpointError(
                    f"feature array {str(path)!r} is missing or truncated ({exc}); "
                    f"delete {str(d)!r} and re-run `ncood extract`"
                ) from exc
            if list(arr.shape) != list(spec["shape"]) or str(arr.dtype) != spec["dtype"]:
                raise CheckpointError(
                    f"feature array {str(path)!r} has shape {arr.shape} {arr.dtype}, but "
                    f"meta.json says {tuple(spec['shape'])} {spec['dtype']}; "
                    f"delete {str(d)!r} and re-run `ncood extract`"
                )
            arrays[key] = arr
        layers = {k[len("layer.") :]: v for k, v in arrays.items() if k.startswith("layer.")}
        return cls(
            features=arrays["features"],
            logits=arrays["logits"],
            labels=arrays.get("labels"),
            name=doc.get("name", ""),
            meta=doc.get("meta", {}),
            layers=layers,
        )


def _npy_source(arr: np.ndarray) -> Path | None:
    """The ``.npy`` file that ``arr`` maps in full, read-only; None for anything else."""
    mm = arr  # FeatureSet holds plain views of the memory maps np.load returns
    while mm is not None and not isinstance(mm, np.memmap):
        mm = getattr(mm, "base", None)
    if mm is None or not mm.filename or mm.mode != "r":
        return None
    start = arr.__array_interface__["data"][0]
    if not arr.flags.c_contiguous or start != mm.__array_interface__["data"][0]:
        return None
    path = Path(mm.filename)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            offset = fh.tell()
    except (OSError, ValueError):
        return None
    # same shape, dtype and data offset, C order: the view covers the whole file
    if tuple(shape) != arr.shape or fortran or dtype != arr.dtype or offset != mm.offset:
        return None
    return path


def _link_npy(arr: np.ndarray, dst: Path) -> bool:
    """Hard-link the ``.npy`` file behind ``arr`` to ``dst``; False when not possible."""
    src = _npy_source(arr)
    if src is None:
        return False
    if dst.exists() and os.path.samefile(src, dst):
        return True
    tmp = dst.with_name(f".{dst.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:  # another file system, or links not supported: copy instead
        log.debug("cannot hard-link %s to %s (%s); copying", src, dst, exc)
        tmp.unlink(missing_ok=True)
        return False
    return True


# --------------------------------------------------------------------------- FeatureDir
#: Relative tolerance of the check that given logits are ``W z + b``: 1% of the largest
#: logit (bf16 autocast keeps ~3 significant digits; a temperature or another head is off
#: by far more).
LOGITS_RTOL = 1e-2
_CHUNK = 8192  # rows per block when computing or checking logits (bounded temporaries)


@dataclass
class FeatureDir:
    """All features of one network: ID train/test, each OOD set, the head."""

    train: FeatureSet
    test: FeatureSet
    ood: dict[str, FeatureSet]
    head: LinearHead
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike, *, link: bool = False) -> Path:
        """Write the native layout that :func:`load_feature_dir` reads (``train/``,
        ``test/``, ``ood/<safe name>/``, ``head.npz``, ``extract.json`` last).

        ``link``: hard-link memory-mapped arrays instead of copying them
        (:meth:`FeatureSet.save`).
        """
        d = Path(directory)
        self.train.save(d / "train", link=link)
        self.test.save(d / "test", link=link)
        files = safe_names(self.ood)  # a name is never a path: no "..", "/" or ":" in it
        for name, fs in self.ood.items():
            fs.save(d / "ood" / files[name], link=link)
        self.head.save(d / "head.npz")
        write_json(d / "extract.json", {**self.meta, "ood": list(self.ood)})
        return d

    @classmethod
    def from_arrays(
        cls,
        *,
        train: tuple[Any, Any],
        test: Any,
        ood: Mapping[str, Any] | None = None,
        W: Any,
        b: Any,
        layers: Mapping[str, Any] | None = None,
        logits: Mapping[str, Any] | None = None,
        classes: list[str] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> FeatureDir:
        """Features computed elsewhere, checked, as a FeatureDir ``analyse`` measures.

        Notation of DESIGN.md: ``z`` the penultimate feature (the input of the final
        linear layer), logits ``f = W z + b``.

        Args:
            train: ``(Z, y)``: ID training features ``(n, D)`` and labels ``(n,)`` in
                ``0..C-1``, every class present (detectors and collapse metrics are
                fitted on them).
            test: ID test features ``(m, D)``, or ``(Z, y)`` with labels.
            ood: ``{name: Z}``, features ``(k, D)`` of each OOD set.
            W: head weight ``(C, D)``.
            b: head bias ``(C,)``.
            layers: optional pooled features of other layers, ``{"train": {layer:
                (n, d)}, "test": {layer: (m, d)}, "ood": {name: {layer: (k, d)}}}``;
                every split names the same layers with the same widths.
            logits: optional logits ``(n, C)`` in the same shape (``{"train": ...,
                "test": ..., "ood": {name: ...}}``); each must equal ``W z + b`` within
                1% of its largest value (:data:`LOGITS_RTOL`). Missing ones are computed
                as ``W z + b`` in float64 and stored in the features' float type.
            classes: ``C`` class names (default: none).
            meta: extra metadata kept in ``meta`` (and ``extract.json`` when saved).

        Returns:
            A :class:`FeatureDir` (``epoch`` None; save it with :meth:`save` for
            ``ncood score --features``).

        Raises:
            ShapeError: a wrong shape, a width that differs from ``W``'s, NaN/inf, labels
                that are not integers in ``0..C-1`` or miss a class, logits that are not
                ``W z + b``. One line naming the split and the array.
            ConfigError: a missing train label array, bad ``classes``, two OOD names
                with one file name.
        """
        w = np.asarray(W)
        bias = np.asarray(b)
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
            raise ShapeError(
                f"W must be the head weight, 2-D (n_classes, n_features); got shape {w.shape}"
            )
        if bias.shape != (w.shape[0],):
            raise ShapeError(
                f"b must be the head bias of shape ({w.shape[0]},) to match W {w.shape}; "
                f"got {bias.shape}"
            )
        _check_float(w, "W")
        _check_float(bias, "b")
        head = LinearHead(w, bias)
        c, dim = w.shape
        if classes is not None:
            classes = [str(x) for x in classes]
            if len(classes) != c:
                raise ConfigError(
                    f"classes must name the {c} classes of W {w.shape}; got {len(classes)} names"
                )
        if not (isinstance(train, (tuple, list)) and len(train) == 2 and train[1] is not None):
            raise ConfigError(
                "train must be a pair (features, labels): detectors and collapse metrics "
                f"are fitted on labelled training features; got {_describe(train)}"
            )
        if isinstance(test, (tuple, list)):
            if len(test) != 2:
                raise ConfigError(
                    f"test must be features (m, D) or a pair (features, labels); got a "
                    f"{type(test).__name__} of {len(test)} items"
                )
            test_z, test_y = test
        else:
            test_z, test_y = test, None
        ood = dict(ood or {})
        for name in ood:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"OOD set names must be non-empty strings; got {name!r}")
        safe_names(ood)  # two names, one file name: refused now, not when saved
        layers = dict(layers or {})
        logits = dict(logits or {})
        for what, given in (("layers", layers), ("logits", logits)):
            unknown = sorted(set(given) - {"train", "test", "ood"})
            if unknown:
                raise ConfigError(f"{what} keys are 'train', 'test' and 'ood'; got {unknown}")
        layer_ood = dict(layers.get("ood") or {})
        logit_ood = dict(logits.get("ood") or {})
        for what, given in (("layers['ood']", layer_ood), ("logits['ood']", logit_ood)):
            unknown = sorted(set(given) - set(ood))
            if unknown:
                raise ConfigError(
                    f"{what} names OOD sets {unknown} that are not in ood ({sorted(ood)})"
                )
        splits = {
            "train": (train[0], train[1], layers.get("train"), logits.get("train")),
            "test": (test_z, test_y, layers.get("test"), logits.get("test")),
        }
        for name, z in ood.items():
            splits[name] = (z, None, layer_ood.get(name), logit_ood.get(name))
        names = list(splits)
        first_layers: dict[str, int] | None = None
        sets: dict[str, FeatureSet] = {}
        for i, (key, (z, y, lay, lg)) in enumerate(splits.items()):
            where = f"{key!r}" if i < 2 else f"OOD set {key!r}"
            z = np.asarray(z)
            if z.ndim != 2 or z.shape[0] < 1:
                raise ShapeError(
                    f"features of {where} must be 2-D (n_samples, n_features) with at least "
                    f"one row; got shape {z.shape}"
                )
            _check_float(z, f"features of {where}")
            if z.shape[1] != dim:
                raise ShapeError(
                    f"features of {where} have {z.shape[1]} columns, but W {w.shape} "
                    f"expects {dim} (its input width); pass the head's input features"
                )
            n = z.shape[0]
            labels = None
            if y is not None:
                labels = as_labels(y, n, f"labels of {where}", num_classes=c)
            if key == "train":
                missing = np.flatnonzero(np.bincount(labels, minlength=c) == 0)
                if missing.size:
                    raise ShapeError(
                        f"labels of 'train' miss {missing.size} of the {c} classes of W "
                        f"(first: {int(missing[0])}); every class needs training features "
                        "(class means)"
                    )
            out_dtype = np.result_type(z.dtype, np.float32)
            if lg is None:
                lg = _head_logits(head, z, out_dtype)
            else:
                lg = np.asarray(lg)
                if lg.shape != (n, c):
                    raise ShapeError(
                        f"logits of {where} must have shape ({n}, {c}); got {lg.shape}"
                    )
                _check_float(lg, f"logits of {where}")
                _check_logits(head, z, lg, where)
            lay = dict(lay or {})
            widths = {}
            for lname, arr in lay.items():
                arr = np.asarray(arr)
                if arr.ndim != 2 or arr.shape[0] != n:
                    raise ShapeError(
                        f"layer {lname!r} of {where} must have shape ({n}, d); got {arr.shape}"
                    )
                _check_float(arr, f"layer {lname!r} of {where}")
                lay[lname] = arr
                widths[lname] = arr.shape[1]
            if first_layers is None:
                first_layers = widths
            elif widths != first_layers:
                raise ShapeError(
                    f"layers of {where} are {widths}, but 'train' has {first_layers}; give "
                    "every split the same layers with the same widths"
                )
            sets[key] = FeatureSet(z, lg, labels, name=key, meta={"source": "arrays"}, layers=lay)
        info = {
            "source": "arrays",
            "id_dataset": None,
            "classes": classes or [],
            "layers": list(first_layers or {}),
            "epoch": None,
            **dict(meta or {}),
        }
        return cls(
            train=sets["train"],
            test=sets["test"],
            ood={n: sets[n] for n in names[2:]},
            head=head,
            meta=info,
        )


def _describe(obj: Any) -> str:
    shape = getattr(obj, "shape", None)
    return f"a {type(obj).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def _check_float(arr: np.ndarray, name: str) -> None:
    if not np.issubdtype(arr.dtype, np.floating):
        raise ShapeError(f"{name} must be floating point; got dtype {arr.dtype}")
    check_finite(arr, name)


def _head_logits(head: LinearHead, z: np.ndarray, dtype: Any) -> np.ndarray:
    """``W z + b`` in float64, block by block, stored as ``dtype``: ``(n, C)``."""
    out = np.empty((z.shape[0], head.num_classes), dtype=dtype)
    for i in range(0, z.shape[0], _CHUNK):
        out[i : i + _CHUNK] = head.logits(z[i : i + _CHUNK])
    return out


def _check_logits(head: LinearHead, z: np.ndarray, lg: np.ndarray, where: str) -> None:
    """Given logits must be this head's output on ``z`` (within :data:`LOGITS_RTOL`)."""
    worst, at, scale = 0.0, (0, 0), 1.0
    for i in range(0, z.shape[0], _CHUNK):
        ref = head.logits(z[i : i + _CHUNK])  # (b, C) float64
        diff = np.abs(lg[i : i + _CHUNK].astype(np.float64) - ref)
        scale = max(scale, float(np.abs(ref).max()))
        j = np.unravel_index(int(diff.argmax()), diff.shape)
        if diff[j] > worst:
            worst, at = float(diff[j]), (i + int(j[0]), int(j[1]))
    if worst > LOGITS_RTOL * scale:
        raise ShapeError(
            f"logits of {where} are not W z + b: they differ by {worst:.4g} at row {at[0]}, "
            f"class {at[1]} (tolerance {LOGITS_RTOL * scale:.3g}); pass the logits of this "
            "head, or leave them out to have them computed"
        )


def load_feature_dir(directory: str | os.PathLike, *, mmap: bool = True) -> FeatureDir:
    """Load a features directory; a missing or damaged part raises one clear error.

    Two layouts, told apart by their files: the native one that ``ncood extract`` and
    ``ncood run`` write (``extract.json``, read memory-mapped), and a directory of
    ``.npz`` files (``train.npz``, no ``extract.json``: :func:`load_npz_feature_dir`).
    """
    d = Path(directory)
    meta_path = d / "extract.json"
    if not meta_path.is_file() and (d / "train.npz").is_file():
        return load_npz_feature_dir(d)
    if not meta_path.is_file():
        raise CheckpointError(
            f"{str(d)!r} is not a feature directory (no extract.json, no train.npz); "
            "create one with `ncood extract --checkpoint CKPT --out DIR`, or write "
            "train.npz, test.npz and head.npz there (docs/byom.md)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise CheckpointError(
            f"{str(meta_path)!r} is corrupt ({exc}); re-run `ncood extract`"
        ) from exc
    ood = {n: FeatureSet.load(d / "ood" / safe_name(n), mmap=mmap) for n in meta.get("ood", [])}
    return FeatureDir(
        train=FeatureSet.load(d / "train", mmap=mmap),
        test=FeatureSet.load(d / "test", mmap=mmap),
        ood=ood,
        head=LinearHead.load(d / "head.npz"),
        meta=meta,
    )


# --------------------------------------------------------------------------- .npz layout
#: Keys of each file of the ``.npz`` layout; ``layer.<name>`` keys are pooled layers.
NPZ_KEYS = {
    "train": ("features", "labels", "logits"),
    "test": ("features", "labels", "logits"),
    "ood": ("features", "logits", "labels"),  # OOD labels are read and ignored
    "head": ("W", "b", "weight", "bias", "classes"),
}


def _read_npz(path: Path, kind: str) -> dict[str, np.ndarray]:
    """Every array of one ``.npz`` file, keys checked against :data:`NPZ_KEYS`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"cannot read {str(path)!r} ({first}); write it with numpy.savez") from None
    allowed = NPZ_KEYS[kind]
    unknown = [
        k for k in arrays if k not in allowed and not (kind != "head" and k.startswith("layer."))
    ]
    if unknown:
        extra = "" if kind == "head" else ", layer.<name>"
        raise DataError(
            f"{str(path)!r} holds unknown key(s) {unknown}; a {kind} file holds "
            f"{', '.join(allowed)}{extra} (docs/byom.md)"
        )
    if kind != "head" and "features" not in arrays:
        raise DataError(
            f"{str(path)!r} has no 'features' array (keys: {sorted(arrays)}); save the "
            "penultimate features as features=..."
        )
    return arrays


def _npz_split(arrays: dict[str, np.ndarray]) -> tuple[Any, Any, dict, Any]:
    layers = {k[len("layer.") :]: v for k, v in arrays.items() if k.startswith("layer.")}
    return arrays["features"], arrays.get("labels"), layers, arrays.get("logits")


def load_npz_feature_dir(directory: str | os.PathLike) -> FeatureDir:
    """Read a directory of ``.npz`` files (features computed elsewhere) as a FeatureDir.

    Layout (every file written with ``numpy.savez``; ``layer.<name>`` keys optional,
    the same layers in every file):

    - ``train.npz``: ``features (n, D)``, ``labels (n,)`` ints ``0..C-1``; optional
      ``logits (n, C)``.
    - ``test.npz``: ``features (m, D)``; optional ``labels``, ``logits``.
    - ``ood/<name>.npz`` or ``ood_<name>.npz``, one per OOD set: ``features (k, D)``;
      optional ``logits`` (``labels`` ignored).
    - ``head.npz``: ``W (C, D)`` and ``b (C,)`` (or ``weight``/``bias``, the native
      ``head.npz``); optional ``classes`` (``C`` strings).

    Logits that are not given are ``W z + b``; given ones must match it
    (:meth:`FeatureDir.from_arrays`, which checks everything).

    Raises:
        DataError: a missing or unreadable file, an unknown key, an OOD set given twice.
        ShapeError, ConfigError: what :meth:`FeatureDir.from_arrays` refuses.
    """
    d = Path(directory)
    fix = "(docs/byom.md: train.npz, test.npz, ood/<name>.npz, head.npz)"
    for part in ("train", "test", "head"):
        if not (d / f"{part}.npz").is_file():
            what = {
                "train": "the ID training features and labels",
                "test": "the ID test features",
                "head": "the final linear layer: numpy.savez('head.npz', W=W, b=b)",
            }[part]
            raise DataError(f"{str(d)!r} has no {part}.npz ({what}) {fix}")
    head = _read_npz(d / "head.npz", "head")
    w = head.get("W", head.get("weight"))
    b = head.get("b", head.get("bias"))
    if w is None or b is None:
        raise DataError(
            f"{str(d / 'head.npz')!r} must hold the head's W (C, D) and b (C,); got keys "
            f"{sorted(head)}"
        )
    classes = head.get("classes")
    train = _npz_split(_read_npz(d / "train.npz", "train"))
    if train[1] is None:
        raise DataError(
            f"{str(d / 'train.npz')!r} has no 'labels' array; the training features need "
            "their labels (labels=y, ints 0..C-1) to fit detectors and collapse metrics"
        )
    test = _npz_split(_read_npz(d / "test.npz", "test"))
    files: dict[str, Path] = {}
    candidates = sorted((d / "ood").glob("*.npz")) if (d / "ood").is_dir() else []
    candidates += sorted(p for p in d.glob("ood_*.npz"))
    for path in candidates:
        name = path.stem if path.parent.name == "ood" else path.stem[len("ood_") :]
        if not name:
            raise DataError(f"{str(path)!r} names no OOD set; call it ood_<name>.npz")
        if name in files:
            raise DataError(
                f"OOD set {name!r} is given twice ({str(files[name])!r} and {str(path)!r}); "
                "keep one"
            )
        files[name] = path
    oods = {name: _npz_split(_read_npz(path, "ood")) for name, path in files.items()}
    layers = {"train": train[2], "test": test[2], "ood": {n: v[2] for n, v in oods.items()}}
    logits: dict[str, Any] = {"ood": {}}
    for key, part in (("train", train), ("test", test)):
        if part[3] is not None:
            logits[key] = part[3]
    logits["ood"] = {n: v[3] for n, v in oods.items() if v[3] is not None}
    return FeatureDir.from_arrays(
        train=(train[0], train[1]),
        test=(test[0], test[1]),
        ood={n: v[0] for n, v in oods.items()},
        W=w,
        b=b,
        layers=layers,
        logits=logits,
        classes=None if classes is None else [str(x) for x in np.asarray(classes).ravel()],
        meta={"source": "npz", "path": str(d)},
    )
