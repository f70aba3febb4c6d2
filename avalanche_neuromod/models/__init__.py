"""Networks: neuromodulated layers, the CRWN models (FlyNet, NeuroModNet), Dynamos' gated ResNet and
TSAR's regulator and regulated classifier."""

from .crwn import CRWNModule, FlyNet, NeuroModNet, NeuroModResNet18, SparseFlyEncoder
from .dynamos import AgentDecision, ChannelAgent, DynamosResNet18, GateRecord, require_agents
from .tsar import (REGULATION_BIAS, FullHead, LowRankHead, RegulatedClassifier, Regulator, SingleImageNorm, TSARNet,
                   regulated_conv2d, regulated_linear, regulation_bias)
from .modulated import ModulatedConv2d, ModulatedLinear, TaskBatchNorm2d, TaskModulation, derive_generator

__all__ = [
    "AgentDecision",
    "ChannelAgent",
    "DynamosResNet18",
    "GateRecord",
    "CRWNModule",
    "FlyNet",
    "FullHead",
    "LowRankHead",
    "ModulatedConv2d",
    "ModulatedLinear",
    "NeuroModNet",
    "NeuroModResNet18",
    "REGULATION_BIAS",
    "RegulatedClassifier",
    "Regulator",
    "SingleImageNorm",
    "TSARNet",
    "SparseFlyEncoder",
    "TaskBatchNorm2d",
    "TaskModulation",
    "derive_generator",
    "regulated_conv2d",
    "regulated_linear",
    "regulation_bias",
    "require_agents",
]
