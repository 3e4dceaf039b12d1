"""What the commands run, above the factory (`real_jax.experiment`) and below the commands.

- `driver`: `train_and_evaluate(config, workdir)` and `evaluate_checkpoint` (`real_jax.main`).
- `dataset`: `ensure_dataset(config)`, the synthetic dataset generated and prepared on first use.
- `predictor`: answering new pairs of studies with a trained run (`real_jax.predict`).
- `export`: a workdir's checkpoint to a PyTorch folder (`real_jax.export`).
- `summary`: how a run went, for a person (`real_jax.summary`).

The library below (models, training, evaluation, distributed, interop) never imports these
(pyproject.toml, `[tool.importlinter]`).
"""
