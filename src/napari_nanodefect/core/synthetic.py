"""Procedural micrographs with exact ground truth.

Tests, the demo and the training of the generic "starter" particle model all draw their
images here. Instead of pasting real particles onto real backgrounds (Zelenka et al.
2022) everything is procedural, so the ground truth is exact by construction:

* **particles** — log-normal equivalent diameters; round, elliptical and slightly
  irregular shapes, and *faceted* ones (convex polygons with 5–8 sides, corners rounded
  a little); each is rasterised by a pixel-centre test inside its own bounding box;
* **arrangement** — uniform (on the support), clustered (Neyman–Scott / Thomas-like:
  particles scattered with a Gaussian around parent points), packed (jittered hexagonal
  monolayer, as in self-assembled colloids), *touching* pairs and
  chains (placed so that two labels are 8-adjacent with no background pixel between
  them) and *overlapping* particles. Where two particles overlap **the later particle
  owns the overlap pixels** in ``labels`` (it lies on top); an earlier particle never
  loses more than 40 % of its drawn pixels and is never split in two. Particles that
  are neither touching nor overlapping keep at least one background pixel (8-connected
  sense) to every other label;
* **support** — amorphous-carbon-like multi-scale (fractal) thickness, silica-like
  stacks of spherical grains or alumina-like platelets, optional vacuum regions
  (``support_coverage``); particles sit on the support;
* **rendering** — ``"haadf"``: Z-contrast, intensity ~ projected thickness (a sphere's
  ``sqrt(r² - d²)`` profile, flatter tops for faceted particles), particles bright on a
  dark support; ``"bf"``: BF-TEM, ``exp(-μ t)`` absorption, phase-contrast speckle of
  the amorphous support and a defocus Fresnel fringe (halo) at edges, particles dark on
  bright; ``"sem"``: dark particles with a bright edge rim on a bright, rough support;
  ``"stm"``: a height map (terraces or rough substrate, particle caps) rendered bright
  = high, with scan-line offsets, streaks and feedback lag. Optional lattice fringes,
  brightness gradient and vignetting, Gaussian PSF, Poisson shot noise at a dose plus
  Gaussian read noise, dead/hot pixels, 8-bit JPEG re-encoding, uint8 or uint16 output;
* **classes** — ``"particle"`` and, with ``single_sites > 0``, ``"single_site"``:
  tiny (2–4 px) isolated dots (single atoms in HAADF).

``labels`` is exactly the pixel ownership used to render (before the PSF blur),
``diameters_nm`` is computed from the final label areas (``2·sqrt(area/π)·pixel size``,
label ``i`` at index ``i-1``) and ``drawn_diameters_nm`` keeps the intended diameters
(before border clipping and occlusion). Particles may be cut by the image border.

:func:`random_micrograph` draws every parameter from realistic ranges (training data).
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

MODES = ("haadf", "bf", "sem", "stm")
SUPPORTS = ("carbon", "silica", "alumina", "none")
_NANG = 96  # angular samples of each shape's radial function
_ANG = np.linspace(0.0, 2 * np.pi, _NANG, endpoint=False)
_COS, _SIN = np.cos(_ANG).astype(np.float32), np.sin(_ANG).astype(np.float32)
_MAX_LOSS = 0.4  # an overlapped particle keeps >= 60 % of its drawn pixels


@dataclass
class SyntheticImage:
    image: np.ndarray  #: uint8 or uint16 micrograph
    labels: np.ndarray  #: uint16 instance labels, 0 = background
    classes: dict[int, str]  #: label -> class name
    pixel_size_nm: float
    diameters_nm: np.ndarray  #: equivalent diameters of the label areas, one per label (label i -> index i-1)
    drawn_diameters_nm: np.ndarray | None = None  #: intended diameters before border clipping / occlusion
    params: dict = field(default_factory=dict)  #: the parameters the image was drawn with


# -- shapes ---------------------------------------------------------------------------------


class _Shape:
    """A star-shaped (mostly convex) particle given by a homogeneous gauge ``g`` (g <= 1 inside).

    ``R`` is a :class:`random.Random` (scalar draws are much cheaper there than on numpy).
    The outline is built for an equal-area radius of 1 and scaled by ``k`` (px);
    :meth:`resized` makes a copy of another size that shares the tables.
    """

    __slots__ = ("cu", "cv", "fourier", "k", "q", "radial", "rmax", "rmax1", "scale", "sx", "sy", "w")

    def __init__(self, R, r_px, kind, aspect, irregularity, sides):
        ar = float(aspect)
        self.sx, self.sy = math.sqrt(ar), 1.0 / math.sqrt(ar)
        self.cu = self.cv = None
        self.fourier = None
        self.w = 0.0
        self.q = 2.0  # sphere-like thickness profile
        if kind == "polygon":
            k = int(sides)
            step = 2 * math.pi / k
            off = R.uniform(0, 2 * math.pi)
            vs = []
            for i in range(k):
                phi = off + (i + R.uniform(-0.22, 0.22)) * step
                rad = R.uniform(0.92, 1.06)
                vs.append((rad * math.cos(phi), rad * math.sin(phi)))
            cu, cv = [], []
            for i in range(k):
                (x0, y0), (x1, y1) = vs[i], vs[(i + 1) % k]
                nx, ny = y1 - y0, x0 - x1
                hh = nx * x0 + ny * y0
                if hh < 0:
                    nx, ny, hh = -nx, -ny, -hh
                cu.append(nx / hh / self.sx)
                cv.append(ny / hh / self.sy)
            self.cu = np.array(cu, np.float32)[:, None, None]
            self.cv = np.array(cv, np.float32)[:, None, None]
            self.w = R.uniform(0.15, 0.45)  # corner rounding: blend with the ellipse gauge
            self.q = R.uniform(2.5, 5.0)  # flatter-topped thickness
        if irregularity > 0:
            self.fourier = [R.gauss(0, irregularity) / (kk - 1) * complex(math.cos(a), math.sin(a))
                            for kk, a in ((2, R.uniform(0, 6.3)), (3, R.uniform(0, 6.3)), (4, R.uniform(0, 6.3)))]
        self.scale = 1.0
        g = self._g(_COS[None, :], _SIN[None, :])[0]
        area = 0.5 * float(np.sum(1.0 / (g * g))) * (2 * math.pi / _NANG)
        self.scale = math.sqrt(math.pi / area)  # equal-area radius 1
        self.radial = (self.scale / g).tolist()  # R(angle) in the particle frame, radius 1
        self.rmax1 = max(self.radial)
        self.k = 1.0
        self._set_size(r_px)

    def _set_size(self, r_px):
        self.scale = self.scale / self.k * r_px
        self.k = r_px
        self.rmax = self.rmax1 * r_px * 1.04 + 0.5

    def resized(self, r_px):
        """The same outline with equal-area radius ``r_px`` px (shares the tables)."""
        o = _Shape.__new__(_Shape)
        for a in self.__slots__:
            setattr(o, a, getattr(self, a))
        o._set_size(r_px)
        return o

    def _g(self, u, v):
        e = np.sqrt((u / self.sx) ** 2 + (v / self.sy) ** 2)
        if self.cu is not None:
            p = (self.cu * u + self.cv * v).max(0)
            e = (1 - self.w) * p + self.w * e
        if self.fourier is not None:
            rho = np.sqrt(u * u + v * v) + 1e-9
            z = (u + 1j * v) / rho
            zk = z * z
            pert = (self.fourier[0] * zk).real
            for c in self.fourier[1:]:
                zk = zk * z
                pert += (c * zk).real
            e = e / (1 + pert)
        return e / self.scale

    def radius_at(self, angle):
        """Boundary distance (px) from the centre along ``angle`` (particle frame)."""
        return self.radial[round(angle / (2 * math.pi) * _NANG) % _NANG] * self.k


# -- support and fields ---------------------------------------------------------------------


@lru_cache(maxsize=8)
def _kgrid(shape):
    ky = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    return np.sqrt(ky * ky + kx * kx)


def _filtered(spec, k, filt, shape):
    f = np.fft.irfft2(spec * filt, s=shape).astype(np.float32)
    f -= f.mean()
    sd = f.std()
    return f / sd if sd > 0 else f


def _unit_noise_spectrum(rng, shape):
    return np.fft.rfft2(rng.standard_normal(shape, dtype=np.float32))


def _grains(rng, shape, r_px, kind, cover, density=2.2):
    """Aggregates of support grains (silica-like spheres or alumina-like platelets).

    Grains grow in aggregates (each new grain usually sticks to an earlier one, like
    fumed silica or carbon black) and are rendered at low resolution, then upsampled.
    """
    h, w = shape
    f = max(1, int(r_px / 5))
    lh, lw = h // f + 2, w // f + 2
    r = r_px / f
    n = int(np.clip(density * lh * lw / (np.pi * r * r), 3, 500))
    out = np.zeros((lh, lw), np.float32)
    ys, xs = np.arange(lh, dtype=np.float32), np.arange(lw, dtype=np.float32)
    R = random.Random(int(rng.integers(2**62)))
    done: list[tuple[float, float, float]] = []
    pool: list[_Shape] = []
    tries = 0
    while len(done) < n and tries < 4 * n:
        tries += 1
        ri = r * math.exp(R.gauss(0, 0.3))
        if done and R.random() < 0.7:
            py, px, pr = done[R.randrange(len(done))]
            a, d = R.uniform(0, 2 * math.pi), (pr + ri) * R.uniform(0.45, 0.95)
            cy, cx = py + d * math.sin(a), px + d * math.cos(a)
        else:
            cy, cx = R.uniform(-r, lh + r), R.uniform(-r, lw + r)
        if cover is not None:
            iy, ix = min(max(int(cy * f), 0), h - 1), min(max(int(cx * f), 0), w - 1)
            if R.random() > cover[iy, ix]:
                continue
        if not (-2 * ri < cy < lh + 2 * ri and -2 * ri < cx < lw + 2 * ri):
            continue
        done.append((cy, cx, ri))
        rb = ri * (2.2 if kind == "alumina" else 1.0) + 1
        y0, y1 = max(0, int(cy - rb)), min(lh, int(cy + rb) + 2)
        x0, x1 = max(0, int(cx - rb)), min(lw, int(cx + rb) + 2)
        if y1 <= y0 or x1 <= x0:
            continue
        dy, dx = (ys[y0:y1] - cy)[:, None], (xs[x0:x1] - cx)[None, :]
        if kind == "silica":
            d2 = (dy * dy + dx * dx) / (ri * ri)
            t = np.sqrt(np.clip(1 - d2, 0, None)) * ri
        else:  # alumina-like platelets: thin, flat, faceted, elongated
            if len(pool) < 24:
                pool.append(_Shape(R, 1.0, "polygon", R.uniform(1.0, 2.5), 0.0, R.randint(4, 6)))
            shp = pool[R.randrange(len(pool))].resized(ri)
            th = R.uniform(0, math.pi)
            c, s_ = math.cos(th), math.sin(th)
            g = shp._g(dx * c + dy * s_, dy * c - dx * s_)
            t = np.clip((1.0 - g) * 3 * ri, 0, 1) * ri * R.uniform(0.25, 0.7)
        out[y0:y1, x0:x1] += t
    m = out.mean()
    if m > 0:  # thick stacks saturate (projected thickness of a 3-D aggregate, HAADF non-linearity)
        out = out / m
        out = out / (1 + out / 2.5)
    out = ndi.gaussian_filter(out, 0.6)
    out = ndi.zoom(out, f, order=1, prefilter=False)[:h, :w] if f > 1 else out[:h, :w]
    m = out.mean()
    return out / m if m > 0 else out


# -- the generator --------------------------------------------------------------------------


_RING = [(0.0, 0.0)] + [(math.sin(a), math.cos(a)) for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)]


def _occupied(labels, cy, cx, rad):
    """Cheap rejection: is any labelled pixel at the centre or on a ring of radius ``rad``?"""
    h, w = labels.shape
    for sy, sx in _RING:
        y, x = int(cy + rad * sy), int(cx + rad * sx)
        if 0 <= y < h and 0 <= x < w and labels[y, x]:
            return True
    return False


def _dilate8(m):
    d = m.copy()
    d[1:] |= m[:-1]
    d[:-1] |= m[1:]
    e = d.copy()
    e[:, 1:] |= d[:, :-1]
    e[:, :-1] |= d[:, 1:]
    return e


def make_particles(
    shape: tuple[int, int] = (512, 512),
    n: int = 120,
    median_diameter_nm: float = 12.0,
    sigma: float = 0.25,
    pixel_size_nm: float = 0.5,
    mode: str = "haadf",
    noise: float = 0.06,
    seed: int | np.random.Generator = 0,
    touching: float = 0.2,
    *,
    faceted: float = 0.3,
    sides: tuple[int, int] = (5, 8),
    aspect: tuple[float, float] = (1.0, 1.4),
    irregularity: float = 0.04,
    overlap: float = 0.0,
    clustered: float = 0.0,
    cluster_size: float = 8.0,
    cluster_spread: float = 2.0,
    packing: float = 0.0,
    packing_gap: float = 0.35,
    support: str = "carbon",
    support_level: float = 0.35,
    support_texture: float = 0.5,
    support_grain_nm: float = 15.0,
    support_coverage: float = 1.0,
    clouds: float = 0.0,
    cloud_size: float = 2.5,
    contrast: float = 1.0,
    thickness_exponent: float = 0.5,
    brightness_spread: float = 0.12,
    size_contrast_exponent: float = 0.6,
    lattice: float = 0.0,
    halo: float | None = None,
    speckle: float | None = None,
    speckle_period_px: float | None = None,
    speckle_band: float = 0.3,
    blur: float = 1.0,
    gradient: float = 0.08,
    vignetting: float = 0.0,
    dose: float | None = 400.0,
    hot_pixels: float = 0.0,
    row_noise: float | None = None,
    streaks: float | None = None,
    terraces: float | None = None,
    single_sites: int = 0,
    single_site_contrast: float = 0.35,
    clip_percentiles: tuple[float, float] = (0.5, 99.5),
    jpeg_quality: int | None = None,
    dtype: str | type = "uint8",
    max_tries: int | None = None,
) -> SyntheticImage:
    """Draw up to ``n`` particles on a support and render a noisy micrograph.

    Sizes: equivalent diameters are log-normal (``median_diameter_nm``, ``sigma``).
    ``touching``: fraction of particles placed right next to an earlier one (half of
    them next to the previous particle, which grows chains). ``overlap``: fraction
    placed overlapping an earlier one (the later particle owns the overlap). ``clustered``:
    fraction placed in Thomas clusters (mean ``cluster_size`` particles, Gaussian spread
    ``cluster_spread`` median diameters). ``packing``: fraction placed on a jittered
    hexagonal lattice (self-assembled monolayer; spacing = median diameter x
    (1 + ``packing_gap``)). ``faceted``: fraction of polygonal particles
    (``sides`` range), the rest elliptical (``aspect`` range of axis ratios) with
    ``irregularity`` (relative amplitude of low-order boundary modes).

    Support: ``support`` in ``carbon``/``silica``/``alumina``/``none``; ``support_level``
    is its mean signal relative to the peak of a median particle (``contrast`` scales the
    particles); ``support_texture`` its relative roughness; ``support_coverage`` < 1 leaves
    vacuum (particles sit on the support: the placement probability follows its projected
    thickness). ``clouds`` adds soft clumps to the support (aggregated primary support
    particles, as in carbon black or W/C powders seen in HAADF STEM): a band-pass field of
    blobs ``cloud_size`` median particle diameters across with smooth edges, whose bright
    tops reach ``clouds`` times a median particle's peak signal; they are never labelled
    (hard negatives: particle-sized bright spots that are not particles).
    ``thickness_exponent`` shapes the particle profile (0.5: sphere),
    ``brightness_spread`` is the log-normal spread of the particle brightness
    (composition, orientation / diffraction contrast); a particle's brightness also grows
    as (diameter / median diameter) ** ``size_contrast_exponent`` (projected thickness:
    small particles are fainter), never below a quarter of a median particle's. Imaging: ``blur`` (Gaussian PSF sigma, px), ``gradient``/``vignetting``
    (illumination), ``dose`` (counts per pixel at a particle peak, ``None`` = no shot
    noise), ``noise`` (Gaussian read noise, same units), ``hot_pixels`` (fraction of
    dead/hot pixels), ``halo`` (BF Fresnel fringe; auto), ``speckle`` (BF phase contrast of
    the support; auto; ``speckle_period_px`` its period, default 0.34 nm, and
    ``speckle_band`` its relative bandwidth: narrow bands make long worm-like fringes),
    ``lattice`` (fringe amplitude inside particles, drawn only where the ~0.2 nm spacing
    is >= 2.2 px), ``row_noise``/``streaks`` (scan lines; auto: on
    for ``stm``), ``terraces`` (STM step height relative to a median particle; ``None``:
    0.15 half of the time), ``jpeg_quality`` (8-bit JPEG round trip), ``dtype`` uint8 or uint16.
    ``seed`` may be a ``numpy.random.Generator``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        raise ValueError(f"dtype must be uint8 or uint16, got {dtype}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    params = dict(locals())
    params.pop("rng")
    params.pop("seed")
    params["dtype"] = dtype.name
    h, w = shape = (int(shape[0]), int(shape[1]))
    ps = float(pixel_size_nm)
    ys, xs = np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32)
    r_med = median_diameter_nm / ps / 2

    # ---- support --------------------------------------------------------------------------
    # thickness map ``tsup`` (mean ~1 where there is support, 0 in vacuum)
    kgrid = _kgrid(shape)
    spec = _unit_noise_spectrum(rng, shape)
    kmin = 1.0 / max(h, w)
    kg = np.maximum(kgrid, kmin)
    nz = kgrid > 0
    # multi-scale (fractal) field: amorphous carbon clumps down to ~1.5 nm
    fr_filt = kg ** (-1.6) * np.exp(-((kgrid * max(1.5 / ps, 1.0)) ** 2)) * nz
    frac = _filtered(spec, kgrid, fr_filt, shape)
    cover = None
    if support_coverage < 1.0 and support != "none":
        # vacuum: a low-frequency field with a rough (fractal) edge, ~1.5 px wide
        kc = 1.2 / max(h, w)
        lf = np.exp(-((kgrid / kc) ** 2)) * nz
        low = _filtered(spec * 1j, kgrid, lf, shape) + 0.3 * frac
        sub = np.sort(low[::4, ::4].ravel())
        thr = sub[int(np.clip(1 - support_coverage, 0, 1) * (sub.size - 1))]
        grad = 2 * np.pi * float(np.sqrt((kgrid**2 * fr_filt**2).sum() / max((fr_filt**2).sum(), 1e-12))) * 0.3
        grad = math.hypot(grad, 2 * np.pi * kc / math.sqrt(2))
        cover = np.clip((low - thr) / (1.5 * grad) + 0.5, 0, 1).astype(np.float32)
    tex = float(np.clip(support_texture, 0, 3))
    if support == "carbon":
        tsup = np.exp(tex * frac * 0.9)
        tsup /= tsup.mean()
    elif support in ("silica", "alumina"):
        r_g = float(np.clip(support_grain_nm / ps / 2, max(4.0, 0.06 * max(h, w)), 0.35 * max(h, w)))
        gr = _grains(rng, shape, r_g, support, cover)
        a = float(np.clip(0.35 + 0.65 * tex, 0, 1))
        tsup = (1 - a) + a * gr
        tsup = tsup * (1 + 0.15 * tex * frac)  # some amorphous thickness variation on top
    else:
        tsup = np.ones(shape, np.float32)
    if support != "none":
        # fine amorphous graininess (~0.5 nm), a few % of the thickness
        kf = min(0.45, ps / 0.6)
        fine = _filtered(spec, kgrid, np.exp(-(((kgrid - kf) / (0.35 * kf + 0.02)) ** 2)), shape)
        tsup = tsup * (1 + 0.06 * tex * fine)
    if cover is not None:
        tsup = tsup * cover
    if clouds > 0 and support != "none":
        # soft clumps: a band-pass field around 1 / (cloud_size x median diameter), its
        # positive lobes raised to a power (rounded tops, smooth flanks), the 99th
        # percentile scaled to ``clouds`` x a median particle's peak (in support units)
        kc = 1.0 / max(2.0 * r_med * float(cloud_size), 4.0)
        cf = _filtered(_unit_noise_spectrum(rng, shape), kgrid, np.exp(-(((kgrid - kc) / (0.45 * kc)) ** 2)) * nz, shape)
        cf = np.maximum(cf, 0) ** 1.5
        top = float(np.percentile(cf[::4, ::4], 99)) or 1.0
        amp = float(clouds) * float(contrast) / max(float(support_level), 0.05)
        tsup = tsup + (amp / top) * cf * (cover if cover is not None else 1.0)
    tsup = np.clip(tsup, 0, None).astype(np.float32)
    # particles sit on the support: placement probability ~ projected support thickness
    support_here = None
    if support != "none" and mode != "stm":
        q = float(np.sort(tsup[::4, ::4].ravel())[int(0.6 * (tsup[::4, ::4].size - 1))])
        support_here = np.clip(tsup / max(q, 1e-6), 0.02, 1.0)
    elif cover is not None:
        support_here = cover

    # ---- particles ------------------------------------------------------------------------
    labels = np.zeros(shape, np.uint16)
    thick = np.zeros(shape, np.float32)  # projected particle signal (haadf/bf/sem)
    height = np.zeros(shape, np.float32) if mode == "stm" else None
    recs: list[tuple] = []  # (cy, cx, shape, rot, y0, y1, x0, x1)
    area_now: list[int] = [0]
    area_full: list[int] = [0]
    drawn: list[float] = []
    classes: dict[int, str] = {}
    n = int(n)
    n_par = max(1, round(n * clustered / max(cluster_size, 1.0))) if clustered > 0 else 0
    parents = []
    for _ in range(n_par):
        for _t in range(20):
            py, px = rng.uniform(0, h), rng.uniform(0, w)
            if support_here is None or rng.random() < support_here[int(py), int(px)]:
                break
        parents.append((py, px))
    spread = cluster_spread * 2 * r_med
    hexpts: list[tuple[float, float]] = []
    if packing > 0:
        a_ = 2 * r_med * (1 + packing_gap)
        th_ = rng.uniform(0, np.pi / 3)
        m_ = int(max(h, w) / a_ * 1.5) + 3
        i_, j_ = np.mgrid[-m_:m_ + 1, -m_:m_ + 1]
        px_, py_ = a_ * (i_ + 0.5 * j_), a_ * (np.sqrt(3) / 2) * j_
        c_, s_ = np.cos(th_), np.sin(th_)
        gy_ = h / 2 + px_ * s_ + py_ * c_ + rng.normal(0, 0.07 * a_, px_.shape)
        gx_ = w / 2 + px_ * c_ - py_ * s_ + rng.normal(0, 0.07 * a_, px_.shape)
        keep = (gy_ > -r_med) & (gy_ < h + r_med) & (gx_ > -r_med) & (gx_ < w + r_med)
        hexpts = list(zip(gy_[keep].tolist(), gx_[keep].tolist()))
        rng.shuffle(hexpts)
    lat_period = []
    tries = 0
    max_tries = int(max_tries) if max_tries is not None else 25 * n + 50
    lab = 0
    R = random.Random(int(rng.integers(2**62)))
    pools: tuple[list, list] = ([], [])  # polygon and ellipse outlines
    pool_size = int(min(64, max(8, n // 3)))
    r_in = 0.6 / math.sqrt(max(aspect[1], 1.0))  # inscribed radius / r, with room for irregularity
    while lab < n and tries < max_tries:
        tries += 1
        r = r_med * math.exp(sigma * R.gauss(0.0, 1.0))
        u_ = R.random()
        how = "free"
        if recs and u_ < touching:
            how = "touch"
        elif recs and u_ < touching + overlap:
            how = "overlap"
        elif parents and R.random() < clustered:
            how = "cluster"
        if how in ("free", "cluster"):  # cheap checks before the shape is built
            if how == "cluster":
                py, px = parents[R.randrange(len(parents))]
                cy, cx = R.gauss(py, spread), R.gauss(px, spread)
            elif hexpts and R.random() < packing:
                cy, cx = hexpts.pop()
            else:
                cy, cx = R.uniform(-0.3 * r, h + 0.3 * r), R.uniform(-0.3 * r, w + 0.3 * r)
            iy, ix = min(max(int(cy), 0), h - 1), min(max(int(cx), 0), w - 1)
            if support_here is not None and R.random() > support_here[iy, ix]:
                continue
            if _occupied(labels, cy, cx, r * r_in):
                continue
        # outlines come from a pool (built on first use) and are resized: much cheaper
        pool = pools[0 if R.random() < faceted else 1]
        if len(pool) < pool_size:
            kind = "polygon" if pool is pools[0] else "ellipse"
            pool.append(_Shape(
                R, 1.0, kind, R.uniform(*aspect) if kind == "ellipse" else R.uniform(1.0, min(aspect[1], 1.25)),
                irregularity if kind == "ellipse" else 0.0, R.randint(sides[0], sides[1]),
            ))
            shp = pool[-1].resized(r)
        else:
            shp = pool[R.randrange(pool_size)].resized(r)
        rot = R.uniform(0, 2 * math.pi)
        if how in ("touch", "overlap"):
            j = len(recs) - 1 if (how == "touch" and R.random() < 0.5) else R.randrange(len(recs))
            cy_j, cx_j, shp_j, rot_j = recs[j][:4]
            ang = R.uniform(0, 2 * math.pi)
            rj = shp_j.radius_at(ang - rot_j)
            rn = shp.radius_at(ang + math.pi - rot)
            if how == "touch":
                dists = [rj + rn + dd for dd in (-0.4, 0.2, 0.8, 1.4)]
            else:
                dists = [(rj + rn) * R.uniform(0.55, 0.85)]
            sa, ca = math.sin(ang), math.cos(ang)
            cands = [(cy_j + d * sa, cx_j + d * ca) for d in dists]
        else:
            cands = [(cy, cx)]
        placed = None
        for cy, cx in cands:
            if how == "touch" and _occupied(labels, cy, cx, r * r_in):
                continue
            rb = shp.rmax + 2
            y0, y1 = max(0, int(cy - rb)), min(h, int(cy + rb) + 2)
            x0, x1 = max(0, int(cx - rb)), min(w, int(cx + rb) + 2)
            if y1 - y0 < 1 or x1 - x0 < 1:
                break
            dy, dx = (ys[y0:y1] - cy)[:, None], (xs[x0:x1] - cx)[None, :]
            c, s = math.cos(rot), math.sin(rot)
            g = shp._g(dx * c + dy * s, dy * c - dx * s)
            mask = g <= 1.0
            npx = int(np.count_nonzero(mask))
            if npx < 3:
                break
            sub = labels[y0:y1, x0:x1]
            if how == "free" or how == "cluster":
                if np.count_nonzero(sub[_dilate8(mask)]):
                    break
            elif how == "touch":
                if np.count_nonzero(sub[mask]):
                    continue  # too close, move out
                if not np.count_nonzero(sub[_dilate8(mask)] == j + 1):
                    break  # no contact at the next distance either: give up
            else:  # overlap: earlier particles keep >= 60 % and stay in one piece
                hit = sub[mask]
                ids, cnt = np.unique(hit[hit > 0], return_counts=True)
                if ids.size == 0:
                    break
                ok = True
                for l_, c_ in zip(ids.tolist(), cnt.tolist()):
                    if classes[l_] != "particle" or area_now[l_] - c_ < (1 - _MAX_LOSS) * area_full[l_]:
                        ok = False
                        break
                    _, _, _, _, a0, a1, b0, b1 = recs[l_ - 1]
                    rem = labels[a0:a1, b0:b1] == l_
                    iy0, iy1, ix0, ix1 = max(a0, y0), min(a1, y1), max(b0, x0), min(b1, x1)
                    rem[iy0 - a0:iy1 - a0, ix0 - b0:ix1 - b0] &= ~mask[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
                    if ndi.label(rem)[1] != 1:
                        ok = False
                        break
                if not ok:
                    break
                for l_, c_ in zip(ids.tolist(), cnt.tolist()):
                    area_now[l_] -= c_
            placed = (cy, cx, y0, y1, x0, x1, g, mask, npx)
            break
        if placed is None:
            continue
        cy, cx, y0, y1, x0, x1, g, mask, npx = placed
        lab += 1
        labels[y0:y1, x0:x1][mask] = lab
        classes[lab] = "particle"
        area_now.append(npx)
        area_full.append(npx)
        recs.append((cy, cx, shp, rot, y0, y1, x0, x1))
        drawn.append(2 * r * ps)
        # thickness: sphere-like sqrt(1 - g^2) (flatter for faceted), scaled by size
        gm = g[mask]
        prof = np.clip(1 - gm**shp.q, 0, 1) ** thickness_exponent
        # never fainter than a quarter of a median particle: labelled particles stay visible
        amp = max(0.25, (r / r_med) ** size_contrast_exponent * math.exp(R.gauss(0, brightness_spread)))
        t = (0.18 + 0.82 * prof) * amp
        if lattice > 0:
            period = R.choice([0.2265, 0.196, 0.208, 0.205, 0.235]) / ps
            if period >= 2.2:
                th = R.uniform(0, math.pi)
                yy, xx = np.nonzero(mask)
                ph = 2 * np.pi / period * ((yy + y0 - cy) * np.sin(th) + (xx + x0 - cx) * np.cos(th))
                t = t * (1 + lattice * np.cos(ph + R.uniform(0, 2 * math.pi)))
                lat_period.append(period)
        if height is not None:
            hb = height[y0:y1, x0:x1]
            hb[mask] = t + 0.4 * hb[mask]
        else:
            thick[y0:y1, x0:x1][mask] += t
    n_particles = lab

    # ---- single sites (single atoms: 2-4 px dots on the support) --------------------------
    sites = np.zeros(shape, np.float32) if single_sites else None
    placed_sites, tries = 0, 0
    while placed_sites < single_sites and tries < 20 * single_sites + 20:
        tries += 1
        cy, cx = R.uniform(1, h - 1), R.uniform(1, w - 1)
        if support_here is not None and R.random() > support_here[int(cy), int(cx)]:
            continue
        if labels[int(cy), int(cx)]:
            continue
        rr = R.uniform(0.9, 1.9)
        y0, y1 = max(0, int(cy - rr) - 2), min(h, int(cy + rr) + 3)
        x0, x1 = max(0, int(cx - rr) - 2), min(w, int(cx + rr) + 3)
        d2 = (ys[y0:y1, None] - cy) ** 2 + (xs[None, x0:x1] - cx) ** 2
        mask = d2 <= rr * rr
        npx = int(mask.sum())
        if npx < 2 or labels[y0:y1, x0:x1][_dilate8(mask)].any():
            continue
        lab += 1
        placed_sites += 1
        labels[y0:y1, x0:x1][mask] = lab
        classes[lab] = "single_site"
        area_now.append(npx)
        area_full.append(npx)
        recs.append((cy, cx, None, 0.0, y0, y1, x0, x1))
        drawn.append(2 * rr * ps)
        sites[y0:y1, x0:x1][mask] += single_site_contrast * R.uniform(0.7, 1.3) * np.exp(-d2[mask] / (rr * rr))

    # ---- rendering ------------------------------------------------------------------------
    yn = (ys / max(h - 1, 1) - 0.5)[:, None]
    xn = (xs / max(w - 1, 1) - 0.5)[None, :]
    gdir = rng.uniform(0, 2 * np.pi)
    illum = 1 + gradient * 2 * (xn * np.cos(gdir) + yn * np.sin(gdir)) - vignetting * 2 * (xn * xn + yn * yn)
    illum = np.clip(illum, 0.05, None).astype(np.float32)
    part = thick * contrast
    post = None
    if sites is not None:
        part = part + sites
    if mode == "haadf":
        sig = 0.03 + support_level * tsup + part
        sig = sig * illum
    elif mode == "bf":
        mu = 0.35 * support_level * tsup + 0.5 * part
        sig = np.exp(-mu)
        hl = 0.25 if halo is None else halo
        if hl:  # defocus Fresnel fringe: I - k * laplacian(projected potential)
            sf = float(np.clip(0.6 / ps, 0.8, min(6.0, 0.3 * r_med + 0.8)))
            sig = sig + hl * ndi.gaussian_laplace(mu, sf) * sf * sf
        sig = sig * illum
        sp = 0.05 if speckle is None else speckle
        if sp:  # phase-contrast speckle of the amorphous support (~0.45 nm), not blurred by the PSF
            # narrow band around the graphitic 0.34 nm spacing, sharpened into worm-like fringes
            kpc = float(np.clip(ps / 0.34 if speckle_period_px is None else 1.0 / speckle_period_px, 0.06, 0.4))
            bw = float(np.clip(speckle_band, 0.05, 1.0)) * kpc
            pc = _filtered(spec * np.exp(1j * 1.3), kgrid, np.exp(-(((kgrid - kpc) / bw) ** 2)), shape)
            pc = np.tanh(1.5 * pc)
            post = sp * np.sqrt(tsup + 0.5 * part) * pc * illum
    elif mode == "sem":
        # bright rough support, darker particles with a bright edge (edge effect) rim
        mat = 0.75 + 0.1 * support_level * (tsup - 1) - 0.35 * part
        se = max(0.7, 0.05 * r_med)
        sm = ndi.gaussian_filter(part + 0.1 * support_level * tsup, se)
        gy, gx = np.gradient(sm)
        edge = np.sqrt(gx * gx + gy * gy) * (6.0 * se)  # ~ 2x the particle signal at its rim
        sig = (mat + (0.3 if halo is None else halo) * edge) * illum
    else:  # stm height map: substrate + particle caps
        z = 0.15 * support_level * (tsup - 1)
        step_h = (0.15 if rng.random() < 0.5 else 0.0) if terraces is None else float(terraces)
        if step_h:  # atomically flat terraces separated by monatomic steps
            lowf = _filtered(spec * 1j, kgrid, np.exp(-(kgrid * max(h, w) / 3) ** 2) * (kgrid > 0), shape)
            sdir = rng.uniform(0, 2 * np.pi)
            plane = (xn * np.cos(sdir) + yn * np.sin(sdir)) * rng.uniform(2, 10)  # vicinal: 2-10 steps
            steps = np.floor(plane + rng.uniform(0.3, 0.8) * lowf)
            z = z + step_h * (steps - 0.9 * plane)  # after the usual plane levelling
        sig = z + height * contrast + (sites if sites is not None else 0) + gradient * 4 * (xn * np.cos(gdir) + yn * np.sin(gdir))
    if blur > 0:
        sig = ndi.gaussian_filter(sig.astype(np.float32), blur)
    if post is not None:
        sig = sig + post
    sig = sig.astype(np.float32)
    if mode == "stm":
        rn = 0.08 if row_noise is None else row_noise
        if rn:
            off = rng.normal(0, rn, h) + np.cumsum(rng.normal(0, rn * 0.1, h))
            off -= np.linspace(off[0], off[-1], h)  # no net drift across the frame
            sig = sig + off[:, None].astype(np.float32)
        lag = rng.uniform(0.0, 0.6)
        if lag > 0.05:  # feedback lag: causal exponential smoothing along the fast scan axis
            kern = (1 - lag) * lag ** np.arange(int(np.ceil(np.log(0.01) / np.log(lag))) + 1)
            kern = (kern / kern.sum()).astype(np.float32)
            sig = ndi.correlate1d(sig, kern[::-1], axis=1, mode="nearest", origin=(len(kern) - 1) // 2)
        st = 0.01 if streaks is None else streaks
        nst = rng.binomial(h, st) if st else 0
        for rrow in rng.integers(0, h, nst):
            a, b = sorted(rng.integers(0, w, 2))
            sig[rrow, a:b + 1] += rng.normal(0, 0.4, b + 1 - a) + rng.choice([-1, 1]) * rng.uniform(0.2, 1.0)
        if noise:
            sig = sig + rng.normal(0, noise, shape).astype(np.float32)
    else:
        if dose:  # shot noise: exact Poisson where counts are low, its normal limit elsewhere
            lam = np.clip(sig, 0, None) * np.float32(dose)
            cnt = lam + np.sqrt(lam) * rng.standard_normal(shape, dtype=np.float32)
            low = lam < 20
            if low.any():
                cnt[low] = rng.poisson(lam[low])
            sig = cnt / np.float32(dose)
        if noise:
            sig = sig + rng.normal(0, noise, shape).astype(np.float32)
        rn = row_noise or 0.0
        if rn:
            sig = sig * (1 + rng.normal(0, rn, h)[:, None]).astype(np.float32) + rng.normal(0, rn * 0.3, h)[:, None]
        if streaks:
            for rrow in rng.integers(0, h, rng.binomial(h, streaks)):
                sig[rrow] += rng.normal(0, 0.3) * (sig.std() + 1e-6)

    lo_q, hi_q = clip_percentiles
    samp = sig[:: max(1, h // 128), :: max(1, w // 128)]
    lo, hi = np.percentile(samp, [lo_q, hi_q])
    if hi <= lo:
        hi = lo + 1e-6
    img = np.clip((sig - lo) / (hi - lo), 0, 1)
    if hot_pixels > 0:
        k = rng.binomial(h * w, hot_pixels)
        idx = rng.integers(0, h * w, k)
        img.ravel()[idx] = rng.integers(0, 2, k).astype(np.float32)
    top = np.iinfo(dtype).max
    out = np.round(img * top).astype(dtype)
    if jpeg_quality and dtype == np.uint8:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=int(jpeg_quality))
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("L"))
    area = np.bincount(labels.ravel(), minlength=lab + 1)[1:].astype(float)
    params.update(n_particles=n_particles, n_single_sites=placed_sites, lattice_periods_px=lat_period)
    return SyntheticImage(
        image=out,
        labels=labels,
        classes=classes,
        pixel_size_nm=ps,
        diameters_nm=2 * np.sqrt(area / np.pi) * ps,
        drawn_diameters_nm=np.asarray(drawn, float),
        params=params,
    )


#: the share of bright-field draws of :func:`random_micrograph` rendered as HRTEM on carbon
HRTEM_FRACTION = 0.5
#: the share of the other bright-field draws (particles >= 8 px) rendered as crowded fields:
#: clustered, overlapping particles of widely spread sizes and darkness on patchy support
DENSE_BF_FRACTION = 0.5


def _loguniform(rng, a, b):
    return float(np.exp(rng.uniform(np.log(a), np.log(b))))


def random_micrograph(rng_or_seed: int | np.random.Generator | None = None, shape: tuple[int, int] = (256, 256),
                      faint_haadf: float = 0.0, **overrides) -> SyntheticImage:
    """One micrograph with every parameter drawn from realistic ranges (training data).

    Mode (HAADF 45 %, BF 30 %, SEM 10 %, STM 15 %; half of the bright-field draws with
    particles >= 12 px are HRTEM on carbon, :data:`HRTEM_FRACTION`: faint particles under a
    worm-like phase-contrast texture 0.3-1x as strong as their own contrast; half of the
    other bright-field draws with particles >= 8 px are crowded fields,
    :data:`DENSE_BF_FRACTION`: 25-50 % of the area drawn as clusters of touching and
    overlapping particles with widely spread sizes and darkness on patchy support);
    median particle diameter 5–80 px
    (log-uniform) with a pixel size that keeps it 1–30 nm; size spread; density from
    1.5 % to 45 % of the area (sparse to crowded); touching / overlapping / clustered /
    packed fractions; round, elliptical and faceted shapes; support type, level,
    roughness, grain size and coverage; soft particle-sized support clumps (40 % of HAADF
    and BF images); particle contrast and brightness spread; PSF,
    gradient, vignetting; shot and read noise set from a drawn contrast-to-noise ratio
    per pixel (1.2–15, higher for small particles, so that every labelled particle stays
    visible); hot pixels, lattice fringes, halo, speckle, scan lines, single sites (HAADF),
    display stretch and JPEG quality. ``overrides`` fix any keyword of
    :func:`make_particles` (``mode`` is honoured before the mode-specific draws). The
    drawn parameters are in ``result.params``, with ``params["scene"]`` naming the kind of
    image (the mode, ``"hrtem"``, ``"crowded_bf"`` or ``"faint_haadf"``).

    ``faint_haadf`` (default 0: off) is the fraction of HAADF draws whose particle brightness
    spreads widely (log-normal spread 0.4-0.8, brightness growing as size ** 1.0-1.6, never
    below a quarter of a median particle's), with the noise lowered so that the faint ones
    stay visible: small, faint particles beside bright ones. The starter script uses it;
    the fine-tune's synthetic rehearsal does not. With 0 the draws are the same as without
    the keyword.
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    h, w = shape
    mode = str(overrides.get("mode", rng.choice(MODES, p=[0.45, 0.30, 0.10, 0.15])))
    d_px = _loguniform(rng, 5, 80)
    ps = _loguniform(rng, max(0.02, 1.0 / d_px), min(2.0, 30.0 / d_px))
    sigma = rng.uniform(0.08, 0.45)
    frac = _loguniform(rng, 0.015, 0.45)
    n = int(np.clip(round(frac * h * w / (np.pi * (d_px / 2) ** 2 * np.exp(2 * sigma**2))), 1, 300))
    crowded = frac > 0.15
    touching = rng.uniform(0.15, 0.6) if (crowded or rng.random() < 0.4) else rng.uniform(0, 0.15)
    overlap = 0.0 if rng.random() < 0.5 else rng.uniform(0, 0.25)
    clustered = 0.0 if rng.random() < 0.5 else rng.uniform(0.2, 0.9)
    packing = 0.0 if rng.random() < 0.9 else rng.uniform(0.5, 1.0)
    if packing:
        sigma = min(sigma, 0.15)
    support = str(rng.choice(SUPPORTS, p=[0.45, 0.25, 0.2, 0.1]))
    support_level = _loguniform(rng, 0.1, 1.0)
    texture = rng.uniform(0.1, 1.2)
    area_px = np.pi * (d_px / 2) ** 2
    cnr = _loguniform(rng, max(1.2, 5.0 / np.sqrt(area_px)), 15.0)
    # particle signal and the signal at a particle (for the shot noise), per mode
    if mode == "haadf":
        contrast = _loguniform(rng, 0.4, 2.5)
        support_level = min(support_level, 1.2 * contrast / max(texture, 0.3))
        delta, level = contrast, 0.03 + support_level + contrast
    elif mode == "bf":
        contrast = _loguniform(rng, 0.25, 1.5)
        ts = np.exp(-0.35 * support_level)
        delta, level = ts * (1 - np.exp(-0.5 * contrast)), ts
    elif mode == "sem":
        contrast = _loguniform(rng, 0.4, 1.5)
        delta, level = 0.35 * contrast, 0.75
    else:
        contrast = 1.0
        delta, level = 1.0, 1.0
    sd = delta / cnr
    f_read = 1.0 if (mode == "stm" or rng.random() < 0.15) else rng.uniform(0.0, 0.6)
    dose = None if f_read >= 1.0 else float(level / ((1 - f_read) * sd * sd))
    noise = float(np.sqrt(f_read) * sd)
    p = {
        "shape": shape, "n": n, "median_diameter_nm": d_px * ps, "sigma": sigma, "pixel_size_nm": ps, "mode": mode,
        "noise": noise, "dose": dose, "touching": touching, "overlap": overlap, "clustered": clustered,
        "cluster_size": rng.uniform(3, 20), "cluster_spread": rng.uniform(0.8, 4),
        "packing": packing, "packing_gap": rng.uniform(0.15, 0.6),
        "faceted": rng.uniform(0, 1), "aspect": (1.0, rng.uniform(1.05, 1.8)), "irregularity": rng.uniform(0, 0.08),
        "support": support, "support_level": support_level, "support_texture": texture,
        "support_grain_nm": _loguniform(rng, 8, 60),
        "support_coverage": 1.0 if rng.random() < 0.6 else rng.uniform(0.35, 1.0),
        "contrast": contrast, "thickness_exponent": rng.uniform(0.25, 0.7),
        "brightness_spread": rng.uniform(0.05, 0.4 if mode == "bf" else 0.2),
        "lattice": 0.0 if rng.random() < 0.6 else rng.uniform(0.05, 0.4),
        "halo": rng.uniform(-0.1, 0.5) if mode == "bf" else (rng.uniform(0.1, 0.6) * min(1.0, contrast) if mode == "sem" else None),
        "speckle": min(rng.uniform(0.0, 0.1), 0.8 * delta) if mode == "bf" else None,
        "blur": float(min(rng.uniform(0.3, 2.5), 0.2 * d_px)),
        "gradient": rng.uniform(0, 0.3), "vignetting": 0.0 if rng.random() < 0.7 else rng.uniform(0, 0.4),
        "hot_pixels": 0.0 if rng.random() < 0.8 else _loguniform(rng, 1e-5, 1e-3),
        "row_noise": rng.uniform(0.02, 0.15) if mode == "stm" else (0.0 if rng.random() < 0.7 else rng.uniform(0, 0.03)),
        "streaks": rng.uniform(0, 0.02) if mode == "stm" else 0.0,
        "single_sites": int(rng.integers(5, 60)) if (mode == "haadf" and rng.random() < 0.2) else 0,
        "single_site_contrast": rng.uniform(0.3, 0.8) * contrast,
        "clip_percentiles": (rng.uniform(0, 1.0), rng.uniform(99.0, 100.0)),
        "jpeg_quality": int(rng.integers(55, 96)) if rng.random() < 0.5 else None,
        "max_tries": 4 * n + 40,
    }
    scene = mode
    if mode == "bf" and rng.random() < HRTEM_FRACTION and d_px >= 12:
        scene = "hrtem"
        # HRTEM of particles on amorphous / graphitic carbon: a strong phase-contrast
        # texture (worm-like fringes a fraction of a particle wide) as strong as, or
        # stronger than, the particles' own faint absorption contrast; fringes inside
        # the particles. Humans label these particles by their dark, coherent cores.
        c_hr = _loguniform(rng, 0.35, 1.0)
        p["support_texture"] = float(rng.uniform(0.05, 0.4))
        ts = np.exp(-0.35 * p["support_level"])
        d_hr = ts * (1 - np.exp(-0.5 * c_hr))
        p.update(contrast=c_hr, support="carbon", support_coverage=1.0 if rng.random() < 0.7 else p["support_coverage"],
                 speckle=float(d_hr * rng.uniform(0.3, 1.0)), speckle_period_px=float(max(2.5, d_px * rng.uniform(0.08, 0.3))),
                 speckle_band=float(rng.uniform(0.12, 0.4)), lattice=rng.uniform(0.05, 0.4) if rng.random() < 0.6 else 0.0,
                 blur=float(min(p["blur"], 0.05 * d_px + 0.3)), halo=rng.uniform(0.0, 0.3))
        p["noise"] *= 0.5
        if p["dose"]:
            p["dose"] *= 4.0
    elif mode == "bf" and rng.random() < DENSE_BF_FRACTION and d_px >= 8:
        scene = "crowded_bf"
        # crowded bright-field fields of a high-loading catalyst: clusters of touching and
        # overlapping particles whose sizes spread widely (small ones faint, large ones dark,
        # darker where they overlap), on support patches with vacuum between them
        sig_d = float(rng.uniform(0.35, 0.6))
        frac_d = float(rng.uniform(0.25, 0.5))
        n_d = int(np.clip(round(frac_d * h * w / (np.pi * (d_px / 2) ** 2 * np.exp(2 * sig_d**2))), 1, 400))
        p.update(n=n_d, sigma=sig_d, overlap=float(rng.uniform(0.1, 0.35)), touching=float(rng.uniform(0.3, 0.6)),
                 clustered=float(rng.uniform(0.5, 0.9)), cluster_size=float(rng.uniform(5, 30)), packing=0.0,
                 brightness_spread=float(rng.uniform(0.3, 0.6)),
                 support_coverage=float(rng.uniform(0.4, 0.85)) if rng.random() < 0.6 else 1.0, max_tries=6 * n_d + 40)
    if faint_haadf > 0 and mode == "haadf" and rng.random() < faint_haadf:
        scene = "faint_haadf"
        p.update(brightness_spread=float(rng.uniform(0.4, 0.8)), size_contrast_exponent=float(rng.uniform(1.0, 1.6)))
        p["noise"] *= 0.6
        if p["dose"]:
            p["dose"] /= 0.36
    if mode in ("haadf", "bf") and rng.random() < 0.4:
        # soft particle-sized support clumps (hard negatives), 40 % of HAADF and BF images
        p["clouds"] = rng.uniform(0.25, 0.8)
        p["cloud_size"] = _loguniform(rng, 1.3, 4.0)
    p.update(overrides)
    out = make_particles(seed=rng, **p)
    out.params["cnr"] = float(cnr)
    out.params["scene"] = scene
    return out
