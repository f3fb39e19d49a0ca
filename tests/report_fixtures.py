"""A realistic synthetic ``results`` dict and ``scores`` for the report tests.

Follows docs/results_schema.md: two regimes (``standard`` and ``memorize``), six detectors,
three OOD sets, the ten Fashion-MNIST classes, a 6-epoch history, collapse over 5 layers
and at epochs [0, 1, 2, 4, 6]. Every OOD metric is computed from the synthetic scores
(scikit-learn curves, the toolkit's conventions), every collapse number from synthetic
class means and weights, so the numbers are mutually consistent.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score

from ncood.data.datasets import FASHION_MNIST_CLASSES

CLASSES = list(FASHION_MNIST_CLASSES)
DETECTORS = ["msp", "maxlogit", "energy", "mahalanobis", "vim", "neco"]
OOD_SETS = ["digits", "texture_crops", "gaussian_noise"]
REGIMES = ["standard", "memorize"]
LAYERS = ["stem", "layer1", "layer2", "layer3", "penultimate"]
SNAPSHOTS = [0, 1, 2, 4, 6]
LAYER_DETECTORS = ["mahalanobis", "vim", "neco"]

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


def _scores(rng: np.random.Generator, n_id: int, n_ood: int) -> dict[str, np.ndarray]:
    scores: dict[str, np.ndarray] = {}
    for regime in REGIMES:
        for det in DETECTORS:
            id_raw = rng.normal(0.0, 1.0, n_id)
            scale, shift = {"msp": (0.7, 1.5), "neco": (0.3, 0.0)}.get(det, (2.0, 8.0))
            transform = (
                (lambda x: 1.0 / (1.0 + np.exp(-x * 1.5 - 1.5)))
                if det == "msp"
                else (lambda x, a=scale, b=shift: a * x + b)
            )
            scores[f"{regime}/{det}/id"] = transform(id_raw)
            for j, ood in enumerate(OOD_SETS):
                sep = _SEPARATION[regime][det][j]
                ood_raw = rng.normal(-sep, 1.2, n_ood)
                scores[f"{regime}/{det}/{ood}"] = transform(ood_raw)
    return scores


def _collapse(rng: np.random.Generator, spread: float, align: float) -> dict:
    """NC1-NC4 of synthetic class-conditional Gaussian features (float64, DESIGN.md 4)."""
    C, D, n_c = len(CLASSES), 16, 60
    means = rng.normal(0.0, 3.0, (C, D)) + 2.0
    labels = np.repeat(np.arange(C), n_c)
    feats = means[labels] + rng.normal(0.0, spread, (C * n_c, D)) * rng.uniform(
        0.5, 1.5, (C * n_c, 1)
    )
    mu = np.stack([feats[labels == c].mean(0) for c in range(C)])  # (C, D)
    mu_g = mu.mean(0)
    M = mu - mu_g  # (C, D)
    W = align * M + (1 - align) * rng.normal(0.0, 3.0, (C, D))
    b = np.zeros(C)
    dev = feats - mu[labels]
    S_W = dev.T @ dev / len(feats)
    S_B = M.T @ M / C
    evals, evecs = np.linalg.eigh(S_B)
    top = evecs[:, -(C - 1) :], evals[-(C - 1) :]
    S_B_pinv = (top[0] / top[1]) @ top[0].T
    var_c = np.array([np.sum(dev[labels == c] ** 2) / n_c for c in range(C)])

    def offdiag_cos(A: np.ndarray) -> np.ndarray:
        U = A / np.linalg.norm(A, axis=1, keepdims=True)
        G = U @ U.T
        return G[~np.eye(C, dtype=bool)]

    cos_m, cos_w = offdiag_cos(M), offdiag_cos(W)
    norms_m, norms_w = np.linalg.norm(M, axis=1), np.linalg.norm(W, axis=1)
    pair_cdnv = [
        (var_c[i] + var_c[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2))
        for i, j in itertools.combinations(range(C), 2)
    ]
    pred_head = np.argmax(feats @ W.T + b, axis=1)
    pred_ncc = np.argmin(((feats[:, None, :] - mu[None]) ** 2).sum(-1), axis=1)
    dist = np.sqrt(((mu[:, None, :] - mu[None]) ** 2).sum(-1))
    return {
        "nc1": float(np.trace(S_W @ S_B_pinv) / C),
        "nc1_trace": float(np.trace(S_W) / np.trace(S_B)),
        "cdnv": float(np.mean(pair_cdnv)),
        "nc2_equinorm_means": float(norms_m.std() / norms_m.mean()),
        "nc2_equinorm_weights": float(norms_w.std() / norms_w.mean()),
        "nc2_equiangular_means": float(cos_m.std()),
        "nc2_equiangular_weights": float(cos_w.std()),
        "nc2_maxangle_means": float(np.mean(np.abs(cos_m + 1 / (C - 1)))),
        "nc2_maxangle_weights": float(np.mean(np.abs(cos_w + 1 / (C - 1)))),
        "nc3": float(
            np.sum((W / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2),
        ),
        "nc4": float(np.mean(pred_head != pred_ncc)),
        "etf_exists": True,
        "notes": [],
        "per_class": {
            "within_variance": var_c.tolist(),
            "weight_mean_cos": (np.sum(W * M, 1) / (norms_w * norms_m)).tolist(),
            "counts": [n_c] * C,
        },
        "cos_means_offdiag": cos_m.tolist(),
        "cos_weights_offdiag": cos_w.tolist(),
        "mean_distances": dist.tolist(),
    }


def _history(rng: np.random.Generator, regime: str, n_epochs: int = 6) -> list[dict]:
    rows = []
    for e in range(1, n_epochs + 1):
        t = e / n_epochs
        if regime == "standard":
            tr_loss, te_loss = 0.9 * math.exp(-2.2 * t) + 0.15, 0.8 * math.exp(-2.0 * t) + 0.25
            tr_acc, te_acc = 0.70 + 0.25 * t, 0.72 + 0.19 * t
        else:
            tr_loss, te_loss = 0.8 * math.exp(-5.0 * t) + 0.002, 0.45 + 0.25 * t**2
            tr_acc, te_acc = 0.75 + 0.25 * t, 0.84 + 0.02 * t - 0.03 * t**2
        rows.append(
            {
                "epoch": e,
                "train_loss": tr_loss + rng.normal(0, 0.005),
                "train_acc": min(1.0, tr_acc),
                "test_loss": te_loss + rng.normal(0, 0.005),
                "test_acc": te_acc,
                "lr": 0.1 * 0.5 * (1 + math.cos(math.pi * (e - 1) / n_epochs)),
                "seconds": 24.0 + rng.normal(0, 0.5),
                "images_per_s": 500.0 + rng.normal(0, 10),
            }
        )
    return rows


def _depth(rng: np.random.Generator, regime: str, ood_auroc: dict[str, dict[str, float]]) -> dict:
    n = len(LAYERS)
    collapsed = regime == "standard"
    nc1_trace = (8.0 if collapsed else 10.0) * np.exp(-np.arange(n) * (0.7 if collapsed else 0.4))
    per_layer = {}
    for i, layer in enumerate(LAYERS):
        per_layer[layer] = {}
        for det in LAYER_DETECTORS:
            per_layer[layer][det] = {}
            for ood in OOD_SETS:
                final = ood_auroc[det][ood]
                val = 0.5 + (final - 0.5) * (i + 1) / n + rng.normal(0, 0.01)
                per_layer[layer][det][ood] = float(np.clip(val, 0.0, 1.0))
    # one pair where an earlier layer wins, as happens with real networks
    per_layer["layer3"]["mahalanobis"]["gaussian_noise"] = min(
        0.999, ood_auroc["mahalanobis"]["gaussian_noise"] + 0.006
    )
    return {
        "layers": list(LAYERS),
        "metrics": {
            "nc1_trace": nc1_trace.tolist(),
            "cdnv": (nc1_trace / 4).tolist(),
            "ncc_acc": np.linspace(0.55, 0.97 if collapsed else 0.9, n).tolist(),
            "nc1": (nc1_trace * 3).tolist(),
        },
        "dims": [16, 16, 32, 64, 64],
        "decay": {
            "nc1_trace": {
                "rate": -0.7 if collapsed else -0.4,
                "factor": math.exp(-0.7 if collapsed else -0.4),
                "r2": 0.98,
            }
        },
        "ood_auroc": per_layer,
    }


def _epochs(regime: str) -> dict:
    e = np.array(SNAPSHOTS, dtype=float)
    if regime == "standard":
        train_error = [0.9, 0.2, 0.12, 0.07, 0.05]
        zero = None
        decay = np.exp(-e / 2.5)
    else:
        train_error = [0.9, 0.15, 0.06, 0.01, 0.0]
        zero = 6
        decay = 1.5 * np.exp(-e / 5.0)
    return {
        "epochs": list(SNAPSHOTS),
        "train_error": train_error,
        "metrics": {
            "nc1": (0.3 + 20 * decay).tolist(),
            "nc1_trace": (0.1 + 5 * decay).tolist(),
            "cdnv": (0.05 + 2 * decay).tolist(),
            "nc2_equinorm_means": (0.1 + 0.4 * decay).tolist(),
            "nc2_equiangular_means": (0.1 + 0.2 * decay).tolist(),
            "nc2_maxangle_means": (0.08 + 0.2 * decay).tolist(),
            "nc3": (0.3 + 1.2 * decay).tolist(),
            "nc4": (0.01 + 0.3 * decay).tolist(),
        },
        "nc5": {ood: (0.2 + 0.5 * decay + 0.05 * j).tolist() for j, ood in enumerate(OOD_SETS)},
        "zero_error_epoch": zero,
    }


def make_results(
    seed: int = 0, n_id: int = 1000, n_ood: int = 600
) -> tuple[dict, dict[str, np.ndarray]]:
    """Build ``(results, scores)`` as ``ncood run`` writes them (schema_version 1)."""
    rng = np.random.default_rng(seed)
    scores = _scores(rng, n_id, n_ood)
    regimes = {}
    for regime in REGIMES:
        ood = {
            det: {
                o: ood_metrics_reference(
                    scores[f"{regime}/{det}/id"], scores[f"{regime}/{det}/{o}"]
                )
                for o in OOD_SETS
            }
            for det in DETECTORS
        }
        auroc = {det: {o: ood[det][o]["auroc"] for o in OOD_SETS} for det in DETECTORS}
        history = _history(rng, regime)
        last = history[-1]
        collapse = (
            _collapse(rng, spread=0.8, align=0.8)
            if regime == "standard"
            else _collapse(rng, spread=3.0, align=0.2)
        )
        base_nc5 = 0.15 if regime == "standard" else 0.35
        regimes[regime] = {
            "checkpoint": f"regimes/{regime}/train/last.pt",
            "final": {k: last[k] for k in ("train_acc", "test_acc", "train_loss", "test_loss")},
            "history": history,
            "ood": ood,
            "collapse": collapse,
            "nc5": {o: base_nc5 + 0.05 * j for j, o in enumerate(OOD_SETS)},
            "nc5_centred": {o: base_nc5 / 2 + 0.03 * j for j, o in enumerate(OOD_SETS)},
            "depth": _depth(rng, regime, auroc),
            # the schema doc lists "epochs" twice; the across-training object is the one
            # that survives JSON parsing (the last key wins)
            "epochs": _epochs(regime),
        }
    config = {
        "name": "default",
        "seed": 0,
        "output": "runs/default",
        "device": "auto",
        "model": "resnet_narrow",
        "model_kwargs": {},
        "data": {
            "id": "fashion_mnist",
            "ood": list(OOD_SETS),
            "root": None,
            "allow_subset": True,
            "train_samples": 12000,
            "test_samples": None,
            "ood_samples": 2000,
        },
        "training": {"precision": "bf16", "batch_size": 128, "snapshots": "log"},
        "regimes": {"standard": {"epochs": 6}, "memorize": {"epochs": 6}},
        "detectors": {d: {} for d in DETECTORS},
        "collapse": {
            "layers": None,
            "across_training": True,
            "layer_detectors": list(LAYER_DETECTORS),
        },
    }
    results = {
        "schema_version": 1,
        "ncood_version": "0.1.0",
        "created": "2026-11-28T01:23:45Z",
        "config": config,
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
                "n_train": 12000,
                "n_test": n_id,
            },
            "ood": {
                "digits": {"source": "sklearn.datasets.load_digits", "n": n_ood},
                "texture_crops": {"source": "skimage.data brick/grass/gravel", "n": n_ood},
                "gaussian_noise": {"source": "generated, seed 0", "n": n_ood},
            },
        },
        "durations": {
            "standard/train": 150.2,
            "standard/extract": 7.1,
            "memorize/train": 148.9,
            "memorize/extract": 7.0,
            "total": 330.4,
        },
        "conventions": {
            "positive": "ID",
            "score_sign": "higher = more in-distribution",
            "fpr95": "k = floor(0.95 n_id); threshold = k-th largest ID score",
            "aupr": "trapezoidal area under the precision-recall curve",
            "fpr95_oodpos": "OpenOOD v1.5: fraction of ID rejected at 95% OOD recall",
        },
        "detectors": {
            "msp": {"T": 1.0},
            "maxlogit": {},
            "energy": {"T": 1.0},
            "mahalanobis": {},
            "vim": {"dim": 32},
            "neco": {"variance": 0.9},
        },
        "regimes": regimes,
        "findings": [],
    }
    return results, scores


def strip_optional(results: dict) -> dict:
    """A copy with every optional regime part removed (collapse, NC5, depth, epochs)."""
    out = copy.deepcopy(results)
    for reg in out["regimes"].values():
        for key in ("collapse", "nc5", "nc5_centred", "depth", "epochs", "history"):
            reg.pop(key, None)
    return out
