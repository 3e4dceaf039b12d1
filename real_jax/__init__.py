"""real_jax: ReAl (Residual Alignment) for medical Difference VQA in JAX/Flax.

Where each concept lives:

- `experiment`: the factory. `build_experiment(config)` builds the tokenizer, the model
  (`build_model(config.model, ...)`), optimizer and schedule, mesh, example batch and the
  abstract or sharded train state; train, evaluate, predict, export, bench and the tests use it.
  `restore_config` upgrades a config saved with a checkpoint.
- `config_checks`: every allowed value and cross-field rule, checked before anything compiles.
- `models/`: the Flax model. `real.ReAl` (encoders, projectors, GPT-2 decoder, the three
  ablation variants), `resnet`, `projector`, `gpt2_decoder`, `inputs` (pixels to encoder inputs),
  `registration` (aligning ref onto main inside the forward pass), `generation` (KV-cached
  greedy and beam search).
- `training/`: `state` (TrainState, sharded init), `step` (the one jitted train step), `losses`
  (L_gen, L_con), `optimizer`, `checkpointing` (Orbax state + grain iterator + config),
  `metric_writer`, `loop` (`train_and_evaluate`, `evaluate_checkpoint`, preemption).
- `evaluation/`: `loop` (the `Evaluator`), `metrics` (pycocoevalcap, exact match), `figures`,
  `heatmap` and `saliency` (why an answer), `predictor` (answering new studies), `summary` (how
  a run went: its scores beside the text-only prior, its outputs, the next commands).
- `distributed/`: `sharding` (mesh, shardings, global batches), `runtime` (multi-host start-up).
- `interop/`: PyTorch on either side: `torch_weights` (torchvision and HF GPT-2 weights into
  the JAX parameters), `pretrained` (fetching those weights into `weights/`), `export` (a
  checkpoint out to PyTorch files), and `torch_model` (`TorchReAl`, the same model in PyTorch)
  with `torch_registration`, which never import jax.
- `benchmark/`: the train-step and decoding benchmark, JAX beside PyTorch, whole step
  (`jax_side`, `torch_side`) and part by part (`components`).
- Command lines (`python -m real_jax.NAME`), each only parsing flags: `main` (train / evaluate
  / predict a split), `predict` (new studies, with heatmaps), `export` (to PyTorch),
  `pretrained` (fetch the ImageNet ResNet-50 and GPT-2 the paper config starts from), `summary`
  (how a run went; `make demo` ends with it), `bench` (the benchmark); what they share is `cli`
  (one-line errors, compilation cache, GPU compiler flags), and `no_torch`, imported first by
  `main` and `predict`, keeps transformers from loading PyTorch.

The data side is the sibling package `data_pipeline` (synthetic data, ingestion, grain
pipeline); the configs are in `configs/real.py`; experiments that run many jobs (ablation,
scaling, GPU check, chaos, soak) are scripts in `launch/`. The documentation is in `docs/` (the
design record is `docs/design.md`), performance figures in `BENCHMARKS.md`.
"""
