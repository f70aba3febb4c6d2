"""CRWN (Hong & Pavlic) on Rotated and Permuted MNIST: the paper's Table 1 grid.

What it measures
----------------
Grid: FlyNet 10d/20d/30d/40d and NeuroModNet FC256/FC512/FC1024/FC2048/FC4096
(two hidden layers of width h), each in "Local+Global" mode (context and
random strength learned per task) and "Local-only" mode (random strengths
kept at their initial value), on Rotated MNIST (36 tasks, 10 degrees apart)
and Permuted MNIST (100 tasks), trained with ``avalanche_neuromod.training.CRWN``
for 1,000 mini-batches of 128 per task (RMSProp, lr 0.01). The grid is a
:class:`~avalanche_neuromod.evaluation.Grid` run by ``run_grid``, the
harness of ``benchmarks/compare.py``: every cell is measured by the same
protocol and cached (``--cache-dir``, shared with ``compare.py``, so a cell
both scripts run is trained once; a killed run started again skips the
finished cells). Per row:

- mean test accuracy over the tasks measured (final row of the accuracy matrix);
- params/task (``model.params_per_task()``);
- seconds per task (mean wall time of ``strategy.train`` on one experience),
  marked when other processes loaded the machine while it ran;
- forgetting, ``A[j, j] - A[T, j]`` (accuracy right after learning task j
  minus final accuracy), minimum and maximum over the tasks before the last:
  CRWN never updates anything shared, so both must be exactly 0.

Reference: Avalanche's ``Naive`` and ``EWC`` (lambda 100) on a 784-256-256-10
ReLU MLP (SGD lr 0.01, momentum 0.9, the same 1,000 mini-batches of 128 per
task), next to CRWN NeuroModNet-FC256 on the same first N Permuted-MNIST
tasks (default 20), each evaluated on every task seen after each task: the
average accuracy over the tasks seen, the first task count after which
EWC's (and Naive's) average falls below FC256's, and a plot,
``docs/images/crwn_pmnist_vs_ewc.png``.

Targets (the issue's): FlyNet-10d at least 94% on Rotated MNIST; a
FlyNet-10d task in under 4 s; exactly zero forgetting for every CRWN run;
FC256 at ~90.5% per permuted task; EWC degrading as tasks accumulate.

Outputs: ``benchmarks/results/crwn_mnist.json`` (every cell, the command,
the machine, the scale run) and the delimited ``crwn_mnist`` section of
``docs/results.md`` (other sections are left as they are).

Full scale (the paper's; about 36 + 100 tasks per row and mode, days on
2 CPU cores because FC4096 takes ~85 s per task)::

    python benchmarks/crwn_mnist.py --dataset-root "$AVALANCHE_NEUROMOD_DATA" --eval-protocol final

Scale actually run for docs/results.md (2 CPU cores, about 45 min): every
task for FlyNet-10d and FC256 (both modes), the first 3 tasks (2 for
FC2048/FC4096) for the other rows::

    python benchmarks/crwn_mnist.py --dataset-root "$AVALANCHE_NEUROMOD_DATA" --tasks 3 \
        --row-tasks FlyNet-10d=100 FC256=100 FC2048=2 FC4096=2 \
        --local-only-rows FlyNet-10d FC256 --reference-tasks 20 \
        --eval-protocol final --context-plot outputs/context
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from _report import (REPO_ROOT, add_dataset_root_argument, add_scaling_arguments, check_mnist_root, machine_was_busy,
                     markdown_table, portable_path, publish, result_header, scaling_options, scaling_text,
                     section_opening, shell_quote, target, target_lines, text_table)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "crwn_mnist.json"
DEFAULT_CACHE = REPO_ROOT / "benchmarks" / "results" / "compare_cells"
PLOT_PATH = REPO_ROOT / "docs" / "images" / "crwn_pmnist_vs_ewc.png"
SECTION_START = "<!-- crwn_mnist:start -->"
SECTION_END = "<!-- crwn_mnist:end -->"

BATCH_SIZE = 128
EWC_LAMBDA = 100.0
FC256 = [256, 256]

# Row name (as on the command line) -> the harness's method spec, Local+Global.
ROWS: Dict[str, Dict[str, Any]] = {
    **{f"FlyNet-{k}d": {"kind": "crwn", "arch": "flynet", "expansion": k} for k in (10, 20, 30, 40)},
    **{f"FC{h}": {"kind": "crwn", "hidden": [h, h]} for h in (256, 512, 1024, 2048, 4096)},
}
MODES: Dict[str, bool] = {"local+global": False, "local-only": True}
MODE_LABELS = {"local+global": "Local+Global", "local-only": "Local-only"}
STREAM_LENGTHS: Dict[str, int] = {"rotated": 36, "permuted": 100}
OPTIMIZERS = ("rmsprop", "adam")
EVAL_PROTOCOLS = {"all-seen": "seen", "final": "final"}
REFERENCE_ROW = "FC256"
REFERENCE_METHODS: Dict[str, Dict[str, Any]] = {
    "EWC": {"kind": "ewc", "hidden": FC256, "ewc_lambda": EWC_LAMBDA},
    "Naive": {"kind": "naive", "hidden": FC256},
}
CURVE_LABELS = {REFERENCE_ROW: "CRWN NeuroModNet-FC256", "EWC": f"EWC (lambda {EWC_LAMBDA:g}), MLP 256-256",
                "Naive": "Naive, MLP 256-256"}

# Targets stated in the issue.
FLYNET_ROTATED_MIN_ACCURACY = 0.94
FLYNET_MAX_SECONDS_PER_TASK = 4.0
FC256_REFERENCE_ACCURACY = 0.905
FC256_TOLERANCE = 0.01


# ---------------------------------------------------------------- arguments


def _canonical_row(name: str) -> str:
    by_lower = {r.lower(): r for r in ROWS}
    row = by_lower.get(name.lower())
    if row is None:
        raise argparse.ArgumentTypeError(f"unknown row {name!r}; choose from {', '.join(ROWS)}.")
    return row


def _row_tasks(item: str) -> Tuple[str, int]:
    name, sep, count = item.partition("=")
    if not sep or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected ROW=K with K >= 1 (e.g. FC4096=1), got {item!r}.")
    return _canonical_row(name), int(count)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="CRWN's Table 1 grid on Rotated/Permuted MNIST, plus Naive/EWC references.",
    )
    add_dataset_root_argument(parser)
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks per stream for every grid row (default: all, 36 rotated / 100 permuted).")
    parser.add_argument("--row-tasks", type=_row_tasks, nargs="+", default=[], metavar="ROW=K",
                        help="fewer (or more) tasks for some rows, e.g. FC4096=1 FC2048=2.")
    parser.add_argument("--reference-tasks", type=int, default=20,
                        help="Permuted-MNIST tasks for the FC256 / EWC / Naive curves (0 skips them).")
    parser.add_argument("--rows", type=_canonical_row, nargs="+", default=list(ROWS),
                        help=f"grid rows (default: all): {', '.join(ROWS)}.")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                        help="modulation modes (default: both).")
    parser.add_argument("--local-only-rows", type=_canonical_row, nargs="+", default=None,
                        help="run local-only mode for these rows only (default: every row in --rows).")
    parser.add_argument("--streams", nargs="+", choices=list(STREAM_LENGTHS), default=list(STREAM_LENGTHS),
                        help="streams (default: both).")
    parser.add_argument("--iterations", type=int, default=1000, help="mini-batches of 128 per task.")
    parser.add_argument("--context-plot", type=Path, nargs="?", const=REPO_ROOT / "docs" / "images", default=None,
                        metavar="FOLDER", help="save each grid run's context-similarity heatmap (default folder "
                                               "docs/images).")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="rmsprop",
                        help="optimiser of the CRWN tasks, lr 0.01 (the paper: RMSprop).")
    parser.add_argument("--eval-protocol", choices=list(EVAL_PROTOCOLS), default="final",
                        help="final: after each task only that task, and every task once at the end (forgetting "
                             "A[j,j] - A[T,j] at O(T) evaluation cost); all-seen: after each task every task seen "
                             "so far (the accuracy curve; O(T^2)).")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="finished cells, one JSON each (default: the folder compare.py uses too).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output file.")
    parser.add_argument("--no-docs", action="store_true",
                        help="do not touch docs/results.md nor the plot in docs/images.")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and of the batch order.")
    add_scaling_arguments(parser)
    args = parser.parse_args(argv)
    args.dataset_root = check_mnist_root(parser, args.dataset_root)
    for name, value in (("--tasks", args.tasks), ("--iterations", args.iterations)):
        if value is not None and value < 1:
            parser.error(f"{name} must be at least 1, got {value}.")
    if not 0 <= args.reference_tasks <= STREAM_LENGTHS["permuted"]:
        parser.error(f"--reference-tasks must be between 0 and {STREAM_LENGTHS['permuted']}, "
                     f"got {args.reference_tasks}.")
    return args


# ---------------------------------------------------------------- the grids


def method_name(row: str, mode: str) -> str:
    """The cell's method name (the same as compare.py's where both run a row, so cells are shared)."""
    name = f"NeuroModNet-{row}" if row.startswith("FC") else row
    return name if mode == "local+global" else f"{name} local-only"


def method_spec(row: str, mode: str, tasks: int, length: int, optimizer: str) -> Dict[str, Any]:
    spec = dict(ROWS[row])
    if MODES[mode]:
        spec["local_only"] = True
    if optimizer != "rmsprop":
        spec["optimizer"] = optimizer
    if tasks < length:
        spec["tasks"] = tasks
    return spec


def build_grids(args: argparse.Namespace) -> Dict[str, Any]:
    """The Table 1 grid (one per stream: rows may run fewer tasks than the stream has) and the reference grid."""
    from avalanche_neuromod.evaluation import Grid

    overrides = dict(args.row_tasks)
    local_rows = set(args.local_only_rows) if args.local_only_rows is not None else set(args.rows)
    grids = {}
    for stream in args.streams:
        length = STREAM_LENGTHS[stream]
        methods = {}
        for row in args.rows:
            for mode in args.modes:
                if mode == "local-only" and row not in local_rows:
                    continue
                tasks = min(overrides.get(row, args.tasks if args.tasks is not None else length), length)
                methods[method_name(row, mode)] = method_spec(row, mode, tasks, length, args.optimizer)
        grids[stream] = Grid(methods=methods, streams={stream: {"kind": stream, "n_experiences": length}},
                             seeds=[args.seed], n_iterations=args.iterations, batch_size=BATCH_SIZE,
                             eval_protocol=EVAL_PROTOCOLS[args.eval_protocol])
    if args.reference_tasks:
        n = args.reference_tasks
        methods = {method_name(REFERENCE_ROW, "local+global"): method_spec(REFERENCE_ROW, "local+global", n, n,
                                                                          args.optimizer),
                   **REFERENCE_METHODS}
        grids["reference"] = Grid(methods=methods,
                                  streams={"permuted": {"kind": "permuted", "n_experiences": args.reference_tasks}},
                                  seeds=[args.seed], n_iterations=args.iterations, batch_size=BATCH_SIZE,
                                  eval_protocol="seen")
    return grids


def context_plotter(folder: Optional[Path]):
    """``after_training`` for run_grid: the paper's interpretability figure of each CRWN cell."""
    if folder is None:
        return None

    def plot(cell: Any, strategy: Any, benchmark: Any) -> Optional[Dict[str, Any]]:
        import matplotlib

        matplotlib.use("Agg")

        from avalanche_neuromod.analysis import plot_context_similarity, save_figure

        model = strategy.model
        details = benchmark.details
        labels = None
        if "rotations" in details:
            labels = [f"{a:.0f}" for a in details["rotations"]][: len(model.trained_tasks)]
        unit = " (rotation, degrees)" if labels is not None else " (task)"
        fig = plot_context_similarity(model, labels=labels,
                                      title=f"{cell.method}, {cell.stream} MNIST: context similarity{unit}")
        row = cell.method.replace("NeuroModNet-", "").replace(" local-only", "")
        mode = "local-only" if cell.method.endswith(" local-only") else "local_global"
        path = folder / f"crwn_context_similarity_{cell.stream}_{row}_{mode}.png".lower()
        return {"context_plot": portable_path(save_figure(fig, path))}

    return plot


# ---------------------------------------------------------------- analysis


def accuracy_curve(cell: Dict[str, Any]) -> List[float]:
    """Average accuracy over the tasks seen, after each task (cells evaluated with the 'seen' protocol)."""
    from avalanche_neuromod.evaluation import ContinualResults

    matrix = np.array(cell["accuracy_matrix"], dtype=float)  # None (not measured) becomes NaN
    return [float(v) for v in ContinualResults(matrix).accuracy_curve()]


def just_trained(cell: Dict[str, Any]) -> List[float]:
    """Accuracy on each task right after training it (the accuracy matrix's diagonal)."""
    return [float(row[i]) for i, row in enumerate(cell["accuracy_matrix"])]


def first_crossing(method: Sequence[float], reference: Sequence[float]) -> Optional[int]:
    """First task count k (1-based) after which ``method``'s average is below ``reference``'s."""
    for k, (m, r) in enumerate(zip(method, reference), start=1):
        if m < r:
            return k
    return None


def crossing_statement(name: str, k: Optional[int], method: Sequence[float], reference: Sequence[float]) -> str:
    n = len(reference)
    if k is None:
        return f"{name}'s average accuracy stays at or above CRWN FC256's for all {n} tasks."
    # The values show how clear the crossing is: near it the curves can differ by a few test images.
    values = f"({100 * method[k - 1]:.2f}% vs {100 * reference[k - 1]:.2f}%)"
    if k == 1:
        return f"{name}'s average accuracy is below CRWN FC256's from the first task on {values}."
    return (f"{name}'s average accuracy over the tasks seen first falls below CRWN FC256's "
            f"after task {k} of {n} {values}.")


def reference_curves(cells: List[Dict[str, Any]]) -> Dict[str, List[float]]:
    """Row name -> accuracy curve of the reference cells."""
    names = {method_name(REFERENCE_ROW, "local+global"): REFERENCE_ROW, "EWC": "EWC", "Naive": "Naive"}
    return {names[c["method"]]: accuracy_curve(c) for c in cells}


def crossings(curves: Dict[str, List[float]]) -> Dict[str, Dict[str, Any]]:
    crwn = curves[REFERENCE_ROW]
    out = {}
    for name in ("EWC", "Naive"):
        k = first_crossing(curves[name], crwn)
        out[name] = {"first_task_count_below_fc256": k, "statement": crossing_statement(name, k, curves[name], crwn)}
    return out


def is_crwn(cell: Dict[str, Any]) -> bool:
    return cell["kind"] == "crwn"


def evaluate_targets(grid: List[Dict[str, Any]], reference: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's checkable numbers, for what was run."""
    targets = []
    fly = [c for c in grid if c["method"] == "FlyNet-10d"]
    fly_rot = next((c for c in fly if c["stream"] == "rotated"), None)
    if fly_rot:
        targets.append(target(f"FlyNet-10d, Rotated MNIST: mean accuracy >= {FLYNET_ROTATED_MIN_ACCURACY:.0%} "
                              f"(first {len(fly_rot['final_accuracies'])} tasks)",
                              fly_rot["avg_accuracy"] >= FLYNET_ROTATED_MIN_ACCURACY, f"{fly_rot['avg_accuracy']:.2%}"))
    if fly:
        seconds = [s for c in fly for s in c["seconds"]]
        targets.append(target(f"one FlyNet-10d task trains in under {FLYNET_MAX_SECONDS_PER_TASK:.0f} s "
                              f"(slowest of {len(seconds)} tasks)", max(seconds) < FLYNET_MAX_SECONDS_PER_TASK,
                              f"{max(seconds):.2f} s (mean {np.mean(seconds):.2f} s)"))
    crwn = [c for c in grid + reference if is_crwn(c) and c["forgetting"]]
    if crwn:
        values = [v for c in crwn for v in c["forgetting"] if v is not None]
        targets.append(target(f"CRWN zero forgetting: A[j,j] - A[T,j] == 0 exactly ({len(crwn)} runs, "
                              f"{len(values)} tasks)", all(v == 0.0 for v in values),
                              f"min {min(values):.4g}, max {max(values):.4g}"))
    by = {c["method"]: c for c in reference}
    fc, ewc = by.get(method_name(REFERENCE_ROW, "local+global")), by.get("EWC")
    if fc and ewc:
        per_task = float(np.mean(just_trained(fc)))
        worst = max([v for v in fc["forgetting"] if v is not None], default=0.0)
        targets.append(target(f"FC256 keeps its per-task accuracy (~{FC256_REFERENCE_ACCURACY:.1%} per permuted "
                              f"task, within {FC256_TOLERANCE:.0%}; final == just after training)",
                              abs(per_task - FC256_REFERENCE_ACCURACY) <= FC256_TOLERANCE and worst == 0.0,
                              f"{per_task:.2%} per task, final mean {fc['avg_accuracy']:.2%}, max forgetting {worst}"))
        curve = accuracy_curve(ewc)
        targets.append(target(f"EWC degrades as tasks accumulate (average after task {len(curve)} below after "
                              f"task 1)", curve[-1] < curve[0], f"{curve[0]:.2%} -> {curve[-1]:.2%}"))
    return targets


# ---------------------------------------------------------------- output


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _mode(cell: Dict[str, Any]) -> str:
    return MODE_LABELS["local-only" if cell["settings"].get("local_only") else "local+global"]


def _row(cell: Dict[str, Any]) -> str:
    return cell["method"].replace("NeuroModNet-", "").replace(" local-only", "")


def _forgetting_range(cell: Dict[str, Any]) -> List[str]:
    values = [v for v in cell["forgetting"] if v is not None]
    return [f"{min(values):.4g}", f"{max(values):.4g}"] if values else ["n/a (1 task)"] * 2


GRID_HEADER = ["stream", "row", "mode", "tasks measured", "mean acc (%)", "params/task", "s/task",
               "min forgetting", "max forgetting"]
SPREAD_HEADER = ["stream", "row", "mode", "tasks", "lowest task (%)", "median task (%)", "highest task (%)",
                 "s/task mean", "s/task slowest"]


def grid_rows(cells: List[Dict[str, Any]], cpu_count: Optional[int] = None) -> List[List[str]]:
    return [[c["stream"], _row(c), _mode(c), f"{len(c['final_accuracies'])} of {c['stream_settings']['n_experiences']}",
             _pct(c["avg_accuracy"]), f"{c['params_per_task']:,}",
             f"{c['seconds_per_task']:.1f}" + (" *" if busy(c, cpu_count) else ""), *_forgetting_range(c)]
            for c in cells]


def busy(cell: Dict[str, Any], cpu_count: Optional[int] = None) -> bool:
    return machine_was_busy(cell.get("load_average_before_task", []), cpu_count)


def spread_rows(cells: List[Dict[str, Any]]) -> List[List[str]]:
    """Per-task spread of the cells that covered their whole stream."""
    rows = []
    for c in cells:
        acc = np.asarray(c["final_accuracies"], dtype=float)
        if len(acc) != c["stream_settings"]["n_experiences"]:
            continue
        low, high = int(np.argmin(acc)), int(np.argmax(acc))
        rows.append([c["stream"], _row(c), _mode(c), str(len(acc)), f"{100 * acc[low]:.2f} (task {low})",
                     f"{100 * np.median(acc):.2f}", f"{100 * acc[high]:.2f} (task {high})",
                     f"{np.mean(c['seconds']):.2f}", f"{max(c['seconds']):.2f}"])
    return rows


def curve_rows(curves: Dict[str, List[float]]) -> List[List[str]]:
    names = [n for n in CURVE_LABELS if n in curves]
    n = min(len(curves[name]) for name in names)
    return [[str(k + 1)] + [_pct(curves[name][k]) for name in names] for k in range(n)]


def plot_curves(curves: Dict[str, List[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from avalanche_neuromod.analysis import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, style in zip(CURVE_LABELS, ("o-", "s-", "^-")):
        if name in curves:
            ax.plot(range(1, len(curves[name]) + 1), [100 * v for v in curves[name]], style, ms=4,
                    label=CURVE_LABELS[name])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("tasks trained (Permuted MNIST)")
    ax.set_ylabel("average test accuracy over tasks seen (%)")
    ax.set_title("CRWN FC256 vs EWC and Naive on Permuted MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def scale_lines(result: Dict[str, Any]) -> List[str]:
    """One line per stream and mode saying how many tasks each row ran."""
    lines = []
    for stream, length in STREAM_LENGTHS.items():
        for mode in MODE_LABELS.values():
            cells = [c for c in result["grid"] if c["stream"] == stream and _mode(c) == mode]
            if not cells:
                continue
            by_count: Dict[int, List[str]] = {}
            for c in cells:
                by_count.setdefault(len(c["final_accuracies"]), []).append(_row(c))
            parts = [f"first {k} of {length} tasks for {', '.join(rows)}"
                     for k, rows in sorted(by_count.items(), reverse=True)]
            lines.append(f"{stream.capitalize()} MNIST, {mode}: " + "; ".join(parts) + ".")
    lines.append(f"{result['settings']['iterations']:,} mini-batches of {BATCH_SIZE} per task, every method.")
    if result["settings"]["eval_protocol"] == "final":
        lines.append("Grid evaluation: each task right after training it, and every task after the last "
                     "(forgetting A[j,j] - A[T,j] as with the full protocol; no intermediate accuracy curve).")
    if "scaling" in result:
        lines.append(f"Ran as {scaling_text(result['scaling'])}.")
    if result["reference"]:
        lines.append(f"Reference curves: first {len(result['reference'][0]['final_accuracies'])} of "
                     f"{STREAM_LENGTHS['permuted']} Permuted-MNIST tasks (CRWN FC256 Local+Global, EWC, Naive), "
                     f"each evaluated on every task seen after each task.")
    return lines


def markdown_section(result: Dict[str, Any]) -> str:
    cpu_count = result["machine"]["cpu_count"]
    lines = section_opening(
        SECTION_START, "CRWN on Rotated and Permuted MNIST (issue 3)", result,
        data=f"real MNIST read from `{result['dataset_root']}` (torchvision layout, `MNIST/raw/*.gz`); every task "
             f"uses all 60,000 training and 10,000 test images, rotated by 10 degrees per task or pixel-permuted "
             f"with seed = task index.")
    lines += ["- Scale actually run (the paper runs all 36 rotated and 100 permuted tasks per row):"]
    lines += [f"  - {line}" for line in result["scale"]]
    lines += ["- Mean accuracy: over the tasks measured, after the last of them. s/task: mean wall time of "
              "`strategy.train` on one task. Forgetting: accuracy right after training a task minus its final "
              "accuracy, over the tasks before the last. Cells are shared with `benchmarks/compare.py` "
              f"(`{result['cache_dir']}`).", ""]
    lines += markdown_table(GRID_HEADER, grid_rows(result["grid"], cpu_count), align="lllrrrrrr")
    spread = spread_rows(result["grid"])
    if spread:
        lines += ["", "Runs over a whole stream: spread of the per-task final accuracies (rotated task k is "
                      "10k degrees; permuted task k uses permutation seed k) and of the training time per task.", ""]
        lines += markdown_table(SPREAD_HEADER, spread, align="llllrrrrr")
    if any(busy(c, cpu_count) for c in result["grid"]):
        lines += ["", "\\* other processes loaded the machine while this row trained (1-minute load average above "
                      f"{cpu_count} + 1 before a task): its s/task is inflated; the cells hold per-task CPU seconds "
                      "and load averages."]
    if result["reference"]:
        curves = result["curves"]
        by = {c["method"]: c for c in result["reference"]}
        fc = by[method_name(REFERENCE_ROW, "local+global")]
        lines += ["", f"Reference, first {len(curves[REFERENCE_ROW])} Permuted-MNIST tasks: average test accuracy "
                      f"(%) over the tasks seen after each task. EWC (lambda {EWC_LAMBDA:g}) and Naive train a "
                      f"784-256-256-10 MLP with SGD lr 0.01, momentum 0.9, {result['settings']['iterations']:,} "
                      f"mini-batches of {BATCH_SIZE} per task; CRWN FC256 learns {fc['params_per_task']:,} "
                      f"parameters per task, the MLP retrains all {by['EWC']['params_per_task']:,}.", ""]
        lines += markdown_table(["after task"] + [CURVE_LABELS[n] for n in CURVE_LABELS if n in curves],
                                curve_rows(curves), align="rrrr"[: 1 + len(curves)])
        lines += [""] + markdown_table(
            ["method", "s/task (train)", "final average accuracy (%)"],
            [[CURVE_LABELS[name], f"{by[m]['seconds_per_task']:.1f}", _pct(by[m]["avg_accuracy"])]
             for name, m in ((REFERENCE_ROW, fc["method"]), ("EWC", "EWC"), ("Naive", "Naive")) if m in by],
            align="lrr")
        lines += ["", *[f"- {c['statement']}" for c in result["crossings"].values()], "",
                  "![Average accuracy over seen Permuted-MNIST tasks: CRWN FC256 vs EWC and Naive]"
                  "(images/crwn_pmnist_vs_ewc.png)"]
    if result["targets"]:
        lines += ["", *target_lines(result["targets"])]
    lines += ["", "Full scale (all tasks, both modes, every row; days on this machine, FC4096 alone takes ~85 s per "
                  "task):", "", "```",
              f".venv/bin/python benchmarks/crwn_mnist.py --dataset-root {shell_quote(result['dataset_root'])}",
              "```", SECTION_END]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from avalanche_neuromod.evaluation import run_grid

    started = time.perf_counter()
    grids = build_grids(args)
    options = scaling_options(args)

    def on_cell(cell: Any, r: Dict[str, Any], cached: bool) -> None:
        forgetting = [v for v in r["forgetting"] if v is not None]
        print(f"{'cached' if cached else 'done'}: {cell.label}: {len(r['final_accuracies'])} tasks, mean acc "
              f"{r['avg_accuracy']:.4f}, {r['seconds_per_task']:.1f} s/task, max forgetting "
              f"{max(forgetting) if forgetting else 'n/a'}", flush=True)

    cells: Dict[str, List[Dict[str, Any]]] = {}
    for name, grid in grids.items():
        cells[name] = run_grid(grid, dataset_root=args.dataset_root, cache_dir=args.cache_dir, on_cell=on_cell,
                               after_training=context_plotter(args.context_plot) if name != "reference" else None,
                               **options)
    result: Dict[str, Any] = {
        **result_header(argv, __file__, args.dataset_root),
        "settings": {"iterations": args.iterations, "batch_size": BATCH_SIZE, "optimizer": args.optimizer,
                     "seed": args.seed, "eval_protocol": EVAL_PROTOCOLS[args.eval_protocol]},
        "grids": {name: grid.to_dict() for name, grid in grids.items()},
        "cache_dir": portable_path(args.cache_dir), "scaling": options,
        "grid": [c for name, cs in cells.items() if name != "reference" for c in cs],
        "reference": cells.get("reference", []),
    }
    result["scale"] = scale_lines(result)
    curves = result["curves"] = reference_curves(result["reference"]) if result["reference"] else {}
    result["crossings"] = crossings(curves) if curves else {}
    result["targets"] = evaluate_targets(result["grid"], result["reference"])
    result["wall_seconds"] = time.perf_counter() - started

    print()
    print(text_table(GRID_HEADER, grid_rows(result["grid"])))
    spread = spread_rows(result["grid"])
    if spread:
        print()
        print(text_table(SPREAD_HEADER, spread))
    if curves:
        print()
        print(text_table(["after task"] + list(curves), curve_rows(curves)))
        print("\n".join(c["statement"] for c in result["crossings"].values()))
    print()
    print("\n".join(target_lines(result["targets"], markdown=False)))
    print(f"\nWall time {result['wall_seconds'] / 60:.1f} min.")
    if curves and not args.no_docs:
        plot_curves(curves, PLOT_PATH)
        print(f"Wrote {portable_path(PLOT_PATH)}")
    publish(result, args.out, None if args.no_docs else markdown_section(result), SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
