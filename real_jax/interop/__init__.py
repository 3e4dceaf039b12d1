"""PyTorch interop: pretrained torchvision / HF GPT-2 weights in, trained models out.

- `real_jax.interop.torch_weights`: weight mapping both ways and `load_pretrained` (numpy only).
- `real_jax.interop.export`: checkpoint -> PyTorch folder (`python -m real_jax.export`).
- `real_jax.interop.torch_model`: `TorchReAl`, the PyTorch model that loads that folder
  (torch, torchvision and transformers only; never imports jax).
- `real_jax.interop.torch_registration`: the registration of
  `real_jax/models/registration.py` in torch, applied by `TorchReAl` when the run was trained
  with `model.registration.enabled=True`.

Nothing is imported here, so `import real_jax.interop.torch_model` stays free of jax.
"""
