"""GLSCL (Global and Local Semantic Completion Learning) as registered parts of Salesforce LAVIS.

Importing this package imports LAVIS, registers LAVIS's runners and LR schedulers (which ``import lavis``
alone does not), then registers lavis_glscl's models, processors, dataset builders, runner and scheduler.

Offline by default: unless the environment says otherwise, importing this package sets ``HF_HUB_OFFLINE=1`` and
``TRANSFORMERS_OFFLINE=1`` before LAVIS imports transformers and huggingface_hub, which read them once, when first
imported.  Every entry point (``python -m lavis_glscl.train``, the console scripts, ``run_lavis_script``) imports this
package first, so the default holds there.  A user's own value of either variable decides both (as huggingface_hub
reads them): ``HF_HUB_OFFLINE=0`` lets LAVIS's own models download from the hub.  Set in a process that had already
imported transformers, they do not take effect.
"""
import importlib.metadata
import os

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "1"
for _variable in OFFLINE_VARIABLES:
    os.environ.setdefault(_variable, _offline)
del _variable, _offline

import lavis  # noqa: F401  (registers LAVIS's models, builders, processors, tasks)
import lavis.common.optims  # noqa: F401  (LAVIS's LR schedulers)
import lavis.runners  # noqa: F401  (runner_base, runner_iter)
from lavis.common.registry import registry

from lavis_glscl import align_bench, cached_runs, optims, processors, runners, tasks  # noqa: F401
from lavis_glscl.datasets import builders, nlvr, vqa  # noqa: F401
from lavis_glscl.models import glscl  # noqa: F401
from lavis_glscl.models.baselines import albef_glscl, dual_encoder, lavis_offline  # noqa: F401
from lavis_glscl.paths import cache_dir

# LAVIS 1.0.2 points cache_root at an internal "/export/home/..." path (LAVIS issues #177, #411, #703);
# where that does not exist, relative dataset paths resolve under lavis_glscl's cache instead.
if not os.path.isdir(registry.get_path("cache_root")):
    registry.mapping["paths"]["cache_root"] = str(cache_dir() / "lavis")
cached_runs.register_resolver()  # ${cached_run:<run yaml>}: the final checkpoint of a run trained once

__version__ = importlib.metadata.version("lavis_glscl")  # the one version string is setup.py's


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
