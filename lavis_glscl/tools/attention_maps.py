"""Heat maps of where a model's caption looks in an image: the text CLS token's (global) and each phrase's
last-layer text-to-image cross-attention, max over heads (what ALIGN-BENCH scores), drawn over the image::

    python -m lavis_glscl.tools.attention_maps --cfg-path <run yaml> [--checkpoint <file>] --image <file> \\
        --caption "a small red circle above a large blue square" [--phrases "small red circle" ...] --out-dir <dir>

The run yaml gives the model (and loads its ``pretrained``/``finetuned`` weights unless ``--checkpoint`` is given)
and, from its first dataset, the eval image and text processors (else the model type's).  Without ``--phrases``
each distinct word of the caption is a phrase.  Writes ``global.png`` and ``phrase_NN_<phrase>.png``, one map each,
``FIGURE_PIXELS`` wide and ``FIGURE_PIXELS + TITLE_PIXELS`` high.
"""
import argparse
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from lavis.common.registry import registry
from lavis.models import load_preprocess
from matplotlib.figure import Figure
from omegaconf import OmegaConf

import lavis_glscl  # noqa: F401  (registers the models and processors)
from lavis_glscl.align_bench.attention import cross_attention_probe
from lavis_glscl.align_bench.scoring import GLOBAL_QUERY_INDEX, UnscorablePhrase, phrase_tokens
from lavis_glscl.datasets.datasets import load_rgb
from lavis_glscl.launch import LaunchConfig
from lavis_glscl.paths import run_config_path

FIGURE_PIXELS = 400
TITLE_PIXELS = 40
DPI = 100


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Draw a model's global and per-phrase cross-attention over an image.")
    parser.add_argument("--cfg-path", "--cfg", dest="cfg_path", required=True, help="run yaml that names the model")
    parser.add_argument("--checkpoint", help="weights to load instead of the yaml's pretrained/finetuned ones")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--caption", required=True)
    parser.add_argument("--phrases", nargs="+", help="phrases of the caption to draw (default: each distinct word)")
    parser.add_argument("--out-dir", required=True, help="directory for the PNG files")
    return parser.parse_args(argv)


def build_model(cfg: LaunchConfig, checkpoint: Optional[str]):
    """The run's model in eval mode, with ``checkpoint``'s weights when given."""
    model_cfg = cfg.model_cfg.copy()
    if checkpoint:
        model_cfg.pretrained, model_cfg.finetuned = None, None
    model = registry.get_model_class(model_cfg.arch).from_config(model_cfg)
    if checkpoint:
        model.load_checkpoint(checkpoint)
    return model.eval()


def eval_processors(cfg: LaunchConfig):
    """The eval image and text processors of the run's first dataset, else those of the model type."""
    for dataset_cfg in (cfg.datasets_cfg or {}).values():
        vis = OmegaConf.select(dataset_cfg, "vis_processor.eval")
        text = OmegaConf.select(dataset_cfg, "text_processor.eval")
        if vis is not None:
            build = lambda c: registry.get_processor_class(c.name).from_config(c)  # noqa: E731
            return build(vis), (build(text) if text is not None else None)
    model_cls = registry.get_model_class(cfg.model_cfg.arch)
    preprocess = OmegaConf.load(model_cls.default_config_path(cfg.model_cfg.model_type)).preprocess
    vis, text = load_preprocess(preprocess)
    return vis["eval"], text["eval"]


def attention_maps(model, image_tensor: torch.Tensor, caption: str, phrases: Sequence[str]
                   ) -> List[Tuple[str, torch.Tensor]]:
    """``[(title, map [g, g])]``: the global (CLS) map, then each phrase's (the sum of its tokens' maps)."""
    maps = cross_attention_probe(model)(image_tensor[None], [caption])
    attention = maps.attention[0].float().cpu().reshape(-1, maps.grid_size, maps.grid_size)
    offsets = maps.offsets[0].tolist()
    result = [("global (CLS)", attention[GLOBAL_QUERY_INDEX])]
    for phrase in phrases:
        result.append((phrase, attention[phrase_tokens(offsets, caption, phrase)].sum(dim=0)))
    return result


def draw_heat_map(image: np.ndarray, heat: torch.Tensor, title: str, path: Path) -> None:
    """``heat`` ``[g, g]`` over the patch grid, stretched over the whole ``image`` ``[H, W, 3]`` (the eval
    processors resize without cropping), scaled to its own maximum."""
    height, width = image.shape[:2]
    figure = Figure(figsize=(FIGURE_PIXELS / DPI, (FIGURE_PIXELS + TITLE_PIXELS) / DPI), dpi=DPI)
    axes = figure.add_axes([0, 0, 1, FIGURE_PIXELS / (FIGURE_PIXELS + TITLE_PIXELS)])
    axes.imshow(image, extent=(0, width, height, 0))
    axes.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=float(heat.max()), extent=(0, width, height, 0),
                interpolation="bilinear")
    axes.set_axis_off()
    figure.suptitle(title, y=1 - 0.25 * TITLE_PIXELS / (FIGURE_PIXELS + TITLE_PIXELS), va="center")
    figure.savefig(path, dpi=DPI)


def file_name(index: int, phrase: str) -> str:
    return f"phrase_{index:02d}_{re.sub(r'[^0-9A-Za-z]+', '_', phrase).strip('_')}.png"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    cfg = LaunchConfig(argparse.Namespace(cfg_path=run_config_path(args.cfg_path), options=[]))
    model = build_model(cfg, args.checkpoint)
    vis_processor, text_processor = eval_processors(cfg)
    process_text = text_processor or (lambda text: text)
    image = load_rgb(args.image)
    caption = process_text(args.caption)
    phrases = [process_text(p) for p in args.phrases] if args.phrases else list(dict.fromkeys(caption.split()))
    try:
        maps = attention_maps(model, vis_processor(image), caption, phrases)
    except UnscorablePhrase as error:
        print(f"error: {error} (caption as the model reads it: {caption!r})", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(image)
    for index, (title, heat) in enumerate(maps):
        path = out_dir / ("global.png" if index == 0 else file_name(index, title))
        draw_heat_map(pixels, heat, title, path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
