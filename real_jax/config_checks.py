"""Checks a config against itself and the machine before anything is compiled or allocated.

Every problem found is reported at once, each naming the field, so an impossible run fails in
seconds with a message that says what to change. Fields that take one of a fixed set of names
are checked against the table of `real_jax.choices`; the rules between fields are here.
"""

from pathlib import Path

import ml_collections

from real_jax.choices import choice_problems
from real_jax.errors import UserError
from real_jax.models.real import prefix_length
from real_jax.models.resnet import ENCODERS, make_encoder


class ConfigError(UserError):
    """An impossible or inconsistent configuration."""


def config_problems(config: ml_collections.ConfigDict, device_count: int,
                    process_count: int = 1) -> list[str]:
    """All problems with `config` for a run on `device_count` devices (empty: fine)."""
    problems = choice_problems(config)
    model, train, data, gen = config.model, config.train, config.data, config.generation

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    check(not (model.blank_images and model.main_image_only),
          "model.blank_images and model.main_image_only are two different controls; set one")
    check(model.projector_width % 4 == 0 and model.projector_width % model.projector_heads == 0,
          f"model.projector_width={model.projector_width} must be a multiple of 4 and of "
          f"model.projector_heads={model.projector_heads}")
    check(model.decoder.n_embd % model.decoder.n_head == 0,
          f"model.decoder.n_embd={model.decoder.n_embd} not divisible by "
          f"model.decoder.n_head={model.decoder.n_head}")
    check(config.mesh.fsdp_min_size >= 1,
          f"mesh.fsdp_min_size={config.mesh.fsdp_min_size} must be at least 1")
    if model.encoder in ENCODERS:
        stride = make_encoder(model.encoder).stride
        check(data.image_size >= stride and data.image_size % stride == 0,
              f"data.image_size={data.image_size}: model.encoder={model.encoder!r} needs a "
              f"positive multiple of {stride}")
    for name in ("global_batch_size",):
        batch = train[name]
        check(batch > 0 and batch % device_count == 0,
              f"train.{name}={batch} is not divisible by the {device_count} data-parallel "
              "devices")
    check(config.eval.batch_size > 0 and config.eval.batch_size % device_count == 0,
          f"eval.batch_size={config.eval.batch_size} is not divisible by the {device_count} "
          "data-parallel devices")
    check(config.eval.meteor or "METEOR" not in (train.best_metric or ""),
          f"train.best_metric={train.best_metric!r} needs eval.meteor=True")
    accum = train.grad_accum_steps
    per_device = train.global_batch_size // max(device_count, 1)
    check(accum >= 1 and train.global_batch_size % accum == 0
          and (train.global_batch_size // max(accum, 1)) % device_count == 0,
          f"train.grad_accum_steps={accum}: each micro-batch (global_batch_size / "
          f"grad_accum_steps) must be a positive multiple of the {device_count} devices "
          f"({per_device} examples per device per step)")
    check(train.num_train_steps > 0 or train.num_epochs > 0,
          "set train.num_train_steps > 0 or train.num_epochs > 0")
    for name in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                 "keep_checkpoints"):
        check(train[name] >= 1, f"train.{name}={train[name]} must be >= 1")
    check(train.stop_check_every_steps >= 1,
          f"train.stop_check_every_steps={train.stop_check_every_steps} must be >= 1")
    check(data.max_bad_images >= 0, f"data.max_bad_images={data.max_bad_images} must be >= 0")
    check(data.prefetch_examples > 0,
          f"data.prefetch_examples={data.prefetch_examples} must be > 0")
    registration = model.registration
    check(registration.levels >= 1 and registration.steps >= 1
          and registration.learning_rate > 0 and registration.min_size >= 1,
          "model.registration needs levels >= 1, steps >= 1, learning_rate > 0 and "
          f"min_size >= 1 (got {registration.to_dict()})")
    check(gen.beam_size >= 1, f"generation.beam_size={gen.beam_size} must be >= 1")
    check(gen.answer_max_tokens >= 1,
          f"generation.answer_max_tokens={gen.answer_max_tokens} must be >= 1")
    check(data.question_max_tokens >= 1 and data.answer_max_tokens >= 2,
          "data.question_max_tokens must be >= 1 and data.answer_max_tokens >= 2 (answer + EOS)")
    prompt = prefix_length(model.variant, model.num_queries) + data.question_max_tokens
    longest = prompt + max(data.answer_max_tokens, gen.answer_max_tokens)
    check(longest <= model.decoder.n_positions,
          f"image tokens + question + answer = {longest} positions exceed "
          f"model.decoder.n_positions={model.decoder.n_positions}")
    pretrained = config.pretrained
    fetch = ("fetch the weights with `python -m real_jax.pretrained --out weights`, or set it "
             "to '' to train from scratch")
    if pretrained.resnet50:
        check(Path(pretrained.resnet50).is_file(),
              f"pretrained.resnet50={pretrained.resnet50!r} does not exist: {fetch}")
    if pretrained.gpt2_dir:
        check(Path(pretrained.gpt2_dir).is_dir(),
              f"pretrained.gpt2_dir={pretrained.gpt2_dir!r} is not a directory: {fetch}")
    if not data.synthetic_source:
        check((Path(data.dir) / "prepare.json").is_file(),
              f"data.dir={data.dir!r} is not a prepared dataset (no prepare.json); prepare it "
              "with `python -m data_pipeline.prepare` (docs/data.md)")
    elif process_count > 1:
        check((Path(data.dir) / "prepare.json").is_file(),
              "generate and prepare the synthetic dataset once before a multi-host run "
              f"(data.dir={data.dir!r} is missing)")
    return problems


def validate_config(config: ml_collections.ConfigDict, device_count: int,
                    process_count: int = 1) -> None:
    """Raises `ConfigError` listing every problem, before any compilation."""
    problems = config_problems(config, device_count, process_count)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
