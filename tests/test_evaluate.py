"""Scores with known geometry: IoU matching, centroid-in-box, centroid-in-contour, Dice/IoU."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from napari_nanodefect.core.evaluate import (
    DEFAULT_IOU_THRESHOLDS,
    centroid_in_box,
    centroid_in_contour,
    coco_map,
    detection_scores,
    evaluate_files,
    evaluate_labels,
    evaluate_sets,
    format_evaluation,
    instance_centroids,
    match_instances,
    match_iou_sweep,
    semantic_scores,
    size_scores,
)


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def square(shape, y0, x0, size):
    m = np.zeros(shape, bool)
    m[y0 : y0 + size, x0 : x0 + size] = True
    return m


def labels_of(shape, masks, values=None):
    out = np.zeros(shape, np.int32)
    for i, m in enumerate(masks):
        out[m] = i + 1 if values is None else values[i]
    return out


# ------------------------------------------------------------------ match_instances


def test_identical_label_sets_score_one_whatever_the_label_values():
    shape = (60, 80)
    masks = [disk(shape, 15, 15, 6), disk(shape, 40, 50, 8), square(shape, 5, 60, 10)]
    t = labels_of(shape, masks)
    p = labels_of(shape, masks, values=[70000, 3, 12])  # other values, other dtype range
    r = match_instances(t, p)
    assert (r["tp"], r["fp"], r["fn"]) == (3, 0, 0)
    assert r["precision"] == r["recall"] == r["f1"] == 1.0
    assert r["mean_matched_iou"] == 1.0 and r["panoptic_quality"] == 1.0
    assert sorted(map(tuple, r["pairs"].tolist())) == [(1, 70000), (2, 3), (3, 12)]
    assert np.allclose(r["pair_iou"], 1.0)


def test_shifted_squares_have_the_known_iou():
    shape = (50, 50)
    # 10x10 squares shifted by 2 columns: overlap 80 px, union 120 px -> IoU 2/3
    t = labels_of(shape, [square(shape, 10, 10, 10)])
    p = labels_of(shape, [square(shape, 10, 12, 10)])
    r = match_instances(t, p, 0.5)
    assert r["tp"] == 1 and r["pair_iou"][0] == pytest.approx(2 / 3)
    assert r["mean_matched_iou"] == pytest.approx(2 / 3)
    r = match_instances(t, p, 0.7)
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (0, 1, 1, 0.0)
    assert r["mean_matched_iou"] == 0.0


def test_shifted_disks_iou_matches_pixel_count():
    shape = (80, 80)
    a, b = disk(shape, 40, 30, 10), disk(shape, 40, 36, 10)
    expected = (a & b).sum() / (a | b).sum()
    r = match_instances(labels_of(shape, [a]), labels_of(shape, [b]), 0.3)
    assert r["tp"] == 1 and r["pair_iou"][0] == pytest.approx(expected)
    assert 0.3 < expected < 0.7


def test_split_particle_gives_one_match_one_fp():
    shape = (40, 60)
    t = labels_of(shape, [square(shape, 10, 10, 20)])  # 20x20
    left, right = square(shape, 10, 10, 20), square(shape, 10, 10, 20)
    left[:, 24:] = False  # 14 columns -> IoU 0.7
    right[:, :24] = False  # 6 columns -> IoU 0.3
    p = labels_of(shape, [left, right])
    r = match_instances(t, p)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["pair_iou"][0] == pytest.approx(0.7)
    assert r["precision"] == 0.5 and r["recall"] == 1.0 and r["f1"] == pytest.approx(2 / 3)


def test_merged_particles_give_one_match_one_fn():
    shape = (40, 60)
    a, b = square(shape, 10, 10, 10), square(shape, 10, 20, 5)  # 100 px and 25 px, touching
    t = labels_of(shape, [a, b])
    p = labels_of(shape, [a | b])  # merged: IoU 100/125 with a, 25/125 with b
    r = match_instances(t, p)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    assert r["pairs"].tolist() == [[1, 1]]
    assert r["pair_iou"][0] == pytest.approx(0.8)


def test_low_threshold_matching_is_one_to_one_and_maximal():
    shape = (20, 40)
    # truth A (2 px) overlapped by preds P1 (1 px of A) and P2 (1 px of A, + 1 px of B)
    t = np.zeros(shape, np.int32)
    t[5, 5:7] = 1
    t[5, 7] = 2
    p = np.zeros(shape, np.int32)
    p[5, 5] = 1
    p[5, 6:8] = 2
    # IoU: (A,P1)=1/2, (A,P2)=1/3, (B,P2)=1/2 -> best: A-P1 and B-P2 (not A-P2)
    r = match_instances(t, p, 0.3)
    assert r["tp"] == 2
    assert sorted(map(tuple, r["pairs"].tolist())) == [(1, 1), (2, 2)]


def test_exact_half_iou_cannot_double_match():
    t = np.zeros((4, 4), np.int32)
    t[0, 0:2] = 1
    p = np.zeros((4, 4), np.int32)
    p[0, 0], p[0, 1] = 1, 2  # both IoU exactly 0.5 with the single truth
    r = match_instances(t, p, 0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)


@pytest.mark.parametrize(
    "n_t,n_p,expected",
    [((0, 0, (1.0, 1.0, 1.0))), (0, 1, (0.0, 0.0, 0.0)), (1, 0, (0.0, 0.0, 0.0))],
)
def test_empty_cases(n_t, n_p, expected):
    shape = (30, 30)
    t = labels_of(shape, [square(shape, 5, 5, 6)][:n_t])
    p = labels_of(shape, [square(shape, 15, 15, 6)][:n_p])
    r = match_instances(t, p)
    assert (r["precision"], r["recall"], r["f1"]) == expected
    assert (r["tp"], r["fp"], r["fn"]) == (0, n_p, n_t)
    assert r["pairs"].shape == (0, 2)


def test_bool_and_bad_inputs():
    m = square((10, 10), 2, 2, 4)
    assert match_instances(m, m)["f1"] == 1.0
    with pytest.raises(ValueError):
        match_instances(np.zeros((5, 5), int), np.zeros((5, 6), int))
    with pytest.raises(ValueError):
        match_instances(np.zeros((5, 5), float), np.zeros((5, 5), int))
    with pytest.raises(ValueError):
        match_instances(-np.ones((5, 5), int), np.zeros((5, 5), int))
    with pytest.raises(ValueError):
        match_instances(m, m, iou_threshold=0)


def test_huge_label_values():
    t = np.zeros((10, 10), np.uint64)
    t[1:4, 1:4] = 2**40
    t[6:9, 6:9] = 7
    p = np.zeros((10, 10), np.uint32)
    p[1:4, 1:4] = 2**31
    p[6:9, 6:9] = 1
    r = match_instances(t, p)
    assert r["f1"] == 1.0
    assert sorted(map(tuple, r["pairs"].tolist())) == [(7, 1), (2**40, 2**31)]


def random_labels(n, size, seed=0):
    """``n`` random overlapping squares (later over earlier) on a ``size``² image."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.int32)
    s = rng.integers(4, 14, n)
    y = rng.integers(0, size - 14, n)
    x = rng.integers(0, size - 14, n)
    for i in range(n):
        lab[y[i] : y[i] + s[i], x[i] : x[i] + s[i]] = i + 1
    return lab


def test_2000_objects_against_a_relabelled_copy_is_fast_and_perfect():
    lab = random_labels(2000, 1024)
    rng = np.random.default_rng(1)
    perm = np.concatenate([[0], rng.permutation(lab.max()) + 1]).astype(np.int32)
    other = perm[lab]
    n = len(np.unique(lab)) - 1
    match_instances(lab[:64, :64], other[:64, :64])  # warm-up
    t0 = time.perf_counter()
    r = match_instances(lab, other)
    dt = time.perf_counter() - t0
    assert r["tp"] == n and r["f1"] == 1.0
    assert dt < 1.0, f"matching 2000 objects took {dt:.2f} s"


def test_iou_sweep():
    shape = (50, 50)
    t = labels_of(shape, [square(shape, 10, 10, 10)])
    p = labels_of(shape, [square(shape, 10, 12, 10)])  # IoU 2/3
    r = match_iou_sweep(t, p)
    assert r["thresholds"] == list(DEFAULT_IOU_THRESHOLDS)
    assert r["f1"] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert r["mean_f1"] == pytest.approx(0.4)
    assert len(r["results"]) == 10 and r["results"][0]["iou_threshold"] == 0.5


def test_detection_scores_formula():
    s = detection_scores(3, 4, 6)
    assert (s["fp"], s["fn"]) == (3, 1)
    assert s["precision"] == 0.5 and s["recall"] == 0.75 and s["f1"] == pytest.approx(0.6)


# ------------------------------------------------------------------ centroids


def test_instance_centroids_use_pixel_corner_coordinates():
    lab = np.zeros((10, 10), np.int32)
    lab[2:4, 2:4] = 5  # pixels 2..3 -> centres 2.5, 3.5 -> centroid 3.0
    lab[7, 1] = 9
    vals, cent = instance_centroids(lab)
    assert vals.tolist() == [5, 9]
    assert np.allclose(cent, [[3.0, 3.0], [7.5, 1.5]])


def test_centroid_in_box_two_in_one_box_and_missed_box():
    # box 0 holds two centroids, box 1 holds none
    boxes = np.array([[10, 10, 20, 20], [40, 40, 50, 50]], float)
    cents = np.array([[15.0, 15.0], [11.0, 19.0], [80.0, 80.0]])  # (y, x)
    r = centroid_in_box(cents, boxes)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert r["pairs"].tolist() == [[0, 0]]  # the centroid nearest the box centre wins
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == 0.5


def test_centroid_in_box_assignment_is_optimal_not_greedy():
    # overlapping boxes: centroid A is in both boxes (nearest to box 0's centre), B only in box 0
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], float)
    cents = np.array([[5.0, 5.5], [5.0, 1.0]])  # A at x=5.5, B at x=1
    r = centroid_in_box(cents, boxes)
    assert r["tp"] == 2
    assert sorted(map(tuple, r["pairs"].tolist())) == [(0, 1), (1, 0)]


def test_centroid_in_box_from_label_image():
    shape = (64, 64)
    lab = labels_of(shape, [square(shape, 10, 10, 6), square(shape, 30, 30, 8), square(shape, 50, 5, 4)])
    boxes = np.array([[10, 10, 16, 16], [30, 30, 38, 38], [40, 40, 60, 60]], float)  # x0,y0,x1,y1
    r = centroid_in_box(lab, boxes)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["centroids"].shape == (3, 2)


def test_centroid_in_box_region_and_border_filtering():
    boxes = np.array([[10, 10, 20, 20], [70, 70, 80, 80], [45, 45, 55, 55]], float)
    cents = np.array([[15.0, 15.0], [75.0, 75.0], [30.0, 30.0], [90.0, 5.0]])
    full = centroid_in_box(cents, boxes)
    assert (full["tp"], full["fp"], full["fn"]) == (2, 2, 1)
    # region (y0, x0, y1, x1) = the top-left 40x40: box 0 + centroid 0 -> perfect
    r = centroid_in_box(cents, boxes, region=(0, 0, 40, 40))
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)  # centroid (30, 30) is an unmatched FP inside
    r = centroid_in_box(cents, boxes, region=(0, 0, 25, 25))
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (1, 0, 0, 1.0)
    # border exclusion needs the image size with centroid arrays
    with pytest.raises(ValueError):
        centroid_in_box(cents, boxes, exclude_border_px=8)
    r = centroid_in_box(cents, boxes, exclude_border_px=8, image_shape=(100, 100))
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)  # (90, 5) is in the border strip


def test_centroid_in_box_region_counts_boxes_by_centre():
    # a box straddling the region edge with its centre inside still counts; its
    # prediction's centroid (outside the region) does not make it a FN
    boxes = np.array([[8, 8, 16, 16]], float)  # centre (12, 12)
    cents = np.array([[15.0, 15.0]])
    r = centroid_in_box(cents, boxes, region=(0, 0, 14, 14))
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    # the other way round: box outside, matched centroid inside -> ignored
    r = centroid_in_box(cents, boxes, region=(14, 14, 30, 30))
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (0, 0, 0, 1.0)


def test_centroid_in_box_empty():
    r = centroid_in_box(np.zeros((0, 2)), np.zeros((0, 4)))
    assert (r["tp"], r["f1"]) == (0, 1.0)
    r = centroid_in_box(np.zeros((10, 10), np.int32), np.array([[1, 1, 4, 4]]))
    assert (r["fn"], r["f1"]) == (1, 0.0)
    r = centroid_in_box(np.array([[2.0, 2.0]]), np.zeros((0, 4)))
    assert (r["fp"], r["precision"], r["f1"]) == (1, 0.0, 0.0)
    with pytest.raises(ValueError):
        centroid_in_box(np.zeros((3, 3)), np.zeros((1, 4)))


def test_centroid_in_box_many_objects_fast():
    rng = np.random.default_rng(0)
    n = 20000
    cy, cx = rng.uniform(0, 4000, n), rng.uniform(0, 4000, n)
    boxes = np.stack([cx - 3, cy - 3, cx + 3, cy + 3], axis=1)
    cents = np.stack([cy + 0.5, cx - 0.5], axis=1)
    t0 = time.perf_counter()
    r = centroid_in_box(cents, boxes)
    assert time.perf_counter() - t0 < 2.0
    assert r["recall"] > 0.99 and r["tp"] <= n


def test_centroid_in_contour():
    shape = (60, 60)
    t = labels_of(shape, [disk(shape, 15, 15, 8), disk(shape, 40, 40, 8)])
    # preds: two fragments inside particle 1, one centroid in the background, none in 2
    p = np.zeros(shape, np.int32)
    p[12:18, 12:18] = 1  # centroid at (15, 15): nearest to particle 1's centre
    p[9:11, 15:17] = 2  # centroid (10, 16): also inside particle 1 -> FP
    p[50:54, 5:9] = 3  # background -> FP
    r = centroid_in_contour(t, p)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert r["pairs"].tolist() == [[1, 0]]
    assert centroid_in_contour(t, t)["f1"] == 1.0
    # centroid arrays work too, region counts by centroid
    r = centroid_in_contour(t, np.array([[15.2, 15.2], [40.0, 40.0]]), region=(0, 0, 30, 30))
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    e = centroid_in_contour(np.zeros(shape, np.int32), np.zeros(shape, np.int32))
    assert e["f1"] == 1.0


def test_semantic_scores():
    shape = (50, 50)
    a = square(shape, 10, 10, 10)
    b = square(shape, 10, 15, 10)  # overlap 50 px
    s = semantic_scores(a, b)
    assert s["dice"] == pytest.approx(100 / 200) and s["iou"] == pytest.approx(50 / 150)
    assert semantic_scores(a, a) == {"dice": 1.0, "iou": 1.0}
    assert semantic_scores(np.zeros(shape), np.zeros(shape)) == {"dice": 1.0, "iou": 1.0}
    assert semantic_scores(a, np.zeros(shape)) == {"dice": 0.0, "iou": 0.0}
    # label images count as foreground masks
    assert semantic_scores(a.astype(int) * 7, a.astype(int) * 3)["dice"] == 1.0


# ------------------------------------------------------------------ evaluate_labels / sets / files

SHAPE = (120, 260)
CENTRES = [(25 + 60 * (k // 5), 25 + 50 * (k % 5)) for k in range(10)]  # 2 rows of 5 disks, r = 8


def _scene():
    """Truth: 10 disks. Prediction: disks 0-7 exact, disk 8 shifted 5 px (IoU ~0.44, centroid
    still inside), disk 9 missed, 2 false blobs far from any particle."""
    truth = labels_of(SHAPE, [disk(SHAPE, cy, cx, 8) for cy, cx in CENTRES])
    masks = [disk(SHAPE, cy, cx, 8) for cy, cx in CENTRES[:8]]
    cy, cx = CENTRES[8]
    masks.append(disk(SHAPE, cy, cx + 5, 8))
    masks += [disk(SHAPE, 55, 12, 4), square(SHAPE, 50, 240, 6)]
    pred = labels_of(SHAPE, masks, values=[5 * k + 7 for k in range(len(masks))])
    return truth, pred


def test_evaluate_labels_known_geometry():
    truth, pred = _scene()
    a, b = disk(SHAPE, 40, 40, 8), disk(SHAPE, 40, 45, 8)
    r = evaluate_labels(truth, pred, 0.5, pixel_size_nm=2.0)
    json.dumps(r)  # JSON-friendly
    at = r["at_iou"]
    assert (at["tp"], at["fp"], at["fn"], at["n_truth"], at["n_pred"]) == (8, 3, 2, 10, 11)
    assert at["precision"] == pytest.approx(8 / 11) and at["recall"] == pytest.approx(0.8)
    assert at["f1"] == pytest.approx(16 / 21) and at["mean_matched_iou"] == 1.0
    # IoU of the shifted disk is < 0.5: a threshold below it matches it too
    shifted_iou = (disk(SHAPE, 40, 40, 8) & disk(SHAPE, 40, 45, 8)).sum() / (disk(SHAPE, 40, 40, 8) | disk(SHAPE, 40, 45, 8)).sum()
    assert 0.35 < shifted_iou < 0.5
    assert evaluate_labels(truth, pred, 0.35)["at_iou"]["tp"] == 9
    sw = r["iou_sweep"]
    assert sw["thresholds"][0] == 0.5 and sw["thresholds"][-1] == 0.95 and sw["tp"] == [8] * 10
    assert sw["f1"] == pytest.approx([16 / 21] * 10) and sw["mean_f1"] == pytest.approx(16 / 21)
    c = r["centroid_in_contour"]  # the shifted disk's centroid is inside its true particle
    assert (c["tp"], c["fp"], c["fn"]) == (9, 2, 1)
    se = r["semantic"]
    t, p = truth != 0, pred != 0
    assert (se["tp_px"], se["truth_px"], se["pred_px"]) == ((t & p).sum(), t.sum(), p.sum())
    assert se["dice"] == pytest.approx(2 * (t & p).sum() / (t.sum() + p.sum()))
    assert se["iou"] == pytest.approx((t & p).sum() / (t | p).sum())
    sz = r["size"]
    assert (sz["n_truth"], sz["n_pred"], sz["count_error"]) == (10, 11, 1)
    assert sz["count_relative_error"] == pytest.approx(0.1)
    ecd = 2 * np.sqrt(a.sum() / np.pi)  # every true disk has the same pixel count
    assert sz["median_ecd_truth_px"] == pytest.approx(ecd) and sz["median_ecd_truth_nm"] == pytest.approx(2 * ecd)
    assert sz["unit"] == "nm" and b.sum() == a.sum()


def test_size_scores_ks_and_median_ecd():
    areas = [50, 80, 120, 200, 310]
    s = size_scores(areas, areas)
    assert s["ks_statistic"] == 0.0 and s["ks_pvalue"] == pytest.approx(1.0)
    assert s["median_ecd_relative_error"] == 0.0 and s["count_error"] == 0
    # areas x 4 -> diameters x 2 -> +100 %
    s = size_scores(areas, [4 * a for a in areas], pixel_size_nm=0.5)
    assert s["median_ecd_relative_error"] == pytest.approx(1.0)
    assert s["median_ecd_truth_nm"] == pytest.approx(0.5 * 2 * np.sqrt(120 / np.pi))
    assert s["ks_statistic"] > 0.5
    e = size_scores([], [])
    assert e["count_error"] == 0 and e["count_relative_error"] is None
    assert e["median_ecd_truth_px"] is None and e["ks_statistic"] is None and e["median_ecd_relative_error"] is None
    e = size_scores([], [10.0])
    assert e["count_error"] == 1 and e["count_relative_error"] is None and e["median_ecd_pred_px"] > 0
    with pytest.raises(ValueError):
        size_scores([-1], [1])


def test_median_ecd_error_of_scaled_disks_by_pixel_count():
    shape = (200, 200)
    radii = [5, 6, 7, 8, 9]
    truth = labels_of(shape, [disk(shape, 30 + 35 * k, 40, r) for k, r in enumerate(radii)])
    pred = labels_of(shape, [disk(shape, 30 + 35 * k, 140, 1.5 * r) for k, r in enumerate(radii)])
    r = evaluate_labels(truth, pred)["size"]
    t_med = np.median([2 * np.sqrt(disk(shape, 50, 50, r).sum() / np.pi) for r in radii])
    p_med = np.median([2 * np.sqrt(disk(shape, 50, 50, 1.5 * r).sum() / np.pi) for r in radii])
    assert r["median_ecd_relative_error"] == pytest.approx((p_med - t_med) / t_med, rel=1e-12)
    assert r["median_ecd_relative_error"] == pytest.approx(0.5, abs=0.05)
    from scipy.stats import ks_2samp

    t_ecd = [2 * np.sqrt(disk(shape, 50, 50, r).sum() / np.pi) for r in radii]
    p_ecd = [2 * np.sqrt(disk(shape, 50, 50, 1.5 * r).sum() / np.pi) for r in radii]
    assert r["ks_statistic"] == pytest.approx(ks_2samp(t_ecd, p_ecd).statistic) and r["ks_statistic"] > 0.5


def test_coco_map_identical_degraded_and_many_objects():
    truth, pred = _scene()
    r = coco_map([truth, truth], [truth.copy(), truth.copy()])
    assert r["ap"] == r["ap50"] == r["ap75"] == r["ar"] == 1.0
    assert r["n_truth"] == r["n_pred"] == 20 and r["max_dets"] == 100
    assert r["score_source"].startswith("none")
    d = coco_map([truth], [pred])
    assert d["ap"] < 1.0 and d["ap50"] < 1.0 and 0 < d["ar"] < 1.0
    # scores: the false blobs ranked last give a better AP than with constant scores
    sc = {v: (0.1 if v in (5 * 9 + 7, 5 * 10 + 7) else 0.9) for v in np.unique(pred) if v}
    s = coco_map([truth], [pred], scores=[sc])
    assert s["score_source"] == "predictions" and s["ap50"] >= d["ap50"]
    # more than 100 objects in one image are not truncated
    big = np.zeros((200, 200), np.int32)
    for k in range(150):
        y, x = divmod(k, 15)
        big[y * 13 + 2 : y * 13 + 10, x * 13 + 2 : x * 13 + 10] = k + 1
    m = coco_map([big], [big])
    assert m["max_dets"] == 150 and m["ap"] == 1.0 and m["ar"] == 1.0
    assert coco_map([truth], [np.zeros_like(truth)])["ap"] == 0.0
    assert coco_map([np.zeros_like(truth)], [truth])["ap"] is None


def test_crops_restrict_counting():
    from napari_nanodefect.core.annotations import AnnotationSet, Crop

    truth, pred = _scene()
    # crop: the left 2 columns of disks (x < 100): truth disks 0, 1, 5, 6; FP blob at x 12
    crop = (0, 0, 100, 120)  # x0, y0, x1, y1
    r = evaluate_labels(truth, pred, crops=[crop])
    at = r["at_iou"]
    assert (at["tp"], at["fp"], at["fn"]) == (4, 1, 0)
    assert r["size"]["n_truth"] == 4 and r["size"]["n_pred"] == 5 and r["crops"] == 1
    assert r["centroid_in_contour"]["tp"] == 4
    assert r["semantic"]["pred_px"] == int(((pred != 0)[:, :100]).sum())
    # a prediction matched to a truth inside the crop counts even when its centroid is out
    t = labels_of(SHAPE, [disk(SHAPE, 40, 96, 8)])
    p = labels_of(SHAPE, [disk(SHAPE, 40, 101, 8)])
    q = evaluate_labels(t, p, 0.3, crops=[crop])["at_iou"]
    assert (q["tp"], q["fp"], q["fn"]) == (1, 0, 0)
    # the same through annotation sets (truth crops), with a region mask as well
    ts = AnnotationSet(image_path="a.png", image_height=SHAPE[0], image_width=SHAPE[1], crops=[Crop(*crop)])
    ts.extra["nanodefect_evaluate_labels"] = truth
    ps = AnnotationSet(image_path="a_labels.tif", image_height=SHAPE[0], image_width=SHAPE[1])
    ps.extra["nanodefect_evaluate_labels"] = pred
    res = evaluate_sets([ts], [ps])
    assert res["pooled"]["at_iou"]["tp"] == 4 and res["pooled"]["at_iou"]["fp"] == 1
    assert res["pooled"]["coco"]["n_truth"] == 4 and res["pooled"]["coco"]["n_pred"] == 5
    mask = np.zeros(SHAPE, bool)
    mask[:, :100] = True
    assert evaluate_labels(truth, pred, region_mask=mask)["at_iou"] == at


def test_evaluate_sets_pairs_by_name_and_pools():
    from napari_nanodefect.core.annotations import AnnotationSet, ObjectAnnotation

    truth, pred = _scene()

    def aset(name, lab, **kw):
        s = AnnotationSet(image_path=name, image_height=SHAPE[0], image_width=SHAPE[1], **kw)
        s.extra["nanodefect_evaluate_labels"] = lab
        return s

    t_sets = [aset("A.png", truth, pixel_size_nm=1.5), aset("b.png", truth), aset("lonely.png", truth)]
    p_sets = [aset("b_labels.tif", truth), aset("a.tif", pred), aset("other.png", pred)]
    res = evaluate_sets(t_sets, p_sets)
    json.dumps(res)
    assert [r["name"] for r in res["images"]] == ["A", "b"]
    assert res["unmatched_truth"] == ["lonely"] and res["unmatched_pred"] == ["other"]
    po = res["pooled"]
    assert (po["at_iou"]["tp"], po["at_iou"]["fp"], po["at_iou"]["fn"]) == (18, 3, 2)
    assert po["centroid_in_contour"]["tp"] == 19
    assert po["size"]["n_truth"] == 20 and po["size"]["unit"] == "px"  # one image has no pixel size
    assert res["images"][0]["size"]["unit"] == "nm"
    assert 0 < po["coco"]["ap"] < 1
    text = format_evaluation(res)
    assert "pooled" in text and "lonely" in text and "other" in text and "scored 1.0" in text
    # objects are rasterised when no label image is attached; their scores are used
    objs = [ObjectAnnotation.from_circle("p", 30, 30, 8, score=0.9), ObjectAnnotation.from_circle("p", 80, 30, 8, score=0.2)]
    t2 = AnnotationSet(image_path="c.png", image_height=60, image_width=120, objects=objs[:1])
    p2 = AnnotationSet(image_path="c.png", image_height=60, image_width=120, objects=objs)
    r2 = evaluate_sets([t2], [p2])
    assert r2["pooled"]["at_iou"]["tp"] == 1 and r2["pooled"]["at_iou"]["fp"] == 1
    assert r2["pooled"]["coco"]["score_source"] == "predictions" and r2["pooled"]["coco"]["ap"] == pytest.approx(1.0)
    bad = AnnotationSet(image_path="c.png", image_height=61, image_width=120)
    from napari_nanodefect.core.errors import NanodefectError

    with pytest.raises(NanodefectError, match="61x120"):
        evaluate_sets([t2], [bad])


def test_cli_evaluate_end_to_end(tmp_path, capsys):
    from napari_nanodefect.cli import main
    from napari_nanodefect.core.annotations import (
        AnnotationSet,
        ObjectAnnotation,
        write_label_tiff,
        write_labelme,
    )

    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    # pixel-corner centres: disk(..., cy, cx) has its centre at (cy + 0.5, cx + 0.5)
    objs = [ObjectAnnotation.from_circle("particle", cx + 0.5, cy + 0.5, 8) for cy, cx in CENTRES]
    write_labelme(AnnotationSet(image_path="img1.png", image_height=SHAPE[0], image_width=SHAPE[1], objects=objs,
                                pixel_size_nm=2.0), truth_dir / "img1.json", embed_image=False)
    _, pred = _scene()
    write_label_tiff(pred_dir / "img1_labels.tif", pred)
    assert main(["evaluate", "--truth", str(truth_dir), "--pred", str(pred_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    at = res["pooled"]["at_iou"]
    assert (at["tp"], at["fp"], at["fn"]) == (8, 3, 2)
    assert res["pooled"]["centroid_in_contour"]["tp"] == 9
    assert res["images"][0]["name"] == "img1" and res["pooled"]["size"]["unit"] == "nm"
    assert res["pooled"]["coco"]["ap50"] < 1 and res["unmatched_truth"] == res["unmatched_pred"] == []
    # single files, text output, another threshold
    assert main(["evaluate", "--truth", str(truth_dir / "img1.json"), "--pred", str(pred_dir / "img1_labels.tif"),
                 "--iou", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "IoU >= 0.30" in out and "img1" in out
    # an empty prediction is scored, not refused
    write_label_tiff(tmp_path / "img1_labels.tif", np.zeros(SHAPE, np.uint16))
    assert main(["evaluate", "--truth", str(truth_dir), "--pred", str(tmp_path / "img1_labels.tif"), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)["pooled"]
    assert e["at_iou"]["fn"] == 10 and e["at_iou"]["recall"] == 0.0 and e["coco"]["ap"] == 0.0
    # names that do not match, sizes that differ
    write_label_tiff(tmp_path / "other_labels.tif", pred)
    assert main(["evaluate", "--truth", str(truth_dir), "--pred", str(tmp_path / "other_labels.tif")]) == 2
    err = capsys.readouterr().err
    assert "img1" in err and "other" in err
    small = tmp_path / "small"
    small.mkdir()
    write_label_tiff(small / "img1_labels.tif", pred[:100])
    assert main(["evaluate", "--truth", str(truth_dir), "--pred", str(small)]) == 2
    assert "100x260" in capsys.readouterr().err
    assert main(["evaluate", "--truth", str(truth_dir), "--pred", str(small), "--iou", "1.5"]) == 2
    from napari_nanodefect.core.errors import NanodefectError

    with pytest.raises(NanodefectError, match="no image of the prediction"):
        evaluate_files(truth_dir / "img1.json", tmp_path / "other_labels.tif")


def test_without_pycocotools_coco_map_says_how_to_install(monkeypatch):
    import sys

    from napari_nanodefect.core.errors import NanodefectError

    truth, pred = _scene()
    for name in ("pycocotools", "pycocotools.mask", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails
    with pytest.raises(NanodefectError, match="pip install pycocotools"):
        coco_map([truth], [pred])
    from napari_nanodefect.core.annotations import AnnotationSet

    ts = AnnotationSet(image_path="a.png", extra={"nanodefect_evaluate_labels": truth})
    ps = AnnotationSet(image_path="a.png", extra={"nanodefect_evaluate_labels": pred})
    res = evaluate_sets([ts], [ps])  # the other scores still stand
    assert res["pooled"]["at_iou"]["tp"] == 8 and "pip install" in res["pooled"]["coco"]["error"]
    assert "not computed" in format_evaluation(res)
