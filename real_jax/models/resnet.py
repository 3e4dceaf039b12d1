"""ResNet encoders with torchvision's structure, as Flax linen modules.

The layout follows `torchvision.models.resnet50` exactly (bottleneck v1.5: the stride sits on the
3x3 convolution; symmetric explicit padding; a 1x1 projection shortcut on the first block of each
stage), so a torchvision state_dict maps one to one onto these parameters (see
`real_jax/interop/`). The encoder returns the last feature map, not logits: ReAl's projectors and
its consistency loss work on spatial features.

Parameter names: `conv1`, `bn1`, then `layer{s}_{b}` (stage s=1..4 in ResNet-50, block b) each
holding `conv1..3`, `bn1..3` and, on projection blocks, `downsample_conv` / `downsample_bn`.

The 1x1 convolutions (`conv1`, `conv3`, `downsample_conv`) run as matrix multiplies over the
channel axis (`PointwiseConv`): the same parameters as `nn.Conv` with a 1x1 kernel, but XLA:CPU
takes its slower convolution path for a 1x1 kernel (BENCHMARKS.md, section 1), while GPUs run
either as one GEMM.

`remat=True` checkpoints each bottleneck block (`flax.linen.remat`): the backward pass keeps only
the blocks' inputs and recomputes the activations inside a block from its input. Parameter and
batch-statistics names are the same either way.
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Any


class PointwiseConv(nn.Module):
    """A bias-free 1x1 convolution with stride `strides` as one matrix multiply:
    `float[B, H, W, Cin]` -> `float[B, ceil(H/s), ceil(W/s), features]`.

    Its parameter is `nn.Conv(features, (1, 1), use_bias=False)`'s (`kernel`,
    `float32[1, 1, Cin, features]`, the same initialiser), so checkpoints and torchvision weights
    fit either module.
    """

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    kernel_init: Callable[..., jnp.ndarray] = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                            jnp.float32)
        if self.strides > 1:  # a 1x1 kernel with stride s reads every s-th pixel
            x = x[:, :: self.strides, :: self.strides]
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        # A 2-D dot: XLA:CPU runs it faster than the same contraction left 4-D.
        y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel.reshape(kernel.shape[2:]))
        return y.reshape(*x.shape[:-1], self.features)

# torchvision's BatchNorm2d: eps=1e-5, momentum=0.1 (Flax's momentum is the complement).
TORCH_BN_EPS = 1e-5
TORCH_BN_MOMENTUM = 0.9


class Bottleneck(nn.Module):
    """torchvision's `Bottleneck`: 1x1 -> 3x3 (strided) -> 1x1 (x4 channels), plus shortcut."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    pointwise: ModuleDef = PointwiseConv
    strides: int = 1
    project_shortcut: bool = False
    zero_init_last_norm: bool = True
    activate_output: bool = True  # False: return the sum before its ReLU

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        residual = x
        y = self.pointwise(self.filters, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(
            self.filters, (3, 3), strides=(self.strides, self.strides), padding=1, name="conv2"
        )(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.pointwise(self.filters * 4, name="conv3")(y)
        last_norm_init = nn.initializers.zeros if self.zero_init_last_norm else nn.initializers.ones
        y = self.norm(scale_init=last_norm_init, name="bn3")(y)
        if self.project_shortcut:
            residual = self.pointwise(self.filters * 4, strides=self.strides,
                                      name="downsample_conv")(residual)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(residual + y) if self.activate_output else residual + y


class ResNet(nn.Module):
    """A torchvision-layout ResNet trunk.

    Call: `float[B, H, W, 3]` (ImageNet-normalised) -> `float32[B, H/r, W/r, C]` with
    r = `stride` (32 for four stages) and C = `feature_dim` (2048 for ResNet-50). H and W must be
    multiples of r. With `pre_activation=True` the last block's output is returned before its
    final ReLU (the same parameters; `relu` of it is the usual output).
    """

    stage_sizes: Sequence[int]
    num_filters: int = 64
    dtype: Any = jnp.float32
    zero_init_last_norm: bool = True
    remat: bool = False  # recompute each block's activations in the backward pass
    conv: Callable[..., nn.Module] = nn.Conv
    norm: Callable[..., nn.Module] = nn.BatchNorm

    @property
    def feature_dim(self) -> int:
        return self.num_filters * 2 ** (len(self.stage_sizes) - 1) * 4

    @property
    def stride(self) -> int:
        """Input pixels per feature-map cell along each axis: the stem's two stride-2 layers,
        then one stride-2 block per stage after the first."""
        return 2 ** (len(self.stage_sizes) + 1)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True,
                 pre_activation: bool = False) -> jnp.ndarray:
        conv = partial(self.conv, use_bias=False, dtype=self.dtype)
        norm = partial(
            self.norm,
            use_running_average=not train,
            momentum=TORCH_BN_MOMENTUM,
            epsilon=TORCH_BN_EPS,
            dtype=self.dtype,
        )
        x = conv(self.num_filters, (7, 7), strides=(2, 2), padding=3, name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block_class = nn.remat(Bottleneck) if self.remat else Bottleneck
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                last = stage == len(self.stage_sizes) - 1 and block == num_blocks - 1
                x = block_class(
                    filters=self.num_filters * 2**stage,
                    conv=conv,
                    norm=norm,
                    pointwise=partial(PointwiseConv, dtype=self.dtype),
                    strides=strides,
                    project_shortcut=block == 0,
                    zero_init_last_norm=self.zero_init_last_norm,
                    activate_output=not (last and pre_activation),
                    name=f"layer{stage + 1}_{block}",
                )(x)
        return x.astype(jnp.float32)


ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3))
ResNet26 = partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNetTiny = partial(ResNet, stage_sizes=(1, 1, 1, 1), num_filters=8)
# The tests' encoder (configs/real.py:tiny): the fewest stages that keep every part of the trunk
# (a stride-1 and a strided projection shortcut); with two stages instead of ResNetTiny's four
# the suite's programs compile faster (docs/testing.md).
ResNetMicro = partial(ResNet, stage_sizes=(1, 1), num_filters=8)

ENCODERS: dict[str, Callable[..., ResNet]] = {
    "resnet50": ResNet50,
    "resnet26": ResNet26,
    "resnet_tiny": ResNetTiny,
    "resnet_micro": ResNetMicro,
}


def make_encoder(architecture: str, **kwargs: Any) -> ResNet:
    """Builds a registered encoder (`resnet50`, `resnet26`, `resnet_tiny`, `resnet_micro`)."""
    if architecture not in ENCODERS:
        raise ValueError(f"unknown encoder {architecture!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[architecture](**kwargs)
