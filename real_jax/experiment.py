"""The experiment factory: everything a run needs, built from a config in one place.

    experiment = build_experiment(config)                  # tokenizer from config.data.dir
    state, shardings = experiment.init_state(jax.random.key(0))
    step = experiment.train_step(shardings)
    generate = experiment.generate_fn()

Training, evaluation, prediction, export, the benchmark and the tests all build their model,
optimizer, mesh, example batch and state here, so a run is described by its config alone:
`config.model` is the whole model (`build_model`), `config.optim` the optimizer, `config.mesh`
the layout, `config.generation` the decoding. Building is all it does: the commands prepare
the dataset first (`real_jax.apps.dataset.ensure_dataset`), and a config saved with a checkpoint
is upgraded by `configs.upgrade.restore_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import optax

from data_pipeline.pipeline import load_records, load_tokenizer
from data_pipeline.tokenizer import Tokenizer
from real_jax.config_checks import validate_config
from real_jax.distributed import sharding as shd
from real_jax.models import DTYPES, ReAl
from real_jax.models.generation import make_generate_fn
from real_jax.models.gpt2_decoder import make_gpt2_config
from real_jax.models.registration import RegistrationConfig
from real_jax.training.optimizer import make_optimizer
from real_jax.training.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    example_batch,
)
from real_jax.training.step import make_train_step


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int, eos_id: int) -> ReAl:
    """`config.model` -> `ReAl`, in one call: the module's fields are the config's fields, with
    the decoder's vocabulary from the tokenizer, the compute dtype by name, and registration
    present only when `model.registration.enabled`. Values are checked by `config_checks`."""
    fields = model_config.to_dict()
    decoder = fields.pop("decoder")
    registration = fields.pop("registration")
    enabled = registration.pop("enabled")
    return ReAl(
        **fields | {"dtype": DTYPES[fields["dtype"]]},
        decoder_config=make_gpt2_config(vocab_size=vocab_size, eos_token_id=eos_id, **decoder),
        registration=RegistrationConfig(**registration) if enabled else None,
    )


def generate_fn(model: ReAl, generation: ml_collections.ConfigDict,
                eos_id: int) -> Callable[[Mapping[str, Any], Mapping[str, jax.Array]], jax.Array]:
    """`config.generation` -> the jitted `generate(variables, batch) -> int32[B, T]`."""
    return make_generate_fn(model, method=generation.method,
                            max_new_tokens=generation.answer_max_tokens, eos_id=eos_id,
                            beam_size=generation.beam_size,
                            length_penalty=generation.length_penalty)


@dataclasses.dataclass
class Experiment:
    """Everything built from a config before the first step.

    `tokenizer` is None when the experiment was built for a bare vocabulary size (the
    benchmark's random batches); `eos_id` is always set.
    """

    config: ml_collections.ConfigDict
    tokenizer: Tokenizer | None
    eos_id: int
    model: ReAl
    mesh: jax.sharding.Mesh
    total_steps: int
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    input_shapes: dict[str, jax.ShapeDtypeStruct]

    def abstract_state(self) -> tuple[TrainState, Any]:
        """`(abstract_state, shardings)`: shapes and placement, nothing allocated (a restore
        target)."""
        return abstract_train_state(self.model, self.tx, self.input_shapes, self.mesh,
                                    self.fsdp_min_size)

    def init_state(self, rng: jax.Array) -> tuple[TrainState, Any]:
        """A fresh state, each array created directly in its sharded place."""
        return create_train_state(self.model, self.tx, rng, self.input_shapes, self.mesh,
                                  self.fsdp_min_size)

    @property
    def fsdp_min_size(self) -> int | None:
        """None for data parallelism; under `mesh.fsdp`, the size of the smallest array split."""
        mesh = self.config.mesh
        return mesh.fsdp_min_size if mesh.fsdp else None

    def train_step(self, shardings: Any) -> Callable[..., tuple[TrainState, dict]]:
        """The jitted, state-donating train step for this config (`training.step`)."""
        train = self.config.train
        return make_train_step(self.model, self.tx, self.config.loss, self.mesh, shardings,
                               schedule=self.schedule, grad_accum_steps=train.grad_accum_steps,
                               skip_nonfinite=train.nonfinite_policy == "skip")

    def generate_fn(self) -> Callable[[Mapping[str, Any], Mapping[str, jax.Array]], jax.Array]:
        return generate_fn(self.model, self.config.generation, self.eos_id)


def build_experiment(
    config: ml_collections.ConfigDict,
    *,
    tokenizer: Tokenizer | None = None,
    vocab_size: int | None = None,
    eos_id: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    batch_size: int | None = None,
    total_steps: int | None = None,
    check: bool = True,
) -> Experiment:
    """Builds the experiment that `config` describes.

    Args:
      config: a complete config (`configs/real.py`, or `configs.upgrade.restore_config` of a
        saved one).
      tokenizer: the run's tokenizer; by default loaded from `config.data.dir` (prepared
        beforehand: `real_jax.apps.dataset.ensure_dataset`) or `config.pretrained.gpt2_dir`.
      vocab_size, eos_id: instead of a tokenizer, a bare vocabulary (benchmarks, tests); EOS is
        its last id unless `eos_id` says otherwise.
      devices: the mesh's devices (default all, of every process).
      batch_size: the example batch's size (default `train.global_batch_size`).
      total_steps: the schedule's length (default from `train.num_train_steps`, or the epochs
        over the training split).
      check: validate the config against the devices first (`config_checks`).
    """
    devices = jax.devices() if devices is None else list(devices)
    if check:
        validate_config(config, len(devices), jax.process_count())
    if tokenizer is None and vocab_size is None:
        tokenizer = load_tokenizer(config.data.dir, config.pretrained.gpt2_dir or None)
    if tokenizer is not None:
        vocab_size, eos_id = tokenizer.vocab_size, tokenizer.eos_id
    elif eos_id is None:
        eos_id = vocab_size - 1
    model = build_model(config.model, vocab_size, eos_id)
    total_steps = total_steps or schedule_length(config)
    tx, schedule = make_optimizer(config.optim, total_steps)
    data = config.data
    input_shapes = example_batch(batch_size or config.train.global_batch_size, data.image_size,
                                 data.question_max_tokens, data.answer_max_tokens)
    return Experiment(config, tokenizer, eos_id, model, shd.make_mesh(devices), total_steps, tx,
                      schedule, input_shapes)


def schedule_length(config: ml_collections.ConfigDict) -> int:
    """Training steps: `train.num_train_steps`, else `num_epochs` over the training split."""
    train = config.train
    if train.num_train_steps > 0:
        return train.num_train_steps
    steps_per_epoch = count_examples(config, config.data.train_split) // train.global_batch_size
    return max(1, steps_per_epoch * train.num_epochs)


def count_examples(config: ml_collections.ConfigDict, split: str) -> int:
    """Records of `split` whose question type the config selects."""
    types = set(config.data.question_types)
    records = load_records(config.data.dir, split)
    return sum(1 for i in range(len(records))
               if not types or records[i]["question_type"] in types)


def run_tokenizer(workdir: str | Path, config: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer a run trained with: saved in its workdir at the start of training, else
    (runs that did not save one) the config's `data.dir` / `pretrained.gpt2_dir`."""
    saved = Path(workdir) / "tokenizer"
    if saved.is_dir():
        return Tokenizer.load(saved)
    return load_tokenizer(config.data.dir, config.pretrained.gpt2_dir or None)
