"""GLSCL (Global and Local Semantic Completion Learning) as registered parts of Salesforce LAVIS.

Importing this package imports LAVIS, registers LAVIS's runners and LR schedulers (which ``import lavis``
alone does not), then registers lavis_glscl's models, processors, dataset builders, runner and scheduler.
"""
import os

import lavis  # noqa: F401  (registers LAVIS's models, builders, processors, tasks)
import lavis.common.optims  # noqa: F401  (LAVIS's LR schedulers)
import lavis.runners  # noqa: F401  (runner_base, runner_iter)
from lavis.common.registry import registry

from lavis_glscl import align_bench, optims, processors, runners, tasks  # noqa: F401
from lavis_glscl.datasets import builders, vqa  # noqa: F401
from lavis_glscl.models import albef_glscl, glscl, lavis_baselines, matching_dual_encoder  # noqa: F401
from lavis_glscl.paths import cache_dir

# LAVIS 1.0.2 points cache_root at an internal "/export/home/..." path (LAVIS issues #177, #411, #703);
# where that does not exist, relative dataset paths resolve under lavis_glscl's cache instead.
if not os.path.isdir(registry.get_path("cache_root")):
    registry.mapping["paths"]["cache_root"] = str(cache_dir() / "lavis")

__version__ = "0.1.0"


class ModelZoo(dict):
    """``{model name: [model types]}`` of every model lavis_glscl registers; prints as a table."""

    def __str__(self):
        width = max(len(name) for name in self)
        rows = [f"{'Architectures':<{width}}  Types", "=" * (width + 40)]
        rows += [f"{name:<{width}}  {', '.join(types)}" for name, types in self.items()]
        return "\n".join(rows)


def model_zoo() -> ModelZoo:
    """Registered lavis_glscl models and their types (``lavis.models.model_zoo`` is an import-time snapshot that
    never shows plugins)."""
    models = registry.mapping["model_name_mapping"]
    return ModelZoo({name: sorted(cls.PRETRAINED_MODEL_CONFIG_DICT) for name, cls in sorted(models.items())
                     if cls.__module__.startswith("lavis_glscl")})
