"""The ``base`` model at its real size: one pre-training step (forward + backward), with and without grad
checkpointing, its peak resident memory, and its FLOP/s next to a dense fp32 matmul's (a CPU "MFU").

    python benchmarks/base_step.py [--model-type base] [--batch 4] [--repeats 1] [--matmul-size 4096]

``base`` is ViT-B/16 (11 blocks) at 288 px, RoBERTa-base sizes and 6 + 6 fusion layers, built offline with random
weights (its text tower on the bert-base-uncased vocabulary: 30,522 words, not RoBERTa's 50,265).

Each setting runs in a fresh process, so that its peak resident set (``ru_maxrss``, a process high-water mark) is its
own, with two environment settings for the measurement: ``MALLOC_MMAP_THRESHOLD_`` pinned, so that freed activations
go back to the system (glibc otherwise raises its mmap threshold after the first large free and keeps later blocks in
its heap, and the high-water mark drifts from step to step); and ``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise: on
a shared CPU, OpenMP threads that spin while waiting for a descheduled peer burn CPU seconds that are not work (a
``tiny`` step measured 15 CPU-seconds spinning and 0.07 passive on the 2-core machine at load 10).

In each process: build the model and the batch; time a dense fp32 ``[n, n] @ [n, n]`` matmul (best of 3); one
warm-up step, which reaches the step's peak and whose resident set after the forward gives the activations the graph
holds; ``--repeats`` timed steps; the matmul again.  Wall and CPU (user + sys) seconds are both reported, with the
load average: the CPU is shared, and CPU seconds per FLOP are what contention disturbs least.

MFU = the step's model FLOPs (``flops.py``'s analytic count for this batch: forward + backward, recomputation left
out) per CPU-second of the step / the matmul's FLOPs per CPU-second.  On a shared CPU this is the figure to read:
the wall-clock variant (FLOP/s of the step over the matmul's FLOP/s, also printed) divides two rates measured
minutes apart under different loads.  Idle-machine wall time of a 2-thread step is about its CPU seconds / 2.
"""
import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import torch
from common import resident_mib, save
from omegaconf import OmegaConf
from pretraining_step import batch

SETTINGS = {"plain": False, "checkpointed": True}
MMAP_THRESHOLD = str(128 * 1024)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def peak_resident_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function) -> dict:
    """Wall and CPU seconds of ``function()``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    function()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": cpu_seconds() - cpu}


def matmul_rate(size: int, repeats: int = 3) -> dict:
    """FLOP/s of a dense fp32 ``[size, size] @ [size, size]``, best of ``repeats`` (wall), and per CPU-second."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    a @ b  # warm-up: thread pool, page faults of the output
    runs = [timed(lambda: a @ b) for _ in range(repeats)]
    flops = 2.0 * size ** 3
    return {"flops_per_s": max(flops / run["wall_s"] for run in runs),
            "flops_per_cpu_s": max(flops / run["cpu_s"] for run in runs), "runs": runs}


def step_worker(args) -> dict:
    import flops
    from lavis.common.registry import registry

    import lavis_glscl  # noqa: F401  (registers the models)

    load_start = os.getloadavg()
    model_cls = registry.get_model_class("glscl_pretrain")
    options = OmegaConf.merge(OmegaConf.load(model_cls.default_config_path(args.model_type)).model,
                              {"grad_checkpointing": SETTINGS[args.setting]})
    torch.manual_seed(0)
    model = model_cls.from_config(options).train()
    samples = batch(args.batch, model.config.vision.image_size, "cpu")
    shapes = flops.batch_of(model, samples)
    count = flops.total(flops.step_flops(flops.architecture(model.config, len(model.tokenizer)), model.config,
                                         shapes))
    built_mib = resident_mib()
    matmul_before = matmul_rate(args.matmul_size)

    held = {}

    def step():
        before_forward = resident_mib()
        loss = model(samples)["loss"]
        held.setdefault("activations_mib", resident_mib() - before_forward)
        loss.backward()
        model.zero_grad(set_to_none=True)

    warm_up = timed(step)
    steps = [timed(step) for _ in range(args.repeats)]
    matmul_after = matmul_rate(args.matmul_size)
    best = min(steps, key=lambda run: run["wall_s"])
    matmul_peak = max(matmul_before["flops_per_s"], matmul_after["flops_per_s"])
    matmul_per_cpu_s = max(matmul_before["flops_per_cpu_s"], matmul_after["flops_per_cpu_s"])
    return {
        "setting": args.setting, "parameters": sum(p.numel() for p in model.parameters()),
        "batch_shapes": dataclasses.asdict(shapes), "flops": dataclasses.asdict(count),
        "warm_up": warm_up, "steps": steps, "step_wall_s": best["wall_s"], "step_cpu_s": best["cpu_s"],
        "built_mib": built_mib, "activations_after_forward_mib": held["activations_mib"],
        "peak_mib": peak_resident_mib(), "peak_growth_mib": peak_resident_mib() - built_mib,
        "matmul_before": matmul_before, "matmul_after": matmul_after, "matmul_flops_per_s": matmul_peak,
        "matmul_flops_per_cpu_s": matmul_per_cpu_s,
        "achieved_flops_per_s": count.model / best["wall_s"],
        "mfu": count.model / best["wall_s"] / matmul_peak,
        "mfu_cpu_time": count.model / best["cpu_s"] / matmul_per_cpu_s,
        "executed_flops_utilisation": count.executed / best["wall_s"] / matmul_peak,
        "load_average": {"start": load_start, "end": os.getloadavg()}, "threads": torch.get_num_threads(),
    }


def in_fresh_process(arguments) -> dict:
    environment = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONWARNINGS": "ignore",
                   "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    finished = subprocess.run([sys.executable, __file__, *arguments], check=True, capture_output=True, text=True,
                              env=environment)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def report(model_type: str, batch_size: int, repeats: int, results: dict) -> dict:
    """Print the two settings side by side; returns the checkpointed / plain ratios."""
    plain, checked = results["plain"], results["checkpointed"]
    ratios = {key: checked[key] / plain[key] for key in
              ("step_wall_s", "step_cpu_s", "peak_mib", "peak_growth_mib", "activations_after_forward_mib")}
    print(f"'{model_type}' pre-training step, batch {batch_size}, {plain['parameters'] / 1e6:.0f} M parameters, "
          f"{plain['threads']} threads (forward + backward, best of {repeats} after a warm-up)")
    for setting, row in results.items():
        load = row["load_average"]
        print(f"  {setting:13s} {row['step_wall_s']:7.1f} s wall  {row['step_cpu_s']:7.1f} s CPU   peak resident "
              f"{row['peak_mib']:7.0f} MiB (built {row['built_mib']:5.0f}, growth {row['peak_growth_mib']:6.0f})  "
              f"held after forward {row['activations_after_forward_mib']:6.0f} MiB   load {load['start'][0]:.1f} -> "
              f"{load['end'][0]:.1f}")
    print("  checkpointed / plain: " + ", ".join(f"{key} {value:.2f}x" for key, value in ratios.items()))
    for setting, row in results.items():
        count = row["flops"]
        achieved_per_cpu_s = (count["forward"] + count["backward"]) / row["step_cpu_s"]
        print(f"  {setting:13s} {(count['forward'] + count['backward']) / 1e12:.2f} TFLOP per step (executed "
              f"{sum(count.values()) / 1e12:.2f}): {achieved_per_cpu_s / 1e9:5.1f} GFLOP per CPU-second beside the "
              f"fp32 matmul's {row['matmul_flops_per_cpu_s'] / 1e9:5.1f}: MFU {100 * row['mfu_cpu_time']:.1f} % "
              f"(wall basis {row['achieved_flops_per_s'] / 1e9:.1f} beside {row['matmul_flops_per_s'] / 1e9:.1f} "
              f"GFLOP/s: {100 * row['mfu']:.1f} %; executed FLOPs {100 * row['executed_flops_utilisation']:.1f} %)")
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="base")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--setting", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setting:
        print(json.dumps(step_worker(args)))
        return

    results = {}
    for setting in SETTINGS:
        results[setting] = in_fresh_process([*sys.argv[1:], "--setting", setting])
        print(f"  {setting} done: {results[setting]['step_wall_s']:.1f} s wall", flush=True)
    ratios = report(args.model_type, args.batch, args.repeats, results)
    path = save(f"base_step_{args.model_type}", {"settings": {k: v for k, v in vars(args).items() if k != "setting"},
                                                 "results": results, "checkpointed_over_plain": ratios})
    print(f"written {path}")


if __name__ == "__main__":
    main()
