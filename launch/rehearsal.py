"""Rehearsal of the paper configuration through the commands users run, with only the batch,
the step count and the dataset shrunk.

    python launch/rehearsal.py --out runs/rehearsal                  # CI: 2 CPU cores, batch 2
    python launch/rehearsal.py --out OUT --batch 32 --steps 30 --checkpoint_every 10 \
        --subjects 24                                                # one GPU (gpu_check.sh)

The model is `configs/real.py`'s default preset as users train it (ResNet-50 x2, GPT-2 124M,
bfloat16 compute, 512 px crops, `data.num_workers` grain worker processes, AdamW, its warmup and
clipping) but initialised at random: `--config.pretrained.resnet50= --config.pretrained.gpt2_dir=`,
as nothing may be downloaded here; the decoder then takes the vocabulary `prepare` trains.
Stages, each one subprocess running the real command (`launch/stages.py` measures them):

0. data: `python -m data_pipeline.synthetic` writes SUBJECTS subjects in the MIMIC-Diff-VQA +
   MIMIC-CXR-JPG layout at MIMIC-CXR-JPG's image size (`--image_width`, 2500 px), and
   `python -m data_pipeline.prepare --question_types difference` ingests them as the README
   says for the real data (shorter side resized to 544 px); training crops 512.
1. `reference`: `python -m real_jax.main --config=configs/real.py ...` trains STEPS steps
   (checkpoints every CHECKPOINT_EVERY, its final evaluation as the preset does it). Its log
   gives the training command's compile s, s per step and samples/s; `--train_only` stops
   here (`gpu_check.sh`'s figure of the command fed by the real pipeline).
2. `killed`: the same command in another workdir, SIGKILLed once its first checkpoint is
   complete; `resumed`: the same command again. Its final train state, optimizer state, batch
   statistics, step, data-iterator position, metrics log and evaluation must equal the
   reference's bit for bit (`launch.chaos.compare`).
3. `evaluate`: `--mode=evaluate --config.generation.method=beam` on the validation split's first
   EVAL_LIMIT examples (3 at evaluation batch 2: the padded last batch).
4. `predict`: `python -m real_jax.predict` on one pair of source JPEGs.
5. `export`: `python -m real_jax.export`; `jax_float32`: `--mode=predict` on the test split in
   float32; `parity`: the exported PyTorch model's greedy answers to those examples equal JAX's
   (`launch/rehearsal_parity.py`; float32 on both sides, the exported model's precision).

Stages share a persistent compilation cache (OUT/xla_cache through JAX_COMPILATION_CACHE_DIR),
so a later process loads what an earlier one compiled. The commands run with the caller's
environment, so with XLA's default compiler flags wherever XLA_FLAGS is unset (as in `.ci/run`),
not the suite's faster ones (tests/conftest.py); the report records XLA_FLAGS. Where no `java`
runs (the coco-caption scorers need it), training stops at STEPS without its final evaluation
(`train.stop_after_steps`) and stage 3 writes beam predictions without scores (`--mode=predict`).

Writes OUT/rehearsal.json after every stage (each stage's command, wall time, exit status, peak
memory; losses; the resume comparison; answer parity; the checks) and prints the key lines;
exits 1 naming each failed check. Stage logs: OUT/logs/. Checkpoints and the export (several GB)
are deleted after a successful run unless --keep.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.real import get_config  # noqa: E402
from launch.chaos import RunLog, compare, complete_steps  # noqa: E402
from launch.stages import REPO, Stage, run_stage  # noqa: E402

PY = sys.executable
STAGE_TIMEOUT_S = 3600.0


class Rehearsal:
    """The stages in order (module docstring), the checks, and the report they fill."""

    def __init__(self, opts: argparse.Namespace, extra: list[str]) -> None:
        self.opts, self.extra = opts, extra
        self.out = opts.out.absolute()
        self.config = get_config(opts.preset)
        self.scoring = shutil.which("java") is not None and not opts.no_scoring
        self.env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(self.out / "xla_cache"),
                        PYTHONPATH=os.pathsep.join(
                            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        self.start = time.monotonic()
        self.report: dict[str, Any] = {
            "command": [PY, *sys.argv], "date": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                time.gmtime()),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            # programs already in OUT/xla_cache: 0 for a cold run, as in CI
            "xla_cache_entries_at_start": len(list((self.out / "xla_cache").glob("*"))),
            "settings": self.settings(), "stages": {}, "checks": []}

    # -- configuration -----------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        c, o = self.config, self.opts
        return {"preset": o.preset, "encoder": c.model.encoder, "dtype": c.model.dtype,
                "decoder_layers": c.model.decoder.n_layer, "image_size": c.data.image_size,
                "num_workers": c.data.num_workers, "global_batch_size": o.batch,
                "steps": o.steps, "checkpoint_every": o.checkpoint_every,
                "eval_batch_size": o.eval_batch, "eval_limit": o.eval_limit,
                "subjects": o.subjects, "source_image_width": o.image_width,
                "scoring": self.scoring, "pretrained": "none (random initialisation)",
                "overrides": self.extra}

    def train_command(self, workdir: Path) -> list[str]:
        o = self.opts
        preset = "" if o.preset == "paper" else f":{o.preset}"
        # Without java: the run's length stays STEPS, a step past it keeps the final evaluation
        # away (the schedule then spans STEPS + 1 steps).
        steps = [f"--config.train.num_train_steps={o.steps}"] if self.scoring else [
            f"--config.train.num_train_steps={o.steps + 1}",
            f"--config.train.stop_after_steps={o.steps}"]
        return [PY, "-m", "real_jax.main", f"--config=configs/real.py{preset}",
                f"--workdir={workdir}", f"--config.data.dir={self.out / 'data' / 'prepared'}",
                "--config.data.synthetic_source=", "--config.pretrained.resnet50=",
                "--config.pretrained.gpt2_dir=", f"--config.train.global_batch_size={o.batch}",
                *steps, f"--config.train.checkpoint_every_steps={o.checkpoint_every}",
                f"--config.train.log_every_steps={o.log_every}",
                f"--config.eval.batch_size={o.eval_batch}",
                f"--config.data.eval_limit={o.eval_limit}", *self.extra]

    # -- bookkeeping -------------------------------------------------------------------------

    def stage(self, name: str, command: list[str], **kwargs: Any) -> Stage:
        print(f"== {name}: {' '.join(command[1:])[:200]}", flush=True)
        stage = run_stage(name, command, self.out / "logs" / f"{name}.log", self.env,
                          timeout_s=self.opts.stage_timeout, **kwargs)
        self.report["stages"][name] = {k: v for k, v in vars(stage).items() if k != "name"}
        print(f"   {stage.wall_s:.0f} s, exit {stage.exit_status}, peak RSS "
              f"{stage.peak_rss_mb:.0f} MB (all its processes {stage.peak_group_rss_mb:.0f} MB)"
              + (f", left over: {stage.leftover_processes}" if stage.leftover_processes else ""),
              flush=True)
        self.check(f"{name}: no process outlives the command", not stage.leftover_processes,
                   stage.leftover_processes)
        self.save()
        return stage

    def check(self, name: str, ok: bool, detail: Any = None) -> bool:
        self.report["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"   [{'ok' if ok else 'FAILED'}] {name}" + ("" if ok else f": {detail}"),
              flush=True)
        return bool(ok)

    def ran(self, stage: Stage) -> bool:
        return self.check(f"{stage.name}: exit status 0", stage.ok,
                          f"exit {stage.exit_status}{', timed out' if stage.timed_out else ''};"
                          f" see {stage.log}")

    def save(self) -> None:
        self.report["total_wall_s"] = round(time.monotonic() - self.start, 1)
        self.report["ok"] = all(c["ok"] for c in self.report["checks"])
        (self.out / "rehearsal.json").write_text(json.dumps(self.report, indent=1) + "\n")

    # -- stages ------------------------------------------------------------------------------

    def run(self) -> bool:
        for name in ("reference", "resumed", "export"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        if self.data() and self.train_and_resume():
            self.evaluate()
            self.predict()
            self.export_and_compare()
        self.report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        self.save()
        if self.report["ok"] and not self.opts.keep:
            for path in (self.out / "reference" / "checkpoints", self.out / "resumed" /
                         "checkpoints", self.out / "export"):
                shutil.rmtree(path, ignore_errors=True)
        return self.report["ok"]

    def data(self) -> bool:
        raw, prepared = self.out / "data" / "raw", self.out / "data" / "prepared"
        reused = (raw / "mimic_pair_questions.csv").is_file()  # from an earlier run into OUT
        if not reused:
            generated = self.stage("synthetic", [
                PY, "-m", "data_pipeline.synthetic", f"--out={raw}",
                f"--subjects={self.opts.subjects}", f"--image_size={self.opts.image_width}"])
            if not self.ran(generated):
                return False
        size = self.config.data.image_size
        prepare = self.stage("prepare", [
            PY, "-m", "data_pipeline.prepare", f"--questions={raw / 'mimic_pair_questions.csv'}",
            f"--images={raw}", f"--metadata={raw / 'mimic-cxr-2.0.0-metadata.csv.gz'}",
            f"--out={prepared}", "--question_types=difference",
            f"--resize_shorter={size + size // 16}"])  # 544 for 512, as ensure_dataset does
        if not self.ran(prepare):
            return False
        ingested = json.loads((prepared / "prepare.json").read_text())["ingested"]
        self.report["data"] = {"ingested": ingested, "source_reused": reused}
        enough = (ingested["train"] >= self.opts.batch and ingested["val"] >= self.opts.eval_limit
                  and ingested["test"] >= 1)
        return self.check("data: enough examples for one batch and the evaluation", enough,
                          f"{ingested}: raise --subjects (and delete {raw})")

    def train_and_resume(self) -> bool:
        """Stages 1 and 2; whether the later stages should run (not with --train_only)."""
        steps, reference, resumed = self.opts.steps, self.out / "reference", self.out / "resumed"
        first = self.stage("reference", self.train_command(reference))
        if not (self.ran(first) and self.check("reference: final checkpoint",
                                               steps in complete_steps(reference),
                                               complete_steps(reference))):
            return False
        if self.opts.train_only:
            self.report["training"] = {"reference": train_figures(Path(first.log),
                                                                  self.opts.batch)}
            self.save()
            return False
        command = self.train_command(resumed)
        killed = self.stage("killed", command, kill_when=lambda: bool(complete_steps(resumed)))
        done = complete_steps(resumed)
        log = RunLog(Path(killed.log))
        log.refresh()
        last_logged = log.last_step()
        self.report["kill"] = {"complete_checkpoints_after_kill": done,
                               "last_logged_step": last_logged}
        if not self.check("killed: SIGKILLed after its first checkpoint, before the last step",
                          killed.killed and killed.exit_status == -9 and done
                          and steps not in done,
                          f"exit {killed.exit_status}, checkpoints {done}; see {killed.log}"):
            return False
        second = self.stage("resumed", command)
        if not self.ran(second):
            return False
        log = Path(second.log).read_text(errors="replace")
        self.check("resumed: restarted from the killed run's checkpoint",
                   f"at step {done[-1]}" in log and "resumed from" in log, second.log)
        with warnings.catch_warnings():  # Orbax: "Sharding info not provided" (host arrays)
            warnings.simplefilter("ignore", UserWarning)
            comparison = compare(reference, resumed, steps)
        if not self.scoring:  # no evaluation ran: nothing to compare there
            comparison["ok"] = (not comparison["state_arrays_differing"]
                                and comparison["iterator_equal"] and comparison["metrics_equal"]
                                and comparison["metrics_steps_in_order_once"]
                                and not comparison["leftovers"])
        self.report["resume"] = comparison
        self.report["losses"] = {name: losses(self.out / name) for name in ("reference",
                                                                             "resumed")}
        self.report["training"] = {stage.name: train_figures(Path(stage.log), self.opts.batch)
                                   for stage in (first, killed, second)}
        self.check("resumed: final state bitwise equal to the uninterrupted run's",
                   comparison["ok"], comparison)
        finite = [math.isfinite(v) for run in self.report["losses"].values()
                  for v in run.values()]
        self.check("losses: logged at every step, finite", all(finite) and len(finite) == 2 * steps,
                   self.report["losses"])
        return True

    def evaluate(self) -> None:
        mode = "evaluate" if self.scoring else "predict"
        stage = self.stage(mode if self.scoring else "evaluate_unscored", [
            *self.train_command(self.out / "resumed"), f"--mode={mode}", "--split=val",
            "--config.generation.method=beam"])
        if not self.ran(stage):
            return
        expected = min(self.opts.eval_limit, self.report["data"]["ingested"]["val"])
        result = evaluation_summary(self.out / "resumed" / "eval_val" / f"step_{self.opts.steps}",
                                    expected, self.scoring)
        self.report["evaluation"] = result
        self.check("evaluate: each selected example answered once, scores finite", result["ok"],
                   result)

    def predict(self) -> None:
        ref, main = source_pair(self.out / "data" / "raw")
        answer = self.out / "logs" / "predict.stdout"
        stage = self.stage("predict", [
            PY, "-m", "real_jax.predict", f"--workdir={self.out / 'resumed'}", f"--ref={ref}",
            f"--main={main}", f"--batch_size={self.opts.predict_batch}"], stdout_path=answer)
        if self.ran(stage):
            # the command prints the answer alone; an untrained model's may hold any character
            self.report["predict"] = {"ref": str(ref), "main": str(main),
                                      "answer": answer.read_text(errors="replace")[:-1]}

    def export_and_compare(self) -> None:
        workdir, export = self.out / "resumed", self.out / "export"
        if not self.ran(self.stage("export", [PY, "-m", "real_jax.export",
                                              f"--workdir={workdir}", f"--out={export}"])):
            return
        # float32 on both sides; "highest" keeps GPUs from multiplying in TF32
        self.env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
        jax_side = self.stage("jax_float32", [
            *self.train_command(workdir), "--mode=predict", "--split=test",
            "--config.model.dtype=float32", "--config.generation.method=greedy"])
        del self.env["JAX_DEFAULT_MATMUL_PRECISION"]
        if not self.ran(jax_side):
            return
        result_path = self.out / "parity.json"
        parity = self.stage("parity", [
            PY, "launch/rehearsal_parity.py", f"--workdir={workdir}", f"--export={export}",
            "--split=test", f"--out={result_path}"])
        if result_path.is_file():
            self.report["parity"] = json.loads(result_path.read_text())
        self.ran(parity)
        self.check("parity: the exported model's greedy answers equal JAX's",
                   self.report.get("parity", {}).get("ok", False), self.report.get("parity"))


def train_figures(log: Path, global_batch: int | None = None) -> dict[str, Any]:
    """From a training log: the train step's compile (or cache load) seconds, as logged, and the
    seconds per step over each interval between consecutive progress lines (the first from the
    compile line, which precedes the run's first step), by the lines' timestamps, so any
    `train.log_every_steps` works. With `global_batch`, also the median's samples/s."""
    stamp = r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) "
    marks: list[tuple[int, float]] = []  # (step, seconds since midnight)
    compile_s, first_step = None, 0
    for line in log.read_text(errors="replace").splitlines():
        started = re.search(r"\] training steps (\d+)\.\.", line)
        compiled = re.search(stamp + r".*train step compiled \(or loaded from the cache\) in "
                             r"([\d.]+) s", line)
        step = re.search(stamp + r".*\] step (\d+)/\d+ ", line)
        if started:
            first_step = int(started.group(1))
        if compiled and compile_s is None:
            compile_s = float(compiled.group(4))
        if (compiled and not marks) or step:
            h, m, sec, value = (compiled or step).groups()[:4]
            at = first_step if compiled else int(value)
            marks.append((at, 3600 * int(h) + 60 * int(m) + float(sec)))
    step_s = [round(((t1 - t0) % 86400) / (s1 - s0), 3)  # % 86400: midnight
              for (s0, t0), (s1, t1) in itertools.pairwise(marks) if s1 > s0]
    median = sorted(step_s)[len(step_s) // 2] if step_s else None
    figures = {"compile_s": compile_s, "step_s": step_s, "step_s_median": median}
    if global_batch is not None:
        figures["samples_per_s"] = round(global_batch / median, 2) if median else None
    return figures


def losses(workdir: Path) -> dict[int, float]:
    """`{step: train/loss}` from a workdir's metrics.jsonl."""
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def evaluation_summary(directory: Path, expected: int, scored: bool) -> dict[str, Any]:
    """What an evaluation directory holds: `expected` predictions of distinct examples in
    split order and, when `scored`, finite scores over exactly those."""
    rows = [json.loads(line) for line in (directory / "predictions.jsonl").read_text()
            .splitlines() if line.strip()] if (directory / "predictions.jsonl").is_file() else []
    indices = [row["index"] for row in rows]
    result: dict[str, Any] = {"directory": str(directory), "indices": indices,
                              "answers": [row["prediction"] for row in rows]}
    ok = len(indices) == expected and indices == sorted(set(indices))
    if scored:
        metrics_path = directory / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        scores = metrics.get("difference", {})
        result["metrics"] = metrics
        ok = ok and metrics.get("num_examples") == expected and bool(scores) and all(
            math.isfinite(v) for v in scores.values() if isinstance(v, int | float))
    result["ok"] = ok
    return result


def source_pair(raw: Path) -> tuple[Path, Path]:
    """The source JPEGs (reference, main) of the first validation difference question."""
    import csv

    from data_pipeline.prepare import select_frontal
    from data_pipeline.synthetic import METADATA_CSV, QUESTIONS_CSV, image_path

    dicoms = select_frontal(raw / METADATA_CSV)
    with open(raw / QUESTIONS_CSV, newline="") as f:
        row = next(r for r in csv.DictReader(f)
                   if r["split"] == "val" and r["question_type"] == "difference")
    subject = int(row["subject_id"])
    return tuple(image_path(raw, subject, int(study), dicoms[int(study)])
                 for study in (row["ref_id"], row["study_id"]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "rehearsal")
    parser.add_argument("--preset", default="paper",
                        help="configs/real.py preset (tiny: a quick check of the plumbing)")
    parser.add_argument("--batch", type=int, default=2, help="train.global_batch_size")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--checkpoint_every", type=int, default=2)
    parser.add_argument("--eval_batch", type=int, default=2)
    parser.add_argument("--eval_limit", type=int, default=3)
    parser.add_argument("--predict_batch", type=int, default=1,
                        help="real_jax.predict --batch_size (one pair: no padding to 8)")
    parser.add_argument("--subjects", type=int, default=5,
                        help="synthetic subjects (5: 8 train, 3 val, 2 test difference pairs)")
    parser.add_argument("--image_width", type=int, default=2500,
                        help="width of the generated source JPEGs (MIMIC-CXR-JPG's ~2500)")
    parser.add_argument("--stage_timeout", type=float, default=STAGE_TIMEOUT_S)
    parser.add_argument("--no_scoring", action="store_true",
                        help="as without java: no final evaluation, unscored beam predictions")
    parser.add_argument("--keep", action="store_true", help="keep checkpoints and the export")
    parser.add_argument("--train_only", action="store_true",
                        help="stop after the reference training run: the training command's "
                             "compile s, s per step and samples/s (report['training'])")
    parser.add_argument("--log_every", type=int, default=1,
                        help="train.log_every_steps (other than 1 only with --train_only: the "
                             "resume checks compare the loss of every step)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete OUT first (data and compilation cache included)")
    opts = parser.parse_args(argv[:split])
    if opts.log_every != 1 and not opts.train_only:
        parser.error("--log_every other than 1 needs --train_only")
    if opts.fresh:
        shutil.rmtree(opts.out, ignore_errors=True)
    rehearsal = Rehearsal(opts, argv[split + 1:])
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the running stage is killed with it
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        ok = rehearsal.run()
    except KeyboardInterrupt:
        ok = rehearsal.check("finished (not interrupted)", False, "SIGINT or SIGTERM")
        rehearsal.save()
    report = rehearsal.report
    print(json.dumps({"stages_wall_s": {k: v["wall_s"] for k, v in report["stages"].items()},
                      "total_wall_s": report["total_wall_s"], "ok": ok}, indent=1))
    failed = [c["check"] for c in report["checks"] if not c["ok"]]
    for name in failed:
        print(f"rehearsal check failed: {name}", file=sys.stderr)
    print(f"report: {rehearsal.out / 'rehearsal.json'}")
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
