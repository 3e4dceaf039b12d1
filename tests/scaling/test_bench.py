"""The benchmark on the tiny preset (JAX and PyTorch side by side, whole step and each part), the
GPU check script in its CPU mode, and the scaling script (weak scaling) on 1 and 2 forced CPU
devices: figures printed, checked only for sanity."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from configs.real import get_config
from real_jax.benchmark import report as bench
from real_jax.benchmark.components import PARTS
from real_jax.benchmark.jax_side import flops_only
from real_jax.benchmark.torch_side import bench_torch

REPO = Path(__file__).resolve().parents[2]


# The vocabulary and batch of gpu_check.sh's tiny run: the scaling script's one-device point and
# that run load the programs this module's first test compiled from the suite's cache.
VOCAB_SIZE = 64


def test_bench_tiny_jax_and_torch():
    config = get_config("tiny")
    result = bench.run(config, vocab_size=VOCAB_SIZE, steps=2, warmup=1, torch=True,
                       components=True)
    print(json.dumps(result, indent=1))
    print(bench.MARKDOWN_HEADER)
    row = bench.markdown_row(result)
    print(row)
    j, t = result["jax"], result["torch"]
    for value in (j["compile_s"], j["step_s"], j["samples_per_s"], j["flops_per_sample"],
                  j["peak_flops_per_s"], j["decode_greedy_tokens_per_s"],
                  j["decode_beam_tokens_per_s"], t["step_s"], t["decode_greedy_tokens_per_s"]):
        assert math.isfinite(value) and value > 0, result
    assert math.isclose(j["samples_per_s"], config.train.global_batch_size / j["step_s"])
    assert 0 < j["mfu"] < 2, j["mfu"]
    # a tiny ReAl still does ~3 ResNet passes over 64x64 images forward and backward per sample
    assert j["flops_per_sample"] > 1e6
    # MFU is against the model's FLOPs (the lowered program), the count --flops_only gives
    assert math.isclose(j["flops_per_sample"],
                        flops_only(config, vocab_size=VOCAB_SIZE)["flops_per_sample"],
                        rel_tol=1e-6)
    assert j["peak_device_memory_bytes"] is None or j["peak_device_memory_bytes"] > 0
    assert result["jax_over_torch"]["train_samples_per_s"] > 0
    assert (t["device"], t["dtype"]) == ("cpu", "float32")
    assert row.count("|") == bench.MARKDOWN_HEADER.splitlines()[0].count("|")
    # Each part of the step timed alone in both frameworks, beside the whole step.
    for framework in ("jax", "torch"):
        parts = result["parts"][framework]
        assert set(parts) == set(PARTS), parts
        assert all(math.isfinite(t) and t > 0 for t in parts.values()), parts
    table = result["parts_table"]
    assert "| sum of parts |" in table and "| whole train step |" in table
    assert len(table.strip().splitlines()) == 2 + len(PARTS) + 2


def test_bench_times_pytorch_alone_without_the_jax_side():
    """`--nojax --torch`, the form gpu_check.sh runs in a process of its own on a GPU."""
    result = bench.run(get_config("tiny"), vocab_size=64, steps=1, warmup=0, decode=False,
                       jax_side=False, torch=True)
    assert "jax" not in result and "jax_over_torch" not in result
    assert result["torch"]["samples_per_s"] > 0


def test_torch_channels_last_step_and_the_side_by_side_table():
    """The channels-last PyTorch step (the layout `--torch_compile` uses) runs and trains the
    same model; the side-by-side table lists each framework present. (`torch.compile` itself is
    not run here: inductor compiles even the tiny model for minutes on CPU.)"""
    result = bench.run(get_config("tiny"), vocab_size=VOCAB_SIZE, steps=1, warmup=1,
                       decode=False, jax_side=False, torch=True)
    last = bench_torch(get_config("tiny"), vocab_size=VOCAB_SIZE, steps=1, warmup=1, threads=1,
                       decode=False, channels_last=True)
    assert last["channels_last"] and not last["compiled"] and last["compile_s"] is None
    assert last["first_step_s"] > 0 and last["samples_per_s"] > 0
    result["torch_compiled"] = dict(last, compiled=True, compile_s=1.5)
    result["jax"] = {"samples_per_s": 2 * result["torch"]["samples_per_s"], "step_s": 0.5}
    table = bench.side_by_side_table(result).splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == [
        "JAX (jit)", "PyTorch eager", "PyTorch torch.compile (inductor) + channels-last"]
    assert table[3].endswith("| 2.00 |") and "| 1.5 |" in table[4]


def test_scaling_script_on_one_and_two_cpu_devices(scratch):
    # One device at the tiny preset's batch: the program of the first test in this module.
    per_device = get_config("tiny").train.global_batch_size
    result = subprocess.run(
        [sys.executable, "launch/scaling.py", "--config=configs/real.py:tiny", "--devices=1,2",
         "--modes=weak", f"--per_device_batch={per_device}", "--steps=2", "--platform=cpu",
         f"--out={scratch}", "--", f"--vocab_size={VOCAB_SIZE}"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    print(result.stdout)
    report = json.loads((scratch / "scaling.json").read_text())
    weak = report["results"]["weak"]
    assert [p["devices"] for p in weak] == [1, 2]
    assert [p["global_batch"] for p in weak] == [per_device, 2 * per_device]
    assert weak[0]["efficiency"] == 1.0
    assert all(p["efficiency"] > 0 and p["step_s"] > 0 for p in weak)
    assert (scratch / "scaling.png").stat().st_size > 1000
    assert f"| weak | 2 | {2 * per_device} |" in (scratch / "scaling.md").read_text()


def test_gpu_check_script_runs_end_to_end_on_cpu(scratch):
    """`launch/gpu_check.sh` with the tiny preset: its test step (one quick file here; the
    suite runs the others itself), the benchmark and the summary JSON."""
    env = dict(os.environ, GPU_CHECK_PRESET="tiny", GPU_CHECK_OUT=str(scratch),
               GPU_CHECK_TESTS="tests/model/test_pointwise_conv.py", PYTHON=sys.executable)
    env.pop("REAL_JAX_TEST_CPU_LOG", None)  # its inner pytest's CPU is this test's (conftest.py)
    result = subprocess.run(["bash", "launch/gpu_check.sh"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((scratch / "summary.json").read_text())
    assert "passed" in summary["tests"] and "failed" not in summary["tests"], summary["tests"]
    assert summary["config"]["preset"] == "tiny" and summary["skipped"] == [], summary
    for key in ("compile_s", "step_s", "samples_per_s", "mfu", "decode_greedy_tokens_per_s",
                "decode_beam_tokens_per_s"):
        assert math.isfinite(summary["jax"][key]) and summary["jax"][key] > 0, (key, summary)
    assert (scratch / "devices.txt").read_text().startswith("jax ")
