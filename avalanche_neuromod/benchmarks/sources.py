"""Data sources: the raw images and labels every stream is built from.

Each loader returns plain tensors ``(images, labels)`` with ``uint8`` images
of shape ``(N, C, H, W)`` and ``int64`` labels, so that streams can keep one
shared base copy and apply rotations or permutations lazily.

The readers parse torchvision's on-disk layout directly and never write into
the data root, so a read-only shared folder works. When the files are absent
they fall back to torchvision's download (which needs the internet); when that
fails too, :class:`DatasetNotFoundError` lists every path that was tried.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "DATA_ROOT_ENV",
    "DatasetNotFoundError",
    "resolve_dataset_root",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_digits",
    "load_cifar100",
    "load_svhn",
    "load_mini_imagenet",
]

DATA_ROOT_ENV = "AVALANCHE_NEUROMOD_DATA"
"""Environment variable read when no ``dataset_root`` is given."""

PathLike = Union[str, os.PathLike]
Tensors = Tuple[torch.Tensor, torch.Tensor]


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is neither on disk nor downloadable.

    :param name: the dataset's name.
    :param tried: every path that was looked at.
    :param reason: why the download fallback failed, if it was attempted.
    :param fix: the fix to print, for a dataset torchvision does not download
        (default: point at a torchvision-layout copy or download once).
    """

    def __init__(self, name: str, tried: Sequence[PathLike], reason: str = "", fix: Optional[str] = None):
        self.name = name
        self.tried = [str(p) for p in tried]
        lines = [f"{name} was not found. Paths tried:"]
        lines += [f"  - {p}" for p in self.tried]
        if reason:
            lines.append(f"The download fallback failed: {reason}")
        lines.append(fix or (
            f"Fix: pass dataset_root=<folder> pointing at a torchvision-layout "
            f"copy of {name} (e.g. <folder>/MNIST/raw/*.gz), set the "
            f"{DATA_ROOT_ENV} environment variable to that folder, or run once "
            f"on a machine with internet access so torchvision can download it."
        ))
        super().__init__("\n".join(lines))


def resolve_dataset_root(dataset_root: Optional[PathLike], name: str) -> Path:
    """Return the folder a dataset is read from.

    Order: the explicit ``dataset_root``, then the ``AVALANCHE_NEUROMOD_DATA``
    environment variable, then Avalanche's default location for ``name``.

    :param dataset_root: a user-given folder, or None.
    :param name: Avalanche's dataset name, used for its default location.
    """
    if dataset_root is not None:
        return Path(dataset_root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    from avalanche.benchmarks.datasets.dataset_utils import default_dataset_location

    return Path(default_dataset_location(name))


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array.

    :param path: the file; a ``.gz`` suffix means gzip.
    """
    path = Path(path)
    opener: Callable = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file.")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected shape {dims}.")
    return data.reshape(dims)


def _find_idx(folders: Sequence[Path], stem: str, tried: List[Path]) -> Optional[Path]:
    for folder in folders:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            tried.append(candidate)
            if candidate.is_file():
                return candidate
    return None


def _load_idx_dataset(
    folder_name: str,
    avalanche_name: str,
    torchvision_cls_name: str,
    dataset_root: Optional[PathLike],
    train: bool,
    download: bool,
) -> Tensors:
    root = resolve_dataset_root(dataset_root, avalanche_name)
    folders = [root / folder_name / "raw", root / "raw", root]
    prefix = "train" if train else "t10k"
    tried: List[Path] = []
    images_path = _find_idx(folders, f"{prefix}-images-idx3-ubyte", tried)
    labels_path = _find_idx(folders, f"{prefix}-labels-idx1-ubyte", tried)
    if images_path is not None and labels_path is not None:
        images = torch.from_numpy(read_idx(images_path).copy())
        labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
        return images.unsqueeze(1), labels
    if not download:
        raise DatasetNotFoundError(folder_name, tried)
    try:
        import torchvision.datasets as tvd

        ds = getattr(tvd, torchvision_cls_name)(str(root), train=train, download=True)
        return ds.data.clone().unsqueeze(1), ds.targets.clone().long()
    except Exception as exc:  # any failure of the download means "not available"
        raise DatasetNotFoundError(folder_name, tried, repr(exc)) from exc


def load_mnist(
    dataset_root: Optional[PathLike] = None, train: bool = True, download: bool = True
) -> Tensors:
    """MNIST as ``uint8`` images ``(N, 1, 28, 28)`` and ``int64`` labels.

    :param dataset_root: folder holding ``MNIST/raw`` (torchvision layout);
        None means ``$AVALANCHE_NEUROMOD_DATA`` or Avalanche's default.
    :param train: the 60,000 training images, else the 10,000 test images.
    :param download: fall back to torchvision's download when absent.
    """
    return _load_idx_dataset("MNIST", "mnist", "MNIST", dataset_root, train, download)


def load_fashion_mnist(
    dataset_root: Optional[PathLike] = None, train: bool = True, download: bool = True
) -> Tensors:
    """Fashion-MNIST, in the same form as :func:`load_mnist`.

    :param dataset_root: folder holding ``FashionMNIST/raw``.
    :param train: training split, else test split.
    :param download: fall back to torchvision's download when absent.
    """
    return _load_idx_dataset(
        "FashionMNIST", "fashionmnist", "FashionMNIST", dataset_root, train, download
    )


def load_digits(
    train: bool = True, size: int = 28, test_fraction: float = 0.25, seed: int = 0
) -> Tensors:
    """scikit-learn's 1,797 bundled 8x8 handwritten digits (no download).

    The 0..16 grey levels are scaled to 0..255 and upsampled (bilinear) to
    ``size x size`` so that MNIST-shaped models run unchanged. The split is
    stratified and fixed by ``seed``: every class keeps ``test_fraction`` of
    its images for testing.

    :param train: the training part, else the test part.
    :param size: output side length; 8 keeps the original resolution.
    :param test_fraction: share of each class held out for testing.
    :param seed: seed of the split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if size < 8:
        raise ValueError(f"size must be at least 8 (the digits are 8x8), got {size}.")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    images = images.unsqueeze(1)
    if size != 8:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False
        )
    images = images.round().clamp(0, 255).to(torch.uint8)
    rng = np.random.RandomState(seed)
    chosen = []
    for c in range(10):
        idx = np.flatnonzero(bunch.target == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        chosen.append(np.sort(idx[n_test:] if train else idx[:n_test]))
    keep = torch.from_numpy(np.sort(np.concatenate(chosen)))
    return images[keep].contiguous(), labels[keep].contiguous()


def _ensure_file(path: Path, name: str, download: bool, fetch: Callable[[Any], Any]) -> None:
    """Make sure ``path`` exists, downloading through torchvision if allowed.

    :param fetch: called with ``torchvision.datasets``; downloads the dataset.
    """
    if not path.is_file() and download:
        try:
            import torchvision.datasets as tvd

            fetch(tvd)
        except Exception as exc:  # any failure of the download means "not available"
            raise DatasetNotFoundError(name, [path], repr(exc)) from exc
    if not path.is_file():
        raise DatasetNotFoundError(name, [path])


def load_cifar100(
    dataset_root: Optional[PathLike] = None, train: bool = True, download: bool = True
) -> Tensors:
    """CIFAR-100 (fine labels) as ``uint8`` images ``(N, 3, 32, 32)``.

    Reads torchvision's ``cifar-100-python/{train,test}`` pickles directly.

    :param dataset_root: folder holding ``cifar-100-python``.
    :param train: the 50,000 training images, else the 10,000 test images.
    :param download: fall back to torchvision's download when absent.
    """
    root = resolve_dataset_root(dataset_root, "cifar100")
    path = root / "cifar-100-python" / ("train" if train else "test")
    _ensure_file(path, "CIFAR-100", download, lambda tvd: tvd.CIFAR100(str(root), train=train, download=True))
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry["fine_labels"], dtype=np.int64)
    return torch.from_numpy(data.copy()), torch.from_numpy(labels)


def load_svhn(
    dataset_root: Optional[PathLike] = None, train: bool = True, download: bool = True
) -> Tensors:
    """SVHN (cropped digits) as ``uint8`` images ``(N, 3, 32, 32)``.

    Reads torchvision's ``{train,test}_32x32.mat`` files directly; the label
    10 that the files use for the digit 0 is mapped to 0, as torchvision does.

    :param dataset_root: folder holding the ``.mat`` files.
    :param train: the training split, else the test split.
    :param download: fall back to torchvision's download when absent.
    """
    root = resolve_dataset_root(dataset_root, "svhn")
    split = "train" if train else "test"
    path = root / f"{split}_32x32.mat"
    _ensure_file(path, "SVHN", download, lambda tvd: tvd.SVHN(str(root), split=split, download=True))
    from scipy.io import loadmat

    mat = loadmat(str(path))
    data = np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8)
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels)


MINI_IMAGENET_SPLITS = ("train.csv", "val.csv", "test.csv")
"""Ravi & Larochelle's file lists (``filename,label``): 64 + 16 + 20 classes of 600 images."""


def _mini_imagenet_folder(root: Path) -> Path:
    for folder in (root / "mini-imagenet", root / "miniImageNet", root / "mini_imagenet", root):
        if (folder / "images").is_dir() and all((folder / name).is_file() for name in MINI_IMAGENET_SPLITS):
            return folder
    tried = [root / sub / part for sub in ("mini-imagenet", "miniImageNet", "mini_imagenet", ".")
             for part in ("images", *MINI_IMAGENET_SPLITS)]
    raise DatasetNotFoundError("mini-ImageNet", tried, fix=MINI_IMAGENET_FIX)


MINI_IMAGENET_FIX = (
    f"Fix: mini-ImageNet has no download. Put Ravi & Larochelle's pre-generated folder (images/ with the 60,000 "
    f"84x84 images, and train.csv, val.csv, test.csv) at <folder>/mini-imagenet and pass dataset_root=<folder> or "
    f"set {DATA_ROOT_ENV}; from a full ImageNet folder, use Avalanche's own SplitMiniImageNet.")

_MINI_IMAGENET_CACHE: dict = {}


def load_mini_imagenet(
    dataset_root: Optional[PathLike] = None, train: bool = True, size: int = 84, train_per_class: int = 500
) -> Tensors:
    """mini-ImageNet (100 classes x 600 images) as ``uint8`` images ``(N, 3, size, size)``.

    Reads Ravi & Larochelle's pre-generated folder: ``images/*.jpg`` and the
    file lists ``train.csv``, ``val.csv``, ``test.csv`` (``filename,label``),
    under ``<root>/mini-imagenet`` (or ``miniImageNet``, ``mini_imagenet``, or
    ``<root>`` itself). Continual learning pools the lists' 100 classes:
    labels are the class names (``n01532829`` ...) in sorted order, 0..99;
    each class's images, in list order, give its first ``train_per_class``
    images to the training split and the rest (100 of 600) to the test
    split. Images are resized to ``size`` (bilinear) where they differ. The
    images are decoded once per process and kept for both splits (1.3 GB
    at 84x84); nothing is written into the data root. mini-ImageNet cannot
    be downloaded: without the folder, :class:`DatasetNotFoundError` names
    the paths tried. (Avalanche's own ``SplitMiniImageNet`` builds it from
    an ImageNet folder instead.)

    :param dataset_root: folder holding the mini-ImageNet folder.
    :param train: the training split, else the test split.
    :param size: side length of the images.
    :param train_per_class: images of each class in the training split.
    """
    import csv

    from PIL import Image

    folder = _mini_imagenet_folder(resolve_dataset_root(dataset_root, "mini_imagenet"))
    key = (str(folder.resolve()), int(size), int(train_per_class))
    if key not in _MINI_IMAGENET_CACHE:
        files: dict = {}
        for name in MINI_IMAGENET_SPLITS:
            with open(folder / name, newline="") as f:
                rows = list(csv.reader(f))
            for row in rows[1:] if rows and rows[0][:2] == ["filename", "label"] else rows:
                files.setdefault(row[1], []).append(row[0])
        classes = sorted(files)
        short = {c: len(v) for c, v in files.items() if len(v) <= train_per_class}
        if short:
            raise ValueError(f"mini-ImageNet classes with at most train_per_class={train_per_class} images leave no "
                             f"test image: {dict(list(short.items())[:5])}. Fix: a smaller train_per_class.")
        parts = {True: ([], []), False: ([], [])}
        for label, c in enumerate(classes):
            for i, filename in enumerate(files[c]):
                path = folder / "images" / filename
                if not path.is_file():
                    raise DatasetNotFoundError("mini-ImageNet", [path], fix=f"Fix: {folder / 'images'} lacks an image "
                                               f"that {folder}'s file lists name; copy the complete folder.")
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    if img.size != (size, size):
                        img = img.resize((size, size), Image.BILINEAR)
                    pixels = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
                images, labels = parts[i < train_per_class]
                images.append(pixels)
                labels.append(label)
        _MINI_IMAGENET_CACHE.clear()  # one copy at a time: it is large
        _MINI_IMAGENET_CACHE[key] = {split: (torch.from_numpy(np.stack(x)), torch.tensor(y, dtype=torch.long))
                                     for split, (x, y) in parts.items()}
    return _MINI_IMAGENET_CACHE[key][bool(train)]
