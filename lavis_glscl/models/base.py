"""What every lavis_glscl model shares: construction from a yaml of keyword arguments, checkpoint loading,
frozen parameters."""
import logging
from typing import Dict, Iterable, List, Sequence, Tuple

from lavis.models.base_model import BaseModel
from omegaconf import OmegaConf
from torch import nn

from lavis_glscl.models.checkpoints import load_model_weights

CHECKPOINT_KEYS = ("pretrained", "finetuned", "load_finetuned", "trust_checkpoint")
LAVIS_ONLY_KEYS = ("arch", "model_type", "load_pretrained")


class ConfiguredModel(BaseModel):
    """A LAVIS model whose config's ``model`` block holds its constructor's keyword arguments, plus LAVIS's
    ``pretrained``/``finetuned``/``load_finetuned`` checkpoint keys and ``trust_checkpoint`` (unpickle that
    checkpoint in full, objects beyond the allow-list of ``read_checkpoint`` included)."""

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
        model_type = options.get("model_type")
        for key in LAVIS_ONLY_KEYS:
            options.pop(key, None)
        model = cls.build(options)
        model.freeze_unreached(model.reached_parameters())
        path = checkpoint["finetuned"] if checkpoint["load_finetuned"] else checkpoint["pretrained"]
        if path:
            model.load_checkpoint(path, trust_checkpoint=bool(checkpoint["trust_checkpoint"]))
        elif model_type == "base" and model.random_towers:
            logging.warning("%s base: the %s encoder starts from random weights, unlike the released recipe (CLIP "
                            "ViT-B/16 and roberta-base): set model.vision_init and model.text.path with "
                            "text.pretrained: true, or model.pretrained", cls.__name__,
                            " and ".join(model.random_towers))
        return model

    @classmethod
    def build(cls, options: dict) -> "ConfiguredModel":
        """The model of a yaml ``model`` block's own options (LAVIS's keys removed)."""
        return cls(**options)

    # Encoders that start from random weights ("vision", "text"); models that load pretrained towers narrow it.
    random_towers: Tuple[str, ...] = ()

    # Checkpoint keys a Lightning (released) checkpoint may hold that this model has no place for, and model
    # keys it may lack; see lavis_glscl.models.checkpoints.load_model_weights.
    RELEASED_UNUSED_OK: Tuple[str, ...] = ()
    RELEASED_MISSING_OK: Tuple[str, ...] = ()

    def load_checkpoint(self, url_or_filename, trust_checkpoint: bool = False):
        """A local LAVIS, Lightning or bare checkpoint; returns the missing/unused key report.  Only with
        ``trust_checkpoint`` may the file hold objects that need full unpickling (which runs their code)."""
        return load_model_weights(self, url_or_filename, self.RELEASED_UNUSED_OK, self.RELEASED_MISSING_OK,
                                  trust_checkpoint)

    def freeze(self, prefixes: Iterable[str]) -> None:
        """Stop training parameters whose names start with any of ``prefixes``; HF's text pooler is always frozen
        (never used, and DDP would otherwise wait for its gradients)."""
        prefixes = ("text_transformer.pooler.", *prefixes)
        for name, param in self.named_parameters():
            if name.startswith(prefixes):
                param.requires_grad_(False)

    def reached_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters the model's active objectives train; models with switchable objectives narrow it."""
        return self.parameters()

    def freeze_unreached(self, reached: Iterable[nn.Parameter]) -> List[str]:
        """Freeze every trainable parameter outside ``reached`` (those the active objectives' passes use) and log
        their names once.  DDP waits for a gradient of every trainable parameter in every step, so a parameter no
        loss reaches must not be trainable; ``find_unused_parameters`` would hide it at a cost per step."""
        reached_ids = {id(param) for param in reached}
        unreached = [name for name, param in self.named_parameters()
                     if param.requires_grad and id(param) not in reached_ids]
        for name, param in self.named_parameters():
            if name in unreached:
                param.requires_grad_(False)
        if unreached:
            logging.info("%s: frozen, as no active objective reaches them: %s", type(self).__name__,
                         ", ".join(collapse_names(unreached, [name for name, _ in self.named_parameters()])))
        return unreached


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
