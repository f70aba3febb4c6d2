"""Checkpoints: Avalanche's helpers with our fix, the shared state layer, atomic writes, a real SIGKILL."""

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap

import dill
import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch.utils.data import TensorDataset

import avalanche.checkpointing as avl_ckpt
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import DataAttribute, make_avalanche_dataset
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive

from conftest import start_script

from avalanche_neuromod.evaluation import make_evaluator
from avalanche_neuromod.models import NeuroModNet
from avalanche_neuromod.training import (
    CRWN,
    CheckpointError,
    CRWNPlugin,
    checkpoint_compat,
    load_strategy_state,
    maybe_load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    strategy_state_dict,
    write_checkpoint,
)


def tiny_task_benchmark(n_tasks=3, n_features=20, n_train=96, n_test=32):
    """Three binary tasks from make_classification, with task labels, built in memory."""
    streams = {"train": [], "test": []}
    for t in range(n_tasks):
        x, y = make_classification(n_samples=n_train + n_test, n_features=n_features, n_informative=6,
                                   n_classes=2, random_state=t)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        for name, part in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
            xs, ys = x[part], y[part]
            ts = torch.full_like(ys, t)
            streams[name].append(make_avalanche_dataset(
                TensorDataset(xs, ys, ts),
                data_attributes=[DataAttribute(ys.tolist(), "targets"),
                                 DataAttribute(ts.tolist(), "targets_task_labels")]))
    return with_classes_timeline(with_task_labels(benchmark_from_datasets(**streams)))


@pytest.fixture(scope="module")
def bench():
    return tiny_task_benchmark()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Batches of 16 x 20: a second intra-op thread only adds wake-up latency
    # (20x slower on a busy two-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingPlugin(SupervisedPlugin):
    """A plugin with state: counts training iterations."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def after_training_iteration(self, strategy, **kwargs):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def make_strategy(kind, plugins=()):
    evaluator = make_evaluator(progress_bar=False)
    if kind == "naive":
        model = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=2,
                     plugins=list(plugins), evaluator=evaluator)
    # pretrained: the first task also trains the shared weights, which then leave the model
    model = NeuroModNet((16,), input_size=20, n_classes=2, pretrained=kind.endswith("pretrained"))
    if kind.startswith("crwn"):
        return CRWN(model=model, n_iterations=10, train_mb_size=16, plugins=list(plugins), evaluator=evaluator)
    return Naive(model=model, optimizer=torch.optim.RMSprop(model.parameters(), lr=0.01),
                 criterion=torch.nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=2,
                 plugins=[CRWNPlugin(), *plugins], evaluator=evaluator)


KINDS = ["naive", "crwn", "plugin"]


def run(bench, kind, save=None, load=None, plugins=()):
    """Train the stream, evaluating after each experience; after experience 0,
    save, rebuild the strategy from scratch with another seed, and load."""
    torch.manual_seed(0)
    strategy = make_strategy(kind, plugins)
    for exp in bench.train_stream:
        strategy.train(exp)
        results = strategy.eval(bench.test_stream)
        if save is not None and exp.current_experience == 0:
            save(strategy)
            torch.manual_seed(1234)  # the interrupted process's random state is gone
            strategy = load(make_strategy(kind, plugins))
    metrics = {k: v for k, v in results.items() if not k.startswith("Time")}
    return strategy, metrics


def assert_same_state(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if torch.is_tensor(sa[key]):
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key


def test_cause_torch_optimisers_are_pickled_by_value():
    # torch.optim deletes its submodules' names, so dill cannot find SGD by
    # reference and pickles the class, whose base holds a typing_extensions
    # deprecated wrapper; its globals hold a sentinel that cannot be pickled.
    assert not hasattr(torch.optim, "sgd") and "torch.optim.sgd" in sys.modules
    with pytest.raises(pickle.PicklingError, match="sentinel"):
        dill.dumps(torch.optim.SGD)
    before = dict(dill.Pickler.dispatch)
    with checkpoint_compat():
        assert dill.loads(dill.dumps(torch.optim.SGD)) is torch.optim.SGD
        assert dill.loads(dill.dumps(torch.optim.RMSprop)) is torch.optim.RMSprop
    assert dict(dill.Pickler.dispatch) == before  # nothing global left behind
    model = torch.nn.Linear(2, 2)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion=torch.nn.CrossEntropyLoss(), evaluator=make_evaluator(progress_bar=False))
    with pytest.raises(pickle.PicklingError, match="sentinel"):
        avl_ckpt.save_checkpoint(strategy, os.devnull)


@pytest.mark.parametrize("kind", KINDS)
def test_avalanche_helpers_resume_exactly(bench, kind, tmp_path):
    path = tmp_path / "ckpt.pkl"

    def save(strategy):
        with checkpoint_compat():  # Avalanche's own function, with the fix
            avl_ckpt.save_checkpoint(strategy, str(path))

    def load(strategy):
        strategy, done = avl_ckpt.maybe_load_checkpoint(strategy, str(path))
        assert done == 1
        return strategy

    uninterrupted, metrics = run(bench, kind)
    resumed, resumed_metrics = run(bench, kind, save, load)
    assert_same_state(uninterrupted, resumed)
    assert metrics == resumed_metrics
    assert type(resumed.optimizer) is type(uninterrupted.optimizer)  # by reference, not a copy


@pytest.mark.parametrize("kind", KINDS)
def test_our_wrappers_resume_exactly(bench, kind, tmp_path):
    path = tmp_path / "ckpt.pkl"
    assert maybe_load_checkpoint(make_strategy(kind), path)[1] == 0  # first run: no file yet
    uninterrupted, metrics = run(bench, kind)
    resumed, resumed_metrics = run(bench, kind, lambda s: save_checkpoint(s, path),
                                   lambda s: maybe_load_checkpoint(s, path)[0])
    assert_same_state(uninterrupted, resumed)
    assert metrics == resumed_metrics


@pytest.mark.parametrize("kind", [*KINDS, "plugin_pretrained"])
def test_state_layer_resumes_exactly_with_plugin_state(bench, kind, tmp_path):
    path = tmp_path / "state.pt"
    uninterrupted, _ = run(bench, kind, plugins=[CountingPlugin()])
    resumed, _ = run(bench, kind, lambda s: write_checkpoint(strategy_state_dict(s), path),
                     lambda s: (load_strategy_state(s, read_checkpoint(path)), s)[1],
                     plugins=[CountingPlugin()])
    assert_same_state(uninterrupted, resumed)
    counters = [[p.count for p in s.plugins if isinstance(p, CountingPlugin)] for s in (uninterrupted, resumed)]
    assert counters[0] == counters[1] and counters[0][0] > 0
    assert resumed.clock.train_exp_counter == uninterrupted.clock.train_exp_counter == 3
    frozen = [[n for n, p in s.model.named_parameters() if not p.requires_grad] for s in (uninterrupted, resumed)]
    assert frozen[0] == frozen[1]


def test_state_layer_restores_every_random_state(bench):
    strategy = make_strategy("crwn")
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = strategy_state_dict(strategy)
    draws = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    load_strategy_state(make_strategy("crwn"), state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_state_must_fit_the_strategy(bench):
    state = strategy_state_dict(make_strategy("crwn", plugins=[CountingPlugin()]))
    with pytest.raises(CheckpointError, match="same plugins"):
        load_strategy_state(make_strategy("crwn"), state)
    with pytest.raises(CheckpointError, match="no 'model'"):
        load_strategy_state(make_strategy("crwn"), {"clock": {}})


def test_crwn_checkpoint_methods_use_the_layer(bench, tmp_path):
    torch.manual_seed(0)
    strategy = make_strategy("crwn")
    strategy.train(bench.train_stream[0])
    strategy.train(bench.train_stream[1])
    strategy.save_checkpoint(tmp_path / "crwn.pt")
    fresh = make_strategy("crwn")
    assert fresh.load_checkpoint(tmp_path / "crwn.pt") == 2
    assert fresh.model.trained_tasks == [0, 1]
    assert all(not p.requires_grad for t in (0, 1) for p in fresh.model.task_parameters(t))
    assert isinstance(fresh.optimizer, torch.optim.RMSprop)
    names = {id(p): n for n, p in strategy.model.named_parameters()}
    fresh_names = {id(p): n for n, p in fresh.model.named_parameters()}
    assert ([names[id(p)] for p in strategy.optimizer.param_groups[0]["params"]]
            == [fresh_names[id(p)] for p in fresh.optimizer.param_groups[0]["params"]])
    assert_same_state(strategy, fresh)


def _damaged(tmp_path, good):
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 32):
        flipped[i] ^= 0xFF
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(bytes(flipped))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    return truncated, corrupted, empty


def test_damaged_state_files_are_clear_errors(bench, tmp_path):
    good = tmp_path / "good.pt"
    make_strategy("crwn").save_checkpoint(good)
    for damaged in _damaged(tmp_path, good):
        with pytest.raises(CheckpointError, match="delete it to start over") as err:
            make_strategy("crwn").load_checkpoint(damaged)
        assert str(damaged) in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing.pt")
    avalanche_file = tmp_path / "avalanche.pkl"
    save_checkpoint(make_strategy("crwn"), avalanche_file)
    with pytest.raises(CheckpointError, match="maybe_load_checkpoint"):
        read_checkpoint(avalanche_file)


def test_damaged_avalanche_files_are_clear_errors(bench, tmp_path):
    good = tmp_path / "good.pkl"
    save_checkpoint(make_strategy("plugin"), good)
    for damaged in _damaged(tmp_path, good):
        with pytest.raises(CheckpointError, match="delete it to start over") as err:
            maybe_load_checkpoint(make_strategy("plugin"), damaged)
        assert str(damaged) in str(err.value)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_failed_save_leaves_the_previous_checkpoint(bench, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pkl"
    strategy = make_strategy("crwn")
    strategy.train(bench.train_stream[0])
    save_checkpoint(strategy, path)
    before = path.read_bytes()
    strategy.train(bench.train_stream[1])
    strategy.unpicklable = Unpicklable()
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        save_checkpoint(strategy, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pkl"]
    assert maybe_load_checkpoint(make_strategy("crwn"), path)[1] == 1

    state_path = tmp_path / "state.pt"
    strategy.save_checkpoint(state_path)
    before = state_path.read_bytes()

    def half_then_fail(obj, f):
        f.write(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        strategy.save_checkpoint(state_path)
    monkeypatch.undo()
    assert state_path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pkl", "state.pt"]


SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from avalanche.checkpointing import maybe_load_checkpoint
    from avalanche_neuromod.benchmarks import PermutedMNIST
    from avalanche_neuromod.evaluation import make_evaluator
    from avalanche_neuromod.models import NeuroModNet
    from avalanche_neuromod.training import CRWN, save_checkpoint

    mode, ckpt, out = sys.argv[1:4]
    torch.manual_seed(0)
    benchmark = PermutedMNIST(n_experiences=3, dataset="digits", return_task_id=True)
    strategy = CRWN(model=NeuroModNet((32,)), n_iterations=20, train_mb_size=64,
                    evaluator=make_evaluator(progress_bar=False))
    start = 0
    if mode == "resume":
        strategy, start = maybe_load_checkpoint(strategy, ckpt)  # Avalanche's own
        assert start == 1, start
    for exp in benchmark.train_stream[start:]:
        strategy.train(exp)
        results = strategy.eval(benchmark.test_stream)  # untrained tasks are skipped
        if mode != "full":
            save_checkpoint(strategy, ckpt)  # Avalanche's save_checkpoint, fixed, atomic
        if mode == "killed":
            print("CHECKPOINTED", exp.current_experience, flush=True)
            time.sleep(600)
    metrics = {k: v for k, v in results.items() if not k.startswith("Time")}
    torch.save({"model": strategy.model.state_dict(), "metrics": metrics}, out)
""")


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt.pkl"

    def start(mode, stdout=None):
        return start_script(script, mode, ckpt, tmp_path, stdout)

    full, killed = start("full"), start("killed", stdout=subprocess.PIPE)
    try:
        assert killed.stdout.readline().strip() == "CHECKPOINTED 0"
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
        assert not (tmp_path / "killed.pt").exists() and ckpt.exists()
        resumed = start("resume")
        assert resumed.wait(timeout=240) == 0 and full.wait(timeout=240) == 0
    finally:
        for proc in (full, killed):
            if proc.poll() is None:
                proc.kill()
        killed.stdout.close()
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]) if torch.is_tensor(value) else value == b["model"][key], key
    assert a["metrics"] == b["metrics"]
    assert any("/Exp002" in k for k in a["metrics"])
