"""A fixed number of mini-batches per experience, for any Avalanche strategy.

The CRWN paper trains every method for 1,000 mini-batches of 128 per task;
Avalanche's strategies count epochs. :class:`IterationBudgetPlugin` gives
any strategy the paper's budget: before each training experience it sets
the epochs to ``ceil(n_iterations / batches per epoch)`` and it stops
training after the ``n_iterations``-th mini-batch.
"""

from __future__ import annotations

import math
from typing import Any

from avalanche.core import SupervisedPlugin

__all__ = ["IterationBudgetPlugin"]


class IterationBudgetPlugin(SupervisedPlugin):
    """Train exactly ``n_iterations`` mini-batches per experience (or every mini-batch there is, if fewer).

    :param n_iterations: mini-batches per training experience.
    """

    def __init__(self, n_iterations: int):
        super().__init__()
        if n_iterations < 1:
            raise ValueError(f"n_iterations must be at least 1, got {n_iterations}.")
        self.n_iterations = int(n_iterations)
        self.iterations = 0

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.iterations = 0
        strategy.train_epochs = math.ceil(self.n_iterations / max(1, len(strategy.dataloader)))

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.iterations += 1
        if self.iterations >= self.n_iterations:
            strategy.stop_training()
