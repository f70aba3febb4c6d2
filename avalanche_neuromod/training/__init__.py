"""Strategies and plugins, the checkpoint layer they share, and the untrained-task eval rule."""

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
from .untrained import SkipUntrainedEvalMixin, SkipUntrainedEvalPlugin, UntrainedTaskWarning

__all__ = [
    "CRWN",
    "CRWNPlugin",
    "CheckpointError",
    "CheckpointMixin",
    "SkipUntrainedEvalMixin",
    "SkipUntrainedEvalPlugin",
    "UntrainedTaskWarning",
    "checkpoint_compat",
    "load_strategy_state",
    "maybe_load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "strategy_state_dict",
    "write_checkpoint",
]
