"""Stopping a run on a plateau instead of after a fixed number of steps (``run.plateau`` of ``runner_glscl``).

::

    run:
      plateau: {metric: train_loss, window: 3, min_delta: 0.02, relative: true}

The metric is checked once per epoch (``iters_per_epoch`` sets how often): ``train_<key>`` is the epoch's mean of a
training loss (``train_loss``, ``train_loss_itc``, ...), ``<split>_<key>`` a validation split's metric
(``val_agg_metrics``, ``val_txt_r_mean``).  Losses are minimised, other metrics maximised.  The run stops after the
first check at which the best of the last ``window`` checks does not beat the best before them by ``min_delta``
(a fraction of that earlier best with ``relative: true``); ``max_epoch`` stays the upper bound.
"""
from dataclasses import dataclass, field
from typing import List, Mapping, Optional

from lavis_glscl.typed_options import build_dataclass


@dataclass
class PlateauRule:
    metric: str
    window: int = 3
    min_delta: float = 0.0
    relative: bool = False
    history: List[float] = field(default_factory=list, init=False)

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"plateau.window must be at least 1, got {self.window}")
        if "_" not in self.metric:
            raise ValueError(f"plateau.metric must be train_<loss key> or <split>_<metric>, got {self.metric!r}")

    @classmethod
    def from_config(cls, options: Optional[Mapping]) -> Optional["PlateauRule"]:
        return build_dataclass(cls, options, "run.plateau") if options else None

    @property
    def split(self) -> str:
        return self.metric.split("_", 1)[0]

    @property
    def key(self) -> str:
        return self.metric.split("_", 1)[1]

    @property
    def minimise(self) -> bool:
        return "loss" in self.key

    def _best(self, values: List[float]) -> float:
        return min(values) if self.minimise else max(values)

    def update(self, value: float) -> bool:
        """Record this check's value; True when the run has reached the plateau."""
        self.history.append(float(value))
        if len(self.history) <= self.window:
            return False
        before = self._best(self.history[:-self.window])
        recent = self._best(self.history[-self.window:])
        needed = self.min_delta * abs(before) if self.relative else self.min_delta
        gain = before - recent if self.minimise else recent - before
        return gain < needed
