"""napari hooks (reader, sample data) — no Qt here, only layer-data tuples.

A micrograph opens as an Image layer whose ``scale`` is the pixel size in nm and whose
``units`` are nm, so napari's scale bar and every measurement are physical. The full
:meth:`Micrograph.info` record is kept in ``layer.metadata["nanodefect"]``. STM height
maps add a second, hidden layer with the raw heights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .core.errors import NanodefectError
from .core.io import SUPPORTED_SUFFIXES, read_image
from .core.micrograph import Micrograph


def micrograph_layer_data(m: Micrograph, name: str | None = None) -> list[tuple[Any, dict, str]]:
    """Layer-data tuples for a micrograph (image, plus raw heights for STM maps)."""
    info = m.info()
    kwargs: dict[str, Any] = {"name": name or (m.path.stem if m.path else "micrograph"), "metadata": {"nanodefect": info}}
    if m.pixel_size_nm:
        sy, sx = m.pixel_size_yx_nm or (m.pixel_size_nm, m.pixel_size_nm)
        kwargs.update(scale=(sy, sx), units=("nm", "nm"))
    layers = [(m.data, kwargs, "image")]
    if m.heights is not None:
        hk = dict(kwargs, name=f"{kwargs['name']} heights ({m.height_unit or 'raw'})", visible=False)
        layers.append((m.heights, hk, "image"))
    return layers


def get_reader(path: str | list[str]) -> Callable | None:
    """npe2 reader: returns a function when we can read ``path``, else None."""
    if isinstance(path, list):
        if not all(isinstance(p, str) for p in path):
            return None
        paths = path
    else:
        paths = [path]
    if not all(Path(p).suffix.lower() in SUPPORTED_SUFFIXES for p in paths):
        return None
    return _read_paths


def _read_paths(path: str | list[str]) -> list[tuple[Any, dict, str]]:
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        try:
            m = read_image(p)
        except NanodefectError as exc:
            # napari shows the message in a notification instead of a traceback
            raise ValueError(str(exc)) from exc
        layers.extend(micrograph_layer_data(m))
    return layers


def _sample(mode: str) -> list[tuple[Any, dict, str]]:
    from .core.synthetic import make_particles

    s = make_particles(shape=(512, 512), mode=mode, seed=1 if mode == "haadf" else 2)
    scale = (s.pixel_size_nm, s.pixel_size_nm)
    return [
        (s.image, {"name": f"synthetic {mode}", "scale": scale, "units": ("nm", "nm"),
                   "metadata": {"nanodefect": {"pixel_size_nm": s.pixel_size_nm, "pixel_size_source": "synthetic"}}}, "image"),
        (s.labels, {"name": f"synthetic {mode} ground truth", "scale": scale, "units": ("nm", "nm"), "visible": False}, "labels"),
    ]


def sample_haadf():
    return _sample("haadf")


def sample_bf():
    return _sample("bf")
