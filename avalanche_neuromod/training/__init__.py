"""Strategies and plugins, the checkpoint layer they share, the untrained-task eval rule,
and whole-batch training loaders."""

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
from .loaders import WholeBatchLoaderPlugin, whole_batch_loader
from .untrained import SkipUntrainedEvalMixin, SkipUntrainedEvalPlugin, UntrainedTaskWarning

__all__ = [
    "CRWN",
    "CRWNPlugin",
    "CheckpointError",
    "CheckpointMixin",
    "SkipUntrainedEvalMixin",
    "SkipUntrainedEvalPlugin",
    "UntrainedTaskWarning",
    "WholeBatchLoaderPlugin",
    "checkpoint_compat",
    "load_strategy_state",
    "maybe_load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "strategy_state_dict",
    "whole_batch_loader",
    "write_checkpoint",
]
