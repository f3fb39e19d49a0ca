"""``ncood run``: the reference experiment end to end.

For each seed and training regime of the config: train (or load, or resume), extract
features (cached), and measure the network with :func:`ncood.analysis.analyse` (every
detector on every OOD set, neural collapse of the penultimate layer and of every stage,
feature-space detectors per layer); then the same at every training snapshot. All of it
is one :class:`~ncood.results.Results` table, written as ``results.csv`` + ``run.json``
(``docs/results_schema.md``), beside ``scores.npz`` (raw scores of the final networks,
for the report's figures) and the report.

Re-running with the same config reuses finished stages: a finished training run is
loaded, an unfinished one resumed from ``last.pt``, features come from the cache.
Only one process may write an output directory at a time (``.lock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ncood import __version__
from ncood.analysis import analyse, history_rows, relation_rows, snapshot_checkpoints
from ncood.config import RunConfig, check_run_config, regime_train_dict
from ncood.distributed import resolve_device
from ncood.errors import ConfigError
from ncood.extract import extract_checkpoint
from ncood.io import RunLock, atomic_open, safe_name
from ncood.metrics import CONVENTIONS
from ncood.results import Results
from ncood.train import TrainConfig, load_checkpoint, train
from ncood.train.config import resume_conflicts
from ncood.types import FeatureDir, FeatureSet

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers
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
        "device": str(resolve_device(device)),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------- stages
def run_seeds(cfg: RunConfig) -> list[int]:
    """The seeds a run trains each regime with: ``cfg.seeds``, else ``[cfg.seed]``
    (checked by :func:`ncood.config.check_run_config`: distinct, non-negative)."""
    return list(cfg.seeds) if cfg.seeds else [int(cfg.seed)]


def train_dir(out: Path, regime: str, seed: int, *, several_seeds: bool) -> Path:
    """Where a regime's training run lives: ``regimes/<regime>/train``, or
    ``regimes/<regime>/seed_<s>/train`` when the config has several seeds."""
    base = out / "regimes" / safe_name(regime)  # a config key is never a path
    return (base / f"seed_{seed}" if several_seeds else base) / "train"


def train_regime(
    cfg: RunConfig, regime: str, overrides: dict[str, Any], run_dir: Path, seed: int
) -> Path:
    """Train one regime (or reuse/resume its run); return the final checkpoint path."""
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
        regime_train_dict(dataclasses.replace(cfg, seed=seed), regime, overrides)
    )
    last = run_dir / "last.pt"
    if last.exists() and resume_conflicts(load_checkpoint(last).get("config", {}), tc):
        stale = run_dir.with_name(f"train.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s: %s was trained with another config; kept as %s", regime, last, stale)
        run_dir.rename(stale)
    # resume=True: a finished run returns at once, an interrupted one continues
    return train(tc, run_dir, resume=True).checkpoint


def extract(
    cfg: RunConfig,
    checkpoint: Path,
    cache: Path,
    seed: int,
    *,
    train_samples: int | None,
    test_samples: int | None,
    ood_samples: int | None,
    layers: list[str] | None,
    progress: bool = True,
) -> FeatureDir:
    """Features of one network on the config's data (cached; NaN/inf raise)."""
    fd = extract_checkpoint(
        checkpoint,
        id_dataset=cfg.data.id,
        ood=cfg.data.ood,
        cache_dir=cache,
        data_root=cfg.data.root,
        layers=layers,
        max_train_samples=train_samples,
        max_test_samples=test_samples,
        max_ood_samples=ood_samples,
        allow_subset=cfg.data.allow_subset,
        seed=seed,
        device=cfg.device,
        progress=progress,
    )
    for fs in [fd.train, fd.test, *fd.ood.values()]:
        fs.check_finite()
    return fd


def analyse_regime(
    cfg: RunConfig,
    regime: str,
    seed: int,
    checkpoint: Path,
    cache: Path,
    timer: Timer,
    tag: str,
    scores_out: dict[str, np.ndarray] | None = None,
    explain_out: dict[str, np.ndarray] | None = None,
) -> tuple[Results, FeatureDir]:
    """Every row of one trained network: its history, the final network, every snapshot.

    With ``cfg.explain`` and ``scores_out`` (the first seed) also the explanation rows of
    the final network (:func:`ncood.explain.explain_network`); ``explain_out`` receives
    their images and attributions, keys prefixed ``"<regime>/"``.
    """
    ckpt = load_checkpoint(checkpoint)
    final_epoch = int(ckpt.get("epoch", 0))
    col, boot = cfg.collapse, cfg.bootstrap
    bootstrap = {"n_boot": boot.n_boot, "seed": boot.seed} if boot.n_boot > 0 else None
    common = dict(
        detectors=cfg.detectors, layer_detectors=col.layer_detectors, regime=regime, seed=seed
    )
    parts = [Results(history_rows(ckpt.get("history", []), regime=regime, seed=seed))]
    # NC and detector fits use the images the network was trained on: a regime may train
    # on its own subset (e.g. memorize: {max_train_samples: 2000})
    train_n = (ckpt.get("config") or {}).get("max_train_samples", cfg.data.train_samples)
    with timer(f"{tag}/extract"):
        fd = extract(
            cfg,
            checkpoint,
            cache,
            seed,
            train_samples=train_n,
            test_samples=cfg.data.test_samples,
            ood_samples=cfg.data.ood_samples,
            layers=col.layers,
        )
    with timer(f"{tag}/analyse"):
        parts.append(
            analyse(fd, epoch=final_epoch, bootstrap=bootstrap, scores_out=scores_out, **common)
        )
    if cfg.explain and scores_out is not None:
        from ncood.explain import explain_network

        with timer(f"{tag}/explain"):
            explained, arrays = explain_network(
                fd, checkpoint, detectors=cfg.detectors, scores=scores_out,
                data_root=cfg.data.root, allow_subset=cfg.data.allow_subset, device=cfg.device,
                regime=regime, seed=seed, epoch=final_epoch,
            )  # fmt: skip
        parts.append(explained)
        if explain_out is not None:
            explain_out.update({f"{regime}/{k}": v for k, v in arrays.items()})
    if col.across_training:
        snaps = snapshot_checkpoints(Path(checkpoint).parent)
        # OOD detection at every snapshot unless switched off (then NC only: no test split)
        det_opts = (
            common
            if col.snapshot_detectors
            else {**common, "detectors": None, "layer_detectors": []}
        )
        test_n = col.snapshot_test_samples or cfg.data.test_samples
        # a smaller train subset per snapshot only where the network saw the whole split
        # (a stratified subset of the split is then inside its training set; a subset of
        # a subset need not be)
        snap_train_n = train_n
        if train_n is None and col.snapshot_train_samples:
            snap_train_n = col.snapshot_train_samples
        for epoch, path in snaps:
            if epoch == final_epoch:
                continue  # the final network, analysed above
            with timer(f"{tag}/snapshot_epoch_{epoch:04d}"):
                sfd = extract(
                    cfg,
                    path,
                    cache,
                    seed,
                    train_samples=snap_train_n,
                    test_samples=test_n if col.snapshot_detectors else 1,
                    ood_samples=col.snapshot_ood_samples or cfg.data.ood_samples,
                    layers=col.layers if col.snapshot_layers else [],
                    progress=False,
                )
                parts.append(
                    analyse(
                        sfd,
                        epoch=epoch,
                        layers=col.snapshot_layers,
                        bootstrap=bootstrap if boot.every_snapshot else None,
                        **det_opts,
                    )
                )
    notes = [n for p in parts for n in p.meta.get("notes", [])]
    meta = {"detectors": parts[1].meta.get("detectors", {}), "notes": notes}
    return Results.concat(parts, meta=meta), fd


# --------------------------------------------------------------------------- main
def run(cfg: RunConfig, *, output: str | os.PathLike | None = None) -> Results:
    """Run the whole experiment; returns the results (also written to disk).

    Writes into the output directory: ``results.csv`` + ``run.json`` (the table and its
    metadata, :meth:`Results.save`), ``scores.npz`` (raw scores of the first seed's final
    networks, keys ``"<regime>/<detector>/<id|ood set>"``), the report, and per regime
    ``regimes/<regime>/train/`` (``.../seed_<s>/train/`` with several seeds).
    """
    check_run_config(cfg, output=output)
    seeds = run_seeds(cfg)
    out = Path(output or cfg.output)
    cache = out / "cache"
    timer = Timer()
    t_start = time.perf_counter()
    several = len(seeds) > 1
    parts: list[Results] = []
    all_scores: dict[str, np.ndarray] = {}
    explained: dict[str, np.ndarray] = {}  # example images and attributions (explain.npz)
    networks: list[dict[str, Any]] = []
    data_info: dict[str, Any] = {}
    with RunLock(out):
        for seed in seeds:
            for regime, overrides in cfg.regimes.items():
                tag = f"{regime}/seed_{seed}" if several else regime
                log.info("== regime %s ==", tag)
                run_dir = train_dir(out, regime, seed, several_seeds=several)
                with timer(f"{tag}/train"):
                    ckpt = train_regime(cfg, regime, dict(overrides), run_dir, seed)
                scores: dict[str, np.ndarray] = {}
                res, fd = analyse_regime(
                    cfg,
                    regime,
                    seed,
                    ckpt,
                    cache,
                    timer,
                    tag,
                    scores_out=scores if seed == seeds[0] else None,
                    explain_out=explained,
                )
                parts.append(res)
                all_scores.update({f"{regime}/{k}": v for k, v in scores.items()})
                data_info = data_info or _data_info(fd)
                networks.append(
                    {
                        "regime": regime,
                        "seed": seed,
                        "epoch": fd.meta.get("epoch"),
                        "checkpoint": _relative(ckpt, out),
                    }
                )
                log.info("%s: done", tag)
        timer.durations["total"] = round(time.perf_counter() - t_start, 3)
        results = Results.concat(
            parts,
            meta={
                "ncood_version": __version__,
                "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "config": cfg.to_dict(),
                "environment": environment(cfg.device),
                "data": data_info,
                "durations": timer.durations,
                "conventions": dict(CONVENTIONS),
                "detectors": parts[0].meta.get("detectors", {}) if parts else {},
                "networks": networks,
                "notes": [n for p in parts for n in p.meta.get("notes", [])],
            },
        )
        # the relation of AUROC and collapse over every point (descriptive, issue 11)
        boot = cfg.bootstrap
        results.extend(relation_rows(results, n_boot=boot.n_boot or 1000, seed=boot.seed))
        # heavy: the report imports matplotlib and jinja2
        from ncood.report import findings, write_report

        results.meta["findings"] = findings(results)
        results.save(out)
        with atomic_open(out / "scores.npz", "wb") as fh:
            np.savez_compressed(fh, **all_scores)
        if explained:  # read by write_report from the output directory
            with atomic_open(out / "explain.npz", "wb") as fh:
                np.savez_compressed(fh, **explained)
        write_report(results, out, scores=all_scores)
    return results


def _relative(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)


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
