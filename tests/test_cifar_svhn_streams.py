"""Split CIFAR-100 and Seq-SVHN built from small files in torchvision's on-disk formats."""

import numpy as np
import pytest
import torch

from avalanche.training import Naive
from avalanche_neuromod.benchmarks import CIFAR100_MEAN, CIFAR100_STD, SeqSVHN, SplitCIFAR100
from avalanche_neuromod.evaluation import make_evaluator


def _model(n_in):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(n_in, 100))


def test_split_cifar100_layout(cifar_root):
    bm = SplitCIFAR100(dataset_root=cifar_root, seed=3, return_task_id=True)
    order = np.random.RandomState(3).permutation(100).tolist()
    assert bm.details["class_order"] == order
    assert len(bm.train_stream) == 20
    for i, exp in enumerate(bm.train_stream):
        assert exp.classes_in_this_experience == sorted(order[5 * i : 5 * i + 5])
        assert len(exp.dataset) == 15 and exp.task_labels == [i]
    x_eval = bm.test_stream[0].dataset.eval()[0][0]
    assert x_eval.shape == (3, 32, 32)
    raw = bm.test_stream[0].dataset.lazy_source.materialise()[0]
    expected = (raw - torch.tensor(CIFAR100_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR100_STD).view(3, 1, 1)
    assert torch.allclose(x_eval, expected)
    relabelled = SplitCIFAR100(dataset_root=cifar_root, class_ids_from_zero_in_each_exp=True)
    assert relabelled.train_stream[7].classes_in_this_experience == [0, 1, 2, 3, 4]


def test_split_cifar100_augmentation_only_in_training(cifar_root):
    bm = SplitCIFAR100(dataset_root=cifar_root, n_experiences=2)
    ds = bm.train_stream[0].dataset
    torch.manual_seed(0)
    views = {tuple(ds.train()[0][0].flatten()[:50].tolist()) for _ in range(8)}
    assert len(views) > 1
    assert torch.equal(ds.eval()[0][0], ds.eval()[0][0])
    plain = SplitCIFAR100(dataset_root=cifar_root, n_experiences=2, augment=False).train_stream[0].dataset
    assert torch.equal(plain.train()[0][0], plain.eval()[0][0])


def test_seq_svhn_layout_and_naive(svhn_root):
    bm = SeqSVHN(dataset_root=svhn_root)
    assert [e.classes_in_this_experience for e in bm.train_stream] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    x = bm.train_stream[0].dataset[0][0]
    assert x.shape == (3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    model = _model(3 * 32 * 32)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=4,
                     evaluator=make_evaluator(progress_bar=False))
    strategy.train(bm.train_stream[0])
    res = strategy.eval(bm.test_stream[:2])
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001" in res


def test_split_streams_reject_bad_counts(cifar_root, svhn_root):
    with pytest.raises(ValueError, match="between 1 and 100"):
        SplitCIFAR100(dataset_root=cifar_root, n_experiences=101)
    with pytest.raises(ValueError, match="between 1 and 10"):
        SeqSVHN(dataset_root=svhn_root, n_experiences=0)
