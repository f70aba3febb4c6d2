"""Evaluation helpers: a ready evaluator, extra metrics, result tables and the comparison grid."""

from .accuracy import accuracies, class_accuracy, ImmediateAccuracyPlugin, stream_accuracy
from .evaluator import make_evaluator
from .grid import Grid, GridCell, register_method, register_stream, run_grid, summarize, summary_table
from .method_metrics import KeepRatio, RegulationActivity, keep_ratio_metrics, regulation_metrics
from .params import ParametersPerExperience, count_changed_parameters, parameters_per_experience_metrics
from .results import ACC_PREFIX, ContinualResults, accuracy_matrix, results_table

__all__ = [
    "ACC_PREFIX",
    "accuracies",
    "accuracy_matrix",
    "class_accuracy",
    "ContinualResults",
    "count_changed_parameters",
    "Grid",
    "GridCell",
    "ImmediateAccuracyPlugin",
    "keep_ratio_metrics",
    "KeepRatio",
    "make_evaluator",
    "parameters_per_experience_metrics",
    "ParametersPerExperience",
    "register_method",
    "register_stream",
    "regulation_metrics",
    "RegulationActivity",
    "results_table",
    "run_grid",
    "stream_accuracy",
    "summarize",
    "summary_table",
]
