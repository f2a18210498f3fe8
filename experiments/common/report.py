"""Report helpers: Markdown tables, several seeds' means and spreads, weights-over-training
plots (PNG, matplotlib Agg)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display; set before pyplot is imported
import matplotlib.pyplot as plt

from experiments.common import logging_utils


class MeanStd(NamedTuple):
    """A value over several seeds: its mean, sample standard deviation and the seed count."""

    mean: float
    std: float
    count: int


def over_seeds(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed) of ``values``."""
    array = np.asarray(values, np.float64)
    if array.size == 0:
        raise ValueError("no values to average over seeds.")
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return MeanStd(float(array.mean()), std, int(array.size))


def rows_over_seeds(
    per_seed: Mapping[str, Sequence[Mapping[str, Any]]], columns: Sequence[str], key: str
) -> list[dict[str, Any]]:
    """One row per name of ``per_seed`` (``{name: [summary of each seed]}``): each column's
    value over the seeds (a :class:`MeanStd`; a plain float when there is one seed)."""
    rows = []
    for name, summaries in per_seed.items():
        row: dict[str, Any] = {key: name}
        for column in columns:
            values = [float(summary[column]) for summary in summaries]
            row[column] = values[0] if len(values) == 1 else over_seeds(values)
        rows.append(row)
    return rows


def win_rate_cell(rates: Sequence[float]) -> MeanStd | float | str:
    """A win rate over seeds; marked as within the seeds' spread when 0.5 (a tie) is
    within one standard deviation of the mean, so the difference is not established."""
    if len(rates) == 1:
        return float(rates[0])
    summary = over_seeds(rates)
    if abs(summary.mean - 0.5) <= summary.std:
        return f"{format_value(summary)} (within spread)"
    return summary


def _number(value: Any) -> float | None:
    if isinstance(value, MeanStd):
        return value.mean
    return value if isinstance(value, float) else None


def format_value(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, MeanStd):
        return f"{value.mean:.{digits}f} ± {value.std:.{digits}f}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    headers: Sequence[str] | None = None,
    digits: int = 4,
    bold_best: Mapping[str, str] | None = None,
) -> str:
    """A GitHub Markdown table of ``rows`` (dicts) over ``columns``.

    Args:
      rows: one mapping per table row; missing entries print as "–".
      columns: the keys to show, in order.
      headers: column titles (default: the keys).
      digits: decimals for floats.
      bold_best: ``{column: "min" | "max"}``; the best value of each such
        column is printed in bold (the best mean, for values over seeds).
    """
    headers = list(headers or columns)
    if len(headers) != len(columns):
        raise ValueError(f"{len(headers)} headers for {len(columns)} columns.")
    best: dict[str, float] = {}
    for column, direction in (bold_best or {}).items():
        if direction not in ("min", "max"):
            raise ValueError(f"bold_best[{column!r}] must be 'min' or 'max', got {direction!r}.")
        values = [v for row in rows if (v := _number(row.get(column))) is not None]
        if values:
            best[column] = min(values) if direction == "min" else max(values)
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = []
        for column in columns:
            text = format_value(row.get(column), digits)
            if column in best and _number(row.get(column)) == best[column]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def group_of(name: str) -> str:
    """The loss group: the first ``/`` component (``"ssim/left/s2"`` → ``"ssim"``)."""
    return name.split("/", 1)[0]


def scale_of(name: str) -> str:
    """The scale tag (``"s2"``) of a loss name, or ``"all"`` when it has none."""
    match = re.search(r"(?:^|/)(s\d+)(?:/|$)", name)
    return match.group(1) if match else "all"


def plot_weights(
    steps: Sequence[int],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str,
    group_by: Callable[[str], str] = group_of,
    summed: bool = True,
) -> Path:
    """Plot weights over training, one line per group (summed over its losses).

    ``summed=False`` draws every loss instead, coloured by group. Writes a PNG.
    """
    if not series:
        raise ValueError("No weights to plot.")
    groups: dict[str, list[str]] = {}
    for name in series:
        groups.setdefault(group_by(name), []).append(name)
    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (group, names) in enumerate(sorted(groups.items())):
        colour = colours[index % len(colours)]
        if summed:
            total = [sum(series[name][i] for name in names) for i in range(len(steps))]
            axis.plot(steps, total, label=f"{group} ({len(names)})", color=colour)
        else:
            for position, name in enumerate(names):
                axis.plot(
                    steps,
                    series[name],
                    color=colour,
                    alpha=0.7,
                    label=group if position == 0 else None,
                )
    axis.set_xlabel("training step")
    axis.set_ylabel("weight" + (" (sum over group)" if summed else ""))
    axis.set_title(title)
    axis.legend(fontsize="small", loc="best")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_run_weights(
    workdir: str | Path, out_dir: str | Path, title: str, prefix: str = ""
) -> list[Path]:
    """Weight plots of one run from its log, per loss group and, when the losses have
    scales (``"ssim/left/s2"``), per scale.

    Writes ``<out_dir>/<prefix>weights_by_group.png`` and ``..._by_scale.png``
    (none when the log has no weights yet).
    """
    steps, series = logging_utils.weight_series(logging_utils.read_metrics(workdir))
    if not steps:
        return []
    out_dir = Path(out_dir)
    paths = [
        plot_weights(
            steps,
            series,
            out_dir / f"{prefix}weights_by_group.png",
            title=f"{title}: weights per loss group",
        )
    ]
    if any(scale_of(name) != "all" for name in series):
        paths.append(
            plot_weights(
                steps,
                series,
                out_dir / f"{prefix}weights_by_scale.png",
                title=f"{title}: weights per scale",
                group_by=scale_of,
            )
        )
    return paths
