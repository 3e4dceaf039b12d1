"""The PyTorch side of `python -m real_jax.bench`: `TorchReAl` (`real_jax.interop`) built from the
same config with random weights, a train step written like the JAX one (generation loss +
consistency loss, AdamW, clipping), and its greedy decoding, on this host's CPU (float32) or on
a CUDA GPU (bfloat16 autocast where `model.dtype` is bfloat16, as the JAX step computes).

Options for the best PyTorch beside eager: `compile=True` runs the forward and loss through
`torch.compile` (inductor; AOTAutograd compiles the backward too; the optimizer step stays eager),
and `channels_last=True` stores the convolution weights, and so the encoders' activations, in
channels-last order (oneDNN's and cuDNN's preferred layout). The first step, which compiles, is
timed apart: `first_step_s`, and `compile_s` = first step minus the median step."""

from __future__ import annotations

import time
from typing import Any

import ml_collections

from real_jax.benchmark.jax_side import decoded_positions
from real_jax.benchmark.timing import median_time, peak_rss_bytes, random_batch


def torch_model(config: ml_collections.ConfigDict, vocab_size: int, eos_id: int) -> Any:
    """`TorchReAl` with random weights for `config.model` (the export's structure summary)."""
    # transformers is already imported (with its Flax models) by the JAX side; do not set
    # USE_FLAX=0 here: it would leak into subprocesses and break their FlaxGPT2 import.
    from transformers import GPT2Config, GPT2LMHeadModel

    from real_jax.interop.torch_model import TorchReAl
    from real_jax.models.resnet import make_encoder

    m = config.model
    encoder = make_encoder(m.encoder)
    decoder = GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab_size, n_positions=m.decoder.n_positions, n_embd=m.decoder.n_embd,
        n_layer=m.decoder.n_layer, n_head=m.decoder.n_head, resid_pdrop=m.decoder.dropout,
        embd_pdrop=m.decoder.dropout, attn_pdrop=m.decoder.dropout,
        bos_token_id=eos_id, eos_token_id=eos_id))
    summary = {
        "variant": m.variant,
        "encoder": {"name": m.encoder, "stage_sizes": list(encoder.stage_sizes),
                    "num_filters": encoder.num_filters, "feature_dim": encoder.feature_dim},
        "num_queries": m.num_queries,
        "projector": {"width": m.projector_width, "depth": m.projector_depth,
                      "heads": m.projector_heads},
        "eos_id": eos_id, "vocab_size": vocab_size,
        "answer_max_tokens": config.generation.answer_max_tokens,
    }
    return TorchReAl(summary, decoder)


def bench_torch(config: ml_collections.ConfigDict, *, vocab_size: int, steps: int, warmup: int,
                threads: int, decode: bool = True, device: str = "cpu", compile: bool = False,
                channels_last: bool = False) -> dict[str, Any]:
    """The PyTorch train step and greedy decoding on `device` ("cpu" or "cuda"), eager or with
    `torch.compile` and/or channels-last (module docstring)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"--torch_device={device}: this torch ({torch.__version__}) sees no GPU")
    eos_id = vocab_size - 1
    model = torch_model(config, vocab_size, eos_id).to(device)
    if channels_last:
        # 4-D parameters (the convolution kernels) only; convolutions then emit channels-last.
        model = model.to(memory_format=torch.channels_last)
    batch_size = config.train.global_batch_size
    host = random_batch(config, batch_size, vocab_size, eos_id)
    t = {k: (torch.from_numpy(v).long() if "ids" in k or "mask" in k
             else torch.from_numpy(v)).to(device) for k, v in host.items()}
    # On CPU float32 (bf16 matmuls are slower there than f32); on a GPU the JAX step's dtype.
    bf16 = device != "cpu" and config.model.dtype == "bfloat16"
    autocast = lambda: torch.autocast("cuda" if bf16 else "cpu", dtype=torch.bfloat16,
                                      enabled=bf16)
    optim = config.optim
    opt = torch.optim.AdamW(model.parameters(), lr=optim.learning_rate,
                            betas=(optim.b1, optim.b2), weight_decay=optim.weight_decay)
    loss_config = config.loss
    use_consistency = config.model.variant == "real" and loss_config.consistency_weight != 0
    if use_consistency and config.model.alignment != "encoder_output":
        # TorchReAl mirrors the paper's placement only; timing another would compare unlike steps.
        raise ValueError(f"--torch times L_con on the encoders' outputs only; "
                         f"model.alignment={config.model.alignment!r} has no PyTorch twin")

    def train_step() -> float:
        model.train()
        with autocast():
            loss = compiled_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip_norm)
        opt.step()
        return float(loss.detach())  # waits for the device

    def loss_fn() -> torch.Tensor:
        prefix, features = model.encode(t["ref"], t["main"])
        question = model.decoder.transformer.wte(t["question_ids"])
        answer = model.decoder.transformer.wte(t["answer_ids"])
        embeds = torch.cat([prefix, question, answer], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=device),
                          t["question_mask"], t["answer_mask"]], dim=1)
        positions = (torch.cumsum(mask, 1) - 1).clamp(min=0)
        hidden = model.decoder.transformer(inputs_embeds=embeds, attention_mask=mask,
                                           position_ids=positions).last_hidden_state
        # The LM head only where a loss is taken, as the JAX model does.
        start = prefix.shape[1] + question.shape[1] - 1
        logits = model.decoder.lm_head(hidden[:, start:start + answer.shape[1]]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), t["answer_ids"], reduction="none")
        answer_mask = t["answer_mask"].float()
        loss = ((nll * answer_mask).sum(1) / answer_mask.sum(1).clamp(min=1)).mean()
        if use_consistency:
            sign = 1.0 if loss_config.consistency_sign == "paper" else -1.0
            images = features["ref"] - features["main"]
            if loss_config.get("consistency_image_target", "trainable") == "detached":
                images = images.detach()
            difference = sign * images - features["residual"]
            difference = difference.float().mean(dim=(2, 3))  # pooled, [B, C]
            loss = loss + loss_config.consistency_weight * difference.square().mean(-1).mean()
        return loss

    compiled_loss = torch.compile(loss_fn) if compile else loss_fn
    start = time.perf_counter()
    train_step()  # compiles under torch.compile; counted as one of the warm-up steps
    first_step_s = time.perf_counter() - start
    step_s, times = median_time(train_step, steps, max(warmup - 1, 0))
    result: dict[str, Any] = {"framework": "torch", "torch_version": torch.__version__,
                              "device": device, "dtype": "bfloat16" if bf16 else "float32",
                              "compiled": compile, "channels_last": channels_last,
                              "threads": threads, "first_step_s": first_step_s,
                              "compile_s": first_step_s - step_s if compile else None,
                              "step_s": step_s, "step_times_s": times,
                              "samples_per_s": batch_size / step_s}
    if decode:
        model.eval()
        max_new = config.generation.answer_max_tokens
        args = (t["ref"], t["main"], t["question_ids"], t["question_mask"])

        def generate() -> Any:
            with autocast():
                return model.generate(*args, max_new_tokens=max_new).cpu().numpy()

        tokens = generate()
        seconds, _ = median_time(generate, 3, 0)
        positions = decoded_positions(tokens, eos_id)
        result.update({"decode_greedy_tokens_per_s": positions / seconds,
                       "decode_greedy_s": seconds, "decode_greedy_positions": positions})
    result["peak_rss_bytes"] = peak_rss_bytes()
    if device != "cpu":
        result["peak_device_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    return result
