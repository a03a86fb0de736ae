"""GLSCL's image, video and caption processors, registered with LAVIS.

Images and frames are CLIP-normalised (LAVIS's ``BlipImageBaseProcessor`` defaults).  Training uses
RandomResizedCrop (scale 0.8-1.0, bicubic) and a horizontal flip, as GLSCL pre-training does; set
``hflip_prob: 0`` when captions speak of left and right.  Evaluation resizes to a square.

Video processors take a file path and always return exactly ``n_frms`` frames ``[F, 3, S, S]`` (LAVIS's
ALPRO processors return fewer for short clips and odd counts): training draws one random frame from each
of F equal segments (or takes the middle one, ``sampling: middle``), evaluation takes each segment's middle frame;
a short clip repeats frames.  Frames are resized while decoding; crop and flip are the same for every frame.
``layout: cthw`` returns ``[3, F, S, S]`` instead, the layout of LAVIS's ALPRO processors and its TimeSformer
(``alpro_retrieval_offline``).
"""
import logging
import random
from typing import List

import decord
import numpy as np
import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageBaseProcessor
from omegaconf import OmegaConf
from torchvision import transforms
from torchvision.transforms.functional import InterpolationMode


class VideoDecodeError(ValueError):
    """A video that cannot be decoded or holds no frame (datasets skip and count it)."""


# decord raises DECORDError while decoding, a plain RuntimeError when it cannot open a file at all.
DECORD_ERRORS = (decord.DECORDError, RuntimeError)


FRAME_SAMPLINGS = ("random", "middle")


def check_sampling(sampling: str) -> str:
    if sampling not in FRAME_SAMPLINGS:
        raise ValueError(f"frame sampling must be one of {FRAME_SAMPLINGS}, got {sampling!r}")
    return sampling


def frame_indices(num_video_frames: int, num_frames: int, sampling: str = "middle") -> List[int]:
    """``num_frames`` frame indices into a clip of ``num_video_frames``: one per equal segment, drawn at random
    inside it (``"random"``) or at its middle (``"middle"``).  Shorter clips repeat frames."""
    if num_video_frames < 1:
        raise VideoDecodeError("the video has no frames")
    check_sampling(sampling)
    edges = np.linspace(0, num_video_frames, num_frames + 1)
    if sampling == "random":
        starts = np.floor(edges[:-1])
        widths = np.maximum(np.floor(edges[1:]) - starts, 1)
        indices = starts + np.floor(np.array([random.random() for _ in range(num_frames)]) * widths)
    else:
        indices = np.floor((edges[:-1] + edges[1:]) / 2)
    return np.minimum(indices, num_video_frames - 1).astype(int).tolist()


def _as_tensor(frames) -> torch.Tensor:
    return frames if torch.is_tensor(frames) else torch.from_numpy(frames.asnumpy())


def read_video(path: str, num_frames: int, size: int, sampling: str) -> torch.Tensor:
    """Decode ``num_frames`` frames of ``path`` at ``size x size``: uint8 ``[F, size, size, 3]``.

    decord resizes while decoding, but fails on some size pairs (e.g. 64 → 48 px); then the frames are
    decoded at their own size and resized here.
    """
    try:
        reader = decord.VideoReader(path, width=size, height=size, num_threads=1)
        indices = frame_indices(len(reader), num_frames, sampling)
    except DECORD_ERRORS as error:
        raise VideoDecodeError(f"cannot decode {path}: {error}") from error
    try:
        return _as_tensor(reader.get_batch(indices))
    except DECORD_ERRORS:
        logging.debug("decord cannot resize %s to %d px while decoding; resizing after", path, size)
    try:
        frames = _as_tensor(decord.VideoReader(path, num_threads=1).get_batch(indices))
    except DECORD_ERRORS as error:
        raise VideoDecodeError(f"cannot decode {path}: {error}") from error
    resized = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear",
                            antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@registry.register_processor("glscl_image_train")
class GlsclImageTrainProcessor(BlipImageBaseProcessor):
    """PIL image → ``[3, S, S]``: RandomResizedCrop + horizontal flip (+ RandAugment) + CLIP normalisation.

    ``rand_augment: [num_ops, magnitude]`` adds torchvision's RandAugment after the crop (the fine-tuning recipe
    uses ``[2, 9]`` with ``min_scale: 0.9`` and ``hflip_prob: 0``).
    """

    def __init__(self, image_size=288, min_scale=0.8, max_scale=1.0, hflip_prob=0.5, mean=None, std=None,
                 rand_augment=None):
        super().__init__(mean=mean, std=std)
        augment = [transforms.RandAugment(num_ops=int(rand_augment[0]), magnitude=int(rand_augment[1]))] \
            if rand_augment else []
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(image_size, scale=(min_scale, max_scale),
                                         interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(p=hflip_prob),
            *augment,
            transforms.ToTensor(),
            self.normalize,
        ])

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        return cls(image_size=cfg.get("image_size", 288), min_scale=cfg.get("min_scale", 0.8),
                   max_scale=cfg.get("max_scale", 1.0), hflip_prob=cfg.get("hflip_prob", 0.5),
                   mean=cfg.get("mean", None), std=cfg.get("std", None), rand_augment=cfg.get("rand_augment", None))


@registry.register_processor("glscl_image_eval")
class GlsclImageEvalProcessor(BlipImageBaseProcessor):
    """PIL image → ``[3, S, S]``: bicubic resize + CLIP normalisation."""

    def __init__(self, image_size=288, mean=None, std=None):
        super().__init__(mean=mean, std=std)
        self.transform = transforms.Compose([
            transforms.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            self.normalize,
        ])

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        return cls(image_size=cfg.get("image_size", 288), mean=cfg.get("mean", None), std=cfg.get("std", None))


@registry.register_processor("glscl_caption")
class GlsclCaptionProcessor(BlipCaptionProcessor):
    """Lower-case, punctuation to spaces, whitespace collapsed, at most ``max_words`` words (LAVIS's BLIP rule).

    An empty result means the caption carries nothing to learn from: datasets skip and count it.
    """


VIDEO_LAYOUTS = ("tchw", "cthw")


class GlsclVideoProcessor(BlipImageBaseProcessor):
    """Video path → ``[n_frms, 3, S, S]`` CLIP-normalised frames, ``[3, n_frms, S, S]`` with ``layout="cthw"``
    (see the module docstring)."""

    sampling = "middle"

    def __init__(self, image_size=224, n_frms=4, mean=None, std=None, frame_transform=None, layout="tchw"):
        super().__init__(mean=mean, std=std)
        if layout not in VIDEO_LAYOUTS:
            raise ValueError(f"video layout must be one of {VIDEO_LAYOUTS}, got {layout!r}")
        self.image_size = image_size
        self.n_frms = n_frms
        self.frame_transform = frame_transform
        self.layout = layout

    def __call__(self, path: str) -> torch.Tensor:
        frames = read_video(path, self.n_frms, self.image_size, self.sampling).permute(0, 3, 1, 2).float() / 255.0
        if self.frame_transform is not None:
            frames = self.frame_transform(frames)  # one crop and one flip for all frames of [F, 3, H, W]
        frames = self.normalize(frames)
        return frames.transpose(0, 1) if self.layout == "cthw" else frames


@registry.register_processor("glscl_video_train")
class GlsclVideoTrainProcessor(GlsclVideoProcessor):
    """Random frame per segment (``sampling: middle``: each segment's middle frame, as in evaluation), then
    RandomResizedCrop + horizontal flip shared by all frames.

    ``middle`` is for clips paired with their time reversal: random frames of a clip and of its reversal are not each
    other's reverse even with the same draws, and that jitter hides the order difference from a tower being trained
    (README, "Video that knows time")."""

    def __init__(self, image_size=224, n_frms=4, min_scale=0.8, max_scale=1.0, hflip_prob=0.5, mean=None, std=None,
                 layout="tchw", sampling="random"):
        super().__init__(image_size, n_frms, mean, std, transforms.Compose([
            transforms.RandomResizedCrop(image_size, scale=(min_scale, max_scale),
                                         interpolation=InterpolationMode.BICUBIC, antialias=True),
            transforms.RandomHorizontalFlip(p=hflip_prob),
        ]), layout)
        self.sampling = check_sampling(sampling)

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        return cls(image_size=cfg.get("image_size", 224), n_frms=cfg.get("n_frms", 4),
                   min_scale=cfg.get("min_scale", 0.8), max_scale=cfg.get("max_scale", 1.0),
                   hflip_prob=cfg.get("hflip_prob", 0.5), mean=cfg.get("mean", None), std=cfg.get("std", None),
                   layout=cfg.get("layout", "tchw"), sampling=cfg.get("sampling", "random"))


@registry.register_processor("glscl_video_eval")
class GlsclVideoEvalProcessor(GlsclVideoProcessor):
    """Middle frame of each segment, no augmentation."""

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        return cls(image_size=cfg.get("image_size", 224), n_frms=cfg.get("n_frms", 4), mean=cfg.get("mean", None),
                   std=cfg.get("std", None), layout=cfg.get("layout", "tchw"))
