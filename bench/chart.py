"""The benchmark's results as a chart: req/s and p99 of every endpoint beside the ceiling."""

import math
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

# (result key, panel title): log scales, since logins run at a few per second and reads
# at thousands.
PANELS = (("requests_per_second", "req/s (log scale)"), ("p99_ms", "p99 ms (log scale)"))
CEILING_STYLES = ("--", ":", "-.")  # one per series (worker count)
BAR_INCHES = 0.16


def _workers(series: dict[str, Any]) -> str:
    count = series["workers"]
    return f"{count} worker" if count == 1 else f"{count} workers"


def _bars(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, endpoints) for each database of each series: one bar per endpoint each."""
    return [
        (f"{database}, {_workers(series)}", result["endpoints"])
        for series in results["series"]
        for database, result in series["databases"].items()
    ]


def _log_axis(axis: Axes, values: list[float]) -> None:
    """A log scale starting at the power of ten below the smallest value, so every bar
    starts there and their lengths compare; ticks as plain numbers."""
    smallest = min((value for value in values if value > 0), default=1.0)
    axis.set_xscale("log")
    axis.set_xlim(left=10 ** math.floor(math.log10(smallest)))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.grid(axis="x", which="both", alpha=0.3)


def write_chart(results: dict[str, Any], path: Path) -> None:
    """One figure, a panel per measure: a bar per endpoint, database and worker count,
    and the ceiling (bare FastAPI, GET /users/me) as a line for each worker count."""
    bars = _bars(results)
    names = list(bars[0][1])  # the endpoints, in the order they were measured
    width = 0.8 / len(bars)
    height = 2.5 + BAR_INCHES * len(names) * len(bars)
    figure = Figure(figsize=(13, height), layout="constrained")
    FigureCanvasAgg(figure)  # Agg: a file, no display
    axes = figure.subplots(1, len(PANELS), sharey=True)
    for axis, (key, title) in zip(axes, PANELS, strict=True):
        drawn: list[float] = []
        for index, (label, endpoints) in enumerate(bars):
            offset = (index - (len(bars) - 1) / 2) * width
            values = [endpoints[name][key] for name in names]
            axis.barh([row + offset for row in range(len(names))], values, width, label=label)
            drawn += values
        for series, style in zip(results["series"], CEILING_STYLES, strict=False):
            ceiling = series["ceiling"][key]
            axis.axvline(
                ceiling, color="black", linestyle=style, label=f"ceiling, {_workers(series)}"
            )
            drawn.append(ceiling)
        _log_axis(axis, drawn)
        axis.set_title(title)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].set_ylim(len(names) - 0.5, -0.5)  # first measured on top, no margin
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=3)
    figure.suptitle(f"userapi benchmark, {results['started']}: medians of the rounds")
    figure.savefig(path, dpi=100)
