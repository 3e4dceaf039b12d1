"""Impossible configs fail before anything compiles, with messages naming the field."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import configs.real
from configs.real import PRESETS, get_config
from real_jax.choices import CHOICES, field
from real_jax.config_checks import ConfigError, config_problems, validate_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path):
    config = get_config("tiny")
    config.data.synthetic_source = str(tmp_path / "raw")  # no prepared dataset needed
    return config


def test_every_preset_is_valid_on_eight_devices(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "resnet50.safetensors").touch()
    for preset in PRESETS:
        config = get_config(preset)
        config.data.synthetic_source = str(tmp_path)
        if config.pretrained.resnet50:  # the paper's rows name the fetched weights
            config.pretrained.update(resnet50=str(tmp_path / "resnet50.safetensors"),
                                     gpt2_dir=str(tmp_path / "gpt2"))
        assert config_problems(config, device_count=8) == [], preset


def test_paper_config_without_its_weights_says_how_to_fetch_them(tmp_path):
    config = get_config("paper")
    config.data.synthetic_source = str(tmp_path)
    config.pretrained.update(resnet50=str(tmp_path / "weights" / "resnet50.safetensors"),
                             gpt2_dir=str(tmp_path / "weights" / "gpt2"))
    problems = config_problems(config, device_count=1)
    assert len(problems) == 2 and all("python -m real_jax.pretrained" in p for p in problems)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'paperr'.*synthetic"):
        get_config("paperr")


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("train.global_batch_size", 12, "global_batch_size=12 is not divisible by the 8"),
        ("eval.batch_size", 4, "eval.batch_size=4"),
        ("data.image_size", 100, "image_size=100"),
        ("generation.beam_size", 0, "beam_size=0"),
        ("generation.method", "sample", "generation.method='sample'"),
        ("model.variant", "residual", "model.variant='residual'"),
        ("model.encoder", "vit", "model.encoder='vit'"),
        ("train.grad_accum_steps", 3, "grad_accum_steps=3"),
        ("loss.consistency_sign", "minus", "consistency_sign='minus'"),
        ("train.nonfinite_policy", "ignore", "nonfinite_policy='ignore'"),
        ("model.decoder.n_positions", 32, "n_positions=32"),
        ("pretrained.resnet50", "/nonexistent/resnet50.pth", "resnet50.pth' does not exist"),
        ("pretrained.gpt2_dir", "/nonexistent/gpt2", "is not a directory"),
        ("model.registration.transform", "elastic", "transform='elastic'"),
        ("model.registration.steps", 0, "steps >= 1"),
        ("optim.name", "lamb", "optim.name='lamb'"),
    ],
)
def test_bad_field_is_reported_by_name(config, field, value, message):
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(config, device_count=8)


@pytest.mark.parametrize("path", list(CHOICES))
def test_every_choice_is_checked_with_its_allowed_values_in_the_message(config, path):
    assert field(config, path) in CHOICES[path]  # the preset's value is allowed
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = "no_such_choice"
    assert config_problems(config, device_count=8) == [
        f"{path}='no_such_choice' not in {CHOICES[path]}"]


def test_the_config_documentation_lists_every_choice():
    doc = configs.real.__doc__
    for path, allowed in CHOICES.items():
        line = next((line for line in doc.splitlines() if line.split()[:1] == [path]), None)
        assert line is not None, f"{path} missing from configs/real.py's docstring"
        assert line.split()[1:] == " | ".join(allowed).split(), line


def test_best_metric_meteor_needs_meteor_scored(config):
    config.train.best_metric = "difference/METEOR"
    config.eval.meteor = False
    with pytest.raises(ConfigError, match="best_metric='difference/METEOR' needs eval.meteor"):
        validate_config(config, device_count=8)
    config.eval.meteor = True
    validate_config(config, device_count=8)


def test_missing_dataset_points_at_preparation(tmp_path):
    config = get_config("paper")
    config.data.dir = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="data_pipeline.prepare"):
        validate_config(config, device_count=1)


def test_all_problems_are_reported_together(config):
    config.generation.beam_size = 0
    config.data.image_size = 33
    assert len(config_problems(config, device_count=1)) == 2


@pytest.mark.parametrize("flags,message", [
    (["--config=configs/real.py:paperr"], "error: unknown preset 'paperr'"),
    (["--config=configs/real.py", "--config.data.dir=/nonexistent/data"],
     "  - data.dir='/nonexistent/data' is not a prepared dataset"),
])
def test_user_mistakes_print_one_message_and_exit_2(tmp_path, flags, message):
    result = subprocess.run(
        [sys.executable, "-m", "real_jax.main", f"--workdir={tmp_path}", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
