"""Defects & ordering dock: ordering statistics of a particles layer, classifier maps,
defect segmentation layers (with untrained models: the wiring, not the science)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _disks(centres, shape, r=3):
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return lab


def test_defects_dock_ordering_classifier_and_segmentation(make_napari_viewer, tmp_path):
    import torch

    from napari_nanodefect.core.defects.classify import build_classifier, save_classifier
    from napari_nanodefect.core.defects.segment import build_defect_model, save_defect_model
    from napari_nanodefect.widgets.defects import DefectsWidget

    viewer = make_napari_viewer()
    shape = (256, 256)
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, shape).astype(np.float32)
    meta = {"nanodefect": {"pixel_size_nm": 0.5}}
    viewer.add_image(image, name="field", scale=(0.5, 0.5), units=("nm", "nm"), metadata=meta)
    t = rng.uniform(5, 250, 150)
    rows = np.repeat([60, 190], 75) + rng.normal(0, 1.5, 150)
    viewer.add_labels(_disks(np.column_stack([rows, t]), shape), name="field particles", scale=(0.5, 0.5),
                      units=("nm", "nm"))
    w = DefectsWidget(viewer)
    w.image_box.setCurrentText("field")
    w.labels_box.setCurrentText("field particles")

    st = w.ordering()
    assert st["verdict"] == "clustered" and st["clark_evans_R"] < 0.8
    assert st["mean_nn_nm"] == pytest.approx(st["mean_nn_px"] * 0.5)
    assert "clustered" in w.order_label.text()

    torch.manual_seed(0)
    clf = build_classifier(["random", "ordered"], patch=64)
    save_classifier(clf, tmp_path / "clf")
    w.clf_edit.setText(str(tmp_path / "clf"))
    res = w.classify()
    assert res is not None and len(res["proba"]) == 2 and sum(res["proba"]) == pytest.approx(1, abs=1e-5)
    pm = viewer.layers["field P(ordered)"]
    assert pm.data.shape == ((256 - 64) // 32 + 1,) * 2
    np.testing.assert_allclose(pm.scale, [16, 16])  # 0.5 nm x stride 32
    sal = viewer.layers["field saliency"]
    assert sal.data.shape == shape and sal.data.max() == pytest.approx(1.0)
    assert res["pca"].shape[0] == pm.data.size

    model = build_defect_model(["grain_boundary", "point_defect"], encoder="resnet18", encoder_weights=None)
    save_defect_model(model, tmp_path / "defects")
    w.seg_edit.setText(str(tmp_path / "defects"))
    out = w.segment()
    assert out is not None
    for cls in ("grain_boundary", "point_defect"):
        ly = viewer.layers[f"field {cls}"]
        assert ly.data.shape == shape
    # a wrong folder is a message, not a crash
    w.seg_edit.setText(str(tmp_path / "nothing"))
    assert w.segment() is None and w.seg_label.text()
