"""Synthetic rehearsal: procedural micrographs mixed into a fine-tune.

Fine-tuning the starter on two crops of one kind of image (say HAADF) for a minute moves
the network towards those crops and away from what the starter knew about other images
(bright-field particles on carbon, faint particles, other sizes). A few of the starter's
own kind of training images (:func:`~napari_nanodefect.core.synthetic.random_micrograph`:
HAADF, bright-field, SEM and STM-like, every particle labelled exactly) drawn into the
fine-tuning batches keep that knowledge while the user's crops teach what is new
("rehearsal" against forgetting).

The synthetic regions are made the way ``scripts/train_starter.py`` makes the starter's:
each image rescaled so its median particle is ``object_diameter_px`` wide, the support
subtracted as the model will see it (``background_size``), at most ``max_side`` network
px a side. They are training pixels only (no validation cells), so validation stays on the
user's crops. On the STEM few-shot benchmark (two Cu crops, 60 s), 8 regions raised the
pooled F1 of three seeds from 0.724 / 0.746 / 0.777 to 0.784 / 0.786 / 0.767
(benchmarks/RESULTS.md, 2026-12-06).
"""

from __future__ import annotations

import numpy as np

from ..synthetic import random_micrograph
from .background import estimate_background
from .data import Region, region_from_labels

#: synthetic regions mixed into a fine-tune of the shipped starter (single class), by default
DEFAULT_REHEARSAL = 8
#: the share of the training patches centred in the synthetic regions
REHEARSAL_SHARE = 0.5


def median_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent diameter (px) of the objects in ``labels``; None without objects."""
    a = np.bincount(labels.ravel())[1:]
    a = a[a > 0]
    return float(np.median(2 * np.sqrt(a / np.pi))) if a.size else None


def flattened(image: np.ndarray, diameter_px: float, background_size: float) -> np.ndarray:
    """``image`` minus its support (a median filter ``background_size`` particle diameters
    wide, particles ``diameter_px`` image px), computed on the whole image before any
    cropping; unchanged when ``background_size`` is 0."""
    if not background_size:
        return image
    return estimate_background(image, diameter_px, None, background_size).subtract(image)


def synthetic_regions(n: int, seed: int, object_diameter_px: float, max_side: int = 320,
                      extra_clouds: float = 0.0, background_size: float = 0.0,
                      faint_haadf: float = 0.0) -> list[Region]:
    """Training regions from ``n`` random synthetic micrographs (256 x 256, fewer regions
    when a draw has no particle, or no crop of it holds one), deterministic for a ``seed``;
    every region holds particles.

    ``extra_clouds``: the fraction of images given strong support clumps on top of those
    :func:`random_micrograph` draws itself (clouds 0.4-1.0 x a particle's peak);
    ``faint_haadf``: passed to :func:`random_micrograph` (0 in the fine-tune's rehearsal)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        over = {}
        if extra_clouds and rng.random() < extra_clouds:
            over = {"clouds": float(rng.uniform(0.4, 1.0)), "cloud_size": float(np.exp(rng.uniform(np.log(1.3), np.log(4.0))))}
        s = random_micrograph(rng, shape=(256, 256), faint_haadf=faint_haadf, **over)
        d = median_diameter(s.labels)
        if d is None:
            continue
        scale = float(np.clip(object_diameter_px / d, 0.3, 4.0))
        img, lab = flattened(s.image, object_diameter_px / scale, background_size), s.labels
        side = int(max_side / scale)
        if side < img.shape[0]:  # keep scaled regions small: crop before upscaling
            # a crop that holds particles (crowded fields can leave vacuum between patches)
            for _ in range(8):
                y0, x0 = rng.integers(0, img.shape[0] - side + 1, size=2)
                if lab[y0 : y0 + side, x0 : x0 + side].any():
                    break
            else:
                continue
            img, lab = img[y0 : y0 + side, x0 : x0 + side], lab[y0 : y0 + side, x0 : x0 + side]
        out.append(region_from_labels(img, lab, scale, val_fraction=0.0, name=f"synthetic{i}"))
    return out
