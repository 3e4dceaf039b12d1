"""JAX beam search against HF `GPT2LMHeadModel.generate(num_beams=k)` on the exported decoder.

Both decode from the same prompt: `TorchReAl.prompt` builds `[image tokens | question]` as
`inputs_embeds` (the PyTorch prompt equals the JAX one, tests/interop/test_export.py), so only the
search differs. transformers 4.57's `_beam_search` ranks finished hypotheses by
`log p / len ** length_penalty`, `len` the generated tokens including EOS (a prompt given only as
`inputs_embeds` counts 0), ours by GNMT's `log p / ((5 + len) / 6) ** alpha`: no pair of
penalties ranks alike except 0 and 0, plain log-probability, so the comparison is at 0. There HF's
`early_stopping=False` and `"never"` both stop once no running beam can beat the worst of the k
finished hypotheses, as ours does; `True` (stop once k have finished) is another algorithm. Both
finish a hypothesis only when it ranks in the first k of the step's 2k continuations.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs.real import get_config
from real_jax.interop import export as ex
from real_jax.interop.torch_model import TorchReAl
from real_jax.models.generation import make_generate_fn
from tests.interop.helpers import tiny_real

MAX_NEW = 8
BEAMS = (2, 4)
# Sized for the tiny preset's random weights (`exported`): with them the beams hold every kind
# of answer the beam test needs (its last assertion).
EOS_BOOST = 5.5
ATTENTION_GAIN = 4.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Random tiny-ReAl weights, exported, with two changes: the attention's query, key and value
    projection `ATTENTION_GAIN` times larger, so that attention picks out the answer's own
    earlier tokens and a beam fed another beam's KV cache would answer differently; and EOS's
    logit raised by `EOS_BOOST` through `ln_f`'s bias (the head is tied: the bias adds
    `bias . wte[v]` to token v's logit), so that ending competes with going on and the beams
    hold answers of several lengths."""
    root = tmp_path_factory.mktemp("beam_vs_hf")
    tiny = tiny_real(root, get_config("tiny"))
    variables, eos = tiny["variables"], tiny["tokenizer"].eos_id
    decoder = dict(variables["params"]["decoder"])
    decoder["h"] = {name: {**block, "attn": {**block["attn"], "c_attn": {
        **block["attn"]["c_attn"], "kernel": ATTENTION_GAIN * block["attn"]["c_attn"]["kernel"]}}}
        for name, block in decoder["h"].items()}
    eos_row = decoder["wte"]["embedding"][eos]
    decoder["ln_f"] = {**decoder["ln_f"],
                       "bias": decoder["ln_f"]["bias"] + EOS_BOOST * eos_row / (eos_row @ eos_row)}
    params = {**variables["params"], "decoder": decoder}
    variables = {**variables, "params": params}
    out = ex.export_variables(params, variables["batch_stats"], tiny["config"].to_dict(),
                              tiny["tokenizer"], root / "torch")
    inputs = {k: jnp.asarray(v) for k, v in tiny["batch"].items()}
    return {**tiny, "variables": variables, "eos": eos, "inputs": inputs,
            "torch": TorchReAl.load(out, with_tokenizer=False)}


def hf_generate(exported, **kwargs) -> np.ndarray:
    """HF `generate` from the prompt embeddings, EOS-padded to `int64[B, MAX_NEW]`."""
    torch_model, batch, eos = exported["torch"], exported["batch"], exported["eos"]
    with torch.no_grad():
        embeds, mask = torch_model.prompt(batch["ref"], batch["main"], batch["question_ids"],
                                          batch["question_mask"])
        out = torch_model.decoder.generate(inputs_embeds=embeds, attention_mask=mask,
                                           max_new_tokens=MAX_NEW, do_sample=False,
                                           eos_token_id=eos, pad_token_id=eos, **kwargs).numpy()
    tokens = np.full((out.shape[0], MAX_NEW), eos, np.int64)
    tokens[:, : out.shape[1]] = out
    return tokens


def jax_generate(exported, method: str, beam_size: int = 1) -> np.ndarray:
    generate = make_generate_fn(exported["model"], method=method, max_new_tokens=MAX_NEW,
                                eos_id=exported["eos"], beam_size=beam_size, length_penalty=0.0)
    return np.asarray(generate(exported["variables"], exported["inputs"]))


def test_hf_greedy_generate_from_the_prompt_embeddings_equals_jax_greedy(exported):
    jax_tokens = jax_generate(exported, "greedy")
    np.testing.assert_array_equal(hf_generate(exported, num_beams=1), jax_tokens)
    lengths = [row.index(exported["eos"]) if exported["eos"] in row else MAX_NEW
               for row in jax_tokens.tolist()]
    assert max(lengths) > 0, jax_tokens


def test_beam_search_equals_hf_beam_search_without_length_penalty(exported):
    eos = exported["eos"]
    greedy = jax_generate(exported, "greedy")
    unlike_greedy = ended = cut = 0
    for k in BEAMS:
        jax_tokens = jax_generate(exported, "beam", k)
        for early_stopping in (False, "never"):
            hf_tokens = hf_generate(exported, num_beams=k, length_penalty=0.0,
                                    early_stopping=early_stopping, num_return_sequences=1)
            np.testing.assert_array_equal(hf_tokens, jax_tokens,
                                          err_msg=f"num_beams={k}, early_stopping={early_stopping}")
        print(f"beam {k}:", jax_tokens.tolist())
        unlike_greedy += int((jax_tokens != greedy).any(axis=1).sum())
        ended += sum(row[0] != eos and eos in row for row in jax_tokens.tolist())
        cut += sum(eos not in row for row in jax_tokens.tolist())
    # Beams must leave the greedy path, and answers ended by EOS must compete with answers cut
    # at MAX_NEW, or the finished pool and the stopping rule would go untested.
    assert unlike_greedy > 0 and ended > 0 and cut > 0, (unlike_greedy, ended, cut)
