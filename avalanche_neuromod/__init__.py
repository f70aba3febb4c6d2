"""avalanche-neuromod: brain-inspired continual learning for Avalanche.

Subpackages mirror Avalanche's layout: :mod:`~avalanche_neuromod.benchmarks`
(streams and data sources), :mod:`~avalanche_neuromod.evaluation` (metrics,
evaluator factory, result tables) and :mod:`~avalanche_neuromod.analysis`
(figures).
"""

import avalanche  # noqa: F401  (imported first: it patches torch datasets on import)

__version__ = "0.1.0"
__all__ = ["__version__"]
