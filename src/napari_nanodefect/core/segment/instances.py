"""From network maps to instance labels.

The network predicts, per pixel, the probability of being inside an object (``fg``) and
the normalised distance to the object's border (``dist``: 1 at the centre, 0 at the edge).
Objects are the connected components of ``fg > fg_threshold``; inside a component, each
connected region of ``dist > seed_threshold`` is one object's core (a seed). Components
with one seed (or none) are one object; only components with several seeds (touching
particles) are split, by a watershed on ``-dist`` from the seeds, inside that
component's bounding box. This keeps the cost close to a connected-component pass.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: pixels per band when counting seeds (bounded memory on huge images)
SEED_BAND_PIXELS = 4_000_000


def extract_instances(
    fg: np.ndarray,
    dist: np.ndarray,
    fg_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_area_px: float = 6.0,
    class_prob: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels (int32, 0 = background) and the class index of each label.

    ``fg``, ``dist``: 2-D maps in [0, 1] (float or uint8 scaled to 0..255).
    ``class_prob``: optional ``(C, H, W)`` class probabilities; the class of an object is
    the argmax of their mean over its pixels. Returns ``(labels, class_index)`` where
    ``class_index[i - 1]`` is the class of label ``i`` (all zeros without ``class_prob``).
    """
    from skimage.segmentation import watershed

    fg, dist = np.asarray(fg), np.asarray(dist)
    comps, n_comp = ndi.label(_above(fg, fg_threshold))
    if n_comp == 0:
        return np.zeros(fg.shape, np.int32), np.zeros(0, np.int64)
    core = _above(dist, seed_threshold)
    core &= comps > 0
    # seeds per component, counted band by band so that no whole-image seed label array is
    # needed (memory): a seed crossing a band border is counted twice, which only flags its
    # component for the exact local check below
    per_comp = np.zeros(n_comp + 1, np.int64)
    band = max(1, SEED_BAND_PIXELS // max(fg.shape[1], 1))
    for r0 in range(0, fg.shape[0], band):
        sb, ns = ndi.label(core[r0:r0 + band])
        if ns:
            idx = np.flatnonzero(sb)
            seed_comp = np.zeros(ns + 1, np.int64)
            seed_comp[sb.ravel()[idx]] = comps[r0:r0 + band].ravel()[idx]
            per_comp += np.bincount(seed_comp[1:], minlength=n_comp + 1)
    labels = comps  # relabelled in place: split objects get labels above n_comp
    multi = np.flatnonzero(per_comp > 1)
    if multi.size:
        next_label = n_comp + 1
        slices = ndi.find_objects(comps)
        for c in multi:
            sl = slices[c - 1]
            region = comps[sl] == c
            markers, n_seeds = ndi.label(core[sl] & region)
            if n_seeds < 2:
                continue
            ws = watershed(_inverted(dist[sl]), markers=markers, mask=region)
            # relabel: the first seed keeps the component's label, the others get new ones
            ids = np.unique(ws[ws > 0])
            lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.int32)
            lut[ids[0]] = c
            lut[ids[1:]] = np.arange(next_label, next_label + len(ids) - 1)
            next_label += len(ids) - 1
            out = labels[sl]
            out[region] = lut[ws[region]]
            # pixels of the component not reached by any seed stay with the first object
    del core
    labels = _remove_small(labels, min_area_px)
    n = int(labels.max())
    if class_prob is None or n == 0:
        return labels, np.zeros(n, np.int64)
    flat = labels.ravel()
    sums = np.stack([np.bincount(flat, weights=np.asarray(p).ravel(), minlength=n + 1)[1:] for p in class_prob])
    return labels, sums.argmax(axis=0)


def _above(a: np.ndarray, threshold: float) -> np.ndarray:
    """``a > threshold`` for maps in [0, 1], or uint8 maps holding probability x 255."""
    return a > (threshold * 255.0 if a.dtype == np.uint8 else threshold)


def _inverted(a: np.ndarray) -> np.ndarray:
    """Landscape for the watershed: low at object centres."""
    return (255 - a) if a.dtype == np.uint8 else -a.astype(np.float32)


def _remove_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    """Drop objects smaller than ``min_area`` pixels and renumber the rest 1..n (in place).
    Works in row bands: ``bincount`` and fancy indexing would otherwise make whole-image
    int64 copies of the labels (512 MB at 8192²)."""
    n = int(labels.max())
    if n == 0:
        return labels
    band = max(1, SEED_BAND_PIXELS // max(labels.shape[1], 1))
    area = np.zeros(n + 1, np.int64)
    for r0 in range(0, labels.shape[0], band):
        area += np.bincount(labels[r0:r0 + band].ravel(), minlength=n + 1)
    keep = area >= max(min_area, 1)
    keep[0] = False
    if keep[1:].all():
        return labels
    lut = (np.cumsum(keep) * keep).astype(np.int32)
    for r0 in range(0, labels.shape[0], band):
        labels[r0:r0 + band] = lut[labels[r0:r0 + band]]
    return labels
