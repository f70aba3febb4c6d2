"""Experience data built lazily from one shared ``uint8`` base tensor.

A stream of 100 permuted MNIST experiences must not hold 100 float copies of
MNIST (18.8 GB). Each experience keeps a reference to the shared base images
plus a *view*: the rotation angles and/or pixel permutation that define it.

Two read paths give identical samples:

- **whole mini-batches** (``__getitems__``, which PyTorch's ``DataLoader``
  calls): the view is applied to just the batch's rows of the ``uint8`` base,
  so a fresh experience costs nothing before its first batch. The batch is
  handed back as a :class:`SampleBatch`, a sequence of ordinary samples that
  any collate function accepts and :func:`fast_collate` takes apart without
  splitting it;
- **single samples** (``dataset[i]``, which Avalanche's multi-task loaders
  call through ``torch.utils.data.ConcatDataset``, one index at a time): the
  first :data:`MATERIALISE_AFTER` reads compute just their sample; after
  that the experience is materialised once and its rows are served as views.
  A small store bounded in bytes keeps the most recently materialised
  experiences; older ones are dropped. A dropped experience is materialised
  again only once it has had :data:`REMATERIALISE_FRACTION` of its length in
  single reads since: readers that interleave many experiences (a replay
  buffer, joint training over all tasks) would otherwise recompute whole
  experiences for a few samples each, over and over.

:class:`TensorClassificationDataset` is an ordinary Avalanche task-aware
classification dataset (``task_set``, subsets, concatenation, transform
groups and data attributes all work); when it is a plain chain of subsets over
one :class:`LazyImageData` it reads from it directly, skipping Avalanche's
per-sample recursion.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence as SequenceABC
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from avalanche.benchmarks.utils.classification_dataset import (
    ClassificationDataset,
    TaskAwareSupervisedClassificationDataset,
)
from avalanche.benchmarks.utils.data import AvalancheDataset, _FlatDataWithTransform
from avalanche.benchmarks.utils.data_attribute import DataAttribute
from avalanche.benchmarks.utils.flat_data import ConstantSequence, FlatData
from avalanche.benchmarks.utils.transform_groups import (
    EmptyTransformGroups,
    TransformGroups,
)

__all__ = [
    "SampleBatch",
    "fast_collate",
    "rotate_images",
    "permute_pixels",
    "LazyImageData",
    "TensorClassificationDataset",
    "make_classification_dataset",
    "set_cache_budget",
    "cache_info",
    "MATERIALISE_AFTER",
    "REMATERIALISE_FRACTION",
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
    _require_batch(images, "rotate_images")
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


def _require_batch(images: torch.Tensor, owner: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{owner} expects a batch of images (N, C, H, W); got {shape}. Fix: add the missing "
                         f"axes, e.g. images.unsqueeze(1) for (N, H, W) or images[None, None] for one (H, W) image.")


def permute_pixels(images: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Apply one pixel permutation to every image of a batch.

    :param images: tensor ``(N, C, H, W)``; pixels are permuted within each
        channel, on the flattened ``H * W`` grid.
    :param permutation: a permutation of ``range(H * W)``.
    """
    _require_batch(images, "permute_pixels")
    n, c, h, w = images.shape
    if permutation.numel() != h * w:
        raise ValueError(
            f"permutation has {permutation.numel()} entries for {h}x{w} images."
        )
    flat = images.reshape(n, c, h * w)
    return flat[:, :, permutation].reshape(n, c, h, w)


_ROTATION_CHUNK = 4096
# Rows per step when a whole experience is materialised: the uint8 and float
# copies of one step stay in the CPU caches.
_MATERIALISE_CHUNK = 2048
#: Single-sample reads of an experience computed one by one before it is
#: materialised whole: a few reads (a user peeking, one batch of a
#: sample-wise loader) cost no float copy; a loader that reads the whole
#: experience one sample at a time switches to materialised rows.
MATERIALISE_AFTER = 512

#: Once the store has dropped an experience, several experiences compete for
#: its budget. Materialising costs about as much as computing a fifth of the
#: experience's samples one by one (60,000 permuted MNIST images: ~0.18 s
#: against ~15 us per single read, on 2 cores), so a dropped experience is
#: materialised again only after that many single reads since the drop (and
#: at least :data:`MATERIALISE_AFTER`): never much more than twice the cost
#: of the better choice made in hindsight.
REMATERIALISE_FRACTION = 1 / 5


class SampleBatch(SequenceABC):
    """A mini-batch read in one go, handed out as its samples.

    This is what :meth:`TensorClassificationDataset.__getitems__` returns:
    PyTorch's contract for ``__getitems__`` is a sequence of samples, and
    item ``i`` is exactly ``dataset[indices[i]]`` (``[image, label]`` or
    ``[image, label, task label]``, labels as Python ints), so torch's
    ``default_collate`` or any user collate function works on it unchanged.
    :func:`fast_collate` recognises it and returns its columns directly.

    :param columns: the batch's images ``(B, ...)``, labels ``(B,)`` and, if
        any, task labels ``(B,)``.
    """

    __slots__ = ("columns",)

    def __init__(self, columns: Sequence[torch.Tensor]):
        self.columns = list(columns)

    def __len__(self) -> int:
        return int(self.columns[1].shape[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        image = self.columns[0][i]  # raises IndexError past the end, ending iteration
        return [image] + [int(column[i]) for column in self.columns[1:]]

    def __repr__(self) -> str:
        return f"SampleBatch(size={len(self)}, image_shape={tuple(self.columns[0].shape[1:])})"


def fast_collate(batch: Sequence[Any]) -> Any:
    """Collate ``[image, label, task label]`` items; anything else goes to torch.

    Equal to ``torch.utils.data.default_collate`` on such items, without its
    per-element type dispatch. A :class:`SampleBatch` gives its columns as
    they are (no split and re-stack).

    :param batch: the items of one mini-batch.
    """
    if isinstance(batch, SampleBatch):
        return list(batch.columns)
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


class _RowStore:
    """Materialised experiences for single-sample reads, bounded in bytes.

    Least recently materialised first out. Each owner holds its own rows
    (``owner._held``); the store only remembers, through weak references, who
    holds how many bytes, and takes the rows back from the oldest owners when
    the budget is exceeded. Owners that were garbage-collected simply drop out.
    """

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._owners: "OrderedDict[int, Tuple[weakref.ref, int]]" = OrderedDict()
        self._lock = threading.Lock()
        self.materialised = 0

    def add(self, owner: "LazyImageData", nbytes: int) -> None:
        with self._lock:
            self.materialised += 1
            self._owners[id(owner)] = (weakref.ref(owner), nbytes)
            self._owners.move_to_end(id(owner))
            self._prune()

    def _prune(self) -> None:
        for key, (ref, _) in list(self._owners.items()):
            if ref() is None:
                del self._owners[key]
        while len(self._owners) > 1 and self.nbytes > self.budget_bytes:
            _, (ref, _) = self._owners.popitem(last=False)
            evicted = ref()
            if evicted is not None:
                evicted._drop()

    @property
    def nbytes(self) -> int:
        return sum(n for ref, n in self._owners.values() if ref() is not None)

    def clear(self) -> None:
        with self._lock:
            for ref, _ in self._owners.values():
                owner = ref()
                if owner is not None:
                    owner._held = None
            self._owners.clear()


_STORE = _RowStore(int(float(os.environ.get(CACHE_BUDGET_ENV, 320)) * 2**20))


def set_cache_budget(megabytes: float) -> None:
    """Set how much memory materialised experiences may occupy together.

    Only single-sample reads (``dataset[i]``, as Avalanche's multi-task
    loaders do) materialise an experience; whole-batch reads never do. The
    default is 320 MB (``$AVALANCHE_NEUROMOD_CACHE_MB`` overrides it): one
    MNIST training experience (188 MB as float) plus four test experiences.
    Dropped experiences are recomputed when read again. The experience being
    read is always kept, whatever the budget.

    :param megabytes: the new budget.
    """
    if megabytes <= 0:
        raise ValueError(f"the cache budget must be positive, got {megabytes} MB.")
    with _STORE._lock:
        _STORE.budget_bytes = int(megabytes * 2**20)
        _STORE._prune()


def cache_info() -> dict:
    """Experiences held for single-sample reads: how many, their bytes, the budget,
    and how many materialisations happened so far."""
    with _STORE._lock:
        _STORE._prune()
        return {
            "entries": len(_STORE._owners),
            "bytes": _STORE.nbytes,
            "budget_bytes": _STORE.budget_bytes,
            "materialised": _STORE.materialised,
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

    def _pixel_map(self) -> Optional[np.ndarray]:
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
            self._pixel_map_cache = None if pixel_map is None else pixel_map.numpy()
        return self._pixel_map_cache

    def _base_indices(self, positions: Optional[Any]) -> Optional[np.ndarray]:
        """Rows of the base for ``positions`` of this experience (None: all, in order)."""
        if positions is None:
            return None if self.indices is None else self.indices.numpy()
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        return positions if self.indices is None else self.indices.numpy()[positions]

    def materialise(self, positions: Optional[Any] = None) -> torch.Tensor:
        """Compute float samples from the ``uint8`` base (nothing is cached).

        :param positions: positions within this experience (a sequence or
            tensor of ints); None means all of them.
        """
        rows = self._base_indices(positions)
        n = len(self) if rows is None else len(rows)
        angles = self.angles
        per_sample = isinstance(angles, torch.Tensor) and angles.numel() > 1
        if per_sample and positions is not None:
            angles = angles[torch.as_tensor(np.asarray(positions, dtype=np.int64).reshape(-1))]
        if not per_sample and self.interpolation == "nearest":
            if n <= _MATERIALISE_CHUNK:
                x = self._gather_view(rows)
            else:
                # Whole experiences go chunk by chunk into one output tensor.
                chunk_rows = np.arange(len(self.images)) if rows is None else rows
                x = torch.empty((n,) + tuple(self.images.shape[1:]), dtype=torch.float32)
                for lo in range(0, n, _MATERIALISE_CHUNK):
                    x[lo : lo + _MATERIALISE_CHUNK] = self._gather_view(chunk_rows[lo : lo + _MATERIALISE_CHUNK])
        else:
            x = self.images if rows is None else self.images[torch.from_numpy(rows)]
            x = x.float().div_(255.0)
            if angles is not None and len(x):
                x = torch.cat(
                    [
                        rotate_images(
                            x[i : i + _ROTATION_CHUNK],
                            angles[i : i + _ROTATION_CHUNK] if per_sample else angles,
                            self.interpolation,
                        )
                        for i in range(0, len(x), _ROTATION_CHUNK)
                    ]
                )
            x = self._normalise(x)
            if self.permutation is not None:
                x = permute_pixels(x, torch.as_tensor(self.permutation, dtype=torch.long))
        return self._finish(x)

    def _gather_view(self, rows: Optional[np.ndarray]) -> torch.Tensor:
        """A fixed nearest rotation and a permutation are both pixel gathers:
        do them on the ``uint8`` rows, before the 4x larger float copy."""
        n_base, c, h, w = self.images.shape
        base = self.images.numpy().reshape(n_base, c, h * w)
        x = base if rows is None else base[rows]
        pixel_map = self._pixel_map()
        if pixel_map is not None:
            # numpy's take is several times faster than torch's indexing here.
            x = np.take(x, np.maximum(pixel_map, 0), axis=2)
            outside = pixel_map < 0
            if outside.any():
                x[:, :, outside] = 0
        x = torch.from_numpy(np.ascontiguousarray(x)).reshape(-1, c, h, w).float().div_(255.0)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        mean = torch.as_tensor(self.mean, dtype=x.dtype).reshape(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype).reshape(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and self.channels != x.shape[1]:
            x = x.expand(-1, self.channels, -1, -1)
        if self.flatten:
            x = x.reshape(x.shape[0], -1)
        return x.contiguous()

    collate_fn = staticmethod(fast_collate)
    """Picked up by Avalanche's datasets built on this one."""

    _held: Optional[Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]] = None
    """The materialised tensor and its rows, while the store keeps them."""

    def _materialised(self) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        held = self._held
        if held is None:
            tensor = self.materialise()
            # Indexing a tuple of views is 20x cheaper than indexing the tensor.
            held = self._held = (tensor, tensor.unbind(0))
            _STORE.add(self, tensor.element_size() * tensor.numel())
        return held

    _single_reads: int = 0
    """Single reads since this experience was created or last dropped by the store."""

    drops: int = 0
    """How many times the store dropped this experience's materialised rows."""

    def _drop(self) -> None:
        self._held = None
        self._single_reads = 0
        self.drops += 1

    def _reads_before_materialising(self) -> int:
        if self.drops == 0:
            return MATERIALISE_AFTER
        return max(MATERIALISE_AFTER, int(len(self) * REMATERIALISE_FRACTION))

    def sample(self, position: int) -> torch.Tensor:
        """The image at ``position``, by the single-sample rule of the module doc.

        :param position: a position within this experience.
        """
        held = self._held
        if held is not None:
            return held[1][position]
        if not -len(self) <= position < len(self):
            raise IndexError(f"position {position} is out of range for {len(self)} samples.")
        self._single_reads += 1
        if self._single_reads > self._reads_before_materialising():
            return self._materialised()[1][position]
        return self._compute_one(position % len(self))

    def _compute_one(self, position: int) -> torch.Tensor:
        """One sample computed on its own: ``materialise([position])[0]``, without its batch machinery
        where the view is a pixel gather (a fixed nearest rotation and/or a permutation)."""
        per_sample = isinstance(self.angles, torch.Tensor) and self.angles.numel() > 1
        if per_sample or self.interpolation != "nearest":
            return self.materialise([position])[0]
        plan = self.__dict__.get("_single_plan")
        if plan is None:
            n_base, c, h, w = self.images.shape
            pixel_map = self._pixel_map()
            outside = None if pixel_map is None or not (pixel_map < 0).any() else pixel_map < 0
            # A pixel takes one of 256 values: its float value per channel, computed by the very
            # operations of the batch path, is looked up (the same bits, a fraction of the cost).
            levels = torch.arange(256, dtype=torch.float32).div_(255.0).reshape(1, 1, 1, 256).repeat(1, c, 1, 1)
            plan = self._single_plan = (
                self.images.numpy().reshape(n_base, c, h * w),
                None if pixel_map is None else np.maximum(pixel_map, 0),
                outside,
                self._normalise(levels).reshape(c, 256).numpy(),
                np.arange(c)[:, None],
                (1, c, h, w),
                None if self.indices is None else self.indices.tolist(),
            )
        base, pixel_map, outside, lookup, channels, shape, rows = plan
        x = base[position if rows is None else rows[position]]
        if pixel_map is not None:
            x = x[:, pixel_map]
        x = lookup[channels, x]
        if outside is not None:
            x[:, outside] = lookup[:, :1]
        return self._finish(torch.from_numpy(x).reshape(shape))[0]

    def rows(self) -> Tuple[torch.Tensor, ...]:
        """Every sample as a view of one materialised tensor (for single-sample reads).

        Materialised on first use and kept while the store's budget allows
        (:func:`set_cache_budget`).
        """
        return self._materialised()[1]

    def batch(self, positions: Any) -> torch.Tensor:
        """The samples at ``positions``, as one tensor.

        Cut from the materialised tensor when this experience holds one,
        else computed from the ``uint8`` base for just these positions.

        :param positions: positions within this experience.
        """
        held = self._held
        if held is not None:
            return held[0][torch.as_tensor(positions, dtype=torch.long)]
        return self.materialise(positions)

    def __getstate__(self):
        state = dict(self.__dict__)
        for transient in ("_held", "_pixel_map_cache", "_single_reads"):
            state.pop(transient, None)
        return state

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return self.sample(i), self._labels_list[i]


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


class TensorClassificationDataset(TaskAwareSupervisedClassificationDataset, ClassificationDataset):
    """An Avalanche task-aware classification dataset with a direct read path.

    The same kind of dataset as the experiences of Avalanche's classic
    benchmarks (``targets``, ``targets_task_labels``, ``task_set``), so every
    Avalanche strategy and plugin accepts it; subsets, concatenation,
    transform groups and data attributes work as usual. When the dataset is a
    chain of transform-free subsets over a single :class:`LazyImageData`,
    items are read straight from it: same values, a fraction of the cost.
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
        self._direct = (leaf, mapping, None if mapping is None else mapping.tolist(), task_label)
        return self._direct

    def subset(self, indices):
        # Avalanche's task-balanced loader takes subset(range(len)) every
        # epoch: the same dataset, so skip the extra index layer it would add.
        if isinstance(indices, range) and indices == range(len(self)):
            return self
        return super().subset(indices)

    def __getitems__(self, indices: Sequence[int]) -> Sequence[Any]:
        """The samples at ``indices`` (PyTorch's ``DataLoader`` calls this per mini-batch).

        On the direct path the whole batch is read at once, from the ``uint8``
        base, and returned as a :class:`SampleBatch`; otherwise the samples
        are read one by one. Either way item ``i`` equals ``self[indices[i]]``.

        :param indices: positions in this dataset.
        """
        direct = self._resolve_direct()
        if direct is None:
            return [self[i] for i in indices]
        leaf, mapping, _, task_label = direct
        positions = np.asarray(indices, dtype=np.int64)
        if len(positions) and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"indices out of range for a dataset of {len(self)} samples.")
        positions = positions % max(len(self), 1)
        if mapping is not None:
            positions = mapping[positions]
        labels = leaf.labels[torch.from_numpy(positions)]
        columns = [leaf.batch(positions), labels]
        if task_label is not None:
            columns.append(torch.full_like(labels, task_label))
        return SampleBatch(columns)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            direct = self._resolve_direct()
            if direct is not None:
                leaf, _, mapping, task_label = direct
                j = idx if mapping is None else mapping[idx]
                x, y = leaf.sample(j), leaf._labels_list[j]
                return [x, y] if task_label is None else [x, y, task_label]
        return super().__getitem__(idx)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_direct_for", None)
        state.pop("_direct", None)
        return state


def make_classification_dataset(
    data: LazyImageData,
    task_label: int = 0,
    train_transform: Any = None,
    eval_transform: Any = None,
) -> TensorClassificationDataset:
    """Wrap a :class:`LazyImageData` as an Avalanche classification dataset.

    :param data: the experience's samples.
    :param task_label: the task label appended to every item (Avalanche's
        ``targets_task_labels``).
    :param train_transform: optional per-sample transform of the train group.
    :param eval_transform: optional per-sample transform of the eval group.
    """
    attributes = [
        DataAttribute(data._labels_list, "targets"),
        DataAttribute(
            ConstantSequence(int(task_label), len(data)), "targets_task_labels", use_in_getitem=True
        ),
    ]
    groups = None
    if train_transform is not None or eval_transform is not None:
        groups = TransformGroups({"train": train_transform, "eval": eval_transform})
    return TensorClassificationDataset(
        [data], data_attributes=attributes, transform_groups=groups
    )
