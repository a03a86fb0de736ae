"""A long sharded run: throughput and resident memory from the first to the last quarter of 2,000 steps.

    python benchmarks/scale_run.py [--pairs 100000] [--steps 2000] [--batch 32] [--workers 2]

Generates ``--pairs`` 32-px shapes pairs (kept in the system's temporary folder for reruns), writes them into shards
of 1,000 with ``make_shards``, then trains the ``tiny`` model on them under 2-process gloo torchrun (batch ``--batch``
per rank, ``--workers`` DataLoader workers per rank: with the defaults, 2,000 steps of 64 pairs run past the end of the
first pass over the 100k pairs).  While it trains, the resident memory of each rank and of its workers is sampled
every 2 s; the throughput from the runner's step logs (80 of them).  The run is steady when the last
quarter's throughput is within 10 % of the first quarter's and the memory grew by less than 5 %.  Writes both curves
to ``results/scale_run.json``.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
from common import RESULTS_DIR, children_cpu_seconds, result_name, save, timed

REPO = Path(__file__).resolve().parent.parent
STEP_LINE = re.compile(r"^(\S+ \S+) \[INFO\] Train: epoch \[0\] \[(\d+)/\d+\]", re.M)


def prepare(pairs: int, folder: Path) -> dict:
    """The shapes set and its shards under ``folder``, made once; their making's timings."""
    index = folder / "shards" / "index.json"
    timings_path = folder / "timings.json"
    if index.is_file() and timings_path.is_file():
        return json.loads(timings_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    generate = ("from pathlib import Path; from lavis_glscl.datasets import shapes; "
                f"shapes.ensure_generated(Path({str(folder / 'pairs')!r}), num_train={pairs}, num_test=4, "
                "image_size=32, seed=0)")
    timings = {"generate": timed([sys.executable, "-c", generate], folder / "generate.log", cwd=REPO),
               "make_shards": timed([sys.executable, "-m", "lavis_glscl.tools.make_shards", "--ann",
                                     str(folder / "pairs" / "train.json"), "--media-root", str(folder / "pairs"),
                                     "--out", str(folder / "shards"), "--samples-per-shard", "1000"],
                                    folder / "make_shards.log", cwd=REPO)}
    timings_path.write_text(json.dumps(timings))
    return timings


def run_yaml(path: Path, index: Path, steps: int, batch: int, workers: int) -> Path:
    path.write_text(f"""
model: {{arch: glscl_pretrain, model_type: tiny}}
datasets:
  glscl_image_text:
    type: wds
    build_info:
      shards: {{storage: "{index}"}}
    vis_processor:
      train: {{name: glscl_image_train, image_size: 32, hflip_prob: 0.0}}
    text_processor:
      train: {{name: glscl_caption}}
run: {{task: retrieval, runner: runner_glscl, device: cpu, seed: 0, lr_sched: glscl_warmup_linear, init_lr: 1e-3,
      min_lr: 0.0, weight_decay: 0.01, max_epoch: 1, iters_per_epoch: {steps}, batch_size_train: {batch},
      batch_size_eval: 8, num_workers: {workers}, log_freq: {max(1, steps // 80)}, train_splits: [train],
      valid_splits: [], test_splits: [], evaluate: false, distributed: true, dist_url: "env://"}}
""")
    return path


def memory_sample(launcher: psutil.Process) -> dict:
    """Now: the resident MiB of each rank process and of all their DataLoader workers, the CPU seconds all of them
    have used so far, and the machine's load average."""
    ranks, workers, cpu = [], 0.0, 0.0
    for rank in launcher.children():
        try:
            processes = [rank, *rank.children(recursive=True)]
            ranks.append(rank.memory_info().rss / 2 ** 20)
            workers += sum(child.memory_info().rss for child in processes[1:]) / 2 ** 20
            cpu += sum(sum(process.cpu_times()[:2]) for process in processes)
        except psutil.NoSuchProcess:
            continue
    return {"t": time.time(), "ranks_mib": [round(r, 1) for r in ranks], "workers_mib": round(workers, 1),
            "cpu_s": round(cpu, 2), "load": os.getloadavg()[0]}


def train(config: Path, output_dir: Path, log_path: Path):
    """torchrun the run, sampling memory every 2 s; returns the memory samples and the run's timing."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "lavis_glscl.train",
               "--cfg-path", str(config), "--options", f"run.output_dir={output_dir}"]
    load, cpu, start = os.getloadavg()[0], children_cpu_seconds(), time.time()
    samples = []
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
        launcher = psutil.Process(process.pid)
        while process.poll() is None:
            samples.append(memory_sample(launcher))
            time.sleep(2)
    if process.returncode:
        raise RuntimeError(f"the run failed; see {log_path}")
    timing = {"wall_s": round(time.time() - start, 1), "cpu_s": round(children_cpu_seconds() - cpu, 1),
              "load_before": load, "load_after": os.getloadavg()[0]}
    return samples, timing


def step_times(log_text: str) -> dict:
    """Wall-clock time of each logged step (rank 0's console line)."""
    return {int(step): datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for stamp, step in STEP_LINE.findall(log_text)}


def throughput_curve(times: dict, global_batch: int) -> list:
    steps = sorted(times)
    return [{"step": b, "samples_per_s": round((b - a) * global_batch / (times[b] - times[a]), 1)}
            for a, b in zip(steps, steps[1:])]


def quarter_summary(times: dict, memory: list, steps: int, global_batch: int) -> dict:
    """Throughput (between logged steps) and mean resident memory (ranks + workers) per quarter of the run."""
    logged = sorted(times)
    quarters = []
    for quarter in range(4):
        first, last = quarter * steps // 4, (quarter + 1) * steps // 4 - 1
        inside = [s for s in logged if first <= s <= last]
        a, b = inside[0], inside[-1]
        window = [m for m in memory if times[a] <= m["t"] <= times[b] and len(m["ranks_mib"]) == 2]
        total = [sum(m["ranks_mib"]) + m["workers_mib"] for m in window]
        steps_per_s = (b - a) / (times[b] - times[a])
        cpu_per_s = (window[-1]["cpu_s"] - window[0]["cpu_s"]) / (window[-1]["t"] - window[0]["t"])
        quarters.append({"steps": [a, b], "samples_per_s": round(steps_per_s * global_batch, 1),
                         # what other jobs on the machine change least: CPU seconds (ranks + workers) per step
                         "cpu_s_per_step": round(cpu_per_s / steps_per_s, 4),
                         "mean_resident_mib": round(sum(total) / max(1, len(total)), 1),
                         "mean_load": round(sum(m["load"] for m in window) / max(1, len(window)), 2),
                         "memory_samples": len(total)})
    first, last = quarters[0], quarters[-1]
    return {"quarters": quarters,
            "last_over_first_throughput": round(last["samples_per_s"] / first["samples_per_s"], 3),
            "last_over_first_cpu_s_per_step": round(last["cpu_s_per_step"] / first["cpu_s_per_step"], 3),
            "memory_growth": round(last["mean_resident_mib"] / first["mean_resident_mib"] - 1, 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    name = result_name("scale_run", parser, args)
    folder = Path(tempfile.gettempdir()) / f"lavis_glscl_scale_run_{args.pairs}"
    preparation = prepare(args.pairs, folder)
    RESULTS_DIR.mkdir(exist_ok=True)
    log_path = RESULTS_DIR / f"{name}.log"
    with tempfile.TemporaryDirectory() as scratch:
        config = run_yaml(Path(scratch) / "scale_run.yaml", folder / "shards" / "index.json", args.steps, args.batch,
                          args.workers)
        memory, timing = train(config, Path(scratch) / "out", log_path)
    times = step_times(log_path.read_text())
    global_batch = 2 * args.batch
    summary = quarter_summary(times, memory, args.steps, global_batch)
    start = memory[0]["t"] if memory else 0.0
    curve = [{"s": round(m["t"] - start, 1), **{k: v for k, v in m.items() if k != "t"}} for m in memory]
    for quarter in summary["quarters"]:
        print(f"steps {quarter['steps'][0]:5d}-{quarter['steps'][1]:5d}: {quarter['samples_per_s']:7.1f} samples/s, "
              f"{quarter['cpu_s_per_step']:.3f} CPU s/step, resident {quarter['mean_resident_mib']:8.1f} MiB "
              f"(ranks + workers), load {quarter['mean_load']:.1f}")
    print(f"last / first quarter throughput {summary['last_over_first_throughput']} (goal: within 10 %), CPU s/step "
          f"{summary['last_over_first_cpu_s_per_step']}, memory growth {100 * summary['memory_growth']:.2f} % "
          f"(goal: under 5 %); run {timing['wall_s']} s wall, "
          f"{timing['cpu_s']} s CPU, load {timing['load_before']:.1f}")
    settings = {**vars(args), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    path = save(name, {"settings": settings, "preparation": preparation, "run": timing, **summary,
                       "throughput_curve": throughput_curve(times, global_batch), "memory_curve": curve})
    print(f"written {path}")


if __name__ == "__main__":
    main()
