"""Dynamos against its ablation, plain SGD and Avalanche's replay strategies (MNIST-360, Seq-MNIST).

For each stream, buffer size and seed, every method trains the reduced
ResNet-18 of the paper (with agents for Dynamos, without for the others) on
the same stream and is evaluated on the test stream at the end:

* ``dynamos``: ``Dynamos.preset(stream, buffer)`` (the paper's Table 5);
* diagnostics of the gap to the paper (not the paper's method; run only
  when named in ``--methods``): ``dynamos_detached``, the same with
  ``DynamosResNet18(detach_agent_inputs=True)`` (the agents' terms train the
  agents only); ``dynamos_torch_logprob``, the agents' ``log pi`` computed
  as the authors' code does, by ``torch.distributions.Bernoulli(probs=p)``,
  which clamps ``p`` to ``[eps, 1 - eps]`` and so gives no policy gradient
  to saturated channels (ours is exact, through ``logsigmoid``);
  ``dynamos_flipped_reward``, wrong predictions rewarded
  ``+lambda (kr - k)^2`` instead of the paper's ``-lambda (kr - k)^2``;
  ``dynamos_separate_passes`` and ``consistency_separate_passes``, the
  buffer batch in a forward pass of its own (``separate_replay_pass=True``,
  batch-norm statistics per batch), as the authors' code does;
  ``dynamos_no_policy``, ``dynamos_no_prototype`` and
  ``dynamos_no_attention``, Dynamos without its REINFORCE term (``gamma=0``),
  its prototype term (``w_p=0``) or its attention consistency
  (``alpha_p=0``), and ``dynamos_gates_only`` without all three (the agents
  gate but never learn: ``ConsistencyReplay``'s objective on the gated
  network), to find the term that puts Dynamos below its ablation;
  ``dynamos_keep90`` and ``dynamos_keep100``, Dynamos with the target keep
  ratio ``kr`` at 0.9 or 1.0 instead of the paper's 0.7;
  ``dynamos_keep90_no_prototype``, ``dynamos_keep90_no_attention`` and
  ``dynamos_keep90_detached``, ``kr`` at 0.9 with the prototype term off,
  attention consistency off, or the agents' inputs detached;
  ``dynamos_no_prototype_detached``, the prototype term off and the agents'
  inputs detached (the paper's ``kr``), the two changes that each lifted
  Dynamos on Seq-MNIST; ``dynamos_policy_only_detached``, the prototype
  term and attention consistency off and the agents' inputs detached (the
  backbone learns from the ablation's terms only, the agents from the
  REINFORCE term only);
  ``dynamos_wp_0.1`` and ``dynamos_wp_0.05``, the prototype weight ``w_p``
  at 0.1 or 0.05 instead of Table 5's 0.3-0.5: whether a smaller weight keeps
  what the term gives on MNIST-360 without what it costs on Seq-MNIST;
  ``dynamos_keep100_policy_only_detached``, ``kr`` at 1.0 with the
  prototype term and attention consistency off and the agents' inputs
  detached: agents asked to keep every channel and a backbone trained by
  the ablation's terms only; ``dynamos_keep100_unmasked_detached``, the
  same with the backbone trained ungated (every channel kept) and the
  agents learning on a second, gated pass of the same samples: whether
  training under the agents' sampled masks is what the backbone loses;
  ``der_low_lr``, Avalanche's DER at lr 0.01 (``DER_LOW_LR``), for the runs
  where it diverges at 0.03;
* ``consistency``: ``ConsistencyReplay.preset`` (the paper's ablation);
* ``sgd``: Avalanche's ``Naive`` with plain SGD (lr 0.07), no memory: it
  runs once per stream and seed, whatever ``--buffers`` says, and is
  recorded with buffer 0;
* ``der``, ``er_ace``, ``replay``: Avalanche's ``DER`` (alpha and beta of
  Table 5's row, like Dynamos' consistency weights), ``ER_ACE`` and
  ``Replay`` with a reservoir of the same size, plain SGD lr 0.07 (DER:
  0.03, see ``DER_LR``), the same stream batch and a memory batch of the
  same size. Their settings are the paper's for Dynamos, not tuned for them.

MNIST-360 trains on the online stream (3,387 mini-batches of 16, one
experience each, no boundaries); Seq-MNIST on ``SplitMNIST(channels=3)``
(5 experiences of 2 classes, batch 10, 1 epoch). Recorded per run: final
test accuracy, seconds, the keep ratio of each gated layer on the test
stream (Dynamos), the test accuracy of the same network with every channel
kept (``model.ungated()``: what the agents' dropping costs or gains at
inference) and with the agents' actions drawn as in training
(``model.sampling()``, seeded by the run's seed: what the ``p >= 0.5``
rule at inference changes), the final accuracy on each class (``class_accuracy``; for
Dynamos also with every channel kept), and the buffer's fill.
``--max-batches N`` stops MNIST-360 after its first N online mini-batches
(a stated reduced scale; the accuracy of such a run is not comparable with
the paper's).

Run (full scale takes hours on 2 CPU cores)::

    python benchmarks/dynamos.py --dataset-root "$AVALANCHE_NEUROMOD_DATA" \\
        --streams mnist360 --buffers 200 --seeds 0 --methods dynamos der

Targets (the issue's), checked for every stream and buffer run: Dynamos'
mean accuracy within one of the paper's standard deviations of its mean, or
above (at or above the mean where the paper gives none); the ablation below
Dynamos, as in the paper; Dynamos' training time at most 1.5x Avalanche's
DER's; a full MNIST-360 run in at most 5 minutes.

Results go to ``benchmarks/results/dynamos.json`` (``--out``) and to a
delimited section of ``docs/results.md`` (skip it with ``--no-docs``;
``--label L`` writes ``dynamos_L.json`` and a section of its own, for a
study at another scale);
``--report`` rewrites the summary, targets and section from the JSON alone;
``--gap-figure`` draws ``docs/images/dynamos_ablation_gap.png`` (Dynamos at
Table 5, the policy-only variant, the ablation and the paper's Dynamos on
every stream and buffer) from the result files of ``GAP_SOURCES``.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from _report import (REPO_ROOT, add_dataset_root_argument, check_label, check_mnist_root, cpu_details, cpu_model,
                     load_previous, markdown_table, portable_path, publish, result_header, section_markers, section_opening, target,
                     target_lines, write_json)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "dynamos.json"
GAP_FIGURE = REPO_ROOT / "docs" / "images" / "dynamos_ablation_gap.png"
GAP_SOURCES = ("dynamos.json", "dynamos_term-ablation.json", "dynamos_term-ablation-seqmnist.json")
"""The result files ``--gap-figure`` reads (next to ``--out``); a run found in several comes from the first."""
GAP_METHODS = {"dynamos": "Dynamos (Table 5)",
               "dynamos_keep100_policy_only_detached": "kr 1.0, w_p = alpha_p = 0, detached",
               "consistency": "ablation (ConsistencyReplay)"}
TERM_ABLATIONS = {
    "dynamos_no_policy": ("gamma",),
    "dynamos_no_prototype": ("w_p",),
    "dynamos_no_attention": ("alpha_p",),
    "dynamos_gates_only": ("gamma", "w_p", "alpha_p"),
    "dynamos_no_prototype_detached": ("w_p",),
    "dynamos_policy_only_detached": ("w_p", "alpha_p"),
}
"""Dynamos with some of its own terms' weights set to 0 (Table 5's row otherwise): which term puts it below
its ablation. ``dynamos_gates_only`` keeps the gated network and the agents' masks (untrained agents) under
``ConsistencyReplay``'s objective; ``dynamos_no_prototype_detached`` and ``dynamos_policy_only_detached`` also
detach the agents' inputs (the backbone then learns from the ablation's terms only)."""
KEEP_RATIO_VARIANTS = {"dynamos_keep90": 0.9, "dynamos_keep100": 1.0}
"""Dynamos with another target keep ratio ``kr`` than the paper's 0.7: whether dropping channels is the cost."""
KEEP90_TERM_VARIANTS = {
    "dynamos_keep90_no_prototype": ("w_p",),
    "dynamos_keep90_no_attention": ("alpha_p",),
    "dynamos_keep90_detached": (),
}
"""``dynamos_keep90`` with one more change: the prototype term or attention consistency off, or the agents'
inputs detached (their terms train the agents only). Where ``kr`` = 0.9 still leaves Dynamos under its
ablation (MNIST-360, buffer 200), whether a term that reaches the backbone is the rest of the cost."""
PROTOTYPE_WEIGHT_VARIANTS = {"dynamos_wp_0.1": 0.1, "dynamos_wp_0.05": 0.05}
"""Dynamos with a smaller prototype weight ``w_p`` than Table 5's (0.3 or 0.5), the rest of the row unchanged:
the term helps on MNIST-360 and costs about a point on Seq-MNIST at its full weight."""
KEEP100_TERM_VARIANTS = {"dynamos_keep100_policy_only_detached": ("w_p", "alpha_p"),
                         "dynamos_keep100_unmasked_detached": ("w_p", "alpha_p")}
"""``dynamos_keep100`` with terms off and the agents' inputs detached: the closest Dynamos gets to its ablation
while its agents still learn (only the REINFORCE term, on the agents alone, and a few dropped channels).
``dynamos_keep100_unmasked_detached`` also trains the backbone ungated (:func:`_unmasked_backbone_plugin`)."""
UNMASKED_BACKBONE = ("dynamos_keep100_unmasked_detached",)
"""Variants whose backbone trains with every channel kept, the agents on a second, gated pass."""
ZEROED_TERMS = {**TERM_ABLATIONS, **KEEP90_TERM_VARIANTS, **KEEP100_TERM_VARIANTS}
"""The weights each variant sets to 0; its keep ratio follows from its name (``dynamos_keep90_*``: 0.9)."""
METHODS = ("dynamos", "dynamos_detached", "dynamos_torch_logprob", "dynamos_flipped_reward", "dynamos_separate_passes",
           *TERM_ABLATIONS, *KEEP_RATIO_VARIANTS, *KEEP90_TERM_VARIANTS, *PROTOTYPE_WEIGHT_VARIANTS,
           *KEEP100_TERM_VARIANTS, "consistency", "consistency_separate_passes", "sgd", "der", "der_low_lr", "er_ace",
           "replay")
DIAGNOSTICS = ("dynamos_detached", "dynamos_torch_logprob", "dynamos_flipped_reward", "dynamos_separate_passes",
               *TERM_ABLATIONS, *KEEP_RATIO_VARIANTS, *KEEP90_TERM_VARIANTS, *PROTOTYPE_WEIGHT_VARIANTS,
               *KEEP100_TERM_VARIANTS, "consistency_separate_passes", "der_low_lr")
"""Variants that look for the gap to the paper (and a DER that does not diverge); not in the default ``--methods``."""
STREAMS = {"mnist360": (100, 200, 500), "seq-mnist": (500, 1000, 2000)}
N_THREADS = 2
LR = 0.07
DER_LR = 0.03
"""Avalanche's DER on MNIST-360 with this backbone: its weights become NaN within 800 online mini-batches
at lr 0.07 with Table 5's alpha and beta; at 0.03 it trains."""
DER_LOW_LR = 0.01
"""``der_low_lr``: Avalanche's DER at a third of ``DER_LR`` (0.03 still diverges for some seeds on MNIST-360)."""
_SEPARATE_PASS = ("the buffer batch in a forward pass of its own, `separate_replay_pass=True`, as the authors' code: "
                  "batch-norm statistics per batch")
DIAGNOSTIC_NOTES = {
    "dynamos_detached": "`detach_agent_inputs=True`: the agents' terms train the agents only",
    "dynamos_torch_logprob": "log pi from torch's `Bernoulli(probs=p)`, as the authors' code: p clamped to "
                             "[eps, 1 - eps], no policy gradient for saturated channels",
    "dynamos_flipped_reward": "wrong predictions rewarded +lambda (kr - k)^2 instead of -lambda (kr - k)^2",
    "dynamos_separate_passes": _SEPARATE_PASS,
    "consistency_separate_passes": _SEPARATE_PASS,
    "dynamos_no_policy": "gamma = 0",
    "dynamos_no_prototype": "w_p = 0",
    "dynamos_no_attention": "alpha_p = 0",
    "dynamos_gates_only": "gamma = w_p = alpha_p = 0: untrained agents gate, under the ablation's objective",
    "dynamos_keep90": "target keep ratio 0.9 instead of 0.7",
    "dynamos_keep100": "target keep ratio 1.0 instead of 0.7",
    "dynamos_keep90_no_prototype": "keep ratio 0.9 and w_p = 0",
    "dynamos_keep90_no_attention": "keep ratio 0.9 and alpha_p = 0",
    "dynamos_keep90_detached": "keep ratio 0.9 and the agents' inputs detached",
    "dynamos_no_prototype_detached": "w_p = 0 and the agents' inputs detached",
    "dynamos_wp_0.1": "w_p = 0.1 instead of Table 5's",
    "dynamos_wp_0.05": "w_p = 0.05 instead of Table 5's",
    "dynamos_policy_only_detached": "w_p = alpha_p = 0, the agents' inputs detached",
    "dynamos_keep100_policy_only_detached": "keep ratio 1.0, w_p = alpha_p = 0, the agents' inputs detached",
    "dynamos_keep100_unmasked_detached": "the same as dynamos_keep100_policy_only_detached with the backbone trained "
                                         "ungated, every channel kept, and the agents' REINFORCE term on a second, "
                                         "gated pass",
    "der_low_lr": f"Avalanche's DER at lr {DER_LOW_LR}",
}
"""What each diagnostic of :data:`DIAGNOSTICS` changes (the rest of Table 5's row unchanged), for the note of a
results section."""


def diagnostics_note(methods: Iterable[str]) -> str:
    """The note on the diagnostics among ``methods`` (only those), each with what it changes; methods that change
    the same thing share one description.

    :param methods: the methods of a result file's runs.
    :returns: ``"a and b (what they change); c (...)"``, or ``""`` when no diagnostic ran.
    """
    present = set(methods)
    groups: Dict[str, List[str]] = {}
    for name, description in DIAGNOSTIC_NOTES.items():
        if name in present:
            groups.setdefault(description, []).append(name)
    return "; ".join(" and ".join(names) + f" ({description})" for description, names in groups.items())


NO_MEMORY = 0
"""The buffer recorded for the memory-free ``sgd``."""
TRAIN_CHUNK = 100
"""Experiences per ``train()`` call (:func:`~avalanche_neuromod.training.train_online`)."""

PAPER = {
    ("mnist360", "dynamos"): {100: (64.42, 4.10), 200: (79.64, 2.85), 500: (90.52, 0.74)},
    ("mnist360", "consistency"): {100: (61.19, None), 200: (75.36, None), 500: (88.15, None)},
    ("mnist360", "sgd"): {NO_MEMORY: (18.71, None)},
    ("seq-mnist", "dynamos"): {500: (97.19, None), 1000: (97.51, None), 2000: (97.57, None)},
}
"""The paper's means (and standard deviations where it gives them), in %."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_root_argument(parser)
    parser.add_argument("--streams", nargs="+", choices=sorted(STREAMS), default=["mnist360"])
    parser.add_argument("--buffers", nargs="+", type=int, default=None,
                        help="buffer sizes (default: the paper's three for each stream).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        default=[m for m in METHODS if m not in DIAGNOSTICS],
                        help=f"methods to run (default: all but the diagnostics {', '.join(DIAGNOSTICS)}).")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="MNIST-360 only: stop after this many online mini-batches (reduced scale).")
    parser.add_argument("--replacement", action="store_true",
                        help="MNIST-360 drawn with replacement inside each chunk, as the authors' code does "
                             "(default: without, the spec's choice).")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="every method's network with DynamosResNet18(mixed_precision=True): bfloat16 "
                             "convolutions under autocast (default: float32).")
    parser.add_argument("--device", default="cpu",
                        help="where every network trains and is tested, e.g. cuda (default: cpu). Seconds and "
                             "accuracies compare only between runs of one device.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/results.md.")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: recompute the summary and targets of --out and rewrite its section.")
    parser.add_argument("--gap-figure", action="store_true",
                        help=f"train nothing: draw {portable_path(GAP_FIGURE)} from the result files "
                             f"{', '.join(GAP_SOURCES)} next to --out (with --out in another folder, the "
                             f"figure goes to that folder).")
    parser.add_argument("--label", default=None,
                        help="a study of its own: writes dynamos_LABEL.json (unless --out is given) and its own "
                             "section of docs/results.md (default: dynamos.json and the 'dynamos' section).")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in --out (same scale) and add these; a run of the same "
                             "stream, method, buffer and seed replaces the old one. The summary covers all.")
    parser.add_argument("--note", action="append", default=[],
                        help="a line on how the runs were made (stopped commands, other work beside them), kept "
                             "in the result file and printed in its section; --append keeps earlier notes.")
    args = parser.parse_args(argv)
    check_label(parser, args.label)
    if args.label and args.out == DEFAULT_OUT:
        args.out = DEFAULT_OUT.with_name(f"dynamos_{args.label}.json")
    if args.report or args.gap_figure:
        return args
    args.dataset_root = check_mnist_root(parser, args.dataset_root)
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be at least 1.")
    return args


def build_stream(name: str, root: Path, replacement: bool = False) -> Any:
    from avalanche_neuromod.benchmarks import MNIST360, SplitMNIST

    if name == "mnist360":
        return MNIST360(dataset_root=root, replacement=replacement)
    return SplitMNIST(dataset_root=root, channels=3)


def _torch_logprob_agent() -> type:
    """A ``ChannelAgent`` whose ``log pi`` is ``torch.distributions.Bernoulli(probs=p).log_prob(a)``.

    As in the authors' code.
    """
    import torch

    from avalanche_neuromod.models import AgentDecision, ChannelAgent

    class TorchLogProbAgent(ChannelAgent):
        def forward(self, x):
            decision = super().forward(x)
            if not (self.training or self.sample_at_eval):
                return decision
            log_prob = torch.distributions.Bernoulli(probs=decision.prob).log_prob(decision.actions).sum(dim=1)
            return AgentDecision(decision.actions, log_prob, decision.attention, decision.prob)

    return TorchLogProbAgent


def _unmasked_backbone_plugin() -> type:
    """A ``DynamosPlugin`` whose backbone trains with every channel kept; the agents learn on a second pass.

    The step's pass (stream and buffer samples) runs ungated: the backbone's
    gradient, the buffer's stored logits and the samples it accepts are those
    of the ablation's objective. A second pass over the same samples, gated
    with the agents' drawn actions, gives the agents' log-probabilities and
    the correctness their reward reads; with the agents' inputs detached
    (``_detached``) and ``w_p`` = ``alpha_p`` = 0 it reaches the agents only,
    and it leaves the backbone's batch-norm running statistics as they were (momentum 0).
    Whether training the backbone under the drawn masks is what keeps the
    policy-only variant below the ablation. A diagnostic: joint pass only.
    """
    import torch

    from avalanche_neuromod.training import DynamosPlugin

    class UnmaskedBackbonePlugin(DynamosPlugin):
        def before_forward(self, strategy: Any, **kwargs: Any) -> None:
            if self.separate_replay_pass:
                raise ValueError("the unmasked-backbone diagnostic runs with one joint pass only.")
            super().before_forward(strategy, **kwargs)
            strategy.model.gating = False

        def after_forward(self, strategy: Any, **kwargs: Any) -> None:
            model = strategy.model
            model.gating = True
            if self._step["warm"]:
                return
            inputs, n = strategy.mbatch[0], self._step["n"]
            norms = self._backbone_norms(model)
            momenta = [m.momentum for m in norms]
            for m in norms:  # the running statistics stay the ungated pass's (restoring them in place would
                m.momentum = 0.0  # break the ungated pass's backward, which saved them)
            try:
                gated_logits = model(inputs).detach()
            finally:
                for m, momentum in zip(norms, momenta):
                    m.momentum = momentum
            super().after_forward(strategy, **kwargs)  # splits the gated pass's gates (model.last_gates)
            replay = self._step["replay"]
            labels = self._step["y"] if replay is None else torch.cat([self._step["y"], replay["labels"]])
            gated_correct = gated_logits.argmax(dim=1) == labels
            self._gated_correct = {"stream": gated_correct[:n], "replay": gated_correct[n:]}

        def _agent_terms(self, gates: Any, labels: Any, correct: Any, weight: float, tag: str) -> Dict[str, Any]:
            return super()._agent_terms(gates, labels, self._gated_correct[tag], weight, tag)

        def _backbone_norms(self, model: Any) -> List[Any]:
            """The backbone's batch norms (not the agents'), found once per model rather than every step."""
            if getattr(self, "_norms_of", None) is not model:
                agent_modules = {id(m) for agent in model.agents for m in agent.modules()}
                self._norms = [m for m in model.modules()
                               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and id(m) not in agent_modules]
                self._norms_of = model
            return self._norms

    return UnmaskedBackbonePlugin


def make_strategy(method: str, stream: str, buffer: int, n_classes: int, in_channels: int,
                  mixed_precision: bool = False, device: str = "cpu") -> Any:
    import torch
    from avalanche.training import DER, ER_ACE, Naive
    from avalanche.training.plugins import ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer

    from avalanche_neuromod.models import DynamosResNet18
    from avalanche_neuromod.training import ConsistencyReplay, Dynamos, paper_setting

    quiet = dict(evaluator=None, device=device)
    if method.startswith("dynamos"):
        model = DynamosResNet18(n_classes, in_channels=in_channels, detach_agent_inputs=method.endswith("_detached"),
                                mixed_precision=mixed_precision)
        if method == "dynamos_torch_logprob":
            for agent in model.agents:
                agent.__class__ = _torch_logprob_agent()
        overrides = {}
        if method == "dynamos_flipped_reward":
            overrides["penalty"] = -paper_setting(stream, buffer)["penalty"]
        if method == "dynamos_separate_passes":
            overrides["separate_replay_pass"] = True
        overrides.update(dict.fromkeys(ZEROED_TERMS.get(method, ()), 0.0))
        for prefix, keep in KEEP_RATIO_VARIANTS.items():  # dynamos_keep90_* runs at dynamos_keep90's ratio
            if method == prefix or method.startswith(prefix + "_"):
                overrides["keep_ratio"] = keep
        if method in PROTOTYPE_WEIGHT_VARIANTS:
            overrides["w_p"] = PROTOTYPE_WEIGHT_VARIANTS[method]
        strategy = Dynamos.preset(stream, buffer, model, **quiet, **overrides)
        if method in UNMASKED_BACKBONE:
            strategy.replay_plugin.__class__ = _unmasked_backbone_plugin()
        return strategy
    model = DynamosResNet18(n_classes, in_channels=in_channels, agents=False, mixed_precision=mixed_precision)
    if method.startswith("consistency"):
        return ConsistencyReplay.preset(stream, buffer, model, **quiet,
                                        separate_replay_pass=method == "consistency_separate_passes")
    settings = paper_setting(stream, STREAMS[stream][0] if buffer == NO_MEMORY else buffer)
    lr = {"der": DER_LR, "der_low_lr": DER_LOW_LR}.get(method, LR)
    common = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                  train_mb_size=settings["train_mb_size"], train_epochs=settings["train_epochs"],
                  eval_mb_size=256, **quiet)
    batch = settings["train_mb_size"]
    if method == "sgd":
        return Naive(**common)
    if method.startswith("der"):
        return DER(mem_size=buffer, batch_size_mem=batch, alpha=settings["alpha"], beta=settings["beta"], **common)
    if method == "er_ace":
        return ER_ACE(mem_size=buffer, batch_size_mem=batch, **common)
    # Avalanche's Replay wrapper has no storage_policy argument (its buffer balances experiences, which
    # cannot work with one experience per mini-batch): its plugin with a reservoir under Naive instead.
    replay = ReplayPlugin(mem_size=buffer, batch_size=batch, batch_size_mem=batch,
                          storage_policy=ReservoirSamplingBuffer(max_size=buffer))
    return Naive(plugins=[replay], **common)


def training_experiences(benchmark: Any, stream: str, max_batches: Optional[int]) -> List[Any]:
    if stream == "mnist360":
        return list(itertools.islice(benchmark.online_train_stream, max_batches))
    return list(benchmark.train_stream)


def planned_runs(buffers: Sequence[int], seeds: Sequence[int], methods: Sequence[str]) -> List[tuple]:
    """The ``(buffer, seed, method)`` runs of one stream, in order; ``sgd`` once per seed, with buffer 0."""
    planned: List[tuple] = []
    for buffer, seed, method in itertools.product(buffers, seeds, methods):
        key = (NO_MEMORY if method == "sgd" else buffer, seed, method)
        if key not in planned:
            planned.append(key)
    return planned


def run_one(benchmark: Any, stream: str, method: str, buffer: int, seed: int, max_batches: Optional[int],
            mixed_precision: bool = False, device: str = "cpu") -> Dict[str, Any]:
    import torch

    from avalanche_neuromod.analysis import collect_gates, keep_ratios
    from avalanche_neuromod.evaluation import accuracies
    from avalanche_neuromod.training import train_online

    torch.manual_seed(seed)
    in_channels = 1 if stream == "mnist360" else 3
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        strategy = make_strategy(method, stream, buffer, benchmark.n_classes, in_channels, mixed_precision, device)
    experiences = training_experiences(benchmark, stream, max_batches)
    started = time.perf_counter()
    train_online(strategy, experiences, chunk_size=TRAIN_CHUNK, desc=f"{stream} {method} buffer {buffer} seed {seed}")
    train_s = time.perf_counter() - started
    # Which classes the accuracy is lost on: early experiences' (forgetting), the last one's, or all alike.
    accuracy, per_class = accuracies(strategy.model, benchmark.test_stream, device=device)
    run: Dict[str, Any] = {
        "stream": stream, "method": method, "buffer": buffer, "seed": seed,
        "training_experiences": len(experiences), "train_seconds": train_s,
        # Seconds compare only within one machine: runs of a result file may come from several.
        "cpu_model": cpu_model(), "cpu_details": cpu_details(), "load_average_after": list(os.getloadavg()),
        "device": device_name(device),
        "accuracy": accuracy, "class_accuracy": per_class,
        # A run whose weights became NaN predicts one class: its accuracy is a divergence, not a result.
        "weights_finite": all(bool(torch.isfinite(p).all()) for p in strategy.model.parameters()),
    }
    buffer_obj = getattr(strategy, "buffer", None)
    if buffer_obj is not None and hasattr(buffer_obj, "n_seen"):
        run["buffer_filled"] = len(buffer_obj)
    if method.startswith("dynamos"):
        stats = collect_gates(strategy.model, benchmark.test_stream[0].dataset, device=device)
        run["keep_ratio_per_layer"] = keep_ratios(stats)
        with strategy.model.ungated():
            run["accuracy_every_channel"], run["class_accuracy_every_channel"] = accuracies(
                strategy.model, benchmark.test_stream, device=device)
        # Tested under the gating it was trained with (actions drawn, not p >= 0.5): how much the rule at
        # inference changes. Training is over, so seeding here changes no later number of this run.
        torch.manual_seed(seed)
        with strategy.model.sampling():
            run["accuracy_sampled"], _ = accuracies(strategy.model, benchmark.test_stream, device=device)
    return run


def device_name(device: str) -> str:
    """``"cpu"``, or the accelerator's name with the device string (``"cuda: NVIDIA H200"``)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device.type}: {torch.cuda.get_device_name(device)}"
    return device.type


def _run_key(run: Dict[str, Any]) -> tuple:
    return run["stream"], run["method"], run["buffer"], run["seed"]


def _mean_per_class(runs: Sequence[Dict[str, Any]], field: str) -> Dict[str, Any]:
    """``{field}_mean`` (``{class: mean %}`` over the runs that recorded ``field``) and ``{field}_seeds``; or ``{}``."""
    measured = [r for r in runs if field in r]
    if not measured:
        return {}
    # A run's keys are ints when just measured, strings once read back from JSON.
    per_run = [{int(c): 100 * v for c, v in r[field].items()} for r in measured]
    classes = sorted({c for accs in per_run for c in accs})
    return {f"{field}_mean": {c: statistics.mean(accs[c] for accs in per_run) for c in classes},
            f"{field}_seeds": [r["seed"] for r in measured]}


def summarise(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    keys = sorted({(r["stream"], r["buffer"], r["method"]) for r in runs},
                  key=lambda k: (k[0], k[1], METHODS.index(k[2])))
    for stream, buffer, method in keys:
        group = [r for r in runs if (r["stream"], r["buffer"], r["method"]) == (stream, buffer, method)]
        accs = [100 * r["accuracy"] for r in group]
        row = {
            "stream": stream, "buffer": buffer, "method": method, "seeds": [r["seed"] for r in group],
            "accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
            "train_seconds_mean": statistics.mean(r["train_seconds"] for r in group),
            "training_experiences": group[0]["training_experiences"],
            "paper": PAPER.get((stream, method), {}).get(buffer),
            "diverged_seeds": [r["seed"] for r in group if r.get("weights_finite") is False],
        }
        if method.startswith("dynamos"):
            row["keep_ratio_per_layer"] = [statistics.mean(v) for v in zip(*(r["keep_ratio_per_layer"] for r in group))]
            for field in ("accuracy_every_channel", "accuracy_sampled"):
                measured = [r for r in group if field in r]
                if measured:
                    row[f"{field}_mean"] = statistics.mean(100 * r[field] for r in measured)
                    row[f"{field}_seeds"] = [r["seed"] for r in measured]
        row.update(_mean_per_class(group, "class_accuracy"))
        row.update(_mean_per_class(group, "class_accuracy_every_channel"))
        rows.append(row)
    return rows


MNIST360_MAX_MINUTES = 5.0
MAX_RATIO_TO_DER = 1.5
MNIST360_BATCHES = 3387


NOT_RECORDED = "machine not recorded"
"""The machine of runs from before the result files recorded each run's processor."""


def run_machine(run: Dict[str, Any]) -> str:
    """The processor a run trained on (:data:`NOT_RECORDED` for older runs), with its accelerator if it had one."""
    machine = run.get("cpu_model") or NOT_RECORDED
    device = run.get("device", "cpu")
    return machine if device == "cpu" else f"{machine} + {device}"


def one_machine_seconds(runs: Sequence[Dict[str, Any]], stream: str, buffer: int) -> Optional[Dict[str, Any]]:
    """Mean training seconds of Dynamos and DER at ``(stream, buffer)`` on one machine, for the time targets.

    Seconds from different machines do not compare, so the machine is the one
    of the newest Dynamos run there, and only runs of that machine count.
    None when no Dynamos run is there, or when it ran on an accelerator: the
    time targets are the issue's for two CPU cores.
    """
    def group(method: str, machine: Optional[str] = None) -> List[Dict[str, Any]]:
        return [r for r in runs if (r["stream"], r["buffer"], r["method"]) == (stream, buffer, method)
                and machine in (None, run_machine(r))]

    dynamos = group("dynamos")
    if not dynamos or dynamos[-1].get("device", "cpu") != "cpu":
        return None
    machine = run_machine(dynamos[-1])
    dynamos, der = group("dynamos", machine), group("der", machine)
    return {"machine": machine, "dynamos_seconds": statistics.mean(r["train_seconds"] for r in dynamos),
            "dynamos_runs": len(dynamos), "training_experiences": dynamos[-1]["training_experiences"],
            "der_seconds": statistics.mean(r["train_seconds"] for r in der) if der else None, "der_runs": len(der)}


def check_targets(summary: List[Dict[str, Any]], runs: Sequence[Dict[str, Any]] = ()) -> List[Dict[str, Any]]:
    """The issue's targets, for every stream and buffer whose rows were run.

    :param summary: :func:`summarise`'s rows (accuracy targets).
    :param runs: the runs (time targets, from the runs of one machine: :func:`one_machine_seconds`).
    """
    by = {(r["stream"], r["buffer"], r["method"]): r for r in summary}
    targets = []
    for (stream, buffer, method), row in by.items():
        if method != "dynamos":
            continue
        where = {"stream": stream, "buffer": buffer}
        # A reduced MNIST-360 run (--max-batches) is not held to the paper's accuracy.
        full = stream != "mnist360" or row["training_experiences"] == MNIST360_BATCHES
        if row["paper"] is not None and full:
            mean, std = row["paper"]
            floor = mean - (std or 0.0)
            targets.append(target(f"Dynamos accuracy within one paper std of {mean:.2f}% or above",
                                  row["accuracy_mean"] >= floor,
                                  f"{_pm(row['accuracy_mean'], row['accuracy_std'])}% over seeds {row['seeds']}",
                                  **where))
        ablation = by.get((stream, buffer, "consistency"))
        if ablation:
            targets.append(target("ablation (ConsistencyReplay) below Dynamos, as in the paper",
                                  ablation["accuracy_mean"] < row["accuracy_mean"],
                                  f"{ablation['accuracy_mean']:.2f}% vs {row['accuracy_mean']:.2f}%", **where))
        seconds = one_machine_seconds(runs, stream, buffer)
        if seconds is None:
            continue
        machine = f"{seconds['machine']}, {_count(seconds['dynamos_runs'], 'Dynamos run')}"
        if seconds["der_seconds"] is not None:
            ratio = seconds["dynamos_seconds"] / seconds["der_seconds"]
            targets.append(target(f"Dynamos trains in at most {MAX_RATIO_TO_DER:g}x the time of Avalanche's DER",
                                  ratio <= MAX_RATIO_TO_DER,
                                  f"{ratio:.2f}x ({machine}, {_count(seconds['der_runs'], 'DER run')})", **where))
        if stream == "mnist360":
            per_batch = seconds["dynamos_seconds"] / seconds["training_experiences"]
            minutes = per_batch * MNIST360_BATCHES / 60
            targets.append(target(f"a full MNIST-360 run in at most {MNIST360_MAX_MINUTES:g} min",
                                  minutes <= MNIST360_MAX_MINUTES,
                                  f"{per_batch * 1000:.0f} ms per online mini-batch: {minutes:.1f} min ({machine})",
                                  **where))
    return targets


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _seeds(seeds: Sequence[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _pm(mean: float, std: Optional[float]) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} +- {std:.2f}"


def markdown_section(result: Dict[str, Any]) -> str:
    label = result["settings"].get("label")
    start, end = section_markers("dynamos", label)
    lines = section_opening(start, "Dynamos (issue 8)" + (f": {label}" if label else ""), result, threads=N_THREADS,
                            data=f"real MNIST from `{result['dataset_root']}`; streams "
                                 f"{', '.join(sorted({r['stream'] for r in result['runs']}))}.")
    methods = {r["method"] for r in result["runs"]}
    lines.append(f"- Scale: {result['scale']}")
    lines += [f"- {note}" for note in result.get("how_run", [])]
    if methods & {"der", "er_ace", "replay"}:
        lines.append(f"- Avalanche's DER, ER-ACE and Replay use the backbone without agents, plain SGD lr {LR} (DER: "
                     f"{DER_LR}; at {LR} its weights become NaN on MNIST-360), the memory size and memory batch of "
                     "the Dynamos row (DER: its alpha and beta); not tuned for them.")
    diagnostics = diagnostics_note(methods)
    if diagnostics:
        lines.append(f"- Diagnostics of the gap to the paper, not the paper's method: {diagnostics}.")
    machines = collections.Counter(run_machine(r) for r in result["runs"])
    if len(machines) > 1:
        lines.append("- Runs from more than one machine (" + ", ".join(
            f"{machine}: {_count(n, 'run')}" for machine, n in machines.items()) + "); the seconds of the table "
            "mix them, the time targets compare runs of one machine (the newest Dynamos run's).")
    lines.append("")
    # Sections whose runs predate the sampled-gates test keep their columns.
    sampled = any("accuracy_sampled_mean" in row for row in result["summary"])
    rows = []
    for row in result["summary"]:
        paper = "" if row["paper"] is None else _pm(*row["paper"])
        keep = ", ".join(f"{k:.2f}" for k in row.get("keep_ratio_per_layer", []))
        accuracy = _pm(row["accuracy_mean"], row["accuracy_std"])
        diverged = row.get("diverged_seeds")
        if diverged:
            accuracy += f" (NaN weights: {_seeds(diverged)})"
        rows.append([row["stream"], row["buffer"] or "none", row["method"], ", ".join(map(str, row["seeds"])),
                     accuracy, paper, f"{row['train_seconds_mean']:.0f}", keep,
                     _mean_of_some(row, "accuracy_every_channel")])
        if sampled:
            rows[-1].append(_mean_of_some(row, "accuracy_sampled"))
    lines += markdown_table(["stream", "buffer", "method", "seeds", "final accuracy (%)", "paper (%)",
                             "train s (mean)", "keep ratio per gated layer", "every channel kept (%)",
                             *(["gates sampled (%)"] if sampled else [])], rows,
                            align="lrllrrrlr" + ("r" if sampled else ""))
    lines += class_accuracy_lines(result["summary"])
    if result.get("targets"):
        lines += ["", *target_lines(result["targets"])]
    lines.append(end)
    return "\n".join(lines)


def _mean_of_some(row: Dict[str, Any], field: str) -> str:
    """A row's mean of ``field`` (%), naming its seeds when only some runs recorded it; empty if none did."""
    if f"{field}_mean" not in row:
        return ""
    text = f"{row[f'{field}_mean']:.2f}"
    if row[f"{field}_seeds"] != row["seeds"]:
        text += f" ({_seeds(row[f'{field}_seeds'])})"
    return text


def class_accuracy_lines(summary: Sequence[Dict[str, Any]]) -> List[str]:
    """A table of the final accuracy on each class, for the rows whose runs recorded it (none: no lines).

    A Dynamos row whose runs were also tested with every channel kept gets a second line, so named.
    """
    rows, classes = [], set()
    for row in summary:
        for field, suffix in (("class_accuracy", ""), ("class_accuracy_every_channel", " (every channel kept)")):
            if row.get(f"{field}_mean"):
                means = {int(c): v for c, v in row[f"{field}_mean"].items()}
                classes |= set(means)
                rows.append((row, row["method"] + suffix, row[f"{field}_seeds"], means))
    if not rows:
        return []
    classes = sorted(classes)
    cells = [[row["stream"], row["buffer"] or "none", method, ", ".join(map(str, seeds)),
              *(f"{means[c]:.1f}" if c in means else "" for c in classes)] for row, method, seeds, means in rows]
    return ["", "Final accuracy per class (%), mean over the seeds named (runs that recorded it):", "",
            *markdown_table(["stream", "buffer", "method", "seeds", *map(str, classes)], cells,
                            align="lrll" + "r" * len(classes))]


def report(args: argparse.Namespace) -> int:
    """Recompute the summary and targets of an earlier result file and rewrite its section."""
    result = json.loads(args.out.read_text())
    result.pop("notes", None)  # earlier files wrote the targets as free text
    result["summary"] = summarise(result["runs"])
    result["targets"] = check_targets(result["summary"], result["runs"])
    print("\n".join(target_lines(result["targets"], markdown=False)))
    publish(result, args.out, None if args.no_docs else markdown_section(result),
            *section_markers("dynamos", result["settings"].get("label")))
    return 0


def gap_points(results: Sequence[Dict[str, Any]]) -> Dict[tuple, Dict[str, tuple]]:
    """Final accuracy (%) of each of ``GAP_METHODS`` and of the paper's Dynamos, per stream and buffer.

    :param results: result files' contents, in order of precedence: a run (stream,
        method, buffer, seed) found in several comes from the first.
    :returns: ``{(stream, buffer): {name: (mean, std or None, seeds)}}`` with
        ``"paper"`` for the paper's Dynamos (seeds: None); only the settings
        where the paper gives a Dynamos figure.
    """
    runs: Dict[tuple, Dict[str, Any]] = {}
    for result in results:
        for run in result["runs"]:
            runs.setdefault(_run_key(run), run)
    points: Dict[tuple, Dict[str, tuple]] = {}
    for (stream, method), by_buffer in PAPER.items():
        if method != "dynamos":
            continue
        for buffer, (mean, std) in by_buffer.items():
            point = {"paper": (mean, std, None)}
            for name in GAP_METHODS:
                seeds = sorted(key[3] for key in runs if key[:3] == (stream, name, buffer))
                if seeds:
                    accs = [100 * runs[(stream, name, buffer, seed)]["accuracy"] for seed in seeds]
                    point[name] = (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else None, seeds)
            points[(stream, buffer)] = point
    return points


def draw_gap_figure(points: Dict[tuple, Dict[str, tuple]], path: Path) -> str:
    """Grouped bars (mean, std over seeds) per stream and buffer, the paper's Dynamos as a marker; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from avalanche_neuromod.analysis import save_figure

    streams = [s for s in STREAMS if any(k[0] == s for k in points)]
    fig, axes = plt.subplots(1, len(streams), figsize=(5.5 * len(streams), 4.5), squeeze=False)
    width = 0.8 / len(GAP_METHODS)
    for ax, stream in zip(axes[0], streams):
        buffers = sorted(b for s, b in points if s == stream)
        for i, (name, label) in enumerate(GAP_METHODS.items()):
            xs = [j + (i - (len(GAP_METHODS) - 1) / 2) * width for j, b in enumerate(buffers)
                  if name in points[(stream, b)]]
            values = [points[(stream, b)][name] for b in buffers if name in points[(stream, b)]]
            ax.bar(xs, [v[0] for v in values], width, yerr=[v[1] or 0.0 for v in values], capsize=3, label=label)
        paper = [points[(stream, b)]["paper"] for b in buffers]
        ax.errorbar(range(len(buffers)), [p[0] for p in paper], yerr=[p[1] or 0.0 for p in paper], fmt="kD",
                    capsize=4, label="paper's Dynamos")
        ax.set_xticks(range(len(buffers)), [str(b) for b in buffers])
        ax.set_xlabel("buffer size")
        ax.set_ylabel("final accuracy (%)")
        ax.set_title({"mnist360": "MNIST-360", "seq-mnist": "Seq-MNIST"}.get(stream, stream))
        ax.set_ylim(40 if stream == "mnist360" else 90, 100)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    counts = sorted({len(v[2]) for point in points.values() for v in point.values() if v[2]})
    fig.suptitle(f"Dynamos against its ablation: final accuracy, mean and std over "
                 f"{'/'.join(map(str, counts))} seeds (full streams)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return portable_path(save_figure(fig, path))


def gap_figure(args: argparse.Namespace) -> int:
    """Draw :data:`GAP_FIGURE` from the result files of :data:`GAP_SOURCES` next to ``--out``."""
    paths = [args.out.parent / name for name in GAP_SOURCES]
    missing = [portable_path(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"--gap-figure reads {', '.join(GAP_SOURCES)}; missing: {', '.join(missing)}. Run the "
                         f"benchmark (or --label term-ablation / term-ablation-seqmnist) first.")
    points = gap_points([json.loads(p.read_text()) for p in paths])
    for (stream, buffer), point in sorted(points.items()):
        print(f"{stream} buffer {buffer}: " + "; ".join(
            f"{name} {mean:.2f}" + (f" +- {std:.2f}" if std is not None else "") + (f" (seeds {seeds})" if seeds else "")
            for name, (mean, std, seeds) in point.items()))
    print("Wrote", draw_gap_figure(points, GAP_FIGURE if args.out.parent == DEFAULT_OUT.parent
                                   else args.out.parent / GAP_FIGURE.name))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args)
    if args.gap_figure:
        return gap_figure(args)
    import torch

    torch.set_num_threads(N_THREADS)
    buffers = {s: (args.buffers or list(STREAMS[s])) for s in args.streams}
    for stream, sizes in buffers.items():
        bad = [b for b in sizes if b not in STREAMS[stream]]
        if bad:
            raise SystemExit(f"{stream} has paper settings for buffers {list(STREAMS[stream])}, not {bad}.")
    full = args.max_batches is None
    result: Dict[str, Any] = {
        **result_header(argv, __file__, args.dataset_root),
        "settings": {"streams": args.streams, "buffers": buffers, "seeds": args.seeds, "methods": args.methods,
                     "max_batches": args.max_batches, "replacement": args.replacement, "lr": LR,
                     "mixed_precision": args.mixed_precision, "label": args.label, "device": args.device},
        "scale": ("full streams" if full else
                  f"REDUCED: MNIST-360 stopped after its first {args.max_batches} of 3,387 online mini-batches; "
                  f"accuracies are not comparable with the paper's")
                 + ("; MNIST-360 drawn with replacement inside each chunk (the authors' code)" if args.replacement
                    else "")
                 + ("; mixed precision: bfloat16 convolutions under autocast in every network" if args.mixed_precision
                    else "")
                 + ("" if args.device == "cpu" else f"; trained and tested on {args.device}"),
        "runs": [], "summary": [],
    }
    if args.append:
        # A run of one device does not replace the same seed's run of another: the device is part of the scale.
        previous = load_previous(args.out, {"max_batches": args.max_batches, "replacement": args.replacement,
                                            "mixed_precision": args.mixed_precision, "device": args.device},
                                 defaults={"replacement": False, "mixed_precision": False, "device": "cpu"})
        result["runs"], result["commands"] = previous["runs"], previous["commands"] + [result["command"]]
        result["how_run"] = previous["how_run"] + args.note
        result["summary"] = summarise(result["runs"])
    else:
        result["commands"] = [result["command"]]
        result["how_run"] = list(args.note)
    for stream in args.streams:
        benchmark = build_stream(stream, args.dataset_root, args.replacement)
        for buffer, seed, method in planned_runs(buffers[stream], args.seeds, args.methods):
            run = run_one(benchmark, stream, method, buffer, seed, args.max_batches if stream == "mnist360" else None,
                          args.mixed_precision, args.device)
            result["runs"] = [r for r in result["runs"] if _run_key(r) != _run_key(run)] + [run]
            print(f"{stream} buffer {buffer} seed {seed} {method}: accuracy {100 * run['accuracy']:.2f}%, "
                  f"{run['train_seconds']:.0f} s" + (f", keep ratios {run['keep_ratio_per_layer']}"
                                                      if "keep_ratio_per_layer" in run else ""), flush=True)
            result["summary"] = summarise(result["runs"])
            write_json(result, args.out)
    result["targets"] = check_targets(result["summary"], result["runs"])
    print("\n".join(target_lines(result["targets"], markdown=False)))
    publish(result, args.out, None if args.no_docs else markdown_section(result),
            *section_markers("dynamos", result["settings"].get("label")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
