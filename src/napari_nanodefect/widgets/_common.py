"""Shared glue between napari layers and the core (no science here).

Conventions every dock follows:

- a micrograph is an Image layer; its pixel size (nm) is ``layer.metadata["nanodefect"]
  ["pixel_size_nm"]`` and its ``scale`` (see :mod:`napari_nanodefect._napari`);
- its hand-labelled instances (training data, autosaved) live in a Labels layer named
  ``"<image> particles"`` with the same scale, and what Predict finds in
  ``"<image> predictions"`` (``"… [2]"`` for extra runs); the class of each label value
  is in ``layer.features`` (columns ``index`` = label value, ``class``), next to the
  measurements once the Measure dock has run;
- its crops are rectangles in a Shapes layer named ``"<image> crops"``;
- the model in use is per viewer: :func:`state_for` ``(viewer).model_path``, with the
  ``model_changed`` signal, so Train can hand its result to Predict and Calibrate & label.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from psygnal import Signal

from ..core.annotations.layerdata import DEFAULT_CLASS, build_set
from ..core.annotations.model import AnnotationSet

PARTICLES_SUFFIX = " particles"
PREDICTIONS_SUFFIX = " predictions"
CROPS_SUFFIX = " crops"
#: colours given to classes in order (RGBA 0-1); the first is the default class
CLASS_COLORS = ["#ffd400", "#00e5ff", "#ff4fd8", "#7CFC00", "#ff8c00", "#9d7bff", "#ff3b3b", "#ffffff"]


class PluginState:
    """What the docks of one viewer share: the model in use and the class list."""

    model_changed = Signal(object)  # Path | None
    classes_changed = Signal(list)

    def __init__(self) -> None:
        self.model_path: Path | None = None
        self.classes: list[str] = [DEFAULT_CLASS]

    def set_model(self, path: str | Path | None) -> None:
        self.model_path = None if path is None else Path(path)
        self.model_changed.emit(self.model_path)

    def add_class(self, name: str) -> None:
        name = name.strip()
        if name and name not in self.classes:
            self.classes.append(name)
            self.classes_changed.emit(list(self.classes))

    def color_of(self, name: str) -> str:
        i = self.classes.index(name) if name in self.classes else len(self.classes)
        return CLASS_COLORS[i % len(CLASS_COLORS)]


_STATES: "weakref.WeakKeyDictionary[Any, PluginState]" = weakref.WeakKeyDictionary()


def state_for(viewer) -> PluginState:
    """The :class:`PluginState` of a viewer (created on first use)."""
    st = _STATES.get(viewer)
    if st is None:
        st = _STATES[viewer] = PluginState()
    return st


#: a press and release closer than this (screen px) is a click, not a drag
CLICK_TOLERANCE_PX = 4


def press_is_click(event, tolerance_px: float = CLICK_TOLERANCE_PX):
    """For a viewer drag callback: ``clicked = yield from press_is_click(event)`` follows
    the press through its moves to the release and returns True when the mouse stayed
    within ``tolerance_px`` (a click), False for a drag (pan)."""
    start = np.asarray(event.pos, float)
    yield
    moved = False
    while event.type == "mouse_move":
        moved = moved or np.hypot(*(np.asarray(event.pos, float) - start)) > tolerance_px
        yield
    return not moved


def fill_combo(box, names: list[str]) -> None:
    """Replace a combo box's items, keeping the current one when it is still there."""
    cur = box.currentText()
    box.blockSignals(True)
    box.clear()
    box.addItems(names)
    if cur in names:
        box.setCurrentText(cur)
    box.blockSignals(False)


def folder_row(placeholder: str):
    """A line edit with a "…" button that picks a folder: ``(edit, layout)``."""
    from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton

    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    btn = QPushButton("…")
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(btn)

    def browse():  # pragma: no cover - file dialog
        d = QFileDialog.getExistingDirectory(None, placeholder)
        if d:
            edit.setText(d)

    btn.clicked.connect(browse)
    return edit, row


# ----------------------------------------------------------------------------- layers

def image_layers(viewer) -> list:
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.name.endswith(" probability")]


def labels_layers(viewer) -> list:
    from napari.layers import Labels

    return [ly for ly in viewer.layers if isinstance(ly, Labels)]


def pixel_size_of(layer) -> float | None:
    """nm per pixel of a layer (from our metadata, else from a scale with nm units)."""
    if layer is None:
        return None
    info = (layer.metadata or {}).get("nanodefect") or {}
    ps = info.get("pixel_size_nm")
    if ps:
        return float(ps)
    return None


def image_path_of(layer) -> Path | None:
    """The file a layer was read from (our metadata, else napari's ``source``)."""
    if layer is None:
        return None
    info = (layer.metadata or {}).get("nanodefect") or {}
    p = info.get("path") or getattr(getattr(layer, "source", None), "path", None)
    return Path(p) if p else None


def plane_of(layer) -> np.ndarray:
    """The 2-D plane of an Image layer as a numpy array (RGB averaged, level 0 of pyramids)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    a = np.asarray(data)
    if getattr(layer, "rgb", False) and a.ndim == 3:
        a = a[..., :3].mean(axis=-1)
    if a.ndim > 2:  # a stack: the plane on display
        idx = tuple(int(i) for i in layer._slice_input.point[: a.ndim - 2]) if hasattr(layer, "_slice_input") else (0,) * (a.ndim - 2)
        a = a[idx]
    return a


def analysis_plane_of(layer) -> np.ndarray:
    """The plane measurements should use: STM raw heights when we have them, else the image."""
    return plane_of(layer)


def particles_layer_name(image_layer) -> str:
    return f"{image_layer.name}{PARTICLES_SUFFIX}"


def predictions_layer_name(image_layer) -> str:
    return f"{image_layer.name}{PREDICTIONS_SUFFIX}"


def crops_layer_name(image_layer) -> str:
    return f"{image_layer.name}{CROPS_SUFFIX}"


def find_layer(viewer, name: str):
    return viewer.layers[name] if name in viewer.layers else None


def particles_layer(viewer, image_layer, create: bool = False):
    """The instances Labels layer of an image (created empty, int32, same scale, when asked)."""
    name = particles_layer_name(image_layer)
    ly = find_layer(viewer, name)
    if ly is None and create:
        h, w = plane_of(image_layer).shape[:2]
        ly = viewer.add_labels(np.zeros((h, w), np.int32), name=name, scale=tuple(image_layer.scale[-2:]),
                               translate=tuple(image_layer.translate[-2:]), opacity=0.45,
                               units=tuple(image_layer.units[-2:]))
        ly.features = empty_features()
        path = image_path_of(image_layer)
        ly.metadata = {"nanodefect": {"image": image_layer.name, "image_path": None if path is None else str(path),
                                      "pixel_size_nm": pixel_size_of(image_layer)}}
    return ly


def crops_layer(viewer, image_layer, create: bool = False):
    """The crops Shapes layer of an image (created when asked)."""
    name = crops_layer_name(image_layer)
    ly = find_layer(viewer, name)
    if ly is None and create:
        ly = viewer.add_shapes(name=name, shape_type="rectangle", edge_color="#00ff7f", face_color="transparent",
                               edge_width=2, scale=tuple(image_layer.scale[-2:]), translate=tuple(image_layer.translate[-2:]),
                               units=tuple(image_layer.units[-2:]))
    return ly


def image_for(viewer, layer):
    """The Image layer a particles/predictions/crops layer belongs to (by name, else by
    the ``image`` our layers record in their metadata), or None."""
    import re

    name = re.sub(r" \[\d+\]$", "", layer.name)
    for suffix in (PARTICLES_SUFFIX, PREDICTIONS_SUFFIX, CROPS_SUFFIX):
        if name.endswith(suffix) and name[: -len(suffix)] in viewer.layers:
            return viewer.layers[name[: -len(suffix)]]
    owner = ((getattr(layer, "metadata", None) or {}).get("nanodefect") or {}).get("image")
    return find_layer(viewer, owner) if isinstance(owner, str) else None


# ----------------------------------------------------------------------------- classes in features

def empty_features() -> pd.DataFrame:
    return pd.DataFrame({"index": pd.Series([], dtype=np.int64), "class": pd.Series([], dtype=object)})


def label_classes(layer) -> dict[int, str]:
    """label value -> class name, from ``layer.features`` (``index`` and ``class`` columns)."""
    f = layer.features
    if f is None or len(f) == 0 or "class" not in f:
        return {}
    idx = f["index"].to_numpy() if "index" in f else np.arange(len(f))
    return {int(i): str(c) for i, c in zip(idx, f["class"].to_numpy()) if isinstance(c, str) and c}


def color_by_class(layer, state: PluginState, unknown: str | None = "#808080",
                   only: list[str] | None = None) -> None:
    """Colour a Labels layer by the class of each label value (``layer.features``), in the
    viewer's class colours. Labels without a class (or outside ``only``) get ``unknown``
    (None: the first class's colour)."""
    from napari.utils.colormaps import DirectLabelColormap

    default = unknown or state.color_of(state.classes[0])
    cmap: dict[Any, Any] = {None: default, 0: "transparent"}
    for v, name in label_classes(layer).items():
        if only is None or name in only:
            cmap[int(v)] = state.color_of(name)
    layer.colormap = DirectLabelColormap(color_dict=cmap)


def set_label_classes(layer, classes: Mapping[int, str]) -> None:
    """Set the class of label values in ``layer.features`` (adds rows for new labels,
    keeps every other column)."""
    if not classes:
        return
    f = layer.features
    f = empty_features() if f is None or len(f.columns) == 0 else f.copy()
    if "index" not in f:
        f.insert(0, "index", np.arange(len(f), dtype=np.int64))
    if "class" not in f:
        f["class"] = pd.Series([None] * len(f), dtype=object)
    pos = {int(v): i for i, v in enumerate(f["index"].to_numpy())}
    new_rows = []
    cls_col = f["class"].to_numpy(dtype=object).copy()
    for lab, name in classes.items():
        lab = int(lab)
        if lab in pos:
            cls_col[pos[lab]] = name
        else:
            new_rows.append({"index": lab, "class": name})
    f["class"] = cls_col
    if new_rows:
        f = pd.concat([f, pd.DataFrame(new_rows)], ignore_index=True)
    layer.features = f


def layer_annotations(image_layer, labels_layer=None, crops_layer=None) -> AnnotationSet:
    """The annotations of an image as an :class:`AnnotationSet` (labels + classes + crops)."""
    h, w = plane_of(image_layer).shape[:2]
    labels = np.asarray(labels_layer.data) if labels_layer is not None else np.zeros((h, w), np.int32)
    classes = label_classes(labels_layer) if labels_layer is not None else {}
    rects = []
    if crops_layer is not None:
        for data, kind in zip(crops_layer.data, crops_layer.shape_type):
            if kind in ("rectangle", "polygon"):
                rects.append(np.asarray(data)[:, -2:])
    path = image_path_of(image_layer)
    return build_set(labels, classes, rects, image_path=None if path is None else str(path),
                     pixel_size_nm=pixel_size_of(image_layer))


def training_image(viewer, image_layer):
    """A :class:`~napari_nanodefect.core.segment.train.TrainingImage` of an image's labels and crops."""
    from ..core.segment.train import TrainingImage

    aset = layer_annotations(image_layer, particles_layer(viewer, image_layer), crops_layer(viewer, image_layer))
    return TrainingImage(aset, plane_of(image_layer), pixel_size_of(image_layer))


def annotated_images(viewer) -> list:
    """Image layers that have at least one labelled object."""
    out = []
    for im in image_layers(viewer):
        ly = particles_layer(viewer, im)
        if ly is not None and np.any(np.asarray(ly.data)):
            out.append(im)
    return out
