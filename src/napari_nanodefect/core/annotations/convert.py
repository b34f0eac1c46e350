"""Convert between LabelMe, COCO and label-image annotations (``nanodefect convert``).

Sources (detected from the path):

* a LabelMe ``.json`` file (has ``shapes``) or a folder of them;
* a COCO ``.json`` file (has ``images`` and ``annotations``), several images per file;
* a label TIFF (``.tif``/``.tiff``, 2-D integer, 0 = background) or a folder of
  ``*_labels.tif`` files. A folder holding both LabelMe JSON and label TIFFs is read as
  LabelMe.

Targets (``to``):

* ``"coco"``: one JSON file ``out`` (a folder gives ``out/annotations.json``);
  ``file_name`` is relative to ``images`` when given, else to the COCO file's folder;
* ``"labelme"``: one ``<image stem>.json`` per image in the folder ``out``, ``imagePath``
  relative to it, ``imageData`` embedded by the ``embed_image="auto"`` rule of
  :mod:`.labelme`;
* ``"labels"``: one ``<image stem>_labels.tif`` per image in the folder ``out`` (objects
  only: lines, points and crops are not represented in label images).

Every problem is raised as :class:`NanodefectError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import NanodefectError
from .coco import is_coco_dict, read_coco, write_coco
from .labelme import _load_json, is_labelme_dict, read_labelme, read_labelme_folder, write_labelme
from .labels import LABELS_SUFFIX, labels_to_set, read_label_tiff, set_to_labels, write_label_tiff
from .model import AnnotationSet

TARGETS = ("coco", "labelme", "labels")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".dm3", ".dm4", ".emd", ".ser", ".mrc", ".sxm")


def _label_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.stem.endswith(LABELS_SUFFIX))


def _guess_image(label_path: Path, images: Path | None) -> Path | None:
    stem = label_path.stem[: -len(LABELS_SUFFIX)] if label_path.stem.endswith(LABELS_SUFFIX) else label_path.stem
    for folder in ([images] if images is not None else []) + [label_path.parent]:
        for suf in IMAGE_SUFFIXES:
            for cand in (folder / f"{stem}{suf}", folder / f"{stem}{suf.upper()}"):
                if cand.is_file() and cand.resolve() != label_path.resolve():
                    return cand
    return None


def read_labels_file(path: str | os.PathLike, images: str | os.PathLike | None = None) -> AnnotationSet:
    """Annotation set (objects) of one label TIFF; refuses label images without objects."""
    path = Path(path)
    li = read_label_tiff(path)
    if not li.labels.any():
        raise NanodefectError("the label image is empty (all pixels are 0): no objects to convert", path)
    try:
        aset = labels_to_set(li)
    except ValueError as e:
        raise NanodefectError(str(e), path) from None
    aset.source = path
    if aset.image_path is None:
        img = _guess_image(path, None if images is None else Path(images))
        if img is not None:
            aset.image_path = os.path.relpath(img.resolve(), path.resolve().parent)
        else:
            stem = path.stem[: -len(LABELS_SUFFIX)] if path.stem.endswith(LABELS_SUFFIX) else path.stem
            aset.image_path = f"{stem}.png"  # best guess, the image was not found
    return aset


def load_annotations(src: str | os.PathLike, images: str | os.PathLike | None = None) -> list[AnnotationSet]:
    """Read any supported source (see the module docstring) into annotation sets."""
    src = Path(src)
    if not src.exists():
        raise NanodefectError("not found", src)
    if src.is_dir():
        sets = read_labelme_folder(src, allow_empty=True)
        if sets:
            return sets
        files = _label_files(src)
        if not files:
            raise NanodefectError("no LabelMe *.json or *_labels.tif files in the folder", src)
        return [read_labels_file(f, images) for f in files]
    suffix = src.suffix.lower()
    if suffix == ".json":
        data = _load_json(src)
        if is_labelme_dict(data):
            return [read_labelme(src, data)]
        if is_coco_dict(data) or (isinstance(data, list) and data and all(isinstance(a, dict) and "image_id" in a
                                                                          for a in data)):
            return read_coco(src, images=images, data=data)
        keys = ", ".join(sorted(map(str, data))[:8]) if isinstance(data, dict) else type(data).__name__
        raise NanodefectError(f"neither LabelMe (no 'shapes') nor COCO (no 'images'/'annotations') JSON; found: {keys}", src)
    if suffix in TIFF_SUFFIXES:
        return [read_labels_file(src, images)]
    raise NanodefectError(f"unsupported annotation file type {src.suffix!r} (LabelMe/COCO .json or label .tif)", src)


def _stem(aset: AnnotationSet, n: int) -> str:
    if aset.image_path:
        return Path(aset.image_path.replace("\\", "/")).stem or f"image_{n + 1}"
    if aset.source is not None:
        s = Path(aset.source).stem
        return s[: -len(LABELS_SUFFIX)] if s.endswith(LABELS_SUFFIX) else s
    return f"image_{n + 1}"


def _unique_names(sets: list[AnnotationSet]) -> list[str]:
    names, seen = [], set()
    for n, s in enumerate(sets):
        base = _stem(s, n)
        name, k = base, 2
        while name.lower() in seen:
            name = f"{base}-{k}"
            k += 1
        seen.add(name.lower())
        names.append(name)
    return names


def convert(
    src: str | os.PathLike,
    to: str,
    out: str | os.PathLike,
    images: str | os.PathLike | None = None,
    embed_image: bool | str = "auto",
) -> list[Path]:
    """Convert ``src`` to ``to`` in {"coco", "labelme", "labels"}, written under ``out``.

    ``images``: folder holding the images (for COCO sources: where ``file_name`` is
    looked up, to fill image sizes and paths; for COCO output: the root ``file_name`` is
    relative to; for label TIFFs: where the matching images are). Returns the written
    files. Raises :class:`NanodefectError` for any problem.
    """
    to = str(to).lower()
    if to not in TARGETS:
        raise NanodefectError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    if images is not None and not Path(images).is_dir():
        raise NanodefectError("images folder not found", images)
    sets = load_annotations(src, images)
    out = Path(out)
    if to == "coco":
        if out.is_dir() or out.suffix.lower() != ".json":
            out = out / "annotations.json"
        return [write_coco(sets, out, images_root=images)]
    if out.exists() and not out.is_dir():
        raise NanodefectError(f"output for --to {to} must be a folder, but a file exists there", out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for aset, name in zip(sets, _unique_names(sets)):
        if to == "labelme":
            written.append(write_labelme(aset, out / f"{name}.json", embed_image=embed_image))
        else:
            if aset.lines or aset.points:
                warnings.warn(f"{name}: {len(aset.lines)} lines and {len(aset.points)} points are not written to "
                              "label images", stacklevel=2)
            li = set_to_labels(aset)
            target = out / f"{name}{LABELS_SUFFIX}.tif"
            image_ref = aset.image_path_relative_to(out.resolve()) or None
            written.append(write_label_tiff(target, li, image_path=image_ref))
    return written
