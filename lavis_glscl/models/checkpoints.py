"""Loading external weights into GLSCL models, with an exact report of what was used.

- OpenAI CLIP vision weights: a state dict (``visual.*`` keys, or bare) or OpenAI's TorchScript file.
- HF ``CLIPVisionModel`` directories (``hf_clip_vision_to_openai`` converts the names).
- Released GLSCL checkpoints (``GLSCL-100k.ckpt``, ``MGSC-100k.ckpt``): PyTorch Lightning files holding a
  ``state_dict`` in the released module names, which lavis_glscl's models use, so the mapping is the identity;
  the MAE pixel decoder the released code builds but never uses is reported as unused.

Position embeddings of another resolution and temporal embeddings of another frame bound are resized by the
ViT itself when loading (``VisionTransformer._load_from_state_dict``).
"""
import logging
import os
import zipfile
from typing import Dict, List, NamedTuple, Sequence

import torch
from torch import nn

from lavis_glscl.models.vision_transformer import VisionTransformer, hf_clip_vision_to_openai

MAE_DECODER_PREFIXES = ("decoder_embed", "mask_token", "decoder_pos_embed", "decoder_blocks", "decoder_norm",
                        "decoder_pred")


class LoadReport(NamedTuple):
    missing: List[str]  # model parameters/buffers the weights did not provide
    unused: List[str]  # provided weights the model has no place for


def _load(module: nn.Module, state_dict: Dict[str, torch.Tensor]) -> LoadReport:
    result = module.load_state_dict(state_dict, strict=False)
    return LoadReport(sorted(result.missing_keys), sorted(result.unexpected_keys))


def read_checkpoint(path: str) -> dict:
    """``torch.load`` a local file on the CPU; objects beyond tensors and containers (a Lightning
    checkpoint's hyper-parameters, say) are accepted only after a warning."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist (lavis_glscl never downloads weights)")
    if zipfile_is_torchscript(path):  # OpenAI's CLIP files are TorchScript archives
        return torch.jit.load(path, map_location="cpu").state_dict()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only raises UnpicklingError (or RuntimeError) on foreign objects
        logging.warning("%s holds more than tensors (%s); loading it with weights_only=False", path, error)
        return torch.load(path, map_location="cpu", weights_only=False)


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
    if "temporal_embed" in report.missing:
        with torch.no_grad():
            vit.temporal_embed.zero_()
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


def load_model_weights(model: nn.Module, path: str, unused_ok: Sequence[str] = (), missing_ok: Sequence[str] = ()
                       ) -> LoadReport:
    """Weights from a LAVIS checkpoint (``model`` inside), a Lightning checkpoint (``state_dict`` inside, as the
    released GLSCL files) or a bare state dict, loaded by name.

    LAVIS checkpoints load leniently, as LAVIS does (missing keys are logged).  A Lightning checkpoint is held
    to its names: a key the model lacks, except under ``unused_ok`` prefixes (the MAE decoder), or a model key
    it lacks, except under ``missing_ok`` prefixes (heads the release does not have), raises with the lists.
    """
    checkpoint = read_checkpoint(path)
    lightning = isinstance(checkpoint, dict) and "state_dict" in checkpoint and "model" not in checkpoint
    state_dict = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    report = _load(model, state_dict)
    logging.info("Loaded %s: missing %s; unused %s", path, report.missing, report.unused)
    if lightning:
        unexpected = [k for k in report.unused if not k.startswith(tuple(unused_ok))]
        missing = [k for k in report.missing if not k.startswith(tuple(missing_ok))]
        if unexpected or missing:
            raise KeyError(f"{path} does not match {type(model).__name__}: missing {missing}, unused {unexpected}")
    return report
