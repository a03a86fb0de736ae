"""The shapes generator: deterministic and reused, a validation split that leaves the others alone, unique captions
with one-word hard pairs, regions true of the pixels, time-reversed clips that move far enough, cache directories by
version."""
import hashlib
import json
import pickle

import decord
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lavis_glscl.datasets import shapes
from lavis_glscl.processors import GlsclVideoEvalProcessor


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "set"
    return shapes.ensure_generated(root, num_train=40, num_test=20, image_size=48, seed=5)


def test_shapes_generation_is_deterministic_and_reused(small_shapes, tmp_path):
    again = shapes.ensure_generated(tmp_path / "again", num_train=40, num_test=20, image_size=48, seed=5)
    for name in ("train.json", "test.json", "test_hard_pairs.json"):
        assert (small_shapes / name).read_text() == (again / name).read_text()
    assert (Image.open(small_shapes / "images/train_00007.png").tobytes()
            == Image.open(again / "images/train_00007.png").tobytes())
    stamp = (small_shapes / "test.json").stat().st_mtime_ns
    shapes.ensure_generated(small_shapes, num_train=40, num_test=20, image_size=48, seed=5)
    assert (small_shapes / "test.json").stat().st_mtime_ns == stamp


def test_a_validation_split_leaves_train_and_test_as_they_were(small_shapes, tmp_path, lavis_glscl):
    from lavis.common.registry import registry

    with_val = shapes.ensure_generated(tmp_path / "with_val", num_train=40, num_test=20, image_size=48, seed=5,
                                       num_val=6)
    for name in ("train.json", "test.json", "test_hard_pairs.json"):
        assert (with_val / name).read_text() == (small_shapes / name).read_text()
    assert (Image.open(with_val / "images/test_00019.png").tobytes()
            == Image.open(small_shapes / "images/test_00019.png").tobytes())
    val, pairs = (json.loads((with_val / name).read_text()) for name in ("val.json", "val_hard_pairs.json"))
    assert len(val) == 6 and len(pairs) == 3 and not (small_shapes / "val.json").exists()
    assert shapes.dataset_dir(num_val=0) != shapes.dataset_dir(num_val=200)
    cfg = OmegaConf.create({"generator": {"num_train": 40, "num_test": 20, "image_size": 48, "seed": 5, "num_val": 6},
                            "vis_processor": {"eval": {"name": "glscl_image_eval", "image_size": 48}},
                            "text_processor": {"eval": {"name": "glscl_caption"}}})
    builder_cls = registry.get_builder_class("shapes_demo")
    cfg = OmegaConf.merge(OmegaConf.load(builder_cls.default_config_path()).datasets.shapes_demo, cfg)
    built = builder_cls(cfg).build_datasets()
    assert sorted(built) == ["test", "train", "val"] and len(built["val"].hard_pairs) == 3


def test_shapes_test_split_has_unique_captions_and_one_word_hard_pairs(small_shapes):
    test = json.loads((small_shapes / "test.json").read_text())
    pairs = json.loads((small_shapes / "test_hard_pairs.json").read_text())
    captions = [item["caption"][0] for item in test]
    assert len(test) == 20 and len(set(captions)) == 20
    assert len(pairs) == 10
    for a, b in pairs:
        words_a, words_b = captions[a].split(), captions[b].split()
        assert len(words_a) == len(words_b) and sum(x != y for x, y in zip(words_a, words_b)) == 1


def test_shapes_regions_match_the_caption_and_the_pixels(small_shapes):
    record = pickle.loads((small_shapes / "pkls/test_00003.pkl").read_bytes())
    caption = json.loads((small_shapes / "test.json").read_text())[3]["caption"][0]
    assert record["caption"] == caption
    assert len(record["annotation"]) == 2
    pixels = torch.tensor(np.array(Image.open(small_shapes / "images/test_00003.png"))).float()
    for phrase, regions in record["annotation"].items():
        assert phrase in caption
        (region,) = regions
        mask, (x1, y1, x2, y2) = region["pixel_mask"], region["bbox_mask"]
        assert mask.shape == (48, 48) and mask.any()
        assert mask[y1:y2, x1:x2].sum() == mask.sum()  # the box holds the whole mask
        color = torch.tensor(shapes.COLORS[phrase.split()[1]]).float()
        inside = pixels[torch.from_numpy(mask)].mean(dim=0)
        assert (inside - color).abs().max() < 20  # the mask covers pixels of the phrase's colour


def test_relations_are_drawn_true():
    rng = np.random.RandomState(0)
    for relation in shapes.RELATIONS:
        scene = shapes.Scene(shapes.ShapeObject("small", "red", "circle"), relation,
                             shapes.ShapeObject("large", "blue", "square"))
        (x1, y1, _), (x2, y2, _) = shapes._place(scene, 64, rng)
        assert {"to the left of": x1 < x2, "to the right of": x1 > x2, "above": y1 < y2, "below": y1 > y2}[relation]


def test_shapes_video_pairs_are_time_reversals_with_opposite_captions(tmp_path):
    root = shapes.ensure_generated(tmp_path / "set", kind="videos", num_train=6, num_test=6, image_size=32, seed=2)
    test = json.loads((root / "test.json").read_text())
    pairs = json.loads((root / "test_hard_pairs.json").read_text())
    assert len(pairs) == 3 and len({t["caption"][0] for t in test}) == 6

    for a, b in pairs:
        words_a, words_b = test[a]["caption"][0].split(), test[b]["caption"][0].split()
        assert words_a[:5] == words_b[:5]  # same object, same verb
        assert shapes.REVERSED[" ".join(words_a[5:])] == " ".join(words_b[5:])
        first_a = decord.VideoReader(str(root / test[a]["video"])).get_batch([0]).float()
        clip_b = decord.VideoReader(str(root / test[b]["video"]))
        first_b, last_b = clip_b.get_batch([0]).float(), clip_b.get_batch([len(clip_b) - 1]).float()
        # b's last frame is a's first frame, up to mp4 coding noise: far closer than b's own first frame
        assert (first_a - last_b).abs().mean() < 0.5 * (first_a - first_b).abs().mean()
    train = json.loads((root / "train.json").read_text())
    lengths = [len(decord.VideoReader(str(root / t["video"]))) for t in train]
    assert all(8 <= n <= 16 for n in lengths)


def eval_frame_centroids(path, size=64, frames=4):
    """The moving object's centroid ``[F, 2]`` (x, y) in each frame the eval processor takes: the pixels far from the
    frame's median colour (the background)."""
    video = GlsclVideoEvalProcessor(image_size=size, n_frms=frames)(str(path))  # [F, 3, S, S], normalised
    background = video.flatten(2).median(dim=2).values[:, :, None, None]
    mask = ((video - background).abs().sum(dim=1) > 1.0).float()  # [F, S, S]
    grid = torch.arange(size, dtype=torch.float32)
    x = (mask * grid).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))
    y = (mask * grid[:, None]).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))
    return torch.stack([x, y], dim=1)


def test_shapes_clips_move_at_least_one_8px_patch_between_the_4_eval_frames(tmp_path):
    root = shapes.ensure_generated(tmp_path / "set", kind="videos", num_train=2, num_test=24, image_size=64, seed=5)
    test = json.loads((root / "test.json").read_text())
    steps = []
    for item in test:
        centroids = eval_frame_centroids(root / item["video"])
        steps.append(centroids.diff(dim=0).norm(dim=1))
        direction = " ".join(item["caption"][0].split()[5:])
        dx, dy = shapes.DIRECTIONS[direction]
        moved = centroids[-1] - centroids[0]
        assert moved[0] * dx + moved[1] * dy > 0, item  # the way the caption says
    steps = torch.stack(steps)
    assert steps.min() >= 8.0, steps.min()


def test_image_set_keeps_its_cache_directory_and_the_video_set_moves_to_a_new_one(tmp_path):
    """Cached image sets stay valid (the image generator did not change); cached version-2 video sets, whose motion
    is under one patch, are never read again."""
    def version_2_directory(kind):
        key = json.dumps([2, kind, 6000, 500, 64, 0])
        return tmp_path / "shapes" / f"{kind}-v2-{hashlib.sha1(key.encode()).hexdigest()[:10]}"

    assert shapes.dataset_dir("images", cache_root=tmp_path) == version_2_directory("images")
    videos = shapes.dataset_dir("videos", cache_root=tmp_path)
    assert videos != version_2_directory("videos") and videos.name.startswith("videos-v3-")
