"""Line-defect skeleton lengths (core.measure.skeleton) against analytic shapes.

Every test shape is rasterised here from its analytic centre curve (a pixel is in when
its centre lies within w/2 of the curve), never with the code under test, and measured
lengths are compared with the analytic length of that curve:

* flat-ended strokes of centre length L -> L (the measured length runs tip to tip);
* round-capped strokes (distance to the curve <= w/2) -> L + w;
* rings -> 2 pi r of the centre circle.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.spatial import cKDTree

from napari_nanodefect.cli import main
from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.measure.skeleton import (
    COLUMNS,
    measure_skeleton_file,
    skeleton_table,
)

W = 5.0  # stroke width (px)


# ----------------------------------------------------------------------------- shapes


def _grid(shape):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return yy.astype(float), xx.astype(float)


def stroke(shape, p0, p1, w=W, caps="flat"):
    """Pixels whose centre is within w/2 of the segment p0-p1 ((y, x) px); flat caps
    also require the centre to project inside the segment."""
    yy, xx = _grid(shape)
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.hypot(*(p1 - p0)))
    u = (p1 - p0) / length
    ry, rx = yy - p0[0], xx - p0[1]
    t = ry * u[0] + rx * u[1]
    if caps == "flat":
        return (t >= 0) & (t <= length) & (np.abs(rx * u[0] - ry * u[1]) <= w / 2)
    tc = np.clip(t, 0, length)
    return np.hypot(ry - tc * u[0], rx - tc * u[1]) <= w / 2


def ring(shape, centre, r, w=W):
    yy, xx = _grid(shape)
    return np.abs(np.hypot(yy - centre[0], xx - centre[1]) - r) <= w / 2


def sine(shape, y0, x0, amp, lam, periods, w=W, caps="round"):
    """A sine curve y = y0 + amp sin(2 pi (x - x0) / lam), drawn from dense samples.

    Returns (mask, analytic arc length by numerical integration)."""
    x = np.arange(x0, x0 + periods * lam + 1e-9, 0.02)
    pts = np.c_[y0 + amp * np.sin(2 * np.pi * (x - x0) / lam), x]
    yy, xx = _grid(shape)
    d, i = cKDTree(pts).query(np.c_[yy.ravel(), xx.ravel()], distance_upper_bound=w)
    inside = d <= w / 2
    if caps == "flat":  # nearest curve point not an end point: cut square to the curve
        inside &= (i > 0) & (i < len(pts) - 1)
    k = 2 * np.pi / lam
    arc, _ = integrate.quad(lambda s: math.sqrt(1 + (amp * k * math.cos(k * s)) ** 2), 0, periods * lam, limit=200)
    return inside.reshape(shape), arc


def polar_star(angles_deg, arms, centre=(100.3, 100.6), shape=(201, 201), w=W):
    """Flat-ended strokes from a common centre point (one per angle)."""
    m = np.zeros(shape, bool)
    c = np.asarray(centre)
    for a, arm in zip(angles_deg, arms):
        a = math.radians(a)
        m |= stroke(shape, c, c + arm * np.array([math.sin(a), math.cos(a)]), w)
    return m


def line_at(angle_deg, length, caps="flat", offset=(0.3, 0.6), w=W):
    a = math.radians(angle_deg)
    d = np.array([math.sin(a), math.cos(a)])
    p0 = np.array([15.0, 15.0]) + offset
    p1 = p0 + length * d
    shape = (int(p1[0]) + 16, int(p1[1]) + 16)
    return stroke(shape, p0, p1, w, caps)


def only_row(mask, **kw):
    table, _ = skeleton_table(mask, **kw)
    assert len(table) == 1, table
    return table.iloc[0]


def rel_err(measured, expected):
    return abs(measured - expected) / expected


# ----------------------------------------------------------------------------- lengths


@pytest.mark.parametrize("caps", ["flat", "round"])
def test_straight_lines_every_7_5_degrees_within_2_percent(caps):
    worst = 0.0
    rng = np.random.default_rng(7)
    for angle in np.arange(0.0, 90.01, 7.5):
        for length in (100.0, 200.0, 300.0):
            if caps == "round" and length == 300.0:
                continue  # keep the test fast; flat ends cover 300 px
            row = only_row(line_at(angle, length, caps, offset=tuple(rng.uniform(0, 1, 2))))
            expected = length + (W if caps == "round" else 0.0)
            err = rel_err(row.length_px, expected)
            worst = max(worst, err)
            assert err < 0.02, (angle, length, row.length_px, expected)
            assert (row.branches, row.junctions, row.end_points) == (1, 0, 2), (angle, length)
            if caps == "flat":  # area / length of a flat-ended stroke is its width
                assert abs(row.mean_width_nm - W) < 0.5, (angle, length, row.mean_width_nm)
    assert worst < 0.012  # measured worst: 0.7 % (flat), 0.5 % (round)


def test_pixel_step_length_is_8_percent_long_at_slope_1_2():
    """Without smoothing, the pixel chain of a line at slope 1:2 is ~8 % long; the
    sub-pixel (smoothed) length is within 1 %. skan's own branch distance (pixel steps)
    is as biased."""
    from skan import Skeleton
    from skimage.morphology import skeletonize

    angle = math.degrees(math.atan(0.5))
    mask = line_at(angle, 200.0)
    naive = only_row(mask, smooth_sigma_px=0).length_px
    smooth = only_row(mask).length_px
    assert rel_err(naive, 200.0) > 0.05
    assert rel_err(smooth, 200.0) < 0.01
    skan_px = float(Skeleton(skeletonize(mask)).path_lengths().sum())
    # skan's chain is shorter than the line (it stops short of both tips) and still long
    assert skan_px > 1.02 * (200.0 - W)


@pytest.mark.parametrize("r", [30.0, 45.0, 70.0, 100.0])
def test_circles_within_2_percent(r):
    c = (r + 9.4, r + 10.7)
    row = only_row(ring((int(2 * r + 22), int(2 * r + 22)), c, r))
    assert rel_err(row.length_px, 2 * math.pi * r) < 0.02
    assert (row.branches, row.junctions, row.end_points) == (1, 0, 0)
    assert abs(row.mean_width_nm - W) < 0.5


@pytest.mark.parametrize("lam,periods,caps", [(100.0, 2, "round"), (150.0, 1, "round"), (200.0, 1, "round"),
                                               (100.0, 1, "flat"), (200.0, 1, "flat")])
def test_sine_curves_within_2_percent(lam, periods, caps):
    mask, arc = sine((72, int(lam * periods) + 32), 35.3, 15.6, 20.0, lam, periods, caps=caps)
    row = only_row(mask)
    expected = arc + (W if caps == "round" else 0.0)
    assert rel_err(row.length_px, expected) < 0.02, (row.length_px, expected)
    assert (row.branches, row.junctions, row.end_points) == (1, 0, 2)


# ----------------------------------------------------------------------------- topology


@pytest.mark.parametrize("rotation", [0.0, 17.0, 52.0])
def test_plus_and_y_branches_junctions_end_points(rotation):
    plus = only_row(polar_star([rotation + a for a in (0, 90, 180, 270)], [70] * 4))
    assert (plus.branches, plus.junctions, plus.end_points) == (4, 1, 4)
    assert rel_err(plus.length_px, 4 * 70.0) < 0.02
    y = only_row(polar_star([rotation + a for a in (90, 210, 330)], [70] * 3))
    assert (y.branches, y.junctions, y.end_points) == (3, 1, 3)
    assert rel_err(y.length_px, 3 * 70.0) < 0.02


def test_pruning_removes_short_spur_and_keeps_long_branches():
    shape = (100, 250)
    line = stroke(shape, (50.4, 20.2), (50.4, 220.2))
    spur = stroke(shape, (50.4, 120.2), (65.4, 120.2))  # 15 px from the centre line
    ps = 2.0
    full = only_row(line | spur, pixel_size_nm=ps)
    assert (full.branches, full.junctions, full.end_points) == (3, 1, 3)
    assert full.length_nm == pytest.approx((200 + 15) * ps, rel=0.02)
    kept = only_row(line | spur, pixel_size_nm=ps, prune_nm=10 * ps)  # spur (15 px) is longer
    assert (kept.branches, kept.junctions, kept.end_points) == (3, 1, 3)
    pruned = only_row(line | spur, pixel_size_nm=ps, prune_nm=25 * ps)
    assert (pruned.branches, pruned.junctions, pruned.end_points) == (1, 0, 2)
    assert pruned.length_nm == pytest.approx(200 * ps, rel=0.02)
    # "+" with one short arm: the short arm goes, the three long ones stay whole
    star = polar_star([0, 90, 180, 270], [70, 70, 70, 20])
    assert only_row(star).length_px == pytest.approx(230, rel=0.02)
    three = only_row(star, prune_nm=30)
    assert (three.branches, three.junctions, three.end_points) == (3, 1, 3)
    assert three.length_px == pytest.approx(210, rel=0.02)
    # pruning harder than every branch never deletes the defect: two arms remain
    two = only_row(polar_star([0, 90, 180, 270], [70] * 4), prune_nm=100)
    assert (two.branches, two.junctions, two.end_points) == (1, 0, 2)
    assert two.length_px == pytest.approx(140, rel=0.02)


# ----------------------------------------------------------------------------- units, classes


def test_pixel_size_scaling_and_summary():
    mask = line_at(30.0, 150.0)
    t1, _ = skeleton_table(mask, pixel_size_nm=1.0)
    t2, s2 = skeleton_table(mask, pixel_size_nm=0.37)
    assert t2.length_nm[0] == pytest.approx(t1.length_px[0] * 0.37, rel=1e-12)
    assert t2.area_nm2[0] == pytest.approx(t1.area_px[0] * 0.37**2, rel=1e-12)
    assert t2.mean_width_nm[0] == pytest.approx(t1.mean_width_nm[0] * 0.37, rel=1e-12)
    area_um2 = mask.size * 0.37**2 / 1e6
    assert s2["analysed_area_um2"] == pytest.approx(area_um2)
    assert s2["length_density_nm_per_um2"] == pytest.approx(t2.length_nm[0] / area_um2)
    assert s2["pixel_size_nm"] == 0.37 and s2["prune_nm"] is None
    # a valid area (e.g. without an info bar) changes the density only
    _, s3 = skeleton_table(mask, pixel_size_nm=0.37, valid_area_px=mask.size / 2)
    assert s3["length_density_nm_per_um2"] == pytest.approx(2 * s2["length_density_nm_per_um2"])
    json.dumps(s2, allow_nan=False)  # plain Python types
    assert all(type(s2[k]) is float for k in ("total_length_nm", "length_density_nm_per_um2", "analysed_area_um2"))
    assert type(s2["n_defects"]) is int
    assert list(t2.columns) == COLUMNS


def test_multiclass_label_image_and_channel_stack():
    shape = (120, 220)
    a = stroke(shape, (20.3, 10.2), (20.3, 210.2))  # 200 px
    b = stroke(shape, (60.3, 10.2), (60.3, 110.2))  # 100 px
    c = ring(shape, (85.0, 160.0), 25.0)  # 2 pi 25
    labels = np.zeros(shape, np.uint8)
    labels[a] = 1
    labels[b | c] = 2
    t, s = skeleton_table(labels, class_names=["crack", "dislocation"])
    assert list(t["class"]) == ["crack", "dislocation", "dislocation"]
    assert list(t["defect_id"]) == [1, 2, 3]
    assert s["n_defects"] == 3
    assert s["per_class"]["crack"]["n_defects"] == 1
    assert s["per_class"]["crack"]["total_length_nm"] == pytest.approx(200, rel=0.02)
    assert s["per_class"]["dislocation"]["total_length_nm"] == pytest.approx(100 + 2 * math.pi * 25, rel=0.02)
    assert s["total_length_nm"] == pytest.approx(sum(v["total_length_nm"] for v in s["per_class"].values()))
    # the same as one channel per class
    stack = np.stack([labels == 1, labels == 2]).astype(np.uint8)
    t2, _ = skeleton_table(stack, class_names=["crack", "dislocation"])
    pd.testing.assert_frame_equal(t, t2)
    # no names: class_<k>
    _, s3 = skeleton_table(labels)
    assert sorted(s3["per_class"]) == ["class_1", "class_2"]


def test_bad_masks_raise():
    with pytest.raises(ValueError):
        skeleton_table(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(ValueError):
        skeleton_table(np.full((10, 10), 0.5))
    with pytest.raises(ValueError):
        skeleton_table(np.zeros((10, 10), bool), pixel_size_nm=0)


# ----------------------------------------------------------------------------- files, CLI


def test_cli_skeleton_writes_csv(tmp_path, capsys):
    import tifffile

    mask = line_at(26.565, 120.0).astype(np.uint8) * 255
    tif = tmp_path / "mask.tif"
    tifffile.imwrite(tif, mask)  # no pixel size in the file
    out = tmp_path / "out"
    assert main(["skeleton", str(tif), "--pixel-size", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 defects" in printed and str(out / "defects.csv") in printed
    df = pd.read_csv(out / "defects.csv")
    assert list(df.columns) == COLUMNS
    assert len(df) == 1 and df["class"][0] == "defect"
    assert df["length_nm"][0] == pytest.approx(60.0, rel=0.02)
    summary = json.loads((out / "defects_summary.json").read_text())
    assert summary["n_defects"] == 1 and summary["pixel_size_nm"] == 0.5


def test_cli_missing_pixel_size_exits_2(tmp_path, capsys):
    import tifffile

    tif = tmp_path / "nopixel.tif"
    tifffile.imwrite(tif, line_at(0.0, 100.0).astype(np.uint8))
    assert main(["skeleton", str(tif), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nopixel.tif" in err and "pixel size" in err
    assert not (tmp_path / "out" / "defects.csv").exists()


def test_empty_mask_is_zero_defects(tmp_path):
    import tifffile

    tif = tmp_path / "empty.tif"
    tifffile.imwrite(tif, np.zeros((50, 60), np.uint8))
    s = measure_skeleton_file(tif, tmp_path / "out", pixel_size_nm=1.0)
    assert s["n_defects"] == 0 and s["total_length_nm"] == 0.0 and s["length_density_nm_per_um2"] == 0.0
    df = pd.read_csv(s["defects_csv"])
    assert len(df) == 0 and list(df.columns) == COLUMNS
    with open(s["summary_json"], encoding="utf-8") as fh:
        assert json.load(fh)["n_defects"] == 0


def test_pixel_size_and_class_names_from_the_file(tmp_path):
    from napari_nanodefect.core.annotations.labels import write_label_tiff
    from napari_nanodefect.core.io.write import write_tiff

    mask = line_at(45.0, 100.0)
    p = write_tiff(tmp_path / "m.tif", mask.astype(np.uint8), pixel_size_nm=2.0)  # ImageJ scale
    s = measure_skeleton_file(p, tmp_path / "a")
    assert s["pixel_size_nm"] == pytest.approx(2.0)
    assert s["total_length_nm"] == pytest.approx(200.0, rel=0.02)
    s = measure_skeleton_file(p, tmp_path / "b", pixel_size_nm=1.0)  # given wins
    assert s["total_length_nm"] == pytest.approx(100.0, rel=0.02)
    # label TIFF with class names in its JSON description
    lab = mask.astype(np.uint16) * 3
    q = write_label_tiff(tmp_path / "l.tif", lab, classes={3: "crack"}, pixel_size_nm=1.5)
    s = measure_skeleton_file(q, tmp_path / "c")
    assert list(s["per_class"]) == ["crack"] and s["pixel_size_nm"] == pytest.approx(1.5)


def test_bad_mask_file_is_a_clear_error(tmp_path):
    import tifffile

    tif = tmp_path / "float.tif"
    tifffile.imwrite(tif, np.random.default_rng(0).random((20, 20)).astype(np.float32))
    with pytest.raises(NanodefectError, match="float.tif"):
        measure_skeleton_file(tif, tmp_path / "out", pixel_size_nm=1.0)
    with pytest.raises(NanodefectError, match="not found"):
        measure_skeleton_file(tmp_path / "missing.tif", tmp_path / "out", pixel_size_nm=1.0)
