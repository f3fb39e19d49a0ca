"""The shipped configs are valid: checked as `ncood run` checks them, on stand-in data."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_standins import write_cifar, write_dtd, write_svhn

from ncood.config import ODIN, check_run_config, load_config
from ncood.detectors import list_detectors

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_cifar100_config_passes_the_run_check_on_stand_in_data(tmp_path, monkeypatch):
    monkeypatch.setenv("NCOOD_OFFLINE", "1")
    write_cifar(tmp_path, variant="cifar100", per_file=40)
    write_svhn(tmp_path, "test")
    write_dtd(tmp_path)
    cfg = load_config(CONFIGS / "cifar100_resnet18.yaml")
    cfg.data.root = str(tmp_path)
    cfg.selection.id_val_samples = 20  # the stand-in split is small
    cfg.selection.ood_val_samples = 20
    check_run_config(cfg, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the same analysis as the default: every detector, three seeds, selection on
    assert set(cfg.detectors) == set(list_detectors()) | {ODIN}
    assert cfg.seeds == [0, 1, 2]
    assert cfg.selection.ood_val == ["uniform_noise"]


@pytest.mark.parametrize("name", ["fashion_mnist.yaml", "default"])
def test_fashion_mnist_configs_pass_the_run_check(name, tmp_path):
    cfg = load_config(None if name == "default" else CONFIGS / name)
    check_run_config(cfg, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert set(cfg.detectors) == set(list_detectors()) | {ODIN}
    assert cfg.selection is not None and cfg.selection.ood_val == ["uniform_noise"]
