"""Through `python -m real_jax.main` on the tiny preset (kills and resumes: test_chaos.py):

- Past `data.max_bad_images` that image stops the run with an error naming the record.
- A huge learning rate makes the loss non-finite: `nonfinite_policy=skip` drops and counts those
  steps (in the state, so the count survives `train.stop_after_steps` + resume); `stop` ends the
  run naming the step and the loss parts, the last good checkpoint staying the latest.
- A bad config fails with one ConfigError listing every problem, before anything compiles.
"""

import json
import re
import sys
import time
from pathlib import Path

import orbax.checkpoint as ocp

from launch.local import process_env
from tests.reliability.conftest import BAD_RECORD
from tests.runs import checkpoint_steps, main_command, run


def saved_state(workdir: Path, step: int) -> dict:
    return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def test_bad_images_past_the_budget_stop_with_the_record_named(damaged, tmp_path):
    result = run(main_command(tmp_path / "run", damaged, "--config.data.max_bad_images=0"),
                 ok=False)
    assert "exceed the budget data.max_bad_images=0" in result.stderr
    assert f"record {BAD_RECORD} (study" in result.stderr


def test_nonfinite_steps_skipped_counted_across_resume_then_stop_names_step(prepared, tmp_path):
    workdir = tmp_path / "run"
    blow_up = [f"--config.train.num_train_steps={8}", "--config.optim.learning_rate=1e30",
               "--config.train.checkpoint_every_steps=1", "--config.train.keep_checkpoints=10"]
    skipping = run(main_command(workdir, prepared, *blow_up, "--config.train.nonfinite_policy=skip",
                                "--config.train.stop_after_steps=5"))
    assert "train.stop_after_steps=5: stopped at step 5 of 8" in skipping.stderr
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    skipped = {row["step"]: row["train/skipped_total"] for row in rows}
    assert skipped[5] >= 1 and skipped[5] == sum(row["train/skipped"] for row in rows)
    assert "update skipped" in skipping.stderr
    assert int(saved_state(workdir, 5)["skipped_steps"]) == skipped[5]  # survives a resume

    stopping = run(main_command(workdir, prepared, *blow_up), ok=False)
    assert "resumed from" in stopping.stderr and "at step 5" in stopping.stderr
    failure = re.search(r"NonFiniteLossError: non-finite loss or gradients at step (\d+): "
                        r"(.*)", stopping.stderr)
    assert failure, stopping.stderr[-5000:]
    assert int(failure.group(1)) == 6
    assert all(f"{part}=" in failure.group(2) for part in ("loss_gen", "loss_con", "loss"))
    assert "The latest checkpoint is step 5 (untouched)" in stopping.stderr
    assert checkpoint_steps(workdir)[-1] == 5


def test_bad_config_fails_fast_before_compiling(tmp_path):
    env = {**process_env(2), "JAX_LOG_COMPILES": "1"}
    start = time.time()
    result = run(main_command(
        tmp_path / "run", tmp_path / "no_such_dataset", "--config.train.global_batch_size=7",
        "--config.data.image_size=100", "--config.generation.beam_size=0",
        f"--config.pretrained.resnet50={tmp_path / 'missing.safetensors'}"), ok=False, env=env)
    elapsed = time.time() - start
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr[result.stderr.index("error: invalid config"):]
    for expected in ("train.global_batch_size=7 is not divisible by the 2",
                     "data.image_size=100", "generation.beam_size=0",
                     "missing.safetensors' does not exist: fetch the weights",
                     "no_such_dataset' is not a prepared"):
        assert expected in error, error
    assert "Compiling" not in result.stderr and "Finished tracing" not in result.stderr
    assert not (tmp_path / "run").exists()
    assert elapsed < 120, elapsed

    unknown = run([sys.executable, "-m", "real_jax.main", "--config=configs/real.py:tinyy",
                   f"--workdir={tmp_path / 'run'}"], ok=False)
    assert "unknown preset 'tinyy'" in unknown.stderr
