"""One row per particle, in nanometres, from an instance label image (Qt-free).

:func:`measure_particles` turns a 2-D instance label image (``0`` = background) into a
``pandas.DataFrame`` with one row per label — usable as is as a napari ``layer.features``
table, written as ``particles.csv`` by ``nanodefect measure``.
:class:`ParticleMeasurer` keeps the table of one label image and re-measures only the
labels that changed (the napari widgets call it after each paint/erase/fill).

Everything is vectorised over all particles at once (no Python loop per particle), so
10 000 particles on a 4096² image are measured in well under two seconds.

Conventions
-----------
Pixel-corner coordinates as everywhere in the project: the pixel at row ``r``, column
``c`` covers ``[c, c+1) × [r, r+1)``; centroids are means of pixel centres
``(r + 0.5, c + 0.5)``. Lengths are in nm (``*_nm``) when the pixel size is known; all
``*_nm`` columns are NaN when it is not (``area_px``, ``ecd_px`` and pixel coordinates are
always filled).

Columns and how they are measured
---------------------------------
``label``            the instance label value.
``class``            class name (from ``classes``/``class_index``; ``"particle"`` by default).
``area_px``, ``area_nm2``   pixel count, and pixel count × pixel size².
``ecd_nm``           equivalent circular diameter D = 2·sqrt(S/π) (Nartova et al. 2024).
``perimeter_nm``     length of the marching-squares contour (the polygon through the
                     midpoints of the pixel edges between object and outside) after two
                     passes of [1, 2, 1]/4 vertex smoothing along the contour: within ±1 % for
                     disks of radius 4–100 px and rectangles at any angle — not the pixel-edge
                     (staircase) count, which is 27 % long for disks.
``circularity``      4π·A/P² with A the area of the (unsmoothed) contour polygon (≈ 1 for a
                     disk, π/4 for a square), capped at 1 (objects of a few pixels).
``solidity``         contour-polygon area / area of its convex hull (the polygon through the
                     contour's extreme points in 96 directions), capped at 1.
``feret_max_nm``, ``feret_min_nm``   largest and smallest caliper width of the contour
                     (max over 48 directions, the minimum refined to < 0.001° by golden-section
                     search per particle); ``feret_angle_deg``: direction of the max Feret.
``circle_fit_d_nm``  diameter of the least-squares (Kåsa) circle through the boundary-edge
                     midpoints (Zelenka et al. 2022 used a circle fit for particle diameters).
``major_axis_nm``, ``minor_axis_nm``, ``aspect_ratio``, ``orientation_deg``
                     the ellipse with the particle's second moments (pixels as unit squares:
                     the 1/12 px² of each pixel's own variance is included, so an ellipse of
                     axes a, b gives 2a, 2b without a ~1 px bias); orientation of the major axis
                     in degrees counter-clockwise from the image x axis (y up).
``centroid_y_px``, ``centroid_x_px``, ``centroid_y_nm``, ``centroid_x_nm``
``bbox_y0``, ``bbox_x0``, ``bbox_y1``, ``bbox_x1``   pixel bounding box (end exclusive).
``mean_intensity``, ``max_intensity``  of ``image`` (heights for STM) over the particle.
``touches_edge``     the particle touches the border of the analysed region (image minus
                     info bar, or the crop it lies in).
``nn_distance_nm``   centre-to-centre distance to the nearest other particle.
``nn_edge_distance_nm``  edge-to-edge (gap) distance to the nearest other particle: the
                     separating distance of the two contours' convex hulls, searched among the
                     8 nearest particles by centre distance; 0 when they touch or overlap.
``region``           index of the analysed region (crop) holding the centroid (0 for one).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import NanodefectError

__all__ = ["COLUMNS", "ParticleMeasurer", "measure_particles", "region_bounds"]

#: number of caliper directions over [0, π)
N_DIR = 48
#: neighbours (by centre distance) searched for the edge-to-edge distance
N_NEIGHBOURS = 8

_SQ = np.sqrt(0.5)
# marching-squares contributions of a 2x2 window by the pattern of corners belonging to one
# object (bits: 1 top-left, 2 top-right, 4 bottom-left, 8 bottom-right); diagonal pairs are
# joined (8-connected objects). LEN: contour length; DAREA: contour-polygon area minus the
# quarter-pixel share of the corners (so polygon area = pixel count + sum of DAREA).
_POP = np.array([bin(i).count("1") for i in range(16)])
_LEN = np.zeros(16)
_DAREA = np.zeros(16)
for _code in range(1, 15):
    if _POP[_code] in (1, 3):
        _LEN[_code] = _SQ
        _DAREA[_code] = -0.125 if _POP[_code] == 1 else 0.125
    elif _code in (6, 9):
        _LEN[_code] = 2 * _SQ
        _DAREA[_code] = 0.25
    else:
        _LEN[_code] = 1.0

COLUMNS = [
    "label", "class", "area_px", "area_nm2", "ecd_px", "ecd_nm", "perimeter_nm", "circularity", "solidity",
    "feret_max_nm", "feret_min_nm", "feret_angle_deg", "circle_fit_d_nm", "major_axis_nm", "minor_axis_nm",
    "aspect_ratio", "orientation_deg", "centroid_y_px", "centroid_x_px", "centroid_y_nm", "centroid_x_nm",
    "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "mean_intensity", "max_intensity", "touches_edge",
    "nn_distance_nm", "nn_edge_distance_nm", "region",
]

Region = tuple[int, int, int, int]  # y0, x0, y1, x1 (pixels, end exclusive)


# --------------------------------------------------------------------------- input checks


def _check_labels(labels: Any) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 2:
        raise NanodefectError(f"a label image must be 2-D, got shape {a.shape}")
    if a.dtype == bool:
        from scipy import ndimage as ndi

        return ndi.label(a, structure=np.ones((3, 3)))[0].astype(np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.mod(a, 1) == 0):
            a = a.astype(np.int64)
        else:
            raise NanodefectError(f"a label image must hold integers, got {a.dtype}")
    if a.size and a.min() < 0:
        raise NanodefectError("a label image must not hold negative labels")
    if a.dtype.itemsize > 4 or a.dtype == np.uint32:
        if a.size and a.max() > np.iinfo(np.int32).max:
            raise NanodefectError("label values above 2^31 are not supported")
        a = a.astype(np.int32)
    return a


def region_bounds(shape: tuple[int, int], regions: Sequence[Region] | None) -> list[Region]:
    """The analysed rectangles, clipped to the image (the whole image when none given)."""
    h, w = int(shape[0]), int(shape[1])
    if not regions:
        return [(0, 0, h, w)]
    out = []
    for r in regions:
        y0, x0, y1, x1 = (int(round(v)) for v in r)
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        if y1 > y0 and x1 > x0:
            out.append((y0, x0, y1, x1))
    if not out:
        raise NanodefectError("no analysed region lies inside the image")
    return out


# --------------------------------------------------------------------------- geometry passes


#: pixels per row band in the whole-image passes (bounds the memory on huge images)
BAND_PIXELS = 2_000_000


def _bands(h: int, w: int) -> list[tuple[int, int]]:
    step = max(8, BAND_PIXELS // max(w, 1))
    return [(r0, min(r0 + step, h)) for r0 in range(0, h, step)]


def _band_pixels(lab: np.ndarray):
    """For each row band: ``(first row, end row, flat indices in the band, labels, rows in
    the band, columns)`` of the labelled pixels."""
    h, w = lab.shape
    for r0, r1 in _bands(h, w):
        flat = lab[r0:r1].ravel()
        idx = np.flatnonzero(flat)
        if idx.size:
            ys = idx // w
            yield r0, r1, idx, flat[idx], ys, idx - ys * w


def _pixel_moments(lab: np.ndarray, n: int, image: np.ndarray | None, oy: int, ox: int) -> dict[str, np.ndarray]:
    """Counts, centroids, second central moments (pixels as unit squares), bounding boxes
    and intensities of every label: bincounts over row bands (bounded memory)."""
    h, w = lab.shape
    acc = {k: np.zeros(n + 1) for k in ("count", "sy", "sx", "syy", "sxx", "sxy")}
    y0 = np.full(n + 1, h, np.int64)
    x0 = np.full(n + 1, w, np.int64)
    y1 = np.full(n + 1, -1, np.int64)
    x1 = np.full(n + 1, -1, np.int64)
    if image is not None:
        acc["int"] = np.zeros(n + 1)
        mxv = np.full(n + 1, -np.inf)
    for r0, r1, idx, lv, ys, xs in _band_pixels(lab):
        ys += r0
        acc["count"] += np.bincount(lv, minlength=n + 1)
        acc["sy"] += np.bincount(lv, ys + 0.5, n + 1)
        acc["sx"] += np.bincount(lv, xs + 0.5, n + 1)
        np.minimum.at(y0, lv, ys)
        np.minimum.at(x0, lv, xs)
        np.maximum.at(y1, lv, ys)
        np.maximum.at(x1, lv, xs)
        if image is not None:
            vals = image[r0:r1].ravel()[idx].astype(np.float64)
            acc["int"] += np.bincount(lv, vals, n + 1)
            np.maximum.at(mxv, lv, vals)
    cnt = acc["count"]
    safe = np.maximum(cnt, 1)
    my, mx = acc["sy"] / safe, acc["sx"] / safe
    # second pass for central moments (exact, no cancellation), same bands
    for r0, _, _, lv, ys, xs in _band_pixels(lab):
        dy = ys + (r0 + 0.5) - my[lv]
        dx = xs + 0.5 - mx[lv]
        acc["syy"] += np.bincount(lv, dy * dy, n + 1)
        acc["sxx"] += np.bincount(lv, dx * dx, n + 1)
        acc["sxy"] += np.bincount(lv, dx * dy, n + 1)
    out = {
        "count": cnt, "my": my + oy, "mx": mx + ox,
        "cyy": acc["syy"] / safe + 1.0 / 12.0,
        "cxx": acc["sxx"] / safe + 1.0 / 12.0,
        "cxy": acc["sxy"] / safe,
        "y0": y0 + oy, "x0": x0 + ox, "y1": y1 + 1 + oy, "x1": x1 + 1 + ox,
    }
    if image is not None:
        out["mean_int"] = acc["int"] / safe
        out["max_int"] = mxv
    return out


def _contour_pass(lab: np.ndarray, n: int, smooth: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Perimeter and contour-area correction per label, over row bands of 2x2 windows with
    a halo of ``smooth + 2`` window rows for the smoothing (exact: a segment's smoothed
    ends depend on vertices at most ``smooth`` window rows away)."""
    h, w = lab.shape
    length = np.zeros(n + 1)
    darea = np.zeros(n + 1)
    halo = smooth + 2
    for r0, r1 in _bands(h + 1, w):  # window rows 0..h of the padded image
        a0, a1 = max(r0 - halo, 0), min(r1 + halo, h + 1)
        # padded rows a0..a1 (inclusive end for the 2x2 windows) <- image rows a0-1..a1-1
        src = lab[max(a0 - 1, 0):min(a1, h)]
        top = 1 if a0 == 0 else 0
        bottom = 1 if a1 >= h + 1 else 0
        p = np.pad(src, ((top, bottom), (1, 1)))
        ln, da = _contour_window(p, n, smooth, core=(r0 - a0, r1 - a0))
        length += ln
        darea += da
    return length, darea


def _contour_window(p: np.ndarray, n: int, smooth: int, core: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Perimeter (smoothed marching-squares contour) and contour-polygon area correction
    per label.

    The marching-squares contour of a binary object runs through the midpoints of the
    pixel edges between object and outside; its segments are local to 2x2 windows, and so
    is the graph that links them (each midpoint is shared by the two windows on either
    side of its pixel edge). The vertices are smoothed along that graph with the kernel
    ``[1, 2, 1] / 4`` applied ``smooth`` times, which removes the staircase of edges at
    oblique angles (the raw contour is ~5.5 % long for disks, up to 8 % at slope 1:2) while
    shrinking curves very little: measured errors are within ±1 % for disks of radius
    4–100 px and rectangles at any angle (tests/test_measure.py).
    """
    hp, wp = p.shape
    q = (p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:])
    mixed = (q[0] != q[1]) | (q[0] != q[2]) | (q[0] != q[3])
    r, c = np.nonzero(mixed)
    corners = [x[r, c] for x in q]
    nv = hp * wp
    # vertex ids of the four window edges: horizontal pairs (top, bottom), vertical (left, right)
    edge_ids = np.stack([r * wp + c, (r + 1) * wp + c, nv + r * wp + c, nv + r * wp + c + 1], 1)
    darea = np.zeros(n + 1)
    seg_a, seg_b, seg_l, seg_core = [], [], [], []
    in_core = (r >= core[0]) & (r < core[1])
    for k in range(4):
        lk = corners[k]
        keep = lk > 0
        for j in range(k):  # each label of a window once, from its first corner
            keep &= corners[j] != lk
        if not keep.any():
            continue
        lk = lk[keep]
        ids = edge_ids[keep]
        kc = in_core[keep]
        code = np.zeros(lk.size, np.int64)
        for j in range(4):
            code |= (corners[j][keep] == lk).astype(np.int64) << j
        darea += np.bincount(lk[kc], _DAREA[code[kc]], n + 1)
        bit = [(code >> j) & 1 for j in range(4)]
        cross = np.stack([bit[0] != bit[1], bit[2] != bit[3], bit[0] != bit[2], bit[1] != bit[3]], 1)
        plain = (code != 6) & (code != 9)
        cr = cross[plain]
        first = np.argmax(cr, 1)
        cr[np.arange(first.size), first] = False
        second = np.argmax(cr, 1)
        rows = np.flatnonzero(plain)
        seg_a.append(ids[rows, first])
        seg_b.append(ids[rows, second])
        seg_l.append(lk[plain])
        seg_core.append(kc[plain])
        # saddles, diagonal corners joined: cut around the two outside corners
        for code_v, pairs in ((9, ((0, 3), (2, 1))), (6, ((0, 2), (1, 3)))):
            m = code == code_v
            if m.any():
                for ea, eb in pairs:
                    seg_a.append(ids[m, ea])
                    seg_b.append(ids[m, eb])
                    seg_l.append(lk[m])
                    seg_core.append(kc[m])
    if not seg_a:
        return np.zeros(n + 1), darea
    a = np.concatenate(seg_a)
    b = np.concatenate(seg_b)
    lab_seg = np.concatenate(seg_l).astype(np.int64)
    is_core = np.concatenate(seg_core)
    keys = np.concatenate([lab_seg * (2 * nv) + a, lab_seg * (2 * nv) + b])
    uk, inv = np.unique(keys, return_inverse=True)
    ia, ib = inv[: a.size], inv[a.size:]
    vid = uk % (2 * nv)
    is_v = vid >= nv
    vid = np.where(is_v, vid - nv, vid)
    vr, vc = vid // wp, vid % wp
    pts = np.stack([np.where(is_v, vr, vr - 0.5), np.where(is_v, vc - 0.5, vc)], 1).astype(np.float64)
    if smooth:
        ends = np.concatenate([ia, ib])
        other = np.concatenate([ib, ia])
        order = np.argsort(ends, kind="stable")
        e_s, o_s = ends[order], other[order]
        # every vertex of a closed contour has two segments; at the outer rows of a band's
        # halo a vertex may have one (it then counts as its own second neighbour)
        first = np.r_[True, e_s[1:] != e_s[:-1]]
        nb = np.repeat(np.arange(uk.size)[:, None], 2, axis=1)
        nb[e_s[first], 0] = o_s[first]
        nb[e_s[~first], 1] = o_s[~first]
        for _ in range(smooth):
            pts = (pts[nb[:, 0]] + 2 * pts + pts[nb[:, 1]]) * 0.25
    d = np.hypot(pts[ia, 0] - pts[ib, 0], pts[ia, 1] - pts[ib, 1])
    return np.bincount(lab_seg[is_core], d[is_core], n + 1), darea


def _edge_midpoints(lab: np.ndarray, oy: int, ox: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Midpoints of the pixel edges between an object and anything else (the vertices of its
    marching-squares contour), with their label; pixel-corner coordinates."""
    p = np.pad(lab, 1)
    a, b = p[:, :-1], p[:, 1:]
    r, c = np.nonzero(a != b)
    la, lb = a[r, c], b[r, c]
    hy = r - 0.5  # (r-1) + 0.5
    hx = c.astype(np.float64)
    a, b = p[:-1, :], p[1:, :]
    r2, c2 = np.nonzero(a != b)
    la2, lb2 = a[r2, c2], b[r2, c2]
    vy = r2.astype(np.float64)
    vx = c2 - 0.5
    lab_all = np.concatenate([la, lb, la2, lb2])
    y = np.concatenate([hy, hy, vy, vy]) + oy
    x = np.concatenate([hx, hx, vx, vx]) + ox
    keep = lab_all > 0
    return lab_all[keep], y[keep], x[keep]


def _grouped(lab_pts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(lab_pts, kind="stable")
    counts = np.bincount(lab_pts, minlength=n + 1)
    present = np.flatnonzero(counts[1:]) + 1
    starts = np.concatenate([[0], np.cumsum(counts[1:])])[:-1]
    return order, present, starts[present - 1]


def _support(y: np.ndarray, x: np.ndarray, present: np.ndarray, starts: np.ndarray, n: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Support function h[i, k] (row i: label ``present[i]``) = max over the label's points of p·u_k for 2·N_DIR
    directions u_k = (cos θ_k, sin θ_k) (x right, y down), θ_k = k·π/N_DIR, and the area of
    the polygon through the extreme points in angular order (the convex hull whenever every
    hull vertex is extreme for one of the directions; a hair smaller otherwise)."""
    h = np.empty((present.size, 2 * N_DIR))
    vx = np.zeros((present.size, 2 * N_DIR))
    vy = np.zeros((present.size, 2 * N_DIR))
    theta = np.arange(N_DIR) * np.pi / N_DIR
    idx = np.arange(y.size)
    seg = np.repeat(np.arange(present.size), np.diff(np.append(starts, y.size)))
    big = y.size
    for k, t in enumerate(theta):
        proj = x * np.cos(t) + y * np.sin(t)
        hi = np.maximum.reduceat(proj, starts)
        lo = np.minimum.reduceat(proj, starts)
        h[:, k] = hi
        h[:, k + N_DIR] = -lo
        i_hi = np.minimum.reduceat(np.where(proj == hi[seg], idx, big), starts)
        i_lo = np.minimum.reduceat(np.where(proj == lo[seg], idx, big), starts)
        vx[:, k], vy[:, k] = x[i_hi], y[i_hi]
        vx[:, k + N_DIR], vy[:, k + N_DIR] = x[i_lo], y[i_lo]
    area = 0.5 * np.abs(np.sum(vx * np.roll(vy, -1, axis=1) - np.roll(vx, -1, axis=1) * vy, axis=1))
    return h, area, vx, vy


def _width_at(y, x, seg_id, starts, ang):
    c, s = np.cos(ang)[seg_id], np.sin(ang)[seg_id]
    proj = x * c + y * s
    return np.maximum.reduceat(proj, starts) - np.minimum.reduceat(proj, starts)


def _feret_min(y, x, hp, present, starts, counts) -> tuple[np.ndarray, np.ndarray]:
    """Minimum caliper width per present label: the best of N_DIR directions, refined by a
    golden-section search within ± one step, on the points near the two support lines."""
    widths = hp[:, :N_DIR] + hp[:, N_DIR:]
    k = np.argmin(widths, axis=1)
    step = np.pi / N_DIR
    theta0 = k * step
    seg_id = np.repeat(np.arange(present.size), counts)
    # keep only points within reach of the support lines for any angle in the bracket
    fmax = np.nanmax(widths, axis=1)
    tol = (fmax * np.sin(step) + 1.0)[seg_id]
    c, s = np.cos(theta0)[seg_id], np.sin(theta0)[seg_id]
    proj = x * c + y * s
    hi = hp[np.arange(present.size), k][seg_id]
    lo = -hp[np.arange(present.size), k + N_DIR][seg_id]
    near = (proj >= hi - tol) | (proj <= lo + tol)
    y, x, seg_id = y[near], x[near], seg_id[near]
    cnt = np.bincount(seg_id, minlength=present.size)
    st = np.concatenate([[0], np.cumsum(cnt)])[:-1]
    a, b = theta0 - step, theta0 + step
    g = (np.sqrt(5) - 1) / 2
    c1, c2 = b - g * (b - a), a + g * (b - a)
    f1, f2 = _width_at(y, x, seg_id, st, c1), _width_at(y, x, seg_id, st, c2)
    for _ in range(28):
        left = f1 < f2
        b = np.where(left, c2, b)
        a = np.where(left, a, c1)
        nc1 = np.where(left, b - g * (b - a), c2)
        nc2 = np.where(left, c1, a + g * (b - a))
        nf1 = np.where(left, np.nan, f2)
        nf2 = np.where(left, f1, np.nan)
        new_pt = np.where(left, nc1, nc2)
        fn = _width_at(y, x, seg_id, st, new_pt)
        f1 = np.where(left, fn, nf1)
        f2 = np.where(left, nf2, fn)
        c1, c2 = nc1, nc2
    best = np.minimum(f1, f2)
    return np.minimum(best, widths.min(axis=1)), np.where(f1 < f2, c1, c2)


def _kasa_diameter(lab_pts, y, x, my, mx, n) -> np.ndarray:
    """Least-squares circle through each label's points (algebraic Kåsa fit, centred)."""
    dy = y - my[lab_pts]
    dx = x - mx[lab_pts]
    z = dx * dx + dy * dy
    s = {k: np.bincount(lab_pts, v, n + 1) for k, v in
         {"n": np.ones_like(z), "x": dx, "y": dy, "xx": dx * dx, "yy": dy * dy, "xy": dx * dy,
          "xz": dx * z, "yz": dy * z, "z": z}.items()}
    a = np.stack([
        np.stack([s["xx"], s["xy"], s["x"]], -1),
        np.stack([s["xy"], s["yy"], s["y"]], -1),
        np.stack([s["x"], s["y"], s["n"]], -1),
    ], 1)
    rhs = -np.stack([s["xz"], s["yz"], s["z"]], -1)
    ok = s["n"] >= 3
    ok &= np.abs(np.linalg.det(np.where(ok[:, None, None], a, np.eye(3)))) > 1e-9
    sol = np.zeros((n + 1, 3))
    if ok.any():
        sol[ok] = np.linalg.solve(a[ok], rhs[ok][..., None])[..., 0]
    d, e, f = sol[:, 0], sol[:, 1], sol[:, 2]
    r2 = d * d / 4 + e * e / 4 - f
    out = np.where(ok & (r2 > 0), 2 * np.sqrt(np.maximum(r2, 0)), np.nan)
    return out


#: rows per chunk in :func:`_edge_gaps` (its temporaries are rows x neighbours x 2·N_DIR
#: float64: without chunks 0.8 GB for the 30 800 particles of an 8192² image)
EDGE_GAP_CHUNK = 2048


def _edge_gaps(h: np.ndarray, ids: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """Separating distance between the hulls of labels ``ids[:, None]`` and ``nbr``."""
    out = np.empty(nbr.shape, np.float64)
    for a in range(0, len(ids), EDGE_GAP_CHUNK):
        b = a + EDGE_GAP_CHUNK
        hi = h[ids[a:b]][:, None, :]
        hj_opp = np.roll(h[nbr[a:b]], N_DIR, axis=2)  # h_j(u + π)
        hj_opp += hi
        np.max(np.negative(hj_opp, out=hj_opp), axis=2, out=out[a:b])
    return np.maximum(out, 0.0, out=out)


# --------------------------------------------------------------------------- public API


def _class_names(labels_present: np.ndarray, classes: Any, class_index: Any) -> list[str]:
    """Class of each label: ``class_index`` maps label -> class index (array indexed by
    label - 1, or a dict label -> index/name); ``classes`` lists the names."""
    names = list(classes) if classes else ["particle"]
    if class_index is None:
        return [names[0]] * len(labels_present)
    out = []
    if isinstance(class_index, Mapping):
        for lab in labels_present:
            v = class_index.get(int(lab), 0)
            out.append(v if isinstance(v, str) else names[int(v)] if int(v) < len(names) else f"class_{int(v)}")
        return out
    ci = np.asarray(class_index)
    for lab in labels_present:
        v = int(ci[lab - 1]) if lab - 1 < ci.size else 0
        out.append(names[v] if v < len(names) else f"class_{v}")
    return out


def _point_measures(lab: np.ndarray, n: int, oy: int, ox: int, mom: dict, h: np.ndarray, out: dict) -> None:
    """Support function, hull area, Feret min and angle, circle fit of the labels present
    in ``lab`` (a window at ``oy, ox``), written into ``h`` and ``out`` (arrays by label)."""
    lab_pts, py, px = _edge_midpoints(lab, oy, ox)
    if lab_pts.size == 0:
        return
    order, pres_pts, starts = _grouped(lab_pts, n)
    lab_s, y_s, x_s = lab_pts[order], py[order], px[order]
    del lab_pts, py, px, order
    hw, hull_pts_area, ext_x, ext_y = _support(y_s, x_s, pres_pts, starts, n)
    h[pres_pts] = hw
    counts = np.bincount(lab_s, minlength=n + 1)[pres_pts]
    fmin, _ = _feret_min(y_s, x_s, hw, pres_pts, starts, counts)
    out["feret_min"][pres_pts] = fmin
    widths = hw[:, :N_DIR] + hw[:, N_DIR:]
    kp = np.argmax(widths, axis=1)
    # direction of the Feret diameter: the segment between the two extreme points
    r_ = np.arange(pres_pts.size)
    fdx = ext_x[r_, kp] - ext_x[r_, kp + N_DIR]
    fdy = ext_y[r_, kp] - ext_y[r_, kp + N_DIR]
    out["feret_angle"][pres_pts] = np.degrees(np.arctan2(-fdy, fdx))  # counter-clockwise, y up
    out["hull_area"][pres_pts] = hull_pts_area
    out["circ_d"][pres_pts] = _kasa_diameter(lab_s, y_s, x_s, mom["my"], mom["mx"], n)[pres_pts]


def _measure(
    lab: np.ndarray,
    pixel_size_nm: float | None,
    image: np.ndarray | None,
    regions: list[Region],
    offset: tuple[int, int] = (0, 0),
    only: np.ndarray | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Geometry of the labels in ``lab`` (a crop at ``offset`` of the full image), without
    classes and neighbour distances. Returns the table and the support functions."""
    n = int(lab.max()) if lab.size else 0
    oy, ox = offset
    mom = _pixel_moments(lab, n, image, oy, ox)
    present = np.flatnonzero(mom["count"][1:]) + 1
    if only is not None:
        present = np.intersect1d(present, only)
    ps = float(pixel_size_nm) if pixel_size_nm else np.nan
    if present.size == 0:
        return _empty_columns(), np.zeros((0, 2 * N_DIR))
    length, darea = _contour_pass(lab, n)
    h = np.full((n + 1, 2 * N_DIR), np.nan)
    shape = {k: np.full(n + 1, np.nan) for k in ("feret_min", "feret_angle", "hull_area", "circ_d")}
    hh, ww = lab.shape
    if hh * ww <= 2 * BAND_PIXELS:
        _point_measures(lab, n, oy, ox, mom, h, shape)
    else:
        # labels in row bands by the top row of their box; each band's window reaches down
        # to the lowest box bottom of its labels, so every label is seen whole (memory)
        top = mom["y0"][present] - oy
        bottom = mom["y1"][present] - oy
        for r0, r1 in _bands(hh, ww):
            own = (top >= r0) & (top < r1)
            if not own.any():
                continue
            sel = np.zeros(n + 1, bool)
            sel[present[own]] = True
            r_end = int(bottom[own].max())
            win = lab[r0:r_end]
            sub = np.where(sel[win], win, 0)
            _point_measures(sub, n, oy + r0, ox, mom, h, shape)
    widths = h[:, :N_DIR] + h[:, N_DIR:]
    feret_max = np.nanmax(np.where(np.isnan(widths), -np.inf, widths), axis=1)
    feret_min, feret_angle = shape["feret_min"], shape["feret_angle"]
    hull_area, circ_d = shape["hull_area"], shape["circ_d"]

    cnt = mom["count"]
    poly_area = cnt + darea
    cyy, cxx, cxy = mom["cyy"], mom["cxx"], mom["cxy"]
    tr, det = cyy + cxx, cyy * cxx - cxy ** 2
    disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 0)
    major, minor = 4 * np.sqrt(l1), 4 * np.sqrt(l2)
    # orientation: major-axis direction, counter-clockwise from +x with y pointing up
    orient = np.degrees(0.5 * np.arctan2(-2 * cxy, cxx - cyy))

    P = present
    ecd_px = 2 * np.sqrt(cnt[P] / np.pi)
    perim = length[P]
    # touching the border of the region that holds the centroid
    reg_idx = np.zeros(P.size, np.int64)
    touches = np.zeros(P.size, bool)
    cyv, cxv = mom["my"][P], mom["mx"][P]
    by0, bx0, by1, bx1 = mom["y0"][P], mom["x0"][P], mom["y1"][P], mom["x1"][P]
    assigned = np.zeros(P.size, bool)
    for i, (y0, x0, y1, x1) in enumerate(regions):
        inside = ~assigned & (cyv >= y0) & (cyv < y1) & (cxv >= x0) & (cxv < x1)
        reg_idx[inside] = i
        touches[inside] = (by0[inside] <= y0) | (bx0[inside] <= x0) | (by1[inside] >= y1) | (bx1[inside] >= x1)
        assigned |= inside
    reg_idx[~assigned] = -1
    touches[~assigned] = True
    nan = np.full(P.size, np.nan)
    table = {
        "label": P.astype(np.int64),
        "area_px": cnt[P].astype(np.int64),
        "area_nm2": cnt[P] * ps * ps,
        "ecd_px": ecd_px,
        "ecd_nm": ecd_px * ps,
        "perimeter_nm": perim * ps,
        "circularity": np.minimum(4 * np.pi * poly_area[P] / np.maximum(perim, 1e-12) ** 2, 1.0),
        "solidity": np.minimum(poly_area[P] / hull_area[P], 1.0),
        "feret_max_nm": feret_max[P] * ps,
        "feret_min_nm": feret_min[P] * ps,
        # image y points down: report the angle counter-clockwise with y up
        "feret_angle_deg": np.round(feret_angle[P], 9) % 180.0,
        "circle_fit_d_nm": circ_d[P] * ps,
        "major_axis_nm": major[P] * ps,
        "minor_axis_nm": minor[P] * ps,
        "aspect_ratio": major[P] / np.maximum(minor[P], 1e-12),
        "orientation_deg": np.round(orient[P], 9) % 180.0,
        "centroid_y_px": cyv,
        "centroid_x_px": cxv,
        "centroid_y_nm": cyv * ps,
        "centroid_x_nm": cxv * ps,
        "bbox_y0": by0, "bbox_x0": bx0, "bbox_y1": by1, "bbox_x1": bx1,
        "mean_intensity": mom["mean_int"][P] if image is not None else nan,
        "max_intensity": mom["max_int"][P] if image is not None else nan.copy(),
        "touches_edge": touches,
        "region": reg_idx,
    }
    return table, h[P]


_INT_COLS = {"label", "area_px", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "region"}


def _empty_columns() -> dict[str, np.ndarray]:
    out = {}
    for c in COLUMNS:
        if c in ("class", "nn_distance_nm", "nn_edge_distance_nm"):
            continue
        out[c] = np.zeros(0, np.int64 if c in _INT_COLS else bool if c == "touches_edge" else np.float64)
    return out


def _neighbour_distances(cy: np.ndarray, cx: np.ndarray, h: np.ndarray, pixel_size_nm: float | None,
                         rows: np.ndarray | None = None, tree: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Centre-to-centre and edge-to-edge nearest-neighbour distances (nm) of ``rows`` (all
    by default) among all particles with centres ``(cy, cx)`` (px) and support functions ``h``."""
    from scipy.spatial import cKDTree

    n = cy.size
    rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
    if n < 2 or rows.size == 0:
        return np.full(rows.size, np.nan), np.full(rows.size, np.nan)
    ps = float(pixel_size_nm) if pixel_size_nm else np.nan
    pts = np.column_stack([cy, cx])
    tree = cKDTree(pts) if tree is None else tree
    dist, nbr = tree.query(pts[rows], k=min(N_NEIGHBOURS + 1, n))
    dist, nbr = dist[:, 1:], nbr[:, 1:]  # drop self
    return dist[:, 0] * ps, _edge_gaps(h, rows, nbr).min(axis=1) * ps


def measure_particles(
    labels: Any,
    pixel_size_nm: float | None = None,
    image: Any = None,
    classes: Sequence[str] | None = None,
    class_index: Any = None,
    regions: Sequence[Region] | None = None,
) -> pd.DataFrame:
    """The particle table of an instance label image (see the module docstring for columns).

    Parameters
    ----------
    labels : 2-D integer array, ``0`` = background (a bool mask is labelled, 8-connected).
    pixel_size_nm : nm per pixel; ``None`` leaves the ``*_nm`` columns NaN.
    image : the micrograph (or STM heights), same shape, for the intensity columns.
    classes, class_index : class names, and the class index of each label
        (``class_index[label - 1]``, or a dict ``label -> index or name``).
    regions : analysed rectangles ``(y0, x0, y1, x1)`` in pixels (crops or the image minus
        its info bar); default the whole image. ``touches_edge`` refers to them.
    """
    lab = _check_labels(labels)
    img = None
    if image is not None:
        img = np.asarray(image)
        if img.ndim == 3 and img.shape[-1] in (3, 4):
            img = img[..., :3].mean(axis=-1)
        if img.shape != lab.shape:
            raise NanodefectError(f"image shape {img.shape} differs from the label image {lab.shape}")
    regs = region_bounds(lab.shape, regions)
    return ParticleMeasurer(lab, pixel_size_nm, img, classes, class_index, regs).table.copy()


class ParticleMeasurer:
    """The particle table of one label image, kept up to date label by label.

    ``update(changed, region)`` re-measures the labels in ``changed`` (added, edited or
    deleted) inside a window made of their previous bounding boxes and the ``region`` that
    was edited, then refreshes the neighbour distances of the rows near them. The
    ``labels`` array is referenced, not copied: edit it in place, then call ``update``.
    ``table`` is a ``pandas.DataFrame`` (columns :data:`COLUMNS`), rebuilt from the
    internal column arrays after each update (a new object: copy-free for callers holding
    the old one).
    """

    def __init__(self, labels: Any, pixel_size_nm: float | None = None, image: np.ndarray | None = None,
                 classes: Sequence[str] | None = None, class_index: Any = None,
                 regions: Sequence[Region] | None = None):
        self.labels = _check_labels(labels)
        self.pixel_size_nm = pixel_size_nm
        self.image = image
        self.classes = classes
        self.class_index = class_index
        self.regions = region_bounds(self.labels.shape, regions)
        cols, h = _measure(self.labels, pixel_size_nm, image, self.regions)
        cols["class"] = np.array(_class_names(cols["label"], classes, class_index), dtype=object)
        self._cols = cols
        self._h = h
        c, e = _neighbour_distances(cols["centroid_y_px"], cols["centroid_x_px"], h, pixel_size_nm)
        cols["nn_distance_nm"], cols["nn_edge_distance_nm"] = c, e
        self._table: pd.DataFrame | None = None

    @property
    def table(self) -> pd.DataFrame:
        if self._table is None:
            self._table = pd.DataFrame({c: self._cols[c] for c in COLUMNS}, copy=False)
        return self._table

    def class_of(self, label: int) -> str:
        return _class_names(np.array([label]), self.classes, self.class_index)[0]

    def update(self, changed: Sequence[int], region: tuple[slice, slice] | None = None,
               classes: Mapping[int, str] | None = None) -> pd.DataFrame:
        """Re-measure the labels ``changed`` after an edit of ``labels`` (in place) within
        ``region`` (row and column slices; ``None`` = unknown: labels new to the table are
        then searched in the whole image). ``classes`` optionally sets the class of labels.
        Rows of deleted labels are dropped, new labels appended. Neighbour distances are
        refreshed for the changed rows and the 4·N_NEIGHBOURS nearest rows (by centre) of
        each changed object, old and new position. Returns ``self.table``."""
        changed = np.unique(np.asarray([int(c) for c in changed if int(c) > 0], np.int64))
        cols = self._cols
        if classes:
            for lab, name in classes.items():
                hit = cols["label"] == int(lab)
                cols["class"][hit] = name
            self._table = None
        if changed.size == 0:
            return self.table
        h_img, w_img = self.labels.shape
        label_col = cols["label"]
        old_rows = np.flatnonzero(np.isin(label_col, changed))
        boxes = []
        if region is None and old_rows.size < changed.size:
            ys, xs = np.nonzero(np.isin(self.labels, changed))
            if ys.size:
                boxes.append((ys.min(), xs.min(), ys.max() + 1, xs.max() + 1))
        elif region is not None:
            ry, rx = region
            boxes.append((ry.start or 0, rx.start or 0, h_img if ry.stop is None else ry.stop,
                          w_img if rx.stop is None else rx.stop))
        for r in old_rows:
            boxes.append((cols["bbox_y0"][r], cols["bbox_x0"][r], cols["bbox_y1"][r], cols["bbox_x1"][r]))
        new, new_h = _empty_columns(), np.zeros((0, 2 * N_DIR))
        if boxes:
            b = np.array(boxes, dtype=np.int64)
            # the window holds every changed label whole (old bbox ∪ edited region) plus a
            # one-pixel margin inside the image, so nothing is cut and touches_edge is right
            y0, x0 = max(int(b[:, 0].min()) - 1, 0), max(int(b[:, 1].min()) - 1, 0)
            y1, x1 = min(int(b[:, 2].max()) + 1, h_img), min(int(b[:, 3].max()) + 1, w_img)
            win = self.labels[y0:y1, x0:x1]
            pos = np.minimum(np.searchsorted(changed, win), changed.size - 1)
            sub = np.where(changed[pos] == win, pos + 1, 0).astype(np.int32)  # compact labels 1..k
            img = None if self.image is None else self.image[y0:y1, x0:x1]
            new, new_h = _measure(sub, self.pixel_size_nm, img, self.regions, offset=(y0, x0))
            new["label"] = changed[new["label"] - 1]
        labs = new["label"]
        old_cls = dict(zip(label_col[old_rows].tolist(), cols["class"][old_rows].tolist()))
        new["class"] = np.array([old_cls.get(int(l)) or self.class_of(int(l)) for l in labs], dtype=object)
        new["nn_distance_nm"] = np.full(labs.size, np.nan)
        new["nn_edge_distance_nm"] = np.full(labs.size, np.nan)
        old_pts = np.column_stack([cols["centroid_y_px"][old_rows], cols["centroid_x_px"][old_rows]])
        # rows that still exist are overwritten in place; the others dropped or appended
        row_of = dict(zip(label_col[old_rows].tolist(), old_rows.tolist()))
        same = np.array([int(l) in row_of for l in labs], bool)
        if same.any():
            tgt = np.array([row_of[int(l)] for l in labs[same]])
            for c in COLUMNS:
                cols[c][tgt] = new[c][same]
            self._h[tgt] = new_h[same]
        gone = old_rows[~np.isin(label_col[old_rows], labs)]
        added = ~same
        if gone.size or added.any():
            keep = np.ones(label_col.size, bool)
            keep[gone] = False
            for c in COLUMNS:
                cols[c] = np.concatenate([cols[c][keep], new[c][added]])
            self._h = np.concatenate([self._h[keep], new_h[added]])
        self._table = None
        n = cols["label"].size
        if n:
            refresh = set(np.flatnonzero(np.isin(cols["label"], labs)).tolist())
            pts = np.column_stack([cols["centroid_y_px"], cols["centroid_x_px"]])
            touched = np.concatenate([pts[sorted(refresh)], old_pts])
            tree = None
            if touched.size and n > 1:
                from scipy.spatial import cKDTree

                tree = cKDTree(pts)
                _, idx = tree.query(touched, k=min(4 * N_NEIGHBOURS, n))
                refresh.update(np.atleast_1d(idx).ravel().tolist())
            rows = np.array(sorted(refresh), np.int64)
            c, e = _neighbour_distances(cols["centroid_y_px"], cols["centroid_x_px"], self._h,
                                        self.pixel_size_nm, rows, tree)
            cols["nn_distance_nm"][rows] = c
            cols["nn_edge_distance_nm"][rows] = e
        return self.table
