"""Scores with known geometry: IoU matching, centroid-in-box, centroid-in-contour, Dice/IoU."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_nanodefect.core.evaluate import (
    DEFAULT_IOU_THRESHOLDS,
    centroid_in_box,
    centroid_in_contour,
    detection_scores,
    instance_centroids,
    match_instances,
    match_iou_sweep,
    semantic_scores,
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
