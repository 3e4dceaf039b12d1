"""Weak and strong scaling of the train step over 1, 2, 4, 8 devices: a table and a plot.

    python launch/scaling.py --config=configs/real.py:bench [--devices=1,2,4,8]
        [--per_device_batch=4] [--global_batch=16] [--steps=5] [--out=runs/scaling]
        [-- --config.model.dtype=float32 ...]

Each point is one `python -m real_jax.bench --decode=false` subprocess that sees exactly k
devices: on CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=k` (set before jax starts);
on GPUs (`--platform=gpu`, the default when `nvidia-smi` exists), `CUDA_VISIBLE_DEVICES=0..k-1`.

- weak scaling: global batch = k x `--per_device_batch`; efficiency = samples/s(k) / (k x
  samples/s(1));
- strong scaling: global batch fixed at `--global_batch`; efficiency = step(1) / (k x step(k)).

Writes OUT/scaling.json, OUT/scaling.md (the table) and OUT/scaling.png. Forced CPU devices share
the same cores, so on CPU the efficiency is ~1/k by construction: there the run checks that the
sharded step compiles and runs on every device count and measures the collective overhead, not a
speed-up. On GPUs it measures the real thing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def device_env(platform: str, count: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if platform == "cpu":
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={count}"])
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(count))
    return env


def bench_point(config: str, platform: str, devices: int, global_batch: int, steps: int,
                extra: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        command = [sys.executable, "-m", "real_jax.bench", f"--config={config}",
                   f"--config.train.global_batch_size={global_batch}", f"--steps={steps}",
                   "--warmup=1", "--decode=false", f"--json={out}", *extra]
        result = subprocess.run(command, cwd=REPO, env=device_env(platform, devices),
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} on {devices} devices failed:\n"
                               f"{result.stderr[-4000:]}")
        bench = json.loads(out.read_text())
    if bench["machine"]["device_count"] != devices:
        raise RuntimeError(f"asked for {devices} devices, the benchmark saw "
                           f"{bench['machine']['device_count']}")
    j = bench["jax"]
    return {"devices": devices, "global_batch": global_batch, "step_s": j["step_s"],
            "samples_per_s": j["samples_per_s"], "compile_s": j["compile_s"],
            "mfu": j["mfu"], "machine": bench["machine"]}


def add_efficiency(points: list[dict[str, Any]], mode: str) -> None:
    base = next(p for p in points if p["devices"] == min(q["devices"] for q in points))
    for p in points:
        k = p["devices"] / base["devices"]
        if mode == "weak":
            p["efficiency"] = p["samples_per_s"] / (k * base["samples_per_s"])
        else:
            p["efficiency"] = base["step_s"] / (k * p["step_s"])


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| scaling | devices | global batch | step s | samples/s | efficiency |",
             "|---|---|---|---|---|---|"]
    for mode, points in results.items():
        for p in points:
            lines.append(f"| {mode} | {p['devices']} | {p['global_batch']} | {p['step_s']:.3f} "
                         f"| {p['samples_per_s']:.1f} | {100 * p['efficiency']:.0f} % |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, points in results.items():
        devices = [p["devices"] for p in points]
        left.plot(devices, [p["samples_per_s"] for p in points], "o-", label=mode)
        right.plot(devices, [100 * p["efficiency"] for p in points], "o-", label=mode)
    right.axhline(100, color="gray", linestyle=":", label="ideal")
    for axis, label in ((left, "samples/s"), (right, "efficiency vs 1 device (%)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("devices")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, extra = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/real.py:bench")
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--per_device_batch", type=int, default=4)
    parser.add_argument("--global_batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", default="weak,strong")
    parser.add_argument("--platform", choices=("cpu", "gpu"),
                        default="gpu" if shutil.which("nvidia-smi") else "cpu")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per point")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "scaling")
    opts = parser.parse_args(own)
    counts = [int(d) for d in opts.devices.split(",")]
    results: dict[str, list[dict[str, Any]]] = {}
    for mode in opts.modes.split(","):
        if mode not in ("weak", "strong"):
            parser.error(f"unknown scaling mode {mode!r}")
        points = []
        for k in counts:
            batch = k * opts.per_device_batch if mode == "weak" else opts.global_batch
            if batch % k:
                parser.error(f"--global_batch={batch} is not divisible by {k} devices")
            point = bench_point(opts.config, opts.platform, k, batch, opts.steps, extra,
                                opts.timeout)
            print(f"{mode}: {k} devices, batch {batch}: step {point['step_s']:.3f} s, "
                  f"{point['samples_per_s']:.1f} samples/s", flush=True)
            points.append(point)
        add_efficiency(points, mode)
        results[mode] = points
    opts.out.mkdir(parents=True, exist_ok=True)
    machine = next(iter(results.values()))[0]["machine"]
    title = (f"{opts.config} on {machine['device_kind']} ({opts.platform}), "
             f"{machine['date']}")
    (opts.out / "scaling.json").write_text(json.dumps(
        {"config": opts.config, "extra": extra, "platform": opts.platform,
         "per_device_batch": opts.per_device_batch, "global_batch": opts.global_batch,
         "results": results}, indent=1))
    (opts.out / "scaling.md").write_text(table(results) + "\n")
    plot(results, opts.out / "scaling.png", title)
    print(table(results))
    print(f"wrote {opts.out / 'scaling.json'}, scaling.md, scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
