"""The grid and parallel CRWN tasks on Ray: a local Ray, a simulated multi-node cluster, a worker that dies."""

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'avalanche-neuromod[ray]'")

from avalanche.training.plugins import EvaluationPlugin  # noqa: E402

from avalanche_neuromod.benchmarks import RotatedMNIST  # noqa: E402
from avalanche_neuromod.evaluation import Grid, run_grid  # noqa: E402
from avalanche_neuromod.evaluation.grid import METHOD_KINDS, register_method  # noqa: E402
from avalanche_neuromod.models import NeuroModNet  # noqa: E402
from avalanche_neuromod.training import CRWN, train_tasks_parallel  # noqa: E402

# The builders this module registers travel to Ray's workers by value (they cannot import a test module).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

STREAM = {"kind": "rotated", "n_experiences": 3, "dataset": "digits"}
METHODS = {"CRWN-FC32": {"kind": "crwn", "hidden": [32, 32]}, "Naive": {"kind": "naive", "hidden": [32]}}
MEASURED = ("accuracy_matrix", "final_accuracies", "forgetting", "avg_accuracy", "params_per_task")


def _grid(methods=METHODS, seeds=(0, 1)):
    return Grid(methods=methods, streams={"digits": STREAM}, seeds=list(seeds), n_iterations=6, batch_size=32)


def _same_results(a, b):
    assert [(r["method"], r["seed"]) for r in a] == [(r["method"], r["seed"]) for r in b]
    for x, y in zip(a, b):
        assert {k: x[k] for k in MEASURED} == {k: y[k] for k in MEASURED}, (x["method"], x["seed"])


@pytest.fixture(scope="module")
def serial():
    warnings.simplefilter("ignore")
    return run_grid(_grid(), threads=1, progress=False)


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_local_ray_grid_equals_serial_and_resumes_from_cache(serial, local_ray, tmp_path):
    seen = []
    results = run_grid(_grid(), executor="ray", cache_dir=tmp_path, progress=False,
                       on_cell=lambda cell, r, cached: seen.append(cached))
    _same_results(results, serial)
    assert seen == [False] * 4 and len(list(tmp_path.glob("*.json"))) == 4
    assert all(r["threads"] == 1 and "ray_node_id" in r for r in results)
    # A grid stopped after some cells: the cached ones load, only the rest run.
    (tmp_path / f"{_grid().cell_key(_grid().cells()[-1])}.json").unlink()
    seen.clear()
    again = run_grid(_grid(), executor="ray", cache_dir=tmp_path, progress=False,
                     on_cell=lambda cell, r, cached: seen.append(cached))
    assert sorted(seen) == [False, True, True, True]
    _same_results(again, serial)


def test_a_grid_stopped_mid_way_resumes_with_the_cells_it_finished(serial, local_ray, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first(cell, result, cached):
        raise Stop(cell)

    with pytest.raises(Stop):
        run_grid(_grid(), executor="ray", cache_dir=tmp_path, progress=False, on_cell=stop_after_first)
    assert len(list(tmp_path.glob("*.json"))) == 1  # written before the driver stopped
    seen = []
    results = run_grid(_grid(), cache_dir=tmp_path, threads=1, progress=False,
                       on_cell=lambda cell, r, cached: seen.append(cached))
    assert sorted(seen) == [False, False, False, True]
    _same_results(results, serial)


def test_parallel_crwn_tasks_on_ray_equal_sequential(local_ray):
    stream = RotatedMNIST(n_experiences=4, return_task_id=True, dataset="digits")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        def strategy():
            return CRWN(model=NeuroModNet((32, 32), seed=4), n_iterations=10, train_mb_size=32, batch_seed=2,
                        evaluator=EvaluationPlugin(loggers=[]))
        reference = strategy()
        for e in stream.train_stream:
            reference.train(e)
        parallel = strategy()
        results = train_tasks_parallel(parallel, stream.train_stream, backend="ray", progress=False)
    finally:
        torch.set_num_threads(previous)
    a, b = parallel.model.state_dict(), reference.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    assert parallel.model.known_train_tasks_labels == {0, 1, 2, 3}
    assert len({r.worker for r in results}) == 2


def test_cells_whose_tasks_train_on_ray_equal_serial(serial, local_ray):
    results = run_grid(_grid(), executor="ray", task_backend="ray", progress=False)
    _same_results(results, serial)
    crwn = [r for r in results if r["kind"] == "crwn"]
    assert all(r["task_backend"] == "ray" for r in crwn)
    assert all(r["forgetting"] == [0.0, 0.0] for r in crwn)  # diagonal from the workers, final row merged


def _dies_once(settings, info, seed, common):
    """Naive, but the worker running it dies the first time (as if killed, or out of memory)."""
    marker = Path(settings["marker"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return METHOD_KINDS["naive"]({**settings, "kind": "naive"}, info, seed, common)


def test_a_worker_that_dies_is_retried_and_the_grid_finishes(serial, local_ray, tmp_path):
    register_method("dies_once", _dies_once)
    try:
        methods = {"Naive": {"kind": "dies_once", "hidden": [32], "marker": str(tmp_path / "died")}}
        results = run_grid(_grid(methods, seeds=[0]), executor="ray", progress=False)
    finally:
        METHOD_KINDS.pop("dies_once")
    assert (tmp_path / "died").is_file()  # the first attempt died
    naive = [r for r in serial if r["method"] == "Naive" and r["seed"] == 0]
    assert [r["final_accuracies"] for r in results] == [r["final_accuracies"] for r in naive]


def test_simulated_multi_node_cluster_gives_the_serial_results(serial):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        results = run_grid(_grid(), executor="ray", progress=False)
        _same_results(results, serial)
        assert len({r["ray_node_id"] for r in results}) == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
