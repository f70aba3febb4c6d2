"""Interpretability of CRWN: how similar are the contexts learned for different tasks?

The CRWN paper's claim: context vectors are interpretable, similar tasks
(neighbouring rotation angles) get similar contexts.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["context_similarity", "plot_context_similarity"]


def context_similarity(model, layer: Optional[int] = None, tasks: Optional[Sequence[int]] = None) -> np.ndarray:
    """Cosine similarity between the tasks' contexts.

    :param model: a CRWN network (:class:`~avalanche_neuromod.models.CRWNModule`).
    :param layer: index of the modulated layer to compare (in
        ``model.modulations()`` order); None concatenates every layer's
        context.
    :param tasks: which tasks, in which order (default: the trained ones).
    :return: ``(T, T)`` matrix of cosine similarities.
    """
    mods = model.modulations()
    if not mods:
        raise ValueError("the model has no modulated layers.")
    if layer is not None and not -len(mods) <= layer < len(mods):
        raise ValueError(f"layer must be in {-len(mods)}..{len(mods) - 1}, got {layer}.")
    tasks = list(tasks) if tasks is not None else model.trained_tasks
    if not tasks:
        raise ValueError("no trained task to compare: train the model first or pass tasks=[...].")
    held = min(m.n_tasks for m in mods)
    outside = [t for t in tasks if not 0 <= int(t) < held]
    if outside:
        raise ValueError(f"task id(s) {outside} out of range: the model holds {held} task(s), ids 0..{held - 1}. "
                         f"Fix: pass ids of tasks it holds (trained: {model.trained_tasks}).")
    chosen = mods if layer is None else [mods[layer]]
    with torch.no_grad():
        vectors = torch.stack(
            [torch.cat([m.contexts[t].reshape(-1) for m in chosen]) for t in tasks]
        ).double()
        unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (unit @ unit.t()).numpy()


def plot_context_similarity(
    model_or_matrix: Union[np.ndarray, torch.nn.Module],
    labels: Optional[Sequence[str]] = None,
    layer: Optional[int] = None,
    ax=None,
    title: str = "context similarity between tasks",
):
    """Heatmap of :func:`context_similarity`.

    :param model_or_matrix: a CRWN network or a precomputed similarity matrix.
    :param labels: tick labels (e.g. rotation angles); default task indices.
    :param layer: see :func:`context_similarity`.
    :param ax: draw into this axes (else a new figure).
    :param title: the title.
    :return: the matplotlib figure.
    """
    from .plots import _figure

    sim = model_or_matrix if isinstance(model_or_matrix, np.ndarray) else context_similarity(model_or_matrix, layer)
    n = sim.shape[0]
    fig, ax = _figure(ax, (max(5.0, 1.5 + 0.3 * n), max(4.0, 1.0 + 0.3 * n)))
    im = ax.imshow(sim, cmap="coolwarm", vmin=-1.0, vmax=1.0)
    ticks = list(labels) if labels is not None else [str(i) for i in range(n)]
    step = max(1, n // 12)
    ax.set_xticks(range(0, n, step), ticks[::step], rotation=90 if n > 8 else 0)
    ax.set_yticks(range(0, n, step), ticks[::step])
    ax.set_xlabel("task")
    ax.set_ylabel("task")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="cosine similarity")
    fig.tight_layout()
    return fig
