"""TSAR: meta-learning the regulator (OML protocol), then domain transfer one image at a time.

Meta-learning (:class:`TSARMetaLearner`), one meta-iteration:

1. sample a class ``c`` and re-initialise its row of the class prediction layer;
2. inner loop: starting from the classifier's weights ``theta``, one SGD step
   (lr 0.1) per image of class ``c``, in order (the first image twice, as the
   authors' code does: 21 steps for 20 images), on the classifier only; the
   regulator's masks are applied but the regulator does not change:
   ``theta_k = theta_{k-1} - lr * grad L(theta_{k-1}; x_k, c)``;
3. outer loss: cross-entropy of the adapted classifier ``theta_K`` (with
   the regulator's masks) on 64 random images plus the inner images;
4. one Adam step (lr 1e-3) on ``theta`` and the regulator. First-order by
   default: ``dL/dtheta_K`` is used as the gradient of ``theta``;
   ``second_order=True`` differentiates through the inner loop.

Domain transfer (:class:`TSAR`, an Avalanche ``SupervisedTemplate``): the
class prediction weights and the regulator head that masks them are reset
(kaiming-normal weights, class bias 0, regulation bias -2), the regulator's
trunk is frozen, and Adam takes one step per image in the stream's order.
:class:`TSARScratch`, :class:`TSARNoRegulation`, :class:`TSAROML` and :class:`TSARReservoir`
are the paper's baselines on the same streams.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.func import functional_call

from ..benchmarks.omniglot import OmniglotMetaSampler
from ..models.tsar import OMLClassifier, TSARNet, regulation_bias
from .checkpoint import CheckpointError, CheckpointMixin, _load_rng_state, _rng_state, read_checkpoint, \
    write_checkpoint

__all__ = [
    "TRANSFER_CP_BIAS",
    "TRANSFER_OPTIMIZERS",
    "TSAR",
    "TSARMetaLearner",
    "TSARNoRegulation",
    "TSARReservoir",
    "TSARScratch",
    "fast_adam",
    "load_tsar_model",
    "prepare_transfer",
    "save_tsar_model",
]

MODEL_FORMAT = "avalanche_neuromod.tsar_model"
LEARNER_FORMAT = "avalanche_neuromod.tsar_meta_learner"

TRANSFER_CP_BIAS = -2.0
"""Regulation bias of the reset class-prediction head before transfer (the
paper's -2; the authors' command line uses -1.7)."""

PathLike = Union[str, "os.PathLike[str]"]


def fast_adam(params: Sequence[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where the installed torch has it (10x faster on the CPU).

    A full regulation head is millions of parameters and Adam updates all of
    them at every single-image step: the per-tensor loop of the default
    implementation takes ~30 ms per step for 7M parameters, the fused
    kernel ~3 ms.

    :param params: the parameters.
    :param lr: the learning rate.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


TRANSFER_OPTIMIZERS: Dict[str, Callable[[Sequence[nn.Parameter], float], torch.optim.Optimizer]] = {
    "adam": fast_adam,
    "sgd": lambda params, lr: torch.optim.SGD(list(params), lr=lr),
}
"""The updates :class:`TSAR` can transfer with (``optimizer_name``)."""


def save_tsar_model(model: TSARNet, path: PathLike, **info: Any) -> None:
    """Write a model for :func:`load_tsar_model` (atomically).

    :param model: the networks.
    :param path: destination file.
    :param info: numbers or strings stored beside it (e.g. ``meta_iterations``).
    """
    write_checkpoint({"format": MODEL_FORMAT, "config": model.config, "model": model.state_dict(),
                      "info": dict(info)}, path)


def load_tsar_model(path: PathLike, *, expect: Optional[Dict[str, Any]] = None,
                    map_location: Any = None) -> TSARNet:
    """Rebuild a :class:`TSARNet` from a file of :func:`save_tsar_model` or :meth:`TSARMetaLearner.save_model`.

    :param path: the file.
    :param expect: settings the caller needs, checked against the file's
        (keys of the classifier's config, e.g. ``{"n_classes": 200}``, or
        ``"regulated": True/False``).
    :param map_location: as in ``torch.load``.
    :raises CheckpointError: not such a file, or its settings differ from ``expect``.
    """
    state = read_checkpoint(path, map_location=map_location)
    if state.get("format") not in (MODEL_FORMAT, LEARNER_FORMAT):
        raise CheckpointError(f"{path} is not a TSAR model (format {state.get('format')!r}). Fix: pass a file "
                              f"written by save_tsar_model or TSARMetaLearner.save_checkpoint/save_model.")
    config = state["config"]
    for key, wanted in (expect or {}).items():
        if key == "regulated":
            found = config.get("regulator") is not None
        else:
            found = config["classifier"].get(key)
        if found != wanted:
            raise CheckpointError(f"{path} holds a model with {key}={found!r}, this run needs {key}={wanted!r}. "
                                  f"Fix: meta-learn a model with {key}={wanted!r}, or build the run with the "
                                  f"file's setting.")
    model = TSARNet.from_config(config)
    model.load_state_dict(state["model"])
    return model


class TSARMetaLearner:
    """Meta-learn a :class:`TSARNet` with the OML protocol (see the module doc).

    ``fit(n)`` runs until ``n`` meta-iterations are done, with a progress
    bar, writing :meth:`save_checkpoint` every ``checkpoint_every``
    iterations when ``checkpoint_path`` is set; a new learner built with the
    same arguments resumes from that file (``fit`` loads it) and ends with
    the same weights as a run that was never interrupted.

    :param model: the networks; a model without regulator is meta-learned
        as the No Regulation baseline.
    :param images: meta-training images ``(N, C, H, W)``, ``uint8`` (scaled
        to [0, 1]) or float; grey images are repeated to the model's channels.
    :param labels: their classes, ``0 .. n_classes - 1`` of the class prediction layer.
    :param inner_lr: SGD learning rate of the inner loop (0.1).
    :param outer_lr: Adam learning rate of the outer step (1e-3).
    :param n_inner: images of the inner loop (20).
    :param n_outer: random images of the outer batch (64).
    :param repeat_first: the inner loop sees its first image twice (the authors' code).
    :param inner_params: ``"all"`` (TSAR: the whole classifier) or
        ``"head"`` (OML's split: only the fast part adapts in the inner loop, the
        class prediction layer of a regulated classifier for No Regulation, the
        prediction network of an :class:`~avalanche_neuromod.models.OMLClassifier`
        for OML).
    :param second_order: differentiate through the inner loop.
    :param exclude_inner_class: outer random images from the other classes only (the paper's wording).
    :param classes: meta-train on these classes only (the "data scarce" setting).
    :param seed: seed of the episodes and the row resets.
    :param device: where to compute.
    :param checkpoint_path: file for periodic checkpoints (None: none).
    :param checkpoint_every: meta-iterations between checkpoints.
    """

    def __init__(self, model: TSARNet, images: torch.Tensor, labels: torch.Tensor, *, inner_lr: float = 0.1,
                 outer_lr: float = 1e-3, n_inner: int = 20, n_outer: int = 64, repeat_first: bool = True,
                 inner_params: str = "all", second_order: bool = False, exclude_inner_class: bool = False,
                 classes: Optional[Sequence[int]] = None, seed: int = 0, device: Any = "cpu",
                 checkpoint_path: Optional[PathLike] = None, checkpoint_every: int = 500):
        if inner_params not in ("all", "head"):
            raise ValueError(f"inner_params must be 'all' or 'head', got {inner_params!r}.")
        if inner_lr <= 0 or outer_lr <= 0:
            raise ValueError(f"learning rates must be positive, got inner_lr={inner_lr}, outer_lr={outer_lr}.")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}.")
        labels = torch.as_tensor(labels, dtype=torch.long)
        n_classes = model.classifier.n_classes
        if labels.numel() and int(labels.max()) >= n_classes:
            raise ValueError(f"the meta-training labels reach {int(labels.max())} but the class prediction layer "
                             f"has {n_classes} outputs. Fix: build the model with n_classes >= "
                             f"{int(labels.max()) + 1}.")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.images = self._prepare(images)
        model.classifier.check_input(self.images[:1], owner="TSARMetaLearner's images")
        self.labels = labels.to(self.device)
        self.sampler = OmniglotMetaSampler(labels, n_inner=n_inner, n_outer=n_outer,
                                           exclude_inner_class=exclude_inner_class, classes=classes, seed=seed)
        self.settings = {"inner_lr": inner_lr, "outer_lr": outer_lr, "n_inner": n_inner, "n_outer": n_outer,
                         "repeat_first": repeat_first, "inner_params": inner_params, "second_order": second_order,
                         "exclude_inner_class": exclude_inner_class, "seed": seed}
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = fast_adam(model.parameters(), outer_lr)
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.iteration = 0
        self.history: Dict[str, List[float]] = {"loss": [], "accuracy": []}
        """Per meta-iteration: the outer loss and the adapted classifier's accuracy on the outer batch."""
        self.seconds = 0.0
        """Seconds spent in :meth:`step` so far, over every resumed part of the run (saved in checkpoints)."""
        names = [n for n, _ in model.classifier.named_parameters()]
        self._inner_names = names if inner_params == "all" else model.classifier.head_parameter_names()

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        channels = self.model.classifier.in_channels
        if images.dim() == 4 and images.shape[1] == 1 and channels != 1:
            images = images.expand(-1, channels, -1, -1)
        return images.contiguous().to(self.device)

    def _regulator_masks(self, x: torch.Tensor, grad: bool) -> Optional[List[torch.Tensor]]:
        if self.model.regulator is None or not self.model.regulation:
            return None
        with torch.set_grad_enabled(grad):
            return self.model.regulator.run(x)  # the images were checked when the learner was built

    def step(self) -> Dict[str, float]:
        """One meta-iteration; returns its outer loss and accuracy."""
        start = time.perf_counter()
        self.model.train()
        episode = self.sampler.sample()
        classifier = self.model.classifier
        classifier.reset_class_prediction([episode.class_id], generator=self.generator)
        second_order = self.settings["second_order"]
        lr = self.settings["inner_lr"]
        inner = torch.from_numpy(episode.inner).to(self.device)
        x_in, y_in = self.images[inner], self.labels[inner]
        params = dict(classifier.named_parameters())
        if second_order:
            fast = {n: params[n] for n in self._inner_names}
        else:
            fast = {n: params[n].detach().clone().requires_grad_(True) for n in self._inner_names}
        masks_in = self._regulator_masks(x_in, grad=second_order)
        order = ([0] if self.settings["repeat_first"] else []) + list(range(len(inner)))
        for i in order:
            mask = None if masks_in is None else [m[i : i + 1] for m in masks_in]
            loss = F.cross_entropy(functional_call(classifier, {**params, **fast}, (x_in[i : i + 1], mask)),
                                   y_in[i : i + 1])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
            fast = {n: w - lr * g for (n, w), g in zip(fast.items(), grads)}
            if not second_order:
                fast = {n: w.detach().requires_grad_(True) for n, w in fast.items()}

        outer = torch.from_numpy(episode.outer).to(self.device)
        x_out, y_out = self.images[outer], self.labels[outer]
        self.optimizer.zero_grad(set_to_none=True)
        logits = functional_call(classifier, {**params, **fast}, (x_out, self._regulator_masks(x_out, grad=True)))
        loss = F.cross_entropy(logits, y_out)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the outer loss is {loss.item()} at meta-iteration {self.iteration + 1}. Fix: lower outer_lr "
                f"(now {self.settings['outer_lr']}) or inner_lr (now {lr}), or resume from an earlier checkpoint.")
        loss.backward()
        if not second_order:
            for n in self._inner_names:
                params[n].grad = fast[n].grad
        self.optimizer.step()
        self.iteration += 1
        record = {"loss": loss.item(), "accuracy": (logits.argmax(1) == y_out).float().mean().item()}
        for key, value in record.items():
            self.history[key].append(value)
        self.seconds += time.perf_counter() - start
        return record

    def fit(self, n_iterations: int, *, progress: bool = True, resume: bool = True,
            callback: Optional[Callable[["TSARMetaLearner"], None]] = None) -> Dict[str, List[float]]:
        """Meta-learn until ``n_iterations`` meta-iterations are done in total.

        :param n_iterations: the total (a resumed run does only what is left).
        :param progress: show a progress bar with the running loss and accuracy.
        :param resume: first load ``checkpoint_path`` if that file exists.
        :param callback: called after every meta-iteration (e.g. to evaluate
            transfer along the way).
        :return: :attr:`history`.
        """
        if resume and self.checkpoint_path is not None and os.path.exists(self.checkpoint_path):
            self.load_checkpoint(self.checkpoint_path)
        from tqdm.auto import tqdm

        bar = tqdm(total=n_iterations, initial=self.iteration, disable=not progress, desc="TSAR meta-learning",
                   unit="it")
        with bar:
            while self.iteration < n_iterations:
                self.step()
                bar.update(1)
                if self.iteration % 50 == 0 or self.iteration == n_iterations:
                    window = slice(-50, None)
                    bar.set_postfix(loss=f"{np.mean(self.history['loss'][window]):.3f}",
                                    acc=f"{np.mean(self.history['accuracy'][window]):.3f}")
                if self.checkpoint_path is not None and (self.iteration % self.checkpoint_every == 0
                                                         or self.iteration == n_iterations):
                    self.save_checkpoint(self.checkpoint_path)
                if callback is not None:
                    callback(self)
        return self.history

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resumed run needs (weights, Adam, episode and reset generators, history, RNGs)."""
        return {"format": LEARNER_FORMAT, "config": self.model.config, "settings": dict(self.settings),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "sampler": self.sampler.state_dict(), "generator": self.generator.get_state(),
                "iteration": self.iteration, "history": {k: list(v) for k, v in self.history.items()},
                "seconds": self.seconds, "rng": _rng_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        :param state: a dictionary from :meth:`state_dict`.
        :raises CheckpointError: the state was written for other networks or settings.
        """
        if state.get("format") != LEARNER_FORMAT:
            raise CheckpointError(f"not a TSARMetaLearner state (format {state.get('format')!r}).")
        if state["config"] != self.model.config:
            raise CheckpointError(f"the checkpoint's networks differ from this learner's: {state['config']} vs "
                                  f"{self.model.config}. Fix: build the learner with the same TSARNet settings, "
                                  f"or start a new checkpoint_path.")
        if state["settings"] != self.settings:
            raise CheckpointError(f"the checkpoint's settings differ from this learner's: {state['settings']} vs "
                                  f"{self.settings}. Fix: use the same arguments, or a new checkpoint_path.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.seconds = float(state.get("seconds", 0.0))  # files of earlier versions hold no time
        _load_rng_state(state["rng"])

    def save_checkpoint(self, path: PathLike) -> None:
        """Write :meth:`state_dict` atomically; the file also loads with :func:`load_tsar_model`.

        :param path: destination file.
        """
        write_checkpoint(self.state_dict(), path)

    def load_checkpoint(self, path: PathLike) -> int:
        """Resume from :meth:`save_checkpoint`'s file; returns the meta-iterations done.

        :param path: the file.
        """
        self.load_state_dict(read_checkpoint(path, map_location=self.device))
        return self.iteration

    def save_model(self, path: PathLike) -> None:
        """Write the meta-learned networks for :class:`TSAR` (:func:`save_tsar_model`).

        :param path: destination file.
        """
        save_tsar_model(self.model, path, meta_iterations=self.iteration, **self.settings)


def prepare_transfer(model: TSARNet, *, cp_bias: Union[str, float] = TRANSFER_CP_BIAS, train: str = "regulated",
                     generator: Optional[torch.Generator] = None, freeze_shared: bool = False,
                     freeze_head_weights: Union[bool, Sequence[int]] = False) -> None:
    """Reset and freeze what domain transfer resets and freezes, in place.

    Always: class prediction weights re-initialised (kaiming-normal, bias 0).
    ``train`` says what learns during the sequence:

    - ``"regulated"`` (TSAR): the classifier and the regulator's heads; the
      regulator's trunk is frozen and its class-prediction head reset
      (kaiming-normal, every bias ``cp_bias``);
    - ``"classifier"`` (Scratch, Reservoir): the classifier; a regulator, if
      any, is frozen whole and keeps its weights;
    - ``"head"`` (No Regulation, OML): the classifier's fast part only
      (``head_parameter_names()``: the class prediction layer of a regulated
      classifier, OML's prediction network).

    :param model: the networks.
    :param cp_bias: regulation bias of the reset class-prediction head.
    :param train: ``"regulated"``, ``"classifier"`` or ``"head"``.
    :param generator: random source of the resets.
    :param freeze_shared: with ``"regulated"``, also freeze what low-memory
        regulation heads share among mask entries
        (:meth:`~avalanche_neuromod.models.HashedHead.shared_parameters`), so
        that only per-entry parameters learn, as every parameter of a full
        head is one entry's (no effect on full heads).
    :param freeze_head_weights: with ``"regulated"``, keep every regulation
        head's weights fixed (:meth:`~avalanche_neuromod.models.FullHead.map_parameters`),
        the reset class-prediction head's random rows included: only the
        per-entry biases (and a quantized head's steps) learn in the
        regulator. A sequence of indices (in the order of the regulated
        weights: the convolutions, then the class prediction layer) freezes
        those heads' weights only. A :class:`~avalanche_neuromod.models.QuantizedHead`'s
        codes never learn, with or without it.
    """
    if train not in ("regulated", "classifier", "head"):
        raise ValueError(f"train must be 'regulated', 'classifier' or 'head', got {train!r}.")
    model.classifier.reset_class_prediction(generator=generator)
    for p in model.parameters():
        p.requires_grad_(True)
    if train == "head":
        fast = set(model.classifier.head_parameter_names())
        for name, p in model.classifier.named_parameters():
            p.requires_grad_(name in fast)
    if model.regulator is not None:
        if train == "regulated":
            model.regulator.heads[-1].reset(regulation_bias(cp_bias), generator=generator)
            for p in model.regulator.trunk_parameters():
                p.requires_grad_(False)
            heads = model.regulator.heads
            if isinstance(freeze_head_weights, bool):
                weights_frozen = set(range(len(heads))) if freeze_head_weights else set()
            else:
                weights_frozen = {int(i) for i in freeze_head_weights}
                if not weights_frozen <= set(range(len(heads))):
                    raise ValueError(f"freeze_head_weights names heads {sorted(weights_frozen)}, but the regulator "
                                     f"has {len(heads)} (indices 0 to {len(heads) - 1}, the class prediction "
                                     f"layer's last). Fix: True for all, or indices in that range.")
            for i, head in enumerate(heads):
                frozen = (head.shared_parameters() if freeze_shared else []) + \
                    (head.map_parameters() if i in weights_frozen else [])
                for p in frozen:
                    p.requires_grad_(False)
        else:
            for p in model.regulator.parameters():
                p.requires_grad_(False)


class TSAR(CheckpointMixin, SupervisedTemplate):
    """Domain transfer with a meta-learned regulator: one Adam step per image, in order.

    Build it with a meta-learned :class:`TSARNet` (or :meth:`from_checkpoint`);
    the constructor applies :func:`prepare_transfer`. Train on a
    :func:`~avalanche_neuromod.benchmarks.DomainTransfer` stream, one
    ``train(experience)`` per class or ``train(benchmark.train_stream)``;
    the training loader never shuffles, so images are learned in the
    stream's order. Avalanche's evaluators and loggers work as usual
    (``eval(benchmark.test_stream)`` gives recall per position).

    :param model: the networks (meta-learned, with a regulator).
    :param lr: the learning rate (choose it on a sequence you do not report).
    :param optimizer_name: ``"adam"`` (the paper's transfer) or ``"sgd"``
        (plain SGD, the update the inner loop of meta-learning used; a
        diagnostic: Adam divides each weight's step by its gradient's running
        magnitude, which undoes much of the plasticity a mask gives).
    :param cp_bias: regulation bias of the reset class-prediction head (-2).
    :param freeze_shared: keep fixed what low-memory regulation heads share
        among mask entries (:meth:`~avalanche_neuromod.models.HashedHead.shared_parameters`); only per-entry
        parameters then learn. No effect on full heads. Default False (the
        heads learn whole, as the paper's).
    :param freeze_head_weights: keep every regulation head's weights fixed
        (or, given indices, those heads' only); only their per-entry biases
        (and a quantized head's steps) learn in the regulator
        (:func:`prepare_transfer`). Default False.
    :param class_head_lr_scale: the learning rate of the class prediction
        layer's regulation head's weights (:meth:`~avalanche_neuromod.models.FullHead.map_parameters`
        of the last head; its biases keep ``lr``), as a multiple of ``lr``.
        Those rows are drawn again before the sequence and learn the new
        classes; under Adam a multiple ``s`` is the same as a head computing
        ``s W f`` with ``W`` started ``s`` times smaller (the gain of the
        sparse and factored heads). Default 1 (one rate for everything, as the
        paper); docs/tsar.rst measures others.
    :param train_mb_size: must be 1: the method learns one image per step.
    :param train_epochs: passes over each experience (1).
    :param eval_mb_size: evaluation batch size.
    :param device: where to compute.
    :param plugins: more Avalanche plugins.
    :param evaluator: Avalanche evaluator.
    :param eval_every: Avalanche's periodic evaluation.
    :param seed: seed of the resets (None: torch's global generator).
    """

    _train = "regulated"
    _needs_regulator: Optional[bool] = True

    def __init__(self, *, model: TSARNet, lr: float = 1e-3, optimizer_name: str = "adam",
                 cp_bias: Union[str, float] = TRANSFER_CP_BIAS, freeze_shared: bool = False,
                 freeze_head_weights: Union[bool, Sequence[int]] = False, class_head_lr_scale: float = 1.0,
                 train_mb_size: int = 1, train_epochs: int = 1,
                 eval_mb_size: int = 256, device: Any = "cpu",
                 plugins: Optional[Sequence[Any]] = None, evaluator: Any = default_evaluator,
                 eval_every: int = -1, seed: Optional[int] = None, **base_kwargs: Any):
        name = type(self).__name__
        if not isinstance(model, TSARNet):
            raise TypeError(f"{name} takes a TSARNet, got {type(model).__name__}. Fix: TSARNet.build(...) or "
                            f"load_tsar_model(path).")
        if train_mb_size != 1:
            raise ValueError(f"{name} learns one image per step: train_mb_size must be 1, got {train_mb_size}. "
                             f"Fix: drop train_mb_size (it defaults to 1).")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if not (isinstance(class_head_lr_scale, (int, float)) and math.isfinite(class_head_lr_scale)
                and class_head_lr_scale > 0):
            raise ValueError(f"class_head_lr_scale must be a positive number, got {class_head_lr_scale!r}.")
        if class_head_lr_scale != 1 and (self._train != "regulated" or model.regulator is None):
            raise ValueError(f"class_head_lr_scale applies to the class prediction layer's regulation head, which "
                             f"{name} does not train. Fix: drop class_head_lr_scale, or use TSAR.")
        if optimizer_name not in TRANSFER_OPTIMIZERS:
            raise ValueError(f"optimizer_name must be one of {sorted(TRANSFER_OPTIMIZERS)}, got {optimizer_name!r}.")
        if self._needs_regulator is True and model.regulator is None:
            raise ValueError(f"{name} needs a model with a regulator. Fix: TSARNet.build(bias='grow'), or use "
                             f"TSARScratch / TSARNoRegulation for a classifier alone.")
        if self._needs_regulator is False and model.regulator is not None:
            raise ValueError(f"{name} runs the classifier without regulation; this model has a regulator. Fix: "
                             f"TSARNet(model.classifier), or use TSAR.")
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        prepare_transfer(model, cp_bias=cp_bias, train=self._train, generator=generator, freeze_shared=freeze_shared,
                         freeze_head_weights=freeze_head_weights)
        self.cp_bias = cp_bias
        self.freeze_shared = freeze_shared
        self.freeze_head_weights = freeze_head_weights
        self.optimizer_name = optimizer_name
        self.class_head_lr_scale = class_head_lr_scale
        trainable: List[Any] = [p for p in model.parameters() if p.requires_grad]
        if class_head_lr_scale != 1:  # two groups; frozen parameters in the first (no gradient, never stepped),
            # so that Avalanche's optimizer update finds every parameter of the model in a group
            fast = {id(p) for p in model.regulator.heads[-1].map_parameters() if p.requires_grad}
            trainable = [{"params": [p for p in model.parameters() if id(p) not in fast]},
                         {"params": [p for p in model.parameters() if id(p) in fast], "lr": lr * class_head_lr_scale}]
        super().__init__(model=model, optimizer=TRANSFER_OPTIMIZERS[optimizer_name](trainable, lr),
                         criterion=nn.CrossEntropyLoss(), train_mb_size=1, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size, device=device,
                         plugins=list(plugins or []), evaluator=evaluator, eval_every=eval_every, **base_kwargs)

    @classmethod
    def from_checkpoint(cls, path: PathLike, *, n_classes: Optional[int] = None, **kwargs: Any) -> "TSAR":
        """The strategy on a meta-learned model file (:meth:`TSARMetaLearner.save_model` or a learner checkpoint).

        :param path: the file.
        :param n_classes: class prediction outputs the transfer needs (checked against the file).
        :param kwargs: the constructor's other arguments.
        """
        expect: Dict[str, Any] = {}
        if n_classes is not None:
            expect["n_classes"] = n_classes
        if cls._needs_regulator is not None:
            expect["regulated"] = cls._needs_regulator
        return cls(model=load_tsar_model(path, expect=expect), **kwargs)

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: Any = None,
                              persistent_workers: bool = False, drop_last: bool = False, **kwargs: Any) -> None:
        """Avalanche's training loader, never shuffled: the sequence's order is the method's."""
        super().make_train_dataloader(num_workers=num_workers, shuffle=False, pin_memory=pin_memory,
                                      persistent_workers=persistent_workers, drop_last=drop_last, **kwargs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        classes = getattr(self.experience, "classes_in_this_experience", None) or []
        n_classes = self.model.classifier.n_classes
        if classes and max(classes) >= n_classes:
            raise ValueError(f"experience {self.experience.current_experience} holds class {max(classes)}, but the "
                             f"class prediction layer has {n_classes} outputs. Fix: a transfer stream with at most "
                             f"{n_classes} classes (DomainTransfer(n_classes=...)), or a model built with "
                             f"n_classes >= {max(classes) + 1}.")
        super()._before_training_exp(**kwargs)


class TSARScratch(TSAR):
    """The Scratch baseline: the classifier alone, randomly initialised, no regulation, no meta-learning.

    Same protocol as :class:`TSAR` (Adam, one image per step, in order).
    Build the model with ``TSARNet.build(n_classes, bias=None, ...)``.
    """

    _train = "classifier"
    _needs_regulator = False


class TSARNoRegulation(TSAR):
    """The No Regulation baseline: a classifier meta-learned without regulator, convolutions fixed.

    Meta-learn it with ``TSARMetaLearner(TSARNet.build(..., bias=None),
    ..., inner_params="head")`` (OML's split: convolutions as the
    representation, the class prediction layer as the fast part). During
    transfer the class prediction layer is reset and is the only part that learns.
    """

    _train = "head"
    _needs_regulator = False


class TSAROML(TSAR):
    """The OML baseline: OML's own network, meta-learned with the same protocol, its representation fixed in transfer.

    Build the model with ``TSARNet.oml(n_classes, ...)``
    (:class:`~avalanche_neuromod.models.OMLClassifier`: five convolutions,
    then two linear layers) and meta-learn it with
    ``TSARMetaLearner(model, ..., inner_params="head")``: the inner loop
    adapts the prediction network, the outer step both parts. During
    transfer the class prediction layer is reset and the prediction network
    (both linear layers) learns; the convolutions stay fixed. Same protocol
    as :class:`TSAR` otherwise (Adam, one image per step, in order).
    """

    _train = "head"
    _needs_regulator = False

    def __init__(self, *, model: TSARNet, **kwargs: Any):
        if not isinstance(getattr(model, "classifier", None), OMLClassifier):
            kind = type(getattr(model, "classifier", model)).__name__
            raise TypeError(f"TSAROML transfers OML's network; this model's classifier is a {kind}. Fix: "
                            f"TSARNet.oml(n_classes, ...), or TSARNoRegulation for a regulated classifier "
                            f"meta-learned without its regulator.")
        super().__init__(model=model, **kwargs)


class TSARReservoir(TSAR):
    """The Reservoir baseline: a random, untrained regulator, frozen, over a classifier that learns.

    Nothing is meta-learned: the regulator keeps its random initialisation
    (with its regulation bias) and only the classifier learns during the
    sequence. It separates what regulation does by itself from what
    meta-learning gives it.
    """

    _train = "classifier"
    _needs_regulator = True
