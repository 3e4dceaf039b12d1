"""Shared vocabulary of MIMIC-Diff-VQA: question types, findings, locations, levels, templates.

The synthetic generator (`data_pipeline.synthetic`) draws findings from here, ingestion
(`data_pipeline.prepare`) validates `question_type` against `QUESTION_TYPES`, and the pipeline
encodes `question_type` as an index into `QUESTION_TYPES` (batch key `question_type`, int32[B]).
"""

from __future__ import annotations

from collections.abc import Sequence

QUESTION_TYPES: tuple[str, ...] = (
    "abnormality",
    "presence",
    "view",
    "location",
    "level",
    "type",
    "difference",
)
QUESTION_TYPE_INDEX: dict[str, int] = {name: i for i, name in enumerate(QUESTION_TYPES)}

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Findings the generator draws, each with the levels and types the dataset uses for it, and
# whether it has a side (location). Names follow MIMIC-Diff-VQA's keyword list.
FINDINGS: dict[str, dict] = {
    "pleural effusion": {
        "levels": ("small", "moderate", "large"),
        "types": ("layering", "loculated"),
        "lateral": True,
    },
    "edema": {
        "levels": ("mild", "moderate", "severe"),
        "types": ("interstitial", "alveolar"),
        "lateral": False,
    },
    "pneumothorax": {
        "levels": ("small", "moderate", "large"),
        "types": ("apical",),
        "lateral": True,
    },
    "consolidation": {
        "levels": ("mild", "moderate", "severe"),
        "types": ("focal", "multifocal"),
        "lateral": True,
    },
    "atelectasis": {
        "levels": ("mild", "moderate", "severe"),
        "types": ("plate-like", "linear"),
        "lateral": True,
    },
    "cardiomegaly": {
        "levels": ("mild", "moderate", "severe"),
        "types": ("global",),
        "lateral": False,
    },
    "lung opacity": {
        "levels": ("mild", "moderate", "severe"),
        "types": ("patchy", "hazy"),
        "lateral": True,
    },
}
FINDING_NAMES: tuple[str, ...] = tuple(FINDINGS)

# Sides are the patient's: the patient's right lung is on the image's left (radiographic view).
SIDES: tuple[str, ...] = ("left", "right", "bilateral")


def location_text(finding: str, side: str) -> str:
    """Location answer for a finding: 'left lung', 'right lung', 'bilateral' or 'cardiac'."""
    if not FINDINGS[finding]["lateral"]:
        return "cardiac" if finding == "cardiomegaly" else "bilateral"
    return "bilateral" if side == "bilateral" else f"{side} lung"


def join_findings(names: Sequence[str]) -> str:
    """Join like the dataset does: 'a', 'a, and b', 'a, b, and c' (the odd ', and' kept)."""
    names = list(names)
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + ", and " + names[-1]


def difference_answer(
    added: Sequence[str], missing: Sequence[str], level_changes: Sequence[tuple[str, str, str]]
) -> str:
    """Difference answer in the dataset's template, e.g.

    'the main image has an additional finding of pneumothorax than the reference image. the main
    image is missing the findings of fracture, lung opacity, and pleural effusion than the
    reference image. ' -- sentences end with '. ' (trailing space kept); no change gives
    'nothing has changed.'. `level_changes` holds (finding, old_level, new_level).
    """
    parts = []
    if added:
        noun = "an additional finding" if len(added) == 1 else "additional findings"
        parts.append(
            f"the main image has {noun} of {join_findings(added)} than the reference image. ")
    if missing:
        noun = "finding" if len(missing) == 1 else "findings"
        parts.append(
            f"the main image is missing the {noun} of {join_findings(missing)} "
            "than the reference image. "
        )
    for name, old, new in level_changes:
        parts.append(f"the level of {name} has changed from {old} to {new}. ")
    return "".join(parts) if parts else "nothing has changed."
