"""ReAl's Flax modules: the model (`real`), its parts (`resnet`, `projector`, `gpt2_decoder`,
`inputs`), registration of ref onto main (`registration`) and KV-cached decoding
(`generation`). `real_jax.experiment.build_model` turns `config.model` into a `ReAl`."""

import jax.numpy as jnp

from real_jax.models.real import VARIANTS, ReAl

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["DTYPES", "VARIANTS", "ReAl"]
