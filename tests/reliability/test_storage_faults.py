"""A checkpoint that cannot be written (the disk fills up mid-run) stops the run with one clear
error; the previous checkpoint stays the latest and usable, and the same command resumes from it.

The full disk is real write failures: once the first checkpoint is complete, the running job's
file-size limit (RLIMIT_FSIZE, set from outside with prlimit) drops below the size of a
checkpoint's array files, so its next save gets EFBIG from the kernel as it would ENOSPC from a
full disk. The logs and metrics.jsonl stay far below the limit; SIGXFSZ is ignored so the write
fails instead of killing the process.
"""

import resource
import signal
import subprocess
import threading
import time

import jax

from real_jax.apps.driver import _is_collective_failure
from real_jax.training.checkpointing import CheckpointSaveError
from tests.runs import REPO, STEPS, checkpoint_steps, main_command, partial_saves, run

FIRST_CHECKPOINT = 4
# The failed save of step 8 is reported by the save of step 12; the run must not reach its last
# step (STEPS) before that, whose evaluation writes a figure larger than the limit.
assert STEPS >= 4 * FIRST_CHECKPOINT
FILE_SIZE_LIMIT = 100_000  # bytes: the tiny preset's checkpoint array files are 120-650 kB


def test_failed_checkpoint_write_stops_the_run_and_the_previous_one_resumes(prepared, tmp_path):
    workdir = tmp_path / "run"
    command = main_command(workdir, prepared,
                           f"--config.train.checkpoint_every_steps={FIRST_CHECKPOINT}")
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, preexec_fn=lambda: signal.signal(signal.SIGXFSZ,
                                                                       signal.SIG_IGN))
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(job.stdout), daemon=True)
    reader.start()  # a pipe, not a file: the job's own size limit does not apply to it
    deadline = time.time() + 600
    while not (workdir / "checkpoints" / str(FIRST_CHECKPOINT)).is_dir():
        assert job.poll() is None and time.time() < deadline, "".join(output)[-5000:]
        time.sleep(0.01)
    resource.prlimit(job.pid, resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    status = job.wait(timeout=600)
    reader.join(timeout=30)
    text = "".join(output)

    assert status == 1, text[-5000:]
    error = text[text.index("error: could not write checkpoint step"):]
    assert f"step {2 * FIRST_CHECKPOINT} to {workdir.absolute() / 'checkpoints'}" in error
    assert "File too large" in error, error
    assert f"the latest complete checkpoint is step {FIRST_CHECKPOINT} (untouched)" in error
    assert checkpoint_steps(workdir) == [FIRST_CHECKPOINT]

    resumed = run(command)
    assert f"at step {FIRST_CHECKPOINT}" in resumed.stderr
    assert checkpoint_steps(workdir)[-1] == STEPS and not partial_saves(workdir)


def test_a_save_failed_by_a_lost_process_is_not_reported_as_storage():
    """In a multi-process job Orbax syncs the processes around each save: a process that dies
    then fails the survivors' save with a collective's error, which means "resume the job", not
    "fix the storage" (real_jax/apps/driver.py)."""
    lost = ValueError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/"
                      "pair.cc:538] Read error [127.0.0.1]:3474: Connection reset by peer")
    full = OSError(28, "No space left on device")
    for cause, collective in ((lost, True), (full, False)):
        error = CheckpointSaveError("could not write checkpoint step 8")
        error.__cause__ = cause
        assert _is_collective_failure(error) is collective
    assert _is_collective_failure(jax.errors.JaxRuntimeError("INTERNAL: any collective"))
