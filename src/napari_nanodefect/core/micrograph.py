"""The :class:`Micrograph` record and the rule that picks the analysed plane.

Analysed-plane rule (applied by every reader through :func:`analysed_plane`):

1. Singleton axes are dropped.
2. A 2-D array is used as it is.
3. Colour (last axis of length 3 or 4, e.g. RGB/RGBA, or a palette image expanded to
   RGB): alpha is dropped; if the colour channels are identical (a grey image saved as
   RGB, as most SEM/TEM exports are) the first channel is used unchanged; otherwise the
   ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B`` is used (float32).
4. Several pages / frames (``(n, y, x)`` or ``(n, y, x, c)``): the plane ``plane``
   (default 0, the first page; readers pass the full-resolution data page, not a
   thumbnail) is used; the number of planes is kept in ``metadata["n_planes"]``.
5. Data types: integer types are kept as they are (8/16/32-bit); ``bool`` becomes
   uint8; float16/float64 become float32; complex data is refused.
6. Empty arrays and arrays with NaN/inf values are refused with :class:`NanodefectError`.

STM/SPM height maps: ``data`` is the 8-bit image ``(H - Hmin)/(Hmax - Hmin) * 255``
(as Okunev et al. 2020 fed ParticlesNN) and ``heights`` keeps the raw heights, with
their unit in ``height_unit``, for measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NanodefectError

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: length units we understand, in nanometres
UNIT_TO_NM = {
    "m": 1e9,
    "mm": 1e6,
    "cm": 1e7,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "a": 0.1,
    "å": 0.1,
    "Å": 0.1,
    "angstrom": 0.1,
    "pm": 1e-3,
    "inch": 2.54e7,
}


def unit_to_nm(unit: str | None) -> float | None:
    """Factor converting a length in ``unit`` to nanometres (``None`` if unknown)."""
    if unit is None:
        return None
    u = str(unit).strip().replace("\\u00B5", "µ")
    if u in UNIT_TO_NM:
        return UNIT_TO_NM[u]
    return UNIT_TO_NM.get(u.lower())


@dataclass
class Region:
    """A rectangle in pixel coordinates, half-open: rows ``y0:y1``, columns ``x0:x1``."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def slices(self) -> tuple[slice, slice]:
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))

    def to_dict(self) -> dict[str, int]:
        return {"y0": int(self.y0), "x0": int(self.x0), "y1": int(self.y1), "x1": int(self.x1)}


@dataclass
class Micrograph:
    """An image with its physical scale and where that scale came from.

    Attributes
    ----------
    data : the analysed 2-D plane (see the module docstring for the rule).
    pixel_size_nm : size of one pixel in nm (square pixels; ``pixel_size_yx_nm`` has both), or None.
    pixel_size_source : where the size came from, e.g. ``"FEI metadata [Scan] PixelWidth"``,
        ``"scale bar"``, ``"user"``; None when unknown.
    vendor : instrument or software that wrote the file ("FEI", "Zeiss", "Gatan DM", ...).
    metadata : JSON-friendly vendor metadata (a curated subset plus raw sections).
    valid_region : the image area without the vendor info bar (statistics use only this).
    info_bar : what was detected about the info bar, or None.
    scale_bar : what was detected about the scale bar, or None.
    heights : raw heights for STM/SPM height maps (``data`` is then their 8-bit rendering).
    """

    data: np.ndarray
    pixel_size_nm: float | None = None
    pixel_size_source: str | None = None
    vendor: str | None = None
    path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    valid_region: Region | None = None
    info_bar: dict[str, Any] | None = None
    scale_bar: dict[str, Any] | None = None
    heights: np.ndarray | None = None
    height_unit: str | None = None
    pixel_size_yx_nm: tuple[float, float] | None = None
    plane_rule: str = "2-D image"

    def __post_init__(self):
        if self.valid_region is None:
            self.valid_region = Region(0, 0, *self.data.shape[:2])
        if self.pixel_size_nm is not None:
            ps = float(self.pixel_size_nm)
            if not np.isfinite(ps) or ps <= 0:
                raise NanodefectError(f"invalid pixel size {self.pixel_size_nm!r} nm", self.path)
            self.pixel_size_nm = ps
            if self.pixel_size_yx_nm is None:
                self.pixel_size_yx_nm = (ps, ps)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def valid_data(self) -> np.ndarray:
        """The analysed plane without the info bar."""
        return self.data[self.valid_region.slices]

    def set_pixel_size(self, nm: float, source: str = "user") -> None:
        """Set the pixel size by hand (``source`` says where it came from)."""
        nm = float(nm)
        if not np.isfinite(nm) or nm <= 0:
            raise NanodefectError(f"pixel size must be a positive number of nm, got {nm!r}", self.path)
        self.pixel_size_nm = nm
        self.pixel_size_yx_nm = (nm, nm)
        self.pixel_size_source = source

    def info(self) -> dict[str, Any]:
        """The JSON record ``nanodefect info --json`` prints."""
        return {
            "path": None if self.path is None else str(self.path),
            "pixel_size_nm": self.pixel_size_nm,
            "pixel_size_yx_nm": None if self.pixel_size_yx_nm is None else list(self.pixel_size_yx_nm),
            "pixel_size_source": self.pixel_size_source,
            "shape": list(self.data.shape),
            "dtype": str(self.data.dtype),
            "vendor": self.vendor,
            "plane_rule": self.plane_rule,
            "valid_region": self.valid_region.to_dict(),
            "info_bar": self.info_bar,
            "scale_bar": self.scale_bar,
            "height_unit": self.height_unit,
            "metadata": _jsonable(self.metadata),
        }


def _jsonable(obj: Any) -> Any:
    """Make vendor metadata JSON-serialisable (numpy scalars, bytes, tuples, NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist()) if obj.size <= 64 else f"<array {obj.shape} {obj.dtype}>"
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(obj)} bytes>"
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def analysed_plane(
    array: np.ndarray, path: str | Path | None = None, plane: int = 0, colour_axis_last: bool | None = None
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Apply the analysed-plane rule. Returns ``(plane2d, rule_text, extra_metadata)``."""
    arr = np.asarray(array)
    extra: dict[str, Any] = {}
    if arr.size == 0 or 0 in arr.shape:
        raise NanodefectError(f"the image is empty (shape {arr.shape})", path)
    if np.iscomplexobj(arr):
        raise NanodefectError("complex-valued images are not supported (take the modulus first)", path)
    if arr.dtype.kind not in "biuf":
        raise NanodefectError(f"unsupported pixel type {arr.dtype}", path)
    squeezed = np.squeeze(arr) if arr.ndim > 2 else arr
    if squeezed.ndim < 2:
        raise NanodefectError(f"not an image: shape {arr.shape}", path)
    arr = squeezed
    rules: list[str] = []
    is_colour = arr.ndim >= 3 and arr.shape[-1] in (3, 4) and (colour_axis_last is not False) and arr.shape[-2] > 4
    if arr.ndim == 4 or (arr.ndim == 3 and not is_colour):
        n = arr.shape[0]
        if not 0 <= plane < n:
            raise NanodefectError(f"plane {plane} requested but the file has {n} planes", path)
        extra["n_planes"] = int(n)
        arr = arr[plane]
        rules.append(f"plane {plane} of {n}")
        is_colour = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if arr.ndim == 3 and is_colour:
        rgb = arr[..., :3]
        if arr.shape[-1] == 4:
            rules.append("alpha dropped")
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            arr = np.ascontiguousarray(rgb[..., 0])
            rules.append("grey stored as RGB: first channel")
        else:
            arr = (rgb.astype(np.float32) @ LUMA).astype(np.float32)
            rules.append("RGB -> luminance 0.299R+0.587G+0.114B")
    if arr.ndim != 2:
        raise NanodefectError(f"cannot pick a 2-D plane from an array of shape {np.shape(array)}", path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
        rules.append("bool -> uint8")
    elif arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
        rules.append("float -> float32")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            raise NanodefectError(f"the image has {int(bad.sum())} NaN/inf pixels", path)
    return arr, ", ".join(rules) if rules else "2-D image", extra


def from_array(
    array: np.ndarray,
    *,
    path: str | Path | None = None,
    pixel_size_nm: float | None = None,
    pixel_size_source: str | None = None,
    vendor: str | None = None,
    metadata: dict[str, Any] | None = None,
    plane: int = 0,
    **kwargs: Any,
) -> Micrograph:
    """Build a :class:`Micrograph` from any array, applying the analysed-plane rule."""
    data, rule, extra = analysed_plane(array, path, plane)
    md = dict(metadata or {})
    md.update(extra)
    return Micrograph(
        data=data,
        pixel_size_nm=pixel_size_nm,
        pixel_size_source=pixel_size_source if pixel_size_nm is not None else None,
        vendor=vendor,
        path=None if path is None else Path(path),
        metadata=md,
        plane_rule=rule,
        **kwargs,
    )
