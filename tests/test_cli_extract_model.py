"""`ncood extract --model torchvision:NAME --weights FILE`: the CLI side of issue 12.

Independent reference: the model's own avgpool output and logits on the same images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from ncood.cli.main import main
from ncood.data import load_images
from ncood.types import load_feature_dir


def test_extract_model_then_score(tmp_path, capsys):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "resnet18.pt")
    out = tmp_path / "feats"
    argv = [
        "extract",
        "--model",
        "torchvision:resnet18",
        "--weights",
        str(tmp_path / "resnet18.pt"),
        "--input-size",
        "64",
        "--id",
        "fashion_mnist",
        "--ood",
        "d=digits",
        "--max-train",
        "60",
        "--max-test",
        "20",
        "--max-ood",
        "20",
        "--layers",
        "layer4",
        "--workers",
        "0",
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    fd = load_feature_dir(out)
    from ncood.data.streams import EvalTransform

    x = EvalTransform(64, 64, 3)(load_images("fashion_mnist", "test", n=20, seed=0).images)
    got = {}
    net.avgpool.register_forward_hook(lambda m, i, o: got.setdefault("z", o.flatten(1)))
    with torch.no_grad():
        logits = net(x)
    np.testing.assert_allclose(fd.test.features, got["z"], atol=1e-6)
    np.testing.assert_allclose(fd.test.logits, logits, rtol=1e-5, atol=1e-5)
    assert list(fd.ood) == ["d"]
    assert (
        main(
            [
                "score",
                "--features",
                str(out),
                "--detectors",
                "msp",
                "--out",
                str(tmp_path / "scores"),
                "-q",
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--num-classes", "100"], "num_classes is 100, but the weights"),
        (["--mean", "0.5,x"], "--mean must be comma-separated numbers"),
    ],
)
def test_extract_model_bad_input_one_line_nothing_written(tmp_path, capsys, extra, match):
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "w.pt")
    argv = [
        "extract",
        "--model",
        "torchvision:resnet18",
        "--weights",
        str(tmp_path / "w.pt"),
        "--id",
        "fashion_mnist",
        "--out",
        str(tmp_path / "o"),
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and not (tmp_path / "o").exists()
