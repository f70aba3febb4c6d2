"""Networks: neuromodulated layers, the CRWN models (FlyNet, NeuroModNet), Dynamos' gated ResNet,
TSAR's regulator and regulated classifier, and the task-incremental baselines (PSP, BatchE, SupSup, STL, MTL)."""

from .batch_ensemble import BatchELayer, BatchENet, BatchEResNet18, RankOneFactors
from .crwn import CRWNModule, FlyNet, NeuroModNet, NeuroModResNet18, SparseFlyEncoder
from .dynamos import AgentDecision, ChannelAgent, DynamosResNet18, GateRecord, require_agents
from .tsar import (REGULATION_BIAS, FactoredHead, FullHead, HashedHead, LowRankHead, RegulatedClassifier, Regulator,
                   SingleImageNorm, TSARNet, regulated_conv2d, regulated_linear, regulation_bias)
from .psp import PSP_CONTEXTS, PSPContexts, PSPLayer, PSPNet, PSPResNet18, random_orthogonal
from .reference import IndependentLayer, MTLNet, MTLResNet18, SharedLayer, STLNet, STLResNet18, TaskWeights
from .supsup import SupermaskScores, SupSupLayer, SupSupNet, SupSupResNet18, topk_mask
from .task_incremental import (TaskBasicBlock, TaskIncrementalModule, TaskMLP, TaskResNet18, TaskState,
                               TaskWeightLayer, kaiming_normal, run_per_task)
from .modulated import ModulatedConv2d, ModulatedLinear, TaskBatchNorm2d, TaskModulation, derive_generator

__all__ = [
    "AgentDecision",
    "BatchELayer",
    "BatchENet",
    "BatchEResNet18",
    "ChannelAgent",
    "CRWNModule",
    "derive_generator",
    "DynamosResNet18",
    "FlyNet",
    "FactoredHead",
    "FullHead",
    "GateRecord",
    "HashedHead",
    "IndependentLayer",
    "kaiming_normal",
    "LowRankHead",
    "ModulatedConv2d",
    "ModulatedLinear",
    "MTLNet",
    "MTLResNet18",
    "NeuroModNet",
    "NeuroModResNet18",
    "PSP_CONTEXTS",
    "PSPContexts",
    "PSPLayer",
    "PSPNet",
    "PSPResNet18",
    "random_orthogonal",
    "RankOneFactors",
    "regulated_conv2d",
    "regulated_linear",
    "RegulatedClassifier",
    "REGULATION_BIAS",
    "regulation_bias",
    "Regulator",
    "require_agents",
    "run_per_task",
    "SharedLayer",
    "SingleImageNorm",
    "SparseFlyEncoder",
    "STLNet",
    "STLResNet18",
    "SupermaskScores",
    "SupSupLayer",
    "SupSupNet",
    "SupSupResNet18",
    "TaskBasicBlock",
    "TaskBatchNorm2d",
    "TaskIncrementalModule",
    "TaskMLP",
    "TaskModulation",
    "TaskResNet18",
    "TaskState",
    "TaskWeightLayer",
    "TaskWeights",
    "topk_mask",
    "TSARNet",
]
