"""The similarity heads against values worked out by hand, batched against pair by pair, also built by name."""
import math

import pytest
import torch

from lavis_glscl import matching

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


def scan_by_hand(queries, contexts, lambda_softmax, lambda_lse, aggregation):
    """SCAN's four steps (see ``scan_similarity``) on lists of vectors, in Python floats."""
    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def norm(a):
        return math.sqrt(dot(a, a))

    cosines = [[dot(q, k) / (norm(q) * norm(k)) for k in contexts] for q in queries]
    clipped = [[c if c > 0 else 0.1 * c for c in row] for row in cosines]
    column_norms = [math.sqrt(sum(clipped[q][k] ** 2 for q in range(len(queries)))) for k in range(len(contexts))]
    relevances = []
    for q, query in enumerate(queries):
        logits = [lambda_softmax * clipped[q][k] / column_norms[k] for k in range(len(contexts))]
        weights = [math.exp(logit) / sum(math.exp(other) for other in logits) for logit in logits]
        attended = [sum(w * k[d] for w, k in zip(weights, contexts)) for d in range(len(query))]
        relevances.append(dot(query, attended) / (norm(query) * norm(attended)))
    if aggregation == "lse":
        return math.log(sum(math.exp(lambda_lse * r) for r in relevances)) / lambda_lse
    return sum(relevances) / len(relevances)


def test_scan_direction_and_its_lambdas_by_hand():
    """``direction: i2t`` (patches attend to words), ``lambda_softmax`` 4 and ``lambda_lse`` 2 (defaults t2i, 9, 6)
    against SCAN's steps computed here; the two directions give different scores on this pair."""
    regions = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    words = [[0.8, 0.6], [0.6, -0.8]]
    image, text = torch.tensor([regions], dtype=torch.float64), torch.tensor([words], dtype=torch.float64)
    scores = {}
    for direction, queries, contexts in (("t2i", words, regions), ("i2t", regions, words)):
        for aggregation in ("lse", "mean"):
            expected = scan_by_hand(queries, contexts, 4.0, 2.0, aggregation)
            scores[direction, aggregation] = value(matching.scan_similarity(
                image, text, direction=direction, lambda_softmax=4.0, lambda_lse=2.0, aggregation=aggregation))
            assert scores[direction, aggregation] == pytest.approx(expected, abs=1e-9), (direction, aggregation)
    assert abs(scores["t2i", "lse"] - scores["i2t", "lse"]) > 0.01
    assert abs(scores["t2i", "mean"] - scores["i2t", "mean"]) > 0.01
    assert scores["t2i", "lse"] != pytest.approx(scan_by_hand(words, regions, 9.0, 6.0, "lse"), abs=1e-3)


@pytest.mark.parametrize("head, options", [(matching.scan_similarity, {}), (matching.token_max_sum_similarity, {}),
                                           (matching.tokenflow_similarity, {"temperature": 0.1})],
                         ids=["scan", "token_max_sum", "tokenflow"])
def test_chunk_size_scores_that_many_images_per_chunk(head, options, monkeypatch):
    """``chunk_size: 2`` (default 16) over 5 images: three chunks of 2, 2 and 1 images, the scores unchanged."""
    from lavis_glscl.matching import similarity

    chunks = []
    by_chunk = similarity._scores_by_image_chunk

    def recording(score_chunk, image_tokens, image_mask, chunk_size):
        def counted(images, images_mask):
            chunks.append(images.shape[0])
            return score_chunk(images, images_mask)

        return by_chunk(counted, image_tokens, image_mask, chunk_size)

    generator = torch.Generator().manual_seed(6)
    images, image_mask = random_tokens([6, 3, 5, 1, 6], 6, 8, generator)
    texts, text_mask = random_tokens([4, 2, 3], 4, 8, generator)
    whole = head(images, texts, image_mask, text_mask, **options)
    monkeypatch.setattr(similarity, "_scores_by_image_chunk", recording)
    chunked = head(images, texts, image_mask, text_mask, chunk_size=2, **options)
    assert chunks == [2, 2, 1]
    assert torch.allclose(chunked, whole, atol=TOL)
