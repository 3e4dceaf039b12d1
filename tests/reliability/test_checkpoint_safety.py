"""Checkpoints survive crashes: a save killed half-way (`kill -9`) or a leftover temporary
directory is never picked as the latest step, and a damaged complete checkpoint is a clear error
naming its step and path; a reader beside a job that deletes old steps as it saves always gets a
complete step. Uses `real_jax.training.checkpointing.Checkpointer` on a small state
(no model, nothing to compile); the end-to-end resume runs are in test_preemption_resume.py."""

import functools
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from real_jax.training.checkpointing import Checkpointer, CheckpointRestoreError, restore_newest

REPO = Path(__file__).resolve().parents[2]
CONFIG = ml_collections.ConfigDict({"name": "checkpoint-safety"})


def small_state(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((64, 64), value, np.float32), "b": np.arange(8, dtype=np.int32)}


def save_steps(directory: Path, steps: list[int]) -> None:
    checkpointer = Checkpointer(directory, keep=10, best_metric=None, async_save=False)
    for step in steps:
        checkpointer.save(step, small_state(step), None, CONFIG)
    checkpointer.close()


def test_leftover_temporary_checkpoint_is_ignored_and_removed(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    partial = directory / "3.orbax-checkpoint-tmp-1700000000"  # what a killed save leaves
    shutil.copytree(directory / "2", partial)
    for path in sorted((partial / "state").rglob("*"))[-2:]:
        if path.is_file():
            path.unlink()

    checkpointer = Checkpointer(directory, keep=10, best_metric=None, async_save=False)
    assert checkpointer.latest_step() == 2
    assert checkpointer.all_steps() == [1, 2]
    restored = checkpointer.restore(2, small_state(0.0))
    np.testing.assert_array_equal(restored["w"], small_state(2)["w"])
    checkpointer.close()
    assert not partial.exists(), "the partial save should be cleaned up when the run restarts"


SLOW_SAVER = textwrap.dedent("""
    import sys, time
    import ml_collections, numpy as np
    from real_jax.training.checkpointing import Checkpointer

    directory = sys.argv[1]
    config = ml_collections.ConfigDict({"name": "killed"})
    small = {f"w{i}": np.full((64, 64), 1.0, np.float32) for i in range(64)}
    checkpointer = Checkpointer(directory, keep=10, best_metric=None)
    checkpointer.save(1, small, None, config)
    checkpointer.wait_until_finished()
    # 256 MB of incompressible data: the asynchronous write of step 2 takes a while
    big = {f"w{i}": np.random.default_rng(i).random((1024, 2048), np.float32) for i in range(32)}
    checkpointer.save(2, big, None, config)
    print("saving step 2", flush=True)
    time.sleep(600)
""")


def start_saver(script: str, directory: Path) -> subprocess.Popen:
    """`script` in a process of its own, saving into `directory`; its output in one pipe."""
    return subprocess.Popen([sys.executable, "-c", script, str(directory)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_kill_9_during_async_save_resumes_from_last_complete_step(tmp_path):
    directory = tmp_path / "checkpoints"
    saver = start_saver(SLOW_SAVER, directory)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and saver.poll() is None:
            if list(directory.glob("2.orbax-checkpoint-tmp*")):
                break
            time.sleep(0.01)
        in_flight = list(directory.glob("2.orbax-checkpoint-tmp*"))
        os.kill(saver.pid, signal.SIGKILL)
    finally:
        saver.kill()
        output = saver.communicate()[0]
    assert in_flight, f"step 2's save never started:\n{output[-3000:]}"
    assert not (directory / "2").exists(), "the save finished before the kill; make it bigger"

    checkpointer = Checkpointer(directory, keep=10, best_metric=None, async_save=False)
    assert checkpointer.latest_step() == 1
    state = {f"w{i}": np.zeros((64, 64), np.float32) for i in range(64)}
    restored = checkpointer.restore(1, state)
    np.testing.assert_array_equal(restored["w0"], np.ones((64, 64), np.float32))
    checkpointer.close()
    assert not list(directory.glob("2.orbax-checkpoint-tmp*"))


def test_damaged_checkpoint_error_names_step_path_and_way_out(tmp_path):
    directory = tmp_path / "checkpoints"
    save_steps(directory, [1, 2])
    for path in (directory / "2" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk

    checkpointer = Checkpointer(directory, keep=10, best_metric=None, async_save=False)
    assert checkpointer.latest_step() == 2
    with pytest.raises(CheckpointRestoreError) as error:
        checkpointer.restore(2, small_state(0.0))
    message = str(error.value)
    assert "checkpoint step 2" in message and str(directory.absolute() / "2") in message
    assert "resume from step 1" in message
    # the earlier checkpoint is intact, and is what the next run uses once 2 is moved away
    shutil.move(directory / "2", tmp_path / "damaged_2")
    checkpointer.close()
    checkpointer = Checkpointer(directory, keep=10, best_metric=None, async_save=False)
    assert checkpointer.latest_step() == 1
    np.testing.assert_array_equal(checkpointer.restore(1, small_state(0.0))["w"],
                                  small_state(1)["w"])
    checkpointer.close()


FAST_SAVER = textwrap.dedent("""
    import sys
    import ml_collections, numpy as np
    from real_jax.training.checkpointing import Checkpointer

    config = ml_collections.ConfigDict({"name": "fast"})
    checkpointer = Checkpointer(sys.argv[1], keep=2, best_metric="loss")
    for step in range(1, 100_000):  # a save every step, as with checkpoint_every_steps=1
        state = {"w": np.full((64, 64), step, np.float32), "b": np.arange(8, dtype=np.int32)}
        checkpointer.save(step, state, None, config, metrics={"loss": float(step)})
""")


def test_readers_get_a_complete_step_while_the_job_deletes_old_ones(tmp_path):
    """Orbax lists the steps and reads each one's metadata, and the job deletes all but the
    last two as it saves: listing, picking and restoring each race a deletion."""
    directory = tmp_path / "checkpoints"
    saver = start_saver(FAST_SAVER, directory)
    try:
        deadline = time.time() + 300
        while saver.poll() is None and time.time() < deadline and not (directory / "5").exists():
            time.sleep(0.01)
        restored_steps = []
        for _ in range(40):
            assert saver.poll() is None, saver.communicate()[0][-3000:]
            reader = Checkpointer(directory, keep=2, best_metric="loss", read_only=True)
            step, state = restore_newest(reader, functools.partial(reader.restore,
                                                                   abstract_state=small_state(0)))
            _, config = restore_newest(reader, reader.restore_config)
            reader.close()
            np.testing.assert_array_equal(state["w"], small_state(step)["w"])
            assert config == {"name": "fast"}
            restored_steps.append(step)
    finally:
        saver.kill()
        output = saver.communicate()[0]
    assert restored_steps == sorted(restored_steps), output[-3000:]
    assert restored_steps[-1] > restored_steps[0] + 10, "the job hardly saved: no race was run"
