"""ncood.train: regimes, config, schedules, augmentation, checkpoints, the loop, `ncood train`.

Independent references: torch's own schedulers (CosineAnnealingLR, MultiStepLR) for the
closed-form schedules, a per-sample pad/slice/flip for the batched augmentation, a plain
evaluation loop for the recorded test accuracy, ``hashlib`` for checkpoint hashes, and an
uninterrupted run for every resumed one (``torch.equal`` on every tensor).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncood.errors import CheckpointError, ConfigError
from ncood.models import create_model
from ncood.train import (
    Callback,
    TrainConfig,
    TrainingInterrupted,
    checkpoint_sha256,
    get_regime,
    list_regimes,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    train,
)
from ncood.train import epoch as epoch_module
from ncood.train.augment import random_crop_flip
from ncood.train.loop import batch_bounds, resolve_precision
from ncood.train.optim import CosineFactor, StepFactor, build_optimizer, build_scheduler

TINY = {
    "model": "resnet_narrow",
    "dataset": "fashion_mnist",
    "regime": "standard",
    "epochs": 2,
    "batch_size": 64,
    "max_train_samples": 512,
    "max_test_samples": 500,
    "seed": 0,
    "precision": "fp32",
}
ARTIFACTS = ("last.pt", "history.csv", "history.json", "training_curves.png", "train_config.json")


# ---------------------------------------------------------------------- regimes and config
def test_regimes_match_the_issue():
    assert {"standard", "memorize", "terminal"} <= set(list_regimes())
    s, m, t = get_regime("standard"), get_regime("memorize"), get_regime("terminal")
    assert (s.optimizer, s.nesterov, s.momentum, s.lr, s.weight_decay) == (
        "sgd",
        True,
        0.9,
        0.1,
        5e-4,
    )
    assert (s.schedule, s.batch_size, s.augment) == ("cosine", 128, True)
    assert (m.optimizer, m.lr, m.weight_decay, m.augment) == ("adam", 1e-3, 0.0, False)
    assert (t.optimizer, t.momentum, t.weight_decay, t.augment, t.schedule) == (
        "sgd",
        0.9,
        5e-4,
        False,
        "step",
    )
    for name in list_regimes():
        from ncood.train.regimes import REGIMES

        assert "arXiv" in REGIMES.get(name).__doc__ or "reference" in REGIMES.get(name).__doc__


def test_unknown_regime_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'standard'"):
        TrainConfig(regime="standrd")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"epoch": 3}, "did you mean 'epochs'"),
        ({"weight_decy": 0.1}, "did you mean 'weight_decay'"),
        ({"lr": "fast"}, "lr must be of type"),
        ({"epochs": "3"}, "epochs must be of type"),
        ({"augment": "yes"}, "augment must be of type"),
        ({"epochs": 0}, "'epochs' parameter of TrainConfig must be an int in the range"),
        ({"lr": -0.1}, "'lr' parameter"),
        ({"momentum": 1.0}, "'momentum' parameter"),
        ({"precision": "fp16"}, "'precision' parameter"),
        ({"optimizer": "lbfgs"}, "'optimizer' parameter"),
        ({"snapshots": "sometimes"}, "'snapshots' parameter"),
        ({"snapshots": [-1]}, "'snapshots' parameter"),
        ({"model": "resnet_narow"}, "did you mean 'resnet_narrow'"),
    ],
)
def test_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(data)


def test_config_resolution_and_overrides():
    cfg = TrainConfig.from_dict({"regime": "memorize", "lr": 3e-4, "epochs": 7})
    r = cfg.resolved()
    assert (r.lr, r.epochs, r.optimizer, r.weight_decay, r.augment) == (3e-4, 7, "adam", 0.0, False)
    assert cfg.lr == 3e-4 and cfg.optimizer is None  # the original stays unresolved
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0 and isinstance(
        TrainConfig.from_dict({"lr": 1}).lr, float
    )
    assert TrainConfig.from_dict(r.to_dict()) == r  # round trip through a dict


def test_config_from_yaml(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: resnet20\nepochs: 4\nsnapshots: [0, 2]\n")
    cfg = TrainConfig.from_yaml(path)
    assert (cfg.model, cfg.epochs, cfg.snapshots) == ("resnet20", 4, [0, 2])
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize(
    ("snapshots", "epochs", "expected"),
    [
        ("log", 100, [0, 1, 2, 4, 8, 16, 32, 64, 100]),
        ("log", 1, [0, 1]),
        ("log", 2, [0, 1, 2]),
        ("all", 3, [0, 1, 2, 3]),
        ("none", 3, []),
        ([3, 0, 3], 5, [0, 3]),
    ],
)
def test_snapshot_epochs(snapshots, epochs, expected):
    assert TrainConfig(snapshots=snapshots, epochs=epochs).snapshot_epochs() == expected


def test_snapshot_after_last_epoch_is_an_error():
    with pytest.raises(ConfigError, match="after the last epoch"):
        TrainConfig(snapshots=[0, 9], epochs=3).snapshot_epochs()


def test_precision_auto_never_picks_emulated_bf16(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    # oneDNN says "supported" on plain AVX-512 too, where bf16 is emulated: flags decide
    monkeypatch.setattr(epoch_module, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(epoch_module, "_cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(epoch_module, "_cpu_flags", lambda: {"avx2", "amx_bf16", "amx_tile"})
    assert resolve_precision("auto", cpu) == "bf16"


# ---------------------------------------------------------------------- schedules, optimiser
def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(out)


def test_cosine_schedule_matches_torch():
    cfg = TrainConfig(epochs=3).resolved()
    p = [torch.nn.Parameter(torch.zeros(1))]
    ours_opt = torch.optim.SGD(p, lr=cfg.lr)
    ours = build_scheduler(ours_opt, cfg, steps_per_epoch=10)
    ref_opt = torch.optim.SGD(p, lr=cfg.lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=30, eta_min=cfg.lr * 1e-5)
    np.testing.assert_allclose(_lrs(ours, ours_opt, 31), _lrs(ref, ref_opt, 31), rtol=1e-9)
    assert CosineFactor(30)(0) == 1.0 and math.isclose(CosineFactor(30)(30), 1e-5)


def test_step_schedule_matches_torch():
    cfg = TrainConfig(regime="terminal", epochs=9).resolved()
    p = [torch.nn.Parameter(torch.zeros(1))]
    ours_opt = torch.optim.SGD(p, lr=cfg.lr)
    ours = build_scheduler(ours_opt, cfg, steps_per_epoch=4)  # 36 steps: drops at 12, 24
    ref_opt = torch.optim.SGD(p, lr=cfg.lr)
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[12, 24], gamma=0.1)
    np.testing.assert_allclose(_lrs(ours, ours_opt, 36), _lrs(ref, ref_opt, 36), rtol=1e-12)
    assert StepFactor([12, 24])(11) == 1.0 and math.isclose(StepFactor([12, 24])(24), 0.01)


@pytest.mark.parametrize(
    ("regime", "kind"), [("standard", torch.optim.SGD), ("memorize", torch.optim.Adam)]
)
def test_optimizer_of_regime(regime, kind):
    cfg = TrainConfig(regime=regime).resolved()
    opt = build_optimizer(create_model("resnet_narrow"), cfg)
    assert isinstance(opt, kind)
    group = opt.param_groups[0]
    assert group["lr"] == cfg.lr and group["weight_decay"] == cfg.weight_decay
    if regime == "standard":
        assert group["nesterov"] is True and group["momentum"] == 0.9


@pytest.mark.parametrize(
    ("n", "bs", "expected"),
    [
        (10, 4, [(0, 4), (4, 8), (8, 10)]),
        (9, 4, [(0, 4), (4, 8)]),
        (8, 4, [(0, 4), (4, 8)]),
        (1, 4, [(0, 1)]),
    ],
)
def test_batch_bounds(n, bs, expected):
    assert batch_bounds(n, bs) == expected


# ---------------------------------------------------------------------- augmentation
def test_crop_flip_equals_per_sample_reference():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8, generator=gen)
    g = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    out = random_crop_flip(images, g, padding=4)
    offsets = torch.randint(0, 9, (16, 2), generator=replay)
    flips = torch.rand(16, generator=replay) < 0.5
    for i in range(16):
        padded = F.pad(images[i], (4, 4, 4, 4))  # zero padding, as torchvision
        oy, ox = offsets[i].tolist()
        ref = padded[:, oy : oy + 10, ox : ox + 12]
        if flips[i]:
            ref = torch.flip(ref, dims=[-1])
        assert torch.equal(out[i], ref), i
    assert out.dtype == torch.uint8 and out.shape == images.shape
    # the generator advanced exactly as the replay did: the next draws agree
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=replay))


def test_crop_flip_distribution_and_identity():
    images = torch.arange(8 * 8, dtype=torch.float32).view(1, 1, 8, 8).repeat(4000, 1, 1, 1)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=2)
    # output pixel (4, 4) shows padded[oy + 4, ox + 4] = input[oy + 2, ox + 2] unflipped
    # and input[oy + 2, ox + 1] flipped (column 7 - 4 of the crop), oy, ox in 0..4: every
    # offset and both flips occur
    centre = out[:, 0, 4, 4]
    expected = {float(8 * r + c) for r in range(2, 7) for c in range(1, 7)}
    assert set(torch.unique(centre).tolist()) == expected
    flipped = (out[:, 0, 4, 5] < out[:, 0, 4, 4]).float().mean().item()
    assert abs(flipped - 0.5) < 0.05
    same = random_crop_flip(images[:5], torch.Generator(), padding=0, flip=False)
    assert torch.equal(same, images[:5])


# ---------------------------------------------------------------------- checkpoints
def _tiny_checkpoint(path, *, num_classes=4, model_name="resnet_narrow", kwargs=None, epoch=3):
    torch.manual_seed(1)
    model = create_model(model_name, num_classes=num_classes, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1, 12, 12)).sum().backward()
    opt.step()
    save_checkpoint(
        path,
        model=model,
        model_name=model_name,
        model_kwargs=kwargs or {"num_classes": num_classes, "in_channels": 1},
        input_spec={"size": 12, "channels": 1, "mean": [0.5], "std": [0.25]},
        dataset={"name": "toy", "classes": [str(i) for i in range(num_classes)]},
        regime="standard",
        config={"seed": 0},
        epoch=epoch,
        history=[{"epoch": 1, "train_loss": 1.0}],
        optimizer=opt,
    )
    return model


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "c.pt"
    model = _tiny_checkpoint(path)
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == "ncood-checkpoint" and ckpt["epoch"] == 3
    assert ckpt["torch_version"] == torch.__version__ and ckpt["history"][0]["epoch"] == 1
    rebuilt, _ = model_from_checkpoint(path)
    assert not rebuilt.training
    for (k, a), (k2, b) in zip(
        model.state_dict().items(), rebuilt.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x), rtol=0, atol=0)
    assert checkpoint_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    # not a pickle of arbitrary objects: weights_only loading works
    torch.load(path, weights_only=True)


def test_missing_corrupt_truncated_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    _tiny_checkpoint(good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "noise.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "text.pt")
    torch.save(create_model("resnet_narrow").state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_checkpoint(tmp_path / "bare.pt")
    ckpt = load_checkpoint(good)
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="upgrade ncood"):
        load_checkpoint(tmp_path / "future.pt")
    for bad in ("trunc", "noise", "bare", "future"):  # every message is one line
        try:
            load_checkpoint(tmp_path / f"{bad}.pt")
        except CheckpointError as exc:
            assert "\n" not in str(exc)


def test_architecture_and_class_mismatch(tmp_path):
    path = tmp_path / "c.pt"
    _tiny_checkpoint(path, kwargs={"num_classes": 10, "in_channels": 1})  # weights have 4
    with pytest.raises(CheckpointError, match=r"fc.weight is \(4, 64\) in the file"):
        model_from_checkpoint(path)
    _tiny_checkpoint(path, model_name="resnet_narrow")
    ckpt = load_checkpoint(path)
    ckpt["model"]["name"] = "resnet20"  # one more block per stage
    with pytest.raises(CheckpointError, match="missing"):
        model_from_checkpoint(ckpt)
    ckpt["model"]["name"] = "resnet_tiny"
    with pytest.raises(CheckpointError, match="cannot build"):
        model_from_checkpoint(ckpt)


def test_other_torch_version_loads_with_warning(tmp_path):
    path = tmp_path / "c.pt"
    _tiny_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["torch_version"] = "1.13.0"
    ckpt["python_version"] = "3.8.0"
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match=r"torch 1.13.0 .*python 3.8.0"):
        model, _ = model_from_checkpoint(path)
    assert model.num_classes == 4


# ---------------------------------------------------------------------- training runs
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "tiny"
    result = train(TINY, run_dir, progress=False)
    return result


def _state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _plain_eval(model, cfg_like):
    """Loss and accuracy of ``model`` on the run's test subset, with a plain loop."""
    from ncood.data import InputSpec, load_images, to_model_input

    ckpt_spec = InputSpec.from_dict(cfg_like["input_spec"])
    test = load_images("fashion_mnist", "test", n=TINY["max_test_samples"], seed=TINY["seed"])
    with torch.no_grad():
        logits = torch.cat(
            [
                model(to_model_input(test.images[i : i + 100], ckpt_spec))
                for i in range(0, len(test), 100)
            ]
        )
    loss = F.cross_entropy(logits, test.labels).item()
    acc = (logits.argmax(1) == test.labels).double().mean().item()
    return loss, acc


@pytest.mark.slow
def test_tiny_run_writes_every_artifact_and_learns(tiny_run):
    run_dir = tiny_run.run_dir
    for name in ARTIFACTS:
        assert (run_dir / name).is_file(), name
    snaps = sorted(p.name for p in (run_dir / "snapshots").iterdir())
    assert snaps == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    # history: csv == json == result, one row per epoch with every column
    rows = json.loads((run_dir / "history.json").read_text())
    with open(run_dir / "history.csv") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == [1, 2] and rows == tiny_run.history
    for r, c in zip(rows, csv_rows, strict=True):
        assert set(c) == set(r)
        for k in r:
            assert math.isclose(float(c[k]), r[k], rel_tol=1e-12)
    assert rows[0]["lr"] == 0.1 and rows[1]["lr"] < 0.1  # cosine, stepped per iteration
    assert rows[1]["train_loss"] < rows[0]["train_loss"] < math.log(10) + 0.5
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 for r in rows)
    # the recorded test numbers are those of the saved weights (plain recomputation),
    # and training beat the initialisation saved as snapshot 0
    model, ckpt = model_from_checkpoint(tiny_run.checkpoint)
    loss, acc = _plain_eval(model, ckpt)
    assert math.isclose(loss, rows[-1]["test_loss"], rel_tol=1e-4)
    assert math.isclose(acc, rows[-1]["test_acc"], abs_tol=1e-9)
    init, _ = model_from_checkpoint(run_dir / "snapshots" / "epoch_0000.pt")
    init_loss, init_acc = _plain_eval(init, ckpt)
    assert loss < init_loss and acc > init_acc + 0.1
    # snapshots: the last equals last.pt's weights; the first is the initialisation
    _assert_same_weights(_state(run_dir / "snapshots" / "epoch_0002.pt"), ckpt["state_dict"])
    ckpt0 = load_checkpoint(run_dir / "snapshots" / "epoch_0000.pt")
    assert ckpt0["epoch"] == 0 and "optimizer" not in ckpt0
    # the checkpoint describes itself
    assert ckpt["model"] == {
        "name": "resnet_narrow",
        "kwargs": {"num_classes": 10, "in_channels": 1},
    }
    classes = ckpt["dataset"]["classes"]
    assert len(classes) == 10 and classes[0] == "T-shirt/top" and classes[-1] == "Ankle boot"
    assert ckpt["dataset"]["n_train"] == 512 and ckpt["dataset"]["n_test"] == 500
    assert ckpt["input_spec"]["channels"] == 1 and ckpt["input_spec"]["size"] == 28
    assert ckpt["regime"] == "standard" and ckpt["config"]["lr"] == 0.1
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"])
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    saved = json.loads((run_dir / "train_config.json").read_text())
    assert saved["config"] == TrainConfig.from_dict(TINY).resolved().to_dict()


class _StopAfter(Callback):
    def __init__(self, epoch, action):
        self.epoch, self.action = epoch, action

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            self.action()


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_run, tmp_path):
    run_dir = tmp_path / "resumed"

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TINY, run_dir, progress=False, callbacks=[_StopAfter(1, interrupt)])
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    result = train(TINY, run_dir, resume=True, progress=False)
    _assert_same_weights(_state(result.checkpoint), _state(tiny_run.checkpoint))
    for a, b in zip(result.history, tiny_run.history, strict=True):
        for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert a[k] == b[k], k
    # resuming a finished run is a no-op that returns the same result
    again = train(TINY, run_dir, resume=True, progress=False)
    assert again.history == result.history


@pytest.mark.slow
def test_sigint_in_process_stops_at_epoch_boundary(tmp_path):
    cfg = dict(TINY, epochs=3, max_train_samples=256, max_test_samples=100)
    callback = _StopAfter(1, lambda: os.kill(os.getpid(), signal.SIGINT))

    # The handler in place before training is set here, not inherited: under `nohup` or
    # `cmd &` in a script SIGINT starts ignored, under a terminal it is default_int_handler.
    # A handler of our own proves train() restores whatever was there, however pytest runs.
    def before(signum, frame):
        raise AssertionError("train() let SIGINT reach the handler installed before it")

    inherited = signal.signal(signal.SIGINT, before)
    try:
        with pytest.raises(TrainingInterrupted, match="--resume") as info:
            train(cfg, tmp_path / "r", progress=False, callbacks=[callback])
        assert signal.getsignal(signal.SIGINT) is before  # restored
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert info.value.epoch == 1
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 1


def test_existing_run_without_resume_and_changed_config_are_refused(tmp_path):
    run_dir = tmp_path / "r"
    _tiny_checkpoint(run_dir / "last.pt")
    with pytest.raises(ConfigError, match="pass --resume"):
        train(TINY, run_dir, progress=False)
    # a resumable last.pt whose config differs from the one given
    ckpt = load_checkpoint(run_dir / "last.pt")
    ckpt["config"] = TrainConfig.from_dict(TINY).resolved().to_dict()
    ckpt["scheduler"] = {}
    torch.save(ckpt, run_dir / "last.pt")
    with pytest.raises(ConfigError, match=r"lr: 0.1 -> 0.05"):
        train(dict(TINY, lr=0.05), run_dir, resume=True, progress=False)


def test_second_process_on_same_run_dir_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another ncood run is writing"):
            train(TINY, run_dir, progress=False)


def test_failed_train_leaves_no_lock(tmp_path, capsys):
    from ncood.cli.main import main

    run_dir = tmp_path / "r"
    with pytest.raises(ConfigError, match="model_kwargs"):  # fails after taking the lock
        train(dict(TINY, model_kwargs={"bogus": 1}), run_dir, progress=False)
    assert run_dir.is_dir() and not (run_dir / ".lock").exists()
    code = main(["train", "--data", "no_such_dataset", "--epochs", "1", "--out", str(run_dir)])
    assert code != 0 and capsys.readouterr().err.strip()
    assert not (run_dir / ".lock").exists()


def test_run_lock_is_released_and_a_killed_holders_file_is_taken_over(tmp_path):
    from ncood.io import RunLock

    with RunLock(tmp_path) as lock:
        assert lock.path.read_text().strip() == str(os.getpid())
        with pytest.raises(ConfigError, match="this process holds"):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()
    # a holder killed with SIGKILL leaves its file, unlocked: the next run takes it
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys; from ncood.io import RunLock; "
            "RunLock(sys.argv[1]).__enter__(); os.kill(os.getpid(), signal.SIGKILL)",
            str(tmp_path),
        ],
        check=False,
    )
    assert child.returncode == -signal.SIGKILL and (tmp_path / ".lock").exists()
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_cli_refuses_existing_run_with_one_line(tmp_path, capsys):
    from ncood.cli.main import main

    run_dir = tmp_path / "r"
    _tiny_checkpoint(run_dir / "last.pt")
    code = main(["train", "--model", "resnet_narrow", "--epochs", "1", "--out", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--resume" in err[0]
    code = main(["train", "--out", str(run_dir), "--epoch", "1"])
    assert code == 2  # argparse: unknown flag


def test_cli_config_precedence(tmp_path):
    from ncood.cli.main import build_parser
    from ncood.cli.train import build_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: resnet20\nlr: 0.2\nepochs: 9\n")
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            str(cfg_file),
            "--lr",
            "0.05",
            "--no-augment",
            "--out",
            str(tmp_path / "r"),
            "--snapshots",
            "0,3",
            "--data",
            "fashion_mnist[0-4]",
        ]
    )
    data = build_config(args)
    assert data == {
        "model": "resnet20",
        "lr": 0.05,
        "epochs": 9,
        "augment": False,
        "snapshots": [0, 3],
        "dataset": "fashion_mnist[0-4]",
    }
    TrainConfig.from_dict(data)


# ---------------------------------------------------------------------- real processes
def _wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen, timeout: float = 240):
    deadline = time.monotonic() + timeout
    path = run_dir / "history.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.communicate()}")
        try:
            if len(json.loads(path.read_text())) >= epoch:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"epoch {epoch} not reached in {timeout} s")


@pytest.mark.slow
def test_killed_subprocess_resumes_to_the_same_weights(tiny_run, tmp_path):
    """`ncood train` killed with SIGKILL in epoch 2 leaves a loadable last.pt; `--resume`
    ends with the weights of the uninterrupted in-process run of the same config."""
    run_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "ncood.cli.main",
        "train",
        "--out",
        str(run_dir),
        "--num-threads",
        str(torch.get_num_threads()),
    ]
    for key, value in TINY.items():
        cmd += ["--" + key.replace("_", "-"), str(value)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_epoch(run_dir, 1, proc)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert still_running and proc.returncode == -signal.SIGKILL
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1  # loadable after SIGKILL

    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test_acc" in done.stdout and "last.pt" in done.stdout  # the summary table
    assert "resuming" in done.stderr
    _assert_same_weights(_state(run_dir / "last.pt"), _state(tiny_run.checkpoint))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same versions: no warning
        load_checkpoint(run_dir / "last.pt")


def test_cli_interrupt_exits_130_with_the_resume_hint(tmp_path, capsys, monkeypatch):
    import ncood.train as train_module
    from ncood.cli.main import main

    def interrupted(config, out_dir, **kwargs):
        raise TrainingInterrupted(
            f"interrupted during epoch 2; {out_dir}/last.pt holds epoch 1; continue with "
            f"`ncood train --out {out_dir} --resume`",
            Path(out_dir),
            1,
        )

    monkeypatch.setattr(train_module, "train", interrupted)
    code = main(["train", "--epochs", "2", "--out", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 130 and captured.out == ""
    assert "--resume" in captured.err and len(captured.err.strip().splitlines()) == 1
