"""CRWN on Rotated MNIST: per-task neuromodulation of fixed random weights.

Trains FlyNet (default) or NeuroModNet with the CRWN strategy on Rotated
MNIST (experience i rotated by 10*i degrees, task ids given), evaluates every
learned task after each experience, prints per-task accuracy, parameters per
task and seconds per task, and saves two figures: the accuracy matrix and
the similarity of the learned contexts (neighbouring angles should look alike).

    # real MNIST (torchvision layout under the root), the paper's budget:
    python examples/crwn_rotated_mnist.py --dataset-root /path/to/data --experiences 36
    # no data at hand: scikit-learn's digits, 6 rotations, a smaller budget
    python examples/crwn_rotated_mnist.py
    # the tasks in 2 parallel worker processes (or Ray tasks with --ray): the same model, sooner
    python examples/crwn_rotated_mnist.py --workers 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from avalanche_neuromod.analysis import plot_accuracy_matrix, plot_context_similarity, save_figure
from avalanche_neuromod.benchmarks import RotatedMNIST
from avalanche_neuromod.evaluation import ContinualResults, accuracy_matrix, make_evaluator
from avalanche_neuromod.models import FlyNet, NeuroModNet
from avalanche_neuromod.training import CRWN, train_tasks_parallel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-root", default=None, help="MNIST folder (torchvision layout); default: bundled digits")
    parser.add_argument("--experiences", type=int, default=6)
    parser.add_argument("--model", choices=["flynet", "neuromodnet"], default="flynet")
    parser.add_argument("--expansion", type=int, default=10, help="FlyNet hidden size / 784")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="NeuroModNet hidden sizes")
    parser.add_argument("--local-only", action="store_true", help="keep random strengths fixed (ablation)")
    parser.add_argument("--iterations", type=int, default=None, help="batches of 128 per task (default 1000 on MNIST, 300 on digits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/crwn_rotated", help="folder for the figures")
    parser.add_argument("--workers", type=int, default=0,
                        help="train the tasks in this many parallel workers (train_tasks_parallel); the model is the "
                             "one trained task after task at one thread. 0: task after task, evaluating as it goes")
    parser.add_argument("--ray", action="store_true", help="with --workers: Ray tasks instead of local processes")
    args = parser.parse_args(argv)

    # Parallel workers run one thread each; the sequential run uses as many, so both give the same model.
    torch.set_num_threads(1 if args.workers else 2)
    torch.manual_seed(args.seed)
    data = {"dataset_root": args.dataset_root} if args.dataset_root else {"dataset": "digits"}
    iterations = args.iterations or (1000 if args.dataset_root else 300)
    benchmark = RotatedMNIST(n_experiences=args.experiences, return_task_id=True, **data)
    if args.model == "flynet":
        model = FlyNet(args.expansion, local_only=args.local_only, seed=args.seed)
        name = f"FlyNet-{args.expansion}d"
    else:
        model = NeuroModNet(tuple(args.hidden), local_only=args.local_only, seed=args.seed)
        name = "NeuroModNet-FC" + "-".join(map(str, args.hidden))
    # batch_seed: task t's batch order comes from (seed, t), so it trains the same alone or after others.
    strategy = CRWN(model=model, n_iterations=iterations, train_mb_size=128, eval_mb_size=1000, batch_seed=args.seed,
                    evaluator=make_evaluator(progress_bar=False, forgetting=True, bwt=False))
    print(f"{name}{' (local only)' if args.local_only else ''}: {model.params_per_task():,} "
          f"learned parameters per task, {iterations} batches of 128 per task, {benchmark!r}")

    if args.workers:
        start = time.perf_counter()
        done = train_tasks_parallel(strategy, benchmark.train_stream, eval_experiences=benchmark.test_stream,
                                    backend="ray" if args.ray else "processes", workers=args.workers)
        print(f"{len(done)} tasks in {time.perf_counter() - start:.1f} s with {args.workers} workers")
        seconds = [r.seconds for r in done]
        # Each task measured in its worker right after training, then every task on the merged model.
        final = accuracy_matrix([strategy.eval(benchmark.test_stream)], n_experiences=len(done))[0]
        matrix = np.full((len(done), len(done)), np.nan)
        matrix[np.diag_indices(len(done))] = [r.accuracy for r in done]
        matrix[-1] = final
        results = ContinualResults(matrix, name)
    else:
        evals, seconds = [], []
        for experience in tqdm(benchmark.train_stream, desc="tasks", unit="task"):
            start = time.perf_counter()
            strategy.train(experience)
            seconds.append(time.perf_counter() - start)
            evals.append(strategy.eval(benchmark.test_stream[: experience.current_experience + 1]))
        results = ContinualResults.from_eval(evals, name)
    print("\n| task | angle | accuracy after its training | final accuracy | seconds |")
    print("|---|---|---|---|---|")
    for t, angle in enumerate(benchmark.details["rotations"]):
        print(f"| {t} | {angle:.0f} | {results.matrix[t, t]:.4f} | {results.final_accuracies[t]:.4f} | {seconds[t]:.1f} |")
    print(f"\nmean final accuracy {results.average_accuracy:.4f}, forgetting {results.average_forgetting:.6f}")

    out = Path(args.out)
    save_figure(plot_accuracy_matrix(results), out / "accuracy_matrix.png")
    labels = [f"{a:.0f}" for a in benchmark.details["rotations"]]
    save_figure(plot_context_similarity(model, labels=labels, title=f"{name}: context similarity (angle, degrees)"),
                out / "context_similarity.png")
    print(f"Figures saved to {out}/")


if __name__ == "__main__":
    main()
