"""`real_jax.predict`, `real_jax.main --mode=evaluate` and `real_jax.export` pointed at the workdir
of a job that is training and saving a checkpoint every step (keeping only the last two, so the
step a reader picks is often deleted before it has read it) succeed on a complete checkpoint and
leave the job alone: it trains on, stops on SIGTERM with a complete checkpoint, and no partial save
of its is removed under it."""

import json
import re
import signal
import subprocess
import sys
import time

from tests.runs import REPO, checkpoint_steps, main_command, partial_saves

JOB_STEPS = 5000  # never reached: the job is stopped with SIGTERM once the readers are done


def test_predict_evaluate_and_export_beside_a_job_that_is_saving(prepared, tmp_path):
    workdir = tmp_path / "job"
    job_log = tmp_path / "job.log"
    command = main_command(workdir, prepared, f"--config.train.num_train_steps={JOB_STEPS}",
                           "--config.train.checkpoint_every_steps=1",
                           "--config.train.keep_checkpoints=2")
    images = sorted((prepared.parent / "raw").rglob("*.jpg"))[:2]
    readers = {
        "predict": [sys.executable, "-m", "real_jax.predict", f"--workdir={workdir}",
                    f"--ref={images[0]}", f"--main={images[1]}"],
        "evaluate": main_command(workdir, prepared, "--mode=evaluate", "--split=test"),
        "export": [sys.executable, "-m", "real_jax.export", "--workdir", str(workdir),
                   "--out", str(tmp_path / "exported")],
    }
    with open(job_log, "w") as log:
        job = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 600
            while not (workdir / "checkpoints").is_dir() or not checkpoint_steps(workdir):
                assert job.poll() is None and time.time() < deadline, job_log.read_text()[-5000:]
                time.sleep(0.05)
            running = {name: subprocess.Popen(reader, cwd=REPO, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
                       for name, reader in readers.items()}
            results = {}
            for name, reader in running.items():  # reading its pipes while it runs: a reader
                out, err = reader.communicate(timeout=600)  # blocks once a pipe is full
                results[name] = (reader.returncode, out, err)
            assert job.poll() is None, "the job ended before the readers: " + \
                job_log.read_text()[-3000:]
            job.send_signal(signal.SIGTERM)
            job_status = job.wait(timeout=600)
        finally:
            if job.poll() is None:
                job.kill()
    text = job_log.read_text()
    assert job_status == 0, text[-5000:]
    stopped = re.search(r"stopped at step (\d+) of \d+ with a complete checkpoint", text)
    assert stopped, text[-5000:]
    assert checkpoint_steps(workdir)[-1] == int(stopped.group(1)) and not partial_saves(workdir)
    assert "Traceback" not in text, text[-5000:]

    for name, (status, _, stderr) in results.items():
        assert status == 0, f"{name}:\n{stderr[-5000:]}"
    answer = results["predict"][1].strip()
    assert answer, results["predict"][2][-3000:]
    evaluated = sorted(workdir.glob("eval_test/step_*/metrics.json"))
    assert len(evaluated) == 1 and json.loads(evaluated[0].read_text())["num_examples"] > 0
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["step"] >= 1
