"""FEI/Thermo TIA files: ``.ser`` (data) + ``.emi`` (metadata).

Our own reader (pure Python + numpy). Facts about the format used here:

* A TIA acquisition is an ``.emi`` file (binary header + an XML ``<ObjectInfo>`` block
  with microscope metadata) next to one or more ``<name>_<n>.ser`` files holding the data.
* SER header (all values in the byte order given by the first two bytes, ``II`` =
  little-endian)::

      int16 ByteOrder (0x4949)      int16 SeriesID (0x0197)     int16 SeriesVersion
      int32 DataTypeID              int32 TagTypeID             int32 TotalNumberElements
      int32 ValidNumberElements     int32/int64 OffsetArrayOffset   int32 NumberDimensions

  SeriesVersion 0x0210 uses 4-byte offsets, 0x0220 8-byte offsets. DataTypeID 0x4120
  is a series of 1-D arrays (spectra), 0x4122 a series of 2-D images.
* Then ``NumberDimensions`` dimension records (size int32, calibration offset and delta
  float64, calibration element int32, description and units as int32 length + chars).
* At ``OffsetArrayOffset``: ``TotalNumberElements`` data offsets, then as many tag
  offsets (int32 or int64 each). Only the first ``ValidNumberElements`` are used.
* A 2-D element: calibration offset/delta (float64, metres) and element (int32) for X,
  then for Y, the data type code (int16), ArraySizeX and ArraySizeY (int32), then the
  pixels, X fastest (so the array is ``(ArraySizeY, ArraySizeX)``). Rows are stored
  bottom to top (the Y axis points up, as in TIA's display), so we flip them to get the
  usual top-row-first image (the same orientation rosettasciio/HyperSpy return).

Every size and offset is checked against the file size before anything is read or
allocated, so corrupt or truncated files give a :class:`NanodefectError`.
"""

from __future__ import annotations

import html
import os
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import NanodefectError
from ..micrograph import Micrograph, from_array

VENDOR = "FEI TIA"
SERIES_ID = 0x0197
VERSION_OFFSET_SIZE = {0x0210: 4, 0x0220: 8}
DATA_TYPE_1D = 0x4120
DATA_TYPE_2D = 0x4122
#: SER element data type code -> numpy dtype (byte order added when reading)
SER_DTYPES = {
    1: "u1",
    2: "u2",
    3: "u4",
    4: "i1",
    5: "i2",
    6: "i4",
    7: "f4",
    8: "f8",
    9: "c8",
    10: "c16",
}
#: header of a 2-D element: X offset, delta, element; Y offset, delta, element; type; size X, Y
ELEMENT_2D = "ddiddihii"
#: plausible pixel sizes in metres (outside: a reciprocal-space or broken calibration)
PLAUSIBLE_DELTA_M = (1e-14, 1e-2)
#: most of an .emi file we look at for metadata
EMI_MAX_BYTES = 64 * 1024 * 1024
#: longest dimension description / unit string we accept
MAX_LABEL = 1 << 16


# --------------------------------------------------------------------------- paths


def find_tia_files(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Return ``(ser_path, emi_path_or_None)`` for a TIA ``.emi`` or ``.ser`` path.

    ``name.emi`` -> ``name_1.ser`` (required). ``name_3.ser`` -> ``name.emi`` when it
    exists (optional: the .ser alone holds the data and calibration).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".emi":
        candidates = [
            c
            for c in p.parent.glob(_glob_escape(p.stem) + "_*")
            if c.suffix.lower() == ".ser" and re.fullmatch(re.escape(p.stem) + r"_\d+", c.stem)
        ]
        candidates.sort(key=_ser_index)
        if not candidates:
            raise NanodefectError(
                f"no data file found for this TIA .emi: expected {p.stem}_1.ser in the same folder", p
            )
        return candidates[0], p
    if suffix == ".ser":
        m = re.match(r"^(.*)_(\d+)$", p.stem)
        emi = p.with_name((m.group(1) if m else p.stem) + ".emi")
        if not emi.exists():
            emi = next((c for c in p.parent.glob(_glob_escape(emi.stem) + ".*") if c.suffix.lower() == ".emi"), None)
        return p, emi
    raise NanodefectError("not a TIA file (expected .emi or .ser)", p)


def _ser_index(p: Path) -> int | None:
    """The ``n`` of ``name_n.ser`` (None if the name does not end in ``_<digits>``)."""
    m = re.search(r"_(\d+)$", p.stem)
    return int(m.group(1)) if m else None


def _glob_escape(text: str) -> str:
    """Escape glob metacharacters in a file-name stem."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


# --------------------------------------------------------------------------- SER


class _SerFile:
    """Bounds-checked reads from an open .ser file."""

    def __init__(self, fh: BinaryIO, path: Path, size: int):
        self.fh = fh
        self.path = path
        self.size = size
        self.endian = "<"

    def fail(self, message: str) -> NanodefectError:
        return NanodefectError(f"corrupt TIA .ser file: {message}", self.path)

    def read(self, offset: int, n: int, what: str) -> bytes:
        """Read exactly ``n`` bytes at ``offset`` or raise a clear error."""
        if offset < 0 or n < 0 or offset + n > self.size:
            raise self.fail(f"{what} at byte {offset} (+{n}) lies beyond the end of the file ({self.size} bytes; truncated?)")
        self.fh.seek(offset)
        data = self.fh.read(n)
        if len(data) != n:
            raise self.fail(f"could not read {what} at byte {offset} (truncated?)")
        return data

    def unpack(self, fmt: str, offset: int, what: str) -> tuple:
        """``struct.unpack`` in the file's byte order at ``offset``."""
        full = self.endian + fmt
        return struct.unpack(full, self.read(offset, struct.calcsize(full), what))


def _read_ser_header(ser: _SerFile) -> dict[str, Any]:
    """Parse the fixed header and dimension records of a .ser file."""
    order = ser.read(0, 2, "byte-order mark")
    if order == b"II":
        ser.endian = "<"
    elif order == b"MM":
        ser.endian = ">"
    else:
        raise NanodefectError(f"not a TIA .ser file (byte-order mark {order!r}, expected b'II')", ser.path)
    series_id, version, data_type_id, tag_type_id = ser.unpack("hhii", 2, "series header")
    if series_id != SERIES_ID:
        raise NanodefectError(f"not a TIA .ser file (series id {series_id:#06x}, expected 0x0197)", ser.path)
    if version not in VERSION_OFFSET_SIZE:
        raise ser.fail(f"unknown series version {version:#06x} (known: 0x0210, 0x0220)")
    osize = VERSION_OFFSET_SIZE[version]
    ofmt = "i" if osize == 4 else "q"
    total, valid = ser.unpack("ii", 14, "element counts")
    (offset_array,) = ser.unpack(ofmt, 22, "offset-array position")
    (n_dims,) = ser.unpack("i", 22 + osize, "number of dimensions")
    header = {
        "series_version": version,
        "data_type_id": data_type_id,
        "tag_type_id": tag_type_id,
        "total_elements": total,
        "valid_elements": valid,
        "offset_array_offset": offset_array,
        "offset_size": osize,
        "n_dimensions": n_dims,
    }
    if total < 0 or valid < 0 or valid > total:
        raise ser.fail(f"impossible element counts (total {total}, valid {valid})")
    if not 0 <= n_dims <= 16:
        raise ser.fail(f"impossible number of dimensions ({n_dims})")
    if total * 2 * osize > ser.size:
        raise ser.fail(f"{total} elements cannot fit in a {ser.size}-byte file")
    header["dimensions"] = _read_dimensions(ser, 26 + osize, n_dims)
    return header


def _read_dimensions(ser: _SerFile, pos: int, n_dims: int) -> list[dict[str, Any]]:
    """Read the series dimension records (e.g. the frame axis of an image series)."""
    dims = []
    for i in range(n_dims):
        size, cal_offset, cal_delta, cal_element, desc_len = ser.unpack("iddii", pos, f"dimension {i}")
        pos += struct.calcsize("<iddii")
        if not 0 <= desc_len <= MAX_LABEL:
            raise ser.fail(f"dimension {i} description length {desc_len} is impossible")
        desc = ser.read(pos, desc_len, f"dimension {i} description").decode("latin-1")
        pos += desc_len
        (units_len,) = ser.unpack("i", pos, f"dimension {i} units length")
        pos += 4
        if not 0 <= units_len <= MAX_LABEL:
            raise ser.fail(f"dimension {i} units length {units_len} is impossible")
        units = ser.read(pos, units_len, f"dimension {i} units").decode("latin-1")
        pos += units_len
        dims.append(
            {
                "size": size,
                "calibration_offset": cal_offset,
                "calibration_delta": cal_delta,
                "calibration_element": cal_element,
                "description": desc,
                "units": units,
            }
        )
    return dims


def _read_data_offsets(ser: _SerFile, header: dict[str, Any]) -> list[int]:
    """Offsets of the valid data elements (from the offset array)."""
    n = header["valid_elements"]
    osize = header["offset_size"]
    raw = ser.read(header["offset_array_offset"], n * osize, "data offset array")
    offsets = np.frombuffer(raw, dtype=ser.endian + ("i4" if osize == 4 else "i8"))
    return [int(o) for o in offsets]


def _read_element_2d(ser: _SerFile, offset: int, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one 2-D element (calibration + pixels) at ``offset``."""
    (x_off, x_delta, x_elem, y_off, y_delta, y_elem, code, nx, ny) = ser.unpack(
        ELEMENT_2D, offset, f"image {index} header"
    )
    if code not in SER_DTYPES:
        raise ser.fail(f"image {index} has unknown data type code {code}")
    dtype = np.dtype(SER_DTYPES[code]).newbyteorder(ser.endian)
    if nx <= 0 or ny <= 0:
        raise ser.fail(f"image {index} has impossible size {nx} x {ny}")
    start = offset + struct.calcsize("<" + ELEMENT_2D)
    nbytes = nx * ny * dtype.itemsize
    if start + nbytes > ser.size:
        raise ser.fail(
            f"image {index} ({nx} x {ny} {dtype.name}) needs {nbytes} bytes from byte {start} "
            f"but the file has {ser.size} bytes (truncated?)"
        )
    pixels = np.frombuffer(ser.read(start, nbytes, f"image {index} pixels"), dtype=dtype).reshape(ny, nx)
    calib = {
        "offset_x_m": x_off,
        "delta_x_m": x_delta,
        "element_x": x_elem,
        "offset_y_m": y_off,
        "delta_y_m": y_delta,
        "element_y": y_elem,
        "data_type_code": code,
        "shape": [ny, nx],
    }
    # rows are stored bottom-up: flip to top-row-first, native byte order, own memory
    image = np.ascontiguousarray(pixels[::-1], dtype=dtype.newbyteorder("="))
    return image, calib


def read_ser(path: str | os.PathLike, index: int = 0) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """Read image ``index`` of a .ser file: ``(array, element_calibration, ser_header)``."""
    p = Path(path)
    try:
        size = p.stat().st_size
        fh = open(p, "rb")
    except OSError as exc:
        raise NanodefectError(f"cannot open the TIA .ser file: {exc.strerror or exc}", p) from exc
    with fh:
        ser = _SerFile(fh, p, size)
        header = _read_ser_header(ser)
        if header["data_type_id"] == DATA_TYPE_1D:
            raise NanodefectError("this TIA .ser file holds 1-D spectra, not images", p)
        if header["data_type_id"] != DATA_TYPE_2D:
            raise ser.fail(f"unknown data type id {header['data_type_id']:#06x} (images are 0x4122)")
        n = header["valid_elements"]
        if n == 0:
            raise NanodefectError("the TIA .ser file holds no images (0 valid elements)", p)
        if not 0 <= index < n:
            raise NanodefectError(f"plane {index} requested but the file has {n} planes", p)
        offsets = _read_data_offsets(ser, header)
        array, calib = _read_element_2d(ser, offsets[index], index)
    return array, calib, header


# --------------------------------------------------------------------------- EMI


def read_emi_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Useful fields of a TIA .emi file (missing fields are simply left out)."""
    with open(path, "rb") as fh:
        raw = fh.read(EMI_MAX_BYTES)
    start = raw.find(b"<ObjectInfo>")
    end = raw.rfind(b"</ObjectInfo>")
    if start < 0 or end < start:
        return {}
    text = raw[start:end].decode("utf-8", errors="replace")
    md: dict[str, Any] = {}
    description = _emi_description(text)
    if description:
        md["emi_description"] = description
    microscope = description.get("Microscope", {}).get("value")
    if microscope:
        md["microscope"] = re.sub(r"^Microscope\s+", "", microscope)
    mode = description.get("Mode", {}).get("value")
    if mode:
        md["mode"] = mode
    ht = _emi_high_tension_kv(text, description)
    if ht is not None:
        md["high_tension_kV"] = ht
    mag = _number(_tag(text, "Magnification")) or _number(description.get("Magnification", {}).get("value"))
    if mag is not None:
        md["magnification"] = mag
    for tag, key in (
        ("AcquireDate", "acquire_date"),
        ("Manufacturer", "manufacturer"),
        ("CameraNamePath", "camera"),
    ):
        value = _tag(text, tag)
        if value:
            md[key] = value
    for tag, key in (("DwellTimePath", "dwell_time_s"), ("FrameTime", "frame_time_s"), ("Binning", "binning")):
        value = _number(_tag(text, tag))
        if value is not None:
            md[key] = value
    return md


def _tag(text: str, name: str) -> str | None:
    """Text of the first ``<name>...</name>`` element (unescaped, stripped)."""
    m = re.search(rf"<{name}>([^<]*)</{name}>", text)
    return html.unescape(m.group(1)).strip() if m else None


def _number(text: str | None) -> float | None:
    """Leading number of ``text`` ("1300000 X" -> 1300000.0), or None."""
    if not text:
        return None
    m = re.match(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", text)
    return float(m.group(1)) if m else None


def _emi_description(text: str) -> dict[str, dict[str, str]]:
    """The ``<ExperimentalDescription>`` label/value/unit table."""
    m = re.search(r"<ExperimentalDescription>(.*?)</ExperimentalDescription>", text, re.S)
    if not m:
        return {}
    table: dict[str, dict[str, str]] = {}
    for label, value, unit in re.findall(
        r"<Data>\s*<Label>([^<]*)</Label>\s*<Value>([^<]*)</Value>\s*<Unit>([^<]*)</Unit>\s*</Data>", m.group(1)
    ):
        table[html.unescape(label).strip()] = {"value": html.unescape(value).strip(), "unit": html.unescape(unit).strip()}
    return table


def _emi_high_tension_kv(text: str, description: dict[str, dict[str, str]]) -> float | None:
    """High tension in kV from the description table or ``<AcceleratingVoltage>`` (V)."""
    entry = description.get("High tension")
    if entry:
        value = _number(entry["value"])
        scale = {"kv": 1.0, "v": 1e-3, "mv": 1e3}.get(entry["unit"].lower(), None)
        if value is not None and scale is not None:
            return value * scale
    volts = _number(_tag(text, "AcceleratingVoltage"))
    return None if volts is None else volts / 1000.0


# --------------------------------------------------------------------------- reader


def _pixel_size_nm(delta_m: float) -> float | None:
    """CalibrationDelta (m) -> nm, or None when it is not a plausible real-space size."""
    if not np.isfinite(delta_m):
        return None
    d = abs(delta_m)
    if not PLAUSIBLE_DELTA_M[0] <= d <= PLAUSIBLE_DELTA_M[1]:
        return None
    return d * 1e9


def read_tia(path: str | os.PathLike, plane: int = 0) -> Micrograph:
    """Read a FEI/Thermo TIA image (``.emi`` or ``.ser`` path) with its pixel size.

    ``plane`` selects the frame of an image series (``metadata["n_planes"]`` frames).
    The pixel size is the element's CalibrationDelta (metres) in nm.
    """
    ser_path, emi_path = find_tia_files(path)
    if not ser_path.exists():
        raise NanodefectError("TIA .ser file not found", ser_path)
    array, calib, header = read_ser(ser_path, plane)
    n_planes = header["valid_elements"]

    metadata: dict[str, Any] = {
        "ser_file": ser_path.name,
        "ser_series_version": f"{header['series_version']:#06x}",
        "ser_tag_type_id": f"{header['tag_type_id']:#06x}",
        "ser_dimensions": header["dimensions"],
        "calibration": calib,
        "n_planes": n_planes,
    }
    if emi_path is not None:
        metadata["emi_file"] = emi_path.name
        try:
            metadata.update(read_emi_metadata(emi_path))
        except (OSError, ValueError) as exc:
            metadata["emi_warning"] = f"could not read the .emi metadata: {exc}"

    px = _pixel_size_nm(calib["delta_x_m"])
    py = _pixel_size_nm(calib["delta_y_m"])
    if px is None and py is not None:
        px = py
    if px is not None and py is None:
        py = px
    if px is None:
        metadata["pixel_size_warning"] = (
            f"CalibrationDelta {calib['delta_x_m']!r} is not a plausible real-space pixel size in metres"
        )
    m = from_array(
        array,
        path=Path(path),
        pixel_size_nm=px,
        pixel_size_source="FEI TIA .ser calibration (CalibrationDeltaX)" if px is not None else None,
        vendor=VENDOR,
        metadata=metadata,
        pixel_size_yx_nm=None if px is None else (py, px),
    )
    if n_planes > 1:
        m.plane_rule = f"plane {plane} of {n_planes}" + ("" if m.plane_rule == "2-D image" else f", {m.plane_rule}")
    return m


__all__ = ["read_tia", "read_ser", "read_emi_metadata", "find_tia_files"]
