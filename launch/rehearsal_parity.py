"""The rehearsal's export check (`launch/rehearsal.py`): the exported PyTorch model's greedy
answers against JAX's, example by example.

    python launch/rehearsal_parity.py --workdir W --export E --split test --out parity.json

JAX's answers are the ones `python -m real_jax.main --mode=predict --split=SPLIT
--config.model.dtype=float32` wrote for the exported step (W/eval_SPLIT/step_N/predictions.jsonl).
This runs `TorchReAl` (float32, greedy, KV cache) on the same examples, prepared by the same
evaluation pipeline (`make_eval_iterator`: centre crops, left-padded questions) from the training
config saved in the export, and decodes with the run's tokenizer, as the evaluation does. Float32
on both sides: the exported model computes in float32, and bfloat16's rounding would flip the
near-tied argmaxes of a barely trained model, so the comparison would fail without any export
fault. Writes OUT (`{"examples", "equal", "nonempty", "mismatches", "ok"}`); exits 1 unless every
answer is equal and at least one is not empty (empty answers on both sides prove nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def compare_answers(jax_answers: Mapping[int, str], torch_answers: Mapping[int, str]
                    ) -> dict[str, Any]:
    """`{example index: answer}` of both sides -> the comparison that OUT holds."""
    indices = sorted(jax_answers.keys() | torch_answers.keys())
    mismatches = [{"index": i, "jax": jax_answers.get(i), "torch": torch_answers.get(i)}
                  for i in indices if jax_answers.get(i) != torch_answers.get(i)]
    nonempty = sum(1 for i in indices if jax_answers.get(i))
    return {"examples": len(indices), "equal": len(indices) - len(mismatches),
            "nonempty": nonempty, "mismatches": mismatches,
            "answers": {str(i): jax_answers.get(i) for i in indices},
            "ok": bool(indices) and not mismatches and nonempty > 0}


def jax_answers(workdir: Path, split: str, step: int) -> dict[int, str]:
    path = workdir / f"eval_{split}" / f"step_{step}" / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run `python -m real_jax.main --mode=predict "
                                f"--split={split}` on {workdir} first")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["index"]: row["prediction"] for row in rows}


def torch_answers(export: Path, workdir: Path, split: str) -> tuple[dict[int, str], int]:
    """The exported model's greedy answers to `split`'s evaluation examples, and its step."""
    import ml_collections
    import torch

    from data_pipeline.pipeline import make_eval_iterator
    from real_jax.experiment import run_tokenizer
    from real_jax.interop.torch_model import TorchReAl
    from real_jax.models.generation import strip_after_eos

    summary = json.loads((export / "config.json").read_text())
    # the complete config the run trained with, as the export saved it
    config = ml_collections.ConfigDict(summary["training_config"])
    tokenizer = run_tokenizer(workdir, config)
    model = TorchReAl.load(export)
    answers = {}
    with torch.no_grad():
        for batch in make_eval_iterator(config.data, tokenizer, split=split,
                                        batch_size=config.eval.batch_size):
            tokens = model.generate(batch["ref"], batch["main"], batch["question_ids"],
                                    batch["question_mask"], config.generation.answer_max_tokens)
            rows = strip_after_eos(tokens.numpy(), tokenizer.eos_id)
            for row, index, valid in zip(rows, batch["index"], batch["valid"], strict=True):
                if valid:
                    answers[int(index)] = tokenizer.decode(row)
    return answers, int(summary["step"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True)
    opts = parser.parse_args(argv)
    from_torch, step = torch_answers(opts.export, opts.workdir, opts.split)
    result = compare_answers(jax_answers(opts.workdir, opts.split, step), from_torch)
    result |= {"split": opts.split, "step": step}
    opts.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("examples", "equal", "nonempty", "ok")}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
