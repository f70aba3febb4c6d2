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
from .plots import plot_accuracy_curves, plot_accuracy_matrix, plot_final_accuracy

__all__ = [
    "LAYER_NAMES",
    "RegulationRecorder",
    "RegulationStatistics",
    "plot_regulation_ccdf",
    "plot_task_activity",
    "plot_total_regulation",
    "regulation_statistics",
    "GateStatistics",
    "activation_rates",
    "collect_gates",
    "context_similarity",
    "js_divergence_matrix",
    "keep_ratios",
    "plot_activation_rates",
    "plot_attention_tsne",
    "plot_js_divergence",
    "plot_trial_variability",
    "trial_variability",
    "plot_accuracy_curves",
    "plot_accuracy_matrix",
    "plot_context_similarity",
    "plot_final_accuracy",
]
