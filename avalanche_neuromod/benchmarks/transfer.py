"""Domain-transfer streams (TSAR): unseen classes learned one image at a time, in order.

A domain-transfer sequence draws ``n_classes`` classes of a dataset the model
never saw, in a random order, and ``n_images`` images of each (without
replacement). The model then takes one gradient step per image, class after
class, and is scored on *recall*: accuracy over the same images after the
whole sequence (TSAR's "training accuracy"). The held-out variant trains on
the first ``n_train`` drawn images of each class and also tests on the rest.

:func:`DomainTransfer` returns an Avalanche benchmark:

- ``train_stream``: one experience per class, in sequence order, holding its
  ``n_train`` images in the order they are learned; the class at position
  ``i`` has label ``i``;
- ``test_stream``: the recall test, one experience per class over the same
  images, so Avalanche's per-experience accuracy is recall by position in the
  sequence and its stream accuracy is the overall recall;
- ``heldout_stream`` (when ``n_train < n_images``): the remaining images of
  each class, one experience per class.

Images are ``uint8`` at ``size x size`` (LANCZOS), scaled to [0, 1] and
repeated to ``channels`` channels on access. Sources: Omniglot's unseen
alphabets (default), MNIST, Fashion-MNIST, scikit-learn's digits (no data
needed), CIFAR-100 and any ImageNet-style folder of class sub-folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .omniglot import OMNIGLOT_SHARED_ALPHABETS, load_omniglot, resize_images
from .sources import DatasetNotFoundError, PathLike, load_cifar100, load_digits, load_fashion_mnist, load_mnist
from .streams import NeuromodBenchmark, _experience, _stream
from .tensor_data import LazyImageData, make_classification_dataset

__all__ = ["TRANSFER_DEFAULTS", "DomainTransfer", "load_image_folder"]

TRANSFER_DEFAULTS: Dict[str, Tuple[int, int]] = {
    "omniglot": (100, 20),
    "mnist": (10, 30),
    "fashion_mnist": (10, 30),
    "digits": (10, 30),
    "cifar100": (100, 30),
    "image_folder": (100, 30),
}
"""``(n_classes, n_images)`` per source: the paper's 100 x 30 where the data
allow it, all 20 drawings of 100 unseen Omniglot classes, and 10 x 30 for
the ten-class sources."""

_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def load_image_folder(
    root: PathLike, n_classes: int, n_images: int, *, seed: int = 0, size: int = 28
) -> Tuple[torch.Tensor, List[str], np.ndarray]:
    """Draw classes and images from an ImageNet-style folder (``root/<class>/<image>``).

    Only the drawn images are decoded (RGB, LANCZOS resize), so a folder of
    a million images costs ``n_classes * n_images`` reads.

    :param root: the folder of class sub-folders.
    :param n_classes: classes to draw (in a random order).
    :param n_images: images to draw per class, without replacement.
    :param seed: seed of both draws.
    :param size: side length after the resize.
    :return: ``uint8`` images ``(n_classes * n_images, 3, size, size)`` grouped
        by class in drawing order, the drawn class names, and the class
        position of every image.
    """
    from PIL import Image

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError("an image folder", [root])
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < n_classes:
        raise ValueError(f"{root} has {len(classes)} class folders; n_classes={n_classes} needs at least that "
                         f"many. Fix: lower n_classes.")
    rng = np.random.default_rng(seed)
    chosen = [classes[i] for i in rng.permutation(len(classes))[:n_classes]]
    images, positions = [], []
    for position, name in enumerate(chosen):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if len(files) < n_images:
            raise ValueError(f"{root / name} has {len(files)} images; n_images={n_images} needs at least that "
                             f"many. Fix: lower n_images.")
        for i in rng.permutation(len(files))[:n_images]:
            with Image.open(files[i]) as image:
                rgb = image.convert("RGB").resize((size, size), Image.LANCZOS)
            images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
            positions.append(position)
    return torch.from_numpy(np.stack(images)), chosen, np.asarray(positions)


def _source_pool(source: str, dataset_root: Optional[PathLike], size: int,
                 omniglot_subset: str) -> Tuple[torch.Tensor, torch.Tensor, List[Any]]:
    """``uint8`` images, labels and class names of every class a source can draw from."""
    if source == "omniglot":
        shared = OMNIGLOT_SHARED_ALPHABETS if omniglot_subset == "images_background_small2" else ()
        data = load_omniglot(dataset_root, (omniglot_subset,), size=size, exclude_alphabets=shared)
        return data.images, data.labels, [f"{a}/{c}" for a, c in data.classes]
    if source in ("mnist", "fashion_mnist", "digits"):
        if source == "digits":
            if dataset_root is not None:
                raise ValueError("source='digits' is bundled with scikit-learn and takes no dataset_root; "
                                 "drop dataset_root or choose source='mnist'.")
            x, y = load_digits(train=True, size=size)
        else:
            loader = load_mnist if source == "mnist" else load_fashion_mnist
            x, y = loader(dataset_root, train=True)
        return x, y, list(range(10))
    if source == "cifar100":
        x, y = load_cifar100(dataset_root, train=True)
        return x, y, list(range(100))
    raise ValueError(f"unknown source {source!r}; choose one of {', '.join(TRANSFER_DEFAULTS)}.")


def DomainTransfer(
    source: str = "omniglot",
    *,
    n_classes: Optional[int] = None,
    n_images: Optional[int] = None,
    n_train: Optional[int] = None,
    seed: int = 0,
    dataset_root: Optional[PathLike] = None,
    size: int = 28,
    channels: int = 3,
    omniglot_subset: str = "images_background_small2",
    classes: Optional[Sequence[int]] = None,
) -> NeuromodBenchmark:
    """A domain-transfer sequence as an Avalanche benchmark (see the module doc).

    :param source: ``"omniglot"`` (by default the 106 classes of
        ``images_background_small2`` that ``images_background_small1`` lacks),
        ``"mnist"``, ``"fashion_mnist"``, ``"digits"``, ``"cifar100"`` or
        ``"image_folder"`` (``dataset_root`` is then the folder of class
        sub-folders, e.g. ImageNet's ``train``).
    :param n_classes: classes in the sequence (default: :data:`TRANSFER_DEFAULTS`).
    :param n_images: images drawn per class (default: :data:`TRANSFER_DEFAULTS`).
    :param n_train: of those, how many are learned (the first ones drawn);
        the rest form ``heldout_stream``. None means all (recall only).
    :param seed: seed of the class order and the image draw; another seed is
        another sequence.
    :param dataset_root: the source's data folder (None: ``$AVALANCHE_NEUROMOD_DATA``).
    :param size: image side length (TSAR: 28).
    :param channels: channels of the images (grey sources are repeated; TSAR: 3).
    :param omniglot_subset: the Omniglot archive of ``source="omniglot"``;
        ``images_background_small2`` loses the alphabets it shares with
        ``images_background_small1`` (Greek, Latin), ``images_evaluation``
        (20 alphabets never in the background set) is the paper's choice
        with the full Omniglot.
    """
    if source not in TRANSFER_DEFAULTS:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(TRANSFER_DEFAULTS)}.")
    default_classes, default_images = TRANSFER_DEFAULTS[source]
    n_classes = default_classes if n_classes is None else n_classes
    n_images = default_images if n_images is None else n_images
    n_train = n_images if n_train is None else n_train
    if n_classes < 1 or n_images < 1:
        raise ValueError(f"n_classes and n_images must be positive, got {n_classes} and {n_images}.")
    if not 1 <= n_train <= n_images:
        raise ValueError(f"n_train must be between 1 and n_images={n_images}, got {n_train}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")

    if source == "image_folder":
        if dataset_root is None:
            raise ValueError("source='image_folder' needs dataset_root=<folder of class sub-folders>.")
        if classes is not None:
            raise ValueError("classes= picks class ids of the other sources; for an image folder, point "
                             "dataset_root at a folder holding only the wanted class sub-folders.")
        images, names, positions = load_image_folder(dataset_root, n_classes, n_images, seed=seed, size=size)
        class_names: List[Any] = names
    else:
        pool_x, pool_y, all_names = _source_pool(source, dataset_root, size, omniglot_subset)
        labels = pool_y.numpy()
        available = np.unique(labels)
        if classes is not None:
            unknown = sorted(set(classes) - set(available.tolist()))
            if unknown:
                raise ValueError(f"classes {unknown} are not in source {source!r} (it has {len(available)} "
                                 f"classes, ids {available.min()}..{available.max()}).")
            available = np.asarray(sorted(set(classes)), dtype=available.dtype)
        if len(available) < n_classes:
            raise ValueError(f"source {source!r} has {len(available)} classes; n_classes={n_classes} is more. "
                             f"Fix: n_classes <= {len(available)}.")
        rng = np.random.default_rng(seed)
        order = available[rng.permutation(len(available))[:n_classes]]
        picked = []
        for c in order:
            members = np.flatnonzero(labels == c)
            if len(members) < n_images:
                raise ValueError(f"class {all_names[int(c)]} of {source!r} has {len(members)} images; "
                                 f"n_images={n_images} is more. Fix: n_images <= {len(members)}.")
            picked.append(members[rng.permutation(len(members))[:n_images]])
        chosen = np.concatenate(picked)
        images = torch.from_numpy(resize_images(pool_x[torch.from_numpy(chosen)].numpy(), size))
        positions = np.repeat(np.arange(n_classes), n_images)
        class_names = [all_names[int(c)] for c in order]

    labels_t = torch.from_numpy(positions.astype(np.int64))
    repeat = channels if images.shape[1] == 1 and channels == 3 else None
    if images.shape[1] == 3 and channels == 1:
        images = images.float().mean(1, keepdim=True).round().to(torch.uint8)

    def experiences(lo: int, hi: int) -> List[Any]:
        exps = []
        for position in range(n_classes):
            rows = torch.arange(position * n_images + lo, position * n_images + hi)
            data = LazyImageData(images, labels_t, rows, channels=repeat)
            exps.append(_experience(make_classification_dataset(data, 0), position, 0, [position]))
        return exps

    streams = [_stream("train", experiences(0, n_train)), _stream("test", experiences(0, n_train))]
    if n_train < n_images:
        streams.append(_stream("heldout", experiences(n_train, n_images)))
    return NeuromodBenchmark(
        streams,
        name="DomainTransfer",
        dataset=source,
        n_classes=n_classes,
        details={"source": source, "n_classes": n_classes, "n_images": n_images, "n_train": n_train,
                 "seed": seed, "size": size, "channels": channels, "class_names": class_names},
    )
