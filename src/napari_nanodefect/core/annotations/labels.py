"""Instance label images <-> polygon objects, and label TIFF files.

A label image is a 2-D integer array, 0 = background, each other value one instance.

* :func:`labels_to_objects` traces every label along the pixel edges (integer
  pixel-corner coordinates, see :mod:`.model`): holes are kept, each 4-connected piece of
  a label becomes one object (pieces share ``instance_id`` = the label value), the
  polygon area equals the pixel count exactly and rasterising gives the same pixels.
* :func:`objects_to_labels` rasterises objects (pixel centre inside, holes excluded).
  Overlapping objects: **the later object in the list wins** the shared pixels (an object
  that is completely covered disappears). Label values are the objects' ``instance_id``
  where set (shared by the parts of one instance; an id already used by another class
  gets a new value), else new values counting up from the largest id.
* Lines and points are not part of label images; crops are not either.

Label TIFFs (:func:`write_label_tiff`) are uint16, or uint32 when a value exceeds 65535,
zlib-compressed, with a JSON ImageDescription ``{"nanodefect": "instance-labels",
"classes": {"<value>": "<class>"}, "pixel_size_nm": ..., "image": ...}`` and the pixel
size also as TIFF resolution (pixels per cm) for Fiji/ImageJ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..atomic import atomic_write_with
from ..errors import NanodefectError
from . import geometry
from .model import AnnotationSet, ObjectAnnotation

DEFAULT_LABEL = "object"
LABELS_SUFFIX = "_labels"
CLASSES_SUFFIX = "_classes"


@dataclass(eq=False)
class LabelImage:
    """An instance label image with its class names.

    ``labels``: 2-D uint16/uint32, 0 = background. ``classes``: label value -> class name
    (values not listed are :data:`DEFAULT_LABEL`). ``pixel_size_nm``: nm per px or None.
    ``image_path``: the image the labels belong to (as stored), or None.
    """

    labels: np.ndarray
    classes: dict[int, str] = field(default_factory=dict)
    pixel_size_nm: float | None = None
    image_path: str | None = None

    @property
    def n_objects(self) -> int:
        """Number of distinct non-zero values."""
        u = np.unique(self.labels)
        return int(np.count_nonzero(u))

    def class_map(self, class_ids: Mapping[str, int] | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """Semantic class image (uint8/uint16, 0 = background) and the class -> id map used.

        ``class_ids`` defaults to the classes sorted by name, numbered from 1.
        """
        names = sorted({self.classes.get(int(v), DEFAULT_LABEL) for v in np.unique(self.labels) if v})
        ids = dict(class_ids) if class_ids is not None else {n: i for i, n in enumerate(names, start=1)}
        for n in names:
            if n not in ids:
                ids[n] = max(ids.values(), default=0) + 1
        vals = np.unique(self.labels)
        lut = np.zeros(int(vals.max()) + 1 if len(vals) else 1, np.int64)
        for v in vals:
            if v:
                lut[int(v)] = ids[self.classes.get(int(v), DEFAULT_LABEL)]
        out = lut[self.labels]
        return out.astype(np.uint8 if max(ids.values(), default=0) < 256 else np.uint16), ids


def _check_labels(labels: np.ndarray) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 2:
        a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"a label image must be 2-D, got shape {np.shape(labels)}")
    if a.size == 0:
        raise ValueError("the label image is empty (size 0)")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise ValueError("a label image must hold integers (got non-integer floats)")
        a = a.astype(np.int64)
    if a.dtype.kind not in "ui":
        raise ValueError(f"a label image must hold integers, got {a.dtype}")
    if a.dtype.kind == "i" and a.min() < 0:
        raise ValueError("a label image must not hold negative values")
    return a


def labels_to_objects(
    labels: np.ndarray,
    classes: Mapping[int, str] | None = None,
    class_map: np.ndarray | None = None,
    class_names: Mapping[int, str] | None = None,
    default_label: str = DEFAULT_LABEL,
    tolerance: float = 0.0,
) -> list[ObjectAnnotation]:
    """Objects (exact pixel-edge polygons with holes) of an instance label image.

    ``classes``: label value -> class name. Or ``class_map``: a class-id image of the
    same shape (the majority class id inside each instance wins) with ``class_names``:
    class id -> name (default ``class_<id>``). Otherwise every object is ``default_label``.
    ``tolerance`` > 0 simplifies the rings (Douglas-Peucker, px), which breaks exactness.
    Objects come in increasing label order; ``instance_id`` is the label value.
    Raises ``ValueError`` for non-2-D, non-integer or negative label images.
    """
    lab = _check_labels(labels)
    if class_map is not None:
        class_map = np.asarray(class_map)
        if class_map.shape != lab.shape:
            raise ValueError(f"class map shape {class_map.shape} differs from label image shape {lab.shape}")
    objs: list[ObjectAnnotation] = []
    values = np.unique(lab)
    values = values[values != 0]
    if len(values) == 0:
        return objs
    if int(values[-1]) > 4 * len(values) + 1024:  # sparse ids: relabel for find_objects
        dense = np.searchsorted(values, lab).astype(np.int64)
        dense[lab == 0] = 0
        dense[lab != 0] += 1
    else:
        dense = lab.astype(np.int64, copy=False)
        values = None
    slices = ndimage.find_objects(dense)
    for k, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        value = int(values[k - 1]) if values is not None else k
        sub = dense[sl] == k
        if classes is not None:
            name = classes.get(value, default_label)
        elif class_map is not None:
            ids, counts = np.unique(class_map[sl][sub], return_counts=True)
            cid = int(ids[np.argmax(counts)])
            name = (class_names or {}).get(cid, f"class_{cid}")
        else:
            name = default_label
        for outer, holes in geometry.trace_mask(sub, offset=(sl[1].start, sl[0].start)):
            if tolerance > 0:
                outer = geometry.simplify_ring(outer, tolerance)
                holes = [geometry.simplify_ring(h, tolerance) for h in holes]
            objs.append(ObjectAnnotation(label=str(name), polygon=outer, holes=holes, instance_id=value))
    return objs


def objects_to_labels(objects: Sequence[ObjectAnnotation], shape: tuple[int, int]) -> LabelImage:
    """Rasterise objects into an instance label image of ``shape`` (rows, cols).

    Later objects overwrite earlier ones where they overlap. See the module docstring for
    how label values are chosen. The result is uint16, or uint32 above 65535.
    """
    H, W = int(shape[0]), int(shape[1])
    values: dict[tuple[int, str], int] = {}
    used: dict[int, str] = {}
    next_id = 1 + max((o.instance_id for o in objects if isinstance(o.instance_id, int) and o.instance_id > 0), default=0)
    assigned: list[int] = []
    for o in objects:
        iid = o.instance_id if isinstance(o.instance_id, int) and o.instance_id > 0 else None
        if iid is not None and (iid, o.label) in values:
            v = values[(iid, o.label)]
        elif iid is not None and iid not in used:
            v = iid
            values[(iid, o.label)] = v
        else:
            v = next_id
            next_id += 1
            if iid is not None:
                values[(iid, o.label)] = v
        used[v] = o.label
        assigned.append(v)
    top = max(assigned, default=0)
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    if top > np.iinfo(np.uint32).max:
        raise ValueError(f"label value {top} does not fit in uint32")
    out = np.zeros((H, W), dtype)
    for o, v in zip(objects, assigned):
        m, r0, c0 = geometry.rasterize_rings(o.rings, (H, W))
        if m.size:
            out[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]][m] = v
    present = set(np.unique(out).tolist())
    return LabelImage(labels=out, classes={v: n for v, n in used.items() if v in present})


def set_to_labels(aset: AnnotationSet) -> LabelImage:
    """Label image of an annotation set's objects (needs the image size)."""
    if aset.image_shape is None:
        raise NanodefectError("image size unknown: cannot make a label image", aset.source)
    li = objects_to_labels(aset.objects, aset.image_shape)
    li.pixel_size_nm = aset.pixel_size_nm
    li.image_path = aset.image_path
    return li


def labels_to_set(label_image: LabelImage | np.ndarray, **kw) -> AnnotationSet:
    """Annotation set (objects only) of a label image; ``kw`` go to :func:`labels_to_objects`."""
    li = label_image if isinstance(label_image, LabelImage) else LabelImage(labels=np.asarray(label_image))
    classes = kw.pop("classes", None) or (li.classes or None)
    objs = labels_to_objects(li.labels, classes=classes, **kw)
    h, w = np.shape(li.labels)[-2:]
    return AnnotationSet(image_path=li.image_path, image_height=int(h), image_width=int(w),
                         pixel_size_nm=li.pixel_size_nm, objects=objs)


def write_label_tiff(
    path: str | Path,
    labels: np.ndarray | LabelImage,
    classes: Mapping[int, str] | None = None,
    pixel_size_nm: float | None = None,
    image_path: str | None = None,
) -> Path:
    """Write an instance label TIFF atomically (uint16, or uint32 when needed).

    ``classes`` (value -> class name), ``pixel_size_nm`` and ``image_path`` are stored in
    the JSON ImageDescription; the pixel size also as resolution in pixels per cm.
    """
    import tifffile

    if isinstance(labels, LabelImage):
        classes = labels.classes if classes is None else classes
        pixel_size_nm = labels.pixel_size_nm if pixel_size_nm is None else pixel_size_nm
        image_path = labels.image_path if image_path is None else image_path
        labels = labels.labels
    lab = _check_labels(labels)
    top = int(lab.max())
    if top > np.iinfo(np.uint32).max:
        raise NanodefectError(f"label value {top} does not fit in uint32", path)
    lab = lab.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)
    desc = {"nanodefect": "instance-labels", "classes": {str(int(k)): str(v) for k, v in (classes or {}).items()}}
    if pixel_size_nm:
        desc["pixel_size_nm"] = float(pixel_size_nm)
    if image_path:
        desc["image"] = str(image_path)
    kw = {}
    if pixel_size_nm:
        ppcm = 1e7 / float(pixel_size_nm)
        kw = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}

    def _write(tmp: Path) -> None:
        tifffile.imwrite(tmp, lab, description=json.dumps(desc), metadata=None, compression="zlib", **kw)

    return atomic_write_with(path, _write)


def read_label_tiff(path: str | Path) -> LabelImage:
    """Read an instance label TIFF (ours or any 2-D integer TIFF).

    Class names come from our JSON description, else from a sibling ``<stem>_classes.tif``
    class map (majority class per instance, names from its description's
    ``class_names``, else ``class_<id>``). Raises :class:`NanodefectError` for unreadable
    files, non-2-D or non-integer data.
    """
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tf:
            arr = tf.series[0].asarray() if tf.series else tf.pages[0].asarray()
            desc = tf.pages[0].description or ""
    except Exception as e:
        raise NanodefectError(f"cannot read the label TIFF ({type(e).__name__}: {e})", path) from None
    try:
        lab = _check_labels(arr)
    except ValueError as e:
        raise NanodefectError(str(e), path) from None
    info = {}
    try:
        info = json.loads(desc) if desc.strip().startswith("{") else {}
    except json.JSONDecodeError:
        info = {}
    classes: dict[int, str] = {}
    if isinstance(info.get("classes"), dict):
        try:
            classes = {int(k): str(v) for k, v in info["classes"].items()}
        except (TypeError, ValueError):
            raise NanodefectError("the 'classes' entry of the TIFF description is not {value: name}", path) from None
    stem = path.stem[: -len(LABELS_SUFFIX)] if path.stem.endswith(LABELS_SUFFIX) else path.stem
    cpath = path.with_name(f"{stem}{CLASSES_SUFFIX}{path.suffix}")
    if not classes and cpath.is_file():
        with tifffile.TiffFile(cpath) as tf:
            cmap = tf.pages[0].asarray()
            cdesc = tf.pages[0].description or ""
        names = {}
        try:
            names = {int(k): str(v) for k, v in json.loads(cdesc).get("class_names", {}).items()}
        except Exception:
            names = {}
        if cmap.shape == lab.shape:
            for v in np.unique(lab):
                if v:
                    ids, counts = np.unique(cmap[lab == v], return_counts=True)
                    cid = int(ids[np.argmax(counts)])
                    classes[int(v)] = names.get(cid, f"class_{cid}")
    ps = info.get("pixel_size_nm")
    return LabelImage(labels=lab, classes=classes, pixel_size_nm=float(ps) if ps else None,
                      image_path=info.get("image"))
