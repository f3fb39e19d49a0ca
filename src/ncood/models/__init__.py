"""ResNet models and their registry.

Every registered name is a builder with keyword-only arguments ``num_classes``,
``in_channels`` and ``zero_init_residual``::

    from ncood.models import create_model, list_models
    model = create_model("resnet_narrow", num_classes=10, in_channels=1)
    z = model.forward_features(x)        # (n, 64)
    logits = model.forward_head(z)       # (n, 10)
"""

from __future__ import annotations

from typing import Any

from ncood.models.resnet import ResidualBlock, ResNet
from ncood.registry import Registry

MODELS: Registry = Registry("model")


def create_model(name: str, /, **kwargs: Any) -> ResNet:
    """Build the registered model ``name`` (unknown names suggest the closest)."""
    return MODELS.create(name, **kwargs)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


@MODELS.register("resnet18")
def resnet18(
    *, num_classes: int = 1000, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18, ImageNet layout: 7x7 stem + max-pool, widths 64-128-256-512, [2, 2, 2, 2].

    He et al. 2016 (arXiv 1512.03385); identical to ``torchvision.models.resnet18``
    (11,689,512 parameters with 1000 classes). 512-d features.
    """
    return ResNet(
        stem="imagenet",
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        in_channels=in_channels,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
    )


@MODELS.register("resnet18_cifar")
def resnet18_cifar(
    *, num_classes: int = 10, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18, CIFAR layout: 3x3 stride-1 stem, no max-pool, 64-128-256-512, [2, 2, 2, 2].

    The OpenOOD benchmark network (Zhang et al. 2023, arXiv 2306.09301); 11,173,962
    parameters with 10 classes. 512-d features.
    """
    return ResNet(
        stem="cifar",
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        in_channels=in_channels,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
    )


@MODELS.register("resnet_narrow")
def resnet_narrow(
    *, num_classes: int = 10, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """The reference write-up's narrow CIFAR-style ResNet: 3x3 stem, 16-32-64, [2, 2, 2].

    64-d features; small enough to train on Fashion-MNIST on a laptop CPU.
    """
    return ResNet(
        stem="cifar",
        widths=(16, 32, 64),
        blocks=(2, 2, 2),
        in_channels=in_channels,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
    )


@MODELS.register("resnet20")
def resnet20(
    *, num_classes: int = 10, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-20 of He et al. 2016 (arXiv 1512.03385, Sec. 4.2): 16-32-64, [3, 3, 3].

    He et al. use zero-padded identity shortcuts (option A, 269,722 parameters with 10
    classes); this one uses 1x1-conv + BN shortcuts where the width changes (option B),
    adding 2,752 parameters (272,474 with 10 classes, still "0.27M"). 64-d features.
    """
    return ResNet(
        stem="cifar",
        widths=(16, 32, 64),
        blocks=(3, 3, 3),
        in_channels=in_channels,
        num_classes=num_classes,
        zero_init_residual=zero_init_residual,
    )


__all__ = ["MODELS", "ResNet", "ResidualBlock", "create_model", "list_models"]
