"""Calibrate & label dock: click-to-label, shift-click, classes, undo, autosave and restore."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nanodefect.core.annotations import read_labelme
from napari_nanodefect.core.io.write import write_tiff

pytestmark = pytest.mark.gui
PLUGIN = "napari-nanodefect"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture
def synthetic(tmp_path):
    from napari_nanodefect.core.synthetic import make_particles

    s = make_particles(shape=(320, 320), mode="haadf", seed=5, touching=0.0, n=60)
    tif = write_tiff(tmp_path / "sample.tif", s.image, pixel_size_nm=s.pixel_size_nm)
    return tif, s


def _isolated_centres(labels: np.ndarray, k: int, margin: int = 20) -> list[tuple[int, int, int]]:
    """Centres of k ground-truth particles well inside the image (label, row, col)."""
    from scipy import ndimage

    out = []
    for v in np.unique(labels)[1:]:
        m = labels == v
        if m.sum() < 60:
            continue
        r, c = ndimage.center_of_mass(m)
        if margin < r < labels.shape[0] - margin and margin < c < labels.shape[1] - margin and m[int(round(r)), int(round(c))]:
            out.append((int(v), int(round(r)), int(round(c))))
        if len(out) == k:
            break
    return out


def test_click_label_classes_undo_autosave_restore(make_napari_viewer, qtbot, synthetic):
    from napari_nanodefect.widgets import label as label_mod
    from napari_nanodefect.widgets.label import LabelWidget

    tif, s = synthetic
    viewer = make_napari_viewer()
    viewer.open(str(tif), plugin=PLUGIN)
    w = LabelWidget(viewer)
    assert w.calibration.layer_box.currentText() == "sample"
    assert "0.5 nm" in w.calibration.size_label.text()

    # a crop, then three clicks: two "particle", one of a new class
    w.start_crop()
    crops = viewer.layers["sample crops"]
    crops.add_rectangles(np.array([[10.0, 10.0], [300.0, 300.0]]))
    picks = _isolated_centres(s.labels, 3)
    assert len(picks) == 3
    added = []
    for i, (v, r, c) in enumerate(picks):
        if i == 2:
            w.new_class.setText("single_site")
            w.add_class_btn.click()
            assert w.current_class() == "single_site"
        new = w.click((r, c))
        assert new is not None, w.status.text()
        added.append(new)
    lab = viewer.layers["sample particles"]
    np.testing.assert_allclose(lab.scale, [s.pixel_size_nm] * 2)
    assert sorted(np.unique(lab.data)[1:].tolist()) == sorted(added)
    for (v, r, c), new in zip(picks, added):
        assert _iou(lab.data == new, s.labels == v) > 0.7
    from napari_nanodefect.widgets._common import label_classes

    assert label_classes(lab) == {added[0]: "particle", added[1]: "particle", added[2]: "single_site"}
    # a click on an existing particle adds nothing that overlaps it
    before = lab.data.copy()
    w.click(picks[0][1:])
    assert np.array_equal(lab.data[before > 0], before[before > 0])

    # shift-click removes, undo brings it back
    lab.data[:] = before
    removed = w.click(picks[1][1:], remove=True)
    assert removed == added[1] and not (lab.data == added[1]).any()
    w.undo()
    assert (lab.data == added[1]).sum() == (before == added[1]).sum()

    # autosave beside the image (atomic LabelMe) after the edits pause
    ann = tif.with_suffix(".json")
    qtbot.waitUntil(ann.exists, timeout=5000)
    qtbot.waitUntil(lambda: len(read_labelme(ann).objects) == 3, timeout=5000)
    aset = read_labelme(ann)
    assert aset.resolve_image_path() == tif.resolve()
    assert sorted(o.label for o in aset.objects) == ["particle", "particle", "single_site"]
    assert len(aset.crops) == 1 and (aset.crops[0].x0, aset.crops[0].x1) == (10.5, 300.5)

    # reopening the image restores particles, classes and the crop
    saved = lab.data.copy()
    for name in ["sample particles", "sample crops", "sample"]:
        viewer.layers.remove(name)
    w.close()
    viewer.open(str(tif), plugin=PLUGIN)
    w2 = LabelWidget(viewer)
    lab2 = viewer.layers["sample particles"]
    assert "restored 3 particles and 1 crops" in w2.status.text()
    assert {int(v): n for v, n in label_classes(lab2).items()} == {
        int(k): n for k, n in zip(added, ["particle", "particle", "single_site"])}
    np.testing.assert_array_equal(lab2.data > 0, saved > 0)
    assert len(viewer.layers["sample crops"].data) == 1
    assert label_mod.AUTOSAVE_DELAY_MS <= 2000


def test_click_errors_are_messages_not_crashes(make_napari_viewer, synthetic):
    from napari_nanodefect.widgets.label import LabelWidget

    tif, s = synthetic
    viewer = make_napari_viewer()
    viewer.open(str(tif), plugin=PLUGIN)
    w = LabelWidget(viewer)
    assert w.click((-5, 10)) is None and "inside" in w.status.text()
    assert w.click((5, 5), remove=True) is None and "no particle" in w.status.text()
    # an image without a file: labels work, autosave says why it cannot save
    viewer.add_image(s.image, name="in memory")
    w.calibration.layer_box.setCurrentText("in memory")
    (v, r, c), = _isolated_centres(s.labels, 1)
    assert w.click((r, c)) is not None
    assert w.save() is None and "no file" in w.save_label.text()


class _Event:
    """The bits of a napari mouse event our drag callback reads."""

    def __init__(self, pos, position, modifiers=()):
        self.type = "mouse_press"
        self.pos = np.asarray(pos, float)
        self.position = position
        self.modifiers = list(modifiers)


def test_mouse_click_vs_drag(make_napari_viewer, synthetic):
    """A press-release in place labels (shift removes); a drag pans and labels nothing."""
    from napari_nanodefect.widgets.label import LabelWidget

    tif, s = synthetic
    viewer = make_napari_viewer()
    viewer.open(str(tif), plugin=PLUGIN)
    w = LabelWidget(viewer)
    w.click_mode.setChecked(True)
    assert w._on_mouse in viewer.mouse_drag_callbacks
    lab = viewer.layers["sample particles"]
    assert lab.mode == "pan_zoom"
    (v, r, c), = _isolated_centres(s.labels, 1)
    world = tuple(np.array([r, c]) * s.pixel_size_nm)

    def drive(moves, modifiers=()):
        ev = _Event((100, 100), world, modifiers)
        gen = w._on_mouse(viewer, ev)
        next(gen)
        for dx in moves:
            ev.type = "mouse_move"
            ev.pos = np.array([100.0, 100.0 + dx])
            next(gen)
        ev.type = "mouse_release"
        with pytest.raises(StopIteration):
            next(gen)

    drive([20, 40])  # a drag: nothing
    assert lab.data.max() == 0
    drive([1])  # a click with a tiny jitter
    assert lab.data[r, c] > 0
    drive([], modifiers=["Shift"])
    assert lab.data.max() == 0
    w.click_mode.setChecked(False)
    assert w._on_mouse not in viewer.mouse_drag_callbacks


def test_counts_follow_edits(make_napari_viewer, qtbot, synthetic):
    from napari_nanodefect.widgets.label import LabelWidget

    tif, s = synthetic
    viewer = make_napari_viewer()
    viewer.open(str(tif), plugin=PLUGIN)
    w = LabelWidget(viewer)
    picks = _isolated_centres(s.labels, 2)
    for _, r, c in picks:
        w.click((r, c))
    qtbot.waitUntil(lambda: w.count_label.text().startswith("2 particles"), timeout=2000)
    w.start_crop()
    viewer.layers["sample crops"].add_rectangles(np.array([[0.0, 0.0], [100.0, 100.0]]))
    qtbot.waitUntil(lambda: "in 1 crop" in w.count_label.text(), timeout=2000)
    w.click(picks[0][1:], remove=True)
    qtbot.waitUntil(lambda: w.count_label.text().startswith("1 particle labelled"), timeout=2000)
