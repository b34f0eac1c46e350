"""Monte Carlo deposition of nanoparticles on a surface with defects.

A lattice model after the Methods of Boiko et al. (2021): particles start in solution;
every step the solution particles move randomly and adsorb with probability
``p_adsorb``; there is no leaching (desorption); a particle adsorbed on the pristine
surface moves by a random ``(±1, ±1)`` shift every step; a particle on a defect never
moves again. Given a defect map (lines such as step edges or grain boundaries, point
defects, defective areas) the model produces *ordered* particle arrangements (particles
decorate the defects); without defects the result is completely spatially random.

Model details (choices where the paper is silent)
-------------------------------------------------
* **Lattice and borders.** The surface is the pixel lattice of the defect map and it is
  **periodic** (a torus): particles leaving one side re-enter on the opposite side.
  This keeps the surface homogeneous (no border accumulation or depletion), so a
  defect-free run is exactly spatially uniform.
* **Solution particles** are modelled as particles *above* the surface at a lattice
  position ``(row, col)``: they start uniformly at random, random-walk by a shift in
  ``{-1, 0, 1}²`` every step and, with probability ``p_adsorb``, adsorb at the position
  they are above. (This is the simplest faithful reading of "move randomly and adsorb
  with probability 0.1".)
* **Adsorbed particles.** A particle that adsorbs on a defect pixel is fixed forever; a
  particle on pristine surface moves by one of the four diagonal shifts ``(±1, ±1)``
  every step and becomes fixed as soon as it lands on a defect pixel. Note that a
  diagonal walk can hop over a 1-px-wide diagonal line: use ``width_px >= 2``.
* **Order within a step:** first the adsorbed mobile particles move (and are fixed if they
  land on a defect), then the solution particles move and adsorb.
* **Exclusion** (``exclusion_px > 0``): no two adsorbed particles are ever within
  ``exclusion_px`` (Euclidean, periodic) of each other. Moves are made simultaneously
  and every mover that ends up crowded is sent back to its old position (both members
  of a conflicting pair), repeated until no mover that moved is crowded; adsorptions
  into a crowded place are rejected (the particle stays in solution and tries again).
  Cheap and vectorised, but "rejected" also means a crowded particle may wait a step.
* Everything is vectorised over particles (one set of numpy operations per step) and
  driven by one seeded :class:`numpy.random.Generator`. Random numbers are drawn only
  for the particles that are still active, which are determined by the past, so a run
  with ``steps=s`` is exactly the first ``s`` steps of a longer run with the same seed.
  The loop stops early once every particle is fixed.

:func:`render_deposition` turns a deposition into a micrograph with instance labels
(disks of log-normal diameter with a projected-thickness profile on a textured support,
PSF blur, shot and read noise), and :func:`ordering_sample` makes the ``ordering``
sample (ordered: particles on random line defects; disordered: no defects).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "Deposition",
    "defect_map",
    "ordering_sample",
    "random_defects",
    "render_deposition",
    "simulate_deposition",
]

_DIAG = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=np.int64)
_MODES = ("haadf", "bf", "sem", "stm")


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# -- defect maps ----------------------------------------------------------------------------


def defect_map(shape, lines=(), points=(), areas=(), width_px: float = 3) -> np.ndarray:
    """Rasterise defect geometry into a boolean map.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the map.
    lines : sequence of array_like
        Polylines, each an ``(N, 2)`` array of ``(row, col)`` vertices (N >= 2); e.g.
        step edges or grain boundaries. Drawn ``width_px`` pixels wide.
    points : sequence of tuple
        Point defects ``(row, col, radius)`` in pixels; each is a filled disk.
    areas : sequence of array_like
        Defective areas, each a polygon given as an ``(N, 2)`` array of ``(row, col)``
        vertices; filled.
    width_px : float, optional
        Width of the lines in pixels (pixels within ``(width_px - 1) / 2`` of the
        centre line are set; ``width_px=3`` gives a 3-px-wide horizontal line).

    Returns
    -------
    numpy.ndarray
        ``bool`` array of ``shape``, True on defects. Geometry outside the map is clipped.
    """
    shape = (int(shape[0]), int(shape[1]))
    out = np.zeros(shape, bool)
    centre = np.zeros(shape, bool)
    any_line = False
    for line in lines:
        v = np.asarray(line, float).reshape(-1, 2)
        if len(v) < 2:
            continue
        seg = np.diff(v, axis=0)
        n = np.maximum(2, np.ceil(np.hypot(seg[:, 0], seg[:, 1]) * 2).astype(int) + 1)
        t = np.concatenate([np.linspace(0.0, 1.0, k) for k in n])
        i = np.repeat(np.arange(len(seg)), n)
        p = np.rint(v[i] + t[:, None] * seg[i]).astype(np.int64)
        ok = (p[:, 0] >= 0) & (p[:, 0] < shape[0]) & (p[:, 1] >= 0) & (p[:, 1] < shape[1])
        centre[p[ok, 0], p[ok, 1]] = True
        any_line |= bool(ok.any())
    if any_line:
        r = max(0.0, (float(width_px) - 1.0) / 2.0)
        out |= ndi.distance_transform_edt(~centre) <= r + 1e-9 if r > 0 else centre
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    for pt in points:
        r0, c0, rad = (float(x) for x in pt)
        lo0, hi0 = max(0, int(np.floor(r0 - rad))), min(shape[0], int(np.ceil(r0 + rad)) + 1)
        lo1, hi1 = max(0, int(np.floor(c0 - rad))), min(shape[1], int(np.ceil(c0 + rad)) + 1)
        if lo0 >= hi0 or lo1 >= hi1:
            continue
        sub = (rr[lo0:hi0] - r0) ** 2 + (cc[:, lo1:hi1] - c0) ** 2 <= rad * rad + 1e-9
        out[lo0:hi0, lo1:hi1] |= sub
    if len(areas):
        from skimage.draw import polygon

        for poly in areas:
            v = np.asarray(poly, float).reshape(-1, 2)
            if len(v) < 3:
                continue
            pr, pc = polygon(v[:, 0], v[:, 1], shape=shape)
            out[pr, pc] = True
    return out


def random_defects(shape, kind: str = "lines", n: int | None = None, rng=None, width_px: float = 3):
    """Draw a random defect geometry and rasterise it.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the map.
    kind : {"lines", "points", "mixed"}
        ``"lines"``: ``n`` gently bent polylines crossing the whole field (step edges /
        grain boundaries); ``"points"``: ``n`` point defects of radius 1.5–3 px;
        ``"mixed"``: ``n`` lines, ``8 n`` points and ``max(1, n // 2)`` small polygonal
        defective areas.
    n : int, optional
        Number of lines (``"lines"``/``"mixed"``, default 5 and 3) or points
        (``"points"``, default 40).
    rng : int or numpy.random.Generator, optional
        Seed or generator.
    width_px : float, optional
        Line width in pixels (see :func:`defect_map`).

    Returns
    -------
    defects : numpy.ndarray
        ``bool`` map.
    geometry : dict
        ``{"lines": [...], "points": [...], "areas": [...], "width_px": width_px}`` — the
        arguments that reproduce the map with :func:`defect_map`.
    """
    if kind not in ("lines", "points", "mixed"):
        raise ValueError(f"kind must be 'lines', 'points' or 'mixed', not {kind!r}")
    rng = _rng(rng)
    H, W = int(shape[0]), int(shape[1])
    if n is None:
        n = {"lines": 5, "points": 40, "mixed": 3}[kind]
    lines, points, areas = [], [], []
    diag = float(np.hypot(H, W))

    def _line():
        # a line through a random point at a random angle, bent by a smooth random offset
        c = rng.uniform([0, 0], [H, W])
        a = rng.uniform(0, np.pi)
        d = np.array([np.sin(a), np.cos(a)])
        nrm = np.array([d[1], -d[0]])
        s = np.linspace(-diag / 2, diag / 2, 17)
        bend = np.cumsum(rng.normal(0.0, 0.04 * diag / 16, len(s)))
        bend -= np.linspace(bend[0], bend[-1], len(s))
        return c + s[:, None] * d + bend[:, None] * nrm

    def _points(k):
        return [(float(rng.uniform(0, H)), float(rng.uniform(0, W)), float(rng.uniform(1.5, 3.0))) for _ in range(k)]

    if kind == "lines":
        lines = [_line() for _ in range(n)]
    elif kind == "points":
        points = _points(n)
    else:
        lines = [_line() for _ in range(n)]
        points = _points(8 * n)
        for _ in range(max(1, n // 2)):
            c = rng.uniform([0, 0], [H, W])
            k = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = rng.uniform(0.03, 0.06) * min(H, W) * rng.uniform(0.7, 1.3, k)
            areas.append(c + np.stack([rad * np.sin(ang), rad * np.cos(ang)], axis=1))
    geom = {"lines": lines, "points": points, "areas": areas, "width_px": width_px}
    return defect_map((H, W), lines, points, areas, width_px=width_px), geom


# -- simulation ----------------------------------------------------------------------------


@dataclass
class Deposition:
    """Result of :func:`simulate_deposition`.

    Attributes
    ----------
    positions : numpy.ndarray
        ``(M, 2)`` float ``(row, col)`` positions of the adsorbed particles (lattice
        pixel centres), in the order of the particle ids.
    on_defect : numpy.ndarray
        ``(M,)`` bool, True for particles fixed on a defect.
    steps : int
        Number of steps simulated (fewer than asked when every particle was fixed early).
    defect_map : numpy.ndarray
        The ``bool`` defect map (all False when simulated without defects).
    ids : numpy.ndarray
        ``(M,)`` index of each adsorbed particle among the ``n_particles`` simulated;
        the same id refers to the same particle in runs with the same seed.
    fixed_step : numpy.ndarray
        ``(M,)`` step at which the particle was fixed on a defect (-1: still mobile).
    n_particles : int
        Number of particles simulated (adsorbed + still in solution).
    """

    positions: np.ndarray
    on_defect: np.ndarray
    steps: int
    defect_map: np.ndarray
    ids: np.ndarray | None = None
    fixed_step: np.ndarray | None = None
    n_particles: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the simulated surface."""
        return tuple(self.defect_map.shape)

    @property
    def n_solution(self) -> int:
        """Particles still in solution at the end."""
        return int(self.n_particles - len(self.positions))


_SOL, _MOB, _FIX = 0, 1, 2


def _disk_offsets(r: float) -> np.ndarray:
    k = int(np.floor(r))
    o = np.mgrid[-k : k + 1, -k : k + 1].reshape(2, -1).T
    return o[(o * o).sum(1) <= r * r + 1e-9]


def _crowded(occ, pos, offsets, self_at_pos):
    """Adsorbed particles within the exclusion disk around ``pos`` (``occ`` includes the
    particle itself at ``pos``, hence minus ``self_at_pos``)."""
    H, W = occ.shape
    r = (pos[:, 0, None] + offsets[None, :, 0]) % H
    c = (pos[:, 1, None] + offsets[None, :, 1]) % W
    return occ[r, c].sum(1) - self_at_pos


def simulate_deposition(
    defects: np.ndarray | None,
    n_particles: int,
    *,
    steps: int = 2000,
    p_adsorb: float = 0.1,
    seed=0,
    exclusion_px: float = 0,
    shape: tuple[int, int] | None = None,
) -> Deposition:
    """Monte Carlo deposition of particles from solution onto a surface with defects.

    See the module docstring for the model (periodic surface, random-walking solution
    particles that adsorb with ``p_adsorb``, diagonal ``(±1, ±1)`` hops on pristine
    surface, particles on defects fixed, no leaching).

    Parameters
    ----------
    defects : numpy.ndarray or None
        ``bool`` defect map; its shape is the surface. ``None``: no defects on a surface
        of ``shape`` (default ``(512, 512)``).
    n_particles : int
        Number of particles in solution at the start.
    steps : int, optional
        Number of Monte Carlo steps.
    p_adsorb : float, optional
        Adsorption probability per step of a solution particle.
    seed : int or numpy.random.Generator, optional
        Seed; the same seed gives the same run.
    exclusion_px : float, optional
        Adsorbed particles are kept more than ``exclusion_px`` apart (0: several may share
        a pixel); see the module docstring.
    shape : tuple of int, optional
        Surface shape when ``defects`` is None.

    Returns
    -------
    Deposition
        Positions of the adsorbed particles and whether they are fixed on a defect.
    """
    if defects is None:
        defects = np.zeros(shape if shape is not None else (512, 512), bool)
    defects = np.asarray(defects, bool)
    if defects.ndim != 2:
        raise ValueError("defects must be a 2-D boolean map")
    if not 0.0 <= p_adsorb <= 1.0:
        raise ValueError("p_adsorb must be in [0, 1]")
    H, W = defects.shape
    n = int(n_particles)
    rng = _rng(seed)
    pos = np.stack([rng.integers(0, H, n), rng.integers(0, W, n)], axis=1).astype(np.int64)
    state = np.zeros(n, np.int8)
    fixed_step = np.full(n, -1, np.int64)
    ex = float(exclusion_px)
    use_ex = ex > 0
    if use_ex:
        offsets = _disk_offsets(ex)
        occ = np.zeros((H, W), np.int32)  # adsorbed particles per pixel
    any_defect = bool(defects.any())
    done = 0
    for step in range(int(steps)):
        done = step + 1
        # 1) adsorbed mobile particles hop diagonally; fixed when they land on a defect
        mob = np.flatnonzero(state == _MOB)
        if len(mob):
            old = pos[mob]
            new = old + _DIAG[rng.integers(0, 4, len(mob))]
            new[:, 0] %= H
            new[:, 1] %= W
            if use_ex:
                np.subtract.at(occ, (old[:, 0], old[:, 1]), 1)
                np.add.at(occ, (new[:, 0], new[:, 1]), 1)
                # revert crowded movers until no mover that moved is crowded: the reverted ones
                # are back where they were valid at the start of the step, so the exclusion
                # holds exactly after every step
                moved = np.ones(len(mob), bool)
                while True:
                    m = np.flatnonzero(moved)
                    bad = m[_crowded(occ, new[m], offsets, 1) > 0]
                    if not len(bad):
                        break
                    np.subtract.at(occ, (new[bad, 0], new[bad, 1]), 1)
                    np.add.at(occ, (old[bad, 0], old[bad, 1]), 1)
                    new[bad] = old[bad]
                    moved[bad] = False
            pos[mob] = new
            if any_defect:
                hit = defects[new[:, 0], new[:, 1]]
                state[mob[hit]] = _FIX
                fixed_step[mob[hit]] = step
        # 2) solution particles random-walk and adsorb with probability p_adsorb
        sol = np.flatnonzero(state == _SOL)
        if len(sol):
            p = pos[sol] + rng.integers(-1, 2, (len(sol), 2))
            p[:, 0] %= H
            p[:, 1] %= W
            pos[sol] = p
            ads = rng.random(len(sol)) < p_adsorb
            if ads.any():
                idx, q = sol[ads], p[ads]
                if use_ex:
                    np.add.at(occ, (q[:, 0], q[:, 1]), 1)
                    bad = _crowded(occ, q, offsets, 1) > 0
                    if bad.any():
                        np.subtract.at(occ, (q[bad, 0], q[bad, 1]), 1)
                        idx, q = idx[~bad], q[~bad]
                on = defects[q[:, 0], q[:, 1]]
                state[idx] = np.where(on, _FIX, _MOB)
                fixed_step[idx[on]] = step
        if not (state != _FIX).any():
            break
    ids = np.flatnonzero(state != _SOL)
    return Deposition(
        positions=pos[ids].astype(float),
        on_defect=state[ids] == _FIX,
        steps=done,
        defect_map=defects,
        ids=ids,
        fixed_step=fixed_step[ids],
        n_particles=n,
    )


# -- rendering -----------------------------------------------------------------------------


def _texture(rng, shape, scale_px):
    """Zero-mean, unit-sd multi-scale support texture (sum of blurred white noise)."""
    t = np.zeros(shape, np.float32)
    for s, w in ((scale_px, 1.0), (scale_px / 3, 0.6), (1.0, 0.35)):
        f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(s, 0.5), mode="wrap")
        sd = f.std()
        t += w * (f / sd if sd > 0 else f)
    sd = t.std()
    return t / sd if sd > 0 else t


def render_deposition(
    dep: Deposition,
    shape=None,
    *,
    diameter_nm: float = 3.0,
    sigma: float = 0.15,
    pixel_size_nm: float = 0.5,
    mode: str = "haadf",
    noise: float = 0.05,
    dose: float | None = 400.0,
    blur: float = 1.0,
    support_texture: float = 0.4,
    seed=0,
):
    """Render a deposition as a noisy micrograph with exact instance labels.

    ``make_particles`` in :mod:`napari_nanodefect.core.synthetic` places particles itself
    and cannot take given centres, so this is a small self-contained renderer in the same
    spirit: each particle is a disk of log-normal diameter (median ``diameter_nm``,
    log-sd ``sigma``) with a projected-thickness profile ``sqrt(1 - d²/r²)``; where disks
    overlap the particle with the higher id owns the pixels (it lies on top); a
    multi-scale textured support, Gaussian PSF, Poisson shot noise at ``dose`` and
    Gaussian read noise (``noise``) complete the image.

    Parameters
    ----------
    dep : Deposition
        The simulated deposition.
    shape : tuple of int, optional
        Output shape; default the simulated surface. Positions are scaled from the
        surface to this shape.
    diameter_nm, sigma : float
        Median diameter and log-normal spread of the particles.
    pixel_size_nm : float
        Pixel size of the output image.
    mode : {"haadf", "bf", "sem", "stm"}
        Contrast: ``"haadf"`` and ``"stm"`` bright particles on a dark support;
        ``"bf"`` and ``"sem"`` dark particles on a bright support (as in
        :mod:`~napari_nanodefect.core.synthetic`; ``"sem"`` adds a bright edge rim).
    noise : float
        Gaussian read-noise sd relative to the particle contrast.
    dose : float or None
        Electrons per pixel for Poisson shot noise (None: no shot noise).
    blur : float
        PSF Gaussian sigma in pixels.
    support_texture : float
        Relative roughness of the support.
    seed : int or numpy.random.Generator
        Seed for sizes, texture and noise.

    Returns
    -------
    image : numpy.ndarray
        ``uint8`` micrograph.
    labels : numpy.ndarray
        ``uint16`` instance labels (0 = background), consecutive from 1; a particle
        entirely covered by later ones gets no label.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, not {mode!r}")
    rng = _rng(seed)
    src = dep.shape
    shape = tuple(int(s) for s in (shape if shape is not None else src))
    H, W = shape
    pts = np.asarray(dep.positions, float).reshape(-1, 2)
    pts = (pts + 0.5) * (np.array(shape, float) / np.array(src, float)) - 0.5
    M = len(pts)
    r_px = 0.5 * diameter_nm / pixel_size_nm * np.exp(sigma * rng.standard_normal(M))
    r_px = np.clip(r_px, 0.75, None)
    labels = np.zeros(shape, np.int32)
    thick = np.zeros(shape, np.float32)
    if M:
        k = int(np.ceil(r_px.max())) + 1
        off = np.mgrid[-k : k + 1, -k : k + 1].reshape(2, -1).T  # (K, 2)
        cen = np.rint(pts).astype(np.int64)
        rr = cen[:, 0, None] + off[None, :, 0]
        cc = cen[:, 1, None] + off[None, :, 1]
        d2 = (rr - pts[:, 0, None]) ** 2 + (cc - pts[:, 1, None]) ** 2
        inside = (d2 <= (r_px**2)[:, None]) & (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        pi, ki = np.nonzero(inside)
        rows, cols = rr[pi, ki], cc[pi, ki]
        np.maximum.at(labels, (rows, cols), pi + 1)  # the higher id lies on top
        own = labels[rows, cols] == pi + 1
        h = np.sqrt(np.clip(1.0 - d2[pi, ki] / r_px[pi] ** 2, 0.0, 1.0)) * np.sqrt(r_px[pi] / np.median(r_px))
        thick[rows[own], cols[own]] = h[own]
        # consecutive relabelling (fully covered particles vanish)
        used = np.unique(labels)
        lut = np.zeros(M + 1, np.int32)
        lut[used] = np.arange(len(used))
        labels = lut[labels]
    tex = _texture(rng, shape, max(2.0, 4.0 * diameter_nm / pixel_size_nm))
    part = labels > 0
    contrast = 1.0
    if mode in ("haadf", "stm"):
        sig = 0.3 * (1 + support_texture * 0.5 * tex) + contrast * (0.4 + 0.6 * thick) * part
    elif mode == "bf":
        sig = np.exp(-(0.25 * (1 + support_texture * 0.5 * tex) + 1.2 * contrast * (0.4 + 0.6 * thick) * part))
    else:  # sem: dark particles with a bright rim on a bright rough support
        rim = part & ~ndi.binary_erosion(part, iterations=1, border_value=1)
        sig = 0.8 * (1 + support_texture * 0.3 * tex) - 0.45 * contrast * part + 0.35 * rim
    sig = sig.astype(np.float32)
    if blur > 0:
        sig = ndi.gaussian_filter(sig, blur)
    sig = np.clip(sig, 1e-4, None)
    if dose:
        scale = dose / max(float(sig.max()), 1e-6)
        sig = rng.poisson(sig * scale).astype(np.float32) / scale
    if noise > 0:
        sig = sig + rng.normal(0.0, noise * 0.5, shape).astype(np.float32)
    lo, hi = np.percentile(sig, (0.5, 99.5))
    img = np.clip((sig - lo) / max(hi - lo, 1e-6), 0, 1)
    return (img * 255 + 0.5).astype(np.uint8), labels.astype(np.uint16)


# -- sample --------------------------------------------------------------------------------


def ordering_sample(shape=(512, 512), ordered: bool = True, seed=0):
    """The ``ordering`` sample: particles deposited on random line defects, or on none.

    Simulates ``shape`` with :func:`simulate_deposition` (about one particle per
    700 px², 2000 steps, ``exclusion_px = 7`` so that the 6-px particles stay separate)
    on :func:`random_defects` lines (10 per 512 px, ``ordered=True``; roughly 60 % of the
    particles end on a line) or on a pristine surface (``ordered=False``), and renders a
    HAADF micrograph of 3 nm particles at 0.5 nm/px with :func:`render_deposition`.
    About 1 s for 512 x 512.

    Parameters
    ----------
    shape : tuple of int
        Image shape.
    ordered : bool
        Line defects (ordered particles) or none (random particles).
    seed : int
        Seed.

    Returns
    -------
    image : numpy.ndarray
        ``uint8`` HAADF micrograph.
    labels : numpy.ndarray
        ``uint16`` instance labels.
    defects : numpy.ndarray
        ``bool`` defect map used (all False when ``ordered=False``).
    pixel_size_nm : float
        Pixel size.
    """
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    pixel_size_nm = 0.5
    if ordered:
        n_lines = max(2, round(10 * np.sqrt(shape[0] * shape[1]) / 512))
        defects, _ = random_defects(shape, "lines", n=n_lines, rng=rng, width_px=3)
    else:
        defects = np.zeros(shape, bool)
    n = max(1, int(shape[0] * shape[1] / 700))
    dep = simulate_deposition(defects, n, steps=2000, seed=rng, exclusion_px=7)
    image, labels = render_deposition(dep, shape, diameter_nm=3.0, pixel_size_nm=pixel_size_nm, mode="haadf", seed=rng)
    return image, labels, defects, pixel_size_nm


def length_inside(lines, shape) -> float:
    """Total length (px) of ``(row, col)`` polylines inside an image of ``shape`` (pixel
    centres span ``[-0.5, n - 0.5]``): the true length of :func:`random_defects` lines,
    which run past the borders. Each segment is sampled at 400 points."""
    H, W = int(shape[0]), int(shape[1])
    total = 0.0
    t = (np.arange(400) + 0.5) / 400
    for v in lines:
        v = np.asarray(v, float)
        for a, d in zip(v[:-1], np.diff(v, axis=0)):
            mid = a + t[:, None] * d
            ok = (mid[:, 0] >= -0.5) & (mid[:, 0] <= H - 0.5) & (mid[:, 1] >= -0.5) & (mid[:, 1] <= W - 0.5)
            total += ok.sum() * float(np.hypot(*d)) / 400
    return total
