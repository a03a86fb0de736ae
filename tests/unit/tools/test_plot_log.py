"""``tools.plot_log`` reads the values a run wrote, and says so when there are none."""
import json

import pytest

LOGGED_CONFIG = """{
    "run": {
        "task": "retrieval",
        "valid_splits": ["val"],
        "test_splits": ["test"]
    },
    "model": {"arch": "glscl_pretrain"}
}
"""


def train_step(epoch, iteration, lr, loss, loss_itc):
    return {"train_step_epoch": epoch, "train_step_iter": iteration, "train_step_modality": "image",
            "train_step_lr": lr, "train_step_loss": loss, "train_step_loss_itc": loss_itc}


RECORDS = [train_step(0, 0, 0.0, 9.0, 4.0), train_step(0, 2, 0.1, 8.0, 3.5),
           {"train_loss": 8.5, "train_loss_itc": 3.75, "train_lr": 0.1},
           {"val_txt_r1": 10.0, "val_img_r1": 20.0, "val_agg_metrics": 15.0, "best_epoch": 0, "val_best_epoch": 0},
           train_step(1, 0, 0.1, 7.0, 3.0), train_step(1, 2, 0.0, 6.5, 2.5),
           {"val_txt_r1": 30.0, "val_img_r1": 40.0, "val_agg_metrics": 35.0, "val_best_epoch": 1}]

# a log.txt: the run's config (pretty-printed), one record a line, and a last line cut short
HAND_WRITTEN_LOG = (LOGGED_CONFIG + "".join(json.dumps(record) + "\n" for record in RECORDS)
                    + '{"train_step_epoch": 2, "train_step_iter": 0, "train_step_modal\n')

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
