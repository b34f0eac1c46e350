"""Writing predictions: label TIFF, LabelMe JSON and particle table (``<stem>_particles.csv``)
per image, one COCO file and one ``summary.csv`` (a row per image) for all images."""

from __future__ import annotations

import contextlib
import gc
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..atomic import atomic_write_text
from ..annotations import AnnotationSet, LabelImage, labels_to_set, write_coco, write_label_tiff, write_labelme
from ..annotations._image import labelme_native, png8_bytes
from ..errors import NanodefectError
from .model import LoadedModel
from .predict import Prediction, predict_image

#: images larger than this are referenced by path only in LabelMe outputs (no imageData)
LABELME_EMBED_MAX_PIXELS = 4096 * 4096


@dataclass
class PredictionFiles:
    image: Path
    labels: Path
    labelme: Path
    count: int
    annotations: AnnotationSet
    prediction: Prediction
    extra: dict = field(default_factory=dict)


def prediction_to_set(pred: Prediction, image_path: str | None = None) -> AnnotationSet:
    """Polygons (pixel-corner coordinates, exact pixel outlines) of every predicted object."""
    m = pred.micrograph
    li = LabelImage(pred.labels, pred.classes, m.pixel_size_nm if m else None, image_path)
    aset = labels_to_set(li)
    aset.image_path = image_path
    return aset


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while output files are built: thousands of
    polygons become millions of small lists (no cycles; reference counting frees them),
    and the collections they trigger scanned the whole heap (torch, the model) again and
    again: 0.2-0.5 s of a 2048² image's 0.9-1.7 s of writing (measured)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def write_prediction(pred: Prediction, image_path: str | os.PathLike, out_dir: str | os.PathLike,
                     stem: str | None = None) -> PredictionFiles:
    """``<stem>_labels.tif`` (instances, same size as the analysed plane), ``<stem>.json``
    (LabelMe polygons with classes; ``imagePath`` relative to the JSON) and
    ``<stem>_particles.csv``; ``stem`` defaults to the image's."""
    with _gc_paused():
        return _write_prediction(pred, image_path, out_dir, stem)


def _write_prediction(pred: Prediction, image_path: str | os.PathLike, out_dir: str | os.PathLike,
                      stem: str | None) -> PredictionFiles:
    image_path = Path(image_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or image_path.stem
    m = pred.micrograph
    ps = m.pixel_size_nm if m else None
    json_path = out_dir / f"{stem}.json"

    embed = "auto" if pred.labels.size <= LABELME_EMBED_MAX_PIXELS else False
    # the embedded PNG of a TIFF/16-bit source does not depend on the prediction: encode
    # it in a third thread from the start (zlib releases the GIL; ~0.2 s for 2048²)
    need_png = embed == "auto" and image_path.is_file() and not labelme_native(image_path)

    def polygons(png_fut):
        labels_path = write_label_tiff(out_dir / f"{stem}_labels.tif", pred.labels, classes=pred.classes, pixel_size_nm=ps,
                                       image_path=os.path.relpath(image_path.resolve(), out_dir.resolve()))
        aset = prediction_to_set(pred, str(image_path.resolve()))
        aset.pixel_size_nm = ps
        aset.extra["nanodefect"] = {"scale": pred.scale, "scale_source": pred.scale_source,
                                    "precision": pred.precision}
        # a base64 copy of a huge image inside the JSON helps nobody: reference it instead
        png = None
        if png_fut is not None:
            try:
                png = png_fut.result()
            except NanodefectError:
                png = None  # write_labelme tries again and reports or falls back as usual
        write_labelme(aset, json_path, embed_image=embed, png=png)
        return labels_path, aset

    # label TIFF + polygons + LabelMe in a second thread beside the measurement: the
    # compression, the PNG of the embedded image and numpy work release the GIL
    with ThreadPoolExecutor(2) as ex:
        png_fut = ex.submit(png8_bytes, image_path) if need_png else None
        fut = ex.submit(polygons, png_fut)
        try:
            particles, summary = measure_prediction(pred, stem)
        finally:
            labels_path, aset = fut.result()
    csv_path = atomic_write_text(out_dir / f"{stem}_particles.csv", particles.to_csv(index=False, float_format="%.6g"))
    return PredictionFiles(image_path, labels_path, json_path, pred.count, aset, pred,
                           extra={"particles_csv": csv_path, "summary": summary, "particles": particles})


def measure_prediction(pred: Prediction, name: str = ""):
    """Particle table and population summary of a prediction (pixel size, intensities and
    info bar from its micrograph)."""
    from ..measure.particles import measure_particles
    from ..measure.population import summarize

    m = pred.micrograph
    ps = m.pixel_size_nm if m else None
    image = None
    regions = None
    if m is not None:
        image = m.heights if m.heights is not None else m.data
        if image is not None and (image.ndim != 2 or image.shape != pred.labels.shape):
            image = None
        vr = m.valid_region
        if vr is not None:
            regions = [(vr.y0, vr.x0, vr.y1, vr.x1)]
    table = measure_particles(pred.labels, ps, image, class_index=pred.classes or None, regions=regions)
    from ..measure.particles import region_bounds

    summary = summarize(table, ps, region_bounds(pred.labels.shape, regions))
    summary["image"] = name
    summary["pixel_size_source"] = m.pixel_size_source if m else None
    return table, summary


#: columns of ``summary.csv`` (one row per image); per-class counts follow as ``count_<class>``
SUMMARY_COLUMNS = ["image", "count", "count_edge_touching", "count_estimated", "density_per_um2", "area_fraction",
                   "analysed_area_um2", "mean_nm", "std_nm", "sem_nm", "d10_nm", "d50_nm", "d90_nm",
                   "lognormal_mu", "lognormal_sigma", "lognormal_ks", "pixel_size_nm", "pixel_size_source"]


def summary_rows(summaries: Iterable[dict]) -> "pd.DataFrame":  # noqa: F821 - pandas imported lazily
    import pandas as pd

    rows = []
    for s in summaries:
        fit = s.get("lognormal") or {}
        row = {k: s.get(k) for k in SUMMARY_COLUMNS}
        row.update(lognormal_mu=fit.get("mu"), lognormal_sigma=fit.get("sigma"), lognormal_ks=fit.get("ks_statistic"))
        for cls, cs in (s.get("per_class") or {}).items():
            row[f"count_{cls}"] = cs.get("count")
            row[f"d50_nm_{cls}"] = cs.get("d50_nm")
        rows.append(row)
    return pd.DataFrame(rows)


def predict_files(
    model: LoadedModel,
    images: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    on_image: Callable[[Path, int, int], Callable[[int, int], None] | None] | None = None,
    coco_name: str = "predictions.coco.json",
    **predict_kwargs,
) -> tuple[list[PredictionFiles], Path]:
    """Predict every image; write per-image files and ``predictions.coco.json``.

    ``on_image(path, index, total)`` may return a tile-progress callback for that image.
    """
    images = [Path(p) for p in images]
    out_dir = Path(out_dir)
    results = []
    for i, path in enumerate(images):
        tile_cb = on_image(path, i, len(images)) if on_image else None
        pred = predict_image(model, path, progress=tile_cb, **predict_kwargs)
        results.append(write_prediction(pred, path, out_dir))
    with _gc_paused():
        coco = write_coco([r.annotations for r in results], out_dir / coco_name,
                          categories=list(model.config.classes), include_lines_points=False)
    table = summary_rows(r.extra["summary"] for r in results)
    atomic_write_text(out_dir / "summary.csv", table.to_csv(index=False, float_format="%.6g"))
    return results, coco
