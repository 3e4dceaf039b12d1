"""Helpers to run `python -m real_jax.main` on the tiny preset and read what it saved."""

import subprocess
import sys
from pathlib import Path

from launch.chaos import complete_steps as checkpoint_steps
from launch.chaos import partial_saves

__all__ = ["REPO", "STEPS", "checkpoint_steps", "main_command", "partial_saves", "run"]

REPO = Path(__file__).resolve().parents[2]
STEPS = 40


def main_command(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "real_jax.main", "--config=configs/real.py:tiny",
            f"--workdir={workdir}", f"--config.data.dir={data_dir}",
            "--config.data.synthetic_source=", f"--config.train.num_train_steps={STEPS}",
            "--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=1000",
            "--config.train.eval_every_steps=1000", "--config.data.eval_limit=8",
            "--config.generation.answer_max_tokens=8", *extra]


def run(command: list[str], ok: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            **kwargs)
    assert (result.returncode == 0) == ok, result.stderr[-5000:]
    return result
