"""ALIGN-BENCH scores: how much of a text query's cross-attention over the image patches lands inside the regions
of the image that its words name.  Pure functions on tensors; :mod:`lavis_glscl.align_bench.task` feeds them.

Regions come as boxes ``[x1, y1, x2, y2]`` (image pixels, ``x2`` and ``y2`` exclusive) or boolean pixel masks
``[H, W]``.  They are brought to the ``[h, w]`` patch grid by exact area averaging: a patch's weight is the
fraction of its area that the region covers.  Fractional weights, rather than a 0.5 threshold or the released
scripts' bicubic resize, so that uniform attention scores exactly the region's share of the image (the chance
level reported beside every score) and a region smaller than half a patch still counts.

The score is ``sum(attention * weight) / sum(attention)``: the attention mass inside the region over the total.
"""
import re
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

Region = Mapping[str, Any]  # {"bbox_mask": [x1, y1, x2, y2], "pixel_mask": bool [H, W]}
Annotation = Mapping[str, Sequence[Region]]  # {phrase: its regions}

SCORE_NAMES = ("global_box", "global_pixel", "local_box", "local_pixel")
UNIFORM_PREFIX = "uniform_"
# The text CLS (<s>) token, first in BERT and RoBERTa tokenizations, is the global query.
GLOBAL_QUERY_INDEX = 0
# A box over this share of the image annotates the whole scene, which says nothing about where a caption looks.
MAX_BOX_FRACTION = 0.9


def cell_overlap(num_pixels: int, num_cells: int) -> torch.Tensor:
    """``[num_cells, num_pixels]`` float64: the share of each of ``num_cells`` equal cells that each pixel covers
    (each row sums to 1; cell edges may fall inside a pixel)."""
    cell = num_pixels / num_cells
    edges = torch.arange(num_cells + 1, dtype=torch.float64) * cell
    pixels = torch.arange(num_pixels, dtype=torch.float64)
    overlap = torch.minimum(edges[1:, None], pixels + 1) - torch.maximum(edges[:-1, None], pixels)
    return overlap.clamp(min=0) / cell


def grid_weights(mask: torch.Tensor, grid_shape: Tuple[int, int]) -> torch.Tensor:
    """Pixel mask ``[H, W]`` → ``[h, w]`` float64 patch weights: the fraction of each patch the mask covers."""
    rows = cell_overlap(mask.shape[0], grid_shape[0])
    cols = cell_overlap(mask.shape[1], grid_shape[1])
    return rows @ mask.to(torch.float64) @ cols.T


def box_mask(box: Sequence[float], height: int, width: int) -> torch.Tensor:
    """bool ``[H, W]``: the pixels ``x1 <= x < x2``, ``y1 <= y < y2`` of a box rounded to whole pixels, clipped to
    the image."""
    x1, y1, x2, y2 = (max(int(round(float(v))), 0) for v in box)
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


def pixel_mask(region: Region, height: int, width: int) -> torch.Tensor:
    """bool ``[H, W]`` from a region's ``pixel_mask``, which must have the image's size."""
    mask = torch.from_numpy(np.asarray(region["pixel_mask"], dtype=bool))
    if tuple(mask.shape) != (height, width):
        raise ValueError(f"pixel mask of shape {tuple(mask.shape)} for an image of {height}x{width} pixels")
    return mask


def box_area_fraction(box: Sequence[float], height: int, width: int) -> float:
    return float(box_mask(box, height, width).double().mean())


def union(masks: Iterable[torch.Tensor], height: int, width: int) -> torch.Tensor:
    """bool ``[H, W]``: pixels inside any of ``masks`` (none: an empty mask)."""
    result = torch.zeros(height, width, dtype=torch.bool)
    for mask in masks:
        result |= mask
    return result


def region_masks(regions: Sequence[Region], height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The union of ``regions``' boxes and the union of their pixel masks, each bool ``[H, W]``."""
    boxes = union((box_mask(r["bbox_mask"], height, width) for r in regions), height, width)
    pixels = union((pixel_mask(r, height, width) for r in regions), height, width)
    return boxes, pixels


def global_region_masks(annotation: Annotation, height: int, width: int,
                        max_box_fraction: float = MAX_BOX_FRACTION) -> Tuple[torch.Tensor, torch.Tensor]:
    """Box and pixel unions of every phrase's regions, leaving out regions whose box covers more than
    ``max_box_fraction`` of the image.  The box decides for the pixel mask too, so that both variants score the
    same annotations."""
    kept = [region for regions in annotation.values() for region in regions
            if box_area_fraction(region["bbox_mask"], height, width) <= max_box_fraction]
    return region_masks(kept, height, width)


def region_attention_score(attention: torch.Tensor, region: torch.Tensor) -> float:
    """Attention mass inside ``region`` over the total mass.

    ``attention``: non-negative ``[N]`` (row-major) or ``[h, w]`` over the patch grid; ``region``: ``[h, w]`` patch
    weights in [0, 1], bool or fractional (:func:`grid_weights`).
    """
    weights = region.to(torch.float64)
    attention = attention.to(torch.float64).reshape(weights.shape)
    return float((attention * weights).sum() / attention.sum())


class UnscorablePhrase(ValueError):
    """A phrase that has no query: ``reason`` says why (the task counts phrases by it)."""

    def __init__(self, reason: str, phrase: str):
        super().__init__(f"{reason}: {phrase!r}")
        self.reason = reason


def find_phrase(caption: str, phrase: str) -> Optional[Tuple[int, int]]:
    """Character span ``[start, end)`` of the first case-insensitive, whole-word occurrence of ``phrase`` in
    ``caption`` (any whitespace between its words), or None."""
    words = phrase.split()
    if not words:
        return None
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(word) for word in words) + r"(?!\w)"
    match = re.search(pattern, caption, flags=re.IGNORECASE)
    return match.span() if match else None


def overlapping_tokens(offsets: Sequence[Sequence[int]], caption: str, span: Tuple[int, int]) -> List[int]:
    """Indices of the tokens whose characters overlap ``span``, punctuation-only tokens left out.

    ``offsets``: ``[L]`` character spans ``(start, end)`` into ``caption``, as fast tokenizers return them with
    ``return_offsets_mapping=True``.  Because they point into the caption itself, every sub-token of the phrase's
    words is found whatever marks word pieces (WordPiece ``##``, BPE ``Ġ``).  Special and padding tokens have
    empty spans; spans are trimmed of whitespace, which byte-level BPE includes unless it trims offsets.
    """
    start, end = span
    indices = []
    for index, (token_start, token_end) in enumerate(offsets):
        piece = caption[token_start:token_end]
        token_start += len(piece) - len(piece.lstrip())
        token_end -= len(piece) - len(piece.rstrip())
        if token_start < end and token_end > start and any(c.isalnum() for c in piece):
            indices.append(index)
    return indices


def phrase_tokens(offsets: Sequence[Sequence[int]], caption: str, phrase: str) -> List[int]:
    """The token indices whose attention maps sum to ``phrase``'s query (see :func:`overlapping_tokens`);
    raises :class:`UnscorablePhrase` when the phrase is not in the caption or truncation removed its tokens."""
    span = find_phrase(caption, phrase)
    if span is None:
        raise UnscorablePhrase("phrase not in caption", phrase)
    tokens = overlapping_tokens(offsets, caption, span)
    if not tokens:
        raise UnscorablePhrase("phrase truncated away", phrase)
    return tokens


def score_image(attention: torch.Tensor, offsets: Sequence[Sequence[int]], caption: str, annotation: Annotation,
                image_size: Tuple[int, int], max_box_fraction: float = MAX_BOX_FRACTION
                ) -> Tuple[Dict[str, List[float]], Counter]:
    """The scores of one image-caption pair.

    ``attention``: ``[L, h, w]`` each text token's attention over the patch grid; ``offsets``: ``[L]`` the tokens'
    character spans in ``caption``; ``annotation``: ``{phrase: regions}``; ``image_size``: ``(H, W)`` of the image
    the regions annotate.

    Returns ``{name: [score, ...]}`` for the :data:`SCORE_NAMES` (global: at most one score, local: one per scored
    phrase) and their ``uniform_`` baselines (the scores of uniform attention on the same regions), and the
    count of what could not be scored, by reason.
    """
    height, width = image_size
    grid = tuple(attention.shape[1:])
    uniform = torch.ones(grid)
    scores: Dict[str, List[float]] = {name: [] for base in SCORE_NAMES for name in (base, UNIFORM_PREFIX + base)}
    skipped: Counter = Counter()

    def add(name: str, query: torch.Tensor, mask: torch.Tensor) -> None:
        weights = grid_weights(mask, grid)
        if not weights.any():
            skipped[f"empty region ({name})"] += 1
            return
        scores[name].append(region_attention_score(query, weights))
        scores[UNIFORM_PREFIX + name].append(region_attention_score(uniform, weights))

    boxes, pixels = global_region_masks(annotation, height, width, max_box_fraction)
    add("global_box", attention[GLOBAL_QUERY_INDEX], boxes)
    add("global_pixel", attention[GLOBAL_QUERY_INDEX], pixels)
    for phrase, regions in annotation.items():
        try:
            query = attention[phrase_tokens(offsets, caption, phrase)].sum(dim=0)
        except UnscorablePhrase as error:
            skipped[error.reason] += 1
            continue
        boxes, pixels = region_masks(regions, height, width)
        add("local_box", query, boxes)
        add("local_pixel", query, pixels)
    return scores, skipped


def summarize(per_image: Sequence[Mapping[str, List[float]]]) -> Dict[str, float]:
    """Benchmark scores in percent: the mean over images of each image's mean (the local scores average over an
    image's phrases first); images without a score of some kind do not count for it.  Each score sits beside its
    ``uniform_`` baseline; ``mean`` averages the four scores, ``uniform_mean`` the four baselines."""
    metrics = {}
    for base in SCORE_NAMES:
        for name in (base, UNIFORM_PREFIX + base):
            image_means = [sum(values) / len(values) for scores in per_image if (values := scores[name])]
            if not image_means:
                raise ValueError(f"no image had a {base} region to score")
            metrics[name] = 100.0 * sum(image_means) / len(image_means)
    metrics["mean"] = sum(metrics[name] for name in SCORE_NAMES) / len(SCORE_NAMES)
    metrics[UNIFORM_PREFIX + "mean"] = sum(metrics[UNIFORM_PREFIX + name] for name in SCORE_NAMES) / len(SCORE_NAMES)
    return metrics
