"""The glscl_retrieval task's additions to LAVIS's retrieval metrics: pair accuracy, ITC-only and re-ranked figures,
the re-rank decided on a validation split, score normalisers by name."""
import json

import numpy as np
import pytest
import torch

from lavis_glscl.matching import inverted_softmax
from lavis_glscl.tasks import normalise_scores, pair_accuracy


def test_pair_accuracy_counts_both_choices_of_each_pair_in_each_direction():
    # items 0/1 form a pair with captions 0/1; items 2/3 with captions 3/2
    img2txt = {0: [0], 1: [1], 2: [3], 3: [2]}
    i2t = np.array([[0.9, 0.1, 0, 0],   # item 0 prefers its caption 0: right
                    [0.8, 0.2, 0, 0],   # item 1 prefers caption 0 over its own 1: wrong
                    [0, 0, 0.3, 0.7],   # item 2 prefers its caption 3: right
                    [0, 0, 0.6, 0.4]])  # item 3 prefers its caption 2: right
    t2i = np.array([[0.5, 0.4, 0, 0],   # caption 0 prefers item 0: right
                    [0.5, 0.4, 0, 0],   # caption 1 prefers item 0 over its item 1: wrong
                    [0, 0, 0.1, 0.2],   # caption 2 prefers item 3: right
                    [0, 0, 0.1, 0.2]])  # caption 3 prefers item 3 over its item 2: wrong
    result = pair_accuracy(i2t, t2i, [[0, 1], [2, 3]], img2txt)
    assert result == pytest.approx({"pair_accuracy_i2t": 75.0, "pair_accuracy_t2i": 50.0, "pair_accuracy": 62.5})


def lavis_metrics(i2t, t2i, dataset, tmp_path):
    """LAVIS's own retrieval metrics of two score matrices (its evaluator appends a line under output_dir)."""
    from lavis.common.registry import registry
    from lavis.tasks.retrieval import RetrievalTask

    registry.mapping["paths"]["output_dir"] = str(tmp_path / "reference")
    (tmp_path / "reference").mkdir(exist_ok=True)
    return RetrievalTask._report_metrics(i2t, t2i, dataset.txt2img, dataset.img2txt)


def run_options(**options):
    from omegaconf import OmegaConf

    return OmegaConf.create({"k_test": 3, "itm_pairs_per_batch": 5, **options})


@pytest.mark.parametrize("normalizer", ["none", "inverted_softmax"])
def test_the_task_reports_itc_only_and_re_ranked_figures_each_from_lavis_evaluator(tiny, tmp_path, monkeypatch,
                                                                                    normalizer):
    import torch
    import torch.nn.functional as F
    from helpers import ListLoader
    from lavis.common.registry import registry

    from lavis_glscl.matching import inverted_softmax
    from lavis_glscl.tasks import GlsclRetrievalTask

    model = tiny("glscl_retrieval").eval()
    images = torch.randn(6, 3, 32, 32)
    loader = ListLoader(images, [f"caption number {i}" for i in range(6)])
    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(tmp_path))
    with torch.no_grad():
        text = model.tokenize(loader.dataset.text)
        text_feats = F.normalize(model.text_embedding(model.encode_text(text.input_ids, text.attention_mask)), dim=-1)
        image_feats = F.normalize(model.image_embedding(model.encode_image(images.unsqueeze(1)), 1), dim=-1)
        itc = (image_feats @ text_feats.t()).numpy()
        reranked = model.compute_sim_matrix(loader, {"k_test": 3, "itm_pairs_per_batch": 5})
    def normalise(scores):
        return scores if normalizer == "none" else inverted_softmax(torch.from_numpy(scores), 9.0).numpy()

    task = GlsclRetrievalTask(run_options(retrieval_scorer="rerank", score_normalizer=normalizer,
                                          score_normalizer_options={"inverted_softmax": {"beta": 9.0}}))
    with torch.no_grad():
        result = task.after_evaluation(task.evaluation(model, loader), split_name="test")
    expected_itc = lavis_metrics(normalise(itc), normalise(np.ascontiguousarray(itc.T)), loader.dataset, tmp_path)
    expected_rerank = lavis_metrics(normalise(reranked[0]), normalise(reranked[1]), loader.dataset, tmp_path)
    for key in ("txt_r1", "txt_r5", "img_r1", "img_r5", "r_mean"):
        assert result[f"itc_{key}"] == pytest.approx(expected_itc[key])
        assert result[f"rerank_{key}"] == result[key] == pytest.approx(expected_rerank[key])
    assert result["retrieval_scorer"] == "rerank" and result["split"] == "test"
    written = (tmp_path / "evaluate.txt").read_text().splitlines()
    assert len(written) == 1 and json.loads(written[0]) == result


def test_auto_re_ranks_only_after_a_validation_split_showed_it_helps(tmp_path, monkeypatch):
    from lavis.common.registry import registry

    from lavis_glscl.tasks import GlsclRetrievalTask

    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(tmp_path))

    def figures(itc, rerank):
        return {"itc": {"txt_r_mean": itc, "agg_metrics": itc}, "rerank": {"txt_r_mean": rerank, "agg_metrics": rerank}}

    task = GlsclRetrievalTask(run_options(valid_splits=["val"]))
    assert task.after_evaluation(figures(50.0, 60.0), split_name="test")["retrieval_scorer"] == "itc"  # no evidence
    assert task.after_evaluation(figures(50.0, 60.0), split_name="val")["retrieval_scorer"] == "rerank"
    test = task.after_evaluation(figures(70.0, 40.0), split_name="test")
    assert test["retrieval_scorer"] == "rerank" and test["agg_metrics"] == 40.0  # decided on val, not on test
    assert task.after_evaluation(figures(50.0, 45.0), split_name="val")["retrieval_scorer"] == "itc"
    assert task.after_evaluation(figures(10.0, 90.0), split_name="test")["retrieval_scorer"] == "itc"
    fixed = GlsclRetrievalTask(run_options(valid_splits=["val"], retrieval_scorer="rerank"))
    assert fixed.after_evaluation(figures(50.0, 45.0), split_name="val")["retrieval_scorer"] == "rerank"
    assert [json.loads(line)["split"] for line in (tmp_path / "evaluate.txt").read_text().splitlines()] == \
        ["test", "val", "test", "val", "test", "val"]


def test_itc_scoring_skips_the_re_rank_and_lavis_models_report_their_own_matrices(tiny, tmp_path, monkeypatch):
    import torch
    from helpers import ListLoader
    from lavis.common.registry import registry

    from lavis_glscl.models import scoring
    from lavis_glscl.tasks import GlsclRetrievalTask

    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(tmp_path))
    loader = ListLoader(torch.randn(6, 3, 32, 32), [f"caption number {i}" for i in range(6)])
    monkeypatch.setattr(scoring, "itm_rerank",
                        lambda *args, **kwargs: pytest.fail("re-ranked under retrieval_scorer itc"))
    task = GlsclRetrievalTask(run_options(retrieval_scorer="itc"))
    with torch.no_grad():
        result = task.after_evaluation(task.evaluation(tiny("glscl_retrieval").eval(), loader), split_name="test")
    assert result["retrieval_scorer"] == "itc" and result["itc_txt_r5"] == result["txt_r5"]
    assert not any(key.startswith("rerank_") for key in result)
    monkeypatch.undo()
    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(tmp_path))
    albef = tiny("albef_retrieval_offline").eval()  # LAVIS's own compute_sim_matrix
    with torch.no_grad():
        expected = lavis_metrics(*albef.compute_sim_matrix(loader, run_options()), loader.dataset, tmp_path)
        result = GlsclRetrievalTask(run_options()).after_evaluation(
            GlsclRetrievalTask(run_options()).evaluation(albef, loader), split_name="test")
    assert result["retrieval_scorer"] == "model" and result["txt_r5"] == pytest.approx(expected["txt_r5"])
    assert not any(key.startswith(("itc_", "rerank_")) for key in result)


def test_score_normaliser_names_are_checked():
    scores = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    unchanged = normalise_scores(scores, scores.T, {})
    assert np.array_equal(unchanged[0], scores) and np.array_equal(unchanged[1], scores.T)
    options = {"score_normalizer": "inverted_softmax", "score_normalizer_options": {"inverted_softmax": {"beta": 7.0}}}
    expected = inverted_softmax(torch.from_numpy(scores), 7.0).numpy()
    assert np.allclose(normalise_scores(scores, scores.T, options)[0], expected)
    with pytest.raises(ValueError, match="known names"):
        normalise_scores(scores, scores.T, {"score_normalizer": "inverse_softmax"})
    with pytest.raises(ValueError, match="querybank"):
        normalise_scores(scores, scores.T, {"score_normalizer": "qb_norm"})


def test_agg_metric_names_the_figure_reported_as_agg_metrics(tmp_path, monkeypatch):
    """``run.agg_metric: img_r1`` (default ``txt_r_mean``): two images, two captions; image 1 ranks its caption second
    (text R@1 50, R@5 and R@10 100: text mean 83.3), each caption finds its image first (image R@1 100)."""
    from lavis.common.registry import registry

    from lavis_glscl.tasks import GlsclRetrievalTask

    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(tmp_path))
    dataset = type("Gallery", (), {"txt2img": {0: 0, 1: 1}, "img2txt": {0: [0], 1: [1]}})()
    i2t = np.array([[1.0, 0.0], [1.0, 0.0]])
    t2i = np.array([[1.0, 0.0], [0.0, 1.0]])
    chosen = GlsclRetrievalTask(run_options(agg_metric="img_r1")).scorer_metrics(i2t, t2i, dataset)
    assert chosen["txt_r1"] == pytest.approx(50.0) and chosen["agg_metrics"] == pytest.approx(100.0)
    default = GlsclRetrievalTask(run_options()).scorer_metrics(i2t, t2i, dataset)
    assert default["agg_metrics"] == pytest.approx(250.0 / 3)
