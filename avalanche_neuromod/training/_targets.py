"""A strategy mixin: every training label must have an output of the model."""

from __future__ import annotations

import torch

from ..models._checks import check_class_targets


class CheckedTargetsMixin:
    """Refuse, before the step, a training mini-batch whose class labels the model has no output for.

    Without it the loss fails inside PyTorch ("Target N is out of bounds")
    without naming the model's size; put it before the Avalanche template
    (``class MyStrategy(CheckedTargetsMixin, SupervisedTemplate)``).
    """

    def forward(self) -> torch.Tensor:
        """The model on the mini-batch; in training, every class label must have an output."""
        out = super().forward()
        if self.is_training:
            check_class_targets(out, self.mb_y, owner=type(self).__name__)
        return out
