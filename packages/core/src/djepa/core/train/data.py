"""Deterministic, resumable, rank-sharded data order.

Each epoch e draws one permutation of the dataset from ``torch.Generator().manual_seed(seed +
e)`` — identical on every rank — truncates it to a multiple of the world size and gives rank r
the elements ``r, r + W, r + 2W, …`` (``DistributedSampler`` with ``drop_last``); each rank then
cuts its share into micro-batches, dropping an incomplete last one. The position
``(epoch, batch_index)`` of the next micro-batch is all that a checkpoint needs to continue the
exact same sequence.

With this order, W ranks with micro-batch b see at step k together exactly the samples one rank
with micro-batch W·b sees at step k.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

__all__ = ["ShardedOrder", "ResumableLoader"]


class ShardedOrder:
    """Index arithmetic of the data order (no state).

    Raises:
        ValueError: fewer samples than one micro-batch per rank.
    """

    def __init__(self, dataset_len: int, micro_batch_size: int, rank: int, world_size: int,
                 seed: int, shuffle: bool = True) -> None:
        self.dataset_len = int(dataset_len)
        self.micro_batch_size = int(micro_batch_size)
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.samples_per_rank = self.dataset_len // world_size
        self.batches_per_epoch = self.samples_per_rank // self.micro_batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"dataset of {dataset_len} samples is smaller than one micro-batch of "
                f"{micro_batch_size} per rank on {world_size} rank(s)")

    def rank_indices(self, epoch: int) -> list[int]:
        """This rank's sample indices for ``epoch`` (length samples_per_rank)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.dataset_len, generator=g)
        else:
            perm = torch.arange(self.dataset_len)
        perm = perm[: self.samples_per_rank * self.world_size]
        return perm[self.rank::self.world_size].tolist()

    def batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """Micro-batches ``start, start+1, …`` of ``epoch`` for this rank."""
        idx = self.rank_indices(epoch)
        b = self.micro_batch_size
        return [idx[i * b:(i + 1) * b] for i in range(start, self.batches_per_epoch)]


class ResumableLoader:
    """Endless iterator of micro-batches in :class:`ShardedOrder`, with a checkpointable position.

    ``position`` is ``(epoch, batch_index)`` of the next micro-batch *to be consumed*; batches a
    worker prefetched but the loop did not consume are not counted, so resuming from a saved
    position repeats nothing and skips nothing.
    """

    def __init__(self, dataset: Dataset, order: ShardedOrder, *, num_workers: int = 0,
                 collate_fn: Callable[[list[Any]], Any] | None = None,
                 pin_memory: bool = False, epoch: int = 0, batch_index: int = 0) -> None:
        self.dataset, self.order = dataset, order
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.collate_fn = collate_fn or default_collate
        self.epoch, self.batch_index = epoch, batch_index
        self._it: Iterator[Any] | None = None

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.batch_index

    def _generator(self) -> torch.Generator:
        # The DataLoader draws its workers' base seed from this generator; without one it would
        # draw from (and advance) the global RNG the model trains with, breaking exact resume.
        return torch.Generator().manual_seed(
            (self.order.seed * 1_000_003 + self.epoch * 7_919 + self.order.rank) % 2**63)

    def _start_epoch(self) -> None:
        batches = self.order.batches(self.epoch, self.batch_index)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                            persistent_workers=False, generator=self._generator())
        self._it = iter(loader)

    def __iter__(self) -> "ResumableLoader":
        return self

    def __next__(self) -> Any:
        if self.batch_index >= self.order.batches_per_epoch:
            self.epoch, self.batch_index, self._it = self.epoch + 1, 0, None
        if self._it is None:
            self._start_epoch()
        batch = next(self._it)  # type: ignore[arg-type]
        self.batch_index += 1
        return batch
