"""Webdataset shards: reading, the split over ranks and workers, resuming mid-epoch, bad members."""
import io
import json

import numpy as np
import pytest
import torch
from helpers import convert_to_shards, png_bytes, shard_dataset, simple_pairs, write_tar
from PIL import Image

from lavis_glscl.datasets.loaders import TrainBatches
from lavis_glscl.datasets.shard_files import ShardEntry
from lavis_glscl.datasets.shards import ShardedCaptionPairs, ShardedVideoCaptionPairs
from lavis_glscl.processors import (
    GlsclCaptionProcessor,
    GlsclImageEvalProcessor,
    GlsclImageTrainProcessor,
    GlsclVideoEvalProcessor,
)
from lavis_glscl.tools import make_shards


def pair_set(annotations):
    """``{(image, caption)}`` of every usable caption in ``glscl_image_text`` annotations."""
    return {(ann["image"], caption) for ann in annotations
            for caption in ([ann["caption"]] if isinstance(ann["caption"], str) else ann["caption"]) if caption.strip()}


def epoch_ids(batches: TrainBatches, epoch=0, start_iter=0):
    return [list(batch["instance_id"]) for batch in batches.epoch(epoch, start_iter)]


def test_one_pass_streams_every_pair_once_with_its_processed_image_caption_and_shared_image_id(tmp_path):
    annotations = simple_pairs(9) + [{"image": "3.png", "caption": "Three AGAIN!"}]
    convert_to_shards(tmp_path, annotations, count=9)
    samples = list(shard_dataset(tmp_path / "shards" / "index.json"))
    assert len(samples) == 10 and len({s["instance_id"] for s in samples}) == 10
    processor, captions = GlsclImageEvalProcessor(16), GlsclCaptionProcessor()
    expected = {captions(caption): image for image, caption in pair_set(annotations)}
    assert sorted(s["text_input"] for s in samples) == sorted(expected)
    for sample in samples:
        source = tmp_path / "media" / expected[sample["text_input"]]
        torch.testing.assert_close(sample["image"], processor(Image.open(source).convert("RGB")), rtol=0, atol=0)
        assert sample["num_skipped"] == 0
    ids = {s["text_input"]: s["image_id"] for s in samples}
    assert ids["three again"] == ids["shape number 3"] and len(set(ids.values())) == 9


def test_video_shards_decode_mp4_members_as_the_video_processor_decodes_files(lavis_glscl, tmp_path):
    from lavis_glscl.datasets import shapes

    rng = np.random.RandomState(0)
    media = tmp_path / "media"
    media.mkdir()
    for index, direction in enumerate(("up", "down")):
        shapes.write_clip(media / f"{index}.mp4", shapes.render_clip(shapes.random_object(rng), direction, 32, 8, rng))
    annotations = [{"video": "0.mp4", "caption": "it moves up"}, {"video": "1.mp4", "caption": "it moves down"}]
    (tmp_path / "train.json").write_text(json.dumps(annotations))
    make_shards.main(["--media", "videos", "--ann", str(tmp_path / "train.json"), "--media-root", str(media),
                      "--out", str(tmp_path / "shards")])
    from lavis.common.registry import registry
    from lavis.datasets.builders.base_dataset_builder import load_dataset_config

    builder_cls = registry.get_builder_class("glscl_video_text")
    config = load_dataset_config(builder_cls.default_config_path("wds"))
    config.build_info.shards.storage = str(tmp_path / "shards" / "index.json")
    config.vis_processor = {"train": {"name": "glscl_video_eval", "image_size": 32, "n_frms": 3}}
    built = builder_cls(config).build_datasets()
    assert list(built) == ["train"] and isinstance(built["train"], ShardedVideoCaptionPairs)
    processor = GlsclVideoEvalProcessor(image_size=32, n_frms=3)
    samples = {s["text_input"]: s["video"] for s in built["train"]}
    assert samples.keys() == {"it moves up", "it moves down"}
    torch.testing.assert_close(samples["it moves up"], processor(str(media / "0.mp4")), rtol=0, atol=0)
    assert samples["it moves down"].shape == (3, 3, 32, 32)


def test_reading_in_the_training_process_leaves_its_generators_where_they_were(tmp_path):
    """With ``num_workers: 0`` pairs are augmented in the training process: from generators seeded by stream
    position, after which the process's own (dropout, masks) continue as if nothing had been read."""
    import random

    convert_to_shards(tmp_path, simple_pairs(6), count=6)
    shards = shard_dataset(tmp_path / "shards" / "index.json", GlsclImageTrainProcessor(image_size=12, hflip_prob=0.5))

    def draws_after(read):
        torch.manual_seed(5)
        random.seed(5)
        np.random.seed(5)
        read()
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    assert draws_after(lambda: list(shards)) == draws_after(lambda: None)


def test_two_ranks_by_two_workers_read_every_pair_once_per_epoch_as_a_pure_function_of_seed_and_epoch(tmp_path):
    convert_to_shards(tmp_path, simple_pairs(48), count=48)  # 16 shards of 3: 4 readers x 4 shards x 3 pairs
    shards = shard_dataset(tmp_path / "shards" / "index.json")
    ranks = [TrainBatches([shards], batch_size=2, rank=rank, world_size=2, seed=5, num_workers=2) for rank in (0, 1)]
    assert len(ranks[0]) == 12  # 12 global batches of 4 = the 48 pairs
    first = [epoch_ids(batches) for batches in ranks]
    pairs = [pair for rank in first for batch in rank for pair in batch]
    assert len(pairs) == 48 and len(set(pairs)) == 48
    assert first == [epoch_ids(batches) for batches in ranks]  # the same seed and epoch: the same stream
    second = [epoch_ids(batches, epoch=1) for batches in ranks]
    assert second != first and {p for rank in second for batch in rank for p in batch} == set(pairs)
    # each rank reads its own shards: no shard is read by both ranks in an epoch
    shard_of = [{pair.rsplit("/", 1)[0] for batch in rank for pair in batch} for rank in first]
    assert not shard_of[0] & shard_of[1]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_epoch_continues_with_exactly_the_batches_and_augmentations_left(tmp_path, num_workers):
    """Shards mixed with a map-style dataset; resumed where the shards' next batch is worker 0's turn and where it
    is worker 1's (the DataLoader then starts its workers' turns rotated)."""
    convert_to_shards(tmp_path, simple_pairs(40), count=40, samples_per_shard=4)
    augmenting = GlsclImageTrainProcessor(image_size=12, min_scale=0.3, hflip_prob=0.5)
    shards = shard_dataset(tmp_path / "shards" / "index.json", augmenting)
    indexed = [{"image": torch.full((3, 12, 12), float(i)), "text_input": "x", "instance_id": str(i)}
               for i in range(24)]
    for rank in (0, 1):
        batches = TrainBatches([shards, indexed], batch_size=2, rank=rank, world_size=2, seed=3, ratios=[0.6, 0.4],
                               iters_per_epoch=14, num_workers=num_workers)
        schedule = batches.dataset_schedule(0)
        starts = [next(i for i in range(1, 14) if schedule[:i].count(0) % 2 == parity) for parity in (0, 1)]
        full = list(batches.epoch(0))
        for start in starts:
            resumed = list(batches.epoch(0, start_iter=start))
            assert [b["instance_id"] for b in resumed] == [b["instance_id"] for b in full[start:]]
            for seen, again in zip(full[start:], resumed):
                assert torch.equal(seen["image"], again["image"])  # augmentations seeded by stream position


def test_more_readers_than_shards_is_refused_with_what_to_do(tmp_path):
    convert_to_shards(tmp_path, simple_pairs(6), count=6)
    with pytest.raises(ValueError, match="2 shards cannot feed 4 readers"):
        TrainBatches([shard_dataset(tmp_path / "shards" / "index.json")], batch_size=1, world_size=2, num_workers=2)


def test_bad_members_are_replaced_by_the_next_good_pair_of_the_group_and_counted(bad_shards, caplog):
    entries, good = bad_shards
    shards = ShardedCaptionPairs(entries, GlsclImageEvalProcessor(16), GlsclCaptionProcessor(), shuffle_shards=3)
    samples = list(shards)
    assert len(samples) == 12  # every pair the index counts has a place in the pass
    assert sum(s["num_skipped"] for s in samples) == 6  # x, y, z, w, the pair cut from s1 and s2's pair
    own = [s for s in samples if s["num_skipped"] == 0]
    assert sorted(s["text_input"] for s in own) == sorted(f"pair {name}" for name in good)
    for position, sample in enumerate(samples):
        if sample["num_skipped"]:  # the next pair of the stream that is itself good (the group's order wraps)
            following = next(s for s in samples[position + 1:] + samples if s["num_skipped"] == 0)
            assert sample["instance_id"] == following["instance_id"]
        name = sample["text_input"][-1]
        torch.testing.assert_close(sample["image"], GlsclImageEvalProcessor(16)(
            Image.open(io.BytesIO(png_bytes(good[name])))), rtol=0, atol=0)
    messages = caplog.text
    assert "s2.tar does not open" in messages and "s1.tar holds 3 pairs, its index says 4" in messages
    assert "skipping unreadable image" in messages and "empty caption" in messages


def test_a_group_without_one_good_pair_stops_with_the_shards_named(tmp_path):
    write_tar(tmp_path / "bad.tar", [(f"{i}.{ext}", data) for i in range(3) for ext, data in (("png", b"garbage"),
                                                                                              ("txt", b"caption"))])
    shards = ShardedCaptionPairs([ShardEntry(str(tmp_path / "bad.tar"), 3)], GlsclImageEvalProcessor(16))
    with pytest.raises(RuntimeError, match=r"no readable pair in shards \[.*bad.tar'\] from position 0 on \(3 did"):
        next(iter(shards))
