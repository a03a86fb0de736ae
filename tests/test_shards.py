"""Webdataset shards: the converter, reading, the rank/worker split, resuming, bad members, ratios, the runner."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port, read_log_records, train_in_process
from PIL import Image

from lavis_glscl.datasets.loaders import TrainBatches
from lavis_glscl.datasets.shard_files import ShardEntry, load_shard_list, read_index
from lavis_glscl.datasets.shards import ShardedCaptionPairs, ShardedVideoCaptionPairs
from lavis_glscl.processors import (
    GlsclCaptionProcessor,
    GlsclImageEvalProcessor,
    GlsclImageTrainProcessor,
    GlsclVideoEvalProcessor,
)
from lavis_glscl.tools import make_shards


def color(index: int):
    return (37 * index % 256, 91 * index % 256, 53 * index % 256)


def write_images(folder: Path, count: int, size: int = 16):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", (size, size), color(index)).save(folder / f"{index}.png")


def png_bytes(index: int, size: int = 16) -> bytes:
    encoded = io.BytesIO()
    Image.new("RGB", (size, size), color(index)).save(encoded, format="PNG")
    return encoded.getvalue()


def write_tar(path: Path, members):
    """A tar of ``(name, bytes)`` members, written with tarfile alone (independent of the code under test)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def pair_set(annotations):
    """``{(image, caption)}`` of every usable caption in ``glscl_image_text`` annotations."""
    return {(ann["image"], caption) for ann in annotations
            for caption in ([ann["caption"]] if isinstance(ann["caption"], str) else ann["caption"]) if caption.strip()}


def convert(tmp_path, annotations, count=None, samples_per_shard=3, name="shards"):
    """``annotations`` over ``count`` generated 16-px images, written into shards by ``make_shards``."""
    media = tmp_path / "media"
    if count is not None:
        write_images(media, count)
    (tmp_path / "train.json").write_text(json.dumps(annotations))
    return make_shards.main(["--ann", str(tmp_path / "train.json"), "--media-root", str(media), "--out",
                             str(tmp_path / name), "--samples-per-shard", str(samples_per_shard)])


def simple_pairs(count):
    return [{"image": f"{i}.png", "caption": f"shape number {i}"} for i in range(count)]


def dataset(index_path, vis_processor=None, shuffle_shards=2, cls=ShardedCaptionPairs):
    return cls(read_index(str(index_path)), vis_processor or GlsclImageEvalProcessor(16), GlsclCaptionProcessor(),
               shuffle_shards=shuffle_shards)


def epoch_ids(batches: TrainBatches, epoch=0, start_iter=0):
    return [list(batch["instance_id"]) for batch in batches.epoch(epoch, start_iter)]


# ------------------------------------------------------------------ the converter
def test_make_shards_groups_captions_skips_bad_input_and_writes_what_webdataset_reads(tmp_path, capsys):
    import webdataset as wds

    annotations = simple_pairs(10)
    annotations[2]["caption"] = "   "  # its only caption is empty
    annotations.append({"image": "1.png", "caption": "a second caption of one", "image_id": 7})
    annotations.append({"image": "4.png", "caption": ["", "four again"]})
    annotations.append({"image": "missing.png", "caption": "not there"})
    annotations.append({"image": "corrupt.png", "caption": "broken"})
    write_images(tmp_path / "media", 10)
    (tmp_path / "media" / "corrupt.png").write_bytes(b"not a png")
    summary = convert(tmp_path, annotations)
    assert summary["skipped"] == {"empty caption": 2, "no usable caption": 1, "missing file": 1, "unreadable file": 1}
    assert (summary["samples"], summary["pairs"], summary["shards"]) == (9, 11, 3)  # 9 images, 3 per shard
    assert "make_shards: 9 samples, 11 pairs in 3 shards" in capsys.readouterr().out
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [3, 3, 3] and sum(s["pairs"] for s in index["shards"]) == 11

    urls = sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))
    read = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    assert len(read) == 9
    captions = {}
    for sample in read:
        meta = json.loads(sample["json"])
        assert sample["png"] == (tmp_path / "media" / meta["source"]).read_bytes()  # stored as it was
        captions[meta["source"]] = (meta["caption"], meta["image_id"])
    assert captions["1.png"] == (["shape number 1", "a second caption of one"], "7")
    assert captions["4.png"] == (["shape number 4", "four again"], "4.png")
    assert captions.keys() == {f"{i}.png" for i in range(10) if i != 2}


def test_make_shards_is_byte_for_byte_reproducible_and_the_seed_changes_the_order(tmp_path):
    convert(tmp_path, simple_pairs(7), count=7, name="a")
    make_shards.main(["--ann", str(tmp_path / "train.json"), "--media-root", str(tmp_path / "media"), "--out",
                      str(tmp_path / "b"), "--samples-per-shard", "3"])
    make_shards.main(["--ann", str(tmp_path / "train.json"), "--media-root", str(tmp_path / "media"), "--out",
                      str(tmp_path / "c"), "--samples-per-shard", "3", "--seed", "1"])
    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "index.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() != (tmp_path / "c" / "shard-000000.tar").read_bytes()


def test_make_shards_converts_a_lavis_builders_files_from_their_cache_root_layout(lavis_glscl, tmp_path, monkeypatch):
    """``--dataset sbu_caption``: LAVIS's annotation file and images where its default config says, under cache_root."""
    from lavis.common.registry import registry

    monkeypatch.setitem(registry.mapping["paths"], "cache_root", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sbu_captions/annotations/sbu.json"):
        make_shards.main(["--dataset", "sbu_caption"])
    write_images(tmp_path / "sbu_captions" / "images", 5)
    (tmp_path / "sbu_captions" / "annotations").mkdir()
    (tmp_path / "sbu_captions" / "annotations" / "sbu.json").write_text(json.dumps(simple_pairs(5)))
    summary = make_shards.main(["--dataset", "sbu_caption", "--samples-per-shard", "2"])
    assert summary["index"] == str(tmp_path / "shards" / "sbu_caption" / "index.json")
    assert (summary["samples"], summary["pairs"], summary["shards"]) == (5, 5, 3)


def test_index_only_counts_existing_shards_as_make_shards_does(tmp_path):
    annotations = simple_pairs(5) + [{"image": "0.png", "caption": "zero twice"}]
    convert(tmp_path, annotations, count=5, samples_per_shard=2)
    written = read_index(str(tmp_path / "shards" / "index.json"))
    make_shards.main(["--index-only", str(tmp_path / "shards" / "shard-{000000..000002}.tar"), "--out",
                      str(tmp_path / "again")])
    assert read_index(str(tmp_path / "again" / "index.json")) == written
    assert load_shard_list(str(tmp_path / "shards" / "shard-{000000..000002}.tar")) == written
    assert sum(entry.pairs for entry in written) == 6


# ------------------------------------------------------------------ reading
def test_one_pass_streams_every_pair_once_with_its_processed_image_caption_and_shared_image_id(tmp_path):
    annotations = simple_pairs(9) + [{"image": "3.png", "caption": "Three AGAIN!"}]
    convert(tmp_path, annotations, count=9)
    samples = list(dataset(tmp_path / "shards" / "index.json"))
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

    convert(tmp_path, simple_pairs(6), count=6)
    shards = dataset(tmp_path / "shards" / "index.json", GlsclImageTrainProcessor(image_size=12, hflip_prob=0.5))

    def draws_after(read):
        torch.manual_seed(5)
        random.seed(5)
        np.random.seed(5)
        read()
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    assert draws_after(lambda: list(shards)) == draws_after(lambda: None)


# ------------------------------------------------------------------ split over ranks and workers, resuming
def test_two_ranks_by_two_workers_read_every_pair_once_per_epoch_as_a_pure_function_of_seed_and_epoch(tmp_path):
    convert(tmp_path, simple_pairs(48), count=48)  # 16 shards of 3: 4 readers x 4 shards x 3 pairs
    shards = dataset(tmp_path / "shards" / "index.json")
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
    convert(tmp_path, simple_pairs(40), count=40, samples_per_shard=4)
    augmenting = GlsclImageTrainProcessor(image_size=12, min_scale=0.3, hflip_prob=0.5)
    shards = dataset(tmp_path / "shards" / "index.json", augmenting)
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


def test_a_mid_epoch_checkpoint_resumes_sharded_data_only_in_its_own_layout(tmp_path):
    convert(tmp_path, simple_pairs(12), count=12)
    shards = dataset(tmp_path / "shards" / "index.json")
    batches = TrainBatches([shards], batch_size=2, rank=0, world_size=2, num_workers=0)
    batches.check_resumable({"world_size": 2, "num_workers": 1, "batch_size": 2})
    with pytest.raises(ValueError, match="resumes mid-epoch only in the layout it was saved with"):
        batches.check_resumable({"world_size": 1, "num_workers": 1, "batch_size": 2})
    TrainBatches([list(range(8))], batch_size=2).check_resumable({"world_size": 4})  # map-style: any layout


def test_more_readers_than_shards_is_refused_with_what_to_do(tmp_path):
    convert(tmp_path, simple_pairs(6), count=6)
    with pytest.raises(ValueError, match="2 shards cannot feed 4 readers"):
        TrainBatches([dataset(tmp_path / "shards" / "index.json")], batch_size=1, world_size=2, num_workers=2)


# ------------------------------------------------------------------ bad members
@pytest.fixture
def bad_shards(tmp_path):
    """Three shards, ten pairs by the index, six of them good (a, b, c, d, f, g): in shard 0 an image that does not
    decode, a sample without caption, one with an empty caption, one without image; shard 1 cut short (the index
    counts one pair it no longer holds); shard 2 is not a tar at all (its one pair counted)."""
    good = {"a": 0, "b": 1, "c": 2, "d": 3, "f": 5, "g": 6}
    folder = tmp_path / "bad"
    folder.mkdir()
    write_tar(folder / "s0.tar", [("a.png", png_bytes(0)), ("a.txt", b"pair a"), ("x.png", b"garbage"),
                                  ("x.txt", b"undecodable"), ("y.png", png_bytes(9)), ("z.png", png_bytes(8)),
                                  ("z.txt", b" ... "), ("w.txt", b"no image"), ("b.png", png_bytes(1)),
                                  ("b.txt", b"pair b"), ("c.png", png_bytes(2)), ("c.txt", b"pair c")])
    write_tar(folder / "s1.tar", [("d.png", png_bytes(3)), ("d.txt", b"pair d"), ("f.png", png_bytes(5)),
                                  ("f.txt", b"pair f"), ("g.png", png_bytes(6)), ("g.txt", b"pair g")])
    (folder / "s2.tar").write_bytes(b"no tar here")
    entries = [ShardEntry(str(folder / "s0.tar"), 7), ShardEntry(str(folder / "s1.tar"), 4),
               ShardEntry(str(folder / "s2.tar"), 1)]
    return entries, good


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


# ------------------------------------------------------------------ mixing datasets
def test_proportional_ratios_weight_each_dataset_by_its_pairs(tmp_path):
    convert(tmp_path, simple_pairs(20), count=20, samples_per_shard=5)
    shards = dataset(tmp_path / "shards" / "index.json")
    mixed = TrainBatches([list(range(30)), list(range(10)), shards], batch_size=1, ratios="proportional",
                         iters_per_epoch=6000)
    torch.testing.assert_close(mixed.ratios, torch.tensor([0.5, 1 / 6, 1 / 3]))
    counts = np.bincount(mixed.dataset_schedule(0), minlength=3) / 6000
    assert np.abs(counts - [0.5, 1 / 6, 1 / 3]).max() < 0.02
    assert len(TrainBatches([list(range(30)), shards], batch_size=2)) == 15 + 10  # natural: one pass of each
    with pytest.raises(ValueError, match="a list of weights or 'proportional'"):
        TrainBatches([list(range(30))], batch_size=1, ratios="by size")


def shard_run_yaml(tmp_path, storage, run=None, extra_datasets=None, shuffle_shards=2):
    """A tiny-model run yaml training on ``storage`` (an index or shards) with type ``wds``; ``extra_datasets`` come
    first, ``run`` replaces run options."""
    from omegaconf import OmegaConf

    shards = {"type": "wds", "build_info": {"shards": {"storage": str(storage), "shuffle_shards": shuffle_shards}},
              "vis_processor": {"train": {"name": "glscl_image_train", "image_size": 32, "hflip_prob": 0.0}},
              "text_processor": {"train": {"name": "glscl_caption"}}}
    config = {"model": {"arch": "glscl_pretrain", "model_type": "tiny"},
              "datasets": {**(extra_datasets or {}), "glscl_image_text": shards},
              "run": {"task": "retrieval", "runner": "runner_glscl", "device": "cpu", "seed": 7,
                      "lr_sched": "glscl_warmup_linear", "init_lr": 1e-3, "min_lr": 0.0, "weight_decay": 0.01,
                      "max_epoch": 1, "batch_size_train": 2, "batch_size_eval": 2, "num_workers": 0, "log_freq": 1,
                      "train_splits": ["train"], "valid_splits": [], "test_splits": [], "evaluate": False,
                      "distributed": False, "dist_url": "env://", **(run or {})}}
    path = tmp_path / f"shard_run_{len(list(tmp_path.glob('shard_run_*.yaml')))}.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    return path


def test_runner_trains_one_pass_of_shards_and_counts_their_bad_members_among_skipped_samples(lavis_glscl, tmp_path,
                                                                                             bad_shards, caplog):
    entries, _ = bad_shards
    index = {"format": "lavis_glscl-shards-1", "media": "images", "shards": [
        {"path": entry.path, "samples": entry.pairs, "pairs": entry.pairs} for entry in entries]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    with caplog.at_level("WARNING"):
        runner = train_in_process(shard_run_yaml(tmp_path, tmp_path / "index.json", shuffle_shards=3), tmp_path / "out")
    assert len(runner.train_loader) == 6  # one natural pass: 12 pairs in batches of 2
    (stats,) = read_log_records(tmp_path / "out", "train_loss")
    assert stats["train_skipped_samples"] == 6
    assert "6 unreadable samples replaced" in caplog.text


def test_runner_mixes_shards_with_map_style_data_in_proportion(lavis_glscl, tmp_path, monkeypatch):
    convert(tmp_path, simple_pairs(16), count=16, samples_per_shard=4)
    shapes = {"shapes_demo": {"splits": ["train"], "generator": {"num_train": 32, "num_test": 4, "image_size": 32,
                                                                 "seed": 1},
                              "vis_processor": {"train": {"name": "glscl_image_train", "image_size": 32,
                                                          "hflip_prob": 0.0}},
                              "text_processor": {"train": {"name": "glscl_caption"}}}}
    config = shard_run_yaml(tmp_path, tmp_path / "shards" / "index.json", extra_datasets=shapes,
                            run={"train_dataset_ratios": "proportional", "iters_per_epoch": 10})
    from lavis_glscl.runners import RunnerGlscl

    drawn = []
    real_train_step = RunnerGlscl.train_step

    def recording_train_step(self, model, samples):
        drawn.append("shards" if "#" in samples["instance_id"][0] else "files")
        return real_train_step(self, model, samples)

    monkeypatch.setattr(RunnerGlscl, "train_step", recording_train_step)
    runner = train_in_process(config, tmp_path / "out")
    datasets = runner.train_loader.datasets
    kinds = ["shards" if isinstance(d, ShardedCaptionPairs) else "files" for d in datasets]
    assert sorted(zip(kinds, map(len, datasets))) == [("files", 32), ("shards", 16)]
    torch.testing.assert_close(runner.train_loader.ratios, torch.tensor([len(d) / 48 for d in datasets]))
    assert drawn == [kinds[index] for index in runner.train_loader.dataset_schedule(0)]
    assert set(drawn) == {"shards", "files"}


def test_the_lavis_corpora_yaml_trains_offline_on_local_files_in_proportion(lavis_glscl, tmp_path, monkeypatch):
    """The datasets of ``pretrain/pretrain_lavis_corpora.yaml`` (LAVIS's coco_caption, vg_caption, sbu_caption and
    conceptual_caption_3m builders, and shards) on tiny local files in LAVIS's annotation formats: built without any
    download attempt and mixed in proportion to their pairs."""
    import urllib.request

    from omegaconf import OmegaConf

    from lavis_glscl import launch, paths

    def no_network(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    project = paths.PROJECT_DIR / "glscl" / "pretrain" / "pretrain_lavis_corpora.yaml"
    with pytest.raises(launch.ConfigError, match="datasets.sbu_caption.build_info.annotations.train.storage"):
        launch.check_required_values(*launch.load_run_yaml(str(project), []))  # the storage paths are the user's to give
    write_images(tmp_path / "images", 8)
    files = {"coco_caption": [{"image": f"{i // 2}.png", "caption": f"coco {i}", "image_id": i // 2} for i in range(6)],
             "vg_caption": [{"image": f"{i}.png", "caption": f"region {i}"} for i in range(4)],
             "sbu_caption": [{"image": f"{i}.png", "caption": f"sbu {i}"} for i in range(8)],
             "conceptual_caption_3m": [{"image": f"{i}.png", "caption": f"cc {i}"} for i in range(2)]}
    config = OmegaConf.load(project)
    config.model = {"arch": "glscl_pretrain", "model_type": "tiny"}
    for name, annotations in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(annotations))
        info = config.datasets[name].build_info
        for split in info.annotations:
            info.annotations[split].storage = str(tmp_path / f"{name}.json")
        info.images.storage = str(tmp_path / "images")
    convert(tmp_path, simple_pairs(4), count=4, samples_per_shard=1)
    config.datasets.glscl_image_text.build_info.shards.storage = str(tmp_path / "shards" / "index.json")
    for dataset_cfg in config.datasets.values():
        dataset_cfg.vis_processor.train.image_size = 32
    config.run.update({"device": "cpu", "amp": False, "distributed": False, "iters_per_epoch": 4,
                       "batch_size_train": 2, "accum_grad_iters": 1, "save_freq_iters": 0, "num_workers": 0,
                       "log_freq": 1})
    OmegaConf.save(config, tmp_path / "corpora.yaml")
    runner = train_in_process(tmp_path / "corpora.yaml", tmp_path / "out")
    built = [(type(d).__name__, len(d)) for d in runner.train_loader.datasets]
    assert built == [("CaptionDataset", 6), ("ImageTextPairDataset", 4), ("ImageTextPairDataset", 8),
                     ("ImageTextPairDataset", 2), ("ShardedCaptionPairs", 4)]  # LAVIS's own classes, in yaml order
    torch.testing.assert_close(runner.train_loader.ratios,
                               torch.tensor([len(d) / 24 for d in runner.train_loader.datasets]))
    assert len(read_log_records(tmp_path / "out", "train_step")) == 4


# ------------------------------------------------------------------ killed and resumed under torchrun
RECORDING_TRAIN = """
import json, os, sys
from lavis_glscl import runners
from lavis_glscl.train import main

real_train_step = runners.RunnerGlscl.train_step

def recording_train_step(self, model, samples):
    with open(os.path.join(os.environ["RECORD_DIR"], "rank%s.jsonl" % os.environ["RANK"]), "a") as record:
        record.write(json.dumps([samples["epoch"], samples["iters"], list(samples["instance_id"])]) + "\\n")
    return real_train_step(self, model, samples)

runners.RunnerGlscl.train_step = recording_train_step
sys.exit(main())
"""


def recorded_steps(folder: Path, rank: int):
    lines = (folder / f"rank{rank}.jsonl").read_text().splitlines()
    return {(epoch, step): pairs for epoch, step, pairs in map(json.loads, lines)}


def kill_run(run: subprocess.Popen) -> None:
    """SIGKILL a torchrun launch: its agent, and each rank with its DataLoader workers (torchrun starts every rank in
    a session of its own, which killing the agent's group would leave running)."""
    with open(f"/proc/{run.pid}/task/{run.pid}/children") as children:
        ranks = [int(pid) for pid in children.read().split()]
    for rank in ranks:
        os.killpg(rank, signal.SIGKILL)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


def torchrun(tmp_path, config, name, options=(), background=False):
    (tmp_path / name).mkdir()
    script = tmp_path / "recording_train.py"
    script.write_text(RECORDING_TRAIN)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(script), "--cfg-path", str(config), "--options", f"run.output_dir={tmp_path / name}", *options]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", "RECORD_DIR": str(tmp_path / name)}
    if background:
        log = open(tmp_path / f"{name}.log", "w")
        return subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finished = subprocess.run(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:]
    return finished


@pytest.mark.slow
def test_a_killed_two_process_shard_run_resumes_without_repeating_or_skipping_a_pair(tmp_path):
    """2 ranks x 2 workers: a mid-epoch checkpoint after an odd step count (the workers' turn order rotates), the run
    killed, resumed: the pairs of the killed run up to the checkpoint plus the resumed run's are, rank by rank and step
    by step, those of an uninterrupted run, and no pair comes twice in an epoch."""
    convert(tmp_path, simple_pairs(64), count=64, samples_per_shard=4)  # 16 shards: 4 per reader
    config = shard_run_yaml(tmp_path, tmp_path / "shards" / "index.json",
                            run={"num_workers": 2, "iters_per_epoch": 8, "max_epoch": 2, "save_freq_iters": 3})
    torchrun(tmp_path, config, "full")
    expected = [recorded_steps(tmp_path / "full", rank) for rank in (0, 1)]
    assert all(len(steps) == 16 for steps in expected)
    for epoch in (0, 1):
        pairs = [p for steps in expected for (e, _), batch in steps.items() if e == epoch for p in batch]
        assert len(pairs) == 32 and len(set(pairs)) == 32

    run = torchrun(tmp_path, config, "killed", background=True)
    deadline = time.monotonic() + 400
    while not list((tmp_path / "killed").rglob("checkpoint_latest.pth")) and run.poll() is None:
        assert time.monotonic() < deadline, "no mid-epoch checkpoint within 400 s"
        time.sleep(0.02)
    kill_run(run)
    assert not list((tmp_path / "killed").rglob("checkpoint_1.pth")), "the run finished before it could be killed"
    (latest,) = (tmp_path / "killed").rglob("checkpoint_latest.pth")
    state = torch.load(latest, weights_only=True)
    resume_at = (state["epoch"], state["iteration"])
    assert state["data_layout"] == {"world_size": 2, "num_workers": 2, "batch_size": 2}

    torchrun(tmp_path, config, "resumed", [f"run.resume_ckpt_path={latest}"])
    for rank in (0, 1):
        before = {step: pairs for step, pairs in recorded_steps(tmp_path / "killed", rank).items() if step < resume_at}
        after = recorded_steps(tmp_path / "resumed", rank)
        assert min(after) == resume_at and not set(before) & set(after)
        assert {**before, **after} == expected[rank]
