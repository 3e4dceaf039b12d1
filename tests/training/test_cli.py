"""What the command lines share (`real_jax.cli`): the persistent compilation cache, the GPU
compiler flags, one-line user errors, and `python -m real_jax` listing them."""

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache

from real_jax import cli


@pytest.fixture
def restore_cache_config():
    saved = {name: getattr(jax.config, name) for name in (
        "jax_compilation_cache_dir", "jax_enable_compilation_cache",
        "jax_persistent_cache_min_compile_time_secs")}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # reopened at the suite's directory on the next compile


def test_compiled_programs_land_in_the_chosen_cache_directory(tmp_path, monkeypatch,
                                                             restore_cache_config):
    # An earlier compilation in this process has opened the suite's cache already.
    jax.jit(lambda x: x + 1.0).lower(jnp.ones(3)).compile()
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    monkeypatch.setattr(cli, "MIN_COMPILE_SECONDS", 0.0)
    assert cli.use_compilation_cache(True, str(tmp_path / "xla")) == tmp_path / "xla"
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25).lower(jnp.ones(17)).compile()
    assert list((tmp_path / "xla").iterdir()), "nothing was written to the cache"


def test_cache_defaults_to_the_user_cache_directory_and_can_be_turned_off(
        tmp_path, monkeypatch, restore_cache_config):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli.use_compilation_cache(True) == tmp_path / "real_jax" / "xla"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "real_jax" / "xla")
    assert cli.use_compilation_cache(False) is None
    assert not jax.config.jax_enable_compilation_cache


def test_gpu_workaround_flags_are_added_once_and_a_users_setting_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert cli.set_gpu_xla_flags() == ("--xla_force_host_platform_device_count=2 "
                                       "--xla_gpu_enable_triton_gemm=false")
    assert cli.set_gpu_xla_flags() == ("--xla_force_host_platform_device_count=2 "
                                       "--xla_gpu_enable_triton_gemm=false")
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true")
    assert cli.set_gpu_xla_flags() == "--xla_gpu_enable_triton_gemm=true"
    monkeypatch.delenv("XLA_FLAGS")
    assert cli.set_gpu_xla_flags() == "--xla_gpu_enable_triton_gemm=false"


def test_commands_start_without_torch_but_importing_them_changes_nothing(monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.delenv("USE_TORCH", raising=False)
    import real_jax.predict  # noqa: F401  (imported, not the program)

    assert "USE_TORCH" not in os.environ
    def loads_torch(module: str, *args: str) -> bool:
        check = (f"import runpy, sys; sys.argv = ['{module}', *{list(args)!r}, '--helpshort']\n"
                 "try:\n"
                 f"    runpy.run_module('{module}', run_name='__main__', alter_sys=True)\n"
                 "except SystemExit:\n    pass\n"
                 "print('torch' in sys.modules)")
        result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                                timeout=300)
        answer = (result.stdout.strip().splitlines() or [""])[-1]
        assert answer in ("True", "False"), result.stderr[-2000:]
        return answer == "True"

    assert not loads_torch("real_jax.predict")
    # the benchmark, unless its command line may ask for the PyTorch side (next test)
    assert not loads_torch("real_jax.bench", "--steps=2")


def test_benchmark_flags_that_may_ask_for_pytorch():
    from real_jax.no_torch import may_need_torch

    for argv in (["--torch"], ["--torch=true"], ["-torch"], ["--steps=2", "--flagfile=f"]):
        assert may_need_torch(argv), argv
    for argv in ([], ["--notorch"], ["--torch=false"], ["--torch=0"], ["--torch_device=cuda"]):
        assert not may_need_torch(argv), argv


def test_python_m_real_jax_lists_every_command_and_each_runs_through_cli():
    import subprocess
    import sys
    from pathlib import Path

    from real_jax.__main__ import COMMANDS, summary_line

    listing = subprocess.run([sys.executable, "-m", "real_jax"], capture_output=True, text=True,
                             timeout=120, check=True).stdout
    root = Path(cli.__file__).resolve().parents[1]
    for module in COMMANDS:
        assert f"python -m {module} " in listing and summary_line(module) in listing, module
        source = (root / (module.replace(".", "/") + ".py")).read_text()
        assert "cli.run(main" in source, f"{module} does not start through real_jax.cli.run"


def test_user_errors_are_one_line_with_status_2(tmp_path):
    import subprocess
    import sys

    for argv, message in [
        (["real_jax.summary"], "--workdir must have a value"),
        (["real_jax.summary", f"--workdir={tmp_path}", "extra"], "unexpected arguments"),
        (["real_jax.pretrained", f"--out={tmp_path}", f"--resnet_source={tmp_path / 'r.pth'}"],
         "r.pth does not exist"),
        (["real_jax.main", "--config=configs/real.py:tiny", f"--workdir={tmp_path}",
          "--config.model.register=True"], "--config.model.register: the config has no field"),
        (["real_jax.main", "--config=configs/real.py:tiny", f"--workdir={tmp_path}",
          f"--config.data.synthetic_source={tmp_path / 'raw'}",
          f"--config.data.dir={tmp_path / 'prepared'}", "--config.model.variant=nope"],
         "model.variant='nope' not in ('baseline', 'residual_input', 'real')"),
    ]:
        result = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                                timeout=300)
        error = result.stderr[result.stderr.rfind("error: "):]
        assert result.returncode == 2 and error, result.stderr[-3000:]
        assert message in error and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "raw").exists()  # the bad config stopped before generating data
