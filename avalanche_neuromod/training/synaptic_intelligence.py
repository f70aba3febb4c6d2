"""Avalanche's Synaptic Intelligence with its weight snapshots copied, so that it works on the CPU.

Avalanche 0.6's ``SynapticIntelligencePlugin`` records the weights before and
after every optimiser step, and at the start of every experience, as
``param.detach().cpu().flatten()``. On a CPU tensor ``.cpu()`` returns the
tensor itself and ``flatten()`` of a contiguous tensor is a view, so each
snapshot *is* the live parameter: the displacement of a step (new minus old)
is always zero, so is every importance, and the penalty vanishes. Avalanche's
``SynapticIntelligence`` then trains exactly as ``Naive`` does (on 20
Permuted-MNIST tasks: the same accuracy to the last digit). On a GPU
``.cpu()`` copies, and SI works there.

:class:`SynapticIntelligencePlugin` keeps Avalanche's code and replaces each
snapshot Avalanche takes by a copy; :class:`SynapticIntelligence` is
Avalanche's strategy with that plugin. Upstream, ``extract_weights`` would
need a ``.clone()``. The comparison grid (``kind="si"``) uses these.
"""

from __future__ import annotations

from typing import Any, Dict

from avalanche.training import SynapticIntelligence as _AvalancheSI
from avalanche.training.plugins import SynapticIntelligencePlugin as _AvalancheSIPlugin

__all__ = ["SynapticIntelligencePlugin", "SynapticIntelligence"]


def _copy_snapshots(snapshots: Dict[str, Any]) -> None:
    for snapshot in snapshots.values():
        snapshot.data = snapshot.data.clone()


class SynapticIntelligencePlugin(_AvalancheSIPlugin):
    """Avalanche's ``SynapticIntelligencePlugin`` whose weight snapshots are copies, not views.

    Same arguments and behaviour as Avalanche's plugin (``si_lambda``,
    ``eps``, ``excluded_parameters``, ``device``), on any device.
    """

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().before_training_exp(strategy, **kwargs)
        _copy_snapshots(self.ewc_data[0])  # the weights at the start of the experience

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        super().before_training_iteration(strategy, **kwargs)
        _copy_snapshots(self.syn_data["old_theta"])  # the weights before the step


class SynapticIntelligence(_AvalancheSI):
    """Avalanche's ``SynapticIntelligence`` strategy with :class:`SynapticIntelligencePlugin`.

    Takes Avalanche's arguments (``model``, ``optimizer``, ``criterion``,
    ``si_lambda``, ``eps``, ``train_mb_size``, ...).
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.plugins = [
            SynapticIntelligencePlugin(si_lambda=p.si_lambda, eps=p.eps,
                                       excluded_parameters=p.excluded_parameters, device=p._device)
            if type(p) is _AvalancheSIPlugin else p
            for p in self.plugins
        ]
