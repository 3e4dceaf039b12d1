"""Registration of ref onto main (real_jax/models/registration.py) and its use inside the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline import synthetic_images as si
from real_jax.models import registration as reg
from tests.model.helpers import init_variables, jit_apply, random_batch, tiny_config, tiny_model

WIDTH = 120  # 144 x 120: height / width is exactly the renderer's aspect, so coordinates agree


def _rendered_pairs(num: int, seed: int, misalignment: float = 1.0):
    """Stacked `si.misaligned_pair`s: one anatomy under two acquisitions, no finding change."""
    rng = np.random.default_rng(seed)
    pairs = [si.misaligned_pair(WIDTH, rng, misalignment) for _ in range(num)]
    ref, main, matrices, shifts = (np.stack(x) for x in zip(*pairs, strict=True))
    return ref, main, matrices.astype(np.float32), shifts.astype(np.float32)


def _errors(params, matrices, shifts, transform, shape):
    out = []
    for p, matrix, shift in zip(params, matrices, shifts, strict=True):
        est_matrix, est_shift = reg.transform_matrix(p, transform)
        px = reg.mean_displacement_px(est_matrix, est_shift, matrix, shift, *shape)
        deg = abs(reg.rotation_degrees(est_matrix) - reg.rotation_degrees(jnp.asarray(matrix)))
        out.append((float(px), float(deg)))
    return np.asarray(out)


def test_identity_parameters_leave_the_image_unchanged():
    image = jnp.asarray(np.random.default_rng(0).random((20, 16)), jnp.float32)
    for transform, size in reg.TRANSFORMS.items():
        warped, valid = reg.warp(image, *reg.transform_matrix(jnp.zeros(size), transform))
        np.testing.assert_allclose(warped, image, atol=1e-5)
        assert valid.min() == 1.0


def test_warp_by_a_whole_pixel_shifts_the_image_and_marks_the_uncovered_column():
    image = jnp.asarray(np.random.default_rng(0).random((12, 10)), jnp.float32)
    one_pixel = 2.0 / image.shape[1]  # physical units per pixel
    warped, valid = reg.warp(image, jnp.eye(2), jnp.array([one_pixel, 0.0]))
    np.testing.assert_allclose(warped[:, :-1], image[:, 1:], atol=1e-5)
    assert valid[:, :-1].min() == 1.0 and valid[:, -1].max() == 0.0


def test_rotation_parameter_rotates_counter_clockwise_on_screen():
    matrix, _ = reg.transform_matrix(jnp.array([np.pi / 2, 0.0, 0.0]), "rigid")
    # A main pixel right of the centre shows the ref point above the centre (y points down),
    # i.e. the ref content is turned 90 degrees counter-clockwise in the output.
    np.testing.assert_allclose(matrix @ jnp.array([1.0, 0.0]), [0.0, -1.0], atol=1e-6)
    assert float(reg.rotation_degrees(matrix)) == pytest.approx(90.0)


@pytest.mark.parametrize("transform", ["similarity", "affine"])
def test_recovers_known_misalignment_of_synthetic_studies(transform):
    ref, main, matrices, shifts = _rendered_pairs(6, seed=1, misalignment=2.0)
    config = reg.RegistrationConfig(transform=transform)
    _, params = jax.jit(lambda r, m: reg.register(r, m, config))(ref, main)
    before = _errors(np.zeros_like(params), matrices, shifts, transform, ref.shape[1:])
    after = _errors(params, matrices, shifts, transform, ref.shape[1:])
    assert before[:, 0].mean() > 3.0  # the pairs really are misaligned (px)
    # Measured: mean 0.04 px, worst 0.06 px, rotation within 0.05 degrees.
    assert after[:, 0].max() < 0.25, after
    assert after[:, 1].max() < 0.2, after


def test_rigid_model_recovers_shift_and_rotation_without_scale_change():
    rng = np.random.default_rng(3)
    image = si.render_frontal(WIDTH, si.random_anatomy(rng), si.random_acquisition(rng), {}, rng)
    params_true = jnp.array([np.deg2rad(4.0), 0.05, -0.03])
    moved, _ = reg.warp(jnp.asarray(image, jnp.float32),
                        *reg.transform_matrix(params_true, "rigid"))
    config = reg.RegistrationConfig(transform="rigid")
    # main = ref sampled at A x + t, so registering ref onto main must find that transform.
    _, params = reg.register(image[None], moved[None], config)
    matrix, shift = reg.transform_matrix(params[0], "rigid")
    true_matrix, true_shift = reg.transform_matrix(params_true, "rigid")
    assert float(reg.mean_displacement_px(matrix, shift, true_matrix, true_shift,
                                          *image.shape)) < 0.25


def test_registration_shrinks_the_residual_of_unchanged_anatomy():
    ref, main, _, _ = _rendered_pairs(4, seed=2, misalignment=2.0)
    aligned, _ = reg.register(ref, main, reg.RegistrationConfig())
    inner = (slice(None), slice(8, -8), slice(8, -8))  # away from the field-of-view border
    before = np.abs(main.astype(np.float32) - ref)[inner].mean()
    after = np.abs(main.astype(np.float32) - np.asarray(aligned))[inner].mean()
    # What is left is quantum noise and the exposure difference (gain, gamma) between studies.
    assert after < 0.65 * before, (before, after)


def test_pixels_outside_the_reference_field_of_view_take_the_main_image():
    ref, main, _, _ = _rendered_pairs(1, seed=4, misalignment=3.0)
    config = reg.RegistrationConfig()
    aligned, params = reg.register(ref, main, config)
    _, valid = reg.warp(jnp.asarray(ref[0], jnp.float32),
                        *reg.transform_matrix(params[0], config.transform))
    uncovered = np.asarray(valid) == 0
    assert uncovered.any()
    # No ref data there: the aligned ref copies main, so the residual is exactly zero.
    np.testing.assert_array_equal(np.asarray(aligned[0])[uncovered], main[0][uncovered])


def test_model_with_registration_equals_model_fed_the_registered_reference():
    config = tiny_config()
    batch = random_batch(config, 2)
    registration = reg.RegistrationConfig(steps=3, levels=2)
    plain = tiny_model(config)
    registered = plain.clone(registration=registration)
    variables = init_variables(plain, batch)
    logits, _ = jit_apply(registered)(variables, batch)
    aligned, _ = jax.jit(lambda r, m: reg.register(r, m, registration))(batch["ref"], batch["main"])
    # The estimate really moved the reference (so the comparison below can tell the two apart).
    assert np.abs(np.asarray(aligned) - np.asarray(batch["ref"], np.float32)).max() > 1.0
    expected, _ = jit_apply(plain)(variables, dict(batch, ref=aligned))
    np.testing.assert_allclose(logits, expected, atol=1e-5)
