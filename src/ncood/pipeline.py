"""``ncood run``: the reference experiment end to end.

For each seed and training regime of the config: train (or load, or resume), extract
features (cached), and measure the network with :func:`ncood.analysis.analyse` (every
detector on every OOD set, neural collapse of the penultimate layer and of every stage,
feature-space detectors per layer); then the same at every training snapshot. All of it
is one :class:`~ncood.results.Results` table, written as ``results.csv`` + ``run.json``
(``docs/results_schema.md``), beside ``scores.npz`` (raw scores of the final networks,
for the report's figures) and the report.

A regime may also be a model brought by the user (``{checkpoint: PATH, model:
"torchvision:NAME", num_classes: ...}``): it is not trained, its features are streamed
as ``ncood extract --model`` streams them, then analysed like any other network (no
history, no snapshots, epoch empty). Each final network's features are also written as a
plain features directory, ``regimes/<regime>[/seed_<s>]/features/``.

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
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ncood import __version__
from ncood.analysis import (
    analyse,
    history_rows,
    merge_selection_meta,
    relation_rows,
    select_hyperparameters,
    snapshot_checkpoints,
)
from ncood.config import (
    ODIN,
    RunConfig,
    array_detectors,
    check_run_config,
    model_regime_options,
    regime_train_dict,
)
from ncood.data.datasets import Holdout
from ncood.detectors.select import selectable
from ncood.distributed import resolve_device
from ncood.errors import ConfigError, NcoodError
from ncood.evaluation import extract_features
from ncood.extract import cache_key, extract_checkpoint, extract_validation
from ncood.io import RunLock, atomic_open, file_sha256, safe_name
from ncood.metrics import CONVENTIONS
from ncood.results import Results
from ncood.train import TrainConfig, load_checkpoint, train
from ncood.train.config import resume_conflicts, train_holdout
from ncood.types import FeatureDir, FeatureSet, load_feature_dir

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


@dataclasses.dataclass(frozen=True)
class BroughtModel:
    """A regime that is a model brought by the user: ``{checkpoint: PATH, model:
    "torchvision:NAME" | "timm:NAME", ...}``. Not trained; its features come from the
    streaming path of ``ncood extract --model`` (:func:`ncood.evaluation.extract_features`).

    Attributes:
        checkpoint: the weights file (a ``state_dict``, a dict holding one, an ncood
            checkpoint, ``.safetensors``).
        options: ``model`` and the given ones of ``num_classes``, ``input_size``,
            ``mean``, ``std``, ``head``, ``features`` (:func:`ncood.config.model_regime_options`).
    """

    checkpoint: Path
    options: dict[str, Any]

    def __fspath__(self) -> str:  # recorded in run.json's networks like a checkpoint
        return str(self.checkpoint)

    __str__ = __fspath__

    def load(self) -> Any:
        """The model as a :class:`~ncood.models.adapters.ModelAdapter` (weights loaded,
        eval mode), as :func:`ncood.models.adapters.load_model` builds it."""
        from ncood.models.adapters import load_model

        return load_model(self.options["model"], **self.model_kwargs())

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`ncood.models.adapters.load_model` /
        :func:`ncood.evaluation.extract_features` besides the model name."""
        return {
            "weights": self.checkpoint,
            **{k: v for k, v in self.options.items() if k != "model"},
        }


def train_regime(
    cfg: RunConfig, regime: str, overrides: dict[str, Any], run_dir: Path, seed: int
) -> Path | BroughtModel:
    """Train one regime (or reuse/resume its run); return the final checkpoint path.

    ``{checkpoint: PATH}`` returns the path of that ncood checkpoint;
    ``{checkpoint: PATH, model: ..., ...}`` a :class:`BroughtModel` (nothing trained).
    """
    if "checkpoint" in overrides:
        try:
            options = model_regime_options(overrides)
        except ConfigError as exc:
            raise ConfigError(f"regimes.{regime}: {exc}") from None
        path = Path(overrides["checkpoint"]).expanduser()
        if options is not None:
            return BroughtModel(path, options)  # loaded (and checked) by extract
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
    """Features of one network on the config's data (cached; NaN/inf raise).

    ``checkpoint`` is an ncood checkpoint, or a :class:`BroughtModel` (extracted by
    :func:`extract_brought`).
    """
    if isinstance(checkpoint, BroughtModel):
        return extract_brought(
            cfg,
            checkpoint,
            cache,
            seed,
            train_samples=train_samples,
            test_samples=test_samples,
            ood_samples=ood_samples,
            layers=layers,
            progress=progress,
        )
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


def extract_brought(
    cfg: RunConfig,
    model: BroughtModel,
    cache: Path,
    seed: int,
    *,
    train_samples: int | None,
    test_samples: int | None,
    ood_samples: int | None,
    layers: list[str] | None,
    progress: bool = True,
) -> FeatureDir:
    """Features of a model brought by the user on the config's data, streamed batch by
    batch (:func:`ncood.evaluation.extract_features`: the ``ncood extract --model`` path)
    into ``cache/model-<key>/``, a features directory; the key hashes the weights file's
    SHA-256, the model options, the data, the subsets and the layers, so a re-run with the
    same inputs reads it back instead of extracting again."""
    description = {
        "weights_sha256": file_sha256(model.checkpoint),
        "options": model.options,
        "id": cfg.data.id,
        "ood": list(cfg.data.ood),
        "root": cfg.data.root,
        "allow_subset": cfg.data.allow_subset,
        "samples": [train_samples, test_samples, ood_samples],
        "seed": seed,
        "layers": layers,
        "ncood_version": __version__,
    }
    out = Path(cache) / f"model-{cache_key(description)}"
    fd = None
    if (out / "extract.json").is_file():
        try:
            fd = load_feature_dir(out)
            log.info("features of %s: cache hit (%s)", model.options["model"], out)
        except NcoodError as exc:
            log.warning("feature cache entry %s is damaged (%s); extracting again", out, exc)
            shutil.rmtree(out, ignore_errors=True)
    if fd is None:
        fd = extract_features(
            model.options["model"],
            **model.model_kwargs(),
            train=cfg.data.id,
            test=cfg.data.id,
            ood=list(cfg.data.ood),
            out=out,
            layers=layers,
            max_train_samples=train_samples,
            max_test_samples=test_samples,
            max_ood_samples=ood_samples,
            seed=seed,
            device=cfg.device,
            data_root=cfg.data.root,
            allow_subset=cfg.data.allow_subset,
            progress=progress,
        )
    for fs in [fd.train, fd.test, *fd.ood.values()]:
        fs.check_finite()
    return fd


def explain_inputs(
    cfg: RunConfig, checkpoint: Path | BroughtModel, seed: int, fd: FeatureDir
) -> tuple[Any, dict[str, Any]]:
    """``(model, options)`` of :func:`ncood.explain.explain_network` for one network.

    An ncood checkpoint is passed as it is (the network is rebuilt from it). A model
    brought by the user is loaded again (:func:`ncood.models.adapters.load_model`) and its
    example images are taken, by index, from the streams its features came from, opened
    again with the same subsets (``sources``).
    """
    if not isinstance(checkpoint, BroughtModel):
        return checkpoint, {}
    from ncood.data.streams import open_stream, parse_named_sets
    from ncood.distributed import resolve_device

    model = checkpoint.load()
    model.to(resolve_device(cfg.device))
    tf = model.transform
    data = cfg.data
    common = dict(transform=tf, root=data.root, seed=seed, allow_subset=data.allow_subset)
    sources = {"id": open_stream(data.id, split="test", n=data.test_samples, **common)}
    for name, spec in parse_named_sets(list(data.ood)).items():
        if name in fd.ood:
            sources[name] = open_stream(spec, split="test", n=data.ood_samples, name=name, **common)
    return model, {"transform": tf, "sources": sources}


def odin_regime(
    cfg: RunConfig,
    regime: str,
    seed: int,
    checkpoint: Path | BroughtModel,
    *,
    epoch: int | None,
    bootstrap: dict[str, Any] | None,
    held: Holdout | None,
    scores_out: dict[str, np.ndarray] | None,
) -> Results:
    """ODIN's rows for one final network (:mod:`ncood.odin`: it runs the network).

    The same ID test and OOD images the features came from (same splits, subset sizes and
    seed). With ``held`` (selection on, ODIN selected) ``(temperature, epsilon)`` is
    chosen first on the held-out ID validation images against the validation OOD set
    (:func:`ncood.odin.odin_select`; the test sets are not read) and the test rows use the
    winner; else the configured values.
    """
    from ncood.data.datasets import load_images
    from ncood.odin import odin_rows, odin_select, resolve_params

    data = cfg.data
    model = checkpoint.load() if isinstance(checkpoint, BroughtModel) else checkpoint
    opts = dict(
        regime=regime, seed=seed, epoch=epoch, device=cfg.device, data_root=data.root,
        data_seed=seed, allow_subset=data.allow_subset,
    )  # fmt: skip
    parts = []
    params = resolve_params(cfg.detectors.get(ODIN))
    if held is not None:
        sel = cfg.selection
        val_id = load_images(
            data.id, "train", root=data.root, allow_subset=data.allow_subset,
            holdout=Holdout(held.n, seed=held.seed, part="holdout"),
        )  # fmt: skip
        chosen = odin_select(
            model, val_id, sel.ood_val[0], max_ood_samples=sel.ood_val_samples, **opts
        )
        params = chosen.meta["selection"][ODIN]["chosen"]
        parts.append(chosen)
    parts.append(
        odin_rows(
            model,
            test=data.id,
            ood=list(data.ood),
            max_test_samples=data.test_samples,
            max_ood_samples=data.ood_samples,
            bootstrap=bootstrap,
            scores_out=scores_out,
            **params,
            **opts,
        )
    )
    meta = {"detectors": parts[-1].meta["detectors"], "odin": parts[-1].meta["odin"]}
    if held is not None:
        meta["selection"] = parts[0].meta["selection"]
    return Results.concat(parts, meta=meta)


def write_features(fd: FeatureDir, directory: Path) -> Path:
    """Write ``fd`` as a plain features directory (what ``ncood score --features`` reads).

    Arrays that are memory maps of cache files are hard-linked (copied across file
    systems); the directory is built beside ``directory`` and swapped in whole, so a
    reader never sees a half-written one.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        fd.save(stage, link=True)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
        stage.rename(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return directory


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

    ``scores_out`` receives the final network's raw scores. With ``cfg.explain`` and
    ``explain_out`` (given for the first seed) also the explanation rows of the final
    network (:func:`ncood.explain.explain_network`); ``explain_out`` receives their images
    and attributions, keys prefixed ``"<regime>/"``.
    """
    brought = isinstance(checkpoint, BroughtModel)  # a user's model: no history, no epoch
    ckpt = {} if brought else load_checkpoint(checkpoint)
    final_epoch = None if brought else int(ckpt.get("epoch", 0))
    col, boot = cfg.collapse, cfg.bootstrap
    bootstrap = {"n_boot": boot.n_boot, "seed": boot.seed} if boot.n_boot > 0 else None
    dets = array_detectors(cfg.detectors)  # ODIN runs the network: scored apart, below
    common = dict(detectors=dets, layer_detectors=col.layer_detectors, regime=regime, seed=seed)
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
    # hyperparameter selection (issue 13): on the held-out ID validation split and the
    # validation OOD sets only; the winners replace the configured values at this head
    selected, chosen, held = None, None, None
    notes = parts[0].meta.setdefault("notes", [])
    note = {"regime": regime, "seed": seed, "epoch": final_epoch, "layer": "penultimate",
            "detector": None}  # fmt: skip
    if cfg.selection is not None and brought:
        text = (
            "hyperparameter selection is not run for a brought model (its validation "
            "features are not extracted): the configured hyperparameters are used"
        )
        log.warning("%s: %s", tag, text)
        notes.append({**note, "note": text})
    elif cfg.selection is not None:
        sel = cfg.selection
        held = train_holdout(ckpt.get("config") or {})
        if held is None:  # a checkpoint not trained by a run with selection on
            held = Holdout(sel.id_val_samples, seed=seed)
            text = (
                f"the checkpoint records no held-out split, so the ID validation split "
                f"({held.n} train images, seed {held.seed}) may include images it trained on "
                "and is inside the detector-fit set; test sets are still not used"
            )
            log.warning("%s: %s", tag, text)
            notes.append({**note, "note": text})
        wanted = sel.array_detectors()
        if selectable(list(dets), wanted):
            with timer(f"{tag}/selection"):
                val_id, val_ood = extract_validation(
                    checkpoint, holdout=held, ood=sel.ood_val, id_dataset=cfg.data.id,
                    cache_dir=cache, data_root=cfg.data.root,
                    max_ood_samples=sel.ood_val_samples, allow_subset=cfg.data.allow_subset,
                    seed=seed, device=cfg.device, progress=False,
                )  # fmt: skip
                for fs in [val_id, *val_ood.values()]:
                    fs.check_finite()
                selected, chosen = select_hyperparameters(
                    fd, val_id, val_ood, detectors=dets, selected=wanted,
                    regime=regime, seed=seed, epoch=final_epoch,
                )  # fmt: skip
    with timer(f"{tag}/analyse"):
        parts.append(
            analyse(
                fd,
                epoch=final_epoch,
                bootstrap=bootstrap,
                scores_out=scores_out,
                head_params=chosen,
                **common,
            )
        )
    selection = dict(selected.meta["selection"]) if selected is not None else {}
    if selected is not None:
        parts.append(selected)
    odin = None
    if ODIN in cfg.detectors:
        sel = cfg.selection
        odin_held = held if sel and sel.selects_odin(cfg.detectors) else None
        with timer(f"{tag}/odin"):
            odin = odin_regime(
                cfg, regime, seed, checkpoint, epoch=final_epoch, bootstrap=bootstrap,
                held=odin_held, scores_out=scores_out,
            )  # fmt: skip
        parts.append(odin)
        selection.update(odin.meta.get("selection", {}))
    if cfg.explain and explain_out is not None and scores_out is not None:
        from ncood.explain import explain_network

        with timer(f"{tag}/explain"):
            net, net_inputs = explain_inputs(cfg, checkpoint, seed, fd)
            explained, arrays = explain_network(
                fd, net, **net_inputs, detectors=dets, scores=scores_out,
                data_root=cfg.data.root, allow_subset=cfg.data.allow_subset, device=cfg.device,
                regime=regime, seed=seed, epoch=final_epoch,
            )  # fmt: skip
        parts.append(explained)
        if explain_out is not None:
            explain_out.update({f"{regime}/{k}": v for k, v in arrays.items()})
    if col.across_training and not brought:  # a user's model has no snapshots
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
    detectors = dict(parts[1].meta.get("detectors", {}))
    if odin is not None:
        detectors.update(odin.meta["detectors"])
    meta = {"detectors": detectors, "notes": [n for p in parts for n in p.meta.get("notes", [])]}
    if selection:
        meta["selection"] = selection
    return Results.concat(parts, meta=meta), fd


# --------------------------------------------------------------------------- main
def run(cfg: RunConfig, *, output: str | os.PathLike | None = None) -> Results:
    """Run the whole experiment; returns the results (also written to disk).

    Writes into the output directory: ``results.csv`` + ``run.json`` (the table and its
    metadata, :meth:`Results.save`), ``scores.npz`` (raw scores of every final network,
    keys ``"<regime>/<detector>/<id|ood set>"`` for the first seed and
    ``"seed_<s>/<regime>/<detector>/<id|ood set>"`` for the others), the report, and per regime
    ``regimes/<regime>/train/`` and ``regimes/<regime>/features/`` (the final network's
    features directory, hard-linked from the cache, which ``ncood score --features`` and
    ``ncood collapse --features`` read; ``.../seed_<s>/...`` with several seeds). A regime
    ``{checkpoint: PATH, model: "torchvision:NAME", ...}`` is a model brought by the user:
    not trained, extracted as ``ncood extract --model`` does (:class:`BroughtModel`).
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
                    scores_out=scores,
                    explain_out=explained if seed == seeds[0] else None,
                )
                parts.append(res)
                write_features(fd, run_dir.parent / "features")  # for `ncood score --features`
                prefix = "" if seed == seeds[0] else f"seed_{seed}/"
                all_scores.update({f"{prefix}{regime}/{k}": v for k, v in scores.items()})
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
                **({"selection": merge_selection_meta(parts)} if cfg.selection else {}),
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
        first = {k: v for k, v in all_scores.items() if not k.startswith("seed_")}
        write_report(results, out, scores=first)  # its figures show the first seed
    return results


def _relative(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)


def _data_info(fd: FeatureDir) -> dict[str, Any]:
    def src(fs: FeatureSet) -> str:
        source = fs.meta.get("subset", {}).get("source")  # else: a streamed set's description
        return str(source or (fs.meta.get("data") or {}).get("source", ""))

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
