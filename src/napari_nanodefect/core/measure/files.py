"""``nanodefect measure``: particle table, summary and histogram from files (Qt-free).

Inputs: an instance label TIFF (as written by ``nanodefect predict`` or ``convert --to
labels``), a LabelMe JSON, or a COCO JSON (several images). The pixel size comes from, in
order: ``pixel_size_nm`` given by the caller (``--pixel-size``), the metadata of ``image``
(``--image``), the label file or annotation itself, the image the labels refer to. The
micrograph (given or referred to) also gives the intensities (heights for STM) and the
valid region (the image without its info bar).

Analysed regions: the crops of an annotation (fully annotated rectangles) when it has any,
else the micrograph's valid region, else the whole label image. Objects whose centre lies
outside every region are not counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import NanodefectError
from .particles import Region, measure_particles, region_bounds
from .population import summarize

__all__ = ["MeasureInput", "load_measure_inputs", "measure_file", "measure_input", "write_measurements"]


@dataclass
class MeasureInput:
    """One label image with what is needed to measure it."""

    name: str
    labels: np.ndarray
    classes: dict[int, str] = field(default_factory=dict)
    pixel_size_nm: float | None = None
    pixel_size_source: str | None = None
    image: np.ndarray | None = None
    regions: list[Region] | None = None
    image_path: str | None = None


def _read_micrograph(path: str | os.PathLike):
    from ..io import read_image

    return read_image(path)


def _attach_image(inp: MeasureInput, path: Path, source: str) -> None:
    m = _read_micrograph(path)
    data = m.heights if m.heights is not None else m.data
    data = np.asarray(data)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        data = data[..., :3].mean(axis=-1)
    if data.shape[:2] != inp.labels.shape:
        raise NanodefectError(f"image {path.name} is {data.shape[1]}x{data.shape[0]} px but the labels are "
                              f"{inp.labels.shape[1]}x{inp.labels.shape[0]} px", path)
    inp.image = data
    inp.image_path = str(path)
    if inp.pixel_size_nm is None and m.pixel_size_nm:
        inp.pixel_size_nm, inp.pixel_size_source = m.pixel_size_nm, f"{source} ({m.pixel_size_source})"
    if inp.regions is None and m.valid_region is not None:
        vr = m.valid_region
        if (vr.y0, vr.x0, vr.y1, vr.x1) != (0, 0, *inp.labels.shape):
            inp.regions = [(vr.y0, vr.x0, vr.y1, vr.x1)]


def load_measure_inputs(path: str | os.PathLike, image: str | os.PathLike | None = None,
                        pixel_size_nm: float | None = None, images: str | os.PathLike | None = None) -> list[MeasureInput]:
    """Read a label TIFF, LabelMe JSON (file or folder) or COCO JSON into measure inputs."""
    from ..annotations import read_label_tiff, set_to_labels
    from ..annotations.convert import load_annotations

    path = Path(path)
    if not path.exists():
        raise NanodefectError("no such file or folder", path)
    inputs: list[MeasureInput] = []
    referred: list[Path | None] = []
    if path.is_file() and path.suffix.lower() in (".tif", ".tiff"):
        li = read_label_tiff(path)
        inp = MeasureInput(path.stem.removesuffix("_labels"), np.asarray(li.labels), dict(li.classes),
                           li.pixel_size_nm, "label file" if li.pixel_size_nm else None)
        inputs.append(inp)
        ref = Path(li.image_path) if li.image_path else None
        referred.append(ref if ref is None or ref.is_absolute() else path.parent / ref)
    else:
        sets = load_annotations(path, images=images)
        for k, aset in enumerate(sets):
            if not aset.objects and not aset.crops:
                continue
            li = set_to_labels(aset)
            regions = None
            if aset.crops:
                regions = []
                for c in aset.crops:
                    sy, sx = c.pixel_slices()
                    regions.append((sy.start, sx.start, sy.stop, sx.stop))
            name = Path(aset.image_path).stem if aset.image_path else (aset.source.stem if aset.source else f"image{k}")
            inputs.append(MeasureInput(name, np.asarray(li.labels), dict(li.classes), aset.pixel_size_nm,
                                       "annotation" if aset.pixel_size_nm else None, regions=regions))
            referred.append(aset.resolve_image_path())
        if not inputs:
            raise NanodefectError("no objects to measure", path)
    if image is not None and len(inputs) > 1:
        raise NanodefectError("--image names one micrograph but the annotation holds several images", path)
    for inp, ref in zip(inputs, referred):
        if pixel_size_nm is not None:
            if not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
                raise NanodefectError(f"invalid pixel size {pixel_size_nm!r} nm")
            inp.pixel_size_nm, inp.pixel_size_source = float(pixel_size_nm), "user"
        if image is not None:
            # the named micrograph's calibration wins over what the label file says
            own = (inp.pixel_size_nm, inp.pixel_size_source)
            if pixel_size_nm is None:
                inp.pixel_size_nm = None
            _attach_image(inp, Path(image), "image")
            if inp.pixel_size_nm is None:
                inp.pixel_size_nm, inp.pixel_size_source = own
        elif ref is not None and ref.is_file():
            try:
                _attach_image(inp, ref, "referenced image")
            except NanodefectError:
                pass  # the image the labels name is optional: measure without it
    return inputs


def measure_input(inp: MeasureInput, edge_correction: str = "miles-lantuejoul",
                  refine: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Particle table and summary of one input. ``refine="gaussian"`` first refines every
    contour by a 2-D Gaussian fit to the image (STM heights; see :mod:`.refine`); failed
    fits keep their original contour and are counted in ``summary["refine"]``."""
    regions = region_bounds(inp.labels.shape, inp.regions)
    labels = inp.labels
    refined = None
    if refine:
        if refine != "gaussian":
            raise NanodefectError(f"unknown refinement {refine!r} (only 'gaussian')")
        if inp.image is None:
            raise NanodefectError("Gaussian refinement needs the image (heights): give --image", inp.name)
        from .refine import refine_gaussian

        refined = refine_gaussian(inp.image, labels, inp.pixel_size_nm)
        labels = refined.labels
    table = measure_particles(labels, inp.pixel_size_nm, inp.image, class_index=inp.classes or None,
                              classes=None, regions=regions)
    summary = summarize(table, inp.pixel_size_nm, regions, edge_correction=edge_correction)
    summary["pixel_size_source"] = inp.pixel_size_source
    summary["image"] = inp.name
    if refined is not None:
        ok = dict(zip(refined.params["label"].astype(int), refined.params["success"].astype(bool)))
        table["refined"] = [ok.get(int(lab), False) for lab in table["label"]]
        summary["refine"] = {"method": "gaussian", "level": refined.level, "n_fitted": int(refined.n_fitted),
                             "n_failed": int(refined.n_failed), "failed_labels": [int(x) for x in refined.failed_labels],
                             "message": refined.summary()}
    return table, summary


def _pooled(tables: Sequence[pd.DataFrame], inputs: Sequence[MeasureInput], edge_correction: str) -> dict[str, Any]:
    """Summary over several images: regions of all images side by side."""
    regions: list[Region] = []
    parts = []
    ps = {inp.pixel_size_nm for inp in inputs}
    for t, inp in zip(tables, inputs):
        regs = region_bounds(inp.labels.shape, inp.regions)
        t = t.copy()
        t["region"] = np.where(t["region"] >= 0, t["region"] + len(regions), -1)
        regions.extend(regs)
        parts.append(t)
    table = pd.concat(parts, ignore_index=True)
    if len(ps) == 1:
        return summarize(table, next(iter(ps)), regions, edge_correction=edge_correction)
    # different pixel sizes: sizes stay right (in nm), areas are summed in um^2
    out = summarize(table, 1.0, regions, edge_correction=edge_correction)
    total_um2 = 0.0
    for inp in inputs:
        for y0, x0, y1, x1 in region_bounds(inp.labels.shape, inp.regions):
            total_um2 += (y1 - y0) * (x1 - x0) * (inp.pixel_size_nm or np.nan) ** 2 * 1e-6
    out["analysed_area_um2"] = total_um2 if np.isfinite(total_um2) else None
    out["pixel_size_nm"] = None
    out["density_per_um2"] = out["count_estimated"] / total_um2 if out["analysed_area_um2"] else None
    return out


def write_measurements(out_dir: str | os.PathLike, tables: Sequence[pd.DataFrame], summaries: Sequence[dict],
                       inputs: Sequence[MeasureInput], edge_correction: str = "miles-lantuejoul",
                       bins: int | str = "auto") -> dict[str, Any]:
    """Write ``particles.csv``, ``summary.json`` and ``histogram.png`` into ``out_dir``."""
    from ..atomic import atomic_write_json, atomic_write_text
    from .histogram import save_histogram

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(tables) == 1:
        table, summary = tables[0], dict(summaries[0])
    else:
        parts = []
        for t, inp in zip(tables, inputs):
            t = t.copy()
            t.insert(0, "image", inp.name)
            parts.append(t)
        table = pd.concat(parts, ignore_index=True)
        summary = _pooled(tables, inputs, edge_correction)
        summary["per_image"] = list(summaries)
    particles = atomic_write_text(out / "particles.csv", table.to_csv(index=False, float_format="%.6g"))
    summary_json = atomic_write_json(out / "summary.json", summary)
    hist = save_histogram(out / "histogram.png", table if len(tables) == 1 else table.assign(region=0),
                          summary, bins=bins)
    return {"particles": str(particles), "summary_json": str(summary_json), "histogram": hist, "summary": summary,
            "table": table}


def measure_file(path: str | os.PathLike, out_dir: str | os.PathLike, image: str | os.PathLike | None = None,
                 pixel_size_nm: float | None = None, images: str | os.PathLike | None = None,
                 bins: int | str = "auto", edge_correction: str = "miles-lantuejoul",
                 refine: str | None = None) -> dict[str, Any]:
    """Measure every image of ``path`` and write the three outputs; returns their paths and
    the summary (``summary`` key)."""
    inputs = load_measure_inputs(path, image=image, pixel_size_nm=pixel_size_nm, images=images)
    tables, summaries = [], []
    for inp in inputs:
        t, s = measure_input(inp, edge_correction, refine)
        tables.append(t)
        summaries.append(s)
    return write_measurements(out_dir, tables, summaries, inputs, edge_correction, bins)
