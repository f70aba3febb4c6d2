"""Networks: neuromodulated layers and the CRWN models (FlyNet, NeuroModNet)."""

from .crwn import CRWNModule, FlyNet, NeuroModNet, SparseFlyEncoder
from .modulated import ModulatedConv2d, ModulatedLinear, TaskModulation, derive_generator

__all__ = [
    "CRWNModule",
    "FlyNet",
    "ModulatedConv2d",
    "ModulatedLinear",
    "NeuroModNet",
    "SparseFlyEncoder",
    "TaskModulation",
    "derive_generator",
]
