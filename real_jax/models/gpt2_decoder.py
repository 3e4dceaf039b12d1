"""GPT-2 decoder fed prefix embeddings: transformers' FlaxGPT2 blocks with HF parameter names.

`FlaxGPT2Module.__call__` only takes token ids, but ReAl prepends projected image tokens. This
module rebuilds the GPT-2 trunk from the same submodules (`wte`, `wpe`, `h` =
`FlaxGPT2BlockCollection`, `ln_f`) so its parameter tree is exactly the `transformer` subtree of
a HF `FlaxGPT2LMHeadModel` and HF checkpoints map one to one. The LM head is tied to `wte`, as in
GPT-2. This is the only module that touches transformers' Flax GPT-2 internals.

transformers >= 5 removed every Flax model; the project pins transformers>=4.57,<5.
"""

import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # transformers warns that its Flax models are deprecated.
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_flax_gpt2 import FlaxGPT2BlockCollection


def make_gpt2_config(
    *,
    vocab_size: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int,
    dropout: float = 0.1,
    eos_token_id: int = 50256,
) -> GPT2Config:
    """A `GPT2Config`; the 124M model is n_layer=12, n_embd=768, n_head=12, n_positions=1024."""
    return GPT2Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )


class GPT2Decoder(nn.Module):
    """GPT-2 over input embeddings. Parameters: `wte`, `wpe`, `h/{0..n_layer-1}`, `ln_f`."""

    config: GPT2Config
    dtype: Any = jnp.float32

    def setup(self) -> None:
        init = jax.nn.initializers.normal(stddev=self.config.initializer_range)
        self.wte = nn.Embed(self.config.vocab_size, self.config.n_embd, embedding_init=init,
                            dtype=self.dtype)
        self.wpe = nn.Embed(self.config.n_positions, self.config.n_embd, embedding_init=init,
                            dtype=self.dtype)
        self.dropout = nn.Dropout(rate=self.config.embd_pdrop)
        self.h = FlaxGPT2BlockCollection(self.config, dtype=self.dtype)
        self.ln_f = nn.LayerNorm(epsilon=self.config.layer_norm_epsilon, dtype=self.dtype)

    def embed_tokens(self, token_ids: jnp.ndarray) -> jnp.ndarray:
        """`int32[B, T]` -> `float[B, T, D]` token embeddings (no positions)."""
        return self.wte(token_ids.astype(jnp.int32))

    def hidden_states(
        self,
        inputs_embeds: jnp.ndarray,
        attention_mask: jnp.ndarray,
        position_ids: jnp.ndarray,
        deterministic: bool = True,
        init_cache: bool = False,
    ) -> jnp.ndarray:
        """Runs the trunk: `float[B, T, D]` -> final-LayerNorm hidden states `float[B, T, D]`.

        `attention_mask` is `int[B, T]`, or `int[B, cache_len]` when decoding with the KV cache
        (the "cache" collection must then be mutable).
        """
        positions = self.wpe(position_ids.astype(jnp.int32))
        hidden = self.dropout(inputs_embeds + positions, deterministic=deterministic)
        hidden = self.h(
            hidden,
            attention_mask,
            deterministic=deterministic,
            init_cache=init_cache,
            return_dict=False,
        )[0]
        return self.ln_f(hidden)

    def logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """Tied LM head: `float[B, T, D]` -> `float32[B, T, V]`."""
        return self.wte.attend(hidden).astype(jnp.float32)

    def __call__(
        self,
        inputs_embeds: jnp.ndarray,
        attention_mask: jnp.ndarray,
        position_ids: jnp.ndarray,
        deterministic: bool = True,
        init_cache: bool = False,
    ) -> jnp.ndarray:
        """`float[B, T, D]` -> logits `float32[B, T, V]`."""
        hidden = self.hidden_states(
            inputs_embeds, attention_mask, position_ids, deterministic, init_cache
        )
        return self.logits(hidden)
