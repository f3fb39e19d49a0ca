"""``ncood run`` checks its whole config before any work starts (issue 15).

Each bad config must fail within 5 s (not after training), with one line naming the key,
and leave nothing on disk.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ncood.config import check_run_config, load_config
from ncood.errors import ConfigError

LIMIT_S = 5.0


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("NCOOD_OFFLINE", "1")  # no test may need the network


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    # The limit is for the check, not for loading torch/scikit-learn into this process
    # (`ncood run` pays that once, whatever the config).
    import sklearn.datasets  # noqa: F401  (digits)
    import torch  # noqa: F401

    import ncood.data  # noqa: F401
    import ncood.detectors  # noqa: F401
    import ncood.train  # noqa: F401


@pytest.fixture
def cfg(tmp_path):
    cfg = load_config()  # the embedded default: Fashion-MNIST + digits/crops/noise
    cfg.output = str(tmp_path / "out")
    return cfg


def _fails(cfg, match: str, output: str | None = None) -> str:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=match) as info:
        check_run_config(cfg, output=output)
    seconds = time.perf_counter() - t0
    assert seconds < LIMIT_S, f"the check took {seconds:.1f} s"
    message = str(info.value)
    assert "\n" not in message
    assert not Path(output or cfg.output).exists(), "the check wrote the output directory"
    return message


def test_the_default_config_passes_and_writes_nothing(cfg):
    t0 = time.perf_counter()
    check_run_config(cfg)
    assert time.perf_counter() - t0 < LIMIT_S
    assert not Path(cfg.output).exists()


def test_misspelled_detector(cfg):
    cfg.detectors["vimm"] = {}
    msg = _fails(cfg, r"^config\.detectors: unknown detector 'vimm'")
    assert "did you mean 'vim'" in msg


@pytest.mark.parametrize(
    "params, match",
    [
        ({"dimm": 3}, r"^config\.detectors\.vim: .*'dimm'.*did you mean 'dim'"),
        ({"dim": -1}, r"^config\.detectors\.vim: .*dim.*-1"),
        ({"dim": "many"}, r"^config\.detectors\.vim: .*dim.*'many'"),
    ],
)
def test_bad_detector_hyperparameter(cfg, params, match):
    cfg.detectors["vim"] = params
    _fails(cfg, match)


def test_unknown_layer_detector(cfg):
    cfg.collapse.layer_detectors = ["mahalanobis", "necco"]
    _fails(cfg, r"^config\.collapse\.layer_detectors: unknown detector 'necco'.*'neco'")


def test_unknown_id_dataset(cfg):
    cfg.data.id = "fashion_mnst[0-4]"
    _fails(cfg, r"^config\.data\.id: unknown dataset 'fashion_mnst'.*'fashion_mnist'")


def test_unknown_ood_dataset(cfg):
    cfg.data.ood = ["digits", "texture_crop"]
    _fails(cfg, r"^config\.data\.ood\[1\]: unknown dataset 'texture_crop'.*'texture_crops'")


def test_ood_dataset_missing_offline(cfg, tmp_path, monkeypatch):
    from ncood.data import sources

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("NCOOD_DATA_ROOT", str(empty))
    monkeypatch.setattr(sources, "cache_root", lambda: empty / "cache")
    monkeypatch.setattr(sources, "DEFAULT_SYSTEM_ROOT", empty / "system")
    cfg.data.ood = ["digits", "svhn"]
    msg = _fails(cfg, r"^config\.data\.ood\[1\]: dataset 'svhn' .*not found")
    assert str(empty) in msg  # says where it looked


def test_unknown_model(cfg):
    cfg.model = "resnet19"
    _fails(cfg, r"^config\.model: unknown model 'resnet19'.*did you mean 'resnet18'")


def test_model_kwargs_that_do_not_fit(cfg):
    cfg.model_kwargs = {"zero_init_residuals": True}
    _fails(cfg, r"^config\.model_kwargs .*zero_init_residuals.*remove the unknown keys")


def test_model_kwargs_against_the_data(cfg):
    cfg.model_kwargs = {"num_classes": 7}
    _fails(cfg, r"^config\.model_kwargs sets num_classes=7, but the data .* needs num_classes=10")


def test_unknown_layer(cfg):
    cfg.collapse.layers = ["layer1", "layer9"]
    msg = _fails(cfg, r"^config\.collapse\.layers\[1\]: 'layer9' is not a submodule of ResNet")
    assert "did you mean 'layer3'" in msg and "valid layers: stem, layer1, layer2, layer3" in msg


@pytest.mark.parametrize(
    "regimes, match",
    [
        ({"standrd": {"epochs": 1}}, r"^config\.regimes\.standrd: unknown regime.*'standard'"),
        ({"standard": {"epoch": 1}}, r"^config\.regimes\.standard: unknown key.*'epochs'"),
        ({"standard": {"lr": -0.1}}, r"^config\.regimes\.standard: .*'lr'.*-0\.1"),
        ({"standard": {"checkpoint": "/nonexistent/last.pt"}}, r"checkpoint: no file"),
        ({}, r"^config\.regimes must name at least one regime"),
    ],
)
def test_bad_regimes(cfg, regimes, match):
    cfg.regimes = regimes
    _fails(cfg, match)


def test_bad_training_key(cfg):
    cfg.training["optimiser"] = "sgd"
    _fails(cfg, r"^config\.regimes\.standard: unknown key.*'optimizer'")


def test_bad_device(cfg):
    cfg.device = "tpu"
    _fails(cfg, r"^config\.device: ")


def test_output_under_a_file(cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _fails(cfg, r"^config\.output .*is a file, not a directory", output=str(blocker / "out"))
    with pytest.raises(ConfigError, match=r"^config\.output must be a directory; .* is a file"):
        check_run_config(cfg, output=str(blocker))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output(cfg, tmp_path):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        _fails(cfg, r"^config\.output .* is not writable", output=str(parent / "out"))
    finally:
        parent.chmod(0o700)


def test_unwritable_output_as_reported_by_access(cfg, tmp_path, monkeypatch):
    # as root every directory is writable; simulate what a normal user sees
    real_access = os.access
    parent = tmp_path / "read_only"
    parent.mkdir()
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == parent else real_access(p, mode)
    )
    _fails(cfg, r"^config\.output .* is not writable", output=str(parent / "out" / "deeper"))


def test_ncood_run_with_a_bad_config_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import ncood.train
    from ncood.cli.main import main

    def no_training(*args, **kwargs):
        raise AssertionError("ncood run started training with a bad config")

    monkeypatch.setattr(ncood.train, "train", no_training)
    monkeypatch.setattr("ncood.pipeline.train", no_training)  # bound at pipeline's import
    config = tmp_path / "bad.yaml"
    config.write_text("detectors:\n  msp: {}\n  vimm: {}\n")
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code = main(["run", str(config), "--out", str(out)])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("ncood run: error: config.detectors: unknown detector 'vimm'")
    assert "Traceback" not in "\n".join(err)
    assert seconds < LIMIT_S and not out.exists()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda c: setattr(c.data, "ood_samples", 0), r"^config\.data\.ood_samples: .*Got 0"),
        (lambda c: setattr(c.data, "train_samples", -5), r"^config\.data\.train_samples: "),
        (lambda c: setattr(c, "seeds", [0, 1, 0]), r"^config\.seeds must be .*distinct"),
        (lambda c: setattr(c, "seeds", [0, -1]), r"^config\.seeds\[1\]: .*Got -1"),
        (lambda c: setattr(c.bootstrap, "n_boot", -1), r"^config\.bootstrap\.n_boot: "),
    ],
)
def test_bad_counts(cfg, change, match):
    change(cfg)
    _fails(cfg, match)


def test_named_ood_sets(cfg, tmp_path):
    cfg.data.ood = ["hand=digits", "noise=gaussian_noise"]
    check_run_config(cfg)
    cfg.data.ood = ["hand=digitz"]
    _fails(cfg, r"^config\.data\.ood\[0\]: unknown dataset 'digitz'.*'digits'")
    cfg.data.ood = ["x=digits", "x=gaussian_noise"]
    _fails(cfg, r"^config\.data\.ood: two data sets are named 'x'")
    cfg.data.ood = [f"faces=folder:{tmp_path / 'no_such_folder'}"]
    _fails(cfg, r"^config\.data\.ood\[0\]: .*no_such_folder")


@pytest.mark.slow
def test_ncood_run_fails_before_importing_the_pipeline(tmp_path):
    """In a fresh process the check runs before the pipeline/report stack is imported."""
    import subprocess
    import sys

    config = tmp_path / "bad.yaml"
    config.write_text("detectors:\n  vimm: {}\n")
    out = tmp_path / "out"
    code = (
        "import sys; from ncood.cli.main import main; "
        f"rc = main(['run', {str(config)!r}, '--out', {str(out)!r}]); "
        "print(sorted(m for m in ('ncood.pipeline', 'ncood.report') if m in sys.modules)); "
        "sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NCOOD_OFFLINE": "1"},
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert "config.detectors: unknown detector 'vimm'" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
    print(f"`ncood run` with a bad config: exit 2 after {seconds:.1f} s (python + torch + check)")
