"""The training iterator with grain worker processes (`data.num_workers = 2`, as the paper preset
runs with 8) checkpointed through the project's `Checkpointer`, its job SIGKILLed after the
save, and restored by a new job: the batches that follow are bitwise those of an uninterrupted
iterator, on the dataset with an undecodable training image (skipped by a worker).

Run as a program, this module is the killed job: `python -m tests.reliability.test_worker_resume
DATA_DIR CHECKPOINT_DIR`.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from configs.real import get_config
from data_pipeline.pipeline import load_tokenizer, make_train_iterator
from real_jax.training.checkpointing import Checkpointer
from tests.runs import REPO

WORKERS, BATCH, SAVED_AT, AFTER = 2, 4, 5, 4  # 5 + 4 batches of 4 cross an epoch of 29


def iterator(data_dir: Path, num_workers: int):
    data = get_config("tiny").data
    data.update(dict(dir=str(data_dir), num_workers=num_workers))
    return make_train_iterator(data, load_tokenizer(data_dir), global_batch_size=BATCH, seed=0)


def checkpointer(directory: Path) -> Checkpointer:
    return Checkpointer(directory, keep=2, best_metric=None)


def killed_job(data_dir: Path, directory: Path) -> None:
    """Reads SAVED_AT batches with workers, saves the iterator, reads on, and is SIGKILLed (its
    workers with it) while the workers are preparing batches past the checkpoint."""
    it = iterator(data_dir, WORKERS)
    for _ in range(SAVED_AT):
        next(it)
    ckpt = checkpointer(directory)
    ckpt.save(SAVED_AT, {"step": np.asarray(SAVED_AT, np.int32)}, it, get_config("tiny"))
    ckpt.wait_until_finished()
    next(it)
    print("saved", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def test_iterator_with_worker_processes_resumes_bitwise_after_a_kill(damaged, tmp_path):
    directory = tmp_path / "checkpoints"
    job = subprocess.run([sys.executable, "-m", "tests.reliability.test_worker_resume",
                          str(damaged), str(directory)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    # `run` returns once the job's output pipes close: its workers, which share them, are
    # gone too, though nothing could stop them (`pipeline._exit_with_parent`).
    assert job.returncode == -signal.SIGKILL and "saved" in job.stdout, job.stderr[-3000:]

    straight = iterator(damaged, WORKERS)
    expected = [next(straight) for _ in range(SAVED_AT + AFTER)][SAVED_AT:]
    resumed = iterator(damaged, WORKERS)
    ckpt = checkpointer(directory)
    assert ckpt.latest_step() == SAVED_AT
    state = ckpt.restore(SAVED_AT, {"step": np.zeros((), np.int32)}, resumed)
    assert int(state["step"]) == SAVED_AT
    for want in expected:
        got = next(resumed)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


if __name__ == "__main__":
    killed_job(Path(sys.argv[1]), Path(sys.argv[2]))
