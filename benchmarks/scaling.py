"""Scaling on this machine: parallel CRWN tasks, the comparison grid on Ray, and the CRWN paper's grid through both.

Three parts (``--parts``), each written to ``benchmarks/results/scaling.json``
and the ``scaling`` section of ``docs/results.md`` (a part not run keeps its
previous figures):

``tasks``
    One CRWN network (``--row``, default NeuroModNet-FC1024) trained on the
    first ``--tasks`` Rotated-MNIST tasks (default 8, 1,000 mini-batches of
    128 each) in five ways: task after task in this process with 1 and with
    2 torch threads, and :func:`~avalanche_neuromod.training.train_tasks_parallel`
    with 1 and 2 local worker processes and with 2 Ray workers (one thread
    each). Wall seconds of the training (Ray's start-up, a one-off per
    cluster, reported apart), the speed-up of 2 workers over 1 (target
    1.7x on 2 cores), and whether every merged model equals (``torch.equal``)
    the one trained task after task with one thread.
``grid``
    A small comparison grid (``--grid-methods`` on ``--grid-tasks`` rotated
    tasks, ``--grid-iterations`` mini-batches) run by ``run_grid`` serially
    and as Ray tasks (2 local workers), one thread per cell both ways: wall
    seconds side by side and whether every measured figure is identical.
``paper``
    The CRWN paper's grid (``benchmarks/crwn_mnist.py``'s rows and modes)
    through this path: cells as Ray tasks (and, with
    ``--paper-task-backend ray``, each cell's tasks as Ray tasks too), on
    ``--paper-streams`` with ``--paper-rows`` (default every
    row) and ``--paper-tasks`` tasks per row (default all). Cells are cached
    in the folder ``crwn_mnist.py`` and ``compare.py`` use, so a killed run
    resumes and the other scripts reuse them.

Keep the machine otherwise idle while it measures seconds. Commands::

    python benchmarks/scaling.py --dataset-root "$AVALANCHE_NEUROMOD_DATA" --parts tasks grid
    python benchmarks/scaling.py --dataset-root "$AVALANCHE_NEUROMOD_DATA" --parts paper \\
        --paper-streams rotated --paper-rows FlyNet-10d FC256 FC1024
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from _report import (REPO_ROOT, add_dataset_root_argument, check_mnist_root, markdown_table, publish, result_header,
                     section_opening, target, target_lines, text_table)

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "scaling.json"
DEFAULT_CACHE = REPO_ROOT / "benchmarks" / "results" / "compare_cells"
SECTION_START, SECTION_END = "<!-- scaling:start -->", "<!-- scaling:end -->"
PARTS = ("tasks", "grid", "paper")
SPEEDUP_TARGET = 1.7
GRID_METHODS = ("FlyNet-10d", "NeuroModNet-FC256", "Naive", "EWC")
MEASURED = ("accuracy_matrix", "final_accuracies", "forgetting", "avg_accuracy", "params_per_task")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    import crwn_mnist

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataset_root_argument(parser)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=["tasks", "grid"])
    parser.add_argument("--row", choices=list(crwn_mnist.ROWS), default="FC1024", help="network of part 'tasks'.")
    parser.add_argument("--tasks", type=int, default=8, help="rotated tasks of part 'tasks' (at least 8).")
    parser.add_argument("--iterations", type=int, default=1000, help="mini-batches of 128 per task, part 'tasks'.")
    parser.add_argument("--grid-methods", nargs="+", default=list(GRID_METHODS),
                        help="methods of part 'grid' (compare.py's names).")
    parser.add_argument("--grid-tasks", type=int, default=8)
    parser.add_argument("--grid-iterations", type=int, default=500)
    parser.add_argument("--paper-streams", nargs="+", choices=list(crwn_mnist.STREAM_LENGTHS),
                        default=list(crwn_mnist.STREAM_LENGTHS))
    parser.add_argument("--paper-rows", nargs="+", choices=list(crwn_mnist.ROWS), default=list(crwn_mnist.ROWS))
    parser.add_argument("--paper-modes", nargs="+", choices=list(crwn_mnist.MODES), default=list(crwn_mnist.MODES))
    parser.add_argument("--paper-tasks", type=int, default=None, help="tasks per row (default: the whole stream).")
    parser.add_argument("--paper-iterations", type=int, default=1000, help="mini-batches of 128 per task.")
    parser.add_argument("--paper-task-backend", choices=("none", "ray"), default="none",
                        help="also train each CRWN cell's tasks as Ray tasks (default: cells only, which finish one "
                             "by one, so a stopped run keeps more).")
    parser.add_argument("--workers", type=int, default=2, help="parallel workers (Ray CPUs, processes).")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    args.root = check_mnist_root(parser, args.dataset_root)
    if args.tasks < 2 or args.grid_tasks < 1 or args.iterations < 1 or args.grid_iterations < 1:
        parser.error("--tasks must be at least 2, the other counts at least 1.")
    return args


# ---------------------------------------------------------------- part 'tasks'

def _same_model(a: Any, b: Any) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k]
                                          for k in sa)


def part_tasks(args: argparse.Namespace) -> Dict[str, Any]:
    import crwn_mnist
    import ray
    import torch
    from avalanche.training.plugins import EvaluationPlugin

    from avalanche_neuromod.benchmarks import RotatedMNIST
    from avalanche_neuromod.evaluation.grid import StreamInfo, build_strategy
    from avalanche_neuromod.training import init_ray, train_tasks_parallel

    stream = RotatedMNIST(n_experiences=args.tasks, return_task_id=True, dataset_root=args.root)
    info = StreamInfo((1, 28, 28), 10, args.tasks)
    spec = crwn_mnist.ROWS[args.row]

    def fresh():
        return build_strategy(spec, info, 0, n_iterations=args.iterations, batch_size=crwn_mnist.BATCH_SIZE,
                              evaluator=EvaluationPlugin(loggers=[]))

    runs: List[Dict[str, Any]] = []
    models: Dict[str, Any] = {}

    def record(name: str, how: str, workers: int, threads: int, seconds: float, model: Any) -> None:
        models[name] = copy.deepcopy(model)
        runs.append({"name": name, "how": how, "workers": workers, "threads": threads, "seconds": seconds})
        print(f"{name}: {seconds:.1f} s", flush=True)

    for threads in (1, 2):
        torch.set_num_threads(threads)
        strategy = fresh()
        start = time.perf_counter()
        for experience in stream.train_stream:
            strategy.train(experience)
        record(f"in order, {threads} thread(s)", "strategy.train per task", 1, threads,
               time.perf_counter() - start, strategy.model)
    torch.set_num_threads(1)
    for workers in (1, args.workers):
        strategy = fresh()
        start = time.perf_counter()
        train_tasks_parallel(strategy, stream.train_stream, backend="processes", workers=workers, progress=False)
        record(f"processes, {workers} worker(s)", "train_tasks_parallel(backend='processes')", workers, 1,
               time.perf_counter() - start, strategy.model)
    start = time.perf_counter()
    init_ray(num_cpus=args.workers)
    ray_start = time.perf_counter() - start
    try:
        strategy = fresh()
        start = time.perf_counter()
        train_tasks_parallel(strategy, stream.train_stream, backend="ray", progress=False)
        record(f"Ray, {args.workers} workers", "train_tasks_parallel(backend='ray')", args.workers, 1,
               time.perf_counter() - start, strategy.model)
    finally:
        ray.shutdown()
    reference = models["in order, 1 thread(s)"]
    for run in runs:
        run["equal_to_in_order_1_thread"] = _same_model(models[run["name"]], reference)
    one = next(r for r in runs if r["name"] == "processes, 1 worker(s)")
    two = next(r for r in runs if r["name"] == f"processes, {args.workers} worker(s)")
    speedup = one["seconds"] / two["seconds"]
    return {"row": args.row, "tasks": args.tasks, "iterations": args.iterations, "runs": runs,
            "ray_start_seconds": ray_start, "speedup": speedup,
            "targets": [target(f"{args.workers} workers vs 1: at least {SPEEDUP_TARGET}x", speedup >= SPEEDUP_TARGET,
                               f"{one['seconds']:.1f} s / {two['seconds']:.1f} s = {speedup:.2f}x"),
                        target("every merged model equals the in-order one (torch.equal)",
                               all(r["equal_to_in_order_1_thread"] for r in runs if r["threads"] == 1),
                               ", ".join(f"{r['name']}: {'equal' if r['equal_to_in_order_1_thread'] else 'differs'}"
                                         for r in runs))]}


# ---------------------------------------------------------------- part 'grid'

def part_grid(args: argparse.Namespace) -> Dict[str, Any]:
    import compare

    from avalanche_neuromod.evaluation import Grid, run_grid

    unknown = [m for m in args.grid_methods if m not in compare.PAPER_METHODS]
    if unknown:
        raise SystemExit(f"unknown --grid-methods {unknown}; compare.py has {list(compare.PAPER_METHODS)}.")
    grid = Grid(methods={m: compare.PAPER_METHODS[m] for m in args.grid_methods},
                streams={"rotated": {"kind": "rotated", "n_experiences": args.grid_tasks}}, seeds=[0],
                n_iterations=args.grid_iterations, batch_size=128, eval_protocol="final")
    runs = []
    cells = {}
    for name, options in (("serial", {"executor": "serial"}), (f"Ray, {args.workers} workers", {"executor": "ray"})):
        start = time.perf_counter()
        if options["executor"] == "ray":
            from avalanche_neuromod.training import init_ray
            init_ray(num_cpus=args.workers)
            options["ray_start_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
        cells[name] = run_grid(grid, dataset_root=args.root, threads=1, progress=False,
                               executor=options["executor"])
        seconds = time.perf_counter() - start
        if options["executor"] == "ray":
            import ray
            ray.shutdown()
        runs.append({"name": name, "seconds": seconds, "ray_start_seconds": options.get("ray_start_seconds"),
                     "cell_seconds": {c["method"]: sum(c["seconds"]) for c in cells[name]}})
        print(f"grid {name}: {seconds:.1f} s", flush=True)
    serial, ray_cells = cells["serial"], cells[f"Ray, {args.workers} workers"]
    identical = all({k: a[k] for k in MEASURED} == {k: b[k] for k in MEASURED} for a, b in zip(serial, ray_cells))
    return {"grid": grid.to_dict(), "runs": runs, "identical": identical, "workers": args.workers,
            "accuracy": {c["method"]: c["avg_accuracy"] for c in serial},
            "targets": [target("Ray grid results identical to the serial grid's", identical,
                               f"{len(serial)} cells, every accuracy, forgetting and parameter count compared")]}


# ---------------------------------------------------------------- part 'paper'

def part_paper(args: argparse.Namespace) -> Dict[str, Any]:
    import crwn_mnist

    from avalanche_neuromod.evaluation import Grid, run_grid

    cells: List[Dict[str, Any]] = []
    start = time.perf_counter()

    def on_cell(cell: Any, r: Dict[str, Any], cached: bool) -> None:
        print(f"{'cached' if cached else 'done'}: {cell.label}: {100 * r['avg_accuracy']:.2f}%, "
              f"{r['seconds_per_task']:.1f} s/task in a worker", flush=True)

    for stream in args.paper_streams:
        length = crwn_mnist.STREAM_LENGTHS[stream]
        tasks = min(args.paper_tasks or length, length)
        methods = {crwn_mnist.method_name(row, mode): crwn_mnist.method_spec(row, mode, tasks, length, "rmsprop")
                   for row in args.paper_rows for mode in args.paper_modes}
        grid = Grid(methods=methods, streams={stream: {"kind": stream, "n_experiences": length}}, seeds=[0],
                    n_iterations=args.paper_iterations, batch_size=crwn_mnist.BATCH_SIZE, eval_protocol="final")
        cells += run_grid(grid, dataset_root=args.root, cache_dir=args.cache_dir, on_cell=on_cell, progress=False,
                          executor="ray", threads=1,
                          task_backend=None if args.paper_task_backend == "none" else args.paper_task_backend)
    return {"streams": args.paper_streams, "rows": args.paper_rows, "modes": args.paper_modes,
            "tasks": args.paper_tasks, "iterations": args.paper_iterations,
            "task_backend": args.paper_task_backend, "wall_seconds": time.perf_counter() - start,
            "cells": [{k: c[k] for k in ("method", "stream", "seed", "settings", "final_accuracies", "avg_accuracy",
                                         "forgetting", "params_per_task", "seconds_per_task", "threads")
                       if k in c} | {"task_backend": c.get("task_backend")} for c in cells]}


# ---------------------------------------------------------------- report

def _fmt_speed(runs: List[Dict[str, Any]], base: float) -> List[List[str]]:
    return [[r["name"], f"{r['workers']}", f"{r['threads']}", f"{r['seconds']:.1f}", f"{base / r['seconds']:.2f}x",
             "yes" if r["equal_to_in_order_1_thread"] else "no"] for r in runs]


def paper_rows(paper: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for c in paper["cells"]:
        forgetting = [v for v in c["forgetting"] if v is not None]
        rows.append([c["stream"], c["method"], f"{len(c['final_accuracies'])}", f"{100 * c['avg_accuracy']:.2f}",
                     f"{max(forgetting):g}" if forgetting else "-", f"{c['params_per_task']:,}",
                     f"{c['seconds_per_task']:.1f}"])
    return rows


PAPER_HEADER = ["stream", "row", "tasks", "mean acc. %", "max forgetting", "params/task", "s/task (1 thread)"]
SPEED_HEADER = ["training", "workers", "threads each", "seconds", "speed-up vs in order, 1 thread", "equal model"]


def not_run(paper: Dict[str, Any]) -> str:
    """What of the paper's grid this part did not run, in words."""
    import crwn_mnist

    missing = []
    rows = [r for r in crwn_mnist.ROWS if r not in paper["rows"]]
    modes = [m for m in crwn_mnist.MODES if m not in paper["modes"]]
    if rows:
        missing.append(f"rows {', '.join(rows)} on {', '.join(paper['streams'])}")
    if modes:
        missing.append(f"mode {', '.join(modes)}")
    missing += [f"the {s} stream ({n} tasks)" for s, n in crwn_mnist.STREAM_LENGTHS.items()
                if s not in paper["streams"]]
    if paper["tasks"]:
        missing.append(f"tasks after the first {paper['tasks']}")
    if not missing:
        return "The whole grid ran."
    return (f"Not run here (the session's time): {'; '.join(missing)}. The command for all of it on a cluster is "
            f"in docs/scaling.rst.")


def markdown_section(result: Dict[str, Any]) -> str:
    lines = section_opening(SECTION_START, "Scaling: parallel CRWN tasks and the grid on Ray", result,
                            data="real MNIST (Rotated MNIST), all 60,000 training and 10,000 test images per task.")
    tasks, grid, paper = result.get("tasks"), result.get("grid"), result.get("paper")
    if tasks:
        base = next(r["seconds"] for r in tasks["runs"] if r["name"] == "in order, 1 thread(s)")
        lines += ["", f"### CRWN tasks in parallel: {tasks['row']}, {tasks['tasks']} rotated tasks x "
                      f"{tasks['iterations']:,} mini-batches of 128", "",
                  *markdown_table(SPEED_HEADER, _fmt_speed(tasks["runs"], base), "lrrrrl"), "",
                  f"- Ray's start-up (once per session or cluster, not in the figures): "
                  f"{tasks['ray_start_seconds']:.1f} s. The Ray run includes its workers' first import of torch and "
                  f"Avalanche.",
                  "- 'Equal model': every parameter and buffer `torch.equal` to the model trained task after task "
                  "with one thread. Two threads change the order of some floating-point sums, so that run differs "
                  "in the last bits (it is the old default).", "", *target_lines(tasks["targets"])]
    if grid:
        g = grid["grid"]
        serial_seconds = grid["runs"][0]["seconds"]
        slowest, slowest_seconds = max(grid["runs"][-1]["cell_seconds"].items(), key=lambda item: item[1])
        lines += ["", f"### The comparison grid serially and on Ray: {', '.join(g['methods'])} on "
                      f"{g['streams']['rotated']['n_experiences']} rotated tasks x {g['n_iterations']} "
                      f"mini-batches", "",
                  *markdown_table(["run", "wall seconds", "speed-up", "Ray start-up s", "seconds per cell (training)"],
                                  [[r["name"], f"{r['seconds']:.1f}", f"{serial_seconds / r['seconds']:.2f}x",
                                    "-" if r["ray_start_seconds"] is None else f"{r['ray_start_seconds']:.1f}",
                                    ", ".join(f"{m} {s:.0f}" for m, s in r["cell_seconds"].items())]
                                   for r in grid["runs"]], "lrrrl"), "",
                  "- One torch thread per cell both ways; mean final accuracy: "
                  + ", ".join(f"{m} {100 * a:.2f}%" for m, a in grid["accuracy"].items()) + ".",
                  f"- Cells are whole units of work: with cells of unequal cost on {grid.get('workers', 2)} workers "
                  f"the wall time is at least the longest cell (here {slowest}, {slowest_seconds:.0f} s of training) "
                  f"plus what shares its worker. Many cells per worker, or CRWN cells split into tasks (above), "
                  f"even the load out.",
                  "", *target_lines(grid["targets"])]
    if paper:
        scope = (f"rows {', '.join(paper['rows'])}; modes {', '.join(paper['modes'])}; streams "
                 f"{', '.join(paper['streams'])}; "
                 + (f"first {paper['tasks']} tasks per row" if paper["tasks"] else "every task"))
        how = ("cells and their tasks as Ray tasks" if paper.get("task_backend") == "ray"
               else "cells as Ray tasks, each cell's tasks in order")
        lines += ["", f"### The CRWN paper's grid through this path ({how})", "",
                  f"- Scope run: {scope}; {paper['iterations']:,} mini-batches of 128 per task, seed 0, 2 Ray "
                  f"workers of one thread (seconds per task are a worker's, with the other worker busy). "
                  f"Wall time of the last invocation {paper['wall_seconds'] / 60:.1f} min (cells cached by earlier "
                  f"ones load in seconds).",
                  f"- {not_run(paper)}",
                  "", *markdown_table(PAPER_HEADER, paper_rows(paper), "llrrrrr")]
    lines += ["", "How this extrapolates to N nodes, and the commands for a cluster: docs/scaling.rst.", SECTION_END]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore")
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    result: Dict[str, Any] = {**result_header(argv, __file__, args.root)}
    for part, run in (("tasks", part_tasks), ("grid", part_grid), ("paper", part_paper)):
        if part in args.parts:
            result[part] = run(args)
            result.setdefault("commands_by_part", dict(previous.get("commands_by_part", {})))[part] = result["command"]
        elif part in previous:
            result[part] = previous[part]
    result.setdefault("commands_by_part", previous.get("commands_by_part", {}))
    result["commands"] = list(dict.fromkeys(result["commands_by_part"].values()))
    if "paper" in result and "paper" in args.parts:
        print(text_table(PAPER_HEADER, paper_rows(result["paper"])))
    for part in ("tasks", "grid"):
        if part in result and part in args.parts:
            print("\n".join(target_lines(result[part]["targets"], markdown=False)))
    publish(result, args.out, None if args.no_docs else markdown_section(result), SECTION_START, SECTION_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
