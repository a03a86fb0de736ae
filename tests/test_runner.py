"""``runner_glscl`` where it follows LAVIS: the task's train step, gradient accumulation with DDP ``no_sync``,
gradient clipping, LAVIS's schedulers with per-group LR scales, MetricLogger-style step logs, SLURM start-up and
fast failure on required values."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from helpers import TINY_RUN, free_port, read_log_records, run_module

RUN = ["run.test_splits=[]", "run.log_freq=1"]


def tiny_runner(cfg_path, output_dir):
    """The runner of ``cfg_path`` (a ``run_yaml``), training into ``output_dir`` without a test split."""
    from lavis_glscl import launch

    args = launch.parse_args("test", ["--cfg-path", str(cfg_path), "--options", f"run.output_dir={output_dir}", *RUN])
    return launch.build_runner(launch.setup(args))


def count_optimizer_steps(runner, monkeypatch):
    steps = []
    real_step = runner.optimizer.step

    def counting_step(*args, **kwargs):
        steps.append(len(steps))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(runner.optimizer, "step", counting_step)
    return steps


def test_the_task_train_step_is_what_the_runner_calls(run_yaml, tmp_path, monkeypatch):
    """LAVIS's own train_step (model(samples)["loss"]): the runner calls the model and logs its whole output; a task's
    train_step of its own is what the runner calls, its loss the one trained and logged."""
    runner = tiny_runner(run_yaml(run={"iters_per_epoch": 3}), tmp_path)
    calls = []

    def doubled_train_step(model, samples):
        calls.append(samples["iters"])
        output = model(samples)
        return 2 * output["loss"], output

    monkeypatch.setattr(runner.task, "train_step", doubled_train_step)
    runner.train()
    assert calls == [0, 1, 2]
    records = read_log_records(tmp_path, "train_step")
    weights = runner.unwrap_dist_model(runner.model).loss_weights
    parts = {"loss_itc": weights.itc, "loss_itm": weights.itm, "loss_mlm": weights.mlm, "loss_mgsc_image": weights.mgsc,
             "loss_mgsc_text": weights.mgsc, "loss_mltc_image": weights.mltc, "loss_mltc_text": weights.mltc}
    assert all(f"train_step_{part}" in records[0] for part in parts)  # the model's own outputs are still logged
    weighted = sum(weight * records[0][f"train_step_{part}"] for part, weight in parts.items())
    assert records[0]["train_step_loss"] == pytest.approx(2 * weighted, rel=1e-5)  # the task's loss is the loss


def test_accumulation_steps_the_optimizer_every_n_micro_steps_and_flushes_at_the_epoch_end(run_yaml, tmp_path,
                                                                                             monkeypatch):
    runner = tiny_runner(run_yaml(run={"iters_per_epoch": 6, "accum_grad_iters": 4}), tmp_path)
    steps = count_optimizer_steps(runner, monkeypatch)
    runner.train()
    assert len(steps) == 2  # after micro-steps 4 and 6: no gradient is carried over the epoch end


def test_save_frequency_must_be_a_multiple_of_the_accumulation(run_yaml, tmp_path):
    with pytest.raises(ValueError, match="save_freq_iters .6. must be a multiple of run.accum_grad_iters .4."):
        tiny_runner(run_yaml(run={"accum_grad_iters": 4, "save_freq_iters": 6}), tmp_path)


def test_gradients_are_clipped_to_max_grad_norm_and_the_norm_before_clipping_is_logged(run_yaml, tmp_path,
                                                                                        monkeypatch):
    runner = tiny_runner(run_yaml(run={"iters_per_epoch": 2, "max_grad_norm": 0.01}), tmp_path)
    norms = []
    real_step = runner.optimizer.step

    def step_recording_norm(*args, **kwargs):
        grads = [p.grad for group in runner.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(runner.optimizer, "step", step_recording_norm)
    runner.train()
    assert norms and all(norm == pytest.approx(0.01, rel=1e-3) for norm in norms)
    logged = [r["train_step_grad_norm"] for r in read_log_records(tmp_path, "train_step")]
    assert len(logged) == 2 and all(norm > 0.01 for norm in logged)


@pytest.mark.parametrize("scheduler", ["linear_warmup_cosine_lr", "linear_warmup_step_lr", "glscl_warmup_linear"])
def test_every_scheduler_keeps_the_fusion_layers_at_five_times_the_encoders_lr(run_yaml, tmp_path, scheduler):
    runner = tiny_runner(run_yaml(run={"lr_sched": scheduler, "max_epoch": 2, "iters_per_epoch": 2, "warmup_steps": 1,
                                       "lr_decay_rate": 0.5}), tmp_path)
    runner.train()
    records = read_log_records(tmp_path, "train_step")
    assert len(records) == 4
    for record in records:
        assert record["train_step_lr_scale_5"] == pytest.approx(5 * record["train_step_lr_scale_1"], rel=1e-9)
        assert record["train_step_lr_scale_1"] == pytest.approx(record["train_step_lr"], rel=1e-9)
    model = runner.unwrap_dist_model(runner.model)
    by_param = {id(p): group["lr"] for group in runner.optimizer.param_groups for p in group["params"]}
    fusion = by_param[id(model.cross_modal_text_layers[0].attention.self.query.weight)]
    assert fusion == pytest.approx(5 * by_param[id(model.vision_transformer.conv1.weight)], rel=1e-9)


def test_step_logs_carry_eta_time_data_time_and_peak_memory(run_yaml, tmp_path, caplog):
    with caplog.at_level("INFO"):
        tiny_runner(run_yaml(run={"iters_per_epoch": 2}), tmp_path).train()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Train: epoch")]
    assert len(lines) == 2 and all(f" {part}: " in line for line in lines for part in ("eta", "time", "data", "max mem"))
    record = read_log_records(tmp_path, "train_step")[0]
    assert record["train_step_seconds_per_step"] > 0 and record["train_step_data_seconds"] >= 0
    assert record["train_step_max_mem_mb"] > 100  # this process's resident peak: LAVIS alone is hundreds of MiB


def counting_hook(calls: list):
    """A DDP communication hook that records each synchronised backward (its first gradient bucket's all-reduce)."""

    def hook(state, bucket):
        if bucket.index() == 0:
            calls.append(1)
        future = torch.futures.Future()
        future.set_result(bucket.buffer())
        return future

    return hook


@pytest.fixture
def one_process_group(monkeypatch):
    """A real 1-rank gloo process group, as torchrun would start it, so the runner wraps its model in DDP."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_ddp_synchronises_gradients_only_on_the_last_micro_step(run_yaml, tmp_path, one_process_group):
    calls = {}
    for accum in (1, 4):
        runner = tiny_runner(run_yaml(run={"iters_per_epoch": 8, "accum_grad_iters": accum}), tmp_path / str(accum))
        reduces = []
        runner.model.register_comm_hook(state=None, hook=counting_hook(reduces))
        runner.train()
        calls[accum] = len(reduces)
    assert calls == {1: 8, 4: 2}


@pytest.mark.slow
def test_slurm_variables_start_a_two_process_run(lavis_glscl, tmp_path):
    port = str(free_port())
    processes = []
    for rank in range(2):
        environment = {**os.environ, "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "PYTHONWARNINGS": "ignore"}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            environment.pop(name, None)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "lavis_glscl.train", "--cfg-path", str(TINY_RUN), "--options",
             f"run.output_dir={tmp_path}", "run.batch_size_train=2", *RUN], cwd=tmp_path, env=environment,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert '"world_size": 2' in outputs[0] and '"dist_backend": "gloo"' in outputs[0]
    assert [r["train_step_iter"] for r in read_log_records(tmp_path, "train_step")] == [0, 1]


def test_slurm_without_a_rendezvous_address_names_what_to_set(lavis_glscl):
    from omegaconf import OmegaConf

    from lavis_glscl.distributed import LaunchError, init_distributed

    environment = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}
    run_cfg = OmegaConf.create({"device": "cpu", "dist_url": "env://"})
    with pytest.MonkeyPatch.context() as patch:
        for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            patch.delenv(name, raising=False)
        for name, value in environment.items():
            patch.setenv(name, value)
        with pytest.raises(LaunchError, match="MASTER_ADDR and MASTER_PORT"):
            init_distributed(run_cfg)
    assert (run_cfg.rank, run_cfg.world_size, run_cfg.gpu) == (1, 4, 1)


@pytest.mark.slow
def test_released_recipe_without_weight_paths_fails_before_building_anything(tmp_path):
    result = run_module("lavis_glscl.train", ["--cfg-path", "projects/glscl/pretrain/pretrain_base_4m.yaml"],
                        cwd=tmp_path)
    assert result.returncode == 2
    assert "model.vision_init.path: a local OpenAI CLIP ViT-B/16 file" in result.stdout
    assert "model.text.path: a local roberta-base directory" in result.stdout
    assert "Traceback" not in result.stdout and "Building" not in result.stdout


@pytest.mark.parametrize("history, window, min_delta, relative, stops_at", [
    ([5.0, 4.0, 3.9, 3.85, 3.84], 2, 0.2, False, 3),  # at 3.85: the last two (3.9, 3.85) beat 4.0 by 0.15 < 0.2
    ([5.0, 4.0, 3.0, 2.0, 1.0], 2, 0.2, False, None),  # still falling by 1 per check
    ([10.0, 8.0, 7.9, 7.8], 2, 0.05, True, 3),  # 8.0 -> 7.8 is 2.5 % < 5 % of 8.0
])
def test_plateau_rule_stops_when_the_last_window_does_not_beat_the_earlier_best(history, window, min_delta,
                                                                                 relative, stops_at):
    from lavis_glscl.stopping import PlateauRule

    rule = PlateauRule(metric="train_loss", window=window, min_delta=min_delta, relative=relative)
    decisions = [rule.update(value) for value in history]
    assert (decisions.index(True) if True in decisions else None) == stops_at


def test_plateau_rule_maximises_metrics_and_checks_its_options():
    from lavis_glscl.stopping import PlateauRule

    rule = PlateauRule(metric="val_agg_metrics", window=1, min_delta=1.0)
    assert [rule.update(v) for v in (10.0, 12.0, 12.5)] == [False, False, True]  # +0.5 < 1 point
    with pytest.raises(ValueError, match="window"):
        PlateauRule(metric="train_loss", window=0)


def test_a_plateau_stops_the_run_records_its_steps_and_tests_the_model(run_yaml, tmp_path, caplog):
    runner = tiny_runner(run_yaml(run={"max_epoch": 10, "iters_per_epoch": 1, "lr_sched": "linear_warmup_cosine_lr",
                                       "plateau": {"metric": "train_loss", "window": 2, "min_delta": 1e6}}), tmp_path)
    with caplog.at_level("INFO"):
        runner.train()
    (record,) = read_log_records(tmp_path, "run_steps")
    assert (record["run_steps"], record["run_epochs"], record["run_plateau_reached"]) == (3, 3, True)
    assert [r["train_step_epoch"] for r in read_log_records(tmp_path, "train_step")] == [0, 1, 2]
    assert "plateau: train_loss" in caplog.text
    # The rule's history travels with the checkpoint, so a resumed run judges the plateau on all its checks.
    (checkpoint,) = tmp_path.rglob("checkpoint_2.pth")
    assert torch.load(checkpoint, weights_only=False)["plateau_history"] == runner.plateau.history
    assert len(runner.plateau.history) == 3
    resumed = tiny_runner(run_yaml(run={"max_epoch": 10, "iters_per_epoch": 1,
                                        "plateau": {"metric": "train_loss", "window": 2}}), tmp_path / "resumed")
    resumed._load_checkpoint(str(checkpoint))
    assert resumed.plateau.history == runner.plateau.history
    with pytest.raises(KeyError, match="not among this epoch's values"):
        tiny_runner(run_yaml(run={"max_epoch": 2, "iters_per_epoch": 1,
                                  "plateau": {"metric": "train_loss_nope", "window": 1}}), tmp_path / "bad").train()
