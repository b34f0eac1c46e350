"""Calibrate & label dock: pixel size, crops, click-to-label, classes, undo, autosave.

- **Pixel size**: the :class:`~.calibration.CalibrationWidget` (file / scale bar / typed).
- **Crops**: rectangles in the Shapes layer ``"<image> crops"``; inside a crop every
  unlabelled pixel is background for training.
- **Click to label**: with the mode on, a click on a particle proposes its contour
  (:func:`napari_nanodefect.core.annotations.propose.propose_object`; the loaded model when
  "use the model" is ticked) and adds it to the Labels layer ``"<image> particles"`` with
  the chosen class; shift-click removes the particle under the cursor. Both go through
  ``Labels.data_setitem``, so napari's undo (the *Undo* button or Ctrl+Z on the layer)
  reverts them and the Measure dock sees them as edits. Painting on the layer by hand
  works as usual.
- **Autosave**: every change is written (atomically, ~1 s after the last edit) to the
  LabelMe file beside the image, ``<folder>/<stem>.json``; choosing an image whose
  LabelMe file exists restores its crops and particles.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.annotations.layerdata import annotation_path_for, set_to_arrays
from ..core.errors import NanodefectError
from . import _common as C
from .calibration import CalibrationWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari

#: a press and release closer than this (screen px) is a click, not a drag
CLICK_TOLERANCE_PX = C.CLICK_TOLERANCE_PX
AUTOSAVE_DELAY_MS = 1000
#: particles are re-counted at once after each edit up to this image size, else on autosave
COUNT_NOW_MAX_PIXELS = 2048 * 2048


class LabelWidget(QWidget):
    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.state = C.state_for(napari_viewer)
        self.calibration = CalibrationWidget(napari_viewer)
        self._model = None
        self._model_path = None
        self._diameters: list[float] = []
        self._last_click_ms: float | None = None
        self._connected: set[int] = set()
        self._restored: set[str] = set()
        self._count = 0

        cal_box = QGroupBox("Image and pixel size")
        QVBoxLayout(cal_box).addWidget(self.calibration)

        crop_box = QGroupBox("Crops (fully labelled rectangles)")
        self.crop_btn = QPushButton("Draw crop")
        self.crop_info = QLabel("no crops: the whole image counts as labelled")
        self.crop_info.setWordWrap(True)
        cl = QVBoxLayout(crop_box)
        cl.addWidget(self.crop_btn)
        cl.addWidget(self.crop_info)

        lab_box = QGroupBox("Particles")
        self.class_box = QComboBox()
        self.new_class = QLineEdit()
        self.new_class.setPlaceholderText("new class, e.g. single_site")
        self.add_class_btn = QPushButton("Add class")
        self.click_mode = QCheckBox("Click to label (shift-click removes)")
        self.use_model = QCheckBox("Use the model for proposals")
        self.use_model.setEnabled(False)
        self.color_by_class = QCheckBox("Colour particles by class")
        self.undo_btn = QPushButton("Undo")
        self.save_btn = QPushButton("Save now")
        self.count_label = QLabel()
        self.save_label = QLabel()
        self.status = QLabel()
        for w in (self.count_label, self.save_label, self.status):
            w.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Class", self.class_box)
        row = QHBoxLayout()
        row.addWidget(self.new_class)
        row.addWidget(self.add_class_btn)
        form.addRow("", row)
        ll = QVBoxLayout(lab_box)
        ll.addLayout(form)
        ll.addWidget(self.click_mode)
        ll.addWidget(self.use_model)
        ll.addWidget(self.color_by_class)
        row2 = QHBoxLayout()
        row2.addWidget(self.undo_btn)
        row2.addWidget(self.save_btn)
        ll.addLayout(row2)
        ll.addWidget(self.count_label)
        ll.addWidget(self.save_label)
        ll.addWidget(self.status)

        lay = QVBoxLayout(self)
        lay.addWidget(cal_box)
        lay.addWidget(crop_box)
        lay.addWidget(lab_box)
        lay.addStretch(1)

        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save)

        self.crop_btn.clicked.connect(self.start_crop)
        self.add_class_btn.clicked.connect(self._add_class)
        self.new_class.returnPressed.connect(self._add_class)
        self.click_mode.toggled.connect(self._set_click_mode)
        self.color_by_class.toggled.connect(lambda _: self.apply_class_colors())
        self.undo_btn.clicked.connect(self.undo)
        self.save_btn.clicked.connect(self.save)
        self.calibration.layer_box.currentTextChanged.connect(lambda _: self.image_changed())
        self.state.classes_changed.connect(self._refresh_classes)
        self.state.model_changed.connect(self._model_changed)
        self._refresh_classes(self.state.classes)
        self._model_changed(self.state.model_path)
        self.image_changed()

    # -- layers --------------------------------------------------------------
    def image_layer(self):
        return self.calibration.current_layer()

    def particles(self, create: bool = False):
        im = self.image_layer()
        if im is None:
            return None
        ly = C.particles_layer(self.viewer, im, create=create)
        if ly is not None:
            self._watch(ly)
        return ly

    def crops(self, create: bool = False):
        im = self.image_layer()
        if im is None:
            return None
        ly = C.crops_layer(self.viewer, im, create=create)
        if ly is not None:
            self._watch(ly)
        return ly

    def _watch(self, layer) -> None:
        if id(layer) in self._connected:
            return
        self._connected.add(id(layer))
        if hasattr(layer.events, "paint"):
            layer.events.paint.connect(self._changed)
        layer.events.data.connect(self._changed)
        if hasattr(layer.events, "set_data"):
            layer.events.set_data.connect(self._changed)

    def _changed(self, event=None) -> None:
        # saving waits until the edits pause; counting reads the whole image, so large
        # images are counted then too
        self._save_timer.start()
        # napari emits ``paint`` before it writes the pixels: count once the edit is done
        lab = self.particles()
        small = lab is None or lab.data.size <= COUNT_NOW_MAX_PIXELS
        QTimer.singleShot(0, lambda: self.refresh_counts(particles=small))

    def image_changed(self) -> None:
        """A different image was chosen: restore its LabelMe file once, show counts."""
        im = self.image_layer()
        if im is None:
            self.refresh_counts()
            return
        path = C.image_path_of(im)
        if path is not None and str(path) not in self._restored:
            self._restored.add(str(path))
            ann = annotation_path_for(path)
            if ann.exists() and self.particles() is None:
                try:
                    self.restore(ann)
                except (NanodefectError, ValueError) as exc:
                    self.status.setText(f"could not restore {ann.name}: {exc}")
        self.particles()  # connect the edit watchers
        self.crops()
        self.refresh_counts()

    def restore(self, path: Path) -> None:
        """Load a LabelMe file into the image's particles and crops layers."""
        from ..core.annotations import read_labelme

        im = self.image_layer()
        aset = read_labelme(path)
        h, w = C.plane_of(im).shape[:2]
        arrays = set_to_arrays(aset, (h, w))
        for name in arrays.class_names:
            self.state.add_class(name)
        lab = self.particles(create=True)
        lab.data = arrays.labels
        C.set_label_classes(lab, arrays.classes)
        if arrays.rectangles:
            crops = self.crops(create=True)
            crops.add_rectangles(arrays.rectangles)
        self.status.setText(f"restored {len(aset.objects)} particles and {len(aset.crops)} crops from {path.name}")
        self._save_timer.stop()  # nothing new to save

    # -- crops -----------------------------------------------------------------
    def start_crop(self) -> None:
        crops = self.crops(create=True)
        if crops is None:
            self.status.setText("open an image first")
            return
        self.viewer.layers.selection.active = crops
        crops.mode = "add_rectangle"
        self.status.setText("drag a rectangle around a region you will label completely")

    # -- classes -----------------------------------------------------------------
    def _add_class(self) -> None:
        name = self.new_class.text().strip()
        if name:
            self.state.add_class(name)
            self.class_box.setCurrentText(name)
            self.new_class.clear()

    def _refresh_classes(self, names) -> None:
        current = self.class_box.currentText()
        self.class_box.blockSignals(True)
        self.class_box.clear()
        for n in names:
            pm = QPixmap(12, 12)
            pm.fill(QColor(self.state.color_of(n)))
            self.class_box.addItem(QIcon(pm), n)
        self.class_box.setCurrentText(current if current in names else names[0])
        self.class_box.blockSignals(False)

    def current_class(self) -> str:
        return self.class_box.currentText() or C.DEFAULT_CLASS

    def apply_class_colors(self) -> None:
        lab = self.particles()
        if lab is None:
            return
        from napari.utils.colormaps import label_colormap

        if not self.color_by_class.isChecked():
            lab.colormap = label_colormap(49)
            return
        C.color_by_class(lab, self.state, unknown=None)

    # -- model -----------------------------------------------------------------
    def _model_changed(self, path) -> None:
        self._model = None
        self._model_path = path
        self.use_model.setEnabled(path is not None)
        if path is None:
            self.use_model.setChecked(False)

    def _loaded_model(self):
        if self._model is None and self._model_path is not None:
            from ..core.segment import load_model

            self._model = load_model(self._model_path, device="auto")
        return self._model

    # -- click to label ----------------------------------------------------------
    def _set_click_mode(self, on: bool) -> None:
        cbs = self.viewer.mouse_drag_callbacks
        if on:
            lab = self.particles(create=True)
            if lab is None:
                self.click_mode.setChecked(False)
                self.status.setText("open an image first")
                return
            lab.mode = "pan_zoom"
            self.viewer.layers.selection.active = lab
            if self._on_mouse not in cbs:
                cbs.append(self._on_mouse)
            self.status.setText("click a particle to outline it; shift-click removes one")
        elif self._on_mouse in cbs:
            cbs.remove(self._on_mouse)

    def _on_mouse(self, viewer, event):
        """Viewer drag callback: a press-release without movement is a click."""
        lab = self.particles()
        if lab is None or lab.mode != "pan_zoom":
            return  # the user is painting or drawing: leave the event to napari
        if not (yield from C.press_is_click(event, CLICK_TOLERANCE_PX)):
            return
        data = lab.world_to_data(event.position)
        self.click(data[-2:], remove="Shift" in event.modifiers)

    def click(self, rc, remove: bool = False) -> int | None:
        """Propose (or, with ``remove``, delete) the particle at data coordinates ``rc``.

        Returns the label value added or removed, or None. Errors go to the status line.
        """
        t0 = time.perf_counter()
        im = self.image_layer()
        lab = self.particles(create=True)
        if im is None or lab is None:
            self.status.setText("open an image first")
            return None
        data = lab.data
        r, c = int(round(rc[0])), int(round(rc[1]))
        if not (0 <= r < data.shape[0] and 0 <= c < data.shape[1]):
            self.status.setText("click inside the image")
            return None
        if remove:
            v = int(data[r, c])
            if v == 0:
                self.status.setText("no particle under the cursor")
                return None
            self._remove_label(lab, v, r, c)
            self.status.setText(f"removed particle {v}")
            self._last_click_ms = 1e3 * (time.perf_counter() - t0)
            return v
        from ..core.annotations.propose import propose_object

        model = None
        try:
            if self.use_model.isChecked():
                model = self._loaded_model()
            diam = float(np.median(self._diameters[-50:])) if self._diameters else None
            prop = propose_object(C.plane_of(im), (float(rc[0]), float(rc[1])), diameter_px=diam, labels=data,
                                  model=model, pixel_size_nm=C.pixel_size_of(im))
        except NanodefectError as exc:
            self.status.setText(str(exc))
            return None
        rows, cols = prop.indices()
        if rows.size == 0:
            self.status.setText("nothing to add here")
            return None
        new = self._next_label(lab)
        name = self.current_class()
        C.set_label_classes(lab, {new: name})  # the class first: edit listeners read it
        lab.data_setitem((rows, cols), new)
        lab.selected_label = new
        self._diameters.append(prop.diameter_px)
        if self.color_by_class.isChecked():
            self.apply_class_colors()
        self._last_click_ms = 1e3 * (time.perf_counter() - t0)
        self.status.setText(f"added {name} {new} ({prop.method}, {prop.diameter_px:.1f} px across) "
                            f"in {self._last_click_ms:.0f} ms")
        return new

    @staticmethod
    def _next_label(lab) -> int:
        f = lab.features
        top = int(f["index"].max()) if f is not None and len(f) and "index" in f else 0
        return max(top, int(lab.data.max())) + 1

    @staticmethod
    def _remove_label(lab, v: int, r: int, c: int) -> None:
        f = lab.features
        sl = None
        if f is not None and len(f) and {"index", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"} <= set(f.columns):
            row = f[f["index"] == v]
            if len(row) == 1 and np.isfinite(row[["bbox_y0", "bbox_y1"]].to_numpy(float)).all():
                y0, x0, y1, x1 = (int(row[k].iloc[0]) for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"))
                if y0 <= r < y1 and x0 <= c < x1:
                    sl = (slice(y0, y1), slice(x0, x1))
        if sl is None:
            rows, cols = np.nonzero(lab.data == v)
        else:
            rr, cc = np.nonzero(lab.data[sl] == v)
            rows, cols = rr + sl[0].start, cc + sl[1].start
        lab.data_setitem((rows, cols), 0)

    def undo(self) -> None:
        lab = self.particles()
        if lab is not None:
            lab.undo()
            self._changed()

    # -- status and saving -------------------------------------------------------
    def refresh_counts(self, particles: bool = True) -> None:
        lab, crops = self.particles(), self.crops()
        n = self._count
        if lab is None:
            n = 0
        elif particles:
            n = int(np.count_nonzero(np.bincount(np.asarray(lab.data).ravel().astype(np.int64, copy=False))[1:]))
        self._count = n
        k = len(crops.data) if crops is not None else 0
        self.count_label.setText(f"{n} particle{'s' * (n != 1)} labelled" + (f" in {k} crop{'s' * (k != 1)}" if k else ""))
        self.crop_info.setText(f"{k} crop{'s' * (k != 1)}" if k else "no crops: the whole image counts as labelled")

    def annotation_path(self) -> Path | None:
        p = C.image_path_of(self.image_layer())
        return None if p is None else annotation_path_for(p)

    def save(self) -> Path | None:
        """Write the image's particles and crops to its LabelMe file (atomic)."""
        from ..core.annotations import write_labelme

        self._save_timer.stop()
        self.refresh_counts()
        im = self.image_layer()
        target = self.annotation_path()
        if im is None:
            return None
        if target is None:
            self.save_label.setText("not saved: the image has no file (use Export)")
            return None
        aset = C.layer_annotations(im, self.particles(), self.crops())
        try:
            write_labelme(aset, target, embed_image=False)
        except NanodefectError as exc:
            self.save_label.setText(f"autosave failed: {exc}")
            return None
        self.save_label.setText(f"saved {len(aset.objects)} particles, {len(aset.crops)} crops to {target.name} "
                                f"at {time.strftime('%H:%M:%S')}")
        return target

    def closeEvent(self, event):  # pragma: no cover - GUI teardown
        if self._save_timer.isActive():
            self.save()
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        super().closeEvent(event)
