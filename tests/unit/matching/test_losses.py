"""The matching losses against values worked out by hand, also built by name."""
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
    # Summed over the 6 queries (the "sum" reduction): 3 * 1.886432 = 5.659297.
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


def test_built_parts_bind_their_options():
    assert value(matching.build("loss", "knn_margin", k=1)(TOY)) == pytest.approx(1.1, abs=TOL)
    assert value(matching.build("loss", "sum_margin", reduction="mean")(TOY)) == pytest.approx(0.4, abs=TOL)
    assert value(matching.build("loss", "infonce", temperature=0.05)(TOY)) == pytest.approx(1.886432, abs=TOL)
    assert torch.equal(matching.build("score_normalizer", "none")(TOY), TOY)


def test_a_margin_of_zero_is_a_margin_and_not_the_default():
    """``margin=0`` for VSE0, VSE++ and kNN-margin, called and built by name: only violations beyond zero count.  On
    TOY the hinges [S_neg - S_pos]_+ are 0.05 (row 2 against text 0) and 0.15 (column 2 against image 0), all else 0;
    the default margin 0.2 gives 1.2 and 1.1 instead."""
    for loss in (matching.sum_margin_loss(TOY, margin=0.0), matching.vse_plus_plus_loss(TOY, margin=0.0),
                 matching.knn_margin_loss(TOY, 2, margin=0.0), matching.build("loss", "vse++", margin=0.0)(TOY),
                 matching.build("loss", "sum_margin", margin=0)(TOY)):
        assert value(loss) == pytest.approx(0.2, abs=TOL)
    assert value(matching.vse_plus_plus_loss(TOY, margin=0.0, reduction="mean")) == pytest.approx(0.2 / 3, abs=TOL)


# Two images, five captions: image 0 has captions 0-2, image 1 captions 3-4.  Mean positive scores: image 0
# (0.9 + 0.7 + 0.8) / 3 = 0.8, image 1 (0.8 + 0.6) / 2 = 0.7; each caption's positive is its own image's entry.
WIDE = torch.tensor([[0.90, 0.70, 0.80, 0.65, 0.85],
                     [0.45, 0.30, 0.75, 0.80, 0.60]])
WIDE_POSITIVES = torch.tensor([[True, True, True, False, False],
                               [False, False, False, True, True]])


def test_hinge_losses_on_a_non_square_positives_mask_by_hand():
    """More captions than images: with margin 0.2, i2t hinges image 0: (0.05, 0.25), image 1: (0, 0, 0.25); t2i (one
    negative image per caption): 0, 0, 0.15, 0.05, 0.45.  Sum 0.55 + 0.65; hardest 0.25 + 0.25 + 0.65; "mean" divides
    the i2t sum by 2 images and the t2i sum by 5 captions."""
    assert value(matching.hinge_ranking_loss(WIDE, 0.2, "sum", positives=WIDE_POSITIVES)) == pytest.approx(1.2, abs=TOL)
    assert value(matching.vse_plus_plus_loss(WIDE, positives=WIDE_POSITIVES)) == pytest.approx(1.15, abs=TOL)
    assert value(matching.knn_margin_loss(WIDE, 1, positives=WIDE_POSITIVES)) == pytest.approx(1.15, abs=TOL)
    assert value(matching.sum_margin_loss(WIDE, reduction="mean", positives=WIDE_POSITIVES)) == pytest.approx(
        0.55 / 2 + 0.65 / 5, abs=TOL)
    with pytest.raises(ValueError, match="square"):
        matching.sum_margin_loss(WIDE)
    with pytest.raises(ValueError, match="shape"):
        matching.sum_margin_loss(WIDE, positives=WIDE_POSITIVES.t())


def test_info_nce_and_unified_loss_on_a_non_square_positives_mask_by_hand():
    """More captions than images, computed here from the formulas with Python floats: each positive of a query against
    the query's negatives only, averaged over its positives, then over the queries of each direction (InfoNCE); the
    soft maximum log(1 + sum exp(gamma * (m + S_neg - S_pos))) / gamma per query (unified)."""
    rows = WIDE.tolist()
    positive = WIDE_POSITIVES.tolist()
    columns = [list(column) for column in zip(*rows)]
    positive_columns = [list(column) for column in zip(*positive)]
    tau, gamma, margin = 0.5, 4.0, 0.1

    def info_nce_query(scores, is_positive):
        negatives = [s / tau for s, p in zip(scores, is_positive) if not p]
        terms = [-s / tau + math.log(math.exp(s / tau) + sum(math.exp(n) for n in negatives))
                 for s, p in zip(scores, is_positive) if p]
        return sum(terms) / len(terms)

    def unified_query(scores, is_positive):
        positives = [s for s, p in zip(scores, is_positive) if p]
        mean_positive = sum(positives) / len(positives)
        violations = [margin + s - mean_positive for s, p in zip(scores, is_positive) if not p]
        return math.log(1 + sum(math.exp(gamma * v) for v in violations)) / gamma

    info_nce = (sum(info_nce_query(r, p) for r, p in zip(rows, positive)) / 2
                + sum(info_nce_query(c, p) for c, p in zip(columns, positive_columns)) / 5)
    assert value(matching.info_nce_loss(WIDE, tau, WIDE_POSITIVES)) == pytest.approx(info_nce, abs=TOL)
    assert value(matching.build("loss", "infonce", temperature=tau)(WIDE, positives=WIDE_POSITIVES)) == pytest.approx(
        info_nce, abs=TOL)
    unified_rows = [unified_query(r, p) for r, p in zip(rows, positive)]
    unified_columns = [unified_query(c, p) for c, p in zip(columns, positive_columns)]
    unified_sum = matching.unified_pair_loss(WIDE, gamma, margin, reduction="sum", positives=WIDE_POSITIVES)
    assert value(unified_sum) == pytest.approx(sum(unified_rows) + sum(unified_columns), abs=TOL)
    unified_mean = matching.unified_pair_loss(WIDE, gamma, margin, reduction="mean", positives=WIDE_POSITIVES)
    assert value(unified_mean) == pytest.approx(sum(unified_rows) / 2 + sum(unified_columns) / 5, abs=TOL)
