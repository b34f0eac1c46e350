"""JEOL ``.img`` images (JEOL Analysis Station / EDS software, e.g. JED-2200).

Our own reader (pure Python + numpy). Facts about the format used here (all numbers
little-endian):

* ``uint32`` magic 52, a 32-byte format name (e.g. ``JED-2200:LibJxImageForm``), then
  ``uint32 header_offset, header_length, data_offset``.
* At ``data_offset + 12`` starts a tree of entries. Each entry begins with a signed
  byte: ``1`` opens an entry, ``-1`` closes the most recently opened one, anything else
  (or a ``-1`` with nothing open) ends the tree. An opened entry is ``int32
  name_length``, the name (NUL padded), ``int32 value_type``, ``int32 value_length``
  and ``value_length`` bytes of value. ``value_type`` 0 is a group (children follow);
  others are arrays of: 1/6 uint8, 2/7 uint16, 3/8 int32, 4/9 float32, 5/10 float64,
  11 bool, 12/13/20 text (NUL-separated), 14 uint16 index. Leaves are closed with ``-1``
  like groups.
* ``Image/Size`` is ``(width, height)``, ``Image/Bits`` the pixels row by row.
  ``Instrument/ScanSize`` is the scanned field at magnification 1 in mm and
  ``Instrument/Mag`` the magnification, so the field of view is ``ScanSize / Mag`` mm
  and the pixel size ``ScanSize / Mag * 1e6 / width`` nm. ``Instrument/AccV`` is the
  accelerating voltage in kV; ``Image/Created`` a date as days since 1899-12-30.

Every length is checked against the bytes left in the file before it is read, so
corrupt or truncated files give a :class:`NanodefectError`.
"""

from __future__ import annotations

import math
import os
import struct
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import CorruptFile, translate_read_errors
from ..micrograph import Micrograph, from_array

VENDOR = "JEOL"
PIXEL_SIZE_SOURCE = "JEOL .img header (Instrument/ScanSize / Instrument/Mag / image width)"
MAGIC = 52
PREAMBLE = struct.Struct("<I32sIII")  # magic, format name, header offset, header length, data offset
TREE_SKIP = 12  # bytes between data_offset and the entry tree
#: value type -> numpy dtype; "text" for strings
VALUE_TYPES: dict[int, str] = {
    1: "u1",
    2: "<u2",
    3: "<i4",
    4: "<f4",
    5: "<f8",
    6: "u1",
    7: "<u2",
    8: "<i4",
    9: "<f4",
    10: "<f8",
    11: "u1",
    12: "text",
    13: "text",
    14: "<u2",
    20: "text",
    65552: "u1",
    65553: "u1",
}
MAX_NAME = 1024  # bytes of one entry name (real names are < 40)
MAX_DEPTH = 64
MAX_ENTRIES = 1_000_000
EPOCH = datetime(1899, 12, 30)


_Corrupt = CorruptFile  # parser errors; translate_read_errors names the file


class _Leaf:
    """An entry with a value; ``children`` are rare (``...PAGE`` entries have some)."""

    __slots__ = ("value", "children")

    def __init__(self, value: Any):
        self.value = value
        self.children: dict[str, Any] = {}


def _read(fh: BinaryIO, size: int, n: int, what: str) -> bytes:
    """Read exactly ``n`` bytes, checking the file size first."""
    left = size - fh.tell()
    if n < 0 or n > left:
        raise _Corrupt(
            f"truncated or corrupt: {what} needs {n} bytes at offset {fh.tell()}, "
            f"but only {max(left, 0)} are left in the {size}-byte file"
        )
    data = fh.read(n)
    if len(data) != n:
        raise _Corrupt(f"truncated: could not read {what} at offset {fh.tell()}")
    return data


def _decode_text(raw: bytes) -> str:
    """JEOL text is ASCII/UTF-8, sometimes Shift-JIS (Japanese Windows)."""
    for enc in ("utf-8", "shift_jis"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def _decode_name(raw: bytes) -> str:
    """An entry name without NUL padding (a stray non-ASCII last byte is dropped)."""
    raw = raw.split(b"\x00", 1)[0]
    if raw and raw[-1] >= 0x80 and raw[:-1].isascii():
        raw = raw[:-1]
    return _decode_text(raw)


def _decode_value(vtype: int, raw: bytes) -> Any:
    """A value: a scalar, a string, a list of strings, or a numpy array (more than one number)."""
    kind = VALUE_TYPES.get(vtype)
    if kind is None:
        return f"<{len(raw)} bytes of type {vtype}>"
    if kind == "text":
        parts = [_decode_text(s) for s in raw.rstrip(b"\x00").split(b"\x00")]
        return parts[0] if len(parts) == 1 else parts
    dtype = np.dtype(kind)
    arr = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype)
    if vtype in (11, 65552, 65553):
        arr = arr.astype(bool)
    return arr[0].item() if arr.size == 1 else arr.copy()


def _attach(node: dict[str, Any], name: str, value: Any) -> None:
    """Add ``name`` to ``node`` (repeated names get ``#2``, ``#3``, ... suffixes)."""
    key, n = name, 1
    while key in node:
        n += 1
        key = f"{name}#{n}"
    node[key] = value


def _entry(fh: BinaryIO, size: int) -> tuple[str, Any]:
    """The part of an entry after its ``1`` byte: name, type, length, value."""
    (name_len,) = struct.unpack("<i", _read(fh, size, 4, "entry name length"))
    if not 0 <= name_len <= MAX_NAME:
        raise _Corrupt(f"entry name of {name_len} bytes at offset {fh.tell() - 4} (corrupt file)")
    name = _decode_name(_read(fh, size, name_len, "entry name"))
    vtype, vlen = struct.unpack("<ii", _read(fh, size, 8, "entry type and length"))
    if vtype == 0:
        return name, {}
    return name, _Leaf(_decode_value(vtype, _read(fh, size, vlen, f"value of {name!r}")))


def parse_tree(fh: BinaryIO, size: int) -> dict[str, Any]:
    """Parse the entry tree at the current position into nested dicts.

    Groups become dicts, values scalars / strings / numpy arrays; a value entry with
    children becomes a dict with the value under ``"_value"``.
    """
    root: dict[str, Any] = {}
    stack: list[tuple[dict[str, Any], str, Any]] = []  # (parent, name, open entry)
    for _ in range(MAX_ENTRIES):
        if fh.tell() >= size:
            if stack:
                raise _Corrupt(f"truncated: the file ends inside entry {stack[-1][1]!r}")
            return root
        mark = struct.unpack("<b", _read(fh, size, 1, "entry mark"))[0]
        if mark == 1:
            if len(stack) >= MAX_DEPTH:
                raise _Corrupt(f"entries nested deeper than {MAX_DEPTH} levels (corrupt file)")
            name, item = _entry(fh, size)
            stack.append((_children(stack, root), name, item))
        elif mark == -1 and stack:
            parent, name, item = stack.pop()
            if isinstance(item, _Leaf):
                item = dict(item.children, _value=item.value) if item.children else item.value
            _attach(parent, name, item)
        else:
            return root
    raise _Corrupt(f"more than {MAX_ENTRIES} entries (corrupt file)")


def _children(stack: list[tuple[dict[str, Any], str, Any]], root: dict[str, Any]) -> dict[str, Any]:
    """Where a new entry goes: the open group, the open leaf's children, or the root."""
    if not stack:
        return root
    item = stack[-1][2]
    return item if isinstance(item, dict) else item.children


def read_header(fh: BinaryIO, size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the magic, read the preamble and parse the entry tree.

    Returns ``(preamble, tree)``; preamble has ``format`` (the format name),
    ``header_offset``, ``header_length`` and ``data_offset``.
    """
    raw = _read(fh, size, PREAMBLE.size, "file header")
    magic, fmt, head_pos, head_len, data_pos = PREAMBLE.unpack(raw)
    if magic != MAGIC:
        raise _Corrupt(f"not a JEOL .img file (magic {magic}, expected {MAGIC})")
    if data_pos + TREE_SKIP >= size:
        raise _Corrupt(f"truncated or corrupt: data offset {data_pos} is beyond the end of the {size}-byte file")
    pre = {
        "format": _decode_text(fmt.split(b"\x00", 1)[0]),
        "header_offset": head_pos,
        "header_length": head_len,
        "data_offset": data_pos,
    }
    fh.seek(data_pos + TREE_SKIP)
    return pre, parse_tree(fh, size)


def image_array(tree: dict[str, Any]) -> np.ndarray:
    """``Image/Bits`` reshaped to ``(height, width)`` from ``Image/Size``."""
    image = tree.get("Image")
    if not isinstance(image, dict):
        raise _Corrupt("no Image entry in the file")
    size = np.asarray(image.get("Size", []))
    bits = image.get("Bits")
    if size.shape != (2,) or size.dtype.kind not in "iu" or not isinstance(bits, np.ndarray):
        raise _Corrupt("the Image entry has no valid Size / Bits")
    width, height = int(size[0]), int(size[1])
    if width < 1 or height < 1 or bits.size != width * height:
        raise _Corrupt(f"image size mismatch: Size {width}x{height} but {bits.size} pixel values")
    return bits.astype(bits.dtype.newbyteorder("="), copy=False).reshape(height, width)


def _number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def pixel_size_nm(tree: dict[str, Any], width: int) -> float | None:
    """``ScanSize`` [mm at magnification 1] / ``Mag`` * 1e6 / width, or None when missing."""
    inst = tree.get("Instrument")
    if not isinstance(inst, dict):
        return None
    scan, mag = _number(inst.get("ScanSize")), _number(inst.get("Mag"))
    if not scan or not mag or scan <= 0 or mag <= 0:
        return None
    return scan / mag * 1e6 / width


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: strings and ints as they are, floats finite or None."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    return _number(value)


def _created(days: Any) -> str | None:
    """``Image/Created`` (days since 1899-12-30) as an ISO date-time, or None."""
    d = _number(days)
    if d is None:
        return None
    try:
        return (EPOCH + timedelta(days=d)).isoformat(timespec="seconds")
    except (OverflowError, ValueError):
        return None


def build_metadata(pre: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly metadata.

    format : the format name from the preamble; file_type : ``FileType`` entry.
    microscope, voltage_kV, magnification, scan_size_mm, working_distance_mm, scan_rotation :
        from ``Instrument`` (Name, AccV, Mag, ScanSize, WorkD, ScanR).
    title, created, memo : from ``Image``.
    instrument : all scalar/string ``Instrument`` entries as stored.
    """
    inst = tree.get("Instrument") if isinstance(tree.get("Instrument"), dict) else {}
    image = tree.get("Image") if isinstance(tree.get("Image"), dict) else {}
    md: dict[str, Any] = {"format": pre["format"], "file_type": tree.get("FileType")}
    for key, name in (
        ("microscope", "Name"),
        ("voltage_kV", "AccV"),
        ("magnification", "Mag"),
        ("scan_size_mm", "ScanSize"),
        ("working_distance_mm", "WorkD"),
        ("scan_rotation", "ScanR"),
    ):
        value = inst.get(name)
        md[key] = _plain(value)
    md["title"] = image.get("Title") if isinstance(image.get("Title"), str) else None
    md["memo"] = image.get("Memo") if isinstance(image.get("Memo"), str) else None
    md["created"] = _created(image.get("Created"))
    md["instrument"] = {k: _plain(v) for k, v in inst.items() if not isinstance(v, (dict, np.ndarray))}
    return {k: v for k, v in md.items() if v not in (None, "")}


def read_jeol_img(path: str | os.PathLike, plane: int = 0) -> Micrograph:
    """Read a JEOL ``.img`` image and its pixel size.

    The pixel size is ``ScanSize / Mag / width`` (square pixels assumed, as the scanned
    field is square); None when the header has no scan size or magnification.

    Raises
    ------
    NanodefectError : not a JEOL .img file, truncated or corrupt; the message names the file.
    """
    p = Path(path)
    with translate_read_errors(p, "JEOL .img file"):
        size = p.stat().st_size
        with open(p, "rb") as fh:
            pre, tree = read_header(fh, size)
        array = image_array(tree)
    ps = pixel_size_nm(tree, array.shape[1])
    return from_array(
        array,
        path=p,
        pixel_size_nm=ps,
        pixel_size_source=PIXEL_SIZE_SOURCE,
        vendor=VENDOR,
        metadata=build_metadata(pre, tree),
        plane=plane,
    )


__all__ = ["read_jeol_img", "read_header", "parse_tree"]
