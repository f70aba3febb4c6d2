"""Networks: neuromodulated layers, the CRWN models (FlyNet, NeuroModNet) and Dynamos' gated ResNet."""

from .crwn import CRWNModule, FlyNet, NeuroModNet, NeuroModResNet18, SparseFlyEncoder
from .dynamos import AgentDecision, ChannelAgent, DynamosResNet18, GateRecord, require_agents
from .modulated import ModulatedConv2d, ModulatedLinear, TaskBatchNorm2d, TaskModulation, derive_generator

__all__ = [
    "AgentDecision",
    "ChannelAgent",
    "DynamosResNet18",
    "GateRecord",
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
    "require_agents",
]
