"""Soak test: the tiny preset trains for a long while, evaluating and checkpointing about once a
minute, and its resident memory must not grow. A script to run by hand (Linux: reads /proc),
not a CI test:

    python launch/soak.py                 # 10 minutes of training, then the verdict
    python launch/soak.py --minutes 2     # a quick check that the script works

Two runs of `python -m real_jax.main`, the second resuming the first, so the soak also goes
through a preemption and a resume:

1. calibration: train without evaluation or checkpoints for `--calibrate_secs`, measure the step
   rate from `metrics.jsonl`, then SIGTERM (a checkpoint is saved; the run must exit 0);
2. soak: resume with `eval_every_steps = checkpoint_every_steps =` one minute of steps, for
   `--minutes` after its first logged step, sampling the resident memory (RSS, the process and
   its children) every `--sample_secs`; SIGTERM at the end, exit 0 expected.

The verdict compares the median RSS and open file descriptors (the process and its children) of
the first and last fifth of the soak after its first evaluation and checkpoint (compilation and
first-use allocations excluded) and fits an RSS slope; exit status 1 when RSS grows more than
`--max_growth_mb` or open files more than `--max_open_files_growth`. It also prints the step
rate (steps/s from metrics.jsonl) of the first and last fifth of the soak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEVER = 10**9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak length (training)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "soak")
    parser.add_argument("--calibrate_secs", type=float, default=60.0)
    parser.add_argument("--sample_secs", type=float, default=5.0)
    parser.add_argument("--max_growth_mb", type=float, default=64.0)
    parser.add_argument("--max_open_files_growth", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep an existing workdir")
    parser.add_argument("extra", nargs="*", help="more flags for real_jax.main")
    return parser.parse_args(argv)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MiB (0 once it has exited)."""
    total = 0
    for current in process_tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def open_files(pid: int) -> int:
    """Open file descriptors of `pid` and all its descendants."""
    total = 0
    for current in process_tree(pid):
        with contextlib.suppress(OSError):  # it exited meanwhile
            total += len(list(Path(f"/proc/{current}/fd").iterdir()))
    return total


def metric_rows(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_rows(workdir: Path, after_step: int = -1) -> list[dict]:
    return [r for r in metric_rows(workdir) if "train/loss" in r and r["step"] > after_step]


def command(workdir: Path, every: int, extra: list[str]) -> list[str]:
    data = workdir / "data"
    return [sys.executable, "-m", "real_jax.main", "--config=configs/real.py:tiny",
            f"--workdir={workdir / 'run'}", f"--config.train.num_train_steps={NEVER}",
            "--config.train.log_every_steps=10", f"--config.train.eval_every_steps={every}",
            f"--config.train.checkpoint_every_steps={every}",
            f"--config.data.dir={data / 'prepared'}",
            f"--config.data.synthetic_source={data / 'raw'}",
            "--config.data.synthetic_subjects=64", *extra]


def stop(process: subprocess.Popen, what: str) -> None:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=600)
    if code != 0:
        raise SystemExit(f"{what}: exit status {code} after SIGTERM (expected 0); see the log")


def wait_for_steps(process: subprocess.Popen, run: Path, after_step: int, log: Path) -> None:
    while not train_rows(run, after_step):
        if process.poll() is not None:
            raise SystemExit(f"real_jax.main exited with {process.returncode}; see {log}")
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir.exists() and not args.keep:
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    run = args.workdir / "run"
    log_path = args.workdir / "soak.log"
    log = open(log_path, "a")  # noqa: SIM115 -- open for both runs

    print(f"calibrating the step rate ({args.calibrate_secs:.0f} s of training) ...", flush=True)
    calibration = subprocess.Popen(command(args.workdir, NEVER, args.extra), cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT)
    wait_for_steps(calibration, run, -1, log_path)
    time.sleep(args.calibrate_secs)
    rows = train_rows(run)
    stop(calibration, "calibration run")
    rate = (rows[-1]["step"] - rows[0]["step"]) / max(rows[-1]["time"] - rows[0]["time"], 1e-9)
    every = max(10, int(rate * 60))
    resumed_at = max(r["step"] for r in train_rows(run))
    print(f"{rate:.1f} steps/s: evaluating and checkpointing every {every} steps; preempted "
          f"at step {resumed_at}, resuming", flush=True)

    soak = subprocess.Popen(command(args.workdir, every, args.extra), cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    wait_for_steps(soak, run, resumed_at, log_path)
    start = time.time()
    samples: list[tuple[float, float, int]] = []
    while time.time() - start < args.minutes * 60:
        if soak.poll() is not None:
            raise SystemExit(f"real_jax.main exited with {soak.returncode}; see {log_path}")
        samples.append((time.time() - start, rss_mb(soak.pid), open_files(soak.pid)))
        time.sleep(args.sample_secs)
    stop(soak, "soak run")
    log.close()
    return report(args, run, samples, resumed_at, start)


def steps_per_second(rows: list[dict]) -> float:
    if len(rows) < 2:
        return float("nan")
    return (rows[-1]["step"] - rows[0]["step"]) / max(rows[-1]["time"] - rows[0]["time"], 1e-9)


def report(args: argparse.Namespace, run: Path, samples: list[tuple[float, float, int]],
           resumed_at: int, start: float) -> int:
    """Prints the evaluation cadence, the RSS, open-file and step-rate figures; 1 when the
    memory or the open files grew."""
    rows = metric_rows(run)
    evals = [r for r in rows if r["step"] > resumed_at and any(k.startswith("eval/") for k in r)]
    checkpoints = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    eval_times = [r["time"] for r in evals]
    gaps = [b - a for a, b in zip(eval_times, eval_times[1:], strict=False)]
    print(f"soak: {len(samples)} RSS samples over {samples[-1][0] / 60:.1f} min, "
          f"{len(evals)} evaluations (every {statistics.mean(gaps) if gaps else float('nan'):.0f}"
          f" s), checkpoints kept {checkpoints}")
    # steady state: after the soak's first evaluation + checkpoint (first-use allocations)
    first_eval = eval_times[0] - start if eval_times else 0.0
    steady = [(t, m) for t, m, _ in samples if t > first_eval + args.sample_secs] or \
        [(t, m) for t, m, _ in samples]
    fifth = max(1, len(steady) // 5)
    begin = statistics.median(m for _, m in steady[:fifth])
    end = statistics.median(m for _, m in steady[-fifth:])
    slope = 0.0
    if len(steady) > 2:
        ts, ms = [t for t, _ in steady], [m for _, m in steady]
        t_mean, m_mean = statistics.mean(ts), statistics.mean(ms)
        slope = (sum((t - t_mean) * (m - m_mean) for t, m in steady)
                 / max(sum((t - t_mean) ** 2 for t in ts), 1e-9)) * 60
    peak = max(m for _, m, _ in samples)
    print(f"RSS MiB: first {samples[0][1]:.0f}, steady-state start {begin:.0f}, end {end:.0f}, "
          f"peak {peak:.0f}; growth {end - begin:+.0f} MiB, slope {slope:+.1f} MiB/min")
    fds = [f for t, _, f in samples if t > first_eval + args.sample_secs] or \
        [f for _, _, f in samples]
    fifth_fds = max(1, len(fds) // 5)
    fds_begin = statistics.median(fds[:fifth_fds])
    fds_end = statistics.median(fds[-fifth_fds:])
    print(f"open files: first {samples[0][2]}, steady-state start {fds_begin:.0f}, end "
          f"{fds_end:.0f}, most {max(f for _, _, f in samples)}")
    trained = train_rows(run, resumed_at)
    fifth_rows = max(2, len(trained) // 5)
    print(f"steps/s: first fifth {steps_per_second(trained[:fifth_rows]):.2f}, last fifth "
          f"{steps_per_second(trained[-fifth_rows:]):.2f}")
    grew = end - begin > args.max_growth_mb
    leaked = fds_end - fds_begin > args.max_open_files_growth
    print("verdict:", "flat" if not (grew or leaked) else
          f"GROWS (RSS > {args.max_growth_mb:.0f} MiB or open files > "
          f"{args.max_open_files_growth})")
    return 1 if grew or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
