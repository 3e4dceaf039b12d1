"""Registration accuracy and cost on synthetic follow-up pairs with a known misalignment.

    python launch/bench_registration.py [--pairs 32] [--width 120] [--out launch/results/...]
    python launch/bench_registration.py --train_step [--preset synthetic]

Each pair is one synthetic subject drawn under two acquisitions (shift, rotation, scale, exposure
and noise drawn per study; no finding changes), so the true transform is known
(`data_pipeline.synthetic_images.misaligned_pair`). For misalignments 1x, 2x and 4x the usual
follow-up range and each transform model, it prints side by side: the error of the recovered
transform (mean distance between where the estimate and the truth send each pixel, in pixels;
rotation error in degrees), the mean absolute residual |main - ref| of the unchanged anatomy
(8 px border excluded) before registration, after it, and with the true transform (the floor
left by noise and exposure differences), and the time per pair on this machine.

`--train_step` instead times the preset's jitted train step
(`real_jax.benchmark.jax_side.bench_jax`) without and with `model.registration.enabled`, in one
process, and prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline.synthetic_images import misaligned_pair
from real_jax.models import registration as reg

BORDER = 8


def _inner_abs_mean(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
    return float(diff[:, BORDER:-BORDER, BORDER:-BORDER].mean())


def run(pairs: int, width: int, scales: list[float], transforms: list[str]) -> list[dict]:
    rows = []
    for scale in scales:
        rng = np.random.default_rng(0)
        data = [misaligned_pair(width, rng, scale) for _ in range(pairs)]
        ref, main, matrices, shifts = (np.stack(x) for x in zip(*data, strict=True))
        height = ref.shape[1]
        true_aligned = jax.vmap(lambda r, a, t: reg.warp(r, a, t)[0])(
            jnp.asarray(ref, jnp.float32), jnp.asarray(matrices, jnp.float32),
            jnp.asarray(shifts, jnp.float32))
        identity = [float(reg.mean_displacement_px(jnp.eye(2), jnp.zeros(2), a, t, height, width))
                    for a, t in zip(matrices, shifts, strict=True)]
        for transform in transforms:
            config = reg.RegistrationConfig(transform=transform)
            fn = jax.jit(lambda r, m, config=config: reg.register(r, m, config))
            jax.block_until_ready(fn(ref, main))  # compile
            start = time.perf_counter()
            aligned, params = jax.block_until_ready(fn(ref, main))
            seconds = time.perf_counter() - start
            px, deg = [], []
            for p, a, t in zip(params, matrices, shifts, strict=True):
                est_a, est_t = reg.transform_matrix(p, transform)
                a, t = jnp.asarray(a, jnp.float32), jnp.asarray(t, jnp.float32)
                px.append(float(reg.mean_displacement_px(est_a, est_t, a, t, height, width)))
                deg.append(abs(float(reg.rotation_degrees(est_a) - reg.rotation_degrees(a))))
            rows.append({
                "misalignment": scale, "transform": transform, "pairs": pairs,
                "image": f"{width}x{height}",
                "misalignment_px_mean": float(np.mean(identity)),
                "error_px_mean": float(np.mean(px)), "error_px_max": float(np.max(px)),
                "error_deg_mean": float(np.mean(deg)), "error_deg_max": float(np.max(deg)),
                "residual_before": _inner_abs_mean(main, ref),
                "residual_after": _inner_abs_mean(main, aligned),
                "residual_true_transform": _inner_abs_mean(main, true_aligned),
                "ms_per_pair": 1000 * seconds / pairs,
            })
            print_row(rows[-1])
    return rows


def train_step_cost(preset: str, steps: int) -> dict:
    from configs.real import get_config
    from real_jax.benchmark.jax_side import bench_jax
    from real_jax.benchmark.timing import measure_peak_flops

    peak = measure_peak_flops(jnp.float32)
    rates = {}
    for register in (False, True):
        config = get_config(preset)
        config.model.registration.enabled = register
        result = bench_jax(config, vocab_size=512, steps=steps, warmup=2, decode=False,
                           peak=peak)
        rates[register] = result["samples_per_s"]
        print(f"{preset}, model.registration.enabled={register}: "
              f"{result['samples_per_s']:.1f} samples/s "
              f"({1000 * result['step_s']:.0f} ms per step of {config.train.global_batch_size}"
              f" at {config.data.image_size} px)", flush=True)
    ratio = rates[True] / rates[False]
    print(f"with registration / without: {ratio:.2f}x the throughput")
    return {"preset": preset, "samples_per_s_without": rates[False],
            "samples_per_s_with": rates[True], "ratio": ratio}


def print_row(r: dict) -> None:
    print(f"| {r['misalignment']:.0f}x ({r['misalignment_px_mean']:.1f} px) | {r['transform']} "
          f"| {r['error_px_mean']:.3f} / {r['error_px_max']:.3f} "
          f"| {r['error_deg_mean']:.3f} / {r['error_deg_max']:.3f} "
          f"| {r['residual_before']:.1f} -> {r['residual_after']:.1f} "
          f"(floor {r['residual_true_transform']:.1f}) | {r['ms_per_pair']:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--width", type=int, default=120, help="a multiple of 5 (H = 1.2 W)")
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--transforms", default="rigid,similarity,affine")
    parser.add_argument("--out", default="launch/results/registration_cpu.json")
    parser.add_argument("--train_step", action="store_true")
    parser.add_argument("--preset", default="synthetic")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    print(f"devices: {jax.devices()}")
    if args.train_step:
        train_step_cost(args.preset, args.steps)
        return
    print("| misalignment (mean px) | transform | error px mean / max | error deg mean / max "
          "| mean abs residual, 0-255 | ms per pair |")
    print("|---|---|---|---|---|---|")
    rows = run(args.pairs, args.width, [float(s) for s in args.scales.split(",")],
               args.transforms.split(","))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
