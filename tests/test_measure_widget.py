"""Measure dock: table in layer.features, summary, histogram, live re-measurement of edits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_nanodefect.core.measure.particles import measure_particles

pytestmark = pytest.mark.gui

PS = 0.5
SHAPE = (240, 320)
#: (cy, cx, r) in pixels, pixel-corner convention (pixel centres at +0.5)
DISKS = [(40.0, 40.0, 10.0), (60.0, 150.0, 16.0), (150.0, 80.0, 6.0), (170.0, 230.0, 20.0), (100.0, 280.0, 12.0)]


def disk_mask(cy, cx, r, shape=SHAPE):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def disk_labels(dtype=np.int32):
    lab = np.zeros(SHAPE, dtype)
    for i, (cy, cx, r) in enumerate(DISKS, start=1):
        lab[disk_mask(cy, cx, r)] = i
    return lab


def setup(make_napari_viewer, dtype=np.int32, metadata=None):
    from napari_nanodefect.widgets.measure import MeasureWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    image = viewer.add_image(rng.random(SHAPE).astype(np.float32), name="cat", scale=(PS, PS),
                             metadata=metadata or {"nanodefect": {"pixel_size_nm": PS}})
    layer = viewer.add_labels(disk_labels(dtype), name="cat particles", scale=(PS, PS))
    w = MeasureWidget(viewer)
    viewer.window.add_dock_widget(w, name="Measure")
    return viewer, image, layer, w


def by_label(t: pd.DataFrame) -> pd.DataFrame:
    return t.sort_values("label").reset_index(drop=True)


def assert_matches_full(w, layer, image, classes=None):
    """The live table equals a full measure_particles of the same array."""
    live = by_label(w.table())
    ref = by_label(measure_particles(np.asarray(layer.data), PS, image.data, classes=["particle"],
                                     class_index=classes))
    pd.testing.assert_frame_equal(live[ref.columns], ref, check_exact=False, rtol=1e-9, atol=1e-12)
    # ... and that is what layer.features holds (index = label value)
    f = layer.features
    np.testing.assert_array_equal(np.sort(f["index"].to_numpy()), ref["label"].to_numpy())
    np.testing.assert_array_equal(f["index"].to_numpy(), f["label"].to_numpy())


def hist_total(w) -> float:
    w.redraw_histogram()
    w.canvas.draw()
    return float(sum(p.get_height() for p in w.ax.patches))


def test_measure_counts_ecd_in_nm_and_keeps_classes(make_napari_viewer):
    from napari_nanodefect.widgets._common import set_label_classes

    viewer, image, layer, w = setup(make_napari_viewer)
    set_label_classes(layer, {2: "defect", 4: "defect"})
    assert w.layer_box.currentText() == "cat particles"
    w.measure_btn.click()
    t = by_label(w.table())
    assert t["label"].tolist() == [1, 2, 3, 4, 5]
    for (cy, cx, r), row in zip(DISKS, t.itertuples()):
        n_px = int(disk_mask(cy, cx, r).sum())
        assert row.area_px == n_px
        assert row.area_nm2 == pytest.approx(n_px * PS * PS)
        assert row.ecd_nm == pytest.approx(2 * np.sqrt(n_px / np.pi) * PS)
        assert row.ecd_nm == pytest.approx(2 * r * PS, rel=0.02)  # the analytic disk
    assert t["class"].tolist() == ["particle", "defect", "particle", "defect", "particle"]
    # the features table: index = label value, classes kept, measurements beside them
    f = layer.features
    assert {"index", "class", "ecd_nm", "area_nm2"} <= set(f.columns)
    assert dict(zip(f["index"], f["class"]))[4] == "defect"
    s = w.summary()
    assert s["count"] == 5 and s["per_class"]["defect"]["count"] == 2
    assert s["edge_correction"] == "miles-lantuejoul" and s["count_estimated"] > 5  # weighted
    w.edge_box.setCurrentText("none")  # plain statistics: d50 = the median ECD
    s = w.summary()
    assert s["count_estimated"] == 5 and s["d50_nm"] == pytest.approx(np.median(t["ecd_nm"]))
    assert s["area_fraction"] == pytest.approx(t["area_px"].sum() / (SHAPE[0] * SHAPE[1]))
    text = w.summary_label.text()
    assert "<b>5</b> particles" in text and "d10 / d50 / d90" in text and "defect 2" in text
    assert hist_total(w) == 5  # every disk is inside: one bar count each


def test_live_paint_fill_polygon_delete_and_undo(make_napari_viewer, qtbot):
    from napari_nanodefect.widgets._common import label_classes, set_label_classes

    viewer, image, layer, w = setup(make_napari_viewer)
    set_label_classes(layer, {3: "defect"})
    w.measure()
    classes = label_classes(layer)
    start = by_label(w.table())
    full = []
    measure = w.measure
    w.measure = lambda: full.append(1) or measure()  # every edit below must be incremental

    # brush: a new particle (label 6) of radius 7 px
    layer.brush_size = 15
    layer.paint((200, 40), 6)
    assert w.pending  # the event comes before napari writes the pixels: update deferred
    qtbot.waitUntil(lambda: not w.pending, timeout=2000)  # the zero-delay timer ran
    assert 6 in set(layer.features["index"])  # ... and updated layer.features by itself
    assert w.summary()["count"] == 6
    assert_matches_full(w, layer, image, classes)
    assert hist_total(w) == 6

    # erase part of disk 4 (paint with 0), grow disk 1 with a brush stroke (one history item)
    layer.paint((170, 230), 0)
    with layer.block_history():
        for x in range(40, 70, 3):
            layer.paint((40, x), 1, refresh=False)
    assert_matches_full(w, layer, image, classes)
    row4 = w.table().set_index("label").loc[4]
    assert row4.area_px < int(disk_mask(*DISKS[3]).sum())

    # data_setitem: a 5x5 square label 8; fill: relabel disk 3 (a "defect") as 9
    ys, xs = np.mgrid[5:10, 300:305]
    layer.data_setitem((ys.ravel(), xs.ravel()), 8)
    layer.fill((150, 80), 9)
    assert_matches_full(w, layer, image, classes)
    t = w.table().set_index("label")
    assert t.loc[8, "area_px"] == 25 and 3 not in t.index
    assert t.loc[9, "area_px"] == start.set_index("label").loc[3, "area_px"]

    # polygon: a 21 x 31 px rectangle over background and part of disk 5
    layer.paint_polygon([[90, 250], [90, 280], [110, 280], [110, 250]], 11)
    assert_matches_full(w, layer, image, classes)
    assert w.table().set_index("label").loc[11, "area_px"] == 21 * 31

    # delete button: label 2 (a "defect") -> 0 through data_setitem (undoable)
    set_label_classes(layer, {2: "defect"})
    layer.selected_label = 2
    w.delete_btn.click()
    assert 2 not in set(w.table()["label"])
    assert_matches_full(w, layer, image, label_classes(layer) | {2: "defect"})

    # undo everything step by step (no paint event in napari 0.9: the history hook)
    n_items = len(layer._undo_history)
    assert n_items == 7
    layer.undo()
    t = w.table().set_index("label")
    assert t.loc[2, "class"] == "defect"  # the deleted particle comes back with its class
    for _ in range(n_items - 1):
        layer.undo()
        assert_matches_full(w, layer, image, {2: "defect", 3: "defect"})
    end = by_label(w.table())
    pd.testing.assert_frame_equal(end.drop(columns="class"), start.drop(columns="class"))
    assert end["class"].tolist() == ["particle", "defect", "defect", "particle", "particle"]
    assert hist_total(w) == 5
    layer.redo()
    layer.redo()
    assert w.summary()["count"] == 6
    assert_matches_full(w, layer, image, {2: "defect", 3: "defect"})
    assert not full


def test_int64_data_replace_data_live_off_and_bins(make_napari_viewer, qtbot):
    viewer, image, layer, w = setup(make_napari_viewer, dtype=np.int64)
    w.measure()
    assert not w._shared  # the measurer converted the int64 labels: it syncs edited boxes
    layer.brush_size = 11
    layer.paint((200, 150), 12)
    layer.fill((100, 280), 0)  # delete disk 5 with a fill
    assert_matches_full(w, layer, image)
    assert sorted(w.table()["label"]) == [1, 2, 3, 4, 12]
    layer.undo()
    assert_matches_full(w, layer, image)

    # the bin count control
    w.bins_spin.setValue(3)
    assert len(w.ax.patches) == 3
    w.bins_spin.setValue(7)
    assert len(w.ax.patches) == 7

    # Live off: edits leave the table alone; Live on again re-measures
    w.live_check.setChecked(False)
    layer.paint((20, 300), 13)
    qtbot.wait(20)
    assert 13 not in set(w.table()["label"])
    w.live_check.setChecked(True)
    assert 13 in set(w.table()["label"])
    assert_matches_full(w, layer, image)

    # a new array: full re-measure
    layer.data = disk_labels(np.int32)[:, ::-1].copy()
    assert_matches_full(w, layer, image)
    assert len(w.table()) == 5
    layer.paint((200, 40), 6)
    assert_matches_full(w, layer, image)

    # renaming the layer keeps the dock on it; closing the dock removes the undo hook
    layer.name = "renamed"
    assert w.layer_box.currentText() == "renamed"
    layer.paint((20, 20), 14)
    assert 14 in set(w.table()["label"])
    assert "_load_history" in layer.__dict__
    w.close()
    assert "_load_history" not in layer.__dict__
    layer.undo()  # napari's own undo again, nothing listens


def test_regions_valid_region_and_crops(make_napari_viewer):
    meta = {"nanodefect": {"pixel_size_nm": PS, "valid_region": {"y0": 0, "x0": 0, "y1": 200, "x1": 320}}}
    viewer, image, layer, w = setup(make_napari_viewer, metadata=meta)
    w.measure()
    s = w.summary()
    assert s["analysed_area_px"] == 200 * 320
    # disk 4 (rows 150-190) touches the info-bar line? no: it ends at row 190 < 200
    assert not w.table()["touches_edge"].any()
    shapes = viewer.add_shapes([np.array([[0, 0], [0, 200], [120, 200], [120, 0]], float)], shape_type="rectangle",
                               name="cat crops", scale=(PS, PS))
    w.crops_check.setChecked(True)
    s = w.summary()
    assert s["n_regions"] == 1 and s["analysed_area_px"] == 120 * 200
    t = w.table().set_index("label")
    assert t.loc[1, "region"] == 0 and t.loc[2, "region"] == 0
    assert t.loc[4, "region"] == -1 and t.loc[5, "region"] == -1
    assert s["count"] == 2
    # editing the crops re-measures with the new regions
    shapes.add_rectangles(np.array([[130, 200], [130, 260], [200, 260], [200, 200]], float))
    assert w.summary()["n_regions"] == 2
    live = by_label(w.table())
    ref = by_label(measure_particles(layer.data, PS, image.data, regions=[(0, 0, 120, 200), (130, 200, 200, 260)]))
    pd.testing.assert_frame_equal(live[ref.columns], ref, check_exact=False, rtol=1e-9)


def test_edit_extent_of_history_atoms():
    from napari.layers.labels.labels import _MaskedPaintAtom

    from napari_nanodefect.widgets.measure import edit_extent

    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    atoms = [
        _MaskedPaintAtom((slice(10, 14), slice(20, 25)), mask, np.array([0, 3, 3, 0, 7, 7]), 9),
        ((np.array([50, 52]), np.array([5, 8])), np.array([4, 4]), 0),
        _MaskedPaintAtom((slice(0, 2), slice(0, 2)), None, np.zeros((2, 2), np.int32), 11),
    ]
    changed, box = edit_extent(atoms, (100, 100))
    assert changed == {0, 3, 4, 7, 9, 11}
    assert box == (0, 0, 53, 25)
    with pytest.raises(TypeError):
        edit_extent([object()], (10, 10))
