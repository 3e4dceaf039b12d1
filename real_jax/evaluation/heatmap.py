"""Saliency figure: where the model looked for one answer, beside ref / main / residual.

Four square panels side by side under a text band with the (optional) title, the question and
the answer: the reference image, the main image, the residual ``main - ref`` (diverging colormap
centred at 0 as in :mod:`real_jax.evaluation.figures`: blue where the main image is darker, red
where it is brighter) and the main image in gray with the saliency heatmap blended over it
(``inferno``, alpha proportional to saliency, so low saliency leaves the X-ray visible).

The layout is in whole pixels (:func:`panel_boxes`, :func:`heatmap_figure_size`) and the PNG is
exactly that size, so tests and callers can crop the panels back out. Rendering uses matplotlib's
Agg canvas directly (no pyplot, no display), like ``figures.py``.
"""

from __future__ import annotations

import os
import textwrap
from typing import TYPE_CHECKING

import numpy as np

from real_jax.evaluation.figures import residual as _residual

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BAND_PX = 96  # text band (title, question, answer) above the panels
TITLE_PX = 24  # row of panel titles
MARGIN_PX = 8  # gap between panels and around them
MIN_PANEL_PX = 256  # default panel size floor, so small model crops stay readable
HEAT_CMAP = "inferno"
HEAT_ALPHA = 0.75  # alpha of the heatmap where the normalised saliency is 1
PANEL_TITLES = ("reference", "main", "main - reference", "where the answer looked")


def normalize_saliency(saliency: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Scales a non-negative saliency map to [0, 1].

    Args:
      saliency: float[H, W] >= 0, any scale.
      percentile: values are divided by this percentile of the map (or by its maximum when the
        percentile is 0, e.g. for very sparse maps) and clipped to 1, so a few hot pixels do not
        wash out the rest.

    Returns:
      float32[H, W] in [0, 1]; all zeros for an all-zero map.

    Raises:
      ValueError: if the map is not 2-D, has NaN/inf or negative values, or the percentile is
        outside (0, 100].
    """
    s = np.asarray(saliency, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"saliency must be 2-D [H, W], got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("saliency contains non-finite values (NaN or inf)")
    if np.any(s < 0):
        raise ValueError(f"saliency must be non-negative, min is {float(s.min())}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    scale = float(np.percentile(s, percentile))
    if scale <= 0:
        scale = float(s.max())
    if scale <= 0:
        return np.zeros_like(s)
    return np.clip(s / scale, 0.0, 1.0).astype(np.float32)


def _panel_size(image_size: int, panel_px: int | None) -> int:
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    p = max(image_size, MIN_PANEL_PX) if panel_px is None else panel_px
    if p < 1:
        raise ValueError(f"panel_px must be positive, got {p}")
    return p


def heatmap_figure_size(image_size: int, panel_px: int | None = None) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for square inputs of ``image_size`` px.

    ``panel_px`` (side of each square panel) defaults to ``max(image_size, 256)``.
    """
    p = _panel_size(image_size, panel_px)
    return 4 * p + 5 * MARGIN_PX, BAND_PX + TITLE_PX + p + MARGIN_PX


def panel_boxes(image_size: int, panel_px: int | None = None) -> list[tuple[int, int, int, int]]:
    """The four panels' (left, top, right, bottom) pixel boxes, origin top-left (as in Pillow).

    Order: reference, main, residual, saliency overlay; ``right``/``bottom`` are exclusive.
    """
    p = _panel_size(image_size, panel_px)
    top = BAND_PX + TITLE_PX
    return [
        (MARGIN_PX + i * (p + MARGIN_PX), top, MARGIN_PX + i * (p + MARGIN_PX) + p, top + p)
        for i in range(4)
    ]


def _check_square(name: str, a: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square 2-D image [S, S], got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} shape {a.shape} does not match main shape {shape}")


def save_heatmap_figure(
    path: str | os.PathLike[str],
    ref: np.ndarray,
    main: np.ndarray,
    saliency: np.ndarray,
    question: str,
    answer: str,
    *,
    residual: np.ndarray | None = None,
    registered: bool = False,
    title: str = "",
    panel_px: int | None = None,
    dpi: int = 100,
) -> tuple[int, int]:
    """Writes a PNG: text band above ref | main | residual | saliency over main.

    Args:
      path: output file (parent folders are created).
      ref: reference image, uint8[S, S] or float32[S, S] on the 0..255 scale (e.g. registered).
      main: main image, same shape and scale as ``ref``.
      saliency: float32[S, S] >= 0, any scale (normalised with :func:`normalize_saliency`).
      question: the question text.
      answer: the answer being explained (typically the model's prediction).
      residual: optional float32[S, S] in [-1, 1]; default ``(main - ref) / 255``.
      registered: title the residual "main - registered reference".
      title: optional first line of the text band (e.g. the file names).
      panel_px: side of each panel in pixels; default ``max(S, 256)``.
      dpi: matplotlib resolution; fonts are sized in pixels so the layout does not depend on it.

    Returns:
      The (width, height) in pixels of the written PNG, equal to ``heatmap_figure_size(S, ...)``.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    main = np.asarray(main)
    ref = np.asarray(ref)
    _check_square("main", main)
    _check_square("ref", ref, main.shape)
    _check_square("saliency", np.asarray(saliency), main.shape)
    res = _residual(ref, main) if residual is None else np.asarray(residual, np.float32)
    _check_square("residual", res, main.shape)
    heat = normalize_saliency(saliency)

    size = main.shape[0]
    width, height = heatmap_figure_size(size, panel_px)
    # A hair over the exact size: Agg truncates the size in pixels to int and 2.28 * 100 is
    # 227.999...; matplotlib < 3.10 or so has no tolerance for that and would lose a pixel.
    fig = Figure(figsize=((width + 1e-3) / dpi, (height + 1e-3) / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    pt = 72.0 / dpi  # points per pixel

    # Overlay blended here rather than as a second alpha image, so saliency 0 gives exactly the
    # gray main panel's pixels.
    gray = colormaps["gray"](np.clip(main.astype(np.float32), 0, 255) / 255.0)[..., :3]
    alpha = (HEAT_ALPHA * heat)[..., None]
    overlay = (1 - alpha) * gray + alpha * colormaps[HEAT_CMAP](heat)[..., :3]
    limit = max(float(np.abs(res).max()), 1e-6)
    gray_kw = {"cmap": "gray", "vmin": 0, "vmax": 255}
    panels = [
        (ref, gray_kw),
        (main, gray_kw),
        (res, {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}),
        (overlay, {}),
    ]
    names = list(PANEL_TITLES)
    if registered:
        names[2] = "main - registered reference"
    for (left, top, right, bottom), name, (image, kw) in zip(
        panel_boxes(size, panel_px), names, panels, strict=True
    ):
        rect = (left / width, 1 - bottom / height, (right - left) / width, (bottom - top) / height)
        ax = fig.add_axes(rect)
        ax.set_axis_off()
        ax.imshow(image, interpolation="nearest", aspect="auto", **kw)
        fig.text(
            (left + right) / 2 / width,
            1 - (top - TITLE_PX / 2) / height,
            name,
            ha="center",
            va="center",
            fontsize=13 * pt,
        )
    _draw_band(fig, width, height, pt, title, question, answer)

    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    return width, height


def _draw_band(
    fig: Figure, width: int, height: int, pt: float, title: str, question: str, answer: str
) -> None:
    """Title, question and answer in the top ``BAND_PX`` pixels, wrapped to the figure width."""
    line_px = 18.0
    chars = max(20, int((width - 2 * MARGIN_PX) / (0.5 * 0.8 * line_px)))
    lines = [(title, "bold")] if title else []
    for label, text in (("Q", question), ("A", answer)):
        for i, line in enumerate(textwrap.wrap(text, chars) or [""]):
            lines.append(((f"{label}: " if i == 0 else "     ") + line, "normal"))
    # Shrink line height and font together when a long answer would overflow the band.
    line_px = min(line_px, (BAND_PX - MARGIN_PX) / len(lines))
    y = MARGIN_PX / 2
    for text, weight in lines:
        fig.text(
            MARGIN_PX / width,
            1 - y / height,
            text,
            ha="left",
            va="top",
            fontsize=0.8 * line_px * pt,
            fontweight=weight,
        )
        y += line_px
