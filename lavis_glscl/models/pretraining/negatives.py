"""ITM negative sampling as pure functions of noise and similarities.

Rows are this rank's samples; columns index the global batch (all ranks' samples in rank order), so a
negative may come from any rank, as the released code's random dataset image may.
"""
from typing import Optional

import torch


def negative_rows(global_noise: torch.Tensor) -> torch.Tensor:
    """Which rows of the global batch get a negative pair: the ``G // 2`` rows with the lowest noise.

    ``global_noise`` ``[G]`` → bool ``[G]``; slice it to this rank's rows.
    """
    order = global_noise.argsort()
    negative = torch.zeros_like(global_noise, dtype=torch.bool)
    negative[order[: global_noise.shape[0] // 2]] = True
    return negative


def forbidden_negatives(row_offset: int, batch_size: int, global_batch_size: int,
                        row_ids: Optional[torch.Tensor] = None, global_ids: Optional[torch.Tensor] = None,
                        device=None) -> torch.Tensor:
    """Bool ``[B, G]``: columns a row may not take as its negative (itself, and samples sharing its id).

    A row whose every other column shares its id may take any column but itself, and a global batch of one
    may take itself: a degenerate negative beats a crash.
    """
    own = torch.zeros(batch_size, global_batch_size, dtype=torch.bool, device=device)
    own[torch.arange(batch_size, device=device), torch.arange(batch_size, device=device) + row_offset] = True
    forbidden = own.clone()
    if row_ids is not None and global_ids is not None:
        forbidden |= row_ids.unsqueeze(1) == global_ids.unsqueeze(0)
        forbidden = torch.where(forbidden.all(dim=1, keepdim=True), own, forbidden)
    return forbidden & ~forbidden.all(dim=1, keepdim=True)


def group_partners(batch_size: int, group_size: int, row_offset: int = 0, device=None) -> torch.Tensor:
    """Each row's partner in a batch made of consecutive groups of ``group_size`` rows: the next row of its group,
    cyclically (rows ``2k`` and ``2k + 1`` swap for pairs).  Returns global indices ``[B]`` (``row_offset`` is this
    rank's first global row)."""
    if group_size < 2 or batch_size % group_size:
        raise ValueError(f"a batch of {batch_size} rows in groups of {group_size} has no group partners")
    rows = torch.arange(batch_size, device=device)
    first_of_group = rows - rows % group_size
    return row_offset + first_of_group + (rows + 1 - first_of_group) % group_size


def random_partners(noise: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """A uniformly random allowed column per row: ``noise`` ``[B, G]`` uniform → global indices ``[B]``."""
    return noise.masked_fill(forbidden, -1.0).argmax(dim=1)


def hard_negatives(sim: torch.Tensor, forbidden: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """ALBEF-style hard negatives: per row, a column drawn with probability ∝ ``softmax(sim)`` over the
    allowed columns, by inverse-CDF lookup of ``noise`` ``[B]``.

    ``sim`` ``[B, G]``, ``forbidden`` bool ``[B, G]``. Returns global indices ``[B]``.
    """
    allowed = ~forbidden
    weights = (torch.softmax(sim.float(), dim=1) + 1e-6) * allowed
    cdf = weights.cumsum(dim=1)
    cdf = cdf / cdf[:, -1:]
    # right=True: the first column whose CDF exceeds the draw, never a zero-weight (forbidden) column.
    picks = torch.searchsorted(cdf, noise.to(cdf).unsqueeze(1).contiguous(), right=True).squeeze(1)
    return picks.clamp(max=sim.shape[1] - 1)
