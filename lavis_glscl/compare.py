"""Side-by-side comparison of LAVIS runs: ``python -m lavis_glscl.compare --cfg-path <compare.yaml>``.

Every run trains and tests one registered model from the same base run yaml (same datasets, steps, batch,
resolution), changed only by its ``options``; ``evaluations`` re-test a run's trained weights with other
options (e.g. a re-ranker); ``tests`` are other run yamls (other tasks and data, e.g. ALIGN-BENCH) every trained
run is also tested with (the trained model: its arch, type, ``model.*`` options and weights), their metrics joining
the run's row where the run has no metric of that name.  Each row records its wall time (training and its own
test, or test only).  Each metric is read from the ``evaluate.txt`` that LAVIS's own task evaluator wrote.  The
table goes to stdout and, with a bar chart, to ``output_dir``.

Compare yaml::

    compare:
      base: projects/glscl/demo/pretrain_shapes.yaml     # run yaml shared by all runs
      output_dir: output/compare/shapes
      metrics: [txt_r1, txt_r5, img_r1, img_r5]
      options: [run.iters_per_epoch=40]                   # applied to every run
      tests: [projects/glscl/demo/align_bench_shapes.yaml]  # optional
      runs:
        - name: GLSCL
          options: []
          evaluations:
            - name: GLSCL + inverted softmax
              options: [run.score_normalizer=inverted_softmax]
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from omegaconf import OmegaConf

from lavis_glscl.paths import run_config_path


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "run"


def read_metrics(output_dir: Path) -> Dict[str, float]:
    """The last metrics LAVIS's evaluator wrote under ``output_dir`` (plus the ``glscl_retrieval`` extras)."""
    files = sorted(output_dir.rglob("evaluate.txt"))
    if not files:
        raise FileNotFoundError(f"no evaluate.txt under {output_dir}")
    metrics: Dict[str, float] = {}
    for line in files[-1].read_text().splitlines():
        record = json.loads(line)
        metrics.update(record.get("glscl", record))
    return metrics


def last_checkpoint(output_dir: Path) -> Path:
    candidates = sorted(output_dir.rglob("checkpoint_*.pth"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no checkpoint under {output_dir}")
    best = [p for p in candidates if p.name == "checkpoint_best.pth"]
    return (best or candidates)[-1]


def trained_model_options(base: str, options: List[str]) -> List[str]:
    """The options that give another run yaml the model a run of ``base`` with ``options`` trained: the base's
    ``model.arch`` and ``model.model_type``, then the run's own ``model.*`` options."""
    model = OmegaConf.load(base).model
    named = [f"model.{key}={model[key]}" for key in ("arch", "model_type") if model.get(key) is not None]
    return named + [option for option in options if option.startswith("model.")]


def _run(module: str, cfg_path: str, options: List[str], log: Path) -> float:
    """Run ``python -m module`` on ``cfg_path`` with ``options``; returns its wall time in minutes."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        result = subprocess.run([sys.executable, "-m", module, "--cfg-path", cfg_path, "--options", *options],
                                stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed (exit {result.returncode}); see {log}")
    return (time.perf_counter() - start) / 60


def markdown_table(rows: List[dict], metrics: List[str]) -> str:
    """One row per run: its metrics, then its wall time in minutes where the row has one."""
    timed = any("minutes" in row for row in rows)
    lines = ["| run | " + " | ".join(metrics) + (" | minutes |" if timed else " |"),
             "|---|" + "---|" * (len(metrics) + timed)]
    for row in rows:
        cells = [f"{row['metrics'].get(m, float('nan')):.1f}" for m in metrics]
        if timed:
            cells.append(f"{row['minutes']:.1f}" if "minutes" in row else "")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(rows: List[dict], metrics: List[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(rows))
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(metrics) + 0.4 * len(rows)), 4))
    for index, row in enumerate(rows):
        positions = [m + index * width for m in range(len(metrics))]
        axes.bar(positions, [row["metrics"].get(m, 0.0) for m in metrics], width, label=row["name"])
    axes.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    axes.set_ylabel("%")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def compare(cfg) -> List[dict]:
    base = run_config_path(cfg.base)
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    shared = list(cfg.get("options") or [])
    rows = []
    for run in cfg.runs:
        run_dir = output_dir / slug(run.name)
        minutes = _run("lavis_glscl.train", base, shared + list(run.get("options") or []) + [f"run.output_dir={run_dir}"],
                       output_dir / f"{slug(run.name)}.log")
        metrics = read_metrics(run_dir)
        model_options = trained_model_options(base, shared + list(run.get("options") or []))
        for test in cfg.get("tests") or []:
            test_dir = output_dir / f"{slug(run.name)}_{slug(Path(test).stem)}"
            _run("lavis_glscl.evaluate", run_config_path(test), model_options + [
                f"run.output_dir={test_dir}", "model.load_finetuned=true", f"model.finetuned={last_checkpoint(run_dir)}"],
                 test_dir.with_suffix(".log"))
            metrics = {**read_metrics(test_dir), **metrics}
        rows.append({"name": run.name, "metrics": metrics, "minutes": minutes})
        print(f"{run.name}: {rows[-1]['metrics']}", flush=True)
        for evaluation in run.get("evaluations") or []:
            eval_dir = output_dir / slug(evaluation.name)
            options = shared + list(run.get("options") or []) + list(evaluation.get("options") or []) + [
                f"run.output_dir={eval_dir}", "run.evaluate=true", "model.load_finetuned=true",
                f"model.finetuned={last_checkpoint(run_dir)}"]
            minutes = _run("lavis_glscl.evaluate", base, options, output_dir / f"{slug(evaluation.name)}.log")
            rows.append({"name": evaluation.name, "metrics": read_metrics(eval_dir), "minutes": minutes})
            print(f"{evaluation.name}: {rows[-1]['metrics']}", flush=True)
    metrics = list(cfg.metrics)
    table = markdown_table(rows, metrics)
    (output_dir / "results.md").write_text(table + "\n")
    (output_dir / "results.json").write_text(json.dumps(rows, indent=2))
    bar_chart(rows, metrics, output_dir / "results.png")
    print(table)
    print(f"written {output_dir / 'results.md'}, results.json, results.png")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train and evaluate several LAVIS runs and tabulate their metrics.")
    parser.add_argument("--cfg-path", "--cfg", dest="cfg_path", required=True)
    parser.add_argument("--options", nargs="+", default=[], help="override compare.* keys, as key=value")
    args = parser.parse_args(argv)
    cfg = OmegaConf.merge(OmegaConf.load(run_config_path(args.cfg_path)), OmegaConf.from_dotlist(args.options))
    compare(cfg.compare)


if __name__ == "__main__":
    main()
