"""Aligns the reference image to the main image before the residual is formed, in JAX.

Follow-up radiographs are never taken in exactly the same position, so the plain `main - ref`
turns every shift, tilt or change of magnification into a false difference. With
`model.registration.enabled=True` the model first maps `ref` onto `main`'s pixel grid with the
transform that maximises their normalised cross-correlation (NCC, blind to exposure
differences), then forms the residual and encodes both images as usual
(docs/model.md, "Registration").

Geometry: a pixel's physical coordinates are `x` across the width in [-1, 1] and `y` down the
height in [-H/W, H/W] (square pixels, origin at the image centre). The transform maps a point of
the main image to the point of the reference image showing the same anatomy:

    x_ref = A @ x_main + t,      A = R(theta) * scale (rigid: scale 1; affine: I + free 2x2)

Estimation: Adam steps on `1 - NCC` over the pixels where the warped reference is defined,
coarse to fine (the images are downsampled by 2 per level; the parameters are in physical units,
so they carry from level to level unchanged). Every pair is registered independently (`vmap`)
in one compiled program with a fixed number of steps, so it runs inside the jitted train step.
No gradient flows through the estimate into the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.scipy.ndimage import map_coordinates

from real_jax.shared import TRANSFORMS


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """How `register` estimates the transform (`model.registration` in the config).

    Attributes:
      transform: `rigid` (rotation, shift), `similarity` (+ isotropic scale) or `affine`.
      levels: resolution levels, each half the size of the next; the coarsest comes first.
      steps: Adam steps per level.
      learning_rate: Adam step size at the coarsest level (physical units, radians); it halves
        at every finer level and decays to zero within a level (cosine).
      min_size: levels whose shorter side would fall below this many pixels are skipped.
    """

    transform: str = "similarity"
    levels: int = 3
    steps: int = 20
    learning_rate: float = 0.02
    min_size: int = 16


def transform_matrix(params: jnp.ndarray, transform: str) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`float32[P]` parameters -> `(A float32[2, 2], t float32[2])`; all-zero is the identity.

    rigid: (theta, tx, ty); similarity: (theta, log_scale, tx, ty); affine: (a, b, c, d, tx, ty)
    with `A = I + [[a, b], [c, d]]`. theta is in radians, counter-clockwise as displayed.
    """
    if transform == "affine":
        return jnp.eye(2) + params[:4].reshape(2, 2), params[4:6]
    theta = params[0]
    scale = jnp.exp(params[1]) if transform == "similarity" else 1.0
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # y points down the image, so this matrix turns points counter-clockwise on the screen.
    rotation = jnp.array([[cos, sin], [-sin, cos]])
    return scale * rotation, params[-2:]


def physical_grid(height: int, width: int) -> jnp.ndarray:
    """Physical coordinates of the pixel centres, `float32[H, W, 2]` as (x, y)."""
    x = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width * 2.0 - 1.0
    y = ((jnp.arange(height, dtype=jnp.float32) + 0.5) / height * 2.0 - 1.0) * (height / width)
    return jnp.stack(jnp.meshgrid(x, y, indexing="xy"), axis=-1)


def warp(image: jnp.ndarray, matrix: jnp.ndarray, shift: jnp.ndarray
         ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Samples `image` at `A @ x + t` for every pixel `x` of the same grid (bilinear).

    Args:
      image: `float32[H, W]`.
      matrix, shift: `float32[2, 2]`, `float32[2]` (see `transform_matrix`).
    Returns:
      warped `float32[H, W]` (edge values outside the image) and `valid float32[H, W]`, 1 where
      the sampled point lies inside the image.
    """
    height, width = image.shape
    points = physical_grid(height, width) @ matrix.T + shift
    col = (points[..., 0] + 1.0) * (width / 2.0) - 0.5
    row = (points[..., 1] * width + height) / 2.0 - 0.5
    warped = map_coordinates(image, [row, col], order=1, mode="nearest")
    eps = 1e-3  # pixels; rounding in the coordinate arithmetic must not drop the border pixels
    valid = (row >= -eps) & (row <= height - 1 + eps) & (col >= -eps) & (col <= width - 1 + eps)
    return warped, valid.astype(jnp.float32)


def ncc(fixed: jnp.ndarray, moving: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
    """Normalised cross-correlation of two `float32[H, W]` images over `weight`; in [-1, 1]."""
    total = jnp.maximum(weight.sum(), 1.0)
    mean = lambda x: (x * weight).sum() / total
    f = fixed - mean(fixed)
    m = moving - mean(moving)
    return mean(f * m) / jnp.sqrt(mean(f * f) * mean(m * m) + 1e-8)


def _pyramid_shapes(height: int, width: int, config: RegistrationConfig) -> list[tuple[int, int]]:
    """Level shapes, coarsest first; levels smaller than `min_size` are dropped."""
    shapes = []
    for level in reversed(range(config.levels)):
        factor = 2**level
        shape = (max(1, round(height / factor)), max(1, round(width / factor)))
        if min(shape) >= config.min_size or level == 0:
            shapes.append(shape)
    return shapes


def estimate_transform(fixed: jnp.ndarray, moving: jnp.ndarray,
                       config: RegistrationConfig) -> jnp.ndarray:
    """Parameters `float32[P]` mapping `fixed` (main) coordinates into `moving` (ref).

    Args:
      fixed, moving: `float32[H, W]` images of one pair.
    """
    params = jnp.zeros((TRANSFORMS[config.transform],), jnp.float32)
    for index, shape in enumerate(_pyramid_shapes(*fixed.shape, config)):
        f = jax.image.resize(fixed, shape, "linear", antialias=True)
        m = jax.image.resize(moving, shape, "linear", antialias=True)

        def loss(p: jnp.ndarray, f: jnp.ndarray = f, m: jnp.ndarray = m) -> jnp.ndarray:
            warped, valid = warp(m, *transform_matrix(p, config.transform))
            return 1.0 - ncc(f, warped, valid)

        schedule = optax.cosine_decay_schedule(config.learning_rate / 2**index, config.steps)
        optimizer = optax.adam(schedule)

        def step(_: int, carry: tuple, loss: Any = loss, optimizer: Any = optimizer) -> tuple:
            p, state = carry
            updates, state = optimizer.update(jax.grad(loss)(p), state, p)
            return optax.apply_updates(p, updates), state

        params, _ = jax.lax.fori_loop(0, config.steps, step, (params, optimizer.init(params)))
    return params


def register(ref: jnp.ndarray, main: jnp.ndarray, config: RegistrationConfig
             ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Aligns every `ref` to its `main`.

    Args:
      ref, main: `uint8[B, H, W]` or `float32[B, H, W]` on the 0..255 scale.
    Returns:
      aligned ref `float32[B, H, W]` on the same scale, where pixels with no reference data
      (outside its field of view after the transform) take `main`'s value so they show no
      difference; and the parameters `float32[B, P]` (see `transform_matrix`).
    """
    ref = jax.lax.stop_gradient(ref.astype(jnp.float32))
    main = jax.lax.stop_gradient(main.astype(jnp.float32))

    def one(r: jnp.ndarray, m: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        params = estimate_transform(m / 255.0, r / 255.0, config)
        warped, valid = warp(r, *transform_matrix(params, config.transform))
        return jnp.where(valid > 0, warped, m), params

    aligned, params = jax.vmap(one)(ref, main)
    return jax.lax.stop_gradient(aligned), jax.lax.stop_gradient(params)


def make_align_fn(config: RegistrationConfig) -> Callable[[jnp.ndarray, jnp.ndarray],
                                                          jnp.ndarray]:
    """`align(ref, main) -> aligned ref float32[B, H, W]`, jitted: `register` without the
    parameters, for drawing the residual the model saw."""
    return jax.jit(lambda ref, main: register(ref, main, config)[0])


def rotation_degrees(matrix: jnp.ndarray) -> jnp.ndarray:
    """The rotation angle of `float32[..., 2, 2]` transforms, in degrees."""
    return jnp.degrees(jnp.arctan2(matrix[..., 0, 1] - matrix[..., 1, 0],
                                   matrix[..., 0, 0] + matrix[..., 1, 1]))


def mean_displacement_px(matrix_a: jnp.ndarray, shift_a: jnp.ndarray, matrix_b: jnp.ndarray,
                         shift_b: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """Mean distance, in pixels, between where two transforms send each pixel of the image."""
    grid = physical_grid(height, width).reshape(-1, 2)
    diff = grid @ (matrix_a - matrix_b).T + (shift_a - shift_b)
    return jnp.linalg.norm(diff, axis=-1).mean() * (width / 2.0)


__all__ = [
    "TRANSFORMS", "RegistrationConfig", "estimate_transform",
    "make_align_fn", "mean_displacement_px", "ncc", "physical_grid", "register", "rotation_degrees",
    "transform_matrix", "warp",
]
