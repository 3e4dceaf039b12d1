"""Turns the pipeline's uint8 grayscale crops into encoder inputs, on device.

The host sends `ref` and `main` as `uint8[B, S, S]`; the model forms the residual `main - ref`
from the same unit-range images on device, so it costs no host bandwidth and sees exactly the
pixels the encoders see. Grayscale is repeated to
3 channels so ImageNet-pretrained ResNet-50 weights load unchanged.
"""

import jax.numpy as jnp

from real_jax.shared import IMAGENET_MEAN, IMAGENET_STD


def to_unit_float(image: jnp.ndarray) -> jnp.ndarray:
    """`uint8[B, S, S]` -> `float32[B, S, S]` in [0, 1]."""
    return image.astype(jnp.float32) / 255.0


def normalize_image(image: jnp.ndarray) -> jnp.ndarray:
    """`float32[B, S, S]` in [0, 1] -> ImageNet-normalised `float32[B, S, S, 3]`."""
    x = image[..., None]
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def normalize_residual(residual: jnp.ndarray) -> jnp.ndarray:
    """`float32[B, S, S]` in [-1, 1] -> `float32[B, S, S, 3]`.

    A difference of two ImageNet-normalised images: the means cancel, the scale stays 1/std.
    """
    return residual[..., None] / jnp.asarray(IMAGENET_STD)
