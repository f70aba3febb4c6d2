"""Training on an online stream (one experience per mini-batch), with a progress bar.

MNIST-360's ``online_train_stream`` holds 3,387 experiences of one
mini-batch each. Calling ``strategy.train(experience)`` for each one pays
Avalanche's per-call set-up (``model.train()``, moving the model, the
``before_training`` callbacks) 3,387 times; :func:`train_online` hands the
strategy chunks of experiences instead, which Avalanche trains one after
the other exactly as it would one by one, and shows one progress bar over
the whole stream.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Optional, Sequence

from tqdm import tqdm

__all__ = ["train_online"]


def train_online(strategy: Any, experiences: Iterable[Any], *, chunk_size: int = 100, progress: bool = True,
                 desc: str = "training", total: Optional[int] = None,
                 eval_streams: Optional[Sequence[Any]] = None) -> int:
    """Train ``strategy`` on ``experiences`` in stream order, ``chunk_size`` experiences per ``train()`` call.

    :param strategy: any Avalanche strategy.
    :param experiences: the experiences, e.g. ``benchmark.online_train_stream`` (read lazily).
    :param chunk_size: experiences per ``train()`` call.
    :param progress: show a progress bar (over experiences).
    :param desc: the bar's label.
    :param total: experiences in the stream, for the bar (default: ``len(experiences)`` when it has one).
    :param eval_streams: what Avalanche's periodic evaluation (``eval_every``)
        evaluates, passed to ``train()``; default none (no evaluation while training).
    :return: the number of experiences trained on.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    if total is None and hasattr(experiences, "__len__"):
        try:
            total = len(experiences)  # type: ignore[arg-type]
        except TypeError:  # a lazy stream without a known length
            total = None
    iterator = iter(experiences)
    done = 0
    with tqdm(total=total, desc=desc, unit="exp", disable=not progress, mininterval=5, leave=False) as bar:
        while True:
            chunk = list(itertools.islice(iterator, chunk_size))
            if not chunk:
                return done
            strategy.train(chunk, eval_streams=list(eval_streams or []))
            done += len(chunk)
            bar.update(len(chunk))
