"""The run summary that `make demo` ends with: latest scores per split, prior, next commands."""

import json

from real_jax.apps.summary import TEXT_ONLY_PRIOR, latest_evaluation, run_summary


def write_metrics(directory, step, cider):
    path = directory / f"step_{step}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"difference": {"BLEU-1": 0.5, "BLEU-4": 0.4, "METEOR": 0.3,
                                               "ROUGE-L": 0.6, "CIDEr": cider,
                                               "exact_match": 0.25}}))


def test_latest_evaluation_is_the_highest_step_with_scores(tmp_path):
    write_metrics(tmp_path / "eval", 500, 2.0)
    write_metrics(tmp_path / "eval", 1500, 4.0)
    (tmp_path / "eval" / "step_2000").mkdir()  # predictions only, never scored
    assert latest_evaluation(tmp_path / "eval") == (
        1500, tmp_path / "eval" / "step_1500" / "metrics.json")
    assert latest_evaluation(tmp_path / "missing") is None


def test_summary_shows_both_splits_beside_the_prior_and_what_to_run_next(tmp_path):
    write_metrics(tmp_path / "eval", 1000, 3.0)
    write_metrics(tmp_path / "eval", 1500, 4.2)
    text = run_summary(tmp_path)
    assert "| val (1500) | 0.500 | 0.400 | 0.300 | 0.600 | 4.200 | 0.250 |" in text
    assert "| test | not evaluated |" in text
    assert f"| text-only prior (test, README) | {TEXT_ONLY_PRIOR['BLEU-1']:.3f} |" in text
    write_metrics(tmp_path / "eval_test", 1500, 3.9)
    text = run_summary(tmp_path)
    assert "| test (1500) | 0.500 | 0.400 | 0.300 | 0.600 | 3.900 | 0.250 |" in text
    for command in ("--mode=evaluate --split=test", "python -m real_jax.predict",
                    "python -m real_jax.export"):
        assert command in text
