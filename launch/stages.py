"""One stage of `launch/rehearsal.py`: a command run as a subprocess in a session of its own,
with its wall time, exit status, memory and leftovers measured, and optionally killed once a
condition holds.

    stage = run_stage("train", [sys.executable, "-m", "real_jax.main", ...], log_path, env,
                      kill_when=lambda: bool(complete_steps(workdir)))

Memory, two figures read from `/proc` every `SAMPLE_S` seconds while the command runs (Linux
only):
- `peak_rss_mb`: the command's own peak resident set (its `VmHWM`, a high-water mark kept by the
  kernel, so only growth in the last interval before it exits can be missed). Not
  `getrusage`/`wait4`'s `ru_maxrss`: Linux counts there the parent's memory that the forked
  child held until it called exec, i.e. this orchestrator's, whatever the command used;
- `peak_group_rss_mb`: the largest sum of resident sets over the stage's processes (the command
  and, say, its grain workers) at one sample; a short peak between samples is missed, and pages
  shared between processes count once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_S = 0.5
POLL_S = 0.05
# How long the processes a stage started may outlive it before they count as left over (ours:
# grain's worker processes notice a dead parent within seconds).
LEFTOVER_GRACE_S = 10.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass
class Stage:
    """What one command did. `exit_status` is negative for a signal (-9: SIGKILL)."""

    name: str
    command: list[str]
    log: str
    wall_s: float = 0.0
    exit_status: int | None = None
    peak_rss_mb: float | None = None
    peak_group_rss_mb: float | None = None
    killed: bool = False  # by `kill_when`
    timed_out: bool = False
    # processes of the stage's session still alive LEFTOVER_GRACE_S after the command ended
    # (then killed): orphans, e.g. data-loading workers of a killed trainer
    leftover_processes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out


def group_processes(group: int) -> dict[int, tuple[str, int]]:
    """`{pid: (name, resident bytes)}` of the live processes whose process group is `group`."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp ... rss ...": comm may hold spaces and parentheses
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == group and fields[0] != "Z":
            found[int(entry.name)] = (name, int(fields[21]) * PAGE_BYTES)
    return found


def high_water_mark(pid: int) -> int:
    """Peak resident bytes of process `pid` since it last called exec (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return 0  # a zombie: no memory left


def run_stage(name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str], *,
              kill_when: Callable[[], bool] | None = None, timeout_s: float = 3600.0,
              cwd: Path = REPO, stdout_path: Path | None = None) -> Stage:
    """Runs `command` (stderr to `log_path`, stdout too unless `stdout_path` is given) until
    it exits; sends it SIGKILL once
    `kill_when()` is true (polled every POLL_S seconds), or, with every process of its session,
    after `timeout_s`. Then waits up to LEFTOVER_GRACE_S for the session's other processes to
    end, records those that did not, and kills them."""
    stage = Stage(name, [str(c) for c in command], str(log_path))
    start = time.monotonic()
    with open(log_path, "w") as log, open(stdout_path or os.devnull, "w") as out:
        process = subprocess.Popen(stage.command, cwd=cwd, env=dict(env),
                                   stdout=out if stdout_path else log, stderr=log,
                                   start_new_session=True)
    group = process.pid  # start_new_session: the command leads its own process group
    peak_group = peak_own = 0
    next_sample = 0.0
    try:
        while True:
            pid, status = os.waitpid(process.pid, os.WNOHANG)
            if pid:
                break
            now = time.monotonic()
            if now >= next_sample:
                peak_group = max(peak_group, sum(r for _, r in group_processes(group).values()))
                peak_own = max(peak_own, high_water_mark(process.pid))
                next_sample = now + SAMPLE_S
            if kill_when is not None and not stage.killed and kill_when():
                os.kill(process.pid, signal.SIGKILL)
                stage.killed = True
            if not stage.timed_out and now - start > timeout_s:
                os.killpg(group, signal.SIGKILL)
                stage.timed_out = True
            time.sleep(POLL_S)
    except BaseException:  # interrupted (e.g. `timeout`'s SIGTERM): take the stage down too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        raise
    process.returncode = stage.exit_status = os.waitstatus_to_exitcode(status)
    stage.wall_s = round(time.monotonic() - start, 1)
    stage.peak_rss_mb = round(peak_own / 2**20, 1)
    stage.peak_group_rss_mb = round(peak_group / 2**20, 1)
    stage.leftover_processes = _reap_leftovers(group)
    return stage


def _reap_leftovers(group: int) -> list[str]:
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := group_processes(group)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGKILL)
    return [f"{pid} {name}" for pid, (name, _) in sorted(left.items())]
