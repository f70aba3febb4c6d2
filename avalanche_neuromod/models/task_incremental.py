"""Task-incremental networks: per-task state that grows one task at a time.

Every network of the package that is told the task id (CRWN's, and the
baselines PSP, BatchE, SupSup, STL, MTL) is a :class:`TaskIncrementalModule`:
its layers hold their per-task state in :class:`TaskState` modules (a
context, a rank-one factor, a supermask's scores, a whole weight, batch-norm
statistics...), which all grow together when Avalanche adapts the network
to an experience with a new task label. The base class does the
bookkeeping once for all of them:

- ``task_parameters(t)`` / ``task_parameter_groups(t)``: what training task
  ``t`` may change (its own state, plus shared weights where the method
  trains them), for a fresh optimiser per task;
- ``freeze_task(t)``: stop gradients to task ``t``'s own state (and to
  shared weights where the method freezes them after a task);
- ``params_per_task()``: the learnable parameters one task costs, for
  :class:`~avalanche_neuromod.evaluation.ParametersPerExperience`;
- the forward pass checks the batch and the task labels at the boundary
  and refuses a task id it was never trained on (:mod:`._checks`).

:class:`TaskMLP` and :class:`TaskResNet18` are the two architectures of the
CRWN paper's comparisons (the fully connected ``784 -> h -> h -> 10`` net
and the reduced ResNet-18 of GEM/SupSup), built from a layer factory so that
the methods differ only in their layers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from avalanche.models import MultiTaskModule

from ._checks import as_task_labels, check_dtype, check_features, check_images, check_task_labels

__all__ = ["TaskState", "TaskIncrementalModule", "TaskBatchNorm2d", "TaskBasicBlock", "TaskMLP", "TaskResNet18",
           "TaskWeightLayer", "conv_fan_in", "kaiming_normal", "run_per_task"]


def run_per_task(x: torch.Tensor, task_labels: torch.Tensor,
                 fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """``fn(x_t, t)`` on the samples of each task present, scattered back in batch order.

    A single-task batch (the usual case) is one call with no copy.

    :param x: ``(B, ...)`` batch.
    :param task_labels: ``(B,)`` task labels.
    :param fn: the computation for one task's samples.
    """
    uniq = torch.unique(task_labels)
    if len(uniq) == 1:
        return fn(x, int(uniq[0]))
    out: Optional[torch.Tensor] = None
    for t in uniq.tolist():
        mask = task_labels == t
        part = fn(x[mask], t)
        if out is None:
            out = part.new_empty((x.shape[0],) + part.shape[1:])
        out[mask] = part
    return out


class TaskState(nn.Module):
    """The per-task state of one layer; grows by one task at a time.

    Subclasses implement :attr:`n_tasks` and :meth:`add_task`, and
    :meth:`task_parameters` when the state is learned; a new task's state is
    created on :attr:`device`, which follows the module's ``.to()``.
    """

    def __init__(self) -> None:
        super().__init__()
        # An empty buffer moves with the module, so a task added after .to(device) lands there too.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        """Where new tasks' state is created."""
        return self._anchor.device

    @property
    def n_tasks(self) -> int:
        """Number of tasks this state holds."""
        raise NotImplementedError

    def add_task(self) -> int:
        """Create the next task's state; return its index."""
        raise NotImplementedError

    def task_parameters(self, task: int) -> List[nn.Parameter]:
        """The learnable parameters of ``task`` here (none by default)."""
        return []

    def params_per_task(self) -> int:
        """Learnable scalars one task costs here."""
        return sum(p.numel() for p in self.task_parameters(0)) if self.n_tasks else 0

    def task_entries(self, task: int) -> Dict[str, torch.Tensor]:
        """``task``'s parameters and buffers here, by name: the live tensors (detached views, not copies).

        The default reads the subclass's per-task lists (``nn.ParameterList`` /
        ``nn.ModuleList`` children indexed by task), which is how every state
        of the package stores its tasks.

        :param task: a task this state holds.
        """
        out: Dict[str, torch.Tensor] = {}
        for name, child in self.named_children():
            if isinstance(child, (nn.ModuleList, nn.ParameterList)):
                item = child[task]
                if isinstance(item, torch.Tensor):
                    out[name] = item.detach()
                else:
                    out.update({f"{name}.{k}": v for k, v in item.state_dict().items()})
        return out

    def task_state_dict(self, task: int) -> Dict[str, torch.Tensor]:
        """Everything ``task`` holds here (parameters and buffers), as copies.

        :param task: a task this state holds.
        """
        return {k: v.clone() for k, v in self.task_entries(task).items()}

    def load_task_state_dict(self, task: int, state: Dict[str, torch.Tensor]) -> None:
        """Copy :meth:`task_state_dict`'s entries into ``task`` (which must exist here).

        :param task: a task this state holds.
        :param state: the entries, e.g. from a copy of this network trained elsewhere.
        """
        _copy_entries(self.task_entries(task), state, task, "this layer")


def _copy_entries(live: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], task: int, owner: str) -> None:
    """Copy ``state`` into the ``live`` tensors of the same names, after checking names and shapes."""
    if set(state) != set(live):
        odd = sorted(set(state) ^ set(live))
        raise ValueError(f"task {task}'s state does not fit {owner} (entries {odd[:3]} differ): it comes from "
                         f"another architecture.")
    for key, value in state.items():
        if tuple(value.shape) != tuple(live[key].shape):
            raise ValueError(f"task {task}'s {key} has shape {tuple(value.shape)}, {owner}'s is "
                             f"{tuple(live[key].shape)}: it comes from a network of another size.")
    with torch.no_grad():
        for key, value in state.items():
            live[key].copy_(value)


class TaskBatchNorm2d(TaskState):
    """Batch norm with per-task running statistics and no affine parameters.

    SupSup's non-affine multitask batch norm, as CRWN's convolutional nets
    use it: each task normalises with its own statistics, so training a new
    task never moves an earlier task's.

    :param num_features: channels.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.norms = nn.ModuleList()

    @property
    def n_tasks(self) -> int:
        """Number of tasks this layer holds statistics for."""
        return len(self.norms)

    def add_task(self) -> int:
        """Create the next task's statistics; return its index."""
        self.norms.append(nn.BatchNorm2d(self.num_features, affine=False).to(self.device))
        return len(self.norms) - 1

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        """:param x: ``(B, num_features, H, W)``.
        :param task_labels: ``(B,)`` task labels, or one for all.
        """
        owner = f"TaskBatchNorm2d(num_features={self.num_features})"
        check_images(x, self.num_features, owner=owner, argument="num_features")
        check_task_labels(task_labels, x.shape[0], owner=owner, n_tasks=len(self.norms))
        return run_per_task(x, task_labels, lambda part, t: self.norms[t](part))


class TaskIncrementalModule(MultiTaskModule):
    """Base class of the task-incremental networks: per-task bookkeeping in one place.

    Subclasses build their layers (holding :class:`TaskState` modules),
    implement :meth:`check_input` and :meth:`forward_tasks`, and call
    :meth:`ensure_tasks` (1) at the end of their constructor, so that an
    optimiser can be built over ``model.parameters()`` right away. Methods
    whose shared weights train with some tasks override
    :meth:`shared_task_parameters` and :meth:`freeze_shared`.
    """

    independent_tasks: bool = False
    """True where training one task reads and writes nothing but its own state (CRWN, SupSup, STL):
    its tasks may then train in parallel (:func:`~avalanche_neuromod.training.train_tasks_parallel`)."""

    def task_states(self) -> List[TaskState]:
        """Every per-task state holder of the network, in module order."""
        return [m for m in self.modules() if isinstance(m, TaskState)]

    def task_entries(self, task: int) -> Dict[str, torch.Tensor]:
        """Task ``task``'s live parameters and buffers, keyed by module name (see :meth:`TaskState.task_entries`).

        :param task: a task label the network holds.
        """
        self._check_known(task, allow_untrained=True)
        return {f"{name}.{key}": value for name, m in self.named_modules() if isinstance(m, TaskState)
                for key, value in m.task_entries(task).items()}

    def task_state_dict(self, task: int) -> Dict[str, torch.Tensor]:
        """Everything task ``task`` learned, keyed by module name, as copies: what a copy trained elsewhere
        hands back.

        :param task: a task label the network holds.
        """
        return {k: v.clone() for k, v in self.task_entries(task).items()}

    def load_task_state_dict(self, task: int, state: Dict[str, torch.Tensor]) -> None:
        """Load one task's state (from :meth:`task_state_dict` of a copy of this network).

        The network must already hold ``task`` (see :meth:`ensure_tasks`).

        :param task: a task label the network holds.
        :param state: the task's entries.
        """
        _copy_entries(self.task_entries(task), state, task, f"this {type(self).__name__}")

    @property
    def n_tasks(self) -> int:
        """Number of tasks the network holds state for."""
        states = self.task_states()
        return states[0].n_tasks if states else 0

    @property
    def trained_tasks(self) -> List[int]:
        """Task labels the network was adapted to while training, sorted."""
        return sorted(self.known_train_tasks_labels)

    def add_task(self) -> int:
        """Grow every per-task state by one task; return the new task's index."""
        indices = {m.add_task() for m in self.task_states()}
        (task,) = indices
        return task

    def ensure_tasks(self, n: int) -> None:
        """Grow until the network holds state for ``n`` tasks."""
        while self.n_tasks < n:
            self.add_task()

    def adaptation(self, experience) -> None:
        """Add state for the experience's new task labels (training only)."""
        labels = getattr(experience, "task_labels", None)
        if self.training:
            if not labels:
                raise ValueError(
                    f"{type(self).__name__} needs the task id: the training experience has no task "
                    f"labels. Build the benchmark with return_task_id=True."
                )
            self.ensure_tasks(max(labels) + 1)
        super().adaptation(experience)

    def shared_task_parameters(self, task: int) -> List[nn.Parameter]:
        """Shared (not per-task) parameters that training ``task`` changes; none by default."""
        return []

    def task_parameters(self, task: int) -> List[nn.Parameter]:
        """The learnable parameters of ``task``: its own state plus the shared ones it trains.

        :param task: a task label the network holds.
        """
        self._check_known(task, allow_untrained=True)
        own = [p for m in self.task_states() for p in m.task_parameters(task)]
        return own + self.shared_task_parameters(task)

    def task_parameter_groups(self, task: int) -> List[Dict[str, Any]]:
        """Optimiser parameter groups for ``task``: its own trainable state, then the shared weights it trains.

        The shared group is marked ``"shared": True`` so that a strategy can
        give it its own learning rate (BatchE's first task); empty groups
        are left out.

        :param task: a task label the network holds.
        """
        shared_ids = {id(p) for p in self.shared_task_parameters(task)}
        params = [p for p in self.task_parameters(task) if p.requires_grad]
        own = [p for p in params if id(p) not in shared_ids]
        shared = [p for p in params if id(p) in shared_ids]
        groups: List[Dict[str, Any]] = []
        if own:
            groups.append({"params": own})
        if shared:
            groups.append({"params": shared, "shared": True})
        return groups

    def freeze_shared(self, task: int) -> None:
        """Freeze what a method stops training after ``task`` (nothing by default)."""

    def freeze_task(self, task: int) -> None:
        """Stop gradients to ``task``'s own state (after it was learned), and let the method freeze shared weights.

        :param task: a task label the network holds.
        """
        self._check_known(task, allow_untrained=True)
        for m in self.task_states():
            for p in m.task_parameters(task):
                p.requires_grad_(False)
        self.freeze_shared(task)

    def shared_params_per_task(self) -> int:
        """Shared parameters a method counts against every task (PSP: all of them); 0 by default."""
        return 0

    def params_per_task(self) -> int:
        """Learnable parameters one task costs."""
        return sum(m.params_per_task() for m in self.task_states()) + self.shared_params_per_task()

    def _check_known(self, task: int, allow_untrained: bool = False) -> None:
        if task < 0 or task >= self.n_tasks:
            raise ValueError(
                f"task id {task} is out of range: the network holds {self.n_tasks} "
                f"task(s), ids 0..{self.n_tasks - 1}. Train an experience with this "
                f"task label first."
            )
        if not allow_untrained and task not in self.known_train_tasks_labels:
            raise ValueError(
                f"task id {task} was never trained; trained tasks: {self.trained_tasks}."
            )

    def _task_tensor(self, x: torch.Tensor, task_labels: Union[None, int, torch.Tensor]) -> torch.Tensor:
        if task_labels is None:
            raise ValueError(
                f"{type(self).__name__} needs a task id for every sample: call model(x, task_labels) "
                f"(Avalanche does so when the benchmark has return_task_id=True)."
            )
        task_labels = as_task_labels(task_labels, x, owner=self._owner())
        for t in torch.unique(task_labels).tolist():
            self._check_known(int(t), allow_untrained=self.training)
        return task_labels

    def forward(self, x: torch.Tensor, task_labels: Union[None, int, torch.Tensor] = None) -> torch.Tensor:
        """Logits of ``x`` under each sample's task; a mixed batch is one call.

        :param x: input batch.
        :param task_labels: one task label per sample, or one for all.
        :raises ValueError: a batch or task labels of the wrong shape or dtype,
            with the shape expected, the shape received and the fix; a task
            id the network holds no state for, or (in eval mode) never trained.
        """
        self.check_input(x)
        return self.forward_tasks(x, self._task_tensor(x, task_labels))

    def check_input(self, x: torch.Tensor) -> None:
        """Subclasses: raise a ``ValueError`` naming the fix if ``x`` does not fit the network."""
        raise NotImplementedError

    def _owner(self) -> str:
        """The network as its constructor call, for error messages."""
        return type(self).__name__

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.forward(x, task_label)

    def forward_tasks(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        """Subclasses: logits given a validated ``(B,)`` task-label tensor."""
        raise NotImplementedError

    def get_extra_state(self) -> Dict[str, Any]:
        return {"n_tasks": self.n_tasks, "trained_tasks": self.trained_tasks}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.known_train_tasks_labels = set(int(t) for t in state["trained_tasks"])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a state dict, first growing to the number of tasks it holds."""
        extra = state_dict.get("_extra_state")
        if isinstance(extra, dict) and "n_tasks" in extra:
            self.ensure_tasks(int(extra["n_tasks"]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


LayerFactory = Callable[..., nn.Module]
"""``make_layer(index, d_in, d_out, kernel_size=None, stride=1, padding=0)``: the layer at position
``index`` (0, 1, ... in construction order); a convolution when ``kernel_size`` is given. The layer's
``forward(x, task_labels)`` takes the batch and its ``(B,)`` task labels."""


class TaskMLP(TaskIncrementalModule):
    """A fully connected task-incremental net, ``input_size -> h -> ... -> n_classes`` with ReLU.

    :param make_layer: the :data:`LayerFactory` of the method (linear calls only).
    :param hidden_sizes: widths of the hidden layers.
    :param input_size: flattened input size (784 for MNIST).
    :param n_classes: outputs.
    """

    def __init__(self, make_layer: LayerFactory, hidden_sizes: Sequence[int] = (256, 256), *,
                 input_size: int = 784, n_classes: int = 10):
        super().__init__()
        sizes = [int(input_size), *[int(h) for h in hidden_sizes], int(n_classes)]
        if any(s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}.")
        self.hidden_sizes = tuple(sizes[1:-1])
        self.layers = nn.ModuleList(make_layer(i, a, b) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
        self._input_size = sizes[0]

    @property
    def input_size(self) -> int:
        """Values per input sample (784 for MNIST)."""
        return self._input_size

    def _owner(self) -> str:
        return f"{type(self).__name__}(input_size={self.input_size})"

    def _dtype(self) -> torch.dtype:
        return next(t for t in [*self.layers[0].parameters(), *self.layers[0].buffers()]
                    if t.is_floating_point()).dtype

    def check_input(self, x: torch.Tensor) -> None:
        """``(B, ...)`` with ``input_size`` values per sample, in the weights' dtype."""
        check_features(x, self.input_size, owner=self._owner())
        check_dtype(x, self._dtype(), owner=self._owner())

    def forward_tasks(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.layers):
            h = layer(h, task_labels)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h


class TaskBasicBlock(nn.Module):
    """ResNet basic block of task-incremental convolutions and per-task batch norm.

    :param in_planes: input channels.
    :param planes: output channels.
    :param stride: stride of the first convolution (and of the shortcut).
    :param make_conv: ``make_conv(c_in, c_out, k, stride, padding)``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, make_conv: Callable[..., nn.Module]):
        super().__init__()
        self.conv1 = make_conv(in_planes, planes, 3, stride=stride, padding=1)
        self.bn1 = TaskBatchNorm2d(planes)
        self.conv2 = make_conv(planes, planes, 3, stride=1, padding=1)
        self.bn2 = TaskBatchNorm2d(planes)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = make_conv(in_planes, planes, 1, stride=stride, padding=0)
            self.shortcut_bn = TaskBatchNorm2d(planes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, t), t))
        out = self.bn2(self.conv2(out, t), t)
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x, t), t)
        return F.relu(out + skip)


class TaskResNet18(TaskIncrementalModule):
    """The reduced ResNet-18 of GEM/SupSup, task-incremental, built from a layer factory.

    ``nf = 10 * width`` filters in the first stage (the CRWN paper's "reduced"
    net halves GEM's 20), stages of ``nf, 2nf, 4nf, 8nf`` with two basic
    blocks each, global average pooling and a linear output; batch norm with
    per-task statistics and no affine parameters (SupSup's), so that methods
    differ only in their convolutions and output layer.

    :param make_layer: the :data:`LayerFactory` of the method; layer indices
        run conv1, then per block conv1, conv2, shortcut, then the output.
    :param width: width multiplier.
    :param n_classes: outputs.
    :param in_channels: input channels (3 for CIFAR).
    """

    def __init__(self, make_layer: LayerFactory, width: int = 1, *, n_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive integer, got {width}.")
        self.width = width
        nf = 10 * width
        counter = iter(range(10_000))

        def make_conv(c_in: int, c_out: int, k: int, stride: int, padding: int) -> nn.Module:
            return make_layer(next(counter), c_in, c_out, kernel_size=k, stride=stride, padding=padding)

        self.conv1 = make_conv(in_channels, nf, 3, stride=1, padding=1)
        self.bn1 = TaskBatchNorm2d(nf)
        blocks = []
        in_planes = nf
        for planes, stride in ((nf, 1), (2 * nf, 2), (4 * nf, 2), (8 * nf, 2)):
            for s in (stride, 1):
                blocks.append(TaskBasicBlock(in_planes, planes, s, make_conv))
                in_planes = planes
        self.blocks = nn.ModuleList(blocks)
        self.linear = make_layer(next(counter), 8 * nf, n_classes)
        self._in_channels = int(in_channels)

    @property
    def in_channels(self) -> int:
        """Channels of an input image (3 for CIFAR)."""
        return self._in_channels

    def _owner(self) -> str:
        return f"{type(self).__name__}(in_channels={self.in_channels})"

    def _dtype(self) -> torch.dtype:
        return next(t for t in [*self.conv1.parameters(), *self.conv1.buffers()] if t.is_floating_point()).dtype

    def check_input(self, x: torch.Tensor) -> None:
        """``(B, in_channels, H, W)``, in the kernels' dtype."""
        check_images(x, self.in_channels, owner=self._owner())
        check_dtype(x, self._dtype(), owner=self._owner())

    def forward_tasks(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, task_labels), task_labels))
        for block in self.blocks:
            out = block(out, task_labels)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out, task_labels)


def conv_fan_in(in_channels: int, kernel_size: Optional[int]) -> int:
    """Inputs one output unit reads: ``in_channels * k * k`` (``in_channels`` for a linear layer)."""
    return in_channels * (kernel_size or 1) ** 2



def kaiming_normal(shape: Sequence[int], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """Kaiming-normal values for a ReLU net: ``N(0, 2 / fan_in)``, drawn from ``generator``.

    :param shape: the weight's shape.
    :param fan_in: inputs per output unit.
    :param generator: the source of randomness (one per layer and task, so runs repeat).
    """
    return torch.randn(tuple(shape), generator=generator) * (2.0 / fan_in) ** 0.5


class TaskWeightLayer(nn.Module):
    """A linear or convolutional layer whose weight (and bias) depend on the task: ``y = op(x, W_t) + b_t``.

    A method implements :meth:`task_weight`; samples of several tasks in one
    batch each get their task's weight (:func:`run_per_task`).

    :param in_features: inputs (channels for a convolution).
    :param out_features: outputs (channels for a convolution).
    :param kernel_size: square kernel side; None for a linear layer.
    :param stride: convolution stride.
    :param padding: convolution padding.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: Optional[int] = None, *,
                 stride: int = 1, padding: int = 0):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        k = () if kernel_size is None else (kernel_size, kernel_size)
        self.weight_shape = (self.out_features, self.in_features, *k)
        self.fan_in = conv_fan_in(self.in_features, kernel_size)

    def task_weight(self, task: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Subclasses: the weight (shaped :attr:`weight_shape`) and bias (or None) of ``task``."""
        raise NotImplementedError

    def trained_weight(self, seed: int) -> nn.Parameter:
        """A kaiming-normal weight of :attr:`weight_shape` drawn from ``seed``, for methods that train one."""
        from .modulated import derive_generator

        return nn.Parameter(kaiming_normal(self.weight_shape, self.fan_in, derive_generator(seed)))

    def _owner(self) -> str:
        return f"{type(self).__name__}({self.in_features}, {self.out_features})"

    def apply_task(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """The layer on a batch of one task."""
        weight, bias = self.task_weight(task)
        if self.kernel_size is None:
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        """:param x: ``(B, in_features)`` or ``(B, in_features, H, W)``.
        :param task_labels: ``(B,)`` task labels, or one for all.
        """
        if self.kernel_size is None:
            check_features(x, self.in_features, owner=self._owner(), argument="in_features", flat=True)
        else:
            check_images(x, self.in_features, owner=self._owner(), argument="in_features")
        states = [m for m in self.children() if isinstance(m, TaskState)]
        held = min(m.n_tasks for m in states) if states else None
        check_task_labels(task_labels, x.shape[0], owner=self._owner(), n_tasks=held)
        return run_per_task(x, task_labels, self.apply_task)

    def extra_repr(self) -> str:
        conv = "" if self.kernel_size is None else (f", kernel_size={self.kernel_size}, stride={self.stride}, "
                                                    f"padding={self.padding}")
        return f"{self.in_features}, {self.out_features}{conv}"
