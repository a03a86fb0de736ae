"""``runner_glscl`` (:mod:`.runner`) and the typed ``run`` block it reads (:mod:`.options`)."""
from lavis_glscl.runners.runner import RunnerGlscl

__all__ = ["RunnerGlscl"]
