"""The allowed values of every config field that takes one of a fixed set of names, in one table.

Each tuple is the constant of the module that implements the choice, so a new variant, loss
option or optimizer becomes allowed where it is written. `real_jax.config_checks` checks a config
against `CHOICES`, its error messages list the allowed values from it, and `configs/real.py`'s
documentation is generated from it (`describe`).
"""

from __future__ import annotations

from typing import Any

from data_pipeline.synthetic import CHANGES
from real_jax.models import DTYPES
from real_jax.models.generation import GENERATION_METHODS
from real_jax.models.real import ALIGNMENTS, RESIDUAL_SOURCES, VARIANTS
from real_jax.models.registration import TRANSFORMS
from real_jax.models.resnet import ENCODERS
from real_jax.training.losses import (
    CONSISTENCY_AGGREGATES,
    CONSISTENCY_IMAGE_TARGETS,
    CONSISTENCY_SIGNS,
    CONSISTENCY_SPATIAL,
)
from real_jax.training.optimizer import OPTIMIZERS

# What the training loop does with a non-finite loss: stop the run, or skip the update.
NONFINITE_POLICIES = ("stop", "skip")

# field path -> allowed values (the first is not necessarily the default: configs/real.py holds
# the defaults).
CHOICES: dict[str, tuple[str, ...]] = {
    "model.variant": VARIANTS,
    "model.encoder": tuple(ENCODERS),
    "model.dtype": tuple(DTYPES),
    "model.residual_source": RESIDUAL_SOURCES,
    "model.alignment": ALIGNMENTS,
    "model.registration.transform": tuple(TRANSFORMS),
    "loss.consistency_sign": CONSISTENCY_SIGNS,
    "loss.consistency_spatial": CONSISTENCY_SPATIAL,
    "loss.consistency_aggregate": CONSISTENCY_AGGREGATES,
    "loss.consistency_image_target": CONSISTENCY_IMAGE_TARGETS,
    "optim.name": OPTIMIZERS,
    "train.nonfinite_policy": NONFINITE_POLICIES,
    "data.synthetic_changes": CHANGES,
    "generation.method": GENERATION_METHODS,
}


def field(config: Any, path: str) -> Any:
    """`config.model.registration.transform` for path `model.registration.transform`."""
    value = config
    for key in path.split("."):
        value = value[key]
    return value


def choice_problems(config: Any) -> list[str]:
    """One message per field of `CHOICES` whose value is not allowed (empty: all fine)."""
    return [f"{path}={field(config, path)!r} not in {allowed}"
            for path, allowed in CHOICES.items() if field(config, path) not in allowed]


def describe() -> str:
    """The table as text, one field a line (for configs/real.py's documentation)."""
    width = max(map(len, CHOICES))
    return "\n".join(f"    {path:<{width}}  {' | '.join(allowed)}"
                     for path, allowed in CHOICES.items())
