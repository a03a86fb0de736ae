"""What ``compare`` reads back from runs: evaluator metrics by split, and finished seeds it may reuse."""
import json

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
