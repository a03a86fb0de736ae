"""The console scripts, the shim that runs LAVIS's own scripts with GLSCL registered, and ``tools.plot_log``."""
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import TINY_RUN, read_log_records, run_module

# LAVIS's repository-root train.py in shape, against LAVIS's public API only: no lavis_glscl import, so GLSCL's
# names exist only when something else registered them.
LAVIS_STYLE_TRAIN = '''
"""Train a model as LAVIS's repository-root train.py does."""
import argparse
import random

import numpy as np
import torch

import lavis.tasks as tasks
from lavis.common.config import Config
from lavis.common.dist_utils import get_rank, init_distributed_mode
from lavis.common.logger import setup_logger
from lavis.common.registry import registry
from lavis.common.utils import now
from lavis.runners.runner_base import RunnerBase  # noqa: F401  (registers runner_base)


def parse_args():
    parser = argparse.ArgumentParser(description="Training")
    parser.add_argument("--cfg-path", required=True, help="path to configuration file.")
    parser.add_argument("--options", nargs="+", help="override some settings in the used config")
    return parser.parse_args()


def setup_seeds(config):
    seed = config.run_cfg.seed + get_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_runner_class(cfg):
    return registry.get_runner_class(cfg.run_cfg.get("runner", "runner_base"))


def main():
    job_id = now()
    cfg = Config(parse_args())
    init_distributed_mode(cfg.run_cfg)
    setup_seeds(cfg)
    setup_logger()
    cfg.pretty_print()
    task = tasks.setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner = get_runner_class(cfg)(cfg=cfg, job_id=job_id, task=task, model=model, datasets=datasets)
    runner.train()


if __name__ == "__main__":
    main()
'''


def write_lavis_style_train(directory: Path) -> Path:
    script = directory / "train.py"
    script.write_text(LAVIS_STYLE_TRAIN)
    return script


# ------------------------------------------------------------------ run_lavis_script
def test_run_lavis_script_runs_the_script_as_python_would(tmp_path, monkeypatch, capsys):
    from lavis_glscl import run_lavis_script

    script = tmp_path / "clone" / "probe.py"
    (script.parent / "lavis").mkdir(parents=True)
    # A clone's own lavis/ beside the script would not hold the registrations: it must not be the one imported.
    (script.parent / "lavis" / "__init__.py").write_text("raise ImportError('the clone copy was imported')\n")
    script.write_text(textwrap.dedent("""
        import json, os, sys
        from lavis.common.registry import registry
        with open(sys.argv[-1], "w") as handle:
            json.dump({"name": __name__, "argv": sys.argv, "path0": sys.path[0],
                       "offline": os.environ["HF_HUB_OFFLINE"],
                       "glscl": registry.get_model_class("glscl_pretrain") is not None}, handle)
    """))
    report = tmp_path / "report.json"
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    # setenv first so that teardown removes the value main() sets by default.
    monkeypatch.setenv("HF_HUB_OFFLINE", "unset")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    run_lavis_script.main([str(script), "--help", "--cfg-path", "x.yaml", str(report)])
    seen = json.loads(report.read_text())
    assert seen == {"name": "__main__", "argv": [str(script), "--help", "--cfg-path", "x.yaml", str(report)],
                    "path0": str(script.parent.resolve()), "offline": "1", "glscl": True}
    assert f"not {script.parent / 'lavis'}" in capsys.readouterr().err


def test_run_lavis_script_names_a_missing_script(tmp_path, capsys):
    from lavis_glscl import run_lavis_script

    with pytest.raises(SystemExit) as exit_info:
        run_lavis_script.main([str(tmp_path / "LAVIS" / "train.py"), "--cfg-path", "x.yaml"])
    assert exit_info.value.code == 2
    assert f"no script at '{tmp_path / 'LAVIS' / 'train.py'}'" in capsys.readouterr().err


@pytest.mark.slow
def test_lavis_style_train_script_trains_through_the_shim(tmp_path):
    script = write_lavis_style_train(tmp_path)
    output_dir = tmp_path / "output"
    result = run_module("lavis_glscl.run_lavis_script",
                        [str(script), "--cfg-path", str(TINY_RUN), "--options", f"run.output_dir={output_dir}"],
                        cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert [(r["train_step_epoch"], r["train_step_iter"]) for r in read_log_records(output_dir, "train_step")] == \
        [(0, 0), (0, 1)]
    assert len(list(output_dir.rglob("checkpoint_0.pth"))) == 1


@pytest.mark.slow
def test_lavis_style_train_script_alone_does_not_know_glscl(tmp_path):
    """The same script under plain ``python``: LAVIS has never heard of GLSCL's names, so the shim is what works."""
    script = write_lavis_style_train(tmp_path)
    result = subprocess.run([sys.executable, str(script), "--cfg-path", str(TINY_RUN), "--options",
                             f"run.output_dir={tmp_path / 'output'}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode != 0
    assert "Model 'glscl_pretrain' has not been registered" in result.stdout, result.stdout[-3000:]
    assert not list((tmp_path / "output").rglob("log.txt"))


# ------------------------------------------------------------------ console scripts
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


# ------------------------------------------------------------------ plot_log
HAND_WRITTEN_LOG = """{
    "run": {
        "task": "retrieval",
        "valid_splits": ["val"],
        "test_splits": ["test"]
    },
    "model": {"arch": "glscl_pretrain"}
}
{"train_step_epoch": 0, "train_step_iter": 0, "train_step_modality": "image", "train_step_lr": 0.0, "train_step_loss": 9.0, "train_step_loss_itc": 4.0}
{"train_step_epoch": 0, "train_step_iter": 2, "train_step_modality": "image", "train_step_lr": 0.1, "train_step_loss": 8.0, "train_step_loss_itc": 3.5}
{"train_loss": 8.5, "train_loss_itc": 3.75, "train_lr": 0.1}
{"val_txt_r1": 10.0, "val_img_r1": 20.0, "val_agg_metrics": 15.0, "best_epoch": 0, "val_best_epoch": 0}
{"train_step_epoch": 1, "train_step_iter": 0, "train_step_modality": "image", "train_step_lr": 0.1, "train_step_loss": 7.0, "train_step_loss_itc": 3.0}
{"train_step_epoch": 1, "train_step_iter": 2, "train_step_modality": "image", "train_step_lr": 0.0, "train_step_loss": 6.5, "train_step_loss_itc": 2.5}
{"val_txt_r1": 30.0, "val_img_r1": 40.0, "val_agg_metrics": 35.0, "val_best_epoch": 1}
{"train_step_epoch": 2, "train_step_iter": 0, "train_step_modal
"""
HAND_WRITTEN_EVALUATE = """{"txt_r1": 50.0, "img_r1": 60.0, "agg_metrics": 55.0}
{"glscl": {"pair_accuracy": 75.0, "agg_metrics": 57.5}}
"""


def test_plot_log_reads_the_values_written(tmp_path):
    from lavis_glscl.tools import plot_log

    run_dir = tmp_path / "finetune" / "20250101120000"
    run_dir.mkdir(parents=True)
    (run_dir / "log.txt").write_text(HAND_WRITTEN_LOG)
    (run_dir / "evaluate.txt").write_text(HAND_WRITTEN_EVALUATE)
    (tmp_path / "finetune" / "latest").symlink_to(run_dir.name)

    records = plot_log.parse_records(HAND_WRITTEN_LOG)
    assert plot_log.iters_per_epoch(records) == 3  # log_freq 2: iterations 0 and 2 of 3 logged
    assert plot_log.loss_series(records) == {"loss": ([0, 2, 3, 5], [9.0, 8.0, 7.0, 6.5]),
                                             "loss_itc": ([0, 2, 3, 5], [4.0, 3.5, 3.0, 2.5])}
    assert plot_log.find_logs([str(tmp_path)]) == [(run_dir / "log.txt").resolve()]
    run = plot_log.read_run(run_dir / "log.txt", "finetune/20250101120000")
    assert run.metrics == {"val": {"txt_r1": 30.0, "img_r1": 40.0, "agg_metrics": 35.0, "best_epoch": 1.0},
                           "test": {"txt_r1": 50.0, "img_r1": 60.0, "agg_metrics": 57.5, "pair_accuracy": 75.0}}
    assert plot_log.metric_columns([run], ["agg_metrics"]) == [("val", "agg_metrics"), ("test", "agg_metrics")]
    assert ("val", "best_epoch") not in plot_log.metric_columns([run])


def test_plot_log_without_a_log_or_records_says_so(tmp_path):
    from lavis_glscl.tools import plot_log

    (tmp_path / "empty_run").mkdir()
    with pytest.raises(SystemExit, match=r"no log\.txt in or under .*empty_run"):
        plot_log.main([str(tmp_path / "empty_run"), "--out", str(tmp_path / "plot.png")])
    (tmp_path / "empty_run" / "log.txt").write_text(HAND_WRITTEN_LOG.split("}\n{", 1)[0] + "}\n")  # the config only
    with pytest.raises(SystemExit, match="no train_step losses and no evaluation metrics"):
        plot_log.main([str(tmp_path / "empty_run"), "--out", str(tmp_path / "plot.png")])
    assert not (tmp_path / "plot.png").exists()


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
