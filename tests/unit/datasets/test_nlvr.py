"""The shapes NLVR demo set (labels checked against the pixels) and ``glscl_nlvr``'s builder on LAVIS's NLVR layout."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import NLVR_SMALL_SET
from PIL import Image


@pytest.fixture(scope="module")
def small_set(lavis_glscl, tmp_path_factory):
    from lavis_glscl.datasets import nlvr

    return nlvr.ensure_generated(tmp_path_factory.mktemp("nlvr") / "set", **NLVR_SMALL_SET)


def test_sentences_follow_the_attribute_counts_of_the_pair(lavis_glscl):
    from lavis_glscl.datasets.nlvr import is_true, sentence

    left, right = Counter(red=2, circle=1, square=1), Counter(red=1, blue=1, circle=2)
    assert sentence("both", "orange") == "both images contain an orange shape"
    assert sentence("at least one", "square") == "at least one image contains a square"
    assert is_true("both", "red", left, right) and is_true("both", "circle", left, right)
    assert not is_true("both", "square", left, right) and is_true("at least one", "square", left, right)
    assert is_true("at least one", "blue", left, right) and not is_true("at least one", "green", left, right)


def colour_objects(path: Path, colour: str) -> int:
    """Objects of ``colour`` in a shapes image, read from its pixels: connected regions within the render noise."""
    from scipy import ndimage

    from lavis_glscl.datasets.shapes import COLORS

    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    mask = (np.abs(pixels - np.array(COLORS[colour])) <= 8).all(axis=-1)
    return ndimage.label(mask, structure=np.ones((3, 3)))[1]


def test_generated_labels_are_balanced_and_true_of_the_pixels(small_set):
    from lavis_glscl.datasets.shapes import COLORS

    checked = Counter()
    for split, size in (("train", NLVR_SMALL_SET["num_train"]), ("test", NLVR_SMALL_SET["num_test"])):
        items = json.loads((small_set / f"{split}.json").read_text())
        assert len(items) == size and Counter(item["label"] for item in items) == {"True": size // 2,
                                                                                  "False": size // 2}
        for item in items:
            left, right = (small_set / path for path in item["images"])
            assert left != right and left.is_file() and right.is_file() and left.name.startswith(split)
            words = item["sentence"].split()
            (colour,) = [word for word in words if word in COLORS]  # the default sentences name one colour
            counts = colour_objects(left, colour), colour_objects(right, colour)
            if words[0] == "both":
                assert max(counts) > 0, item  # a false "both" is a near miss: one image holds the colour
                truth = min(counts) > 0
            else:
                truth = max(counts) > 0
            assert str(truth) == item["label"], (item, counts)
            checked[words[0]] += 1
    assert set(checked) == {"both", "at"}  # every sentence kind met the pixel check


def test_shape_sentences_come_with_the_shape_attribute(lavis_glscl, tmp_path):
    from lavis_glscl.datasets import nlvr
    from lavis_glscl.datasets.shapes import COLORS, SHAPES

    options = {**NLVR_SMALL_SET, "num_train": 2, "num_test": 80, "attributes": ["shape"]}
    root = nlvr.ensure_generated(tmp_path / "shape_set", **options)
    sentences = [item["sentence"] for item in json.loads((root / "test.json").read_text())]
    words = [{word[:-1] if word[:-1] in SHAPES else word for word in text.split()} for text in sentences]  # plurals
    assert all(len(w & set(SHAPES)) == 1 and not w & set(COLORS) for w in words)
    assert nlvr.dataset_dir(**options) != nlvr.dataset_dir(**NLVR_SMALL_SET)


def test_generator_options_are_checked(lavis_glscl, tmp_path):
    from lavis_glscl.datasets import nlvr

    with pytest.raises(ValueError, match="unknown shapes NLVR generator option"):
        nlvr.dataset_dir(num_images=3)
    with pytest.raises(ValueError, match="attributes must be some of"):
        nlvr.dataset_dir(attributes=["size"])
    with pytest.raises(ValueError, match="at least 2 images"):
        nlvr.ensure_generated(tmp_path / "set", num_test_images=1)
    assert nlvr.dataset_dir(seed=1) != nlvr.dataset_dir(seed=2)


def builder_config(name: str, **extra):
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    processors = {"vis_processor": {"train": {"name": "glscl_image_eval", "image_size": 32},
                                    "eval": {"name": "glscl_image_eval", "image_size": 32}},
                  "text_processor": {"train": {"name": "glscl_caption"}, "eval": {"name": "glscl_caption"}}}
    defaults = OmegaConf.load(registry.get_builder_class(name).default_config_path()).datasets[name]
    return OmegaConf.merge(defaults, processors, extra)


def test_glscl_nlvr_builder_reads_lavis_nlvr_layout_under_cache_root(lavis_glscl, small_set, monkeypatch, tmp_path):
    from lavis.common.registry import registry
    from lavis.datasets.datasets.nlvr_datasets import NLVRDataset, NLVREvalDataset

    cache_root = tmp_path / "lavis_cache"
    (cache_root / "nlvr" / "annotations").mkdir(parents=True)
    (cache_root / "nlvr" / "images").symlink_to(small_set / "images")
    items = json.loads((small_set / "test.json").read_text())
    for name in ("train", "dev", "test"):
        layout = [{**item, "images": [p.replace("images/", "", 1) for p in item["images"]]} for item in items]
        (cache_root / "nlvr" / "annotations" / f"{name}.json").write_text(json.dumps(layout))
    monkeypatch.setitem(registry.mapping["paths"], "cache_root", str(cache_root))
    datasets = registry.get_builder_class("glscl_nlvr")(builder_config("glscl_nlvr")).build_datasets()
    assert type(datasets["train"]) is NLVRDataset and type(datasets["val"]) is NLVREvalDataset
    sample = datasets["test"][0]
    assert sample["image0"].shape == (3, 32, 32) and sample["label"] == int(items[0]["label"] == "True")
    assert sample["text_input"] == items[0]["sentence"]
    (cache_root / "nlvr" / "annotations" / "dev.json").unlink()
    with pytest.raises(FileNotFoundError, match="dev.json"):
        registry.get_builder_class("glscl_nlvr")(builder_config("glscl_nlvr")).build_datasets()
