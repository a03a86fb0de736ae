"""Fine-grained image-text similarity heads on token features, as pure functions.

Every head takes ``image_tokens`` ``[B_img, Lv, D]`` (patches or regions) and ``text_tokens``
``[B_txt, Lt, D]`` (words), with optional bool masks ``image_mask`` ``[B_img, Lv]`` and ``text_mask``
``[B_txt, Lt]`` (True = real token, None = all real; every item needs at least one real token), and
returns the score matrix ``[B_img, B_txt]`` for every image-text pair.

Tokens are l2-normalised first, so every token-token score is a cosine.  The heads that need per-pair
token interactions score ``chunk_size`` images against all texts at a time: peak memory grows with
``chunk_size * B_txt * Lt * Lv`` (times ``D`` for SCAN's attended vectors), not with ``B_img``.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from lavis_glscl.matching._common import check_choice


def _normalised_tokens(tokens: torch.Tensor, mask: Optional[torch.Tensor],
                       name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """l2-normalised ``tokens`` ``[B, L, D]`` and their checked bool mask ``[B, L]`` (all True when None)."""
    if tokens.dim() != 3:
        raise ValueError(f"{name} tokens must be [B, L, D], got shape {tuple(tokens.shape)}")
    if mask is None:
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    elif mask.shape != tokens.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"{name} mask must be bool of shape {tuple(tokens.shape[:2])}, "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    if not mask.any(dim=1).all():
        raise ValueError(f"every {name} item needs at least one real token")
    return F.normalize(tokens, dim=-1), mask


def _scores_by_image_chunk(score_chunk: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                           image_tokens: torch.Tensor, image_mask: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Concatenate ``score_chunk(images [c, Lv, D], image_mask [c, Lv]) -> [c, B_txt]`` over image chunks."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}")
    return torch.cat([score_chunk(image_tokens[start:start + chunk_size], image_mask[start:start + chunk_size])
                      for start in range(0, image_tokens.shape[0], chunk_size)], dim=0)


def _pool(values: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum or mean of ``values`` ``[..., L]`` over the last axis, counting only the True entries of ``mask``."""
    total = values.masked_fill(~mask, 0.0).sum(dim=-1)
    return total if reduction == "sum" else total / mask.sum(dim=-1)


def _stacked_cross_attention(queries: torch.Tensor, query_mask: torch.Tensor, contexts: torch.Tensor,
                             context_mask: torch.Tensor, lambda_softmax: float, lambda_lse: float,
                             aggregation: str) -> torch.Tensor:
    """SCAN score of every query item set against every context item set.

    Args:
        queries: l2-normalised query tokens ``[Nq, Lq, D]`` with mask ``query_mask`` ``[Nq, Lq]``.
        contexts: l2-normalised context tokens ``[Nc, Lc, D]`` with mask ``context_mask`` ``[Nc, Lc]``.

    Returns:
        Scores ``[Nq, Nc]``.
    """
    cosines = torch.einsum("qld,ckd->qclk", queries, contexts)  # [Nq, Nc, Lq, Lc]
    query_real = query_mask[:, None, :, None]
    context_real = context_mask[None, :, None, :]
    # SCAN's clipped l2norm: damp negative cosines, then normalise each context token's column over the
    # query tokens; padded query tokens are zeroed first so that they take no share of that norm.
    clipped = F.leaky_relu(cosines, negative_slope=0.1).masked_fill(~query_real, 0.0)
    attention_logits = lambda_softmax * F.normalize(clipped, dim=2)
    attention = attention_logits.masked_fill(~context_real, float("-inf")).softmax(dim=3)
    attended = torch.einsum("qclk,ckd->qcld", attention, contexts)  # [Nq, Nc, Lq, D]
    relevance = torch.einsum("qcld,qld->qcl", F.normalize(attended, dim=-1), queries)  # [Nq, Nc, Lq]
    relevance_real = query_mask[:, None, :]
    if aggregation == "lse":
        return (lambda_lse * relevance).masked_fill(~relevance_real, float("-inf")).logsumexp(dim=-1) / lambda_lse
    return _pool(relevance, relevance_real, "mean")


def scan_similarity(image_tokens: torch.Tensor, text_tokens: torch.Tensor, image_mask: Optional[torch.Tensor] = None,
                    text_mask: Optional[torch.Tensor] = None, *, direction: str = "t2i", lambda_softmax: float = 9.0,
                    lambda_lse: float = 6.0, aggregation: str = "lse", chunk_size: int = 16) -> torch.Tensor:
    """Stacked cross attention (SCAN, Lee et al. 2018) on patch and word tokens.

    For each query token ``q`` (words for ``"t2i"``, patches for ``"i2t"``) and context token ``k`` (the
    other modality) of a pair:

    1. ``c_qk = cos(q, k)``, clipped l2norm: ``c' = LeakyReLU_0.1(c)``, l2-normalised over ``q``;
    2. ``alpha_qk = softmax_k(lambda_softmax * c'_qk)`` over the real context tokens;
    3. ``R_q = cos(q, sum_k alpha_qk * k)``;
    4. pooled over the real query tokens: ``"lse"`` ``(1/lambda_lse) * log sum_q exp(lambda_lse * R_q)``
       or ``"mean"`` ``mean_q R_q``.

    The defaults are SCAN's Flickr30K t-i LSE setting (``lambda_softmax = 9``, ``lambda_lse = 6``).

    Returns:
        Scores ``[B_img, B_txt]``.
    """
    check_choice("direction", direction, ("t2i", "i2t"))
    check_choice("aggregation", aggregation, ("lse", "mean"))
    image_tokens, image_mask = _normalised_tokens(image_tokens, image_mask, "image")
    text_tokens, text_mask = _normalised_tokens(text_tokens, text_mask, "text")
    options = dict(lambda_softmax=lambda_softmax, lambda_lse=lambda_lse, aggregation=aggregation)

    def score_chunk(images: torch.Tensor, images_mask: torch.Tensor) -> torch.Tensor:
        if direction == "t2i":
            return _stacked_cross_attention(text_tokens, text_mask, images, images_mask, **options).t()
        return _stacked_cross_attention(images, images_mask, text_tokens, text_mask, **options)

    return _scores_by_image_chunk(score_chunk, image_tokens, image_mask, chunk_size)


def _pairwise_token_cosines(images: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
    """Word-patch cosines ``[c, B_txt, Lt, Lv]`` of normalised ``images`` ``[c, Lv, D]`` and ``text_tokens``."""
    return torch.einsum("ivd,twd->itwv", images, text_tokens)


def token_max_sum_similarity(image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                             image_mask: Optional[torch.Tensor] = None, text_mask: Optional[torch.Tensor] = None, *,
                             mode: str = "t2v", reduction: str = "sum", chunk_size: int = 16) -> torch.Tensor:
    """Token max-sum (Karpathy's fragment alignment, TERAN/ALADIN "MrSw", FILIP-style late interaction).

    ``"t2v"``: each real word's best cosine over the real patches, summed (or averaged, ``reduction``)
    over the words.  ``"v2t"``: each real patch's best word, pooled over the patches.  ``"symmetric"``:
    the two added.

    Returns:
        Scores ``[B_img, B_txt]``.
    """
    check_choice("mode", mode, ("t2v", "v2t", "symmetric"))
    check_choice("reduction", reduction, ("sum", "mean"))
    image_tokens, image_mask = _normalised_tokens(image_tokens, image_mask, "image")
    text_tokens, text_mask = _normalised_tokens(text_tokens, text_mask, "text")

    def score_chunk(images: torch.Tensor, images_mask: torch.Tensor) -> torch.Tensor:
        cosines = _pairwise_token_cosines(images, text_tokens)  # [c, B_txt, Lt, Lv]
        word_real = text_mask[None, :, :, None]
        patch_real = images_mask[:, None, None, :]
        scores = 0.0
        if mode in ("t2v", "symmetric"):
            best_patch = cosines.masked_fill(~patch_real, float("-inf")).amax(dim=3)  # [c, B_txt, Lt]
            scores = scores + _pool(best_patch, text_mask[None], reduction)
        if mode in ("v2t", "symmetric"):
            best_word = cosines.masked_fill(~word_real, float("-inf")).amax(dim=2)  # [c, B_txt, Lv]
            scores = scores + _pool(best_word, images_mask[:, None, :], reduction)
        return scores

    return _scores_by_image_chunk(score_chunk, image_tokens, image_mask, chunk_size)


def token_mean_similarity(image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                          image_mask: Optional[torch.Tensor] = None,
                          text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of all word-patch cosines over the real tokens of each pair.

    The mean of ``<v_i, t_j>`` over all ``(i, j)`` is the inner product of the mean normalised patch and
    the mean normalised word, so this needs neither per-pair token tensors nor chunks.

    Returns:
        Scores ``[B_img, B_txt]``.
    """
    image_tokens, image_mask = _normalised_tokens(image_tokens, image_mask, "image")
    text_tokens, text_mask = _normalised_tokens(text_tokens, text_mask, "text")
    mean_patch = _pool(image_tokens.transpose(1, 2), image_mask[:, None, :], "mean")  # [B_img, D]
    mean_word = _pool(text_tokens.transpose(1, 2), text_mask[:, None, :], "mean")  # [B_txt, D]
    return mean_patch @ mean_word.t()


def tokenflow_similarity(image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                         image_mask: Optional[torch.Tensor] = None, text_mask: Optional[torch.Tensor] = None, *,
                         temperature: float, chunk_size: int = 16) -> torch.Tensor:
    """TokenFlow-lite: ``sum_ij f_ij <v_i, t_j>`` with a softmax flow from each word to the patches.

    For a pair with real words ``j = 1..Nw`` and real patches ``i``, on normalised tokens::

        f_ij  = (1 / Nw) * softmax_i(<v_i, t_j> / temperature)
        score = sum_j sum_i f_ij <v_i, t_j>

    Every word sends the same mass ``1/Nw`` (uniform word weights) and routes it to the patches it
    matches best.  ``temperature -> inf`` spreads it uniformly, giving :func:`token_mean_similarity`;
    ``temperature -> 0`` puts it on each word's best patch, giving
    ``token_max_sum_similarity(mode="t2v", reduction="mean")``.  TokenFlow's learned token weights and
    its transport plan are not reproduced.

    Returns:
        Scores ``[B_img, B_txt]``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    image_tokens, image_mask = _normalised_tokens(image_tokens, image_mask, "image")
    text_tokens, text_mask = _normalised_tokens(text_tokens, text_mask, "text")

    def score_chunk(images: torch.Tensor, images_mask: torch.Tensor) -> torch.Tensor:
        cosines = _pairwise_token_cosines(images, text_tokens)  # [c, B_txt, Lt, Lv]
        patch_real = images_mask[:, None, None, :]
        flow = (cosines / temperature).masked_fill(~patch_real, float("-inf")).softmax(dim=3)
        per_word = (flow * cosines).sum(dim=3)  # [c, B_txt, Lt]
        return _pool(per_word, text_mask[None], "mean")

    return _scores_by_image_chunk(score_chunk, image_tokens, image_mask, chunk_size)


SIMILARITY_HEADS = {
    "scan": scan_similarity,
    "token_max_sum": token_max_sum_similarity,
    "token_mean": token_mean_similarity,
    "tokenflow": tokenflow_similarity,
}
