"""Processors, the shapes generator, and bad input being skipped and counted."""
import json
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lavis_glscl.datasets import shapes
from lavis_glscl.datasets.datasets import ImageCaptionDataset, ImageRetrievalGallery
from lavis_glscl.processors import GlsclCaptionProcessor, GlsclImageEvalProcessor, GlsclImageTrainProcessor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_image_processors_resize_and_clip_normalise():
    image = Image.new("RGB", (50, 30), (255, 0, 128))
    evaluated = GlsclImageEvalProcessor(image_size=24)(image)
    assert evaluated.shape == (3, 24, 24)
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), CLIP_MEAN, CLIP_STD)]
    torch.testing.assert_close(evaluated.mean(dim=(1, 2)), torch.tensor(expected), atol=2e-3, rtol=0)
    train = GlsclImageTrainProcessor.from_config(OmegaConf.create({"image_size": 16, "hflip_prob": 1.0}))
    assert train(image).shape == (3, 16, 16)
    half = Image.new("RGB", (32, 32), (0, 0, 0))
    half.paste((255, 255, 255), (0, 0, 16, 32))  # white left half
    flipped = GlsclImageTrainProcessor(image_size=32, min_scale=1.0, max_scale=1.0, hflip_prob=1.0)(half)
    assert flipped[0, :, -4:].mean() > flipped[0, :, :4].mean()  # white now on the right


def test_caption_processor():
    assert GlsclCaptionProcessor()("A Red circle!  Above: a (blue) square.") == "a red circle above a blue square"
    assert GlsclCaptionProcessor()(" ... !! ") == ""


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
    from omegaconf import OmegaConf

    with_val = shapes.ensure_generated(tmp_path / "with_val", num_train=40, num_test=20, image_size=48, seed=5, num_val=6)
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


def test_relations_are_drawn_true():
    rng = np.random.RandomState(0)
    for relation in shapes.RELATIONS:
        scene = shapes.Scene(shapes.ShapeObject("small", "red", "circle"), relation,
                             shapes.ShapeObject("large", "blue", "square"))
        (x1, y1, _), (x2, y2, _) = shapes._place(scene, 64, rng)
        assert {"to the left of": x1 < x2, "to the right of": x1 > x2, "above": y1 < y2, "below": y1 > y2}[relation]


@pytest.fixture
def messy_folder(tmp_path):
    """Six annotations: three good, a missing file, a corrupt file, an empty caption."""
    for name in ("a", "b", "c", "empty"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / f"{name}.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    train = [{"image": "a.png", "caption": "one"}, {"image": "missing.png", "caption": "two"},
             {"image": "b.png", "caption": "three"}, {"image": "corrupt.png", "caption": "four"},
             {"image": "empty.png", "caption": "  .!! "}, {"image": "c.png", "caption": "six"}]
    test = [{"image": "a.png", "caption": ["one", ""]}, {"image": "corrupt.png", "caption": ["x"]},
            {"image": "missing.png", "caption": ["y"]}, {"image": "empty.png", "caption": ["..."]},
            {"image": "b.png", "caption": ["two"]}]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "test.json").write_text(json.dumps(test))
    return tmp_path


def test_training_pairs_skip_and_count_bad_annotations_and_files(messy_folder):
    dataset = ImageCaptionDataset(GlsclImageEvalProcessor(8), GlsclCaptionProcessor(), str(messy_folder),
                                  [str(messy_folder / "train.json")])
    assert {k: len(v) for k, v in dataset.dropped.items()} == {"missing file": 1, "empty caption": 1}
    assert len(dataset) == 4
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s["num_skipped"] for s in samples] == [0, 0, 1, 0]  # the corrupt image is replaced by the next one
    assert [s["text_input"] for s in samples] == ["one", "three", "six", "six"]
    batch = dataset.collater(samples)
    assert int(batch["num_skipped"].sum()) == 1 and batch["image"].shape == (4, 3, 8, 8)


def test_evaluation_gallery_drops_what_cannot_be_scored(messy_folder):
    dataset = ImageRetrievalGallery(GlsclImageEvalProcessor(8), GlsclCaptionProcessor(), str(messy_folder),
                                        [str(messy_folder / "test.json")])
    assert {k: len(v) for k, v in dataset.dropped.items()} == {
        "empty caption": 2, "unreadable file": 1, "missing file": 1, "no usable caption": 1}
    assert dataset.image == ["a.png", "b.png"]
    assert dataset.text == ["one", "two"] and dataset.img2txt == {0: [0], 1: [1]}
    assert dataset[1]["image"].shape == (3, 8, 8)
