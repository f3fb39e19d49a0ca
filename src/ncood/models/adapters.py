"""Any ``nn.Module`` classifier as an ncood model: torchvision, timm, or your own.

ncood's own ResNets split into ``forward_features`` (the penultimate features ``z``) and
``forward_head`` (the logits ``W z + b``). :class:`ModelAdapter` gives any classifier the
same interface without touching its code:

- the penultimate feature is the *input of the final* ``nn.Linear``: a dry run with
  forward hooks on every ``nn.Linear`` finds the last one executed whose output is the
  model's output (``head="fc"`` names it explicitly; ``features="global_pool"`` names the
  module whose output, pooled, is the feature instead);
- intermediate layers are the model's named submodules (``stage_names()`` proposes its
  stages: timm's ``feature_info``, else the top-level blocks that produce feature maps);
- :func:`load_model` builds ``"torchvision:NAME"`` / ``"timm:NAME"`` (never downloading
  anything) and loads user weights: a plain ``state_dict``, a dict holding one under
  ``state_dict`` / ``model``, or an ncood checkpoint;
- :func:`eval_transform` gives the model family's evaluation transform (timm's data config,
  torchvision's weights preset: resize 256, centre crop 224 for ImageNet models), as an
  :class:`~ncood.data.streams.EvalTransform`.

Example::

    from ncood.models.adapters import load_model, eval_transform
    model = load_model("torchvision:resnet18", num_classes=10, weights="resnet18.pt")
    z = model.forward_features(x)          # (n, 512), = avgpool output flattened
    logits = model.forward_head(z)         # (n, 10), = the wrapped model(x)
    head = model.get_head()                # LinearHead (W (10, 512), b (10,))
    transform = eval_transform(model)      # resize 256, crop 224, ImageNet mean/std
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ncood.data.streams import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
from ncood.errors import CheckpointError, ConfigError
from ncood.io import file_sha256
from ncood.registry import closest
from ncood.types import LinearHead

#: The ImageNet evaluation transform: resize 256, centre crop 224, ImageNet mean/std.
IMAGENET_EVAL = dict(
    size=224,
    resize=256,
    channels=3,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation="bilinear",
)

log = logging.getLogger(__name__)

FAMILIES = ("torchvision", "timm")
TIMM_EXTRA = "pip install 'ncood[timm]' (or pip install timm)"


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every submodule's ``training`` flag, for :func:`restore_modes` after an eval pass.

    ``model.train(was)`` would flatten a user's mixed modes (e.g. frozen batch norm), and
    a wrapper made by ncood (a new module, in train mode) would switch the user's model
    to train mode.
    """
    return [(m, m.training) for m in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    """Put back the flags :func:`training_modes` recorded, module by module."""
    for module, training in modes:
        module.training = training


# Keys a training script commonly nests its state_dict under, tried in this order.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")
# Prefixes wrappers add to parameter names: DistributedDataParallel / DataParallel
# ("module."), torch.compile ("_orig_mod."), Lightning-style modules ("model."), and
# ncood's ResNet stem ("stem.", so ncood's resnet18 loads into torchvision's).
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "stem.")


def pool_features(t: torch.Tensor) -> torch.Tensor:
    """Pre-logits pooling as timm does it: ``(n, C, H, W)`` -> mean over ``H, W``;
    ``(n, L, D)`` tokens -> mean over ``L``; ``(n, D)`` as it is; anything else flattened."""
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1)
    return t.flatten(1)


def _logits_of(out: Any) -> Any:
    """The logits in a model's output: a tensor, ``out.logits``, or the first element."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    return out


class ModelAdapter(nn.Module):
    """Wrap a classifier so ncood can use it like its own ResNets.

    Args:
        model: any ``nn.Module`` mapping images ``(n, C, H, W)`` to logits ``(n, K)``.
        head: name of the final ``nn.Linear`` (``model.get_submodule(head)``); default:
            found by a dry run (the last ``nn.Linear`` executed whose output is the
            model's output).
        features: name of the module whose output, pooled by :func:`pool_features`, is
            the penultimate feature (it must be what enters the head); default: the
            head's own input.
        input_size: ``(C, H, W)`` (or an int side, 3 channels) of a dry run that finds
            the head now; None: found on the first ``forward_features`` call.
        name: a description (``"torchvision:resnet18"``), kept in metadata.

    Shapes:
        ``forward_features``: ``(n, C, H, W) -> (n, D)``; ``forward_head``:
        ``(n, D) -> (n, K)``; ``forward`` = ``forward_head(forward_features(x))``.

    Raises:
        ConfigError: the model has no final ``nn.Linear`` (the message says to pass
            ``head=`` or ``features=``), a named module does not exist, or the named
            features are not the head's input.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head: str | None = None,
        features: str | None = None,
        input_size: int | Sequence[int] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model must be a torch.nn.Module; got {type(model).__name__}; load it "
                "with ncood.models.adapters.load_model('torchvision:NAME', ...) or build it"
            )
        self.model = model
        self.name = name or type(model).__name__
        self.head_name = head
        self.features_name = features
        self.family = ""  # "torchvision" / "timm" when built by load_model
        self.source: dict[str, Any] = {"model": self.name}
        self.transform = None  # set by load_model / eval_transform callers
        self._head: nn.Linear | None = None
        self._stages: list[str] = []
        self._channels: dict[str, int] = {}  # timm feature_info: stage -> channels
        for key, value in (("head", head), ("features", features)):
            if value is not None:
                self._submodule(value, key)  # fail now on a typo
        if input_size is not None:
            self.locate(_dry_input(input_size))

    # ------------------------------------------------------------------ discovery
    def _submodule(self, name: str, key: str) -> nn.Module:
        names = [n for n, _ in self.model.named_modules() if n]
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"The {key!r} parameter names a submodule of {self.name}; {name!r} is not "
                f"one{closest(name, names)}. Its modules include: {', '.join(names[-12:])}"
            ) from None

    @torch.no_grad()
    def locate(self, x: torch.Tensor) -> ModelAdapter:
        """Find the head (and stages) with one forward pass on ``x``; returns ``self``.

        Args:
            x: a small input batch ``(b, C, H, W)`` on the model's device.
        """
        model = self.model
        param = next(model.parameters(), None)
        if param is not None:  # the dry run goes where the model is, in its precision
            x = x.to(param.device, param.dtype if param.is_floating_point() else x.dtype)
        modes = training_modes(model)
        model.eval()
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (name, input, output)
        outs: dict[str, int] = {}  # ndim of every submodule's first output, in run order
        feats: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for lname, lin in linears:

                def lin_hook(_m, inp, out, _n=lname):
                    calls.append((_n, inp[0], out))

                handles.append(lin.register_forward_hook(lin_hook))
            for mname, module in model.named_modules():
                if not mname:
                    continue

                def any_hook(_m, _inp, out, _n=mname):
                    outs.setdefault(_n, out.ndim if isinstance(out, torch.Tensor) else -1)

                handles.append(module.register_forward_hook(any_hook))
            if self.features_name is not None:
                fmod = self._submodule(self.features_name, "features")

                def feat_hook(_m, _inp, out):
                    feats["z"] = out

                handles.append(fmod.register_forward_hook(feat_hook))
            try:
                out = _logits_of(model(x))
            except Exception as exc:
                why = (str(exc).strip().splitlines() or [""])[0][:200]
                raise ConfigError(
                    f"a dry run of {self.name} on an input of shape {tuple(x.shape)} failed "
                    f"({type(exc).__name__}: {why}); "
                    "pass the input size the model expects (input_size=(C, H, W) / "
                    "--input-size)"
                ) from None
        finally:
            for h in handles:
                h.remove()
            restore_modes(modes)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ConfigError(
                f"{self.name} must return logits of shape (n, classes); it returned "
                f"{_shape_of(out)}; wrap it so forward returns the logits tensor"
            )
        head_name, head = self._pick_head(linears, calls, out)
        self.head_name, self._head = head_name, head
        if self.features_name is not None:
            head_out = [f for n, _, f in calls if n == head_name][-1]
            self._check_features(feats.get("z"), head, head_out)
        self._stages = self._find_stages(outs, head_name)
        log.debug(
            "%s: head %r (%d -> %d), %d stages",
            self.name,
            head_name,
            head.in_features,
            head.out_features,
            len(self._stages),
        )
        return self

    def _pick_head(self, linears, calls, out: torch.Tensor) -> tuple[str, nn.Linear]:
        fix_head = "pass head='NAME' naming the classifier's final nn.Linear"
        if self.head_name is not None:
            module = self._submodule(self.head_name, "head")
            if not isinstance(module, nn.Linear):
                raise ConfigError(
                    f"The 'head' parameter must name an nn.Linear; {self.head_name!r} is "
                    f"a {type(module).__name__}. ncood reads the penultimate features from "
                    "the input of a linear classifier"
                )
            mine = [c for c in calls if c[0] == self.head_name]
            if not mine:
                raise ConfigError(
                    f"head={self.head_name!r} is never run by {self.name}'s forward; "
                    f"{fix_head} (one the forward pass uses)"
                )
            _, z, f = mine[-1]
            if z.ndim != 2:
                raise ConfigError(
                    f"the input of head {self.head_name!r} has shape {tuple(z.shape)}, not "
                    "(n, features); pass features='MODULE' naming the pooled features"
                )
            if f.shape != out.shape or not torch.equal(f, out):
                log.warning(
                    "%s: the output of head %r is not the model output (post-processing "
                    "after it is ignored: ncood's logits are W z + b)",
                    self.name,
                    self.head_name,
                )
            return self.head_name, module
        if not linears:
            raise ConfigError(
                f"{self.name} has no nn.Linear layer: ncood takes the penultimate features "
                "from the input of the final linear classifier; give the model an "
                "nn.Linear head and pass head='NAME' (and features='MODULE' for the "
                "module whose output enters it)"
            )
        for lname, z, f in reversed(calls):
            if f is out or (f.shape == out.shape and torch.equal(f, out)):
                if z.ndim != 2:
                    break
                return lname, self.model.get_submodule(lname)
        last = calls[-1][0] if calls else linears[-1][0]
        raise ConfigError(
            f"no nn.Linear of {self.name} produces its output (the last one run is "
            f"{last!r}; the output has shape {tuple(out.shape)}); {fix_head} (e.g. "
            f"head={last!r}) and features='MODULE' if its input is not the pooled features"
        )

    def _check_features(self, z_raw: Any, head: nn.Linear, out: torch.Tensor) -> None:
        """``head(pool(z_raw))`` must reproduce the head's own output ``out``."""
        if not isinstance(z_raw, torch.Tensor):
            raise ConfigError(
                f"features={self.features_name!r} did not return a tensor in the forward "
                f"pass (got {_shape_of(z_raw)}); name the module whose output enters the head"
            )
        z = pool_features(z_raw.float())
        if z.shape[1] != head.in_features:
            raise ConfigError(
                f"features={self.features_name!r} gives {z.shape[1]} features after pooling "
                f"(output {tuple(z_raw.shape)}), but head {self.head_name!r} takes "
                f"{head.in_features}; name the module whose output enters the head"
            )
        f = head(z.to(head.weight.dtype))
        scale = max(float(out.abs().max()), 1.0)
        err = float((f - out).abs().max())
        if err > 1e-3 * scale:  # float32 sums in a different order stay far below this
            raise ConfigError(
                f"the pooled output of features={self.features_name!r} is not the input of "
                f"head {self.head_name!r}: head(features) differs from the head's output by "
                f"up to {err:.3g}; name the module right before the head"
            )

    def _find_stages(self, outs: dict[str, int], head_name: str) -> list[str]:
        info = getattr(self.model, "feature_info", None)
        names = {n for n, _ in self.model.named_modules()}
        if info is not None:  # timm: its own list of feature stages
            try:
                mods = [d["module"] for d in info]
            except (TypeError, KeyError):
                try:
                    mods = list(info.module_name())
                except Exception:
                    mods = []
            mods = [m for m in mods if m in names]
            if mods:
                try:
                    self._channels = {d["module"]: int(d["num_chs"]) for d in info}
                except (TypeError, KeyError, ValueError):
                    self._channels = {}
                return mods
        return self._stages_below("", outs, head_name)

    def _stages_below(self, prefix: str, outs: dict[str, int], head_name: str) -> list[str]:
        """The children of ``prefix`` that are stages: run in the forward pass, with
        parameters, producing feature maps or token sequences, not the head; containers
        (ResNet's ``layer1``) are preferred to loose layers (its stem conv and norm), and
        a single container (VGG's and MobileNet's ``features``, ViT's ``encoder``) is
        opened."""
        parent = self.model.get_submodule(prefix) if prefix else self.model
        found: list[str] = []
        for cname, child in parent.named_children():
            name = f"{prefix}.{cname}" if prefix else cname
            is_map = outs.get(name) in (3, 4)  # feature maps or token sequences
            is_head = head_name == name or head_name.startswith(name + ".")
            has_params = any(True for _ in child.parameters())
            if is_map and has_params and not is_head:
                found.append(name)
        found.sort(key=list(outs).index)  # execution order
        blocks = [n for n in found if any(True for _ in self.model.get_submodule(n).children())]
        if blocks:
            found = blocks
        if len(found) == 1 and blocks:
            inner = self._stages_below(found[0], outs, head_name)
            if len(inner) > 1:
                return inner
        return found

    def _require_head(self, what: str) -> nn.Linear:
        if self._head is None:
            raise ConfigError(
                f"{what} needs the head of {self.name}, found on the first forward pass; "
                "pass input_size=(C, H, W) to ModelAdapter (or run forward_features once)"
            )
        return self._head

    # ------------------------------------------------------------------ interface
    @property
    def feature_dim(self) -> int:
        """Width ``D`` of the penultimate features."""
        return self._require_head("feature_dim").in_features

    @property
    def num_classes(self) -> int:
        """Number of logits ``K``."""
        return self._require_head("num_classes").out_features

    def stage_names(self) -> list[str]:
        """Names of submodules whose outputs are the model's stages (input side first).

        Each resolves with ``get_submodule`` on this adapter or on the wrapped model.
        timm models: their ``feature_info`` modules; others: the top-level children with
        parameters that produce feature maps (the children of a single ``features``
        block for VGG/MobileNet-style models). Any other named submodule works too.
        """
        self._require_head("stage_names")
        return list(self._stages)

    def pool_layer(self, name: str, out: Any) -> torch.Tensor:
        """Pool the output of layer ``name`` to ``(n, channels)`` float32.

        Feature maps are averaged over their spatial positions: ``(n, C, H, W)`` over
        ``H, W``; channels-last maps ``(n, H, W, C)`` (timm's Swin stages, known from
        timm's ``feature_info``, else recognised by ``H == W != C`` on the square inputs
        ncood uses) over ``H, W``; token sequences ``(n, L, D)`` (ViT blocks) over the
        ``L`` tokens; anything else is flattened. :func:`ncood.extract.capture` calls this
        for every layer of a wrapped model.
        """
        if isinstance(out, (tuple, list)):  # e.g. (hidden states, attention)
            out = next(t for t in out if isinstance(t, torch.Tensor))
        out = out.float()
        if out.ndim == 4:
            chs = self._channels.get(name)
            if chs is not None:
                nhwc = out.shape[-1] == chs and out.shape[1] != chs
            else:
                nhwc = out.shape[1] == out.shape[2] and out.shape[2] != out.shape[3]
            return out.mean(dim=(1, 2)) if nhwc else out.mean(dim=(2, 3))
        if out.ndim == 3:
            return out.mean(dim=1)
        return out.flatten(1)

    def get_submodule(self, target: str) -> nn.Module:
        """A submodule by its name in the wrapped model (``"layer4"``) or in this
        adapter (``"model.layer4"``)."""
        if target:
            try:
                return self.model.get_submodule(target)
            except AttributeError:
                pass
        return super().get_submodule(target)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, H, W) -> (n, D)`` penultimate features (the head's input)."""
        if self._head is None:
            self.locate(x[:2])
        grab: dict[str, torch.Tensor] = {}
        if self.features_name is not None:
            module = self.model.get_submodule(self.features_name)

            def hook(_m, _inp, out):
                grab["z"] = pool_features(out)

            handle = module.register_forward_hook(hook)
        else:

            def pre_hook(_m, inp):
                grab["z"] = inp[0]

            handle = self._head.register_forward_pre_hook(pre_hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        if "z" not in grab:
            where = self.features_name or self.head_name
            raise ConfigError(
                f"{self.name}'s forward did not run {where!r} on this batch; name the "
                "modules every forward pass uses (head=..., features=...)"
            )
        return grab["z"]  # (n, D)

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        """``(n, D) -> (n, K)`` logits ``W z + b`` of the final linear layer."""
        head = self._require_head("forward_head")
        return head(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, H, W) -> (n, K)`` logits."""
        return self.forward_head(self.forward_features(x))

    def get_head(self) -> LinearHead:
        """The final linear layer as a float64 :class:`~ncood.types.LinearHead` copy."""
        head = self._require_head("get_head")
        weight = head.weight.detach().to("cpu", torch.float64).numpy().copy()  # (K, D)
        if head.bias is None:
            bias = torch.zeros(head.out_features, dtype=torch.float64).numpy()
        else:
            bias = head.bias.detach().to("cpu", torch.float64).numpy().copy()  # (K,)
        return LinearHead(weight, bias)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, head={self.head_name!r}, features={self.features_name!r}"


def _shape_of(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def _dry_input(input_size: int | Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    size = _input_size(input_size)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, *size), generator=gen)
    return x if device is None else x.to(device)


def _input_size(input_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        size = (3, input_size, input_size)
    else:
        try:
            size = tuple(int(v) for v in input_size)
        except (TypeError, ValueError):
            size = ()
        if len(size) == 2:
            size = (3, *size)
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(
            f"input_size must be an int side or (C, H, W), e.g. 224 or (3, 224, 224); "
            f"got {input_size!r}"
        )
    return size  # type: ignore[return-value]


def wrap_model(
    model: nn.Module,
    *,
    head: str | None = None,
    features: str | None = None,
    input_size: int | Sequence[int] | None = None,
) -> nn.Module:
    """``model`` itself when it already has ncood's interface (an ncood ResNet or a
    :class:`ModelAdapter`), else a :class:`ModelAdapter` around it."""
    if isinstance(model, ModelAdapter) or (
        all(hasattr(model, a) for a in ("forward_features", "forward_head", "get_head"))
        and head is None
        and features is None
    ):
        return model
    return ModelAdapter(model, head=head, features=features, input_size=input_size)


# --------------------------------------------------------------------------- building


def _import_timm():
    try:
        import timm  # the optional extra: only for timm: models
    except ImportError:
        raise ConfigError(
            f"timm models need the optional package timm, which is not installed; {TIMM_EXTRA}"
        ) from None
    return timm


def build_model(spec: str, *, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build ``"torchvision:NAME"`` or ``"timm:NAME"`` with random weights (never a
    download).

    Args:
        spec: family and model name.
        num_classes: outputs of the classifier (default: the family's, usually 1000).
        kwargs: passed to ``torchvision.models.get_model`` / ``timm.create_model``.
    """
    family, name = _split_spec(spec)
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(
                f"The 'num_classes' parameter must be an int in the range [1, inf). "
                f"Got {num_classes!r} instead."
            )
        kwargs["num_classes"] = num_classes
    if family == "torchvision":
        import torchvision  # its model zoo (~0.5 s to import): only for torchvision: models

        names = torchvision.models.list_models(module=torchvision.models)
        if name not in names:
            raise ConfigError(
                f"unknown torchvision classification model {name!r}{closest(name, names)}; "
                f"see torchvision.models.list_models() (e.g. resnet18, mobilenet_v3_small)"
            )
        # weights=None: random init, nothing is downloaded; user weights load afterwards.
        return torchvision.models.get_model(name, weights=None, **kwargs)
    timm = _import_timm()
    if not timm.is_model(name):
        names = timm.list_models()
        raise ConfigError(
            f"unknown timm model {name!r}{closest(name, names)}; see timm.list_models()"
        )
    # pretrained=False: random init, nothing is downloaded.
    return timm.create_model(name, pretrained=False, **kwargs)


def _split_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(
            f"model must be 'torchvision:NAME' or 'timm:NAME' (e.g. 'torchvision:resnet18'); "
            f"got {spec!r}"
        )
    family, name = spec.split(":", 1)
    if family not in FAMILIES or not name:
        raise ConfigError(
            f"model family must be one of {FAMILIES} ('torchvision:resnet18', "
            f"'timm:resnet18'); got {spec!r}"
        )
    return family, name


def load_model(
    spec: str | nn.Module,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike | None = None,
    head: str | None = None,
    features: str | None = None,
    input_size: int | Sequence[int] | None = None,
    resize: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs: Any,
) -> ModelAdapter:
    """Build (or wrap) a classifier, load user weights, and attach its eval transform.

    Args:
        spec: ``"torchvision:NAME"``, ``"timm:NAME"`` or an ``nn.Module``.
        num_classes: classifier outputs. None: the family's default, or the number the
            weights file holds.
        weights: a ``.pt``/``.pth`` file: a plain ``state_dict``, a dict holding one under
            ``state_dict`` / ``model``, or an ncood checkpoint. Loaded strictly.
        head, features: see :class:`ModelAdapter`.
        input_size, resize, mean, std: override the family's eval transform (see
            :func:`eval_transform`).
        kwargs: passed to the model builder.

    Returns:
        A :class:`ModelAdapter` in eval mode with ``.transform`` (an
        :class:`~ncood.data.streams.EvalTransform`) and ``.source`` (spec, weights file
        and its SHA-256) set.

    Raises:
        ConfigError: unknown family or model, timm not installed (names the extra), or
            a model without a linear head.
        CheckpointError: unreadable weights, weights of another architecture (names the
            missing and unexpected keys), or a class-count mismatch (says both numbers).
    """
    state = spec_hint = None
    if weights is not None:
        state, spec_hint = read_weights(weights)
    if isinstance(spec, nn.Module):
        model, family, name = spec, None, type(spec).__name__
    else:
        family, _ = _split_spec(spec)
        model, name = build_model(spec, num_classes=num_classes, **kwargs), spec
    tf = eval_transform(
        model,
        family=family,
        input_size=input_size,
        resize=resize,
        mean=mean,
        std=std,
        spec_hint=spec_hint,
    )
    adapter = ModelAdapter(model, head=head, features=features, input_size=_dry_size(tf), name=name)
    if state is not None:
        state = _match_names(state, adapter.model.state_dict())
        file_classes = _head_classes(state, adapter)
        if file_classes is not None and file_classes != adapter.num_classes:
            key = f"{adapter.head_name}.weight"
            if num_classes is not None or isinstance(spec, nn.Module):
                raise CheckpointError(
                    f"num_classes is {adapter.num_classes}, but the weights in "
                    f"{str(weights)!r} are for {file_classes} classes ({key} has shape "
                    f"{tuple(state[key].shape)}); pass num_classes={file_classes} "
                    f"(--num-classes {file_classes}) or the weights of a "
                    f"{adapter.num_classes}-class model"
                )
            log.info("%s: %d classes, as in %s", name, file_classes, weights)
            model = build_model(spec, num_classes=file_classes, **kwargs)
            adapter = ModelAdapter(
                model, head=head, features=features, input_size=_dry_size(tf), name=name
            )
        _check_keys(adapter.model, state, weights, name)
        adapter.model.load_state_dict(state, strict=True)
    adapter.family = family or ""
    adapter.transform = tf
    adapter.source = {
        "model": name,
        "num_classes": adapter.num_classes,
        "weights": None if weights is None else str(weights),
        "weights_sha256": None if weights is None else file_sha256(weights),
        "head": adapter.head_name,
        "features": adapter.features_name,
    }
    return adapter.eval()


def _dry_size(tf) -> tuple[int, int, int]:
    return (tf.channels, tf.size, tf.size)


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Any]:
    """Read a weights file: ``(state_dict, input_spec or None)``.

    Accepts a plain ``state_dict``, a dict holding one under ``state_dict`` / ``model``
    (/ ``model_state_dict`` / ``net`` / ``module``), an ncood checkpoint (whose
    ``input_spec`` is returned too), or a ``.safetensors`` file. Loaded with
    ``weights_only=True``: nothing in the file runs.

    Raises:
        CheckpointError: missing, unreadable, or holding no state_dict.
    """
    path = Path(path)
    fix = "save the weights with torch.save(model.state_dict(), PATH)"
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist; check --weights")
    if path.suffix == ".safetensors":
        return _read_safetensors(path), None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"cannot read weights {str(path)!r} ({first}); {fix}") from None
    spec_hint = None
    if isinstance(obj, dict) and obj.get("format") == "ncood-checkpoint":
        spec_hint = obj.get("input_spec")
        obj = obj.get("state_dict")
    elif isinstance(obj, dict) and not _is_state_dict(obj):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else []
        raise CheckpointError(
            f"{str(path)!r} holds no state_dict (a {type(obj).__name__}"
            + (f" with keys {keys}" if keys else "")
            + f"); expected a state_dict or a dict with one under {STATE_DICT_KEYS[:2]}; {fix}"
        )
    return dict(obj), spec_hint


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ConfigError(
            f"{str(path)!r} is a .safetensors file, which needs the package safetensors "
            "(pip install safetensors; timm installs it)"
        ) from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"cannot read weights {str(path)!r} ({first})") from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    )


def _match_names(state: dict[str, torch.Tensor], expected: dict[str, Any]) -> dict:
    """``state`` with wrapper prefixes stripped when that makes more names match."""
    best, best_hits = state, len(set(state) & set(expected))
    for prefix in STRIP_PREFIXES:
        if not any(k.startswith(prefix) for k in state):
            continue
        renamed = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
        hits = len(set(renamed) & set(expected))
        if hits > best_hits:
            best, best_hits = renamed, hits
    return best


def _head_classes(state: dict[str, torch.Tensor], adapter: ModelAdapter) -> int | None:
    w = state.get(f"{adapter.head_name}.weight")
    if w is None or w.ndim != 2 or w.shape[1] != adapter.feature_dim:
        return None
    return int(w.shape[0])


def _check_keys(model: nn.Module, state: dict, path, name: str) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and expected[k] != got[k]]
    if not (missing or unexpected or wrong):
        return

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {some(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {some(unexpected)}")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} of the wrong shape (first: {k} is {got[k]} in the file, "
            f"{expected[k]} in the model)"
        )
    raise CheckpointError(
        f"the weights in {str(path)!r} do not fit {name}: {'; '.join(parts)}; they are "
        "for another architecture: pass the model they were trained with (--model)"
    )


# --------------------------------------------------------------------------- transform


def eval_transform(
    model: nn.Module | str,
    *,
    family: str | None = None,
    input_size: int | Sequence[int] | None = None,
    resize: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
    spec_hint: dict[str, Any] | None = None,
):
    """The evaluation transform of a model, from its family unless given explicitly.

    - timm: ``timm.data.resolve_data_config(model=...)``: input size, interpolation,
      mean/std and ``resize = floor(size / crop_pct)`` (what ``create_transform(...,
      is_training=False)`` does with ``crop_mode="center"``).
    - torchvision: the preset of the model's weights enum (read without downloading):
      resize 256, centre crop 224, bilinear, ImageNet mean/std for ResNets; e.g. 320/300
      bicubic for EfficientNet-B3. A model without weights gets 256/224.
    - an ncood checkpoint's input spec (``spec_hint``), or for any other module the
      ImageNet default (256/224), with a warning.

    Explicit values win: ``input_size`` (an int side or ``(C, H, W)``) sets the crop and,
    unless ``resize`` is given, the resize too (no crop margin); ``mean``/``std`` replace
    the normalisation.

    Args:
        model: a module (a :class:`ModelAdapter` is unwrapped) or a spec string.
        family: ``"torchvision"`` / ``"timm"`` when ``model`` is a module built by them.

    Returns:
        :class:`~ncood.data.streams.EvalTransform`.
    """
    name = ""
    if isinstance(model, str):
        family, name = _split_spec(model)
        model = None
    elif isinstance(model, ModelAdapter):
        if model.transform is not None and not any(
            v is not None for v in (input_size, resize, mean, std, channels)
        ):
            return model.transform
        family = family or model.family
        name = model.name.split(":", 1)[-1]
        model = model.model
    base: dict[str, Any] = {}
    if spec_hint:
        base = dict(
            size=int(spec_hint["size"]),
            resize=int(spec_hint["size"]),
            channels=int(spec_hint["channels"]),
            mean=tuple(spec_hint["mean"]),
            std=tuple(spec_hint["std"]),
            interpolation="bilinear",
        )
    elif family == "timm" or (family is None and _is_timm(model)):
        base = _timm_config(model, name)
    elif family == "torchvision" or (family is None and _is_torchvision(model)):
        base = _torchvision_config(model, name)
    if not base:
        if input_size is None:
            log.warning(
                "no model family known for %s: using the ImageNet eval transform (resize 256, "
                "centre crop 224); pass input_size (and mean/std) if the model expects "
                "something else",
                type(model).__name__ if model is not None else name,
            )
        base = dict(IMAGENET_EVAL)
    if input_size is not None:
        c, h, w = _input_size(input_size)
        if h != w:
            raise ConfigError(f"input_size must be square (ncood crops squares); got {h}x{w}")
        base["size"] = h
        base["resize"] = h if resize is None else resize
        if not (isinstance(input_size, int) and channels is None):
            base["channels"] = c
    elif resize is not None:
        base["resize"] = resize
    if channels is not None:
        base["channels"] = channels
    if mean is not None:
        base["mean"] = tuple(mean)
    if std is not None:
        base["std"] = tuple(std)
    c = base["channels"]
    for key in ("mean", "std"):
        if len(base[key]) == 3 and c == 1:
            base[key] = (sum(base[key]) / 3.0,)  # a grey model with colour statistics
        elif len(base[key]) == 1 and c != 1:
            base[key] = tuple(base[key]) * c  # one value for every channel
    return EvalTransform(**base)


def _is_timm(model: Any) -> bool:
    return model is not None and type(model).__module__.startswith("timm.")


def _is_torchvision(model: Any) -> bool:
    return model is not None and type(model).__module__.startswith("torchvision.")


def _timm_config(model: nn.Module | None, name: str) -> dict[str, Any]:
    timm = _import_timm()
    from timm.data import resolve_data_config

    if model is None:
        model = timm.create_model(name, pretrained=False)
    cfg = resolve_data_config({}, model=model)
    c, h, w = cfg["input_size"]
    if cfg.get("crop_mode", "center") not in ("center", None):
        log.warning("timm crop_mode %r is approximated by a centre crop", cfg.get("crop_mode"))
    crop_pct = cfg.get("crop_pct") or 0.875
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bicubic"
    return dict(
        size=int(h),
        resize=int(math.floor(h / crop_pct)),
        channels=int(c),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=interpolation,
    )


def _torchvision_config(model: nn.Module | None, name: str) -> dict[str, Any]:
    import torchvision  # its model zoo (~0.5 s to import): only for torchvision: models

    base = dict(IMAGENET_EVAL)
    if not name:  # a model instance: its builder (resnet18 or resnet50?) is unknown
        return base
    try:
        preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except Exception:  # no weights enum for this model: the ImageNet default
        return base
    crop = getattr(preset, "crop_size", [224])
    rsz = getattr(preset, "resize_size", [256])
    interp = str(getattr(preset, "interpolation", "bilinear")).split(".")[-1].lower()
    base.update(
        size=int(crop[0]),
        resize=int(rsz[0]),
        mean=tuple(float(v) for v in getattr(preset, "mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in getattr(preset, "std", IMAGENET_STD)),
        interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bilinear",
    )
    return base


__all__ = [
    "FAMILIES",
    "ModelAdapter",
    "build_model",
    "eval_transform",
    "load_model",
    "pool_features",
    "read_weights",
    "wrap_model",
]
