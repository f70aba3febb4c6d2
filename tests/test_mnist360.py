"""MNIST-360 against Mammoth's definition (streams.md)."""

import numpy as np
import pytest
import torch

from avalanche.training import Naive
from avalanche_neuromod.benchmarks import (
    MNIST360,
    load_digits,
    load_mnist,
    mnist360_chunks,
    mnist360_schedule,
    mnist360_test_angles,
    rotate_images,
)
from avalanche_neuromod.evaluation import make_evaluator
from conftest import make_fake_mnist

PAIRS = [(j, (j + 1) % 9) for j in range(9)]


def _labels(per_class):
    """Labels of a synthetic training set, classes interleaved like MNIST's."""
    out = []
    counts = list(per_class)
    while any(counts):
        for c in range(len(counts)):
            if counts[c]:
                out.append(c)
                counts[c] -= 1
    return np.asarray(out)


@pytest.fixture(scope="module")
def labels():
    return _labels([61, 70, 64, 66, 59, 55, 62, 65, 60, 63])


def test_chunks_are_consecutive_and_sized(labels):
    chunks = mnist360_chunks(labels)
    assert len(chunks) == 9
    for j, cs in enumerate(chunks):
        n = int((labels == j).sum())
        assert len(cs) == 6
        assert all(len(c) == n // 6 + 1 for c in cs[:-1])
        np.testing.assert_array_equal(np.concatenate(cs), np.flatnonzero(labels == j))


def test_stage_order_and_chunk_order(labels):
    s = mnist360_schedule(labels, batch_size=16)
    assert s.stage_pairs == PAIRS * 3
    chunks = mnist360_chunks(labels)
    used = {j: [] for j in range(9)}
    bounds = s.stage_bounds()
    for st, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        assert set(s.labels[lo:hi].tolist()) <= set(s.stage_pairs[st])
        for j in s.stage_pairs[st]:
            used[j].append(set(s.indices[lo:hi][s.labels[lo:hi] == j].tolist()))
    for j in range(9):
        assert len(used[j]) == 6
        for visit, taken in enumerate(used[j]):
            assert taken <= set(chunks[j][5 - visit].tolist())  # last chunk first


def test_batch_mixing_rule_and_stage_end(labels):
    batch = 16
    s = mnist360_schedule(labels, batch_size=batch)
    chunks = mnist360_chunks(labels)
    visits = {j: 0 for j in range(9)}
    bb = s.batch_bounds()
    sb = s.stage_bounds()
    for st, (lo, hi) in enumerate(zip(sb[:-1], sb[1:])):
        a, b = s.stage_pairs[st]
        r = [len(chunks[a][5 - visits[a]]), len(chunks[b][5 - visits[b]])]
        visits[a] += 1
        visits[b] += 1
        starts = [x for x in bb[:-1] if lo <= x < hi]
        for k, start in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else hi
            labs = s.labels[start:end].tolist()
            b0 = min(int(round(r[0] / (r[0] + r[1]) * batch)), r[0])
            b1 = min(batch - b0, r[1])
            assert labs == [a] * b0 + [b] * b1
            r = [r[0] - b0, r[1] - b1]
        assert min(r) == 0  # the stage ends when a chunk is exhausted


def test_rotation_counter_per_class(labels):
    s = mnist360_schedule(labels)
    for j in range(9):
        n_j = int((labels == j).sum())
        angles = s.angles[s.labels == j]
        expected = (((j - 1) * 60) + np.arange(len(angles)) * 360.0 / n_j) % 360
        np.testing.assert_allclose(angles, expected)


def test_without_replacement_draws_each_image_once_and_replacement_differs(labels):
    s = mnist360_schedule(labels)
    assert len(np.unique(s.indices)) == len(s.indices)
    assert set(s.labels.tolist()) == set(range(9))
    again = mnist360_schedule(labels)
    np.testing.assert_array_equal(s.indices, again.indices)
    other = mnist360_schedule(labels, seed=1)
    assert not np.array_equal(s.indices, other.indices)
    r = mnist360_schedule(labels, replacement=True)
    assert len(np.unique(r.indices)) < len(r.indices)
    assert r.stage_pairs == s.stage_pairs


def test_schedule_bad_arguments(labels):
    with pytest.raises(ValueError, match="batch_size"):
        mnist360_schedule(labels, batch_size=0)
    with pytest.raises(ValueError, match="n_rounds"):
        mnist360_schedule(labels, n_rounds=4)


def test_test_angles_per_class():
    labels = np.array([0, 1, 0, 2, 0, 1])
    np.testing.assert_allclose(mnist360_test_angles(labels, 3), [0, 0, 120, 0, 240, 180])


def test_benchmark_streams_on_a_small_mnist_copy(tmp_path):
    make_fake_mnist(tmp_path, n_train=600, n_test=100)
    bm = MNIST360(dataset_root=tmp_path, batch_size=8)
    x, y = load_mnist(tmp_path, download=False)
    assert len(bm.train_stream) == 27
    assert sum(len(e.dataset) for e in bm.train_stream) == len(bm.schedule)
    test = bm.test_stream[0]
    assert len(test.dataset) == int((torch.as_tensor(load_mnist(tmp_path, False, False)[1]) < 9).sum())
    s = bm.schedule
    first = bm.train_stream[0].dataset[3]
    expected = rotate_images(x[s.indices[3]][None].float() / 255.0, float(s.angles[3]))[0]
    assert torch.equal(first[0], expected) and first[1] == s.labels[3] and first[2] == 0
    online = list(bm.online_train_stream)
    assert len(online) == len(s.batch_bounds()) - 1
    assert [len(e.dataset) for e in online] == np.diff(s.batch_bounds()).tolist()
    assert online[0].access_task_boundaries is False and online[0].task_labels == [0]
    assert len(list(bm.online_train_stream)) == len(online)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8, eval_mb_size=64,
                     evaluator=make_evaluator(progress_bar=False, forgetting=False, bwt=False))
    for exp in online[:5]:
        strategy.train(exp)
    res = strategy.eval(bm.test_stream)
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000" in res


@pytest.mark.realdata
def test_real_mnist360_counts(data_root):
    _, y = load_mnist(data_root, download=False)
    s = mnist360_schedule(y.numpy())
    assert 53000 <= len(s) <= 54051
    assert len(s.stage_pairs) == 27
    assert s.batches.max() + 1 == len(s.batch_bounds()) - 1
    assert np.bincount(np.diff(s.batch_bounds())).argmax() == 16
    bm = MNIST360(dataset_root=data_root)
    assert len(bm.test_stream[0].dataset) == 8991


def test_digits_stream_needs_no_data():
    bm = MNIST360(dataset="digits")
    assert bm.dataset == "digits" and bm.n_classes == 9
    train_x, train_y = load_digits(train=True)
    test_y = load_digits(train=False)[1]
    s = bm.schedule
    assert len(s) == int((train_y < 9).sum())  # every training digit 0-8 once (no replacement)
    assert len(bm.test_stream[0].dataset) == int((test_y < 9).sum())
    online = list(bm.online_train_stream)
    assert len(online) == len(s.batch_bounds()) - 1 and len(online) > 50
    x, y, t = online[0].dataset[0]
    assert x.shape == (1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y == s.labels[0] and t == 0
    expected = rotate_images(train_x[s.indices[0]][None].float() / 255.0, float(s.angles[0]))[0]
    assert torch.equal(x, expected)
    with pytest.raises(ValueError, match="dataset_root"):
        MNIST360(dataset="digits", dataset_root="somewhere")


def test_schedule_names_a_class_with_too_few_images():
    labels = np.repeat(np.arange(9), 60)
    assert len(mnist360_schedule(labels).labels) > 0
    short = labels[(labels != 4) | (np.arange(len(labels)) % 60 < 5)]  # 5 images of digit 4 left
    with pytest.raises(ValueError, match=r"class 4 has 5 training images, cut into 5 chunk\(s\); 3 round\(s\) take 6"):
        mnist360_schedule(short)
    assert len(mnist360_schedule(short, n_rounds=1).labels) > 0  # 1 round takes 2 chunks: it fits
    with pytest.raises(ValueError, match="class 8 has 0 training images"):
        mnist360_schedule(labels[labels != 8])
