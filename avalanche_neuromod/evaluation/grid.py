"""A comparison grid: methods x streams x seeds, every cell trained and measured the same way.

A grid is data (:class:`Grid`, a dictionary or a JSON file): each method is
a ``kind`` from :data:`METHOD_KINDS` with its settings, each stream a
``kind`` from :data:`STREAM_KINDS` with its arguments, and a list of seeds.
:func:`run_grid` trains every cell (one method on one stream with one
seed) and measures it with the same protocol:

- every method gets the same budget: ``n_iterations`` mini-batches of
  ``batch_size`` per task (the CRWN paper's 1,000 of 128); Avalanche's
  strategies through :class:`~avalanche_neuromod.training.IterationBudgetPlugin`,
  joint training (MTL) ``n_iterations`` per task over the whole stream;
- one evaluator (:func:`~avalanche_neuromod.evaluation.make_evaluator`):
  with ``eval_protocol="seen"`` the strategy is evaluated on every task
  seen so far after each task (the full accuracy matrix); with
  ``"final"`` on the task just trained (the diagonal) and, at the end, on
  every task: enough for final accuracy, forgetting and BWT at a fraction
  of the cost;
- per cell: the accuracy matrix, final accuracy per task and its mean,
  forgetting and BWT (:class:`~avalanche_neuromod.evaluation.ContinualResults`),
  learnable parameters per task (the model's ``params_per_task()``, else
  its trainable parameters), seconds per task (training only) and the peak
  resident memory of the process while the cell ran.

Finished cells are written to ``cache_dir`` as one JSON file each, named
after the cell and a hash of everything that determines it; a rerun (of a
killed grid too) loads them instead of training again.

New kinds register with :func:`register_method` / :func:`register_stream`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .evaluator import make_evaluator
from .results import ContinualResults, accuracy_matrix

__all__ = ["Grid", "GridCell", "METHOD_KINDS", "STREAM_KINDS", "EVAL_PROTOCOLS", "StreamInfo", "register_method",
           "register_stream", "build_stream", "build_strategy", "params_per_task", "run_cell", "run_grid", "summarize",
           "summary_table", "PeakMemory", "AfterTraining", "EXECUTORS", "TASK_SEEDED_KINDS"]

EVAL_PROTOCOLS = ("seen", "final")

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class GridCell:
    """One method on one stream with one seed."""

    method: str
    stream: str
    seed: int

    @property
    def label(self) -> str:
        """``"<method> on <stream>, seed <seed>"``, for progress bars and messages."""
        return f"{self.method} on {self.stream}, seed {self.seed}"


@dataclass
class Grid:
    """Methods x streams x seeds, with the budget and protocol every cell shares.

    :param methods: name -> ``{"kind": <METHOD_KINDS key>, **settings}``.
    :param streams: name -> ``{"kind": <STREAM_KINDS key>, **arguments}``.
    :param seeds: seeds; each cell seeds torch, NumPy and Python with it.
    :param n_iterations: mini-batches per task.
    :param batch_size: training mini-batch size.
    :param eval_protocol: ``"seen"`` (full accuracy matrix) or ``"final"``
        (diagonal and final row).
    :param eval_batch_size: evaluation mini-batch size.
    """

    methods: Dict[str, Dict[str, Any]]
    streams: Dict[str, Dict[str, Any]]
    seeds: Sequence[int] = (0,)
    n_iterations: int = 1000
    batch_size: int = 128
    eval_protocol: str = "final"
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        self.seeds = [int(s) for s in self.seeds]
        if self.eval_protocol not in EVAL_PROTOCOLS:
            raise ValueError(f"eval_protocol must be one of {EVAL_PROTOCOLS}, got {self.eval_protocol!r}.")
        if self.n_iterations < 1 or self.batch_size < 1:
            raise ValueError(f"n_iterations and batch_size must be positive, got {self.n_iterations} and "
                             f"{self.batch_size}.")
        for what, table, kinds in (("method", self.methods, METHOD_KINDS), ("stream", self.streams, STREAM_KINDS)):
            for name, spec in table.items():
                kind = spec.get("kind")
                if kind not in kinds:
                    raise ValueError(f"{what} {name!r} has kind {kind!r}; known kinds: {sorted(kinds)}. Fix: set "
                                     f"\"kind\" to one of them, or register yours with register_{what}().")

    def cells(self) -> List[GridCell]:
        """Every cell, streams outermost, then methods, then seeds."""
        return [GridCell(m, s, seed) for s in self.streams for m in self.methods for seed in self.seeds]

    def to_dict(self) -> Dict[str, Any]:
        """The grid as plain data (JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Grid":
        """A grid from :meth:`to_dict`'s data (unknown keys are an error naming them)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown grid keys {unknown}; a grid has {sorted(known)}.")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, path: PathLike) -> "Grid":
        """A grid read from a JSON file."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def cell_spec(self, cell: GridCell) -> Dict[str, Any]:
        """Everything that determines a cell's result (what its cache key hashes)."""
        spec = {"method": self.methods[cell.method], "stream": self.streams[cell.stream], "seed": cell.seed,
                "n_iterations": self.n_iterations, "batch_size": self.batch_size,
                "eval_protocol": self.eval_protocol}
        if self.methods[cell.method]["kind"] in TASK_SEEDED_KINDS:
            # cells cached before the batch order became a function of (seed, task) keep their own key
            spec["batch_order"] = "per-task seed"
        return spec

    def cell_key(self, cell: GridCell) -> str:
        """A file-name-safe key: the cell's names and a hash of :meth:`cell_spec`."""
        digest = hashlib.sha256(json.dumps(self.cell_spec(cell), sort_keys=True).encode()).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cell.stream}__{cell.method}__seed{cell.seed}")
        return f"{name}__{digest}"


# Streams ---------------------------------------------------------------------------------------

@dataclass
class StreamInfo:
    """What a method needs to know of a stream to build its network."""

    image_shape: Tuple[int, ...]
    n_classes: int
    n_experiences: int

    @property
    def input_size(self) -> int:
        """The number of values in one image (the product of ``image_shape``), a flat network's input size."""
        return int(np.prod(self.image_shape))


def _rotated(args: Dict[str, Any], dataset_root: Optional[PathLike]):
    from ..benchmarks import RotatedMNIST
    return RotatedMNIST(return_task_id=True, dataset_root=dataset_root, **args)


def _permuted(args: Dict[str, Any], dataset_root: Optional[PathLike]):
    from ..benchmarks import PermutedMNIST
    return PermutedMNIST(return_task_id=True, dataset_root=dataset_root, **args)


def _split(args: Dict[str, Any], dataset_root: Optional[PathLike]):
    from ..benchmarks import SplitMNIST
    return SplitMNIST(return_task_id=True, dataset_root=dataset_root, **args)


STREAM_KINDS: Dict[str, Callable[..., Any]] = {"rotated": _rotated, "permuted": _permuted, "split": _split}
"""Stream kind -> ``builder(arguments, dataset_root)`` returning a task-incremental benchmark."""


def register_stream(kind: str, builder: Callable[..., Any]) -> None:
    """Add a stream kind: ``builder(arguments, dataset_root)`` returns a benchmark with task ids."""
    STREAM_KINDS[kind] = builder


def build_stream(spec: Mapping[str, Any], dataset_root: Optional[PathLike] = None) -> Tuple[Any, StreamInfo]:
    """The benchmark of a stream spec, and what methods need to know of it.

    :param spec: ``{"kind": ..., **arguments}``; ``dataset="mnist"`` (the
        default of the MNIST streams) needs ``dataset_root``.
    :param dataset_root: the data root.
    """
    args = {k: v for k, v in spec.items() if k != "kind"}
    benchmark = STREAM_KINDS[spec["kind"]](args, dataset_root)
    x = benchmark.train_stream[0].dataset[0][0]
    return benchmark, StreamInfo(tuple(x.shape), int(benchmark.n_classes), len(benchmark.train_stream))


# Methods ---------------------------------------------------------------------------------------

def _hidden(settings: Dict[str, Any]) -> Tuple[int, ...]:
    return tuple(int(h) for h in settings.get("hidden", (256, 256)))


def _mlp(info: StreamInfo, hidden: Sequence[int]) -> nn.Module:
    """The plain ReLU MLP Avalanche's strategies train (biases, one shared head)."""
    layers: List[nn.Module] = [nn.Flatten()]
    sizes = [info.input_size, *hidden, info.n_classes]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _task_net(settings: Dict[str, Any], info: StreamInfo, fc_cls: type, conv_cls: type, **kwargs: Any) -> nn.Module:
    if settings.get("arch", "fc") == "resnet18":
        return conv_cls(int(settings.get("width", 1)), n_classes=info.n_classes, in_channels=info.image_shape[0],
                        **kwargs)
    return fc_cls(_hidden(settings), input_size=info.input_size, n_classes=info.n_classes, **kwargs)


def _ours(strategy_cls: type, model: nn.Module, settings: Dict[str, Any], common: Dict[str, Any]) -> Any:
    kwargs = dict(common)
    if "lr" in settings:
        kwargs["optimizer_kwargs"] = {"lr": float(settings["lr"])}
    if "optimizer" in settings:
        kwargs["optimizer_cls"] = _optimizer_class(settings["optimizer"])
    if "shared_lr" in settings:
        kwargs["shared_lr"] = float(settings["shared_lr"])
    if "lr_schedule" in settings:
        kwargs["lr_schedule"] = settings["lr_schedule"]
    return strategy_cls(model=model, **kwargs)


def _optimizer_class(name: str) -> type:
    """A ``torch.optim`` class by name, case-insensitive (``"rmsprop"``, ``"Adam"``)."""
    by_lower = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)
                if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)}
    if str(name).lower() not in by_lower:
        raise ValueError(f"unknown optimizer {name!r}; torch.optim has {sorted(by_lower)}.")
    return by_lower[str(name).lower()]


def _crwn(settings, info, seed, common):
    from ..models import FlyNet, NeuroModNet, NeuroModResNet18
    from ..training import CRWN
    local_only = bool(settings.get("local_only", False))
    if settings.get("arch") == "flynet":
        model = FlyNet(int(settings.get("expansion", 10)), input_size=info.input_size, n_classes=info.n_classes,
                       local_only=local_only, seed=seed)
    else:
        model = _task_net(settings, info, NeuroModNet, NeuroModResNet18, local_only=local_only, seed=seed)
    # Task t's batch order comes from (seed, t): a task trains the same alone, so its tasks may train in parallel.
    return _ours(CRWN, model, settings, {**common, "batch_seed": seed})


def _psp(settings, info, seed, common):
    from ..models import PSPNet, PSPResNet18
    from ..training import PSP
    model = _task_net(settings, info, PSPNet, PSPResNet18, context=settings.get("context", "binary"), seed=seed)
    return _ours(PSP, model, settings, common)


def _batche(settings, info, seed, common):
    from ..models import BatchENet, BatchEResNet18
    from ..training import BatchE
    return _ours(BatchE, _task_net(settings, info, BatchENet, BatchEResNet18, seed=seed), settings, common)


def _supsup(settings, info, seed, common):
    from ..models import SupSupNet, SupSupResNet18
    from ..training import SupSup
    model = _task_net(settings, info, SupSupNet, SupSupResNet18, density=float(settings.get("density", 0.5)),
                      seed=seed)
    return _ours(SupSup, model, settings, common)


def _stl(settings, info, seed, common):
    from ..models import STLNet, STLResNet18
    from ..training import STL
    return _ours(STL, _task_net(settings, info, STLNet, STLResNet18, seed=seed), settings, common)


def _mtl(settings, info, seed, common):
    from ..models import MTLNet, MTLResNet18
    from ..training import MTL
    model = _task_net(settings, info, MTLNet, MTLResNet18, seed=seed)
    kwargs = {k: v for k, v in common.items() if k != "shared_lr"}
    if "lr" in settings:
        kwargs["optimizer_kwargs"] = {"lr": float(settings["lr"])}
    return MTL(model=model, **kwargs)


AVALANCHE_DEFAULTS = {"lr": 0.01, "momentum": 0.9}
"""Avalanche's strategies in the grid: plain SGD with momentum on the ReLU MLP (as ``benchmarks/crwn_mnist.py``'s reference)."""


def _avalanche(settings, info, seed, common):
    import avalanche.training as avl
    from avalanche.models.packnet import PackNetModel

    from ..training import IterationBudgetPlugin

    kind = settings["kind"]
    torch.manual_seed(seed)
    model = _mlp(info, _hidden(settings))
    if kind == "packnet":
        model = PackNetModel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(settings.get("lr", AVALANCHE_DEFAULTS["lr"])),
                                momentum=float(settings.get("momentum", AVALANCHE_DEFAULTS["momentum"])))
    n_iterations = common["n_iterations"]
    base = dict(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), train_mb_size=common["train_mb_size"],
                eval_mb_size=common["eval_mb_size"], device=common["device"], evaluator=common["evaluator"])
    budget = [IterationBudgetPlugin(n_iterations)]
    mem = int(settings.get("mem_size", 500))
    if kind == "naive":
        return avl.Naive(plugins=budget, **base)
    if kind == "ewc":
        return avl.EWC(ewc_lambda=float(settings.get("ewc_lambda", 100.0)), plugins=budget, **base)
    if kind == "si":
        # Avalanche's SI has zero importance on the CPU (see training.synaptic_intelligence).
        from ..training import SynapticIntelligence
        return SynapticIntelligence(si_lambda=float(settings.get("si_lambda", 1.0)), plugins=budget, **base)
    if kind == "lwf":
        return avl.LwF(alpha=float(settings.get("alpha", 1.0)), temperature=float(settings.get("temperature", 2.0)),
                       plugins=budget, **base)
    if kind == "replay":
        return avl.Replay(mem_size=mem, plugins=budget, **base)
    if kind == "der":
        return avl.DER(mem_size=mem, alpha=float(settings.get("alpha", 0.1)), beta=float(settings.get("beta", 0.5)),
                       plugins=budget, **base)
    if kind == "cumulative":
        return avl.Cumulative(plugins=budget, **base)
    if kind == "gem":
        return avl.GEM(patterns_per_exp=int(settings.get("patterns_per_exp", 256)),
                       memory_strength=float(settings.get("memory_strength", 0.5)), plugins=budget, **base)
    if kind == "agem":
        return avl.AGEM(patterns_per_exp=int(settings.get("patterns_per_exp", 256)),
                        sample_size=int(settings.get("sample_size", 256)), plugins=budget, **base)
    if kind == "er_ace":
        return avl.ER_ACE(mem_size=mem, batch_size_mem=int(settings.get("batch_size_mem", common["train_mb_size"])),
                          plugins=budget, **base)
    if kind == "gdumb":
        # GDumb trains a fresh copy of the model on its class-balanced memory at every experience.
        return avl.GDumb(mem_size=mem, plugins=budget, **base)
    if kind == "packnet":
        # PackNet prunes after a number of epochs, so it trains epochs, not a mini-batch budget.
        epochs = int(settings.get("epochs", 3))
        return avl.PackNet(post_prune_epochs=int(settings.get("post_prune_epochs", 1)),
                           prune_proportion=float(settings.get("prune_proportion", 0.5)), train_epochs=epochs, **base)
    raise ValueError(f"unknown Avalanche strategy kind {kind!r}.")


def _dynamos(settings, info, seed, common):
    """Dynamos (``kind="dynamos"``) or its ablation ConsistencyReplay (``"consistency_replay"``) on the
    reduced ResNet-18 of the Dynamos paper, with a Table 5 row's loss weights and the grid's budget."""
    from ..models import DynamosResNet18
    from ..training import ConsistencyReplay, Dynamos, IterationBudgetPlugin

    if len(info.image_shape) != 3:
        raise ValueError(f"{settings['kind']} trains a convolutional network on images (C, H, W); this stream's "
                         f"inputs have shape {info.image_shape}. Fix: a stream of images (rotated, permuted, split).")
    torch.manual_seed(seed)
    agents = settings["kind"] == "dynamos"
    model = DynamosResNet18(info.n_classes, in_channels=info.image_shape[0], agents=agents)
    strategy_cls = Dynamos if agents else ConsistencyReplay
    overrides = {k: settings[k] for k in ("lr", "replay_batch_size") if k in settings}
    return strategy_cls.preset(
        settings.get("preset", "mnist360"), int(settings.get("buffer_size", 500)), model, seed=seed,
        train_mb_size=int(settings.get("batch_size", common["train_mb_size"])), eval_mb_size=common["eval_mb_size"],
        device=common["device"], evaluator=common["evaluator"],
        plugins=[IterationBudgetPlugin(common["n_iterations"])], **overrides)


MethodBuilder = Callable[[Dict[str, Any], StreamInfo, int, Dict[str, Any]], Any]

METHOD_KINDS: Dict[str, MethodBuilder] = {
    "crwn": _crwn, "psp": _psp, "batche": _batche, "supsup": _supsup, "stl": _stl, "mtl": _mtl,
    **{k: _avalanche for k in ("naive", "cumulative", "ewc", "si", "lwf", "gem", "agem", "replay", "der", "er_ace",
                               "gdumb", "packnet")},
    "dynamos": _dynamos, "consistency_replay": _dynamos,
}
"""Method kind -> ``builder(settings, stream_info, seed, common)`` returning an Avalanche strategy.

Settings every kind reads: ``arch`` (``"fc"``, ``"resnet18"``; ``"flynet"``
for ``crwn``), ``hidden`` (FC widths, default ``[256, 256]``), ``width``
(ResNet), ``lr``, ``tasks`` (train and measure only the stream's first
``tasks`` tasks: a method too slow for the whole stream). The package's
task-incremental kinds also read ``optimizer`` (a ``torch.optim`` name)
and ``lr_schedule`` (``"cosine"``: the rate decays to 0 over each task).
Per kind: ``crwn``: ``expansion``, ``local_only``;
``psp``: ``context``; ``batche``: ``shared_lr``; ``supsup``: ``density``;
Avalanche's: ``momentum``, ``mem_size`` (``replay``, ``der``, ``er_ace``,
``gdumb``; default 500), ``ewc_lambda``, ``si_lambda``, ``alpha``,
``beta``, ``temperature``, ``patterns_per_exp`` (``gem``, ``agem``; default
256), ``memory_strength`` (``gem``), ``sample_size`` (``agem``),
``batch_size_mem`` (``er_ace``; default the grid's batch size),
``epochs``/``post_prune_epochs``/``prune_proportion`` (PackNet); ``dynamos`` and ``consistency_replay``
(on :class:`~avalanche_neuromod.models.DynamosResNet18`, with and without
agents): ``preset`` (a Table 5 stream, default ``"mnist360"``),
``buffer_size`` (one of that stream's buffers, default 500), ``batch_size``
(mini-batch size instead of the grid's: the paper's 16 on MNIST-360),
``replay_batch_size``, ``lr``."""

JOINT_KINDS = {"mtl"}
"""Kinds trained once on the whole stream (the others: task by task)."""

TASK_SEEDED_KINDS = {"crwn"}
"""Kinds whose task ``t`` draws its batch order from ``(seed, t)`` (``batch_seed``): their tasks are
independent, so a cell may train them in parallel (``task_backend``) with the sequential result."""


def register_method(kind: str, builder: MethodBuilder, joint: bool = False) -> None:
    """Add a method kind: ``builder(settings, stream_info, seed, common)`` returns a strategy.

    ``common`` holds the arguments every strategy of the grid gets:
    ``n_iterations``, ``train_mb_size``, ``eval_mb_size``, ``device``,
    ``evaluator``.

    :param joint: the strategy trains once on the whole stream (as MTL).
    """
    METHOD_KINDS[kind] = builder
    if joint:
        JOINT_KINDS.add(kind)


def build_strategy(settings: Mapping[str, Any], info: StreamInfo, seed: int, *, n_iterations: int = 1000,
                   batch_size: int = 128, eval_batch_size: int = 1000, device: Any = "cpu",
                   evaluator: Any = None) -> Any:
    """The strategy of a method spec, with the grid's budget and one shared kind of evaluator.

    :param settings: ``{"kind": ..., **settings}``.
    :param info: the stream's :class:`StreamInfo`.
    :param seed: seeds the model's weights.
    :param n_iterations: mini-batches per task.
    :param batch_size: training batch size.
    :param eval_batch_size: evaluation batch size.
    :param device: torch device.
    :param evaluator: Avalanche evaluator (default: accuracy only, no printing).
    """
    settings = dict(settings)
    if evaluator is None:
        evaluator = make_evaluator(forgetting=False, bwt=False, timing=False, progress_bar=False)
    common = {"n_iterations": n_iterations, "train_mb_size": batch_size, "eval_mb_size": eval_batch_size,
              "device": device, "evaluator": evaluator}
    return METHOD_KINDS[settings["kind"]](settings, info, seed, common)


def params_per_task(model: nn.Module) -> int:
    """The model's declared parameters per task, else all of its trainable parameters (a fine-tuned net)."""
    declared = getattr(model, "params_per_task", None)
    if callable(declared):
        return int(declared())
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


# Running ---------------------------------------------------------------------------------------

class PeakMemory:
    """The peak resident memory of this process while the ``with`` block runs (sampled every 20 ms).

    On Linux it reads ``/proc/self/statm``; elsewhere the process's lifetime
    peak from ``resource``. :attr:`peak_mb` holds the result.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @staticmethod
    def rss_mb() -> float:
        """This process's resident memory now, in MB."""
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
        except (OSError, ValueError, AttributeError):
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    def __enter__(self) -> "PeakMemory":
        self.peak_mb = self.rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())


def _seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _jsonable_matrix(matrix: np.ndarray) -> List[List[Optional[float]]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix]


AfterTraining = Callable[[GridCell, Any, Any], Optional[Mapping[str, Any]]]
"""``after_training(cell, strategy, benchmark)``: called once a cell has trained; what it returns
(JSON-able) is kept in the cell's result under ``"extra"``, and cached with it."""


def run_cell(grid: Grid, cell: GridCell, *, dataset_root: Optional[PathLike] = None, device: Any = "cpu",
             benchmark: Any = None, after_training: Optional[AfterTraining] = None, threads: Optional[int] = None,
             task_backend: Optional[str] = None, task_workers: Optional[int] = None,
             ray_address: Optional[str] = None, progress: bool = False) -> Dict[str, Any]:
    """Train and measure one cell; return its result (JSON-able).

    :param grid: the grid.
    :param cell: the cell.
    :param dataset_root: data root of the streams that read files.
    :param device: torch device.
    :param benchmark: the stream's ``(benchmark, StreamInfo)``, if already built.
    :param after_training: see :data:`AfterTraining` (e.g. a figure of the trained model).
    :param threads: torch threads while the cell runs (None: as set); the
        same count gives bit-identical results wherever the cell runs.
    :param task_backend: for kinds with independent tasks
        (:data:`TASK_SEEDED_KINDS`) under the ``"final"`` protocol: train
        the tasks in parallel (``"processes"``, ``"ray"``, ``"serial"``; see
        :func:`~avalanche_neuromod.training.train_tasks_parallel`) with the
        sequential result; each task is measured in its worker right after
        training, the final row on the merged model. Ignored for other kinds
        and under the ``"seen"`` protocol (which evaluates every task seen
        after each one, so trains them in order).
    :param task_workers: parallel workers of ``task_backend``.
    :param ray_address: the Ray cluster of ``task_backend="ray"``.
    :param progress: show a bar over the cell's tasks as they are trained
        in order (a cell of a memory strategy on 36 tasks runs for half an
        hour); it closes when the cell ends.
    """
    stream_spec = grid.streams[cell.stream]
    method_spec = grid.methods[cell.method]
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        benchmark, info = benchmark or build_stream(stream_spec, dataset_root)
        _seed_everything(cell.seed)
        strategy = build_strategy(method_spec, info, cell.seed, n_iterations=grid.n_iterations,
                                  batch_size=grid.batch_size, eval_batch_size=grid.eval_batch_size, device=device)
        n = min(int(method_spec.get("tasks", info.n_experiences)), info.n_experiences)
        if n < 1:
            raise ValueError(f"method {cell.method!r}: 'tasks' must be at least 1, got {method_spec['tasks']}.")
        train, test = list(benchmark.train_stream)[:n], list(benchmark.test_stream)[:n]
        # The "seen" protocol evaluates every earlier task after each one: that needs the tasks in order.
        parallel = (task_backend is not None and method_spec["kind"] in TASK_SEEDED_KINDS
                    and grid.eval_protocol == "final")
        with PeakMemory() as memory, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Avalanche's deprecation chatter, once per experience
            if parallel:
                timing = _train_parallel(strategy, train, test, n, task_backend, task_workers, ray_address,
                                         threads or previous_threads)
            else:
                timing = _train_in_order(grid, method_spec, strategy, train, test, n,
                                         progress=f"{cell.method}, seed {cell.seed}" if progress else None)
            matrix = timing.pop("matrix")
            matrix[n - 1] = _eval_row(strategy, test, n)
        extra = after_training(cell, strategy, benchmark) if after_training is not None else None
        params = params_per_task(strategy.model)
    finally:
        torch.set_num_threads(previous_threads)
    joint = method_spec["kind"] in JOINT_KINDS
    results = ContinualResults(matrix, cell.method)
    final = results.final_accuracies
    forgetting = results.forgetting if not joint else np.full(n - 1, np.nan)
    seconds = timing["seconds"]
    return {
        "method": cell.method, "stream": cell.stream, "seed": cell.seed, "kind": method_spec["kind"],
        "settings": dict(method_spec), "stream_settings": dict(stream_spec),
        "n_iterations": grid.n_iterations, "batch_size": grid.batch_size, "eval_protocol": grid.eval_protocol,
        "joint": joint,
        "accuracy_matrix": _jsonable_matrix(matrix),
        "final_accuracies": [float(v) for v in final],
        "avg_accuracy": float(np.nanmean(final)),
        "forgetting": [None if math.isnan(v) else float(v) for v in forgetting],
        "avg_forgetting": None if joint or n < 2 else float(np.nanmean(forgetting)),
        "bwt": None if joint or n < 2 else -float(np.nanmean(forgetting)),
        "params_per_task": params,
        "seconds_per_task": float(np.mean(seconds)),
        "seconds": [float(v) for v in seconds],
        "cpu_seconds": [float(v) for v in timing["cpu_seconds"]],
        "load_average_before_task": timing["load"],
        "peak_rss_mb": float(max(memory.peak_mb, timing.get("worker_peak_rss_mb", float("nan")))),
        "threads": threads or previous_threads,
        **({"task_backend": task_backend, "task_workers": timing["workers"]} if parallel else {}),
        **({"extra": dict(extra)} if extra else {}),
    }


def _train_in_order(grid: Grid, method_spec: Mapping[str, Any], strategy: Any, train: List[Any], test: List[Any],
                    n: int, progress: Optional[str] = None) -> Dict[str, Any]:
    """Train task after task (or once on all, for joint kinds), measuring as the protocol says;
    ``progress`` names a bar over the tasks (None: no bar)."""
    from tqdm.auto import tqdm

    matrix = np.full((n, n), np.nan)
    seconds: List[float] = []
    cpu_seconds: List[float] = []
    # Other processes inflate wall time, not CPU time: both, and the load before each
    # task, tell a busy machine apart from a slow method.
    load: List[Optional[float]] = []
    joint = method_spec["kind"] in JOINT_KINDS
    with tqdm([train] if joint else train, desc=progress, unit="run" if joint else "task", leave=False,
              disable=progress is None) as tasks:
        for i, experience in enumerate(tasks):
            load.append(_load_average())
            start, start_cpu = time.perf_counter(), time.process_time()
            strategy.train(experience)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - start_cpu)
            if not joint:
                seen = test[: i + 1] if grid.eval_protocol == "seen" else [test[i]]
                matrix[i] = _eval_row(strategy, seen, n)
    if joint:
        seconds, cpu_seconds, load = [seconds[0] / n] * n, [cpu_seconds[0] / n] * n, load * n
    return {"matrix": matrix, "seconds": seconds, "cpu_seconds": cpu_seconds, "load": load}


def _accuracy_evaluator() -> Any:
    """The evaluator of a worker's strategy: accuracy only, as :func:`build_strategy`'s default."""
    return make_evaluator(forgetting=False, bwt=False, timing=False, progress_bar=False)


def _task_accuracy(strategy: Any, experience: Any) -> float:
    """A task's accuracy as the grid's evaluator records it (the sequential run's diagonal)."""
    index = int(experience.current_experience)
    return float(_eval_row(strategy, [experience], index + 1)[index])


def _train_parallel(strategy: Any, train: List[Any], test: List[Any], n: int, backend: str,
                    workers: Optional[int], ray_address: Optional[str], threads: int) -> Dict[str, Any]:
    """Train the tasks in parallel workers (merged into ``strategy.model``); the diagonal from the workers."""
    from ..training import train_tasks_parallel

    load = _load_average()
    results = train_tasks_parallel(strategy, train, eval_experiences=test, workers=workers, backend=backend,
                                   ray_address=ray_address, threads_per_worker=threads, progress=False,
                                   evaluator_factory=_accuracy_evaluator, eval_fn=_task_accuracy)
    matrix = np.full((n, n), np.nan)
    for i, r in enumerate(results):
        matrix[i, i] = r.accuracy
    return {"matrix": matrix, "seconds": [r.seconds for r in results], "cpu_seconds": [r.cpu_seconds for r in results],
            "load": [load] * n, "workers": len({r.worker for r in results}),
            "worker_peak_rss_mb": max(r.peak_rss_mb for r in results)}


def _load_average() -> Optional[float]:
    """The machine's 1-minute load average (None where the platform has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _eval_row(strategy: Any, experiences: Sequence[Any], n: int) -> np.ndarray:
    res = strategy.eval(experiences)
    row = accuracy_matrix([res], n_experiences=n)[0]
    evaluated = {int(e.current_experience) for e in experiences}
    return np.array([row[j] if j in evaluated else np.nan for j in range(n)])


EXECUTORS = ("serial", "ray")
"""How :func:`run_grid` runs its cells: one after the other here, or as Ray tasks."""


def _cache_path(cache: Optional[Path], grid: Grid, cell: GridCell) -> Optional[Path]:
    return cache / f"{grid.cell_key(cell)}.json" if cache is not None else None


def _write_cached(path: Optional[Path], result: Mapping[str, Any]) -> None:
    if path is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)


def run_grid(grid: Grid, *, dataset_root: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None,
             device: Any = "cpu", progress: bool = True,
             on_cell: Optional[Callable[[GridCell, Dict[str, Any], bool], None]] = None,
             after_training: Optional[AfterTraining] = None, executor: str = "serial",
             ray_address: Optional[str] = None, threads: Optional[int] = None, max_retries: int = 3,
             task_backend: Optional[str] = None, task_workers: Optional[int] = None) -> List[Dict[str, Any]]:
    """Run every cell of ``grid`` (cached ones are loaded, not rerun); return their results in cell order.

    With ``executor="ray"`` every cell not cached is a Ray task (one CPU per
    torch thread), on a local Ray started here (and stopped at the end) or
    on the cluster at ``ray_address`` (or an already initialised Ray). A
    task whose worker dies is retried up to ``max_retries`` times. Finished
    cells are written to the cache by this process as they come back, so a
    grid killed mid-way resumes where it stopped, whichever executor ran it.
    The results are those of ``executor="serial"`` with the same ``threads``.

    :param grid: the grid.
    :param dataset_root: data root of the streams that read files (on a
        cluster: a path every node has).
    :param cache_dir: folder of finished cells (one JSON each); None keeps nothing.
    :param device: torch device.
    :param progress: show a progress bar over cells and, run serially, one over each cell's tasks.
    :param on_cell: called after each cell with ``(cell, result, was_cached)``
        (in the order cells finish).
    :param after_training: passed to :func:`run_cell` (not called for cached
        cells; with Ray it runs in the worker, so it must be picklable).
    :param executor: ``"serial"`` or ``"ray"`` (:data:`EXECUTORS`).
    :param ray_address: the Ray cluster to use (``executor="ray"``).
    :param threads: torch threads per cell (default: 1 with Ray, as set
        serially); the same count gives the same results either way.
    :param max_retries: Ray retries of a cell whose worker died.
    :param task_backend: train the tasks of independent-task kinds in
        parallel inside a cell (see :func:`run_cell`); with Ray, ``"ray"``
        spreads them over the cluster.
    :param task_workers: parallel workers of ``task_backend``.
    """
    from tqdm.auto import tqdm

    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}.")
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    cells = grid.cells()
    results: Dict[GridCell, Dict[str, Any]] = {}
    todo = []
    bar = tqdm(total=len(cells), desc="grid", unit="cell", disable=not progress)
    for cell in cells:
        path = _cache_path(cache, grid, cell)
        if path is not None and path.is_file():
            results[cell] = json.loads(path.read_text())
            bar.update()
            if on_cell is not None:
                on_cell(cell, results[cell], True)
        else:
            todo.append(cell)
    options = {"dataset_root": dataset_root, "device": device, "after_training": after_training,
               "task_backend": task_backend, "task_workers": task_workers, "ray_address": ray_address}

    def finish(cell: GridCell, result: Dict[str, Any]) -> None:
        _write_cached(_cache_path(cache, grid, cell), result)
        results[cell] = result
        bar.update()
        if on_cell is not None:
            on_cell(cell, result, False)

    if executor == "serial":
        streams: Dict[str, Tuple[Any, StreamInfo]] = {}
        for cell in todo:
            bar.set_postfix_str(cell.label)
            if cell.stream not in streams:
                streams[cell.stream] = build_stream(grid.streams[cell.stream], dataset_root)
            finish(cell, run_cell(grid, cell, benchmark=streams[cell.stream], threads=threads, progress=progress,
                                  **options))
    elif todo:
        _run_on_ray(grid, todo, finish, options, 1 if threads is None else int(threads), max_retries, ray_address)
    bar.close()
    return [results[cell] for cell in cells]


def _kinds_of(grid: Grid, cell: GridCell) -> Dict[str, Any]:
    """The builders a worker needs for a cell: kinds registered in this process may be unknown there."""
    kind, stream_kind = grid.methods[cell.method]["kind"], grid.streams[cell.stream]["kind"]
    return {"method": (kind, METHOD_KINDS[kind], kind in JOINT_KINDS, kind in TASK_SEEDED_KINDS),
            "stream": (stream_kind, STREAM_KINDS[stream_kind])}


def _ray_cell(grid_data: Dict[str, Any], cell: GridCell, kinds: Dict[str, Any], threads: int,
              options: Dict[str, Any]) -> Dict[str, Any]:
    """One cell in a Ray worker."""
    kind, builder, joint, seeded = kinds["method"]
    METHOD_KINDS.setdefault(kind, builder)
    if joint:
        JOINT_KINDS.add(kind)
    if seeded:
        TASK_SEEDED_KINDS.add(kind)
    STREAM_KINDS.setdefault(*kinds["stream"])
    import ray
    result = run_cell(Grid.from_dict(grid_data), cell, threads=threads, **options)
    result["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return result


def _run_on_ray(grid: Grid, cells: List[GridCell], finish: Callable[[GridCell, Dict[str, Any]], None],
                options: Dict[str, Any], threads: int, max_retries: int, ray_address: Optional[str]) -> None:
    try:
        import ray
    except ImportError as error:
        raise ImportError("executor='ray' needs Ray: pip install 'avalanche-neuromod[ray]' (or run the grid "
                          "serially, without --ray).") from error
    from ..training.parallel import init_ray, ray_completed

    started = init_ray(ray_address)
    try:
        remote = ray.remote(num_cpus=threads, max_retries=max_retries)(_ray_cell)
        grid_data = grid.to_dict()
        pending = {remote.remote(grid_data, cell, _kinds_of(grid, cell), threads, options): cell for cell in cells}
        for cell, result in ray_completed(pending):
            finish(cell, result)
    finally:
        if started:
            ray.shutdown()


# Summaries -------------------------------------------------------------------------------------

def _mean_std(values: Iterable[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def summarize(results: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (stream, method), over its seeds: means (and std) of the cell figures.

    Each row also keeps ``avg_accuracy_by_seed``, one mean final accuracy per
    seed, in the order of ``seeds`` (for paired comparisons between methods).

    :param results: cell results from :func:`run_grid`.
    """
    groups: Dict[Tuple[str, str], List[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["stream"], r["method"]), []).append(r)
    rows = []
    for (stream, method), cells in groups.items():
        acc, acc_std = _mean_std(c["avg_accuracy"] for c in cells)
        final = np.nanmean(np.array([c["final_accuracies"] for c in cells], dtype=float), axis=0)
        rows.append({
            "stream": stream, "method": method, "kind": cells[0]["kind"], "seeds": [c["seed"] for c in cells],
            "avg_accuracy": acc, "avg_accuracy_std": acc_std,
            "avg_accuracy_by_seed": [c["avg_accuracy"] for c in cells],
            "avg_forgetting": _mean_std(c["avg_forgetting"] for c in cells)[0],
            "bwt": _mean_std(c["bwt"] for c in cells)[0],
            "params_per_task": cells[0]["params_per_task"],
            "seconds_per_task": _mean_std(c["seconds_per_task"] for c in cells)[0],
            "peak_rss_mb": max(c["peak_rss_mb"] for c in cells),
            "final_accuracies": [float(v) for v in final],
        })
    return rows


def _fmt(value: Optional[float], spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary rows as one markdown table (accuracy and forgetting in %)."""
    lines = ["| stream | method | seeds | mean final acc. % | forgetting % | BWT % | params/task | s/task | "
             "peak RSS MB |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = _fmt(r["avg_accuracy"], ".2f", 100)
        if r.get("avg_accuracy_std") is not None:
            acc += f" +- {r['avg_accuracy_std'] * 100:.2f}"
        lines.append(f"| {r['stream']} | {r['method']} | {len(r['seeds'])} | {acc} | "
                     f"{_fmt(r['avg_forgetting'], '.2f', 100)} | {_fmt(r['bwt'], '.2f', 100)} | "
                     f"{r['params_per_task']:,} | {_fmt(r['seconds_per_task'], '.1f')} | "
                     f"{_fmt(r['peak_rss_mb'], '.0f')} |")
    return "\n".join(lines)

