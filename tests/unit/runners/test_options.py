"""Run options checked when the runner is built."""
import pytest
from helpers import tiny_runner


def test_save_frequency_must_be_a_multiple_of_the_accumulation(run_yaml, tmp_path):
    with pytest.raises(ValueError, match="save_freq_iters .6. must be a multiple of run.accum_grad_iters .4."):
        tiny_runner(run_yaml(run={"accum_grad_iters": 4, "save_freq_iters": 6}), tmp_path)


def test_a_missing_resume_checkpoint_is_refused_when_the_options_are_read(tmp_path):
    from lavis_glscl.runners.options import RunOptions
    from lavis_glscl.typed_options import ConfigError

    with pytest.raises(ConfigError, match="run.resume_ckpt_path .*gone.pth does not exist"):
        RunOptions.from_config({"task": "retrieval", "resume_ckpt_path": str(tmp_path / "gone.pth")})
    (tmp_path / "there.pth").write_bytes(b"")
    assert RunOptions.from_config({"task": "retrieval", "resume_ckpt_path": str(tmp_path / "there.pth")})
