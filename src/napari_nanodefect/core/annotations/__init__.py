"""Annotation model and interop (LabelMe, COCO, instance label images); Qt-free.

Coordinates are (x, y) pixels with pixel (row r, col c) covering [c, c+1) × [r, r+1)
(pixel-corner convention, as COCO and the LabelMe GUI); see :mod:`.model`.
"""

from .coco import read_coco, rle_decode, rle_encode, sets_to_coco_dict, write_coco
from .convert import TARGETS, convert, load_annotations
from .geometry import (
    buffer_polyline,
    circle_polygon,
    keyhole,
    polygon_area,
    rasterize_rings,
    rings_to_mask,
    split_keyholes,
    trace_mask,
)
from .labelme import (
    read_labelme,
    read_labelme_folder,
    set_to_labelme_dict,
    write_labelme,
)
from .labels import (
    LabelImage,
    labels_to_objects,
    labels_to_set,
    objects_to_labels,
    read_label_tiff,
    set_to_labels,
    write_label_tiff,
)
from .model import (
    CROP_LABELS,
    POINT_LABELS,
    AnnotationSet,
    Crop,
    LineAnnotation,
    ObjectAnnotation,
    PointAnnotation,
    napari_to_xy,
    xy_to_napari,
)

__all__ = [
    "AnnotationSet",
    "Crop",
    "ObjectAnnotation",
    "LineAnnotation",
    "PointAnnotation",
    "CROP_LABELS",
    "POINT_LABELS",
    "xy_to_napari",
    "napari_to_xy",
    "read_labelme",
    "read_labelme_folder",
    "write_labelme",
    "set_to_labelme_dict",
    "read_coco",
    "write_coco",
    "sets_to_coco_dict",
    "rle_decode",
    "rle_encode",
    "LabelImage",
    "labels_to_objects",
    "objects_to_labels",
    "labels_to_set",
    "set_to_labels",
    "read_label_tiff",
    "write_label_tiff",
    "convert",
    "load_annotations",
    "TARGETS",
    "trace_mask",
    "rasterize_rings",
    "rings_to_mask",
    "polygon_area",
    "circle_polygon",
    "buffer_polyline",
    "keyhole",
    "split_keyholes",
]
