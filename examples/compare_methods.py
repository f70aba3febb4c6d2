"""Compare CRWN with the paper's baselines and Avalanche's strategies, in one grid.

A small grid (permuted digits by default: scikit-learn's bundled
handwriting, no download) of NeuroModNet and FlyNet (CRWN), PSP, BatchE,
SupSup, STL, MTL and Avalanche's Naive and EWC, every method with the same
budget and the same evaluator (``avalanche_neuromod.evaluation.grid``).
Prints the table (mean final accuracy, forgetting, BWT, parameters per
task, seconds per task, peak memory) and saves the CRWN paper's two
figures: final accuracy per task, and accuracy against learnable
parameters per task on a log axis. Finished cells are cached in the output
folder: run it again and only what changed trains.

    python examples/compare_methods.py                  # digits, under two minutes on 2 cores
    python examples/compare_methods.py --dataset-root "$AVALANCHE_NEUROMOD_DATA" --tasks 10 --iterations 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from avalanche_neuromod.analysis import plot_accuracy_vs_parameters, plot_task_accuracies, save_figure
from avalanche_neuromod.evaluation import Grid, run_grid, summarize, summary_table

METHODS = {
    "FlyNet-10d": {"kind": "crwn", "arch": "flynet", "expansion": 10},
    "NeuroModNet-FC256": {"kind": "crwn", "hidden": [256, 256]},
    "PSP-FC256": {"kind": "psp", "hidden": [256, 256], "context": "binary"},
    "BatchE-FC256": {"kind": "batche", "hidden": [256, 256]},
    "SupSup-FC256": {"kind": "supsup", "hidden": [256, 256]},
    "STL-FC256": {"kind": "stl", "hidden": [256, 256]},
    "MTL-FC256": {"kind": "mtl", "hidden": [256, 256]},
    "Naive": {"kind": "naive", "hidden": [256, 256]},
    "EWC": {"kind": "ewc", "hidden": [256, 256], "ewc_lambda": 100.0},
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-root", default=None, help="MNIST folder (torchvision layout); default: digits")
    parser.add_argument("--stream", choices=["permuted", "rotated"], default="permuted")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=100, help="mini-batches of 128 per task")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--out", default="outputs/compare", help="folder for the figures and the cell cache")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    stream = {"kind": args.stream, "n_experiences": args.tasks}
    if args.dataset_root is None:
        stream["dataset"] = "digits"
    grid = Grid(methods={m: METHODS[m] for m in args.methods}, streams={args.stream: stream}, seeds=args.seeds,
                n_iterations=args.iterations, batch_size=128, eval_protocol="seen")
    out = Path(args.out)
    cells = run_grid(grid, dataset_root=args.dataset_root, cache_dir=out / "cells")
    rows = summarize(cells)
    print(summary_table(rows))
    for name, draw in (("tasks", plot_task_accuracies), ("params", plot_accuracy_vs_parameters)):
        print(f"saved {save_figure(draw(rows), out / f'{args.stream}_{name}.png')}")


if __name__ == "__main__":
    main()
