"""Extraction and the head search leave a user's model in exactly the modes it had."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ncood.data.streams import EvalTransform, open_stream
from ncood.extract import extract_stream
from ncood.models.adapters import ModelAdapter


def _model():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip
    return net


#: inputs pass unchanged: 8x8, one channel, mean 0 and std 1
TF = EvalTransform(size=8, resize=8, mean=(0.0,), std=(1.0,), channels=1)


def _modes(net):
    return [m.training for m in net.modules()]


def test_extract_stream_restores_every_submodules_mode():
    x = np.random.default_rng(0).random((10, 1, 8, 8)).astype(np.float32)
    y = np.arange(10) % 3
    for setup in ("eval", "train", "mixed"):
        net = _model()
        if setup == "eval":
            net.eval()
        elif setup == "mixed":  # frozen batch norm in a training model
            net.train()
            net[1].eval()
        before = _modes(net)
        stream = open_stream((x, y), transform=TF, batch_size=4, num_workers=0)
        fs = extract_stream(net, stream, progress=False)
        assert _modes(net) == before, setup
        # the features were computed in eval mode (batch norm with running statistics)
        # (images pass through the stream's uint8 decoding: 1/255 steps)
        with torch.no_grad():
            ref = net.eval()(torch.from_numpy(x)).numpy()
            batch_stats = net.train()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(fs.logits, ref, atol=1e-3)
        assert np.abs(batch_stats - ref).max() > 1e-2  # train mode would be told apart


def test_locate_restores_mixed_modes():
    net = _model().train()
    net[1].eval()
    before = _modes(net)
    ModelAdapter(net).locate(torch.rand(2, 1, 8, 8))
    assert _modes(net) == before
