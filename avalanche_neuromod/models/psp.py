"""PSP: superposition of many models into one (Cheung et al. 2019), the CRWN paper's baseline.

One shared weight ``W`` per layer; task ``t`` multiplies each layer's input
by a fixed random *context* ``C_t`` before the weight:
``y = W (C_t x)``, so the task's effective weight is ``W C_t``.

- binary contexts: ``C_t = diag(c_t)`` with ``c_t`` in ``{-1, +1}^d``;
- rotational contexts: ``C_t`` a random orthogonal ``d x d`` matrix (Haar).

``W`` keeps training on every task (nothing is frozen): the contexts make
the tasks' weights nearly orthogonal, so later training interferes little
with earlier tasks, but not zero (the CRWN paper's point: PSP's accuracy
drifts as permuted tasks accumulate). For a convolution the context acts on
the kernel's fan-in ``c_in * k * k`` (the input patch), as for a linear
layer on the unfolded input.

Contexts are never learned: they are regenerated from the seed whenever the
network grows (on load too), so checkpoints hold only ``W``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .modulated import derive_generator
from .task_incremental import TaskMLP, TaskResNet18, TaskState, TaskWeightLayer

__all__ = ["PSP_CONTEXTS", "PSPContexts", "PSPLayer", "PSPNet", "PSPResNet18", "random_orthogonal"]

PSP_CONTEXTS = ("binary", "rotational")


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-distributed random orthogonal ``n x n`` matrix (QR of a Gaussian, signs fixed).

    :param n: size.
    :param generator: the source of randomness.
    """
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)).unsqueeze(0)).float()


class PSPContexts(TaskState):
    """The fixed random contexts of one layer, one per task (not learned, not saved).

    :param fan_in: ``d``, the size of the input the context acts on.
    :param kind: ``"binary"`` or ``"rotational"``.
    :param seed: task ``t`` draws its context from ``(seed, t)``.
    """

    def __init__(self, fan_in: int, kind: str = "binary", seed: int = 0):
        super().__init__()
        if kind not in PSP_CONTEXTS:
            raise ValueError(f"context must be one of {PSP_CONTEXTS}, got {kind!r}.")
        self.fan_in = int(fan_in)
        self.kind = kind
        self.seed = int(seed)
        self._n_tasks = 0

    @property
    def n_tasks(self) -> int:
        return self._n_tasks

    def add_task(self) -> int:
        task = self._n_tasks
        g = derive_generator(self.seed, task)
        if self.kind == "binary":
            context = torch.randint(0, 2, (self.fan_in,), generator=g).float() * 2 - 1
        else:
            context = random_orthogonal(self.fan_in, g)
        self.register_buffer(f"context_{task}", context.to(self.device), persistent=False)
        self._n_tasks += 1
        return task

    def context(self, task: int) -> torch.Tensor:
        """Task ``task``'s context: ``(d,)`` signs or a ``(d, d)`` orthogonal matrix."""
        return getattr(self, f"context_{task}")

    def params_per_task(self) -> int:
        """Context entries one task stores: ``d`` (binary) or ``d * d`` (rotational)."""
        return self.fan_in if self.kind == "binary" else self.fan_in ** 2


class PSPLayer(TaskWeightLayer):
    """A linear or convolutional layer with PSP's contexts: effective weight ``W C_t``, no bias.

    :param in_features: inputs (channels for a convolution).
    :param out_features: outputs.
    :param kernel_size: square kernel side; None for a linear layer.
    :param context: ``"binary"`` or ``"rotational"``.
    :param seed: seed of ``W`` (kaiming normal) and of the contexts.
    :param stride: convolution stride.
    :param padding: convolution padding.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: Optional[int] = None, *,
                 context: str = "binary", seed: int = 0, stride: int = 1, padding: int = 0):
        super().__init__(in_features, out_features, kernel_size, stride=stride, padding=padding)
        self.weight = self.trained_weight(seed)
        self.contexts = PSPContexts(self.fan_in, context, seed=seed + 1)

    def task_weight(self, task: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        context = self.contexts.context(task)
        flat = self.weight.reshape(self.out_features, self.fan_in)
        flat = flat * context if context.dim() == 1 else flat @ context
        return flat.reshape(self.weight_shape), None


class _PSPMixin:
    """What PSP nets share: every weight trains with every task and counts against each."""

    def shared_task_parameters(self, task: int) -> List[nn.Parameter]:
        return [m.weight for m in self.modules() if isinstance(m, PSPLayer)]

    def shared_params_per_task(self) -> int:
        return sum(m.weight.numel() for m in self.modules() if isinstance(m, PSPLayer))


class PSPNet(_PSPMixin, TaskMLP):
    """PSP on the fully connected net ``784 -> h -> h -> 10`` (no biases).

    Parameters per task: all of ``W`` (it trains with every task) plus the
    contexts one task stores (FC256 rotational: 268,800 + 745,728, the paper's
    "about 1M").

    :param hidden_sizes: widths of the hidden layers.
    :param context: ``"binary"`` or ``"rotational"``.
    :param input_size: flattened input size.
    :param n_classes: outputs.
    :param seed: seed of the weights and contexts.
    """

    def __init__(self, hidden_sizes: Sequence[int] = (256, 256), *, context: str = "binary",
                 input_size: int = 784, n_classes: int = 10, seed: int = 0):
        def make_layer(index: int, d_in: int, d_out: int) -> PSPLayer:
            return PSPLayer(d_in, d_out, context=context, seed=seed + 1000 * index)

        super().__init__(make_layer, hidden_sizes, input_size=input_size, n_classes=n_classes)
        self.context = context
        self.ensure_tasks(1)


class PSPResNet18(_PSPMixin, TaskResNet18):
    """PSP on the reduced ResNet-18 (``nf = 10 * width``; per-task batch-norm statistics, no affine).

    :param width: width multiplier.
    :param context: ``"binary"`` or ``"rotational"`` (a ``c_in k k``-sized
        rotation per conv and task: memory grows fast with the width).
    :param n_classes: outputs.
    :param in_channels: input channels.
    :param seed: seed of the weights and contexts.
    """

    def __init__(self, width: int = 1, *, context: str = "binary", n_classes: int = 10, in_channels: int = 3,
                 seed: int = 0):
        def make_layer(index: int, d_in: int, d_out: int, kernel_size: Optional[int] = None, stride: int = 1,
                       padding: int = 0) -> PSPLayer:
            return PSPLayer(d_in, d_out, kernel_size, context=context, seed=seed + 1000 * index, stride=stride,
                            padding=padding)

        super().__init__(make_layer, width, n_classes=n_classes, in_channels=in_channels)
        self.context = context
        self.ensure_tasks(1)
