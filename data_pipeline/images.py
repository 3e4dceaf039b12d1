"""Image helpers shared by ingestion and the input pipeline (numpy + Pillow, no TensorFlow).

- `decode_gray`: bytes -> uint8[H, W], refusing decompression bombs (Pillow pixel limit).
- `resize_shorter` / `encode_jpeg`: the one-time resize done at ingestion.
- `pair_crop`: the same crop window for both images of a pair (random for training, centered
  for evaluation), so `main - ref` stays meaningful.
- `photometric_jitter`: brightness, contrast, sharpness, drawn per image.
- `residual`: `main - ref` as float32, for tests and visualisation (the model forms it on device).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 64_000_000  # MIMIC-CXR-JPG's largest images are ~15 Mpx


class ImageDecodeError(ValueError):
    """An image that cannot be decoded (corrupt, unsupported, or a decompression bomb)."""


def open_gray(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_shorter: int | None = None):
    """Open encoded bytes as a Pillow 'L' image; raise ImageDecodeError on any failure.

    Images above `max_pixels` are refused before decoding (decompression-bomb guard).
    `draft_shorter` lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 while decoding, keeping
    the shorter side >= draft_shorter (fast path for 2500x3000 source JPEGs).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                img = Image.open(io.BytesIO(data))
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageDecodeError(f"image of {w}x{h} px exceeds max_pixels={max_pixels}")
                if draft_shorter and img.format == "JPEG":
                    scale = min(w, h) / draft_shorter
                    img.draft("L", (math.ceil(w / scale), math.ceil(h / scale)))
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = old
        if img.mode in ("I;16", "I;16B", "I"):  # 16-bit PNG/DICOM exports: rescale to 8 bit
            a = np.asarray(img, dtype=np.float32)
            a = (a - a.min()) / max(float(a.max() - a.min()), 1.0) * 255.0
            return Image.fromarray(a.astype(np.uint8), mode="L")
        return img.convert("L")
    except ImageDecodeError:
        raise
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError)
        raise ImageDecodeError(f"{type(e).__name__}: {e}") from e


def decode_gray(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to uint8[H, W]; raise ImageDecodeError on failure."""
    return np.asarray(open_gray(data, max_pixels))


def resize_shorter(img: Image.Image, shorter: int) -> Image.Image:
    """Downscale so that the shorter side is `shorter` (never upscales)."""
    w, h = img.size
    if min(w, h) <= shorter:
        return img
    scale = shorter / min(w, h)
    size = (max(shorter, round(w * scale)), max(shorter, round(h * scale)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def encode_jpeg(img: Image.Image, quality: int = 95) -> bytes:
    """Encode a Pillow image as JPEG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def pair_crop(
    ref: np.ndarray, main: np.ndarray, size: int, rng: np.random.Generator | None,
    margin: float = 1.0625,
) -> tuple[np.ndarray, np.ndarray]:
    """The same crop window for both images: uint8[H1, W1], uint8[H2, W2] -> 2 x uint8[S, S].

    Both images are first scaled so their shorter side is round(size * margin) (a no-op when
    ingestion already stored them at that size), then center-cropped to their common shape, then
    cropped to size x size at one offset: uniformly random when `rng` is given (training),
    centered when `rng` is None (evaluation).
    """
    target = max(size, int(round(size * margin)))
    ref, main = _scale_to(ref, target), _scale_to(main, target)
    h, w = min(ref.shape[0], main.shape[0]), min(ref.shape[1], main.shape[1])
    ref, main = _center(ref, h, w), _center(main, h, w)
    if rng is None:
        y, x = (h - size) // 2, (w - size) // 2
    else:
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return ref[y:y + size, x:x + size], main[y:y + size, x:x + size]


def _scale_to(a: np.ndarray, shorter: int) -> np.ndarray:
    h, w = a.shape
    if min(h, w) == shorter:
        return a
    s = shorter / min(h, w)
    size = (max(shorter, round(w * s)), max(shorter, round(h * s)))
    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def _center(a: np.ndarray, h: int, w: int) -> np.ndarray:
    y, x = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return a[y:y + h, x:x + w]


def photometric_jitter(
    img: np.ndarray, rng: np.random.Generator, brightness: float = 0.1, contrast: float = 0.15,
    sharpness: float = 0.5,
) -> np.ndarray:
    """Random brightness (additive, fraction of 255), contrast (about the mean) and sharpness
    (blend with a 3x3 box blur, >1 sharpens) on uint8[S, S] -> uint8[S, S]."""
    a = img.astype(np.float32)
    a = a + np.float32(rng.uniform(-brightness, brightness) * 255.0)
    c = np.float32(rng.uniform(1.0 - contrast, 1.0 + contrast))
    a = (a - a.mean()) * c + a.mean()
    k = np.float32(rng.uniform(1.0 - sharpness, 1.0 + sharpness))
    p = np.pad(a, 1, mode="edge")
    blur = sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9.0
    a = blur + k * (a - blur)
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def residual(ref: np.ndarray, main: np.ndarray) -> np.ndarray:
    """`main - ref` in [-1, 1]: uint8[..., S, S] x2 -> float32[..., S, S] (for tests/plots)."""
    return (main.astype(np.float32) - ref.astype(np.float32)) / 255.0
