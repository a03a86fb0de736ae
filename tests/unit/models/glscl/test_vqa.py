"""``glscl_vqa``: soft answer targets and predictions over the answer list."""
import pytest
import torch
from lavis_layouts import write_coco_vqa


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


def test_glscl_vqa_answers_are_lavis_answer_list_under_cache_root(lavis_glscl, tiny):
    write_coco_vqa()
    model = tiny("glscl_vqa", answer_list="coco/annotations/answer_list.json")
    assert model.answers == ["red", "blue", "yes", "no"] and model.vqa_classifier[-1].out_features == 4
