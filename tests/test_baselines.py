"""The CRWN paper's baselines (PSP, BatchE, SupSup, STL, MTL): each checked against its definition."""

import math

import pytest
import torch
import torch.nn.functional as F

from avalanche.core import SupervisedPlugin
from avalanche.training import Naive

from avalanche_neuromod.benchmarks import PermutedMNIST
from avalanche_neuromod.evaluation import ContinualResults, make_evaluator
from avalanche_neuromod.models import (BatchELayer, BatchENet, BatchEResNet18, MTLNet, MTLResNet18, NeuroModNet,
                                       PSPLayer, PSPNet, PSPResNet18, STLNet, STLResNet18, SupSupLayer, SupSupNet,
                                       SupSupResNet18, topk_mask)
from avalanche_neuromod.models.supsup import _largest_k, _ThresholdHint
from avalanche_neuromod.training import (MTL, PSP, STL, BatchE, SupSup, TaskParametersPlugin,
                                         UntrainedTaskWarning)
from conftest import assert_same_state, train_with_resume

STRATEGIES = {PSPNet: PSP, BatchENet: BatchE, SupSupNet: SupSup, STLNet: STL}


@pytest.fixture(scope="module")
def permuted():
    return PermutedMNIST(n_experiences=3, dataset="digits", return_task_id=True, seed=0)


def _strategy(model, iterations=15, **kwargs):
    return STRATEGIES[type(model)](model=model, n_iterations=iterations, train_mb_size=32,
                                   evaluator=make_evaluator(progress_bar=False), **kwargs)


def _probe(seed=0, shape=(12, 1, 28, 28)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _outputs(model, x, task):
    model.eval()
    with torch.no_grad():
        return model(x, task)


def _batch(experience, n=64):
    dataset = experience.dataset.eval()
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=n, collate_fn=dataset.collate_fn)))


def _train_steps(model, task, x, steps=3, lr=0.05):
    """A few plain SGD steps of ``task`` on random labels, as a strategy would (its groups only)."""
    model.train()
    model.known_train_tasks_labels.add(task)
    groups = model.task_parameter_groups(task)
    for g in groups:
        g.pop("shared", None)
    opt = torch.optim.SGD(groups, lr=lr)
    y = torch.arange(x.shape[0]) % 10
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x, task), y).backward()
        opt.step()
    model.freeze_task(task)


# PSP -----------------------------------------------------------------------------------------

def test_psp_binary_contexts_are_signs_and_rotational_contexts_are_orthogonal():
    binary = PSPLayer(20, 5, context="binary", seed=3)
    rotational = PSPLayer(20, 5, context="rotational", seed=3)
    for layer in (binary, rotational):
        layer.contexts.add_task()
        layer.contexts.add_task()
    for t in range(2):
        c = binary.contexts.context(t)
        assert c.shape == (20,) and set(c.unique().tolist()) == {-1.0, 1.0}
        r = rotational.contexts.context(t)
        assert torch.allclose(r @ r.t(), torch.eye(20), atol=1e-5)
    assert not torch.equal(binary.contexts.context(0), binary.contexts.context(1))
    x = torch.randn(4, 20)
    # y = W (C_t x)
    assert torch.allclose(binary(x, torch.ones(4, dtype=torch.long)), (x * binary.contexts.context(1)) @ binary.weight.t(),
                          atol=1e-6)
    assert torch.allclose(rotational(x, torch.zeros(4, dtype=torch.long)),
                          (x @ rotational.contexts.context(0).t()) @ rotational.weight.t(), atol=1e-5)


def test_psp_conv_context_acts_on_the_kernel_fan_in():
    layer = PSPLayer(3, 4, kernel_size=3, context="rotational", padding=1, seed=1)
    layer.contexts.add_task()
    x = torch.randn(2, 3, 6, 6)
    patches = F.unfold(x, 3, padding=1)  # (B, 27, 36)
    expected = (layer.weight.reshape(4, 27) @ (layer.contexts.context(0) @ patches)).reshape(2, 4, 6, 6)
    assert torch.allclose(layer(x, torch.zeros(2, dtype=torch.long)), expected, atol=1e-5)


def test_psp_trains_the_shared_weight_on_every_task(permuted):
    model = PSPNet((32,), seed=1)
    strategy = _strategy(model)
    strategy.train(permuted.train_stream[0])
    after_first = [p.detach().clone() for p in model.shared_task_parameters(1)]
    strategy.train(permuted.train_stream[1])
    assert all(p.requires_grad for p in model.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(after_first, model.shared_task_parameters(1)))


def test_psp_contexts_are_regenerated_on_load_and_counted_per_task():
    model = PSPNet(context="rotational", seed=2)
    model.ensure_tasks(3)
    model.known_train_tasks_labels = {0, 1, 2}
    fresh = PSPNet(context="rotational", seed=2)
    fresh.load_state_dict(model.state_dict())
    assert fresh.n_tasks == 3
    x = _probe()
    assert torch.equal(_outputs(fresh, x, 2), _outputs(model, x, 2))
    assert not any("context" in k for k in model.state_dict())  # regenerated from the seed, not stored
    # FC256, rotational: all of W plus 784^2 + 256^2 + 256^2 context entries (the paper's "about 1M")
    assert model.params_per_task() == 268_800 + 784 ** 2 + 2 * 256 ** 2 == 1_014_528
    assert PSPNet().params_per_task() == 268_800 + 784 + 256 + 256


# BatchE --------------------------------------------------------------------------------------

def test_batche_weight_is_w_times_rank_one_factor_plus_bias():
    for kernel in (None, 3):
        layer = BatchELayer(4, 5, kernel, padding=1 if kernel else 0, seed=2)
        layer.factors.add_task()
        with torch.no_grad():
            layer.factors.r[0].uniform_(0.5, 1.5)
            layer.factors.s[0].uniform_(0.5, 1.5)
            layer.factors.bias[0].uniform_(-1, 1)
        r, s, b = layer.factors.r[0], layer.factors.s[0], layer.factors.bias[0]
        if kernel is None:
            x = torch.randn(3, 4)
            expected = (x @ (layer.weight * torch.outer(r, s)).t()) + b
        else:
            x = torch.randn(3, 4, 5, 5)
            expected = F.conv2d(x * s.view(1, -1, 1, 1), layer.weight, padding=1) * r.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
        assert torch.allclose(layer(x, torch.zeros(3, dtype=torch.long)), expected, atol=1e-5)


def test_batche_freezes_the_shared_weight_after_the_first_task_and_keeps_earlier_outputs(permuted):
    model = BatchENet((32,), seed=3)
    strategy = _strategy(model)
    groups = strategy.optimizer.param_groups  # placeholder until the first task
    strategy.train(permuted.train_stream[0])
    assert model.shared_frozen
    shared = [p.detach().clone() for p in model._shared()]
    x = _probe()
    before = _outputs(model, x, 0)
    strategy.train(permuted.train_stream[1])
    strategy.train(permuted.train_stream[2])
    assert all(torch.equal(a, p) for a, p in zip(shared, model._shared()))
    assert torch.equal(_outputs(model, x, 0), before)
    assert groups is not strategy.optimizer.param_groups
    assert model.params_per_task() == (784 + 2 * 32) + (32 + 2 * 10)


def test_batche_first_task_trains_the_shared_weight_at_its_own_rate():
    model = BatchENet((8,))
    fast, shared = model.task_parameter_groups(0)
    assert shared["shared"] is True and len(shared["params"]) == 2 and len(fast["params"]) == 6
    from avalanche_neuromod.training import task_optimizer_groups

    groups = task_optimizer_groups(model, 0, shared_lr=1e-4)
    assert [g.get("lr") for g in groups] == [None, 1e-4]
    model.ensure_tasks(2)
    assert len(model.task_parameter_groups(1)) == 1  # later tasks: fast weights only


# SupSup --------------------------------------------------------------------------------------

@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.99])
def test_supsup_masks_keep_exactly_k_percent(density):
    model = SupSupResNet18(density=density)
    model.ensure_tasks(2)
    for layer in model.supsup_layers():
        for task in range(2):
            mask = layer.scores.mask(task)
            assert int(mask.sum()) == max(1, round(density * mask.numel()))
    layer = SupSupLayer(10, 7, density=density)
    layer.scores.add_task()
    assert int(topk_mask(layer.scores.scores[0], density).sum()) == max(1, round(density * 70))


def test_topk_selection_is_exact_with_ties_and_keeps_the_largest():
    values = torch.tensor([0.5, 0.2, 0.5, 0.9, 0.5, 0.1, 0.5, 0.0])
    mask = _largest_k(values, 3)
    assert int(mask.sum()) == 3 and mask[3] == 1 and mask[[1, 5, 7]].sum() == 0
    big = torch.rand(10_000)
    mask = _largest_k(big, 2_500)
    assert int(mask.sum()) == 2_500
    assert big[mask.bool()].min() >= big[~mask.bool()].max()
    assert torch.equal(_largest_k(big.double(), 2_500).bool(), mask.bool())


def test_topk_searched_near_the_last_cut_selects_exactly_what_a_full_partition_selects():
    # Scores drift by small steps, then by large ones (the cut leaves the band), with and without ties.
    g = torch.Generator().manual_seed(0)
    for dtype, step in ((torch.float32, None), (torch.float64, None), (torch.float32, 1e-3)):
        values = torch.rand(20_000, generator=g, dtype=dtype)
        hint = _ThresholdHint()
        for i in range(40):
            values = values + (1e-5 if i < 20 else 1e-2) * torch.randn(values.shape, generator=g, dtype=dtype)
            scores = (values / step).round() * step if step else values
            assert torch.equal(_largest_k(scores.abs(), 7_777, hint), _largest_k(scores.abs(), 7_777))
        assert hint.threshold is not None


def test_supsup_weights_are_signed_constants_and_the_gradient_is_straight_through():
    layer = SupSupLayer(6, 4, density=0.5, seed=5)
    layer.scores.add_task()
    assert torch.allclose(layer.weight.abs(), torch.full((4, 6), math.sqrt(2 / 6)))
    scores = layer.scores.scores[0]
    x = torch.randn(3, 6)
    out = layer(x, torch.zeros(3, dtype=torch.long))
    g_out = torch.randn_like(out)
    out.backward(g_out)
    mask = topk_mask(scores.detach(), 0.5)
    assert torch.equal(out.detach(), x @ (layer.weight * mask).t())
    # straight through the mask, then through |S|: dL/dS = (dL/dW_t * W) * sign(S)
    expected = (g_out.t() @ x) * layer.weight * scores.detach().sign()
    assert torch.allclose(scores.grad, expected, atol=1e-6)


def test_supsup_earlier_tasks_are_exactly_unchanged(permuted):
    model = SupSupNet((32,), seed=4)
    strategy = _strategy(model)
    strategy.train(permuted.train_stream[0])
    x = _probe()
    before = _outputs(model, x, 0)
    masks = [layer.scores.mask(0).clone() for layer in model.supsup_layers()]
    strategy.train(permuted.train_stream[1])
    strategy.train(permuted.train_stream[2])
    assert torch.equal(_outputs(model, x, 0), before)
    assert all(torch.equal(m, layer.scores.mask(0)) for m, layer in zip(masks, model.supsup_layers()))
    assert model.params_per_task() == 784 * 32 + 32 * 10


def test_conv_baselines_keep_earlier_tasks_exactly():
    x = _probe(shape=(6, 3, 16, 16))
    for model in (SupSupResNet18(seed=1), BatchEResNet18(seed=1), STLResNet18(seed=1)):
        _train_steps(model, 0, x)
        before = _outputs(model, x, 0)
        model.ensure_tasks(2)
        _train_steps(model, 1, x)
        assert torch.equal(_outputs(model, x, 0), before), type(model).__name__
        assert not torch.equal(_outputs(model, x, 1), before), type(model).__name__


def test_psp_resnet_moves_earlier_tasks():
    x = _probe(shape=(6, 3, 16, 16))
    model = PSPResNet18(seed=1)
    _train_steps(model, 0, x)
    before = _outputs(model, x, 0)
    model.ensure_tasks(2)
    _train_steps(model, 1, x)
    assert not torch.equal(_outputs(model, x, 0), before)


def test_supsup_one_shot_task_inference(permuted):
    model = SupSupNet((64,), seed=0)
    strategy = _strategy(model, iterations=60)
    for exp in permuted.train_stream:
        strategy.train(exp)
    model.eval()
    right = total = 0
    for exp in permuted.test_stream:
        x = _batch(exp)[0]
        right += int(model.infer_task(x) == exp.task_labels[0])
        total += 1
    assert right == total
    model.task_inference = True
    exp = permuted.test_stream[2]
    x = _batch(exp)[0]
    with torch.no_grad():
        assert torch.equal(model(x, 0), model(x, 2))  # the given label is ignored: task 2 is inferred
    with pytest.raises(ValueError, match="at least one trained task"):
        SupSupNet().infer_task(x)


# STL and MTL ---------------------------------------------------------------------------------

def test_stl_networks_are_independent(permuted):
    model = STLNet((16,), seed=6)
    strategy = _strategy(model)
    strategy.train(permuted.train_stream[0])
    own0 = [p.detach().clone() for p in model.task_parameters(0)]
    strategy.train(permuted.train_stream[1])
    assert all(torch.equal(a, p) for a, p in zip(own0, model.task_parameters(0)))
    assert not any(torch.equal(a, b) for a, b in zip(model.task_parameters(0), model.task_parameters(1)))
    assert {id(p) for p in model.task_parameters(0)}.isdisjoint(id(p) for p in model.task_parameters(1))
    assert model.params_per_task() == 784 * 16 + 16 * 10
    assert STLResNet18().params_per_task() == 273_470


def test_mtl_trains_all_tasks_jointly_with_one_head_each(permuted):
    torch.manual_seed(0)
    model = MTLNet((32,))
    strategy = MTL(model=model, n_iterations=10, train_mb_size=32, evaluator=make_evaluator(progress_bar=False))
    strategy.train(permuted.train_stream)
    assert model.n_tasks == 3 and strategy.clock.train_exp_iterations == 30
    heads = [model.layers[-1].weights.weights[t] for t in range(3)]
    assert len({id(h) for h in heads}) == 3
    results = strategy.eval(permuted.test_stream)
    assert all(results[f"Top1_Acc_Exp/eval_phase/test_stream/Task00{t}/Exp00{t}"] > 0.3 for t in range(3))
    assert MTLNet().params_per_task() == 268_800
    assert MTLResNet18().params_per_task() == STLResNet18().params_per_task()
    with pytest.raises(TypeError, match="MTL networks"):
        MTL(model=STLNet())


# Strategies in Avalanche pipelines -----------------------------------------------------------

def test_baselines_learn_the_digits_and_report_forgetting(permuted):
    for model in (PSPNet((64,)), BatchENet((64,)), SupSupNet((64,)), STLNet((64,))):
        torch.manual_seed(0)
        strategy = _strategy(model, iterations=40)
        rows = []
        for exp in permuted.train_stream:
            strategy.train(exp)
            rows.append(strategy.eval(permuted.test_stream[: exp.current_experience + 1]))
        results = ContinualResults.from_eval(rows)
        assert results.average_accuracy > 0.6, type(model).__name__
        if not isinstance(model, PSPNet):
            assert results.average_forgetting == 0.0, type(model).__name__


def test_task_parameters_plugin_under_naive(permuted):
    model = SupSupNet((32,))
    strategy = Naive(model=model, optimizer=torch.optim.RMSprop(model.parameters(), lr=1e-4),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=1,
                     plugins=[TaskParametersPlugin()], evaluator=make_evaluator(progress_bar=False))
    strategy.train(permuted.train_stream[0])
    x = _probe()
    before = _outputs(model, x, 0)
    strategy.train(permuted.train_stream[1])
    assert torch.equal(_outputs(model, x, 0), before)
    with pytest.warns(UntrainedTaskWarning):
        strategy.eval(permuted.test_stream)
    with pytest.raises(TypeError, match="task-incremental networks"):
        lin = torch.nn.Linear(784, 10)
        Naive(model=lin, optimizer=torch.optim.SGD(lin.parameters(), lr=0.1), criterion=torch.nn.CrossEntropyLoss(),
              plugins=[TaskParametersPlugin()], evaluator=make_evaluator(progress_bar=False)
              ).train(permuted.train_stream[0])


def test_wrong_models_and_missing_task_ids(permuted):
    with pytest.raises(TypeError, match="SupSup trains SupSup networks"):
        SupSup(model=NeuroModNet())
    with pytest.raises(TypeError, match="BatchE trains BatchE networks"):
        BatchE(model=PSPNet())
    with pytest.raises(ValueError, match="density"):
        SupSupNet(density=0.0)
    with pytest.raises(ValueError, match="context must be one of"):
        PSPNet(context="complex")
    no_ids = PermutedMNIST(n_experiences=2, dataset="digits", seed=0)
    strategy = _strategy(STLNet((8,)))
    strategy.train(no_ids.train_stream[0])  # every experience is task 0 without task ids
    with pytest.raises(ValueError, match="already learned.*return_task_id=True"):
        strategy.train(no_ids.train_stream[1])
    with pytest.raises(ValueError, match="expects"):
        STLNet()(torch.zeros(2, 3, 32, 32), 0)
    with pytest.raises(ValueError, match="never trained"):
        model = PSPNet()
        model.eval()
        model(torch.zeros(2, 784), 0)


@pytest.mark.parametrize("model", [lambda: BatchENet((16,), seed=2), lambda: SupSupNet((16,), seed=2)])
def test_checkpoint_and_resume_give_identical_results(permuted, tmp_path, model):
    def make():
        return _strategy(model())

    path = tmp_path / "baseline.pt"
    assert_same_state(train_with_resume(make, permuted.train_stream, path),
                      train_with_resume(make, permuted.train_stream, path, resume_after=0))


class _LearningRates(SupervisedPlugin):
    """Plugin: the rate of every optimiser group as each mini-batch steps."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def before_update(self, strategy, **kwargs):
        self.seen.append([g["lr"] for g in strategy.optimizer.param_groups])


def test_cosine_schedule_decays_each_task_from_its_rate_to_zero(permuted):
    rates = _LearningRates()
    strategy = _strategy(BatchENet((16,)), iterations=8, lr_schedule="cosine", plugins=[rates])
    for experience in permuted.train_stream[:2]:
        strategy.train(experience)
    # BatchE's first task has two groups (its rank-one factors at 0.01, the shared weights at 1e-4).
    bases = [rates.seen[0], rates.seen[8]]
    assert len(rates.seen) == 16 and bases[0] == [0.01, 1e-4]
    for task, base in enumerate(bases):
        for t in range(8):
            expected = [b * (1 + math.cos(math.pi * t / 8)) / 2 for b in base]
            assert rates.seen[8 * task + t] == pytest.approx(expected, rel=1e-9, abs=1e-15), (task, t)
    assert [g["lr"] for g in strategy.optimizer.param_groups] == pytest.approx([0.0] * len(bases[1]), abs=1e-15)


def test_a_schedule_can_be_any_torch_scheduler_and_a_wrong_one_is_refused(permuted):
    rates = _LearningRates()
    built = []

    def halve_every_three(optimizer, steps):
        built.append(steps)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)

    strategy = _strategy(STLNet((16,)), iterations=7, lr_schedule=halve_every_three, plugins=[rates])
    strategy.train(permuted.train_stream[0])
    base = rates.seen[0][0]
    assert built == [7] and [r[0] for r in rates.seen] == pytest.approx([base] * 3 + [base / 2] * 3 + [base / 4])
    with pytest.raises(ValueError, match="lr_schedule must be None, 'cosine' or a callable"):
        _strategy(STLNet((16,)), lr_schedule="linear")
