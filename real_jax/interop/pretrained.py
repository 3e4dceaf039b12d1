"""Fetch the pretrained weights the paper fine-tunes: torchvision's ImageNet ResNet-50 and HF GPT-2.

`fetch_pretrained(out)` writes

    out/resnet50_imagenet.safetensors   torchvision `resnet50` IMAGENET1K_V1 state_dict
    out/gpt2/                           HF `gpt2` (`save_pretrained`: weights, config, tokenizer)

which are the paths the paper config names (`pretrained.resnet50`, `pretrained.gpt2_dir`). On a
machine that is online it downloads them with the libraries' own functions (torchvision's
weights enum, HF's `from_pretrained`); from local copies (`resnet_source=FILE.pth`,
`gpt2_source=DIR`) it needs no network. When a download fails it raises
`PretrainedUnavailable`, whose message lists exactly which files to place where by hand.
"""

from __future__ import annotations

from pathlib import Path

from real_jax.errors import UserError

RESNET_FILE = "resnet50_imagenet.safetensors"
GPT2_DIR = "gpt2"
# torchvision's ResNet50_Weights.IMAGENET1K_V1: the classic ImageNet weights (what
# `resnet50(pretrained=True)` gave in the PyTorch 1.13 the paper used).
RESNET_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
GPT2_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt")


class PretrainedUnavailable(UserError):
    """A pretrained download failed (offline, say); the message says which files to place where,
    so the command reports it in one line."""


def manual_instructions(out: Path) -> str:
    return (f"place the files by hand: torchvision's ResNet-50 ImageNet weights ({RESNET_URL}) "
            f"as a .pth file, then run `python -m real_jax.pretrained --out {out} "
            f"--resnet_source FILE.pth`, which writes {out / RESNET_FILE}; and the Hugging "
            f"Face `gpt2` model files ({', '.join(GPT2_FILES)}) in one folder, passed as "
            f"`--gpt2_source DIR`, which writes {out / GPT2_DIR}/")


def fetch_resnet50(out: Path, source: str | Path | None = None) -> Path:
    """torchvision ResNet-50 ImageNet weights -> `out/resnet50_imagenet.safetensors`."""
    import torch
    from safetensors.torch import save_file

    if source is not None:
        if not Path(source).is_file():
            raise FileNotFoundError(f"--resnet_source {source} does not exist")
        state_dict = torch.load(source, map_location="cpu", weights_only=True)
    else:
        from torchvision.models import ResNet50_Weights

        try:
            state_dict = ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except OSError as e:  # URLError, connection refused, no route: all OSErrors
            raise PretrainedUnavailable(f"could not download the ResNet-50 weights ({e}); "
                                        f"{manual_instructions(out)}") from e
    path = out / RESNET_FILE
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return path


def fetch_gpt2(out: Path, source: str | Path = "gpt2") -> Path:
    """HF GPT-2 (the hub's `gpt2`, or a local folder) with its tokenizer -> `out/gpt2/`."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    try:
        model = GPT2LMHeadModel.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    # offline, no such repo or folder: OSError; a path that is neither a folder nor a valid
    # repo id: huggingface_hub's validation error, a ValueError
    except (OSError, ValueError) as e:
        raise PretrainedUnavailable(f"could not load GPT-2 from {source!r} ({e}); "
                                    f"{manual_instructions(out)}") from e
    path = out / GPT2_DIR
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def fetch_pretrained(out: str | Path, *, resnet_source: str | Path | None = None,
                     gpt2_source: str | Path = "gpt2") -> dict[str, Path]:
    """Both, into `out` (module docstring). Returns `{"resnet50": file, "gpt2_dir": dir}`, the
    values for `config.pretrained`."""
    out = Path(out)
    return {"resnet50": fetch_resnet50(out, resnet_source),
            "gpt2_dir": fetch_gpt2(out, gpt2_source)}
