"""`configs.upgrade.restore_config` reads configs saved by earlier versions of the code."""

import json

from configs.real import get_config
from configs.upgrade import restore_config
from real_jax.experiment import build_model
from real_jax.models.registration import RegistrationConfig

# `config.json` of a tiny run trained with registration before `model.register` became
# `model.registration.enabled` (abridged to the sections that matter; the rest keep defaults).
SAVED_BEFORE_REGISTRATION_ENABLED = json.loads("""
{
  "preset": "tiny",
  "seed": 3,
  "model": {
    "variant": "real",
    "encoder": "resnet_micro",
    "register": true,
    "registration": {"transform": "rigid", "levels": 2, "steps": 7, "learning_rate": 0.05,
                     "min_size": 8},
    "decoder": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128, "dropout": 0.1}
  },
  "generation": {"method": "greedy", "beam_size": 4, "length_penalty": 0.0,
                 "answer_max_tokens": 24}
}
""")

# Older still: registration was a data option and the answer length had another name.
SAVED_WITH_REGISTRATION_IN_DATA = {
    "preset": "tiny",
    "data": {"register": True, "registration": {"transform": "affine", "levels": 1, "steps": 3,
                                                "learning_rate": 0.01, "min_size": 16}},
    "generation": {"max_answer_tokens": 20},
}


def test_register_flag_becomes_registration_enabled():
    config = restore_config(SAVED_BEFORE_REGISTRATION_ENABLED)
    assert "register" not in config.model
    assert config.model.registration.to_dict() == {
        "enabled": True, "transform": "rigid", "levels": 2, "steps": 7, "learning_rate": 0.05,
        "min_size": 8}
    assert config.seed == 3 and config.model.encoder == "resnet_micro"
    model = build_model(config.model, vocab_size=50, eos_id=49)
    assert model.registration == RegistrationConfig(transform="rigid", levels=2, steps=7,
                                                    learning_rate=0.05, min_size=8)


def test_registration_moves_out_of_data_and_answer_tokens_are_renamed():
    config = restore_config(SAVED_WITH_REGISTRATION_IN_DATA)
    assert config.model.registration.enabled and config.model.registration.transform == "affine"
    assert "register" not in config.data and "registration" not in config.data
    assert config.generation.answer_max_tokens == 20


def test_saved_without_registration_stays_unregistered():
    saved = get_config("tiny").to_dict()
    del saved["model"]["registration"]
    config = restore_config(saved)
    assert not config.model.registration.enabled
    assert build_model(config.model, vocab_size=50, eos_id=49).registration is None


def test_current_config_round_trips_through_json():
    config = get_config("synthetic")
    config.model.registration.enabled = True
    restored = restore_config(json.loads(config.to_json_best_effort()))
    assert restored.to_dict() == config.to_dict()
