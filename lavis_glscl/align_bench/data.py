"""ALIGN-BENCH data: the dataset in its released layout, the ``align_bench`` builder, and a mini bench drawn from
the shapes set.

The released layout (``huggingface.co/datasets/jiyatai/ALIGN-BENCH``), which the mini bench copies::

    images/{i}.jpg
    pkls/{i}.pkl   {"caption": str,
                    "annotation": {phrase: [{"bbox_mask": [x1, y1, x2, y2], "pixel_mask": bool [H, W]}, ...]}}

The pickles are read as data: containers, strings, numbers and numpy arrays, nothing else (a crafted file's code
does not run; the file counts as an unreadable annotation).  Items that cannot be scored (a missing or unreadable
image or pickle, a malformed record) are dropped when the dataset is built and counted in ``dataset.dropped``, as the
other datasets of this package do.
"""
import functools
import hashlib
import json
import logging
import os
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from lavis.common.registry import registry
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Dataset

from lavis_glscl.align_bench.scoring import pixel_mask
from lavis_glscl.datasets import shapes
from lavis_glscl.datasets.builders import LocalFilesBuilder
from lavis_glscl.datasets.cache import ensure_cached
from lavis_glscl.datasets.datasets import LOAD_ERRORS, load_rgb
from lavis_glscl.paths import cache_dir, config_path

SHAPES_BENCH_VERSION = 1
# A corrupt pickle raises almost anything, depending on where its bytes stop making sense.
UNPICKLE_ERRORS = (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError,
                   ImportError, IndexError, MemoryError)


def item_names(image_dir: str, annotation_dir: str) -> List[str]:
    """Every item that has an image or a pickle, numbered items in numeric order."""
    names = {p.stem for p in Path(image_dir).glob("*.jpg")} | {p.stem for p in Path(annotation_dir).glob("*.pkl")}
    return sorted(names, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))


# The globals a numpy array (the pixel masks) pickles with, under numpy 1.x and 2.x module names (protocol 2 writes
# its bytes through _codecs.encode)
NUMPY_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}


class RecordUnpickler(pickle.Unpickler):
    """Unpickles what an ALIGN-BENCH record holds and refuses every other global (a function a crafted file calls)."""

    def find_class(self, module: str, name: str):
        if (module, name) in NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not data an ALIGN-BENCH annotation holds")


def read_record(path: str) -> dict:
    with open(path, "rb") as handle:
        return RecordUnpickler(handle).load()


def record_problem(record, image_size: Tuple[int, int]) -> Optional[str]:
    """Why a loaded record cannot be scored against an image of ``image_size`` ``(H, W)``, or None."""
    if not (isinstance(record, dict) and isinstance(record.get("caption"), str)
            and isinstance(record.get("annotation"), dict)):
        return "malformed annotation"
    if not record["caption"].strip():
        return "empty caption"
    try:
        for regions in record["annotation"].values():
            for region in regions:
                if len(region["bbox_mask"]) != 4:
                    return "malformed annotation"
                pixel_mask(region, *image_size)
    except (KeyError, TypeError, ValueError):
        return "malformed annotation"
    return None


class AlignBenchDataset(Dataset):
    """ALIGN-BENCH items from ``vis_root`` (the ``images`` directory) and ``ann_paths`` (``[the pkls directory]``).

    Samples: ``image`` ``[3, S, S]`` (the eval processor), ``text_input`` (the processed caption), ``annotation``
    ``{processed phrase: regions}`` (phrases go through the caption's text processor so that they are found in
    it), ``image_size`` ``(H, W)`` of the original image, whose pixels the regions refer to, and ``index``.
    """

    def __init__(self, vis_processor, text_processor, vis_root, ann_paths):
        if len(ann_paths) != 1:
            raise ValueError(f"ALIGN-BENCH reads one directory of pickles per split, got {list(ann_paths)}")
        self.vis_processor, self.text_processor = vis_processor, text_processor
        self.image_dir, self.annotation_dir = vis_root, ann_paths[0]
        self.dropped: Dict[str, List[str]] = defaultdict(list)
        candidates = item_names(self.image_dir, self.annotation_dir)
        self.names = []
        for name in candidates:
            problem = self._item_problem(name)
            if problem:
                self.dropped[problem].append(name)
            else:
                self.names.append(name)
        if self.dropped:
            summary = ", ".join(f"{len(names)} {reason}" for reason, names in sorted(self.dropped.items()))
            logging.warning("%s: skipped %d of %d items (%s)", type(self).__name__, len(candidates) - len(self.names),
                            len(candidates), summary)

    def _image_path(self, name: str) -> str:
        return os.path.join(self.image_dir, f"{name}.jpg")

    def _annotation_path(self, name: str) -> str:
        return os.path.join(self.annotation_dir, f"{name}.pkl")

    def _item_problem(self, name: str) -> Optional[str]:
        if not os.path.isfile(self._image_path(name)):
            return "missing image"
        if not os.path.isfile(self._annotation_path(name)):
            return "missing annotation"
        try:
            image = load_rgb(self._image_path(name))
        except LOAD_ERRORS:
            return "unreadable image"
        try:
            record = read_record(self._annotation_path(name))
        except UNPICKLE_ERRORS:
            return "unreadable annotation"
        return record_problem(record, (image.height, image.width))

    def _text(self, text: str) -> str:
        return self.text_processor(text) if self.text_processor else text

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        image = load_rgb(self._image_path(name))
        record = read_record(self._annotation_path(name))
        annotation = defaultdict(list)
        for phrase, regions in record["annotation"].items():
            annotation[self._text(phrase)].extend(regions)
        return {"image": self.vis_processor(image), "text_input": self._text(record["caption"]),
                "annotation": dict(annotation), "image_size": (image.height, image.width), "index": index}

    @staticmethod
    def collater(samples: List[dict]) -> dict:
        """Images stacked to ``[B, 3, S, S]``; everything else as lists."""
        batch = {key: [sample[key] for sample in samples] for key in samples[0] if key != "image"}
        batch["image"] = torch.stack([sample["image"] for sample in samples])
        return batch


def shapes_bench_dir(num_images: int = 200, image_size: int = 64, seed: int = 0,
                     cache_root: Optional[Path] = None) -> Path:
    """Where the shapes mini bench with these parameters lives (generated or not)."""
    key = json.dumps([SHAPES_BENCH_VERSION, shapes.GENERATOR_VERSION, num_images, image_size, seed])
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return (cache_root or cache_dir()) / "shapes" / f"align-bench-v{SHAPES_BENCH_VERSION}-{digest}"


def write_shapes_bench(root: Path, num_images: int, image_size: int, seed: int) -> None:
    """Write a mini ALIGN-BENCH in the released layout into the empty directory ``root``: shapes scenes whose two
    objects are annotated under their noun phrases ("small red circle") with their exact boxes and pixel masks."""
    rng = np.random.RandomState(seed)
    (root / "images").mkdir()
    (root / "pkls").mkdir()
    for index in range(num_images):
        scene = shapes.random_scene(rng)
        pixels, regions = shapes.render(scene, image_size, rng)
        Image.fromarray(pixels).save(root / "images" / f"{index}.jpg", quality=95)
        record = {"caption": scene.caption,
                  "annotation": {phrase: [{"bbox_mask": box, "pixel_mask": mask}] for phrase, box, mask in regions}}
        with open(root / "pkls" / f"{index}.pkl", "wb") as handle:
            pickle.dump(record, handle)


def ensure_shapes_bench(root: Path, num_images: int = 200, image_size: int = 64, seed: int = 0) -> Path:
    """Generate the mini bench into ``root`` unless it is already complete there (:func:`ensure_cached`)."""
    if num_images < 1:
        raise ValueError("a shapes ALIGN-BENCH needs num_images >= 1")
    return ensure_cached(root, functools.partial(write_shapes_bench, num_images=num_images, image_size=image_size,
                                                 seed=seed))


@registry.register_builder("align_bench")
class AlignBenchBuilder(LocalFilesBuilder):
    """ALIGN-BENCH from a local copy (type ``default``), or the shapes mini bench (type ``shapes``), generated
    into the cache on first use, on rank 0.  A config with a ``generator`` block is a shapes bench; its storage
    paths are relative to the generated bench.  Each split's annotation storage is its directory of pickles."""

    eval_dataset_cls = AlignBenchDataset
    annotation_kind = "directory"
    DATASET_CONFIG_DICT = {"default": config_path("datasets/align_bench/defaults.yaml"),
                           "shapes": config_path("datasets/align_bench/shapes.yaml")}

    def __init__(self, cfg=None):
        super().__init__(cfg)
        info = self.config.build_info
        if "train" in info.annotations:
            raise ValueError("ALIGN-BENCH is a zero-shot probe: it has no train split")
        generator = self.config.get("generator")
        self.generator_options = OmegaConf.to_container(generator) if generator else None
        if self.generator_options:
            self.root = shapes_bench_dir(**self.generator_options)
            self.root_storage_under(self.root)

    def _download_data(self):
        if self.generator_options:
            ensure_shapes_bench(self.root, **self.generator_options)
        super()._download_data()
