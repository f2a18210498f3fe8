"""Report helpers: Markdown tables and weights-over-training plots (PNG, matplotlib Agg)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display; set before pyplot is imported
import matplotlib.pyplot as plt

from experiments.common import logging_utils


def format_value(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
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
        column is printed in bold.
    """
    headers = list(headers or columns)
    if len(headers) != len(columns):
        raise ValueError(f"{len(headers)} headers for {len(columns)} columns.")
    best: dict[str, float] = {}
    for column, direction in (bold_best or {}).items():
        if direction not in ("min", "max"):
            raise ValueError(f"bold_best[{column!r}] must be 'min' or 'max', got {direction!r}.")
        values = [row[column] for row in rows if isinstance(row.get(column), float)]
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
            if column in best and row.get(column) == best[column]:
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
    """Weight plots of one run from its log, per loss group and per scale.

    Writes ``<out_dir>/<prefix>weights_by_group.png`` and ``..._by_scale.png``.
    """
    steps, series = logging_utils.weight_series(logging_utils.read_metrics(workdir))
    out_dir = Path(out_dir)
    return [
        plot_weights(
            steps,
            series,
            out_dir / f"{prefix}weights_by_group.png",
            title=f"{title}: weights per loss group",
        ),
        plot_weights(
            steps,
            series,
            out_dir / f"{prefix}weights_by_scale.png",
            title=f"{title}: weights per scale",
            group_by=scale_of,
        ),
    ]
