"""``glscl_retrieval``: LAVIS's retrieval task with typed scoring options, score normalisers for any model, a
selectable aggregate and a hard-pair accuracy.

The task reads the run's ``k_test``, ``itm_pairs_per_batch`` and ``rerank_add_itc`` into
:class:`~lavis_glscl.models.scoring.RetrievalOptions` for the model's ``compute_sim_matrix`` (LAVIS's own ALBEF/BLIP
models read ``k_test`` from it as from a run config), then applies ``score_normalizer`` (``inverted_softmax``, with
``score_normalizer_options: {inverted_softmax: {beta: 20}}``) to whatever matrices the model returned.

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
import torch
from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry
from lavis.tasks.retrieval import RetrievalTask

from lavis_glscl.matching import build
from lavis_glscl.models.scoring import RetrievalOptions

# the score normaliser's run options, and the names they had before "re-rank" came to mean ITM re-scoring only
NORMALIZER_KEYS = {"score_normalizer": "rerank", "score_normalizer_options": "rerank_options"}


def normalizer_options(run_cfg) -> tuple:
    """``(name, options)`` of the run's score normaliser; ``("none", {})`` when there is none."""
    values = {}
    for key, old_key in NORMALIZER_KEYS.items():
        values[key] = run_cfg.get(key, None)
        if values[key] is None and run_cfg.get(old_key, None) is not None:
            logging.warning("run.%s is now run.%s (re-rank means ITM re-scoring of the shortlist)", old_key, key)
            values[key] = run_cfg.get(old_key)
    name = values["score_normalizer"] or "none"
    return name, dict((values["score_normalizer_options"] or {}).get(name, {}))


def normalise_scores(scores_i2t: np.ndarray, scores_t2i: np.ndarray, run_cfg):
    """Both score matrices (queries are rows) through the run's score normaliser."""
    name, options = normalizer_options(run_cfg)
    if name == "qb_norm":
        raise ValueError("score normaliser 'qb_norm' needs the scores of a querybank of training queries, which an "
                         "evaluation run does not have; call lavis_glscl.matching.querybank_normalise directly")
    normalise = build("score_normalizer", name, **options)
    return tuple(normalise(torch.from_numpy(np.asarray(scores))).numpy() for scores in (scores_i2t, scores_t2i))


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
        scores_i2t, scores_t2i = model.compute_sim_matrix(data_loader, task_cfg=RetrievalOptions.of(self.cfg))
        if not is_main_process():
            return None
        scores_i2t, scores_t2i = normalise_scores(scores_i2t, scores_t2i, self.cfg)
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
