"""Can the video path tell which way something moves?  A supervised probe on the project's ``VisionTransformer``::

    python benchmarks/direction_probe.py [--shift 8] [--steps 600] [--seed 0]

Clips show one dot moving left, right, up or down by ``shift`` pixels per frame.  A left clip's frames are a right
clip's frames played backwards (and up's are down's), so the set of frames says only the axis: a model that ignores
frame order reaches 50 % on the four classes, one that reads order 100 %.  The probe is the ViT trained from scratch
with a linear head on the mean of its frame CLS tokens (the video feature GLSCL's ITC and pooler read), cross-entropy
on the direction; it prints the accuracy on held-out clips.
"""
import argparse
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from lavis_glscl.models.layers.vision_transformer import VisionTransformer

DIRECTIONS = ("left", "right", "up", "down")
STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy) per frame, y grows downwards


@dataclass
class DotClips:
    """How the probe's clips look: ``num_frames`` frames of ``image_size`` px, a dot of ``radius`` px moving
    ``shift`` px per frame, Gaussian pixel noise of ``noise`` (the dot is 1, the background 0, before noise)."""

    image_size: int = 32
    num_frames: int = 4
    shift: int = 8
    radius: float = 3.0
    noise: float = 0.05

    def sample(self, count: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """``count`` clips ``[N, F, 3, S, S]`` and their direction indices ``[N]`` into :data:`DIRECTIONS`."""
        size, frames = self.image_size, self.num_frames
        travel = self.shift * (frames - 1)
        if travel + 2 * self.radius > size:
            raise ValueError(f"a dot of radius {self.radius} moving {self.shift} px x {frames - 1} frames leaves a "
                             f"{size} px frame")
        labels = torch.randint(len(DIRECTIONS), (count,), generator=generator)
        # the path along the axis of motion starts anywhere it fits; a reversed start keeps left/right symmetric
        start = self.radius + torch.rand(count, generator=generator) * (size - 2 * self.radius - travel)
        across = self.radius + torch.rand(count, generator=generator) * (size - 2 * self.radius)
        steps = torch.tensor([STEPS[name] for name in DIRECTIONS], dtype=torch.float32)[labels]  # [N, 2]
        backwards = (steps.sum(dim=1) < 0).float()
        time_index = torch.arange(frames, dtype=torch.float32)
        along = start[:, None] + self.shift * (time_index[None] + backwards[:, None] * (frames - 1 - 2 * time_index))
        horizontal = steps[:, 0].abs()[:, None]
        centre_x = horizontal * along + (1 - horizontal) * across[:, None]  # [N, F]
        centre_y = (1 - horizontal) * along + horizontal * across[:, None]
        pixels = torch.arange(size, dtype=torch.float32) + 0.5
        distance = ((pixels[None, None, None, :] - centre_x[..., None, None]) ** 2
                    + (pixels[None, None, :, None] - centre_y[..., None, None]) ** 2)  # [N, F, S, S]
        dot = (distance <= self.radius ** 2).float()
        clips = dot[:, :, None].expand(-1, -1, 3, -1, -1)
        clips = clips + self.noise * torch.randn(clips.shape, generator=generator)
        return clips, labels


class DirectionProbe(nn.Module):
    """The ViT and a linear head over the mean of its ``F`` frame CLS tokens: ``[B, F, 3, S, S]`` → ``[B, 4]``."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(vit.width, len(DIRECTIONS))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        frames = clips.shape[1]
        return self.head(self.vit(clips)[:, :frames].mean(dim=1))


@dataclass
class ProbeResult:
    accuracy: float  # percent, on the held-out clips
    losses: List[float]
    seconds: float


def train_direction_probe(probe: DirectionProbe, clips: DotClips, steps: int = 600, batch_size: int = 32,
                          lr: float = 1e-3, num_test: int = 512, seed: int = 0) -> ProbeResult:
    """Train ``probe`` (AdamW, constant ``lr``) on fresh clips every step; its accuracy on ``num_test`` clips drawn
    from a separate generator."""
    train_generator = torch.Generator().manual_seed(seed)
    test_clips, test_labels = clips.sample(num_test, torch.Generator().manual_seed(seed + 1_000_003))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.01)
    probe.train()
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        batch, labels = clips.sample(batch_size, train_generator)
        loss = F.cross_entropy(probe(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return ProbeResult(direction_accuracy(probe, test_clips, test_labels), losses, time.perf_counter() - start)


@torch.no_grad()
def direction_accuracy(probe: DirectionProbe, clips: torch.Tensor, labels: torch.Tensor,
                       batch_size: int = 128) -> float:
    """Percent of ``clips`` whose arg-max direction is their label."""
    probe.eval()
    predictions = torch.cat([probe(clips[i:i + batch_size]).argmax(dim=1) for i in range(0, len(clips), batch_size)])
    return 100.0 * float((predictions == labels).float().mean())


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--shift", type=int, default=8, help="pixels the dot moves per frame")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> ProbeResult:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    vit = VisionTransformer(image_size=args.image_size, patch_size=args.patch_size, width=args.width,
                            layers=args.layers, heads=args.heads, max_frames=args.frames)
    clips = DotClips(image_size=args.image_size, num_frames=args.frames, shift=args.shift)
    result = train_direction_probe(DirectionProbe(vit), clips, args.steps, args.batch_size, args.lr, seed=args.seed)
    print(f"shift {args.shift} px/frame, patch {args.patch_size}: {result.accuracy:.1f} % of held-out clips "
          f"(chance 25 %, frame order ignored 50 %), last loss {result.losses[-1]:.3f}, {result.seconds:.0f} s")
    return result


if __name__ == "__main__":
    main()
