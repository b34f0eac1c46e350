"""Plain-array form of annotations, as napari layers hold them (Qt-free).

napari keeps instances in a Labels layer (an integer image, one value per object, with
the class of each value in ``layer.features``) and crops in a Shapes layer (rectangles
as four ``(row, col)`` vertices, pixel centres at integer coordinates). These functions
convert between that form and :class:`AnnotationSet` so that readers, writers and
widgets share one tested conversion:

- :func:`build_set` — label image + classes + rectangles -> ``AnnotationSet``;
- :func:`set_to_arrays` — ``AnnotationSet`` -> label image, classes, rectangles;
- :func:`annotation_path_for` — where the autosaved LabelMe file of an image lives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import NanodefectError
from .labels import labels_to_objects, objects_to_labels
from .model import AnnotationSet, Crop, napari_to_xy, xy_to_napari

#: class given to objects whose class is unknown
DEFAULT_CLASS = "particle"


@dataclass
class LayerArrays:
    """Annotations as napari layer data.

    ``labels``: int32 instance image (0 = background). ``classes``: label -> class name.
    ``rectangles``: crops as ``(4, 2)`` arrays of napari ``(row, col)`` vertices.
    ``class_names``: classes in order (those of the objects, then any others known).
    """

    labels: np.ndarray
    classes: dict[int, str] = field(default_factory=dict)
    rectangles: list[np.ndarray] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    pixel_size_nm: float | None = None


def rectangle_to_crop(vertices: np.ndarray, label: str = "crop") -> Crop:
    """napari rectangle vertices ``(row, col)`` -> :class:`Crop` (pixel-corner x/y).

    A rectangle drawn in napari from pixel centre to pixel centre covers the pixels
    whose centres lie inside it; the crop's corners are at the pixel edges.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 2:
        raise NanodefectError(f"a crop needs rectangle vertices (N, 2), got shape {v.shape}")
    xy = napari_to_xy(v[:, -2:])
    x0, y0 = xy.min(axis=0)
    x1, y1 = xy.max(axis=0)
    return Crop(x0, y0, x1, y1, label=label)


def crop_to_rectangle(crop: Crop) -> np.ndarray:
    """:class:`Crop` -> four napari ``(row, col)`` vertices."""
    xy = np.array([[crop.x0, crop.y0], [crop.x1, crop.y0], [crop.x1, crop.y1], [crop.x0, crop.y1]])
    return xy_to_napari(xy)


def clip_crop(crop: Crop, shape: tuple[int, int]) -> Crop | None:
    """The crop clipped to an image of ``shape``; None when nothing is left."""
    h, w = shape
    x0, x1 = np.clip([crop.x0, crop.x1], 0, w)
    y0, y1 = np.clip([crop.y0, crop.y1], 0, h)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return Crop(float(x0), float(y0), float(x1), float(y1), label=crop.label)


def build_set(
    labels: np.ndarray,
    classes: Mapping[int, str] | None = None,
    rectangles: Sequence[np.ndarray] = (),
    *,
    image_path: str | os.PathLike | None = None,
    pixel_size_nm: float | None = None,
    default_class: str = DEFAULT_CLASS,
) -> AnnotationSet:
    """An :class:`AnnotationSet` from a label image, its classes and crop rectangles.

    Objects are the exact pixel outlines of the labels (holes kept); crops are clipped to
    the image. Raises :class:`NanodefectError` for a label image that is not 2-D integer.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise NanodefectError(f"annotations need a 2-D label image, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise NanodefectError(f"a label image must be integer, got {lab.dtype}")
    objs = labels_to_objects(lab, classes={int(k): str(v) for k, v in (classes or {}).items()},
                             default_label=default_class)
    crops = []
    for r in rectangles:
        c = clip_crop(rectangle_to_crop(r), lab.shape)
        if c is not None:
            crops.append(c)
    return AnnotationSet(
        image_path=None if image_path is None else str(image_path),
        image_height=int(lab.shape[0]), image_width=int(lab.shape[1]),
        pixel_size_nm=pixel_size_nm, crops=crops, objects=objs,
    )


def set_to_arrays(aset: AnnotationSet, shape: tuple[int, int] | None = None) -> LayerArrays:
    """Label image (int32), classes and crop rectangles of an annotation set.

    ``shape`` defaults to the set's image size. Lines and points are not included.
    """
    shape = shape or aset.image_shape
    if shape is None:
        raise NanodefectError("image size unknown: cannot make a label image", aset.source)
    li = objects_to_labels(aset.objects, shape)
    names: list[str] = []
    for n in [*li.classes.values(), *aset.labels]:
        if n not in names:
            names.append(n)
    return LayerArrays(
        labels=li.labels.astype(np.int32),
        classes={int(k): v for k, v in li.classes.items()},
        rectangles=[crop_to_rectangle(c) for c in aset.crops],
        class_names=names,
        pixel_size_nm=aset.pixel_size_nm,
    )


def annotation_path_for(image_path: str | os.PathLike) -> Path:
    """The LabelMe file that belongs to an image: ``<folder>/<stem>.json`` (LabelMe's own rule)."""
    p = Path(image_path)
    return p.with_suffix(".json")
