"""Task-incremental training, one task at a time: the rule CRWN and the per-task baselines share.

For every training experience the strategy selects the experience's task,
builds a fresh optimiser over what that task may change
(``model.task_parameter_groups(task)``: its own per-task state, plus shared
weights where the method trains them), trains for a fixed number of
mini-batches (the CRWN paper's 1,000 of 128) or epochs, and then freezes
the task's own state (``model.freeze_task``). What a method shares decides
its forgetting: CRWN, SupSup and STL share nothing trainable (zero
forgetting by construction), BatchE freezes its shared weight after the
first task, PSP keeps training it.

The model must be a
:class:`~avalanche_neuromod.models.task_incremental.TaskIncrementalModule`
and the benchmark must give task ids (``return_task_id=True``), one new task
label per training experience.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

import torch
from torch import nn

from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate

from ..models.modulated import derive_generator
from ..models.task_incremental import TaskIncrementalModule
from ._targets import CheckedTargetsMixin
from .checkpoint import CheckpointMixin
from .loaders import whole_batch_loader
from .untrained import SkipUntrainedEvalMixin, SkipUntrainedEvalPlugin

__all__ = ["TaskIncrementalStrategy", "TaskParametersPlugin", "experience_task", "task_optimizer_groups"]


def _require_task_labels(experience, method: str) -> None:
    if getattr(experience, "task_labels", None) is None or not hasattr(experience.dataset, "targets_task_labels"):
        raise ValueError(
            f"{method} needs the task id of every experience, and this one has no task "
            f"labels: build the benchmark with return_task_id=True."
        )


def experience_task(experience, method: str = "CRWN") -> int:
    """The single task label of a training experience, or a ValueError saying how to get one.

    :param experience: an Avalanche experience.
    :param method: the method's name, for the error message.
    """
    _require_task_labels(experience, method)
    labels = experience.task_labels
    if len(labels) != 1:
        raise ValueError(
            f"a {method} training experience must hold exactly one task, got task labels {list(labels)}."
        )
    return int(labels[0])


def task_optimizer_groups(model: TaskIncrementalModule, task: int,
                          shared_lr: Optional[float] = None) -> List[Dict[str, Any]]:
    """Optimiser groups for one task, or a ValueError if it was already learned.

    :param model: the task-incremental network.
    :param task: the task label.
    :param shared_lr: learning rate of the shared weights the task trains
        (None: the optimiser's own).
    """
    groups = model.task_parameter_groups(task)
    if not groups:
        raise ValueError(
            f"task {task} was already learned and its parameters are frozen. Every "
            f"training experience needs a new task label (return_task_id=True), or "
            f"train on a fresh model."
        )
    for group in groups:
        if group.pop("shared", False) and shared_lr is not None:
            group["lr"] = shared_lr
    return groups


def _require_model(model, model_type: type, names: str, method: str) -> None:
    if not isinstance(model, model_type):
        raise TypeError(
            f"{method} trains {names}; got {type(model).__name__}. Fix: build the model with one of "
            f"them (avalanche_neuromod.models)."
        )


class TaskParametersPlugin(SkipUntrainedEvalPlugin):
    """The one-task-at-a-time rule for any Avalanche strategy (e.g. ``Naive`` with a task-incremental model).

    Before each training experience it narrows the strategy's optimiser to
    that task's parameter groups (clearing its state); afterwards it freezes
    the task. Evaluation skips experiences of tasks not trained yet
    (:mod:`.untrained`), so periodic evaluation works. Everything else
    (epochs, batch size, other plugins) is the host strategy's.

    :param shared_lr: learning rate of shared weights a task trains (BatchE's
        first task); None keeps the optimiser's.
    """

    model_type: type = TaskIncrementalModule
    model_names: str = "task-incremental networks (PSPNet, BatchENet, SupSupNet, STLNet, NeuroModNet, ...)"
    method: str = "task-incremental training"

    def __init__(self, shared_lr: Optional[float] = None):
        super().__init__()
        self.shared_lr = shared_lr

    def before_training_exp(self, strategy, **kwargs) -> None:
        _require_model(strategy.model, self.model_type, self.model_names, self.method)
        task = experience_task(strategy.experience, self.method)
        optimizer = strategy.optimizer
        optimizer.state.clear()
        optimizer.param_groups.clear()
        for group in task_optimizer_groups(strategy.model, task, self.shared_lr):
            optimizer.add_param_group(group)

    def after_training_exp(self, strategy, **kwargs) -> None:
        strategy.model.freeze_task(experience_task(strategy.experience, self.method))
        # The frozen task's moments are never used again (the next task starts
        # from a clear state); dropping them now keeps checkpoints free of them.
        strategy.optimizer.state.clear()


class TaskIncrementalStrategy(CheckedTargetsMixin, SkipUntrainedEvalMixin, CheckpointMixin, SupervisedTemplate):
    """Train a task-incremental network one task at a time, with a fresh optimiser per task.

    Works with Avalanche's evaluators, loggers and plugins like any
    ``SupervisedTemplate``. Evaluation skips experiences of tasks not
    trained yet, with a warning (:mod:`.untrained`); checkpoints go through
    :mod:`.checkpoint`.

    :param model: a :class:`~avalanche_neuromod.models.task_incremental.TaskIncrementalModule`.
    :param optimizer_cls: the torch optimiser built for every task.
    :param optimizer_kwargs: its arguments (default: the method's).
    :param shared_lr: learning rate of the shared weights a task trains
        (default: the method's; None keeps the optimiser's).
    :param n_iterations: mini-batches per task (the CRWN paper: 1,000); None
        trains ``train_epochs`` full epochs instead.
    :param criterion: loss (default cross-entropy).
    :param train_mb_size: training batch size (the paper: 128).
    :param train_epochs: epochs per task when ``n_iterations`` is None.
    :param eval_mb_size: evaluation batch size.
    :param device: torch device.
    :param plugins: Avalanche plugins.
    :param evaluator: Avalanche evaluation plugin.
    :param eval_every: Avalanche's periodic evaluation setting.
    :param batch_seed: when set, task ``t``'s batch order is drawn from
        ``(batch_seed, t)`` alone, not from torch's global random state: a
        task then trains the same whatever ran before it, which lets
        independent tasks train in parallel
        (:func:`~avalanche_neuromod.training.train_tasks_parallel`).
    :param lr_schedule: how the learning rate moves within a task, after
        every mini-batch, starting again from the optimiser's rate at every
        task (its optimiser is new): None keeps it constant; ``"cosine"``
        decays it to 0 along a cosine over the task's mini-batches
        (``n_iterations``, or ``train_epochs`` epochs), the CRWN paper's
        schedule for the baselines on Split CIFAR-100; or a callable
        ``(optimizer, steps) -> scheduler`` building any torch scheduler
        stepped once per mini-batch.
    """

    method: str = "task-incremental training"
    model_type: type = TaskIncrementalModule
    model_names: str = TaskParametersPlugin.model_names
    default_optimizer_cls: Type[torch.optim.Optimizer] = torch.optim.RMSprop
    default_optimizer_kwargs: Dict[str, Any] = {"lr": 0.01}
    default_shared_lr: Optional[float] = None

    _UNSET = object()

    def __init__(
        self,
        *,
        model: TaskIncrementalModule,
        optimizer_cls: Optional[Type[torch.optim.Optimizer]] = None,
        optimizer_kwargs: Optional[Dict[str, Any]] = None,
        shared_lr: Any = _UNSET,
        n_iterations: Optional[int] = 1000,
        criterion: Optional[nn.Module] = None,
        train_mb_size: int = 128,
        train_epochs: int = 1,
        eval_mb_size: int = 256,
        device: Any = "cpu",
        plugins: Optional[Sequence[Any]] = None,
        evaluator: Any = default_evaluator,
        eval_every: int = -1,
        batch_seed: Optional[int] = None,
        lr_schedule: Union[None, str, Callable[[torch.optim.Optimizer, int], Any]] = None,
        **base_kwargs: Any,
    ):
        _require_model(model, self.model_type, self.model_names, self.method)
        if not (lr_schedule is None or lr_schedule == "cosine" or callable(lr_schedule)):
            raise ValueError(f"lr_schedule must be None, 'cosine' or a callable (optimizer, steps) -> scheduler; "
                             f"got {lr_schedule!r}.")
        self.lr_schedule = lr_schedule
        self.lr_scheduler: Any = None
        if n_iterations is not None and n_iterations < 1:
            raise ValueError(f"n_iterations must be positive or None, got {n_iterations}.")
        self.optimizer_cls = optimizer_cls or self.default_optimizer_cls
        self.optimizer_kwargs = dict(optimizer_kwargs if optimizer_kwargs is not None
                                     else self.default_optimizer_kwargs)
        self.shared_lr = self.default_shared_lr if shared_lr is self._UNSET else shared_lr
        self.n_iterations = n_iterations
        self.batch_seed = None if batch_seed is None else int(batch_seed)
        self._epochs_per_task = train_epochs
        self._iterations_in_task = 0
        # A real optimiser is built per task in make_optimizer; until the first
        # task exists, the template needs one to hold.
        placeholder = self.optimizer_cls([nn.Parameter(torch.zeros(1))], **self.optimizer_kwargs)
        super().__init__(
            model=model,
            optimizer=placeholder,
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=list(plugins) if plugins else None,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )

    @property
    def current_task(self) -> int:
        """The task label of the experience being trained or evaluated."""
        return experience_task(self.experience, self.method)

    def make_optimizer(self, **kwargs: Any) -> None:
        """A fresh optimiser over what the current task may change."""
        task = self.current_task
        if task >= self.model.n_tasks:
            return  # called once before the model grew; called again after
        groups = task_optimizer_groups(self.model, task, self.shared_lr)
        self.optimizer = self.optimizer_cls(groups, **self.optimizer_kwargs)
        self.optimized_param_id = {}

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: Any = None,
                              persistent_workers: bool = False, drop_last: bool = False, **kwargs: Any) -> None:
        """A plain shuffled loader: an experience holds one task, so Avalanche's
        task-balanced loader would only add per-sample overhead (our datasets
        hand over whole mini-batches to a plain loader)."""
        generator = None if self.batch_seed is None else derive_generator(self.batch_seed, self.current_task)
        self.dataloader = whole_batch_loader(
            self.adapted_dataset, self.train_mb_size, shuffle=shuffle, num_workers=num_workers,
            drop_last=drop_last, pin_memory=pin_memory, persistent_workers=persistent_workers,
            generator=generator,
        )

    def _before_training_exp(self, **kwargs: Any) -> None:
        self.current_task  # fails early, with the fix, on experiences without task ids
        self._iterations_in_task = 0
        super()._before_training_exp(**kwargs)
        self.train_epochs = (
            self._epochs_per_task if self.n_iterations is None
            else math.ceil(self.n_iterations / max(1, len(self.dataloader)))
        )
        self.lr_scheduler = None
        if self.lr_schedule is not None:
            steps = self.n_iterations or self.train_epochs * len(self.dataloader)
            if self.lr_schedule == "cosine":
                self.lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, steps))
            else:
                self.lr_scheduler = self.lr_schedule(self.optimizer, steps)

    def _before_eval_exp(self, **kwargs: Any) -> None:
        _require_task_labels(self.experience, self.method)  # else Avalanche would read class labels as task ids
        super()._before_eval_exp(**kwargs)

    def backward(self) -> None:
        if not torch.isfinite(self.loss).all():
            raise FloatingPointError(
                f"the loss became {self.loss.item()} at iteration {self._iterations_in_task} "
                f"of task {self.current_task}: lower the learning rate "
                f"(optimizer_kwargs={{'lr': ...}}, now {self.optimizer_kwargs})."
            )
        super().backward()

    def _after_training_iteration(self, **kwargs: Any) -> None:
        self._iterations_in_task += 1
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        if self.n_iterations is not None and self._iterations_in_task >= self.n_iterations:
            self.stop_training()
        super()._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        self.model.freeze_task(self.current_task)
        # The next task gets a fresh optimiser: the frozen task's moments are
        # dead weight in a checkpoint (and in CRWN's pretrained mode they
        # belong to shared weights that have left the model).
        self.optimizer.state.clear()
        super()._after_training_exp(**kwargs)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the model grows to the saved tasks.

        :param state: a dictionary from :meth:`state_dict`.
        """
        super().load_state_dict(state)
        for task in self.model.trained_tasks:
            self.model.freeze_task(task)
