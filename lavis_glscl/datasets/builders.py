"""Dataset builders registered with LAVIS: local image- and video-caption data and the embedded shapes sets.

Both read local files only: the download steps of ``BaseDatasetBuilder`` become checks that fail with
the missing path (or, for the demo set, generate it into the cache on rank 0).
"""
import json
import os
from pathlib import Path
from typing import Optional

from lavis.common.registry import registry
from lavis.common.utils import get_cache_path
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder

from lavis_glscl.datasets import shapes
from lavis_glscl.datasets.datasets import (ImageCaptionDataset, ImageRetrievalGallery, VideoCaptionDataset,
                                           VideoRetrievalGallery)
from lavis_glscl.paths import config_path


def storage_list(paths):
    """A ``storage`` entry (one path or a list) as a list."""
    return [paths] if isinstance(paths, str) else list(paths)


def absolute_storage(path: str) -> str:
    """LAVIS's rule: a relative storage path lives under ``cache_root``."""
    return path if os.path.isabs(path) else get_cache_path(path)


class LocalFilesBuilder(BaseDatasetBuilder):
    """A builder whose annotations and media are already on disk: missing paths fail before any training.

    ``splits: [train, ...]`` in its config builds only those splits (a yaml merge cannot delete a default
    split, and LAVIS evaluates one dataset per split).  ``train_batch_group_size: g`` keeps each run of g
    consecutive training annotations in one batch (``lavis_glscl.datasets.loaders``).
    """

    annotation_kind = "file"  # or "directory" (a split stored as a folder of files, as ALIGN-BENCH's pickles)

    def build(self):
        datasets = super().build()
        group_size = int(self.config.get("train_batch_group_size", 1))
        if "train" in datasets and group_size > 1:
            if getattr(datasets["train"], "dropped", None):
                raise ValueError("train_batch_group_size needs every training annotation usable; "
                                 f"dropped: {dict(datasets['train'].dropped)}")
            datasets["train"].batch_group_size = group_size
        return datasets

    def __init__(self, cfg=None):
        super().__init__(cfg)
        wanted = self.config.get("splits")
        if wanted is not None:
            annotations = self.config.build_info.annotations
            unknown = set(wanted) - set(annotations)
            if unknown:
                raise KeyError(f"splits {sorted(unknown)} have no annotations; configured: {sorted(annotations)}")
            for split in [s for s in annotations if s not in wanted]:
                del annotations[split]

    def root_storage_under(self, root: Path, media_root: Optional[Path] = None) -> None:
        """Make the config's relative storage paths relative to ``root`` (annotations) and ``media_root``
        (media; default ``root``): for sets generated or converted into a directory of their own."""
        info = self.config.build_info
        for split in info.annotations:
            info.annotations[split].storage = [str(root / p) for p in storage_list(info.annotations[split].storage)]
        media = info.get(self.data_type)
        media.storage = str((media_root or root) / media.storage)

    def _download_ann(self):
        exists = os.path.isfile if self.annotation_kind == "file" else os.path.isdir
        for split, info in self.config.build_info.annotations.items():
            for path in storage_list(info.storage):
                if not exists(absolute_storage(path)):
                    raise FileNotFoundError(f"{split} annotation {self.annotation_kind} {absolute_storage(path)} "
                                            "does not exist")

    def _download_vis(self):
        storage = absolute_storage(self.config.build_info.get(self.data_type).storage)
        if not os.path.isdir(storage):
            raise FileNotFoundError(f"{self.data_type} directory {storage} does not exist")


@registry.register_builder("glscl_image_text")
class ImageTextPairsBuilder(LocalFilesBuilder):
    """Training pairs (json list of ``{image, caption}``); val/test splits in LAVIS's retrieval eval format."""

    train_dataset_cls = ImageCaptionDataset
    eval_dataset_cls = ImageRetrievalGallery
    DATASET_CONFIG_DICT = {"default": config_path("datasets/glscl_image_text/defaults.yaml"),
                           "coco": config_path("datasets/glscl_image_text/coco.yaml"),
                           "flickr30k": config_path("datasets/glscl_image_text/flickr30k.yaml")}


@registry.register_builder("glscl_video_text")
class VideoTextPairsBuilder(LocalFilesBuilder):
    """Video training pairs (json list of ``{video, caption}``, WebVid-style); val/test splits in LAVIS's video
    retrieval format (``{video, caption: [str, ...]}``, as MSR-VTT's ``retrieval_{split}.json``)."""

    train_dataset_cls = VideoCaptionDataset
    eval_dataset_cls = VideoRetrievalGallery
    DATASET_CONFIG_DICT = {"default": config_path("datasets/glscl_video_text/defaults.yaml"),
                           "msrvtt": config_path("datasets/glscl_video_text/msrvtt.yaml")}


class ShapesBuilderMixin:
    """A shapes set (``lavis_glscl.datasets.shapes``) generated into the cache on first use, on rank 0.

    Relative storage paths in its config are relative to the generated set.
    """

    kind = "images"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.generator_options = {"kind": self.kind, **self.config.get("generator", {})}
        self.root = shapes.dataset_dir(**self.generator_options)
        self.root_storage_under(self.root)

    def _download_data(self):
        shapes.ensure_generated(self.root, **self.generator_options)
        super()._download_data()

    def build(self):
        """Also attach each eval split's one-word (images) or direction-only (videos) caption pairs."""
        datasets = super().build()
        for split, dataset in datasets.items():
            pairs_file = self.root / f"{split}_hard_pairs.json"
            if split != "train" and pairs_file.is_file() and not getattr(dataset, "dropped", None):
                dataset.hard_pairs = json.loads(pairs_file.read_text())
        return datasets


@registry.register_builder("shapes_demo")
class ShapesDemoBuilder(ShapesBuilderMixin, ImageTextPairsBuilder):
    """The embedded shapes image set."""

    DATASET_CONFIG_DICT = {"default": config_path("datasets/shapes_demo/defaults.yaml")}


@registry.register_builder("shapes_video_demo")
class ShapesVideoDemoBuilder(ShapesBuilderMixin, VideoTextPairsBuilder):
    """The embedded shapes video set (objects moving in one of four directions)."""

    kind = "videos"
    DATASET_CONFIG_DICT = {"default": config_path("datasets/shapes_video_demo/defaults.yaml")}
