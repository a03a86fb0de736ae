"""The direction probe of ``benchmarks/direction_probe.py``: the video path carries frame order, so a linear probe on
the mean frame CLS learns which way a dot moves."""
import pytest
import torch
from direction_probe import DirectionProbe, DotClips, direction_accuracy, train_direction_probe

from lavis_glscl.models.layers.vision_transformer import VisionTransformer


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two that contend with other jobs; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_direction_probe_learns_which_way_a_dot_moves_from_the_mean_frame_cls(one_thread):
    """The probe: the project's ViT (3 layers, width 64, 32 px, 8 px patches, 4 frames) with a linear head on
    the mean frame CLS, trained on a dot moving one patch per frame.  Frame sets say only the axis (50 %): above 90 %
    needs the order of the frames."""
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, width=64, layers=3, heads=4, max_frames=4)
    result = train_direction_probe(DirectionProbe(vit), DotClips(shift=8), steps=200, batch_size=32, lr=1e-3, seed=0)
    assert result.accuracy >= 90.0, result.accuracy


def test_probe_clips_are_time_reversals_across_opposite_directions():
    """Left clips are right clips played backwards (and up/down likewise), so only frame order separates them."""
    clips, labels = DotClips(noise=0.0).sample(400, torch.Generator().manual_seed(3))
    centroid = lambda c: (c[:, :, 0] * torch.arange(32.0)).sum(dim=(-1, -2)) / c[:, :, 0].sum(dim=(-1, -2))  # noqa
    x = centroid(clips)  # [N, F] column centroid of the dot in each frame
    y = centroid(clips.transpose(-1, -2))
    steps_x, steps_y = x.diff(dim=1).mean(dim=1), y.diff(dim=1).mean(dim=1)
    expected = {0: (-8, 0), 1: (8, 0), 2: (0, -8), 3: (0, 8)}  # left, right, up, down; y grows downwards
    for label, (dx, dy) in expected.items():
        rows = labels == label
        assert rows.sum() > 50
        torch.testing.assert_close(steps_x[rows], torch.full_like(steps_x[rows], float(dx)), atol=0.6, rtol=0)
        torch.testing.assert_close(steps_y[rows], torch.full_like(steps_y[rows], float(dy)), atol=0.6, rtol=0)
    # the frames' positions along the motion have one distribution whichever way the dot goes
    left, right = x[labels == 0].flip(1), x[labels == 1]
    assert abs(left.mean() - right.mean()) < 0.5 and (left[:, 0] - right[:, 0].mean()).abs().max() < 3


def test_probe_accuracy_counts_argmax_hits():
    probe = DirectionProbe(VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=2, max_frames=4))
    clips, labels = DotClips().sample(10, torch.Generator().manual_seed(0))
    with torch.no_grad():
        predictions = probe(clips).argmax(dim=1)
    assert direction_accuracy(probe, clips, labels, batch_size=3) == pytest.approx(
        100.0 * (predictions == labels).float().mean().item())
