"""CRWN training: each experience learns only its task's contexts and strengths.

For every training experience the strategy selects the experience's task,
builds a fresh optimiser over just that task's parameters (RMSProp, lr 0.01
by default), trains for a fixed number of mini-batches (the paper's 1,000 of
128) or epochs, and freezes them. Nothing shared is ever updated, so the
outputs of earlier tasks never change: zero forgetting by construction.
The rule itself is :mod:`~avalanche_neuromod.training.task_incremental`'s, shared with the per-task
baselines.
"""

from __future__ import annotations

from ..models.crwn import CRWNModule
from .task_incremental import TaskIncrementalStrategy, TaskParametersPlugin

__all__ = ["CRWN", "CRWNPlugin"]

_CRWN_MODELS = "CRWN networks (FlyNet, NeuroModNet, NeuroModResNet18)"


class CRWNPlugin(TaskParametersPlugin):
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

    model_type = CRWNModule
    model_names = _CRWN_MODELS
    method = "CRWN"


class CRWN(TaskIncrementalStrategy):
    """Task-incremental training of a CRWN network (FlyNet, NeuroModNet).

    Works with Avalanche's evaluators, loggers and plugins like any
    ``SupervisedTemplate``. The benchmark must give task ids
    (``return_task_id=True``), one new task label per training experience.
    Evaluation skips experiences of tasks not trained yet, with a warning
    (:mod:`.untrained`); checkpoints go through :mod:`.checkpoint`. The
    arguments are :class:`~avalanche_neuromod.training.task_incremental.TaskIncrementalStrategy`'s; the
    defaults are the paper's (RMSProp, lr 0.01, 1,000 mini-batches of 128
    per task).
    """

    method = "CRWN"
    model_type = CRWNModule
    model_names = _CRWN_MODELS
