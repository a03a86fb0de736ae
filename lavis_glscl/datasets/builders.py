"""Dataset builders registered with LAVIS: local image- and video-caption data and the embedded shapes sets.

Both read local files only: the download steps of ``BaseDatasetBuilder`` become checks that fail with
the missing path (or, for the demo set, generate it into the cache on rank 0).  Type ``wds`` of the pair
builders streams the train split from webdataset shards (:mod:`lavis_glscl.datasets.shards`).
"""
import json
import os
from pathlib import Path
from typing import Optional

from lavis.common.registry import registry
from lavis.common.utils import get_cache_path
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder
from omegaconf import OmegaConf

from lavis_glscl.datasets import shapes
from lavis_glscl.datasets.datasets import (
    ImageCaptionDataset,
    ImageRetrievalGallery,
    VideoCaptionDataset,
    VideoRetrievalGallery,
)
from lavis_glscl.datasets.shard_files import load_shard_list, shard_paths
from lavis_glscl.datasets.shards import ShardedCaptionPairs, ShardedVideoCaptionPairs
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


class ShardedTrainSplitMixin:
    """With ``build_info.shards`` (type ``wds``) the train split streams from shards: ``shards.storage`` is the
    ``index.json`` of ``make_shards``, a brace pattern or a list of tar paths (relative: under ``cache_root``), and
    ``shards.shuffle_shards`` how many shards a reader shuffles together.  Other splits read local files as before.

    Only the index or the shard files are checked before training (on rank 0), never the samples inside.
    """

    shard_dataset_cls = ShardedCaptionPairs

    @property
    def shard_storage(self):
        shards = self.config.build_info.get("shards")
        if shards is None:
            return None
        if OmegaConf.is_missing(shards, "storage") or shards.get("storage") is None:
            raise ValueError("build_info.shards.storage is not set: give the index.json written by "
                             "lavis_glscl.tools.make_shards, a brace pattern or a list of .tar paths")
        storage = shards.storage
        return absolute_storage(storage) if isinstance(storage, str) else [absolute_storage(p) for p in storage]

    def _download_ann(self):
        storage = self.shard_storage
        if storage is not None:
            paths = [storage] if isinstance(storage, str) and storage.endswith(".json") else shard_paths(storage)
            missing = [path for path in paths if not os.path.isfile(path)]
            if missing:
                raise FileNotFoundError(f"{len(missing)} of {len(paths)} shard files do not exist, e.g. {missing[:3]}")
            if "train" in self.config.build_info.annotations:
                raise ValueError("build_info.shards and build_info.annotations.train both give the train split")
        super()._download_ann()

    def _download_vis(self):
        if self.shard_storage is None or self.config.build_info.annotations:
            super()._download_vis()  # the media of the local-file splits

    def build(self):
        datasets = super().build()
        storage = self.shard_storage
        if storage is not None:
            datasets["train"] = self.shard_dataset_cls(
                load_shard_list(storage), vis_processor=self.vis_processors["train"],
                text_processor=self.text_processors["train"],
                shuffle_shards=int(self.config.build_info.shards.get("shuffle_shards", 4)))
        return datasets


@registry.register_builder("glscl_image_text")
class ImageTextPairsBuilder(ShardedTrainSplitMixin, LocalFilesBuilder):
    """Training pairs (json list of ``{image, caption}``); val/test splits in LAVIS's retrieval eval format."""

    train_dataset_cls = ImageCaptionDataset
    eval_dataset_cls = ImageRetrievalGallery
    DATASET_CONFIG_DICT = {"default": config_path("datasets/glscl_image_text/defaults.yaml"),
                           "coco": config_path("datasets/glscl_image_text/coco.yaml"),
                           "flickr30k": config_path("datasets/glscl_image_text/flickr30k.yaml"),
                           "wds": config_path("datasets/glscl_image_text/wds.yaml")}


@registry.register_builder("glscl_video_text")
class VideoTextPairsBuilder(ShardedTrainSplitMixin, LocalFilesBuilder):
    """Video training pairs (json list of ``{video, caption}``, WebVid-style, or shards of ``mp4`` + ``txt``);
    val/test splits in LAVIS's video retrieval format (``{video, caption: [str, ...]}``, as MSR-VTT's
    ``retrieval_{split}.json``)."""

    train_dataset_cls = VideoCaptionDataset
    eval_dataset_cls = VideoRetrievalGallery
    shard_dataset_cls = ShardedVideoCaptionPairs
    DATASET_CONFIG_DICT = {"default": config_path("datasets/glscl_video_text/defaults.yaml"),
                           "msrvtt": config_path("datasets/glscl_video_text/msrvtt.yaml"),
                           "wds": config_path("datasets/glscl_video_text/wds.yaml")}


class ShapesBuilderMixin:
    """A shapes set (``lavis_glscl.datasets.shapes``) generated into the cache on first use, on rank 0.

    Relative storage paths in its config are relative to the generated set.
    """

    kind = "images"

    def __init__(self, cfg=None):
        if cfg is not None and OmegaConf.select(cfg, "generator.num_val"):  # a validation split adds its annotations
            cfg.build_info.annotations.val = {"storage": "val.json"}
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
