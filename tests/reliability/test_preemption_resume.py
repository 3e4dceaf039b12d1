"""Through `python -m real_jax.main` on the tiny preset:

- SIGTERM mid-run saves a checkpoint at the step reached and exits 0; resuming gives bitwise the
  parameters, optimizer state and data-iterator position of an uninterrupted run (on a dataset
  with an undecodable image, which both runs skip and log).
- Past `data.max_bad_images` that image stops the run with an error naming the record.
- A huge learning rate makes the loss non-finite: `nonfinite_policy=skip` drops and counts those
  steps (in the state, so the count survives `train.stop_after_steps` + resume); `stop` ends the
  run naming the step and the loss parts, the last good checkpoint staying the latest.
- A bad config fails with one ConfigError listing every problem, before anything compiles.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.reliability.conftest import copy_dataset, replace_image

REPO = Path(__file__).resolve().parents[2]
STEPS = 40
BAD_RECORD = 1


@pytest.fixture(scope="module")
def damaged(prepared, tmp_path_factory) -> Path:
    """The prepared dataset with one training image that no longer decodes."""
    data_dir = copy_dataset(prepared, tmp_path_factory.mktemp("damaged") / "prepared")
    replace_image(data_dir, "train", BAD_RECORD, "ref_image", b"\xff\xd8\xff\xe0 broken" * 8)
    return data_dir


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


def checkpoint_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def saved_state(workdir: Path, step: int) -> dict:
    return ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")


def iterator_state(workdir: Path, step: int) -> list[dict]:
    """The grain iterator state of each process (position in the shuffled epochs)."""
    directory = workdir / "checkpoints" / str(step) / "data_iterator"
    return [json.loads(p.read_text()) for p in sorted(directory.glob("process_*"))]


def assert_trees_equal(a: dict, b: dict) -> None:
    flat_a = dict(ocp.tree.to_flat_dict(a))
    flat_b = dict(ocp.tree.to_flat_dict(b))
    assert flat_a.keys() == flat_b.keys()
    for key, value in flat_a.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[key]), err_msg=key)


def test_sigterm_saves_and_resume_is_bitwise_exact(damaged, tmp_path):
    straight = tmp_path / "straight"
    first = run(main_command(straight, damaged))
    assert f"unreadable image in record {BAD_RECORD}" in first.stderr  # skipped and logged

    interrupted = tmp_path / "interrupted"
    log_path = tmp_path / "interrupted.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(main_command(interrupted, damaged), cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while process.poll() is None and time.time() < deadline:
            if re.search(r"step [3-9]/", log_path.read_text()):
                process.send_signal(signal.SIGTERM)
                break
            time.sleep(0.02)
        returncode = process.wait(timeout=600)
    text = log_path.read_text()
    assert returncode == 0, text[-5000:]
    stopped = re.search(r"received SIGTERM: stopped at step (\d+) of 40 with a complete checkpoint",
                        text)
    assert stopped, text[-5000:]
    midpoint = int(stopped.group(1))
    assert 3 <= midpoint < STEPS and checkpoint_steps(interrupted) == [midpoint]

    resumed = run(main_command(interrupted, damaged))
    assert f"at step {midpoint}" in resumed.stderr
    assert checkpoint_steps(interrupted) == [midpoint, STEPS]
    assert_trees_equal(saved_state(straight, STEPS), saved_state(interrupted, STEPS))
    assert iterator_state(straight, STEPS) == iterator_state(interrupted, STEPS) != []


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
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_LOG_COMPILES": "1"}
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
