"""Seeded ablation: config rows x seeds, each trained and scored on the test split, summarised as
mean +- std over seeds and as paired differences to a base row.

    python launch/ablation.py --out runs/ablation [--steps N] [--seeds 0 1 2] [--jobs 1]
        [--rows baseline residual_input real ...] [--preset ablation] [--summarise_only]
        [-- --config.x=y ...]

Every row is a set of `--config.*` overrides of one preset (`ROWS`; the default preset,
`configs/real.py:ablation`, is the demo's model on synthetic studies whose findings persist and
change level, so that a difference answer needs both images). Run (row, seed) trains `--steps`
steps with `--config.seed=seed` in `OUT/<row>/seed_<seed>` and scores its last checkpoint on the
test split (the training run's only evaluation; no checkpoint is chosen on it). `--steps`
defaults to the preset's `train.num_train_steps`. All runs read the
same prepared dataset, made once before any run starts, so that seed k of every row sees the
same data in the same order and starts from the same initial weights for the parameters the rows
share: the paired difference `row - base` at seed k isolates the row's change.

A run whose scores exist is reused, and a run that was killed resumes from its last checkpoint:
rerunning the same command finishes what is missing. `--jobs N` runs N trainings at once, each
limited to one XLA thread (on this 2-core machine two single-threaded runs were slower than one
run after the other with two threads each: keep 1 there). `--summarise_only` writes the table
from the runs that have finished, without starting any. Writes OUT/ablation.json (every run's
scores and wall time, and the summary) and OUT/ablation.md (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from configs.real import get_config

REPO = Path(__file__).resolve().parents[1]
METRICS = ("CIDEr", "BLEU-4", "exact_match")

# name -> (description, overrides). `real` is the paper's ReAl (L_con on the encoders' post-ReLU
# outputs); the `align_*` rows move where L_con is taken (real_jax/models/real.py, ALIGNMENTS).
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "text_prior": ("blank images (text prior)", {"model.blank_images": True}),
    "main_only": ("main image only (reference := main)", {"model.main_image_only": True}),
    "baseline": ("baseline (no residual branch)", {"model.variant": "baseline"}),
    "residual_input": ("+ residual input", {"model.variant": "residual_input"}),
    "real": ("+ alignment, the paper (post-ReLU encoder output)", {}),
    "real_trainable": ("+ alignment, the paper, trainable target",
                       {"loss.consistency_image_target": "trainable"}),
    "align_pre_activation": ("+ alignment before the last ReLU",
                             {"model.alignment": "pre_activation"}),
    "align_residual_head": ("+ alignment through a linear head",
                            {"model.alignment": "residual_head"}),
    "align_tokens": ("+ alignment of the projected tokens",
                     {"model.alignment": "projected_tokens"}),
    "real_text_sign": ("+ alignment, the text's sign (f_main - f_ref = f_res)",
                       {"loss.consistency_sign": "main_minus_ref"}),
    "align_pre_activation_text_sign": ("+ alignment before the last ReLU, the text's sign",
                                       {"model.alignment": "pre_activation",
                                        "loss.consistency_sign": "main_minus_ref"}),
    "align_pre_activation_text_sign_lambda0.1": (
        "+ alignment before the last ReLU, the text's sign, lambda 0.1",
        {"model.alignment": "pre_activation", "loss.consistency_sign": "main_minus_ref",
         "loss.consistency_weight": 0.1}),
    "align_pre_activation_text_sign_lambda10": (
        "+ alignment before the last ReLU, the text's sign, lambda 10",
        {"model.alignment": "pre_activation", "loss.consistency_sign": "main_minus_ref",
         "loss.consistency_weight": 10.0}),
    "residual_branch_main": ("+ residual branch fed the main image (same capacity, no difference)",
                             {"model.variant": "residual_input",
                              "model.residual_source": "main"}),
    "registration": ("+ alignment (the paper) + registration",
                     {"model.registration.enabled": True}),
    "residual_input_registration": ("+ residual input + registration (no alignment)",
                                    {"model.variant": "residual_input",
                                     "model.registration.enabled": True}),
}
DEFAULT_ROWS = ("residual_input", "real", "align_pre_activation", "main_only", "baseline",
                "registration", "text_prior")


def config_flags(preset: str, overrides: Mapping[str, Any], seed: int, steps: int) -> list[str]:
    """`real_jax.main` flags of one run: the row's overrides, the seed and the step budget."""
    values = {"seed": seed, "train.num_train_steps": steps, "train.eval_every_steps": steps,
              "data.eval_split": "test", **overrides}
    return [f"--config=configs/real.py:{preset}"] + [
        f"--config.{key}={value}" for key, value in values.items()]


def result_path(out: Path, row: str, seed: int) -> Path:
    """Where one (row, seed) run's scores are written once it has finished."""
    return out / row / f"seed_{seed}" / "result.json"


def run_one(out: Path, row: str, seed: int, *, preset: str, steps: int, single_thread: bool,
            extra: Sequence[str] = ()) -> dict[str, Any]:
    """Trains and scores one (row, seed), or reads the scores a previous call left."""
    done = result_path(out, row, seed)
    if done.is_file():
        return json.loads(done.read_text())
    workdir = done.parent
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if single_thread:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    command = [sys.executable, "-m", "real_jax.main", f"--workdir={workdir}",
               *config_flags(preset, ROWS[row][1], seed, steps), *extra]
    start = time.time()
    with open(workdir / "train.log", "a") as log:
        code = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              check=False).returncode
    if code != 0:
        raise RuntimeError(f"{row} seed {seed} failed (exit {code}); see {workdir / 'train.log'}")
    metrics_path = workdir / "eval" / f"step_{steps}" / "metrics.json"
    scores = json.loads(metrics_path.read_text())["difference"]
    result = {"row": row, "seed": seed, "steps": steps, "scores": scores,
              "wall_s": round(time.time() - start, 1)}
    done.write_text(json.dumps(result, indent=1))
    return result


def summarise(results: Sequence[Mapping[str, Any]], rows: Sequence[str], base: str
              ) -> dict[str, dict[str, Any]]:
    """Per row and metric: mean, std (ddof=1) over seeds, and the paired difference to `base`
    (mean, std, and in how many seeds the row was higher)."""
    by_row = {row: {r["seed"]: r["scores"] for r in results if r["row"] == row} for row in rows}
    summary: dict[str, dict[str, Any]] = {}
    for row in rows:
        seeds = sorted(by_row[row])
        entry: dict[str, Any] = {"seeds": seeds}
        for metric in METRICS:
            values = np.array([by_row[row][s][metric] for s in seeds], np.float64)
            entry[metric] = _mean_std(values)
            paired = [s for s in seeds if s in by_row.get(base, {})]
            if row != base and paired:
                diff = np.array([by_row[row][s][metric] - by_row[base][s][metric] for s in paired])
                entry[f"{metric}_vs_{base}"] = _mean_std(diff) | {
                    "higher": int(np.sum(diff > 0)), "of": len(paired)}
        summary[row] = entry
    return summary


def _mean_std(values: np.ndarray) -> dict[str, float]:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return {"mean": float(np.mean(values)), "std": std}


def markdown_table(summary: Mapping[str, Mapping[str, Any]], base: str) -> str:
    """The table in docs/results.md: scores as mean +- std over seeds, CIDEr paired to `base`."""
    head = ("| row | seeds | CIDEr | BLEU-4 | exact | CIDEr - " + base +
            " (paired) | higher in |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for row, entry in summary.items():
        cells = [f"{entry[m]['mean']:.3f} ± {entry[m]['std']:.3f}" for m in METRICS]
        paired = entry.get(f"CIDEr_vs_{base}")
        diff = (f"{paired['mean']:+.3f} ± {paired['std']:.3f}", f"{paired['higher']}/{paired['of']}"
                ) if paired else ("(base)" if row == base else "n/a", "")
        lines.append(f"| {ROWS[row][0]} (`{row}`) | {len(entry['seeds'])} | " + " | ".join(cells)
                     + f" | {diff[0]} | {diff[1]} |")
    return "\n".join(lines) + "\n"


def prepare_data(preset: str, extra: Sequence[str]) -> None:
    """Makes the preset's dataset once (seed 0), before runs that would race to make it."""
    subprocess.run([sys.executable, "-c", (
        "import sys; from absl import flags; from ml_collections import config_flags; "
        "from real_jax.apps.dataset import ensure_dataset; "
        "c = config_flags.DEFINE_config_file('config'); flags.FLAGS(sys.argv); "
        "ensure_dataset(c.value)"), f"--config=configs/real.py:{preset}", *extra],
        cwd=REPO, check=True)


def finished_runs(out: Path, rows: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """The results of the (row, seed) runs under `out` that have finished."""
    paths = [result_path(out, row, seed) for seed in seeds for row in rows]
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def run_ablation(out: str | Path, *, rows: Sequence[str] = DEFAULT_ROWS,
                 seeds: Sequence[int] = (0, 1, 2), preset: str = "ablation",
                 steps: int | None = None,
                 jobs: int = 1, base: str = "residual_input", extra: Sequence[str] = (),
                 summarise_only: bool = False) -> dict[str, Any]:
    """Runs what is missing of rows x seeds (none with `summarise_only`), then writes and
    returns the summary of the finished runs."""
    unknown = [row for row in rows if row not in ROWS]
    if unknown or base not in rows:
        raise ValueError(f"unknown rows {unknown} or base {base!r} not among {list(rows)}; "
                         f"rows are {list(ROWS)}")
    steps = steps or get_config(preset).train.num_train_steps
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if summarise_only:
        results = finished_runs(out, rows, seeds)
    else:
        runs = [(row, seed) for seed in seeds for row in rows]
        if any(not result_path(out, *run).is_file() for run in runs):
            prepare_data(preset, extra)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda rs: run_one(out, *rs, preset=preset, steps=steps,
                                                       single_thread=jobs > 1, extra=extra), runs))
    summary = summarise(results, [row for row in rows if any(r["row"] == row for r in results)],
                        base)
    record = {"preset": preset, "steps": steps, "seeds": list(seeds), "base": base,
              "extra": list(extra), "rows": {row: ROWS[row] for row in rows},
              "wall_s_this_call": round(time.time() - start, 1),
              "wall_s_of_runs": round(sum(r["wall_s"] for r in results), 1),
              "runs": results, "summary": summary}
    (out / "ablation.json").write_text(json.dumps(record, indent=1))
    (out / "ablation.md").write_text(markdown_table(summary, base))
    return record


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--preset", default="ablation")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--base", default="residual_input")
    parser.add_argument("--summarise_only", action="store_true")
    parser.add_argument("extra", nargs="*", help="more real_jax.main flags, after --")
    args = parser.parse_args(argv)
    record = run_ablation(args.out, rows=args.rows, seeds=args.seeds, preset=args.preset,
                          steps=args.steps, jobs=args.jobs, base=args.base, extra=args.extra,
                          summarise_only=args.summarise_only)
    print(markdown_table(record["summary"], args.base))
    print(f"{len(record['runs'])} runs, {record['wall_s_of_runs']:.0f} s of runs, "
          f"{record['wall_s_this_call']:.0f} s this call -> {args.out}/ablation.md")


if __name__ == "__main__":
    main()
