"""Avalanche metrics of what Dynamos' agents and TSAR's regulator do, per gated or regulated layer.

:class:`KeepRatio` logs the fraction of channels each of Dynamos' gated
layers keeps (the quantity its reward steers toward the target ``kr``);
:class:`RegulationActivity` logs how many synapses of each of TSAR's
regulated layers the regulator opens per image (the paper's count of
synapses above a threshold). Both are ordinary Avalanche plugin metrics:
put them in any ``EvaluationPlugin`` (or ask
:func:`~avalanche_neuromod.evaluation.make_evaluator` for them) and every
Avalanche logger (text, CSV, TensorBoard, ...) records them beside accuracy.

Each value is emitted once per layer, the layer's name appended to
Avalanche's usual metric name, e.g.
``KeepRatio_Exp/eval_phase/test_stream/Task000/Exp002/agent3`` or
``Regulation_Stream/eval_phase/test_stream/C3``.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name

__all__ = ["KeepRatio", "RegulationActivity", "keep_ratio_metrics", "regulation_metrics"]

GRANULARITIES = {"epoch": "Epoch", "experience": "Exp", "stream": "Stream"}
"""Where a metric is averaged and emitted: over a training epoch, an evaluated experience, or an evaluated
stream (Avalanche's usual suffixes)."""


class _PerLayerMean(PluginMetric[Dict[str, float]]):
    """The mean of a per-sample, per-layer quantity over a training epoch, an evaluated experience or an
    evaluated stream, emitted as one value per layer. Subclasses say how to read a batch."""

    prefix = ""

    def __init__(self, granularity: str = "experience"):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}, "
                             f"got {granularity!r}.")
        self.granularity = granularity
        self._sums: Optional[torch.Tensor] = None
        self._count = 0
        self._names: Sequence[str] = ()
        self._warned = False

    def _read(self, strategy: Any) -> Optional[Tuple[torch.Tensor, Sequence[str]]]:
        """``(per-sample values (B, L), layer names)`` of the strategy's current mini-batch, or None when the
        model has nothing to report for it."""
        raise NotImplementedError

    def _model_lacks(self, strategy: Any, what: str) -> None:
        """Warn once that the model cannot be measured (a shared evaluator also serves other methods)."""
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self}: {type(strategy.model).__name__} {what}, so this metric logs nothing for it.",
                          stacklevel=2)

    def reset(self) -> None:
        self._sums, self._count = None, 0

    def result(self) -> Dict[str, float]:
        """The mean per layer so far, ``{layer name: value}`` (empty before any batch)."""
        if self._sums is None or self._count == 0:
            return {}
        return {name: float(v) for name, v in zip(self._names, self._sums / self._count)}

    def _update(self, strategy: Any) -> None:
        read = self._read(strategy)
        if read is None:
            return
        values, names = read
        values = values.detach().double().cpu()
        if self._sums is None:
            self._sums, self._names = torch.zeros(values.shape[1], dtype=torch.float64), tuple(names)
        self._sums += values.sum(dim=0)
        self._count += values.shape[0]

    def _emit(self, strategy: Any, add_experience: bool, add_task: bool) -> List[MetricValue]:
        means = self.result()
        if not means:
            return []
        name = get_metric_name(self, strategy, add_experience=add_experience, add_task=add_task)
        step = strategy.clock.train_iterations
        return [MetricValue(self, f"{name}/{layer}", value, step) for layer, value in means.items()]

    # training: one value per layer and epoch
    def before_training_epoch(self, strategy: Any) -> None:
        if self.granularity == "epoch":
            self.reset()

    def after_training_iteration(self, strategy: Any) -> None:
        if self.granularity == "epoch":
            self._update(strategy)

    def after_training_epoch(self, strategy: Any) -> List[MetricValue]:
        return self._emit(strategy, add_experience=False, add_task=True) if self.granularity == "epoch" else []

    # evaluation: one value per layer and experience, or per layer and stream
    def before_eval(self, strategy: Any) -> None:
        if self.granularity == "stream":
            self.reset()

    def before_eval_exp(self, strategy: Any) -> None:
        if self.granularity == "experience":
            self.reset()

    def after_eval_iteration(self, strategy: Any) -> None:
        if self.granularity != "epoch":
            self._update(strategy)

    def after_eval_exp(self, strategy: Any) -> List[MetricValue]:
        if self.granularity == "experience":
            return self._emit(strategy, add_experience=True, add_task=True)
        return []

    def after_eval(self, strategy: Any) -> List[MetricValue]:
        return self._emit(strategy, add_experience=False, add_task=False) if self.granularity == "stream" else []

    def __str__(self) -> str:
        return f"{self.prefix}_{GRANULARITIES[self.granularity]}"


class KeepRatio(_PerLayerMean):
    """Fraction of channels each gated layer keeps, averaged over the samples.

    Reads the agents' decisions that the model records in every forward pass
    (:attr:`DynamosResNet18.last_gates <avalanche_neuromod.models.DynamosResNet18.last_gates>`,
    or any network with a ``last_gates`` record of that kind), so it costs no
    extra pass. In evaluation the agents keep a channel when its probability
    is at least 0.5 (or sample, inside ``model.sampling()``); in training they
    sample, and the value covers every sample of each training forward pass
    (where a strategy puts replayed samples in the same pass, those too).
    Passes without gates (Dynamos' warm-up, ``model.ungated()``) are left
    out. The layers are named ``agent1`` ... in layer order.

    :param granularity: ``"experience"`` (per evaluated experience),
        ``"stream"`` (per evaluated stream) or ``"epoch"`` (per training epoch).
    """

    prefix = "KeepRatio"

    def _read(self, strategy: Any) -> Optional[Tuple[torch.Tensor, Sequence[str]]]:
        if not hasattr(strategy.model, "last_gates"):
            self._model_lacks(strategy, "records no agent decisions (no last_gates)")
            return None
        record = strategy.model.last_gates
        if record is None:  # an ungated pass, or a network built without agents
            return None
        kept = record.keep_fractions
        return kept, [f"agent{i + 1}" for i in range(kept.shape[1])]


class RegulationActivity(_PerLayerMean):
    """Synapses each regulated layer has open per image: mask entries above ``threshold``, averaged over
    the images (the TSAR paper's count of active synapses; :mod:`avalanche_neuromod.analysis` draws its
    distribution).

    Runs the regulator once more on each mini-batch, without gradients
    (``model.masks(x)`` of a :class:`~avalanche_neuromod.models.TSARNet`).
    Networks without regulation (Scratch, No Regulation, OML) report nothing.
    The layers are named ``C1``, ``C2``, ``C3`` and ``CP`` (class prediction),
    as in the paper.

    :param granularity: ``"experience"`` (per evaluated experience),
        ``"stream"`` (per evaluated stream) or ``"epoch"`` (per training
        epoch: in a TSAR transfer one epoch is one image).
    :param threshold: the mask value above which a synapse counts as open.
    """

    prefix = "Regulation"

    def __init__(self, granularity: str = "experience", threshold: float = 0.5):
        super().__init__(granularity)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1): masks are sigmoids, got {threshold}.")
        self.threshold = float(threshold)

    @torch.no_grad()
    def _read(self, strategy: Any) -> Optional[Tuple[torch.Tensor, Sequence[str]]]:
        from ..analysis.regulation import LAYER_NAMES  # the paper's names; at call time (analysis imports us)

        masks_of = getattr(strategy.model, "masks", None)
        if not callable(masks_of):
            self._model_lacks(strategy, "has no regulator masks (no masks(x))")
            return None
        masks = masks_of(strategy.mb_x)
        if masks is None:  # regulation off
            return None
        counts = torch.stack([(m.reshape(m.shape[0], -1) > self.threshold).sum(dim=1) for m in masks], dim=1)
        names = LAYER_NAMES if len(masks) == len(LAYER_NAMES) else [f"layer{i + 1}" for i in range(len(masks))]
        return counts, names

    def __str__(self) -> str:
        suffix = "" if self.threshold == 0.5 else f"_T{self.threshold:g}"
        return f"{self.prefix}{suffix}_{GRANULARITIES[self.granularity]}"


def _chosen(epoch: bool, experience: bool, stream: bool) -> List[str]:
    """The granularities switched on, in :data:`GRANULARITIES`' order."""
    return [g for g, on in zip(GRANULARITIES, (epoch, experience, stream)) if on]


def keep_ratio_metrics(*, epoch: bool = False, experience: bool = True, stream: bool = False) -> List[PluginMetric]:
    """:class:`KeepRatio` at the chosen granularities, in the style of Avalanche's ``*_metrics`` helpers.

    :param epoch: per training epoch.
    :param experience: per evaluated experience.
    :param stream: per evaluated stream.
    """
    return [KeepRatio(g) for g in _chosen(epoch, experience, stream)]


def regulation_metrics(*, epoch: bool = False, experience: bool = True, stream: bool = False,
                       threshold: float = 0.5) -> List[PluginMetric]:
    """:class:`RegulationActivity` at the chosen granularities, in the style of Avalanche's helpers.

    :param epoch: per training epoch.
    :param experience: per evaluated experience.
    :param stream: per evaluated stream.
    :param threshold: the mask value above which a synapse counts as open.
    """
    return [RegulationActivity(g, threshold) for g in _chosen(epoch, experience, stream)]
