"""`PointwiseConv` (the ResNet's 1x1 convolutions as matrix multiplies) is `nn.Conv` with a 1x1
kernel: the same parameter, the same initial values and the same output."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from real_jax.models.resnet import PointwiseConv


@pytest.mark.parametrize("strides,size", [(1, 8), (2, 8), (2, 7)])
def test_pointwise_conv_is_a_1x1_convolution(strides, size):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, size, size, 6)), jnp.float32)
    conv = nn.Conv(5, (1, 1), strides=(strides, strides), padding=0, use_bias=False)
    pointwise = PointwiseConv(5, strides=strides)
    conv_vars = conv.init(jax.random.key(3), x)
    pointwise_vars = pointwise.init(jax.random.key(3), x)
    np.testing.assert_array_equal(pointwise_vars["params"]["kernel"],
                                  conv_vars["params"]["kernel"])
    expected = conv.apply(conv_vars, x)
    np.testing.assert_allclose(pointwise.apply(conv_vars, x), expected, rtol=1e-5, atol=1e-5)
    assert pointwise.apply(conv_vars, x).shape == expected.shape


def test_pointwise_conv_computes_in_its_dtype():
    x = jnp.ones((1, 4, 4, 3), jnp.float32)
    module = PointwiseConv(2, dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert module.apply(variables, x).dtype == jnp.bfloat16
