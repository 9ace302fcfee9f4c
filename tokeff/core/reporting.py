"""Report plots: line charts written as PNG files, the one place tokeff and its benchmarks draw with matplotlib.

A chart is a list of `Line`s plus its labels; `line_plot` draws it with the headless backend and
writes the file atomically (a temporary file renamed into place), so no half-written PNG is left
at the path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STYLES = ("-", "--", ":", "-.")  # one per group of lines (a scheme, a model), cycled


@dataclass
class Line:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: str = "-"
    marker: str | None = "o"


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
    """Draw `lines` on one axis and write a PNG; `guides` are dotted horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=size)
    try:
        for line in lines:
            axes.plot(line.x, line.y, marker=line.marker, linestyle=line.style, label=line.label)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.set_xscale(xscale)
        if ylim is not None:
            axes.set_ylim(*ylim)
        for value in guides:
            axes.axhline(value, color="grey", linewidth=0.8, linestyle=":")
        axes.grid(alpha=0.3)
        if lines:
            axes.legend(fontsize=8)
        figure.tight_layout()
        path = Path(path)
        handle, temporary = tempfile.mkstemp(suffix=".png", dir=path.parent)
        os.close(handle)
        try:
            figure.savefig(temporary, dpi=dpi)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    finally:
        plt.close(figure)
    return path
