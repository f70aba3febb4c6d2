"""Lazy experience data: rotation and permutation against their definitions, fast read path."""

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from avalanche.benchmarks.utils import AvalancheDataset
from avalanche_neuromod.benchmarks import (
    LazyImageData,
    cache_info,
    load_digits,
    make_classification_dataset,
    permute_pixels,
    rotate_images,
    set_cache_budget,
)
from avalanche_neuromod.benchmarks.tensor_data import (
    MATERIALISE_AFTER,
    REMATERIALISE_FRACTION,
    _STORE,
    SampleBatch,
    fast_collate,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits(train=False)


@pytest.mark.parametrize("angle", [10, 30, 90, 135, 200, 350, 12.5])
def test_rotation_matches_torchvision_exactly(digits, angle):
    x = digits[0][:64]
    expected = TF.rotate(x, angle, interpolation=InterpolationMode.NEAREST)
    got = rotate_images(x.float(), angle).round().to(torch.uint8)
    assert torch.equal(got, expected)


def test_rotation_by_full_turns_and_quarter_turns(digits):
    x = digits[0][:16].float()
    assert torch.equal(rotate_images(x, 0.0), x)
    assert torch.equal(rotate_images(x, 360.0), x)
    assert torch.equal(rotate_images(x, 90.0), torch.rot90(x, 1, dims=(2, 3)))


def test_per_sample_angles_equal_fixed_angles(digits):
    x = digits[0][:8].float()
    angles = torch.tensor([0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
    batch = rotate_images(x, angles)
    for i, a in enumerate(angles.tolist()):
        assert torch.equal(batch[i : i + 1], rotate_images(x[i : i + 1], a))
    with pytest.raises(ValueError, match="angles"):
        rotate_images(x, torch.zeros(3))
    with pytest.raises(ValueError, match="interpolation"):
        rotate_images(x, 10.0, "cubic")


def test_permute_pixels_definition():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).reshape(2, 1, 2, 2)
    perm = torch.tensor([3, 0, 2, 1])
    out = permute_pixels(x, perm)
    assert out[0].reshape(-1).tolist() == [3.0, 0.0, 2.0, 1.0]
    assert out[1].reshape(-1).tolist() == [7.0, 4.0, 6.0, 5.0]
    with pytest.raises(ValueError, match="permutation"):
        permute_pixels(x, torch.tensor([0, 1]))


def test_lazy_view_equals_rotate_normalise_permute(digits):
    x, y = digits
    perm = torch.from_numpy(__import__("numpy").random.RandomState(3).permutation(784))
    data = LazyImageData(x, y, angles=30.0, permutation=perm, mean=(0.13,), std=(0.31,))
    reference = permute_pixels((rotate_images(x.float() / 255.0, 30.0) - 0.13) / 0.31, perm)
    assert torch.equal(data.materialise(), reference)
    bilinear = LazyImageData(x, y, angles=30.0, interpolation="bilinear")
    assert torch.allclose(bilinear.materialise(), rotate_images(x.float() / 255.0, 30.0, "bilinear"))


def test_lazy_view_options(digits):
    x, y = digits
    idx = torch.tensor([5, 1, 7])
    data = LazyImageData(x, y, idx, channels=3, flatten=True)
    assert data.sample_shape == (3 * 784,)
    out = data.materialise()
    assert out.shape == (3, 3 * 784)
    assert torch.equal(out[1, :784], x[1].reshape(-1).float() / 255.0)
    assert [data[i][1] for i in range(3)] == y[idx].tolist()
    with pytest.raises(ValueError, match="uint8"):
        LazyImageData(x.float(), y)
    with pytest.raises(ValueError, match="labels"):
        LazyImageData(x, y[:3])


def _generic(ds, i):
    return AvalancheDataset.__getitem__(ds, i)


def _same(a, b):
    return len(a) == len(b) and torch.equal(a[0], b[0]) and list(a[1:]) == list(b[1:])


def test_fast_path_returns_exactly_the_generic_items(digits):
    x, y = digits
    ds = make_classification_dataset(LazyImageData(x, y, angles=20.0), task_label=3)
    views = [ds, ds.train(), ds.eval(), ds.subset([9, 2, 4, 100]), ds.subset(range(50, 80)).subset([3, 0, 7])]
    for view in views:
        assert view._resolve_direct() is not None
        for i in range(len(view)):
            assert _same(view[i], _generic(view, i))
    assert ds[0][2] == 3


def test_fast_path_steps_aside_for_transforms_and_concat(digits):
    x, y = digits
    flip = lambda img: img.flip(-1)  # noqa: E731
    ds = make_classification_dataset(LazyImageData(x, y), task_label=0, train_transform=flip, eval_transform=None)
    assert ds._resolve_direct() is None
    assert torch.equal(ds.train()[0][0], ds.eval()[0][0].flip(-1))
    a = make_classification_dataset(LazyImageData(x, y), task_label=0)
    b = make_classification_dataset(LazyImageData(x, y, angles=90.0), task_label=1)
    both = a.concat(b)
    assert both._resolve_direct() is None
    assert both[len(a)][2] == 1 and _same(both[len(a)], b[0])


@pytest.fixture
def room_for(digits):
    """Set the store's budget to room for N materialised digit experiences (restored afterwards)."""
    previous = _STORE.budget_bytes
    one = LazyImageData(*digits).materialise()

    def set_room(n_experiences: float) -> None:
        set_cache_budget(n_experiences * one.numel() * 4 / 2**20)
        _STORE.clear()

    yield set_room
    _STORE.budget_bytes = previous
    _STORE.clear()


def test_cache_is_bounded(digits, room_for):
    x, y = digits
    room_for(2.5)
    datas = [LazyImageData(x, y, angles=float(a)) for a in range(5)]
    for d in datas:
        d.rows()
    info = cache_info()
    assert info["entries"] == 2 and info["bytes"] <= info["budget_bytes"]
    assert [d._held is None for d in datas] == [True, True, True, False, False]
    assert torch.equal(datas[0][0][0], datas[0].materialise()[0])
    with pytest.raises(ValueError, match="budget"):
        set_cache_budget(0)


def test_a_dropped_experience_is_materialised_again_only_after_dense_reads(digits, monkeypatch, room_for):
    # Two experiences read in turn, one sample each, with room for one: the
    # rule must not recompute a whole experience for every other sample.
    import avalanche_neuromod.benchmarks.tensor_data as tensor_data

    monkeypatch.setattr(tensor_data, "MATERIALISE_AFTER", 10)
    x, y = digits
    room_for(1.5)
    a, b = LazyImageData(x, y, angles=30.0), LazyImageData(x, y, angles=60.0)
    reference = {id(a): a.materialise(), id(b): b.materialise()}
    start = cache_info()["materialised"]
    for d in (a, b):  # each past the first threshold: a is materialised, then dropped for b
        for i in range(11):
            assert torch.equal(d[i][0], reference[id(d)][i])
    assert (a._held is None, b._held is not None, a.drops, b.drops) == (True, True, 1, 0)
    assert cache_info()["materialised"] == start + 2
    threshold = int(len(a) * REMATERIALISE_FRACTION)
    assert threshold > 10
    for i in range(threshold):  # up to the threshold since the drop: a computes single samples
        assert torch.equal(a[i % len(a)][0], reference[id(a)][i % len(a)])
    assert a._held is None and cache_info()["materialised"] == start + 2
    assert torch.equal(a[5][0], reference[id(a)][5])  # dense enough now: materialised again
    assert a._held is not None and b._held is None and b.drops == 1
    assert cache_info()["materialised"] == start + 3


def test_fast_collate_equals_default_collate(digits):
    from torch.utils.data import default_collate

    from avalanche_neuromod.benchmarks.tensor_data import fast_collate

    x, y = digits
    ds = make_classification_dataset(LazyImageData(x, y, angles=10.0), task_label=2)
    batch = [ds[i] for i in range(5)]
    fast, slow = fast_collate(batch), default_collate(batch)
    assert len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        assert torch.equal(a, b) and a.dtype == b.dtype
    odd = [(torch.zeros(2), torch.tensor(1)), (torch.ones(2), torch.tensor(0))]
    assert torch.equal(fast_collate(odd)[1], torch.tensor([1, 0]))
    assert ds.collate_fn is fast_collate


def test_lazy_data_pickles_without_its_cache(digits):
    import pickle

    x, y = digits
    data = LazyImageData(x[:20], y[:20], angles=30.0)
    first = data[0][0].clone()
    copy = pickle.loads(pickle.dumps(data))
    assert copy._held is None
    assert torch.equal(copy[0][0], first)
    ds = make_classification_dataset(data, task_label=1)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert _same(clone[3], ds[3])


def test_batched_reads_equal_item_reads(digits):
    from torch.utils.data import DataLoader, default_collate

    x, y = digits
    ds = make_classification_dataset(LazyImageData(x, y, angles=15.0), task_label=4).subset(list(range(40, 90)))
    loader = DataLoader(ds, batch_size=16, shuffle=False, collate_fn=ds.collate_fn)
    for k, batch in enumerate(loader):
        expected = default_collate([_generic(ds, i) for i in range(16 * k, min(16 * (k + 1), len(ds)))])
        assert len(batch) == 3
        for a, b in zip(batch, expected):
            assert torch.equal(a, b) and a.dtype == b.dtype
    flip = make_classification_dataset(LazyImageData(x, y), 0, train_transform=lambda im: im.flip(-1))
    assert not isinstance(flip.__getitems__([0, 1]), type(ds.__getitems__([0, 1])))


def test_a_collected_experience_leaves_the_store(digits):
    import gc

    x, y = digits
    _STORE.clear()
    data = LazyImageData(x[:10], y[:10])
    data.rows()
    assert cache_info()["entries"] == 1
    del data
    gc.collect()
    assert cache_info() == {**cache_info(), "entries": 0, "bytes": 0}


VIEWS = {
    "identity": {},
    "permutation": {"permutation": torch.randperm(784, generator=torch.Generator().manual_seed(3))},
    "rotation": {"angles": 30.0},
    "rotation_normalised_permuted": {
        "angles": 50.0, "mean": (0.13,), "std": (0.31,),
        "permutation": torch.randperm(784, generator=torch.Generator().manual_seed(4)),
    },
    "per_sample_angles": {"angles": "one per sample"},
    "bilinear": {"angles": 20.0, "interpolation": "bilinear"},
    "three_channels": {"channels": 3},
    "flat": {"flatten": True, "mean": (0.5,), "std": (0.25,)},
    "rows_of_the_base": {"indices": torch.arange(420, 0, -1), "angles": 90.0, "mean": (0.2,), "std": (0.4,)},
}


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_batch_reads_equal_single_reads_and_skip_materialising(digits, view):
    x, y = digits
    kwargs = dict(VIEWS[view])
    if kwargs.get("angles") == "one per sample":
        kwargs["angles"] = torch.linspace(0, 350, len(y))
    data = LazyImageData(x, y, **kwargs)
    ds = make_classification_dataset(data, task_label=3).subset(list(range(5, 300)))
    picks = [7, 0, 150, 3, 294, 7]
    before = cache_info()["materialised"]
    batch = ds.__getitems__(picks)
    assert isinstance(batch, SampleBatch) and len(batch) == len(picks)
    assert cache_info()["materialised"] == before, "a batch read must not materialise the experience"
    for i, item in zip(picks, batch):
        single = ds[i]
        assert torch.equal(item[0], single[0]) and item[1:] == single[1:]
        assert [type(v) for v in item] == [type(v) for v in single]
    assert torch.equal(data.materialise()[torch.tensor([12, 5])], data.materialise([12, 5]))


def test_default_collate_dataloader_over_our_datasets(digits):
    from torch.utils.data import DataLoader, default_collate

    x, y = digits
    ds = make_classification_dataset(LazyImageData(x, y, angles=10.0), task_label=1)
    batch = next(iter(DataLoader(ds, batch_size=16)))
    expected = default_collate([ds[i] for i in range(16)])
    assert [t.shape for t in batch] == [(16, 1, 28, 28), (16,), (16,)]
    for a, b in zip(batch, expected):
        assert torch.equal(a, b) and a.dtype == b.dtype
    items = ds.__getitems__([1, 2, 3])
    assert torch.equal(fast_collate(items)[0], default_collate(items)[0])
    assert [i[1] for i in items[0:2]] == [ds[1][1], ds[2][1]]
    with pytest.raises(IndexError):
        ds.__getitems__([len(ds)])


def test_single_reads_materialise_only_a_sample_wise_pass(digits, monkeypatch):
    import avalanche_neuromod.benchmarks.tensor_data as tensor_data

    assert MATERIALISE_AFTER == 512
    monkeypatch.setattr(tensor_data, "MATERIALISE_AFTER", 40)  # the digits test set has 450 images
    x, y = digits
    data = LazyImageData(x, y, angles=20.0, mean=(0.1,), std=(0.3,))
    ds = make_classification_dataset(data, task_label=0)
    reference = data.materialise()
    before = cache_info()["materialised"]
    peeks = [ds[i][0] for i in range(40)]
    assert data._held is None and cache_info()["materialised"] == before
    assert all(torch.equal(p, reference[i]) for i, p in enumerate(peeks))
    assert torch.equal(ds[-1][0], reference[-1])  # one read past the threshold materialises
    assert data._held is not None and cache_info()["materialised"] == before + 1
    assert torch.equal(ds[3][0], reference[3])
    with pytest.raises(IndexError):
        LazyImageData(x, y)[len(y)]


@pytest.mark.parametrize("transform", [lambda x: rotate_images(x, 30.0), lambda x: permute_pixels(x, torch.arange(64))])
def test_image_transforms_name_the_missing_axes(transform):
    with pytest.raises(ValueError, match=r"expects a batch of images \(N, C, H, W\); got \(5, 8, 8\)") as info:
        transform(torch.rand(5, 8, 8))
    assert "images.unsqueeze(1)" in str(info.value)
    assert transform(torch.rand(5, 1, 8, 8)).shape == (5, 1, 8, 8)
