"""What every configured model shares: what no active objective reaches is frozen, checkpoint options are typed.

DDP needs a gradient for every trainable parameter in every step, so a parameter that no active objective reaches
must be frozen at construction (``ConfiguredModel.freeze_unreached``): checked here against autograd for every model
and objective switch.
"""
import itertools

import pytest
import torch
from helpers import GLSCL_OBJECTIVES, tiny_batch

from lavis_glscl.typed_options import ConfigError


def vqa_batch():
    batch = tiny_batch()
    batch.update(text_input=["what color is it"] * 4, answer=["red", "blue", "yes", "no", "red"],
                 weight=torch.tensor([1.0, 1.0, 1.0, 0.5, 0.5]), n_answers=torch.tensor([1, 1, 1, 2]))
    return batch


def assert_trainable_means_reached(model, batch):
    model.train()
    model(batch)["loss"].backward()
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    reached = {name for name, param in model.named_parameters() if param.grad is not None}
    assert trainable - reached == set(), "trainable but no gradient"
    assert reached - trainable == set(), "frozen but reached"


SUBSETS = [combo for size in (1, 4, 5) for combo in itertools.combinations(GLSCL_OBJECTIVES, size)]


@pytest.mark.parametrize("objectives", SUBSETS, ids=["+".join(combo) for combo in SUBSETS])
def test_glscl_pretrain_freezes_exactly_what_its_active_objectives_do_not_reach(tiny, objectives):
    model = tiny("glscl_pretrain", loss_weights={name: 1.0 for name in objectives})
    assert_trainable_means_reached(model, tiny_batch())


@pytest.mark.parametrize("arch, overrides, batch", [
    ("glscl_pretrain", {}, "video"),
    ("glscl_retrieval", {}, "image"),
    ("glscl_retrieval", {"loss_weights": {"rank": 1.0}, "rank_negatives": 2}, "image"),
    ("glscl_retrieval", {"loss_weights": {"itc": 1.0, "rank": 1.0}, "rank_negatives": 2,
                         "freeze": ["vision_transformer"]}, "image"),
    ("glscl_vqa", {"answer_list": "package:easy_vqa"}, "vqa"),
    ("albef_glscl_pretrain", {}, "image"),
    ("albef_glscl_pretrain", {"loss_weights": {"mltc": 1.0}}, "image"),
    ("matching_dual_encoder", {"similarity_head": "scan"}, "image"),
    ("albef_pretrain_offline", {}, "image"),
    ("albef_retrieval_offline", {}, "image"),
    ("blip_retrieval_offline", {}, "image"),
])
def test_every_model_trains_every_parameter_it_leaves_trainable(tiny, arch, overrides, batch):
    model = tiny(arch, **overrides)
    samples = {"image": tiny_batch(), "video": tiny_batch(frames=3), "vqa": vqa_batch()}[batch]
    samples["num_iters_per_epoch"] = 2
    assert_trainable_means_reached(model, samples)


def test_unreached_parameters_are_listed_once_in_the_log(tiny, caplog):
    with caplog.at_level("INFO"):
        model = tiny("glscl_retrieval")
    (line,) = [r.getMessage() for r in caplog.records if "no active objective reaches" in r.getMessage()]
    assert "mlm_score.*" in line and "vision_transformer.visual_mask_token" in line
    assert not model.mlm_score.decoder.weight.requires_grad and model.itm_score.fc.weight.requires_grad


def test_a_quoted_false_never_turns_trust_on(tiny, tmp_path):
    torch.save({"model": tiny("glscl_pretrain").state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(ConfigError, match="model.trust_checkpoint must be true or false or null, got 'false'"):
        tiny("glscl_pretrain", pretrained=str(tmp_path / "weights.pth"), trust_checkpoint="false")
    with pytest.raises(ConfigError, match="model.vision_init.trust_checkpoint must be true or false"):
        tiny("glscl_pretrain", vision_init={"path": str(tmp_path / "weights.pth"), "trust_checkpoint": "no"})


def test_freeze_prefixes_stop_exactly_the_parameters_they_name_from_training(tiny):
    """``model.freeze``: every parameter whose name starts with a listed prefix is frozen and gets no gradient from a
    step; a parameter beside it (the second ViT block, the text encoder's layers) still trains."""
    prefixes = ["vision_transformer.transformer.resblocks.0.", "text_transformer.embeddings"]
    model = tiny("glscl_pretrain", freeze=prefixes)
    model(tiny_batch()).loss.backward()
    frozen = {name for name, param in model.named_parameters() if name.startswith(tuple(prefixes))}
    assert len(frozen) > 10
    for name, param in model.named_parameters():
        if name in frozen:
            assert not param.requires_grad and param.grad is None, name
    assert model.vision_transformer.transformer.resblocks[1].attn.in_proj_weight.grad.abs().sum() > 0
    assert model.text_transformer.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_load_finetuned_picks_the_finetuned_checkpoint_over_the_pretrained_one(tiny, tmp_path):
    """LAVIS's ``finetuned`` with ``load_finetuned: true`` (default false) loads that checkpoint instead of
    ``pretrained``; without it, ``pretrained`` loads."""
    checkpoints = {}
    for name, shift in (("pretrained", 1.0), ("finetuned", 2.0)):
        source = tiny("glscl_pretrain")
        with torch.no_grad():
            source.itm_score.fc.weight.add_(shift)
        checkpoints[name] = source.itm_score.fc.weight.detach().clone()
        torch.save({"model": source.state_dict()}, tmp_path / f"{name}.pth")
    paths = {"pretrained": str(tmp_path / "pretrained.pth"), "finetuned": str(tmp_path / "finetuned.pth")}
    finetuned = tiny("glscl_pretrain", **paths, load_finetuned=True)
    assert torch.equal(finetuned.itm_score.fc.weight, checkpoints["finetuned"])
    pretrained = tiny("glscl_pretrain", **paths, load_finetuned=False)
    assert torch.equal(pretrained.itm_score.fc.weight, checkpoints["pretrained"])
