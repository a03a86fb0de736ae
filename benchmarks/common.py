"""Shared helpers of the benchmarks: timing side by side in one process, and a json record of the results."""
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def best_rate(function: Callable[[], int], repeats: int = 3) -> float:
    """Items per second of ``function`` (which returns how many items it processed), best of ``repeats`` runs."""
    function()  # warm-up: page cache, lazy imports, allocator
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        items = function()
        rates.append(items / (time.perf_counter() - start))
    return max(rates)


def resident_mib() -> float:
    """This process's resident set now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2 ** 20


def peak_mib() -> float:
    """The largest resident set this process has had (or the CUDA allocator's peak on a GPU)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(script: str, arguments: List[str]) -> dict:
    """Run ``python script arguments`` and return the json dict it prints last, so that each setting's peak
    memory is its own."""
    finished = subprocess.run([sys.executable, script, *arguments], check=True, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(finished.stdout.strip().splitlines()[-1])


def children_cpu_seconds() -> float:
    """CPU seconds of the finished child processes this process waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: List[str], log_path: Path, cwd: Path = None) -> dict:
    """Run ``command`` with its output in ``log_path``: wall and CPU seconds, and the load average around it (on a
    shared machine the CPU seconds are the figure other jobs move least)."""
    load_before, cpu_before, start = os.getloadavg()[0], children_cpu_seconds(), time.time()
    with open(log_path, "w") as log:
        subprocess.run(command, cwd=cwd, check=True, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return {"wall_s": round(time.time() - start, 1), "cpu_s": round(children_cpu_seconds() - cpu_before, 1),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def machine() -> Dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "processor": platform.processor(),
            "threads": str(torch.get_num_threads()),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def result_name(name: str, parser, args, ignore=()) -> str:
    """``name`` for a run with the default settings, else ``name`` followed by each setting that differs, so that a
    quick or partial run (``run_all.py --quick``) never overwrites the full run's results."""
    changed = [f"{key}{'-'.join(map(str, value)) if isinstance(value, list) else value}"
               for key, value in vars(args).items() if key not in ignore and value != parser.get_default(key)]
    return "_".join([name, *changed])


def save(name: str, results: dict) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    return path
