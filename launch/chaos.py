"""Chaos run: train a small preset while killing it at random moments, restart it each time, then
check that nothing was lost or duplicated against an uninterrupted run of the same config.

    python launch/chaos.py --out runs/chaos --kills 25 [--steps 120] [--seed 0] [-- --config.x=y]

Two workdirs under OUT: `straight/` trains `--steps` steps without interruption; `chaotic/`
trains the same config and is killed `--kills` times, each time with SIGKILL or SIGTERM (drawn at
random) in a phase drawn at random:

- `mid_step`: a few steps after it started, at a random moment within the step;
- `evaluation`: while it evaluates (after "evaluating the ... split" is logged);
- `checkpoint_write`: while an asynchronous checkpoint is being written (its
  `N.orbax-checkpoint-tmp-*` directory exists);
- `final_save`: while the last step's checkpoint is being written (always the last kill).

After each kill the same command starts it again, until a run ends at the last step. Then:
the final checkpoints' train state (parameters, batch statistics, optimizer state, step, RNG,
counters) must be bitwise equal, the data iterators' positions equal, `metrics.jsonl` must hold
the same steps once each in order with the same values (a resumed run rewrites the steps after
its checkpoint: real_jax/training/metric_writer.py), every evaluation's metrics and predictions
equal, and no partial file left in the chaotic workdir (temporary checkpoint directories,
`*.tmp`). TensorBoard event files are not compared: each start opens a new one, as TensorBoard
expects. Writes OUT/chaos.json (every kill, and the comparison) and prints a summary; exit 1 when
the comparison fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHASES = ("mid_step", "evaluation", "checkpoint_write", "final_save")
SIGNALS = ("SIGKILL", "SIGTERM")
RUN_TIMEOUT_S = 900.0


@dataclasses.dataclass
class Kill:
    """One kill: what was asked for and what the run was doing when the signal went out."""

    phase: str
    signal: str
    resumed_from: int  # the step the killed run started from (its latest complete checkpoint)
    last_logged_step: int | None = None
    hit: bool = False  # the phase was in progress when the signal was sent
    exit_status: int | None = None
    stopped_at: int | None = None  # SIGTERM: the step it saved and stopped at, as it logged
    seconds: float = 0.0


def train_command(workdir: Path, steps: int, checkpoint_every: int, eval_every: int,
                  extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "real_jax.main", "--config=configs/real.py:tiny",
            f"--workdir={workdir}", f"--config.train.num_train_steps={steps}",
            "--config.train.log_every_steps=1",
            f"--config.train.checkpoint_every_steps={checkpoint_every}",
            f"--config.train.eval_every_steps={eval_every}", "--config.train.keep_checkpoints=3",
            "--config.data.eval_limit=8", "--config.generation.answer_max_tokens=8", *extra]


def plan(kills: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """`kills` (phase, signal) pairs: every phase once when there is room (final_save last),
    the rest drawn at random; both signals at least once when kills >= 2."""
    middle = list(PHASES[:-1])
    rng.shuffle(middle)
    middle += [str(p) for p in rng.choice(PHASES[:-1], size=max(0, kills - 4))]
    phases = [*middle[:kills - 1], "final_save"] if kills else []
    signals = [str(s) for s in rng.choice(SIGNALS, size=kills)]
    if kills >= 2 and len(set(signals)) == 1:
        signals[int(rng.integers(kills))] = SIGNALS[signals[0] == SIGNALS[0]]
    return list(zip(phases, signals, strict=True))


def complete_steps(workdir: Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def partial_saves(workdir: Path, step: int | None = None) -> set[Path]:
    """Temporary checkpoint directories (of `step`, or any): saves in flight or left by a kill."""
    pattern = f"{step if step is not None else '*'}.orbax-checkpoint-tmp*"
    return set((workdir / "checkpoints").glob(pattern))


def saving(workdir: Path, stale: set[Path], step: int | None = None) -> bool:
    """Whether a checkpoint (of `step`, or any) is being written now. `stale`: the temporary
    directories a killed run left; the restarted run deletes them when it opens the directory
    (seconds before its first save, which may reuse the name), so a stale path seen gone is
    dropped from `stale` (in place) and counts as a save in flight when it comes back."""
    present = partial_saves(workdir)
    stale &= present
    in_flight = present - stale
    return any(step is None or p.name.startswith(f"{step}.") for p in in_flight)


class RunLog:
    """Reads a run's log as it grows."""

    def __init__(self, path: Path) -> None:
        self.path, self.text = path, ""

    def refresh(self) -> str:
        self.text = self.path.read_text(errors="replace") if self.path.exists() else ""
        return self.text

    def last_step(self) -> int | None:
        steps = re.findall(r"\] step (\d+)/\d+ ", self.text)
        return int(steps[-1]) if steps else None


def _trigger(phase: str, workdir: Path, stale: set[Path], log: RunLog, resumed: int, steps: int,
             checkpoint_every: int, eval_every: int, rng: np.random.Generator):
    """A function that returns True once the run is in `phase` (polled every millisecond)."""
    if phase == "mid_step":
        target = min(resumed + int(rng.integers(1, 2 * checkpoint_every + 1)), steps - 1)
        pattern = re.compile(rf"\] step {target}/{steps} ")
        return lambda: bool(pattern.search(log.refresh())), float(rng.uniform(0.0, 0.3))
    if phase == "evaluation":
        target = min((resumed // eval_every + 1) * eval_every, steps)
        marker = f"eval/step_{target}"
        return (lambda: any(marker in line and "evaluating the" in line
                            for line in log.refresh().splitlines()),
                float(rng.uniform(0.0, 0.5)))
    if phase == "checkpoint_write":
        target = min((resumed // checkpoint_every + 1) * checkpoint_every, steps)
        return lambda: saving(workdir, stale, target), 0.0
    return lambda: saving(workdir, stale, steps), 0.0


def kill_once(command: list[str], workdir: Path, log_path: Path, phase: str, signal_name: str,
              steps: int, checkpoint_every: int, eval_every: int,
              rng: np.random.Generator) -> Kill:
    """Starts the run, sends `signal_name` once it is in `phase`, waits for it to exit."""
    done = complete_steps(workdir)
    kill = Kill(phase, signal_name, resumed_from=done[-1] if done else 0)
    log = RunLog(log_path)
    stale = partial_saves(workdir)
    ready, delay = _trigger(phase, workdir, stale, log, kill.resumed_from, steps,
                            checkpoint_every, eval_every, rng)
    start = time.monotonic()
    with open(log_path, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None and time.monotonic() - start < RUN_TIMEOUT_S:
                if ready():
                    time.sleep(delay)
                    kill.hit = (_in_phase(phase, workdir, stale, log, steps)
                                and process.poll() is None)
                    kill.last_logged_step = log.last_step()
                    process.send_signal(getattr(signal, signal_name))
                    break
                time.sleep(0.001)
            kill.exit_status = process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    kill.seconds = time.monotonic() - start
    stopped = re.search(r"stopped at step (\d+) of \d+ with a complete checkpoint",
                        log.refresh())
    kill.stopped_at = int(stopped.group(1)) if stopped else None
    return kill


def _in_phase(phase: str, workdir: Path, stale: set[Path], log: RunLog, steps: int) -> bool:
    text = log.refresh()
    if phase == "checkpoint_write":
        return saving(workdir, stale)
    if phase == "evaluation":
        return text.count("evaluating the") > text.count("evaluated ")
    if phase == "final_save":
        return steps not in complete_steps(workdir)
    return log.last_step() is not None and log.last_step() < steps


def run_to_end(command: list[str], log_path: Path) -> int:
    with open(log_path, "w") as out:
        return subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              timeout=RUN_TIMEOUT_S).returncode


def compare(straight: Path, chaotic: Path, steps: int) -> dict[str, Any]:
    """Every check of the module docstring; `ok` is their conjunction."""
    import orbax.checkpoint as ocp

    def state(workdir: Path) -> dict[str, np.ndarray]:
        restored = ocp.PyTreeCheckpointer().restore(
            (workdir / "checkpoints" / str(steps) / "state").absolute())
        return {"/".join(map(str, k)): np.asarray(v)
                for k, v in ocp.tree.to_flat_dict(restored).items()}

    def iterator(workdir: Path) -> list[str]:
        directory = workdir / "checkpoints" / str(steps) / "data_iterator"
        return [p.read_text() for p in sorted(directory.glob("process_*"))]

    def metrics_log(workdir: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (workdir / "metrics.jsonl").read_text().splitlines() if line]

    def evaluations(workdir: Path) -> dict[str, str]:
        return {str(p.relative_to(workdir)): p.read_text()
                for p in sorted(workdir.glob("eval/step_*/*")) if p.suffix in (".json", ".jsonl")}

    a, b = state(straight), state(chaotic)
    differing = sorted(k for k in a.keys() | b.keys()
                       if k not in a or k not in b or a[k].dtype != b[k].dtype
                       or a[k].tobytes() != b[k].tobytes())
    rows_a, rows_b = metrics_log(straight), metrics_log(chaotic)
    once_in_order = True
    for kind in ("train/", "eval/"):
        logged = [row["step"] for row in rows_b if any(k.startswith(kind) for k in row)]
        once_in_order &= logged == sorted(set(logged))
    leftovers = sorted(str(p.relative_to(chaotic)) for p in chaotic.rglob("*")
                       if p.name.endswith(".tmp") or ".orbax-checkpoint-tmp" in p.name)
    result = {
        "state_arrays": len(a),
        "state_arrays_differing": differing,
        "iterator_equal": iterator(straight) == iterator(chaotic) != [],
        "metrics_lines": len(rows_b),
        "metrics_steps_in_order_once": once_in_order,
        "metrics_equal": rows_a == rows_b,
        "evaluations_equal": evaluations(straight) == evaluations(chaotic) != {},
        "leftovers": leftovers,
    }
    result["ok"] = (not differing and result["iterator_equal"]
                    and result["metrics_steps_in_order_once"] and result["metrics_equal"]
                    and result["evaluations_equal"] and not leftovers)
    return result


def run_chaos(out: Path, *, kills: int = 25, steps: int | None = None, checkpoint_every: int = 2,
              eval_every: int = 10, seed: int = 0, extra: list[str] | None = None
              ) -> dict[str, Any]:
    """The whole experiment (module docstring); returns what OUT/chaos.json holds."""
    extra = list(extra or [])
    steps = steps if steps is not None else 4 * kills + 20
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    straight, chaotic = out / "straight", out / "chaotic"
    if steps not in complete_steps(straight):
        status = run_to_end(train_command(straight, steps, checkpoint_every, eval_every, extra),
                            out / "straight.log")
        if status != 0:
            raise RuntimeError(f"the uninterrupted run failed (exit {status}): see "
                               f"{out / 'straight.log'}")
    command = train_command(chaotic, steps, checkpoint_every, eval_every, extra)
    start = time.monotonic()
    done: list[Kill] = []
    for number, (phase, signal_name) in enumerate(plan(kills, rng)):
        if steps in complete_steps(chaotic):
            break  # an earlier kill came after the final save: nothing left to interrupt
        kill = kill_once(command, chaotic, out / f"chaotic_{number:02d}.log", phase, signal_name,
                         steps, checkpoint_every, eval_every, rng)
        done.append(kill)
        print(f"kill {number + 1}/{kills}: {signal_name} {phase} after step "
              f"{kill.last_logged_step} (started at {kill.resumed_from}, hit={kill.hit}, "
              f"exit {kill.exit_status}, {kill.seconds:.0f} s)", flush=True)
    if steps not in complete_steps(chaotic):
        status = run_to_end(command, out / "chaotic_final.log")
        if status != 0:
            raise RuntimeError(f"the last restart failed (exit {status}): see "
                               f"{out / 'chaotic_final.log'}")
    report = {
        "steps": steps, "checkpoint_every": checkpoint_every, "eval_every": eval_every,
        "seed": seed, "kills": [dataclasses.asdict(k) for k in done],
        "kills_by_phase": {f"{p} {s}": n for (p, s), n in
                           sorted(Counter((k.phase, k.signal) for k in done).items())},
        "phase_hits": sum(k.hit for k in done),
        "chaotic_wall_seconds": round(time.monotonic() - start, 1),
        "comparison": compare(straight, chaotic, steps),
    }
    (out / "chaos.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "chaos")
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--steps", type=int, default=None, help="default: 4 x kills + 20")
    parser.add_argument("--checkpoint_every", type=int, default=2)
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args(argv[:split])
    report = run_chaos(opts.out, kills=opts.kills, steps=opts.steps,
                       checkpoint_every=opts.checkpoint_every, eval_every=opts.eval_every,
                       seed=opts.seed, extra=argv[split + 1:])
    comparison = report["comparison"]
    print(json.dumps({"kills_by_phase": report["kills_by_phase"],
                      "phase_hits": f"{report['phase_hits']}/{len(report['kills'])}",
                      "chaotic_wall_seconds": report["chaotic_wall_seconds"],
                      **comparison}, indent=2))
    return 0 if comparison["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
