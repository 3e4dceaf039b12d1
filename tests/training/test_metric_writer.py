"""`metrics.jsonl` across kills and resumes, and evaluation files written atomically."""

import json

from real_jax.evaluation.metrics import write_metrics_json
from real_jax.training.metric_writer import MetricWriter


def logged_steps(workdir) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]


def test_a_resumed_run_rewrites_the_steps_after_its_checkpoint(tmp_path):
    first = MetricWriter(tmp_path, enabled=True)
    for step in (10, 20, 30, 40):
        first.write(step, {"train": {"loss": 1.0 / step}})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a kill in the middle of a line
        f.write('{"step": 50, "time": 1.0, "train/lo')
    resumed = MetricWriter(tmp_path, enabled=True, resume_step=20)
    assert logged_steps(tmp_path) == [10, 20]
    for step in (30, 40, 50):
        resumed.write(step, {"train": {"loss": 2.0 / step}})
    resumed.close()
    assert logged_steps(tmp_path) == [10, 20, 30, 40, 50]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert rows[2]["train/loss"] == 2.0 / 30  # the resumed run's value, not the stopped one's


def test_a_fresh_start_over_an_old_log_keeps_nothing_after_step_0(tmp_path):
    old = MetricWriter(tmp_path, enabled=True)
    old.write(5, {"loss": 1.0})
    old.close()
    MetricWriter(tmp_path, enabled=True, resume_step=0).close()
    assert logged_steps(tmp_path) == []


def test_metrics_json_is_replaced_whole(tmp_path):
    path = tmp_path / "eval" / "step_4" / "metrics.json"
    write_metrics_json(path, {"CIDEr": 1.0})
    write_metrics_json(path, {"CIDEr": 2.0})
    assert json.loads(path.read_text()) == {"CIDEr": 2.0}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left


def test_tensorboard_events_are_written_without_loading_pytorch(tmp_path):
    """tensorboardX imports torch when it is installed (~2 s of each training start); the writer
    keeps it out, and torch still imports afterwards in the same process."""
    import subprocess
    import sys

    check = ("import sys\n"
             "from real_jax.training.metric_writer import MetricWriter\n"
             f"writer = MetricWriter({str(tmp_path)!r}, enabled=True)\n"
             "writer.write(1, {'train': {'loss': 0.5}})\n"
             "writer.close()\n"
             "print('torch' in sys.modules)\n"
             "import torch\n"
             "print(torch.ones(2).sum().item())")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "2.0"], result.stderr[-3000:]
    (events,) = (tmp_path / "tensorboard").glob("events.*")
    assert events.stat().st_size > 0
