"""SCAN scores of a query-by-gallery block, chunked, next to a naive loop over pairs.

    python benchmarks/scan_similarity.py [--queries 256] [--gallery 1280] [--chunks 4 16 64]

Queries are captions (``Lt`` word tokens), the gallery is images (``Lv`` patch tokens), SCAN t2i with LSE
pooling (``lavis_glscl.matching.similarity.scan_similarity``).  "chunked" scores the whole block, ``chunk``
images against all captions at a time; "naive" calls the same head once per (image, caption) pair on a small
block, as a per-pair loop would.  Both give the same scores there (checked).  Peak memory is the growth of the
process's peak resident set over the run, measured in a fresh process per setting.
"""
import argparse
import json
import sys
import time

import torch
from common import in_fresh_process, peak_mib, resident_mib, save

from lavis_glscl.matching.similarity import scan_similarity


def tokens(count: int, length: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(count, length, dim, generator=torch.Generator().manual_seed(seed))


def chunked_worker(args) -> dict:
    """Time and peak-memory growth of one chunked run over the whole block (run in its own process)."""
    images = tokens(args.gallery, args.patches, args.dim, 0)
    texts = tokens(args.queries, args.words, args.dim, 1)
    scan_similarity(images[:2], texts[:2], chunk_size=2)  # warm-up: kernels and thread pool
    before = resident_mib()
    start = time.perf_counter()
    scores = scan_similarity(images, texts, chunk_size=args.chunk)
    seconds = time.perf_counter() - start
    assert scores.shape == (args.gallery, args.queries) and torch.isfinite(scores).all()
    return {"seconds": seconds, "peak_growth_mib": peak_mib() - before}


def naive_versus_chunked(args) -> dict:
    """Per-pair time of a Python loop over pairs and of one chunked call, on the same small block."""
    images = tokens(args.naive_gallery, args.patches, args.dim, 2)
    texts = tokens(args.naive_queries, args.words, args.dim, 3)
    scan_similarity(images[:2], texts[:2], chunk_size=2)
    start = time.perf_counter()
    looped = torch.stack([torch.cat([scan_similarity(images[i:i + 1], texts[j:j + 1]) for j in range(len(texts))],
                                    dim=1)[0] for i in range(len(images))])
    naive_seconds = time.perf_counter() - start
    start = time.perf_counter()
    batched = scan_similarity(images, texts, chunk_size=args.chunks[1])
    batched_seconds = time.perf_counter() - start
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-5)
    pairs = len(images) * len(texts)
    return {"pairs": pairs, "naive_us_per_pair": 1e6 * naive_seconds / pairs,
            "chunked_us_per_pair": 1e6 * batched_seconds / pairs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--gallery", type=int, default=1280)
    parser.add_argument("--words", type=int, default=20, help="caption tokens Lt")
    parser.add_argument("--patches", type=int, default=49, help="image tokens Lv (a 7 x 7 grid)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--naive-queries", type=int, default=32)
    parser.add_argument("--naive-gallery", type=int, default=64)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk is not None:
        print(json.dumps(chunked_worker(args)))
        return

    chunked = {}
    for chunk in args.chunks:
        chunked[chunk] = in_fresh_process(__file__, [*sys.argv[1:], "--chunk", str(chunk)])
    small = naive_versus_chunked(args)
    pairs = args.queries * args.gallery
    print(f"SCAN t2i/LSE, {args.queries} captions x {args.gallery} images, Lt={args.words}, Lv={args.patches}, "
          f"D={args.dim}")
    for chunk, result in chunked.items():
        print(f"  chunk {chunk:4d}: {result['seconds']:7.2f} s ({1e6 * result['seconds'] / pairs:6.1f} us/pair), "
              f"peak memory growth {result['peak_growth_mib']:8.1f} MiB")
    print(f"  naive per-pair loop on {small['pairs']} pairs: {small['naive_us_per_pair']:.1f} us/pair; chunked on the "
          f"same pairs: {small['chunked_us_per_pair']:.1f} us/pair; "
          f"loop / chunked = {small['naive_us_per_pair'] / small['chunked_us_per_pair']:.1f}x (equal scores)")
    path = save("scan_similarity", {"settings": {k: v for k, v in vars(args).items() if k != "chunk"},
                                    "chunked": chunked, "naive_versus_chunked": small,
                                    "loop_over_chunked_time_ratio":
                                        small["naive_us_per_pair"] / small["chunked_us_per_pair"]})
    print(f"written {path}")


if __name__ == "__main__":
    main()
