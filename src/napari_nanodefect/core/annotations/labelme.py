"""Read and write LabelMe JSON files (no labelme import; format of labelme 5.x/6.x).

Reading (:func:`read_labelme`)
------------------------------
* ``polygon`` / ``oriented_rectangle`` -> objects; ``rectangle`` -> a crop when labelled
  ``crop``/``roi``, else a 4-vertex object; ``circle`` -> a round object, or a point with
  radius when labelled ``point``/``site``; ``line``/``linestrip`` -> lines (``width_px``
  from our extra key ``width_px``); ``point`` -> points; ``points`` -> one point per
  vertex; ``mask`` (base64 PNG bitmap placed at ``points[0]``) -> objects traced exactly
  along pixel edges, ``shape_type="mask"``.
* ``group_id`` -> ``instance_id``; shape ``flags`` -> ``attributes``; ``description``
  kept; a shape ``score``/``attributes`` key (ours) is read; other unknown shape keys go
  to the annotation's ``extra``.
* Holes: LabelMe has none, so we write a hole as a ``polygon`` shape with the object's
  label and ``group_id`` and ``description: "hole"``; on reading, such a shape becomes a
  hole of the object with the same label and group that contains it.
* Top level: true ``flags`` -> ``tags`` (all flags kept in ``extra["labelme"]["flags"]``),
  ``pixel_size_nm`` (our key), ``imageData`` -> ``image_data`` bytes, other keys ->
  ``extra["labelme"]``.

Writing (:func:`write_labelme`)
-------------------------------
``imagePath`` is written relative to the JSON file's folder. ``imageData`` embedding
(``embed_image``):

* ``"auto"`` (default): embed when labelme could not show the image file by itself,
  i.e. unless it is an 8-bit-per-channel PNG or JPEG (grey, RGB, RGBA). labelme
  re-encodes a non-PNG/JPEG image when ``imageData`` is null, and that fails for palette
  and 16-bit TIFFs (and it cannot read vendor formats at all); so TIFFs, palette, 16-bit
  and float images are embedded as an **8-bit PNG** (palette expanded to RGB, 16-bit /
  float stretched linearly min..max to 0..255, first page of multi-page files). When the
  image file is missing, embedded bytes read from the source are kept.
* ``True``: always embed (PNG/JPEG 8-bit files byte for byte, others as the 8-bit PNG).
* ``False``: never (``imageData: null``).

The file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path, PureWindowsPath
from typing import Any, Iterable

import numpy as np

from ..atomic import atomic_write_json
from ..errors import NanodefectError
from . import geometry
from ._image import decode_image_size, image_size, labelme_native, png8_bytes
from .model import (
    AnnotationSet,
    Crop,
    LineAnnotation,
    ObjectAnnotation,
    PointAnnotation,
    is_crop_label,
    is_point_label,
    positive_int,
)

#: version string written to new files (the JSON layout of labelme 5.x, read by 6.x)
LABELME_FORMAT_VERSION = "5.5.0"
HOLE_DESCRIPTION = "hole"
_SHAPE_KEYS = {"label", "points", "group_id", "shape_type", "flags", "description", "mask"}
_OUR_SHAPE_KEYS = {"score", "attributes", "width_px"}
_TOP_KEYS = {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth", "pixel_size_nm"}


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise NanodefectError("file not found", path) from None
    except json.JSONDecodeError as e:
        raise NanodefectError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", path) from None
    except UnicodeDecodeError:
        raise NanodefectError("not valid JSON: the file is not UTF-8 text", path) from None
    except OSError as e:
        raise NanodefectError(f"cannot read the file ({e.strerror or e})", path) from None


def is_labelme_dict(data: Any) -> bool:
    """True when ``data`` (parsed JSON) looks like a LabelMe file (a dict with ``shapes``)."""
    return isinstance(data, dict) and "shapes" in data


def read_labelme(path: str | os.PathLike, data: dict | None = None) -> AnnotationSet:
    """Read one LabelMe JSON file into an :class:`AnnotationSet` (``source`` = ``path``).

    ``data``: the already parsed JSON, if any. Raises :class:`NanodefectError` naming
    the file and the shape for invalid JSON, missing keys or malformed shapes.
    """
    path = Path(path)
    if data is None:
        data = _load_json(path)
    return labelme_dict_to_set(data, path)


def labelme_dict_to_set(data: Any, path: Path | None = None) -> AnnotationSet:
    """Convert parsed LabelMe JSON to an :class:`AnnotationSet` (see the module docstring)."""
    if not isinstance(data, dict):
        raise NanodefectError(f"not a LabelMe file: the JSON top level is a {type(data).__name__}, not an object", path)
    if "shapes" not in data:
        raise NanodefectError("not a LabelMe file: missing key 'shapes'", path)
    if not isinstance(data["shapes"], list):
        raise NanodefectError("'shapes' must be a list", path)
    aset = AnnotationSet(source=None if path is None else Path(path))
    ip = data.get("imagePath")
    if ip is not None and not isinstance(ip, str):
        raise NanodefectError("'imagePath' must be a string", path)
    aset.image_path = PureWindowsPath(ip).as_posix() if ip and "\\" in ip else ip
    for key, attr in (("imageHeight", "image_height"), ("imageWidth", "image_width")):
        v = data.get(key)
        if v is not None:
            setattr(aset, attr, positive_int(v, f"'{key}'", path))
    if data.get("imageData"):
        try:
            aset.image_data = base64.b64decode(data["imageData"], validate=False)
        except (ValueError, TypeError) as e:
            raise NanodefectError(f"'imageData' is not valid base64 ({e})", path) from None
        if aset.image_shape is None:
            hw = decode_image_size(aset.image_data)
            if hw is None:
                raise NanodefectError("'imageData' is not an image PIL can decode", path)
            aset.image_height, aset.image_width = hw
    ps = data.get("pixel_size_nm")
    if ps is not None:
        if isinstance(ps, bool) or not isinstance(ps, (int, float)) or not np.isfinite(ps) or ps <= 0:
            raise NanodefectError(f"'pixel_size_nm' must be a positive number, got {ps!r}", path)
        aset.pixel_size_nm = float(ps)
    flags = data.get("flags") or {}
    if not isinstance(flags, dict):
        raise NanodefectError("'flags' must be an object of name: true/false", path)
    aset.tags = [str(k) for k, v in flags.items() if v]
    lm_extra: dict[str, Any] = {k: v for k, v in data.items() if k not in _TOP_KEYS}
    if "version" in data:
        lm_extra["version"] = data["version"]
    if flags:
        lm_extra["flags"] = dict(flags)
    if lm_extra:
        aset.extra["labelme"] = lm_extra

    holes: list[tuple[int, dict, np.ndarray]] = []
    for i, shape in enumerate(data["shapes"]):
        try:
            _add_shape(aset, shape, holes)
        except NanodefectError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            label = shape.get("label") if isinstance(shape, dict) else None
            raise NanodefectError(f"shape {i} (label {label!r}): {e}", path) from None
    for i, shape, ring in holes:
        parent = _find_parent(aset.objects, shape, ring)
        if parent is None:  # no owner: keep it as an ordinary object
            aset.objects.append(ObjectAnnotation(
                label=shape["label"], polygon=ring, instance_id=shape.get("group_id"),
                description=shape.get("description") or "", attributes=dict(shape.get("flags") or {})))
        else:
            parent.holes.append(ring)
    return aset


def _find_parent(objects: list[ObjectAnnotation], shape: dict, ring: np.ndarray) -> ObjectAnnotation | None:
    gid = shape.get("group_id")
    for o in objects:
        if gid is not None and o.instance_id != gid:
            continue
        if o.label != shape["label"]:
            continue
        if geometry.points_in_ring(ring, o.polygon).mean() >= 0.9:
            return o
    return None


def _common(shape: dict) -> dict[str, Any]:
    """Fields shared by every annotation kind, from one LabelMe shape."""
    gid = shape.get("group_id")
    if gid is not None and (isinstance(gid, bool) or not isinstance(gid, int)):
        raise ValueError(f"group_id must be an integer or null, got {gid!r}")
    flags = shape.get("flags") or {}
    if not isinstance(flags, dict):
        raise ValueError("flags must be an object")
    attrs = dict(flags)
    if isinstance(shape.get("attributes"), dict):
        attrs.update(shape["attributes"])
    desc = shape.get("description") or ""
    if not isinstance(desc, str):
        raise ValueError("description must be a string")
    extra = {k: v for k, v in shape.items() if k not in _SHAPE_KEYS and k not in _OUR_SHAPE_KEYS}
    return {"instance_id": gid, "attributes": attrs, "description": desc, "extra": extra}


def _add_shape(aset: AnnotationSet, shape: Any, holes: list) -> None:
    if not isinstance(shape, dict):
        raise ValueError(f"a shape must be an object, got {type(shape).__name__}")
    for key in ("label", "points"):
        if key not in shape:
            raise ValueError(f"missing key {key!r}")
    label = shape["label"]
    if not isinstance(label, str):
        raise ValueError(f"label must be a string, got {label!r}")
    st = shape.get("shape_type") or "polygon"
    pts = shape["points"]
    if not isinstance(pts, list):
        raise ValueError("points must be a list of [x, y]")
    common = _common(shape)
    score = shape.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise ValueError(f"score must be a number, got {score!r}")

    def ring(n_min: int, n_exact: int | None = None) -> np.ndarray:
        a = geometry.as_ring(pts, min_points=n_min)
        if n_exact is not None and len(a) != n_exact:
            raise ValueError(f"a {st} shape needs exactly {n_exact} points, got {len(a)}")
        return a

    if st in ("polygon", "oriented_rectangle"):
        a = ring(3, 4 if st == "oriented_rectangle" else None)
        if common["description"].strip().lower() == HOLE_DESCRIPTION and st == "polygon":
            holes.append((len(holes), shape, a))
            return
        aset.objects.append(ObjectAnnotation(label=label, polygon=a, shape_type=st, score=score, **common))
    elif st == "rectangle":
        a = ring(2, 2)
        (x0, y0), (x1, y1) = a
        if x0 == x1 or y0 == y1:
            raise ValueError("rectangle has zero width or height")
        if is_crop_label(label):
            aset.crops.append(Crop(x0, y0, x1, y1, label=label, **common))
        else:
            aset.objects.append(ObjectAnnotation(label=label, polygon=geometry.rectangle_ring(x0, y0, x1, y1),
                                                 shape_type="rectangle", score=score, **common))
    elif st == "circle":
        a = ring(2, 2)
        (cx, cy), (px, py) = a
        r = float(np.hypot(px - cx, py - cy))
        if r <= 0:
            raise ValueError("circle has radius 0")
        if is_point_label(label):
            aset.points.append(PointAnnotation(label=label, x=cx, y=cy, radius=r, score=score, **common))
        else:
            aset.objects.append(ObjectAnnotation.from_circle(label, cx, cy, r, score=score, **common))
    elif st in ("line", "linestrip"):
        a = ring(2, None)
        w = shape.get("width_px")
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0):
            raise ValueError(f"width_px must be a positive number, got {w!r}")
        aset.lines.append(LineAnnotation(label=label, points=a, width_px=w, shape_type=st, **common))
    elif st in ("point", "points"):
        a = ring(1, 1 if st == "point" else None)
        r = shape.get("radius")
        for x, y in a:
            aset.points.append(PointAnnotation(label=label, x=x, y=y, radius=r, score=score, **common))
    elif st == "mask":
        if not isinstance(shape.get("mask"), str):
            raise ValueError("a mask shape needs 'mask': a base64-encoded PNG")
        a = ring(1, None)
        mask = _decode_mask(shape["mask"])
        x0, y0 = (int(round(v)) for v in a[0])
        parts = geometry.trace_mask(mask, offset=(x0, y0))
        if not parts:
            raise ValueError("the mask is empty")
        for outer, hs in parts:
            aset.objects.append(ObjectAnnotation(label=label, polygon=outer, holes=hs, shape_type="mask",
                                                 score=score, **{**common, "extra": dict(common["extra"])}))
    else:
        raise ValueError(f"unsupported shape_type {st!r}")


def _decode_mask(b64: str) -> np.ndarray:
    from PIL import Image

    try:
        raw = base64.b64decode(b64)
        with Image.open(io.BytesIO(raw)) as im:
            arr = np.asarray(im)
    except Exception as e:
        raise ValueError(f"mask is not a base64-encoded PNG ({type(e).__name__})") from None
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] < 4 else arr[..., 3]
    return arr.astype(bool)


def _encode_mask(mask: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, bool)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def read_labelme_folder(folder: str | os.PathLike, recursive: bool = False, allow_empty: bool = False) -> list[AnnotationSet]:
    """Read every LabelMe JSON file in ``folder`` (sorted by name).

    JSON files that are not LabelMe files (no ``shapes`` key, e.g. a COCO file) are
    skipped; invalid JSON raises :class:`NanodefectError`, as does a folder with no
    LabelMe file at all (unless ``allow_empty``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NanodefectError("not a folder", folder)
    files = sorted(folder.rglob("*.json") if recursive else folder.glob("*.json"))
    sets = []
    for f in files:
        if f.name.startswith("."):
            continue
        data = _load_json(f)
        if is_labelme_dict(data):
            sets.append(read_labelme(f, data))
    if not sets and not allow_empty:
        raise NanodefectError("no LabelMe JSON files (*.json with 'shapes') in the folder", folder)
    return sets


# --------------------------------------------------------------------------- writing


def _num(v: float) -> float | int:
    """JSON number: integers stay integers (as labelme writes them)."""
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def _nums(arr: np.ndarray) -> list:
    """``arr.tolist()`` with :func:`_num`'s rule; all-integer arrays (traced pixel outlines)
    in one step (per-value conversion was 0.6 s of a 2048² prediction's 2000 polygons)."""
    if arr.size == 0 or (np.all(np.abs(arr) < 2**53) and np.array_equal(arr, np.trunc(arr))):
        return arr.astype(np.int64).tolist()
    flat = [_num(v) for v in arr.reshape(-1).tolist()]
    if arr.ndim == 2:
        k = arr.shape[1]
        return [flat[i : i + k] for i in range(0, len(flat), k)]
    return flat


def _pts(a: Iterable) -> list[list[float]]:
    return _nums(np.asarray(a, dtype=np.float64).reshape(-1, 2))


def _shape(label, points, shape_type, ann, **more) -> dict[str, Any]:
    flags = {k: v for k, v in ann.attributes.items() if isinstance(v, bool)}
    other = {k: v for k, v in ann.attributes.items() if not isinstance(v, bool)}
    d: dict[str, Any] = {
        "label": label,
        "points": points,
        "group_id": ann.instance_id,
        "description": ann.description or "",
        "shape_type": shape_type,
        "flags": flags,
        "mask": None,
    }
    d.update(more)
    if other:
        d["attributes"] = other
    if getattr(ann, "score", None) is not None:
        d["score"] = float(ann.score)
    for k, v in ann.extra.items():
        d.setdefault(k, v)
    return d


def set_to_labelme_shapes(aset: AnnotationSet, holes: str = "polygon") -> list[dict[str, Any]]:
    """LabelMe ``shapes`` for an annotation set: crops, objects (+ hole shapes), lines, points.

    ``holes``: ``"polygon"`` writes each hole as a polygon shape with ``description
    "hole"`` and the object's ``group_id`` (a fresh one when the object has none);
    ``"mask"`` writes objects with holes as exact ``mask`` shapes instead.
    """
    if holes not in ("polygon", "mask"):
        raise ValueError("holes must be 'polygon' or 'mask'")
    shapes: list[dict[str, Any]] = []
    used_ids = {a.instance_id for a in [*aset.objects, *aset.lines, *aset.points, *aset.crops] if a.instance_id is not None}
    next_gid = max([i for i in used_ids if isinstance(i, int)], default=0) + 1
    for c in aset.crops:
        shapes.append(_shape(c.label, _pts([[c.x0, c.y0], [c.x1, c.y1]]), "rectangle", c))
    for o in aset.objects:
        if o.shape_type == "mask" or (o.holes and holes == "mask"):
            x0, y0, x1, y1 = geometry.bounds([o.polygon])
            c0, r0 = int(np.floor(x0)), int(np.floor(y0))
            c1, r1 = int(np.ceil(x1)), int(np.ceil(y1))
            rings = [r - (c0, r0) for r in o.rings]
            m = geometry.rings_to_mask(rings, (max(r1 - r0, 1), max(c1 - c0, 1)))
            if m.any():
                rr, cc = np.nonzero(m)
                m = m[rr.min() : rr.max() + 1, cc.min() : cc.max() + 1]
                top = (c0 + int(cc.min()), r0 + int(rr.min()))
                shapes.append(_shape(o.label, _pts([top, (top[0] + m.shape[1] - 1, top[1] + m.shape[0] - 1)]),
                                     "mask", o, mask=_encode_mask(m)))
                continue
        if o.shape_type == "circle" and o.circle is not None and not o.holes:
            cx, cy, r = o.circle
            shapes.append(_shape(o.label, _pts([[cx, cy], [cx + r, cy]]), "circle", o))
            continue
        if o.shape_type == "rectangle" and len(o.polygon) == 4 and not o.holes and _axis_aligned(o.polygon):
            shapes.append(_shape(o.label, _pts([o.polygon[0], o.polygon[2]]), "rectangle", o))
            continue
        st = "oriented_rectangle" if (o.shape_type == "oriented_rectangle" and len(o.polygon) == 4) else "polygon"
        s = _shape(o.label, _pts(o.polygon), st, o)
        if o.holes and s["group_id"] is None:
            s["group_id"] = next_gid
            next_gid += 1
        shapes.append(s)
        for h in o.holes:
            shapes.append({"label": o.label, "points": _pts(h), "group_id": s["group_id"],
                           "description": HOLE_DESCRIPTION, "shape_type": "polygon", "flags": {}, "mask": None})
    for ln in aset.lines:
        st = "line" if (ln.shape_type == "line" and len(ln.points) == 2) else "linestrip"
        more = {"width_px": _num(ln.width_px)} if ln.width_px is not None else {}
        shapes.append(_shape(ln.label, _pts(ln.points), st, ln, **more))
    for p in aset.points:
        if p.radius:
            shapes.append(_shape(p.label, _pts([[p.x, p.y], [p.x + p.radius, p.y]]), "circle", p))
        else:
            shapes.append(_shape(p.label, _pts([[p.x, p.y]]), "point", p))
    return shapes


def _axis_aligned(p: np.ndarray) -> bool:
    return bool(p[0, 1] == p[1, 1] and p[1, 0] == p[2, 0] and p[2, 1] == p[3, 1] and p[3, 0] == p[0, 0])


def _relpath(target: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(target, start)).as_posix()
    except ValueError:  # other drive on Windows
        return target.as_posix()


def set_to_labelme_dict(
    aset: AnnotationSet, json_path: str | os.PathLike, embed_image: bool | str = "auto", holes: str = "polygon",
    png: tuple[bytes, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The LabelMe JSON object :func:`write_labelme` writes to ``json_path``.

    ``png``: the image file's 8-bit PNG as :func:`png8_bytes` returns it, when the caller
    has already made it (used instead of encoding the file again)."""
    json_path = Path(json_path)
    if embed_image not in ("auto", True, False):
        raise ValueError("embed_image must be 'auto', True or False")
    img = aset.resolve_image_path()
    image_path = aset.image_path_relative_to(json_path.resolve().parent)
    hw = aset.image_shape
    if hw is None and img is not None:
        hw = image_size(img)
    image_data: bytes | None = None
    have_file = img is not None and img.is_file()
    if embed_image is True or (embed_image == "auto" and not (have_file and labelme_native(img))):
        if have_file:
            if labelme_native(img):
                image_data = img.read_bytes()
                hw = hw or image_size(img)
            else:
                try:
                    image_data, hw_png = png if png is not None else png8_bytes(img)
                except NanodefectError:
                    if embed_image is True and aset.image_data is None:
                        raise
                    image_data, hw_png = aset.image_data, None
                if hw_png is not None:
                    if hw is not None and tuple(hw) != tuple(hw_png):
                        raise NanodefectError(
                            f"image is {hw_png[0]}x{hw_png[1]} px but the annotations say {hw[0]}x{hw[1]}", img)
                    hw = hw_png
        elif aset.image_data is not None:
            image_data = aset.image_data
        elif embed_image is True:
            raise NanodefectError("cannot embed the image: file not found", img or aset.image_path)
    if image_data is not None and hw is None:
        hw = decode_image_size(image_data)
    lm_extra = dict(aset.extra.get("labelme", {}))
    flags = {str(k): False for k in (lm_extra.pop("flags", None) or {})}
    flags.update({t: True for t in aset.tags})
    version = lm_extra.pop("version", LABELME_FORMAT_VERSION)
    out: dict[str, Any] = {
        "version": version,
        "flags": flags,
        "shapes": set_to_labelme_shapes(aset, holes=holes),
        "imagePath": image_path,
        "imageData": None if image_data is None else base64.b64encode(image_data).decode("ascii"),
        "imageHeight": None if hw is None else int(hw[0]),
        "imageWidth": None if hw is None else int(hw[1]),
    }
    if aset.pixel_size_nm is not None:
        out["pixel_size_nm"] = float(aset.pixel_size_nm)
    for k, v in lm_extra.items():
        out.setdefault(k, v)
    return out


def write_labelme(
    aset: AnnotationSet, path: str | os.PathLike, embed_image: bool | str = "auto", holes: str = "polygon",
    png: tuple[bytes, tuple[int, int]] | None = None,
) -> Path:
    """Write ``aset`` as a LabelMe JSON file atomically; returns the path.

    ``imagePath`` is relative to the JSON file's folder; ``embed_image`` and ``holes``
    follow the rules in the module docstring; ``png`` as in :func:`set_to_labelme_dict`.
    """
    path = Path(path)
    data = set_to_labelme_dict(aset, path, embed_image=embed_image, holes=holes, png=png)
    try:
        # pretty-print small files; big ones compactly (the C encoder is ~10x faster)
        return atomic_write_json(path, data, indent=2 if len(data.get("shapes", ())) <= 1000 else None)
    except ValueError as e:  # NaN etc.
        raise NanodefectError(f"cannot write LabelMe JSON ({e})", path) from None
    except OSError as e:
        raise NanodefectError(f"cannot write the file ({e.strerror or e})", path) from None
