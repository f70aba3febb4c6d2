"""Networks: neuromodulated layers and the CRWN models (FlyNet, NeuroModNet)."""

from .crwn import CRWNModule, FlyNet, NeuroModNet, NeuroModResNet18, SparseFlyEncoder
from .modulated import ModulatedConv2d, ModulatedLinear, TaskBatchNorm2d, TaskModulation, derive_generator

__all__ = [
    "CRWNModule",
    "FlyNet",
    "ModulatedConv2d",
    "ModulatedLinear",
    "NeuroModNet",
    "NeuroModResNet18",
    "SparseFlyEncoder",
    "TaskBatchNorm2d",
    "TaskModulation",
    "derive_generator",
]
