"""Strategies and plugins (CRWN, Dynamos, TSAR and its baselines, the CRWN paper's baselines), TSAR's meta-learner, the checkpoint layer
they share, the untrained-task eval rule, whole-batch training loaders, chunked training on online streams, and
Avalanche's Synaptic Intelligence made to work on the CPU."""

from .baselines import MTL, PSP, STL, BatchE, SupSup
from .budget import IterationBudgetPlugin
from .checkpoint import (
    CheckpointError,
    CheckpointMixin,
    checkpoint_compat,
    load_strategy_state,
    maybe_load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    strategy_state_dict,
    write_checkpoint,
)
from .crwn import CRWN, CRWNPlugin
from .dynamos import (PAPER_SETTINGS, ConsistencyReplay, ConsistencyReplayPlugin, Dynamos, DynamosPlugin,
                      paper_setting)
from .dynamos_losses import consistency_loss, keep_ratio_reward, prototype_loss, reinforce_loss
from .loaders import WholeBatchLoaderPlugin, whole_batch_loader
from .online import train_online
from .parallel import (BACKENDS, TaskResult, experience_accuracy, init_ray, merge_task_results, ray_available,
                       train_tasks_parallel)
from .reservoir import ReservoirBuffer
from .synaptic_intelligence import SynapticIntelligence, SynapticIntelligencePlugin
from .task_incremental import TaskIncrementalStrategy, TaskParametersPlugin, experience_task, task_optimizer_groups
from .tsar import (TRANSFER_CP_BIAS, TRANSFER_OPTIMIZERS, TSAR, TSARMetaLearner, TSARNoRegulation, TSAROML,
                   TSARReservoir, TSARScratch, load_tsar_model, prepare_transfer, save_tsar_model)
from .untrained import SkipUntrainedEvalMixin, SkipUntrainedEvalPlugin, UntrainedTaskWarning

__all__ = [
    "BACKENDS",
    "TaskResult",
    "experience_accuracy",
    "init_ray",
    "merge_task_results",
    "ray_available",
    "train_tasks_parallel",
    "BatchE",
    "checkpoint_compat",
    "CheckpointError",
    "CheckpointMixin",
    "consistency_loss",
    "ConsistencyReplay",
    "ConsistencyReplayPlugin",
    "CRWN",
    "CRWNPlugin",
    "Dynamos",
    "DynamosPlugin",
    "experience_task",
    "IterationBudgetPlugin",
    "keep_ratio_reward",
    "load_strategy_state",
    "load_tsar_model",
    "maybe_load_checkpoint",
    "MTL",
    "paper_setting",
    "PAPER_SETTINGS",
    "prepare_transfer",
    "prototype_loss",
    "PSP",
    "read_checkpoint",
    "reinforce_loss",
    "ReservoirBuffer",
    "save_checkpoint",
    "save_tsar_model",
    "SkipUntrainedEvalMixin",
    "SkipUntrainedEvalPlugin",
    "STL",
    "strategy_state_dict",
    "SupSup",
    "SynapticIntelligence",
    "SynapticIntelligencePlugin",
    "task_optimizer_groups",
    "TaskIncrementalStrategy",
    "TaskParametersPlugin",
    "train_online",
    "TRANSFER_CP_BIAS",
    "TRANSFER_OPTIMIZERS",
    "TSAR",
    "TSARMetaLearner",
    "TSARNoRegulation",
    "TSAROML",
    "TSARReservoir",
    "TSARScratch",
    "UntrainedTaskWarning",
    "whole_batch_loader",
    "WholeBatchLoaderPlugin",
    "write_checkpoint",
]
