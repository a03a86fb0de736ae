"""``python -m lavis_glscl.train`` and the console scripts in fresh processes: a tiny run trains and tests, bad options
and files stop in seconds with one line, a released recipe without its weight paths fails before building anything,
runs started in one second get directories of their own, and ``tools.plot_log`` overlays two runs."""
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN, read_log_records, run_module


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
def test_console_scripts_show_their_help():
    scripts = [Path(sys.executable).parent / name for name in ("lavis-glscl-train", "lavis-glscl-evaluate")]
    for script in scripts:
        assert script.is_file(), f"{script} missing: reinstall with `pip install -e .` (setup.py entry_points)"
    # Both at once: each spends its seconds importing LAVIS.
    processes = [subprocess.Popen([str(script), "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for script in scripts]
    for script, process in zip(scripts, processes):
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]
        assert f"usage: {script.name} [-h] --cfg-path CFG_PATH" in output


def bad_inputs(tmp_path, tiny):
    """(name, --cfg-path, --options, what the one-line error must name) for inputs a user gets wrong."""
    from helpers import TINY_RUN

    (tmp_path / "list.yaml").write_text("- model: {arch: glscl_pretrain}\n- run: {task: retrieval}\n")
    (tmp_path / "broken.yaml").write_text("model: {arch: glscl_pretrain\nrun: [\n")
    torch.save({"model": tiny("matching_dual_encoder").state_dict()}, tmp_path / "other.pth")
    torch.save({"model": {}, "optimizer": {}, "epoch": 0, "iteration": None,
                "config": {"model": {"arch": "glscl_retrieval", "model_type": "tiny"}}}, tmp_path / "retrieval.pth")
    run = str(TINY_RUN)
    return [
        ("misspelled run key", run, ["run.batch_size_trian=4"],
         "run.batch_size_trian (did you mean 'batch_size_train'?)"),
        ("negative epochs", run, ["run.max_epoch=-1"], "run.max_epoch must be at least 1"),
        ("learning rate not a number", run, ["run.init_lr=fast"], "run.init_lr must be a number"),
        ("empty batch", run, ["run.batch_size_train=0"], "run.batch_size_train must be at least 1"),
        ("model width not a number", run, ["model.vision.width=wide"], "model.vision.width must be an integer"),
        ("option without =", run, ["run.max_epoch"], "--options 'run.max_epoch' is not key=value"),
        ("quoted false", run, ['model.trust_checkpoint="false"'], "model.trust_checkpoint must be true or false"),
        ("unknown precision", run, ["run.amp_dtype=float8"], "run.amp_dtype must be 'float16' or 'bfloat16'"),
        ("unknown objective", run, ["model.loss_weights.itcc=1.0"],
         "unknown option(s) model.loss_weights.itcc (did you mean 'itc'?)"),
        ("misspelled model key", run, ["model.mgsc_temprature=0.1"], "model.mgsc_temprature (did you mean "
                                                                     "'mgsc_temperature'?)"),
        ("plateau window", run, ["run.plateau.metric=train_loss", "run.plateau.window=0"], "run.plateau"),
        ("yaml that is a list", str(tmp_path / "list.yaml"), [], "list.yaml is a list; a run yaml is a mapping"),
        ("yaml that does not parse", str(tmp_path / "broken.yaml"), [], "broken.yaml is not valid yaml"),
        ("missing yaml", str(tmp_path / "absent.yaml"), [], "absent.yaml does not exist"),
        ("weights of another model", run, [f"model.pretrained={tmp_path / 'other.pth'}"],
         "below model.min_checkpoint_coverage 0.5"),
        ("resume across architectures", run, [f"run.resume_ckpt_path={tmp_path / 'retrieval.pth'}"],
         "a checkpoint of glscl_retrieval (tiny), this run builds glscl_pretrain (tiny)"),
        ("missing resume checkpoint", run, [f"run.resume_ckpt_path={tmp_path / 'gone.pth'}"],
         "run.resume_ckpt_path"),
    ]


# found only once the model is built and the file read
FOUND_AFTER_BUILDING = {"weights of another model", "resume across architectures"}


@pytest.mark.slow
def test_bad_options_and_files_stop_before_building_with_one_line_naming_the_key(tiny, tmp_path):
    def attempt(case):
        """The run's exit code, output, wall seconds and its own CPU seconds (``os.wait4``: what other jobs on a
        shared machine do not inflate)."""
        name, cfg_path, options, expected = case
        start = time.monotonic()
        log = tmp_path / "-".join(name.split())
        with open(f"{log}.out", "w+") as out, open(f"{log}.err", "w+") as err:
            process = subprocess.Popen([sys.executable, "-m", "lavis_glscl.train", "--cfg-path", cfg_path, "--options",
                                        f"run.output_dir={tmp_path / 'out'}", *options], cwd=tmp_path, stdout=out,
                                       stderr=err, text=True)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0), err.seek(0)
            result = subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())
        return name, expected, result, time.monotonic() - start, usage.ru_utime + usage.ru_stime

    cases = bad_inputs(tmp_path, tiny)
    assert len(cases) >= 12
    with ThreadPoolExecutor(2) as pool:
        for name, expected, result, seconds, cpu_seconds in pool.map(attempt, cases):
            assert result.returncode == 2, (name, result.stderr[-2000:])
            assert "Traceback" not in result.stdout + result.stderr, (name, result.stderr[-2000:])
            errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
            assert len(errors) == 1 and expected in errors[0], (name, result.stderr[-2000:])
            assert name in FOUND_AFTER_BUILDING or "Building" not in result.stdout + result.stderr, name
            assert cpu_seconds < 20 and seconds < 60, (name, cpu_seconds, seconds)  # 6-9 s wall on an idle 2-core CPU


@pytest.mark.slow
def test_released_recipe_without_weight_paths_fails_before_building_anything(tmp_path):
    result = run_module("lavis_glscl.train", ["--cfg-path", "projects/glscl/pretrain/pretrain_base_4m.yaml"],
                        cwd=tmp_path)
    assert result.returncode == 2
    assert "model.vision_init.path: a local OpenAI CLIP ViT-B/16 file" in result.stdout
    assert "model.text.path: a local roberta-base directory" in result.stdout
    assert "Traceback" not in result.stdout and "Building" not in result.stdout


@pytest.mark.slow
def test_two_runs_started_in_a_taken_second_write_two_directories(tmp_path):
    """Every second of the next minute is taken under ``output_dir`` (as by runs started then): two runs started
    together each claim a directory of their own, with the suffixes, and leave the taken ones alone."""
    import datetime

    output_dir = tmp_path / "out"
    now = datetime.datetime.now()
    taken = {(now + datetime.timedelta(seconds=s)).strftime("%Y%m%d%H%M%S") for s in range(60)}
    for name in taken:
        (output_dir / name).mkdir(parents=True)
    environment = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "lavis_glscl.train", "--cfg-path", str(TINY_RUN), "--options",
               f"run.output_dir={output_dir}", "run.test_splits=[]"]
    runs = [subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for _ in range(2)]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stdout.read()[-3000:]
    written = sorted(path.parent.name for path in output_dir.glob("*/checkpoint_0.pth") if not path.parent.is_symlink())
    assert len(written) == 2 and len(set(written)) == 2
    assert all(name.rsplit("_", 1)[0] in taken and name not in taken for name in written)
    assert all(not any((output_dir / name).iterdir()) for name in taken)


@pytest.mark.slow
def test_plot_log_overlays_two_tiny_runs(tmp_path):
    from lavis_glscl.tools import plot_log

    def train(name, seed):
        return run_module("lavis_glscl.train", ["--cfg-path", str(TINY_RUN), "--options",
                                                f"run.output_dir={tmp_path / 'runs' / name}", "run.iters_per_epoch=6",
                                                f"run.seed={seed}"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})

    # Side by side, one thread each: most of a tiny run is its single-threaded start-up.
    with ThreadPoolExecutor(2) as pool:
        for result in pool.map(train, ("run_a", "run_b"), (7, 8)):
            assert result.returncode == 0, result.stdout[-3000:]
    out = tmp_path / "plot" / "runs.png"
    runs = plot_log.main([str(tmp_path / "runs"), "--out", str(out)])
    assert [run.label.split("/")[0] for run in runs] == ["run_a", "run_b"]
    for run in runs:
        assert {"loss", "loss_itc", "loss_itm", "loss_mlm"} <= set(run.losses)
        assert all(steps == list(range(6)) and len(values) == 6 for steps, values in run.losses.values())
        assert {"txt_r1", "img_r1", "agg_metrics"} <= set(run.metrics["test"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
