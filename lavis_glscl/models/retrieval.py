"""Retrieval scoring: an ITC shortlist re-ranked by a cross-encoder (batched across queries), and the matching
toolkit's score re-rankers applied to whole score matrices."""
from typing import Callable, Tuple

import numpy as np
import torch
from tqdm import tqdm

from lavis_glscl.distributed import all_reduce_sum, rank_row_range, world
from lavis_glscl.matching import build_reranker

PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def itm_rerank(sims: torch.Tensor, k: int, score_pairs: PairScorer, pairs_per_batch: int = 256,
               add_sims: bool = True, rows: Tuple[int, int] = None, progress: str = "") -> torch.Tensor:
    """Re-rank each query's top-``k`` gallery items (by ``sims`` ``[Q, G]``) with ``score_pairs``.

    ``score_pairs(query_idx [P], gallery_idx [P]) -> [P]`` scores pairs; pairs of several queries are
    scored together in batches of ``pairs_per_batch``.  A shortlisted item's score is the pair score
    (plus its similarity with ``add_sims``, as LAVIS's ALBEF/BLIP evaluators do); every other item keeps
    its similarity order strictly below the row's shortlist.  Only ``rows = (start, end)`` are scored
    (default: this rank's share); other rows are zero, so summing the ranks' matrices gives the full one.
    """
    num_queries, num_gallery = sims.shape
    k = min(k, num_gallery)
    start, end = rank_row_range(num_queries) if rows is None else rows
    scores = torch.zeros_like(sims)
    if end <= start:
        return scores
    own = sims[start:end]
    top_sims, top_idx = own.topk(k, dim=1)
    query_idx = torch.arange(start, end, device=sims.device).repeat_interleave(k)
    gallery_idx = top_idx.flatten()
    pair_scores = []
    chunks = range(0, query_idx.numel(), pairs_per_batch)
    for begin in tqdm(chunks, desc=progress or "ITM re-rank", disable=world()[0] != 0 or not progress):
        pair_scores.append(score_pairs(query_idx[begin:begin + pairs_per_batch],
                                       gallery_idx[begin:begin + pairs_per_batch]).to(sims.dtype))
    shortlist = torch.cat(pair_scores).view(end - start, k)
    if add_sims:
        shortlist = shortlist + top_sims
    floor = shortlist.min(dim=1, keepdim=True).values - 1.0
    below = own - own.max(dim=1, keepdim=True).values + floor
    scores[start:end] = below.scatter(1, top_idx, shortlist)
    return scores


def score_matrices(sims: torch.Tensor, score_pairs: PairScorer, task_cfg) -> Tuple[np.ndarray, np.ndarray]:
    """LAVIS's retrieval score matrices from ITC similarities ``sims`` ``[N_img, N_txt]``: each query's top
    ``k_test`` re-ranked by ``score_pairs(image_idx [P], text_idx [P]) -> [P]`` in both directions (rows split
    across ranks and summed), then the run's re-ranker.

    Run options: ``k_test`` (128), ``itm_pairs_per_batch`` (256), ``rerank_add_itc`` (true), ``rerank``.
    Returns numpy ``(scores_i2t [N_img, N_txt], scores_t2i [N_txt, N_img])``.
    """
    k_test = int(task_cfg.get("k_test", 128))
    pairs_per_batch = int(task_cfg.get("itm_pairs_per_batch", 256))
    add_sims = bool(task_cfg.get("rerank_add_itc", True))
    scores_i2t = itm_rerank(sims, k_test, score_pairs, pairs_per_batch, add_sims, progress="i2t ITM re-rank")
    scores_t2i = itm_rerank(sims.t().contiguous(), k_test, lambda t, i: score_pairs(i, t), pairs_per_batch,
                            add_sims, progress="t2i ITM re-rank")
    scores_i2t, scores_t2i = rerank_both_directions(all_reduce_sum(scores_i2t), all_reduce_sum(scores_t2i), task_cfg)
    return scores_i2t.float().cpu().numpy(), scores_t2i.float().cpu().numpy()


def rerank_both_directions(scores_i2t: torch.Tensor, scores_t2i: torch.Tensor, task_cfg) -> Tuple[torch.Tensor, torch.Tensor]:
    """Apply the run's re-ranker to both full score matrices (queries are rows; see ``lavis_glscl.matching.rerank``):
    ``rerank: inverted_softmax`` with ``rerank_options: {inverted_softmax: {beta: 20}}``.  No ``rerank``, or
    ``none``, leaves them unchanged."""
    name = task_cfg.get("rerank") or "none"
    if name == "qb_norm":
        raise ValueError("rerank 'qb_norm' needs the scores of a querybank of training queries, which an evaluation "
                         "run does not have; call lavis_glscl.matching.querybank_normalise directly")
    rerank = build_reranker(name, **dict((task_cfg.get("rerank_options") or {}).get(name, {})))
    return rerank(scores_i2t), rerank(scores_t2i)
