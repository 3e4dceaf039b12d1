"""Tests for the saliency figure (ref | main | residual | heatmap over main)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from real_jax.evaluation.heatmap import (
    heatmap_figure_size,
    normalize_saliency,
    panel_boxes,
    save_heatmap_figure,
)

QUESTION = "what has changed compared to the reference image?"
ANSWER = "the main image has an additional finding of pneumothorax than the reference image. "


def _images(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.integers(30, 220, (size, size), dtype=np.uint8)
    main = ref.copy()
    main[size // 4 : size // 2, size // 4 : size // 2] += 30
    return ref, main


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize(("size", "panel_px"), [(64, None), (300, None), (64, 100), (29, 29)])
def test_png_has_exactly_the_announced_size(tmp_path, size, panel_px):
    ref, main = _images(size)
    path = tmp_path / "nested" / "dir" / "heat.png"
    written = save_heatmap_figure(
        path,
        ref,
        main,
        np.ones((size, size)),
        QUESTION,
        ANSWER,
        title="a.dcm vs b.dcm",
        panel_px=panel_px,
    )
    expected = heatmap_figure_size(size, panel_px)
    assert written == expected
    assert Image.open(path).size == expected


def test_default_panel_is_at_least_256_px_and_boxes_fit_the_figure():
    assert panel_boxes(64)[0][2] - panel_boxes(64)[0][0] == 256
    assert panel_boxes(300)[0][2] - panel_boxes(300)[0][0] == 300
    width, height = heatmap_figure_size(64, 100)
    boxes = panel_boxes(64, 100)
    assert all(r - left == 100 and b - t == 100 for left, t, r, b in boxes)
    assert all(boxes[i][2] <= boxes[i + 1][0] for i in range(3))  # side by side, no overlap
    assert boxes[-1][2] < width and boxes[0][3] < height and boxes[0][1] > 0  # band above


def test_panels_sit_where_panel_boxes_says(tmp_path):
    # The main panel, cropped with panel_boxes and sampled at block centres, is the main image.
    size = 64
    ref, main = _images(size)
    path = tmp_path / "heat.png"
    save_heatmap_figure(path, ref, main, np.zeros((size, size)), QUESTION, ANSWER)
    left, top, right, bottom = panel_boxes(size)[1]
    scale = (right - left) // size
    crop = _png(path)[top:bottom, left:right, 0]
    centres = crop[scale // 2 :: scale, scale // 2 :: scale]
    assert centres.shape == main.shape
    assert np.abs(centres - main).mean() < 1.0


def test_overlay_differs_from_main_only_where_saliency_is_high(tmp_path):
    size = 64
    ref, main = _images(size)
    saliency = np.zeros((size, size), np.float32)
    saliency[:, : size // 2] = 5.0  # hot left half, cold right half
    path = tmp_path / "heat.png"
    save_heatmap_figure(path, ref, main, saliency, QUESTION, ANSWER)
    png = _png(path)
    (ml, mt, mr, mb), (ol, ot, orr, ob) = panel_boxes(size)[1], panel_boxes(size)[3]
    plain, overlay = png[mt:mb, ml:mr], png[ot:ob, ol:orr]
    quarter = (mr - ml) // 4
    hot = np.abs(overlay[:, 2:quarter] - plain[:, 2:quarter]).mean()
    cold = np.abs(overlay[:, -quarter:-2] - plain[:, -quarter:-2]).max()
    assert hot > 30
    assert cold <= 2


def test_registered_flag_and_explicit_residual_are_accepted(tmp_path):
    size = 32
    ref, main = _images(size)
    res = np.linspace(-1, 1, size * size, dtype=np.float32).reshape(size, size)
    written = save_heatmap_figure(
        tmp_path / "r.png",
        ref.astype(np.float32),
        main,
        np.ones((size, size)),
        QUESTION,
        "",
        residual=res,
        registered=True,
    )
    assert written == heatmap_figure_size(size)


def test_normalize_saliency_scales_to_unit_range():
    s = np.arange(100, dtype=np.float32).reshape(10, 10) * 7.0
    out = normalize_saliency(s, percentile=100.0)
    assert out.dtype == np.float32 and out.shape == (10, 10)
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out, s / s.max(), rtol=1e-6)


def test_normalize_saliency_clips_above_the_percentile():
    s = np.arange(100, dtype=np.float32).reshape(10, 10)
    s[0, 0] = 1e6  # one hot outlier must not wash out the rest
    out = normalize_saliency(s, percentile=50.0)
    median = np.percentile(s, 50.0)
    assert np.all(out[s >= median] == 1.0)
    np.testing.assert_allclose(out[s < median], s[s < median] / median, rtol=1e-6)
    big = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    big[0, 0] = 1e6  # 1 pixel in 10,000: above the default 99th percentile, so clipped away
    assert big[50, 50] / big.max() < 0.01
    assert normalize_saliency(big)[50, 50] > 0.5


def test_normalize_saliency_of_all_zero_is_zero():
    out = normalize_saliency(np.zeros((8, 8), np.float32))
    assert out.dtype == np.float32 and not out.any()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_normalize_saliency_rejects_non_finite(bad):
    s = np.ones((8, 8), np.float32)
    s[3, 3] = bad
    with pytest.raises(ValueError, match="non-finite"):
        normalize_saliency(s)


@pytest.mark.parametrize(
    ("ref_shape", "sal_shape"), [((32, 32), (16, 16)), ((32, 16), (32, 32)), ((16, 16), (32, 32))]
)
def test_shape_mismatch_raises_naming_the_shapes(tmp_path, ref_shape, sal_shape):
    _, main = _images(32)
    ref = np.zeros(ref_shape, np.uint8)
    path = tmp_path / "x.png"
    with pytest.raises(ValueError, match=r"\(\d+, \d+\)"):
        save_heatmap_figure(path, ref, main, np.ones(sal_shape), QUESTION, ANSWER)
    assert not path.exists()


def test_residual_shape_mismatch_raises(tmp_path):
    ref, main = _images(32)
    with pytest.raises(ValueError, match=r"residual shape \(16, 16\)"):
        save_heatmap_figure(
            tmp_path / "x.png",
            ref,
            main,
            np.ones((32, 32)),
            QUESTION,
            ANSWER,
            residual=np.zeros((16, 16), np.float32),
        )


def test_normalize_saliency_rejects_negative_values():
    s = np.ones((8, 8), np.float32)
    s[0, 0] = -0.5
    with pytest.raises(ValueError, match="non-negative"):
        normalize_saliency(s)
