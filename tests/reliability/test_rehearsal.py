"""`launch/rehearsal.py`'s own logic, fast (the rehearsal itself runs in `.ci/run`, ~15 min):

- `launch/stages.py` on real subprocesses: a command killed once a condition holds, its peak
  memory (the process alone, and with its child), the child it orphaned found and killed, a
  failing and a timed-out command;
- the verdicts it draws from a run's files: an evaluation's predictions and scores, the
  exported model's answers against JAX's;
- the command line end to end up to its data check, which fails: exit status 1, the report
  naming the check, nothing trained.
"""

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

from launch import stages
from launch.rehearsal import evaluation_summary, train_figures
from launch.rehearsal import main as rehearsal_main
from launch.rehearsal_parity import compare_answers

MB = 2**20

# Holds `size` MB (written, so resident), starts a child holding 60 MB in its own process group,
# waits for it, then writes `marker` and sleeps: killing it orphans the child.
PARENT = """
import subprocess, sys, time
from pathlib import Path

import pytest
held = b"\\x01" * ({size} * 2**20)
child = subprocess.Popen([sys.executable, "-c", "import time; from pathlib import Path; "
                          "held = b'\\\\x01' * (60 * 2**20); Path({child_marker!r}).touch(); "
                          "time.sleep(600)"])
while not Path({child_marker!r}).exists():
    time.sleep(0.05)
print(child.pid, flush=True)
time.sleep(4 * {sample})  # several memory samples with both alive
Path({marker!r}).touch()
time.sleep(600)
"""


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_stage_killed_on_condition_measured_and_its_orphan_reaped(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "LEFTOVER_GRACE_S", 2.0)
    marker, child_marker = tmp_path / "ready", tmp_path / "child_ready"
    script = PARENT.format(size=150, marker=str(marker), child_marker=str(child_marker),
                           sample=stages.SAMPLE_S)
    stage = stages.run_stage("parent", [sys.executable, "-c", script], tmp_path / "parent.log",
                             os.environ, kill_when=marker.exists, timeout_s=120,
                             stdout_path=tmp_path / "parent.out")
    assert stage.killed and stage.exit_status == -9 and not stage.ok, stage
    assert not stage.timed_out
    # The parent alone (its child was never reaped by it), then both together.
    assert 150 <= stage.peak_rss_mb < 150 + 120, stage
    assert stage.peak_group_rss_mb >= 150 + 60, stage
    child = int((tmp_path / "parent.out").read_text().split()[0])
    assert [entry.split()[0] for entry in stage.leftover_processes] == [str(child)], stage
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child)


def test_stage_failing_and_timed_out_commands(tmp_path):
    failing = stages.run_stage("fails", [sys.executable, "-c", "import sys; print('x'); "
                                         "sys.exit(3)"], tmp_path / "fails.log", os.environ)
    assert failing.exit_status == 3 and not failing.ok and not failing.killed
    assert failing.leftover_processes == [] and failing.wall_s < 60
    assert (tmp_path / "fails.log").read_text() == "x\n"
    slow = stages.run_stage("slow", [sys.executable, "-c", "import time; time.sleep(600)"],
                            tmp_path / "slow.log", os.environ, timeout_s=1.0)
    assert slow.timed_out and slow.exit_status == -9 and not slow.ok
    assert slow.wall_s < 60


def write_evaluation(directory: Path, indices: list[int], cider: float = 0.5) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "predictions.jsonl").write_text("".join(
        json.dumps({"index": i, "prediction": f"answer {i}"}) + "\n" for i in indices))
    (directory / "metrics.json").write_text(json.dumps(
        {"difference": {"BLEU-1": 0.1, "CIDEr": cider}, "num_examples": len(indices)}))
    return directory


def test_evaluation_summary_wants_each_example_once_and_finite_scores(tmp_path):
    good = evaluation_summary(write_evaluation(tmp_path / "good", [4, 7, 9]), 3, scored=True)
    assert good["ok"] and good["indices"] == [4, 7, 9], good
    assert not evaluation_summary(tmp_path / "good", 2, scored=True)["ok"]  # one too many
    twice = write_evaluation(tmp_path / "twice", [4, 7, 7])
    assert not evaluation_summary(twice, 3, scored=True)["ok"]
    assert not evaluation_summary(write_evaluation(tmp_path / "nan", [1, 2, 3], math.nan), 3,
                                  scored=True)["ok"]
    unscored = write_evaluation(tmp_path / "unscored", [1, 2, 3])
    (unscored / "metrics.json").unlink()
    assert not evaluation_summary(unscored, 3, scored=True)["ok"]
    assert evaluation_summary(unscored, 3, scored=False)["ok"]
    assert not evaluation_summary(tmp_path / "absent", 3, scored=False)["ok"]


def test_answer_parity_needs_every_answer_equal_and_one_not_empty():
    assert compare_answers({0: "a b", 3: "c"}, {0: "a b", 3: "c"})["ok"]
    differing = compare_answers({0: "a b", 3: "c"}, {0: "a b", 3: "d"})
    assert not differing["ok"] and differing["equal"] == 1
    assert differing["mismatches"] == [{"index": 3, "jax": "c", "torch": "d"}]
    assert not compare_answers({0: "a"}, {0: "a", 1: "b"})["ok"]  # an example JAX lacks
    assert not compare_answers({0: "", 1: ""}, {0: "", 1: ""})["ok"]  # vacuous
    assert not compare_answers({}, {})["ok"]


def test_rehearsal_stops_at_a_failed_check_with_exit_status_1(tmp_path, capsys):
    status = rehearsal_main(["--out", str(tmp_path), "--preset=tiny", "--subjects=5",
                             "--image_width=64", "--eval_limit=50"])
    assert status == 1
    report = json.loads((tmp_path / "rehearsal.json").read_text())
    failed = [c["check"] for c in report["checks"] if not c["ok"]]
    assert failed == ["data: enough examples for one batch and the evaluation"], report
    assert set(report["stages"]) == {"synthetic", "prepare"} and not report["ok"]
    assert "rehearsal check failed: data: enough examples" in capsys.readouterr().err


def test_train_figures_from_a_training_log(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "I1202 23:57:16.500000 1 loop.py:233] training steps 0..3 of 3 on 1 devices\n"
        "I1202 23:58:51.000000 1 loop.py:191] train step compiled (or loaded from the cache) in "
        "94.5 s\n"
        "I1202 23:59:11.250000 1 metric_writer.py:132] step 1/3 0.05 steps/s ETA 1 min loss=6\n"
        "I1202 23:59:41.250000 1 metric_writer.py:132] step 2/3 0.03 steps/s ETA 1 min loss=6\n"
        "I1203 00:00:06.250000 1 metric_writer.py:132] step 3/3 0.04 steps/s ETA 0 min loss=6\n")
    figures = train_figures(log)
    assert figures == {"compile_s": 94.5, "step_s": [20.25, 30.0, 25.0], "step_s_median": 25.0}


def test_train_figures_divide_each_interval_by_its_steps_from_a_resumed_run(tmp_path):
    """Progress every 10 steps of a run resumed at step 15 (a line at the checkpoint step 20):
    seconds per step over each interval, and samples/s at the median."""
    log = tmp_path / "train.log"
    log.write_text(
        "I1203 10:00:00.000000 1 driver.py:243] training steps 15..40 of 40 on 1 devices\n"
        "I1203 10:00:02.000000 1 driver.py:193] train step compiled (or loaded from the cache) in "
        "1.5 s\n"
        "I1203 10:00:03.000000 1 metric_writer.py:132] step 20/40 5 steps/s ETA 0 min loss=6\n"
        "I1203 10:00:04.000000 1 metric_writer.py:132] step 30/40 10 steps/s ETA 0 min loss=6\n"
        "I1203 10:00:08.000000 1 metric_writer.py:132] step 40/40 2.5 steps/s ETA 0 min loss=6\n")
    figures = train_figures(log, global_batch=32)
    assert figures == {"compile_s": 1.5, "step_s": [0.2, 0.1, 0.4], "step_s_median": 0.2,
                       "samples_per_s": 160.0}


def test_train_only_stops_after_the_reference_run_with_its_step_figures(tmp_path):
    """`--train_only` (gpu_check.sh's training-command figure): data, one real training run
    logged every 2 steps, its s per step and samples/s, and no kill, resume or export."""
    status = rehearsal_main(["--out", str(tmp_path), "--preset=tiny", "--subjects=5",
                             "--image_width=64", "--batch=2", "--steps=4",
                             "--checkpoint_every=4", "--log_every=2", "--train_only",
                             "--no_scoring"])
    report = json.loads((tmp_path / "rehearsal.json").read_text())
    assert status == 0 and report["ok"], report["checks"]
    assert set(report["stages"]) == {"synthetic", "prepare", "reference"}
    figures = report["training"]["reference"]
    assert len(figures["step_s"]) == 2 and figures["compile_s"] is not None, figures
    assert figures["samples_per_s"] == pytest.approx(2 / figures["step_s_median"], rel=0.01)


def test_log_every_other_than_1_needs_train_only(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        rehearsal_main(["--out", str(tmp_path), "--log_every=5"])
    assert exit_info.value.code == 2
