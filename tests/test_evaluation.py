"""Accuracy matrix, summary numbers, the parameter metric, the evaluator and the plots."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from avalanche.training import Naive  # noqa: E402
from avalanche_neuromod.analysis import plot_accuracy_curves, plot_accuracy_matrix, plot_final_accuracy  # noqa: E402
from avalanche_neuromod.benchmarks import PermutedMNIST  # noqa: E402
from avalanche_neuromod.evaluation import (  # noqa: E402
    ContinualResults,
    ParametersPerExperience,
    accuracy_matrix,
    count_changed_parameters,
    make_evaluator,
    results_table,
)

KEY = "Top1_Acc_Exp/eval_phase/test_stream/Task{:03d}/Exp{:03d}"


def _evals():
    # after exp 0: [0.9, 0.1, 0.2]; after exp 1: [0.7, 0.8, 0.1]; after exp 2: [0.6, 0.75, 0.95]
    rows = [[0.9, 0.1, 0.2], [0.7, 0.8, 0.1], [0.6, 0.75, 0.95]]
    return [{KEY.format(j, j): v for j, v in enumerate(row)} | {"Loss": 1.0} for row in rows]


def test_accuracy_matrix_and_summary_by_hand():
    r = ContinualResults.from_eval(_evals(), "demo", seconds=3.0)
    np.testing.assert_allclose(r.matrix, [[0.9, 0.1, 0.2], [0.7, 0.8, 0.1], [0.6, 0.75, 0.95]])
    assert r.average_accuracy == pytest.approx((0.6 + 0.75 + 0.95) / 3)
    np.testing.assert_allclose(r.forgetting, [0.9 - 0.6, 0.8 - 0.75])
    assert r.average_forgetting == pytest.approx((0.3 + 0.05) / 2)
    assert r.bwt == pytest.approx(-(0.3 + 0.05) / 2)
    np.testing.assert_allclose(r.accuracy_curve(), [0.9, 0.75, (0.6 + 0.75 + 0.95) / 3])
    table = results_table([r], digits=3)
    assert "| demo | 0.767 | 0.175 | -0.175 | 3 |" in table
    assert r.to_markdown(2).splitlines()[2] == "| exp 0 | 0.90 | 0.10 | 0.20 |"


def test_accuracy_matrix_from_all_metrics_format():
    all_metrics = {KEY.format(0, j): ([1, 2, 3], [0.5 + j * 0.1] * 3) for j in range(2)}
    all_metrics["Top1_Acc_Exp/eval_phase/train_stream/Task000/Exp000"] = ([1], [0.0])
    m = accuracy_matrix(all_metrics)
    assert m.shape == (3, 2) and np.allclose(m[:, 1], 0.6)
    assert accuracy_matrix(_evals(), n_experiences=5).shape == (3, 5)


def test_accuracy_matrix_without_accuracy_says_what_to_do():
    with pytest.raises(ValueError, match="accuracy_metrics"):
        accuracy_matrix([{"Loss": 1.0}])


def test_count_changed_parameters():
    model = torch.nn.Linear(3, 2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.weight[0, 1] += 1.0
    assert count_changed_parameters(before, model) == 1


def _strategy(model, evaluator):
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 criterion=torch.nn.CrossEntropyLoss(), train_mb_size=64, train_epochs=1,
                 eval_mb_size=256, evaluator=evaluator)


def test_parameters_per_experience_counts_what_training_changed():
    torch.manual_seed(0)
    # tanh, not ReLU: a dead ReLU unit would leave its outgoing weights unchanged
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10))
    for p in model[1].parameters():
        p.requires_grad_(False)
    metric = ParametersPerExperience()
    strategy = _strategy(model, make_evaluator(progress_bar=False, parameters=False, extra_metrics=[metric]))
    bm = PermutedMNIST(n_experiences=2, dataset="digits", return_task_id=True)
    for exp in bm.train_stream:
        strategy.train(exp)
    assert metric.history == [16 * 10 + 10, 16 * 10 + 10]
    names = [k for k in strategy.evaluator.get_all_metrics() if k.startswith("LearnableParams_Exp")]
    assert names == ["LearnableParams_Exp/train_phase/train_stream/Task000/Exp000",
                     "LearnableParams_Exp/train_phase/train_stream/Task001/Exp001"]


def test_parameters_declared_mode_asks_the_model():
    class Declaring(torch.nn.Sequential):
        def params_per_task(self):
            return 42

    model = Declaring(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    metric = ParametersPerExperience(mode="declared")
    strategy = _strategy(model, make_evaluator(progress_bar=False, extra_metrics=[metric]))
    strategy.train(PermutedMNIST(n_experiences=1, dataset="digits").train_stream[0])
    assert metric.history == [42]
    with pytest.raises(ValueError, match="mode"):
        ParametersPerExperience(mode="sometimes")


def test_evaluator_writes_csv_and_records_metrics(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    strategy = _strategy(model, make_evaluator(progress_bar=False, csv_dir=tmp_path / "csv", loss=True))
    bm = PermutedMNIST(n_experiences=2, dataset="digits")
    evals = []
    for exp in bm.train_stream:
        strategy.train(exp)
        evals.append(strategy.eval(bm.test_stream))
    assert (tmp_path / "csv" / "eval_results.csv").stat().st_size > 0
    r = ContinualResults.from_eval(evals)
    assert r.matrix.shape == (2, 2) and not np.isnan(r.matrix).any()
    m = accuracy_matrix(strategy.evaluator.get_all_metrics())
    np.testing.assert_allclose(m, r.matrix)
    keys = evals[-1].keys()
    assert any(k.startswith("StreamBWT") for k in keys) and any(k.startswith("Time_Exp") for k in keys)
    (csv_logger,) = strategy.evaluator.loggers  # Avalanche's CSVLogger keeps its files open until closed
    csv_logger.close()


def test_evaluator_records_peak_ram_when_asked():
    import psutil

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    strategy = _strategy(model, make_evaluator(progress_bar=False, ram=0.005))
    bm = PermutedMNIST(n_experiences=1, dataset="digits")
    strategy.train(bm.train_stream[0])
    strategy.eval(bm.test_stream)
    ram = {k: v for k, (_, v) in strategy.evaluator.get_all_metrics().items() if k.startswith("MaxRAMUsage")}
    assert {k.split("/")[0] for k in ram} == {"MaxRAMUsage_Epoch", "MaxRAMUsage_Experience"}, ram
    resident = psutil.Process().memory_info().rss / 2**20
    # MB of this process, not above what it holds now with margin; a phase that ends before the sampling
    # thread's first sample records 0 (Avalanche's metric), so only the largest value must be above 0.
    values = [v for vs in ram.values() for v in vs]
    assert all(0 <= v < 2 * resident for v in values) and max(values) > 0, (ram, resident)
    assert not [m for m in make_evaluator(progress_bar=False).metrics if "RAM" in type(m).__name__]  # off by default
    with pytest.raises(ValueError, match="sampling period"):
        make_evaluator(ram=0)


def test_plots_return_figures():
    r = ContinualResults.from_eval(_evals(), "a")
    fig = plot_accuracy_matrix(r)
    assert fig.axes[0].get_xlabel() == "evaluated on experience"
    assert len(fig.axes[0].texts) == 9
    fig = plot_final_accuracy([r, ContinualResults(r.matrix * 0.5, "b")])
    assert len(fig.axes[0].patches) == 6
    fig = plot_accuracy_curves([r])
    assert len(fig.axes[0].lines) == 1


def test_save_figure_writes_the_file_in_a_new_folder_and_closes_the_figure(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    from avalanche_neuromod.analysis import save_figure

    fig = plot_accuracy_matrix(ContinualResults.from_eval(_evals(), "a"))
    assert fig.number in plt.get_fignums()
    path = save_figure(fig, tmp_path / "new" / "matrix.png", dpi=50)
    assert path == tmp_path / "new" / "matrix.png" and fig.number not in plt.get_fignums()
    with Image.open(path) as image:
        width, height = image.size  # the dpi passed on: inches x 50, to the pixel
        assert abs(width - fig.get_figwidth() * 50) <= 1 and abs(height - fig.get_figheight() * 50) <= 1


def test_evaluator_optional_loggers(tmp_path):
    from avalanche.logging import InteractiveLogger, TensorboardLogger, TextLogger

    plugin = make_evaluator(tensorboard_dir=tmp_path / "tb", text_log=True)
    kinds = {type(logger) for logger in plugin.loggers}
    assert kinds == {InteractiveLogger, TextLogger, TensorboardLogger}
    assert not make_evaluator(progress_bar=False).loggers
    names = {str(m) for m in make_evaluator(parameters=True, timing=False, bwt=False).metrics}
    assert "LearnableParams_Exp" in names and "StreamBWT" not in names


def test_stream_accuracy_counts_every_sample_once():
    from avalanche_neuromod.evaluation import stream_accuracy

    bm = PermutedMNIST(n_experiences=2, dataset="digits", return_task_id=True)

    # A model that always answers 0: its accuracy is the share of zeros over both experiences.
    class Zero(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, 0] = 1
            return out

    labels = torch.cat([torch.as_tensor(e.dataset.targets) for e in bm.test_stream])
    model = Zero().train()
    assert stream_accuracy(model, bm.test_stream) == pytest.approx(float((labels == 0).float().mean()))
    assert model.training  # its mode is given back
    with pytest.raises(ValueError, match="no samples"):
        stream_accuracy(model, [])


def test_class_accuracy_is_each_class_share_right_and_averages_to_stream_accuracy():
    from avalanche_neuromod.benchmarks import SplitMNIST
    from avalanche_neuromod.evaluation import accuracies, class_accuracy, stream_accuracy

    bm = SplitMNIST(n_experiences=5, dataset="digits", seed=0)

    # Answers 0 for images whose mean pixel is below the median, else 1: per class the share is countable by hand.
    class Threshold(torch.nn.Module):
        def __init__(self, cut):
            super().__init__()
            self.cut = cut

        def forward(self, x):
            bright = x.flatten(1).mean(dim=1) > self.cut
            out = torch.zeros(len(x), 10)
            out[bright, 1] = 1
            out[~bright, 0] = 1
            return out

    images = torch.cat([torch.stack([e.dataset[i][0] for i in range(len(e.dataset))]) for e in bm.test_stream])
    labels = torch.cat([torch.as_tensor(e.dataset.targets) for e in bm.test_stream])
    cut = float(images.flatten(1).mean(dim=1).median())
    bright = images.flatten(1).mean(dim=1) > cut
    expected = {}
    for label in sorted(set(labels.tolist())):
        mine = labels == label
        if label in (0, 1):
            hit = bright[mine] if label == 1 else ~bright[mine]
        else:
            hit = torch.zeros(int(mine.sum()), dtype=torch.bool)
        expected[label] = float(hit.float().mean())

    model = Threshold(cut).train()
    got = class_accuracy(model, bm.test_stream)
    assert list(got) == sorted(expected) == list(range(10))
    assert got == pytest.approx(expected)
    assert all(got[label] == 0 for label in range(2, 10))
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    sizes = {label: int((labels == label).sum()) for label in got}
    weighted = sum(got[label] * sizes[label] for label in got) / sum(sizes.values())
    assert weighted == pytest.approx(stream_accuracy(model, bm.test_stream))
    overall, both = accuracies(model, bm.test_stream)  # the two from one pass
    assert overall == stream_accuracy(model, bm.test_stream) and both == got
    assert model.training
    with pytest.raises(ValueError, match="no samples"):
        class_accuracy(model, [])


def test_immediate_accuracy_is_measured_on_each_experience_right_after_it():
    from avalanche.core import SupervisedPlugin

    from avalanche_neuromod.benchmarks import SplitMNIST
    from avalanche_neuromod.evaluation import ImmediateAccuracyPlugin

    # A model that answers one class, set to the experience's first class when that experience starts:
    # right after experience k its accuracy on k's samples is the share of that class among them; measured
    # any later (after the answer moved on) it would be another number.
    class Answer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))
            self.answer = 0

        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, self.answer] = 1
            return out + 0 * self.p

    class SetAnswer(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            strategy.model.answer = int(strategy.experience.classes_in_this_experience[0])

    bm = SplitMNIST(n_experiences=5, dataset="digits")
    model, immediate = Answer(), ImmediateAccuracyPlugin(batch_size=64)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=64, train_epochs=1,
                     plugins=[SetAnswer(), immediate], evaluator=make_evaluator(progress_bar=False))
    expected = []
    for exp in list(bm.train_stream)[:3]:
        strategy.train(exp)
        targets = torch.as_tensor(exp.dataset.targets)
        expected.append(float((targets == int(exp.classes_in_this_experience[0])).float().mean()))
    assert 0.3 < min(expected) and max(expected) < 0.7  # two classes per experience: neither 0 nor 1
    assert immediate.in_order() == pytest.approx(expected)
    assert sorted(immediate.immediate) == [0, 1, 2]
    restored = ImmediateAccuracyPlugin()
    restored.load_state_dict(immediate.state_dict())
    assert restored.in_order() == immediate.in_order()
