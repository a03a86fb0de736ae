"""GLSCL in its own regime: stage 2 starts from the towers stage 1 trained, with the released learning-rate structure;
``${cached_run:...}`` trains a stage once and reuses it."""
import argparse

import pytest
import torch
from helpers import TINY_RUN

TOWERS = ("vision_transformer.", "text_transformer.", "vision_proj.", "language_proj.", "cl_temp")


def build(cfg_path, options=()):
    from lavis.common.registry import registry

    from lavis_glscl.launch import LaunchConfig
    from lavis_glscl.paths import run_config_path

    cfg = LaunchConfig(argparse.Namespace(cfg_path=run_config_path(cfg_path), options=list(options)))
    return registry.get_model_class(cfg.model_cfg.arch).from_config(cfg.model_cfg), cfg


def learning_rate_scales(model):
    names = {id(param): name for name, param in model.named_parameters()}
    return {names[id(param)]: group["lr_scale"] for group in model.get_optimizer_params(0.01)
            for param in group["params"]}


def test_stage_two_starts_from_the_stage_one_towers_with_the_released_learning_rate_structure(lavis_glscl, tmp_path):
    torch.manual_seed(0)
    stage1, cfg1 = build("projects/glscl/demo/towers_shapes.yaml")
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
    stage2, cfg2 = build("projects/glscl/demo/pretrain_shapes.yaml", [f"model.pretrained={tmp_path / 'stage1.pth'}"])
    assert cfg2.model_cfg.loss_weights == {"itc": 0.5, "itm": 1.0, "mlm": 1.0, "mgsc": 1.0, "mltc": 0.2}
    towers = {name: value for name, value in stage1.state_dict().items() if name.startswith(TOWERS)}
    loaded = stage2.state_dict()
    assert len(towers) > 100 and all(torch.equal(loaded[name], value) for name, value in towers.items())
    # the released structure: fusion (bridges included) and heads x5, the towers and ITC projections at the base rate
    expected = {name: 5.0 if name.startswith(("cross_modal_", "mlm_score", "itm_score")) else 1.0
                for name in learning_rate_scales(stage2)}
    assert learning_rate_scales(stage2) == expected
    assert {expected[name] for name in expected if name.startswith(("vision_transformer.", "text_transformer."))} == {1.0}


@pytest.mark.slow
def test_a_cached_run_trains_once_and_stage_two_loads_its_towers(lavis_glscl, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from lavis_glscl import cached_runs
    from lavis_glscl.paths import cache_dir

    stage1_yaml = tmp_path / "towers_tiny.yaml"
    stage1 = OmegaConf.load(TINY_RUN)
    stage1.model.loss_weights = {"itc": 1.0, "itm": 0.0, "mlm": 0.0, "mgsc": 0.0, "mltc": 0.0}
    stage1.run.test_splits = []
    OmegaConf.save(stage1, stage1_yaml)
    stage2_yaml = tmp_path / "stage2_tiny.yaml"
    stage2 = OmegaConf.load(TINY_RUN)
    stage2.model.pretrained = f"${{cached_run:{stage1_yaml}}}"
    OmegaConf.save(stage2, stage2_yaml)

    model, _ = build(str(stage2_yaml))
    (checkpoint,) = cache_dir().glob("runs/towers_tiny-*/checkpoint.pth")
    trained = torch.load(checkpoint, weights_only=True)["model"]
    loaded = model.state_dict()
    towers = [name for name in trained if name.startswith(TOWERS)]
    assert len(towers) > 20 and all(torch.equal(loaded[name], trained[name]) for name in towers)
    stamp = checkpoint.stat().st_mtime_ns
    monkeypatch.setattr(cached_runs.subprocess, "run", lambda *a, **k: pytest.fail("trained a cached run again"))
    assert cached_runs.cached_run_checkpoint(str(stage1_yaml)) == str(checkpoint)
    assert checkpoint.stat().st_mtime_ns == stamp
