"""The shapes demo builders: test galleries carry their hard pairs, and grouped training batches hold each clip beside
its time reversal."""
from pathlib import Path

import decord
import pytest
from omegaconf import OmegaConf

from lavis_glscl.datasets import shapes


def differ_minimally(kind: str, caption_a: str, caption_b: str) -> bool:
    """Images: the captions differ in exactly one word.  Videos: only in the direction, each the reverse of
    the other ("... moves up" / "... moves down")."""
    if kind == "shapes_demo":
        words_a, words_b = caption_a.split(), caption_b.split()
        return len(words_a) == len(words_b) and sum(a != b for a, b in zip(words_a, words_b)) == 1
    (subject_a, direction_a), (subject_b, direction_b) = caption_a.split(" moves "), caption_b.split(" moves ")
    return subject_a == subject_b and shapes.REVERSED[direction_a] == direction_b


@pytest.mark.parametrize("name", ["shapes_demo", "shapes_video_demo"])
def test_default_demo_set_has_enough_pairs(lavis_glscl, name):
    """The demo builders' test galleries carry their hard pairs: one per two items of the default test split,
    disjoint, in range, each pair of items with one caption apiece that differ minimally."""
    from lavis.common.registry import registry

    builder_cls = registry.get_builder_class(name)
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets[name]
    cfg.generator.num_train = 2  # the test split at its default size; the default training split adds ~15 s
    gallery = builder_cls(cfg).build_datasets()["test"]
    pairs = gallery.hard_pairs
    assert len(pairs) == cfg.generator.num_test // 2
    items = [index for pair in pairs for index in pair]
    assert len(set(items)) == len(items) and all(0 <= index < len(gallery) for index in items)
    for a, b in pairs:
        (text_a,), (text_b,) = gallery.img2txt[a], gallery.img2txt[b]
        assert differ_minimally(name, gallery.text[text_a], gallery.text[text_b]), (a, b)


def test_shapes_video_training_batches_hold_each_clip_beside_its_reversal(lavis_glscl, tmp_path):
    """With ``train_batch_group_size: 2`` every batch says so (``batch_group_size``) and rows 2k, 2k + 1 are a clip
    and its time reversal with opposite captions: the rows ``partner`` negatives pair."""
    from lavis.common.registry import registry

    from lavis_glscl.datasets.loaders import TrainBatches

    builder_cls = registry.get_builder_class("shapes_video_demo")
    cfg = OmegaConf.load(builder_cls.default_config_path()).datasets.shapes_video_demo
    cfg.generator = {"num_train": 12, "num_test": 2, "image_size": 32, "seed": 6}
    cfg.train_batch_group_size = 2
    cfg.splits = ["train"]
    cfg.vis_processor = {"train": {"name": "glscl_video_eval", "image_size": 32, "n_frms": 3}}
    cfg.text_processor = {"train": {"name": "glscl_caption"}}
    train = builder_cls(cfg).build_datasets()["train"]
    for batch in TrainBatches([train], batch_size=4, seed=1, iters_per_epoch=3).epoch(0):
        assert batch["batch_group_size"] == 2
        for row in (0, 2):
            first, second = batch["text_input"][row].split(" moves "), batch["text_input"][row + 1].split(" moves ")
            assert first[0] == second[0] and shapes.REVERSED[first[1]] == second[1]
            paths = [Path(train.vis_root) / train.annotation[int(batch["instance_id"][r])]["video"]
                     for r in (row, row + 1)]
            forwards, backwards = (decord.VideoReader(str(path)) for path in paths)
            first = forwards.get_batch([0]).float()
            partner_first, partner_last = (backwards.get_batch([i]).float() for i in (0, len(backwards) - 1))
            # the partner's last frame is this clip's first, up to mp4 coding noise
            assert (first - partner_last).abs().mean() < 0.5 * (first - partner_first).abs().mean()
