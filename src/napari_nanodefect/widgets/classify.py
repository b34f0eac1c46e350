"""Classify objects dock: per-particle classes (ultrastructure, fault / no fault, …).

Wiring only; the science is in :mod:`napari_nanodefect.core.objects`.

1. Choose the image and its instances layer (hand labels or predictions).
2. Add class names and, with *Click objects to assign*, click particles to give them the
   current class (shift-click clears). Assignments live in ``layer.features``
   (``class_assigned``) and the layer is coloured by class.
3. *Train & cross-validate* trains the chosen engine (random forest on FFT-radial +
   intensity + shape features, or a small CNN on 48 px crops) in the background and shows
   the k-fold balanced accuracy and confusion matrix of the assigned objects before
   anything is applied.
4. *Apply to all objects* writes ``class`` (assigned objects keep theirs),
   ``class_probability``, ``p_<class>`` and ``class_source`` into ``layer.features``,
   recolours the layer and draws the size histogram (ECD in nm) per class.

A classifier can be saved to a folder and loaded again (``nanodefect classify train``
writes the same folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
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
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import NanodefectError
from . import _common as C

if TYPE_CHECKING:  # pragma: no cover
    import napari

ENGINES = {"random forest (FFT + intensity + shape)": "rf", "CNN on object crops": "cnn"}


def train_job(image: np.ndarray, labels: np.ndarray, assigned: dict[int, str], *, engine: str = "rf",
              feature_set: str = "extended", k: int = 5, epochs: int = 40, seed: int = 0):
    """Cross-validate and train on the assigned objects (runs in a worker thread).
    Returns ``(classifier, cv result or None, note)``."""
    from ..core.objects.features import object_crops
    from ..core.objects.files import LabelledObjects, train_from_objects

    present = {int(v) for v in np.unique(labels) if v}
    assigned = {int(i): c for i, c in assigned.items() if int(i) in present}
    classes = sorted(set(assigned.values()))
    if len(classes) < 2:
        raise NanodefectError("assign objects of at least two classes first")
    ids = np.array(sorted(assigned), np.int64)
    crops, masks, ids = object_crops(image, labels, ids)
    targets = np.array([classes.index(assigned[int(i)]) for i in ids], np.int64)
    objs = LabelledObjects(crops, masks, targets, classes, ["image"] * len(ids), [str(i) for i in ids])
    smallest = int(np.bincount(targets).min())
    k_used = min(int(k), smallest)
    note = ""
    if k_used < 2:
        note = "assign at least two objects of every class to cross-validate"
        k_used = 0
    kw = {"feature_set": feature_set} if engine == "rf" else {"epochs": epochs}
    model, res = train_from_objects(objs, engine=engine, cv=k_used, seed=seed, **kw)
    return model, res, note


def cv_html(res: dict[str, Any]) -> str:
    """Balanced accuracy and the confusion matrix as a small HTML table."""
    classes = res["classes"]
    head = "".join(f"<th>{c}</th>" for c in classes)
    rows = "".join(f"<tr><th>{c}</th>" + "".join(f"<td align='right'>{int(v)}</td>" for v in row) + "</tr>"
                   for c, row in zip(classes, res["confusion"]))
    return (f"<b>{res['k']}-fold balanced accuracy {res['balanced_accuracy']:.2f} ± {res['std']:.2f}</b> "
            f"(pooled {res['pooled_balanced_accuracy']:.2f})<br>"
            f"<table cellspacing='4'><tr><th>truth \\ predicted</th>{head}</tr>{rows}</table>")


class ClassifyWidget(QWidget):
    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.state = C.state_for(napari_viewer)
        self.model = None
        self.last_cv: dict[str, Any] | None = None
        self.last_table: pd.DataFrame | None = None
        self._worker = None
        self._bound = None

        self.image_box = QComboBox()
        self.labels_box = QComboBox()
        src = QFormLayout()
        src.addRow("Image", self.image_box)
        src.addRow("Objects", self.labels_box)

        cls_box = QGroupBox("Classes")
        self.class_box = QComboBox()
        self.new_class = QLineEdit()
        self.new_class.setPlaceholderText("new class, e.g. core-shell")
        self.add_class_btn = QPushButton("Add class")
        self.click_mode = QCheckBox("Click objects to assign the class (shift-click clears)")
        self.assigned_label = QLabel("no objects assigned")
        self.assigned_label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.new_class, 1)
        row.addWidget(self.add_class_btn)
        cl = QVBoxLayout(cls_box)
        f = QFormLayout()
        f.addRow("Class", self.class_box)
        cl.addLayout(f)
        cl.addLayout(row)
        cl.addWidget(self.click_mode)
        cl.addWidget(self.assigned_label)

        tr_box = QGroupBox("Classifier")
        self.engine_box = QComboBox()
        self.engine_box.addItems(list(ENGINES))
        self.features_box = QComboBox()
        self.features_box.addItems(["extended", "groschner"])
        self.folds = QSpinBox()
        self.folds.setRange(2, 10)
        self.folds.setValue(5)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 500)
        self.epochs.setValue(40)
        self.train_btn = QPushButton("Train && cross-validate")
        self.cv_label = QLabel("—")
        self.cv_label.setWordWrap(True)
        self.apply_btn = QPushButton("Apply to all objects")
        self.apply_btn.setEnabled(False)
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("classifier folder")
        self.load_btn = QPushButton("Load")
        self.save_btn = QPushButton("Save")
        self.save_btn.setEnabled(False)
        tf = QFormLayout()
        tf.addRow("Engine", self.engine_box)
        tf.addRow("Features (forest)", self.features_box)
        tf.addRow("CV folds", self.folds)
        tf.addRow("Epochs (CNN)", self.epochs)
        frow = QHBoxLayout()
        frow.addWidget(self.folder, 1)
        frow.addWidget(self.load_btn)
        frow.addWidget(self.save_btn)
        tl = QVBoxLayout(tr_box)
        tl.addLayout(tf)
        tl.addWidget(self.train_btn)
        tl.addWidget(self.cv_label)
        tl.addWidget(self.apply_btn)
        tl.addLayout(frow)

        self.status = QLabel()
        self.status.setWordWrap(True)
        self.counts_label = QLabel()
        self.counts_label.setWordWrap(True)
        self.figure = Figure(figsize=(4.2, 2.6), dpi=90)
        self.ax = self.figure.add_subplot(111)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)

        lay = QVBoxLayout(self)
        lay.addLayout(src)
        lay.addWidget(cls_box)
        lay.addWidget(tr_box)
        lay.addWidget(self.status)
        lay.addWidget(self.counts_label)
        lay.addWidget(self.canvas, 1)

        self.add_class_btn.clicked.connect(self._add_class)
        self.new_class.returnPressed.connect(self._add_class)
        self.click_mode.toggled.connect(self._set_click_mode)
        self.train_btn.clicked.connect(self.train)
        self.apply_btn.clicked.connect(self.apply)
        self.load_btn.clicked.connect(lambda: self.load(self.folder.text().strip()))
        self.save_btn.clicked.connect(lambda: self.save(self.folder.text().strip()))
        self.engine_box.currentTextChanged.connect(self._engine_changed)
        self.labels_box.currentTextChanged.connect(lambda _: self._bind())
        self.state.classes_changed.connect(lambda _: self._refresh_classes())
        self.viewer.layers.events.inserted.connect(lambda e: self.refresh())
        self.viewer.layers.events.removed.connect(lambda e: self.refresh())
        self._classes: list[str] = []
        self._engine_changed()
        self.refresh()

    # -- layers ------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def refresh(self) -> None:
        C.fill_combo(self.image_box, [ly.name for ly in C.image_layers(self.viewer)])
        C.fill_combo(self.labels_box, [ly.name for ly in C.labels_layers(self.viewer)])
        lab = self.labels_layer()
        if lab is not None:
            im = C.image_for(self.viewer, lab)
            if im is not None:
                self.image_box.setCurrentText(im.name)
        self._bind()

    def labels_layer(self):
        return C.find_layer(self.viewer, self.labels_box.currentText())

    def image_layer(self):
        return C.find_layer(self.viewer, self.image_box.currentText())

    def _bind(self) -> None:
        lab = self.labels_layer()
        if lab is self._bound:
            return
        self._bound = lab
        if lab is not None:
            for c in sorted(set(self.assigned().values())):
                self._ensure_class(c)
        self._refresh_classes()
        self._update_assigned()

    # -- classes -------------------------------------------------------------------
    def _ensure_class(self, name: str) -> None:
        if name and name not in self._classes:
            self._classes.append(name)
        self.state.add_class(name)

    def _add_class(self) -> None:
        name = self.new_class.text().strip()
        if not name:
            return
        self._ensure_class(name)
        self.new_class.clear()
        self._refresh_classes()
        self.class_box.setCurrentText(name)

    def _refresh_classes(self) -> None:
        cur = self.class_box.currentText()
        self.class_box.blockSignals(True)
        self.class_box.clear()
        for n in self._classes:
            pm = QPixmap(12, 12)
            pm.fill(QColor(self.state.color_of(n)))
            self.class_box.addItem(QIcon(pm), n)
        if cur in self._classes:
            self.class_box.setCurrentText(cur)
        self.class_box.blockSignals(False)

    def current_class(self) -> str:
        return self.class_box.currentText()

    def assigned(self) -> dict[int, str]:
        """label -> class the user assigned (``class_assigned`` in ``layer.features``)."""
        lab = self.labels_layer()
        f = None if lab is None else lab.features
        if f is None or len(f) == 0 or "class_assigned" not in f:
            return {}
        idx = f["index"].to_numpy() if "index" in f else np.arange(len(f))
        return {int(i): str(c) for i, c in zip(idx, f["class_assigned"].to_numpy(object)) if isinstance(c, str) and c}

    def assign(self, label: int, name: str | None) -> None:
        """Give object ``label`` the class ``name`` (None clears the assignment)."""
        lab = self.labels_layer()
        if lab is None or not label:
            return
        if name:
            self._ensure_class(name)
        f = lab.features
        f = C.empty_features() if f is None or len(f.columns) == 0 else f.copy()
        if "index" not in f:
            f.insert(0, "index", np.arange(len(f), dtype=np.int64))
        if "class_assigned" not in f:
            f["class_assigned"] = pd.Series([None] * len(f), dtype=object)
        pos = np.flatnonzero(f["index"].to_numpy() == int(label))
        if pos.size == 0:
            f = pd.concat([f, pd.DataFrame([{"index": int(label)}])], ignore_index=True)
            pos = np.array([len(f) - 1])
        col = f["class_assigned"].to_numpy(object).copy()
        col[pos] = name or None
        f["class_assigned"] = col
        if name:
            cls = f["class"].to_numpy(object).copy() if "class" in f else np.full(len(f), None, object)
            cls[pos] = name
            f["class"] = cls
            if "class_source" in f:
                src = f["class_source"].to_numpy(object).copy()
                src[pos] = "assigned"
                f["class_source"] = src
        lab.features = f
        self._update_assigned()
        self.color_by_class()

    def _update_assigned(self) -> None:
        a = self.assigned()
        if not a:
            self.assigned_label.setText("no objects assigned")
            return
        counts = pd.Series(list(a.values())).value_counts().sort_index()
        self.assigned_label.setText(f"{len(a)} objects assigned: " + ", ".join(f"{c} {n}" for c, n in counts.items()))

    def color_by_class(self) -> None:
        """Colour the objects layer by class (the dock's colours; unclassified grey)."""
        lab = self.labels_layer()
        if lab is not None:
            C.color_by_class(lab, self.state, only=list(self._classes))

    # -- clicking -----------------------------------------------------------------------
    def _set_click_mode(self, on: bool) -> None:
        cbs = self.viewer.mouse_drag_callbacks
        if on:
            lab = self.labels_layer()
            if lab is None:
                self.click_mode.setChecked(False)
                self.status.setText("choose a layer of objects first")
                return
            lab.mode = "pan_zoom"
            self.viewer.layers.selection.active = lab
            if self._on_mouse not in cbs:
                cbs.append(self._on_mouse)
            self.status.setText("click objects to give them the current class")
        elif self._on_mouse in cbs:
            cbs.remove(self._on_mouse)

    def _on_mouse(self, viewer, event):
        """Viewer drag callback: a press-release without movement is a click."""
        lab = self.labels_layer()
        if lab is None or lab.mode != "pan_zoom":
            return
        if (yield from C.press_is_click(event)):
            self.click(lab.world_to_data(event.position)[-2:], clear="Shift" in event.modifiers)

    def click(self, rc, clear: bool = False) -> int | None:
        """Assign the current class to (or, with ``clear``, un-assign) the object at data
        coordinates ``rc``; returns its label or None."""
        lab = self.labels_layer()
        if lab is None:
            return None
        r, c = int(round(rc[0])), int(round(rc[1]))
        data = lab.data
        if not (0 <= r < data.shape[-2] and 0 <= c < data.shape[-1]):
            return None
        v = int(data[r, c])
        if v == 0:
            self.status.setText("no object under the cursor")
            return None
        name = None if clear else self.current_class()
        if not clear and not name:
            self.status.setText("add a class first")
            return None
        self.assign(v, name)
        self.status.setText(f"object {v}: {name or 'unassigned'}")
        return v

    # -- training ---------------------------------------------------------------------
    def _engine_changed(self) -> None:
        rf = ENGINES[self.engine_box.currentText()] == "rf"
        self.features_box.setEnabled(rf)
        self.epochs.setEnabled(not rf)

    def _inputs(self):
        lab, im = self.labels_layer(), self.image_layer()
        if lab is None or im is None:
            raise NanodefectError("choose an image and its layer of objects")
        image = C.analysis_plane_of(im)
        labels = np.asarray(lab.data)
        if labels.shape != image.shape[:2]:
            raise NanodefectError(f"the objects layer is {labels.shape[1]}x{labels.shape[0]} px but the image is "
                                  f"{image.shape[1]}x{image.shape[0]} px")
        return image, labels

    def _start(self, fn, *args, on_done, **kwargs) -> bool:
        from napari.qt.threading import create_worker

        if self._worker is not None:
            return False
        self._worker = create_worker(fn, *args, _start_thread=False, **kwargs)
        self._worker.returned.connect(on_done)
        self._worker.errored.connect(self._failed)
        self._worker.finished.connect(self._cleanup)
        for b in (self.train_btn, self.apply_btn, self.load_btn):
            b.setEnabled(False)
        self._worker.start()
        return True

    def _failed(self, exc) -> None:
        self.status.setText(f"failed: {exc}")

    def _cleanup(self) -> None:
        self._worker = None
        self.train_btn.setEnabled(True)
        self.load_btn.setEnabled(True)
        self.apply_btn.setEnabled(self.model is not None)

    def train(self) -> bool:
        """Cross-validate and train on the assigned objects in the background."""
        try:
            image, labels = self._inputs()
        except NanodefectError as exc:
            self.status.setText(str(exc))
            return False
        assigned = self.assigned()
        if len(set(assigned.values())) < 2:
            self.status.setText("assign objects of at least two classes first")
            return False
        engine = ENGINES[self.engine_box.currentText()]
        self.status.setText(f"training the {engine} classifier on {len(assigned)} objects…")
        self.cv_label.setText("cross-validating…")
        return self._start(train_job, image, labels, assigned, engine=engine,
                           feature_set=self.features_box.currentText(), k=self.folds.value(),
                           epochs=self.epochs.value(), on_done=self._trained)

    def _trained(self, result) -> None:
        model, res, note = result
        self.model = model
        self.last_cv = res
        self.cv_label.setText(cv_html(res) if res is not None else note)
        self.save_btn.setEnabled(True)
        self.status.setText(f"trained on {sum(model.config['n_per_class'].values())} objects; "
                            "check the accuracy, then apply")

    def load(self, folder: str | Path) -> bool:
        from ..core.objects.classifier import load_object_classifier

        try:
            self.model = load_object_classifier(Path(folder))
        except NanodefectError as exc:
            self.status.setText(str(exc))
            return False
        for c in self.model.classes:
            self._ensure_class(c)
        self._refresh_classes()
        cv = self.model.config.get("cross_validation")
        self.last_cv = None
        self.cv_label.setText(f"loaded; cross-validated balanced accuracy when trained: "
                              f"{cv['balanced_accuracy']:.2f} ± {cv['std']:.2f}" if cv else "loaded (no cross-validation recorded)")
        self.apply_btn.setEnabled(self._worker is None)
        self.save_btn.setEnabled(True)
        self.status.setText(f"classifier with classes {self.model.classes}")
        return True

    def save(self, folder: str | Path) -> Path | None:
        from ..core.objects.classifier import save_object_classifier

        if self.model is None or not str(folder):
            self.status.setText("train a classifier and name a folder first")
            return None
        path = save_object_classifier(self.model, Path(folder))
        self.status.setText(f"saved {path}")
        return path

    # -- applying -------------------------------------------------------------------------
    def apply(self) -> bool:
        """Classify every object of the layer in the background (see the module docstring)."""
        from ..core.objects.files import classify_objects

        if self.model is None:
            self.status.setText("train or load a classifier first")
            return False
        try:
            image, labels = self._inputs()
        except NanodefectError as exc:
            self.status.setText(str(exc))
            return False
        self.status.setText("classifying…")
        return self._start(classify_objects, self.model, image, labels, on_done=self._applied)

    def _applied(self, result) -> None:
        proba, ids = result
        lab = self.labels_layer()
        if lab is None:
            return
        classes = list(self.model.classes)
        assigned = self.assigned()
        pred = {int(i): classes[int(k)] for i, k in zip(ids, np.argmax(proba, 1))} if len(ids) else {}
        f = lab.features
        f = C.empty_features() if f is None or len(f.columns) == 0 else f.copy()
        if "index" not in f:
            f.insert(0, "index", np.arange(len(f), dtype=np.int64))
        known = set(f["index"].astype(int))
        new = [int(i) for i in ids if int(i) not in known]
        if new:
            f = pd.concat([f, pd.DataFrame({"index": new})], ignore_index=True)
        f = f[f["index"].astype(int).isin({int(i) for i in ids})].reset_index(drop=True)
        idx = f["index"].astype(int).to_numpy()
        row = {int(i): r for r, i in enumerate(ids)}
        if "class" in f and "class_before" not in f:
            f["class_before"] = f["class"]
        f["class"] = [assigned.get(i, pred.get(i)) for i in idx]
        f["class_source"] = ["assigned" if i in assigned else "classifier" for i in idx]
        f["class_probability"] = [float(proba[row[i]].max()) for i in idx]
        for j, c in enumerate(classes):
            f[f"p_{c}"] = [float(proba[row[i], j]) for i in idx]
        if "class_assigned" not in f:
            f["class_assigned"] = pd.Series([None] * len(f), dtype=object)
        lab.features = f
        for c in classes:
            self._ensure_class(c)
        self._refresh_classes()
        self.color_by_class()
        self.draw_histogram()
        n_changed = sum(1 for i in idx if i not in assigned)
        self.status.setText(f"{len(idx)} objects classified ({n_changed} by the classifier)")

    def draw_histogram(self) -> pd.DataFrame | None:
        """Sizes (ECD, nm when the pixel size is known) per class of the layer's objects."""
        from ..core.measure.histogram import plot_histogram
        from ..core.measure.particles import measure_particles, region_bounds
        from ..core.measure.population import summarize

        lab, im = self.labels_layer(), self.image_layer()
        if lab is None:
            return None
        labels = np.asarray(lab.data)
        ps = C.pixel_size_of(im) or ((lab.metadata or {}).get("nanodefect") or {}).get("pixel_size_nm")
        regions = region_bounds(labels.shape, None)
        table = measure_particles(labels, ps, class_index=C.label_classes(lab) or None, regions=regions)
        summary = summarize(table, ps, regions)
        self.ax.clear()
        colors = {c: self.state.color_of(c) for c in self._classes}
        plot_histogram(table, summary, ax=self.ax, colors=colors)
        self.figure.tight_layout()
        self.canvas.draw_idle()
        counts = table["class"].value_counts().sort_index()
        self.counts_label.setText(" · ".join(f"{c}: {n}" for c, n in counts.items()))
        self.last_table = table
        return table

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        if self._on_mouse in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
        super().closeEvent(event)
