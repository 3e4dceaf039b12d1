"""`launch/gpu_summary.py`: the figures of one gpu_check run's folder, the JAX / PyTorch ratios
against eager and compiled PyTorch, the training command against the benchmark, and the steps
the budget skipped (the script itself runs end to end in test_bench.py, tiny preset)."""

import json

import pytest

from launch.gpu_summary import main, summarise


def write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def test_summary_ratios_against_eager_and_compiled_torch_and_the_training_command(tmp_path):
    jax_side = {"compile_s": 90.0, "step_s": 0.1, "samples_per_s": 320.0, "mfu": 0.2,
                "decode_greedy_tokens_per_s": 30000.0}
    write(tmp_path / "bench.json", {"machine": {"platform": "gpu"}, "config": {"preset": "paper"},
                                    "jax": jax_side})
    write(tmp_path / "torch.json", {
        "torch": {"compiled": False, "step_s": 0.4, "samples_per_s": 80.0,
                  "decode_greedy_tokens_per_s": 1000.0},
        "torch_compiled": {"compiled": True, "channels_last": True, "compile_s": 120.0,
                           "step_s": 0.2, "samples_per_s": 160.0}})
    write(tmp_path / "train.json", {"ok": True, "settings": {"global_batch_size": 32},
                                    "training": {"reference": {"compile_s": 95.0,
                                                               "step_s_median": 0.125,
                                                               "samples_per_s": 256.0}}})
    (tmp_path / "skipped.txt").write_text("tests on the default device: 40 s left, needs 60\n")
    summary = summarise(tmp_path, wall_s=530, tests_status=0)
    assert summary["jax_over_torch"] == {"train_samples_per_s": 4.0,
                                         "decode_greedy_tokens_per_s": 30.0}
    assert summary["jax_over_torch_compiled"] == {"train_samples_per_s": 2.0}
    assert summary["torch_compiled"]["compile_s"] == 120.0
    assert summary["training_command"]["over_benchmark_samples_per_s"] == pytest.approx(0.8)
    assert summary["skipped"] == ["tests on the default device: 40 s left, needs 60"]
    assert summary["tests"] == "not run" and "profile" not in summary


def test_summary_without_the_benchmark_fails_naming_its_log(tmp_path, capsys):
    assert main([str(tmp_path), "12", "0", "124"]) == 1
    assert "bench.txt" in capsys.readouterr().err and not (tmp_path / "summary.json").exists()
