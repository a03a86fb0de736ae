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
