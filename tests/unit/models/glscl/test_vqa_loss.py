"""``glscl_vqa``'s training loss: the released recipe's binary cross-entropy on soft answer scores, scaled by the size
of the answer vocabulary."""
import json

import pytest
import torch
import torch.nn.functional as F

ANSWERS = ["red", "blue", "yes", "no", "circle"]


def test_vqa_loss_is_mean_binary_cross_entropy_times_the_number_of_answers(tiny, tmp_path):
    """The loss is ``binary_cross_entropy_with_logits`` (mean over rows and answers) times the 5 answers, on the soft
    scores of LAVIS's flattened answers (summed per question, at most 1, answers outside the vocabulary left out);
    equivalently the BCE summed over answers, averaged over questions.  The targets are written out here."""
    (tmp_path / "answers.json").write_text(json.dumps(ANSWERS))
    model = tiny("glscl_vqa", dropout=False, answer_list=str(tmp_path / "answers.json"))
    samples = {"image": torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
               "text_input": ["what color is it", "is it a circle", "what shape is it"],
               "answer": ["red", "blue", "red", "yes", "circle", "purple", "circle"],
               "weight": torch.tensor([0.3, 0.3, 0.3, 1.0, 0.7, 0.3, 0.6]),
               "n_answers": torch.tensor([3, 1, 3])}
    targets = torch.tensor([[0.6, 0.3, 0.0, 0.0, 0.0],   # red 0.3 + 0.3, blue 0.3
                            [0.0, 0.0, 1.0, 0.0, 0.0],   # yes
                            [0.0, 0.0, 0.0, 0.0, 1.0]])  # circle 0.7 + 0.6 capped at 1; purple is not an answer
    output = model(samples)
    with torch.no_grad():
        logits = model.answer_logits(samples)
    expected = F.binary_cross_entropy_with_logits(logits, targets) * len(ANSWERS)
    assert output.loss_vqa.item() == pytest.approx(expected.item(), rel=1e-5)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    summed = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 3
    assert output.loss.item() == pytest.approx(summed.item(), rel=1e-5)
