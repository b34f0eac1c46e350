"""napari hooks (reader, sample data) — no Qt here, only layer-data tuples.

A micrograph opens as an Image layer whose ``scale`` is the pixel size in nm and whose
``units`` are nm, so napari's scale bar and every measurement are physical. The full
:meth:`Micrograph.info` record is kept in ``layer.metadata["nanodefect"]``. STM height
maps add a second, hidden layer with the raw heights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._guard import block_triton
from .core.errors import NanodefectError
from .core.io import SUPPORTED_SUFFIXES, read_image
from .core.micrograph import Micrograph

block_triton()  # this module is only imported by napari: see _guard


def micrograph_layer_data(m: Micrograph, name: str | None = None) -> list[tuple[Any, dict, str]]:
    """Layer-data tuples for a micrograph (image, plus raw heights for STM maps)."""
    info = m.info()
    kwargs: dict[str, Any] = {"name": name or (m.path.stem if m.path else "micrograph"), "metadata": {"nanodefect": info}}
    if m.pixel_size_nm:
        sy, sx = m.pixel_size_yx_nm or (m.pixel_size_nm, m.pixel_size_nm)
        kwargs.update(scale=(sy, sx), units=("nm", "nm"))
    layers = [(m.data, kwargs, "image")]
    if m.heights is not None:
        hk = dict(kwargs, name=f"{kwargs['name']} heights ({m.height_unit or 'raw'})", visible=False)
        layers.append((m.heights, hk, "image"))
    return layers


def get_reader(path: str | list[str]) -> Callable | None:
    """npe2 reader: returns a function when we can read ``path``, else None."""
    if isinstance(path, list):
        if not all(isinstance(p, str) for p in path):
            return None
        paths = path
    else:
        paths = [path]
    if not all(Path(p).suffix.lower() in SUPPORTED_SUFFIXES for p in paths):
        return None
    return _read_paths


def _read_paths(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        try:
            m = read_image(p)
        except NanodefectError as exc:
            # napari shows the message in a notification instead of a traceback
            raise ValueError(str(exc)) from exc
        layers.extend(micrograph_layer_data(m))
    return layers


def _sample(mode: str) -> list[tuple[Any, dict, str]]:
    from .core.synthetic import make_particles

    s = make_particles(shape=(512, 512), mode=mode, seed=1 if mode == "haadf" else 2)
    scale = (s.pixel_size_nm, s.pixel_size_nm)
    return [
        (s.image, {"name": f"synthetic {mode}", "scale": scale, "units": ("nm", "nm"),
                   "metadata": {"nanodefect": {"pixel_size_nm": s.pixel_size_nm, "pixel_size_source": "synthetic"}}}, "image"),
        (s.labels, {"name": f"synthetic {mode} ground truth", "scale": scale, "units": ("nm", "nm"), "visible": False}, "labels"),
    ]


def sample_haadf():
    return _sample("haadf")


def sample_bf():
    return _sample("bf")


def sample_ordering():
    """Monte Carlo deposition (Boiko et al. 2021): particles gathered on hidden line
    defects (ordered) beside a defect-free, random deposition, with the defect map."""
    from .core.defects.simulate import ordering_sample

    layers = []
    for ordered in (True, False):
        image, labels, defects, ps = ordering_sample(ordered=ordered, seed=1)
        name = "ordered" if ordered else "random"
        common = {"scale": (ps, ps), "units": ("nm", "nm")}
        meta = {"nanodefect": {"pixel_size_nm": ps, "pixel_size_source": "simulation"}}
        layers.append((image, dict(common, name=f"deposition {name}", metadata=meta, visible=ordered), "image"))
        if ordered:
            layers.append((defects.astype(np.uint8), dict(common, name="hidden line defects", visible=False), "labels"))
    return layers


# ----------------------------------------------------------------------------- annotations

def get_annotation_reader(path: str | list[str]) -> Callable | None:
    """npe2 reader for LabelMe and COCO JSON files (None for any other JSON)."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(isinstance(p, str) and p.lower().endswith(".json") for p in paths):
        return None
    from .core.annotations.coco import is_coco_dict
    from .core.annotations.labelme import _load_json, is_labelme_dict

    for p in paths:
        try:
            data = _load_json(Path(p))
        except NanodefectError:
            return None
        if not (is_labelme_dict(data) or is_coco_dict(data)):
            return None
    return _read_annotation_paths


def annotation_layer_data(aset, image_name: str | None = None) -> list[tuple[Any, dict, str]]:
    """Layer-data tuples of one annotation set: its image (when found or embedded), the
    instances as a Labels layer ``"<image> particles"`` (classes in ``features``) and the
    crops as a Shapes layer ``"<image> crops"``. Layers share the image's scale in nm."""
    import pandas as pd

    from .core.annotations.layerdata import set_to_arrays
    from .core.io import read_image

    layers: list[tuple[Any, dict, str]] = []
    img_path = aset.resolve_image_path()
    m = None
    if img_path is not None and img_path.exists():
        try:
            m = read_image(img_path)
        except NanodefectError:
            m = None
    if m is None and aset.image_data:
        from .core.micrograph import from_array
        from .core.segment.train import _decode_embedded

        try:
            m = from_array(_decode_embedded(aset))
        except Exception:  # noqa: BLE001 - an unreadable embedded image: annotations only
            m = None
    stem = image_name or (img_path.stem if img_path is not None else (aset.source.stem if aset.source else "annotations"))
    shape = aset.image_shape or (tuple(m.data.shape[:2]) if m is not None else None)
    if shape is None:
        raise ValueError(f"{aset.source}: the image size is unknown and the image was not found")
    ps = aset.pixel_size_nm or (m.pixel_size_nm if m is not None else None)
    if m is not None:
        if m.pixel_size_nm is None and ps:
            m.set_pixel_size(ps, "annotation file")
        layers.extend(micrograph_layer_data(m, name=stem))
    arrays = set_to_arrays(aset, shape)
    common: dict[str, Any] = {}
    if ps:
        common.update(scale=(ps, ps), units=("nm", "nm"))
    labels = sorted(arrays.classes)
    features = pd.DataFrame({"index": np.asarray(labels, dtype=np.int64),
                             "class": pd.Series([arrays.classes[k] for k in labels], dtype=object)})
    meta = {"nanodefect": {"image": stem, "image_path": None if img_path is None else str(img_path),
                           "pixel_size_nm": ps, "classes": arrays.class_names, "source": str(aset.source)}}
    layers.append((arrays.labels, dict(common, name=f"{stem} particles", features=features, metadata=meta,
                                       opacity=0.45), "labels"))
    if arrays.rectangles:
        layers.append((arrays.rectangles, dict(common, name=f"{stem} crops", shape_type="rectangle",
                                               edge_color="#00ff7f", face_color="transparent", edge_width=2), "shapes"))
    return layers


def _read_annotation_paths(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    from .core.annotations import load_annotations

    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        try:
            for aset in load_annotations(p):
                layers.extend(annotation_layer_data(aset))
        except NanodefectError as exc:
            raise ValueError(str(exc)) from exc
    return layers


def _layers_to_set(layer_data: list[tuple[Any, dict, str]]):
    """The annotation set of (labels, optional crops shapes, optional image) layer data."""
    from .core.annotations.layerdata import build_set

    by_type: dict[str, tuple[Any, dict]] = {}
    for data, meta, kind in layer_data:
        by_type.setdefault(kind, (data, meta))
    if "labels" not in by_type:
        raise ValueError("select a Labels layer of particles to save")
    labels, lmeta = by_type["labels"]
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"only 2-D label images can be saved as annotations (got {labels.shape})")
    info = (lmeta.get("metadata") or {}).get("nanodefect") or {}
    image_path, ps = info.get("image_path"), info.get("pixel_size_nm")
    if "image" in by_type:
        iinfo = (by_type["image"][1].get("metadata") or {}).get("nanodefect") or {}
        image_path = iinfo.get("path") or image_path
        ps = iinfo.get("pixel_size_nm") or ps
    feats = lmeta.get("features")
    classes = {}
    if feats is not None and len(feats) and "class" in feats:
        idx = feats["index"] if "index" in feats else range(len(feats))
        classes = {int(i): str(c) for i, c in zip(idx, feats["class"]) if isinstance(c, str) and c}
    rects = []
    if "shapes" in by_type:
        sdata, smeta = by_type["shapes"]
        kinds = smeta.get("shape_type") or ["rectangle"] * len(sdata)
        rects = [np.asarray(d)[:, -2:] for d, k in zip(sdata, kinds) if k in ("rectangle", "polygon")]
    return build_set(labels.astype(np.int64, copy=False) if labels.dtype.kind == "u" and labels.dtype.itemsize == 8 else labels,
                     classes, rects, image_path=image_path, pixel_size_nm=ps)


def write_labelme_layers(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """npe2 writer: instances (+ crops) -> LabelMe JSON (``imagePath`` relative to the file)."""
    from .core.annotations import write_labelme

    aset = _layers_to_set(layer_data)
    try:
        return [str(write_labelme(aset, path, embed_image=False))]
    except NanodefectError as exc:
        raise ValueError(str(exc)) from exc


def write_coco_layers(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """npe2 writer: instances (+ crops) -> COCO JSON (one image)."""
    from .core.annotations import write_coco

    aset = _layers_to_set(layer_data)
    try:
        return [str(write_coco(aset, path, include_lines_points=False))]
    except NanodefectError as exc:
        raise ValueError(str(exc)) from exc


def write_particles_csv(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: the particle table of a Labels layer as CSV (measured now when the
    layer has no measurements yet)."""
    from .core.atomic import atomic_write_text
    from .core.measure.particles import measure_particles

    feats = meta.get("features")
    if feats is None or "ecd_nm" not in feats:
        info = (meta.get("metadata") or {}).get("nanodefect") or {}
        classes = {}
        if feats is not None and len(feats) and "class" in feats:
            classes = {int(i): str(c) for i, c in zip(feats["index"], feats["class"]) if isinstance(c, str)}
        feats = measure_particles(np.asarray(data), info.get("pixel_size_nm"), class_index=classes or None)
    table = feats.drop(columns=["index"], errors="ignore")
    return [str(atomic_write_text(path, table.to_csv(index=False, float_format="%.6g")))]
