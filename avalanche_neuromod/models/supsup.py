"""SupSup: supermasks in superposition (Wortsman et al. 2020), the CRWN paper's strongest baseline.

A fixed random network with signed-constant weights
(``W = sign(N(0, 1)) * sqrt(2 / fan_in)``) is never trained. Each task ``t``
learns real-valued *scores* ``S_t`` shaped like ``W`` and uses the binary
mask ``M_t`` that keeps the ``density`` fraction of weights with the largest
``|S_t|`` in each layer (edge-popup):

    ``W_t = W * M_t``,  ``M_t = top_k(|S_t|)``,  ``k = round(density * numel(W))``.

The top-k selection has no gradient; edge-popup's straight-through
estimator passes the gradient of the mask on to the scores unchanged.
Earlier tasks' scores are frozen, so their masks, and their outputs, never
change. The scores start kaiming-uniform (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``).

One-shot task inference (SupSup's "One-Shot" algorithm, fully connected
nets): superpose the masks of all trained tasks with equal weights
``alpha_t = 1/T``, compute the entropy of the mean softmax output on a
batch, and pick the task whose ``alpha`` most decreases it
(``argmin_t dH/dalpha_t``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .modulated import derive_generator
from .task_incremental import TaskMLP, TaskResNet18, TaskState, TaskWeightLayer

__all__ = ["SupermaskScores", "SupSupLayer", "SupSupNet", "SupSupResNet18", "topk_mask"]


class _ThresholdHint:
    """The last cut of one score tensor's top-k, so the next selection can search near it.

    A training step moves the scores a little, and with them the k-th
    largest value. Counting the entries above a narrow band around the last
    cut and partitioning only the entries inside it (a few thousand of a
    million) finds the same cut about 8x faster than partitioning them all.
    ``width`` follows how far the cut moved the last time.
    """

    def __init__(self):
        self.threshold: Optional[float] = None
        self.width = 0.0

    def kth_largest(self, values: np.ndarray, k: int) -> Tuple[float, int]:
        """The ``k``-th largest of ``values`` and how many entries are at least that large."""
        found = self._search_band(values, k) if self.threshold is not None else None
        if found is None:
            found = _kth_largest_by_partition(values, k)
        if self.threshold is not None:
            self.width = max(2.0 * abs(found[0] - self.threshold), 1e-6 * abs(found[0]))
        self.threshold = found[0]
        return found

    def _search_band(self, values: np.ndarray, k: int) -> Optional[Tuple[float, int]]:
        width = max(self.width, 1e-6 * abs(self.threshold))
        for _ in range(3):
            low, high = self.threshold - width, self.threshold + width
            above = int(np.count_nonzero(values >= high))
            if above < k:
                band = values[(values >= low) & (values < high)]
                need = k - above
                if band.size >= need:
                    cut = float(np.partition(band, band.size - need)[band.size - need])
                    return cut, above + int(np.count_nonzero(band >= cut))
            width *= 16.0
        return None


def _kth_largest_by_partition(values: np.ndarray, k: int) -> Tuple[float, int]:
    n = values.size
    part = np.partition(values, n - k)
    cut = float(part[n - k])
    return cut, k + int(np.count_nonzero(part[: n - k] == cut))


def _largest_k(values: torch.Tensor, k: int, hint: Optional[_ThresholdHint] = None) -> torch.Tensor:
    """A 0/1 tensor of ``values``' dtype marking exactly ``k`` of the largest entries (ties broken by position).

    On the CPU the cut comes from NumPy's introselect (``np.partition``:
    about 10x faster than ``torch.topk`` for half of a million entries on two
    cores), searched near the last cut when ``hint`` holds one, and the mask
    is written as floats directly (multiplying a weight by a bool mask
    converts it first, which costs more than the selection); elsewhere from
    ``torch.topk``.
    """
    flat = values.reshape(-1)
    n = flat.numel()
    if k >= n:
        return torch.ones_like(values)
    if flat.device.type != "cpu" or flat.dtype not in (torch.float32, torch.float64):
        mask = torch.zeros_like(flat)
        mask[flat.topk(k, sorted=False).indices] = 1.0
        return mask.view_as(values)
    search = hint.kth_largest if hint is not None else _kth_largest_by_partition
    cut, at_least_cut = search(flat.numpy(), k)
    mask = torch.ge(flat, cut, out=torch.empty_like(flat))
    if at_least_cut > k:  # entries tie with the cut: drop the first of them
        tied = (flat == cut).nonzero().squeeze(1)
        mask[tied[: at_least_cut - k]] = 0.0
    return mask.view_as(values)


def _n_kept(numel: int, density: float) -> int:
    return max(1, round(density * numel))


class _TopKMask(torch.autograd.Function):
    """Binary mask of the ``k`` largest entries; straight-through gradient."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, k: int) -> torch.Tensor:
        return _largest_k(values.detach().contiguous(), k)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class _SupermaskedWeight(torch.autograd.Function):
    """``W * top_k(|S|)`` in one pass, with edge-popup's straight-through gradient ``dL/dS = dL/dW_t * W * sign(S)``."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, weight: torch.Tensor, k: int, hint: _ThresholdHint) -> torch.Tensor:
        mask = _largest_k(scores.detach().abs(), k, hint)
        ctx.save_for_backward(scores, weight)
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scores, weight = ctx.saved_tensors
        return (grad * weight).mul_(scores.sign()), None, None, None


def topk_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """The binary mask keeping the ``round(density * numel)`` entries of largest ``|scores|``.

    Its gradient reaches ``scores`` straight through (as if the mask were
    ``|scores|``): edge-popup's estimator.

    :param scores: real-valued scores.
    :param density: fraction of entries kept, in ``(0, 1]``.
    """
    return _TopKMask.apply(scores.abs(), _n_kept(scores.numel(), density))


class SupermaskScores(TaskState):
    """The per-task scores of one layer, and the cached masks of frozen tasks.

    :param shape: the weight's shape.
    :param fan_in: inputs per output unit (sets the initial range).
    :param density: fraction of weights each mask keeps.
    :param seed: task ``t`` draws its scores from ``(seed, t)``.
    """

    def __init__(self, shape: Sequence[int], fan_in: int, density: float, seed: int = 0):
        super().__init__()
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density (the fraction of weights a mask keeps) must be in (0, 1], got {density}.")
        self.shape = tuple(shape)
        self.fan_in = int(fan_in)
        self.density = float(density)
        self.seed = int(seed)
        self.scores = nn.ParameterList()
        self._frozen_masks: Dict[int, Tuple[Tuple[int, int], torch.Tensor]] = {}
        self._float_mask: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._hints: Dict[int, _ThresholdHint] = {}

    @property
    def n_tasks(self) -> int:
        return len(self.scores)

    def add_task(self) -> int:
        bound = 1.0 / self.fan_in ** 0.5
        values = torch.rand(self.shape, generator=derive_generator(self.seed, self.n_tasks)) * (2 * bound) - bound
        self.scores.append(nn.Parameter(values.to(self.device)))
        return len(self.scores) - 1

    def task_parameters(self, task: int) -> List[nn.Parameter]:
        return [self.scores[task]]

    def mask(self, task: int) -> torch.Tensor:
        """Task ``task``'s binary mask, as bools (cached while its scores are unchanged)."""
        scores = self.scores[task]
        key = (scores._version, scores.data_ptr())
        cached = self._frozen_masks.get(task)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                keep = _largest_k(scores.detach().abs(), _n_kept(scores.numel(), self.density),
                                  self._hint(task)).bool()
            cached = self._frozen_masks[task] = (key, keep)
        return cached[1]

    def _hint(self, task: int) -> _ThresholdHint:
        return self._hints.setdefault(task, _ThresholdHint())

    def masked(self, task: int, weight: torch.Tensor) -> torch.Tensor:
        """``weight * M_task``; while the task trains, with the straight-through gradient to its scores."""
        scores = self.scores[task]
        if scores.requires_grad and torch.is_grad_enabled():
            return _SupermaskedWeight.apply(scores, weight, _n_kept(scores.numel(), self.density), self._hint(task))
        # Masks are kept as bools (a byte per weight and task); the float copy
        # of the last task used spares a conversion per batch while it is evaluated.
        keep = self.mask(task)
        if self._float_mask is None or self._float_mask[0] is not keep:
            self._float_mask = (keep, keep.to(weight.dtype))
        return weight * self._float_mask[1]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_frozen_masks"] = {}
        state["_float_mask"] = None
        return state


class SupSupLayer(TaskWeightLayer):
    """A linear or convolutional layer of fixed signed-constant weights under a per-task supermask; no bias.

    :param in_features: inputs (channels for a convolution).
    :param out_features: outputs.
    :param kernel_size: square kernel side; None for a linear layer.
    :param density: fraction of weights each task's mask keeps.
    :param seed: seed of ``W``'s signs and of the scores.
    :param stride: convolution stride.
    :param padding: convolution padding.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: Optional[int] = None, *,
                 density: float = 0.5, seed: int = 0, stride: int = 1, padding: int = 0):
        super().__init__(in_features, out_features, kernel_size, stride=stride, padding=padding)
        signs = torch.randn(self.weight_shape, generator=derive_generator(seed)).sign()
        self.register_buffer("weight", signs * (2.0 / self.fan_in) ** 0.5)
        self.scores = SupermaskScores(self.weight_shape, self.fan_in, density, seed=seed + 1)

    def task_weight(self, task: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.scores.masked(task, self.weight), None

    def superposed_weight(self, tasks: Sequence[int], alphas: torch.Tensor) -> torch.Tensor:
        """``W * sum_t alpha_t M_t`` over ``tasks`` (one-shot task inference)."""
        masks = torch.stack([self.scores.mask(t).to(self.weight.dtype) for t in tasks])
        return self.weight * torch.tensordot(alphas, masks, dims=1)


class _SupSupMixin:
    # A task trains only its own scores over fixed weights: its tasks may train in parallel.
    independent_tasks = True

    def supsup_layers(self) -> List[SupSupLayer]:
        """The masked layers, in order."""
        return [m for m in self.modules() if isinstance(m, SupSupLayer)]


class SupSupNet(_SupSupMixin, TaskMLP):
    """SupSup on the fully connected net ``784 -> h -> h -> 10`` (no biases).

    Parameters per task: one score per weight (FC256: 268,800), of which the
    task keeps a binary mask.

    :param hidden_sizes: widths of the hidden layers.
    :param density: fraction of each layer's weights a task's mask keeps.
    :param input_size: flattened input size.
    :param n_classes: outputs.
    :param task_inference: in eval mode, ignore the given task labels and
        infer one task per batch (:meth:`infer_task`).
    :param seed: seed of the weights and scores.
    """

    def __init__(self, hidden_sizes: Sequence[int] = (256, 256), *, density: float = 0.5, input_size: int = 784,
                 n_classes: int = 10, task_inference: bool = False, seed: int = 0):
        def make_layer(index: int, d_in: int, d_out: int) -> SupSupLayer:
            return SupSupLayer(d_in, d_out, density=density, seed=seed + 1000 * index)

        super().__init__(make_layer, hidden_sizes, input_size=input_size, n_classes=n_classes)
        self.density = density
        self.task_inference = bool(task_inference)
        self.ensure_tasks(1)

    def infer_task(self, x: torch.Tensor) -> int:
        """SupSup's one-shot task inference for a batch: the trained task whose mask most lowers the entropy.

        :param x: a batch from one task.
        :raises ValueError: no task was trained yet.
        """
        tasks = self.trained_tasks
        if not tasks:
            raise ValueError("task inference needs at least one trained task: train an experience first.")
        self.check_input(x)
        if len(tasks) == 1:
            return tasks[0]
        with torch.enable_grad():
            alphas = torch.full((len(tasks),), 1.0 / len(tasks), device=x.device, requires_grad=True)
            h = x.reshape(x.shape[0], -1).detach()
            for i, layer in enumerate(self.layers):
                h = F.linear(h, layer.superposed_weight(tasks, alphas))
                if i < len(self.layers) - 1:
                    h = F.relu(h)
            log_p = F.log_softmax(h, dim=1)
            entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
            (grad,) = torch.autograd.grad(entropy, alphas)
        return tasks[int(grad.argmin())]

    def forward(self, x: torch.Tensor, task_labels=None) -> torch.Tensor:
        """Logits under each sample's task; with ``task_inference`` in eval mode, under the inferred task.

        :param x: input batch.
        :param task_labels: one task label per sample, or one for all
            (ignored when inferring).
        """
        if self.task_inference and not self.training:
            task_labels = self.infer_task(x)
        return super().forward(x, task_labels)


class SupSupResNet18(_SupSupMixin, TaskResNet18):
    """SupSup on the reduced ResNet-18 (``nf = 10 * width``; per-task batch-norm statistics, no affine).

    :param width: width multiplier.
    :param density: fraction of each layer's weights a task's mask keeps.
    :param n_classes: outputs.
    :param in_channels: input channels.
    :param seed: seed of the weights and scores.
    """

    def __init__(self, width: int = 1, *, density: float = 0.5, n_classes: int = 10, in_channels: int = 3,
                 seed: int = 0):
        def make_layer(index: int, d_in: int, d_out: int, kernel_size: Optional[int] = None, stride: int = 1,
                       padding: int = 0) -> SupSupLayer:
            return SupSupLayer(d_in, d_out, kernel_size, density=density, seed=seed + 1000 * index, stride=stride,
                               padding=padding)

        super().__init__(make_layer, width, n_classes=n_classes, in_channels=in_channels)
        self.density = density
        self.ensure_tasks(1)
