"""``align_bench``: GLSCL's cross-modal alignment probe (ALIGN-BENCH) as a LAVIS task.

For each image-caption pair the model runs its fusion once; the last fusion layer's text-to-image
*cross*-attention (the released scripts read the self-attention by mistake), max over heads, is each text token's
map over the patches (:func:`lavis_glscl.align_bench.attention.cross_attention_probe`: GLSCL's own, or LAVIS's
ALBEF/BLIP models read from their BERT).  The text CLS token's map is scored against the union of
the image's regions (global), the sum of a phrase's sub-token maps against that phrase's regions (local); each
with boxes and with pixel masks (:mod:`lavis_glscl.align_bench.scoring`).  The patch grid is laid over the whole
image, as the eval processors resize without cropping (the released protocol centre-crops to 288 px).

``evaluate.txt`` gets one line: the four scores in percent, each beside the score uniform attention gets on the
same regions (``uniform_*``), their means, the numbers of images and phrases scored, and ``agg_metrics`` (the run
option ``agg_metric``, default ``mean``).  Run option ``max_box_fraction`` (default 0.9): larger boxes are left out
of the global region.
"""
import json
import logging
import os
from collections import Counter

from lavis.common.dist_utils import is_main_process
from lavis.common.registry import registry
from lavis.tasks.base_task import BaseTask

from lavis_glscl.align_bench.attention import cross_attention_probe
from lavis_glscl.align_bench.scoring import MAX_BOX_FRACTION, score_image, summarize
from lavis_glscl.distributed import gather_objects


@registry.register_task("align_bench")
class AlignBenchTask(BaseTask):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    @classmethod
    def setup_task(cls, cfg):
        return cls(cfg=cfg.run_cfg)

    def evaluation(self, model, data_loader, **kwargs):
        """Every rank scores its share of the bench; rank 0 gets ``[(index, scores, skipped), ...]`` of all."""
        probe = cross_attention_probe(model)
        max_box_fraction = float(self.cfg.get("max_box_fraction", MAX_BOX_FRACTION))
        results = []
        for samples in data_loader:
            maps = probe(samples["image"], samples["text_input"])
            attention = maps.attention.float().cpu()
            for row, index in enumerate(samples["index"]):
                scores, skipped = score_image(
                    attention[row].reshape(attention.shape[1], maps.grid_size, maps.grid_size),
                    maps.offsets[row].tolist(), samples["text_input"][row], samples["annotation"][row],
                    samples["image_size"][row], max_box_fraction)
                results.append((index, scores, skipped))
        gathered = [result for part in gather_objects(results) for result in part]
        if not is_main_process():
            return None
        # A distributed sampler pads the last rank's share with repeats.
        return list({index: (index, scores, skipped) for index, scores, skipped in gathered}.values())

    def after_evaluation(self, val_result, split_name=None, **kwargs):
        metrics = summarize([scores for _, scores, _ in val_result])
        skipped = sum((Counter(s) for _, _, s in val_result), Counter())
        metrics["num_images"] = len(val_result)
        metrics["num_phrases"] = sum(len(scores["local_box"]) for _, scores, _ in val_result)
        if skipped:
            logging.warning("ALIGN-BENCH %s: not scored: %s", split_name,
                            ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())))
        metric = self.cfg.get("agg_metric", "mean")
        if metric not in metrics:
            raise KeyError(f"agg_metric {metric!r} is not among the metrics {sorted(metrics)}")
        metrics = {"split": split_name, **metrics, "agg_metrics": metrics[metric]}
        with open(os.path.join(registry.get_path("output_dir"), "evaluate.txt"), "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        logging.info(metrics)
        return metrics
