"""Greedy decoding against beam search of several widths, on one trained checkpoint and split.

    python launch/decoding_compare.py --workdir=runs/ablation/residual_input/seed_0 \
        [--split=test] [--beams 3 5 10] [--length_penalty=ALPHA]

Restores the workdir's latest checkpoint with the config it was trained with, then scores the
split once per decoding (`generation.method=greedy`, then `beam` with each width; GNMT length
normalisation alpha from `--length_penalty`, default the config's `generation.length_penalty`),
writing each evaluation to `WORKDIR/eval_{split}_{decoding}/step_N/` (decoding: `greedy`,
`beam{k}_alpha{a}`) and a markdown table of the difference-subset scores and the decoding time to
`WORKDIR/decoding_{split}[_alpha{a}].md`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from configs.upgrade import restore_config
from real_jax.apps.driver import variables_of
from real_jax.evaluation.loop import Evaluator
from real_jax.experiment import build_experiment
from real_jax.training.checkpointing import Checkpointer

COLUMNS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "exact_match")


def compare(workdir: Path, split: str, beams: list[int], length_penalty: float | None) -> str:
    config = restore_config(json.loads((workdir / "config.json").read_text()))
    experiment = build_experiment(config)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                                best_metric=config.train.best_metric, async_save=False)
    step = checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}")
    variables = variables_of(checkpointer.restore(step, experiment.abstract_state()[0]))
    checkpointer.close()
    alpha = config.generation.length_penalty if length_penalty is None else length_penalty
    lines = [f"{workdir}, step {step}, {split} split, difference subset, beam length penalty "
             f"alpha = {alpha}", "",
             "| decoding | " + " | ".join(COLUMNS) + " | seconds |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for beam in [1, *beams]:
        with config.unlocked():
            config.generation.method = "greedy" if beam == 1 else "beam"
            config.generation.beam_size = max(beam, 1)
            if length_penalty is not None:
                config.generation.length_penalty = length_penalty
        name = "greedy" if beam == 1 else f"beam{beam}_alpha{config.generation.length_penalty:g}"
        evaluator = Evaluator(build_experiment(config, tokenizer=experiment.tokenizer), split)
        start = time.time()
        metrics = evaluator.evaluate(variables, workdir / f"eval_{split}_{name}" / f"step_{step}")
        seconds = time.time() - start
        scores = metrics.get("difference", {})
        lines.append(f"| {name} | " + " | ".join(f"{scores.get(c, float('nan')):.3f}"
                                              for c in COLUMNS) + f" | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--beams", nargs="+", type=int, default=[3, 5, 10])
    parser.add_argument("--length_penalty", type=float, default=None)
    args = parser.parse_args()
    table = compare(args.workdir, args.split, args.beams, args.length_penalty)
    if jax.process_index() == 0:
        alpha = "" if args.length_penalty is None else f"_alpha{args.length_penalty:g}"
        (args.workdir / f"decoding_{args.split}{alpha}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
