"""A realistic synthetic :class:`~ncood.results.Results` and raw scores for the report tests.

Two regimes (``standard`` and ``memorize``), six detectors (``zoo=True``: all 21 of the
registry), three OOD sets, the ten Fashion-MNIST classes, a 6-epoch training history,
collapse at 5 layers and at snapshots [0, 1, 2, 4, 6]. Every number is computed, not typed
in: OOD metrics from synthetic scores (scikit-learn curves, the toolkit's conventions);
every NC metric from synthetic class-conditional features and a synthetic head with the
formulas of DESIGN.md section 4, written here independently of ``ncood.collapse``;
bootstrap intervals (``intervals=True``) from a plain loop over replicates; validation
AUROC of every grid candidate (``selection=True``, the rows of the shared selection
schema) from synthetic validation scores. So the numbers are mutually consistent, and the
tests can check the report against them.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score

from ncood.analysis import relation_rows
from ncood.data.datasets import FASHION_MNIST_CLASSES
from ncood.results import PENULTIMATE, Results, row

CLASSES = list(FASHION_MNIST_CLASSES)
DETECTORS = ["msp", "maxlogit", "energy", "mahalanobis", "vim", "neco"]
OOD_SETS = ["digits", "texture_crops", "gaussian_noise"]
REGIMES = ["standard", "memorize"]
LAYERS = ["stem", "layer1", "layer2", "layer3", PENULTIMATE]
DIMS = [16, 16, 32, 48, 48]
SNAPSHOTS = [0, 1, 2, 4, 6]
LAST = SNAPSHOTS[-1]
LAYER_DETECTORS = ["mahalanobis", "vim", "neco"]
N_PER_CLASS = 60
PARAMS = {"msp": {"T": 1.0}, "energy": {"T": 1.0}, "vim": {"dim": 32}, "neco": {"variance": 0.9}}
# the 21 registered detectors (zoo=True): the reference six first, as a run lists them
ZOO = [*DETECTORS, "knn", "rmds", "gen", "fdbd", "nci", "scale", "ash_s", "ash_p", "ash_b",
       "react", "dice", "nnguide", "she", "kl_matching", "entropy"]  # fmt: skip
ZOO_LAYER_DETECTORS = [*LAYER_DETECTORS, "knn", "rmds", "fdbd", "nci", "ash_s", "scale", "react"]
VAL_OOD = "uniform_noise"  # the validation OOD set of the selection rows (not a test set)
N_VAL_ID, N_VAL_OOD = 300, 250
# grids searched (docs/detectors.md, typed in here: the fixture does not read ncood's)
PERCENTILES = [65, 70, 75, 80, 85, 90, 95]
GRIDS = {
    "neco": {"variance": [0.8, 0.9, 0.95, 0.99]},
    "knn": {"k": [50, 100, 200, 500, 1000]},
    "gen": {"gamma": [0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0], "M": [10, 50, 100, 200, 500, 1000]},
    "fdbd": {"distance_as_normalizer": [True, False]},
    "nci": {"alpha": [0.0001, 0.001, 0.01, 0.1]},
    "scale": {"percentile": PERCENTILES},
    "ash_s": {"percentile": PERCENTILES},
    "ash_p": {"percentile": PERCENTILES},
    "ash_b": {"percentile": PERCENTILES},
    "react": {"percentile": [85, 90, 95, 99]},
    "dice": {"p": [10, 30, 50, 70, 90]},
    "nnguide": {"k": [10, 50, 100], "bank_fraction": [0.01, 0.1, 1.0]},
}

# ID/OOD separation (in ID standard deviations) per regime, detector and OOD set
_SEPARATION = {
    "standard": {
        "msp": (1.6, 1.1, 2.4),
        "maxlogit": (1.9, 1.2, 2.6),
        "energy": (1.95, 1.2, 2.7),
        "mahalanobis": (1.2, 2.2, 3.5),
        "vim": (1.8, 2.0, 3.2),
        "neco": (1.4, 1.5, 2.8),
    },
    "memorize": {
        "msp": (0.6, 0.3, 1.2),
        "maxlogit": (-0.3, -0.2, 0.8),
        "energy": (-0.3, -0.25, 0.8),
        "mahalanobis": (1.0, 0.8, 2.9),
        "vim": (-0.1, 0.1, 1.5),
        "neco": (-0.8, 0.0, 1.0),
    },
}
# the zoo's other detectors (standard); under memorize each separates 0.45x as well, -0.3
_ZOO_SEPARATION = {
    "knn": (1.5, 2.1, 3.4),
    "rmds": (1.3, 2.25, 3.55),
    "gen": (1.97, 1.25, 2.7),
    "fdbd": (1.85, 1.6, 2.9),
    "nci": (1.9, 1.7, 3.0),
    "scale": (2.0, 1.3, 2.75),
    "ash_s": (2.02, 1.35, 2.8),
    "ash_p": (1.7, 1.1, 2.5),
    "ash_b": (1.6, 1.0, 2.2),
    "react": (1.95, 1.3, 2.75),
    "dice": (1.5, 0.9, 2.0),
    "nnguide": (1.8, 1.9, 3.1),
    "she": (1.2, 1.0, 1.8),
    "kl_matching": (1.4, 0.8, 2.0),
    "entropy": (1.65, 1.1, 2.45),
}
for _d, _sep in _ZOO_SEPARATION.items():
    _SEPARATION["standard"][_d] = _sep
    _SEPARATION["memorize"][_d] = tuple(0.45 * x - 0.3 for x in _sep)
# within-class spread of the features per regime, at each snapshot (penultimate layer)
_SPREAD = {"standard": (3.0, 1.4, 1.1, 0.9, 0.8), "memorize": (3.0, 1.2, 0.8, 0.5, 0.2)}
_ALIGN = {"standard": 0.8, "memorize": 0.95}  # classifier rows vs centred class means, at the end


# ------------------------------------------------------------------------ OOD metrics
def fpr_at_95_tpr(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """FPR@95 with ID positive: k = floor(0.95 n_id), threshold = k-th largest ID score."""
    k = math.floor(0.95 * len(id_scores))
    threshold = np.sort(id_scores)[::-1][k - 1]
    return float(np.mean(ood_scores >= threshold))


def ood_metrics_reference(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-In, AUPR-Out, FPR@95 (ID positive) and FPR@95 (OOD positive)."""
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    s = np.r_[id_scores, ood_scores]
    p_in, r_in, _ = precision_recall_curve(y, s)
    p_out, r_out, _ = precision_recall_curve(1 - y, -s)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr_in": float(auc(r_in, p_in)),
        "aupr_out": float(auc(r_out, p_out)),
        "fpr95": fpr_at_95_tpr(id_scores, ood_scores),
        "fpr95_oodpos": fpr_at_95_tpr(-ood_scores, -id_scores),
    }


def _rank_auroc(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count one half) by counting pairs: fast in a loop.

    For each OOD score, the ID scores above it count 1 and those equal to it 1/2
    (``searchsorted`` on the sorted ID scores).
    """
    s = np.sort(s_id)
    below = np.searchsorted(s, s_ood, side="left")  # ID scores < each OOD score
    not_above = np.searchsorted(s, s_ood, side="right")  # ID scores <= it
    above = len(s) - not_above + 0.5 * (not_above - below)
    return float(above.sum() / (len(s_id) * len(s_ood)))


def bootstrap_auroc(id_a, ood_a, id_b=None, ood_b=None, n_boot: int = 200, seed: int = 0):
    """Percentile 95% interval of AUROC(a) (or of AUROC(a) - AUROC(b), paired): plain loop."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        i, j = rng.integers(0, len(id_a), len(id_a)), rng.integers(0, len(ood_a), len(ood_a))
        v = _rank_auroc(id_a[i], ood_a[j])
        if id_b is not None:
            v -= _rank_auroc(id_b[i], ood_b[j])
        reps.append(v)
    return tuple(float(q) for q in np.quantile(reps, [0.025, 0.975]))


def bootstrap_fpr95(id_a, ood_a, n_boot: int = 200, seed: int = 0):
    """Percentile 95% interval of FPR@95 (same resampling as :func:`bootstrap_auroc`)."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        i, j = rng.integers(0, len(id_a), len(id_a)), rng.integers(0, len(ood_a), len(ood_a))
        reps.append(fpr_at_95_tpr(id_a[i], ood_a[j]))
    return tuple(float(q) for q in np.quantile(reps, [0.025, 0.975]))


def _scores(rng: np.random.Generator, regime: str, scale: float, n_id: int, n_ood: int,
            dets=DETECTORS):  # fmt: skip
    """Raw scores of every detector on ID and each OOD set; ``scale`` shrinks separation."""
    out: dict[str, np.ndarray] = {}
    for det in dets:
        a, b = {"msp": (0.7, 1.5), "neco": (0.3, 0.0)}.get(det, (2.0, 8.0))
        if det == "msp":

            def f(x):
                return 1.0 / (1.0 + np.exp(-x * 1.5 - 1.5))
        else:

            def f(x, a=a, b=b):
                return a * x + b

        out[f"{regime}/{det}/id"] = f(rng.normal(0.0, 1.0, n_id))
        for j, ood in enumerate(OOD_SETS):
            sep = _SEPARATION[regime][det][j] * scale
            out[f"{regime}/{det}/{ood}"] = f(rng.normal(-sep, 1.2, n_ood))
    return out


# ------------------------------------------------------------------------ collapse
def collapse_reference(z: np.ndarray, y: np.ndarray, W: np.ndarray | None, b=None) -> dict:
    """NC metrics of DESIGN.md section 4 in float64, straight from the definitions."""
    C = int(y.max()) + 1
    mu = np.stack([z[y == c].mean(0) for c in range(C)])  # (C, D)
    M = mu - mu.mean(0)
    dev = z - mu[y]
    S_W = dev.T @ dev / len(z)
    S_B = M.T @ M / C
    evals, evecs = np.linalg.eigh(S_B)
    r = min(C - 1, z.shape[1])
    S_B_pinv = (evecs[:, -r:] / evals[-r:]) @ evecs[:, -r:].T
    var_c = np.array([np.mean(np.sum(dev[y == c] ** 2, 1)) for c in range(C)])
    pairs = list(itertools.combinations(range(C), 2))
    dist = np.sqrt(((mu[:, None] - mu[None]) ** 2).sum(-1))
    ncc = np.argmin(((z[:, None, :] - mu[None]) ** 2).sum(-1), axis=1)
    out = {
        "nc1": float(np.trace(S_W @ S_B_pinv) / C),
        "nc1_trace": float(np.trace(S_W) / np.trace(S_B)),
        "cdnv": float(np.mean([(var_c[i] + var_c[j]) / (2 * dist[i, j] ** 2) for i, j in pairs])),
        "ncc_acc": float(np.mean(ncc == y)),
        "dim": z.shape[1],
        "within_class_variance": var_c,
        "mean_distance": np.array([dist[i, j] for i, j in pairs]),
        "count": np.bincount(y, minlength=C),
    }
    if W is None:
        return out
    head = np.argmax(z @ W.T + b, axis=1)
    for name, A in (("means", M), ("weights", W)):
        norms = np.linalg.norm(A, axis=1)
        U = A / norms[:, None]
        cos = np.array([U[i] @ U[j] for i, j in pairs])
        out[f"nc2_equinorm_{name}"] = float(norms.std() / norms.mean())
        out[f"nc2_equiangular_{name}"] = float(cos.std())
        out[f"nc2_maxangle_{name}"] = float(np.mean(np.abs(cos + 1 / (C - 1))))
        out["mean_cosine" if name == "means" else "weight_cosine"] = cos
    out["nc3"] = float(np.sum((W / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2))
    out["nc4"] = float(np.mean(head != ncc))
    out["train_error"] = float(np.mean(head != y))
    out["weight_mean_cosine"] = np.sum(W * M, 1) / (
        np.linalg.norm(W, axis=1) * np.linalg.norm(M, axis=1)
    )
    return out


def nc5_reference(z: np.ndarray, y: np.ndarray, z_ood: np.ndarray, centred: bool = False) -> float:
    """OrthoDev: mean_c |cos(mu_c, mu_OOD)| (uncentred, NECO), or centred on mu_G."""
    mu = np.stack([z[y == c].mean(0) for c in range(int(y.max()) + 1)])
    m_ood = z_ood.mean(0)
    if centred:
        mu, m_ood = mu - mu.mean(0), m_ood - mu.mean(0)
    return float(np.mean(np.abs(mu @ m_ood) / (np.linalg.norm(mu, axis=1) * np.linalg.norm(m_ood))))


def _features(rng, means: np.ndarray, spread: float):
    C = len(means)
    y = np.repeat(np.arange(C), N_PER_CLASS)
    noise = rng.normal(0.0, spread, (len(y), means.shape[1])) * rng.uniform(0.5, 1.5, (len(y), 1))
    return means[y] + noise, y


def _nc_rows(m: dict, base: dict, oods: dict | None = None) -> list[dict]:
    """Rows of one collapse analysis: scalars, per-class arrays (i) and pairs (i < j)."""
    rows = []
    pairs = list(itertools.combinations(range(len(CLASSES)), 2))
    for k, v in m.items():
        if np.ndim(v) == 0:
            rows.append(row(k, v, **base))
        elif len(v) == len(CLASSES):
            rows += [row(k, x, i=i, **base) for i, x in enumerate(v)]
        else:
            rows += [row(k, x, i=i, j=j, **base) for (i, j), x in zip(pairs, v, strict=True)]
    for ood, (nc5, nc5c, n_ood) in (oods or {}).items():
        rows.append(row("nc5", nc5, ood=ood, **{**base, "n_ood": n_ood}))
        rows.append(row("nc5_centred", nc5c, ood=ood, **{**base, "n_ood": n_ood}))
    return rows


def _regime_rows(rng, regime: str, n_id: int, n_ood: int, intervals: bool, zoo: bool = False,
                 chosen: dict | None = None):  # fmt: skip
    rows: list[dict] = []
    dets = ZOO if zoo else DETECTORS
    scores = _scores(rng, regime, 1.0, n_id, n_ood, dets)
    base = {"regime": regime, "seed": 0, "epoch": LAST}
    params = {**PARAMS, **(chosen or {})}  # chosen on validation where selected
    # OOD detection of the final network, penultimate layer
    for det, ood in itertools.product(dets, OOD_SETS):
        s_id, s_ood = scores[f"{regime}/{det}/id"], scores[f"{regime}/{det}/{ood}"]
        ci = {"auroc": bootstrap_auroc(s_id, s_ood)} if intervals else {}
        if intervals and zoo:  # FPR@95 intervals too, as ncood run writes them
            ci["fpr95"] = bootstrap_fpr95(s_id, s_ood)
        for k, v in ood_metrics_reference(s_id, s_ood).items():
            rows.append(
                row(k, v, layer=PENULTIMATE, detector=det, ood=ood, params=params.get(det),
                    ci=ci.get(k), n_id=n_id, n_ood=n_ood, **base)
            )  # fmt: skip
    if intervals:
        pairs = []
        for ood in OOD_SETS:
            if zoo:  # as ncood.analysis: each detector against the next one in AUROC order
                au = {r["detector"]: r["value"] for r in rows
                      if r["metric"] == "auroc" and r["ood"] == ood}  # fmt: skip
                ranked = sorted(dets, key=lambda d: -au[d])
            else:  # each detector against the next one in the list
                ranked = list(dets)
            pairs += [(p, ood) for p in itertools.pairwise(ranked)]
        for (a, b), ood in pairs:
            ia, oa, ib, ob = (scores[f"{regime}/{d}/{s}"] for d in (a, b) for s in ("id", ood))
            diff = _rank_auroc(ia, oa) - _rank_auroc(ib, ob)
            rows.append(
                row("auroc_diff", diff, layer=PENULTIMATE, detector=a, ood=ood, params={"vs": b},
                    ci=bootstrap_auroc(ia, oa, ib, ob), n_id=n_id, n_ood=n_ood, **base)
            )  # fmt: skip
    # per-layer AUROC of the feature-space detectors (earlier layers separate less)
    layer_dets = ZOO_LAYER_DETECTORS if zoo else LAYER_DETECTORS
    for k, layer in enumerate(LAYERS[:-1]):
        layer_scores = _scores(rng, regime, (k + 1) / len(LAYERS), n_id, n_ood, layer_dets)
        if layer == "layer3":  # one pair where an earlier layer wins, as in real networks
            layer_scores[f"{regime}/mahalanobis/gaussian_noise"] -= 4.0
        for det, ood in itertools.product(layer_dets, OOD_SETS):
            s_id, s_ood = layer_scores[f"{regime}/{det}/id"], layer_scores[f"{regime}/{det}/{ood}"]
            auroc = ood_metrics_reference(s_id, s_ood)["auroc"]
            rows.append(
                row(
                    "auroc",
                    auroc,
                    layer=layer,
                    detector=det,
                    ood=ood,
                    n_id=n_id,
                    n_ood=n_ood,
                    **base,
                )
            )
    # collapse: penultimate at every snapshot, every layer at the last one
    C = len(CLASSES)
    means = {lay: rng.normal(0.0, 1.0, (C, d)) + 0.5 for lay, d in zip(LAYERS, DIMS, strict=True)}
    W0 = rng.normal(0.0, 1.0, (C, DIMS[-1]))
    ood_means = {o: rng.normal(0.3, 1.0, DIMS[-1]) for o in OOD_SETS}
    n_train = C * N_PER_CLASS
    for e, spread in zip(SNAPSHOTS, _SPREAD[regime], strict=True):
        z, y = _features(rng, means[PENULTIMATE], spread)
        if regime == "standard":  # label noise it does not memorize: train error stays > 0
            flip = rng.random(len(y)) < 0.03
            y[flip] = (y[flip] + 1) % C
        M = np.stack([z[y == c].mean(0) for c in range(C)])
        align = _ALIGN[regime] * min(1.0, e / 4)
        W = align * (M - M.mean(0)) + (1 - align) * W0
        oods = {}
        for o, m in ood_means.items():
            z_ood = m + rng.normal(0.0, 1.0, (n_ood, DIMS[-1]))
            oods[o] = (nc5_reference(z, y, z_ood), nc5_reference(z, y, z_ood, True), n_ood)
        base_e = {**base, "epoch": e, "layer": PENULTIMATE, "n_id": n_train}
        rows += _nc_rows(collapse_reference(z, y, W, np.zeros(C)), base_e, oods)
    nc1_trace = []
    for k, layer in enumerate(LAYERS[:-1]):
        z, y = _features(rng, means[layer], _SPREAD[regime][-1] * (len(LAYERS) - k) * 0.8)
        m = collapse_reference(z, y, None)
        nc1_trace.append(m["nc1_trace"])
        rows += _nc_rows(m, {**base, "layer": layer, "n_id": n_train})
    nc1_trace.append(
        next(
            r["value"]
            for r in rows
            if r["metric"] == "nc1_trace" and r["epoch"] == LAST and r["layer"] == PENULTIMATE
        )
    )
    # log-linear fit of NC1 (trace) over depth: log v = a + rate * layer index
    x, logv = np.arange(len(LAYERS)), np.log(nc1_trace)
    rate, a = np.polyfit(x, logv, 1)
    r2 = 1 - np.sum((logv - a - rate * x) ** 2) / np.sum((logv - logv.mean()) ** 2)
    rows += [row("nc1_trace.decay_rate", rate, **base), row("nc1_trace.decay_r2", r2, **base)]
    return rows, scores


def _history(regime: str, n_epochs: int = LAST) -> list[dict]:
    rows = []
    for e in range(1, n_epochs + 1):
        t = e / n_epochs
        if regime == "standard":
            tr_loss, te_loss = 0.9 * math.exp(-2.2 * t) + 0.15, 0.8 * math.exp(-2.0 * t) + 0.25
            tr_acc, te_acc = 0.70 + 0.25 * t, 0.72 + 0.19 * t
        else:
            tr_loss, te_loss = 0.8 * math.exp(-5.0 * t) + 0.002, 0.45 + 0.25 * t**2
            tr_acc, te_acc = 0.75 + 0.25 * t, 0.84 + 0.02 * t - 0.03 * t**2
        values = {
            "train_loss": tr_loss,
            "train_acc": min(1.0, tr_acc),
            "test_loss": te_loss,
            "test_acc": te_acc,
            "lr": 0.1 * 0.5 * (1 + math.cos(math.pi * (e - 1) / n_epochs)),
        }
        rows += [row(k, v, regime=regime, seed=0, epoch=e) for k, v in values.items()]
    return rows


def meta(n_id: int, n_ood: int, dets=DETECTORS) -> dict:
    """run.json of the synthetic run (with a string that must be escaped in HTML)."""
    return {
        "ncood_version": "0.1.0",
        "created": "2026-11-28T01:23:45Z",
        "config": {
            "name": "default",
            "seed": 0,
            "model": "resnet_narrow",
            "data": {"id": "fashion_mnist", "ood": list(OOD_SETS), "train_samples": 12000},
            "regimes": {r: {"epochs": LAST} for r in REGIMES},
            "detectors": {d: PARAMS.get(d, {}) for d in dets},
        },
        "environment": {
            "python": "3.11.2",
            "torch": "2.14.1",
            "numpy": "2.2.0",
            "platform": "Linux-6.1-x86_64",
            "cpu": "Synthetic CPU @ 2.0GHz <test & escape>",
            "device": "cpu",
            "threads": 2,
        },
        "data": {
            "id": {
                "name": "fashion_mnist",
                "source": "/work/shared/data/fashion-mnist",
                "classes": list(CLASSES),
                "n_train": len(CLASSES) * N_PER_CLASS,
                "n_test": n_id,
            },
            "ood": {
                "digits": {"source": "sklearn.datasets.load_digits", "n": n_ood},
                "texture_crops": {"source": "skimage.data brick/grass/gravel", "n": n_ood},
                "gaussian_noise": {"source": "generated, seed 0", "n": n_ood},
            },
        },
        "durations": {"standard/train": 150.2, "memorize/train": 148.9, "total": 330.4},
        "conventions": {
            "positive": "ID (in-distribution) is the positive class",
            "fpr95": "k = floor(0.95 n_id); threshold = k-th largest ID score",
        },
        "detectors": {d: PARAMS.get(d, {}) for d in dets},
    }


# ------------------------------------------------------------------------ selection
def _candidates(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, c, strict=True)) for c in itertools.product(*grid.values())]


def selection_rows(rng, regime: str, dets) -> tuple[list[dict], dict, dict]:
    """``selection_auroc`` / ``selection_chosen`` rows (shared schema), chosen params and
    ``meta["selection"]``: each candidate's validation AUROC from its own synthetic
    validation scores (ID validation split vs :data:`VAL_OOD`), the argmax chosen (ties:
    the first in grid order)."""
    rows, chosen, info = [], {}, {}
    keys = {"regime": regime, "seed": 0, "epoch": LAST, "layer": PENULTIMATE, "ood": VAL_OOD,
            "n_id": N_VAL_ID, "n_ood": N_VAL_OOD}  # fmt: skip
    y = np.r_[np.ones(N_VAL_ID), np.zeros(N_VAL_OOD)]
    for det in [d for d in dets if d in GRIDS]:
        cands = _candidates(GRIDS[det])
        peak = rng.integers(0, len(cands))  # the candidate that separates best
        base = _SEPARATION[regime][det][0]
        values = []
        for c, params in enumerate(cands):
            sep = base * (1.0 - 0.4 * abs(c - peak) / len(cands))
            s = np.r_[rng.normal(0.0, 1.0, N_VAL_ID), rng.normal(-sep, 1.2, N_VAL_OOD)]
            values.append(float(roc_auc_score(y, s)))
            fixed = {k: v for k, v in PARAMS.get(det, {}).items() if k not in params}
            rows.append(row("selection_auroc", values[-1], detector=det,
                            params={**fixed, **params}, **keys))  # fmt: skip
        best = int(np.argmax(values))  # first maximum
        fixed = {k: v for k, v in PARAMS.get(det, {}).items() if k not in cands[best]}
        chosen[det] = {**fixed, **cands[best]}
        rows.append(row("selection_chosen", values[best], detector=det, params=chosen[det],
                        **keys))  # fmt: skip
        info[det] = {"grid": GRIDS[det], "chosen": chosen[det], "val_auroc": values[best],
                     "val_ood": VAL_OOD, "n_val_id": N_VAL_ID, "n_val_ood": N_VAL_OOD}  # fmt: skip
    return rows, chosen, info


def make_results(
    seed: int = 0,
    n_id: int = 1000,
    n_ood: int = 600,
    *,
    intervals: bool = False,
    snapshot_auroc: bool = False,
    zoo: bool = False,
    selection: bool = False,
) -> tuple[Results, dict[str, np.ndarray]]:
    """``(results, scores)`` of a synthetic two-regime run, every number computed.

    Args:
        intervals: add bootstrap intervals to the AUROC rows and paired ``auroc_diff`` rows
            (each detector against the next one in :data:`DETECTORS`; with ``zoo``, against
            the next in AUROC order as ``ncood run`` does, and FPR@95 intervals too).
        snapshot_auroc: add penultimate-layer AUROC at the earlier snapshots (separation
            growing with training). The ``spearman`` rows of
            :func:`ncood.analysis.relation_rows` (``n_boot=200``) are always added.
        zoo: the 21 detectors of :data:`ZOO` instead of the six of :data:`DETECTORS` (and
            :data:`ZOO_LAYER_DETECTORS` on the earlier layers).
        selection: add the hyperparameter-selection rows of the detectors in :data:`GRIDS`
            (:func:`selection_rows`); their test rows then carry the chosen values.
    """
    rng = np.random.default_rng(seed)
    dets = ZOO if zoo else DETECTORS
    rows, scores, chosen_meta = [], {}, {}
    sel_rng = np.random.default_rng(seed + 2000)  # its own generator: other rows unchanged
    for regime in REGIMES:
        rows += _history(regime)
        chosen = None
        if selection:
            sel, chosen, info = selection_rows(sel_rng, regime, dets)
            rows += sel
            chosen_meta = chosen_meta or info  # run.json keeps the first network's
        regime_rows, regime_scores = _regime_rows(rng, regime, n_id, n_ood, intervals, zoo, chosen)
        rows += regime_rows
        scores.update(regime_scores)
    if snapshot_auroc:  # its own generator: the rows above stay as they were
        rows += _snapshot_auroc_rows(np.random.default_rng(seed + 1000), n_id, n_ood, dets)
    res = Results(
        rows, {**meta(n_id, n_ood, dets), **({"selection": chosen_meta} if selection else {})}
    )
    res.extend(relation_rows(res, n_boot=200, seed=0))
    return res, scores


def _snapshot_auroc_rows(rng: np.random.Generator, n_id: int, n_ood: int, dets=DETECTORS):
    """AUROC of every detector on the penultimate layer at the snapshots before the last."""
    rows = []
    for regime in REGIMES:
        for k, e in enumerate(SNAPSHOTS[:-1]):
            scores = _scores(rng, regime, (k + 1) / len(SNAPSHOTS), n_id, n_ood, dets)
            for det, ood in itertools.product(dets, OOD_SETS):
                v = roc_auc_score(
                    np.r_[np.ones(n_id), np.zeros(n_ood)],
                    np.r_[scores[f"{regime}/{det}/id"], scores[f"{regime}/{det}/{ood}"]],
                )
                rows.append(
                    row("auroc", v, regime=regime, seed=0, epoch=e, layer=PENULTIMATE,
                        detector=det, ood=ood, params=PARAMS.get(det), n_id=n_id, n_ood=n_ood)
                )  # fmt: skip
    return rows


def with_seeds(results: Results, n: int = 3, seed: int = 1) -> Results:
    """The rows repeated for ``n`` seeds, values jittered by a little noise (seed 0 kept)."""
    rng = np.random.default_rng(seed)
    df = results.to_frame()
    parts = [df]
    for s in range(1, n):
        value = df["value"] * (1 + rng.normal(0.0, 0.01, len(df)))
        unit = df["value"].between(0, 1)  # fractions stay fractions
        value = value.where(~unit, value.clip(0, 1))
        parts.append(df.assign(seed=s, value=value, ci_low=None, ci_high=None))
    return Results.concat([Results(p) for p in parts], meta=results.meta)


def without(results: Results, **filters) -> Results:
    """A copy without the rows matching ``filters`` (a list matches any of its values)."""
    df = results.to_frame()
    drop = df.index.isin(results.select(**filters).index)
    return Results(df[~drop], json.loads(json.dumps(results.meta)))
