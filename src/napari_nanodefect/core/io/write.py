"""Writing calibrated TIFFs (ImageJ-compatible: ``unit=nm`` and resolution = 1/pixel size)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from ..atomic import atomic_write_with


def write_tiff(path: str | os.PathLike, data: np.ndarray, pixel_size_nm: float | None = None,
               compression: str | None = "zlib") -> Path:
    """Write ``data`` atomically; the pixel size round-trips through :func:`read_image`.

    ImageJ, Fiji and napari-nanodefect read the scale back (``unit=nm``, XResolution in
    pixels per nm). Label images (uint16/uint32) keep their exact values.
    """
    data = np.asarray(data)
    kwargs: dict = {"compression": compression}
    if pixel_size_nm:
        kwargs.update(imagej=data.dtype in (np.uint8, np.uint16, np.float32) and data.ndim == 2,
                      resolution=(1.0 / pixel_size_nm, 1.0 / pixel_size_nm))
        if kwargs["imagej"]:
            kwargs["metadata"] = {"unit": "nm"}
            kwargs.pop("compression")  # ImageJ cannot read compressed hyperstacks
        else:
            kwargs["resolutionunit"] = "NONE"
    return atomic_write_with(path, lambda tmp: tifffile.imwrite(tmp, data, **kwargs))
