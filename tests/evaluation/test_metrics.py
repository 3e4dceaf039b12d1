"""Tests for real_jax.evaluation.metrics: equality with pycocoevalcap, grouping, exact match."""

from __future__ import annotations

import os
import sys

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from real_jax.evaluation.metrics import (
    METRIC_NAMES,
    JavaNotFoundError,
    Prediction,
    close_meteor,
    exact_match,
    is_closed,
    normalize_answer,
    score_predictions,
    shared_meteor_scorer,
)


@pytest.fixture
def direct_meteor() -> Meteor:
    """The pycocoevalcap Meteor whose `compute_score` the direct reference scorings call: the
    process's shared one, live (a plain `Meteor()`; each start spends ~9 s of a core loading
    tables)."""
    return shared_meteor_scorer()


def score_directly(examples: list[Prediction], meteor: Meteor) -> dict[str, float]:
    """The coco-caption recipe written out with pycocoevalcap alone, as COCOEvalCap runs it."""
    gts = {i: [{"caption": e.reference}] for i, e in enumerate(examples)}
    res = {i: [{"caption": e.prediction}] for i, e in enumerate(examples)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"BLEU-{n + 1}": bleu[n] for n in range(4)}
    out["METEOR"] = meteor.compute_score(gts, res)[0]
    out["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


@pytest.fixture(scope="module")
def scored(examples):
    return score_predictions(examples)


def java_children() -> set[int]:
    """Pids of live java child processes of this test process (Linux /proc)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == os.getpid() and state != "Z" and b"java" in cmd:
            pids.add(int(entry))
    return pids


def test_difference_metrics_equal_pycocoevalcap_called_directly(examples, scored, direct_meteor):
    subset = [e for e in examples if e.question_type == "difference"]
    expected = score_directly(subset, direct_meteor)
    got = scored["difference"]
    assert set(got) == set(METRIC_NAMES) | {"exact_match", "count"}
    assert got["count"] == len(subset) == 8
    for name in METRIC_NAMES:
        assert isinstance(got[name], float)
        assert got[name] == pytest.approx(expected[name], abs=1e-9), name
    # Imperfect predictions: the numbers are neither trivial nor perfect.
    assert 0.3 < got["BLEU-4"] < 0.99
    assert got["CIDEr"] > 0.0


@pytest.mark.parametrize("qtype", ["presence", "view", "difference"])
def test_each_question_type_is_scored_as_its_own_subset(examples, scored, direct_meteor, qtype):
    subset = [e for e in examples if e.question_type == qtype]
    expected = score_directly(subset, direct_meteor)
    got = scored["by_type"][qtype]
    assert got["count"] == len(subset)
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(expected[name], abs=1e-9), (qtype, name)


def test_grouping_matters_and_absent_types_are_omitted(examples, scored, direct_meteor):
    assert list(scored["by_type"]) == ["abnormality", "presence", "view", "difference"]
    assert scored["by_type"]["difference"] == scored["difference"]
    # CIDEr's IDF depends on which references are scored together: scoring everything as one
    # pool gives a different number than the difference subset, so groups must be separate.
    pooled = score_directly(examples, direct_meteor)
    assert abs(pooled["CIDEr"] - scored["difference"]["CIDEr"]) > 1e-3


def test_exact_match_is_split_into_open_and_closed_questions(examples, scored):
    em = scored["exact_match"]
    # closed: yes/yes, no/yes, Yes./" yes " -> 2 of 3; open: 11 examples, matches are
    # "nothing has changed." and "pa view." vs "PA view" -> 2 of 11.
    assert em["count"] == {"all": 14, "open": 11, "closed": 3}
    assert em["closed"] == pytest.approx(2 / 3)
    assert em["open"] == pytest.approx(2 / 11)
    assert em["all"] == pytest.approx(4 / 14)
    assert scored["by_type"]["presence"]["exact_match"] == pytest.approx(2 / 3)
    assert scored["difference"]["exact_match"] == pytest.approx(1 / 8)


def test_normalisation_lowercases_strips_collapses_and_drops_trailing_period():
    assert normalize_answer("  Nothing   has\tchanged. ") == "nothing has changed"
    assert normalize_answer("PA view.") == "pa view"
    assert exact_match("the main image. ", "The main  image")
    assert not exact_match("pa view", "ap view")
    assert is_closed("Yes.") and is_closed(" no") and not is_closed("nothing has changed.")


def test_perfect_predictions_score_bleu4_one_and_exact_match_one(examples):
    perfect = [
        Prediction(**{**e.__dict__, "prediction": e.reference})
        for e in examples
        if e.question_type in ("difference", "presence")
    ]
    metrics = score_predictions(perfect)
    diff = metrics["difference"]
    assert diff["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert diff["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert diff["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert diff["ROUGE-L"] == pytest.approx(1.0, abs=1e-6)
    assert diff["exact_match"] == 1.0
    assert metrics["exact_match"]["all"] == 1.0
    assert metrics["exact_match"]["closed"] == 1.0


def test_scoring_calls_share_one_meteor_process_and_replace_a_dead_one(examples):
    others = java_children()  # another test's scorer, or this one's from an earlier test
    score_predictions(examples[:2])
    meteor = shared_meteor_scorer()
    # The tokenizer's java has exited; METEOR's stays for the next call, which starts none.
    assert java_children() - others <= {meteor.meteor_p.pid} and meteor.meteor_p.poll() is None
    score_predictions(examples[:3])
    assert shared_meteor_scorer() is meteor
    assert java_children() - others <= {meteor.meteor_p.pid}
    meteor.meteor_p.kill()
    meteor.meteor_p.wait()
    again = score_predictions(examples[:2])
    assert shared_meteor_scorer() is not meteor and again["difference"]["count"] == 2


def test_without_meteor_the_other_scores_are_unchanged_and_no_meteor_starts(examples, scored):
    others = java_children()
    without = score_predictions(examples, meteor=False)
    assert java_children() - others == set()  # the tokenizer's java has exited, no METEOR
    for group in ("difference", *scored["by_type"]):
        expected = scored["by_type"].get(group, scored["difference"])
        got = without["by_type"].get(group, without["difference"])
        assert got == {k: v for k, v in expected.items() if k != "METEOR"}, group
    assert without["exact_match"] == scored["exact_match"]


def test_empty_predictions_are_scored_zero_without_crashing(examples, scored):
    # Example 6 predicts "" and example 7 "..." (empty after tokenization); both are in the
    # difference group that test_difference_metrics_equal_pycocoevalcap_called_directly checks.
    assert examples[6].prediction == "" and examples[7].prediction == "..."
    assert scored["difference"]["count"] == 8
    for name in METRIC_NAMES:
        assert scored["difference"][name] >= 0.0


def test_closing_a_meteor_scorer_ends_its_java_process():
    meteor = Meteor()
    proc = meteor.meteor_p
    assert proc.poll() is None
    close_meteor(meteor)
    assert proc.poll() is not None
    close_meteor(meteor)  # idempotent; Meteor.__del__ later must not hang either
    del meteor


def test_missing_java_raises_clear_error_before_scoring(examples, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java anywhere on PATH
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(JavaNotFoundError) as info:
        score_predictions(examples)
    message = str(info.value)
    assert "apt-get install openjdk-17-jre-headless" in message
    assert "conda install openjdk" in message
    assert "PATH" in message


def test_broken_java_on_path_raises_clear_error(examples, monkeypatch, tmp_path):
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'Error: could not find libjvm.so' >&2\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="libjvm.so"):
        score_predictions(examples)


def test_missing_pycocoevalcap_says_how_to_install(examples, monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] == "pycocoevalcap"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)
    with pytest.raises(ImportError, match=r"pip install 'real_jax\[eval\]'"):
        score_predictions(examples)


def test_unknown_question_type_and_empty_input(examples):
    bad = Prediction(**{**examples[0].__dict__, "question_type": "Difference"})
    with pytest.raises(ValueError, match="Unknown question types"):
        score_predictions([bad])
    assert score_predictions([]) == {}
