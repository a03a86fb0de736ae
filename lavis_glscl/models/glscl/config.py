"""Typed options of the GLSCL family, read from the ``model`` block of a yaml, and the sizes each GLSCL model comes in.

The yaml keeps the released recipe's flat names (``mgsc_image_mask_ratio``, ...), one block per tower (``vision``,
``text``, ``fusion``), ``loss_weights`` and the research switches' own blocks (``group_contrast``,
``video_completion``); :meth:`GlsclConfig.from_options` turns them into dataclasses and refuses unknown keys and values
of the wrong type, so a typo fails when the config is read.  A model type's yaml states only what differs from these
defaults.
"""
from dataclasses import dataclass, field, fields
from typing import Dict, List, Literal, Mapping, Optional

from lavis_glscl.models.glscl.group_contrast import GroupContrast
from lavis_glscl.paths import config_path
from lavis_glscl.typed_options import build_dataclass, check_ranges

# The sizes every GLSCL model comes in (each model adds the types of its own recipes)
SIZE_CONFIGS = {
    "base": config_path("models/glscl/pretrain_base.yaml"),
    "demo": config_path("models/glscl/pretrain_demo.yaml"),
    "tiny": config_path("models/glscl/pretrain_tiny.yaml"),
}
# random: half the rows get a random batch image (released); hard: ALBEF's ITC-sampled image and caption per row;
# partner: in batches of groups (train_batch_group_size), the next row of the group's image and caption (a clip's
# time reversal and its opposite caption in the shapes video set), random where the batch has no groups
ITM_NEGATIVES = ("random", "hard", "partner")


@dataclass
class LossWeights:
    """Each objective's weight in the total loss; 0 (the default of an objective the yaml does not weight) turns the
    objective and its passes off and freezes what only it trains.  The released pre-training weights are ITC 0.5,
    ITM 1, MLM 1, MGSC 1, MLTC 0.2; ``rank`` is ``glscl_retrieval``'s fine-tuning objective."""

    itc: float = 0.0
    itm: float = 0.0
    mlm: float = 0.0
    mgsc: float = 0.0
    mltc: float = 0.0
    rank: float = 0.0

    def __post_init__(self):
        check_ranges(self, non_negative=[f.name for f in fields(self)])

    @property
    def active(self) -> List[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass
class VideoCompletion:
    """Which completion objectives run on video batches as well as on images (the released code: MGSC per frame with
    tube-dropped patches, MLTC with tube-masked patches); false keeps that objective to image batches."""

    mgsc: bool = True
    mltc: bool = True


@dataclass
class VisionConfig:
    """The CLIP-style ViT (:class:`~lavis_glscl.models.layers.vision_transformer.VisionTransformer` arguments)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    max_frames: int = 8
    mlp_ratio: float = 4.0
    activation: str = "quick_gelu"
    # "zero" (with freeze: [vision_transformer.temporal_embed]) keeps an image tower free of any per-frame term
    temporal_init: Literal["random", "zero"] = "random"


@dataclass
class VisionInit:
    """CLIP vision weights loaded at construction: ``openai`` (a state dict or OpenAI's TorchScript file) or ``hf``
    (a local ``CLIPVisionModel`` directory)."""

    path: str
    format: str = "openai"
    # a file that only torch.jit.load or full unpickling can read runs code: only when trusted
    trust_checkpoint: bool = False
    # refuse weights that fill less than this share of the ViT's parameters
    min_coverage: float = 0.5

    def __post_init__(self):
        if self.format not in ("openai", "hf"):
            raise ValueError(f"vision_init.format must be 'openai' or 'hf', got {self.format!r}")


@dataclass
class TextConfig:
    """The Hugging Face text encoder: a local model directory (or ``package:<module>``), its weights or only its
    config (``pretrained``), config fields to override, and the tokenizer's truncation length."""

    path: str
    pretrained: bool = True
    config_overrides: Dict[str, object] = field(default_factory=dict)
    max_length: int = 50


@dataclass
class FusionConfig:
    """The co-attention fusion: ``num_layers`` text-side and as many image-side layers of width ``hidden_size``."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    dropout: float = 0.1


@dataclass
class GlsclConfig:
    """Everything a GLSCL model is built from.  Objective options follow the released code (see DEVELOPERS.md,
    "The released code's open choices, as flags")."""

    vision: VisionConfig
    text: TextConfig
    fusion: FusionConfig
    vision_init: Optional[VisionInit] = None
    embed_dim: int = 512
    itc_temperature: float = 0.07
    loss_weights: LossWeights = field(default_factory=LossWeights)
    group_contrast: GroupContrast = field(default_factory=GroupContrast)
    video_completion: VideoCompletion = field(default_factory=VideoCompletion)
    itm_negatives: str = "random"
    # how video batches arrive: [B, F, 3, H, W] (lavis_glscl's processors) or [B, 3, F, H, W] (LAVIS's ALPRO ones; a
    # run sets it from its processors)
    video_layout: Literal["tchw", "cthw"] = "tchw"
    mlm_probability: float = 0.15
    mgsc_image_mask_ratio: float = 0.8
    mgsc_text_mask_ratio: float = 0.4
    mgsc_text_mask_with_replacement: bool = True
    mgsc_temperature: float = 0.03
    mltc_image_mask_ratio: float = 0.3
    mltc_temperature: float = 0.03
    mltc_image_gather: bool = False
    share_unimodal_passes: bool = True
    # One more forward pass of every layer for the memory of its activations (GlsclBase.set_grad_checkpointing)
    grad_checkpointing: bool = False
    mask_seed: int = 0
    rank_negatives: int = 15
    lr_scales: Dict[str, float] = field(default_factory=dict)
    freeze: List[str] = field(default_factory=list)
    answer_list: Optional[str] = None

    def __post_init__(self):
        if self.itm_negatives not in ITM_NEGATIVES:
            raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {self.itm_negatives!r}")
        check_ranges(self, shares=("mgsc_image_mask_ratio", "mgsc_text_mask_ratio", "mltc_image_mask_ratio"),
                     probabilities=("mlm_probability",),
                     positive=("itc_temperature", "mgsc_temperature", "mltc_temperature"))

    @classmethod
    def from_options(cls, options: Mapping) -> "GlsclConfig":
        """The config of a yaml ``model`` block (LAVIS's own keys already removed); unknown keys and values of the
        wrong type are refused with the key named."""
        return build_dataclass(cls, options, "model")

    @property
    def active_objectives(self) -> List[str]:
        return self.loss_weights.active
