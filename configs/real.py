"""ReAl configurations: the paper's setup, its ablation rows, the synthetic demo, a test preset.

Train the paper config on a prepared MIMIC-Diff-VQA directory (README, "Workflows"; docs/data.md):

    python -m real_jax.main --config=configs/real.py --workdir=runs/real \
        --config.data.dir=data/mimic_diff_vqa

Presets are chosen after a colon:

    configs/real.py                   the paper config (full ReAl), MIMIC-Diff-VQA
    configs/real.py:baseline          ablation row 1: no residual branch
    configs/real.py:residual_input    ablation row 2: + residual input, no L_con
    configs/real.py:real              ablation row 3: + residual feature alignment (= paper)
    configs/real.py:synthetic         the demo: small model on the synthetic dataset, on a CPU
    configs/real.py:ablation          the demo's model on synthetic data whose difference answers
                                      need the reference (launch/ablation.py)
    configs/real.py:tiny              tiny model for tests
    configs/real.py:bench             the synthetic model at 128 px, batch 16 (real_jax.bench)

Any field can be overridden on the command line, e.g. `--config.model.variant=baseline`.
Hyper-parameters the paper does not give are ours (the dataset authors used Adam 1e-4, batch 64,
about 20 epochs) and are marked "ours" below.

Fields that take one of a fixed set of names, and the names they take (the table in
`real_jax/choices.py`, which `real_jax/config_checks.py` checks against):

"""

import ml_collections

from real_jax.choices import describe

__doc__ += describe() + "\n"

PRESETS = ("paper", "baseline", "residual_input", "real", "synthetic", "ablation", "tiny",
           "bench")


def get_config(preset: str = "paper") -> ml_collections.ConfigDict:
    preset = preset or "paper"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for configs/real.py; choose one of {PRESETS}")
    config = paper_config()
    if preset in ("baseline", "residual_input", "real"):
        config.model.variant = preset
    elif preset == "synthetic":
        apply_synthetic(config)
    elif preset == "ablation":
        apply_synthetic(config)
        apply_ablation(config)
    elif preset == "tiny":
        apply_synthetic(config)
        apply_tiny(config)
    elif preset == "bench":
        apply_synthetic(config)
        apply_bench(config)
    config.preset = preset
    return config


def paper_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.preset = "paper"
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.variant = "real"  # the paper's ablation rows (model docstring of real.py)
    config.model.encoder = "resnet50"
    config.model.num_queries = 32  # ours
    config.model.projector_width = 512  # ours
    config.model.projector_depth = 2  # ours
    config.model.projector_heads = 8  # ours
    config.model.projector_dropout = 0.1
    config.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
    config.model.blank_images = False  # control: zero images -> text-only prior
    config.model.main_image_only = False  # control: reference := main image (zero residual)
    # what the residual branch sees: difference (main - ref, the paper), or main (the main
    # image: the branch's capacity without the difference, a control; ours)
    config.model.residual_source = "difference"
    # where L_con compares features: encoder_output is the paper's (real_jax/models/real.py)
    config.model.alignment = "encoder_output"
    # Activation checkpointing (ours): the backward pass recomputes each ResNet bottleneck's and
    # GPT-2 block's activations from the block's input instead of keeping them. Same loss and
    # gradients; more FLOPs for less peak memory, measured in BENCHMARKS.md section 8
    # (launch/memory_table.py).
    config.model.remat = False
    config.model.registration = ml_collections.ConfigDict()
    # Align ref to main (a transform estimated in JAX inside the model's forward pass) before
    # the residual; ours, off as in the paper (docs/model.md, "Registration").
    config.model.registration.enabled = False
    config.model.registration.transform = "similarity"
    config.model.registration.levels = 3
    config.model.registration.steps = 20  # Adam steps per level
    config.model.registration.learning_rate = 0.02
    config.model.registration.min_size = 16
    config.model.decoder = ml_collections.ConfigDict()
    config.model.decoder.n_layer = 12  # GPT-2 124M
    config.model.decoder.n_embd = 768
    config.model.decoder.n_head = 12
    config.model.decoder.n_positions = 1024
    config.model.decoder.dropout = 0.1

    config.loss = ml_collections.ConfigDict()
    config.loss.consistency_weight = 1.0  # lambda
    config.loss.consistency_sign = "paper"  # the equation's f_ref - f_main (losses.py)
    config.loss.consistency_spatial = "pooled"
    config.loss.consistency_aggregate = "mean"
    config.loss.consistency_image_target = "detached"  # see losses.py

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"  # sgd: plain SGD, same schedule (equivalence tests)
    config.optim.learning_rate = 1e-4
    config.optim.warmup_steps = 1000  # ours
    config.optim.end_learning_rate_fraction = 0.01  # cosine decays to this fraction; ours
    config.optim.weight_decay = 0.01  # ours
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.grad_clip_norm = 1.0  # ours

    config.train = ml_collections.ConfigDict()
    config.train.global_batch_size = 64
    config.train.num_epochs = 20
    config.train.num_train_steps = -1  # > 0 overrides num_epochs
    config.train.grad_accum_steps = 1
    config.train.log_every_steps = 50
    config.train.eval_every_steps = 2000
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 3
    config.train.best_metric = "difference/CIDEr"
    config.train.nonfinite_policy = "stop"  # or skip the update (counted in the state)
    config.train.stop_after_steps = -1  # > 0: end this job at step K with a checkpoint (resumable)
    config.train.stop_check_every_steps = 10  # multi-host: agree on SIGTERM/SIGINT this often

    config.mesh = ml_collections.ConfigDict()
    config.mesh.fsdp = False  # shard parameters and optimizer state over the data devices
    # ours: under FSDP, arrays of fewer elements stay replicated (splitting them saves little
    # memory and costs a collective each)
    config.mesh.fsdp_min_size = 2**14

    config.data = ml_collections.ConfigDict()
    config.data.dir = "data/mimic_diff_vqa"
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.question_types = ("difference",)
    config.data.image_size = 512
    config.data.question_max_tokens = 32
    config.data.answer_max_tokens = 91  # 90 answer tokens + EOS
    config.data.num_workers = 8
    # training examples each iterator prepares ahead of the step: grain's default read-ahead
    config.data.prefetch_examples = 500
    config.data.jitter = True
    config.data.eval_limit = -1  # > 0: evaluate on the first N examples only
    # unreadable training records/images skipped, per data process (each grain worker, or the
    # host process without workers), counted over the run: the count is checkpointed
    config.data.max_bad_images = 100
    # When set, `data.dir` is prepared from a synthetic dataset generated into this directory if
    # either is absent (the demo); empty for real data, which `data_pipeline.prepare` prepares.
    config.data.synthetic_source = ""
    config.data.synthetic_subjects = 1000
    config.data.synthetic_image_size = 128  # generated image width
    config.data.synthetic_changes = "mixed"  # how findings evolve (data_pipeline/synthetic.py)

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 64  # global, like train.global_batch_size
    config.eval.num_figure_examples = 4
    # ours: False scores without METEOR, whose Java scorer loads its paraphrase tables in every
    # process that scores (its cost: docs/testing.md; the other scores need Java too).
    config.eval.meteor = True

    config.generation = ml_collections.ConfigDict()
    config.generation.method = "greedy"
    config.generation.beam_size = 4
    config.generation.length_penalty = 0.0  # GNMT alpha: logp / ((5 + len) / 6) ** alpha; ours
    config.generation.answer_max_tokens = 90

    config.pretrained = ml_collections.ConfigDict()
    # Ours: the paper does not say how its encoders and decoder are initialised; we start from
    # torchvision's ImageNet ResNet-50 (both encoders) and HF GPT-2, which `python -m
    # real_jax.pretrained --out weights` writes here. Empty: train from scratch.
    config.pretrained.resnet50 = "weights/resnet50_imagenet.safetensors"  # torchvision state_dict
    config.pretrained.gpt2_dir = "weights/gpt2"  # HF GPT-2 directory (weights + tokenizer)
    return config


def apply_synthetic(config: ml_collections.ConfigDict) -> None:
    """The CPU demo: a small model on the generated synthetic dataset (README, `make demo`)."""
    config.pretrained.resnet50 = ""  # small encoders and decoder, from scratch
    config.pretrained.gpt2_dir = ""
    config.data.dir = "runs/synthetic_data/prepared"
    config.data.synthetic_source = "runs/synthetic_data/raw"
    config.data.question_types = ("difference",)
    config.data.image_size = 96
    config.data.question_max_tokens = 24
    config.data.answer_max_tokens = 64
    config.generation.answer_max_tokens = 63
    config.data.num_workers = 0
    config.data.eval_limit = 256
    config.eval.batch_size = 64
    config.model.encoder = "resnet_tiny"
    config.model.num_queries = 8
    config.model.projector_width = 128
    config.model.projector_depth = 1
    config.model.projector_heads = 4
    config.model.dtype = "float32"
    config.model.decoder.n_layer = 2
    config.model.decoder.n_embd = 128
    config.model.decoder.n_head = 4
    config.model.decoder.n_positions = 256
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.train.global_batch_size = 32
    config.train.num_train_steps = 1500
    config.train.log_every_steps = 25
    config.train.eval_every_steps = 500
    config.train.checkpoint_every_steps = 250


def apply_ablation(config: ml_collections.ConfigDict) -> None:
    """`launch/ablation.py`'s preset: the demo's model, 500 steps, on synthetic studies whose
    findings persist and change level, so that a difference answer needs both images."""
    config.data.dir = "runs/synthetic_persistent/prepared"
    config.data.synthetic_source = "runs/synthetic_persistent/raw"
    config.data.synthetic_changes = "persistent"
    config.train.num_train_steps = 500
    config.train.eval_every_steps = 500


def apply_tiny(config: ml_collections.ConfigDict) -> None:
    """Smallest model that still has every part; for tests."""
    config.data.image_size = 64
    config.data.question_max_tokens = 16
    config.data.answer_max_tokens = 32
    config.data.eval_limit = 16
    config.data.prefetch_examples = 16  # ours: two batches; its runs last a few steps
    config.eval.batch_size = 8
    config.eval.num_figure_examples = 2
    config.generation.answer_max_tokens = 24
    config.model.encoder = "resnet_micro"  # two stages: compiles faster (docs/testing.md)
    config.mesh.fsdp_min_size = 2**10  # its largest arrays have 4096 elements
    config.model.num_queries = 4
    config.model.projector_width = 32
    config.model.projector_heads = 2
    config.model.decoder.n_layer = 1
    config.model.decoder.n_embd = 32
    config.model.decoder.n_head = 2
    config.model.decoder.n_positions = 128
    config.train.global_batch_size = 8
    config.train.num_train_steps = 4
    config.train.log_every_steps = 1
    config.train.eval_every_steps = 4
    config.train.checkpoint_every_steps = 2
    config.optim.warmup_steps = 2


def apply_bench(config: ml_collections.ConfigDict) -> None:
    """`python -m real_jax.bench` on a CPU: the synthetic demo's model at 128 px, batch 16."""
    config.data.image_size = 128
    config.train.global_batch_size = 16
