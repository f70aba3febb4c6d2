"""The upper references of the CRWN paper: STL (one network per task) and MTL (all tasks jointly).

- STL: every layer holds an independent, kaiming-normal weight per task; a
  task trains only its own, so tasks never share or disturb anything.
- MTL: one shared trunk trained on all tasks at once (Avalanche's joint
  training), and one output head per task.

Both have no biases, like the paper's FC nets (MTL FC256 with one head:
268,800 parameters).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .modulated import derive_generator
from .task_incremental import TaskMLP, TaskResNet18, TaskState, TaskWeightLayer, kaiming_normal

__all__ = ["TaskWeights", "IndependentLayer", "SharedLayer", "STLNet", "STLResNet18", "MTLNet", "MTLResNet18"]


class TaskWeights(TaskState):
    """A whole weight per task, kaiming-normal from ``(seed, task)``.

    :param shape: the weight's shape.
    :param fan_in: inputs per output unit.
    :param seed: seed of the layer.
    """

    def __init__(self, shape: Sequence[int], fan_in: int, seed: int = 0):
        super().__init__()
        self.shape = tuple(shape)
        self.fan_in = int(fan_in)
        self.seed = int(seed)
        self.weights = nn.ParameterList()

    @property
    def n_tasks(self) -> int:
        return len(self.weights)

    def add_task(self) -> int:
        values = kaiming_normal(self.shape, self.fan_in, derive_generator(self.seed, self.n_tasks))
        self.weights.append(nn.Parameter(values.to(self.device)))
        return len(self.weights) - 1

    def task_parameters(self, task: int) -> List[nn.Parameter]:
        return [self.weights[task]]


class IndependentLayer(TaskWeightLayer):
    """A linear or convolutional layer with an independent weight per task (STL's layers, MTL's heads); no bias.

    :param in_features: inputs (channels for a convolution).
    :param out_features: outputs.
    :param kernel_size: square kernel side; None for a linear layer.
    :param seed: seed of the weights.
    :param stride: convolution stride.
    :param padding: convolution padding.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: Optional[int] = None, *,
                 seed: int = 0, stride: int = 1, padding: int = 0):
        super().__init__(in_features, out_features, kernel_size, stride=stride, padding=padding)
        self.weights = TaskWeights(self.weight_shape, self.fan_in, seed=seed)

    def task_weight(self, task: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.weights.weights[task], None


class SharedLayer(TaskWeightLayer):
    """A plain linear or convolutional layer, the same for every task (MTL's trunk); no bias.

    :param in_features: inputs (channels for a convolution).
    :param out_features: outputs.
    :param kernel_size: square kernel side; None for a linear layer.
    :param seed: seed of the weight (kaiming normal).
    :param stride: convolution stride.
    :param padding: convolution padding.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: Optional[int] = None, *,
                 seed: int = 0, stride: int = 1, padding: int = 0):
        super().__init__(in_features, out_features, kernel_size, stride=stride, padding=padding)
        self.weight = self.trained_weight(seed)

    def task_weight(self, task: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.weight, None

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        return self.apply_task(x, 0)


def _stl_layer(seed: int):
    def make_layer(index: int, d_in: int, d_out: int, kernel_size: Optional[int] = None, stride: int = 1,
                   padding: int = 0) -> IndependentLayer:
        return IndependentLayer(d_in, d_out, kernel_size, seed=seed + 1000 * index, stride=stride, padding=padding)
    return make_layer


def _mtl_layer(seed: int, n_layers: int):
    def make_layer(index: int, d_in: int, d_out: int, kernel_size: Optional[int] = None, stride: int = 1,
                   padding: int = 0) -> TaskWeightLayer:
        cls = IndependentLayer if index == n_layers - 1 else SharedLayer
        return cls(d_in, d_out, kernel_size, seed=seed + 1000 * index, stride=stride, padding=padding)
    return make_layer


class STLNet(TaskMLP):
    """STL on the fully connected net: an independent ``784 -> h -> h -> 10`` net per task.

    :param hidden_sizes: widths of the hidden layers.
    :param input_size: flattened input size.
    :param n_classes: outputs.
    :param seed: seed of the weights (task ``t`` of layer ``i`` draws from ``(seed + 1000 i, t)``).
    """

    independent_tasks = True  # a whole network per task, nothing shared

    def __init__(self, hidden_sizes: Sequence[int] = (256, 256), *, input_size: int = 784, n_classes: int = 10,
                 seed: int = 0):
        super().__init__(_stl_layer(seed), hidden_sizes, input_size=input_size, n_classes=n_classes)
        self.ensure_tasks(1)


class STLResNet18(TaskResNet18):
    """STL on the reduced ResNet-18: an independent net per task (per-task batch norm, no affine).

    :param width: width multiplier.
    :param n_classes: outputs.
    :param in_channels: input channels.
    :param seed: seed of the weights.
    """

    independent_tasks = True  # a whole network per task, nothing shared

    def __init__(self, width: int = 1, *, n_classes: int = 10, in_channels: int = 3, seed: int = 0):
        super().__init__(_stl_layer(seed), width, n_classes=n_classes, in_channels=in_channels)
        self.ensure_tasks(1)


class _MTLMixin:
    """MTL's trunk trains with every task and counts against each, like PSP's shared weight."""

    def _trunk(self) -> List[nn.Parameter]:
        return [m.weight for m in self.modules() if isinstance(m, SharedLayer)]

    def shared_task_parameters(self, task: int) -> List[nn.Parameter]:
        return self._trunk()

    def shared_params_per_task(self) -> int:
        return sum(w.numel() for w in self._trunk())


class MTLNet(_MTLMixin, TaskMLP):
    """MTL on the fully connected net: a shared ``784 -> h -> h`` trunk and a ``h -> 10`` head per task.

    :param hidden_sizes: widths of the hidden layers.
    :param input_size: flattened input size.
    :param n_classes: outputs per head.
    :param seed: seed of the weights.
    """

    def __init__(self, hidden_sizes: Sequence[int] = (256, 256), *, input_size: int = 784, n_classes: int = 10,
                 seed: int = 0):
        super().__init__(_mtl_layer(seed, len(hidden_sizes) + 1), hidden_sizes, input_size=input_size,
                         n_classes=n_classes)
        self.ensure_tasks(1)


class MTLResNet18(_MTLMixin, TaskResNet18):
    """MTL on the reduced ResNet-18: a shared trunk (per-task batch-norm statistics) and a head per task.

    :param width: width multiplier.
    :param n_classes: outputs per head.
    :param in_channels: input channels.
    :param seed: seed of the weights.
    """

    N_LAYERS = 21
    """Convolutions and output layer of the reduced ResNet-18, in factory order (the head is the last)."""

    def __init__(self, width: int = 1, *, n_classes: int = 10, in_channels: int = 3, seed: int = 0):
        super().__init__(_mtl_layer(seed, self.N_LAYERS), width, n_classes=n_classes, in_channels=in_channels)
        self.ensure_tasks(1)
