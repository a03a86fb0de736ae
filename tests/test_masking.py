"""Masks and ITM negatives: exact counts, hand-picked draws, and world-size invariance of the noise."""
import torch

from lavis_glscl.models.pretraining.masking import (
    keep_patch_indices,
    lowest_noise_mask,
    mgsc_text_mask,
    mlm_mask,
    patch_token_mask,
)
from lavis_glscl.models.pretraining.negatives import forbidden_negatives, hard_negatives, negative_rows, random_partners
from lavis_glscl.models.pretraining.randomness import StepRandomness


def test_keep_patch_indices_keeps_the_lowest_noise_fifth_sorted():
    noise = torch.tensor([[0.9, 0.1, 0.8, 0.05, 0.7, 0.6, 0.5, 0.4, 0.3, 0.95]])
    assert keep_patch_indices(noise, 0.2).tolist() == [[1, 3]]
    many = torch.rand(5, 324)
    kept = keep_patch_indices(many, 0.2)
    assert kept.shape == (5, 64)  # int(324 * 0.2), as the released code keeps
    assert all(len(set(row)) == 64 and row == sorted(row) for row in kept.tolist())
    assert keep_patch_indices(torch.rand(2, 3), 0.2).shape == (2, 1)  # never fewer than one patch


def test_patch_token_mask_masks_exactly_thirty_percent():
    mask = patch_token_mask(torch.rand(6, 324), 0.3)
    assert mask.sum(dim=1).tolist() == [97] * 6
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.0]])
    assert patch_token_mask(noise, 0.3).nonzero()[:, 1].tolist() == [1, 3, 9]


def test_lowest_noise_mask_respects_allowed_positions_and_counts():
    noise = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    allowed = torch.tensor([[False, True, True, True], [True, True, False, False]])
    mask = lowest_noise_mask(noise, allowed, torch.tensor([2, 5]))
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]


def test_mlm_mask_counts_and_80_10_10_actions():
    ids = torch.tensor([[101, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 102, 0, 0]])
    maskable = (ids != 101) & (ids != 102) & (ids != 0)  # 14 maskable tokens -> round(2.1) = 2 selected
    select = torch.linspace(1, 0, ids.shape[1]).unsqueeze(0)  # lowest noise at the end: positions 15.. are not maskable
    action = torch.full_like(select, 0.5)
    action[0, 14] = 0.85  # second selected position -> random token
    random_ids = torch.full_like(ids, 999)
    masked, labels = mlm_mask(ids, maskable, select, action, random_ids, mask_token_id=103, probability=0.15)
    assert (labels != -100).nonzero()[:, 1].tolist() == [13, 14]
    assert labels[0, 13] == 23 and labels[0, 14] == 24
    assert masked[0, 13] == 103 and masked[0, 14] == 999
    assert torch.equal(masked[0, :13], ids[0, :13]) and torch.equal(masked[0, 15:], ids[0, 15:])
    action[0, 14] = 0.95  # -> unchanged but still predicted
    masked, labels = mlm_mask(ids, maskable, select, action, random_ids, 103, 0.15)
    assert masked[0, 14] == 24 and labels[0, 14] == 24


def test_mlm_mask_selects_at_least_one_token_and_none_when_nothing_is_maskable():
    ids = torch.tensor([[101, 7, 102], [101, 102, 0]])
    maskable = torch.tensor([[False, True, False], [False, False, False]])
    noise = torch.rand(2, 3)
    masked, labels = mlm_mask(ids, maskable, noise, torch.zeros(2, 3), torch.zeros_like(ids), 103, 0.15)
    assert (labels[0] != -100).sum() == 1 and (labels[1] != -100).sum() == 0
    assert masked[0, 1] == 103


def test_mgsc_text_mask_with_replacement_picks_the_drawn_positions():
    maskable = torch.tensor([[False, True, True, True, True, True, False, False]])  # 5 maskable -> int(2)+1 = 3 draws
    noise = torch.zeros(1, 8)
    noise[0, :3] = torch.tensor([0.1, 0.5, 0.95])  # draws pick maskable positions 0, 2, 4 -> tokens 1, 3, 5
    noise[0, 3:] = 0.3  # unused draws
    mask = mgsc_text_mask(maskable, noise, 0.4, with_replacement=True)
    assert mask.nonzero()[:, 1].tolist() == [1, 3, 5]
    repeated = noise.clone()
    repeated[0, :3] = torch.tensor([0.1, 0.1, 0.5])  # a repeated draw masks fewer distinct positions
    assert mgsc_text_mask(maskable, repeated, 0.4).nonzero()[:, 1].tolist() == [1, 3]


def test_mgsc_text_mask_without_replacement_is_exact():
    maskable = torch.zeros(4, 50, dtype=torch.bool)
    lengths = [48, 10, 1, 0]
    for row, n in enumerate(lengths):
        maskable[row, 1:1 + n] = True
    mask = mgsc_text_mask(maskable, torch.rand(4, 50), 0.4, with_replacement=False)
    assert mask.sum(dim=1).tolist() == [int(48 * 0.4) + 1, int(10 * 0.4) + 1, 1, 0]
    assert not (mask & ~maskable).any()
    with_replacement = mgsc_text_mask(maskable, torch.rand(4, 50), 0.4, with_replacement=True)
    assert not (with_replacement & ~maskable).any()
    assert all(1 <= c <= int(n * 0.4) + 1 for c, n in zip(with_replacement.sum(dim=1).tolist()[:3], lengths[:3]))


def test_step_randomness_rows_do_not_depend_on_world_size():
    single = StepRandomness(seed=3, epoch=1, iteration=5, batch_size=6)
    full = single.uniform(4)
    full_ints = single.integers(100, 2)
    for rank in range(3):
        part = StepRandomness(seed=3, epoch=1, iteration=5, batch_size=2, rank=rank, world_size=3)
        assert torch.equal(part.uniform(4), full[2 * rank:2 * rank + 2])
        assert torch.equal(part.integers(100, 2), full_ints[2 * rank:2 * rank + 2])
    assert not torch.equal(StepRandomness(3, 1, 6, 6).uniform(4), full)


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
