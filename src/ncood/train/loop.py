"""The training loop: data decoded once, batches augmented on the device, resumable.

One run writes into one directory::

    run_dir/
      train_config.json         resolved TrainConfig (+ regime source)
      last.pt                   checkpoint after the last completed epoch (atomic, every epoch)
      snapshots/epoch_0000.pt   initialisation; then the snapshot epochs (weights, no optimiser)
      history.csv, history.json per-epoch records
      training_curves.png       loss / accuracy / lr per epoch

The parts: :func:`ncood.train.setup.prepare` builds or restores the run, the epoch loop
below trains and saves each epoch, :mod:`ncood.train.epoch` holds one epoch's inner loop,
and the history files are written by a callback,
:class:`~ncood.train.callbacks.HistoryWriter`, through the same contract as a user's.

Determinism: the initialisation is seeded from ``config.seed``; the order and the
augmentation of epoch ``e`` come from a ``torch.Generator`` seeded from ``(seed, e)``
alone, and the schedule is a closed form of the iteration. So a run interrupted after
epoch ``k`` and resumed from ``last.pt`` ends with the same weights as an uninterrupted
run (on CPU; GPU kernels may be non-deterministic).

Interruption: SIGINT (Ctrl-C) or SIGTERM (e.g. a batch scheduler's notice) finishes the
current step, leaves ``last.pt`` at the last completed epoch and raises
:class:`TrainingInterrupted`; the command line exits 130 (SIGINT) or 143 (SIGTERM).
A second signal stops at once. SIGKILL at any moment leaves the previous ``last.pt``
intact, because every artifact is written to a temporary file and renamed. The run
directory is locked (``.lock``, :class:`ncood.io.RunLock`) while a run writes it; the
lock file is removed however the run ends.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ncood.distributed import (
    all_reduce_sum,
    any_rank,
    barrier,
    broadcast_buffers,
    init_distributed,
    resolve_device,
    sampler_indices,
)
from ncood.errors import NcoodError
from ncood.io import RunLock
from ncood.train.callbacks import (
    HISTORY_COLUMNS,
    Callback,
    HistoryWriter,
    TrainState,
    read_history,
    write_curves,
    write_history,
)
from ncood.train.config import TrainConfig
from ncood.train.epoch import (
    autocast,
    batch_bounds,
    epoch_generator,
    evaluate,
    resolve_precision,
    run_epoch,
)
from ncood.train.setup import Setup, prepare

log = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM; ``last.pt`` holds the last completed epoch.

    Attributes:
        run_dir: the run directory.
        epoch: the last completed (saved) epoch.
        signum: the signal that stopped it.
    """

    def __init__(
        self, message: str, run_dir: Path, epoch: int, signum: int = signal.SIGINT
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run_dir = run_dir
        self.epoch = epoch
        self.signum = int(signum)

    def __str__(self) -> str:
        return self.message


@dataclass
class TrainResult:
    """What :func:`train` hands back.

    Attributes:
        checkpoint: ``run_dir / "last.pt"``.
        history: per-epoch records (:data:`HISTORY_COLUMNS`).
        run_dir: the run directory.
        config: the resolved config.
    """

    checkpoint: Path
    history: list[dict[str, Any]]
    run_dir: Path
    config: TrainConfig | None = None

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's record (``{}`` before any epoch)."""
        return self.history[-1] if self.history else {}


def train(
    config: TrainConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train a classifier and write its run directory.

    Args:
        config: a :class:`TrainConfig` or a mapping of its fields.
        out_dir: the run directory (created).
        resume: continue from ``out_dir/last.pt`` if it exists (a finished run returns at
            once; no ``last.pt`` starts a new run). Without ``resume`` an existing
            ``last.pt`` is an error, so a finished run is never overwritten by accident.
        progress: show a per-epoch progress bar on stderr (only when it is a terminal).
        callbacks: :class:`Callback` objects, called after the built-in
            :class:`~ncood.train.callbacks.HistoryWriter`.

    Returns:
        :class:`TrainResult` with the path of ``last.pt`` and the history.

    Raises:
        ConfigError: invalid config, existing run without ``resume``, a resumed run
            whose config differs, or another process training into ``out_dir``.
        TrainingInterrupted: SIGINT or SIGTERM; ``last.pt`` holds the last completed epoch.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    cfg = config.resolved()
    run_dir = Path(out_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NcoodError(
            f"cannot create run directory {str(run_dir)!r}: {exc.strerror}; choose a writable --out"
        ) from None
    # under torchrun: join the process group; only rank 0 holds the lock and writes
    ctx = init_distributed(cfg.device)
    lock = RunLock(run_dir, fix="choose another --out") if ctx.is_main else contextlib.nullcontext()
    with lock, _stop_signals() as stop:
        setup = prepare(cfg, run_dir, ctx, resume=resume)
        return _fit(setup, [HistoryWriter(), *callbacks], stop, progress)


def _fit(setup: Setup, callbacks: list[Callback], stop: _StopFlag, progress: bool) -> TrainResult:
    """The epoch loop: train, evaluate, save, call back; stop cleanly on a signal."""
    cfg, run_dir, ctx = setup.cfg, setup.run_dir, setup.ctx
    state = TrainState(
        config=cfg,
        run_dir=run_dir,
        model=setup.model,
        input_spec=setup.spec,
        train_arrays=setup.train_arrays,
        test_arrays=setup.test_arrays,
        device=setup.device,
        epoch=setup.start,
        history=setup.history,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )

    def stop_any() -> bool:  # agreed by every process, so all ranks stop after the same step
        return any_rank(stop())

    def interrupted(when: str, epoch: int) -> TrainingInterrupted:
        return TrainingInterrupted(
            f"interrupted {when}; {setup.last} holds epoch {epoch}; continue with "
            f"`ncood train --out {run_dir} --resume`",
            run_dir,
            epoch,
            stop.signum or signal.SIGINT,
        )

    for cb in callbacks:
        cb.on_train_start(state)
    eval_batch = min(1024, max(256, 2 * cfg.batch_size))
    for epoch in range(setup.start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = setup.optimizer.param_groups[0]["lr"]
        generator = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(len(setup.images), generator=generator)  # the same on every rank
        stats = run_epoch(
            setup.net,
            setup.optimizer,
            setup.scheduler,
            setup.images,
            setup.labels,
            setup.spec,
            batch_size=setup.rank_batch,
            generator=generator,
            augment=bool(cfg.augment),
            order=sampler_indices(order, ctx.rank, ctx.world_size),  # this process's part
            precision=setup.precision,
            channels_last=cfg.channels_last,
            progress=progress,
            desc=f"epoch {epoch}/{cfg.epochs}",
            should_stop=stop_any,
            reduce_sums=all_reduce_sum,  # loss, accuracy and images of every process
        )
        if stats["stopped"]:
            raise interrupted(f"during epoch {epoch}", epoch - 1)
        broadcast_buffers(setup.model)
        test_loss, test_acc = evaluate(
            setup.model,
            setup.test_arrays,
            setup.spec,
            batch_size=eval_batch,
            device=setup.device,
            precision=setup.precision,
            channels_last=cfg.channels_last,
        )
        row = {
            "epoch": epoch,
            "train_loss": stats["loss"],
            "train_acc": stats["acc"],
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": lr,
            "seconds": time.perf_counter() - t0,
            "images_per_s": stats["images"] / max(stats["seconds"], 1e-9),
        }
        setup.history.append(row)
        setup.save(epoch)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.2f%%  test loss %.4f acc %.2f%%  "
            "lr %.3g  %.1f s  %.0f img/s",
            epoch,
            cfg.epochs,
            row["train_loss"],
            100 * row["train_acc"],
            test_loss,
            100 * test_acc,
            lr,
            row["seconds"],
            row["images_per_s"],
        )
        state.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_end(state)
        if stop_any() and epoch < cfg.epochs:
            raise interrupted(f"after epoch {epoch}", epoch)

    for cb in callbacks:
        cb.on_train_end(state)
    barrier()  # last.pt and the history are complete before any rank returns
    return TrainResult(checkpoint=setup.last, history=setup.history, run_dir=run_dir, config=cfg)


# ---------------------------------------------------------------------- signals
class _StopFlag:
    """Set by SIGINT/SIGTERM, polled between steps; remembers which signal arrived."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def _stop_signals() -> Iterator[_StopFlag]:
    """Turn the first SIGINT or SIGTERM into a flag polled between steps; a second one
    acts at once (KeyboardInterrupt for SIGINT, termination for SIGTERM)."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    immediate = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    previous = {sig: signal.getsignal(sig) for sig in immediate}

    def handler(signum, frame):
        flag.signum = signum
        log.warning(
            "%s: stopping after the current step (send it again to abort)",
            signal.Signals(signum).name,
        )
        for sig, action in immediate.items():
            signal.signal(sig, action)

    for sig in immediate:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)


__all__ = [
    "HISTORY_COLUMNS",
    "Callback",
    "TrainResult",
    "TrainState",
    "TrainingInterrupted",
    "autocast",
    "batch_bounds",
    "epoch_generator",
    "evaluate",
    "read_history",
    "resolve_device",
    "resolve_precision",
    "run_epoch",
    "train",
    "write_curves",
    "write_history",
]
