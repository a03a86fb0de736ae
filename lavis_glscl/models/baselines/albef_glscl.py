"""``albef_glscl_pretrain``: LAVIS's ALBEF pre-training (ITC with momentum distillation and queues, ITM with hard
negatives, MLM) plus GLSCL's completion objectives on ALBEF's own encoders, built offline from local configs.

ALBEF fuses on the text side only (BERT layers from ``fusion_layer`` on cross-attend to the ViT tokens), so the
completion objectives read the fused text stream:

- MGSC text: the fused [CLS] of (full image, masked text) must find the fused [CLS] of (80 %-dropped image, full
  text), as GLSCL's P2 and P1 passes;
- MGSC image: the fused [CLS] of (dropped image, full text), through ``image_completion_head``, must find the ViT
  [CLS] of the full image (ALBEF has no fused image stream to take GLSCL's fused image target from);
- MLTC text: the fused tokens of (full image, masked text) at the masked positions must find the fused tokens of
  (dropped image, full text) at the same positions.  GLSCL's image MLTC needs fused image tokens: not applicable.

With ``loss_weights`` of 0 the model is ALBEF pre-training exactly as LAVIS runs it (``AlbefPretrain.forward``),
at whatever width and depth its config gives, which makes it the baseline of a side-by-side comparison.
"""
from dataclasses import dataclass, field, fields
from typing import Dict, Iterator, Tuple

import torch
from lavis.common.registry import registry
from lavis.models.vit import VisionTransformerEncoder
from torch import nn

from lavis_glscl.models.baselines.lavis_offline import AlbefPretrainOffline
from lavis_glscl.models.glscl.outputs import WeightedLoss
from lavis_glscl.models.pretraining import objectives
from lavis_glscl.models.pretraining.masking import keep_patch_indices, mgsc_text_mask
from lavis_glscl.paths import config_path
from lavis_glscl.typed_options import build_dataclass, check_ranges


@dataclass
class CompletionWeights:
    """The weights of GLSCL's completion objectives on ALBEF (ALBEF's own ITC, ITM and MLM always run)."""

    mgsc: float = 0.0
    mltc: float = 0.0

    def __post_init__(self):
        check_ranges(self, non_negative=[f.name for f in fields(self)])


@dataclass
class CompletionOptions:
    """GLSCL's completion objectives on ALBEF, under GLSCL's option names and with its released values; every other
    key of the ``model`` block is ALBEF's own."""

    loss_weights: CompletionWeights = field(default_factory=CompletionWeights)
    mgsc_image_mask_ratio: float = 0.8  # the share of patches dropped from P1's image
    mgsc_text_mask_ratio: float = 0.4  # the share of caption words masked in P2
    completion_temperature: float = 0.03

    def __post_init__(self):
        check_ranges(self, shares=("mgsc_image_mask_ratio", "mgsc_text_mask_ratio"),
                     positive=("completion_temperature",))

    @classmethod
    def split(cls, options: dict) -> Tuple["CompletionOptions", dict]:
        """A ``model`` block's options as (these, typed and checked; ALBEF's)."""
        names = {f.name for f in fields(cls)}
        completion = build_dataclass(cls, {k: v for k, v in options.items() if k in names}, "model")
        return completion, {k: v for k, v in options.items() if k not in names}


def encode_kept_patches(vit: VisionTransformerEncoder, images: torch.Tensor,
                        keep_indices: torch.Tensor) -> torch.Tensor:
    """MAE-style patch dropping through LAVIS's ViT: ``images`` ``[B, 3, H, W]`` and ``keep_indices`` ``[B, K]`` →
    ``[B, 1 + K, D]``; position embeddings are added before dropping, as GLSCL's P1 pass does."""
    patches = vit.patch_embed(images) + vit.pos_embed[:, 1:]
    kept = patches.gather(1, keep_indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(images.shape[0], -1, -1)
    hidden = vit.pos_drop(torch.cat([cls, kept], dim=1))
    for block in vit.blocks:
        hidden = block(hidden)
    return vit.norm(hidden)


@registry.register_model("albef_glscl_pretrain")
class AlbefGlsclPretrain(AlbefPretrainOffline):
    """ALBEF pre-training + MGSC + MLTC (see the module docstring); types ``demo`` (matched to GLSCL ``demo``) and
    ``tiny``.  ``samples``: ``image`` ``[B, 3, H, W]``, ``text_input``, and the runner's ``epoch``, ``iters``,
    ``num_iters_per_epoch``."""

    PRETRAINED_MODEL_CONFIG_DICT = {"demo": config_path("models/albef_glscl/pretrain_demo.yaml"),
                                    "tiny": config_path("models/albef_glscl/pretrain_tiny.yaml")}

    def __init__(self, **options):
        """``options``: those of :class:`CompletionOptions` and of ``albef_pretrain_offline`` (``vision``,
        ``med_config``, ``queue_size``, ...)."""
        completion, albef_options = CompletionOptions.split(options)
        super().__init__(**albef_options)
        self.completion = completion
        self.image_completion_head = nn.Linear(self.text_encoder.config.hidden_size, self.visual_encoder.vision_width)

    @classmethod
    def typed_options(cls, options: dict) -> dict:
        completion, albef_options = CompletionOptions.split(options)
        return {**albef_options, **vars(completion)}

    def reached_parameters(self) -> Iterator[nn.Parameter]:
        """ALBEF's own objectives always run; ``image_completion_head`` serves MGSC only."""
        head = {id(param) for param in self.image_completion_head.parameters()}
        for param in self.parameters():
            if self.completion.loss_weights.mgsc or id(param) not in head:
                yield param

    def forward(self, samples: dict) -> Dict[str, torch.Tensor]:
        albef = super().forward(samples)
        losses = {"loss_itc": albef.loss_itc, "loss_itm": albef.loss_itm, "loss_mlm": albef.loss_mlm}
        completion = {}
        if self.completion.loss_weights.mgsc or self.completion.loss_weights.mltc:
            completion = self.completion_losses(samples["image"], samples["text_input"],
                                                albef.intermediate_output.image_embeds,
                                                albef.intermediate_output.text_embeds)
            losses.update({f"loss_{name}": weighted.loss for name, weighted in completion.items()})
        extra = sum(weighted.weight * weighted.loss for weighted in completion.values())
        return {"loss": albef.loss + extra, **losses}

    def completion_losses(self, images: torch.Tensor, captions, image_tokens: torch.Tensor,
                          text_tokens: torch.Tensor) -> Dict[str, WeightedLoss]:
        """MGSC (text, image) and MLTC (text) on ALBEF's encoders.  ``image_tokens`` ``[B, 1 + N, Dv]`` and
        ``text_tokens`` ``[B, L, Dt]`` are ALBEF's unimodal outputs for the full ``images`` ``[B, 3, H, W]`` and
        ``captions``, reused from its own forward (same tokenisation)."""
        text = self.tokenize(captions)
        special = (text.input_ids == self.tokenizer.cls_token_id) | (text.input_ids == self.tokenizer.sep_token_id)
        maskable = text.attention_mask.bool() & ~special
        masked = mgsc_text_mask(maskable, torch.rand(maskable.shape, device=self.device),
                                self.completion.mgsc_text_mask_ratio)
        masked_ids = text.input_ids.masked_fill(masked, self.tokenizer.mask_token_id)

        num_patches = image_tokens.shape[1] - 1
        keep = keep_patch_indices(torch.rand(images.shape[0], num_patches, device=self.device),
                                  1.0 - self.completion.mgsc_image_mask_ratio)
        dropped_image = encode_kept_patches(self.visual_encoder, images, keep)
        # P1: dropped image, full text; P2: full image, masked text
        fused_p1 = self.fuse(text_tokens, text.attention_mask, dropped_image)
        fused_p2 = self.fuse(self.encode_text(masked_ids, text.attention_mask), text.attention_mask, image_tokens)
        tau = self.completion.completion_temperature
        losses = {}
        weights = self.completion.loss_weights
        if weights.mgsc:
            losses["mgsc_text"] = WeightedLoss(objectives.mgsc_loss(fused_p2[:, 0], fused_p1[:, 0], tau), weights.mgsc)
            losses["mgsc_image"] = WeightedLoss(objectives.mgsc_loss(
                self.image_completion_head(fused_p1[:, 0]), image_tokens[:, 0], tau), weights.mgsc)
        if weights.mltc:
            losses["mltc_text"] = WeightedLoss(objectives.mltc_loss(fused_p2, fused_p1, masked, tau), weights.mltc)
        return losses
