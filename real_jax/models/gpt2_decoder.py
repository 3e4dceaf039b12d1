"""GPT-2 decoder fed prefix embeddings: transformers' FlaxGPT2 blocks with HF parameter names.

`FlaxGPT2Module.__call__` only takes token ids, but ReAl prepends projected image tokens. This
module rebuilds the GPT-2 trunk from the same submodules (`wte`, `wpe`, the blocks `h/{i}` =
`FlaxGPT2Block`, `ln_f`) so its parameter tree is exactly the `transformer` subtree of
a HF `FlaxGPT2LMHeadModel` and HF checkpoints map one to one. The LM head is tied to `wte`, as in
GPT-2. This is the only module that touches transformers' Flax GPT-2 internals.

`remat=True` checkpoints each GPT-2 block (`flax.linen.remat`): the backward pass keeps only the
blocks' inputs and recomputes the rest. transformers' `FlaxGPT2BlockCollection` (4.57) has no
`gradient_checkpointing` switch (its BERT has one), so `BlockCollection` here rebuilds it around
HF's `FlaxGPT2Block`, with the same names (`h/0`, `h/1`, ...).

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
    from transformers.models.gpt2.modeling_flax_gpt2 import FlaxGPT2Block

# FlaxGPT2Block.__call__(self, hidden_states, attention_mask, encoder_hidden_states,
# encoder_attention_mask, deterministic, init_cache, output_attentions): the Python flags must be
# static under remat (flax counts `self` as argument 0).
_BLOCK_STATIC_ARGNUMS = (5, 6, 7)


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


class BlockCollection(nn.Module):
    """HF's `FlaxGPT2BlockCollection` for ReAl's use (self-attention only), optionally remat.

    Call: `float[B, T, D]` hidden states, `int[B, T]` (or `int[B, cache_len]`) attention mask ->
    `float[B, T, D]`. Parameters `{0..n_layer-1}`, each a `FlaxGPT2Block`.
    """

    config: GPT2Config
    dtype: Any = jnp.float32
    remat: bool = False

    def setup(self) -> None:
        block = (nn.remat(FlaxGPT2Block, static_argnums=_BLOCK_STATIC_ARGNUMS) if self.remat
                 else FlaxGPT2Block)
        self.blocks = [block(self.config, name=str(i), dtype=self.dtype)
                       for i in range(self.config.num_hidden_layers)]

    def __call__(self, hidden: jnp.ndarray, attention_mask: jnp.ndarray,
                 deterministic: bool = True, init_cache: bool = False) -> jnp.ndarray:
        for block in self.blocks:
            # Positional: remat's static arguments are positional only.
            hidden = block(hidden, attention_mask, None, None, deterministic, init_cache,
                           False)[0]
        return hidden


class GPT2Decoder(nn.Module):
    """GPT-2 over input embeddings. Parameters: `wte`, `wpe`, `h/{0..n_layer-1}`, `ln_f`."""

    config: GPT2Config
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each block's activations in the backward pass

    def setup(self) -> None:
        init = jax.nn.initializers.normal(stddev=self.config.initializer_range)
        self.wte = nn.Embed(self.config.vocab_size, self.config.n_embd, embedding_init=init,
                            dtype=self.dtype)
        self.wpe = nn.Embed(self.config.n_positions, self.config.n_embd, embedding_init=init,
                            dtype=self.dtype)
        self.dropout = nn.Dropout(rate=self.config.embd_pdrop)
        self.h = BlockCollection(self.config, dtype=self.dtype, remat=self.remat)
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
        hidden = self.h(hidden, attention_mask, deterministic=deterministic,
                        init_cache=init_cache)
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
