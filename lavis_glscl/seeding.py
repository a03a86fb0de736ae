"""Every seed of lavis_glscl in one place: the named streams, seeds mixed from several integers, draws from the global
generators under a seed of one's own, and a process's generator states for checkpoints.

A stream's seed is :func:`mixed_seed` of the run's seed, the integers that locate the draw (epoch, dataset, rank,
position, ...) and the stream's salt below, so that two streams drawn at the same place never share numbers.
"""
import contextlib
import enum
import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import get_worker_info

_STRIDE = 1_000_003


class Salt(enum.IntEnum):
    """The last integer of each stream's seed."""

    DATASET_SCHEDULE = 7  # which training dataset each step of an epoch draws from
    LOADER = 11  # a rank's loader of one dataset in one epoch (its workers' augmentation seeds)
    SHARD_ORDER = 13  # the permutation that deals a pass's shards to the readers
    SHARD_GROUP = 17  # the pair order inside a group of shards a reader opens together
    SHARD_PAIR = 19  # a streamed pair's augmentation


def mixed_seed(*parts: int) -> int:
    """One seed from several integers (seed, epoch, ...), the same in every process."""
    seed = 0
    for part in parts:
        seed = seed * _STRIDE + int(part)
    return seed % (2 ** 63)


def seeded_generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(mixed_seed(*parts))


@contextlib.contextmanager
def seeded_global_draws(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global generators seeded from ``seed`` inside the block: processors draw
    from the global generators, and an augmentation must depend on the sample alone.  In the training process the
    three streams go on afterwards as if the block had drawn nothing; a DataLoader worker serves nothing else, so
    there they are left as the block left them."""
    states = None if get_worker_info() else (random.getstate(), np.random.get_state(),
                                             torch.default_generator.get_state())
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.default_generator.manual_seed(seed)  # torch.manual_seed would also seed (lazily) every CUDA device
    try:
        yield
    finally:
        if states is not None:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.default_generator.set_state(states[2])


def rng_state() -> dict:
    """This process's Python, NumPy and torch generator states as plain lists (picklable across ranks, and loadable
    with ``torch.load(weights_only=True)``)."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def seed_process(seed: int, rank: int) -> None:
    """The global generators of one rank of a run (LAVIS's ``setup_seeds``: the run's seed plus the rank)."""
    seed = seed + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
