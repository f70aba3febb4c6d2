"""Input checks at a model's boundary: a wrong batch fails early and names the fix.

Every public model of the package checks its inputs and task labels here
before computing anything, so a user who feeds a 3x32x32 batch to a network
built for 1x28x28 reads what the model expects, what it received and what to
change (a constructor argument, or the stream that gives the right images)
instead of a matrix-product error from inside a layer.

The checks read only shapes and dtypes: no device synchronisation, no
reductions, so they cost the same on every forward pass whatever the batch.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["STREAM_IMAGE_SHAPES", "check_features", "check_images", "check_dtype", "check_task_labels",
           "check_class_targets", "as_task_labels"]

STREAM_IMAGE_SHAPES: Dict[Tuple[int, ...], Tuple[str, ...]] = {
    (1, 28, 28): ("RotatedMNIST", "PermutedMNIST", "MNIST360", "SplitMNIST(channels=1)"),
    (3, 28, 28): ("SplitMNIST(channels=3)",),
    (3, 32, 32): ("SplitCIFAR100", "SeqSVHN"),
}
"""The image shape each stream of :mod:`avalanche_neuromod.benchmarks` gives.

Text only (a model never imports a stream); a module adding a stream adds
its shape here so that the errors point to it.
"""


def _shape(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _streams_with(per_sample: Optional[int] = None, channels: Optional[int] = None) -> str:
    """The known streams whose images have ``per_sample`` values or ``channels`` channels, as text."""
    found = [f"{'x'.join(map(str, shape))} images: {', '.join(names[:-1]) + ' or ' if len(names) > 1 else ''}"
             f"{names[-1]}"
             for shape, names in STREAM_IMAGE_SHAPES.items()
             if (per_sample is None or math.prod(shape) == per_sample)
             and (channels is None or shape[0] == channels)]
    return "; ".join(found)


def _require_tensor(x: Any, owner: str, what: str = "input batch") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} takes its {what} as a torch.Tensor, got {type(x).__name__}. "
                        f"Fix: convert it with torch.as_tensor(...).")


def check_features(x: torch.Tensor, features: int, *, owner: str, argument: str = "input_size",
                   flat: bool = False) -> None:
    """Check a batch for a fully connected model: ``(B, ...)`` with ``features`` values per sample.

    ``(B, 1, 28, 28)`` and ``(B, 784)`` both pass for ``features=784``: the
    model flattens each sample.

    :param x: the batch.
    :param features: values per sample the model was built for.
    :param owner: the model's name as the user built it, e.g. ``"NeuroModNet(input_size=784)"``.
    :param argument: the constructor argument that sets ``features``.
    :param flat: require ``(B, features)`` exactly (a layer, which does not flatten).
    :raises ValueError: naming the expected and the received shape and the fix.
    """
    _require_tensor(x, owner)
    if flat and x.dim() > 2 and math.prod(x.shape[1:]) == features:
        raise ValueError(f"{owner} expects (B, {features}); got shape {_shape(x.shape)}. "
                         f"Fix: flatten each sample, x.reshape(x.shape[0], -1).")
    if x.dim() < 2:
        raise ValueError(
            f"{owner} expects a batch (B, {features}) or (B, ...) with {features} values per sample; "
            f"got shape {_shape(x.shape)}, which has no batch dimension. Fix: add one with x.unsqueeze(0)."
        )
    per_sample = math.prod(x.shape[1:])
    if per_sample == features:
        return
    expected = f"(B, {features})"
    if not flat:
        expected += "".join(" or (B, " + ", ".join(map(str, shape)) + ")" for shape in STREAM_IMAGE_SHAPES
                            if math.prod(shape) == features)
    fix = f"build it with {argument}={per_sample} for these inputs"
    received = _streams_with(per_sample=per_sample)
    if received:
        fix += f" (they match {received})"
    streams = _streams_with(per_sample=features)
    if streams:
        fix += f", or feed it {streams}"
    raise ValueError(
        f"{owner} expects {expected}, {features} values per sample; got shape {_shape(x.shape)}, "
        f"{per_sample} values per sample. Fix: {fix}."
    )


def check_images(x: torch.Tensor, channels: int, *, owner: str, argument: str = "in_channels") -> None:
    """Check a batch for a convolutional model: ``(B, channels, H, W)``.

    :param x: the batch.
    :param channels: input channels the model was built for.
    :param owner: the model's name as the user built it.
    :param argument: the constructor argument that sets ``channels``.
    :raises ValueError: naming the expected and the received shape and the fix.
    """
    _require_tensor(x, owner)
    expected = f"image batches (B, {channels}, H, W)"
    if x.dim() != 4:
        if x.dim() == 3 and x.shape[0] == channels:
            fix = "add the batch dimension with x.unsqueeze(0)"
        elif x.dim() == 2:
            fix = ("feed it unflattened images: a stream built without flattening, or "
                   "x.view(B, C, H, W)")
        else:
            fix = f"reshape the batch to (B, {channels}, H, W)"
        raise ValueError(f"{owner} expects {expected}, 4 dims; got shape {_shape(x.shape)}, "
                         f"{x.dim()} dims. Fix: {fix}.")
    if x.shape[1] != channels:
        fix = f"build it with {argument}={x.shape[1]} for these inputs"
        streams = _streams_with(channels=channels)
        if streams:
            fix += f", or feed it {channels}-channel images ({streams})"
        raise ValueError(f"{owner} expects {expected}; got shape {_shape(x.shape)}, {x.shape[1]} channel(s). "
                         f"Fix: {fix}.")


def check_dtype(x: torch.Tensor, dtype: torch.dtype, *, owner: str) -> None:
    """Check that a batch holds floating-point values of the model's dtype.

    :param x: the batch.
    :param dtype: the dtype of the model's weights.
    :param owner: the model's name as the user built it.
    :raises ValueError: naming both dtypes and the fix.
    """
    if x.dtype == dtype:
        return
    if not x.is_floating_point():
        fix = f"convert the images to floats, e.g. x.to({dtype}) / 255 for raw uint8 pixels"
    else:
        fix = f"convert the batch with x.to({dtype}), or the model with model.to({x.dtype})"
    raise ValueError(f"{owner} computes in {dtype}; got a batch of {x.dtype}, shape {_shape(x.shape)}. "
                     f"Fix: {fix}.")


def check_task_labels(task_labels: torch.Tensor, batch_size: int, *, owner: str,
                      n_tasks: Optional[int] = None) -> None:
    """Check a task-label tensor: integers, one dimension, one label per sample or one for all.

    :param task_labels: the labels.
    :param batch_size: samples in the batch they label.
    :param owner: the model's name as the user built it.
    :param n_tasks: tasks the layer holds; given, every label must be in ``0..n_tasks - 1``.
    :raises ValueError: naming the problem and the fix.
    """
    _require_tensor(task_labels, owner, "task labels")
    if task_labels.dtype == torch.bool:
        raise ValueError(
            f"{owner} expects integer task labels (torch.long), one per sample; got a bool tensor of shape "
            f"{_shape(task_labels.shape)}. A mask is not a task label. Fix: pass the task ids as integers, "
            f"e.g. torch.full((B,), task_id)."
        )
    if task_labels.is_floating_point() or task_labels.is_complex():
        raise ValueError(
            f"{owner} expects integer task labels (torch.long), one per sample; got {task_labels.dtype} of shape "
            f"{_shape(task_labels.shape)}. Fix: pass integer task ids (check that the targets or the inputs "
            f"were not passed in their place; whole-number floats convert with .long())."
        )
    if task_labels.dim() > 1:
        raise ValueError(
            f"{owner} expects task labels of shape ({batch_size},) or a single int; got shape "
            f"{_shape(task_labels.shape)}. Fix: pass one label per sample as a 1-D tensor, e.g. "
            f"task_labels.reshape(-1) if it holds {batch_size} labels."
        )
    n = task_labels.numel()
    if n != batch_size and n != 1:
        raise ValueError(
            f"{owner} got {n} task labels for a batch of {batch_size} inputs; expected {batch_size} (one per "
            f"sample) or 1 (one for all). Fix: pass the labels of the same mini-batch, or a single int."
        )
    if n_tasks is not None and n > 0:
        low, high = (int(v) for v in torch.aminmax(task_labels))
        if low < 0 or high >= n_tasks:
            bad = low if low < 0 else high
            held = f"ids 0..{n_tasks - 1}" if n_tasks else "no task yet"
            raise ValueError(
                f"{owner} got task id {bad}, out of range: the layer holds {n_tasks} task(s), {held}. "
                f"Fix: add the task first (add_task(), which the strategies call for every new task label), "
                f"or pass the id of a task the layer holds."
            )


def check_class_targets(logits: torch.Tensor, targets: torch.Tensor, *, owner: str) -> None:
    """Check that every class label has an output: ``0 <= y < logits.shape[-1]``.

    :param logits: the model's ``(B, n_classes)`` outputs for the batch.
    :param targets: its ``(B,)`` class labels.
    :param owner: the strategy's name.
    :raises ValueError: naming the label, the outputs and the fix.
    """
    if targets.numel() == 0 or targets.is_floating_point():
        return
    n_outputs = logits.shape[-1]
    low, high = (int(v) for v in torch.aminmax(targets))
    if low < 0 or high >= n_outputs:
        bad = low if low < 0 else high
        raise ValueError(
            f"{owner}: the batch holds class label {bad}, but the model has {n_outputs} outputs (labels "
            f"0..{n_outputs - 1}). Fix: build the model with n_classes >= {max(high + 1, n_outputs)} (every class "
            f"of the whole stream, not only of this experience), or relabel the stream's classes to 0..{n_outputs - 1}."
        )


def as_task_labels(task_labels: Any, x: torch.Tensor, *, owner: str) -> torch.Tensor:
    """Check task labels and return them as a ``(B,)`` long tensor on ``x``'s device.

    :param task_labels: an int for the whole batch, or a tensor (or sequence)
        of one label per sample or of one label for all.
    :param x: the batch they label (``(B, ...)``).
    :param owner: the model's name as the user built it.
    :raises ValueError: naming the problem and the fix.
    """
    batch_size = x.shape[0]
    if isinstance(task_labels, (bool, np.bool_)):
        raise ValueError(f"{owner} expects an integer task id, got the bool {task_labels}. "
                         f"Fix: pass the task id, e.g. model(x, 0).")
    if isinstance(task_labels, (int, np.integer)):
        return torch.full((batch_size,), int(task_labels), dtype=torch.long, device=x.device)
    if isinstance(task_labels, float):
        raise ValueError(f"{owner} expects an integer task id, got the float {task_labels}. "
                         f"Fix: pass int(task_id).")
    task_labels = torch.as_tensor(task_labels, device=x.device)
    check_task_labels(task_labels, batch_size, owner=owner)
    task_labels = task_labels.long().reshape(-1)
    if task_labels.shape[0] != batch_size:
        task_labels = task_labels.expand(batch_size)
    return task_labels
