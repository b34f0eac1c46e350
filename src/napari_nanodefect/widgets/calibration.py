"""Calibration dock: shows an image layer's pixel size and where it came from, and sets it.

The pixel size can be typed in, or measured: draw a line along the scale bar (a Shapes
layer "scale bar line" is created in pixel coordinates of the image), type what the
bar says (e.g. ``500 nm``) and press *Use line*. Setting the size updates the layer's
``scale`` (nm) and ``metadata["nanodefect"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import NanodefectError
from ..core.scalebar import parse_scale_label, pixel_size_from_scale_bar

if TYPE_CHECKING:  # pragma: no cover
    import napari

LINE_LAYER = "scale bar line"


def line_length_px(layer) -> float:
    """Length in data pixels of the last line drawn in a Shapes layer."""
    if layer is None or len(layer.data) == 0:
        raise NanodefectError("draw a line along the scale bar first")
    pts = np.asarray(layer.data[-1])[:, -2:]
    return float(np.sum(np.hypot(*np.diff(pts, axis=0).T)))


class CalibrationWidget(QWidget):
    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.layer_box = QComboBox()
        self.size_label = QLabel()
        self.source_label = QLabel()
        self.source_label.setWordWrap(True)
        self.region_label = QLabel()
        self.scalebar_label = QLabel()
        for label in (self.size_label, self.region_label, self.scalebar_label):
            label.setWordWrap(True)
        self.spin = QDoubleSpinBox()
        self.spin.setDecimals(5)
        self.spin.setRange(1e-5, 1e9)
        self.spin.setSuffix(" nm/px")
        self.apply_btn = QPushButton("Set")
        self.bar_text = QLineEdit()
        self.bar_text.setPlaceholderText("e.g. 500 nm")
        self.draw_btn = QPushButton("Draw line")
        self.use_line_btn = QPushButton("Use line")
        self.status = QLabel()
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image layer", self.layer_box)
        form.addRow("Pixel size", self.size_label)
        form.addRow("Source", self.source_label)
        form.addRow("Valid region", self.region_label)
        form.addRow("Scale bar", self.scalebar_label)
        row = QHBoxLayout()
        row.addWidget(self.spin)
        row.addWidget(self.apply_btn)
        form.addRow("Type in", row)
        row2 = QHBoxLayout()
        row2.addWidget(self.bar_text)
        row2.addWidget(self.draw_btn)
        row2.addWidget(self.use_line_btn)
        form.addRow("Measure", row2)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.apply_btn.clicked.connect(lambda: self.set_pixel_size(self.spin.value(), "user (typed)"))
        self.draw_btn.clicked.connect(self.add_line_layer)
        self.use_line_btn.clicked.connect(self.use_line)
        self.layer_box.currentTextChanged.connect(lambda _: self.refresh())
        self.viewer.layers.events.inserted.connect(lambda e: self.refresh_layers())
        self.viewer.layers.events.removed.connect(lambda e: self.refresh_layers())
        self.refresh_layers()

    # -- layer bookkeeping -------------------------------------------------
    def image_layers(self):
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image)]

    def current_layer(self):
        name = self.layer_box.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def refresh_layers(self) -> None:
        current = self.layer_box.currentText()
        names = [ly.name for ly in self.image_layers()]
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)
        self.layer_box.blockSignals(False)
        self.refresh()

    def refresh(self) -> None:
        layer = self.current_layer()
        info = (layer.metadata.get("nanodefect") or {}) if layer is not None else {}
        ps = info.get("pixel_size_nm")
        self.size_label.setText("unknown — type it in or measure the scale bar" if not ps else f"{ps:.5g} nm")
        self.source_label.setText(info.get("pixel_size_source") or "—")
        vr = info.get("valid_region")
        bar = info.get("info_bar")
        self.region_label.setText(
            "—" if not vr else f"rows {vr['y0']}:{vr['y1']}, cols {vr['x0']}:{vr['x1']}" + (f"\n(info bar of {bar['height']} rows excluded)" if bar else "")
        )
        sb = info.get("scale_bar")
        self.scalebar_label.setText(
            "none found" if not sb else f"{sb['length_px']:.1f} px" + (f" = {sb['value']:g} {sb['unit']}" if sb.get("value") else "\n(type its value below, press Use line)")
        )
        if ps:
            self.spin.setValue(ps)

    # -- actions -------------------------------------------------------------
    def set_pixel_size(self, nm: float, source: str) -> None:
        layer = self.current_layer()
        if layer is None:
            self.status.setText("open an image first")
            return
        info = dict(layer.metadata.get("nanodefect") or {})
        info.update(pixel_size_nm=float(nm), pixel_size_yx_nm=[float(nm), float(nm)], pixel_size_source=source)
        layer.metadata = {**layer.metadata, "nanodefect": info}
        layer.scale = (nm, nm)
        try:
            layer.units = ("nm", "nm")
        except Exception:  # pragma: no cover - older napari without units
            pass
        self.status.setText(f"pixel size set to {nm:.5g} nm ({source})")
        self.refresh()

    def add_line_layer(self) -> None:
        image = self.current_layer()
        scale = tuple(image.scale[-2:]) if image is not None else (1.0, 1.0)
        if LINE_LAYER in self.viewer.layers:
            shapes = self.viewer.layers[LINE_LAYER]
        else:
            shapes = self.viewer.add_shapes(name=LINE_LAYER, shape_type="line", edge_color="yellow", edge_width=2, scale=scale)
        shapes.mode = "add_line"
        self.viewer.layers.selection.active = shapes
        self.status.setText("draw along the scale bar, type its value, press Use line")

    def use_line(self) -> None:
        parsed = parse_scale_label(self.bar_text.text())
        if parsed is None:
            self.status.setText("type the scale bar value with a unit, e.g. '500 nm' or '2 µm'")
            return
        layer = self.viewer.layers[LINE_LAYER] if LINE_LAYER in self.viewer.layers else None
        sb = ((self.current_layer() or None) and (self.current_layer().metadata.get("nanodefect") or {}).get("scale_bar"))
        try:
            length = line_length_px(layer) if layer is not None and len(layer.data) else (sb or {}).get("length_px")
            if not length:
                raise NanodefectError("draw a line along the scale bar first")
            nm = pixel_size_from_scale_bar(length, *parsed)
        except NanodefectError as exc:
            self.status.setText(str(exc))
            return
        self.set_pixel_size(nm, f"scale bar ({length:.1f} px = {parsed[0]:g} {parsed[1]})")
