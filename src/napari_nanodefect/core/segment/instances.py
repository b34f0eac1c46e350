"""From network maps to instance labels.

The network predicts, per pixel, the probability of being inside an object (``fg``) and
the normalised distance to the object's border (``dist``: 1 at the centre, 0 at the edge).
Objects are the connected components of ``fg > fg_threshold``; inside a component, each
connected region of ``dist > seed_threshold`` is one object's core (a seed). Components
with one seed (or none) are one object; only components with several seeds (touching
particles) are split, by a watershed on ``-dist`` from the seeds, inside that
component's bounding box. This keeps the cost close to a connected-component pass.

With ``peak_h > 0`` the seeds are instead the peaks of the (slightly smoothed) distance
map that rise at least ``peak_h`` above the saddle to any higher peak (h-maxima), so two
overlapping particles whose cores touch above ``seed_threshold`` are still two objects
when the map dips between them. Only components large enough to hold two objects are
examined.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: pixels per band when counting seeds (bounded memory on huge images)
SEED_BAND_PIXELS = 4_000_000
#: the contrast filter decides the particles' polarity from at least this many objects
MIN_OBJECTS_FOR_POLARITY = 4


def extract_instances(
    fg: np.ndarray,
    dist: np.ndarray,
    fg_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    min_area_px: float = 6.0,
    class_prob: np.ndarray | None = None,
    peak_h: float = 0.0,
    peak_sigma_px: float = 1.0,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels (int32, 0 = background) and the class index of each label.

    ``fg``, ``dist``: 2-D maps in [0, 1] (float or uint8 scaled to 0..255).
    ``class_prob``: optional ``(C, H, W)`` class probabilities; the class of an object is
    the argmax of their mean over its pixels. Returns ``(labels, class_index)`` where
    ``class_index[i - 1]`` is the class of label ``i`` (all zeros without ``class_prob``).
    ``peak_h`` > 0: seeds are the distance map's h-maxima (:func:`split_by_peaks`; the
    map smoothed by a Gaussian of ``peak_sigma_px``) instead of its regions above
    ``seed_threshold``.
    ``exclude``: labels of objects already found (same shape); components of
    ``fg > fg_threshold`` that overlap or touch one of them are dropped before any
    splitting (a second, looser extraction then costs only what is new).
    """
    from skimage.segmentation import watershed

    fg, dist = np.asarray(fg), np.asarray(dist)
    comps, n_comp = ndi.label(_above(fg, fg_threshold))
    if exclude is not None and n_comp:
        if exclude.shape != comps.shape:
            raise ValueError(f"exclude shape {exclude.shape} differs from the maps' {comps.shape}")
        drop = _touching(comps, n_comp, exclude)
        drop[0] = True
        if drop[1:].any():
            lut = np.cumsum(~drop).astype(np.int32) * ~drop
            n_comp = int(lut.max())
            band = max(1, SEED_BAND_PIXELS // max(comps.shape[1], 1))
            for r0 in range(0, comps.shape[0], band):
                comps[r0:r0 + band] = lut[comps[r0:r0 + band]]
    if n_comp == 0:
        return np.zeros(fg.shape, np.int32), np.zeros(0, np.int64)
    if peak_h > 0:
        labels = split_by_peaks(comps, n_comp, dist, peak_h, peak_sigma_px, 2 * min_area_px)
        return _finish(labels, min_area_px, class_prob)
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
    return _finish(labels, min_area_px, class_prob)


def _finish(labels: np.ndarray, min_area_px: float, class_prob: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    labels = _remove_small(labels, min_area_px)
    n = int(labels.max())
    if class_prob is None or n == 0:
        return labels, np.zeros(n, np.int64)
    flat = labels.ravel()
    sums = np.stack([np.bincount(flat, weights=np.asarray(p).ravel(), minlength=n + 1)[1:] for p in class_prob])
    return labels, sums.argmax(axis=0)


#: with ``peak_h`` seeds, peaks of the normalised distance below this are not seeds
#: (ragged rims of an object, not a particle's core)
PEAK_FLOOR = 0.2


def split_by_peaks(comps: np.ndarray, n_comp: int, dist: np.ndarray, h: float, sigma_px: float,
                   min_split_area: float) -> np.ndarray:
    """Split connected components (``comps``, labels 1..``n_comp``, relabelled in place
    and returned) at the peaks of the distance map.

    Inside each component of at least ``min_split_area`` pixels (smaller ones cannot hold
    two objects), the distance map (0..1, or uint8 x255), zero outside the component, is
    smoothed by a Gaussian of ``sigma_px``; its h-maxima of height ``h`` above
    :data:`PEAK_FLOOR` are the seeds, and with two or more the component is divided by a
    watershed on the negated map. Work is per component bounding box, so the cost follows
    the number of large components, not the image size."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    band = max(1, SEED_BAND_PIXELS // max(comps.shape[1], 1))
    area = np.zeros(n_comp + 1, np.int64)
    for r0 in range(0, comps.shape[0], band):
        area += np.bincount(comps[r0:r0 + band].ravel(), minlength=n_comp + 1)
    big = np.flatnonzero(area >= max(min_split_area, 2))
    big = big[big > 0]
    if big.size == 0:
        return comps
    unit = 255.0 if dist.dtype == np.uint8 else 1.0
    pad = int(np.ceil(3 * sigma_px)) + 1 if sigma_px > 0 else 1
    slices = ndi.find_objects(comps)
    H, W = comps.shape
    next_label = n_comp + 1
    for c in big:
        sl = slices[c - 1]
        if sl is None:
            continue
        sl = (slice(max(sl[0].start - pad, 0), min(sl[0].stop + pad, H)),
              slice(max(sl[1].start - pad, 0), min(sl[1].stop + pad, W)))
        region = comps[sl] == c
        d = np.where(region, dist[sl].astype(np.float32) / unit, np.float32(0))
        if sigma_px > 0:
            d = ndi.gaussian_filter(d, sigma_px)
        # a tilt far below the maps' resolution breaks ties between equal peaks: h_maxima
        # keeps every peak of a tied maximum, however shallow the dip between them
        hh, ww = d.shape
        d += np.float32(1e-4 / (hh + ww)) * (np.arange(hh, dtype=np.float32)[:, None] + np.arange(ww, dtype=np.float32))
        core = region & (d > PEAK_FLOOR)
        # exact shortcut: h-maxima are regional maxima, each a separate patch of local
        # maxima, so a component with one such patch (most of them) holds one object
        if ndi.label(core & (d >= ndi.maximum_filter(d, size=3)))[1] < 2:
            continue
        peaks = h_maxima(d, h) & core
        markers, n = ndi.label(peaks)
        if n < 2:
            continue
        ws = watershed(-d, markers=markers, mask=region)
        out = comps[sl]
        for k in range(2, n + 1):
            out[ws == k] = next_label
            next_label += 1
    return comps


def object_contrast(labels: np.ndarray, image: np.ndarray, ring_px: int) -> np.ndarray:
    """Per object (labels 1..n), the mean image value inside it minus the mean over a ring
    of background pixels up to ``ring_px`` pixels around it (pixels of other objects are
    not ring; a background pixel near several objects counts for the highest label).
    NaN where an object has no ring pixel (packed among others). Computed in row bands:
    memory stays a few band-sized arrays, whatever the image size."""
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0)
    if image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} differs from labels shape {labels.shape}")
    g = max(1, int(ring_px))
    H, W = labels.shape
    slices = ndi.find_objects(labels)
    boxes = sum((min(sl[0].stop + 2 * g, H) - max(sl[0].start - 2 * g, 0))
                * (min(sl[1].stop + 2 * g, W) - max(sl[1].start - 2 * g, 0)) for sl in slices if sl is not None)
    if boxes <= SPARSE_CONTRAST_FRACTION * H * W:
        return _contrast_by_object(labels, image, g, slices)
    band = max(1, SEED_BAND_PIXELS // max(W, 1))
    obj_sum = np.zeros(n + 1)
    obj_cnt = np.zeros(n + 1)
    ring_sum = np.zeros(n + 1)
    ring_cnt = np.zeros(n + 1)
    for r0 in range(0, H, band):
        r1 = min(r0 + band, H)
        a0, a1 = max(r0 - g, 0), min(r1 + g, H)
        lab = labels[a0:a1]
        near = ndi.maximum_filter(lab, size=2 * g + 1, mode="constant", cval=0)[r0 - a0 : r1 - a0]
        lab = lab[r0 - a0 : r1 - a0].ravel()
        img = np.asarray(image[r0:r1], dtype=np.float64).ravel()
        obj_sum += np.bincount(lab, weights=img, minlength=n + 1)
        obj_cnt += np.bincount(lab, minlength=n + 1)
        ring = (lab == 0) & (near.ravel() > 0)
        ring_sum += np.bincount(near.ravel()[ring], weights=img[ring], minlength=n + 1)
        ring_cnt += np.bincount(near.ravel()[ring], minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (obj_sum / obj_cnt - ring_sum / ring_cnt)[1:]


#: :func:`object_contrast` works object by object (in each object's box, padded by twice
#: the ring) when those boxes cover at most this fraction of the image: a few objects in
#: a large image then cost only their boxes, not whole-image filters
SPARSE_CONTRAST_FRACTION = 0.25


def _contrast_by_object(labels: np.ndarray, image: np.ndarray, g: int, slices) -> np.ndarray:
    """:func:`object_contrast` computed in each object's box padded by ``2 g``: a ring
    pixel lies within ``g`` of its object and its neighbourhood within ``g`` of it, so the
    box's own maximum filter gives exactly the whole image's there."""
    H, W = labels.shape
    out = np.full(len(slices), np.nan)
    for k, sl in enumerate(slices, 1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - 2 * g, 0), min(sl[0].stop + 2 * g, H)
        x0, x1 = max(sl[1].start - 2 * g, 0), min(sl[1].stop + 2 * g, W)
        lab = labels[y0:y1, x0:x1]
        img = np.asarray(image[y0:y1, x0:x1], dtype=np.float64)
        near = ndi.maximum_filter(lab, size=2 * g + 1, mode="constant", cval=0)
        ring = (lab == 0) & (near == k)
        if ring.any():
            out[k - 1] = img[lab == k].mean() - img[ring].mean()
    return out


def drop_reversed_contrast(labels: np.ndarray, image: np.ndarray, ring_px: int,
                           return_contrast: bool = False) -> tuple[np.ndarray, ...]:
    """Remove objects whose contrast with their surroundings (:func:`object_contrast`) has
    the opposite sign to the image's particles: in a HAADF image, an "object" darker than
    its own surroundings is a gap between bright support clumps, not a particle (and vice
    versa in bright field). The particles' sign is that of the median contrast of the
    most contrasted quarter of the objects (weak gaps can outnumber the particles, as on a
    clumpy W/C support; they rarely outshine them). Objects without a ring are kept, and
    so is everything with fewer than :data:`MIN_OBJECTS_FOR_POLARITY` measurable objects or
    a zero median. Returns ``(labels, keep)``: labels renumbered 1..m in place, ``keep`` a
    boolean mask over the old labels 1..n; with ``return_contrast`` also the contrasts of
    the kept objects 1..m."""
    c = object_contrast(labels, image, ring_px)
    keep = np.ones(c.size, bool)
    finite = np.isfinite(c)
    if finite.sum() >= MIN_OBJECTS_FOR_POLARITY:
        cf = c[finite]
        strongest = cf[np.argsort(-np.abs(cf), kind="stable")[: int(np.ceil(cf.size / 4))]]
        polarity = np.sign(np.median(strongest))
        if polarity != 0:
            keep = ~finite | (polarity * c > 0)
    if keep.all():
        return (labels, keep, c) if return_contrast else (labels, keep)
    lut = np.zeros(c.size + 1, np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    band = max(1, SEED_BAND_PIXELS // max(labels.shape[1], 1))
    for r0 in range(0, labels.shape[0], band):
        labels[r0:r0 + band] = lut[labels[r0:r0 + band]]
    return (labels, keep, c[keep]) if return_contrast else (labels, keep)


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


def _touching(labels: np.ndarray, n: int, first: np.ndarray) -> np.ndarray:
    """Boolean over labels 0..n: which objects of ``labels`` have a pixel in or next to
    (sharing an edge with) an object of ``first``. Row bands: memory stays band-sized."""
    H, W = labels.shape
    band = max(1, SEED_BAND_PIXELS // max(W, 1))
    touching = np.zeros(n + 1, bool)
    for r0 in range(0, H, band):
        r1 = min(r0 + band, H)
        a0, a1 = max(r0 - 1, 0), min(r1 + 1, H)
        near = ndi.binary_dilation(first[a0:a1] > 0)[r0 - a0 : r1 - a0]
        touching |= np.bincount(labels[r0:r1][near], minlength=n + 1) > 0
    return touching


def add_missed_objects(labels: np.ndarray, extra: np.ndarray, image: np.ndarray, ring_px: int,
                       min_contrast: float = 0.5, in_place: bool = False,
                       need_reference: bool = False, contrast: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Add to ``labels`` the objects of ``extra`` (a second segmentation of the same image,
    e.g. at a finer scale) that the first one missed.

    An object of ``extra`` is added when none of its pixels is in or next to (sharing an
    edge with) an object of ``labels``, and it stands out from its surroundings like the particles
    already found: its :func:`object_contrast` has the sign of the median contrast of the
    objects of ``labels`` and at least ``min_contrast`` times its size. Objects without a
    ring (packed among others) pass the contrast test. With fewer than
    :data:`MIN_OBJECTS_FOR_POLARITY` measurable objects in ``labels`` the sign is taken from
    ``extra``'s own objects and the size is not tested, or, with ``need_reference=True``,
    nothing is added. ``contrast``: the :func:`object_contrast` of ``labels``' objects
    1..n when the caller has it already (same ``image`` and ``ring_px``).

    Returns ``(merged, keep)``: a new label image (``labels`` itself, updated, with
    ``in_place=True`` and int32 labels), with the objects of ``labels`` unchanged and the
    added ones numbered after them in their order in ``extra``, and ``keep``, a boolean mask
    over ``extra``'s labels 1..m. Works in row bands: besides the result, memory stays a
    few band-sized arrays."""
    if labels.shape != extra.shape or labels.shape != image.shape:
        raise ValueError(f"shapes differ: labels {labels.shape}, extra {extra.shape}, image {image.shape}")
    in_place = in_place and labels.dtype == np.int32
    n1 = int(labels.max()) if labels.size else 0
    m = int(extra.max()) if extra.size else 0
    if m == 0:
        return (labels if in_place else labels.copy()), np.zeros(0, bool)
    H, W = labels.shape
    band = max(1, SEED_BAND_PIXELS // max(W, 1))
    touching = _touching(extra, m, labels)  # in or next to a first-pass object
    present = np.zeros(m + 1, bool)
    for r0 in range(0, H, band):
        present |= np.bincount(extra[r0:r0 + band].ravel(), minlength=m + 1) > 0
    keep = (present & ~touching)[1:]
    c2 = object_contrast(extra, image, ring_px)
    if contrast is not None and len(contrast) != n1:
        raise ValueError(f"contrast has {len(contrast)} values for {n1} objects")
    c1 = (object_contrast(labels, image, ring_px) if contrast is None else np.asarray(contrast, float)) if n1 else np.zeros(0)
    c1 = c1[np.isfinite(c1)]
    measurable = np.isfinite(c2)
    if c1.size >= MIN_OBJECTS_FOR_POLARITY and np.median(c1) != 0:
        ref = float(np.median(c1))
        ok = ~measurable | (np.where(measurable, c2, 0.0) * np.sign(ref) >= min_contrast * abs(ref))
    elif need_reference:
        ok = np.zeros(m, bool)
    else:
        own = c2[measurable]
        sign = np.sign(np.median(own)) if own.size >= MIN_OBJECTS_FOR_POLARITY else 0.0
        ok = ~measurable | (np.where(measurable, c2, 0.0) * sign > 0) if sign != 0 else np.ones(m, bool)
    keep &= ok
    lut = np.zeros(m + 1, np.int32)
    lut[1:][keep] = np.arange(n1 + 1, n1 + 1 + int(keep.sum()), dtype=np.int32)
    merged = labels if in_place else np.asarray(labels, np.int32).copy()
    for r0 in range(0, H, band):
        new = lut[extra[r0:r0 + band]]
        np.copyto(merged[r0:r0 + band], new, where=new > 0)
    return merged, keep
