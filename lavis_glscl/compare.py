"""Side-by-side comparison of LAVIS runs over seeds: ``python -m lavis_glscl.compare --cfg-path <compare.yaml>``.

Every run trains and tests one registered model from the same base run yaml (same datasets, steps, batch,
resolution), changed only by its ``options``, once per seed of ``seeds`` or of its own ``seeds`` (``run.seed``, plus
the run's ``seed_options`` with ``{seed}`` filled in); ``plateau`` stops each training on a plateau rule instead of
after a fixed step count (see :mod:`lavis_glscl.stopping`).  ``evaluations`` re-test a run's trained weights with other
options (e.g. a score normaliser); ``tests`` are other run yamls (other tasks and data, e.g. ALIGN-BENCH) every
trained run is also tested with, their metrics joining the run's where it has none of that name; ``finetunes`` are
run yamls trained from each trained run's checkpoint (``{checkpoint}`` and ``{seed}`` in their options), as the paper
measures pre-training by downstream tasks, their metrics joining the run's under the fine-tune's ``name`` as a prefix
(``ret_txt_r5``); a row's own ``finetunes`` replace the shared ones.  Every metric is read from the ``evaluate.txt``
that LAVIS's own task evaluator wrote; ``scale`` multiplies named metrics (LAVIS's classification accuracy is a
fraction).

A row reports each metric's mean and sample standard deviation over its seeds (the per-seed values, steps and
minutes in ``results.json``), the mean steps it trained and the mean minutes per seed (training and its tests, or
the re-test alone).  A run naming a ``baseline`` row is compared with it seed by seed (the same seed sees the same
data order): the mean paired difference, its standard deviation, and a two-sided paired t-test; the difference
"exceeds the seeds' spread" when p < 0.05.  The table goes to stdout and ``results.md``; ``results.png`` holds the
bars with standard-deviation error bars beside each row's training-loss curves.  A seed whose run directory holds
a finished record for the same options is not trained again (an interrupted compare resumes where it stopped);
``--finished-only`` tabulates the finished seeds of a compare still running, training and testing nothing.

Compare yaml::

    compare:
      base: projects/glscl/demo/pretrain_shapes.yaml     # run yaml shared by all runs
      output_dir: output/compare/shapes
      metrics: [txt_r1, txt_r5, img_r1, img_r5]
      seeds: [0, 1, 2]                                    # optional; default: the base yaml's own seed, once
      plateau: {metric: train_loss, window: 3, min_delta: 0.02, relative: true}  # optional
      options: [run.max_epoch=20, run.iters_per_epoch=10]  # applied to every run
      tests: [projects/glscl/demo/align_bench_shapes.yaml]  # optional
      finetunes:                                          # optional
        - {name: nlvr, cfg: projects/glscl/demo/finetune_nlvr_shapes.yaml, options: ["model.pretrained={checkpoint}"]}
      scale: {nlvr_acc: 100}                              # optional
      tables:                                             # optional: several tables of one set of runs
        - {title: Zero-shot retrieval, metrics: [itc_txt_r5, rerank_txt_r5]}
        - {title: Downstream, metrics: [nlvr_acc]}
      runs:
        - name: GLSCL
          options: []
          seed_options: ["model.mask_seed={seed}"]
          evaluations:
            - name: GLSCL + inverted softmax
              options: [run.task=glscl_retrieval, run.score_normalizer=inverted_softmax]
        - name: GLSCL without MGSC and MLTC
          options: [model.loss_weights.mgsc=0, model.loss_weights.mltc=0]
          baseline: GLSCL
          seeds: [0, 1]                                   # optional: this row's own seeds (paired on shared ones)
"""
import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from omegaconf import OmegaConf

from lavis_glscl.compare_tables import figure, paired_difference, summarise, table_section
from lavis_glscl.paths import run_config_path

RECORD_FILE = "compare_record.json"  # a finished seed of a row: its metrics, steps, minutes, options and tests


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "run"


def read_metrics(output_dir: Path, split: str = "test") -> Dict[str, float]:
    """The numeric metrics of ``split`` that a task evaluator wrote into the newest ``evaluate.txt`` under
    ``output_dir``: each line is one evaluation's JSON metrics, flat (lavis_glscl's tasks add ``split``; LAVIS's
    retrieval and VQA tasks write no split: the one evaluated) or under its split's name (LAVIS's classification task:
    ``{"test": {...}}``)."""
    files = sorted(output_dir.rglob("evaluate.txt"), key=lambda path: path.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no evaluate.txt under {output_dir}")
    records = []
    for line in files[-1].read_text().splitlines():
        record = json.loads(line) if line.strip() else None
        if record and len(record) == 1 and isinstance(next(iter(record.values())), dict):
            (name, metrics), = record.items()
            record = {"split": name, **metrics}
        if record:
            records.append(record)
    chosen = [record for record in records if record.get("split", split) == split]
    if not chosen:
        raise KeyError(f"{files[-1]} holds no metrics of split {split!r}")
    return {key: float(value) for key, value in chosen[-1].items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def read_steps(output_dir: Path) -> Optional[int]:
    """How many steps the run under ``output_dir`` trained (``runner_glscl``'s ``run`` record), if it says."""
    for log in sorted(output_dir.rglob("log.txt")):
        for line in reversed(log.read_text().splitlines()):
            if line.startswith("{") and '"run_steps"' in line:
                return int(json.loads(line)["run_steps"])
    return None


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


def plateau_options(plateau) -> List[str]:
    return [f"run.plateau.{key}={value}" for key, value in (plateau or {}).items()]


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(module: str, cfg_path: str, options: List[str], log: Path) -> np.ndarray:
    """Run ``python -m module`` on ``cfg_path`` with ``options``; returns its [wall, CPU] minutes (on a shared
    machine the CPU time is the figure other jobs do not inflate)."""
    start, cpu_start = time.perf_counter(), children_cpu_seconds()
    with open(log, "w") as handle:
        result = subprocess.run([sys.executable, "-m", module, "--cfg-path", cfg_path, "--options", *options],
                                stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{module} failed (exit {result.returncode}); see {log}")
    return np.array([time.perf_counter() - start, children_cpu_seconds() - cpu_start]) / 60


def finished_record(run_dir: Path, options: List[str], tests: List[str], finetunes: List[dict]) -> Optional[dict]:
    """The record a finished run with exactly these ``options``, tested with these ``tests`` and ``finetunes``, left in
    ``run_dir``, so that a compare interrupted after hours resumes at the first unfinished seed; None when there is
    none or it was trained or tested otherwise."""
    path = run_dir / RECORD_FILE
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    done = (record.get("options"), record.get("tests"), record.get("finetunes", []))
    return record if done == (options, tests, finetunes) else None


def train_and_test(base: str, tests: List[str], finetunes: List[dict], options: List[str], run_dir: Path,
                   seed: Optional[int]) -> dict:
    """Train one seed of a row from ``base``, test it with the row's evaluator and every yaml of ``tests``, and train
    and test every fine-tune from its checkpoint."""
    minutes = _run("lavis_glscl.train", base, options + [f"run.output_dir={run_dir}"],
                   run_dir.parent / f"{run_dir.name}.log")
    checkpoint = last_checkpoint(run_dir)
    for test in tests:
        test_dir = evaluation_directory(run_dir, test)
        minutes += _run("lavis_glscl.evaluate", run_config_path(test), trained_model_options(base, options) + [
            f"run.output_dir={test_dir}", "model.load_finetuned=true", f"model.finetuned={checkpoint}"],
            test_dir.with_suffix(".log"))
    for finetune in finetunes:
        finetune_dir = finetune_directory(run_dir, finetune)
        filled = [option.format(checkpoint=checkpoint, seed=seed) for option in finetune.get("options") or []]
        seeded = [] if seed is None else [f"run.seed={seed}"]
        minutes += _run("lavis_glscl.train", run_config_path(finetune["cfg"]),
                        seeded + filled + [f"run.output_dir={finetune_dir}"], finetune_dir.with_suffix(".log"))
    return {"seed": seed, "metrics": collect_metrics(run_dir, tests, finetunes), "minutes": float(minutes[0]),
            "cpu_minutes": float(minutes[1]), "steps": read_steps(run_dir), "output_dir": str(run_dir),
            "options": options, "tests": tests, "finetunes": finetunes}


def evaluation_directory(run_dir: Path, test: str) -> Path:
    return run_dir.parent / f"{run_dir.name}_{slug(Path(test).stem)}"


def finetune_directory(run_dir: Path, finetune: dict) -> Path:
    return run_dir.parent / f"{run_dir.name}_{slug(finetune['name'])}"


def collect_metrics(run_dir: Path, tests: List[str], finetunes: List[dict]) -> Dict[str, float]:
    """A trained seed's metrics as its evaluators wrote them: its own, its tests' where it has none of that name, its
    fine-tunes' under their prefix (read again when a finished seed is reused)."""
    metrics = read_metrics(run_dir)
    for test in tests:
        metrics = {**read_metrics(evaluation_directory(run_dir, test)), **metrics}
    for finetune in finetunes:
        metrics.update({f"{finetune['name']}_{key}": value
                        for key, value in read_metrics(finetune_directory(run_dir, finetune)).items()})
    return metrics


def seed_run_options(cfg, run, seed: Optional[int]) -> List[str]:
    options = list(cfg.get("options") or []) + plateau_options(cfg.get("plateau")) + list(run.get("options") or [])
    if seed is None:
        return options
    return options + [f"run.seed={seed}"] + [option.format(seed=seed) for option in run.get("seed_options") or []]


def compare(cfg, finished_only: bool = False) -> List[dict]:
    base = run_config_path(cfg.base)
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    seeds = list(cfg.get("seeds") or [None])
    rows = []
    for run in cfg.runs:
        trained, evaluated = [], {evaluation.name: [] for evaluation in run.get("evaluations") or []}
        for seed in list(run.get("seeds") or seeds):
            suffix = "" if seed is None else f"_seed{seed}"
            run_dir = output_dir / f"{slug(run.name)}{suffix}"
            options = seed_run_options(cfg, run, seed)
            tests = list(cfg.get("tests") or [])
            finetunes = plain(run.finetunes if "finetunes" in run else cfg.get("finetunes") or [])
            record = finished_record(run_dir, options, tests, finetunes)
            if record is None and finished_only:
                print(f"{run.name}{suffix}: not finished, left out", flush=True)
                continue
            if record is None:
                record = train_and_test(base, tests, finetunes, options, run_dir, seed)
                (run_dir / RECORD_FILE).write_text(json.dumps(record, indent=2))
            else:
                print(f"{run.name}{suffix}: reusing the finished run in {run_dir}", flush=True)
                record["metrics"] = collect_metrics(run_dir, tests, finetunes)
            record["metrics"] = scaled(record["metrics"], plain(cfg.get("scale") or {}))
            trained.append(record)
            print(f"{run.name}{suffix}: {record['metrics']}", flush=True)
            for evaluation in [] if finished_only else run.get("evaluations") or []:
                eval_dir = output_dir / f"{slug(evaluation.name)}{suffix}"
                eval_minutes = _run("lavis_glscl.evaluate", base, options + list(evaluation.get("options") or []) + [
                    f"run.output_dir={eval_dir}", "run.evaluate=true", "model.load_finetuned=true",
                    f"model.finetuned={last_checkpoint(run_dir)}"], output_dir / f"{slug(evaluation.name)}{suffix}.log")
                metrics = scaled(read_metrics(eval_dir), plain(cfg.get("scale") or {}))
                evaluated[evaluation.name].append({"seed": seed, "metrics": metrics,
                                                   "minutes": float(eval_minutes[0]),
                                                   "cpu_minutes": float(eval_minutes[1])})
        if trained:
            rows.append({**summarise(run.name, trained), "baseline": run.get("baseline")})
        rows += [summarise(name, records) for name, records in evaluated.items() if records]
    tables = plain(cfg.tables) if cfg.get("tables") else [{"title": None, "metrics": list(cfg.metrics)}]
    metrics = [metric for table in tables for metric in table["metrics"]]
    by_name = {row["name"]: row for row in rows}
    configured = [run.name for run in cfg.runs] + [e.name for run in cfg.runs for e in run.get("evaluations") or []]
    for row in rows:
        if row.get("baseline"):
            if row["baseline"] not in configured:
                raise KeyError(f"run {row['name']!r}: baseline {row['baseline']!r} is not a row; rows: {configured}")
            if row["baseline"] in by_name:  # (with --finished-only, a baseline may have no finished seed yet)
                row["paired"] = {m: paired_difference(row, by_name[row["baseline"]], m) for m in metrics}
    text = "\n\n".join(table_section(rows, table) for table in tables)
    (output_dir / "results.md").write_text(text + "\n")
    (output_dir / "results.json").write_text(json.dumps(rows, indent=2))
    figure(rows, tables[0]["metrics"], output_dir / "results.png")
    print(text)
    print(f"written {output_dir / 'results.md'}, results.json, results.png")
    return rows


def scaled(metrics: Dict[str, float], scale: Dict[str, float]) -> Dict[str, float]:
    return {key: value * scale.get(key, 1.0) for key, value in metrics.items()}


def plain(node):
    """An OmegaConf node as plain Python containers (records are written as JSON)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train and evaluate several LAVIS runs over seeds and tabulate them.")
    parser.add_argument("--cfg-path", "--cfg", dest="cfg_path", required=True)
    parser.add_argument("--options", nargs="+", default=[], help="override compare.* keys, as key=value")
    parser.add_argument("--finished-only", action="store_true",
                        help="tabulate the seeds already finished; train and test nothing")
    args = parser.parse_args(argv)
    cfg = OmegaConf.merge(OmegaConf.load(run_config_path(args.cfg_path)), OmegaConf.from_dotlist(args.options))
    compare(cfg.compare, finished_only=args.finished_only)


if __name__ == "__main__":
    main()
