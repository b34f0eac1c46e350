"""Export dock: LabelMe, COCO, particles CSV, summary JSON and histogram PNG/SVG of one image.

Wires the image's layers (``"<image> predictions"`` or ``"<image> particles"`` — or any
Labels layer chosen — and
``"<image> crops"``) to :func:`napari_nanodefect.core.export.export_image`. The particle
table is taken from the layer's features when the Measure dock has filled them (so the
export is what the user sees), else measured now.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
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

FORMAT_LABELS = {
    "labelme": "LabelMe JSON",
    "coco": "COCO JSON",
    "csv": "particles CSV",
    "summary": "summary JSON",
    "png": "histogram PNG",
    "svg": "histogram SVG",
}


class ExportWidget(QWidget):
    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.labels_box = QComboBox()
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("folder (default: <image folder>/<image>_nanodefect)")
        self.browse = QPushButton("…")
        self.bins = QSpinBox()
        self.bins.setRange(0, 500)
        self.bins.setSpecialValueText("auto")
        self.crops_check = QCheckBox("statistics only inside crops")
        self.checks = {k: QCheckBox(v) for k, v in FORMAT_LABELS.items()}
        for c in self.checks.values():
            c.setChecked(True)
        self.run_btn = QPushButton("Export")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.last: dict[str, Any] | None = None

        form = QFormLayout()
        form.addRow("Particles layer", self.labels_box)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(self.browse)
        form.addRow("Into", row)
        form.addRow("Histogram bins", self.bins)
        form.addRow("", self.crops_check)
        grid = QGridLayout()
        for i, c in enumerate(self.checks.values()):
            grid.addWidget(c, i // 2, i % 2)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(grid)
        lay.addWidget(self.run_btn)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.run_btn.clicked.connect(lambda: self.export())
        self.browse.clicked.connect(self._browse)
        self.viewer.layers.events.inserted.connect(lambda e: self.refresh())
        self.viewer.layers.events.removed.connect(lambda e: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        cur = self.labels_box.currentText()
        names = [ly.name for ly in C.labels_layers(self.viewer)]
        self.labels_box.blockSignals(True)
        self.labels_box.clear()
        self.labels_box.addItems(names)
        if cur in names:
            self.labels_box.setCurrentText(cur)
        else:
            best = [n for n in names if n.endswith(C.PREDICTIONS_SUFFIX)] + [n for n in names if n.endswith(C.PARTICLES_SUFFIX)]
            if best:
                self.labels_box.setCurrentText(best[0])
        self.labels_box.blockSignals(False)

    def _browse(self) -> None:  # pragma: no cover - file dialog
        d = QFileDialog.getExistingDirectory(self, "Export into")
        if d:
            self.folder.setText(d)

    def _image_of(self, labels_layer):
        im = C.image_for(self.viewer, labels_layer)
        if im is None:
            name = ((labels_layer.metadata or {}).get("nanodefect") or {}).get("image")
            im = C.find_layer(self.viewer, name) if name else None
        return im

    def default_folder(self, labels_layer) -> Path:
        im = self._image_of(labels_layer)
        path = C.image_path_of(im) if im is not None else None
        stem = im.name if im is not None else labels_layer.name
        base = path.parent if path is not None else Path.home() / "nanodefect_exports"
        return base / f"{stem}_nanodefect"

    def export(self, folder: str | Path | None = None) -> dict[str, Any] | None:
        """Write the ticked formats; returns ``{format: path, "summary": ...}`` or None."""
        from ..core.export import export_image

        name = self.labels_box.currentText()
        lab = C.find_layer(self.viewer, name)
        if lab is None:
            self.status.setText("no particles layer to export")
            return None
        im = self._image_of(lab)
        formats = [k for k, c in self.checks.items() if c.isChecked()]
        if not formats:
            self.status.setText("tick at least one format")
            return None
        out = Path(folder or self.folder.text().strip() or self.default_folder(lab))
        info = ((im.metadata if im is not None else {}) or {}).get("nanodefect") or {}
        vr = info.get("valid_region")
        # the crops belong to the hand labels (fully annotated regions), not to predictions
        hand = name.endswith(C.PARTICLES_SUFFIX)
        crops = C.crops_layer(self.viewer, im) if im is not None and hand else None
        rects = [np.asarray(d)[:, -2:] for d, k in zip(crops.data, crops.shape_type)
                 if k in ("rectangle", "polygon")] if crops is not None else []
        feats = lab.features
        table = feats if feats is not None and "ecd_nm" in feats and len(feats) else None
        if table is not None and self.crops_check.isChecked():
            table = None  # measured over other regions than the Measure dock's: measure again
        if table is not None:  # reuse the Measure dock's table only when it is up to date
            present = np.flatnonzero(np.bincount(np.asarray(lab.data).ravel().astype(np.int64, copy=False)))
            if not np.array_equal(np.sort(table["index"].to_numpy(np.int64)), present[present > 0]):
                table = None
        ps = C.pixel_size_of(im) or ((lab.metadata or {}).get("nanodefect") or {}).get("pixel_size_nm")
        stem = im.name if im is not None else name.replace(C.PARTICLES_SUFFIX, "").replace(C.PREDICTIONS_SUFFIX, "")
        try:
            res = export_image(out, stem, np.asarray(lab.data), C.label_classes(lab), rectangles=rects,
                               image=C.plane_of(im) if im is not None else None, pixel_size_nm=ps,
                               image_path=C.image_path_of(im) if im is not None else None,
                               valid_region=(vr["y0"], vr["x0"], vr["y1"], vr["x1"]) if vr else None,
                               formats=formats, bins=self.bins.value() or "auto", table=table,
                               crops_are_regions=self.crops_check.isChecked())
        except (NanodefectError, OSError, ValueError) as exc:
            self.status.setText(f"export failed: {exc}")
            return None
        files = [Path(v).name for k, v in res.items() if k not in ("summary", "table")]
        self.status.setText(f"wrote {len(files)} files to {out}:\n" + ", ".join(files))
        self.last = res
        return res
