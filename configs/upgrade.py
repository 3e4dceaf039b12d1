"""Upgrades a config saved with a checkpoint to a complete config of the current code.

Checkpoints keep the config they were trained with (`config.json` in the workdir, and one per
checkpoint). Fields move and get renamed as the code grows; `restore_config` replays those
changes (`MOVED_FIELDS`), then fills what the saved config lacks from its preset's defaults, so
evaluation, prediction and export read any checkpoint the project has written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from configs.real import get_config

# Fields moved or renamed since configs were first saved with checkpoints, as dotted paths: old
# -> new, applied in this order (a section moves before a field is moved into it).
MOVED_FIELDS = (
    ("data.registration", "model.registration"),
    ("data.register", "model.registration.enabled"),
    ("model.register", "model.registration.enabled"),
    ("generation.max_answer_tokens", "generation.answer_max_tokens"),
)


def restore_config(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A config saved with a checkpoint (a nested dict) -> a complete config of the current code.

    Starts from the saved preset's defaults, moves fields to their current place
    (`MOVED_FIELDS`), and applies every saved value; fields the code has gained since keep their
    defaults (for example `model.registration.enabled`, off), fields it no longer has are
    dropped with a warning.
    """
    saved = _copy(saved)
    for old, new in MOVED_FIELDS:
        _move(saved, old.split("."), new.split("."))
    config = get_config(saved.get("preset", "paper"))
    with config.unlocked():
        _update(config, saved, "")
    return config


def _copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _move(tree: dict[str, Any], old: list[str], new: list[str]) -> None:
    """Moves the value at path `old` to path `new` (creating sections), if `old` is there."""
    node = tree
    for key in old[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    if old[-1] not in node:
        return
    value = node.pop(old[-1])
    target = tree
    for key in new[:-1]:
        target = target.setdefault(key, {})
    target[new[-1]] = value


def _update(config: ml_collections.ConfigDict, values: Mapping[str, Any], path: str) -> None:
    for key, value in values.items():
        if key not in config:
            logging.warning("saved config field %s%s is not used by this version; ignored",
                            path, key)
        elif isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, Mapping):
            _update(config[key], value, f"{path}{key}.")
        else:
            config[key] = tuple(value) if isinstance(value, list) else value
