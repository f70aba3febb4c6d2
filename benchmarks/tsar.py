"""TSAR: meta-learn on Omniglot small1, then domain transfer one image at a time.

For every meta-learning seed and every regulated method (Grow, Sculpt,
with full or low-memory regulation heads: factored, low-rank, hashed, sparse;
quantized and projected ones converted from the full heads' checkpoint) and
for No Regulation, the script meta-learns for ``--meta-iterations`` with
the OML protocol and evaluates transfer along the way (every
``--curve-every`` meta-iterations, on the first reported Omniglot sequence)
to draw the learning curve. At the budget it transfers to every sequence of
``--transfer-seeds``:

- 100 unseen Omniglot classes (small2's Japanese, Sanskrit, Tagalog) x 20
  drawings: recall after the sequence, recall by position in the sequence;
- the same classes with 15 drawings learned and 5 held out: held-out
  accuracy (first transfer seed only, to save time);
- MNIST and Fashion-MNIST, 10 classes x 30 images (+10 held out per class).

Every transfer also records the accuracy on each class's images right after
that class was learned (``ImmediateAccuracyPlugin``), which tells classes
never learned from classes learned and then forgotten. ``--second-order``
meta-learns through the inner loop; ``--append`` adds runs (another meta
seed) to an earlier result file of the same scale.

During the first reported Omniglot transfer of every regulated run the
regulator's C3 masks are recorded as each image is learned; the paper's
regulation figures are drawn from them into ``--figures``
(``tsar[_LABEL]_regulation_ccdf.png``: active synapses per image, all
regulated runs; ``tsar[_LABEL]_task_activity.png`` and
``tsar[_LABEL]_total_regulation.png``: the first Grow run). An invocation
with ``--append`` draws its own runs' figures beside the earlier ones
(``tsar[_LABEL]_N_*.png``, N the invocation's number).

Scratch and Reservoir need no meta-learning and run on the same sequences.
The transfer learning rate of each method is chosen on an Omniglot
sequence that is never reported (``--selection-seed``: another class
order and draw) from ``--lr-grid``.

    python benchmarks/tsar.py --dataset-root $AVALANCHE_NEUROMOD_DATA

writes ``benchmarks/results/tsar.json`` and the TSAR section of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import collections
import copy
import functools
import itertools
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from _report import (REPO_ROOT, add_dataset_root_argument, check_mnist_root, cpu_model, data_files, figure_lines,
                     load_previous, markdown_table, portable_path, publish, result_header, section_markers,
                     section_opening, target, target_lines, write_json)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "tsar.json"
IMAGES = REPO_ROOT / "docs" / "images"
N_THREADS = 2
SCALE_SETTINGS = ("meta_iterations", "second_order", "classifier_channels", "regulator_channels", "n_classes",
                  "omniglot_classes", "selection_seed", "transfer_optimizer")
"""The settings that runs merged by ``--append`` must share."""
METHODS = ("grow", "sculpt", "no_regulation", "oml", "scratch", "reservoir")
META_LEARNED = ("grow", "sculpt", "no_regulation", "oml")
UNREGULATED = ("no_regulation", "oml", "scratch")
"""Methods without a regulator: the head settings do not apply (their head is "-")."""
REGULATED = ("grow", "sculpt", "reservoir")
TRANSFERS = ("omniglot", "omniglot_heldout", "mnist", "fashion_mnist")
LOW_MEMORY_HEADS = ("low_rank", "factored", "hashed", "sparse", "quantized", "projected")
DEFAULT_PROJECTED = (0, 1, 2)
"""What ``Regulator.projected`` projects by default (the convolutions' heads): a head name says other sets only."""

PAPER = {
    "ImageNet (data rich)": {"grow": 92.2, "sculpt": 57.5, "scratch": 0.97, "oml": 13.87},
    "Omniglot 600 classes, recall": {"grow": 95.2, "sculpt": 15.1},
    "Omniglot 600 classes, held-out": {"grow": 43.8},
}
"""The paper's figures (%), for reference only: other data, sizes and budgets."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_root_argument(parser)
    parser.add_argument("--meta-iterations", type=int, default=3000, help="meta-learning budget per run.")
    parser.add_argument("--curve-every", type=int, default=500,
                        help="evaluate Omniglot transfer every this many meta-iterations (0: only at the budget).")
    parser.add_argument("--meta-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--transfer-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--selection-seed", type=int, default=1000,
                        help="the Omniglot sequence the transfer learning rate is chosen on (never reported).")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1e-3, 3e-4, 1e-4])
    parser.add_argument("--curve-lr", type=float, default=1e-4,
                        help="transfer learning rate of the curve points before the budget.")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--heads", nargs="+",
                        choices=("full", "factored", "low_rank", "hashed", "sparse", "quantized", "projected"),
                        default=["full"])
    parser.add_argument("--second-order", action="store_true",
                        help="second-order OML: differentiate through the inner loop (default: first-order).")
    parser.add_argument("--rank", type=int, default=4, help="rank of the low-rank regulation heads.")
    parser.add_argument("--code", type=int, default=24, help="code size of the factored regulation heads.")
    parser.add_argument("--gain", type=float, default=1.0,
                        help="read-out gain of the factored and sparse regulation heads (FactoredHead's and "
                             "SparseHead's gain; a run with a gain other than 1 is the head 'factored-gG' or "
                             "'sparse-sS-gG').")
    parser.add_argument("--pool", type=int, default=512,
                        help="shared read-outs of each hashed regulation head (HashedHead; the head 'hashed-pP').")
    parser.add_argument("--pool-total", type=int, default=None,
                        help="instead of --pool: this many read-outs over all hashed heads, split in proportion "
                             "to each regulated weight's entries (proportional_pools; the head 'hashed-tT').")
    parser.add_argument("--hashes", type=int, default=1,
                        help="read-outs per mask entry of the hashed regulation heads (HashedHead's hashes; a run "
                             "with more than one is the head 'hashed-tT-kK' or 'hashed-pP-kK').")
    parser.add_argument("--inputs", type=int, default=16,
                        help="features each mask entry of the sparse regulation heads reads (SparseHead; the head "
                             "'sparse-sS').")
    parser.add_argument("--prune-full", action="store_true",
                        help="sparse heads not meta-learned: the full-head run's meta-learned checkpoint (same "
                             "method, meta seed and settings, in --checkpoint-dir) with each head row pruned to its "
                             "--inputs largest weights (Regulator.sparsified; the head 'sparse-sS-pruned').")
    parser.add_argument("--bits", type=int, nargs="+", default=[3],
                        help="bits per weight of the quantized regulation heads (QuantizedHead; the head "
                             "'quantized-bB'), one number for all heads or one per regulated weight (the head "
                             "'quantized-bB1.B2.B3.B4'). Quantized heads are never meta-learned: they are the "
                             "full-head run's checkpoint (same method, meta seed and settings, in --checkpoint-dir) "
                             "with every head row quantised (Regulator.quantized).")
    parser.add_argument("--directions", type=int, default=24,
                        help="feature directions each entry of the projected regulation heads reads (ProjectedHead; "
                             "the head 'projected-kK'). Projected heads are never meta-learned: they are the "
                             "full-head run's checkpoint (same method, meta seed and settings, in --checkpoint-dir) "
                             "with the rows of --project-heads projected onto the top K singular directions of the "
                             "trunk's features of the meta-training images (Regulator.projected).")
    parser.add_argument("--project-heads", type=int, nargs="+", default=None, metavar="HEAD",
                        help="the heads --heads projected projects (0-2 the convolutions, 3 the class prediction "
                             "layer; default 0 1 2, any other set adds '-p0.1.2.3' to the head's name).")
    parser.add_argument("--calibrate", action="store_true",
                        help="quantized heads: correct each entry's bias for its row's mean quantisation error "
                             "over the meta-training images (Regulator.quantized's calibration); sparse heads with "
                             "--prune-full: fold the pruned weights' mean contribution over those images into each "
                             "bias (Regulator.sparsified's calibration); suffix '-cal'.")
    parser.add_argument("--dequantize", action="store_true",
                        help="quantized heads decoded back into full float heads before the transfer "
                             "(Regulator.dequantized; suffix '-dq'): rows kept in --bits bits, every weight "
                             "learning in transfer. The regulator's memory is then the full head's; the result "
                             "records the quantized one as stored_regulator_bytes.")
    parser.add_argument("--freeze-head-weights", type=int, nargs="*", default=None, metavar="HEAD",
                        help="domain transfer with the regulation heads' weights fixed, only per-entry biases "
                             "(and quantized steps) learning in them (TSAR's freeze_head_weights; suffix '-fw'): "
                             "every head without a value, or the heads given (0-2 the convolutions, 3 the class "
                             "prediction layer; suffix '-fw0.1.2'); the meta-learned checkpoint is the same as "
                             "without it.")
    parser.add_argument("--class-head-lr-scale", type=float, nargs="+", default=[1.0],
                        help="Grow and Sculpt transfer with the class prediction layer's regulation head weights "
                             "learning this many times faster than --lr-grid's rate (TSAR's class_head_lr_scale; "
                             "suffix '-csS'); several values: each run chooses the scale with its rate on the "
                             "selection sequence (suffix '-csA_B_C'). The meta-learned checkpoint is the same as "
                             "without it.")
    parser.add_argument("--freeze-shared", action="store_true",
                        help="domain transfer with what low-memory regulation heads share among mask entries held "
                             "fixed (TSAR's freeze_shared; the head gets the suffix '-fs'); the meta-learned "
                             "checkpoint is the same as without it.")
    parser.add_argument("--transfers", nargs="+", choices=TRANSFERS, default=list(TRANSFERS))
    parser.add_argument("--transfer-optimizer", choices=("adam", "sgd"), default="adam",
                        help="the update of domain transfer: the paper's Adam, or plain SGD (the update the inner "
                             "loop of meta-learning uses; a diagnostic).")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="keep each run's meta-learner here: a killed run resumes where its last checkpoint "
                             "left it, and a finished one is reused (e.g. for transfers with other settings) "
                             "instead of meta-learning again.")
    parser.add_argument("--classifier-channels", type=int, default=32)
    parser.add_argument("--oml-channels", type=int, default=64,
                        help="channels of the OML baseline's five convolutions (OMLClassifier; OML's own: 256).")
    parser.add_argument("--oml-hidden", type=int, default=256,
                        help="outputs of the OML baseline's first linear layer (OML's own: 1024).")
    parser.add_argument("--regulator-channels", type=int, default=32)
    parser.add_argument("--n-classes", type=int, default=200, help="outputs of the class prediction layer.")
    parser.add_argument("--omniglot-classes", type=int, default=100,
                        help="unseen Omniglot classes per transfer sequence (of the 106).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--figures", type=Path, default=IMAGES, help="folder of the regulation figures.")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/results.md.")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: re-read --out and rewrite its summary, notes, memory / recall figure and "
                             "docs section.")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs of --out (same scale settings) and add or replace this invocation's.")
    parser.add_argument("--label", default="",
                        help="a name for this grid: its own section of docs/results.md (tsar:LABEL) beside the "
                             "others, and its own result file (default --out: tsar_LABEL.json, '-' written '_').")
    args = parser.parse_args(argv)
    if args.label and args.out == DEFAULT_OUT:
        args.out = DEFAULT_OUT.with_name(f"tsar_{args.label.replace('-', '_')}.json")
    return args


def regulator_bytes(model) -> Dict[str, int]:
    """Bytes of the regulator's parameters (and buffers: a hashed head's assignment), and with Adam's two moments
    of the parameters (what training holds)."""
    if model.regulator is None:
        return {"parameters": 0, "with_adam": 0}
    n = sum(p.numel() * p.element_size() for p in model.regulator.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.regulator.buffers())
    return {"parameters": n + buffers, "with_adam": 3 * n + buffers}


def build_transfers(root: Path, seeds: Sequence[int], selection_seed: int, wanted: Sequence[str],
                    omniglot_classes: int) -> Dict:
    from avalanche_neuromod.benchmarks import DomainTransfer

    def omniglot(seed: int, **kwargs: Any):
        return DomainTransfer("omniglot", n_classes=omniglot_classes, seed=seed, dataset_root=root, **kwargs)

    streams: Dict[Any, Any] = {("selection", selection_seed): omniglot(selection_seed)}
    for seed in seeds:
        if "omniglot" in wanted:
            streams[("omniglot", seed)] = omniglot(seed)
        if "omniglot_heldout" in wanted and seed == seeds[0]:
            streams[("omniglot_heldout", seed)] = omniglot(seed, n_train=15)
        for source in ("mnist", "fashion_mnist"):
            if source in wanted:
                streams[(source, seed)] = DomainTransfer(source, n_images=40, n_train=30, seed=seed,
                                                         dataset_root=root)
    return streams


def transfer(strategy_cls, model, benchmark, lr: float, seed: int, plugins: Sequence[Any] = (),
             immediate: bool = False, optimizer_name: str = "adam") -> Dict[str, Any]:
    """One transfer sequence; recall overall and by position, held-out accuracy, seconds.

    ``immediate``: also the accuracy on each class right after it was learned (reported sequences only:
    the learning-rate choice and the curve points need recall alone).
    """
    import torch

    from avalanche_neuromod.evaluation import ImmediateAccuracyPlugin, make_evaluator

    torch.manual_seed(seed)
    recorder = ImmediateAccuracyPlugin() if immediate else None
    strategy = strategy_cls(model=copy.deepcopy(model), lr=lr, optimizer_name=optimizer_name, seed=seed,
                            plugins=[*plugins, *([recorder] if recorder else [])],
                            evaluator=make_evaluator(forgetting=False, bwt=False, timing=False, progress_bar=False))
    start = time.perf_counter()
    strategy.train(benchmark.train_stream)
    seconds = time.perf_counter() - start
    out: Dict[str, Any] = {"train_seconds": seconds, "steps": sum(len(e.dataset) for e in benchmark.train_stream)}
    if recorder is not None:
        out["immediate_by_position"] = recorder.in_order()
    for name in ("test", "heldout"):
        stream = getattr(benchmark, f"{name}_stream", None)
        if stream is None:
            continue
        results = strategy.eval(stream)
        key = f"Top1_Acc_Stream/eval_phase/{name}_stream/Task000"
        out["recall" if name == "test" else "heldout"] = results[key]
        if name == "test":
            prefix = f"Top1_Acc_Exp/eval_phase/{name}_stream/Task000/Exp"
            out["recall_by_position"] = [results[f"{prefix}{i:03d}"] for i in range(len(stream))]
    return out


def strategy_for(method: str, freeze_shared: bool = False, freeze_head_weights: Union[bool, List[int]] = False,
                 class_head_lr_scale: float = 1.0):
    """The method's transfer strategy (``freeze_shared``: a meta-learned regulator's shared head maps fixed;
    ``freeze_head_weights``: every head's weights fixed, or those of the heads listed; ``class_head_lr_scale``:
    the class prediction layer's regulation head learning that many times faster)."""
    from avalanche_neuromod.training import TSAR, TSARNoRegulation, TSAROML, TSARReservoir, TSARScratch

    strategy = {"grow": TSAR, "sculpt": TSAR, "no_regulation": TSARNoRegulation, "oml": TSAROML,
                "scratch": TSARScratch, "reservoir": TSARReservoir}[method]
    if strategy is not TSAR or not (freeze_shared or freeze_head_weights or class_head_lr_scale != 1):
        return strategy
    scale = {"class_head_lr_scale": class_head_lr_scale} if class_head_lr_scale != 1 else {}
    return functools.partial(strategy, freeze_shared=freeze_shared, freeze_head_weights=freeze_head_weights, **scale)


def fresh_model(method: str, head: str, args: argparse.Namespace, seed: int):
    import torch

    from avalanche_neuromod.models import TSARNet, proportional_pools

    if method == "oml":
        torch.manual_seed(seed)
        return TSARNet.oml(args.n_classes, channels=args.oml_channels, hidden=args.oml_hidden)
    pool = args.pool
    if args.pool_total is not None:  # before the seed: the shapes come from a classifier built for them only
        shapes = TSARNet.build(args.n_classes, classifier_channels=args.classifier_channels, bias=None)
        pool = proportional_pools(shapes.classifier.regulated_shapes, args.pool_total)
    torch.manual_seed(seed)
    # Reservoir: random masks around one half (a Grow-biased random regulator would mask everything)
    bias = {"grow": "grow", "sculpt": "sculpt", "reservoir": "sculpt"}.get(method)
    return TSARNet.build(args.n_classes, classifier_channels=args.classifier_channels,
                         regulator_channels=args.regulator_channels, bias=bias, head=head, rank=args.rank,
                         code=args.code, gain=args.gain, pool=pool, hashes=args.hashes, inputs=args.inputs,
                         directions=args.directions, project=args.project_heads)


def head_label(head: str, args: argparse.Namespace, transfer: bool = True) -> str:
    """The name a run's head gets in the results: ``factored-g8`` for factored heads of gain 8, ``hashed-p512``
    (``hashed-t2048`` for 2,048 read-outs split in proportion to the layers; ``-k2`` added for 2 read-outs per
    entry), ``sparse-s16-g18`` for sparse heads of 16 inputs and gain 18 (``-pruned`` added for
    ``--prune-full``, ``-pruned-cal`` with ``--calibrate``), ``quantized-b3`` for quantized heads of 3 bits
    (``quantized-b3.3.3.2`` for bits per layer;
    ``-cal`` added for ``--calibrate``, ``-dq`` for ``--dequantize``), ``projected-k24`` for the convolutions'
    heads projected onto 24 feature directions (``-p0.1.2.3`` added when ``--project-heads`` names other heads);
    ``-fs`` for a low-memory head transferred
    with ``--freeze-shared``, ``-fw`` (``-fw0.1.2`` for heads 0 to 2) for any head transferred with
    ``--freeze-head-weights`` and ``-cs3`` for a class prediction head learning 3 times faster
    (``--class-head-lr-scale 3``; ``-cs2_3_5`` for a scale chosen from 2, 3 and 5), unless ``transfer`` is
    False)."""
    if head == "sparse":
        name = f"sparse-s{args.inputs}" + (f"-g{args.gain:g}" if args.gain != 1.0 else "")
        name += ("-pruned" + ("-cal" if args.calibrate else "")) if args.prune_full else ""
    elif head == "hashed":
        name = f"hashed-p{args.pool}" if args.pool_total is None else f"hashed-t{args.pool_total}"
        name += f"-k{args.hashes}" if args.hashes != 1 else ""
    elif head == "quantized":
        name = f"quantized-b{'.'.join(map(str, args.bits))}" + ("-cal" if args.calibrate else "") \
            + ("-dq" if args.dequantize else "")
    elif head == "projected":
        name = f"projected-k{args.directions}"
        if args.project_heads is not None and sorted(set(args.project_heads)) != list(DEFAULT_PROJECTED):
            name += "-p" + ".".join(map(str, sorted(set(args.project_heads))))
    else:
        name = f"factored-g{args.gain:g}" if head == "factored" and args.gain != 1.0 else head
    return name + ("-fs" if transfer and args.freeze_shared and head != "full" else "") \
        + (frozen_weights_suffix(args.freeze_head_weights) if transfer else "") \
        + (f"-cs{'_'.join(f'{v:g}' for v in args.class_head_lr_scale)}"
           if transfer and args.class_head_lr_scale != [1.0] else "")


def frozen_weights_suffix(heads: Optional[List[int]]) -> str:
    """``-fw`` for ``--freeze-head-weights`` alone, ``-fw0.1.2`` for heads 0 to 2, nothing without the option."""
    if heads is None:
        return ""
    return "-fw" + ".".join(map(str, heads))


def frozen_head_weights(args: argparse.Namespace) -> Union[bool, List[int]]:
    """``--freeze-head-weights`` as TSAR's ``freeze_head_weights``."""
    return False if args.freeze_head_weights is None else (args.freeze_head_weights or True)


def scale_words(scale: str) -> str:
    """``3`` -> ``3x faster``; ``2_3_5`` (a scale chosen per run) -> ``2x, 3x or 5x faster (chosen ...)``."""
    values = scale.split("_")
    if len(values) == 1:
        return f"{scale}x faster"
    return ", ".join(f"{v}x" for v in values[:-1]) + f" or {values[-1]}x faster (chosen on the selection sequence)"


def head_name(head: str, settings: Dict[str, Any]) -> str:
    """A low-memory head's description for the targets (``head`` as :func:`head_label` names it)."""
    suffix = ""
    head, scaled, scale = head.partition("-cs")
    if scaled:
        suffix = f", class prediction head learning {scale_words(scale)} in transfer"
    head, frozen, layers = head.partition("-fw")
    if frozen:
        suffix = ", head weights frozen in transfer" + (f" (heads {layers.replace('.', ', ')})" if layers else "") \
            + suffix
    if head.endswith("-fs"):
        head, suffix = head[:-3], ", shared maps frozen in transfer" + suffix
    if head.startswith("projected"):
        directions, _, heads = head.partition("-k")[2].partition("-p")
        which = (f"heads {heads.replace('.', ', ')}" if heads else "the convolutions' heads") + " projected"
        return (f"projected heads ({which} onto {directions} feature directions, from the meta-learned full "
                f"heads{suffix})")
    if head.startswith("quantized"):
        bits, _, rest = head.partition("-b")[2].partition("-")
        bits = bits if "." not in bits else f"{bits.replace('.', ' / ')} (per layer)"
        return (f"quantized heads ({bits} bits per weight, from the meta-learned full heads"
                + (", biases calibrated" if "cal" in rest.split("-") else "")
                + (", decoded to float rows for transfer" if "dq" in rest.split("-") else "") + f"{suffix})")
    if head == "low_rank":
        return f"low-rank heads (rank {settings['rank']}{suffix})"
    if head.startswith("sparse"):
        head, calibrated = head.removesuffix("-cal"), head.endswith("-cal")
        pruned = head.endswith("-pruned")
        inputs, _, gain = head.removesuffix("-pruned").partition("-s")[2].partition("-g")
        suffix = (", pruned from the meta-learned full heads" if pruned else "") \
            + (", the pruned weights' mean folded into the biases" if calibrated else "") + suffix
        return f"sparse heads ({inputs} inputs per entry" + (f", gain {gain}" if gain else "") + f"{suffix})"
    if head.startswith("hashed"):
        head, _, hashes = head.partition("-k")
        suffix = (f", {hashes} per entry" if hashes else "") + suffix
        if head.startswith("hashed-t"):
            return f"hashed heads ({head.partition('-t')[2]} read-outs split in proportion to the layers{suffix})"
        return f"hashed heads (pool {head.partition('-p')[2]}{suffix})"
    gain = head.partition("-g")[2]
    return f"factored heads (code {settings.get('code', 24)}" + (f", gain {gain}" if gain else "") + f"{suffix})"


def checkpoint_file(args: argparse.Namespace, method: str, head: str, meta_seed: int) -> Optional[Path]:
    """Where ``--checkpoint-dir`` keeps a run's meta-learner (None without it).

    The name holds what shapes the networks and the meta-learning (not the
    budget: a longer run continues a shorter one's file); a file whose
    settings still differ is refused by the learner with the difference named.
    """
    if args.checkpoint_dir is None:
        return None
    order = "second" if args.second_order else "first"
    if method == "oml":
        return args.checkpoint_dir / (f"oml_meta{meta_seed}_{order}-order_c{args.oml_channels}_h{args.oml_hidden}"
                                      f"_n{args.n_classes}.pt")
    return args.checkpoint_dir / (f"{method}_{head}_meta{meta_seed}_{order}-order_c{args.classifier_channels}"
                                  f"_r{args.regulator_channels}_n{args.n_classes}.pt")


def read_curve(checkpoint: Path) -> List[Dict[str, Any]]:
    """The curve points measured while the checkpoint's learner was meta-learned (none if not recorded)."""
    path = checkpoint.with_suffix(".curve.json")
    return json.loads(path.read_text()) if path.exists() else []


def write_curve(checkpoint: Path, points: List[Dict[str, Any]]) -> None:
    """Keep the curve points beside the checkpoint, so that a resumed run keeps the points before it."""
    checkpoint.with_suffix(".curve.json").write_text(json.dumps(points, indent=1))


def choose_lr(strategies: Dict[float, Any], model, selection, grid: Sequence[float],
              optimizer_name: str = "adam") -> Dict[str, Any]:
    """The rate of ``grid`` and the class head scale (a key of ``strategies``, each from :func:`strategy_for`) with
    the best recall on ``selection``; with one scale the recalls are keyed by rate alone, with several
    ``"rate@csS"``."""
    scores = {(lr, scale): transfer(strategy, model, selection, lr, seed=0, optimizer_name=optimizer_name)["recall"]
              for scale, strategy in strategies.items() for lr in grid}
    lr, scale = max(scores, key=scores.get)
    chosen: Dict[str, Any] = {"lr": lr}
    if len(strategies) > 1:
        chosen["class_head_lr_scale"] = scale
    return {**chosen, "selection_recall": {(str(k) if len(strategies) == 1 else f"{k}@cs{c:g}"): v
                                           for (k, c), v in scores.items()}}


def converted_model(method: str, head: str, args: argparse.Namespace, meta_seed: int, images, labels):
    """The full-head run's meta-learned networks at the budget with the heads converted (``sparse``: each row
    pruned to ``--inputs`` weights; ``quantized``: each row in ``--bits`` bits; ``projected``: the rows of
    ``--project-heads`` on ``--directions`` feature directions), and the checkpoint they came from."""
    from avalanche_neuromod.models import TSARNet
    from avalanche_neuromod.training import TSARMetaLearner

    checkpoint = checkpoint_file(args, method, "full", meta_seed)
    if checkpoint is None or not checkpoint.exists():
        raise SystemExit(f"--heads {head} from the full heads needs the full-head run's checkpoint {checkpoint}. "
                         f"Fix: run --heads full with the same settings and --checkpoint-dir first.")
    learner = TSARMetaLearner(fresh_model(method, "full", args, meta_seed), images, labels, seed=meta_seed,
                              second_order=args.second_order)
    done = learner.load_checkpoint(checkpoint)
    if done != args.meta_iterations:
        raise SystemExit(f"{checkpoint} holds {done} meta-iterations, not --meta-iterations {args.meta_iterations}. "
                         f"Fix: meta-learn the full heads to the budget first (--heads full).")
    full = learner.model
    if head == "quantized":
        bits = args.bits[0] if len(args.bits) == 1 else args.bits
        regulator = full.regulator.quantized(bits, learner.images if args.calibrate else None)
    elif head == "projected":
        regulator = full.regulator.projected(learner.images, args.directions, args.project_heads)
    else:
        regulator = full.regulator.sparsified(args.inputs, args.gain, learner.images if args.calibrate else None)
    return TSARNet(full.classifier, regulator), checkpoint


def run_method(method: str, head: str, meta_seed: int, args, images, labels, transfers, progress: Callable,
               recorded: Optional[Dict[str, Any]] = None) -> Dict:
    """Meta-learn (where the method does), choose the transfer lr, transfer to every sequence.

    ``recorded`` receives the C3 regulation statistics of the first reported
    Omniglot transfer of a regulated method, under ``"method/head, meta seed N"``.
    """
    from avalanche_neuromod.analysis import RegulationRecorder
    from avalanche_neuromod.models import TSARNet
    from avalanche_neuromod.training import TSARMetaLearner

    model = fresh_model(method, head, args, meta_seed)
    meta_head = head_label(head, args, transfer=False)  # the meta-learned networks: the checkpoint's name
    head = head_label(head, args)
    strategies: Dict[float, Any] = {}
    for scale in args.class_head_lr_scale:  # the baselines ignore the scale: one strategy, one selection grid
        candidate = strategy_for(method, args.freeze_shared, frozen_head_weights(args), scale)
        if all(candidate is not s for s in strategies.values()):
            strategies[scale] = candidate
    strategy = strategies[args.class_head_lr_scale[0]]  # the curve's; the transfers use the scale chosen below
    run: Dict[str, Any] = {"method": method, "head": head, "meta_seed": meta_seed, "cpu_model": cpu_model(),
                           "regulator_bytes": regulator_bytes(model), "curve": []}
    if method == "oml":
        run["oml_network"] = {"channels": args.oml_channels, "hidden": args.oml_hidden,
                              "parameters": sum(p.numel() for p in model.parameters())}
    selection = transfers[("selection", args.selection_seed)]
    first = transfers.get(("omniglot", args.transfer_seeds[0]))
    optimizer = args.transfer_optimizer
    if ((args.prune_full and meta_head.startswith("sparse")) or meta_head.startswith(("quantized", "projected"))) \
            and method in META_LEARNED:
        model, checkpoint = converted_model(method, meta_head.split("-")[0], args, meta_seed, images, labels)
        if args.dequantize and meta_head.startswith("quantized"):
            run["stored_regulator_bytes"] = regulator_bytes(model)
            model = TSARNet(model.classifier, model.regulator.dequantized())
        run.update(regulator_bytes=regulator_bytes(model), meta_resumed_at=args.meta_iterations,
                   converted_from=checkpoint.name)
        progress(f"  {method}/{head} meta seed {meta_seed}: converted from {run['converted_from']}")
    elif method in META_LEARNED:
        checkpoint = checkpoint_file(args, method, meta_head, meta_seed)
        learner = TSARMetaLearner(model, images, labels, seed=meta_seed, second_order=args.second_order,
                                  inner_params="head" if method in ("no_regulation", "oml") else "all",
                                  checkpoint_path=checkpoint)
        if checkpoint is not None and checkpoint.exists():
            done = learner.load_checkpoint(checkpoint)
            if done > args.meta_iterations:
                raise SystemExit(f"{checkpoint} holds {done} meta-iterations, more than --meta-iterations "
                                 f"{args.meta_iterations}. Fix: raise --meta-iterations, or use another "
                                 f"--checkpoint-dir.")
            run["meta_resumed_at"] = done
            run["curve"] = [p for p in read_curve(checkpoint) if p["meta_iterations"] <= done
                            and (p["lr"], p.get("optimizer", "adam"), p.get("freeze_shared", False),
                                 p.get("freeze_head_weights", False))
                            == (args.curve_lr, optimizer, args.freeze_shared, frozen_head_weights(args))]
            progress(f"  {method}/{head} meta seed {meta_seed}: resumed from {checkpoint} at meta-iteration {done}")

        def curve_point(l: TSARMetaLearner) -> None:
            if args.curve_every and first is not None and l.iteration % args.curve_every == 0 \
                    and l.iteration < args.meta_iterations:
                point = transfer(strategy, l.model, first, args.curve_lr, seed=args.transfer_seeds[0],
                                 optimizer_name=optimizer)
                run["curve"].append({"meta_iterations": l.iteration, "recall": point["recall"], "lr": args.curve_lr,
                                     "optimizer": optimizer, **({"freeze_shared": True} if args.freeze_shared else {}),
                                     **({"freeze_head_weights": frozen_head_weights(args)}
                                        if args.freeze_head_weights is not None else {})})
                if checkpoint is not None:
                    write_curve(checkpoint, run["curve"])
                progress(f"  {method}/{head} meta-it {l.iteration}: recall {100 * point['recall']:.1f}% "
                         f"(lr {args.curve_lr:g})")

        learner.fit(args.meta_iterations, progress=True, resume=False, callback=curve_point)
        run["meta_seconds"] = learner.seconds
        run["meta_final_loss"] = statistics.mean(learner.history["loss"][-100:])
        run["meta_final_accuracy"] = statistics.mean(learner.history["accuracy"][-100:])
        model = learner.model
    run.update(choose_lr(strategies, model, selection, args.lr_grid, optimizer))
    strategy = strategies[run.get("class_head_lr_scale", args.class_head_lr_scale[0])]
    run["transfer_optimizer"] = optimizer
    scale = f", class head scale {run['class_head_lr_scale']:g}" if "class_head_lr_scale" in run else ""
    progress(f"  {method}/{head} meta seed {meta_seed}: lr {run['lr']}{scale} chosen on sequence "
             f"{args.selection_seed} ({run['selection_recall']})")
    run["transfers"] = {}
    for (name, seed), bench in transfers.items():
        if name == "selection":
            continue
        recorder = None
        if recorded is not None and method in REGULATED and (name, seed) == ("omniglot", args.transfer_seeds[0]):
            recorder = RegulationRecorder("C3", thresholds=(0.5, 0.9))
            recorded[f"{method}/{head}, meta seed {meta_seed}"] = recorder.statistics
        outcome = transfer(strategy, model, bench, run["lr"], seed,
                           [recorder] if recorder else [], immediate=True, optimizer_name=optimizer)
        if recorder is not None:
            run["regulation_c3"] = regulation_summary(recorder.statistics)
        run["transfers"][f"{name}/{seed}"] = outcome
        progress(f"  {method}/{head} meta seed {meta_seed} {name} seed {seed}: recall {100 * outcome['recall']:.1f}%"
                 + (f", held-out {100 * outcome['heldout']:.1f}%" if "heldout" in outcome else "")
                 + f", {outcome['train_seconds']:.0f} s")
    if args.curve_every and first is not None and method in META_LEARNED:
        final = run["transfers"].get(f"omniglot/{args.transfer_seeds[0]}")
        if final is not None:
            run["curve"].append({"meta_iterations": args.meta_iterations, "recall": final["recall"], "lr": run["lr"],
                                 "optimizer": optimizer})
    return run


def regulation_summary(stats) -> Dict[str, Any]:
    """A few numbers of the recorded regulation (the figures hold the rest)."""
    active = {t: np.asarray(v) for t, v in stats.active.items()}
    return {"synapses": int(stats.task_specific().shape[1]), "images": len(stats.total),
            "active_median": {str(t): float(np.median(v)) for t, v in active.items()},
            "active_max": {str(t): int(v.max()) for t, v in active.items()},
            "total_mean": float(np.mean(stats.total)), "total_max": float(np.max(stats.total))}


def figure_prefix(label: Optional[str]) -> str:
    """The start of a result's figure names: ``tsar``, or ``tsar_LABEL`` with dashes as underscores."""
    return "tsar" + (f"_{label.replace('-', '_')}" if label else "")


def draw_regulation(recorded: Dict[str, Any], folder: Path, label: str, part: Optional[int] = None) -> List[str]:
    """The paper's regulation figures from the recorded statistics; their portable paths.

    ``part`` (the invocation's number under ``--append``) goes into the file
    names, so that an appended invocation adds its figures beside the earlier
    ones instead of drawing over them.
    """
    import matplotlib
    matplotlib.use("Agg")

    from avalanche_neuromod.analysis import plot_regulation_ccdf, plot_task_activity, plot_total_regulation, save_figure

    if not recorded:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    prefix = figure_prefix(label) + (f"_{part}" if part else "")
    first_grow = next((k for k in recorded if k.startswith("grow/")), next(iter(recorded)))
    figures = {"regulation_ccdf": plot_regulation_ccdf(list(recorded.values()), list(recorded)),
               "task_activity": plot_task_activity(recorded[first_grow]),
               "total_regulation": plot_total_regulation(recorded[first_grow])}
    figures["task_activity"].axes[0].set_title(f"{first_grow}: task-specific vs task-agnostic, C3", fontsize=9)
    figures["total_regulation"].axes[0].set_title(f"{first_grow}: per-image total regulation, C3", fontsize=9)
    written = []
    for name, fig in figures.items():
        written.append(portable_path(save_figure(fig, folder / f"{prefix}_{name}.png", bbox_inches="tight")))
    return written


def memory_recall(summary: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Grow's regulator memory against its Omniglot recall, one point per head (full head first, then by memory)."""
    points = [{"head": row["head"], "megabytes": row["regulator_bytes"]["parameters"] / 1e6,
               "recall_mean": row["omniglot"]["recall_mean"], "recall_std": row["omniglot"]["recall_std"] or 0.0,
               "runs": row["omniglot"]["runs"]}
              for row in summary if row["method"] == "grow" and "omniglot" in row]
    return sorted(points, key=lambda p: (p["head"] != "full", -p["megabytes"], p["head"]))


def draw_memory_recall(summary: List[Dict[str, Any]], folder: Path, label: str) -> Optional[str]:
    """Grow's Omniglot recall against regulator memory (log axis), every head of the result; its portable path.

    One file per result (all its runs, earlier invocations' included), drawn
    again by every invocation; None where fewer than two heads were measured.
    """
    points = memory_recall(summary)
    if len(points) < 2:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import ScalarFormatter

    from avalanche_neuromod.analysis import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    placed: List[tuple] = []
    for p in points:
        full = p["head"] == "full"
        ax.errorbar(p["megabytes"], p["recall_mean"], yerr=p["recall_std"], fmt="s" if full else "o",
                    color="black" if full else "tab:blue", capsize=3)
        near = sum(abs(np.log10(p["megabytes"] / m)) < 0.1 and abs(p["recall_mean"] - r) < 4 for m, r in placed)
        placed.append((p["megabytes"], p["recall_mean"]))
        ax.annotate(p["head"], (p["megabytes"], p["recall_mean"]), textcoords="offset points",
                    xytext=(5, 3 + 9 * near), fontsize=7)  # labels of nearby points stacked, not overlaid
    full = next((p for p in points if p["head"] == "full"), None)
    if full is not None:  # the target region: 10x smaller, at most 2 points lost
        ax.axvline(full["megabytes"] / 10, color="tab:red", lw=0.8, ls="--", label="10x smaller")
        ax.axhline(full["recall_mean"] - 2, color="tab:green", lw=0.8, ls="--", label="2 points below full")
        ax.legend(fontsize=7, loc="center right")  # clear of the points near 0 % and near the full head
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 3, 10, 30 MB rather than powers of ten
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("regulator parameters (MB, log)")
    ax.set_ylabel("Omniglot recall, 100 classes (%)")
    ax.set_title("Grow: regulator memory vs transfer recall", fontsize=9)
    return portable_path(save_figure(fig, folder / f"{figure_prefix(label)}_memory_recall.png", bbox_inches="tight"))


def with_memory_recall(figures: List[str], summary: List[Dict[str, Any]], folder: Path, label: str) -> List[str]:
    """``figures`` with the memory / recall figure drawn again and listed once, first."""
    drawn = draw_memory_recall(summary, folder, label)
    return ([drawn] if drawn else []) + [f for f in figures if f != drawn]


def summarise(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    keys = sorted({(r["method"], r["head"]) for r in runs}, key=lambda k: (METHODS.index(k[0]), k[1]))
    for method, head in keys:
        group = [r for r in runs if (r["method"], r["head"]) == (method, head)]
        row: Dict[str, Any] = {"method": method, "head": head, "meta_seeds": [r["meta_seed"] for r in group],
                               "lrs": [r["lr"] if "class_head_lr_scale" not in r
                                       else f"{r['lr']} (x{r['class_head_lr_scale']:g})" for r in group],
                               "regulator_bytes": group[0]["regulator_bytes"]}
        for name in TRANSFERS:
            values = [(t["recall"], t.get("heldout"), t["train_seconds"]) for r in group
                      for k, t in r["transfers"].items() if k.split("/")[0] == name]
            if values:
                recall = [100 * v[0] for v in values]
                row[name] = {"recall_mean": statistics.mean(recall),
                             "recall_std": statistics.stdev(recall) if len(recall) > 1 else None,
                             "runs": len(values), "train_seconds_mean": statistics.mean(v[2] for v in values)}
                if values[0][1] is not None:
                    row[name]["heldout_mean"] = statistics.mean(100 * v[1] for v in values)
        for key, name in (("recall_by_position", "omniglot_recall_by_decile"),
                          ("immediate_by_position", "omniglot_immediate_by_decile")):
            positions = [t[key] for r in group for k, t in r["transfers"].items()
                         if k.startswith("omniglot/") and key in t]
            if positions:
                row[name] = by_decile(positions)
                row[name + "_sequences"] = len(positions)
        if "meta_seconds" in group[0]:
            row["meta_seconds_mean"] = statistics.mean(r["meta_seconds"] for r in group)
        rows.append(row)
    return rows


def _run_key(run: Dict[str, Any]) -> tuple:
    return run["method"], run["head"], run["meta_seed"]


def by_decile(positions: List[List[float]]) -> List[float]:
    """Mean accuracy (%) of each tenth of the sequence (fewer parts for short sequences), over the runs."""
    bins = min(10, len(positions[0]))
    return [float(np.mean([100 * np.mean(part) for part in parts]))
            for parts in zip(*(np.array_split(np.asarray(p), bins) for p in positions))]


def grow_above_sculpt(runs: List[Dict[str, Any]], head: str) -> Dict[str, Any]:
    """The issue's Grow-above-Sculpt target over the runs of one head label (``full`` or ``full-cs3``, say)."""
    wins, total = 0, 0
    for g in (r for r in runs if (r["method"], r["head"]) == ("grow", head)):
        s = next((r for r in runs if (r["method"], r["head"], r["meta_seed"]) == ("sculpt", head, g["meta_seed"])),
                 None)
        if s is None:
            continue
        for key, t in g["transfers"].items():
            if key.startswith("omniglot/") and key in s["transfers"]:
                total += 1
                wins += t["recall"] > s["transfers"][key]["recall"]
    meta_seeds = len({r["meta_seed"] for r in runs if (r["method"], r["head"]) == ("grow", head)})
    scale = head.partition("-cs")[2]
    setting = f" (class prediction head learning {scale_words(scale)} in transfer)" if scale else ""
    return target(f"Grow above Sculpt{setting} on every Omniglot transfer seed (at least 3) for at least 2 meta "
                  "seeds", total > 0 and wins == total and total >= 6 and meta_seeds >= 2,
                  f"Grow above Sculpt on {wins} of {total} (meta seed, transfer seed) pairs, "
                  f"{meta_seeds} meta seed(s)")


def targets(summary: List[Dict[str, Any]], runs: List[Dict[str, Any]],
            settings: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The issue's targets, for the rows that were run."""
    by = {(r["method"], r["head"]): r for r in summary}
    checked = []
    grow, scratch = by.get(("grow", "full")), by.get(("scratch", "-"))
    if grow and "omniglot" in grow:
        mean = grow["omniglot"]["recall_mean"]
        checked.append(target("Grow recall on the unseen Omniglot classes at least 40%", mean >= 40, f"{mean:.1f}%"))
    # Grow against Sculpt for every transfer setting both were run with (one rate; a class head rate -csS)
    for head in sorted(h for m, h in by if m == "grow" and (h == "full" or h.startswith("full-cs"))):
        if ("sculpt", head) in by:
            checked.append(grow_above_sculpt(runs, head))
    if scratch and "omniglot" in scratch:
        mean = scratch["omniglot"]["recall_mean"]
        checked.append(target("Scratch recall below 5%", mean < 5, f"{mean:.1f}%"))
    for head in sorted(h for m, h in by
                       if m == "grow" and h.startswith(LOW_MEMORY_HEADS)):
        light, name = by[("grow", head)], head_name(head, settings)
        scaled, scale = head.partition("-cs")[1:]
        full = by.get(("grow", "full" + scaled + scale))  # transferred the same way: a class head rate for both
        if full and "omniglot" in light and "omniglot" in full:
            ratio = full["regulator_bytes"]["parameters"] / max(light["regulator_bytes"]["parameters"], 1)
            lost = full["omniglot"]["recall_mean"] - light["omniglot"]["recall_mean"]
            checked.append(target(f"{name}: at least 10x less regulator memory, at most 2 points of Grow recall "
                                  f"lost", ratio >= 10 and lost <= 2, f"{ratio:.1f}x smaller, {lost:+.1f} points lost"))
    return checked


def machines_line(runs: List[Dict[str, Any]]) -> List[str]:
    """A line naming the machines when the runs (merged by ``--append``) come from more than one."""
    machines = collections.Counter(r.get("cpu_model") or "not recorded" for r in runs)
    if len(machines) < 2:
        return []
    return ["- Runs from more than one machine (" + ", ".join(f"{m}: {n} run(s)" for m, n in machines.items())
            + "); their seconds do not compare across machines."]


def position_table(summary: List[Dict[str, Any]], key: str, n_positions: int, title: str) -> List[str]:
    """A table of ``key`` (accuracy per tenth of the sequence) for the rows that have it; none if no row has."""
    rows = [row for row in summary if key in row]
    if not rows:
        return []
    parts = np.array_split(np.arange(1, n_positions + 1), min(10, n_positions))
    lines = ["", title, "", "| method | head | sequences | "
             + " | ".join(f"{part[0]}-{part[-1]}" for part in parts) + " |", "|---|---|---:|" + "---:|" * len(parts)]
    return lines + [f"| {row['method']} | {row['head']} | {row.get(key + '_sequences', '')} | "
                    + " | ".join(f"{v:.0f}" for v in row[key]) + " |" for row in rows]


def oml_line(runs: List[Dict[str, Any]]) -> List[str]:
    """The OML baseline's network size, where the result has OML runs."""
    sizes = sorted({(r["oml_network"]["channels"], r["oml_network"]["hidden"], r["oml_network"]["parameters"])
                    for r in runs if r["method"] == "oml"})
    return [f"- OML (`oml`): `TSARNet.oml` with {c} channels in its five convolutions and {h} hidden units "
            f"({n:,} parameters; OML's own network: 256 / 1,024), meta-learned with its prediction network as the "
            f"inner loop's fast part (`inner_params=\"head\"`), transferred with `TSAROML` (convolutions fixed, "
            f"class prediction layer reset, both linear layers learning)." for c, h, n in sizes]


def markdown_section(result: Dict[str, Any]) -> str:
    s = result["settings"]
    start, end = section_markers("tsar", s.get("label"))
    lines = section_opening(
        start, "TSAR (issue 9)" + (f": {s['label']}" if s.get("label") else ""), result, threads=N_THREADS,
        data=f"real Omniglot, MNIST and Fashion-MNIST from `{result['dataset_root']}`. Meta-learning on "
             f"`images_background_small1` (136 classes x 20); transfer to {s.get('omniglot_classes', 100)} of the "
             "106 classes of `images_background_small2` that small1 lacks (Japanese, Sanskrit, Tagalog) x 20 "
             "drawings, and to MNIST / Fashion-MNIST 10 classes x 30 images (10 more per class held out).")
    lines += [
        f"- Scale: {result['scale']}",
        "- Peak resident memory of the whole run"
        + (" (the largest of its invocations)" if len(result.get("commands", [])) > 1 else "")
        + f": {result['peak_rss_mb']:.0f} MB.",
        f"- Transfer with {'plain SGD' if s.get('transfer_optimizer') == 'sgd' else 'Adam'} at batch 1; "
        f"learning rate per method and meta seed chosen from {s['lr_grid']} on Omniglot sequence "
        f"{s['selection_seed']} (another class order and draw; never reported)"
        + ("; for a head whose suffix lists several class head scales (-csA_B), the scale too, chosen with the "
           "rate (the lr column's xS)" if any("class_head_lr_scale" in r for r in result["runs"]) else "") + ".",
        *machines_line(result["runs"]),
        *oml_line(result["runs"]),
        "",
    ]

    def cell(row, name, field="recall_mean"):
        value = row.get(name, {}).get(field)
        if value is None:
            return ""
        std = row[name].get("recall_std") if field == "recall_mean" else None
        return f"{value:.1f}" + (f" +- {std:.1f}" if std is not None else "")

    rows = []
    for row in result["summary"]:
        mb = row["regulator_bytes"]
        rows.append([row["method"], row["head"], ", ".join(map(str, row["meta_seeds"])),
                     ", ".join(map(str, row["lrs"])),
                     f"{mb['parameters'] / 2**20:.1f} / {mb['with_adam'] / 2**20:.1f}", cell(row, "omniglot"),
                     cell(row, "omniglot_heldout", "heldout_mean"),
                     f"{cell(row, 'mnist')} / {cell(row, 'mnist', 'heldout_mean')}",
                     f"{cell(row, 'fashion_mnist')} / {cell(row, 'fashion_mnist', 'heldout_mean')}",
                     f"{row.get('omniglot', {}).get('train_seconds_mean', 0):.0f}",
                     f"{row.get('meta_seconds_mean', 0):.0f}"])
    lines += markdown_table(["method", "head", "meta seeds", "lr", "regulator MB (params / with Adam)",
                             "Omniglot recall (%)", "Omniglot held-out (%)", "MNIST recall / held-out (%)",
                             "Fashion recall / held-out (%)", "transfer s", "meta-learning s"], rows,
                            align="llllrrrrrrr")
    n_positions = s.get("omniglot_classes", 100)
    lines += position_table(result["summary"], "omniglot_recall_by_decile", n_positions,
                            "Omniglot recall by position in the sequence (tenths: first classes ... last), %:")
    lines += position_table(result["summary"], "omniglot_immediate_by_decile", n_positions,
                            "Omniglot accuracy on each class's drawings right after that class was learned (before "
                            "the rest of the sequence; `ImmediateAccuracyPlugin`), by position, %. High here and "
                            "low above: learned, then forgotten; low here: never learned:")
    curves = [r for r in result["runs"] if r["curve"]]
    if curves:
        curve_lr = s.get("curve_lr", 1e-3)
        lines += ["", f"Omniglot recall (transfer seed {s['transfer_seeds'][0]}) over meta-learning, lr {curve_lr:g} "
                  "before the budget, the chosen lr at it:", "",
                  "| method | head | meta seed | " + " | ".join(str(p["meta_iterations"]) for p in curves[0]["curve"])
                  + " |", "|---|---|---|" + "---:|" * len(curves[0]["curve"])]
        for r in curves:
            lines.append(f"| {r['method']} | {r['head']} | {r['meta_seed']} | "
                         + " | ".join(f"{100 * p['recall']:.1f}" for p in r["curve"]) + " |")
    lines += ["", "Paper, for reference (other data, full sizes, 25,000 meta-iterations on a GPU): ImageNet Grow "
              "92.2, Sculpt 57.5, OML 13.87, Scratch 0.97; Omniglot 600 classes recall Grow 95.2, Sculpt 15.1, "
              "OML 29.3."]
    if result["targets"]:
        lines += ["", *target_lines(result["targets"])]
    regulation = [r for r in result["runs"] if "regulation_c3" in r]
    if regulation:
        first = regulation[0]["regulation_c3"]
        lines += ["", f"Regulation of layer C3 ({first['synapses']:,} synapses) while each image of Omniglot sequence "
                  f"{s['transfer_seeds'][0]} was learned ({first['images']:,} images):", ""]
        lines += markdown_table(
            ["method", "head", "meta seed", "synapses > 0.5 per image (median / max)",
             "synapses > 0.9 per image (median / max)", "total regulation per image (mean / max)"],
            [[r["method"], r["head"], str(r["meta_seed"]),
              f"{r['regulation_c3']['active_median']['0.5']:.0f} / {r['regulation_c3']['active_max']['0.5']}",
              f"{r['regulation_c3']['active_median']['0.9']:.0f} / {r['regulation_c3']['active_max']['0.9']}",
              f"{r['regulation_c3']['total_mean']:.0f} / {r['regulation_c3']['total_max']:.0f}"] for r in regulation],
            align="lllrrr")
    if result.get("figures"):
        lines += ["", *figure_lines(result["figures"])]
    lines.append(end)
    return "\n".join(lines)


def report(args: argparse.Namespace) -> int:
    """Rewrite the summary, the notes and the docs section of an earlier result file."""
    import json

    result = json.loads(args.out.read_text())
    result.pop("notes", None)  # earlier files wrote the targets as free text
    result["summary"] = summarise(result["runs"])
    result["targets"] = targets(result["summary"], result["runs"], result["settings"])
    result["figures"] = with_memory_recall(result.get("figures", []), result["summary"], args.figures,
                                           result["settings"].get("label"))
    print("\n".join(target_lines(result["targets"], markdown=False)))
    publish(result, args.out, None if args.no_docs else markdown_section(result),
            *section_markers("tsar", result["settings"].get("label")))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args)
    parser = argparse.ArgumentParser()
    root = check_mnist_root(parser, args.dataset_root)
    import torch

    from avalanche_neuromod.benchmarks import load_omniglot

    torch.set_num_threads(N_THREADS)
    if args.checkpoint_dir is not None:
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    full_scale = args.meta_iterations >= 3000
    result: Dict[str, Any] = {
        **result_header(argv, __file__, root),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("dataset_root", "out")},
        "scale": (f"{args.meta_iterations} meta-iterations per run "
                  f"({'second' if args.second_order else 'first'}-order OML, inner SGD lr 0.1 on 20 "
                  f"drawings + the first again, outer batch 64 + 20, Adam 1e-3), classifier "
                  f"{args.classifier_channels} channels, regulator {args.regulator_channels} channels, "
                  f"{args.n_classes} class outputs; the paper: 112 / 192 channels, 1,000 outputs, 25,000 "
                  f"meta-iterations" + ("" if full_scale else "; REDUCED below the benchmark's budget of 3,000")),
        "runs": [], "summary": [], "targets": [],
    }
    result["data_files"] += data_files(root, "omniglot-py/*") + data_files(root, "FashionMNIST/raw/*")
    earlier_figures: List[str] = []
    earlier_peak = 0.0
    if args.append:
        previous = load_previous(args.out, {k: getattr(args, k) for k in SCALE_SETTINGS},
                                 defaults={"second_order": False, "transfer_optimizer": "adam"})
        for run in previous["runs"]:  # runs written before runs named their machine: the file's machine
            run.setdefault("cpu_model", (previous["machine"] or {}).get("cpu_model"))
        result["runs"], result["commands"] = previous["runs"], previous["commands"] + [result["command"]]
        earlier_figures = previous["figures"]
        earlier_peak = previous["peak_rss_mb"] or 0.0
    meta = load_omniglot(root, ["images_background_small1"])
    transfers = build_transfers(root, args.transfer_seeds, args.selection_seed, args.transfers,
                                args.omniglot_classes)

    def progress(text: str) -> None:
        print(text, flush=True)

    recorded: Dict[str, Any] = {}

    for meta_seed, method, head in itertools.product(args.meta_seeds, args.methods, args.heads):
        if method in UNREGULATED and head != args.heads[0]:
            continue  # no regulator: the head setting does not apply
        if method not in META_LEARNED and meta_seed != args.meta_seeds[0]:
            continue  # nothing meta-learned: one set of transfers is enough
        progress(f"{method}/{head if method not in UNREGULATED else '-'} meta seed {meta_seed}")
        run = run_method(method, head, meta_seed, args, meta.images, meta.labels, transfers, progress, recorded)
        if method in UNREGULATED:
            run["head"] = "-"
        result["runs"] = [r for r in result["runs"] if _run_key(r) != _run_key(run)] + [run]
        result["summary"] = summarise(result["runs"])
        # the largest of one invocation: an appended file keeps its earlier invocations' peak where higher
        result["peak_rss_mb"] = max(earlier_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        write_json(result, args.out)
    result["targets"] = targets(result["summary"], result["runs"], result["settings"])
    invocations = len(result.get("commands", []))  # more than one: appended to an earlier file
    part = invocations if invocations > 1 else None
    result["figures"] = with_memory_recall(earlier_figures + draw_regulation(recorded, args.figures, args.label, part),
                                           result["summary"], args.figures, args.label)
    print("\n".join(target_lines(result["targets"], markdown=False)))
    publish(result, args.out, None if args.no_docs else markdown_section(result), *section_markers("tsar", args.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
