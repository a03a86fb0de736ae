"""Image-text matching losses on a similarity matrix, as pure functions.

``sim`` is ``[B_img, B_txt]``: rows are images, columns are texts.  Without ``positives`` it must be
square with the matching pairs on the diagonal.  ``positives`` (bool, the shape of ``sim``) marks every
matching pair instead, e.g. the several captions of one image in a batch: a True entry is a positive and
is never used as a negative, and every row and every column needs at least one.

Every loss runs in both directions: i2t scores each image row against its negative texts, t2i each text
column against its negative images.  ``reduction="sum"`` adds the per-query losses of both directions (the
VSE convention; it scales the effective learning rate with the batch), ``"mean"`` adds the mean over image
queries to the mean over text queries, which is the sum divided by ``B`` for a square ``sim``.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from lavis_glscl.matching._common import check_choice

Negatives = Union[str, int]


def norm_softmax_loss(sim: torch.Tensor, temperature) -> torch.Tensor:
    """Symmetric InfoNCE of a square similarity matrix ``sim`` ``[N, N]`` with positives on the diagonal.

    Returns the *sum* of the row-wise and the column-wise mean cross-entropies of ``sim / temperature``
    (not their average), as GLSCL's released ``NormSoftmaxLoss`` does.
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"norm_softmax_loss expects a square [N, N] matrix, got {tuple(sim.shape)}")
    logits = sim / temperature
    targets = torch.arange(sim.shape[0], device=sim.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)


def _positive_mask(sim: torch.Tensor, positives: Optional[torch.Tensor]) -> torch.Tensor:
    """The bool positives mask ``[B_img, B_txt]``: ``positives`` checked, or the identity."""
    if sim.dim() != 2:
        raise ValueError(f"expected a similarity matrix [B_img, B_txt], got shape {tuple(sim.shape)}")
    if positives is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"without a positives mask the similarity matrix must be square, got {tuple(sim.shape)}")
        return torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    if positives.shape != sim.shape or positives.dtype != torch.bool:
        raise ValueError(f"positives must be a bool mask of shape {tuple(sim.shape)}, "
                         f"got {positives.dtype} {tuple(positives.shape)}")
    if not (positives.any(dim=1).all() and positives.any(dim=0).all()):
        raise ValueError("every row and every column of the positives mask needs at least one True entry")
    return positives


def _margin_violations(sim: torch.Tensor, positives: torch.Tensor, margin: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``margin + S_neg - S_pos`` per query: i2t ``[B_img, B_txt]`` and t2i ``[B_txt, B_img]``.

    A query's positive score ``S_pos`` is the mean of its positive entries (the diagonal entry when each
    query has one positive).  Entries at positive positions are meaningless; callers mask them.
    """
    positive_sum = sim.masked_fill(~positives, 0.0)
    image_positive_score = positive_sum.sum(dim=1) / positives.sum(dim=1)  # [B_img]
    text_positive_score = positive_sum.sum(dim=0) / positives.sum(dim=0)  # [B_txt]
    i2t = margin + sim - image_positive_score[:, None]
    t2i = margin + sim.t() - text_positive_score[:, None]
    return i2t, t2i


def _reduce(i2t_losses: torch.Tensor, t2i_losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """Combine per-query losses ``[B_img]`` and ``[B_txt]`` of the two directions into a scalar."""
    check_choice("reduction", reduction, ("sum", "mean"))
    if reduction == "sum":
        return i2t_losses.sum() + t2i_losses.sum()
    return i2t_losses.mean() + t2i_losses.mean()


def _aggregate_hinges(hinges: torch.Tensor, negatives: Negatives) -> torch.Tensor:
    """Per-query loss ``[Q]`` from hinge values ``[Q, N]`` that are zero at the positives.

    The zeros at the positives can never change a sum, a max or a top-k sum of non-negative values, so
    the positives need no further masking here.
    """
    if negatives == "sum":
        return hinges.sum(dim=1)
    if negatives == "hardest":
        return hinges.max(dim=1).values
    if isinstance(negatives, int) and not isinstance(negatives, bool) and negatives >= 1:
        return hinges.topk(min(negatives, hinges.shape[1]), dim=1).values.sum(dim=1)
    raise ValueError(f"negatives must be 'sum', 'hardest' or a positive int K, got {negatives!r}")


def hinge_ranking_loss(sim: torch.Tensor, margin: float = 0.2, negatives: Negatives = "sum", reduction: str = "sum",
                       positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bidirectional hinge ranking loss: sum-margin (VSE0), VSE++ and kNN-margin.

    Per query ``q`` and negative ``n`` the hinge is ``[margin + S_qn - S_pos(q)]_+``, where ``S_pos(q)``
    is the mean of the query's positive entries (its diagonal entry with one positive).  ``negatives``
    picks how a query's hinges are combined: ``"sum"`` all of them (VSE0), ``"hardest"`` the largest
    (VSE++, ``max_violation``), an int ``K`` the sum of the ``K`` largest (kNN-margin; ``K = 1`` is VSE++,
    ``K >= B - 1`` is VSE0 for a square ``sim``).

    Args:
        sim: similarity matrix ``[B_img, B_txt]``.
        margin: the ranking margin ``m``.
        negatives: ``"sum"``, ``"hardest"`` or an int ``K >= 1``.
        reduction: ``"sum"`` (VSE convention) or ``"mean"`` (see the module docstring).
        positives: optional bool mask ``[B_img, B_txt]`` of matching pairs.

    Returns:
        The scalar loss.
    """
    positives = _positive_mask(sim, positives)
    i2t, t2i = _margin_violations(sim, positives, margin)
    i2t_hinges = i2t.clamp(min=0).masked_fill(positives, 0.0)
    t2i_hinges = t2i.clamp(min=0).masked_fill(positives.t(), 0.0)
    return _reduce(_aggregate_hinges(i2t_hinges, negatives), _aggregate_hinges(t2i_hinges, negatives), reduction)


def sum_margin_loss(sim: torch.Tensor, margin: float = 0.2, reduction: str = "sum",
                    positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """VSE0: :func:`hinge_ranking_loss` over all negatives."""
    return hinge_ranking_loss(sim, margin, "sum", reduction, positives)


def vse_plus_plus_loss(sim: torch.Tensor, margin: float = 0.2, reduction: str = "sum",
                       positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """VSE++: :func:`hinge_ranking_loss` on each query's hardest negative."""
    return hinge_ranking_loss(sim, margin, "hardest", reduction, positives)


def knn_margin_loss(sim: torch.Tensor, k: int, margin: float = 0.2, reduction: str = "sum",
                    positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """kNN-margin: :func:`hinge_ranking_loss` on each query's ``k`` largest hinge values."""
    return hinge_ranking_loss(sim, margin, k, reduction, positives)


def _multi_positive_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Per query ``[Q]``: the mean over its positives ``p`` of ``-log(e^l_p / (e^l_p + sum_negatives e^l_n))``.

    ``logits`` and ``positives`` are ``[Q, N]``.  Written as ``softplus(logsumexp(negatives) - l_p)`` so
    that large logits cannot overflow.
    """
    negatives_logsumexp = logits.masked_fill(positives, float("-inf")).logsumexp(dim=1, keepdim=True)
    per_positive = F.softplus(negatives_logsumexp - logits)
    return per_positive.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1)


def info_nce_loss(sim: torch.Tensor, temperature, positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric InfoNCE (ITC) in the project's convention: row-wise mean plus column-wise mean.

    Without ``positives`` this is :func:`norm_softmax_loss`.  With a
    positives mask, each positive ``p`` of a query ``q`` is contrasted with the query's negatives only
    (the other positives are left out of its denominator), and the query's loss is the mean over its
    positives ``P(q)``; with ``l = sim / temperature`` and negatives ``N(q)``::

        L_q = 1/|P(q)| * sum_{p in P(q)} -log( exp(l_qp) / (exp(l_qp) + sum_{n in N(q)} exp(l_qn)) )
        loss = mean_{image rows q} L_q + mean_{text columns q} L_q

    With the identity mask this is exactly ``norm_softmax_loss``.

    Args:
        sim: similarity matrix ``[B_img, B_txt]``.
        temperature: the softmax temperature ``tau`` (float or scalar tensor).
        positives: optional bool mask ``[B_img, B_txt]`` of matching pairs.
    """
    if positives is None:
        return norm_softmax_loss(sim, temperature)
    positives = _positive_mask(sim, positives)
    logits = sim / temperature
    return (_multi_positive_cross_entropy(logits, positives).mean()
            + _multi_positive_cross_entropy(logits.t(), positives.t()).mean())


def _soft_hardest_violation(violations: torch.Tensor, positives: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(1/gamma) * log(1 + sum_negatives exp(gamma * x))`` per query ``[Q]``, from ``violations`` ``[Q, N]``.

    Computed as ``logsumexp([0, gamma*x_1, ...]) / gamma``: a plain ``exp`` overflows float32 once
    ``gamma * x > 88``, i.e. already at ``gamma = 1e3`` for typical margins.
    """
    scaled = (gamma * violations).masked_fill(positives, float("-inf"))
    with_zero = torch.cat([scaled.new_zeros(scaled.shape[0], 1), scaled], dim=1)
    return with_zero.logsumexp(dim=1) / gamma


def unified_pair_loss(sim: torch.Tensor, gamma: float, margin: float = 0.0, reduction: str = "sum",
                      positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unified pair-similarity loss: a soft maximum of margin violations, between InfoNCE and VSE++.

    Per query ``q`` and direction::

        L_q = (1/gamma) * log(1 + sum_{n negative} exp(gamma * (S_qn - S_pos(q) + margin)))

    with ``S_pos(q)`` the mean of the query's positive entries, as in :func:`hinge_ranking_loss`.

    - ``gamma -> inf``: each ``L_q`` tends to the VSE++ hinge of the query, so the loss tends to
      ``hinge_ranking_loss(sim, margin, "hardest", reduction)``.
    - ``margin = 0``, ``gamma = 1/tau``, one positive per query: ``gamma * L_q`` is the query's InfoNCE
      cross-entropy, so ``gamma * unified_pair_loss(sim, gamma, 0.0, "mean")`` equals
      ``norm_softmax_loss(sim, tau)`` (sum of the row and column means), and ``reduction="sum"`` gives
      ``B`` times that.

    Args:
        sim: similarity matrix ``[B_img, B_txt]``.
        gamma: the scale ``gamma > 0``; stays finite for any ``gamma`` (logsumexp).
        margin: the margin ``m``.
        reduction: ``"sum"`` or ``"mean"`` (see the module docstring).
        positives: optional bool mask ``[B_img, B_txt]`` of matching pairs.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    positives = _positive_mask(sim, positives)
    i2t, t2i = _margin_violations(sim, positives, margin)
    return _reduce(_soft_hardest_violation(i2t, positives, gamma),
                   _soft_hardest_violation(t2i, positives.t(), gamma), reduction)


MATCHING_LOSSES = {
    "sum_margin": sum_margin_loss,
    "vse++": vse_plus_plus_loss,
    "knn_margin": knn_margin_loss,
    "infonce": info_nce_loss,
    "unified": unified_pair_loss,
}
