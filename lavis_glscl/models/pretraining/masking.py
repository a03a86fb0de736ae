"""Random masks of a GLSCL training step, as pure functions of noise tensors (drawn by
:class:`~lavis_glscl.models.pretraining.randomness.StepRandomness`, so a sample's masks depend only on its row in the
global batch)."""
from typing import Tuple

import torch


def lowest_noise_mask(noise: torch.Tensor, allowed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row, select the ``counts[b]`` allowed positions with the lowest noise.

    ``noise`` and ``allowed`` ``[B, L]``, ``counts`` ``[B]`` → bool ``[B, L]`` with exactly
    ``min(counts[b], allowed[b].sum())`` True entries per row.
    """
    ranks = noise.masked_fill(~allowed, float("inf")).argsort(dim=1).argsort(dim=1)
    return (ranks < counts.unsqueeze(1)) & allowed


def keep_patch_indices(noise: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """MAE-style patch dropping (MGSC image masking): indices ``[B, K]`` of the kept patches, ascending.

    ``noise`` ``[B, N]``; ``K = max(1, int(N * keep_ratio))`` patches with the lowest noise are kept.
    For video the same indices are applied to every frame (tube masking).
    """
    num_patches = noise.shape[1]
    num_keep = max(1, int(num_patches * keep_ratio))
    return noise.argsort(dim=1)[:, :num_keep].sort(dim=1).values


def patch_token_mask(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """MLTC image masking: bool ``[B, N]`` with exactly ``int(N * mask_ratio)`` True patches per row."""
    batch, num_patches = noise.shape
    counts = torch.full((batch,), int(num_patches * mask_ratio), device=noise.device)
    return lowest_noise_mask(noise, torch.ones_like(noise, dtype=torch.bool), counts)


def mlm_mask(input_ids: torch.Tensor, maskable: torch.Tensor, select_noise: torch.Tensor,
             action_noise: torch.Tensor, random_ids: torch.Tensor, mask_token_id: int,
             probability: float = 0.15) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: ``max(1, round(probability * n))`` of the ``n`` maskable tokens of each row are selected;
    80 % of them become ``mask_token_id``, 10 % a random token, 10 % stay unchanged.

    All inputs are ``[B, L]``; ``maskable`` excludes padding and special tokens.
    Returns the masked ids and the labels (original id at selected positions, -100 elsewhere).
    """
    num_maskable = maskable.sum(dim=1)
    counts = torch.where(num_maskable > 0, (num_maskable * probability).round().long().clamp(min=1), 0)
    selected = lowest_noise_mask(select_noise, maskable, counts)
    labels = input_ids.masked_fill(~selected, -100)
    to_mask_token = selected & (action_noise < 0.8)
    to_random = selected & (action_noise >= 0.8) & (action_noise < 0.9)
    masked_ids = input_ids.masked_fill(to_mask_token, mask_token_id)
    masked_ids = torch.where(to_random, random_ids, masked_ids)
    return masked_ids, labels


def mgsc_text_mask(maskable: torch.Tensor, noise: torch.Tensor, ratio: float = 0.4,
                   with_replacement: bool = True) -> torch.Tensor:
    """MGSC/MLTC text masking: bool ``[B, L]`` of the positions to replace by the mask token.

    Each row draws ``int(n * ratio) + 1`` of its ``n`` maskable positions, uniformly *with replacement*
    as the released code does (so fewer distinct positions may result), or without replacement
    (exactly ``min(n, int(n * ratio) + 1)`` positions).  ``noise`` ``[B, M]``, ``M >= L``: one uniform number
    per draw (with replacement) or per position (without).
    """
    length = maskable.shape[1]
    if noise.shape[1] < length:
        raise ValueError(f"mgsc_text_mask needs at least {length} noise columns, got {noise.shape[1]}")
    num_maskable = maskable.sum(dim=1)
    draws = torch.where(num_maskable > 0, (num_maskable * ratio).long() + 1, 0)
    if not with_replacement:
        return lowest_noise_mask(noise[:, :length], maskable, draws)
    # Maskable positions first, in order: a draw k in [0, n) picks the k-th maskable position.
    maskable_first = (~maskable).long().argsort(dim=1, stable=True)
    positions = maskable_first.gather(1, (noise * num_maskable.unsqueeze(1)).long())
    valid = torch.arange(noise.shape[1], device=noise.device).unsqueeze(0) < draws.unsqueeze(1)
    # Unused draws write into an extra column that is cut off afterwards.
    mask = torch.zeros(maskable.shape[0], length + 1, dtype=torch.bool, device=maskable.device)
    mask.scatter_(1, positions.masked_fill(~valid, length), True)
    return mask[:, :length] & maskable
