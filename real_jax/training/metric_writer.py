"""Training logs: console lines, TensorBoard event files and a JSONL metrics log.

Only process 0 writes; on other processes every call is a no-op, so callers need not check.

`metrics.jsonl` after a resume: the run that resumes from the checkpoint of step K rewrites
what came after K. On opening, lines of steps after K (logged by the run that was stopped before
it could save them) are dropped, and so is a last line cut short by a kill; the resumed run then
logs those steps again. So the file holds each logged step once, in order, whatever the kills.
"""

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif np.ndim(value) == 0 and isinstance(np.asarray(value).item(), int | float | bool):
            flat[name] = float(np.asarray(value))
    return flat


def trim_metrics_log(path: Path, last_step: int) -> tuple[int, bool]:
    """Keeps the complete lines of `path` whose step is at most `last_step` (atomically).

    Returns (lines dropped for steps after `last_step`, whether a cut-short line was dropped).
    """
    if not path.is_file():
        return 0, False
    text = path.read_text()
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]  # `tail` is "" when the file ends with a newline
    kept = [line for line in complete if line.strip() and json.loads(line)["step"] <= last_step]
    dropped = sum(1 for line in complete if line.strip()) - len(kept)
    if dropped or tail:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped, bool(tail)


def _summary_writer_class() -> type:
    """tensorboardX's `SummaryWriter`, imported without PyTorch where PyTorch is not loaded yet.

    tensorboardX's writer imports torch whenever it is installed, only to accept torch tensors;
    this writes Python floats, and the import cost ~2 s of every training start on a 2-core
    machine. While the module loads, `import torch` fails (a `None` entry in `sys.modules` means
    "not importable"), so tensorboardX takes its no-torch path; the entry is then removed and
    torch imports normally later in the process.
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard/`, logs them too.

    `resume_step`: the step training starts from; logged steps after it are rewritten (module
    docstring).
    """

    def __init__(self, workdir: str | Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self._tensorboard = None
        if enabled:
            SummaryWriter = _summary_writer_class()
            Path(workdir).mkdir(parents=True, exist_ok=True)
            path = Path(workdir) / "metrics.jsonl"
            dropped, cut_short = trim_metrics_log(path, resume_step)
            if dropped or cut_short:
                logging.warning("metrics.jsonl: dropped %d lines after step %d%s; this run logs "
                                "those steps again", dropped, resume_step,
                                " and a line cut short by a kill" if cut_short else "")
            self._jsonl = open(path, "a")  # noqa: SIM115
            self._tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        """Logs nested scalar metrics as `prefix/key/...`; returns the flattened dict."""
        flat = _flatten(metrics, prefix)
        if not self.enabled:
            return flat
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **flat}) + "\n")
        self._jsonl.flush()
        for name, value in flat.items():
            self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()
        return flat

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()


class Progress:
    """Console progress: steps/s and ETA over the last logging interval."""

    def __init__(self, total_steps: int, first_step: int) -> None:
        self.total_steps = total_steps
        self._last_step, self._last_time = first_step, time.perf_counter()

    def line(self, step: int, metrics: Mapping[str, float]) -> str:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        parts = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                         if k.startswith("loss") or k in ("grad_norm", "learning_rate"))
        return (f"step {step}/{self.total_steps} {rate:.2f} steps/s ETA {eta / 60:.1f} min "
                f"{parts}")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        logging.info("%s", self.line(step, metrics))
