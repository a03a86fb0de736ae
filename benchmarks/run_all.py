"""Run every benchmark in turn (one command), print their side-by-side ratios, and merge their json results.

    python benchmarks/run_all.py [--quick]

Writes ``benchmarks/results/all_<device>.json``.  ``--quick`` shrinks the sizes for a smoke run.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from common import RESULTS_DIR, machine

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "pretraining_step": (["--model-type", "demo", "--batch", "32"], ["--model-type", "tiny", "--batch", "8"]),
    "retrieval_eval": ([], ["--model-type", "tiny", "--sizes", "40", "80", "--all-pairs-size", "16"]),
    "scan_similarity": ([], ["--queries", "32", "--gallery", "64", "--naive-queries", "8", "--naive-gallery", "8"]),
    "video_decoding": ([], ["--size", "64"]),
    "flops": ([], ["--check-type", "tiny", "--check-batch", "4"]),
    "base_step": ([], ["--model-type", "tiny", "--matmul-size", "1024"]),
    "scaling": ([], ["--measured-type", "tiny"]),  # after base_step, whose memory figures it extrapolates
    "shard_loader": ([], ["--batches", "8"]),
    "scale_run": ([], ["--pairs", "4000", "--steps", "100"]),
    "shards_parity": ([], ["--map-seeds", "42", "--shard-seeds", "42", "--steps", "2"]),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    before = {p: p.stat().st_mtime for p in RESULTS_DIR.glob("*.json")} if RESULTS_DIR.is_dir() else {}
    for name, (full, quick) in BENCHMARKS.items():
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full)], check=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    written = sorted(p for p in RESULTS_DIR.glob("*.json") if before.get(p) != p.stat().st_mtime
                     and not p.name.startswith("all_"))
    merged = {"machine": machine(), **{p.stem: json.loads(p.read_text()) for p in written}}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = RESULTS_DIR / f"all_{device}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(merged, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
