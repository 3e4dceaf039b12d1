"""Answer questions about new pairs of studies with a trained run (README, "Predicting").

One pair (prints the answer; `--heatmap` also writes the saliency figure):

    python -m real_jax.predict --workdir=runs/synthetic --ref=old.dcm --main=new.png \
        [--question="what has changed compared to the reference image?"] [--heatmap=fig.png]

Many pairs from a csv with columns `ref`, `main` and optionally `question` and `id` (relative
paths are taken from the csv's folder); writes one JSON line per row:

    python -m real_jax.predict --workdir=runs/synthetic --pairs=pairs.csv --output=answers.jsonl \
        [--heatmap_dir=figures/]

Images may be PNG, JPEG or DICOM (`data_pipeline/image_files.py`: windowing, MONOCHROME1). They
get the evaluation preprocessing (both scaled to the training size, the same centred crop), then
registration when the run was trained with `data.register`, and greedy or beam decoding as
configured. The checkpoint brings its own config; the tokenizer comes from the workdir (saved
there at the start of training) or else from the run's `data.dir`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from data_pipeline.image_files import ImageFileError, read_image_file
from data_pipeline.images import pair_crop
from data_pipeline.pipeline import encode_question, load_tokenizer
from data_pipeline.tokenizer import Tokenizer
from real_jax import sharding as shd
from real_jax.checkpointing import Checkpointer
from real_jax.evaluation.heatmap import save_heatmap_figure
from real_jax.generation import make_generate_fn, strip_after_eos
from real_jax.models import ReAl, build_model
from real_jax.optim import make_optimizer
from real_jax.registration import config_from_data_config, make_align_fn
from real_jax.saliency import make_saliency_fn
from real_jax.train_step import abstract_train_state, example_batch

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

    def __init__(self, config: ml_collections.ConfigDict, model: ReAl, variables: Any,
                 tokenizer: Tokenizer, batch_size: int = 8) -> None:
        self.config, self.model, self.variables = config, model, variables
        self.tokenizer, self.batch_size = tokenizer, batch_size
        generation = config.generation
        self._generate = make_generate_fn(
            model, method=generation.method, max_new_tokens=generation.max_answer_tokens,
            eos_id=tokenizer.eos_id, beam_size=generation.beam_size,
            length_penalty=generation.length_penalty)
        self._saliency = None
        self._register = (make_align_fn(model.registration) if model.registration is not None
                          else None)

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
        latest = checkpointer.latest_step()
        if best and step is None and latest is not None:
            best_metric = checkpointer.restore_config(latest)["train"]["best_metric"]
            checkpointer.close()
            checkpointer = Checkpointer(checkpoints, keep=1, best_metric=best_metric,
                                        read_only=True)
            step = checkpointer.best_step()
        step = latest if step is None and not best else step
        if step is None or step not in checkpointer.all_steps():
            what = f"step {step}" if step is not None else ("best" if best else "complete")
            raise FileNotFoundError(f"no {what} checkpoint in {checkpoints} (complete steps: "
                                    f"{checkpointer.all_steps()})")
        config = ml_collections.ConfigDict(checkpointer.restore_config(step))
        tokenizer = (Tokenizer.load(workdir / "tokenizer") if (workdir / "tokenizer").is_dir()
                     else load_tokenizer(config.data.dir, config.pretrained.gpt2_dir or None))
        model = build_model(config.model, tokenizer.vocab_size, tokenizer.eos_id,
                            registration=config_from_data_config(config.data))
        tx, _ = make_optimizer(config.optim, 1)  # only the state's structure matters here
        shapes = example_batch(1, config.data.image_size, config.data.question_max_tokens,
                               config.data.answer_max_tokens)
        mesh = shd.make_mesh(jax.devices()[:1])
        abstract, _ = abstract_train_state(model, tx, shapes, mesh)
        state = checkpointer.restore(step, abstract)
        checkpointer.close()
        logging.info("restored %s step %d", checkpoints, step)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return cls(config, model, variables, tokenizer, batch_size)

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
        """Saliency maps `float32[N, S, S]` of each answer (`real_jax/saliency.py`)."""
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
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; the header must "
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


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (holds checkpoints/).")
flags.DEFINE_string("ref", None, "Reference (earlier) study: PNG, JPEG or DICOM.")
flags.DEFINE_string("main", None, "Main (later) study: PNG, JPEG or DICOM.")
flags.DEFINE_string("question", DEFAULT_QUESTION, "Question about the pair.")
flags.DEFINE_string("pairs", None, "CSV with columns ref,main[,question][,id] (batch mode).")
flags.DEFINE_string("output", None, "JSONL output (batch mode; default: answers.jsonl beside "
                    "the csv).")
flags.DEFINE_string("heatmap", None, "Single pair: write the saliency figure to this PNG.")
flags.DEFINE_string("heatmap_dir", None, "Batch mode: write one saliency figure per pair here.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_bool("best", False, "Use the checkpoint with the best train.best_metric.")
flags.DEFINE_integer("batch_size", 8, "Pairs per generation call.")
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    single = FLAGS.ref is not None or FLAGS.main is not None
    if single == (FLAGS.pairs is not None) or (single and not (FLAGS.ref and FLAGS.main)):
        raise app.UsageError("give either --ref and --main (one pair) or --pairs CSV")
    try:
        predictor = Predictor.load(FLAGS.workdir, step=FLAGS.step, best=FLAGS.best,
                                   batch_size=FLAGS.batch_size)
        if single:
            pair = predictor.prepare(FLAGS.ref, FLAGS.main, FLAGS.question)
            answer = predictor.answer([pair])[0]
            print(answer.answer)
            if FLAGS.heatmap:
                saliency = predictor.explain([pair], [answer])[0]
                predictor.save_figure(FLAGS.heatmap, pair, answer, saliency,
                                      title=f"{Path(FLAGS.ref).name} -> {Path(FLAGS.main).name}")
            return
        rows = read_pairs_csv(FLAGS.pairs)
        output = FLAGS.output or str(Path(FLAGS.pairs).with_name("answers.jsonl"))
        answered, failed = predict_pairs(predictor, rows, output, FLAGS.heatmap_dir)
    except (ImageFileError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{answered} pairs answered, {failed} failed; wrote {output}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
