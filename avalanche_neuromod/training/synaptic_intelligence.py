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

Once the importances are real, a second problem shows: Avalanche clips
them from above (at 0.001) but not from below. A parameter whose path went
up the loss (momentum does that) gets a negative importance, as large as
its path integral divided by ``(displacement^2 + eps)`` with ``eps`` =
1e-7, and a negative weight in the quadratic penalty rewards moving away:
the loss is unbounded below and training diverges (SGD with momentum 0.9,
lambda 1, 20 Permuted-MNIST tasks: 9.8% accuracy, chance level).
SI's importance measures how much a parameter's motion lowered the loss, so
the plugin keeps it in ``[0, 0.001]``.

:class:`SynapticIntelligencePlugin` keeps Avalanche's code, replaces each
snapshot Avalanche takes by a copy and clamps the importances at zero;
:class:`SynapticIntelligence` is Avalanche's strategy with that plugin.
Upstream, ``extract_weights`` would need a ``.clone()`` and
``update_ewc_data`` a lower clamp. The comparison grid (``kind="si"``)
uses these.
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
    """Avalanche's ``SynapticIntelligencePlugin`` whose weight snapshots are copies, not views,
    and whose importances are never negative.

    Same arguments as Avalanche's plugin (``si_lambda``, ``eps``,
    ``excluded_parameters``, ``device``), on any device.
    """

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().before_training_exp(strategy, **kwargs)
        _copy_snapshots(self.ewc_data[0])  # the weights at the start of the experience

    def before_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        super().before_training_iteration(strategy, **kwargs)
        _copy_snapshots(self.syn_data["old_theta"])  # the weights before the step

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        super().after_training_exp(strategy, **kwargs)
        for importance in self.ewc_data[1].values():
            importance.data.clamp_(min=0.0)


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
