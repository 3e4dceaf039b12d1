"""Random weights and small torch models shared by the interop tests."""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def random_like(tree: Mapping[str, Any], seed: int) -> dict:
    """Numpy leaves with the shapes of `tree` (e.g. `jax.eval_shape` of an init), scaled so that
    activations stay O(1): kernels ~ N(0, 1/fan_in), norm scales and BN variances in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)

    def fill(path: tuple[str, ...], leaf: Any) -> np.ndarray:
        shape = tuple(leaf.shape)
        if path[-1] in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1])) if path[-1] != "embedding" else 1
            return rng.normal(0, min(0.5, fan_in**-0.5), shape).astype(np.float32)
        return rng.normal(0, 0.1, shape).astype(np.float32)

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> dict:
        return {k: walk(v, path + (k,)) if isinstance(v, Mapping) else fill(path + (k,), v)
                for k, v in node.items()}

    return walk(tree, ())


def randomize_batch_norm(module: torch.nn.Module, seed: int) -> None:
    """Random running statistics and affine parameters, so eval-mode BN is not the identity.

    The last BN of each residual branch (`bn3`) gets small scales, as a trained ResNet's have, so
    16 blocks of un-normalised residual sums keep the features O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                gain = 0.2 if name.endswith("bn3") else 1.0
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_((torch.rand(n, generator=gen) + 0.5) * gain)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
