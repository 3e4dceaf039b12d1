"""Whether a trained run's image features still depend on its images: the encoders' outputs
and the prefix tokens the decoder reads, on test pairs. A run whose answers do not depend on the
images (for example one that scores exactly as the blank-image text prior) shows here whether
its features collapsed (all zero) or are merely unused.

    python launch/feature_probe.py --workdir runs/ablation/real_trainable/seed_0 [--examples 64]

(from the folder the run was started in: the test split is read from the run's `data.dir`,
which `launch/ablation.py`'s runs give relative to the repository.)

Prints one line per group (`ref`, `main`, `residual` features, `prefix` tokens): mean |x|, the
fraction of exact zeros, and the spread across examples (the standard deviation over examples,
averaged over positions and channels, over mean |x|: 0 when every input gives the same values).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from data_pipeline.pipeline import make_eval_iterator
from real_jax.apps.predictor import Predictor


def feature_statistics(values: np.ndarray) -> dict[str, float]:
    """`values`: float[B, ...] for B examples -> mean |x|, fraction zero, spread over examples."""
    values = np.asarray(values, np.float64)
    magnitude = float(np.abs(values).mean())
    spread = float(values.std(axis=0).mean()) / magnitude if magnitude > 0 else 0.0
    return {"mean_abs": magnitude, "zero_fraction": float((values == 0).mean()),
            "spread_over_examples": spread}


def probe(workdir: Path, examples: int) -> dict[str, dict[str, float]]:
    """The statistics of each feature group on the first `examples` test pairs."""
    predictor = Predictor.load(workdir)
    config = predictor.config
    batch = next(iter(make_eval_iterator(config.data, predictor.tokenizer, split="test",
                                         batch_size=examples)))
    prefix, features = jax.jit(lambda v, ref, main: predictor.model.apply(
        v, ref, main, False, method="encode"))(predictor.variables, batch["ref"], batch["main"])
    valid = np.asarray(batch["valid"], bool)  # False: padding of a short last batch
    groups = {name: features[name] for name in ("ref", "main", "residual") if name in features}
    groups["prefix"] = prefix
    return {name: feature_statistics(np.asarray(value)[valid]) for name, value in groups.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=64)
    args = parser.parse_args(argv)
    for name, stats in probe(args.workdir, args.examples).items():
        print(f"{name:9s} mean|x| {stats['mean_abs']:.4g}  zero {stats['zero_fraction']:.3f}  "
              f"spread over examples {stats['spread_over_examples']:.4g}")


if __name__ == "__main__":
    main()
