"""Query projector: maps an encoder's spatial feature map to a few decoder-width tokens.

Paper section 3.2: "a transformer decoder and fully connected layers". Learned queries self-attend,
cross-attend to the encoder's spatial tokens (with fixed 2-D sine-cosine positions, so the
projector works at any input resolution and keeps left/right, upper/lower), pass an MLP, and a
final Dense maps them to the GPT-2 width. Pre-LayerNorm throughout.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from real_jax.shared import sincos_2d_positions


class ProjectorLayer(nn.Module):
    """One transformer-decoder layer over the queries: self-attn, cross-attn, MLP."""

    num_heads: int
    mlp_ratio: int = 4
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, queries: jnp.ndarray, memory: jnp.ndarray, train: bool) -> jnp.ndarray:
        width = queries.shape[-1]
        attention = lambda name: nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout_rate, name=name
        )
        y = nn.LayerNorm(dtype=self.dtype, name="ln_self")(queries)
        queries = queries + attention("self_attention")(y, y, deterministic=not train)
        y = nn.LayerNorm(dtype=self.dtype, name="ln_cross")(queries)
        queries = queries + attention("cross_attention")(y, memory, deterministic=not train)
        y = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(queries)
        y = nn.Dense(width * self.mlp_ratio, dtype=self.dtype, name="mlp_in")(y)
        y = nn.Dense(width, dtype=self.dtype, name="mlp_out")(nn.gelu(y))
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        return queries + y


class Projector(nn.Module):
    """Encoder features `float32[B, h, w, C]` -> decoder tokens `float[B, num_queries, out_dim]`."""

    num_queries: int
    width: int
    depth: int
    num_heads: int
    out_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        batch, height, width, channels = features.shape
        memory = nn.Dense(self.width, dtype=self.dtype, name="input_proj")(
            features.reshape(batch, height * width, channels)
        )
        memory = memory + sincos_2d_positions(height, width, self.width).astype(memory.dtype)
        memory = nn.LayerNorm(dtype=self.dtype, name="ln_memory")(memory)
        queries = self.param(
            "queries", nn.initializers.normal(0.02), (self.num_queries, self.width), jnp.float32
        )
        x = jnp.broadcast_to(queries.astype(self.dtype), (batch, self.num_queries, self.width))
        for i in range(self.depth):
            x = ProjectorLayer(
                num_heads=self.num_heads,
                dropout_rate=self.dropout_rate,
                dtype=self.dtype,
                name=f"layer_{i}",
            )(x, memory, train)
        x = nn.LayerNorm(dtype=self.dtype, name="ln_out")(x)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="output_proj")(x)
