"""npe2 annotation reader/writers, and the Predict and Export docks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_nanodefect.core.annotations import AnnotationSet, Crop, ObjectAnnotation, read_labelme, write_labelme
from napari_nanodefect.core.io.write import write_tiff

pytestmark = pytest.mark.gui
PLUGIN = "napari-nanodefect"


def _disk_set(tmp_path, classes=("particle", "single_site")):
    """A 120x160 image with four disks (two classes) and one crop, as TIFF + LabelMe."""
    img = np.full((120, 160), 40, np.uint8)
    yy, xx = np.mgrid[:120, :160]
    centres = [(30, 30, 8), (30, 80, 6), (80, 50, 10), (90, 120, 5)]
    for cy, cx, r in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 200
    tif = write_tiff(tmp_path / "disks.tif", img, pixel_size_nm=0.8)
    objs = [ObjectAnnotation.from_circle(classes[i % 2], cx + 0.5, cy + 0.5, r) for i, (cy, cx, r) in enumerate(centres)]
    aset = AnnotationSet(image_path="disks.tif", image_height=120, image_width=160, pixel_size_nm=0.8,
                         crops=[Crop(10, 10, 100, 60)], objects=objs)
    js = write_labelme(aset, tmp_path / "disks.json", embed_image=False)
    return tif, js, aset


def test_annotation_reader_gives_image_labels_classes_crops(make_napari_viewer, tmp_path):
    from napari_nanodefect._napari import get_annotation_reader

    tif, js, aset = _disk_set(tmp_path)
    assert get_annotation_reader(str(tmp_path / "x.tif")) is None
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    assert get_annotation_reader(str(tmp_path / "other.json")) is None  # not ours: napari may try others
    viewer = make_napari_viewer()
    viewer.open(str(js), plugin=PLUGIN)
    image, lab, crops = viewer.layers["disks"], viewer.layers["disks particles"], viewer.layers["disks crops"]
    np.testing.assert_allclose(image.scale, [0.8, 0.8])
    np.testing.assert_allclose(lab.scale, [0.8, 0.8])
    assert int(lab.data.max()) == 4 and len(np.unique(lab.data)) == 5
    f = lab.features
    assert sorted(f["class"]) == ["particle", "particle", "single_site", "single_site"]
    # the class sits on the right disk: label under (80, 50) is the third circle -> "particle"
    v = int(lab.data[80, 50])
    assert f.set_index("index").loc[v, "class"] == "particle"
    # the crop covers x 10..100, y 10..60 (pixel corners) -> napari vertices at -0.5 offsets
    (rect,) = crops.data
    np.testing.assert_allclose(rect.min(axis=0), [9.5, 9.5])
    np.testing.assert_allclose(rect.max(axis=0), [59.5, 99.5])
    # areas of the rasterised disks equal those of the source polygons' rasterisation
    src_area = sorted(int(o.to_mask((120, 160)).sum()) for o in aset.objects)
    assert sorted(np.bincount(lab.data.ravel())[1:].tolist()) == src_area


def test_writers_round_trip_labelme_coco_csv(make_napari_viewer, tmp_path):
    from pycocotools.coco import COCO

    from napari_nanodefect._napari import write_coco_layers, write_labelme_layers, write_particles_csv

    tif, js, aset = _disk_set(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(js), plugin=PLUGIN)
    layers = [viewer.layers[n] for n in ("disks particles", "disks crops", "disks")]
    ld = [ly.as_layer_data_tuple() for ly in layers]
    out = tmp_path / "out"
    out.mkdir()
    (p,) = write_labelme_layers(str(out / "again.json"), ld)
    back = read_labelme(p)
    assert back.resolve_image_path() == tif.resolve()
    assert len(back.objects) == 4 and len(back.crops) == 1
    c = back.crops[0]
    assert (c.x0, c.y0, c.x1, c.y1) == (10, 10, 100, 60)
    orig = sorted((o.label, int(o.to_mask((120, 160)).sum())) for o in aset.objects)
    assert sorted((o.label, int(o.to_mask((120, 160)).sum())) for o in back.objects) == orig
    (pc,) = write_coco_layers(str(out / "again.coco.json"), ld)
    coco = COCO(pc)
    assert len(coco.getAnnIds()) == 4
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["particle", "single_site"]
    areas = sorted(int(coco.annToMask(a).sum()) for a in coco.loadAnns(coco.getAnnIds()))
    assert areas == sorted(a for _, a in orig)
    (pcsv,) = write_particles_csv(str(out / "p.csv"), *ld[0][:2])
    t = pd.read_csv(pcsv)
    assert len(t) == 4
    np.testing.assert_allclose(sorted(t["area_nm2"]), sorted(a * 0.64 for _, a in orig), rtol=1e-9)
    with pytest.raises(ValueError, match="Labels"):
        write_labelme_layers(str(out / "x.json"), [ld[2]])


def _synthetic_tif(tmp_path, shape=(384, 384), seed=3, mode="haadf"):
    from napari_nanodefect.core.synthetic import make_particles

    s = make_particles(shape=shape, mode=mode, seed=seed)
    tif = write_tiff(tmp_path / f"syn_{mode}.tif", s.image, pixel_size_nm=s.pixel_size_nm)
    return tif, s


def test_predict_widget_whole_image_replace_add_and_view(make_napari_viewer, qtbot, tmp_path):
    from napari_nanodefect.core.evaluate import evaluate_labels
    from napari_nanodefect.widgets.predict import PredictWidget

    tif, s = _synthetic_tif(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(tif), plugin=PLUGIN)
    w = PredictWidget(viewer)
    assert w.image_box.currentText() == "syn_haadf"
    w.keep_prob.setChecked(True)
    w.run_btn.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    lab = viewer.layers["syn_haadf predictions"]
    assert lab.data.shape == s.labels.shape
    f = lab.features
    assert len(f) == int(len(np.unique(lab.data)) - 1) > 20
    assert {"index", "class", "ecd_nm", "area_nm2"} <= set(f.columns)
    np.testing.assert_allclose(lab.scale, [s.pixel_size_nm] * 2)
    # the starter model on the synthetic image it was built for finds most particles
    ev = evaluate_labels(s.labels, lab.data)["at_iou"]
    assert ev["f1"] > 0.6, ev
    prob = viewer.layers["syn_haadf probability"]
    assert prob.data.dtype == np.uint8 and prob.data.max() > 200
    # second run: add a new layer instead of replacing
    w.mode.setCurrentIndex(1)
    w.keep_prob.setChecked(False)
    w.run_btn.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    assert "syn_haadf predictions [2]" in viewer.layers
    np.testing.assert_array_equal(viewer.layers["syn_haadf predictions [2]"].data, lab.data)  # deterministic
    assert "zoom" not in w.last_result["scale_source"]
    from napari_nanodefect.core.segment.model import cpu_has_native_bf16

    ran = "bfloat16" if cpu_has_native_bf16() else "float32"  # the dock's model runs on this CPU here
    assert w.last_result["precision"] == ran
    assert viewer.layers["syn_haadf predictions [2]"].metadata["nanodefect"]["precision"] == ran
    # the second look for small particles: the first pass's particles stay, more may come
    w.zoom.setChecked(True)
    w.run_btn.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    zoomed = viewer.layers["syn_haadf predictions [3]"].data
    assert "zoom pass" in w.last_result["scale_source"]
    np.testing.assert_array_equal(np.where(lab.data > 0, zoomed, 0), lab.data)
    assert zoomed.max() >= lab.data.max()
    w.zoom.setChecked(False)
    # four flipped views averaged: the dock passes tta through to the core call
    from napari_nanodefect.core.segment import predict_array

    w.tta.setChecked(True)
    w.run_btn.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    tta_layer = viewer.layers["syn_haadf predictions [4]"].data
    core = predict_array(w.model(), viewer.layers["syn_haadf"].data, pixel_size_nm=s.pixel_size_nm, tta=True)
    np.testing.assert_array_equal(tta_layer, core.labels)
    assert not np.array_equal(tta_layer, lab.data)  # not the single-view result
    w.tta.setChecked(False)
    # current view only: zoom into the top-left quarter
    w.mode.setCurrentIndex(0)
    w.where.setCurrentText("current view")
    from napari_nanodefect.widgets.predict import _camera, view_region

    cam = _camera(viewer)
    viewer.canvas.size = (400, 400)
    cam.center = (96 * s.pixel_size_nm, 96 * s.pixel_size_nm)
    cam.zoom = 400 / (128 * s.pixel_size_nm)  # 128 image px across the 400-px canvas
    im = viewer.layers["syn_haadf"]
    rs, cs = view_region(viewer, im, s.labels.shape)
    assert (rs.start, rs.stop, cs.start, cs.stop) == (32, 161, 32, 161)  # pixels partly on screen too
    w.run_btn.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=60000)
    ys, xs = np.nonzero(lab.data)
    assert ys.size and ys.min() >= rs.start and ys.max() < rs.stop and xs.max() < cs.stop


def test_export_widget_writes_every_format(make_napari_viewer, tmp_path):
    from pycocotools.coco import COCO

    from napari_nanodefect.widgets.export import ExportWidget

    tif, js, aset = _disk_set(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(js), plugin=PLUGIN)
    w = ExportWidget(viewer)
    assert w.labels_box.currentText() == "disks particles"
    w.crops_check.setChecked(True)
    assert w.default_folder(viewer.layers["disks particles"]) == tmp_path / "disks_nanodefect"
    res = w.export()
    out = tmp_path / "disks_nanodefect"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["disks.coco.json", "disks.json", "disks_histogram.png", "disks_histogram.svg",
                     "disks_particles.csv", "disks_summary.json"]
    assert len(COCO(str(out / "disks.coco.json")).getAnnIds()) == 4
    back = read_labelme(out / "disks.json")
    assert back.resolve_image_path() == tif.resolve() and len(back.objects) == 4
    summary = json.loads((out / "disks_summary.json").read_text())
    # the crop x 10..100, y 10..60 holds the centres (30,30) and (30,80) only
    assert summary["count"] == 2 and res["summary"]["count"] == 2
    assert summary["per_class"]["particle"]["count"] == 1
    t = pd.read_csv(out / "disks_particles.csv")
    assert len(t) == 4 and (t["region"] >= 0).sum() == 2
    # nothing ticked: a message, no files
    for c in w.checks.values():
        c.setChecked(False)
    assert w.export(tmp_path / "none") is None and "tick" in w.status.text()
    assert not (tmp_path / "none").exists()


def test_predict_widget_colours_a_two_class_result_by_class(make_napari_viewer, tmp_path):
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_nanodefect.core.measure.particles import measure_particles
    from napari_nanodefect.widgets import _common as C
    from napari_nanodefect.widgets.predict import PredictWidget

    tif, s = _synthetic_tif(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(tif), plugin=PLUGIN)
    w = PredictWidget(viewer)
    w._target = viewer.layers["syn_haadf"]
    lab = np.zeros(s.labels.shape, np.int32)
    lab[10:20, 10:20], lab[40:60, 40:60], lab[100:103, 100:103] = 1, 2, 3
    classes = {1: "particle", 2: "particle", 3: "single_site"}
    res = {"labels": lab, "classes": classes, "probability": None, "scale": 1.0, "scale_source": "test",
           "seconds": 0.1, "table": measure_particles(lab, s.pixel_size_nm, None, class_index=classes)}
    w._finished(res)
    ly = viewer.layers["syn_haadf predictions"]
    assert list(ly.features["class"]) == ["particle", "particle", "single_site"]
    st = C.state_for(viewer)
    want = {v: transform_color(st.color_of(c))[0] for v, c in classes.items()}
    assert not np.allclose(want[1], want[3])
    for v, rgba in want.items():
        np.testing.assert_allclose(ly.colormap.map(v)[:3], rgba[:3], atol=1e-3)
