"""Capture intermediate outputs of named modules with forward hooks.

The hooks live only inside a ``with`` block and are always removed, even when the forward
pass raises, so a model is never left with stale hooks attached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ncood.errors import ConfigError
from ncood.registry import closest


def pool(output: torch.Tensor) -> torch.Tensor:
    """Global-average-pool a feature map ``(n, c, h, w) -> (n, c)``; flatten anything else."""
    if output.ndim == 4:
        return output.float().mean(dim=(2, 3))
    return output.float().flatten(1)


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str], *, pooled: bool = True) -> Iterator[dict]:
    """Record the outputs of ``model.get_submodule(name)`` for each name.

    Args:
        model: any ``nn.Module``.
        names: dotted submodule names (e.g. ``"layer1"``).
        pooled: global-average-pool 4-D outputs to ``(n, c)`` (else keep them as they are).

    Yields:
        A dict ``{name: tensor}`` overwritten by every forward pass.
    """
    available = [n for n, _ in model.named_modules() if n]
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ConfigError(
                    f"layer {name!r} is not a submodule of {type(model).__name__}"
                    f"{closest(name, available)}; valid layers include: "
                    f"{', '.join(available[:12])}"
                ) from None

            def hook(_mod, _inp, out, _name=name):
                outputs[_name] = pool(out).detach() if pooled else out.detach()

            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for h in handles:
            h.remove()
