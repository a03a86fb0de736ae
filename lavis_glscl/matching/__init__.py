"""Pluggable image-text matching parts as pure functions on tensors: ranking and contrastive losses on a
similarity matrix (``losses``), token-level similarity heads (``similarity``) and score normalisers
(``normalizers``), each family a name registry; :func:`build` makes a part from its kind, name and options.
"""
import functools
import inspect
from typing import Callable

from lavis_glscl.matching.losses import (
    MATCHING_LOSSES,
    hinge_ranking_loss,
    info_nce_loss,
    knn_margin_loss,
    norm_softmax_loss,
    sum_margin_loss,
    unified_pair_loss,
    vse_plus_plus_loss,
)
from lavis_glscl.matching.normalizers import SCORE_NORMALIZERS, identity, inverted_softmax, querybank_normalise
from lavis_glscl.matching.similarity import (
    SIMILARITY_HEADS,
    scan_similarity,
    token_max_sum_similarity,
    token_mean_similarity,
    tokenflow_similarity,
)

PARTS = {"loss": MATCHING_LOSSES, "similarity_head": SIMILARITY_HEADS, "score_normalizer": SCORE_NORMALIZERS}


def build(kind: str, name: str, **options) -> Callable:
    """The part ``PARTS[kind][name]`` with ``options`` bound as keyword arguments: a loss is called as
    ``loss(sim, positives=...)``, a similarity head as ``head(image_tokens, text_tokens, image_mask, text_mask)``, a
    score normaliser as ``normalise(scores)``.

    Raises ``ValueError`` (listing the known names) for an unknown kind or name, and ``TypeError`` for an option the
    part does not take, so that a config typo fails when the part is built rather than at its first call.
    """
    if kind not in PARTS:
        raise ValueError(f"unknown matching part kind {kind!r}; known kinds: {', '.join(sorted(PARTS))}")
    registry = PARTS[kind]
    if name not in registry:
        raise ValueError(f"unknown {kind.replace('_', ' ')} {name!r}; known names: {', '.join(sorted(registry))}")
    function = registry[name]
    inspect.signature(function).bind_partial(**options)
    return functools.partial(function, **options)


__all__ = [
    "PARTS", "build",
    "MATCHING_LOSSES", "norm_softmax_loss", "hinge_ranking_loss", "sum_margin_loss", "vse_plus_plus_loss",
    "knn_margin_loss", "info_nce_loss", "unified_pair_loss",
    "SIMILARITY_HEADS", "scan_similarity", "token_max_sum_similarity", "token_mean_similarity", "tokenflow_similarity",
    "SCORE_NORMALIZERS", "identity", "inverted_softmax", "querybank_normalise",
]
