"""The papers' figures as functions that return matplotlib figures."""

from .contexts import context_similarity, plot_context_similarity
from .plots import plot_accuracy_curves, plot_accuracy_matrix, plot_final_accuracy

__all__ = [
    "context_similarity",
    "plot_accuracy_curves",
    "plot_accuracy_matrix",
    "plot_context_similarity",
    "plot_final_accuracy",
]
