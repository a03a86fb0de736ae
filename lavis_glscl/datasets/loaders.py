"""Training batches that are the same for any number of ranks, resumable mid-epoch.

Each step's *global* batch (``batch_size`` per rank x ``world_size``) is a contiguous slice of a seeded
permutation of one dataset; rank ``r`` loads rows ``[r * B, (r + 1) * B)`` of it.  So an N-process run sees,
step for step, exactly the global batches of a 1-process run with an N-times larger batch, and a run
resumed at step ``i`` continues with the batches an uninterrupted run would have drawn.

With several training datasets every batch comes from one of them (batches stay homogeneous, e.g. all
images or all videos), chosen per step with probability ``ratios`` by a generator all ranks share;
``ratios="proportional"`` weights each dataset by its number of pairs.

Datasets streamed from shards (:mod:`lavis_glscl.datasets.shards`: anything with ``rank_batches``) take part in
the same schedule: each rank reads its own shards, so their batches depend on the number of ranks and workers, and
a run resumes them exactly only with the layout it was saved with (:meth:`TrainBatches.check_resumable`).
"""
from typing import Iterator, List, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lavis_glscl.seeding import Salt, seeded_generator


def is_streamed(dataset) -> bool:
    """Whether ``dataset`` streams its batches itself (shards) rather than being indexed."""
    return callable(getattr(dataset, "rank_batches", None))


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
                                generator=seeded_generator(*self.seed_parts, pass_index))
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


def dataset_weights(datasets: Sequence[Dataset], ratios: Union[None, str, Sequence[float]]) -> torch.Tensor:
    """Each dataset's share of the steps: ``ratios`` normalised, equal shares without them, or shares proportional
    to the datasets' pair counts with ``"proportional"``."""
    if isinstance(ratios, str):
        if ratios != "proportional":
            raise ValueError(f"train_dataset_ratios must be a list of weights or 'proportional', got {ratios!r}")
        weights = torch.tensor([float(len(d)) for d in datasets])
    elif ratios is not None:
        if len(ratios) != len(datasets):
            raise ValueError(f"train_dataset_ratios has {len(ratios)} entries for {len(datasets)} train datasets")
        weights = torch.tensor([float(r) for r in ratios])
    else:
        weights = torch.tensor([1.0] * len(datasets))
    return weights / weights.sum()


class TrainBatches:
    """One or several training datasets → the batches of an epoch (see the module docstring)."""

    def __init__(self, datasets: Sequence[Dataset], batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, ratios: Union[None, str, Sequence[float]] = None,
                 iters_per_epoch: Optional[int] = None, num_workers: int = 0, pin_memory: bool = False):
        self.datasets = list(datasets)
        self.ratios = dataset_weights(self.datasets, ratios)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        natural = sum(self.batches_per_pass(d) for d in self.datasets)
        self.iters_per_epoch = int(iters_per_epoch) if iters_per_epoch else natural
        if self.iters_per_epoch < 1:
            raise ValueError(f"no full global batch of {batch_size * world_size} fits in the training data")

    def __len__(self) -> int:
        return self.iters_per_epoch

    def batches_per_pass(self, dataset: Dataset) -> int:
        """Steps in one pass over ``dataset`` (its natural share of an epoch)."""
        if is_streamed(dataset):
            return dataset.batches_per_pass(self.batch_size, self.world_size, self.num_workers)
        return len(dataset) // (self.batch_size * self.world_size)

    @property
    def layout(self) -> dict:
        """What a streamed dataset's batches depend on besides (seed, epoch); saved with mid-epoch checkpoints."""
        return {"world_size": self.world_size, "num_workers": max(1, self.num_workers), "batch_size": self.batch_size}

    def check_resumable(self, saved_layout: Optional[dict]) -> None:
        """Refuse to resume mid-epoch in a layout the streamed datasets' position cannot be carried over to."""
        if not any(is_streamed(d) for d in self.datasets) or saved_layout == self.layout:
            return
        raise ValueError(f"this mid-epoch checkpoint was saved with {saved_layout}, the run now has {self.layout}: "
                         "sharded training data resumes mid-epoch only in the layout it was saved with (resume from "
                         "an epoch-end checkpoint, or with the saved ranks, workers and batch size)")

    def dataset_schedule(self, epoch: int) -> List[int]:
        """Which dataset each step of ``epoch`` draws from (the same on every rank)."""
        if len(self.datasets) == 1:
            return [0] * self.iters_per_epoch
        generator = seeded_generator(self.seed, epoch, Salt.DATASET_SCHEDULE)
        return torch.multinomial(self.ratios, self.iters_per_epoch, replacement=True, generator=generator).tolist()

    def epoch(self, epoch: int, start_iter: int = 0) -> Iterator[dict]:
        """The collated batches of steps ``start_iter .. iters_per_epoch - 1`` of ``epoch`` on this rank."""
        schedule = self.dataset_schedule(epoch)
        iterators = []
        for index, dataset in enumerate(self.datasets):
            start_batch = schedule[:start_iter].count(index)
            # An own generator: creating the iterator must not draw from the global RNG, which a resumed
            # run restores from its checkpoint; it also seeds the workers' augmentations per epoch and rank.
            generator = seeded_generator(self.seed, epoch, index, self.rank, Salt.LOADER)
            if is_streamed(dataset):
                if start_batch == schedule.count(index):
                    iterators.append(None)  # nothing left to draw: start no workers
                    continue
                stream = dataset.rank_batches(self.batch_size, self.rank, self.world_size, self.num_workers,
                                              self.seed, epoch, index, start_batch)
                loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                    pin_memory=self.pin_memory, generator=generator)
            else:
                sampler = GlobalBatchSampler(len(dataset), self.batch_size, schedule.count(index), self.rank,
                                             self.world_size, self.seed, epoch, index, start_batch=start_batch,
                                             group_size=getattr(dataset, "batch_group_size", 1))
                loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                                    pin_memory=self.pin_memory, collate_fn=getattr(dataset, "collater", None),
                                    generator=generator)
            iterators.append(iter(loader))
        for index in schedule[start_iter:]:
            yield next(iterators[index])
