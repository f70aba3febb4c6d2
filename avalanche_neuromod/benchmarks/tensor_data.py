"""Experience data built lazily from one shared ``uint8`` base tensor.

A stream of 100 permuted MNIST experiences must not hold 100 float copies of
MNIST (18.8 GB). Each experience here keeps a reference to the shared base
images plus a *view*: the rotation angles and/or pixel permutation that define
it. The view is applied to the whole experience at once the first time a
sample is read, and the result is kept in a small process-wide cache bounded
in bytes, so only the experiences in use are ever materialised.

:class:`TensorClassificationDataset` is an ordinary Avalanche
``ClassificationDataset``; when it is a plain chain of subsets over one
:class:`LazyImageData` (the common case inside Avalanche's data loaders) it
reads samples straight from the materialised tensor, skipping Avalanche's
generic per-sample recursion. The element it returns is identical to the
generic path's.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
from avalanche.benchmarks.utils.data import AvalancheDataset, _FlatDataWithTransform
from avalanche.benchmarks.utils.data_attribute import DataAttribute
from avalanche.benchmarks.utils.flat_data import ConstantSequence, FlatData
from avalanche.benchmarks.utils.transform_groups import (
    EmptyTransformGroups,
    TransformGroups,
)

__all__ = [
    "CollatedBatch",
    "fast_collate",
    "rotate_images",
    "permute_pixels",
    "LazyImageData",
    "TensorClassificationDataset",
    "make_classification_dataset",
    "set_cache_budget",
    "cache_info",
]

CACHE_BUDGET_ENV = "AVALANCHE_NEUROMOD_CACHE_MB"


def rotate_images(
    images: torch.Tensor,
    angles: Union[float, torch.Tensor],
    interpolation: str = "nearest",
) -> torch.Tensor:
    """Rotate a batch of images counter-clockwise about their centre.

    Follows torchvision's convention (positive angle = counter-clockwise,
    corners filled with 0). With ``nearest`` interpolation the result equals
    rotating the ``uint8`` image, as PIL and Avalanche's ``RotatedMNIST`` do.

    :param images: float tensor ``(N, C, H, W)``.
    :param angles: one angle in degrees for all images, or one per image.
    :param interpolation: ``"nearest"`` (default) or ``"bilinear"``.
    """
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(
            f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}."
        )
    n, _, h, w = images.shape
    angles = torch.as_tensor(angles, dtype=torch.float64).reshape(-1)
    if angles.numel() == 1:
        if float(angles) % 360.0 == 0.0:
            return images.clone()
        angles = angles.expand(n)
    elif angles.numel() != n:
        raise ValueError(f"got {angles.numel()} angles for {n} images.")
    rad = torch.deg2rad(angles)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # Output pixel (x, y) samples the input at R(-angle) (x, y); in normalised
    # coordinates the aspect ratio enters the off-diagonal terms.
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(
        images, grid, mode=interpolation, padding_mode="zeros", align_corners=False
    )


def permute_pixels(images: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Apply one pixel permutation to every image of a batch.

    :param images: tensor ``(N, C, H, W)``; pixels are permuted within each
        channel, on the flattened ``H * W`` grid.
    :param permutation: a permutation of ``range(H * W)``.
    """
    n, c, h, w = images.shape
    if permutation.numel() != h * w:
        raise ValueError(
            f"permutation has {permutation.numel()} entries for {h}x{w} images."
        )
    flat = images.reshape(n, c, h * w)
    return flat[:, :, permutation].reshape(n, c, h, w)


_ROTATION_CHUNK = 4096


def _gather_pixels(images: torch.Tensor, pixel_map: torch.Tensor) -> torch.Tensor:
    """``out[..., p] = images[..., pixel_map[p]]``, 0 where ``pixel_map`` is -1."""
    n, c, h, w = images.shape
    # numpy's take is about 4x faster than torch's advanced indexing here.
    flat = images.reshape(n, c, h * w).numpy()
    out = np.take(flat, pixel_map.clamp(min=0).numpy(), axis=2)
    outside = (pixel_map < 0).numpy()
    if outside.any():
        out[:, :, outside] = 0
    return torch.from_numpy(out).reshape(n, c, h, w)


class CollatedBatch(list):
    """A mini-batch that :meth:`TensorClassificationDataset.__getitems__` already collated."""


def fast_collate(batch: Sequence[Any]) -> Any:
    """Collate ``[image, label, task label]`` items; anything else goes to torch.

    Equal to ``torch.utils.data.default_collate`` on such items, without its
    per-element type dispatch. A :class:`CollatedBatch` passes through.

    :param batch: the items of one mini-batch.
    """
    if isinstance(batch, CollatedBatch):
        return list(batch)
    first = batch[0]
    if type(first) is list and first and set(map(type, batch)) == {list}:
        width = len(first)
        # set(map(...)) checks every item at C speed, unlike a Python loop.
        if set(map(len, batch)) == {width}:
            columns = list(zip(*batch))
            if set(map(type, columns[0])) == {torch.Tensor} and all(
                set(map(type, col)) == {int} for col in columns[1:]
            ):
                return [torch.stack(columns[0])] + [torch.tensor(col) for col in columns[1:]]
    return default_collate(batch)


class _MaterialisedCache:
    """Process-wide LRU of materialised experiences, bounded in bytes."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        # Each entry: the materialised tensor and its rows as a tuple of views
        # (indexing a tuple is 20x cheaper than indexing the tensor per sample).
        # The owner holds its rows in `_hot_rows` while cached, so reading a
        # sample skips the lock; eviction clears it through the weak reference.
        self._items: "OrderedDict[int, Tuple[torch.Tensor, Tuple[torch.Tensor, ...], Any]]" = OrderedDict()
        self._lock = threading.Lock()
        # Keys of collected owners. Finalizers run inside garbage collection,
        # possibly while this thread holds the lock: they only append here
        # (atomic, lock-free) and the next get/put removes the entries.
        self._dead: List[int] = []
        self.hits = 0
        self.misses = 0

    def _purge_dead(self) -> None:
        while self._dead:
            key = self._dead.pop()
            entry = self._items.get(key)
            if entry is not None and entry[2]() is None:  # the id may have been reused
                del self._items[key]

    def get(self, owner: "LazyImageData"):
        with self._lock:
            self._purge_dead()
            entry = self._items.get(id(owner))
            if entry is not None:
                self._items.move_to_end(id(owner))
                self.hits += 1
            return entry

    def put(self, owner: "LazyImageData", tensor: torch.Tensor):
        entry = (tensor, tensor.unbind(0), weakref.ref(owner))
        with self._lock:
            self._purge_dead()
            self.misses += 1
            key = id(owner)
            if getattr(owner, "_cache_finalizer", None) is None:
                # once per owner: its entry leaves the cache when it is collected
                owner._cache_finalizer = weakref.finalize(owner, self._drop, key)
            self._items[key] = entry
            self._items.move_to_end(key)
            while len(self._items) > 1 and self.nbytes > self.budget_bytes:
                _, (_, _, ref) = self._items.popitem(last=False)
                evicted = ref()
                if evicted is not None:
                    evicted._hot_rows = None
        owner._hot_rows = entry[1]
        return entry

    def _drop(self, key: int) -> None:
        self._dead.append(key)

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t, _, _ in list(self._items.values()))

    def clear(self) -> None:
        with self._lock:
            for _, _, ref in self._items.values():
                owner = ref()
                if owner is not None:
                    owner._hot_rows = None
            self._items.clear()


_CACHE = _MaterialisedCache(int(float(os.environ.get(CACHE_BUDGET_ENV, 320)) * 2**20))


def set_cache_budget(megabytes: float) -> None:
    """Set how much memory materialised experiences may occupy together.

    The default is 320 MB (``$AVALANCHE_NEUROMOD_CACHE_MB`` overrides it):
    one MNIST training experience (188 MB as float) plus four test
    experiences. Evicted experiences are recomputed when read again.
    The experience being read is always kept, whatever the budget.

    :param megabytes: the new budget.
    """
    if megabytes <= 0:
        raise ValueError(f"the cache budget must be positive, got {megabytes} MB.")
    _CACHE.budget_bytes = int(megabytes * 2**20)


def cache_info() -> dict:
    """Entries, bytes, hits and misses of the materialisation cache."""
    with _CACHE._lock:
        _CACHE._purge_dead()
    return {
        "entries": len(_CACHE._items),
        "bytes": _CACHE.nbytes,
        "budget_bytes": _CACHE.budget_bytes,
        "hits": _CACHE.hits,
        "misses": _CACHE.misses,
    }


class LazyImageData(Dataset):
    """One experience's samples: a view of a shared ``uint8`` image tensor.

    Materialisation, in this order: select ``indices`` of the base, scale to
    [0, 1], rotate by ``angles``, normalise with ``mean``/``std``, permute
    pixels with ``permutation``, repeat to ``channels`` channels, flatten if
    asked. Items are ``(image, label)`` with ``label`` a Python int.

    :param images: shared base, ``uint8`` ``(N, C, H, W)``; never copied.
    :param labels: ``int64`` labels of the base, shape ``(N,)``.
    :param indices: which base samples this experience holds, in order;
        None means all.
    :param angles: rotation in degrees, one value or one per selected sample.
    :param permutation: a permutation of the ``H * W`` pixel positions.
    :param mean: normalisation mean (None: no normalisation).
    :param std: normalisation standard deviation.
    :param channels: repeat a grey image to this many channels.
    :param flatten: return vectors instead of images.
    :param interpolation: rotation interpolation, ``nearest`` or ``bilinear``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: Optional[torch.Tensor] = None,
        *,
        angles: Union[None, float, torch.Tensor] = None,
        permutation: Optional[torch.Tensor] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        channels: Optional[int] = None,
        flatten: bool = False,
        interpolation: str = "nearest",
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}."
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}."
            )
        self.images = images
        self.base_labels = labels
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.labels = labels if self.indices is None else labels[self.indices]
        self._labels_list = self.labels.tolist()
        self.angles = angles
        if isinstance(angles, torch.Tensor) and angles.numel() > 1:
            if angles.numel() != len(self.labels):
                raise ValueError(
                    f"got {angles.numel()} angles for {len(self.labels)} samples."
                )
        self.permutation = permutation
        self.mean = mean
        self.std = std
        self.channels = channels
        self.flatten = flatten
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self._labels_list)

    @property
    def sample_shape(self) -> Tuple[int, ...]:
        """Shape of one materialised sample."""
        _, c, h, w = self.images.shape
        c = self.channels or c
        return (c * h * w,) if self.flatten else (c, h, w)

    def _pixel_map(self) -> Optional[torch.Tensor]:
        """Source pixel of every output pixel for a fixed nearest rotation
        followed by the permutation (-1: outside the rotated image, filled 0)."""
        if "_pixel_map_cache" not in self.__dict__:
            _, _, h, w = self.images.shape
            pixel_map = None
            if self.angles is not None and float(torch.as_tensor(self.angles)) % 360.0 != 0.0:
                # Rotating an image of (index + 1) values with nearest sampling
                # yields, per output pixel, the input pixel it copies (0: fill).
                ids = torch.arange(1, h * w + 1, dtype=torch.float64).reshape(1, 1, h, w)
                pixel_map = rotate_images(ids, self.angles, "nearest").reshape(-1).long() - 1
            if self.permutation is not None:
                perm = torch.as_tensor(self.permutation, dtype=torch.long)
                pixel_map = perm if pixel_map is None else pixel_map[perm]
            self._pixel_map_cache = pixel_map
        return self._pixel_map_cache

    def materialise(self, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Compute float samples without touching the cache.

        :param positions: positions within this experience; None means all.
        """
        idx = self.indices
        angles = self.angles
        if positions is not None:
            positions = torch.as_tensor(positions, dtype=torch.long)
            idx = positions if idx is None else idx[positions]
            if isinstance(angles, torch.Tensor) and angles.numel() > 1:
                angles = angles[positions]
        x = self.images if idx is None else self.images[idx]
        per_sample = isinstance(angles, torch.Tensor) and angles.numel() > 1
        if not per_sample and self.interpolation == "nearest":
            # A fixed nearest rotation and a permutation are both pixel
            # gathers: do them on uint8, before the 4x larger float copy.
            pixel_map = self._pixel_map()
            if pixel_map is not None:
                x = _gather_pixels(x, pixel_map)
            x = x.float().div_(255.0)
            x = self._normalise(x)
        else:
            x = x.float().div_(255.0)
            if angles is not None:
                x = torch.cat(
                    [
                        rotate_images(
                            x[i : i + _ROTATION_CHUNK],
                            angles[i : i + _ROTATION_CHUNK] if per_sample else angles,
                            self.interpolation,
                        )
                        for i in range(0, len(x), _ROTATION_CHUNK)
                    ]
                ) if len(x) else x
            x = self._normalise(x)
            if self.permutation is not None:
                x = permute_pixels(x, self.permutation)
        if self.channels is not None and self.channels != x.shape[1]:
            x = x.expand(-1, self.channels, -1, -1)
        if self.flatten:
            x = x.reshape(x.shape[0], -1)
        return x.contiguous()

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        mean = torch.as_tensor(self.mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype).reshape(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    collate_fn = staticmethod(fast_collate)
    """Picked up by Avalanche's datasets built on this one."""

    _hot_rows: Optional[Tuple[torch.Tensor, ...]] = None

    def _entry(self):
        entry = _CACHE.get(self)
        if entry is None:
            entry = _CACHE.put(self, self.materialise())
        return entry

    def tensor(self) -> torch.Tensor:
        """All samples of this experience, materialised once and cached."""
        return self._entry()[0]

    def rows(self) -> Tuple[torch.Tensor, ...]:
        """The samples as a tuple of views of :meth:`tensor`."""
        rows = self._hot_rows
        return rows if rows is not None else self._entry()[1]

    def __getstate__(self):
        state = dict(self.__dict__)
        for transient in ("_hot_rows", "_pixel_map_cache", "_cache_finalizer"):
            state.pop(transient, None)
        return state

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return self.rows()[i], self._labels_list[i]


def _is_identity(groups: Any) -> bool:
    if groups is None or isinstance(groups, EmptyTransformGroups):
        return True
    if isinstance(groups, TransformGroups):
        return all(t is None for t in groups.transform_groups.values())
    return False


def _constant_value(seq: Any) -> Optional[int]:
    """The single value of a constant sequence built by Avalanche, else None."""
    if isinstance(seq, DataAttribute):
        return _constant_value(seq.data)
    if isinstance(seq, ConstantSequence):
        return seq[0] if len(seq) else None
    if isinstance(seq, FlatData) and len(seq._datasets) == 1:
        return _constant_value(seq._datasets[0])
    return None


def _walk_chain(flat: Any):
    """Follow single-dataset links down to a :class:`LazyImageData`.

    :return: ``(leaf, index mapping or None, transform-free)``, or None when
        the chain branches (concatenations) or ends elsewhere.
    """
    mapping: Optional[np.ndarray] = None
    identity = True
    node: Any = flat
    while not isinstance(node, LazyImageData):
        if isinstance(node, AvalancheDataset):
            node = node._flat_data
            continue
        if not isinstance(node, _FlatDataWithTransform) or len(node._datasets) != 1:
            return None
        identity = identity and _is_identity(node._transform_groups) and _is_identity(
            node._frozen_transform_groups
        )
        if node._indices is not None:
            local = np.asarray(node._indices, dtype=np.int64)
            mapping = local if mapping is None else local[mapping]
        node = node._datasets[0]
    return node, mapping, identity


class TensorClassificationDataset(ClassificationDataset):
    """An Avalanche ``ClassificationDataset`` with a direct read path.

    Everything Avalanche does with datasets (subset, concat, transform groups,
    data attributes) works as usual. When the dataset is a chain of
    transform-free subsets over a single :class:`LazyImageData`, items are
    read straight from its materialised tensor: same values, a fraction of
    the per-sample cost.
    """

    _direct_for: Any = None
    _direct: Any = None

    @property
    def lazy_source(self) -> Optional[LazyImageData]:
        """The :class:`LazyImageData` this dataset is a chain of subsets of, if any."""
        chain = _walk_chain(self._flat_data)
        return None if chain is None else chain[0]

    def _resolve_direct(self):
        flat = self._flat_data
        if self._direct_for is flat:
            return self._direct
        self._direct_for, self._direct = flat, None
        getitem_attrs = [a for a in self._data_attributes.values() if a.use_in_getitem]
        task_label = None
        if getitem_attrs:
            if len(getitem_attrs) != 1 or getitem_attrs[0].name != "targets_task_labels":
                return None
            task_label = _constant_value(getitem_attrs[0])
            if task_label is None:
                return None
        chain = _walk_chain(flat)
        if chain is None or not chain[2]:
            return None
        leaf, mapping, _ = chain
        self._direct = (leaf, None if mapping is None else mapping.tolist(), task_label)
        return self._direct

    def subset(self, indices):
        # Avalanche's task-balanced loader takes subset(range(len)) every
        # epoch: the same dataset, so skip the extra index layer it would add.
        if isinstance(indices, range) and indices == range(len(self)):
            return self
        return super().subset(indices)

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """A whole mini-batch at once (PyTorch's ``DataLoader`` calls this).

        On the direct path the batch is gathered with one tensor index and
        returned already collated; otherwise the items are read one by one.
        """
        direct = self._resolve_direct()
        if direct is None or self.collate_fn is not fast_collate:
            return [self[i] for i in indices]
        leaf, mapping, task_label = direct
        positions = torch.as_tensor(indices if mapping is None else [mapping[i] for i in indices], dtype=torch.long)
        batch = [leaf.tensor()[positions], leaf.labels[positions]]
        if task_label is not None:
            batch.append(torch.full((len(positions),), task_label, dtype=torch.long))
        return CollatedBatch(batch)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            direct = self._resolve_direct()
            if direct is not None:
                leaf, mapping, task_label = direct
                j = idx if mapping is None else mapping[idx]
                x, y = leaf.rows()[j], leaf._labels_list[j]
                return [x, y] if task_label is None else [x, y, task_label]
        return super().__getitem__(idx)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_direct_for", None)
        state.pop("_direct", None)
        return state


def make_classification_dataset(
    data: LazyImageData,
    task_label: Optional[int] = None,
    train_transform: Any = None,
    eval_transform: Any = None,
) -> TensorClassificationDataset:
    """Wrap a :class:`LazyImageData` as an Avalanche classification dataset.

    :param data: the experience's samples.
    :param task_label: the task label appended to every item (Avalanche's
        ``targets_task_labels``); None adds no task-label attribute.
    :param train_transform: optional per-sample transform of the train group.
    :param eval_transform: optional per-sample transform of the eval group.
    """
    attributes = [DataAttribute(data._labels_list, "targets")]
    if task_label is not None:
        attributes.append(
            DataAttribute(
                ConstantSequence(int(task_label), len(data)),
                "targets_task_labels",
                use_in_getitem=True,
            )
        )
    groups = None
    if train_transform is not None or eval_transform is not None:
        groups = TransformGroups({"train": train_transform, "eval": eval_transform})
    return TensorClassificationDataset(
        [data], data_attributes=attributes, transform_groups=groups
    )
