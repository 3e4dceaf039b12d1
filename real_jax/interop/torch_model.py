"""ReAl in PyTorch (torchvision + transformers only, no jax): loads a `real_jax.export` folder.

It reproduces the JAX model of `real_jax/models` operation by operation, in eval mode:
uint8 grayscale -> ImageNet-normalised 3-channel images (the residual `(main - ref) / 255` is
divided by the std only), ResNet trunks (BatchNorm eps 1e-5, running statistics), query
projectors (pre-LN, LayerNorm eps 1e-6 as in Flax, tanh-GELU as Flax's `nn.gelu`), and GPT-2 over
`[residual | ref | main | question (left-padded) | answer]` with position ids
`max(cumsum(mask) - 1, 0)`. Greedy decoding matches `real_jax.models.generation.greedy_search`.
A model trained with `model.registration.enabled=True` first aligns ref to main, as the JAX model
does (`torch_registration`, from config.json's `"registration"`).

    model = TorchReAl.load("exported")            # folder written by `python -m real_jax.export`
    answers = model.answer(ref, main, ["what has changed compared to the reference image?"])

`ref`, `main`: `uint8[B, S, S]` tensors or arrays (S a multiple of 32).

Nothing here imports jax. transformers itself does, whenever flax is installed (its
`image_transforms` module); on a PyTorch-only host that cannot happen, and in the JAX training
environment `USE_FLAX=0` keeps transformers from loading it (tests/interop checks both).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import Bottleneck
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from real_jax.interop.torch_registration import register
from real_jax.shared import IMAGENET_MEAN, IMAGENET_STD, sincos_2d_positions

RESNET50_STAGES = (3, 4, 6, 3)
FLAX_LAYER_NORM_EPS = 1e-6
CONFIG_FILE = "config.json"
GPT2_DIR = "gpt2"
ENCODER_FILES = {"image_encoder": "image_encoder.safetensors",
                 "residual_encoder": "residual_encoder.safetensors"}
PROJECTOR_FILES = {"image_projector": "image_projector.safetensors",
                   "residual_projector": "residual_projector.safetensors"}


# ----------------------------------------------------------------------------- ResNet


class TorchResNet(nn.Module):
    """torchvision's ResNet trunk (bottleneck v1.5) with a configurable base width.

    torchvision's `ResNet` fixes the stem at 64 channels; this builds the same modules under the
    same names (`conv1`, `bn1`, `layer{s}.{b}.conv{k}`, `.downsample.0/1`) for any
    `stage_sizes` and `num_filters`, without `fc`. `forward`: `float[B, 3, H, W]` ->
    `float[B, C, H/r, W/r]`, r = 2**(stages+1), C = num_filters * 2**(stages-1) * 4.
    """

    def __init__(self, stage_sizes: Sequence[int], num_filters: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, num_filters, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = num_filters
        for stage, blocks in enumerate(stage_sizes):
            planes, stride = num_filters * 2**stage, 1 if stage == 0 else 2
            layers = []
            for block in range(blocks):
                downsample = None
                if block == 0:  # the JAX model projects the shortcut of every first block
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes * 4))
                layers.append(Bottleneck(inplanes, planes, stride if block == 0 else 1,
                                         downsample))
                inplanes = planes * 4
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.num_stages = len(stage_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resnet_features(self, x)


def resnet_features(resnet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map of a torchvision-layout ResNet: `[B, 3, H, W]` -> `[B, C, h, w]`."""
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    stage = 1
    while hasattr(resnet, f"layer{stage}"):
        x = getattr(resnet, f"layer{stage}")(x)
        stage += 1
    return x


def build_resnet(stage_sizes: Sequence[int], num_filters: int) -> nn.Module:
    """`torchvision.models.resnet50` (its `fc` replaced by Identity, so the state_dict has no
    `fc.*`) for the ResNet-50 layout, else a `TorchResNet` with the same naming."""
    if tuple(stage_sizes) == RESNET50_STAGES and num_filters == 64:
        model = torchvision.models.resnet50(weights=None)
        model.fc = nn.Identity()
        return model
    return TorchResNet(stage_sizes, num_filters)


# ----------------------------------------------------------------------------- projector


class Attention(nn.Module):
    """Flax `nn.MultiHeadDotProductAttention` (no mask, eval): per-head q/k/v, scaled softmax."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """`q: [B, Nq, W]`, `kv: [B, Nk, W]` -> `[B, Nq, W]`."""
        split = lambda x: x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, H, N, Dh]
        query, key, value = split(self.query(q)), split(self.key(kv)), split(self.value(kv))
        query = query / math.sqrt(query.shape[-1])
        weights = torch.softmax(query @ key.transpose(-1, -2), dim=-1)
        return self.out((weights @ value).transpose(1, 2).flatten(2))


class ProjectorLayer(nn.Module):
    """Pre-LN: self-attention, cross-attention to the memory, tanh-GELU MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        ln = lambda: nn.LayerNorm(width, eps=FLAX_LAYER_NORM_EPS)
        self.ln_self, self.ln_cross, self.ln_mlp = ln(), ln(), ln()
        self.self_attention = Attention(width, num_heads)
        self.cross_attention = Attention(width, num_heads)
        self.mlp_in = nn.Linear(width, width * mlp_ratio)
        self.mlp_out = nn.Linear(width * mlp_ratio, width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        y = self.ln_self(x)
        x = x + self.self_attention(y, y)
        x = x + self.cross_attention(self.ln_cross(x), memory)
        return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))


class TorchProjector(nn.Module):
    """Features `float[B, C, h, w]` (NCHW) -> tokens `float[B, num_queries, out_dim]`."""

    def __init__(self, in_dim: int, num_queries: int, width: int, depth: int, num_heads: int,
                 out_dim: int) -> None:
        super().__init__()
        self.width = width
        self.input_proj = nn.Linear(in_dim, width)
        self.ln_memory = nn.LayerNorm(width, eps=FLAX_LAYER_NORM_EPS)
        self.queries = nn.Parameter(torch.zeros(num_queries, width))
        self.layers = nn.ModuleList(ProjectorLayer(width, num_heads) for _ in range(depth))
        self.ln_out = nn.LayerNorm(width, eps=FLAX_LAYER_NORM_EPS)
        self.output_proj = nn.Linear(width, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = features.shape
        memory = self.input_proj(features.permute(0, 2, 3, 1).reshape(batch, height * width, -1))
        positions = torch.from_numpy(sincos_2d_positions(height, width, self.width))
        memory = self.ln_memory(memory + positions.to(memory))
        x = self.queries.expand(batch, -1, -1)
        for layer in self.layers:
            x = layer(x, memory)
        return self.output_proj(self.ln_out(x))


# ----------------------------------------------------------------------------- ReAl


def _as_tensor(x: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=dtype)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """`int[B, T]` -> `max(cumsum(mask) - 1, 0)`, as in the JAX model."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


class TorchReAl(nn.Module):
    """ReAl for inference. Build with `TorchReAl.load(export_dir)`."""

    def __init__(self, config: dict[str, Any], decoder: GPT2LMHeadModel,
                 tokenizer: PreTrainedTokenizerFast | None = None) -> None:
        super().__init__()
        self.config = config
        self.has_residual_branch = config["variant"] != "baseline"
        enc, proj = config["encoder"], config["projector"]
        make_projector = lambda: TorchProjector(enc["feature_dim"], config["num_queries"],
                                                proj["width"], proj["depth"], proj["heads"],
                                                decoder.config.n_embd)
        self.image_encoder = build_resnet(enc["stage_sizes"], enc["num_filters"])
        self.image_projector = make_projector()
        if self.has_residual_branch:
            self.residual_encoder = build_resnet(enc["stage_sizes"], enc["num_filters"])
            self.residual_projector = make_projector()
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.eos_id = int(config["eos_id"])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    @classmethod
    def load(cls, directory: str | Path, *, with_tokenizer: bool = True) -> TorchReAl:
        """Loads a folder written by `python -m real_jax.export`; returns the model in eval mode."""
        directory = Path(directory)
        config = json.loads((directory / CONFIG_FILE).read_text())
        decoder = GPT2LMHeadModel.from_pretrained(directory / GPT2_DIR, local_files_only=True)
        tokenizer = None
        if with_tokenizer:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(directory / GPT2_DIR,
                                                                local_files_only=True)
        model = cls(config, decoder, tokenizer)
        parts = {**ENCODER_FILES, **PROJECTOR_FILES}
        for name, file in parts.items():
            if hasattr(model, name):
                getattr(model, name).load_state_dict(load_file(str(directory / file)))
        return model.eval()

    @property
    def device(self) -> torch.device:
        """Where the weights are (`model.to("cuda")` moves them); inputs are moved there."""
        return self.mean.device

    def encode(self, ref: Any, main: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`uint8[B, S, S]` x2 -> prefix `float[B, P, D]` and features `{name: [B, C, h, w]}`.

        With a `"registration"` config (models trained with `model.registration.enabled`), `ref`
        is first aligned to `main` (`torch_registration.register`), for both its encoder and the
        residual.
        """
        ref = _as_tensor(ref, torch.float32, self.device)
        main = _as_tensor(main, torch.float32, self.device)
        if self.config.get("registration"):
            ref, _ = register(ref, main, self.config["registration"])
        ref, main = ref / 255.0, main / 255.0
        gray3 = lambda x: x[:, None].expand(-1, 3, -1, -1)
        pair = (gray3(torch.cat([ref, main])) - self.mean) / self.std
        image_features = resnet_features(self.image_encoder, pair)
        tokens = self.image_projector(image_features)
        batch = ref.shape[0]
        features = {"ref": image_features[:batch], "main": image_features[batch:]}
        groups = [tokens[:batch], tokens[batch:]]
        if self.has_residual_branch:
            if self.config.get("residual_source", "difference") == "main":
                residual = (gray3(main) - self.mean) / self.std  # the same-capacity control
            else:
                residual = gray3(main - ref) / self.std
            features["residual"] = resnet_features(self.residual_encoder, residual)
            groups.insert(0, self.residual_projector(features["residual"]))
        return torch.cat(groups, dim=1), features

    def prompt(self, ref: Any, main: Any, question_ids: Any,
               question_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """`[prefix | question]` embeddings `float[B, P+Lq, D]` and mask `int64[B, P+Lq]`."""
        prefix, _ = self.encode(ref, main)
        question_ids = _as_tensor(question_ids, torch.long, self.device)
        embeds = torch.cat([prefix, self.decoder.transformer.wte(question_ids)], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=self.device),
                          _as_tensor(question_mask, torch.long, self.device)], dim=1)
        return embeds, mask

    @torch.no_grad()
    def forward(self, ref: Any, main: Any, question_ids: Any, question_mask: Any,
                answer_ids: Any, answer_mask: Any) -> torch.Tensor:
        """Teacher-forced answer logits `float32[B, La, V]` (`[:, t]` predicts `answer_ids[:, t]`).

        Inputs as the JAX model's: uint8 `[B, S, S]` images, int `[B, Lq]` left-padded
        questions, int `[B, La]` right-padded answers + EOS.
        """
        embeds, mask = self.prompt(ref, main, question_ids, question_mask)
        answer_ids = _as_tensor(answer_ids, torch.long, self.device)
        prompt_length, answer_length = embeds.shape[1], answer_ids.shape[1]
        embeds = torch.cat([embeds, self.decoder.transformer.wte(answer_ids)], dim=1)
        mask = torch.cat([mask, _as_tensor(answer_mask, torch.long, self.device)], dim=1)
        logits = self.decoder(inputs_embeds=embeds, attention_mask=mask,
                              position_ids=position_ids_from_mask(mask)).logits
        return logits[:, prompt_length - 1: prompt_length - 1 + answer_length].float()

    @torch.no_grad()
    def generate(self, ref: Any, main: Any, question_ids: Any, question_mask: Any,
                 max_new_tokens: int | None = None) -> torch.Tensor:
        """Greedy decoding with the KV cache: `int64[B, max_new_tokens]`, EOS after each end."""
        max_new_tokens = max_new_tokens or int(self.config["answer_max_tokens"])
        embeds, mask = self.prompt(ref, main, question_ids, question_mask)
        batch = embeds.shape[0]
        position = position_ids_from_mask(mask)
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=position,
                           use_cache=True)
        next_position = position[:, -1:] + 1
        tokens = torch.full((batch, max_new_tokens), self.eos_id, dtype=torch.long,
                            device=self.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1)
            token = torch.where(finished, torch.full_like(token, self.eos_id), token)
            tokens[:, step] = token
            finished |= token == self.eos_id
            if bool(finished.all()):
                break
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=torch.long, device=self.device)],
                             dim=1)
            out = self.decoder(input_ids=token[:, None], attention_mask=mask,
                               position_ids=next_position + step,
                               past_key_values=out.past_key_values, use_cache=True)
        return tokens

    def encode_questions(self, questions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize as the data pipeline: truncate to `question_max_tokens`, pad on the left."""
        if self.tokenizer is None:
            raise ValueError("loaded without a tokenizer")
        length = int(self.config["question_max_tokens"])
        ids = torch.full((len(questions), length), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(questions), length), dtype=torch.long)
        for i, question in enumerate(questions):
            q = self.tokenizer.encode(question, add_special_tokens=False)[:length]
            if q:
                ids[i, length - len(q):], mask[i, length - len(q):] = torch.tensor(q), 1
        return ids, mask

    def answer(self, ref: Any, main: Any, questions: Sequence[str],
               max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers as text for `uint8[B, S, S]` image pairs and B questions."""
        ids, mask = self.encode_questions(questions)
        tokens = self.generate(ref, main, ids, mask, max_new_tokens)
        out = []
        for row in tokens.tolist():
            row = row[: row.index(self.eos_id)] if self.eos_id in row else row
            out.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return out
