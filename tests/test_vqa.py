"""VQA: the easy-vqa conversion scored by LAVIS's own VQA evaluator, and glscl_vqa through LAVIS's vqa task."""
import json

import pytest
import torch
from helpers import read_log_records, run_module, tiny_vqa_yaml


@pytest.fixture(scope="module")
def easy_vqa_files(tmp_path_factory):
    from lavis_glscl.datasets.cache import ensure_cached
    from lavis_glscl.datasets.vqa import write_easy_vqa

    return ensure_cached(tmp_path_factory.mktemp("easyvqa") / "v1", write_easy_vqa)


def lavis_vqa_accuracy(root, answers_by_question):
    from lavis.common.vqa_tools.vqa import VQA
    from lavis.common.vqa_tools.vqa_eval import VQAEval

    results = root.parent / "results.json"
    results.write_text(json.dumps([{"question_id": q, "answer": a} for q, a in answers_by_question.items()]))
    vqa = VQA(str(root / "test_annotations_coco.json"), str(root / "test_questions_coco.json"))
    scorer = VQAEval(vqa, vqa.loadRes(resFile=str(results), quesFile=str(root / "test_questions_coco.json")), n=2)
    scorer.evaluate()
    return scorer.accuracy["overall"]


def test_easy_vqa_conversion_keeps_the_official_split_and_lavis_scores_it(easy_vqa_files):
    import easy_vqa

    train = json.loads((easy_vqa_files / "train.json").read_text())
    test = json.loads((easy_vqa_files / "test.json").read_text())
    assert len(train) == 38575 and len(test) == 9673
    assert json.loads((easy_vqa_files / "answer_list.json").read_text()) == easy_vqa.get_answers()
    truth = {a["question_id"]: a["multiple_choice_answer"]
             for a in json.loads((easy_vqa_files / "test_annotations_coco.json").read_text())["annotations"]}
    assert lavis_vqa_accuracy(easy_vqa_files, truth) == 100.0
    majority = lavis_vqa_accuracy(easy_vqa_files, {q: "yes" for q in truth})
    assert majority == pytest.approx(100 * 3611 / 9673, abs=0.01)  # the majority-answer baseline, 37.33


def test_vqa_soft_targets_and_prediction(lavis_glscl):
    from omegaconf import OmegaConf

    from lavis_glscl.models.glscl import GlsclVqa

    cfg = OmegaConf.merge(OmegaConf.load(GlsclVqa.default_config_path("tiny")).model,
                          {"arch": "glscl_vqa", "answer_list": "package:easy_vqa"})
    model = GlsclVqa.from_config(cfg).eval()  # dropout off: predictions are compared with logits
    targets = model.soft_targets(["yes", "no", "red", "purple"], torch.tensor([0.6, 0.4, 1.0, 1.0]),
                                 torch.tensor([2, 2]))
    assert targets[0, model.answer_index["yes"]] == pytest.approx(0.6)
    assert targets[0, model.answer_index["no"]] == pytest.approx(0.4)
    assert targets[1].sum() == pytest.approx(1.0)  # "purple" is not an easy-vqa answer: ignored
    samples = {"image": torch.randn(2, 3, 32, 32), "text_input": ["what color is it", "is it a circle"]}
    logits = model.answer_logits(samples)
    assert logits.shape == (2, 13)
    assert model.predict_answers(samples) == [model.answers[i] for i in logits.argmax(dim=1).tolist()]
    assert model.predict_answers(samples, answer_list=["yes", "no"])[0] in ("yes", "no")
    with pytest.raises(ValueError, match="answer_list"):
        GlsclVqa.from_config(OmegaConf.merge(cfg, {"answer_list": None}))


@pytest.mark.slow
def test_glscl_vqa_trains_and_is_scored_by_lavis_vqa_task(tmp_path):
    config = tiny_vqa_yaml(tmp_path, tmp_path / "out")
    result = run_module("lavis_glscl.train", ["--cfg-path", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = read_log_records(tmp_path / "out", "train_step")
    assert [r["train_step_iter"] for r in steps] == [0, 1] and steps[0]["train_step_loss_vqa"] > 0
    evaluation = next((tmp_path / "out").rglob("evaluate.txt")).read_text()
    accuracy = json.loads(evaluation.splitlines()[-1])["agg_metrics"]
    assert 0.0 <= accuracy <= 100.0 and "Overall Accuracy" in result.stdout
