"""Accuracy over a test stream, overall and per class, outside Avalanche's evaluator; and right after experiences."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader

__all__ = ["accuracies", "class_accuracy", "ImmediateAccuracyPlugin", "stream_accuracy"]


def _class_counts(model: torch.nn.Module, stream: Iterable[Any], batch_size: int,
                  device: Any) -> Dict[int, List[int]]:
    """``{class: [right, seen]}`` over every sample of ``stream``, ``model`` in eval mode, its mode given back."""
    was_training = model.training
    model.eval().to(device)
    counts: Dict[int, List[int]] = {}
    try:
        with torch.no_grad():
            for experience in stream:
                dataset = experience.dataset.eval()
                for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate_fn):
                    labels = torch.as_tensor(batch[1])
                    right = model(batch[0].to(device)).argmax(dim=1).cpu() == labels
                    for label in labels.unique().tolist():
                        mine = labels == label
                        entry = counts.setdefault(int(label), [0, 0])
                        entry[0] += int(right[mine].sum())
                        entry[1] += int(mine.sum())
    finally:
        model.train(was_training)
    if not counts:
        raise ValueError("the stream holds no samples: there is nothing to evaluate.")
    return counts


def accuracies(model: torch.nn.Module, stream: Iterable[Any], *, batch_size: int = 512,
               device: Any = "cpu") -> Tuple[float, Dict[int, float]]:
    """:func:`stream_accuracy` and :func:`class_accuracy` from one pass over ``stream``: ``(overall, per class)``.

    :param model: a classifier returning logits.
    :param stream: experiences with a ``dataset`` of ``(x, y[, task])`` items, e.g. ``benchmark.test_stream``.
    :param batch_size: evaluation batch size.
    :param device: where to run the model.
    """
    counts = _class_counts(model, stream, batch_size, device)
    overall = sum(right for right, _ in counts.values()) / sum(seen for _, seen in counts.values())
    return overall, {label: counts[label][0] / counts[label][1] for label in sorted(counts)}


def stream_accuracy(model: torch.nn.Module, stream: Iterable[Any], *, batch_size: int = 512,
                    device: Any = "cpu") -> float:
    """Fraction of the samples of every experience of ``stream`` that ``model`` classifies right.

    Every sample counts once, so experiences weigh by their size (unlike
    Avalanche's stream accuracy, the same number for one test experience).
    The model runs in eval mode and gets its previous mode back.

    :param model: a classifier returning logits.
    :param stream: experiences with a ``dataset`` of ``(x, y[, task])`` items, e.g. ``benchmark.test_stream``.
    :param batch_size: evaluation batch size.
    :param device: where to run the model.
    """
    return accuracies(model, stream, batch_size=batch_size, device=device)[0]


def class_accuracy(model: torch.nn.Module, stream: Iterable[Any], *, batch_size: int = 512,
                   device: Any = "cpu") -> Dict[int, float]:
    """Accuracy on each class's samples over every experience of ``stream``: ``{class: fraction right}``.

    Under class-incremental learning the final accuracy hides where it is
    lost; this says which classes (hence which experiences) the model
    still recognises at the end. Classes come in increasing order; only
    classes with test samples appear. Weighted by the classes' sizes its
    values average to :func:`stream_accuracy`. Same evaluation as there
    (eval mode, mode given back); :func:`accuracies` gives both from one pass.

    :param model: a classifier returning logits.
    :param stream: experiences with a ``dataset`` of ``(x, y[, task])`` items, e.g. ``benchmark.test_stream``.
    :param batch_size: evaluation batch size.
    :param device: where to run the model.
    """
    return accuracies(model, stream, batch_size=batch_size, device=device)[1]


class ImmediateAccuracyPlugin(SupervisedPlugin):
    """Accuracy on each training experience's own samples, right after it is learned.

    Final recall by position says which parts of a sequence are remembered at
    the end, not why the rest is not: a class that was learned and then
    overwritten, and a class that was never learned, both end at 0%. This
    plugin measures, after every training experience, the accuracy of the
    model on the samples it has just been trained on (model in eval mode, no
    gradient), so the two can be told apart: ``immediate[k]`` high and the
    final recall of experience ``k`` low means forgetting; ``immediate[k]``
    low means the experience was never learned. It works under any
    Avalanche strategy whose model maps inputs to logits (no task labels).

    :param batch_size: evaluation batch size.
    """

    def __init__(self, batch_size: int = 512):
        super().__init__()
        self.batch_size = int(batch_size)
        self.immediate: Dict[int, float] = {}

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        experience = strategy.experience
        self.immediate[int(experience.current_experience)] = stream_accuracy(
            strategy.model, [experience], batch_size=self.batch_size, device=strategy.device)

    def in_order(self) -> List[float]:
        """The immediate accuracies by experience index (experiences never trained are left out)."""
        return [self.immediate[k] for k in sorted(self.immediate)]

    def state_dict(self) -> Dict[str, Any]:
        """The accuracies so far (saved with a strategy's checkpoint)."""
        return {"immediate": dict(self.immediate)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.immediate = {int(k): float(v) for k, v in state["immediate"].items()}
