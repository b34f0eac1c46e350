"""PNG, JPEG, BMP and GIF: no physical scale unless a Hitachi sidecar sits beside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import NanodefectError
from ..micrograph import Micrograph, Region, from_array
from .hitachi import read_hitachi_sidecar

Image.MAX_IMAGE_PIXELS = 2**31  # micrographs can be large; we check memory ourselves


def read_raster(path: str | Path, plane: int = 0) -> Micrograph:
    """Read an ordinary raster image (palette images are expanded; 16-bit PNG kept)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            n_frames = getattr(im, "n_frames", 1)
            if not 0 <= plane < n_frames:
                raise NanodefectError(f"plane {plane} requested but the file has {n_frames} frames", path)
            im.seek(plane)
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                arr = np.array(im, dtype=np.uint16)
                im = None
            elif im.mode == "CMYK":
                im = im.convert("RGB")
            if im is not None:
                im.load()
                arr = np.asarray(im)
    except NanodefectError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NanodefectError(f"not a readable image ({exc})", path) from exc
    side = read_hitachi_sidecar(path, arr.shape[:2])
    m = from_array(
        arr,
        path=path,
        pixel_size_nm=side.get("pixel_size_nm") if side else None,
        pixel_size_source=side.get("source") if side else None,
        vendor=side.get("vendor") if side else None,
        metadata=dict(side.get("metadata", {})) if side else {},
    )
    m.metadata["n_planes"] = n_frames
    if side and side.get("info_bar"):
        m.info_bar = side["info_bar"]
        m.valid_region = Region(0, 0, int(side["info_bar"]["y0"]), m.data.shape[1])
    return m
