"""The whole loop in the viewer, through the docks only, on a synthetic micrograph:

open → two crops labelled by clicks → Train (a few seconds, child process) → Predict →
delete one particle → the Measure table and histogram change → Export → the files load
in pycocotools and as LabelMe (with labelme itself when its client venv exists).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt
from scipy import ndimage

from napari_nanodefect.core.annotations import read_labelme
from napari_nanodefect.core.io.write import write_tiff

pytestmark = pytest.mark.gui
PLUGIN = "napari-nanodefect"


def _clicks_inside(labels: np.ndarray, box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """Centres of the ground-truth particles lying wholly inside ``box`` (r0, c0, r1, c1)."""
    r0, c0, r1, c1 = box
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sl[0].start < r0 or sl[1].start < c0 or sl[0].stop > r1 or sl[1].stop > c1:
            continue
        m = labels[sl] == k
        r, c = ndimage.center_of_mass(m)
        rr, cc = int(round(r)), int(round(c))
        if m[rr, cc]:
            out.append((rr + sl[0].start, cc + sl[1].start))
    return out


def test_label_train_predict_fix_measure_export(make_napari_viewer, qtbot, tmp_path):
    from pycocotools.coco import COCO

    from napari_nanodefect.core.evaluate import evaluate_labels
    from napari_nanodefect.core.synthetic import make_particles
    from napari_nanodefect.widgets._common import state_for
    from napari_nanodefect.widgets.export import ExportWidget
    from napari_nanodefect.widgets.label import LabelWidget
    from napari_nanodefect.widgets.measure import MeasureWidget
    from napari_nanodefect.widgets.predict import PredictWidget
    from napari_nanodefect.widgets.train import TrainWidget

    s = make_particles(shape=(384, 384), mode="haadf", seed=7)
    tif = write_tiff(tmp_path / "field.tif", s.image, pixel_size_nm=s.pixel_size_nm)
    viewer = make_napari_viewer()
    viewer.open(str(tif), plugin=PLUGIN)

    # 1. two crops, every particle inside them outlined by a click
    lw = LabelWidget(viewer)
    lw.start_crop()
    boxes = [(20, 20, 130, 150), (230, 200, 360, 360)]
    viewer.layers["field crops"].add_rectangles([np.array([[r0, c0], [r1, c1]], float) for r0, c0, r1, c1 in boxes])
    n_clicked = 0
    for box in boxes:
        for rc in _clicks_inside(s.labels, box):
            n_clicked += lw.click(rc) is not None
    hand = viewer.layers["field particles"]
    assert n_clicked >= 15, lw.status.text()
    ann = tif.with_suffix(".json")
    qtbot.waitUntil(lambda: ann.exists() and len(read_labelme(ann).objects) == n_clicked, timeout=5000)

    # 2. train a few seconds in the background; the model is selected for Predict
    tw = TrainWidget(viewer)
    tw.out_edit.setText(str(tmp_path / "model"))
    tw.budget_spin.setValue(4)
    tw.extra_train_kwargs = {"validate_every_s": 1.0, "patch": 96, "batch_size": 4}
    qtbot.mouseClick(tw.train_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not tw.running, timeout=90_000)
    assert tw.last_result[0] == "done", tw.last_result
    assert state_for(viewer).model_path == tmp_path / "model"

    # 3. predict the whole image with that model; hand labels stay untouched
    pw = PredictWidget(viewer)
    assert pw.model_box.currentText() == str(tmp_path / "model")
    hand_before = hand.data.copy()
    pw.run_btn.click()
    qtbot.waitUntil(lambda: not pw.busy, timeout=60_000)
    pred = viewer.layers["field predictions"]
    np.testing.assert_array_equal(hand.data, hand_before)
    ev = evaluate_labels(s.labels, pred.data)["at_iou"]
    assert ev["f1"] > 0.6, ev
    n_pred = len(np.unique(pred.data)) - 1

    # 4. measure, then delete one particle: the table and the histogram follow
    mw = MeasureWidget(viewer)
    mw.layer_box.setCurrentText(pred.name)
    mw.measure()
    t0 = mw.table()
    assert len(t0) == n_pred
    mw.redraw_histogram()
    bars0 = [p.get_height() for p in mw.ax.patches]
    inner = t0[~t0["touches_edge"].astype(bool)]  # edge particles are left out of the histogram
    big = int(inner.sort_values("area_px").iloc[-1]["label"])
    rows, cols = np.nonzero(pred.data == big)
    pred.data_setitem((rows, cols), 0)
    qtbot.waitUntil(lambda: not mw.pending, timeout=2000)
    t1 = mw.table()
    assert len(t1) == n_pred - 1 and big not in set(t1["label"])
    mw.redraw_histogram()
    bars1 = [p.get_height() for p in mw.ax.patches]
    assert sum(bars1) == sum(bars0) - 1  # the deleted particle left the histogram

    # 5. export; the files open in pycocotools and as LabelMe
    ew = ExportWidget(viewer)
    assert ew.labels_box.currentText() == "field predictions"
    res = ew.export(tmp_path / "export")
    assert res is not None, ew.status.text()
    coco = COCO(str(tmp_path / "export" / "field.coco.json"))
    assert len(coco.getAnnIds()) == n_pred - 1
    lm = read_labelme(tmp_path / "export" / "field.json")
    assert len(lm.objects) == n_pred - 1 and lm.resolve_image_path() == tif.resolve()
    csv = pd.read_csv(tmp_path / "export" / "field_particles.csv")
    assert len(csv) == n_pred - 1
    np.testing.assert_allclose(np.sort(csv["ecd_nm"]), np.sort(t1["ecd_nm"]), rtol=1e-5)  # CSV keeps 6 digits
    summary = json.loads((tmp_path / "export" / "field_summary.json").read_text())
    assert summary["d50_nm"] == pytest.approx(mw.summary()["d50_nm"], rel=1e-9)

    import labelme_client

    try:
        py = labelme_client.labelme_python(create=False)
    except RuntimeError:
        py = None
    if py is not None:
        rec = labelme_client.load_with_labelme(py, [tmp_path / "export" / "field.json"])["files"][0]
        # a particle in several pieces is several shapes sharing one group_id
        assert rec["ok"] and len(set(rec["group_ids"])) == n_pred - 1, rec
