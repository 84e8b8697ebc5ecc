"""Training batches as a function of (seed, step) alone, whatever the number of processes.

Each epoch is a permutation of the items drawn by torch's ``DistributedSampler`` from
``seed + epoch``; the global batch of a step is a fixed slice of it, and each of the N ranks
loads its 1/N share (DistributedSampler's rank-strided split). So 1 process and N processes
train on the same global batches, and ``--resume`` may use another number of processes.

Datasets are indexed by keys ``(item, crop_seed)``: random crops come from a generator seeded
by the key, not from a global RNG, so they too do not depend on which rank or DataLoader
worker loads the item.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vqaudio.errors import VqaudioError

BatchesFrom = Callable[[int], Iterator]  # start step -> the batches of steps start+1, start+2, …


def crop_seed(seed: int, epoch: int, item: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_003 + item) % 2**63


class StepBatchSampler(Sampler):
    """Endless batches of dataset keys for one rank, starting after ``start`` steps."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0,
                 world_size: int = 1):
        if batch_size % world_size:
            raise VqaudioError(f"batch_size {batch_size} does not split evenly over {world_size} processes; "
                               f"use a multiple of {world_size} (it is the global batch)")
        if n < world_size:
            raise VqaudioError(f"{n} training items cannot be shared by {world_size} processes; "
                               "add data or use fewer processes")
        self.n, self.seed, self.start = n, seed, start
        self.per_rank = batch_size // world_size
        # Steps per epoch: the last partial global batch is dropped, as in one process
        # (n // batch_size is also the number of whole per-rank batches in each rank's share).
        self.per_epoch = max(1, n // batch_size)
        self.sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = divmod(self.start, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)  # DistributedSampler shuffles with seed + epoch
            share = list(self.sampler)
            for b in range(skip, self.per_epoch):
                items = share[b * self.per_rank: (b + 1) * self.per_rank]
                yield [(i, crop_seed(self.seed, epoch, i)) for i in items]
            skip, epoch = 0, epoch + 1


def step_batches(dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 workers: int = 0, pin_memory: bool = False) -> BatchesFrom:
    """start step -> an endless DataLoader iterator over this rank's batches from that step on."""
    sampler = StepBatchSampler(len(dataset), batch_size, seed, 0, rank, world_size)  # bad settings fail here

    def batches_from(start: int) -> Iterator:
        sampler.start = start
        # Its own generator, so creating the loader draws nothing from torch's global RNG
        # (which checkpoints restore: resume stays exact).
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                            generator=torch.Generator().manual_seed(seed))
        return iter(loader)
    return batches_from


class KeyedTensors(Dataset):
    """Items of aligned tensors (e.g. images and labels) by key ``(item, crop_seed)``."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, key) -> tuple[torch.Tensor, ...]:
        i = key[0] if isinstance(key, tuple) else key
        return tuple(t[i] for t in self.tensors)
