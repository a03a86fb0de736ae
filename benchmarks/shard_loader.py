"""Decoded training samples per second of the shard loader, against the ``demo`` model's training samples per second.

    python benchmarks/shard_loader.py [--batches 60] [--batch 32] [--workers 0 2]

The shapes demo's 6,000 pairs (64 px) as 24 shards (``make_shards --dataset shapes_demo``, reused when present),
read as README command 1's shard run reads them (``glscl_image_train`` 64 px, ``glscl_caption``, batches of 32)
through ``TrainBatches``, for each number of DataLoader workers; the same pairs from their json and files through
the map-style dataset for reference.  The model rate is that of ``demo`` pre-training steps (forward + backward, as
``pretraining_step.py`` times them) on a batch of 32, in a fresh process.  The loader should deliver at least 3x the
model's rate with 2 workers, so that it never limits a step.  Every rate is given per wall second and per CPU second
(this process and its workers): on a shared machine the second is the one other jobs move least; run it with
``OMP_WAIT_POLICY=PASSIVE`` there, or the model's spinning threads inflate its CPU seconds as well.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import in_fresh_process, result_name, save


def cpu_seconds() -> float:
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def model_rate(batch: int, steps: int) -> dict:
    """``demo`` pre-training steps on random 64-px images: samples per wall and per CPU second (after a warm-up)."""
    import torch
    from lavis.common.registry import registry

    import lavis_glscl  # noqa: F401  (registers the models)

    torch.manual_seed(0)
    model = registry.get_model_class("glscl_pretrain").from_pretrained("demo").train()
    captions = ["a small red circle to the left of a large blue square", "two green triangles above a yellow star"]
    samples = {"image": torch.randn(batch, 3, 64, 64), "text_input": [captions[i % 2] for i in range(batch)],
               "image_id": torch.arange(batch), "epoch": 0, "iters": 0}

    def step():
        model(samples)["loss"].backward()
        model.zero_grad(set_to_none=True)

    step()
    cpu, load, start = cpu_seconds(), os.getloadavg()[0], time.perf_counter()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {"samples_per_s": round(batch * steps / wall, 2), "samples_per_cpu_s": round(batch * steps / cpu, 2),
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "load": load}


def shapes_demo_shards() -> Path:
    """The index of the shapes demo's shards under cache_root, written once."""
    from lavis.common.utils import get_cache_path

    index = Path(get_cache_path("shards/shapes_demo")) / "index.json"
    if not index.is_file():
        subprocess.run([sys.executable, "-m", "lavis_glscl.tools.make_shards", "--dataset", "shapes_demo",
                        "--samples-per-shard", "250"], check=True)
    return index


def loader_rate(dataset, batch: int, batches: int, workers: int) -> dict:
    """Samples per second over ``batches`` batches after the first (worker start-up and first decode left out)."""
    from lavis_glscl.datasets.loaders import TrainBatches

    epoch = TrainBatches([dataset], batch, seed=0, iters_per_epoch=batches + 1, num_workers=workers).epoch(0)
    next(epoch)
    cpu, load, start = cpu_seconds(), os.getloadavg()[0], time.perf_counter()
    count = sum(len(samples["text_input"]) for samples in epoch)
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    return {"samples_per_s": round(count / wall, 1), "samples_per_cpu_s": round(count / cpu, 1),
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": load}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--model-steps", type=int, default=2)
    parser.add_argument("--model", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model:
        print(json.dumps(model_rate(args.batch, args.model_steps)))
        return

    from lavis.common.registry import registry

    import lavis_glscl  # noqa: F401  (registers builders, fixes cache_root)
    from lavis_glscl.datasets.datasets import ImageCaptionDataset
    from lavis_glscl.datasets.shard_files import read_index
    from lavis_glscl.datasets.shards import ShardedCaptionPairs
    from lavis_glscl.processors import GlsclCaptionProcessor, GlsclImageTrainProcessor

    index = shapes_demo_shards()
    image, caption = GlsclImageTrainProcessor(image_size=64, hflip_prob=0.0), GlsclCaptionProcessor()
    shards = ShardedCaptionPairs(read_index(str(index)), image, caption)
    files_root = registry.get_builder_class("shapes_demo")().root
    files = ImageCaptionDataset(image, caption, str(files_root), [str(files_root / "train.json")])

    model = in_fresh_process(__file__, [*sys.argv[1:], "--model"])
    results = {"model_demo": model, "shards": {}, "files": {}}
    for workers in args.workers:
        results["shards"][workers] = loader_rate(shards, args.batch, args.batches, workers)
        results["files"][workers] = loader_rate(files, args.batch, args.batches, workers)
    print(f"demo model, batch {args.batch}: {model['samples_per_s']} samples/s, {model['samples_per_cpu_s']} per CPU s "
          f"(load {model['load']:.1f})")
    for workers in args.workers:
        for kind in ("shards", "files"):
            rate = results[kind][workers]
            wall_ratio = rate["samples_per_s"] / model["samples_per_s"]
            cpu_ratio = rate["samples_per_cpu_s"] / model["samples_per_cpu_s"]
            print(f"  {kind:6s} {workers} workers: {rate['samples_per_s']:7.1f} samples/s ({wall_ratio:6.1f}x the "
                  f"model), {rate['samples_per_cpu_s']:7.1f} per CPU s ({cpu_ratio:6.1f}x)  load {rate['load']:.1f}")
    results["shards_over_model"] = {
        workers: {"wall": round(results["shards"][workers]["samples_per_s"] / model["samples_per_s"], 1),
                  "cpu": round(results["shards"][workers]["samples_per_cpu_s"] / model["samples_per_cpu_s"], 1)}
        for workers in args.workers}
    top = max(args.workers)
    print(f"shard loader with {top} workers / demo model: {results['shards_over_model'][top]} (goal: at least 3x)")
    settings = {**vars(args), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    path = save(result_name("shard_loader", parser, args), {"settings": settings, **results})
    print(f"written {path}")


if __name__ == "__main__":
    main()
