"""real_jax: ReAl (Residual Alignment) for medical Difference VQA in JAX/Flax.

Where each concept lives, from the top (the layers are checked: pyproject.toml,
`[tool.importlinter]`, tests/test_layers.py):

- Commands, each only parsing flags, all through `cli.run` (absl flags, one-line user errors,
  compilation cache, GPU compiler flags); `python -m real_jax` lists them: `main` (train /
  evaluate / predict a split), `predict` (new studies), `export` (to PyTorch), `summary` (how
  a run went), `pretrained` (fetch ResNet-50 and GPT-2), `bench`. `no_torch`, imported first by
  `main`, `predict` and `bench`, keeps transformers from loading PyTorch.
- `apps/`: what the commands run: `driver` (`train_and_evaluate`, `evaluate_checkpoint`,
  preemption), `dataset` (`ensure_dataset`: the synthetic dataset generated and prepared on
  first use), `predictor` (answering new studies), `export` (a workdir to a PyTorch folder),
  `summary`. `benchmark/` is the benchmark's (JAX beside PyTorch, whole step and part by part).
- `experiment`: the factory. `build_experiment(config)` builds the tokenizer, the model
  (`build_model(config.model, ...)`), optimizer and schedule, mesh, example batch and the
  abstract or sharded train state, and nothing else.
- `config_checks`: every cross-field rule, checked before anything compiles; `choices`: the
  one table of allowed values (checks, error messages and the configs' documentation read it).
- The library, which imports none of the above nor `configs`:
  `models/`: the Flax model. `real.ReAl` (encoders, projectors, GPT-2 decoder, the three
  ablation variants), `resnet`, `projector`, `gpt2_decoder`, `inputs` (pixels to encoder
  inputs), `registration` (aligning ref onto main inside the forward pass), `generation`
  (KV-cached greedy and beam search).
  `training/`: `state` (TrainState, sharded init), `step` (the one jitted train step), `losses`
  (L_gen, L_con), `optimizer`, `checkpointing` (Orbax state + grain iterator + config),
  `metric_writer`.
  `evaluation/`: `loop` (the `Evaluator`), `metrics` (pycocoevalcap, exact match), `figures`,
  `heatmap` and `saliency` (why an answer).
  `distributed/`: `sharding` (mesh, shardings, global batches), `runtime` (multi-host start-up).
  `interop/`: PyTorch on either side: `torch_weights` (torchvision and HF GPT-2 weights into
  the JAX parameters), `pretrained` (fetching those weights into `weights/`), `export` (a
  checkpoint out to PyTorch files), and `torch_model` (`TorchReAl`, the same model in PyTorch)
  with `torch_registration`, which never import jax.
- At the bottom, for everyone: `shared` (numpy-only constants both frameworks use: ImageNet
  mean/std, sine-cosine positions, registration transforms) and `errors` (`UserError`,
  `RunFailure`).

The data side is the sibling package `data_pipeline` (synthetic data, ingestion, grain
pipeline); the configs are `configs/real.py`, and `configs/upgrade.py` (`restore_config`) reads
configs saved by earlier versions; the design record is `docs/design.md`; experiments that run
many jobs (ablation, scaling, GPU check, chaos, soak, the paper-configuration rehearsal) are
scripts in `launch/`; the documentation is in `docs/`, performance figures in `BENCHMARKS.md`.
"""
