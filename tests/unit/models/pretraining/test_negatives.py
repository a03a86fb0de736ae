"""ITM negatives: exactly half the rows, never a forbidden pick, hard negatives by similarity, group partners."""
import pytest
import torch

from lavis_glscl.models.pretraining.negatives import (
    forbidden_negatives,
    group_partners,
    hard_negatives,
    negative_rows,
    random_partners,
)


def test_negative_rows_are_exactly_half():
    assert negative_rows(torch.rand(10)).sum() == 5
    assert negative_rows(torch.tensor([0.3, 0.1, 0.2])).tolist() == [False, True, False]


def test_random_partners_avoid_self_and_same_image():
    ids = torch.tensor([0, 0, 1, 2])
    forbidden = forbidden_negatives(0, 4, 4, ids, ids)
    assert forbidden.tolist() == [[True, True, False, False], [True, True, False, False],
                                  [False, False, True, False], [False, False, False, True]]
    for seed in range(20):
        partners = random_partners(torch.rand(4, 4, generator=torch.Generator().manual_seed(seed)), forbidden)
        assert not forbidden[torch.arange(4), partners].any()
    # rows of rank 1 in a global batch of 4: offsets shift the "self" column
    assert forbidden_negatives(2, 2, 4).tolist() == [[False, False, True, False], [False, False, False, True]]
    # all samples share an id: fall back to "anything but itself"
    same = torch.zeros(3, dtype=torch.long)
    assert forbidden_negatives(0, 3, 3, same, same).sum(dim=1).tolist() == [1, 1, 1]


def test_hard_negatives_follow_similarity_and_never_pick_forbidden():
    sim = torch.tensor([[0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    forbidden = torch.tensor([[True, False, False, False], [False, True, False, True]])
    picks = hard_negatives(sim, forbidden, torch.tensor([0.5, 0.5]))
    assert picks[0] == 1  # nearly all the mass
    assert picks[1] in (0, 2)  # the hardest one is forbidden
    for u in torch.linspace(0, 0.999, 50):
        pick = hard_negatives(sim, forbidden, torch.stack([u, u]))
        assert not forbidden[torch.arange(2), pick].any()


@pytest.mark.parametrize("batch_size, group_size, offset, expected", [
    (6, 2, 0, [1, 0, 3, 2, 5, 4]),
    (6, 3, 6, [7, 8, 6, 10, 11, 9]),  # the next row of the group, cyclically; global columns from the rank's offset
    (4, 4, 0, [1, 2, 3, 0]),
])
def test_group_partners_are_the_next_row_of_each_group(batch_size, group_size, offset, expected):
    assert group_partners(batch_size, group_size, offset).tolist() == expected


def test_group_partners_refuse_a_batch_without_whole_groups():
    for batch_size, group_size in ((5, 2), (4, 1)):
        with pytest.raises(ValueError, match="no group partners"):
            group_partners(batch_size, group_size)
