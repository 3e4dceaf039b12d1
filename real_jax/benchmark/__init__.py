"""Benchmarks of the train step and of decoding (`python -m real_jax.bench`).

- `timing`: timing, memory, XLA FLOP counts, the measured matmul peak, random batches.
- `jax_side`: the JAX train step and decoding of the config's model on all devices.
- `torch_side`: the same model and train step in PyTorch (`real_jax.interop.torch_model`).
- `report`: the whole run, JAX beside PyTorch, as JSON and a markdown row.
"""
