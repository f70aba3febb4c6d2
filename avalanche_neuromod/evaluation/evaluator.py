"""A ready-made Avalanche evaluator with the metrics continual-learning papers report."""

from __future__ import annotations

import os
import warnings
from typing import Iterable, List, Optional, Sequence, Union

from avalanche.evaluation.metrics import (
    accuracy_metrics,
    bwt_metrics,
    forgetting_metrics,
    loss_metrics,
    ram_usage_metrics,
    timing_metrics,
)
from avalanche.logging import BaseLogger, CSVLogger, InteractiveLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin

from .method_metrics import keep_ratio_metrics, regulation_metrics
from .params import ParametersPerExperience

__all__ = ["make_evaluator"]


def make_evaluator(
    *,
    accuracy: bool = True,
    forgetting: bool = True,
    bwt: bool = True,
    timing: bool = True,
    loss: bool = False,
    parameters: Union[bool, str] = False,
    ram: Union[bool, float] = False,
    keep_ratio: bool = False,
    regulation: Union[bool, float] = False,
    progress_bar: bool = True,
    text_log: bool = False,
    csv_dir: Optional[Union[str, os.PathLike]] = None,
    tensorboard_dir: Optional[Union[str, os.PathLike]] = None,
    loggers: Optional[Sequence[BaseLogger]] = None,
    extra_metrics: Iterable = (),
    strict_checks: bool = False,
) -> EvaluationPlugin:
    """Build an ``EvaluationPlugin`` with accuracy, forgetting, BWT and timing.

    Accuracy and forgetting are recorded per experience and per stream, so
    :func:`~avalanche_neuromod.evaluation.accuracy_matrix` can rebuild the
    full matrix afterwards. Call ``strategy.eval(test_stream)`` after every
    ``strategy.train(experience)``: forgetting needs it.

    :param accuracy: experience and stream accuracy (eval), epoch accuracy (train).
    :param forgetting: experience and stream forgetting.
    :param bwt: experience and stream backward transfer.
    :param timing: seconds per epoch (train) and per experience (eval).
    :param loss: experience and stream loss.
    :param parameters: learnable parameters per training experience
        (:class:`~avalanche_neuromod.evaluation.ParametersPerExperience`):
        True or ``"changed"`` counts what training changed, ``"declared"``
        asks the model (CRWN networks' ``params_per_task()``).
    :param ram: the process's peak RAM (MB) per training epoch and per evaluated
        experience (Avalanche's ``ram_usage_metrics``), sampled by a thread
        every second, or every ``ram`` seconds when a number is given (a
        phase shorter than that records 0: no sample was taken).
    :param keep_ratio: Dynamos' keep ratio per gated layer, per evaluated
        experience and stream
        (:class:`~avalanche_neuromod.evaluation.KeepRatio`; no extra pass).
    :param regulation: TSAR's open synapses per image and regulated layer,
        per evaluated experience and stream
        (:class:`~avalanche_neuromod.evaluation.RegulationActivity`; one
        more regulator pass per evaluated mini-batch); a number sets the
        threshold (default 0.5).
    :param progress_bar: log with Avalanche's interactive progress bar; when
        False and no other logger is given, metrics are only stored.
    :param text_log: also print every metric value as text.
    :param csv_dir: also write CSV files into this folder.
    :param tensorboard_dir: also write TensorBoard logs into this folder.
    :param loggers: extra Avalanche loggers.
    :param extra_metrics: extra Avalanche plugin metrics.
    :param strict_checks: Avalanche's check that eval follows every train.
    """
    metrics: List = []
    if accuracy:
        metrics += accuracy_metrics(epoch=True, experience=True, stream=True)
    if loss:
        metrics += loss_metrics(experience=True, stream=True)
    if forgetting:
        metrics += forgetting_metrics(experience=True, stream=True)
    if bwt:
        metrics += bwt_metrics(experience=True, stream=True)
    if timing:
        metrics += timing_metrics(epoch=True, experience=True)
    if ram is not False:
        every = 1.0 if ram is True else float(ram)
        if every <= 0:
            raise ValueError(f"ram must be True or a sampling period in seconds > 0, got {ram!r}.")
        metrics += ram_usage_metrics(every=every, epoch=True, experience=True)
    if keep_ratio:
        metrics += keep_ratio_metrics(experience=True, stream=True)
    if regulation is not False:
        metrics += regulation_metrics(experience=True, stream=True,
                                      threshold=0.5 if regulation is True else float(regulation))
    if parameters:
        metrics.append(ParametersPerExperience("changed" if parameters is True else parameters))
    metrics += list(extra_metrics)

    all_loggers: List[BaseLogger] = list(loggers or [])
    if progress_bar:
        all_loggers.append(InteractiveLogger())
    if text_log:
        all_loggers.append(TextLogger())
    if csv_dir is not None:
        os.makedirs(csv_dir, exist_ok=True)
        all_loggers.append(CSVLogger(log_folder=str(csv_dir)))
    if tensorboard_dir is not None:
        from avalanche.logging import TensorboardLogger

        all_loggers.append(TensorboardLogger(tb_log_dir=str(tensorboard_dir)))
    with warnings.catch_warnings():
        # Storing metrics without printing them is a deliberate choice here.
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(*metrics, loggers=all_loggers, strict_checks=strict_checks)
