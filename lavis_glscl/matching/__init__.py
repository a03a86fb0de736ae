"""Pluggable image-text matching parts as pure functions on tensors: ranking and contrastive losses on a
similarity matrix (``losses``), token-level similarity heads (``similarity``) and score re-rankers
(``rerank``), each family with a name registry and a ``build_*`` helper.
"""
from lavis_glscl.matching.losses import (MATCHING_LOSSES, build_loss, hinge_ranking_loss, info_nce_loss,
                                         knn_margin_loss, sum_margin_loss, unified_pair_loss, vse_plus_plus_loss)
from lavis_glscl.matching.rerank import RERANKERS, build_reranker, inverted_softmax, no_rerank, querybank_normalise
from lavis_glscl.matching.similarity import (SIMILARITY_HEADS, build_similarity_head, scan_similarity,
                                             token_max_sum_similarity, token_mean_similarity, tokenflow_similarity)

__all__ = [
    "MATCHING_LOSSES", "build_loss", "hinge_ranking_loss", "sum_margin_loss", "vse_plus_plus_loss", "knn_margin_loss",
    "info_nce_loss", "unified_pair_loss",
    "SIMILARITY_HEADS", "build_similarity_head", "scan_similarity", "token_max_sum_similarity",
    "token_mean_similarity", "tokenflow_similarity",
    "RERANKERS", "build_reranker", "no_rerank", "inverted_softmax", "querybank_normalise",
]
