"""Per-object crops and features for classifying particles one by one, Qt-free.

Groschner et al. (2021) classified HRTEM particle regions (stacking fault / no fault / ...)
with a random forest on five numbers: the mean, the standard deviation and the centre of
mass of the *radially integrated* FFT magnitude, and the real-space mean and standard
deviation. :func:`patch_features` computes those (``set="groschner"``) and, by default,
a richer set that keeps the radial profile itself (lattice fringes are peaks in it),
intensity percentiles, and the object's shape when a mask is given.

:func:`object_crops` cuts one square crop per labelled object (the bounding box grown by
``pad``, squared, resampled to ``size`` px), the input of both classifier engines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["radial_profile", "patch_features", "feature_names", "object_crops", "shape_features"]

#: radial bins of the FFT profile in the default feature set
N_RADIAL = 16


def _grey(patch: np.ndarray) -> np.ndarray:
    a = np.asarray(patch)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(-1)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D patch, got shape {a.shape}")
    return a.astype(np.float64)


def radial_profile(patch: np.ndarray, n_bins: int | None = None) -> np.ndarray:
    """Radially integrated FFT magnitude of a patch (mean removed, Hann window): the mean
    magnitude in rings of spatial frequency from 0 to Nyquist. With ``n_bins`` the rings
    are that many equal bins of the frequency radius; else one per integer radius."""
    a = _grey(patch)
    a = a - a.mean()
    h, w = a.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    mag = np.abs(np.fft.fftshift(np.fft.fft2(a * win)))
    yy, xx = np.indices((h, w))
    # frequency radius in cycles per pixel, 0 .. 0.5 along the axes
    r = np.hypot((yy - h // 2) / h, (xx - w // 2) / w)
    inside = r <= 0.5
    if n_bins is None:
        n_bins = min(h, w) // 2
    idx = np.minimum((r[inside] / 0.5 * n_bins).astype(int), n_bins - 1)
    sums = np.bincount(idx, weights=mag[inside], minlength=n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    return sums / np.maximum(counts, 1)


def shape_features(mask: np.ndarray) -> dict[str, float]:
    """Area (px), equivalent diameter, eccentricity and solidity of a bool mask."""
    from skimage.measure import regionprops

    m = np.asarray(mask, bool)
    if not m.any():
        return {"area_px": 0.0, "ecd_px": 0.0, "eccentricity": 0.0, "solidity": 0.0}
    p = regionprops(m.astype(np.uint8))[0]
    return {"area_px": float(p.area), "ecd_px": float(2 * np.sqrt(p.area / np.pi)),
            "eccentricity": float(p.eccentricity), "solidity": float(p.solidity)}


def feature_names(set: str = "extended", with_shape: bool = False) -> list[str]:
    """Column names of :func:`patch_features` for a feature set."""
    names = ["fft_mean", "fft_std", "fft_centre_of_mass", "mean", "std"]
    if set == "extended":
        names += [f"fft_r{i:02d}" for i in range(N_RADIAL)]
        names += ["p05", "p50", "p95", "grad_mean"]
    elif set != "groschner":
        raise ValueError(f"unknown feature set {set!r}: use 'groschner' or 'extended'")
    if with_shape:
        names += ["area_px", "ecd_px", "eccentricity", "solidity"]
    return names


def patch_features(patch: np.ndarray, set: str = "extended", mask: np.ndarray | None = None) -> np.ndarray:
    """Feature vector of one patch (see :func:`feature_names` for the order).

    ``"groschner"``: FFT radial-profile mean, std and centre of mass (in cycles per pixel),
    real-space mean and std. ``"extended"`` (default) adds the radial profile in
    :data:`N_RADIAL` bins normalised to its sum (scale-free), the 5/50/95 % intensity
    percentiles and the mean gradient magnitude. Intensities are used as given, so
    normalise patches of different images alike (``object_crops`` does). With ``mask``
    the object's shape is appended.
    """
    a = _grey(patch)
    prof = radial_profile(a)
    f = np.arange(len(prof)) / (2.0 * len(prof))  # cycles per pixel of each ring
    tot = prof.sum()
    com = float((prof * f).sum() / tot) if tot > 0 else 0.0
    out = [float(prof.mean()), float(prof.std()), com, float(a.mean()), float(a.std())]
    if set == "extended":
        rb = radial_profile(a, N_RADIAL)
        out += list(rb / rb.sum()) if rb.sum() > 0 else [0.0] * N_RADIAL
        out += list(np.percentile(a, [5, 50, 95]))
        gy, gx = np.gradient(a)
        out.append(float(np.hypot(gy, gx).mean()))
    elif set != "groschner":
        raise ValueError(f"unknown feature set {set!r}: use 'groschner' or 'extended'")
    if mask is not None:
        out += list(shape_features(mask).values())
    return np.asarray(out, np.float64)


def object_crops(
    image: np.ndarray,
    labels: np.ndarray,
    ids: Sequence[int] | None = None,
    *,
    size: int = 48,
    pad: float = 1.25,
    normalise: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One square crop per labelled object.

    The object's bounding box, grown to ``pad`` times its larger side and made square
    around its centre (reflect-padded at the image border), is resampled to ``size`` x
    ``size``. With ``normalise`` each crop is scaled by the image's robust range (0.5 and
    99.5 %), so crops of one image stay comparable and crops of different images are on
    one scale. Returns ``(crops float32 (N, size, size), masks bool (N, size, size),
    ids)``.
    """
    img = _grey(image)
    lab = np.asarray(labels)
    if lab.shape != img.shape:
        raise ValueError(f"labels {lab.shape} and image {img.shape} differ in shape")
    if ids is None:
        ids = np.unique(lab[lab > 0])
    ids = np.asarray(ids, np.int64)
    if normalise:
        lo, hi = np.percentile(img, [0.5, 99.5])
        img = (img - lo) / max(hi - lo, 1e-12)
    objs = ndi.find_objects(lab.astype(np.int64)) if ids.size else []
    crops = np.zeros((len(ids), size, size), np.float32)
    masks = np.zeros((len(ids), size, size), bool)
    H, W = img.shape
    for k, i in enumerate(ids):
        sl = objs[i - 1] if 0 < i <= len(objs) else None
        if sl is None:
            raise ValueError(f"label {i} is not in the label image")
        cy, cx = (sl[0].start + sl[0].stop) / 2, (sl[1].start + sl[1].stop) / 2
        side = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) * pad
        side = max(side, 4.0)
        # sample a size x size grid of pixel centres over the square (bilinear, reflect)
        t = (np.arange(size) + 0.5) / size * side - side / 2
        ry, rx = cy - 0.5 + t, cx - 0.5 + t
        gy, gx = np.meshgrid(ry, rx, indexing="ij")
        crops[k] = ndi.map_coordinates(img, [gy, gx], order=1, mode="reflect")
        gyi = np.clip(np.rint(gy).astype(int), 0, H - 1)
        gxi = np.clip(np.rint(gx).astype(int), 0, W - 1)
        masks[k] = lab[gyi, gxi] == i
    return crops, masks, ids
