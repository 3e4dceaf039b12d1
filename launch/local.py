"""Starts N JAX processes on this machine, each with its own forced CPU devices, for testing and
debugging the multi-host code path (gloo collectives between the processes).

    python launch/local.py --num_processes 2 --devices_per_process 2 -- \
        --config=configs/real.py:tiny --workdir=runs/multihost

Everything after `--` goes to every process's `python -m real_jax.main` (or `--module`), followed
by `--coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i`. Process i's output
is prefixed with `[i]` (and also written to `--log_dir/process_i.log` when given). If one process
fails, the others are stopped; the exit status is the first non-zero one.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_env(devices_per_process: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one process: CPU platform with `devices_per_process` devices."""
    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(
        [*flags, f"--xla_force_host_platform_device_count={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def commands(module: str, num_processes: int, port: int, args: list[str]) -> list[list[str]]:
    return [[sys.executable, "-m", module, *args, f"--coordinator_address=127.0.0.1:{port}",
             f"--num_processes={num_processes}", f"--process_id={i}"]
            for i in range(num_processes)]


def _pump(index: int, stream: IO[str], log: IO[str] | None) -> None:
    for line in stream:
        sys.stdout.write(f"[{index}] {line}")
        sys.stdout.flush()
        if log is not None:
            log.write(line)
            log.flush()


def launch(num_processes: int, devices_per_process: int, args: list[str], *,
           module: str = "real_jax.main", log_dir: Path | None = None,
           timeout: float | None = None) -> int:
    """Runs the processes to completion; returns 0 or the first failing exit status."""
    port = free_port()
    env = process_env(devices_per_process)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    threads = []
    logs = []
    for i, command in enumerate(commands(module, num_processes, port, args)):
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        log = open(log_dir / f"process_{i}.log", "w") if log_dir is not None else None  # noqa: SIM115
        logs.append(log)
        thread = threading.Thread(target=_pump, args=(i, proc.stdout, log), daemon=True)
        thread.start()
        procs.append(proc)
        threads.append(thread)
    deadline = None if timeout is None else time.monotonic() + timeout
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed or (deadline is not None and time.monotonic() > deadline):
                status = failed[0] if failed else 124
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in threads:
            t.join(timeout=5)
        for log in logs:
            if log is not None:
                log.close()
    if status == 0:
        status = next((p.returncode for p in procs if p.returncode != 0), 0)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        own, passed = argv[:split], argv[split + 1:]
    else:
        own, passed = argv, []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=2)
    parser.add_argument("--module", default="real_jax.main",
                        help="python module each process runs (python -m MODULE ...)")
    parser.add_argument("--log_dir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=None, help="seconds, then stop all")
    opts = parser.parse_args(own)
    if opts.num_processes < 1 or opts.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be >= 1")
    status = launch(opts.num_processes, opts.devices_per_process, passed, module=opts.module,
                    log_dir=opts.log_dir, timeout=opts.timeout)
    print(f"local launcher: {opts.num_processes} processes x {opts.devices_per_process} CPU "
          f"devices, exit status {status}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
