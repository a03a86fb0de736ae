"""GLSCL pre-training objectives as pure functions on tensors.

Every contrastive term is built on the matching toolkit's :func:`~lavis_glscl.matching.losses.norm_softmax_loss`,
the released code's ``NormSoftmaxLoss``.
The optional ``gather`` argument lets the caller widen the negatives to the global batch
(``lavis_glscl.distributed.all_gather_with_grad`` or its variable-length sibling); it is applied to
the L2-normalised rows, after targets are detached.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from lavis_glscl.matching.losses import norm_softmax_loss

Gather = Optional[Callable[[torch.Tensor], torch.Tensor]]


def _normalised_pair(pred: torch.Tensor, target: torch.Tensor, gather: Gather):
    pred = F.normalize(pred, dim=-1)
    target = F.normalize(target.detach(), dim=-1)
    if gather is not None:
        pred, target = gather(pred), gather(target)
    return pred, target


def itc_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, temperature, gather: Gather = None):
    """Image-text contrastive loss on unimodal embeddings ``[B, D]`` (cosine similarity, both directions)."""
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    if gather is not None:
        image_embeds, text_embeds = gather(image_embeds), gather(text_embeds)
    return norm_softmax_loss(image_embeds @ text_embeds.t(), temperature)


def mgsc_loss(pred: torch.Tensor, target: torch.Tensor, temperature, gather: Gather = None) -> torch.Tensor:
    """Masked global semantic completion: the fused global token of masked data ``pred`` ``[B, D]``
    must find the (detached) global token of its unmasked counterpart ``target`` ``[B, D]`` among the
    batch's targets, and vice versa."""
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"mgsc_loss expects pred and target of equal shape [B, D], got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    pred, target = _normalised_pair(pred, target, gather)
    return norm_softmax_loss(pred @ target.t(), temperature)


def mltc_loss(pred_tokens: torch.Tensor, target_tokens: torch.Tensor, mask: torch.Tensor, temperature,
              gather: Gather = None) -> torch.Tensor:
    """Masked local token completion on fused tokens ``[B, L, D]`` at the masked positions ``mask`` ``[B, L]``.

    Every masked token's prediction is contrasted with every masked token's (detached) target, so the
    negatives include the other masked tokens of the same sample.  Returns a zero that keeps the graph
    when no position is masked (the released code skips that NaN term).
    """
    if pred_tokens.shape != target_tokens.shape or pred_tokens.shape[:2] != mask.shape:
        raise ValueError(f"mltc_loss expects tokens [B, L, D] and a mask [B, L], got {tuple(pred_tokens.shape)}, "
                         f"{tuple(target_tokens.shape)} and {tuple(mask.shape)}")
    pred, target = _normalised_pair(pred_tokens[mask], target_tokens[mask], gather)
    if pred.shape[0] == 0:
        return pred_tokens.sum() * 0.0
    return norm_softmax_loss(pred @ target.t(), temperature)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image-text matching: cross-entropy of ``logits`` ``[B, 2]`` against 0/1 ``labels`` ``[B]``."""
    return F.cross_entropy(logits, labels)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, normalizer=None) -> torch.Tensor:
    """Masked language modelling: cross-entropy over the vocabulary at positions whose label is not -100.

    ``logits`` ``[M, V]`` and ``labels`` ``[M]``.  Returns the mean over those positions, or their summed
    cross-entropy divided by ``normalizer``: with the global batch's count of masked tokens divided by the
    world size, the ranks' average is the global-batch mean whatever each rank's share of the masks.
    Zero (not NaN) when nothing is masked.
    """
    total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    if normalizer is None:
        normalizer = (labels != -100).sum().clamp(min=1)
    return total / normalizer
