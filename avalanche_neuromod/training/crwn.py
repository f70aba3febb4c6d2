"""CRWN training: each experience learns only its task's contexts and strengths.

For every training experience the strategy selects the experience's task,
builds a fresh optimiser over just that task's parameters (RMSProp, lr 0.01
by default), trains for a fixed number of mini-batches (the paper's 1,000 of
128) or epochs, and freezes them. Nothing shared is ever updated, so the
outputs of earlier tasks never change: zero forgetting by construction.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Type

import torch
from torch import nn

from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate

from ..models.crwn import CRWNModule
from .checkpoint import CheckpointMixin
from .loaders import whole_batch_loader
from .untrained import SkipUntrainedEvalMixin, SkipUntrainedEvalPlugin

__all__ = ["CRWN", "CRWNPlugin"]


def _require_task_labels(experience) -> None:
    if getattr(experience, "task_labels", None) is None or not hasattr(experience.dataset, "targets_task_labels"):
        raise ValueError(
            "CRWN needs the task id of every experience, and this one has no task "
            "labels: build the benchmark with return_task_id=True."
        )


def experience_task(experience) -> int:
    """The single task label of a CRWN experience, or a ValueError saying how to get one.

    :param experience: an Avalanche experience.
    """
    _require_task_labels(experience)
    labels = experience.task_labels
    if len(labels) != 1:
        raise ValueError(
            f"a CRWN training experience must hold exactly one task, got task labels {list(labels)}."
        )
    return int(labels[0])


def trainable_task_parameters(model: CRWNModule, task: int) -> list:
    """The parameters one CRWN task trains, or a ValueError if it was already learned.

    :param model: the CRWN network.
    :param task: the task label.
    """
    params = [p for p in model.task_parameters(task) if p.requires_grad]
    if not params:
        raise ValueError(
            f"task {task} was already learned and its parameters are frozen. Every "
            f"training experience needs a new task label (return_task_id=True), or "
            f"train on a fresh model."
        )
    return params


def _require_crwn_model(model) -> None:
    if not isinstance(model, CRWNModule):
        raise TypeError(
            f"CRWN trains CRWN networks (FlyNet, NeuroModNet, NeuroModResNet18); got "
            f"{type(model).__name__}. Use avalanche_neuromod.models.FlyNet or NeuroModNet."
        )


class CRWNPlugin(SkipUntrainedEvalPlugin):
    """CRWN's training rule for any Avalanche strategy.

    Put a CRWN network under Avalanche's ``Naive`` (or another strategy) and
    add this plugin: before each training experience it narrows the
    strategy's optimiser to that task's contexts and strengths (clearing its
    state), and afterwards it freezes them. Evaluation skips experiences of
    tasks not trained yet (:mod:`.untrained`), so periodic evaluation works.
    Everything else (epochs, batch size, other plugins) is the host
    strategy's. Checkpoint the host with
    :func:`~avalanche_neuromod.training.save_checkpoint` or
    :func:`~avalanche_neuromod.training.strategy_state_dict`.
    """

    def before_training_exp(self, strategy, **kwargs) -> None:
        _require_crwn_model(strategy.model)
        params = trainable_task_parameters(strategy.model, experience_task(strategy.experience))
        optimizer = strategy.optimizer
        optimizer.state.clear()
        optimizer.param_groups.clear()
        optimizer.add_param_group({"params": params})

    def after_training_exp(self, strategy, **kwargs) -> None:
        strategy.model.freeze_task(experience_task(strategy.experience))
        # The frozen task's moments are never used again (the next task starts
        # from a clear state); dropping them now keeps checkpoints free of them.
        strategy.optimizer.state.clear()


class CRWN(SkipUntrainedEvalMixin, CheckpointMixin, SupervisedTemplate):
    """Task-incremental training of a CRWN network (FlyNet, NeuroModNet).

    Works with Avalanche's evaluators, loggers and plugins like any
    ``SupervisedTemplate``. The benchmark must give task ids
    (``return_task_id=True``), one new task label per training experience.
    Evaluation skips experiences of tasks not trained yet, with a warning
    (:mod:`.untrained`); checkpoints go through :mod:`.checkpoint`.

    :param model: a :class:`~avalanche_neuromod.models.CRWNModule`.
    :param optimizer_cls: the torch optimiser built for every task.
    :param optimizer_kwargs: its arguments (default ``{"lr": 0.01}``).
    :param n_iterations: mini-batches per task (the paper: 1,000); None
        trains ``train_epochs`` full epochs instead.
    :param criterion: loss (default cross-entropy).
    :param train_mb_size: training batch size (the paper: 128).
    :param train_epochs: epochs per task when ``n_iterations`` is None.
    :param eval_mb_size: evaluation batch size.
    :param device: torch device.
    :param plugins: Avalanche plugins.
    :param evaluator: Avalanche evaluation plugin.
    :param eval_every: Avalanche's periodic evaluation setting.
    """

    def __init__(
        self,
        *,
        model: CRWNModule,
        optimizer_cls: Type[torch.optim.Optimizer] = torch.optim.RMSprop,
        optimizer_kwargs: Optional[Dict[str, Any]] = None,
        n_iterations: Optional[int] = 1000,
        criterion: Optional[nn.Module] = None,
        train_mb_size: int = 128,
        train_epochs: int = 1,
        eval_mb_size: int = 256,
        device: Any = "cpu",
        plugins: Optional[Sequence[Any]] = None,
        evaluator: Any = default_evaluator,
        eval_every: int = -1,
        **base_kwargs: Any,
    ):
        _require_crwn_model(model)
        if n_iterations is not None and n_iterations < 1:
            raise ValueError(f"n_iterations must be positive or None, got {n_iterations}.")
        self.optimizer_cls = optimizer_cls
        self.optimizer_kwargs = dict(optimizer_kwargs if optimizer_kwargs is not None else {"lr": 0.01})
        self.n_iterations = n_iterations
        self._epochs_per_task = train_epochs
        self._iterations_in_task = 0
        # A real optimiser is built per task in make_optimizer; until the first
        # task exists, the template needs one to hold.
        placeholder = optimizer_cls([nn.Parameter(torch.zeros(1))], **self.optimizer_kwargs)
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
        return experience_task(self.experience)

    def make_optimizer(self, **kwargs: Any) -> None:
        """A fresh optimiser over the current task's contexts and strengths only."""
        task = self.current_task
        if task >= self.model.n_tasks:
            return  # called once before the model grew; called again after
        params = trainable_task_parameters(self.model, task)
        self.optimizer = self.optimizer_cls(params, **self.optimizer_kwargs)
        self.optimized_param_id = {}

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: Any = None,
                              persistent_workers: bool = False, drop_last: bool = False, **kwargs: Any) -> None:
        """A plain shuffled loader: a CRWN experience holds one task, so
        Avalanche's task-balanced loader would only add per-sample overhead
        (our datasets hand over whole mini-batches to a plain loader)."""
        self.dataloader = whole_batch_loader(
            self.adapted_dataset, self.train_mb_size, shuffle=shuffle, num_workers=num_workers,
            drop_last=drop_last, pin_memory=pin_memory, persistent_workers=persistent_workers,
        )

    def _before_training_exp(self, **kwargs: Any) -> None:
        self.current_task  # fails early, with the fix, on experiences without task ids
        self._iterations_in_task = 0
        super()._before_training_exp(**kwargs)
        self.train_epochs = (
            self._epochs_per_task if self.n_iterations is None
            else math.ceil(self.n_iterations / max(1, len(self.dataloader)))
        )

    def _before_eval_exp(self, **kwargs: Any) -> None:
        _require_task_labels(self.experience)  # else Avalanche would read class labels as task ids
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
        if self.n_iterations is not None and self._iterations_in_task >= self.n_iterations:
            self.stop_training()
        super()._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        self.model.freeze_task(self.current_task)
        # The next task gets a fresh optimiser: the frozen task's moments are
        # dead weight in a checkpoint (and in pretrained mode they belong to
        # shared weights that have left the model).
        self.optimizer.state.clear()
        super()._after_training_exp(**kwargs)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the model grows to the saved tasks.

        :param state: a dictionary from :meth:`state_dict`.
        """
        super().load_state_dict(state)
        for task in self.model.trained_tasks:
            self.model.freeze_task(task)
