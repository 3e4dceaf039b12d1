"""Aligns the reference image to the main image in PyTorch: `real_jax/models/registration.py`
without jax.

An exported model trained with `model.registration.enabled=True` (`config.json`
`"registration"`) must align each pair exactly as the JAX model did before forming the
residual, or it would read every positioning change as a difference. This module re-implements
the same algorithm operation by operation, in float32:

* geometry: physical coordinates `x` across the width in [-1, 1], `y` down the height in
  [-H/W, H/W]; `x_ref = A @ x_main + t` with the same parameterisation (`transform_matrix`);
* sampling: bilinear with edge values outside the image, written out the way
  `map_coordinates(order=1, mode="nearest")` does it (floor, clamped neighbours), from the same
  pixel coordinates that give the validity mask (1e-3 px tolerance at the border);
* estimation: `1 - NCC` over the valid pixels, Adam with optax's update rule (b1 0.9, b2 0.999,
  eps 1e-8, bias-corrected) under a per-level cosine decay from `learning_rate / 2**level`,
  coarse to fine over the same pyramid (antialiased bilinear resizes, which equal
  `jax.image.resize(..., "linear", antialias=True)` to 1e-7).

Adam is written out rather than taken from `torch.optim` so that it is optax's rule step for step
and so that the whole batch is one tensor of parameters `[B, P]`: every operation is elementwise
or per pair, so each pair is registered independently, exactly as under `jax.vmap`.

The sampler is not `F.grid_sample(padding_mode="border", align_corners=False)`, although that
computes the same values: its gradient is zero at exactly the border and it rounds its own
unnormalisation differently. Both matter at the start, where the identity puts every sample on
an exact pixel centre, the kink of bilinear interpolation, so the first gradient depends on how
each coordinate rounds, and Adam carries that into the estimate. The estimate is therefore only
reproducible to the float rounding of the coordinates: JAX itself moves by up to 0.07 px (mean
over 4 synthetic pairs 0.03 px) when its pixel grid is computed in float64 and rounded instead of
in float32. This port stays at that level (tests/interop/test_registration_vs_reference.py),
and where every level's pixel coordinates are exact (sides that are powers of two, e.g. 512) it
agrees with JAX to 1e-5 px. The sampler is written out rather than taken from `grid_sample`
because `grid_sample` lands about twice as far from JAX (BENCHMARKS.md, section 7).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from real_jax.shared import TRANSFORMS

DEFAULTS = {"transform": "similarity", "levels": 3, "steps": 20, "learning_rate": 0.02,
            "min_size": 16}  # `real_jax.models.registration.RegistrationConfig`'s defaults
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults
BORDER_EPS_PX = 1e-3  # pixels; rounding in the coordinate arithmetic must not drop border pixels


def resolve_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The registration config dict with `RegistrationConfig`'s defaults filled in, validated."""
    unknown = set(config or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown registration config fields {sorted(unknown)}")
    out = {**DEFAULTS, **(config or {})}
    if out["transform"] not in TRANSFORMS:
        raise ValueError(f"registration transform {out['transform']!r} is not one of "
                         f"{sorted(TRANSFORMS)}")
    if out["levels"] < 1 or out["steps"] < 1 or not out["learning_rate"] > 0:
        raise ValueError(f"registration needs levels >= 1, steps >= 1 and learning_rate > 0, "
                         f"got {out}")
    return out


def transform_matrix(params: torch.Tensor, transform: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`float32[B, P]` parameters -> `(A float32[B, 2, 2], t float32[B, 2])`; zeros: identity.

    rigid: (theta, tx, ty); similarity: (theta, log_scale, tx, ty); affine: (a, b, c, d, tx, ty)
    with `A = I + [[a, b], [c, d]]`. theta is in radians, counter-clockwise as displayed.
    """
    if transform == "affine":
        eye = torch.eye(2, dtype=params.dtype, device=params.device)
        return eye + params[:, :4].reshape(-1, 2, 2), params[:, 4:6]
    theta = params[:, 0]
    cos, sin = torch.cos(theta), torch.sin(theta)
    # y points down the image, so this matrix turns points counter-clockwise on the screen.
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    if transform == "similarity":
        rotation = torch.exp(params[:, 1])[:, None, None] * rotation
    return rotation, params[:, -2:]


def physical_grid(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Physical coordinates of the pixel centres, `float32[H, W, 2]` as (x, y)."""
    x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width * 2.0 - 1.0
    y = ((torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height * 2.0 - 1.0
         ) * (height / width)
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def sample_bilinear(image: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """`map_coordinates(image, [row, col], order=1, mode="nearest")` for a batch.

    Args:
      image: `float32[B, H, W]`.
      row, col: `float32[B, h, w]` pixel coordinates (pixel centres at integers).
    Returns:
      `float32[B, h, w]`; the four neighbours' indices are clamped to the image, so points
      outside it take the edge values. The gradient with respect to `row` / `col` is JAX's too:
      the floor is constant, so at an exact integer it is the forward difference (zero where the
      forward neighbour is clamped onto the edge pixel).
    """
    batch, height, width = image.shape
    flat = image.reshape(batch, height * width)
    row_low, col_low = torch.floor(row), torch.floor(col)
    row_weight, col_weight = row - row_low, col - col_low  # upper neighbours' weights
    row_low, col_low = row_low.long(), col_low.long()
    rows = [(row_low, 1 - row_weight), (row_low + 1, row_weight)]
    cols = [(col_low, 1 - col_weight), (col_low + 1, col_weight)]
    out = None
    for r, wr in rows:  # the same order of terms as jax.scipy.ndimage.map_coordinates
        for c, wc in cols:
            index = r.clamp(0, height - 1) * width + c.clamp(0, width - 1)
            value = torch.gather(flat, 1, index.reshape(batch, -1)).reshape(index.shape)
            term = wr * wc * value
            out = term if out is None else out + term
    return out


def warp(image: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples every `image` at `A @ x + t` for each pixel `x` of the same grid (bilinear).

    Args:
      image: `float32[B, H, W]`.
      matrix, shift: `float32[B, 2, 2]`, `float32[B, 2]` (see `transform_matrix`).
    Returns:
      warped `float32[B, H, W]` (edge values outside the image) and `valid float32[B, H, W]`,
      1 where the sampled point lies inside the image.
    """
    height, width = image.shape[-2:]
    points = torch.einsum("hwj,bij->bhwi", physical_grid(height, width, image.device), matrix)
    points = points + shift[:, None, None, :]
    col = (points[..., 0] + 1.0) * (width / 2.0) - 0.5
    row = (points[..., 1] * width + height) / 2.0 - 0.5
    warped = sample_bilinear(image, row, col)
    eps = BORDER_EPS_PX
    valid = ((row >= -eps) & (row <= height - 1 + eps) & (col >= -eps)
             & (col <= width - 1 + eps))
    return warped, valid.to(torch.float32)


def ncc(fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of `float32[B, H, W]` pairs over `weight`: `float32[B]`."""
    total = weight.sum((1, 2)).clamp(min=1.0)
    mean = lambda x: (x * weight).sum((1, 2)) / total
    f = fixed - mean(fixed)[:, None, None]
    m = moving - mean(moving)[:, None, None]
    return mean(f * m) / torch.sqrt(mean(f * f) * mean(m * m) + 1e-8)


def pyramid_shapes(height: int, width: int, config: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Level shapes, coarsest first; levels smaller than `min_size` are dropped (level 0 never)."""
    shapes = []
    for level in reversed(range(config["levels"])):
        factor = 2**level
        shape = (max(1, round(height / factor)), max(1, round(width / factor)))
        if min(shape) >= config["min_size"] or level == 0:
            shapes.append(shape)
    return shapes


def resize(images: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """`float32[B, H, W]` -> `float32[B, h, w]`, antialiased bilinear (jax.image.resize linear)."""
    if tuple(images.shape[-2:]) == tuple(shape):
        return images
    return F.interpolate(images[:, None], size=shape, mode="bilinear", antialias=True,
                         align_corners=False)[:, 0]


def cosine_decay(init_value: float, decay_steps: int, count: int) -> torch.Tensor:
    """`optax.cosine_decay_schedule(init_value, decay_steps)(count)` in float32."""
    fraction = torch.tensor(min(count, decay_steps), dtype=torch.float32) / float(decay_steps)
    return init_value * (0.5 * (1.0 + torch.cos(math.pi * fraction)))


def estimate_transform(fixed: torch.Tensor, moving: torch.Tensor, config: Mapping[str, Any]
                       ) -> torch.Tensor:
    """Parameters `float32[B, P]` mapping each `fixed` (main) into its `moving` (ref).

    Args:
      fixed, moving: `float32[B, H, W]` images (0..1 scale).
      config: a resolved registration config (`resolve_config`).
    """
    transform, steps = config["transform"], int(config["steps"])
    params = fixed.new_zeros((fixed.shape[0], TRANSFORMS[transform]))
    for index, shape in enumerate(pyramid_shapes(*fixed.shape[-2:], config)):
        f, m = resize(fixed, shape), resize(moving, shape)
        # optax.adam(cosine_decay_schedule(...)), re-initialised at every level.
        mu, nu = torch.zeros_like(params), torch.zeros_like(params)
        for count in range(steps):
            p = params.detach().requires_grad_(True)
            warped, valid = warp(m, *transform_matrix(p, transform))
            loss = (1.0 - ncc(f, warped, valid)).sum()  # pairs are independent: sum = per pair
            (grad,) = torch.autograd.grad(loss, p)
            mu = (1 - ADAM_B1) * grad + ADAM_B1 * mu
            nu = (1 - ADAM_B2) * grad * grad + ADAM_B2 * nu
            step = torch.tensor(count + 1, dtype=torch.float32)
            mu_hat = mu / (1 - torch.tensor(ADAM_B1, dtype=torch.float32) ** step)
            nu_hat = nu / (1 - torch.tensor(ADAM_B2, dtype=torch.float32) ** step)
            update = mu_hat / (torch.sqrt(nu_hat) + ADAM_EPS)
            learning_rate = cosine_decay(config["learning_rate"] / 2**index, steps, count)
            params = params + (-learning_rate) * update
    return params


def register(ref: torch.Tensor, main: torch.Tensor, config: Mapping[str, Any] | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligns every `ref` to its `main` (as `real_jax.models.registration.register`).

    Args:
      ref, main: `uint8[B, H, W]` or `float32[B, H, W]` on the 0..255 scale.
      config: the dict form of `RegistrationConfig` (transform, levels, steps, learning_rate,
        min_size); missing fields take its defaults.
    Returns:
      aligned ref `float32[B, H, W]` on the same scale, where pixels with no reference data
      (outside its field of view after the transform) take `main`'s value so they show no
      difference; and the parameters `float32[B, P]` (see `transform_matrix`). Neither carries
      a gradient.
    """
    config = resolve_config(config)
    # The estimate needs autograd even when the caller runs under no_grad / inference_mode;
    # the clones turn inference tensors into ordinary ones.
    with torch.inference_mode(False), torch.enable_grad():
        ref = ref.detach().to(torch.float32).clone()
        main = main.detach().to(torch.float32).clone()
        params = estimate_transform(main / 255.0, ref / 255.0, config).detach()
        with torch.no_grad():
            warped, valid = warp(ref, *transform_matrix(params, config["transform"]))
            aligned = torch.where(valid > 0, warped, main)
    return aligned, params


__all__ = [
    "DEFAULTS", "TRANSFORMS", "estimate_transform", "ncc", "physical_grid", "pyramid_shapes",
    "register", "resolve_config", "sample_bilinear", "transform_matrix", "warp",
]
