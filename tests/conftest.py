"""Shared fixtures: a briefly trained network on real Fashion-MNIST, extracted once."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    # real data for every test unless the caller chose a root
    if "NCOOD_DATA_ROOT" not in os.environ and SHARED_DATA.is_dir():
        os.environ["NCOOD_DATA_ROOT"] = str(SHARED_DATA)
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def fmnist_run(tmp_path_factory):
    """``resnet_narrow`` trained 3 epochs on 3,000 real Fashion-MNIST images.

    Attributes: ``train``, ``test`` (FeatureSets with per-stage layers), ``ood``
    (``digits``, ``texture_crops``), ``head``, ``init_train`` / ``init_head`` (the same
    train samples through the network at initialisation), ``run_dir``, ``checkpoint``.
    """
    from ncood.extract import extract_checkpoint
    from ncood.train import TrainConfig, train

    root = tmp_path_factory.mktemp("fmnist_run")
    cfg = TrainConfig.from_dict(
        {
            "model": "resnet_narrow",
            "dataset": "fashion_mnist",
            "regime": "standard",
            "epochs": 3,
            "max_train_samples": 3000,
            "max_test_samples": 1000,
            "channels_last": True,
            "snapshots": [0, 3],
            "seed": 0,
            "precision": "fp32",
        }
    )
    result = train(cfg, root / "run", progress=False)
    common = dict(
        ood=["digits", "texture_crops"],
        cache_dir=root / "cache",
        max_train_samples=3000,
        max_test_samples=1000,
        max_ood_samples=600,
        progress=False,
    )
    fd = extract_checkpoint(result.checkpoint, **common)
    init = extract_checkpoint(root / "run" / "snapshots" / "epoch_0000.pt", **common)
    return SimpleNamespace(
        train=fd.train,
        test=fd.test,
        ood=fd.ood,
        head=fd.head,
        init_train=init.train,
        init_head=init.head,
        run_dir=root / "run",
        checkpoint=result.checkpoint,
    )
