"""TSAR's regulation statistics and the paper's figures of them.

For one regulated layer ``l`` and images ``x_1 .. x_N`` (with their classes,
the "tasks" of domain transfer), the regulator's mask ``m_l(x_n)`` gives:

- **active synapses** per image: how many mask entries exceed a threshold
  ``T``; their complementary CDF over images, ``P(count >= s)``, on log-log
  axes is the paper's test of heavy-tailed ("scale-free") regulation;
- **total regulation** per image: the sum of the mask, in the order the
  images were seen ("bursting": some images open much of the network,
  most open little);
- **task-specific activity** of a synapse for class ``c``: its mean mask over
  the images of ``c``; **task-agnostic activity**: the mean of the
  task-specific activity over the other classes. Ranked against each other
  per class, a modular regulator would put a class's most active synapses
  low in the task-agnostic ranking; the paper finds them at the top.

:class:`RegulationStatistics` accumulates these batch by batch (memory:
one ``classes x synapses`` table, never one mask per image);
:func:`regulation_statistics` fills it from a model and a stream, and
:class:`RegulationRecorder` fills it during training, with the mask each
image had when it was learned.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader

__all__ = [
    "LAYER_NAMES",
    "RegulationRecorder",
    "RegulationStatistics",
    "plot_regulation_ccdf",
    "plot_task_activity",
    "plot_total_regulation",
    "regulation_statistics",
]

LAYER_NAMES = ("C1", "C2", "C3", "CP")
"""The paper's names of the regulated layers, in the regulator's head order."""


def _layer_index(layer: Any) -> int:
    if isinstance(layer, str):
        if layer.upper() not in LAYER_NAMES:
            raise ValueError(f"unknown layer {layer!r}; use one of {LAYER_NAMES} or an index 0-3.")
        return LAYER_NAMES.index(layer.upper())
    if not 0 <= int(layer) < len(LAYER_NAMES):
        raise ValueError(f"layer index must be 0-3, got {layer}.")
    return int(layer)


class RegulationStatistics:
    """Per-image and per-class regulation of one layer, accumulated batch by batch.

    :param layer: ``"C1"``, ``"C2"``, ``"C3"`` (the paper's usual choice),
        ``"CP"`` or an index.
    :param thresholds: the thresholds ``T`` of the active-synapse counts.
    """

    def __init__(self, layer: Any = "C3", thresholds: Sequence[float] = (0.5, 0.9)):
        self.layer = _layer_index(layer)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.active = {t: [] for t in self.thresholds}
        self.total: list = []
        self.labels: list = []
        self._class_sums: dict = {}
        self._class_counts: dict = {}

    def update(self, mask: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of this layer's masks.

        :param mask: ``(B, *weight_shape)`` masks in [0, 1].
        :param labels: ``(B,)`` classes of the images.
        """
        flat = mask.detach().reshape(mask.shape[0], -1).float().cpu()
        labels = torch.as_tensor(labels).reshape(-1).cpu()
        for t in self.thresholds:
            self.active[t].extend((flat > t).sum(1).tolist())
        self.total.extend(flat.sum(1).tolist())
        self.labels.extend(labels.tolist())
        for c in labels.unique().tolist():
            rows = flat[labels == c]
            self._class_sums[c] = self._class_sums.get(c, 0) + rows.sum(0).double()
            self._class_counts[c] = self._class_counts.get(c, 0) + len(rows)

    @property
    def classes(self) -> list:
        """The classes seen, sorted."""
        return sorted(self._class_sums)

    def task_specific(self) -> np.ndarray:
        """Mean mask per class and synapse, ``(classes, synapses)`` in :attr:`classes` order."""
        if not self._class_sums:
            raise ValueError("no masks were added yet.")
        return np.stack([(self._class_sums[c] / self._class_counts[c]).numpy() for c in self.classes])

    def task_agnostic(self) -> np.ndarray:
        """For each class, the mean task-specific activity over the *other* classes (same shape)."""
        specific = self.task_specific()
        n = len(specific)
        if n < 2:
            raise ValueError("task-agnostic activity needs at least two classes.")
        return (specific.sum(0, keepdims=True) - specific) / (n - 1)

    def ccdf(self, threshold: float) -> tuple:
        """``(s, P(count >= s))`` of the active-synapse counts at ``threshold`` (counts > 0 only).

        :param threshold: one of :attr:`thresholds`.
        """
        counts = np.asarray(self.active[float(threshold)])
        values = np.unique(counts[counts > 0])
        if len(counts) == 0:
            return values, values.astype(float)
        return values, np.array([(counts >= v).mean() for v in values])


@torch.no_grad()
def regulation_statistics(model: Any, stream: Iterable[Any], layer: Any = "C3",
                          thresholds: Sequence[float] = (0.5, 0.9), batch_size: int = 64,
                          device: Any = "cpu") -> RegulationStatistics:
    """Regulation of ``model`` over every image of ``stream`` (in the stream's order).

    :param model: a :class:`~avalanche_neuromod.models.TSARNet` with a regulator.
    :param stream: Avalanche experiences (e.g. a ``DomainTransfer`` test stream); read in
        whole batches, as :func:`~avalanche_neuromod.evaluation.stream_accuracy` reads them.
    :param layer: which regulated layer.
    :param thresholds: thresholds of the active-synapse counts.
    :param batch_size: images per regulator pass.
    :param device: where to compute.
    """
    if getattr(model, "regulator", None) is None:
        raise ValueError("regulation_statistics needs a TSARNet with a regulator; this model has none.")
    stats = RegulationStatistics(layer, thresholds)
    was_training = model.training
    model.eval().to(device)
    try:
        for experience in stream:
            dataset = experience.dataset.eval()
            for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate_fn):
                stats.update(model.regulator(batch[0].to(device))[stats.layer], batch[1])
    finally:
        model.train(was_training)
    return stats


class RegulationRecorder(SupervisedPlugin):
    """Record regulation during training: the mask each image had when it was learned.

    Add it to a :class:`~avalanche_neuromod.training.TSAR` strategy's
    plugins; :attr:`statistics` fills as the sequence is learned (one extra
    regulator pass per step, without gradients).

    :param layer: which regulated layer.
    :param thresholds: thresholds of the active-synapse counts.
    """

    def __init__(self, layer: Any = "C3", thresholds: Sequence[float] = (0.5, 0.9)):
        super().__init__()
        self.statistics = RegulationStatistics(layer, thresholds)

    @torch.no_grad()
    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        regulator = getattr(strategy.model, "regulator", None)
        if regulator is not None:
            self.statistics.update(regulator(strategy.mb_x)[self.statistics.layer], strategy.mb_y)


def plot_regulation_ccdf(statistics: Sequence[RegulationStatistics], labels: Sequence[str],
                         threshold: Optional[float] = None, ax: Any = None):
    """Complementary CDF of active synapses per image, log-log, one line per regulator.

    :param statistics: one :class:`RegulationStatistics` per model (e.g. Grow and Sculpt).
    :param labels: their legend names.
    :param threshold: which threshold (default: the first of each).
    :param ax: a matplotlib axis to draw on (None: a new figure).
    """
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for stats, label in zip(statistics, labels):
        t = stats.thresholds[0] if threshold is None else threshold
        values, p = stats.ccdf(t)
        ax.loglog(values, p, marker=".", linestyle="-", label=f"{label} (T={t:g})")
    ax.set_xlabel("synapses above T in one image")
    ax.set_ylabel("fraction of images with at least that many")
    ax.set_title(f"Regulation CCDF, layer {LAYER_NAMES[statistics[0].layer]}")
    ax.legend(fontsize=8)
    return fig if fig is not None else ax.figure


def plot_task_activity(stats: RegulationStatistics, classes: Optional[Sequence[int]] = None, ax: Any = None):
    """Ranked task-specific against ranked task-agnostic activity of every synapse, per class.

    Points near the diagonal mean the synapses most active on a class are
    the most active on all classes (recycling); a modular regulator puts a
    class's top synapses low on the task-agnostic axis.

    :param stats: the statistics.
    :param classes: classes to draw (default: the first four seen).
    :param ax: a matplotlib axis (None: a new figure).
    """
    import matplotlib.pyplot as plt

    specific, agnostic = stats.task_specific(), stats.task_agnostic()
    chosen = list(stats.classes[:4] if classes is None else classes)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4))
    n = specific.shape[1]
    for c in chosen:
        i = stats.classes.index(c)
        rank_specific = np.argsort(np.argsort(-specific[i])) + 1
        rank_agnostic = np.argsort(np.argsort(-agnostic[i])) + 1
        ax.scatter(rank_agnostic, rank_specific, s=2, alpha=0.4, label=f"class {c}")
    ax.plot([1, n], [1, n], color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank of task-agnostic activity")
    ax.set_ylabel("rank of task-specific activity")
    ax.set_title(f"Task-specific vs task-agnostic, layer {LAYER_NAMES[stats.layer]}")
    ax.legend(fontsize=7, markerscale=4)
    return fig if fig is not None else ax.figure


def plot_total_regulation(stats: RegulationStatistics, ax: Any = None):
    """Total regulation (sum of the mask) of every image, in the order seen, with class boundaries.

    :param stats: the statistics (from :class:`RegulationRecorder` for the training order).
    :param ax: a matplotlib axis (None: a new figure).
    """
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 2.5))
    total = np.asarray(stats.total)
    ax.plot(np.arange(len(total)), total, linewidth=0.6)
    labels = np.asarray(stats.labels)
    for boundary in np.flatnonzero(np.diff(labels) != 0) + 1:
        ax.axvline(boundary, color="grey", linewidth=0.3, alpha=0.5)
    ax.set_xlabel("image (in the order seen)")
    ax.set_ylabel("total regulation")
    ax.set_title(f"Per-image total regulation, layer {LAYER_NAMES[stats.layer]}")
    return fig if fig is not None else ax.figure
