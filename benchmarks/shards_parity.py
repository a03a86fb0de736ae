"""README command 1 trained from webdataset shards vs from its json and image files: retrieval metrics side by side.

    python benchmarks/shards_parity.py [--map-seeds 42 1 2] [--shard-seeds 42 1 2] [--steps 64] [--fresh]

Writes the shapes demo's 6,000 training pairs into 24 shards with ``make_shards``, then trains the ``demo`` model
with ``projects/glscl/demo/pretrain_shapes_scratch.yaml`` (map-style) and ``pretrain_shapes_shards.yaml`` (shards), the
same steps and batch, each seed in a fresh process (``run.seed`` varies the model's initialisation, the sample order
and the augmentations; the model's ``mask_seed`` stays as configured), and reports LAVIS's retrieval metrics on the
500-image test split.  A shard run passes when its R@5 (both directions) lies inside the range of the map-style
seeds or within 3 points of their mean; the means of both kinds over their seeds are reported too.  About 6 minutes
per run on an idle 2-core CPU.  On a CPU shared with other jobs run it with ``OMP_WAIT_POLICY=PASSIVE`` (recorded
with each run): torch's waiting threads otherwise spin for cores other jobs hold, and a step takes several times
longer (the metrics do not change).
Each finished run is appended to ``results/shards_parity_runs.jsonl`` (other steps: a file of their own); a rerun
keeps the recorded runs of the same kind, seed and steps and trains only the rest (``--fresh`` starts over), so an
interrupted comparison loses one run at most.
"""
import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from common import RESULTS_DIR, result_name, save, timed

REPO = Path(__file__).resolve().parent.parent
YAMLS = {"map": "projects/glscl/demo/pretrain_shapes_scratch.yaml",
         "shards": "projects/glscl/demo/pretrain_shapes_shards.yaml"}
METRIC = re.compile(r"^\s*(txt_r1|txt_r5|txt_r10|img_r1|img_r5|img_r10|agg_metrics): ([0-9.]+)$", re.M)
STEP_LINE = re.compile(r"Train: epoch \[\d+\] \[(\d+)/\d+\].* time: ([0-9.]+)  data: ([0-9.]+)")


def train(prefix: str, kind: str, seed: int, steps: int, output_dir: Path) -> dict:
    log_path = RESULTS_DIR / f"{prefix}_logs" / f"{kind}_seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "lavis_glscl.train", "--cfg-path", YAMLS[kind], "--options",
               f"run.seed={seed}", f"run.iters_per_epoch={steps}", f"run.output_dir={output_dir}"]
    timing = timed(command, log_path, cwd=REPO)
    text = log_path.read_text()
    metrics = {name: float(value) for name, value in METRIC.findall(text)}
    steps_logged = STEP_LINE.findall(text)
    _, seconds_per_step, data_seconds = steps_logged[-1]
    result = {"kind": kind, "seed": seed, "steps": steps, **metrics, "seconds_per_step": float(seconds_per_step),
              "data_seconds_per_step": float(data_seconds), **timing,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "log": str(log_path.relative_to(REPO))}
    print(json.dumps(result), flush=True)
    with open(RESULTS_DIR / f"{prefix}_runs.jsonl", "a") as runs:
        runs.write(json.dumps(result) + "\n")
    return result


def finished_runs(runs_file: Path) -> dict:
    """Runs recorded by earlier invocations, by (kind, seed, steps)."""
    if not runs_file.exists():
        return {}
    records = [json.loads(line) for line in runs_file.read_text().splitlines() if line.strip()]
    return {(run["kind"], run["seed"], run["steps"]): run for run in records}


def verdict(map_runs, shard_run) -> dict:
    checks = {}
    for metric in ("txt_r5", "img_r5"):
        values = [run[metric] for run in map_runs]
        mean = sum(values) / len(values)
        inside = min(values) <= shard_run[metric] <= max(values)
        checks[metric] = {"map_min": min(values), "map_max": max(values), "map_mean": round(mean, 2),
                          "shards": shard_run[metric], "inside_range": inside,
                          "within_3_of_mean": abs(shard_run[metric] - mean) <= 3.0}
    checks["passes"] = all(c["inside_range"] or c["within_3_of_mean"] for c in checks.values())
    return checks


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map-seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--shard-seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--fresh", action="store_true", help="forget the runs recorded by earlier invocations")
    args = parser.parse_args()
    name = result_name("shards_parity", parser, args, ignore=["fresh"])
    runs_name = result_name("shards_parity", parser, args, ignore=["fresh", "map_seeds", "shard_seeds"])
    runs_file = RESULTS_DIR / f"{runs_name}_runs.jsonl"
    RESULTS_DIR.mkdir(exist_ok=True)
    if args.fresh:
        runs_file.unlink(missing_ok=True)
    done = finished_runs(runs_file)
    conversion = timed([sys.executable, "-m", "lavis_glscl.tools.make_shards", "--dataset", "shapes_demo",
                        "--samples-per-shard", "250"], RESULTS_DIR / f"{runs_name}_make_shards.log", cwd=REPO)
    # seed by seed, map-style then shards, so that a partial result already pairs the two
    order = [(kind, seed) for seed in dict.fromkeys(args.map_seeds + args.shard_seeds)
             for kind, seeds in (("map", args.map_seeds), ("shards", args.shard_seeds)) if seed in seeds]
    with tempfile.TemporaryDirectory() as scratch:
        runs = [done.get((kind, seed, args.steps))
                or train(runs_name, kind, seed, args.steps, Path(scratch) / f"{kind}_{seed}") for kind, seed in order]
    map_runs = [run for run in runs if run["kind"] == "map"]
    shard_runs = [run for run in runs if run["kind"] == "shards"]
    checks = {run["seed"]: verdict(map_runs, run) for run in shard_runs}
    checks["means"] = {metric: {kind: round(sum(run[metric] for run in group) / len(group), 2)
                                for kind, group in (("map", map_runs), ("shards", shard_runs))}
                       for metric in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10")}
    settings = {**vars(args), "resumed_runs": sum(run in done.values() for run in runs)}
    path = save(name, {"settings": settings, "make_shards": conversion, "runs": runs, "checks": checks})
    print(json.dumps(checks, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
