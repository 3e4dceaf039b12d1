"""Vectorised numpy renderer of chest-radiograph-like grayscale images for the synthetic dataset.

Every structure is an analytic function of *anatomical* coordinates (u, v) (u: left-right, v:
top-down, both about [-1, 1]); an acquisition (shift, rotation, scale) maps pixel coordinates to
(u, v), so the same patient is drawn consistently in every study while the acquisition varies,
as in real follow-up X-rays. Findings have large, contrasty signatures so that a small CNN at
64-128 px can learn them:

- pleural effusion: white fluid filling the lung base up to a meniscus (height by level);
- pneumothorax: black, marking-free rim at the lung apex with a thin white pleural line;
- consolidation: dense white blob in the lower-middle lung (size by level);
- atelectasis: white horizontal band across the lower lung (thickness by level);
- edema: bilateral perihilar haze (density by level);
- lung opacity: patchy grey spots in the upper-middle lung (density by level);
- cardiomegaly: a wider heart (width by level).

The patient's right lung is drawn on the image's left (radiographic convention).
"""

from __future__ import annotations

import numpy as np

ASPECT = 1.2  # height / width, like MIMIC-CXR's portrait frontal images


def image_shape(width: int) -> tuple[int, int]:
    """(height, width) of a synthetic image of the given width."""
    return int(round(width * ASPECT)), int(width)


def _soft(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """Anti-aliased mask: 1 inside (signed_distance < 0), 0 outside, over ~`edge` units."""
    return np.clip(0.5 - signed_distance * (0.25 / edge), 0.0, 1.0)


def _ellipse_sd(u, v, cu, cv, au, av):
    """Approximate signed distance to an axis-aligned ellipse (negative inside)."""
    r = np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)
    return (r - 1.0) * min(au, av)


def _coords(height: int, width: int, acq: dict) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical coordinates (u, v), each float32[H, W], for an acquisition
    {shift: (du, dv), rotation: degrees, scale}."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    x = (xs + 0.5) / width * 2.0 - 1.0
    y = ((ys + 0.5) / height * 2.0 - 1.0) * ASPECT
    x = x - acq["shift"][0]
    y = y - acq["shift"][1]
    t = float(np.deg2rad(acq["rotation"]))
    c, s = float(np.cos(t)), float(np.sin(t))
    u = (c * x + s * y) / acq["scale"]
    v = (-s * x + c * y) / acq["scale"]
    return u, v


def _lung_masks(u, v, anat: dict) -> dict[str, np.ndarray]:
    """Soft masks float32[H, W] of the patient's 'right' (image left) and 'left' lung."""
    out = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        cu = sign * anat["lung_dx"]
        ell = _soft(_ellipse_sd(u, v, cu, -0.08, anat["lung_w"], anat["lung_h"]), 0.015)
        dome = anat["dome_v"] - 0.35 * (u - cu) ** 2 + (0.03 if side == "left" else 0.0)
        out[side] = ell * _soft(v - dome, 0.015)
    return out


def _sides(side: str) -> tuple[str, ...]:
    return ("right", "left") if side == "bilateral" else (side,)


def render_frontal(width: int, anat: dict, acq: dict, findings: dict, rng: np.random.Generator):
    """Render a frontal (PA/AP) image, uint8[H, W] with H = round(1.2 W).

    anat: per-subject anatomy (lung_dx, lung_w, lung_h, dome_v, heart_w, heart_h, texture);
    acq: per-study acquisition (shift, rotation, scale, gain, gamma, noise);
    findings: {name: {"level": int 0..2, "side": "left"|"right"|"bilateral"}}.
    """
    h, w = image_shape(width)
    u, v = _coords(h, w, acq)
    body = _soft(_ellipse_sd(u, v, 0.0, 0.15, 0.95, 1.35), 0.03)
    img = 0.08 + 0.47 * body  # air outside, soft tissue inside
    lungs = _lung_masks(u, v, anat)
    lung = np.maximum(lungs["right"], lungs["left"])
    tex = np.zeros_like(u)
    for fu, fv, ph, a in anat["texture"]:  # vascular markings: fixed per subject
        tex += a * np.sin(fu * u + fv * v + ph)
    hilum = np.exp(-(((np.abs(u) - 0.25) / 0.25) ** 2 + ((v + 0.05) / 0.35) ** 2))
    img = img * (1 - lung) + lung * (0.2 + 0.06 * tex * (0.4 + hilum) + 0.08 * hilum)
    # ribs: curved bands inside the thorax, brighter over the lungs
    phase = (v + 0.22 * u**2 + 0.9) * 7.5
    rib = _soft(np.abs(phase - np.round(phase)) - 0.17, 0.04)
    thorax = _soft(_ellipse_sd(u, v, 0.0, -0.1, 0.9, 0.8), 0.02)
    img += 0.11 * rib * thorax * _soft(v - 0.55, 0.02)
    # clavicles
    for sign in (-1.0, 1.0):
        d = np.abs((v + 0.78) - 0.35 * (sign * u - 0.1) * (sign * u > 0.05)) - 0.035
        img += 0.18 * _soft(d, 0.01) * _soft(np.abs(u) - 0.6, 0.02)
    # mediastinum + spine, then heart (cardiomegaly widens it)
    img = np.maximum(img, 0.62 * _soft(np.abs(u) - 0.11, 0.02) * _soft(-0.95 - v, 0.02) * body)
    heart_w = anat["heart_w"]
    if "cardiomegaly" in findings:
        heart_w += 0.07 * (1 + findings["cardiomegaly"]["level"])
    heart = _soft(_ellipse_sd(u, v, 0.08 + 0.3 * (heart_w - 0.28), 0.3, heart_w, anat["heart_h"]),
                  0.02)
    img = img * (1 - heart) + heart * 0.64
    # diaphragm / abdomen below the domes
    below = (1 - lung) * _soft(anat["dome_v"] - 0.1 - v, 0.03) * body
    img = np.maximum(img, 0.6 * below)
    img = _draw_findings(img, u, v, anat, findings, lungs, tex)
    # acquisition: exposure (gain, gamma), quantum noise
    img = np.clip(img, 0.0, 1.0) ** acq["gamma"] * acq["gain"]
    img += rng.standard_normal(img.shape, dtype=np.float32) * acq["noise"]
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def _draw_findings(img, u, v, anat, findings, lungs, tex):
    for name, f in findings.items():
        lvl = f["level"]
        for side in _sides(f["side"]) if name not in ("edema", "cardiomegaly") else ():
            sign = -1.0 if side == "right" else 1.0
            cu = sign * anat["lung_dx"]
            m = lungs[side]
            if name == "pleural effusion":
                top = anat["dome_v"] - (0.25, 0.45, 0.7)[lvl] - 0.25 * ((u - cu) * sign)
                fluid = m * _soft(top - v, 0.02)
                img = img * (1 - fluid) + fluid * 0.72
            elif name == "pneumothorax":
                r = np.sqrt(((u - cu) / anat["lung_w"]) ** 2 + ((v + 0.08) / anat["lung_h"]) ** 2)
                rim = 1.0 - (0.22, 0.34, 0.48)[lvl]
                upper = _soft(v - 0.05, 0.05)
                air = m * upper * _soft(rim - r, 0.01)
                line = m * upper * _soft(np.abs(r - rim) - 0.012, 0.006)
                img = img * (1 - air) + air * 0.03
                img = np.maximum(img, 0.75 * line)
            elif name == "consolidation":
                rad = (0.13, 0.19, 0.25)[lvl]
                blob = m * _soft(_ellipse_sd(u, v, cu + 0.03 * sign, 0.2, rad, rad * 1.2), 0.03)
                img = img * (1 - blob) + blob * 0.78
            elif name == "atelectasis":
                th = (0.035, 0.06, 0.09)[lvl]
                band = m * _soft(np.abs(v - 0.3 - 0.15 * (u - cu) * sign) - th, 0.01)
                img = np.maximum(img, band * 0.75)
            elif name == "lung opacity":
                wave = np.sin(23 * u + 3 * sign) * np.sin(19 * v + 1.3)
                spots = _soft(0.2 - wave - 0.15 * tex, 0.05)
                zone = m * _soft(_ellipse_sd(u, v, cu, -0.25, 0.3, 0.3), 0.04)
                img = img + zone * spots * (0.18, 0.28, 0.38)[lvl]
    if "edema" in findings:
        lvl = findings["edema"]["level"]
        lung = np.maximum(lungs["right"], lungs["left"])
        haze = np.exp(-(((np.abs(u) - 0.3) / 0.35) ** 2 + ((v - 0.0) / 0.45) ** 2))
        kerley = _soft(np.abs(np.sin(40 * v)) - 0.15, 0.05) * _soft(0.45 - np.abs(u) * 0.0 - v, 0.1)
        img = img + lung * (haze * (0.2, 0.3, 0.42)[lvl] + 0.06 * kerley * haze)
    return img


def render_lateral(width: int, anat: dict, acq: dict, rng: np.random.Generator) -> np.ndarray:
    """Render a lateral view, uint8[H, W] (ingestion must skip these)."""
    h, w = image_shape(width)
    u, v = _coords(h, w, acq)
    body = _soft(_ellipse_sd(u, v, 0.0, 0.15, 0.75, 1.3), 0.03)
    img = 0.08 + 0.5 * body
    lung = _soft(_ellipse_sd(u, v, 0.0, -0.1, 0.5, 0.7), 0.02)
    img = img * (1 - lung) + lung * 0.25
    heart = _soft(_ellipse_sd(u, v, -0.25, 0.25, 0.28, 0.3), 0.02)
    img = img * (1 - heart) + heart * 0.62
    spine = _soft(np.abs(u - 0.62) - 0.09, 0.02) * body
    img = np.maximum(img, 0.75 * spine * (0.8 + 0.2 * np.sin(v * 30) ** 2))
    img = np.clip(img, 0.0, 1.0) ** acq["gamma"] * acq["gain"]
    img += rng.standard_normal(img.shape, dtype=np.float32) * acq["noise"]
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def random_anatomy(rng: np.random.Generator) -> dict:
    """Per-subject anatomy, fixed across that subject's studies."""
    return {
        "lung_dx": float(rng.uniform(0.4, 0.46)),
        "lung_w": float(rng.uniform(0.3, 0.35)),
        "lung_h": float(rng.uniform(0.6, 0.68)),
        "dome_v": float(rng.uniform(0.5, 0.6)),
        "heart_w": float(rng.uniform(0.25, 0.3)),
        "heart_h": float(rng.uniform(0.22, 0.27)),
        "texture": [
            (float(rng.uniform(-25, 25)), float(rng.uniform(-25, 25)),
             float(rng.uniform(0, 6.3)), float(rng.uniform(0.3, 1.0)))
            for _ in range(6)
        ],
    }


def random_acquisition(rng: np.random.Generator) -> dict:
    """Per-study acquisition: small shift, rotation, scale; exposure; noise."""
    return {
        "shift": (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
        "rotation": float(rng.uniform(-3.0, 3.0)),
        "scale": float(rng.uniform(0.95, 1.05)),
        "gain": float(rng.uniform(0.85, 1.1)),
        "gamma": float(rng.uniform(0.85, 1.2)),
        "noise": float(rng.uniform(0.008, 0.02)),
    }


def misaligned_pair(width: int, rng: np.random.Generator, misalignment: float = 1.0,
                    findings: dict | None = None):
    """One subject drawn under two random acquisitions (ref, then main) with the same findings,
    and the true transform between them, for testing registration.

    `misalignment` scales the main study's shift and rotation away from the usual follow-up
    range (`random_acquisition`). Returns `(ref uint8[H, W], main uint8[H, W], A float64[2, 2],
    t float64[2])` with `x_ref = A @ x_main + t` in physical coordinates (x across the width in
    [-1, 1], y down the height, square pixels: `real_jax.models.registration`'s convention, which
    equals this renderer's when H / W is exactly ASPECT, e.g. width 120).
    """
    anatomy = random_anatomy(rng)
    acq_ref, acq_main = random_acquisition(rng), random_acquisition(rng)
    acq_main["shift"] = tuple(misalignment * s for s in acq_main["shift"])
    acq_main["rotation"] *= misalignment
    ref = render_frontal(width, anatomy, acq_ref, findings or {}, rng)
    main = render_frontal(width, anatomy, acq_main, findings or {}, rng)
    # pixel -> anatomy is u = R(theta) (x - shift) / scale, so x_ref = M_ref^-1(M_main(x_main)).
    angle = np.deg2rad(acq_main["rotation"] - acq_ref["rotation"])
    c, s = np.cos(angle), np.sin(angle)
    matrix = acq_ref["scale"] / acq_main["scale"] * np.array([[c, s], [-s, c]])
    shift = np.asarray(acq_ref["shift"]) - matrix @ np.asarray(acq_main["shift"])
    return ref, main, matrix, shift
