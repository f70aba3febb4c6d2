"""MNIST-360: the general-continual-learning stream of Dynamos (Mammoth's definition).

Digits 0-8 rotate continuously while the stream walks through the class
pairs (0,1), (1,2), ..., (8,0) three times. There are no task boundaries: a
strategy should be trained on :attr:`MNIST360Benchmark.online_train_stream`,
whose experiences are the stream's mini-batches, in order.

The whole schedule (which image, at which angle, in which batch) is computed
up front by :func:`mnist360_schedule`, because the angle of an image depends
on how many images of its class were drawn before it: it cannot be a
per-sample transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np
import torch

from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import CLStream
from avalanche.benchmarks.scenarios.online import OnlineCLExperience

from .sources import PathLike
from .streams import NeuromodBenchmark, _experience, _stream, load_source
from .tensor_data import LazyImageData, make_classification_dataset

__all__ = [
    "MNIST360_CLASSES",
    "MNIST360Schedule",
    "mnist360_chunks",
    "mnist360_schedule",
    "mnist360_test_angles",
    "MNIST360Benchmark",
    "MNIST360",
]

MNIST360_CLASSES = 9
"""MNIST-360 uses the digits 0 to 8."""

CHUNKS_PER_CLASS = 6


@dataclass
class MNIST360Schedule:
    """The drawn training sequence, one entry per sample, in stream order.

    :param indices: positions in the source training set.
    :param labels: class of each sample.
    :param angles: rotation of each sample, in degrees.
    :param stages: stage (0..26) of each sample.
    :param batches: global mini-batch number of each sample.
    :param stage_pairs: the two classes of each stage.
    """

    indices: np.ndarray
    labels: np.ndarray
    angles: np.ndarray
    stages: np.ndarray
    batches: np.ndarray
    stage_pairs: List[tuple]

    def __len__(self) -> int:
        return len(self.indices)

    def batch_bounds(self) -> np.ndarray:
        """Start offsets of every mini-batch, plus the end of the sequence."""
        starts = np.flatnonzero(np.diff(self.batches, prepend=-1) != 0)
        return np.append(starts, len(self.batches))

    def stage_bounds(self) -> np.ndarray:
        """Start offsets of every stage, plus the end of the sequence."""
        starts = np.flatnonzero(np.diff(self.stages, prepend=-1) != 0)
        return np.append(starts, len(self.stages))


def mnist360_chunks(labels: np.ndarray, n_classes: int = MNIST360_CLASSES) -> List[List[np.ndarray]]:
    """Cut each class's training images, in dataset order, into 6 chunks.

    Every chunk holds ``floor(N_j / 6) + 1`` images (the last one fewer).

    :param labels: labels of the source training set.
    :param n_classes: the classes 0..n_classes-1 are used.
    """
    chunks = []
    for j in range(n_classes):
        idx = np.flatnonzero(labels == j)
        size = len(idx) // CHUNKS_PER_CLASS + 1
        chunks.append([idx[k : k + size] for k in range(0, len(idx), size)])
    return chunks


def mnist360_schedule(
    labels: np.ndarray,
    batch_size: int = 16,
    n_rounds: int = 3,
    replacement: bool = False,
    seed: int = 0,
) -> MNIST360Schedule:
    """Draw the MNIST-360 training sequence.

    The stream visits the class pairs (0,1), (1,2), ..., (7,8), (8,0) in
    ``n_rounds`` rounds; each visit of a class takes its next chunk, last
    chunk first. A batch of ``B`` takes ``b0 = min(round(r0 / (r0 + r1) * B), r0)``
    samples from the first chunk and ``b1 = min(B - b0, r1)`` from the
    second, ``r`` being what remains of each chunk. A stage ends when either
    chunk is exhausted; the other chunk's leftover is dropped. The ``n``-th
    image of class ``j`` drawn (``n`` from 0) is rotated by
    ``((j - 1) * 60 + n * 360 / N_j) mod 360`` degrees.

    :param labels: labels of the source training set (MNIST's, in order).
    :param batch_size: ``B``; Dynamos uses 16.
    :param n_rounds: rounds over the 9 class pairs (3: 27 stages).
    :param replacement: draw each sample at random with replacement from
        its chunk (the original code); the default draws without
        replacement, in a random order fixed by ``seed``.
    :param seed: seed of the drawing order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if n_rounds < 1 or n_rounds > CHUNKS_PER_CLASS // 2:
        raise ValueError(
            f"n_rounds must be between 1 and {CHUNKS_PER_CLASS // 2} (each round "
            f"uses two of the 6 chunks of every class), got {n_rounds}."
        )
    labels = np.asarray(labels)
    n_classes = MNIST360_CLASSES
    chunks = mnist360_chunks(labels, n_classes)
    for j, pieces in enumerate(chunks):
        if len(pieces) < 2 * n_rounds:
            raise ValueError(
                f"class {j} has {int((labels == j).sum())} training images, cut into {len(pieces)} chunk(s); "
                f"{n_rounds} round(s) take {2 * n_rounds} chunks of every class 0..{n_classes - 1}. Fix: a source "
                f"with enough images of every digit 0..{n_classes - 1} (a few dozen each), or fewer n_rounds."
            )
    class_sizes = [int((labels == j).sum()) for j in range(n_classes)]
    drawn = [0] * n_classes
    rng = np.random.RandomState(seed)
    out_idx: List[int] = []
    out_lab: List[int] = []
    out_ang: List[float] = []
    out_stage: List[int] = []
    out_batch: List[int] = []
    pairs = []
    batch_no = 0

    def take(j: int, pool: np.ndarray, cursor: int, count: int) -> List[int]:
        if replacement:
            picked = pool[rng.randint(0, len(pool), size=count)].tolist()
        else:
            picked = pool[cursor : cursor + count].tolist()
        for i in picked:
            angle = ((j - 1) * 60 + drawn[j] * 360.0 / class_sizes[j]) % 360
            drawn[j] += 1
            out_idx.append(i)
            out_lab.append(j)
            out_ang.append(angle)
        return picked

    for _ in range(n_rounds):
        for first in range(n_classes):
            stage = len(pairs)
            pair = (first, (first + 1) % n_classes)
            pairs.append(pair)
            pools = []
            for j in pair:
                chunk = chunks[j].pop()
                pools.append(chunk if replacement else rng.permutation(chunk))
            remaining = [len(p) for p in pools]
            cursors = [0, 0]
            while remaining[0] > 0 and remaining[1] > 0:
                b0 = min(int(round(remaining[0] / (remaining[0] + remaining[1]) * batch_size)), remaining[0])
                b1 = min(batch_size - b0, remaining[1])
                for k, count in ((0, b0), (1, b1)):
                    take(pair[k], pools[k], cursors[k], count)
                    cursors[k] += count
                    remaining[k] -= count
                out_stage.extend([stage] * (b0 + b1))
                out_batch.extend([batch_no] * (b0 + b1))
                batch_no += 1
    return MNIST360Schedule(
        indices=np.asarray(out_idx, dtype=np.int64),
        labels=np.asarray(out_lab, dtype=np.int64),
        angles=np.asarray(out_ang, dtype=np.float64),
        stages=np.asarray(out_stage, dtype=np.int64),
        batches=np.asarray(out_batch, dtype=np.int64),
        stage_pairs=pairs,
    )


def mnist360_test_angles(labels: np.ndarray, n_classes: int = MNIST360_CLASSES) -> np.ndarray:
    """Rotation of each test image: per class from 0 degrees in steps of ``360 / N_j``.

    :param labels: labels of the test images, in order.
    :param n_classes: classes 0..n_classes-1.
    """
    labels = np.asarray(labels)
    angles = np.zeros(len(labels), dtype=np.float64)
    for j in range(n_classes):
        idx = np.flatnonzero(labels == j)
        angles[idx] = np.arange(len(idx)) * 360.0 / len(idx)
    return angles


class MNIST360Benchmark(NeuromodBenchmark):
    """The MNIST-360 benchmark.

    Streams:

    - ``train_stream``: the 27 stages as experiences (boundaries visible; for
      inspection and for strategies that are allowed to know them);
    - ``online_train_stream``: the same samples as one experience per
      mini-batch, in stream order, with no boundary information
      (``access_task_boundaries=False``); train on this one;
    - ``test_stream``: one experience with the 8,991 rotated test digits 0-8.

    :param schedule: the drawn training sequence.
    """

    def __init__(self, streams, *, schedule: MNIST360Schedule, online_stream_factory, **kwargs):
        super().__init__(streams, **kwargs)
        self.schedule = schedule
        self._online_stream_factory = online_stream_factory

    @property
    def online_train_stream(self) -> CLStream:
        """A fresh lazy stream of mini-batch experiences (see the class doc)."""
        return self._online_stream_factory()


def MNIST360(
    *,
    batch_size: int = 16,
    n_rounds: int = 3,
    replacement: bool = False,
    seed: int = 0,
    dataset_root: Optional[PathLike] = None,
    interpolation: str = "nearest",
    dataset: str = "mnist",
) -> MNIST360Benchmark:
    """Build MNIST-360 from MNIST (see :func:`mnist360_schedule` for the rules).

    Images are 1x28x28 in [0, 1] (no normalisation), as in Dynamos. Every
    experience has task label 0. ``dataset="digits"`` builds the same stream
    from scikit-learn's bundled digits (no download; about 1,200 training
    images of the digits 0-8, so 81 mini-batches of 16 instead of 3,387): for
    examples and quick checks, not for the paper's figures.

    :param batch_size: size of the stream's mini-batches (Dynamos: 16).
    :param n_rounds: rounds over the 9 class pairs (3 gives 27 stages).
    :param replacement: draw with replacement, as the original code.
    :param seed: seed of the drawing order.
    :param dataset_root: MNIST folder (torchvision layout).
    :param interpolation: rotation interpolation.
    :param dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"digits"`` (no ``dataset_root``).
    """
    (train_x, train_y), (test_x, test_y), _ = load_source(dataset, dataset_root)
    schedule = mnist360_schedule(train_y.numpy(), batch_size, n_rounds, replacement, seed)

    sequence = LazyImageData(
        train_x,
        train_y,
        torch.from_numpy(schedule.indices),
        angles=torch.from_numpy(schedule.angles),
        interpolation=interpolation,
    )
    full = make_classification_dataset(sequence, task_label=0)
    bounds = schedule.stage_bounds()
    stage_exps = []
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        stage_exps.append(
            _experience(full.subset(range(int(lo), int(hi))), s, 0, list(schedule.stage_pairs[s]))
        )
    train_stream = _stream("train", stage_exps)

    keep = np.flatnonzero(test_y.numpy() < MNIST360_CLASSES)
    test_labels = test_y.numpy()[keep]
    test_data = LazyImageData(
        test_x,
        test_y,
        torch.from_numpy(keep),
        angles=torch.from_numpy(mnist360_test_angles(test_labels)),
        interpolation=interpolation,
    )
    test_stream = _stream(
        "test",
        [_experience(make_classification_dataset(test_data, 0), 0, 0, list(range(MNIST360_CLASSES)))],
    )

    batch_bounds = schedule.batch_bounds()
    stage_of_batch = schedule.stages[batch_bounds[:-1]]

    def online_experiences() -> Iterator[DatasetExperience]:
        first_of_stage = np.diff(stage_of_batch, prepend=-1) != 0
        last_of_stage = np.append(first_of_stage[1:], True)
        for b, (lo, hi) in enumerate(zip(batch_bounds[:-1], batch_bounds[1:])):
            stage = int(stage_of_batch[b])
            exp = OnlineCLExperience(
                dataset=full.subset(range(int(lo), int(hi))),
                origin_experience=stage_exps[stage],
                is_first_subexp=bool(first_of_stage[b]),
                is_last_subexp=bool(last_of_stage[b]),
                sub_stream_length=None,
                access_task_boundaries=False,
            )
            exp.task_label = 0
            exp.task_labels = [0]
            exp.classes_in_this_experience = sorted(set(schedule.labels[lo:hi].tolist()))
            yield exp

    def online_stream() -> CLStream:
        return CLStream("train_online", online_experiences())

    return MNIST360Benchmark(
        [train_stream, test_stream],
        schedule=schedule,
        online_stream_factory=online_stream,
        name="MNIST360",
        dataset=dataset,
        n_classes=MNIST360_CLASSES,
        details={"batch_size": batch_size, "n_rounds": n_rounds, "replacement": replacement, "seed": seed},
    )
