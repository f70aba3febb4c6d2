"""The papers' figures as functions that return matplotlib figures."""

from .contexts import context_similarity, plot_context_similarity
from .gating import (
    GateStatistics,
    activation_rates,
    collect_gates,
    js_divergence_matrix,
    keep_ratios,
    plot_activation_rates,
    plot_attention_tsne,
    plot_js_divergence,
    plot_trial_variability,
    trial_variability,
)
from .regulation import (
    LAYER_NAMES,
    RegulationRecorder,
    RegulationStatistics,
    plot_regulation_ccdf,
    plot_task_activity,
    plot_total_regulation,
    regulation_statistics,
)
from .plots import (plot_accuracy_curves, plot_accuracy_matrix, plot_accuracy_vs_parameters, plot_final_accuracy,
                    plot_task_accuracies, save_figure)

__all__ = [
    "activation_rates",
    "collect_gates",
    "context_similarity",
    "GateStatistics",
    "js_divergence_matrix",
    "keep_ratios",
    "LAYER_NAMES",
    "plot_accuracy_curves",
    "plot_accuracy_matrix",
    "plot_accuracy_vs_parameters",
    "plot_activation_rates",
    "plot_attention_tsne",
    "plot_context_similarity",
    "plot_final_accuracy",
    "plot_js_divergence",
    "plot_regulation_ccdf",
    "plot_task_accuracies",
    "plot_task_activity",
    "plot_total_regulation",
    "plot_trial_variability",
    "regulation_statistics",
    "RegulationRecorder",
    "RegulationStatistics",
    "save_figure",
    "trial_variability",
]
