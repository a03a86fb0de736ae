"""Loading external weights into GLSCL models, with an exact report of what was used.

- OpenAI CLIP vision weights: a state dict (``visual.*`` keys, or bare) or OpenAI's TorchScript file.
- HF ``CLIPVisionModel`` directories (``hf_clip_vision_to_openai`` converts the names).
- Released GLSCL checkpoints (``GLSCL-100k.ckpt``, ``MGSC-100k.ckpt``): PyTorch Lightning files whose
  ``state_dict`` uses the released module names.  Those are lavis_glscl's, except that the released vision tower is
  a CLIP wrapper whose ViT sits at ``vision_transformer.visual.*`` (lavis_glscl's ``vision_transformer.*``) beside
  the MAE pixel decoder it builds but never uses (``vision_transformer.decoder_*``, ``vision_transformer.mask_token``,
  reported unused), and that its image-only ViT has no ``temporal_embed`` (started at zero).

Position embeddings of another resolution and temporal embeddings of another frame bound are resized by the
ViT itself when loading (``VisionTransformer._load_from_state_dict``).

Files are read as data by :func:`lavis_glscl.serialization.read_checkpoint`; anything that would run code needs
``trust_checkpoint``.
"""
import logging
from typing import Dict, List, NamedTuple, Sequence

import torch
from torch import nn

from lavis_glscl.models.layers.vision_transformer import VisionTransformer, hf_clip_vision_to_openai
from lavis_glscl.serialization import read_checkpoint
from lavis_glscl.typed_options import ConfigError

RELEASED_VISION_PREFIX = "vision_transformer.visual."
VISION_PREFIX = "vision_transformer."
MAE_DECODER_PREFIXES = tuple(VISION_PREFIX + name for name in ("decoder_embed", "mask_token", "decoder_pos_embed",
                                                                "decoder_blocks", "decoder_norm", "decoder_pred"))
DEFAULT_MIN_COVERAGE = 0.5
LISTED_KEYS = 12  # keys named per list in a refusal; the rest counted


class LoadReport(NamedTuple):
    missing: List[str]  # model parameters/buffers the weights did not provide
    unused: List[str]  # provided weights the model has no place for


def _load(module: nn.Module, state_dict: Dict[str, torch.Tensor]) -> LoadReport:
    result = module.load_state_dict(state_dict, strict=False)
    return LoadReport(sorted(result.missing_keys), sorted(result.unexpected_keys))


def load_clip_vision(vit: VisionTransformer, state_dict: Dict[str, torch.Tensor]) -> LoadReport:
    """OpenAI-named CLIP vision weights (with or without the ``visual.`` prefix) into ``vit``.

    Blocks beyond ``vit``'s depth (GLSCL keeps 11 of ViT-B/16's 12) and CLIP's ``proj`` are reported unused.
    Both GLSCL additions are reported missing: ``temporal_embed`` is set to zero, so images encode exactly as in
    CLIP, and ``visual_mask_token`` keeps its initialisation.
    """
    prefix = "visual." if any(k.startswith("visual.") for k in state_dict) else ""
    visual = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    report = _load(vit, visual)
    zero_missing_temporal_embeddings(vit, report.missing)
    # unused keys in the source's own names
    unused = sorted([prefix + k for k in report.unused] + [k for k in state_dict if not k.startswith(prefix)])
    return LoadReport(report.missing, unused)


def load_hf_clip_vision(vit: VisionTransformer, directory: str) -> LoadReport:
    """A local HF ``CLIPVisionModel`` directory into ``vit``."""
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(directory, local_files_only=True)
    converted, unconverted = hf_clip_vision_to_openai(model.state_dict())
    report = load_clip_vision(vit, converted)
    return LoadReport(report.missing, sorted(report.unused + [k for k in unconverted if "position_ids" not in k]))


def zero_missing_temporal_embeddings(model: nn.Module, missing: Sequence[str]) -> List[str]:
    """Start at zero every ViT ``temporal_embed`` of ``model`` among the ``missing`` keys, so that images encode as
    in the image-only encoder the weights come from; returns those keys."""
    zeroed = []
    for name, module in model.named_modules():
        key = f"{name}.temporal_embed" if name else "temporal_embed"
        if isinstance(module, VisionTransformer) and key in missing:
            with torch.no_grad():
                module.temporal_embed.zero_()
            zeroed.append(key)
    return zeroed


def from_released_name(key: str) -> str:
    """A released checkpoint's key in lavis_glscl's names: the CLIP wrapper's ViT ``vision_transformer.visual.*``
    is lavis_glscl's ``vision_transformer.*``; every other name is shared, the wrapper's MAE decoder included.
    lavis_glscl's own names map to themselves."""
    if key.startswith(RELEASED_VISION_PREFIX):
        return VISION_PREFIX + key[len(RELEASED_VISION_PREFIX):]
    return key


def initialise_vision(vit: VisionTransformer, format: str, path: str, trust_checkpoint: bool = False,
                      min_coverage: float = DEFAULT_MIN_COVERAGE) -> LoadReport:
    """CLIP vision weights for ``vit`` at construction: ``format`` ``openai`` (a state dict or OpenAI's TorchScript
    file, read as data) or ``hf`` (a local ``CLIPVisionModel`` directory).  Weights filling less than
    ``min_coverage`` of the ViT's parameters are refused."""
    if format == "openai":
        report = load_clip_vision(vit, read_checkpoint(path, trust_checkpoint))
    elif format == "hf":
        report = load_hf_clip_vision(vit, path)
    else:
        raise ValueError(f"vision_init.format must be 'openai' or 'hf', got {format!r}")
    check_coverage(vit, report, path, min_coverage, "vision_init.min_coverage")
    return report


def listed(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    return f"[{shown}{f', ... {len(keys) - LISTED_KEYS} more' if len(keys) > LISTED_KEYS else ''}]"


def check_coverage(model: nn.Module, report: LoadReport, path: str, min_coverage: float, option: str) -> float:
    """The share of ``model``'s parameter values that the weights of ``path`` filled; :class:`ConfigError` with both
    key lists (collapsed to modules) when it is below ``min_coverage``: a file of another model would otherwise leave
    this one training from its random start with one log line."""
    parameters = dict(model.named_parameters())
    total = sum(param.numel() for param in parameters.values())
    missing = set(report.missing)
    filled = sum(param.numel() for name, param in parameters.items() if name not in missing)
    share = filled / total if total else 1.0
    if share < min_coverage:
        names = list(model.state_dict())
        lacking = collapse_names([name for name in names if name in missing], names)
        raise ConfigError(
            f"{path} fills {share:.1%} of {type(model).__name__}'s parameters, below {option} {min_coverage}: it "
            f"looks like weights of another model. {type(model).__name__} keys it lacks ({len(report.missing)}): "
            f"{listed(lacking)}; its keys {type(model).__name__} has no place for ({len(report.unused)}): "
            f"{listed(report.unused)}")
    return share


def collapse_names(names: Sequence[str], all_names: Sequence[str]) -> List[str]:
    """``names`` with every module whose parameters are all in ``names`` written once as ``module.*``."""
    chosen = set(names)
    collapsed: List[str] = []
    for name in names:
        parts = name.split(".")
        shortest = name
        for depth in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:depth]) + "."
            if all(other in chosen for other in all_names if other.startswith(prefix)):
                shortest = prefix + "*"
        if shortest not in collapsed:
            collapsed.append(shortest)
    return collapsed


def load_model_weights(model: nn.Module, path: str, unused_ok: Sequence[str] = (), missing_ok: Sequence[str] = (),
                       trust_checkpoint: bool = False, min_coverage: float = DEFAULT_MIN_COVERAGE) -> LoadReport:
    """Weights from a LAVIS checkpoint (``model`` inside), a Lightning checkpoint (``state_dict`` inside: the
    released GLSCL files, or files in lavis_glscl's names) or a bare state dict, loaded by name after
    ``from_released_name``.  A ``temporal_embed`` the weights lack starts at zero (and is reported missing).

    LAVIS checkpoints load leniently, as LAVIS does (missing keys are logged).  A Lightning checkpoint is held
    to its names: a key the model lacks, except under ``unused_ok`` prefixes (the MAE decoder), or a model key
    it lacks, except under ``missing_ok`` prefixes (heads the release does not have), raises with the lists.
    Unused keys are reported in the file's names.  ``trust_checkpoint``: see ``read_checkpoint``.  Weights filling
    less than ``min_coverage`` of the model's parameters are refused (:func:`check_coverage`).
    """
    checkpoint = read_checkpoint(path, trust_checkpoint)
    lightning = isinstance(checkpoint, dict) and "state_dict" in checkpoint and "model" not in checkpoint
    state_dict = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    file_names = {from_released_name(key): key for key in state_dict}
    loaded = _load(model, {name: state_dict[key] for name, key in file_names.items()})
    report = LoadReport(loaded.missing, sorted(file_names[name] for name in loaded.unused))
    zeroed = zero_missing_temporal_embeddings(model, report.missing)
    logging.info("Loaded %s: missing %s (zero: %s); unused %s", path, report.missing, zeroed, report.unused)
    if lightning:
        unexpected = [k for k in report.unused if not k.startswith(tuple(unused_ok))]
        missing = [k for k in report.missing if k not in zeroed and not k.startswith(tuple(missing_ok))]
        if unexpected or missing:
            raise KeyError(f"{path} does not match {type(model).__name__}: missing {missing}, unused {unexpected}")
    check_coverage(model, report, path, min_coverage, "model.min_checkpoint_coverage")
    return report
