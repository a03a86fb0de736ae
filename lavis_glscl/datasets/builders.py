"""Dataset builders registered with LAVIS: local image-caption data and the embedded shapes demo set.

Both read local files only: the download steps of ``BaseDatasetBuilder`` become checks that fail with
the missing path (or, for the demo set, generate it into the cache on rank 0).
"""
import os

from lavis.common.registry import registry
from lavis.common.utils import get_cache_path
from lavis.datasets.builders.base_dataset_builder import BaseDatasetBuilder

from lavis_glscl.datasets import shapes
from lavis_glscl.datasets.datasets import ImageCaptionDataset, ImageRetrievalEvalDataset
from lavis_glscl.paths import config_path


def _as_list(paths):
    return [paths] if isinstance(paths, str) else list(paths)


def _absolute(path: str) -> str:
    """LAVIS's rule: a relative storage path lives under ``cache_root``."""
    return path if os.path.isabs(path) else get_cache_path(path)


class LocalFilesBuilder(BaseDatasetBuilder):
    """A builder whose annotations and media are already on disk: missing paths fail before any training."""

    def _download_ann(self):
        for split, info in self.config.build_info.annotations.items():
            for path in _as_list(info.storage):
                if not os.path.isfile(_absolute(path)):
                    raise FileNotFoundError(f"{split} annotation file {_absolute(path)} does not exist")

    def _download_vis(self):
        storage = _absolute(self.config.build_info.get(self.data_type).storage)
        if not os.path.isdir(storage):
            raise FileNotFoundError(f"{self.data_type} directory {storage} does not exist")


@registry.register_builder("glscl_image_text")
class ImageTextPairsBuilder(LocalFilesBuilder):
    """Training pairs (json list of ``{image, caption}``); val/test splits in LAVIS's retrieval eval format."""

    train_dataset_cls = ImageCaptionDataset
    eval_dataset_cls = ImageRetrievalEvalDataset
    DATASET_CONFIG_DICT = {"default": config_path("datasets/glscl_image_text/defaults.yaml")}


@registry.register_builder("shapes_demo")
class ShapesDemoBuilder(ImageTextPairsBuilder):
    """The embedded shapes set (``lavis_glscl.datasets.shapes``), generated into the cache on first use.

    Relative storage paths in its config are relative to the generated set.
    """

    DATASET_CONFIG_DICT = {"default": config_path("datasets/shapes_demo/defaults.yaml")}

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.generator_options = dict(self.config.get("generator", {}))
        self.root = shapes.dataset_dir(**self.generator_options)
        info = self.config.build_info
        for split in info.annotations:
            info.annotations[split].storage = [str(self.root / p) for p in _as_list(info.annotations[split].storage)]
        info.get(self.data_type).storage = str(self.root / info.get(self.data_type).storage)

    def _download_data(self):
        shapes.ensure_generated(self.root, **self.generator_options)
        super()._download_data()
