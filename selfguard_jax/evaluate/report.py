"""Reports: a recipes x datasets table of Cells (or bare Estimates) as Markdown and CSV, and PNG plots (Agg canvas,
no pyplot state): an entropy trace, a histogram of trigger steps, safety versus utility."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from selfguard_jax.evaluate.metrics import Estimate
from selfguard_jax.safe_write import atomic_path, write_text


@dataclass(frozen=True)
class Cell:
    """One number of a paper-style table: the estimate, the metric and the judge that produced it, and how
    many of the pair's rows were unfinished (thinking never closed: no verdict, shown beside the number)."""

    estimate: Estimate | None  # None: no row got a verdict (all unfinished)
    metric: str | None
    judge: str | None
    unfinished: int
    rows: int

    @property
    def label(self) -> str:
        return f"{self.metric} [{self.judge}]" if self.judge else str(self.metric)


Table = Mapping[str, Mapping[str, "Estimate | Cell"]]  # recipe -> dataset -> cell


def format_estimate(e: Estimate | None, digits: int = 1) -> str:
    """`90.0 [84.0, 95.0]`; an empty string for a missing cell."""
    if e is None:
        return ""
    return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _columns(table: Table) -> list[str]:
    return list(dict.fromkeys(d for row in table.values() for d in row))


def _column_labels(table: Table) -> dict[str, str | None]:
    """Per column, the metric-and-judge label all its cells share (None: they differ, so each cell says)."""
    out = {}
    for c in _columns(table):
        labels = {cell.label for row in table.values()
                  if isinstance(cell := row.get(c), Cell) and cell.estimate is not None}
        out[c] = labels.pop() if len(labels) == 1 else None
    return out


def _cell_text(cell: Estimate | Cell | None, digits: int, shared: str | None) -> str:
    if not isinstance(cell, Cell):
        return format_estimate(cell, digits)
    if cell.estimate is None:
        return f"no verdict ({cell.unfinished}/{cell.rows} unfinished)"
    prefix = "" if shared is not None else f"{cell.label}: "
    return f"{prefix}{format_estimate(cell.estimate, digits)} ({cell.unfinished}/{cell.rows} unfinished)"


def _header(table: Table) -> list[str]:
    labels = _column_labels(table)
    return ["recipe"] + [f"{c}: {labels[c]}" if labels[c] else c for c in _columns(table)]


def _rows(table: Table, digits: int) -> list[list[str]]:
    labels = _column_labels(table)
    return [[recipe] + [_cell_text(cells.get(c), digits, labels[c]) for c in labels] for recipe, cells in table.items()]


def table_markdown(table: Table, digits: int = 1) -> str:
    """A Markdown table: one row per recipe, one column per dataset; each column (or cell) names its metric
    and judge, and each cell its unfinished rows."""
    header = _header(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(table, digits)]
    return "\n".join(lines) + "\n"


def write_markdown(table: Table, path: str | Path, digits: int = 1) -> Path:
    """Write `table_markdown` to a file, atomically."""
    write_text(path, table_markdown(table, digits))
    return Path(path)


def write_csv(table: Table, path: str | Path, digits: int = 1) -> Path:
    """Write the table as CSV with the same cell text as the Markdown, atomically."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(_header(table))
    writer.writerows(_rows(table, digits))
    write_text(path, buf.getvalue())
    return Path(path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def plot_entropy_trace(entropy: Sequence[float], path: str | Path, *, forced: Sequence[bool] | None = None,
                       reminder_steps: Sequence[int] = (), threshold: float | None = None,
                       title: str = "") -> Path:
    """Per-step entropy of one generation: forced (spliced) tokens shaded, reminder steps as
    vertical lines, the trigger threshold as a horizontal line."""
    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot()
    ax.plot(np.arange(len(entropy)), entropy, lw=0.8, color="tab:blue", label="entropy (nats)")
    mask = np.asarray(forced if forced is not None else [], dtype=bool)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    for k, (start, stop) in enumerate(zip(edges[::2], edges[1::2])):
        ax.axvspan(start - 0.5, stop - 0.5, color="tab:orange", alpha=0.25, lw=0,
                   label="forced tokens" if k == 0 else None)
    for k, step in enumerate(reminder_steps):
        ax.axvline(step, color="tab:red", ls="--", lw=1, label="reminder" if k == 0 else None)
    if threshold is not None:
        ax.axhline(threshold, color="gray", ls=":", lw=1, label=f"threshold {threshold:g}")
    ax.set(xlabel="generation step", ylabel="entropy (nats)", title=title)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_trigger_histogram(trigger_steps: Sequence[int], path: str | Path, *, bins: int = 30,
                           title: str = "") -> Path:
    """Histogram of the steps at which reminders were triggered, over many generations."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.hist(np.asarray(trigger_steps, dtype=float), bins=bins, color="tab:red", alpha=0.8)
    ax.set(xlabel="trigger step", ylabel="count", title=title)
    return _save(fig, path)


def plot_safety_utility(points: Mapping[str, tuple[Estimate, Estimate]], path: str | Path, *,
                        safety_label: str = "percent safe", utility_label: str = "accuracy (%)",
                        title: str = "") -> Path:
    """One point per recipe at (utility, safety) with both bootstrap intervals as error bars."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for recipe, (safety, utility) in points.items():
        ax.errorbar(utility.value, safety.value, fmt="o", capsize=3, label=recipe,
                    xerr=[[utility.value - utility.low], [utility.high - utility.value]],
                    yerr=[[safety.value - safety.low], [safety.high - safety.value]])
    ax.set(xlabel=utility_label, ylabel=safety_label, title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)
