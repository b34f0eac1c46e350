"""Export the results of one image in every format at once (Qt-free).

:func:`export_image` writes, into one folder and named after the image:

======================  =====================================================
``<stem>.json``         LabelMe polygons with classes, and the crops
``<stem>.coco.json``    COCO instances (polygons) with categories
``<stem>_particles.csv`` the particle table (one row per particle, nm)
``<stem>_summary.json`` count, d10/d50/d90, density, coverage, log-normal fit
``<stem>_histogram.png`` / ``.svg``  the size histogram (nm, per class)
======================  =====================================================

Analysed regions are the crops when there are any, else the valid region (the image
without its info bar), else the whole image — the same rule as ``nanodefect measure``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .annotations import write_coco, write_labelme
from .annotations.layerdata import build_set
from .atomic import atomic_write_json, atomic_write_text
from .errors import NanodefectError

FORMATS = ("labelme", "coco", "csv", "summary", "png", "svg")


def export_image(
    out_dir: str | os.PathLike,
    stem: str,
    labels: np.ndarray,
    classes: Mapping[int, str] | None = None,
    *,
    rectangles: Sequence[np.ndarray] = (),
    image: np.ndarray | None = None,
    pixel_size_nm: float | None = None,
    image_path: str | os.PathLike | None = None,
    valid_region: tuple[int, int, int, int] | None = None,
    formats: Iterable[str] = FORMATS,
    bins: int | str = "auto",
    edge_correction: str = "miles-lantuejoul",
    table: pd.DataFrame | None = None,
    crops_are_regions: bool = True,
) -> dict[str, Any]:
    """Write the chosen ``formats`` (see :data:`FORMATS`); returns ``{format: path}`` plus
    ``"summary"`` (the statistics) and ``"table"``.

    ``labels``: instance label image; ``classes``: label -> class; ``rectangles``: crops as
    napari ``(row, col)`` vertices; ``valid_region``: ``(y0, x0, y1, x1)``. ``table``: an
    up-to-date particle table (e.g. a layer's features) to reuse instead of re-measuring.
    ``crops_are_regions=False`` writes the crops into LabelMe/COCO but measures over the
    valid region (e.g. predictions of a whole image whose crops were training regions).
    """
    from .measure.histogram import save_histogram
    from .measure.particles import measure_particles, region_bounds
    from .measure.population import summarize

    formats = [f.lower() for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise NanodefectError(f"unknown export format(s) {bad}; choose from {', '.join(FORMATS)}")
    labels = np.asarray(labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    aset = build_set(labels, classes, rectangles, image_path=image_path, pixel_size_nm=pixel_size_nm)
    result: dict[str, Any] = {}
    if "labelme" in formats:
        result["labelme"] = write_labelme(aset, out / f"{stem}.json", embed_image=False)
    if "coco" in formats:
        names = sorted(set((classes or {}).values())) or None
        result["coco"] = write_coco(aset, out / f"{stem}.coco.json", categories=names, include_lines_points=False)
    if not {"csv", "summary", "png", "svg"} & set(formats):
        return result
    regions = [(int(np.floor(c.y0)), int(np.floor(c.x0)), int(np.ceil(c.y1)), int(np.ceil(c.x1)))
               for c in aset.crops] if crops_are_regions else []
    if not regions and valid_region is not None:
        regions = [tuple(int(v) for v in valid_region)]
    regions = region_bounds(labels.shape, regions or None)
    if image is not None and np.shape(image)[:2] != labels.shape:
        image = None
    if table is None or "region" not in table or "ecd_nm" not in table:
        table = measure_particles(labels, pixel_size_nm, image, class_index=dict(classes or {}) or None,
                                  regions=regions)
    table = table.drop(columns=["index"], errors="ignore")
    summary = summarize(table, pixel_size_nm, regions, edge_correction=edge_correction)
    summary["image"] = stem
    result["summary"] = summary
    result["table"] = table
    if "csv" in formats:
        result["csv"] = atomic_write_text(out / f"{stem}_particles.csv", table.to_csv(index=False, float_format="%.6g"))
    if "summary" in formats:
        result["summary_json"] = atomic_write_json(out / f"{stem}_summary.json", summary)
    for fmt in ("png", "svg"):
        if fmt in formats:
            result[fmt] = Path(save_histogram(out / f"{stem}_histogram.{fmt}", table, summary, bins=bins, title=stem))
    return result
