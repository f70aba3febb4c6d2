"""Dynamos: agents, gated ResNet, losses against hand-computed values, the reservoir, the strategies."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins import EWCPlugin, LwFPlugin

from avalanche_neuromod.benchmarks import MNIST360, SplitMNIST
from avalanche_neuromod.models import ChannelAgent, DynamosResNet18
from avalanche_neuromod.models.dynamos import AgentDecision
from avalanche_neuromod.training import (
    PAPER_SETTINGS,
    ConsistencyReplay,
    Dynamos,
    DynamosPlugin,
    ReservoirBuffer,
    consistency_loss,
    keep_ratio_reward,
    prototype_loss,
    reinforce_loss,
    train_online,
)

def quiet(factory, *args, **kwargs):
    """Build without Avalanche's default loggers (and their warning), unless given an evaluator."""
    kwargs.setdefault("evaluator", None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return factory(*args, **kwargs)


# ------------------------------------------------------------------ agent and network


def test_agent_follows_its_equations():
    torch.manual_seed(0)
    agent = ChannelAgent(3, 8, reduction=4, temperature=0.15).eval()
    x = torch.randn(5, 3, 6, 6)
    d = agent(x)
    u = agent.bn(agent.conv(x)).mean(dim=(2, 3))
    v = u * torch.sigmoid(agent.fc2(torch.relu(agent.fc1(u))))
    p = torch.sigmoid(v / 0.15)
    assert torch.allclose(d.attention, v) and torch.allclose(d.prob, p)
    assert torch.equal(d.actions, (p >= 0.5).float())  # inference: keep if p >= 0.5
    expected = torch.distributions.Bernoulli(probs=p).log_prob(d.actions).sum(dim=1)
    assert torch.allclose(d.log_prob, expected, atol=1e-5)
    assert agent.fc1.out_features == 2  # reduction 4 of 8 channels


@pytest.mark.parametrize("momentum", [0.1, None])
def test_agent_pooled_response_equals_the_full_resolution_layers(momentum):
    # u = GAP(BN(conv1x1(x))) computed from the input's mean and covariance:
    # the same values, gradients and running statistics as the layers themselves.
    torch.manual_seed(0)
    agent = ChannelAgent(5, 12, reduction=4)
    with torch.no_grad():
        agent.bn.weight.uniform_(0.5, 1.5)
        agent.bn.bias.uniform_(-0.5, 0.5)
    reference = ChannelAgent(5, 12, reduction=4)
    reference.load_state_dict(agent.state_dict())
    agent.bn.momentum = reference.bn.momentum = momentum
    for step in range(3):
        x = (torch.randn(4, 5, 7, 7) + 0.5).relu().requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        u = agent.pooled_response(x)
        u_ref = reference.bn(reference.conv(x_ref)).mean(dim=(2, 3))
        assert torch.allclose(u, u_ref, atol=1e-5)
        weights = torch.randn_like(u)
        (u * weights).sum().backward()
        (u_ref * weights).sum().backward()
        assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
        for p, q in zip(agent.parameters(), reference.parameters()):
            if p.grad is not None or q.grad is not None:
                assert torch.allclose(p.grad, q.grad, atol=1e-4)
        for name, buf in agent.bn.named_buffers():
            assert torch.allclose(buf.float(), dict(reference.bn.named_buffers())[name].float(), atol=1e-6), name
    agent.eval(), reference.eval()
    x = torch.rand(3, 5, 6, 6)
    assert torch.allclose(agent.pooled_response(x), reference.bn(reference.conv(x)).mean(dim=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_moments_backward_is_the_exact_gradient(channels_last):
    # The agents' one-pass backward against finite differences (double precision),
    # through all three outputs at once and through each alone.
    from avalanche_neuromod.models.dynamos import _ChannelMoments

    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, dtype=torch.double)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weights = [torch.randn(3, 4, dtype=torch.double), torch.randn(4, dtype=torch.double),
               torch.randn(4, 4, dtype=torch.double)]

    def weighted(*keep):
        return lambda t: sum((out * w).sum() for i, (out, w) in enumerate(zip(_ChannelMoments.apply(t), weights))
                             if i in keep)

    for keep in [(0, 1, 2), (0,), (1,), (2,)]:
        assert torch.autograd.gradcheck(weighted(*keep), (x,))
    means, mu, covariance = _ChannelMoments.apply(x)
    pixels = x.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.allclose(means, x.detach().mean(dim=(2, 3)))
    assert torch.allclose(mu, pixels.mean(dim=0))
    assert torch.allclose(covariance, torch.cov(pixels.T, correction=0))


def test_channels_last_is_only_a_layout():
    torch.manual_seed(0)
    fast = DynamosResNet18(n_classes=5)
    plain = DynamosResNet18(n_classes=5, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    assert fast.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(6, 1, 28, 28)
    fast.eval(), plain.eval()
    assert torch.allclose(fast(x), plain(x), atol=1e-5)
    for model in (fast, plain):
        torch.manual_seed(1)
        logits = model.train()(x)
        (logits.sum() + model.last_gates.attention.sum() + model.last_gates.log_probs.sum()).backward()
    for p, q in zip(fast.parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4)


def test_mixed_precision_runs_the_convolutions_in_bfloat16_and_the_rest_in_float32():
    torch.manual_seed(0)
    exact = DynamosResNet18(n_classes=5)
    mixed = DynamosResNet18(n_classes=5, mixed_precision=True)
    mixed.load_state_dict(exact.state_dict())  # the same parameters: checkpoints move between the two
    seen = {}
    mixed.stem[0].register_forward_hook(lambda m, i, o: seen.update(conv=o.dtype))  # returns None: output kept
    x = torch.rand(6, 1, 28, 28)
    exact.eval(), mixed.eval()
    logits = mixed(x)
    assert seen["conv"] == torch.bfloat16
    assert logits.dtype == torch.float32 and mixed.last_gates.attention.dtype == torch.float32
    reference = exact(x)
    assert not torch.equal(logits, reference)  # bfloat16 rounding is there...
    assert torch.allclose(logits, reference, atol=0.1 * reference.abs().max().item())  # ...and small
    torch.manual_seed(1)
    logits = mixed.train()(x)
    (logits.sum() + mixed.last_gates.attention.sum() + mixed.last_gates.log_probs.sum()).backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in mixed.parameters())
    assert all(torch.isfinite(p.grad).all() for p in mixed.parameters())


def test_detached_agent_inputs_keep_agent_gradients_out_of_the_backbone():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    grads = {}
    for detach in (False, True):
        torch.manual_seed(0)
        model = DynamosResNet18(n_classes=5, detach_agent_inputs=detach)
        model(x)
        model.last_gates.attention.sum().backward()  # an agents-only term
        grads[detach] = model.stem[0].weight.grad
        assert all(p.grad is not None for p in model.agents[0].conv.parameters())
    assert grads[False] is not None and grads[False].abs().sum() > 0
    assert grads[True] is None  # nothing reached the layers before the agents


def test_agent_samples_in_training_and_optionally_at_eval():
    torch.manual_seed(0)
    agent = ChannelAgent(4, 64)
    x = torch.randn(64, 4, 5, 5)
    d = agent.train()(x)
    assert set(d.actions.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(d.actions, (d.prob >= 0.5).float())  # some draw differs from the threshold
    agent.eval()
    assert torch.equal(agent(x).actions, agent(x).actions)
    agent.sample_at_eval = True
    torch.manual_seed(1)
    a1 = agent(x).actions
    torch.manual_seed(2)
    assert not torch.equal(a1, agent(x).actions)  # trial-to-trial variability


def test_network_layout_and_gate_record():
    torch.manual_seed(0)
    model = DynamosResNet18(n_classes=10, in_channels=1)
    logits = model(torch.rand(4, 1, 28, 28))
    assert logits.shape == (4, 10)
    gates = model.last_gates
    assert len(gates.decisions) == 4 and len(model.agents) == 4
    assert [a.in_channels for a in model.agents] == [32, 64, 64, 64]  # first agent reads the 32-channel input
    assert gates.attention.shape == (4, 256) and model.attention_size == 256
    assert gates.log_probs.shape == (4, 4) and gates.keep_fractions.shape == (4, 4)
    head, tail = gates.split(3)
    assert head.attention.shape == (3, 256) and tail.attention.shape == (1, 256)
    svhn = DynamosResNet18(n_classes=10, in_channels=3)
    assert svhn(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_baseline_network_has_no_agents():
    model = DynamosResNet18(n_classes=10, agents=False)
    model(torch.rand(2, 1, 28, 28))
    assert model.agents == [] and model.last_gates is None
    assert list(model.agent_parameters()) == []


def _force_actions(model, value):
    """Make every agent return ``value`` for every channel (keeps its real log-prob path)."""
    for agent in model.agents:
        real = agent.forward

        def fixed(x, real=real):
            d = real(x)
            return AgentDecision(torch.full_like(d.actions, value), d.log_prob, d.attention, d.prob)

        agent.forward = fixed


def test_ungated_equals_keeping_every_channel():
    torch.manual_seed(0)
    model = DynamosResNet18(n_classes=5).eval()
    x = torch.rand(3, 1, 28, 28)
    with model.ungated():
        ungated = model(x)
        assert model.last_gates is None
    _force_actions(model, 1.0)
    assert torch.allclose(model(x), ungated, atol=1e-6)


def test_sampling_draws_actions_in_eval_mode_and_restores_the_rule():
    torch.manual_seed(0)
    model = DynamosResNet18(n_classes=5).eval()
    x = torch.rand(4, 1, 28, 28)
    model(x)
    probs = [d.prob for d in model.last_gates.decisions]
    deterministic = [d.actions for d in model.last_gates.decisions]
    assert all(torch.equal(a, (p >= 0.5).float()) for a, p in zip(deterministic, probs))
    undecided = [(p > 0.05) & (p < 0.95) for p in probs]
    assert any(u.any() for u in undecided)  # a fresh network has channels a draw can flip
    with model.sampling():
        assert all(agent.sample_at_eval for agent in model.agents)
        draws = []
        for _ in range(20):
            model(x)
            draws.append([d.actions for d in model.last_gates.decisions])
    # Some undecided channel's draw differs from the p >= 0.5 rule in 20 draws.
    assert any(((layer != rule) & u).any()
               for trial in draws for layer, rule, u in zip(trial, deterministic, undecided))
    assert not any(agent.sample_at_eval for agent in model.agents)
    model(x)
    assert all(torch.equal(d.actions, a) for d, a in zip(model.last_gates.decisions, deterministic))


def test_second_mask_gates_the_shortcut_too():
    torch.manual_seed(0)
    model = DynamosResNet18(n_classes=5).eval()
    _force_actions(model, 0.0)
    features = model.features(torch.rand(3, 1, 28, 28))
    # Every channel of the last block dropped, main path and shortcut alike: ReLU(0) = 0.
    assert torch.equal(features, torch.zeros_like(features))


def test_network_input_errors_name_the_fix():
    model = DynamosResNet18(n_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=r"in_channels=3"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="4 dims"):
        model(torch.rand(2, 784))


# ------------------------------------------------------------------ losses, by hand


def test_reward_by_hand():
    k = torch.tensor([[0.5, 1.0], [0.7, 0.2]])
    r = keep_ratio_reward(k, torch.tensor([True, False]), keep_ratio=0.7, penalty=10.0)
    expected = torch.tensor([[-0.04, -0.09], [0.0, -10 * 0.25]])
    assert torch.allclose(r, expected)
    assert (r <= 0).all()


def test_reinforce_by_hand():
    log_probs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    rewards = torch.tensor([[-0.04, -0.09]])
    loss = reinforce_loss(log_probs, rewards)
    assert loss.item() == pytest.approx((-0.04 + -0.18) / 2)
    loss.backward()
    assert torch.allclose(log_probs.grad, -rewards / 2)


def test_prototype_loss_by_hand():
    v = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1, 1])
    correct = torch.tensor([True, True, True, False])  # the last sample is left out
    # D01 = 1 (same class), D02 = 4, D12 = 5 (different); d = 2.
    expected = (1 + 1 / 2) / (1 + (4 + 5) / 2)
    assert prototype_loss(v, y, correct).item() == pytest.approx(expected)


def test_prototype_loss_needs_more_than_two_correct():
    v = torch.randn(4, 8, requires_grad=True)
    loss = prototype_loss(v, torch.tensor([0, 1, 0, 1]), torch.tensor([True, True, False, False]))
    assert loss.item() == 0.0


def test_prototype_loss_gradient_is_finite_for_equal_vectors():
    v = torch.zeros(3, 4, requires_grad=True)
    prototype_loss(v, torch.tensor([0, 0, 1]), torch.ones(3, dtype=torch.bool)).backward()
    assert torch.isfinite(v.grad).all()


def test_consistency_is_mean_squared_error():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    assert consistency_loss(a, b).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="output size"):
        consistency_loss(a, torch.zeros(1, 3))


# ------------------------------------------------------------------ the reservoir


def _rows(values, correct=None):
    x = torch.tensor(values, dtype=torch.float32)[:, None]
    return dict(inputs=x, labels=torch.tensor(values), logits=x.repeat(1, 2),
                correct=None if correct is None else torch.tensor(correct))


def test_reservoir_fills_with_correct_samples_only_and_leaves_no_empty_slot():
    buffer = ReservoirBuffer(3)
    written = buffer.add(**_rows([0, 1, 2, 3, 4], [True, False, True, False, True]))
    assert written == 3 and len(buffer) == 3 and buffer.n_seen == 5
    assert buffer.storage["labels"].tolist() == [0, 2, 4]
    assert buffer.storage["attention"] is None


def test_reservoir_size_is_fixed_and_wrong_samples_never_enter():
    buffer = ReservoirBuffer(4, seed=1)
    buffer.add(**_rows([0, 1, 2, 3]))
    before = buffer.storage["labels"].clone()
    for start in range(4, 404, 8):  # 50 batches, all predicted wrong
        buffer.add(**_rows(list(range(start, start + 8)), [False] * 8))
    assert torch.equal(buffer.storage["labels"], before) and len(buffer) == 4
    for start in range(404, 1004, 8):  # 75 batches, all right
        buffer.add(**_rows(list(range(start, start + 8))))
    assert len(buffer) == 4 and buffer.n_seen == 4 + 50 * 8 + 75 * 8
    assert not torch.equal(buffer.storage["labels"], before)


def test_reservoir_is_uniform_over_the_stream():
    counts = torch.zeros(20)
    trials = 2000
    for seed in range(trials):
        buffer = ReservoirBuffer(5, seed=seed)
        buffer.add(**_rows(list(range(20))))
        counts[buffer.storage["labels"]] += 1
    # Each of the 20 samples is kept with probability 5 / 20; 5 standard deviations of slack.
    p = counts / trials
    assert torch.all((p - 0.25).abs() < 5 * math.sqrt(0.25 * 0.75 / trials))


def test_reservoir_sample_and_state_dict_resume():
    a = ReservoirBuffer(6, seed=3)
    a.add(**_rows(list(range(10))))
    b = ReservoirBuffer(6, seed=99)
    b.load_state_dict(a.state_dict())
    for buffer in (a, b):
        buffer.add(**_rows(list(range(10, 30))))
    assert torch.equal(a.storage["labels"], b.storage["labels"]) and a.n_seen == b.n_seen == 30
    batch = a.sample(4)
    assert len(batch["labels"]) == 4 and len(set(batch["labels"].tolist())) == 4
    assert len(a.sample(100)["labels"]) == 6


def test_reservoir_errors():
    with pytest.raises(ValueError, match="buffer_size=500"):
        ReservoirBuffer(0)
    with pytest.raises(ValueError, match="empty"):
        ReservoirBuffer(2).sample(1)
    buffer = ReservoirBuffer(2)
    buffer.add(**_rows([0]))
    with pytest.raises(ValueError, match="do not fit"):
        buffer.add(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="same buffer size"):
        ReservoirBuffer(3).load_state_dict(buffer.state_dict())


# ------------------------------------------------------------------ strategies


@pytest.fixture
def mnist360(fake_mnist_root):
    return MNIST360(dataset_root=fake_mnist_root, batch_size=16, n_rounds=3, seed=0)


def _dynamos(buffer_size=20, **overrides):
    torch.manual_seed(0)
    settings = dict(buffer_size=buffer_size, alpha=0.2, beta=1.0, alpha_p=0.1, penalty=200, gamma=0.5, w_p=0.5,
                    warmup_iterations=2, train_mb_size=16)
    settings.update(overrides)
    model = settings.pop("model", None) or DynamosResNet18(n_classes=10, in_channels=1)
    return quiet(Dynamos, model=model, **settings)


def test_dynamos_trains_on_the_online_stream(mnist360):
    strategy = _dynamos(warmup_iterations=8, evaluator=EvaluationPlugin(accuracy_metrics(stream=True)))
    experiences = list(itertools.islice(mnist360.online_train_stream, 16))
    assert all(not e.access_task_boundaries for e in experiences)
    strategy.train(experiences)
    plugin = strategy.replay_plugin
    assert plugin.iterations == 16
    # Warm-up: the first 8 batches neither fill nor use the buffer.
    assert strategy.buffer.n_seen == sum(len(e.dataset) for e in experiences[8:])
    assert 0 < len(strategy.buffer) <= 20
    terms = plugin.last_terms
    assert {"stream_reinforce", "stream_prototype", "consistency_logits", "consistency_attention",
            "replay_ce", "replay_reinforce", "replay_prototype"} <= set(terms)
    assert all(math.isfinite(v) for v in terms.values())
    results = strategy.eval(mnist360.test_stream)
    assert 0.0 <= results["Top1_Acc_Stream/eval_phase/test_stream/Task000"] <= 1.0


def test_optimiser_follows_a_changed_model(mnist360):
    # The optimiser update is skipped only while the parameters stay the same ones.
    strategy = _dynamos(warmup_iterations=0)
    experiences = list(itertools.islice(mnist360.online_train_stream, 3))
    strategy.train(experiences[:2])
    optimised = {id(p) for group in strategy.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in strategy.model.parameters()}
    strategy.model.classifier = nn.Linear(64, 10)
    strategy.train(experiences[2])
    optimised = {id(p) for group in strategy.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in strategy.model.classifier.parameters()} <= optimised
    assert strategy.model.classifier.weight.grad is not None


def test_warmup_gives_agents_no_gradient(mnist360):
    strategy = _dynamos(warmup_iterations=5)
    agent_params = list(strategy.model.agent_parameters())
    before = [p.detach().clone() for p in agent_params]
    strategy.train(list(itertools.islice(mnist360.online_train_stream, 3)))
    assert all(torch.equal(a, b) for a, b in zip(before, agent_params))
    assert strategy.buffer.n_seen == 0
    later = list(itertools.islice(mnist360.online_train_stream, 3, 7))
    strategy.train(later)
    assert not all(torch.equal(a, b) for a, b in zip(before, agent_params))
    assert strategy.buffer.n_seen == sum(len(e.dataset) for e in later[2:])  # iterations 6 and 7


def test_dynamos_trains_on_split_mnist():
    benchmark = SplitMNIST(n_experiences=2, dataset="digits", fixed_class_order=list(range(10)))
    strategy = _dynamos(buffer_size=30, train_mb_size=10)
    for experience in benchmark.train_stream:
        strategy.train(experience)
    assert set(strategy.buffer.storage["labels"][: len(strategy.buffer)].tolist()) <= set(range(10))
    assert strategy.replay_plugin.iterations > 0


@pytest.mark.parametrize("agents", [True, False])
def test_a_label_without_an_output_names_the_fix(agents):
    benchmark = SplitMNIST(n_experiences=5, dataset="digits", fixed_class_order=list(range(10)))
    cls = Dynamos if agents else ConsistencyReplay
    strategy = quiet(cls.preset, "seq-mnist", 500, DynamosResNet18(n_classes=3, agents=agents), train_mb_size=10)
    strategy.train(benchmark.train_stream[0])  # classes 0 and 1
    before = [p.detach().clone() for p in strategy.model.parameters()]
    with pytest.raises(ValueError, match=rf"{cls.__name__}: the batch holds class label 3, but the model has 3 "
                                         rf"outputs .* n_classes >= 4"):
        strategy.train(benchmark.train_stream[1])  # classes 2 and 3
    # Refused before any step on the bad batch.
    assert all(torch.equal(a, b) for a, b in zip(before, strategy.model.parameters()))


def test_preset_is_table_5():
    model = DynamosResNet18(n_classes=9)
    strategy = quiet(Dynamos.preset, "mnist360", 200, model)
    plugin = strategy.replay_plugin
    assert (plugin.alpha, plugin.beta, plugin.alpha_p, plugin.penalty, plugin.gamma, plugin.w_p) == (
        0.2, 1.5, 0.1, 200, 1.0, 0.5)
    assert strategy.buffer.capacity == 200 and strategy.train_mb_size == 16
    assert strategy.optimizer.param_groups[0]["lr"] == 0.07 and strategy.optimizer.param_groups[0]["momentum"] == 0
    assert plugin.warmup_iterations == 10 and plugin.keep_ratio == 0.7
    svhn = quiet(Dynamos.preset, "seq-svhn", 500, DynamosResNet18(in_channels=3), lr=0.03)
    assert svhn.train_epochs == 70 and svhn.replay_plugin.warmup_epochs == 10
    assert svhn.optimizer.param_groups[0]["lr"] == 0.03
    assert sorted(PAPER_SETTINGS["seq-mnist"]) == [500, 1000, 2000]
    with pytest.raises(ValueError, match="buffers are"):
        quiet(Dynamos.preset, "mnist360", 300, model)
    with pytest.raises(ValueError, match="paper's streams"):
        quiet(Dynamos.preset, "cifar", 200, model)


def test_bad_input_names_the_fix(mnist360):
    with pytest.raises(TypeError, match="ConsistencyReplay"):
        _dynamos(model=DynamosResNet18(agents=False))
    with pytest.raises(TypeError, match="DynamosResNet18"):
        _dynamos(model=nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    with pytest.raises(ValueError, match="buffer_size"):
        _dynamos(buffer_size=0)
    strategy = _dynamos()
    svhn_like = SplitMNIST(n_experiences=2, dataset="digits", channels=3)
    with pytest.raises(ValueError, match="in_channels=3"):
        strategy.train(svhn_like.train_stream[0])


def test_consistency_replay_has_no_agent_terms(mnist360):
    torch.manual_seed(0)
    strategy = quiet(ConsistencyReplay, model=DynamosResNet18(agents=False), buffer_size=20, alpha=0.2, beta=1.0,
                     warmup_iterations=8)
    strategy.train(list(itertools.islice(mnist360.online_train_stream, 16)))
    assert set(strategy.replay_plugin.last_terms) == {"consistency_logits", "replay_ce"}
    assert strategy.buffer.storage["attention"] is None and len(strategy.buffer) > 0
    ablation = quiet(ConsistencyReplay.preset, "mnist360", 500, DynamosResNet18(agents=False))
    assert (ablation.replay_plugin.alpha, ablation.replay_plugin.beta) == (0.1, 1.5)


def _prefill(strategy, n=20):
    """Fill the reservoir with ``n`` random samples, so that replay starts right after the warm-up."""
    model = strategy.model
    attention = torch.rand(n, model.attention_size) if model.agents else None
    strategy.buffer.add(torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,)), torch.randn(n, 10), attention,
                        torch.ones(n, dtype=torch.bool))


def test_separate_replay_pass_runs_the_buffer_batch_alone(mnist360):
    # The authors' code: the buffer batch M in a forward pass of its own, so its batch-norm statistics are M's.
    torch.manual_seed(0)
    strategy = quiet(ConsistencyReplay, model=DynamosResNet18(agents=False), buffer_size=20, alpha=0.2, beta=1.0,
                     warmup_iterations=2, separate_replay_pass=True)
    model, plugin = strategy.model, strategy.replay_plugin
    _prefill(strategy)
    checks, extra_loss = [], plugin.extra_loss

    def check(step):
        replay = step["replay"]["inputs"]
        with torch.no_grad():
            alone = model(replay)
            joint = model(torch.cat([step["x"], replay]))[len(step["x"]):]
            stream = model(step["x"])
        checks.append((torch.equal(step["replay_logits"], alone), torch.allclose(step["replay_logits"], joint),
                       torch.equal(step["logits"], stream)))
        return extra_loss(step)

    plugin.extra_loss = check
    strategy.train(list(itertools.islice(mnist360.online_train_stream, 5)))
    assert len(checks) == 3
    assert all(alone and stream for alone, _, stream in checks)
    assert not any(joint for _, joint, _ in checks)  # a joint pass would have mixed B's statistics into M's
    assert set(plugin.last_terms) == {"consistency_logits", "replay_ce"}

    gated = _dynamos(warmup_iterations=2, separate_replay_pass=True)
    _prefill(gated)
    steps, extra_loss = [], gated.replay_plugin.extra_loss
    gated.replay_plugin.extra_loss = lambda step: steps.append(dict(step)) or extra_loss(step)
    gated.train(list(itertools.islice(mnist360.online_train_stream, 5)))
    assert len(steps) == 3 and all(
        step["gates"].attention.shape[0] == len(step["y"]) and
        step["replay_gates"].attention.shape[0] == len(step["replay"]["labels"]) == len(step["y"]) for step in steps)
    assert {"stream_reinforce", "replay_reinforce", "consistency_attention"} <= set(gated.replay_plugin.last_terms)


@pytest.mark.parametrize("other", [LwFPlugin, EWCPlugin])
def test_plugin_composes_with_avalanche_plugins(other):
    torch.manual_seed(0)
    model = DynamosResNet18(n_classes=10)
    plugin = DynamosPlugin(20, alpha=0.2, beta=1.0, alpha_p=0.1, penalty=200, gamma=0.5, w_p=0.5,
                           warmup_iterations=8)
    extra = LwFPlugin(alpha=1.0) if other is LwFPlugin else EWCPlugin(ewc_lambda=1.0)
    strategy = quiet(Naive, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.07),
                     train_mb_size=16, plugins=[plugin, extra])
    benchmark = SplitMNIST(n_experiences=5, dataset="digits")
    for experience in list(benchmark.train_stream)[:2]:
        strategy.train(experience)
    assert plugin.iterations == sum(math.ceil(len(e.dataset) / 16) for e in list(benchmark.train_stream)[:2])
    assert len(plugin.buffer) > 0
    assert "replay_ce" in plugin.last_terms


def test_checkpoint_resume_mid_stream_is_exact(mnist360, tmp_path):
    def run(stop=None, resume=None):
        strategy = _dynamos()
        start = 0
        if resume is not None:
            start = strategy.load_checkpoint(resume)
        stream = itertools.islice(mnist360.online_train_stream, start, stop if stop is not None else 10)
        for experience in stream:
            strategy.train(experience)
        return strategy

    torch.manual_seed(123)
    full = run()
    torch.manual_seed(123)
    first = run(stop=5)
    path = tmp_path / "dynamos.pt"
    first.save_checkpoint(path)
    torch.manual_seed(999)  # the checkpoint carries the random state
    resumed = run(resume=path)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(full.buffer.storage["inputs"], resumed.buffer.storage["inputs"])
    assert full.buffer.n_seen == resumed.buffer.n_seen
    assert full.replay_plugin.iterations == resumed.replay_plugin.iterations == 10


def test_nan_loss_names_the_fix(mnist360):
    strategy = _dynamos(lr=1e30, warmup_iterations=0)
    with pytest.raises(FloatingPointError, match="learning rate"):  # from the loss or from an agent
        strategy.train(list(itertools.islice(mnist360.online_train_stream, 20)))


def test_same_seed_same_numbers(mnist360):
    def run():
        torch.manual_seed(7)
        strategy = _dynamos()
        strategy.train(list(itertools.islice(mnist360.online_train_stream, 5)))
        return torch.cat([p.detach().flatten() for p in strategy.model.parameters()])

    assert torch.equal(run(), run())


def test_mixed_precision_training_is_reproducible(mnist360):
    def run(mixed_precision):
        torch.manual_seed(7)
        strategy = _dynamos(model=DynamosResNet18(n_classes=10, mixed_precision=mixed_precision))
        strategy.train(list(itertools.islice(mnist360.online_train_stream, 5)))
        return torch.cat([p.detach().flatten() for p in strategy.model.parameters()])

    mixed = run(True)
    assert torch.equal(mixed, run(True))  # same seed, same numbers
    assert not torch.equal(mixed, run(False))


def test_mixed_precision_gradients_point_where_float32_ones_do():
    torch.manual_seed(0)
    exact = DynamosResNet18(n_classes=10, agents=False)  # no sampling: the same function up to rounding
    mixed = DynamosResNet18(n_classes=10, agents=False, mixed_precision=True)
    mixed.load_state_dict(exact.state_dict())
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    grads = []
    for model in (exact, mixed):
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert nn.functional.cosine_similarity(*grads, dim=0) > 0.99
    assert not torch.equal(*grads)


def test_train_online_in_chunks_equals_one_experience_per_call(mnist360):
    experiences = list(itertools.islice(mnist360.online_train_stream, 7))

    def run(one_by_one):
        torch.manual_seed(7)
        strategy = _dynamos()
        if one_by_one:
            for experience in experiences:
                strategy.train(experience)
        else:
            assert train_online(strategy, iter(experiences), chunk_size=3, progress=False) == 7
        state = strategy.buffer.state_dict()
        return torch.cat([p.detach().flatten() for p in strategy.model.parameters()]), state

    (chunked, buffer_a), (single, buffer_b) = run(False), run(True)
    assert torch.equal(chunked, single)
    assert buffer_a["n_seen"] == buffer_b["n_seen"] > 0
    assert buffer_a["storage"].keys() == buffer_b["storage"].keys()
    assert all(torch.equal(buffer_a["storage"][k], buffer_b["storage"][k]) for k in buffer_a["storage"])
    with pytest.raises(ValueError, match="chunk_size"):
        train_online(_dynamos(), experiences, chunk_size=0)


def test_example_trains_on_digits_and_saves_the_figures(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "dynamos_mnist360.py"
    spec = importlib.util.spec_from_file_location("dynamos_mnist360", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--max-batches", "14", "--buffer", "100", "--ablation", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| Dynamos | 100 |" in printed and "| ConsistencyReplay | 100 |" in printed
    assert "14 online mini-batches" in printed
    for name in ("activation_rates", "js_divergence", "attention_tsne", "trial_variability"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    resumed = quiet(Dynamos.preset, "mnist360", 100, DynamosResNet18(n_classes=9))
    assert resumed.load_checkpoint(tmp_path / "dynamos.pt") == 14  # online experiences trained
    assert resumed.buffer.n_seen > 0 and resumed.replay_plugin.iterations == 14


# ------------------------------------------------------------------ analysis


def _hand_stats():
    from avalanche_neuromod.analysis import GateStatistics

    # Two layers; classes 0 and 1, two samples each; tasks 0, 0, 1, 1.
    layer1 = np.array([[1, 0], [1, 1], [0, 1], [0, 1]], dtype=float)
    layer2 = np.array([[1], [1], [1], [0]], dtype=float)
    return GateStatistics(actions=[layer1, layer2], attention=np.zeros((4, 3)), labels=np.array([0, 0, 1, 1]),
                          task_labels=np.array([0, 1, 0, 1]))


def test_activation_rates_and_keep_ratios_by_hand():
    from avalanche_neuromod.analysis import activation_rates, keep_ratios

    stats = _hand_stats()
    by_class = activation_rates(stats, by="class")
    assert by_class["groups"].tolist() == [0, 1]
    assert by_class["rates"][0].tolist() == [[1.0, 0.5], [0.0, 1.0]]
    assert by_class["rates"][1].tolist() == [[1.0], [0.5]]
    by_task = activation_rates(stats, by="task")
    assert by_task["rates"][0].tolist() == [[0.5, 0.5], [0.5, 1.0]]
    assert keep_ratios(stats) == [5 / 8, 3 / 4]


def test_js_divergence_by_hand():
    from avalanche_neuromod.analysis import js_divergence_matrix

    # Class profiles over the 3 gated channels: (1, .5, 1) and (0, 1, .5), normalised.
    p, q = np.array([1, 0.5, 1]) / 2.5, np.array([0, 1, 0.5]) / 1.5
    m = (p + q) / 2
    kl = lambda a, b: sum(x * np.log2(x / y) for x, y in zip(a, b) if x > 0)  # noqa: E731
    expected = (kl(p, m) + kl(q, m)) / 2
    result = js_divergence_matrix(_hand_stats())
    assert result["divergence"][0, 1] == pytest.approx(expected)
    assert result["divergence"][1, 0] == result["divergence"][0, 1] and result["divergence"][0, 0] == 0


def test_figures_from_a_trained_network(mnist360):
    from avalanche_neuromod.analysis import (activation_rates, collect_gates, js_divergence_matrix, keep_ratios,
                                             plot_activation_rates, plot_attention_tsne, plot_js_divergence,
                                             plot_trial_variability, trial_variability)

    strategy = _dynamos(warmup_iterations=2)
    strategy.train(list(itertools.islice(mnist360.online_train_stream, 4)))
    model = strategy.model
    stats = collect_gates(model, mnist360.test_stream[0].dataset, batch_size=64)
    assert len(stats.labels) == len(mnist360.test_stream[0].dataset)
    assert [a.shape[1] for a in stats.actions] == [64, 64, 64, 64] and stats.attention.shape[1] == 256
    assert all(0 <= k <= 1 for k in keep_ratios(stats))
    assert model.training  # restored
    rates = activation_rates(stats)
    figures = [plot_activation_rates(rates), plot_attention_tsne(stats, max_points=60)]
    if all(r.sum() > 0 for r in np.concatenate(rates["rates"], axis=1)):
        figures.append(plot_js_divergence(js_divergence_matrix(stats)))
    x = mnist360.test_stream[0].dataset[0][0][None]
    before = torch.random.get_rng_state()
    kept = trial_variability(model, x, n_trials=5)
    assert torch.equal(before, torch.random.get_rng_state())
    assert all(((k >= 0) & (k <= 1)).all() for k in kept)
    assert [a.sample_at_eval for a in model.agents] == [False] * 4
    figures.append(plot_trial_variability(kept))
    import matplotlib.pyplot as plt
    for fig in figures:
        assert fig.axes
        plt.close(fig)
