"""``ncood run``: the reference experiment end to end.

For each training regime of the config: train (or load, or resume), extract features
(cached), fit and score every detector on every OOD set, measure neural collapse of the
penultimate layer and of every stage, score feature-space detectors per layer, and
measure collapse at every training snapshot. Then write ``results.json`` (schema in
``docs/results_schema.md``), ``scores.npz`` and the report.

Re-running with the same config reuses finished stages: a finished training run is
loaded, an unfinished one resumed from ``last.pt``, features come from the cache.
Only one process may write an output directory at a time (``.lock``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ncood import __version__
from ncood.config import RunConfig
from ncood.errors import ConfigError, NcoodError
from ncood.io import atomic_open, write_json
from ncood.types import FeatureDir, FeatureSet

log = logging.getLogger(__name__)

CONVENTIONS = {
    "positive": "ID (in-distribution) is the positive class",
    "score_sign": "every detector score: higher = more in-distribution",
    "fpr95": (
        "FPR@95%TPR: with k = floor(0.95 * n_id), the threshold is the k-th largest ID score; "
        "fpr95 = fraction of OOD samples with score >= threshold"
    ),
    "fpr95_oodpos": (
        "OpenOOD v1.5 convention (OOD positive): fraction of ID samples rejected when 95% of "
        "OOD samples are caught"
    ),
    "auroc": "trapezoidal area under the ROC curve, ties grouped (scikit-learn roc_curve)",
    "aupr": (
        "AUPR-In: ID positive, ranked by score; AUPR-Out: OOD positive, ranked by -score; "
        "trapezoidal area under precision_recall_curve (ties grouped)"
    ),
}


# --------------------------------------------------------------------------- helpers
class RunLock:
    """An exclusive lock file in the output directory (refuses a second concurrent run)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise NcoodError(
                    f"another ncood run is writing {str(self.path.parent)!r} "
                    f"(lock {str(self.path)!r}); wait for it, choose another output, or "
                    "delete the lock if that run is dead"
                ) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            return self
        raise NcoodError(f"cannot take the lock {str(self.path)!r}")

    def _stale(self) -> bool:
        try:
            pid = int(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return True
        if pid <= 0:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


class Timer:
    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.durations[key] = round(time.perf_counter() - t0, 3)


def environment(device: str) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------- stages
def train_regime(cfg: RunConfig, regime: str, overrides: dict[str, Any], out: Path) -> Path:
    """Train one regime (or reuse/resume its run); return the final checkpoint path."""
    from ncood.train import TrainConfig, load_checkpoint, train
    from ncood.train.config import resume_conflicts

    if "checkpoint" in overrides:
        path = Path(overrides["checkpoint"])
        if len(overrides) > 1:
            raise ConfigError(
                f"regimes.{regime}: with 'checkpoint' no other key is allowed; got "
                f"{sorted(overrides)}"
            )
        load_checkpoint(path)  # validates
        return path
    tc = TrainConfig.from_dict(
        {
            "model": cfg.model,
            "dataset": cfg.data.id,
            "data_root": cfg.data.root,
            "regime": regime,
            "max_train_samples": cfg.data.train_samples,
            "seed": cfg.seed,
            "device": cfg.device,
            "allow_subset": cfg.data.allow_subset,
            **({"model_kwargs": cfg.model_kwargs} if cfg.model_kwargs else {}),
            **cfg.training,
            **overrides,
        }
    )
    run_dir = out / "regimes" / regime / "train"
    last = run_dir / "last.pt"
    if last.exists() and resume_conflicts(load_checkpoint(last).get("config", {}), tc):
        stale = run_dir.with_name(f"train.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s: %s was trained with another config; kept as %s", regime, last, stale)
        run_dir.rename(stale)
    # resume=True: a finished run returns at once, an interrupted one continues
    return train(tc, run_dir, resume=True).checkpoint


def score_detectors(
    fd: FeatureDir, detectors: dict[str, dict[str, Any]]
) -> tuple[dict, dict[str, np.ndarray], dict[str, dict]]:
    """Fit every detector on the train features; score ID test and each OOD set.

    Returns:
        ``(metrics[detector][ood], scores["detector/split"], params[detector])``.
    """
    from ncood.detectors.evaluate import evaluate

    scores: dict[str, np.ndarray] = {}
    res = evaluate(fd, detectors, scores_out=scores)["detectors"]
    metrics = {name: r["ood"] for name, r in res.items()}
    params = {name: r["params"] for name, r in res.items()}
    return metrics, scores, params


def layer_ood_auroc(
    fd: FeatureDir, detectors: list[str], params: dict[str, dict[str, Any]]
) -> dict[str, dict[str, dict[str, float]]]:
    """AUROC of feature-space detectors on each stage's pooled features.

    Layers without their own classifier get a logistic-regression probe fitted on that
    layer's train features (for ViM's virtual logit); the penultimate layer uses the
    network's own head.
    """
    from ncood.collapse.depth import layer_keys
    from ncood.detectors import create_detector
    from ncood.metrics import auroc
    from ncood.probe import fit_linear_head

    out: dict[str, dict[str, dict[str, float]]] = {}

    def pick(fs: FeatureSet, key: str | None) -> np.ndarray:
        return fs.features if key is None else fs.layers[key]

    for layer, key in layer_keys(fd.train).items():
        z_train, z_test = pick(fd.train, key), pick(fd.test, key)
        head = fd.head if key is None else fit_linear_head(z_train, fd.train.labels)
        out[layer] = {}
        for name in detectors:
            hp = dict(params.get(name, {}))
            d = z_train.shape[1]
            if "dim" in hp and hp["dim"] is not None and hp["dim"] >= d:
                hp["dim"] = max(1, d // 2)
            try:
                det = create_detector(name, **hp).fit(z_train, fd.train.labels, head)
            except NcoodError as exc:
                log.warning("layer %s: %s cannot be fitted (%s)", layer, name, exc)
                continue
            id_s = det.score(z_test, head.logits(z_test))
            out[layer][name] = {}
            for ood_name, ood in fd.ood.items():
                z_ood = pick(ood, key)
                out[layer][name][ood_name] = auroc(id_s, det.score(z_ood, head.logits(z_ood)))
    return out


def _offdiag(pairs: np.ndarray, c: int) -> list[float]:
    """Row-major off-diagonal ``(C (C-1),)`` from upper-triangle pair values."""
    full = np.zeros((c, c))
    full[np.triu_indices(c, k=1)] = pairs
    full = full + full.T
    return full[~np.eye(c, dtype=bool)].tolist()


def collapse_block(m: dict[str, Any]) -> dict[str, Any]:
    """A :func:`collapse_metrics` dict in the results.json layout (scalars + per-class arrays)."""
    from ncood.collapse import to_jsonable

    c = int(m["num_classes"])
    arrays = {k for k, v in m.items() if isinstance(v, np.ndarray)}
    block = to_jsonable({k: v for k, v in m.items() if k not in arrays})
    block["per_class"] = {
        "within_variance": np.asarray(m["within_class_variance"]).tolist(),
        "weight_mean_cos": np.asarray(m["weight_mean_cosine"]).tolist(),
        "counts": np.asarray(m["counts"]).tolist(),
        "mean_norms": np.asarray(m["mean_norms"]).tolist(),
        "weight_norms": np.asarray(m["weight_norms"]).tolist(),
    }
    block["cos_means_offdiag"] = _offdiag(np.asarray(m["mean_cosines"]), c)
    block["cos_weights_offdiag"] = _offdiag(np.asarray(m["weight_cosines"]), c)
    block["mean_distances"] = np.asarray(m["mean_distances"]).tolist()
    return block


def collapse_of(fd: FeatureDir) -> tuple[dict, dict, dict, dict]:
    """NC1-NC4 of the penultimate train features and NC5 per OOD set (one stats pass)."""
    from ncood.collapse import ClassStats, collapse_metrics, nc5, nc5_centred

    z, y = fd.train.features, fd.train.labels
    stats = ClassStats.from_features(z, y, fd.head.num_classes)
    m = collapse_metrics(z, y, fd.head, stats=stats)
    n5 = {k: nc5(None, None, v.features, stats=stats) for k, v in fd.ood.items()}
    n5c = {k: nc5_centred(None, None, v.features, stats=stats) for k, v in fd.ood.items()}
    return m, collapse_block(m), n5, n5c


DEPTH_KEYS = ("nc1", "nc1_trace", "cdnv", "ncc_acc")


def _num(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def depth_of(fd: FeatureDir, head_metrics: dict[str, Any]) -> dict[str, Any]:
    """Collapse metrics on every pooled stage plus the penultimate layer."""
    from ncood.collapse.depth import depth_analysis, layer_stack

    res = depth_analysis(
        layer_stack(fd.train), fd.train.labels, head=fd.head, head_metrics=head_metrics
    )
    return {
        "layers": res.layers,
        "dims": [int(res.metrics[k]["dim"]) for k in res.layers],
        "metrics": {key: [_num(res.metrics[k].get(key)) for k in res.layers] for key in DEPTH_KEYS},
        "decay": {
            key: {"rate": _num(fit.get("rate")), "r2": _num(fit.get("r2"))}
            for key, fit in res.decay.items()
        },
    }


def epochs_of(
    cfg: RunConfig, run_dir: Path, cache: Path, timer: Timer, regime: str
) -> dict[str, Any] | None:
    """Collapse, NC5 and train error at every snapshot the training run saved."""
    from ncood.collapse.epochs import Snapshot, epoch_analysis
    from ncood.collapse.metrics import HEAD_SCALARS
    from ncood.extract import extract_checkpoint

    snaps = sorted((run_dir / "snapshots").glob("epoch_*.pt"))
    if not snaps:
        return None
    rows = []
    for snap in snaps:
        with timer(f"{regime}/snapshot_{snap.stem}"):
            fd = extract_checkpoint(
                snap,
                id_dataset=cfg.data.id,
                ood=cfg.data.ood,
                cache_dir=cache,
                data_root=cfg.data.root,
                layers=[],
                max_train_samples=cfg.data.train_samples,
                max_test_samples=1,  # the test split is not used across training
                max_ood_samples=cfg.data.ood_samples,
                allow_subset=cfg.data.allow_subset,
                seed=cfg.seed,
                device=cfg.device,
                progress=False,
            )
        rows.append(Snapshot(int(fd.meta["epoch"]), fd.train, fd.head, None, fd.ood))
    res = epoch_analysis(rows)
    return {
        "epochs": res.epochs,
        "train_error": [float(m["train_error"]) for m in res.metrics],
        "metrics": {k: [_num(m.get(k)) for m in res.metrics] for k in HEAD_SCALARS},
        "nc5": {o: [_num(m["nc5"].get(o)) for m in res.metrics] for o in res.ood_names},
        "nc5_centred": {
            o: [_num(m["nc5_centred"].get(o)) for m in res.metrics] for o in res.ood_names
        },
        "zero_error_epoch": res.zero_error_epoch,
    }


# --------------------------------------------------------------------------- main
def run(cfg: RunConfig, *, output: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run the whole experiment; returns the results dict (also written to disk)."""
    from ncood.extract import extract_checkpoint
    from ncood.report import validate_results, write_report

    out = Path(output or cfg.output)
    cache = out / "cache"
    timer = Timer()
    t_start = time.perf_counter()
    regimes: dict[str, Any] = {}
    all_scores: dict[str, np.ndarray] = {}
    detector_params: dict[str, dict] = {}
    data_info: dict[str, Any] = {}
    with RunLock(out):
        for regime, overrides in cfg.regimes.items():
            log.info("== regime %s ==", regime)
            with timer(f"{regime}/train"):
                ckpt_path = train_regime(cfg, regime, dict(overrides), out)
            with timer(f"{regime}/extract"):
                fd = extract_checkpoint(
                    ckpt_path,
                    id_dataset=cfg.data.id,
                    ood=cfg.data.ood,
                    cache_dir=cache,
                    data_root=cfg.data.root,
                    layers=cfg.collapse.layers,
                    max_train_samples=cfg.data.train_samples,
                    max_test_samples=cfg.data.test_samples,
                    max_ood_samples=cfg.data.ood_samples,
                    allow_subset=cfg.data.allow_subset,
                    seed=cfg.seed,
                    device=cfg.device,
                )
            for fs in [fd.train, fd.test, *fd.ood.values()]:
                fs.check_finite()
            data_info = data_info or _data_info(fd)
            with timer(f"{regime}/score"):
                metrics, scores, detector_params = score_detectors(fd, cfg.detectors)
            all_scores.update({f"{regime}/{k}": v for k, v in scores.items()})
            with timer(f"{regime}/collapse"):
                nc_raw, nc, n5, n5c = collapse_of(fd)
            with timer(f"{regime}/depth"):
                depth = depth_of(fd, nc_raw)
                layer_dets = [d for d in cfg.collapse.layer_detectors if d in cfg.detectors]
                depth["ood_auroc"] = layer_ood_auroc(fd, layer_dets, cfg.detectors)
            epochs = None
            run_dir = Path(ckpt_path).parent
            if cfg.collapse.across_training:
                epochs = epochs_of(cfg, run_dir, cache, timer, regime)
            regimes[regime] = _regime_result(ckpt_path, out, metrics, nc, n5, n5c, depth, epochs)
            log.info("%s: done", regime)
        timer.durations["total"] = round(time.perf_counter() - t_start, 3)
        results = {
            "schema_version": 1,
            "ncood_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": cfg.to_dict(),
            "environment": environment(cfg.device),
            "data": data_info,
            "durations": timer.durations,
            "conventions": CONVENTIONS,
            "detectors": detector_params,
            "regimes": regimes,
        }
        from ncood.report.findings import findings

        results["findings"] = findings(results)
        validate_results(results)
        write_json(out / "results.json", results)
        with atomic_open(out / "scores.npz", "wb") as fh:
            np.savez_compressed(fh, **all_scores)
        write_report(results, all_scores, out)
    return results


def _data_info(fd: FeatureDir) -> dict[str, Any]:
    def src(fs: FeatureSet) -> str:
        return str(fs.meta.get("subset", {}).get("source", ""))

    return {
        "id": {
            "name": fd.meta.get("id_dataset"),
            "source": src(fd.train),
            "classes": list(fd.meta.get("classes", [])),
            "n_train": len(fd.train),
            "n_test": len(fd.test),
        },
        "ood": {k: {"source": src(v), "n": len(v)} for k, v in fd.ood.items()},
    }


def _regime_result(ckpt_path, out, metrics, nc, n5, n5c, depth, epochs) -> dict[str, Any]:
    from ncood.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    history = list(ckpt.get("history", []))
    last = history[-1] if history else {}
    try:
        rel = str(Path(ckpt_path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        rel = str(ckpt_path)
    result = {
        "checkpoint": rel,
        "epochs": int(ckpt.get("epoch", 0)),
        "final": {k: last.get(k) for k in ("train_acc", "test_acc", "train_loss", "test_loss")},
        "history": history,
        "ood": metrics,
        "collapse": nc,
        "nc5": n5,
        "nc5_centred": n5c,
        "depth": depth,
    }
    if epochs is not None:
        result["across_training"] = epochs
    return result


def print_summary(results: dict[str, Any], out: Path, file=sys.stdout) -> None:
    from ncood.report.tables import format_terminal_summary

    print(format_terminal_summary(results), file=file)
    print(f"\nreport: {out / 'report.html'}", file=file)
