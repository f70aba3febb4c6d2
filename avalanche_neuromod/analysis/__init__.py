"""The papers' figures as functions that return matplotlib figures."""

from .plots import plot_accuracy_curves, plot_accuracy_matrix, plot_final_accuracy

__all__ = ["plot_accuracy_curves", "plot_accuracy_matrix", "plot_final_accuracy"]
