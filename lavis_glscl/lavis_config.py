"""What a LAVIS user's own run yaml needs to run a GLSCL model with one line changed (``model.arch``).

- :func:`lavis_model_options`: options of LAVIS's own models (``queue_size``, ``alpha``, ``negative_all_rank``, ...),
  which a GLSCL model has no use for: reported once and dropped, while a key no registered model knows is refused.
- :func:`take_sizes_from_processors`: the image size and frame count come from the datasets' processors (the paper
  fine-tunes at 384 px a model pre-trained at 288: position embeddings are interpolated when the weights load); a run
  whose processors disagree stops at once, naming the keys.
- :func:`check_downloads`: a LAVIS builder whose files are missing would download them; offline (lavis_glscl's
  default) the run stops at once with one line: which files, from where, into which directory under ``cache_root``.
"""
import functools
import glob
import logging
import os
from typing import Dict, List, Optional, Set

from lavis.common.registry import registry
from lavis.common.utils import get_abs_path, get_cache_path
from omegaconf import DictConfig, OmegaConf, open_dict

from lavis_glscl.typed_options import ConfigError

_reported: Set[str] = set()
VIDEO_LAYOUTS = {"alpro_video_train": "cthw", "alpro_video_eval": "cthw"}  # LAVIS's video processors: [3, T, H, W]


@functools.cache
def lavis_model_options() -> frozenset:
    """Every key of the ``model`` block of LAVIS's own models' default configs and of LAVIS's packaged run yamls."""
    keys = set()
    for cls in registry.mapping["model_name_mapping"].values():
        if cls.__module__.startswith("lavis_glscl"):
            continue
        for path in getattr(cls, "PRETRAINED_MODEL_CONFIG_DICT", {}).values():
            keys.update(OmegaConf.load(get_abs_path(path)).get("model") or {})
    for path in glob.glob(os.path.join(registry.get_path("library_root"), "projects", "**", "*.yaml"), recursive=True):
        keys.update(OmegaConf.load(path).get("model") or {})
    return frozenset(keys)


def drop_lavis_model_options(options: dict, known: Set[str], model_name: str) -> dict:
    """``options`` without the keys that only LAVIS's own models read (reported once per process); keys in ``known``
    (the model's own) and keys nobody knows stay, to be refused by the typed config."""
    foreign = sorted(key for key in options if key not in known and key in lavis_model_options())
    new = [key for key in foreign if key not in _reported]
    if new:
        logging.warning("model options %s belong to LAVIS's own models and have no effect on %s", new, model_name)
        _reported.update(new)
    return {key: value for key, value in options.items() if key not in foreign}


def processor_values(datasets_cfg, key: str) -> Dict[str, object]:
    """``{"datasets.<name>.vis_processor.<split>.<key>": value}`` of every vision processor that sets ``key``."""
    found = {}
    for name, dataset in (datasets_cfg or {}).items():
        for split, processor in ((dataset or {}).get("vis_processor") or {}).items():
            if processor is not None and processor.get(key) is not None:
                found[f"datasets.{name}.vis_processor.{split}.{key}"] = processor.get(key)
    return found


def one_value(found: Dict[str, object], what: str) -> Optional[object]:
    values = set(found.values())
    if len(values) > 1:
        raise ConfigError(f"the processors disagree on the {what}: {', '.join(f'{k}={v}' for k, v in found.items())}; "
                          f"the model takes one {what}: set them alike")
    return values.pop() if values else None


def take_sizes_from_processors(cfg) -> None:
    """For a model with a ``vision`` block (GLSCL's): ``model.vision.image_size`` from the processors' ``image_size``,
    ``model.vision.max_frames`` raised to their ``n_frms``, and the video tensor layout of LAVIS's video processors;
    each change logged with the key it came from."""
    model = cfg.model_cfg
    if not isinstance(model.get("vision"), DictConfig):
        return
    sizes, frames = processor_values(cfg.datasets_cfg, "image_size"), processor_values(cfg.datasets_cfg, "n_frms")
    size, count = one_value(sizes, "image size"), one_value(frames, "frame count")
    with open_dict(model):
        if size is not None and size != model.vision.get("image_size"):
            logging.info("model.vision.image_size %s -> %s, the processors' (%s); position embeddings are "
                         "interpolated when weights load", model.vision.get("image_size"), size, ", ".join(sizes))
            model.vision.image_size = size
        if count is not None and count > model.vision.get("max_frames", 8):
            logging.info("model.vision.max_frames %s -> %s, the processors' n_frms (%s)",
                         model.vision.get("max_frames", 8), count, ", ".join(frames))
            model.vision.max_frames = count
        layouts = {VIDEO_LAYOUTS.get(processor.get("name"), processor.get("layout", "tchw"))
                   for dataset in (cfg.datasets_cfg or {}).values()
                   for processor in ((dataset or {}).get("vis_processor") or {}).values()
                   if processor is not None and "video" in str(processor.get("name"))}
        if len(layouts) > 1:
            raise ConfigError(f"the video processors give tensors in layouts {sorted(layouts)}; the model reads one")
        if layouts:
            model.video_layout = layouts.pop()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "false", "False")


def missing_downloads(name: str, dataset_cfg) -> List[str]:
    """``url -> path`` of each annotation file LAVIS's builder ``name`` would download, and each media directory it
    lacks, for a LAVIS builder (lavis_glscl's own builders never download: they stop on a missing file)."""
    builder = registry.get_builder_class(name)
    if builder is None or builder.__module__.startswith("lavis_glscl"):
        return []
    build_info = dataset_cfg.get("build_info") or {}
    missing = []
    for info in (build_info.get("annotations") or {}).values():
        urls, storages = info.get("url"), info.get("storage")
        urls = urls if isinstance(urls, (list, tuple)) or OmegaConf.is_list(urls) else [urls]
        storages = storages if isinstance(storages, (list, tuple)) or OmegaConf.is_list(storages) else [storages]
        for url, storage in zip(urls, storages):
            path = storage if os.path.isabs(storage) else get_cache_path(storage)
            if not os.path.exists(path):
                missing.append(f"{url} -> {path}")
    media = build_info.get(dataset_cfg.get("data_type", "images")) or {}
    if media.get("storage"):
        path = media.storage if os.path.isabs(media.storage) else get_cache_path(media.storage)
        if not os.path.isdir(path):
            missing.append(f"(the {dataset_cfg.get('data_type', 'images')} themselves) -> {path}")
    return missing


def check_downloads(cfg) -> None:
    """Stop, with one line, a run whose LAVIS builders would download while offline."""
    if not offline():
        return
    for name, dataset_cfg in (cfg.datasets_cfg or {}).items():
        missing = missing_downloads(name, dataset_cfg)
        if missing:
            raise ConfigError(f"datasets.{name}: LAVIS's builder would download while offline; put the files in place "
                              f"(cache_root {registry.get_path('cache_root')}; absolute storage paths bypass it): "
                              + "; ".join(missing))
