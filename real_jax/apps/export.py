"""A training workdir's checkpoint -> a PyTorch folder (`python -m real_jax.export`).

The folder's layout and the weight conversion are `real_jax.interop.export`'s; this module
finds the checkpoint, upgrades its saved config and picks the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from configs.upgrade import restore_config
from data_pipeline.pipeline import load_tokenizer
from real_jax.experiment import run_tokenizer
from real_jax.interop.export import export_variables, restore_variables


def export_checkpoint(workdir: str | Path, out: str | Path, step: int | None = None,
                      data_dir: str | None = None, gpt2_dir: str | None = None) -> Path:
    """Restores a workdir's checkpoint and exports it (`real_jax.interop.export`); returns OUT.

    The tokenizer is the one the run saved in its workdir, else the training config's
    `data.dir` / `pretrained.gpt2_dir`; `data_dir` / `gpt2_dir` override both (e.g. when
    exporting on another machine).
    """
    params, batch_stats, saved, step = restore_variables(workdir, step)
    config = restore_config(saved)
    if data_dir is None and gpt2_dir is None:
        tokenizer = run_tokenizer(workdir, config)
    else:
        tokenizer = load_tokenizer(data_dir or config.data.dir,
                                   gpt2_dir or config.pretrained.gpt2_dir or None)
    return export_variables(params, batch_stats, config.to_dict(), tokenizer, out, step)
