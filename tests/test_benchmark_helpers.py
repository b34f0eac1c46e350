"""Benchmark helpers (benchmarks/stem_catalyst_data.py, benchmarks/baselines.py).

Synthetic samples need no data; the real-data checks skip when
../shared/data/real/stem-catalyst-nanoparticles is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from conftest import real_file
from stem_catalyst_data import (
    Sample,
    boxes_intersecting,
    choose_crop,
    ellipse_labels,
    ellipse_objects,
    load_dataset,
    make_training_labelme,
    read_yolo_boxes,
    to_grey_uint8,
)

from napari_nanodefect.core.annotations import (
    objects_to_labels,
    read_labelme,
    set_to_labels,
)
from napari_nanodefect.core.evaluate import centroid_in_box, instance_centroids


def grid_sample(n_side=20, size=640, box=10, name="grid", seed=0, noise=8.0):
    """Bright ellipses (boxes ``box`` px) on a regular grid over a dark noisy image."""
    step = size / n_side
    c = (np.arange(n_side) + 0.5) * step
    cx, cy = np.meshgrid(c, c)
    cx, cy = cx.ravel(), cy.ravel()
    boxes = np.stack([cx - box / 2, cy - box / 2, cx + box / 2, cy + box / 2], axis=1)
    lab = ellipse_labels(boxes, (size, size))
    rng = np.random.default_rng(seed)
    img = 40 + 150 * (lab > 0) + rng.normal(0, noise, (size, size))
    return Sample(name, np.clip(img, 0, 255).astype(np.uint8), boxes)


# ------------------------------------------------------------------ ellipses


def test_ellipse_labels_geometry():
    boxes = np.array([[10, 20, 30, 30], [50, 50, 58, 58]], float)  # 20x10 and 8x8
    lab = ellipse_labels(boxes, (80, 80))
    assert lab.dtype == np.int32 and set(np.unique(lab)) == {0, 1, 2}
    a1, a2 = (lab == 1).sum(), (lab == 2).sum()
    assert a1 == pytest.approx(np.pi * 10 * 5, rel=0.06)
    assert a2 == pytest.approx(np.pi * 4 * 4, rel=0.1)
    # centroids at the box centres (pixel-corner coordinates), nothing outside the boxes
    _, cent = instance_centroids(lab)
    assert np.allclose(cent, [[25, 20], [54, 54]], atol=1e-9)
    rows, cols = np.nonzero(lab == 1)
    assert cols.min() >= 10 and cols.max() < 30 and rows.min() >= 20 and rows.max() < 30
    # the ellipse touches all four sides of the box
    assert cols.min() == 10 and cols.max() == 29 and rows.min() == 20 and rows.max() == 29


def test_ellipse_labels_later_boxes_on_top_and_clipping():
    boxes = np.array([[0, 0, 20, 20], [10, 10, 30, 30], [-5, 35, 5, 45], [100, 100, 110, 110]], float)
    lab = ellipse_labels(boxes, (40, 40))
    assert lab[15, 15] == 2  # overlap: the later box wins
    assert lab[5, 5] == 0 or lab[5, 5] == 1
    assert lab[10, 10] == 1  # only box 1 here
    assert (lab == 3).sum() > 0  # clipped at the left and bottom borders
    assert 4 not in lab  # entirely outside


def test_ellipse_objects_polygons_match_labels():
    boxes = np.array([[10.5, 20, 40, 35], [60, 10, 70, 50], [5, 5, 5.2, 9]], float)  # last: degenerate
    objs = ellipse_objects(boxes)
    assert len(objs) == 2
    for o, b in zip(objs, boxes):
        assert o.label == "particle" and o.polygon.shape == (32, 2)
        x0, y0, x1, y1 = o.bbox
        assert x0 == pytest.approx(b[0]) and x1 == pytest.approx(b[2], abs=1e-9)
        assert y0 >= b[1] - 1e-9 and y1 <= b[3] + 1e-9
        assert o.area == pytest.approx(np.pi * (b[2] - b[0]) * (b[3] - b[1]) / 4, rel=0.01)
    poly = objects_to_labels(objs, (60, 80)).labels > 0
    exact = ellipse_labels(boxes[:2], (60, 80)) > 0
    assert (poly ^ exact).sum() <= 0.05 * exact.sum()


# ------------------------------------------------------------------ crops


def test_boxes_intersecting_counts_partial_boxes():
    from napari_nanodefect.core.annotations import Crop

    boxes = np.array([[0, 0, 10, 10], [8, 8, 12, 12], [10, 0, 20, 10], [30, 30, 40, 40]], float)
    hit = boxes_intersecting(boxes, Crop(0, 0, 10, 10))
    assert hit.tolist() == [True, True, False, False]  # touching an edge is not overlapping


@pytest.mark.parametrize("max_objects,min_objects", [(50, 20), (30, 10), (100, 60)])
def test_choose_crop_object_counts(max_objects, min_objects):
    s = grid_sample()
    crop = choose_crop(s, max_objects=max_objects, min_objects=min_objects)
    n = int(boxes_intersecting(s.boxes, crop).sum())
    assert min_objects <= n <= max_objects
    w, h = crop.x1 - crop.x0, crop.y1 - crop.y0
    assert w == h and float(crop.x0).is_integer() and float(crop.y1).is_integer()
    margin = 0.05 * 640
    assert crop.x0 >= margin and crop.y0 >= margin and crop.x1 <= 640 - margin and crop.y1 <= 640 - margin


def test_choose_crop_is_deterministic_and_seeded():
    s = grid_sample()
    a, b = choose_crop(s, seed=0), choose_crop(s, seed=0)
    assert a.bbox == b.bbox
    seeds = {choose_crop(s, seed=k).bbox for k in range(6)}
    assert len(seeds) > 1  # other seeds may pick other, equally good squares


def test_choose_crop_sparse_and_clustered_images():
    sparse = grid_sample(n_side=3, size=300)  # 9 objects in all
    crop = choose_crop(sparse, max_objects=50, min_objects=20)
    assert boxes_intersecting(sparse.boxes, crop).sum() == 9
    # a dense cluster in one corner plus sparse objects elsewhere
    dense = grid_sample(n_side=40, size=400, box=6)
    far = grid_sample(n_side=4, size=1000).boxes + 0.0
    boxes = np.concatenate([dense.boxes, far[far[:, 0] > 450]])
    s = Sample("mixed", np.zeros((1000, 1000), np.uint8), boxes)
    crop = choose_crop(s)
    assert 20 <= boxes_intersecting(boxes, crop).sum() <= 50


# ------------------------------------------------------------------ files


def test_read_yolo_boxes(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("0 0.5 0.25 0.1 0.2\n\n0 0.01 0.99 0.04 0.04\n")
    b = read_yolo_boxes(p, (200, 400))  # H=200, W=400
    assert np.allclose(b[0], [180, 30, 220, 70])
    assert np.allclose(b[1], [0, 194, 12, 200])  # clipped to the image
    (tmp_path / "bad.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(ValueError):
        read_yolo_boxes(tmp_path / "bad.txt", (10, 10))


def test_to_grey_uint8_rgb():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 200
    g = to_grey_uint8(rgb)
    assert g.shape == (10, 12) and g.dtype == np.uint8
    assert int(g[0, 0]) == round(0.299 * 100 + 0.587 * 200)


def test_make_training_labelme_round_trip(tmp_path):
    a, b = grid_sample(name="A"), grid_sample(n_side=12, box=20, name="B", seed=1)
    paths = make_training_labelme([a, b], ["B", "A"], tmp_path)
    assert [p.name for p in paths] == ["B.json", "A.json"]
    for p, s in zip(paths, [b, a]):
        assert (tmp_path / f"{s.name}.png").is_file()
        data = json.loads(p.read_text())
        assert data["imagePath"] == f"{s.name}.png" and data["imageData"] is None
        aset = read_labelme(p)
        assert len(aset.crops) == 1 and aset.crops[0].label == "crop"
        crop = aset.crops[0]
        assert crop.bbox == choose_crop(s).bbox
        assert len(aset.objects) == boxes_intersecting(s.boxes, crop).sum()
        assert 20 <= len(aset.objects) <= 50
        assert {o.label for o in aset.objects} == {"particle"}
        lab = set_to_labels(aset).labels
        assert lab.shape == s.image.shape and lab.max() > 0
        from PIL import Image

        assert np.array_equal(np.asarray(Image.open(aset.resolve_image_path())), s.image)
    with pytest.raises(KeyError):
        make_training_labelme([a], ["nope"], tmp_path)


# ------------------------------------------------------------------ baselines


def test_split_watershed_separates_touching_disks():
    from baselines import split_watershed

    yy, xx = np.mgrid[:60, :80]
    mask = ((yy - 30) ** 2 + (xx - 25) ** 2 <= 144) | ((yy - 30) ** 2 + (xx - 47) ** 2 <= 144)
    mask[5:7, 70:72] = True  # 4-px speck: dropped (under a quarter of the typical area)
    lab = split_watershed(mask, radius_px=12)
    assert lab.max() == 2 and len(np.unique(lab)) == 3
    assert lab[6, 70] == 0
    assert split_watershed(np.zeros((10, 10), bool), 5).max() == 0


def test_otsu_baseline_on_a_clean_synthetic_image():
    from baselines import otsu_watershed

    s = grid_sample(n_side=10, size=320, box=16)
    r = centroid_in_box(otsu_watershed(s.image, +1, 8.0), s.boxes)
    assert r["f1"] > 0.95
    r = centroid_in_box(otsu_watershed(s.image, -1, 8.0), s.boxes)  # wrong polarity
    assert r["f1"] < 0.5


def test_pixel_features_shape():
    from baselines import FEATURE_NAMES, pixel_features

    f = pixel_features(np.random.default_rng(0).integers(0, 255, (40, 50)).astype(np.uint8))
    assert f.shape == (len(FEATURE_NAMES), 40, 50) == (36, 40, 50)
    assert f.dtype == np.float32 and np.isfinite(f).all()


def test_run_baselines_on_synthetic_samples():
    pytest.importorskip("sklearn")
    from baselines import default_train_names, format_table, run_baselines

    samples = [grid_sample(n_side=8, size=192, box=12, name=f"S{i}", seed=i) for i in range(4)]
    train = default_train_names(samples)
    assert train == ["S0", "S1"]
    res = run_baselines(samples, train, n_trees=10)
    assert res["test"] == ["S2", "S3"] and res["polarity"] == "bright"
    assert res["radius_px"] == pytest.approx(6.0)
    for m in ("otsu", "rf"):
        r = res["methods"][m]
        assert set(r["per_image"]) == {"S2", "S3"}
        assert r["pooled"]["n_truth"] == 2 * 64
        assert r["pooled"]["f1"] > 0.9, (m, r["pooled"])
    text = format_table(res)
    assert "pooled" in text and "S3" in text


# ------------------------------------------------------------------ real data


def test_load_real_dataset():
    root = real_file("stem-catalyst-nanoparticles")
    samples = load_dataset(root)
    assert len(samples) >= 20
    assert [s.name for s in samples] == sorted(s.name for s in samples)
    for s in samples:
        assert s.image.ndim == 2 and s.image.dtype == np.uint8
        assert len(s.boxes) >= 30
        H, W = s.shape
        assert (s.boxes[:, 0] >= 0).all() and (s.boxes[:, 2] <= W).all() and (s.boxes[:, 3] <= H).all()
        w, h = s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]
        assert (w >= 0).all() and (h >= 0).all()
        assert ((w > 0) & (h > 0)).sum() >= len(s.boxes) - 1  # PtW6 has one zero-width box
    names = [s.name for s in samples]
    if "PtC2" in names:  # an RGB JPEG, read as luminance
        assert samples[names.index("PtC2")].image.shape == (2048, 2048)
    with pytest.raises(FileNotFoundError):
        load_dataset(root, names=["no-such-image"])


def test_real_crops_hold_20_to_50_objects():
    root = real_file("stem-catalyst-nanoparticles")
    for s in load_dataset(root, names=["Cu1", "Cu3"]):
        crop = choose_crop(s)
        assert 20 <= boxes_intersecting(s.boxes, crop).sum() <= 50
