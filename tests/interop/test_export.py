"""Export: a tiny trained-looking ReAl checkpoint -> `python -m real_jax.export` -> PyTorch.

The PyTorch `TorchReAl` must give the JAX model's logits and greedy answers; the exported
tensors must read back into exactly the JAX parameters; the torch module must not import jax.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from configs.real import get_config
from real_jax.apps.export import export_checkpoint
from real_jax.interop import export as ex
from real_jax.interop.torch_model import (
    ENCODER_FILES,
    PROJECTOR_FILES,
    TorchReAl,
)
from real_jax.models.generation import make_generate_fn, strip_after_eos
from real_jax.training.checkpointing import Checkpointer
from real_jax.training.optimizer import make_optimizer
from real_jax.training.state import TrainState, model_args
from tests.interop.helpers import ANSWERS, QUESTIONS, assert_same_greedy_tokens, tiny_real
from tests.runs import REPO


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A workdir with one checkpoint of random tiny-ReAl weights, exported as the command does
    (`real_jax.apps.export`; the command itself: test_readers_beside_job.py)."""
    root = tmp_path_factory.mktemp("export")
    tiny = tiny_real(root, get_config("tiny"))
    config, variables = tiny["config"], tiny["variables"]
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx, _ = make_optimizer(config.optim, 10)
    opt_state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))
    state = TrainState(step=np.int32(7), params=params, batch_stats=batch_stats,
                       opt_state=opt_state)
    workdir = root / "workdir"
    checkpointer = Checkpointer(workdir / "checkpoints", keep=2, best_metric=None)
    checkpointer.save(7, state, None, config)
    checkpointer.wait_until_finished()
    checkpointer.close()

    out = root / "torch_out"
    export_checkpoint(workdir, out)
    return {**tiny, "out": out, "torch": TorchReAl.load(out), "workdir": workdir}


def test_export_user_errors_are_one_line_with_status_2(exported, tmp_path):
    workdir = exported["workdir"]
    for argv, message in [
        ([f"--out={tmp_path / 'a'}"], "--workdir must have a value"),
        ([f"--workdir={tmp_path / 'nowhere'}", f"--out={tmp_path / 'b'}"],
         "no checkpoints directory"),
        ([f"--workdir={workdir}", f"--out={tmp_path / 'c'}", "--step=3"],
         "no checkpoint for step 3"),
    ]:
        result = subprocess.run([sys.executable, "-m", "real_jax.export", *argv], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and message in lines[-1], lines
        assert "Traceback" not in result.stderr


def test_export_layout(exported):
    out = exported["out"]
    summary = json.loads((out / "config.json").read_text())
    assert summary["step"] == 7 and summary["variant"] == "real"
    assert summary["encoder"] == {"name": "resnet_micro", "stage_sizes": [1, 1],
                                  "num_filters": 8, "feature_dim": 64}
    for file in [*ENCODER_FILES.values(), *PROJECTOR_FILES.values(), "gpt2/model.safetensors",
                 "gpt2/tokenizer.json", "gpt2/config.json"]:
        assert (out / file).is_file(), file
    # The exported tokenizer is the pipeline's.
    tokenizer, torch_model = exported["tokenizer"], exported["torch"]
    ids, mask = torch_model.encode_questions(QUESTIONS)
    np.testing.assert_array_equal(ids.numpy(), exported["batch"]["question_ids"])
    np.testing.assert_array_equal(mask.numpy(), exported["batch"]["question_mask"])
    assert torch_model.tokenizer.decode(tokenizer.encode(ANSWERS[1])) == ANSWERS[1]


def test_torch_model_reproduces_jax(exported):
    model, variables, batch = exported["model"], exported["variables"], exported["batch"]
    torch_model = exported["torch"]
    logits, features = jax.jit(lambda v, *a: model.apply(v, *a, train=False))(
        variables, *model_args(batch))
    ref_logits = torch_model(*model_args(batch)).numpy()
    valid = batch["answer_mask"].astype(bool)
    diff = np.abs(np.asarray(logits) - ref_logits)[valid].max()
    print(f"\nexported ReAl, JAX vs PyTorch: max abs answer-logit diff {diff:.2e} "
          f"(logit std {ref_logits.std():.2f})")
    assert diff < 1e-4 and ref_logits.std() > 0.1
    with torch.no_grad():
        _, torch_features = torch_model.encode(batch["ref"], batch["main"])
    for name in ("ref", "main", "residual"):
        np.testing.assert_allclose(torch_features[name].permute(0, 2, 3, 1).numpy(),
                                   np.asarray(features[name]), atol=1e-4, err_msg=name)

    max_new = exported["config"].generation.answer_max_tokens
    eos = exported["tokenizer"].eos_id
    jax_tokens = assert_same_greedy_tokens(model, variables, torch_model, batch, max_new, eos)
    print("greedy tokens (JAX):", jax_tokens.tolist())
    generate = make_generate_fn(model, method="greedy", max_new_tokens=max_new, eos_id=eos)
    texts = torch_model.answer(batch["ref"], batch["main"], QUESTIONS)
    tokenizer = exported["tokenizer"]
    assert texts == [tokenizer.decode(row) for row in strip_after_eos(jax_tokens, eos)]

    # Answers that end early: make EOS outscore the third answer's fourth token (tied head).
    wte = variables["params"]["decoder"]["wte"]["embedding"].copy()
    wte[eos] = 1.05 * wte[jax_tokens[2, 3]]
    params = {**variables["params"], "decoder": {**variables["params"]["decoder"],
                                                 "wte": {"embedding": wte}}}
    jax_tokens = np.asarray(generate({**variables, "params": params},
                                     {k: jnp.asarray(v) for k, v in batch.items()}))
    with torch.no_grad():
        original = torch_model.decoder.transformer.wte.weight[eos].clone()
        torch_model.decoder.transformer.wte.weight[eos] = torch.from_numpy(wte[eos])
        try:
            torch_tokens = torch_model.generate(batch["ref"], batch["main"],
                                                batch["question_ids"], batch["question_mask"],
                                                max_new).numpy()
        finally:
            torch_model.decoder.transformer.wte.weight[eos] = original
    print("greedy tokens with early EOS (JAX):", jax_tokens.tolist())
    assert any(row[0] != eos and eos in row for row in jax_tokens.tolist())
    np.testing.assert_array_equal(torch_tokens, jax_tokens)


def test_round_trip_jax_torch_jax_torch(exported, tmp_path):
    variables, out = exported["variables"], exported["out"]
    params, batch_stats = ex.import_export(out, variables["params"], variables["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, params, variables["params"])
    jax.tree.map(np.testing.assert_array_equal, batch_stats, variables["batch_stats"])
    # ... and back to PyTorch: identical tensors.
    config = exported["config"].to_dict()
    again = ex.export_variables(params, batch_stats, config, exported["tokenizer"], tmp_path)
    for file in [*ENCODER_FILES.values(), *PROJECTOR_FILES.values(), "gpt2/model.safetensors"]:
        first, second = load_file(str(out / file)), load_file(str(again / file))
        assert first.keys() == second.keys()
        assert all(np.array_equal(first[k], second[k]) for k in first), file


# Runs in a fresh interpreter where jax and flax cannot be imported at all, as on a PyTorch-only
# deployment host. transformers imports jax by itself whenever flax is installed (its
# image_transforms module), so the process also sets USE_FLAX=0, as such a host would not need.
NO_JAX_SCRIPT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
import numpy as np
from real_jax.interop.torch_model import TorchReAl
data = np.load(sys.argv[2])
model = TorchReAl.load(sys.argv[1])
tokens = model.generate(data["ref"], data["main"], data["question_ids"], data["question_mask"],
                        int(data["tokens"].shape[1])).numpy()
np.testing.assert_array_equal(tokens, data["tokens"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax"))
assert not loaded, loaded
print("ok")
"""


def test_torch_model_runs_without_jax(exported, tmp_path):
    batch, torch_model = exported["batch"], exported["torch"]
    tokens = torch_model.generate(batch["ref"], batch["main"], batch["question_ids"],
                                  batch["question_mask"]).numpy()
    np.savez(tmp_path / "data.npz", tokens=tokens, **batch)
    result = subprocess.run([sys.executable, "-c", NO_JAX_SCRIPT, str(exported["out"]),
                             str(tmp_path / "data.npz")], capture_output=True, text=True,
                            timeout=180, env={**os.environ, "USE_FLAX": "0"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_both_frameworks_take_the_shared_constants():
    from real_jax import shared
    from real_jax.interop import torch_model, torch_registration
    from real_jax.models import inputs, projector, registration

    assert projector.sincos_2d_positions is torch_model.sincos_2d_positions is (
        shared.sincos_2d_positions)
    assert inputs.IMAGENET_MEAN is torch_model.IMAGENET_MEAN is shared.IMAGENET_MEAN
    assert inputs.IMAGENET_STD is torch_model.IMAGENET_STD is shared.IMAGENET_STD
    assert registration.TRANSFORMS is torch_registration.TRANSFORMS is shared.TRANSFORMS


def test_same_capacity_control_exports_its_residual_input(exported, tmp_path):
    """`model.residual_source=main` (the residual branch fed the main image) reaches TorchReAl
    through the export: the exported residual features are JAX's, not those of `main - ref`."""
    config = exported["config"].copy_and_resolve_references()
    config.model.residual_source = "main"
    model = exported["model"].clone(residual_source="main")
    variables, batch = exported["variables"], exported["batch"]
    out = ex.export_variables(variables["params"], variables["batch_stats"], config.to_dict(),
                              exported["tokenizer"], tmp_path / "torch_out")
    torch_model = TorchReAl.load(out, with_tokenizer=False)
    _, features = jax.jit(lambda v, *a: model.apply(v, *a, train=False))(
        variables, *model_args(batch))
    with torch.no_grad():
        _, torch_features = torch_model.encode(batch["ref"], batch["main"])
    residual = torch_features["residual"].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(residual, np.asarray(features["residual"]), atol=1e-4)
    assert not np.allclose(residual, exported["torch"].encode(batch["ref"], batch["main"])[1]
                           ["residual"].detach().permute(0, 2, 3, 1).numpy(), atol=1e-3)
