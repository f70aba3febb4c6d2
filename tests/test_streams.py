"""Streams against their definitions, bad input, and Avalanche strategies on them."""

import numpy as np
import pytest
import torch

from avalanche.training import EWC, GEM, Naive, Replay
from avalanche_neuromod.benchmarks import (
    PermutedMNIST,
    RotatedMNIST,
    SplitMNIST,
    load_digits,
    load_source,
    permute_pixels,
    rotate_images,
)
from avalanche_neuromod.evaluation import make_evaluator

N_TRAIN, N_TEST = 1347, 450  # the digits split


def _images(exp):
    ds = exp.dataset
    return torch.stack([ds[i][0] for i in range(len(ds))])


def _labels(exp):
    return [exp.dataset[i][1] for i in range(len(exp.dataset))]


@pytest.fixture(scope="module")
def digits_norm():
    (x, y), (tx, ty), (mean, std) = load_source("digits")
    return x, y, tx, ty, mean, std


def test_rotated_stream_definition(digits_norm):
    x, y, tx, ty, mean, std = digits_norm
    bm = RotatedMNIST(n_experiences=4, dataset="digits", return_task_id=True)
    assert bm.details["rotations"] == [0.0, 10.0, 20.0, 30.0]
    assert len(bm.train_stream) == len(bm.test_stream) == 4
    for i, (tr, te) in enumerate(zip(bm.train_stream, bm.test_stream)):
        assert tr.task_labels == [i] and te.task_labels == [i] and tr.task_label == i
        assert tr.classes_in_this_experience == list(range(10))
        assert len(tr.dataset) == N_TRAIN and len(te.dataset) == N_TEST
        expected = (rotate_images(x.float() / 255.0, 10.0 * i) - mean) / std
        assert torch.allclose(_images(tr), expected, atol=1e-6)
        assert _labels(tr) == y.tolist()
        assert tr.dataset[0][2] == i
    no_task = RotatedMNIST(n_experiences=2, dataset="digits")
    assert [e.task_labels for e in no_task.train_stream] == [[0], [0]]


def test_rotated_custom_angles_and_errors():
    bm = RotatedMNIST(n_experiences=2, rotations_list=[45, 90], dataset="digits")
    assert bm.details["rotations"] == [45.0, 90.0]
    with pytest.raises(ValueError, match="rotations_list"):
        RotatedMNIST(n_experiences=37, dataset="digits")
    with pytest.raises(ValueError, match="one angle per experience"):
        RotatedMNIST(n_experiences=3, rotations_list=[0, 10], dataset="digits")
    with pytest.raises(ValueError, match="at least 1|between 1"):
        RotatedMNIST(n_experiences=0, dataset="digits")


def test_permuted_stream_definition(digits_norm):
    x, y, tx, ty, mean, std = digits_norm
    bm = PermutedMNIST(n_experiences=3, seed=5, dataset="digits", return_task_id=True)
    normed = (x.float() / 255.0 - mean) / std
    for i, exp in enumerate(bm.train_stream):
        perm = torch.from_numpy(np.random.RandomState(i + 5).permutation(784))
        assert torch.allclose(_images(exp), permute_pixels(normed, perm), atol=1e-6)
        assert exp.task_labels == [i]
    again = PermutedMNIST(n_experiences=3, seed=5, dataset="digits")
    for a, b in zip(bm.test_stream, again.test_stream):
        assert torch.equal(_images(a), _images(b))
    firsts = [_images(e)[0] for e in bm.train_stream]
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])


def test_permuted_avalanche_convention_leaves_first_unpermuted(digits_norm):
    x, y, tx, ty, mean, std = digits_norm
    bm = PermutedMNIST(n_experiences=2, dataset="digits", first_experience_permuted=False)
    assert torch.allclose(_images(bm.train_stream[0]), (x.float() / 255.0 - mean) / std, atol=1e-6)
    perm1 = torch.from_numpy(np.random.RandomState(1).permutation(784))
    assert torch.allclose(_images(bm.train_stream[1]), permute_pixels((x.float() / 255.0 - mean) / std, perm1), atol=1e-6)


def test_permuted_experiences_share_one_base_tensor():
    bm = PermutedMNIST(n_experiences=100, dataset="digits")
    bases = {e.dataset.lazy_source.images.data_ptr() for e in bm.train_stream}
    assert len(bases) == 1


def test_split_stream_definition():
    x, y = load_digits(train=True)
    bm = SplitMNIST(dataset="digits")
    assert [e.classes_in_this_experience for e in bm.train_stream] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert bm.train_stream[2].previous_classes == [0, 1, 2, 3]
    assert bm.train_stream[2].future_classes == [6, 7, 8, 9]
    for exp in bm.train_stream:
        labels = _labels(exp)
        assert sorted(set(labels)) == exp.classes_in_this_experience
        assert len(labels) == sum(int((y == c).sum()) for c in exp.classes_in_this_experience)
        assert exp.task_labels == [0]
    img = bm.train_stream[0].dataset[0][0]
    assert img.shape == (1, 28, 28) and 0.0 <= img.min() and img.max() <= 1.0  # Avalanche's layout
    dynamos = SplitMNIST(dataset="digits", channels=3).train_stream[0].dataset[0][0]
    assert dynamos.shape == (3, 28, 28) and torch.equal(dynamos[0], img[0]) and torch.equal(dynamos[0], dynamos[2])


def test_split_options():
    bm = SplitMNIST(n_experiences=2, dataset="digits", fixed_class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
                    return_task_id=True, class_ids_from_zero_in_each_exp=True, channels=1)
    assert bm.details["classes_per_experience"] == [[9, 8, 7, 6, 5], [4, 3, 2, 1, 0]]
    exp = bm.train_stream[1]
    assert exp.classes_in_this_experience == [0, 1, 2, 3, 4] and exp.task_labels == [1]
    assert set(_labels(exp)) == {0, 1, 2, 3, 4}
    assert exp.dataset[0][0].shape == (1, 28, 28)
    shuffled = SplitMNIST(dataset="digits", shuffle=True, seed=1)
    assert shuffled.details["class_order"] == np.random.RandomState(1).permutation(10).tolist()
    uneven = SplitMNIST(n_experiences=3, dataset="digits")
    assert [len(g) for g in uneven.details["classes_per_experience"]] == [4, 3, 3]
    with pytest.raises(ValueError, match="exclude each other"):
        SplitMNIST(dataset="digits", class_ids_from_zero_in_each_exp=True, class_ids_from_zero_from_first_exp=True)


def test_split_benchmark_exposes_avalanches_attributes():
    """The values Avalanche 0.6's classic SplitMNIST gives for the same arguments
    (checked against it on real MNIST: seed 1 draws the order 2 9 6 4 0 3 1 7 8 5)."""
    order = np.random.RandomState(1).permutation(10).tolist()
    bm = SplitMNIST(5, dataset="digits", shuffle=True, seed=1)
    groups = [set(order[i : i + 2]) for i in range(0, 10, 2)]
    assert bm.classes_order == bm.classes_order_original_ids == order
    assert bm.original_classes_in_exp == groups
    assert bm.classes_in_experience == {"train": groups, "test": groups}
    assert bm.n_classes_per_exp == [2] * 5 and bm.task_labels == [[0]] * 5
    assert bm.class_mapping == list(range(10))

    multi = SplitMNIST(5, dataset="digits", shuffle=True, seed=1, return_task_id=True,
                       class_ids_from_zero_in_each_exp=True)
    assert multi.classes_order == [0, 1] * 5 and multi.task_labels == [[i] for i in range(5)]
    assert multi.original_classes_in_exp == groups
    assert multi.classes_in_experience["train"] == [{0, 1}] * 5
    assert [multi.class_mapping[c] for c in order] == [0, 1] * 5

    first = SplitMNIST(5, dataset="digits", shuffle=True, seed=1, class_ids_from_zero_from_first_exp=True)
    assert first.classes_order == list(range(10)) and first.classes_order_original_ids == order
    assert [first.class_mapping[c] for c in order] == list(range(10))
    assert set(_labels(first.train_stream[0])) == {0, 1}
    assert first.classes_in_experience["test"][4] == {8, 9}


@pytest.mark.parametrize("generator", ["PermutedMNIST", "RotatedMNIST"])
def test_domain_benchmarks_expose_avalanches_attributes(generator):
    import avalanche_neuromod.benchmarks as anb

    bm = getattr(anb, generator)(3, dataset="digits")
    assert bm.classes_order == list(range(10)) * 3
    assert bm.classes_order_original_ids == list(range(30))
    assert bm.original_classes_in_exp == [set(range(10 * i, 10 * i + 10)) for i in range(3)]
    assert bm.class_mapping == list(range(10)) * 3
    assert bm.classes_in_experience == {"train": [set(range(10))] * 3, "test": [set(range(10))] * 3}
    assert bm.n_classes_per_exp == [10] * 3 and bm.task_labels == [[0]] * 3
    assert getattr(anb, generator)(2, dataset="digits", return_task_id=True).task_labels == [[0], [1]]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: SplitMNIST(n_experiences=11, dataset="digits"), "between 1 and 10"),
        (lambda: SplitMNIST(dataset="digits", fixed_class_order=[0, 1]), "permutation"),
        (lambda: SplitMNIST(dataset="digits", fixed_class_order=list(range(10)), shuffle=True), "not both"),
        (lambda: SplitMNIST(dataset="digits", channels=2), "channels"),
        (lambda: PermutedMNIST(dataset="cifar"), "unknown dataset 'cifar'"),
        (lambda: PermutedMNIST(n_experiences=2.5, dataset="digits"), "integer"),
        (lambda: RotatedMNIST(dataset="digits", dataset_root="/data"), "takes no dataset_root"),
    ],
)
def test_bad_arguments_name_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _mlp(channels=1):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * 784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


@pytest.mark.parametrize(
    "make_bm, channels",
    [
        (lambda: RotatedMNIST(n_experiences=2, dataset="digits", return_task_id=True), 1),
        (lambda: PermutedMNIST(n_experiences=2, dataset="digits", return_task_id=True), 1),
        (lambda: SplitMNIST(n_experiences=2, dataset="digits", channels=3), 3),
    ],
)
@pytest.mark.parametrize("strategy_cls", [Naive, EWC, Replay, GEM])
def test_avalanche_strategies_train_and_evaluate(make_bm, channels, strategy_cls):
    torch.manual_seed(0)
    bm = make_bm()
    model = _mlp(channels)
    extra = {EWC: {"ewc_lambda": 1.0}, Replay: {"mem_size": 50},
             GEM: {"patterns_per_exp": 16, "memory_strength": 0.5}}.get(strategy_cls, {})
    strategy = strategy_cls(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
        criterion=torch.nn.CrossEntropyLoss(), train_mb_size=64, train_epochs=1, eval_mb_size=256,
        evaluator=make_evaluator(progress_bar=False), **extra,
    )
    for exp in bm.train_stream:
        strategy.train(exp)
        results = strategy.eval(bm.test_stream)
    task = bm.test_stream[1].task_labels[0]
    key = f"Top1_Acc_Exp/eval_phase/test_stream/Task{task:03d}/Exp001"
    assert key in results and 0.0 <= results[key] <= 1.0
    assert f"ExperienceForgetting/eval_phase/test_stream/Task{bm.test_stream[0].task_labels[0]:03d}/Exp000" in results
    assert "StreamForgetting/eval_phase/test_stream" in results
    stream_acc = [v for k, v in results.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")]
    assert len(stream_acc) == 1 and stream_acc[0] > 0.2


@pytest.mark.realdata
def test_real_rotated_and_permuted_full_size(data_root):
    rot = RotatedMNIST(dataset_root=data_root, return_task_id=True)
    assert len(rot.train_stream) == 36 and rot.details["rotations"][-1] == 350.0
    assert len(rot.train_stream[35].dataset) == 60000 and len(rot.test_stream[35].dataset) == 10000
    assert rot.train_stream[35].task_labels == [35]
    perm = PermutedMNIST(dataset_root=data_root)
    assert len(perm.train_stream) == 100 and len(perm.test_stream[99].dataset) == 10000
    x = perm.test_stream[99].dataset[0][0]
    assert x.shape == (1, 28, 28)


@pytest.mark.realdata
def test_real_split_mnist_counts(data_root):
    bm = SplitMNIST(dataset_root=data_root)
    assert [len(e.dataset) for e in bm.train_stream] == [12665, 12089, 11263, 12183, 11800]
    assert [len(e.dataset) for e in bm.test_stream] == [2115, 2042, 1874, 1986, 1983]


@pytest.mark.realdata
def test_real_fashion_mnist_streams(data_root):
    bm = SplitMNIST(dataset="fashion_mnist", dataset_root=data_root)
    assert [len(e.dataset) for e in bm.train_stream] == [12000] * 5
