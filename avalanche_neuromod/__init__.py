"""avalanche-neuromod: brain-inspired continual learning for Avalanche.

Subpackages mirror Avalanche's layout: :mod:`~avalanche_neuromod.benchmarks`
(streams and data sources), :mod:`~avalanche_neuromod.evaluation` (metrics,
evaluator factory, result tables) and :mod:`~avalanche_neuromod.analysis`
(figures).
"""

import gc
import os

import avalanche  # noqa: F401  (imported first: it patches torch datasets on import)

__version__ = "0.1.0"
__all__ = ["__version__"]

GC_FREEZE_ENV = "AVALANCHE_NEUROMOD_GC_FREEZE"

# Importing Avalanche brings in torch, torchvision, jax, wandb and tensorboard:
# over half a million long-lived objects that every full garbage collection
# walks again. Avalanche's data loaders allocate per sample, which triggers
# such collections often enough to cost ~0.5 s per MNIST epoch. Freezing moves
# the import-time objects out of the collector's view; nothing is leaked.
if os.environ.get(GC_FREEZE_ENV, "1") != "0":
    gc.freeze()
