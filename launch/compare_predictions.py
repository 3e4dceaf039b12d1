"""What two ablation rows answered, seed by seed: how many test answers they share, how many
distinct answers each gave, the most distinct answers either gave to one question wording (1:
the answer is a function of the question's text alone, whatever the images), and each one's most
frequent answers. For rows whose scores are equal, this says whether they gave the same answers
and whether those depend on the images.

    python launch/compare_predictions.py --out runs/ablation_alignment real_trainable text_prior \
        [--seeds 0 1 2] [--top 3]

Reads `OUT/<row>/seed_<k>/eval/step_<N>/predictions.jsonl` (the last evaluated step of each
run that `launch/ablation.py` left) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from real_jax.evaluation import read_predictions_jsonl


def last_predictions(run: Path) -> Path:
    """The predictions.jsonl of a run's last evaluated step."""
    steps = sorted((int(p.parent.name.removeprefix("step_")), p)
                   for p in (run / "eval").glob("step_*/predictions.jsonl"))
    if not steps:
        raise FileNotFoundError(f"{run}: no eval/step_*/predictions.jsonl (has the run finished?)")
    return steps[-1][1]


def compare(first: Path, second: Path, top: int = 3) -> dict[str, Any]:
    """Two runs' answers to the same examples: shared, distinct and most frequent answers."""
    answers, per_question = [], []
    for path in (first, second):
        records = read_predictions_jsonl(path)
        answers.append({p.index: p.prediction.strip() for p in records})
        by_question = collections.defaultdict(set)
        for p in records:
            by_question[p.question].add(p.prediction.strip())
        per_question.append(max(len(a) for a in by_question.values()))
    if set(answers[0]) != set(answers[1]):
        raise ValueError(f"{first} and {second} answer different examples")
    indices = sorted(answers[0])
    same = sum(answers[0][i] == answers[1][i] for i in indices)
    return {"examples": len(indices), "identical": same,
            "distinct": [len(set(a.values())) for a in answers],
            "most_answers_to_one_question": per_question,
            "most_frequent": [collections.Counter(a.values()).most_common(top) for a in answers]}


def markdown(rows: Sequence[str], results: dict[int, dict[str, Any]]) -> str:
    """One line per seed: identical answers, distinct answers of each row, the first row's most
    frequent answers with their counts."""
    lines = [f"| seed | identical answers | distinct answers `{rows[0]}` / `{rows[1]}` | "
             "most to one question wording | "
             f"most frequent answers of `{rows[0]}` (count) |", "|---|---|---|---|---|"]
    for seed, r in results.items():
        frequent = "; ".join(f"\"{answer}\" ({count})" for answer, count in r["most_frequent"][0])
        most = r["most_answers_to_one_question"]
        lines.append(f"| {seed} | {r['identical']}/{r['examples']} | {r['distinct'][0]} / "
                     f"{r['distinct'][1]} | {most[0]} / {most[1]} | {frequent} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="launch/ablation.py's --out")
    parser.add_argument("rows", nargs=2)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--top", type=int, default=3)
    args = parser.parse_args(argv)
    results = {seed: compare(*(last_predictions(args.out / row / f"seed_{seed}")
                               for row in args.rows), top=args.top) for seed in args.seeds}
    print(markdown(args.rows, results))


if __name__ == "__main__":
    main()
