"""Where the train step's time goes, in both frameworks: each part of ReAl timed alone, forward
and backward, on the config's shapes, JAX and PyTorch in the same process, back to back.

    python -m real_jax.bench --config=configs/real.py --components --torch [...]

Parts (B = global batch, S = image size, P + Lq + La decoder positions):

- `image encoder`: the shared ResNet on the 2B reference and main images, `float32[2B, S, S, 3]`;
- `residual encoder`: the residual ResNet on `float32[B, S, S, 3]`;
- `projectors`: the image projector on 2B feature maps and the residual projector on B;
- `gpt2`: token embedding, the GPT-2 trunk over P + Lq + La positions (dropout on), the LM head
  on the La answer positions and the answer NLL, gradients into the parameters and the prefix;
- `optimizer`: the config's optimizer update (clipping, AdamW) over all of the model's parameters.

Each JAX part is one jitted `value_and_grad` (or update) of the same modules and parameter subtrees
the model uses; each PyTorch part is the `TorchReAl` module of the same shape (torchvision-layout
ResNet, the projector, HF `GPT2LMHeadModel`) with `loss.backward()` (or `AdamW.step()`).
Timings are medians after warmup; `sum` is their total, to set beside the whole step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from real_jax.benchmark.timing import median_time, random_batch
from real_jax.experiment import build_experiment
from real_jax.models import DTYPES
from real_jax.models.gpt2_decoder import GPT2Decoder
from real_jax.models.projector import Projector
from real_jax.models.real import position_ids_from_mask
from real_jax.models.resnet import make_encoder
from real_jax.training.losses import generation_loss

PARTS = ("image encoder", "residual encoder", "projectors", "gpt2", "optimizer")


def _shapes(config: ml_collections.ConfigDict, prefix_length: int) -> dict[str, int]:
    m, d = config.model, config.data
    return {"B": config.train.global_batch_size, "S": d.image_size, "P": prefix_length,
            "Lq": d.question_max_tokens, "La": d.answer_max_tokens, "D": m.decoder.n_embd,
            "h": d.image_size // make_encoder(m.encoder).stride}


def _timed(fn: Callable[[], Any], steps: int, warmup: int) -> float:
    return median_time(fn, steps, warmup)[0]


def jax_parts(config: ml_collections.ConfigDict, *, vocab_size: int, steps: int, warmup: int
              ) -> dict[str, float]:
    """Seconds per forward + backward of each part (`PARTS`), JAX, one device."""
    experiment = build_experiment(config, vocab_size=vocab_size, total_steps=1000, check=False,
                                  devices=jax.devices()[:1])
    model, m = experiment.model, config.model
    state, _ = experiment.init_state(jax.random.key(0))
    params, batch_stats = state.params, state.batch_stats
    n = _shapes(config, model.prefix_length)
    dtype = DTYPES[m.dtype]
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    times: dict[str, float] = {}

    encoder = make_encoder(m.encoder, dtype=dtype)

    def encoder_loss(p, stats, x):
        out, updates = encoder.apply({"params": p, "batch_stats": stats}, x, train=True,
                                     mutable=["batch_stats"])
        return jnp.mean(out), updates

    encoder_grad = jax.jit(jax.value_and_grad(encoder_loss, has_aux=True))
    for part, name, count in (("image encoder", "image_encoder", 2 * n["B"]),
                              ("residual encoder", "residual_encoder", n["B"])):
        if name in params:
            x = normal(count, n["S"], n["S"], 3)
            times[part] = _timed(lambda x=x, name=name: jax.block_until_ready(
                encoder_grad(params[name], batch_stats[name], x)), steps, warmup)

    projector = Projector(num_queries=m.num_queries, width=m.projector_width,
                          depth=m.projector_depth, num_heads=m.projector_heads,
                          out_dim=m.decoder.n_embd, dropout_rate=m.projector_dropout, dtype=dtype)
    names = [name for name in ("image_projector", "residual_projector") if name in params]
    counts = {"image_projector": 2 * n["B"], "residual_projector": n["B"]}
    channels = encoder.feature_dim

    def projector_loss(p, features, key):
        return sum(jnp.mean(projector.apply({"params": p[name]}, features[name], train=True,
                                            rngs={"dropout": key}).astype(jnp.float32))
                   for name in names)

    features = {name: normal(counts[name], n["h"], n["h"], channels) for name in names}
    projector_grad = jax.jit(jax.value_and_grad(projector_loss))
    projector_params = {name: params[name] for name in names}
    times["projectors"] = _timed(lambda: jax.block_until_ready(
        projector_grad(projector_params, features, jax.random.key(1))), steps, warmup)

    decoder = GPT2Decoder(model.decoder_config, dtype=dtype)
    batch = {k: jnp.asarray(v) for k, v in random_batch(
        config, n["B"], vocab_size, experiment.eos_id).items()}
    prefix = normal(n["B"], n["P"], n["D"]).astype(dtype)

    def decoder_loss(p, prefix, key):
        variables = {"params": p}
        ids = jnp.concatenate([batch["question_ids"], batch["answer_ids"]], axis=1)
        mask = jnp.concatenate([jnp.ones(prefix.shape[:2], jnp.int32), batch["question_mask"],
                                batch["answer_mask"]], axis=1)
        tokens = decoder.apply(variables, ids, method=GPT2Decoder.embed_tokens)
        embeds = jnp.concatenate([prefix, tokens.astype(prefix.dtype)], axis=1)
        hidden = decoder.apply(variables, embeds, mask, position_ids_from_mask(mask),
                               deterministic=False, rngs={"dropout": key},
                               method=GPT2Decoder.hidden_states)
        start = n["P"] + n["Lq"] - 1
        logits = decoder.apply(variables, hidden[:, start:start + n["La"]],
                               method=GPT2Decoder.logits)
        return generation_loss(logits, batch["answer_ids"], batch["answer_mask"])

    decoder_grad = jax.jit(jax.value_and_grad(decoder_loss, argnums=(0, 1)))
    times["gpt2"] = _timed(lambda: jax.block_until_ready(
        decoder_grad(params["decoder"], prefix, jax.random.key(2))), steps, warmup)

    tx = experiment.tx

    def update(p, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    update = jax.jit(update, donate_argnums=(0, 1))
    grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
    holder = {"params": params, "opt": state.opt_state}

    def one_update() -> None:
        holder["params"], holder["opt"] = update(holder["params"], holder["opt"], grads)
        jax.block_until_ready(holder["params"])

    times["optimizer"] = _timed(one_update, steps, warmup)
    return times


def torch_parts(config: ml_collections.ConfigDict, *, vocab_size: int, steps: int, warmup: int,
                threads: int) -> dict[str, float]:
    """Seconds per forward + backward of each part (`PARTS`), PyTorch on this host's CPU."""
    import torch
    import torch.nn.functional as F

    from real_jax.benchmark.torch_side import torch_model
    from real_jax.interop.torch_model import resnet_features

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    eos_id = vocab_size - 1
    model = torch_model(config, vocab_size, eos_id).train()
    n = _shapes(config, (3 if model.has_residual_branch else 2) * config.model.num_queries)
    times: dict[str, float] = {}

    def backward(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            loss_fn().backward()
        return run

    encoders = [("image encoder", "image_encoder", 2 * n["B"]),
                ("residual encoder", "residual_encoder", n["B"])]
    for part, name, count in encoders:
        if hasattr(model, name):
            x = torch.randn(count, 3, n["S"], n["S"])
            times[part] = _timed(backward(
                lambda x=x, name=name: resnet_features(getattr(model, name), x).mean()),
                steps, warmup)

    channels = model.config["encoder"]["feature_dim"]
    projectors = [(getattr(model, name), torch.randn(count, channels, n["h"], n["h"]))
                  for name, count in (("image_projector", 2 * n["B"]),
                                      ("residual_projector", n["B"])) if hasattr(model, name)]
    times["projectors"] = _timed(backward(
        lambda: sum(p(features).float().mean() for p, features in projectors)), steps, warmup)

    batch = {k: torch.from_numpy(v).long() for k, v in random_batch(
        config, n["B"], vocab_size, eos_id).items() if "ids" in k or "mask" in k}
    prefix = torch.randn(n["B"], n["P"], n["D"], requires_grad=True)
    decoder = model.decoder

    def decoder_loss() -> torch.Tensor:
        ids = torch.cat([batch["question_ids"], batch["answer_ids"]], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long), batch["question_mask"],
                          batch["answer_mask"]], dim=1)
        embeds = torch.cat([prefix, decoder.transformer.wte(ids)], dim=1)
        positions = (torch.cumsum(mask, 1) - 1).clamp(min=0)
        hidden = decoder.transformer(inputs_embeds=embeds, attention_mask=mask,
                                     position_ids=positions).last_hidden_state
        start = n["P"] + n["Lq"] - 1
        logits = decoder.lm_head(hidden[:, start:start + n["La"]]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), batch["answer_ids"], reduction="none")
        answer_mask = batch["answer_mask"].float()
        return ((nll * answer_mask).sum(1) / answer_mask.sum(1).clamp(min=1)).mean()

    times["gpt2"] = _timed(backward(decoder_loss), steps, warmup)

    optim = config.optim
    opt = torch.optim.AdamW(model.parameters(), lr=optim.learning_rate,
                            betas=(optim.b1, optim.b2), weight_decay=optim.weight_decay)
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)

    def one_update() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip_norm)
        opt.step()

    times["optimizer"] = _timed(one_update, steps, warmup)
    return times


def parts_table(jax_times: dict[str, float], torch_times: dict[str, float] | None,
                whole: dict[str, float] | None = None) -> str:
    """Markdown: seconds per part in each framework and JAX's speed relative to PyTorch
    (torch s / JAX s: above 1 means JAX is faster); `whole` adds the full train steps."""
    rows = [(part, jax_times.get(part), (torch_times or {}).get(part)) for part in PARTS]
    rows.append(("sum of parts", sum(t for _, t, _ in rows if t),
                 sum(t for _, _, t in rows if t) if torch_times else None))
    if whole:
        rows.append(("whole train step", whole.get("jax"), whole.get("torch")))
    fmt = lambda t: "n/a" if t is None else f"{t:.3f}"
    lines = ["| part | JAX s | PyTorch s | JAX speed vs PyTorch |", "|---|---|---|---|"]
    for part, j, t in rows:
        ratio = f"{t / j:.2f}x" if j and t else "n/a"
        lines.append(f"| {part} | {fmt(j)} | {fmt(t)} | {ratio} |")
    return "\n".join(lines) + "\n"


def optimizer_layouts(config: ml_collections.ConfigDict, *, vocab_size: int, steps: int,
                      warmup: int) -> dict[str, float]:
    """Seconds per clip + AdamW update of the config's parameters, as the train step stores them
    (one array per parameter, `tree`) and over two flat buffers (`flat`: decayed kernels and
    undecayed biases / norm parameters, each one float32 vector), back to back in one process.

    `flat` leaves out flattening the gradients (as a backward pass that wrote them into one
    buffer would); `flat_from_tree` flattens them inside the update, the upper bound."""
    from jax.flatten_util import ravel_pytree

    from real_jax.training.optimizer import make_optimizer, weight_decay_mask

    experiment = build_experiment(config, vocab_size=vocab_size, total_steps=1000, check=False,
                                  devices=jax.devices()[:1])
    abstract, _ = experiment.abstract_state()
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract.params)
    mask = weight_decay_mask(params)
    split = {"decay": jax.tree.map(lambda p, m: p if m else None, params, mask),
             "nodecay": jax.tree.map(lambda p, m: None if m else p, params, mask)}
    flat = {k: ravel_pytree(v)[0] for k, v in split.items()}
    del split
    optim = config.optim
    _, schedule = make_optimizer(optim, total_steps=1000)  # the training step's schedule
    flat_tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), optax.adamw(
        schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
        mask={"decay": True, "nodecay": False}))
    # `flat_from_tree`: the flat update fed the gradients as the backward pass makes them, one
    # array per parameter, flattened inside the step (the copy a flat layout would add).
    tree_grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
    ravel = lambda g: {k: ravel_pytree(jax.tree.map(
        lambda x, m, keep=(k == "decay"): x if m == keep else None, g, mask))[0] for k in flat}
    times = {}
    for name, tx, p, to_flat in (("flat", flat_tx, flat, None),
                                 ("flat_from_tree", flat_tx, flat, ravel),
                                 ("tree", experiment.tx, params, None)):
        def apply(p, s, g, tx=tx, to_flat=to_flat):
            g = to_flat(g) if to_flat else g
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        update = jax.jit(apply, donate_argnums=(0, 1))
        p = jax.tree.map(jnp.copy, p)  # each variant donates its own copy
        grads = tree_grads if to_flat else jax.tree.map(lambda x: jnp.full_like(x, 1e-3), p)
        holder = {"params": p, "opt": tx.init(p)}

        def one_update(update=update, grads=grads, holder=holder) -> None:
            holder["params"], holder["opt"] = update(holder["params"], holder["opt"], grads)
            jax.block_until_ready(holder["params"])

        times[name] = _timed(one_update, steps, warmup)
        del holder, grads
    times["parameters"] = float(sum(x.size for x in jax.tree.leaves(flat)))
    times["arrays_tree"] = float(len(jax.tree.leaves(params)))
    return times
