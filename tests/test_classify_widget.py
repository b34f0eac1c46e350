"""Classify objects dock: click to assign, cross-validate before applying, classes into
``layer.features``, colours and per-class histogram."""

from __future__ import annotations

import numpy as np
import pytest

from test_classify_objects_cli import _field


class _Event:
    def __init__(self, pos, position, modifiers=()):
        self.type = "mouse_press"
        self.pos = np.asarray(pos, float)
        self.position = position
        self.modifiers = list(modifiers)


@pytest.fixture
def dock(make_napari_viewer):
    from napari_nanodefect.widgets.classify import ClassifyWidget

    img, lab, truth = _field(3)
    viewer = make_napari_viewer()
    viewer.add_image(img, name="field", scale=(0.2, 0.2),
                     metadata={"nanodefect": {"pixel_size_nm": 0.2}})
    viewer.add_labels(lab.astype(np.int32), name="field predictions", scale=(0.2, 0.2))
    w = ClassifyWidget(viewer)
    assert w.labels_box.currentText() == "field predictions" and w.image_box.currentText() == "field"
    return viewer, w, lab, truth


def _centre(lab, v):
    return np.argwhere(lab == v).mean(0)


def test_click_assigns_and_clears_classes(dock):
    viewer, w, lab, truth = dock
    w.new_class.setText("plain")
    w._add_class()
    w.new_class.setText("fringed")
    w._add_class()
    assert w.current_class() == "fringed"
    w.click_mode.setChecked(True)
    assert w._on_mouse in viewer.mouse_drag_callbacks
    v = 5
    r, c = _centre(lab, v)

    def drive(modifiers=(), moves=()):
        ev = _Event((50, 50), (r * 0.2, c * 0.2), modifiers)
        gen = w._on_mouse(viewer, ev)
        next(gen)
        for dx in moves:
            ev.type, ev.pos = "mouse_move", np.array([50.0, 50.0 + dx])
            next(gen)
        ev.type = "mouse_release"
        with pytest.raises(StopIteration):
            next(gen)

    drive(moves=[30])  # a drag assigns nothing
    assert w.assigned() == {}
    drive()
    assert w.assigned() == {v: "fringed"}
    f = viewer.layers["field predictions"].features
    assert f.loc[f["index"] == v, "class"].item() == "fringed"
    # coloured with the dock's colour of the class
    col = viewer.layers["field predictions"].colormap.map(np.array([v]))[0]
    expected = np.array([int(w.state.color_of("fringed")[k:k + 2], 16) / 255 for k in (1, 3, 5)])
    assert np.allclose(col[:3], expected, atol=0.01)
    drive(modifiers=["Shift"])
    assert w.assigned() == {}
    assert "1 objects" not in w.assigned_label.text()
    w.click_mode.setChecked(False)
    assert w._on_mouse not in viewer.mouse_drag_callbacks


def test_train_cross_validates_before_apply_then_classifies_all(dock, qtbot, tmp_path):
    viewer, w, lab, truth = dock
    ids = sorted(truth)
    # assign the first 20 objects, as a user clicking them would
    for v in ids[:20]:
        w.assign(v, truth[v])
    assert not w.apply_btn.isEnabled()
    assert w.train()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert w.last_cv is not None and "balanced accuracy" in w.cv_label.text()
    assert w.last_cv["confusion"].sum() == 20
    assert w.apply_btn.isEnabled()
    assert w.apply()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    f = viewer.layers["field predictions"].features.set_index("index")
    assert len(f) == len(ids)
    assert set(f.loc[ids[:20], "class_source"]) == {"assigned"}
    assert set(f.loc[ids[20:], "class_source"]) == {"classifier"}
    rest = ids[20:]
    acc = np.mean([f.loc[v, "class"] == truth[v] for v in rest])
    assert acc >= 0.85
    assert np.allclose(f["p_fringed"] + f["p_plain"], 1.0)
    # the histogram shows one series per class, with the counts of the table
    t = w.last_table
    assert dict(t["class"].value_counts()) == dict(f["class"].value_counts())
    assert len(w.ax.get_legend().get_texts()) >= 2
    # save, load into a fresh dock state and apply again: same classes
    path = w.save(tmp_path / "clf")
    assert (path / "model.safetensors").exists()
    before = f["class"].copy()
    w.model = None
    assert w.load(tmp_path / "clf")
    assert "cross-validated" in w.cv_label.text()
    assert w.apply()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    after = viewer.layers["field predictions"].features.set_index("index")["class"]
    assert (after == before).all()


def test_train_needs_two_classes(dock):
    viewer, w, lab, truth = dock
    w.assign(1, "plain")
    assert not w.train()
    assert "two classes" in w.status.text()
    assert not w.load(tmp := "/nonexistent/folder")
    assert "object-classifier folder" in w.status.text(), tmp
