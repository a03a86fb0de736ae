"""``python -m lavis_glscl.compare`` over seeds: per-seed metrics, means, standard deviations, steps at a plateau, the
paired test against a baseline row, tests and fine-tunes of each trained checkpoint, checked against each run's own
evaluator output."""
import json
import math
import statistics

import pytest
from helpers import TINY_RUN, run_module

from lavis_glscl.compare import read_metrics


def evaluator_metrics(run_dir):
    """What LAVIS's retrieval task wrote for one run: its evaluate.txt, read here without the compare module."""
    (evaluate,) = run_dir.rglob("evaluate.txt")
    return json.loads(evaluate.read_text().splitlines()[0])


@pytest.mark.slow
def test_two_seed_two_row_compare_reports_means_stds_and_paired_differences(tmp_path):
    config = tmp_path / "compare.yaml"
    config.write_text(f"""
compare:
  base: {TINY_RUN}
  output_dir: {tmp_path / 'out'}
  metrics: [txt_r1, img_r5]
  seeds: [1, 2]
  plateau: {{metric: train_loss, window: 1, min_delta: 1000000.0}}
  options: [run.max_epoch=4, run.iters_per_epoch=1, run.k_test=2]
  runs:
    - name: GLSCL
      options: []
      seed_options: ["model.mask_seed={{seed}}"]
    - name: GLSCL without MGSC and MLTC
      options: [model.loss_weights.mgsc=0, model.loss_weights.mltc=0]
      baseline: GLSCL
""")
    result = run_module("lavis_glscl.compare", ["--cfg-path", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["name"] for row in rows] == ["GLSCL", "GLSCL without MGSC and MLTC"]
    per_run = {}
    for row, directory in zip(rows, ("glscl", "glscl_without_mgsc_and_mltc")):
        assert row["seeds"] == [1, 2]
        runs = [evaluator_metrics(tmp_path / "out" / f"{directory}_seed{seed}") for seed in (1, 2)]
        per_run[row["name"]] = runs
        for record, expected in zip(row["per_seed"], runs):
            assert record["metrics"]["txt_r1"] == expected["txt_r1"]
            assert record["metrics"]["img_r5"] == expected["img_r5"]
            assert record["steps"] == 2  # the plateau rule stopped after its second check
        for metric in ("txt_r1", "img_r5"):
            values = [run[metric] for run in runs]
            assert row["metrics"][metric] == pytest.approx(statistics.mean(values))
            assert row["std"][metric] == pytest.approx(statistics.stdev(values))
    assert rows[1]["baseline"] == "GLSCL" and "paired" not in rows[0]
    for metric in ("txt_r1", "img_r5"):
        differences = [ours[metric] - theirs[metric]
                       for ours, theirs in zip(per_run["GLSCL without MGSC and MLTC"], per_run["GLSCL"])]
        paired = rows[1]["paired"][metric]
        assert paired["difference"] == pytest.approx(statistics.mean(differences))
        spread = statistics.stdev(differences)
        assert paired["sd"] == pytest.approx(spread)
        if spread > 0:  # two seeds: t with one degree of freedom, whose CDF is 1/2 + atan(t)/pi
            t = statistics.mean(differences) / (spread / math.sqrt(2))
            assert paired["p"] == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, abs=1e-6)
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| GLSCL without MGSC and MLTC - GLSCL |" in table and " ± " in table
    assert (tmp_path / "out" / "results.png").stat().st_size > 5000
    assert read_metrics(tmp_path / "out" / "glscl_seed1")["txt_r1"] == rows[0]["per_seed"][0]["metrics"]["txt_r1"]
    assert all(0 < record["cpu_minutes"] for row in rows for record in row["per_seed"])

    # Rerun with the second row changed and on its own seed: the first row's finished seeds are reused, the second
    # row's seed 2 retrained; one shared seed is no paired test.
    config.write_text(config.read_text().replace("model.loss_weights.mltc=0]",
                                                 "model.loss_weights.mltc=0, model.loss_weights.itm=0]\n"
                                                 "      seeds: [2]"))
    rerun = run_module("lavis_glscl.compare", ["--cfg-path", str(config)], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert rerun.stdout.count("reusing the finished run") == 2
    assert "GLSCL without MGSC and MLTC_seed1" not in rerun.stdout
    rerun_rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rerun_rows[0] == rows[0]
    assert rerun_rows[1]["seeds"] == [2] and set(rerun_rows[1]["paired"].values()) == {None}


@pytest.mark.slow
def test_finetunes_train_from_each_checkpoint_and_join_under_their_prefix_in_titled_tables(tmp_path):
    from lavis_glscl.compare import last_checkpoint

    config = tmp_path / "compare.yaml"
    config.write_text(f"""
compare:
  base: {TINY_RUN}
  output_dir: {tmp_path / 'out'}
  seeds: [1]
  options: [run.iters_per_epoch=1, run.k_test=2]
  finetunes:
    - {{name: again, cfg: {TINY_RUN}, options: ["model.pretrained={{checkpoint}}", "run.k_test=2", "run.log_freq=1"]}}
  scale: {{again_txt_r5: 100}}
  tables:
    - {{title: Zero-shot, metrics: [txt_r5]}}
    - {{title: After fine-tuning, metrics: [again_txt_r5]}}
  runs:
    - name: GLSCL
""")
    result = run_module("lavis_glscl.compare", ["--cfg-path", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())
    finetuned = tmp_path / "out" / "glscl_seed1_again"
    assert row["metrics"]["again_txt_r5"] == pytest.approx(100 * evaluator_metrics(finetuned)["txt_r5"])
    assert row["metrics"]["txt_r5"] == evaluator_metrics(tmp_path / "out" / "glscl_seed1")["txt_r5"]
    started_from = last_checkpoint(tmp_path / "out" / "glscl_seed1")
    assert f"Loaded {started_from}" in (tmp_path / "out" / "glscl_seed1_again.log").read_text()
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.index("### Zero-shot") < table.index("| txt_r5 |") < table.index("### After fine-tuning") \
        < table.index("| again_txt_r5 |")


@pytest.mark.slow
def test_compare_command_trains_evaluates_tests_and_tabulates(tmp_path):
    from helpers import TINY_RUN, align_bench_tiny_yaml, run_module

    config = tmp_path / "compare.yaml"
    config.write_text(f"""
compare:
  base: {TINY_RUN}
  output_dir: {tmp_path / 'out'}
  metrics: [txt_r1, img_r5, global_box]
  tests: [{align_bench_tiny_yaml(tmp_path, 'unused', arch='blip_retrieval_offline')}]
  runs:
    - name: GLSCL
      options: []
      evaluations:
        - name: GLSCL + inverted softmax
          options: [run.task=glscl_retrieval, run.score_normalizer=inverted_softmax]
    - name: GLSCL without MGSC and MLTC
      options: [model.loss_weights.mgsc=0, model.loss_weights.mltc=0]
""")
    result = run_module("lavis_glscl.compare", ["--cfg-path", str(config)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in rows] == ["GLSCL", "GLSCL + inverted softmax", "GLSCL without MGSC and MLTC"]
    assert all({"txt_r1", "img_r5"} <= set(r["metrics"]) for r in rows)
    trained = [rows[0], rows[2]]  # the ALIGN-BENCH test runs on trained rows, with the model each trained
    assert all(0 < r["metrics"]["global_box"] < 100 and r["metrics"]["num_images"] == 4 for r in trained)
    assert "global_box" not in rows[1]["metrics"]
    assert rows[0]["metrics"]["agg_metrics"] == rows[0]["metrics"]["txt_r_mean"]  # the run's own, not the test's
    logs = sorted(p.name for p in (tmp_path / "out").glob("*align_bench_tiny.log"))
    assert logs == ["glscl_align_bench_tiny.log", "glscl_without_mgsc_and_mltc_align_bench_tiny.log"]
    assert '"arch": "glscl_pretrain"' in (tmp_path / "out" / logs[0]).read_text()  # not the yaml's blip
    assert "| GLSCL + inverted softmax |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "results.png").stat().st_size > 1000
