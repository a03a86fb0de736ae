"""Image- and video-caption datasets that skip and count bad input instead of crashing.

Annotations that can never be used (a missing file, an empty caption after text processing, an eval
image or video that does not decode) are dropped when the dataset is built and counted in ``self.dropped``.
A training image or video that fails to decode at load time is replaced by the next readable sample, and
the sample carries ``num_skipped`` = 1 so the runner can count skips per epoch across workers and ranks.
"""
import logging
import os
from collections import defaultdict
from typing import Dict, List, Optional

import decord
from lavis.datasets.datasets.base_dataset import BaseDataset
from lavis.datasets.datasets.retrieval_datasets import RetrievalEvalDataset, VideoRetrievalEvalDataset
from PIL import Image

from lavis_glscl.processors import DECORD_ERRORS

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
            logging.warning("%s: skipped %d of %d annotations (%s)", type(self).__name__, len(self.annotation) - len(kept),
                            len(self.annotation), summary)
        self.annotation = kept
        super()._add_instance_ids(key)

    def _annotation_problem(self, ann: dict) -> Optional[str]:
        """The reason an annotation is unusable, or None.  Drops empty captions from a caption list."""
        captions = ann.get("caption")
        if isinstance(captions, list):
            ann["caption"] = [c for c in captions if self._usable_caption(c)]
            if len(ann["caption"]) < len(captions):
                self.dropped["empty caption"].extend([str(ann.get(self.media_key))] * (len(captions) - len(ann["caption"])))
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
    """

    max_replacements = 100
    batch_group_size = 1  # the builder's train_batch_group_size: batches hold runs of this many annotations

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths):
        super().__init__(vis_processor, text_processor, vis_root, ann_paths)
        self.image_ids: Dict[str, int] = {}
        for ann in self.annotation:
            self.image_ids.setdefault(self._group(ann), len(self.image_ids))

    def _group(self, ann: dict) -> str:
        return str(ann.get("image_id", ann[self.media_key]))

    def load_media(self, path: str):
        raise NotImplementedError

    def __getitem__(self, index):
        for offset in range(min(len(self), self.max_replacements)):
            ann = self.annotation[(index + offset) % len(self)]
            path = os.path.join(self.vis_root, ann[self.media_key])
            try:
                media = self.load_media(path)
            except LOAD_ERRORS as error:
                logging.warning("skipping unreadable %s %s (%s)", self.media_key, path, error)
                continue
            return {
                self.media_key: media,
                "text_input": self.text_processor(ann["caption"]),
                "image_id": self.image_ids[self._group(ann)],
                "instance_id": ann["instance_id"],
                "num_skipped": int(offset > 0),
            }
        raise RuntimeError(f"{self.max_replacements} consecutive unreadable files from index {index} in {self.vis_root}")

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
