"""Dynamos' networks: channel agents and the gated reduced ResNet-18.

An agent looks at a layer's input and decides, per sample, which output
channels of that layer to keep (Varma, Arani and Zonooz, 2023):

    u = GAP(BN(conv1x1(x)))                       one value per gated channel
    v = u * sigmoid(W2 ReLU(W1 u))                attention (squeeze-excitation, reduction 16)
    p = sigmoid(v / tau)                          keep probability, tau = 0.15
    a ~ Bernoulli(p) in training;  a = [p >= 0.5] at inference

The gated layer's output (after batch norm, before ReLU) is multiplied by
``a``. The agent learns by policy gradient, so it reports the log-probability
of its actions, ``log pi = sum_c log Bern(a_c; p_c)``, next to ``a`` and ``v``.

:class:`DynamosResNet18` is the paper's reduced ResNet-18: a 3x3 stem of 32
channels, two plain 32-channel blocks, two 64-channel blocks (the first with
stride 2 and a 1x1 convolution shortcut) whose two convolutions are each
gated by an agent, global average pooling and a linear classifier. In a
gated block ``out = ReLU(BN1(conv1(x)) * a1)`` with agent 1 reading ``x``,
then ``ReLU(BN2(conv2(out)) * a2 + shortcut(x) * a2)`` with agent 2 reading
``out``. One forward pass returns the logits and leaves the agents'
decisions in :attr:`DynamosResNet18.last_gates` for the training code.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_dtype, check_images

__all__ = ["AgentDecision", "agents_sampling", "ChannelAgent", "DynamosResNet18", "GateRecord", "require_agents"]


@dataclass
class AgentDecision:
    """What one agent decided for a batch.

    :param actions: kept (1) or dropped (0) channel per sample, ``(B, C)``.
    :param log_prob: ``log pi`` of those actions per sample, ``(B,)``.
    :param attention: the attention vector ``v`` per sample, ``(B, C)``.
    :param prob: keep probabilities ``p``, ``(B, C)``.
    """

    actions: torch.Tensor
    log_prob: torch.Tensor
    attention: torch.Tensor
    prob: torch.Tensor

    @property
    def keep_fraction(self) -> torch.Tensor:
        """Fraction of channels kept per sample, ``(B,)``."""
        return self.actions.mean(dim=1)


class _ChannelMoments(torch.autograd.Function):
    """Per-sample channel means, batch channel mean and covariance of ``x``, with a one-pass backward.

    For ``x`` of shape ``(B, C, H, W)`` with ``N = B H W`` pixels ``x_p``:
    ``xbar_b = mean over the pixels of sample b``, ``mu = mean_p x_p`` and
    ``Sigma = mean_p (x_p - mu)(x_p - mu)^T``. The gradient reaching a pixel
    of sample ``b`` is

        g_xbar_b / (H W) + g_mu / N + (G + G^T)(x_p - mu) / N,   G = dL/dSigma

    (the path through ``mu`` inside ``Sigma`` sums to zero). Autograd would
    build it from five full-resolution tensors (two mean backwards, the
    centring and two products); here it is one batched product with a
    per-sample bias, which is most of what the agents cost in a training step.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        batch, channels, height, width = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # a view when channels-last
        means = pixels.mean(dim=1)
        mu = means.mean(dim=0)
        # Second moment minus the squared mean: no centred copy of x (activations here are O(1), so
        # float32 loses nothing that matters to the cancellation).
        flat = pixels.reshape(-1, channels)
        covariance = flat.T @ flat / len(flat) - torch.outer(mu, mu)
        ctx.save_for_backward(pixels, mu)
        ctx.image_shape = (height, width)
        return means, mu, covariance

    @staticmethod
    def backward(ctx, g_means: torch.Tensor, g_mu: torch.Tensor, g_covariance: torch.Tensor):
        # Outputs the caller did not use arrive as zeros (autograd materialises them).
        pixels, mu = ctx.saved_tensors
        batch, n_pixels, channels = pixels.shape
        total = batch * n_pixels
        sym = (g_covariance + g_covariance.T) / total
        bias = g_means / n_pixels + g_mu / total - mu @ sym
        # One product over all pixels, then the per-sample bias in place (baddbmm's broadcast copy of the
        # bias into its output was a slow strided copy for the 28x28 layer).
        grad = (pixels.reshape(total, channels) @ sym).view(batch, n_pixels, channels).add_(bias[:, None, :])
        height, width = ctx.image_shape
        return grad.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


class ChannelAgent(nn.Module):
    """An agent that gates the output channels of a convolutional layer, per input.

    Call it on the gated layer's *input*; multiply the layer's output (after
    batch norm, before the non-linearity) by ``decision.actions[:, :, None,
    None]``. It works for any convolutional layer, not only Dynamos' network.

    :param in_channels: channels of the input the agent reads.
    :param channels: channels it gates (the gated layer's output channels).
    :param reduction: squeeze-excitation reduction (the paper: 16).
    :param temperature: temperature ``tau`` of the probability layer (0.15).
    :param sample_at_eval: keep sampling actions in eval mode (trial-to-trial
        variability) instead of keeping the channels with ``p >= 0.5``.
    :param detach_input: read the input without letting gradients through it,
        so that the policy, prototype and attention-consistency terms train
        the agent only and not the layers before it (not in the paper, which
        is silent on it; see docs/dynamos.rst for what it changes).
    """

    def __init__(self, in_channels: int, channels: int, *, reduction: int = 16,
                 temperature: float = 0.15, sample_at_eval: bool = False, detach_input: bool = False):
        super().__init__()
        if in_channels < 1 or channels < 1:
            raise ValueError(f"channel counts must be positive, got in_channels={in_channels}, "
                             f"channels={channels}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.in_channels = in_channels
        self.channels = channels
        self.temperature = float(temperature)
        self.sample_at_eval = sample_at_eval
        self.detach_input = detach_input
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def pooled_response(self, x: torch.Tensor) -> torch.Tensor:
        """``u = GAP(BN(conv1x1(x)))``, ``(B, C)``, without the full-resolution convolution.

        The 1x1 convolution is linear at every pixel, so with ``W`` its
        weights, ``GAP(W x) = W GAP(x)``; over the batch and the pixels, the
        mean of ``W x`` is ``W mu`` and its (biased) variance is
        ``diag(W Sigma W^T)``, with ``mu`` and ``Sigma`` the mean and covariance
        of the input's channels. Batch norm needs nothing else, so ``u`` and its
        gradients equal those of ``self.bn(self.conv(x)).mean((2, 3))`` up to
        rounding, and the running statistics advance as ``self.bn``'s would, at
        a fraction of the cost (one ``C_in x C_in`` covariance instead of a
        ``C x C_in`` convolution, its batch norm and their backward passes;
        the covariance's own backward is one pass, see ``_ChannelMoments``).

        :param x: the gated layer's input, ``(B, C_in, H, W)``.
        """
        bn, weight = self.bn, self.conv.weight.flatten(1)  # (C, C_in)
        if bn.training or bn.running_mean is None:
            means, mu, covariance = _ChannelMoments.apply(x)
            mean, var = weight @ mu, ((weight @ covariance) * weight).sum(dim=1)
            if bn.training and bn.track_running_stats:
                n_pixels = x.shape[0] * x.shape[2] * x.shape[3]
                self._update_running_stats(mean.detach(), var.detach(), n_pixels)
        else:
            means = x.mean(dim=(2, 3))
            mean, var = bn.running_mean, bn.running_var
        pooled = means @ weight.T
        u = (pooled - mean) * torch.rsqrt(var + bn.eps)
        return u * bn.weight + bn.bias if bn.affine else u

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        """Advance ``self.bn``'s running statistics as its own training forward would."""
        bn = self.bn
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var * (n / max(n - 1, 1)), alpha=momentum)

    def forward(self, x: torch.Tensor) -> AgentDecision:
        if torch.is_autocast_enabled(x.device.type):
            # Under a mixed-precision forward the gated layer's input may be bfloat16: the agent's
            # moments, attention and log-probabilities are computed in float32 all the same.
            with torch.autocast(x.device.type, enabled=False):
                return self._decide(x.float())
        return self._decide(x)

    def _decide(self, x: torch.Tensor) -> AgentDecision:
        u = self.pooled_response(x.detach() if self.detach_input else x)
        v = u * torch.sigmoid(self.fc2(F.relu(self.fc1(u))))
        logits = v / self.temperature
        p = torch.sigmoid(logits)
        if self.training or self.sample_at_eval:
            if not torch.isfinite(v).all():
                raise FloatingPointError(
                    "a channel agent got non-finite activations, so it cannot sample its actions: the "
                    "network's weights or inputs are NaN or infinite (after a diverging update, lower the "
                    "learning rate or the loss weights)."
                )
            actions = torch.bernoulli(p.detach())
        else:
            actions = (p >= 0.5).to(p.dtype)
        # log Bern(a; p) = a log p + (1 - a) log(1 - p), with log(1 - p) = logsigmoid(-logits).
        log_prob = (actions * F.logsigmoid(logits) + (1 - actions) * F.logsigmoid(-logits)).sum(dim=1)
        return AgentDecision(actions=actions, log_prob=log_prob, attention=v, prob=p)


@dataclass
class GateRecord:
    """The decisions of all agents of a network for one forward pass, in layer order.

    :param decisions: one :class:`AgentDecision` per agent.
    """

    decisions: List[AgentDecision]

    @property
    def log_probs(self) -> torch.Tensor:
        """``log pi`` per sample and agent, ``(B, L)``."""
        return torch.stack([d.log_prob for d in self.decisions], dim=1)

    @property
    def keep_fractions(self) -> torch.Tensor:
        """Fraction of channels kept per sample and agent, ``(B, L)``."""
        return torch.stack([d.keep_fraction for d in self.decisions], dim=1)

    @property
    def attention(self) -> torch.Tensor:
        """The agents' attention vectors concatenated, ``(B, sum of C)`` (``V`` in the paper)."""
        return torch.cat([d.attention for d in self.decisions], dim=1)

    def split(self, n: int) -> "tuple[GateRecord, GateRecord]":
        """The record of the first ``n`` samples and of the rest.

        :param n: samples in the first part.
        """
        def cut(d: AgentDecision, part: slice) -> AgentDecision:
            return AgentDecision(d.actions[part], d.log_prob[part], d.attention[part], d.prob[part])

        head, tail = slice(None, n), slice(n, None)
        return (GateRecord([cut(d, head) for d in self.decisions]),
                GateRecord([cut(d, tail) for d in self.decisions]))


@contextlib.contextmanager
def agents_sampling(agents: List[ChannelAgent]) -> Iterator[None]:
    """Set ``sample_at_eval`` on every agent for the block, then give each its own setting back.

    :param agents: the agents, e.g. ``model.agents`` of any network that has them.
    """
    previous = [agent.sample_at_eval for agent in agents]
    try:
        for agent in agents:
            agent.sample_at_eval = True
        yield
    finally:
        for agent, flag in zip(agents, previous):
            agent.sample_at_eval = flag


def require_agents(model: nn.Module, owner: str, alternative: str = "") -> None:
    """Raise a ``TypeError`` naming the fix unless ``model`` has agents and reports their decisions.

    :param model: the network given to ``owner``.
    :param owner: what needs the agents, for the message.
    :param alternative: a further fix to suggest (e.g. a strategy for networks without agents).
    """
    if not list(getattr(model, "agents", ())) or not hasattr(model, "last_gates"):
        raise TypeError(
            f"{owner} needs a network with channel agents that reports their decisions "
            f"(model.agents, model.last_gates); got {type(model).__name__} without them. Use "
            f"avalanche_neuromod.models.DynamosResNet18(agents=True){alternative}."
        )


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class GatedBasicBlock(nn.Module):
    """A ResNet basic block whose two convolutions may each be gated by an agent.

    :param in_channels: input channels.
    :param channels: output channels.
    :param stride: stride of the first convolution (and of the shortcut).
    :param agents: gate the convolutions (False: a plain basic block).
    :param agent_kwargs: arguments of the two :class:`ChannelAgent`.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1, *, agents: bool = False,
                 **agent_kwargs):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.agent1 = ChannelAgent(in_channels, channels, **agent_kwargs) if agents else None
        self.agent2 = ChannelAgent(channels, channels, **agent_kwargs) if agents else None

    def forward(self, x: torch.Tensor, record: Optional[List[AgentDecision]] = None) -> torch.Tensor:
        """:param record: where the agents append their decisions; None runs the block ungated."""
        gated = record is not None and self.agent1 is not None
        out = self.bn1(self.conv1(x))
        if gated:
            d1 = self.agent1(x)
            record.append(d1)
            out = out * d1.actions[:, :, None, None].to(out.dtype)  # 0/1: exact in any dtype
        out = F.relu(out)
        main, skip = self.bn2(self.conv2(out)), self.shortcut(x)
        if gated:
            d2 = self.agent2(out)
            record.append(d2)
            mask = d2.actions[:, :, None, None].to(main.dtype)
            main, skip = main * mask, skip * mask
        return F.relu(main + skip)


class DynamosResNet18(nn.Module):
    """The reduced ResNet-18 of Dynamos, with channel agents on its second stage.

    ``model(x)`` returns logits; with agents, the pass also sets
    :attr:`last_gates` (a :class:`GateRecord`: actions, log-probabilities and
    attention vectors of the 4 agents, 256 attention values per sample), so
    the training code needs no second pass.

    :param n_classes: outputs of the classifier.
    :param in_channels: channels of the input images (1 for MNIST, 3 for SVHN
        or ``SplitMNIST(channels=3)``); any image size works.
    :param agents: build the agents (False: the agent-free baseline network).
    :param width: channels of the first stage (the paper: 32; the second stage has twice as many).
    :param temperature: the agents' temperature ``tau``.
    :param reduction: the agents' squeeze-excitation reduction.
    :param sample_at_eval: agents keep sampling in eval mode.
    :param detach_agent_inputs: the agents' ``detach_input`` (False: as the paper's method is specified).
    :param channels_last: keep weights and activations in the channels-last
        memory layout (the same numbers; about 20% faster training steps on
        CPU, where oneDNN's convolutions prefer it).
    :param mixed_precision: run the convolutions and the classifier in
        bfloat16 under autocast (weights, gradients, batch-norm statistics,
        the agents and every loss stay in float32; the logits come back in
        float32). On a 2-core AMD Zen 4 (AVX-512 BF16) a training step is
        about 1.5x faster and a full MNIST-360 run 1.2-1.3x (other CPUs:
        not measured). It costs accuracy: Dynamos at buffer 500 lost 4.7
        points over three seeds (docs/dynamos.rst), so keep the default to
        reproduce the paper.
    """

    def __init__(self, n_classes: int = 10, *, in_channels: int = 1, agents: bool = True, width: int = 32,
                 temperature: float = 0.15, reduction: int = 16, sample_at_eval: bool = False,
                 detach_agent_inputs: bool = False, channels_last: bool = True, mixed_precision: bool = False):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be positive, got {n_classes}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        self.n_classes = n_classes
        self.in_channels = in_channels
        self.has_agents = agents
        self.gating = agents
        agent_kwargs = dict(temperature=temperature, reduction=reduction, sample_at_eval=sample_at_eval,
                            detach_input=detach_agent_inputs)
        self.stem = nn.Sequential(_conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.ModuleList([GatedBasicBlock(width, width), GatedBasicBlock(width, width)])
        self.stage2 = nn.ModuleList([
            GatedBasicBlock(width, 2 * width, stride=2, agents=agents, **agent_kwargs),
            GatedBasicBlock(2 * width, 2 * width, agents=agents, **agent_kwargs),
        ])
        self.classifier = nn.Linear(2 * width, n_classes)
        self.last_gates: Optional[GateRecord] = None
        self.channels_last = channels_last
        self.mixed_precision = mixed_precision
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def __getstate__(self):
        # The last decisions belong to one forward pass and hold its autograd
        # graph: copies (LwF's deepcopy of the model) and pickles leave them out.
        state = dict(self.__dict__)
        state["last_gates"] = None
        return state

    @property
    def agents(self) -> List[ChannelAgent]:
        """The agents, in layer order (empty without agents)."""
        return [a for block in self.stage2 for a in (block.agent1, block.agent2) if a is not None]

    def agent_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the agents only."""
        for agent in self.agents:
            yield from agent.parameters()

    @property
    def attention_size(self) -> int:
        """Attention values per sample (``V``): the sum of the gated channels."""
        return sum(a.channels for a in self.agents)

    @contextlib.contextmanager
    def ungated(self) -> Iterator[None]:
        """Run the network without its agents (every channel kept), e.g. for Dynamos' warm-up."""
        previous, self.gating = self.gating, False
        try:
            yield
        finally:
            self.gating = previous

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        """Let the agents sample their actions in eval mode too, as in training.

        Inside the block each agent draws ``a ~ Bernoulli(p)`` instead of
        keeping the channels with ``p >= 0.5``, so an evaluation there tests the
        network under the gating it was trained with (draws follow torch's
        global generator: seed it for repeatable numbers). Each agent's own
        ``sample_at_eval`` is restored afterwards.
        """
        with agents_sampling(self.agents):
            yield

    def check_input(self, x: torch.Tensor) -> None:
        """``(B, in_channels, H, W)`` images in the weights' dtype."""
        owner = f"DynamosResNet18(in_channels={self.in_channels})"
        check_images(x, self.in_channels, owner=owner)
        check_dtype(x, self.classifier.weight.dtype, owner=owner)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier, ``(B, 2 * width)``; sets :attr:`last_gates`."""
        self.check_input(x)
        with self._autocast(x):
            return self._features(x).to(x.dtype)  # back from bfloat16 under mixed precision; else no copy

    def _autocast(self, x: torch.Tensor) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on ``x``'s device under mixed precision, else nothing."""
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=torch.bfloat16)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        record: Optional[List[AgentDecision]] = [] if self.gating and self.has_agents else None
        h = self.stem(x)
        for block in self.stage1:
            h = block(h)
        for block in self.stage2:
            h = block(h, record)
        self.last_gates = GateRecord(record) if record is not None else None
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        with self._autocast(x):  # one autocast region: the features reach the classifier still in bfloat16
            return self.classifier(self._features(x)).to(x.dtype)
