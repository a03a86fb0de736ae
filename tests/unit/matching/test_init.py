"""Building the toolkit's parts by kind and name."""
import pytest

from lavis_glscl import matching


def test_unknown_names_raise_and_list_the_known_ones():
    for kind, registry in matching.PARTS.items():
        with pytest.raises(ValueError) as error:
            matching.build(kind, "no_such_part")
        assert all(name in str(error.value) for name in registry)
    with pytest.raises(ValueError, match="known kinds: loss, score_normalizer, similarity_head"):
        matching.build("reranker", "none")
    assert set(matching.MATCHING_LOSSES) == {"sum_margin", "vse++", "knn_margin", "infonce", "unified"}
    assert set(matching.SCORE_NORMALIZERS) == {"none", "inverted_softmax", "qb_norm"}
    with pytest.raises(TypeError):
        matching.build("loss", "vse++", margni=0.2)
