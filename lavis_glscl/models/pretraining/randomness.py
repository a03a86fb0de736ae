"""Every random number of a training step, as a pure function of (seed, epoch, iteration, global row).

Each draw is made for the whole *global* batch from a generator seeded by ``(seed, epoch, iteration)`` and sliced to
this rank's rows.  A sample's masks and negatives therefore depend only on its row in the global batch, never on the
world size or on how many encoder passes are shared, which makes 1-process and N-process runs, and shared and
recomputed passes, produce the same losses, and resumed runs continue exactly.
"""
import torch

from lavis_glscl.seeding import mixed_seed


class StepRandomness:
    """Random numbers for this rank's ``batch_size`` rows of a global batch of ``batch_size * world_size``."""

    def __init__(self, seed: int, epoch: int, iteration: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.generator = torch.Generator().manual_seed(mixed_seed(seed, epoch, iteration))
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def row_offset(self) -> int:
        """Global index of this rank's first row."""
        return self.rank * self.batch_size

    def local_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[self.row_offset:self.row_offset + self.batch_size]

    def global_uniform(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) noise for the whole global batch, ``[G, *shape]`` (float32, on the CPU)."""
        return torch.rand(self.global_batch_size, *shape, generator=self.generator)

    def uniform(self, *shape: int) -> torch.Tensor:
        """This rank's rows of a global uniform draw, ``[B, *shape]``."""
        return self.local_rows(self.global_uniform(*shape))

    def integers(self, high: int, *shape: int) -> torch.Tensor:
        """This rank's rows of a global draw of integers in ``[0, high)``, ``[B, *shape]`` (int64)."""
        return self.local_rows(torch.randint(high, (self.global_batch_size, *shape), generator=self.generator))
