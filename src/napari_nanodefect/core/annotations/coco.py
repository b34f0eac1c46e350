"""Read and write COCO instance-segmentation JSON (no pycocotools needed).

Coordinates are copied unchanged: COCO uses the pixel-corner convention of :mod:`.model`.

Reading (:func:`read_coco`): one :class:`AnnotationSet` per image record, in file order.
Segmentations may be polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists),
uncompressed RLE (``counts`` a list) or compressed RLE (``counts`` a string), with any
``iscrowd``; RLE masks are decoded by :func:`rle_decode` and traced exactly along pixel
edges. An annotation with several polygons / pieces gives several objects sharing
``instance_id`` (= the annotation ``id`` unless our ``instance_id`` key is present).
A polygon that contains zero-width bridges to holes (as we write them) is split back
into an outer ring and holes. An annotation with an empty segmentation but a ``bbox``
becomes a rectangle object. ``iscrowd: 1`` is kept as ``attributes["iscrowd"] = 1``.

Writing (:func:`write_coco`): polygons only. Objects sharing ``instance_id`` and label
are one annotation (one polygon each); an object with holes is one polygon with
zero-width bridges from the outer ring to each hole (even-odd filling, as pycocotools
does, gives exactly outer minus holes). ``area`` is the number of pixels whose centre
lies inside (what pycocotools' ``annToMask`` counts) when the image size is known, else
the shoelace area; ``bbox`` is ``[x, y, w, h]`` of the polygon vertices.

Our extensions (ignored by other tools, read back by us):

* image record: ``pixel_size_nm``, ``tags`` (list), ``crops`` (``[{"label", "bbox": [x, y,
  w, h]}]``), plus unknown keys of a source COCO image record;
* annotation: ``instance_id``, ``score``, ``attributes``, ``description``,
  ``shape_type`` (``circle``/``rectangle``/``mask``...) and ``circle`` ``[cx, cy, r]``;
  lines are annotations with ``polyline`` ``[x0, y0, ...]`` and ``width_px`` whose
  segmentation is the line drawn ``width_px`` (default 1) px wide; points are
  annotations with ``point`` ``[x, y]`` and ``radius`` whose segmentation is the disk (or
  the 1 × 1 px square around the point when there is no radius).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..atomic import atomic_write_json
from ..errors import NanodefectError
from . import geometry
from ._image import image_size
from .labelme import _load_json, _num, _nums, _relpath
from .model import AnnotationSet, Crop, LineAnnotation, ObjectAnnotation, PointAnnotation, positive_int

_ANN_KEYS = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "score", "attributes",
             "instance_id", "description", "shape_type", "circle", "polyline", "width_px", "point", "radius"}
_IMG_KEYS = {"file_name", "height", "width", "pixel_size_nm", "tags", "crops"}
#: sub-folders tried (after the COCO file's own folder) to find images named in ``file_name``
IMAGE_SUBFOLDERS = ("", "images", "imgs", "img")


# --------------------------------------------------------------------------- RLE


def rle_decode(rle: dict, path: str | os.PathLike | None = None) -> np.ndarray:
    """Decode a COCO RLE (``{"size": [h, w], "counts": str | list}``) to a bool (h, w) mask.

    Counts are run lengths over the image in column-major order, starting with a run of
    zeros. A string holds them in pycocotools' compressed form (6-bit characters offset
    by 48, 5 data bits each, sign bit 0x10 on the last, and from the 4th count on each
    value is stored as a difference to the count two places before).
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise NanodefectError("RLE segmentation needs 'size': [h, w] and 'counts'", path) from None
    if isinstance(counts, (bytes, bytearray)):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = rle_string_to_counts(counts, path)
    elif isinstance(counts, list):
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise NanodefectError("RLE 'counts' must be non-negative integers", path)
    else:
        raise NanodefectError("RLE 'counts' must be a string or a list of integers", path)
    n = h * w
    c = np.asarray(counts, dtype=np.int64)
    if c.sum() != n:
        raise NanodefectError(f"RLE counts sum to {int(c.sum())} but size {h}x{w} has {n} pixels", path)
    vals = np.zeros(len(c), bool)
    vals[1::2] = True
    flat = np.repeat(vals, c)
    return flat.reshape((w, h)).T.copy()


def rle_string_to_counts(s: str, path: str | os.PathLike | None = None) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools ``rleFrString``)."""
    counts: list[int] = []
    p, m = 0, len(s)
    while p < m:
        x, k, more = 0, 0, True
        while more:
            if p >= m:
                raise NanodefectError("truncated compressed RLE string", path)
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise NanodefectError(f"invalid character {s[p]!r} in compressed RLE string", path)
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise NanodefectError("invalid compressed RLE string (negative run)", path)
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """Encode a 2-D bool mask as COCO RLE (compressed string, or ``counts`` list)."""
    m = np.asarray(mask, bool)
    h, w = m.shape
    flat = m.T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    if not compressed:
        return {"size": [h, w], "counts": [int(r) for r in runs]}
    out = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return {"size": [h, w], "counts": "".join(out)}


# --------------------------------------------------------------------------- reading


def is_coco_dict(data: Any) -> bool:
    """True when ``data`` (parsed JSON) looks like a COCO file (``images`` + ``annotations``)."""
    return isinstance(data, dict) and "images" in data and "annotations" in data


def _find_image(file_name: str, coco_dir: Path, images: Path | None) -> Path | None:
    cands = []
    if images is not None:
        cands += [images / file_name, images / Path(file_name).name]
    cands += [coco_dir / sub / file_name for sub in IMAGE_SUBFOLDERS]
    for c in cands:
        if c.is_file():
            return c
    return None


def read_coco(path: str | os.PathLike, images: str | os.PathLike | None = None, data: dict | None = None) -> list[AnnotationSet]:
    """Read a COCO JSON file: one :class:`AnnotationSet` per image (see the module docstring).

    ``images``: folder holding the images named by ``file_name``; the image is looked for
    there, then beside the COCO file and in its ``images``/``imgs``/``img`` sub-folders.
    A found image gives ``image_path`` (relative to the COCO file's folder) and a missing
    ``height``/``width``. Raises :class:`NanodefectError` naming the file and record.
    """
    path = Path(path)
    if data is None:
        data = _load_json(path)
    if isinstance(data, list):
        raise NanodefectError("this is a COCO results list (no 'images'); a full COCO file is needed", path)
    if not isinstance(data, dict):
        raise NanodefectError("not a COCO file: the JSON top level is not an object", path)
    for key in ("images", "annotations"):
        if key not in data:
            raise NanodefectError(f"not a COCO file: missing key {key!r}", path)
        if not isinstance(data[key], list):
            raise NanodefectError(f"{key!r} must be a list", path)
    cats = data.get("categories") or []
    if not isinstance(cats, list):
        raise NanodefectError("'categories' must be a list", path)
    cat_names: dict[Any, str] = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise NanodefectError(f"category {i} needs 'id' and 'name'", path)
        cat_names[c["id"]] = str(c["name"])
    coco_meta = {k: data[k] for k in ("info", "licenses") if k in data}
    coco_meta["categories"] = cats
    coco_dir = path.resolve().parent
    images_dir = None if images is None else Path(images).resolve()
    if images_dir is not None and not images_dir.is_dir():
        raise NanodefectError("images folder not found", images_dir)

    sets: dict[Any, AnnotationSet] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im:
            raise NanodefectError(f"image record {i} needs an 'id'", path)
        if im["id"] in sets:
            raise NanodefectError(f"image id {im['id']!r} appears twice", path)
        fn = im.get("file_name")
        if fn is not None and not isinstance(fn, str):
            raise NanodefectError(f"image {im['id']!r}: 'file_name' must be a string", path)
        aset = AnnotationSet(source=path)
        if fn:
            found = _find_image(fn, coco_dir, images_dir)
            aset.image_path = _relpath(found.resolve(), coco_dir) if found is not None else fn
        for key, attr in (("height", "image_height"), ("width", "image_width")):
            v = im.get(key)
            if v is not None:
                setattr(aset, attr, positive_int(v, f"image {im['id']!r}: {key!r}", path))
        if aset.image_shape is None and fn:
            hw = image_size(aset.resolve_image_path())
            if hw is not None:
                aset.image_height, aset.image_width = hw
        ps = im.get("pixel_size_nm")
        if ps is not None:
            if isinstance(ps, bool) or not isinstance(ps, (int, float)) or not np.isfinite(ps) or ps <= 0:
                raise NanodefectError(f"image {im['id']!r}: 'pixel_size_nm' must be a positive number", path)
            aset.pixel_size_nm = float(ps)
        tags = im.get("tags") or []
        aset.tags = [str(t) for t in tags] if isinstance(tags, list) else []
        for j, c in enumerate(im.get("crops") or []):
            try:
                x, y, w, h = (float(v) for v in c["bbox"])
                aset.crops.append(Crop(x, y, x + w, y + h, label=str(c.get("label", "crop")),
                                       extra={k: v for k, v in c.items() if k not in ("bbox", "label")}))
            except (KeyError, TypeError, ValueError):
                raise NanodefectError(f"image {im['id']!r}: crop {j} needs 'bbox': [x, y, w, h]", path) from None
        aset.extra["coco"] = coco_meta
        aset.extra["coco_image"] = {k: v for k, v in im.items() if k not in _IMG_KEYS}
        sets[im["id"]] = aset

    for i, ann in enumerate(data["annotations"]):
        where = f"annotation {i}" + (f" (id {ann.get('id')!r})" if isinstance(ann, dict) and "id" in ann else "")
        if not isinstance(ann, dict):
            raise NanodefectError(f"{where} is not an object", path)
        for key in ("image_id", "category_id"):
            if key not in ann:
                raise NanodefectError(f"{where}: missing key {key!r}", path)
        if ann["image_id"] not in sets:
            raise NanodefectError(f"{where}: image_id {ann['image_id']!r} is not in 'images'", path)
        aset = sets[ann["image_id"]]
        label = cat_names.get(ann["category_id"], str(ann["category_id"]))
        try:
            _add_annotation(aset, ann, label, path)
        except NanodefectError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise NanodefectError(f"{where}: {e}", path) from None
    return list(sets.values())


def _add_annotation(aset: AnnotationSet, ann: dict, label: str, path: Path) -> None:
    attrs = dict(ann["attributes"]) if isinstance(ann.get("attributes"), dict) else {}
    if ann.get("iscrowd"):
        attrs["iscrowd"] = int(ann["iscrowd"])
    extra = {k: v for k, v in ann.items() if k not in _ANN_KEYS}
    desc = ann.get("description") or ""
    score = ann.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise ValueError(f"score must be a number, got {score!r}")
    iid = ann.get("instance_id")
    if "polyline" in ann:
        pts = _flat_to_ring(ann["polyline"], 2)
        aset.lines.append(LineAnnotation(label=label, points=pts, width_px=ann.get("width_px"), instance_id=iid,
                                         attributes=attrs, description=desc,
                                         shape_type="line" if len(pts) == 2 else "linestrip", extra=extra))
        return
    if "point" in ann:
        x, y = (float(v) for v in ann["point"])
        aset.points.append(PointAnnotation(label=label, x=x, y=y, radius=ann.get("radius"), score=score,
                                           instance_id=iid, attributes=attrs, description=desc, extra=extra))
        return
    seg = ann.get("segmentation")
    parts: list[tuple[np.ndarray, list[np.ndarray]]] = []
    shape_type = ann.get("shape_type") or "polygon"
    if isinstance(seg, dict):
        mask = rle_decode(seg, path)
        parts = geometry.trace_mask(mask)
        if not parts:
            raise ValueError("the RLE mask is empty")
    elif isinstance(seg, list) and seg:
        if all(isinstance(v, (int, float)) for v in seg):
            seg = [seg]  # a single flat polygon not wrapped in a list
        for poly in seg:
            parts.append(geometry.split_keyholes(_flat_to_ring(poly, 3)))
    elif "bbox" in ann:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            raise ValueError("empty segmentation and an empty bbox")
        parts = [(geometry.rectangle_ring(x, y, x + w, y + h), [])]
        shape_type = "rectangle"
    else:
        raise ValueError("missing or empty 'segmentation'")
    if iid is None and len(parts) > 1:
        iid = ann.get("id")
    circle = None
    if shape_type == "circle" and isinstance(ann.get("circle"), list) and len(ann["circle"]) == 3 and len(parts) == 1:
        circle = tuple(float(v) for v in ann["circle"])
    for outer, holes in parts:
        aset.objects.append(ObjectAnnotation(label=label, polygon=outer, holes=holes, score=score, instance_id=iid,
                                             attributes=dict(attrs), description=desc, shape_type=shape_type,
                                             circle=circle, extra=dict(extra)))


def _flat_to_ring(flat: Any, n_min: int) -> np.ndarray:
    if not isinstance(flat, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise ValueError("a polygon must be a flat list of numbers [x0, y0, x1, y1, ...]")
    if len(flat) % 2:
        raise ValueError(f"a polygon needs an even number of coordinates, got {len(flat)}")
    return geometry.as_ring(np.asarray(flat, dtype=np.float64).reshape(-1, 2), min_points=n_min)


# --------------------------------------------------------------------------- writing


def _categories(sets: Sequence[AnnotationSet], categories) -> list[dict[str, Any]]:
    if categories is None:
        cats: list[dict[str, Any]] = []
        for s in sets:
            src = (s.extra.get("coco") or {}).get("categories")
            if src:
                cats = [dict(c) for c in src]
                break
    elif all(isinstance(c, str) for c in categories):
        cats = [{"id": i, "name": n, "supercategory": n} for i, n in enumerate(categories, start=1)]
    else:
        cats = [dict(c) for c in categories]
    names = {c["name"] for c in cats}
    next_id = max([c["id"] for c in cats if isinstance(c.get("id"), int)], default=0) + 1
    for s in sets:
        for lab in s.labels:
            if lab not in names:
                cats.append({"id": next_id, "name": lab, "supercategory": lab})
                names.add(lab)
                next_id += 1
    return cats


def _flat(ring: np.ndarray) -> list[float]:
    return _nums(np.asarray(ring, dtype=np.float64).reshape(-1))


def _indent(data: dict) -> int | None:
    """Pretty-print small files; big ones (many annotations) compactly (10x faster)."""
    return 2 if len(data.get("annotations", ())) <= 1000 else None


def _pixel_outline(rings: list[np.ndarray], shape: tuple[int, int]) -> bool:
    """True for rings with integer vertices, axis-parallel edges, inside the image."""
    for r in rings:
        r = np.asarray(r, dtype=np.float64)
        if r.size == 0 or not np.array_equal(r, np.round(r)):
            return False
        if r[:, 0].min() < 0 or r[:, 1].min() < 0 or r[:, 0].max() > shape[1] or r[:, 1].max() > shape[0]:
            return False
        d = np.diff(np.vstack([r, r[:1]]), axis=0)
        if not np.all((d[:, 0] == 0) | (d[:, 1] == 0)):
            return False
    return True


def _area_bbox(rings_per_part: list[list[np.ndarray]], shape: tuple[int, int] | None) -> tuple[float, list[float]]:
    x0, y0, x1, y1 = geometry.bounds([rs[0] for rs in rings_per_part])
    bbox = [_num(x0), _num(y0), _num(x1 - x0), _num(y1 - y0)]
    if shape is None:
        area = sum(geometry.polygon_area(rs[0], rs[1:]) for rs in rings_per_part)
        return float(area), bbox
    H, W = shape
    if len(rings_per_part) == 1 and _pixel_outline(rings_per_part[0], shape):
        # traced pixel outlines (label images, predictions): the polygon area is exactly
        # the pixel count pycocotools' rasteriser gives, without rasterising
        rs = rings_per_part[0]
        return float(geometry.polygon_area(rs[0], rs[1:])), bbox
    if len(rings_per_part) == 1:
        m, _, _ = geometry.rasterize_rings(rings_per_part[0], shape)
        return float(m.sum()), bbox
    full = np.zeros((H, W), bool)
    for rs in rings_per_part:
        m, r0, c0 = geometry.rasterize_rings(rs, shape)
        full[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]] |= m
    return float(full.sum()), bbox


def set_to_coco_records(
    aset: AnnotationSet,
    image_id: int,
    cat_ids: dict[str, int],
    coco_dir: Path,
    images_root: Path | None = None,
    first_ann_id: int = 1,
    include_lines_points: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO image record and annotation records of one annotation set."""
    img = aset.resolve_image_path()
    anchored = img is not None and (aset.source is not None or Path(aset.image_path).is_absolute())
    if anchored and images_root is not None and img.is_relative_to(images_root):
        file_name = img.relative_to(images_root).as_posix()
    else:
        file_name = aset.image_path_relative_to(coco_dir)
    if not anchored:
        img = None
    hw = aset.image_shape
    if hw is None and img is not None:
        hw = image_size(img)
    if hw is None:
        raise NanodefectError("image size unknown (image not found and no height/width stored); give the images "
                              "folder", aset.source or aset.image_path)
    rec: dict[str, Any] = {"id": image_id, "file_name": file_name, "height": int(hw[0]), "width": int(hw[1])}
    if aset.pixel_size_nm is not None:
        rec["pixel_size_nm"] = float(aset.pixel_size_nm)
    if aset.tags:
        rec["tags"] = list(aset.tags)
    if aset.crops:
        rec["crops"] = [{"label": c.label, "bbox": [_num(c.x0), _num(c.y0), _num(c.x1 - c.x0), _num(c.y1 - c.y0)],
                         **c.extra} for c in aset.crops]
    for k, v in (aset.extra.get("coco_image") or {}).items():
        if k != "id":
            rec.setdefault(k, v)

    anns: list[dict[str, Any]] = []
    groups: dict[tuple, list[ObjectAnnotation]] = {}
    order: list[tuple] = []
    for n, o in enumerate(aset.objects):
        key = ("g", o.instance_id, o.label) if o.instance_id is not None else ("o", n)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(o)

    def base(label, ann, rings_per_part) -> dict[str, Any]:
        area, bbox = _area_bbox(rings_per_part, hw)
        attrs = dict(ann.attributes)
        iscrowd = int(attrs.pop("iscrowd", 0) or 0)
        d: dict[str, Any] = {"id": first_ann_id + len(anns), "image_id": image_id, "category_id": cat_ids[label],
                             "segmentation": [], "area": area, "bbox": bbox, "iscrowd": iscrowd}
        if getattr(ann, "score", None) is not None:
            d["score"] = float(ann.score)
        if attrs:
            d["attributes"] = attrs
        if ann.instance_id is not None:
            d["instance_id"] = ann.instance_id
        if ann.description:
            d["description"] = ann.description
        for k, v in ann.extra.items():
            if k not in _ANN_KEYS:
                d.setdefault(k, v)
        return d

    for key in order:
        objs = groups[key]
        o0 = objs[0]
        d = base(o0.label, o0, [o.rings for o in objs])
        d["segmentation"] = [_flat(geometry.keyhole(o.polygon, o.holes)) for o in objs]
        if o0.shape_type != "polygon":
            d["shape_type"] = o0.shape_type
        if o0.shape_type == "circle" and o0.circle is not None and len(objs) == 1:
            d["circle"] = [float(v) for v in o0.circle]
        anns.append(d)
    if include_lines_points:
        for ln in aset.lines:
            ring = ln.outline()
            d = base(ln.label, ln, [[ring]])
            d["segmentation"] = [_flat(ring)]
            d["polyline"] = _flat(ln.points)
            d["width_px"] = ln.width_px
            anns.append(d)
        for p in aset.points:
            ring = p.outline()
            d = base(p.label, p, [[ring]])
            d["segmentation"] = [_flat(ring)]
            d["point"] = [_num(p.x), _num(p.y)]
            d["radius"] = p.radius
            anns.append(d)
    return rec, anns


def sets_to_coco_dict(
    sets: Iterable[AnnotationSet],
    coco_path: str | os.PathLike,
    categories: Sequence[str] | Sequence[dict] | None = None,
    images_root: str | os.PathLike | None = None,
    include_lines_points: bool = True,
) -> dict[str, Any]:
    """The COCO JSON object :func:`write_coco` writes (see there)."""
    sets = list(sets)
    coco_dir = Path(coco_path).resolve().parent
    root = None if images_root is None else Path(os.path.abspath(images_root))
    cats = _categories(sets, categories)
    cat_ids = {c["name"]: c["id"] for c in cats}
    src_ids = [(s.extra.get("coco_image") or {}).get("id") for s in sets]
    keep_ids = all(isinstance(i, int) and not isinstance(i, bool) for i in src_ids) and len(set(src_ids)) == len(src_ids)
    images, annotations = [], []
    for n, s in enumerate(sets):
        iid = src_ids[n] if keep_ids else n + 1
        rec, anns = set_to_coco_records(s, iid, cat_ids, coco_dir, root, len(annotations) + 1, include_lines_points)
        images.append(rec)
        annotations.extend(anns)
    meta = next((s.extra["coco"] for s in sets if s.extra.get("coco")), {})
    out: dict[str, Any] = {
        "info": meta.get("info") or {"description": "written by napari-nanodefect"},
        "licenses": meta.get("licenses") or [],
        "images": images,
        "annotations": annotations,
        "categories": cats,
    }
    return out


def write_coco(
    sets: Iterable[AnnotationSet] | AnnotationSet,
    path: str | os.PathLike,
    categories: Sequence[str] | Sequence[dict] | None = None,
    images_root: str | os.PathLike | None = None,
    include_lines_points: bool = True,
) -> Path:
    """Write annotation sets (several images) as one COCO JSON file, atomically.

    ``categories``: class names (ids 1, 2, ...) or COCO category dicts; default: the
    categories read from a COCO source (ids kept), then any other label in order of first
    appearance. ``file_name`` is relative to ``images_root`` when the image lies inside
    it, else relative to the COCO file's folder. Image ids of a COCO source are kept when
    unique, else images are numbered from 1; annotation ids are numbered from 1.
    ``include_lines_points=False`` leaves lines and points out.
    """
    if isinstance(sets, AnnotationSet):
        sets = [sets]
    path = Path(path)
    data = sets_to_coco_dict(sets, path, categories, images_root, include_lines_points)
    try:
        return atomic_write_json(path, data, indent=_indent(data))
    except ValueError as e:
        raise NanodefectError(f"cannot write COCO JSON ({e})", path) from None
    except OSError as e:
        raise NanodefectError(f"cannot write the file ({e.strerror or e})", path) from None
