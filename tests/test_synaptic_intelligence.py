"""Synaptic Intelligence on the CPU: Avalanche's importance is always zero, ours follows SI's definition
and is never negative."""

import warnings

import pytest
import torch
from torch import nn

import avalanche.training as avl
from avalanche_neuromod.benchmarks import PermutedMNIST
from avalanche_neuromod.evaluation import make_evaluator
from avalanche_neuromod.training import IterationBudgetPlugin, SynapticIntelligence, SynapticIntelligencePlugin

LR = 0.1


@pytest.fixture(scope="module")
def stream():
    return PermutedMNIST(n_experiences=2, dataset="digits", return_task_id=True, seed=0).train_stream


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def _train(cls, stream, iterations, **kwargs):
    model = _model()
    strategy = cls(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                   criterion=nn.CrossEntropyLoss(), train_mb_size=32, eval_mb_size=64,
                   evaluator=make_evaluator(progress_bar=False), plugins=[IterationBudgetPlugin(iterations)],
                   **kwargs)
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for experience in stream:
            strategy.train(experience)
    return strategy


def _si_plugin(strategy):
    return next(p for p in strategy.plugins if hasattr(p, "ewc_data"))


def test_avalanches_si_has_zero_importance_on_the_cpu_and_trains_as_naive(stream):
    # Documents the upstream bug this module works around: if it fails, Avalanche fixed it.
    theirs = _train(avl.SynapticIntelligence, stream, 5, si_lambda=100.0)
    assert type(_si_plugin(theirs)) is avl.plugins.SynapticIntelligencePlugin
    assert all(float(d.data.abs().max()) == 0.0 for d in _si_plugin(theirs).ewc_data[1].values())
    naive = _train(avl.Naive, stream, 5)
    for a, b in zip(theirs.model.parameters(), naive.model.parameters()):
        assert torch.equal(a, b)


def test_importance_after_one_step_matches_its_definition(stream):
    # One SGD step from w0 to w1 = w0 - lr g: the path integral is g * d with d = w1 - w0, the
    # displacement over the experience is the same d, so Avalanche's update (c = 1, clipped at
    # 0.001) gives the importance min(-g d / (d^2 + eps), 0.001) = min(lr g^2 / (lr^2 g^2 + eps), 0.001).
    ours = _train(SynapticIntelligence, stream[:1], 1, si_lambda=1.0)
    plugin = _si_plugin(ours)
    assert isinstance(plugin, SynapticIntelligencePlugin)
    for name, importance in plugin.ewc_data[1].items():
        g = plugin.syn_data["grad"][name].data
        d = plugin.syn_data["new_theta"][name].data - plugin.syn_data["old_theta"][name].data
        assert torch.allclose(d, -LR * g, atol=1e-6)
        expected = torch.clamp(-g * d / (d * d + plugin.eps), max=0.001)
        assert torch.allclose(importance.data, expected, rtol=1e-5, atol=1e-12)
        assert float(importance.data.max()) == pytest.approx(0.001)


def test_the_penalty_holds_weights_near_the_first_task(stream):
    def drift(strategy, anchor):
        return sum(float((p.detach() - a).pow(2).sum()) for p, a in zip(strategy.model.parameters(), anchor))

    first = _train(avl.Naive, stream[:1], 20)
    anchor = [p.detach().clone() for p in first.model.parameters()]
    naive = _train(avl.Naive, stream, 20)
    ours = _train(SynapticIntelligence, stream, 20, si_lambda=1000.0)
    # Same first task (same seeds, no penalty yet), a smaller move on the second.
    assert 0 < drift(ours, anchor) < 0.5 * drift(naive, anchor)


def test_the_plugin_keeps_avalanches_settings():
    plugin = SynapticIntelligencePlugin(si_lambda=[1.0, 2.0], eps=1e-5, excluded_parameters=["0.bias"])
    assert plugin.si_lambda == [1.0, 2.0] and plugin.eps == 1e-5 and plugin.excluded_parameters == {"0.bias"}
    model = _model()
    strategy = SynapticIntelligence(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                                    criterion=nn.CrossEntropyLoss(), si_lambda=3.0, eps=1e-6,
                                    evaluator=make_evaluator(progress_bar=False))
    plugin = _si_plugin(strategy)
    assert type(plugin) is SynapticIntelligencePlugin and plugin.si_lambda == [3.0] and plugin.eps == 1e-6


def test_a_path_up_the_loss_gets_zero_importance_not_a_negative_one():
    # Avalanche's update gives -c * trajectory / (displacement^2 + eps), clipped at 0.001 from above
    # only: a positive trajectory (the parameter moved up the loss) would give a large negative weight.
    class Stub:
        def __init__(self, model):
            self.model, self.device = model, "cpu"

    model = nn.Linear(3, 1, bias=False)
    stub = Stub(model)
    plugin = SynapticIntelligencePlugin(si_lambda=1.0)
    plugin.before_training_exp(stub)
    start = model.weight.detach().clone().flatten()
    with torch.no_grad():
        model.weight.add_(torch.tensor([[0.1, 0.1, 0.0]]))
    plugin.syn_data["trajectory"]["weight"].data = torch.tensor([-2e-3, 5e-3, 0.0])  # down, up, still
    plugin.after_training_exp(stub)
    importance = plugin.ewc_data[1]["weight"].data
    assert importance[0] == pytest.approx(min(2e-3 / (0.1 ** 2 + plugin.eps), 0.001))
    assert importance[1] == 0.0 and importance[2] == 0.0
    assert torch.equal(plugin.ewc_data[0]["weight"].data, model.weight.detach().flatten())
    assert not torch.equal(start, plugin.ewc_data[0]["weight"].data)
