"""The matching toolkit (losses, similarity heads, re-rankers) against values worked out by hand."""
import math

import pytest
import torch

from lavis_glscl import matching
from lavis_glscl.matching import norm_softmax_loss

# Rows are images, columns are texts, positives on the diagonal.  With margin 0.2 the hinge values
# [0.2 + S_neg - S_pos]_+ are, i2t by row: (0.10, 0.15), (0.10, 0), (0.25, 0);
# t2i by column: (0, 0.05), (0.20, 0), (0.35, 0).
TOY = torch.tensor([[0.70, 0.60, 0.65],
                    [0.50, 0.60, 0.30],
                    [0.55, 0.20, 0.50]])
TOL = 1e-5


def value(tensor):
    return tensor.item()


def random_tokens(lengths, max_length, dim, generator, dtype=torch.float32):
    """Tokens [B, max_length, dim] whose padding is large garbage, and their mask [B, max_length]."""
    tokens = torch.randn(len(lengths), max_length, dim, generator=generator, dtype=dtype)
    mask = torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]
    garbage = 100 * torch.randn(tokens.shape, generator=generator, dtype=dtype)
    return torch.where(mask[..., None], tokens, garbage), mask


def score_pairs_one_by_one(head, image_tokens, image_mask, text_tokens, text_mask, **options):
    """The score matrix built pair by pair from the unpadded tokens: the reference for batching."""
    scores = torch.empty(image_tokens.shape[0], text_tokens.shape[0], dtype=image_tokens.dtype)
    for i in range(image_tokens.shape[0]):
        for t in range(text_tokens.shape[0]):
            image = image_tokens[i, image_mask[i]][None]
            text = text_tokens[t, text_mask[t]][None]
            scores[i, t] = head(image, text, **options)[0, 0]
    return scores


# ----------------------------------------------------------------------------------------------- losses

def test_hinge_ranking_loss_on_toy_matrix():
    # sum: i2t 0.25 + 0.10 + 0.25 = 0.6, t2i 0.05 + 0.20 + 0.35 = 0.6; hardest: i2t 0.15 + 0.10 + 0.25,
    # t2i 0.05 + 0.20 + 0.35; "mean" divides by B = 3.
    assert value(matching.hinge_ranking_loss(TOY, 0.2, "sum")) == pytest.approx(1.2, abs=TOL)
    assert value(matching.hinge_ranking_loss(TOY, 0.2, "hardest")) == pytest.approx(1.1, abs=TOL)
    assert value(matching.hinge_ranking_loss(TOY, 0.2, 1)) == pytest.approx(1.1, abs=TOL)
    assert value(matching.hinge_ranking_loss(TOY, 0.2, 2)) == pytest.approx(1.2, abs=TOL)
    assert value(matching.hinge_ranking_loss(TOY, 0.2, "sum", "mean")) == pytest.approx(0.4, abs=TOL)
    assert value(matching.hinge_ranking_loss(TOY, 0.2, "hardest", "mean")) == pytest.approx(1.1 / 3, abs=TOL)
    assert value(matching.sum_margin_loss(TOY)) == pytest.approx(1.2, abs=TOL)
    assert value(matching.vse_plus_plus_loss(TOY)) == pytest.approx(1.1, abs=TOL)


@pytest.mark.parametrize("batch_size", [3, 5, 8])
def test_knn_margin_recovers_vse_plus_plus_and_sum_margin_on_random_matrices(batch_size):
    sim = torch.randn(batch_size, batch_size, generator=torch.Generator().manual_seed(batch_size))
    for reduction in ("sum", "mean"):
        hardest = matching.hinge_ranking_loss(sim, 0.5, "hardest", reduction)
        summed = matching.hinge_ranking_loss(sim, 0.5, "sum", reduction)
        assert value(matching.knn_margin_loss(sim, 1, 0.5, reduction)) == pytest.approx(value(hardest), abs=TOL)
        all_negatives = matching.knn_margin_loss(sim, batch_size - 1, 0.5, reduction)
        assert value(all_negatives) == pytest.approx(value(summed), abs=TOL)
    assert value(summed) > value(hardest) > 0


def test_hardest_negative_alone_gets_gradient():
    # Hardest negatives: rows 0->text 2, 1->text 0, 2->text 0; columns 0->image 2, 1->image 0, 2->image 0,
    # all active.  Entry (2, 0) is hardest for row 2 and column 0, entry (0, 2) for row 0 and column 2:
    # gradient 2.  Each diagonal entry is the positive of one active row and one active column: -2.
    sim = TOY.clone().requires_grad_()
    matching.hinge_ranking_loss(sim, 0.2, "hardest").backward()
    assert torch.allclose(sim.grad, torch.tensor([[-2., 1., 2.], [1., -2., 0.], [2., 0., -2.]]), atol=TOL)

    sim = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)).requires_grad_()
    matching.hinge_ranking_loss(sim, 10.0, "hardest").backward()  # margin 10: every hinge is active
    negatives = sim.detach().masked_fill(torch.eye(6, dtype=torch.bool), float("-inf"))
    hardest = torch.zeros(6, 6)
    hardest[torch.arange(6), negatives.argmax(dim=1)] += 1
    hardest[negatives.argmax(dim=0), torch.arange(6)] += 1
    assert torch.equal(sim.grad * ~torch.eye(6, dtype=torch.bool), hardest)


def test_multi_positive_hinge_takes_mean_positive_score_and_never_uses_positives_as_negatives():
    # Images 0 and 1 are the same image with captions 0 and 1; image 2 has caption 2.
    sim = torch.tensor([[0.8, 0.6, 0.65], [0.8, 0.6, 0.65], [0.3, 0.2, 0.7]])
    positives = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    # Rows 0, 1: positive score (0.8 + 0.6) / 2 = 0.7, negative 0.65 -> 0.15 each; row 2: no violation.
    # Columns 0, 1: positive scores 0.8 and 0.6, negative 0.3 / 0.2 -> 0; column 2: positive 0.7,
    # negatives 0.65 twice -> 0.15 each.  Sum 0.6; hardest 0.15 + 0.15 + 0.15 = 0.45.
    assert value(matching.hinge_ranking_loss(sim, 0.2, "sum", positives=positives)) == pytest.approx(0.6, abs=TOL)
    assert value(matching.hinge_ranking_loss(sim, 0.2, "hardest", positives=positives)) == pytest.approx(0.45, abs=TOL)


def test_positives_mask_is_checked():
    with pytest.raises(ValueError, match="at least one"):
        matching.hinge_ranking_loss(TOY, positives=torch.tensor([[True, False, False]] * 3))
    with pytest.raises(ValueError, match="bool"):
        matching.info_nce_loss(TOY, 0.1, positives=torch.eye(3))
    with pytest.raises(ValueError, match="square"):
        matching.unified_pair_loss(TOY[:2], 10.0)
    with pytest.raises(ValueError, match="negatives"):
        matching.hinge_ranking_loss(TOY, negatives=0)


def test_info_nce_on_identity_is_log_one_plus_inverse_e_per_direction():
    # Each row and column: -log(e / (e + 1)) = log(1 + e^-1) = 0.313262; two directions.
    assert value(matching.info_nce_loss(torch.eye(2), 1.0)) == pytest.approx(2 * 0.313262, abs=TOL)


def test_multi_positive_info_nce_with_identity_mask_equals_norm_softmax_loss():
    for seed in range(3):
        sim = torch.randn(5, 5, generator=torch.Generator().manual_seed(seed))
        expected = norm_softmax_loss(sim, 0.1)
        got = matching.info_nce_loss(sim, 0.1, positives=torch.eye(5, dtype=torch.bool))
        assert value(got) == pytest.approx(value(expected), abs=TOL)


def test_multi_positive_info_nce_by_hand():
    # tau = 1, each positive against the query's negatives only, averaged over the query's positives:
    # rows 0, 1: (log(1 + e^(0.65-0.8)) + log(1 + e^(0.65-0.6))) / 2 = 0.669708; row 2:
    # log(1 + e^-0.4 + e^-0.5) = 0.822793; row mean 0.720737.  Columns: log(1 + e^-0.5),
    # log(1 + e^-0.4), log(1 + 2e^-0.05); column mean 0.684217.  Sum 1.404953.
    sim = torch.tensor([[0.8, 0.6, 0.65], [0.8, 0.6, 0.65], [0.3, 0.2, 0.7]])
    positives = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert value(matching.info_nce_loss(sim, 1.0, positives)) == pytest.approx(1.404953, abs=TOL)


def test_gamma_times_unified_loss_is_info_nce():
    # m = 0, gamma = 1/tau = 20: gamma * L_q = -log softmax(20 * S_q)[q] for every row and column query.
    # Row and column means summed (norm_softmax_loss, tau = 0.05): 0.616881 + 1.269551 = 1.886432.
    # Summed over the 6 queries (the section-7 "sum convention" figure): 3 * 1.886432 = 5.659297.
    assert value(norm_softmax_loss(TOY, 0.05)) == pytest.approx(1.886432, abs=TOL)
    assert value(20 * matching.unified_pair_loss(TOY, 20.0, 0.0, "mean")) == pytest.approx(1.886432, abs=TOL)
    assert value(20 * matching.unified_pair_loss(TOY, 20.0, 0.0, "sum")) == pytest.approx(5.659297, abs=TOL)
    assert value(matching.unified_pair_loss(torch.eye(2), 1.0, 0.0, "mean")) == pytest.approx(2 * 0.313262, abs=TOL)


def test_unified_loss_tends_to_vse_plus_plus_and_stays_finite():
    # gamma -> inf: (1/gamma) log(1 + sum exp(gamma x)) -> max(0, max x), the VSE++ value 1.1 on TOY.
    # The next-largest term is at least 0.05 below the largest, so at gamma = 1000 the gap is < 1e-20.
    assert value(matching.unified_pair_loss(TOY, 1000.0, 0.2)) == pytest.approx(1.1, abs=TOL)
    sim = TOY.clone().requires_grad_()
    loss = matching.unified_pair_loss(sim, 1e6, 0.2)
    loss.backward()
    assert math.isfinite(value(loss)) and torch.isfinite(sim.grad).all()
    assert value(loss) == pytest.approx(1.1, abs=TOL)


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


def test_built_parts_bind_their_options():
    assert value(matching.build("loss", "knn_margin", k=1)(TOY)) == pytest.approx(1.1, abs=TOL)
    assert value(matching.build("loss", "sum_margin", reduction="mean")(TOY)) == pytest.approx(0.4, abs=TOL)
    assert value(matching.build("loss", "infonce", temperature=0.05)(TOY)) == pytest.approx(1.886432, abs=TOL)
    assert torch.equal(matching.build("score_normalizer", "none")(TOY), TOY)


# ----------------------------------------------------------------------------------- similarity heads

def scan_inputs(words):
    """One image with regions v1 = e1, v2 = e2 (in 3-D) and one caption with the given words."""
    regions = torch.tensor([[[1., 0., 0.], [0., 1., 0.]]], dtype=torch.float64)
    return regions, torch.tensor([words], dtype=torch.float64)


def test_scan_single_word_attends_to_its_region():
    # Word [1, 0, 0]: cosines 1 (v1) and 0 (v2).  The clipped l2norm leaves them unchanged here:
    # LeakyReLU keeps 1 and 0, and with a single word each region's column [c] normalises to
    # c / |c| = 1 for v1 and stays 0 for v2.  Attention alpha1 = e^9 / (e^9 + 1) = 0.9998766,
    # attended a = (alpha1, alpha2, 0), R = alpha1 / |a| = 1 / sqrt(1 + e^-18) = 1 - 7.6e-9.
    # LSE and mean over a single word both return R.  (float64: 7.6e-9 is below float32's resolution.)
    regions, words = scan_inputs([[1., 0., 0.]])
    expected = 1 / math.sqrt(1 + math.exp(-18))
    for aggregation in ("lse", "mean"):
        score = value(matching.scan_similarity(regions, words, aggregation=aggregation))
        assert score == pytest.approx(expected, abs=1e-12)
    assert 1 - score == pytest.approx(7.615e-9, rel=1e-3)


def test_scan_pools_two_words_with_lse_and_mean():
    # Word 2 = (0, 0.5, sqrt(3)/2): cosine 0 with v1 and 0.5 with v2.  Clipped l2norm per region over the
    # two words: v1's column (1, 0) -> (1, 0), v2's column (0, 0.5) -> (0, 1), so word 1 still scores
    # R1 = 1 / sqrt(1 + e^-18) = 1 - 7.6e-9 and word 2 attends to v2 with the same weights, giving
    # R2 = 0.5 * R1.  LSE(6) = log(e^6 + e^3) / 6 = 1 + log(1 + e^-3) / 6 = 1.0080979; mean 0.75.
    regions, words = scan_inputs([[1., 0., 0.], [0., 0.5, math.sqrt(3) / 2]])
    assert value(matching.scan_similarity(regions, words, lambda_lse=6.0)) == pytest.approx(1.0080979, abs=TOL)
    assert value(matching.scan_similarity(regions, words, aggregation="mean")) == pytest.approx(0.75, abs=TOL)


def test_scan_clipped_l2norm_normalises_over_the_query_words():
    # Regions e1, e2; words w1 = (0.8, 0.6), w2 = (0.6, -0.8).  Cosines: w1 (0.8, 0.6), w2 (0.6, -0.8).
    # LeakyReLU(0.1): w2 -> (0.6, -0.08).  l2-normalise each region's column over the words:
    # e1 (0.8, 0.6) has norm 1; e2 (0.6, -0.08) has norm sqrt(0.3664) -> (0.991228, -0.132164).
    # w1: alpha2 / alpha1 = r1 = e^(9 (0.991228 - 0.8)) = 5.590401, R1 = (0.8 + 0.6 r1) / sqrt(1 + r1^2) = 0.731492.
    # w2: r2 = e^(9 (-0.132164 - 0.6)) = 0.001375, R2 = (0.6 - 0.8 r2) / sqrt(1 + r2^2) = 0.598900.
    # Mean 0.665196; LSE(6) = log(e^(6 R1) + e^(6 R2)) / 6 = 0.793572.  Skipping the clipped l2norm
    # (or normalising over the regions instead) would give R1 = 0.887141.
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    words = torch.tensor([[[0.8, 0.6], [0.6, -0.8]]])
    assert value(matching.scan_similarity(regions, words, aggregation="mean")) == pytest.approx(0.665196, abs=TOL)
    assert value(matching.scan_similarity(regions, words)) == pytest.approx(0.793572, abs=TOL)


SCAN_SETTINGS = [dict(direction=direction, aggregation=aggregation)
                 for direction in ("t2i", "i2t") for aggregation in ("lse", "mean")]


@pytest.mark.parametrize("settings", SCAN_SETTINGS)
def test_scan_is_invariant_to_region_order_and_padding(settings):
    generator = torch.Generator().manual_seed(1)
    images, _ = random_tokens([5, 5], 5, 8, generator)
    texts, _ = random_tokens([4, 4, 4], 4, 8, generator)
    scores = matching.scan_similarity(images, texts, **settings)

    permuted = images[:, torch.randperm(5, generator=generator)]
    assert torch.allclose(matching.scan_similarity(permuted, texts, **settings), scores, atol=TOL)

    padded_images = torch.cat([images, 100 * torch.randn(2, 3, 8, generator=generator)], dim=1)
    padded_texts = torch.cat([texts, 100 * torch.randn(3, 2, 8, generator=generator)], dim=1)
    image_mask = torch.arange(8)[None, :].expand(2, 8) < 5
    text_mask = torch.arange(6)[None, :].expand(3, 6) < 4
    padded_scores = matching.scan_similarity(padded_images, padded_texts, image_mask, text_mask, **settings)
    assert torch.allclose(padded_scores, scores, atol=TOL)


@pytest.mark.parametrize("settings", SCAN_SETTINGS)
def test_scan_batched_equals_pair_by_pair(settings):
    generator = torch.Generator().manual_seed(2)
    images, image_mask = random_tokens([6, 3, 5, 1, 6], 6, 8, generator)
    texts, text_mask = random_tokens([4, 2, 3], 4, 8, generator)
    batched = matching.scan_similarity(images, texts, image_mask, text_mask, chunk_size=2, **settings)
    looped = score_pairs_one_by_one(matching.scan_similarity, images, image_mask, texts, text_mask, **settings)
    assert batched.shape == (5, 3)
    assert torch.allclose(batched, looped, atol=TOL)


# T (words) and V (patches), unit vectors.  Cosines word x patch: [[1, 0, 0.6], [0.6, 0.8, 1]].
WORDS = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
PATCHES = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])


def test_token_max_sum_and_mean_on_hand_example():
    # t2v: best patch per word 1 and 1 -> sum 2.0, mean 1.0.  v2t: best word per patch 1, 0.8, 1 ->
    # sum 2.8.  symmetric: 4.8.  Mean of all six cosines: 4 / 6 = 0.666667.
    def max_sum(**options):
        return value(matching.token_max_sum_similarity(PATCHES, WORDS, **options))

    assert max_sum(mode="t2v") == pytest.approx(2.0, abs=TOL)
    assert max_sum(mode="t2v", reduction="mean") == pytest.approx(1.0, abs=TOL)
    assert max_sum(mode="v2t") == pytest.approx(2.8, abs=TOL)
    assert max_sum(mode="symmetric") == pytest.approx(4.8, abs=TOL)
    assert value(matching.token_mean_similarity(PATCHES, WORDS)) == pytest.approx(4 / 6, abs=TOL)


def test_tokenflow_limits_on_hand_example():
    # Temperature 1e6: every word spreads its flow uniformly -> the mean 0.666667.  Temperature 1e-3:
    # each word's flow sits on its best patch (the runner-up is >= 0.2 below, weight < e^-200) -> 1.0.
    assert value(matching.tokenflow_similarity(PATCHES, WORDS, temperature=1e6)) == pytest.approx(4 / 6, abs=TOL)
    assert value(matching.tokenflow_similarity(PATCHES, WORDS, temperature=1e-3)) == pytest.approx(1.0, abs=TOL)


def test_tokenflow_limits_on_random_tokens():
    generator = torch.Generator().manual_seed(3)
    images, image_mask = random_tokens([5, 2, 4], 5, 8, generator, torch.float64)
    texts, text_mask = random_tokens([3, 1, 2, 3], 3, 8, generator, torch.float64)
    tokens = (images, texts, image_mask, text_mask)
    uniform = matching.tokenflow_similarity(*tokens, temperature=1e8)
    peaked = matching.tokenflow_similarity(*tokens, temperature=1e-8)
    assert torch.allclose(uniform, matching.token_mean_similarity(*tokens), atol=TOL)
    assert torch.allclose(peaked, matching.token_max_sum_similarity(*tokens, mode="t2v", reduction="mean"), atol=TOL)


@pytest.mark.parametrize("head, options", [
    (matching.token_max_sum_similarity, dict(mode="t2v")),
    (matching.token_max_sum_similarity, dict(mode="v2t", reduction="mean")),
    (matching.token_max_sum_similarity, dict(mode="symmetric")),
    (matching.token_mean_similarity, dict()),
    (matching.tokenflow_similarity, dict(temperature=0.1)),
])
def test_token_heads_batched_equal_pair_by_pair(head, options):
    generator = torch.Generator().manual_seed(4)
    images, image_mask = random_tokens([6, 3, 5, 1, 6], 6, 8, generator)
    texts, text_mask = random_tokens([4, 2, 3], 4, 8, generator)
    if head is not matching.token_mean_similarity:
        options = dict(options, chunk_size=2)
    batched = head(images, texts, image_mask, text_mask, **options)
    looped = score_pairs_one_by_one(head, images, image_mask, texts, text_mask, **options)
    assert torch.allclose(batched, looped, atol=TOL)


def test_similarity_heads_build_by_name():
    head = matching.build("similarity_head", "token_max_sum", mode="v2t")
    assert value(head(PATCHES, WORDS)) == pytest.approx(2.8, abs=TOL)


# ------------------------------------------------------------------------------------------ re-rankers

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
