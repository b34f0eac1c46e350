"""Scores for instance and semantic segmentations of particles (Qt-free, numpy/scipy only).

Four ways to compare a prediction with the truth:

* :func:`match_instances` — two instance label images, one-to-one matching by
  intersection over union (IoU) at a threshold (``0.5`` by default); :func:`match_iou_sweep`
  repeats it over thresholds (``0.5, 0.55, … 0.95``) from one overlap table.
* :func:`centroid_in_box` — predicted instances (a label image or their centroids) against
  ground-truth **bounding boxes** (detection data sets such as YOLO boxes): a prediction is
  a true positive when its centroid lies inside a box, each box matched at most once.
* :func:`centroid_in_contour` — predicted instances against true instance *contours*
  (Okunev et al. 2020): a prediction counts when its centroid falls inside a true particle,
  each true particle matched at most once.
* :func:`semantic_scores` — foreground masks: Dice and IoU.

On top of these (``nanodefect evaluate``, and the validation of training):

* :func:`size_scores` — count error, median equivalent circle diameter (ECD) error and
  the Kolmogorov-Smirnov distance of the two ECD distributions;
* :func:`coco_map` — COCO mask AP/AP50/AP75/AR with pycocotools (imported lazily);
* :func:`evaluate_labels` — all of the above for one pair of label images, optionally
  counted only inside crop rectangles / a region mask;
* :func:`evaluate_sets` / :func:`evaluate_files` — annotation sets or files (LabelMe,
  COCO, label TIFFs) paired by image name, per image and pooled over images;
  :func:`format_evaluation` prints the result as a short table.

Conventions
-----------
* Label images are 2-D integer (or bool) arrays, ``0`` = background; any non-negative
  label values, not necessarily consecutive. Negative labels are refused.
* Coordinates of boxes, centroids and regions are **pixel-corner** ("continuous")
  coordinates, as in :mod:`napari_nanodefect.core.annotations`: the pixel at row ``r``,
  column ``c`` covers ``[c, c+1) × [r, r+1)`` and its centre is ``(r + 0.5, c + 0.5)``.
  The centroid of an instance is the mean of its pixel centres. Centroids from
  ``skimage.measure.regionprops`` (pixel indices) need ``+ 0.5`` to be in this convention.
* One-to-one matching maximises first the number of matches, then their quality (total
  IoU, or closeness of centroid to box centre); it is solved exactly with
  :func:`scipy.optimize.linear_sum_assignment` on each connected group of competing
  candidates (groups are tiny in practice, so 10 000 objects are matched in milliseconds).

Scores
------
``tp`` matched predictions, ``fp = n_pred - tp``, ``fn = n_truth - tp``;
``precision = tp / n_pred``, ``recall = tp / n_truth``, ``f1 = 2 tp / (n_truth + n_pred)``.
A ratio whose denominator is 0 is defined as **0**, except when there is nothing to find
and nothing was found (``n_truth == n_pred == 0``): then precision, recall and F1 are all
**1** (a perfect, if trivial, result). ``mean_matched_iou`` is 0 when nothing is matched.
All returned numbers are plain Python ``int``/``float`` (JSON-friendly) except the arrays
of matched pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "LABELS_EXTRA_KEY",
    "centroid_in_box",
    "centroid_in_contour",
    "coco_map",
    "detection_scores",
    "evaluate_files",
    "evaluate_labels",
    "evaluate_sets",
    "format_evaluation",
    "instance_centroids",
    "match_instances",
    "match_iou_sweep",
    "semantic_scores",
    "size_scores",
]

#: COCO-style IoU thresholds 0.5, 0.55, ..., 0.95
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


# --------------------------------------------------------------------------- helpers


def detection_scores(tp: int, n_truth: int, n_pred: int) -> dict[str, Any]:
    """``tp, fp, fn, precision, recall, f1`` from counts (see the module docstring for the
    0/0 rules)."""
    tp, n_truth, n_pred = int(tp), int(n_truth), int(n_pred)
    if n_truth == 0 and n_pred == 0:
        p = r = f = 1.0
    else:
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_truth if n_truth else 0.0
        f = 2.0 * tp / (n_truth + n_pred)
    return {
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_truth - tp,
        "n_truth": n_truth,
        "n_pred": n_pred,
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
    }


def _as_labels(a: Any, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D label image, got shape {a.shape}")
    if a.dtype == bool:
        return a.view(np.uint8)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what} must be an integer label image, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError(f"{what} has negative labels")
    return a


def _run_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values of a 1-D int array and their counts. Runs of equal neighbours (long
    in raster-ordered label images) are collapsed first, so only the runs are sorted."""
    if keys.size == 0:
        return np.zeros(0, keys.dtype), np.zeros(0, np.int64)
    starts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate(([0], starts))
    lengths = np.diff(np.append(starts, keys.size))
    values, inverse = np.unique(keys[starts], return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=lengths, minlength=values.size).astype(np.int64)
    return values, counts


def _label_areas(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero labels present in ``flat`` (sorted) and their pixel counts."""
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = int(flat.max())
    if top == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if top <= max(1 << 20, 2 * flat.size):
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1)
        labels = np.flatnonzero(counts)
        labels = labels[labels > 0]
        return labels.astype(np.int64), counts[labels].astype(np.int64)
    values, counts = _run_counts(flat[flat != 0].astype(np.int64))
    return values, counts


def _overlaps(truth: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Label values, areas and all overlapping (truth, pred) pairs with their IoU."""
    t = truth.ravel()
    p = pred.ravel()
    t_lab, t_area = _label_areas(t)
    p_lab, p_area = _label_areas(p)
    both = (t != 0) & (p != 0)
    tv = t[both]
    pv = p[both]
    if tv.size == 0:
        ti = pi = np.zeros(0, np.int64)
        inter = np.zeros(0, np.int64)
    else:
        tmax = int(t_lab[-1])
        pmax = int(p_lab[-1])
        if tmax < (1 << 62) // (pmax + 1):  # key fits in int64
            base = pmax + 1
            keys = tv.astype(np.int64) * base + pv.astype(np.int64)
            vals, inter = _run_counts(keys)
            t_pair, p_pair = vals // base, vals % base
        else:  # huge label values: use indices instead
            tk = np.searchsorted(t_lab, tv.astype(np.int64))
            pk = np.searchsorted(p_lab, pv.astype(np.int64))
            base = p_lab.size
            vals, inter = _run_counts(tk.astype(np.int64) * base + pk)
            t_pair, p_pair = t_lab[vals // base], p_lab[vals % base]
        ti = np.searchsorted(t_lab, t_pair)
        pi = np.searchsorted(p_lab, p_pair)
    union = t_area[ti] + p_area[pi] - inter
    iou = inter / np.maximum(union, 1)
    return {"t_lab": t_lab, "t_area": t_area, "p_lab": p_lab, "p_area": p_area,
            "ti": ti, "pi": pi, "inter": inter, "iou": iou.astype(np.float64)}


def _assign(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """One-to-one matching on candidate pairs ``(rows[k], cols[k])``: as many matches as
    possible, and among those the smallest total ``cost`` (``cost >= 0``). Exact: each
    connected group of competing candidates is solved with ``linear_sum_assignment``.
    Returns the indices ``k`` of the chosen candidate pairs."""
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    n = rows.size
    if n == 0:
        return np.zeros(0, np.int64)
    row_deg = np.bincount(rows, minlength=n_rows)
    col_deg = np.bincount(cols, minlength=n_cols)
    simple = (row_deg[rows] == 1) & (col_deg[cols] == 1)
    chosen = [np.flatnonzero(simple)]
    hard = np.flatnonzero(~simple)
    if hard.size:
        # connected components of the bipartite graph of the competing candidates
        r_nodes = rows[hard]
        c_nodes = cols[hard] + n_rows
        g = sparse.coo_matrix((np.ones(hard.size), (r_nodes, c_nodes)), shape=(n_rows + n_cols,) * 2)
        _, comp = connected_components(g, directed=False)
        pair_comp = comp[r_nodes]
        order = np.argsort(pair_comp, kind="stable")
        bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
        for group in np.split(hard[order], bounds):
            ur, r_idx = np.unique(rows[group], return_inverse=True)
            uc, c_idx = np.unique(cols[group], return_inverse=True)
            c = cost[group].astype(np.float64)
            forbidden = (float(c.max()) + 1.0) * (min(ur.size, uc.size) + 1)
            m = np.full((ur.size, uc.size), forbidden)
            lookup = np.full((ur.size, uc.size), -1, np.int64)
            # keep the cheapest candidate if a pair is listed twice
            for k in np.argsort(-c, kind="stable"):
                m[r_idx[k], c_idx[k]] = c[k]
                lookup[r_idx[k], c_idx[k]] = group[k]
            ri, ci = linear_sum_assignment(m)
            picked = lookup[ri, ci]
            chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------- IoU matching


def _match_from_table(tab: dict[str, np.ndarray], iou_threshold: float) -> dict[str, Any]:
    thr = float(iou_threshold)
    if not 0.0 < thr <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    cand = np.flatnonzero(tab["iou"] >= thr)
    k = cand[_assign(tab["ti"][cand], tab["pi"][cand], 1.0 - tab["iou"][cand],
                     tab["t_lab"].size, tab["p_lab"].size)]
    n_t, n_p = int(tab["t_lab"].size), int(tab["p_lab"].size)
    out = detection_scores(k.size, n_t, n_p)
    ious = tab["iou"][k]
    out["iou_threshold"] = thr
    out["mean_matched_iou"] = float(ious.mean()) if ious.size else 0.0
    # panoptic quality = segmentation quality x recognition quality (Kirillov et al. 2019)
    denom = k.size + 0.5 * (out["fp"] + out["fn"])
    out["panoptic_quality"] = float(ious.sum() / denom) if denom else 1.0
    out["pairs"] = np.stack([tab["t_lab"][tab["ti"][k]], tab["p_lab"][tab["pi"][k]]], axis=1).reshape(-1, 2)
    out["pair_iou"] = ious
    return out


def match_instances(truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict[str, Any]:
    """Match two instance label images one-to-one by IoU.

    A (truth, prediction) pair is a candidate when its IoU is ``>= iou_threshold``; the
    matching keeps as many candidates as possible one-to-one (with the largest total IoU
    among equally large matchings). Above 0.5 candidates are unique anyway; at or below
    it (e.g. a 2-px particle covered by two 1-px predictions at IoU 0.5 each) the
    assignment decides.

    All overlaps are counted in one pass (pairs of labels of the overlapping pixels,
    run-length collapsed, then counted), so 10 000 objects on 4096² take well under a
    second.

    Returns a dict: ``tp``, ``fp``, ``fn``, ``n_truth``, ``n_pred``, ``precision``,
    ``recall``, ``f1`` (0/0 rules in the module docstring), ``iou_threshold``,
    ``mean_matched_iou`` (0 without matches), ``panoptic_quality``
    (``sum IoU / (tp + fp/2 + fn/2)``), ``pairs`` (``(tp, 2)`` int array of
    ``(truth label, pred label)`` values) and ``pair_iou`` (their IoUs).
    """
    t = _as_labels(truth, "truth")
    p = _as_labels(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"truth and pred shapes differ: {t.shape} vs {p.shape}")
    return _match_from_table(_overlaps(t, p), iou_threshold)


def match_iou_sweep(
    truth: np.ndarray, pred: np.ndarray, thresholds: Iterable[float] = DEFAULT_IOU_THRESHOLDS
) -> dict[str, Any]:
    """:func:`match_instances` at several IoU thresholds (overlaps counted once).

    Returns ``thresholds``, ``precision``, ``recall``, ``f1`` (lists, one value per
    threshold), ``mean_f1`` (F1 averaged over the thresholds) and ``results`` (the full
    :func:`match_instances` dict per threshold).
    """
    t = _as_labels(truth, "truth")
    p = _as_labels(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"truth and pred shapes differ: {t.shape} vs {p.shape}")
    thr = [float(x) for x in thresholds]
    tab = _overlaps(t, p)
    results = [_match_from_table(tab, x) for x in thr]
    f1 = [r["f1"] for r in results]
    return {
        "thresholds": thr,
        "precision": [r["precision"] for r in results],
        "recall": [r["recall"] for r in results],
        "f1": f1,
        "mean_f1": float(np.mean(f1)) if f1 else 0.0,
        "results": results,
    }


# --------------------------------------------------------------------------- centroid rules


def instance_centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label values present (sorted) and their centroids ``(M, 2)`` as ``(y, x)`` in
    pixel-corner coordinates (mean of the pixel centres ``(r + 0.5, c + 0.5)``)."""
    lab = _as_labels(labels, "labels")
    flat = lab.ravel()
    values, areas = _label_areas(flat)
    if values.size == 0:
        return values, np.zeros((0, 2))
    fg = np.flatnonzero(flat)
    idx = np.searchsorted(values, flat[fg])
    W = lab.shape[1]
    rows, cols = np.divmod(fg, W)
    sy = np.bincount(idx, weights=rows, minlength=values.size)
    sx = np.bincount(idx, weights=cols, minlength=values.size)
    cent = np.stack([sy / areas + 0.5, sx / areas + 0.5], axis=1)
    return values, cent


def _pred_centroids(pred: Any, image_shape: Sequence[int] | None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Centroids of a label image, or a float ``(M, 2)`` centroid array passed through."""
    a = np.asarray(pred)
    if a.dtype.kind == "f" or (a.ndim == 2 and a.shape[0] == 0):
        if a.size == 0:
            a = a.reshape(0, 2)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"centroids must be an (M, 2) array of (y, x), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("centroids must be finite")
        shape = None if image_shape is None else (int(image_shape[0]), int(image_shape[1]))
        return a.astype(np.float64), shape
    _, cent = instance_centroids(a)
    return cent, (int(a.shape[0]), int(a.shape[1]))


def _region_box(
    region: Sequence[float] | None, exclude_border_px: float, shape: tuple[int, int] | None
) -> tuple[float, float, float, float] | None:
    """The evaluated region ``(y0, x0, y1, x1)`` or None (everything)."""
    if region is None and not exclude_border_px:
        return None
    y0, x0, y1, x1 = -np.inf, -np.inf, np.inf, np.inf
    if region is not None:
        y0, x0, y1, x1 = (float(v) for v in region)
        if not (y1 > y0 and x1 > x0):
            raise ValueError(f"region must be (y0, x0, y1, x1) with y1 > y0 and x1 > x0, got {tuple(region)}")
    if exclude_border_px:
        if shape is None:
            raise ValueError("exclude_border_px needs the image size: pass image_shape with centroid arrays")
        b = float(exclude_border_px)
        y0, x0 = max(y0, b), max(x0, b)
        y1, x1 = min(y1, shape[0] - b), min(x1, shape[1] - b)
    return (y0, x0, y1, x1)


def _inside(yx: np.ndarray, reg: tuple[float, float, float, float] | None) -> np.ndarray:
    if reg is None:
        return np.ones(len(yx), bool)
    y0, x0, y1, x1 = reg
    return (yx[:, 0] >= y0) & (yx[:, 0] < y1) & (yx[:, 1] >= x0) & (yx[:, 1] < x1)


def _region_scores(
    truth_in: np.ndarray, pred_in: np.ndarray, t_match: np.ndarray, p_match: np.ndarray
) -> dict[str, Any]:
    """Counts inside the region. Matching was done on everything; a true object inside
    the region counts (TP when matched, else FN) whatever its partner's position; an
    unmatched prediction inside counts as FP; a prediction matched to a true object
    outside the region is ignored (it is neither right nor wrong here)."""
    tp = int(np.count_nonzero(truth_in[t_match]))
    fn = int(np.count_nonzero(truth_in)) - tp
    matched_pred = np.zeros(pred_in.size, bool)
    matched_pred[p_match] = True
    fp = int(np.count_nonzero(pred_in & ~matched_pred))
    return detection_scores(tp, tp + fn, tp + fp)


def centroid_in_box(
    pred: Any,
    boxes: Any,
    *,
    region: Sequence[float] | None = None,
    exclude_border_px: float = 0,
    image_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Score predicted instances against ground-truth bounding boxes.

    ``pred``: an instance label image (integer/bool), or a float ``(M, 2)`` array of
    ``(y, x)`` centroids in pixel-corner coordinates. ``boxes``: ``(K, 4)``
    ``x0, y0, x1, y1`` pixel-corner coordinates. A prediction is a candidate for a box
    when its centroid lies inside the box (borders included). Matching is one-to-one:
    each box takes at most one prediction and vice versa; as many candidates as possible
    are matched, and among equal-size matchings the one with the smallest total distance
    of centroids to box centres (exact, ``linear_sum_assignment``). So two centroids in
    one box give one TP and one FP; a box without a centroid is a FN.

    ``region=(y0, x0, y1, x1)`` (pixel-corner) and/or ``exclude_border_px`` restrict the
    *counting* to a region (e.g. outside the training crop's image, or away from image
    borders where the ground truth omits cut particles): the matching is done on
    everything, then a box counts when its centre is inside the region (TP if matched,
    else FN), an unmatched prediction counts when its centroid is inside (FP), and a
    prediction matched to a box outside the region is ignored. ``exclude_border_px``
    needs the image size (from the label image, or ``image_shape`` with centroids).

    Returns ``tp, fp, fn, n_truth, n_pred, precision, recall, f1`` (counts in the region),
    plus ``pairs`` (``(tp_all, 2)`` indices ``(box index, prediction index)`` of all
    matches, region or not; prediction index = position in the sorted label values or in
    the centroid array) and ``centroids`` (the ``(M, 2)`` prediction centroids).
    """
    cent, shape = _pred_centroids(pred, image_shape)
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be a (K, 4) array of x0, y0, x1, y1, got shape {b.shape}")
    bx0, bx1 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
    by0, by1 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
    centre = np.stack([(by0 + by1) / 2, (bx0 + bx1) / 2], axis=1)  # (y, x)
    rows_l: list[np.ndarray] = []
    cols_l: list[np.ndarray] = []
    if len(b) and len(cent):
        # candidates: centroids within the box's half-diagonal of its centre, then exact test
        from scipy.spatial import cKDTree

        tree = cKDTree(cent)
        radius = 0.5 * np.hypot(bx1 - bx0, by1 - by0) + 1e-9
        hits = tree.query_ball_point(centre, radius)
        for k, h in enumerate(hits):
            if h:
                h = np.asarray(h, np.int64)
                y, x = cent[h, 0], cent[h, 1]
                ok = (y >= by0[k]) & (y <= by1[k]) & (x >= bx0[k]) & (x <= bx1[k])
                if ok.any():
                    rows_l.append(np.full(int(ok.sum()), k, np.int64))
                    cols_l.append(h[ok])
    rows = np.concatenate(rows_l) if rows_l else np.zeros(0, np.int64)
    cols = np.concatenate(cols_l) if cols_l else np.zeros(0, np.int64)
    dist = np.hypot(cent[cols, 0] - centre[rows, 0], cent[cols, 1] - centre[rows, 1]) if rows.size else np.zeros(0)
    k = _assign(rows, cols, dist, len(b), len(cent))
    t_match, p_match = rows[k], cols[k]
    reg = _region_box(region, exclude_border_px, shape)
    out = _region_scores(_inside(centre, reg), _inside(cent, reg), t_match, p_match)
    out["pairs"] = np.stack([t_match, p_match], axis=1).reshape(-1, 2)
    out["centroids"] = cent
    return out


def centroid_in_contour(
    truth: np.ndarray,
    pred: Any,
    *,
    region: Sequence[float] | None = None,
    exclude_border_px: float = 0,
) -> dict[str, Any]:
    """Okunev et al. (2020) rule: a predicted particle is a true positive when its centroid
    falls inside a true particle (the truth label at the centroid's pixel), one-to-one:
    when several centroids fall in one true particle, the one nearest to the true
    particle's centroid is the TP and the others are FPs.

    ``truth``: instance label image. ``pred``: label image of the same shape, or a float
    ``(M, 2)`` array of ``(y, x)`` centroids (pixel-corner coordinates). ``region`` /
    ``exclude_border_px`` as in :func:`centroid_in_box` (true particles are placed by their
    centroid). Returns the same keys as :func:`centroid_in_box`, ``pairs`` holding
    ``(truth label, prediction index)``.
    """
    t = _as_labels(truth, "truth")
    cent, _ = _pred_centroids(pred, t.shape)
    p_arr = np.asarray(pred)
    if p_arr.dtype.kind != "f" and p_arr.size and p_arr.shape != t.shape:
        raise ValueError(f"truth and pred shapes differ: {t.shape} vs {p_arr.shape}")
    t_lab, t_cent = instance_centroids(t)
    H, W = t.shape
    r = np.floor(cent[:, 0]).astype(np.int64) if len(cent) else np.zeros(0, np.int64)
    c = np.floor(cent[:, 1]).astype(np.int64) if len(cent) else np.zeros(0, np.int64)
    inside_img = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    hit = np.zeros(len(cent), np.int64)
    hit[inside_img] = t[r[inside_img], c[inside_img]]
    cols = np.flatnonzero(hit)
    rows = np.searchsorted(t_lab, hit[cols])
    dist = np.hypot(cent[cols, 0] - t_cent[rows, 0], cent[cols, 1] - t_cent[rows, 1]) if cols.size else np.zeros(0)
    k = _assign(rows, cols, dist, t_lab.size, len(cent))
    t_match, p_match = rows[k], cols[k]
    reg = _region_box(region, exclude_border_px, t.shape)
    out = _region_scores(_inside(t_cent, reg), _inside(cent, reg), t_match, p_match)
    out["pairs"] = np.stack([t_lab[t_match], p_match], axis=1).reshape(-1, 2)
    out["centroids"] = cent
    return out


# --------------------------------------------------------------------------- semantic


def semantic_scores(truth_mask: np.ndarray, pred_mask: np.ndarray) -> dict[str, float]:
    """Dice and IoU of two foreground masks (non-zero = foreground; label images work).

    ``dice = 2|T∩P| / (|T| + |P|)``, ``iou = |T∩P| / |T∪P|``; both 1 when both masks are
    empty.
    """
    t = np.asarray(truth_mask) != 0
    p = np.asarray(pred_mask) != 0
    if t.shape != p.shape:
        raise ValueError(f"mask shapes differ: {t.shape} vs {p.shape}")
    inter = int(np.count_nonzero(t & p))
    nt, np_ = int(np.count_nonzero(t)), int(np.count_nonzero(p))
    union = nt + np_ - inter
    if nt + np_ == 0:
        return {"dice": 1.0, "iou": 1.0}
    return {"dice": 2.0 * inter / (nt + np_), "iou": inter / union}



# --------------------------------------------------------------------------- size distributions


def _ecd(areas: np.ndarray) -> np.ndarray:
    """Equivalent circle diameters ``2 sqrt(area / pi)`` of areas."""
    return 2.0 * np.sqrt(np.asarray(areas, np.float64) / np.pi)


def _as_areas(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a if a is not None else [], dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)) or (arr.size and arr.min() < 0):
        raise ValueError(f"{what} must be finite, non-negative areas (px²)")
    return arr


def _median(a: np.ndarray) -> float | None:
    return float(np.median(a)) if a.size else None


def _size_from_ecd(
    t_px: np.ndarray,
    p_px: np.ndarray,
    t_nm: np.ndarray | None = None,
    p_nm: np.ndarray | None = None,
    pixel_size_nm: float | None = None,
) -> dict[str, Any]:
    """Size statistics from ECDs in px (and nm when both nm arrays are given)."""
    from scipy.stats import ks_2samp

    n_t, n_p = int(t_px.size), int(p_px.size)
    use_nm = t_nm is not None and p_nm is not None
    t_cmp, p_cmp = (t_nm, p_nm) if use_nm else (t_px, p_px)
    mt, mp = _median(t_cmp), _median(p_cmp)
    ks_d = ks_p = None
    if n_t and n_p:
        ks = ks_2samp(t_cmp, p_cmp)
        ks_d, ks_p = float(ks.statistic), float(ks.pvalue)
    return {
        "n_truth": n_t,
        "n_pred": n_p,
        "count_error": n_p - n_t,
        "count_relative_error": (n_p - n_t) / n_t if n_t else None,
        "median_ecd_truth_px": _median(t_px),
        "median_ecd_pred_px": _median(p_px),
        "median_ecd_truth_nm": _median(t_nm) if use_nm else None,
        "median_ecd_pred_nm": _median(p_nm) if use_nm else None,
        "median_ecd_relative_error": (mp - mt) / mt if (mt is not None and mp is not None and mt > 0) else None,
        "ks_statistic": ks_d,
        "ks_pvalue": ks_p,
        "unit": "nm" if use_nm else "px",
        "pixel_size_nm": None if pixel_size_nm is None else float(pixel_size_nm),
    }


def size_scores(truth_areas: Any, pred_areas: Any, pixel_size_nm: float | None = None) -> dict[str, Any]:
    """Count and size-distribution agreement of two sets of object areas (px²).

    The equivalent circle diameter of an object is ``ECD = 2 sqrt(area / pi)`` (px; times
    ``pixel_size_nm`` for nm). Returns (plain numbers; ``None`` where undefined):

    * ``n_truth``, ``n_pred``, ``count_error = n_pred - n_truth``,
      ``count_relative_error = count_error / n_truth`` (None when ``n_truth == 0``);
    * ``median_ecd_truth_px`` / ``median_ecd_pred_px`` and the same in ``_nm`` (None
      without a pixel size, or without objects on that side);
    * ``median_ecd_relative_error = (median_pred - median_truth) / median_truth``;
    * ``ks_statistic``, ``ks_pvalue``: two-sample Kolmogorov-Smirnov test
      (:func:`scipy.stats.ks_2samp`) of the two ECD distributions (None when a side is
      empty). ``unit`` says whether the ECDs compared were in ``nm`` or ``px`` (the
      relative error and KS statistic do not depend on it for one pixel size).
    """
    t = _as_areas(truth_areas, "truth_areas")
    p = _as_areas(pred_areas, "pred_areas")
    if pixel_size_nm is not None and not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    t_px, p_px = _ecd(t), _ecd(p)
    if pixel_size_nm is None:
        return _size_from_ecd(t_px, p_px)
    ps = float(pixel_size_nm)
    return _size_from_ecd(t_px, p_px, t_px * ps, p_px * ps, ps)


# --------------------------------------------------------------------------- COCO mAP


def _import_pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        from .errors import NanodefectError

        raise NanodefectError("COCO mAP needs pycocotools: pip install pycocotools") from None
    return mask_utils, COCO, COCOeval


def _label_rles(lab: np.ndarray, mask_utils: Any) -> list[tuple[int, dict, int, list[float]]]:
    """``(label value, compressed RLE, area, [x, y, w, h])`` of every instance.

    The column-major runs of each instance are computed from its own pixels (not a
    full-image mask per object), then compressed by ``pycocotools.mask.frPyObjects``:
    the result is identical to ``mask.encode`` of the instance's Fortran-ordered
    uint8 mask, at a cost proportional to the object, not to the image.
    """
    from scipy import ndimage

    values, areas = _label_areas(lab.ravel())
    if values.size == 0:
        return []
    H, W = lab.shape
    dense = np.zeros(lab.shape, np.int32)
    nz = lab != 0
    dense[nz] = np.searchsorted(values, lab[nz]) + 1
    out = []
    for k, sl in enumerate(ndimage.find_objects(dense, max_label=values.size), start=1):
        if sl is None:
            continue
        r0, c0 = sl[0].start, sl[1].start
        cc, rr = np.nonzero((dense[sl] == k).T)  # column-major order
        idx = (cc.astype(np.int64) + c0) * H + (rr.astype(np.int64) + r0)
        brk = np.flatnonzero(np.diff(idx) != 1)
        starts = np.concatenate(([idx[0]], idx[brk + 1]))
        ends = np.concatenate((idx[brk] + 1, [idx[-1] + 1]))
        n = starts.size
        counts = np.empty(2 * n + 1, np.int64)
        counts[0] = starts[0]
        counts[1::2] = ends - starts
        counts[2 : 2 * n : 2] = starts[1:] - ends[:-1]
        counts[2 * n] = H * W - ends[-1]
        if counts[-1] == 0:
            counts = counts[:-1]
        rle = mask_utils.frPyObjects({"size": [H, W], "counts": counts.tolist()}, H, W)
        bbox = [float(c0), float(r0), float(sl[1].stop - c0), float(sl[0].stop - r0)]
        out.append((int(values[k - 1]), rle, int(areas[k - 1]), bbox))
    return out


def coco_map(
    truth_labels_list: Sequence[np.ndarray],
    pred_labels_list: Sequence[np.ndarray],
    scores: Sequence[dict[int, float] | None] | None = None,
) -> dict[str, Any]:
    """COCO mask AP of predicted instance label images against the truth (pycocotools).

    One COCO image per pair of label images (same shape), every instance one annotation
    of a single class (class-agnostic), masks as RLE. ``scores``: per image, a mapping
    *prediction label value -> confidence* (or None); a prediction without a score gets
    **1.0**. Predictions written by ``nanodefect predict`` carry no confidence, so all
    their scores are 1.0: the ranking is then arbitrary, and AP measures a single
    operating point (precision x recall at each IoU) rather than a precision-recall
    curve. ``score_source`` in the result says which case applies.

    Evaluation is ``COCOeval(iouType="segm")`` with one area range (``all``; the COCO
    small/medium/large split in px² means little for micrographs) and ``maxDets =
    [1, 10, max(100, most objects in one image)]``: COCO's default of 100 detections per
    image would silently drop the rest of a micrograph with hundreds of particles. The
    numbers are read from ``COCOeval.eval`` directly (``summarize()`` hard-codes 100 for
    AP). Returns ``ap`` (IoU 0.50:0.95), ``ap50``, ``ap75``, ``ar`` (recall at
    ``max_dets`` detections, averaged over IoU 0.50:0.95; COCO's AR@100 when no image
    has more than 100 objects), ``max_dets``, ``n_images``, ``n_truth``, ``n_pred``,
    ``score_source``. Values are None when undefined (no true objects at all).

    pycocotools is imported here; without it :class:`NanodefectError` says how to install
    it. COCOeval's matching loop is pure Python: thousands of objects per image take
    seconds.
    """
    mask_utils, COCO, COCOeval = _import_pycocotools()
    import contextlib
    import io

    truth_labels_list = list(truth_labels_list)
    pred_labels_list = list(pred_labels_list)
    if len(truth_labels_list) != len(pred_labels_list):
        raise ValueError(f"{len(truth_labels_list)} truth but {len(pred_labels_list)} prediction label images")
    if scores is not None and len(scores) != len(pred_labels_list):
        raise ValueError(f"scores must have one entry per image ({len(pred_labels_list)}), got {len(scores)}")
    images: list[dict] = []
    gts: list[dict] = []
    dts: list[dict] = []
    any_score = False
    n_max = 0
    for i, (t_arr, p_arr) in enumerate(zip(truth_labels_list, pred_labels_list)):
        t = _as_labels(t_arr, "truth")
        p = _as_labels(p_arr, "pred")
        if t.shape != p.shape:
            raise ValueError(f"image {i + 1}: truth and pred shapes differ: {t.shape} vs {p.shape}")
        H, W = t.shape
        images.append({"id": i + 1, "height": int(H), "width": int(W), "file_name": f"image_{i + 1}"})
        t_objs = _label_rles(t, mask_utils)
        p_objs = _label_rles(p, mask_utils)
        n_max = max(n_max, len(t_objs), len(p_objs))
        for _, rle, area, bbox in t_objs:
            gts.append({"id": len(gts) + 1, "image_id": i + 1, "category_id": 1, "segmentation": rle,
                        "area": float(area), "bbox": bbox, "iscrowd": 0})
        sc = (scores[i] if scores is not None else None) or {}
        for value, rle, area, bbox in p_objs:
            s = sc.get(value)
            any_score = any_score or s is not None
            dts.append({"id": len(dts) + 1, "image_id": i + 1, "category_id": 1, "segmentation": rle,
                        "area": float(area), "bbox": bbox, "iscrowd": 0,
                        "score": 1.0 if s is None else float(s)})
    max_dets = max(100, n_max)
    out: dict[str, Any] = {"ap": None, "ap50": None, "ap75": None, "ar": None, "max_dets": int(max_dets),
                           "n_images": len(images), "n_truth": len(gts), "n_pred": len(dts),
                           "score_source": "predictions" if any_score else "none: every prediction scored 1.0"}
    if not gts:
        return out
    cats = [{"id": 1, "name": "object"}]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "categories": cats, "annotations": gts}
        gt.createIndex()
        dt = COCO()
        dt.dataset = {"images": images, "categories": cats, "annotations": dts}
        dt.createIndex()
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.params.areaRng = [[0.0, 1e12]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    rec = ev.eval["recall"][:, :, 0, -1]  # [T, K]
    thr = np.asarray(ev.params.iouThrs)

    def _mean(a: np.ndarray) -> float | None:
        a = a[a > -1]
        return float(a.mean()) if a.size else None

    out["ap"] = _mean(prec)
    out["ap50"] = _mean(prec[np.isclose(thr, 0.5)])
    out["ap75"] = _mean(prec[np.isclose(thr, 0.75)])
    out["ar"] = _mean(rec)
    return out


# --------------------------------------------------------------------------- one image pair


def _crop_rects(crops: Any) -> list[tuple[float, float, float, float]] | None:
    """Crops (objects with ``x0, y0, x1, y1`` attributes, or 4-sequences ``x0, y0, x1, y1``)
    as float tuples; None when there are none."""
    if crops is None:
        return None
    rects = []
    for c in crops:
        if hasattr(c, "x0"):
            x0, y0, x1, y1 = c.x0, c.y0, c.x1, c.y1
        else:
            x0, y0, x1, y1 = (float(v) for v in c)
        x0, x1 = sorted((float(x0), float(x1)))
        y0, y1 = sorted((float(y0), float(y1)))
        rects.append((x0, y0, x1, y1))
    return rects or None


def _in_rects(yx: np.ndarray, rects: list[tuple[float, float, float, float]]) -> np.ndarray:
    inside = np.zeros(len(yx), bool)
    for x0, y0, x1, y1 in rects:
        inside |= (yx[:, 0] >= y0) & (yx[:, 0] < y1) & (yx[:, 1] >= x0) & (yx[:, 1] < x1)
    return inside


def _rects_mask(rects: list[tuple[float, float, float, float]], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside any rectangle."""
    m = np.zeros(shape, bool)
    for x0, y0, x1, y1 in rects:
        r0, r1 = int(np.ceil(y0 - 0.5)), int(np.ceil(y1 - 0.5))
        c0, c1 = int(np.ceil(x0 - 0.5)), int(np.ceil(x1 - 0.5))
        m[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return m


def _in_mask(yx: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if len(yx) == 0:
        return np.zeros(0, bool)
    r = np.clip(np.floor(yx[:, 0]).astype(np.int64), 0, mask.shape[0] - 1)
    c = np.clip(np.floor(yx[:, 1]).astype(np.int64), 0, mask.shape[1] - 1)
    return mask[r, c]


def _counted(m: dict[str, Any], t_lab: np.ndarray, p_lab: np.ndarray, t_in: np.ndarray, p_in: np.ndarray) -> dict[str, Any]:
    """An IoU matching (:func:`_match_from_table`) counted in the region (see
    :func:`_region_scores`); JSON-friendly (no arrays)."""
    pairs = m["pairs"]
    ti = np.searchsorted(t_lab, pairs[:, 0])
    pi = np.searchsorted(p_lab, pairs[:, 1])
    out = _region_scores(t_in, p_in, ti, pi)
    ious = m["pair_iou"][t_in[ti]] if ti.size else np.zeros(0)
    out["iou_threshold"] = m["iou_threshold"]
    out["mean_matched_iou"] = float(ious.mean()) if ious.size else 0.0
    denom = out["tp"] + 0.5 * (out["fp"] + out["fn"])
    out["panoptic_quality"] = float(ious.sum() / denom) if denom else 1.0
    out["matched_iou_sum"] = float(ious.sum())
    return out


def _semantic_counts(tm: np.ndarray, pm: np.ndarray) -> dict[str, Any]:
    inter = int(np.count_nonzero(tm & pm))
    nt, np_ = int(np.count_nonzero(tm)), int(np.count_nonzero(pm))
    return _semantic_from_counts(inter, nt, np_)


def _semantic_from_counts(inter: int, nt: int, np_: int) -> dict[str, Any]:
    if nt + np_ == 0:
        dice = iou = 1.0
    else:
        dice, iou = 2.0 * inter / (nt + np_), inter / (nt + np_ - inter)
    return {"dice": float(dice), "iou": float(iou), "tp_px": inter, "truth_px": nt, "pred_px": np_}


def _keep_labels(lab: np.ndarray, values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``lab`` with the instances whose value is in ``values[~keep]`` set to 0."""
    if keep.all():
        return lab
    out = lab.copy()
    out[np.isin(lab, values[~keep])] = 0
    return out


def _evaluate_pair(
    truth: np.ndarray,
    pred: np.ndarray,
    iou_threshold: float,
    pixel_size_nm: float | None,
    crops: Any,
    region_mask: np.ndarray | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per-image result (JSON-friendly) and what pooling needs (areas, counted label
    images, matched IoU sums)."""
    t = _as_labels(truth, "truth")
    p = _as_labels(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(f"truth and pred shapes differ: {t.shape} vs {p.shape}")
    thr = float(iou_threshold)
    if not 0.0 < thr <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if pixel_size_nm is not None and not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"pixel_size_nm must be a positive number, got {pixel_size_nm!r}")
    rects = _crop_rects(crops)
    if region_mask is not None:
        region_mask = np.asarray(region_mask, bool)
        if region_mask.shape != t.shape:
            raise ValueError(f"region_mask shape {region_mask.shape} differs from the label images' {t.shape}")
    tab = _overlaps(t, p)
    t_lab, p_lab = tab["t_lab"], tab["p_lab"]
    restricted = rects is not None or region_mask is not None
    if restricted:
        _, t_cent = instance_centroids(t)
        _, p_cent = instance_centroids(p)
        t_in = np.ones(t_lab.size, bool)
        p_in = np.ones(p_lab.size, bool)
        pix = np.ones(t.shape, bool)
        if rects is not None:
            t_in &= _in_rects(t_cent, rects)
            p_in &= _in_rects(p_cent, rects)
            pix &= _rects_mask(rects, t.shape)
        if region_mask is not None:
            t_in &= _in_mask(t_cent, region_mask)
            p_in &= _in_mask(p_cent, region_mask)
            pix &= region_mask
        sem = _semantic_counts((t != 0) & pix, (p != 0) & pix)
    else:
        t_in = np.ones(t_lab.size, bool)
        p_in = np.ones(p_lab.size, bool)
        sem = _semantic_counts(t != 0, p != 0)

    at = _counted(_match_from_table(tab, thr), t_lab, p_lab, t_in, p_in)
    sweep_res = [_counted(_match_from_table(tab, x), t_lab, p_lab, t_in, p_in) for x in DEFAULT_IOU_THRESHOLDS]
    sweep = {
        "thresholds": list(DEFAULT_IOU_THRESHOLDS),
        "precision": [r["precision"] for r in sweep_res],
        "recall": [r["recall"] for r in sweep_res],
        "f1": [r["f1"] for r in sweep_res],
        "tp": [r["tp"] for r in sweep_res],
        "fp": [r["fp"] for r in sweep_res],
        "fn": [r["fn"] for r in sweep_res],
        "mean_f1": float(np.mean([r["f1"] for r in sweep_res])),
    }
    cic = centroid_in_contour(t, p)
    ti = np.searchsorted(t_lab, cic["pairs"][:, 0])
    cen = _region_scores(t_in, p_in, ti, cic["pairs"][:, 1])
    t_areas, p_areas = tab["t_area"][t_in], tab["p_area"][p_in]
    res = {
        "shape": [int(t.shape[0]), int(t.shape[1])],
        "pixel_size_nm": None if pixel_size_nm is None else float(pixel_size_nm),
        "crops": 0 if rects is None else len(rects),
        "at_iou": {k: v for k, v in at.items() if k != "matched_iou_sum"},
        "iou_sweep": sweep,
        "centroid_in_contour": cen,
        "semantic": sem,
        "size": size_scores(t_areas, p_areas, pixel_size_nm),
    }
    extra = {
        "truth_areas": t_areas,
        "pred_areas": p_areas,
        "matched_iou_sum": at["matched_iou_sum"],
        "truth_counted": _keep_labels(t, t_lab, t_in) if restricted else t,
        "pred_counted": _keep_labels(p, p_lab, p_in) if restricted else p,
    }
    return res, extra


def evaluate_labels(
    truth: np.ndarray,
    pred: np.ndarray,
    iou_threshold: float = 0.5,
    pixel_size_nm: float | None = None,
    *,
    crops: Any = None,
    region_mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """All scores of one pair of instance label images (same shape); JSON-friendly.

    * ``at_iou``: :func:`match_instances` at ``iou_threshold``: ``tp, fp, fn, n_truth,
      n_pred, precision, recall, f1, iou_threshold, mean_matched_iou, panoptic_quality``;
    * ``iou_sweep``: ``thresholds`` 0.5, 0.55, … 0.95 with ``precision``, ``recall``,
      ``f1``, ``tp``, ``fp``, ``fn`` (lists) and ``mean_f1``;
    * ``centroid_in_contour``: Okunev's rule (:func:`centroid_in_contour`): ``tp, fp, fn,
      n_truth, n_pred, precision, recall, f1``;
    * ``semantic``: Dice and IoU of the foreground masks, with the pixel counts
      ``tp_px``, ``truth_px``, ``pred_px``;
    * ``size``: :func:`size_scores` of the object areas (pixel counts);
    * ``shape``, ``pixel_size_nm``, ``crops`` (number of crop rectangles).

    Restricting the counting (fully annotated regions): ``crops`` (rectangles
    ``x0, y0, x1, y1`` in pixel-corner coordinates, or :class:`~.annotations.Crop`
    objects) and/or ``region_mask`` (bool image). The matching is done on the whole
    images; then a true object counts when its centroid lies inside a crop (and in the
    mask): TP when matched, else FN; an unmatched prediction counts (FP) when its
    centroid lies inside; a prediction matched to a true object outside is ignored.
    Sizes use the objects whose centroid is inside; Dice/IoU use the pixels inside
    (pixel centre inside a crop, and in the mask). Object centroids are pixel-corner
    coordinates (module docstring); a centroid is in the mask when its pixel is.
    """
    return _evaluate_pair(truth, pred, iou_threshold, pixel_size_nm, crops, region_mask)[0]


# --------------------------------------------------------------------------- annotation sets

#: key of ``AnnotationSet.extra`` holding a ready instance label image (set by
#: :func:`evaluate_files` for label TIFFs, so they are not traced and rasterised again)
LABELS_EXTRA_KEY = "nanodefect_evaluate_labels"


def _names_of(aset: Any) -> list[str]:
    """Keys to pair an annotation set by (case-folded): the image file's stem, then the
    annotation file's stem; ``<stem>_labels`` counts as ``<stem>``."""
    from pathlib import Path

    names = []
    if aset.image_path:
        names.append(Path(str(aset.image_path).replace("\\", "/")).stem)
    if aset.source is not None:
        names.append(Path(aset.source).stem)
    out: list[str] = []
    for n in names:
        n = n.casefold().removesuffix("_labels")
        if n and n not in out:
            out.append(n)
    return out


def _display_name(aset: Any, k: int) -> str:
    from pathlib import Path

    if aset.image_path:
        return Path(str(aset.image_path).replace("\\", "/")).stem
    if aset.source is not None:
        return Path(aset.source).stem.removesuffix("_labels")
    return f"image_{k + 1}"


def _pair_sets(truth_sets: list, pred_sets: list) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Index pairs (truth, pred) matched by name; first by the primary names (image
    stems), then by any name; each set used at most once, in truth order."""
    t_names = [_names_of(s) for s in truth_sets]
    p_names = [_names_of(s) for s in pred_sets]
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    unmatched_t: list[int] = []
    for ti, tn in enumerate(t_names):
        found = None
        for depth in (1, None):  # primary name against primary names, then all against all
            for name in tn[:depth]:
                for pj, pn in enumerate(p_names):
                    if pj not in used and name in pn[:depth]:
                        found = pj
                        break
                if found is not None:
                    break
            if found is not None:
                break
        if found is None:
            unmatched_t.append(ti)
        else:
            used.add(found)
            pairs.append((ti, found))
    unmatched_p = [j for j in range(len(pred_sets)) if j not in used]
    return pairs, unmatched_t, unmatched_p


def _set_labels(aset: Any, shape: tuple[int, int]) -> np.ndarray:
    lab = aset.extra.get(LABELS_EXTRA_KEY) if isinstance(aset.extra, dict) else None
    if lab is not None:
        return np.asarray(lab)
    from .annotations import objects_to_labels

    return objects_to_labels(aset.objects, shape).labels


def _set_scores(aset: Any, labels: np.ndarray) -> dict[int, float] | None:
    """Label value -> confidence for the objects that carry a ``score`` (the label under
    most of the object's pixels; the highest score when several map to one label)."""
    scored = [o for o in aset.objects if getattr(o, "score", None) is not None]
    if not scored:
        return None
    from .annotations.geometry import rasterize_rings

    out: dict[int, float] = {}
    for o in scored:
        m, r0, c0 = rasterize_rings(o.rings, labels.shape)
        if not m.size or not m.any():
            continue
        vals = labels[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]][m]
        vals = vals[vals != 0]
        if vals.size == 0:
            continue
        u, c = np.unique(vals, return_counts=True)
        v = int(u[np.argmax(c)])
        out[v] = max(out.get(v, -np.inf), float(o.score))
    return out


def _pooled(results: list[dict[str, Any]], extras: list[dict[str, Any]], pixel_sizes: list[float | None],
            iou_threshold: float) -> dict[str, Any]:
    def _sum(section: str, key: str) -> int:
        return int(sum(r[section][key] for r in results))

    tp, fp, fn = _sum("at_iou", "tp"), _sum("at_iou", "fp"), _sum("at_iou", "fn")
    at = detection_scores(tp, tp + fn, tp + fp)
    iou_sum = float(sum(e["matched_iou_sum"] for e in extras))
    denom = tp + 0.5 * (fp + fn)
    at.update({"iou_threshold": float(iou_threshold), "mean_matched_iou": iou_sum / tp if tp else 0.0,
               "panoptic_quality": iou_sum / denom if denom else 1.0})
    thr = list(DEFAULT_IOU_THRESHOLDS)
    per_thr = []
    for k in range(len(thr)):
        stp = sum(r["iou_sweep"]["tp"][k] for r in results)
        sfp = sum(r["iou_sweep"]["fp"][k] for r in results)
        sfn = sum(r["iou_sweep"]["fn"][k] for r in results)
        per_thr.append(detection_scores(stp, stp + sfn, stp + sfp))
    sweep = {"thresholds": thr}
    for key in ("precision", "recall", "f1", "tp", "fp", "fn"):
        sweep[key] = [d[key] for d in per_thr]
    sweep["mean_f1"] = float(np.mean(sweep["f1"]))
    ctp, cfp, cfn = (_sum("centroid_in_contour", k) for k in ("tp", "fp", "fn"))
    sem = _semantic_from_counts(_sum("semantic", "tp_px"), _sum("semantic", "truth_px"), _sum("semantic", "pred_px"))
    t_area = [e["truth_areas"] for e in extras]
    p_area = [e["pred_areas"] for e in extras]
    t_px = _ecd(np.concatenate(t_area)) if t_area else np.zeros(0)
    p_px = _ecd(np.concatenate(p_area)) if p_area else np.zeros(0)
    common = set(pixel_sizes)
    if pixel_sizes and None not in common:
        t_nm = np.concatenate([_ecd(a) * ps for a, ps in zip(t_area, pixel_sizes)])
        p_nm = np.concatenate([_ecd(a) * ps for a, ps in zip(p_area, pixel_sizes)])
        size = _size_from_ecd(t_px, p_px, t_nm, p_nm, pixel_sizes[0] if len(common) == 1 else None)
    else:
        size = _size_from_ecd(t_px, p_px)
    return {
        "n_images": len(results),
        "at_iou": at,
        "iou_sweep": sweep,
        "centroid_in_contour": detection_scores(ctp, ctp + cfn, ctp + cfp),
        "semantic": sem,
        "size": size,
    }


def evaluate_sets(truth_sets: Sequence[Any], pred_sets: Sequence[Any], iou_threshold: float = 0.5) -> dict[str, Any]:
    """Score predicted annotation sets against true ones, image by image and pooled.

    Pairing: by image name, case-insensitive: the stem of ``image_path`` (else of the
    annotation file, ``<stem>_labels.tif`` counting as ``<stem>``); image stems are
    tried first, then annotation file stems. Only ``objects`` are scored (lines, points
    are not), class-agnostically. Each side is rasterised to an instance label image
    (:func:`~.annotations.objects_to_labels`; a set may instead carry a ready label
    image in ``extra[LABELS_EXTRA_KEY]``). The image size comes from the truth set, else
    from the prediction; the two must agree. The pixel size comes from the truth set,
    else from the prediction.

    Crops: when a truth set has crop rectangles (``AnnotationSet.crops``, fully annotated
    regions), only the true objects and the predicted objects whose centroid lies inside
    a crop count, and Dice/IoU only use the pixels inside the crops (details in
    :func:`evaluate_labels`); COCO mAP uses the objects whose centroid is inside.

    Returns ``iou_threshold``, ``images`` (one dict per pair, in truth order: ``name``,
    ``truth``/``pred`` (annotation files), then :func:`evaluate_labels`' keys),
    ``pooled`` (over all pairs: ``tp/fp/fn`` summed before P/R/F1 for ``at_iou``,
    ``iou_sweep`` and ``centroid_in_contour``; pixel counts summed for ``semantic``;
    all objects for ``size`` (nm when every image has a pixel size); ``coco``:
    :func:`coco_map` over all images, scores from the predicted objects' ``score`` where
    present, else 1.0), ``unmatched_truth`` / ``unmatched_pred`` (names not paired).
    Raises :class:`NanodefectError` for size mismatches or an unknown image size.
    """
    from .errors import NanodefectError

    truth_sets, pred_sets = list(truth_sets), list(pred_sets)
    pairs, un_t, un_p = _pair_sets(truth_sets, pred_sets)
    results, extras, pixel_sizes, scores = [], [], [], []
    for ti, pj in pairs:
        ts, ps = truth_sets[ti], pred_sets[pj]
        name = _display_name(ts, ti)
        t_shape = _set_shape(ts)
        p_shape = _set_shape(ps)
        if t_shape is not None and p_shape is not None and t_shape != p_shape:
            raise NanodefectError(f"image {name!r}: truth is {t_shape[0]}x{t_shape[1]} px but the prediction is "
                                  f"{p_shape[0]}x{p_shape[1]} px", ps.source)
        shape = t_shape or p_shape
        if shape is None:
            raise NanodefectError(f"image {name!r}: image size unknown on both sides", ts.source)
        t_lab = _set_labels(ts, shape)
        p_lab = _set_labels(ps, shape)
        px = ts.pixel_size_nm or ps.pixel_size_nm
        crops = list(ts.crops) or None
        res, extra = _evaluate_pair(t_lab, p_lab, iou_threshold, px, crops, None)
        results.append({"name": name, "truth": None if ts.source is None else str(ts.source),
                        "pred": None if ps.source is None else str(ps.source), **res})
        extras.append(extra)
        pixel_sizes.append(px)
        scores.append(_set_scores(ps, extra["pred_counted"]))
    pooled = _pooled(results, extras, pixel_sizes, iou_threshold)
    try:
        pooled["coco"] = coco_map([e["truth_counted"] for e in extras], [e["pred_counted"] for e in extras], scores)
    except NanodefectError as e:  # pycocotools missing: the other scores still stand
        pooled["coco"] = {"ap": None, "ap50": None, "ap75": None, "ar": None, "error": e.problem}
    return {
        "iou_threshold": float(iou_threshold),
        "pooled": pooled,
        "images": results,
        "unmatched_truth": [_display_name(truth_sets[i], i) for i in un_t],
        "unmatched_pred": [_display_name(pred_sets[j], j) for j in un_p],
    }


def _set_shape(aset: Any) -> tuple[int, int] | None:
    lab = aset.extra.get(LABELS_EXTRA_KEY) if isinstance(aset.extra, dict) else None
    if lab is not None:
        return (int(np.shape(lab)[0]), int(np.shape(lab)[1]))
    return aset.image_shape


# --------------------------------------------------------------------------- files


def _label_tiff_set(path: Any) -> Any:
    """An annotation set carrying the label image of a label TIFF (no tracing; empty
    label images are fine: a prediction may find nothing)."""
    from pathlib import Path

    from .annotations import AnnotationSet, read_label_tiff

    path = Path(path)
    li = read_label_tiff(path)
    H, W = li.labels.shape
    stem = path.stem.removesuffix("_labels")
    return AnnotationSet(image_path=li.image_path or f"{stem}.png", image_height=int(H), image_width=int(W),
                         pixel_size_nm=li.pixel_size_nm, source=path, extra={LABELS_EXTRA_KEY: li.labels})


def _load_side(src: Any, images: Any) -> list[Any]:
    from pathlib import Path

    from .annotations import load_annotations, read_labelme_folder

    p = Path(src)
    tif = (".tif", ".tiff")
    if p.is_file() and p.suffix.lower() in tif:
        return [_label_tiff_set(p)]
    if p.is_dir():
        sets = read_labelme_folder(p, allow_empty=True)
        if sets:
            return sets
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in tif and f.stem.endswith("_labels"))
        if files:
            return [_label_tiff_set(f) for f in files]
    return load_annotations(p, images)


def evaluate_files(truth: Any, pred: Any, iou_threshold: float = 0.5, images: Any = None) -> dict[str, Any]:
    """``nanodefect evaluate``: load both sides (a LabelMe file or folder, a COCO file, a
    label TIFF or a folder of ``*_labels.tif``; ``images``: folder of the images COCO
    files refer to) and run :func:`evaluate_sets`. Label TIFFs are used as they are
    (empty ones too). Raises :class:`NanodefectError` when no image pair matches (both
    sides' names are listed), when sizes differ, or for a bad ``iou_threshold``."""
    from .errors import NanodefectError

    thr = float(iou_threshold)
    if not 0.0 < thr <= 1.0:
        raise NanodefectError(f"--iou must be in (0, 1], got {iou_threshold}")
    t_sets = _load_side(truth, images)
    p_sets = _load_side(pred, images)
    pairs, _, _ = _pair_sets(t_sets, p_sets)
    if not pairs:
        tn = ", ".join(_display_name(s, k) for k, s in enumerate(t_sets)) or "(none)"
        pn = ", ".join(_display_name(s, k) for k, s in enumerate(p_sets)) or "(none)"
        raise NanodefectError(f"no image of the prediction matches an image of the truth by name; truth: {tn}; "
                              f"prediction: {pn}")
    try:
        res = evaluate_sets(t_sets, p_sets, thr)
    except ValueError as e:
        raise NanodefectError(str(e)) from None
    res["truth_source"] = str(truth)
    res["pred_source"] = str(pred)
    return res


# --------------------------------------------------------------------------- text


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:+.1f} %"


def format_evaluation(res: dict[str, Any]) -> str:
    """A short text report of :func:`evaluate_sets` / :func:`evaluate_files`: pooled
    scores first, then one line per image, then the images that were not paired."""
    po = res["pooled"]
    thr = res["iou_threshold"]
    a, sw, c, se, sz, co = (po[k] for k in ("at_iou", "iou_sweep", "centroid_in_contour", "semantic", "size", "coco"))
    unit = sz["unit"]
    lines = [
        f"{po['n_images']} image pair(s), pooled:",
        (f"  IoU >= {thr:.2f}          P {a['precision']:.3f}  R {a['recall']:.3f}  F1 {a['f1']:.3f}  "
         f"(tp {a['tp']}, fp {a['fp']}, fn {a['fn']}); mean matched IoU {a['mean_matched_iou']:.3f}"),
        (f"  IoU 0.50:0.95        mean F1 {sw['mean_f1']:.3f}  (F1 at 0.50 {sw['f1'][0]:.3f}, "
         f"0.75 {sw['f1'][5]:.3f}, 0.95 {sw['f1'][-1]:.3f})"),
        (f"  centroid in contour  P {c['precision']:.3f}  R {c['recall']:.3f}  F1 {c['f1']:.3f}  "
         f"(tp {c['tp']}, fp {c['fp']}, fn {c['fn']})"),
        f"  foreground           Dice {se['dice']:.3f}  IoU {se['iou']:.3f}",
    ]
    if co.get("error"):
        lines.append(f"  COCO mask AP         not computed: {co['error']}")
    else:
        scores = ("confidences of the predictions" if co["score_source"] == "predictions"
                  else "no confidences, every prediction scored 1.0")
        lines.append(f"  COCO mask AP         AP {_f(co['ap'])}  AP50 {_f(co['ap50'])}  AP75 {_f(co['ap75'])}  "
                     f"AR {_f(co['ar'])}  (max {co['max_dets']} det./image; {scores})")
    lines += [
        (f"  count                truth {sz['n_truth']}  pred {sz['n_pred']}  error {sz['count_error']:+d} "
         f"({_pct(sz['count_relative_error'])})"),
        (f"  median ECD           truth {_f(sz[f'median_ecd_truth_{unit}'], '.4g')} {unit}  pred "
         f"{_f(sz[f'median_ecd_pred_{unit}'], '.4g')} {unit}  error {_pct(sz['median_ecd_relative_error'])}  "
         f"KS D {_f(sz['ks_statistic'])} (p {_f(sz['ks_pvalue'], '.3g')})"),
        "per image:",
    ]
    w = max([5] + [len(r["name"]) for r in res["images"]])
    lines.append(f"  {'image':<{w}}  truth   pred  P@{thr:.2f}  R@{thr:.2f}  F1@{thr:.2f}  F1 cic   Dice  ECD err")
    for r in res["images"]:
        a, c, se, sz = r["at_iou"], r["centroid_in_contour"], r["semantic"], r["size"]
        lines.append(f"  {r['name']:<{w}}  {a['n_truth']:>5}  {a['n_pred']:>5}  {a['precision']:>6.3f}  "
                     f"{a['recall']:>6.3f}  {a['f1']:>7.3f}  {c['f1']:>6.3f}  {se['dice']:.3f}  "
                     f"{_pct(sz['median_ecd_relative_error'])}"
                     + (f"  ({r['crops']} crop(s))" if r.get("crops") else ""))
    if res.get("unmatched_truth"):
        lines.append(f"truth without prediction (not scored): {', '.join(res['unmatched_truth'])}")
    if res.get("unmatched_pred"):
        lines.append(f"prediction without truth (not scored): {', '.join(res['unmatched_pred'])}")
    return "\n".join(lines)
