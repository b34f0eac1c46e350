"""TIFF reading with vendor pixel sizes.

Sources of the pixel size, tried in this order (the first that gives one wins):

1. FEI/Thermo Fisher (tag 34682, INI text): ``[Scan] PixelWidth`` (m), else ``[EScan]``.
   ``[Image] ResolutionY`` smaller than the stored height marks the data bar below it.
2. Zeiss (CZ_SEM tag 34118): the candidates ``Image Pixel Size`` and ``Pixel Size`` are
   checked against ``Width / image width``; the candidate that matches the width of the
   stored image wins. When none matches (a 512-px image saved from a 1024-px store
   resolution still says the 1024-px "Pixel Size") ``Width / image width`` is used.
3. Hitachi SU-series: the ``.txt`` sidecar with the same stem (``PixelSize=`` in nm).
4. TVIPS (tag 37706): ``PixelSizeX`` (nm).
5. OME-TIFF: ``Pixels/@PhysicalSizeX`` with its unit (default µm).
6. ImageJ: ``unit=`` in the description and 1/XResolution.
7. Gatan DigitalMicrograph TIFF export (private tags 65009/65003: scale and unit).
8. Standard resolution tags in centimetres, or in inches when the value is not a
   screen/print dpi (72, 96, 300, ...), which many programs write by default.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..errors import NanodefectError
from ..micrograph import Micrograph, Region, from_array, unit_to_nm
from .hitachi import read_hitachi_sidecar

#: largest analysed plane we allocate (bytes); override with NANODEFECT_MAX_IMAGE_BYTES
MAX_IMAGE_BYTES = int(os.environ.get("NANODEFECT_MAX_IMAGE_BYTES", 16 * 2**30))
#: decoded bytes per stored byte beyond which a page is taken as corrupt (deflate tops out
#: at ~1032:1, LZW at ~1400:1; only a near-constant image in zstd/LZMA could go further),
#: checked for pages over MIN_RATIO_CHECK_BYTES
MAX_DECODE_RATIO = 10_000
MIN_RATIO_CHECK_BYTES = 64 * 2**20

#: dpi values written by default by imaging software; they are not a physical scale
DEFAULT_DPI = {1.0, 72.0, 96.0, 100.0, 120.0, 150.0, 200.0, 240.0, 300.0, 400.0, 600.0, 1200.0}


def _data_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """Full-resolution data pages: largest y*x, most bits per sample (skips previews)."""
    pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
    if not pages:
        raise NanodefectError("the TIFF has no image pages", tif.filehandle.path)
    size = max(p.imagelength * p.imagewidth for p in pages)
    pages = [p for p in pages if p.imagelength * p.imagewidth == size and not p.is_reduced] or pages
    bits = max(int(np.max(p.bitspersample)) for p in pages)
    return [p for p in pages if int(np.max(p.bitspersample)) == bits]


def _grey_palette(cmap: np.ndarray) -> bool:
    """True when a TIFF colour map is (almost) a grey ramp, index i -> grey i.

    Zeiss writes a grey ramp with up to every 9th entry replaced by an overlay colour
    (data-bar text, cursors); such images keep their index as the grey level, so the
    overlay pixels get a grey close to their neighbours' instead of a colour.
    """
    n = cmap.shape[1]
    ramp = np.arange(n, dtype=np.float64) * (65535.0 / max(n - 1, 1))
    close = np.all(np.abs(cmap.astype(np.float64) - ramp[None, :]) <= 65535.0 / max(n - 1, 1), axis=0)
    return close.mean() >= 0.85


def _page_array(page: tifffile.TiffPage) -> tuple[np.ndarray, str | None]:
    arr = page.asarray()
    note = None
    if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
        cmap = np.asarray(page.colormap)
        if _grey_palette(cmap):
            note = "grey palette: index = grey level"
        else:
            rgb = cmap[:, arr].transpose(*range(1, arr.ndim + 1), 0)
            arr = (rgb // 257).astype(np.uint8) if cmap.max() > 255 else rgb.astype(np.uint8)
            note = "palette expanded to RGB"
    return arr, note


def _fei(tif: tifffile.TiffFile, shape: tuple[int, int]) -> dict[str, Any] | None:
    md = tif.fei_metadata
    if not md:
        return None
    out: dict[str, Any] = {"vendor": "FEI/Thermo Fisher", "metadata": {"fei": md}}
    for section in ("Scan", "EScan", "IScan"):
        sec = md.get(section) or {}
        px = sec.get("PixelWidth")
        if isinstance(px, (int, float)) and px > 0:
            out["pixel_size_nm"] = float(px) * 1e9
            py = sec.get("PixelHeight", px)
            out["pixel_size_yx_nm"] = (float(py) * 1e9, float(px) * 1e9)
            out["source"] = f"FEI metadata (tag 34682) [{section}] PixelWidth"
            break
    res_y = (md.get("Image") or {}).get("ResolutionY")
    if isinstance(res_y, (int, float)) and 0 < res_y < shape[0]:
        out["info_bar"] = {
            "y0": int(res_y),
            "height": int(shape[0] - res_y),
            "method": "FEI metadata [Image] ResolutionY",
            "confidence": 1.0,
        }
    system = md.get("System") or {}
    out["metadata"]["summary"] = {
        "microscope": system.get("SystemType") or system.get("Type"),
        "high_voltage_V": (md.get("Beam") or {}).get("HV") or (md.get("EBeam") or {}).get("HV"),
        "horizontal_field_width_m": (md.get("Scan") or {}).get("HorFieldsize"),
    }
    return out


def _zeiss(tif: tifffile.TiffFile, shape: tuple[int, int]) -> dict[str, Any] | None:
    md = tif.sem_metadata
    if not md:
        return None
    width_px = shape[1]

    def nm(key: str) -> float | None:
        v = md.get(key)
        if not isinstance(v, tuple) or len(v) < 3 or not isinstance(v[1], (int, float)):
            return None
        f = unit_to_nm(v[2])
        return float(v[1]) * f if f and v[1] > 0 else None

    from_width = None
    width_nm = nm("ap_width")
    if width_nm:
        from_width = width_nm / width_px
    candidates = [(k, nm(k)) for k in ("ap_image_pixel_size", "ap_pixel_size")]
    candidates = [(k, v) for k, v in candidates if v]
    chosen = None
    if from_width is not None:
        for key, v in candidates:
            if abs(v - from_width) / from_width < 0.02:
                chosen = (v, f"Zeiss CZ_SEM (tag 34118) {md[key][0]!r}, matches Width / {width_px} px")
                break
        if chosen is None:
            chosen = (from_width, f"Zeiss CZ_SEM (tag 34118) Width / {width_px} px (pixel-size fields refer to another store resolution)")
    elif candidates:
        key, v = candidates[0]
        chosen = (v, f"Zeiss CZ_SEM (tag 34118) {md[key][0]!r}")
    keep = {k: v for k, v in md.items() if k}  # the unnamed key holds raw calibration tuples
    out: dict[str, Any] = {"vendor": "Zeiss", "metadata": {"zeiss": keep}}
    if chosen:
        out["pixel_size_nm"], out["source"] = chosen
    summary = {}
    for key, name in (("ap_actualkv", "high_voltage"), ("ap_mag", "magnification"), ("ap_wd", "working_distance"),
                      ("dp_detector_type", "detector"), ("dp_image_store", "store_resolution"), ("sv_instrument_id", "instrument")):
        if key in md:
            summary[name] = md[key][1:] if isinstance(md[key], tuple) else md[key]
    out["metadata"]["summary"] = summary
    return out


def _tvips(tif: tifffile.TiffFile) -> dict[str, Any] | None:
    md = tif.tvips_metadata
    if not md:
        return None
    out: dict[str, Any] = {"vendor": "TVIPS", "metadata": {"tvips": {k: v for k, v in md.items() if not isinstance(v, bytes)}}}
    px = md.get("PixelSizeX")
    if isinstance(px, (int, float)) and px > 0:
        out["pixel_size_nm"] = float(px)
        out["pixel_size_yx_nm"] = (float(md.get("PixelSizeY", px)), float(px))
        out["source"] = "TVIPS metadata (tag 37706) PixelSizeX"
    return out


def _ome(tif: tifffile.TiffFile) -> dict[str, Any] | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError as exc:
        raise NanodefectError(f"the OME-XML metadata is corrupt ({exc})", tif.filehandle.path) from exc
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    out: dict[str, Any] = {"vendor": "OME-TIFF", "metadata": {}}
    if pixels is None:
        return out
    sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
    if sx:
        fx = unit_to_nm(pixels.get("PhysicalSizeXUnit", "µm"))
        fy = unit_to_nm(pixels.get("PhysicalSizeYUnit", "µm"))
        if fx:
            px = float(sx) * fx
            py = float(sy) * fy if sy and fy else px
            out.update(pixel_size_nm=px, pixel_size_yx_nm=(py, px), source="OME-XML Pixels PhysicalSizeX")
    return out


def _imagej(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> dict[str, Any] | None:
    md = tif.imagej_metadata
    if not md:
        return None
    out: dict[str, Any] = {"vendor": "ImageJ", "metadata": {"imagej": {k: v for k, v in md.items() if k in ("unit", "spacing", "min", "max", "ImageJ")}}}
    unit = md.get("unit")
    f = unit_to_nm(unit)
    xres = _resolution(page, "XResolution")
    yres = _resolution(page, "YResolution") or xres
    if f and xres:
        out.update(
            pixel_size_nm=f / xres,
            pixel_size_yx_nm=(f / yres, f / xres),
            source=f"ImageJ metadata (unit={unit}, 1/XResolution)",
        )
    return out


def _dm_tiff(page: tifffile.TiffPage) -> dict[str, Any] | None:
    tags = page.tags
    if 65009 not in tags or 65003 not in tags:
        return None
    scale, unit = tags[65009].value, tags[65003].value
    f = unit_to_nm(unit) or unit_to_nm(tags[65012].value if 65012 in tags else None)
    if not f or not isinstance(scale, (int, float)) or scale <= 0:
        return None
    yscale = tags[65010].value if 65010 in tags else scale
    return {
        "vendor": "Gatan DigitalMicrograph (TIFF export)",
        "pixel_size_nm": float(scale) * f,
        "pixel_size_yx_nm": (float(yscale) * f, float(scale) * f),
        "source": "DigitalMicrograph TIFF tags 65009/65003 (scale, unit)",
        "metadata": {},
    }


def _resolution(page: tifffile.TiffPage, name: str) -> float | None:
    tag = page.tags.get(name)
    if tag is None:
        return None
    v = tag.value
    num, den = (v if isinstance(v, tuple) else (v, 1))
    return float(num) / float(den) if den and num else None


def _resolution_tags(page: tifffile.TiffPage) -> dict[str, Any] | None:
    xres = _resolution(page, "XResolution")
    unit_tag = page.tags.get("ResolutionUnit")
    if not xres or unit_tag is None:
        return None
    unit = int(unit_tag.value)
    yres = _resolution(page, "YResolution") or xres
    if unit == 3:  # centimetre
        return {"pixel_size_nm": 1e7 / xres, "pixel_size_yx_nm": (1e7 / yres, 1e7 / xres),
                "source": "TIFF resolution tags (pixels per cm)", "metadata": {}}
    if unit == 2 and round(xres, 6) not in DEFAULT_DPI and xres > 1000:  # inch, not a default dpi
        return {"pixel_size_nm": 2.54e7 / xres, "pixel_size_yx_nm": (2.54e7 / yres, 2.54e7 / xres),
                "source": "TIFF resolution tags (pixels per inch)", "metadata": {}}
    return None


def read_tiff(path: str | Path, plane: int = 0) -> Micrograph:
    """Read a TIFF micrograph; see the module docstring for the pixel-size rules."""
    path = Path(path)
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, struct_error()) as exc:
        raise NanodefectError(f"not a readable TIFF file ({exc})", path) from exc
    with tif:
        pages = _data_pages(tif)
        if not 0 <= plane < len(pages):
            raise NanodefectError(f"plane {plane} requested but the file has {len(pages)} data pages", path)
        page = pages[plane]
        _check_size(page, path)
        arr, note = _page_array(page)
        shape = (page.imagelength, page.imagewidth)
        found: dict[str, Any] = {}
        sources = [
            lambda: _fei(tif, shape),
            lambda: _zeiss(tif, shape),
            lambda: read_hitachi_sidecar(path, shape),
            lambda: _tvips(tif),
            lambda: _ome(tif),
            lambda: _imagej(tif, page),
            lambda: _dm_tiff(page),
            lambda: _resolution_tags(page),
        ]
        metadata: dict[str, Any] = {}
        for get in sources:
            rec = get()
            if not rec:
                continue
            metadata.update(rec.get("metadata", {}))
            for key in ("vendor", "info_bar"):
                if rec.get(key) and key not in found:
                    found[key] = rec[key]
            if "pixel_size_nm" in rec and "pixel_size_nm" not in found:
                found["pixel_size_nm"] = rec["pixel_size_nm"]
                found["pixel_size_yx_nm"] = rec.get("pixel_size_yx_nm")
                found["source"] = rec["source"]
        software = page.tags.get("Software")
        if software is not None:
            metadata["software"] = str(software.value)
    metadata["n_planes"] = len(pages)
    m = from_array(
        arr,
        path=path,
        pixel_size_nm=found.get("pixel_size_nm"),
        pixel_size_source=found.get("source"),
        vendor=found.get("vendor"),
        metadata=metadata,
    )
    m.metadata["n_planes"] = len(pages)
    if found.get("pixel_size_yx_nm"):
        m.pixel_size_yx_nm = tuple(float(v) for v in found["pixel_size_yx_nm"])
    if len(pages) > 1:
        m.plane_rule = f"page {plane} of {len(pages)}" + (f", {m.plane_rule}" if m.plane_rule != "2-D image" else "")
    if note:
        m.plane_rule = f"{note}, {m.plane_rule}" if m.plane_rule != "2-D image" else note
    bar = found.get("info_bar")
    if bar:
        m.info_bar = bar
        m.valid_region = Region(0, 0, int(bar["y0"]), m.data.shape[1])
    return m


def _check_size(page: tifffile.TiffPage, path: Path) -> None:
    """Refuse truncated uncompressed data and absurd sizes before allocating anything."""
    nbytes = int(np.prod(page.shape, dtype=np.int64)) * page.dtype.itemsize if page.dtype is not None else 0
    if page.dtype is None:
        raise NanodefectError("unsupported TIFF sample format", path)
    if nbytes > MAX_IMAGE_BYTES:
        raise NanodefectError(
            f"the image would need {nbytes / 2**30:.1f} GiB (limit {MAX_IMAGE_BYTES / 2**30:.0f} GiB, "
            "set NANODEFECT_MAX_IMAGE_BYTES to raise it)", path)
    stored = sum(int(c) for c in page.databytecounts) if page.databytecounts else 0
    if nbytes > MIN_RATIO_CHECK_BYTES and nbytes > MAX_DECODE_RATIO * stored:
        # a corrupt width/height: tifffile would allocate the declared size and zero-fill it
        raise NanodefectError(
            f"the header declares a {page.shape} image ({nbytes / 2**20:.0f} MiB) but the file holds only "
            f"{stored} bytes of image data: corrupt", path)
    if page.compression == tifffile.COMPRESSION.NONE and page.dataoffsets:
        end = max(int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts))
        if end > path.stat().st_size:
            raise NanodefectError(
                f"the file is truncated: image data runs to byte {end} but the file has {path.stat().st_size}", path)


def struct_error() -> type[Exception]:
    import struct

    return struct.error
