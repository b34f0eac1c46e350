"""Batch dock: predict a whole folder in the background, resumable, with per-group statistics.

Wiring only: :func:`napari_nanodefect.core.batch.run_batch` does the work (the same as
``nanodefect batch``) in a worker thread, which starts the worker processes; the viewer
stays responsive. Progress (images done, ETA, failures) is shown as it comes; *Cancel*
stops after the images in progress (finished ones stay in the manifest, so *Run* again
resumes). At the end the per-group table and the aggregated size histogram of the chosen
group are shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _common as C

if TYPE_CHECKING:  # pragma: no cover
    import napari


class _Relay(QObject):
    """Carries progress text from the worker thread to the GUI thread (queued signal)."""

    text = Signal(str)


class BatchWidget(QWidget):
    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self.state = C.state_for(napari_viewer)
        self._worker = None
        self._stop = False
        self.result = None
        self.progress_log: list[dict[str, Any]] = []
        self._relay = _Relay()

        self.input_edit, in_row = C.folder_row("folder of images (sub-folders = groups)")
        self.model_edit, model_row = C.folder_row("model folder (empty: the model in use, else the starter)")
        self.out_edit, out_row = C.folder_row("output folder")
        self.groups_edit = QLineEdit()
        self.groups_edit.setPlaceholderText("optional CSV image,group")
        self.workers = QSpinBox()
        self.workers.setRange(1, 64)
        self.workers.setValue(1)
        self.scheduler = QLineEdit("local")
        self.zoom = QCheckBox("second look for small particles (~2x slower)")
        self.zoom.setToolTip("segment each image again at 1.39x the scale and add the particles the first "
                             "pass missed (docs/model.md)")
        self.tta = QCheckBox("average 4 flipped views (~4x slower)")
        self.tta.setToolTip("average the network's maps over the image as is, flipped both ways and rotated "
                            "180 degrees: fewer spurious particles (docs/model.md)")
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.status = QLabel("—")
        self.status.setWordWrap(True)
        self.table_label = QLabel()
        self.table_label.setWordWrap(True)
        self.table_label.setTextFormat(Qt.RichText)
        self.group_box = QComboBox()
        self.hist = QLabel()
        self.hist.setMinimumHeight(220)
        self.hist.setAlignment(Qt.AlignCenter)

        form = QFormLayout()
        form.addRow("Images", in_row)
        form.addRow("Model", model_row)
        form.addRow("Output", out_row)
        form.addRow("Groups", self.groups_edit)
        form.addRow("Workers", self.workers)
        form.addRow("Scheduler", self.scheduler)
        form.addRow("", self.zoom)
        form.addRow("", self.tta)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(self.table_label)
        g = QFormLayout()
        g.addRow("Histogram of", self.group_box)
        lay.addLayout(g)
        lay.addWidget(self.hist, 1)

        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.group_box.currentTextChanged.connect(self.show_histogram)
        self._relay.text.connect(self.status.setText)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _model(self) -> str | None:
        text = self.model_edit.text().strip()
        if text:
            return None if text in ("starter", "default") else text
        return str(self.state.model_path) if self.state.model_path else None

    def run(self) -> bool:
        """Start the batch in a worker thread (returns at once)."""
        from napari.qt.threading import create_worker

        from ..core.batch import run_batch

        if self._worker is not None:
            return False
        src, out = self.input_edit.text().strip(), self.out_edit.text().strip()
        if not src or not out:
            self.status.setText("choose the images and an output folder")
            return False
        self._stop = False
        self.progress_log = []
        self.status.setText("starting the workers…")
        kwargs = dict(scheduler=self.scheduler.text().strip() or "local", workers=self.workers.value(),
                      groups=self.groups_edit.text().strip() or None, progress=self._progress,
                      should_stop=lambda: self._stop,
                      predict_kwargs={k: True for k, box in (("zoom", self.zoom), ("tta", self.tta))
                                      if box.isChecked()} or None)
        self._worker = create_worker(run_batch, self._model(), [src], out, _start_thread=False, **kwargs)
        self._worker.returned.connect(self._finished)
        self._worker.errored.connect(lambda exc: self.status.setText(f"failed: {exc}"))
        self._worker.finished.connect(self._cleanup)
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self._worker.start()
        return True

    def cancel(self) -> None:
        self._stop = True
        self.status.setText("cancelling after the images in progress…")

    def _progress(self, info: dict[str, Any]) -> None:  # called in the worker thread
        self.progress_log.append(info)
        eta = info.get("eta_s") or 0.0
        fail = sum(1 for p in self.progress_log if p["status"] != "ok")
        text = (f"{info['done']}/{info['total']} images ({info.get('skipped', 0)} done before), {fail} failed, "
                f"ETA {int(eta // 60)}:{int(eta % 60):02d}")
        self._relay.text.emit(text)  # QLabel.setText is for the GUI thread only

    def _finished(self, res) -> None:
        self.result = res
        g = res.groups
        msg = (f"{len(res.done)} predicted, {len(res.skipped)} skipped (done before), {len(res.failed)} failed"
               f"{' — cancelled' if res.cancelled else ''} in {res.seconds:.0f} s")
        if res.failed:
            errs = [f"{k}: {res.manifest['images'][k].get('error')}" for k in res.failed[:5]]
            msg += "<br>" + "<br>".join(errs)
        self.status.setText(msg)
        if g is not None and len(g):
            rows = g[g["class"] == "all"] if (g["class"] != "all").sum() == (g["class"] == "all").sum() else g
            unit = "nm" if (g["size_column"] == "ecd_nm").all() else "px"
            html = ["<table cellspacing='4'><tr><th>group</th><th>class</th><th>images</th><th>objects</th>"
                    f"<th>d50 ({unit})</th><th>density /µm²</th></tr>"]
            for _, r in rows.iterrows():
                d50 = "—" if r["d50"] != r["d50"] or r["d50"] is None else f"{r['d50']:.3g}"
                dens = "—" if r["density_per_um2"] != r["density_per_um2"] or r["density_per_um2"] is None \
                    else f"{r['density_per_um2']:.3g}"
                html.append(f"<tr><td>{r['group']}</td><td>{r['class']}</td><td align='right'>{int(r['n_images'])}</td>"
                            f"<td align='right'>{int(r['count'])}</td><td align='right'>{d50}</td>"
                            f"<td align='right'>{dens}</td></tr>")
            html.append("</table>")
            self.table_label.setText("".join(html))
            self.group_box.blockSignals(True)
            self.group_box.clear()
            self.group_box.addItems(list(dict.fromkeys(g["group"].astype(str))))
            self.group_box.blockSignals(False)
            self.show_histogram(self.group_box.currentText())

    def show_histogram(self, group: str) -> bool:
        from ..core.batch import _safe

        if self.result is None or not group:
            return False
        png = Path(self.result.out) / "histograms" / f"{_safe(group)}.png"
        if not png.is_file():
            self.hist.clear()
            return False
        pm = QPixmap(str(png))
        self.hist.setPixmap(pm.scaledToWidth(max(300, self.hist.width()), Qt.SmoothTransformation))
        return not pm.isNull()

    def _cleanup(self) -> None:
        self._worker = None
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
