"""Score normalisers on a query-by-gallery score matrix ``[Q, G]``, as pure functions (applied by the retrieval
task to whatever matrices a model returns; "re-rank" is reserved for cross-encoder re-scoring of a shortlist).

Both normalisers fight hubness: a gallery item that scores high against many queries (a hub) is divided
by its total affinity to a pool of queries, so it stops topping every ranking.  Rankings are read per
row (per query); values in different rows are not meant to be compared.
"""
import torch


def identity(scores: torch.Tensor) -> torch.Tensor:
    """The raw ``scores`` ``[Q, G]``, unchanged."""
    return scores


def inverted_softmax(scores: torch.Tensor, beta: float = 20.0) -> torch.Tensor:
    """Inverted softmax (Smith et al. 2017): each gallery column normalised over the queries.

    ``out[q, j] = exp(beta * S[q, j]) / sum_q' exp(beta * S[q', j])`` for ``scores`` ``S`` ``[Q, G]``;
    a softmax over dim 0, so it cannot overflow.  Adding a constant to ``S`` changes nothing.  The default
    ``beta = 20`` is QB-Norm's setting for cosine scores.
    """
    return torch.softmax(beta * scores, dim=0)


def querybank_normalise(scores: torch.Tensor, querybank_scores: torch.Tensor, beta: float = 20.0,
                        k: int = 1) -> torch.Tensor:
    """QB-Norm with the dynamic inverted softmax (Bogolin et al., CVPR 2022).

    The gallery items retrieved in the top ``k`` by some querybank query are the candidate hubs.  A test
    query whose raw top-1 item is one of them gets its row re-normalised by the querybank::

        out[q, j] = exp(beta * S[q, j]) / sum_{b in querybank} exp(beta * S_bank[b, j])

    and every other row keeps its raw scores: the querybank says nothing about those regions of the
    gallery, and normalising them anyway is what makes the static inverted softmax hurt some queries.

    Args:
        scores: test query scores ``[Q, G]``.
        querybank_scores: scores of the querybank (e.g. training) queries on the same gallery ``[Qb, G]``.
        beta: inverse temperature (20 in the paper).
        k: how many top items of each querybank query count as retrieved (1 in the paper).

    Returns:
        Normalised scores ``[Q, G]``.
    """
    if scores.dim() != 2 or querybank_scores.dim() != 2 or scores.shape[1] != querybank_scores.shape[1]:
        raise ValueError(f"expected scores [Q, G] and querybank_scores [Qb, G] over the same gallery, got "
                         f"{tuple(scores.shape)} and {tuple(querybank_scores.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    retrieved_by_querybank = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
    retrieved_by_querybank[querybank_scores.topk(k, dim=1).indices.flatten()] = True
    renormalised_rows = retrieved_by_querybank[scores.argmax(dim=1)]  # [Q]
    # In log space: exp(beta * S) alone overflows float32 once beta * S > 88.
    normalised = torch.exp(beta * scores - torch.logsumexp(beta * querybank_scores, dim=0))
    return torch.where(renormalised_rows[:, None], normalised, scores)


SCORE_NORMALIZERS = {
    "none": identity,
    "inverted_softmax": inverted_softmax,
    "qb_norm": querybank_normalise,
}
