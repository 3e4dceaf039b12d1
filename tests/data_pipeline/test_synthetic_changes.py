"""The synthetic generator's `persistent` changes: findings last from study to study and change
level, so that most difference answers need the reference image (`launch/ablation.py`)."""

import numpy as np
import pytest

from data_pipeline import synthetic


def plans(changes: str, subjects: int = 300) -> list[dict]:
    seeds = np.random.SeedSequence(0).spawn(subjects)
    return [synthetic._subject_plan(seq, 10_000_000 + i, "train", list(range(4 * i, 4 * i + 4)),
                                    changes) for i, seq in enumerate(seeds)]


def pair_statistics(changes: str) -> dict[str, float]:
    shared, answers = [], []
    for plan in plans(changes):
        studies = plan["studies"]
        for ref, main in zip(studies, studies[1:], strict=False):
            shared.append(bool(set(ref["findings"]) & set(main["findings"])))
        answers += [row["answer"] for row in plan["rows"] if row["question_type"] == "difference"]
    needs_reference = [a == "nothing has changed." or
                       ("level of" in a and "additional" not in a and "missing" not in a)
                       for a in answers]
    return {"shared": float(np.mean(shared)), "needs_reference": float(np.mean(needs_reference))}


def test_persistent_changes_make_answers_that_need_the_reference():
    persistent, mixed = pair_statistics("persistent"), pair_statistics("mixed")
    # Most pairs have a finding in both studies, and most answers are about level changes of
    # such findings or say nothing changed: neither can be read off the main image alone.
    assert persistent["shared"] > 0.85 and persistent["shared"] > mixed["shared"] + 0.2
    assert persistent["needs_reference"] > 0.6 > mixed["needs_reference"]


def test_persistent_level_changes_are_one_step():
    for plan in plans("persistent", subjects=100):
        studies = plan["studies"]
        for ref, main in zip(studies, studies[1:], strict=False):
            for name in set(ref["findings"]) & set(main["findings"]):
                step = main["findings"][name]["level"] - ref["findings"][name]["level"]
                assert step in (-1, 0, 1)


def test_unknown_changes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="changes='sudden' not in"):
        synthetic.generate(tmp_path, subjects=2, changes="sudden")
