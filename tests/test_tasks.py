"""The glscl_retrieval task's additions to LAVIS's retrieval metrics."""
import numpy as np
import pytest

from lavis_glscl.tasks import pair_accuracy


def test_pair_accuracy_counts_both_choices_of_each_pair_in_each_direction():
    # items 0/1 form a pair with captions 0/1; items 2/3 with captions 3/2
    img2txt = {0: [0], 1: [1], 2: [3], 3: [2]}
    i2t = np.array([[0.9, 0.1, 0, 0],   # item 0 prefers its caption 0: right
                    [0.8, 0.2, 0, 0],   # item 1 prefers caption 0 over its own 1: wrong
                    [0, 0, 0.3, 0.7],   # item 2 prefers its caption 3: right
                    [0, 0, 0.6, 0.4]])  # item 3 prefers its caption 2: right
    t2i = np.array([[0.5, 0.4, 0, 0],   # caption 0 prefers item 0: right
                    [0.5, 0.4, 0, 0],   # caption 1 prefers item 0 over its item 1: wrong
                    [0, 0, 0.1, 0.2],   # caption 2 prefers item 3: right
                    [0, 0, 0.1, 0.2]])  # caption 3 prefers item 3 over its item 2: wrong
    result = pair_accuracy(i2t, t2i, [[0, 1], [2, 3]], img2txt)
    assert result == pytest.approx({"pair_accuracy_i2t": 75.0, "pair_accuracy_t2i": 50.0, "pair_accuracy": 62.5})


@pytest.mark.parametrize("arch", ["glscl_retrieval", "albef_retrieval_offline"])
def test_the_task_scores_with_typed_options_and_normalises_any_models_matrices(tiny, tmp_path, monkeypatch, arch):
    import torch
    from helpers import ListLoader
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    from lavis_glscl.matching import inverted_softmax
    from lavis_glscl.models.scoring import RetrievalOptions
    from lavis_glscl.tasks import GlsclRetrievalTask

    model = tiny(arch).eval()
    loader = ListLoader(torch.randn(6, 3, 32, 32), [f"caption number {i}" for i in range(6)])
    monkeypatch.setitem(registry.mapping["paths"], "output_dir", str(tmp_path))
    with torch.no_grad():
        received, raw = [], model.compute_sim_matrix(loader, RetrievalOptions(k_test=3, itm_pairs_per_batch=5))
    real_compute = model.compute_sim_matrix
    monkeypatch.setattr(model, "compute_sim_matrix", lambda data_loader, task_cfg: (received.append(task_cfg),
                                                                                    real_compute(data_loader, task_cfg))[1])
    for name in ("none", "inverted_softmax"):
        run = OmegaConf.create({"k_test": 3, "itm_pairs_per_batch": 5, "score_normalizer": name,
                                "score_normalizer_options": {"inverted_softmax": {"beta": 9.0}}})
        task = GlsclRetrievalTask(run)
        reported = []
        monkeypatch.setattr(task, "_report_metrics", lambda i2t, t2i, txt2img, img2txt: reported.append((i2t, t2i))
                            or {"txt_r_mean": 0.0})
        with torch.no_grad():  # as the runner evaluates
            task.evaluation(model, loader)
        (scores,) = reported
        expected = raw if name == "none" else [inverted_softmax(torch.from_numpy(m), 9.0).numpy() for m in raw]
        assert np.allclose(scores[0], expected[0], atol=1e-6) and np.allclose(scores[1], expected[1], atol=1e-6)
    assert received == [RetrievalOptions(k_test=3, itm_pairs_per_batch=5, rerank_add_itc=True)] * 2
    assert not np.allclose(inverted_softmax(torch.from_numpy(raw[0]), 9.0).numpy(), raw[0])
