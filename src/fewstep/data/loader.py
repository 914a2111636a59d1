"""An endless, seeded, rank-sharded stream of batches with exactly resumable state.

The *global* stream is the same for any number of ranks: the epoch-e order is a permutation of
the dataset drawn from numpy's Generator seeded with (seed, e), the epochs are concatenated, and
consecutive `batch_size` indices form one global batch (a batch may run across an epoch
boundary; nothing is dropped, and a dataset smaller than a batch works). Rank r of w takes the
contiguous slice [r b / w, (r + 1) b / w) of every global batch, so concatenating the ranks'
batches in rank order gives exactly the batch one process would see with the same `batch_size`.

The state is the position in the global stream, (epoch, position): `state_dict()` /
`load_state_dict()` resume the identical sequence, also on a different number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import Dataset

__all__ = ["Batches", "batches"]


class Batches:
    """Iterator of (images, labels) shards; labels is None for an unlabeled dataset.

    batch_size is the global batch size (all ranks together); it must be divisible by world_size.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if len(dataset) == 0:
            raise ValueError("batches: the dataset is empty")
        if batch_size < 1 or world_size < 1 or batch_size % world_size:
            raise ValueError(f"batches: the global batch_size ({batch_size}) must be a positive "
                             f"multiple of world_size ({world_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"batches: rank {rank} is not in 0..{world_size - 1}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order_epoch, self._order = None, None

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
            self._order_epoch = epoch
        return self._order

    def next_indices(self) -> torch.Tensor:
        """This rank's indices of the next global batch (advances the state)."""
        n, parts, need = len(self.dataset), [], self.batch_size
        while need:
            take = min(need, n - self.position)
            parts.append(self._permutation(self.epoch)[self.position:self.position + take])
            self.position += take
            need -= take
            if self.position == n:
                self.epoch, self.position = self.epoch + 1, 0
        b = self.local_batch_size
        return torch.from_numpy(np.concatenate(parts)[self.rank * b:(self.rank + 1) * b])

    def __iter__(self):
        return self

    def __next__(self):
        index = self.next_indices()
        labels = self.dataset.labels
        return self.dataset.images[index], None if labels is None else labels[index]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "batch_size": self.batch_size, "dataset_len": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("seed", self.seed), ("batch_size", self.batch_size),
                          ("dataset_len", len(self.dataset))):
            if key in state and state[key] != mine:
                raise ValueError(f"batches: saved state has {key}={state[key]}, this iterator {mine}; "
                                 "resuming would not reproduce the saved stream")
        if not 0 <= state["position"] < len(self.dataset) or state["epoch"] < 0:
            raise ValueError(f"batches: invalid state {state}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def batches(dataset: Dataset, batch_size: int, seed: int = 0, rank: int = 0,
            world_size: int = 1) -> Batches:
    """Endless (images, labels) batches; see `Batches`. batch_size is the global batch size."""
    return Batches(dataset, batch_size, seed, rank, world_size)
