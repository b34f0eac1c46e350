"""Small image helpers for the annotation converters: image size and 8-bit PNG rendering.

Only PIL and tifffile are used (no Qt); vendor formats PIL/tifffile cannot read give
``None`` / :class:`NanodefectError`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import NanodefectError

#: what labelme can show from the image file alone (no imageData needed)
LABELME_NATIVE_SUFFIXES = (".png", ".jpg", ".jpeg")
LABELME_NATIVE_MODES = ("L", "LA", "RGB", "RGBA")


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` in px of an image file (header only where possible), or None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            return (int(im.height), int(im.width))
    except Exception:
        pass
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].levels[0].shape if tf.series else tf.pages[0].shape
            if len(shape) >= 3 and shape[-1] in (3, 4):
                return (int(shape[-3]), int(shape[-2]))
            return (int(shape[-2]), int(shape[-1]))
        except Exception:
            return None
    return None


def labelme_native(path: str | Path) -> bool:
    """True when labelme shows the file by itself: an 8-bit-per-channel PNG/JPEG
    (modes L, LA, RGB, RGBA). Palette, 16-bit, float and all TIFF/other files are not."""
    path = Path(path)
    if path.suffix.lower() not in LABELME_NATIVE_SUFFIXES or not path.is_file():
        return False
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.mode in LABELME_NATIVE_MODES
    except Exception:
        return False


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Linear min-max stretch to 0..255 (uint8 data is returned unchanged)."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.round((a - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def _as_8bit_array(path: Path) -> np.ndarray:
    """Read the first plane of an image as uint8 (H, W) grey or (H, W, 3|4) colour."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.seek(0)
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
                arr = np.asarray(im)
                if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]) and arr.shape[-1] == 3:
                    arr = arr[..., 0]
                return np.ascontiguousarray(arr)
            if mode in ("L", "LA", "RGB", "RGBA"):
                return np.asarray(im).copy()
            if mode == "1":
                return np.asarray(im.convert("L")).copy()
            if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                return np.asarray(im.convert("RGB")).copy()
            arr = np.asarray(im)  # I;16, I, F ...
            if arr.ndim == 2 and arr.dtype.kind in "uif":
                return _stretch_to_uint8(arr)
    except Exception:
        pass
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            from ..micrograph import analysed_plane

            with tifffile.TiffFile(path) as tf:
                page = tf.pages[0]
                arr = page.asarray()
                cmap = getattr(page, "colormap", None)
            if cmap is not None and arr.ndim == 2 and arr.dtype.kind == "u":
                cm = np.asarray(cmap)
                cm = (cm / 257).astype(np.uint8) if cm.max() > 255 else cm.astype(np.uint8)
                return np.ascontiguousarray(cm[:, arr].transpose(1, 2, 0))
            if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
                return arr
            plane, _, _ = analysed_plane(arr, path)
            return _stretch_to_uint8(plane)
        except NanodefectError:
            raise
        except Exception as e:
            raise NanodefectError(f"cannot read the image to embed it ({type(e).__name__}: {e})", path) from None
    raise NanodefectError("cannot read the image to embed it (not a format PIL or tifffile reads)", path)


def png8_bytes(path: str | Path) -> tuple[bytes, tuple[int, int]]:
    """The image as an 8-bit PNG (grey, RGB or RGBA) and its ``(height, width)``.

    Palette images are expanded to RGB(A) (or grey when the palette is grey); 16-bit,
    32-bit and float images are stretched linearly from their min..max to 0..255;
    multi-page files use the first page.
    """
    from PIL import Image

    path = Path(path)
    arr = _as_8bit_array(path)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), (int(arr.shape[0]), int(arr.shape[1]))


def decode_image_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` of encoded image bytes (PNG/JPEG/...), or None."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return (int(im.height), int(im.width))
    except Exception:
        return None
