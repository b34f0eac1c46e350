"""Polygon geometry in pixel-corner coordinates (see :mod:`.model` for the convention).

All functions take and return ``(N, 2)`` float arrays of ``(x, y)`` vertices in pixels,
where pixel (row ``r``, column ``c``) covers ``x ∈ [c, c+1)``, ``y ∈ [r, r+1)`` and its
centre is ``(c + 0.5, r + 0.5)``.

* :func:`rasterize_rings` fills the pixels whose *centre* lies inside the rings (even-odd
  rule over all rings, so holes are simply extra rings), computed exactly as
  pycocotools does (boundary rounded to 1/5 px), so a COCO polygon gives the same
  pixels here and in pycocotools, ties on pixel centres included.
* :func:`trace_mask` is its exact inverse for pixel masks: it follows the pixel edges
  (integer corner coordinates), so ``rasterize(trace(mask)) == mask`` and the shoelace
  area equals the pixel count.
* :func:`keyhole` / :func:`split_keyholes` turn a polygon with holes into a single
  ring (zero-width "bridges" from the outer ring to each hole) and back, for formats
  without holes (COCO polygons); even-odd filling of a bridged ring gives the same pixels.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

Ring = np.ndarray  # (N, 2) float64, (x, y)


def as_ring(points, min_points: int = 3) -> np.ndarray:
    """Validate and return ``points`` as a ``(N, 2)`` float64 array of (x, y) pixels.

    Raises ``ValueError`` (with the reason) for a wrong shape, non-finite values or fewer
    than ``min_points`` vertices. Repeated closing vertices (last == first) are dropped.
    """
    try:
        a = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"points are not a list of [x, y] numbers ({e})") from None
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"points must be a list of [x, y] pairs, got an array of shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("points contain NaN or infinite values")
    while min_points >= 3 and len(a) > min_points and np.array_equal(a[0], a[-1]):
        a = a[:-1]
    if len(a) < min_points:
        raise ValueError(f"needs at least {min_points} points, got {len(a)}")
    return a


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring in px² (positive when counter-clockwise in (x, y))."""
    r = np.asarray(ring, dtype=np.float64)
    if len(r) < 3:
        return 0.0
    x, y = r[:, 0], r[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def polygon_area(outer: np.ndarray, holes: Sequence[np.ndarray] = ()) -> float:
    """Area in px² of a polygon with holes: ``|outer| - Σ|hole|`` (shoelace)."""
    return abs(signed_area(outer)) - sum(abs(signed_area(h)) for h in holes)


def bounds(rings: Iterable[np.ndarray]) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` extent of all vertices (pixel-corner coordinates)."""
    pts = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rings])
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def circle_polygon(cx: float, cy: float, r: float, n: int | None = None) -> np.ndarray:
    """Regular ``n``-gon with the same area as the circle (centre ``cx, cy``, radius ``r`` px).

    ``n`` defaults to ``clip(ceil(π r), 32, 360)`` (a vertex every ~2 px). The polygon's
    circumradius is scaled by ``sqrt(2π / (n sin(2π/n)))`` so its area is exactly ``π r²``.
    """
    r = float(r)
    if n is None:
        n = int(np.clip(math.ceil(math.pi * r), 32, 360))
    k = math.sqrt(2 * math.pi / (n * math.sin(2 * math.pi / n)))
    t = np.arange(n) * (2 * math.pi / n)
    return np.stack([cx + k * r * np.cos(t), cy + k * r * np.sin(t)], axis=1)


def rectangle_ring(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The rectangle with opposite corners ``(x0, y0)`` and ``(x1, y1)`` as a 4-vertex ring.

    Vertex 0 is ``(x0, y0)`` and vertex 2 is ``(x1, y1)`` (so the two LabelMe rectangle
    points can be recovered exactly).
    """
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def buffer_polyline(points: np.ndarray, width: float, miter_limit: float = 4.0) -> np.ndarray:
    """Outline (one ring) of a polyline drawn ``width`` px wide with flat ends and mitred joins.

    Miters longer than ``miter_limit * width / 2`` are clipped. Very sharp turns may
    make the ring self-overlap (even-odd filling then leaves a small gap at the join).
    A polyline of coincident points gives a ``width``-sided square.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    keep = np.ones(len(p), bool)
    keep[1:] = np.any(np.diff(p, axis=0) != 0, axis=1)
    p = p[keep]
    h = float(width) / 2
    if len(p) < 2:
        x, y = p[0]
        return rectangle_ring(x - h, y - h, x + h, y + h)
    d = np.diff(p, axis=0)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)  # left normal of each segment
    offs = np.empty_like(p)
    offs[0] = nrm[0] * h
    offs[-1] = nrm[-1] * h
    for i in range(1, len(p) - 1):
        m = nrm[i - 1] + nrm[i]
        ln = np.linalg.norm(m)
        if ln < 1e-9:
            offs[i] = nrm[i] * h
            continue
        m /= ln
        length = min(h / max(float(np.dot(m, nrm[i])), 1e-9), miter_limit * h)
        offs[i] = m * length
    return np.concatenate([p + offs, (p - offs)[::-1]])


# --------------------------------------------------------------------------- raster


def _edges(rings: Iterable[np.ndarray]) -> np.ndarray:
    """Non-horizontal edges as ``(x0, y0, x1, y1)`` rows with ``y0 < y1`` (canonical order,
    so an edge and its reverse give bit-identical crossings)."""
    parts = []
    for ring in rings:
        p = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
        if len(p) < 2:
            continue
        parts.append(np.concatenate([p, np.roll(p, -1, axis=0)], axis=1))
    if not parts:
        return np.zeros((0, 4))
    e = np.concatenate(parts)
    swap = e[:, 1] > e[:, 3]
    e[swap] = e[swap][:, [2, 3, 0, 1]]
    return e[e[:, 1] < e[:, 3]]


def _coco_toggles(ring: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Column/row positions where the mask flips along each pixel column (pycocotools'
    ``rleFrPoly``): the ring is scaled ×5, rounded, walked densely, and each crossing of a
    column centre ``x = c + 0.5`` flips rows ``>= ceil(crossing y - 0.5)`` of column ``c``."""
    p = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    X = np.trunc(5 * p[:, 0] + 0.5).astype(np.int64)
    Y = np.trunc(5 * p[:, 1] + 0.5).astype(np.int64)
    X = np.append(X, X[0])
    Y = np.append(Y, Y[0])
    us, vs = [], []
    for j in range(len(p)):
        xs, xe, ys, ye = int(X[j]), int(X[j + 1]), int(Y[j]), int(Y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            s = (ye - ys) / dx if dx else 0.0
            d = np.arange(dx + 1)
            t = dx - d if flip else d
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            s = (xe - xs) / dy
            d = np.arange(dy + 1)
            t = dy - d if flip else d
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u = np.concatenate(us)
    v = np.concatenate(vs)
    ch = np.flatnonzero(u[1:] != u[:-1]) + 1
    xd = np.where(u[ch] < u[ch - 1], u[ch], u[ch] - 1)
    yd = np.minimum(v[ch], v[ch - 1])
    ok = np.mod(xd - 2, 5) == 0  # the crossing is at a column centre
    col = (xd - 2) // 5
    ok &= (col >= 0) & (col <= w - 1)
    row = np.clip(-((2 - yd) // 5), 0, h)  # ceil((yd - 2) / 5)
    return col[ok], row[ok]


def rasterize_rings(rings: Iterable[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """Pixels of an image of ``shape`` (rows, cols) whose centre lies inside ``rings``.

    Even-odd rule over all rings (an outer ring plus hole rings, or a bridged keyhole
    ring). The inside test is exactly pycocotools' polygon rasteriser (``rleFrPoly``:
    vertices rounded to 1/5 px, pixel centres ``(c + 0.5, r + 0.5)``), so our masks and
    ``pycocotools.mask.frPyObjects``/``annToMask`` masks are identical, ties included.
    Polygons with integer vertices and axis-parallel edges (traced label outlines) are
    filled exactly. Returns ``(mask, row0, col0)``: a boolean crop covering the filled
    area's bounding box and the crop's top-left pixel index (an empty crop when the
    rings miss the image).
    """
    H, W = int(shape[0]), int(shape[1])
    cols, rows = [], []
    for ring in rings:
        r = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
        if len(r) < 2:
            continue
        c, rr = _coco_toggles(r, H, W)
        cols.append(c)
        rows.append(rr)
    if not cols or H <= 0 or W <= 0:
        return np.zeros((0, 0), bool), 0, 0
    c = np.concatenate(cols)
    r = np.concatenate(rows)
    if len(c) == 0:
        return np.zeros((0, 0), bool), 0, 0
    c0, c1 = int(c.min()), int(c.max()) + 1
    r0, r1 = int(r.min()), int(min(r.max(), H))
    if r1 <= r0:
        return np.zeros((0, 0), bool), 0, 0
    t = np.zeros((r1 - r0 + 1, c1 - c0), np.int32)
    np.add.at(t, (r - r0, c - c0), 1)
    m = (np.cumsum(t, axis=0)[: r1 - r0] & 1).astype(bool)
    if not m.any():
        return np.zeros((0, 0), bool), 0, 0
    return m, r0, c0


def rings_to_mask(rings: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Full-size boolean mask (``shape`` = rows, cols) of :func:`rasterize_rings`."""
    full = np.zeros((int(shape[0]), int(shape[1])), bool)
    m, r0, c0 = rasterize_rings(rings, shape)
    full[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]] = m
    return full


def points_in_ring(pts: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for ``(M, 2)`` points against one ring."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    e = _edges([ring])
    if len(e) == 0:
        return np.zeros(len(pts), bool)
    px, py = pts[:, 0:1], pts[:, 1:2]
    x0, y0, x1, y1 = e.T
    active = (y0 <= py) & (py < y1)
    xs = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return ((active & (xs > px)).sum(axis=1) % 2) == 1


# --------------------------------------------------------------------------- trace

_STRUCT4 = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def _walk_with_saddles(start, end, dx, dy) -> list[list[int]]:
    """Edge walks when some vertex starts two edges (pixels touching only diagonally)."""
    out_edges: dict[int, list[int]] = {}
    for i, s in enumerate(start.tolist()):
        out_edges.setdefault(s, []).append(i)
    used = np.zeros(len(start), bool)
    dxl, dyl, endl = dx.tolist(), dy.tolist(), end.tolist()
    walks = []
    for first in range(len(start)):
        if used[first]:
            continue
        verts = []
        i = first
        while True:
            used[i] = True
            verts.append(i)
            cand = [j for j in out_edges[endl[i]] if not used[j]]
            if not cand:
                break
            if len(cand) == 1:
                i = cand[0]
            else:  # saddle: take the turn with cross(d_in, d_out) == -1
                i = min(cand, key=lambda j: dxl[i] * dyl[j] - dyl[i] * dxl[j])
        walks.append(verts)
    return walks


def _trace_component(m: np.ndarray) -> list[np.ndarray]:
    """Closed pixel-edge rings of a padded boolean mask (one 4-connected component).

    Edges are oriented with the foreground on a fixed side; at a saddle vertex (two
    pixels touching only diagonally) the walk turns so diagonal pixels stay apart
    (foreground 4-connected, background 8-connected). Collinear vertices are removed.
    Coordinates are (x, y) pixel corners of ``m``.
    """
    h, w = m.shape
    a, b = m[:-1, :], m[1:, :]
    # horizontal edges on the line y = r + 1
    r, c = np.nonzero(a & ~b)  # fg above: +x
    E = [np.stack([c, r + 1, c + 1, r + 1], 1)]
    r, c = np.nonzero(~a & b)  # fg below: -x
    E.append(np.stack([c + 1, r + 1, c, r + 1], 1))
    a, b = m[:, :-1], m[:, 1:]
    r, c = np.nonzero(a & ~b)  # fg left: -y on the line x = c + 1
    E.append(np.stack([c + 1, r + 1, c + 1, r], 1))
    r, c = np.nonzero(~a & b)  # fg right: +y
    E.append(np.stack([c + 1, r, c + 1, r + 1], 1))
    edges = np.concatenate(E).astype(np.int64)
    W1 = w + 1
    start = edges[:, 1] * W1 + edges[:, 0]
    end = edges[:, 3] * W1 + edges[:, 2]
    dx = edges[:, 2] - edges[:, 0]
    dy = edges[:, 3] - edges[:, 1]
    n_e = len(edges)
    order = np.argsort(start, kind="stable")
    s_sorted = start[order]
    rings = []
    if n_e and not np.any(s_sorted[1:] == s_sorted[:-1]):
        # no saddle vertex: every vertex starts exactly one edge, so the edges form a
        # permutation and each ring is one of its cycles (same walk as below, ~30x faster)
        nxt = order[np.searchsorted(s_sorted, end)].tolist()
        used_b = bytearray(n_e)
        walks = []
        for first in range(n_e):
            if used_b[first]:
                continue
            verts = []
            i = first
            while not used_b[i]:
                used_b[i] = 1
                verts.append(i)
                i = nxt[i]
            walks.append(verts)
    else:
        walks = _walk_with_saddles(start, end, dx, dy)
    code = (dx + 1) * 3 + (dy + 1)  # one number per unit direction
    for verts in walks:
        idx = np.array(verts)
        # keep only vertices where the direction changes
        d = code[idx]
        turn = d != np.concatenate((d[-1:], d[:-1]))
        pts = edges[idx[turn], :2].astype(np.float64)
        rings.append(pts)
    return rings


def trace_mask(mask: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Exact polygons of a boolean mask: one ``(outer, holes)`` per 4-connected component.

    Rings follow pixel edges (integer pixel-corner coordinates, (x, y)), shifted by
    ``offset`` = (x, y). Outer rings are counter-clockwise in (x, y) (positive shoelace),
    holes clockwise. The shoelace area of each component equals its pixel count and
    :func:`rasterize_rings` gives back exactly the same pixels.
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    lab, n = ndimage.label(m, structure=_STRUCT4)
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        sub = np.pad(lab[sl] == k, 1)
        ox = sl[1].start - 1 + offset[0]
        oy = sl[0].start - 1 + offset[1]
        rings = [r + (ox, oy) for r in _trace_component(sub)]
        areas = [signed_area(r) for r in rings]
        io = int(np.argmax(np.abs(areas)))
        outer = rings[io]
        if areas[io] < 0:
            outer = outer[::-1].copy()
        holes = []
        for j, r in enumerate(rings):
            if j != io:
                holes.append(r[::-1].copy() if areas[j] > 0 else r)
        out.append((outer, holes))
    return out


def simplify_ring(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification (``tolerance`` in px; 0 returns the ring unchanged)."""
    if tolerance <= 0 or len(ring) <= 4:
        return ring
    from skimage.measure import approximate_polygon

    closed = np.concatenate([ring, ring[:1]])
    s = approximate_polygon(closed, tolerance)[:-1]
    return s if len(s) >= 3 else ring


# --------------------------------------------------------------------------- keyholes


def keyhole(outer: np.ndarray, holes: Sequence[np.ndarray]) -> np.ndarray:
    """One ring equal (under even-odd filling) to ``outer`` minus ``holes``.

    Each hole is joined by a zero-width bridge from the outer vertex nearest to the
    hole's first vertex: ``..., A, H0, H1, ..., Hk, H0, A, ...``. The outer and hole
    vertex lists are kept unchanged (not rotated), so :func:`split_keyholes` restores
    them exactly.
    """
    outer = np.asarray(outer, dtype=np.float64)
    if not len(holes):
        return outer
    inserts: dict[int, list[np.ndarray]] = {}
    for h in holes:
        h = np.asarray(h, dtype=np.float64)
        a = int(np.argmin(np.sum((outer - h[0]) ** 2, axis=1)))
        inserts.setdefault(a, []).append(np.concatenate([h, h[:1], outer[a : a + 1]]))
    parts = []
    for i in range(len(outer)):
        parts.append(outer[i : i + 1])
        for ins in inserts.get(i, []):
            parts.append(ins)
    return np.concatenate(parts)


def split_keyholes(ring: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Undo :func:`keyhole`: find bridges (an edge ``A→B`` later walked back ``B→A``) and
    cut the loop between them out as a hole.

    A loop is only cut out when it is smaller than the rest and (almost) all its vertices
    lie inside the rest, so ordinary polygons are returned unchanged with no holes.
    """
    v = np.asarray(ring, dtype=np.float64)
    holes: list[np.ndarray] = []
    changed = True
    while changed and len(v) >= 6:
        changed = False
        keys = [tuple(p) for p in v.tolist()]
        first_edge: dict[tuple, int] = {}
        for i in range(len(keys) - 1):
            first_edge.setdefault((keys[i], keys[i + 1]), i)
        for j in range(1, len(keys) - 1):
            i = first_edge.get((keys[j + 1], keys[j]))
            if i is None or i >= j - 2:
                continue
            hole = v[i + 1 : j]
            rest = np.concatenate([v[: i + 1], v[j + 2 :]])
            if len(hole) < 3 or len(rest) < 3:
                continue
            if abs(signed_area(hole)) >= abs(signed_area(rest)):
                continue
            if points_in_ring(hole, rest).mean() < 0.9:
                continue
            holes.append(hole)
            v = rest
            changed = True
            break
    return v, holes
