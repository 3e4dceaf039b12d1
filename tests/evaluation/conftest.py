"""Shared fixtures for the evaluation tests: a small realistic MIMIC-Diff-VQA-style set."""

from __future__ import annotations

import pytest

from real_jax.evaluation.metrics import Prediction

A_PTX = (
    "the main image has an additional finding of pneumothorax than the reference image. "
    "the main image is missing the findings of fracture, lung opacity, and pleural effusion "
    "than the reference image. "
)

# (question_type, question, reference, prediction). Verbatim dataset style, trailing spaces and
# the odd ", and" included; predictions are imperfect the way a real model's are.
ROWS: list[tuple[str, str, str, str]] = [
    (
        "difference",
        "what has changed compared to the reference image?",
        A_PTX,
        "the main image has an additional finding of pneumothorax than the reference image. "
        "the main image is missing the findings of lung opacity and pleural effusion than the "
        "reference image.",
    ),
    (
        "difference",
        "what has changed compared to the reference image?",
        "nothing has changed.",
        "nothing has changed.",
    ),
    (
        "difference",
        "what has changed compared to the reference image?",
        "the main image has additional findings of atelectasis, and edema than the reference "
        "image. ",
        "the main image has an additional finding of edema than the reference image.",
    ),
    (
        "difference",
        "what has changed in the main image?",
        "the main image is missing the findings of pleural effusion than the reference image. ",
        "nothing has changed.",
    ),
    (
        "difference",
        "what has changed compared to the reference image?",
        "the level of pleural effusion has changed from small to moderate. ",
        "the level of pleural effusion has changed from moderate to small.",
    ),
    (
        "difference",
        "what has changed in the main image?",
        "the main image has an additional finding of cardiomegaly than the reference image. the "
        "level of edema has changed from mild to severe. ",
        "the main image has an additional finding of cardiomegaly than the reference image.",
    ),
    # A model that stops at once, and one that emits punctuation only (tokenizes to nothing).
    (
        "difference",
        "what has changed compared to the reference image?",
        "the main image has an additional finding of lung opacity than the reference image. ",
        "",
    ),
    ("difference", "what has changed in the main image?", "nothing has changed.", "..."),
    ("presence", "is there evidence of pleural effusion in this image?", "yes", "yes"),
    ("presence", "is there evidence of pneumothorax in this image?", "no", "yes"),
    ("presence", "is there edema?", "Yes.", " yes "),
    ("view", "which view is this image taken?", "AP view", "PA view"),
    ("view", "which view is this image taken?", "PA view", "pa view."),
    (
        "abnormality",
        "what abnormalities are seen in this image?",
        "atelectasis, lung opacity, pleural effusion",
        "lung opacity, pleural effusion",
    ),
]


def make_predictions(rows: list[tuple[str, str, str, str]]) -> list[Prediction]:
    return [
        Prediction(
            index=i,
            study_id=str(50000000 + i),
            ref_id=str(51000000 + i),
            subject_id=str(10000000 + i // 3),
            question_type=qtype,
            question=question,
            reference=reference,
            prediction=prediction,
        )
        for i, (qtype, question, reference, prediction) in enumerate(rows)
    ]


@pytest.fixture(scope="session")
def examples() -> list[Prediction]:
    return make_predictions(ROWS)
