"""Weight import: torchvision ResNet-50 and HF GPT-2 into the Flax modules, numerically equal
outputs, strict errors, `weights_only=True` loading, and the torch -> JAX -> torch round trip."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

from configs.real import get_config
from data_pipeline.pipeline import load_tokenizer
from data_pipeline.tokenizer import Tokenizer
from real_jax import pretrained as pretrained_cli
from real_jax.experiment import build_model
from real_jax.interop import torch_weights as tw
from real_jax.interop.pretrained import GPT2_DIR, RESNET_FILE
from real_jax.interop.torch_model import TorchProjector, TorchResNet, build_resnet
from real_jax.models.gpt2_decoder import GPT2Decoder, make_gpt2_config
from real_jax.models.resnet import ResNet50, ResNetTiny
from real_jax.training.state import example_batch, model_args
from tests.commands import call_command
from tests.interop.helpers import numpy_state_dict, randomize_batch_norm

SENTENCES = ["is there any change in the lung opacity?",
             "the main image has an additional finding of pneumothorax than the reference image.",
             "what has changed compared to the reference image?"] * 4


@pytest.fixture(scope="module")
def resnet50_torch() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    randomize_batch_norm(model, seed=1)
    return model


@pytest.fixture(scope="module")
def resnet50_template() -> tuple[dict, dict]:
    shapes = jax.eval_shape(lambda: ResNet50().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                    train=False))
    return shapes["params"], shapes["batch_stats"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> tuple:
    """A tiny GPT-2 saved with save_pretrained (safetensors), with a trained BPE tokenizer."""
    directory = tmp_path_factory.mktemp("gpt2")
    tokenizer = Tokenizer.train(SENTENCES, vocab_size=300)
    GPT2TokenizerFast(tokenizer_object=tokenizer.backend, eos_token="<|endoftext|>",
                      bos_token="<|endoftext|>", unk_token="<|endoftext|>",
                      ).save_pretrained(directory)
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_embd=32, n_head=2,
                        n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory, model


def test_resnet50_matches_torchvision(resnet50_torch, resnet50_template):
    params, stats = tw.resnet_from_torch(numpy_state_dict(resnet50_torch), *resnet50_template)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    ours = jax.jit(lambda v, x: ResNet50().apply(v, x, train=False))(
        {"params": params, "batch_stats": stats}, x)
    with torch.no_grad():
        model = resnet50_torch
        ref = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1,
                                  model.layer2, model.layer3, model.layer4)(
            torch.from_numpy(x).permute(0, 3, 1, 2))
    ref = ref.permute(0, 2, 3, 1).numpy()
    diff = np.abs(np.asarray(ours) - ref).max()
    print(f"ResNet-50 JAX vs torchvision: max abs diff {diff:.2e}, feature max {ref.max():.2f}")
    assert ours.shape == ref.shape == (2, 2, 2, 2048)
    assert ref.std() > 0.1
    assert diff < 1e-4


def test_resnet_round_trip_torch_jax_torch(resnet50_torch, resnet50_template):
    original = numpy_state_dict(resnet50_torch)
    back = tw.resnet_to_torch(*tw.resnet_from_torch(original, *resnet50_template))
    expected = {k: v for k, v in original.items() if not tw.RESNET_IGNORED.search(k)}
    assert back.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    # The generic builder keeps torchvision's names: a tiny ResNet round-trips the same way.
    tiny = TorchResNet((1, 1, 1, 1), 8)
    randomize_batch_norm(tiny, seed=2)
    shapes = jax.eval_shape(lambda: ResNetTiny().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                      train=False))
    sd = {k: v for k, v in numpy_state_dict(tiny).items() if not k.endswith("batches_tracked")}
    back = tw.resnet_to_torch(*tw.resnet_from_torch(sd, shapes["params"], shapes["batch_stats"]))
    assert back.keys() == sd.keys()
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    assert isinstance(build_resnet((3, 4, 6, 3), 64), torchvision.models.ResNet)


def test_projector_round_trip_torch_jax_torch():
    from real_jax.models.projector import Projector

    torch.manual_seed(3)
    torch_projector = TorchProjector(256, num_queries=4, width=32, depth=2, num_heads=2, out_dim=48)
    original = numpy_state_dict(torch_projector)
    shapes = jax.eval_shape(lambda: Projector(4, 32, 2, 2, 48).init(
        jax.random.key(0), jnp.zeros((1, 2, 2, 256)), train=False))["params"]
    back = tw.projector_to_torch(tw.projector_from_torch(original, shapes))
    assert back.keys() == original.keys()
    assert all(np.array_equal(back[k], original[k]) for k in original)


def test_gpt2_logits_match_transformers(gpt2_dir):
    directory, torch_model = gpt2_dir
    config = torch_model.config
    decoder = GPT2Decoder(make_gpt2_config(vocab_size=config.vocab_size, n_layer=2, n_embd=32,
                                           n_head=2, n_positions=128, dropout=0.0))
    batch, length = 3, 20
    rng = np.random.default_rng(0)
    embeds = rng.normal(size=(batch, length, 32)).astype(np.float32)
    mask = np.ones((batch, length), np.int32)
    mask[1, 6:11] = 0  # prefix of 6, then a left-padded question
    mask[2, 6:8] = 0
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
    template = jax.eval_shape(lambda: decoder.init(jax.random.key(0), embeds, mask, positions))
    params = tw.gpt2_from_torch(tw.read_state_dict(tw.gpt2_weights_file(directory)),
                                template["params"])
    ours = jax.jit(lambda p, e, m, pos: decoder.apply({"params": p}, e, m, pos))(
        params, embeds, mask, positions)
    with torch.no_grad():
        ref = torch_model(inputs_embeds=torch.from_numpy(embeds),
                          attention_mask=torch.from_numpy(mask).long(),
                          position_ids=torch.from_numpy(positions).long()).logits.numpy()
    valid = mask.astype(bool)
    diff = np.abs(np.asarray(ours) - ref)[valid].max()
    print(f"GPT-2 JAX vs transformers: max abs logit diff {diff:.2e}")
    assert diff < 1e-4
    assert ref.std() > 0.1


def test_gpt2_round_trip_and_bin_weights(gpt2_dir, tmp_path):
    directory, torch_model = gpt2_dir
    original = numpy_state_dict(torch_model)
    original["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 128, 128), bool))  # old buffer
    config = torch_model.config
    decoder = GPT2Decoder(make_gpt2_config(vocab_size=config.vocab_size, n_layer=2, n_embd=32,
                                           n_head=2, n_positions=128))
    template = jax.eval_shape(lambda: decoder.init(jax.random.key(0), jnp.zeros((1, 4, 32)),
                                                   jnp.ones((1, 4)), jnp.zeros((1, 4))))["params"]
    params = tw.gpt2_from_torch(original, template)
    back = tw.gpt2_to_torch(params)
    assert back.keys() == {k for k in original if not k.endswith(".attn.bias")}
    assert all(np.array_equal(back[k], original[k]) for k in back)
    # GPT2Model-style keys (no "transformer." prefix) and pytorch_model.bin load the same.
    torch_model.transformer.save_pretrained(tmp_path, safe_serialization=False)
    from_bin = tw.gpt2_from_torch(tw.read_state_dict(tw.gpt2_weights_file(tmp_path)), template)
    jax.tree.map(np.testing.assert_array_equal, from_bin, params)


def test_load_pretrained_fills_encoders_and_decoder(resnet50_torch, gpt2_dir, tmp_path):
    directory, gpt2 = gpt2_dir
    tokenizer = load_tokenizer(tmp_path / "unused", directory)  # GPT-2 side of the pipeline
    config = get_config("tiny")
    config.model.encoder = "resnet50"
    config.model.decoder.update(n_layer=2, n_embd=32, n_head=2, n_positions=128)
    model = build_model(config.model, tokenizer.vocab_size, tokenizer.eos_id)
    shapes = example_batch(1, 64, 4, 4)
    variables = jax.eval_shape(lambda: model.init(
        jax.random.key(0), *model_args({k: jnp.zeros(s.shape, s.dtype)
                                        for k, s in shapes.items()}), train=False))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables["params"])
    stats = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables["batch_stats"])
    resnet_file = tmp_path / "resnet50.pth"
    torch.save(resnet50_torch.state_dict(), resnet_file)
    pretrained = ml_collections.ConfigDict({"resnet50": str(resnet_file),
                                            "gpt2_dir": str(directory)})
    new_params, new_stats = tw.load_pretrained(params, stats, pretrained)
    sd = numpy_state_dict(resnet50_torch)
    for name in ("image_encoder", "residual_encoder"):
        np.testing.assert_array_equal(new_params[name]["conv1"]["kernel"],
                                      sd["conv1.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(new_stats[name]["layer4_2"]["bn3"]["var"],
                                      sd["layer4.2.bn3.running_var"])
    np.testing.assert_array_equal(new_params["decoder"]["h"]["1"]["mlp"]["c_fc"]["kernel"],
                                  gpt2.transformer.h[1].mlp.c_fc.weight.detach().numpy().T)
    assert new_params["image_projector"] is params["image_projector"]  # left as initialised
    # The same file as safetensors gives the same parameters.
    save_file(resnet50_torch.state_dict(), tmp_path / "resnet50.safetensors")
    pretrained.resnet50, pretrained.gpt2_dir = str(tmp_path / "resnet50.safetensors"), ""
    again, _ = tw.load_pretrained(params, stats, pretrained)
    jax.tree.map(np.testing.assert_array_equal, again["residual_encoder"],
                 new_params["residual_encoder"])


def test_clear_errors(resnet50_torch, resnet50_template, gpt2_dir):
    sd = numpy_state_dict(resnet50_torch)
    missing = {k: v for k, v in sd.items() if k != "layer1.0.conv2.weight"}
    with pytest.raises(tw.WeightMappingError,
                       match=re.escape("missing key 'layer1.0.conv2.weight'") + ".*" +
                       re.escape("(3, 3, 64, 64)")):
        tw.resnet_from_torch(missing, *resnet50_template)
    wrong = dict(sd, **{"layer2.0.bn1.running_var": np.ones(64, np.float32)})
    with pytest.raises(tw.WeightMappingError) as info:
        tw.resnet_from_torch(wrong, *resnet50_template)
    message = str(info.value)
    assert "'layer2.0.bn1.running_var'" in message and "(64,)" in message and "(128,)" in message
    extra = dict(sd, **{"layer4.3.conv1.weight": np.zeros((512, 2048, 1, 1), np.float32)})
    with pytest.raises(tw.WeightMappingError, match="unexpected keys.*layer4.3.conv1.weight"):
        tw.resnet_from_torch(extra, *resnet50_template)
    # A decoder whose vocabulary is not GPT-2's.
    directory, gpt2 = gpt2_dir
    decoder = GPT2Decoder(make_gpt2_config(vocab_size=64, n_layer=2, n_embd=32, n_head=2,
                                           n_positions=128))
    template = jax.eval_shape(lambda: decoder.init(jax.random.key(0), jnp.zeros((1, 4, 32)),
                                                   jnp.ones((1, 4)), jnp.zeros((1, 4))))["params"]
    vocab = gpt2.config.vocab_size
    with pytest.raises(tw.WeightMappingError, match=f"{vocab} tokens but the decoder has 64"):
        tw.gpt2_from_torch(numpy_state_dict(gpt2), template)


class _NotATensor:
    """Any pickled object that is not a tensor: `weights_only=True` must refuse it."""


def test_torch_load_uses_weights_only(tmp_path):
    path = tmp_path / "with_object.pth"
    torch.save({"conv1.weight": torch.zeros(2), "extra": _NotATensor()}, path)
    assert isinstance(torch.load(path, weights_only=False)["extra"], _NotATensor)  # a valid pickle
    with pytest.raises(tw.WeightMappingError, match="weights_only=True"):
        tw.read_state_dict(path)
    torch.save({"conv1.weight": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "plain.pth")
    loaded = tw.read_state_dict(tmp_path / "plain.pth")
    assert loaded["conv1.weight"].dtype == np.float32 and loaded["conv1.weight"].sum() == 2


def test_training_state_is_initialised_from_the_configured_gpt2_dir(gpt2_dir):
    from real_jax.apps.driver import init_from_pretrained
    from real_jax.distributed import sharding as shd
    from real_jax.training.optimizer import make_optimizer
    from real_jax.training.state import create_train_state

    directory, torch_model = gpt2_dir
    config = get_config("tiny")
    config.model.decoder.update(n_layer=2, n_embd=32, n_head=2, n_positions=128)
    config.pretrained.gpt2_dir = str(directory)
    tokenizer = load_tokenizer("unused", gpt2_dir=directory)
    model = build_model(config.model, tokenizer.vocab_size, tokenizer.eos_id)
    tx, _ = make_optimizer(config.optim, 10)
    mesh = shd.make_mesh(jax.devices()[:1])
    shapes = example_batch(2, 64, config.data.question_max_tokens, config.data.answer_max_tokens)
    state, shardings = create_train_state(model, tx, jax.random.key(0), shapes, mesh)
    before = np.asarray(state.params["image_projector"]["queries"])
    state = init_from_pretrained(state, shardings, config.pretrained)
    wte = torch_model.transformer.wte.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(state.params["decoder"]["wte"]["embedding"]), wte)
    assert state.params["decoder"]["wte"]["embedding"].sharding == (
        shardings.params["decoder"]["wte"]["embedding"])
    np.testing.assert_array_equal(np.asarray(state.params["image_projector"]["queries"]), before)


def test_pretrained_command_writes_what_the_paper_config_loads(resnet50_torch, gpt2_dir,
                                                               resnet50_template, tmp_path):
    directory, gpt2 = gpt2_dir
    torch.save(resnet50_torch.state_dict(), tmp_path / "resnet50.pth")
    out = tmp_path / "weights"
    assert call_command(pretrained_cli, f"--out={out}",
                        f"--resnet_source={tmp_path / 'resnet50.pth'}",
                        f"--gpt2_source={directory}") == 0
    paths = {"resnet50": out / RESNET_FILE, "gpt2_dir": out / GPT2_DIR}
    paper = get_config("paper").pretrained
    assert {k: Path(v) for k, v in paper.items()} == {
        k: Path("weights") / p.relative_to(out) for k, p in paths.items()}
    params, stats = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), resnet50_template)
    loaded, loaded_stats = tw.resnet_from_torch(tw.read_state_dict(paths["resnet50"]), params,
                                                stats, source="fetched")
    sd = numpy_state_dict(resnet50_torch)
    np.testing.assert_array_equal(loaded["conv1"]["kernel"],
                                  sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded_stats["layer4_2"]["bn3"]["var"],
                                  sd["layer4.2.bn3.running_var"])
    copied = GPT2LMHeadModel.from_pretrained(paths["gpt2_dir"])
    torch.testing.assert_close(copied.transformer.h[1].mlp.c_fc.weight,
                               gpt2.transformer.h[1].mlp.c_fc.weight, rtol=0, atol=0)
    assert load_tokenizer(tmp_path / "unused", paths["gpt2_dir"]).vocab_size == \
        gpt2.config.vocab_size


def test_pretrained_command_says_which_files_to_place_where_when_it_cannot_fetch(
        resnet50_torch, tmp_path, capsys):
    torch.save(resnet50_torch.state_dict(), tmp_path / "resnet50.pth")
    status = call_command(pretrained_cli, f"--out={tmp_path / 'weights'}",
                          f"--resnet_source={tmp_path / 'resnet50.pth'}",
                          f"--gpt2_source={tmp_path / 'no' / 'such' / 'gpt2'}")
    error = capsys.readouterr().err
    assert status == 2
    assert "could not load GPT-2" in error and "model.safetensors" in error
    assert str(tmp_path / "weights" / "gpt2") in error and "--gpt2_source DIR" in error
    assert call_command(pretrained_cli, f"--out={tmp_path / 'w'}",
                        f"--resnet_source={tmp_path / 'missing.pth'}") == 2
