"""The seeded ablation harness (`launch/ablation.py`): its arithmetic (mean, spread, paired
differences) and one real run through `real_jax.main` that a second call reuses."""

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "launch"))

import ablation  # noqa: E402

from tests.runs import STEPS  # noqa: E402


def result(row: str, seed: int, cider: float) -> dict:
    return {"row": row, "seed": seed, "scores": {"CIDEr": cider, "BLEU-4": cider / 10,
                                                  "exact_match": cider / 20}, "wall_s": 1.0}


def test_summary_is_mean_spread_and_paired_difference():
    results = [result("residual_input", 0, 2.0), result("residual_input", 1, 3.0),
               result("residual_input", 2, 4.0), result("real", 0, 2.5),
               result("real", 1, 3.0), result("real", 2, 5.0)]
    summary = ablation.summarise(results, ["residual_input", "real"], "residual_input")
    assert summary["real"]["CIDEr"]["mean"] == pytest.approx(3.5)
    assert summary["real"]["CIDEr"]["std"] == pytest.approx(math.sqrt(1.75))  # ddof=1
    paired = summary["real"]["CIDEr_vs_residual_input"]
    assert paired["mean"] == pytest.approx(0.5)  # (0.5 + 0 + 1) / 3
    assert paired["std"] == pytest.approx(0.5)
    assert (paired["higher"], paired["of"]) == (2, 3)
    assert "CIDEr_vs_residual_input" not in summary["residual_input"]
    table = ablation.markdown_table(summary, "residual_input")
    assert "(`real`) | 3 | 3.500 ± 1.323 | 0.350 ± 0.132 |" in table
    assert "+0.500 ± 0.500 | 2/3 |" in table


def test_one_real_run_is_trained_scored_and_then_reused(tmp_path, tiny_data, monkeypatch):
    # The `real` row at the suite's common settings (tests/runs.py): its programs are cached.
    # The harness's metrics leave METEOR out, so its scorer is not started.
    out = tmp_path / "ablation"
    data = [*tiny_data[1], "--config.data.eval_limit=8", "--config.generation.answer_max_tokens=8",
            "--config.eval.meteor=False", "--config.train.checkpoint_every_steps=1000"]
    record = ablation.run_ablation(out, rows=["real"], seeds=[0], preset="tiny", steps=STEPS,
                                   base="real", extra=data)
    (run,) = record["runs"]
    assert run["row"] == "real" and run["steps"] == STEPS
    assert all(math.isfinite(run["scores"][m]) for m in ablation.METRICS)
    workdir = out / "real" / "seed_0"
    config = json.loads((workdir / "config.json").read_text())
    assert config["seed"] == 0 and config["data"]["eval_split"] == "test"
    assert (out / "ablation.md").read_text().count("\n") == 3
    # A second call finds the scores and starts nothing (no process: neither a run nor the
    # dataset's preparation).
    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(ablation.subprocess, "run", no_process)
    again = ablation.run_ablation(out, rows=["real"], seeds=[0], preset="tiny", steps=STEPS,
                                  base="real", extra=data)
    assert again["runs"] == record["runs"]
    assert ablation.run_ablation(out, rows=["residual_input", "real"], seeds=[0], preset="tiny",
                                 summarise_only=True)["runs"] == record["runs"]


def test_unknown_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown rows"):
        ablation.run_ablation(tmp_path, rows=["residual_input", "typo"])
