"""End to end through `python -m real_jax.main` on the tiny preset: synthetic data -> train ->
checkpoint -> evaluate on the test split -> the demo's closing summary. (Kills and resumes in every
phase of a run: tests/reliability/test_chaos.py.)"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
TOTAL_STEPS = 60


@pytest.fixture(scope="module")
def data_flags(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return [
        f"--config.data.dir={root / 'prepared'}",
        f"--config.data.synthetic_source={root / 'raw'}",
        "--config.data.synthetic_subjects=16",
        "--config.data.synthetic_image_size=80",
    ]


def main_command(workdir: Path, data_flags: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "real_jax.main", "--config=configs/real.py:tiny",
            f"--workdir={workdir}", f"--config.train.num_train_steps={TOTAL_STEPS}",
            "--config.train.checkpoint_every_steps=20", "--config.train.log_every_steps=10",
            f"--config.train.eval_every_steps={TOTAL_STEPS}", *data_flags, *extra]


def run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def finished_checkpoints(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_train_evaluate_and_summarise(tmp_path, data_flags):
    workdir = tmp_path / "run"
    run(main_command(workdir, data_flags))
    assert max(finished_checkpoints(workdir)) == TOTAL_STEPS

    metrics = json.loads((workdir / "eval" / f"step_{TOTAL_STEPS}" / "metrics.json").read_text())
    for name in METRICS:
        assert math.isfinite(metrics["difference"][name]), metrics
    assert (workdir / "eval" / f"step_{TOTAL_STEPS}" / "examples.png").stat().st_size > 0
    lines = (workdir / "eval" / f"step_{TOTAL_STEPS}" / "predictions.jsonl").read_text()
    assert len(lines.splitlines()) == metrics["num_examples"] > 0
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert TOTAL_STEPS in steps and list(workdir.glob("tensorboard/events.*"))

    run(main_command(workdir, data_flags, "--mode=evaluate", "--split=test"))
    test_metrics = json.loads(
        (workdir / "eval_test" / f"step_{TOTAL_STEPS}" / "metrics.json").read_text())
    for name in METRICS:
        assert math.isfinite(test_metrics["difference"][name]), test_metrics

    # what `make demo` prints last: both splits' scores beside the prior, and where things are
    summary = run([sys.executable, "-m", "real_jax.summary", f"--workdir={workdir}",
                   "--config=configs/real.py:tiny"]).stdout
    assert f"| val ({TOTAL_STEPS}) | {metrics['difference']['BLEU-1']:.3f} |" in summary
    assert f"| test ({TOTAL_STEPS}) | {test_metrics['difference']['BLEU-1']:.3f} |" in summary
    assert "| text-only prior (test, README) |" in summary
    assert f"python -m real_jax.predict --workdir={workdir}" in summary
