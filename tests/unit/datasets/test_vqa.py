"""The easy-vqa conversion keeps the official split and LAVIS's own VQA evaluator scores it."""
import json

import pytest


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
