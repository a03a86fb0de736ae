"""Image- and video-caption datasets that skip and count bad input instead of crashing.

Annotations that can never be used (a missing file, an empty caption after text processing, an eval
image or video that does not decode) are dropped when the dataset is built and counted in ``self.dropped``.
A training image or video that fails to decode at load time is replaced by the next readable sample, and
the sample carries ``num_skipped`` = 1 so the runner can count skips per epoch across workers and ranks.
"""
import logging
import os
import random
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import decord
from lavis.datasets.datasets.base_dataset import BaseDataset
from lavis.datasets.datasets.retrieval_datasets import RetrievalEvalDataset, VideoRetrievalEvalDataset
from PIL import Image

from lavis_glscl.processors import DECORD_ERRORS
from lavis_glscl.seeding import seeded_global_draws

# VideoDecodeError is a ValueError; PIL raises OSError/SyntaxError on truncated or foreign files.
LOAD_ERRORS = (OSError, ValueError, SyntaxError)


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def image_decodes(path: str) -> bool:
    try:
        load_rgb(path)
        return True
    except LOAD_ERRORS:
        return False


def video_decodes(path: str) -> bool:
    """The video opens and its first and last frames decode."""
    try:
        reader = decord.VideoReader(path, num_threads=1)
        reader.get_batch([0, len(reader) - 1])
        return len(reader) > 0
    except (*DECORD_ERRORS, *LOAD_ERRORS):
        return False


ABSENT = object()  # a candidate that is not there at all (a pair an index counts but a shard lacks): not a failure


def first_readable(load: Callable[[int], object], candidates: int, max_failures: int,
                   failure: Callable[[int], str]) -> dict:
    """The sample of the first candidate (offset 0, 1, ... below ``candidates``) that ``load(offset)`` reads, with
    ``num_skipped`` 1 when it is not the first: a bad sample is replaced by the next good one and counted, never
    dropped from the batch.  ``load`` returns a sample, None for one that does not read (logged by ``load``), or
    :data:`ABSENT`; after ``max_failures`` that do not read, ``RuntimeError(failure(count))``."""
    failures = 0
    for offset in range(candidates):
        sample = load(offset)
        if sample is ABSENT:
            continue
        if sample is not None:
            sample["num_skipped"] = int(offset > 0)
            return sample
        failures += 1
        if failures >= max_failures:
            break
    raise RuntimeError(failure(failures))


class AnnotationFilterMixin:
    """Drops unusable annotations before LAVIS's dataset classes index them.

    ``BaseDataset.__init__`` numbers the annotations right after loading them and before any subclass
    builds its indices; overriding that step is the one place to filter without re-implementing them.
    """

    media_key = "image"
    check_decodes = False

    @staticmethod
    def decodes(path: str) -> bool:
        return image_decodes(path)

    def _add_instance_ids(self, key="instance_id"):
        self.dropped: Dict[str, List[str]] = defaultdict(list)
        kept = []
        for ann in self.annotation:
            problem = self._annotation_problem(ann)
            if problem:
                self.dropped[problem].append(str(ann.get(self.media_key)))
            else:
                kept.append(ann)
        if self.dropped:
            summary = ", ".join(f"{len(items)} {reason}" for reason, items in sorted(self.dropped.items()))
            logging.warning("%s: skipped %d of %d annotations (%s)", type(self).__name__,
                            len(self.annotation) - len(kept), len(self.annotation), summary)
        self.annotation = kept
        super()._add_instance_ids(key)

    def _annotation_problem(self, ann: dict) -> Optional[str]:
        """The reason an annotation is unusable, or None.  Drops empty captions from a caption list."""
        captions = ann.get("caption")
        if isinstance(captions, list):
            ann["caption"] = [c for c in captions if self._usable_caption(c)]
            if len(ann["caption"]) < len(captions):
                empty = len(captions) - len(ann["caption"])
                self.dropped["empty caption"].extend([str(ann.get(self.media_key))] * empty)
            if not ann["caption"]:
                return "no usable caption"
        elif not self._usable_caption(captions):
            return "empty caption"
        path = os.path.join(self.vis_root, ann[self.media_key])
        if not os.path.isfile(path):
            return "missing file"
        if self.check_decodes and not self.decodes(path):
            return "unreadable file"
        return None

    def _usable_caption(self, caption) -> bool:
        if not isinstance(caption, str):
            return False
        return bool((self.text_processor(caption) if self.text_processor else caption).strip())


class CaptionPairDataset(AnnotationFilterMixin, BaseDataset):
    """Training pairs from a json list of ``{<media_key>: relative path, "caption": str[, "image_id": any]}``.

    Samples: the processed media under ``media_key``, ``text_input``, ``image_id`` (contiguous int; samples
    sharing it are never each other's negatives), ``instance_id`` and ``num_skipped``.

    With ``batch_group_size`` g > 1 the members of a group (annotations ``[k g, (k + 1) g)``, loaded one after the
    other into one batch) share their random augmentation: the same frame offsets, crop and flip.  Drawn
    independently, a clip and its time reversal differ more by their crops and frames than by their direction, and a
    tower trained on them does not learn order; with shared draws and the video processor's ``sampling: middle``
    they differ only in order (README, "Video that knows time").
    """

    max_replacements = 100
    batch_group_size = 1  # the builder's train_batch_group_size: batches hold runs of this many annotations

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths):
        super().__init__(vis_processor, text_processor, vis_root, ann_paths)
        self.image_ids: Dict[str, int] = {}
        for ann in self.annotation:
            self.image_ids.setdefault(self._group(ann), len(self.image_ids))
        self._group_draw = None  # (group index, augmentation seed) of the group being loaded

    def _group(self, ann: dict) -> str:
        return str(ann.get("image_id", ann[self.media_key]))

    def load_media(self, path: str):
        raise NotImplementedError

    def __getitem__(self, index):
        if self.batch_group_size == 1:
            return self._load(index)
        with seeded_global_draws(self._group_seed(index)):
            return self._load(index)

    def _group_seed(self, index: int) -> int:
        """The augmentation seed of ``index``'s group: drawn from the global stream by the group's first member."""
        group = index // self.batch_group_size
        if index % self.batch_group_size == 0 or self._group_draw is None or self._group_draw[0] != group:
            self._group_draw = (group, random.getrandbits(63))
        return self._group_draw[1]

    def _load(self, index: int) -> dict:
        def load(offset: int):
            ann = self.annotation[(index + offset) % len(self)]
            path = os.path.join(self.vis_root, ann[self.media_key])
            try:
                media = self.load_media(path)
            except LOAD_ERRORS as error:
                logging.warning("skipping unreadable %s %s (%s)", self.media_key, path, error)
                return None
            return {self.media_key: media, "text_input": self.text_processor(ann["caption"]),
                    "image_id": self.image_ids[self._group(ann)], "instance_id": ann["instance_id"]}

        return first_readable(load, len(self), self.max_replacements,
                              lambda failures: f"{failures} consecutive unreadable files from index {index} in "
                                               f"{self.vis_root}")

    def collater(self, samples):
        """LAVIS's collation, plus ``batch_group_size`` when batches come in groups (ITM's ``partner`` negatives)."""
        batch = super().collater(samples)
        if self.batch_group_size > 1:
            batch["batch_group_size"] = self.batch_group_size
        return batch


class ImageCaptionDataset(CaptionPairDataset):
    """Image-caption training pairs (``{"image", "caption"}``)."""

    def load_media(self, path: str):
        return self.vis_processor(load_rgb(path))


class VideoCaptionDataset(CaptionPairDataset):
    """Video-caption training pairs (``{"video", "caption"}``, WebVid- or MSR-VTT-style); the video processor
    receives the path, as LAVIS's video processors do."""

    media_key = "video"
    decodes = staticmethod(video_decodes)

    def load_media(self, path: str):
        return self.vis_processor(path)


class ImageRetrievalGallery(AnnotationFilterMixin, RetrievalEvalDataset):
    """LAVIS's retrieval evaluation format (``{"image", "caption": [str, ...]}``) with every image checked to
    decode up front: a gallery cannot replace an item without changing the metrics."""

    check_decodes = True


class VideoRetrievalGallery(AnnotationFilterMixin, VideoRetrievalEvalDataset):
    """LAVIS's video retrieval evaluation format (``{"video", "caption": [str, ...]}``), videos checked up front."""

    media_key = "video"
    check_decodes = True
    decodes = staticmethod(video_decodes)
