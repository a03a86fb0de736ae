"""Scoring a retrieval gallery: the options LAVIS's retrieval tasks pass, encoding a gallery in one place for every
model that scores one, and the ITC-shortlist + cross-encoder re-rank (batched across queries).

"Re-rank" means one thing here: re-scoring each query's shortlist with a cross-encoder.  Normalising whole score
matrices (inverted softmax, QB-norm) is the task's job (:mod:`lavis_glscl.tasks`), for any model.
"""
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lavis_glscl.distributed import all_reduce_sum, rank_row_range, world

PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


SCORERS = ("auto", "itc", "rerank")


@dataclass
class RetrievalOptions:
    """How a model scores a gallery: the shortlist length ``k_test``, pairs per cross-encoder batch, whether a
    re-ranked score adds the ITC similarity (as LAVIS's ALBEF/BLIP evaluators do), and which scores the task reports
    as its main figures (``retrieval_scorer``: ``itc`` skips the re-rank; ``rerank`` and ``auto`` compute both, ``auto``
    re-ranking only where it helped on a validation split).  LAVIS's own models read ``task_cfg.k_test`` or
    ``task_cfg.get("k_test")``; both work on this object."""

    k_test: int = 128
    itm_pairs_per_batch: int = 256
    rerank_add_itc: bool = True
    retrieval_scorer: str = "auto"

    def __post_init__(self):
        if self.retrieval_scorer not in SCORERS:
            raise ValueError(f"retrieval_scorer must be one of {SCORERS}, got {self.retrieval_scorer!r}")

    @classmethod
    def of(cls, task_cfg) -> "RetrievalOptions":
        """The options themselves, or read from a run config (LAVIS's ``retrieval`` task passes its ``run`` block)."""
        if isinstance(task_cfg, cls):
            return task_cfg
        return cls(**{f.name: f.type(task_cfg.get(f.name, f.default)) for f in fields(cls)})

    def get(self, key: str, default=None):
        return getattr(self, key, default)


def _pad_dim1(tensors: List[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding dim 1 (token length) to the longest where the chunks differ."""
    if tensors[0].dim() < 2 or len({t.shape[1] for t in tensors}) == 1:
        return torch.cat(tensors)
    length = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, [0, 0] * (t.dim() - 2) + [0, length - t.shape[1]]) for t in tensors])


def encode_gallery_texts(captions: Sequence[str], encode: Callable[[List[str]], Tuple[torch.Tensor, ...]],
                         chunk: int = 256) -> Tuple[torch.Tensor, ...]:
    """Every caption through ``encode`` (``chunk`` at a time); each of its outputs concatenated over the gallery,
    token tensors zero-padded to the gallery's longest caption."""
    parts = [encode(list(captions[start:start + chunk])) for start in range(0, len(captions), chunk)]
    return tuple(_pad_dim1(list(outputs)) for outputs in zip(*parts))


def encode_gallery_visuals(data_loader, encode: Callable[[dict], Tuple[torch.Tensor, ...]]) -> Tuple[torch.Tensor, ...]:
    """Every batch of the evaluation loader through ``encode``, concatenated; the loader must yield the whole gallery
    (retrieval scores every image against every caption on every rank)."""
    parts = [encode(samples) for samples in data_loader]
    outputs = tuple(torch.cat(list(tensors)) for tensors in zip(*parts))
    if outputs[0].shape[0] != len(data_loader.dataset):
        raise RuntimeError(f"the evaluation loader yielded {outputs[0].shape[0]} of {len(data_loader.dataset)} gallery "
                           f"items; retrieval needs the whole gallery on every rank: set run.use_dist_eval_sampler: "
                           f"False")
    return outputs


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


ScorePair = Tuple[np.ndarray, np.ndarray]


def score_matrices(sims: torch.Tensor, score_pairs: PairScorer, options: RetrievalOptions) -> Dict[str, ScorePair]:
    """LAVIS's retrieval score matrices, numpy ``(scores_i2t [N_img, N_txt], scores_t2i [N_txt, N_img])``, by scorer:
    ``itc``, the ITC similarities ``sims`` ``[N_img, N_txt]`` themselves, and (unless ``options.retrieval_scorer`` is
    ``itc``) ``rerank``, each query's top ``k_test`` re-ranked by ``score_pairs(image_idx [P], text_idx [P]) -> [P]`` in
    both directions, rows split across ranks and summed."""
    sims = sims.float()
    scores = {"itc": (sims.cpu().numpy(), sims.t().contiguous().cpu().numpy())}
    if options.retrieval_scorer == "itc":
        return scores
    scores_i2t = itm_rerank(sims, options.k_test, score_pairs, options.itm_pairs_per_batch, options.rerank_add_itc,
                            progress="i2t ITM re-rank")
    scores_t2i = itm_rerank(sims.t().contiguous(), options.k_test, lambda t, i: score_pairs(i, t),
                            options.itm_pairs_per_batch, options.rerank_add_itc, progress="t2i ITM re-rank")
    scores["rerank"] = (all_reduce_sum(scores_i2t).float().cpu().numpy(),
                        all_reduce_sum(scores_t2i).float().cpu().numpy())
    return scores


def main_scores(scores: Dict[str, ScorePair]) -> ScorePair:
    """The one pair of matrices LAVIS's own ``retrieval`` task takes: re-ranked where computed."""
    return scores.get("rerank", scores["itc"])
