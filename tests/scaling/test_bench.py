"""The benchmark on the tiny preset (JAX and PyTorch side by side) and the scaling script (weak
scaling) on 1 and 2 forced CPU devices: figures printed, checked only for sanity."""

import json
import math
import subprocess
import sys
from pathlib import Path

from configs.real import get_config
from real_jax.benchmark import report as bench

REPO = Path(__file__).resolve().parents[2]


def test_bench_tiny_jax_and_torch():
    config = get_config("tiny")
    result = bench.run(config, vocab_size=256, steps=2, warmup=1, torch=True)
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
    assert j["peak_device_memory_bytes"] is None or j["peak_device_memory_bytes"] > 0
    assert result["jax_over_torch"]["train_samples_per_s"] > 0
    assert row.count("|") == bench.MARKDOWN_HEADER.splitlines()[0].count("|")


def test_scaling_script_on_one_and_two_cpu_devices(scratch):
    result = subprocess.run(
        [sys.executable, "launch/scaling.py", "--config=configs/real.py:tiny", "--devices=1,2",
         "--modes=weak", "--per_device_batch=2", "--global_batch=4", "--steps=2",
         "--platform=cpu", f"--out={scratch}"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    print(result.stdout)
    report = json.loads((scratch / "scaling.json").read_text())
    weak = report["results"]["weak"]
    assert [p["devices"] for p in weak] == [1, 2] and [p["global_batch"] for p in weak] == [2, 4]
    assert weak[0]["efficiency"] == 1.0
    assert all(p["efficiency"] > 0 and p["step_s"] > 0 for p in weak)
    assert (scratch / "scaling.png").stat().st_size > 1000
    assert "| weak | 2 | 4 |" in (scratch / "scaling.md").read_text()
