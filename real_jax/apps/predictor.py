"""Answer questions about new pairs of studies with a trained run (`python -m real_jax.predict`).

`Predictor.load(workdir)` restores a checkpoint read-only with the config saved in it and the
tokenizer the run saved in its workdir; `prepare` reads PNG, JPEG or DICOM files
(`data_pipeline/image_files.py`: windowing, MONOCHROME1) and applies the evaluation
preprocessing (both scaled to the training size, the same centred crop); `answer` decodes as
the config's `generation` says (the model registers ref onto main itself when trained with
`model.registration.enabled`); `explain` and `save_figure` give the saliency heatmap. `predict`
is the command line's whole job: one pair, or a csv of pairs to JSONL.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from configs.upgrade import restore_config
from data_pipeline.image_files import ImageFileError, read_image_file
from data_pipeline.images import pair_crop
from data_pipeline.pipeline import encode_question
from real_jax.errors import UserError
from real_jax.evaluation.heatmap import save_heatmap_figure
from real_jax.evaluation.saliency import make_saliency_fn
from real_jax.experiment import Experiment, build_experiment, run_tokenizer
from real_jax.models.generation import strip_after_eos
from real_jax.models.registration import make_align_fn
from real_jax.training.checkpointing import Checkpointer, restore_newest

DEFAULT_QUESTION = "what has changed compared to the reference image?"


@dataclasses.dataclass
class Pair:
    """One question about one pair of studies, preprocessed for the model."""

    ref: np.ndarray  # uint8[S, S], the evaluation crop
    main: np.ndarray  # uint8[S, S]
    question: str
    question_ids: np.ndarray  # int32[Lq], left-padded
    question_mask: np.ndarray  # int32[Lq]


@dataclasses.dataclass
class Answer:
    answer: str
    answer_ids: list[int]


class Predictor:
    """A restored run: `prepare` turns image files into a `Pair`, `answer` generates, `explain`
    computes saliency maps, `save_figure` draws one."""

    def __init__(self, experiment: Experiment, variables: Any, batch_size: int = 8) -> None:
        self.experiment, self.variables, self.batch_size = experiment, variables, batch_size
        self.config, self.model = experiment.config, experiment.model
        self.tokenizer = experiment.tokenizer
        self._generate = experiment.generate_fn()
        self._saliency = None
        self._register = (make_align_fn(self.model.registration)
                          if self.model.registration is not None else None)

    @classmethod
    def load(cls, workdir: str | Path, *, step: int | None = None, best: bool = False,
             batch_size: int = 8) -> Predictor:
        """Restores the latest (or `step`, or with `best` the best) checkpoint of `workdir`."""
        workdir = Path(workdir)
        checkpoints = workdir / "checkpoints"
        if not checkpoints.is_dir():
            raise FileNotFoundError(f"{workdir} has no checkpoints/ folder: not a training "
                                    "workdir of real_jax.main")
        checkpointer = Checkpointer(checkpoints, keep=1, best_metric=None, read_only=True)
        if best and step is None and checkpointer.latest_step() is not None:
            _, saved = restore_newest(checkpointer, checkpointer.restore_config)
            best_metric = saved["train"]["best_metric"]
            checkpointer.close()
            checkpointer = Checkpointer(checkpoints, keep=1, best_metric=best_metric,
                                        read_only=True)
            step = checkpointer.best_step()
        if step is None and not best:  # the latest, even beside a job that is saving now
            step, (experiment, state) = restore_newest(
                checkpointer, lambda s: cls._restore(workdir, checkpointer, s))
        elif step is None or step not in checkpointer.all_steps():
            what = f"step {step}" if step is not None else "best"
            raise FileNotFoundError(f"no {what} checkpoint in {checkpoints} (complete steps: "
                                    f"{checkpointer.all_steps()})")
        else:
            experiment, state = cls._restore(workdir, checkpointer, step)
        checkpointer.close()
        logging.info("restored %s step %d", checkpoints, step)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return cls(experiment, variables, batch_size)

    @staticmethod
    def _restore(workdir: Path, checkpointer: Checkpointer, step: int) -> tuple[Experiment, Any]:
        """The experiment of the run (its saved config, one device) and step `step`'s state."""
        config = restore_config(checkpointer.restore_config(step))
        experiment = build_experiment(config, tokenizer=run_tokenizer(workdir, config),
                                      devices=jax.devices()[:1], batch_size=1, total_steps=1,
                                      check=False)
        return experiment, checkpointer.restore(step, experiment.abstract_state()[0])

    def prepare(self, ref_path: str | Path, main_path: str | Path,
                question: str = DEFAULT_QUESTION) -> Pair:
        """Reads both images (errors name the file) and applies the evaluation crop."""
        ref, main = read_image_file(ref_path), read_image_file(main_path)
        ref, main = pair_crop(ref, main, self.config.data.image_size, None)
        ids, mask, length = encode_question(self.tokenizer, question,
                                            self.config.data.question_max_tokens)
        if length > len(ids):
            logging.warning("question has %d tokens, the model reads the first %d: %r", length,
                            len(ids), question)
        return Pair(ref, main, question, ids, mask)

    def _batches(self, pairs: Sequence[Pair]):
        """Fixed-size batches (the last padded by repeating its first pair): one compilation."""
        for start in range(0, len(pairs), self.batch_size):
            chunk = list(pairs[start:start + self.batch_size])
            padded = chunk + [chunk[0]] * (self.batch_size - len(chunk))
            batch = {key: jnp.asarray(np.stack([getattr(p, key) for p in padded]))
                     for key in ("ref", "main", "question_ids", "question_mask")}
            yield len(chunk), batch

    def answer(self, pairs: Sequence[Pair]) -> list[Answer]:
        answers = []
        for size, batch in self._batches(pairs):
            tokens = strip_after_eos(self._generate(self.variables, batch)[:size],
                                     self.tokenizer.eos_id)
            answers += [Answer(self.tokenizer.decode(ids), ids) for ids in tokens]
        return answers

    def explain(self, pairs: Sequence[Pair], answers: Sequence[Answer]) -> np.ndarray:
        """Saliency maps `float32[N, S, S]` of each answer (`real_jax/evaluation/saliency.py`)."""
        if self._saliency is None:
            self._saliency = make_saliency_fn(self.model)
        length = self.config.data.answer_max_tokens
        maps = []
        for start, (size, batch) in zip(range(0, len(pairs), self.batch_size),
                                        self._batches(pairs), strict=True):
            chunk = list(answers[start:start + size])
            chunk += [chunk[0]] * (self.batch_size - size)
            ids = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
            mask = np.zeros((self.batch_size, length), np.int32)
            for row, answer in enumerate(chunk):
                tokens = answer.answer_ids[:length - 1] + [self.tokenizer.eos_id]
                ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
            batch = dict(batch, answer_ids=jnp.asarray(ids), answer_mask=jnp.asarray(mask))
            maps.append(np.asarray(self._saliency(self.variables, batch)[0])[:size])
        return np.concatenate(maps)

    def save_figure(self, path: str | Path, pair: Pair, answer: Answer, saliency: np.ndarray,
                    title: str = "") -> tuple[int, int]:
        """ref | main | residual (of the registered ref when the run registers) | heatmap."""
        ref = pair.ref.astype(np.float32)
        if self._register is not None:
            ref = np.asarray(self._register(pair.ref[None], pair.main[None])[0])
        return save_heatmap_figure(path, ref, pair.main, saliency, pair.question, answer.answer,
                                   residual=(pair.main.astype(np.float32) - ref) / 255.0,
                                   registered=self._register is not None, title=title)


def read_pairs_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows `{id, ref, main, question}` of a pairs csv; relative paths resolved from its folder.
    A row without both images carries an `error` and is reported, not answered."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"ref", "main"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{path}: missing column(s) {sorted(missing)}; the header must "
                            f"have ref,main[,question][,id], got {reader.fieldnames}")
        rows = []
        for number, row in enumerate(reader, start=2):  # line 1 is the header
            resolve = lambda p: str(p if Path(p).is_absolute() else path.parent / p)
            ref, main = ((row.get(key) or "").strip() for key in ("ref", "main"))
            out = {
                "id": (row.get("id") or "").strip() or f"line{number}",
                "ref": resolve(ref) if ref else "",
                "main": resolve(main) if main else "",
                "question": (row.get("question") or "").strip() or DEFAULT_QUESTION,
            }
            if not (ref and main):
                out["error"] = f"{path} line {number}: empty ref or main"
            rows.append(out)
    return rows


def predict_pairs(predictor: Predictor, rows: Sequence[dict[str, str]], output: str | Path,
                  heatmap_dir: str | Path | None = None) -> tuple[int, int]:
    """Answers every row, writing one JSON line each (failed rows carry `error`, are logged and
    counted). Returns `(answered, failed)`."""
    pairs, kept, results = [], [], []
    for row in rows:
        if "error" in row:
            logging.error("pair %s skipped: %s", row["id"], row["error"])
            results.append(dict(row))
            continue
        try:
            pairs.append(predictor.prepare(row["ref"], row["main"], row["question"]))
            kept.append(row)
        except (ImageFileError, ValueError, OSError) as e:
            logging.error("pair %s skipped: %s", row["id"], e)
            results.append(dict(row, error=str(e)))
    answers = predictor.answer(pairs) if pairs else []
    maps = predictor.explain(pairs, answers) if pairs and heatmap_dir else None
    for index, (row, pair, answer) in enumerate(zip(kept, pairs, answers, strict=True)):
        result = dict(row, answer=answer.answer)
        if maps is not None:
            figure = Path(heatmap_dir) / f"{_safe_name(row['id'])}.png"
            predictor.save_figure(figure, pair, answer, maps[index], title=row["id"])
            result["heatmap"] = str(figure)
        results.append(result)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    failed = sum("error" in r for r in results)
    return len(results) - failed, failed


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text) or "pair"


def predict(*, workdir: str | Path, ref: str | None = None, main: str | None = None,
            question: str = DEFAULT_QUESTION, pairs: str | None = None,
            output: str | None = None, heatmap: str | None = None,
            heatmap_dir: str | None = None, step: int | None = None, best: bool = False,
            batch_size: int = 8) -> int:
    """One pair (`ref` and `main`: prints the answer, `heatmap` writes the figure) or a csv of
    `pairs` (JSONL to `output`, default `answers.jsonl` beside the csv; `heatmap_dir` gets one
    figure per pair). Returns the exit status: 0, or 1 when a row of the csv failed.

    Raises `UserError` for a call that asks for neither or both modes; missing or unreadable
    files raise `FileNotFoundError` / `ImageFileError` naming the file.
    """
    single = ref is not None or main is not None
    if single == (pairs is not None) or (single and not (ref and main)):
        raise UserError("give either --ref and --main (one pair) or --pairs CSV")
    predictor = Predictor.load(workdir, step=step, best=best, batch_size=batch_size)
    if single:
        pair = predictor.prepare(ref, main, question)
        answer = predictor.answer([pair])[0]
        print(answer.answer)
        if heatmap:
            saliency = predictor.explain([pair], [answer])[0]
            predictor.save_figure(heatmap, pair, answer, saliency,
                                  title=f"{Path(ref).name} -> {Path(main).name}")
        return 0
    rows = read_pairs_csv(pairs)
    output = output or str(Path(pairs).with_name("answers.jsonl"))
    answered, failed = predict_pairs(predictor, rows, output, heatmap_dir)
    print(f"{answered} pairs answered, {failed} failed; wrote {output}")
    return 1 if failed else 0
