"""The in-memory annotation model shared by the LabelMe, COCO and label-image converters.

Coordinate convention (used everywhere in this package)
-------------------------------------------------------
Vertices are ``(x, y)`` floats in **pixels, pixel-corner ("continuous") coordinates**:
``x`` runs along columns, ``y`` down the rows, the image spans ``[0, W] × [0, H]`` and the
pixel at row ``r``, column ``c`` covers ``x ∈ [c, c+1)``, ``y ∈ [r, r+1)`` with its
centre at ``(c + 0.5, r + 0.5)``.

* **COCO** uses exactly this convention (pycocotools samples a polygon at pixel centres
  ``(c + 0.5, r + 0.5)``), so COCO vertices are copied unchanged.
* **LabelMe** stores what its Qt canvas shows, where pixel ``(0, 0)`` is drawn over
  ``[0, 1) × [0, 1)``: the same convention, so LabelMe vertices are copied unchanged
  too. (labelme's own ``shape_to_mask`` rasterises with PIL, which treats integer
  coordinates as pixel centres: it is half a pixel off its own GUI; we follow the GUI.)
  LabelMe ``mask`` shapes are bitmaps whose first pixel is at ``points[0]``.
* **Label images** (pixel indices): a pixel belongs to a polygon when its centre lies
  inside (even-odd rule; computed exactly as pycocotools does, boundary rounded to
  1/5 px, see :func:`.geometry.rasterize_rings`), and polygons traced from label images
  follow pixel edges (integer coordinates), so label -> polygon -> label is pixel-exact
  and a traced polygon's area equals its pixel count.
* **napari** Shapes/Points layers put pixel centres at integer ``(row, col)``: use
  :func:`xy_to_napari` / :func:`napari_to_xy` (shift by 0.5 and swap axes).

What goes where
---------------
* ``crops``: rectangles labelled ``crop`` or ``roi`` (any case): fully annotated training
  regions. Other rectangles are objects (4-vertex polygons, ``shape_type="rectangle"``).
* ``objects``: polygons (outer ring + optional holes) with a class label: particles,
  voids, loops. LabelMe circles become objects (a circle is a particle outline; the
  polygon is an area-preserving regular polygon and ``circle`` keeps the exact centre and
  radius) **unless** their label is a point label (``point``, ``points``, ``site``,
  ``sites``, any case), in which case they are ``points`` with a radius.
* ``lines``: polylines with a class and an optional width in px (line defects;
  LabelMe ``line``/``linestrip``).
* ``points``: single sites (LabelMe ``point``; point-labelled circles with a radius).
* ``tags``: image-level labels (LabelMe ``flags`` that are true).
* ``extra``: everything we do not model, so nothing is lost; keyed by format:
  ``extra["labelme"]`` (unknown top-level LabelMe keys, the version, all flags),
  ``extra["coco"]`` (``info``, ``licenses``, ``categories``), ``extra["coco_image"]``
  (unknown keys of the COCO image record, its ``id``). Per-annotation ``extra`` holds
  unknown per-shape / per-annotation keys and is written back by both writers.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import geometry
from ..errors import NanodefectError

#: rectangle labels that mark fully annotated training regions (compared lower-case)
CROP_LABELS = frozenset({"crop", "roi"})
#: circle labels that make a point (with radius) instead of a round object (lower-case)
POINT_LABELS = frozenset({"point", "points", "site", "sites"})


def positive_int(value: Any, what: str, path: Any = None) -> int:
    """``value`` as an int; :class:`NanodefectError` unless it is a positive whole number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or int(value) != value:
        raise NanodefectError(f"{what} must be a positive integer, got {value!r}", path)
    return int(value)


def is_crop_label(label: str) -> bool:
    """True for rectangle labels meaning 'fully annotated region' (``crop``, ``roi``)."""
    return str(label).strip().lower() in CROP_LABELS


def is_point_label(label: str) -> bool:
    """True for circle labels that mean a point site rather than a particle outline."""
    return str(label).strip().lower() in POINT_LABELS


@dataclass(eq=False)
class Crop:
    """A fully annotated rectangular region, pixel-corner coordinates, ``x0 < x1``, ``y0 < y1``."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = "crop"
    description: str = ""
    instance_id: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        x0, x1 = sorted((float(self.x0), float(self.x1)))
        y0, y1 = sorted((float(self.y0), float(self.y1)))
        self.x0, self.y0, self.x1, self.y1 = x0, y0, x1, y1

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in px."""
        return (self.x0, self.y0, self.x1, self.y1)

    def pixel_slices(self) -> tuple[slice, slice]:
        """Row and column slices of the pixels whose centres lie inside the crop."""
        r0, r1 = int(np.ceil(self.y0 - 0.5)), int(np.ceil(self.y1 - 0.5))
        c0, c1 = int(np.ceil(self.x0 - 0.5)), int(np.ceil(self.x1 - 0.5))
        return slice(max(r0, 0), max(r1, 0)), slice(max(c0, 0), max(c1, 0))


@dataclass(eq=False)
class ObjectAnnotation:
    """A polygon object (particle, void, loop ...).

    ``polygon``: ``(N, 2)`` float (x, y) outer ring, pixel-corner coordinates, N >= 3, not
    repeated at the end. ``holes``: interior rings. ``score``: detector confidence or None.
    ``instance_id``: LabelMe ``group_id`` / instance number; several objects sharing an
    id and label are parts of one instance. ``attributes``: LabelMe shape flags, COCO
    ``iscrowd``/``attributes``. ``shape_type``: how it was drawn (``polygon``,
    ``rectangle``, ``circle``, ``mask``, ``oriented_rectangle``), so LabelMe output can
    draw it the same way. ``circle``: exact ``(cx, cy, r)`` px for circles.
    """

    label: str
    polygon: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    score: float | None = None
    instance_id: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    shape_type: str = "polygon"
    circle: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.polygon = geometry.as_ring(self.polygon)
        self.holes = [geometry.as_ring(h) for h in self.holes]

    @property
    def rings(self) -> list[np.ndarray]:
        """Outer ring followed by the holes."""
        return [self.polygon, *self.holes]

    @property
    def area(self) -> float:
        """Polygon area in px² (shoelace, holes subtracted)."""
        return geometry.polygon_area(self.polygon, self.holes)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` vertex extent in px."""
        return geometry.bounds([self.polygon])

    def to_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean mask (rows, cols) of the pixels whose centre is inside (holes excluded)."""
        return geometry.rings_to_mask(self.rings, shape)

    @classmethod
    def from_circle(cls, label: str, cx: float, cy: float, r: float, **kw) -> "ObjectAnnotation":
        """A round object: area-preserving polygon plus the exact circle."""
        return cls(label=label, polygon=geometry.circle_polygon(cx, cy, r), shape_type="circle",
                   circle=(float(cx), float(cy), float(r)), **kw)


@dataclass(eq=False)
class LineAnnotation:
    """A polyline (line defect), ``points`` ``(N, 2)`` (x, y) px, N >= 2; ``width_px`` optional.

    ``shape_type`` is ``line`` (2 points in LabelMe) or ``linestrip``.
    """

    label: str
    points: np.ndarray
    width_px: float | None = None
    instance_id: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    shape_type: str = "linestrip"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.points = geometry.as_ring(self.points, min_points=2)
        if self.width_px is not None:
            self.width_px = float(self.width_px)

    @property
    def length(self) -> float:
        """Length along the polyline in px."""
        return float(np.sum(np.linalg.norm(np.diff(self.points, axis=0), axis=1)))

    def outline(self, default_width: float = 1.0) -> np.ndarray:
        """The line drawn ``width_px`` (or ``default_width``) px wide, as one polygon ring."""
        return geometry.buffer_polyline(self.points, self.width_px or default_width)


@dataclass(eq=False)
class PointAnnotation:
    """A point site at ``(x, y)`` px (pixel-corner coordinates) with an optional radius in px."""

    label: str
    x: float
    y: float
    radius: float | None = None
    score: float | None = None
    instance_id: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.x, self.y = float(self.x), float(self.y)
        if not (np.isfinite(self.x) and np.isfinite(self.y)):
            raise ValueError("point coordinates must be finite")
        if self.radius is not None:
            self.radius = float(self.radius)

    def outline(self) -> np.ndarray:
        """A disk of ``radius`` px, or the 1 × 1 px square centred on the point."""
        if self.radius:
            return geometry.circle_polygon(self.x, self.y, self.radius)
        return geometry.rectangle_ring(self.x - 0.5, self.y - 0.5, self.x + 0.5, self.y + 0.5)


@dataclass(eq=False)
class AnnotationSet:
    """All annotations of one image.

    ``image_path``: as stored in the source (relative paths are relative to the folder of
    ``source``, the annotation file it was read from; see :meth:`resolve_image_path`).
    ``image_height`` / ``image_width``: px. ``pixel_size_nm``: nm per px or None.
    ``image_data``: encoded image bytes embedded in the source (LabelMe ``imageData``).
    """

    image_path: str | None = None
    image_height: int | None = None
    image_width: int | None = None
    pixel_size_nm: float | None = None
    crops: list[Crop] = field(default_factory=list)
    objects: list[ObjectAnnotation] = field(default_factory=list)
    lines: list[LineAnnotation] = field(default_factory=list)
    points: list[PointAnnotation] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    image_data: bytes | None = None
    source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int] | None:
        """``(height, width)`` in px, or None when unknown."""
        if self.image_height is None or self.image_width is None:
            return None
        return (int(self.image_height), int(self.image_width))

    def resolve_image_path(self) -> Path | None:
        """Absolute image path: ``image_path`` joined to the source file's folder if relative."""
        if not self.image_path:
            return None
        p = Path(self.image_path)
        if not p.is_absolute() and self.source is not None:
            p = Path(self.source).parent / p
        return Path(os.path.abspath(p))

    def image_path_relative_to(self, folder: str | os.PathLike) -> str:
        """``image_path`` as written into an annotation file in ``folder``: relative to
        ``folder`` when the image location is known (absolute path, or relative to a known
        ``source``), else unchanged; ``""`` when there is no image path."""
        if not self.image_path:
            return ""
        if not Path(self.image_path).is_absolute() and self.source is None:
            return Path(self.image_path.replace("\\", "/")).as_posix()
        target = self.resolve_image_path()
        try:
            return Path(os.path.relpath(target, os.path.abspath(folder))).as_posix()
        except ValueError:  # another drive on Windows
            return target.as_posix()

    @property
    def labels(self) -> list[str]:
        """Class labels used by objects, lines and points, in order of first appearance."""
        seen: dict[str, None] = {}
        for a in [*self.objects, *self.lines, *self.points]:
            seen.setdefault(a.label, None)
        return list(seen)

    def __len__(self) -> int:
        return len(self.objects) + len(self.lines) + len(self.points)

    def copy(self) -> "AnnotationSet":
        """Deep copy."""
        return copy.deepcopy(self)

    def summary(self) -> dict[str, Any]:
        """Counts per kind and class (JSON-friendly)."""
        per: dict[str, int] = {}
        for o in self.objects:
            per[o.label] = per.get(o.label, 0) + 1
        return {
            "image_path": self.image_path,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "pixel_size_nm": self.pixel_size_nm,
            "crops": len(self.crops),
            "objects": len(self.objects),
            "lines": len(self.lines),
            "points": len(self.points),
            "objects_per_class": per,
            "tags": list(self.tags),
        }


def xy_to_napari(xy: np.ndarray) -> np.ndarray:
    """(x, y) pixel-corner coordinates -> napari (row, col) data coordinates (pixel centres
    at integers): ``row = y - 0.5``, ``col = x - 0.5``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    return np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1)


def napari_to_xy(rc: np.ndarray) -> np.ndarray:
    """napari (row, col) data coordinates -> (x, y) pixel-corner coordinates."""
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    return np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=1)
