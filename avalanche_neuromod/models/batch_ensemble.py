"""BatchE: BatchEnsemble's rank-one fast weights for lifelong learning (Wen et al. 2020).

One shared "slow" weight ``W`` per layer, trained with the first task and
then frozen; each task ``t`` owns a rank-one factor ``r_t s_t^T`` multiplied
element-wise with ``W``, and a bias ``b_t``:

    ``W_t = W * (r_t s_t^T)``,  ``y = W_t x + b_t = r_t * (W (s_t * x)) + b_t``.

For a convolution ``r_t`` scales the output channels and ``s_t`` the input
channels (broadcast over the kernel). ``W`` is kaiming-normal; a new task's
factors start at ``r = s = 1``, ``b = 0``, i.e. from the shared weight
itself. Once the first task is learned nothing shared moves, so earlier
tasks' outputs never change.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .task_incremental import TaskMLP, TaskResNet18, TaskState, TaskWeightLayer

__all__ = ["RankOneFactors", "BatchELayer", "BatchENet", "BatchEResNet18"]


class RankOneFactors(TaskState):
    """Per-task fast weights of one layer: ``r_t`` (outputs), ``s_t`` (inputs) and a bias ``b_t``.

    :param in_features: size of ``s_t`` (input channels for a convolution).
    :param out_features: size of ``r_t`` and ``b_t``.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.r = nn.ParameterList()
        self.s = nn.ParameterList()
        self.bias = nn.ParameterList()

    @property
    def n_tasks(self) -> int:
        return len(self.r)

    def add_task(self) -> int:
        device = self.device
        self.r.append(nn.Parameter(torch.ones(self.out_features, device=device)))
        self.s.append(nn.Parameter(torch.ones(self.in_features, device=device)))
        self.bias.append(nn.Parameter(torch.zeros(self.out_features, device=device)))
        return len(self.r) - 1

    def task_parameters(self, task: int) -> List[nn.Parameter]:
        return [self.r[task], self.s[task], self.bias[task]]


class BatchELayer(TaskWeightLayer):
    """A linear or convolutional layer with BatchE's fast weights: ``W * (r_t s_t^T)``, bias ``b_t``.

    :param in_features: inputs (channels for a convolution).
    :param out_features: outputs.
    :param kernel_size: square kernel side; None for a linear layer.
    :param seed: seed of ``W`` (kaiming normal).
    :param stride: convolution stride.
    :param padding: convolution padding.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: Optional[int] = None, *,
                 seed: int = 0, stride: int = 1, padding: int = 0):
        super().__init__(in_features, out_features, kernel_size, stride=stride, padding=padding)
        self.weight = self.trained_weight(seed)
        self.factors = RankOneFactors(in_features, out_features)

    def task_weight(self, task: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        extra = (1,) * (len(self.weight_shape) - 2)
        r = self.factors.r[task].view(-1, 1, *extra)
        s = self.factors.s[task].view(1, -1, *extra)
        return self.weight * r * s, self.factors.bias[task]


class _BatchEMixin:
    """What BatchE nets share: ``W`` trains with the first task only."""

    def _shared(self) -> List[nn.Parameter]:
        return [m.weight for m in self.modules() if isinstance(m, BatchELayer)]

    def shared_task_parameters(self, task: int) -> List[nn.Parameter]:
        """The first task also trains ``W`` (in its own optimiser group: BatchE's lower learning rate)."""
        return self._shared() if task == 0 else []

    def freeze_shared(self, task: int) -> None:
        if task == 0:
            for w in self._shared():
                w.requires_grad_(False)

    @property
    def shared_frozen(self) -> bool:
        """True once the first task was learned and ``W`` fixed."""
        return not any(w.requires_grad for w in self._shared())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if 0 in self.known_train_tasks_labels:
            self.freeze_shared(0)
        return result


class BatchENet(_BatchEMixin, TaskMLP):
    """BatchE on the fully connected net ``784 -> h -> h -> 10``.

    Parameters per task: ``d_in + 2 d_out`` per layer (FC256: 2,340).

    :param hidden_sizes: widths of the hidden layers.
    :param input_size: flattened input size.
    :param n_classes: outputs.
    :param seed: seed of the shared weights.
    """

    def __init__(self, hidden_sizes: Sequence[int] = (256, 256), *, input_size: int = 784, n_classes: int = 10,
                 seed: int = 0):
        def make_layer(index: int, d_in: int, d_out: int) -> BatchELayer:
            return BatchELayer(d_in, d_out, seed=seed + 1000 * index)

        super().__init__(make_layer, hidden_sizes, input_size=input_size, n_classes=n_classes)
        self.ensure_tasks(1)


class BatchEResNet18(_BatchEMixin, TaskResNet18):
    """BatchE on the reduced ResNet-18 (``nf = 10 * width``; per-task batch-norm statistics, no affine).

    :param width: width multiplier.
    :param n_classes: outputs.
    :param in_channels: input channels.
    :param seed: seed of the shared weights.
    """

    def __init__(self, width: int = 1, *, n_classes: int = 10, in_channels: int = 3, seed: int = 0):
        def make_layer(index: int, d_in: int, d_out: int, kernel_size: Optional[int] = None, stride: int = 1,
                       padding: int = 0) -> BatchELayer:
            return BatchELayer(d_in, d_out, kernel_size, seed=seed + 1000 * index, stride=stride, padding=padding)

        super().__init__(make_layer, width, n_classes=n_classes, in_channels=in_channels)
        self.ensure_tasks(1)
