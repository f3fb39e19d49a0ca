"""One residual block and one ResNet class; every registered network is built from them.

The layout follows He et al., "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv 1512.03385): basic blocks of two 3x3 convolutions with batch norm, and a 1x1
convolution + batch norm on the shortcut where the stride or the width changes ("option B").
Two stems:

- ``"imagenet"``: 7x7 stride-2 convolution + 3x3 stride-2 max-pool (torchvision's layout;
  the parameter names of the blocks and the head match torchvision's, the stem's are
  prefixed ``stem.``).
- ``"cifar"``: one 3x3 stride-1 convolution and no max-pool, for 28-32 px inputs (the
  layout of the OpenOOD benchmark networks, Zhang et al. 2023, arXiv 2306.09301).

Models know nothing about OOD detection: ``forward_features`` returns the pooled
penultimate features, ``forward_head`` the logits (no softmax), and ``forward`` is exactly
``forward_head(forward_features(x))``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ncood.errors import ConfigError
from ncood.types import LinearHead

STEMS = ("cifar", "imagenet")


class ResidualBlock(nn.Module):
    """Basic residual block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first 3x3 convolution (and of the shortcut).

    Shapes:
        ``(n, in_channels, h, w) -> (n, out_channels, ceil(h / stride), ceil(w / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        # Convolutions before batch norm carry no bias: BN's shift makes it redundant.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet of :class:`ResidualBlock` stages with a CIFAR or ImageNet stem.

    Args:
        stem: ``"cifar"`` (3x3 stride-1 conv, no max-pool) or ``"imagenet"`` (7x7 stride-2
            conv + 3x3 stride-2 max-pool).
        widths: channels of each stage, e.g. ``(64, 128, 256, 512)``. The stem outputs
            ``widths[0]`` channels.
        blocks: residual blocks per stage, e.g. ``(2, 2, 2, 2)``. Every stage after the
            first halves the spatial size.
        in_channels: channels of the input images (1 for grey, 3 for RGB).
        num_classes: outputs of the linear head.
        zero_init_residual: start the last batch norm of every block at gamma = 0, so each
            block begins as the identity. Goyal et al. 2017 (arXiv 1706.02677) report
            +0.2-0.3% on ImageNet with large batches; off by default because it changes
            the features at initialisation, which neural-collapse-across-training
            studies compare against.

    Shapes:
        ``forward_features``: ``(n, in_channels, h, w) -> (n, widths[-1])``;
        ``forward_head``: ``(n, widths[-1]) -> (n, num_classes)``.
    """

    def __init__(
        self,
        *,
        stem: str = "cifar",
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 3,
        num_classes: int = 10,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        widths, blocks = [int(w) for w in widths], [int(b) for b in blocks]
        _check_arch(stem, widths, blocks, in_channels, num_classes)
        self.stem_kind = stem
        self.widths = tuple(widths)
        self.blocks = tuple(blocks)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)

        if stem == "imagenet":
            layers = OrderedDict(
                conv1=nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
                bn1=nn.BatchNorm2d(widths[0]),
                relu=nn.ReLU(inplace=True),
                maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            layers = OrderedDict(
                conv1=nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                bn1=nn.BatchNorm2d(widths[0]),
                relu=nn.ReLU(inplace=True),
            )
        self.stem = nn.Sequential(layers)

        self._stage_names = ["stem"]
        channels = widths[0]
        for i, (width, n_blocks) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [ResidualBlock(channels, width, stride)]
            stage += [ResidualBlock(width, width, 1) for _ in range(n_blocks - 1)]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*stage))
            self._stage_names.append(name)
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # Kaiming-normal fan-out init for ReLU networks (He et al. 2015, arXiv 1502.01852),
        # as torchvision does; batch norm starts as the identity; the linear head keeps
        # PyTorch's default uniform init.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, ResidualBlock):
                    nn.init.zeros_(module.bn2.weight)

    @property
    def feature_dim(self) -> int:
        """Width of the penultimate features (input of the linear head)."""
        return self.widths[-1]

    def stage_names(self) -> list[str]:
        """Names of the modules whose outputs are the per-stage feature maps.

        Each name resolves with ``model.get_submodule(name)``; the outputs have shape
        ``(n, c_stage, h_stage, w_stage)``. The list runs from the input side
        (``"stem"``) to the last stage; the pooled penultimate features are
        ``forward_features``' output.
        """
        return list(self._stage_names)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, in_channels, h, w) -> (n, feature_dim)`` globally average-pooled features."""
        x = self.stem(x)
        for name in self._stage_names[1:]:
            x = getattr(self, name)(x)
        return torch.flatten(self.avgpool(x), 1)  # (n, d)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """``(n, feature_dim) -> (n, num_classes)`` logits (no softmax)."""
        return self.fc(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, in_channels, h, w) -> (n, num_classes)`` logits."""
        return self.forward_head(self.forward_features(x))

    def get_head(self) -> LinearHead:
        """The final linear layer as a float64 :class:`~ncood.types.LinearHead` copy."""
        weight = self.fc.weight.detach().to("cpu", torch.float64).numpy().copy()  # (C, D)
        bias = self.fc.bias.detach().to("cpu", torch.float64).numpy().copy()  # (C,)
        return LinearHead(weight, bias)


def _check_arch(
    stem: str, widths: list[int], blocks: list[int], in_channels: int, num_classes: int
) -> None:
    if stem not in STEMS:
        raise ConfigError(
            f"The 'stem' parameter of ResNet must be one of {STEMS}. Got {stem!r} instead."
        )
    if not widths or len(widths) != len(blocks):
        raise ConfigError(
            "The 'widths' and 'blocks' parameters of ResNet must be non-empty and of equal "
            f"length (one entry per stage). Got widths={widths}, blocks={blocks}."
        )
    if min(widths) < 1 or min(blocks) < 1:
        raise ConfigError(
            "Every stage of ResNet needs width >= 1 and >= 1 block. "
            f"Got widths={widths}, blocks={blocks}."
        )
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"The {name!r} parameter of ResNet must be an int in the range [1, inf). "
                f"Got {value!r} instead."
            )
