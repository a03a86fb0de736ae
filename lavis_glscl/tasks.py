"""``glscl_retrieval``: LAVIS's retrieval task with typed scoring options, both scores a model offers (ITC only and
re-ranked), score normalisers for any model, a selectable aggregate and a hard-pair accuracy.

The task reads the run's ``k_test``, ``itm_pairs_per_batch``, ``rerank_add_itc`` and ``retrieval_scorer`` into
:class:`~lavis_glscl.models.scoring.RetrievalOptions`.  A model with ``retrieval_scores`` (GLSCL's, ALBEF pre-training
offline) gives the ITC-only matrices and, unless ``retrieval_scorer: itc``, the ITM re-ranked ones; any other model
(LAVIS's ALBEF/BLIP) its ``compute_sim_matrix``.  ``score_normalizer`` (``inverted_softmax``, with
``score_normalizer_options: {inverted_softmax: {beta: 20}}``) applies to every matrix.

Each scorer's R@K come from LAVIS's own ``RetrievalTask._report_metrics``.  The figures a split reports, one JSON line
of ``evaluate.txt`` per evaluated split (``split`` names it):

- LAVIS's keys (``txt_r1`` ... ``r_mean``) of the scorer in use, named in ``retrieval_scorer``: with ``rerank`` the
  re-ranked scores, with ``itc`` the ITC ones, with ``auto`` (the default) the re-ranked ones only if they beat ITC on
  the run's ``agg_metric`` on the latest validation split (``run.valid_splits``), else ITC;
- the same keys of each scorer with its prefix: ``itc_txt_r5``, ``rerank_txt_r5``, ...;
- ``agg_metrics`` from the run option ``agg_metric`` (default LAVIS's ``txt_r_mean``; e.g. ``r_mean``);
- when the evaluated dataset carries ``hard_pairs`` (pairs of gallery items with one caption each whose captions
  differ minimally, e.g. the shapes sets' one-word and direction-only pairs): ``pair_accuracy_i2t`` (an item scores its
  own caption above its partner's), ``pair_accuracy_t2i`` (a caption scores its own item above the partner item), in
  percent, and their mean ``pair_accuracy``.
"""
import json
import logging
import os
import tempfile
from typing import Dict, List, Optional

import numpy as np
import torch
from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry
from lavis.tasks.retrieval import RetrievalTask

from lavis_glscl.matching import build
from lavis_glscl.models.scoring import RetrievalOptions


def normalizer_options(run_cfg) -> tuple:
    """``(name, options)`` of the run's score normaliser; ``("none", {})`` when there is none."""
    name = run_cfg.get("score_normalizer", None) or "none"
    return name, dict((run_cfg.get("score_normalizer_options", None) or {}).get(name, {}))


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


def lavis_retrieval_metrics(scores_i2t: np.ndarray, scores_t2i: np.ndarray, txt2img, img2txt) -> Dict[str, float]:
    """LAVIS's own R@K (``RetrievalTask._report_metrics``) without the line it appends to ``evaluate.txt``: the task
    writes one line holding every scorer's figures instead."""
    paths = registry.mapping["paths"]
    saved = paths.get("output_dir")
    with tempfile.TemporaryDirectory() as scratch:
        paths["output_dir"] = scratch
        try:
            return RetrievalTask._report_metrics(scores_i2t, scores_t2i, txt2img, img2txt)
        finally:
            paths["output_dir"] = saved


@registry.register_task("glscl_retrieval")
class GlsclRetrievalTask(RetrievalTask):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.options = RetrievalOptions.of(cfg)
        self.agg_metric = cfg.get("agg_metric", None) or "txt_r_mean"
        self.rerank_helps: Optional[bool] = None  # retrieval_scorer auto: decided on a validation split

    def evaluation(self, model, data_loader, **kwargs):
        """Every scorer's metrics on rank 0 (``{scorer: metrics}``), None on other ranks."""
        if hasattr(model, "retrieval_scores"):
            scores = model.retrieval_scores(data_loader, task_cfg=self.options)
        else:
            scores = {"model": model.compute_sim_matrix(data_loader, task_cfg=self.options)}
        if not is_main_process():
            return None
        return {name: self.scorer_metrics(*normalise_scores(*matrices, self.cfg), data_loader.dataset)
                for name, matrices in scores.items()}

    def scorer_metrics(self, scores_i2t: np.ndarray, scores_t2i: np.ndarray, dataset) -> Dict[str, float]:
        result = lavis_retrieval_metrics(scores_i2t, scores_t2i, dataset.txt2img, dataset.img2txt)
        pairs = getattr(dataset, "hard_pairs", None)
        if pairs:
            result.update(pair_accuracy(scores_i2t, scores_t2i, pairs, dataset.img2txt))
        if self.agg_metric not in result:
            raise KeyError(f"agg_metric {self.agg_metric!r} is not among the metrics {sorted(result)}")
        result["agg_metrics"] = result[self.agg_metric]
        return result

    def after_evaluation(self, val_result, split_name=None, **kwargs):
        """The split's figures (module docstring), written as one line of ``evaluate.txt``."""
        if val_result is None:
            return None
        scorer = self.scorer_in_use(val_result, split_name)
        result = {"split": split_name, **val_result[scorer], "retrieval_scorer": scorer}
        for name, metrics in val_result.items():
            if name in ("itc", "rerank"):  # a LAVIS model's own matrices ("model") have no name of their own
                result.update({f"{name}_{key}": value for key, value in metrics.items() if key != "agg_metrics"})
        with open(os.path.join(registry.get_path("output_dir"), "evaluate.txt"), "a") as handle:
            handle.write(json.dumps(result) + "\n")
        logging.info(result)
        return result

    def scorer_in_use(self, val_result: Dict[str, dict], split_name: Optional[str]) -> str:
        """Which scorer's figures are the split's main ones (see the module docstring)."""
        if len(val_result) == 1 or self.options.retrieval_scorer != "auto":
            return next(iter(val_result)) if len(val_result) == 1 else self.options.retrieval_scorer
        if split_name in (self.cfg.get("valid_splits", None) or []):
            self.rerank_helps = val_result["rerank"]["agg_metrics"] > val_result["itc"]["agg_metrics"]
            logging.info("retrieval_scorer auto: on %s the re-rank %s ITC (%s %.2f against %.2f): %s from now on",
                         split_name, "beats" if self.rerank_helps else "does not beat", self.agg_metric,
                         val_result["rerank"]["agg_metrics"], val_result["itc"]["agg_metrics"],
                         "re-ranked" if self.rerank_helps else "ITC only")
        elif self.rerank_helps is None:
            logging.info("retrieval_scorer auto: no validation split has shown the re-rank to help; %s reports ITC "
                         "only as its main figures (both sets are reported)", split_name)
        return "rerank" if self.rerank_helps else "itc"
