"""Batch dock: runs a folder in the background, shows progress, the groups table and the
aggregated histogram; a second run resumes (skips what is done)."""

from __future__ import annotations

import pandas as pd

from test_batch import _make_images


def test_batch_dock_runs_in_background_and_resumes(make_napari_viewer, qtbot, tmp_path):
    from napari_nanodefect.widgets.batch import BatchWidget

    _make_images(tmp_path / "in", {"A": 2, "B": 1}, size=128)
    viewer = make_napari_viewer()
    w = BatchWidget(viewer)
    assert not w.run()  # nothing chosen yet
    assert "choose" in w.status.text()
    w.input_edit.setText(str(tmp_path / "in"))
    w.out_edit.setText(str(tmp_path / "out"))
    w.model_edit.setText("starter")
    assert w.run()
    assert w.busy and not w.run_btn.isEnabled()  # returned at once; the work is in the background
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert w.result is not None and sorted(w.result.done) == ["A/img0", "A/img1", "B/img0"]
    assert [p["done"] for p in w.progress_log] == [1, 2, 3]
    g = pd.read_csv(tmp_path / "out" / "groups.csv")
    assert "<td>A</td>" in w.table_label.text() and "<td>ALL</td>" in w.table_label.text()
    assert [w.group_box.itemText(i) for i in range(w.group_box.count())] == list(dict.fromkeys(g["group"]))
    assert w.hist.pixmap() is not None and not w.hist.pixmap().isNull()
    # run again: everything is skipped
    assert w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert not w.result.done and len(w.result.skipped) == 3
    assert "3 skipped" in w.status.text()
    # the second look for small particles reaches every image's prediction
    assert all("zoom" not in e["scale_source"] for e in w.result.manifest["images"].values())
    w.zoom.setChecked(True)
    w.out_edit.setText(str(tmp_path / "out_zoom"))
    assert w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert len(w.result.done) == 3
    assert all("zoom pass" in e["scale_source"] for e in w.result.manifest["images"].values())
    w.tta.setChecked(True)
    w.out_edit.setText(str(tmp_path / "out_zoom_tta"))
    assert w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert len(w.result.done) == 3
    assert all(e["predict_kwargs"] == {"zoom": True, "tta": True} for e in w.result.manifest["images"].values())
