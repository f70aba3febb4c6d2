"""Accuracy of a model over a whole test stream, outside Avalanche's evaluator."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.utils.data import DataLoader

__all__ = ["stream_accuracy"]


@torch.no_grad()
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
    was_training = model.training
    model.eval().to(device)
    correct = total = 0
    try:
        for experience in stream:
            dataset = experience.dataset.eval()
            for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate_fn):
                correct += int((model(batch[0].to(device)).argmax(dim=1).cpu() == batch[1]).sum())
                total += len(batch[1])
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the stream holds no samples: there is nothing to evaluate.")
    return correct / total
