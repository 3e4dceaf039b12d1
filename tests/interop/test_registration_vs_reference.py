"""PyTorch registration (`real_jax/interop/torch_registration.py`) against the JAX original
(`real_jax/models/registration.py`), alone and inside an exported model.

How close the two can be depends on the image size. The estimate starts at the identity, where
every sample falls exactly on a pixel centre, the kink of bilinear interpolation: the first
gradient depends on how each coordinate rounds (a one-sided difference either way) and Adam
carries that into the estimate. Where the pyramid's pixel arithmetic is exact (sides that are
powers of two) both implementations compute the same coordinates and agree to 1e-5 px; elsewhere
(e.g. 144 x 120) they agree only as well as JAX agrees with itself under another rounding: with
its pixel grid computed in float64 and rounded, JAX's own estimates move by up to 0.07 px.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs.real import get_config
from configs.upgrade import restore_config
from data_pipeline import synthetic_images as si
from real_jax.interop import export as ex
from real_jax.interop import torch_model
from real_jax.interop import torch_registration as treg
from real_jax.interop.torch_model import TorchReAl
from real_jax.models import registration as reg
from real_jax.training.state import model_args
from tests.interop.helpers import assert_same_greedy_tokens, tiny_real

WIDTH = 120  # 144 x 120: the renderer's aspect exactly, so the true transforms apply


def _pairs(width: int, num: int, seed: int, crop: int | None = None):
    """`si.misaligned_pair`s at twice the usual misalignment, stacked; `crop` keeps the central
    `crop` rows (square images for the model; the true transforms then no longer apply)."""
    rng = np.random.default_rng(seed)
    pairs = [si.misaligned_pair(width, rng, 2.0) for _ in range(num)]
    ref, main, matrices, shifts = (np.stack(x) for x in zip(*pairs, strict=True))
    if crop is not None:
        top = (ref.shape[1] - crop) // 2
        ref, main = ref[:, top: top + crop], main[:, top: top + crop]
    return ref, main, matrices.astype(np.float32), shifts.astype(np.float32)


def _displacement_px(params_a, matrices_b, shifts_b, transform: str, shape) -> np.ndarray:
    """Per pair, the mean distance in pixels between where the two transforms send a pixel."""
    out = []
    for p, matrix, shift in zip(params_a, matrices_b, shifts_b, strict=True):
        est_matrix, est_shift = reg.transform_matrix(jnp.asarray(p), transform)
        out.append(float(reg.mean_displacement_px(est_matrix, est_shift, jnp.asarray(matrix),
                                                  jnp.asarray(shift), *shape)))
    return np.asarray(out)


def _as_transforms(params: np.ndarray, transform: str) -> tuple[np.ndarray, np.ndarray]:
    matrices, shifts = jax.vmap(lambda p: reg.transform_matrix(p, transform))(jnp.asarray(params))
    return np.asarray(matrices), np.asarray(shifts)


def _both(ref: np.ndarray, main: np.ndarray, transform: str):
    """`(aligned, params)` from JAX and from PyTorch, as numpy."""
    config = reg.RegistrationConfig(transform=transform)
    jax_aligned, jax_params = jax.jit(lambda r, m: reg.register(r, m, config))(ref, main)
    torch_aligned, torch_params = treg.register(torch.from_numpy(ref), torch.from_numpy(main),
                                                {"transform": transform})
    return ((np.asarray(jax_aligned), np.asarray(jax_params)),
            (torch_aligned.numpy(), torch_params.numpy()))


def test_pyramid_and_downsampling_are_jax_s():
    for height, width in [(144, 120), (64, 64), (77, 64), (40, 30), (20, 17)]:
        for levels, min_size in [(3, 16), (4, 8), (1, 16), (5, 32)]:
            config = reg.RegistrationConfig(levels=levels, min_size=min_size)
            assert (treg.pyramid_shapes(height, width, treg.resolve_config(
                {"levels": levels, "min_size": min_size}))
                    == reg._pyramid_shapes(height, width, config))
    image = np.random.default_rng(0).random((2, 144, 120)).astype(np.float32)
    for shape in [(72, 60), (36, 30), (18, 15), (144, 120)]:
        expected = jax.vmap(lambda x, s=shape: jax.image.resize(x, s, "linear", antialias=True))(
            jnp.asarray(image))
        np.testing.assert_allclose(treg.resize(torch.from_numpy(image), shape).numpy(),
                                   np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize("transform", sorted(treg.TRANSFORMS))
def test_same_parameters_give_jax_s_transform_warp_loss_and_gradient(transform):
    rng = np.random.default_rng(1)
    image = rng.random((3, 36, 30)).astype(np.float32)
    fixed = rng.random((3, 36, 30)).astype(np.float32)
    # Away from the identity, where no sample lands exactly on a pixel centre.
    params = rng.normal(0, 0.05, (3, treg.TRANSFORMS[transform])).astype(np.float32)
    matrix, shift = treg.transform_matrix(torch.from_numpy(params), transform)
    jax_matrix, jax_shift = _as_transforms(params, transform)
    np.testing.assert_allclose(matrix.numpy(), jax_matrix, atol=1e-6)
    np.testing.assert_allclose(shift.numpy(), jax_shift, atol=1e-6)

    def jax_loss(p, m, f):
        warped, valid = reg.warp(m, *reg.transform_matrix(p, transform))
        return 1.0 - reg.ncc(f, warped, valid), (warped, valid)

    (loss, (warped, valid)), grad = jax.vmap(jax.value_and_grad(jax_loss, has_aux=True))(
        jnp.asarray(params), jnp.asarray(image), jnp.asarray(fixed))
    p = torch.from_numpy(params).requires_grad_(True)
    torch_warped, torch_valid = treg.warp(torch.from_numpy(image),
                                          *treg.transform_matrix(p, transform))
    torch_loss = 1.0 - treg.ncc(torch.from_numpy(fixed), torch_warped, torch_valid)
    (torch_grad,) = torch.autograd.grad(torch_loss.sum(), p)
    np.testing.assert_array_equal(torch_valid.numpy(), np.asarray(valid))
    assert 0 < torch_valid.numpy().mean() < 1  # the border mask is exercised
    np.testing.assert_allclose(torch_warped.detach().numpy(), np.asarray(warped), atol=1e-5)
    np.testing.assert_allclose(torch_loss.detach().numpy(), np.asarray(loss), atol=1e-5)
    np.testing.assert_allclose(torch_grad.numpy(), np.asarray(grad), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("transform", sorted(treg.TRANSFORMS))
def test_registration_reproduces_jax_where_pixel_arithmetic_is_exact(transform):
    # 64 x 64 crops: levels 16, 32, 64, where every pixel coordinate is exact in float32.
    ref, main, _, _ = _pairs(64, 3, seed=1, crop=64)
    (jax_aligned, jax_params), (torch_aligned, torch_params) = _both(ref, main, transform)
    moved = _displacement_px(jax_params, *_as_transforms(np.zeros_like(jax_params), transform),
                             transform, ref.shape[1:])
    assert moved.min() > 1.0  # the pairs are misaligned and both really registered them
    px = _displacement_px(torch_params, *_as_transforms(jax_params, transform), transform,
                          ref.shape[1:])
    # Measured: at most 8e-6 px and 7e-4 grey levels. A 1% change of the learning rate moves
    # the estimate by 2e-3 to 4e-3 px, one Adam step fewer per level by 0.01 to 0.04 px.
    assert px.max() < 5e-4, px
    assert np.abs(torch_aligned - jax_aligned).max() < 0.01


def test_registration_agrees_with_jax_on_synthetic_misaligned_pairs():
    ref, main, matrices, shifts = _pairs(WIDTH, 4, seed=1)
    (jax_aligned, jax_params), (torch_aligned, torch_params) = _both(ref, main, "similarity")
    shape = ref.shape[1:]
    px = _displacement_px(torch_params, *_as_transforms(jax_params, "similarity"), "similarity",
                          shape)
    # Measured on these pairs: 0.005, 0.024, 0.002, 0.001 px (JAX with its grid rounded
    # differently: 0.006, 0.071, 0.038, 0.022 px). Over 8 other pairs and all three transforms:
    # mean 0.02 to 0.04, worst 0.095 px. Not registering at all leaves 4.8 to 8.3 px here.
    assert px.mean() < 0.02 and px.max() < 0.05, px
    # Both find the true transform (JAX: 0.04 to 0.08 px off), neither worse than the other by
    # more than their disagreement.
    torch_error = _displacement_px(torch_params, matrices, shifts, "similarity", shape)
    jax_error = _displacement_px(jax_params, matrices, shifts, "similarity", shape)
    assert torch_error.max() < 0.25, torch_error
    assert np.all(np.abs(torch_error - jax_error) <= px + 1e-4)
    # Aligned images: measured mean 0.047 grey levels, 99.9th percentile 0.83; 0.02% of the
    # pixels differ by more than 1, where the two masks disagree at the edge of the reference's
    # field of view (one takes ref's pixel, the other main's). Unaligned: mean 18.
    diff = np.abs(torch_aligned - jax_aligned)
    assert diff.mean() < 0.2 and (diff > 1.0).mean() < 1e-3, (diff.mean(), (diff > 1).mean())


def test_registration_needs_no_caller_gradient_mode():
    # TorchReAl runs under no_grad; deployments may use inference_mode.
    ref, main, _, _ = _pairs(32, 2, seed=2, crop=32)
    ref, main = torch.from_numpy(ref), torch.from_numpy(main)
    config = {"levels": 1, "steps": 5}
    aligned, params = treg.register(ref, main, config)
    assert np.abs(params.numpy()).max() > 1e-3
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            again, again_params = treg.register(ref, main, config)
        np.testing.assert_array_equal(again_params.numpy(), params.numpy())
        np.testing.assert_array_equal(again.numpy(), aligned.numpy())
    assert not aligned.requires_grad and not params.requires_grad


# ----------------------------------------------------------------------------- exported model


@pytest.fixture(scope="module")
def registered_export(tmp_path_factory):
    """A tiny ReAl with random weights on 96 x 96 images that registers ref onto main, exported.

    96 (levels 24, 48, 96) is a size where the pixel arithmetic is not exact, so the PyTorch
    registration agrees with JAX's only to rounding (module docstring)."""
    root = tmp_path_factory.mktemp("registered_export")
    config = get_config("tiny")
    config.data.image_size = 96
    config.model.registration.enabled = True
    ref, main, _, _ = _pairs(96, 3, seed=0, crop=96)
    tiny = tiny_real(root, config, (ref, main))
    out = ex.export_variables(tiny["variables"]["params"], tiny["variables"]["batch_stats"],
                              config.to_dict(), tiny["tokenizer"], root / "torch_out")
    return {**tiny, "out": out, "torch": TorchReAl.load(out)}


def test_exported_registered_model_reproduces_jax_logits_and_answers(registered_export):
    model, variables = registered_export["model"], registered_export["variables"]
    batch, torch_model_ = registered_export["batch"], registered_export["torch"]
    summary = json.loads((registered_export["out"] / "config.json").read_text())
    assert summary["registration"] == {"transform": "similarity", "levels": 3, "steps": 20,
                                       "learning_rate": 0.02, "min_size": 16}
    assert model.registration is not None

    logits, _ = jax.jit(lambda v, *a: model.apply(v, *a, train=False))(variables,
                                                                       *model_args(batch))
    valid = batch["answer_mask"].astype(bool)
    torch_logits = torch_model_(*model_args(batch)).numpy()
    diff = np.abs(np.asarray(logits) - torch_logits)[valid].max()
    # Measured 9.2e-4 (mean 7e-5; logit std 2.7). The unregistered export agrees to 3.3e-6, and
    # so does this one on 64 x 64 images, where the two registrations agree to 1e-6 px; at 96
    # they differ by up to 0.03 px, so the aligned refs differ by 0.08 grey levels on average,
    # plus the odd pixel at the edge of ref's field of view, and the encoders see that.
    assert diff < 3e-3, diff
    torch_model_.config = {**torch_model_.config, "registration": None}
    try:  # what the export computed before it knew about registration
        unregistered = np.abs(np.asarray(logits) - torch_model_(*model_args(batch)).numpy())
    finally:
        torch_model_.config = {**torch_model_.config, "registration": summary["registration"]}
    print(f"\nregistered export, JAX vs PyTorch: max abs answer-logit diff {diff:.2e}; "
          f"without registration in PyTorch {unregistered[valid].max():.2e}")
    assert unregistered[valid].max() > 10 * 3e-3  # measured 0.09: the test sees registration

    assert_same_greedy_tokens(model, variables, torch_model_, batch,
                              registered_export["config"].generation.answer_max_tokens,
                              registered_export["tokenizer"].eos_id)


def test_unregistered_export_writes_null_and_never_registers(tmp_path, monkeypatch):
    config = get_config("tiny")
    tiny = tiny_real(tmp_path, config)
    params, batch_stats = tiny["variables"]["params"], tiny["variables"]["batch_stats"]
    old = config.to_dict()  # a config from before registration existed, as restored from disk
    del old["model"]["registration"]
    outs = {}
    for name, training_config in [("off", config.to_dict()),
                                  ("old", restore_config(old).to_dict())]:
        outs[name] = ex.export_variables(params, batch_stats, training_config,
                                         tiny["tokenizer"], tmp_path / name)
        assert json.loads((outs[name] / "config.json").read_text())["registration"] is None

    # An export written before this field existed has no key at all (same weights as "off").
    before = json.loads((outs["off"] / "config.json").read_text())
    del before["registration"]
    (outs["old"] / "config.json").write_text(json.dumps(before))

    def forbidden(*_):
        raise AssertionError("an unregistered model must not register")

    monkeypatch.setattr(torch_model, "register", forbidden)
    batch = tiny["batch"]
    logits = TorchReAl.load(outs["off"], with_tokenizer=False)(*model_args(batch)).numpy()
    legacy = TorchReAl.load(outs["old"], with_tokenizer=False)(*model_args(batch)).numpy()
    np.testing.assert_array_equal(logits, legacy)
    assert tiny["model"].registration is None
