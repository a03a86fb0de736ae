"""Run options checked when the runner is built."""
import pytest
from helpers import tiny_runner


def test_save_frequency_must_be_a_multiple_of_the_accumulation(run_yaml, tmp_path):
    with pytest.raises(ValueError, match="save_freq_iters .6. must be a multiple of run.accum_grad_iters .4."):
        tiny_runner(run_yaml(run={"accum_grad_iters": 4, "save_freq_iters": 6}), tmp_path)
