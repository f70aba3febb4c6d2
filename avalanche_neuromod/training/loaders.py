"""Training loaders that read whole mini-batches from our datasets.

Avalanche's strategies train on a ``TaskBalancedDataLoader`` whenever an
experience has task labels. That loader reaches the data through
``torch.utils.data.ConcatDataset``, which has no batch interface, so PyTorch
reads it one sample at a time: 60,000 ``dataset[i]`` calls and their garbage
per MNIST epoch. When the experience holds a single task, balancing over
tasks has nothing to balance, and a plain shuffled ``DataLoader`` over the
same dataset gives the same kind of batches (same size, every sample once per
epoch, in a random order) while our datasets hand it whole mini-batches
(:class:`~avalanche_neuromod.benchmarks.SampleBatch`).

:class:`WholeBatchLoaderPlugin` makes that swap, explicitly, for any
Avalanche strategy; CRWN builds such a loader itself.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader

from avalanche.benchmarks.utils.data_loader import TaskBalancedDataLoader
from avalanche.core import SupervisedPlugin

__all__ = ["WholeBatchLoaderPlugin", "whole_batch_loader"]


def whole_batch_loader(dataset: Any, batch_size: int, *, shuffle: bool = True, num_workers: int = 0,
                       drop_last: bool = False, pin_memory: Any = False,
                       persistent_workers: bool = False, generator: Optional[torch.Generator] = None) -> DataLoader:
    """A plain ``DataLoader`` that reads whole mini-batches (``__getitems__``).

    :param dataset: an Avalanche dataset (ours read whole batches; any other
        is read as usual).
    :param batch_size: samples per mini-batch.
    :param shuffle: reshuffle every epoch.
    :param num_workers: loader worker processes.
    :param drop_last: drop the last incomplete batch.
    :param pin_memory: pin batches in memory for a GPU (Avalanche passes None for "no").
    :param persistent_workers: keep the workers between epochs.
    :param generator: draws the batch order (default: torch's global random state).
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=bool(pin_memory),
        persistent_workers=persistent_workers and num_workers > 0,
        collate_fn=getattr(dataset, "collate_fn", None),
        generator=generator,
    )


class WholeBatchLoaderPlugin(SupervisedPlugin):
    """Replace a strategy's task-balanced training loader by a whole-batch one.

    Before each training experience, if the strategy built Avalanche's
    default ``TaskBalancedDataLoader`` and the experience holds exactly one
    task label, the loader becomes :func:`whole_batch_loader` over the same
    adapted dataset with the strategy's batch size. Any other loader (replay
    loaders, experiences mixing tasks) is left as it is, so the plugin can be
    added to any strategy. The order of the samples differs from the
    task-balanced loader's (both are seeded by torch's random state).

    Example::

        Naive(model=..., optimizer=..., plugins=[WholeBatchLoaderPlugin()])
    """

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if type(strategy.dataloader) is not TaskBalancedDataLoader:
            return
        dataset = strategy.adapted_dataset
        if len(dataset.targets_task_labels.uniques) != 1:
            return
        strategy.dataloader = whole_batch_loader(
            dataset,
            strategy.train_mb_size,
            shuffle=kwargs.get("shuffle", True),
            num_workers=kwargs.get("num_workers", 0),
            drop_last=kwargs.get("drop_last", False),
            pin_memory=kwargs.get("pin_memory", False),
            persistent_workers=kwargs.get("persistent_workers", False),
        )
