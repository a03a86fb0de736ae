"""Retrieval evaluation cost: the batched ITM re-rank next to a one-query-at-a-time re-rank and to scoring every
pair, and the growth of a whole evaluation with the gallery size.

    python benchmarks/retrieval_eval.py [--model-type demo] [--k 16] [--sizes 250 500 1000] [--all-pairs-size 64]

The model is ``glscl_retrieval`` of the given type with its initial weights on random images and varied captions
(one caption per image); costs do not depend on the weights.  "batched" is ``itm_rerank`` as
``compute_sim_matrix`` runs it (pairs of many queries in batches of 256); "one query at a time" scores each
query's ``k`` pairs in their own batch, as LAVIS's ALBEF/BLIP evaluators loop; "all pairs" scores the whole
gallery with the cross-encoder (k = gallery size), which the re-rank gives exactly when k covers it (checked).

Then LAVIS's own ALBEF evaluator (``lavis.models.albef_models.compute_sim_matrix``: both directions, each query's
``k`` pairs in their own ITM pass) against ``score_matrices`` on the same ``albef_retrieval_offline`` model, the
same tokenisation and the same pair computation (ALBEF's multimodal pass), so that only the batching differs
(equal top-k scores checked).
"""
import argparse
import contextlib
import io
import time

import torch
import torch.nn.functional as F
from common import save
from omegaconf import OmegaConf

COLOURS = ["red", "green", "blue", "yellow", "purple", "white", "orange", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "diamond"]


def captions(count: int):
    return [f"a {'small' if i % 2 else 'large'} {COLOURS[i % 8]} {SHAPES[i % 5]} to the left of a "
            f"{COLOURS[(i // 8) % 8]} {SHAPES[(i // 40) % 5]}" for i in range(count)]


@torch.no_grad()
def gallery(model, size: int, image_size: int, device: str):
    """Unimodal tokens and ITC similarities of ``size`` random images and ``size`` captions."""
    images = torch.randn(size, 1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    image_tokens = torch.cat([model.encode_image(chunk) for chunk in images.split(64)])
    image_embeds = F.normalize(model.image_embedding(image_tokens, 1), dim=-1)
    text_tokens, text_masks, _, text_embeds = model.encode_gallery_texts(captions(size))
    text_tokens, text_masks = text_tokens.to(device), text_masks.to(device)

    def score_pairs(image_idx, text_idx):
        return model.match_score(model.fuse(text_tokens[text_idx], text_masks[text_idx], image_tokens[image_idx],
                                            1).cls_feats)

    return image_embeds @ text_embeds.to(device).t(), score_pairs


def timed(function):
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


class CaptionedImages(torch.utils.data.Dataset):
    """What LAVIS's retrieval evaluators read from a test set: ``text``, ``image`` and samples with ``image``."""

    def __init__(self, images: torch.Tensor, texts):
        self.images, self.text, self.image = images, texts, list(range(len(images)))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index]}


@torch.no_grad()
def lavis_albef_evaluator_vs_batched(size: int, k: int, device: str):
    """Seconds of LAVIS's ALBEF evaluator and of ``score_matrices`` on the same model and gallery."""
    from lavis.models.albef_models import compute_sim_matrix as lavis_albef_sim_matrix

    from lavis_glscl.models.baselines.lavis_offline import AlbefRetrievalOffline
    from lavis_glscl.models.scoring import RetrievalOptions, score_matrices

    torch.manual_seed(0)
    model = AlbefRetrievalOffline.from_pretrained("demo").to(device).eval()
    image_size = model.visual_encoder.patch_embed.img_size[0]
    images = torch.randn(size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    texts = captions(size)
    loader = torch.utils.data.DataLoader(CaptionedImages(images, texts), batch_size=64)

    def batched():
        text = model.tokenizer(texts, padding="max_length", truncation=True, max_length=35,
                               return_tensors="pt").to(device)  # LAVIS's evaluator's tokenisation
        text_cls = model.text_encoder.forward_text(text).last_hidden_state[:, 0]
        text_embeds = F.normalize(model.text_proj(text_cls), dim=-1)
        image_tokens = torch.cat([model.visual_encoder.forward_features(chunk.to(device))
                                  for chunk in images.split(64)])
        sims = F.normalize(model.vision_proj(image_tokens[:, 0]), dim=-1) @ text_embeds.t()

        def score_pairs(image_idx, text_idx):
            encoder_mask = torch.ones(len(image_idx), image_tokens.shape[1], dtype=torch.long, device=device)
            output = model.text_encoder(text.input_ids[text_idx], attention_mask=text.attention_mask[text_idx],
                                        encoder_hidden_states=image_tokens[image_idx],
                                        encoder_attention_mask=encoder_mask, return_dict=True)
            return model.itm_head(output.last_hidden_state[:, 0])[:, 1]

        return score_matrices(sims, score_pairs, RetrievalOptions(k_test=k))["rerank"]

    with contextlib.redirect_stdout(io.StringIO()):  # LAVIS's evaluator prints its progress
        (lavis_i2t, lavis_t2i), lavis_s = timed(lambda: lavis_albef_sim_matrix(model, loader, k_test=k))
    (ours_i2t, ours_t2i), batched_s = timed(batched)
    for lavis_scores, ours in ((lavis_i2t, ours_i2t), (lavis_t2i, ours_t2i)):
        shortlisted = lavis_scores > -100
        assert (shortlisted.sum(axis=1) == k).all()
        torch.testing.assert_close(torch.from_numpy(ours[shortlisted]), torch.from_numpy(lavis_scores[shortlisted]),
                                   atol=1e-4, rtol=1e-4)
    return lavis_s, batched_s


@torch.no_grad()
def main():
    import lavis_glscl  # noqa: F401  (registers the models)
    from lavis_glscl.models.glscl import GlsclRetrieval
    from lavis_glscl.models.scoring import itm_rerank

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="demo")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--all-pairs-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = OmegaConf.load(GlsclRetrieval.default_config_path(args.model_type)).model
    model = GlsclRetrieval.from_config(config).to(args.device).eval()
    image_size = config.vision.image_size

    sims, score_pairs = gallery(model, args.sizes[0], image_size, args.device)
    rows = (0, sims.shape[0])
    itm_rerank(sims[:4], args.k, score_pairs, rows=(0, 4))  # warm-up
    batched, batched_s = timed(lambda: itm_rerank(sims, args.k, score_pairs, pairs_per_batch=256, rows=rows))
    one_query, one_query_s = timed(lambda: itm_rerank(sims, args.k, score_pairs, pairs_per_batch=args.k, rows=rows))
    torch.testing.assert_close(batched, one_query, atol=1e-4, rtol=1e-4)

    small_sims, small_pairs = gallery(model, args.all_pairs_size, image_size, args.device)
    size = small_sims.shape[0]
    all_pairs, all_pairs_s = timed(lambda: torch.stack([small_pairs(torch.full((size,), i), torch.arange(size))
                                                        for i in range(size)]) + small_sims)
    covering, covering_s = timed(lambda: itm_rerank(small_sims, size, small_pairs, rows=(0, size)))
    torch.testing.assert_close(covering, all_pairs, atol=1e-4, rtol=1e-4)
    small_batched, small_batched_s = timed(lambda: itm_rerank(small_sims, args.k, small_pairs, rows=(0, size)))

    growth = {}
    for gallery_size in args.sizes:
        def evaluation(gallery_size=gallery_size):
            sims, pairs = gallery(model, gallery_size, image_size, args.device)
            itm_rerank(sims, args.k, pairs, rows=(0, gallery_size))
            itm_rerank(sims.t().contiguous(), args.k, lambda t, i: pairs(i, t), rows=(0, gallery_size))
        growth[gallery_size] = timed(evaluation)[1]

    lavis_albef_s, albef_batched_s = lavis_albef_evaluator_vs_batched(args.sizes[0], args.k, args.device)

    print(f"ITM re-rank of '{args.model_type}', k = {args.k}, {args.device}")
    print(f"  {args.sizes[0]} queries x {args.sizes[0]} items: batched {batched_s:.2f} s, one query at a time "
          f"{one_query_s:.2f} s -> one-at-a-time / batched = {one_query_s / batched_s:.2f}x (goal: at least 2x); "
          "equal scores")
    print(f"  {size} x {size}: every pair scored {all_pairs_s:.2f} s; re-rank with k = {size} {covering_s:.2f} s "
          f"(equal scores); re-rank with k = {args.k} {small_batched_s:.2f} s -> all pairs / k={args.k} = "
          f"{all_pairs_s / small_batched_s:.2f}x")
    print(f"  LAVIS's ALBEF evaluator vs score_matrices, albef_retrieval_offline 'demo', {args.sizes[0]} x "
          f"{args.sizes[0]}, both directions: {lavis_albef_s:.2f} s vs {albef_batched_s:.2f} s -> "
          f"{lavis_albef_s / albef_batched_s:.2f}x (equal top-k scores)")
    first = args.sizes[0]
    for gallery_size, seconds in growth.items():
        print(f"  whole evaluation (encode + both directions), N = {gallery_size:5d}: {seconds:7.2f} s "
              f"({seconds / growth[first]:.2f}x N = {first})")
    path = save(f"retrieval_eval_{args.model_type}_{args.device}", {
        "settings": vars(args), "seconds": {"batched": batched_s, "one_query_at_a_time": one_query_s,
                                            "all_pairs_small": all_pairs_s, "rerank_covering_small": covering_s,
                                            "rerank_k_small": small_batched_s},
        "one_query_over_batched_time": one_query_s / batched_s, "evaluation_seconds_by_gallery_size": growth,
        "lavis_albef_evaluator_seconds": lavis_albef_s, "albef_score_matrices_seconds": albef_batched_s,
        "lavis_albef_over_batched_time": lavis_albef_s / albef_batched_s})
    print(f"written {path}")


if __name__ == "__main__":
    main()
