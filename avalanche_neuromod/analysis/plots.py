"""Figures of continual-learning results, as functions returning matplotlib figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..evaluation.results import ContinualResults

__all__ = ["plot_accuracy_matrix", "plot_final_accuracy", "plot_accuracy_curves", "plot_task_accuracies",
           "plot_accuracy_vs_parameters", "save_figure"]

ResultsLike = Union[ContinualResults, np.ndarray]


def _as_results(r: ResultsLike) -> ContinualResults:
    return r if isinstance(r, ContinualResults) else ContinualResults(np.asarray(r, dtype=float))


def _figure(ax, figsize):
    import matplotlib

    if ax is not None:
        return ax.figure, ax
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def save_figure(fig, path: Union[str, Path], dpi: int = 110, **savefig_kwargs) -> Path:
    """Save a figure, creating its folder, and close it.

    The ``plot_*`` functions return figures that pyplot keeps until they are closed; a loop or a notebook that
    draws many should save them with this (or close them) so they do not pile up in memory.

    :param fig: a matplotlib figure (what the ``plot_*`` functions return).
    :param path: the file; its extension picks the format (``.png``, ``.pdf``, ``.svg``).
    :param dpi: resolution of raster formats.
    :param savefig_kwargs: passed to :meth:`matplotlib.figure.Figure.savefig` (e.g. ``bbox_inches="tight"``).
    :returns: the path written.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **savefig_kwargs)
    plt.close(fig)
    return path


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend_loc: str = "best"):
    """Labels, a [0, 1] accuracy axis, the legend and a tight layout."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc=legend_loc)
    fig.tight_layout()
    return fig


def plot_accuracy_matrix(results: ResultsLike, ax=None, title: Optional[str] = None, annotate: Optional[bool] = None):
    """Heatmap of ``A[i, j]``: accuracy on experience ``j`` after training ``i``.

    :param results: a :class:`ContinualResults` or a matrix.
    :param ax: draw into this axes (else a new figure).
    :param title: defaults to the results' name.
    :param annotate: write the values in the cells (default: when small).
    :return: the matplotlib figure.
    """
    r = _as_results(results)
    m = r.matrix
    fig, ax = _figure(ax, (1.0 + 0.45 * m.shape[1], 1.0 + 0.4 * m.shape[0]))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xlabel("evaluated on experience")
    ax.set_ylabel("after training experience")
    ax.set_title(title if title is not None else (r.name or "accuracy matrix"))
    if annotate is None:
        annotate = m.shape[0] * m.shape[1] <= 150
    if annotate:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    return fig


def plot_final_accuracy(results: Sequence[ResultsLike], ax=None, title: str = "final accuracy per experience"):
    """Grouped bars of the final accuracy on each experience, one colour per method.

    :param results: one entry per method.
    :param ax: draw into this axes (else a new figure).
    :param title: the title.
    :return: the matplotlib figure.
    """
    rs = [_as_results(r) for r in results]
    n_exp = max(r.matrix.shape[1] for r in rs)
    fig, ax = _figure(ax, (max(5.0, 0.5 * n_exp * len(rs) ** 0.5 + 3), 3.5))
    width = 0.8 / len(rs)
    for k, r in enumerate(rs):
        acc = r.final_accuracies
        ax.bar(np.arange(len(acc)) + k * width - 0.4 + width / 2, acc, width,
               label=f"{r.name or k} (avg {r.average_accuracy:.3f})")
    ax.set_xticks(range(n_exp))
    return _finish(fig, ax, "experience", "final accuracy", title, legend_loc="lower left")


def plot_accuracy_curves(results: Sequence[ResultsLike], ax=None, title: str = "average accuracy on seen experiences"):
    """Average accuracy over the experiences seen so far, after each experience.

    :param results: one entry per method.
    :param ax: draw into this axes (else a new figure).
    :param title: the title.
    :return: the matplotlib figure.
    """
    rs = [_as_results(r) for r in results]
    fig, ax = _figure(ax, (5.5, 3.5))
    for k, r in enumerate(rs):
        curve = r.accuracy_curve()
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=r.name or str(k))
    return _finish(fig, ax, "experiences trained", "average accuracy", title)


def _stream_rows(rows: Sequence[dict], stream: Optional[str]) -> list:
    streams = sorted({r["stream"] for r in rows})
    if stream is None:
        if len(streams) != 1:
            raise ValueError(f"the rows hold streams {streams}: pass stream= to pick one.")
        stream = streams[0]
    picked = [r for r in rows if r["stream"] == stream]
    if not picked:
        raise ValueError(f"no row of stream {stream!r}; the rows hold {streams}.")
    return picked


_MARKERS = "os^Dv<>PX*"
_LINESTYLES = ("-", "--", ":", "-.")


def _style(k: int) -> dict:
    """Colour, marker and line style of the ``k``-th method: distinct beyond the 10 colours of the cycle."""
    return {"color": f"C{k % 10}", "marker": _MARKERS[k % len(_MARKERS)], "linestyle": _LINESTYLES[(k // 10) % 4]}


def _outside_legend(fig, ax, xlabel: str, ylabel: str, title: str):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def plot_task_accuracies(rows: Sequence[dict], stream: Optional[str] = None, ax=None,
                         title: Optional[str] = None):
    """Final accuracy on every task, one line per method (the CRWN paper's Figures 2 and 4).

    :param rows: summary rows of a comparison grid
        (:func:`~avalanche_neuromod.evaluation.grid.summarize`).
    :param stream: the stream to draw (needed when the rows hold several).
    :param ax: draw into this axes (else a new figure).
    :param title: defaults to the stream's name.
    :return: the matplotlib figure.
    """
    picked = _stream_rows(rows, stream)
    n_tasks = max(len(r["final_accuracies"]) for r in picked)
    fig, ax = _figure(ax, (max(7.5, 0.18 * n_tasks + 5), 4.0))
    for k, r in enumerate(picked):
        acc = r["final_accuracies"]
        ax.plot(np.arange(len(acc)), acc, ms=3, lw=1.1, label=f"{r['method']} ({100 * r['avg_accuracy']:.1f}%)",
                **_style(k))
    ax.set_ylim(0, 1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _outside_legend(fig, ax, "task", "final test accuracy",
                           title or f"final accuracy per task: {picked[0]['stream']}")


def plot_accuracy_vs_parameters(rows: Sequence[dict], stream: Optional[str] = None, ax=None,
                                title: Optional[str] = None):
    """Mean final accuracy against learnable parameters per task, log axis (the CRWN paper's Figures 3 and 5).

    :param rows: summary rows of a comparison grid.
    :param stream: the stream to draw (needed when the rows hold several).
    :param ax: draw into this axes (else a new figure).
    :param title: defaults to the stream's name.
    :return: the matplotlib figure.
    """
    picked = _stream_rows(rows, stream)
    fig, ax = _figure(ax, (7.5, 4.0))
    for k, r in enumerate(picked):
        style = _style(k)
        ax.scatter(r["params_per_task"], r["avg_accuracy"], s=36, color=style["color"], marker=style["marker"],
                   label=f"{r['method']} ({100 * r['avg_accuracy']:.1f}%)")
    ax.set_xscale("log")
    low = min(r["avg_accuracy"] for r in picked)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    return _outside_legend(fig, ax, "learnable parameters per task", "mean final accuracy",
                           title or f"accuracy vs parameters per task: {picked[0]['stream']}")
