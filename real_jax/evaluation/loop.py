"""Evaluation loop: generate answers for a split, score them, write predictions, metrics, figure.

All processes generate (the batch is global); tokens, indices and validity are gathered to
every process, and process 0 decodes, scores with pycocoevalcap (`real_jax.evaluation`) and
writes `predictions.jsonl`, `metrics.json` and `examples.png` into the output directory.
"""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from data_pipeline.pipeline import load_records, make_eval_iterator
from real_jax.distributed import sharding as shd
from real_jax.evaluation import (
    FigureExample,
    Prediction,
    save_examples_figure,
    score_predictions,
    write_metrics_json,
    write_predictions_jsonl,
)
from real_jax.evaluation.metrics import metric_value
from real_jax.models.generation import strip_after_eos
from real_jax.models.registration import make_align_fn

GENERATION_KEYS = ("ref", "main", "question_ids", "question_mask", "index", "valid")


class Built(Protocol):
    """What the evaluator needs of a built experiment (`real_jax.experiment.Experiment`)."""

    config: Any
    tokenizer: Any
    mesh: jax.sharding.Mesh
    model: Any

    def generate_fn(self) -> Callable[[Mapping[str, Any], Mapping[str, jax.Array]], jax.Array]:
        ...


class Evaluator:
    """Generates and scores answers for one split; the jitted generator is built once."""

    def __init__(self, experiment: Built, split: str) -> None:
        self.config = experiment.config
        self.tokenizer = experiment.tokenizer
        self.mesh = experiment.mesh
        self.split = split
        self.records = load_records(self.config.data.dir, split)
        model = experiment.model
        # The figure shows the residual the model saw: of the registered reference, if any.
        self.register = (make_align_fn(model.registration) if model.registration is not None
                         else None)
        self.generate = experiment.generate_fn()

    def _iterator(self):
        return make_eval_iterator(self.config.data, self.tokenizer, split=self.split,
                                  batch_size=self.config.eval.batch_size,
                                  shard_index=jax.process_index(),
                                  shard_count=jax.process_count())

    def predictions(self, variables: Any) -> tuple[list[Prediction], dict[int, dict]]:
        """Answers for the split. Returns the predictions (in split order) and, on process 0, the
        images of the first few examples for the figure (`{index: {"ref", "main"}}`)."""
        predictions: list[Prediction] = []
        images: dict[int, dict] = {}
        num_figure = self.config.eval.num_figure_examples
        for local in self._iterator():
            batch = shd.make_global_batch(local, self.mesh, GENERATION_KEYS)
            tokens = self.generate(variables, batch)
            tokens, index, valid = (
                np.asarray(multihost_utils.process_allgather(x, tiled=True))
                for x in (tokens, batch["index"], batch["valid"])
            )
            for row, i in zip(strip_after_eos(tokens[valid], self.tokenizer.eos_id),
                              index[valid], strict=True):
                record = self.records[int(i)]
                predictions.append(Prediction(
                    index=int(i),
                    study_id=str(record["study_id"]),
                    ref_id=str(record["ref_id"]),
                    subject_id=str(record["subject_id"]),
                    question_type=str(record["question_type"]),
                    question=str(record["question"]),
                    reference=str(record["answer"]),
                    prediction=self.tokenizer.decode(row),
                ))
            for j in np.flatnonzero(local["valid"]):
                if len(images) < num_figure:
                    images[int(local["index"][j])] = {"ref": local["ref"][j],
                                                      "main": local["main"][j]}
        predictions.sort(key=lambda p: p.index)
        return predictions, images

    def evaluate(self, variables: Any, out_dir: str | Path, score: bool = True) -> dict[str, Any]:
        """Generates, then (process 0) writes predictions and, with `score`, metrics + figure.

        Returns the metrics (empty without `score`); on processes other than 0, only the
        metric named by `config.train.best_metric` is filled in, broadcast from process 0.
        """
        logging.info("evaluating the %s split into %s", self.split, out_dir)
        predictions, images = self.predictions(variables)
        metrics: dict[str, Any] = {}
        if jax.process_index() == 0:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_predictions_jsonl(out / "predictions.jsonl", predictions)
            if score:
                metrics = score_predictions(predictions, meteor=self.config.eval.meteor)
                metrics["num_examples"] = len(predictions)
                write_metrics_json(out / "metrics.json", metrics)
                by_index = {p.index: p for p in predictions}
                save_examples_figure(out / "examples.png", [
                    FigureExample(ref=self._figure_ref(img), main=img["main"],
                                  question=by_index[i].question,
                                  reference=by_index[i].reference,
                                  prediction=by_index[i].prediction,
                                  title=f"study {by_index[i].study_id} vs {by_index[i].ref_id}",
                                  registered=self.register is not None)
                    for i, img in sorted(images.items()) if i in by_index])
            logging.info("evaluated %d %s examples into %s", len(predictions), self.split, out)
        if score and jax.process_count() > 1:
            metrics = _share_best_metric(metrics, self.config.train.best_metric)
        return metrics

    def _figure_ref(self, images: dict[str, np.ndarray]) -> np.ndarray:
        if self.register is None:
            return images["ref"]
        return np.asarray(self.register(images["ref"][None], images["main"][None])[0])


def _share_best_metric(metrics: dict[str, Any], path: str) -> dict[str, Any]:
    """Process 0's value of the best-checkpoint metric, on every process."""
    value = np.float64(metric_value(metrics, path) if jax.process_index() == 0 else 0.0)
    value = float(multihost_utils.broadcast_one_to_all(value))
    if jax.process_index() == 0:
        return metrics
    shared: dict[str, Any] = {}
    node = shared
    keys = path.split("/")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return shared
