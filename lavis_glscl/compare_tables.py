"""The tables of ``python -m lavis_glscl.compare``: each row's mean and sample standard deviation over its seeds, the
paired test of a row against its baseline row, the markdown tables and the bar chart with loss curves."""
from pathlib import Path
from typing import List, Optional

import numpy as np

P_THRESHOLD = 0.05


def summarise(name: str, per_seed: List[dict]) -> dict:
    """A row: each metric's mean and sample standard deviation over the seeds that report it, mean steps and
    minutes, and the per-seed records themselves."""
    names = sorted({metric for record in per_seed for metric in record["metrics"]})
    values = {metric: [r["metrics"][metric] for r in per_seed if metric in r["metrics"]] for metric in names}
    steps = [r["steps"] for r in per_seed if r.get("steps") is not None]
    return {"name": name, "seeds": [r["seed"] for r in per_seed], "per_seed": per_seed,
            "metrics": {m: float(np.mean(v)) for m, v in values.items()},
            "std": {m: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()},
            "steps": float(np.mean(steps)) if steps else None,
            "minutes": float(np.mean([r["minutes"] for r in per_seed])),
            "cpu_minutes": float(np.mean([r["cpu_minutes"] for r in per_seed]))}


def paired_difference(row: dict, baseline: dict, metric: str) -> Optional[dict]:
    """``row`` minus ``baseline`` on ``metric``, paired by seed: mean and standard deviation of the differences, the
    two-sided paired t-test's p, and whether it is below ``P_THRESHOLD``; None without two shared seeds."""
    from scipy import stats

    ours = {r["seed"]: r["metrics"].get(metric) for r in row["per_seed"]}
    theirs = {r["seed"]: r["metrics"].get(metric) for r in baseline["per_seed"]}
    seeds = [s for s in ours if s in theirs and ours[s] is not None and theirs[s] is not None]
    if len(seeds) < 2:
        return None
    differences = np.array([ours[s] - theirs[s] for s in seeds])
    spread = float(np.std(differences, ddof=1))
    if spread == 0.0:  # identical differences: the t statistic is infinite unless they are all zero
        p_value = 1.0 if differences[0] == 0 else 0.0
    else:
        p_value = float(stats.ttest_rel([ours[s] for s in seeds], [theirs[s] for s in seeds]).pvalue)
    return {"difference": float(differences.mean()), "sd": spread, "p": p_value, "seeds": len(seeds),
            "exceeds_spread": p_value < P_THRESHOLD}


def cell(row: dict, metric: str) -> str:
    if metric not in row["metrics"]:
        return ""
    mean, spread = row["metrics"][metric], row["std"].get(metric, 0.0)
    return f"{mean:.1f} ± {spread:.1f}" if len(row["per_seed"]) > 1 else f"{mean:.1f}"


def markdown_table(rows: List[dict], metrics: List[str]) -> str:
    """One row per run: mean ± standard deviation of each metric over its seeds, steps trained, wall and CPU minutes
    per seed."""
    lines = ["| run | seeds | " + " | ".join(metrics) + " | steps | minutes | CPU minutes |",
             "|---|" + "---|" * (len(metrics) + 4)]
    for row in rows:
        steps = f"{row['steps']:.0f}" if row.get("steps") is not None else ""
        lines.append(f"| {row['name']} | {len(row['per_seed'])} | " + " | ".join(cell(row, m) for m in metrics)
                     + f" | {steps} | {row['minutes']:.1f} | {row['cpu_minutes']:.1f} |")
    return "\n".join(lines)


def paired_table(rows: List[dict], metrics: List[str]) -> str:
    """Each run with a baseline: its paired difference per metric (mean ± sd over seeds, p), ``*`` where the
    difference exceeds the seeds' spread."""
    lines = ["| run - baseline | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for row in rows:
        if all((row.get("paired") or {}).get(metric) is None for metric in metrics):  # (fewer than 2 shared seeds)
            continue
        cells = []
        for metric in metrics:
            test = row["paired"].get(metric)
            cells.append("" if test is None else f"{test['difference']:+.1f} ± {test['sd']:.1f} (p {test['p']:.2f})"
                                                 + (" *" if test["exceeds_spread"] else ""))
        lines.append(f"| {row['name']} - {row['baseline']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def figure(rows: List[dict], metrics: List[str], path: Path) -> None:
    """Bars (mean, standard-deviation error bars) beside each row's training-loss curves, one line per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lavis_glscl.tools.plot_log import find_logs, read_run

    canvas_figure = Figure(figsize=(max(10, 2.2 * len(metrics) + 0.5 * len(rows) + 6), 4.5))
    bars, curves = canvas_figure.subplots(1, 2, gridspec_kw={"width_ratios": [max(2, len(metrics)), 3]})
    width = 0.8 / max(1, len(rows))
    colors = [f"C{index % 10}" for index in range(len(rows))]
    for index, (row, color) in enumerate(zip(rows, colors)):
        positions = [m + index * width for m in range(len(metrics))]
        bars.bar(positions, [row["metrics"].get(m, 0.0) for m in metrics], width, label=row["name"], color=color,
                 yerr=[row["std"].get(m, 0.0) for m in metrics], capsize=3)
        for record in row["per_seed"]:
            for log in find_logs([record["output_dir"]]) if record.get("output_dir") else []:
                steps, values = read_run(log, row["name"]).losses.get("loss", ([], []))
                curves.plot(steps, values, color=color, linewidth=0.8, alpha=0.8)
    bars.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    bars.set_ylabel("% (mean ± std over seeds)")
    bars.legend(fontsize="small")
    curves.set_xlabel("step")
    curves.set_ylabel("training loss (one line per seed)")
    canvas_figure.tight_layout()
    FigureCanvasAgg(canvas_figure).print_png(str(path))


def table_section(rows: List[dict], table: dict) -> str:
    """One table's rows and its paired differences, under its title."""
    parts = [f"### {table['title']}"] if table.get("title") else []
    parts += [part for part in (markdown_table(rows, table["metrics"]), paired_table(rows, table["metrics"])) if part]
    return "\n\n".join(parts)
