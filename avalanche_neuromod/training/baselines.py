"""The CRWN paper's baselines as Avalanche strategies: PSP, BatchE, SupSup, STL (one task at a time) and MTL.

PSP, BatchE, SupSup and STL follow the rule of :mod:`~avalanche_neuromod.training.task_incremental`
(a fresh optimiser per task over what the task may change, then freeze),
so they differ only in their models (:mod:`avalanche_neuromod.models.psp`,
``.batch_ensemble``, ``.supsup``, ``.reference``) and defaults. MTL is
Avalanche's joint training on a network with one head per task. Under any
other Avalanche strategy, :class:`~avalanche_neuromod.training.task_incremental.TaskParametersPlugin`
applies the same rule to these models.

Defaults (MNIST variants, 1,000 mini-batches of 128 per task, RMSProp):
SupSup lr 1e-4 (the paper's); BatchE lr 0.01 for the fast weights and 1e-4
for the shared weight while the first task trains it (the paper's); PSP,
STL and MTL, for which the papers give no MNIST rate, the same 1e-4 as the
other trained dense weights.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Type

import torch
from torch import nn

from avalanche.training import JointTraining
from avalanche.training.plugins.evaluation import default_evaluator

from ..models.batch_ensemble import BatchENet, BatchEResNet18
from ..models.psp import PSPNet, PSPResNet18
from ..models.reference import MTLNet, MTLResNet18, STLNet, STLResNet18
from ..models.supsup import SupSupNet, SupSupResNet18
from ..models.task_incremental import TaskIncrementalModule
from .checkpoint import CheckpointMixin
from .task_incremental import TaskIncrementalStrategy

__all__ = ["PSP", "BatchE", "SupSup", "STL", "MTL"]

DENSE_LR = 1e-4
"""Learning rate of trained dense weights on MNIST variants (SupSup's, and BatchE's first-task shared weight)."""


class PSP(TaskIncrementalStrategy):
    """PSP: the shared weights keep training on every task, each task seeing them through its fixed context.

    Arguments as :class:`~avalanche_neuromod.training.task_incremental.TaskIncrementalStrategy`'s;
    default RMSProp lr 1e-4.
    """

    method = "PSP"
    model_type = (PSPNet, PSPResNet18)
    model_names = "PSP networks (PSPNet, PSPResNet18)"
    default_optimizer_kwargs = {"lr": DENSE_LR}


class BatchE(TaskIncrementalStrategy):
    """BatchE: the first task trains the shared weights (lr ``shared_lr``) with its fast weights; later tasks only theirs.

    Arguments as :class:`~avalanche_neuromod.training.task_incremental.TaskIncrementalStrategy`'s;
    defaults the paper's: RMSProp lr 0.01 for the fast weights, 1e-4 for the
    shared weights.
    """

    method = "BatchE"
    model_type = (BatchENet, BatchEResNet18)
    model_names = "BatchE networks (BatchENet, BatchEResNet18)"
    default_optimizer_kwargs = {"lr": 0.01}
    default_shared_lr = DENSE_LR


class SupSup(TaskIncrementalStrategy):
    """SupSup: each task learns the scores of its supermask over the fixed network.

    Arguments as :class:`~avalanche_neuromod.training.task_incremental.TaskIncrementalStrategy`'s;
    default the paper's RMSProp lr 1e-4.
    """

    method = "SupSup"
    model_type = (SupSupNet, SupSupResNet18)
    model_names = "SupSup networks (SupSupNet, SupSupResNet18)"
    default_optimizer_kwargs = {"lr": DENSE_LR}


class STL(TaskIncrementalStrategy):
    """STL: each task trains its own network from scratch (an upper reference with no sharing).

    Arguments as :class:`~avalanche_neuromod.training.task_incremental.TaskIncrementalStrategy`'s;
    default RMSProp lr 1e-4.
    """

    method = "STL"
    model_type = (STLNet, STLResNet18)
    model_names = "STL networks (STLNet, STLResNet18)"
    default_optimizer_kwargs = {"lr": DENSE_LR}


class MTL(CheckpointMixin, JointTraining):
    """MTL: Avalanche's joint training of a shared trunk with one head per task, on all tasks at once.

    Call ``train`` once with the whole training stream. The budget matches
    the one-task-at-a-time methods: ``n_iterations`` mini-batches per task,
    so ``n_iterations * n_tasks`` in all over the mixed tasks.

    :param model: :class:`~avalanche_neuromod.models.MTLNet` or ``MTLResNet18``.
    :param optimizer_cls: the torch optimiser (default RMSProp).
    :param optimizer_kwargs: its arguments (default ``{"lr": 1e-4}``).
    :param n_iterations: mini-batches per task; None trains ``train_epochs`` epochs.
    :param criterion: loss (default cross-entropy).
    :param train_mb_size: training batch size.
    :param train_epochs: epochs when ``n_iterations`` is None.
    :param eval_mb_size: evaluation batch size.
    :param device: torch device.
    :param plugins: Avalanche plugins.
    :param evaluator: Avalanche evaluation plugin.
    :param eval_every: Avalanche's periodic evaluation setting.
    """

    def __init__(self, *, model: TaskIncrementalModule, optimizer_cls: Type[torch.optim.Optimizer] = torch.optim.RMSprop,
                 optimizer_kwargs: Optional[Dict[str, Any]] = None, n_iterations: Optional[int] = 1000,
                 criterion: Optional[nn.Module] = None, train_mb_size: int = 128, train_epochs: int = 1,
                 eval_mb_size: int = 256, device: Any = "cpu", plugins: Optional[Sequence[Any]] = None,
                 evaluator: Any = default_evaluator, eval_every: int = -1, **base_kwargs: Any):
        if not isinstance(model, (MTLNet, MTLResNet18)):
            raise TypeError(f"MTL trains MTL networks (MTLNet, MTLResNet18); got {type(model).__name__}. "
                            f"Fix: build the model with one of them (avalanche_neuromod.models).")
        if n_iterations is not None and n_iterations < 1:
            raise ValueError(f"n_iterations must be positive or None, got {n_iterations}.")
        self.n_iterations = n_iterations
        self._epochs = train_epochs
        self._max_iterations: Optional[int] = None
        self._iterations = 0
        optimizer = optimizer_cls(model.parameters(), **(optimizer_kwargs or {"lr": DENSE_LR}))
        super().__init__(model=model, optimizer=optimizer,
                         criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
                         device=device, plugins=list(plugins) if plugins else None, evaluator=evaluator,
                         eval_every=eval_every, **base_kwargs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        tasks = {int(t) for e in self._experiences for t in (getattr(e, "task_labels", None) or [])}
        if not tasks:
            raise ValueError("MTL needs the task id of every experience: build the benchmark with "
                             "return_task_id=True.")
        super()._before_training_exp(**kwargs)
        self._iterations = 0
        if self.n_iterations is None:
            self.train_epochs = self._epochs
        else:
            self._max_iterations = self.n_iterations * len(tasks)
            self.train_epochs = math.ceil(self._max_iterations / max(1, len(self.dataloader)))

    def _after_training_iteration(self, **kwargs: Any) -> None:
        self._iterations += 1
        if self._max_iterations is not None and self._iterations >= self._max_iterations:
            self.stop_training()
        super()._after_training_iteration(**kwargs)
