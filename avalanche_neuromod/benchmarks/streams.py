"""Rotated, permuted and split streams as ordinary Avalanche benchmarks.

Every generator keeps one shared ``uint8`` copy of its data source and gives
each experience a lazy view of it (see :mod:`.tensor_data`), so building
``PermutedMNIST()`` with its 100 experiences costs one copy of MNIST. The
returned object is an Avalanche ``CLScenario`` with ``train_stream`` and
``test_stream``; experiences carry ``task_label``/``task_labels`` and the
classes timeline (``classes_in_this_experience`` and friends), so Avalanche's
strategies, evaluators and forgetting metrics work unchanged.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream

from .sources import (PathLike, load_cifar100, load_digits, load_fashion_mnist, load_mini_imagenet, load_mnist,
                      load_svhn)
from .tensor_data import LazyImageData, make_classification_dataset

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "FASHION_MNIST_MEAN_STD",
    "MNIST_MEAN_STD",
    "NeuromodBenchmark",
    "NeuromodExperience",
    "NeuromodStream",
    "load_source",
    "RotatedMNIST",
    "PermutedMNIST",
    "SplitMNIST",
    "SplitCIFAR100",
    "SplitMiniImageNet",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SeqSVHN",
]

MNIST_MEAN_STD = (0.1307, 0.3081)
"""Mean and standard deviation of MNIST's training pixels (in [0, 1])."""
FASHION_MNIST_MEAN_STD = (0.2860, 0.3530)
"""Mean and standard deviation of Fashion-MNIST's training pixels."""
CIFAR100_MEAN = (0.491, 0.482, 0.447)
"""Per-channel mean used by CRWN for Split CIFAR-100."""
CIFAR100_STD = (0.247, 0.243, 0.262)
"""Per-channel standard deviation used by CRWN for Split CIFAR-100."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet's training pixels (Split mini-ImageNet's normalisation)."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet's training pixels."""

DATASETS = ("mnist", "fashion_mnist", "digits")
"""The grey-scale 28x28 sources the rotated, permuted and split streams accept."""


class NeuromodBenchmark(CLScenario):
    """An Avalanche ``CLScenario`` that also describes itself.

    Besides the streams it carries the attributes that Avalanche's classic
    generators (``SplitMNIST``, ``PermutedMNIST``, ``RotatedMNIST``) expose,
    with the same meaning, so code written against them keeps working:
    ``classes_order``, ``classes_order_original_ids``,
    ``original_classes_in_exp``, ``classes_in_experience``,
    ``n_classes_per_exp``, ``task_labels`` and ``class_mapping``.

    :param streams: the streams (``train``, ``test``, ...).
    :param name: the generator that built it, e.g. ``"RotatedMNIST"``.
    :param dataset: the data source's name.
    :param n_classes: number of distinct labels over the benchmark.
    :param details: per-experience facts (angles, class splits, seeds).
    :param class_info: ``classes_order_original_ids``, ``original_classes_in_exp``
        and ``class_mapping`` as Avalanche defines them; by default each
        label is its own original class id.
    """

    def __init__(
        self,
        streams: Sequence[Any],
        *,
        name: str,
        dataset: str,
        n_classes: int,
        details: Optional[Dict[str, Any]] = None,
        class_info: Optional[Dict[str, Any]] = None,
    ):
        super().__init__(streams)
        self.name = name
        self.dataset = dataset
        self.n_classes = n_classes
        self.details: Dict[str, Any] = dict(details or {})
        for stream in self.streams.values():
            stream.benchmark = self
        train = list(self.train_stream)
        self.task_labels: List[List[int]] = [list(e.task_labels) for e in train]
        """Task labels of each training experience (as Avalanche's ``task_labels``)."""
        self.classes_in_experience: Dict[str, List[set]] = {
            s.name: [set(e.classes_in_this_experience) for e in s] for s in self.streams.values()
        }
        """Per stream name, the set of (mapped) labels of each experience."""
        self.n_classes_per_exp: List[int] = [len(c) for c in self.classes_in_experience["train"]]
        """Number of classes in each training experience."""
        info = dict(class_info or {})
        # first appearance: MNIST-360's stages visit every class several times
        mapped_order = list(dict.fromkeys(c for cs in self.classes_in_experience["train"] for c in sorted(cs)))
        self.classes_order_original_ids: List[int] = list(info.get("classes_order_original_ids", mapped_order))
        """Original class ids in the order the experiences introduce them."""
        self.class_mapping: List[int] = list(info.get("class_mapping", range(n_classes)))
        """``class_mapping[original id]`` is the label the samples carry."""
        self.classes_order: List[int] = [self.class_mapping[c] for c in self.classes_order_original_ids]
        """The labels, in the order the experiences introduce them (Avalanche's meaning)."""
        self.original_classes_in_exp: List[set] = [
            set(c) for c in info.get("original_classes_in_exp", self.classes_in_experience["train"])
        ]
        """Original class ids of each training experience."""

    @property
    def n_experiences(self) -> int:
        """Number of training experiences."""
        return len(self.train_stream)

    def __repr__(self) -> str:
        return (
            f"{self.name}(dataset={self.dataset!r}, n_experiences={self.n_experiences}, "
            f"n_classes={self.n_classes})"
        )


def load_source(
    dataset: str, dataset_root: Optional[PathLike] = None
) -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor], Tuple[float, float]]:
    """Train and test tensors of a grey-scale source plus its mean and std.

    :param dataset: one of :data:`DATASETS`.
    :param dataset_root: data folder for the torchvision sources.
    """
    if dataset == "mnist":
        return load_mnist(dataset_root, True), load_mnist(dataset_root, False), MNIST_MEAN_STD
    if dataset == "fashion_mnist":
        return (
            load_fashion_mnist(dataset_root, True),
            load_fashion_mnist(dataset_root, False),
            FASHION_MNIST_MEAN_STD,
        )
    if dataset == "digits":
        if dataset_root is not None:
            raise ValueError(
                "dataset='digits' is bundled with scikit-learn and takes no "
                "dataset_root; drop dataset_root or choose dataset='mnist'."
            )
        train = load_digits(train=True)
        scaled = train[0].float() / 255.0
        return train, load_digits(train=False), (scaled.mean().item(), scaled.std().item())
    raise ValueError(
        f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}."
    )


def _check_count(name: str, n: int, low: int, high: Optional[int], hint: str = "") -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise ValueError(f"{name} must be an integer, got {n!r}.")
    if n < low or (high is not None and n > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {n}.{(' ' + hint) if hint else ''}")


class NeuromodExperience(DatasetExperience):
    """An experience of our streams: Avalanche's ``DatasetExperience`` whose
    dataset can be replaced and which knows its benchmark, as in Avalanche's
    classic benchmarks (``BiCPlugin`` sets ``strategy.experience.dataset``)."""

    @property
    def dataset(self):
        """The experience's dataset; assignable (a plugin may replace it)."""
        return self._dataset

    @dataset.setter
    def dataset(self, value) -> None:
        self._dataset = value

    @property
    def benchmark(self):
        """The benchmark of this experience's stream, as in Avalanche's classic
        benchmarks (``ICaRL`` reads its class order there)."""
        return self.origin_stream.benchmark


class NeuromodStream(EagerCLStream):
    """A stream that hands out a fresh copy of an experience at every access.

    Avalanche's classic streams do the same, so a strategy that modifies the
    experience it trains on (``BiCPlugin`` replaces its dataset) never
    changes the benchmark for the next run.
    """

    def _make_experience(self, experience_idx: int):
        return copy.copy(self._exps[experience_idx])


def _experience(dataset, index: int, task_label: int, classes: List[int]) -> NeuromodExperience:
    exp = NeuromodExperience(dataset=dataset, current_experience=index)
    exp.task_label = task_label
    exp.task_labels = [task_label]
    exp.classes_in_this_experience = sorted(classes)
    return exp


def _stream(name: str, exps: List[DatasetExperience]) -> NeuromodStream:
    seen: set = set()
    all_classes = set().union(*(e.classes_in_this_experience for e in exps)) if exps else set()
    for exp in exps:
        exp.previous_classes = sorted(seen)
        seen |= set(exp.classes_in_this_experience)
        exp.classes_seen_so_far = sorted(seen)
        exp.future_classes = sorted(all_classes - seen)
    return NeuromodStream(name, exps)


def _view_benchmark(
    name: str,
    dataset: str,
    dataset_root: Optional[PathLike],
    views: List[Dict[str, Any]],
    return_task_id: bool,
    train_transform: Any,
    eval_transform: Any,
    details: Dict[str, Any],
) -> NeuromodBenchmark:
    """Domain-incremental benchmark: the same samples under one view per experience."""
    (train_x, train_y), (test_x, test_y), (mean, std) = load_source(dataset, dataset_root)
    classes = sorted(set(train_y.tolist()))
    streams = []
    for stream_name, (x, y) in (("train", (train_x, train_y)), ("test", (test_x, test_y))):
        exps = []
        for i, view in enumerate(views):
            task = i if return_task_id else 0
            data = LazyImageData(x, y, mean=(mean,), std=(std,), **view)
            ds = make_classification_dataset(data, task, train_transform, eval_transform)
            exps.append(_experience(ds, i, task, classes))
        streams.append(_stream(stream_name, exps))
    # Avalanche builds these streams with one dataset per experience and
    # gives experience i the original class ids i * n_classes + c, mapped
    # back to c: the attributes follow that convention.
    k = len(classes)
    class_info = {
        "classes_order_original_ids": list(range(k * len(views))),
        "original_classes_in_exp": [set(range(i * k, (i + 1) * k)) for i in range(len(views))],
        "class_mapping": [c for _ in views for c in classes],
    }
    return NeuromodBenchmark(
        streams, name=name, dataset=dataset, n_classes=k, details=details, class_info=class_info
    )


def RotatedMNIST(
    n_experiences: int = 36,
    *,
    rotations_list: Optional[Sequence[float]] = None,
    return_task_id: bool = False,
    dataset: str = "mnist",
    dataset_root: Optional[PathLike] = None,
    interpolation: str = "nearest",
    train_transform: Optional[Callable] = None,
    eval_transform: Optional[Callable] = None,
    seed: Optional[int] = None,
) -> NeuromodBenchmark:
    """Rotated MNIST: experience ``i`` shows every image rotated by ``10 * i`` degrees.

    The CRWN protocol: 36 experiences (0 to 350 degrees), all 10 classes in
    each, the full train and test sets per experience, images normalised
    with MNIST's mean and std after rotation.

    :param n_experiences: number of experiences (1 to 36 with the default
        angles; any number with ``rotations_list``).
    :param rotations_list: explicit angles in degrees, one per experience.
    :param return_task_id: experience ``i`` gets task label ``i`` (else 0).
    :param dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"digits"``.
    :param dataset_root: data folder (torchvision layout) for MNIST and
        Fashion-MNIST.
    :param interpolation: ``"nearest"`` (as PIL and Avalanche) or ``"bilinear"``.
    :param train_transform: optional per-sample transform on the train stream
        (it disables the fast read path).
    :param eval_transform: optional per-sample transform on the test stream.
    :param seed: unused by the fixed angle schedule; accepted for
        compatibility with Avalanche's generator signature.
    """
    if rotations_list is not None:
        rotations = [float(a) for a in rotations_list]
        if len(rotations) != n_experiences:
            raise ValueError(
                f"rotations_list has {len(rotations)} angles but n_experiences is "
                f"{n_experiences}; pass one angle per experience."
            )
        _check_count("n_experiences", n_experiences, 1, None)
    else:
        _check_count(
            "n_experiences", n_experiences, 1, 36,
            "Beyond 36, 10-degree steps repeat angles; pass rotations_list to choose them.",
        )
        rotations = [10.0 * i for i in range(n_experiences)]
    views = [{"angles": a, "interpolation": interpolation} for a in rotations]
    return _view_benchmark(
        "RotatedMNIST", dataset, dataset_root, views, return_task_id,
        train_transform, eval_transform, {"rotations": rotations},
    )


def _pixel_permutation(n_pixels: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).permutation(n_pixels))


def PermutedMNIST(
    n_experiences: int = 100,
    *,
    seed: int = 0,
    first_experience_permuted: bool = True,
    return_task_id: bool = False,
    dataset: str = "mnist",
    dataset_root: Optional[PathLike] = None,
    train_transform: Optional[Callable] = None,
    eval_transform: Optional[Callable] = None,
) -> NeuromodBenchmark:
    """Permuted MNIST: experience ``i`` shuffles the pixels with its own permutation.

    The permutation of experience ``i`` is
    ``np.random.RandomState(i + seed).permutation(784)`` (SupSup's
    ``np.random.seed(i + seed)``), applied after normalisation. By default
    experience 0 is permuted too; ``first_experience_permuted=False`` gives
    Avalanche's convention of an unpermuted first experience.

    :param n_experiences: number of experiences (at least 1).
    :param seed: offset of the per-experience permutation seeds.
    :param first_experience_permuted: permute experience 0 as well.
    :param return_task_id: experience ``i`` gets task label ``i`` (else 0).
    :param dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"digits"``.
    :param dataset_root: data folder for MNIST and Fashion-MNIST.
    :param train_transform: optional per-sample transform (train stream).
    :param eval_transform: optional per-sample transform (test stream).
    """
    _check_count("n_experiences", n_experiences, 1, None)
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    permutations: List[Optional[torch.Tensor]] = []
    for i in range(n_experiences):
        if i == 0 and not first_experience_permuted:
            permutations.append(None)
        else:
            permutations.append(_pixel_permutation(28 * 28, i + seed))
    views = [{"permutation": p} for p in permutations]
    return _view_benchmark(
        "PermutedMNIST", dataset, dataset_root, views, return_task_id,
        train_transform, eval_transform,
        {"seed": seed, "first_experience_permuted": first_experience_permuted},
    )


def _class_order(n_classes: int, fixed_class_order, shuffle: bool, seed: Optional[int]) -> List[int]:
    if fixed_class_order is not None:
        order = [int(c) for c in fixed_class_order]
        if sorted(order) != list(range(n_classes)):
            raise ValueError(
                f"fixed_class_order must be a permutation of 0..{n_classes - 1}, got {order}."
            )
        return order
    if shuffle:
        return np.random.RandomState(seed).permutation(n_classes).tolist()
    return list(range(n_classes))


def _relabel_mode(in_each_exp: bool, from_first_exp: bool) -> str:
    if in_each_exp and from_first_exp:
        raise ValueError(
            "class_ids_from_zero_in_each_exp and class_ids_from_zero_from_first_exp "
            "exclude each other; pass at most one of them."
        )
    return "each_exp" if in_each_exp else "first_exp" if from_first_exp else "none"


def _split_benchmark(
    name: str,
    dataset: str,
    train: Tuple[torch.Tensor, torch.Tensor],
    test: Tuple[torch.Tensor, torch.Tensor],
    n_experiences: int,
    class_order: List[int],
    return_task_id: bool,
    relabel: str,
    view: Dict[str, Any],
    train_transform: Any,
    eval_transform: Any,
) -> NeuromodBenchmark:
    """Class-incremental benchmark: disjoint groups of classes, in order.

    ``relabel`` follows Avalanche: ``"none"`` keeps the original labels,
    ``"each_exp"`` relabels each experience's classes ``0..k-1`` (in class
    order), ``"first_exp"`` relabels class ``class_order[i]`` as ``i``.
    """
    groups = [g.tolist() for g in np.array_split(np.asarray(class_order), n_experiences)]
    n_classes = len(class_order)
    class_mapping = list(range(n_classes))
    if relabel == "each_exp":
        for group in groups:
            for position, c in enumerate(group):
                class_mapping[c] = position
    elif relabel == "first_exp":
        for position, c in enumerate(class_order):
            class_mapping[c] = position
    mapping = torch.tensor(class_mapping, dtype=torch.long)
    streams = []
    for stream_name, (x, y) in (("train", train), ("test", test)):
        labels = y if relabel == "none" else mapping[y]
        exps = []
        for i, group in enumerate(groups):
            task = i if return_task_id else 0
            indices = torch.from_numpy(np.flatnonzero(np.isin(y.numpy(), group)))
            data = LazyImageData(x, labels, indices, **view)
            ds = make_classification_dataset(data, task, train_transform, eval_transform)
            exps.append(_experience(ds, i, task, [class_mapping[c] for c in group]))
        streams.append(_stream(stream_name, exps))
    return NeuromodBenchmark(
        streams,
        name=name,
        dataset=dataset,
        n_classes=n_classes,
        details={"class_order": class_order, "classes_per_experience": groups},
        class_info={
            "classes_order_original_ids": list(class_order),
            "original_classes_in_exp": [set(g) for g in groups],
            "class_mapping": class_mapping,
        },
    )


def SplitMNIST(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    seed: Optional[int] = None,
    fixed_class_order: Optional[Sequence[int]] = None,
    shuffle: bool = False,
    class_ids_from_zero_in_each_exp: bool = False,
    class_ids_from_zero_from_first_exp: bool = False,
    dataset: str = "mnist",
    dataset_root: Optional[PathLike] = None,
    channels: int = 1,
    normalize: bool = False,
    train_transform: Optional[Callable] = None,
    eval_transform: Optional[Callable] = None,
) -> NeuromodBenchmark:
    """Split (Sequential) MNIST: disjoint groups of classes, class-incremental.

    5 experiences of 2 classes in label order (0-1, 2-3, ...), no
    normalisation, no augmentation, every experience with task label 0.
    Images are 1x28x28, as in Avalanche's ``SplitMNIST`` and our other MNIST
    streams; Dynamos' protocol asks for ``channels=3`` (grey repeated).

    The arguments Avalanche's ``SplitMNIST`` also has mean the same here;
    the defaults differ where the papers' protocol does: the class order is
    the label order unless ``shuffle=True`` (Avalanche shuffles by default),
    and there is no normalisation unless ``normalize=True``.

    :param n_experiences: number of experiences, 1 to 10; classes are split
        as evenly as possible.
    :param return_task_id: experience ``i`` gets task label ``i`` (task-
        incremental); else all experiences have task label 0.
    :param seed: seed of the class order when ``shuffle`` is True.
    :param fixed_class_order: an explicit class order.
    :param shuffle: draw the class order at random from ``seed``.
    :param class_ids_from_zero_in_each_exp: relabel each experience's
        classes 0..k-1 (for multi-head task-incremental use).
    :param class_ids_from_zero_from_first_exp: relabel the classes 0..9 in
        the order the experiences introduce them.
    :param dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"digits"``.
    :param dataset_root: data folder for MNIST and Fashion-MNIST.
    :param channels: 1 (default) or 3 (Dynamos).
    :param normalize: normalise with the source's mean and std.
    :param train_transform: optional per-sample transform (train stream).
    :param eval_transform: optional per-sample transform (test stream).
    """
    _check_count("n_experiences", n_experiences, 1, 10)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    if fixed_class_order is not None and shuffle:
        raise ValueError("pass either fixed_class_order or shuffle=True, not both.")
    train, test, (mean, std) = load_source(dataset, dataset_root)
    view: Dict[str, Any] = {"channels": channels}
    if normalize:
        view.update(mean=(mean,), std=(std,))
    return _split_benchmark(
        "SplitMNIST", dataset, train, test, n_experiences,
        _class_order(10, fixed_class_order, shuffle, seed),
        return_task_id,
        _relabel_mode(class_ids_from_zero_in_each_exp, class_ids_from_zero_from_first_exp),
        view,
        train_transform, eval_transform,
    )


def _colour_transforms(mean: Sequence[float], std: Sequence[float], size: int, padding: int, augment: bool):
    """Train and eval transforms of a colour stream: normalise; for training, crop and flip when ``augment``."""
    from torchvision import transforms as T

    normalise = T.Normalize(mean, std)
    train = [T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip()] if augment else []
    return T.Compose(train + [normalise]), normalise


def SplitCIFAR100(
    n_experiences: int = 20,
    *,
    return_task_id: bool = False,
    seed: Optional[int] = 0,
    fixed_class_order: Optional[Sequence[int]] = None,
    class_ids_from_zero_in_each_exp: bool = False,
    dataset_root: Optional[PathLike] = None,
    augment: bool = True,
    train_transform: Optional[Callable] = None,
    eval_transform: Optional[Callable] = None,
) -> NeuromodBenchmark:
    """Split CIFAR-100: 20 experiences of 5 classes from a seeded class order.

    CRWN's protocol: the class order is a random permutation drawn from
    ``seed``; training images get RandomCrop(32, padding=4) and a horizontal
    flip; all images are normalised with (0.491, 0.482, 0.447) /
    (0.247, 0.243, 0.262). Needs the CIFAR-100 files (downloaded by
    torchvision where the internet is reachable).

    :param n_experiences: number of experiences, 1 to 100.
    :param return_task_id: experience ``i`` gets task label ``i``.
    :param seed: seed of the class order (None: label order).
    :param fixed_class_order: an explicit class order.
    :param class_ids_from_zero_in_each_exp: relabel classes 0..k-1 per experience.
    :param dataset_root: folder holding ``cifar-100-python``.
    :param augment: use the crop and flip augmentation on the train stream.
    :param train_transform: replaces the default train transform.
    :param eval_transform: replaces the default eval transform.
    """
    _check_count("n_experiences", n_experiences, 1, 100)
    default_train, default_eval = _colour_transforms(CIFAR100_MEAN, CIFAR100_STD, 32, 4, augment)
    train = load_cifar100(dataset_root, True)
    test = load_cifar100(dataset_root, False)
    order = _class_order(100, fixed_class_order, seed is not None and fixed_class_order is None, seed)
    return _split_benchmark(
        "SplitCIFAR100", "cifar100", train, test, n_experiences, order,
        return_task_id, _relabel_mode(class_ids_from_zero_in_each_exp, False), {},
        train_transform or default_train, eval_transform or default_eval,
    )


def SplitMiniImageNet(
    n_experiences: int = 20,
    *,
    return_task_id: bool = False,
    seed: Optional[int] = 0,
    fixed_class_order: Optional[Sequence[int]] = None,
    class_ids_from_zero_in_each_exp: bool = False,
    dataset_root: Optional[PathLike] = None,
    size: int = 84,
    train_per_class: int = 500,
    augment: bool = False,
    train_transform: Optional[Callable] = None,
    eval_transform: Optional[Callable] = None,
) -> NeuromodBenchmark:
    """Split mini-ImageNet (CRWN): 20 experiences of 5 classes, 2,500 training and 500 test images each.

    The 100 classes of mini-ImageNet (:func:`~avalanche_neuromod.benchmarks.load_mini_imagenet`:
    Ravi & Larochelle's pre-generated folder, 600 images of 84x84 per class,
    the first 500 of each class for training, the last 100 for testing) in
    an order drawn from ``seed``, normalised with ImageNet's mean and
    standard deviation. The CRWN paper states no augmentation for it; with
    ``augment=True`` training images get RandomCrop(size, padding=size // 8)
    and a horizontal flip, as Split CIFAR-100's. The full stream needs the
    mini-ImageNet folder, which no library downloads.

    :param n_experiences: number of experiences (divides the classes as evenly as possible).
    :param return_task_id: experience ``i`` gets task label ``i``.
    :param seed: seed of the class order (None: label order).
    :param fixed_class_order: an explicit class order.
    :param class_ids_from_zero_in_each_exp: relabel classes 0..k-1 per experience.
    :param dataset_root: folder holding ``mini-imagenet/``.
    :param size: image side length (84).
    :param train_per_class: training images of each class (the rest are test images).
    :param augment: crop and flip the training images.
    :param train_transform: replaces the default train transform.
    :param eval_transform: replaces the default eval transform.
    """
    train = load_mini_imagenet(dataset_root, True, size, train_per_class)
    test = load_mini_imagenet(dataset_root, False, size, train_per_class)
    n_classes = int(train[1].max()) + 1
    _check_count("n_experiences", n_experiences, 1, n_classes)
    default_train, default_eval = _colour_transforms(IMAGENET_MEAN, IMAGENET_STD, size, size // 8, augment)
    order = _class_order(n_classes, fixed_class_order, seed is not None and fixed_class_order is None, seed)
    return _split_benchmark(
        "SplitMiniImageNet", "mini_imagenet", train, test, n_experiences, order,
        return_task_id, _relabel_mode(class_ids_from_zero_in_each_exp, False), {},
        train_transform or default_train, eval_transform or default_eval,
    )


def SeqSVHN(
    n_experiences: int = 5,
    *,
    return_task_id: bool = False,
    fixed_class_order: Optional[Sequence[int]] = None,
    class_ids_from_zero_in_each_exp: bool = False,
    dataset_root: Optional[PathLike] = None,
    train_transform: Optional[Callable] = None,
    eval_transform: Optional[Callable] = None,
) -> NeuromodBenchmark:
    """Sequential SVHN (Dynamos): 5 experiences of 2 digit classes, 3x32x32.

    Images are only scaled to [0, 1] (ToTensor), as in Dynamos. Needs the
    SVHN ``.mat`` files (downloaded by torchvision where possible).

    :param n_experiences: number of experiences, 1 to 10.
    :param return_task_id: experience ``i`` gets task label ``i``.
    :param fixed_class_order: an explicit class order (default label order).
    :param class_ids_from_zero_in_each_exp: relabel classes 0..k-1 per experience.
    :param dataset_root: folder holding ``train_32x32.mat`` and ``test_32x32.mat``.
    :param train_transform: optional per-sample transform (train stream).
    :param eval_transform: optional per-sample transform (test stream).
    """
    _check_count("n_experiences", n_experiences, 1, 10)
    train = load_svhn(dataset_root, True)
    test = load_svhn(dataset_root, False)
    return _split_benchmark(
        "SeqSVHN", "svhn", train, test, n_experiences,
        _class_order(10, fixed_class_order, False, None),
        return_task_id, _relabel_mode(class_ids_from_zero_in_each_exp, False), {},
        train_transform, eval_transform,
    )
