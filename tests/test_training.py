"""End-to-end runs through LAVIS's task, config and runner machinery (subprocesses where a fresh process matters)."""
import math

import pytest
import torch
from helpers import DETERMINISTIC, TINY_RUN, free_port, read_log_records, run_module, step_losses


@pytest.mark.slow
def test_train_module_runs_two_iterations_and_tests(tmp_path):
    result = run_module("lavis_glscl.train", ["--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={tmp_path}"],
                        cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    records = read_log_records(tmp_path, "train_step")
    assert [r["train_step_iter"] for r in records] == [0, 1]
    assert all(math.isfinite(r["train_step_loss"]) and r["train_step_loss_mgsc_text"] > 0 for r in records)
    assert list(tmp_path.rglob("checkpoint_0.pth"))
    assert "txt_r1" in result.stdout and "img_r5" in result.stdout  # LAVIS retrieval metrics, printed
    evaluation = list(tmp_path.rglob("evaluate.txt"))
    assert len(evaluation) == 1 and "agg_metrics" in evaluation[0].read_text()


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    common = DETERMINISTIC + ["run.iters_per_epoch=1", "model.mltc_image_gather=true"]
    one = run_module("lavis_glscl.train", ["--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={single}",
                                           "run.batch_size_train=4", *common], cwd=tmp_path)
    assert one.returncode == 0, one.stdout[-3000:]
    two = run_module("torch.distributed.run", [
        "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "lavis_glscl.train", "--cfg-path", str(TINY_RUN),
        "--options", f"run.output_dir={double}", "run.batch_size_train=2", *common], cwd=tmp_path)
    assert two.returncode == 0, two.stdout[-3000:]
    assert '"dist_backend": "gloo"' in two.stdout
    expected, observed = step_losses(single, 0, 0), step_losses(double, 0, 0)
    assert expected.keys() == observed.keys()
    for key in expected:
        assert observed[key] == pytest.approx(expected[key], abs=1e-4), key


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
