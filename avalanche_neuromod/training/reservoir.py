"""A tensor reservoir over the whole stream that keeps only correctly predicted samples.

Avalanche's storage policies update once per experience; Dynamos (like DER)
updates its memory after every mini-batch, with reservoir sampling over
everything the stream has shown, so that on MNIST-360's online stream (one
experience per mini-batch, no boundaries) the buffer is a uniform sample of
the past whatever its length.

The rule, for the ``n``-th stream sample (``n`` counts every sample offered,
from 0, right or wrong):

- while the buffer has free slots, a correctly predicted sample takes the
  next free slot; a wrong one takes nothing, so no slot is ever empty
  between filled ones and an empty slot is never replayed;
- once full, a slot ``r`` is drawn uniformly from ``0..n``; if ``r`` is a
  slot (``r < capacity``) and the sample was predicted right, it replaces
  what slot ``r`` held.

With every prediction right this is classic reservoir sampling (each sample
seen is in the buffer with probability ``capacity / n``). The draws come
from the buffer's own generator, saved in :meth:`ReservoirBuffer.state_dict`,
so a resumed run replaces the same slots as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

__all__ = ["ReservoirBuffer"]

FIELDS = ("inputs", "labels", "logits", "attention")


class ReservoirBuffer:
    """A fixed-size reservoir of (input, label, logits, attention vector) rows.

    Storage is allocated on the first :meth:`add`, from the shapes it sees.

    :param capacity: samples held (at least 1).
    :param seed: seed of the buffer's generator (slot draws and replay batches).
    """

    def __init__(self, capacity: int, *, seed: int = 0):
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"the buffer size must be a positive integer, got {capacity!r}: "
                             f"pass buffer_size=500 (or another size of at least 1).")
        self.capacity = capacity
        self.n_seen = 0
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.storage: Dict[str, Optional[torch.Tensor]] = {name: None for name in FIELDS}

    def __len__(self) -> int:
        return self.size

    def _allocate(self, rows: Dict[str, Optional[torch.Tensor]]) -> None:
        for name, value in rows.items():
            if value is not None:
                self.storage[name] = torch.zeros((self.capacity,) + tuple(value.shape[1:]), dtype=value.dtype)

    def _check_fields(self, rows: Dict[str, Optional[torch.Tensor]]) -> None:
        for name, value in rows.items():
            held = self.storage[name]
            if (value is None) != (held is None):
                raise ValueError(f"the buffer {'holds' if held is not None else 'does not hold'} {name}; "
                                 f"add() must give it {'always' if held is not None else 'never'}.")
            if value is not None and tuple(value.shape[1:]) != tuple(held.shape[1:]):
                raise ValueError(f"{name} of shape {tuple(value.shape[1:])} per sample do not fit a buffer "
                                 f"holding {tuple(held.shape[1:])}: one buffer serves one network and stream.")

    @torch.no_grad()
    def add(self, inputs: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
            attention: Optional[torch.Tensor] = None, correct: Optional[torch.Tensor] = None) -> int:
        """Offer a mini-batch to the reservoir (the rule of the module doc).

        :param inputs: the un-augmented inputs, ``(B, ...)``.
        :param labels: their labels, ``(B,)``.
        :param logits: the network's logits for them at this step, ``(B, K)``.
        :param attention: the attention vectors ``V`` at this step, ``(B, d)``, or None.
        :param correct: which samples were predicted right, ``(B,)`` bool;
            None: all (plain reservoir sampling).
        :return: how many samples were written.
        """
        n = len(labels)
        if correct is None:
            correct = torch.ones(n, dtype=torch.bool)
        if any(len(t) != n for t in (inputs, logits, correct)) or (attention is not None and len(attention) != n):
            raise ValueError("inputs, labels, logits, attention and correct must have one row per sample.")
        rows = {"inputs": inputs, "labels": labels, "logits": logits, "attention": attention}
        if self.storage["inputs"] is None:
            self._allocate(rows)
        self._check_fields(rows)
        correct_list = correct.tolist()
        writes: Dict[int, int] = {}  # slot -> sample; a slot drawn twice keeps the later sample
        for i in range(n):
            if self.size < self.capacity:
                if correct_list[i]:
                    writes[self.size] = i
                    self.size += 1
            else:
                r = int(torch.randint(self.n_seen + 1, (1,), generator=self.generator))
                if r < self.capacity and correct_list[i]:
                    writes[r] = i
            self.n_seen += 1
        if writes:
            dst, src = torch.tensor(list(writes)), torch.tensor(list(writes.values()))
            for name, value in rows.items():
                if value is not None:
                    self.storage[name][dst] = value.detach()[src].to(self.storage[name].device)
        return len(writes)

    def sample(self, batch_size: int) -> Dict[str, torch.Tensor]:
        """Up to ``batch_size`` distinct stored samples, drawn uniformly.

        :param batch_size: samples wanted (fewer if the buffer holds fewer).
        :return: ``inputs``, ``labels``, ``logits`` and, if stored, ``attention``.
        """
        if self.size == 0:
            raise ValueError("the buffer is empty: add() samples before sampling from it.")
        k = min(batch_size, self.size)
        idx = torch.randperm(self.size, generator=self.generator)[:k]
        return {name: value[idx] for name, value in self.storage.items() if value is not None}

    def state_dict(self) -> Dict[str, Any]:
        """Counts, generator state and the filled rows (tensors and plain values only)."""
        return {
            "capacity": self.capacity,
            "n_seen": self.n_seen,
            "size": self.size,
            "generator": self.generator.get_state(),
            "storage": {name: value.clone() for name, value in self.storage.items() if value is not None},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        :param state: a dictionary from :meth:`state_dict`.
        """
        if state["capacity"] != self.capacity:
            raise ValueError(f"the saved buffer holds {state['capacity']} samples and this one "
                             f"{self.capacity}: build it with the same buffer size.")
        self.n_seen = int(state["n_seen"])
        self.size = int(state["size"])
        self.generator.set_state(state["generator"])
        self.storage = {name: None for name in FIELDS}
        for name, value in state["storage"].items():
            self.storage[name] = value.clone()
