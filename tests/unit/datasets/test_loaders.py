"""Training batches: rank r gets rows [rB, (r + 1)B) of each global batch, sharded data resumes mid-epoch only in its
own layout, datasets mixed in proportion to their pairs."""
import numpy as np
import pytest
import torch
from helpers import convert_to_shards, shard_dataset, simple_pairs

from lavis_glscl.datasets.loaders import TrainBatches


class Rows(torch.utils.data.Dataset):
    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index


@pytest.mark.parametrize("size, batch_size, world_size", [
    (8, 1, 8), (12, 2, 3), (13, 2, 3), (24, 3, 4), (31, 4, 2), (40, 5, 3), (17, 1, 5), (9, 3, 1)])
def test_train_batches_give_rank_r_rows_r_b_to_r_plus_1_b_of_each_global_batch(lavis_glscl, size, batch_size,
                                                                                world_size):
    from lavis_glscl.datasets.loaders import TrainBatches

    dataset = Rows(size)
    global_batches = [b.tolist() for b in TrainBatches([dataset], batch_size * world_size, 0, 1, seed=5).epoch(0)]
    assert len(global_batches) == size // (batch_size * world_size)
    seen = [row for global_batch in global_batches for row in global_batch]
    assert len(set(seen)) == len(seen) and set(seen) <= set(range(size))
    per_rank = [[b.tolist() for b in TrainBatches([dataset], batch_size, rank, world_size, seed=5).epoch(0)]
                for rank in range(world_size)]
    for step, global_batch in enumerate(global_batches):
        for rank in range(world_size):
            assert per_rank[rank][step] == global_batch[rank * batch_size:(rank + 1) * batch_size]
    assert all(len(batches) == len(global_batches) for batches in per_rank)


def test_a_mid_epoch_checkpoint_resumes_sharded_data_only_in_its_own_layout(tmp_path):
    convert_to_shards(tmp_path, simple_pairs(12), count=12)
    shards = shard_dataset(tmp_path / "shards" / "index.json")
    batches = TrainBatches([shards], batch_size=2, rank=0, world_size=2, num_workers=0)
    batches.check_resumable({"world_size": 2, "num_workers": 1, "batch_size": 2})
    with pytest.raises(ValueError, match="resumes mid-epoch only in the layout it was saved with"):
        batches.check_resumable({"world_size": 1, "num_workers": 1, "batch_size": 2})
    TrainBatches([list(range(8))], batch_size=2).check_resumable({"world_size": 4})  # map-style: any layout


def test_proportional_ratios_weight_each_dataset_by_its_pairs(tmp_path):
    convert_to_shards(tmp_path, simple_pairs(20), count=20, samples_per_shard=5)
    shards = shard_dataset(tmp_path / "shards" / "index.json")
    mixed = TrainBatches([list(range(30)), list(range(10)), shards], batch_size=1, ratios="proportional",
                         iters_per_epoch=6000)
    torch.testing.assert_close(mixed.ratios, torch.tensor([0.5, 1 / 6, 1 / 3]))
    counts = np.bincount(mixed.dataset_schedule(0), minlength=3) / 6000
    assert np.abs(counts - [0.5, 1 / 6, 1 / 3]).max() < 0.02
    assert len(TrainBatches([list(range(30)), shards], batch_size=2)) == 15 + 10  # natural: one pass of each
    with pytest.raises(ValueError, match="a list of weights or 'proportional'"):
        TrainBatches([list(range(30))], batch_size=1, ratios="by size")
