"""ReAl's Flax modules and `build_model`, which turns `config.model` into a `ReAl`."""

import jax.numpy as jnp
import ml_collections

from real_jax.models.gpt2_decoder import make_gpt2_config
from real_jax.models.real import VARIANTS, ReAl
from real_jax.registration import RegistrationConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, eos_id: int,
                registration: RegistrationConfig | None = None) -> ReAl:
    """Builds ReAl from `config.model`; the vocabulary comes from the tokenizer, `registration`
    from `config.data` (`real_jax.registration.config_from_data_config`)."""
    if model_config.variant not in VARIANTS:
        raise ValueError(f"config.model.variant={model_config.variant!r} not in {VARIANTS}")
    if model_config.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={model_config.dtype!r} not in {sorted(DTYPES)}")
    decoder = model_config.decoder
    return ReAl(
        decoder_config=make_gpt2_config(
            vocab_size=vocab_size,
            n_layer=decoder.n_layer,
            n_embd=decoder.n_embd,
            n_head=decoder.n_head,
            n_positions=decoder.n_positions,
            dropout=decoder.dropout,
            eos_token_id=eos_id,
        ),
        encoder=model_config.encoder,
        variant=model_config.variant,
        num_queries=model_config.num_queries,
        projector_width=model_config.projector_width,
        projector_depth=model_config.projector_depth,
        projector_heads=model_config.projector_heads,
        projector_dropout=model_config.projector_dropout,
        blank_images=model_config.blank_images,
        registration=registration,
        dtype=DTYPES[model_config.dtype],
    )


__all__ = ["ReAl", "VARIANTS", "build_model"]
