"""``runner_glscl`` where it follows LAVIS: the task's train step, gradient accumulation with DDP ``no_sync``, gradient
clipping, LAVIS's schedulers with per-group LR scales, MetricLogger-style step logs, non-finite losses, stopping on
a plateau, and training loaders mixing shards with other data."""
import json

import pytest
import torch
import torch.distributed as dist
from helpers import (
    TINY_RUN,
    convert_to_shards,
    free_port,
    read_log_records,
    shard_run_yaml,
    simple_pairs,
    tiny_runner,
    train_in_process,
)

from lavis_glscl.datasets.shards import ShardedCaptionPairs


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
    parts = ("eta", "time", "data", "max mem")
    assert len(lines) == 2 and all(f" {part}: " in line for line in lines for part in parts)
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


def test_non_finite_loss_skips_the_step_and_never_reaches_a_checkpoint(lavis_glscl, tmp_path, monkeypatch):
    from lavis_glscl import launch

    args = launch.parse_args("x", ["--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={tmp_path}",
                                   "run.iters_per_epoch=3", "run.test_splits=[]"])
    runner = launch.build_runner(launch.LaunchConfig(args))
    model = runner.unwrap_dist_model(runner.model)
    real_forward = model.forward
    weights_at = {}

    def forward_with_nan_at_step_one(samples):
        weights_at[samples["iters"]] = model.itm_score.fc.weight.detach().clone()
        output = real_forward(samples)
        if samples["iters"] == 1:
            output["loss"] = output["loss"] * float("nan")
        return output

    monkeypatch.setattr(model, "forward", forward_with_nan_at_step_one)
    runner.train()
    (train_record,) = read_log_records(tmp_path, "train_loss")
    assert train_record["train_nonfinite_steps"] == 1
    assert torch.equal(weights_at[1], weights_at[2])  # the NaN step changed nothing
    assert not torch.equal(weights_at[2], model.itm_score.fc.weight.detach())  # the next step did
    saved = torch.load(next(tmp_path.rglob("checkpoint_0.pth")), weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())


def test_runner_trains_one_pass_of_shards_and_counts_their_bad_members_among_skipped_samples(lavis_glscl, tmp_path,
                                                                                             bad_shards, caplog):
    entries, _ = bad_shards
    index = {"format": "lavis_glscl-shards-1", "media": "images", "shards": [
        {"path": entry.path, "samples": entry.pairs, "pairs": entry.pairs} for entry in entries]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    with caplog.at_level("WARNING"):
        runner = train_in_process(shard_run_yaml(tmp_path, tmp_path / "index.json", shuffle_shards=3), tmp_path / "out")
    assert len(runner.train_loader) == 6  # one natural pass: 12 pairs in batches of 2
    (stats,) = read_log_records(tmp_path / "out", "train_loss")
    assert stats["train_skipped_samples"] == 6
    assert "6 unreadable samples replaced" in caplog.text


def test_runner_mixes_shards_with_map_style_data_in_proportion(lavis_glscl, tmp_path, monkeypatch):
    convert_to_shards(tmp_path, simple_pairs(16), count=16, samples_per_shard=4)
    shapes = {"shapes_demo": {"splits": ["train"], "generator": {"num_train": 32, "num_test": 4, "image_size": 32,
                                                                 "seed": 1},
                              "vis_processor": {"train": {"name": "glscl_image_train", "image_size": 32,
                                                          "hflip_prob": 0.0}},
                              "text_processor": {"train": {"name": "glscl_caption"}}}}
    config = shard_run_yaml(tmp_path, tmp_path / "shards" / "index.json", extra_datasets=shapes,
                            run={"train_dataset_ratios": "proportional", "iters_per_epoch": 10})
    from lavis_glscl.runners import RunnerGlscl

    drawn = []
    real_train_step = RunnerGlscl.train_step

    def recording_train_step(self, model, samples):
        drawn.append("shards" if "#" in samples["instance_id"][0] else "files")
        return real_train_step(self, model, samples)

    monkeypatch.setattr(RunnerGlscl, "train_step", recording_train_step)
    runner = train_in_process(config, tmp_path / "out")
    datasets = runner.train_loader.datasets
    kinds = ["shards" if isinstance(d, ShardedCaptionPairs) else "files" for d in datasets]
    assert sorted(zip(kinds, map(len, datasets))) == [("files", 32), ("shards", 16)]
    torch.testing.assert_close(runner.train_loader.ratios, torch.tensor([len(d) / 48 for d in datasets]))
    assert drawn == [kinds[index] for index in runner.train_loader.dataset_schedule(0)]
    assert set(drawn) == {"shards", "files"}
