"""`real_jax.shared`: the position codes both frameworks use, checked entry by entry."""

import math

import numpy as np
import pytest

from real_jax.shared import sincos_2d_positions


def test_position_codes_follow_the_formula():
    height, width, dim = 3, 5, 16
    codes = sincos_2d_positions(height, width, dim)
    assert codes.shape == (15, 16) and codes.dtype == np.float32
    quarter = dim // 4
    for y in range(height):
        for x in range(width):
            for k in range(quarter):
                w = 10000 ** (-k / quarter)
                expected = (math.sin(x * w), math.cos(x * w), math.sin(y * w), math.cos(y * w))
                got = codes[y * width + x, [k, quarter + k, 2 * quarter + k, 3 * quarter + k]]
                # float32 rounding of values in [-1, 1]: half an ulp of 1.0 is 6e-8
                np.testing.assert_allclose(got, expected, rtol=0, atol=1.2e-7)


def test_position_width_must_be_a_multiple_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d_positions(2, 2, 6)
