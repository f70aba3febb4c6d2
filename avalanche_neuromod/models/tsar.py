"""TSAR's two networks: a regulator that masks every weight of a classifier.

For an image ``x`` the regulator computes features ``f = trunk(x)`` and, for
every weight tensor ``W_l`` of the classifier, a mask of the same shape::

    m_l(x) = sigmoid(H_l f + b_l)          (the regulation of layer l)
    W_l_eff = m_l(x) * W_l                 (biases are not masked)

The classifier runs with the effective weights, so the mask shapes both the
forward pass and the gradient: ``dL/dW_l = m_l(x) * dL/dW_l_eff``, a weight
whose mask is near 0 neither acts nor learns on that image. The regulation
bias ``b_l`` sets where regulation starts: ``-8`` (Grow: every synapse
suppressed, sigmoid(-8) = 0.0003) or ``0`` (Sculpt: every synapse half open).

Sizes follow the paper (classifier: three 112-channel 3x3 convolutions and a
class prediction layer; regulator: three 192-channel convolutions and one
head per classifier weight) and every one is a parameter. A full head is a
linear map from the features to every mask entry: with 1,000 classes the
four heads hold ~589M parameters. The low-memory options:
:class:`FactoredHead` factors the head's map through a small code,
``sigmoid(A (P f) + b)`` (every mask entry keeps its own read-out and bias);
:class:`LowRankHead` makes each mask matrix rank ``r`` around a static bias,
``b_l + (U(f) V(f)^T) / sqrt(r)`` with ``U(f)`` and ``V(f)`` computed by two
small linear maps; :class:`HashedHead` shares ``pool`` full-size read-outs
among the entries, each entry keeping its own scale and bias;
:class:`SparseHead` shares nothing: every entry reads its own few fixed
random features through its own weights and bias; :class:`QuantizedHead`
keeps a full head's rows in a few bits per weight (fixed codes, one float
step and bias per entry); :class:`ProjectedHead` keeps each row's
coefficients on a few fixed directions of the features (the top singular
vectors of the features of calibration images).

Normalisation is the original's "instance norm" (batch norm in training mode
applied to one image): :class:`SingleImageNorm`.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_dtype, check_images

__all__ = [
    "REGULATION_BIAS",
    "FactoredHead",
    "FullHead",
    "HashedHead",
    "LowRankHead",
    "OMLClassifier",
    "ProjectedHead",
    "QuantizedHead",
    "RegulatedClassifier",
    "Regulator",
    "SingleImageNorm",
    "SparseHead",
    "TSARNet",
    "feature_directions",
    "quantize_rows",
    "regulated_conv2d",
    "regulated_linear",
    "regulation_bias",
]

HEADS = ("full", "factored", "low_rank", "hashed", "sparse", "quantized", "projected")
"""The regulation head kinds: the original, and the low-memory ones."""

REGULATION_BIAS: Dict[str, float] = {"grow": -8.0, "sculpt": 0.0}
"""The paper's regulation-bias presets: Grow starts fully suppressed, Sculpt half open."""


def regulation_bias(value: Union[str, float]) -> float:
    """A regulation bias from a preset name (``"grow"``, ``"sculpt"``) or a number.

    :param value: a key of :data:`REGULATION_BIAS` or any float.
    """
    if isinstance(value, str):
        if value.lower() not in REGULATION_BIAS:
            raise ValueError(f"unknown regulation bias preset {value!r}; use 'grow' (-8), 'sculpt' (0) or a float.")
        return REGULATION_BIAS[value.lower()]
    return float(value)


class SingleImageNorm(nn.Module):
    """Normalise every channel of every image over its own positions, then scale and shift.

    This is what the original code computes with batch norm in training mode
    on a batch of one image: per channel, ``(x - mean) / sqrt(var + eps)``
    over the image's ``H x W`` values (biased variance), then ``gamma * . +
    beta`` (initialised to 1 and 0). It is the same in training and
    evaluation and for any batch size (each image is normalised alone), so a
    batch of images gives what the original gives image by image. It keeps
    no running statistics (the original never used them).

    :param channels: number of channels.
    :param eps: added to the variance.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


def regulated_conv2d(x: torch.Tensor, weight: torch.Tensor, mask: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Convolution with ``mask * weight`` (no padding, stride 1); the bias is not masked.

    :param x: ``(B, C_in, H, W)``.
    :param weight: ``(C_out, C_in, k, k)``.
    :param mask: None (no regulation), one mask shaped like ``weight``, or
        one per image ``(B, C_out, C_in, k, k)`` (a grouped convolution).
    :param bias: ``(C_out,)`` or None.
    """
    if mask is None:
        return F.conv2d(x, weight, bias)
    if mask.dim() == weight.dim():
        return F.conv2d(x, mask * weight, bias)
    b, c_in, h, w = x.shape
    c_out = weight.shape[0]
    per_image = (mask * weight).reshape(b * c_out, *weight.shape[1:])
    y = F.conv2d(x.reshape(1, b * c_in, h, w), per_image, groups=b)
    y = y.reshape(b, c_out, *y.shape[-2:])
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def regulated_linear(x: torch.Tensor, weight: torch.Tensor, mask: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Linear map with ``mask * weight``; the bias is not masked.

    :param x: ``(B, in)``.
    :param weight: ``(out, in)``.
    :param mask: None, one mask shaped like ``weight``, or one per image ``(B, out, in)``.
    :param bias: ``(out,)`` or None.
    """
    if mask is None or mask.dim() == weight.dim():
        return F.linear(x, weight if mask is None else mask * weight, bias)
    y = torch.bmm((mask * weight), x.unsqueeze(2)).squeeze(2)
    return y if bias is None else y + bias


def _conv_out(size: int, layers: int, pools: int) -> int:
    for i in range(layers):
        size -= 2
        if i < pools:
            size //= 2
    return size


def _check_square_images(x: torch.Tensor, channels: int, size: int, owner: str) -> None:
    """A batch ``(B, channels, size, size)``, or a clear ``ValueError`` naming the fix."""
    check_images(x, channels, owner=f"{owner}(in_channels={channels})")
    if tuple(x.shape[-2:]) != (size, size):
        raise ValueError(
            f"{owner} was built for {size}x{size} images (input_size={size}); got shape {tuple(x.shape)}. Fix: "
            f"build it with input_size={x.shape[-1]} (square images), or resize the images, e.g. "
            f"DomainTransfer(size={size}).")


class _ClassPredictionNet(nn.Module):
    """What TSAR's classifiers share: square images in, a class prediction layer ``cp_weight`` / ``cp_bias`` out."""

    in_channels: int
    input_size: int
    cp_weight: nn.Parameter
    cp_bias: nn.Parameter

    @property
    def n_classes(self) -> int:
        """Outputs of the class prediction layer."""
        return self.cp_weight.shape[0]

    def reset_class_prediction(self, rows: Optional[Sequence[int]] = None,
                               generator: Optional[torch.Generator] = None) -> None:
        """Re-initialise class prediction weights (kaiming-normal) and biases (0).

        :param rows: the classes to reset (None: all).
        :param generator: random source of the new weights.
        """
        with torch.no_grad():
            fresh = torch.empty_like(self.cp_weight)
            nn.init.kaiming_normal_(fresh, generator=generator)
            index = slice(None) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
            self.cp_weight[index] = fresh[index]
            self.cp_bias[index] = 0.0

    def check_input(self, x: torch.Tensor, owner: Optional[str] = None) -> None:
        """Raise a clear ``ValueError`` for a batch this network cannot take.

        :param x: the batch.
        :param owner: the name used in the message (default: the class's).
        """
        owner = owner or type(self).__name__
        _check_square_images(x, self.in_channels, self.input_size, owner)
        check_dtype(x, self.cp_weight.dtype, owner=owner)


class RegulatedClassifier(_ClassPredictionNet):
    """TSAR's classifier: three regulated 3x3 convolutions and a class prediction layer.

    Each block is ``conv(W * mask) -> norm -> ReLU -> maxpool2`` (the code's
    order; ``pool_before_norm=True`` gives the paper's ``conv -> pool ->
    norm -> ReLU``), then the flattened features go through the class
    prediction layer ``Linear(W_cp * mask_cp, b)``. Without masks it is a
    plain network (the Scratch and No Regulation baselines). Weights are
    kaiming-normal, biases zero.

    :param n_classes: outputs of the class prediction layer (paper: 1000).
    :param in_channels: image channels (TSAR: 3).
    :param channels: channels of every convolution (paper: 112).
    :param input_size: image side length (28).
    :param pool_before_norm: the paper's block order instead of the code's.
    """

    def __init__(self, n_classes: int = 1000, *, in_channels: int = 3, channels: int = 112,
                 input_size: int = 28, pool_before_norm: bool = False):
        super().__init__()
        if _conv_out(input_size, 3, 3) < 1:
            raise ValueError(f"input_size={input_size} is too small for three 3x3 convolutions with 2x2 pooling; "
                             f"use at least 22.")
        self.config = {"n_classes": n_classes, "in_channels": in_channels, "channels": channels,
                       "input_size": input_size, "pool_before_norm": pool_before_norm}
        self.in_channels = in_channels
        self.input_size = input_size
        self.pool_before_norm = pool_before_norm
        shapes = [(channels, in_channels, 3, 3), (channels, channels, 3, 3), (channels, channels, 3, 3)]
        self.conv_weights = nn.ParameterList([nn.Parameter(torch.empty(s)) for s in shapes])
        self.conv_biases = nn.ParameterList([nn.Parameter(torch.zeros(channels)) for _ in shapes])
        self.norms = nn.ModuleList([SingleImageNorm(channels) for _ in shapes])
        self.features = channels * _conv_out(input_size, 3, 3) ** 2
        self.cp_weight = nn.Parameter(torch.empty(n_classes, self.features))
        self.cp_bias = nn.Parameter(torch.zeros(n_classes))
        for w in self.conv_weights:
            nn.init.kaiming_normal_(w)
        nn.init.kaiming_normal_(self.cp_weight)

    @property
    def regulated_shapes(self) -> List[Tuple[int, ...]]:
        """Shapes of the regulated weights, in order (three convolutions, then the class prediction layer)."""
        return [tuple(w.shape) for w in self.conv_weights] + [tuple(self.cp_weight.shape)]

    def head_parameter_names(self) -> List[str]:
        """OML's fast part (``inner_params="head"``, No Regulation's transfer): the class prediction layer."""
        return ["cp_weight", "cp_bias"]

    def forward(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Class scores of a batch.

        :param x: images ``(B, in_channels, input_size, input_size)``.
        :param masks: None, or four masks (three convolutions, class
            prediction), each shaped like its weight or with a leading batch
            dimension (one mask per image).
        """
        self.check_input(x)
        if masks is not None:
            self.check_masks(masks, x.shape[0])
        return self.run(x, masks)

    def check_masks(self, masks: Sequence[torch.Tensor], batch_size: int) -> None:
        """Raise a clear ``ValueError`` unless ``masks`` fit the regulated weights.

        :param masks: four masks, each shaped like its weight or ``(batch_size, *weight.shape)``.
        :param batch_size: images in the batch.
        """
        if len(masks) != 4:
            raise ValueError(f"RegulatedClassifier takes 4 masks (3 convolutions, class prediction), got "
                             f"{len(masks)}.")
        for i, (mask, shape) in enumerate(zip(masks, self.regulated_shapes)):
            if tuple(mask.shape) not in (tuple(shape), (batch_size, *shape)):
                raise ValueError(
                    f"mask {i} of RegulatedClassifier has shape {tuple(mask.shape)}; the weight it masks is "
                    f"{tuple(shape)}, so the mask must be {tuple(shape)} (one for the batch) or "
                    f"{(batch_size, *shape)} (one per image). Fix: masks from a Regulator built with "
                    f"Regulator(classifier.regulated_shapes, ...), in the classifier's layer order.")

    def run(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """:meth:`forward` without the input check (for a caller that has checked ``x``).

        :param x: images.
        :param masks: as in :meth:`forward`.
        """
        if masks is not None and len(masks) != 4:
            raise ValueError(f"RegulatedClassifier takes 4 masks (3 convolutions, class prediction), got "
                             f"{len(masks)}.")
        h = x
        for i in range(3):
            h = regulated_conv2d(h, self.conv_weights[i], None if masks is None else masks[i], self.conv_biases[i])
            if self.pool_before_norm:
                h = F.relu(self.norms[i](F.max_pool2d(h, 2)))
            else:
                h = F.max_pool2d(F.relu(self.norms[i](h)), 2)
        return regulated_linear(h.flatten(1), self.cp_weight, None if masks is None else masks[3], self.cp_bias)


class OMLClassifier(_ClassPredictionNet):
    """OML's network (Javed & White, 2019), the TSAR paper's OML baseline: a representation and a prediction part.

    The representation learning network (RLN) is five 3x3 convolutions with
    ReLU, strides 1, 2, 1, 2, 1, no padding and no normalisation (28x28
    images: 26, 12, 10, 4, 2 pixels a side); the prediction learning network
    (PLN) is two linear layers, ``Linear(features, hidden)`` with ReLU, then
    the class prediction layer ``Linear(hidden, n_classes)``. Meta-learning
    (:class:`~avalanche_neuromod.training.TSARMetaLearner` with
    ``inner_params="head"``) adapts the PLN in the inner loop and both parts
    in the outer step; domain transfer
    (:class:`~avalanche_neuromod.training.TSAROML`) keeps the RLN fixed,
    resets the class prediction layer and trains the PLN. It has no
    regulation. Weights kaiming-normal, biases zero.

    :param n_classes: outputs of the class prediction layer.
    :param in_channels: image channels.
    :param channels: channels of every convolution (OML: 256).
    :param hidden: outputs of the PLN's first layer (OML: 1024).
    :param input_size: image side length (at least 17).
    """

    STRIDES = (1, 2, 1, 2, 1)
    """Strides of the five convolutions."""

    def __init__(self, n_classes: int = 1000, *, in_channels: int = 3, channels: int = 256, hidden: int = 1024,
                 input_size: int = 28):
        super().__init__()
        side = input_size
        for stride in self.STRIDES:
            side = (side - 3) // stride + 1 if side >= 3 else 0
        if side < 1:
            raise ValueError(f"input_size={input_size} is too small for OML's five 3x3 convolutions (strides "
                             f"{self.STRIDES}); use at least 17.")
        self.config = {"kind": "oml", "n_classes": n_classes, "in_channels": in_channels, "channels": channels,
                       "hidden": hidden, "input_size": input_size}
        self.in_channels = in_channels
        self.input_size = input_size
        self.convs = nn.ModuleList(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride=stride)
                                   for i, stride in enumerate(self.STRIDES))
        self.features = channels * side * side
        self.pln_weight = nn.Parameter(torch.empty(hidden, self.features))
        self.pln_bias = nn.Parameter(torch.zeros(hidden))
        self.cp_weight = nn.Parameter(torch.empty(n_classes, hidden))
        self.cp_bias = nn.Parameter(torch.zeros(n_classes))
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.kaiming_normal_(self.pln_weight)
        nn.init.kaiming_normal_(self.cp_weight)

    def head_parameter_names(self) -> List[str]:
        """The PLN: what the inner loop adapts (``inner_params="head"``) and what domain transfer trains."""
        return ["pln_weight", "pln_bias", "cp_weight", "cp_bias"]

    def representation_parameters(self) -> List[nn.Parameter]:
        """The RLN's parameters (the convolutions): learned in the outer step only, fixed in domain transfer."""
        return list(self.convs.parameters())

    def forward(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Class scores of a batch.

        :param x: images ``(B, in_channels, input_size, input_size)``.
        :param masks: must be None: OML has no regulation.
        """
        self.check_input(x)
        return self.run(x, masks)

    def run(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """:meth:`forward` without the input check.

        :param x: images.
        :param masks: must be None.
        """
        if masks is not None:
            raise ValueError("OMLClassifier has no regulation and takes no masks. Fix: call it with the images "
                             "only, or use TSARNet.build(...) for a regulated classifier.")
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
        h = F.relu(F.linear(h.flatten(1), self.pln_weight, self.pln_bias))
        return F.linear(h, self.cp_weight, self.cp_bias)


class _RegulationHead(nn.Module):
    """What both head kinds share: the reset rule and ``sigmoid(logits)``."""

    def _maps(self) -> List[torch.Tensor]:
        raise NotImplementedError

    def _bias(self) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def map_parameters(self) -> List[torch.Tensor]:
        """The head's weights: every parameter but the per-entry biases (and a quantized head's per-entry steps).

        ``TSAR(freeze_head_weights=True)`` keeps them fixed during domain transfer.
        """
        return self._maps()

    def shared_parameters(self) -> List[nn.Parameter]:
        """The parameters that act on more than one mask entry (none in a full head: each row is one entry's).

        Low-memory heads share maps among entries: the hashed head's read-outs,
        the factored head's code, the low-rank head's factor maps. A step on one
        of them moves the masks of many synapses at once; ``TSAR(freeze_shared=True)``
        keeps them fixed during domain transfer.
        """
        return []

    def reset(self, bias: float, generator: Optional[torch.Generator] = None) -> None:
        """Kaiming-normal linear maps, every bias entry set to ``bias``.

        :param bias: the regulation bias.
        :param generator: random source of the maps.
        """
        with torch.no_grad():
            for weight in self._maps():
                nn.init.kaiming_normal_(weight, generator=generator)
            self._bias().fill_(bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(f))


class FullHead(_RegulationHead):
    """A regulation head with one linear output per mask entry: ``sigmoid(H f + b)``.

    :param features: regulator features.
    :param shape: shape of the regulated weight.
    :param bias: the regulation bias every entry starts at.
    """

    def __init__(self, features: int, shape: Sequence[int], bias: float):
        super().__init__()
        self.shape = tuple(shape)
        self.linear = nn.Linear(features, math.prod(self.shape))
        self.reset(bias)

    def _maps(self) -> List[torch.Tensor]:
        return [self.linear.weight]

    def _bias(self) -> torch.Tensor:
        return self.linear.bias

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid regulation ``(B, *shape)``.

        :param f: features ``(B, features)``.
        """
        return self.linear(f).view(f.shape[0], *self.shape)


class FactoredHead(_RegulationHead):
    """A low-memory regulation head: the full head's map factored through a code, ``sigmoid(A (P f) + b)``.

    ``P`` (``code x features``) reads a code of ``code`` numbers from the
    features, shared by all entries of the mask; ``A`` (``entries x code``)
    and ``b`` give every mask entry its own linear read-out of it and its
    own bias, as a full head does, but from ``code`` numbers instead of
    ``features``. Parameters: ``code * (features + entries) + entries``
    instead of ``(features + 1) * entries``. ``P`` starts kaiming-normal and
    ``A`` normal with variance ``1 / code`` (the code is not rectified), so
    the logits have a full head's variance at initialisation.

    ``gain`` (``g``) computes ``sigmoid(g A (P f) + b)`` with ``A`` started
    ``g`` times smaller: the same function at initialisation, but under Adam,
    which moves every parameter by about the learning rate per step, each
    entry's input-dependent logit moves ``g`` times faster. A full head moves
    an entry's logit through ``features`` weights per step, a factored one
    through ``code``; a gain near ``features / code`` gives both about the
    same pace, while with ``g = 1`` the per-entry biases (which move as fast
    as a full head's) can do most of the learning.

    :param features: regulator features.
    :param shape: shape of the regulated weight.
    :param bias: the regulation bias every entry starts at.
    :param code: size of the code.
    :param gain: ``g`` above (positive).
    """

    def __init__(self, features: int, shape: Sequence[int], bias: float, code: int = 32, gain: float = 1.0):
        super().__init__()
        if code < 1:
            raise ValueError(f"code (the factored head's code size) must be at least 1, got {code}.")
        if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
            raise ValueError(f"gain (the factored head's read-out gain) must be a positive number, got {gain!r}.")
        self.shape = tuple(shape)
        self.code = code
        self.gain = float(gain)
        self.encode = nn.Linear(features, code, bias=False)
        self.decode = nn.Linear(code, math.prod(self.shape))
        self.reset(bias)

    def _maps(self) -> List[torch.Tensor]:
        return [self.encode.weight, self.decode.weight]

    def shared_parameters(self) -> List[nn.Parameter]:
        """The code map ``P`` (every entry reads the same code)."""
        return [self.encode.weight]

    def _bias(self) -> torch.Tensor:
        return self.decode.bias

    def reset(self, bias: float, generator: Optional[torch.Generator] = None) -> None:
        super().reset(bias, generator)
        with torch.no_grad():
            # kaiming's gain 2 is for a rectified input (the code is linear); the read-out gain is undone at first
            self.decode.weight.mul_(math.sqrt(0.5) / self.gain)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid regulation ``(B, *shape)``.

        :param f: features ``(B, features)``.
        """
        logits = torch.addmm(self.decode.bias, self.encode(f), self.decode.weight.t(), alpha=self.gain)
        return logits.view(f.shape[0], *self.shape)


class LowRankHead(_RegulationHead):
    """A low-memory regulation head: ``sigmoid(B + U(f) V(f)^T / sqrt(r))``.

    The weight is seen as a matrix ``rows x cols`` (``rows = shape[0]``,
    ``cols`` the rest). ``U(f)`` (``rows x r``) and ``V(f)`` (``cols x r``)
    are linear in the features, ``B`` is a static per-entry bias starting at
    the regulation bias. With kaiming-normal maps the input-dependent part
    has unit variance at initialisation, like a full head's. Parameters:
    ``features * r * (rows + cols) + rows * cols`` instead of
    ``(features + 1) * rows * cols``.

    :param features: regulator features.
    :param shape: shape of the regulated weight.
    :param bias: the regulation bias every entry starts at.
    :param rank: ``r``.
    """

    def __init__(self, features: int, shape: Sequence[int], bias: float, rank: int = 4):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}.")
        self.shape = tuple(shape)
        self.rows = self.shape[0]
        self.cols = math.prod(self.shape[1:])
        self.rank = rank
        self.left = nn.Linear(features, self.rows * rank, bias=False)
        self.right = nn.Linear(features, self.cols * rank, bias=False)
        self.bias = nn.Parameter(torch.empty(self.shape))
        self.reset(bias)

    def _maps(self) -> List[torch.Tensor]:
        return [self.left.weight, self.right.weight]

    def shared_parameters(self) -> List[nn.Parameter]:
        """The factor maps (each factor entry serves a whole row or column of the mask)."""
        return [self.left.weight, self.right.weight]

    def _bias(self) -> torch.Tensor:
        return self.bias

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid regulation ``(B, *shape)``.

        :param f: features ``(B, features)``.
        """
        u = self.left(f).view(-1, self.rows, self.rank)
        v = self.right(f).view(-1, self.cols, self.rank)
        product = torch.bmm(u, v.transpose(1, 2)) / math.sqrt(self.rank)
        return self.bias + product.view(f.shape[0], *self.shape)


class HashedHead(_RegulationHead):
    """A low-memory regulation head that shares full read-outs: ``sigmoid(b + a * (R f)[h])``.

    ``R`` (``pool x features``) holds ``pool`` read-outs of the features, each
    as long as a full head's; every mask entry ``e`` reads one of them,
    ``h(e)``, fixed at construction (a seeded random balanced assignment:
    each read-out serves ``entries / pool`` entries, rounded), through its
    own scale ``a_e`` and bias ``b_e``. Entries that share a read-out open
    for the same images, but each at its own threshold; an image that
    drives few read-outs up opens few synapses, as a full head's sparse
    masks do. ``R`` starts kaiming-normal and every ``a_e`` at +-1 (random
    signs), so the logits spread as a full head's; under Adam each read-out
    moves as fast as one full-head row. Parameters:
    ``pool * features + 2 * entries`` instead of ``(features + 1) * entries``,
    plus the assignment (one index per entry, a buffer).

    With ``hashes = k`` above 1 every entry reads ``k`` read-outs, each
    through its own scale: ``sigmoid(b + sum_j a_je * (R f)[h_j(e)])``. The
    ``k`` assignments are drawn independently (each balanced; an entry may
    draw the same read-out twice, with probability about ``1 / pool`` per
    pair), so entries that share one read-out almost never share the others
    and each entry gets its own mix. Scales start at ``+-1 / sqrt(k)`` (the
    same spread). It costs ``k - 1`` more scales and indices per entry:
    ``pool * features + (k + 1) * entries`` parameters and ``k`` indices per
    entry.

    :param features: regulator features.
    :param shape: shape of the regulated weight.
    :param bias: the regulation bias every entry starts at.
    :param pool: shared read-outs (at most the number of entries; fewer are used when the weight is smaller).
    :param generator: random source of the assignment (default: torch's global one).
    :param hashes: read-outs per entry (``k`` above; 1, the default, is the head as first built).
    """

    def __init__(self, features: int, shape: Sequence[int], bias: float, pool: int = 512,
                 generator: Optional[torch.Generator] = None, hashes: int = 1):
        super().__init__()
        if pool < 1:
            raise ValueError(f"pool (the hashed head's shared read-outs) must be at least 1, got {pool}.")
        if hashes < 1:
            raise ValueError(f"hashes (read-outs per mask entry) must be at least 1, got {hashes}.")
        self.shape = tuple(shape)
        self.hashes = hashes
        entries = math.prod(self.shape)
        self.pool = min(pool, entries)
        self.readouts = nn.Linear(features, self.pool, bias=False)
        # one hash: 1-D scale and assignment, as the head was first built (its checkpoints load unchanged)
        per_entry = (entries,) if hashes == 1 else (hashes, entries)
        self.scale = nn.Parameter(torch.empty(per_entry))
        self.bias = nn.Parameter(torch.empty(entries))
        assignment = torch.empty(hashes, entries, dtype=torch.long)
        for row in assignment:
            row[torch.randperm(entries, generator=generator)] = torch.arange(entries) % self.pool
        self.register_buffer("assignment", assignment.view(per_entry))
        self.reset(bias, generator)

    def _maps(self) -> List[torch.Tensor]:
        return [self.readouts.weight]

    def shared_parameters(self) -> List[nn.Parameter]:
        """The shared read-outs ``R`` (each serves ``entries / pool`` entries)."""
        return [self.readouts.weight]

    def _bias(self) -> torch.Tensor:
        return self.bias

    def reset(self, bias: float, generator: Optional[torch.Generator] = None) -> None:
        """Kaiming-normal read-outs, scales at random signs, every bias at ``bias`` (the assignment stays).

        :param bias: the regulation bias.
        :param generator: random source of the read-outs and signs.
        """
        super().reset(bias, generator)
        with torch.no_grad():
            signs = torch.randint(0, 2, self.scale.shape, generator=generator, dtype=self.scale.dtype)
            self.scale.copy_((2 * signs - 1) / math.sqrt(self.hashes))

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid regulation ``(B, *shape)``.

        :param f: features ``(B, features)``.
        """
        if self.hashes == 1:  # the fused update of the head as first built: its recorded results stay bit-exact
            shared = self.readouts(f).index_select(1, self.assignment)
            return torch.addcmul(self.bias, self.scale, shared).view(f.shape[0], *self.shape)
        shared = self.readouts(f).index_select(1, self.assignment.flatten()).view(f.shape[0], *self.scale.shape)
        return (self.bias + (self.scale * shared).sum(1)).view(f.shape[0], *self.shape)


_SPARSE_GATHER_BATCH = 8
"""Up to this many images :class:`SparseHead` gathers its inputs; above, one ``embedding_bag`` (measured on 2 cores:
0.9 against 11 ms for one image, 89 against 30 ms for 64, a 9,216-entry head with 16 inputs, forward and backward)."""


class SparseHead(_RegulationHead):
    """A low-memory regulation head that shares nothing: ``sigmoid(b_e + g * sum_j w_ej f[i_ej])``.

    Every mask entry ``e`` reads ``inputs`` (``s``) of the features, its own
    distinct indices ``i_e1 .. i_es`` drawn at random at construction (fixed,
    as the projections of FlyNet), through its own weights ``w_e`` and its
    own bias ``b_e``. It is a full head with all but ``s`` of each row's
    weights held at zero: no parameter serves two entries, so a step that
    opens one synapse moves no other synapse's mask (the heads that share
    read-outs, :class:`HashedHead`, :class:`FactoredHead`,
    :class:`LowRankHead`, cannot promise that). Parameters:
    ``(s + 1) * entries`` instead of ``(features + 1) * entries``, plus the
    indices, stored in 16 bits (32 beyond 32,767 features).

    ``w`` starts kaiming-normal over its ``s`` inputs, so the logits spread
    as a full head's. ``gain`` (``g``) multiplies the sum with ``w`` started
    ``g`` times smaller: the same function at initialisation, but under
    Adam, which moves every parameter by about the learning rate per step,
    an entry's input-dependent logit moves ``g`` times faster. A full head
    moves it through ``features`` weights per step, a sparse one through
    ``s``: ``g = features / s`` gives both the same pace.

    :param features: regulator features.
    :param shape: shape of the regulated weight.
    :param bias: the regulation bias every entry starts at.
    :param inputs: features each entry reads (``s``, 1 to ``features``).
    :param gain: ``g`` above (positive).
    :param generator: random source of the indices (default: torch's global one).
    """

    def __init__(self, features: int, shape: Sequence[int], bias: float, inputs: int = 16, gain: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if not 1 <= inputs <= features:
            raise ValueError(f"inputs (features each sparse-head entry reads) must be between 1 and the "
                             f"{features} regulator features, got {inputs}.")
        if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
            raise ValueError(f"gain (the sparse head's read-out gain) must be a positive number, got {gain!r}.")
        self.shape = tuple(shape)
        self.inputs = inputs
        self.gain = float(gain)
        entries = math.prod(self.shape)
        self.weight = nn.Parameter(torch.empty(entries, inputs))
        self.bias = nn.Parameter(torch.empty(entries))
        dtype = torch.int16 if features <= torch.iinfo(torch.int16).max else torch.int32
        index = torch.empty(entries, inputs, dtype=dtype)
        for start in range(0, entries, 4096):  # s distinct of the features per entry, a block of rows at a time
            rows = index[start:start + 4096]
            draw = torch.rand(rows.shape[0], features, generator=generator).argsort(1)[:, :inputs]
            rows.copy_(draw.sort(1).values)
        self.register_buffer("index", index)
        self.reset(bias, generator)

    def _maps(self) -> List[torch.Tensor]:
        return [self.weight]

    def _bias(self) -> torch.Tensor:
        return self.bias

    @classmethod
    def from_full(cls, full: FullHead, inputs: int = 16, gain: float = 1.0,
                  mean_features: Optional[torch.Tensor] = None) -> "SparseHead":
        """A sparse head that keeps each row's ``inputs`` largest weights of a full head (magnitude pruning).

        The bias and the kept weights are the full head's (the weights stored
        divided by ``gain``, so the logits are the same for any gain); a row
        with at most ``inputs`` nonzero weights gives exactly the full head's
        logits. For a meta-learned full head this is a small head for domain
        transfer; meta-learning itself still held the full head.

        :param full: the full head.
        :param inputs: weights kept per mask entry.
        :param gain: the new head's gain.
        :param mean_features: the regulator's mean features over some images
            (e.g. the meta-training set); when given, each bias also takes
            the pruned weights' mean contribution, ``w_pruned . mean_features``,
            so the logits keep their mean over those images.
        """
        weight = full.linear.weight.detach()
        head = cls(weight.shape[1], full.shape, 0.0, inputs, gain)
        kept = weight.abs().topk(inputs, dim=1).indices.sort(1).values
        with torch.no_grad():
            head.index.copy_(kept)
            head.weight.copy_(weight.gather(1, kept) / head.gain)
            head.bias.copy_(full.linear.bias)
            if mean_features is not None:
                head.bias.add_(weight.scatter(1, kept, 0.0) @ mean_features)
        return head

    def reset(self, bias: float, generator: Optional[torch.Generator] = None) -> None:
        """Kaiming-normal weights over the ``inputs`` features, divided by the gain; every bias at ``bias``.

        :param bias: the regulation bias.
        :param generator: random source of the weights (the indices stay).
        """
        super().reset(bias, generator)
        with torch.no_grad():
            self.weight.div_(self.gain)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid regulation ``(B, *shape)``.

        :param f: features ``(B, features)``.
        """
        if f.shape[0] <= _SPARSE_GATHER_BATCH:  # a gather is fastest for few images, a weighted bag for many
            picked = f.index_select(1, self.index.flatten().long()).view(f.shape[0], *self.weight.shape)
            summed = (picked * self.weight).sum(-1)
        else:
            summed = F.embedding_bag(self.index.int(), f.t(), per_sample_weights=self.weight, mode="sum").t()
        return torch.add(self.bias, summed, alpha=self.gain).view(f.shape[0], *self.shape)


class ProjectedHead(_RegulationHead):
    """A low-memory regulation head whose entries read ``k`` fixed directions of the features: ``sigmoid(C (P f) + b)``.

    ``P`` (``k x features``, orthonormal rows, a buffer) holds ``k`` fixed
    directions of the regulator's feature space: for a meta-learned full head,
    :meth:`from_full` takes the top ``k`` right singular vectors of the
    features of calibration images (the meta-training images, say) and
    projects every row onto them, so ``C = W P^T``. Each entry keeps its own
    row of ``C`` and its own bias (nothing learnable is shared; ``P`` does not
    learn), and its bias also takes the mean over those images of what the
    projection leaves out, ``(W - C P) . mean(f)``, so the logits keep their
    mean. Parameters: ``(k + 1) * entries`` instead of
    ``(features + 1) * entries``, plus ``P`` and the mean features
    (``(k + 1) * features`` floats in buffers, one pair that every projected
    head of a :class:`Regulator` shares).

    A :class:`FactoredHead` has the same form but learns its ``P`` in
    meta-learning and transfer; here the meta-learning is a full head's, and
    only the entries' coefficients and biases learn in transfer. A fresh head
    (no full head to project) has a random orthonormal ``P``; :meth:`reset`
    projects kaiming-normal full rows, so the logits have a reset full head's
    mean.

    :param features: regulator features.
    :param shape: shape of the regulated weight.
    :param bias: the regulation bias every entry starts at.
    :param directions: ``k``, the directions every entry reads (1 to ``features``).
    :param generator: random source of ``P`` and of the rows (default: torch's global one).
    :param basis: a ``P`` to share with other heads (``(k, features)``; default: a random one of its own).
    :param mean_features: mean features to share with other heads (default: zeros of its own).
    """

    def __init__(self, features: int, shape: Sequence[int], bias: float, directions: int = 24,
                 generator: Optional[torch.Generator] = None, basis: Optional[torch.Tensor] = None,
                 mean_features: Optional[torch.Tensor] = None):
        super().__init__()
        if not (isinstance(directions, numbers.Integral) and 1 <= directions <= features):
            raise ValueError(f"directions (feature directions each projected-head entry reads) must be an integer "
                             f"between 1 and the {features} regulator features, got {directions!r}.")
        self.shape = tuple(shape)
        self.features = features
        self.directions = int(directions)
        if basis is None:
            basis = torch.linalg.qr(torch.randn(features, self.directions, generator=generator)).Q.t().contiguous()
        if mean_features is None:
            mean_features = torch.zeros(features)
        if basis.shape != (self.directions, features) or mean_features.shape != (features,):
            raise ValueError(f"basis must be ({self.directions}, {features}) and mean_features ({features},), got "
                             f"{tuple(basis.shape)} and {tuple(mean_features.shape)}.")
        self.register_buffer("basis", basis)
        self.register_buffer("mean_features", mean_features)
        self.coef = nn.Parameter(torch.empty(math.prod(self.shape), self.directions))
        self.bias = nn.Parameter(torch.empty(math.prod(self.shape)))
        self.reset(bias, generator)

    def _maps(self) -> List[torch.Tensor]:
        return [self.coef]

    def _bias(self) -> torch.Tensor:
        return self.bias

    def _project(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Coefficients ``W P^T``, biases ``bias + (W - C P) . mean_features``."""
        with torch.no_grad():
            self.coef.copy_(weight @ self.basis.t())
            self.bias.copy_(bias + (weight - self.coef @ self.basis) @ self.mean_features)

    @classmethod
    def from_full(cls, full: FullHead, basis: torch.Tensor, mean_features: torch.Tensor) -> "ProjectedHead":
        """A full head's rows projected onto ``basis``, its biases corrected for the mean of what is left out.

        :param full: the full head.
        :param basis: ``(k, features)`` with orthonormal rows (e.g. :func:`feature_directions`); the head
            keeps this tensor (no copy), so heads given the same one share it.
        :param mean_features: the regulator's mean features over the images ``basis`` came from (kept, as ``basis``).
        """
        weight = full.linear.weight.detach()
        if basis.dim() != 2 or basis.shape[1] != weight.shape[1] or mean_features.shape != (weight.shape[1],):
            raise ValueError(f"basis must be (k, {weight.shape[1]}) and mean_features ({weight.shape[1]},) for this "
                             f"head's {weight.shape[1]} features, got {tuple(basis.shape)} and "
                             f"{tuple(mean_features.shape)}.")
        with torch.device("meta"):  # no random basis or rows to draw: both are replaced
            head = cls(weight.shape[1], full.shape, 0.0, basis.shape[0])
        head.to_empty(device=weight.device)
        head.basis, head.mean_features = basis, mean_features  # the caller's tensors, shared with its other heads
        head._project(weight, full.linear.bias.detach())
        return head

    def reset(self, bias: float, generator: Optional[torch.Generator] = None) -> None:
        """Kaiming-normal full rows projected onto ``P``, every bias at ``bias`` plus the left-out mean.

        :param bias: the regulation bias.
        :param generator: random source of the rows (``P`` stays).
        """
        if self.coef.is_meta:
            return
        rows = torch.empty(self.coef.shape[0], self.features, device=self.coef.device)
        nn.init.kaiming_normal_(rows, generator=generator)
        self._project(rows, torch.full_like(self.bias, bias))

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid regulation ``(B, *shape)``.

        :param f: features ``(B, features)``.
        """
        return torch.addmm(self.bias, f @ self.basis.t(), self.coef.t()).view(f.shape[0], *self.shape)


def feature_directions(features: torch.Tensor, k: int) -> torch.Tensor:
    """The top ``k`` right singular vectors of ``features`` (``(N, F)``, not centred), as ``(k, F)`` orthonormal rows.

    The directions along which the features vary most around 0, which is how
    a head's logits ``W f`` see them (for :class:`ProjectedHead`).

    :param features: the regulator's features of some images.
    :param k: directions to keep (at most ``F``).
    """
    if not 1 <= k <= features.shape[1]:
        raise ValueError(f"k must be between 1 and the {features.shape[1]} features, got {k}.")
    return torch.linalg.svd(features.double(), full_matrices=False).Vh[:k].to(features.dtype).contiguous()


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in ``[0, 2**bits)`` as ``bits`` bit planes of 8 codes per byte, ``(bits, ceil(n / 8))`` uint8."""
    flat = codes.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).view(-1, 8)
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
    return torch.stack([(((flat >> k) & 1) * weights).sum(1, dtype=torch.uint8) for k in range(bits)])


def _unpack_codes(planes: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` codes of :func:`_pack_codes`' bit planes, as uint8."""
    shifts = torch.arange(8, dtype=torch.uint8)
    codes = torch.zeros(planes.shape[1], 8, dtype=torch.uint8)
    for k, plane in enumerate(planes):
        codes |= ((plane.unsqueeze(1) >> shifts) & 1) << k
    return codes.flatten()[:n]


_QUANTIZE_STEPS = tuple(0.3 + 0.05 * i for i in range(19))
"""Quantisation steps tried per row, in units of the row's root mean square (the one of least error is kept)."""


def quantize_rows(weight: torch.Tensor, bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Uniform ``bits``-bit quantisation of each row: ``weight[e] ~ step[e] * (codes[e] - (2**bits - 1) / 2)``.

    Every row gets the step (of :data:`_QUANTIZE_STEPS` times its root mean
    square) with the least squared error, codes rounded to the nearest level
    and clamped to ``[0, 2**bits)``; the levels are symmetric around 0.

    :param weight: ``(entries, features)``.
    :param bits: bits per weight (1 to 8).
    :returns: ``codes`` (uint8, the shape of ``weight``) and ``step`` (one per row).
    """
    top, offset = 2 ** bits - 1, (2 ** bits - 1) / 2
    codes = torch.empty(weight.shape, dtype=torch.uint8)
    steps = torch.empty(weight.shape[0])
    for start in range(0, weight.shape[0], 1024):  # rows x candidate steps x features, a block of rows at a time
        w = weight[start:start + 1024].float()
        rms = w.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        step = (rms * torch.tensor(_QUANTIZE_STEPS, device=w.device)).unsqueeze(-1)  # (rows, candidates, 1)
        q = (w.unsqueeze(1) / step + offset).round().clamp(0, top)
        error = (w.unsqueeze(1) - step * (q - offset)).pow(2).sum(-1)
        best = error.argmin(1)
        rows = torch.arange(w.shape[0])
        codes[start:start + 1024] = q[rows, best].to(torch.uint8)
        steps[start:start + 1024] = step[rows, best, 0]
    return codes, steps


class QuantizedHead(_RegulationHead):
    """A low-memory regulation head that stores a full head's rows in a few bits per weight.

    Entry ``e`` reads all features, as a full head's row does, through
    weights held as ``bits``-bit codes ``c_e`` (bit-packed, a buffer) and
    one float step ``s_e`` per row: ``sigmoid(b_e + s_e * (c_e - o) . f)``
    with ``o = (2**bits - 1) / 2`` (levels symmetric around 0). The codes
    are fixed; the steps and biases are parameters (one each per entry, so
    nothing is shared). Build it from a meta-learned full head with
    :meth:`from_full` (or :meth:`Regulator.quantized`); a fresh or reset
    head quantises kaiming-normal rows. Memory: ``bits / 32`` of the full
    head's weights plus two floats per entry, so 3 bits store a full head
    about 10x smaller.

    :param features: regulator features.
    :param shape: shape of the regulated weight.
    :param bias: the regulation bias every entry starts at.
    :param bits: bits per weight (1 to 8).
    :param generator: random source of the rows (default: torch's global one).
    """

    def __init__(self, features: int, shape: Sequence[int], bias: float, bits: int = 3,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if not (isinstance(bits, numbers.Integral) and 1 <= bits <= 8):
            raise ValueError(f"bits (per weight of the quantized head) must be an integer from 1 to 8, got {bits!r}.")
        self.shape = tuple(shape)
        self.bits = int(bits)
        self.features = features
        entries = math.prod(self.shape)
        self.register_buffer("codes", torch.zeros(self.bits, -(-entries * features // 8), dtype=torch.uint8))
        self.step = nn.Parameter(torch.empty(entries))
        self.bias = nn.Parameter(torch.empty(entries))
        self.reset(bias, generator)

    def _maps(self) -> List[torch.Tensor]:
        return []

    def _bias(self) -> torch.Tensor:
        return self.bias

    def store(self, weight: torch.Tensor) -> None:
        """Quantise ``weight`` (``entries x features``) into the codes and steps (:func:`quantize_rows`).

        :param weight: the rows to store.
        """
        codes, steps = quantize_rows(weight.detach(), self.bits)
        with torch.no_grad():
            self.codes.copy_(_pack_codes(codes, self.bits))
            self.step.copy_(steps)

    def weight(self) -> torch.Tensor:
        """The rows the codes and steps stand for, ``(entries, features)`` floats (decoded on every call)."""
        return self.levels() * self.step.detach().unsqueeze(1)

    def levels(self) -> torch.Tensor:
        """The codes as levels ``c - o``, ``(entries, features)`` floats."""
        entries = self.step.shape[0]
        codes = _unpack_codes(self.codes, entries * self.features).view(entries, self.features)
        return codes.float().sub_((2 ** self.bits - 1) / 2)

    @classmethod
    def from_full(cls, full: FullHead, bits: int = 3, mean_features: Optional[torch.Tensor] = None
                  ) -> "QuantizedHead":
        """A full head's rows quantised to ``bits`` bits per weight, its biases kept.

        :param full: the full head.
        :param bits: bits per weight.
        :param mean_features: the regulator's mean features over some images
            (e.g. the meta-training set); when given, each bias takes the
            row's mean quantisation error, ``(w_e - q_e) . mean_features``, so
            the logits keep their mean over those images.
        """
        weight = full.linear.weight.detach()
        head = cls(weight.shape[1], full.shape, 0.0, bits)
        head.store(weight)
        with torch.no_grad():
            head.bias.copy_(full.linear.bias)
            if mean_features is not None:
                head.bias.add_((weight - head.weight()) @ mean_features)
        return head

    def reset(self, bias: float, generator: Optional[torch.Generator] = None) -> None:
        """Kaiming-normal rows quantised into the codes, every bias at ``bias``.

        :param bias: the regulation bias.
        :param generator: random source of the rows.
        """
        rows = torch.empty(self.step.shape[0], self.features)
        nn.init.kaiming_normal_(rows, generator=generator)
        self.store(rows)
        with torch.no_grad():
            self.bias.fill_(bias)

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid regulation ``(B, *shape)``.

        :param f: features ``(B, features)``.
        """
        return torch.addcmul(self.bias, self.step, f @ self.levels().t()).view(f.shape[0], *self.shape)


def _projected_heads(project: Optional[Sequence[int]], n: int) -> set:
    """The indices ``project`` names (None: every head but the last, the class prediction layer's), checked."""
    listed = set(range(n - 1)) if project is None else {int(i) for i in project}
    if not listed <= set(range(n)):
        raise ValueError(f"project names heads {sorted(listed)}, but the regulator has {n} (indices 0 to {n - 1}, "
                         f"the class prediction layer's last).")
    return listed


def _per_weight(value: Union[int, Sequence[int]], n: int, name: str) -> List[int]:
    """``value`` for each of ``n`` regulated weights: one number for all, or a sequence of ``n``."""
    values = [int(value)] * n if isinstance(value, numbers.Integral) else [int(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} values for {n} regulated weights; give one number for all heads "
                         f"or one per weight.")
    return values


def proportional_pools(regulated_shapes: Sequence[Sequence[int]], total: int) -> List[int]:
    """Split ``total`` shared read-outs among hashed heads in proportion to their weights' entries.

    Every head gets at least one read-out and at most one per entry; the
    shares are rounded by largest remainder, so they sum to ``total`` (or to
    the number of entries, if smaller). Each read-out then serves about the
    same number of entries in every layer, where one ``pool`` for all heads
    gives a small layer as many read-outs as a large one.

    :param regulated_shapes: shapes of the regulated weights
        (:attr:`RegulatedClassifier.regulated_shapes`).
    :param total: read-outs over all heads (at least one per head).
    :returns: one pool per regulated weight, for ``Regulator(pool=...)``.
    """
    entries = [math.prod(s) for s in regulated_shapes]
    if total < len(entries):
        raise ValueError(f"total={total} read-outs cannot give each of the {len(entries)} regulated weights one; "
                         f"use at least {len(entries)}.")
    total = min(total, sum(entries))
    exact = [total * e / sum(entries) for e in entries]
    pools = [min(e, max(1, math.floor(x))) for e, x in zip(entries, exact)]
    by_remainder = sorted(range(len(entries)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    while sum(pools) != total:
        step = 1 if sum(pools) < total else -1
        for i in by_remainder if step > 0 else reversed(by_remainder):
            if sum(pools) != total and 1 <= pools[i] + step <= entries[i]:
                pools[i] += step
    return pools


class Regulator(nn.Module):
    """TSAR's regulator: a convolutional trunk and one sigmoid head per regulated weight.

    Trunk: ``conv(in -> C) -> norm -> ReLU -> maxpool2``, ``conv(C -> C) ->
    norm -> ReLU -> maxpool2``, ``conv(C -> C) -> norm -> ReLU``, flatten
    (1,728 features for 192 channels and 28x28 images). Heads:
    :class:`FullHead` (``head="full"``, the original), or a low-memory
    :class:`FactoredHead` (``head="factored"``), :class:`LowRankHead`
    (``head="low_rank"``), :class:`HashedHead` (``head="hashed"``) or
    :class:`SparseHead` (``head="sparse"``) or :class:`QuantizedHead`
    (``head="quantized"``) or :class:`ProjectedHead` (``head="projected"``,
    for the heads listed in ``project``, full heads for the others).

    :param regulated_shapes: shapes of the classifier's regulated weights
        (:attr:`RegulatedClassifier.regulated_shapes`).
    :param in_channels: image channels.
    :param channels: channels of the trunk (paper: 192).
    :param input_size: image side length.
    :param bias: regulation bias of every head: ``"grow"`` (-8), ``"sculpt"`` (0) or a float.
    :param head: ``"full"``, ``"factored"``, ``"low_rank"``, ``"hashed"``, ``"sparse"``, ``"quantized"`` or
        ``"projected"``.
    :param rank: rank of the low-rank heads.
    :param code: code size of the factored heads.
    :param gain: read-out gain of the factored and sparse heads (:class:`FactoredHead`, :class:`SparseHead`).
    :param pool: shared read-outs of each hashed head (:class:`HashedHead`):
        one number for every head, or one per regulated weight (e.g. from
        :func:`proportional_pools`).
    :param hashes: read-outs per mask entry of the hashed heads (:class:`HashedHead`).
    :param inputs: features each mask entry of the sparse heads reads (:class:`SparseHead`).
    :param bits: bits per weight of the quantized heads (:class:`QuantizedHead`): one number for every head,
        or one per regulated weight.
    :param directions: feature directions each entry of the projected heads reads (:class:`ProjectedHead`).
    :param project: with ``head="projected"``, the indices of the heads that are projected; the others are
        full heads. None (default): every head but the last, the class prediction layer's, whose rows are
        drawn again before every transfer and learn it there (see :meth:`projected`).
    """

    def __init__(self, regulated_shapes: Sequence[Sequence[int]], *, in_channels: int = 3, channels: int = 192,
                 input_size: int = 28, bias: Union[str, float] = "grow", head: str = "full", rank: int = 4,
                 code: int = 32, gain: float = 1.0, pool: Union[int, Sequence[int]] = 512, hashes: int = 1,
                 inputs: int = 16, bits: Union[int, Sequence[int]] = 3, directions: int = 24,
                 project: Optional[Sequence[int]] = None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(map(repr, HEADS))}, got {head!r}.")
        if _conv_out(input_size, 3, 2) < 1:
            raise ValueError(f"input_size={input_size} is too small for the regulator's trunk; use at least 18.")
        value = regulation_bias(bias)
        self.config = {"regulated_shapes": [list(s) for s in regulated_shapes], "in_channels": in_channels,
                       "channels": channels, "input_size": input_size, "bias": value, "head": head, "rank": rank,
                       "code": code}
        if gain != 1.0:  # only then: configs (and checkpoints) of gain 1 stay as they were before the option
            self.config["gain"] = gain
        single = isinstance(pool, numbers.Integral)
        pools = _per_weight(pool, len(regulated_shapes), "pool")
        if head == "hashed":
            self.config["pool"] = int(pool) if single else pools
            if hashes != 1:  # as gain: configs of one hash stay as they were before the option
                self.config["hashes"] = hashes
        if head == "sparse":
            self.config["inputs"] = inputs
        layer_bits = _per_weight(bits, len(regulated_shapes), "bits")
        if head == "quantized":
            self.config["bits"] = int(bits) if isinstance(bits, numbers.Integral) else layer_bits
        projected = _projected_heads(project, len(regulated_shapes))
        shared: Dict[str, torch.Tensor] = {}
        if head == "projected":
            self.config.update(directions=int(directions), project=sorted(projected))
            features = channels * _conv_out(input_size, 3, 2) ** 2
            # one basis and one mean for every projected head (an invalid ``directions``: the head says why)
            if isinstance(directions, numbers.Integral) and 1 <= directions <= features:
                shared = {"basis": torch.linalg.qr(torch.randn(features, int(directions))).Q.t().contiguous(),
                          "mean_features": torch.zeros(features)}
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, channels, 3), nn.Conv2d(channels, channels, 3),
                                    nn.Conv2d(channels, channels, 3)])
        self.norms = nn.ModuleList([SingleImageNorm(channels) for _ in range(3)])
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.features = channels * _conv_out(input_size, 3, 2) ** 2
        make = {"full": lambda s, _: FullHead(self.features, s, value),
                "factored": lambda s, _: FactoredHead(self.features, s, value, code, gain),
                "low_rank": lambda s, _: LowRankHead(self.features, s, value, rank),
                "hashed": lambda s, i: HashedHead(self.features, s, value, pools[i], hashes=hashes),
                "sparse": lambda s, _: SparseHead(self.features, s, value, inputs, gain),
                "quantized": lambda s, i: QuantizedHead(self.features, s, value, layer_bits[i]),
                "projected": lambda s, i: (ProjectedHead(self.features, s, value, directions, **shared)
                                           if i in projected else FullHead(self.features, s, value))}[head]
        self.heads = nn.ModuleList([make(s, i) for i, s in enumerate(regulated_shapes)])

    def sparsified(self, inputs: int = 16, gain: float = 1.0, calibration: Optional[torch.Tensor] = None
                   ) -> "Regulator":
        """A copy whose full heads are pruned to their ``inputs`` largest weights per entry.

        Each head becomes :meth:`SparseHead.from_full` of it; the trunk is copied.

        :param inputs: weights kept per mask entry.
        :param gain: the sparse heads' gain.
        :param calibration: images whose mean features fold the pruned
            weights' mean contribution into each entry's bias (e.g. the
            meta-training images); None: the biases are kept as they are.
        """
        mean = self._mean_features(calibration)
        return self._converted("sparse", {"inputs": inputs, "gain": gain},
                               lambda h: SparseHead.from_full(h, inputs, gain, mean))

    def _mean_features(self, images: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if images is None:
            return None
        with torch.no_grad():
            return torch.cat([self.encode(chunk) for chunk in images.split(256)]).mean(0)

    def quantized(self, bits: Union[int, Sequence[int]] = 3, calibration: Optional[torch.Tensor] = None
                  ) -> "Regulator":
        """A copy whose full heads store their rows in ``bits`` bits per weight.

        Each head becomes :meth:`QuantizedHead.from_full` of it; the trunk is copied.

        :param bits: bits per weight, one number for every head or one per regulated weight.
        :param calibration: images whose mean features correct each entry's
            bias for the mean error of its quantised row (e.g. the
            meta-training images); None: the biases are kept as they are.
        """
        mean = self._mean_features(calibration)
        layer_bits = iter(_per_weight(bits, len(self.heads), "bits"))
        return self._converted("quantized", {"bits": bits},
                               lambda h: QuantizedHead.from_full(h, next(layer_bits), mean))

    def projected(self, calibration: torch.Tensor, directions: int = 24, heads: Optional[Sequence[int]] = None
                  ) -> "Regulator":
        """A copy whose full heads (those of ``heads``) read only ``directions`` directions of the features.

        The directions are the top right singular vectors of the trunk's
        features of ``calibration`` (:func:`feature_directions`); each listed
        head becomes :meth:`ProjectedHead.from_full` of it, the others are
        copied, and so is the trunk. For a meta-learned regulator this is a
        smaller one for domain transfer. By default the class prediction
        layer's head stays full: its rows are drawn again before every
        transfer and learn the new classes there, which a few directions do
        not allow (docs/tsar.rst measures both). The projected heads share one
        basis and one mean.

        :param calibration: images whose features give the directions (e.g. the meta-training images).
        :param directions: directions each entry reads.
        :param heads: indices of the heads to project (None: every head but the last).
        """
        listed = _projected_heads(heads, len(self.heads))
        with torch.no_grad():
            features = torch.cat([self.encode(chunk) for chunk in calibration.split(256)])
        basis, mean = feature_directions(features, directions), features.mean(0)
        heads_in_order = iter(range(len(self.heads)))

        def convert(head: FullHead) -> _RegulationHead:
            if next(heads_in_order) in listed:
                return ProjectedHead.from_full(head, basis, mean)
            return copy.deepcopy(head)

        return self._converted("projected", {"directions": directions, "project": sorted(listed)}, convert)

    def dequantized(self) -> "Regulator":
        """A copy whose quantized heads are full heads holding the decoded rows (floats, every weight learns).

        The logits are the quantized heads'. What a quantized regulator stores,
        in float again: for a transfer that learns every weight, from rows that
        were kept in a few bits.
        """
        def full(head: "QuantizedHead") -> FullHead:
            restored = FullHead(head.features, head.shape, 0.0)
            with torch.no_grad():
                restored.linear.weight.copy_(head.weight())
                restored.linear.bias.copy_(head.bias)
            return restored

        return self._converted("full", {}, full, source="quantized")

    def _converted(self, head: str, settings: Dict[str, Any], convert, source: str = "full") -> "Regulator":
        """A copy with the trunk copied and every ``source`` head replaced by ``convert(head)``."""
        if self.config["head"] != source:
            raise ValueError(f"only {source} regulation heads can be made {head}; this regulator's heads are "
                             f"{self.config['head']!r}. Fix: convert a regulator built with head={source!r}.")
        config = {k: v for k, v in self.config.items() if k not in ("regulated_shapes", "bits")}
        config.update(head=head, **settings)
        with torch.device("meta"):  # no initialisation to compute: the heads are replaced, the trunk loaded
            converted = Regulator(self.config["regulated_shapes"], **config)
        device = self.convs[0].weight.device
        for trunk, source_trunk in ((converted.convs, self.convs), (converted.norms, self.norms)):
            trunk.to_empty(device=device).load_state_dict(source_trunk.state_dict())
        converted.heads = nn.ModuleList([convert(h) for h in self.heads])
        return converted

    def trunk_parameters(self) -> List[nn.Parameter]:
        """The trunk's parameters (frozen during domain transfer)."""
        return list(self.convs.parameters()) + list(self.norms.parameters())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's features ``(B, features)``.

        :param x: images.
        """
        h = x
        for i in range(3):
            h = F.relu(self.norms[i](self.convs[i](h)))
            if i < 2:
                h = F.max_pool2d(h, 2)
        return h.flatten(1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear ``ValueError`` for a batch the regulator cannot take.

        :param x: the batch.
        """
        _check_square_images(x, self.config["in_channels"], self.config["input_size"], "Regulator")

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """One mask per regulated weight, each ``(B, *shape)`` in [0, 1].

        :param x: images ``(B, in_channels, input_size, input_size)``.
        """
        self.check_input(x)
        return self.run(x)

    def run(self, x: torch.Tensor) -> List[torch.Tensor]:
        """:meth:`forward` without the input check (for a caller that has checked ``x``).

        :param x: images.
        """
        f = self.encode(x)
        return [head(f) for head in self.heads]


class TSARNet(nn.Module):
    """A classifier with its regulator (or without one), as one Avalanche-ready model.

    ``forward(x)`` returns class scores: the regulator's masks for ``x``
    applied to the classifier, or the plain classifier when ``regulator`` is
    None (Scratch, No Regulation) or :attr:`regulation` is off.
    :meth:`build` builds the networks with every size as a parameter.

    :param classifier: the regulated classifier, or OML's network (:class:`OMLClassifier`, :meth:`oml`).
    :param regulator: its regulator, or None.
    """

    def __init__(self, classifier: Union[RegulatedClassifier, OMLClassifier], regulator: Optional[Regulator] = None):
        super().__init__()
        if regulator is not None and isinstance(classifier, OMLClassifier):
            raise ValueError("OMLClassifier has no regulation: TSARNet(OMLClassifier(...)) takes no regulator. "
                             "Fix: TSARNet(classifier) alone, or TSARNet.build(...) for a regulated classifier.")
        if regulator is not None:
            images = (regulator.config["in_channels"], regulator.config["input_size"])
            if images != (classifier.in_channels, classifier.input_size):
                raise ValueError(f"the regulator takes images of {images[0]} channels and side {images[1]}, the "
                                 f"classifier of {classifier.in_channels} and {classifier.input_size}. Fix: build "
                                 f"both with the same in_channels and input_size (TSARNet.build does).")
            expected = [list(s) for s in classifier.regulated_shapes]
            if regulator.config["regulated_shapes"] != expected:
                raise ValueError(f"the regulator masks weights of shapes {regulator.config['regulated_shapes']}, "
                                 f"the classifier has {expected}. Fix: build the regulator with "
                                 f"Regulator(classifier.regulated_shapes, ...).")
        self.classifier = classifier
        self.regulator = regulator
        self.regulation = regulator is not None
        """Apply the regulator's masks (set False to run the classifier alone)."""

    @classmethod
    def build(cls, n_classes: int = 1000, *, in_channels: int = 3, input_size: int = 28,
              classifier_channels: int = 112, regulator_channels: int = 192,
              bias: Union[str, float, None] = "grow", head: str = "full", rank: int = 4, code: int = 32,
              gain: float = 1.0, pool: Union[int, Sequence[int]] = 512, hashes: int = 1, inputs: int = 16,
              pool_before_norm: bool = False, bits: Union[int, Sequence[int]] = 3, directions: int = 24,
              project: Optional[Sequence[int]] = None) -> "TSARNet":
        """Both networks at the given sizes (the defaults are the paper's).

        :param n_classes: class prediction outputs.
        :param in_channels: image channels.
        :param input_size: image side length.
        :param classifier_channels: channels of the classifier's convolutions.
        :param regulator_channels: channels of the regulator's trunk.
        :param bias: regulation bias (``"grow"``, ``"sculpt"``, a float), or
            None for a classifier without regulator.
        :param head: ``"full"``, ``"factored"``, ``"low_rank"``, ``"hashed"``, ``"sparse"``, ``"quantized"`` or
            ``"projected"`` regulation heads.
        :param rank: rank of low-rank heads.
        :param code: code size of factored heads.
        :param gain: read-out gain of factored and sparse heads (:class:`FactoredHead`, :class:`SparseHead`).
        :param pool: shared read-outs of each hashed head (:class:`HashedHead`), one number for all or one
            per regulated weight (:func:`proportional_pools`).
        :param hashes: read-outs per mask entry of hashed heads (:class:`HashedHead`).
        :param inputs: features each mask entry of sparse heads reads (:class:`SparseHead`).
        :param pool_before_norm: the paper's block order in the classifier.
        :param bits: bits per weight of quantized heads (:class:`QuantizedHead`), one number for all or one
            per regulated weight.
        :param directions: feature directions each entry of projected heads reads (:class:`ProjectedHead`).
        :param project: which heads ``head="projected"`` projects (None: all but the class prediction layer's).
        """
        classifier = RegulatedClassifier(n_classes, in_channels=in_channels, channels=classifier_channels,
                                         input_size=input_size, pool_before_norm=pool_before_norm)
        regulator = None
        if bias is not None:
            regulator = Regulator(classifier.regulated_shapes, in_channels=in_channels,
                                  channels=regulator_channels, input_size=input_size, bias=bias, head=head,
                                  rank=rank, code=code, gain=gain, pool=pool, hashes=hashes, inputs=inputs,
                                  bits=bits, directions=directions, project=project)
        return cls(classifier, regulator)

    @classmethod
    def oml(cls, n_classes: int = 1000, *, in_channels: int = 3, input_size: int = 28, channels: int = 256,
            hidden: int = 1024) -> "TSARNet":
        """OML's network alone (:class:`OMLClassifier`), for the OML baseline.

        :param n_classes: class prediction outputs.
        :param in_channels: image channels.
        :param input_size: image side length.
        :param channels: channels of the five convolutions.
        :param hidden: outputs of the prediction network's first layer.
        """
        return cls(OMLClassifier(n_classes, in_channels=in_channels, channels=channels, hidden=hidden,
                                 input_size=input_size))

    @property
    def config(self) -> Dict[str, Any]:
        """Constructor settings of both networks (saved in checkpoints)."""
        return {"classifier": dict(self.classifier.config),
                "regulator": None if self.regulator is None else dict(self.regulator.config)}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "TSARNet":
        """Rebuild the networks from :attr:`config`.

        :param config: a dictionary from :attr:`config`.
        """
        settings = dict(config["classifier"])
        kind = settings.pop("kind", "regulated")
        classifier = OMLClassifier(**settings) if kind == "oml" else RegulatedClassifier(**settings)
        regulator = None
        if config.get("regulator") is not None:
            settings = dict(config["regulator"])
            regulator = Regulator(settings.pop("regulated_shapes"), **settings)
        return cls(classifier, regulator)

    def masks(self, x: torch.Tensor) -> Optional[List[torch.Tensor]]:
        """The regulator's masks for ``x``, or None without regulation.

        :param x: images.
        """
        self.classifier.check_input(x, owner="TSARNet")
        return self._masks(x)

    def _masks(self, x: torch.Tensor) -> Optional[List[torch.Tensor]]:
        if self.regulator is None or not self.regulation:
            return None
        return self.regulator.run(x)  # x was checked against the classifier, whose images the regulator shares

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.classifier.check_input(x, owner="TSARNet")
        return self.classifier.run(x, self._masks(x))
