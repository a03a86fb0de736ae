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
