"""``glscl_retrieval``: LAVIS's retrieval task with a selectable aggregate and a hard-pair accuracy.

Metrics come from LAVIS's own ``RetrievalTask._report_metrics`` (its line in ``evaluate.txt`` is unchanged);
this task adds, on a second line and in the returned dict:

- ``agg_metrics`` from the run option ``agg_metric`` (default LAVIS's ``txt_r_mean``; e.g. ``r_mean``);
- when the evaluated dataset carries ``hard_pairs`` (pairs of gallery items with one caption each whose
  captions differ minimally, e.g. the shapes sets' one-word and direction-only pairs): ``pair_accuracy_i2t``
  (an item scores its own caption above its partner's) and ``pair_accuracy_t2i`` (a caption scores its own
  item above the partner item), in percent, and their mean ``pair_accuracy``.
"""
import json
import logging
import os
from typing import Dict, List

import numpy as np
from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry
from lavis.tasks.retrieval import RetrievalTask


def pair_accuracy(scores_i2t: np.ndarray, scores_t2i: np.ndarray, pairs: List[List[int]],
                  img2txt: Dict[int, List[int]]) -> Dict[str, float]:
    """Two-way choices inside each pair of gallery items ``(a, b)`` with captions ``(ta, tb)``."""
    i2t, t2i = [], []
    for a, b in pairs:
        ta, tb = img2txt[a][0], img2txt[b][0]
        i2t += [scores_i2t[a, ta] > scores_i2t[a, tb], scores_i2t[b, tb] > scores_i2t[b, ta]]
        t2i += [scores_t2i[ta, a] > scores_t2i[ta, b], scores_t2i[tb, b] > scores_t2i[tb, a]]
    result = {"pair_accuracy_i2t": 100.0 * float(np.mean(i2t)), "pair_accuracy_t2i": 100.0 * float(np.mean(t2i))}
    result["pair_accuracy"] = (result["pair_accuracy_i2t"] + result["pair_accuracy_t2i"]) / 2
    return result


@registry.register_task("glscl_retrieval")
class GlsclRetrievalTask(RetrievalTask):
    def evaluation(self, model, data_loader, **kwargs):
        scores_i2t, scores_t2i = model.compute_sim_matrix(data_loader, task_cfg=self.cfg)
        if not is_main_process():
            return None
        dataset = data_loader.dataset
        result = self._report_metrics(scores_i2t, scores_t2i, dataset.txt2img, dataset.img2txt)
        extra = {}
        pairs = getattr(dataset, "hard_pairs", None)
        if pairs:
            extra.update(pair_accuracy(scores_i2t, scores_t2i, pairs, dataset.img2txt))
        metric = self.cfg.get("agg_metric", "txt_r_mean")
        if metric not in {**result, **extra}:
            raise KeyError(f"agg_metric {metric!r} is not among the metrics {sorted({**result, **extra})}")
        extra["agg_metrics"] = {**result, **extra}[metric]
        result.update(extra)
        with open(os.path.join(registry.get_path("output_dir"), "evaluate.txt"), "a") as handle:
            handle.write(json.dumps({"glscl": extra}) + "\n")
        logging.info(result)
        return result
