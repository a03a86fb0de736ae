"""Multi-process launches: every registered trainable model trains under 2-process torchrun (gloo) with every
objective on and with one off or a tower frozen, the GLSCL models' losses equal to a 1-process run at the same global
batch; grouped video batches split across ranks; SLURM's variables start a two-process run.

DDP needs a gradient for every trainable parameter in every step; ``tests/unit/models/test_base.py`` checks the
freezing rule against autograd in one process, these tests run the real launch.
"""
import os
import subprocess
import sys

import pytest
from helpers import (
    DETERMINISTIC,
    GLSCL_OBJECTIVES,
    TINY_MIXED_RUN,
    TINY_RUN,
    TRAIN_VARIANTS,
    free_port,
    read_log_records,
    run_module,
    step_losses,
    tiny_vqa_yaml,
    torchrun_args,
    train_in_process,
)

ALL_GLSCL_OFF_ONE = {f"{name}_off": [f"model.loss_weights.{name}=0"] for name in GLSCL_OBJECTIVES}

# model -> (run yaml options, {variant: options}); the GLSCL models' variants are also run in one process
MATRIX = {
    "glscl_pretrain": ([], {"all_on": [], **ALL_GLSCL_OFF_ONE}),
    "glscl_retrieval": (["model.arch=glscl_retrieval", "model.model_type=tiny"],
                        {"all_on": [], "itc_off_vision_frozen": ["model.loss_weights.itc=0",
                                                                 "model.freeze=[vision_transformer]"]}),
    "glscl_vqa": ([], {"default": [], "text_frozen": ["model.freeze=[text_transformer]"]}),
    "albef_glscl_pretrain": (["model.arch=albef_glscl_pretrain", "model.model_type=tiny"],
                             {"all_on": [], "mgsc_off": ["model.loss_weights.mgsc=0"]}),
    "matching_dual_encoder": (["model.arch=matching_dual_encoder", "model.model_type=tiny"],
                              {"with_head": ["model.similarity_head=token_max_sum"], "without_head": []}),
    "albef_pretrain_offline": (["model.arch=albef_pretrain_offline", "model.model_type=tiny"], {"default": []}),
    "albef_retrieval_offline": (["model.arch=albef_retrieval_offline", "model.model_type=tiny"], {"default": []}),
    "blip_retrieval_offline": (["model.arch=blip_retrieval_offline", "model.model_type=tiny"], {"default": []}),
}
GLSCL_MODELS = ("glscl_pretrain", "glscl_retrieval", "glscl_vqa")
GROUPED_VIDEO_VARIANTS = {"grouped": [],
                          "completion_on_images_only": ["model.video_completion.mgsc=false",
                                                        "model.video_completion.mltc=false"]}


def variant_arguments(variants, common):
    return [arg for name, options in variants.items() for arg in ("--variant", name, *common, *options)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(MATRIX))
def test_model_trains_under_two_process_torchrun_with_objectives_on_and_off(lavis_glscl, tmp_path, arch):
    base_options, variants = MATRIX[arch]
    cfg_path = tiny_vqa_yaml(tmp_path, tmp_path / "unused") if arch == "glscl_vqa" else TINY_RUN
    exact = arch in GLSCL_MODELS
    # two steps: DDP reports a parameter without gradient at the start of the second
    common = [*base_options, "run.iters_per_epoch=2", "run.batch_size_train=2", "run.test_splits=[]",
              *(DETERMINISTIC + ["model.mltc_image_gather=true"] if exact and arch != "glscl_vqa" else []),
              *(DETERMINISTIC[:3] if arch == "glscl_vqa" else [])]
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(2), str(TRAIN_VARIANTS),
               "--cfg-path", str(cfg_path), "--output-dir", str(tmp_path / "two"),
               *variant_arguments(variants, common)]
    result = subprocess.run(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    for name in variants:
        steps = read_log_records(tmp_path / "two" / name, "train_step")
        assert [r["train_step_iter"] for r in steps] == [0, 1], name
    if not exact:
        return
    for name, options in variants.items():
        train_in_process(cfg_path, tmp_path / "one" / name,
                         [*common, *options, "run.batch_size_train=4"])
        expected, observed = step_losses(tmp_path / "one" / name, 0, 0), step_losses(tmp_path / "two" / name, 0, 0)
        assert expected.keys() == observed.keys(), name
        for key in expected:
            assert observed[key] == pytest.approx(expected[key], abs=1e-4), (name, key)


@pytest.mark.slow
def test_grouped_video_batches_with_partner_itm_and_group_itc_train_under_torchrun_as_in_one_process(lavis_glscl,
                                                                                                     tmp_path):
    """Clip/reversal groups split across two ranks (2 rows each): partner ITM negatives, ITC inside the groups (its
    text side detached) and the caption hinge give at step 0 the losses of one process over the 4 rows, with MGSC and
    MLTC on the clips and with both on images only."""
    video = "datasets.shapes_video_demo"
    common = ["run.train_dataset_ratios=[0.0,1.0]", f"{video}.train_batch_group_size=2", "model.itm_negatives=partner",
              "model.group_contrast.weight=1.0", "model.group_contrast.temperature=0.05",
              "model.group_contrast.text_margin=-0.5",
              "model.group_contrast.detach_text=true", "run.iters_per_epoch=2",
              "run.test_splits=[]", *DETERMINISTIC[:3], f"{video}.vis_processor.train.name=glscl_video_eval",
              "model.mltc_image_gather=true"]
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(2), str(TRAIN_VARIANTS),
               "--cfg-path", str(TINY_MIXED_RUN), "--output-dir", str(tmp_path / "two"),
               *variant_arguments(GROUPED_VIDEO_VARIANTS, [*common, "run.batch_size_train=2"])]
    result = subprocess.run(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    for name, options in GROUPED_VIDEO_VARIANTS.items():
        train_in_process(TINY_MIXED_RUN, tmp_path / "one" / name, [*common, *options, "run.batch_size_train=4"])
        expected = step_losses(tmp_path / "one" / name, 0, 0)
        observed = step_losses(tmp_path / "two" / name, 0, 0)
        assert {"loss_itc_group", "loss_itc_group_text", "loss_mltc_text"} <= expected.keys(), name
        assert ("loss_mgsc_image" in expected) == (name == "grouped"), name
        assert expected.keys() == observed.keys(), name
        for key in expected:
            assert observed[key] == pytest.approx(expected[key], abs=1e-4), (name, key)


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
             f"run.output_dir={tmp_path}", "run.batch_size_train=2", "run.test_splits=[]", "run.log_freq=1"],
            cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert '"world_size": 2' in outputs[0] and '"dist_backend": "gloo"' in outputs[0]
    assert [r["train_step_iter"] for r in read_log_records(tmp_path, "train_step")] == [0, 1]
