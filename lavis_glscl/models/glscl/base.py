"""The GLSCL family's shared model: towers, bridges, co-attention fusion, heads, initialisation and loading, and
the two ways every GLSCL model is read out (LAVIS's retrieval scores and feature extraction).

Architecture (METER-style, as the released GLSCL code builds it): a CLIP-style ViT that encodes images as 1-frame
videos, a Hugging Face BERT/RoBERTa text encoder, linear bridges, N text-side + N image-side co-attention layers,
poolers, and the ITM / MLM / ITC heads.  Module names follow the released checkpoints (``vision_transformer``,
``text_transformer``, ``cross_modal_*``, ``mlm_score``, ...).

Shapes: images ``[B, F, 3, H, W]`` (``[B, 3, H, W]`` is read as ``F = 1``); image tokens after the bridge
``[B, F + F * K, D]`` (frame CLS tokens first); text tokens ``[B, L, D]``.
"""
import dataclasses
import logging
from typing import Dict, Iterator, List, Mapping, Sequence

import torch
import torch.nn.functional as F
from lavis.models.blip_models.blip_outputs import BlipOutputFeatures
from torch import nn

from lavis_glscl.lavis_config import drop_lavis_model_options, take_sizes_from_processors
from lavis_glscl.models.base import ConfiguredModel
from lavis_glscl.models.glscl.config import GlsclConfig
from lavis_glscl.models.glscl.outputs import CrossAttentionMaps, FusionOutput
from lavis_glscl.models.layers.activation_checkpointing import run_segment
from lavis_glscl.models.layers.co_attention import CoAttentionLayer, co_attention_config, extended_attention_mask
from lavis_glscl.models.layers.heads import ITMHead, MLMHead, Pooler, projection_head
from lavis_glscl.models.layers.text_encoder import TextBatch, build_text_encoder, text_hidden_states, tokenize
from lavis_glscl.models.layers.vision_transformer import VisionTransformer, as_frames, visual_input
from lavis_glscl.models.scoring import (
    RetrievalOptions,
    ScorePair,
    encode_gallery_texts,
    encode_gallery_visuals,
    main_scores,
    score_matrices,
)
from lavis_glscl.models.weights import MAE_DECODER_PREFIXES, initialise_vision


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation, which the released code gives every layer it adds to the two encoders."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()


class GlsclBase(ConfiguredModel):
    """Shared GLSCL architecture; the registered models add their objectives (``pretrain``, ``retrieval``) or
    heads (``vqa``)."""

    RELEASED_UNUSED_OK = MAE_DECODER_PREFIXES
    RELEASED_MISSING_OK = ("rank_output",)
    # Rows of token_type_embeddings: text 0, image 1 (NLVR adds its second image's type, 2).
    NUM_TOKEN_TYPES = 2

    @classmethod
    def adapt_to_processors(cls, cfg) -> None:
        """The image size, frame bound and video layout of the datasets' processors
        (:func:`lavis_glscl.lavis_config.take_sizes_from_processors`)."""
        take_sizes_from_processors(cfg)

    @classmethod
    def typed_options(cls, options: Mapping) -> GlsclConfig:
        """The typed config; options only LAVIS's own models read are reported once and dropped."""
        known = {f.name for f in dataclasses.fields(GlsclConfig)}
        return GlsclConfig.from_options(drop_lavis_model_options(dict(options), known, cls.__name__))

    @classmethod
    def build(cls, options: Mapping) -> "GlsclBase":
        config = cls.typed_options(options)
        model = cls(config)
        model.freeze(config.freeze)  # after the subclass's own heads exist
        return model

    def __init__(self, config: GlsclConfig):
        super().__init__()
        self.config = config
        self.max_text_length = config.text.max_length
        self.vision_transformer = VisionTransformer(**vars(config.vision))
        if config.vision_init:
            init = config.vision_init
            report = initialise_vision(self.vision_transformer, init.format, init.path, init.trust_checkpoint,
                                       init.min_coverage)
            logging.info("CLIP vision weights from %s: missing %s, unused %s", config.vision_init.path,
                         report.missing, report.unused)
        self.text_transformer, self.tokenizer = build_text_encoder(config.text.path, config.text.pretrained,
                                                                   config.text.config_overrides)
        starts = {"vision": config.vision_init is not None, "text": config.text.pretrained}
        self.random_towers = tuple(tower for tower, loaded in starts.items() if not loaded)

        fusion = config.fusion
        fusion_config = co_attention_config(fusion.hidden_size, fusion.num_heads, fusion.intermediate_size,
                                            fusion.dropout)
        fusion_config.vocab_size = len(self.tokenizer)
        hidden = fusion.hidden_size
        self.cross_modal_text_transform = nn.Linear(self.text_transformer.config.hidden_size, hidden)
        self.cross_modal_image_transform = nn.Linear(self.vision_transformer.width, hidden)
        self.token_type_embeddings = nn.Embedding(self.NUM_TOKEN_TYPES, hidden)
        layers = range(fusion.num_layers)
        self.cross_modal_text_layers = nn.ModuleList([CoAttentionLayer(fusion_config) for _ in layers])
        self.cross_modal_image_layers = nn.ModuleList([CoAttentionLayer(fusion_config) for _ in layers])
        self.cross_modal_text_pooler = Pooler(hidden)
        self.cross_modal_image_pooler = Pooler(hidden)
        self.itm_score = ITMHead(2 * hidden)
        self.mlm_score = MLMHead(fusion_config)
        self.vision_proj = projection_head(hidden, config.embed_dim)
        self.language_proj = projection_head(hidden, config.embed_dim)
        self.cl_temp = nn.Parameter(torch.tensor(float(config.itc_temperature)))
        for module in (self.cross_modal_text_transform, self.cross_modal_image_transform, self.token_type_embeddings,
                       self.cross_modal_text_layers, self.cross_modal_image_layers, self.cross_modal_text_pooler,
                       self.cross_modal_image_pooler, self.itm_score, self.mlm_score, self.vision_proj,
                       self.language_proj):
            module.apply(init_bert_weights)
        self.freeze([])  # HF's text pooler, which nothing reads
        self.set_grad_checkpointing(config.grad_checkpointing)

    @property
    def device(self) -> torch.device:
        return self.cl_temp.device

    @property
    def loss_weights(self) -> Dict[str, float]:
        return self.config.loss_weights

    # ------------------------------------------------------------------ towers and fusion
    def tokenize(self, captions: List[str]) -> TextBatch:
        return tokenize(self.tokenizer, captions, self.max_text_length, self.device)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unimodal text tokens after the bridge: ``[B, L]`` ids → ``[B, L, D]``."""
        hidden = text_hidden_states(self.text_transformer, input_ids, attention_mask, self.grad_checkpointing)
        return self.cross_modal_text_transform(hidden)

    def encode_image(self, images: torch.Tensor, keep_indices=None, token_mask=None) -> torch.Tensor:
        """Unimodal image tokens after the bridge: ``[B, F, 3, H, W]`` → ``[B, F + F * K, D]``.  ``keep_indices``
        ``[B, K]`` drops the other patches (MGSC), ``token_mask`` ``[B, N]`` replaces patches by the mask token
        (MLTC)."""
        return self.cross_modal_image_transform(self.vision_transformer(images, keep_indices, token_mask))

    def image_embedding(self, image_tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """ITC embedding ``[B, E]`` from the mean of the unimodal frame CLS tokens."""
        return self.vision_proj(image_tokens[:, :num_frames].mean(dim=1))

    def text_embedding(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """ITC embedding ``[B, E]`` from the unimodal text CLS token."""
        return self.language_proj(text_tokens[:, 0])

    def num_frames(self, image_tokens: torch.Tensor) -> int:
        """``F`` of unimodal image tokens ``[B, F + F * N, D]`` of whole frames."""
        return image_tokens.shape[1] // (1 + self.vision_transformer.num_patches)

    def fuse(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor, num_frames: int,
             output_attentions: bool = False, image_token_type: int = 1) -> FusionOutput:
        """Co-attention over ``text_tokens`` ``[B, L, D]`` (padding ``text_mask`` ``[B, L]``) and ``image_tokens``
        ``[B, F + F * K, D]``: each text-side layer attends to the image side's previous output and vice versa.
        The image tokens get token type ``image_token_type`` (NLVR's second image: 2)."""
        text = text_tokens + self.token_type_embeddings(torch.zeros_like(text_mask))
        image_mask = torch.ones(image_tokens.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        image = image_tokens + self.token_type_embeddings(torch.full_like(image_mask, image_token_type))
        text_extended = extended_attention_mask(text_mask, text.dtype)
        image_extended = extended_attention_mask(image_mask, image.dtype)
        attentions = [] if output_attentions else None
        checkpointed = self.grad_checkpointing
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            new_text, attention = run_segment(text_layer.co_attend, text, image, text_extended, image_extended,
                                              output_attentions, checkpointed=checkpointed)
            image, _ = run_segment(image_layer.co_attend, image, text, image_extended, text_extended,
                                   checkpointed=checkpointed)
            text = new_text
            if output_attentions:
                attentions.append(attention)
        cls_feats = torch.cat([self.cross_modal_text_pooler(text), self.cross_modal_image_pooler(image, num_frames)],
                              dim=-1)
        return FusionOutput(text, image, cls_feats, attentions)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint every ViT block, text layer and co-attention layer (timm's name for the switch): their
        activations are recomputed in backward instead of kept, for one more forward pass of each; losses and
        gradients are unchanged (dropout replays its masks).  ``grad_checkpointing: true`` in the config calls it."""
        self.grad_checkpointing = enable
        self.vision_transformer.set_grad_checkpointing(enable)

    def match_score(self, cls_feats: torch.Tensor) -> torch.Tensor:
        """Cross-encoder score ``[P]`` of fused pairs ``[P, 2D]``: the ITM head's "match" logit."""
        return self.itm_score(cls_feats)[:, 1]

    # ------------------------------------------------------------------ what trains
    def objective_reach(self) -> Dict[str, list]:
        """Per objective, the modules and parameters beyond the encoders that its passes train."""
        return {}

    def fused_pair_reach(self) -> list:
        """What any loss on the pooled fusion output trains: token types, co-attention layers and poolers."""
        return [self.token_type_embeddings, self.cross_modal_text_layers, self.cross_modal_image_layers,
                self.cross_modal_text_pooler, self.cross_modal_image_pooler]

    def active_objectives(self) -> List[str]:
        return self.config.active_objectives

    def skips_parameters_on_some_batches(self) -> bool:
        """An active MGSC or MLTC that runs on images only (``video_completion``) leaves parameters without a gradient
        on video batches."""
        active, on_video = self.active_objectives(), self.config.video_completion
        return ("mgsc" in active and not on_video.mgsc) or ("mltc" in active and not on_video.mltc)

    def reached_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter some active objective trains: both encoders and bridges (without the MLTC mask token and
        HF's unused text pooler), plus each active objective's :meth:`objective_reach`."""
        vit = self.vision_transformer
        yield from (param for name, param in vit.named_parameters() if name != "visual_mask_token")
        for module in (self.text_transformer.embeddings, self.text_transformer.encoder,
                       self.cross_modal_text_transform, self.cross_modal_image_transform):
            yield from module.parameters()
        reach = self.objective_reach()
        for objective in self.active_objectives():
            for part in reach[objective]:
                yield from ([part] if isinstance(part, nn.Parameter) else part.parameters())

    def lr_scale_of(self, name: str) -> float:
        """LR multiplier of a parameter: the longest matching prefix in ``lr_scales``, else 1."""
        matches = [prefix for prefix in self.config.lr_scales if name.startswith(prefix)]
        return float(self.config.lr_scales[max(matches, key=len)]) if matches else 1.0

    def get_optimizer_params(self, weight_decay: float, lr_scale: float = 1.0) -> List[dict]:
        """AdamW parameter groups by (LR multiplier, weight decay); no decay on biases, norms and scalars."""
        groups: Dict[tuple, dict] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            decay = 0.0 if param.ndim < 2 or name.endswith(".bias") else float(weight_decay)
            scale = lr_scale * self.lr_scale_of(name)
            group = groups.setdefault((scale, decay), {"params": [], "weight_decay": decay, "lr_scale": scale})
            group["params"].append(param)
        return list(groups.values())

    # ------------------------------------------------------------------ read-outs
    @torch.no_grad()
    def extract_features(self, samples: dict, mode: str = "multimodal") -> BlipOutputFeatures:
        """Features in LAVIS's feature-extractor convention (``BlipOutputFeatures``), so code written against LAVIS's
        ``extract_features`` works unchanged.

        ``mode="image"``: ``image_embeds`` ``[B, F + F * K, D]`` (unimodal, after the bridge) and ``image_embeds_proj``
        (every token through the ITC projection, L2-normalised; for images ``[:, 0]`` is the ITC embedding).
        ``mode="text"``: ``text_embeds`` ``[B, L, D]`` and ``text_embeds_proj`` (``[:, 0]`` the ITC embedding).
        ``mode="multimodal"``: ``multimodal_embeds`` ``[B, L, D]``, the fused text tokens (``[:, 0]`` the fused CLS),
        as LAVIS's BLIP gives its image-grounded text tokens.
        """
        if mode not in ("image", "text", "multimodal"):
            raise ValueError(f"mode must be 'image', 'text' or 'multimodal', got {mode!r}")
        features = {}
        if mode in ("image", "multimodal"):
            images = visual_input(samples, self.config.video_layout).to(self.device)
            image_embeds = self.encode_image(images)
            features.update(image_embeds=image_embeds, image_embeds_proj=F.normalize(self.vision_proj(image_embeds),
                                                                                      dim=-1))
        if mode in ("text", "multimodal"):
            text = self.tokenize(samples["text_input"])
            text_embeds = self.encode_text(text.input_ids, text.attention_mask)
            features.update(text_embeds=text_embeds, text_embeds_proj=F.normalize(self.language_proj(text_embeds),
                                                                                   dim=-1))
        if mode == "multimodal":
            fusion = self.fuse(text_embeds, text.attention_mask, image_embeds, images.shape[1])
            return BlipOutputFeatures(image_embeds=image_embeds, text_embeds=text_embeds,
                                      multimodal_embeds=fusion.text_feats)
        return BlipOutputFeatures(**features)

    @torch.no_grad()
    def cross_attention_maps(self, images: torch.Tensor, captions: Sequence[str]) -> CrossAttentionMaps:
        """Where each caption token looks in its image ``[B, 3, H, W]`` (ALIGN-BENCH's probe): the last text-side
        fusion layer's cross-attention probabilities (not its self-attention, which the released ALIGN-BENCH scripts
        read by mistake), image CLS column dropped, max over heads.  Call it in eval mode: attention dropout acts on
        these probabilities."""
        images = as_frames(images.to(self.device))
        if images.shape[1] != 1:
            raise ValueError(f"cross-attention maps are defined for images, got {images.shape[1]}-frame videos")
        # the model's own tokenization, plus each token's character span
        encoded = self.tokenizer(list(captions), padding="longest", truncation=True, max_length=self.max_text_length,
                                 return_offsets_mapping=True, return_tensors="pt").to(self.device)
        text_tokens = self.encode_text(encoded.input_ids, encoded.attention_mask)
        fusion = self.fuse(text_tokens, encoded.attention_mask, self.encode_image(images), num_frames=1,
                           output_attentions=True)
        patches = fusion.text_to_image_attentions[-1][..., 1:]  # [B, heads, L, K]
        return CrossAttentionMaps(patches.amax(dim=1), encoded.offset_mapping, self.vision_transformer.grid_size)

    @torch.no_grad()
    def retrieval_scores(self, data_loader, task_cfg) -> Dict[str, ScorePair]:
        """Score matrices of the gallery by scorer: ``itc`` (ITC similarity of every pair) and, unless the options say
        ``itc``, ``rerank`` (each query's top ``k_test`` re-ranked by :meth:`match_score`; see
        :func:`~lavis_glscl.models.scoring.score_matrices`).

        ``task_cfg``: :class:`RetrievalOptions` or a run config holding them.  Each value is numpy ``(scores_i2t
        [N_img, N_txt], scores_t2i [N_txt, N_img])``.  Every rank must see the whole gallery
        (``use_dist_eval_sampler: False``); query rows are split across ranks and summed.
        """
        def encode_texts(captions):
            text = self.tokenize(captions)
            tokens = self.encode_text(text.input_ids, text.attention_mask)
            return tokens.cpu(), text.attention_mask.cpu(), F.normalize(self.text_embedding(tokens), dim=-1)

        def encode_visuals(samples):
            tokens = self.encode_image(visual_input(samples, self.config.video_layout).to(self.device))
            return tokens.cpu(), F.normalize(self.image_embedding(tokens, self.num_frames(tokens)), dim=-1)

        text_tokens, text_masks, text_embeds = encode_gallery_texts(data_loader.dataset.text, encode_texts)
        image_tokens, image_embeds = encode_gallery_visuals(data_loader, encode_visuals)
        frames = self.num_frames(image_tokens)

        def itm_scores(image_idx, text_idx):
            fusion = self.fuse(text_tokens[text_idx].to(self.device), text_masks[text_idx].to(self.device),
                               image_tokens[image_idx].to(self.device), frames)
            return self.match_score(fusion.cls_feats)

        return score_matrices(image_embeds @ text_embeds.t(), itm_scores, RetrievalOptions.of(task_cfg))

    def compute_sim_matrix(self, data_loader, task_cfg):
        """LAVIS's retrieval contract: one pair of score matrices, re-ranked unless the options say ``itc`` (the
        ``glscl_retrieval`` task reports both, :meth:`retrieval_scores`)."""
        return main_scores(self.retrieval_scores(data_loader, task_cfg))
