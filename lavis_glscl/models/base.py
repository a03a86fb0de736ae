"""What every lavis_glscl model shares: construction from a yaml of keyword arguments, checkpoint loading,
frozen parameters."""
from typing import Dict, Iterable, Tuple

from lavis.models.base_model import BaseModel
from omegaconf import OmegaConf

from lavis_glscl.models.checkpoints import load_model_weights

CHECKPOINT_KEYS = ("pretrained", "finetuned", "load_finetuned")
LAVIS_ONLY_KEYS = ("arch", "model_type", "load_pretrained")


class ConfiguredModel(BaseModel):
    """A LAVIS model whose config's ``model`` block holds its constructor's keyword arguments, plus LAVIS's
    ``pretrained``/``finetuned``/``load_finetuned`` checkpoint keys."""

    PRETRAINED_MODEL_CONFIG_DICT: Dict[str, str] = {}

    @classmethod
    def default_config_path(cls, model_type):
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise KeyError(f"unknown model_type {model_type!r} for {cls.__name__}; "
                           f"known: {sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)}")
        return cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def from_config(cls, cfg):
        options = OmegaConf.to_container(OmegaConf.create(cfg) if not OmegaConf.is_config(cfg) else cfg, resolve=True)
        checkpoint = {key: options.pop(key, None) for key in CHECKPOINT_KEYS}
        for key in LAVIS_ONLY_KEYS:
            options.pop(key, None)
        model = cls(**options)
        path = checkpoint["finetuned"] if checkpoint["load_finetuned"] else checkpoint["pretrained"]
        if path:
            model.load_checkpoint(path)
        return model

    # Checkpoint keys a Lightning (released) checkpoint may hold that this model has no place for, and model
    # keys it may lack; see lavis_glscl.models.checkpoints.load_model_weights.
    RELEASED_UNUSED_OK: Tuple[str, ...] = ()
    RELEASED_MISSING_OK: Tuple[str, ...] = ()

    def load_checkpoint(self, url_or_filename):
        """A local LAVIS, Lightning or bare checkpoint; returns the missing/unused key report."""
        return load_model_weights(self, url_or_filename, self.RELEASED_UNUSED_OK, self.RELEASED_MISSING_OK)

    def freeze(self, prefixes: Iterable[str]) -> None:
        """Stop training parameters whose names start with any of ``prefixes``; HF's text pooler is always frozen
        (never used, and DDP would otherwise wait for its gradients)."""
        prefixes = ("text_transformer.pooler.", *prefixes)
        for name, param in self.named_parameters():
            if name.startswith(prefixes):
                param.requires_grad_(False)
