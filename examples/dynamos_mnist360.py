"""Dynamos on MNIST-360: input-dependent channel dropping with correct-only replay.

Trains Dynamos (the paper's Table 5 row for the chosen buffer) on MNIST-360's
online stream (one mini-batch of 16 per experience, no task boundaries),
evaluates on the rotated test digits, prints the accuracy, the keep ratio of
each gated layer and the seconds, and saves the paper's figures drawn from
the trained network: per-class channel activation rates, the Jensen-Shannon
divergence between the classes' activation profiles, a t-SNE of the
attention vectors and the trial-to-trial variability when the agents keep
sampling at inference. ``--ablation`` trains the paper's ablation
(``ConsistencyReplay``: the same replay, no agents) beside it.

    # real MNIST (torchvision layout), the paper's stream of 3,387 mini-batches (minutes on 2 cores):
    python examples/dynamos_mnist360.py --dataset-root "$AVALANCHE_NEUROMOD_DATA" --buffer 200
    # no data at hand: the same stream built from scikit-learn's bundled digits (81 mini-batches)
    python examples/dynamos_mnist360.py
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

from avalanche_neuromod.analysis import (activation_rates, collect_gates, js_divergence_matrix, keep_ratios,
                                         plot_activation_rates, plot_attention_tsne, plot_js_divergence,
                                         plot_trial_variability, save_figure, trial_variability)
from avalanche_neuromod.benchmarks import MNIST360
from avalanche_neuromod.evaluation import stream_accuracy
from avalanche_neuromod.models import DynamosResNet18
from avalanche_neuromod.training import ConsistencyReplay, Dynamos, train_online


def train(strategy: Any, experiences: List[Any], name: str) -> float:
    """Train on the online experiences in stream order; return the seconds it took."""
    start = time.perf_counter()
    train_online(strategy, experiences, desc=name)
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-root", default=None,
                        help="MNIST folder (torchvision layout); default: scikit-learn's bundled digits")
    parser.add_argument("--buffer", type=int, choices=[100, 200, 500], default=200,
                        help="reservoir size (one of the paper's Table 5 rows)")
    parser.add_argument("--ablation", action="store_true", help="also train ConsistencyReplay (no agents)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop after this many online mini-batches (a quick look, not the paper's stream)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/dynamos_mnist360", help="folder for the figures")
    args = parser.parse_args(argv)
    if args.max_batches is not None and args.max_batches < 1:
        parser.error("--max-batches must be at least 1.")

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="No loggers specified")
    data = {"dataset_root": args.dataset_root} if args.dataset_root else {"dataset": "digits"}
    benchmark = MNIST360(seed=args.seed, **data)
    experiences = list(benchmark.online_train_stream)[: args.max_batches]
    test_set = benchmark.test_stream[0].dataset
    print(f"{benchmark!r}: {len(experiences)} online mini-batches of 16, {len(test_set)} test images")

    torch.manual_seed(args.seed)
    model = DynamosResNet18(n_classes=benchmark.n_classes, in_channels=1)
    strategy = Dynamos.preset("mnist360", args.buffer, model, seed=args.seed, evaluator=None)
    rows = [("Dynamos", train(strategy, experiences, "Dynamos"), stream_accuracy(model, benchmark.test_stream))]
    if args.ablation:
        torch.manual_seed(args.seed)
        ablation = ConsistencyReplay.preset(
            "mnist360", args.buffer, DynamosResNet18(n_classes=benchmark.n_classes, agents=False),
            seed=args.seed, evaluator=None)
        seconds = train(ablation, experiences, "ConsistencyReplay")
        rows.append(("ConsistencyReplay", seconds, stream_accuracy(ablation.model, benchmark.test_stream)))

    stats = collect_gates(model, test_set)
    print("\n| method | buffer | final accuracy | train seconds |\n|---|---:|---:|---:|")
    for name, seconds, acc in rows:
        print(f"| {name} | {args.buffer} | {100 * acc:.2f}% | {seconds:.0f} |")
    print("\nDynamos keep ratio per gated layer (test set): "
          + ", ".join(f"{k:.2f}" for k in keep_ratios(stats)) + f" (target {strategy.replay_plugin.keep_ratio})")

    out = Path(args.out)
    save_figure(plot_activation_rates(activation_rates(stats, by="class"), by="class"), out / "activation_rates.png")
    save_figure(plot_js_divergence(js_divergence_matrix(stats)), out / "js_divergence.png")
    save_figure(plot_attention_tsne(stats, max_points=1000, seed=args.seed), out / "attention_tsne.png")
    probe = torch.stack([test_set[i][0] for i in range(4)])
    save_figure(plot_trial_variability(trial_variability(model, probe, n_trials=20, seed=args.seed)),
                out / "trial_variability.png")
    strategy.save_checkpoint(out / "dynamos.pt")
    print(f"Figures and the checkpoint (model, agents, optimiser, reservoir) saved to {out}/")


if __name__ == "__main__":
    main()
