"""The ``ncood run`` experiment config: dataclasses loaded from YAML, strictly validated.

Unknown keys are an error naming the closest valid key; wrong types name the expected
type. Every default is explained where it is declared. The embedded default lives in
``ncood/configs/default.yaml`` (shipped with the package).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from numbers import Integral
from pathlib import Path
from typing import Any

from ncood.errors import ConfigError

# The default detectors of `ncood run` and `ncood score`: making a detector a default is
# one edit here (configs that list `detectors:` explicitly keep their own list).
#: The one detector that runs the network (:mod:`ncood.odin`): a run scores it on the final
#: networks beside the feature-array detectors of the registry.
ODIN = "odin"


def array_detectors(detectors: dict[str, Any]) -> dict[str, Any]:
    """``detectors`` without ODIN: the ones scored on extracted features and logits."""
    return {name: params for name, params in detectors.items() if name != ODIN}


DETECTORS_DEFAULT = ("msp", "maxlogit", "energy", "mahalanobis", "vim", "neco")


@dataclass
class DataConfig:
    id: str = "fashion_mnist"  # ID dataset (ncood.data names, class subsets allowed)
    ood: list[str] = field(default_factory=lambda: ["digits", "texture_crops", "gaussian_noise"])
    root: str | None = None  # looked at first; then NCOOD_DATA_ROOT, ~/.cache/ncood, ...
    allow_subset: bool = True  # fall back to the small Fashion-MNIST subset shipped inside ncood
    train_samples: int | None = (
        None  # stratified training subset, also used for fits/NC (None = all)
    )
    test_samples: int | None = None  # ID test samples scored (None = all)
    ood_samples: int | None = 2000  # samples per OOD set (None = all)


@dataclass
class CollapseConfig:
    layers: list[str] | None = None  # submodules analysed per layer (None = every stage)
    across_training: bool = True  # analyse every training snapshot too
    # detectors also scored on each layer's pooled features (None = every detector of
    # `detectors` that reads features; [] = none)
    layer_detectors: list[str] | None = None
    snapshot_detectors: bool = True  # OOD detection at every snapshot (else NC only)
    snapshot_layers: bool = True  # per-layer analysis at every snapshot
    snapshot_test_samples: int | None = None  # ID test images per snapshot (None = data's)
    # train images per snapshot for NC and detector fits (None = the final network's); used
    # only when the network trained on the whole train split
    snapshot_train_samples: int | None = None
    snapshot_ood_samples: int | None = None  # images per OOD set per snapshot (None = data's)


@dataclass
class BootstrapConfig:
    n_boot: int = 1000  # bootstrap replicates of the OOD metrics' 95% intervals (0 = none)
    seed: int = 0  # the resampling seed (same seed, same intervals)
    every_snapshot: bool = False  # intervals at every snapshot, not only the final network


@dataclass
class SelectionConfig:
    """Hyperparameter selection on held-out data (``selection:``; issue 13).

    Each selected detector's grid (:func:`ncood.detectors.select.default_grid`) is searched
    at each regime's final network: every candidate is fitted on the train features and
    scored by AUROC of the ID validation split against the validation OOD set(s); the
    winner replaces the configured values at the head (snapshots and other layers keep the
    configured ones). The test split and the test OOD sets are never read for it.
    """

    # ID validation images held out of the train split (stratified, from the run seed):
    # never trained on, never in the NC or detector-fit sets
    id_val_samples: int = 2000
    # validation OOD set(s), pooled into one; each must differ from every data.ood set
    ood_val: list[str] = field(default_factory=lambda: ["uniform_noise"])
    ood_val_samples: int = 1000  # samples per validation OOD set
    detectors: list[str] | None = None  # None: every run detector that has a grid

    def array_detectors(self) -> list[str] | None:
        """The selected detectors scored on features/logits (``detectors`` without ODIN;
        None: every run detector with a grid)."""
        return None if self.detectors is None else [n for n in self.detectors if n != ODIN]

    def selects_odin(self, run_detectors: Any) -> bool:
        """Whether ODIN (a run detector in ``run_detectors``) has its hyperparameters chosen."""
        return ODIN in run_detectors and (self.detectors is None or ODIN in self.detectors)


@dataclass
class RunConfig:
    name: str = "default"
    seed: int = 0  # seeds training, subsets and generated OOD sets
    seeds: list[int] | None = None  # several seeds: each regime trained once per seed
    output: str = "runs/default"  # everything the run writes goes here
    device: str = "auto"  # cuda when available, else cpu
    model: str = "resnet_narrow"  # ncood.models name
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    # TrainConfig fields shared by every regime (precision, batch_size, snapshots, ...)
    training: dict[str, Any] = field(default_factory=dict)
    # regime name -> TrainConfig overrides (epochs, lr, ...), {"checkpoint": PATH} (an ncood
    # checkpoint) or {"checkpoint": PATH, "model": "torchvision:NAME", ...} (a model brought
    # by the user: MODEL_REGIME_KEYS; not trained)
    regimes: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"standard": {"epochs": 5}, "memorize": {"epochs": 5}}
    )
    # detector name -> hyperparameters
    detectors: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {name: {} for name in DETECTORS_DEFAULT}
    )
    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    # the report's "Why the detectors behave as they do" (ncood.explain) on each regime's
    # final network (first seed); its Integrated Gradients need the extra `ncood[explain]`
    explain: bool = True
    # hyperparameters chosen on held-out validation data (SelectionConfig); None: fixed
    # (a mapping is built into a SelectionConfig, its keys checked)
    selection: SelectionConfig | dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.selection, dict):
            self.selection = from_dict(SelectionConfig, self.selection, "config.selection")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_config_path() -> Path:
    """Path of the embedded default config shipped inside the package."""
    return Path(str(resources.files("ncood") / "configs" / "default.yaml"))


def load_config(path: str | os.PathLike | None = None) -> RunConfig:
    """Load and validate a run config (``None``: the embedded default)."""
    path = default_config_path() if path is None else Path(path)
    from ncood.io import load_yaml  # heavy (numpy, yaml): keep `ncood --help` fast

    return from_dict(RunConfig, load_yaml(path), "config")


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping (:func:`ncood.validation.from_dict`)."""
    from ncood.validation import from_dict as build  # heavy (numpy): keep `ncood --help` fast

    return build(cls, data, where)


# --------------------------------------------------------------------------- checked first
def regime_train_dict(cfg: RunConfig, regime: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig mapping ``ncood run`` trains regime ``regime`` with.

    Run-level keys first (model, data, seed, device, ``training``), then the regime's
    ``overrides``; with ``selection`` on, ``holdout_samples`` = its ``id_val_samples``
    last. (Not for a ``{"checkpoint": PATH}`` regime, which is not trained.)
    """
    return {
        "model": cfg.model,
        "dataset": cfg.data.id,
        "data_root": cfg.data.root,
        "regime": regime,
        "max_train_samples": cfg.data.train_samples,
        "seed": cfg.seed,
        "device": cfg.device,
        "allow_subset": cfg.data.allow_subset,
        **({"model_kwargs": cfg.model_kwargs} if cfg.model_kwargs else {}),
        **cfg.training,
        **overrides,
        # the ID validation split of hyperparameter selection is never trained on
        **({"holdout_samples": cfg.selection.id_val_samples} if cfg.selection else {}),
    }


#: Keys of a regime that is a model brought by the user: ``checkpoint`` (its weights) with
#: ``model`` and the options of ``ncood extract --model`` (not trained; extracted only).
MODEL_REGIME_KEYS = (
    "checkpoint", "model", "num_classes", "input_size", "mean", "std", "head", "features",
)  # fmt: skip


def model_regime_options(overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The model options of a regime that is a model brought by the user, else None.

    ``{checkpoint: PATH}`` alone is an ncood checkpoint (None). ``checkpoint`` with
    ``model: "torchvision:NAME" | "timm:NAME"`` and optionally ``num_classes``,
    ``input_size``, ``mean``, ``std``, ``head``, ``features`` (as ``ncood extract
    --model``) is a model brought by the user: its options are returned without
    ``checkpoint`` (the weights file). Types only; the model is loaded by
    :func:`check_run_config`.

    Raises:
        ConfigError: an unknown key beside ``checkpoint`` (naming the closest), options
            without ``model``, or a value of the wrong type; one line.
    """
    from ncood.registry import closest  # light; kept local like the other late imports

    if "checkpoint" not in overrides or len(overrides) == 1:
        return None
    allowed = MODEL_REGIME_KEYS[1:]
    for k in overrides:
        if k not in MODEL_REGIME_KEYS:
            raise ConfigError(
                f"with 'checkpoint' the regime is not trained; {k!r} is not one of its keys"
                f"{closest(str(k), list(allowed))}; a model brought by the user takes "
                f"{', '.join(allowed)}"
            )
    opts = {k: v for k, v in overrides.items() if k != "checkpoint"}
    model = opts.get("model")
    if not (isinstance(model, str) and ":" in model):
        got = "no model" if model is None else f"model: {model!r}"
        raise ConfigError(
            f"with {', '.join(sorted(opts))} the checkpoint is a model brought by the user and "
            f"needs model: 'torchvision:NAME' or 'timm:NAME'; got {got} (for an ncood "
            "checkpoint give checkpoint alone)"
        )

    def number(x: Any, kind: type) -> bool:
        return isinstance(x, kind) and not isinstance(x, bool)

    for k in ("num_classes", "input_size"):
        if k in opts and not (number(opts[k], int) and opts[k] >= 1):
            raise ConfigError(f"{k} must be an int >= 1; got {opts[k]!r}")
    for k in ("mean", "std"):
        v = opts.get(k)
        if k in opts and not (
            isinstance(v, list) and v and all(number(x, (int, float)) for x in v)
        ):
            raise ConfigError(
                f"{k} must be a list of per-channel numbers, e.g. [0.5, 0.5, 0.5]; got {v!r}"
            )
    for k in ("head", "features"):
        if k in opts and not (isinstance(opts[k], str) and opts[k]):
            raise ConfigError(f"{k} must name a submodule of the model, e.g. 'fc'; got {opts[k]!r}")
    return opts


def _load_model_regimes(cfg: RunConfig, brought: dict[str, tuple[Path, dict]]) -> dict[str, Any]:
    """Each model brought by the user, loaded as the run will load it: the name resolves
    offline and the weights load strictly (missing/unexpected keys, class count)."""
    from ncood.errors import NcoodError
    from ncood.models.adapters import load_model

    adapters = {}
    for regime, (path, opts) in brought.items():
        try:
            adapters[regime] = load_model(opts["model"], weights=path, **_model_kwargs(opts))
        except NcoodError as exc:
            raise ConfigError(f"config.regimes.{regime}: {exc}") from None
    return adapters


def _model_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if k != "model"}


def _check_model_regime_classes(cfg: RunConfig, adapters: dict[str, Any]) -> None:
    """A model brought by the user has one output per class of the ID training data."""
    from ncood.data import load_images
    from ncood.errors import NcoodError

    data = cfg.data
    for regime, adapter in adapters.items():
        tf = adapter.transform
        try:
            arrays = load_images(
                data.id,
                "train",
                root=data.root,
                n=data.train_samples,
                seed=cfg.seed,
                allow_subset=data.allow_subset,
                shape=(tf.channels, tf.size, tf.size),
            )
        except NcoodError as exc:
            raise ConfigError(f"config.data.id: {exc}") from None
        labels = arrays.labels
        n = len(arrays.classes) or (0 if labels is None else int(labels.max()) + 1)
        if n != adapter.num_classes:
            raise ConfigError(
                f"config.regimes.{regime}: the model has {adapter.num_classes} outputs but "
                f"{data.id!r} has {n} classes; give num_classes: {n} with the weights of a "
                "model trained on these classes"
            )


def _check_output(output: str | os.PathLike) -> None:
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(
            f"config.output must be a directory; {str(out)!r} is a file; choose another "
            "output (--out)"
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"config.output {str(out)!r} cannot be created: {str(existing)!r} is a file, not "
            "a directory; choose another output (--out)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"config.output {str(out)!r} is not writable ({str(existing)!r} does not allow "
            "writing for this user); choose another output (--out)"
        )


def check_run_config(cfg: RunConfig, *, output: str | os.PathLike | None = None) -> None:
    """Check everything ``ncood run`` needs before any work starts (seconds, not epochs).

    In order: the output directory can be written (``output``, else ``cfg.output``;
    nothing is created); the device exists; every detector name is registered and its
    hyperparameters are accepted (each detector is created through the registry); the
    ``collapse.layer_detectors`` are registered; every regime's training config is valid
    (regime name, model name, TrainConfig fields and values) or its checkpoint exists; a
    model brought by the user (``{checkpoint, model, ...}``) builds offline, its weights load
    strictly and it has one output per ID class;
    the ID dataset (train and test) and every OOD set resolve, offline first, exactly as
    the run will load them (a download is tried only where the run would try one); the
    model builds with ``model_kwargs`` for the data's classes and channels; every name in
    ``collapse.layers`` is a submodule of it.

    Loaded datasets stay in the in-process decode cache, so the run does not decode them
    twice. Nothing is written.

    Raises:
        ConfigError: the first problem found, in one line that names the config key, what
            was expected, what was given and, for names, the closest valid one.
    """
    # heavy (torch, numpy, scipy): this module is imported by the command line at parse time
    from ncood.data import DATASETS, input_spec_for, load_images
    from ncood.data.streams import parse_named, parse_named_sets
    from ncood.detectors import create_detector, detector_class, list_detectors
    from ncood.distributed import resolve_device
    from ncood.errors import NcoodError
    from ncood.models import MODELS, create_model
    from ncood.registry import closest
    from ncood.train.config import TrainConfig, train_holdout
    from ncood.validation import check_number

    def fail(key: str, exc: Exception | str) -> ConfigError:
        return ConfigError(f"{key}: {exc}")

    _check_output(cfg.output if output is None else output)
    counts = {  # key -> (value, smallest allowed); None means "all" / "the default"
        "seed": (cfg.seed, 0),
        "data.train_samples": (cfg.data.train_samples, 1),
        "data.test_samples": (cfg.data.test_samples, 1),
        "data.ood_samples": (cfg.data.ood_samples, 1),
        "collapse.snapshot_test_samples": (cfg.collapse.snapshot_test_samples, 1),
        "collapse.snapshot_train_samples": (cfg.collapse.snapshot_train_samples, 1),
        "collapse.snapshot_ood_samples": (cfg.collapse.snapshot_ood_samples, 1),
        "bootstrap.n_boot": (cfg.bootstrap.n_boot, 0),
        "bootstrap.seed": (cfg.bootstrap.seed, 0),
    }
    if cfg.selection is not None:
        counts["selection.id_val_samples"] = (cfg.selection.id_val_samples, 1)
        counts["selection.ood_val_samples"] = (cfg.selection.ood_val_samples, 1)
    seeds = cfg.seeds
    if seeds is not None:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(
                f"config.seeds must be a non-empty list of distinct seeds, e.g. [0, 1, 2]; "
                f"got {seeds!r}"
            )
        counts |= {f"seeds[{i}]": (s, 0) for i, s in enumerate(seeds)}
    for key, (value, low) in counts.items():
        if value is not None:
            try:
                check_number(
                    value, key.rsplit(".", 1)[-1], "the run config", kind=Integral, low=low
                )
            except NcoodError as exc:
                raise fail(f"config.{key}", exc) from None
    try:
        resolve_device(cfg.device)
    except NcoodError as exc:
        raise fail("config.device", exc) from None

    try:
        MODELS.get(cfg.model)
    except NcoodError as exc:
        raise fail("config.model", exc) from None
    registered = set(list_detectors())
    for name, params in cfg.detectors.items():
        key = f"config.detectors.{name}" if name in registered | {ODIN} else "config.detectors"
        try:
            if name == ODIN:  # runs the network (ncood.odin), not a feature-array detector
                from ncood.odin import resolve_params

                resolve_params(params)
            else:
                create_detector(name, **(params or {}))
        except (NcoodError, TypeError) as exc:
            raise fail(key, exc) from None
    for name in cfg.collapse.layer_detectors or []:
        try:
            detector_class(name)
        except NcoodError as exc:
            raise fail("config.collapse.layer_detectors", exc) from None

    if not cfg.regimes:
        raise ConfigError(
            "config.regimes must name at least one regime, e.g. {standard: {epochs: 5}}; got none"
        )
    trained: dict[str, TrainConfig] = {}
    checkpoints: dict[str, Path] = {}
    brought: dict[str, tuple[Path, dict[str, Any]]] = {}  # models brought by the user
    for regime, overrides in cfg.regimes.items():
        key = f"config.regimes.{regime}"
        if "checkpoint" in overrides:
            try:  # checkpoint alone: an ncood checkpoint; with model: a model brought
                options = model_regime_options(overrides)
            except ConfigError as exc:
                raise fail(key, exc) from None
            path = Path(str(overrides["checkpoint"])).expanduser()
            if not path.is_file():
                raise ConfigError(f"{key}.checkpoint: no file {str(path)!r}; check the path")
            if options is not None:
                brought[regime] = (path, options)
                continue
            checkpoints[regime] = path
            continue
        try:
            trained[regime] = TrainConfig.from_dict(regime_train_dict(cfg, regime, overrides))
        except NcoodError as exc:
            raise fail(key, exc) from None
    adapters = _load_model_regimes(cfg, brought)

    # Dataset names, before anything is loaded. OOD sets are "NAME=SPEC" or "SPEC", as
    # extraction reads them (ncood.data.streams.parse_named).
    data = cfg.data
    ood_specs = []
    for i, text in enumerate(data.ood):
        try:
            ood_specs.append(parse_named(text)[1])
        except NcoodError as exc:
            raise fail(f"config.data.ood[{i}]", exc) from None
    try:
        parse_named_sets(list(data.ood))  # two sets with one name
    except NcoodError as exc:
        raise fail("config.data.ood", exc) from None
    _check_selection(cfg)  # after data.ood's names: the validation sets are checked against them
    names = {"config.data.id": data.id} | {
        f"config.data.ood[{i}]": spec for i, spec in enumerate(ood_specs)
    }
    names |= {f"config.regimes.{r}.dataset": tc.dataset for r, tc in trained.items()}
    for key, name in names.items():
        base = re.sub(r"\[[^\[\]]*\]$", "", name.strip()) if isinstance(name, str) else name
        if isinstance(base, str) and base.startswith(("folder:", "npz:")):
            continue
        try:
            DATASETS.get(base)
        except NcoodError as exc:
            raise fail(key, f"{exc}; or use 'folder:PATH' or 'npz:PATH'") from None

    # Models (with model_kwargs) and layer names; the class count and input channels come
    # from the data, so here the builders' defaults stand in (layer names do not depend on
    # them) and the data's values are checked against model_kwargs below.
    layers = list(cfg.collapse.layers or [])
    models: dict[Any, tuple[str, Any]] = {}  # architecture -> (config key, module)
    for regime, tc in trained.items():
        arch = (tc.model, repr(sorted(tc.model_kwargs.items())))
        if arch in models:
            continue
        try:
            models[arch] = (f"config.regimes.{regime}", create_model(tc.model, **tc.model_kwargs))
        except TypeError as exc:
            raise ConfigError(
                f"config.model_kwargs {tc.model_kwargs} do not fit model {tc.model!r} ({exc}); "
                "remove the unknown keys"
            ) from None
        except NcoodError as exc:
            raise fail(f"config.regimes.{regime}", exc) from None
    if layers:
        from ncood.train.checkpoint import model_from_checkpoint

        for regime, path in checkpoints.items():
            try:
                models[str(path)] = (f"config.regimes.{regime}", model_from_checkpoint(path)[0])
            except NcoodError as exc:
                raise fail(f"config.regimes.{regime}.checkpoint", exc) from None
    models |= {r: (f"config.regimes.{r}", a.model) for r, a in adapters.items()}
    for where, model in models.values():
        available = [n for n, _ in model.named_modules() if n]
        for i, layer in enumerate(layers):
            if layer not in available:
                top = [n for n in available if "." not in n]
                raise ConfigError(
                    f"config.collapse.layers[{i}]: {layer!r} is not a submodule of "
                    f"{type(model).__name__} ({where}){closest(layer, available)}; valid "
                    f"layers: {', '.join(top)} and their submodules (e.g. {available[-1]!r})"
                )

    # Data, loaded as training and extraction will load it (offline first).
    shape = None
    for regime, tc in trained.items():
        for split, n in (("train", tc.max_train_samples), ("test", tc.max_test_samples)):
            key = "config.data.id" if tc.dataset == data.id else f"config.regimes.{regime}"
            holdout = train_holdout(tc) if split == "train" else None
            if holdout is not None and cfg.selection is not None:
                key = "config.selection.id_val_samples"
            try:
                arrays = load_images(
                    tc.dataset,
                    split,
                    root=tc.data_root,
                    n=n,
                    seed=tc.seed,
                    allow_subset=tc.allow_subset,
                    holdout=holdout,
                )
            except NcoodError as exc:
                raise fail(key, exc) from None
            if arrays.labels is None or len(arrays) == 0:
                raise ConfigError(
                    f"{key}: {tc.dataset!r} ({split}) is empty or unlabelled ({len(arrays)} "
                    "images); train on a labelled dataset such as fashion_mnist"
                )
            if split == "train":
                spec = input_spec_for(arrays)
                shape = shape or (spec.channels, spec.size, spec.size)
                num_classes = len(arrays.classes) or int(arrays.labels.max()) + 1
                for arg, value in (("num_classes", num_classes), ("in_channels", spec.channels)):
                    if tc.model_kwargs.get(arg, value) != value:
                        raise ConfigError(
                            f"config.model_kwargs sets {arg}={tc.model_kwargs[arg]}, but the "
                            f"data {tc.dataset!r} needs {arg}={value}; remove {arg} from "
                            "model_kwargs"
                        )
    sel = cfg.selection
    loads = [(f"config.data.ood[{i}]", o, data.ood_samples) for i, o in enumerate(ood_specs)]
    if sel is not None:  # the validation OOD sets, loaded as the run will load them
        loads += [
            (f"config.selection.ood_val[{i}]", parse_named(o)[1], sel.ood_val_samples)
            for i, o in enumerate(sel.ood_val)
        ]
    for key, spec, n in loads:
        try:
            load_images(
                spec,
                "test",
                root=data.root,
                n=n,
                seed=cfg.seed,
                allow_subset=data.allow_subset,
                shape=shape,
            )
        except NcoodError as exc:
            raise fail(key, exc) from None
    _check_model_regime_classes(cfg, adapters)


def _dataset_base(spec: str) -> str:
    """What two OOD specs share when they may share images: the dataset without its class
    subset (``"cifar10[0-4]"`` -> ``"cifar10"``), or the resolved path of ``folder:``/``npz:``."""
    spec = spec.strip()
    for prefix in ("folder:", "npz:"):
        if spec.startswith(prefix):
            return prefix + str(Path(spec[len(prefix) :]).expanduser().resolve())
    return re.sub(r"\[[^\[\]]*\]$", "", spec).strip()


def _check_selection(cfg: RunConfig) -> None:
    """``config.selection``: sizes, validation OOD sets disjoint from the test OOD sets and
    registered, detectors known and their grids compatible with the configured values."""
    from ncood.data import DATASETS
    from ncood.data.streams import parse_named_sets
    from ncood.detectors import create_detector
    from ncood.detectors.select import default_grid, fixed_params, grid_candidates, selectable
    from ncood.errors import NcoodError

    sel = cfg.selection
    if sel is None:
        return
    key = "config.selection"  # its sizes are checked with the other counts
    if not sel.ood_val:
        raise ConfigError(
            f"{key}.ood_val must list at least one validation OOD set, e.g. [uniform_noise]; got []"
        )
    try:
        val = parse_named_sets(list(sel.ood_val))
    except NcoodError as exc:
        raise ConfigError(f"{key}.ood_val: {exc}") from None
    test = parse_named_sets(list(cfg.data.ood))  # checked before this is called
    test_bases = {_dataset_base(spec): name for name, spec in test.items()}
    for i, (name, spec) in enumerate(val.items()):
        base = _dataset_base(spec)
        if name in test or base in test_bases:
            clash = test_bases.get(base, name)
            raise ConfigError(
                f"{key}.ood_val[{i}]: {spec!r} is (or shares its dataset with) the test OOD "
                f"set {clash!r} of config.data.ood; a validation OOD set must be disjoint from "
                "every test OOD set: choose another (e.g. uniform_noise) or drop it from data.ood"
            )
        if base == _dataset_base(cfg.data.id):
            raise ConfigError(
                f"{key}.ood_val[{i}]: {spec!r} is the ID dataset {cfg.data.id!r}; choose a "
                "validation OOD set from another dataset (e.g. uniform_noise)"
            )
        if not base.startswith(("folder:", "npz:")):
            try:
                DATASETS.get(base)
            except NcoodError as exc:
                raise ConfigError(f"{key}.ood_val[{i}]: {exc}") from None
    odin = sel.selects_odin(cfg.detectors)
    if odin and len(val) > 1:
        raise ConfigError(
            f"{key}: ODIN selects on one validation OOD set (its images are scored through "
            f"the network); got {len(val)} in ood_val; list one, or leave odin out of "
            f"{key}.detectors"
        )
    try:
        names = selectable(
            list(array_detectors(cfg.detectors)),
            sel.array_detectors(),
        )
    except NcoodError as exc:
        raise ConfigError(f"{key}.detectors: {exc}") from None
    if not names and not odin:
        raise ConfigError(
            f"{key}.detectors: none of the run's detectors ({', '.join(cfg.detectors)}) has a "
            "hyperparameter grid, so there is nothing to select; add one with a grid (e.g. "
            "react, knn) or set selection: null"
        )
    for name in names:
        fixed = fixed_params(name, cfg.detectors.get(name))
        try:
            for cand in grid_candidates(name, default_grid(name)):
                create_detector(name, **fixed, **cand)
        except (NcoodError, TypeError) as exc:
            raise ConfigError(
                f"{key}.detectors: {name}'s configured hyperparameters {fixed} do not combine "
                f"with its grid {default_grid(name)} ({exc}); remove them from "
                f"detectors.{name} or leave {name} out of selection.detectors"
            ) from None
    for where, mapping in [("config.training", cfg.training)] + [
        (f"config.regimes.{r}", o) for r, o in cfg.regimes.items()
    ]:
        if "holdout_samples" in mapping:
            raise ConfigError(
                f"{where}.holdout_samples: with selection on, the held-out split is "
                f"{key}.id_val_samples; remove holdout_samples"
            )
