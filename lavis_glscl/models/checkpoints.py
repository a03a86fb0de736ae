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

Files are unpickled with ``torch.load(weights_only=True)`` and a short allow-list (``CHECKPOINT_SAFE_GLOBALS``);
anything else needs ``trust_checkpoint``, as full unpickling runs whatever code the file carries.
"""
import argparse
import logging
import os
import pickle
import types
import zipfile
from typing import Dict, List, NamedTuple, Sequence

import torch
from torch import nn

from lavis_glscl.models.vision_transformer import VisionTransformer, hf_clip_vision_to_openai

RELEASED_VISION_PREFIX = "vision_transformer.visual."
VISION_PREFIX = "vision_transformer."
MAE_DECODER_PREFIXES = tuple(VISION_PREFIX + name for name in ("decoder_embed", "mask_token", "decoder_pos_embed",
                                                                "decoder_blocks", "decoder_norm", "decoder_pred"))

# What Lightning checkpoints (1.x and 2.x) of a METER-style module hold beyond tensors, containers and numbers.
# Lightning is not installed, so its classes resolve to stand-ins (pickled name: stand-in):
# - its hyper-parameter container ``AttributeDict``, under each module name it has had: plain ``dict``, as torch
#   fills only exact dicts from pickled items (SETITEMS), so it refuses a dict subclass of ours;
# - ``ModelCheckpoint``, by which Lightning <= 1.4 keyed that callback's state under ``callbacks``: its name.
# ``argparse.Namespace`` is what older modules took as hyper-parameters.  Optimizer, LR-scheduler (LambdaLR) and
# AMP-scaler states hold only tensors, numbers, strings and containers, which torch allows already.
LIGHTNING_STAND_INS = {
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,
    "lightning.fabric.utilities.data.AttributeDict": dict,
    "lightning_fabric.utilities.data.AttributeDict": dict,
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint":
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
}
CHECKPOINT_SAFE_GLOBALS = [(stand_in, name) for name, stand_in in LIGHTNING_STAND_INS.items()] + [argparse.Namespace]


class StandInUnpickler(pickle.Unpickler):
    """Full unpickling (of a trusted file) that resolves Lightning's classes to their stand-ins."""

    def find_class(self, module, name):
        return LIGHTNING_STAND_INS.get(f"{module}.{name}") or super().find_class(module, name)


# a pickle_module for torch.load: the three attributes torch uses of one
TRUSTED_PICKLE = types.SimpleNamespace(__name__="lavis_glscl_trusted_pickle", Unpickler=StandInUnpickler,
                                       load=lambda file, **options: StandInUnpickler(file, **options).load())


class LoadReport(NamedTuple):
    missing: List[str]  # model parameters/buffers the weights did not provide
    unused: List[str]  # provided weights the model has no place for


def _load(module: nn.Module, state_dict: Dict[str, torch.Tensor]) -> LoadReport:
    result = module.load_state_dict(state_dict, strict=False)
    return LoadReport(sorted(result.missing_keys), sorted(result.unexpected_keys))


def read_checkpoint(path: str, trust_checkpoint: bool = False):
    """``torch.load`` a local file on the CPU (OpenAI's TorchScript CLIP files: their state dict).

    Beyond tensors and containers, only ``CHECKPOINT_SAFE_GLOBALS`` are unpickled; a file holding anything else
    is refused, naming what it holds, unless ``trust_checkpoint``: then it is unpickled in full, which runs
    whatever code it carries.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist (lavis_glscl never downloads weights)")
    if zipfile_is_torchscript(path):  # OpenAI's CLIP files are TorchScript archives
        return torch.jit.load(path, map_location="cpu").state_dict()
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_checkpoint:
            raise pickle.UnpicklingError(
                f"{path} holds objects beyond tensors, containers and Lightning's hyper-parameters "
                f"({unsafe_globals(path) or error}); unpickling them runs code the file carries. Load it only if "
                "you trust it: trust_checkpoint: true in the model config (beside pretrained/finetuned)") from None
    logging.warning("%s holds objects beyond the allow-list; unpickling it in full (trust_checkpoint)", path)
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=TRUSTED_PICKLE)


def unsafe_globals(path: str) -> List[str]:
    """The pickled classes and functions of the torch zip file ``path`` outside torch's and our allow-lists
    (empty for a legacy, non-zip file, which torch cannot list)."""
    if not zipfile.is_zipfile(path):
        return []
    with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def zipfile_is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


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


def initialise_vision(vit: VisionTransformer, format: str, path: str) -> LoadReport:
    """CLIP vision weights for ``vit`` at construction: ``format`` ``openai`` (a state dict or OpenAI's TorchScript
    file) or ``hf`` (a local ``CLIPVisionModel`` directory)."""
    if format == "openai":
        return load_clip_vision(vit, read_checkpoint(path))
    if format == "hf":
        return load_hf_clip_vision(vit, path)
    raise ValueError(f"vision_init.format must be 'openai' or 'hf', got {format!r}")


def load_model_weights(model: nn.Module, path: str, unused_ok: Sequence[str] = (), missing_ok: Sequence[str] = (),
                       trust_checkpoint: bool = False) -> LoadReport:
    """Weights from a LAVIS checkpoint (``model`` inside), a Lightning checkpoint (``state_dict`` inside: the
    released GLSCL files, or files in lavis_glscl's names) or a bare state dict, loaded by name after
    ``from_released_name``.  A ``temporal_embed`` the weights lack starts at zero (and is reported missing).

    LAVIS checkpoints load leniently, as LAVIS does (missing keys are logged).  A Lightning checkpoint is held
    to its names: a key the model lacks, except under ``unused_ok`` prefixes (the MAE decoder), or a model key
    it lacks, except under ``missing_ok`` prefixes (heads the release does not have), raises with the lists.
    Unused keys are reported in the file's names.  ``trust_checkpoint``: see ``read_checkpoint``.
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
    return report
