"""Continual-learning streams and their data sources, as Avalanche benchmarks."""

from .sources import (
    DATA_ROOT_ENV,
    DatasetNotFoundError,
    load_cifar100,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_svhn,
    read_idx,
    resolve_dataset_root,
)
from .streams import (
    DATASETS,
    NeuromodBenchmark,
    PermutedMNIST,
    RotatedMNIST,
    SeqSVHN,
    SplitCIFAR100,
    SplitMNIST,
    load_source,
)
from .tensor_data import (
    LazyImageData,
    TensorClassificationDataset,
    cache_info,
    make_classification_dataset,
    permute_pixels,
    rotate_images,
    set_cache_budget,
)

__all__ = [
    "DATA_ROOT_ENV",
    "DATASETS",
    "DatasetNotFoundError",
    "LazyImageData",
    "NeuromodBenchmark",
    "PermutedMNIST",
    "RotatedMNIST",
    "SeqSVHN",
    "SplitCIFAR100",
    "SplitMNIST",
    "TensorClassificationDataset",
    "cache_info",
    "load_cifar100",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_source",
    "load_svhn",
    "make_classification_dataset",
    "permute_pixels",
    "read_idx",
    "resolve_dataset_root",
    "rotate_images",
    "set_cache_budget",
]
