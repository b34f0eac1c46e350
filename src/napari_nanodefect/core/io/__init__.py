"""Readers for micrographs with their physical scale.

:func:`read_image` picks the reader from the file suffix (and magic bytes when the
suffix is unknown), applies the analysed-plane rule (:mod:`..micrograph`), then looks
for a vendor info bar and a scale bar unless told not to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import NanodefectError
from ..micrograph import Micrograph

TIFF_SUFFIXES = {".tif", ".tiff", ".ome.tif", ".ome.tiff"}
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
DM_SUFFIXES = {".dm3", ".dm4"}
TIA_SUFFIXES = {".emi", ".ser"}
JEOL_SUFFIXES = {".img"}
STM_SUFFIXES = {".txt", ".asc", ".dat", ".xyz", ".stp"}

#: suffixes :func:`read_image` (and the napari reader) accept
SUPPORTED_SUFFIXES = sorted(TIFF_SUFFIXES | RASTER_SUFFIXES | DM_SUFFIXES | TIA_SUFFIXES | JEOL_SUFFIXES | STM_SUFFIXES)


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ".tif"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if head[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if head[:2] == b"BM":
        return ".bmp"
    if head[:4] in (b"\x00\x00\x00\x03", b"\x00\x00\x00\x04"):
        return ".dm3"
    return None


def _reader_for(path: Path) -> Callable[..., Micrograph]:
    name = path.name.lower()
    suffix = path.suffix.lower()
    if name.endswith((".ome.tif", ".ome.tiff")) or suffix in TIFF_SUFFIXES:
        from .tiff import read_tiff

        return read_tiff
    if suffix in RASTER_SUFFIXES:
        from .raster import read_raster

        return read_raster
    if suffix in DM_SUFFIXES:
        from .dm import read_dm

        return read_dm
    if suffix in TIA_SUFFIXES:
        from .tia import read_tia

        return read_tia
    if suffix in JEOL_SUFFIXES:
        from .jeol import read_jeol_img

        return read_jeol_img
    if suffix in STM_SUFFIXES:
        from .stm import read_stm_ascii

        return read_stm_ascii
    sniffed = _sniff(path)
    if sniffed is None:
        raise NanodefectError(
            f"unknown image format {suffix or '(no suffix)'}; supported: {', '.join(SUPPORTED_SUFFIXES)}", path
        )
    return _reader_for(path.with_suffix(sniffed))


def read_image(
    path: str | os.PathLike,
    *,
    plane: int = 0,
    detect_info_bar: bool = True,
    detect_scale_bar: bool = True,
    pixel_size_nm: float | None = None,
) -> Micrograph:
    """Read a micrograph and its pixel size.

    Parameters
    ----------
    path : TIFF (FEI/Thermo, Zeiss, Hitachi sidecar, TVIPS, ImageJ, OME, resolution tags),
        DigitalMicrograph .dm3/.dm4, FEI TIA .emi/.ser, JEOL .img, PNG/JPG/BMP, or an
        STM/SPM ASCII height map.
    plane : which page/frame to analyse in multi-page files (default: the first).
    detect_info_bar, detect_scale_bar : look for a vendor data bar / scale bar in the image.
    pixel_size_nm : a typed-in pixel size; overrides the file (source ``"user"``).

    Raises
    ------
    NanodefectError : for missing, corrupt, truncated or unsupported files, with the
        file name and the problem in the message.
    """
    p = Path(path)
    if not p.exists():
        raise NanodefectError("file not found", p)
    if p.is_dir():
        raise NanodefectError("is a folder, not an image file", p)
    if p.stat().st_size == 0:
        raise NanodefectError("the file is empty (0 bytes)", p)
    reader = _reader_for(p)
    try:
        m = reader(p, plane=plane)
    except NanodefectError:
        raise
    except MemoryError as exc:
        raise NanodefectError(f"not enough memory to read the image ({exc})", p) from exc
    except Exception as exc:  # translate library errors into one clear message
        raise NanodefectError(f"cannot read the file: {type(exc).__name__}: {exc}", p) from exc
    m.path = p
    if detect_info_bar and m.info_bar is None:
        from ..infobar import detect_info_bar as _detect_bar

        bar = _detect_bar(m.data, vendor=m.vendor)
        if bar is not None:
            m.info_bar = bar
            m.valid_region = type(m.valid_region)(0, 0, int(bar["y0"]), m.data.shape[1])
    if detect_scale_bar and m.scale_bar is None:
        from ..scalebar import detect_scale_bar as _detect_scale

        sb = _detect_scale(m.data, valid_region=m.valid_region)
        if sb is not None:
            m.scale_bar = sb
            if m.pixel_size_nm is None and sb.get("pixel_size_nm"):
                m.set_pixel_size(sb["pixel_size_nm"], "scale bar (OCR)")
    if pixel_size_nm is not None:
        m.set_pixel_size(pixel_size_nm, "user")
    return m


__all__ = ["read_image", "SUPPORTED_SUFFIXES"]
