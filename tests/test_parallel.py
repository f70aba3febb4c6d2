"""Parallel CRWN tasks: each task trained alone, merged, equals the sequentially trained model (torch.equal)."""

import warnings

import pytest
import torch

from avalanche.training.plugins import EvaluationPlugin
from conftest import assert_same_state

from avalanche_neuromod.benchmarks import RotatedMNIST
from avalanche_neuromod.evaluation import accuracy_matrix, make_evaluator
from avalanche_neuromod.models import FlyNet, NeuroModNet, NeuroModResNet18, PSPNet, STLNet, SupSupNet
from avalanche_neuromod.training import CRWN, PSP, STL, SupSup, TaskResult, train_tasks_parallel
from avalanche_neuromod.training.parallel import experience_accuracy


@pytest.fixture(scope="module")
def stream():
    return RotatedMNIST(n_experiences=4, return_task_id=True, dataset="digits")


@pytest.fixture(autouse=True)
def one_thread():
    # Workers run one thread; the sequential reference must too for a bitwise comparison.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    yield
    torch.set_num_threads(previous)


def _strategy(model, evaluator=None):
    return CRWN(model=model, n_iterations=12, train_mb_size=32, batch_seed=7,
                evaluator=evaluator or EvaluationPlugin(loggers=[]))


def _sequential(make_model, experiences):
    strategy = _strategy(make_model())
    for e in experiences:
        strategy.train(e)
    return strategy.model


def _trained(strategy, experiences, parallel):
    """The strategy's model after training ``experiences`` in 2 worker processes, or in order here."""
    if parallel:
        train_tasks_parallel(strategy, experiences, backend="processes", workers=2, progress=False)
    else:
        for e in experiences:
            strategy.train(e)
    return strategy.model


def assert_same_model(a, b):
    assert_same_state(a.state_dict(), b.state_dict())
    assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]
    assert a.known_train_tasks_labels == b.known_train_tasks_labels
    assert a.max_class_label == b.max_class_label


@pytest.mark.parametrize("backend", ["serial", "processes"])
def test_parallel_tasks_equal_sequential_training(stream, backend):
    make = lambda: NeuroModNet((32, 32), seed=3)  # noqa: E731
    reference = _sequential(make, stream.train_stream)
    strategy = _strategy(make())
    results = train_tasks_parallel(strategy, stream.train_stream, eval_experiences=stream.test_stream,
                                   backend=backend, workers=2, progress=False)
    assert_same_model(strategy.model, reference)
    assert [r.task for r in results] == [0, 1, 2, 3]
    assert all(isinstance(r, TaskResult) and r.seconds > 0 for r in results)
    # The worker's accuracy is the task's accuracy in the merged (= sequential) model.
    assert [r.accuracy for r in results] == [experience_accuracy(reference, e) for e in stream.test_stream]
    if backend == "processes":
        assert len({r.worker for r in results}) == 2
    assert strategy.clock.train_exp_counter == 4


def test_merged_model_is_an_ordinary_crwn_model(stream):
    """Avalanche's evaluator sees it like any other; training goes on after the merge."""
    make = lambda: FlyNet(4, seed=1)  # noqa: E731
    reference = _strategy(make(), evaluator=make_evaluator(progress_bar=False))
    for e in stream.train_stream:
        reference.train(e)
    strategy = _strategy(make(), evaluator=make_evaluator(progress_bar=False))
    train_tasks_parallel(strategy, list(stream.train_stream)[:3], backend="processes", workers=2, progress=False)
    strategy.train(stream.train_stream[3])
    assert_same_model(strategy.model, reference.model)
    ours = accuracy_matrix([strategy.eval(stream.test_stream)], n_experiences=4)
    theirs = accuracy_matrix([reference.eval(stream.test_stream)], n_experiences=4)
    assert (ours == theirs).all()
    # A worker's accuracy is the evaluator's figure to the last bit (several mini-batches per experience).
    assert len(stream.test_stream[0].dataset) > reference.eval_mb_size
    assert [experience_accuracy(strategy.model, e, reference.eval_mb_size) for e in stream.test_stream] == list(
        theirs[0])


def test_pretrained_mode_trains_the_first_task_first(stream):
    make = lambda: NeuroModNet((16, 16), seed=2, pretrained=True)  # noqa: E731
    reference = _sequential(make, stream.train_stream)
    strategy = _strategy(make())
    train_tasks_parallel(strategy, stream.train_stream, backend="processes", workers=2, progress=False)
    assert_same_model(strategy.model, reference)


def test_conv_tasks_with_per_task_batch_norm(stream):
    """NeuroModResNet18 keeps per-task batch-norm statistics: buffers merge too."""
    images = RotatedMNIST(n_experiences=2, return_task_id=True, dataset="digits")
    make = lambda: NeuroModResNet18(1, in_channels=1, seed=0)  # noqa: E731

    def run(parallel):
        strategy = CRWN(model=make(), n_iterations=2, train_mb_size=8, batch_seed=1,
                        evaluator=EvaluationPlugin(loggers=[]))
        return _trained(strategy, images.train_stream, parallel)

    parallel, sequential = run(True), run(False)
    assert any("running_mean" in k for k in parallel.task_state_dict(1))
    assert_same_model(parallel, sequential)


@pytest.mark.parametrize("strategy_cls, model_cls", [(SupSup, SupSupNet), (STL, STLNet)])
def test_the_baselines_with_independent_tasks_train_in_parallel_too(stream, strategy_cls, model_cls):
    def run(parallel):
        strategy = strategy_cls(model=model_cls((16, 16), seed=1), n_iterations=5, train_mb_size=32, batch_seed=3,
                                evaluator=EvaluationPlugin(loggers=[]))
        return _trained(strategy, stream.train_stream, parallel)

    assert_same_model(run(True), run(False))


def test_batch_order_is_a_function_of_seed_and_task(stream):
    """Task 2 trained alone (after nothing) equals task 2 trained after tasks 0 and 1."""
    torch.manual_seed(0)
    alone = _strategy(NeuroModNet((16,), seed=0))
    alone.train(stream.train_stream[2])
    torch.manual_seed(123)  # the global random state must not matter
    after = _sequential(lambda: NeuroModNet((16,), seed=0), list(stream.train_stream)[:3])
    state = alone.model.task_state_dict(2)
    assert state.keys() == after.task_state_dict(2).keys()
    assert all(torch.equal(v, after.task_state_dict(2)[k]) for k, v in state.items())
    other = CRWN(model=NeuroModNet((16,), seed=0), n_iterations=12, train_mb_size=32, batch_seed=8,
                 evaluator=EvaluationPlugin(loggers=[]))
    other.train(stream.train_stream[2])
    assert not torch.equal(other.model.task_state_dict(2)["layers.0.modulation.contexts"], state[
        "layers.0.modulation.contexts"])


def test_task_state_round_trip_and_architecture_check():
    source, target = NeuroModNet((8, 8), seed=0), NeuroModNet((8, 8), seed=5)
    source.ensure_tasks(2)
    target.ensure_tasks(2)
    target.load_task_state_dict(1, source.task_state_dict(1))
    assert all(torch.equal(v, source.task_state_dict(1)[k]) for k, v in target.task_state_dict(1).items())
    assert not torch.equal(target.task_state_dict(0)["layers.0.modulation.contexts"],
                           source.task_state_dict(0)["layers.0.modulation.contexts"])
    wider = NeuroModNet((16, 8), seed=0)
    wider.ensure_tasks(2)
    with pytest.raises(ValueError, match="another architecture"):
        wider.load_task_state_dict(1, {"nope.contexts": torch.zeros(1)})
    with pytest.raises(ValueError, match="another size"):
        wider.load_task_state_dict(1, source.task_state_dict(1))


def test_clear_errors(stream):
    no_seed = CRWN(model=NeuroModNet((8,)), n_iterations=1, evaluator=EvaluationPlugin(loggers=[]))
    with pytest.raises(ValueError, match="batch_seed"):
        train_tasks_parallel(no_seed, stream.train_stream, backend="serial", progress=False)
    psp = PSP(model=PSPNet((8,)), n_iterations=1, batch_seed=0, evaluator=EvaluationPlugin(loggers=[]))
    with pytest.raises(ValueError, match="not independent"):
        train_tasks_parallel(psp, stream.train_stream, backend="serial", progress=False)
    strategy = _strategy(NeuroModNet((8,)))
    with pytest.raises(ValueError, match="backend"):
        train_tasks_parallel(strategy, stream.train_stream, backend="threads", progress=False)
    strategy.train(stream.train_stream[0])
    with pytest.raises(ValueError, match="already trained"):
        train_tasks_parallel(strategy, stream.train_stream, backend="serial", progress=False)
    with pytest.raises(ValueError, match="align"):
        train_tasks_parallel(strategy, list(stream.train_stream)[1:], eval_experiences=stream.test_stream,
                             backend="serial", progress=False)
