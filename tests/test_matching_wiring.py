"""The matching toolkit wired into models and evaluation, and the comparison command."""
import json

import numpy as np
import pytest
import torch
from helpers import tiny_batch

from lavis_glscl.compare import read_metrics
from lavis_glscl.matching import inverted_softmax, scan_similarity, vse_plus_plus_loss
from lavis_glscl.tasks import normalise_scores


@pytest.mark.parametrize("loss", ["infonce", "vse++", "sum_margin", "knn_margin", "unified"])
def test_dual_encoder_trains_with_every_loss(tiny, loss):
    model = tiny("matching_dual_encoder", loss=loss)
    out = model(tiny_batch())
    assert set(out.keys()) == {"loss", "loss_itc"} and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.vision_proj.weight.grad.abs().sum() > 0


def test_dual_encoder_loss_is_the_toolkit_loss_on_cosines(tiny):
    model = tiny("matching_dual_encoder", loss="vse++").eval()
    batch = tiny_batch()
    images, _ = model.encode_image(batch["image"].unsqueeze(1))
    texts, _ = model.encode_text(model.tokenize(batch["text_input"]))
    expected = vse_plus_plus_loss(images @ texts.t(), margin=0.2)
    assert model(batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)


@torch.no_grad()
def test_dual_encoder_scores_add_the_weighted_head_to_the_cosines(tiny):
    from helpers import ListLoader

    model = tiny("matching_dual_encoder", similarity_head="scan", head_weight=0.5).eval()
    images = torch.randn(4, 3, 32, 32)
    texts = ["a red circle", "blue", "a green square above it", "two things"]
    i2t, t2i = model.compute_sim_matrix(ListLoader(images, texts), {"k_test": 2})
    image_embeds, patches = model.encode_image(images.unsqueeze(1))
    text = model.tokenize(texts)
    text_embeds, words = model.encode_text(text)
    raw = image_embeds @ text_embeds.t() + 0.5 * scan_similarity(patches, words, None, text.maskable)
    torch.testing.assert_close(torch.from_numpy(i2t), raw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(t2i), raw.t(), atol=1e-5, rtol=1e-4)


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


def test_read_metrics_takes_the_last_line_of_the_split_and_its_numbers(tmp_path):
    (tmp_path / "job").mkdir()
    lines = [{"split": "val", "txt_r1": 30.0}, {"split": "test", "txt_r1": 10.0, "retrieval_scorer": "itc"},
             {"split": "val", "txt_r1": 40.0}]
    (tmp_path / "job" / "evaluate.txt").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_metrics(tmp_path) == {"txt_r1": 10.0}
    assert read_metrics(tmp_path, split="val") == {"txt_r1": 40.0}
    (tmp_path / "lavis").mkdir()  # LAVIS's retrieval and VQA tasks write one line without a split: the split evaluated
    (tmp_path / "lavis" / "evaluate.txt").write_text(json.dumps({"agg_metrics": 60.0, "yes/no": 80.0}) + "\n")
    assert read_metrics(tmp_path / "lavis") == {"agg_metrics": 60.0, "yes/no": 80.0}
    (tmp_path / "classification").mkdir()  # LAVIS's classification task nests the metrics under the split
    (tmp_path / "classification" / "evaluate.txt").write_text(json.dumps({"test": {"agg_metrics": 0.5, "acc": 0.5}}))
    assert read_metrics(tmp_path / "classification") == {"agg_metrics": 0.5, "acc": 0.5}


@pytest.mark.slow
def test_compare_command_trains_evaluates_tests_and_tabulates(tmp_path):
    from helpers import TINY_RUN, align_bench_tiny_yaml, run_module

    config = tmp_path / "compare.yaml"
    config.write_text(f"""
compare:
  base: {TINY_RUN}
  output_dir: {tmp_path / 'out'}
  metrics: [txt_r1, img_r5, global_box]
  tests: [{align_bench_tiny_yaml(tmp_path, 'unused', arch='blip_retrieval_offline')}]
  runs:
    - name: GLSCL
      options: []
      evaluations:
        - name: GLSCL + inverted softmax
          options: [run.task=glscl_retrieval, run.score_normalizer=inverted_softmax]
    - name: GLSCL without MGSC and MLTC
      options: [model.loss_weights.mgsc=0, model.loss_weights.mltc=0]
""")
    result = run_module("lavis_glscl.compare", ["--cfg-path", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in rows] == ["GLSCL", "GLSCL + inverted softmax", "GLSCL without MGSC and MLTC"]
    assert all({"txt_r1", "img_r5"} <= set(r["metrics"]) for r in rows)
    trained = [rows[0], rows[2]]  # the ALIGN-BENCH test runs on trained rows, with the model each trained
    assert all(0 < r["metrics"]["global_box"] < 100 and r["metrics"]["num_images"] == 4 for r in trained)
    assert "global_box" not in rows[1]["metrics"]
    assert rows[0]["metrics"]["agg_metrics"] == rows[0]["metrics"]["txt_r_mean"]  # the run's own, not the test's
    logs = sorted(p.name for p in (tmp_path / "out").glob("*align_bench_tiny.log"))
    assert logs == ["glscl_align_bench_tiny.log", "glscl_without_mgsc_and_mltc_align_bench_tiny.log"]
    assert '"arch": "glscl_pretrain"' in (tmp_path / "out" / logs[0]).read_text()  # not the yaml's blip
    assert "| GLSCL + inverted softmax |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "results.png").stat().st_size > 1000
