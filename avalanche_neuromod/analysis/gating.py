"""Dynamos' analysis figures: what the agents keep, per class, per task and per trial.

Everything starts from :func:`collect_gates`, one pass of a gated network
(e.g. :class:`~avalanche_neuromod.models.DynamosResNet18`) over a dataset in
eval mode, which records each agent's actions and the attention vectors
``V``. From it:

- :func:`activation_rates`: fraction of samples in which each channel of
  each gated layer is kept, per class or per task (the paper's heatmaps,
  :func:`plot_activation_rates`); their mean over channels is the layer's
  keep ratio (:func:`keep_ratios`);
- :func:`js_divergence_matrix`: Jensen-Shannon divergence between the
  classes' activation profiles (each class's rates over all gated channels,
  normalised to sum to 1), :func:`plot_js_divergence`;
- :func:`plot_attention_tsne`: t-SNE of ``V`` coloured by class;
- :func:`trial_variability`: with agents sampling at inference, how often a
  channel's decision for the same input changes between trials,
  :func:`plot_trial_variability`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..models.dynamos import agents_sampling, require_agents
from .plots import _figure

__all__ = [
    "GateStatistics",
    "activation_rates",
    "collect_gates",
    "js_divergence_matrix",
    "keep_ratios",
    "plot_activation_rates",
    "plot_attention_tsne",
    "plot_js_divergence",
    "plot_trial_variability",
    "trial_variability",
]


@dataclass
class GateStatistics:
    """The agents' decisions over a dataset.

    :param actions: per gated layer, kept (1) or dropped (0) per sample and channel, ``(N, C_l)``.
    :param attention: attention vectors ``V``, ``(N, d)``.
    :param labels: class labels, ``(N,)``.
    :param task_labels: task labels, ``(N,)`` (zeros when the data has none).
    """

    actions: List[np.ndarray]
    attention: np.ndarray
    labels: np.ndarray
    task_labels: np.ndarray


@torch.no_grad()
def collect_gates(model: Any, dataset: Any, batch_size: int = 256, device: Any = "cpu") -> GateStatistics:
    """Run ``model`` in eval mode over ``dataset`` and record its agents' decisions.

    :param model: a network with agents that sets ``last_gates`` on each forward.
    :param dataset: an Avalanche or torch dataset of ``(x, y[, task])`` items
        (e.g. ``benchmark.test_stream[0].dataset``).
    :param batch_size: evaluation batch size.
    :param device: where to run the model.
    """
    require_agents(model, "these figures")
    was_training = model.training
    model.eval().to(device)
    actions: List[List[torch.Tensor]] = []
    attention, labels, tasks = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=getattr(dataset, "collate_fn", None))
    try:
        for batch in loader:
            x, y = batch[0].to(device), batch[1]
            model(x)
            gates = model.last_gates
            actions.append([d.actions.cpu() for d in gates.decisions])
            attention.append(gates.attention.cpu())
            labels.append(y)
            tasks.append(batch[2] if len(batch) > 2 else torch.zeros_like(y))
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("the dataset is empty: there is nothing to analyse.")
    return GateStatistics(
        actions=[torch.cat(layer).numpy() for layer in zip(*actions)],
        attention=torch.cat(attention).numpy(),
        labels=torch.cat(labels).numpy(),
        task_labels=torch.cat(tasks).numpy(),
    )


def activation_rates(stats: GateStatistics, by: str = "class") -> Dict[str, Any]:
    """Fraction of samples in which each channel is kept, per group.

    :param stats: from :func:`collect_gates`.
    :param by: ``"class"`` or ``"task"``.
    :return: ``{"groups": group ids, "rates": [per layer (n_groups, C_l)]}``.
    """
    if by not in ("class", "task"):
        raise ValueError(f"by must be 'class' or 'task', got {by!r}.")
    keys = stats.labels if by == "class" else stats.task_labels
    groups = np.unique(keys)
    rates = [np.stack([layer[keys == g].mean(axis=0) for g in groups]) for layer in stats.actions]
    return {"groups": groups, "rates": rates}


def keep_ratios(stats: GateStatistics) -> List[float]:
    """Mean fraction of channels kept per gated layer, over all samples.

    :param stats: from :func:`collect_gates`.
    """
    return [float(layer.mean()) for layer in stats.actions]


def js_divergence_matrix(stats: GateStatistics) -> Dict[str, Any]:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between the classes' activation profiles.

    A class's profile is its activation rates over every gated channel,
    normalised to sum to 1.

    :param stats: from :func:`collect_gates`.
    :return: ``{"classes": class ids, "divergence": (K, K) symmetric matrix}``.
    """
    per_class = activation_rates(stats, by="class")
    profiles = np.concatenate(per_class["rates"], axis=1)
    totals = profiles.sum(axis=1, keepdims=True)
    if np.any(totals == 0):
        raise ValueError("a class keeps no channel at all, so it has no activation profile to compare.")
    p = profiles / totals

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    k = len(p)
    divergence = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            m = (p[i] + p[j]) / 2
            divergence[i, j] = divergence[j, i] = (kl(p[i], m) + kl(p[j], m)) / 2
    return {"classes": per_class["groups"], "divergence": divergence}


@torch.no_grad()
def trial_variability(model: Any, inputs: torch.Tensor, n_trials: int = 20, seed: int = 0) -> List[np.ndarray]:
    """How often each channel's decision for the same input changes between trials.

    The agents sample their actions at inference for this call
    (``sample_at_eval``), as the paper's trial-to-trial figure does; the
    model's setting is restored afterwards.

    :param model: a network with agents.
    :param inputs: a batch of inputs ``(B, ...)``.
    :param n_trials: forward passes per input.
    :param seed: seed of the sampling (the global torch generator is left as it was).
    :return: per gated layer, ``(B, C_l)``: fraction of trials in which the
        channel was kept; 0 or 1 means no variability.
    """
    require_agents(model, "these figures")
    if n_trials < 2:
        raise ValueError(f"variability needs at least 2 trials, got n_trials={n_trials}.")
    was_training = model.training
    model.eval()
    kept: Optional[List[np.ndarray]] = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with agents_sampling(list(model.agents)):
                for _ in range(n_trials):
                    model(inputs)
                    trial = [d.actions.cpu().numpy() for d in model.last_gates.decisions]
                    kept = trial if kept is None else [k + t for k, t in zip(kept, trial)]
        finally:
            model.train(was_training)
    return [k / n_trials for k in kept]


def _layer_names(n: int) -> List[str]:
    return [f"agent {i + 1}" for i in range(n)]


def plot_activation_rates(rates: Dict[str, Any], by: str = "class", layer_names: Optional[Sequence[str]] = None):
    """One heatmap per gated layer: groups (rows) by channels (columns), colour = rate kept.

    :param rates: from :func:`activation_rates`.
    :param by: the grouping's name, for the labels.
    :param layer_names: titles of the panels (default ``agent 1``, ...).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    layers = rates["rates"]
    names = list(layer_names) if layer_names is not None else _layer_names(len(layers))
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 1.2 + 0.35 * len(rates["groups"]) * len(layers)),
                             squeeze=False)
    for ax, layer, name in zip(axes[:, 0], layers, names):
        image = ax.imshow(layer, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(rates["groups"])), [str(g) for g in rates["groups"]])
        ax.set_ylabel(by)
        ax.set_title(f"{name}: channel activation rate per {by}", fontsize=9)
    axes[-1, 0].set_xlabel("channel")
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.8, label="fraction kept")
    return fig


def plot_js_divergence(divergence: Dict[str, Any], ax=None, title: str = "Jensen-Shannon divergence between classes"):
    """Heatmap of :func:`js_divergence_matrix`, values written in the cells.

    :param divergence: from :func:`js_divergence_matrix`.
    :param ax: an existing matplotlib axis, or None for a new figure.
    :param title: the title.
    """
    fig, ax = _figure(ax, (5.5, 4.5))
    matrix, classes = divergence["divergence"], divergence["classes"]
    image = ax.imshow(matrix, cmap="magma_r")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("class")
    ax.set_ylabel("class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def plot_attention_tsne(stats: GateStatistics, ax=None, max_points: int = 2000, seed: int = 0,
                        title: str = "t-SNE of the attention vectors V"):
    """t-SNE (scikit-learn) of the attention vectors, coloured by class.

    :param stats: from :func:`collect_gates`.
    :param ax: an existing matplotlib axis, or None for a new figure.
    :param max_points: at most this many samples (a seeded random subset).
    :param seed: seed of the subset and of t-SNE.
    :param title: the title.
    """
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    n = len(stats.labels)
    pick = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    perplexity = float(min(30, max(2, (len(pick) - 1) // 3)))
    embedded = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(
        stats.attention[pick])
    fig, ax = _figure(ax, (5.5, 5))
    labels = stats.labels[pick]
    for c in np.unique(labels):
        points = embedded[labels == c]
        ax.scatter(points[:, 0], points[:, 1], s=4, label=str(c))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, title="class", loc="best")
    fig.tight_layout()
    return fig


def plot_trial_variability(kept: List[np.ndarray], sample: int = 0, layer_names: Optional[Sequence[str]] = None):
    """For one input, each gated channel's fraction of trials kept (from :func:`trial_variability`).

    :param kept: from :func:`trial_variability`.
    :param sample: which input of the batch.
    :param layer_names: titles of the rows (default ``agent 1``, ...).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(layer_names) if layer_names is not None else _layer_names(len(kept))
    # Layers may gate different numbers of channels: shorter rows are padded (blank).
    rows = np.full((len(kept), max(k.shape[1] for k in kept)), np.nan)
    for i, layer in enumerate(kept):
        rows[i, : layer.shape[1]] = layer[sample]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * len(kept)))
    image = ax.imshow(rows, aspect="auto", vmin=0, vmax=1, cmap="coolwarm", interpolation="nearest")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("channel")
    ax.set_title("trial-to-trial variability: fraction of trials each channel was kept (one input)", fontsize=9)
    fig.colorbar(image, ax=ax, label="fraction of trials kept")
    fig.tight_layout()
    return fig
