"""Data sources: IDX reading, torchvision-layout roots, digits, CIFAR-100 and SVHN formats."""

import pickle

import numpy as np
import pytest
import torch

from avalanche_neuromod.benchmarks import (
    DatasetNotFoundError,
    load_cifar100,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_svhn,
    read_idx,
    resolve_dataset_root,
)
from conftest import make_fake_mnist, write_idx

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x-idx3-ubyte", array, compress)
    path = tmp_path / ("x-idx3-ubyte.gz" if compress else "x-idx3-ubyte")
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 4)), compress=False)
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "y")


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_reads_torchvision_layout_without_writing(tmp_path, compress):
    make_fake_mnist(tmp_path, n_train=50, n_test=20, compress=compress)
    before = sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir())
    x, y = load_mnist(tmp_path, train=True, download=False)
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == [i % 10 for i in range(50)]
    x, y = load_mnist(tmp_path, train=False, download=False)
    assert x.shape == (20, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == before


def test_load_fashion_mnist_uses_its_own_folder(tmp_path):
    make_fake_mnist(tmp_path, folder="FashionMNIST", n_train=30, n_test=10)
    x, _ = load_fashion_mnist(tmp_path, train=True, download=False)
    assert x.shape == (30, 1, 28, 28)
    with pytest.raises(DatasetNotFoundError):
        load_mnist(tmp_path, download=False)


def test_missing_root_error_lists_paths_and_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in message
    assert "dataset_root" in message and "AVALANCHE_NEUROMOD_DATA" in message
    assert isinstance(info.value, FileNotFoundError)


def test_failed_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("no internet here")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetNotFoundError, match="no internet here"):
        load_mnist(tmp_path, download=True)


def test_dataset_root_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("AVALANCHE_NEUROMOD_DATA", str(tmp_path / "env"))
    assert resolve_dataset_root(tmp_path / "explicit", "mnist") == tmp_path / "explicit"
    assert resolve_dataset_root(None, "mnist") == tmp_path / "env"
    monkeypatch.delenv("AVALANCHE_NEUROMOD_DATA")
    assert resolve_dataset_root(None, "mnist").name == "mnist"


def test_digits_split_is_stratified_fixed_and_upsampled():
    x_tr, y_tr = load_digits(train=True)
    x_te, y_te = load_digits(train=False)
    assert x_tr.shape[1:] == (1, 28, 28) and x_tr.dtype == torch.uint8
    assert len(y_tr) + len(y_te) == 1797
    counts = torch.bincount(torch.cat([y_tr, y_te]), minlength=10)
    test_counts = torch.bincount(y_te, minlength=10)
    assert torch.all((test_counts - counts.float() * 0.25).abs() <= 0.5)
    x2, y2 = load_digits(train=True)
    assert torch.equal(x_tr, x2) and torch.equal(y_tr, y2)
    x8, _ = load_digits(train=True, size=8)
    assert x8.shape[1:] == (1, 8, 8) and int(x8.max()) == 255


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)
    with pytest.raises(ValueError, match="size"):
        load_digits(size=4)


def test_cifar100_reads_python_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for split, n in (("train", 12), ("test", 5)):
        entry = {"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
                 "fine_labels": list(range(n)), "coarse_labels": [0] * n}
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    x, y = load_cifar100(tmp_path, train=True, download=False)
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == list(range(12))
    assert load_cifar100(tmp_path, train=False, download=False)[0].shape == (5, 3, 32, 32)
    with pytest.raises(DatasetNotFoundError, match="CIFAR-100"):
        load_cifar100(tmp_path / "missing", download=False)


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    from scipy.io import savemat

    rng = np.random.RandomState(0)
    labels = np.array([[10], [1], [2], [10]])
    savemat(tmp_path / "train_32x32.mat", {"X": rng.randint(0, 256, (32, 32, 3, 4)).astype(np.uint8), "y": labels})
    x, y = load_svhn(tmp_path, train=True, download=False)
    assert x.shape == (4, 3, 32, 32)
    assert y.tolist() == [0, 1, 2, 0]
    with pytest.raises(DatasetNotFoundError, match="SVHN"):
        load_svhn(tmp_path, train=False, download=False)


@pytest.mark.realdata
def test_real_mnist_shapes_and_label_counts(data_root):
    x, y = load_mnist(data_root, train=True, download=False)
    assert x.shape == (60000, 1, 28, 28)
    assert torch.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    x, y = load_mnist(data_root, train=False, download=False)
    assert x.shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == MNIST_TEST_COUNTS


@pytest.mark.realdata
def test_real_fashion_mnist_is_balanced(data_root):
    x, y = load_fashion_mnist(data_root, train=True, download=False)
    assert x.shape == (60000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [6000] * 10
    _, y = load_fashion_mnist(data_root, train=False, download=False)
    assert torch.bincount(y).tolist() == [1000] * 10
