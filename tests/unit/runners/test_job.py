"""Run directories: never shared, a named job refused unless it resumes, the job a restart belongs to, the newest
checkpoint."""
import pytest
import torch

from lavis_glscl.typed_options import ConfigError


def test_a_taken_second_gives_the_next_run_a_directory_of_its_own(tmp_path, monkeypatch):
    from lavis_glscl.runners import job
    from lavis_glscl.runners.options import RunOptions

    monkeypatch.setattr(job, "timestamp", lambda: "20261207120000")
    options = RunOptions(task="retrieval", output_dir=str(tmp_path))
    names = [job.decide_run_directory(options)[0].name for _ in range(3)]
    assert names == ["20261207120000", "20261207120000_1", "20261207120000_2"]


def test_a_named_job_that_exists_is_refused_unless_it_resumes(tmp_path):
    from lavis_glscl.runners import job
    from lavis_glscl.runners.options import RunOptions

    (tmp_path / "ablation" / "log.txt").parent.mkdir()
    (tmp_path / "ablation" / "log.txt").write_text("{}")
    with pytest.raises(ConfigError, match="exists .run.job_id 'ablation'. and this run does not resume"):
        job.decide_run_directory(RunOptions(task="retrieval", output_dir=str(tmp_path), job_id="ablation"))
    resumed = RunOptions(task="retrieval", output_dir=str(tmp_path), job_id="ablation", auto_resume=True)
    assert job.decide_run_directory(resumed) == (tmp_path / "ablation", None)  # no checkpoint yet: from the start


@pytest.mark.parametrize("environ, identity", [
    ({"SLURM_JOB_ID": "417"}, "slurm_417"),
    ({"SLURM_JOB_ID": "417", "SLURM_ARRAY_TASK_ID": "3"}, "slurm_417_3"),
    ({"TORCHELASTIC_RUN_ID": "pretrain-7"}, "torchrun_pretrain-7"),
    ({"TORCHELASTIC_RUN_ID": "none"}, None),
    ({}, None),
])
def test_the_job_a_restart_belongs_to_comes_from_the_launcher(environ, identity):
    from lavis_glscl.runners import job
    from lavis_glscl.runners.options import RunOptions

    assert job.job_identity(RunOptions(task="retrieval"), environ) == identity
    assert job.job_identity(RunOptions(task="retrieval", job_id="mine"), environ) == "mine"


def test_the_newest_checkpoint_is_the_one_furthest_into_training(tmp_path):
    from lavis_glscl.runners import job

    for name, epoch, iteration in (("checkpoint_0.pth", 0, None), ("checkpoint_latest.pth", 1, 4),
                                   ("checkpoint_best.pth", 0, None)):
        torch.save({"epoch": epoch, "iteration": iteration}, tmp_path / name)
    (tmp_path / "checkpoint_1.pth.tmp").write_bytes(b"cut short")  # a save that never finished
    assert job.newest_checkpoint(tmp_path) == tmp_path / "checkpoint_latest.pth"
    torch.save({"epoch": 1, "iteration": None}, tmp_path / "checkpoint_1.pth")
    assert job.newest_checkpoint(tmp_path) == tmp_path / "checkpoint_1.pth"
