"""What ``compare`` reads back from runs: evaluator metrics by split, and finished seeds it may reuse."""
import json
import math

import pytest

from lavis_glscl.compare import RECORD_FILE, finished_record, read_metrics


def test_read_metrics_takes_the_last_line_of_the_split_and_its_numbers(tmp_path):
    (tmp_path / "job").mkdir()
    lines = [{"split": "val", "txt_r1": 30.0}, {"split": "test", "txt_r1": 10.0, "retrieval_scorer": "itc"},
             {"split": "val", "txt_r1": 40.0}]
    (tmp_path / "job" / "evaluate.txt").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_metrics(tmp_path) == {"txt_r1": 10.0}
    assert read_metrics(tmp_path, split="val") == {"txt_r1": 40.0}
    (tmp_path / "lavis").mkdir()  # LAVIS's retrieval and VQA tasks write one line without a split: the split evaluated
    (tmp_path / "lavis" / "evaluate.txt").write_text(json.dumps({"agg_metrics": 60.0, "yes/no": 80.0}) + "\n")
    assert read_metrics(tmp_path / "lavis") == {"agg_metrics": 60.0, "yes/no": 80.0}
    (tmp_path / "classification").mkdir()  # LAVIS's classification task nests the metrics under the split
    (tmp_path / "classification" / "evaluate.txt").write_text(json.dumps({"test": {"agg_metrics": 0.5, "acc": 0.5}}))
    assert read_metrics(tmp_path / "classification") == {"agg_metrics": 0.5, "acc": 0.5}


def test_a_finished_seed_is_reused_only_for_the_same_options_tests_and_finetunes(tmp_path):
    finetune = {"name": "nlvr", "cfg": "nlvr.yaml", "options": ["model.pretrained={checkpoint}"]}
    record = {"seed": 0, "metrics": {"r1": 1.0}, "options": ["run.seed=0"], "tests": ["bench.yaml"],
              "finetunes": [finetune]}
    (tmp_path / RECORD_FILE).write_text(json.dumps(record))
    assert finished_record(tmp_path, ["run.seed=0"], ["bench.yaml"], [finetune]) == record
    assert finished_record(tmp_path, ["run.seed=1"], ["bench.yaml"], [finetune]) is None
    assert finished_record(tmp_path, ["run.seed=0"], [], [finetune]) is None  # a new test yaml: its metrics are missing
    assert finished_record(tmp_path, ["run.seed=0"], ["bench.yaml"], []) is None
    assert finished_record(tmp_path / "never_run", ["run.seed=0"], ["bench.yaml"], [finetune]) is None


def test_finished_only_tabulates_the_finished_seeds_and_runs_nothing(tmp_path, monkeypatch, capsys):
    """``--finished-only`` on a compare still running: the unfinished seeds (and a row with none) are left out, the
    finished ones are read back from their evaluators' files and paired seed by seed; no process is started."""
    from omegaconf import OmegaConf

    from lavis_glscl import compare

    def no_process(*args, **kwargs):
        raise AssertionError("--finished-only started a run")

    monkeypatch.setattr(compare, "_run", no_process)
    cfg = OmegaConf.create({"compare": {
        "base": "projects/glscl/demo/pretrain_shapes.yaml", "output_dir": str(tmp_path), "seeds": [0, 1, 2],
        "metrics": ["r5"], "runs": [{"name": "base"}, {"name": "new", "options": ["model.x=1"], "baseline": "base"},
                                    {"name": "later", "baseline": "base"}]}})
    finished = {("base", 0): 50.0, ("base", 1): 60.0, ("new", 0): 55.0, ("new", 1): 62.0}
    for (name, seed), r5 in finished.items():
        run_dir = tmp_path / f"{name}_seed{seed}"
        (run_dir / "job").mkdir(parents=True)
        (run_dir / "job" / "evaluate.txt").write_text(json.dumps({"split": "test", "r5": r5}) + "\n")
        options = (["model.x=1"] if name == "new" else []) + [f"run.seed={seed}"]
        record = {"seed": seed, "metrics": {}, "minutes": 1.0, "cpu_minutes": 2.0, "steps": 10, "options": options,
                  "tests": [], "finetunes": []}
        (run_dir / RECORD_FILE).write_text(json.dumps(record))
    OmegaConf.save(cfg, tmp_path / "cfg.yaml")
    compare.main(["--cfg-path", str(tmp_path / "cfg.yaml"), "--finished-only"])
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(row["name"], row["seeds"]) for row in rows] == [("base", [0, 1]), ("new", [0, 1])]
    assert rows[0]["metrics"]["r5"] == 55.0 and rows[1]["metrics"]["r5"] == 58.5
    paired = rows[1]["paired"]["r5"]  # differences 5 and 2: t = 3.5 / (sd / sqrt 2) = 7/3 with 1 degree of freedom
    assert paired["difference"] == 3.5 and paired["sd"] == pytest.approx(4.5 ** 0.5)
    assert paired["p"] == pytest.approx(1 - 2 * math.atan(7 / 3) / math.pi) and not paired["exceeds_spread"]
    assert "later_seed0: not finished, left out" in capsys.readouterr().out
