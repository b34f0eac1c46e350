"""Click-to-label: propose the outline of the particle under a click (Qt-free).

:func:`propose_object` segments *one* particle around a clicked point and returns it as
a :class:`Proposal` (a boolean mask over a small window plus the window's offset). The
napari widget turns it into a new label; scripts can use it as is. Only numpy, scipy and
scikit-image are needed; torch is imported only when a model is passed.

Method ``"threshold"`` (seeded local segmentation, a few ms a click)
    Only a window around the click is read, ``WINDOW_DIAMETERS`` (5) expected diameters
    ``d`` wide (at least 32 px, at most ``max_window``), never the whole image:

    1. *diameter and polarity.* Without ``diameter_px``, ``d`` comes from
       :func:`estimate_diameter` (the scale of the scale-normalised Laplacian-of-Gaussian
       response at the click). With ``polarity="auto"`` the sign of that response (the
       click against its surroundings) decides bright-on-dark or dark-on-bright; dark
       objects are handled by negating the window;
    2. *levels.* The window is robust-normalised (0.5/99.5 percentiles) and smoothed
       (Gaussian, σ = d/16 clipped to 0.7–2.5 px). Particle level ``p``: the highest
       smoothed value within d/5 of the click (a click need not hit the centre).
       Background ``b``: the sigma-clipped median of a ring 0.7–1.2 d around the click
       (the local support: a particle on a thick grain sits on the grain). Noise: the
       spread (MAD) of the window minus its blur at d/2, on pixels more than d/4 away
       from anything above the seed level (pixel noise and the support's texture up to
       half a particle; neither particles nor their edges, however crowded). A click
       where ``p − b`` is below ``MIN_CONTRAST_SIGMAS`` (3) noise sigmas (more for
       objects under 8 px) is refused: nothing stands out there;
    3. *seed.* Threshold half-way, ``b + 0.5·(p − b)`` (the particle's own level, so a
       dim particle beside a bright one is found, where one Otsu level per window would
       not); the connected component holding the click (or the nearest within d/4),
       holes filled. Labelled pixels (``labels > 0``) are never foreground;
    4. *touching particles.* The seed is split by watershed and the basin holding the
       click is kept: first on the smoothed intensity, from maxima rising more than
       ``max(0.1·(p − b), 0.5·noise)`` above their saddle (touching particles of
       different brightness, or with a dip between them); then on the distance
       transform, from maxima rising more than ``max(1 px, 0.2·largest radius)`` (necks);
    5. *edge.* The half-way level lies inside a blurred or domed edge, so the piece grows
       back (hysteresis) by at most 0.15·d px into pixels above ``b + 0.2·(p − b)``
       where the intensity is still concave (Laplacian ≤ ~0): a blurred step stops at its
       inflection, a domed particle reaches its steep rim; never into other basins or
       labels;
    6. *looks.* A binary opening and closing with a disk of radius d/12 (objects ≥ 8 px)
       removes the pixel staircase, so the outline looks drawn by hand; the piece at the
       click is kept, holes filled.

    Plausibility: when the result touches the window's border the window is doubled (up
    to ``max_window``), and the click is refused if it still does (a click on the support
    flooding a region). With a given diameter, a result under d/2 must stand out again at
    its own scale; a click refused at ``d`` inside a blob over 2 d is outlined at the
    blob's size (a particle much larger than the median). Without a diameter, a result
    under half the blob scale is refused (a texture clump), and one off by more than 1.4×
    is segmented once more at its measured size.

Method ``"model"`` (``model`` is a :class:`~napari_nanodefect.core.segment.LoadedModel`)
    The network runs on a window around the click (6 diameters, at least 192 network
    pixels, at most ``max_window``) at the scale given by the pixel sizes when the model
    and the image both know theirs, else ``object_diameter_px / d`` (d given, or
    estimated as above), else ``"auto"``. The instance under the click (or the nearest
    within d/4), minus labelled pixels, is returned. When the model finds nothing there
    the threshold method answers (``method="threshold"``).

Coordinates: ``point`` is ``(row, col)`` in napari data coordinates (pixel centres at
integers), so the clicked pixel is ``(round(row), round(col))``. See ``docs/propose.md``
for the measured accuracy and speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import NanodefectError

if TYPE_CHECKING:  # pragma: no cover
    from ..segment.model import LoadedModel

__all__ = ["POLARITIES", "Proposal", "estimate_diameter", "propose_object"]

POLARITIES = ("auto", "bright", "dark")

#: the window is this many expected diameters wide (capped by ``max_window``)
WINDOW_DIAMETERS = 5.0
#: smallest window side (px)
MIN_WINDOW = 32
#: seed threshold = background + EDGE_LEVEL x (particle level - background)
EDGE_LEVEL = 0.5
#: the seed grows back into pixels above background + GROW_LEVEL x contrast ...
GROW_LEVEL = 0.2
#: ... by at most GROW_STEPS x diameter px (at least 1)
GROW_STEPS = 0.15
#: ... and only where the intensity is still concave (Laplacian x sigma^2 / contrast below this):
#: a step edge stops at its inflection, a domed particle's steep rim is reached
GROW_CURVATURE = 0.05
#: a click is refused when the particle level is less than this many noise sigmas above the background
MIN_CONTRAST_SIGMAS = 3.0
#: below this diameter (px) the contrast needed grows ...
SMALL_DIAMETER = 8.0
#: ... as (SMALL_DIAMETER / d) ** SMALL_EXPONENT
SMALL_EXPONENT = 0.5
#: smallest accepted proposal (px)
MIN_AREA_PX = 4
#: background statistics: values above median + CLIP_SIGMAS x sigma are clipped off, CLIP_ROUNDS times
CLIP_SIGMAS = 2.5
CLIP_ROUNDS = 3
#: the background level is taken on a ring RING[0]..RING[1] diameters from the click
RING = (0.7, 1.2)
#: the noise is the spread of the window minus its Gaussian blur at NOISE_SCALE x diameter (>= NOISE_MIN_PX)
NOISE_SCALE = 0.5
NOISE_MIN_PX = 3.0
#: intensity split: maxima must rise max(SPLIT_INTENSITY x contrast, SPLIT_NOISE x noise) above their saddle
SPLIT_INTENSITY = 0.1
SPLIT_NOISE = 0.5
#: shape split: distance-transform maxima must rise max(1 px, SPLIT_DYNAMIC x largest radius)
SPLIT_DYNAMIC = 0.2
#: outline smoothing: opening/closing disk radius = diameter / SMOOTH_DIVISOR (objects >= 8 px)
SMOOTH_DIVISOR = 12.0
#: no diameter given: re-segment at the measured size when it is this far off the blob scale
REESTIMATE = 1.4
#: size checks (see the module docstring): a factor of 2 between expected and found sizes
MISMATCH = 2.0
#: blob scales probed by :func:`estimate_diameter` are this factor apart ...
SCALE_STEP = 2 ** 0.25
#: ... and the smallest scale with a local maximum of at least this fraction of the largest wins
PEAK_FRACTION = 0.5
#: the model window is at least this many network pixels wide
MODEL_MIN_NETWORK_PX = 192


@dataclass
class Proposal:
    """One proposed object.

    Attributes
    ----------
    mask : numpy.ndarray
        bool, the window around the click; True on the object.
    offset : tuple of int
        ``(row0, col0)`` of the window in the image.
    method : str
        ``"threshold"`` or ``"model"``: what produced the mask.
    diameter_px : float
        Equivalent diameter ``2·sqrt(area/π)`` of the object (px).
    """

    mask: np.ndarray
    offset: tuple[int, int]
    method: str
    diameter_px: float

    @property
    def area_px(self) -> int:
        """Number of object pixels."""
        return int(np.count_nonzero(self.mask))

    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Absolute ``(rows, cols)`` of the object pixels in the image."""
        r, c = np.nonzero(self.mask)
        return r + self.offset[0], c + self.offset[1]

    def bbox(self) -> tuple[slice, slice]:
        """Absolute slices of the window in the image (``labels[p.bbox()][p.mask] = new``)."""
        r0, c0 = self.offset
        return slice(r0, r0 + self.mask.shape[0]), slice(c0, c0 + self.mask.shape[1])


# -- public entry points -------------------------------------------------------------------


def propose_object(
    image: np.ndarray,
    point: tuple[float, float],
    *,
    diameter_px: float | None = None,
    labels: np.ndarray | None = None,
    polarity: str = "auto",
    model: LoadedModel | None = None,
    pixel_size_nm: float | None = None,
    max_window: int = 512,
) -> Proposal:
    """Propose the outline of the particle at ``point`` (see the module docstring).

    Parameters
    ----------
    image : numpy.ndarray
        2-D image of any real dtype (uint8/uint16/float; STM heights may be negative;
        NaN pixels are read as the window's median).
    point : tuple of float
        ``(row, col)`` of the click in pixel coordinates (pixel centres at integers).
    diameter_px : float, optional
        Expected particle diameter (px), e.g. the median of the particles already
        labelled; sets the window, the smoothing and the split and growth distances.
        Estimated at the click when None (:func:`estimate_diameter`).
    labels : numpy.ndarray, optional
        Current instance labels (same shape): pixels with a label > 0 are never part of
        the proposal (and do not count as background in the statistics).
    polarity : {"auto", "bright", "dark"}
        Bright particles on a dark background, the reverse, or decided at the click.
    model : LoadedModel, optional
        Segment the window with this model (method ``"model"``); falls back to the
        threshold method when it finds nothing at the click.
    pixel_size_nm : float, optional
        Pixel size of ``image``: with a model trained at a known pixel size it sets the
        network scale.
    max_window : int
        Largest window side (px) read around the click.

    Returns
    -------
    Proposal

    Raises
    ------
    NanodefectError
        The point is outside the image, an argument is invalid, or nothing plausible is
        found at the click (contrast within the background noise, an outline that floods
        the window, fewer than ``MIN_AREA_PX`` pixels).
    """
    img = _check_image(image)
    rc = _check_point(point, img.shape)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != img.shape:
            raise NanodefectError(f"labels have shape {labels.shape} but the image has {img.shape}")
    if polarity not in POLARITIES:
        raise NanodefectError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    if diameter_px is not None:
        diameter_px = float(diameter_px)
        if not (math.isfinite(diameter_px) and diameter_px > 0):
            raise NanodefectError(f"diameter_px must be a positive number, got {diameter_px}")
    max_window = int(max_window)
    if max_window < 16:
        raise NanodefectError(f"max_window must be at least 16 px, got {max_window}")
    if model is not None:
        return _propose_model(img, rc, model, diameter_px, labels, polarity, pixel_size_nm, max_window)
    return _propose_threshold(img, rc, diameter_px, labels, polarity, max_window)


def estimate_diameter(image: np.ndarray, point: tuple[float, float], *, polarity: str = "auto",
                      min_diameter: float = 2.5, max_diameter: float = 200.0) -> tuple[float, int]:
    """Diameter (px) of the blob at ``point``, from the scale-normalised Laplacian of Gaussian.

    The response ``∓σ²·∇²G_σ * image`` (``-`` for bright blobs) is taken at the point
    (its largest value within σ/2, so an off-centre click still sees the blob's centre)
    for σ from ``min_diameter / 2√2`` to ``max_diameter / 2√2``, ``SCALE_STEP`` apart; a
    disk of diameter ``d`` responds most at ``σ = d / 2√2`` (the maximum is refined by a
    parabola in log σ). Large scales are computed on a block-averaged neighbourhood (σ
    stays about 2 blocks), so the cost does not grow with the size (a few ms).

    Returns
    -------
    (diameter_px, sign)
        ``sign`` is +1 for a bright blob, -1 for a dark one; with ``polarity="auto"`` the
        sign of the stronger response.
    """
    img = _check_image(image)
    rc = _check_point(point, img.shape)
    if polarity not in POLARITIES:
        raise NanodefectError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    s_lo = max(float(min_diameter), 1.0) / (2 * math.sqrt(2))
    s_hi = max(float(max_diameter), 2.0 * max(float(min_diameter), 1.0)) / (2 * math.sqrt(2))
    n = int(math.floor(math.log(s_hi / s_lo) / math.log(SCALE_STEP))) + 1
    sigmas = s_lo * SCALE_STEP ** np.arange(n)
    resp = np.array([_blob_response(img, rc, float(sg)) for sg in sigmas])  # (n, 2): bright, dark
    resp = np.nan_to_num(resp, nan=-np.inf)
    col = {"bright": 0, "dark": 1}.get(polarity)
    if col is None:
        col = int(np.argmax(resp.max(axis=0)))
    r = resp[:, col]
    k = int(np.argmax(r))
    # the smallest scale with a local maximum of at least PEAK_FRACTION of the largest: a
    # dim particle beside a bright one answers first at its own size
    for j in range(1, k):
        if r[j] >= PEAK_FRACTION * r[k] and r[j] >= r[j - 1] and r[j] >= r[j + 1]:
            k = j
            break
    frac = 0.0
    if 0 < k < n - 1 and np.isfinite(r[k - 1:k + 2]).all():
        den = r[k - 1] - 2 * r[k] + r[k + 1]
        if den < 0:
            frac = float(np.clip(0.5 * (r[k - 1] - r[k + 1]) / den, -0.5, 0.5))
    return 2 * math.sqrt(2) * float(sigmas[k] * SCALE_STEP ** frac), (1 if col == 0 else -1)


# -- checks and small helpers --------------------------------------------------------------


def _check_image(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        raise NanodefectError(f"expected a non-empty 2-D image, got shape {img.shape}")
    if img.dtype == bool:
        img = img.view(np.uint8)
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise NanodefectError(f"expected a real-valued image, got dtype {img.dtype}")
    return img


def _check_point(point: Any, shape: tuple[int, ...]) -> tuple[int, int]:
    try:
        pr, pc = (float(v) for v in point)
    except (TypeError, ValueError):
        raise NanodefectError(f"point must be (row, col), got {point!r}") from None
    if not (math.isfinite(pr) and math.isfinite(pc)):
        raise NanodefectError(f"point must be finite, got ({pr}, {pc})")
    r, c = int(math.floor(pr + 0.5)), int(math.floor(pc + 0.5))
    if not (0 <= r < shape[0] and 0 <= c < shape[1]):
        raise NanodefectError(
            f"the point (row {pr:g}, col {pc:g}) is outside the image ({shape[0]} x {shape[1]} px)")
    return r, c


def _window(rc: tuple[int, int], side: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)``: a ``side``-px square around ``rc``, shifted to lie inside the image."""
    out = []
    for x, n in zip(rc, shape):
        s = min(side, n)
        a = min(max(x - side // 2, 0), n - s)
        out += [a, a + s]
    return out[0], out[1], out[2], out[3]


def _window_side(d: float, max_window: int) -> int:
    return int(min(max_window, max(MIN_WINDOW, math.ceil(WINDOW_DIAMETERS * d) | 1)))


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius + radius * 0.5


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice]:
    """Slices of ``mask``'s bounding box grown by ``pad`` (clipped at 0; numpy clips the end)."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return (slice(max(int(rows[0]) - pad, 0), int(rows[-1]) + pad + 1),
            slice(max(int(cols[0]) - pad, 0), int(cols[-1]) + pad + 1))


def _nearest_label(lab: np.ndarray, rc: tuple[int, int]) -> int:
    """The label of the labelled pixel of ``lab`` nearest to ``rc``."""
    yy, xx = np.nonzero(lab)
    k = int(np.argmin((yy - rc[0]) ** 2 + (xx - rc[1]) ** 2))
    return int(lab[yy[k], xx[k]])


def _label_at(lab: np.ndarray, rc: tuple[int, int]) -> int:
    """The label at ``rc`` (local coordinates, may lie outside), else the nearest one."""
    r, c = rc
    if 0 <= r < lab.shape[0] and 0 <= c < lab.shape[1] and lab[r, c]:
        return int(lab[r, c])
    return _nearest_label(lab, rc)


def _blob_response(img: np.ndarray, rc: tuple[int, int], sigma: float) -> tuple[float, float]:
    """``(bright, dark)``: the largest ``∓σ²∇²G_σ`` response within σ/2 of ``rc``."""
    f = max(1, int(sigma / 2))  # block-average factor: sigma stays ~2 blocks
    s = sigma / f
    nb = int(math.ceil(4.5 * s)) + 1  # blocks on each side of the centre block
    m = 2 * nb + 1
    H, W = img.shape
    r_lo, c_lo = rc[0] - f // 2 - nb * f, rc[1] - f // 2 - nb * f
    if r_lo >= 0 and c_lo >= 0 and r_lo + m * f <= H and c_lo + m * f <= W:
        crop = np.asarray(img[r_lo:r_lo + m * f, c_lo:c_lo + m * f], dtype=np.float32)
    else:  # near the border: repeat the edge pixels
        rows = np.clip(np.arange(r_lo, r_lo + m * f), 0, H - 1)
        cols = np.clip(np.arange(c_lo, c_lo + m * f), 0, W - 1)
        crop = np.asarray(img[np.ix_(rows, cols)], dtype=np.float32)
    if not np.isfinite(crop).all():
        good = np.isfinite(crop)
        crop = np.where(good, crop, np.float32(np.median(crop[good])) if good.any() else np.float32(0))
    if f > 1:
        crop = crop.reshape(m, f, m, f).mean(axis=(1, 3))
    log = ndi.gaussian_laplace(crop, s, mode="nearest", truncate=4.0) * np.float32(s * s)
    rad = max(0, int(round(0.5 * s)))
    sub = log[nb - rad:nb + rad + 1, nb - rad:nb + rad + 1]
    if rad:
        yy, xx = np.ogrid[-rad:rad + 1, -rad:rad + 1]
        sub = sub[yy * yy + xx * xx <= rad * rad]
    return float(-sub.min()), float(sub.max())


# -- threshold method ----------------------------------------------------------------------


@dataclass
class _Segmented:
    mask: np.ndarray  # bool, the window
    win: tuple[int, int, int, int]  # r0, r1, c0, c1
    diameter: float
    touches_border: bool  # touches a window side that is not the image border


def _propose_threshold(img, rc, diameter_px, labels, polarity, max_window) -> Proposal:
    try:
        return _propose_threshold_at(img, rc, diameter_px, labels, polarity, max_window)
    except NanodefectError:
        if diameter_px is None:
            raise
        # the particle may be much larger than expected (a click inside one 5x the median
        # sees no edge in its window): when the blob at the click is, outline it at its size
        d_blob, _ = estimate_diameter(img, rc, polarity=polarity, max_diameter=max_window / 2.5)
        if d_blob < MISMATCH * diameter_px:
            raise
        try:
            prop = _propose_threshold_at(img, rc, None, labels, polarity, max_window)
        except NanodefectError:
            prop = None
        if prop is None or prop.diameter_px < MISMATCH * diameter_px:
            raise
        return prop


def _propose_threshold_at(img, rc, diameter_px, labels, polarity, max_window) -> Proposal:
    d = diameter_px
    if d is None:
        d, sign = estimate_diameter(img, rc, polarity=polarity, max_diameter=max_window / 2.5)
    elif polarity == "auto":
        _, sign = estimate_diameter(img, rc, min_diameter=d / 3, max_diameter=min(2 * d, max_window / 2.5))
    else:
        sign = 1 if polarity == "bright" else -1
    bright = sign > 0
    seg = _segment_growing(img, rc, d, labels, bright, max_window)
    if diameter_px is None and not (d / REESTIMATE < seg.diameter < d * REESTIMATE):
        if seg.diameter <= d / MISMATCH:
            # a round particle's outline and its blob scale agree within ~30 % (elongated
            # ones come out larger than their blob); on the support a wide clump of the
            # texture answers the blob filter and a speck the threshold
            raise NanodefectError(
                f"no distinct particle at the point: the blob there is ~{d:.0f} px across but the outline "
                f"found is {seg.diameter:.0f} px; click on a particle or give its diameter")
        try:  # the blob scale was off (flat-topped or peaked profiles): again at the measured size
            seg = _segment_growing(img, rc, seg.diameter, labels, bright, max_window)
        except NanodefectError:
            pass
    elif diameter_px is not None and seg.diameter < d / MISMATCH:
        # much smaller than expected: it must also stand out at its own scale (a small
        # particle does, a speck of the support's texture mostly does not)
        seg = _segment_growing(img, rc, max(seg.diameter, 2.0), labels, bright, max_window)
    r0, _, c0, _ = seg.win
    return Proposal(mask=seg.mask, offset=(r0, c0), method="threshold", diameter_px=seg.diameter)


def _segment_growing(img, rc, d, labels, bright, max_window) -> _Segmented:
    """:func:`_segment_window` in a window of ``WINDOW_DIAMETERS`` x ``d``, doubled while the
    object touches its border."""
    side = _window_side(d, max_window)
    while True:
        seg = _segment_window(img, rc, d, labels, bright, side)
        if not seg.touches_border:
            return seg
        if side >= max_window or side >= max(img.shape):
            raise NanodefectError(
                f"no closed object at the point: the region above the local threshold runs out of the "
                f"{side}-px window (a click on the background, or an object wider than max_window)")
        side = min(max_window, 2 * side + 1)


def _robust_levels(u: np.ndarray, valid: np.ndarray | None) -> tuple[float, float]:
    """Background level and noise of ``u`` (objects are bright): the median and the MAD of
    the lower side, with values above ``median + CLIP_SIGMAS·sigma`` (objects) clipped
    off, ``CLIP_ROUNDS`` times (so a field crowded with particles still gives its
    background level, not a level inside the particles)."""
    vals = u[valid] if valid is not None else u.ravel()
    if vals.size < 16:
        vals = u.ravel()
    if vals.size > 16384:
        vals = vals[:: vals.size // 8192]
    med, sig = float(np.median(vals)), 0.0
    for i in range(CLIP_ROUNDS + 1):
        low = vals[vals <= med]
        sig = 1.4826 * float(np.median(med - low)) if low.size else 0.0
        if i == CLIP_ROUNDS or not sig > 0:
            break
        kept = vals[vals <= med + CLIP_SIGMAS * sig]
        if kept.size == vals.size or kept.size < 16:
            break
        vals = kept
        med = float(np.median(vals))
    return med, sig


def _noise(u: np.ndarray, level: float, d: float, valid: np.ndarray | None) -> float:
    """Noise of the background at the particle scale: the spread of ``u`` minus its blur at
    ``NOISE_SCALE·d`` (pixel noise and support texture up to about half a particle, not the
    slow variations), on pixels more than d/4 away from everything above ``level`` (so
    neither particles nor their edges count, however crowded the window)."""
    hp = u - ndi.gaussian_filter(u, max(NOISE_SCALE * d, NOISE_MIN_PX), truncate=2.5)
    w = 2 * max(1, int(round(d / 4))) + 1
    bg = ndi.maximum_filter(u > level, size=w) == 0
    if valid is not None:
        bg &= valid
    if np.count_nonzero(bg) < 32:
        bg = valid
    return _robust_levels(hp, bg)[1]


def _segment_window(img, rc, d, labels, bright, side) -> _Segmented:
    """Seeded threshold segmentation of the object at ``rc`` in one window (module docstring)."""
    H, W = img.shape
    r0, r1, c0, c1 = _window(rc, side, (H, W))
    cr, cc = rc[0] - r0, rc[1] - c0
    v = np.array(img[r0:r1, c0:c1], dtype=np.float32)  # a copy: modified in place below
    excl = (labels[r0:r1, c0:c1] > 0) if labels is not None else None
    valid = ~excl if excl is not None else None
    finite = np.isfinite(v)
    if not finite.all():
        if not finite.any():
            raise NanodefectError("no valid (finite) pixels around the point")
        v = np.where(finite, v, np.float32(np.median(v[finite])))
    sample = v[::2, ::2] if v.size > 16384 else v
    lo, hi = (float(x) for x in np.percentile(sample, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = float(v.min()), float(v.max())
        if not hi > lo:
            raise NanodefectError("the image is flat around the point: nothing to outline")
    v -= np.float32(lo)
    v *= np.float32((1.0 if bright else -1.0) / (hi - lo))  # objects bright from here on
    sigma = float(np.clip(d / 16.0, 0.7, 2.5))
    u = ndi.gaussian_filter(v, sigma, truncate=3.0)

    # background: the level of a ring around the expected outline (the local support: a
    # particle on a thick grain sits on the grain)
    yy, xx = np.ogrid[-cr:u.shape[0] - cr, -cc:u.shape[1] - cc]
    rr = yy * yy + xx * xx
    ring = (rr >= (RING[0] * d) ** 2) & (rr <= (RING[1] * d) ** 2)
    if excl is not None:
        ring &= valid
    b, _ = _robust_levels(u, ring if np.count_nonzero(ring) >= 16 else valid)
    # particle level: the highest smoothed value near the click
    rp = max(2, int(round(d / 5)))
    ys = slice(max(cr - rp, 0), min(cr + rp + 1, u.shape[0]))
    xs = slice(max(cc - rp, 0), min(cc + rp + 1, u.shape[1]))
    dy, dx = np.ogrid[ys.start - cr:ys.stop - cr, xs.start - cc:xs.stop - cc]
    near = dy * dy + dx * dx <= rp * rp
    if excl is not None:
        near &= valid[ys, xs]
    if not near.any():
        raise NanodefectError("the point is inside an already labelled object: no free pixels around it")
    p = float(u[ys, xs][near].max())
    contrast = p - b
    noise = _noise(u, b + EDGE_LEVEL * contrast, d, valid)
    # small objects: few pixels and little smoothing, so noise specks reach higher
    k_sig = MIN_CONTRAST_SIGMAS * max(1.0, SMALL_DIAMETER / d) ** SMALL_EXPONENT
    if not contrast >= k_sig * max(noise, 1e-3):
        raise NanodefectError(
            f"no particle at the point: its contrast to the background ({contrast:.3g}) is below "
            f"{k_sig:.2g}x the background noise ({noise:.3g}); click on a particle, near its centre")

    fg = u > b + EDGE_LEVEL * contrast
    if excl is not None:
        fg &= valid
    comp = _component_at(fg, (cr, cc), max(2, int(round(d / 4))))
    if comp is None:
        raise NanodefectError("no particle at the point (no pixel above the local threshold nearby)")
    comp = _fill(comp, excl)
    whole = comp
    comp = _split(comp, u, (cr, cc), contrast, noise)
    # grow back to the edge (hysteresis): not into other basins, labels or the background
    allowed = (u > b + GROW_LEVEL * contrast) & ~(whole & ~comp)
    allowed &= ndi.laplace(u) * np.float32(sigma * sigma / contrast) < GROW_CURVATURE
    if excl is not None:
        allowed &= valid
    steps = max(1, int(round(GROW_STEPS * d)))
    sl = _bbox(comp, steps + 1)
    comp[sl] = ndi.binary_dilation(comp[sl], iterations=steps, mask=allowed[sl])
    comp = _smooth(comp, d, (cr, cc), excl)
    area = int(np.count_nonzero(comp))
    if area < MIN_AREA_PX:
        raise NanodefectError(f"only {area} px found at the point: too small to be a particle")
    rows = np.flatnonzero(comp.any(1))
    cols = np.flatnonzero(comp.any(0))
    touches = bool((rows[0] == 0 and r0 > 0) or (rows[-1] == comp.shape[0] - 1 and r1 < H)
                   or (cols[0] == 0 and c0 > 0) or (cols[-1] == comp.shape[1] - 1 and c1 < W))
    return _Segmented(comp, (r0, r1, c0, c1), 2.0 * math.sqrt(area / math.pi), touches)


def _component_at(fg: np.ndarray, rc: tuple[int, int], search: int) -> np.ndarray | None:
    """The connected component of ``fg`` holding ``rc``, else the one nearest to it within
    ``search`` px; None when there is none."""
    cr, cc = rc
    if not fg[cr, cc]:
        ys, xs = slice(max(cr - search, 0), cr + search + 1), slice(max(cc - search, 0), cc + search + 1)
        yy, xx = np.nonzero(fg[ys, xs])
        if yy.size == 0:
            return None
        yy, xx = yy + ys.start, xx + xs.start
        d2 = (yy - cr) ** 2 + (xx - cc) ** 2
        k = int(np.argmin(d2))
        if d2[k] > search * search:
            return None
        cr, cc = int(yy[k]), int(xx[k])
    lab, _ = ndi.label(fg)
    return lab == lab[cr, cc]


def _fill(comp: np.ndarray, excl: np.ndarray | None) -> np.ndarray:
    """``comp`` with its holes filled (labelled pixels stay out)."""
    sl = _bbox(comp)
    out = comp.copy()
    out[sl] = ndi.binary_fill_holes(comp[sl])
    if excl is not None:
        out &= ~excl
    return out


def _split(comp: np.ndarray, u: np.ndarray, rc: tuple[int, int], contrast: float, noise: float) -> np.ndarray:
    """The watershed basin of ``comp`` holding ``rc``: split on intensity, then on shape."""
    sl = _bbox(comp, 1)
    m = comp[sl]
    f = np.where(m, u[sl], np.float32(u[sl][m].min()))
    comp = _basin(comp, sl, f, max(SPLIT_INTENSITY * contrast, SPLIT_NOISE * noise), rc)
    sl = _bbox(comp, 1)
    edt = ndi.distance_transform_edt(comp[sl]).astype(np.float32)
    return _basin(comp, sl, edt, max(1.0, SPLIT_DYNAMIC * float(edt.max())), rc)


def _basin(comp: np.ndarray, sl: tuple[slice, slice], f: np.ndarray, h: float, rc: tuple[int, int]) -> np.ndarray:
    """The watershed basin of ``-f`` inside ``comp[sl]`` that holds ``rc`` (or is nearest).

    Markers are the h-maxima of ``f``: regional maxima (plateaus included) of the
    reconstruction of ``f - h`` under ``f``, i.e. maxima rising at least ``h`` above the
    saddle to any higher one. With fewer than two, ``comp`` is returned unchanged.
    """
    from skimage.morphology import local_maxima, reconstruction
    from skimage.segmentation import watershed

    m = comp[sl]
    g = (f - f.min()).astype(np.float64)
    rec = reconstruction(np.maximum(g - h, 0.0), g, method="dilation")
    peaks = local_maxima(rec, connectivity=2, allow_borders=True) & m & (rec > 0)
    markers, n = ndi.label(peaks, structure=np.ones((3, 3)))
    if n < 2:
        return comp
    ws = watershed(-g, markers=markers, mask=m)
    out = np.zeros_like(comp)
    out[sl] = ws == _label_at(ws, (rc[0] - sl[0].start, rc[1] - sl[1].start))
    return out


def _smooth(comp: np.ndarray, d: float, rc: tuple[int, int], excl: np.ndarray | None) -> np.ndarray:
    """Opening + closing with a disk of radius d/12, then the piece at ``rc``, holes filled."""
    rad = int(round(d / SMOOTH_DIVISOR)) if d >= 8 else 0
    if rad < 1:
        return comp
    k = _disk(rad)
    sl = _bbox(comp, rad + 1)
    pad = rad + 1  # edge-replicated, so an object cut by the image border keeps its edge pixels
    sm = np.pad(comp[sl], pad, mode="edge")
    sm = ndi.binary_closing(ndi.binary_opening(sm, k), k)[pad:-pad, pad:-pad]
    if excl is not None:
        sm &= ~excl[sl]
    if not sm.any():
        return comp
    lab, n = ndi.label(sm)
    if n > 1:
        sm = lab == _label_at(lab, (rc[0] - sl[0].start, rc[1] - sl[1].start))
    sm = ndi.binary_fill_holes(sm)
    if excl is not None:
        sm &= ~excl[sl]
    out = np.zeros_like(comp)
    out[sl] = sm
    return out


# -- model method --------------------------------------------------------------------------


def _propose_model(img, rc, model, diameter_px, labels, polarity, pixel_size_nm, max_window) -> Proposal:
    from ..segment.predict import predict_array  # torch: only here

    cfg = model.config
    d = diameter_px
    if d is None:
        try:
            d = _propose_threshold(img, rc, None, labels, polarity, max_window).diameter_px
        except NanodefectError:
            d = None
    if pixel_size_nm and cfg.pixel_size_nm:
        scale: float | str = float(pixel_size_nm) / float(cfg.pixel_size_nm)
    elif d is not None:
        scale = float(cfg.object_diameter_px) / d
    else:
        scale = "auto"
    if isinstance(scale, float):
        d_img = d if d is not None else cfg.object_diameter_px / scale
        side = max(1.2 * WINDOW_DIAMETERS * d_img, MODEL_MIN_NETWORK_PX / scale)
    else:
        side = max_window
    side = int(min(max_window, max(MIN_WINDOW, side)))
    r0, r1, c0, c1 = _window(rc, side, img.shape)
    win = np.asarray(img[r0:r1, c0:c1], dtype=np.float32)
    if not np.isfinite(win).all():
        good = np.isfinite(win)
        win = np.where(good, win, np.float32(np.median(win[good])) if good.any() else np.float32(0))
    pred = predict_array(model, win, pixel_size_nm=pixel_size_nm, scale=scale)
    lab = pred.labels
    if labels is not None:
        lab = np.where(labels[r0:r1, c0:c1] > 0, 0, lab)
    cr, cc = rc[0] - r0, rc[1] - c0
    search = max(2, int(round((d if d is not None else cfg.object_diameter_px / pred.scale) / 4)))
    k = int(lab[cr, cc])
    if k == 0:
        ys, xs = slice(max(cr - search, 0), cr + search + 1), slice(max(cc - search, 0), cc + search + 1)
        yy, xx = np.nonzero(lab[ys, xs])
        if yy.size:
            d2 = (yy + ys.start - cr) ** 2 + (xx + xs.start - cc) ** 2
            j = int(np.argmin(d2))
            if d2[j] <= search * search:
                k = int(lab[yy[j] + ys.start, xx[j] + xs.start])
    mask = None
    if k:
        pieces, n = ndi.label(lab == k)
        mask = pieces == _label_at(pieces, (cr, cc)) if n > 1 else pieces > 0  # labels may cut it
        if np.count_nonzero(mask) < MIN_AREA_PX:
            mask = None
    if mask is None:
        return _propose_threshold(img, rc, d, labels, polarity, max_window)
    area = int(np.count_nonzero(mask))
    return Proposal(mask=mask, offset=(r0, c0), method="model", diameter_px=2.0 * math.sqrt(area / math.pi))
