"""``matching_dual_encoder``: a plain dual encoder (the project's ViT + a HF text encoder) trained with any loss
and similarity head of the matching toolkit, so the toolkit can be used and compared without GLSCL.

Image embedding: projected (mean of the) frame CLS; text embedding: projected CLS; both L2-normalised.
Shapes: images ``[B, F, 3, H, W]``; projected tokens ``[B, F + F * N, E]`` and ``[B, L, E]``.

Training: the ``loss`` named in ``lavis_glscl.matching.MATCHING_LOSSES`` on the cosine matrix of the global
batch (samples sharing an ``image_id`` are all positives), plus ``head_weight`` x the same loss on the score
matrix of ``similarity_head`` over this rank's patch and word tokens.  Evaluation: cosine similarity plus
``head_weight`` x head score for every pair (the ``glscl_retrieval`` task applies any score normaliser).

Parts are chosen by name and configured by name (``loss_options: {vse++: {margin: 0.2}, infonce: {...}}``):
LAVIS merges default and run yamls key by key, so switching ``loss: vse++`` never inherits another loss's
options.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional

import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from torch import nn
from transformers.modeling_outputs import ModelOutput

from lavis_glscl.distributed import all_gather_no_grad, all_gather_with_grad
from lavis_glscl.matching import build
from lavis_glscl.models.base import ConfiguredModel
from lavis_glscl.models.glscl.config import TextConfig, VisionConfig
from lavis_glscl.models.layers.text_encoder import TextBatch, build_text_encoder, tokenize
from lavis_glscl.models.layers.vision_transformer import VisionTransformer, visual_input
from lavis_glscl.models.scoring import encode_gallery_texts, encode_gallery_visuals
from lavis_glscl.paths import config_path
from lavis_glscl.typed_options import build_dataclass


@dataclass
class MatchingOutput(ModelOutput):
    """Total loss, the matching loss on the global cosine matrix (``loss_itc``) and on the head's scores."""

    loss: Optional[torch.Tensor] = None
    loss_itc: Optional[torch.Tensor] = None
    loss_head: Optional[torch.Tensor] = None


@dataclass
class DualEncoderConfig:
    """``matching_dual_encoder``'s ``model`` block: GLSCL's tower blocks (``vision``, ``text``), the shared embedding
    width, and the matching loss and similarity head by name, each part's options under its own name.  Every part
    named, chosen or configured, is built once here, so a misspelled part or option fails when the config is read."""

    vision: VisionConfig
    text: TextConfig
    embed_dim: int = 256
    loss: str = "infonce"
    loss_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    similarity_head: Optional[str] = None
    similarity_head_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    head_weight: float = 1.0
    freeze: List[str] = field(default_factory=list)

    def __post_init__(self):
        for kind in ("loss", "similarity_head"):
            chosen, blocks = getattr(self, kind), getattr(self, f"{kind}_options")
            for name in dict.fromkeys([chosen, *blocks] if chosen else blocks):
                self.built(kind, name)

    def built(self, kind: str, name: str):
        """The part ``name`` of ``kind`` with its options from ``<kind>_options`` bound."""
        try:
            return build(kind, name, **getattr(self, f"{kind}_options").get(name, {}))
        except TypeError as error:  # an option the part does not take
            raise ValueError(f"{kind}_options.{name}: {error}") from None

    def part(self, kind: str):
        """The chosen loss or similarity head with its options bound (None: no head)."""
        name = getattr(self, kind)
        return self.built(kind, name) if name else None


@registry.register_model("matching_dual_encoder")
class MatchingDualEncoder(ConfiguredModel):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "demo": config_path("models/matching_dual_encoder/demo.yaml"),
        "tiny": config_path("models/matching_dual_encoder/tiny.yaml"),
    }

    @classmethod
    def typed_options(cls, options: Mapping) -> DualEncoderConfig:
        return build_dataclass(DualEncoderConfig, options, "model")

    @classmethod
    def build(cls, options: Mapping) -> "MatchingDualEncoder":
        return cls(cls.typed_options(options))

    def __init__(self, config: DualEncoderConfig):
        super().__init__()
        self.config = config
        self.max_text_length = config.text.max_length
        self.vision_transformer = VisionTransformer(**vars(config.vision))
        self.text_transformer, self.tokenizer = build_text_encoder(config.text.path, config.text.pretrained,
                                                                   config.text.config_overrides)
        self.vision_proj = nn.Linear(self.vision_transformer.width, config.embed_dim)
        self.text_proj = nn.Linear(self.text_transformer.config.hidden_size, config.embed_dim)
        self.loss_fn = config.part("loss")
        self.head_fn = config.part("similarity_head")
        self.head_weight = config.head_weight
        self.freeze(config.freeze)

    @property
    def device(self) -> torch.device:
        return self.text_proj.weight.device

    def reached_parameters(self) -> Iterator[nn.Parameter]:
        """Everything but the ViT's MLTC mask token: no matching loss masks patches."""
        mask_token = self.vision_transformer.visual_mask_token
        return (param for param in self.parameters() if param is not mask_token)

    def tokenize(self, captions: List[str]) -> TextBatch:
        return tokenize(self.tokenizer, captions, self.max_text_length, self.device)

    def encode_image(self, images: torch.Tensor):
        """``[B, F, 3, H, W]`` → (L2-normalised embedding ``[B, E]``, projected patch tokens ``[B, F * N, E]``)."""
        frames = images.shape[1]
        tokens = self.vision_proj(self.vision_transformer(images))
        return F.normalize(tokens[:, :frames].mean(dim=1), dim=-1), tokens[:, frames:]

    def encode_text(self, text: TextBatch):
        """Ids ``[B, L]`` → (L2-normalised embedding ``[B, E]``, projected tokens ``[B, L, E]``)."""
        hidden = self.text_transformer(input_ids=text.input_ids, attention_mask=text.attention_mask).last_hidden_state
        tokens = self.text_proj(hidden)
        return F.normalize(tokens[:, 0], dim=-1), tokens

    def forward(self, samples: dict) -> MatchingOutput:
        images = visual_input(samples)
        text = self.tokenize(samples["text_input"])
        image_embeds, patch_tokens = self.encode_image(images)
        text_embeds, word_tokens = self.encode_text(text)
        all_image_embeds, all_text_embeds = all_gather_with_grad(image_embeds), all_gather_with_grad(text_embeds)
        positives = None
        if torch.is_tensor(samples.get("image_id")):
            ids = all_gather_no_grad(samples["image_id"].to(self.device))
            positives = ids.unsqueeze(1) == ids.unsqueeze(0)
        losses = {"loss_itc": self.loss_fn(all_image_embeds @ all_text_embeds.t(), positives=positives)}
        total = losses["loss_itc"]
        if self.head_fn is not None:
            local_ids = samples.get("image_id")
            local_positives = (local_ids.unsqueeze(1) == local_ids.unsqueeze(0)).to(self.device) \
                if torch.is_tensor(local_ids) else None
            head_scores = self.head_fn(patch_tokens, word_tokens, None, text.maskable)
            losses["loss_head"] = self.loss_fn(head_scores, positives=local_positives)
            total = total + self.head_weight * losses["loss_head"]
        return MatchingOutput(loss=total, **losses)

    @torch.no_grad()
    def compute_sim_matrix(self, data_loader, task_cfg):
        """Scores for LAVIS's retrieval tasks: cosine (+ weighted head score) for every pair; the task applies any
        score normaliser.  Every rank scores the whole gallery (``use_dist_eval_sampler: False``)."""
        def encode_texts(captions):
            text = self.tokenize(captions)
            embeds, tokens = self.encode_text(text)
            return embeds, tokens, text.maskable

        text_embeds, word_tokens, word_masks = encode_gallery_texts(data_loader.dataset.text, encode_texts)

        def score_images(samples):
            image_embeds, patch_tokens = self.encode_image(visual_input(samples).to(self.device))
            scores = image_embeds @ text_embeds.t()
            if self.head_fn is not None:
                scores = scores + self.head_weight * self.head_fn(patch_tokens, word_tokens, None, word_masks)
            return (scores,)

        (scores,) = encode_gallery_visuals(data_loader, score_images)
        return scores.float().cpu().numpy(), scores.t().float().cpu().numpy()
