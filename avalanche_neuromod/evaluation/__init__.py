"""Evaluation helpers: a ready evaluator, extra metrics and result tables."""

from .accuracy import stream_accuracy
from .evaluator import make_evaluator
from .params import ParametersPerExperience, count_changed_parameters, parameters_per_experience_metrics
from .results import ACC_PREFIX, ContinualResults, accuracy_matrix, results_table

__all__ = [
    "ACC_PREFIX",
    "ContinualResults",
    "ParametersPerExperience",
    "accuracy_matrix",
    "count_changed_parameters",
    "make_evaluator",
    "parameters_per_experience_metrics",
    "results_table",
    "stream_accuracy",
]
