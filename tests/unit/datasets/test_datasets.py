"""Caption datasets and retrieval galleries: bad annotations and files skipped and counted, batch groups sharing their
augmentation."""
import json
import random

import pytest
import torch
from PIL import Image

from lavis_glscl.datasets.datasets import (
    ImageCaptionDataset,
    ImageRetrievalGallery,
    VideoCaptionDataset,
    VideoRetrievalGallery,
)
from lavis_glscl.processors import (
    GlsclCaptionProcessor,
    GlsclImageEvalProcessor,
    GlsclVideoEvalProcessor,
    GlsclVideoTrainProcessor,
)


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


def test_corrupt_videos_are_skipped_and_counted(clips, tmp_path):
    train = [{"video": "short.mp4", "caption": "a"}, {"video": "corrupt.mp4", "caption": "b"},
             {"video": "gone.mp4", "caption": "c"}, {"video": "long.mp4", "caption": "d"}]
    (tmp_path / "train.json").write_text(json.dumps(train))
    dataset = VideoCaptionDataset(GlsclVideoEvalProcessor(32, 2), GlsclCaptionProcessor(), str(clips),
                                  [str(tmp_path / "train.json")])
    assert {k: len(v) for k, v in dataset.dropped.items()} == {"missing file": 1}
    samples = [dataset[i] for i in range(3)]
    assert [s["num_skipped"] for s in samples] == [0, 1, 0] and [s["text_input"] for s in samples] == ["a", "d", "d"]
    assert samples[1]["video"].shape == (2, 3, 32, 32)
    test = [{"video": "odd.mp4", "caption": ["x"]}, {"video": "empty.mp4", "caption": ["y"]},
            {"video": "corrupt.mp4", "caption": ["z"]}]
    (tmp_path / "test.json").write_text(json.dumps(test))
    gallery = VideoRetrievalGallery(GlsclVideoEvalProcessor(32, 2), GlsclCaptionProcessor(), str(clips),
                                    [str(tmp_path / "test.json")])
    assert {k: len(v) for k, v in gallery.dropped.items()} == {"unreadable file": 2}
    assert gallery.image == ["odd.mp4"] and gallery[0]["video"].shape == (2, 3, 32, 32)


def test_members_of_a_batch_group_share_their_frames_crop_and_flip(clips, tmp_path):
    train = [{"video": "long.mp4", "caption": caption} for caption in "abcd"]
    (tmp_path / "train.json").write_text(json.dumps(train))
    processor = GlsclVideoTrainProcessor(image_size=32, n_frms=4, min_scale=0.3, hflip_prob=0.5)
    dataset = VideoCaptionDataset(processor, GlsclCaptionProcessor(), str(clips), [str(tmp_path / "train.json")])
    random.seed(0)
    torch.manual_seed(0)
    independent = [dataset[i]["video"] for i in range(4)]
    assert not torch.equal(independent[0], independent[1])
    dataset.batch_group_size = 2

    def load_grouped():
        random.seed(0)
        torch.manual_seed(0)
        return [dataset[i]["video"] for i in range(4)], random.random(), torch.rand(1).item()

    grouped, *next_draws = load_grouped()
    assert torch.equal(grouped[0], grouped[1]) and torch.equal(grouped[2], grouped[3])
    assert not torch.equal(grouped[0], grouped[2])
    again, *next_draws_again = load_grouped()
    assert all(torch.equal(a, b) for a, b in zip(grouped, again)) and next_draws == next_draws_again
