"""Procedural micrographs with exact ground truth.

A small generator for tests and the demo: particles with log-normal sizes (round and
elliptical), touching neighbours, support texture, a brightness gradient, blur and
Poisson/Gaussian noise; ``mode="haadf"`` gives bright particles on a dark support,
``mode="bf"`` dark particles on a bright one (BF-TEM / SEM-like).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class SyntheticImage:
    image: np.ndarray  #: uint8 or uint16 micrograph
    labels: np.ndarray  #: uint16 instance labels, 0 = background
    classes: dict[int, str]  #: label -> class name
    pixel_size_nm: float
    diameters_nm: np.ndarray  #: the drawn equivalent diameters, one per label (label i -> index i-1)


def make_particles(
    shape: tuple[int, int] = (512, 512),
    n: int = 120,
    median_diameter_nm: float = 12.0,
    sigma: float = 0.25,
    pixel_size_nm: float = 0.5,
    mode: str = "haadf",
    noise: float = 0.06,
    seed: int = 0,
    touching: float = 0.2,
) -> SyntheticImage:
    """Draw ``n`` non-overlapping elliptical particles and render a noisy micrograph.

    ``touching`` is the fraction of particles placed right next to an earlier one
    (touching pairs are what instance separation must get right).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[0:h, 0:w]
    diam = []
    centres: list[tuple[float, float, float]] = []
    lab = 0
    tries = 0
    while lab < n and tries < n * 50:
        tries += 1
        d_nm = float(np.exp(np.log(median_diameter_nm) + sigma * rng.standard_normal()))
        r = d_nm / pixel_size_nm / 2
        ar = rng.uniform(1.0, 1.4)
        a, b = r * np.sqrt(ar), r / np.sqrt(ar)
        if centres and rng.random() < touching:
            cy, cx, cr = centres[rng.integers(len(centres))]
            ang = rng.uniform(0, 2 * np.pi)
            dist = cr + a + 0.5
            y, x = cy + dist * np.sin(ang), cx + dist * np.cos(ang)
        else:
            y, x = rng.uniform(a, h - a), rng.uniform(a, w - a)
        theta = rng.uniform(0, np.pi)
        y0, y1 = int(max(0, y - a - 2)), int(min(h, y + a + 3))
        x0, x1 = int(max(0, x - a - 2)), int(min(w, x + a + 3))
        if y1 <= y0 or x1 <= x0:
            continue
        dy, dx = yy[y0:y1, x0:x1] - y, xx[y0:y1, x0:x1] - x
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        if inside.sum() < 4:
            continue
        # keep a one-pixel gap so labels stay separate objects
        grown = ndi.binary_dilation(inside)
        if (labels[y0:y1, x0:x1][grown] != 0).any():
            continue
        lab += 1
        labels[y0:y1, x0:x1][inside] = lab
        centres.append((y, x, a))
        diam.append(2 * np.sqrt(inside.sum() / np.pi) * pixel_size_nm)
    fg = labels > 0
    dist = ndi.distance_transform_edt(fg)
    # particle signal: brighter towards the centre (thickness), support: smooth texture
    signal = np.where(fg, 0.55 + 0.45 * np.tanh(dist / 3.0), 0.0)
    support = ndi.gaussian_filter(rng.standard_normal(shape), 6) * 0.25
    gradient = np.linspace(-0.08, 0.08, w)[None, :] + np.linspace(-0.05, 0.05, h)[:, None]
    img = 0.18 + support * 0.3 + gradient + 0.6 * signal
    img = ndi.gaussian_filter(img, 1.0)
    img = rng.poisson(np.clip(img, 0, None) * 400) / 400.0 + rng.normal(0, noise, shape)
    if mode == "bf":
        img = 1.0 - img
    elif mode != "haadf":
        raise ValueError(f"mode must be 'haadf' or 'bf', got {mode!r}")
    img = np.clip((img - np.percentile(img, 0.5)) / (np.percentile(img, 99.5) - np.percentile(img, 0.5)), 0, 1)
    return SyntheticImage(
        image=(img * 255).astype(np.uint8),
        labels=labels,
        classes={i: "particle" for i in range(1, lab + 1)},
        pixel_size_nm=pixel_size_nm,
        diameters_nm=np.asarray(diam),
    )
