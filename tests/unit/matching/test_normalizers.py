"""The score normalisers (re-rankers) against values worked out by hand."""
import torch

from lavis_glscl import matching

TOL = 1e-5


def test_inverted_softmax_demotes_the_hub():
    # Column 0: softmax(9, 8.5) = (1 / (1 + e^-0.5), ...) = (0.622459, 0.377541);
    # column 1: softmax(8, 1) = (1 / (1 + e^-7), ...) = (0.999089, 0.000911).
    scores = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    normalised = matching.inverted_softmax(scores, beta=10.0)
    assert torch.allclose(normalised, torch.tensor([[0.622459, 0.999089], [0.377541, 0.000911]]), atol=TOL)
    # Query 0 (0-based) moves from item 0, the hub both queries rank first, to item 1; query 1 keeps item 0.
    assert scores.argmax(dim=1).tolist() == [0, 0]
    assert normalised.argmax(dim=1).tolist() == [1, 0]


def test_rankings_ignore_a_constant_added_to_the_scores():
    generator = torch.Generator().manual_seed(5)
    scores = torch.rand(6, 10, generator=generator)
    querybank = torch.rand(20, 10, generator=generator)

    def ranking(matrix):
        return matrix.argsort(dim=1, descending=True)

    for shift in (-0.7, 3.0):
        assert torch.equal(ranking(matching.inverted_softmax(scores + shift, 20.0)),
                           ranking(matching.inverted_softmax(scores, 20.0)))
        for k in (1, 3):
            assert torch.equal(ranking(matching.querybank_normalise(scores + shift, querybank + shift, 20.0, k)),
                               ranking(matching.querybank_normalise(scores, querybank, 20.0, k)))


def test_querybank_normalise_only_touches_queries_landing_on_querybank_hits():
    # Both querybank queries rank item 0 first, so with k = 1 the retrieved set is {0}.  Query 0's raw
    # top-1 is item 0: its row becomes exp(10 S_0j) / sum_b exp(10 S_bank,bj) =
    # (e^7 / (e^9 + e^8), e^5 / (e^1 + e^3), e^1 / (e^2 + e^1)) = (0.098938, 6.508259, 0.268941),
    # so its top item flips to 1.  Query 1's raw top-1 is item 1, outside the set: untouched.
    querybank = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1]])
    scores = torch.tensor([[0.7, 0.5, 0.1], [0.2, 0.6, 0.4]])
    reranked = matching.querybank_normalise(scores, querybank, beta=10.0, k=1)
    assert torch.allclose(reranked[0], torch.tensor([0.098938, 6.508259, 0.268941]), atol=TOL)
    assert torch.equal(reranked[1], scores[1])
    # k = 2 retrieves {0, 2} and {0, 1}: query 1's top-1 (item 1) is now covered and re-normalised.
    reranked = matching.querybank_normalise(scores, querybank, beta=10.0, k=2)
    assert not torch.equal(reranked[1], scores[1])
    built = matching.build("score_normalizer", "qb_norm", querybank_scores=querybank, beta=10.0)
    assert torch.equal(built(scores), matching.querybank_normalise(scores, querybank, beta=10.0))
