"""TSAR: Omniglot reader, meta-training sampler, transfer streams, regulated networks, OML, transfer strategy."""

import copy
import io
import math
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from avalanche.core import SupervisedPlugin

from conftest import start_script

from avalanche_neuromod.benchmarks import (
    DatasetNotFoundError,
    DomainTransfer,
    OmniglotMetaSampler,
    load_omniglot,
)
from avalanche_neuromod.benchmarks.omniglot import OMNIGLOT_UNSEEN_ALPHABETS
from avalanche_neuromod.evaluation import make_evaluator
from avalanche_neuromod.models import (
    FactoredHead,
    HashedHead,
    FullHead,
    LowRankHead,
    OMLClassifier,
    ProjectedHead,
    QuantizedHead,
    RegulatedClassifier,
    Regulator,
    SingleImageNorm,
    SparseHead,
    TSARNet,
    feature_directions,
    proportional_pools,
    quantize_rows,
    regulated_conv2d,
    regulated_linear,
)
from avalanche_neuromod.training import (
    TSAR,
    CheckpointError,
    TSARMetaLearner,
    TSARNoRegulation,
    TSAROML,
    TSARReservoir,
    TSARScratch,
    load_tsar_model,
)

SMALL = dict(classifier_channels=6, regulator_channels=5)


def _png(seed: int, size: int = 105) -> bytes:
    rng = np.random.RandomState(seed)
    pixels = np.where(rng.rand(size, size) < 0.1, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").convert("1").save(buf, format="PNG")
    return buf.getvalue()


def make_omniglot_zip(folder: Path, subset: str, alphabets: dict, drawings: int = 4) -> None:
    """An archive in the official layout: <subset>/<alphabet>/<characterNN>/<id>_<nn>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{subset}.zip", "w") as z:
        z.writestr(f"{subset}/", b"")
        for a, (alphabet, n_chars) in enumerate(alphabets.items()):
            for c in range(n_chars):
                for d in range(drawings):
                    name = f"{subset}/{alphabet}/character{c + 1:02d}/{a:02d}{c:02d}_{d + 1:02d}.png"
                    z.writestr(name, _png(hash((alphabet, c, d)) % 2**31))


@pytest.fixture
def omniglot_root(tmp_path):
    base = tmp_path / "omniglot-py"
    make_omniglot_zip(base, "images_background_small1", {"Greek": 3, "Korean": 2})
    make_omniglot_zip(base, "images_background_small2", {"Greek": 3, "Tagalog": 2, "Sanskrit": 1})
    return tmp_path


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def test_omniglot_reader_reads_the_zip_resizes_and_keeps_alphabets(omniglot_root):
    data = load_omniglot(omniglot_root, ["images_background_small1"])
    assert data.images.shape == (5 * 4, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.classes == [("Greek", "character01"), ("Greek", "character02"), ("Greek", "character03"),
                            ("Korean", "character01"), ("Korean", "character02")]
    assert data.labels.tolist() == [i for i in range(5) for _ in range(4)]
    with zipfile.ZipFile(omniglot_root / "omniglot-py" / "images_background_small1.zip") as z:
        png = z.read("images_background_small1/Korean/character02/0101_03.png")
    expected = Image.open(io.BytesIO(png)).convert("L").resize((28, 28), Image.LANCZOS)
    assert torch.equal(data.images[4 * 4 + 2, 0], torch.from_numpy(np.asarray(expected)))
    # nothing was extracted next to the archives
    assert sorted(os.listdir(omniglot_root / "omniglot-py")) == ["images_background_small1.zip",
                                                                 "images_background_small2.zip"]


def test_omniglot_subsets_share_classes_once_and_select_alphabets(omniglot_root):
    both = load_omniglot(omniglot_root, ["images_background_small1", "images_background_small2"])
    assert both.alphabets == ["Greek", "Korean", "Sanskrit", "Tagalog"]
    assert both.n_classes == 3 + 2 + 1 + 2
    unseen = load_omniglot(omniglot_root, ["images_background_small2"], exclude_alphabets=["Greek"])
    assert unseen.alphabets == ["Sanskrit", "Tagalog"] and unseen.n_classes == 3
    inverted = load_omniglot(omniglot_root, ["images_background_small2"], alphabets=["Sanskrit"], invert=True)
    plain = load_omniglot(omniglot_root, ["images_background_small2"], alphabets=["Sanskrit"])
    assert torch.equal(inverted.images, 255 - plain.images)
    with pytest.raises(ValueError, match="Latin"):
        load_omniglot(omniglot_root, ["images_background_small2"], alphabets=["Latin"])


def test_omniglot_missing_archive_names_every_path(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="images_background_small1.zip"):
        load_omniglot(tmp_path, ["images_background_small1"])
    with pytest.raises(ValueError, match="unknown Omniglot subset"):
        load_omniglot(tmp_path, ["images_background_big"])


def test_meta_sampler_draws_one_class_in_and_a_random_outer_batch():
    labels = torch.arange(10).repeat_interleave(20)
    sampler = OmniglotMetaSampler(labels, n_inner=20, n_outer=64, seed=3)
    for _ in range(5):
        episode = sampler.sample()
        assert len(episode.inner) == 20 and set(labels[episode.inner].tolist()) == {episode.class_id}
        assert sorted(episode.inner.tolist()) == list(range(episode.class_id * 20, episode.class_id * 20 + 20))
        assert len(episode.outer) == 84 and np.array_equal(episode.outer[64:], episode.inner)
        assert len(set(episode.outer[:64].tolist())) == 64
    other = OmniglotMetaSampler(labels, n_outer=30, exclude_inner_class=True, classes=[1, 2, 3], seed=0)
    for _ in range(5):
        episode = other.sample()
        assert episode.class_id in (1, 2, 3)
        assert episode.class_id not in labels[episode.outer[:30]].tolist()
        assert set(labels[episode.outer[:30]].tolist()) <= {1, 2, 3}
    a, b = OmniglotMetaSampler(labels, seed=1), OmniglotMetaSampler(labels, seed=1)
    state = a.state_dict()
    first = [a.sample().outer for _ in range(3)]
    b.load_state_dict(torch.load(_roundtrip(state), weights_only=True))
    assert all(np.array_equal(x, b.sample().outer) for x in first)
    with pytest.raises(ValueError, match="n_inner"):
        OmniglotMetaSampler(labels, n_inner=21)


def _images(experience) -> torch.Tensor:
    return torch.stack([experience.dataset[i][0] for i in range(len(experience.dataset))])


def _labels(experience) -> list:
    return [int(experience.dataset[i][1]) for i in range(len(experience.dataset))]


def _roundtrip(obj) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_domain_transfer_stream_layout_recall_and_heldout():
    bench = DomainTransfer("digits", n_classes=4, n_images=12, n_train=9, seed=5)
    assert len(bench.train_stream) == len(bench.test_stream) == len(bench.heldout_stream) == 4
    names = bench.details["class_names"]
    assert sorted(names) == sorted(set(names)) and len(names) == 4
    for i, (train, test, held) in enumerate(zip(bench.train_stream, bench.test_stream, bench.heldout_stream)):
        assert train.classes_in_this_experience == [i]
        x_tr, y_tr = _images(train), _labels(train)
        x_te, y_te = _images(test), _labels(test)
        x_ho = _images(held)
        assert x_tr.shape == (9, 3, 28, 28) and x_ho.shape == (3, 3, 28, 28)
        assert torch.equal(x_tr, x_te) and set(y_tr) == set(y_te) == {i}
        assert not any(torch.equal(a, b) for a in x_tr for b in x_ho)
        assert torch.equal(x_tr[:, 0], x_tr[:, 2]) and 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    other = DomainTransfer("digits", n_classes=4, n_images=12, seed=6)
    assert other.details["class_names"] != names or not torch.equal(
        _images(other.train_stream[0]), _images(bench.train_stream[0]))
    again = DomainTransfer("digits", n_classes=4, n_images=12, n_train=9, seed=5)
    assert torch.equal(_images(again.train_stream[3]), _images(bench.train_stream[3]))
    assert not hasattr(DomainTransfer("digits", n_classes=2, n_images=3), "heldout_stream")
    with pytest.raises(ValueError, match="n_train"):
        DomainTransfer("digits", n_images=5, n_train=6)
    with pytest.raises(ValueError, match="n_classes=11"):
        DomainTransfer("digits", n_classes=11)


def test_domain_transfer_on_omniglot_and_an_image_folder(omniglot_root, tmp_path):
    bench = DomainTransfer("omniglot", n_classes=3, n_images=4, dataset_root=omniglot_root)
    assert bench.details["class_names"] and all(n.split("/")[0] in ("Tagalog", "Sanskrit")
                                                for n in bench.details["class_names"])
    folder = tmp_path / "imagenet"
    rng = np.random.RandomState(0)
    for c in range(4):
        (folder / f"n{c:08d}").mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.randint(0, 256, (40, 36, 3)).astype(np.uint8)).save(folder / f"n{c:08d}" / f"{i}.JPEG")
    images = DomainTransfer("image_folder", n_classes=3, n_images=5, n_train=4, dataset_root=folder)
    assert _images(images.train_stream[0]).shape == (4, 3, 28, 28) and len(images.heldout_stream) == 3
    with pytest.raises(ValueError, match="n_classes=5"):
        DomainTransfer("image_folder", n_classes=5, dataset_root=folder)


def test_domain_transfer_on_cifar100_resizes_to_28(cifar_root):
    bench = DomainTransfer("cifar100", n_classes=4, n_images=3, n_train=2, dataset_root=cifar_root, seed=0)
    x = _images(bench.train_stream[0])
    assert x.shape == (2, 3, 28, 28) and len(bench.heldout_stream) == 4
    assert len(set(bench.details["class_names"])) == 4
    with pytest.raises(ValueError, match="classes"):
        DomainTransfer("cifar100", classes=[100], dataset_root=cifar_root)


@pytest.mark.realdata
def test_real_omniglot_small_subsets_and_the_unseen_alphabets():
    root = os.environ.get("AVALANCHE_NEUROMOD_DATA")
    if not root or not (Path(root) / "omniglot-py" / "images_background_small1.zip").is_file():
        pytest.skip("real Omniglot subsets not available under $AVALANCHE_NEUROMOD_DATA/omniglot-py")
    small1 = load_omniglot(root, ["images_background_small1"])
    assert small1.n_classes == 136 and small1.images.shape == (2720, 1, 28, 28)
    unseen = load_omniglot(root, ["images_background_small2"], alphabets=OMNIGLOT_UNSEEN_ALPHABETS)
    assert unseen.n_classes == 47 + 42 + 17 and len(unseen.images) == 106 * 20
    assert not set(unseen.classes) & set(small1.classes)
    bench = DomainTransfer("omniglot", dataset_root=root)
    assert len(bench.train_stream) == 100 and all(len(e.dataset) == 20 for e in bench.train_stream)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def test_single_image_norm_is_batch_norm_in_training_mode_on_each_image():
    torch.manual_seed(0)
    norm, bn = SingleImageNorm(4), nn.BatchNorm2d(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0, 0.3]))
        bn.weight.copy_(norm.weight)
        bn.bias.copy_(norm.bias)
    x = torch.randn(3, 4, 7, 7) * 3 + 1
    per_image = torch.cat([bn.train()(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(norm(x), per_image)
    torch.testing.assert_close(norm.eval()(x), per_image)


def test_masks_shape_forward_and_gradient():
    torch.manual_seed(0)
    w = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3)
    mask = torch.rand(3, 4)
    x = torch.randn(1, 4)
    y = regulated_linear(x, w, mask, b)
    torch.testing.assert_close(y, x @ (mask * w).T + b)
    y.sum().backward()
    torch.testing.assert_close(w.grad, mask * x.expand(3, 4))  # d/dW of sum(x (m*W)^T) = m * x
    conv_w = torch.randn(5, 2, 3, 3)
    per_image_masks = torch.rand(4, 5, 2, 3, 3)
    xs = torch.randn(4, 2, 8, 8)
    batched = regulated_conv2d(xs, conv_w, per_image_masks, torch.zeros(5))
    singles = torch.cat([F.conv2d(xs[i : i + 1], per_image_masks[i] * conv_w) for i in range(4)])
    torch.testing.assert_close(batched, singles)
    lin_masks = torch.rand(4, 3, 4)
    xs2 = torch.randn(4, 4)
    torch.testing.assert_close(regulated_linear(xs2, w.detach(), lin_masks, b),
                               torch.stack([(lin_masks[i] * w.detach()) @ xs2[i] + b for i in range(4)]))


def test_regulated_net_per_image_masks_and_presets():
    torch.manual_seed(0)
    net = TSARNet.build(7, bias="sculpt", **SMALL)
    x = torch.rand(3, 3, 28, 28)
    masks = net.masks(x)
    assert [tuple(m.shape[1:]) for m in masks] == net.classifier.regulated_shapes
    one_by_one = torch.cat([net.classifier(x[i : i + 1], [m[i] for m in masks]) for i in range(3)])
    torch.testing.assert_close(net(x), one_by_one)
    assert all(torch.all(h.linear.bias == 0.0) for h in net.regulator.heads)
    grow = TSARNet.build(7, bias="grow", **SMALL)
    assert all(torch.all(h.linear.bias == -8.0) for h in grow.regulator.heads)
    assert grow.masks(x)[1].median() < 0.01 < net.masks(x)[1].median()
    custom = TSARNet.build(7, bias=-3.5, head="low_rank", rank=2, **SMALL)
    assert all(torch.all(h.bias == -3.5) for h in custom.regulator.heads)
    net.regulation = False
    torch.testing.assert_close(net(x), net.classifier(x))


def test_low_rank_head_formula_and_parameter_count():
    torch.manual_seed(0)
    head = LowRankHead(10, (6, 2, 3, 3), bias=-1.0, rank=3)
    f = torch.randn(2, 10)
    u = (f @ head.left.weight.T).view(2, 6, 3)
    v = (f @ head.right.weight.T).view(2, 18, 3)
    expected = -1.0 + torch.einsum("bir,bjr->bij", u, v).view(2, 6, 2, 3, 3) / math.sqrt(3)
    torch.testing.assert_close(head.logits(f), expected)
    assert sum(p.numel() for p in head.parameters()) == 10 * 3 * (6 + 18) + 6 * 18


def test_factored_head_formula_parameter_count_and_initial_spread():
    torch.manual_seed(0)
    head = FactoredHead(10, (6, 2, 3, 3), bias=-1.0, code=4)
    f = torch.randn(2, 10)
    expected = (f @ head.encode.weight.T @ head.decode.weight.T - 1.0).view(2, 6, 2, 3, 3)
    torch.testing.assert_close(head.logits(f), expected)
    assert sum(p.numel() for p in head.parameters()) == 4 * (10 + 108) + 108
    # At initialisation the logits spread as a full head's do (the variance of the product, not of one map).
    features = torch.relu(torch.randn(64, 300))
    with torch.no_grad():
        full_std = torch.stack([FullHead(300, (2000,), 0.0).logits(features).std() for _ in range(5)]).mean()
        factored_std = torch.stack([FactoredHead(300, (2000,), 0.0, code=32).logits(features).std()
                                    for _ in range(5)]).mean()
    assert 0.85 < float(factored_std / full_std) < 1.15
    head.reset(-2.0)
    assert torch.all(head.decode.bias == -2.0)
    with pytest.raises(ValueError, match="code"):
        FactoredHead(10, (3, 3), bias=0.0, code=0)


def test_factored_head_gain_same_start_faster_read_out():
    features = torch.randn(3, 10)
    torch.manual_seed(1)
    plain = FactoredHead(10, (6, 2, 3, 3), bias=-1.0, code=4)
    torch.manual_seed(1)
    fast = FactoredHead(10, (6, 2, 3, 3), bias=-1.0, code=4, gain=8.0)
    # The formula: sigmoid(g A (P f) + b), with A started g times smaller, so the same logits at first.
    expected = (8.0 * (features @ fast.encode.weight.T @ fast.decode.weight.T) - 1.0).view(3, 6, 2, 3, 3)
    torch.testing.assert_close(fast.logits(features), expected)
    torch.testing.assert_close(fast.logits(features), plain.logits(features))
    torch.testing.assert_close(fast.decode.weight * 8.0, plain.decode.weight)
    fast.reset(-3.0)  # the reset rule keeps the gain
    assert torch.all(fast.decode.bias == -3.0) and fast.gain == 8.0
    assert 0.5 < float(fast.decode.weight.std() * 8.0 / plain.decode.weight.std()) < 2.0
    net = TSARNet.build(7, head="factored", code=3, gain=4.0, **SMALL)
    again = TSARNet.from_config(net.config)
    assert all(h.gain == 4.0 for h in again.regulator.heads)
    assert "gain" not in TSARNet.build(7, head="factored", code=3, **SMALL).config["regulator"]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="gain"):
            FactoredHead(10, (3, 3), bias=0.0, code=2, gain=bad)


def test_hashed_head_formula_assignment_parameter_count_and_initial_spread():
    torch.manual_seed(0)
    head = HashedHead(10, (6, 2, 3, 3), bias=-1.0, pool=5)
    f = torch.randn(2, 10)
    # The formula: b + a * (R f)[h], one shared read-out per entry through its own scale and bias.
    shared = f @ head.readouts.weight.T
    expected = (-1.0 + head.scale * shared[:, head.assignment]).view(2, 6, 2, 3, 3)
    torch.testing.assert_close(head.logits(f), expected)
    # Balanced: every read-out serves 108 / 5 entries, rounded; scales start at +-1.
    assert sorted(torch.bincount(head.assignment, minlength=5).tolist()) == [21, 21, 22, 22, 22]
    assert set(head.scale.tolist()) == {-1.0, 1.0}
    assert sum(p.numel() for p in head.parameters()) == 5 * 10 + 2 * 108
    assert HashedHead(10, (2, 3), bias=0.0, pool=50).pool == 6  # never more read-outs than entries
    # The logits spread as a full head's at initialisation.
    features = torch.relu(torch.randn(64, 300))
    full_std = torch.stack([FullHead(300, (2000,), 0.0).logits(features).std() for _ in range(5)]).mean()
    hashed_std = torch.stack([HashedHead(300, (2000,), 0.0, pool=64).logits(features).std()
                              for _ in range(5)]).mean()
    assert 0.85 < float(hashed_std / full_std) < 1.15
    # The reset rule redraws read-outs and signs and keeps the assignment; the assignment is saved.
    assignment = head.assignment.clone()
    head.reset(-2.0, generator=torch.Generator().manual_seed(3))
    assert torch.all(head.bias == -2.0) and torch.equal(head.assignment, assignment)
    other = HashedHead(10, (6, 2, 3, 3), bias=0.0, pool=5)
    assert not torch.equal(other.assignment, assignment)
    other.load_state_dict(head.state_dict())
    torch.testing.assert_close(other.logits(f), head.logits(f))
    with pytest.raises(ValueError, match="pool"):
        HashedHead(10, (3, 3), bias=0.0, pool=0)


def test_hashed_head_with_two_hashes_mixes_two_read_outs_per_entry():
    torch.manual_seed(0)
    head = HashedHead(10, (6, 2, 3, 3), bias=-1.0, pool=5, hashes=2)
    f = torch.randn(3, 10)
    # The formula: b + a_1 * (R f)[h_1] + a_2 * (R f)[h_2], each entry with its own two scales.
    shared = f @ head.readouts.weight.T
    expected = -1.0 + head.scale[0] * shared[:, head.assignment[0]] + head.scale[1] * shared[:, head.assignment[1]]
    torch.testing.assert_close(head.logits(f), expected.view(3, 6, 2, 3, 3))
    # Each assignment balanced on its own; the two differ; scales start at +-1/sqrt(2).
    assert head.assignment.shape == (2, 108) and not torch.equal(head.assignment[0], head.assignment[1])
    for row in head.assignment:
        assert sorted(torch.bincount(row, minlength=5).tolist()) == [21, 21, 22, 22, 22]
    torch.testing.assert_close(head.scale.abs(), torch.full((2, 108), 2 ** -0.5))
    assert sum(p.numel() for p in head.parameters()) == 5 * 10 + 3 * 108
    # The first assignment is the one a single-hash head draws from the same random source.
    one = HashedHead(10, (6, 2, 3, 3), bias=0.0, pool=5, generator=torch.Generator().manual_seed(4))
    two = HashedHead(10, (6, 2, 3, 3), bias=0.0, pool=5, generator=torch.Generator().manual_seed(4), hashes=2)
    assert one.assignment.shape == (108,) and torch.equal(two.assignment[0], one.assignment)
    # The same spread as a full head at initialisation.
    features = torch.relu(torch.randn(64, 300))
    full_std = torch.stack([FullHead(300, (2000,), 0.0).logits(features).std() for _ in range(5)]).mean()
    two_std = torch.stack([HashedHead(300, (2000,), 0.0, pool=64, hashes=2).logits(features).std()
                           for _ in range(5)]).mean()
    assert 0.85 < float(two_std / full_std) < 1.15
    with pytest.raises(ValueError, match="hashes"):
        HashedHead(10, (3, 3), bias=0.0, pool=2, hashes=0)


def test_hashed_heads_with_two_hashes_round_trip_through_config():
    net = TSARNet.build(7, head="hashed", pool=[1, 2, 3, 4], hashes=2, **SMALL)
    assert net.config["regulator"]["hashes"] == 2 and all(h.hashes == 2 for h in net.regulator.heads)
    assert "hashes" not in TSARNet.build(7, head="hashed", pool=3, **SMALL).config["regulator"]
    again = TSARNet.from_config(net.config)
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(again(x), net(x))


def _head_parameters_at_paper_size(**head):
    """Parameters of the full heads and of the given heads at the paper's sizes, and the mask entries (no memory)."""
    with torch.device("meta"):
        full = TSARNet.build(1000)
        light = TSARNet.build(1000, **head)
    full_count, light_count = (sum(p.numel() for p in net.regulator.heads.parameters()) for net in (full, light))
    return full_count, light_count, sum(math.prod(s) for s in full.classifier.regulated_shapes)


def test_hashed_heads_build_round_trip_and_memory():
    net = TSARNet.build(7, head="hashed", pool=4, **SMALL)
    assert all(isinstance(h, HashedHead) and h.pool == 4 for h in net.regulator.heads)
    again = TSARNet.from_config(net.config)
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(again(x), net(x))
    n_full, n_hashed, entries = _head_parameters_at_paper_size(head="hashed", pool=512)
    assert n_hashed == 4 * 512 * 1728 + 2 * entries and n_hashed * 100 < n_full


def test_sparse_head_formula_indices_and_parameter_count():
    torch.manual_seed(0)
    head = SparseHead(10, (6, 2, 3, 3), bias=-1.0, inputs=4, gain=2.5)
    head.bias.data.normal_()  # distinct biases, so a mix-up of entries shows
    # Each entry reads 4 distinct features of the 10, stored in 16 bits and saved with the head.
    assert head.index.shape == (108, 4) and head.index.dtype == torch.int16 and "index" in head.state_dict()
    assert all(len(set(row.tolist())) == 4 and 0 <= min(row) and max(row) < 10 for row in head.index)
    assert len({tuple(row.tolist()) for row in head.index}) > 50  # every entry draws its own
    assert sum(p.numel() for p in head.parameters()) == 5 * 108
    # The formula: b_e + g * sum_j w_ej f[i_ej]; a full head with every row zero outside the entry's inputs.
    dense = torch.zeros(108, 10).scatter(1, head.index.long(), head.weight.detach() * 2.5)
    for batch in (3, 20):  # the gather (few images) and the weighted bag (many) compute the same
        f = torch.relu(torch.randn(batch, 10))
        expected = head.bias.detach() + (f[:, head.index.long()] * head.weight.detach()).sum(-1) * 2.5
        torch.testing.assert_close(head.logits(f), expected.view(batch, 6, 2, 3, 3))
        torch.testing.assert_close(head.logits(f), (f @ dense.T + head.bias.detach()).view(batch, 6, 2, 3, 3))
    with pytest.raises(ValueError, match="inputs"):
        SparseHead(10, (3, 3), bias=0.0, inputs=11)
    with pytest.raises(ValueError, match="inputs"):
        SparseHead(10, (3, 3), bias=0.0, inputs=0)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="gain"):
            SparseHead(10, (3, 3), bias=0.0, inputs=2, gain=bad)


def test_sparse_head_shares_nothing_between_entries():
    torch.manual_seed(0)
    head = SparseHead(12, (5, 4), bias=0.0, inputs=3)
    assert head.shared_parameters() == []
    for batch in (2, 12):  # both ways of computing it
        head.zero_grad()
        head.logits(torch.rand(batch, 12))[:, 2, 1].sum().backward()  # one mask entry: row 2 * 4 + 1 = 9
        assert head.weight.grad[9].abs().sum() > 0 and head.bias.grad[9] == batch
        others = torch.ones(20, dtype=torch.bool)
        others[9] = False
        assert torch.all(head.weight.grad[others] == 0) and torch.all(head.bias.grad[others] == 0)


def test_sparse_head_initial_spread_gain_and_reset():
    torch.manual_seed(0)
    features = torch.relu(torch.randn(64, 300))
    full_std = torch.stack([FullHead(300, (2000,), 0.0).logits(features).std() for _ in range(5)]).mean()
    sparse_std = torch.stack([SparseHead(300, (2000,), 0.0, inputs=16).logits(features).std()
                              for _ in range(5)]).mean()
    assert 0.85 < float(sparse_std / full_std) < 1.15  # kaiming over its own inputs: a full head's spread
    # A gain is the same function at initialisation, with the weights g times smaller.
    plain = SparseHead(300, (2000,), 0.0, inputs=16, generator=torch.Generator().manual_seed(1))
    fast = SparseHead(300, (2000,), 0.0, inputs=16, gain=18.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain.index, fast.index)
    torch.testing.assert_close(fast.weight * 18.0, plain.weight)
    torch.testing.assert_close(fast.logits(features), plain.logits(features))
    # The reset rule redraws the weights and keeps the indices.
    index = fast.index.clone()
    fast.reset(-8.0, generator=torch.Generator().manual_seed(2))
    assert torch.all(fast.bias == -8.0) and torch.equal(fast.index, index)
    assert 0.8 < float(fast.weight.std() * 18.0 / (2 / 16) ** 0.5) < 1.2


def test_sparse_heads_build_round_trip_and_memory():
    net = TSARNet.build(7, head="sparse", inputs=3, gain=4.0, **SMALL)
    assert all(isinstance(h, SparseHead) and h.inputs == 3 and h.gain == 4.0 for h in net.regulator.heads)
    assert net.config["regulator"]["inputs"] == 3 and net.config["regulator"]["gain"] == 4.0
    assert "inputs" not in TSARNet.build(7, head="hashed", pool=3, **SMALL).config["regulator"]
    again = TSARNet.from_config(net.config)
    assert not torch.equal(again.regulator.heads[1].index, net.regulator.heads[1].index)
    again.load_state_dict(net.state_dict())  # the indices travel with the weights
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(again(x), net(x))
    n_full, n_sparse, entries = _head_parameters_at_paper_size(head="sparse", inputs=16)
    assert n_sparse == 17 * entries and n_sparse * 100 < n_full


def test_sparse_head_from_a_full_head_keeps_each_rows_largest_weights():
    torch.manual_seed(0)
    full = FullHead(10, (4, 3), bias=-2.0)
    full.linear.bias.data.normal_()
    f = torch.relu(torch.randn(5, 10))
    pruned = SparseHead.from_full(full, inputs=3, gain=6.0)
    weight = full.linear.weight.detach()
    order = weight.abs().argsort(1, descending=True)
    assert all(set(row.tolist()) == set(top.tolist()) for row, top in zip(pruned.index, order[:, :3]))
    kept = torch.zeros_like(weight).scatter(1, order[:, :3], weight.gather(1, order[:, :3]))
    expected = (f @ kept.T + full.linear.bias.detach()).view(5, 4, 3)  # the full head, every other weight at 0
    torch.testing.assert_close(pruned.logits(f), expected)
    assert pruned.gain == 6.0 and torch.allclose(pruned.weight * 6.0, weight.gather(1, pruned.index.long()))
    # A full head whose rows have at most 3 nonzero weights gives exactly its own logits.
    full.linear.weight.data.copy_(kept)
    torch.testing.assert_close(SparseHead.from_full(full, inputs=3).logits(f), full.logits(f))


def test_regulator_sparsified_prunes_every_head_and_round_trips():
    torch.manual_seed(0)
    net = TSARNet.build(7, **SMALL)
    pruned = TSARNet(net.classifier, net.regulator.sparsified(inputs=4, gain=2.0))
    assert pruned.config["regulator"]["head"] == "sparse" and pruned.config["regulator"]["inputs"] == 4
    assert all(isinstance(h, SparseHead) and h.gain == 2.0 for h in pruned.regulator.heads)
    x = torch.randn(3, 3, 28, 28)
    f = net.regulator.encode(x)
    torch.testing.assert_close(pruned.regulator.encode(x), f)  # the trunk is the full regulator's
    for full_head, sparse_head in zip(net.regulator.heads, pruned.regulator.heads):
        torch.testing.assert_close(sparse_head.logits(f), SparseHead.from_full(full_head, 4).logits(f))
    again = TSARNet.from_config(pruned.config)
    again.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(again(x), pruned(x))
    with pytest.raises(ValueError, match="head='full'"):
        pruned.regulator.sparsified(4)


def test_pruning_with_calibration_folds_the_pruned_weights_mean_into_the_biases():
    torch.manual_seed(0)
    full = FullHead(10, (4, 3), bias=-2.0)
    f = torch.relu(torch.randn(50, 10))
    mean = f.mean(0)
    folded = SparseHead.from_full(full, inputs=3, mean_features=mean)
    plain = SparseHead.from_full(full, inputs=3)
    weight = full.linear.weight.detach()
    pruned_part = weight.scatter(1, plain.index.long(), 0.0)  # the weights pruning drops
    torch.testing.assert_close(folded.bias, plain.bias + pruned_part @ mean)
    # Over the calibration features the folded head's logits keep the full head's mean; the plain head's do not.
    torch.testing.assert_close(folded.logits(f).mean(0), full.logits(f).mean(0))
    assert not torch.allclose(plain.logits(f).mean(0), full.logits(f).mean(0), atol=1e-3)
    net = TSARNet.build(7, **SMALL)
    images = torch.rand(6, 3, 28, 28)
    calibrated = net.regulator.sparsified(4, calibration=images)
    features = net.regulator.encode(images)
    for full_head, head in zip(net.regulator.heads, calibrated.heads):
        torch.testing.assert_close(head.logits(features).mean(0), full_head.logits(features).mean(0))


def test_quantize_rows_picks_each_rows_least_error_step_on_symmetric_levels():
    weight = torch.tensor([[0.0, 1.0, -1.0, 0.5], [2.0, -2.0, 2.0, -2.0]])
    codes, step = quantize_rows(weight, bits=1)  # levels +-step / 2
    assert codes.dtype == torch.uint8 and codes.shape == weight.shape
    assert torch.equal(codes[1], torch.tensor([1, 0, 1, 0], dtype=torch.uint8))
    # Row 1 is +-2: its least-error step from the grid is the one nearest 4 (rms 2 x the largest multiple, 1.2).
    torch.testing.assert_close(step[1], torch.tensor(2.4))
    torch.manual_seed(0)
    w = torch.randn(64, 100) * torch.linspace(0.1, 3.0, 64).unsqueeze(1)  # rows of very different scales
    errors = []
    for bits in (2, 3, 4):
        codes, step = quantize_rows(w, bits)
        assert int(codes.max()) <= 2 ** bits - 1
        q = step.unsqueeze(1) * (codes.float() - (2 ** bits - 1) / 2)
        errors.append(((w - q).pow(2).sum(1) / w.pow(2).sum(1)).mean().item())
        # No row does better with another step of the grid (it kept its least-error one).
        for multiple in (0.3, 0.75, 1.2):
            other = w.pow(2).mean(1, keepdim=True).sqrt() * multiple
            alt = other * ((w / other + (2 ** bits - 1) / 2).round().clamp(0, 2 ** bits - 1) - (2 ** bits - 1) / 2)
            assert torch.all((w - q).pow(2).sum(1) <= (w - alt).pow(2).sum(1) + 1e-5)
    assert errors[0] > errors[1] > errors[2] and errors[1] < 0.05  # 3 bits: under 5% of a row's energy


def test_quantized_head_formula_packing_and_memory():
    torch.manual_seed(0)
    full = FullHead(10, (4, 3), bias=-2.0)
    full.linear.bias.data.normal_()
    f = torch.relu(torch.randn(5, 10))
    head = QuantizedHead.from_full(full, bits=3)
    codes, step = quantize_rows(full.linear.weight.detach(), 3)
    weight = step.unsqueeze(1) * (codes.float() - 3.5)
    torch.testing.assert_close(head.weight(), weight)  # the packed codes decode to the quantised rows
    expected = (f @ weight.T + full.linear.bias.detach()).view(5, 4, 3)
    torch.testing.assert_close(head.logits(f), expected)
    torch.testing.assert_close(head(f), torch.sigmoid(expected))
    assert head.codes.dtype == torch.uint8 and head.codes.numel() == 3 * 12 * 10 // 8  # 3 bits per weight
    assert [n for n, _ in head.named_parameters()] == ["step", "bias"] and head.map_parameters() == []
    # Calibration: the biases absorb each row's mean error, so the mean logits over the images stay the full head's.
    mean = f.mean(0)
    calibrated = QuantizedHead.from_full(full, bits=3, mean_features=mean)
    torch.testing.assert_close(calibrated.logits(f).mean(0), full.logits(f).mean(0))
    assert not torch.allclose(head.logits(f).mean(0), full.logits(f).mean(0))
    n_full, n_quantized, entries = _head_parameters_at_paper_size(head="quantized", bits=3)
    assert n_quantized == 2 * entries  # the parameters: a step and a bias per entry; the codes are a buffer
    with pytest.raises(ValueError, match="from 1 to 8"):
        QuantizedHead(10, (2,), 0.0, bits=9)


def test_regulator_quantized_converts_every_head_round_trips_and_is_10x_smaller():
    torch.manual_seed(0)
    net = TSARNet.build(7, **SMALL)
    x = torch.randn(3, 3, 28, 28)
    small = TSARNet(net.classifier, net.regulator.quantized(bits=3, calibration=x))
    assert small.config["regulator"]["head"] == "quantized" and small.config["regulator"]["bits"] == 3
    f = net.regulator.encode(x)
    for full_head, head in zip(net.regulator.heads, small.regulator.heads):
        torch.testing.assert_close(head.logits(f), QuantizedHead.from_full(full_head, 3, f.mean(0)).logits(f))
    again = TSARNet.from_config(small.config)
    again.load_state_dict(small.state_dict())  # the codes travel with the weights
    torch.testing.assert_close(again(x), small(x))
    with pytest.raises(ValueError, match="head='full'"):
        small.regulator.quantized(3)
    mixed = TSARNet(net.classifier, net.regulator.quantized(bits=[3, 3, 3, 2]))
    assert [h.bits for h in mixed.regulator.heads] == [3, 3, 3, 2]
    assert mixed.config["regulator"]["bits"] == [3, 3, 3, 2]
    again = TSARNet.from_config(mixed.config)
    again.load_state_dict(mixed.state_dict())
    torch.testing.assert_close(again(x), mixed(x))
    with pytest.raises(ValueError, match="bits has 2 values for 4 regulated weights"):
        net.regulator.quantized(bits=[3, 2])
    restored = TSARNet(net.classifier, mixed.regulator.dequantized())
    assert restored.config == net.config and all(isinstance(h, FullHead) for h in restored.regulator.heads)
    for head, quantized in zip(restored.regulator.heads, mixed.regulator.heads):
        torch.testing.assert_close(head.logits(f), quantized.logits(f))  # the decoded rows, now floats
    with pytest.raises(ValueError, match="only quantized regulation heads"):
        net.regulator.dequantized()
    full = FullHead(1728, (64, 32), 0.0)  # the paper's 1,728 features
    stored = [sum(t.numel() * t.element_size() for t in [*h.parameters(), *h.buffers()])
              for h in (full, QuantizedHead.from_full(full, 3))]
    assert 10 < stored[0] / stored[1] < 32 / 3  # 3 bits per weight, plus a float step and bias per entry



def test_feature_directions_are_the_top_singular_vectors():
    torch.manual_seed(0)
    f = torch.relu(torch.randn(60, 10)) * torch.linspace(0.2, 2.0, 10)  # features of very different scales
    basis = feature_directions(f, 4)
    assert basis.shape == (4, 10)
    torch.testing.assert_close(basis @ basis.T, torch.eye(4), atol=1e-5, rtol=0)
    singular = torch.linalg.svdvals(f.double())
    # The energy of f along the basis is the top 4 singular values' squares, more than along any other 4 directions.
    torch.testing.assert_close((f @ basis.T).pow(2).sum().double(), singular[:4].pow(2).sum(), rtol=1e-4, atol=0)
    for seed in range(5):
        other = torch.linalg.qr(torch.randn(10, 4, generator=torch.Generator().manual_seed(seed))).Q.T
        assert (f @ other.T).pow(2).sum() < (f @ basis.T).pow(2).sum()
    with pytest.raises(ValueError, match="between 1 and the 10 features"):
        feature_directions(f, 11)


def test_projected_head_formula_keeps_mean_logits_and_memory():
    torch.manual_seed(0)
    full = FullHead(10, (4, 3), bias=-2.0)
    full.linear.bias.data.normal_()
    f = torch.relu(torch.randn(50, 10))
    basis, mean = feature_directions(f, 4), f.mean(0)
    head = ProjectedHead.from_full(full, basis, mean)
    weight, bias = full.linear.weight.detach(), full.linear.bias.detach()
    kept = weight @ basis.T @ basis  # each row's part on the 4 directions
    expected = (f @ kept.T + bias + (weight - kept) @ mean).view(50, 4, 3)
    torch.testing.assert_close(head.logits(f), expected)
    torch.testing.assert_close(head(f), torch.sigmoid(expected))
    torch.testing.assert_close(head.logits(f).mean(0), full.logits(f).mean(0))  # the mean logits are the full head's
    assert not torch.allclose(head.logits(f), full.logits(f), atol=1e-3)
    # With every direction the projection leaves nothing out: the full head's logits.
    every = ProjectedHead.from_full(full, feature_directions(f, 10), mean)
    torch.testing.assert_close(every.logits(f), full.logits(f), atol=1e-5, rtol=1e-5)
    assert [n for n, _ in head.named_parameters()] == ["coef", "bias"] and head.coef.shape == (12, 4)
    assert head.map_parameters() == [head.coef] and head.shared_parameters() == []
    assert {n for n, _ in head.named_buffers()} == {"basis", "mean_features"}  # fixed: they never learn
    # A reset draws full rows and projects them: the mean logits of a full head reset with the same random draw.
    head.reset(-1.0, generator=torch.Generator().manual_seed(3))
    full.reset(-1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(head.logits(f).mean(0), full.logits(f).mean(0))
    fresh = ProjectedHead(10, (4, 3), bias=-8.0, directions=3)
    torch.testing.assert_close(fresh.basis @ fresh.basis.T, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(fresh.bias, torch.full((12,), -8.0))  # mean_features 0: nothing to correct
    with pytest.raises(ValueError, match="between 1 and the 10 regulator features"):
        ProjectedHead(10, (2,), 0.0, directions=0)
    with pytest.raises(ValueError, match=r"basis must be \(k, 10\)"):
        ProjectedHead.from_full(full, torch.zeros(3, 9), mean)
    n_full, n_projected, entries = _head_parameters_at_paper_size(head="projected", directions=24, project=[0, 1, 2, 3])
    assert n_projected == 25 * entries and n_projected * 60 < n_full  # 25 of 1,729 floats per entry


def test_regulator_projected_converts_the_convolutions_heads_and_round_trips():
    torch.manual_seed(0)
    net = TSARNet.build(7, **SMALL)
    x = torch.randn(30, 3, 28, 28)
    small = TSARNet(net.classifier, net.regulator.projected(x, directions=5))
    config = small.config["regulator"]
    assert config["head"] == "projected" and config["directions"] == 5 and config["project"] == [0, 1, 2]
    heads = small.regulator.heads
    assert [type(h) for h in heads] == [ProjectedHead] * 3 + [FullHead]  # the class prediction layer's stays full
    f = net.regulator.encode(x)
    torch.testing.assert_close(small.regulator.encode(x), f)  # the trunk is the full regulator's
    basis = feature_directions(f, 5)
    for full_head, head in zip(net.regulator.heads[:3], heads[:3]):
        torch.testing.assert_close(head.logits(f), ProjectedHead.from_full(full_head, basis, f.mean(0)).logits(f))
    torch.testing.assert_close(heads[3].logits(f), net.regulator.heads[3].logits(f))
    assert heads[3] is not net.regulator.heads[3]  # a copy: transfer on one leaves the other as it was
    again = TSARNet.from_config(small.config)
    assert [type(h) for h in again.regulator.heads] == [ProjectedHead] * 3 + [FullHead]
    again.load_state_dict(small.state_dict())  # the directions travel with the weights
    torch.testing.assert_close(again(x), small(x))
    for regulator in (small.regulator, again.regulator):  # one basis and one mean, shared by the projected heads
        assert len({id(h.basis) for h in regulator.heads[:3]}) == 1
        assert len({id(h.mean_features) for h in regulator.heads[:3]}) == 1
        assert sum(b.numel() for b in regulator.buffers()) == 5 * f.shape[1] + f.shape[1]
    every = net.regulator.projected(x, directions=f.shape[1], heads=[0, 1, 2, 3])
    assert all(isinstance(h, ProjectedHead) for h in every.heads)
    for a, b in zip(every(x), net.regulator(x)):  # every direction: the full regulator's masks
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="indices 0 to 3"):
        net.regulator.projected(x, heads=[4])
    with pytest.raises(ValueError, match="head='full'"):
        small.regulator.projected(x)
    # Transfer: the coefficients and biases learn, the directions stay; the class prediction head is reset full.
    bench = DomainTransfer("digits", n_classes=2, n_images=3, seed=1)
    learning = TSAR(model=copy.deepcopy(small), seed=0, evaluator=make_evaluator(progress_bar=False))
    before = [(h.basis.clone(), h.coef.detach().clone()) for h in learning.model.regulator.heads[:3]]
    learning.train(bench.train_stream[0])
    for (basis, coef), head in zip(before, learning.model.regulator.heads[:3]):
        assert torch.equal(basis, head.basis) and not torch.equal(coef, head.coef)


def test_proportional_pools_split_the_read_outs_by_entries():
    shapes = [(32, 3, 3, 3), (32, 32, 3, 3), (32, 32, 3, 3), (200, 32)]  # 864, 9216, 9216, 6400 entries
    pools = proportional_pools(shapes, 2048)
    assert pools == [69, 735, 734, 510] and sum(pools) == 2048  # 2048 * 864 / 25696 = 68.9, ...
    assert proportional_pools(shapes, 4) == [1, 1, 1, 1]  # at least one read-out each
    assert proportional_pools([(2,), (1000,)], 3) == [1, 2]
    assert proportional_pools([(2,), (3,)], 100) == [2, 3]  # never more than one per entry
    with pytest.raises(ValueError, match="at least 4"):
        proportional_pools(shapes, 3)


def test_hashed_heads_take_one_pool_per_regulated_weight():
    net = TSARNet.build(7, head="hashed", pool=[1, 2, 3, 4], **SMALL)
    assert [h.pool for h in net.regulator.heads] == [1, 2, 3, 4]
    assert net.config["regulator"]["pool"] == [1, 2, 3, 4]
    again = TSARNet.from_config(net.config)
    assert [h.pool for h in again.regulator.heads] == [1, 2, 3, 4]
    again.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(again(x), net(x))
    with pytest.raises(ValueError, match="one per weight"):
        TSARNet.build(7, head="hashed", pool=[1, 2], **SMALL)
    numpy_pool = TSARNet.build(7, head="hashed", pool=np.int64(3), **SMALL)  # any integer, as one pool for all
    assert [h.pool for h in numpy_pool.regulator.heads] == [3, 3, 3, 3] and numpy_pool.config["regulator"]["pool"] == 3


def test_factored_heads_build_round_trip_and_memory():
    net = TSARNet.build(7, head="factored", code=3, **SMALL)
    assert all(isinstance(h, FactoredHead) and h.code == 3 for h in net.regulator.heads)
    again = TSARNet.from_config(net.config)
    assert all(isinstance(h, FactoredHead) and h.code == 3 for h in again.regulator.heads)
    n_full, n_factored, entries = _head_parameters_at_paper_size(head="factored", code=32)
    assert n_factored == 32 * (4 * 1728 + entries) + entries and n_factored * 50 < n_full
    with pytest.raises(ValueError, match="'factored'"):
        TSARNet.build(7, head="tiny", **SMALL)


def test_paper_sizes_regulator_features_and_head_parameters():
    with torch.device("meta"):
        net = TSARNet.build(1000)
        low = TSARNet.build(1000, head="low_rank", rank=4)
    assert net.regulator.features == 1728 and net.classifier.features == 112
    assert net.classifier.regulated_shapes == [(112, 3, 3, 3), (112, 112, 3, 3), (112, 112, 3, 3), (1000, 112)]
    full = sum(p.numel() for p in net.regulator.heads.parameters())
    assert full == sum(1729 * math.prod(s) for s in net.classifier.regulated_shapes)
    assert 588e6 < full < 590e6  # the paper's ~589M
    assert sum(p.numel() for p in low.regulator.heads.parameters()) * 10 < full


def test_wrong_inputs_get_clear_errors():
    net = TSARNet.build(5, **SMALL)
    with pytest.raises(ValueError, match="input_size=32"):
        net(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="in_channels"):
        net(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="regulated_shapes"):
        TSARNet(RegulatedClassifier(5, channels=6), Regulator([(1, 2, 3, 3)]))
    classifier = RegulatedClassifier(5, channels=6)
    with pytest.raises(ValueError, match="images of 3 channels and side 32, the classifier of 3 and 28"):
        TSARNet(classifier, Regulator(classifier.regulated_shapes, channels=5, input_size=32))
    with pytest.raises(ValueError, match="preset"):
        TSARNet.build(5, bias="prune")


def test_the_regulator_and_the_masks_are_checked_on_their_own():
    net = TSARNet.build(5, **SMALL)
    x = torch.rand(2, 3, 28, 28)
    masks = net.regulator(x)
    assert torch.equal(net.classifier(x, masks), net(x))
    with pytest.raises(ValueError, match=r"Regulator\(in_channels=3\).*\(2, 1, 28, 28\)"):
        net.regulator(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="Regulator was built for 28x28 images.*input_size=32"):
        net.regulator(torch.rand(2, 3, 32, 32))
    shapes = net.classifier.regulated_shapes
    cut = shapes[1][1] - 1
    with pytest.raises(ValueError, match=rf"mask 1 of RegulatedClassifier has shape \(2, {shapes[1][0]}, {cut}, "):
        net.classifier(x, [masks[0], masks[1][:, :, :cut], *masks[2:]])
    with pytest.raises(ValueError, match=r"mask 3 .*or \(2, .*\(one per image\)"):
        net.classifier(x, [*masks[:3], masks[3][:1]])  # one image's masks for a batch of two
    with pytest.raises(ValueError, match="takes 4 masks"):
        net.classifier(x, masks[:3])
    shared = [m[0] for m in masks]  # one mask for the whole batch is allowed
    assert net.classifier(x, shared).shape == (2, 5)


# ---------------------------------------------------------------------------
# Meta-learning
# ---------------------------------------------------------------------------

def _meta_data(n_classes=6, per_class=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = (torch.rand(len(labels), 1, 28, 28, generator=g) * 255).to(torch.uint8)
    return images, labels


def _learner(tmp_path=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    images, labels = _meta_data()
    net = TSARNet.build(8, **SMALL)
    return TSARMetaLearner(net, images, labels, n_inner=5, n_outer=6, seed=seed,
                           checkpoint_path=None if tmp_path is None else tmp_path / "meta.pt",
                           checkpoint_every=3, **kwargs)


def test_first_order_step_is_the_fast_weights_gradient_by_hand():
    """One meta-iteration of a classifier without regulator, inner loop on the class layer only."""
    torch.manual_seed(0)
    images, labels = _meta_data()
    net = TSARNet.build(8, bias=None, **SMALL)
    learner = TSARMetaLearner(net, images, labels, n_inner=3, n_outer=4, inner_params="head", seed=2,
                              repeat_first=False, inner_lr=0.1, outer_lr=0.01)
    twin = TSARMetaLearner(TSARNet.build(8, bias=None, **SMALL), images, labels, n_inner=3, n_outer=4,
                           inner_params="head", seed=2, repeat_first=False)
    twin.model.load_state_dict(net.state_dict())
    episode = twin.sampler.sample()
    clf = twin.model.classifier
    clf.reset_class_prediction([episode.class_id], generator=twin.generator)
    x = images.float().div(255).expand(-1, 3, -1, -1)
    w, b = clf.cp_weight.detach().clone(), clf.cp_bias.detach().clone()
    with torch.no_grad():
        feats = lambda idx: F.max_pool2d(F.relu(clf.norms[2](F.conv2d(F.max_pool2d(F.relu(clf.norms[1](F.conv2d(
            F.max_pool2d(F.relu(clf.norms[0](F.conv2d(x[idx], clf.conv_weights[0], clf.conv_biases[0]))), 2),
            clf.conv_weights[1], clf.conv_biases[1]))), 2), clf.conv_weights[2], clf.conv_biases[2]))), 2).flatten(1)
    for i in episode.inner:  # SGD on softmax cross-entropy: grad_W = (p - onehot) h^T
        h = feats([i])
        p = torch.softmax(h @ w.T + b, 1)
        p[0, episode.class_id] -= 1
        w, b = w - 0.1 * p.T @ h, b - 0.1 * p[0]
    h = feats(episode.outer)
    p = torch.softmax(h @ w.T + b, 1)
    p[torch.arange(len(episode.outer)), labels[episode.outer]] -= 1
    grad_w = p.T @ h / len(episode.outer)
    before = net.classifier.cp_weight.detach().clone()
    learner.step()
    grad = learner.model.classifier.cp_weight.grad
    torch.testing.assert_close(grad, grad_w, atol=1e-5, rtol=1e-4)
    # Adam's first step (bias-corrected moments g and g^2): -lr * g / (|g| + eps)
    moved = learner.model.classifier.cp_weight.detach() - clf.cp_weight.detach()
    torch.testing.assert_close(moved, -0.01 * grad / (grad.abs() + 1e-8), atol=1e-6, rtol=1e-3)
    assert learner.model.classifier.conv_weights[0].grad is not None  # convolutions learn in the outer step
    assert not torch.equal(before, learner.model.classifier.cp_weight)


def test_meta_learning_is_seeded_and_second_order_differs():
    a, b = _learner(seed=1), _learner(seed=1)
    a.fit(4, progress=False)
    b.fit(4, progress=False)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
    c = _learner(seed=1, second_order=True)
    c.fit(1, progress=False)
    d = _learner(seed=1)
    d.fit(1, progress=False)
    assert not torch.equal(c.model.regulator.heads[0].linear.weight, d.model.regulator.heads[0].linear.weight)
    assert all(np.isfinite(c.history["loss"]))


def test_meta_learner_resumes_to_the_same_weights(tmp_path):
    full = _learner()
    full.fit(7, progress=False)
    part = _learner(tmp_path)
    part.fit(3, progress=False)  # checkpoint at 3
    resumed = _learner(tmp_path)
    resumed.fit(7, progress=False)  # loads iteration 3, continues
    assert resumed.iteration == 7 and resumed.history == full.history
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    other = TSARMetaLearner(TSARNet.build(8, classifier_channels=7, regulator_channels=5), *_meta_data(),
                            n_inner=5, n_outer=6, checkpoint_path=tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="networks differ"):
        other.fit(8, progress=False)


def test_meta_learner_counts_its_seconds_across_resumes(tmp_path):
    part = _learner(tmp_path)
    part.fit(3, progress=False)
    assert part.seconds > 0
    resumed = _learner(tmp_path)
    assert resumed.seconds == 0.0
    resumed.load_checkpoint(tmp_path / "meta.pt")
    assert resumed.seconds == part.seconds  # the file carries the time of the part already done
    resumed.fit(5, progress=False, resume=False)
    assert resumed.seconds > part.seconds
    old = resumed.state_dict()
    del old["seconds"]  # a file written before the time was recorded still loads
    resumed.load_state_dict(old)
    assert resumed.seconds == 0.0


META_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from avalanche_neuromod.models import TSARNet
    from avalanche_neuromod.training import TSARMetaLearner
    mode, ckpt, out = sys.argv[1:4]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(5)
    images = (torch.rand(30, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    learner = TSARMetaLearner(TSARNet.build(8, classifier_channels=6, regulator_channels=5), images, labels,
                              n_inner=5, n_outer=6, checkpoint_path=None if mode == "full" else ckpt,
                              checkpoint_every=4)
    def stop(l):
        if mode == "killed" and l.iteration == 4:
            print("CHECKPOINTED", flush=True)
            time.sleep(600)
    learner.fit(10, progress=False, callback=stop)
    torch.save(learner.model.state_dict(), out)
""")


def test_meta_learning_killed_with_sigkill_resumes_exactly(tmp_path):
    script = tmp_path / "meta.py"
    script.write_text(META_SCRIPT)
    ckpt = tmp_path / "ckpt.pt"

    def start(mode, stdout=None):
        return start_script(script, mode, ckpt, tmp_path, stdout)

    killed = start("killed", stdout=subprocess.PIPE)
    try:
        assert killed.stdout.readline().strip() == "CHECKPOINTED"
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL and ckpt.exists()
        resumed, full = start("resume"), start("full")
        assert resumed.wait(timeout=240) == 0 and full.wait(timeout=240) == 0
    finally:
        if killed.poll() is None:
            killed.kill()
        killed.stdout.close()
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_outer_loss_is_a_clear_error():
    learner = _learner()
    with torch.no_grad():
        learner.model.classifier.cp_bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="outer_lr"):
        learner.step()


# ---------------------------------------------------------------------------
# Domain transfer
# ---------------------------------------------------------------------------

class _Order(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.seen = []

    def before_training_iteration(self, strategy, **kwargs):
        self.seen.append(strategy.mb_x.clone())


def _meta_model_file(tmp_path, bias="grow", n_classes=8):
    learner = TSARMetaLearner(TSARNet.build(n_classes, bias=bias, **SMALL), *_meta_data(), n_inner=5, n_outer=6)
    learner.fit(2, progress=False)
    path = tmp_path / "model.pt"
    learner.save_model(path)
    return path, learner.model


def test_transfer_resets_freezes_and_learns_one_image_at_a_time_in_order(tmp_path):
    path, meta = _meta_model_file(tmp_path)
    bench = DomainTransfer("digits", n_classes=3, n_images=4, seed=0)
    order = _Order()
    strategy = TSAR.from_checkpoint(path, n_classes=8, seed=0, plugins=[order],
                                    evaluator=make_evaluator(progress_bar=False))
    model = strategy.model
    assert torch.all(model.regulator.heads[-1].linear.bias == -2.0)
    assert torch.all(model.classifier.cp_bias == 0.0)
    torch.testing.assert_close(model.regulator.heads[0].linear.bias, meta.regulator.heads[0].linear.bias)
    trunk = [p.detach().clone() for p in model.regulator.trunk_parameters()]
    heads = [p.detach().clone() for p in model.regulator.heads.parameters()]
    strategy.train(bench.train_stream)
    expected = torch.cat([_images(e) for e in bench.train_stream])
    assert len(order.seen) == 12 and all(x.shape[0] == 1 for x in order.seen)
    assert torch.equal(torch.cat(order.seen), expected)
    assert all(torch.equal(a, b) for a, b in zip(trunk, model.regulator.trunk_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(heads, model.regulator.heads.parameters()))
    results = strategy.eval(bench.test_stream)
    assert "Top1_Acc_Stream/eval_phase/test_stream/Task000" in results
    assert "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp002" in results


def test_transfer_with_plain_sgd_takes_the_hand_computed_step(tmp_path):
    path, _ = _meta_model_file(tmp_path)
    bench = DomainTransfer("digits", n_classes=1, n_images=1, seed=0)
    strategy = TSAR.from_checkpoint(path, n_classes=8, seed=0, lr=0.05, optimizer_name="sgd",
                                    evaluator=make_evaluator(progress_bar=False))
    assert type(strategy.optimizer) is torch.optim.SGD and strategy.optimizer_name == "sgd"
    model = strategy.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    experience = bench.train_stream[0]
    x, y = _images(experience), torch.as_tensor([experience.dataset[0][1]])
    model.train()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [p for p in model.parameters() if p.requires_grad])
    strategy.train(experience)
    for (name, w), g in zip(before.items(), grads):
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), w - 0.05 * g, msg=name)
    with pytest.raises(ValueError, match="optimizer_name must be one of"):
        TSAR.from_checkpoint(path, optimizer_name="rmsprop")


def test_transfer_with_frozen_shared_maps_trains_only_per_entry_head_parameters():
    bench = DomainTransfer("digits", n_classes=2, n_images=3, seed=1)
    evaluator = make_evaluator(progress_bar=False)
    torch.manual_seed(0)
    model = TSARNet.build(4, head="hashed", pool=3, hashes=2, **SMALL)
    strategy = TSAR(model=copy.deepcopy(model), freeze_shared=True, seed=0, evaluator=evaluator)
    heads = strategy.model.regulator.heads
    shared = [p.detach().clone() for h in heads for p in h.shared_parameters()]
    scales = [h.scale.detach().clone() for h in heads]
    strategy.train(bench.train_stream[0])
    assert shared and all(torch.equal(a, p) for a, p in zip(shared, (p for h in heads for p in h.shared_parameters())))
    assert all(not torch.equal(a, h.scale) for a, h in zip(scales, heads))  # per-entry scales still learn
    assert not any(p.requires_grad for h in heads for p in h.shared_parameters())
    # Without the option the same maps learn; a full head has no shared maps, so the option changes nothing.
    learning = TSAR(model=copy.deepcopy(model), seed=0, evaluator=evaluator)
    learning.train(bench.train_stream[0])
    assert not all(torch.equal(a, p) for a, p in zip(shared, (p for h in learning.model.regulator.heads
                                                                for p in h.shared_parameters())))
    full = TSARNet.build(4, **SMALL)
    assert all(h.shared_parameters() == [] for h in full.regulator.heads)
    both = [TSAR(model=copy.deepcopy(full), freeze_shared=flag, seed=0, evaluator=evaluator) for flag in (False, True)]
    assert [sum(p.requires_grad for p in s.model.parameters()) for s in both] == [
        sum(p.requires_grad for p in both[0].model.parameters())] * 2
    factored = TSARNet.build(4, head="factored", code=2, **SMALL)
    low_rank = TSARNet.build(4, head="low_rank", rank=1, **SMALL)
    assert [p is h.encode.weight for h in factored.regulator.heads for p in h.shared_parameters()] == [True] * 4
    assert all(len(h.shared_parameters()) == 2 for h in low_rank.regulator.heads)


def test_transfer_class_head_lr_scale_moves_the_class_heads_weights_faster():
    bench = DomainTransfer("digits", n_classes=2, n_images=3, seed=1)
    evaluator = make_evaluator(progress_bar=False)
    torch.manual_seed(0)
    model = TSARNet.build(4, **SMALL)
    lr = 1e-3
    strategy = TSAR(model=copy.deepcopy(model), lr=lr, class_head_lr_scale=3.0, seed=0, evaluator=evaluator)
    heads = strategy.model.regulator.heads
    assert [g["lr"] for g in strategy.optimizer.param_groups] == [lr, 3 * lr]
    assert strategy.optimizer.param_groups[1]["params"] == [heads[3].linear.weight]
    before = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}
    strategy.train(bench.train_stream[0], drop_last=False)
    steps = len(bench.train_stream[0].dataset)
    moved = {n: (p - before[n]).abs().max().item() for n, p in strategy.model.named_parameters()}
    # Adam moves a weight by about its rate per step (a little more where gradients change sign): 3 lr for the
    # class head's weights, lr for the rest.
    assert 2 * lr * steps < moved["regulator.heads.3.linear.weight"] <= 3 * lr * steps * 1.05
    assert max(v for n, v in moved.items() if n != "regulator.heads.3.linear.weight") <= lr * steps * 1.05
    assert moved["regulator.heads.3.linear.bias"] > 0 and moved["regulator.heads.0.linear.weight"] > 0
    assert all(moved[n] == 0 for n in moved if n.startswith("regulator.convs"))  # the trunk stays frozen
    with pytest.raises(ValueError, match="positive number"):
        TSAR(model=copy.deepcopy(model), class_head_lr_scale=0, evaluator=evaluator)
    with pytest.raises(ValueError, match="TSARScratch does not train"):
        TSARScratch(model=TSARNet.build(4, bias=None, **SMALL), class_head_lr_scale=2.0, evaluator=evaluator)


def test_transfer_with_frozen_head_weights_trains_only_biases_and_steps():
    bench = DomainTransfer("digits", n_classes=2, n_images=3, seed=1)
    evaluator = make_evaluator(progress_bar=False)
    torch.manual_seed(0)
    model = TSARNet.build(4, **SMALL)
    strategy = TSAR(model=copy.deepcopy(model), freeze_head_weights=True, seed=0, evaluator=evaluator)
    heads = strategy.model.regulator.heads
    weights = [h.linear.weight.detach().clone() for h in heads]
    biases = [h.linear.bias.detach().clone() for h in heads]
    strategy.train(bench.train_stream[0])
    assert all(torch.equal(a, h.linear.weight) for a, h in zip(weights, heads))
    assert all(not torch.equal(a, h.linear.bias) for a, h in zip(biases, heads))  # biases still learn
    assert strategy.freeze_head_weights and not any(h.linear.weight.requires_grad for h in heads)
    # Given indices, only those heads' weights stay fixed (here the class prediction layer's).
    last = TSAR(model=copy.deepcopy(model), freeze_head_weights=[3], seed=0, evaluator=evaluator)
    assert [h.linear.weight.requires_grad for h in last.model.regulator.heads] == [True, True, True, False]
    with pytest.raises(ValueError, match="indices 0 to 3"):
        TSAR(model=copy.deepcopy(model), freeze_head_weights=[4], seed=0, evaluator=evaluator)
    # A quantized regulator: codes never change; steps and biases learn, with or without the option.
    quantized = TSARNet(model.classifier, model.regulator.quantized(3))
    learning = TSAR(model=copy.deepcopy(quantized), seed=0, evaluator=evaluator)
    codes = [h.codes.clone() for h in learning.model.regulator.heads]
    steps = [h.step.detach().clone() for h in learning.model.regulator.heads]
    learning.train(bench.train_stream[0])
    assert all(torch.equal(c, h.codes) for c, h in zip(codes, learning.model.regulator.heads))
    assert all(not torch.equal(s, h.step) for s, h in zip(steps, learning.model.regulator.heads))


def test_transfer_baselines_train_what_they_should(tmp_path):
    bench = DomainTransfer("digits", n_classes=2, n_images=3, seed=1)
    evaluator = make_evaluator(progress_bar=False)
    scratch = TSARScratch(model=TSARNet.build(4, bias=None, **SMALL), evaluator=evaluator)
    before = [p.detach().clone() for p in scratch.model.parameters()]
    scratch.train(bench.train_stream[0])
    assert all(not torch.equal(a, b) for a, b in zip(before, scratch.model.parameters()))
    no_reg = TSARNoRegulation(model=TSARNet.build(4, bias=None, **SMALL), evaluator=evaluator)
    convs = [p.detach().clone() for p in no_reg.model.classifier.conv_weights]
    cp = no_reg.model.classifier.cp_weight.detach().clone()
    no_reg.train(bench.train_stream[0])
    assert all(torch.equal(a, b) for a, b in zip(convs, no_reg.model.classifier.conv_weights))
    assert not torch.equal(cp, no_reg.model.classifier.cp_weight)
    reservoir = TSARReservoir(model=TSARNet.build(4, bias="grow", **SMALL), evaluator=evaluator)
    regulator = [p.detach().clone() for p in reservoir.model.regulator.parameters()]
    reservoir.train(bench.train_stream[0])
    assert all(torch.equal(a, b) for a, b in zip(regulator, reservoir.model.regulator.parameters()))
    with pytest.raises(ValueError, match="regulator"):
        TSARScratch(model=TSARNet.build(4, **SMALL))
    with pytest.raises(ValueError, match="regulator"):
        TSAR(model=TSARNet.build(4, bias=None, **SMALL))


# ---------------------------------------------------------------------------
# OML baseline
# ---------------------------------------------------------------------------

def test_oml_network_is_five_convolutions_and_two_linear_layers():
    net = TSARNet.oml(7, channels=4, hidden=9)
    oml = net.classifier
    assert isinstance(oml, OMLClassifier) and net.regulator is None
    assert [c.stride for c in oml.convs] == [(1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    assert oml.features == 4 * 2 * 2  # 28 -> 26 -> 12 -> 10 -> 4 -> 2
    x = torch.rand(3, 3, 28, 28)
    h = x
    for conv in oml.convs:
        h = F.relu(F.conv2d(h, conv.weight, conv.bias, stride=conv.stride))
    h = F.relu(h.flatten(1) @ oml.pln_weight.t() + oml.pln_bias)
    assert torch.allclose(net(x), h @ oml.cp_weight.t() + oml.cp_bias, atol=1e-6)
    assert net(x).shape == (3, 7) and oml.n_classes == 7
    assert oml.head_parameter_names() == ["pln_weight", "pln_bias", "cp_weight", "cp_bias"]
    with pytest.raises(ValueError, match="input_size=32"):
        net(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="no regulation and takes no masks"):
        oml(x, [torch.ones(1)] * 4)
    with pytest.raises(ValueError, match="at least 17"):
        OMLClassifier(5, input_size=16)
    with pytest.raises(ValueError, match="takes no regulator"):
        TSARNet(oml, Regulator(RegulatedClassifier(7, channels=4).regulated_shapes))


def test_oml_meta_learning_adapts_the_prediction_network_in_the_inner_loop(tmp_path):
    torch.manual_seed(0)
    images, labels = _meta_data()
    net = TSARNet.oml(8, channels=4, hidden=9)
    learner = TSARMetaLearner(net, images, labels, n_inner=5, n_outer=6, seed=0, inner_params="head")
    assert learner._inner_names == ["pln_weight", "pln_bias", "cp_weight", "cp_bias"]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    learner.fit(3, progress=False)
    # The outer step moves both parts (the representation only through it).
    assert all(not torch.equal(before[n], p) for n, p in net.named_parameters() if n.endswith("weight")), \
        [n for n, p in net.named_parameters() if torch.equal(before[n], p)]
    path = tmp_path / "oml.pt"
    learner.save_model(path)
    loaded = load_tsar_model(path, expect={"n_classes": 8, "regulated": False})
    assert isinstance(loaded.classifier, OMLClassifier) and loaded.config == net.config
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(loaded(x), net(x))


def test_oml_meta_learning_resumes_to_the_same_weights(tmp_path):
    def learner(path=None):
        torch.manual_seed(0)
        return TSARMetaLearner(TSARNet.oml(8, channels=4, hidden=9), *_meta_data(), n_inner=5, n_outer=6, seed=0,
                               inner_params="head", checkpoint_path=path, checkpoint_every=3)

    full = learner()
    full.fit(6, progress=False)
    learner(tmp_path / "oml.pt").fit(3, progress=False)
    resumed = learner(tmp_path / "oml.pt")
    resumed.fit(6, progress=False)
    assert resumed.iteration == 6 and resumed.history == full.history
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    with pytest.raises(CheckpointError):  # a regulated classifier cannot resume an OML file
        TSARMetaLearner(TSARNet.build(8, **SMALL), *_meta_data(), n_inner=5, n_outer=6, inner_params="head",
                        checkpoint_path=tmp_path / "oml.pt").fit(7, progress=False)


def test_oml_transfer_keeps_the_representation_and_trains_the_prediction_network():
    bench = DomainTransfer("digits", n_classes=2, n_images=3, seed=1)
    torch.manual_seed(0)
    strategy = TSAROML(model=TSARNet.oml(4, channels=4, hidden=9), seed=0,
                       evaluator=make_evaluator(progress_bar=False))
    oml = strategy.model.classifier
    convs = [p.detach().clone() for p in oml.representation_parameters()]
    pln = {n: getattr(oml, n).detach().clone() for n in oml.head_parameter_names()}
    strategy.train(bench.train_stream[0])
    assert all(torch.equal(a, b) for a, b in zip(convs, oml.representation_parameters()))
    assert all(not torch.equal(v, getattr(oml, n)) for n, v in pln.items())
    with pytest.raises(TypeError, match="TSAROML transfers OML's network; this model's classifier is a "
                                        "RegulatedClassifier"):
        TSAROML(model=TSARNet.build(4, bias=None, **SMALL))


def test_transfer_bad_input_errors(tmp_path):
    path, _ = _meta_model_file(tmp_path, n_classes=8)
    with pytest.raises(ValueError, match="train_mb_size must be 1"):
        TSAR.from_checkpoint(path, train_mb_size=16)
    with pytest.raises(CheckpointError, match="n_classes=8"):
        TSAR.from_checkpoint(path, n_classes=100)
    with pytest.raises(CheckpointError, match="regulated"):
        TSARScratch.from_checkpoint(path)
    strategy = TSAR.from_checkpoint(path, evaluator=make_evaluator(progress_bar=False))
    too_many = DomainTransfer("digits", n_classes=10, n_images=1, seed=0)
    strategy.train(too_many.train_stream[:8])
    with pytest.raises(ValueError, match="at most 8 classes"):
        strategy.train(too_many.train_stream[8])
    wrong_size = DomainTransfer("digits", n_classes=2, n_images=2, size=32)
    with pytest.raises(ValueError, match="input_size"):
        strategy.train(wrong_size.train_stream[0])
    with pytest.raises(CheckpointError, match="not a TSAR model"):
        torch.save({"format": "other"}, tmp_path / "other.pt")
        load_tsar_model(tmp_path / "other.pt")


def test_transfer_strategy_checkpoint_resumes_identically(tmp_path):
    path, _ = _meta_model_file(tmp_path)
    bench = DomainTransfer("digits", n_classes=3, n_images=3, seed=2)

    def run(split: bool):
        torch.manual_seed(0)
        strategy = TSAR.from_checkpoint(path, seed=0, evaluator=make_evaluator(progress_bar=False))
        strategy.train(bench.train_stream[0])
        if split:
            strategy.save_checkpoint(tmp_path / "transfer.pt")
            strategy = TSAR.from_checkpoint(path, seed=0, evaluator=make_evaluator(progress_bar=False))
            assert strategy.load_checkpoint(tmp_path / "transfer.pt") == 1
        strategy.train(bench.train_stream[1:])
        return strategy.model.state_dict()

    a, b = run(False), run(True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------

def test_regulation_statistics_by_hand():
    from avalanche_neuromod.analysis import RegulationStatistics

    stats = RegulationStatistics("C1", thresholds=(0.5,))
    masks = torch.tensor([[0.9, 0.6, 0.1, 0.0], [0.2, 0.7, 0.8, 0.9], [1.0, 0.0, 0.0, 0.4]]).view(3, 4, 1, 1, 1)
    stats.update(masks[:2], torch.tensor([0, 1]))
    stats.update(masks[2:], torch.tensor([0]))
    assert stats.active[0.5] == [2, 3, 1]
    np.testing.assert_allclose(stats.total, [1.6, 2.6, 1.4], rtol=1e-6)
    np.testing.assert_allclose(stats.task_specific(), [[0.95, 0.3, 0.05, 0.2], [0.2, 0.7, 0.8, 0.9]], rtol=1e-6)
    np.testing.assert_allclose(stats.task_agnostic(), [[0.2, 0.7, 0.8, 0.9], [0.95, 0.3, 0.05, 0.2]], rtol=1e-6)
    values, p = stats.ccdf(0.5)
    assert values.tolist() == [1, 2, 3] and np.allclose(p, [1.0, 2 / 3, 1 / 3])


def test_regulation_recorder_sees_each_image_as_it_is_learned(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from avalanche_neuromod.analysis import (RegulationRecorder, plot_regulation_ccdf, plot_task_activity,
                                             plot_total_regulation, regulation_statistics)

    bench = DomainTransfer("digits", n_classes=3, n_images=4, seed=0)
    recorder = RegulationRecorder("C3", thresholds=(0.3,))
    strategy = TSAR(model=TSARNet.build(5, bias="sculpt", **SMALL), plugins=[recorder],
                    evaluator=make_evaluator(progress_bar=False))
    first = _images(bench.train_stream[0])[:1]
    expected_first = strategy.model.regulator(first)[2].sum().item()
    strategy.train(bench.train_stream)
    stats = recorder.statistics
    assert stats.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert stats.total[0] == pytest.approx(expected_first, rel=1e-5)
    after = regulation_statistics(strategy.model, bench.test_stream, "C3", thresholds=(0.3,))
    assert after.labels == stats.labels and after.task_specific().shape == (3, 6 * 6 * 9)
    for fig in (plot_regulation_ccdf([stats, after], ["during", "after"]), plot_task_activity(after),
                plot_total_regulation(stats)):
        fig.savefig(tmp_path / "figure.png")
    with pytest.raises(ValueError, match="regulator"):
        regulation_statistics(TSARNet.build(5, bias=None, **SMALL), bench.test_stream)


# ---------------------------------------------------------------------------
# Example and benchmark script, end to end at toy scale
# ---------------------------------------------------------------------------

def test_example_meta_learns_transfers_and_draws_the_figures(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "tsar_domain_transfer.py"
    spec = importlib.util.spec_from_file_location("tsar_domain_transfer", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--meta-iterations", "3", "--channels", "4", "--class-head-lr-scale", "3",
                            "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "digits 0-4 -> digits 5-9" in printed and "scratch" in printed
    assert set(results) == {"grow", "sculpt", "scratch"}
    assert all(len(r["by_position"]) == 5 and 0.0 <= r["recall"] <= 1.0 for r in results.values())
    assert all(len(r["immediate"]) == 5 and all(0.0 <= v <= 1.0 for v in r["immediate"]) for r in results.values())
    assert "just learned" in printed
    for name in ("regulation_ccdf", "task_activity_grow", "total_regulation_grow"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert load_tsar_model(tmp_path / "grow.pt", expect={"regulated": True}).regulator is not None


def _benchmark_on_fake_data(root: Path):
    """``benchmarks/tsar.py`` as a module, with stand-in Fashion-MNIST and Omniglot subsets written under ``root``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tsar as tsar_benchmark
    from conftest import make_fake_mnist

    make_fake_mnist(root, folder="FashionMNIST")
    base = root / "omniglot-py"
    make_omniglot_zip(base, "images_background_small1", {"Greek": 3, "Korean": 2}, drawings=20)
    make_omniglot_zip(base, "images_background_small2", {"Greek": 3, "Tagalog": 3}, drawings=20)
    return tsar_benchmark


def test_benchmark_script_runs_and_reports(tmp_path, fake_mnist_root):
    tsar_benchmark = _benchmark_on_fake_data(fake_mnist_root)
    out = tmp_path / "tsar.json"
    code = tsar_benchmark.main([
        "--dataset-root", str(fake_mnist_root), "--meta-iterations", "2", "--curve-every", "1",
        "--meta-seeds", "0", "--transfer-seeds", "0", "1", "--lr-grid", "1e-3", "3e-4",
        "--classifier-channels", "4", "--regulator-channels", "4", "--n-classes", "12",
        "--omniglot-classes", "3", "--methods", "grow", "sculpt", "scratch", "--out", str(out),
        "--figures", str(tmp_path / "images"), "--no-docs", "--second-order"])
    assert code == 0
    import json

    result = json.loads(out.read_text())
    runs = {r["method"]: r for r in result["runs"]}
    assert set(runs) == {"grow", "sculpt", "scratch"}
    assert set(runs["grow"]["transfers"]) == {"omniglot/0", "omniglot/1", "omniglot_heldout/0", "mnist/0",
                                              "mnist/1", "fashion_mnist/0", "fashion_mnist/1"}
    assert [p["meta_iterations"] for p in runs["grow"]["curve"]] == [1, 2] and runs["scratch"]["curve"] == []
    assert runs["grow"]["lr"] in (1e-3, 3e-4) and set(runs["grow"]["selection_recall"]) == {"0.001", "0.0003"}
    assert len(runs["grow"]["transfers"]["omniglot/0"]["recall_by_position"]) == 3
    immediate = runs["grow"]["transfers"]["omniglot/0"]["immediate_by_position"]
    assert len(immediate) == 3 and all(0.0 <= v <= 1.0 for v in immediate)
    assert "second-order OML" in result["scale"] and result["settings"]["second_order"]
    assert "heldout" in runs["grow"]["transfers"]["mnist/0"]
    above = next(t for t in result["targets"] if t["target"].startswith("Grow above Sculpt"))
    assert above["measured"].endswith("of 2 (meta seed, transfer seed) pairs, 1 meta seed(s)")
    assert not above["met"]  # two transfer seeds and one meta seed are fewer than the target asks
    assert any(t["target"] == "Scratch recall below 5%" for t in result["targets"])
    # The first Omniglot sequence's regulation was recorded image by image for the regulated runs only.
    assert runs["grow"]["regulation_c3"]["images"] == 3 * 20 and "regulation_c3" not in runs["scratch"]
    assert runs["grow"]["regulation_c3"]["synapses"] == 4 * 4 * 3 * 3
    for name in ("regulation_ccdf", "task_activity", "total_regulation"):
        assert (tmp_path / "images" / f"tsar_{name}.png").stat().st_size > 1000
    assert len(result["figures"]) == 3
    section = tsar_benchmark.markdown_section(result)
    assert "| grow | full |" in section and str(tmp_path) not in section
    assert "Regulation of layer C3 (144 synapses)" in section and "tsar_task_activity" in section
    assert "right after that class was learned" in section
    immediate_rows = section.split("right after that class was learned")[1].split("\n\n")[1].splitlines()[2:]
    assert [line.split(" | ")[0] for line in immediate_rows] == ["| grow", "| sculpt", "| scratch"]

    # --append keeps the file's runs, adds another meta seed and replaces a rerun (method, head, meta seed).
    common = ["--dataset-root", str(fake_mnist_root), "--meta-iterations", "2", "--curve-every", "0",
              "--transfer-seeds", "0", "--lr-grid", "1e-3", "--classifier-channels", "4", "--regulator-channels",
              "4", "--n-classes", "12", "--omniglot-classes", "3", "--transfers", "omniglot", "--out", str(out),
              "--figures", str(tmp_path / "images"), "--no-docs", "--second-order", "--append"]
    result["peak_rss_mb"] = 123456.0  # an earlier invocation's peak above anything this process reaches
    out.write_text(json.dumps(result))
    assert tsar_benchmark.main(common + ["--meta-seeds", "1", "0", "--methods", "grow"]) == 0
    merged = json.loads(out.read_text())
    assert merged["peak_rss_mb"] == 123456.0
    assert "Peak resident memory of the whole run (the largest of its invocations): 123456 MB." in \
        tsar_benchmark.markdown_section(merged)
    keys = sorted((r["method"], r["meta_seed"]) for r in merged["runs"])
    assert keys == [("grow", 0), ("grow", 1), ("scratch", 0), ("sculpt", 0)]
    rerun = next(r for r in merged["runs"] if (r["method"], r["meta_seed"]) == ("grow", 0))
    assert set(rerun["transfers"]) == {"omniglot/0"}  # the rerun replaced the first invocation's grow run
    assert len(merged["commands"]) == 2 and all(r["cpu_model"] for r in merged["runs"])
    # The appended invocation drew its runs' figures beside the first invocation's, not over them.
    assert [Path(f).name for f in merged["figures"]] == [
        "tsar_regulation_ccdf.png", "tsar_task_activity.png", "tsar_total_regulation.png",
        "tsar_2_regulation_ccdf.png", "tsar_2_task_activity.png", "tsar_2_total_regulation.png"]
    assert (tmp_path / "images" / "tsar_2_regulation_ccdf.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="--meta-iterations 2, this invocation 3"):
        tsar_benchmark.main([*common, "--meta-iterations", "3", "--meta-seeds", "2", "--methods", "grow"])
    assert tsar_benchmark.machines_line(merged["runs"]) == []
    mixed = [{"cpu_model": "AMD EPYC"}, {"cpu_model": "Intel Xeon"}, {"cpu_model": "Intel Xeon"}]
    assert tsar_benchmark.machines_line(mixed) == [
        "- Runs from more than one machine (AMD EPYC: 1 run(s), Intel Xeon: 2 run(s)); their seconds do not "
        "compare across machines."]


def test_benchmark_runs_the_oml_baseline(tmp_path, fake_mnist_root):
    tsar_benchmark = _benchmark_on_fake_data(fake_mnist_root)
    out = tmp_path / "tsar.json"
    assert tsar_benchmark.main([
        "--dataset-root", str(fake_mnist_root), "--meta-iterations", "2", "--curve-every", "0", "--meta-seeds", "0",
        "--transfer-seeds", "0", "--lr-grid", "1e-3", "--n-classes", "12", "--omniglot-classes", "3",
        "--transfers", "omniglot", "--methods", "oml", "--heads", "full", "hashed", "--oml-channels", "4",
        "--oml-hidden", "8", "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(out),
        "--figures", str(tmp_path / "images"), "--no-docs"]) == 0
    import json

    result = json.loads(out.read_text())
    (run,) = result["runs"]  # one run: the head settings do not apply to OML
    assert (run["method"], run["head"]) == ("oml", "-") and "meta_seconds" in run
    parameters = sum(p.numel() for p in TSARNet.oml(12, channels=4, hidden=8).parameters())
    assert run["oml_network"] == {"channels": 4, "hidden": 8, "parameters": parameters}
    assert run["regulator_bytes"] == {"parameters": 0, "with_adam": 0}
    assert 0.0 <= run["transfers"]["omniglot/0"]["recall"] <= 1.0
    assert (tmp_path / "ck" / "oml_meta0_first-order_c4_h8_n12.pt").exists()
    section = tsar_benchmark.markdown_section(result)
    assert "| oml | - | 0 |" in section and "`TSARNet.oml` with 4 channels" in section and "OML 13.87" in section


def test_benchmark_keeps_meta_learners_and_transfers_with_sgd(tmp_path, fake_mnist_root):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import json

    import tsar as tsar_benchmark

    base = fake_mnist_root / "omniglot-py"
    make_omniglot_zip(base, "images_background_small1", {"Greek": 3, "Korean": 2}, drawings=20)
    make_omniglot_zip(base, "images_background_small2", {"Greek": 3, "Tagalog": 3}, drawings=20)
    checkpoints = tmp_path / "checkpoints"
    common = ["--dataset-root", str(fake_mnist_root), "--curve-every", "1", "--meta-seeds", "0",
              "--transfer-seeds", "0", "--lr-grid", "1e-2", "--classifier-channels", "4", "--regulator-channels",
              "4", "--n-classes", "12", "--omniglot-classes", "3", "--transfers", "omniglot", "--methods", "grow",
              "--figures", str(tmp_path / "images"), "--no-docs", "--checkpoint-dir", str(checkpoints)]
    assert tsar_benchmark.main([*common, "--meta-iterations", "2", "--out", str(tmp_path / "a.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())["runs"][0]
    files = sorted(p.name for p in checkpoints.iterdir())
    assert files == ["grow_full_meta0_first-order_c4_r4_n12.curve.json", "grow_full_meta0_first-order_c4_r4_n12.pt"]
    assert "meta_resumed_at" not in first and first["meta_seconds"] > 0

    # A longer budget continues the file (keeping the curve points before it), here with plain SGD transfers.
    assert tsar_benchmark.main([*common, "--meta-iterations", "3", "--transfer-optimizer", "sgd",
                                "--curve-lr", "1e-2", "--out", str(tmp_path / "b.json")]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    run = result["runs"][0]
    assert run["meta_resumed_at"] == 2 and run["meta_seconds"] > first["meta_seconds"]
    assert run["transfer_optimizer"] == "sgd" and run["lr"] == 1e-2
    assert [p["meta_iterations"] for p in run["curve"]] == [3]  # the earlier points were Adam's at another lr
    assert "Transfer with plain SGD at batch 1" in tsar_benchmark.markdown_section(result)
    # Sparse heads pruned from that meta-learned full-head checkpoint, transferred without meta-learning again.
    assert tsar_benchmark.main([*common, "--meta-iterations", "3", "--heads", "sparse", "--prune-full", "--inputs",
                                "2", "--out", str(tmp_path / "p.json")]) == 0
    pruned = json.loads((tmp_path / "p.json").read_text())["runs"][0]
    assert pruned["head"] == "sparse-s2-pruned" and pruned["meta_resumed_at"] == 3
    assert pruned["converted_from"] == "grow_full_meta0_first-order_c4_r4_n12.pt"
    assert tsar_benchmark.main([*common, "--meta-iterations", "3", "--heads", "sparse", "--prune-full", "--inputs",
                                "2", "--calibrate", "--out", str(tmp_path / "pc.json")]) == 0
    folded = json.loads((tmp_path / "pc.json").read_text())["runs"][0]
    assert folded["head"] == "sparse-s2-pruned-cal" and folded["converted_from"] == pruned["converted_from"]
    # Quantized heads from the same checkpoint (calibrated, head weights frozen in transfer); a full head whose
    # weights are frozen in transfer reuses the full head's meta-learner.
    assert tsar_benchmark.main([*common, "--meta-iterations", "3", "--heads", "quantized", "--bits", "3", "3", "3",
                                "2", "--calibrate", "--out", str(tmp_path / "q.json")]) == 0
    quantized = json.loads((tmp_path / "q.json").read_text())["runs"][0]
    assert quantized["head"] == "quantized-b3.3.3.2-cal" and quantized["meta_resumed_at"] == 3
    assert quantized["converted_from"] == pruned["converted_from"]
    assert quantized["regulator_bytes"]["parameters"] * 5 < first["regulator_bytes"]["parameters"]
    assert tsar_benchmark.main([*common, "--meta-iterations", "3", "--freeze-head-weights",
                                "--out", str(tmp_path / "fw.json")]) == 0
    assert tsar_benchmark.main([*common, "--meta-iterations", "3", "--heads", "quantized", "--dequantize",
                                "--out", str(tmp_path / "dq.json")]) == 0
    decoded = json.loads((tmp_path / "dq.json").read_text())["runs"][0]
    assert decoded["head"] == "quantized-b3-dq"
    assert decoded["regulator_bytes"] == first["regulator_bytes"]  # float rows again, for the transfer
    assert decoded["stored_regulator_bytes"]["parameters"] * 5 < first["regulator_bytes"]["parameters"]
    frozen_weights = json.loads((tmp_path / "fw.json").read_text())["runs"][0]
    assert frozen_weights["head"] == "full-fw" and frozen_weights["meta_resumed_at"] == 3
    # Projected heads from the same checkpoint: the convolutions' heads on 3 directions, the class head full.
    assert tsar_benchmark.main([*common, "--meta-iterations", "3", "--heads", "projected", "--directions", "3",
                                "--out", str(tmp_path / "pj.json")]) == 0
    projected = json.loads((tmp_path / "pj.json").read_text())
    run = projected["runs"][0]
    assert run["head"] == "projected-k3" and run["converted_from"] == pruned["converted_from"]
    assert run["regulator_bytes"]["parameters"] < first["regulator_bytes"]["parameters"]
    assert not projected["targets"]  # no full head in this file to compare it with
    # Several class head scales: each run chooses its scale with its rate on the selection sequence.
    assert tsar_benchmark.main([*common, "--meta-iterations", "3", "--class-head-lr-scale", "2", "5",
                                "--lr-grid", "1e-2", "1e-3", "--methods", "grow", "scratch",
                                "--out", str(tmp_path / "cs.json")]) == 0
    scaled = json.loads((tmp_path / "cs.json").read_text())
    run, scratch = scaled["runs"]
    # Scratch has no regulation head to scale: one selection grid, no scale chosen.
    assert scratch["method"] == "scratch" and "class_head_lr_scale" not in scratch
    assert set(scratch["selection_recall"]) == {"0.01", "0.001"}
    assert run["head"] == "full-cs2_5" and run["meta_resumed_at"] == 3  # the full head's meta-learner again
    assert set(run["selection_recall"]) == {"0.01@cs2", "0.001@cs2", "0.01@cs5", "0.001@cs5"}
    best = max(run["selection_recall"], key=run["selection_recall"].get)
    assert best == f"{run['lr']}@cs{run['class_head_lr_scale']:g}"
    assert f"| {run['lr']} (x{run['class_head_lr_scale']:g}) |" in tsar_benchmark.markdown_section(scaled)
    with pytest.raises(SystemExit, match="holds 3 meta-iterations, more than --meta-iterations 2"):
        tsar_benchmark.main([*common, "--meta-iterations", "2", "--out", str(tmp_path / "c.json")])
    # Adam and SGD transfers are not merged into one file.
    with pytest.raises(SystemExit, match="--transfer-optimizer sgd, this invocation adam"):
        tsar_benchmark.main([*common, "--meta-iterations", "3", "--append", "--out", str(tmp_path / "b.json")])
    # Transfer with frozen shared maps reuses the hashed head's meta-learner, not its curve points.
    hashed = [*common, "--meta-iterations", "2", "--heads", "hashed", "--pool", "2"]
    assert tsar_benchmark.main([*hashed, "--out", str(tmp_path / "h.json")]) == 0
    assert json.loads((tmp_path / "h.json").read_text())["runs"][0]["curve"] != []
    assert tsar_benchmark.main([*hashed, "--freeze-shared", "--out", str(tmp_path / "fs.json")]) == 0
    frozen = json.loads((tmp_path / "fs.json").read_text())["runs"][0]
    assert frozen["head"] == "hashed-p2-fs" and frozen["meta_resumed_at"] == 2
    assert [p["meta_iterations"] for p in frozen["curve"]] == [2]  # its own point at the budget, not meta-it 1's
    assert not any("-fs" in p.name for p in checkpoints.iterdir())


def test_benchmark_checks_each_low_memory_head_against_the_full_one():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tsar as tsar_benchmark

    def row(head, parameters, recall):
        return {"method": "grow", "head": head, "regulator_bytes": {"parameters": parameters},
                "omniglot": {"recall_mean": recall}}

    summary = [row("full", 1100, 30.0), row("factored", 100, 28.5), row("low_rank", 200, 20.0)]
    checked = {t["target"].split(":")[0]: t for t in
               tsar_benchmark.targets(summary, [], {"rank": 2, "code": 24})}
    assert checked["factored heads (code 24)"]["met"]
    assert checked["factored heads (code 24)"]["measured"] == "11.0x smaller, +1.5 points lost"
    assert not checked["low-rank heads (rank 2)"]["met"]  # 5.5x smaller and 10 points lost
    # A factored head of another gain is its own row and target, named with its gain.
    summary.append(row("factored-g8", 100, 25.0))
    checked = {t["target"].split(":")[0]: t for t in
               tsar_benchmark.targets(summary, [], {"rank": 2, "code": 24})}
    assert checked["factored heads (code 24, gain 8)"]["measured"] == "11.0x smaller, +5.0 points lost"
    assert checked["factored heads (code 24)"]["met"] and sum("heads" in name for name in checked) == 3
    summary.append(row("hashed-p512", 90, 29.0))
    checked = {t["target"].split(":")[0]: t for t in
               tsar_benchmark.targets(summary, [], {"rank": 2, "code": 24})}
    assert checked["hashed heads (pool 512)"]["met"]
    summary.append(row("projected-k24", 300, 30.5))  # a projected head is checked too: 3.7x smaller, no loss
    checked = {t["target"].split(":")[0]: t for t in
               tsar_benchmark.targets(summary, [], {"rank": 2, "code": 24})}
    projected = checked["projected heads (the convolutions' heads projected onto 24 feature directions, from the "
                        "meta-learned full heads)"]
    assert not projected["met"] and projected["measured"] == "3.7x smaller, -0.5 points lost"
    # A head transferred with a faster class head is checked against the full head transferred the same way.
    summary += [row("projected-k24-cs3", 100, 50.0), row("full-cs3", 1100, 51.0)]
    checked = {t["target"].split(":")[0]: t for t in
               tsar_benchmark.targets(summary, [], {"rank": 2, "code": 24})}
    scaled = next(t for name, t in checked.items() if name.startswith("projected") and "3x faster" in name)
    assert scaled["met"] and scaled["measured"] == "11.0x smaller, +1.0 points lost"


def test_benchmark_checks_grow_above_sculpt_for_each_transfer_setting():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tsar as tsar_benchmark

    def run(method, head, meta_seed, recalls):
        return {"method": method, "head": head, "meta_seed": meta_seed,
                "transfers": {f"omniglot/{i}": {"recall": r} for i, r in enumerate(recalls)}}

    def row(method, head):
        return {"method": method, "head": head, "regulator_bytes": {"parameters": 1}}

    runs = [run("grow", "full", 0, [0.5, 0.5, 0.5]), run("sculpt", "full", 0, [0.2, 0.6, 0.2]),
            run("grow", "full", 1, [0.5, 0.5, 0.5]), run("sculpt", "full", 1, [0.2, 0.2, 0.2]),
            run("grow", "full-cs3", 0, [0.7, 0.7, 0.7]), run("sculpt", "full-cs3", 0, [0.3, 0.3, 0.3]),
            run("grow", "full-cs3", 1, [0.7, 0.7, 0.7]), run("sculpt", "full-cs3", 1, [0.3, 0.3, 0.3])]
    summary = [row(m, h) for m in ("grow", "sculpt") for h in ("full", "full-cs3")]
    checked = [t for t in tsar_benchmark.targets(summary, runs, {}) if t["target"].startswith("Grow above Sculpt")]
    plain, scaled = checked  # one target per transfer setting, each over its own runs
    assert plain["target"].startswith("Grow above Sculpt on every") and not plain["met"]
    assert plain["measured"] == "Grow above Sculpt on 5 of 6 (meta seed, transfer seed) pairs, 2 meta seed(s)"
    assert "learning 3x faster in transfer" in scaled["target"] and scaled["met"]
    assert scaled["measured"] == "Grow above Sculpt on 6 of 6 (meta seed, transfer seed) pairs, 2 meta seed(s)"
    # A setting Sculpt was not run with has no target.
    assert len([t for t in tsar_benchmark.targets(summary[:3], runs, {})
                if t["target"].startswith("Grow above Sculpt")]) == 1


def test_benchmark_head_labels_and_labelled_result_files():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tsar as tsar_benchmark

    args = tsar_benchmark.parse_args(["--heads", "full", "factored", "--gain", "8", "--label", "budget-x"])
    assert [tsar_benchmark.head_label(h, args) for h in args.heads] == ["full", "factored-g8"]
    assert args.out.name == "tsar_budget_x.json"  # a labelled grid never writes over the main tsar.json
    plain = tsar_benchmark.parse_args([])
    assert tsar_benchmark.head_label("factored", plain) == "factored" and plain.out.name == "tsar.json"
    model = tsar_benchmark.fresh_model("grow", "factored", args, seed=0)
    assert all(head.gain == 8.0 for head in model.regulator.heads)
    hashed = tsar_benchmark.parse_args(["--heads", "hashed", "--pool", "64"])
    assert tsar_benchmark.head_label("hashed", hashed) == "hashed-p64"
    split = tsar_benchmark.parse_args(["--heads", "hashed", "--pool-total", "2048"])
    assert tsar_benchmark.head_label("hashed", split) == "hashed-t2048"
    assert [h.pool for h in tsar_benchmark.fresh_model("grow", "hashed", split, seed=0).regulator.heads] == [
        69, 735, 734, 510]  # the default sizes: 32 channels, 200 outputs
    assert tsar_benchmark.head_name("hashed-t2048", {}) == (
        "hashed heads (2048 read-outs split in proportion to the layers)")
    mixed = tsar_benchmark.parse_args(["--heads", "hashed", "--pool-total", "1792", "--hashes", "2"])
    assert tsar_benchmark.head_label("hashed", mixed) == "hashed-t1792-k2"
    assert tsar_benchmark.head_name("hashed-t1792-k2", {}) == (
        "hashed heads (1792 read-outs split in proportion to the layers, 2 per entry)")
    assert tsar_benchmark.head_name("hashed-p64-k3", {}) == "hashed heads (pool 64, 3 per entry)"
    frozen = tsar_benchmark.parse_args(["--heads", "full", "hashed", "--pool-total", "2048", "--freeze-shared"])
    assert [tsar_benchmark.head_label(h, frozen) for h in frozen.heads] == ["full", "hashed-t2048-fs"]
    assert tsar_benchmark.head_label("hashed", frozen, transfer=False) == "hashed-t2048"  # the checkpoint's name
    assert tsar_benchmark.head_name("hashed-t2048-fs", {}) == (
        "hashed heads (2048 read-outs split in proportion to the layers, shared maps frozen in transfer)")
    assert tsar_benchmark.head_name("factored-g8-fs", {"code": 24}) == (
        "factored heads (code 24, gain 8, shared maps frozen in transfer)")
    assert tsar_benchmark.strategy_for("grow", True).keywords == {"freeze_shared": True, "freeze_head_weights": False}
    assert tsar_benchmark.strategy_for("scratch", True) is tsar_benchmark.strategy_for("scratch")
    assert all(h.hashes == 2 for h in tsar_benchmark.fresh_model("grow", "hashed", mixed, seed=0).regulator.heads)
    model = tsar_benchmark.fresh_model("grow", "hashed", hashed, seed=0)
    assignment_bytes = sum(b.numel() * b.element_size() for b in model.regulator.buffers())
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.regulator.parameters())
    assert assignment_bytes > 0  # the regulator's memory counts the hashed heads' assignments
    assert tsar_benchmark.regulator_bytes(model) == {"parameters": parameter_bytes + assignment_bytes,
                                                     "with_adam": 3 * parameter_bytes + assignment_bytes}
    sparse = tsar_benchmark.parse_args(["--heads", "sparse", "--inputs", "16", "--gain", "18"])
    assert tsar_benchmark.head_label("sparse", sparse) == "sparse-s16-g18"
    assert tsar_benchmark.head_label("sparse", tsar_benchmark.parse_args(["--inputs", "24"])) == "sparse-s24"
    assert tsar_benchmark.head_name("sparse-s16-g18", {}) == "sparse heads (16 inputs per entry, gain 18)"
    assert tsar_benchmark.head_name("sparse-s24", {}) == "sparse heads (24 inputs per entry)"
    pruned = tsar_benchmark.parse_args(["--heads", "sparse", "--prune-full"])
    assert tsar_benchmark.head_label("sparse", pruned) == "sparse-s16-pruned"
    assert tsar_benchmark.head_name("sparse-s16-pruned", {}) == (
        "sparse heads (16 inputs per entry, pruned from the meta-learned full heads)")
    folded = tsar_benchmark.parse_args(["--heads", "sparse", "--prune-full", "--calibrate"])
    assert tsar_benchmark.head_label("sparse", folded) == "sparse-s16-pruned-cal"
    assert tsar_benchmark.head_name("sparse-s16-pruned-cal", {}) == (
        "sparse heads (16 inputs per entry, pruned from the meta-learned full heads, the pruned weights' mean "
        "folded into the biases)")
    projected = tsar_benchmark.parse_args(["--heads", "projected", "--directions", "8"])
    assert tsar_benchmark.head_label("projected", projected) == "projected-k8"
    every = tsar_benchmark.parse_args(["--heads", "projected", "--project-heads", "3", "0", "1", "2"])
    assert tsar_benchmark.head_label("projected", every) == "projected-k24-p0.1.2.3"
    assert tsar_benchmark.head_label("projected", tsar_benchmark.parse_args(["--project-heads", "2", "1", "0"])) == (
        "projected-k24")  # the default set, in any order
    assert tsar_benchmark.head_name("projected-k8", {}) == (
        "projected heads (the convolutions' heads projected onto 8 feature directions, from the meta-learned full "
        "heads)")
    assert tsar_benchmark.head_name("projected-k24-p0.1.2.3", {}) == (
        "projected heads (heads 0, 1, 2, 3 projected onto 24 feature directions, from the meta-learned full heads)")
    quantized = tsar_benchmark.parse_args(["--heads", "quantized", "--calibrate", "--freeze-head-weights"])
    assert tsar_benchmark.head_label("quantized", quantized) == "quantized-b3-cal-fw"
    assert tsar_benchmark.head_label("quantized", quantized, transfer=False) == "quantized-b3-cal"
    assert tsar_benchmark.head_name("quantized-b3-cal-fw", {}) == (
        "quantized heads (3 bits per weight, from the meta-learned full heads, biases calibrated, head weights "
        "frozen in transfer)")
    assert tsar_benchmark.head_name("quantized-b3-dq", {}) == (
        "quantized heads (3 bits per weight, from the meta-learned full heads, decoded to float rows for transfer)")
    assert tsar_benchmark.head_name("quantized-b3.3.3.2", {}) == (
        "quantized heads (3 / 3 / 3 / 2 (per layer) bits per weight, from the meta-learned full heads)")
    scaled = tsar_benchmark.parse_args(["--heads", "full", "projected", "--class-head-lr-scale", "3"])
    assert [tsar_benchmark.head_label(h, scaled) for h in scaled.heads] == ["full-cs3", "projected-k24-cs3"]
    assert tsar_benchmark.head_label("full", scaled, transfer=False) == "full"  # the same meta-learned checkpoint
    assert tsar_benchmark.head_name("projected-k24-cs3", {}) == (
        "projected heads (the convolutions' heads projected onto 24 feature directions, from the meta-learned full "
        "heads, class prediction head learning 3x faster in transfer)")
    chosen = tsar_benchmark.parse_args(["--class-head-lr-scale", "1.5", "2", "3"])
    assert tsar_benchmark.head_label("full", chosen) == "full-cs1.5_2_3"
    assert tsar_benchmark.head_name("projected-k24-cs1.5_2_3", {}).endswith(
        "class prediction head learning 1.5x, 2x or 3x faster (chosen on the selection sequence) in transfer)")
    assert tsar_benchmark.strategy_for("grow", class_head_lr_scale=3.0).keywords == {
        "freeze_shared": False, "freeze_head_weights": False, "class_head_lr_scale": 3.0}
    assert tsar_benchmark.strategy_for("reservoir", class_head_lr_scale=3.0) is tsar_benchmark.strategy_for("reservoir")
    assert tsar_benchmark.strategy_for("grow", freeze_head_weights=True).keywords == {
        "freeze_shared": False, "freeze_head_weights": True}
    convs = tsar_benchmark.parse_args(["--freeze-head-weights", "0", "1", "2"])
    assert tsar_benchmark.head_label("full", convs) == "full-fw0.1.2"
    assert tsar_benchmark.frozen_head_weights(convs) == [0, 1, 2]
    assert tsar_benchmark.frozen_head_weights(quantized) is True
    assert tsar_benchmark.frozen_head_weights(tsar_benchmark.parse_args([])) is False
    assert tsar_benchmark.head_name("quantized-b3-fw0.1", {}) == (
        "quantized heads (3 bits per weight, from the meta-learned full heads, head weights frozen in transfer "
        "(heads 0, 1))")
    model = tsar_benchmark.fresh_model("grow", "sparse", sparse, seed=0)
    assert all(h.inputs == 16 and h.gain == 18.0 for h in model.regulator.heads)
    # 25,696 entries x (16 weights + 1 bias) x 4 bytes and 16 two-byte indices, the trunk's parameters besides
    trunk = sum(p.numel() * p.element_size() for p in model.regulator.trunk_parameters())
    assert tsar_benchmark.regulator_bytes(model)["parameters"] == 25696 * (17 * 4 + 16 * 2) + trunk


def test_benchmark_memory_recall_figure_lists_grow_heads_once(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tsar as tsar_benchmark

    def row(method, head, parameters, recall, std):
        return {"method": method, "head": head, "regulator_bytes": {"parameters": parameters},
                "omniglot": {"recall_mean": recall, "recall_std": std, "runs": 3}}

    summary = [row("grow", "sparse-s16", 2_500_000, 21.0, 1.5), row("sculpt", "full", 28_000_000, 20.0, 2.0),
               row("grow", "hashed-t2048", 2_700_000, 31.0, None), row("grow", "full", 28_000_000, 64.0, 2.0),
               {"method": "grow", "head": "low_rank", "regulator_bytes": {"parameters": 1}}]  # no Omniglot runs
    points = tsar_benchmark.memory_recall(summary)
    assert [p["head"] for p in points] == ["full", "hashed-t2048", "sparse-s16"]  # full first, then by memory
    assert points[0]["megabytes"] == 28.0 and points[1]["recall_std"] == 0.0  # one run: no spread drawn
    earlier = ["docs/images/tsar_x_regulation_ccdf.png"]
    figures = tsar_benchmark.with_memory_recall(earlier, summary, tmp_path, "budget-x")
    drawn = tmp_path / "tsar_budget_x_memory_recall.png"
    assert drawn.stat().st_size > 0 and figures[1:] == earlier and figures[0].endswith(drawn.name)
    assert tsar_benchmark.with_memory_recall(figures, summary, tmp_path, "budget-x") == figures  # listed once
    assert tsar_benchmark.with_memory_recall(earlier, summary[:1], tmp_path, "y") == earlier  # one head: none
