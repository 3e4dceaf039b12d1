"""PyTorch <-> Flax weight mapping for ReAl's encoders, projectors and GPT-2 decoder (numpy only).

Import: torchvision ResNet state_dicts (`.pth` / `.safetensors`) and HF GPT-2 directories
(`save_pretrained` layout) become the Flax parameter trees of `real_jax/models`; export maps
them back. Every conversion is driven by the Flax tree (the target when importing), so a missing
key, an unexpected key or a shape mismatch is reported by name with both shapes.

This module imports neither jax nor torch at import time: safetensors files are read with
`safetensors.numpy`; `.pth` / `pytorch_model.bin` files need torch and are read with
`torch.load(..., weights_only=True)` (no arbitrary pickles).

Conventions (torch key <- Flax path):
  ResNet   `conv1.weight [O,I,H,W]`  <- `conv1/kernel [H,W,I,O]`;  `bn1.weight/bias` <- params
           `bn1/scale,bias`; `bn1.running_mean/var` <- batch_stats `bn1/mean,var`;
           `layer{s}.{b}.conv{k}` <- `layer{s}_{b}/conv{k}`; `.downsample.0/.1` <-
           `downsample_conv` / `downsample_bn`. `fc.*` and `num_batches_tracked` are ignored.
  GPT-2    `wte.weight` <- `wte/embedding`; `h.{i}.ln_1.weight` <- `h/{i}/ln_1/scale`;
           Conv1D `h.{i}.attn.c_attn.weight [in,out]` <- FlaxConv1D `kernel [out,in]`
           (HF's FlaxConv1D stores the transpose of PyTorch's Conv1D). `attn.bias` /
           `attn.masked_bias` buffers and the tied `lm_head.weight` are ignored on import.
  Projector `input_proj.weight [out,in]` <- Dense `kernel [in,out]`; attention
           `{query,key,value}.weight [H*Dh, in]` <- `kernel [in,H,Dh]`, `out.weight [out,H*Dh]`
           <- `kernel [H,Dh,out]`; `layers.{i}.*` <- `layer_{i}/*`; `queries` as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

Tree = Mapping[str, Any]
StateDict = dict[str, np.ndarray]

RESNET_IGNORED = re.compile(r"^fc\.|num_batches_tracked$")
GPT2_IGNORED = re.compile(r"(^|\.)attn\.(bias|masked_bias)$|^lm_head\.weight$")
GPT2_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")


class WeightMappingError(ValueError):
    """A checkpoint does not fit the model: missing / unexpected key or shape mismatch."""


# ----------------------------------------------------------------------------- reading files


def _torch_load(path: Path) -> StateDict:
    import torch  # only for PyTorch pickles; safetensors never need it.

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses arbitrary objects; say so.
        raise WeightMappingError(
            f"{path}: torch.load(weights_only=True) failed ({type(e).__name__}: {e}); the file "
            "must hold a plain state_dict of tensors") from e
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(
            loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise WeightMappingError(f"{path}: expected a state_dict, got {type(loaded).__name__}")
    out = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise WeightMappingError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                                     "not a tensor")
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype != torch.float64:
            value = value.float()  # bf16 has no numpy dtype; fp16 -> fp32 is exact.
        out[key] = value.numpy()
    return out


def _safetensors_load(path: Path) -> StateDict:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except TypeError as e:  # bfloat16 files: numpy has no bf16, go through torch.
        try:
            from safetensors.torch import load_file as torch_load_file
        except ImportError:
            raise WeightMappingError(f"{path}: {e}; reading this dtype needs torch") from e
        return {k: v.float().numpy() for k, v in torch_load_file(str(path)).items()}


def read_state_dict(path: str | Path) -> StateDict:
    """A state_dict file (`.safetensors`, or a PyTorch `.pth` / `.pt` / `.bin`) -> numpy arrays.

    A `.safetensors.index.json` / `.bin.index.json` (sharded HF weights) reads every shard.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.name.endswith(".index.json"):
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        merged: StateDict = {}
        for shard in shards:
            merged.update(read_state_dict(path.parent / shard))
        return merged
    if path.suffix == ".safetensors":
        return _safetensors_load(path)
    return _torch_load(path)


def gpt2_weights_file(directory: str | Path) -> Path:
    """The weights file of a HF `save_pretrained` directory (safetensors preferred)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"GPT-2 directory {directory} does not exist")
    for name in GPT2_WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no GPT-2 weights in {directory} (looked for {GPT2_WEIGHT_FILES})")


# ----------------------------------------------------------------------------- tree helpers


def flatten(tree: Tree, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested mapping -> `{path tuple: leaf}`."""
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix + (str(key),)))
        else:
            flat[prefix + (str(key),)] = value
    return flat


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """`{path tuple: leaf}` -> nested dicts."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in (x.shape if hasattr(x, "shape") else np.shape(x)))


def _reshape_to(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`x` in `shape` when the sizes agree; else unchanged, so the shape check reports it."""
    return x.reshape(shape) if x.size == int(np.prod(shape)) else x


# A converter maps one Flax leaf path to (torch key, Flax->torch fn, torch->Flax fn(array, shape)).
Converter = Callable[[tuple[str, ...]], tuple[str, Callable, Callable]]


def _to_torch(flat: Mapping[tuple[str, ...], Any], convert: Converter) -> StateDict:
    out: StateDict = {}
    for path, value in flat.items():
        key, forward, _ = convert(path)
        out[key] = np.ascontiguousarray(forward(np.asarray(value, np.float32)))
    return out


def _from_torch(state_dict: Mapping[str, np.ndarray], target: Mapping[tuple[str, ...], Any],
                convert: Converter, source: str, prefix: str = "",
                ignored: re.Pattern | None = None) -> dict[tuple[str, ...], np.ndarray]:
    """Fills every leaf of `target` (a flat Flax tree) from `state_dict`, strictly."""
    out: dict[tuple[str, ...], np.ndarray] = {}
    used: set[str] = set()
    for path, leaf in target.items():
        key, _, backward = convert(path)
        key = prefix + key
        if key not in state_dict:
            raise WeightMappingError(
                f"{source}: missing key {key!r} (for Flax parameter {'/'.join(path)}, "
                f"shape {_shape(leaf)})")
        value = backward(np.asarray(state_dict[key]), _shape(leaf))
        if _shape(value) != _shape(leaf):
            raise WeightMappingError(
                f"{source}: shape mismatch for {key!r}: checkpoint has "
                f"{tuple(np.shape(state_dict[key]))} (-> Flax {_shape(value)}), the model "
                f"expects Flax {'/'.join(path)} of shape {_shape(leaf)}")
        out[path] = value.astype(getattr(leaf, "dtype", np.float32))
        used.add(key)
    unexpected = sorted(k for k in state_dict if k.startswith(prefix) and k not in used
                        and not (ignored and ignored.search(k[len(prefix):])))
    if unexpected:
        raise WeightMappingError(f"{source}: unexpected keys the model has no place for "
                                 f"(architecture mismatch?): {unexpected[:8]}"
                                 + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8
                                    else ""))
    return out


def _same(x: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    return x


def _transpose(x: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    return x.T


# ----------------------------------------------------------------------------- ResNet


def _resnet_key(path: tuple[str, ...]) -> tuple[str, Callable, Callable]:
    *modules, leaf = path
    names = []
    for m in modules:
        match = re.fullmatch(r"layer(\d+)_(\d+)", m)
        if match:
            names.append(f"layer{match[1]}.{match[2]}")
        else:
            names.append({"downsample_conv": "downsample.0",
                          "downsample_bn": "downsample.1"}.get(m, m))
    if leaf == "kernel":  # [H,W,I,O] <-> [O,I,H,W]
        return (".".join(names + ["weight"]), lambda x: x.transpose(3, 2, 0, 1),
                lambda x, s=None: x.transpose(2, 3, 1, 0) if x.ndim == 4 else x)
    torch_leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}[leaf]
    return ".".join(names + [torch_leaf]), _same, _same


def resnet_to_torch(params: Tree, batch_stats: Tree) -> StateDict:
    """One encoder's Flax `params` + `batch_stats` -> torchvision-named state_dict (no `fc`)."""
    return _to_torch({**flatten(params), **flatten(batch_stats)}, _resnet_key)


def resnet_from_torch(state_dict: Mapping[str, np.ndarray], params: Tree, batch_stats: Tree,
                      source: str = "resnet state_dict") -> tuple[dict, dict]:
    """torchvision state_dict -> (params, batch_stats) shaped like the given encoder trees.

    `fc.*` and `num_batches_tracked` are ignored; anything else must match exactly.
    """
    flat_params, flat_stats = flatten(params), flatten(batch_stats)
    filled = _from_torch(state_dict, {**flat_params, **flat_stats}, _resnet_key, source,
                         ignored=RESNET_IGNORED)
    return (unflatten({p: filled[p] for p in flat_params}),
            unflatten({p: filled[p] for p in flat_stats}))


# ----------------------------------------------------------------------------- GPT-2

GPT2_TORCH_PREFIX = "transformer."


def _gpt2_key(path: tuple[str, ...]) -> tuple[str, Callable, Callable]:
    *modules, leaf = path
    if leaf == "embedding":
        return ".".join(modules + ["weight"]), _same, _same
    if leaf == "kernel":  # FlaxConv1D [out, in] <-> PyTorch Conv1D [in, out]
        return ".".join(modules + ["weight"]), _transpose, _transpose
    return ".".join(modules + [{"scale": "weight", "bias": "bias"}[leaf]]), _same, _same


def gpt2_to_torch(params: Tree) -> StateDict:
    """Decoder params -> `GPT2LMHeadModel` state_dict (`transformer.*` and the tied `lm_head`)."""
    out = {GPT2_TORCH_PREFIX + k: v for k, v in _to_torch(flatten(params), _gpt2_key).items()}
    out["lm_head.weight"] = out[GPT2_TORCH_PREFIX + "wte.weight"].copy()
    return out


def gpt2_from_torch(state_dict: Mapping[str, np.ndarray], params: Tree,
                    source: str = "GPT-2 state_dict") -> dict:
    """HF GPT-2 state_dict (`GPT2Model` or `GPT2LMHeadModel` keys) -> decoder params."""
    prefix = GPT2_TORCH_PREFIX if GPT2_TORCH_PREFIX + "wte.weight" in state_dict else ""
    wte = state_dict.get(prefix + "wte.weight")
    ours = flatten(params).get(("wte", "embedding"))
    if wte is not None and ours is not None and _shape(wte)[0] != _shape(ours)[0]:
        raise WeightMappingError(
            f"{source}: GPT-2 vocabulary has {_shape(wte)[0]} tokens but the decoder has "
            f"{_shape(ours)[0]} (wte {_shape(wte)} vs {_shape(ours)}); use the GPT-2 "
            "tokenizer (config.pretrained.gpt2_dir) so the vocabularies agree")
    return unflatten(_from_torch(state_dict, flatten(params), _gpt2_key, source, prefix,
                                 GPT2_IGNORED))


# ----------------------------------------------------------------------------- projector


def _projector_key(path: tuple[str, ...]) -> tuple[str, Callable, Callable]:
    *modules, leaf = path
    names = [f"layers.{m[len('layer_'):]}" if re.fullmatch(r"layer_\d+", m) else m
             for m in modules]
    if leaf == "queries":
        return "queries", _same, _same
    key = ".".join(names + [{"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]])
    in_attention = len(modules) >= 2 and modules[-2].endswith("_attention")
    if in_attention and modules[-1] in ("query", "key", "value"):
        if leaf == "kernel":  # [in, H, Dh] <-> [H*Dh, in]
            return key, lambda x: x.reshape(x.shape[0], -1).T, lambda x, s: _reshape_to(x.T, s)
        return key, lambda x: x.reshape(-1), _reshape_to  # bias [H, Dh] <-> [H*Dh]
    if in_attention and modules[-1] == "out" and leaf == "kernel":  # [H, Dh, out] <-> [out, H*Dh]
        return key, lambda x: x.reshape(-1, x.shape[-1]).T, lambda x, s: _reshape_to(x.T, s)
    if leaf == "kernel":
        return key, _transpose, _transpose
    return key, _same, _same


def projector_to_torch(params: Tree) -> StateDict:
    """Projector params -> state_dict of `real_jax.interop.torch_model.TorchProjector`."""
    return _to_torch(flatten(params), _projector_key)


def projector_from_torch(state_dict: Mapping[str, np.ndarray], params: Tree,
                         source: str = "projector state_dict") -> dict:
    """`TorchProjector` state_dict -> projector params shaped like `params`."""
    return unflatten(_from_torch(state_dict, flatten(params), _projector_key, source))


# ----------------------------------------------------------------------------- pretrained


def load_pretrained(params: Tree, batch_stats: Tree, pretrained: Any) -> tuple[dict, dict]:
    """Fills the encoders from `pretrained.resnet50` and the decoder from `pretrained.gpt2_dir`.

    Args:
      params, batch_stats: the model's variables (jax or numpy leaves), e.g. a fresh train
        state's. Leaves that are not loaded are returned unchanged (the projectors).
      pretrained: `config.pretrained` (fields `resnet50`, `gpt2_dir`; empty string = skip).
    Returns:
      host-side `(params, batch_stats)` with numpy leaves for the loaded parts; re-shard with
      `jax.device_put(tree, state_shardings)`.
    Raises:
      WeightMappingError naming the key and both shapes; FileNotFoundError.
    """
    params, batch_stats = dict(params), dict(batch_stats)
    resnet_file = getattr(pretrained, "resnet50", "") or ""
    gpt2_dir = getattr(pretrained, "gpt2_dir", "") or ""
    if resnet_file:
        state_dict = read_state_dict(resnet_file)
        for name in ("image_encoder", "residual_encoder"):
            if name in params:
                params[name], batch_stats[name] = resnet_from_torch(
                    state_dict, params[name], batch_stats.get(name, {}),
                    source=f"{resnet_file} -> {name}")
    if gpt2_dir:
        weights = gpt2_weights_file(gpt2_dir)
        params["decoder"] = gpt2_from_torch(read_state_dict(weights), params["decoder"],
                                            source=str(weights))
    return params, batch_stats
