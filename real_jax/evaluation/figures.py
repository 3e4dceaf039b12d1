"""Qualitative figure of Difference-VQA examples, in the spirit of the ReAl paper's Fig. 3.

One row per example: the reference image, the main image, the residual ``main - ref`` (diverging
colormap centred at 0: blue where the main image is darker, red where it is brighter), and a
text panel with the question, the reference answer and the prediction. Prediction words that
occur in the reference answer are drawn in green, the others in red, so wrong findings stand
out; the row's title is prefixed with a check or cross for exact match. Rendering uses
matplotlib's Agg canvas directly (no pyplot, no display) and is safe to call from a training loop.
"""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from real_jax.evaluation.metrics import exact_match

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MATCH_COLOR = "#1a7f37"
MISMATCH_COLOR = "#d1242f"
TEXT_WRAP = 60  # characters per line in the text panel
_WORD = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True)
class FigureExample:
    """One row of the figure.

    Attributes:
      ref: the reference image, uint8[H, W] grayscale (or float32 on the 0..255 scale, e.g.
        the reference registered to the main image).
      main: the main (follow-up) image, uint8[H, W], same shape as ``ref``.
      question: the question text.
      reference: the ground-truth answer.
      prediction: the generated answer.
      title: optional row title (e.g. the study ids).
      registered: whether ``ref`` was registered to ``main`` (names the residual panel).
    """

    ref: np.ndarray
    main: np.ndarray
    question: str
    reference: str
    prediction: str
    title: str = ""
    registered: bool = False


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, TEXT_WRAP) or [""]


def residual(ref: np.ndarray, main: np.ndarray) -> np.ndarray:
    """``main - ref`` as float32[H, W] in [-1, 1] for uint8[H, W] inputs."""
    if ref.shape != main.shape or ref.ndim != 2:
        raise ValueError(f"ref {ref.shape} and main {main.shape} must be equal 2-D shapes")
    return (main.astype(np.float32) - ref.astype(np.float32)) / 255.0


def save_examples_figure(
    path: str | os.PathLike[str], examples: Sequence[FigureExample], dpi: int = 100
) -> None:
    """Writes a PNG with one row per example: ref | main | residual | text.

    Args:
      path: output file (parent folders are created).
      examples: the rows; each ``ref``/``main`` is uint8[H, W] (sizes may differ across rows).
      dpi: resolution; each row is 3 inches tall, the figure 16 inches wide.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not examples:
        raise ValueError("save_examples_figure needs at least one example")
    n = len(examples)
    # No pyplot: no global figure registry to leak, no GUI backend; an explicit Agg canvas.
    fig = Figure(figsize=(16, 3 * n), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n, 4, width_ratios=[1, 1, 1, 2.2], wspace=0.05, hspace=0.25)
    for row, ex in enumerate(examples):
        res = residual(ex.ref, ex.main)
        limit = max(float(np.abs(res).max()), 1e-6)
        panels = [
            ("reference", ex.ref, {"cmap": "gray", "vmin": 0, "vmax": 255}),
            ("main", ex.main, {"cmap": "gray", "vmin": 0, "vmax": 255}),
            ("residual (main - registered ref)" if ex.registered else "residual (main - ref)",
             res, {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}),
        ]
        for col, (name, image, kwargs) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(image, interpolation="nearest", **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=9)
        ax = fig.add_subplot(grid[row, 3])
        ax.axis("off")
        _draw_text(fig, ax, ex)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    tmp = f"{os.fspath(path)}.tmp"  # a kill mid-write leaves no truncated figure
    fig.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, path)


def _draw_text(fig: Figure, ax: Axes, ex: FigureExample) -> None:
    """Question, reference and word-coloured prediction in the text panel ``ax``."""
    ok = exact_match(ex.reference, ex.prediction)
    mark = "\u2713 exact match" if ok else "\u2717 not exact"
    title = f"{ex.title}  [{mark}]" if ex.title else f"[{mark}]"
    ax.set_title(title, fontsize=9, loc="left", color=MATCH_COLOR if ok else MISMATCH_COLOR)

    # Shrink line height and font together when long answers would overflow the panel.
    n_lines = sum(len(_wrap(t)) for t in (ex.question, ex.reference, ex.prediction))
    line_h = min(0.075, 0.95 / n_lines)
    fontsize = 8.5 * line_h / 0.075
    y = 0.97
    kw = {"transform": ax.transAxes, "fontsize": fontsize, "va": "top"}
    for label, text in (("Q", ex.question), ("GT", ex.reference)):
        for i, line in enumerate(_wrap(text)):
            prefix = f"{label}: " if i == 0 else "      "
            ax.text(0.0, y, prefix + line, **kw)
            y -= line_h
    # Prediction: draw word by word so each word gets its colour; advance x by the rendered
    # width of each word (needs a renderer, which the Agg canvas provides).
    renderer = fig.canvas.get_renderer()
    ref_words = _words(ex.reference)
    ax_width = ax.get_window_extent(renderer).width
    if not ex.prediction.strip():
        ax.text(0.0, y, "Pred: (empty)", color=MISMATCH_COLOR, **kw)
        return
    for i, line in enumerate(_wrap(ex.prediction)):
        x = 0.0
        prefix = ax.text(x, y, "Pred: " if i == 0 else "      ", **kw)
        x += prefix.get_window_extent(renderer).width / ax_width
        for word in line.split(" "):
            inside = _words(word) <= ref_words
            t = ax.text(x, y, word + " ", color=MATCH_COLOR if inside else MISMATCH_COLOR, **kw)
            x += t.get_window_extent(renderer).width / ax_width
        y -= line_h
