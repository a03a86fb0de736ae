"""Typed options of the GLSCL family, read from the ``model`` block of a yaml.

The yaml keeps the released recipe's flat names (``mgsc_image_mask_ratio``, ``loss_weights``, ...) and one block per
tower (``vision``, ``text``, ``fusion``); :meth:`GlsclConfig.from_options` turns them into dataclasses and refuses
unknown keys with the known ones listed, so a typo fails when the model is built.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from lavis_glscl.typed_options import build_dataclass

OBJECTIVES = ("itc", "itm", "mlm", "mgsc", "mltc", "rank")
# random: half the rows get a random batch image (released); hard: ALBEF's ITC-sampled image and caption per row;
# partner: in batches of groups (train_batch_group_size), the next row of the group's image and caption (a clip's
# time reversal and its opposite caption in the shapes video set), random where the batch has no groups
ITM_NEGATIVES = ("random", "hard", "partner")


def objective_of(loss_name: str) -> str:
    """The objective a logged loss belongs to, whose weight it takes (``mgsc_image`` → ``mgsc``)."""
    return loss_name.split("_")[0]


def loss_weights_for(known: Sequence[str], given: Optional[Mapping[str, float]]) -> Dict[str, float]:
    """Every objective in ``known`` with its weight from ``given`` (0 when absent); unknown names are refused."""
    unknown = set(given or {}) - set(known)
    if unknown:
        raise ValueError(f"unknown loss_weights {sorted(unknown)}; known objectives: {list(known)}")
    return {name: float((given or {}).get(name, 0.0)) for name in known}


@dataclass
class VisionConfig:
    """The CLIP-style ViT (:class:`~lavis_glscl.models.vision_transformer.VisionTransformer` arguments)."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    max_frames: int = 8
    mlp_ratio: float = 4.0
    activation: str = "quick_gelu"
    # "zero" (with freeze: [vision_transformer.temporal_embed]) keeps an image tower free of any per-frame term
    temporal_init: str = "random"


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
    # ITC inside each batch group too (a clip against its time reversal), this times the ITC weight; 0: released ITC.
    # Its temperature: fixed, or ITC's learnable one when None
    itc_group_weight: float = 0.0
    itc_group_temperature: Optional[float] = None
    # True: the group term trains the visual side only, toward the captions' current features.  While a clip and its
    # reversal still embed alike, a trained text side lowers the group loss fastest by making the opposite captions
    # alike (MiniLM's CLS: cosine 0.94 to 0.999 in 100 steps), after which nothing teaches order.
    itc_group_detach_text: bool = False
    # With the group term on: the cosine above which a group's caption ITC features pay a hinge on ITC's logit scale
    # (objectives.group_text_separation_loss, weighted as the group term); None: no such term
    itc_group_text_margin: Optional[float] = None
    loss_weights: Dict[str, float] = field(default_factory=dict)
    itm_negatives: str = "random"
    mlm_probability: float = 0.15
    mgsc_image_mask_ratio: float = 0.8
    mgsc_text_mask_ratio: float = 0.4
    mgsc_text_mask_with_replacement: bool = True
    mgsc_temperature: float = 0.03
    mltc_image_mask_ratio: float = 0.3
    mltc_temperature: float = 0.03
    mltc_image_gather: bool = False
    mltc_on_video: bool = True
    # False: MGSC on images only.  On the shapes video pairs MGSC's per-frame completion from 3 of 16 patches holds
    # the direction-only pairs at chance while ITC + ITM + MLM learn them (README "Video that knows time")
    mgsc_on_video: bool = True
    share_unimodal_passes: bool = True
    # One more forward pass of every layer for the memory of its activations (GlsclBase.set_grad_checkpointing)
    grad_checkpointing: bool = False
    mask_seed: int = 0
    rank_negatives: int = 15
    lr_scales: Dict[str, float] = field(default_factory=dict)
    freeze: List[str] = field(default_factory=list)
    answer_list: Optional[str] = None

    def __post_init__(self):
        self.loss_weights = loss_weights_for(OBJECTIVES, self.loss_weights)
        if self.itm_negatives not in ITM_NEGATIVES:
            raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {self.itm_negatives!r}")
        if self.itc_group_weight < 0:
            raise ValueError(f"itc_group_weight must be >= 0, got {self.itc_group_weight}")
        if self.itc_group_temperature is not None and self.itc_group_temperature <= 0:
            raise ValueError(f"itc_group_temperature must be > 0, got {self.itc_group_temperature}")
        if self.itc_group_text_margin is not None and not -1.0 <= self.itc_group_text_margin < 1.0:
            raise ValueError(f"itc_group_text_margin must be a cosine in [-1, 1), got {self.itc_group_text_margin}")

    @classmethod
    def from_options(cls, options: Mapping) -> "GlsclConfig":
        """The config of a yaml ``model`` block (LAVIS's own keys already removed); unknown keys and values of the
        wrong type are refused with the key named."""
        return build_dataclass(cls, options, "model")

    @property
    def active_objectives(self) -> List[str]:
        return [name for name, weight in self.loss_weights.items() if weight]
