"""The analytic FLOP count of ``benchmarks/flops.py`` against PyTorch's own count (``FlopCounterMode`` over one
forward + backward), across the settings that change which passes run and which get a backward."""
import importlib.util

import pytest
import torch
from helpers import REPO, tiny_batch


@pytest.fixture(scope="module")
def flops(lavis_glscl):
    spec = importlib.util.spec_from_file_location("benchmark_flops", REPO / "benchmarks" / "flops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = {  # name: (overrides, frames, grad checkpointing)
    "all objectives": ({}, None, False),
    "video, checkpointed": ({}, 2, True),
    "video, MGSC and MLTC on images only": ({"video_completion": {"mgsc": False, "mltc": False}}, 2, False),
    "unshared passes, checkpointed": ({"share_unimodal_passes": False}, None, True),
    "hard negatives, unshared, video": ({"itm_negatives": "hard", "share_unimodal_passes": False}, 2, False),
    "MLTC alone": ({"loss_weights": {"mltc": 1.0}}, None, False),
    "MGSC alone, frozen text embeddings, checkpointed": (
        {"loss_weights": {"mgsc": 1.0}, "freeze": ["text_transformer.embeddings"]}, None, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_count_equals_pytorch_count(tiny, flops, case):
    """Exact: the masked-word count is deterministic without replacement, so every shape is known."""
    overrides, frames, checkpointing = CASES[case]
    model = tiny("glscl_pretrain", grad_checkpointing=checkpointing, mgsc_text_mask_with_replacement=False,
                 **overrides).train()
    samples = tiny_batch(4, frames=frames)
    analytic = flops.total(flops.step_flops(flops.architecture(model.config, len(model.tokenizer)), model.config,
                                            flops.batch_of(model, samples)))
    counted = flops.counted_flops(model, samples)
    assert analytic.forward == counted["forward"]
    assert analytic.executed == counted["total"]
    assert (analytic.recompute > 0) == checkpointing


def test_expected_distinct_masked_words_match_sampling(flops):
    """With replacement the count is an expectation: compare it with the mean of many draws of the real mask."""
    from lavis_glscl.models.pretraining.masking import mgsc_text_mask

    rows, length = 4000, 14
    lengths = torch.tensor([3, 7, 12, 12])[torch.arange(rows) % 4]
    maskable = torch.arange(length)[None, :] < lengths[:, None]
    mask = mgsc_text_mask(maskable, torch.rand(rows, length, generator=torch.Generator().manual_seed(0)), 0.4, True)
    expected = flops.mgsc_text_tokens([3, 7, 12, 12], 0.4, with_replacement=True) / 4
    assert mask.sum().item() / rows == pytest.approx(expected, rel=0.02)
    assert flops.mgsc_text_tokens([3, 7, 12, 12], 0.4, with_replacement=False) == 2 + 3 + 5 + 5
