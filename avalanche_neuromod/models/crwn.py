"""CRWN networks: FlyNet and NeuroModNet, as Avalanche multi-task modules.

Both hold fixed random weights and, per task, one context and one random
strength per modulated layer (see :mod:`.modulated`). They grow a new set of
task parameters when Avalanche adapts them to an experience with a new task
label (training only), and refuse a task label they were never trained on.
Every forward pass first checks the batch and the task labels (see
:mod:`._checks`): a wrong shape or dtype is a ``ValueError`` naming the fix.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_dtype, check_features
from .modulated import ModulatedConv2d, ModulatedLinear, TaskModulation, derive_generator
from .task_incremental import TaskIncrementalModule, TaskMLP, TaskResNet18

__all__ = ["CRWNModule", "SparseFlyEncoder", "FlyNet", "NeuroModNet", "NeuroModResNet18"]


class CRWNModule(TaskIncrementalModule):
    """Base class of the CRWN networks: fixed random weights, per-task contexts and strengths.

    The task bookkeeping is :class:`~avalanche_neuromod.models.task_incremental.TaskIncrementalModule`'s;
    this class adds the paper's "pretrained mode" ablation. Subclasses build
    their modulated layers, implement :meth:`forward_tasks` and call
    :meth:`_finish_init` at the end of their constructor.
    """

    pretrained: bool = False
    # Given the fixed weights, a task reads and writes only its own contexts and strengths
    # (in pretrained mode: once the first task has trained the shared weights).
    independent_tasks = True

    def _finish_init(self, pretrained: bool) -> None:
        """Create the first task's parameters and set up the pretrained mode.

        The first task exists from the start so that an optimiser can be
        built over ``model.parameters()`` right away (as Avalanche users do).
        In the paper's "pretrained mode" ablation (Table 4) the first task
        trains the shared weights together with its contexts and strengths,
        like an ordinary network; they are frozen with that task, and every
        later task learns only its contexts and strengths.
        """
        self.ensure_tasks(1)
        self.pretrained = bool(pretrained)
        if self.pretrained:
            for layer in self.modulated_layers():
                layer.unfreeze_weight()

    def modulated_layers(self) -> List[nn.Module]:
        """The layers holding a fixed random weight, in order."""
        return [m for m in self.modules() if isinstance(m, (ModulatedLinear, ModulatedConv2d))]

    def shared_parameters(self) -> List[nn.Parameter]:
        """Shared weights still being trained (pretrained mode, first task only)."""
        return [m.shared_weight for m in self.modulated_layers() if m.shared_weight is not None]

    def modulations(self) -> List[TaskModulation]:
        """The per-task parameter holders of every modulated layer, in order."""
        return [m for m in self.modules() if isinstance(m, TaskModulation)]

    def shared_task_parameters(self, task: int) -> List[nn.Parameter]:
        """In pretrained mode the first task also trains the shared weights."""
        return self.shared_parameters() if task == 0 else []

    def freeze_shared(self, task: int) -> None:
        """Pretrained mode: the shared weights trained with the first task become fixed buffers."""
        if task == 0:
            for layer in self.modulated_layers():
                layer.freeze_weight()

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        super().set_extra_state(state)
        if self.pretrained and 0 in self.known_train_tasks_labels:
            # the saved buffers already hold the trained shared weights
            for layer in self.modulated_layers():
                layer.shared_weight = None


class SparseFlyEncoder(nn.Module):
    """The fly circuit's projection: each hidden unit sums 7 random input pixels.

    ``h = x W^T`` with a fixed binary ``W`` of shape ``(m, d)`` holding exactly
    ``inputs_per_unit`` ones per row (chosen without replacement), then
    ``z = ReLU(h - mean_over_units(h))`` per sample. Only the ``(m, 7)``
    connection indices are stored, and the sparse product runs as one
    embedding-bag sum (each unit sums its 7 pixels): a dense 7,840 x 784
    product costs ~14 ms per batch of 128 on two cores, this one ~0.1 ms.
    The mean over units is ``x . n / m`` with ``n`` the number of units each
    pixel feeds, which spares a pass over the ``m x B`` code.

    :param input_size: ``d``.
    :param hidden_size: ``m``.
    :param inputs_per_unit: ones per row (7 in the paper).
    :param seed: seed of the connectivity.
    """

    def __init__(self, input_size: int, hidden_size: int, inputs_per_unit: int = 7, seed: int = 0):
        super().__init__()
        if not 1 <= inputs_per_unit <= input_size:
            raise ValueError(f"inputs_per_unit must be in 1..{input_size}, got {inputs_per_unit}.")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.inputs_per_unit = inputs_per_unit
        g = derive_generator(seed)
        rows = []
        for start in range(0, hidden_size, 2048):
            n = min(2048, hidden_size - start)
            keys = torch.rand(n, input_size, generator=g)
            rows.append(keys.topk(inputs_per_unit, dim=1).indices.sort(dim=1).values)
        self.register_buffer("connections", torch.cat(rows))

    def weight(self) -> torch.Tensor:
        """``W`` as a sparse CSR tensor ``(m, d)``."""
        m, k = self.connections.shape
        crow = torch.arange(0, m * k + 1, k, device=self.connections.device)
        values = torch.ones(m * k, device=self.connections.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(crow, self.connections.reshape(-1), values,
                                           (m, self.input_size), check_invariants=True)

    def _pixel_share(self, device: torch.device) -> torch.Tensor:
        """``n / m``: the share of units each input pixel feeds, ``(1, d)``."""
        # Keyed on the buffer's identity and version: loading a state dict
        # (an in-place copy) or moving the module recomputes it.
        key = (self.connections.data_ptr(), self.connections._version, device)
        cached = getattr(self, "_share", None)
        if cached is None or cached[0] != key:
            counts = torch.bincount(self.connections.reshape(-1), minlength=self.input_size)
            cached = self._share = (key, (counts.float() / self.hidden_size).unsqueeze(0).to(device))
        return cached[1]

    def forward_transposed(self, x: torch.Tensor) -> torch.Tensor:
        """The code ``z`` as ``(m, B)``: the sparse product's natural layout.

        :param x: ``(B, ...)`` with ``input_size`` values per sample.
        """
        check_features(x, self.input_size, owner=f"SparseFlyEncoder(input_size={self.input_size})")
        x_t = x.reshape(x.shape[0], -1).t().contiguous()
        h_t = F.embedding_bag(self.connections, x_t, mode="sum")
        mean = self._pixel_share(x.device).to(x_t.dtype) @ x_t
        if x.requires_grad:
            return F.relu(h_t - mean)
        # Nothing upstream needs gradients: reuse the buffer instead of
        # allocating two more m x B tensors per batch.
        return h_t.sub_(mean).relu_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The code ``z``, ``(B, m)``."""
        return self.forward_transposed(x).t().contiguous()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_share", None)
        return state


class FlyNet(CRWNModule):
    """FlyNet: a sparse fly-circuit encoder and a neuromodulated decoder.

    ``y = a_t * R (c_t * z)`` where ``z`` is the encoder's output. Per task it
    learns ``m + 1`` parameters (7,841 for FlyNet-10d, m = 7,840).

    :param expansion: ``m / input_size`` (10, 20, 30, 40 in the paper).
    :param input_size: flattened input size (784 for MNIST).
    :param n_classes: outputs.
    :param inputs_per_unit: input pixels per hidden unit.
    :param init: ``R``'s distribution: ``"gaussian"`` (zero-mean, std
        ``1 / sqrt(fan_in)``), ``"unit_gaussian"`` (std 1) or ``"pytorch"``.
    :param local_only: keep random strengths fixed.
    :param pretrained: train the decoder's shared weight with the first task,
        then freeze it (ablation; the encoder always stays fixed).
    :param seed: seed of the encoder, of ``R`` and of the task initialisations.
    """

    def __init__(self, expansion: int = 10, *, input_size: int = 784, n_classes: int = 10,
                 inputs_per_unit: int = 7, init: str = "gaussian", local_only: bool = False,
                 pretrained: bool = False, seed: int = 0):
        super().__init__()
        if expansion < 1:
            raise ValueError(f"expansion must be a positive integer, got {expansion}.")
        self.expansion = expansion
        hidden = expansion * input_size
        self.encoder = SparseFlyEncoder(input_size, hidden, inputs_per_unit, seed=seed)
        self.decoder = ModulatedLinear(hidden, n_classes, init=init, seed=seed + 1000, local_only=local_only)
        self._finish_init(pretrained)

    @property
    def input_size(self) -> int:
        """Values per input sample (784 for MNIST)."""
        return self.encoder.input_size

    def _owner(self) -> str:
        return f"FlyNet(input_size={self.input_size})"

    def check_input(self, x: torch.Tensor) -> None:
        """``(B, ...)`` with ``input_size`` values per sample, in the decoder's dtype."""
        check_features(x, self.input_size, owner=self._owner())
        check_dtype(x, self.decoder.weight.dtype, owner=self._owner())

    def forward_tasks(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        # Staying in the encoder's (m, B) layout avoids copying a 7,840 x B
        # transpose every batch (about half of FlyNet-10d's step time).
        return self.decoder.forward_transposed(self.encoder.forward_transposed(x), task_labels)


class NeuroModNet(CRWNModule, TaskMLP):
    """NeuroModNet, fully connected: every layer modulated, no biases.

    ``784 -> h -> ... -> 10`` with ReLU; per task it learns the sum of the
    fan-ins plus one strength per layer (FC256: 1,299; FC4096: 8,979).

    :param hidden_sizes: widths of the hidden layers.
    :param input_size: flattened input size.
    :param n_classes: outputs.
    :param init: ``R``'s distribution: ``"gaussian"`` (zero-mean, std
        ``1 / sqrt(fan_in)``), ``"unit_gaussian"`` (std 1) or ``"pytorch"``.
    :param local_only: keep random strengths fixed.
    :param pretrained: train the shared weights with the first task, then
        freeze them (the paper's Table 4 ablation).
    :param seed: seed of every ``R`` and of the task initialisations.
    """

    def __init__(self, hidden_sizes: Sequence[int] = (256, 256), *, input_size: int = 784,
                 n_classes: int = 10, init: str = "gaussian", local_only: bool = False,
                 pretrained: bool = False, seed: int = 0):
        def make_layer(index: int, d_in: int, d_out: int) -> ModulatedLinear:
            return ModulatedLinear(d_in, d_out, init=init, seed=seed + 1000 * index, local_only=local_only)

        super().__init__(make_layer, hidden_sizes, input_size=input_size, n_classes=n_classes)
        self._finish_init(pretrained)


class NeuroModResNet18(CRWNModule, TaskResNet18):
    """NeuroModNet, convolutional: the reduced ResNet-18 of GEM/SupSup, every layer modulated.

    ``nf = 10 * width`` filters in the first stage (the "reduced" net halves
    GEM's 20), stages of ``nf, 2nf, 4nf, 8nf`` with two basic blocks each,
    global average pooling and a modulated linear output. Batch norm keeps
    per-task running statistics with no affine parameters. Per task it learns
    the contexts (4,947 / 9,867 / 19,707 / 29,547 for width 1 / 2 / 4 / 6)
    plus one random strength for each of its 21 modulated layers.

    :param width: width multiplier (1d, 2d, 4d, 6d in the paper).
    :param n_classes: outputs.
    :param in_channels: input channels (3 for CIFAR).
    :param init: ``R``'s distribution: ``"gaussian"`` (zero-mean, std
        ``1 / sqrt(fan_in)``), ``"unit_gaussian"`` (std 1) or ``"pytorch"``.
    :param local_only: keep random strengths fixed.
    :param pretrained: train the shared kernels with the first task, then freeze them.
    :param seed: seed of every ``R`` and of the task initialisations.
    """

    def __init__(self, width: int = 1, *, n_classes: int = 10, in_channels: int = 3,
                 init: str = "gaussian", local_only: bool = False, pretrained: bool = False,
                 seed: int = 0):
        def make_layer(index: int, d_in: int, d_out: int, kernel_size: Optional[int] = None, stride: int = 1,
                       padding: int = 0) -> nn.Module:
            layer_seed = seed + 1000 * (index + 1)
            if kernel_size is None:
                return ModulatedLinear(d_in, d_out, init=init, seed=layer_seed, local_only=local_only)
            return ModulatedConv2d(d_in, d_out, kernel_size, stride=stride, padding=padding, init=init,
                                   seed=layer_seed, local_only=local_only)

        super().__init__(make_layer, width, n_classes=n_classes, in_channels=in_channels)
        self._finish_init(pretrained)

    def context_params_per_task(self) -> int:
        """Context entries per task, without the random strengths."""
        return sum(math.prod(m.context_shape) for m in self.modulations())
