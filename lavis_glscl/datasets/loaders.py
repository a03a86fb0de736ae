"""Training batches that are the same for any number of ranks, resumable mid-epoch.

Each step's *global* batch (``batch_size`` per rank x ``world_size``) is a contiguous slice of a seeded
permutation of one dataset; rank ``r`` loads rows ``[r * B, (r + 1) * B)`` of it.  So an N-process run sees,
step for step, exactly the global batches of a 1-process run with an N-times larger batch, and a run
resumed at step ``i`` continues with the batches an uninterrupted run would have drawn.

With several training datasets every batch comes from one of them (batches stay homogeneous, e.g. all
images or all videos), chosen per step with probability ``ratios`` by a generator all ranks share.
"""
from typing import Iterator, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_STRIDE = 1_000_003


def _seeded_generator(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:
        seed = seed * _STRIDE + int(part)
    return torch.Generator().manual_seed(seed % (2 ** 63))


class GlobalBatchSampler(Sampler[List[int]]):
    """This rank's indices for global batches ``start_batch .. num_batches - 1`` of one dataset in one epoch.

    Global batch ``k`` is slice ``k % per_pass`` of permutation ``k // per_pass`` (a dataset needing more
    batches than one pass holds is cycled with fresh permutations); the last partial global batch of a pass
    is dropped.  With ``group_size`` g, consecutive runs of g indices are permuted as units and always share
    a rank's batch (hard-negative pairs, for instance).
    """

    def __init__(self, dataset_size: int, batch_size: int, num_batches: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, epoch: int = 0, dataset_index: int = 0, start_batch: int = 0, shuffle: bool = True,
                 group_size: int = 1):
        global_batch = batch_size * world_size
        if dataset_size < global_batch:
            raise ValueError(f"a training dataset of {dataset_size} samples is smaller than one global batch "
                             f"({batch_size} per rank x {world_size} ranks)")
        if batch_size % group_size or dataset_size % group_size:
            raise ValueError(f"group_size {group_size} must divide the batch size ({batch_size}) and the dataset "
                             f"size ({dataset_size})")
        self.group_size = group_size
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.rank = rank
        self.global_batch = global_batch
        self.per_pass = dataset_size // global_batch
        self.seed_parts = (seed, epoch, dataset_index)
        self.start_batch = start_batch
        self.shuffle = shuffle

    def _permutation(self, pass_index: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        groups = torch.randperm(self.dataset_size // self.group_size,
                                generator=_seeded_generator(*self.seed_parts, pass_index))
        return (groups.unsqueeze(1) * self.group_size + torch.arange(self.group_size)).flatten()

    def __iter__(self) -> Iterator[List[int]]:
        current_pass, permutation = None, None
        for batch in range(self.start_batch, self.num_batches):
            pass_index, slot = divmod(batch, self.per_pass)
            if pass_index != current_pass:
                current_pass, permutation = pass_index, self._permutation(pass_index)
            start = slot * self.global_batch + self.rank * self.batch_size
            yield permutation[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)


class TrainBatches:
    """One or several training datasets → the batches of an epoch (see the module docstring)."""

    def __init__(self, datasets: Sequence[Dataset], batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, ratios: Optional[Sequence[float]] = None, iters_per_epoch: Optional[int] = None,
                 num_workers: int = 0, pin_memory: bool = False):
        self.datasets = list(datasets)
        if ratios is not None and len(ratios) != len(self.datasets):
            raise ValueError(f"train_dataset_ratios has {len(ratios)} entries for {len(self.datasets)} train datasets")
        weights = torch.tensor([float(r) for r in ratios] if ratios is not None else [1.0] * len(self.datasets))
        self.ratios = weights / weights.sum()
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        global_batch = batch_size * world_size
        natural = sum(len(d) // global_batch for d in self.datasets)
        self.iters_per_epoch = int(iters_per_epoch) if iters_per_epoch else natural
        if self.iters_per_epoch < 1:
            raise ValueError(f"no full global batch of {global_batch} fits in the training data")

    def __len__(self) -> int:
        return self.iters_per_epoch

    def dataset_schedule(self, epoch: int) -> List[int]:
        """Which dataset each step of ``epoch`` draws from (the same on every rank)."""
        if len(self.datasets) == 1:
            return [0] * self.iters_per_epoch
        generator = _seeded_generator(self.seed, epoch, 7)
        return torch.multinomial(self.ratios, self.iters_per_epoch, replacement=True, generator=generator).tolist()

    def epoch(self, epoch: int, start_iter: int = 0) -> Iterator[dict]:
        """The collated batches of steps ``start_iter .. iters_per_epoch - 1`` of ``epoch`` on this rank."""
        schedule = self.dataset_schedule(epoch)
        iterators = []
        for index, dataset in enumerate(self.datasets):
            sampler = GlobalBatchSampler(len(dataset), self.batch_size, schedule.count(index), self.rank,
                                         self.world_size, self.seed, epoch, index,
                                         start_batch=schedule[:start_iter].count(index),
                                         group_size=getattr(dataset, "batch_group_size", 1))
            # An own generator: creating the iterator must not draw from the global RNG, which a resumed
            # run restores from its checkpoint; it also seeds the workers' augmentations per epoch and rank.
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                pin_memory=self.pin_memory, collate_fn=getattr(dataset, "collater", None),
                                generator=_seeded_generator(self.seed, epoch, index, self.rank, 11))
            iterators.append(iter(loader))
        for index in schedule[start_iter:]:
            yield next(iterators[index])
