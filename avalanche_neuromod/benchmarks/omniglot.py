"""Omniglot read straight from its official zips, and TSAR's meta-training sampler.

Omniglot's files are ``images_background.zip``, ``images_evaluation.zip``
and the small subsets ``images_background_small1.zip`` /
``images_background_small2.zip`` (torchvision keeps them in
``<root>/omniglot-py/``). Inside, every drawing is a 105x105 binary PNG at
``<subset>/<alphabet>/<characterNN>/<drawer>_<nn>.png``; a *class* is one
character of one alphabet. :func:`load_omniglot` reads the PNGs from the zip
in memory (nothing is extracted into the user's folder), resizes them to
``size x size`` with LANCZOS, as TSAR and OML do, and keeps the alphabet and
character of every class.

Images keep Omniglot's polarity (white background, dark strokes) unless
``invert=True``. Every network of :mod:`avalanche_neuromod.models.tsar`
normalises each image's channels right after its first convolution, which
removes any affine change of the input pixels, so the polarity and the
input normalisation do not change what those networks compute.

:class:`OmniglotMetaSampler` draws TSAR's meta-training episodes (the OML
protocol): one class, its drawings in order for the inner loop, and a random
outer batch.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .sources import DatasetNotFoundError, PathLike, resolve_dataset_root

__all__ = [
    "OMNIGLOT_SHARED_ALPHABETS",
    "OMNIGLOT_SUBSETS",
    "OMNIGLOT_UNSEEN_ALPHABETS",
    "MetaEpisode",
    "OmniglotData",
    "OmniglotMetaSampler",
    "load_omniglot",
    "resize_images",
]

OMNIGLOT_SUBSETS = (
    "images_background",
    "images_evaluation",
    "images_background_small1",
    "images_background_small2",
)
"""The official Omniglot archives :func:`load_omniglot` reads."""

OMNIGLOT_SHARED_ALPHABETS = ("Greek", "Latin")
"""The alphabets both small subsets hold (identical files)."""

OMNIGLOT_UNSEEN_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
"""The alphabets of ``images_background_small2`` that ``images_background_small1``
lacks (106 classes): the unseen classes for domain transfer after meta-learning
on small1. The two subsets share Greek and Latin (identical files)."""


@dataclass
class OmniglotData:
    """Omniglot drawings as one ``uint8`` tensor with their classes.

    :param images: ``uint8`` ``(N, 1, size, size)``.
    :param labels: ``int64`` class index of every image, ``0 .. n_classes - 1``
        in (subset, alphabet, character) order.
    :param classes: ``(alphabet, character)`` of every class index.
    :param subsets: the archives the classes were read from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: List[Tuple[str, str]]
    subsets: Tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes (characters)."""
        return len(self.classes)

    @property
    def alphabets(self) -> List[str]:
        """The alphabets, in class order, each once."""
        return list(dict.fromkeys(a for a, _ in self.classes))

    def class_indices(self, alphabets: Sequence[str]) -> List[int]:
        """The class indices of the given alphabets.

        :param alphabets: alphabet names as in the archive (e.g. ``"Sanskrit"``).
        """
        wanted = set(alphabets)
        unknown = wanted - set(self.alphabets)
        if unknown:
            raise ValueError(f"unknown alphabet(s) {sorted(unknown)}; these data hold {self.alphabets}.")
        return [i for i, (a, _) in enumerate(self.classes) if a in wanted]


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize ``uint8`` images ``(N, C, H, W)`` to ``size x size`` with LANCZOS (Pillow).

    :param images: the images.
    :param size: output side length.
    """
    from PIL import Image

    if images.shape[-2:] == (size, size):
        return images
    out = np.empty(images.shape[:2] + (size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.shape[0] == 3:
            pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), mode="RGB")
            out[i] = np.asarray(pil.resize((size, size), Image.LANCZOS)).transpose(2, 0, 1)
        else:
            for c in range(image.shape[0]):
                pil = Image.fromarray(np.ascontiguousarray(image[c]), mode="L")
                out[i, c] = np.asarray(pil.resize((size, size), Image.LANCZOS))
    return out


def _decode(png: bytes, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        grey = image.convert("L")
        if grey.size != (size, size):
            grey = grey.resize((size, size), Image.LANCZOS)
        return np.asarray(grey, dtype=np.uint8)


def _members_from_zip(path: Path, subset: str) -> Dict[Tuple[str, str], List[Tuple[str, bytes]]]:
    found: Dict[Tuple[str, str], List[Tuple[str, bytes]]] = {}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a readable zip archive ({err}); replace it with the official "
                         f"{subset}.zip.") from err
    with archive:
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) != 4 or parts[0] != subset or not parts[3].lower().endswith(".png"):
                continue
            found.setdefault((parts[1], parts[2]), []).append((parts[3], archive.read(name)))
    return found


def _members_from_folder(folder: Path) -> Dict[Tuple[str, str], List[Tuple[str, bytes]]]:
    found: Dict[Tuple[str, str], List[Tuple[str, bytes]]] = {}
    for png in folder.glob("*/*/*.png"):
        found.setdefault((png.parent.parent.name, png.parent.name), []).append((png.name, png.read_bytes()))
    return found


def _read_subset(root: Path, subset: str, download: bool, tried: List[Path]):
    for base in (root / "omniglot-py", root):
        archive = base / f"{subset}.zip"
        tried.append(archive)
        if archive.is_file():
            return _members_from_zip(archive, subset)
        folder = base / subset
        tried.append(folder)
        if folder.is_dir():
            return _members_from_folder(folder)
    if download and subset in ("images_background", "images_evaluation"):
        try:
            import torchvision.datasets as tvd

            tvd.Omniglot(str(root), background=subset == "images_background", download=True)
        except Exception as exc:  # any failure of the download means "not available"
            raise DatasetNotFoundError(f"Omniglot ({subset})", tried, repr(exc)) from exc
        return _members_from_folder(root / "omniglot-py" / subset)
    return None


def load_omniglot(
    dataset_root: Optional[PathLike] = None,
    subsets: Sequence[str] = ("images_background",),
    *,
    size: int = 28,
    alphabets: Optional[Sequence[str]] = None,
    exclude_alphabets: Sequence[str] = (),
    invert: bool = False,
    download: bool = True,
) -> OmniglotData:
    """Read Omniglot classes from the official archives.

    The archives are looked for as ``<root>/omniglot-py/<subset>.zip`` (or
    extracted as ``<root>/omniglot-py/<subset>/``, torchvision's layout) and
    read in memory. ``images_background`` and ``images_evaluation`` fall back
    to torchvision's download when absent; the small subsets have no download.
    A class that appears in several subsets (Greek and Latin are in both small
    subsets) is kept once.

    :param dataset_root: folder holding ``omniglot-py``; None means
        ``$AVALANCHE_NEUROMOD_DATA`` or Avalanche's default.
    :param subsets: archives to read, from :data:`OMNIGLOT_SUBSETS`.
    :param size: side length after the LANCZOS resize (TSAR: 28).
    :param alphabets: keep only these alphabets (None: all).
    :param exclude_alphabets: drop these alphabets.
    :param invert: make strokes bright on a dark background, like MNIST.
    :param download: allow torchvision's download for the two full subsets.
    :raises DatasetNotFoundError: an archive is missing.
    """
    unknown = [s for s in subsets if s not in OMNIGLOT_SUBSETS]
    if unknown or not subsets:
        raise ValueError(f"unknown Omniglot subset(s) {unknown or list(subsets)}; choose from "
                         f"{', '.join(OMNIGLOT_SUBSETS)}.")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}.")
    root = resolve_dataset_root(dataset_root, "omniglot")
    members: Dict[Tuple[str, str], List[Tuple[str, bytes]]] = {}
    for subset in subsets:
        tried: List[Path] = []
        found = _read_subset(root, subset, download, tried)
        if found is None:
            raise DatasetNotFoundError(f"Omniglot ({subset})", tried)
        for key, files in found.items():
            members.setdefault(key, files)
    keys = sorted(members)
    if alphabets is not None:
        present = {a for a, _ in keys}
        missing = sorted(set(alphabets) - present)
        if missing:
            raise ValueError(f"alphabet(s) {missing} are not in {list(subsets)}; these hold {sorted(present)}.")
        keys = [k for k in keys if k[0] in set(alphabets)]
    keys = [k for k in keys if k[0] not in set(exclude_alphabets)]
    if not keys:
        raise ValueError("no Omniglot class is left after the alphabet selection; check alphabets= and "
                         "exclude_alphabets=.")
    images, labels = [], []
    for label, key in enumerate(keys):
        for _, png in sorted(members[key]):
            images.append(_decode(png, size))
            labels.append(label)
    stacked = np.stack(images)[:, None]
    if invert:
        stacked = 255 - stacked
    return OmniglotData(
        images=torch.from_numpy(stacked),
        labels=torch.tensor(labels, dtype=torch.long),
        classes=list(keys),
        subsets=tuple(subsets),
    )


@dataclass
class MetaEpisode:
    """One meta-iteration's data: indices into the sampler's labels.

    :param class_id: the inner loop's class.
    :param inner: the class's images in the order the inner loop sees them.
    :param outer: the outer batch (random images, then the inner images).
    """

    class_id: int
    inner: np.ndarray
    outer: np.ndarray


class OmniglotMetaSampler:
    """Seeded episodes of the OML protocol over meta-training classes.

    Every episode samples one class uniformly, lists its images in a random
    order (the inner loop: ``n_inner`` images, one SGD step each), and an
    outer batch of ``n_outer`` images drawn at random without replacement
    from all classes followed by the inner images (the authors' code; the
    paper draws the random part from the *other* classes only:
    ``exclude_inner_class=True``).

    :param labels: class index of every image, shape ``(N,)``.
    :param n_inner: images per inner loop (Omniglot: all 20 of a class).
    :param n_outer: random images in the outer batch (64).
    :param exclude_inner_class: draw the random outer images from the other classes.
    :param classes: restrict the episodes to these classes (e.g. the 25 of the
        "data scarce" setting); None means every class in ``labels``.
    :param seed: seed of the episode sequence.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        *,
        n_inner: int = 20,
        n_outer: int = 64,
        exclude_inner_class: bool = False,
        classes: Optional[Sequence[int]] = None,
        seed: int = 0,
    ):
        labels = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}.")
        chosen = np.unique(labels) if classes is None else np.asarray(sorted(set(classes)), dtype=np.int64)
        missing = sorted(set(chosen.tolist()) - set(np.unique(labels).tolist()))
        if missing:
            raise ValueError(f"classes {missing[:5]} have no image in labels.")
        self.classes = chosen
        self.by_class = {int(c): np.flatnonzero(labels == c) for c in chosen}
        smallest = min(len(v) for v in self.by_class.values())
        if not 1 <= n_inner <= smallest:
            raise ValueError(f"n_inner must be between 1 and {smallest} (the smallest class), got {n_inner}.")
        self.pool = np.concatenate([self.by_class[int(c)] for c in chosen])
        if not 0 <= n_outer <= len(self.pool) - (smallest if exclude_inner_class else 0):
            raise ValueError(f"n_outer={n_outer} is more than the {len(self.pool)} images to draw from.")
        self.labels = labels
        self.n_inner = n_inner
        self.n_outer = n_outer
        self.exclude_inner_class = exclude_inner_class
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def sample(self) -> MetaEpisode:
        """Draw the next episode."""
        class_id = int(self.rng.choice(self.classes))
        inner = self.rng.permutation(self.by_class[class_id])[: self.n_inner]
        pool = self.pool
        if self.exclude_inner_class:
            pool = pool[self.labels[pool] != class_id]
        random_part = self.rng.choice(pool, size=self.n_outer, replace=False)
        return MetaEpisode(class_id, inner, np.concatenate([random_part, inner]))

    def state_dict(self) -> dict:
        """The generator's state, so a resumed run draws the same episodes.

        PCG64's 128-bit integers are stored as strings, which
        ``torch.load(weights_only=True)`` reads back.
        """
        state = self.rng.bit_generator.state
        return {"bit_generator": state["bit_generator"], "state": {k: str(v) for k, v in state["state"].items()},
                "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`.

        :param state: a dictionary from :meth:`state_dict`.
        """
        self.rng.bit_generator.state = {
            "bit_generator": state["bit_generator"],
            "state": {k: int(v) for k, v in state["state"].items()},
            "has_uint32": state["has_uint32"],
            "uinteger": state["uinteger"],
        }
