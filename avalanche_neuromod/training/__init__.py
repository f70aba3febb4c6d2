"""Strategies and plugins (CRWN, Dynamos, TSAR and its baselines), TSAR's meta-learner, the checkpoint layer
they share, the untrained-task eval rule, whole-batch training loaders and chunked training on online streams."""

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
from .reservoir import ReservoirBuffer
from .tsar import (TRANSFER_CP_BIAS, TSAR, TSARMetaLearner, TSARNoRegulation, TSARReservoir, TSARScratch,
                   load_tsar_model, prepare_transfer, save_tsar_model)
from .untrained import SkipUntrainedEvalMixin, SkipUntrainedEvalPlugin, UntrainedTaskWarning

__all__ = [
    "CRWN",
    "CRWNPlugin",
    "CheckpointError",
    "CheckpointMixin",
    "ConsistencyReplay",
    "ConsistencyReplayPlugin",
    "Dynamos",
    "DynamosPlugin",
    "PAPER_SETTINGS",
    "ReservoirBuffer",
    "SkipUntrainedEvalMixin",
    "TRANSFER_CP_BIAS",
    "TSAR",
    "TSARMetaLearner",
    "TSARNoRegulation",
    "TSARReservoir",
    "TSARScratch",
    "SkipUntrainedEvalPlugin",
    "UntrainedTaskWarning",
    "WholeBatchLoaderPlugin",
    "checkpoint_compat",
    "consistency_loss",
    "keep_ratio_reward",
    "load_tsar_model",
    "load_strategy_state",
    "maybe_load_checkpoint",
    "paper_setting",
    "prepare_transfer",
    "prototype_loss",
    "read_checkpoint",
    "reinforce_loss",
    "save_checkpoint",
    "save_tsar_model",
    "strategy_state_dict",
    "train_online",
    "whole_batch_loader",
    "write_checkpoint",
]
