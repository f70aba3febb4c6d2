"""The CRWN paper's comparison: CRWN, its baselines and Avalanche's strategies on Rotated and Permuted MNIST.

Every method trains the same budget (``--n-iterations`` mini-batches of 128
per task, the paper's 1,000) on the same task-incremental stream and is
measured by one protocol (``avalanche_neuromod.evaluation.grid``): final
accuracy on every task and its mean, forgetting, BWT, learnable parameters
per task, seconds per task, peak memory. Methods (``PAPER_METHODS``):
FlyNet-10d / 40d, NeuroModNet FC256 / FC1024 / FC4096 (CRWN); PSP with binary and
rotational contexts, BatchE, SupSup (FC256 and FC1024), STL and MTL on the
FC256 net; Avalanche's Naive, EWC, SI, LwF, Replay, DER, PackNet, Cumulative,
GEM, A-GEM, ER-ACE and GDumb on a 784-256-256-10 ReLU MLP (SGD lr 0.01,
momentum 0.9; PackNet trains 3 epochs, pruning half of the free weights
before the last; Replay, DER, ER-ACE and GDumb keep 500 samples, GEM and
A-GEM 25 per experience; GDumb trains a fresh network on its memory for the
task's budget). Dynamos and its ablation
ConsistencyReplay (buffer 500) train their paper's reduced ResNet-18 with
Table 5's MNIST-360 row, on mini-batches of 16 (+16 replayed): the same
number of steps, an eighth of the images.

Targets (the CRWN paper's orderings), checked and written down:

1. PSP's per-task accuracy is inconsistent on the permuted stream as tasks
   accumulate: its spread over tasks (max - min final accuracy) exceeds
   NeuroModNet-FC256's, and its earliest tasks are its worst;
2. NeuroModNet-FC256 beats BatchE (FC256) with fewer parameters per task;
3. the best of FlyNet-10d / 40d and NeuroModNet-FC1024 / FC4096 (those in
   the grid) reaches SupSup's accuracy (within 0.5 points, or above):
   SupSup-FC256, the row of the paper's Table 1, and SupSup-FC1024, a
   stronger SupSup the paper did not run;
4. speed: a SupSup task costs at most 2x a NeuroModNet task of the same width.

Finished cells are cached (``--cache-dir``, one JSON per cell): a killed
run started again skips them. Outputs: ``benchmarks/results/compare.json``
(``--out``), the figures ``docs/images/compare_<stream>_tasks.png`` (final
accuracy per task, the paper's Figures 2/4) and
``docs/images/compare_<stream>_params.png`` (accuracy against parameters
per task, Figures 3/5), and the ``compare`` section of ``docs/results.md``.

Full scale (36 rotated and 20 permuted tasks, 1,000 batches per task; many
hours on 2 CPU cores)::

    python benchmarks/compare.py --dataset-root "$AVALANCHE_NEUROMOD_DATA"

A reduced scale states itself in the results (``--tasks``, ``--n-iterations``)::

    python benchmarks/compare.py --dataset-root "$AVALANCHE_NEUROMOD_DATA" \\
        --tasks rotated=12 permuted=10 --n-iterations 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from _report import (EMBEDDED_DIGITS, REPO_ROOT, add_dataset_root_argument, add_scaling_arguments, check_label,
                     check_mnist_root, figure_lines, portable_path, publish, result_header, scaling_options, scaling_text,
                     section_markers, section_opening, target, target_lines)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "compare.json"
DEFAULT_CACHE = REPO_ROOT / "benchmarks" / "results" / "compare_cells"
IMAGES = REPO_ROOT / "docs" / "images"

FC256 = [256, 256]
FC1024 = [1024, 1024]
FC4096 = [4096, 4096]
PAPER_METHODS: Dict[str, Dict[str, Any]] = {
    "FlyNet-10d": {"kind": "crwn", "arch": "flynet", "expansion": 10},
    "NeuroModNet-FC256": {"kind": "crwn", "hidden": FC256},
    "NeuroModNet-FC1024": {"kind": "crwn", "hidden": FC1024},
    "FlyNet-40d": {"kind": "crwn", "arch": "flynet", "expansion": 40},
    "NeuroModNet-FC4096": {"kind": "crwn", "hidden": FC4096},
    "PSP-binary-FC256": {"kind": "psp", "hidden": FC256, "context": "binary"},
    "PSP-rotational-FC256": {"kind": "psp", "hidden": FC256, "context": "rotational"},
    "BatchE-FC256": {"kind": "batche", "hidden": FC256},
    "SupSup-FC256": {"kind": "supsup", "hidden": FC256},
    "SupSup-FC1024": {"kind": "supsup", "hidden": FC1024},
    "STL-FC256": {"kind": "stl", "hidden": FC256},
    "MTL-FC256": {"kind": "mtl", "hidden": FC256},
    "Naive": {"kind": "naive", "hidden": FC256},
    "EWC": {"kind": "ewc", "hidden": FC256, "ewc_lambda": 100.0},
    "SI": {"kind": "si", "hidden": FC256, "si_lambda": 1.0},
    "LwF": {"kind": "lwf", "hidden": FC256, "alpha": 1.0, "temperature": 2.0},
    "Replay": {"kind": "replay", "hidden": FC256, "mem_size": 500},
    "DER": {"kind": "der", "hidden": FC256, "mem_size": 500, "alpha": 0.1, "beta": 0.5},
    "PackNet": {"kind": "packnet", "hidden": FC256, "epochs": 3, "post_prune_epochs": 1, "prune_proportion": 0.5},
    "Cumulative": {"kind": "cumulative", "hidden": FC256},
    # GEM and A-GEM keep 25 patterns per experience: Replay's 500 over the 20 permuted tasks.
    "GEM": {"kind": "gem", "hidden": FC256, "patterns_per_exp": 25, "memory_strength": 0.5},
    "AGEM": {"kind": "agem", "hidden": FC256, "patterns_per_exp": 25, "sample_size": 128},
    "ER-ACE": {"kind": "er_ace", "hidden": FC256, "mem_size": 500},
    "GDumb": {"kind": "gdumb", "hidden": FC256, "mem_size": 500},
    # Dynamos and its ablation on their paper's network, Table 5's MNIST-360 row and mini-batch of 16 (+16 replayed):
    # at 128 + 128 a step of the ResNet with agents costs ~8x, some 3.5 hours for the permuted stream on 2 cores.
    "Dynamos-B500": {"kind": "dynamos", "buffer_size": 500, "batch_size": 16},
    "ConsistencyReplay-B500": {"kind": "consistency_replay", "buffer_size": 500, "batch_size": 16},
}
PAPER_STREAMS = {"permuted": {"kind": "permuted", "n_experiences": 20}, "rotated": {"kind": "rotated", "n_experiences": 36}}
# The CRWN rows that target 3 weighs against SupSup (the paper's claim is for FC4096 and FlyNet).
CRWN_CONTENDERS = ("FlyNet-10d", "FlyNet-40d", "NeuroModNet-FC1024", "NeuroModNet-FC4096")
SUPSUP_REFERENCES = (("SupSup-FC256", "the paper's Table 1 row"), ("SupSup-FC1024", "wider than the paper's"))
"""The SupSup rows target 3 checks against: the paper compares with SupSup on FC256; FC1024 is a stronger one."""
SPEED_PAIRS = (("SupSup-FC256", "NeuroModNet-FC256"), ("SupSup-FC1024", "NeuroModNet-FC1024"))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_root_argument(parser)
    parser.add_argument("--digits", action="store_true",
                        help="use scikit-learn's digits instead of MNIST (no data needed; a smoke scale).")
    parser.add_argument("--streams", nargs="+", choices=sorted(PAPER_STREAMS), default=list(PAPER_STREAMS))
    parser.add_argument("--methods", nargs="+", choices=list(PAPER_METHODS), default=list(PAPER_METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--tasks", nargs="+", default=[], metavar="STREAM=N",
                        help="tasks per stream (default: 36 rotated, 20 permuted).")
    parser.add_argument("--n-iterations", type=int, default=1000, help="mini-batches of 128 per task.")
    parser.add_argument("--eval-protocol", choices=("final", "seen"), default="final")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--figures", type=Path, default=IMAGES, help="folder of the figures.")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/results.md.")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the section's notes (e.g. which cells came from which run); repeatable.")
    parser.add_argument("--label", default=None,
                        help="a grid of its own: writes compare_LABEL.json, figures compare_LABEL_*.png and its own "
                             "section of docs/results.md (default: compare.json and the 'compare' section).")
    add_scaling_arguments(parser)
    args = parser.parse_args(argv)
    check_label(parser, args.label)
    if args.label is not None and args.out == DEFAULT_OUT:
        args.out = DEFAULT_OUT.with_name(f"compare_{args.label}.json")
    args.root = None if args.digits else check_mnist_root(parser, args.dataset_root)
    args.task_counts = {}
    for item in args.tasks:
        name, _, count = item.partition("=")
        if name not in PAPER_STREAMS or not count.isdigit() or int(count) < 1:
            parser.error(f"--tasks takes STREAM=N with STREAM in {sorted(PAPER_STREAMS)}, got {item!r}.")
        args.task_counts[name] = int(count)
    return args


def build_grid(args: argparse.Namespace):
    from avalanche_neuromod.evaluation import Grid

    streams = {}
    for name in args.streams:
        spec = dict(PAPER_STREAMS[name])
        spec["n_experiences"] = args.task_counts.get(name, spec["n_experiences"])
        if args.digits:
            spec["dataset"] = "digits"
        streams[name] = spec
    return Grid(methods={m: PAPER_METHODS[m] for m in args.methods}, streams=streams, seeds=args.seeds,
                n_iterations=args.n_iterations, batch_size=128, eval_protocol=args.eval_protocol)


def batch_notes(methods: Dict[str, Dict[str, Any]]) -> List[str]:
    """A note for every method that trains mini-batches of another size than the grid's 128."""
    return [f"- {name} trains mini-batches of {spec['batch_size']} (the others 128): the same number of steps "
            f"per task, fewer images." for name, spec in methods.items() if "batch_size" in spec]


def _row(rows: List[Dict[str, Any]], stream: str, method: str) -> Optional[Dict[str, Any]]:
    return next((r for r in rows if r["stream"] == stream and r["method"] == method), None)


def paired_wins(first: Dict[str, Any], second: Dict[str, Any]) -> str:
    """``"; A above on k of n seeds"`` over the seeds both rows have, when there are at least two; else ``""``."""
    theirs = dict(zip(second["seeds"], second.get("avg_accuracy_by_seed", [])))
    pairs = [(a, theirs[s]) for s, a in zip(first["seeds"], first.get("avg_accuracy_by_seed", [])) if s in theirs]
    if len(pairs) < 2:
        return ""
    return f"; {first['method']} above on {sum(a > b for a, b in pairs)} of {len(pairs)} seeds"


def _ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    spans: List[List[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def task_wins(first: Dict[str, Any], second: Dict[str, Any]) -> str:
    """``"; A above on k of T tasks (B on tasks ...)"`` from the rows' final per-task accuracies (seed means).

    Says where a difference of means comes from: a few tasks or all of them. Empty with fewer than two tasks.
    """
    pairs = list(zip(first["final_accuracies"], second["final_accuracies"]))
    if len(pairs) < 2:
        return ""
    theirs = [t for t, (a, b) in enumerate(pairs) if b > a]
    text = f"; {first['method']} above on {sum(a > b for a, b in pairs)} of {len(pairs)} tasks"
    return text + (f" ({second['method']} on tasks {_ranges(theirs)})" if theirs else "")


def check_targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The four targets of the module docstring, for every stream they can be checked on."""
    targets = []
    streams = sorted({r["stream"] for r in rows})
    for stream in streams:
        psp, ref = _row(rows, stream, "PSP-binary-FC256"), _row(rows, stream, "NeuroModNet-FC256")
        if stream == "permuted" and psp and ref:
            acc = psp["final_accuracies"]
            spread = max(acc) - min(acc)
            ref_spread = max(ref["final_accuracies"]) - min(ref["final_accuracies"])
            third = max(1, len(acc) // 3)
            early, late = sum(acc[:third]) / third, sum(acc[-third:]) / third
            targets.append(target("PSP inconsistent on permuted tasks", spread > ref_spread and early < late,
                                  f"PSP spread {100 * spread:.1f} pts (NeuroModNet-FC256 {100 * ref_spread:.1f}); "
                                  f"first third {100 * early:.1f}% vs last third {100 * late:.1f}%", stream=stream))
        batche = _row(rows, stream, "BatchE-FC256")
        if batche and ref:
            targets.append(target("NeuroModNet-FC256 beats BatchE with fewer params/task",
                                  ref["avg_accuracy"] > batche["avg_accuracy"]
                                  and ref["params_per_task"] < batche["params_per_task"],
                                  f"{100 * ref['avg_accuracy']:.2f}% ({ref['params_per_task']:,}) vs "
                                  f"{100 * batche['avg_accuracy']:.2f}% ({batche['params_per_task']:,})"
                                  + paired_wins(ref, batche) + task_wins(ref, batche), stream=stream))
        ours = [r for r in (_row(rows, stream, name) for name in CRWN_CONTENDERS) if r]
        best = max(ours, key=lambda r: r["avg_accuracy"]) if ours else None
        for sup_name, which in SUPSUP_REFERENCES:
            supsup = _row(rows, stream, sup_name)
            if supsup and best:
                targets.append(target(f"FlyNet or NeuroModNet reaches {sup_name} ({which})",
                                      best["avg_accuracy"] >= supsup["avg_accuracy"] - 0.005,
                                      f"{best['method']} {100 * best['avg_accuracy']:.2f}% vs SupSup "
                                      f"{100 * supsup['avg_accuracy']:.2f}%", stream=stream))
        for sup_name, nm_name in SPEED_PAIRS:
            sup, nm = _row(rows, stream, sup_name), _row(rows, stream, nm_name)
            if sup and nm:
                ratio = sup["seconds_per_task"] / nm["seconds_per_task"]
                targets.append(target(f"{sup_name} task <= 2x {nm_name}", ratio <= 2.0,
                                      f"{sup['seconds_per_task']:.1f} s vs {nm['seconds_per_task']:.1f} s = {ratio:.2f}x",
                                      stream=stream))
    return targets


def draw_figures(rows: List[Dict[str, Any]], folder: Path, prefix: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")

    from avalanche_neuromod.analysis import plot_accuracy_vs_parameters, plot_task_accuracies, save_figure

    written = []
    for stream in sorted({r["stream"] for r in rows}):
        for suffix, draw in (("tasks", plot_task_accuracies), ("params", plot_accuracy_vs_parameters)):
            path = folder / f"{prefix}{stream}_{suffix}.png"
            written.append(portable_path(save_figure(draw(rows, stream=stream), path)))
    return written


def render_section(result: Dict[str, Any], label: Optional[str] = None) -> str:
    start, end = section_markers("compare", label)
    title = "Comparison: CRWN, the paper's baselines and Avalanche's strategies" + (f" ({label})" if label else "")
    root = result["dataset_root"]
    data = root if root == EMBEDDED_DIGITS else (f"real MNIST read from `{root}` (torchvision layout, "
                                                 f"`MNIST/raw/*.gz`), all 60,000 training and 10,000 test images "
                                                 f"per task")
    lines = section_opening(start, title, result, data=f"{data}.")
    lines += [f"- Scale: {result['scale']}.", "", result["table"], ""]
    if result["targets"]:
        lines += ["Targets (the CRWN paper's orderings):", "", *target_lines(result["targets"]), ""]
    lines += figure_lines(result["figures"])
    # notes as list items: given with --note they are plain sentences, which markdown would run together
    lines += ["", *(n if n.startswith("- ") else f"- {n}" for n in result.get("notes", [])), end]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from avalanche_neuromod.evaluation import run_grid, summarize, summary_table

    grid = build_grid(args)
    options = scaling_options(args)
    full = (args.n_iterations == 1000 and not args.digits
            and all(grid.streams[s]["n_experiences"] == PAPER_STREAMS[s]["n_experiences"] for s in grid.streams))
    scale = (", ".join(f"{name} {spec['n_experiences']} tasks" for name, spec in grid.streams.items())
             + f", {args.n_iterations} mini-batches of 128 per task, seeds {args.seeds}, eval protocol "
               f"'{args.eval_protocol}'" + ("" if full else "; REDUCED from the paper's 36 rotated / 20+ permuted "
                                                           "tasks of 1,000 mini-batches")
             + f"; {scaling_text(options)}")
    header = result_header(argv, __file__, args.root)

    def on_cell(cell, r, cached):
        print(f"{'cached' if cached else 'done'}: {cell.label}: {100 * r['avg_accuracy']:.2f}% "
              f"{r['seconds_per_task']:.1f} s/task", flush=True)

    cells = run_grid(grid, dataset_root=args.root, cache_dir=args.cache_dir, on_cell=on_cell, **options)
    rows = summarize(cells)
    result = {**header, "grid": grid.to_dict(), "scale": scale, "scaling": options, "cells": cells, "summary": rows,
              "table": summary_table(rows), "targets": check_targets(rows),
              "notes": batch_notes(grid.methods) + list(args.note),
              "cache_dir": portable_path(args.cache_dir)}
    prefix = "compare_" + (f"{args.label}_" if args.label else "") + ("digits_" if args.digits else "")
    result["figures"] = draw_figures(rows, args.figures, prefix)
    print(result["table"])
    print("\n".join(target_lines(result["targets"], markdown=False)))
    publish(result, args.out, None if args.no_docs else render_section(result, args.label),
            *section_markers("compare", args.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
