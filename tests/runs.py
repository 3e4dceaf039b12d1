"""`python -m real_jax.main` on the tiny preset, as the tests that train through the command run
it, and what they read back from its workdir.

Every such test uses `main_command`'s settings unless it tests one of them: the same config on
the same data (`tiny_data`, tests/conftest.py) compiles to the same programs, so the first
process compiles them and every later one loads them from the suite's compilation cache. The
number of steps is part of the program (the learning-rate schedule's constants), hence one
`STEPS` for all, and `launch/chaos.py`'s run in test_chaos.py trains as many.

Runs score their evaluations without METEOR (`config.eval.meteor`): its Java scorer spends ~9 s
of a core per process loading tables, and only test_end_to_end.py (which turns it back on) and
tests/evaluation check its figure.
"""

import subprocess
import sys
from pathlib import Path

from launch.chaos import complete_steps as checkpoint_steps
from launch.chaos import partial_saves

__all__ = ["REPO", "STEPS", "checkpoint_steps", "main_command", "partial_saves", "run"]

REPO = Path(__file__).resolve().parents[1]
STEPS = 16


def main_command(workdir: Path, data_dir: Path | None, *extra: str) -> list[str]:
    """The command line; `data_dir=None` leaves the data flags to `extra` (e.g. a synthetic
    source for the command to generate and prepare itself)."""
    data = [] if data_dir is None else [f"--config.data.dir={data_dir}",
                                        "--config.data.synthetic_source="]
    return [sys.executable, "-m", "real_jax.main", "--config=configs/real.py:tiny",
            f"--workdir={workdir}", *data, f"--config.train.num_train_steps={STEPS}",
            "--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=1000",
            "--config.train.eval_every_steps=1000", "--config.data.eval_limit=8",
            "--config.generation.answer_max_tokens=8", "--config.eval.meteor=False", *extra]


def run(command: list[str], ok: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            **kwargs)
    assert (result.returncode == 0) == ok, result.stderr[-5000:]
    return result
