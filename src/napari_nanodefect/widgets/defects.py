"""Defects & ordering dock (Boiko et al. 2021): wiring only, the science is in
:mod:`napari_nanodefect.core.defects`.

- **Ordering of particles**: for an instances layer (hand labels or predictions), the
  Clark–Evans ratio (Donnelly edge correction) with its p-value, Ripley's L(r) − r against
  a CSR envelope (plotted in nm) and a verdict (clustered / regular / random).
- **Ordered vs disordered classifier**: with a classifier folder, the probability of
  order of the image, its per-patch map and the gradient saliency as Image layers, and
  the PCA of the patch embeddings as a scatter coloured by P(order).
- **Defect segmentation**: with a defect model folder, per-class probability maps →
  one Labels layer per class (``"<image> <class>"``) and the table of skeleton lengths
  (nm) per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from . import _common as C

if TYPE_CHECKING:  # pragma: no cover
    import napari


_folder_row = C.folder_row


class DefectsWidget(QWidget):
    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = napari_viewer
        self.image_box = QComboBox()
        self.labels_box = QComboBox()
        self.order_btn = QPushButton("Ordering statistics")
        self.order_label = QLabel("—")
        self.order_label.setWordWrap(True)
        self.clf_edit, clf_row = _folder_row("classifier folder (config.json + model.safetensors)")
        self.clf_btn = QPushButton("Classify image")
        self.clf_label = QLabel("—")
        self.clf_label.setWordWrap(True)
        self.seg_edit, seg_row = _folder_row("defect model folder")
        self.seg_btn = QPushButton("Segment defects")
        self.seg_label = QLabel("—")
        self.seg_label.setWordWrap(True)
        self.figure = Figure(figsize=(4.2, 2.6), dpi=90)
        self.ax = self.figure.add_subplot(111)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.last_order: dict[str, Any] | None = None
        self.last_classification: dict[str, Any] | None = None
        self.last_defects: Any = None

        form = QFormLayout()
        form.addRow("Image", self.image_box)
        form.addRow("Particles", self.labels_box)
        order = QGroupBox("Ordering of particles")
        ol = QVBoxLayout(order)
        ol.addWidget(self.order_btn)
        ol.addWidget(self.order_label)
        clf = QGroupBox("Ordered vs disordered classifier")
        cl = QVBoxLayout(clf)
        cl.addLayout(clf_row)
        cl.addWidget(self.clf_btn)
        cl.addWidget(self.clf_label)
        seg = QGroupBox("Defect segmentation")
        sl = QVBoxLayout(seg)
        sl.addLayout(seg_row)
        sl.addWidget(self.seg_btn)
        sl.addWidget(self.seg_label)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(order)
        lay.addWidget(clf)
        lay.addWidget(seg)
        lay.addWidget(self.canvas, 1)

        self.order_btn.clicked.connect(self.ordering)
        self.clf_btn.clicked.connect(self.classify)
        self.seg_btn.clicked.connect(self.segment)
        self.viewer.layers.events.inserted.connect(lambda e: self.refresh())
        self.viewer.layers.events.removed.connect(lambda e: self.refresh())
        self.refresh()

    def refresh(self) -> None:
        C.fill_combo(self.image_box, [ly.name for ly in C.image_layers(self.viewer)])
        C.fill_combo(self.labels_box, [ly.name for ly in C.labels_layers(self.viewer)])

    def _image(self):
        return C.find_layer(self.viewer, self.image_box.currentText())

    # -- ordering ------------------------------------------------------------------
    def ordering(self) -> dict[str, Any] | None:
        from ..core.defects.order import order_statistics
        from ..core.measure.particles import measure_particles

        lab = C.find_layer(self.viewer, self.labels_box.currentText())
        if lab is None:
            self.order_label.setText("choose a layer of particles")
            return None
        im = C.image_for(self.viewer, lab) or self._image()
        ps = C.pixel_size_of(im) or ((lab.metadata or {}).get("nanodefect") or {}).get("pixel_size_nm")
        f = lab.features
        if f is not None and {"centroid_y_px", "centroid_x_px"} <= set(f.columns) and len(f):
            pts = f[["centroid_y_px", "centroid_x_px"]].to_numpy(float)
        else:
            t = measure_particles(np.asarray(lab.data), ps)
            pts = t[["centroid_y_px", "centroid_x_px"]].to_numpy(float)
        h, w = np.shape(lab.data)[-2:]
        info = ((im.metadata if im is not None else {}) or {}).get("nanodefect") or {}
        vr = info.get("valid_region")
        window = (vr["y0"], vr["x0"], vr["y1"], vr["x1"]) if vr else (0, 0, h, w)
        st = order_statistics(pts, window, pixel_size_nm=ps)
        self.last_order = st
        r = st.get("clark_evans_R")
        p = st.get("clark_evans_p")
        self.order_label.setText(
            f"{st['n']} particles · Clark–Evans R {('n/a' if r is None else f'{r:.3f}')} "
            f"(p {('n/a' if p is None else f'{p:.2g}')}) · L(r)−r outside the CSR envelope: "
            f"{st.get('outside_envelope')} → <b>{st.get('verdict')}</b>")
        unit, k = ("nm", float(ps)) if ps else ("px", 1.0)
        rr = st.get("r_px")
        if rr:
            self.ax.clear()
            r_plot = np.asarray(rr, float) * k
            self.ax.plot(r_plot, np.asarray(st["L_minus_r_px"], float) * k, color="C0", label="L(r) − r")
            lo, hi = st.get("envelope_lo_px"), st.get("envelope_hi_px")
            if lo is not None and hi is not None:
                self.ax.fill_between(r_plot, np.asarray(lo, float) * k, np.asarray(hi, float) * k, color="0.8",
                                     label="CSR envelope")
            self.ax.axhline(0, color="0.4", lw=0.8)
            self.ax.set_xlabel(f"r ({unit})")
            self.ax.set_ylabel(f"L(r) − r ({unit})")
            self.ax.legend(fontsize=7)
            self.figure.tight_layout()
            self.canvas.draw_idle()
        return st

    # -- classifier -------------------------------------------------------------------
    def classify(self) -> dict[str, Any] | None:
        from ..core.defects.classify import load_classifier, pca
        from ..core.errors import NanodefectError

        im = self._image()
        if im is None:
            self.clf_label.setText("open an image first")
            return None
        try:
            clf = load_classifier(Path(self.clf_edit.text().strip() or "."))
        except NanodefectError as exc:
            self.clf_label.setText(str(exc))
            return None
        img = C.plane_of(im)
        proba = clf.predict_proba(img)
        stride = max(1, clf.patch // 2)
        pmap = clf.probability_map(img, stride=stride)
        sal = clf.saliency(img)
        emb, centres = clf.embeddings(img, stride=stride)
        scale = tuple(np.asarray(im.scale[-2:], float))
        name1 = clf.classes[1] if len(clf.classes) > 1 else clf.classes[0]
        # cell (i, j) of the map is the patch centred at pixel (i*stride + patch/2 - 1/2, ...)
        tr = tuple(np.asarray(im.translate[-2:], float) + np.array(scale) * (clf.patch / 2 - 0.5))
        for name, data, kw in ((f"{im.name} P({name1})", pmap, dict(scale=tuple(np.array(scale) * stride), translate=tr,
                                                                      colormap="viridis", contrast_limits=(0, 1), opacity=0.5)),
                               (f"{im.name} saliency", sal, dict(scale=scale, translate=tuple(im.translate[-2:]),
                                                                 colormap="inferno", blending="additive", opacity=0.7))):
            if name in self.viewer.layers:
                self.viewer.layers[name].data = data
            else:
                self.viewer.add_image(data, name=name, units=tuple(im.units[-2:]), **kw)
        res = {"classes": clf.classes, "proba": proba.tolist(), "map": pmap, "saliency": sal}
        if len(emb) >= 2:
            pcs, frac = pca(emb, k=2)
            p_patch = pmap.ravel()[: len(pcs)]
            self.ax.clear()
            self.ax.scatter(pcs[:, 0], pcs[:, 1] if pcs.shape[1] > 1 else np.zeros(len(pcs)), c=p_patch,
                                 cmap="viridis", vmin=0, vmax=1, s=12)
            self.ax.set_xlabel(f"PC1 ({frac[0]:.0%})")
            self.ax.set_ylabel(f"PC2 ({frac[1]:.0%})" if len(frac) > 1 else "")
            self.ax.set_title(f"patch embeddings (colour: P({name1}), 0–1)", fontsize=8)
            self.figure.tight_layout()
            self.canvas.draw_idle()
            res["pca"] = pcs
        self.clf_label.setText(" · ".join(f"P({c}) {p:.2f}" for c, p in zip(clf.classes, proba)))
        self.last_classification = res
        return res

    # -- defect segmentation --------------------------------------------------------------
    def segment(self):
        from ..core.defects.segment import (
            defect_statistics,
            load_defect_model,
            predict_defects_scaled,
            threshold_masks,
            thresholds_from_config,
        )
        from ..core.errors import NanodefectError

        im = self._image()
        if im is None:
            self.seg_label.setText("open an image first")
            return None
        try:
            model = load_defect_model(Path(self.seg_edit.text().strip() or "."), device="auto")
        except NanodefectError as exc:
            self.seg_label.setText(str(exc))
            return None
        ps = C.pixel_size_of(im)
        # at the model's training scale when both pixel sizes are known; its calibrated thresholds
        prob, _ = predict_defects_scaled(model, C.plane_of(im), ps)
        high, lows = thresholds_from_config(model.config, model.classes)
        table, summary = defect_statistics(prob, model.classes, ps or 1.0, threshold=high, low_threshold=lows)
        masks = threshold_masks(prob, high, lows)
        scale, tr, units = tuple(im.scale[-2:]), tuple(im.translate[-2:]), tuple(im.units[-2:])
        for k, cls in enumerate(model.classes):
            name = f"{im.name} {cls}"
            mask = masks[k].astype(np.uint8) * (k + 1)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = mask
            else:
                self.viewer.add_labels(mask, name=name, scale=scale, translate=tr, units=units, opacity=0.6)
        self.last_defects = (table, summary)
        lines = []
        if "class" in getattr(table, "columns", []) and "length_nm" in table.columns:
            per = table.groupby("class")["length_nm"].sum()
            lines = [f"{c}: {v:.4g} {'nm' if ps else 'px'}" for c, v in per.items()]
        self.seg_label.setText("total skeleton length per class: " + ("; ".join(lines) if lines else "none found"))
        return table, summary
