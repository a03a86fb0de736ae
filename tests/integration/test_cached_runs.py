"""``${cached_run:...}`` trains a stage once, in a subprocess, and the next stage loads its towers."""
import pytest
import torch
from helpers import TINY_RUN, TOWER_PREFIXES, model_of_run_yaml


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

    model, _ = model_of_run_yaml(str(stage2_yaml))
    (checkpoint,) = cache_dir().glob("runs/towers_tiny-*/checkpoint.pth")
    trained = torch.load(checkpoint, weights_only=True)["model"]
    loaded = model.state_dict()
    towers = [name for name in trained if name.startswith(TOWER_PREFIXES)]
    assert len(towers) > 20 and all(torch.equal(loaded[name], trained[name]) for name in towers)
    stamp = checkpoint.stat().st_mtime_ns
    monkeypatch.setattr(cached_runs.subprocess, "run", lambda *a, **k: pytest.fail("trained a cached run again"))
    assert cached_runs.cached_run_checkpoint(str(stage1_yaml)) == str(checkpoint)
    assert checkpoint.stat().st_mtime_ns == stamp
