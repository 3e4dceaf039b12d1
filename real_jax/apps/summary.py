"""How a run went, for a person: the latest validation and test scores of the difference
subset beside the text-only prior, where the outputs are, and the next commands.

`make demo` ends with `python -m real_jax.summary --workdir=runs/synthetic`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

COLUMNS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "exact_match")
# The same small model trained on blank images (`model.blank_images=True`), synthetic test split,
# 1,500 steps: what the answers score without looking at the images (README, "Results").
TEXT_ONLY_PRIOR = {"BLEU-1": 0.010, "BLEU-4": 0.000, "METEOR": 0.068, "ROUGE-L": 0.301,
                   "CIDEr": 1.473, "exact_match": 0.194}


def latest_evaluation(directory: Path) -> tuple[int, Path] | None:
    """`(step, metrics.json)` of the highest `step_N` under `directory` that has scores."""
    found = []
    for path in directory.glob("step_*/metrics.json"):
        match = re.fullmatch(r"step_(\d+)", path.parent.name)
        if match:
            found.append((int(match.group(1)), path))
    return max(found) if found else None


def _row(name: str, metrics: dict[str, Any]) -> str:
    cells = [f"{metrics[c]:.3f}" if c in metrics else "n/a" for c in COLUMNS]
    return f"| {name} | " + " | ".join(cells) + " |"


def run_summary(workdir: str | Path, *, config_flag: str = "configs/real.py:synthetic") -> str:
    """The summary text for `workdir` (a `real_jax.main` training workdir).

    `config_flag` is the `--config` the run used, for the commands it suggests.
    """
    workdir = Path(workdir)
    lines = [f"Run {workdir}: difference subset", "",
             "| split (step) | " + " | ".join(COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    evaluations = {"val": latest_evaluation(workdir / "eval"),
                   "test": latest_evaluation(workdir / "eval_test")}
    figure = None
    for split, found in evaluations.items():
        if found is None:
            lines.append(f"| {split} | " + " | ".join("not evaluated" for _ in COLUMNS) + " |")
            continue
        step, path = found
        scores = json.loads(path.read_text()).get("difference", {})
        lines.append(_row(f"{split} ({step})", scores))
        figure = figure or path.parent / "examples.png"
    lines.append(_row("text-only prior (test, README)", TEXT_ONLY_PRIOR))
    command = f"python -m real_jax.main --config={config_flag} --workdir={workdir}"
    lines += [
        "",
        "Outputs:",
        f"  checkpoints          {workdir / 'checkpoints'}",
        f"  training log         {workdir / 'metrics.jsonl'} (TensorBoard: tensorboard "
        f"--logdir={workdir / 'tensorboard'})",
        f"  predictions, figure  {figure.parent if figure else workdir / 'eval'}/"
        "{predictions.jsonl,metrics.json,examples.png}",
        "",
        "Next:",
        f"  evaluate another split   {command} --mode=evaluate --split=test",
        f"  answer your own pair     python -m real_jax.predict --workdir={workdir} "
        "--ref=OLD.png --main=NEW.png --heatmap=why.png",
        f"  export to PyTorch        python -m real_jax.export --workdir={workdir} "
        f"--out={workdir / 'torch'}",
    ]
    return "\n".join(lines)
