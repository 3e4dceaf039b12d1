"""The evaluation loop on a limit that is not a multiple of the evaluation batch: the last batch
is padded (valid=False rows), and the predictions are exactly the selected records, once each."""

from pathlib import Path

import jax
import numpy as np

from configs.real import get_config
from data_pipeline.pipeline import load_records
from real_jax.evaluation.loop import Evaluator
from real_jax.experiment import build_experiment

EVAL_BATCH, LIMIT = 8, 11  # two batches, the second with 5 padding rows


def test_eval_limit_not_a_multiple_of_the_batch_predicts_each_selected_record_once(
        tiny_data: tuple[Path, list[str]]):
    data_dir, _ = tiny_data
    config = get_config("tiny")
    config.data.dir = str(data_dir)
    config.data.synthetic_source = ""
    config.data.eval_limit = LIMIT
    config.eval.batch_size = EVAL_BATCH
    config.generation.answer_max_tokens = 2  # the answers' text is not what is checked
    experiment = build_experiment(config)
    split = config.data.train_split  # the tiny dataset's largest split
    records = load_records(data_dir, split)
    selected = [i for i in range(len(records))
                if records[i]["question_type"] in config.data.question_types][:LIMIT]
    assert len(selected) == LIMIT and LIMIT % EVAL_BATCH  # the fixture has enough records

    evaluator = Evaluator(experiment, split)
    state, _ = experiment.init_state(jax.random.key(0))
    predictions, _ = evaluator.predictions({"params": state.params,
                                            "batch_stats": state.batch_stats})
    assert [p.index for p in predictions] == selected
    for p in predictions:
        record = records[p.index]
        assert (p.study_id, p.ref_id, p.question, p.reference) == (
            str(record["study_id"]), str(record["ref_id"]), str(record["question"]),
            str(record["answer"]))
    assert np.all([isinstance(p.prediction, str) for p in predictions])
