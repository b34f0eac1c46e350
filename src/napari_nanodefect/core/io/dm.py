"""Gatan DigitalMicrograph ``.dm3`` / ``.dm4`` files.

Our own reader (pure Python + numpy). Facts about the format used here:

* Header, always big-endian: ``uint32 version`` (3 or 4), the length of the root tag
  group (``uint32`` in DM3, ``uint64`` in DM4) and ``uint32 byte_order`` (1 = the
  *data values* are little-endian, 0 = big-endian). The file ends with 8 zero bytes.
* A tag group: ``uint8 sorted``, ``uint8 open``, number of tags (``uint32`` DM3 /
  ``uint64`` DM4), then the tags.
* A tag: ``uint8 kind`` (20 = group, 21 = data), ``uint16 name_length`` (big-endian),
  the name (may be empty: entries of list-like groups such as ``ImageList`` are
  unnamed), in DM4 a ``uint64`` total tag length, then the group or data.
* A data tag: the four bytes ``%%%%``, the number of "info" integers and the info
  integers themselves (``uint32`` DM3 / ``uint64`` DM4, big-endian), then the value in
  the file's data byte order. ``info[0]`` is the type: 2 int16, 3 int32, 4 uint16,
  5 uint32, 6 float32, 7 float64, 8 bool (1 byte), 9 int8, 10 uint8, 11 int64,
  12 uint64, 15 struct ``[15, name_len, n_fields, (field_name_len, field_type) * n]``,
  18 string ``[18, length]``, 20 array ``[20, element_type, count]`` or, for arrays of
  structs, ``[20, 15, name_len, n_fields, (field_name_len, field_type) * n, count]``.
  Text (units, names) is usually an array of uint16 UTF-16 code units.
* Images live in ``ImageList``: one unnamed group per image (the first is usually the
  display thumbnail). ``ImageData`` holds ``Data`` (the pixel array), ``DataType``
  (1 int16, 2 float32, 3 complex64, 5 packed complex, 6 uint8, 7 int32, 8 / 23 RGB as
  4 bytes B, G, R, A, 9 int8, 10 uint16, 11 uint32, 12 float64, 13 complex128,
  14 binary, 27 / 28 packed complex), ``Dimensions`` (x first, so the numpy shape is
  the reverse) and ``Calibrations/Dimension[i]`` with ``Origin``, ``Scale`` and
  ``Units`` for dimension ``i`` (0 = x, 1 = y). ``ImageTags`` has the instrument
  metadata (``Microscope Info``, ``DataBar``, ``Acquisition``, ...).

Every count and length is checked against the bytes left in the file *before* anything
is read or allocated, so corrupt or truncated files give a :class:`NanodefectError`
rather than a deep traceback or a huge allocation.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import CorruptFile, translate_read_errors
from ..micrograph import Micrograph, from_array, unit_to_nm

VENDOR = "Gatan DigitalMicrograph"
PIXEL_SIZE_SOURCE = "DigitalMicrograph calibration (ImageData/Calibrations)"

TAG_GROUP = 20
TAG_DATA = 21
TYPE_STRUCT = 15
TYPE_STRING = 18
TYPE_ARRAY = 20
#: tag value type code -> numpy dtype (byte order added when reading)
TAG_DTYPES = {
    2: "i2",
    3: "i4",
    4: "u2",
    5: "u4",
    6: "f4",
    7: "f8",
    8: "u1",  # bool, 1 byte
    9: "i1",
    10: "u1",
    11: "i8",
    12: "u8",
}
#: ImageData/DataType -> (numpy dtype, name); None dtype = refused with the reason
IMAGE_DTYPES: dict[int, tuple[str | None, str]] = {
    1: ("i2", "int16"),
    2: ("f4", "float32"),
    3: (None, "complex64"),
    4: (None, "obsolete type 4"),
    5: (None, "packed complex (FFT)"),
    6: ("u1", "uint8"),
    7: ("i4", "int32"),
    8: ("u1", "RGB (B,G,R,A bytes)"),
    9: ("i1", "int8"),
    10: ("u2", "uint16"),
    11: ("u4", "uint32"),
    12: ("f8", "float64"),
    13: (None, "complex128"),
    14: ("u1", "binary"),
    23: ("u1", "RGB (B,G,R,A bytes)"),
    27: (None, "packed complex64 (FFT)"),
    28: (None, "packed complex128 (FFT)"),
}
RGB_TYPES = {8, 23}

MAX_DEPTH = 64  # nesting of tag groups; real files use < 15
MAX_INFO = 4096  # info integers of one data tag (a struct with ~2000 fields)
MAX_NAME = 4096  # bytes of one tag name (the field is uint16, so at most 65535 anyway)
EAGER_ARRAY_ITEMS = 4096  # metadata arrays up to this size are decoded, larger ones kept as references
MAX_TAG_METADATA = 400  # flattened ImageTags entries kept in the metadata
MAX_TEXT = 200  # characters of one metadata string


_Corrupt = CorruptFile  # parser errors; translate_read_errors names the file


@dataclass
class ArrayRef:
    """An array tag that was not decoded while parsing (large arrays, the image data).

    offset : byte offset of the first element in the file.
    dtype : numpy dtype of one element (byte order included); a structured dtype for
        arrays of structs.
    count : number of elements.
    """

    offset: int
    dtype: np.dtype
    count: int

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


class TagGroup:
    """A DM tag group: an ordered list of ``(name, value)``; names may be empty.

    Values are Python scalars, strings, tuples (structs), lists (small arrays),
    :class:`ArrayRef` (large arrays) or nested :class:`TagGroup` objects.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def get(self, name: str, default: Any = None) -> Any:
        """The value of the first tag called ``name``."""
        for key, value in self.items:
            if key == name:
                return value
        return default

    def path(self, *names: str) -> Any:
        """Follow ``names`` through nested groups; None when any step is missing."""
        node: Any = self
        for name in names:
            if not isinstance(node, TagGroup):
                return None
            node = node.get(name)
        return node

    def values(self) -> list[Any]:
        return [value for _, value in self.items]


class _Cursor:
    """Bounds-checked reading of a file: every read is checked against the file size."""

    def __init__(self, fh: BinaryIO, size: int):
        self.fh = fh
        self.size = size

    @property
    def pos(self) -> int:
        return self.fh.tell()

    def left(self) -> int:
        return self.size - self.fh.tell()

    def need(self, n: int, what: str) -> None:
        """Raise :class:`_Corrupt` unless ``n`` more bytes exist."""
        if n < 0 or n > self.left():
            raise _Corrupt(
                f"truncated or corrupt: {what} needs {n} bytes at offset {self.pos}, "
                f"but only {max(self.left(), 0)} are left in the {self.size}-byte file"
            )

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.fh.read(n)
        if len(data) != n:  # the file shrank while we read it
            raise _Corrupt(f"truncated: could not read {what} at offset {self.pos}")
        return data

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.fh.seek(n, os.SEEK_CUR)

    def uint(self, n: int, what: str) -> int:
        """A big-endian unsigned integer of ``n`` bytes (DM tag headers are big-endian)."""
        return int.from_bytes(self.read(n, what), "big")


class _DMParser:
    """Parses the tag tree of one DM3/DM4 file.

    version : 3 or 4.
    isize : bytes of counts and lengths in tag headers (4 in DM3, 8 in DM4).
    endian : ``"<"`` or ``">"``, the byte order of data values.
    """

    def __init__(self, cursor: _Cursor, version: int, endian: str):
        self.cur = cursor
        self.version = version
        self.isize = 4 if version == 3 else 8
        self.endian = endian

    # -- groups and tags -------------------------------------------------------------------
    def group(self, depth: int) -> TagGroup:
        """A tag group: sorted and open flags, the tag count, then the tags."""
        if depth > MAX_DEPTH:
            raise _Corrupt(f"tag groups nested deeper than {MAX_DEPTH} levels (corrupt file)")
        self.cur.read(2, "tag group flags")
        ntags = self.cur.uint(self.isize, "tag count")
        # each tag takes at least 1 + 2 bytes, so a larger count cannot be real
        if ntags * 3 > self.cur.left():
            raise _Corrupt(f"tag group at offset {self.cur.pos} claims {ntags} tags, more than the file can hold")
        grp = TagGroup()
        for _ in range(ntags):
            grp.items.append(self.tag(depth))
        return grp

    def tag(self, depth: int) -> tuple[str, Any]:
        """One tag: kind, name, (DM4: length), then a group or a data value."""
        start = self.cur.pos
        kind = self.cur.uint(1, "tag kind")
        name_len = self.cur.uint(2, "tag name length")
        if name_len > MAX_NAME:
            raise _Corrupt(f"tag name of {name_len} bytes at offset {start} (corrupt file)")
        name = _decode_name(self.cur.read(name_len, "tag name"))
        if self.version == 4:
            self.cur.uint(8, "tag length")
        if kind == TAG_GROUP:
            return name, self.group(depth + 1)
        if kind == TAG_DATA:
            return name, self.data(name)
        raise _Corrupt(f"unknown tag kind {kind} at offset {start} (corrupt file)")

    def data(self, name: str) -> Any:
        """A data tag: ``%%%%``, the info integers, then the value."""
        if self.cur.read(4, "data tag marker") != b"%%%%":
            raise _Corrupt(f"missing '%%%%' marker of data tag {name!r} at offset {self.cur.pos - 4}")
        ninfo = self.cur.uint(self.isize, "info count")
        if not 1 <= ninfo <= MAX_INFO:
            raise _Corrupt(f"data tag {name!r} has {ninfo} type descriptors (corrupt file)")
        raw = self.cur.read(ninfo * self.isize, "type descriptors")
        fmt = ">" + ("I" if self.isize == 4 else "Q") * ninfo
        info = struct.unpack(fmt, raw)
        kind = info[0]
        if kind in TAG_DTYPES:
            return self.scalar(kind)
        if kind == TYPE_STRING:
            return self.string(info, name)
        if kind == TYPE_STRUCT:
            dtype = self.struct_dtype(info[2], info[3:], name)
            return self.struct_value(dtype)
        if kind == TYPE_ARRAY:
            return self.array(info, name)
        raise _Corrupt(f"unknown data type {kind} in tag {name!r} (corrupt file)")

    # -- values ----------------------------------------------------------------------------
    def simple_dtype(self, code: int, name: str) -> np.dtype:
        if code not in TAG_DTYPES:
            raise _Corrupt(f"unknown element type {code} in tag {name!r} (corrupt file)")
        return np.dtype(self.endian + TAG_DTYPES[code])

    def scalar(self, code: int) -> Any:
        dtype = np.dtype(self.endian + TAG_DTYPES[code])
        value = np.frombuffer(self.cur.read(dtype.itemsize, "tag value"), dtype)[0]
        return bool(value) if code == 8 else value.item()

    def string(self, info: tuple[int, ...], name: str) -> str:
        if len(info) != 2:
            raise _Corrupt(f"bad string descriptor in tag {name!r}")
        raw = self.cur.read(info[1], "string value")
        return raw.decode("utf-8", errors="replace").rstrip("\x00")

    def struct_dtype(self, nfields: int, rest: tuple[int, ...], name: str) -> np.dtype:
        """Structured dtype from ``(field_name_len, field_type)`` pairs."""
        if nfields < 1 or len(rest) != 2 * nfields:
            raise _Corrupt(f"bad struct descriptor in tag {name!r}")
        codes = rest[1 : 2 * nfields : 2]
        fields = [(f"f{i}", self.simple_dtype(code, name)) for i, code in enumerate(codes)]
        return np.dtype(fields)

    def struct_value(self, dtype: np.dtype) -> tuple:
        raw = self.cur.read(dtype.itemsize, "struct value")
        rec = np.frombuffer(raw, dtype)[0]
        return tuple(v.item() for v in rec)

    def array(self, info: tuple[int, ...], name: str) -> Any:
        """An array tag: decoded when small, otherwise an :class:`ArrayRef`."""
        if len(info) < 3:
            raise _Corrupt(f"bad array descriptor in tag {name!r}")
        if info[1] == TYPE_STRUCT:
            nfields = info[3] if len(info) > 3 else 0
            if len(info) != 5 + 2 * nfields:
                raise _Corrupt(f"bad struct-array descriptor in tag {name!r}")
            dtype = self.struct_dtype(nfields, info[4:-1], name)
            count = info[-1]
        else:
            if len(info) != 3:
                raise _Corrupt(f"bad array descriptor in tag {name!r}")
            dtype = self.simple_dtype(info[1], name)
            count = info[2]
        ref = ArrayRef(self.cur.pos, dtype, count)
        self.cur.need(ref.nbytes, f"array {name!r} of {count} elements")
        if name == "Data" or count > EAGER_ARRAY_ITEMS:
            self.cur.skip(ref.nbytes, f"array {name!r}")
            return ref
        arr = np.frombuffer(self.cur.read(ref.nbytes, f"array {name!r}"), dtype)
        return _array_value(arr, info[1])


def _decode_name(raw: bytes) -> str:
    """Tag names are mostly ASCII; a few use Latin-1 (e.g. ``µ`` in ``Emission Current (µA)``)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _array_value(arr: np.ndarray, code: int) -> Any:
    """A small decoded array: uint16 arrays are UTF-16 text, others lists."""
    if arr.dtype.names:
        return [tuple(v.item() for v in rec) for rec in arr]
    if code == 4:  # DM stores text as UTF-16 code units
        try:
            return arr.astype("<u2").tobytes().decode("utf-16-le").rstrip("\x00")
        except UnicodeDecodeError:
            return arr.tolist()
    return arr.tolist()


# -- file level --------------------------------------------------------------------------------
def parse_dm(fh: BinaryIO, size: int) -> tuple[TagGroup, dict[str, Any]]:
    """Parse the header and the whole tag tree.

    Returns the root :class:`TagGroup` and a header dict: ``version`` (3/4),
    ``root_length`` (bytes the header says the tag tree takes), ``endian`` (``"<"`` or
    ``">"``, byte order of the data values).
    """
    cur = _Cursor(fh, size)
    version = cur.uint(4, "DM version")
    if version not in (3, 4):
        raise _Corrupt(f"not a DigitalMicrograph file (version field {version}, expected 3 or 4)")
    isize = 4 if version == 3 else 8
    root_length = cur.uint(isize, "root length")
    order = cur.uint(4, "byte order")
    if order not in (0, 1):
        raise _Corrupt(f"not a DigitalMicrograph file (byte-order field {order}, expected 0 or 1)")
    header = {"version": version, "root_length": root_length, "endian": "<" if order == 1 else ">"}
    parser = _DMParser(cur, version, header["endian"])
    try:
        root = parser.group(0)
    except _Corrupt as exc:
        expected = 4 + isize + 4 + root_length + 8  # header, tag tree, 8 closing zero bytes
        if expected > size:
            raise _Corrupt(f"{exc}; the header says the file should be {expected} bytes long") from None
        raise
    return root, header


def _dimensions(image_data: TagGroup) -> list[int]:
    """``ImageData/Dimensions``: sizes with x first."""
    dims = image_data.get("Dimensions")
    if not isinstance(dims, TagGroup):
        return []
    out = []
    for v in dims.values():
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Corrupt(f"bad image dimension {v!r}")
        out.append(v)
    return out


def _image_entries(root: TagGroup) -> list[tuple[int, TagGroup]]:
    """``(index, entry)`` of the ``ImageList`` entries with an ``ImageData/Data`` array."""
    images = root.get("ImageList")
    if not isinstance(images, TagGroup):
        return []
    out = []
    for i, entry in enumerate(images.values()):
        if isinstance(entry, TagGroup) and isinstance(entry.path("ImageData", "Data"), ArrayRef):
            out.append((i, entry))
    return out


def _thumbnail_indices(root: TagGroup) -> set[int]:
    """``ImageList`` indices named by ``Thumbnails/[i]/ImageIndex`` (the display thumbnails)."""
    thumbs = root.get("Thumbnails")
    if not isinstance(thumbs, TagGroup):
        return set()
    out = set()
    for t in thumbs.values():
        idx = t.get("ImageIndex") if isinstance(t, TagGroup) else None
        if isinstance(idx, int) and not isinstance(idx, bool):
            out.add(idx)
    return out


def _pixel_count(entry: TagGroup) -> int:
    dims = _dimensions(entry.get("ImageData"))
    return math.prod(dims) if dims else 0


def pick_main_image(root: TagGroup) -> tuple[int, TagGroup, int]:
    """The main image: the largest ``ImageList`` entry that is not a thumbnail.

    Thumbnails are the entries named in ``Thumbnails/[i]/ImageIndex`` (usually the first
    entry, an RGB rendering that can be *larger* than the data); they are used only when
    nothing else is there. Ties go to the later entry. Returns ``(index, entry, n_images)``
    where ``index`` counts ``ImageList`` entries and ``n_images`` is the number of
    non-thumbnail images.
    """
    entries = _image_entries(root)
    if not entries:
        raise _Corrupt("no image found (the ImageList has no ImageData/Data)")
    thumbs = _thumbnail_indices(root)
    data = [(i, e) for i, e in entries if i not in thumbs] or entries
    _, index, entry = max((_pixel_count(e), i, e) for i, e in data)
    return index, entry, len(data)


def _image_dtype(image_data: TagGroup, ref: ArrayRef, endian: str) -> tuple[np.dtype, int, str]:
    """Pixel dtype from ``DataType`` (falling back to the Data array's element type)."""
    code = image_data.get("DataType")
    if isinstance(code, int) and code in IMAGE_DTYPES:
        kind, label = IMAGE_DTYPES[code]
        if kind is None:
            raise _Corrupt(f"{label} images (DataType {code}) are not supported; save a real-valued image")
        return np.dtype(endian + kind), code, label
    if ref.dtype.names:
        raise _Corrupt(f"unsupported image data type {code!r}")
    return ref.dtype, code if isinstance(code, int) else -1, str(ref.dtype.newbyteorder("="))


def read_image_array(fh: BinaryIO, entry: TagGroup, endian: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the pixels of one ``ImageList`` entry; numpy shape is the reversed Dimensions.

    Returns the array (native byte order; RGB images as ``(..., 3)`` uint8) and a dict
    with ``data_type`` (the DM code), ``data_type_name`` and ``dimensions`` (x first).
    """
    image_data = entry.get("ImageData")
    ref = image_data.get("Data")
    dims = _dimensions(image_data)
    if not dims or min(dims) < 1:
        raise _Corrupt(f"bad image dimensions {dims}")
    dtype, code, label = _image_dtype(image_data, ref, endian)
    per_pixel = 4 if code in RGB_TYPES else 1
    count = math.prod(dims) * per_pixel
    if count * dtype.itemsize != ref.nbytes:
        raise _Corrupt(
            f"image size mismatch: dimensions {dims} of {label} need {count * dtype.itemsize} bytes, "
            f"the Data array has {ref.nbytes}"
        )
    arr = np.empty(count, dtype=dtype.newbyteorder("="))
    fh.seek(ref.offset)
    if fh.readinto(arr.view(np.uint8)) != ref.nbytes:
        raise _Corrupt("truncated: the image data ends early")
    if not dtype.isnative:  # the raw bytes are in the file's byte order
        arr.byteswap(inplace=True)
    shape = tuple(reversed(dims))
    if code in RGB_TYPES:
        arr = np.ascontiguousarray(arr.reshape(shape + (4,))[..., [2, 1, 0]])  # B,G,R,A -> R,G,B
    else:
        arr = arr.reshape(shape)
    if code == 14:
        arr = arr.astype(bool)
    return arr, {"data_type": code, "data_type_name": label, "dimensions": dims}


# -- calibration and metadata ------------------------------------------------------------------
def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _as_text(value: Any) -> str:
    """Units and names: a decoded string, or '' for an empty / undecodable array."""
    return value.strip() if isinstance(value, str) else ""


def calibrations(image_data: TagGroup) -> list[dict[str, Any]]:
    """``ImageData/Calibrations/Dimension``: one dict per dimension, x first.

    Each dict: ``scale`` (physical size of one pixel, in ``units``), ``origin`` (the
    pixel index of the physical zero, DM convention: value = (index - origin) * scale)
    and ``units`` (e.g. ``"nm"``, ``"µm"``, ``"1/nm"``, ``""`` when uncalibrated).
    """
    dims = image_data.path("Calibrations", "Dimension")
    if not isinstance(dims, TagGroup):
        return []
    out = []
    for cal in dims.values():
        if not isinstance(cal, TagGroup):
            continue
        out.append(
            {
                "scale": _as_float(cal.get("Scale")),
                "origin": _as_float(cal.get("Origin")),
                "units": _as_text(cal.get("Units")),
            }
        )
    return out


def axis_size_nm(cal: dict[str, Any] | None) -> float | None:
    """Pixel size in nm of one calibrated axis, or None (no scale, not a length unit)."""
    if not cal or not cal.get("scale"):
        return None
    units = cal["units"].replace("\u212b", "\u00c5")  # the Angstrom sign -> the letter Å
    factor = unit_to_nm(units)
    if factor is None:
        return None
    size = abs(cal["scale"]) * factor
    return size if size > 0 and math.isfinite(size) else None


#: curated metadata: key -> (path below ImageTags, conversion)
CURATED: dict[str, tuple[tuple[str, ...], Any]] = {
    "microscope": (("Microscope Info", "Name"), _as_text),
    "microscope_model": (("Microscope Info", "Microscope"), _as_text),
    "voltage_kV": (("Microscope Info", "Voltage"), lambda v: None if _as_float(v) is None else _as_float(v) / 1000.0),
    "indicated_magnification": (("Microscope Info", "Indicated Magnification"), _as_float),
    "actual_magnification": (("Microscope Info", "Actual Magnification"), _as_float),
    "field_of_view_um": (("Microscope Info", "Field of View (µm)"), _as_float),
    "operation_mode": (("Microscope Info", "Operation Mode"), _as_text),
    "illumination_mode": (("Microscope Info", "Illumination Mode"), _as_text),
    "imaging_mode": (("Microscope Info", "Imaging Mode"), _as_text),
    "stem_camera_length": (("Microscope Info", "STEM Camera Length"), _as_float),
    "device": (("DataBar", "Device Name"), _as_text),
    "acquisition_device": (("Acquisition", "Device", "Name"), _as_text),
    "exposure_s": (("DataBar", "Exposure Time (s)"), _as_float),
    "acquisition_date": (("DataBar", "Acquisition Date"), _as_text),
    "acquisition_time": (("DataBar", "Acquisition Time"), _as_text),
    "specimen": (("Session Info", "Specimen"), _as_text),
    "gms_version": (("GMS Version", "Saved"), _as_text),
}


def curated_metadata(tags: TagGroup | None) -> dict[str, Any]:
    """The :data:`CURATED` fields found in ``ImageTags`` (empty / missing ones left out)."""
    out: dict[str, Any] = {}
    if not isinstance(tags, TagGroup):
        return out
    for key, (path, convert) in CURATED.items():
        value = convert(tags.path(*path))
        if value not in (None, ""):
            out[key] = value
    return out


def flatten_tags(group: TagGroup, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """``ImageTags`` as ``{"Microscope Info:Voltage": 200000.0, ...}`` (JSON-friendly).

    Only scalars, strings (cut to :data:`MAX_TEXT` characters) and short lists are kept,
    at most :data:`MAX_TAG_METADATA` entries; large arrays are left out.
    """
    out = {} if out is None else out
    for i, (name, value) in enumerate(group.items):
        if len(out) >= MAX_TAG_METADATA:
            break
        key = f"{prefix}{name or f'[{i}]'}"
        if isinstance(value, TagGroup):
            flatten_tags(value, key + ":", out)
        elif isinstance(value, str):
            out[key] = value[:MAX_TEXT]
        elif isinstance(value, (bool, int)):
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else None
        elif isinstance(value, (list, tuple)) and len(value) <= 16:
            out[key] = [v if not isinstance(v, float) or math.isfinite(v) else None for v in value]
    return out


def build_metadata(header: dict[str, Any], entry: TagGroup, index: int, n_images: int, info: dict) -> dict[str, Any]:
    """JSON-friendly metadata of the main image.

    format / dm_version / byte_order : the file header.
    image_index, n_images : which ``ImageList`` entry was read, out of how many images.
    image_name : the image's ``Name`` tag.
    data_type, data_type_name, dimensions : ``ImageData`` (dimensions x first).
    calibrations : see :func:`calibrations`; intensity : the ``Brightness`` calibration.
    microscope, voltage_kV, indicated_magnification, ... : see :data:`CURATED`.
    image_tags : the flattened ``ImageTags`` (see :func:`flatten_tags`).
    """
    image_data = entry.get("ImageData")
    bright = image_data.path("Calibrations", "Brightness")
    md: dict[str, Any] = {
        "format": f"DM{header['version']}",
        "dm_version": header["version"],
        "byte_order": "little" if header["endian"] == "<" else "big",
        "image_index": index,
        "n_images": n_images,
        "image_name": _as_text(entry.get("Name")),
        **info,
        "calibrations": calibrations(image_data),
    }
    if isinstance(bright, TagGroup):
        md["intensity"] = {
            "scale": _as_float(bright.get("Scale")),
            "origin": _as_float(bright.get("Origin")),
            "units": _as_text(bright.get("Units")),
        }
    tags = entry.get("ImageTags")
    md.update(curated_metadata(tags))
    if isinstance(tags, TagGroup):
        md["image_tags"] = flatten_tags(tags)
    return md


def read_dm(path: str | os.PathLike, plane: int = 0) -> Micrograph:
    """Read the main image of a DigitalMicrograph ``.dm3``/``.dm4`` file.

    The main image is the largest ``ImageList`` entry (the first is usually a
    thumbnail). The pixel size comes from ``ImageData/Calibrations/Dimension`` (x, and y
    for ``pixel_size_yx_nm``) converted to nm; it is None when the axes are uncalibrated
    or not in length units (e.g. diffraction patterns in 1/nm). Stacks (3-D data) follow
    the analysed-plane rule with ``plane``.

    Raises
    ------
    NanodefectError : not a DM file, truncated or corrupt, or an unsupported (complex)
        pixel type; the message names the file.
    """
    p = Path(path)
    with translate_read_errors(p, "DigitalMicrograph file"):
        size = p.stat().st_size
        with open(p, "rb") as fh:
            root, header = parse_dm(fh, size)
            index, entry, n_images = pick_main_image(root)
            array, info = read_image_array(fh, entry, header["endian"])
    md = build_metadata(header, entry, index, n_images, info)
    cals = md["calibrations"]
    sx = axis_size_nm(cals[0] if cals else None)
    sy = axis_size_nm(cals[1] if len(cals) > 1 else None)
    if sx is None and sy is not None:
        sx = sy
    yx = None if sx is None else (sy if sy is not None else sx, sx)
    return from_array(
        array,
        path=p,
        pixel_size_nm=sx,
        pixel_size_source=PIXEL_SIZE_SOURCE,
        vendor=VENDOR,
        metadata=md,
        plane=plane,
        pixel_size_yx_nm=yx,
    )


__all__ = ["read_dm", "parse_dm", "pick_main_image", "read_image_array", "TagGroup", "ArrayRef"]
