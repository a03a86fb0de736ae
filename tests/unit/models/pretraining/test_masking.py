"""Masks: exact counts and hand-picked draws."""
import torch

from lavis_glscl.models.pretraining.masking import (
    keep_patch_indices,
    lowest_noise_mask,
    mgsc_text_mask,
    mlm_mask,
    patch_token_mask,
)


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
