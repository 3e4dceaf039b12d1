"""Memory per device of the paper config's train step, with and without `model.remat`.

    python launch/memory_table.py [--batches 1,8,16,32,64] [--remat off,on]
        [--out launch/results/memory_paper_config.json]

The paper config (`configs/real.py`: 512 px, bf16 compute, float32 parameters, AdamW, vocabulary
50257) on one device: for each per-device batch B the train step (`Experiment.train_step`, state
donated) is lowered from the abstract state and compiled, nothing allocated. From
`compiled.memory_analysis()`: arguments (train state and batch), outputs (new state, metrics),
aliased (outputs written over the donated state), temp (everything else XLA's buffer assignment
keeps: saved activations, gradients, bf16 weight copies, workspaces), and the peak estimate =
arguments + outputs - aliased + temp + generated code. FLOPs: XLA's cost analysis of the compiled
step, remat's recomputation included.

This compiles for the CPU and estimates a GPU's numbers. State and gradient bytes are exact; the
activation bytes are XLA:CPU's, an upper-side estimate of a GPU's: the CPU runs bf16 convolutions
and matmuls in float32 (float32 copies of activations), expands max-pool's backward with int32
index arrays, and schedules by a greedy heuristic. By default XLA:CPU schedules for thread
concurrency, which keeps more alive and cancels remat (paper config, batch 8: 23.3 GiB without,
22.9 with), so the memory-minimising scheduler is selected; LLVM runs at level 0 (the program
never runs; same buffers and FLOPs, compile ~25% faster). A GPU adds its context, cuDNN
workspaces and fragmentation. On a GPU machine the script compiles for the GPU instead.

A batch fits a card when its peak is at most `HEADROOM` of the card's memory: JAX preallocates
75% of a GPU by default (`XLA_PYTHON_CLIENT_MEM_FRACTION`), and the other 25% covers context and
workspaces when that is raised. The largest fitting batch is interpolated linearly between the
measured batches (the per-sample slope is in BENCHMARKS.md section 8).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax

from configs.real import get_config
from real_jax.benchmark.timing import xla_flops
from real_jax.distributed import sharding as shd
from real_jax.experiment import build_experiment

GPT2_VOCAB = 50257
GIB = 2**30
HEADROOM = 0.75
# Memory as the devices report it (nvidia-smi, MiB): RTX 3080 Ti (the paper's), H100 80 GB, H200.
CARDS = {"12 GB (RTX 3080 Ti)": 12288 * 2**20, "80 GB (H100)": 81559 * 2**20,
         "141 GB (H200)": 143771 * 2**20}


def measure(batch: int, remat: bool) -> dict:
    """Compiles the paper config's train step for a per-device batch; sizes in bytes."""
    config = get_config("paper")
    config.model.remat = remat
    experiment = build_experiment(config, vocab_size=GPT2_VOCAB, devices=jax.devices()[:1],
                                  batch_size=batch, total_steps=1000, check=False)
    abstract, shardings = experiment.abstract_state()
    sharding = shd.batch_sharding(experiment.mesh)
    inputs = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)
              for k, s in experiment.input_shapes.items()}
    start = time.perf_counter()
    compiled = experiment.train_step(shardings).lower(abstract, inputs,
                                                      jax.random.key(0)).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    row = {"batch": batch, "remat": remat, "argument": m.argument_size_in_bytes,
           "output": m.output_size_in_bytes, "alias": m.alias_size_in_bytes,
           "temp": m.temp_size_in_bytes, "code": m.generated_code_size_in_bytes,
           "flops": xla_flops(compiled), "compile_s": seconds}
    row["peak"] = row["argument"] + row["output"] - row["alias"] + row["temp"] + row["code"]
    return row


def largest_fitting_batch(rows: list[dict], budget: float) -> str:
    """Largest B with peak <= budget, linear between measured batches; past the last measured
    batch, ">=B (~N)" with N extrapolated along the last segment."""
    rows = sorted(rows, key=lambda r: r["batch"])
    if rows[0]["peak"] > budget:
        return "0" if rows[0]["batch"] == 1 else f"<{rows[0]['batch']}"
    for a, b in zip(rows, rows[1:], strict=False):
        if b["peak"] > budget:
            per_sample = (b["peak"] - a["peak"]) / (b["batch"] - a["batch"])
            return f"~{a['batch'] + int((budget - a['peak']) // per_sample)}"
    if len(rows) < 2:
        return f">={rows[-1]['batch']}"
    a, b = rows[-2:]
    per_sample = (b["peak"] - a["peak"]) / (b["batch"] - a["batch"])
    return f">={b['batch']} (~{b['batch'] + int((budget - b['peak']) // per_sample)})"


def report(rows: list[dict]) -> tuple[str, dict]:
    """The markdown table (GiB, GFLOPs per sample) and the fits per card."""
    lines = ["| batch | remat | arguments | outputs | aliased | temp | peak | remat saves "
             "| GFLOPs/sample | FLOPs x | compile s |", "|" + "---|" * 11]
    plain = {r["batch"]: r for r in rows if not r["remat"]}
    for r in sorted(rows, key=lambda r: (r["batch"], r["remat"])):
        base = plain.get(r["batch"]) if r["remat"] else None
        saves = f"{(base['peak'] - r['peak']) / GIB:.2f}" if base else ""
        ratio = f"{r['flops'] / base['flops']:.3f}" if base else ""
        gib = [f"{r[k] / GIB:.2f}" for k in ("argument", "output", "alias", "temp", "peak")]
        lines.append(f"| {r['batch']} | {'on' if r['remat'] else 'off'} | {' | '.join(gib)} | "
                     f"{saves} | {r['flops'] / r['batch'] / 1e9:.1f} | {ratio} | "
                     f"{r['compile_s']:.0f} |")
    fits = {card: {mode: largest_fitting_batch([r for r in rows if r["remat"] == on],
                                               HEADROOM * size)
                   for mode, on in (("off", False), ("on", True))
                   if any(r["remat"] == on for r in rows)}
            for card, size in CARDS.items()}
    lines += ["", f"Largest per-device batch with peak <= {HEADROOM:.0%} of the card:", "",
              "| card | remat off | remat on |", "|---|---|---|"]
    lines += [f"| {card} | {f.get('off', '')} | {f.get('on', '')} |" for card, f in fits.items()]
    return "\n".join(lines), fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8,16,32,64")
    parser.add_argument("--remat", default="off,on")
    parser.add_argument("--out", default="launch/results/memory_paper_config.json")
    args = parser.parse_args()
    # Read when the backend starts (the first jax.devices()), not at import.
    os.environ["XLA_FLAGS"] = " ".join([
        os.environ.get("XLA_FLAGS", ""), "--xla_cpu_enable_concurrency_optimized_scheduler=false",
        "--xla_backend_optimization_level=0"])
    modes = [{"off": False, "on": True}[m] for m in args.remat.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for batch in (int(b) for b in args.batches.split(",")):
        for remat in modes:
            rows.append(measure(batch, remat))
            print(f"batch {batch} remat {remat}: peak {rows[-1]['peak'] / GIB:.2f} GiB, "
                  f"compiled in {rows[-1]['compile_s']:.0f} s", flush=True)
            table, fits = report(rows)
            # Written after every compile, so an interrupted grid keeps what it measured.
            out.write_text(json.dumps({
                "config": "configs/real.py (paper): 512 px, bf16, AdamW, vocabulary 50257, "
                          "one device", "backend": jax.default_backend(), "jax": jax.__version__,
                "xla_flags": os.environ["XLA_FLAGS"].strip(),
                "units": "bytes; flops per step", "headroom": HEADROOM, "cards": CARDS,
                "rows": rows, "fits": fits}, indent=1) + "\n")
    print(table)


if __name__ == "__main__":
    main()
