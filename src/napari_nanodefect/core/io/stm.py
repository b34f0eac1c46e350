"""STM/SPM height maps saved as text (our own reader, pure Python + numpy).

Accepted layouts
----------------
* **WSxM ASCII matrix** export::

      WSxM file copyright UAM
      WSxM ASCII Matrix file
      X Amplitude: 100 nm
      Y Amplitude: 100 nm
      Z Amplitude: 3.2 nm
      Number of rows: 256          (optional)
      Number of columns: 256       (optional)
      <matrix, one image row per line>

* **WSxM ASCII XYZ** export (``X[nm] Y[nm] Z[nm]`` then one ``x y z`` point per line;
  also any 3-column ``.xyz`` file): the points must fill a regular grid.
* **Generic exports** (XPMPPro-like, Gwyddion "ASCII data matrix", ...): a few header
  lines ``key: value``, ``key = value`` or ``# comment``, then the matrix. Values are
  separated by whitespace, commas or semicolons (with semicolons a decimal comma is
  allowed, as are whitespace-separated decimal-comma numbers).
* **Plain matrices** with no header (the pixel size is then unknown).

The first matrix line is the top image row. Pixel size = X extent / columns (and Y
extent / rows), in nm, from keys such as ``X Amplitude``, ``Width``/``Height``
(Gwyddion), ``Scan size``, ``X/Y length``, or a direct ``pixel size``. The height unit
comes from the Z amplitude's unit or a ``Z unit`` / ``Value units`` key.

Following Okunev et al. 2020, ``data`` is the 8-bit image
``round((H - Hmin) / (Hmax - Hmin) * 255)`` and ``heights`` keeps the raw heights (float64,
as written in the file) with ``height_unit``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NanodefectError
from ..micrograph import Micrograph, from_array, unit_to_nm

#: largest text file we parse (a 4096 x 4096 matrix at ~15 characters per value)
MAX_TEXT_BYTES = 256 * 1024 * 1024
#: how much of the file is checked for NUL bytes (binary files)
SNIFF_BYTES = 64 * 1024
#: most header entries kept in the metadata
MAX_HEADER_ITEMS = 200

OKUNEV_RULE = "data = round((H - Hmin) / (Hmax - Hmin) * 255) (Okunev et al. 2020)"

X_SIZE_KEYS = {
    "x amplitude", "x length", "x range", "x size", "x scan size", "scan size x", "x scan range",
    "scan range x", "image width", "x extent", "xreal", "x real", "physical width", "width",
}  # fmt: skip
Y_SIZE_KEYS = {
    "y amplitude", "y length", "y range", "y size", "y scan size", "scan size y", "y scan range",
    "scan range y", "image height", "y extent", "yreal", "y real", "physical height",
}  # fmt: skip
SQUARE_SIZE_KEYS = {"scan size", "scan range", "scan area", "field of view", "image size", "size"}
PIXEL_KEYS = {"pixel size", "pixel spacing", "pixelsize"}
X_PIXEL_KEYS = {"x pixel size", "pixel size x", "x step", "step x", "dx", "x spacing", "x pixel spacing"}
Y_PIXEL_KEYS = {"y pixel size", "pixel size y", "y step", "step y", "dy", "y spacing", "y pixel spacing"}
Z_SIZE_KEYS = {"z amplitude", "z range", "z extent", "height range"}
Z_UNIT_KEYS = {"z unit", "z units", "value units", "value unit", "height unit", "height units", "data unit",
               "data units", "unit", "units", "zunit"}  # fmt: skip
ROW_KEYS = {"number of rows", "rows", "number of lines", "lines", "y pixels", "pixels y", "ny", "yres",
            "y points", "points y"}  # fmt: skip
COL_KEYS = {"number of columns", "columns", "cols", "x pixels", "pixels x", "nx", "xres", "x points",
            "points x", "samples/line", "points per line"}  # fmt: skip

_NUMBER = r"[-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][-+]?\d+)?"
_QUANTITY = re.compile(rf"^\s*({_NUMBER})\s*\[?\s*([^\s\]\d][^\s\]]*)?")
_PAIR = re.compile(rf"^\s*({_NUMBER})\s*([^\s\d×xX*]*)\s*[×xX*]\s*({_NUMBER})\s*([^\s\]]*)")
_KEY_UNIT = re.compile(r"^(.*?)\s*[\[(]([^\])]*)[\])]\s*$")


# --------------------------------------------------------------------------- text


def _read_text(path: Path) -> str:
    """The file as text; refuses binary, huge and unreadable files."""
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise NanodefectError(
                f"file is {size / 2**20:.0f} MiB, too large for an ASCII height map "
                f"(limit {MAX_TEXT_BYTES // 2**20} MiB)",
                path,
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise NanodefectError(f"cannot read the file: {exc.strerror or exc}", path) from exc
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise NanodefectError("broken UTF-16 text file", path) from exc
    if b"\x00" in raw[:SNIFF_BYTES]:
        raise NanodefectError("binary file, not an ASCII (text) height map", path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _refuse_non_height_maps(text: str, path: Path) -> None:
    """Raise for text files that are known not to be height maps."""
    head = text[:SNIFF_BYTES]
    if re.search(r"^\s*PixelSize\s*=", head, re.M | re.I) and re.search(r"^\s*ImageName\s*=", head, re.M | re.I):
        name = re.search(r"^\s*ImageName\s*=\s*(.*?)\s*$", head, re.M | re.I).group(1)
        raise NanodefectError(
            "this is a Hitachi SEM metadata sidecar, not a height map: open the image file it names "
            f"({name or 'ImageName='}) instead (this sidecar beside it carries the pixel size)",
            path,
        )
    if re.search(r"^\s*Image header size\s*:", head, re.M | re.I):
        raise NanodefectError(
            "this is a binary WSxM image (text header + binary data); export it from WSxM as an "
            "ASCII matrix (File > Save as > ASCII) and open that",
            path,
        )


# --------------------------------------------------------------------------- matrix lines


def _split(line: str, mode: str) -> list[str]:
    """Split one matrix line into number tokens for a separator ``mode``."""
    line = line.strip().strip(",;").strip()
    if mode == "semicolon":
        return [t.strip().replace(",", ".") for t in line.split(";")]
    if mode == "comma":
        return [t.strip() for t in line.split(",")]
    if mode == "space-decimal-comma":
        return [t.replace(",", ".") for t in line.split()]
    return line.split()


def _floats(tokens: list[str]) -> np.ndarray | None:
    """Tokens as float64, or None when any token is empty or not a number."""
    if not tokens or any(not t for t in tokens):
        return None
    try:
        return np.array(tokens, dtype=np.float64)
    except (ValueError, OverflowError):
        return None


def _line_mode(line: str) -> str | None:
    """The separator mode under which ``line`` is all numbers (None: not a number line)."""
    if ";" in line:
        modes = ("semicolon",)
    elif "," in line:
        modes = ("comma", "space-decimal-comma")
    else:
        modes = ("space",)
    for mode in modes:
        if _floats(_split(line, mode)) is not None:
            return mode
    return None


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith(("#", "%", "//"))


def _find_matrix_start(lines: list[str]) -> tuple[int, str]:
    """Index of the first all-numeric line and its separator mode."""
    for i, line in enumerate(lines):
        if not line.strip() or _is_comment(line):
            continue
        mode = _line_mode(line)
        if mode is not None:
            return i, mode
    raise NanodefectError("no numeric height matrix found (only text)")


def _parse_matrix(lines: list[str], start: int, mode: str) -> np.ndarray:
    """Parse the matrix from ``lines[start:]``; rows must all have the same length."""
    rows: list[np.ndarray] = []
    width = None
    for i in range(start, len(lines)):
        line = lines[i]
        if not line.strip() or _is_comment(line):
            continue
        values = _floats(_split(line, mode))
        if values is None:
            snippet = line.strip()[:40]
            raise NanodefectError(f"line {i + 1} of the matrix is not numeric: {snippet!r}")
        if width is None:
            width = values.size
        elif values.size != width:
            raise NanodefectError(
                f"ragged matrix: line {i + 1} has {values.size} values but the first row has {width}"
            )
        rows.append(values)
    return np.vstack(rows)


# --------------------------------------------------------------------------- header


def _normalise_key(key: str) -> tuple[str, str | None]:
    """``"X Amplitude [nm]"`` -> ``("x amplitude", "nm")``."""
    key = re.sub(r"[\s_]+", " ", key.strip()).lower()
    m = _KEY_UNIT.match(key)
    if m and m.group(1):
        return m.group(1).strip(), m.group(2).strip() or None
    return key, None


def _parse_header(lines: list[str]) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """``{normalised key: (value, unit in the key)}`` and the raw header lines."""
    entries: dict[str, tuple[str, str | None]] = {}
    raw: list[str] = []
    for line in lines:
        text = line.strip().lstrip("#%/").strip()
        if not text:
            continue
        raw.append(text)
        if text.startswith("[") and text.endswith("]"):
            continue  # [Section]
        m = re.match(r"^([^:=]{1,80}?)\s*[:=]\s*(.*)$", text)
        if m:
            key, key_unit = _normalise_key(m.group(1))
            entries.setdefault(key, (m.group(2).strip(), key_unit))
    return entries, raw


def _quantity(value: str, default_unit: str | None = None) -> tuple[float, str | None] | None:
    """``"1.97 µm"`` -> ``(1.97, "µm")``; None when ``value`` does not start with a number."""
    m = _QUANTITY.match(value)
    if not m:
        return None
    number = m.group(1)
    if "," in number and "." not in number:
        number = number.replace(",", ".")
    try:
        x = float(number)
    except ValueError:
        return None
    return x, (m.group(2) or default_unit)


def _length_nm(value: str, default_unit: str | None) -> float | None:
    """A length like ``"100 nm"`` in nm (None if not a known length unit or not > 0)."""
    q = _quantity(value, default_unit)
    if q is None:
        return None
    factor = unit_to_nm(q[1])
    nm = None if factor is None else q[0] * factor
    return nm if nm is not None and np.isfinite(nm) and nm > 0 else None


def _lookup(header: dict[str, tuple[str, str | None]], keys: set[str]) -> tuple[str, str, str | None] | None:
    """First header entry whose key is in ``keys``: ``(key, value, unit in key)``."""
    for key, (value, unit) in header.items():
        if key in keys:
            return key, value, unit
    return None


def _declared_int(header: dict[str, tuple[str, str | None]], keys: set[str]) -> int | None:
    """A declared row/column count (None if absent or not a positive integer)."""
    hit = _lookup(header, keys)
    if hit is None:
        return None
    m = re.match(r"^\s*(\d+)\s*$", hit[1])
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def _extents_nm(header: dict[str, tuple[str, str | None]]) -> tuple[float | None, float | None, str | None]:
    """Scan extents ``(y_nm, x_nm, description of the keys)`` from the header."""
    y_keys = set(Y_SIZE_KEYS)
    if "width" in header:
        y_keys.add("height")  # Gwyddion export: "Width" / "Height" are the scan extents
    x_hit, y_hit = _lookup(header, X_SIZE_KEYS), _lookup(header, y_keys)
    x_nm = None if x_hit is None else _length_nm(x_hit[1], x_hit[2])
    y_nm = None if y_hit is None else _length_nm(y_hit[1], y_hit[2])
    if x_nm is not None or y_nm is not None:
        keys = " / ".join(h[0] for h in (x_hit, y_hit) if h is not None)
        return y_nm, x_nm, keys
    sq = _lookup(header, SQUARE_SIZE_KEYS)
    if sq is not None:
        pair = _PAIR.match(sq[1])
        if pair:
            unit = pair.group(4) or pair.group(2) or sq[2]
            x_nm = _length_nm(f"{pair.group(1)} {pair.group(2) or unit}", None)
            y_nm = _length_nm(f"{pair.group(3)} {unit}", None)
        else:
            x_nm = y_nm = _length_nm(sq[1], sq[2])
        if x_nm is not None:
            return y_nm, x_nm, sq[0]
    return None, None, None


def _pixel_sizes(
    header: dict[str, tuple[str, str | None]], shape: tuple[int, int]
) -> tuple[float | None, float | None, str | None, list[str]]:
    """``(py_nm, px_nm, source, notes)`` from direct pixel-size keys or extents / counts."""
    notes: list[str] = []
    rows, cols = shape
    direct = _lookup(header, PIXEL_KEYS)
    dx_hit, dy_hit = _lookup(header, X_PIXEL_KEYS), _lookup(header, Y_PIXEL_KEYS)
    dx = _length_nm(dx_hit[1], dx_hit[2]) if dx_hit else None
    dy = _length_nm(dy_hit[1], dy_hit[2]) if dy_hit else None
    if direct and dx is None and dy is None:
        dx = dy = _length_nm(direct[1], direct[2])
    if dx is not None or dy is not None:
        keys = " / ".join(h[0] for h in (dx_hit, dy_hit, direct) if h)
        return dy or dx, dx or dy, f"SPM ASCII header '{keys}'", notes
    y_nm, x_nm, keys = _extents_nm(header)
    if x_nm is None and y_nm is None:
        return None, None, None, notes
    px = None if x_nm is None else x_nm / cols
    py = None if y_nm is None else y_nm / rows
    if px is None or py is None:
        notes.append("only one scan extent given: square pixels assumed")
    px, py = px or py, py or px
    return py, px, f"SPM ASCII header '{keys}' / columns, rows", notes


def _height_unit(header: dict[str, tuple[str, str | None]]) -> tuple[str | None, float | None]:
    """Height unit and Z amplitude (in that unit) from the header, when given."""
    z = _lookup(header, Z_SIZE_KEYS)
    if z is not None:
        q = _quantity(z[1], z[2])
        if q is not None and q[1]:
            return q[1], q[0]
    u = _lookup(header, Z_UNIT_KEYS)
    if u is not None and u[1] and _quantity(u[1]) is None:
        return u[1].split()[0].strip("[]()"), None
    return None, None


# --------------------------------------------------------------------------- XYZ


def _xyz_units(raw_header: list[str]) -> dict[str, str]:
    """Units from a column header such as ``X[nm]  Y[nm]  Z[nm]``."""
    units = {}
    for line in raw_header:
        for axis, unit in re.findall(r"\b([XYZ])\s*[\[(]\s*([^\])\s]+)\s*[\])]", line, re.I):
            units.setdefault(axis.upper(), unit)
    return units


def _axis_index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values and each value's index, in file order (first value -> 0)."""
    unique, inverse = np.unique(values, return_inverse=True)
    if values[0] != unique[0]:  # file runs from high to low: keep that order
        unique, inverse = unique[::-1], unique.size - 1 - inverse
    return unique, inverse.reshape(-1)


def _grid_xyz(points: np.ndarray, units: dict[str, str]) -> tuple[np.ndarray, float | None, float | None, list[str]]:
    """Turn ``x y z`` points on a regular grid into ``(heights, py_nm, px_nm, notes)``."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise NanodefectError("XYZ file: some X/Y coordinates are missing (NaN)")
    ux, ix = _axis_index(x)
    uy, iy = _axis_index(y)
    if ux.size < 2 or uy.size < 2 or ux.size * uy.size != z.size:
        raise NanodefectError(
            f"XYZ points do not form a complete regular grid ({z.size} points, "
            f"{ux.size} distinct X, {uy.size} distinct Y)"
        )
    grid = np.full((uy.size, ux.size), np.nan)
    filled = np.zeros(grid.shape, dtype=bool)
    grid[iy, ix] = z
    filled[iy, ix] = True
    if not filled.all():
        raise NanodefectError("XYZ points do not form a complete regular grid (duplicate points)")
    notes = []
    steps = []
    for u, axis in ((uy, "Y"), (ux, "X")):
        d = np.abs(np.diff(u))
        step = (abs(u[-1] - u[0])) / (u.size - 1)
        if not np.allclose(d, step, rtol=0.05):
            raise NanodefectError(f"XYZ file: the {axis} coordinates are not evenly spaced")
        factor = unit_to_nm(units.get(axis))
        steps.append(None if factor is None or step <= 0 else float(step * factor))
        if factor is None:
            notes.append(f"no length unit for {axis} in the XYZ header")
    return grid, steps[0], steps[1], notes


# --------------------------------------------------------------------------- image


def heights_to_uint8(heights: np.ndarray) -> np.ndarray:
    """Okunev et al. 2020: ``round((H - Hmin) / (Hmax - Hmin) * 255)`` as uint8 (0 if flat)."""
    h = np.asarray(heights, dtype=np.float64)
    lo, hi = float(h.min()), float(h.max())
    if hi <= lo:
        return np.zeros(h.shape, dtype=np.uint8)
    return np.rint((h - lo) / (hi - lo) * 255.0).clip(0, 255).astype(np.uint8)


def _check_heights(h: np.ndarray) -> None:
    """Refuse empty, one-row/column and NaN/inf-containing height maps."""
    if h.size == 0:
        raise NanodefectError("the height matrix is empty")
    if h.ndim != 2 or min(h.shape) < 2:
        raise NanodefectError(f"not an image: the matrix is {h.shape[0]} x {h.shape[1] if h.ndim > 1 else 1}")
    bad = ~np.isfinite(h)
    if bad.all():
        raise NanodefectError("the height matrix has no valid values (all NaN/inf)")
    if bad.any():
        raise NanodefectError(
            f"the height matrix has {int(bad.sum())} missing (NaN/inf) values of {h.size}; "
            "fill or crop them in the SPM software first"
        )


def _apply_declared_shape(h: np.ndarray, rows: int | None, cols: int | None) -> np.ndarray:
    """Check the matrix against declared row/column counts (a one-column dump is reshaped)."""
    if rows is None and cols is None:
        return h
    want_rows = rows if rows is not None else h.shape[0]
    want_cols = cols if cols is not None else h.shape[1]
    if h.shape == (want_rows, want_cols):
        return h
    if rows is not None and cols is not None and h.shape[1] == 1 and h.size == rows * cols:
        return h.reshape(rows, cols)
    raise NanodefectError(
        f"the header declares {want_rows} rows x {want_cols} columns but the matrix is "
        f"{h.shape[0]} x {h.shape[1]} (truncated or edited file?)"
    )


def read_stm_ascii(path: str | os.PathLike, plane: int = 0) -> Micrograph:
    """Read an STM/SPM text height map (WSxM ASCII, generic key/value export, plain matrix).

    Returns a :class:`Micrograph` whose ``data`` is the 8-bit rendering of the heights
    (Okunev et al. 2020) and whose ``heights`` are the raw values with ``height_unit``.
    """
    p = Path(path)
    if plane != 0:
        raise NanodefectError(f"plane {plane} requested but an ASCII height map has 1 plane", p)
    text = _read_text(p)
    _refuse_non_height_maps(text, p)
    lines = text.splitlines()
    try:
        start, mode = _find_matrix_start(lines)
        header, raw_header = _parse_header(lines[:start])
        values = _parse_matrix(lines, start, mode)
    except NanodefectError as exc:
        raise NanodefectError(exc.problem, p) from None

    is_wsxm = any("wsxm" in line.lower() for line in raw_header)
    is_xyz = any(re.search(r"\bxyz\b", line, re.I) for line in raw_header) or (
        p.suffix.lower() == ".xyz" and values.shape[1] == 3
    )
    notes: list[str] = []
    height_unit, z_amplitude = _height_unit(header)
    try:
        if is_xyz and values.shape[1] == 3:
            units = _xyz_units(raw_header)
            heights, py, px, notes = _grid_xyz(values, units)
            height_unit = height_unit or units.get("Z")
            source = "XYZ grid spacing" if px is not None else None
            fmt = "WSxM ASCII XYZ" if is_wsxm else "SPM ASCII XYZ"
        else:
            heights = _apply_declared_shape(values, _declared_int(header, ROW_KEYS), _declared_int(header, COL_KEYS))
            py, px, source, notes = _pixel_sizes(header, heights.shape)
            fmt = "WSxM ASCII matrix" if is_wsxm else ("SPM ASCII with header" if raw_header else "plain matrix")
        _check_heights(heights)
    except NanodefectError as exc:
        raise NanodefectError(exc.problem, p) from None

    if source and is_wsxm:
        source = source.replace("SPM ASCII header", "WSxM header")
    if px is None and raw_header:
        notes.append("no scan size in the header: pixel size unknown")
    metadata: dict[str, Any] = {
        "format": fmt,
        "separator": mode,
        "n_rows": int(heights.shape[0]),
        "n_cols": int(heights.shape[1]),
        "height_min": float(heights.min()),
        "height_max": float(heights.max()),
        "normalisation": OKUNEV_RULE,
        "header": {k: v for k, (v, _) in list(header.items())[:MAX_HEADER_ITEMS]},
    }
    if z_amplitude is not None:
        metadata["z_amplitude"] = z_amplitude
    if heights.max() == heights.min():
        notes.append("flat height map: the 8-bit image is all 0")
    if notes:
        metadata["notes"] = notes
    return from_array(
        heights_to_uint8(heights),
        path=p,
        pixel_size_nm=px,
        pixel_size_source=source,
        vendor="WSxM" if is_wsxm else "SPM ASCII",
        metadata=metadata,
        heights=heights,
        height_unit=height_unit,
        pixel_size_yx_nm=None if px is None else (py, px),
    )


__all__ = ["read_stm_ascii", "heights_to_uint8"]
