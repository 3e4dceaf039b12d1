"""Tests for the prediction/metrics files and the qualitative examples figure."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from real_jax.evaluation.figures import FigureExample, residual, save_examples_figure
from real_jax.evaluation.metrics import (
    Prediction,
    read_predictions_jsonl,
    write_metrics_json,
    write_predictions_jsonl,
)


def test_predictions_jsonl_round_trip(examples, tmp_path):
    odd = Prediction(99, "5", "6", "7", "view", "quelle vue ? \u00e9", 'he said "x"\nok', "")
    rows = [*examples, odd]
    path = tmp_path / "out" / "predictions.jsonl"
    write_predictions_jsonl(path, rows)
    assert len(path.read_text(encoding="utf-8").splitlines()) == len(rows)
    assert read_predictions_jsonl(path) == rows


def test_metrics_json_round_trip(tmp_path):
    metrics = {
        "difference": {"BLEU-1": 0.5, "CIDEr": 1.25, "exact_match": 0.125, "count": 8},
        "by_type": {},
        "exact_match": {"all": 0.25, "count": {"all": 4, "open": 4, "closed": 0}},
    }
    path = tmp_path / "metrics.json"
    write_metrics_json(path, metrics)
    assert json.loads(path.read_text()) == metrics


def _pair(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 200, (size, size), dtype=np.uint8)
    main = ref.copy()
    main[size // 4 : size // 2, size // 4 : size // 2] = 255  # a new opacity
    return ref, main


def test_residual_is_main_minus_ref_scaled():
    ref, main = _pair(0, 16)
    res = residual(ref, main)
    assert res.shape == (16, 16) and res.dtype == np.float32
    np.testing.assert_allclose(res, (main.astype(np.float32) - ref) / 255.0)
    assert res.min() >= -1.0 and res.max() <= 1.0


def test_examples_figure_is_a_png_with_one_row_per_example(examples, tmp_path):
    figs = []
    for i, e in enumerate(examples[:3]):
        ref, main = _pair(i, 48 + 16 * i)  # row sizes may differ
        figs.append(FigureExample(ref, main, e.question, e.reference, e.prediction, e.study_id))
    long = "the main image has an additional finding of edema than the reference image. " * 8
    figs.append(FigureExample(*_pair(9, 32), "what has changed?", long, long[:-80]))

    one, four = tmp_path / "one.png", tmp_path / "figs" / "four.png"
    save_examples_figure(one, figs[:1])
    save_examples_figure(four, figs)
    with Image.open(one) as a, Image.open(four) as b:
        assert a.format == b.format == "PNG"
        (w1, h1), (w4, h4) = a.size, b.size
        b.load()
    assert w1 > 0 and h1 > 0
    assert abs(w4 - w1) < 0.1 * w1  # same columns
    assert 3.3 < h4 / h1 < 4.7  # four rows of the same height
