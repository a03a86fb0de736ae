"""GLSCL in its own regime: stage 2 starts from the towers stage 1 trained, with the released learning-rate
structure."""
import torch
from helpers import TOWER_PREFIXES, model_of_run_yaml


def learning_rate_scales(model):
    names = {id(param): name for name, param in model.named_parameters()}
    return {names[id(param)]: group["lr_scale"] for group in model.get_optimizer_params(0.01)
            for param in group["params"]}


def test_stage_two_starts_from_the_stage_one_towers_with_the_released_learning_rate_structure(lavis_glscl, tmp_path):
    torch.manual_seed(0)
    stage1, cfg1 = model_of_run_yaml("projects/glscl/demo/towers_shapes.yaml")
    assert cfg1.model_cfg.loss_weights == {"itc": 1.0, "itm": 0.0, "mlm": 0.0, "mgsc": 0.0, "mltc": 0.0}
    assert stage1.vision_transformer.temporal_embed.abs().sum() == 0  # an image tower, nothing per frame
    stage1_scales = learning_rate_scales(stage1)
    assert not any(name.startswith(("cross_modal_text_layers", "itm_score", "mlm_score")) for name in stage1_scales)
    assert {scale for name, scale in stage1_scales.items() if name.startswith("vision_transformer.")} == {5.0}
    with torch.no_grad():  # trained towers differ from any fresh start
        for param in stage1.parameters():
            param.add_(torch.randn_like(param))
    torch.save({"model": stage1.state_dict()}, tmp_path / "stage1.pth")

    torch.manual_seed(1)
    stage2, cfg2 = model_of_run_yaml("projects/glscl/demo/pretrain_shapes.yaml",
                                     [f"model.pretrained={tmp_path / 'stage1.pth'}"])
    assert cfg2.model_cfg.loss_weights == {"itc": 0.5, "itm": 1.0, "mlm": 1.0, "mgsc": 1.0, "mltc": 0.2}
    towers = {name: value for name, value in stage1.state_dict().items() if name.startswith(TOWER_PREFIXES)}
    loaded = stage2.state_dict()
    assert len(towers) > 100 and all(torch.equal(loaded[name], value) for name, value in towers.items())
    # the released structure: fusion (bridges included) and heads x5, the towers and ITC projections at the base rate
    expected = {name: 5.0 if name.startswith(("cross_modal_", "mlm_score", "itm_score")) else 1.0
                for name in learning_rate_scales(stage2)}
    assert learning_rate_scales(stage2) == expected
    towers = ("vision_transformer.", "text_transformer.")
    assert {expected[name] for name in expected if name.startswith(towers)} == {1.0}
