"""Line-defect skeleton lengths in nm (Qt-free).

One row per connected defect (8-connectivity) per class: its centre-line length, the
number of branches, junctions and end points, its mean width, centroid and area, plus a
summary (total length and length density in nm/µm²). The napari docks and the
``nanodefect skeleton`` command both call :func:`skeleton_table` /
:func:`measure_skeleton_file`.

How a length is measured
------------------------
1. **Graph.** The mask of one class is thinned to a one-pixel skeleton (``skimage``
   Zhang thinning) and turned into a graph of paths with `skan`_ (``skan.Skeleton``):
   every path runs between two nodes that are end points (degree 1) or junction pixels
   (degree >= 3); a closed ring is one path that starts and ends on the same pixel.
2. **Sub-pixel length.** A pixel chain overestimates the length of oblique lines: a
   straight line at slope 1:2 drawn as alternating axial and diagonal steps is 8 % long
   (2 + sqrt 2 per sqrt 5), at 7.5° 4.6 %. Each path's pixel coordinates are therefore
   smoothed along the path with a Gaussian of :data:`SMOOTH_SIGMA_PX` steps and the
   length of the smoothed polyline is used. Junction pixels stay fixed (the path is
   reflected through them, which keeps straight paths straight); rings are smoothed
   periodically (with less smoothing on small rings, which a Gaussian shrinks); at free
   ends the last half width of the chain is dropped first, because thinning bends it
   towards a corner of the line's tip.
3. **Tip to tip.** Thinning stops short of a line's tip, so every free end is extended to
   the edge of the mask: the mask pixels whose nearest skeleton pixel is the (dropped)
   end of the chain are projected on the end direction, and the farthest pixel centre
   plus :data:`_EDGE_PX` is the extension. The length of a defect is therefore its
   centre-line length **from mask edge to mask edge** (the length a user measures along
   it), summed over all branches:

   * a stroke ``w`` px wide along a centre line of length ``L`` with flat ends (how line
     annotations are rasterised, see :func:`..annotations.geometry.buffer_polyline`)
     measures ``L``;
   * the same stroke with round caps (every pixel within ``w/2`` of the centre line)
     measures ``L + w``, its tip-to-tip length;
   * a closed ring measures the length of its centre circle, ``2 pi r``;
   * a defect that touches the image border is measured up to the border
     (``touches_border`` flags it).
4. **Cleaning, junctions and pruning.** Thinning leaves small forks at the corners of
   line ends and crossings. An end branch whose tip (end pixel plus its inscribed
   radius) reaches no farther from its junction than ``sqrt(2) r_j + 1`` px (``r_j``
   the junction's inscribed radius: the reach of the corners of a square end) is an
   artefact and always removed. Junction pixels joined by a path no longer than the sum
   of their inscribed radii (overlapping disks: one thick crossing thinned into two
   junction pixels) count as one junction, and that short path is not a branch (its
   length still counts). With ``prune_nm``, end branches (junction to end point) whose
   measured length, tip included, is shorter than ``prune_nm`` are removed as well,
   repeatedly, and the rest re-measured; a junction always keeps its two longest
   branches, so pruning never deletes a defect.
5. **Width.** ``mean_width_nm`` = area / length: the width of a strip with the defect's
   area and length (exact for a straight flat-ended stroke; a little low for short
   round-capped ones, whose caps add less area than length).

Measured accuracy (``docs/skeleton.md``; checked in ``tests/test_skeleton.py``): for
5-px-wide strokes the length is within 1 % of the analytic length for straight lines at
any angle (100-300 px, flat or round ends), circles (r = 30-100 px) and sine curves;
the pixel-chain length is 8 % long at slope 1:2.

.. _skan: https://skeleton-analysis.org
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import NanodefectError

#: Gaussian smoothing of the path coordinates, in pixel steps along the path.
SMOOTH_SIGMA_PX = 2.0
#: largest smoothing of a ring, per point of the ring (shrinks its length by <= 1 %)
_RING_SIGMA_PER_POINT = 0.0226
#: distance (px) from the farthest pixel centre beyond a free end to the mask edge
_EDGE_PX = 0.25
#: an end branch is a thinning artefact when its tip reaches no farther than
#: sqrt(2) * (junction radius) + this many px from its junction
_ARTEFACT_MARGIN_PX = 1.0
#: more distinct values than this without class names is an instance-label image
_MAX_UNNAMED_CLASSES = 255
#: columns of the defects table, in order
COLUMNS = [
    "defect_id", "class", "length_nm", "length_px", "branches", "junctions", "end_points",
    "mean_width_nm", "centroid_y_px", "centroid_x_px", "area_nm2", "area_px", "touches_border",
]
_EIGHT = np.ones((3, 3), bool)


# ----------------------------------------------------------------------------- input


def class_masks(
    mask: np.ndarray, class_names: Sequence[str] | Mapping[int, str] | None = None
) -> list[tuple[str, np.ndarray]]:
    """Split a defect mask into one binary mask per class.

    Parameters
    ----------
    mask : ndarray
        A 2-D bool mask (one class, ``"defect"``); a 2-D integer class-label image
        (0 = background, value k = class k); or a 3-D ``(C, H, W)`` stack with one binary
        channel per class (non-zero = defect; channel c is class c + 1).
    class_names : sequence or mapping, optional
        Class names: a list (entry i names class i + 1) or a dict {class number: name}
        (class numbers start at 1). Unnamed classes are ``"class_<k>"``. Classes with the
        same name are merged. Without names, a 2-D image whose only non-zero value is 1
        or 255 is a binary mask (class ``"defect"``).

    Returns
    -------
    list of (name, bool ndarray)
        In class-number order. Unnamed classes without any pixel are left out of a
        label image; named classes and the channels of a stack are always listed.

    Raises
    ------
    ValueError
        For other shapes, non-integer labels, negative values, or more than 255 label
        values without class names (an instance-label image, not classes).
    """
    a = np.asarray(mask)
    if a.size == 0:
        raise ValueError(f"the mask is empty (shape {a.shape})")
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim not in (2, 3):
        raise ValueError(f"expected a 2-D mask or a (C, H, W) stack of class channels, got shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise ValueError("a mask must hold integers or booleans (got non-integer floats)")
        a = a.astype(np.int64)
    if a.dtype.kind not in "uib":
        raise ValueError(f"a mask must hold integers or booleans, got {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError("a mask must not hold negative values")

    def name_of(k: int) -> str:
        if class_names is None:
            return f"class_{k}"
        if isinstance(class_names, Mapping):
            v = class_names.get(k, class_names.get(str(k)))  # type: ignore[call-overload]
            return f"class_{k}" if v is None else str(v)
        return str(class_names[k - 1]) if 0 < k <= len(class_names) else f"class_{k}"

    if a.ndim == 3:
        out: dict[str, np.ndarray] = {}
        for c in range(a.shape[0]):
            name = name_of(c + 1)
            out[name] = out[name] | (a[c] != 0) if name in out else a[c] != 0
        return list(out.items())
    vals, inverse = np.unique(a, return_inverse=True)
    values = [int(v) for v in vals if v != 0]
    if a.dtype == bool or (class_names is None and values in ([], [1], [255])):
        return [("defect" if class_names is None else name_of(1), a != 0)]
    if class_names is None and len(values) > _MAX_UNNAMED_CLASSES:
        raise ValueError(
            f"{len(values)} different label values and no class names: this looks like an "
            "instance-label image; give class names or a binary mask")
    keys = set(values)
    if class_names is not None:  # named classes are listed even when absent
        keys |= {int(k) for k in (class_names.keys() if isinstance(class_names, Mapping)
                                  else range(1, len(class_names) + 1))}
    names = list(dict.fromkeys(name_of(k) for k in sorted(keys)))
    code = np.array([names.index(name_of(int(v))) + 1 if v != 0 else 0 for v in vals], np.int32)
    classes = code[inverse.reshape(a.shape)]
    return [(name, classes == i) for i, name in enumerate(names, start=1)]


# ----------------------------------------------------------------------------- geometry


def smooth_path(coords: np.ndarray, sigma_px: float = SMOOTH_SIGMA_PX, closed: bool = False,
                free_start: bool = False, free_end: bool = False) -> np.ndarray:
    """Smooth pixel coordinates along a path with a Gaussian of ``sigma_px`` steps.

    Parameters
    ----------
    coords : (N, 2) array
        Pixel coordinates (row, col) in path order. For ``closed`` paths the last point
        may repeat the first.
    sigma_px : float
        Standard deviation of the Gaussian, in path steps (0 = no smoothing).
    closed : bool
        A ring: smoothed periodically; the result repeats its first point at the end.
    free_start, free_end : bool
        Ends that are free line ends are smoothed like the rest (they may move); other
        ends (junctions) stay fixed, by reflecting the path through them.

    Returns
    -------
    (N, 2) float array
    """
    c = np.asarray(coords, float)
    n = len(c)
    if n < 3 or sigma_px <= 0:
        return c.copy()
    if closed:
        ring = c[:-1] if np.array_equal(c[0], c[-1]) else c
        # a Gaussian shrinks a ring of N points by exp(-(2 pi sigma / N)^2 / 2): keep that
        # under 1 % on small rings
        sigma_px = min(sigma_px, _RING_SIGMA_PER_POINT * len(ring))
        if sigma_px < 0.3:
            return np.vstack([ring, ring[:1]])
        sm = ndimage.gaussian_filter1d(ring, sigma_px, axis=0, mode="wrap")
        return np.vstack([sm, sm[:1]])
    pad = min(n - 1, int(4 * sigma_px + 0.5))
    head = c[pad:0:-1]  # c[pad], ..., c[1]
    head = np.repeat(c[:1], pad, axis=0) if free_start else 2 * c[0] - head
    tail = c[-2:-pad - 2:-1]  # c[n-2], ..., c[n-1-pad]
    tail = np.repeat(c[-1:], pad, axis=0) if free_end else 2 * c[-1] - tail
    ext = np.vstack([head, c, tail])
    sm = ndimage.gaussian_filter1d(ext, sigma_px, axis=0, mode="nearest")[pad:pad + n]
    if not free_start:
        sm[0] = c[0]
    if not free_end:
        sm[-1] = c[-1]
    return sm


def polyline_length(coords: np.ndarray) -> float:
    """Sum of the segment lengths of an ``(N, 2)`` polyline (same unit as ``coords``)."""
    c = np.asarray(coords, float)
    if len(c) < 2:
        return 0.0
    return float(np.sum(np.hypot(*np.diff(c, axis=0).T)))


def _end_direction(pts: np.ndarray, reach_px: float) -> np.ndarray | None:
    """Unit vector out of a path at its last point: from the point ``reach_px`` back along
    the path to the last point (None for a path of zero length)."""
    back = pts[::-1]
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(back, axis=0).T))])
    k = min(max(int(np.searchsorted(cum, reach_px)), 1), len(back) - 1) if len(back) > 1 else 0
    v = back[0] - back[k]
    norm = float(np.hypot(*v))
    return None if norm < 1e-9 else v / norm


# ----------------------------------------------------------------------------- graph


def _skan_graph(skel: np.ndarray):
    """``skan.Skeleton`` of a skeleton image, or None when it has fewer than two pixels."""
    from skan import Skeleton

    if np.count_nonzero(skel) < 2:
        return None
    return Skeleton(skel.astype(bool), keep_images=False)


def _nearest_skeleton_pixel(inside: np.ndarray, skel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every mask pixel, the flat index of its nearest skeleton pixel.

    Returns (owners, pixels): ``owners`` sorted, ``pixels`` the matching (row, col) of
    the mask pixels, so the pixels owned by one skeleton pixel are one slice.
    """
    idx = ndimage.distance_transform_edt(~skel, return_distances=False, return_indices=True)
    ys, xs = np.nonzero(inside)
    owner = idx[0][ys, xs].astype(np.int64) * inside.shape[1] + idx[1][ys, xs]
    order = np.argsort(owner, kind="stable")
    return owner[order], np.stack([ys[order], xs[order]], axis=1)


def _owned(owners: tuple[np.ndarray, np.ndarray], width: int, pixels: np.ndarray) -> np.ndarray:
    """(row, col) of the mask pixels whose nearest skeleton pixel is one of ``pixels``."""
    owner, pts = owners
    keys = pixels[:, 0].astype(np.int64) * width + pixels[:, 1]
    lo = np.searchsorted(owner, keys, side="left")
    hi = np.searchsorted(owner, keys, side="right")
    parts = [pts[a:b] for a, b in zip(lo, hi) if b > a]
    return np.concatenate(parts) if parts else np.empty((0, 2), np.int64)


def _end_trim(xy: np.ndarray, radius: np.ndarray, look_px: int = 8) -> int:
    """How many pixels to drop at the start of ``xy`` (a free end): those within the local
    half width of the end, where thinning hooks towards a corner of the line's tip."""
    head = xy[: min(len(xy), look_px)].astype(np.int64)
    half = max(float(radius[head[:, 0], head[:, 1]].max()) - 0.5, 0.0)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    return max(int(np.searchsorted(cum, half, side="right")) - 1, 0)


def _paths(graph, skel: np.ndarray, inside: np.ndarray, radius: np.ndarray,
           sigma_px: float) -> list[dict[str, Any]]:
    """Measure every path of a skan graph.

    ``skel``: the skeleton image of ``graph``; ``inside``: the class mask; ``radius``:
    inscribed radius per pixel (px, distance transform). Each path: pixel ``nodes`` (skan
    node ids), end degrees ``deg``, ``closed``, ``pixels`` (row, col) ints, ``smooth_px``
    (smoothed centre line), ``ext_px`` (extensions at free ends) and ``length_px``.
    """
    out = []
    deg = graph.degrees
    owners = _nearest_skeleton_pixel(inside, skel)
    width = inside.shape[1]
    for i in range(graph.n_paths):
        nodes = np.asarray(graph.path(i))
        xy = np.asarray(graph.path_coordinates(i), float)
        n = len(xy)
        d0, d1 = int(deg[nodes[0]]), int(deg[nodes[-1]])
        closed = bool(nodes[0] == nodes[-1] and d0 <= 2)
        free = (d0 == 1, d1 == 1)
        # free ends: drop the hook within half a width of the tip; that part of the line
        # is covered by the extension below
        trim = [_end_trim(xy, radius) if free[0] else 0, _end_trim(xy[::-1], radius) if free[1] else 0]
        room = max(n - 2, 0)
        if trim[0] + trim[1] > room:
            trim = [min(t, room // (1 + all(free))) for t in trim]
        core = xy[trim[0]: n - trim[1]]
        sm = smooth_path(core, sigma_px, closed=closed, free_start=free[0], free_end=free[1])
        length = polyline_length(sm)
        ext = [0.0, 0.0]
        for side in (0, 1):
            if not free[side]:
                continue
            pts = sm if side == 1 else sm[::-1]
            tip = xy[: trim[0] + 1] if side == 0 else xy[n - trim[1] - 1:]
            r = float(max(radius[int(q[0]), int(q[1])] for q in tip))
            direction = _end_direction(pts, max(2.0, 2.0 * r))
            region = _owned(owners, width, tip.astype(np.int64))
            if direction is None:  # a dot: half its extent
                ext[side] = max(r - 0.5, 0.0)
            elif len(region):
                proj = (region - pts[-1][None, :]) @ direction
                ext[side] = max(float(proj.max()) + _EDGE_PX, 0.0)
        out.append({
            "nodes": nodes, "pixels": xy.astype(np.int64), "deg": (d0, d1), "closed": closed,
            "smooth_px": length, "ext_px": tuple(ext), "length_px": length + sum(ext),
        })
    return out


def _local_radius(radius: np.ndarray, pix: np.ndarray) -> float:
    """Largest inscribed radius in the 3 x 3 neighbourhood of a pixel (junction pixels of
    thinned crossings sit up to a pixel off the ridge of the distance transform)."""
    y, x = int(pix[0]), int(pix[1])
    return float(radius[max(y - 1, 0): y + 2, max(x - 1, 0): x + 2].max())


def _artefact(p: dict[str, Any], radius: np.ndarray) -> bool:
    """Whether a junction-to-end branch is a thinning artefact: its tip (end pixel plus
    inscribed radius) reaches no farther from the junction than the corners of a square
    line end would, ``sqrt(2) r_j`` (+ :data:`_ARTEFACT_MARGIN_PX`)."""
    d0, d1 = p["deg"]
    if not ((d0 == 1) ^ (d1 == 1)) or max(d0, d1) < 3:
        return False
    pj, pe = (p["pixels"][-1], p["pixels"][0]) if d0 == 1 else (p["pixels"][0], p["pixels"][-1])
    rj = _local_radius(radius, pj)
    re = float(radius[pe[0], pe[1]])
    reach = float(np.hypot(*(pe - pj)))
    return reach + re <= math.sqrt(2.0) * rj + _ARTEFACT_MARGIN_PX


def _prune_once(skel: np.ndarray, paths: list[dict[str, Any]], radius: np.ndarray,
                prune_px: float | None) -> bool:
    """Remove end branches that are thinning artefacts or shorter than ``prune_px``.

    Artefacts go as long as their junction keeps one branch; branches shorter than
    ``prune_px`` only as long as it keeps two (the longest), so pruning never removes a
    whole defect. Edits ``skel`` in place; returns whether anything was removed.
    """
    cands: dict[int, list[tuple[int, int, float]]] = {}
    degree: dict[int, int] = {}
    for k, p in enumerate(paths):
        d0, d1 = p["deg"]
        for node, d in ((p["nodes"][0], d0), (p["nodes"][-1], d1)):
            if d >= 3:
                degree[int(node)] = d
        if not ((d0 == 1) ^ (d1 == 1)) or max(d0, d1) < 3:
            continue
        junction = int(p["nodes"][-1] if d0 == 1 else p["nodes"][0])
        if _artefact(p, radius):
            cands.setdefault(junction, []).append((0, k, p["length_px"]))
        elif prune_px is not None and p["length_px"] < prune_px:
            cands.setdefault(junction, []).append((1, k, p["length_px"]))
    removed = False
    for junction, cand in cands.items():
        left = degree[junction]
        for kind, k, _ in sorted(cand):  # artefacts first, then the shortest
            if left - 1 < 1 + kind:
                continue
            left -= 1
            px = paths[k]["pixels"]
            wipe = px[1:] if int(paths[k]["nodes"][0]) == junction else px[:-1]
            skel[wipe[:, 0], wipe[:, 1]] = False
            removed = True
    return removed


def _junction_clusters(paths: list[dict[str, Any]], radius: np.ndarray) -> tuple[dict[int, int], set[int]]:
    """Group junction pixels whose inscribed disks overlap (one thick crossing thinned
    into several junction pixels): joined by a path no longer than the sum of their
    local radii.

    Returns (junction node -> cluster id, indices of the linking paths).
    """
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    links: set[int] = set()
    for p in paths:
        for node, d in ((p["nodes"][0], p["deg"][0]), (p["nodes"][-1], p["deg"][1])):
            if d >= 3:
                parent.setdefault(int(node), int(node))
    for k, p in enumerate(paths):
        d0, d1 = p["deg"]
        if d0 < 3 or d1 < 3:
            continue
        a, b = int(p["nodes"][0]), int(p["nodes"][-1])
        ra = _local_radius(radius, p["pixels"][0])
        rb = _local_radius(radius, p["pixels"][-1])
        if polyline_length(p["pixels"]) <= ra + rb:
            links.add(k)
            parent[find(a)] = find(b)
    return {j: find(j) for j in parent}, links


def _skeleton_paths(inside: np.ndarray, radius: np.ndarray, prune_px: float | None,
                    sigma_px: float, max_rounds: int = 50) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Skeletonize one class mask, remove artefacts and short end branches (repeatedly,
    re-thinning after each round), and measure the remaining paths.

    Returns (skeleton image, paths as measured by :func:`_paths`).
    """
    from skimage.morphology import skeletonize

    skel = skeletonize(inside)
    for round_ in range(max_rounds + 1):
        graph = _skan_graph(skel)
        paths = [] if graph is None else _paths(graph, skel, inside, radius, sigma_px)
        if round_ == max_rounds or not paths or not _prune_once(skel, paths, radius, prune_px):
            return skel, paths
        skel = skeletonize(skel)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- table


def _component_rows(name: str, inside: np.ndarray, pixel_size_nm: float, prune_px: float | None,
                    sigma_px: float) -> list[dict[str, Any]]:
    """One row per 8-connected component of one class mask (lengths in px and nm)."""
    lab, n = ndimage.label(inside, structure=_EIGHT)
    if n == 0:
        return []
    # inscribed radius (px) of every pixel; the image border counts as background
    radius = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
    skel, paths = _skeleton_paths(inside, radius, prune_px, sigma_px)
    clusters, links = _junction_clusters(paths, radius)

    idx = np.arange(1, n + 1)
    area = np.asarray(ndimage.sum_labels(inside, lab, idx), float)
    cents = ndimage.center_of_mass(inside, lab, idx)
    border = np.zeros(n + 1, bool)
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        border[edge] = True

    length = np.zeros(n + 1)
    branches = np.zeros(n + 1, np.int64)
    ends = np.zeros(n + 1, np.int64)
    junctions: dict[int, set[int]] = {}
    for k, p in enumerate(paths):
        comp = int(lab[p["pixels"][0, 0], p["pixels"][0, 1]])
        length[comp] += p["length_px"]
        if k not in links:
            branches[comp] += 1
        for node, d in ((p["nodes"][0], p["deg"][0]), (p["nodes"][-1], p["deg"][1])):
            if d == 1:
                ends[comp] += 1
            elif d >= 3:
                junctions.setdefault(comp, set()).add(clusters[int(node)])
    # components whose skeleton is a single pixel (dots, tiny blobs): a "line" as long as
    # the blob is wide, one branch with two ends
    for comp in range(1, n + 1):
        if branches[comp] == 0 and length[comp] == 0:
            sk = skel & (lab == comp)
            r = float(radius[sk].max()) if sk.any() else float(radius[lab == comp].max())
            length[comp] = max(2.0 * r - 1.0, 1.0)
            branches[comp], ends[comp] = 1, 2

    rows = []
    for comp in range(1, n + 1):
        lp = float(length[comp])
        rows.append({
            "class": name,
            "length_nm": lp * pixel_size_nm,
            "length_px": lp,
            "branches": int(branches[comp]),
            "junctions": len(junctions.get(comp, ())),
            "end_points": int(ends[comp]),
            "mean_width_nm": float(area[comp - 1] / lp * pixel_size_nm) if lp > 0 else 0.0,
            "centroid_y_px": float(cents[comp - 1][0]),
            "centroid_x_px": float(cents[comp - 1][1]),
            "area_nm2": float(area[comp - 1] * pixel_size_nm ** 2),
            "area_px": int(area[comp - 1]),
            "touches_border": bool(border[comp]),
        })
    return rows


def _empty_table() -> pd.DataFrame:
    dtypes = {"defect_id": "int64", "class": "object", "branches": "int64", "junctions": "int64",
              "end_points": "int64", "area_px": "int64", "touches_border": "bool"}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in COLUMNS})


def skeleton_table(
    mask: np.ndarray,
    pixel_size_nm: float = 1.0,
    prune_nm: float | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    valid_area_px: float | np.ndarray | None = None,
    smooth_sigma_px: float = SMOOTH_SIGMA_PX,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Measure the line defects of a mask: one row per connected defect per class.

    Parameters
    ----------
    mask : ndarray
        2-D bool mask (class ``"defect"``), 2-D integer class-label image (0 =
        background) or ``(C, H, W)`` stack of binary class channels; see
        :func:`class_masks`.
    pixel_size_nm : float
        Pixel size in nm (square pixels). 1.0 gives lengths in px.
    prune_nm : float, optional
        Remove end branches (junction to end point) shorter than this, repeatedly.
    class_names : list or dict, optional
        Class names (list entry i / dict key i + 1 names class i + 1).
    valid_area_px : float or bool ndarray, optional
        Analysed area in px (or a mask of it) for the length density; default the whole
        image.
    smooth_sigma_px : float
        Gaussian smoothing of the paths (pixel steps), see :data:`SMOOTH_SIGMA_PX`.

    Returns
    -------
    table : pandas.DataFrame
        Columns :data:`COLUMNS`: ``defect_id`` (1, 2, ... over all classes), ``class``,
        ``length_nm`` (tip-to-tip centre-line length, all branches), ``length_px``,
        ``branches``, ``junctions``, ``end_points``, ``mean_width_nm`` (area / length),
        ``centroid_y_px``, ``centroid_x_px``, ``area_nm2``, ``area_px``,
        ``touches_border``.
    summary : dict
        Plain floats/ints: ``n_defects``, ``total_length_nm``,
        ``length_density_nm_per_um2`` (total length / analysed area), ``analysed_area_um2``,
        ``pixel_size_nm``, ``prune_nm``, ``per_class`` ({class: {n_defects,
        total_length_nm, length_density_nm_per_um2}}).

    Raises
    ------
    ValueError
        For a bad mask (see :func:`class_masks`), a non-positive pixel size or a negative
        ``prune_nm``.
    """
    ps = float(pixel_size_nm)
    if not math.isfinite(ps) or ps <= 0:
        raise ValueError(f"the pixel size must be a positive number of nm, got {pixel_size_nm!r}")
    if prune_nm is not None and (not math.isfinite(float(prune_nm)) or prune_nm < 0):
        raise ValueError(f"prune_nm must be a non-negative number of nm, got {prune_nm!r}")
    classes = class_masks(mask, class_names)
    shape = np.shape(mask)[-2:]
    prune_px = None if not prune_nm else float(prune_nm) / ps

    rows: list[dict[str, Any]] = []
    for name, inside in classes:
        rows.extend(_component_rows(name, inside, ps, prune_px, smooth_sigma_px))
    if rows:
        table = pd.DataFrame(rows, columns=COLUMNS[1:])
        table.insert(0, "defect_id", np.arange(1, len(table) + 1, dtype=np.int64))
    else:
        table = _empty_table()

    if valid_area_px is None:
        area_px = float(shape[0] * shape[1])
    elif np.ndim(valid_area_px) == 0:
        area_px = float(valid_area_px)
    else:
        area_px = float(np.count_nonzero(valid_area_px))
    if not area_px > 0:
        raise ValueError(f"the analysed area must be positive, got {area_px} px")
    area_um2 = area_px * ps * ps / 1e6

    def stats(t: pd.DataFrame) -> dict[str, Any]:
        total = float(t["length_nm"].sum()) if len(t) else 0.0
        return {"n_defects": len(t), "total_length_nm": total,
                "length_density_nm_per_um2": total / area_um2}

    summary = stats(table)
    summary.update({
        "analysed_area_um2": float(area_um2),
        "pixel_size_nm": ps,
        "prune_nm": None if prune_nm is None else float(prune_nm),
        "per_class": {name: stats(table[table["class"] == name]) for name, _ in classes},
    })
    return table, summary


# ----------------------------------------------------------------------------- files


def _class_names_from_description(desc: str) -> Sequence[str] | dict[int, str] | None:
    """Class names from a JSON ImageDescription: ``"classes"`` or ``"class_names"`` as a
    list (channel / class order) or a {value: name} dict."""
    try:
        info = json.loads(desc) if desc and desc.strip().startswith("{") else {}
    except json.JSONDecodeError:
        return None
    for key in ("classes", "class_names"):
        v = info.get(key)
        if isinstance(v, list) and v:
            return [str(x) for x in v]
        if isinstance(v, dict) and v:
            try:
                return {int(k): str(n) for k, n in v.items()}
            except (TypeError, ValueError):
                return None
    return None


def _read_mask(path: Path) -> tuple[np.ndarray, Any, float | None]:
    """(data, class names or None, pixel size from the JSON description or None)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                series = tf.series[0] if tf.series else None
                data = series.asarray() if series is not None else tf.pages[0].asarray()
                axes = series.axes if series is not None else ""
                desc = tf.pages[0].description or ""
        except Exception as exc:  # noqa: BLE001 - any tifffile failure is a bad file
            raise NanodefectError(f"cannot read the mask TIFF ({type(exc).__name__}: {exc})", path) from None
        if axes.endswith("S") and data.ndim >= 3:
            raise NanodefectError(
                f"a colour (RGB) image of shape {data.shape} is not a defect mask; save a binary mask, "
                "a class-label image or one channel per class (C, H, W)", path)
        ps = None
        try:
            info = json.loads(desc) if desc.strip().startswith("{") else {}
            ps = float(info["pixel_size_nm"]) if info.get("pixel_size_nm") else None
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            ps = None
        return np.asarray(data), _class_names_from_description(desc), ps
    from ..io import read_image

    m = read_image(path, detect_info_bar=False, detect_scale_bar=False)
    return np.asarray(m.data), None, m.pixel_size_nm


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    from ..atomic import atomic_write_text

    atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))


def measure_skeleton_file(
    mask_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    pixel_size_nm: float | None = None,
    prune_nm: float | None = None,
) -> dict[str, Any]:
    """Measure the line defects of a mask file and write ``defects.csv`` + summary JSON.

    Parameters
    ----------
    mask_path : path
        Mask TIFF: binary, class-label image or ``(C, H, W)`` class channels (class
        names from a JSON description's ``"classes"``/``"class_names"``, as written by
        :func:`..annotations.labels.write_label_tiff`); other image formats are read
        with :func:`..io.read_image`.
    out_dir : path
        Folder for ``defects.csv`` (one row per defect, :data:`COLUMNS`) and
        ``defects_summary.json`` (the summary of :func:`skeleton_table`); both are
        written atomically. An empty mask is a valid result: zero rows, zero totals.
    pixel_size_nm : float, optional
        Overrides the file's pixel size.
    prune_nm : float, optional
        See :func:`skeleton_table`.

    Returns
    -------
    dict
        The summary plus ``mask`` (the input path), ``defects_csv`` and ``summary_json``
        (output paths as str).

    Raises
    ------
    NanodefectError
        Naming the file: unreadable, wrong shape or dtype, or no pixel size in the file
        and none given.
    """
    from ..atomic import atomic_write_json

    path = Path(mask_path)
    if not path.is_file():
        raise NanodefectError("file not found" if not path.exists() else "is not a file", path)
    data, names, ps_desc = _read_mask(path)
    if pixel_size_nm is None:
        pixel_size_nm = ps_desc
    if pixel_size_nm is None and path.suffix.lower() in (".tif", ".tiff"):
        from ..io import read_image

        try:
            pixel_size_nm = read_image(path, detect_info_bar=False, detect_scale_bar=False).pixel_size_nm
        except NanodefectError:
            pixel_size_nm = None
    if pixel_size_nm is None:
        raise NanodefectError("no pixel size in the file; give it with --pixel-size NM", path)
    if not (math.isfinite(float(pixel_size_nm)) and float(pixel_size_nm) > 0):
        raise NanodefectError(f"invalid pixel size {pixel_size_nm!r} nm", path)
    if prune_nm is not None and not (math.isfinite(float(prune_nm)) and float(prune_nm) >= 0):
        raise NanodefectError(f"invalid --prune {prune_nm!r} nm (must be >= 0)", path)
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    try:
        table, summary = skeleton_table(data, pixel_size_nm=float(pixel_size_nm), prune_nm=prune_nm, class_names=names)
    except ValueError as exc:
        raise NanodefectError(f"not a defect mask: {exc}", path) from None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NanodefectError("the output path exists and is not a folder", out)
    csv_path = out / "defects.csv"
    json_path = out / "defects_summary.json"
    summary = {"mask": str(path), **summary}
    _write_csv(csv_path, table)
    atomic_write_json(json_path, summary)
    return {**summary, "defects_csv": str(csv_path), "summary_json": str(json_path)}
