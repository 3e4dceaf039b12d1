"""Evaluation of generated answers: coco-caption metrics, exact match, qualitative figures.

``metrics`` scores predictions with pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) per
group plus exact-match accuracy, and reads/writes prediction and metric files; ``figures`` draws
ref | main | residual | text rows like the ReAl paper's Fig. 3; ``heatmap`` draws one answer's
saliency over the main image beside ref, main and residual (``real_jax.predict``).
"""

from real_jax.evaluation.figures import FigureExample, save_examples_figure
from real_jax.evaluation.heatmap import (
    heatmap_figure_size,
    normalize_saliency,
    panel_boxes,
    save_heatmap_figure,
)
from real_jax.evaluation.metrics import (
    METRIC_NAMES,
    QUESTION_TYPES,
    JavaNotFoundError,
    Prediction,
    check_java,
    exact_match,
    is_closed,
    normalize_answer,
    read_predictions_jsonl,
    score_predictions,
    write_metrics_json,
    write_predictions_jsonl,
)

__all__ = [
    "METRIC_NAMES",
    "QUESTION_TYPES",
    "FigureExample",
    "JavaNotFoundError",
    "Prediction",
    "check_java",
    "exact_match",
    "heatmap_figure_size",
    "is_closed",
    "normalize_answer",
    "normalize_saliency",
    "panel_boxes",
    "read_predictions_jsonl",
    "save_examples_figure",
    "save_heatmap_figure",
    "score_predictions",
    "write_metrics_json",
    "write_predictions_jsonl",
]
