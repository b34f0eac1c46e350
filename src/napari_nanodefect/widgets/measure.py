"""Measure dock: the particle table of an instances Labels layer, its summary and size histogram.

The table lives in ``layer.features`` of the Labels layer (``index`` = label value, the
``class`` column kept), so napari's features table, the status bar and the other docks
see it. The summary block (count, edge-corrected estimate, d10/d50/d90, mean ± std,
density, coverage, per-class counts) and the histogram (ECD in nm, stacked per class,
log-normal fit) come from :mod:`napari_nanodefect.core.measure`.

Live update (see docs/measure_widget.md)
----------------------------------------
- ``events.paint`` (paint, erase, fill, polygon, ``data_setitem`` — the *Delete selected
  label* button — and every finished brush stroke): the history atoms in ``event.value``
  give the changed label values (old values and new value) and the edited bounding box.
  napari emits the event *before* it writes the pixels of a single edit, so the atoms are
  read at once and the re-measurement (``ParticleMeasurer.update``) runs from a zero-delay
  single-shot timer, i.e. right after the edit returns to the event loop (``table()`` and
  ``summary()`` run it at once if it is pending).
- undo / redo (``layer.undo()``, ``layer.redo()``, Ctrl+Z, Ctrl+Shift+Z) emit no paint
  event in napari 0.9: they replay history through ``Labels._load_history(before, after,
  undoing)``. A small hook on the *layer instance* (``layer._load_history``, shared by all
  docks listening on that layer, removed when the last one leaves) reads the history item
  about to be replayed, lets napari replay it, then hands the atoms to the same path as a
  paint event. Without that private method (another napari) ``undo``/``redo`` are hooked
  the same way and trigger a full re-measure.
- ``layer.data = ...`` (``events.data``), a new pixel size (image ``events.scale``) or
  edited crops (with *only inside crops*) re-measure the whole layer.
- ``layer.features`` (the table) is updated on every edit; the summary block and the
  histogram are refreshed together by a 100 ms single-shot timer (at most ~10 times a
  second while painting; the histogram only while the dock is visible). ``summary()``
  always returns an up-to-date summary.
- classes: a label's class is kept in a per-layer memory (label -> last known class, read
  from ``layer.features`` whenever another dock changes them), so a deleted particle that
  comes back by undo keeps its class; labels never classified get the default class.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.annotations.layerdata import DEFAULT_CLASS, clip_crop, rectangle_to_crop
from ._common import (
    PARTICLES_SUFFIX,
    analysis_plane_of,
    crops_layer_name,
    find_layer,
    image_for,
    image_layers,
    label_classes,
    labels_layers,
    pixel_size_of,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["MeasureWidget", "edit_extent"]

#: summary and histogram refreshes are throttled to one per this many milliseconds
DISPLAY_INTERVAL_MS = 100


# ----------------------------------------------------------------------------- history atoms


def _values(a: Any) -> set[int]:
    """Distinct integer values of a scalar or array (fast path for a constant array)."""
    v = np.asarray(a)
    if v.size == 0:
        return set()
    if v.ndim == 0:
        return {int(v)}
    v = v.ravel()
    lo, hi = v.min(), v.max()
    if lo == hi:
        return {int(lo)}
    return set(np.unique(v).tolist())


def edit_extent(atoms: Iterable[Any], shape: tuple[int, int]) -> tuple[set[int], tuple[int, int, int, int] | None]:
    """Changed label values and the bounding box ``(y0, x0, y1, x1)`` (end exclusive, last
    two axes) of napari 0.9 Labels history atoms: ``_MaskedPaintAtom(slice_key, mask,
    old_values, new_value)`` (paint, fill, polygon) or ``(indices, old_values, new_values)``
    (``data_setitem``). Raises ``TypeError`` for an atom of another shape."""
    h, w = int(shape[-2]), int(shape[-1])
    changed: set[int] = set()
    y0, x0, y1, x1 = h, w, 0, 0
    for atom in atoms:
        if hasattr(atom, "slice_key") and hasattr(atom, "new_value"):
            sy, sx = atom.slice_key[-2:]
            ay0, ay1 = sy.start or 0, h if sy.stop is None else sy.stop
            ax0, ax1 = sx.start or 0, w if sx.stop is None else sx.stop
            changed |= _values(atom.old_values)
            changed |= _values(atom.new_value)
        elif isinstance(atom, (tuple, list)) and len(atom) == 3:
            indices, old, new = atom
            if isinstance(indices, tuple) and all(isinstance(s, slice) for s in indices):
                sy, sx = indices[-2:]
                ay0, ay1 = sy.start or 0, h if sy.stop is None else sy.stop
                ax0, ax1 = sx.start or 0, w if sx.stop is None else sx.stop
            else:
                iy = np.asarray(indices[-2]).ravel()
                ix = np.asarray(indices[-1]).ravel()
                if iy.size == 0:
                    continue
                ay0, ay1 = int(iy.min()), int(iy.max()) + 1
                ax0, ax1 = int(ix.min()), int(ix.max()) + 1
            changed |= _values(old)
            changed |= _values(new)
        else:
            raise TypeError(f"unknown Labels history atom {type(atom).__name__}")
        y0, x0, y1, x1 = min(y0, int(ay0)), min(x0, int(ax0)), max(y1, int(ay1)), max(x1, int(ax1))
    box = (max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)) if y1 > y0 and x1 > x0 else None
    return changed, box


def _history_listeners(layer) -> list:
    """The listeners of the undo/redo hook of a Labels layer instance (installed on first
    use): callables ``(atoms | None)``, ``None`` meaning "unknown change, measure all"."""
    hook = layer.__dict__.get("_load_history")
    if hook is not None and hasattr(hook, "_nanodefect_listeners"):
        return hook._nanodefect_listeners
    listeners: list = []

    def notify(atoms):
        for ref in list(listeners):
            cb = ref()
            if cb is not None:
                cb(atoms)

    if hasattr(type(layer), "_load_history"):
        original = layer._load_history

        def _load_history(before, after, undoing=True):
            item = list(before[-1]) if len(before) else None
            original(before, after, undoing)
            if item:
                notify(item)

        _load_history._nanodefect_listeners = listeners
        layer._load_history = _load_history
    else:  # pragma: no cover - a napari without _load_history: hook undo/redo, measure all
        for name in ("undo", "redo"):
            original = getattr(layer, name)

            def hooked(_original=original):
                _original()
                notify(None)

            hooked._nanodefect_listeners = listeners
            setattr(layer, name, hooked)
        layer._load_history = hooked  # marker for the lookup above
    return listeners


def _remove_history_listener(layer, callback) -> None:
    hook = layer.__dict__.get("_load_history")
    if hook is None or not hasattr(hook, "_nanodefect_listeners"):
        return
    listeners = hook._nanodefect_listeners
    listeners[:] = [r for r in listeners if r() is not None and r() != callback]
    if not listeners:
        for name in ("_load_history", "undo", "redo"):
            fn = layer.__dict__.get(name)
            if fn is not None and getattr(fn, "_nanodefect_listeners", None) is listeners:
                del layer.__dict__[name]


# ----------------------------------------------------------------------------- the dock


def _fmt(v: Any, spec: str = ".4g", unit: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    return f"{v:{spec}}{unit}"


class MeasureWidget(QWidget):
    """Measure dock (see the module docstring)."""

    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self._layer = None  # the Labels layer we listen to
        self._image = None
        self._crops = None
        self._pm = None  # ParticleMeasurer of the current layer
        self._shared = True  # the measurer's label array is the layer's data
        self._regions: list[tuple[int, int, int, int]] | None = None
        self._pixel_size: float | None = None
        self._table: pd.DataFrame | None = None
        self._summary: dict[str, Any] | None = None
        self._summary_dirty = False
        self._class_memory: dict[int, str] = {}
        self._pending_changed: set[int] = set()
        self._pending_box: tuple[int, int, int, int] | None = None
        self._pending_full = False
        self._pending_classes = False
        self._stale = False  # edits went by while Live was off
        self._setting_features = False
        self._layer_features_changed = True  # classes in layer.features not read yet
        self._histogram_dirty = False
        self._closed = False
        #: seconds taken by the last re-measurement (ParticleMeasurer.update + layer.features)
        self.last_update_s = 0.0
        #: seconds taken by the last summary + histogram refresh (without the canvas paint)
        self.last_display_s = 0.0

        self.layer_box = QComboBox()
        self.crops_check = QCheckBox("only inside crops")
        self.crops_check.setToolTip("analyse only the rectangles of the '<image> crops' layer "
                                    "(default: the image minus its info bar)")
        self.edge_box = QComboBox()
        self.edge_box.addItems(["miles-lantuejoul", "exclude", "none"])
        self.edge_box.setToolTip("edge correction of particles cut by the border of the analysed region")
        self.measure_btn = QPushButton("Measure")
        self.live_check = QCheckBox("Live")
        self.live_check.setChecked(True)
        self.live_check.setToolTip("re-measure the touched particles after each paint, erase, fill, "
                                   "polygon, delete, undo and redo")
        self.delete_btn = QPushButton("Delete selected label")
        self.delete_btn.setToolTip("set the pixels of the layer's selected label to 0 (undoable)")
        self.summary_label = QLabel("not measured yet")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextFormat(Qt.TextFormat.RichText)
        self.bins_spin = QSpinBox()
        self.bins_spin.setRange(0, 500)
        self.bins_spin.setSpecialValueText("auto")
        self.bins_spin.setValue(0)
        self.status = QLabel()
        self.status.setWordWrap(True)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.5, 3.2), dpi=90)
        self.ax = self.figure.add_subplot(111)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

        form = QFormLayout()
        form.addRow("Instances", self.layer_box)
        opts = QHBoxLayout()
        opts.addWidget(self.crops_check)
        opts.addWidget(QLabel("edge correction"))
        opts.addWidget(self.edge_box)
        form.addRow(opts)
        row = QHBoxLayout()
        row.addWidget(self.measure_btn)
        row.addWidget(self.live_check)
        row.addWidget(self.delete_btn)
        form.addRow(row)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.summary_label)
        bins_row = QHBoxLayout()
        bins_row.addWidget(QLabel("Histogram bins"))
        bins_row.addWidget(self.bins_spin)
        bins_row.addStretch(1)
        lay.addLayout(bins_row)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.status)

        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(0)
        self._flush_timer.timeout.connect(self.flush)
        self._display_timer = QTimer(self)
        self._display_timer.setSingleShot(True)
        self._display_timer.setInterval(DISPLAY_INTERVAL_MS)
        self._display_timer.timeout.connect(self.refresh_display)

        self.measure_btn.clicked.connect(lambda: self.measure())
        self.delete_btn.clicked.connect(lambda: self.delete_selected())
        self.live_check.toggled.connect(self._on_live_toggled)
        self.crops_check.toggled.connect(lambda _: self._regions_changed())
        self.edge_box.currentTextChanged.connect(lambda _: self._edge_correction_changed())
        self.bins_spin.valueChanged.connect(lambda _: self.redraw_histogram())
        self.layer_box.currentTextChanged.connect(lambda _: self._set_layer(self.current_layer()))
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.refresh_layers()

    # ------------------------------------------------------------------ public API
    def current_layer(self):
        name = self.layer_box.currentText()
        return find_layer(self.viewer, name) if name else None

    def table(self) -> pd.DataFrame | None:
        """The current particle table (a copy; pending live edits applied first), or None."""
        self.flush()
        return None if self._table is None else self._table.copy()

    def summary(self) -> dict[str, Any] | None:
        """The current summary (``core.measure.population.summarize``), or None."""
        self.flush()
        self._ensure_summary()
        return self._summary

    @property
    def pending(self) -> bool:
        """A live update is waiting for the event loop."""
        return bool(self._pending_changed or self._pending_full or self._pending_classes)

    def measure(self) -> pd.DataFrame | None:
        """Measure the whole layer (button *Measure*)."""
        from ..core.measure.particles import ParticleMeasurer

        self._clear_pending()
        layer = self.current_layer()
        if layer is not self._layer:
            self._set_layer(layer)
        if layer is None:
            self.status.setText("add or choose a Labels layer of instances first")
            return None
        if getattr(layer, "multiscale", False) or np.ndim(layer.data) != 2:
            self.status.setText("the Measure dock handles 2-D, single-scale label layers only")
            return None
        t0 = time.perf_counter()
        data = np.asarray(layer.data)
        self._bind_image(self._image_of(layer))
        self._pixel_size = pixel_size_of(self._image) or pixel_size_of(layer)
        image = None
        if self._image is not None:
            try:
                plane = analysis_plane_of(self._image)
                image = plane if plane.shape == data.shape else None
            except Exception:  # pragma: no cover - an image that is not a plane
                image = None
        self._regions = self._analysed_regions(data.shape)
        if self._layer_features_changed:
            self._class_memory.update(label_classes(layer))
            self._layer_features_changed = False
        # class_index is this dict itself: the class of a label new to the table (painted,
        # or restored by undo) is its last known one, else the default class
        self._pm = ParticleMeasurer(data, self._pixel_size, image, [DEFAULT_CLASS], self._class_memory,
                                    self._regions)
        self._shared = self._pm.labels is data
        self._stale = False
        self._publish()
        self.last_update_s = time.perf_counter() - t0
        self.refresh_display()
        unit = "" if self._pixel_size else " — pixel size unknown: sizes in px (set it in the Calibration dock)"
        self.status.setText(f"measured {len(self._table)} particles in {self.last_update_s:.2f} s{unit}")
        return self._table

    def flush(self) -> None:
        """Apply the pending live edits now (normally run by a zero-delay timer)."""
        self._flush_timer.stop()
        if not self.pending:
            return
        layer = self._layer
        if layer is None:
            self._clear_pending()
            return
        if self._pending_full or self._pm is None or self._stale:
            self.measure()
            return
        t0 = time.perf_counter()
        pm = self._pm
        changed, box = self._pending_changed, self._pending_box
        self._clear_pending()
        if changed - {0} and box is None:
            self.measure()
            return
        upd = None
        if self._layer_features_changed:  # another dock set classes: O(n), only then
            upd = self._classes_from_features()
        # remember the class of the touched particles (a deleted one keeps it for undo)
        t = self._table
        if changed and t is not None:
            m = np.isin(t["label"].to_numpy(), np.fromiter(changed, np.int64))
            if m.any():
                self._class_memory.update(zip(t["label"].to_numpy()[m].tolist(), t["class"].to_numpy()[m].tolist()))
        region = None
        if box is not None:
            region = (slice(box[0], box[2]), slice(box[1], box[3]))
            if not self._shared:  # the measurer holds a converted copy (e.g. of int64 data)
                pm.labels[region] = np.asarray(layer.data[region])
        pm.update(sorted(changed), region, classes=upd or None)
        self._publish()
        self.last_update_s = time.perf_counter() - t0
        if not self._display_timer.isActive():  # summary + histogram: at most every 100 ms
            self._display_timer.start()

    def delete_selected(self) -> None:
        """Set the pixels of the layer's selected label to 0 through ``data_setitem``
        (undoable; emits ``paint``, so the table follows)."""
        layer = self.current_layer()
        if layer is None:
            return
        lab = int(layer.selected_label)
        if lab == 0:
            self.status.setText("select the label to delete (picker, or the label spin box)")
            return
        data = layer.data
        box = None
        self.flush()
        t = self._table
        if t is not None and not self._stale and layer is self._layer:
            rows = np.flatnonzero(t["label"].to_numpy() == lab)
            if rows.size:
                r = t.iloc[int(rows[0])]
                box = (int(r["bbox_y0"]), int(r["bbox_x0"]), int(r["bbox_y1"]), int(r["bbox_x1"]))
        if box is not None:
            win = np.asarray(data[box[0]:box[2], box[1]:box[3]])
            ys, xs = np.nonzero(win == lab)
            ys, xs = ys + box[0], xs + box[1]
        else:
            ys, xs = np.nonzero(np.asarray(data) == lab)
        if ys.size == 0:
            self.status.setText(f"label {lab} is not in the layer")
            return
        layer.data_setitem((ys, xs), 0)
        self.status.setText(f"deleted label {lab} ({ys.size} px); undo with Ctrl+Z")

    def refresh_display(self) -> None:
        """Summary block and histogram from the current table (run by a 100 ms single-shot
        timer after live edits, so at most ~10 times a second while painting)."""
        self._display_timer.stop()
        t0 = time.perf_counter()
        self._ensure_summary()
        if self.isVisible():
            self.redraw_histogram()
        else:  # a hidden (closed, tabbed) dock: redraw when shown
            self._histogram_dirty = True
        self.last_display_s = time.perf_counter() - t0

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self._closed:  # shown again after closeEvent: listen again
            self._closed = False
            self.viewer.layers.events.inserted.connect(self._on_layers_changed)
            self.viewer.layers.events.removed.connect(self._on_layers_changed)
            self.refresh_layers()
        if self._histogram_dirty:
            self.redraw_histogram()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Stop listening to the viewer and the layer (and remove the undo hook)."""
        self._closed = True
        self._flush_timer.stop()
        self._display_timer.stop()
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            emitter.disconnect(self._on_layers_changed)
        self._set_layer(None)
        super().closeEvent(event)

    def redraw_histogram(self) -> None:
        """Redraw the histogram now (bins from the spin box, 0 = numpy's 'auto')."""
        from ..core.measure.histogram import plot_histogram

        self._ensure_summary()
        self._histogram_dirty = False
        self.ax.clear()
        if self._table is None or self._summary is None:
            self.canvas.draw_idle()
            return
        bins = self.bins_spin.value() or "auto"
        try:
            plot_histogram(self._table, self._summary, bins=bins, ax=self.ax)
        except Exception as e:  # pragma: no cover - degenerate data must not break the dock
            self.ax.clear()
            self.ax.text(0.5, 0.5, f"no histogram: {e}", ha="center", va="center", transform=self.ax.transAxes)
        self.canvas.draw_idle()

    # ------------------------------------------------------------------ layers and events
    def refresh_layers(self) -> None:
        ly = self._layer
        current = ly.name if ly is not None and ly in self.viewer.layers else self.layer_box.currentText()
        names = [ly.name for ly in labels_layers(self.viewer)]
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)
        else:
            preferred = [n for n in names if n.endswith(PARTICLES_SUFFIX)]
            if preferred:
                self.layer_box.setCurrentText(preferred[0])
        self.layer_box.blockSignals(False)
        self._set_layer(self.current_layer())

    def _on_layers_changed(self, event=None) -> None:
        self.refresh_layers()
        if self._layer is not None:
            self._bind_image(self._image_of(self._layer))
        if self.crops_check.isChecked():
            self._connect_crops()

    def _set_layer(self, layer) -> None:
        if layer is self._layer:
            return
        old = self._layer
        if old is not None:
            for name, cb in self._layer_callbacks():
                getattr(old.events, name).disconnect(cb)
            _remove_history_listener(old, self._on_history)
        self._bind_image(None)
        self._layer = layer
        self._pm = None
        self._table = None
        self._summary = None
        self._summary_dirty = False
        self._class_memory = {}
        self._layer_features_changed = True
        self._clear_pending()
        if layer is not None:
            for name, cb in self._layer_callbacks():
                getattr(layer.events, name).connect(cb)
            _history_listeners(layer).append(weakref.WeakMethod(self._on_history))
            self._bind_image(self._image_of(layer))
            if self.crops_check.isChecked():
                self._connect_crops()
        self.summary_label.setText("not measured yet — press Measure (or paint with Live on)")
        self.redraw_histogram()

    def _layer_callbacks(self):
        return (("paint", self._on_paint), ("data", self._on_data), ("features", self._on_features),
                ("name", self._on_layers_changed))

    def _image_of(self, layer):
        """The micrograph of an instances layer: ``"<image> particles"`` by name, else the
        only image layer of the same 2-D shape (e.g. a sample's ground-truth labels)."""
        img = image_for(self.viewer, layer)
        if img is None:
            shape = np.shape(layer.data)[-2:]
            same = [im for im in image_layers(self.viewer)
                    if not getattr(im, "multiscale", False) and np.shape(im.data)[:2] == shape]
            img = same[0] if len(same) == 1 else None
        return img

    def _bind_image(self, image) -> None:
        """Follow the image layer of the instances (its scale = the pixel size)."""
        if image is self._image:
            return
        if self._image is not None:
            try:
                self._image.events.scale.disconnect(self._on_image_scale)
            except Exception:  # pragma: no cover
                pass
        self._image = image
        if image is not None:
            image.events.scale.connect(self._on_image_scale)

    def _connect_crops(self) -> None:
        img = self._image
        crops = find_layer(self.viewer, crops_layer_name(img)) if img is not None else None
        if crops is self._crops:
            return
        if self._crops is not None:
            try:
                self._crops.events.data.disconnect(self._on_crops)
            except Exception:  # pragma: no cover
                pass
        self._crops = crops
        if crops is not None:
            crops.events.data.connect(self._on_crops)

    def _on_paint(self, event) -> None:
        if not self.live_check.isChecked():
            self._stale = True
            return
        layer = self._layer
        try:
            changed, box = edit_extent(event.value, np.shape(layer.data))
        except (TypeError, ValueError, AttributeError):  # pragma: no cover - unknown history shape
            self._pending_full = True
            self._flush_timer.start()
            return
        self._add_pending(changed, box)

    def _on_history(self, atoms) -> None:
        """undo/redo replayed ``atoms`` (None: unknown change)."""
        if not self.live_check.isChecked():
            self._stale = True
            return
        if atoms is None:
            self._pending_full = True
            self._flush_timer.start()
            return
        try:
            changed, box = edit_extent(atoms, np.shape(self._layer.data))
        except (TypeError, ValueError, AttributeError):  # pragma: no cover
            self._pending_full = True
            self._flush_timer.start()
            return
        self._add_pending(changed, box)

    def _add_pending(self, changed: set[int], box) -> None:
        if not changed and box is None:
            return
        self._pending_changed |= changed
        if box is not None:
            pb = self._pending_box
            self._pending_box = box if pb is None else (min(pb[0], box[0]), min(pb[1], box[1]),
                                                        max(pb[2], box[2]), max(pb[3], box[3]))
        self._flush_timer.start()

    def _on_data(self, event=None) -> None:
        if not self.live_check.isChecked():
            self._stale = True
            return
        if self._pm is None and self._table is None:
            return
        self._pending_full = True
        self._flush_timer.start()

    def _on_features(self, event=None) -> None:
        if self._setting_features:
            return
        self._layer_features_changed = True  # read the classes at the next update
        if self._pm is not None and self.live_check.isChecked():
            self._pending_classes = True
            self._flush_timer.start()

    def _on_image_scale(self, event=None) -> None:
        ps = pixel_size_of(self._image) or pixel_size_of(self._layer)
        if self._pm is not None and ps != self._pixel_size:
            self._regions_changed()

    def _on_crops(self, event=None) -> None:
        if self.crops_check.isChecked():
            self._regions_changed()

    def _regions_changed(self) -> None:
        if self.crops_check.isChecked():
            self._connect_crops()
        if self._pm is None:
            return
        if self.live_check.isChecked():
            self._pending_full = True
            self._flush_timer.start()
        else:
            self._stale = True

    def _on_live_toggled(self, on: bool) -> None:
        if on and self._stale and self._pm is not None:
            self._pending_full = True
            self._flush_timer.start()

    def _clear_pending(self) -> None:
        self._pending_changed = set()
        self._pending_box = None
        self._pending_full = False
        self._pending_classes = False

    # ------------------------------------------------------------------ helpers
    def _classes_from_features(self) -> dict[int, str]:
        """Read the classes other docks put in ``layer.features`` into the class memory
        (label -> last known class); return those that differ from the measured table."""
        self._layer_features_changed = False
        feats = label_classes(self._layer) if self._layer is not None else {}
        self._class_memory.update(feats)
        t = self._pm.table
        current = dict(zip(t["label"].tolist(), t["class"].tolist()))
        return {k: v for k, v in feats.items() if k in current and current[k] != v}

    def _analysed_regions(self, shape) -> list[tuple[int, int, int, int]] | None:
        h, w = int(shape[0]), int(shape[1])
        img = self._image
        if self.crops_check.isChecked() and img is not None:
            self._connect_crops()
            crops = self._crops
            regions = []
            if crops is not None:
                for data, kind in zip(crops.data, crops.shape_type):
                    if kind not in ("rectangle", "polygon"):
                        continue
                    c = clip_crop(rectangle_to_crop(np.asarray(data)[:, -2:]), (h, w))
                    if c is not None:
                        sy, sx = c.pixel_slices()
                        regions.append((sy.start, sx.start, sy.stop, sx.stop))
            if regions:
                return regions
            self.status.setText("no crops drawn: measuring the whole valid region")
        info = ((img.metadata or {}).get("nanodefect") or {}) if img is not None else {}
        vr = info.get("valid_region")
        if vr:
            y0, x0 = max(int(vr.get("y0", 0)), 0), max(int(vr.get("x0", 0)), 0)
            y1, x1 = min(int(vr.get("y1", h)), h), min(int(vr.get("x1", w)), w)
            if y1 > y0 and x1 > x0:
                return [(y0, x0, y1, x1)]
        return None

    def _features_of(self, table: pd.DataFrame) -> pd.DataFrame:
        """``layer.features``: ``index`` = label, the measurements, and any extra columns
        other docks had put there (matched by label)."""
        f = table.copy()
        f.insert(0, "index", f["label"].to_numpy())
        old = self._layer.features if self._layer is not None else None
        if old is not None and len(old.columns) and "index" in old:
            extra = [c for c in old.columns if c not in f.columns]
            if extra:
                o = old.drop_duplicates("index").set_index("index")[extra]
                for c in extra:
                    f[c] = o[c].reindex(f["index"].to_numpy()).to_numpy()
        return f

    def _publish(self) -> None:
        """The measurer's table -> ``layer.features``; the summary is now out of date."""
        table = self._pm.table
        features = self._features_of(table)
        self._table = table.copy()
        self._setting_features = True
        try:
            self._layer.features = features
        finally:
            self._setting_features = False
        self._summary_dirty = True

    def _ensure_summary(self) -> None:
        """Summarize the table (and fill the summary block) if it changed since."""
        from ..core.measure.population import summarize

        if not self._summary_dirty or self._table is None:
            return
        regions = self._regions or [(0, 0, *self._pm.labels.shape)]
        self._summary = summarize(self._table, self._pixel_size, regions,
                                  edge_correction=self.edge_box.currentText())
        self._summary_dirty = False
        self.summary_label.setText(self._summary_html(self._summary))

    def _edge_correction_changed(self) -> None:
        if self._table is None:
            return
        self._summary_dirty = True
        self.refresh_display()

    @staticmethod
    def _summary_html(s: dict[str, Any]) -> str:
        nm = s.get("pixel_size_nm") is not None
        u = " nm" if nm else ""
        lines = [
            (f"<b>{s['count']}</b> particles ({s['count_edge_touching']} touching the edge) · "
             f"estimated {_fmt(s.get('count_estimated'), '.1f')} ({s['edge_correction']})"),
        ]
        if nm:
            lines.append(f"d10 / d50 / d90: {_fmt(s.get('d10_nm'), '.3g')} / <b>{_fmt(s.get('d50_nm'), '.3g')}</b> / "
                         f"{_fmt(s.get('d90_nm'), '.3g')}{u}")
            lines.append(f"mean ± std: {_fmt(s.get('mean_nm'), '.3g')} ± {_fmt(s.get('std_nm'), '.2g')}{u}")
            lines.append(f"density: {_fmt(s.get('density_per_um2'), '.4g')} /µm² over "
                         f"{_fmt(s.get('analysed_area_um2'), '.4g')} µm²")
        else:
            lines.append("pixel size unknown: no nm figures (set it in the Calibration dock)")
        af = s.get("area_fraction")
        lines.append(f"coverage (area fraction): {_fmt(None if af is None else 100 * af, '.2f', ' %')}")
        pc = s.get("per_class") or {}
        if pc:
            lines.append("per class: " + ", ".join(f"{k} {v['count']}" for k, v in pc.items()))
        return "<br>".join(lines)

