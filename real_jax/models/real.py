"""ReAl: residual-aligned Difference VQA model (paper section 2, docs/design.md section 1).

Decoder input, in order: `[residual tokens | ref tokens | main tokens | question | answer]`.
The image encoder (and its projector) is shared by `ref` and `main`, which go through it as one
batch of 2B so batch-norm sees both (interleaved pair by pair, so that no image changes device
when the batch is split over devices); the residual encoder and projector have their own
parameters. The three variants are the paper's ablation rows (Table 2):

| variant          | residual branch | consistency loss |
|------------------|-----------------|------------------|
| `baseline`       | no (no params)  | no               |
| `residual_input` | yes             | no               |
| `real`           | yes             | yes (full ReAl)  |

`blank_images=True` replaces both images with zeros: the same model then learns only the text
prior, the control that shows how much the images contribute. `main_image_only=True` replaces
the reference by the main image (the residual is then zero): the control that shows how much of
a difference answer needs the reference at all. `residual_source="main"` feeds the residual
branch the main image instead of `main - ref`: the same parameters and tokens as the paper's
branch without the explicit difference, the control that separates what the difference adds from
what the branch's extra capacity adds (ours). With a `registration` config the
reference is first aligned to the main image (`real_jax/models/registration.py`) and both the
residual and the reference encoder see the aligned reference.

Where the consistency loss compares features is `alignment` (`ALIGNMENTS`); the model returns
the three compared arrays as `features["align_ref" | "align_main" | "align_residual"]`:

- `encoder_output` (the paper's equation literally): the image encoder's output for ref and
  main, the residual encoder's output for the residual; all post-ReLU.
- `pre_activation`: the same blocks' outputs before their final ReLU (same parameters).
- `residual_head`: the image encoder's output for ref and main; for the residual, a learned
  linear map (`alignment_head`, channels -> channels) of the residual encoder's output.
- `projected_tokens`: the image projector's tokens for ref and main, the residual projector's
  tokens for the residual.

Post-ReLU features are >= 0 while `f_ref - f_main` has both signs, so with `encoder_output` the
residual branch can only match the difference where it is positive; the other three choices
compare quantities that can take either sign.

The model returns the answer-position logits and the encoders' features; the losses live in
`real_jax/training/losses.py`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from real_jax.models.gpt2_decoder import GPT2Config, GPT2Decoder
from real_jax.models.inputs import (
    normalize_image,
    normalize_residual,
    to_unit_float,
)
from real_jax.models.projector import Projector
from real_jax.models.registration import RegistrationConfig, register
from real_jax.models.resnet import make_encoder

VARIANTS = ("baseline", "residual_input", "real")
ALIGNMENTS = ("encoder_output", "pre_activation", "residual_head", "projected_tokens")
RESIDUAL_SOURCES = ("difference", "main")


def prefix_length(variant: str, num_queries: int) -> int:
    """Number of image tokens before the question: 2 or 3 groups of `num_queries`."""
    return (2 if variant == "baseline" else 3) * num_queries


def interleave_pairs(ref: jnp.ndarray, main: jnp.ndarray) -> jnp.ndarray:
    """`[B, ...]` twice -> `[2B, ...]` ordered ref_0, main_0, ref_1, main_1, ...

    The shared encoder's batch of 2B is interleaved, not concatenated: with the batch split over
    devices, the rows of `[ref; main]` would land on other devices than the pairs they come from,
    and XLA would move images between devices (all-to-all, collective-permute) in every step.
    Interleaved, each device keeps its own pairs; batch norm still sees all 2B images.
    """
    return jnp.stack([ref, main], axis=1).reshape(2 * ref.shape[0], *ref.shape[1:])


def split_pairs(pairs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The inverse of `interleave_pairs`: `[2B, ...]` -> `(ref [B, ...], main [B, ...])`."""
    pairs = pairs.reshape(pairs.shape[0] // 2, 2, *pairs.shape[1:])
    return pairs[:, 0], pairs[:, 1]


def position_ids_from_mask(mask: jnp.ndarray) -> jnp.ndarray:
    """`int[B, T]` attention mask -> positions that count only real tokens, `int32[B, T]`."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


class ReAl(nn.Module):
    """The ReAl model. See the module docstring for the layout and variants."""

    decoder_config: GPT2Config
    encoder: str = "resnet50"
    variant: str = "real"
    num_queries: int = 32
    projector_width: int = 512
    projector_depth: int = 2
    projector_heads: int = 8
    projector_dropout: float = 0.1
    blank_images: bool = False  # control experiment: the images are replaced by zeros
    main_image_only: bool = False  # control experiment: the reference is the main image
    residual_source: str = "difference"  # what the residual branch sees (RESIDUAL_SOURCES)
    alignment: str = "encoder_output"  # where L_con compares features (ALIGNMENTS)
    # align ref to main first (model.registration.enabled)
    registration: RegistrationConfig | None = None
    dtype: Any = jnp.float32
    remat: bool = False  # activation checkpointing of the ResNet and GPT-2 blocks (model.remat)

    @property
    def has_residual_branch(self) -> bool:
        return self.variant != "baseline"

    @property
    def prefix_length(self) -> int:
        return prefix_length(self.variant, self.num_queries)

    def setup(self) -> None:
        projector = lambda name: Projector(
            num_queries=self.num_queries,
            width=self.projector_width,
            depth=self.projector_depth,
            num_heads=self.projector_heads,
            out_dim=self.decoder_config.n_embd,
            dropout_rate=self.projector_dropout,
            dtype=self.dtype,
            name=name,
        )
        self.image_encoder = make_encoder(self.encoder, dtype=self.dtype, remat=self.remat,
                                          name="image_encoder")
        self.image_projector = projector("image_projector")
        if self.has_residual_branch:
            self.residual_encoder = make_encoder(
                self.encoder, dtype=self.dtype, remat=self.remat, name="residual_encoder"
            )
            self.residual_projector = projector("residual_projector")
            if self.alignment == "residual_head":
                self.alignment_head = nn.Dense(self.image_encoder.feature_dim, dtype=self.dtype,
                                               name="alignment_head")
        self.decoder = GPT2Decoder(self.decoder_config, dtype=self.dtype, remat=self.remat,
                                   name="decoder")

    def encode(
        self,
        ref: jnp.ndarray,
        main: jnp.ndarray,
        train: bool = True,
        *,
        main_offset: jnp.ndarray | None = None,
        residual_offset: jnp.ndarray | None = None,
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Images -> prefix tokens and encoder features.

        Args:
          ref, main: `uint8[B, S, S]` grayscale crops (or float32 on the 0..255 scale).
          main_offset, residual_offset: optional `float32[B, S, S]` added to the main image
            (in [0, 1] units, so it reaches both the main encoder and the residual) and to the
            residual only; zeros leave the output unchanged. Saliency maps are gradients with
            respect to them (`real_jax/evaluation/saliency.py`).
        Returns:
          prefix: `float[B, P, D]`, P = `prefix_length` (residual tokens first when present).
          features: `{"ref", "main"[, "residual"]}` -> `float32[B, S/r, S/r, C]`, the
            encoders' outputs (r: the encoder's `stride`, 32 for ResNet-50); with the
            residual branch also `align_ref`, `align_main`, `align_residual`, what the
            consistency loss compares (`alignment`), each
            `float32[B, S/r, S/r, C]` or, for `projected_tokens`, `float[B, Q, D]`.
        """
        if self.blank_images:
            ref, main = jnp.zeros_like(ref), jnp.zeros_like(main)
        elif self.main_image_only:
            ref = main
        elif self.registration is not None:
            ref, _ = register(ref, main, self.registration)
        main_unit = to_unit_float(main)
        if main_offset is not None:
            main_unit = main_unit + main_offset
        ref_unit = to_unit_float(ref)
        pair = interleave_pairs(ref_unit, main_unit)
        pre_activation = self.alignment == "pre_activation" and self.has_residual_branch
        image_raw = self.image_encoder(normalize_image(pair), train=train,
                                       pre_activation=pre_activation)
        image_features = nn.relu(image_raw) if pre_activation else image_raw
        image_tokens = self.image_projector(image_features, train=train)
        ref_features, main_features = split_pairs(image_features)
        features = {"ref": ref_features, "main": main_features}
        groups = list(split_pairs(image_tokens))
        if self.has_residual_branch:
            residual = self._residual_input(ref_unit, main_unit, residual_offset)
            residual_raw = self.residual_encoder(residual, train=train,
                                                 pre_activation=pre_activation)
            features["residual"] = nn.relu(residual_raw) if pre_activation else residual_raw
            residual_tokens = self.residual_projector(features["residual"], train=train)
            groups.insert(0, residual_tokens)
            features.update(self._alignment_features(
                features, image_raw, residual_raw, image_tokens, residual_tokens))
        return jnp.concatenate(groups, axis=1), features

    def _residual_input(self, ref_unit: jnp.ndarray, main_unit: jnp.ndarray,
                        residual_offset: jnp.ndarray | None) -> jnp.ndarray:
        """The residual encoder's input `float32[B, S, S, 3]` from unit-range `float32[B, S, S]`
        images: `I_main - I_ref` (the paper), or the main image itself (`residual_source`)."""
        source = main_unit - ref_unit if self.residual_source == "difference" else main_unit
        if residual_offset is not None:
            source = source + residual_offset
        if self.residual_source == "difference":
            return normalize_residual(source)  # I_res = I_main - I_ref, in [-1, 1]
        return normalize_image(source)

    def _alignment_features(self, features: dict[str, jnp.ndarray], image_raw: jnp.ndarray,
                            residual_raw: jnp.ndarray, image_tokens: jnp.ndarray,
                            residual_tokens: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """`align_ref`, `align_main`, `align_residual`: what L_con compares (module docstring)."""
        if self.alignment == "encoder_output":
            pairs, residual = (features["ref"], features["main"]), features["residual"]
        elif self.alignment == "pre_activation":
            pairs, residual = split_pairs(image_raw), residual_raw
        elif self.alignment == "residual_head":
            pairs = (features["ref"], features["main"])
            residual = self.alignment_head(features["residual"]).astype(jnp.float32)
        else:  # projected_tokens
            pairs, residual = split_pairs(image_tokens), residual_tokens
        return {"align_ref": pairs[0], "align_main": pairs[1], "align_residual": residual}

    def embed_tokens(self, token_ids: jnp.ndarray) -> jnp.ndarray:
        """`int32[B, T]` -> `float[B, T, D]`."""
        return self.decoder.embed_tokens(token_ids)

    def prompt(
        self,
        ref: jnp.ndarray,
        main: jnp.ndarray,
        question_ids: jnp.ndarray,
        question_mask: jnp.ndarray,
        train: bool = True,
        **offsets: jnp.ndarray | None,
    ) -> tuple[jnp.ndarray, jnp.ndarray, dict[str, jnp.ndarray]]:
        """The decoder prompt `[prefix | question]`; `offsets` as in `encode`.

        Returns embeddings `float[B, P + Lq, D]`, mask `int32[B, P + Lq]`, encoder features.
        """
        prefix, features = self.encode(ref, main, train=train, **offsets)
        embeds, mask = self._append_tokens(prefix, question_ids, question_mask)
        return embeds, mask, features

    def _append_tokens(self, prefix: jnp.ndarray, token_ids: jnp.ndarray,
                       token_mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """`[prefix | tokens]`: embeddings `float[B, P + T, D]` and mask `int32[B, P + T]` from
        the prefix `float[B, P, D]` and `int[B, T]` token ids and mask."""
        embeds = jnp.concatenate([prefix, self.embed_tokens(token_ids).astype(prefix.dtype)], 1)
        prefix_mask = jnp.ones(prefix.shape[:2], jnp.int32)
        return embeds, jnp.concatenate([prefix_mask, token_mask.astype(jnp.int32)], axis=1)

    def __call__(
        self,
        ref: jnp.ndarray,
        main: jnp.ndarray,
        question_ids: jnp.ndarray,
        question_mask: jnp.ndarray,
        answer_ids: jnp.ndarray,
        answer_mask: jnp.ndarray,
        train: bool = True,
        **offsets: jnp.ndarray | None,
    ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Teacher-forced forward pass (`offsets`: `main_offset`/`residual_offset`, see `encode`).

        Args:
          ref, main: `uint8[B, S, S]`.
          question_ids, question_mask: `int32[B, Lq]`, left-padded.
          answer_ids, answer_mask: `int32[B, La]`, answer + EOS, right-padded.
        Returns:
          logits `float32[B, La, V]`, where `logits[:, t]` predicts `answer_ids[:, t]`;
          the encoder features (see `encode`).
        """
        prefix, features = self.encode(ref, main, train=train, **offsets)
        # Question and answer in one embedding lookup: its gradient is then one scatter-add into
        # `wte`, summed across devices once rather than once per lookup.
        embeds, mask = self._append_tokens(
            prefix, jnp.concatenate([question_ids, answer_ids], axis=1),
            jnp.concatenate([question_mask.astype(jnp.int32), answer_mask.astype(jnp.int32)], 1))
        prompt_length = prefix.shape[1] + question_ids.shape[1]
        answer_length = answer_ids.shape[1]
        hidden = self.decoder.hidden_states(
            embeds, mask, position_ids_from_mask(mask), deterministic=not train
        )
        # Position t of the answer is predicted from the token before it: the last prompt token
        # for t = 0. The LM head only runs where a loss is taken.
        answer_hidden = hidden[:, prompt_length - 1 : prompt_length - 1 + answer_length]
        return self.decoder.logits(answer_hidden), features
