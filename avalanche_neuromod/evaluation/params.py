"""Learnable parameters per experience: the CRWN paper's "params/task"."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

__all__ = ["ParametersPerExperience", "parameters_per_experience_metrics", "count_changed_parameters"]


def count_changed_parameters(
    before: Dict[str, torch.Tensor], model: torch.nn.Module
) -> int:
    """Number of scalar parameters of ``model`` that differ from ``before``.

    :param before: a snapshot ``{name: tensor}`` of ``model.named_parameters()``.
    :param model: the model after training.
    """
    changed = 0
    for name, param in model.named_parameters():
        old = before.get(name)
        if old is None or old.shape != param.shape:
            changed += param.numel()  # grown during the experience: all new
        else:
            changed += int((old != param.detach()).sum())
    return changed


class ParametersPerExperience(PluginMetric[int]):
    """Learnable parameters that training one experience spent.

    Emitted once per training experience as
    ``LearnableParams_Exp/train_phase/train_stream/TaskXXX/ExpYYY``.

    Two modes:

    - ``"changed"`` (default): count the scalar parameters whose value
      changed while the experience was trained. Works for any strategy and
      model: a fully fine-tuned MLP reports all its weights, a CRWN model
      only that task's context and random strength.
    - ``"declared"``: ask the model, through its ``params_per_task()``
      method (CRWN models have one); falls back to ``"changed"``.

    :param mode: ``"changed"`` or ``"declared"``.
    """

    def __init__(self, mode: str = "changed"):
        super().__init__()
        if mode not in ("changed", "declared"):
            raise ValueError(f"mode must be 'changed' or 'declared', got {mode!r}.")
        self.mode = mode
        self._snapshot: Optional[Dict[str, torch.Tensor]] = None
        self._value: Optional[int] = None
        self.history: List[int] = []

    def reset(self) -> None:
        self._value = None

    def result(self) -> Optional[int]:
        return self._value

    def before_training_exp(self, strategy) -> None:
        """Snapshot the parameters before the experience trains."""
        self._snapshot = {
            n: p.detach().clone() for n, p in strategy.model.named_parameters()
        }

    def after_training_exp(self, strategy) -> List[MetricValue]:
        """Count the experience's parameters (see the modes above), append the count to
        ``history`` and emit it as a metric value."""
        declared = getattr(strategy.model, "params_per_task", None)
        if self.mode == "declared" and callable(declared):
            self._value = int(declared())
        else:
            self._value = count_changed_parameters(self._snapshot or {}, strategy.model)
        self._snapshot = None
        self.history.append(self._value)
        name = get_metric_name(self, strategy, add_experience=True, add_task=True)
        return [MetricValue(self, name, self._value, strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "LearnableParams_Exp"


def parameters_per_experience_metrics(mode: str = "changed") -> List[PluginMetric]:
    """Helper in the style of Avalanche's ``*_metrics`` functions.

    :param mode: see :class:`ParametersPerExperience`.
    """
    return [ParametersPerExperience(mode)]
