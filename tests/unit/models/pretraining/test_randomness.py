"""A step's random numbers do not depend on the world size."""
import torch

from lavis_glscl.models.pretraining.randomness import StepRandomness


def test_step_randomness_rows_do_not_depend_on_world_size():
    single = StepRandomness(seed=3, epoch=1, iteration=5, batch_size=6)
    full = single.uniform(4)
    full_ints = single.integers(100, 2)
    for rank in range(3):
        part = StepRandomness(seed=3, epoch=1, iteration=5, batch_size=2, rank=rank, world_size=3)
        assert torch.equal(part.uniform(4), full[2 * rank:2 * rank + 2])
        assert torch.equal(part.integers(100, 2), full_ints[2 * rank:2 * rank + 2])
    assert not torch.equal(StepRandomness(3, 1, 6, 6).uniform(4), full)
