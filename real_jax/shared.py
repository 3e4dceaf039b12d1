"""What the JAX model and its PyTorch port (`real_jax.interop.torch_model`) share, numpy only.

Both sides import these, so the exported model cannot drift from the trained one; the PyTorch
side never imports jax, so nothing here does either.

- `IMAGENET_MEAN`, `IMAGENET_STD`: torchvision's ImageNet normalisation, per RGB channel; the
  grayscale X-rays are repeated to 3 channels so ImageNet ResNet-50 weights load unchanged.
- `sincos_2d_positions`: the projector's fixed 2-D position codes for the encoder's tokens.
- `TRANSFORMS`: the registration transforms and their number of parameters.
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> number of parameters: rotation + shift; + isotropic scale; the full 2x3 matrix
TRANSFORMS = {"rigid": 3, "similarity": 4, "affine": 6}


def sincos_2d_positions(height: int, width: int, dim: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position codes, `float32[height * width, dim]` (dim % 4 == 0),
    tokens in row-major order: `[sin(x w), cos(x w), sin(y w), cos(y w)]` with the dim / 4
    frequencies `w_k = 10000 ** (-k / (dim / 4))`."""
    if dim % 4:
        raise ValueError(f"projector width must be a multiple of 4, got {dim}")
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
    y = ys.reshape(-1, 1) * omega[None]
    x = xs.reshape(-1, 1) * omega[None]
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)
