"""Neuromodulated layers: fixed random weights, per-task context and random strength.

CRWN (Hong & Pavlic) never trains a layer's weight ``R``. Each task ``t``
learns only a *context* ``c_t`` shaped like the layer's fan-in (local
modulation) and one scalar *random strength* ``a_t`` (global modulation):

- linear: ``y = a_t * R (c_t * x)``, i.e. ``W_t = a_t * R * diag(c_t)``;
- conv: ``W_t = a_t * (R * C_t)`` with ``C_t`` of shape ``(c_in, k, k)``
  broadcast over the output filters.

``R`` is a registered buffer, not a parameter, so no optimiser (Avalanche's
adds every parameter of the model) can ever touch it. A batch may mix task
labels: each sample gathers its own context in one vectorised pass. Each
layer checks the shape of its input and task labels (see :mod:`._checks`).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_features, check_images, check_task_labels
from .task_incremental import TaskBatchNorm2d, TaskState, run_per_task

__all__ = ["derive_generator", "TaskModulation", "ModulatedLinear", "ModulatedConv2d", "TaskBatchNorm2d"]

INITS = ("gaussian", "pytorch", "unit_gaussian")


def derive_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded from a tuple of integers (seed, layer, task...).

    Distinct key tuples give statistically independent streams, so a task's
    context is the same whatever else was drawn before it.

    :param keys: non-negative integers.
    """
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


class TaskModulation(TaskState):
    """Per-task contexts and random strengths of one layer.

    A new task's context is drawn from a xavier-normal distribution for a
    ``(1, fan_in)`` matrix, std ``sqrt(2 / (fan_in + 1))``; its random
    strength from ``N(0, 1)``.

    :param context_shape: shape of one task's context.
    :param seed: seed of the layer; task ``t`` draws from ``(seed, t)``.
    :param local_only: keep the random strengths fixed (the paper's
        "local only" ablation): they stay at their random initial value.
    """

    def __init__(self, context_shape: Sequence[int], seed: int = 0, local_only: bool = False):
        super().__init__()
        self.context_shape = tuple(int(s) for s in context_shape)
        self.seed = int(seed)
        self.local_only = bool(local_only)
        self.contexts = nn.ParameterList()
        self.strengths = nn.ParameterList()

    @property
    def n_tasks(self) -> int:
        """Number of tasks this layer holds parameters for."""
        return len(self.contexts)

    def add_task(self) -> int:
        """Create the next task's context and strength; return its index."""
        task = self.n_tasks
        g = derive_generator(self.seed, task)
        fan_in = math.prod(self.context_shape)
        std = math.sqrt(2.0 / (fan_in + 1))
        context = torch.randn(self.context_shape, generator=g) * std
        strength = torch.randn(1, generator=g)
        device = self.device
        self.contexts.append(nn.Parameter(context.to(device)))
        self.strengths.append(nn.Parameter(strength.to(device), requires_grad=not self.local_only))
        return task

    def task_parameters(self, task: int) -> List[nn.Parameter]:
        """The learnable parameters of ``task`` in this layer."""
        params = [self.contexts[task]]
        if not self.local_only:
            params.append(self.strengths[task])
        return params

    def params_per_task(self) -> int:
        """Learnable scalars per task: the context plus the strength (if learned)."""
        return math.prod(self.context_shape) + (0 if self.local_only else 1)

    def gather(self, task_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Context and strength of every sample.

        Only the tasks present in the batch enter the graph, so no gradient
        ever reaches another task's parameters.

        :param task_labels: ``(B,)`` task label of each sample.
        :return: contexts ``(B or 1, *context_shape)`` and strengths ``(B or 1,)``.
        """
        uniq, inverse = torch.unique(task_labels, return_inverse=True)
        if len(uniq) == 1:
            t = int(uniq[0])
            return self.contexts[t].unsqueeze(0), self.strengths[t]
        tasks = uniq.tolist()
        contexts = torch.stack([self.contexts[t] for t in tasks])[inverse]
        strengths = torch.cat([self.strengths[t] for t in tasks])[inverse]
        return contexts, strengths


def _random_weight(shape: Sequence[int], fan_in: int, init: str, generator: torch.Generator) -> torch.Tensor:
    if init == "gaussian":
        # Zero-mean Gaussian with variance 1 / fan_in (random-feature scaling).
        # With unit variance, one RMSProp step of 0.01 on FlyNet-10d's 7,840
        # context values moves the logits by about a unit, and the accuracy
        # left at the 1,000th batch swings by points with the batch order
        # (benchmarks/crwn_init_study.py).
        return torch.randn(tuple(shape), generator=generator) / math.sqrt(fan_in)
    if init == "unit_gaussian":
        return torch.randn(tuple(shape), generator=generator)
    if init == "pytorch":
        # nn.Linear / nn.Conv2d default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(fan_in)
        return torch.rand(tuple(shape), generator=generator) * (2 * bound) - bound
    raise ValueError(f"init must be one of {INITS}, got {init!r}.")

class _FixedWeightMixin:
    """The fixed random weight, with an optional trainable phase.

    CRWN's "pretrained mode" ablation trains the shared weight on the first
    task like an ordinary network, then freezes it: :meth:`unfreeze_weight`
    puts a trainable copy in place of the buffer, :meth:`freeze_weight`
    writes it back into the buffer and drops the parameter.
    """

    shared_weight: Optional[nn.Parameter]

    def unfreeze_weight(self) -> nn.Parameter:
        """Make the weight trainable (a parameter initialised from the buffer)."""
        if self.shared_weight is None:
            self.shared_weight = nn.Parameter(self.weight.detach().clone())
        return self.shared_weight

    def freeze_weight(self) -> None:
        """Write the trained weight back into the fixed buffer and stop training it."""
        if self.shared_weight is not None:
            with torch.no_grad():
                self.weight.copy_(self.shared_weight)
            self.shared_weight = None

    def current_weight(self) -> torch.Tensor:
        """The weight the layer computes with."""
        return self.weight if self.shared_weight is None else self.shared_weight


class ModulatedLinear(_FixedWeightMixin, nn.Module):
    """``y = a_t * R (c_t * x)`` with a fixed random ``R`` and no bias.

    :param in_features: input size.
    :param out_features: output size.
    :param init: ``"gaussian"`` (the paper's zero-mean Gaussian, std
        ``1 / sqrt(in_features)``),
        ``"unit_gaussian"`` (std 1) or ``"pytorch"`` (``nn.Linear``'s
        default uniform).
    :param seed: seed of ``R`` and of the per-task initialisations.
    :param local_only: keep random strengths fixed.
    """

    def __init__(self, in_features: int, out_features: int, *, init: str = "gaussian",
                 seed: int = 0, local_only: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer(
            "weight", _random_weight((out_features, in_features), in_features, init, derive_generator(seed))
        )
        self.modulation = TaskModulation((in_features,), seed=seed + 1, local_only=local_only)
        self.shared_weight = None

    # Scaling the weight's columns (out x in values) beats scaling the inputs
    # (B x in values) for narrow layers, FlyNet's decoder and output layers in
    # particular; wider layers scale the inputs. Mixed-task batches always
    # scale the inputs, each sample with its own context.
    WEIGHT_MODULATION_MAX_OUT = 64

    def _task_weight(self, contexts: torch.Tensor) -> Optional[torch.Tensor]:
        if contexts.shape[0] == 1 and self.out_features <= self.WEIGHT_MODULATION_MAX_OUT:
            return self.current_weight() * contexts
        return None

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        """:param x: ``(B, in_features)``.
        :param task_labels: ``(B,)`` task labels, or one for all.
        """
        owner = f"ModulatedLinear(in_features={self.in_features})"
        check_features(x, self.in_features, owner=owner, argument="in_features", flat=True)
        check_task_labels(task_labels, x.shape[0], owner=owner, n_tasks=self.modulation.n_tasks)
        contexts, strengths = self.modulation.gather(task_labels)
        weight = self._task_weight(contexts)
        if weight is not None:
            return F.linear(x, weight) * strengths
        return F.linear(x * contexts, self.current_weight()) * strengths.unsqueeze(-1)

    def forward_transposed(self, x_t: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward` for an input given as ``(in_features, B)``.

        Lets a producer that naturally computes the transposed layout (the
        fly encoder's sparse product) skip a large transposed copy.

        :param x_t: the input, features first.
        :param task_labels: ``(B,)`` task labels.
        :return: ``(B, out_features)``.
        """
        owner = f"ModulatedLinear(in_features={self.in_features}).forward_transposed"
        if x_t.dim() != 2 or x_t.shape[0] != self.in_features:
            raise ValueError(f"{owner} expects ({self.in_features}, B); got shape {tuple(x_t.shape)}. Fix: pass "
                             f"x.t() for a (B, {self.in_features}) batch, or build the layer with "
                             f"in_features={x_t.shape[0]}.")
        check_task_labels(task_labels, x_t.shape[1], owner=owner, n_tasks=self.modulation.n_tasks)
        contexts, strengths = self.modulation.gather(task_labels)
        weight = self._task_weight(contexts)
        if weight is not None:
            return (weight @ x_t).t() * strengths
        y_t = self.current_weight() @ (x_t * contexts.t())
        return y_t.t() * strengths.unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tasks={self.modulation.n_tasks}"


class ModulatedConv2d(_FixedWeightMixin, nn.Module):
    """``W_t = a_t * (R * C_t)``: a fixed random kernel modulated per task.

    ``C_t`` has shape ``(c_in, k, k)`` and is shared by all output filters.
    Because the kernel differs per task, a mixed batch runs one grouped
    convolution per task present.

    :param in_channels: input channels.
    :param out_channels: output channels.
    :param kernel_size: square kernel side.
    :param stride: convolution stride.
    :param padding: convolution padding.
    :param init: ``"gaussian"`` (std ``1 / sqrt(c_in k k)``),
        ``"unit_gaussian"`` or ``"pytorch"``.
    :param seed: seed of ``R`` and of the per-task initialisations.
    :param local_only: keep random strengths fixed.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, init: str = "gaussian", seed: int = 0, local_only: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        fan_in = in_channels * kernel_size * kernel_size
        self.register_buffer(
            "weight",
            _random_weight((out_channels, in_channels, kernel_size, kernel_size), fan_in, init, derive_generator(seed)),
        )
        self.modulation = TaskModulation((in_channels, kernel_size, kernel_size), seed=seed + 1, local_only=local_only)
        self.shared_weight = None

    def _conv(self, x: torch.Tensor, task: int) -> torch.Tensor:
        kernel = self.current_weight() * self.modulation.contexts[task].unsqueeze(0) * self.modulation.strengths[task]
        return F.conv2d(x, kernel, stride=self.stride, padding=self.padding)

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        """:param x: ``(B, in_channels, H, W)``.
        :param task_labels: ``(B,)`` task labels, or one for all.
        """
        owner = f"ModulatedConv2d(in_channels={self.in_channels})"
        check_images(x, self.in_channels, owner=owner)
        check_task_labels(task_labels, x.shape[0], owner=owner, n_tasks=self.modulation.n_tasks)
        return run_per_task(x, task_labels, self._conv)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, tasks={self.modulation.n_tasks}")
