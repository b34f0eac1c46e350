"""Predict dock: segment the whole image (or the current view) with the selected model.

The network runs in a worker thread (``napari.qt.threading``; inference is mostly
inside torch, which releases the GIL) with a napari progress bar fed from the tile
callback. Results come back as a Labels layer ``"<image> predictions"`` (instances; class
and measurements of every particle in ``features``) and, when asked, an Image layer
``"<image> probability"``. A second run either replaces those layers or adds new ones
(``"<image> predictions [2]"`` ...), as chosen. The hand labels (``"<image> particles"``,
the training data autosaved beside the image) are never overwritten.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import NanodefectError
from . import _common as C

if TYPE_CHECKING:  # pragma: no cover
    import napari

STARTER = "starter model (shipped)"


def _camera(viewer):
    return viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera


def view_region(viewer, layer, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Row/column slices of the part of ``layer`` on screen (clipped to ``shape``):
    the canvas around the camera centre at the current zoom, mapped to data pixels."""
    cam = _camera(viewer)
    size = np.asarray(viewer.canvas.size, float)[-2:]  # screen px (rows, cols)
    centre = np.asarray(cam.center, float)[-2:]
    half = size / 2.0 / float(cam.zoom)
    corners = []
    for dy in (-1, 1):
        for dx in (-1, 1):
            world = list(np.asarray(cam.center, float))
            world[-2:] = centre + np.array([dy, dx]) * half
            corners.append(np.asarray(layer.world_to_data(world), float)[-2:])
    corners = np.array(corners)
    r0, c0 = np.maximum(np.floor(corners.min(axis=0) + 0.5), 0).astype(int)
    r1, c1 = np.minimum(np.ceil(corners.max(axis=0) + 0.5), shape).astype(int)
    if r1 - r0 < 8 or c1 - c0 < 8:
        return slice(0, shape[0]), slice(0, shape[1])
    return slice(int(r0), int(r1)), slice(int(c0), int(c1))


def run_prediction(model, plane: np.ndarray, pixel_size_nm: float | None, region: tuple[slice, slice] | None,
                   keep_probability: bool, tile_size: int | None, overlap: int | None, scale: Any,
                   progress=None, image_for_measure: np.ndarray | None = None,
                   valid_region: tuple[int, int, int, int] | None = None, zoom: bool = False,
                   tta: bool = False) -> dict[str, Any]:
    """Predict ``plane`` (or its ``region``) and measure the particles (Qt-free; runs in the worker)."""
    from ..core.measure.particles import measure_particles
    from ..core.segment import predict_array

    t0 = time.perf_counter()
    sub = plane if region is None else plane[region]
    pred = predict_array(model, np.asarray(sub), pixel_size_nm=pixel_size_nm, scale=scale, progress=progress,
                         keep_foreground=keep_probability, tile_size=tile_size, overlap=overlap, zoom=zoom,
                         tta=tta)
    labels = pred.labels.astype(np.int32, copy=False)
    prob = pred.foreground
    if region is not None:
        full = np.zeros(plane.shape[:2], np.int32)
        full[region] = labels
        labels = full
        if prob is not None:
            p = np.zeros(plane.shape[:2], np.uint8)
            p[region] = prob
            prob = p
    regions = [valid_region] if valid_region is not None else None
    if region is not None:
        regions = [(region[0].start, region[1].start, region[0].stop, region[1].stop)]
    img = image_for_measure if image_for_measure is not None and image_for_measure.shape == labels.shape else None
    table = measure_particles(labels, pixel_size_nm, img, class_index=pred.classes or None, regions=regions)
    return {"labels": labels, "classes": pred.classes, "probability": prob, "table": table,
            "scale": pred.scale, "scale_source": pred.scale_source, "precision": pred.precision,
            "seconds": time.perf_counter() - t0}


class PredictWidget(QWidget):
    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.state = C.state_for(napari_viewer)
        self._models: dict[str, Any] = {}
        self._worker = None
        self._pbar = None
        self._tiles = (0, 0)
        self.last_result: dict[str, Any] | None = None

        self.image_box = QComboBox()
        self.model_box = QComboBox()
        self.model_btn = QPushButton("Folder…")
        self.where = QComboBox()
        self.where.addItems(["whole image", "current view"])
        self.mode = QComboBox()
        self.mode.addItems(["replace the predictions layer", "add a new layer"])
        self.keep_prob = QCheckBox("also show the probability map")
        self.zoom = QCheckBox("second look for small particles (~2x slower)")
        self.zoom.setToolTip("particle models: segment again at 1.39x the scale and add the particles "
                             "the first pass missed (docs/model.md)")
        self.tta = QCheckBox("average 4 flipped views (~4x slower)")
        self.tta.setToolTip("average the network's maps over the image as is, flipped left-right, flipped "
                            "up-down and rotated 180 degrees: fewer spurious particles; with the second look "
                            "as well, the best few-shot F1 measured (docs/model.md)")
        adv = QGroupBox("Advanced")
        adv.setCheckable(True)
        adv.setChecked(False)
        self.advanced = adv
        self.tile = QSpinBox()
        self.tile.setRange(0, 4096)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("auto")
        self.overlap = QSpinBox()
        self.overlap.setRange(0, 512)
        self.overlap.setSpecialValueText("auto")
        self.scale = QDoubleSpinBox()
        self.scale.setRange(0.0, 16.0)
        self.scale.setDecimals(3)
        self.scale.setSpecialValueText("auto (pixel sizes, else probe)")
        af = QFormLayout(adv)
        af.addRow("Tile size (px)", self.tile)
        af.addRow("Overlap (px)", self.overlap)
        af.addRow("Scale (net px / image px)", self.scale)
        self.run_btn = QPushButton("Predict")
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image", self.image_box)
        row = QHBoxLayout()
        row.addWidget(self.model_box, 1)
        row.addWidget(self.model_btn)
        form.addRow("Model", row)
        form.addRow("Where", self.where)
        form.addRow("Result", self.mode)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.keep_prob)
        lay.addWidget(self.zoom)
        lay.addWidget(self.tta)
        lay.addWidget(adv)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._update_progress)
        self.run_btn.clicked.connect(self.predict)
        self.model_btn.clicked.connect(self._choose_folder)
        self.viewer.layers.events.inserted.connect(lambda e: self.refresh_images())
        self.viewer.layers.events.removed.connect(lambda e: self.refresh_images())
        self.state.model_changed.connect(self._model_changed)
        self.model_box.addItem(STARTER)
        self._model_changed(self.state.model_path)
        self.refresh_images()

    # -- choices -------------------------------------------------------------
    def refresh_images(self) -> None:
        cur = self.image_box.currentText()
        names = [ly.name for ly in C.image_layers(self.viewer)]
        self.image_box.blockSignals(True)
        self.image_box.clear()
        self.image_box.addItems(names)
        if cur in names:
            self.image_box.setCurrentText(cur)
        self.image_box.blockSignals(False)

    def _model_changed(self, path) -> None:
        if path is None:
            return
        text = str(path)
        if self.model_box.findText(text) < 0:
            self.model_box.addItem(text)
        self.model_box.setCurrentText(text)

    def _choose_folder(self) -> None:  # pragma: no cover - file dialog
        d = QFileDialog.getExistingDirectory(self, "Model folder (config.json + model.safetensors)")
        if d:
            self.state.set_model(d)

    def image_layer(self):
        return C.find_layer(self.viewer, self.image_box.currentText())

    def model(self):
        from ..core.segment import default_model_dir, load_model

        key = self.model_box.currentText()
        if key not in self._models:
            self._models[key] = load_model(default_model_dir() if key == STARTER else Path(key), device="auto")
        return self._models[key]

    # -- running ---------------------------------------------------------------
    def predict(self) -> None:
        """Start the prediction in a worker thread (returns at once)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        if self._worker is not None:
            return
        im = self.image_layer()
        if im is None:
            self.status.setText("open an image first")
            return
        try:
            model = self.model()
        except NanodefectError as exc:
            self.status.setText(str(exc))
            return
        plane = C.plane_of(im)
        region = view_region(self.viewer, im, plane.shape[:2]) if self.where.currentText() == "current view" else None
        info = (im.metadata or {}).get("nanodefect") or {}
        vr = info.get("valid_region")
        valid = (vr["y0"], vr["x0"], vr["y1"], vr["x1"]) if vr else None
        kwargs = dict(keep_probability=self.keep_prob.isChecked(),
                      tile_size=(self.tile.value() or None) if self.advanced.isChecked() else None,
                      overlap=(self.overlap.value() or None) if self.advanced.isChecked() else None,
                      scale=(self.scale.value() or "auto") if self.advanced.isChecked() else "auto",
                      image_for_measure=plane, valid_region=valid, zoom=self.zoom.isChecked(),
                      tta=self.tta.isChecked())
        self._tiles = (0, 0)
        self._pbar = progress(total=0, desc=f"predicting {im.name}")
        self._target = im
        self._t0 = time.perf_counter()
        self._worker = create_worker(run_prediction, model, plane, C.pixel_size_of(im), region,
                                     progress=self._tile_done, _start_thread=False, **kwargs)
        self._worker.returned.connect(self._finished)
        self._worker.errored.connect(self._failed)
        self._worker.finished.connect(self._cleanup)
        self.run_btn.setEnabled(False)
        self.status.setText("predicting…")
        self._timer.start()
        self._worker.start()

    def _tile_done(self, done: int, total: int) -> None:  # called in the worker thread
        self._tiles = (done, total)

    def _update_progress(self) -> None:
        if self._pbar is None:
            return
        done, total = self._tiles
        if total and self._pbar.total != total:
            self._pbar.total = total
        if done > self._pbar.n:
            self._pbar.update(done - self._pbar.n)

    def _finished(self, res: dict[str, Any]) -> None:
        im = self._target
        self.last_result = res
        name = C.predictions_layer_name(im)
        replace = self.mode.currentIndex() == 0
        if not replace and name in self.viewer.layers:
            k = 2
            while f"{name} [{k}]" in self.viewer.layers:
                k += 1
            name = f"{name} [{k}]"
        feats = res["table"].copy()
        feats.insert(0, "index", feats["label"].to_numpy())
        meta = {"nanodefect": {"image": im.name, "image_path": None if C.image_path_of(im) is None else str(C.image_path_of(im)),
                               "pixel_size_nm": C.pixel_size_of(im), "scale": res["scale"],
                               "scale_source": res["scale_source"], "precision": res.get("precision"),
                               "model": self.model_box.currentText()}}
        if replace and name in self.viewer.layers:
            ly = self.viewer.layers[name]
            ly.data = res["labels"]
            ly.features = feats
            ly.metadata = {**ly.metadata, **meta}
        else:
            ly = self.viewer.add_labels(res["labels"], name=name, scale=tuple(im.scale[-2:]),
                                        translate=tuple(im.translate[-2:]), features=feats, metadata=meta, opacity=0.45,
                                        units=tuple(im.units[-2:]))
        for cls in sorted(set(res["classes"].values())):
            self.state.add_class(cls)
        if len(set(res["classes"].values())) > 1:
            # several object classes: one colour per class, as in the other docks
            C.color_by_class(ly, self.state, unknown=None)
        if res["probability"] is not None:
            pname = f"{im.name} probability"
            if replace and pname in self.viewer.layers:
                self.viewer.layers[pname].data = res["probability"]
            else:
                self.viewer.add_image(res["probability"], name=pname if pname not in self.viewer.layers else f"{pname} [2]",
                                      scale=tuple(im.scale[-2:]), translate=tuple(im.translate[-2:]),
                                      units=tuple(im.units[-2:]), colormap="magma", blending="additive", opacity=0.5, contrast_limits=(0, 255))
        n = int(len(feats))
        self.status.setText(f"{n} particles in {res['seconds']:.1f} s (scale {res['scale']:.3g}: {res['scale_source']})")

    def _failed(self, exc: Exception) -> None:
        self.status.setText(f"prediction failed: {exc}")
        try:
            from napari.utils.notifications import show_error

            show_error(f"Predict: {exc}")
        except Exception:  # pragma: no cover
            pass

    def _cleanup(self) -> None:
        self._timer.stop()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._worker = None
        self.run_btn.setEnabled(True)

    @property
    def busy(self) -> bool:
        return self._worker is not None
