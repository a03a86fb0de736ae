"""Re-ranking an ITC shortlist with a cross-encoder, in batches of pairs."""
import torch

from lavis_glscl.models.scoring import itm_rerank


def test_itm_rerank_batches_queries_and_orders_the_rest_below():
    sims = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.3, 0.4, 0.1], [0.0, 0.6, 0.7, 0.65]])
    calls = []

    def reverse_itc(query, gallery):  # an ITM that prefers what ITC ranks lower
        calls.append(len(query))
        return -sims[query, gallery] * 10

    scores = itm_rerank(sims, k=2, score_pairs=reverse_itc, pairs_per_batch=4, add_sims=False, rows=(0, 3))
    assert calls == [4, 2]  # 3 queries x 2 shortlisted, scored 4 pairs at a time
    order = scores.argsort(dim=1, descending=True).tolist()
    assert order[0] == [1, 0, 3, 2]  # shortlist {0, 1} reversed, then the rest in ITC order
    assert order[2] == [3, 2, 1, 0]
    one = itm_rerank(sims, k=1, score_pairs=reverse_itc, rows=(0, 3), add_sims=False)
    assert torch.equal(one.argsort(dim=1, descending=True), sims.argsort(dim=1, descending=True))


def test_run_options_set_the_shortlist_its_pair_batches_the_itc_term_and_the_scorer():
    """``run.k_test: 2``, ``itm_pairs_per_batch: 4``, ``rerank_add_itc: false``, read from a run block as the task reads
    them: each image's 2 and each caption's 2 best by ITC (written out below) are scored, 4 pairs per call, and
    keep the pair score alone; ``retrieval_scorer: itc`` scores no pair.  (Defaults: 128, 256, ITC added, auto.)"""
    from omegaconf import OmegaConf

    from lavis_glscl.models.scoring import RetrievalOptions, score_matrices

    sims = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.3, 0.4, 0.1], [0.0, 0.6, 0.7, 0.65]])  # 3 images x 4 captions
    calls = []

    def pair_scores(images, captions):
        calls.append(len(images))
        return 100.0 + 10.0 * images + captions

    run = OmegaConf.create({"k_test": 2, "itm_pairs_per_batch": 4, "rerank_add_itc": False,
                            "retrieval_scorer": "rerank"})
    scores = score_matrices(sims, pair_scores, RetrievalOptions.of(run))
    assert calls == [4, 2, 4, 4]  # 3 images x 2, then 4 captions x 2, 4 pairs at a time
    i2t, t2i = (torch.from_numpy(matrix) for matrix in scores["rerank"])
    image_shortlists = {0: [0, 1], 1: [2, 1], 2: [2, 3]}
    caption_shortlists = {0: [0, 1], 1: [0, 2], 2: [2, 1], 3: [2, 0]}
    for image, shortlist in image_shortlists.items():
        for caption in range(4):
            if caption in shortlist:
                assert i2t[image, caption].item() == 100.0 + 10.0 * image + caption
            else:
                assert i2t[image, caption] < i2t[image, shortlist].min()
    for caption, shortlist in caption_shortlists.items():
        for image in range(3):
            if image in shortlist:
                assert t2i[caption, image].item() == 100.0 + 10.0 * image + caption
            else:
                assert t2i[caption, image] < t2i[caption, shortlist].min()
    calls.clear()
    itc_only = score_matrices(sims, pair_scores, RetrievalOptions.of(OmegaConf.merge(run, {"retrieval_scorer": "itc"})))
    assert set(itc_only) == {"itc"} and calls == []
