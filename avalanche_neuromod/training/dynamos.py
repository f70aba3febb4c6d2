"""Dynamos: agents that drop channels per input, a prototype loss, correct-only replay.

One training step, with ``B`` the stream mini-batch and ``M`` a batch drawn
from the reservoir (:class:`~.reservoir.ReservoirBuffer`), both through one
forward pass of the gated network (or one pass each, ``separate_replay_pass``,
as the authors' code does):

    loss = CE(B) + gamma * L_R(B) + w_p * L_P(B)
         + alpha * MSE(logits_M, stored logits) + alpha_p * MSE(V_M, stored V)
         + beta * [CE(M) + gamma * L_R(M)] + w_p * L_P(M)

(:mod:`.dynamos_losses` holds the terms). After the SGD step, the stream
samples the network predicted right are offered to the reservoir with the
logits and attention vectors ``V`` of that step. At the very start of
training comes a warm-up (``warmup_iterations`` mini-batches or
``warmup_epochs`` epochs of the first experience): the network runs
ungated, on cross-entropy alone, and the buffer is neither used nor filled.

:class:`DynamosPlugin` adds all of this (except the host's cross-entropy,
which it keeps) to any Avalanche strategy; :class:`Dynamos` is a
``SupervisedTemplate`` with the plugin and plain SGD, as the paper trains it.
:class:`ConsistencyReplay` is the paper's ablation: the same replay with
logit consistency and a correct-only reservoir, and no agents
(``CE(B) + beta * CE(M) + alpha * MSE(logits_M, stored logits)``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from avalanche.core import SupervisedPlugin
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate

from ..models.dynamos import require_agents
from ._targets import CheckedTargetsMixin
from .checkpoint import CheckpointMixin
from .dynamos_losses import consistency_loss, keep_ratio_reward, prototype_loss, reinforce_loss
from .reservoir import ReservoirBuffer
from .untrained import SkipUntrainedEvalMixin

__all__ = ["ConsistencyReplay", "ConsistencyReplayPlugin", "Dynamos", "DynamosPlugin", "PAPER_SETTINGS",
           "paper_setting"]

PAPER_SETTINGS: Dict[str, Dict[int, Dict[str, Any]]] = {
    "seq-mnist": {
        500: dict(alpha=0.2, beta=2.0, alpha_p=0.2, penalty=500, gamma=0.5, w_p=0.3),
        1000: dict(alpha=0.1, beta=2.5, alpha_p=0.2, penalty=200, gamma=0.7, w_p=0.5),
        2000: dict(alpha=0.5, beta=3.0, alpha_p=0.2, penalty=200, gamma=0.5, w_p=0.5),
    },
    "seq-svhn": {
        500: dict(alpha=2.0, beta=3.0, alpha_p=1.0, penalty=500, gamma=1.0, w_p=0.5),
        1000: dict(alpha=2.5, beta=2.0, alpha_p=0.2, penalty=500, gamma=1.0, w_p=0.5),
        2000: dict(alpha=2.5, beta=2.0, alpha_p=0.2, penalty=500, gamma=1.0, w_p=0.5),
    },
    "mnist360": {
        100: dict(alpha=0.2, beta=1.0, alpha_p=0.1, penalty=200, gamma=0.5, w_p=0.5),
        200: dict(alpha=0.2, beta=1.5, alpha_p=0.1, penalty=200, gamma=1.0, w_p=0.5),
        500: dict(alpha=0.1, beta=1.5, alpha_p=0.1, penalty=200, gamma=0.3, w_p=0.3),
    },
}
"""The paper's Table 5: loss weights per stream and buffer size (kr = 0.7 and lr = 0.07 everywhere)."""

STREAM_SETTINGS: Dict[str, Dict[str, Any]] = {
    "seq-mnist": dict(train_epochs=1, warmup_iterations=10, warmup_epochs=0, train_mb_size=10),
    "seq-svhn": dict(train_epochs=70, warmup_iterations=0, warmup_epochs=10, train_mb_size=16),
    "mnist360": dict(train_epochs=1, warmup_iterations=10, warmup_epochs=0, train_mb_size=16),
}
"""Epochs, warm-up and batch size of each stream of Table 5."""

_STREAM_ALIASES = {"seq-mnist": "seq-mnist", "seq_mnist": "seq-mnist", "split-mnist": "seq-mnist",
                   "split_mnist": "seq-mnist", "splitmnist": "seq-mnist", "seqmnist": "seq-mnist",
                   "seq-svhn": "seq-svhn", "seq_svhn": "seq-svhn", "seqsvhn": "seq-svhn",
                   "mnist360": "mnist360", "mnist-360": "mnist360", "mnist_360": "mnist360"}

PAPER_LR = 0.07
PAPER_KEEP_RATIO = 0.7


def paper_setting(stream: str, buffer_size: int) -> Dict[str, Any]:
    """Table 5's row for ``stream`` and ``buffer_size``: loss weights, epochs, warm-up, batch size.

    :param stream: ``"mnist360"``, ``"seq-mnist"`` or ``"seq-svhn"`` (some spellings accepted).
    :param buffer_size: one of the paper's sizes for that stream.
    """
    key = _STREAM_ALIASES.get(stream.lower())
    if key is None:
        raise ValueError(f"no paper setting for stream {stream!r}; the paper's streams are "
                         f"{sorted(PAPER_SETTINGS)}.")
    if buffer_size not in PAPER_SETTINGS[key]:
        raise ValueError(f"the paper has no {key} row with buffer {buffer_size}; its buffers are "
                         f"{sorted(PAPER_SETTINGS[key])}. Pass the loss weights yourself for other sizes.")
    return {**STREAM_SETTINGS[key], **PAPER_SETTINGS[key][buffer_size]}


def _require_agents(model: nn.Module, owner: str) -> None:
    require_agents(model, owner, alternative=", or ConsistencyReplay for a network without agents")


class DynamosPlugin(SupervisedPlugin):
    """Dynamos' agent, prototype, consistency and replay terms for any Avalanche strategy.

    The host strategy keeps its own loss (cross-entropy on the stream batch)
    and its optimiser; the plugin appends a reservoir batch to every
    training mini-batch, hands the host the stream half of the output, adds
    the other terms of the module doc in ``before_backward`` and fills the
    reservoir after the update. Put it before other plugins that read the
    mini-batch (LwF, ...), so that they see the stream samples only.

    :param buffer_size: samples in the reservoir.
    :param alpha: weight of the logit consistency on buffer samples.
    :param beta: weight of the buffer's cross-entropy (and policy) terms.
    :param alpha_p: weight of the attention-vector consistency.
    :param penalty: ``lambda``, the reward factor for wrong predictions.
    :param gamma: weight of the REINFORCE loss.
    :param w_p: weight of the prototype loss.
    :param keep_ratio: the agents' target keep ratio ``kr``.
    :param warmup_iterations: ungated, cross-entropy-only mini-batches at the start.
    :param warmup_epochs: ungated, cross-entropy-only epochs at the start of the first experience.
    :param replay_batch_size: buffer samples per step (None: as many as the stream batch).
    :param seed: seed of the reservoir's draws.
    :param separate_replay_pass: run the buffer batch through a forward pass of its own, after the
        stream batch's, as the authors' code does (each batch then has its own batch-norm statistics);
        default: one joint pass over stream and buffer samples, as the paper's equations read.
    """

    uses_agents = True

    def __init__(self, buffer_size: int, *, alpha: float, beta: float, alpha_p: float = 0.0,
                 penalty: float = 1.0, gamma: float = 0.0, w_p: float = 0.0,
                 keep_ratio: float = PAPER_KEEP_RATIO, warmup_iterations: int = 0, warmup_epochs: int = 0,
                 replay_batch_size: Optional[int] = None, seed: int = 0, separate_replay_pass: bool = False):
        super().__init__()
        if warmup_iterations < 0 or warmup_epochs < 0:
            raise ValueError(f"warm-up lengths must be >= 0, got warmup_iterations={warmup_iterations}, "
                             f"warmup_epochs={warmup_epochs}.")
        if not 0.0 <= keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio is a fraction of channels, got {keep_ratio}.")
        if replay_batch_size is not None and replay_batch_size < 1:
            raise ValueError(f"replay_batch_size must be positive or None, got {replay_batch_size}.")
        self.buffer = ReservoirBuffer(buffer_size, seed=seed)
        self.alpha, self.beta, self.alpha_p = alpha, beta, alpha_p
        self.penalty, self.gamma, self.w_p = penalty, gamma, w_p
        self.keep_ratio = keep_ratio
        self.warmup_iterations = warmup_iterations
        self.warmup_epochs = warmup_epochs
        self.replay_batch_size = replay_batch_size
        self.separate_replay_pass = separate_replay_pass
        self.iterations = 0
        self._last_terms: Dict[str, torch.Tensor] = {}
        self._step: Optional[Dict[str, Any]] = None

    def in_warmup(self, strategy: Any) -> bool:
        """Whether the current training mini-batch belongs to the warm-up."""
        if self.iterations < self.warmup_iterations:
            return True
        clock = strategy.clock
        return clock.train_exp_counter == 0 and clock.train_exp_epochs < self.warmup_epochs

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        if self.uses_agents:
            _require_agents(strategy.model, type(self).__name__)

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        mbatch = strategy.mbatch
        if len(mbatch) < 2:
            raise ValueError(f"{type(self).__name__} trains on labelled samples (x, y[, task]); the "
                             f"mini-batch has {len(mbatch)} field(s). Train on a classification stream.")
        warm = self.in_warmup(strategy)
        x, y = mbatch[0], mbatch[1]
        step: Dict[str, Any] = {"warm": warm, "n": len(y), "x": x, "y": y, "replay": None}
        if warm:
            if self.uses_agents:
                strategy.model.gating = False
        elif len(self.buffer):
            replay = self.buffer.sample(self.replay_batch_size or len(y))
            replay = {k: v.to(x.device) for k, v in replay.items()}
            step["replay"] = replay
            if not self.separate_replay_pass:  # else after_forward runs the buffer batch alone
                extra = [torch.zeros_like(replay["labels"])] * (len(mbatch) - 2)  # task-free replay: task 0
                strategy.mbatch = [torch.cat([x, replay["inputs"]]), torch.cat([y, replay["labels"]])] + [
                    torch.cat([t, e]) for t, e in zip(mbatch[2:], extra)
                ]
        self._step = step

    def after_forward(self, strategy: Any, **kwargs: Any) -> None:
        step = self._step
        if step["warm"]:
            if self.uses_agents:
                strategy.model.gating = True
            return
        n = step["n"]
        logits = strategy.mb_output
        gates = strategy.model.last_gates if self.uses_agents else None
        if self.separate_replay_pass and step["replay"] is not None:
            replay = step["replay"]
            step["logits"] = logits
            step["replay_logits"] = avalanche_forward(strategy.model, replay["inputs"],
                                                      torch.zeros_like(replay["labels"]))
            if gates is not None:
                step["gates"], step["replay_gates"] = gates, strategy.model.last_gates
            return
        step["logits"], step["replay_logits"] = logits[:n], logits[n:]
        if gates is not None:
            step["gates"], step["replay_gates"] = gates.split(n)
        # The host (and later plugins) see the stream samples only.
        strategy.mb_output = logits[:n]
        strategy.mbatch = [field[:n] for field in strategy.mbatch]

    @property
    def last_terms(self) -> Dict[str, float]:
        """The weighted terms of the last step that had more than ``CE(B)``, by name."""
        return {k: float(v) for k, v in self._last_terms.items()}

    def extra_loss(self, step: Dict[str, Any]) -> torch.Tensor:
        """Every term of the module doc except ``CE(B)`` for one step; fills :attr:`last_terms`."""
        y, logits = step["y"], step["logits"]
        correct = logits.argmax(dim=1) == y
        step["correct"] = correct
        terms: Dict[str, torch.Tensor] = {}
        if "gates" in step:
            terms.update(self._agent_terms(step["gates"], y, correct, weight=1.0, tag="stream"))
        replay = step["replay"]
        if replay is not None:
            replay_logits = step["replay_logits"]
            terms["consistency_logits"] = self.alpha * consistency_loss(replay_logits, replay["logits"])
            terms["replay_ce"] = self.beta * F.cross_entropy(replay_logits, replay["labels"])
            if "replay_gates" in step:
                gates = step["replay_gates"]
                terms["consistency_attention"] = self.alpha_p * consistency_loss(gates.attention, replay["attention"])
                replay_correct = replay_logits.argmax(dim=1) == replay["labels"]
                terms.update(self._agent_terms(gates, replay["labels"], replay_correct, weight=self.beta,
                                               tag="replay"))
        # Kept as tensors: reading them as numbers would wait for the device on every step.
        self._last_terms = {k: v.detach() for k, v in terms.items()}
        return sum(terms.values(), logits.new_zeros(()))

    def _agent_terms(self, gates: Any, labels: torch.Tensor, correct: torch.Tensor, weight: float,
                     tag: str) -> Dict[str, torch.Tensor]:
        rewards = keep_ratio_reward(gates.keep_fractions, correct, self.keep_ratio, self.penalty)
        return {
            f"{tag}_reinforce": weight * self.gamma * reinforce_loss(gates.log_probs, rewards),
            # Not scaled by beta: the paper adds w_p * L_P(M) on its own.
            f"{tag}_prototype": self.w_p * prototype_loss(gates.attention, labels, correct),
        }

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        step = self._step
        if not step["warm"]:
            strategy.loss = strategy.loss + self.extra_loss(step)
        if not torch.isfinite(strategy.loss).all():
            raise FloatingPointError(
                f"the loss became {float(strategy.loss)} at training iteration {self.iterations}: lower "
                f"the learning rate or the loss weights (alpha={self.alpha}, beta={self.beta}, "
                f"gamma={self.gamma}, w_p={self.w_p})."
            )

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        step, self._step = self._step, None
        self.iterations += 1
        if step is None or step["warm"]:
            return
        gates = step.get("gates")
        self.buffer.add(
            step["x"].detach().cpu(), step["y"].cpu(), step["logits"].detach().cpu(),
            None if gates is None else gates.attention.detach().cpu(), step["correct"].cpu(),
        )

    def state_dict(self) -> Dict[str, Any]:
        """The reservoir and the iteration count (for the warm-up)."""
        return {"buffer": self.buffer.state_dict(), "iterations": self.iterations}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        :param state: a dictionary from :meth:`state_dict`.
        """
        self.buffer.load_state_dict(state["buffer"])
        self.iterations = int(state["iterations"])


class ConsistencyReplayPlugin(DynamosPlugin):
    """The paper's ablation as a plugin: correct-only reservoir replay with logit consistency, no agents.

    Adds ``beta * CE(M) + alpha * MSE(logits_M, stored logits)`` to the
    host's loss; works with any classifier.

    :param buffer_size: samples in the reservoir.
    :param alpha: weight of the logit consistency.
    :param beta: weight of the buffer's cross-entropy.
    :param warmup_iterations: cross-entropy-only mini-batches at the start.
    :param warmup_epochs: cross-entropy-only epochs at the start of the first experience.
    :param replay_batch_size: buffer samples per step (None: as many as the stream batch).
    :param seed: seed of the reservoir's draws.
    :param separate_replay_pass: the buffer batch in a forward pass of its own (:class:`DynamosPlugin`).
    """

    uses_agents = False

    def __init__(self, buffer_size: int, *, alpha: float, beta: float, warmup_iterations: int = 0,
                 warmup_epochs: int = 0, replay_batch_size: Optional[int] = None, seed: int = 0,
                 separate_replay_pass: bool = False):
        super().__init__(buffer_size, alpha=alpha, beta=beta, warmup_iterations=warmup_iterations,
                         warmup_epochs=warmup_epochs, replay_batch_size=replay_batch_size, seed=seed,
                         separate_replay_pass=separate_replay_pass)


class _ReplayStrategy(CheckedTargetsMixin, SkipUntrainedEvalMixin, CheckpointMixin, SupervisedTemplate):
    """A ``SupervisedTemplate`` with plain SGD and one replay plugin of this module.

    The template's arguments, shared by :class:`Dynamos` and
    :class:`ConsistencyReplay`: ``train_mb_size`` (stream batch size, 16),
    ``train_epochs`` (epochs per experience, 1), ``eval_mb_size`` (None:
    ``max(train_mb_size, 256)``), ``device``, ``plugins`` (more Avalanche
    plugins), ``evaluator``, ``eval_every`` (Avalanche's periodic evaluation)
    and ``criterion`` (the stream loss, cross-entropy by default).
    """

    _table_keys: Optional[Sequence[str]] = None
    """The keys of Table 5's row that :meth:`preset` uses (None: all)."""

    def __init__(self, *, model: nn.Module, plugin: DynamosPlugin, lr: float, train_mb_size: int = 16,
                 train_epochs: int = 1, eval_mb_size: Optional[int] = None, device: Any = "cpu",
                 plugins: Optional[Sequence[Any]] = None, evaluator: Any = default_evaluator,
                 eval_every: int = -1, criterion: Optional[nn.Module] = None, **base_kwargs: Any):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        self.replay_plugin = plugin
        super().__init__(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=lr),
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size if eval_mb_size is not None else max(train_mb_size, 256),
            device=device,
            plugins=[plugin] + list(plugins or []),
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )

    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs: Any) -> None:
        """Avalanche's optimiser update, skipped while the optimiser and the model's parameters are unchanged.

        Without task boundaries (MNIST-360's online stream) Avalanche calls
        this before every mini-batch; re-mapping the same parameters each time
        costs about 2 ms, a few percent of a training step.

        :param reset_optimizer_state: reset the optimiser's state (always updates).
        """
        key = (id(self.optimizer), [(name, id(p)) for name, p in self.model.named_parameters()])
        if reset_optimizer_state or self.optimized_param_id is None or key != getattr(self, "_optimised_key", None):
            super().make_optimizer(reset_optimizer_state=reset_optimizer_state, **kwargs)
            self._optimised_key = key

    @classmethod
    def preset(cls, stream: str, buffer_size: int, model: nn.Module, **overrides: Any):
        """The strategy with the paper's Table 5 row for ``stream`` and ``buffer_size``.

        :param stream: ``"mnist360"``, ``"seq-mnist"`` or ``"seq-svhn"``.
        :param buffer_size: one of the paper's sizes for that stream.
        :param model: the network.
        :param overrides: any constructor argument, replacing the table's.
        """
        setting = paper_setting(stream, buffer_size)
        if cls._table_keys is not None:
            setting = {k: setting[k] for k in cls._table_keys}
        return cls(model=model, buffer_size=buffer_size, **{**setting, **overrides})

    @property
    def buffer(self) -> ReservoirBuffer:
        """The reservoir."""
        return self.replay_plugin.buffer


class Dynamos(_ReplayStrategy):
    """Dynamos (Varma, Arani and Zonooz, 2023) as an Avalanche strategy.

    General continual learning: no task ids, no task boundaries needed (train
    on MNIST-360's ``online_train_stream`` or on class-incremental
    ``SplitMNIST``). Plain SGD over the network and its agents; the
    objective, warm-up and reservoir of the module doc (:class:`DynamosPlugin`).
    ``Dynamos.preset(stream, buffer_size, model)`` fills in the paper's Table 5. Checkpoint with
    :meth:`save_checkpoint` / :meth:`load_checkpoint` (the reservoir included)
    or Avalanche's helpers (:mod:`.checkpoint`).

    :param model: a network with agents (:class:`~avalanche_neuromod.models.DynamosResNet18`).
    :param buffer_size: samples in the reservoir.
    :param alpha: weight of the logit consistency.
    :param beta: weight of the buffer terms.
    :param alpha_p: weight of the attention-vector consistency.
    :param penalty: ``lambda``, the reward factor for wrong predictions.
    :param gamma: weight of the REINFORCE loss.
    :param w_p: weight of the prototype loss.
    :param keep_ratio: target keep ratio ``kr`` (0.7).
    :param lr: SGD learning rate (0.07).
    :param warmup_iterations: ungated, cross-entropy-only mini-batches at the start.
    :param warmup_epochs: ungated, cross-entropy-only epochs at the start of the first experience.
    :param replay_batch_size: buffer samples per step (None: ``train_mb_size``).
    :param seed: seed of the reservoir's draws.
    :param separate_replay_pass: the buffer batch in a forward pass of its own, as the authors' code
        (:class:`DynamosPlugin`; default: one joint pass).
    :param template: the template's arguments (``train_mb_size=16``, ``train_epochs=1``,
        ``eval_mb_size``, ``device``, ``plugins``, ``evaluator``, ``eval_every``, ``criterion``, ...).
    """

    def __init__(self, *, model: nn.Module, buffer_size: int, alpha: float, beta: float, alpha_p: float,
                 penalty: float, gamma: float, w_p: float, keep_ratio: float = PAPER_KEEP_RATIO,
                 lr: float = PAPER_LR, warmup_iterations: int = 10, warmup_epochs: int = 0,
                 replay_batch_size: Optional[int] = None, seed: int = 0, separate_replay_pass: bool = False,
                 **template: Any):
        _require_agents(model, "Dynamos")
        plugin = DynamosPlugin(buffer_size, alpha=alpha, beta=beta, alpha_p=alpha_p, penalty=penalty, gamma=gamma,
                               w_p=w_p, keep_ratio=keep_ratio, warmup_iterations=warmup_iterations,
                               warmup_epochs=warmup_epochs, replay_batch_size=replay_batch_size, seed=seed,
                               separate_replay_pass=separate_replay_pass)
        super().__init__(model=model, plugin=plugin, lr=lr, **template)


class ConsistencyReplay(_ReplayStrategy):
    """The paper's ablation: correct-only reservoir replay with logit consistency, no agents.

    Loss ``CE(B) + beta * CE(M) + alpha * MSE(logits_M, stored logits)``,
    plain SGD, warm-up and reservoir as in :class:`Dynamos`; any classifier
    (e.g. ``DynamosResNet18(agents=False)``). ``ConsistencyReplay.preset`` takes
    Table 5's alpha, beta, epochs, warm-up and batch size.

    :param model: the network.
    :param buffer_size: samples in the reservoir.
    :param alpha: weight of the logit consistency.
    :param beta: weight of the buffer's cross-entropy.
    :param lr: SGD learning rate (0.07).
    :param warmup_iterations: cross-entropy-only mini-batches at the start.
    :param warmup_epochs: cross-entropy-only epochs at the start of the first experience.
    :param replay_batch_size: buffer samples per step (None: ``train_mb_size``).
    :param seed: seed of the reservoir's draws.
    :param separate_replay_pass: the buffer batch in a forward pass of its own (:class:`Dynamos`).
    :param template: the template's arguments, as for :class:`Dynamos`.
    """

    _table_keys = ("alpha", "beta", "train_epochs", "warmup_iterations", "warmup_epochs", "train_mb_size")

    def __init__(self, *, model: nn.Module, buffer_size: int, alpha: float, beta: float, lr: float = PAPER_LR,
                 warmup_iterations: int = 10, warmup_epochs: int = 0, replay_batch_size: Optional[int] = None,
                 seed: int = 0, separate_replay_pass: bool = False, **template: Any):
        plugin = ConsistencyReplayPlugin(buffer_size, alpha=alpha, beta=beta, warmup_iterations=warmup_iterations,
                                         warmup_epochs=warmup_epochs, replay_batch_size=replay_batch_size, seed=seed,
                                         separate_replay_pass=separate_replay_pass)
        super().__init__(model=model, plugin=plugin, lr=lr, **template)
