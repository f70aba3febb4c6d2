"""Split CIFAR-100, Seq-SVHN and Split mini-ImageNet built from small files in their on-disk formats."""

import numpy as np
import pytest
import torch

from avalanche.training import Naive
from avalanche_neuromod.benchmarks import (CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD,
                                           DatasetNotFoundError, SeqSVHN, SplitCIFAR100, SplitMiniImageNet,
                                           load_mini_imagenet)
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


WNIDS = [f"n0{k:07d}" for k in (9, 3, 7, 1, 5, 2, 8, 4, 6, 0)]  # ten classes, listed out of order


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    """A tiny mini-ImageNet in Ravi & Larochelle's layout: 10 classes x 12 JPEGs over train/val/test.csv."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mini")
    folder = root / "mini-imagenet"
    (folder / "images").mkdir(parents=True)
    rng = np.random.RandomState(0)
    lists = {"train.csv": WNIDS[:6], "val.csv": WNIDS[6:8], "test.csv": WNIDS[8:]}
    for name, wnids in lists.items():
        rows = ["filename,label"]
        for wnid in wnids:
            for i in range(12):
                side = 84 if i % 4 else 100  # every fourth image needs resizing
                pixels = rng.randint(0, 256, (side, side, 3)).astype(np.uint8)
                filename = f"{wnid}{i + 1:08d}.jpg"
                Image.fromarray(pixels).save(folder / "images" / filename, quality=95)
                rows.append(f"{filename},{wnid}")
        (folder / name).write_text("\n".join(rows) + "\n")
    return root


def test_mini_imagenet_reads_the_lists_and_splits_each_class(mini_root):
    from PIL import Image

    x, y = load_mini_imagenet(mini_root, train=True, train_per_class=9)
    x_test, y_test = load_mini_imagenet(mini_root, train=False, train_per_class=9)
    assert x.shape == (90, 3, 84, 84) and x.dtype == torch.uint8 and x_test.shape == (30, 3, 84, 84)
    assert y.tolist() == [c for c in range(10) for _ in range(9)] and y_test.tolist() == [c for c in range(10)
                                                                                           for _ in range(3)]
    first = sorted(WNIDS)[0]  # label 0: the smallest class name
    with Image.open(mini_root / "mini-imagenet" / "images" / f"{first}00000002.jpg") as img:
        assert torch.equal(x[1], torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
    with Image.open(mini_root / "mini-imagenet" / "images" / f"{first}00000012.jpg") as img:  # the last: test
        assert torch.equal(x_test[2], torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
    with Image.open(mini_root / "mini-imagenet" / "images" / f"{first}00000001.jpg") as img:  # 100x100, resized
        resized = img.convert("RGB").resize((84, 84), Image.BILINEAR)
        assert torch.equal(x[0], torch.from_numpy(np.array(resized)).permute(2, 0, 1))
    with pytest.raises(ValueError, match="leave no test image"):
        load_mini_imagenet(mini_root, train_per_class=12)


def test_split_mini_imagenet_layout(mini_root):
    bm = SplitMiniImageNet(n_experiences=5, dataset_root=mini_root, train_per_class=9, seed=3, return_task_id=True)
    order = np.random.RandomState(3).permutation(10).tolist()
    assert bm.details["class_order"] == order and len(bm.train_stream) == 5
    for i, (train, test) in enumerate(zip(bm.train_stream, bm.test_stream)):
        assert train.classes_in_this_experience == sorted(order[2 * i : 2 * i + 2]) and train.task_labels == [i]
        assert len(train.dataset) == 18 and len(test.dataset) == 6
    x_eval = bm.test_stream[0].dataset.eval()[0][0]
    raw = bm.test_stream[0].dataset.lazy_source.materialise()[0]
    expected = (raw - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert x_eval.shape == (3, 84, 84) and torch.allclose(x_eval, expected)
    train = bm.train_stream[0].dataset
    assert torch.equal(train.train()[0][0], train.eval()[0][0])  # no augmentation unless asked
    augmented = SplitMiniImageNet(n_experiences=5, dataset_root=mini_root, train_per_class=9, augment=True)
    torch.manual_seed(0)
    assert len({tuple(augmented.train_stream[0].dataset.train()[0][0].flatten()[:50].tolist())
                for _ in range(8)}) > 1
    with pytest.raises(ValueError, match="n_experiences"):
        SplitMiniImageNet(n_experiences=11, dataset_root=mini_root, train_per_class=9)


def test_mini_imagenet_missing_says_there_is_no_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="mini-ImageNet has no download") as info:
        load_mini_imagenet(tmp_path)
    assert str(tmp_path / "mini-imagenet" / "train.csv") in str(info.value)
    assert "torchvision can download" not in str(info.value)
