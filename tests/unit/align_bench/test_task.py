"""The ALIGN-BENCH task on tiny models writes the scores and the uniform baseline."""
import json
import pickle

import pytest
from helpers import align_bench_tiny_yaml

from lavis_glscl.align_bench import scoring
from lavis_glscl.align_bench.data import shapes_bench_dir


@pytest.mark.parametrize("arch", ["glscl_retrieval", "albef_retrieval_offline", "blip_retrieval_offline"])
def test_task_on_a_tiny_model_writes_the_scores_and_the_uniform_baseline(lavis_glscl, tmp_path, arch):
    from lavis_glscl import launch

    config = align_bench_tiny_yaml(tmp_path, tmp_path / "out", arch)
    runner = launch.build_runner(launch.LaunchConfig(launch.parse_args("x", ["--cfg-path", str(config)])))
    results = runner.evaluate(skip_reload=True)["test"]

    bench = shapes_bench_dir(num_images=4, image_size=32, seed=2)
    assert sorted(p.name for p in (bench / "images").iterdir()) == [f"{i}.jpg" for i in range(4)]
    record = pickle.loads((bench / "pkls" / "0.pkl").read_bytes())
    assert len(record["annotation"]) == 2 and all(phrase in record["caption"] for phrase in record["annotation"])

    (evaluate_txt,) = (tmp_path / "out").rglob("evaluate.txt")
    written = json.loads(evaluate_txt.read_text().splitlines()[-1])
    assert written == pytest.approx(results)
    for name in scoring.SCORE_NAMES:
        assert 0.0 <= written[name] <= 100.0 and 0.0 < written["uniform_" + name] < 100.0
    assert written["num_images"] == 4 and written["num_phrases"] == 8
    assert written["agg_metrics"] == written["mean"]


def test_agg_metric_picks_the_score_reported_as_agg_metrics(lavis_glscl, tmp_path, monkeypatch):
    """``run.agg_metric: global_box`` (default ``mean``): ``agg_metrics`` is the global box score, here 100 x the mean
    over images of each image's mean: (0.5 + 0.25) / 2 = 37.5, where the mean of the four scores is 50."""
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    from lavis_glscl.align_bench.task import AlignBenchTask

    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(tmp_path))
    scores = [{name: values for base, values in (("global_box", [0.5]), ("global_pixel", [0.5]),
                                                 ("local_box", [0.6, 0.4]), ("local_pixel", [0.5]))
               for name in (base, "uniform_" + base)},
              {name: values for base, values in (("global_box", [0.25]), ("global_pixel", [0.75]),
                                                 ("local_box", [0.5]), ("local_pixel", [0.5]))
               for name in (base, "uniform_" + base)}]
    results = [(index, image_scores, []) for index, image_scores in enumerate(scores)]
    chosen = AlignBenchTask(OmegaConf.create({"agg_metric": "global_box"})).after_evaluation(results, "test")
    assert chosen["global_box"] == pytest.approx(37.5) and chosen["agg_metrics"] == pytest.approx(37.5)
    assert chosen["mean"] == pytest.approx(50.0)
    assert AlignBenchTask(OmegaConf.create({})).after_evaluation(results, "test")["agg_metrics"] == pytest.approx(50.0)


def test_max_box_fraction_reaches_the_scoring_of_every_image(lavis_glscl, monkeypatch):
    """``run.max_box_fraction: 0.4`` (default 0.9) is the bound each image is scored with."""
    import torch
    from omegaconf import OmegaConf

    from lavis_glscl.align_bench import task

    class Maps:
        attention = torch.zeros(2, 3, 4)
        grid_size = 2
        offsets = torch.zeros(2, 3, 2, dtype=torch.long)

    bounds = []
    monkeypatch.setattr(task, "cross_attention_probe", lambda model: lambda images, captions: Maps())
    monkeypatch.setattr(task, "score_image", lambda *args: bounds.append(args[-1]) or ({}, []))
    samples = {"image": torch.zeros(2, 3, 8, 8), "text_input": ["a", "b"], "index": [0, 1], "annotation": [{}, {}],
               "image_size": [(8, 8), (8, 8)]}
    task.AlignBenchTask(OmegaConf.create({"max_box_fraction": 0.4})).evaluation(None, [samples])
    assert bounds == [0.4, 0.4]
