"""2 processes x 2 CPU devices (the local launcher, gloo) train the tiny preset to the same
parameters as 1 process x 4 devices: same global batches, same step, same checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs.real import get_config
from launch.local import process_env

REPO = Path(__file__).resolve().parents[2]
STEPS = 2
# Both runs see the same global batches and compute the same per-device partial results; only the
# order of the cross-device sums (gloo between processes vs in-process) differs, which changes a
# float32 sum of 4 partials by at most 3 rounding errors of their magnitude (eps = 2**-23).
# Plain SGD (`optim.name=sgd`, no warmup so both steps move) keeps that difference at rounding
# size: each parameter moves by lr * gradient, far less than an ulp of the parameter's own
# magnitude for a gradient error of a few eps, so parameters and batch statistics agree to a few
# ulps of the array's scale. That scale is its largest entry, or the largest distance SGD can move
# an entry in STEPS steps (lr x clip norm each) where that is larger: an array whose gradient is
# zero in exact arithmetic (an attention key bias) moves by rounding noise alone, and its entries
# then agree to rounding of the gradients' size, not of their own. (Adam's `m / sqrt(v)` would
# turn such noise into a step of +-lr: a 1e-4 difference that no rounding bound covers.) The
# losses of step 1 (same parameters, same batch) and step 2 (parameters a few ulps apart) differ
# by the same order. 16 ulps leaves room for the two steps and the reductions inside batch norm.
FLOAT32_EPS = float(np.finfo(np.float32).eps)
ULPS = 16
_OPTIM = get_config("tiny").optim
LARGEST_MOVE = STEPS * _OPTIM.learning_rate * _OPTIM.grad_clip_norm


def train_flags(workdir: Path, data_flags: list[str]) -> list[str]:
    # Stopped after STEPS of STEPS + 1 (a complete checkpoint, exit 0) so that neither run
    # evaluates: multi-process evaluation is in test_process_failures.py's resumed job.
    return ["--config=configs/real.py:tiny", f"--workdir={workdir}",
            f"--config.train.num_train_steps={STEPS + 1}",
            f"--config.train.stop_after_steps={STEPS}", "--config.data.eval_limit=8",
            "--config.data.image_size=32",
            "--config.generation.answer_max_tokens=4", "--config.optim.name=sgd",
            "--config.optim.warmup_steps=0", *data_flags]


def run(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def final_state(workdir: Path) -> dict:
    path = (workdir / "checkpoints" / str(STEPS) / "state").absolute()
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return jax.tree.map(np.asarray, {"params": restored["params"],
                                     "batch_stats": restored["batch_stats"]})


def train_losses(workdir: Path) -> list[float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    return [row["train/loss"] for row in rows if "train/loss" in row]


def ulps_apart(x: np.ndarray, y: np.ndarray, floor: float) -> float:
    """Largest |x - y| in units of float32 rounding at the array's scale: its largest magnitude,
    or `floor` where that is larger."""
    if not x.size:
        return 0.0
    scale = max(float(np.max(np.abs(x))), floor)
    return float(np.max(np.abs(x - y))) / (FLOAT32_EPS * scale)


def test_two_processes_match_one_process(scratch, tiny_data):
    _, data_flags = tiny_data
    single_env = process_env(4)
    single = run([sys.executable, "-m", "real_jax.main",
                  *train_flags(scratch / "single", data_flags)], single_env)
    assert "on 4 devices (1 processes)" in single, single[-3000:]
    workdir = scratch / "multi"
    result = subprocess.run(
        [sys.executable, "launch/local.py", "--num_processes", "2",
         "--devices_per_process", "2", "--", *train_flags(workdir, data_flags)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    multi = result.stdout + result.stderr
    assert result.returncode == 0, multi[-6000:]
    assert "on 4 devices (2 processes)" in multi, multi[-3000:]
    assert "exit status 0" in multi

    a, b = final_state(scratch / "single"), final_state(workdir)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    worst: dict[str, tuple[float, str]] = {}
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        name = jax.tree_util.keystr(path)
        group = name.split("'")[1]
        floor = LARGEST_MOVE if group == "params" else float(np.finfo(np.float32).tiny)
        worst[group] = max(worst.get(group, (0.0, "")), (ulps_apart(x, y, floor), name))
    single_losses, multi_losses = train_losses(scratch / "single"), train_losses(workdir)
    print(worst, single_losses, multi_losses)
    assert all(error <= ULPS for error, _ in worst.values()), worst
    assert len(single_losses) == len(multi_losses) == STEPS
    for x, y in zip(single_losses, multi_losses, strict=True):
        assert abs(x - y) <= ULPS * FLOAT32_EPS * abs(x), (single_losses, multi_losses)
    # the run did train: SGD moved the parameters, so the losses differ between the steps
    assert single_losses[0] != single_losses[1]
