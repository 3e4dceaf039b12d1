"""End to end through `python -m real_jax.main` on the tiny preset: synthetic data -> train ->
checkpoint -> evaluate on the test split -> the demo's closing summary. (Kills and resumes in every
phase of a run: tests/reliability/test_chaos.py.)"""

import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_DATA_IMAGE_SIZE, TINY_DATA_SUBJECTS
from tests.runs import STEPS as TOTAL_STEPS
from tests.runs import main_command, run

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@pytest.fixture(scope="module")
def data_flags(tmp_path_factory):
    """A synthetic source for the command to generate and prepare itself (as `make demo` does),
    the same studies as the suite's `tiny_data`."""
    root = tmp_path_factory.mktemp("synthetic")
    return [
        "--config.eval.meteor=True",  # the one run that checks METEOR (tests/runs.py)
        f"--config.data.dir={root / 'prepared'}",
        f"--config.data.synthetic_source={root / 'raw'}",
        f"--config.data.synthetic_subjects={TINY_DATA_SUBJECTS}",
        f"--config.data.synthetic_image_size={TINY_DATA_IMAGE_SIZE}",
    ]


def finished_checkpoints(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_train_evaluate_and_summarise(tmp_path, data_flags):
    workdir = tmp_path / "run"
    run(main_command(workdir, None, *data_flags, "--config.train.checkpoint_every_steps=8"))
    assert finished_checkpoints(workdir) == list(range(8, TOTAL_STEPS + 1, 8))

    metrics = json.loads((workdir / "eval" / f"step_{TOTAL_STEPS}" / "metrics.json").read_text())
    for name in METRICS:
        assert math.isfinite(metrics["difference"][name]), metrics
    assert (workdir / "eval" / f"step_{TOTAL_STEPS}" / "examples.png").stat().st_size > 0
    lines = (workdir / "eval" / f"step_{TOTAL_STEPS}" / "predictions.jsonl").read_text()
    assert len(lines.splitlines()) == metrics["num_examples"] > 0
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert TOTAL_STEPS in steps and list(workdir.glob("tensorboard/events.*"))

    # METEOR's Java scorer is checked once, above: it spends ~9 s of a core per process
    run(main_command(workdir, None, *data_flags, "--mode=evaluate", "--split=test",
                     "--config.eval.meteor=False"))
    test_metrics = json.loads(
        (workdir / "eval_test" / f"step_{TOTAL_STEPS}" / "metrics.json").read_text())
    assert "METEOR" not in test_metrics["difference"], test_metrics
    for name in (m for m in METRICS if m != "METEOR"):
        assert math.isfinite(test_metrics["difference"][name]), test_metrics

    # what `make demo` prints last: both splits' scores beside the prior, and where things are
    summary = run([sys.executable, "-m", "real_jax.summary", f"--workdir={workdir}",
                   "--config=configs/real.py:tiny"]).stdout
    assert f"| val ({TOTAL_STEPS}) | {metrics['difference']['BLEU-1']:.3f} |" in summary
    assert f"| test ({TOTAL_STEPS}) | {test_metrics['difference']['BLEU-1']:.3f} |" in summary
    assert "| text-only prior (test, README) |" in summary
    assert f"python -m real_jax.predict --workdir={workdir}" in summary
