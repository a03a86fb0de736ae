"""What every lavis_glscl model shares: construction from a yaml of keyword arguments, checkpoint loading,
frozen parameters."""
import logging
from typing import Dict, Iterable, List, Optional, Tuple

from lavis.models.base_model import BaseModel
from omegaconf import OmegaConf
from torch import nn

from lavis_glscl.models.weights import DEFAULT_MIN_COVERAGE, collapse_names, load_model_weights
from lavis_glscl.typed_options import check_value

# LAVIS's checkpoint keys and ours, with their types
CHECKPOINT_KEYS = {"pretrained": Optional[str], "finetuned": Optional[str], "load_finetuned": Optional[bool],
                   "trust_checkpoint": Optional[bool], "min_checkpoint_coverage": Optional[float]}
LAVIS_ONLY_KEYS = ("arch", "model_type", "load_pretrained")


class ConfiguredModel(BaseModel):
    """A LAVIS model whose config's ``model`` block holds its constructor's keyword arguments, plus LAVIS's
    ``pretrained``/``finetuned``/``load_finetuned`` checkpoint keys, ``trust_checkpoint`` (load that checkpoint even
    where reading it runs code: pickled objects beyond the allow-list of ``read_checkpoint``, TorchScript code) and
    ``min_checkpoint_coverage`` (the share of the model's parameters the checkpoint must fill, default 0.5)."""

    PRETRAINED_MODEL_CONFIG_DICT: Dict[str, str] = {}

    @classmethod
    def default_config_path(cls, model_type):
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise KeyError(f"unknown model_type {model_type!r} for {cls.__name__}; "
                           f"known: {sorted(cls.PRETRAINED_MODEL_CONFIG_DICT)}")
        return cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def split_options(cls, cfg, resolve_checkpoints: bool = True) -> Tuple[dict, dict]:
        """A yaml ``model`` block as ``(constructor options, checkpoint options)``: LAVIS's own keys (``arch``,
        ``model_type``, ...) dropped, the checkpoint keys type-checked.  ``resolve_checkpoints=False`` leaves their
        interpolations unresolved (``${cached_run:...}`` would train the run it names)."""
        cfg = cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg)
        raw = OmegaConf.to_container(cfg, resolve=False)
        checkpoint = {key: check_value(cfg.get(key) if resolve_checkpoints else raw.get(key), kind, f"model.{key}")
                      for key, kind in CHECKPOINT_KEYS.items()}
        checkpoint["model_type"] = raw.get("model_type")
        options = {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                   for key, value in ((key, cfg[key]) for key in raw if key not in CHECKPOINT_KEYS)}
        for key in LAVIS_ONLY_KEYS:
            options.pop(key, None)
        return options, checkpoint

    @classmethod
    def check_options(cls, cfg) -> None:
        """Refuse, naming the key, what :meth:`from_config` would refuse, without building anything."""
        cls.typed_options(cls.split_options(cfg, resolve_checkpoints=False)[0])

    @classmethod
    def adapt_to_processors(cls, cfg) -> None:
        """Settle, in the run's config, what this model takes from the datasets' processors (nothing by default)."""

    @classmethod
    def typed_options(cls, options: dict):
        """The constructor options read into the model's typed config (models without one take them as given)."""
        return options

    @classmethod
    def from_config(cls, cfg):
        options, checkpoint = cls.split_options(cfg)
        model = cls.build(options)
        model.freeze_unreached(model.reached_parameters())
        path = checkpoint["finetuned"] if checkpoint["load_finetuned"] else checkpoint["pretrained"]
        if path:
            coverage = checkpoint["min_checkpoint_coverage"]
            model.load_checkpoint(path, trust_checkpoint=bool(checkpoint["trust_checkpoint"]),
                                  min_coverage=DEFAULT_MIN_COVERAGE if coverage is None else coverage)
        elif checkpoint["model_type"] == "base" and model.random_towers:
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
    # keys it may lack; see lavis_glscl.models.weights.load_model_weights.
    RELEASED_UNUSED_OK: Tuple[str, ...] = ()
    RELEASED_MISSING_OK: Tuple[str, ...] = ()

    def load_checkpoint(self, url_or_filename, trust_checkpoint: bool = False,
                        min_coverage: float = DEFAULT_MIN_COVERAGE):
        """A local LAVIS, Lightning or bare checkpoint; returns the missing/unused key report.  Only with
        ``trust_checkpoint`` may the file hold what only code can read; a file filling less than ``min_coverage`` of
        the model's parameters is refused."""
        return load_model_weights(self, url_or_filename, self.RELEASED_UNUSED_OK, self.RELEASED_MISSING_OK,
                                  trust_checkpoint, min_coverage)

    def freeze(self, prefixes: Iterable[str]) -> None:
        """Stop training parameters whose names start with any of ``prefixes``; HF's text pooler is always frozen
        (never used, and DDP would otherwise wait for its gradients)."""
        prefixes = ("text_transformer.pooler.", *prefixes)
        for name, param in self.named_parameters():
            if name.startswith(prefixes):
                param.requires_grad_(False)

    def skips_parameters_on_some_batches(self) -> bool:
        """Whether some batches leave trainable parameters without a gradient; under DDP the runner then has each
        step's unused parameters found (``find_unused_parameters``)."""
        return False

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
