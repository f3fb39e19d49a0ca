"""Datasets as compact ``uint8`` tensors, and batch transforms to model input.

Load a split with :func:`load_images` (registered names from :func:`list_datasets`,
``"folder:PATH"``, ``"npz:PATH"``; optional class subset ``"cifar10[0,2,4]"``), describe
what a model expects with :class:`InputSpec` (:func:`input_spec_for` computes it from the
training split), and feed a model with :func:`iterate_batches` or :class:`ArrayDataset`.

Data is found offline first (``root``, ``$NCOOD_DATA_ROOT``, ``~/.cache/ncood``,
``/usr/share/datasets``; see :func:`resolve_root`), and downloaded with torchvision only
where nothing is found and a network exists.
"""

from ncood.data.arrays import ImageArrays, InputSpec
from ncood.data.batches import ArrayDataset, iterate_batches
from ncood.data.datasets import (
    DATASETS,
    DatasetLoader,
    LoadRequest,
    dataset_loader,
    list_datasets,
    load_images,
    stratified_indices,
    subset_asset_path,
)
from ncood.data.sources import clear_cache, resolve_root
from ncood.data.transforms import LUMA_WEIGHTS, input_spec_for, to_model_input

__all__ = [
    "DATASETS",
    "LUMA_WEIGHTS",
    "ArrayDataset",
    "DatasetLoader",
    "ImageArrays",
    "InputSpec",
    "LoadRequest",
    "clear_cache",
    "dataset_loader",
    "input_spec_for",
    "iterate_batches",
    "list_datasets",
    "load_images",
    "resolve_root",
    "stratified_indices",
    "subset_asset_path",
    "to_model_input",
]
