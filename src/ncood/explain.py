"""Why detectors work or fail on a network: interpretability analyses as results rows.

```python
from ncood.explain import explain_features, integrated_gradients, energy_score_fn
res = explain_features(fd, detectors={"vim": {}, "neco": {}}, scores=scores, regime="standard")
res.select(metric="pred_fraction", ood="digits")       # where the digits land
attr, delta = integrated_gradients(energy_score_fn(model), x)   # (n, C, H, W), (n,)
```

Every function reads features, logits and the head (a :class:`~ncood.types.FeatureDir`)
and returns rows of the results table (:func:`ncood.results.row`); the vocabulary is in
``docs/results_schema.md`` ("Explanations"). Statistics are float64; features are read in
chunks, so memory-mapped caches are never loaded whole. Analyses, per network:

* **Spectrum** (:func:`spectrum_rows`). Per principal component of the train features:
  the explained-variance ratio and the mean squared projection of the ID test set and of
  each OOD set, in the two bases the subspace detectors cut: NECO's (PCA of the
  standardised train features; Ben Ammar et al., ICLR 2024, arXiv 2310.06823) and ViM's
  (eigenvectors of ``(Z - u)^T (Z - u) / N`` about ``u = -pinv(W) b``; Wang et al.,
  CVPR 2022, arXiv 2203.10807), plus where each cuts (``subspace_dim``). Their premises
  as numbers: NECO's, that ID samples keep a larger share of their (standardised) energy
  in the top ``dim`` components than OOD samples (``top_energy_fraction``); ViM's, that
  OOD samples put a larger share, and norm, in the residual (``residual_energy_fraction``,
  ``residual_norm``). Pooled layers get the plain PCA spectrum (basis ``pca``).
* **Where OOD lands** (:func:`landing_rows`). Predicted-class histogram, mean MSP per
  predicted class, MSP and max-logit quantiles, per-class ``|cos(mu_c, mu_OOD)|`` (NC5
  per class) and the OOD mean's norm relative to the class means'.
* **Geometry** (:func:`geometry_rows`). The Gram matrix of normalised centred class means
  against the simplex ETF, per-class NC3 alignment ``cos(w_c, mu_c - mu_G)``, and 2-D
  coordinates of class means, OOD means and a sample of points in the plane of the two
  leading right singular vectors of the centred class means (Papyan, Han & Donoho 2020,
  arXiv 2008.08186).
* **Units** (:func:`unit_rows`). Per penultimate unit, activation quantiles of the ID test
  set and each OOD set, and two statistics of abnormal firing: the fraction of OOD
  activations above the unit's ID 99th percentile (``unit_exceed_fraction``; 0.01 when
  OOD behaves like ID) and the standardised mean shift (``unit_shift``). This is the
  premise of ReAct/ASH/SCALE (Sun et al. 2021, arXiv 2111.12797; Djurisic et al. 2023,
  arXiv 2209.09858; Xu et al. 2024, arXiv 2310.00227).
* **Examples** (:func:`example_rows`). Per detector: the OOD samples with the highest
  scores (most ID-looking) and the ID test samples with the lowest (most OOD-looking).
* **Attributions** (:func:`integrated_gradients`). Integrated Gradients (Sundararajan,
  Taly & Yan, ICML 2017, arXiv 1703.01365; captum's implementation, the optional extra
  ``explain``) of the energy score and of NECO's score, both written as torch functions
  of the input through the model's ``forward_features``/``forward_head`` only, so any
  model with that interface (ncood's, or one wrapped by
  :class:`ncood.models.adapters.ModelAdapter`) works.

:func:`explain_network` runs all of it on one network: from its checkpoint (``ncood
run``), or from the model itself with the streams its features came from (``ncood.evaluate(
..., explain=True)``), whose example rows are read by index in one pass
(:func:`stream_rows`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh
from scipy.special import logsumexp

from ncood.collapse import ClassStats
from ncood.collapse.stats import chunk_rows, iter_chunks, read_chunk
from ncood.data import InputSpec, load_images, to_model_input
from ncood.data.streams import as_transform
from ncood.detectors import create_detector
from ncood.distributed import resolve_device
from ncood.errors import ConfigError, ShapeError
from ncood.models.adapters import wrap_model
from ncood.results import PENULTIMATE, Results, row
from ncood.train import model_from_checkpoint
from ncood.types import FeatureDir, FeatureSet, LinearHead

log = logging.getLogger(__name__)

#: Quantiles of MSP and max-logit (``params={"q": q}``).
SCORE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Quantiles of each unit's activations (``params={"q": q}``).
UNIT_QUANTILES = (0.5, 0.9, 0.99)
#: The ID quantile an OOD activation must exceed to count in ``unit_exceed_fraction``.
EXCEED_QUANTILE = 0.99
#: Default number of examples per detector, OOD set and kind.
TOP_K = 6
#: Default number of sample points per split in the class-mean plane.
PLANE_POINTS = 150
#: Examples per detector and split that get Integrated Gradients, and its quadrature
#: points (completeness error 0.2-7% at 32-128 steps on resnet_narrow; the rows record it).
IG_TOP_K, IG_STEPS = 2, 48
#: Example kinds (``params={"kind": ...}``).
OOD_MOST_ID, ID_MOST_OOD = "ood_most_id", "id_most_ood"
CAPTUM_EXTRA = "install it with `pip install 'ncood[explain]'` (or `pip install captum`)"


# --------------------------------------------------------------------------- helpers
def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _msq_and_fractions(
    z, center: np.ndarray, scale: np.ndarray, basis: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component mean squared projection, and per sample top/residual energy.

    Args:
        z: ``(n, D)`` features (array or memmap; read in chunks).
        center, scale: ``(D,)``; samples are ``s = (z - center) / scale``.
        basis: ``(D, D)`` orthonormal columns, leading components first.
        dim: number of leading components in the "top" subspace.

    Returns:
        ``msq (D,)`` = mean over samples of ``(s . v_k)^2``; ``top (n,)`` =
        ``||V_top^T s||^2 / ||s||^2`` (1 where ``s = 0``); ``res_norm (n,)`` =
        ``||V_rest^T s||``.
    """
    n, d = z.shape
    msq = np.zeros(basis.shape[1])
    top = np.empty(n)
    res_norm = np.empty(n)
    for a, b in iter_chunks(n, chunk_rows(d)):
        s = (read_chunk(z, a, b, "features") - center) / scale  # (b, D)
        p = s @ basis  # (b, D)
        p2 = p * p
        msq += p2.sum(axis=0)
        total = (s * s).sum(axis=1)
        head = p2[:, :dim].sum(axis=1)
        top[a:b] = np.divide(head, total, out=np.ones_like(head), where=total > 0)
        res_norm[a:b] = np.sqrt(p2[:, dim:].sum(axis=1))
    return msq / max(n, 1), top, res_norm


def _descending_eigh(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    evals, evecs = eigh(cov)  # ascending
    return np.maximum(evals[::-1], 0.0), np.ascontiguousarray(evecs[:, ::-1])


def _fix_signs(vecs: np.ndarray) -> np.ndarray:
    """Columns with their largest-magnitude entry positive (a deterministic sign)."""
    idx = np.abs(vecs).argmax(axis=0)
    signs = np.sign(vecs[idx, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return vecs * signs


def _ood_keys(ood: str | None, n_id: int, n_ood: int | None) -> dict[str, Any]:
    return {"ood": ood, "n_id": n_id, "n_ood": n_ood}


# --------------------------------------------------------------------------- spectrum
def spectrum(
    stats: ClassStats, center: np.ndarray, scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the train features about ``center`` (divided by ``scale``).

    Args:
        stats: class statistics of the train features (with the second moment).
        center: ``(D,)`` the point the scatter is taken about (the train mean for PCA,
            ViM's origin ``u``).
        scale: ``(D,)`` per-feature divisor (NECO's standard deviations; constant features
            have scale 1 and are zeroed as NECO does) or ``None`` for 1.

    Returns:
        ``ratio (D,)`` eigenvalues / their sum, descending, and ``basis (D, D)`` the
        eigenvectors (columns) in that order.
    """
    cov = stats.scatter_about(center) / stats.n  # (D, D)
    if scale is not None:
        cov = cov / np.outer(scale, scale)
        constant = stats.constant_features()
        cov[constant, :] = 0.0
        cov[:, constant] = 0.0
    evals, basis = _descending_eigh(cov)
    total = evals.sum()
    if total <= 0:
        raise ShapeError("the train features do not vary; there is no spectrum to explain")
    return evals / total, basis


def spectrum_rows(
    stats: ClassStats,
    test: FeatureSet,
    oods: Mapping[str, FeatureSet],
    *,
    neco=None,
    vim=None,
    layer: str = PENULTIMATE,
    key: str | None = None,
    **keys: Any,
) -> list[dict[str, Any]]:
    """Spectrum rows of one layer (see the module docstring).

    Args:
        stats: class statistics of this layer's train features.
        test, oods: ID test and OOD feature sets; ``key`` picks ``fs.layers[key]``
            (``None``: the penultimate ``fs.features``).
        neco, vim: fitted NECO / ViM detectors (penultimate only): their bases and cuts.
            Without them the plain PCA basis (centred at the train mean) is used.
        layer: the rows' layer name.
        **keys: regime, seed, epoch of the rows.

    Returns:
        ``pc_variance_ratio`` (``i`` = component), ``pc_msq`` (ID test: ``ood`` empty;
        each OOD set), ``pc_msq_ratio`` (ID / OOD), per basis (``params={"basis": ...}``);
        with a detector: ``subspace_dim`` and ``top_energy_fraction`` (NECO) or
        ``residual_energy_fraction`` and ``residual_norm`` (ViM), per split.
    """

    def pick(fs: FeatureSet):
        return fs.features if key is None else fs.layers[key]

    bases: list[tuple[str, Any, np.ndarray, np.ndarray | None, int | None]] = []
    if neco is not None:
        bases.append(("neco", neco, neco.mean_, neco.scale_, int(neco.dim_)))
    if vim is not None:
        bases.append(("vim", vim, vim.origin_, None, int(vim.dim_)))
    if not bases:
        bases.append(("pca", None, stats.mean, None, None))
    out: list[dict[str, Any]] = []
    n_id = len(test)
    for name, det, center, scale, dim in bases:
        ratio, basis = spectrum(stats, center, scale)
        sc = np.ones_like(center) if scale is None else scale
        p = {"basis": name}
        base = {**keys, "layer": layer, "params": p}
        out += [row("pc_variance_ratio", r, i=k, n_id=stats.n, **base) for k, r in enumerate(ratio)]
        cut = dim if dim is not None else 1
        msq_id, top_id, res_id = _msq_and_fractions(pick(test), center, sc, basis, cut)
        out += [
            row("pc_msq", v, i=k, **_ood_keys(None, n_id, None), **base)
            for k, v in enumerate(msq_id)
        ]
        splits = [(None, top_id, res_id, n_id)]
        for oname, fs in oods.items():
            msq_o, top_o, res_o = _msq_and_fractions(pick(fs), center, sc, basis, cut)
            ok = _ood_keys(oname, n_id, len(fs))
            out += [row("pc_msq", v, i=k, **ok, **base) for k, v in enumerate(msq_o)]
            out += [
                row("pc_msq_ratio", a / b, i=k, **ok, **base)
                for k, (a, b) in enumerate(zip(msq_id, msq_o, strict=True))
                if b > 0
            ]
            splits.append((oname, top_o, res_o, len(fs)))
        if det is None:
            continue
        dkeys = {**keys, "layer": layer, "detector": name, "params": {**p, "dim": dim}}
        out.append(row("subspace_dim", dim, n_id=stats.n, **dkeys))
        for oname, top, res, n in splits:
            ok = _ood_keys(oname, n_id, None if oname is None else n)
            if name == "neco":
                out.append(row("top_energy_fraction", float(top.mean()), **ok, **dkeys))
            else:
                out.append(row("residual_energy_fraction", float(1 - top.mean()), **ok, **dkeys))
                out.append(row("residual_norm", float(res.mean()), **ok, **dkeys))
    return out


# --------------------------------------------------------------------------- landing
def _softmax_max(logits: np.ndarray) -> np.ndarray:
    f = _f64(logits)
    return np.exp(f.max(axis=1) - logsumexp(f, axis=1))


def landing_rows(
    stats: ClassStats,
    test: FeatureSet,
    oods: Mapping[str, FeatureSet],
    **keys: Any,
) -> list[dict[str, Any]]:
    """Where each OOD set lands, beside the ID test set (``ood`` empty).

    Returns rows ``pred_fraction`` (``i`` = predicted class; fraction of the split),
    ``pred_msp_mean`` (mean max-softmax of the samples predicted ``i``), ``msp_quantile``
    / ``maxlogit_quantile`` (``params={"q": q}``, :data:`SCORE_QUANTILES`, linear
    interpolation as ``np.quantile``), ``msp_mean``, ``maxlogit_mean``; per OOD set also
    ``nc5_class`` (``i``: ``|cos(mu_c, mu_OOD)|``, uncentred; their mean is NC5),
    ``ood_mean_norm_ratio`` (``||mu_OOD|| / mean_c ||mu_c||``) and
    ``ood_mean_norm_ratio_centred`` (``||mu_OOD - mu_G|| / mean_c ||mu_c - mu_G||``).
    """
    c = stats.num_classes
    means = stats.means  # (C, D) uncentred
    mu_g = means.mean(axis=0)
    norms = np.linalg.norm(means, axis=1)
    cnorms = np.linalg.norm(means - mu_g, axis=1)
    n_id = len(test)
    base = {**keys, "layer": PENULTIMATE}
    out: list[dict[str, Any]] = []
    for oname, fs in [(None, test), *oods.items()]:
        ok = _ood_keys(oname, n_id, None if oname is None else len(fs))
        f = _f64(fs.logits)
        pred = f.argmax(axis=1)
        msp = _softmax_max(f)
        mx = f.max(axis=1)
        counts = np.bincount(pred, minlength=c)
        out += [row("pred_fraction", k / len(fs), i=i, **ok, **base) for i, k in enumerate(counts)]
        out += [
            row("pred_msp_mean", float(msp[pred == i].mean()), i=i, **ok, **base)
            for i in range(c)
            if counts[i]
        ]
        for q in SCORE_QUANTILES:
            out.append(row("msp_quantile", np.quantile(msp, q), params={"q": q}, **ok, **base))
            out.append(row("maxlogit_quantile", np.quantile(mx, q), params={"q": q}, **ok, **base))
        out.append(row("msp_mean", float(msp.mean()), **ok, **base))
        out.append(row("maxlogit_mean", float(mx.mean()), **ok, **base))
        if oname is None:
            continue
        mu_o = _mean_rows(fs.features)
        cos = np.abs(means @ mu_o) / np.maximum(norms * np.linalg.norm(mu_o), 1e-300)
        out += [row("nc5_class", v, i=i, **ok, **base) for i, v in enumerate(cos)]
        out.append(row("ood_mean_norm_ratio", np.linalg.norm(mu_o) / norms.mean(), **ok, **base))
        out.append(
            row(
                "ood_mean_norm_ratio_centred",
                np.linalg.norm(mu_o - mu_g) / cnorms.mean(),
                **ok,
                **base,
            )
        )
    return out


def _mean_rows(z) -> np.ndarray:
    n, d = z.shape
    total = np.zeros(d)
    for a, b in iter_chunks(n, chunk_rows(d)):
        total += read_chunk(z, a, b, "features").sum(axis=0)
    return total / n


# --------------------------------------------------------------------------- geometry
def class_mean_plane(stats: ClassStats) -> tuple[np.ndarray, float]:
    """The plane of the two leading directions of the centred class means.

    Returns:
        ``basis (D, 2)``: the top two right singular vectors of ``M`` (rows ``mu_c -
        mu_G``), each with its largest-magnitude entry positive; and the fraction of
        ``||M||_F^2`` the plane holds.
    """
    m = stats.means - stats.means.mean(axis=0)  # (C, D)
    _, sv, vt = np.linalg.svd(m, full_matrices=False)
    k = min(2, vt.shape[0])
    basis = _fix_signs(vt[:k].T)
    if k < 2:
        basis = np.hstack([basis, np.zeros((basis.shape[0], 2 - k))])
    total = float((sv**2).sum())
    return basis, float((sv[:k] ** 2).sum() / total) if total > 0 else float("nan")


def geometry_rows(
    stats: ClassStats,
    head: LinearHead,
    test: FeatureSet,
    oods: Mapping[str, FeatureSet],
    *,
    n_points: int = PLANE_POINTS,
    sample_seed: int = 0,
    **keys: Any,
) -> list[dict[str, Any]]:
    """Class-mean geometry against the simplex ETF, NC3 per class, and the 2-D plane.

    Returns rows ``gram_etf_deviation`` (``i < j``: ``cos(mu_i - mu_G, mu_j - mu_G) +
    1/(C-1)``, 0 at the simplex ETF), ``gram_etf_distance`` (``||G - E||_F / ||E||_F``,
    ``G`` the Gram matrix of normalised centred means, ``E = C/(C-1) I - 1/(C-1) 11^T``),
    ``nc3_alignment`` (``i``: ``cos(w_c, mu_c - mu_G)``, the per-class NC3 of
    :func:`ncood.collapse.collapse_metrics`, repeated so that this analysis stands alone),
    ``plane_variance_fraction``, and ``plane_x`` / ``plane_y``: coordinates in
    :func:`class_mean_plane` of (relative to ``mu_G``) the class means
    (``params={"kind": "class_mean"}``, ``i``), the OOD means (``"ood_mean"``, ``ood``)
    and up to ``n_points`` samples per split (``"sample"``, ``j`` = sample index; ID
    test points carry their label in ``i``), drawn with ``sample_seed``.
    """
    c = stats.num_classes
    m = stats.means - stats.means.mean(axis=0)  # (C, D)
    mn = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-300)
    gram = mn @ mn.T
    etf = (c / (c - 1)) * np.eye(c) - 1.0 / (c - 1)
    base = {**keys, "layer": PENULTIMATE}
    out = [
        row("gram_etf_deviation", gram[a, b] - etf[a, b], i=a, j=b, n_id=stats.n, **base)
        for a in range(c)
        for b in range(a + 1, c)
    ]
    out.append(
        row(
            "gram_etf_distance",
            np.linalg.norm(gram - etf) / np.linalg.norm(etf),
            n_id=stats.n,
            **base,
        )
    )
    w = head.weight
    align = (w * m).sum(axis=1) / np.maximum(
        np.linalg.norm(w, axis=1) * np.linalg.norm(m, axis=1), 1e-300
    )
    out += [row("nc3_alignment", v, i=i, n_id=stats.n, **base) for i, v in enumerate(align)]
    basis, frac = class_mean_plane(stats)
    out.append(row("plane_variance_fraction", frac, n_id=stats.n, **base))
    mu_g = stats.means.mean(axis=0)

    def xy(metric_keys: dict[str, Any], pts: np.ndarray, **extra) -> None:
        for k, (x, y) in enumerate(pts):
            kk = {key: (v[k] if isinstance(v, np.ndarray) else v) for key, v in extra.items()}
            out.append(row("plane_x", x, **metric_keys, **kk))
            out.append(row("plane_y", y, **metric_keys, **kk))

    xy({**base, "params": {"kind": "class_mean"}, "n_id": stats.n}, m @ basis, i=np.arange(c))
    rng = np.random.default_rng(sample_seed)
    n_id = len(test)
    for oname, fs in [(None, test), *oods.items()]:
        ok = _ood_keys(oname, n_id, None if oname is None else len(fs))
        if oname is not None:
            mu_o = _mean_rows(fs.features)
            xy({**base, **ok, "params": {"kind": "ood_mean"}}, ((mu_o - mu_g) @ basis)[None])
        idx = np.sort(rng.choice(len(fs), size=min(n_points, len(fs)), replace=False))
        pts = (_f64(fs.features[idx]) - mu_g) @ basis
        extra: dict[str, Any] = {"j": idx}
        if oname is None and fs.labels is not None:
            extra["i"] = np.asarray(fs.labels)[idx]
        xy({**base, **ok, "params": {"kind": "sample"}}, pts, **extra)
    return out


# --------------------------------------------------------------------------- units
def unit_rows(
    test: FeatureSet,
    oods: Mapping[str, FeatureSet],
    *,
    quantiles: Sequence[float] = UNIT_QUANTILES,
    **keys: Any,
) -> list[dict[str, Any]]:
    """Per penultimate unit: activation quantiles (ID test, each OOD set) and abnormal firing.

    Returns rows ``unit_quantile`` (``i`` = unit, ``params={"q": q}``, ``np.quantile``
    linear interpolation), ``unit_exceed_fraction`` (``i``, ``ood``: fraction of the OOD
    set's activations strictly above the unit's ID-test :data:`EXCEED_QUANTILE` quantile;
    about 0.01 when the unit behaves on OOD data as on ID data, larger when it fires
    abnormally) and ``unit_shift`` (``i``, ``ood``: ``(mean_OOD - mean_ID) / std_ID``,
    population std; units constant on the ID test set are left out, their shift is
    undefined).
    """
    base = {**keys, "layer": PENULTIMATE}
    z_id = _f64(test.features)
    n_id = len(test)
    q_id = np.quantile(z_id, [*quantiles, EXCEED_QUANTILE], axis=0)
    thr = q_id[-1]
    mean_id, std_id = z_id.mean(axis=0), z_id.std(axis=0)
    out: list[dict[str, Any]] = []
    for oname, fs in [(None, test), *oods.items()]:
        ok = _ood_keys(oname, n_id, None if oname is None else len(fs))
        z = z_id if oname is None else _f64(fs.features)
        qv = q_id[:-1] if oname is None else np.quantile(z, list(quantiles), axis=0)
        for q, vals in zip(quantiles, qv, strict=True):
            out += [
                row("unit_quantile", v, i=u, params={"q": q}, **ok, **base)
                for u, v in enumerate(vals)
            ]
        if oname is None:
            continue
        exceed = (z > thr).mean(axis=0)
        out += [row("unit_exceed_fraction", v, i=u, **ok, **base) for u, v in enumerate(exceed)]
        shift = z.mean(axis=0) - mean_id
        out += [
            row("unit_shift", shift[u] / std_id[u], i=u, **ok, **base)
            for u in range(len(shift))
            if std_id[u] > 0
        ]
    return out


# --------------------------------------------------------------------------- examples
def top_examples(scores: np.ndarray, k: int, *, highest: bool) -> np.ndarray:
    """Indices of the ``k`` highest (or lowest) scores, best first; ties keep index order."""
    s = _f64(scores)
    order = np.argsort(-s if highest else s, kind="stable")
    return order[: min(k, len(s))]


def example_rows(
    scores: Mapping[str, np.ndarray], *, k: int = TOP_K, n_id: int | None = None, **keys: Any
) -> list[dict[str, Any]]:
    """The most ID-looking OOD samples and the most OOD-looking ID samples per detector.

    Args:
        scores: raw scores ``{"<detector>/<split>": (n,)}`` (``split`` = ``id`` or an OOD
            set), as :func:`ncood.analysis.analyse` fills ``scores_out``.
        k: examples per detector and split.

    Returns:
        rows ``example_score`` (``detector``, ``params={"kind": ...}``, ``i`` = rank,
        ``j`` = sample index in its split, ``value`` = the score): kind ``ood_most_id``
        (``ood`` = the set; highest scores) and ``id_most_ood`` (``ood`` empty; lowest).
    """
    out: list[dict[str, Any]] = []
    for key, s in scores.items():
        det, _, split = key.partition("/")
        if not split:
            raise ConfigError(f"score keys must be '<detector>/<split>'; got {key!r}")
        if split == "id":
            kind, oname, highest = ID_MOST_OOD, None, False
        else:
            kind, oname, highest = OOD_MOST_ID, split, True
        idx = top_examples(s, k, highest=highest)
        kk = {**keys, "layer": PENULTIMATE, "detector": det, "params": {"kind": kind}}
        nn = {"n_id": len(s) if oname is None else n_id, "n_ood": None if oname is None else len(s)}
        out += [
            row("example_score", float(s[j]), i=r, j=int(j), ood=oname, **nn, **kk)
            for r, j in enumerate(idx)
        ]
    return out


# --------------------------------------------------------------------------- all of it
def fit_subspace(
    fd: FeatureDir,
    detectors: Mapping[str, Mapping[str, Any] | None],
    stats: ClassStats | None = None,
):
    """NECO and ViM fitted on the train features with the run's hyperparameters.

    Args:
        detectors: ``{name: params}``; ``neco`` / ``vim`` entries give their
            hyperparameters (absent: the defaults).
        stats: the train features' class statistics, if already accumulated.

    Returns:
        ``(neco, vim)`` fitted detectors (a detector that cannot be fitted is ``None``,
        logged).
    """
    out = []
    for name in ("neco", "vim"):
        det = create_detector(name, **dict(detectors.get(name) or {}))
        try:
            out.append(det.fit(fd.train.features, fd.train.labels, fd.head, stats=stats))
        except (ConfigError, ShapeError) as exc:
            log.warning("explain: %s not fitted (%s); its spectrum cut is left out", name, exc)
            out.append(None)
    return tuple(out)


def explain_features(
    fd: FeatureDir,
    *,
    detectors: Mapping[str, Mapping[str, Any] | None] | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
    k: int = TOP_K,
    n_points: int = PLANE_POINTS,
    layers: bool = True,
    regime: str | None = None,
    seed: int | None = None,
    epoch: int | None = None,
) -> Results:
    """Every feature-space explanation of one network, as :class:`~ncood.results.Results`.

    Args:
        fd: the network's features (train with labels, test, OOD sets, head).
        detectors: the run's ``{name: hyperparameters}`` (NECO's and ViM's are used for
            their cuts; default: their defaults).
        scores: raw scores ``{"<detector>/<split>": (n,)}`` for the example rows; ``None``:
            no example rows.
        k: examples per detector and split.
        n_points: sample points per split in the class-mean plane.
        layers: also the plain PCA spectrum of every pooled layer.
        regime, seed, epoch: identify the network (``epoch`` default ``fd.meta["epoch"]``).
    """
    if fd.train.labels is None:
        raise ShapeError("the train split has no labels; the explanations need class means")
    epoch = fd.meta.get("epoch") if epoch is None else epoch
    keys = {"regime": regime, "seed": seed, "epoch": None if epoch is None else int(epoch)}
    c = fd.head.num_classes
    stats = ClassStats.from_features(fd.train.features, fd.train.labels, c)
    neco, vim = fit_subspace(fd, dict(detectors or {}), stats)
    rows = spectrum_rows(stats, fd.test, fd.ood, neco=neco, vim=vim, **keys)
    rows += landing_rows(stats, fd.test, fd.ood, **keys)
    rows += geometry_rows(stats, fd.head, fd.test, fd.ood, n_points=n_points, **keys)
    rows += unit_rows(fd.test, fd.ood, **keys)
    if scores:
        rows += example_rows(scores, k=k, n_id=len(fd.test), **keys)
    if layers:
        for name in fd.train.layers:
            z = fd.train.layers[name]
            if z.shape == fd.train.features.shape and np.array_equal(
                z[:256], fd.train.features[:256]
            ):
                continue  # the last stage pooled is the penultimate layer itself
            if not all(name in fs.layers for fs in [fd.test, *fd.ood.values()]):
                continue
            lstats = ClassStats.from_features(z, fd.train.labels, c)
            rows += spectrum_rows(lstats, fd.test, fd.ood, layer=name, key=name, **keys)
    return Results(rows)


# --------------------------------------------------------------------------- attributions
def _import_captum():
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ConfigError(
            f"Integrated Gradients needs the optional package captum, which is not installed; "
            f"{CAPTUM_EXTRA}; or set explain: false in the run config"
        ) from None
    return IntegratedGradients


def energy_score_fn(model, *, T: float = 1.0) -> Callable:
    """``x (n, C, H, W) -> (n,)`` energy score ``T * logsumexp(f / T)`` as a torch function.

    Uses only ``model.forward_features`` and ``model.forward_head`` (Liu et al., NeurIPS
    2020, arXiv 2010.03759).
    """

    def fn(x):
        f = model.forward_head(model.forward_features(x))  # (n, C)
        return T * torch.logsumexp(f / T, dim=1)

    return fn


def neco_score_fn(model, neco) -> Callable:
    """``x -> (n,)`` NECO's score ``||V^T s|| / ||s||``, ``s = (z - mean) / scale``.

    ``neco`` is a fitted :class:`ncood.detectors.subspace.NECO`; its float64 statistics
    are applied to ``model.forward_features(x)`` in the features' dtype (times the max
    logit when it was built with ``use_maxlogit``). Differentiable wherever ``s != 0``.
    """
    if not hasattr(neco, "components_"):
        raise ConfigError("neco_score_fn needs a fitted NECO detector; call fit first")

    def fn(x):
        z = model.forward_features(x)  # (n, D)
        mean = torch.as_tensor(neco.mean_, dtype=z.dtype, device=z.device)
        scale = torch.as_tensor(neco.scale_, dtype=z.dtype, device=z.device)
        comps = torch.as_tensor(neco.components_, dtype=z.dtype, device=z.device)  # (D, dim)
        s = (z - mean) / scale
        out = torch.linalg.vector_norm(s @ comps, dim=1) / torch.linalg.vector_norm(s, dim=1)
        if neco.use_maxlogit:
            out = out * model.forward_head(z).max(dim=1).values
        return out

    return fn


def integrated_gradients(
    score_fn: Callable,
    x,
    *,
    baseline=None,
    n_steps: int = 32,
    internal_batch_size: int | None = 64,
    params=None,
):
    """Integrated Gradients of a scalar score per sample w.r.t. the input image.

    Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017
    (arXiv 1703.01365), with captum's Gauss-Legendre quadrature. Completeness: the
    attributions of a sample sum to ``score(x) - score(baseline)`` up to the quadrature
    error, which captum returns as the convergence delta.

    Args:
        score_fn: ``x (n, C, H, W) -> (n,)`` (e.g. :func:`energy_score_fn`).
        x: model input ``(n, C, H, W)`` (already normalised).
        baseline: same shape, or ``None`` for zeros (the mean image of the normalisation).
        n_steps: quadrature points.
        internal_batch_size: path points per forward/backward pass (captum's).
        params: the model's parameters, switched out of autograd during the attribution
            (only input gradients are needed); ``None``: left as they are.

    Returns:
        ``(attributions (n, C, H, W) tensor, delta (n,) tensor)``; ``delta = sum(attr) -
        (score(x) - score(baseline))``.

    Raises:
        ConfigError: captum is not installed.
    """
    ig_cls = _import_captum()
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ShapeError(
            f"x must be a 4-D image tensor (n, C, H, W); got {type(x).__name__} "
            f"{tuple(getattr(x, 'shape', ()))}"
        )
    base = torch.zeros_like(x) if baseline is None else baseline
    ig = ig_cls(score_fn)
    with _frozen(params or ()):
        attr, delta = ig.attribute(
            x,
            baselines=base,
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=True,
        )
    return attr.detach(), delta.detach()


@contextlib.contextmanager
def _frozen(params):
    """Parameters with ``requires_grad`` off (weight gradients are not needed: ~1.5x
    faster backward passes on CPU), restored afterwards."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def example_images(
    fs: FeatureSet,
    indices: Sequence[int],
    shape: tuple[int, int, int],
    *,
    root=None,
    allow_subset: bool = False,
):
    """The images behind rows ``indices`` of a feature set, re-read as extract read them.

    Uses the feature set's ``meta`` (``dataset``, ``split``, ``subset.n``/``seed``), so
    the same subset is drawn; ``shape`` is the model's ``(C, H, W)`` input.

    Returns:
        ``uint8`` tensor ``(len(indices), C', H', W')`` of the stored images.

    Raises:
        DataError: the data is missing; ShapeError: the re-read set has another length.
    """
    m = fs.meta
    sub = m.get("subset") or {}
    arrays = load_images(
        m["dataset"],
        m.get("split", "test"),
        root=root,
        n=sub.get("n"),
        seed=int(sub.get("seed", 0)),
        shape=tuple(shape),
        allow_subset=allow_subset,
        download=False,
    )
    if len(arrays) != len(fs):
        raise ShapeError(
            f"re-reading {fs.name!r} gave {len(arrays)} images for {len(fs)} feature rows; "
            "the data changed since extraction: re-run the extraction"
        )
    return arrays.images[list(map(int, indices))]


#: The scores attributed (detector names).
ATTRIBUTED = ("energy", "neco")
#: Largest relative feature difference ``||z - z_stored|| / ||z_stored||`` at which a
#: re-read example image counts as the one extracted: a different image differs by O(1),
#: bf16 extraction against a float32 forward pass by < 1%.
REREAD_TOLERANCE = 0.05


def stream_rows(stream: Any, indices: Sequence[int]) -> torch.Tensor:
    """Rows ``indices`` (positions in iteration order) of an image stream, read in one pass.

    The stream (an :class:`ncood.data.streams.ImageStream` or any iterable of ``(x, y)``
    batches) is iterated up to its last wanted row; only the wanted rows are kept, so no
    split is ever held in memory.

    Returns:
        The rows ``(len(set(indices)), C, H, W)`` in ascending index order, as the stream
        yields them (``uint8`` images, or float model input for a user's own transforms).

    Raises:
        ShapeError: the stream ended before the last wanted row.
    """
    want = sorted({int(j) for j in indices})
    got: dict[int, torch.Tensor] = {}
    pos = 0
    if want:
        for x, _ in stream:
            n = len(x)
            for j in want:
                if pos <= j < pos + n:
                    got[j] = x[j - pos].clone()
            pos += n
            if pos > want[-1]:
                break
    if len(got) < len(want):
        name = getattr(stream, "name", type(stream).__name__)
        raise ShapeError(
            f"{name!r} yielded {pos} images but the examples need row {want[-1]}; the data "
            "changed since extraction: re-run the extraction"
        )
    return torch.stack([got[j] for j in want]) if want else torch.empty(0)


def _display_uint8(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` images as they are; float model input min-max scaled per image to uint8
    (for display only: a user's own transforms are not inverted)."""
    if x.dtype == torch.uint8:
        return x.cpu()
    v = x.detach().float().cpu()
    lo = v.amin(dim=(1, 2, 3), keepdim=True)
    hi = v.amax(dim=(1, 2, 3), keepdim=True)
    return ((v - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)


class _Examples:
    """The example images of one split: display ``uint8`` images and model input."""

    def __init__(self, index: list[int], display: torch.Tensor, inputs: Callable) -> None:
        self.index, self.display, self._inputs = index, display, inputs
        self.row = {j: k for k, j in enumerate(index)}

    def inputs(self, idx: Sequence[int], device) -> torch.Tensor:
        return self._inputs([self.row[j] for j in idx]).to(device)


def _gather_examples(
    fd: FeatureDir,
    split: str,
    idx: list[int],
    *,
    sources: Mapping[str, Any] | None,
    transform: Callable | None,
    shape: tuple[int, int, int] | None,
    root,
    allow_subset: bool,
) -> _Examples:
    """Images of rows ``idx`` of a split: from ``sources[split]`` (a stream) when given,
    else re-read from the registered data set named in the feature set's meta."""
    fs = fd.test if split == "id" else fd.ood[split]
    if sources is not None and split in sources:
        stream = sources[split]
        raw = stream_rows(stream, idx)  # (m, C, H, W)
        if raw.dtype == torch.uint8:
            tf = getattr(stream, "transform", None) or transform
            if tf is None:
                raise ConfigError(
                    f"{getattr(stream, 'name', split)!r} yields uint8 images but no transform "
                    "was given; pass transform=eval_transform(model) (or an InputSpec)"
                )

            def inputs(rows, _raw=raw, _tf=tf):
                return _tf(_raw[rows])

        else:

            def inputs(rows, _raw=raw):
                return _raw[rows].float()

        return _Examples(idx, _display_uint8(raw), inputs)
    if transform is None or shape is None:
        raise ConfigError(
            f"the example images of {split!r} can only be re-read from a registered data set "
            "with the model's transform and input shape; pass sources={split: stream} or "
            "transform= and shape="
        )
    if "dataset" not in (fs.meta or {}):
        raise ConfigError(
            f"the feature set {fs.name!r} does not name the data set it was extracted from; "
            f"pass sources={{{split!r}: stream}} (ncood.data.streams.open_stream)"
        )
    ims = example_images(fs, idx, shape, root=root, allow_subset=allow_subset)

    def reread(rows, _ims=ims, _tf=transform):
        return _tf(_ims[rows])

    return _Examples(idx, ims, reread)


def _feature_errors(model, fd: FeatureDir, gathered: Mapping[str, _Examples], device):
    """Per split, the largest relative difference between the stored features of the
    example rows and the model's features of the images gathered for them (one batched
    forward pass for every split: each call of a small network on CPU costs more in
    overhead than in arithmetic)."""
    splits = list(gathered)
    if not splits:
        return {}
    x = torch.cat([gathered[s].inputs(gathered[s].index, device) for s in splits])
    with torch.no_grad():
        z = model.forward_features(x).double().cpu().numpy()  # (m, D)
    out, start = {}, 0
    for s in splits:
        ex = gathered[s]
        fs = fd.test if s == "id" else fd.ood[s]
        ref = _f64(fs.features[np.asarray(ex.index)])  # (m_s, D)
        zs = z[start : start + len(ex.index)]
        start += len(ex.index)
        err = np.linalg.norm(zs - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
        out[s] = float(err.max())
    return out


def explain_attributions(
    model,
    fd: FeatureDir,
    examples: Results,
    *,
    neco,
    transform: Callable | None = None,
    shape: tuple[int, int, int] | None = None,
    sources: Mapping[str, Any] | None = None,
    root=None,
    allow_subset: bool = False,
    ig_k: int = IG_TOP_K,
    n_steps: int = IG_STEPS,
    notes: list[dict[str, Any]] | None = None,
    **keys: Any,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Images of the example rows and Integrated Gradients of the energy and NECO scores.

    The images come from ``sources`` (streams of the splits, read once up to the last
    example: :func:`stream_rows`) or are re-read from the registered data sets the feature
    sets name (:func:`example_images`). Either way they are checked against the stored
    features: a split whose re-read images give other features (by more than
    :data:`REREAD_TOLERANCE`; e.g. a shuffling DataLoader) gets no images and no
    attributions, with a warning and a note.

    Args:
        model: the network, with ``forward_features`` / ``forward_head`` (in eval mode).
        fd: its features (the example indices refer to its splits).
        examples: ``example_score`` rows (:func:`example_rows`).
        neco: the fitted NECO detector (``None``: no NECO attributions).
        transform: ``uint8 (n, C, H, W) -> model input`` (e.g. ``to_model_input`` with the
            checkpoint's ``InputSpec``, or an ``EvalTransform``); for streams of ``uint8``
            images without a transform of their own, and for re-reading.
        shape: the model's input ``(C, H, W)`` (how images are re-read).
        sources: ``{"id": stream, "<ood set>": stream}`` (:class:`ImageStream` s, in the
            order they were extracted); splits not in it are re-read.
        root, allow_subset: where the data is, as for the extraction (re-reading).
        ig_k: attributions for the ``ig_k`` top examples per detector and split.
        n_steps: quadrature points of Integrated Gradients.
        notes: receives ``{"regime", ..., "note"}`` dicts for splits left out.
        **keys: regime, seed, epoch of the rows.

    Returns:
        ``(rows, arrays)``. Rows ``ig_score_gap`` (``score(x) - score(baseline)``) and
        ``ig_completeness_error`` (``|sum(attributions) - gap| / |gap|``), per attributed
        detector (``energy``, ``neco``), split and sample ``j``. Arrays (for the report):
        ``"<split>/images"`` ``uint8 (m, C, H, W)`` and ``"<split>/index"`` ``(m,)`` for
        every example of every detector (``split`` = ``id`` or an OOD set), and
        ``"ig/<detector>/<split>"`` ``float32 (m', H, W)`` channel-summed attributions
        with ``"ig/<detector>/<split>/index"``.
    """
    df = examples.select(metric="example_score")
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    arrays: dict[str, np.ndarray] = {}
    gathered: dict[str, _Examples] = {}
    for split in ["id", *fd.ood]:
        sel = df[df["ood"].isna()] if split == "id" else df[df["ood"] == split]
        idx = sorted(set(sel["j"].astype(int).tolist()))
        if idx:
            gathered[split] = _gather_examples(
                fd, split, idx, sources=sources, transform=transform, shape=shape, root=root,
                allow_subset=allow_subset,
            )  # fmt: skip
    for split, err in _feature_errors(model, fd, gathered, device).items():
        if err > REREAD_TOLERANCE:
            text = (
                f"example images of {split!r} left out: re-read, they give features "
                f"{100 * err:.0f}% away from the extracted ones (the source changed or is "
                "not in a fixed order, e.g. a shuffling DataLoader)"
            )
            log.warning("%s: %s", keys.get("regime"), text)
            if notes is not None:
                notes.append({**keys, "layer": PENULTIMATE, "detector": None, "note": text})
            del gathered[split]
            continue
        ex = gathered[split]
        arrays[f"{split}/images"] = ex.display.numpy()
        arrays[f"{split}/index"] = np.asarray(ex.index, dtype=np.int64)
    params = list(model.parameters()) if hasattr(model, "parameters") else None
    fns = {"energy": energy_score_fn(model)}
    if neco is not None:
        fns["neco"] = neco_score_fn(model, neco)
    rows: list[dict[str, Any]] = []
    for det, fn in fns.items():
        # every split's top examples in one Integrated Gradients call (per-call overhead)
        parts: list[tuple[str, list[int]]] = []
        for split in gathered:
            sel = df[
                (df["detector"] == det)
                & (df["ood"].isna() if split == "id" else df["ood"] == split)
            ]
            idx = sel.sort_values("i")["j"].astype(int).tolist()[:ig_k]
            if idx:
                parts.append((split, idx))
        if not parts:
            continue
        x = torch.cat([gathered[split].inputs(idx, device) for split, idx in parts])
        with torch.no_grad():
            both = fn(torch.cat([x, torch.zeros_like(x)])).double().cpu().numpy()
        gap = both[: len(x)] - both[len(x) :]  # score(x) - score(baseline), (m,)
        attr, delta = integrated_gradients(fn, x, n_steps=n_steps, params=params)
        maps = attr.sum(dim=1).float().cpu().numpy()  # (m, H, W)
        err = np.abs(delta.double().cpu().numpy()) / np.maximum(np.abs(gap), 1e-12)
        start = 0
        for split, idx in parts:
            sl = slice(start, start + len(idx))
            start += len(idx)
            arrays[f"ig/{det}/{split}"] = maps[sl]
            arrays[f"ig/{det}/{split}/index"] = np.asarray(idx, dtype=np.int64)
            kk = {
                **keys,
                "layer": PENULTIMATE,
                "detector": det,
                "ood": None if split == "id" else split,
                "params": {"n_steps": n_steps, "baseline": "zeros"},
            }
            for j, g, e in zip(idx, gap[sl], err[sl], strict=True):
                rows.append(row("ig_score_gap", g, j=j, **kk))
                rows.append(row("ig_completeness_error", e, j=j, **kk))
    return rows, arrays


def captum_available() -> bool:
    """Whether the optional captum package (Integrated Gradients) can be imported."""
    try:
        _import_captum()
    except ConfigError:
        return False
    return True


def explain_network(
    fd: FeatureDir,
    model,
    *,
    transform: Any = None,
    sources: Mapping[str, Any] | None = None,
    detectors: Mapping[str, Mapping[str, Any] | None] | None = None,
    scores: Mapping[str, np.ndarray] | None = None,
    data_root=None,
    allow_subset: bool = False,
    device: str = "cpu",
    attributions: bool = True,
    regime: str | None = None,
    seed: int | None = None,
    epoch: int | None = None,
) -> tuple[Results, dict[str, np.ndarray]]:
    """The explanation rows of one network and the arrays its report section shows.

    :func:`explain_features` on ``fd``, then (with ``attributions``, ``scores`` and captum
    installed) the example images and Integrated Gradients of the network
    (:func:`explain_attributions`). Without captum the attributions are left out with a
    warning and a note in ``Results.meta["notes"]`` (the feature analyses still run).

    Args:
        fd: the network's features.
        model: an ncood checkpoint (path or dict; the network is rebuilt on ``device``
            and images are re-read as extracted, with the checkpoint's input
            normalisation), or the network itself: an ``nn.Module`` with
            ``forward_features`` / ``forward_head`` (an ncood model or a
            :class:`~ncood.models.adapters.ModelAdapter`; any other module is wrapped
            by :func:`~ncood.models.adapters.wrap_model`), used where it is, in eval
            mode during the call.
        transform: for a model: its :class:`~ncood.data.streams.EvalTransform` (or
            ``InputSpec``), used to re-read registered data sets and for ``uint8``
            streams without a transform.
        sources: ``{"id": stream, "<ood set>": stream}``: the streams the splits were
            extracted from (:func:`ncood.data.streams.open_stream`); the example rows are
            taken from them by index (:func:`stream_rows`). ``None``: re-read from the
            registered data sets the feature sets name.
        detectors: the run's ``{name: hyperparameters}`` (NECO's and ViM's cuts).
        scores: raw scores ``{"<detector>/<split>": (n,)}`` (example rows; ``None``: no
            examples and no attributions).
        data_root, allow_subset: where registered data is found (re-reading).
        device: where a checkpoint's network is rebuilt.
        attributions: compute the example images and Integrated Gradients.
        regime, seed, epoch: identify the network in the rows.

    Returns:
        ``(results, arrays)``; ``arrays`` as :func:`explain_attributions` describes.
    """
    epoch = fd.meta.get("epoch") if epoch is None else epoch
    keys = {"regime": regime, "seed": seed, "epoch": None if epoch is None else int(epoch)}
    res = explain_features(fd, detectors=detectors, scores=scores, **keys)
    notes: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    if attributions and scores:
        if not captum_available():
            text = f"Integrated Gradients left out: captum is not installed; {CAPTUM_EXTRA}"
            log.warning("%s: %s", regime, text)
            notes.append({**keys, "layer": PENULTIMATE, "detector": None, "note": text})
        else:
            neco, _ = fit_subspace(fd, dict(detectors or {}))
            opts = dict(
                neco=neco, sources=sources, root=data_root, allow_subset=allow_subset,
                notes=notes, **keys,
            )  # fmt: skip
            if isinstance(model, (str, os.PathLike, dict)):
                net, ckpt = model_from_checkpoint(model, device=resolve_device(device))
                net.eval()
                spec = InputSpec.from_dict(ckpt["input_spec"])
                dev = next(net.parameters()).device
                rows, arrays = explain_attributions(
                    net, fd, res,
                    transform=lambda im: to_model_input(im.to(dev), spec),
                    shape=(spec.channels, spec.size, spec.size), **opts,
                )  # fmt: skip
                del net
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            else:
                net = wrap_model(model)
                tf = as_transform(transform)
                shape = None if tf is None else (tf.channels, tf.size, tf.size)
                was_training = net.training
                net.eval()
                try:
                    rows, arrays = explain_attributions(
                        net, fd, res, transform=tf, shape=shape, **opts
                    )
                finally:
                    net.train(was_training)
            res.extend(rows)
    res.meta["notes"] = notes
    return res, arrays
