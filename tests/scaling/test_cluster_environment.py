"""Launcher variables that are malformed are errors that say so, not a silent single-process run
on every task."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from real_jax.distributed.runtime import ClusterEnvironmentError, detect_cluster

REPO = Path(__file__).resolve().parents[2]


def test_launchers_are_detected_from_their_variables():
    assert detect_cluster({}) is None
    assert detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == "slurm"
    assert detect_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "openmpi"
    assert detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"


@pytest.mark.parametrize("name,value", [("SLURM_NTASKS", "abc"), ("SLURM_NTASKS", "0"),
                                        ("OMPI_COMM_WORLD_SIZE", "-2"),
                                        ("OMPI_COMM_WORLD_SIZE", "")])
def test_a_malformed_process_count_is_an_error_naming_it(name, value):
    env = {"SLURM_JOB_ID": "7", name: value}
    with pytest.raises(ClusterEnvironmentError, match=f"{name}={value!r} is not a positive"):
        detect_cluster(env)


def test_training_refuses_to_start_alone_under_a_broken_launcher(tmp_path):
    env = dict(os.environ, SLURM_JOB_ID="7", SLURM_NTASKS="abc")
    result = subprocess.run(
        [sys.executable, "-m", "real_jax.main", "--config=configs/real.py:tiny",
         f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: SLURM_NTASKS='abc' is not a positive process count" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
