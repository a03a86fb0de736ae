"""Shared helpers of the benchmarks: timing side by side in one process, and a json record of the results."""
import json
import platform
import time
from pathlib import Path
from typing import Callable, Dict

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


def machine() -> Dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "processor": platform.processor(),
            "threads": str(torch.get_num_threads()),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def save(name: str, results: dict) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2))
    return path
