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


def record_batches(runner, monkeypatch):
    """The captions of every batch the runner's model is called on, recorded in order."""
    model = runner.unwrap_dist_model(runner.model)
    forward, seen = model.forward, []

    def recording_forward(samples, *args, **kwargs):
        seen.append(list(samples["text_input"]))
        return forward(samples, *args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    return seen


def test_optimizer_and_schedule_run_options_reach_adamw_and_every_steps_lr(run_yaml, tmp_path, monkeypatch):
    """``beta2``, ``adam_eps``, ``weight_decay`` in AdamW's groups; ``lr_sched: glscl_warmup_linear`` over ``max_epoch``
    2 x ``iters_per_epoch`` 4 = 8 steps, warming up from ``warmup_lr`` 1e-4 to ``init_lr`` 2e-3 over ``warmup_ratio``
    0.25 of them (2 steps), then down towards ``min_lr`` 1e-5 at step 8; ``batch_size_train`` 3 captions per step; on
    the ``device`` and under the ``output_dir`` named.  Each value differs from its default and the tiny yaml's."""
    runner = tiny_runner(run_yaml(run={"beta2": 0.95, "adam_eps": 1e-6, "weight_decay": 0.05, "init_lr": 2e-3,
                                       "min_lr": 1e-5, "warmup_lr": 1e-4, "warmup_ratio": 0.25, "max_epoch": 2,
                                       "iters_per_epoch": 4, "batch_size_train": 3, "lr_sched": "glscl_warmup_linear",
                                       "device": "cpu"}), tmp_path)
    seen = record_batches(runner, monkeypatch)
    runner.train()
    groups = runner.optimizer.param_groups
    assert all(group["betas"] == (0.9, 0.95) and group["eps"] == 1e-6 for group in groups)
    assert {group["weight_decay"] for group in groups} == {0.05, 0.0}
    records = read_log_records(tmp_path, "train_step")
    steps = [(r["train_step_epoch"], r["train_step_iter"]) for r in records]
    assert steps == [(epoch, step) for epoch in (0, 1) for step in range(4)]
    expected = [1e-4, 1e-4 + (2e-3 - 1e-4) / 2] + [2e-3 - (2e-3 - 1e-5) * k / 6 for k in range(6)]
    assert [r["train_step_lr"] for r in records] == pytest.approx(expected, rel=1e-9)
    assert [len(captions) for captions in seen] == [3] * 8
    assert runner.device.type == "cpu" and all(p.device.type == "cpu" for p in runner.model.parameters())
    assert runner.output_dir.parent == tmp_path.resolve()


def test_amp_with_bfloat16_runs_each_step_under_autocast_in_bfloat16(run_yaml, tmp_path, monkeypatch):
    """``amp: true`` with ``amp_dtype: bfloat16`` (default float16): the model's forward runs under CPU autocast in
    bfloat16; without ``amp`` under no autocast."""
    states = {}
    for amp in (True, False):
        options = {"iters_per_epoch": 1, "amp": amp, "amp_dtype": "bfloat16"}
        runner = tiny_runner(run_yaml(run=options), tmp_path / str(amp))
        model = runner.unwrap_dist_model(runner.model)
        forward = model.forward

        def recording_forward(samples, *args, forward=forward, amp=amp, **kwargs):
            states[amp] = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
            return forward(samples, *args, **kwargs)

        monkeypatch.setattr(model, "forward", recording_forward)
        runner.train()
    assert states[True] == (True, torch.bfloat16)
    assert states[False][0] is False


def test_keep_last_checkpoints_prunes_older_epoch_checkpoints(run_yaml, tmp_path):
    """``keep_last_checkpoints: 1`` (default: keep all): after 3 epochs only the last epoch's checkpoint is left."""
    tiny_runner(run_yaml(run={"max_epoch": 3, "iters_per_epoch": 1, "keep_last_checkpoints": 1}), tmp_path).train()
    assert sorted(path.name for path in tmp_path.rglob("checkpoint_*.pth")) == ["checkpoint_2.pth"]


def test_evaluate_true_trains_nothing(run_yaml, tmp_path):
    """``evaluate: true`` (default false): no training step, no checkpoint, the weights as built."""
    runner = tiny_runner(run_yaml(run={"iters_per_epoch": 2, "evaluate": True}), tmp_path)
    before = {name: value.clone() for name, value in runner.unwrap_dist_model(runner.model).state_dict().items()}
    runner.train()
    after = runner.unwrap_dist_model(runner.model).state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert not list(tmp_path.rglob("checkpoint_*.pth"))
    assert "train_step" not in next(tmp_path.rglob("log.txt")).read_text()


def test_run_seed_sets_the_training_batches(run_yaml, tmp_path):
    """``seed``: the same seed gives the same first batches, another seed other ones."""
    def first_batches(seed, name):
        loader = tiny_runner(run_yaml(run={"seed": seed, "iters_per_epoch": 3}), tmp_path / name).train_loader
        return [batch["text_input"] for batch in loader.epoch(0)]

    assert first_batches(3, "a") == first_batches(3, "b")
    assert first_batches(3, "c") != first_batches(11, "d")


def test_log_freq_logs_every_nth_step_and_the_last(run_yaml, tmp_path):
    """``log_freq: 3`` over 5 steps: steps 0 and 3, and the epoch's last step, 4."""
    from lavis_glscl import launch

    args = launch.parse_args("test", ["--cfg-path", str(run_yaml(run={"iters_per_epoch": 5, "log_freq": 3})),
                                      "--options", f"run.output_dir={tmp_path / 'run'}", "run.test_splits=[]"])
    launch.build_runner(launch.setup(args)).train()
    assert [r["train_step_iter"] for r in read_log_records(tmp_path / "run", "train_step")] == [0, 3, 4]


def test_split_options_choose_what_the_runner_trains_validates_and_tests(run_yaml, tmp_path):
    """``train_splits``, ``valid_splits`` and ``test_splits`` (each empty by default): one step on ``train``, a
    validation of ``val`` after the epoch, the test figures of ``test``."""
    from lavis_glscl import launch

    cfg = run_yaml(datasets={"shapes_demo": {"generator": {"num_val": 4}}},
                   run={"iters_per_epoch": 1, "train_splits": ["train"], "valid_splits": ["val"],
                        "test_splits": ["test"]})
    args = launch.parse_args("test", ["--cfg-path", str(cfg), "--options", f"run.output_dir={tmp_path}"])
    runner = launch.build_runner(launch.setup(args))
    runner.train()
    assert len(read_log_records(tmp_path, "train_step")) == 1
    assert len(read_log_records(tmp_path, "val_agg_metrics")) == 1
    assert set(runner.test_results) == {"test"}


def test_ddp_and_loader_options_reach_the_wrapped_model_and_the_loaders(run_yaml, tmp_path, one_process_group):
    """Under a process group: ``find_unused_parameters: true`` reaches DDP (default false); ``use_dist_eval_sampler:
    true`` gives the test split a distributed sampler (the tiny yaml's false: none); ``batch_size_eval`` 3 and
    ``num_workers`` 2 reach the loaders (the tiny yaml's 4 and 0, LAVIS's default 4 workers)."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    from lavis_glscl import launch

    def runner_of(name, **run):
        cfg = run_yaml(run={"iters_per_epoch": 1, **run})
        args = launch.parse_args("test", ["--cfg-path", str(cfg), "--options", f"run.output_dir={tmp_path / name}"])
        return launch.build_runner(launch.setup(args))

    runner = runner_of("set", find_unused_parameters=True, use_dist_eval_sampler=True, batch_size_eval=3,
                       num_workers=2, batch_size_train=2)
    assert isinstance(runner.model, DistributedDataParallel) and runner.model.find_unused_parameters
    test_loader = runner.dataloaders["test"]
    assert isinstance(test_loader.sampler, DistributedSampler)
    assert (test_loader.batch_size, test_loader.num_workers) == (3, 2)
    assert (runner.dataloaders["train"].num_workers, runner.dataloaders["train"].batch_size) == (2, 2)
    plain = runner_of("plain")
    assert not plain.model.find_unused_parameters and not isinstance(plain.dataloaders["test"].sampler,
                                                                      DistributedSampler)


def test_warmup_steps_and_lr_decay_rate_reach_the_scheduler(run_yaml, tmp_path):
    """``warmup_steps: 3`` (default 0) outlasts the tiny yaml's ``warmup_ratio`` (0.5 of 6 steps would be 3 too, so
    0.2 here: 1 step): 0, 1/3, 2/3 of ``init_lr`` 1e-3, then linear to 0 at step 6.  ``lr_decay_rate: 0.5``
    (LAVIS's default 1) halves LAVIS's step schedule each epoch: 1e-3, 5e-4, 2.5e-4."""
    tiny_runner(run_yaml(run={"iters_per_epoch": 6, "warmup_steps": 3, "warmup_ratio": 0.2}), tmp_path / "a").train()
    lrs = [r["train_step_lr"] for r in read_log_records(tmp_path / "a", "train_step")]
    assert lrs == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3, 2e-3 / 3, 1e-3 / 3], rel=1e-9, abs=1e-15)
    tiny_runner(run_yaml(run={"lr_sched": "linear_warmup_step_lr", "lr_decay_rate": 0.5, "max_epoch": 3,
                              "iters_per_epoch": 1}), tmp_path / "b").train()
    lrs = [r["train_step_lr"] for r in read_log_records(tmp_path / "b", "train_step")]
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-9)


def test_run_task_and_runner_name_the_registered_classes_that_are_built(run_yaml, tmp_path, monkeypatch):
    """``run.task: glscl_retrieval`` (the tiny yaml's: LAVIS's ``retrieval``) and ``run.runner: runner_base``
    (default ``runner_glscl``) build those registered classes."""
    from lavis.common.registry import registry
    from lavis.runners.runner_base import RunnerBase
    from lavis.tasks.retrieval import RetrievalTask

    from lavis_glscl import launch
    from lavis_glscl.runners.runner import RunnerGlscl
    from lavis_glscl.tasks import GlsclRetrievalTask

    def runner_of(name, **run):
        args = launch.parse_args("test", ["--cfg-path", str(run_yaml(run=run)), "--options",
                                          f"run.output_dir={tmp_path / name}"])
        return launch.build_runner(launch.setup(args))

    ours = runner_of("ours", task="glscl_retrieval")
    assert type(ours.task) is GlsclRetrievalTask and type(ours) is RunnerGlscl
    # LAVIS's runner registers its run directories once per process
    monkeypatch.setitem(registry.mapping, "paths", {key: value for key, value in registry.mapping["paths"].items()
                                                    if key not in ("result_dir", "output_dir")})
    lavis = runner_of("lavis", runner="runner_base")
    assert type(lavis) is RunnerBase and type(lavis.task) is RetrievalTask


def test_the_best_checkpoint_holds_plain_numbers_and_is_reloaded_by_the_safe_reader(run_yaml, tmp_path, monkeypatch):
    """LAVIS's classification task reports ``agg_metrics`` as a numpy scalar: the best checkpoint stores a float (a
    numpy scalar is not data the safe reader takes), and the test split reloads it through that reader."""
    import numpy as np

    from lavis_glscl import launch
    from lavis_glscl.runners import state
    from lavis_glscl.serialization import read_checkpoint

    cfg = run_yaml(datasets={"shapes_demo": {"generator": {"num_val": 4}}},
                   run={"iters_per_epoch": 1, "train_splits": ["train"], "valid_splits": ["val"],
                        "test_splits": ["test"]})
    args = launch.parse_args("test", ["--cfg-path", str(cfg), "--options", f"run.output_dir={tmp_path}"])
    runner = launch.build_runner(launch.setup(args))
    evaluate = type(runner.task).after_evaluation
    monkeypatch.setattr(type(runner.task), "after_evaluation", lambda task, *args, **kwargs: {
        key: np.float64(value) + 1.0 if key == "agg_metrics" else value
        for key, value in evaluate(task, *args, **kwargs).items()})
    read = []
    monkeypatch.setattr(state, "read_checkpoint", lambda path, *args: read.append(path) or read_checkpoint(path, *args))
    runner.train()
    (best,) = tmp_path.rglob("checkpoint_best.pth")
    assert type(read_checkpoint(str(best))["best"]["agg_metrics"]) is float
    assert read == [str(best)]
