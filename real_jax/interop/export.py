"""Export a trained ReAl (an Orbax checkpoint in a workdir) as a PyTorch folder.

Layout of OUT (all tensors in safetensors):

    config.json                      model structure, eos id, sizes, the training config, step,
                                     "registration": the `model.registration` fields
                                     (without `enabled`) when the model aligns ref to
                                     main (`model.registration.enabled`), else null
    image_encoder.safetensors        torchvision `resnet50` state_dict (without `fc`), or the
    residual_encoder.safetensors     same naming for `TorchResNet` (other encoders)
    image_projector.safetensors      `real_jax.interop.torch_model.TorchProjector` state_dicts
    residual_projector.safetensors
    gpt2/                            HF `GPT2LMHeadModel.save_pretrained` + tokenizer

`real_jax.interop.torch_model.TorchReAl.load(OUT)` rebuilds the model in PyTorch;
`real_jax.apps.export.export_checkpoint` (`python -m real_jax.export`) exports a workdir. The
checkpoint is restored without a target as host numpy arrays (nested dicts), so the export needs
neither the optimizer's structure nor the training run's device topology; only `params` and
`batch_stats` are used.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import torch
from safetensors.numpy import save_file
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from data_pipeline.tokenizer import EOS_TOKEN, Tokenizer
from real_jax.interop import torch_weights as tw
from real_jax.interop.torch_model import CONFIG_FILE, ENCODER_FILES, GPT2_DIR, PROJECTOR_FILES
from real_jax.models.registration import RegistrationConfig
from real_jax.models.resnet import make_encoder
from real_jax.training.checkpointing import Checkpointer, restore_newest

EXPORT_FORMAT = "real_jax.torch_export/1"


def restore_variables(workdir: str | Path, step: int | None = None
                      ) -> tuple[dict, dict, dict[str, Any], int]:
    """Reads `(params, batch_stats, config dict, step)` (numpy leaves) from a workdir.

    `step=None` takes the latest checkpoint in `workdir/checkpoints`.
    """
    directory = Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoints directory {directory}")
    # Read-only, and the latest step through `restore_newest`: the workdir may belong to a job
    # that is training and saving right now.
    checkpointer = Checkpointer(directory, keep=1, best_metric=None, read_only=True)
    try:
        if step is None:
            step, restored = restore_newest(
                checkpointer, lambda s: _restore_as_numpy(checkpointer.manager, directory, s))
        else:
            steps = checkpointer.all_steps()
            if step not in steps:
                raise FileNotFoundError(f"no checkpoint for step {step} in {directory} "
                                        f"(has {steps})")
            restored = _restore_as_numpy(checkpointer.manager, directory, step)
    finally:
        checkpointer.close()
    state = restored["state"]
    to_numpy = lambda tree: {k: to_numpy(v) if isinstance(v, Mapping) else np.asarray(v)
                             for k, v in tree.items()}
    return (to_numpy(state["params"]), to_numpy(state.get("batch_stats") or {}),
            dict(restored["config"]), int(step))


def _restore_as_numpy(manager: ocp.CheckpointManager, directory: Path, step: int) -> Any:
    """Step `step`'s state and config, every leaf a host numpy array: no target, no shardings,
    so a checkpoint written on any device topology restores here."""
    metadata = ocp.PyTreeCheckpointer().metadata(directory / str(step) / "state")
    tree = getattr(metadata, "item_metadata", metadata)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                getattr(tree, "tree", tree),
                                is_leaf=lambda x: not isinstance(x, (dict, list, tuple)))
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(restore_args=restore_args), config=ocp.args.JsonRestore()))


def _gpt2_config(model_config: Mapping[str, Any], vocab_size: int, eos_id: int) -> GPT2Config:
    """The same `GPT2Config` as `real_jax.models.gpt2_decoder.make_gpt2_config`."""
    d = model_config["decoder"]
    return GPT2Config(vocab_size=vocab_size, n_layer=d["n_layer"], n_embd=d["n_embd"],
                      n_head=d["n_head"], n_positions=d["n_positions"],
                      resid_pdrop=d["dropout"], embd_pdrop=d["dropout"], attn_pdrop=d["dropout"],
                      bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)


def hf_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """The pipeline's tokenizer as a HF fast tokenizer (EOS = pad = `<|endoftext|>`, left pad)."""
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, eos_token=EOS_TOKEN,
                                   bos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, padding_side="left")


def export_variables(params: Mapping[str, Any], batch_stats: Mapping[str, Any],
                     config: Mapping[str, Any], tokenizer: Tokenizer, out: str | Path,
                     step: int | None = None) -> Path:
    """Writes the PyTorch folder (module docstring) from Flax variables.

    Args:
      params, batch_stats: ReAl's variables (numpy or jax leaves, float32 written).
      config: the training config as a dict (`config.to_dict()` of a current config, or
        `configs.upgrade.restore_config` of a saved one).
      tokenizer: the pipeline's tokenizer; its vocabulary must be the decoder's.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_config = config["model"]
    vocab_size = int(np.shape(params["decoder"]["wte"]["embedding"])[0])
    if vocab_size != tokenizer.vocab_size:
        raise ValueError(f"decoder vocabulary {vocab_size} != tokenizer vocabulary "
                         f"{tokenizer.vocab_size}: wrong data.dir or pretrained.gpt2_dir?")
    encoder = make_encoder(model_config["encoder"])
    registration = {k: v for k, v in model_config["registration"].items() if k != "enabled"}
    registration = (RegistrationConfig(**registration)
                    if model_config["registration"]["enabled"] else None)
    for name, file in ENCODER_FILES.items():
        if name in params:
            save_file(tw.resnet_to_torch(params[name], batch_stats.get(name, {})),
                      str(out / file))
    for name, file in PROJECTOR_FILES.items():
        if name in params:
            save_file(tw.projector_to_torch(params[name]), str(out / file))

    decoder = GPT2LMHeadModel(_gpt2_config(model_config, vocab_size, tokenizer.eos_id))
    state_dict = {k: torch.from_numpy(v) for k, v in tw.gpt2_to_torch(params["decoder"]).items()}
    missing, unexpected = decoder.load_state_dict(state_dict, strict=False)
    if unexpected or [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]:
        raise ValueError(f"GPT-2 export mismatch: missing {missing}, unexpected {unexpected}")
    decoder.save_pretrained(out / GPT2_DIR, safe_serialization=True)
    hf_tokenizer(tokenizer).save_pretrained(out / GPT2_DIR)

    summary = {
        "format": EXPORT_FORMAT,
        "step": step,
        "variant": model_config["variant"],
        "residual_source": model_config.get("residual_source", "difference"),
        "encoder": {"name": model_config["encoder"], "stage_sizes": list(encoder.stage_sizes),
                    "num_filters": encoder.num_filters, "feature_dim": encoder.feature_dim},
        "num_queries": model_config["num_queries"],
        "projector": {"width": model_config["projector_width"],
                      "depth": model_config["projector_depth"],
                      "heads": model_config["projector_heads"]},
        "eos_id": tokenizer.eos_id,
        "vocab_size": vocab_size,
        "image_size": config["data"]["image_size"],
        "question_max_tokens": config["data"]["question_max_tokens"],
        "answer_max_tokens": config["generation"]["answer_max_tokens"],
        # TorchReAl registers ref onto main with these (real_jax.interop.torch_registration).
        "registration": dataclasses.asdict(registration) if registration else None,
        "training_config": config,
    }
    (out / CONFIG_FILE).write_text(json.dumps(summary, indent=1, default=str))
    return out


def import_export(out: str | Path, params: Mapping[str, Any], batch_stats: Mapping[str, Any]
                  ) -> tuple[dict, dict]:
    """Reads an exported folder back into Flax `(params, batch_stats)` (numpy), the inverse of
    `export_variables`. `params` / `batch_stats` give the tree structure and shapes (a model's
    variables or `jax.eval_shape` of its init); every leaf is replaced."""
    from safetensors.numpy import load_file

    out = Path(out)
    params, batch_stats = dict(params), dict(batch_stats)
    for name, file in ENCODER_FILES.items():
        if name in params:
            params[name], batch_stats[name] = tw.resnet_from_torch(
                load_file(str(out / file)), params[name], batch_stats.get(name, {}),
                source=str(out / file))
    for name, file in PROJECTOR_FILES.items():
        if name in params:
            params[name] = tw.projector_from_torch(load_file(str(out / file)), params[name],
                                                   source=str(out / file))
    weights = tw.gpt2_weights_file(out / GPT2_DIR)
    params["decoder"] = tw.gpt2_from_torch(tw.read_state_dict(weights), params["decoder"],
                                           source=str(weights))
    return params, batch_stats
