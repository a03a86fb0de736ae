"""GLSCL (Global and Local Semantic Completion Learning) as LAVIS models.

Architecture (METER-style, as the released GLSCL code builds it): a CLIP-style ViT that encodes images as 1-frame
videos, a Hugging Face BERT/RoBERTa text encoder, linear bridges, N text-side + N image-side
co-attention layers, poolers, and the ITM / MLM / ITC heads.  Module names follow the released
checkpoints (``vision_transformer``, ``text_transformer``, ``cross_modal_*``, ``mlm_score``, ...).

Shapes: images ``[B, F, 3, H, W]`` (``[B, 3, H, W]`` is read as ``F = 1``); image tokens after the
bridge ``[B, F + F * K, D]`` (frame CLS tokens first); text tokens ``[B, L, D]``.

One training step composes the pure objectives of :mod:`lavis_glscl.models.objectives`:
ITC + ITM + MLM + MGSC (passes P1: dropped image + full text, P2: full image + masked text) + MLTC
(P3: mask-token image + full text).  Every unimodal pass is computed once per distinct input and shared
by the objectives that use it (``share_unimodal_passes``); ``False`` recomputes it per use, as the
released code does.  All random decisions come from :class:`StepRandomness`.
"""
import importlib
import json
import logging
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from lavis.common.registry import registry
from torch import nn
from transformers.modeling_outputs import ModelOutput

from lavis_glscl.distributed import all_gather_no_grad, all_gather_with_grad, all_reduce_sum, world
from lavis_glscl.matching import build_loss, build_similarity_head
from lavis_glscl.models import objectives
from lavis_glscl.models.base import ConfiguredModel
from lavis_glscl.models.checkpoints import (MAE_DECODER_PREFIXES, LoadReport, load_clip_vision, load_hf_clip_vision,
                                            read_checkpoint)
from lavis_glscl.models.co_attention import CoAttentionLayer, co_attention_config, extended_attention_mask
from lavis_glscl.models.heads import ITMHead, MLMHead, Pooler, projection_head
from lavis_glscl.models.masking import (StepRandomness, keep_patch_indices, mgsc_text_mask, mlm_mask,
                                        patch_token_mask)
from lavis_glscl.models.negatives import forbidden_negatives, hard_negatives, negative_rows, random_partners
from lavis_glscl.models.retrieval import score_matrices
from lavis_glscl.models.text_encoder import TextBatch, build_text_encoder, tokenize
from lavis_glscl.models.vision_transformer import VisionTransformer
from lavis_glscl.paths import PACKAGE_PREFIX, config_path

OBJECTIVES = ("itc", "itm", "mlm", "mgsc", "mltc", "head", "rank")


@dataclass
class GlsclOutput(ModelOutput):
    """Total loss and each objective's (unweighted) loss; MGSC and MLTC are split by modality; ``loss_head`` is
    the optional matching-toolkit similarity head's loss; ``loss_rank`` the released retrieval fine-tuning loss."""

    loss: Optional[torch.Tensor] = None
    loss_itc: Optional[torch.Tensor] = None
    loss_itm: Optional[torch.Tensor] = None
    loss_mlm: Optional[torch.Tensor] = None
    loss_mgsc_image: Optional[torch.Tensor] = None
    loss_mgsc_text: Optional[torch.Tensor] = None
    loss_mltc_image: Optional[torch.Tensor] = None
    loss_mltc_text: Optional[torch.Tensor] = None
    loss_head: Optional[torch.Tensor] = None
    loss_rank: Optional[torch.Tensor] = None
    loss_vqa: Optional[torch.Tensor] = None


class FusionOutput(NamedTuple):
    text_feats: torch.Tensor  # [B, L, D]
    image_feats: torch.Tensor  # [B, F + F * K, D]
    cls_feats: torch.Tensor  # [B, 2D]: pooled text, pooled image
    text_to_image_attentions: Optional[List[torch.Tensor]]  # per layer [B, heads, L, F + F * K]


class CrossAttentionMaps(NamedTuple):
    attention: torch.Tensor  # [B, L, K]: last fusion layer, text token -> image patch, max over heads
    offsets: torch.Tensor  # [B, L, 2]: each token's character span in its caption; (0, 0) for special tokens, padding
    grid_size: int  # the K patches form a grid_size x grid_size grid, row-major


class UnimodalPasses:
    """Encoder outputs of one step by input variant: computed once and shared, or recomputed per use."""

    def __init__(self, share: bool):
        self.share = share
        self._cache: Dict[str, torch.Tensor] = {}

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.share:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


def as_frames(visual: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` images → ``[B, 1, 3, H, W]``; ``[B, F, 3, H, W]`` videos unchanged."""
    if visual.dim() == 4:
        return visual.unsqueeze(1)
    if visual.dim() == 5:
        return visual
    raise ValueError(f"expected images [B, 3, H, W] or videos [B, F, 3, H, W], got {tuple(visual.shape)}")


def visual_input(samples: dict) -> torch.Tensor:
    """The batch's pixels as ``[B, F, 3, H, W]``, from ``samples['image']`` or ``samples['video']``."""
    for key in ("image", "video"):
        if key in samples:
            return as_frames(samples[key])
    raise KeyError(f"samples need an 'image' or 'video' entry, got keys {sorted(samples)}")


def initialise_vision(vit: VisionTransformer, format: str, path: str) -> LoadReport:
    """CLIP vision weights for the ViT at construction: ``format`` ``openai`` (a state dict or OpenAI's
    TorchScript file) or ``hf`` (a local ``CLIPVisionModel`` directory)."""
    if format == "openai":
        report = load_clip_vision(vit, read_checkpoint(path))
    elif format == "hf":
        report = load_hf_clip_vision(vit, path)
    else:
        raise ValueError(f"vision_init.format must be 'openai' or 'hf', got {format!r}")
    logging.info("CLIP vision weights from %s: missing %s, unused %s", path, report.missing, report.unused)
    return report


class GlsclModel(ConfiguredModel):
    """Shared GLSCL architecture, objectives and retrieval scoring; registered subclasses set defaults."""

    RELEASED_UNUSED_OK = MAE_DECODER_PREFIXES
    RELEASED_MISSING_OK = ("rank_output",)

    def __init__(self, vision: dict, text: dict, fusion: dict, embed_dim: int = 512, itc_temperature: float = 0.07,
                 loss_weights: Optional[dict] = None, itm_negatives: str = "random", mlm_probability: float = 0.15,
                 mgsc_image_mask_ratio: float = 0.8, mgsc_text_mask_ratio: float = 0.4,
                 mgsc_text_mask_with_replacement: bool = True, mgsc_temperature: float = 0.03,
                 mltc_image_mask_ratio: float = 0.3, mltc_temperature: float = 0.03, mltc_image_gather: bool = False,
                 mltc_on_video: bool = True, share_unimodal_passes: bool = True, mask_seed: int = 0,
                 lr_scales: Optional[dict] = None, freeze: Optional[List[str]] = None,
                 contrastive_loss: Optional[str] = None, contrastive_loss_options: Optional[Dict[str, dict]] = None,
                 similarity_head: Optional[str] = None, similarity_head_options: Optional[Dict[str, dict]] = None,
                 head_eval_weight: float = 1.0, vision_init: Optional[dict] = None, rank_negatives: int = 15):
        super().__init__()
        text = dict(text)
        self.max_text_length = int(text.pop("max_length", 50))
        self.vision_transformer = VisionTransformer(**vision)
        if vision_init:
            self.vision_init_report = initialise_vision(self.vision_transformer, **vision_init)
        starts = {"vision": bool(vision_init), "text": bool(text.get("pretrained", True))}
        self.random_towers = tuple(tower for tower, loaded in starts.items() if not loaded)
        self.text_transformer, self.tokenizer = build_text_encoder(**text)
        hidden = fusion["hidden_size"]
        fusion_config = co_attention_config(hidden, fusion["num_heads"], fusion["intermediate_size"],
                                            fusion.get("dropout", 0.1))
        fusion_config.vocab_size = len(self.tokenizer)
        self.cross_modal_text_transform = nn.Linear(self.text_transformer.config.hidden_size, hidden)
        self.cross_modal_image_transform = nn.Linear(self.vision_transformer.width, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.cross_modal_text_layers = nn.ModuleList(
            [CoAttentionLayer(fusion_config) for _ in range(fusion["num_layers"])])
        self.cross_modal_image_layers = nn.ModuleList(
            [CoAttentionLayer(fusion_config) for _ in range(fusion["num_layers"])])
        self.cross_modal_text_pooler = Pooler(hidden)
        self.cross_modal_image_pooler = Pooler(hidden)
        self.itm_score = ITMHead(2 * hidden)
        self.mlm_score = MLMHead(fusion_config)
        self.vision_proj = projection_head(hidden, embed_dim)
        self.language_proj = projection_head(hidden, embed_dim)
        self.cl_temp = nn.Parameter(torch.tensor(float(itc_temperature)))
        for module in (self.cross_modal_text_transform, self.cross_modal_image_transform, self.token_type_embeddings,
                       self.cross_modal_text_layers, self.cross_modal_image_layers, self.cross_modal_text_pooler,
                       self.cross_modal_image_pooler, self.itm_score, self.mlm_score, self.vision_proj,
                       self.language_proj):
            module.apply(self._init_bert_weights)

        weights = objectives.loss_weights_for(OBJECTIVES, loss_weights)
        if itm_negatives not in ("random", "hard"):
            raise ValueError(f"itm_negatives must be 'random' or 'hard', got {itm_negatives!r}")
        self.loss_weights = weights
        self.itm_negatives = itm_negatives
        self.mlm_probability = mlm_probability
        self.mgsc_image_keep_ratio = 1.0 - mgsc_image_mask_ratio
        self.mgsc_text_mask_ratio = mgsc_text_mask_ratio
        self.mgsc_text_mask_with_replacement = mgsc_text_mask_with_replacement
        self.mgsc_temperature = mgsc_temperature
        self.mltc_image_mask_ratio = mltc_image_mask_ratio
        self.mltc_temperature = mltc_temperature
        self.mltc_image_gather = mltc_image_gather
        self.mltc_on_video = mltc_on_video
        self.share_unimodal_passes = share_unimodal_passes
        self.mask_seed = mask_seed
        self.lr_scales = dict(lr_scales or {})
        self.contrastive_fn = (build_loss(contrastive_loss, **(contrastive_loss_options or {}).get(contrastive_loss, {}))
                               if contrastive_loss else None)
        self.head_fn = (build_similarity_head(similarity_head,
                                              **(similarity_head_options or {}).get(similarity_head, {}))
                        if similarity_head else None)
        if weights["head"] and self.head_fn is None:
            raise ValueError("loss_weights.head is set but no similarity_head is configured")
        self.head_eval_weight = float(head_eval_weight) if self.head_fn is not None else 0.0
        self.rank_negatives = int(rank_negatives)
        if weights["rank"]:
            # The released recipe scores pairs with the ITM head's "match" row, as a 2D -> 1 linear layer; the
            # ITM head itself stays as pre-trained unless ITM is trained too.
            self.rank_output = nn.Linear(2 * hidden, 1)
            self.init_rank_output()
        self._steps_without_schedule = 0
        self.freeze(freeze or [])

    def active_objectives(self) -> List[str]:
        return [name for name, weight in self.loss_weights.items() if weight]

    def objective_reach(self) -> Dict[str, list]:
        """Per objective, the modules and parameters beyond the encoders that its passes train."""
        fusion = [self.token_type_embeddings, self.cross_modal_text_layers, self.cross_modal_image_layers]
        poolers = [self.cross_modal_text_pooler, self.cross_modal_image_pooler]
        temperature = [self.cl_temp] if self.contrastive_fn is None else []
        return {
            "itc": [self.vision_proj, self.language_proj, *temperature],
            "head": temperature,
            "itm": [*fusion, *poolers, self.itm_score],
            # MLM reads the fused text tokens: the last image-side layer's output feeds no text layer
            "mlm": [self.token_type_embeddings, self.cross_modal_text_layers, *self.cross_modal_image_layers[:-1],
                    self.mlm_score],
            "mgsc": fusion,
            "mltc": [*fusion, self.vision_transformer.visual_mask_token],
            "rank": [*fusion, *poolers, *([self.rank_output] if hasattr(self, "rank_output") else [])],
        }

    def reached_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter some active objective trains: both encoders and bridges (without the MLTC mask token
        and HF's unused text pooler), plus each active objective's :meth:`objective_reach`."""
        vit = self.vision_transformer
        yield from (param for name, param in vit.named_parameters() if name != "visual_mask_token")
        for module in (self.text_transformer.embeddings, self.text_transformer.encoder,
                       self.cross_modal_text_transform, self.cross_modal_image_transform):
            yield from module.parameters()
        reach = self.objective_reach()
        for objective in self.active_objectives():
            for part in reach[objective]:
                yield from ([part] if isinstance(part, nn.Parameter) else part.parameters())

    @property
    def device(self) -> torch.device:
        return self.cl_temp.device

    @torch.no_grad()
    def init_rank_output(self) -> None:
        self.rank_output.weight.copy_(self.itm_score.fc.weight[1:2])
        self.rank_output.bias.copy_(self.itm_score.fc.bias[1:2])

    def load_checkpoint(self, url_or_filename, trust_checkpoint: bool = False):
        """As ``ConfiguredModel.load_checkpoint``; a checkpoint without ``rank_output`` (any pre-training one)
        re-initialises it from its ITM head, as the released fine-tuning does."""
        report = super().load_checkpoint(url_or_filename, trust_checkpoint)
        if hasattr(self, "rank_output") and "rank_output.weight" in report.missing:
            self.init_rank_output()
        return report

    @staticmethod
    def _init_bert_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # ------------------------------------------------------------------ encoders and fusion
    def tokenize(self, captions: List[str]) -> TextBatch:
        return tokenize(self.tokenizer, captions, self.max_text_length, self.device)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unimodal text tokens after the bridge: ``[B, L]`` ids → ``[B, L, D]``."""
        hidden = self.text_transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.cross_modal_text_transform(hidden)

    def encode_image(self, images: torch.Tensor, keep_indices: Optional[torch.Tensor] = None,
                     token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unimodal image tokens after the bridge: ``[B, F, 3, H, W]`` → ``[B, F + F * K, D]``."""
        return self.cross_modal_image_transform(self.vision_transformer(images, keep_indices, token_mask))

    def image_embedding(self, image_tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """ITC embedding ``[B, E]`` from the mean of the unimodal frame CLS tokens."""
        return self.vision_proj(image_tokens[:, :num_frames].mean(dim=1))

    def text_embedding(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """ITC embedding ``[B, E]`` from the unimodal text CLS token."""
        return self.language_proj(text_tokens[:, 0])

    def fuse(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor, num_frames: int,
             output_attentions: bool = False) -> FusionOutput:
        """Co-attention over ``text_tokens`` ``[B, L, D]`` (padding ``text_mask`` ``[B, L]``) and ``image_tokens``."""
        text = text_tokens + self.token_type_embeddings(torch.zeros_like(text_mask))
        image_mask = torch.ones(image_tokens.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        image = image_tokens + self.token_type_embeddings(image_mask)
        text_extended = extended_attention_mask(text_mask, text.dtype)
        image_extended = extended_attention_mask(image_mask, image.dtype)
        attentions = [] if output_attentions else None
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            new_text, attention = text_layer.co_attend(text, image, text_extended, image_extended, output_attentions)
            image, _ = image_layer.co_attend(image, text, image_extended, text_extended)
            text = new_text
            if output_attentions:
                attentions.append(attention)
        cls_feats = torch.cat([self.cross_modal_text_pooler(text), self.cross_modal_image_pooler(image, num_frames)],
                              dim=-1)
        return FusionOutput(text, image, cls_feats, attentions)

    @torch.no_grad()
    def cross_attention_maps(self, images: torch.Tensor, captions: List[str]) -> CrossAttentionMaps:
        """Where each caption token looks in its image ``[B, 3, H, W]`` (ALIGN-BENCH's probe).

        Reads the last text-side fusion layer's cross-attention probabilities (not its self-attention, which the
        released ALIGN-BENCH scripts read by mistake), drops the image CLS column and takes the max over heads.
        Call it in eval mode: attention dropout acts on these probabilities.
        """
        images = as_frames(images.to(self.device))
        if images.shape[1] != 1:
            raise ValueError(f"cross-attention maps are defined for images, got {images.shape[1]}-frame videos")
        # The tokenization of ``tokenize``, plus each token's character span.
        encoded = self.tokenizer(list(captions), padding="longest", truncation=True, max_length=self.max_text_length,
                                 return_offsets_mapping=True, return_tensors="pt").to(self.device)
        text_tokens = self.encode_text(encoded.input_ids, encoded.attention_mask)
        fusion = self.fuse(text_tokens, encoded.attention_mask, self.encode_image(images), num_frames=1,
                           output_attentions=True)
        patches = fusion.text_to_image_attentions[-1][..., 1:]  # [B, heads, L, K]
        return CrossAttentionMaps(patches.amax(dim=1), encoded.offset_mapping, self.vision_transformer.grid_size)

    # ------------------------------------------------------------------ training step
    def forward(self, samples: dict) -> GlsclOutput:
        """``samples``: ``image`` ``[B, 3, H, W]`` or ``video`` ``[B, F, 3, H, W]``, ``text_input`` (list of str),
        optionally ``image_id`` ``[B]`` (negatives never share it) and the runner's ``epoch``/``iters``."""
        images = visual_input(samples)
        batch, frames = images.shape[:2]
        text = self.tokenize(samples["text_input"])
        if text.input_ids.shape[0] != batch:
            raise ValueError(f"{text.input_ids.shape[0]} captions for {batch} images")
        rng = self._step_randomness(samples, batch)
        noise = self._draw_noise(rng)
        passes = UnimodalPasses(self.share_unimodal_passes)
        weights = self.loss_weights
        losses: Dict[str, torch.Tensor] = {}

        def image_full():
            return passes.get("image_full", lambda: self.encode_image(images))

        def text_full():
            return passes.get("text_full", lambda: self.encode_text(text.input_ids, text.attention_mask))

        if weights["itc"] or (weights["itm"] and self.itm_negatives == "hard"):
            image_embeds = self.image_embedding(image_full(), frames)
            text_embeds = self.text_embedding(text_full())
            if weights["itc"]:
                losses["itc"] = self._contrastive_loss(image_embeds, text_embeds, samples)
        if weights["head"]:
            head_scores = self.head_fn(image_full()[:, frames:], text_full(), None, text.maskable)
            losses["head"] = self._matching_loss(head_scores, samples.get("image_id"))
        if weights["itm"]:
            losses["itm"] = self._itm_loss(samples, images, text, image_full, text_full, noise, rng,
                                           (image_embeds, text_embeds) if self.itm_negatives == "hard" else None)
        if weights["mlm"]:
            losses["mlm"] = self._mlm_loss(text, image_full, frames, noise, passes)
        if weights["mgsc"] or weights["mltc"]:
            losses.update(self._completion_losses(images, text, image_full, text_full, noise, passes))
        if weights["rank"]:
            losses["rank"] = self._rank_loss(samples, text, image_full(), text_full(), frames, noise, rng)
        return self._total(losses)

    def _rank_loss(self, samples, text: TextBatch, image_tokens, text_tokens, frames: int, noise,
                   rng: StepRandomness) -> torch.Tensor:
        """The released retrieval fine-tuning loss: each image scores its caption and ``rank_negatives`` random
        captions of other images from the global batch with ``rank_output``; cross-entropy over them."""
        batch = image_tokens.shape[0]
        ids = samples.get("image_id")
        row_ids = ids.to(self.device) if torch.is_tensor(ids) else None
        forbidden = forbidden_negatives(rng.row_offset, batch, rng.global_batch_size, row_ids,
                                        all_gather_no_grad(row_ids) if row_ids is not None else None, self.device)
        available = int((~forbidden).sum(dim=1).min())
        if available < self.rank_negatives:
            raise ValueError(f"the rank loss needs {self.rank_negatives} negative captions per image, the global batch "
                             f"offers {available}: raise the batch size or lower rank_negatives")
        negatives = self._noise(noise, "itm_partner").masked_fill(forbidden, 2.0).topk(
            self.rank_negatives, dim=1, largest=False).indices  # [B, K] global caption indices
        all_text = all_gather_with_grad(text_tokens, pad_dim=1)
        all_mask = all_gather_no_grad(text.attention_mask, pad_dim=1)
        padding = all_mask.shape[1] - text.attention_mask.shape[1]
        own_text, own_mask = F.pad(text_tokens, (0, 0, 0, padding)), F.pad(text.attention_mask, (0, padding))
        candidates = torch.cat([own_text.unsqueeze(1), all_text[negatives]], dim=1)  # [B, 1 + K, L, D]
        masks = torch.cat([own_mask.unsqueeze(1), all_mask[negatives]], dim=1)
        pairs = 1 + self.rank_negatives
        fusion = self.fuse(candidates.flatten(0, 1), masks.flatten(0, 1),
                           image_tokens.repeat_interleave(pairs, dim=0), frames)
        scores = self.rank_output(fusion.cls_feats).view(batch, pairs)
        return F.cross_entropy(scores, torch.zeros(batch, dtype=torch.long, device=self.device))

    def _contrastive_loss(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, samples: dict) -> torch.Tensor:
        """ITC over the global batch: GLSCL's NSL with the learnable temperature, or a matching-toolkit loss."""
        if self.contrastive_fn is None:
            return objectives.itc_loss(image_embeds, text_embeds, self.cl_temp, all_gather_with_grad)
        image_embeds = all_gather_with_grad(F.normalize(image_embeds, dim=-1))
        text_embeds = all_gather_with_grad(F.normalize(text_embeds, dim=-1))
        ids = samples.get("image_id")
        return self._matching_loss(image_embeds @ text_embeds.t(),
                                   all_gather_no_grad(ids.to(self.device)) if torch.is_tensor(ids) else None)

    def _matching_loss(self, sim: torch.Tensor, ids: Optional[torch.Tensor]) -> torch.Tensor:
        """The configured matching loss (NSL at ``cl_temp`` by default) on a square score matrix; samples sharing
        an id are all positives."""
        if self.contrastive_fn is None:
            return objectives.norm_softmax_loss(sim, self.cl_temp)
        positives = ids.to(sim.device).unsqueeze(1) == ids.to(sim.device).unsqueeze(0) if torch.is_tensor(ids) else None
        return self.contrastive_fn(sim, positives=positives)

    def _step_randomness(self, samples: dict, batch: int) -> StepRandomness:
        if "iters" in samples:
            epoch, iteration = int(samples.get("epoch", 0)), int(samples["iters"])
        else:
            epoch, iteration = -1, self._steps_without_schedule
            self._steps_without_schedule += 1
        rank, world_size = world()
        return StepRandomness(self.mask_seed, epoch, iteration, batch, rank, world_size)

    def _draw_noise(self, rng: StepRandomness) -> Dict[str, torch.Tensor]:
        """Every random number of a step, always drawn in this order whichever objectives are on."""
        num_patches, length = self.vision_transformer.num_patches, self.max_text_length
        return {
            "itm_negative": negative_rows(rng.global_uniform()),
            "itm_partner": rng.uniform(rng.global_batch_size),
            "itm_hard_image": rng.uniform(),
            "itm_hard_text": rng.uniform(),
            "mlm_select": rng.uniform(length),
            "mlm_action": rng.uniform(length),
            "mlm_random_ids": rng.integers(len(self.tokenizer), length),
            "mgsc_image": rng.uniform(num_patches),
            "mgsc_text": rng.uniform(length),
            "mltc_image": rng.uniform(num_patches),
        }

    def _noise(self, noise: Dict[str, torch.Tensor], key: str, length: Optional[int] = None) -> torch.Tensor:
        value = noise[key] if length is None else noise[key][:, :length]
        return value.to(self.device)

    def _total(self, losses: Dict[str, torch.Tensor]) -> GlsclOutput:
        total = sum(self.loss_weights[name.split("_")[0]] * loss for name, loss in losses.items())
        return GlsclOutput(loss=total, **{f"loss_{name}": loss for name, loss in losses.items()})

    def _itm_loss(self, samples, images, text: TextBatch, image_full, text_full, noise, rng: StepRandomness,
                  itc_embeds) -> torch.Tensor:
        """ITM with negatives from the global batch: random (half the rows, as the released code) or hard."""
        frames = images.shape[1]
        batch = images.shape[0]
        ids = samples.get("image_id")
        row_ids = ids.to(self.device) if torch.is_tensor(ids) else None
        forbidden = forbidden_negatives(rng.row_offset, batch, rng.global_batch_size, row_ids,
                                        all_gather_no_grad(row_ids) if row_ids is not None else None, self.device)
        if self.itm_negatives == "random":
            negative = rng.local_rows(noise["itm_negative"]).to(self.device)
            partners = random_partners(self._noise(noise, "itm_partner"), forbidden)
            image_tokens = self._tokens_with_partner_images(images, image_full, partners, negative)
            fusion = self.fuse(text_full(), text.attention_mask, image_tokens, frames)
            return objectives.itm_loss(self.itm_score(fusion.cls_feats), (~negative).long())
        image_embeds, text_embeds = itc_embeds
        with torch.no_grad():
            all_image_embeds = all_gather_no_grad(F.normalize(image_embeds, dim=-1))
            all_text_embeds = all_gather_no_grad(F.normalize(text_embeds, dim=-1))
            text_to_image = F.normalize(text_embeds, dim=-1) @ all_image_embeds.t() / self.cl_temp
            image_to_text = F.normalize(image_embeds, dim=-1) @ all_text_embeds.t() / self.cl_temp
            hard_images = hard_negatives(text_to_image, forbidden, self._noise(noise, "itm_hard_image"))
            hard_texts = hard_negatives(image_to_text, forbidden, self._noise(noise, "itm_hard_text"))
        own_images, own_text = image_full(), text_full()
        all_negative = torch.ones(batch, dtype=torch.bool, device=self.device)
        negative_images = self._tokens_with_partner_images(images, lambda: own_images, hard_images, all_negative)
        all_text_tokens = all_gather_with_grad(own_text, pad_dim=1)
        all_text_mask = all_gather_no_grad(text.attention_mask, pad_dim=1)
        padding = all_text_mask.shape[1] - text.attention_mask.shape[1]
        own_text, own_mask = F.pad(own_text, (0, 0, 0, padding)), F.pad(text.attention_mask, (0, padding))
        text_tokens = torch.cat([own_text, own_text, all_text_tokens[hard_texts]])
        text_mask = torch.cat([own_mask, own_mask, all_text_mask[hard_texts]])
        image_tokens = torch.cat([own_images, negative_images, own_images])
        fusion = self.fuse(text_tokens, text_mask, image_tokens, frames)
        labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(self.device)
        return objectives.itm_loss(self.itm_score(fusion.cls_feats), labels)

    def _tokens_with_partner_images(self, images, image_full, partners: torch.Tensor, negative: torch.Tensor):
        """Image tokens where ``negative`` rows show the global-batch image ``partners`` instead of their own."""
        if self.share_unimodal_passes:
            partner_tokens = all_gather_with_grad(image_full())[partners]
            return torch.where(negative[:, None, None], partner_tokens, image_full())
        partner_images = all_gather_no_grad(images)[partners]
        return self.encode_image(torch.where(negative[:, None, None, None, None], partner_images, images))

    def _mlm_loss(self, text: TextBatch, image_full, frames: int, noise, passes: UnimodalPasses) -> torch.Tensor:
        length = text.input_ids.shape[1]
        masked_ids, labels = mlm_mask(text.input_ids, text.maskable, self._noise(noise, "mlm_select", length),
                                      self._noise(noise, "mlm_action", length),
                                      self._noise(noise, "mlm_random_ids", length), self.tokenizer.mask_token_id,
                                      self.mlm_probability)
        text_tokens = passes.get("text_mlm", lambda: self.encode_text(masked_ids, text.attention_mask))
        fusion = self.fuse(text_tokens, text.attention_mask, image_full(), frames)
        selected = labels != -100
        global_count = all_reduce_sum(selected.sum().float().detach())
        normalizer = (global_count / world()[1]).clamp(min=1.0 / world()[1])
        return objectives.mlm_loss(self.mlm_score(fusion.text_feats[selected]), labels[selected], normalizer)

    def _completion_losses(self, images, text: TextBatch, image_full, text_full, noise,
                           passes: UnimodalPasses) -> Dict[str, torch.Tensor]:
        """MGSC and MLTC from the passes P1 (dropped image, full text), P2 (full image, masked text) and
        P3 (mask-token image, full text); each target comes from the pass where its modality is unmasked."""
        frames = images.shape[1]
        keep = keep_patch_indices(self._noise(noise, "mgsc_image"), self.mgsc_image_keep_ratio)
        text_mask = mgsc_text_mask(text.maskable, self._noise(noise, "mgsc_text"), self.mgsc_text_mask_ratio,
                                   self.mgsc_text_mask_with_replacement)
        masked_ids = text.input_ids.masked_fill(text_mask, self.tokenizer.mask_token_id)
        image_dropped = passes.get("image_dropped", lambda: self.encode_image(images, keep_indices=keep))
        text_masked = passes.get("text_mgsc", lambda: self.encode_text(masked_ids, text.attention_mask))
        p1 = self.fuse(text_full(), text.attention_mask, image_dropped, frames)
        p2 = self.fuse(text_masked, text.attention_mask, image_full(), frames)
        losses = {}
        if self.loss_weights["mgsc"]:
            losses["mgsc_image"] = torch.stack([
                objectives.mgsc_loss(p1.image_feats[:, f], p2.image_feats[:, f], self.mgsc_temperature,
                                     all_gather_with_grad) for f in range(frames)]).mean()
            losses["mgsc_text"] = objectives.mgsc_loss(p2.text_feats[:, 0], p1.text_feats[:, 0], self.mgsc_temperature,
                                                       all_gather_with_grad)
        if self.loss_weights["mltc"]:
            ragged_gather = lambda rows: all_gather_with_grad(rows, pad_dim=0)  # noqa: E731
            losses["mltc_text"] = objectives.mltc_loss(p2.text_feats, p1.text_feats, text_mask, self.mltc_temperature,
                                                       ragged_gather)
            if frames == 1 or self.mltc_on_video:
                token_mask = patch_token_mask(self._noise(noise, "mltc_image"), self.mltc_image_mask_ratio)
                image_masked = passes.get("image_token_masked", lambda: self.encode_image(images, token_mask=token_mask))
                p3 = self.fuse(text_full(), text.attention_mask, image_masked, frames)
                cls_slots = torch.zeros(images.shape[0], frames, dtype=torch.bool, device=self.device)
                positions = torch.cat([cls_slots, token_mask.repeat(1, frames)], dim=1)
                losses["mltc_image"] = objectives.mltc_loss(p3.image_feats, p2.image_feats, positions,
                                                            self.mltc_temperature,
                                                            ragged_gather if self.mltc_image_gather else None)
        return losses

    # ------------------------------------------------------------------ retrieval
    @torch.no_grad()
    def compute_sim_matrix(self, data_loader, task_cfg):
        """Image-text score matrices for LAVIS's ``retrieval`` task: ITC similarity for every pair, then each
        query's top-``k_test`` re-ranked by :meth:`match_score` (plus the similarity, as LAVIS's evaluators do).

        Returns numpy ``(scores_i2t [N_img, N_txt], scores_t2i [N_txt, N_img])``.  Every rank must see the whole
        gallery (``use_dist_eval_sampler: False``); query rows are split across ranks and summed.
        """
        dataset = data_loader.dataset
        text_tokens, text_masks, text_maskable, text_embeds = self.encode_gallery_texts(dataset.text)
        image_tokens, image_embeds, frames = [], [], 1
        for samples in data_loader:
            images = visual_input(samples).to(self.device)
            frames = images.shape[1]
            tokens = self.encode_image(images)
            image_tokens.append(tokens.cpu())
            image_embeds.append(F.normalize(self.image_embedding(tokens, frames), dim=-1))
        image_tokens, image_embeds = torch.cat(image_tokens), torch.cat(image_embeds)
        if image_embeds.shape[0] != len(dataset):
            raise RuntimeError(f"the evaluation loader yielded {image_embeds.shape[0]} of {len(dataset)} gallery items; "
                               f"retrieval needs the whole gallery on every rank: set run.use_dist_eval_sampler: False")
        sims = image_embeds @ text_embeds.t()
        if self.head_eval_weight:
            sims = sims + self.head_eval_weight * torch.cat([
                self.head_fn(chunk[:, frames:].to(self.device), text_tokens.to(self.device), None,
                             text_maskable.to(self.device)) for chunk in image_tokens.split(256)])

        def itm_scores(image_idx, text_idx):
            fusion = self.fuse(text_tokens[text_idx].to(self.device), text_masks[text_idx].to(self.device),
                               image_tokens[image_idx].to(self.device), frames)
            return self.match_score(fusion.cls_feats)

        return score_matrices(sims, itm_scores, task_cfg)

    def match_score(self, cls_feats: torch.Tensor) -> torch.Tensor:
        """Cross-encoder score ``[P]`` of fused pairs: the fine-tuned ``rank_output`` when the model has one, else
        the ITM head's "match" logit."""
        if hasattr(self, "rank_output"):
            return self.rank_output(cls_feats)[:, 0]
        return self.itm_score(cls_feats)[:, 1]

    def encode_gallery_texts(self, captions: List[str], chunk: int = 256):
        """Unimodal tokens ``[N, L, D]`` (on the CPU), padding masks, maskable-token masks and ITC embeddings."""
        tokens, masks, maskable, embeds = [], [], [], []
        for start in range(0, len(captions), chunk):
            text = self.tokenize(captions[start:start + chunk])
            encoded = self.encode_text(text.input_ids, text.attention_mask)
            tokens.append(encoded.cpu())
            masks.append(text.attention_mask.cpu())
            maskable.append(text.maskable.cpu())
            embeds.append(F.normalize(self.text_embedding(encoded), dim=-1))
        length = max(t.shape[1] for t in tokens)
        tokens = torch.cat([F.pad(t, (0, 0, 0, length - t.shape[1])) for t in tokens])
        masks = torch.cat([F.pad(m, (0, length - m.shape[1])) for m in masks])
        maskable = torch.cat([F.pad(m, (0, length - m.shape[1])) for m in maskable])
        return tokens, masks, maskable, torch.cat(embeds)

    # ------------------------------------------------------------------ optimisation and construction
    def lr_scale_of(self, name: str) -> float:
        """LR multiplier of a parameter: the longest matching prefix in ``lr_scales``, else 1."""
        matches = [prefix for prefix in self.lr_scales if name.startswith(prefix)]
        return float(self.lr_scales[max(matches, key=len)]) if matches else 1.0

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


@registry.register_model("glscl_pretrain")
class GlsclPretrain(GlsclModel):
    """GLSCL pre-training: ITC + ITM + MLM + MGSC + MLTC."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": config_path("models/glscl/pretrain_base.yaml"),
        "demo": config_path("models/glscl/pretrain_demo.yaml"),
        "tiny": config_path("models/glscl/pretrain_tiny.yaml"),
    }


@registry.register_model("glscl_retrieval")
class GlsclRetrieval(GlsclModel):
    """GLSCL for image/video-text retrieval: ITC + ITM fine-tuning; ITC shortlist + ITM re-rank at test time."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "base": config_path("models/glscl/retrieval_base.yaml"),
        "demo": config_path("models/glscl/retrieval_demo.yaml"),
        "tiny": config_path("models/glscl/retrieval_tiny.yaml"),
    }


def load_answer_list(spec: str) -> List[str]:
    """The VQA answer vocabulary: a json list file, or ``package:<module>`` for a package with ``get_answers()``
    (``package:easy_vqa``)."""
    if spec.startswith(PACKAGE_PREFIX):
        return list(importlib.import_module(spec[len(PACKAGE_PREFIX):]).get_answers())
    with open(spec) as handle:
        return list(json.load(handle))


@registry.register_model("glscl_vqa")
class GlsclVqa(GlsclModel):
    """GLSCL for VQA as classification over an answer vocabulary (the released recipe): an MLP on the pooled
    fused features ``[B, 2D]``, binary cross-entropy on soft answer scores, scaled by the vocabulary size.

    Training samples follow LAVIS's VQA collater (``image``, ``text_input`` questions, flattened ``answer``
    strings with ``weight`` and ``n_answers``); ``predict_answers`` serves LAVIS's ``vqa`` task.
    """

    # The architecture of each type is the pre-training one; the answer vocabulary comes with the run's data.
    PRETRAINED_MODEL_CONFIG_DICT = GlsclPretrain.PRETRAINED_MODEL_CONFIG_DICT
    RELEASED_MISSING_OK = ("rank_output", "vqa_classifier")

    def __init__(self, answer_list: Optional[str] = None, **kwargs):
        if not answer_list:
            raise ValueError("glscl_vqa needs model.answer_list: a json list of answers, or package:easy_vqa")
        kwargs["loss_weights"] = {}  # the type yaml's pre-training objectives do not apply
        super().__init__(**kwargs)
        self.answers = load_answer_list(answer_list)
        self.answer_index = {answer: index for index, answer in enumerate(self.answers)}
        hidden = self.cross_modal_text_pooler.dense.in_features
        self.vqa_classifier = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(),
                                            nn.Linear(2 * hidden, len(self.answers)))
        self.vqa_classifier.apply(self._init_bert_weights)

    def active_objectives(self) -> List[str]:
        return ["vqa"]

    def objective_reach(self) -> Dict[str, list]:
        """VQA trains the fusion and poolers under its classifier; the pre-training heads take no part."""
        return {"vqa": [self.token_type_embeddings, self.cross_modal_text_layers, self.cross_modal_image_layers,
                        self.cross_modal_text_pooler, self.cross_modal_image_pooler, self.vqa_classifier]}

    def answer_logits(self, samples: dict) -> torch.Tensor:
        """``[B, num_answers]`` logits for the questions ``samples['text_input']`` about ``samples['image']``."""
        images = visual_input(samples)
        text = self.tokenize(samples["text_input"])
        fusion = self.fuse(self.encode_text(text.input_ids, text.attention_mask), text.attention_mask,
                           self.encode_image(images), images.shape[1])
        return self.vqa_classifier(fusion.cls_feats)

    def soft_targets(self, answers: List[str], weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``[B, num_answers]`` answer scores from LAVIS's flattened answers; answers outside the vocabulary are
        dropped (counted in the log)."""
        targets = torch.zeros(len(counts), len(self.answers), device=self.device)
        rows = torch.arange(len(counts)).repeat_interleave(counts.cpu())
        unknown = 0
        for row, answer, weight in zip(rows.tolist(), answers, weights.tolist()):
            if answer in self.answer_index:
                targets[row, self.answer_index[answer]] += weight
            else:
                unknown += 1
        if unknown:
            logging.debug("%d answers outside the VQA vocabulary were ignored", unknown)
        return targets.clamp(max=1.0)

    def forward(self, samples: dict) -> GlsclOutput:
        logits = self.answer_logits(samples)
        targets = self.soft_targets(samples["answer"], samples["weight"], samples["n_answers"])
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        return GlsclOutput(loss=loss, loss_vqa=loss)

    @torch.no_grad()
    def predict_answers(self, samples: dict, answer_list=None, **kwargs) -> List[str]:
        """The highest-scoring answer per question (LAVIS's ``vqa`` task calls this; its generation options do
        not apply to a classifier).  With ``answer_list``, only those answers are candidates."""
        logits = self.answer_logits(samples)
        if answer_list:
            allowed = torch.full((len(self.answers),), float("-inf"), device=logits.device)
            allowed[[self.answer_index[a] for a in answer_list if a in self.answer_index]] = 0.0
            logits = logits + allowed
        return [self.answers[i] for i in logits.argmax(dim=1).tolist()]
