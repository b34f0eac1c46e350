"""Defect models from and to files: what ``nanodefect train --task defects`` and
``nanodefect predict`` (with a defect model) run, Qt-free.

Training (:func:`train_defect_files`) reads LabelMe/COCO files like the particle
trainer: rectangles labelled ``crop``/``roi`` are the fully annotated regions (no crop:
the whole image); line defects drawn as lines/linestrips are widened to a physical
width (:func:`~napari_nanodefect.core.defects.targets.defect_masks`), polygons are
filled, points/circles become disks. Images of different pixel sizes are resampled to
one training pixel size (the median of the known ones) so the target width and the
defects' apparent size do not depend on magnification.

The default line width follows Boiko et al. (half the particle diameter): the median
equivalent diameter of particles annotated in the same files (objects whose label is not
a defect class), else ``line_width_nm`` / ``line_width_px`` must be given, else 4 px.

Prediction (:func:`predict_defect_files`) writes per image ``<stem>_defects.tif`` (a
``(C, H, W)`` uint8 stack, 255 where the class probability reaches the threshold, with a
JSON description holding the class names, the pixel size and the threshold, so
``nanodefect skeleton`` re-measures it), optionally ``<stem>_defects_prob.tif`` (the
probabilities x255), and ``<stem>_defects.csv`` (one row per defect: class, skeleton
length in nm, branches, junctions, area; point defects one row each), and for the run
``defects_summary.csv`` (per image and class: count, total length, length density, point
density).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..errors import NanodefectError
from .segment import (
    DefectModel,
    defect_statistics,
    load_defect_model,
    predict_defects_scaled,
    save_defect_model,
    threshold_masks,
    thresholds_from_config,
    train_defects,
)
from .targets import DEFAULT_CLASSES, defect_masks

__all__ = ["DefectTrainResult", "DefectPrediction", "train_defect_files", "predict_defect_files",
           "predict_defect_image", "model_task", "defect_classes_in", "write_channel_tiff",
           "LabelledImages", "collect_labelled_images", "train_classifier_files", "predict_classifier_files"]

#: fallback line width (px) when neither a width nor annotated particles are available
FALLBACK_LINE_WIDTH_PX = 4.0


def model_task(folder: str | os.PathLike) -> str:
    """``"particles"``, ``"defects"`` or ``"classify"`` (image classifier) from a model folder's
    config.json; raises :class:`NanodefectError` when there is no readable config."""
    import json

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise NanodefectError("not a model folder: config.json is missing", folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NanodefectError(f"config.json is not valid JSON ({exc})", path) from exc
    if not isinstance(data, dict):
        raise NanodefectError("config.json is not a JSON object", path)
    if data.get("format") == "napari-nanodefect-classifier":
        return "classify"
    return str(data.get("task") or "particles")


def defect_classes_in(sets: Iterable[Any]) -> list[str]:
    """Defect class names found in annotation sets: the labels of lines and points, and
    of polygons whose label is a default defect class; default classes first, in their
    order, then the others by first appearance."""
    seen: list[str] = []
    for aset in sets:
        names = [ln.label for ln in aset.lines] + [p.label for p in aset.points]
        names += [o.label for o in aset.objects if o.label in DEFAULT_CLASSES]
        for n in names:
            if n not in seen:
                seen.append(n)
    return [c for c in DEFAULT_CLASSES if c in seen] + [c for c in seen if c not in DEFAULT_CLASSES]


@dataclass
class DefectTrainResult:
    model: DefectModel
    path: Path | None
    info: dict[str, Any]
    ignored: dict[str, int] = field(default_factory=dict)


def _particle_diameter_px(aset, classes: Sequence[str]) -> float | None:
    from ..annotations import geometry

    areas = [geometry.polygon_area(o.rings[0], o.rings[1:]) for o in aset.objects
             if o.label not in classes and o.rings]
    areas = [a for a in areas if a > 0]
    if not areas:
        return None
    return float(np.median(2 * np.sqrt(np.asarray(areas) / np.pi)))


def train_defect_files(
    sources: Iterable[Any],
    out: str | os.PathLike | None,
    *,
    classes: Sequence[str] | None = None,
    images: str | os.PathLike | None = None,
    line_width_nm: float | None = None,
    line_width_px: float | None = None,
    epochs: int | None = None,
    time_budget_s: float | None = 60,
    device: str = "auto",
    base: str | os.PathLike | None = None,
    arch: str = "Unet",
    encoder: str = "resnet18",
    seed: int = 0,
    patch: int = 128,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DefectTrainResult:
    """Train a defect segmenter on annotated files and save it to ``out`` (if given).

    ``classes`` default to the defect labels found in the files
    (:func:`defect_classes_in`); with ``base`` (a defect model folder) training goes on
    from that model and its classes are used. Images whose pixel size is known are
    resampled to the median known pixel size; when any training image lacks a pixel size
    the model works in image pixels (no rescaling at prediction).
    """
    from ..segment.data import _resize
    from ..segment.model import resolve_device
    from ..segment.train import load_training_images

    items = load_training_images(list(sources), images=images)
    model = None
    if base is not None:
        model = load_defect_model(base, device=device)
        if classes is not None and list(classes) != list(model.classes):
            raise NanodefectError(f"the base model's classes {model.classes} differ from {list(classes)}", base)
        classes = list(model.classes)
    if classes is None:
        classes = defect_classes_in(it.annotations for it in items)
        if not classes:
            raise NanodefectError("no defects annotated (lines, polygons with a defect class, points); "
                                  "give the classes with --classes")
    classes = [str(c) for c in classes]
    sizes = [it.pixel_size_nm for it in items]
    ref_ps = float(np.median(sizes)) if sizes and all(sizes) else None

    # line width: explicit > half the annotated particle diameter > fallback (px of the reference grid)
    width_nm = line_width_nm
    width_px_ref = None
    if width_nm is None and line_width_px is None:
        diams = []
        for it in items:
            d = _particle_diameter_px(it.annotations, classes)
            if d is not None:
                diams.append(d * (it.pixel_size_nm / ref_ps if ref_ps else 1.0))
        width_px_ref = float(np.median(diams)) / 2 if diams else FALLBACK_LINE_WIDTH_PX
    elif width_nm is None:
        width_px_ref = float(line_width_px)
    if width_nm is not None and ref_ps is None:
        raise NanodefectError("a line width in nm needs the pixel size of every training image "
                              "(give --line-width-px instead, or calibrate the images)")

    imgs, masks, annotated = [], [], []
    ignored: dict[str, int] = {}
    for it in items:
        aset, image = it.annotations, np.asarray(it.image)
        if image.ndim == 3 and image.shape[-1] in (3, 4):
            image = image[..., :3].mean(-1)
        if image.ndim != 2:
            raise NanodefectError(f"expected a 2-D grey image, got shape {image.shape}", aset.source)
        f = (it.pixel_size_nm / ref_ps) if ref_ps else 1.0   # reference px per image px
        kw: dict[str, Any] = {}
        if width_nm is not None:
            kw["line_width_nm"] = width_nm
        else:
            kw["line_width_px"] = width_px_ref / f
        dm = defect_masks(aset, classes, shape=image.shape, pixel_size_nm=it.pixel_size_nm, **kw)
        for k, v in dm.ignored.items():
            ignored[k] = ignored.get(k, 0) + v
        if aset.crops:
            ann = np.zeros(image.shape, bool)
            for c in aset.crops:
                ann[c.pixel_slices()] = True
        else:
            ann = np.ones(image.shape, bool)
        m = dm.masks
        if abs(f - 1.0) > 0.02:
            shape = (max(8, round(image.shape[0] * f)), max(8, round(image.shape[1] * f)))
            image = _resize(image.astype(np.float32), shape, "bilinear")
            m = np.stack([_resize(c.astype(np.float32), shape, "bilinear") >= 0.5 for c in m])
            ann = _resize(ann.astype(np.float32), shape, "nearest") >= 0.5
        imgs.append(image)
        masks.append(m)
        annotated.append(ann)
    if not any(m.any() for m in masks):
        raise NanodefectError(f"no pixel of the classes {classes} is annotated inside the crops")
    if model is None:
        from .segment import build_defect_model

        model = build_defect_model(classes, arch=arch, encoder=encoder, device=resolve_device(device))
    line_px = width_px_ref if width_nm is None else width_nm / ref_ps
    model, info = train_defects(imgs, masks, classes, annotated=annotated, epochs=epochs, time_budget_s=time_budget_s,
                                patch=patch, seed=seed, progress=progress, should_stop=should_stop, model=model,
                                pixel_size_nm=ref_ps, line_width_px=line_px)
    info["n_images"] = len(items)
    info["annotated_px"] = int(sum(int(a.sum()) for a in annotated))
    if ignored:
        info["ignored_labels"] = ignored
    path = save_defect_model(model, out) if out is not None else None
    return DefectTrainResult(model, path, info, ignored)


@dataclass
class DefectPrediction:
    image: Path
    probabilities: np.ndarray
    table: Any
    summary: dict[str, Any]
    pixel_size_nm: float | None
    scale: float
    tiff: Path | None = None
    csv: Path | None = None


def predict_defect_image(model: DefectModel, image: str | os.PathLike | Any, *, pixel_size_nm: float | None = None,
                         threshold: float | None = None, low_threshold: float | None = None,
                         prune_nm: float | None = None, progress=None, **kwargs) -> DefectPrediction:
    """Read (if a path) and segment one micrograph; measure the defects inside its valid
    region (the info bar excluded). ``threshold`` / ``low_threshold`` (hysteresis)
    default to the values stored in the model (:func:`.segment.calibrate_thresholds`),
    else 0.5 and none."""
    from ..io import read_image
    from ..micrograph import Micrograph

    m = image if isinstance(image, Micrograph) else read_image(image, detect_scale_bar=False)
    ps = pixel_size_nm or m.pixel_size_nm
    data = np.asarray(m.data)
    prob, scale = predict_defects_scaled(model, data, ps, progress=progress, **kwargs)
    vr = m.valid_region
    if vr is not None and (vr.y0, vr.x0, vr.y1, vr.x1) != (0, 0, data.shape[0], data.shape[1]):
        prob[:, :vr.y0] = 0
        prob[:, vr.y1:] = 0
        prob[:, :, :vr.x0] = 0
        prob[:, :, vr.x1:] = 0
        area = float((vr.y1 - vr.y0) * (vr.x1 - vr.x0))
    else:
        area = None
    high, lows = thresholds_from_config(model.config, model.classes)
    if threshold is not None:
        high = float(threshold)
    if low_threshold is not None:
        lows = [float(low_threshold)] * len(model.classes)
    table, summary = defect_statistics(prob, model.classes, ps or 1.0, threshold=high, prune_nm=prune_nm,
                                       valid_area_px=area, low_threshold=lows)
    summary["pixel_size_nm"] = ps
    summary["length_unit"] = "nm" if ps else "px"
    summary["scale"] = scale
    low = model.autocast_dtype()
    summary["precision"] = "float32" if low is None else str(low).removeprefix("torch.")
    return DefectPrediction(Path(getattr(m, "path", None) or "image"), prob, table, summary, ps, scale)


def _summary_rows(results: Sequence[DefectPrediction], classes: Sequence[str]):
    import pandas as pd

    rows = []
    for r in results:
        per = r.summary.get("per_class", {})
        for c in classes:
            d = per.get(c, {})
            rows.append({
                "image": r.image.name, "class": c,
                "n_defects": d.get("n_defects", d.get("n_skeletons")),
                "total_length_nm": d.get("total_length_nm"),
                "length_density_nm_per_um2": d.get("length_density_nm_per_um2"),
                "density_per_um2": d.get("density_per_um2"),
                "pixel_size_nm": r.pixel_size_nm, "threshold": r.summary.get("threshold"),
            })
    return pd.DataFrame(rows)


def write_channel_tiff(path: str | os.PathLike, stack: np.ndarray, description: dict[str, Any],
                       pixel_size_nm: float | None = None) -> Path:
    """Write a ``(C, H, W)`` stack atomically with a JSON ImageDescription (class names
    etc.) and, when known, the pixel size as resolution (pixels per nm)."""
    import json

    import tifffile

    from ..atomic import atomic_write_with

    # tifffile's shaped JSON description keeps the (C, H, W) shape, the axes and these entries
    meta = json.loads(json.dumps(description))
    meta["axes"] = "CYX"
    kw: dict[str, Any] = {"compression": "zlib", "metadata": meta}
    if pixel_size_nm:
        kw.update(resolution=(1.0 / pixel_size_nm, 1.0 / pixel_size_nm), resolutionunit="NONE")
    return atomic_write_with(path, lambda tmp: tifffile.imwrite(tmp, np.ascontiguousarray(stack), **kw))


def predict_defect_files(
    model: DefectModel | str | os.PathLike,
    images: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    pixel_size_nm: float | None = None,
    threshold: float | None = None,
    low_threshold: float | None = None,
    prune_nm: float | None = None,
    device: str = "auto",
    precision: str | None = None,
    probabilities: bool = False,
    on_image: Callable[[Path, int, int], Callable[[int, int], None] | None] | None = None,
    **kwargs,
) -> tuple[list[DefectPrediction], Path]:
    """Segment defects in every image; write ``<stem>_defects.tif``, ``<stem>_defects.csv``
    per image and ``defects_summary.csv`` for all (see the module docstring).
    ``precision`` ("auto"/"fp32", :func:`.segment.load_defect_model`) applies when
    ``model`` is a folder; the TIFF descriptions record the arithmetic the network ran in.
    Returns the per-image results (without the probability stacks, to keep memory flat)
    and the summary path."""
    if not isinstance(model, DefectModel):
        model = load_defect_model(model, device=device, precision=precision)
    images = [Path(p) for p in images]
    if not images:
        raise NanodefectError("no images given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, path in enumerate(images):
        cb = on_image(path, i, len(images)) if on_image else None
        r = predict_defect_image(model, path, pixel_size_nm=pixel_size_nm, threshold=threshold,
                                 low_threshold=low_threshold, prune_nm=prune_nm, progress=cb, **kwargs)
        r.image = path
        desc = {"classes": list(model.classes), "pixel_size_nm": r.pixel_size_nm,
                "threshold": r.summary["threshold"], "low_threshold": r.summary["low_threshold"],
                "model_pixel_size_nm": model.config.get("pixel_size_nm"), "scale": r.scale,
                "precision": r.summary["precision"]}
        masks = np.where(threshold_masks(r.probabilities, r.summary["threshold"], r.summary["low_threshold"]),
                         np.uint8(255), np.uint8(0))
        r.tiff = write_channel_tiff(out_dir / f"{path.stem}_defects.tif", masks, {**desc, "content": "masks"},
                                    r.pixel_size_nm)
        if probabilities:
            write_channel_tiff(out_dir / f"{path.stem}_defects_prob.tif", r.probabilities,
                               {**desc, "content": "probability x255"}, r.pixel_size_nm)
        table = r.table.copy()
        table.insert(0, "image", path.name)
        r.csv = atomic_write_text(out_dir / f"{path.stem}_defects.csv", table.to_csv(index=False, float_format="%.6g"))
        r.probabilities = np.empty((0,), np.uint8)
        results.append(r)
    summary = atomic_write_text(out_dir / "defects_summary.csv",
                                _summary_rows(results, model.classes).to_csv(index=False, float_format="%.6g"))
    return results, summary


# ----------------------------------------------------------------------------- image classifier


@dataclass
class LabelledImages:
    """Images with an image-level class: ``paths[i]`` has class ``classes[targets[i]]``;
    ``skipped`` lists files that were not images (with why)."""

    paths: list[Path]
    targets: list[int]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _image_files(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Image files directly in ``folder``; text files (STM height maps share ``.txt``
    with notes) count only when they read as an image, else they go to ``skipped``."""
    from ..io import STM_SUFFIXES, SUPPORTED_SUFFIXES, read_image

    sfx = set(SUPPORTED_SUFFIXES)
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if not (p.suffix.lower() in sfx or p.name.lower().endswith((".ome.tif", ".ome.tiff"))):
            continue
        if p.suffix.lower() in STM_SUFFIXES:
            try:
                read_image(p, detect_info_bar=False, detect_scale_bar=False)
            except NanodefectError as exc:
                skipped.append((p, str(exc)))
                continue
        out.append(p)
    return out


def collect_labelled_images(sources: Iterable[str | os.PathLike], classes: Sequence[str] | None = None) -> LabelledImages:
    """Images with image-level classes, from any mix of:

    * a folder whose sub-folders are the classes (``ordered/``, ``disordered/``; the
      images directly inside each);
    * a CSV file with columns ``image`` and ``class`` (paths relative to the CSV);
    * LabelMe JSON files whose ``flags`` mark the class (``{"ordered": true}``; exactly
      one true flag), the image found through ``imagePath``.

    ``classes`` fixes the class order (class 1 is the one mapped by the probability map);
    by default they are sorted by name.
    """
    import csv

    pairs: list[tuple[Path, str]] = []
    skipped: list[tuple[Path, str]] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            subs = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
            if not subs:
                raise NanodefectError("a class folder needs one sub-folder per class (e.g. ordered/, disordered/)", src)
            for d in subs:
                files = _image_files(d, skipped)
                if not files:
                    raise NanodefectError(f"the class folder {d.name!r} holds no images", d)
                pairs += [(f, d.name) for f in files]
        elif src.suffix.lower() == ".csv":
            try:
                with src.open(newline="", encoding="utf-8-sig") as fh:
                    rows = list(csv.DictReader(fh))
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise NanodefectError(f"cannot read the tag table ({exc})", src) from exc
            if not rows or not {"image", "class"} <= set(rows[0]):
                raise NanodefectError("a tag table needs the columns 'image' and 'class'", src)
            for r in rows:
                if not (r.get("image") or "").strip() or not (r.get("class") or "").strip():
                    raise NanodefectError(f"empty image or class in row {r}", src)
                pairs.append(((src.parent / r["image"].strip()), r["class"].strip()))
        elif src.suffix.lower() == ".json":
            from ..annotations.labelme import read_labelme

            aset = read_labelme(src)
            tags = [t for t in aset.tags if classes is None or t in classes]
            if len(tags) != 1:
                raise NanodefectError(f"expected exactly one true image flag naming the class, found {tags}", src)
            img = aset.resolve_image_path()
            if img is None:
                raise NanodefectError("the LabelMe file has no imagePath", src)
            pairs.append((img, tags[0]))
        else:
            raise NanodefectError("give class folders, a CSV tag table (image,class) or LabelMe files with flags", src)
    if not pairs:
        raise NanodefectError("no labelled images given")
    for p, _ in pairs:
        if not p.is_file():
            raise NanodefectError("image not found", p)
    found = sorted({c for _, c in pairs})
    if classes is None:
        classes = found
    classes = [str(c) for c in classes]
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise NanodefectError(f"images are tagged with classes {unknown} outside {classes}")
    if len(set(c for _, c in pairs)) < 2:
        raise NanodefectError(f"need images of at least two classes, got only {found}")
    return LabelledImages([p for p, _ in pairs], [classes.index(c) for _, c in pairs], classes, skipped)


def _analysed(path: Path) -> tuple[np.ndarray, float | None]:
    from ..io import read_image

    m = read_image(path, detect_scale_bar=False)
    data = np.asarray(m.data)
    if m.valid_region is not None:
        data = data[m.valid_region.slices]
    return data, m.pixel_size_nm


def train_classifier_files(
    sources: Iterable[str | os.PathLike],
    out: str | os.PathLike | None,
    *,
    classes: Sequence[str] | None = None,
    epochs: int | None = None,
    time_budget_s: float | None = 60,
    patch: int = 128,
    seed: int = 0,
    encoder: str = "resnet10t",
    progress: Callable[[dict], object] | None = None,
):
    """Train the image/patch classifier (:mod:`.classify`) on labelled images
    (:func:`collect_labelled_images`), the info bar cut off; save to ``out``.
    Returns ``(classifier, history, path)``."""
    from .classify import save_classifier, train_classifier

    li = collect_labelled_images(sources, classes)
    images, sizes = [], []
    for p in li.paths:
        im, ps = _analysed(p)
        images.append(im)
        sizes.append(ps)
    clf, hist = train_classifier(images, li.targets, li.classes, epochs=epochs, time_budget_s=time_budget_s,
                                 patch=patch, seed=seed, progress=progress, encoder=encoder)
    known = [s for s in sizes if s]
    clf.config["pixel_size_nm"] = float(np.median(known)) if known else None
    clf.config["trained"].update(n_per_class={c: int(np.sum(np.asarray(li.targets) == i))
                                              for i, c in enumerate(li.classes)})
    path = save_classifier(clf, out) if out is not None else None
    return clf, hist, path


def predict_classifier_files(model, images: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                             maps: bool = True, device: str = "cpu") -> tuple[Any, Path]:
    """Classify every image: ``classification.csv`` (image, one probability column per
    class, predicted class) and, with ``maps``, ``<stem>_<class 1>_map.tif`` — the
    probability of the second class (e.g. ``ordered``) per patch position, stretched to
    the image grid (float32). Returns ``(table, csv path)``."""
    import pandas as pd

    from .classify import OrderClassifier, load_classifier

    clf = model if isinstance(model, OrderClassifier) else load_classifier(model, device=device)
    images = [Path(p) for p in images]
    if not images:
        raise NanodefectError("no images given")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    k = 1 if len(clf.classes) > 1 else 0
    for path in images:
        im, ps = _analysed(path)
        p = clf.predict_proba(im)
        row = {"image": path.name, **{f"p_{c}": float(v) for c, v in zip(clf.classes, p)},
               "predicted": clf.classes[int(np.argmax(p))]}
        if maps:
            pm = clf.probability_map(im)
            stride = max(1, clf.patch // 2)
            # each patch's value on its centre cell of the stride grid: upsample by the stride
            full = np.kron(pm, np.ones((stride, stride), np.float32))
            top = (clf.patch - stride) // 2
            grid = np.full(im.shape, np.nan, np.float32)
            h, w = min(full.shape[0], im.shape[0] - top), min(full.shape[1], im.shape[1] - top)
            if h > 0 and w > 0:
                grid[top:top + h, top:top + w] = full[:h, :w]
            write_channel_tiff(out_dir / f"{path.stem}_{clf.classes[k]}_map.tif", grid[None],
                               {"classes": [clf.classes[k]], "content": f"P({clf.classes[k]}) per patch",
                                "patch_px": clf.patch, "stride_px": stride}, ps)
        rows.append(row)
    table = pd.DataFrame(rows)
    csv = atomic_write_text(out_dir / "classification.csv", table.to_csv(index=False, float_format="%.6g"))
    return table, csv
