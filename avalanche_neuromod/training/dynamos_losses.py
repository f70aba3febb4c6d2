"""Dynamos' losses as pure functions of tensors (no strategy needed to test them).

With ``k_l`` the fraction of channels agent ``l`` keeps for a sample and
``kr`` the target keep ratio (the paper: 0.7):

- reward: ``R_l = -(kr - k_l)^2`` if the sample is predicted right,
  ``-lambda * (kr - k_l)^2`` if wrong (:func:`keep_ratio_reward`);
- REINFORCE: ``L_R = mean over samples and agents of -log pi_l * R_l``, no
  baseline (:func:`reinforce_loss`);
- prototype loss on the attention vectors ``V`` of the correctly predicted
  samples, when there are more than two: with ``D_ij = ||V_i - V_j||^2``
  over pairs ``i < j`` and ``d`` the length of ``V``,
  ``L_P = (1 + sum_same D / d) / (1 + sum_different D / d)``
  (:func:`prototype_loss`);
- consistency: mean squared error between what the network gives now for a
  buffer sample and what it gave when the sample was stored, on logits and
  on attention vectors (:func:`consistency_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["consistency_loss", "keep_ratio_reward", "prototype_loss", "reinforce_loss"]


def keep_ratio_reward(keep_fractions: torch.Tensor, correct: torch.Tensor, keep_ratio: float = 0.7,
                      penalty: float = 1.0) -> torch.Tensor:
    """Reward of each agent for each sample, ``(B, L)``; never positive.

    :param keep_fractions: fraction of channels each agent kept, ``(B, L)``.
    :param correct: whether each sample was predicted right, ``(B,)`` bool.
    :param keep_ratio: the target fraction ``kr``.
    :param penalty: ``lambda``, the factor for wrong predictions.
    """
    if keep_fractions.dim() != 2 or correct.shape != keep_fractions.shape[:1]:
        raise ValueError(f"keep_fractions must be (B, L) and correct (B,), got "
                         f"{tuple(keep_fractions.shape)} and {tuple(correct.shape)}.")
    scale = torch.where(correct, 1.0, float(penalty)).to(keep_fractions.dtype)
    return -(keep_ratio - keep_fractions).pow(2) * scale[:, None]


def reinforce_loss(log_probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """``mean(-log pi * R)`` over samples and agents; gradients flow into ``log_probs`` only.

    :param log_probs: ``log pi`` of each agent's actions per sample, ``(B, L)``.
    :param rewards: rewards of the same shape (treated as constants).
    """
    if log_probs.shape != rewards.shape:
        raise ValueError(f"log_probs {tuple(log_probs.shape)} and rewards {tuple(rewards.shape)} differ in shape.")
    return (-log_probs * rewards.detach()).mean()


def prototype_loss(attention: torch.Tensor, labels: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """``(1 + same-class spread) / (1 + different-class spread)`` of the correct samples' ``V``.

    Zero (a constant, no gradient) when at most two samples are predicted right.

    :param attention: attention vectors ``V``, ``(B, d)``.
    :param labels: class labels, ``(B,)``.
    :param correct: whether each sample was predicted right, ``(B,)`` bool.
    """
    v, y = attention[correct], labels[correct]
    if len(v) <= 2:
        return attention.new_zeros(())
    # Explicit differences, not cdist: exact squares and a finite gradient at zero distance.
    distances = (v[:, None, :] - v[None, :, :]).pow(2).sum(dim=2) / v.shape[1]
    upper = torch.triu(torch.ones_like(distances, dtype=torch.bool), diagonal=1)
    same = y[:, None] == y[None, :]
    within = distances[upper & same].sum()
    between = distances[upper & ~same].sum()
    return (1 + within) / (1 + between)


def consistency_loss(current: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """Mean squared error between current and stored outputs (logits or attention vectors).

    :param current: what the network gives now, ``(M, d)``.
    :param stored: what it gave when the samples were stored, same shape.
    """
    if current.shape != stored.shape:
        raise ValueError(f"current {tuple(current.shape)} and stored {tuple(stored.shape)} outputs differ "
                         f"in shape: was the buffer filled by a network with another output size?")
    return F.mse_loss(current, stored)
