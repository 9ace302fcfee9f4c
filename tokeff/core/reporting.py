"""Report plots written as PNG files: the one place tokeff and its benchmarks draw with matplotlib.

A figure is one or more `Panel`s side by side; a panel holds `Line`s (curves, or points when the
style is empty) and optionally `Bars`. `plot_panels` draws them with the headless backend and
writes the file atomically (a temporary file renamed into place), so no half-written PNG is left
at the path; `line_plot` is the one-panel case.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

STYLES = ("-", "--", ":", "-.")  # one per group of lines (a scheme, a model), cycled


@dataclass
class Line:
    label: str | None
    x: Sequence[float]
    y: Sequence[float]
    style: str = "-"  # "" draws the points alone
    marker: str | None = "o"
    color: str | None = None
    notes: Sequence[str] = ()  # a text beside each point (a tokenizer's name, a merge count)


@dataclass
class Bars:
    labels: Sequence[str]
    heights: Sequence[float]
    colors: Sequence[str] | None = None


@dataclass
class Panel:
    xlabel: str
    ylabel: str
    title: str = ""
    lines: Sequence[Line] = ()
    bars: Bars | None = None
    xscale: str = "linear"
    xbase: float = 10  # the log base when xscale is "log"
    ylim: tuple[float, float] | None = None
    yscale: str = "linear"
    ylinthresh: float = 0.1  # the linear range around 0 when yscale is "symlog"
    guides: Sequence[float] = ()  # dotted horizontal reference lines
    vguides: Sequence[tuple[float, str]] = field(default_factory=tuple)  # dotted vertical lines, labelled


def plot_panels(
    path: Path, panels: Sequence[Panel], title: str | None = None,
    size: tuple[float, float] | None = None, dpi: int = 110,
) -> Path:
    """Draw `panels` in one row and write a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=size or (7 if len(panels) == 1 else 5.5 * len(panels), 4.5),
                                squeeze=False)
    try:
        for axis, panel in zip(axes[0], panels):
            _draw(axis, panel)
        if title:
            figure.suptitle(title)
        figure.tight_layout()
        path = Path(path)
        handle, temporary = tempfile.mkstemp(suffix=".png", dir=path.parent)
        os.close(handle)
        try:
            figure.savefig(temporary, dpi=dpi)
            os.chmod(temporary, 0o644)  # mkstemp makes it private; a plot is for everyone to read
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    finally:
        plt.close(figure)
    return path


def _draw(axis, panel: Panel) -> None:
    for line in panel.lines:
        axis.plot(line.x, line.y, marker=line.marker, linestyle=line.style, label=line.label, color=line.color)
        for x, y, note in zip(line.x, line.y, line.notes):
            axis.annotate(note, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if panel.xscale == "log":
        axis.set_xscale("log", base=panel.xbase)
    else:
        axis.set_xscale(panel.xscale)
    if panel.bars is not None:  # after the scale, which would reset the bars' tick labels
        positions = range(len(panel.bars.labels))
        axis.bar(positions, panel.bars.heights, color=panel.bars.colors)
        axis.set_xticks(positions, panel.bars.labels, rotation=30, ha="right", fontsize=8)
    axis.set_xlabel(panel.xlabel)
    axis.set_ylabel(panel.ylabel)
    axis.set_title(panel.title, fontsize=10)
    if panel.yscale == "symlog":
        axis.set_yscale("symlog", linthresh=panel.ylinthresh)
    else:
        axis.set_yscale(panel.yscale)
    if panel.ylim is not None:
        axis.set_ylim(*panel.ylim)
    for value in panel.guides:
        axis.axhline(value, color="grey", linewidth=0.8, linestyle=":")
    for value, label in panel.vguides:
        axis.axvline(value, color="grey", linewidth=0.8, linestyle=":", label=label)
    axis.grid(alpha=0.3)
    if any(line.label for line in panel.lines) or panel.vguides:
        axis.legend(fontsize=8)


def line_plot(
    path: Path,
    lines: Sequence[Line],
    xlabel: str,
    ylabel: str,
    title: str,
    xscale: str = "linear",
    ylim: tuple[float, float] | None = None,
    guides: Sequence[float] = (),
    size: tuple[float, float] = (7, 4.5),
    dpi: int = 110,
) -> Path:
    """One panel of `lines`; `guides` are dotted horizontal reference lines."""
    panel = Panel(xlabel, ylabel, title, lines=lines, xscale=xscale, ylim=ylim, guides=guides)
    return plot_panels(path, [panel], size=size, dpi=dpi)
