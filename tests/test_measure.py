"""Particle table, population statistics and ``nanodefect measure`` against known geometry."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from napari_nanodefect.cli import main
from napari_nanodefect.core.errors import NanodefectError
from napari_nanodefect.core.measure.particles import ParticleMeasurer, measure_particles
from napari_nanodefect.core.measure.population import summarize, weighted_quantiles


def ellipse(shape, cy, cx, a, b, angle_deg=0.0):
    """Pixels whose centre lies in the ellipse (semi-axes a, b; angle counter-clockwise, y up)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    t = np.radians(angle_deg)
    dx, dy = xx - cx, -(yy - cy)
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def rectangle(shape, cy, cx, length, width, angle_deg=0.0):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    t = np.radians(angle_deg)
    dx, dy = xx - cx, -(yy - cy)
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


# --------------------------------------------------------------------------- single shapes


@pytest.mark.parametrize("r", [4, 6, 10, 20, 50, 100])
def test_disk_perimeter_within_1_percent(r):
    m = ellipse((2 * r + 20, 2 * r + 20), r + 10.3, r + 9.8, r, r)
    t = measure_particles(m.astype(np.int32), 1.0).iloc[0]
    assert abs(t.perimeter_nm / (2 * np.pi * r) - 1) < 0.01
    # the naive pixel-edge count is 4/pi (27 %) too long: make sure we are not doing that
    edges = np.count_nonzero(np.diff(np.pad(m, 1).astype(int), axis=0)) + np.count_nonzero(np.diff(np.pad(m, 1).astype(int), axis=1))
    assert edges / (2 * np.pi * r) > 1.2
    assert t.circularity > 0.95
    assert abs(t.ecd_nm / (2 * r) - 1) < 0.02
    assert abs(t.circle_fit_d_nm / (2 * r) - 1) < 0.02


@pytest.mark.parametrize("angle", [0, 5, 10, 20, 26.57, 30, 45, 60, 80])
def test_rectangle_feret_and_perimeter(angle):
    m = rectangle((400, 400), 200, 200, 200, 80, angle)
    t = measure_particles(m.astype(np.int32), 0.5).iloc[0]
    assert abs(t.perimeter_nm / (560 * 0.5) - 1) < 0.01
    assert abs(t.feret_max_nm / (np.hypot(200, 80) * 0.5) - 1) < 0.01
    assert abs(t.feret_min_nm / (80 * 0.5) - 1) < 0.0125
    assert abs(t.area_nm2 / (200 * 80 * 0.25) - 1) < 0.01
    assert t.solidity > 0.97
    # circularity of a 5:2 rectangle: 4 pi A / P^2
    assert t.circularity == pytest.approx(4 * np.pi * 16000 / 560 ** 2, rel=0.03)


def test_axis_aligned_rectangle_exact():
    m = np.zeros((300, 300), np.int32)
    m[50:150, 40:240] = 7
    t = measure_particles(m, 2.0).iloc[0]
    assert t.label == 7
    assert t.area_px == 20000 and t.area_nm2 == 80000
    assert t.feret_min_nm == pytest.approx(200.0, abs=1e-9)
    assert t.feret_max_nm == pytest.approx(2 * np.hypot(200, 100), rel=0.01)
    assert (t.bbox_y0, t.bbox_x0, t.bbox_y1, t.bbox_x1) == (50, 40, 150, 240)
    assert t.centroid_y_px == pytest.approx(100.0) and t.centroid_x_px == pytest.approx(140.0)
    assert t.centroid_x_nm == pytest.approx(280.0)
    # moments of a w x h rectangle: variance w^2/12 -> "ellipse" axis 4*sqrt(w^2/12)
    assert t.major_axis_nm == pytest.approx(2 * 4 * np.sqrt(200 ** 2 / 12), rel=1e-6)
    assert t.minor_axis_nm == pytest.approx(2 * 4 * np.sqrt(100 ** 2 / 12), rel=1e-6)
    assert t.orientation_deg == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("angle", [0, 17, 30, 45, 60, 90, 135])
def test_ellipse_axes_feret_orientation(angle):
    m = ellipse((300, 300), 150, 150, 100, 40, angle)
    t = measure_particles(m.astype(np.int32), 1.0).iloc[0]
    assert abs(t.feret_max_nm / 200 - 1) < 0.01
    assert abs(t.feret_min_nm / 80 - 1) < 0.01
    assert abs(t.major_axis_nm / 200 - 1) < 0.005
    assert abs(t.minor_axis_nm / 80 - 1) < 0.005
    assert t.aspect_ratio == pytest.approx(2.5, rel=0.01)
    d = (t.orientation_deg - angle + 90) % 180 - 90
    assert abs(d) < 0.2
    dfer = (t.feret_angle_deg - angle + 90) % 180 - 90
    assert abs(dfer) < 2.5  # the width of an ellipse is flat near its maximum


def test_nearest_neighbour_distances():
    m = np.zeros((100, 200), np.int32)
    m[20:60, 20:60] = 1
    m[20:60, 67:100] = 2   # 7 px gap
    m[70:80, 150:160] = 3
    m[70:80, 160:170] = 4  # touching 3
    t = measure_particles(m, 0.5).set_index("label")
    assert t.loc[1, "nn_edge_distance_nm"] == pytest.approx(3.5)
    assert t.loc[1, "nn_distance_nm"] == pytest.approx((83.5 - 40) * 0.5)
    assert t.loc[3, "nn_edge_distance_nm"] == 0.0
    assert t.loc[3, "nn_distance_nm"] == pytest.approx(5.0)


def test_edge_gaps_in_chunks_equal_one_pass(monkeypatch):
    """The edge-to-edge distances are computed in row chunks (memory on huge images): the
    chunks give the same table as one pass, and still the analytic 7-px gap."""
    import napari_nanodefect.core.measure.particles as mp

    rng = np.random.default_rng(3)
    m = np.zeros((300, 300), np.int32)
    for i, (y, x) in enumerate(rng.integers(10, 280, size=(40, 2)), 1):
        m[y : y + 8, x : x + 6] = i
    m[:40, :] = 0
    m[5:25, 5:25] = 41
    m[5:25, 32:50] = 42  # 7 px gap to 41
    full = measure_particles(m, 1.0).set_index("label")
    monkeypatch.setattr(mp, "EDGE_GAP_CHUNK", 3)
    chunked = measure_particles(m, 1.0).set_index("label")
    assert full["nn_edge_distance_nm"].notna().sum() == full.shape[0] > 20
    np.testing.assert_array_equal(chunked["nn_edge_distance_nm"].to_numpy(), full["nn_edge_distance_nm"].to_numpy())
    assert chunked.loc[41, "nn_edge_distance_nm"] == pytest.approx(7.0)


def test_intensity_edge_and_classes():
    m = np.zeros((50, 60), np.int32)
    m[0:5, 10:20] = 1      # touches top
    m[20:30, 20:30] = 2
    img = np.zeros((50, 60))
    img[20:30, 20:30] = np.arange(100).reshape(10, 10)
    t = measure_particles(m, 1.0, image=img, classes=["a", "b"], class_index=np.array([0, 1])).set_index("label")
    assert bool(t.loc[1, "touches_edge"]) and not bool(t.loc[2, "touches_edge"])
    assert t.loc[2, "mean_intensity"] == pytest.approx(49.5) and t.loc[2, "max_intensity"] == 99
    assert list(t["class"]) == ["a", "b"]
    # with an analysed region (e.g. the image minus an info bar) the edge moves
    t2 = measure_particles(m, 1.0, regions=[(0, 0, 30, 60)]).set_index("label")
    assert bool(t2.loc[2, "touches_edge"])


def test_bad_input_clear_errors():
    with pytest.raises(NanodefectError, match="2-D"):
        measure_particles(np.zeros((3, 4, 5), np.int32))
    with pytest.raises(NanodefectError, match="integers"):
        measure_particles(np.full((4, 4), 0.5))
    with pytest.raises(NanodefectError, match="negative"):
        measure_particles(-np.ones((4, 4), np.int32))
    with pytest.raises(NanodefectError, match="shape"):
        measure_particles(np.ones((4, 4), np.int32), image=np.ones((5, 5)))
    empty = measure_particles(np.zeros((20, 20), np.int32), 1.0)
    assert len(empty) == 0 and "ecd_nm" in empty.columns


# --------------------------------------------------------------------------- incremental


def _random_disks(shape=(512, 512), n=150, seed=1):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    for i in range(n):
        r = rng.uniform(3, 9)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        m = ellipse(shape, cy, cx, r, r * rng.uniform(0.7, 1.0), rng.uniform(0, 180))
        lab[m & (lab == 0)] = i + 1
    return lab


def _same_table(a: pd.DataFrame, b: pd.DataFrame):
    a = a.sort_values("label").reset_index(drop=True)
    b = b.sort_values("label").reset_index(drop=True)
    assert list(a["label"]) == list(b["label"])
    for c in a.columns:
        if a[c].dtype.kind in "fc":
            np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-9, atol=1e-9, err_msg=c)
        else:
            assert list(a[c]) == list(b[c]), c


def test_update_matches_full_remeasure():
    lab = _random_disks()
    img = np.random.default_rng(0).normal(size=lab.shape)
    pm = ParticleMeasurer(lab, 0.7, img)
    # grow one particle, erase another, paint a new one, split nothing
    t = pm.table.set_index("label")
    k = int(t.index[10])
    y, x = int(t.loc[k, "centroid_y_px"]), int(t.loc[k, "centroid_x_px"])
    painted = (slice(y - 2, y + 12), slice(x - 2, x + 12))
    overwritten = set(np.unique(lab[painted]).tolist())  # painting over a neighbour changes it too
    lab[painted] = k
    pm.update([k, *overwritten], painted)
    gone = int(t.index[20])
    lab[lab == gone] = 0
    pm.update([gone])
    lab[5:15, 5:15] = 999
    pm.update([999], (slice(5, 15), slice(5, 15)))
    assert len(pm.table) == len(np.unique(lab)) - 1
    assert 999 in set(pm.table['label']) and gone not in set(pm.table['label'])
    _same_table(pm.table, measure_particles(lab, 0.7, img))


# --------------------------------------------------------------------------- population


def test_weighted_quantiles_equal_weights_is_numpy():
    v = np.array([3.0, 1, 2, 10, 7])
    assert weighted_quantiles(v, [0.5]) == [np.median(v)]
    assert weighted_quantiles(v, [0.1, 0.9], np.ones(5)) == list(np.percentile(v, [10, 90]))


def test_summary_known_population():
    # 5 x 4 grid of disks with known radii, none at the edge
    shape = (400, 500)
    lab = np.zeros(shape, np.int32)
    radii = []
    k = 0
    for i in range(4):
        for j in range(5):
            k += 1
            r = 6 + k  # 7..26 px
            lab[ellipse(shape, 50 + 100 * i, 50 + 100 * j, min(r, 40), min(r, 40))] = k
            radii.append(r)
    ps = 0.5
    t = measure_particles(lab, ps)
    s = summarize(t, ps, [(0, 0, *shape)], edge_correction="none")
    ecd = t["ecd_nm"].to_numpy()
    assert s["count"] == 20 and s["count_edge_touching"] == 0
    assert s["d50_nm"] == pytest.approx(np.median(ecd))
    assert s["d10_nm"] == pytest.approx(np.percentile(ecd, 10))
    assert s["mean_nm"] == pytest.approx(ecd.mean())
    assert s["std_nm"] == pytest.approx(ecd.std(ddof=1))
    assert s["sem_nm"] == pytest.approx(ecd.std(ddof=1) / np.sqrt(20))
    area_um2 = shape[0] * shape[1] * ps * ps * 1e-6
    assert s["analysed_area_um2"] == pytest.approx(area_um2)
    assert s["density_per_um2"] == pytest.approx(20 / area_um2)
    assert s["area_fraction"] == pytest.approx(np.count_nonzero(lab) / lab.size)
    # the median ECD is within 0.5 % of the drawn diameters (digitisation only)
    assert s["d50_nm"] == pytest.approx(np.median(2 * np.array(radii)) * ps, rel=0.005)
    fit = s["lognormal"]
    assert fit["mu"] == pytest.approx(np.mean(np.log(ecd)))
    assert fit["sigma"] == pytest.approx(np.std(np.log(ecd)))
    assert 0 <= fit["ks_statistic"] <= 1


def test_miles_lantuejoul_unbiased_density():
    """Many random windows over a big field of disks of two sizes: the corrected density
    matches the true density; the naive count of whole particles is biased low, and the
    plain 'exclude' d50 is biased towards small particles."""
    rng = np.random.default_rng(3)
    H = W = 3000
    lab = np.zeros((H, W), np.int32)
    n = 0
    for cy in range(40, H - 40, 60):
        for cx in range(40, W - 40, 60):
            n += 1
            r = 8 if rng.random() < 0.5 else 25
            y, x = cy + rng.uniform(-5, 5), cx + rng.uniform(-5, 5)
            y0, x0 = int(y) - r - 2, int(x) - r - 2
            sub = ellipse((2 * r + 5, 2 * r + 5), y - y0, x - x0, r, r)
            lab[y0:y0 + sub.shape[0], x0:x0 + sub.shape[1]][sub] = n
    true_density = 1 / 60 ** 2  # per px^2: one centre per 60 x 60 cell
    est, naive, big_ml, big_ex = [], [], [], []
    for _ in range(40):
        y0, x0 = rng.integers(100, H - 500), rng.integers(100, W - 500)
        win = lab[y0:y0 + 300, x0:x0 + 300]
        t = measure_particles(win, 1.0)
        s = summarize(t, 1.0, [(0, 0, 300, 300)])
        est.append(s["count_estimated"] / 90000)
        naive.append(s["count_used"] / 90000)
        interior = t[~t["touches_edge"]]
        w = 90000 / ((300 - (interior.bbox_x1 - interior.bbox_x0)) * (300 - (interior.bbox_y1 - interior.bbox_y0)))
        big_ml.append(float(np.sum(w[interior.ecd_nm > 30])) / float(np.sum(w)))
        big_ex.append(float(np.mean(interior.ecd_nm > 30)))
    assert np.mean(est) == pytest.approx(true_density, rel=0.03)
    assert np.mean(naive) < 0.85 * true_density
    assert np.mean(big_ml) == pytest.approx(0.5, abs=0.04)
    assert np.mean(big_ex) < 0.45


# --------------------------------------------------------------------------- CLI


def test_measure_cli_label_tiff(tmp_path, capsys):
    from napari_nanodefect.core.annotations import write_label_tiff

    lab = np.zeros((200, 300), np.uint16)
    lab[ellipse(lab.shape, 50, 50, 10, 10)] = 1
    lab[ellipse(lab.shape, 120, 200, 20, 20)] = 2
    lab[ellipse(lab.shape, 100, 100, 15, 15)] = 3
    lab[0:6, 250:260] = 4  # at the edge
    write_label_tiff(tmp_path / "img_labels.tif", lab, classes={1: "particle", 2: "particle", 3: "single_site", 4: "particle"},
                     pixel_size_nm=0.25)
    assert main(["measure", str(tmp_path / "img_labels.tif"), "--out", str(tmp_path / "out")]) == 0
    t = pd.read_csv(tmp_path / "out" / "particles.csv")
    assert len(t) == 4 and "ecd_nm" in t.columns
    ecd = t.set_index("label")["ecd_nm"]
    assert ecd[2] == pytest.approx(2 * np.sqrt(np.count_nonzero(lab == 2) / np.pi) * 0.25, rel=1e-5)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["count"] == 4 and s["count_edge_touching"] == 1
    assert s["pixel_size_nm"] == 0.25 and s["pixel_size_source"] == "label file"
    for k in ("d10_nm", "d50_nm", "d90_nm", "density_per_um2"):
        assert s[k] is not None
    assert set(s["per_class"]) == {"particle", "single_site"}
    assert s["per_class"]["single_site"]["count"] == 1
    png = (tmp_path / "out" / "histogram.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    out = capsys.readouterr().out
    assert "4 particles" in out
    # --pixel-size overrides
    assert main(["measure", str(tmp_path / "img_labels.tif"), "--pixel-size", "0.5", "--out", str(tmp_path / "o2")]) == 0
    t2 = pd.read_csv(tmp_path / "o2" / "particles.csv").set_index("label")
    assert t2.loc[2, "ecd_nm"] == pytest.approx(2 * ecd[2], rel=1e-5)


def test_measure_cli_labelme_with_crops_and_image(tmp_path):
    from napari_nanodefect.core.annotations import AnnotationSet, Crop, ObjectAnnotation, write_labelme
    from napari_nanodefect.core.io.write import write_tiff

    img = np.zeros((120, 160), np.uint8)
    write_tiff(tmp_path / "m.tif", img, pixel_size_nm=2.0)
    objs = [ObjectAnnotation.from_circle("particle", 30, 30, 8), ObjectAnnotation.from_circle("particle", 70, 40, 5),
            ObjectAnnotation.from_circle("particle", 130, 90, 6)]  # outside the crop
    aset = AnnotationSet(image_path="m.tif", image_height=120, image_width=160, objects=objs,
                         crops=[Crop(0, 0, 100, 80)])
    write_labelme(aset, tmp_path / "m.json")
    assert main(["measure", str(tmp_path / "m.json"), "--out", str(tmp_path / "out")]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["pixel_size_nm"] == 2.0  # from the referenced image
    assert s["count"] == 2  # the object outside the crop is not counted
    assert s["analysed_area_um2"] == pytest.approx(100 * 80 * 4e-6)


def test_measure_cli_errors(tmp_path, capsys):
    assert main(["measure", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "o")]) == 2
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all")
    assert main(["measure", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.tif" in capsys.readouterr().err
    assert not (tmp_path / "o" / "particles.csv").exists()


# --------------------------------------------------------------------------- real ground truth


@pytest.mark.real
@pytest.mark.parametrize("frame", [1, 96, 172])
def test_real_tem_seg_counts_and_median_ecd(frame, tmp_path):
    """TEM-Seg ground-truth masks (real Au nanoparticles, ~800 per frame): our table, via a
    label TIFF -> LabelMe polygons -> ``nanodefect measure``, against skimage's regionprops."""
    from PIL import Image
    from skimage.measure import label as sk_label, regionprops

    from conftest import real_file
    from napari_nanodefect.core.annotations import labels_to_set, write_labelme

    mask = np.asarray(Image.open(real_file("TEM-Seg", "DATA", "Au (750°C)", "Ground Truth (5%)", f"frame_{frame}.png")))
    mask = (mask[..., 0] if mask.ndim == 3 else mask) > 127
    ref = sk_label(mask, connectivity=2)
    ref_ecd = np.array([2 * np.sqrt(r.area / np.pi) for r in regionprops(ref)]) * 0.1
    ps = 0.1
    lab = ndi.label(mask, structure=np.ones((3, 3)))[0]
    t = measure_particles(lab, ps)
    assert len(t) == len(ref_ecd) > 500
    assert np.median(t["ecd_nm"]) == pytest.approx(np.median(ref_ecd), rel=1e-9)
    # the file route: label TIFF -> LabelMe polygons -> measure (rasterised back exactly)
    aset = labels_to_set(lab.astype(np.uint16))
    aset.pixel_size_nm = ps
    write_labelme(aset, tmp_path / "gt.json")
    assert main(["measure", str(tmp_path / "gt.json"), "--edge-correction", "none", "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["count"] == len(ref_ecd)
    assert s["d50_nm"] == pytest.approx(np.median(ref_ecd), rel=0.005)


def test_row_bands_do_not_change_the_table(monkeypatch):
    """Whole-image passes run in row bands on large images (memory); results must not
    depend on the band height, including perimeters smoothed across band borders."""
    from napari_nanodefect.core.measure import particles as P

    lab = _random_disks(shape=(300, 260), n=120, seed=5)
    img = np.random.default_rng(2).normal(size=lab.shape)
    whole = P.measure_particles(lab, 0.4, img)
    monkeypatch.setattr(P, "BAND_PIXELS", 260 * 9)  # 9-row bands: most particles are cut
    banded = P.measure_particles(lab, 0.4, img)
    _same_table(whole.drop(columns=["orientation_deg"]), banded.drop(columns=["orientation_deg"]))
    np.testing.assert_allclose(whole["orientation_deg"], banded["orientation_deg"], atol=1e-6)


def test_measure_cli_gaussian_refinement(tmp_path, capsys):
    """STM-like height map of Gaussian particles with too-small masks: --refine gaussian
    gives the analytic FWHM-ellipse sizes and reports failed fits (a label on flat noise)."""
    from napari_nanodefect.core.annotations import write_label_tiff
    from napari_nanodefect.core.io.write import write_tiff

    rng = np.random.default_rng(0)
    H, W = 160, 200
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    z = 0.2 + rng.normal(0, 0.01, (H, W))
    lab = np.zeros((H, W), np.uint16)
    centres = [(40, 40), (40, 120), (110, 70), (110, 150)]
    sigma = 5.0
    for k, (cy, cx) in enumerate(centres, 1):
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        z += 1.0 * g
        lab[g > 0.85] = k  # rough, too small
    lab[10:14, 180:184] = 9  # nothing there
    write_tiff(tmp_path / "h.tif", z.astype(np.float32), pixel_size_nm=0.2)
    write_label_tiff(tmp_path / "h_labels.tif", lab, pixel_size_nm=0.2)
    assert main(["measure", str(tmp_path / "h_labels.tif"), "--image", str(tmp_path / "h.tif"), "--refine", "gaussian",
                 "--edge-correction", "none", "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["refine"]["n_failed"] == 1 and s["refine"]["failed_labels"] == [9]
    t = pd.read_csv(tmp_path / "o" / "particles.csv").set_index("label")
    fwhm_d = 2 * sigma * np.sqrt(2 * np.log(2)) * 0.2  # diameter of the half-maximum circle, nm
    for k in range(1, 5):
        assert t.loc[k, "ecd_nm"] == pytest.approx(fwhm_d, rel=0.05)
        assert bool(t.loc[k, "refined"])
    assert not bool(t.loc[9, "refined"]) and t.loc[9, "area_px"] == 16
    out = capsys.readouterr().out
    assert "4 of 5 particles fitted" in out and "failed" in out
