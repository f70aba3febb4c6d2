"""Shared fixtures. Avalanche writes ~/.avalanche on import: point HOME elsewhere first."""

import os
import tempfile

os.environ["HOME"] = tempfile.mkdtemp(prefix="neuromod-home-")

import gzip  # noqa: E402
import pickle  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

DATA_ENV = "AVALANCHE_NEUROMOD_DATA"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder (CI: ../shared/data); skips the test when absent."""
    root = os.environ.get(DATA_ENV)
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip(f"real data not available: set {DATA_ENV} to a folder with MNIST/raw")
    return Path(root)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write a uint8 array as an IDX file, the MNIST on-disk format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_fake_mnist(root: Path, folder: str = "MNIST", n_train: int = 540, n_test: int = 90,
                    compress: bool = True, seed: int = 0) -> None:
    """A small MNIST-format dataset in torchvision's layout, labels cycling 0..9."""
    rng = np.random.RandomState(seed)
    raw = root / folder / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.randint(0, 256, (n, 28, 28)), compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)


@pytest.fixture
def fake_mnist_root(tmp_path) -> Path:
    make_fake_mnist(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    """A tiny CIFAR-100 (3 train, 1 test image per class) in torchvision's pickle format."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for split, per_class in (("train", 3), ("test", 1)):
        labels = np.repeat(np.arange(100), per_class)
        entry = {"data": rng.randint(0, 256, (len(labels), 3072)).astype(np.uint8),
                 "fine_labels": labels.tolist()}
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    return root


@pytest.fixture(scope="session")
def svhn_root(tmp_path_factory):
    """A tiny SVHN (4 train, 2 test images per digit) in torchvision's .mat format."""
    from scipy.io import savemat

    root = tmp_path_factory.mktemp("svhn")
    rng = np.random.RandomState(0)
    for split, per_class in (("train", 4), ("test", 2)):
        y = np.repeat(np.arange(1, 11), per_class).reshape(-1, 1)  # SVHN writes 0 as 10
        savemat(root / f"{split}_32x32.mat", {"X": rng.randint(0, 256, (32, 32, 3, len(y))).astype(np.uint8), "y": y})
    return root


def start_script(script: Path, mode: str, ckpt: Path, folder: Path, stdout=None):
    """Run ``script MODE CKPT FOLDER/MODE.pt`` in a new interpreter (HOME in ``folder``), stderr discarded."""
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(folder)}
    return subprocess.Popen([sys.executable, str(script), mode, str(ckpt), str(folder / f"{mode}.pt")],
                            stdout=subprocess.DEVNULL if stdout is None else stdout, stderr=subprocess.DEVNULL,
                            env=env, text=True)


def train_with_resume(make_strategy, experiences, path: Path, resume_after=None):
    """Train ``experiences`` in order; after experience ``resume_after`` save, rebuild and resume from ``path``.

    Returns the final model's state dict; with ``resume_after=None`` the run is uninterrupted.
    """
    torch.manual_seed(0)
    strategy = make_strategy()
    for exp in experiences:
        if resume_after is not None and exp.current_experience == resume_after + 1:
            strategy.save_checkpoint(path)
            torch.manual_seed(1234)  # the killed process's RNG is gone
            strategy = make_strategy()
            strategy.load_checkpoint(path)
            assert strategy.model.trained_tasks == list(range(resume_after + 1))
        strategy.train(exp)
    return strategy.model.state_dict()


def assert_same_state(a, b) -> None:
    """Two model state dicts hold the same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:  # extra state (e.g. a CRWN network's trained tasks)
            assert a[key] == b[key], key
