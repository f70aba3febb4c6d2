"""CRWN: layer math, parameter counts, zero forgetting, isolation of tasks, errors, resume."""

import math

import pytest
import torch
import torch.nn.functional as F

from avalanche_neuromod.benchmarks import RotatedMNIST
from avalanche_neuromod.evaluation import ParametersPerExperience, make_evaluator
from avalanche_neuromod.models import FlyNet, ModulatedConv2d, ModulatedLinear, NeuroModNet, SparseFlyEncoder
from avalanche_neuromod.training import CRWN, CRWNPlugin, UntrainedTaskWarning
from conftest import assert_same_state, train_with_resume


@pytest.fixture(scope="module")
def rotated():
    return RotatedMNIST(n_experiences=3, dataset="digits", return_task_id=True)


def _grown(model, n, trained=True):
    model.ensure_tasks(n)
    if trained:
        model.known_train_tasks_labels = set(range(n))
    return model


def _strategy(model, iterations=30, **kwargs):
    return CRWN(model=model, n_iterations=iterations, train_mb_size=64,
                evaluator=make_evaluator(progress_bar=False, **kwargs.pop("evaluator_kwargs", {})), **kwargs)


@pytest.mark.parametrize("expansion, expected", [(10, 7841), (20, 15681), (30, 23521), (40, 31361)])
def test_flynet_params_per_task(expansion, expected):
    model = _grown(FlyNet(expansion), 1)
    assert model.params_per_task() == expected
    assert sum(p.numel() for p in model.task_parameters(0)) == expected


def test_neuromodnet_params_per_task_and_local_only():
    assert _grown(NeuroModNet((4096, 4096)), 1).params_per_task() == 8979
    assert _grown(NeuroModNet((256, 256)), 1).params_per_task() == 1299
    local = _grown(NeuroModNet((256, 256), local_only=True), 1)
    assert local.params_per_task() == 1296
    assert all(not s.requires_grad for m in local.modulations() for s in m.strengths)


def test_random_weights_are_buffers_not_parameters():
    model = _grown(NeuroModNet((32,)), 2)
    names = [n for n, _ in model.named_parameters()]
    assert all(".modulation." in n for n in names)
    # (the per-task holders' empty "_anchor" buffers only track the device; they are not saved)
    assert {n for n, _ in model.named_buffers() if not n.endswith("._anchor")} == {"layers.0.weight", "layers.1.weight"}
    assert set(model.state_dict()) - {"_extra_state"} == {n for n, _ in model.named_parameters()} | {
        "layers.0.weight", "layers.1.weight"}
    assert sum(p.numel() for p in model.parameters()) == 2 * model.params_per_task()


def test_modulated_linear_is_a_t_R_diag_c_t():
    layer = ModulatedLinear(5, 3, seed=1)
    layer.modulation.add_task()
    layer.modulation.add_task()
    x = torch.randn(4, 5)
    c, a = layer.modulation.contexts[1], layer.modulation.strengths[1]
    expected = x @ (a * layer.weight * c.unsqueeze(0)).t()
    assert torch.allclose(layer(x, torch.ones(4, dtype=torch.long)), expected, atol=1e-6)


def test_modulated_conv_is_a_t_R_times_C_t():
    conv = ModulatedConv2d(2, 4, 3, padding=1, seed=3)
    for _ in range(2):
        conv.modulation.add_task()
    x = torch.randn(5, 2, 6, 6)
    tasks = torch.tensor([0, 1, 1, 0, 1])
    out = conv(x, tasks)
    for t in (0, 1):
        kernel = conv.modulation.strengths[t] * (conv.weight * conv.modulation.contexts[t].unsqueeze(0))
        ref = F.conv2d(x[tasks == t], kernel, padding=1)
        assert torch.allclose(out[tasks == t], ref, atol=1e-5)


def test_context_initialisation_and_seeds():
    a, b, c = (_grown(NeuroModNet((64,), seed=s), 2) for s in (0, 0, 1))
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    assert torch.equal(a.layers[0].modulation.contexts[1], b.layers[0].modulation.contexts[1])
    assert not torch.equal(a.layers[0].modulation.contexts[0], a.layers[0].modulation.contexts[1])
    big = _grown(NeuroModNet((4096,)), 1)
    std = big.layers[1].modulation.contexts[0].std().item()
    assert abs(std - math.sqrt(2 / 4097)) < 0.1 * math.sqrt(2 / 4097)
    # R: zero-mean Gaussian with variance 1 / fan_in, or unit variance on request.
    for init, expected in (("gaussian", 1 / math.sqrt(784)), ("unit_gaussian", 1.0)):
        r = NeuroModNet((256,), init=init).layers[0].weight
        assert abs(r.mean().item()) < 0.01 * expected
        assert abs(r.std().item() - expected) < 0.01 * expected
    r = FlyNet(10).decoder.weight
    assert abs(r.std().item() - 1 / math.sqrt(7840)) < 0.02 / math.sqrt(7840)
    uniform = NeuroModNet((64,), init="pytorch").layers[0].weight
    assert uniform.abs().max() <= 1 / math.sqrt(784)
    with pytest.raises(ValueError, match="init"):
        NeuroModNet(init="xavier")


def test_fly_encoder_definition():
    enc = SparseFlyEncoder(20, 50, inputs_per_unit=7, seed=0)
    rows = enc.connections
    assert rows.shape == (50, 7)
    assert all(len(set(r.tolist())) == 7 for r in rows)
    dense = torch.zeros(50, 20)
    dense[torch.arange(50).repeat_interleave(7), rows.reshape(-1)] = 1.0
    x = torch.randn(8, 20)
    h = x @ dense.t()
    assert torch.allclose(enc(x), torch.relu(h - h.mean(dim=1, keepdim=True)), atol=1e-5)
    assert torch.equal(enc.weight().to_dense(), dense)
    # The gradient path computes the same code.
    assert torch.allclose(enc(x.requires_grad_()), enc(x.detach()))
    # Loading another encoder's connections must not reuse the cached pixel shares.
    other = SparseFlyEncoder(20, 50, inputs_per_unit=7, seed=1)
    enc.load_state_dict(other.state_dict())
    assert torch.equal(enc(x.detach()), other(x.detach()))
    with pytest.raises(ValueError, match="inputs_per_unit"):
        SparseFlyEncoder(5, 10, inputs_per_unit=6)


@pytest.mark.parametrize("make", [lambda: FlyNet(2), lambda: NeuroModNet((64, 64))])
def test_mixed_task_batch_equals_per_task_runs(make):
    model = _grown(make(), 3).eval()
    x = torch.randn(12, 1, 28, 28)
    tasks = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1, 0, 1, 2])
    mixed = model(x, tasks)
    for t in range(3):
        alone = model(x[tasks == t], t)
        # Same math; only BLAS's summation order changes with the batch size.
        assert torch.allclose(mixed[tasks == t], alone, rtol=1e-6, atol=1e-5)


def test_gradients_reach_only_the_current_task():
    model = _grown(NeuroModNet((32,)), 3).train()
    loss = model(torch.randn(4, 1, 28, 28), torch.full((4,), 1)).sum()
    loss.backward()
    for m in model.modulations():
        assert m.contexts[1].grad is not None and m.contexts[1].grad.abs().sum() > 0
        assert m.contexts[0].grad is None and m.contexts[2].grad is None
        assert m.strengths[0].grad is None and m.strengths[2].grad is None


@pytest.mark.parametrize("make", [lambda: FlyNet(1), lambda: NeuroModNet((64, 64))])
def test_zero_forgetting_is_exact(rotated, make):
    torch.manual_seed(0)
    model = make()
    strategy = _strategy(model)
    probe = torch.stack([rotated.test_stream[0].dataset[i][0] for i in range(64)])
    before = {}
    for exp in rotated.train_stream:
        strategy.train(exp)
        model.eval()
        with torch.no_grad():
            before[exp.task_label] = model(probe, exp.task_label)
            for t, out in before.items():
                assert torch.equal(model(probe, t), out), f"task {t} changed"
    assert model.trained_tasks == [0, 1, 2]
    assert all(not p.requires_grad for t in range(3) for p in model.task_parameters(t))


def test_crwn_trains_the_iteration_budget_with_rmsprop(rotated):
    model = FlyNet(1)
    metric = ParametersPerExperience(mode="declared")
    strategy = _strategy(model, iterations=25, evaluator_kwargs={"extra_metrics": [metric]})
    strategy.train(rotated.train_stream[0])
    assert strategy.clock.train_exp_iterations == 25
    assert isinstance(strategy.optimizer, torch.optim.RMSprop)
    assert strategy.optimizer.param_groups[0]["lr"] == 0.01
    assert {id(p) for g in strategy.optimizer.param_groups for p in g["params"]} == {id(p) for p in model.task_parameters(0)}
    assert metric.history == [785]
    res = strategy.eval(rotated.test_stream[:1])
    assert res["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] > 0.5


def test_epoch_mode_and_other_optimisers(rotated):
    model = NeuroModNet((32,))
    strategy = CRWN(model=model, n_iterations=None, train_epochs=1, train_mb_size=200,
                    optimizer_cls=torch.optim.Adam, optimizer_kwargs={"lr": 0.05},
                    evaluator=make_evaluator(progress_bar=False))
    strategy.train(rotated.train_stream[0])
    assert strategy.clock.train_exp_iterations == math.ceil(1347 / 200)
    assert isinstance(strategy.optimizer, torch.optim.Adam)


def test_missing_and_untrained_task_ids_are_errors(rotated):
    model = FlyNet(1)
    strategy = _strategy(model, iterations=3)
    strategy.train(rotated.train_stream[0])
    with pytest.warns(UntrainedTaskWarning, match=r"skipped experience\(s\) \[1\]"):
        res = strategy.eval(rotated.test_stream[1:2])  # the strategy skips it; the model refuses it
    assert not any("Exp001" in k for k in res)
    with pytest.raises(ValueError, match="never trained|out of range"):
        model.eval()(torch.zeros(2, 1, 28, 28), 1)
    with pytest.raises(ValueError, match="task id"):
        model.eval()(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="2 task labels for a batch of 3"):
        model(torch.zeros(3, 1, 28, 28), torch.tensor([0, 0]))
    no_ids = RotatedMNIST(n_experiences=2, dataset="digits")
    fresh = _strategy(FlyNet(1), iterations=3)
    fresh.train(no_ids.train_stream[0])
    with pytest.raises(ValueError, match="return_task_id=True"):
        fresh.train(no_ids.train_stream[1])


def test_wrong_model_and_arguments():
    with pytest.raises(TypeError, match="CRWN trains CRWN networks"):
        CRWN(model=torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="n_iterations"):
        CRWN(model=FlyNet(1), n_iterations=0)
    with pytest.raises(ValueError, match="expansion"):
        FlyNet(0)


def test_nan_loss_is_reported(rotated):
    class NanLoss(torch.nn.Module):
        def forward(self, out, y):
            return out.sum() * float("nan")

    strategy = _strategy(FlyNet(1), iterations=3, criterion=NanLoss())
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        strategy.train(rotated.train_stream[0])


def test_checkpoint_and_resume_give_identical_results(rotated, tmp_path, one_thread):
    def make():
        return _strategy(NeuroModNet((32,), seed=4), iterations=20)

    path = tmp_path / "crwn.pt"
    assert_same_state(train_with_resume(make, rotated.train_stream, path),
                      train_with_resume(make, rotated.train_stream, path, resume_after=0))


def test_a_label_without_an_output_names_the_fix(rotated):
    strategy = _strategy(NeuroModNet((16,), n_classes=9), iterations=3)
    with pytest.raises(ValueError, match=r"CRWN: the batch holds class label 9, but the model has 9 outputs "
                                         r"\(labels 0..8\). Fix: build the model with n_classes >= 10"):
        strategy.train(rotated.train_stream[0])


def test_context_similarity_and_plot():
    from avalanche_neuromod.analysis import context_similarity, plot_context_similarity

    model = _grown(NeuroModNet((16,)), 3)
    with torch.no_grad():
        for m in model.modulations():
            m.contexts[2].copy_(m.contexts[0] * 3.0)
    sim = context_similarity(model)
    assert sim.shape == (3, 3)
    assert sim[0, 2] == pytest.approx(1.0) and sim[0, 0] == pytest.approx(1.0)
    assert abs(sim[0, 1]) < 0.5
    last = context_similarity(model, layer=-1, tasks=[1, 0])
    assert last.shape == (2, 2)
    with pytest.raises(ValueError, match="layer"):
        context_similarity(model, layer=5)
    for bad in (3, -1):  # -1 used to wrap to the last task silently
        with pytest.raises(ValueError, match=rf"task id\(s\) \[{bad}\] out of range: the model holds 3 task\(s\)"):
            context_similarity(model, tasks=[0, bad])
    fig = plot_context_similarity(model, labels=["0", "10", "20"])
    assert fig.axes[0].get_title() == "context similarity between tasks"


@pytest.mark.parametrize("width, contexts", [(1, 4947), (2, 9867), (4, 19707), (6, 29547)])
def test_resnet_context_counts(width, contexts):
    from avalanche_neuromod.models import NeuroModResNet18

    model = _grown(NeuroModResNet18(width), 1)
    assert model.context_params_per_task() == contexts
    assert model.params_per_task() == contexts + 21  # one random strength per modulated layer


def test_resnet_zero_forgetting_with_per_task_batch_norm():
    from avalanche_neuromod.models import NeuroModResNet18

    torch.manual_seed(0)
    model = _grown(NeuroModResNet18(1, n_classes=5), 1)
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 5, (16,))

    def train(task):
        model.train()
        opt = torch.optim.RMSprop(model.task_parameters(task), lr=0.01)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x, task), y).backward()
            opt.step()
        model.freeze_task(task)

    train(0)
    model.eval()
    with torch.no_grad():
        before = model(x, 0)
    model.ensure_tasks(2)
    model.known_train_tasks_labels.add(1)
    train(1)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, 0), before)
        mixed = model(x, torch.tensor([0, 1] * 8))
        assert torch.allclose(mixed[::2], before[::2], atol=1e-5)
    assert len(model.bn1.norms) == 2
    assert not any(p.requires_grad for p in model.parameters())


def test_pretrained_mode_trains_shared_weights_on_the_first_task_only(rotated, tmp_path):
    torch.manual_seed(0)
    model = NeuroModNet((32,), pretrained=True, seed=2)
    initial = [layer.weight.clone() for layer in model.modulated_layers()]
    assert len(model.shared_parameters()) == 2
    strategy = _strategy(model, iterations=20)
    strategy.train(rotated.train_stream[0])
    assert model.shared_parameters() == []
    after_first = [layer.weight.clone() for layer in model.modulated_layers()]
    assert all(not torch.equal(a, b) for a, b in zip(initial, after_first))
    assert {n for n, _ in model.named_buffers() if not n.endswith("._anchor")} == {"layers.0.weight", "layers.1.weight"}
    probe = torch.stack([rotated.test_stream[0].dataset[i][0] for i in range(32)])
    model.eval()
    with torch.no_grad():
        before = model(probe, 0)
    strategy.save_checkpoint(tmp_path / "pre.pt")
    strategy.train(rotated.train_stream[1])
    assert all(torch.equal(a, l.weight) for a, l in zip(after_first, model.modulated_layers()))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(probe, 0), before)
    resumed = _strategy(NeuroModNet((32,), pretrained=True, seed=2), iterations=20)
    resumed.load_checkpoint(tmp_path / "pre.pt")
    resumed.model.eval()
    assert resumed.model.shared_parameters() == []
    with torch.no_grad():
        assert torch.equal(resumed.model(probe, 0), before)


def test_plugin_puts_crwn_under_avalanche_naive(rotated):
    from avalanche.training import Naive

    from avalanche_neuromod.training import CRWNPlugin

    torch.manual_seed(0)
    model = FlyNet(1)
    strategy = Naive(model=model, optimizer=torch.optim.RMSprop(model.parameters(), lr=0.01),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=64, train_epochs=1,
                     eval_mb_size=256, plugins=[CRWNPlugin()], evaluator=make_evaluator(progress_bar=False))
    probe = torch.stack([rotated.test_stream[0].dataset[i][0] for i in range(32)])
    strategy.train(rotated.train_stream[0])
    trained = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.task_parameters(0)}
    model.eval()
    with torch.no_grad():
        before = model(probe, 0)
    strategy.train(rotated.train_stream[1])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(probe, 0), before)
    res = strategy.eval(rotated.test_stream[:2])
    assert res["Top1_Acc_Exp/eval_phase/test_stream/Task001/Exp001"] > 0.5
    with pytest.raises(TypeError, match="CRWN networks"):
        lin = torch.nn.Linear(2, 2)
        Naive(model=lin, optimizer=torch.optim.SGD(lin.parameters(), lr=0.1),
              criterion=torch.nn.CrossEntropyLoss(), plugins=[CRWNPlugin()],
              evaluator=make_evaluator(progress_bar=False)).train(rotated.train_stream[0])


def _exp_keys(results):
    return {k.rsplit("/", 1)[-1] for k in results if "/Exp" in k and "eval_phase" in k}


def _naive_with_plugin(model, epochs=1, **kwargs):
    from avalanche.training import Naive

    return Naive(model=model, optimizer=torch.optim.RMSprop(model.parameters(), lr=0.01),
                 criterion=torch.nn.CrossEntropyLoss(), train_mb_size=64, train_epochs=epochs, eval_mb_size=256,
                 plugins=[CRWNPlugin()], evaluator=make_evaluator(progress_bar=False), **kwargs)


@pytest.fixture
def one_thread():
    # Small batches: a second intra-op thread only adds latency on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("host", ["crwn", "naive+plugin"])
def test_eval_skips_untrained_tasks_and_keeps_trained_numbers(rotated, host, one_thread):
    torch.manual_seed(0)
    model = NeuroModNet((32,))
    strategy = _strategy(model, iterations=20) if host == "crwn" else _naive_with_plugin(model)
    with pytest.warns(UntrainedTaskWarning, match=r"\[0, 1, 2\].*trained tasks: \[\]"):
        assert strategy.eval(rotated.test_stream) == {}  # nothing trained: nothing recorded
    strategy.train(rotated.train_stream[0])
    with pytest.warns(UntrainedTaskWarning, match=r"skipped experience\(s\) \[1, 2\] of task\(s\) \[1, 2\]"):
        full = strategy.eval(rotated.test_stream)
    assert _exp_keys(full) == {"Exp000"}
    trained_only = strategy.eval(rotated.test_stream[:1])
    for key in ("Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000", "Top1_Acc_Stream/eval_phase/test_stream/Task000"):
        assert full[key] == trained_only[key]
    strategy.train(rotated.train_stream[1])
    with pytest.warns(UntrainedTaskWarning, match=r"\[2\]"):
        res = strategy.eval(rotated.test_stream)
    assert _exp_keys(res) == {"Exp000", "Exp001"}
    assert res["Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"] == full[
        "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000"]  # zero forgetting, same numbers


@pytest.mark.parametrize("host", ["crwn", "naive+plugin"])
def test_periodic_eval_runs_and_records_every_epoch(rotated, host, one_thread):
    torch.manual_seed(0)
    model = NeuroModNet((32,))
    epochs = 2  # CRWN: 1,347 images in batches of 64 make 22 per epoch, so 30 iterations take 2
    strategy = (_strategy(model, iterations=30, eval_every=1) if host == "crwn"
                else _naive_with_plugin(model, epochs=epochs, eval_every=1))
    for exp in rotated.train_stream[:2]:
        with pytest.warns(UntrainedTaskWarning):
            strategy.train(exp, eval_streams=[rotated.test_stream])
        assert strategy.clock.train_exp_epochs == epochs
    history = strategy.evaluator.get_all_metrics()
    acc = "Top1_Acc_Exp/eval_phase/test_stream/Task{0:03d}/Exp{0:03d}"
    # task 0: after each of its epochs, then before and after each epoch of task 1
    assert len(history[acc.format(0)][1]) == epochs + 1 + epochs
    assert len(history[acc.format(1)][1]) == epochs
    assert not any("Exp002" in k for k in history)
    assert model.trained_tasks == [0, 1]


def test_plugin_must_precede_the_evaluator(rotated):
    from avalanche.training import Naive

    model = FlyNet(1)
    strategy = Naive(model=model, optimizer=torch.optim.RMSprop(model.parameters(), lr=0.01),
                     criterion=torch.nn.CrossEntropyLoss(), evaluator=make_evaluator(progress_bar=False))
    strategy.plugins.append(CRWNPlugin())
    with pytest.raises(ValueError, match="before the evaluator"):
        strategy.eval(rotated.test_stream[:1])
