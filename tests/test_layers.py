"""The import contracts (pyproject.toml, `[tool.importlinter]`): the library never imports the
applications, the factory, the commands or the configs; commands > applications > factory >
checks > allowed values; the data pipeline needs nothing of real_jax but its entry helper and
error types; the PyTorch side and the numpy-only shared module never import jax.

Checked with `lint-imports` (import-linter), on the tree itself and on a copy with one upward
import added, which must break the first contract (so this test can fail).
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("real_jax", "configs", "data_pipeline")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "lint-imports"  # the venv's, beside this python
    command = str(binary) if binary.is_file() else "lint-imports"
    return subprocess.run([command, "--no-cache", str(root / "pyproject.toml")],
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    model = tmp_path / "real_jax" / "models" / "projector.py"
    model.write_text(model.read_text() + "\nimport real_jax.experiment  # noqa: E402, F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("the library never imports the applications, the factory, the commands or the \n"
            "configs BROKEN") in result.stdout
    assert "real_jax.models.projector -> real_jax.experiment" in result.stdout
