"""Resuming: a resumed run continues exactly at an epoch end and mid-epoch, a rank killed under torchrun restarts and
resumes by itself to the uninterrupted weights, a killed two-process shard run resumes without repeating or skipping
a pair."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    DETERMINISTIC,
    TINY_RUN,
    convert_to_shards,
    free_port,
    read_log_records,
    run_module,
    shard_run_yaml,
    simple_pairs,
    step_losses,
)


@pytest.mark.slow
def test_resume_continues_exactly_at_epoch_end_and_mid_epoch(tmp_path):
    full = tmp_path / "full"
    options = ["run.max_epoch=2", "run.iters_per_epoch=3", "run.save_freq_iters=2", "run.test_splits=[]"]
    result = run_module("lavis_glscl.train", ["--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={full}",
                                              *options], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    (epoch_end,) = full.rglob("checkpoint_0.pth")
    (mid_epoch,) = full.rglob("checkpoint_latest.pth")  # written after step 2 of epoch 1, i.e. iteration 2
    assert torch.load(mid_epoch, weights_only=True)["iteration"] == 2
    for name, checkpoint, resumed_steps in (("end", epoch_end, [(1, 0), (1, 1), (1, 2)]), ("mid", mid_epoch, [(1, 2)])):
        out = tmp_path / name
        resumed = run_module("lavis_glscl.train", ["--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={out}",
                                                   f"run.resume_ckpt_path={checkpoint}", *options], cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-3000:]
        logged = [(r["train_step_epoch"], r["train_step_iter"]) for r in read_log_records(out, "train_step")]
        assert logged == resumed_steps
        for epoch, iteration in resumed_steps:
            assert step_losses(out, epoch, iteration) == pytest.approx(step_losses(full, epoch, iteration), rel=1e-6)
    final_full = torch.load(next(full.rglob("checkpoint_1.pth")), weights_only=True)["model"]
    final_resumed = torch.load(next((tmp_path / "end").rglob("checkpoint_1.pth")), weights_only=True)["model"]
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)


def torchrun_command(output_dir, options, max_restarts=0):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--max-restarts={max_restarts}",
            f"--master_port={free_port()}", "-m", "lavis_glscl.train", "--cfg-path", str(TINY_RUN), "--options",
            f"run.output_dir={output_dir}", *options]


def final_weights(output_dir, epoch):
    (checkpoint,) = output_dir.rglob(f"checkpoint_{epoch}.pth")
    return torch.load(checkpoint, weights_only=True)["model"]


def worker_pids(agent_pid):
    """The ranks torchrun's agent started (its child processes)."""
    with open(f"/proc/{agent_pid}/task/{agent_pid}/children") as children:
        return [int(pid) for pid in children.read().split()]


@pytest.mark.slow
def test_a_rank_killed_under_torchrun_restarts_resumes_by_itself_to_the_uninterrupted_weights(tmp_path):
    """``kill -9`` of one rank after a mid-epoch checkpoint (gradient accumulation on): torchrun ``--max-restarts 1``
    restarts both ranks, which find their run directory and its newest checkpoint themselves
    (``run.auto_resume``) and finish with exactly the weights of a run never interrupted."""
    options = DETERMINISTIC + ["run.max_epoch=3", "run.iters_per_epoch=8", "run.accum_grad_iters=4",
                               "run.save_freq_iters=4", "run.batch_size_train=2", "run.test_splits=[]",
                               "run.auto_resume=true"]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
    uninterrupted = subprocess.run(torchrun_command(tmp_path / "full", options), cwd=tmp_path, env=environment,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:]

    killed_dir = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen(torchrun_command(killed_dir, options, max_restarts=1), cwd=tmp_path, env=environment,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while not list(killed_dir.rglob("checkpoint_latest.pth")) and run.poll() is None:
            assert time.monotonic() < deadline, "no mid-epoch checkpoint within 300 s"
            time.sleep(0.02)
        ranks = worker_pids(run.pid)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGKILL)
        assert run.wait(timeout=600) == 0
    output = (tmp_path / "killed.log").read_text()
    assert "failed" in output and "Resumed from" in output, output[-3000:]
    (run_dir,) = [path for path in killed_dir.iterdir() if path.is_dir() and not path.is_symlink()]
    resumed_from = output.split("resumes from its newest complete checkpoint ")[1].split()[0]
    assert resumed_from.startswith(str(run_dir / "checkpoint_"))
    expected, observed = final_weights(tmp_path / "full", 2), final_weights(killed_dir, 2)
    assert expected.keys() == observed.keys()
    assert all(torch.equal(observed[name], expected[name]) for name in expected)


RECORDING_TRAIN = """
import json, os, sys
from lavis_glscl import runners
from lavis_glscl.train import main

real_train_step = runners.RunnerGlscl.train_step

def recording_train_step(self, model, samples):
    with open(os.path.join(os.environ["RECORD_DIR"], "rank%s.jsonl" % os.environ["RANK"]), "a") as record:
        record.write(json.dumps([samples["epoch"], samples["iters"], list(samples["instance_id"])]) + "\\n")
    return real_train_step(self, model, samples)

runners.RunnerGlscl.train_step = recording_train_step
sys.exit(main())
"""


def recorded_steps(folder: Path, rank: int):
    lines = (folder / f"rank{rank}.jsonl").read_text().splitlines()
    return {(epoch, step): pairs for epoch, step, pairs in map(json.loads, lines)}


def kill_run(run: subprocess.Popen) -> None:
    """SIGKILL a torchrun launch: its agent, and each rank with its DataLoader workers (torchrun starts every rank in
    a session of its own, which killing the agent's group would leave running)."""
    with open(f"/proc/{run.pid}/task/{run.pid}/children") as children:
        ranks = [int(pid) for pid in children.read().split()]
    for rank in ranks:
        os.killpg(rank, signal.SIGKILL)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


def torchrun(tmp_path, config, name, options=(), background=False):
    (tmp_path / name).mkdir()
    script = tmp_path / "recording_train.py"
    script.write_text(RECORDING_TRAIN)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(script), "--cfg-path", str(config), "--options", f"run.output_dir={tmp_path / name}", *options]
    environment = {**os.environ, "PYTHONWARNINGS": "ignore", "RECORD_DIR": str(tmp_path / name)}
    if background:
        log = open(tmp_path / f"{name}.log", "w")
        return subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finished = subprocess.run(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-3000:]
    return finished


@pytest.mark.slow
def test_a_killed_two_process_shard_run_resumes_without_repeating_or_skipping_a_pair(tmp_path):
    """2 ranks x 2 workers: a mid-epoch checkpoint after an odd step count (the workers' turn order rotates), the run
    killed, resumed: the pairs of the killed run up to the checkpoint plus the resumed run's are, rank by rank and step
    by step, those of an uninterrupted run, and no pair comes twice in an epoch."""
    convert_to_shards(tmp_path, simple_pairs(64), count=64, samples_per_shard=4)  # 16 shards: 4 per reader
    config = shard_run_yaml(tmp_path, tmp_path / "shards" / "index.json",
                            run={"num_workers": 2, "iters_per_epoch": 8, "max_epoch": 2, "save_freq_iters": 3})
    torchrun(tmp_path, config, "full")
    expected = [recorded_steps(tmp_path / "full", rank) for rank in (0, 1)]
    assert all(len(steps) == 16 for steps in expected)
    for epoch in (0, 1):
        pairs = [p for steps in expected for (e, _), batch in steps.items() if e == epoch for p in batch]
        assert len(pairs) == 32 and len(set(pairs)) == 32

    run = torchrun(tmp_path, config, "killed", background=True)
    deadline = time.monotonic() + 400
    while not list((tmp_path / "killed").rglob("checkpoint_latest.pth")) and run.poll() is None:
        assert time.monotonic() < deadline, "no mid-epoch checkpoint within 400 s"
        time.sleep(0.02)
    kill_run(run)
    assert not list((tmp_path / "killed").rglob("checkpoint_1.pth")), "the run finished before it could be killed"
    (latest,) = (tmp_path / "killed").rglob("checkpoint_latest.pth")
    state = torch.load(latest, weights_only=True)
    resume_at = (state["epoch"], state["iteration"])
    assert state["data_layout"] == {"world_size": 2, "num_workers": 2, "batch_size": 2}

    torchrun(tmp_path, config, "resumed", [f"run.resume_ckpt_path={latest}"])
    for rank in (0, 1):
        before = {step: pairs for step, pairs in recorded_steps(tmp_path / "killed", rank).items() if step < resume_at}
        after = recorded_steps(tmp_path / "resumed", rank)
        assert min(after) == resume_at and not set(before) & set(after)
        assert {**before, **after} == expected[rank]
