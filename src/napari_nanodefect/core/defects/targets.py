"""Defect annotations -> per-class training masks, with line defects at a physical width.

Line defects (grain boundaries, sheet borders, topological bends) are drawn in LabelMe as
thin lines/linestrips; Boiko et al. (2021) dilated them to half the Pd particle diameter
so that the target does not depend on magnification. :func:`defect_masks` does the same:
every line is drawn ``line_width_nm`` wide (converted with the image's pixel size), or
``particle_diameter_nm / 2`` wide when only the particle size is known, or
``line_width_px`` wide. Polygons are filled as they are; points/circles (point defects:
groups of >= 5 agglomerated particles) become disks of their radius, or of
``point_radius_nm`` / the particle diameter when they have none.

The result is a boolean ``(C, H, W)`` stack in the order of ``classes`` (default
:data:`DEFAULT_CLASSES`); labels outside ``classes`` are reported, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..annotations import geometry
from ..annotations.model import AnnotationSet
from ..errors import NanodefectError

DEFAULT_CLASSES = ("sheet_border", "grain_boundary", "topological_defect", "point_defect")


@dataclass
class DefectMasks:
    """``masks``: bool ``(C, H, W)``; ``classes``: their names; ``line_width_px`` and
    ``point_radius_px`` used; ``ignored``: labels not in ``classes`` with their counts."""

    masks: np.ndarray
    classes: list[str]
    line_width_px: float
    point_radius_px: float
    ignored: dict[str, int] = field(default_factory=dict)

    def channel(self, name: str) -> np.ndarray:
        return self.masks[self.classes.index(name)]


def physical_width_px(
    pixel_size_nm: float | None,
    *,
    line_width_nm: float | None = None,
    particle_diameter_nm: float | None = None,
    line_width_px: float | None = None,
    minimum_px: float = 1.0,
) -> float:
    """Line width in px: ``line_width_nm``, else half the particle diameter (Boiko), both
    converted with ``pixel_size_nm``; else ``line_width_px``. At least ``minimum_px``."""
    if line_width_nm is not None or particle_diameter_nm is not None:
        if not pixel_size_nm:
            raise NanodefectError("a line width in nm needs the pixel size (give it, or a width in px)")
        nm = line_width_nm if line_width_nm is not None else particle_diameter_nm / 2.0
        if not nm > 0:
            raise NanodefectError(f"line width must be positive, got {nm} nm")
        return max(float(nm) / float(pixel_size_nm), minimum_px)
    if line_width_px is not None:
        if not line_width_px > 0:
            raise NanodefectError(f"line width must be positive, got {line_width_px} px")
        return max(float(line_width_px), minimum_px)
    raise NanodefectError("give a line width (nm or px) or the particle diameter (nm)")


def defect_masks(
    aset: AnnotationSet,
    classes: Sequence[str] = DEFAULT_CLASSES,
    *,
    shape: tuple[int, int] | None = None,
    pixel_size_nm: float | None = None,
    line_width_nm: float | None = None,
    particle_diameter_nm: float | None = None,
    line_width_px: float | None = None,
    point_radius_nm: float | None = None,
) -> DefectMasks:
    """Per-class masks of the defects annotated in ``aset`` (see the module docstring).

    ``shape`` defaults to the annotation's image size; ``pixel_size_nm`` to its pixel size.
    A line's own ``width_px`` (when the annotation stores one) wins over the default.
    """
    shape = shape or aset.image_shape
    if shape is None:
        raise NanodefectError("image size unknown: cannot draw defect masks", aset.source)
    ps = pixel_size_nm or aset.pixel_size_nm
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes):
        raise NanodefectError(f"defect classes must be distinct names, got {classes}")
    has_lines = bool(aset.lines)
    if line_width_nm is None and particle_diameter_nm is None and line_width_px is None and not has_lines:
        width = 1.0  # nothing to draw as a line: the width does not matter
    else:
        width = physical_width_px(ps, line_width_nm=line_width_nm, particle_diameter_nm=particle_diameter_nm,
                                  line_width_px=line_width_px)
    if point_radius_nm is not None:
        if not ps:
            raise NanodefectError("a point radius in nm needs the pixel size")
        radius = float(point_radius_nm) / float(ps)
    elif particle_diameter_nm is not None and ps:
        radius = float(particle_diameter_nm) / float(ps)  # a group of >= 5 particles spans ~2 diameters
    else:
        radius = max(width, 1.0)
    out = np.zeros((len(classes), int(shape[0]), int(shape[1])), bool)
    ignored: dict[str, int] = {}

    def paint(label: str, rings) -> None:
        if label not in classes:
            ignored[label] = ignored.get(label, 0) + 1
            return
        m, r0, c0 = geometry.rasterize_rings(rings, shape)
        if m.size:
            out[classes.index(label), r0:r0 + m.shape[0], c0:c0 + m.shape[1]] |= m

    for line in aset.lines:
        paint(line.label, [geometry.buffer_polyline(line.points, line.width_px or width)])
    for obj in aset.objects:
        paint(obj.label, obj.rings)
    for p in aset.points:
        paint(p.label, [geometry.circle_polygon(p.x, p.y, p.radius or radius)])
    return DefectMasks(out, classes, float(width), float(radius), ignored)
