"""GLSCL's image and caption processors, registered with LAVIS.

Images are CLIP-normalised (LAVIS's ``BlipImageBaseProcessor`` defaults).  Training uses
RandomResizedCrop (scale 0.8-1.0, bicubic) and a horizontal flip, as GLSCL pre-training does; set
``hflip_prob: 0`` when captions speak of left and right.  Evaluation resizes to a square.
"""
from lavis.common.registry import registry
from lavis.processors.blip_processors import BlipCaptionProcessor, BlipImageBaseProcessor
from omegaconf import OmegaConf
from torchvision import transforms
from torchvision.transforms.functional import InterpolationMode


@registry.register_processor("glscl_image_train")
class GlsclImageTrainProcessor(BlipImageBaseProcessor):
    """PIL image → ``[3, S, S]``: RandomResizedCrop + horizontal flip + CLIP normalisation."""

    def __init__(self, image_size=288, min_scale=0.8, max_scale=1.0, hflip_prob=0.5, mean=None, std=None):
        super().__init__(mean=mean, std=std)
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(image_size, scale=(min_scale, max_scale),
                                         interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(p=hflip_prob),
            transforms.ToTensor(),
            self.normalize,
        ])

    @classmethod
    def from_config(cls, cfg=None):
        cfg = cfg if cfg is not None else OmegaConf.create()
        return cls(image_size=cfg.get("image_size", 288), min_scale=cfg.get("min_scale", 0.8),
                   max_scale=cfg.get("max_scale", 1.0), hflip_prob=cfg.get("hflip_prob", 0.5),
                   mean=cfg.get("mean", None), std=cfg.get("std", None))


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
