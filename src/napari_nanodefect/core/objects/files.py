"""``nanodefect classify``: per-object classifiers from and onto files (Qt-free).

Training objects come from any mix of

* annotation files (LabelMe JSON, a LabelMe folder, COCO JSON): every polygon/ellipse is
  an object and its label is its class; the image is found through ``imagePath`` (or
  ``images``); ``crop``/``roi`` rectangles are not objects;
* instance label TIFFs whose classes are stored in them (``nanodefect predict`` or
  ``convert --to labels`` output, classes edited by hand or by the napari dock) with the
  image they name;
* patch folders, one image per object (Groschner et al.'s region patches): the class is the
  sub-folder (``fault/``, ``no_fault/``), or, for a folder without sub-folders, the file
  name without its trailing number (``SF1_3.tif`` -> ``SF1``).

Objects from label images give a crop *and* a mask (the shape features of the random
forest); patches give only a crop. Every crop is :func:`~.features.object_crops`'
square around the object (or the resized patch), scaled by its image's robust range.

:func:`classify_inputs` applies a trained classifier to the objects of label images and
returns the particle table (sizes in nm, :mod:`..measure.particles`) with the class, its
probability and one ``p_<class>`` column per class; :func:`classify_files` writes it with
the relabelled label TIFF and a per-class summary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NanodefectError
from .classifier import ObjectClassifier, load_object_classifier
from .features import object_crops

__all__ = ["LabelledObjects", "collect_labelled_objects", "patch_class", "train_from_objects", "format_cv", "classify_objects", "classify_inputs",
           "classify_files", "classify_patches"]

_NUMBER_SUFFIX = re.compile(r"[_\-\s.]*\(?\d+\)?$")


def patch_class(path: str | os.PathLike) -> str:
    """Class of a patch from its file name: the stem without its trailing number
    (``SF1_3.tif`` -> ``SF1``, ``bulk-12.png`` -> ``bulk``, ``twin (2).tif`` -> ``twin``)."""
    stem = Path(path).name.split(".")[0]
    name = _NUMBER_SUFFIX.sub("", stem)
    return name or stem


@dataclass
class LabelledObjects:
    """Crops of labelled objects: ``crops[i]`` has class ``classes[targets[i]]``; ``masks``
    is None when any object came from a patch; ``groups[i]`` names its source image
    (grouped cross-validation keeps one image's objects in one fold); ``names[i]`` is
    ``"<image>#<label>"`` or the patch file."""

    crops: np.ndarray
    masks: np.ndarray | None
    targets: np.ndarray
    classes: list[str]
    groups: list[str]
    names: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {c: int((self.targets == i).sum()) for i, c in enumerate(self.classes)}


def _grey_data(m) -> np.ndarray:
    data = np.asarray(m.heights if m.heights is not None else m.data)
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        data = data[..., :3].mean(axis=-1)
    if data.ndim != 2:
        raise NanodefectError(f"expected a 2-D image, got shape {data.shape}", m.path if hasattr(m, "path") else None)
    return data.astype(np.float32)


def _patch_data(path: Path) -> np.ndarray:
    """A patch scaled by its dtype's range (8-bit / 255, 16-bit / 65535; floats as they
    are): patches of one acquisition keep their absolute intensities, which Groschner's
    real-space mean and std features rely on (per-patch stretching lost 0.15 balanced
    accuracy on the CdTe patches)."""
    from ..io import read_image

    m = read_image(path, detect_info_bar=False, detect_scale_bar=False)
    raw = np.asarray(m.heights if m.heights is not None else m.data)
    a = _grey_data(m).astype(np.float64)
    if np.issubdtype(raw.dtype, np.integer):
        a = a / float(np.iinfo(raw.dtype).max)
    return a


def _resized(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape == (size, size):
        return a.astype(np.float32)
    from scipy import ndimage as ndi

    out = ndi.zoom(a, (size / a.shape[0], size / a.shape[1]), order=1, mode="reflect", grid_mode=True)
    return out[:size, :size].astype(np.float32)


def _patch_crop(path: Path, size: int) -> np.ndarray:
    return _resized(_patch_data(path), size)


def _patch_sources(folder: Path, skipped: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    from ..defects.files import _image_files

    subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subs:
        out = []
        for d in subs:
            files = _image_files(d, skipped)
            if not files:
                raise NanodefectError(f"the class folder {d.name!r} holds no images", d)
            out += [(f, d.name) for f in files]
        return out
    files = _image_files(folder, skipped)
    if not files:
        raise NanodefectError("the folder holds neither class sub-folders nor images", folder)
    return [(f, patch_class(f)) for f in files]


def _label_objects(path: Path, images: str | os.PathLike | None, image: str | os.PathLike | None):
    """(name, image array, labels, {label: class}) for each image of an annotation/label file."""
    from ..measure.files import load_measure_inputs

    out = []
    for inp in load_measure_inputs(path, image=image, images=images):
        if inp.image is None:
            raise NanodefectError("the image of these objects was not found (give it with --image, or keep it "
                                  "where the annotation's imagePath points)", path)
        out.append((inp.name, inp.image, inp.labels, inp.classes))
    return out


def collect_labelled_objects(
    sources: Iterable[str | os.PathLike],
    *,
    classes: Sequence[str] | None = None,
    size: int | None = None,
    pad: float = 1.25,
    images: str | os.PathLike | None = None,
    image: str | os.PathLike | None = None,
    default_class: str | None = None,
) -> LabelledObjects:
    """Crops (and masks) of every labelled object in ``sources`` (see the module
    docstring). ``classes`` fixes the class order and drops objects of other classes
    (default: every class found, sorted by name). ``image`` is the micrograph of a single
    label TIFF or annotation; ``images`` the folder of a COCO file's images. Objects whose
    class is ``default_class`` (e.g. the ``particle`` of unclassified predictions) are left
    out when given. ``size``: crop side in px; by default 48 (Zelenka et al.), or the
    patches' own side when every source is a folder of square patches of one size."""
    from ..annotations.labels import DEFAULT_LABEL

    crops, masks, cls, groups, names = [], [], [], [], []
    skipped: list[tuple[Path, str]] = []
    any_patch = False
    sources = [Path(s) for s in sources]
    if not sources:
        raise NanodefectError("give annotation files, label TIFFs or patch folders")
    for src in sources:
        if not src.exists():
            raise NanodefectError("no such file or folder", src)
        is_labelme_folder = src.is_dir() and any(src.glob("*.json"))
        if src.is_dir() and not is_labelme_folder:
            for f, c in _patch_sources(src, skipped):
                crops.append(_patch_data(f))
                masks.append(None)
                cls.append(c)
                groups.append(f.parent.name + "/" + f.name)
                names.append(str(f))
            any_patch = True
            continue
        for name, img, lab, cmap in _label_objects(src, images, image):
            ids = np.unique(lab[lab > 0])
            if ids.size == 0:
                continue
            c, m, ids = object_crops(img, lab, ids, size=size or 48, pad=pad)
            crops.append(c)
            masks.append(m)
            cls += [str(cmap.get(int(i), DEFAULT_LABEL)) for i in ids]
            groups += [name] * len(ids)
            names += [f"{name}#{int(i)}" for i in ids]
    if not cls:
        raise NanodefectError("no labelled objects found")
    patch_shapes = {c.shape for c in crops if c.ndim == 2}
    if size is None:
        only = next(iter(patch_shapes)) if len(patch_shapes) == 1 and all(c.ndim == 2 for c in crops) else None
        size = only[0] if only is not None and only[0] == only[1] else 48
    crops = [_resized(c, size)[None] if c.ndim == 2 else c for c in crops]
    all_crops = np.concatenate(crops)
    all_masks = None if any_patch else np.concatenate(masks)
    keep = np.ones(len(cls), bool)
    if default_class is not None:
        keep &= np.array([c != default_class for c in cls])
    found = sorted({c for c, k in zip(cls, keep) if k})
    if classes is None:
        classes = found
    classes = [str(c) for c in classes]
    keep &= np.array([c in classes for c in cls])
    if not keep.any():
        raise NanodefectError(f"no objects of the classes {classes} (found {found})")
    present = sorted({c for c, k in zip(cls, keep) if k})
    if len(present) < 2:
        raise NanodefectError(f"need objects of at least two classes, got only {present}")
    idx = np.flatnonzero(keep)
    return LabelledObjects(all_crops[idx], None if all_masks is None else all_masks[idx],
                           np.array([classes.index(cls[i]) for i in idx], np.int64), classes,
                           [groups[i] for i in idx], [names[i] for i in idx], skipped)


def train_from_objects(
    objects: LabelledObjects,
    *,
    engine: str = "rf",
    cv: int = 5,
    grouped: bool = False,
    pad: float = 1.25,
    seed: int = 0,
    **kwargs,
) -> tuple[ObjectClassifier, dict[str, Any] | None]:
    """Cross-validate (``cv`` folds; 0 skips it; ``grouped`` keeps each image's objects in
    one fold) and then train on all ``objects``. Returns ``(classifier, cv result)``; the
    classifier's config records the crop ``pad``, the cross-validated balanced accuracy
    and where the objects came from."""
    from .classifier import cross_validate, train_object_classifier

    res = None
    if cv and cv >= 2:
        res = cross_validate(objects.crops, objects.targets, objects.classes, k=cv, seed=seed, engine=engine,
                             masks=objects.masks, groups=objects.groups if grouped else None, **kwargs)
    model = train_object_classifier(objects.crops, objects.targets, objects.classes, engine=engine,
                                    masks=objects.masks, seed=seed, **kwargs)
    model.config["pad"] = float(pad)
    model.config["source"] = "patches" if objects.masks is None else "objects"
    if res is not None:
        model.config["cross_validation"] = {
            "k": res["k"], "grouped": bool(grouped), "balanced_accuracy": res["balanced_accuracy"],
            "std": res["std"], "pooled_balanced_accuracy": res["pooled_balanced_accuracy"],
            "confusion": res["confusion"].tolist()}
    return model, res


def format_cv(res: dict[str, Any]) -> str:
    """A few lines of text: balanced accuracy per fold and the confusion matrix."""
    classes = res["classes"]
    w = max(8, *(len(c) for c in classes))
    lines = [f"{res['k']}-fold cross-validated balanced accuracy {res['balanced_accuracy']:.3f} "
             f"\u00b1 {res['std']:.3f} (pooled {res['pooled_balanced_accuracy']:.3f})",
             "confusion (rows: truth, columns: predicted)",
             " " * w + "  " + "  ".join(f"{c:>{w}}" for c in classes)]
    for c, row in zip(classes, res["confusion"]):
        lines.append(f"{c:>{w}}  " + "  ".join(f"{int(v):>{w}}" for v in row))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- apply


def _model(model) -> ObjectClassifier:
    return model if isinstance(model, ObjectClassifier) else load_object_classifier(model)


def classify_objects(model, image: np.ndarray, labels: np.ndarray,
                     ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, C)`` of the objects ``ids`` (default: all) of a label
    image, and the ids. Crops are cut as at training time (the model's crop size)."""
    clf = _model(model)
    lab = np.asarray(labels)
    if ids is None:
        ids = np.unique(lab[lab > 0])
    ids = np.asarray(ids, np.int64)
    if ids.size == 0:
        return np.zeros((0, len(clf.classes))), ids
    crops, masks, ids = object_crops(image, lab, ids, size=int(clf.config.get("crop_size", 48)),
                                     pad=float(clf.config.get("pad", 1.25)))
    return clf.predict_proba(crops, masks), ids


def classify_inputs(model, inputs, edge_correction: str = "miles-lantuejoul"):
    """Classify the objects of :class:`~..measure.files.MeasureInput` s. Returns a list of
    ``(table, summary, classes)``: the particle table with ``class`` (predicted),
    ``class_probability``, ``p_<class>`` columns (and ``class_before``, the class the
    input gave), the population summary with ``per_class``, and ``{label: class}``."""
    from ..measure.files import measure_input

    clf = _model(model)
    results = []
    for inp in inputs:
        if inp.image is None:
            raise NanodefectError("classifying objects needs the image (give --image)", inp.name)
        proba, ids = classify_objects(clf, inp.image, inp.labels)
        pred = {int(i): clf.classes[int(k)] for i, k in zip(ids, np.argmax(proba, 1))} if len(ids) else {}
        before = dict(inp.classes)
        inp.classes = pred
        table, summary = measure_input(inp, edge_correction=edge_correction)
        row = {int(i): r for r, i in enumerate(ids)}
        lab = table["label"].astype(int).to_numpy()
        table.insert(2, "class_probability", [float(proba[row[i]].max()) if i in row else np.nan for i in lab])
        for j, c in enumerate(clf.classes):
            table[f"p_{c}"] = [float(proba[row[i], j]) if i in row else np.nan for i in lab]
        table["class_before"] = [before.get(int(i), "particle") for i in lab]
        results.append((table, summary, pred))
    return results


def classify_files(
    model,
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    image: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    pixel_size_nm: float | None = None,
    edge_correction: str = "miles-lantuejoul",
) -> dict[str, Any]:
    """Classify the objects of label TIFFs / annotations and write, per image,
    ``<name>_classes.csv`` (particle table with classes and probabilities) and
    ``<name>_labels.tif`` (the labels with the new classes, for ``nanodefect measure`` and
    napari), plus ``classes_summary.csv`` (image, class, count, d50/mean and std of the ECD in nm,
    density) and ``histogram.png`` (sizes per class, all images). Returns the paths and
    per-image summaries."""
    import pandas as pd

    from ..annotations import write_label_tiff
    from ..atomic import atomic_write_text
    from ..measure.files import load_measure_inputs
    from ..measure.histogram import save_histogram

    clf = _model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = []
    for s in sources:
        inputs += load_measure_inputs(s, image=image, pixel_size_nm=pixel_size_nm, images=images)
    names = [inp.name for inp in inputs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise NanodefectError(f"several inputs are named {sorted(dup)}: their outputs would overwrite each other")
    results = classify_inputs(clf, inputs, edge_correction)
    rows, tables, files = [], [], {}
    for inp, (table, summary, pred) in zip(inputs, results):
        csv = out / f"{inp.name}_classes.csv"
        atomic_write_text(csv, table.to_csv(index=False))
        tif = write_label_tiff(out / f"{inp.name}_labels.tif", inp.labels, pred, inp.pixel_size_nm, inp.image_path)
        files[inp.name] = {"csv": csv, "labels": tif}
        t = table.copy()
        t.insert(0, "image", inp.name)
        tables.append(t)
        for c in clf.classes:
            pc = summary.get("per_class", {}).get(c, {})
            rows.append({"image": inp.name, "class": c, "count": int((table["class"] == c).sum()),
                         "d50_nm": pc.get("d50_nm"), "mean_nm": pc.get("mean_nm"), "std_nm": pc.get("std_nm"),
                         "density_per_um2": pc.get("density_per_um2")})
    summ = pd.DataFrame(rows)
    spath = out / "classes_summary.csv"
    atomic_write_text(spath, summ.to_csv(index=False))
    hist = None
    if tables:
        from ..measure.files import _pooled

        raw = [r[0] for r in results]
        psum = _pooled(raw, inputs, edge_correction) if len(raw) > 1 else results[0][1]
        pooled = pd.concat(raw, ignore_index=True)
        if psum.get("per_class") is not None and len(pooled):
            hist = save_histogram(out / "histogram.png", pooled, psum,
                                  title="sizes per class" + (f" ({len(raw)} images)" if len(raw) > 1 else ""))
    return {"files": files, "summary_csv": spath, "histogram": hist, "summary": summ,
            "summaries": [r[1] for r in results], "classes": clf.classes}


def classify_patches(model, sources: Sequence[str | os.PathLike]) -> "Any":
    """Classify patch images (one object each; folders or files): a table with ``patch``,
    ``class``, ``class_probability`` and ``p_<class>``."""
    import pandas as pd

    from ..defects.files import _image_files

    clf = _model(model)
    if clf.config.get("with_shape"):
        raise NanodefectError("this classifier uses object shapes, which patches do not have: apply it to label "
                              "images")
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for s in map(Path, sources):
        if s.is_dir():
            subs = sorted(d for d in s.iterdir() if d.is_dir() and not d.name.startswith("."))
            for d in subs or [s]:
                files += _image_files(d, skipped)
        elif s.is_file():
            files.append(s)
        else:
            raise NanodefectError("no such file or folder", s)
    if not files:
        raise NanodefectError("no patch images given")
    size = int(clf.config.get("crop_size", 48))
    crops = np.stack([_patch_crop(f, size) for f in files])
    p = clf.predict_proba(crops)
    t = pd.DataFrame({"patch": [str(f) for f in files], "class": [clf.classes[k] for k in np.argmax(p, 1)],
                      "class_probability": p.max(1)})
    for j, c in enumerate(clf.classes):
        t[f"p_{c}"] = p[:, j]
    return t
