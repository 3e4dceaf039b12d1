"""`launch/compare_predictions.py` on predictions files written by the evaluation's writer."""

import pytest

from launch.compare_predictions import compare, last_predictions, main
from real_jax.evaluation import write_predictions_jsonl
from real_jax.evaluation.metrics import Prediction


def predictions(path, answers, questions=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    questions = questions or ["what has changed?"] * len(answers)
    write_predictions_jsonl(path, [
        Prediction(index=i, study_id=str(i), ref_id="r", subject_id="s", question_type="difference",
                   question=q, reference="nothing has changed.", prediction=a)
        for i, (a, q) in enumerate(zip(answers, questions, strict=True))])


def test_shared_distinct_and_most_frequent_answers(tmp_path):
    questions = ["q1", "q1", "q2", "q1"]  # a's answer is the question's; b's is one for all
    predictions(tmp_path / "a.jsonl", ["no change", "no change", "more edema", "no change"],
                questions)
    predictions(tmp_path / "b.jsonl", ["no change", "no change", "no change", "no change"],
                questions)
    result = compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl", top=2)
    assert result == {"examples": 4, "identical": 3, "distinct": [2, 1],
                      "most_answers_to_one_question": [1, 1],
                      "most_frequent": [[("no change", 3), ("more edema", 1)],
                                        [("no change", 4)]]}


def test_reads_the_last_evaluated_step_of_each_run_and_prints_a_row_per_seed(tmp_path, capsys):
    for row, answers in (("x", ["a", "b"]), ("y", ["a", "c"])):
        predictions(tmp_path / row / "seed_0" / "eval" / "step_9" / "predictions.jsonl", ["z", "z"])
        predictions(tmp_path / row / "seed_0" / "eval" / "step_10" / "predictions.jsonl", answers)
    assert last_predictions(tmp_path / "x" / "seed_0").parent.name == "step_10"
    main(["--out", str(tmp_path), "x", "y", "--seeds", "0"])
    assert "| 0 | 1/2 | 2 / 2 | 2 / 2 |" in capsys.readouterr().out


def test_runs_that_answer_different_examples_or_have_no_predictions_are_errors(tmp_path):
    predictions(tmp_path / "a.jsonl", ["x", "y"])
    predictions(tmp_path / "b.jsonl", ["x"])
    with pytest.raises(ValueError, match="different examples"):
        compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    with pytest.raises(FileNotFoundError, match="has the run finished"):
        last_predictions(tmp_path / "missing")
