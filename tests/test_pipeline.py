"""`ncood run` end to end on a tiny config: determinism, reuse of finished stages, report."""

from __future__ import annotations

import json

import pytest

from ncood.config import RunConfig, from_dict

TINY = {
    "name": "tiny",
    "seed": 0,
    "model": "resnet_narrow",
    "data": {
        "id": "fashion_mnist",
        "ood": ["digits", "gaussian_noise"],
        "train_samples": 400,
        "test_samples": 200,
        "ood_samples": 100,
    },
    "training": {"precision": "fp32", "max_test_samples": 200, "snapshots": [0, 1]},
    "regimes": {"standard": {"epochs": 1}, "memorize": {"epochs": 1}},
}

VOLATILE = ("created", "durations")


def _stable(results: dict) -> dict:
    out = {k: v for k, v in results.items() if k not in VOLATILE}
    out["config"] = {k: v for k, v in out["config"].items() if k != "output"}
    for reg in out["regimes"].values():
        for row in reg["history"]:
            row.pop("seconds", None)
            row.pop("images_per_s", None)
    return out


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results_and_rerun_reuses(tmp_path, capsys):
    from ncood.cli.main import main
    from ncood.pipeline import run

    cfg: RunConfig = from_dict(RunConfig, TINY)
    first = run(cfg, output=tmp_path / "a")
    second = run(cfg, output=tmp_path / "b")
    assert json.dumps(_stable(first), sort_keys=True) == json.dumps(_stable(second), sort_keys=True)

    # every section of the report and the schema-valid results are on disk
    out = tmp_path / "a"
    for name in ("results.json", "scores.npz", "report.md", "report.html"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "results.json").read_text())
    assert _stable(on_disk) == json.loads(json.dumps(_stable(first)))
    assert set(on_disk["regimes"]) == {"standard", "memorize"}
    for reg in on_disk["regimes"].values():
        assert set(reg["ood"]) == {"msp", "maxlogit", "energy", "mahalanobis", "vim", "neco"}
        assert reg["across_training"]["epochs"] == [0, 1]

    # re-running the same config in the same directory reuses checkpoints and features
    ckpt = out / "regimes" / "standard" / "train" / "last.pt"
    mtime = ckpt.stat().st_mtime_ns
    yaml_path = tmp_path / "tiny.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump({**TINY, "output": str(out)}, sort_keys=False))
    assert main(["run", str(yaml_path)]) == 0
    printed = capsys.readouterr().out
    assert "OOD detection" in printed and "report.html" in printed
    assert ckpt.stat().st_mtime_ns == mtime
    third = json.loads((out / "results.json").read_text())
    assert json.dumps(_stable(third), sort_keys=True) == json.dumps(_stable(first), sort_keys=True)
