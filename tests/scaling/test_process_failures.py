"""Two processes (the local launcher's environment, gloo) when only one of them dies or is
signalled, through `python -m real_jax.main` on the tiny preset:

1. SIGKILL to process 0 (the coordinator) mid-run: process 1's next collective fails, and it
   exits within seconds with one line that says what happened and where the job resumes, not a
   hang until a scheduler's limit.
2. Both started again: they resume from the last complete checkpoint, evaluate together, and
   then SIGTERM to one process only stops both at the same step, each exiting 0, with that step
   one complete checkpoint (the stop flag is agreed between the processes every step here).
"""

import re
import signal
import subprocess
import time
from pathlib import Path

from launch.chaos import complete_steps, partial_saves
from launch.local import commands, free_port, process_env

REPO = Path(__file__).resolve().parents[2]
STEPS = 14
CHECKPOINT_EVERY = 4
EVAL_EVERY = 8  # after the resume, before the SIGTERM
EXIT_BOUND_S = 90  # the survivor's exit after the kill: seconds in practice, heartbeat at worst


def train_flags(workdir: Path, data_flags: list[str]) -> list[str]:
    return ["--config=configs/real.py:tiny", f"--workdir={workdir}",
            f"--config.train.num_train_steps={STEPS}",
            f"--config.train.checkpoint_every_steps={CHECKPOINT_EVERY}",
            f"--config.train.eval_every_steps={EVAL_EVERY}", "--config.train.log_every_steps=1",
            "--config.train.stop_check_every_steps=1", "--config.data.eval_limit=8",
            "--config.data.image_size=32", "--config.generation.answer_max_tokens=4",
            # At the restarts process 0 loads the step from the suite's compilation cache in
            # seconds while process 1 compiles it (JAX writes the cache from process 0 only, and
            # a CPU program's key names its devices): the loop's barrier after compiling must
            # absorb that difference (gloo gives up after 30 s).
            *data_flags, "--heartbeat_timeout_seconds=30"]


class Job:
    """Two processes started as launch/local.py starts them, each logging to its own file."""

    def __init__(self, args: list[str], log_dir: Path, name: str) -> None:
        self.logs = [log_dir / f"{name}_process_{i}.log" for i in range(2)]
        env = process_env(1)
        self.procs = []
        for command, log in zip(commands("real_jax.main", 2, free_port(), args), self.logs,
                                strict=True):
            with open(log, "w") as out:
                self.procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                                   stderr=subprocess.STDOUT))

    def text(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait_for_step(self, step: int, timeout: float = 600) -> None:
        self.wait_for(rf"\] step {step}/{STEPS} ", timeout)

    def wait_for(self, pattern: str, timeout: float = 600) -> None:
        """Until process 0 logs `pattern`; fails if a process exits first."""
        deadline = time.time() + timeout
        while not re.search(pattern, self.text(0)):
            assert all(p.poll() is None for p in self.procs) and time.time() < deadline, \
                self.text(0)[-4000:] + self.text(1)[-4000:]
            time.sleep(0.02)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def start(args: list[str], log_dir: Path, name: str) -> Job:
    """A job whose processes have met and trained a step."""
    job = Job(args, log_dir, name)
    try:
        job.wait_for(rf"\] step \d+/{STEPS} ")
    except AssertionError:
        job.stop()
        raise
    return job


def test_one_process_killed_then_both_resume_and_stop_together_on_one_sigterm(scratch, tiny_data):
    _, data_flags = tiny_data
    workdir = scratch / "run"
    args = train_flags(workdir, data_flags)

    job = start(args, scratch, "sigkill")
    try:
        # Mid-step, 3 steps after the first checkpoint, which has been written by then: a kill
        # while the survivor waits in a checkpoint's barrier ends it through JAX's coordination
        # service instead (module docstring of real_jax/apps/driver.py).
        job.wait_for_step(CHECKPOINT_EVERY + 3)
        job.procs[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        survivor = job.procs[1].wait(timeout=300)
        elapsed = time.monotonic() - killed_at
    finally:
        job.stop()
    text = job.text(1)
    assert elapsed < EXIT_BOUND_S, (elapsed, text[-3000:])
    assert survivor != 0
    resume = complete_steps(workdir)[-1]
    assert 0 < resume < EVAL_EVERY
    assert ("error: process 1 of 2: a collective with the other processes failed" in text
            and f"to resume from step {resume}" in text), text[-3000:]

    job = start(args, scratch, "resumed")
    try:
        job.wait_for_step(EVAL_EVERY + 1)  # past the evaluation
        job.procs[1].send_signal(signal.SIGTERM)
        statuses = [p.wait(timeout=300) for p in job.procs]
    finally:
        job.stop()
    logs = job.text(0)[-3000:] + job.text(1)[-3000:]
    assert statuses == [0, 0], logs
    assert re.search(rf"resumed from \S+ at step {resume}\b", job.text(0)), logs
    assert (workdir / "eval" / f"step_{EVAL_EVERY}" / "metrics.json").is_file(), logs
    stopped = [re.search(r"another process received SIGTERM or SIGINT: stopped at step (\d+) of",
                         job.text(0)),
               re.search(r"received SIGTERM: stopped at step (\d+) of", job.text(1))]
    assert all(stopped), logs
    step = int(stopped[0].group(1))
    assert step > EVAL_EVERY and int(stopped[1].group(1)) == step
    assert complete_steps(workdir)[-1] == step and not partial_saves(workdir)
