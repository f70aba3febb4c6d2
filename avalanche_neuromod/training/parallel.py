"""Training the tasks of one stream in parallel workers, merged into one model equal to the sequential one.

CRWN's tasks are independent by construction: given the fixed random
weights, task ``t``'s contexts and strengths depend only on task ``t``'s data,
its initialisation (drawn from ``(seed, layer, t)``, see
:func:`~avalanche_neuromod.models.derive_generator`) and its batch order
(drawn from ``(batch_seed, t)`` when the strategy has a ``batch_seed``). So
each task can train in its own worker, on its own copy of the network, and
hand back only what it learned (:meth:`~avalanche_neuromod.models.TaskIncrementalModule.task_state_dict`).
:func:`train_tasks_parallel` merges those states into the strategy's model,
which then equals (``torch.equal``, parameter by parameter) the model the
strategy would have trained one task after the other with the same number of
threads per process, and is evaluated, checkpointed and trained further like
any other.

Workers (``backend``):

- ``"processes"``: a local process pool (forked on Linux, so the network and
  the stream are shared, not copied, until a worker writes);
- ``"ray"``: Ray tasks (``pip install avalanche-neuromod[ray]``), on a local
  Ray or the cluster at ``ray_address``; a worker that dies is retried;
- ``"serial"``: the same per-task code in this process, one task after the
  other (a reference, and for debugging);
- ``"auto"``: Ray if it is installed and running (``ray.is_initialized()``)
  or ``ray_address`` is given, else processes.

Each worker runs ``threads_per_worker`` torch threads (default 1): ``N``
workers on ``N`` cores, no oversubscription. Threads change the order of
floating-point sums in some kernels; run the sequential reference with the
same number of threads to compare bit for bit.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from avalanche.evaluation.metrics import Accuracy
from avalanche.models.dynamic_modules import avalanche_model_adaptation
from avalanche.training.plugins import EvaluationPlugin

from .loaders import whole_batch_loader
from .task_incremental import TaskIncrementalStrategy, experience_task

__all__ = ["BACKENDS", "TaskResult", "train_tasks_parallel", "merge_task_results", "experience_accuracy", "init_ray",
           "ray_available", "ray_completed"]

BACKENDS = ("auto", "processes", "ray", "serial")


@dataclass
class TaskResult:
    """What one worker hands back for one task.

    :ivar task: the task label.
    :ivar state: the task's learned state (``model.task_state_dict(task)``).
    :ivar seconds: wall seconds of ``strategy.train`` on the task.
    :ivar cpu_seconds: CPU seconds of the worker process meanwhile.
    :ivar accuracy: accuracy on the task's test experience right after
        training, in the worker (None when no test experience was given).
    :ivar worker: the worker's process id.
    :ivar peak_rss_mb: the worker process's peak resident memory so far, in MB.
    """

    task: int
    state: Dict[str, torch.Tensor]
    seconds: float
    cpu_seconds: float
    accuracy: Optional[float]
    worker: int
    peak_rss_mb: float = float("nan")


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def experience_accuracy(model: torch.nn.Module, experience: Any, batch_size: int = 1000,
                        device: Any = "cpu") -> float:
    """Top-1 accuracy of ``model`` on one experience (with its task labels), in eval mode.

    Avalanche's own ``Accuracy`` metric over mini-batches in the dataset's
    order: with the strategy's ``eval_mb_size`` it is, to the last bit, the
    experience accuracy Avalanche's evaluator records.

    :param model: a multi-task model called as ``model(x, task_labels)``.
    :param experience: an Avalanche experience with task labels.
    :param batch_size: evaluation batch size.
    :param device: torch device.
    """
    was_training = model.training
    model.eval()
    metric = Accuracy()
    with torch.no_grad():
        for x, y, t in whole_batch_loader(experience.dataset.eval(), batch_size, shuffle=False):
            metric.update(model(x.to(device), t.to(device)), y.to(device))
    model.train(was_training)
    return float(metric.result())


def _silent_evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(loggers=[])


def _model_accuracy(strategy: TaskIncrementalStrategy, experience: Any) -> float:
    return experience_accuracy(strategy.model, experience, strategy.eval_mb_size)


def _worker_config(strategy: TaskIncrementalStrategy) -> Dict[str, Any]:
    """The arguments that rebuild ``strategy``'s training rule in a worker (no plugins, no evaluator)."""
    return {"optimizer_cls": strategy.optimizer_cls, "optimizer_kwargs": dict(strategy.optimizer_kwargs),
            "shared_lr": strategy.shared_lr, "n_iterations": strategy.n_iterations,
            "criterion": strategy._criterion, "train_mb_size": strategy.train_mb_size,
            "train_epochs": strategy._epochs_per_task, "eval_mb_size": strategy.eval_mb_size,
            "batch_seed": strategy.batch_seed}


def _train_one(payload: Dict[str, Any], index: int, threads: int) -> TaskResult:
    """Train experience ``index`` of the payload on a fresh copy of its network; return what the task learned."""
    torch.set_num_threads(threads)
    model = copy.deepcopy(payload["model"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Avalanche's chatter (no loggers, deprecations), once per task
        strategy = payload["strategy_cls"](model=model, evaluator=payload["evaluator_factory"](), device="cpu",
                                           **payload["config"])
        tests = payload["eval_experiences"]
        return _train_and_measure(strategy, payload["experiences"][index],
                                  tests[index] if tests is not None else None, payload["eval_fn"])


def _train_and_measure(strategy: TaskIncrementalStrategy, experience: Any, test: Any,
                       eval_fn: Callable[[Any, Any], float]) -> TaskResult:
    """``strategy.train(experience)``, timed; then the task's accuracy on ``test`` (if any) and its state."""
    task = experience_task(experience, strategy.method)
    start, start_cpu = time.perf_counter(), time.process_time()
    strategy.train(experience)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    accuracy = eval_fn(strategy, test) if test is not None else None
    return TaskResult(task, strategy.model.task_state_dict(task), seconds, cpu_seconds, accuracy, os.getpid(),
                      _peak_rss_mb())


def _peak_rss_mb() -> float:
    """This process's lifetime peak resident memory in MB (NaN where the platform cannot tell)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_PAYLOAD: Dict[str, Any] = {}


def _pool_init(payload: Dict[str, Any]) -> None:
    _PAYLOAD.clear()
    _PAYLOAD.update(payload)


def _pool_task(index: int, threads: int) -> TaskResult:
    return _train_one(_PAYLOAD, index, threads)


def _check(strategy: Any, experiences: Sequence[Any]) -> List[int]:
    if not isinstance(strategy, TaskIncrementalStrategy):
        raise TypeError(f"train_tasks_parallel trains a task-incremental strategy (CRWN), got "
                        f"{type(strategy).__name__}.")
    model = strategy.model
    if not getattr(model, "independent_tasks", False):
        raise ValueError(f"the tasks of a {type(model).__name__} are not independent (training one changes "
                         f"what others use), so they cannot train in parallel: use strategy.train() per "
                         f"experience. CRWN, SupSup and STL networks can.")
    if strategy.batch_seed is None:
        raise ValueError("parallel tasks need a batch order that depends only on the task: build the strategy "
                         "with batch_seed=<int> (task t then draws its batches from (batch_seed, t)).")
    tasks = [experience_task(e, strategy.method) for e in experiences]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"every experience must hold a new task, got task labels {tasks}.")
    trained = sorted(set(tasks) & set(model.known_train_tasks_labels))
    if trained:
        raise ValueError(f"tasks {trained} were already trained in this model; train each task once.")
    return tasks


def _resolve_backend(backend: str, ray_address: Optional[str]) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "auto":
        if ray_address is not None:
            return "ray"
        if ray_available():
            import ray
            if ray.is_initialized():
                return "ray"
        return "processes"
    if backend == "ray" and not ray_available():
        raise ImportError("backend='ray' needs Ray: pip install 'avalanche-neuromod[ray]' (or use "
                          "backend='processes').")
    return backend


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> bool:
    """Connect to the Ray cluster at ``address``, or start a local Ray; return whether this call started it.

    An already initialised Ray is used as it is.

    :param address: a cluster address (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); None starts a
        local Ray on this machine.
    :param num_cpus: CPUs of a local Ray (default: all of this machine's).
    """
    import ray
    if ray.is_initialized():
        return False
    kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
    return True


def ray_completed(pending: Dict[Any, Any]) -> Iterator[Tuple[Any, Any]]:
    """``(label, result)`` of Ray tasks as each finishes, for ``{object_ref: label}``.

    :param pending: the Ray object references of submitted tasks, each with a label of the caller's.
    """
    import ray

    waiting = list(pending)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        yield pending[done[0]], ray.get(done[0])


def train_tasks_parallel(strategy: TaskIncrementalStrategy, experiences: Sequence[Any], *,
                         eval_experiences: Optional[Sequence[Any]] = None, workers: Optional[int] = None,
                         backend: str = "auto", ray_address: Optional[str] = None, threads_per_worker: int = 1,
                         max_retries: int = 3, progress: bool = True,
                         evaluator_factory: Optional[Callable[[], Any]] = None,
                         eval_fn: Optional[Callable[[Any, Any], float]] = None) -> List[TaskResult]:
    """Train every experience's task in parallel workers and merge them into ``strategy.model``.

    Afterwards the model holds every task trained and frozen, exactly as if
    ``strategy.train(e)`` had run for each experience in order (with
    ``threads_per_worker`` threads); the strategy's clock counts them. The
    workers rebuild the strategy's training rule (optimiser, budget, batch
    size, loss, ``batch_seed``) without its plugins and evaluator: evaluate
    the merged model afterwards (``strategy.eval(test_stream)``), or pass
    ``eval_experiences`` to measure each task in its worker right after it
    trained.

    In CRWN's pretrained mode the first task trains the shared weights: it
    trains here first, the others in parallel after it. Workers train on
    the CPU; the merged tasks land on the model's device.

    :param strategy: a task-incremental strategy whose model has independent
        tasks (CRWN; also SupSup and STL), built with ``batch_seed``.
    :param experiences: training experiences, one new task each.
    :param eval_experiences: test experiences aligned with ``experiences``
        (optional): :attr:`TaskResult.accuracy`.
    :param workers: parallel workers (default: this machine's CPU count;
        with Ray, what the cluster schedules).
    :param backend: ``"auto"``, ``"processes"``, ``"ray"`` or ``"serial"``
        (module docstring).
    :param ray_address: the Ray cluster to use (None: a local Ray, started if
        needed).
    :param threads_per_worker: torch threads in each worker.
    :param max_retries: Ray retries of a task whose worker died.
    :param progress: show a progress bar over tasks.
    :param evaluator_factory: builds the evaluator of each worker's strategy
        (default: none; pass a picklable, module-level function).
    :param eval_fn: ``eval_fn(strategy, test_experience) -> accuracy`` in the
        worker (default: :func:`experience_accuracy` of the model); with an
        evaluator factory it can read the evaluator's metrics, so the
        figure is the one the sequential run's evaluator records.
    :return: one :class:`TaskResult` per experience, in the order given.
    """
    from tqdm.auto import tqdm

    experiences = list(experiences)
    if eval_experiences is not None:
        eval_experiences = list(eval_experiences)
        if len(eval_experiences) != len(experiences):
            raise ValueError(f"eval_experiences must align with experiences: got {len(eval_experiences)} for "
                             f"{len(experiences)}.")
    if threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be at least 1, got {threads_per_worker}.")
    tasks = _check(strategy, experiences)
    backend = _resolve_backend(backend, ray_address)
    model = strategy.model
    results: Dict[int, TaskResult] = {}
    first = [i for i, t in enumerate(tasks) if t == 0 and getattr(model, "pretrained", False)]
    if first:
        # Pretrained mode: the first task trains the shared weights every later task uses.
        (i,) = first
        results[i] = _train_here(strategy, experiences[i], eval_experiences[i] if eval_experiences else None,
                                 threads_per_worker, eval_fn or _model_accuracy)
    pending = [i for i in range(len(experiences)) if i not in results]
    snapshot = copy.deepcopy(model).cpu()
    snapshot.train()
    payload = {"strategy_cls": type(strategy), "config": _worker_config(strategy), "model": snapshot,
               "experiences": experiences, "eval_experiences": eval_experiences,
               "evaluator_factory": evaluator_factory or _silent_evaluator, "eval_fn": eval_fn or _model_accuracy}
    bar = tqdm(total=len(pending), desc=f"tasks ({backend})", unit="task", disable=not progress)
    if backend == "serial":
        for i in pending:
            results[i] = _train_one(payload, i, threads_per_worker)
            bar.update()
    elif backend == "processes":
        n = min(len(pending), workers or os.cpu_count() or 1) or 1
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method), initializer=_pool_init,
                                 initargs=(payload,)) as pool:
            futures = {pool.submit(_pool_task, i, threads_per_worker): i for i in pending}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    else:
        import ray
        init_ray(ray_address, num_cpus=workers)
        remote = ray.remote(num_cpus=threads_per_worker, max_retries=max_retries)(_train_one)
        ref = ray.put(payload)
        futures = {remote.remote(ref, i, threads_per_worker): i for i in pending}
        for i, result in ray_completed(futures):
            results[i] = result
            bar.update()
    bar.close()
    merge_task_results(strategy, [experiences[i] for i in pending], [results[i] for i in pending])
    return [results[i] for i in range(len(experiences))]


def _train_here(strategy: TaskIncrementalStrategy, experience: Any, test: Any, threads: int,
                eval_fn: Callable[[Any, Any], float]) -> TaskResult:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train_and_measure(strategy, experience, test, eval_fn)
    finally:
        torch.set_num_threads(previous)


def merge_task_results(strategy: TaskIncrementalStrategy, experiences: Sequence[Any],
                       results: Sequence[TaskResult]) -> None:
    """Load tasks trained elsewhere into ``strategy.model``: adapted, loaded and frozen as ``train`` leaves them.

    :param strategy: the strategy whose model receives the tasks.
    :param experiences: the training experiences the tasks came from (the
        model adapts to them as Avalanche would have).
    :param results: one :class:`TaskResult` per experience.
    """
    model = strategy.model
    was_training = model.training
    model.train()
    for experience in experiences:
        avalanche_model_adaptation(model, experience)
    model.train(was_training)
    for result in results:
        model.load_task_state_dict(result.task, result.state)
        model.freeze_task(result.task)
    strategy.clock.train_exp_counter += len(results)
