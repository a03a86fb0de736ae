"""What GLSCL models return, in LAVIS's output-dataclass style (``transformers.ModelOutput``: dict-indexable, ``None``
entries left out of ``.items()``).  Shapes: images as ``F``-frame videos, ``K`` patches per frame, ``L`` text tokens,
``D`` fusion width, ``E`` ITC embedding width."""
from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import torch
from transformers.modeling_outputs import ModelOutput


class WeightedLoss(NamedTuple):
    """An objective's unweighted loss and its weight in the total (taken from a typed option, never from a name)."""

    loss: torch.Tensor
    weight: float


class CrossAttentionMaps(NamedTuple):
    """Where each caption token looks in its image (what ALIGN-BENCH scores)."""

    attention: torch.Tensor  # [B, L, K]: last fusion layer, text token -> image patch, max over heads
    offsets: torch.Tensor  # [B, L, 2]: each token's character span in its caption; (0, 0) for special tokens, padding
    grid_size: int  # the K patches form a grid_size x grid_size grid, row-major


class FusionOutput(NamedTuple):
    text_feats: torch.Tensor  # [B, L, D]
    image_feats: torch.Tensor  # [B, F + F * K, D]
    cls_feats: torch.Tensor  # [B, 2D]: pooled text, pooled image
    text_to_image_attentions: Optional[List[torch.Tensor]]  # per layer [B, heads, L, F + F * K]


@dataclass
class GlsclIntermediateOutput(ModelOutput):
    """The step's full-input passes: unimodal tokens after the bridges (``image_embeds`` ``[B, F + F * K, D]``,
    ``text_embeds`` ``[B, L, D]``), ITC embeddings (``image_feat``, ``text_feat`` ``[B, E]``, not normalised), and the
    ITM pass's fused CLS features (``cls_feats`` ``[P, 2D]``), logits ``[P, 2]`` and labels ``[P]``."""

    image_embeds: Optional[torch.Tensor] = None
    text_embeds: Optional[torch.Tensor] = None
    image_feat: Optional[torch.Tensor] = None
    text_feat: Optional[torch.Tensor] = None
    cls_feats: Optional[torch.Tensor] = None
    itm_logits: Optional[torch.Tensor] = None
    itm_labels: Optional[torch.Tensor] = None


@dataclass
class GlsclOutput(ModelOutput):
    """Total loss and each objective's unweighted loss (MGSC and MLTC split by modality; ``loss_itc_group`` ITC
    inside batch groups, ``loss_itc_group_text`` the hinge keeping a group's captions apart; ``loss_rank`` the
    released retrieval fine-tuning loss, ``loss_vqa`` the VQA classifier's, ``loss_nlvr`` the NLVR classifier's),
    plus the intermediate outputs."""

    loss: Optional[torch.Tensor] = None
    loss_itc: Optional[torch.Tensor] = None
    loss_itc_group: Optional[torch.Tensor] = None
    loss_itc_group_text: Optional[torch.Tensor] = None
    loss_itm: Optional[torch.Tensor] = None
    loss_mlm: Optional[torch.Tensor] = None
    loss_mgsc_image: Optional[torch.Tensor] = None
    loss_mgsc_text: Optional[torch.Tensor] = None
    loss_mltc_image: Optional[torch.Tensor] = None
    loss_mltc_text: Optional[torch.Tensor] = None
    loss_rank: Optional[torch.Tensor] = None
    loss_vqa: Optional[torch.Tensor] = None
    loss_nlvr: Optional[torch.Tensor] = None
    intermediate_output: Optional[GlsclIntermediateOutput] = None
