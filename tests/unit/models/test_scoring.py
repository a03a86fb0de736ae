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
