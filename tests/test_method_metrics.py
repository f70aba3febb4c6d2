"""Avalanche metrics of Dynamos' gates and TSAR's regulation, against values computed by hand."""

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin

from avalanche_neuromod.benchmarks import DomainTransfer, SplitMNIST
from avalanche_neuromod.evaluation import (KeepRatio, RegulationActivity, keep_ratio_metrics, make_evaluator,
                                           regulation_metrics)
from avalanche_neuromod.models import DynamosResNet18, TSARNet
from avalanche_neuromod.training import TSAR


def _evaluator(*metrics):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(*metrics, loggers=[])


def _last(evaluator, name):
    return evaluator.get_all_metrics()[name][1][-1]


def _batches(experience, size):
    return DataLoader(experience.dataset, batch_size=size, shuffle=False)


@pytest.fixture
def digits():
    return SplitMNIST(n_experiences=5, dataset="digits", seed=0)


def _dynamos_model():
    torch.manual_seed(0)
    model = DynamosResNet18(n_classes=10, width=8)
    with torch.no_grad():  # spread the agents' keep probabilities so layers keep different fractions
        for i, agent in enumerate(model.agents):
            agent.fc2.bias.fill_(0.02 * (i - 1.5))
    return model


def test_keep_ratio_per_experience_and_stream_equals_the_gates_by_hand(digits):
    model = _dynamos_model()
    evaluator = _evaluator(*keep_ratio_metrics(experience=True, stream=True))
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), eval_mb_size=37, evaluator=evaluator)
    strategy.eval(digits.test_stream[:2])

    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for experience in digits.test_stream[:2]:
            kept = []
            for x, *_ in _batches(experience, 50):
                model(x)
                kept.append(model.last_gates.keep_fractions.double())
            kept = torch.cat(kept)
            sums.append(kept.sum(0))
            counts.append(len(kept))
    for e in range(2):
        by_hand = sums[e] / counts[e]
        for layer in range(4):
            name = f"KeepRatio_Exp/eval_phase/test_stream/Task000/Exp{e:03d}/agent{layer + 1}"
            assert _last(evaluator, name) == pytest.approx(float(by_hand[layer]), abs=1e-12)
    stream = (sums[0] + sums[1]) / (counts[0] + counts[1])
    values = [_last(evaluator, f"KeepRatio_Stream/eval_phase/test_stream/agent{k}") for k in range(1, 5)]
    assert values == pytest.approx(stream.tolist(), abs=1e-12)
    assert 0.0 < min(values) and max(values) < 1.0 and len(set(values)) > 1  # not a trivial all-kept network


def test_keep_ratio_per_training_epoch_averages_every_gated_training_pass(digits):
    from avalanche.core import SupervisedPlugin

    class Recorder(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.kept = []

        def after_training_iteration(self, strategy, **kwargs):
            self.kept.append(strategy.model.last_gates.keep_fractions.detach().double())

    model, recorder = _dynamos_model(), Recorder()
    metric = KeepRatio("epoch")
    evaluator = _evaluator(metric)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=40, train_epochs=2,
                     evaluator=evaluator, plugins=[recorder])
    torch.manual_seed(1)
    strategy.train(digits.train_stream[0])
    steps, values = evaluator.get_all_metrics()["KeepRatio_Epoch/train_phase/train_stream/Task000/agent3"]
    assert len(values) == 2  # one per epoch
    n_batches = len(recorder.kept) // 2
    by_hand = torch.cat(recorder.kept[n_batches:]).mean(0)  # the second epoch's samples (agents sample in training)
    assert values[-1] == pytest.approx(float(by_hand[2]), abs=1e-12)
    assert metric.result()["agent3"] == values[-1]


def test_keep_ratio_skips_ungated_passes_and_warns_once_for_a_network_without_gates(digits):
    model = _dynamos_model()
    evaluator = _evaluator(KeepRatio("stream"))
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.01), eval_mb_size=64, evaluator=evaluator)
    with model.ungated():
        strategy.eval(digits.test_stream[:1])
    assert not [k for k in evaluator.get_all_metrics() if k.startswith("KeepRatio")]

    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    evaluator = _evaluator(KeepRatio("experience"))
    strategy = Naive(mlp, torch.optim.SGD(mlp.parameters(), lr=0.01), eval_mb_size=64, evaluator=evaluator)
    with pytest.warns(UserWarning, match="Sequential records no agent decisions") as caught:
        strategy.eval(digits.test_stream[:2])
    assert len([w for w in caught if "KeepRatio" in str(w.message)]) == 1
    assert not [k for k in evaluator.get_all_metrics() if k.startswith("KeepRatio")]


def _tsar_model(bias="sculpt"):
    torch.manual_seed(0)
    return TSARNet.build(n_classes=6, classifier_channels=4, regulator_channels=4, bias=bias)


def test_regulation_counts_open_synapses_per_image_by_hand():
    bench = DomainTransfer("digits", n_classes=3, n_images=5, seed=0)
    model = _tsar_model()
    evaluator = _evaluator(*regulation_metrics(experience=True, stream=True),
                           RegulationActivity("stream", threshold=0.6))
    strategy = TSAR(model=model, seed=0, evaluator=evaluator)
    strategy.eval(bench.test_stream)

    per_exp, all_counts = [], {0.5: [], 0.6: []}
    with torch.no_grad():
        for experience in bench.test_stream:
            x = torch.cat([x for x, *_ in _batches(experience, 100)])
            masks = model.masks(x)
            for t in all_counts:
                all_counts[t].append(torch.stack([(m.reshape(len(x), -1) > t).sum(1) for m in masks], 1).double())
            per_exp.append(all_counts[0.5][-1].mean(0))
    for e, by_hand in enumerate(per_exp):
        values = [_last(evaluator, f"Regulation_Exp/eval_phase/test_stream/Task000/Exp{e:03d}/{layer}")
                  for layer in ("C1", "C2", "C3", "CP")]
        assert values == pytest.approx(by_hand.tolist(), abs=1e-9)
    for t, name in ((0.5, "Regulation_Stream"), (0.6, "Regulation_T0.6_Stream")):
        by_hand = torch.cat(all_counts[t]).mean(0)
        values = [_last(evaluator, f"{name}/eval_phase/test_stream/{layer}") for layer in ("C1", "C2", "C3", "CP")]
        assert values == pytest.approx(by_hand.tolist(), abs=1e-9)
    # Sculpt's masks start near one half: some synapses open, not all; a higher threshold opens fewer
    sizes = [m[0].numel() for m in model.masks(x[:1])]
    layers = ("C1", "C2", "C3", "CP")
    stream = [_last(evaluator, f"Regulation_Stream/eval_phase/test_stream/{layer}") for layer in layers]
    strict = [_last(evaluator, f"Regulation_T0.6_Stream/eval_phase/test_stream/{layer}") for layer in layers]
    assert all(0 < v < n for v, n in zip(stream, sizes)) and all(s < v for s, v in zip(strict, stream))


def test_regulation_reports_nothing_without_regulation_and_make_evaluator_adds_both():
    bench = DomainTransfer("digits", n_classes=2, n_images=3, seed=0)
    model = _tsar_model()
    model.regulation = False  # No Regulation
    evaluator = make_evaluator(progress_bar=False, regulation=True, keep_ratio=True)
    strategy = TSAR(model=model, seed=0, evaluator=evaluator)
    with pytest.warns(UserWarning, match="TSARNet records no agent decisions"):
        strategy.eval(bench.test_stream)
    assert not [k for k in evaluator.get_all_metrics() if k.startswith(("Regulation", "KeepRatio"))]
    names = {str(m) for m in evaluator.metrics}
    assert {"KeepRatio_Exp", "KeepRatio_Stream", "Regulation_Exp", "Regulation_Stream"} <= names
    assert {"Regulation_T0.9_Exp"} <= {str(m) for m in make_evaluator(progress_bar=False, regulation=0.9).metrics}
    assert not [m for m in make_evaluator(progress_bar=False).metrics if isinstance(m, (KeepRatio, RegulationActivity))]


def test_metric_arguments_are_checked():
    with pytest.raises(ValueError, match="granularity must be one of"):
        KeepRatio("minibatch")
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        RegulationActivity(threshold=1.0)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        make_evaluator(progress_bar=False, regulation=1.5)
