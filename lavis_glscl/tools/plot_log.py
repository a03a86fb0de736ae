"""Training-loss curves and evaluation metrics of one or more runs, from their ``log.txt``, in one PNG::

    python -m lavis_glscl.tools.plot_log <output_dir> [<output_dir> ...] [--out runs.png] [--metrics txt_r1 img_r1]

An ``output_dir`` is a run directory holding ``log.txt`` (``<run.output_dir>/<job id>``) or any directory above
run directories: every ``log.txt`` under it is a run (the ``latest`` link is not counted twice), labelled by the
last two parts of its directory, e.g. ``demo_pretrain/20250101120000``.

One panel per loss key of ``runner_glscl``'s ``train_step`` records (``loss``, ``loss_itc``, ``loss_itm``, ...),
against the global step ``epoch * iters_per_epoch + iter``, runs overlaid; then one bar panel of the evaluation
metrics: each split's last ``<split>_*`` record in ``log.txt`` (validation splits), and, when the run's config
lists ``test_splits``, the ``evaluate.txt`` beside ``log.txt``.  ``evaluate.txt`` names no split; LAVIS's runner
evaluates the test splits last, so its last values are the last test split's.
"""
import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LOG_NAME = "log.txt"
EVALUATE_NAME = "evaluate.txt"
STEP_PREFIX = "train_step_"
AGG_SUFFIX = "_agg_metrics"
# Bookkeeping numbers that share the metric records but are not scores.
NOT_SCORES = ("best_epoch",)
COUNT_PREFIX = "num_"

Series = Tuple[List[int], List[float]]


@dataclass
class RunLog:
    label: str
    losses: Dict[str, Series] = field(default_factory=dict)  # loss key -> (global steps, values)
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)  # split -> metric -> value


# ------------------------------------------------------------------ files
def find_logs(directories: Sequence[str]) -> List[Path]:
    """Each directory's own ``log.txt``, else every ``log.txt`` below it; an error names a directory without any."""
    logs: List[Path] = []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is not a directory")
        own = directory / LOG_NAME
        # Resolved, so that a run reached through the ``latest`` link, or given twice, is one run.
        found = [own.resolve()] if own.is_file() else sorted({path.resolve() for path in directory.rglob(LOG_NAME)})
        if not found:
            raise FileNotFoundError(f"no {LOG_NAME} in or under {directory}; give a run's output_dir")
        logs += [path for path in found if path not in logs]
    return logs


def run_labels(logs: Sequence[Path]) -> List[str]:
    """``<parent>/<run directory>`` of each log, or its whole directory where those would not tell runs apart."""
    short = ["/".join(log.parent.parts[-2:]) for log in logs]
    return short if len(set(short)) == len(short) else [str(log.parent) for log in logs]


# ------------------------------------------------------------------ records -> series
def parse_records(text: str) -> List[dict]:
    """Every JSON object in a ``log.txt``: the indented config LAVIS's runner writes first and the one-line records
    ``log_stats`` appends; text that does not parse (a line cut short by a killed run) is skipped."""
    decoder = json.JSONDecoder()
    records, position = [], text.find("{")
    while position != -1:
        try:
            record, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            end = position + 1
        else:
            if isinstance(record, dict):
                records.append(record)
        position = text.find("{", end)
    return records


def step_records(records: Iterable[dict]) -> List[dict]:
    return [record for record in records if f"{STEP_PREFIX}iter" in record]


def iters_per_epoch(records: Sequence[dict]) -> int:
    """Steps per epoch: ``runner_glscl`` always logs an epoch's last step, so the largest iteration + 1."""
    return 1 + max((int(record[f"{STEP_PREFIX}iter"]) for record in step_records(records)), default=-1)


def loss_series(records: Sequence[dict]) -> Dict[str, Series]:
    """``{loss key: (global steps, values)}`` from the ``train_step`` records, in the order they were logged."""
    per_epoch = iters_per_epoch(records)
    series: Dict[str, Series] = {}
    for record in step_records(records):
        step = int(record.get(f"{STEP_PREFIX}epoch", 0)) * per_epoch + int(record[f"{STEP_PREFIX}iter"])
        for key, value in record.items():
            name = key[len(STEP_PREFIX):]
            if key.startswith(STEP_PREFIX) and name.startswith("loss") and isinstance(value, (int, float)):
                steps, values = series.setdefault(name, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def _scores(record: dict) -> Dict[str, float]:
    """The numbers of an evaluation record, one level of nesting flattened (``{"glscl": {...}}``,
    ``{"test": {...}}``)."""
    flat: Dict[str, float] = {}
    for key, value in record.items():
        inner = value if isinstance(value, dict) else {key: value}
        flat.update({k: float(v) for k, v in inner.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return flat


def logged_metrics(records: Sequence[dict]) -> Dict[str, Dict[str, float]]:
    """Each evaluated split's last ``<split>_*`` record in ``log.txt`` (``log_stats`` of a validation)."""
    metrics: Dict[str, Dict[str, float]] = {}
    for record in records:
        for split in (key[:-len(AGG_SUFFIX)] for key in record if key.endswith(AGG_SUFFIX)):
            prefix = f"{split}_"
            metrics[split] = {key[len(prefix):]: value for key, value in _scores(record).items()
                              if key.startswith(prefix)}
    return metrics


def evaluate_txt_metrics(records: Sequence[dict], evaluate_text: Optional[str]) -> Dict[str, Dict[str, float]]:
    """``{last test split: metrics}`` from ``evaluate.txt``, later lines overriding earlier ones."""
    config = next((record for record in records if isinstance(record.get("run"), dict)), {})
    splits = (config.get("run") or {}).get("test_splits") or []
    if not splits or not evaluate_text:
        return {}
    merged: Dict[str, float] = {}
    for record in parse_records(evaluate_text):
        merged.update(_scores(record))
    return {splits[-1]: merged} if merged else {}


def read_run(log: Path, label: str) -> RunLog:
    records = parse_records(log.read_text(encoding="utf-8"))
    evaluate = log.parent / EVALUATE_NAME
    evaluate_text = evaluate.read_text(encoding="utf-8") if evaluate.is_file() else None
    metrics = {**logged_metrics(records), **evaluate_txt_metrics(records, evaluate_text)}
    return RunLog(label, loss_series(records), metrics)


# ------------------------------------------------------------------ series -> figure
def loss_keys(runs: Sequence[RunLog]) -> List[str]:
    """Loss keys of all runs: the total ``loss`` first, then the others alphabetically."""
    keys = {key for run in runs for key in run.losses}
    return sorted(keys, key=lambda key: (key != "loss", key))


def metric_columns(runs: Sequence[RunLog], wanted: Optional[Sequence[str]] = None) -> List[Tuple[str, str]]:
    """``(split, metric)`` pairs to draw, in first-seen order: ``wanted`` metrics, else every score."""
    columns: List[Tuple[str, str]] = []
    for run in runs:
        for split, metrics in run.metrics.items():
            for name in metrics:
                chosen = name in wanted if wanted else not (name in NOT_SCORES or name.startswith(COUNT_PREFIX))
                if chosen and (split, name) not in columns:
                    columns.append((split, name))
    return columns


def _draw_losses(axes, key: str, runs: Sequence[RunLog], colors: List[str]) -> None:
    for run, color in zip(runs, colors):
        if key in run.losses:
            steps, values = run.losses[key]
            axes.plot(steps, values, color=color, marker="o" if len(steps) <= 40 else None, markersize=3,
                      linewidth=1.2, label=run.label)
    axes.set_title(key, fontsize=11)
    axes.set_xlabel("global step", fontsize=9)
    axes.tick_params(labelsize=8)
    axes.grid(alpha=0.3)


def _draw_metrics(axes, columns: List[Tuple[str, str]], runs: Sequence[RunLog], colors: List[str]) -> None:
    width = 0.8 / len(runs)
    annotate = len(columns) * len(runs) <= 60
    for index, (run, color) in enumerate(zip(runs, colors)):
        positions = [column + (index - (len(runs) - 1) / 2) * width for column in range(len(columns))]
        heights = [run.metrics.get(split, {}).get(name, float("nan")) for split, name in columns]
        bars = axes.bar(positions, heights, width, color=color, label=run.label)
        if annotate:
            axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(range(len(columns)), [f"{split}_{name}" for split, name in columns], rotation=30, ha="right",
                    fontsize=9)
    axes.set_title("evaluation metrics (last of each split)", fontsize=11)
    axes.tick_params(axis="y", labelsize=8)
    axes.margins(y=0.12)
    axes.grid(axis="y", alpha=0.3)


def figure(runs: Sequence[RunLog], metrics: Optional[Sequence[str]] = None, columns: int = 3) -> Figure:
    """Loss panels on a ``columns``-wide grid, then a full-width panel of evaluation metrics when there are any."""
    keys, bars = loss_keys(runs), metric_columns(runs, metrics)
    if not keys and not bars:
        raise ValueError("no train_step losses and no evaluation metrics in the given logs: "
                         + ", ".join(run.label for run in runs))
    loss_rows = -(-len(keys) // columns)
    rows = loss_rows + (1 if bars else 0)
    fig = Figure(figsize=(5 * columns, 3.4 * loss_rows + (4.2 if bars else 0) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, columns, height_ratios=[3.4] * loss_rows + ([4.2] if bars else []))
    colors = [f"C{index % 10}" for index in range(len(runs))]
    for index, key in enumerate(keys):
        _draw_losses(fig.add_subplot(grid[index // columns, index % columns]), key, runs, colors)
    if bars:
        _draw_metrics(fig.add_subplot(grid[loss_rows, :]), bars, runs, colors)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(runs), 4), fontsize=10)
    return fig


# ------------------------------------------------------------------ command line
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lavis_glscl.tools.plot_log",
                                     description="Plot the training losses and evaluation metrics of LAVIS runs.")
    parser.add_argument("output_dirs", nargs="+", help="run directories holding log.txt, or directories above them")
    parser.add_argument("--out", default="log_plot.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--metrics", nargs="+", help="evaluation metrics to draw, e.g. txt_r1 img_r1 agg_metrics "
                                                     "(default: every score)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[RunLog]:
    args = parse_args(argv)
    try:
        logs = find_logs(args.output_dirs)
        runs = [read_run(log, label) for log, label in zip(logs, run_labels(logs))]
        drawn = figure(runs, args.metrics)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"plot_log: {error}")
    for run in runs:
        steps = max((len(steps) for steps, _ in run.losses.values()), default=0)
        print(f"{run.label}: {steps} logged steps, evaluated splits: {', '.join(run.metrics) or 'none'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    drawn.savefig(out, dpi=110)
    print(f"wrote {out}")
    return runs


if __name__ == "__main__":
    main()
