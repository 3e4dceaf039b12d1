"""Is the CPU gap in the image encoders XLA's convolutions? Forward + backward of single ResNet-50
layers and of the whole trunk, JAX (XLA:CPU) beside PyTorch (oneDNN), same process, same threads.

    python launch/bench_conv.py [--batch 8] [--size 224] [--steps 5] [--json runs/bench/conv.json]

Rows: the 7x7 stem convolution, the stem's 3x3/2 max pool (JAX's `reduce_window`, whose
gradient XLA lowers to select-and-scatter), one 3x3 and one 1x1 convolution of each of the four
stages at their real shapes, batch norm + ReLU at stage 1, and the whole ResNet-50 trunk. Every
row is the median of `--steps` calls of a jitted `value_and_grad` (JAX) or `backward()`
(PyTorch) of the sum of the output, inputs float32 NHWC (JAX) / NCHW (PyTorch).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from real_jax.benchmark.timing import median_time
from real_jax.interop.torch_model import build_resnet, resnet_features
from real_jax.models.resnet import make_encoder

# (name, input channels, output channels, kernel, stride, input spatial size at 224 px)
CONVS = [("stem conv 7x7/2", 3, 64, 7, 2, 224),
         ("stage1 conv 3x3", 64, 64, 3, 1, 56), ("stage1 conv 1x1", 64, 256, 1, 1, 56),
         ("stage2 conv 3x3", 128, 128, 3, 1, 28), ("stage2 conv 1x1", 128, 512, 1, 1, 28),
         ("stage3 conv 3x3", 256, 256, 3, 1, 14), ("stage3 conv 1x1", 256, 1024, 1, 1, 14),
         ("stage4 conv 3x3", 512, 512, 3, 1, 7), ("stage4 conv 1x1", 512, 2048, 1, 1, 7)]


def _jax_time(fn, args, steps: int) -> float:
    grad = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=tuple(range(len(args)))))
    return median_time(lambda: jax.block_until_ready(grad(*args)), steps, 1)[0]


def _torch_time(fn, args, steps: int) -> float:
    def run() -> None:
        for a in args:
            a.grad = None
        fn(*args).sum().backward()
    return median_time(run, steps, 1)[0]


def rows(batch: int, size: int, steps: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    scale = size / 224
    for name, cin, cout, k, stride, spatial in CONVS:
        s = max(1, round(spatial * scale))
        x = rng.standard_normal((batch, s, s, cin), np.float32)
        w = rng.standard_normal((k, k, cin, cout), np.float32) * 0.05
        pad = k // 2
        jax_conv = lambda x, w, stride=stride, pad=pad: jax.lax.conv_general_dilated(
            x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
        tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
        torch_conv = lambda x, w, stride=stride, pad=pad: torch.nn.functional.conv2d(
            x, w, stride=stride, padding=pad)
        out.append({"part": name, "jax_s": _jax_time(jax_conv, (jnp.asarray(x), jnp.asarray(w)),
                                                      steps),
                    "torch_s": _torch_time(torch_conv, (tx, tw), steps)})
    s = round(112 * scale)
    x = rng.standard_normal((batch, s, s, 64), np.float32)
    pool = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                           ((0, 0), (1, 1), (1, 1), (0, 0)))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    out.append({"part": "stem max pool 3x3/2", "jax_s": _jax_time(pool, (jnp.asarray(x),), steps),
                "torch_s": _torch_time(lambda x: torch.nn.functional.max_pool2d(x, 3, 2, 1),
                                       (tx,), steps)})
    jax_net = make_encoder("resnet50")
    x = rng.standard_normal((batch, size, size, 3), np.float32)
    variables = jax_net.init(jax.random.key(0), jnp.asarray(x[:1]), train=False)

    def jax_trunk(params, x):
        return jax_net.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])[0]

    torch_net = build_resnet((3, 4, 6, 3), 64).train()
    tx = torch.tensor(x.transpose(0, 3, 1, 2))
    out.append({"part": "ResNet-50 trunk", "jax_s": _jax_time(
        jax_trunk, (variables["params"], jnp.asarray(x)), steps),
        "torch_s": _torch_time(lambda x: resnet_features(torch_net, x), (tx,), steps)})
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| forward + backward | JAX s | PyTorch s | JAX speed vs PyTorch |",
             "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['part']} | {r['jax_s']:.4f} | {r['torch_s']:.4f} | "
                     f"{r['torch_s'] / r['jax_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    results = rows(args.batch, args.size, args.steps)
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "jax": jax.__version__,
                                               "torch": torch.__version__, "rows": results},
                                              indent=1))


if __name__ == "__main__":
    main()
