"""Few-shot benchmark data: the STEM catalyst nanoparticle set (boxes only).

Data: ``../shared/data/real/stem-catalyst-nanoparticles`` (ArdaGen,
STEM-Automated-Nanoparticle-Analysis-YOLOv8-SAM, MIT license): ``images/*.jpg`` S/TEM
micrographs (640², 1024², 2048²; grey, a few RGB) and ``labels/*.txt`` YOLO boxes
``class xc yc w h`` normalised to the image size. The images are never copied into the
repository; training files are written to a temporary folder.

Protocol helpers:

* :func:`load_dataset` — images as uint8 grey (the project's analysed-plane rule) and
  boxes as ``(K, 4)`` ``x0, y0, x1, y1`` pixel-corner coordinates.
* :func:`ellipse_objects` / :func:`ellipse_labels` — a box's inscribed ellipse as a
  LabelMe-ready polygon / as an instance label image (the particle masks we train on).
* :func:`choose_crop` — a deterministic square training crop holding 20–50 objects.
* :func:`make_training_labelme` — LabelMe JSON + PNG per training image: one crop and the
  ellipses of every box intersecting it (the crop's inside is fully annotated).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_nanodefect.core.annotations import (
    AnnotationSet,
    Crop,
    ObjectAnnotation,
    write_labelme,
)
from napari_nanodefect.core.micrograph import analysed_plane

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANODEFECT_SHARED", REPO.parent / "shared"))
#: default location of the data set
DATA_ROOT = SHARED / "data" / "real" / "stem-catalyst-nanoparticles"

#: vertices of the ellipse polygons
ELLIPSE_VERTICES = 32


@dataclass(eq=False)
class Sample:
    """One image of the data set: ``image`` uint8 (H, W) grey, ``boxes`` (K, 4) float
    ``x0, y0, x1, y1`` px (pixel-corner coordinates), ``path`` the source JPEG."""

    name: str
    image: np.ndarray
    boxes: np.ndarray
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image.shape[0]), int(self.image.shape[1]))


def to_grey_uint8(array: np.ndarray) -> np.ndarray:
    """The analysed plane of an 8-bit image as uint8 (RGB -> rounded luminance)."""
    plane, _, _ = analysed_plane(np.asarray(array))
    if plane.dtype == np.uint8:
        return plane
    return np.clip(np.rint(plane.astype(np.float32)), 0, 255).astype(np.uint8)


def read_yolo_boxes(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """YOLO ``class xc yc w h`` (normalised) -> ``(K, 4)`` ``x0, y0, x1, y1`` px, clipped
    to the image. Blank lines are skipped; the class is ignored (single-class set).
    Boxes are kept as given, degenerate ones included (PtW6 has one zero-width box, which
    can only ever be a false negative)."""
    H, W = shape
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5:
            raise ValueError(f"{path}: bad YOLO line {line!r}")
        xc, yc, w, h = (float(v) for v in parts[1:5])
        rows.append(((xc - w / 2) * W, (yc - h / 2) * H, (xc + w / 2) * W, (yc + h / 2) * H))
    b = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, W)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, H)
    return b


def load_sample(image_path: str | os.PathLike, label_path: str | os.PathLike | None = None) -> Sample:
    """One image and its boxes (``labels/<stem>.txt`` beside ``images/`` by default)."""
    from PIL import Image

    image_path = Path(image_path)
    if label_path is None:
        label_path = image_path.parent.parent / "labels" / (image_path.stem + ".txt")
    with Image.open(image_path) as im:
        img = to_grey_uint8(np.asarray(im))
    return Sample(image_path.stem, img, read_yolo_boxes(label_path, img.shape), image_path)


def load_dataset(root: str | os.PathLike = DATA_ROOT, names: Iterable[str] | None = None) -> list[Sample]:
    """All samples under ``root`` (``images/*.jpg`` with a ``labels/*.txt``), sorted by name;
    only ``names`` when given."""
    root = Path(root)
    images = sorted((root / "images").glob("*.jpg"), key=lambda p: p.stem)
    if not images:
        raise FileNotFoundError(f"no images under {root / 'images'}")
    wanted = None if names is None else set(names)
    out = []
    for p in images:
        if wanted is not None and p.stem not in wanted:
            continue
        lab = root / "labels" / (p.stem + ".txt")
        if lab.is_file():
            out.append(load_sample(p, lab))
    if wanted is not None and len(out) != len(wanted):
        missing = sorted(wanted - {s.name for s in out})
        raise FileNotFoundError(f"samples not found under {root}: {missing}")
    return out


# ------------------------------------------------------------------ ellipses


def ellipse_polygon(box: Sequence[float], n: int = ELLIPSE_VERTICES) -> np.ndarray:
    """``(n, 2)`` (x, y) vertices of the ellipse inscribed in ``box = (x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, a, b = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], axis=1)


def ellipse_objects(boxes: np.ndarray, label: str = "particle", n: int = ELLIPSE_VERTICES) -> list[ObjectAnnotation]:
    """One ellipse polygon (``n`` vertices) inscribed in each box. Degenerate boxes
    (width or height under 0.5 px) are skipped."""
    out = []
    for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        if abs(b[2] - b[0]) < 0.5 or abs(b[3] - b[1]) < 0.5:
            continue
        out.append(ObjectAnnotation(label=label, polygon=ellipse_polygon(b, n)))
    return out


def ellipse_labels(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Instance label image (int32) of the ellipses inscribed in ``boxes``: box ``i`` gets
    label ``i + 1``; a pixel belongs to an ellipse when its centre ``(r + 0.5, c + 0.5)``
    is inside (exact ellipse, not the polygon); later boxes are drawn over earlier ones."""
    H, W = int(shape[0]), int(shape[1])
    out = np.zeros((H, W), np.int32)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        cx, cy, a, b = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
        if a <= 0 or b <= 0:
            continue
        r0, r1 = max(int(np.floor(cy - b)), 0), min(int(np.ceil(cy + b)), H)
        c0, c1 = max(int(np.floor(cx - a)), 0), min(int(np.ceil(cx + a)), W)
        if r1 <= r0 or c1 <= c0:
            continue
        yy = (np.arange(r0, r1) + 0.5 - cy)[:, None] / b
        xx = (np.arange(c0, c1) + 0.5 - cx)[None, :] / a
        inside = yy * yy + xx * xx <= 1.0
        out[r0:r1, c0:c1][inside] = i + 1
    return out


# ------------------------------------------------------------------ crops


def boxes_intersecting(boxes: np.ndarray, crop: Crop) -> np.ndarray:
    """Boolean mask of the boxes overlapping ``crop`` with a positive area."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b[:, 0] < crop.x1) & (b[:, 2] > crop.x0) & (b[:, 1] < crop.y1) & (b[:, 3] > crop.y0)


def _count_intersecting(boxes: np.ndarray, x0: np.ndarray, y0: np.ndarray, s: float) -> np.ndarray:
    b = boxes
    hit = (
        (b[None, :, 0] < (x0 + s)[:, None]) & (b[None, :, 2] > x0[:, None])
        & (b[None, :, 1] < (y0 + s)[:, None]) & (b[None, :, 3] > y0[:, None])
    )
    return hit.sum(axis=1)


def choose_crop(sample: Sample, max_objects: int = 50, min_objects: int = 20, seed: int = 0) -> Crop:
    """A square training crop (integer pixel edges) holding ``min_objects``..``max_objects``
    objects, an object being any box that intersects the crop (boxes partly inside count:
    they are annotated in full), so at most ``max_objects`` objects are annotated.

    Deterministic for a given ``seed``: squares of sizes from 32 px to the whole image
    (40 sizes in geometric steps) are tried on a grid (step = size / 8, at most 64 steps
    across), keeping a margin of 5 % of the
    image (at least 8 px) from the borders, where the ground truth omits cut particles
    (the margin is dropped if nothing fits). Among the squares with the most objects
    (within 10 % of the best count, and at least ``min_objects``), one is drawn with
    ``numpy.random.default_rng(seed)``. When no square reaches ``min_objects`` (a sparse
    image), the square with the most objects up to ``max_objects`` is used.
    """
    if min_objects > max_objects:
        raise ValueError("min_objects must not exceed max_objects")
    H, W = sample.shape
    boxes = np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4)
    side = min(H, W)
    sizes = sorted({int(round(s)) for s in np.geomspace(min(32, side), side, 40)})
    candidates: list[tuple[int, int, int, int]] = []  # (count, x0, y0, size)
    for margin in (max(8, int(round(0.05 * side))), 0):
        candidates = []
        for s in sizes:
            lo_y, hi_y = margin, H - margin - s
            lo_x, hi_x = margin, W - margin - s
            if hi_y < lo_y or hi_x < lo_x:
                continue
            step = max(1, s // 8, side // 64)
            ys = np.arange(lo_y, hi_y + 1, step)
            xs = np.arange(lo_x, hi_x + 1, step)
            gy, gx = np.meshgrid(ys, xs, indexing="ij")
            gy, gx = gy.ravel(), gx.ravel()
            counts = _count_intersecting(boxes, gx.astype(float), gy.astype(float), float(s)) if len(boxes) else np.zeros(gy.size, int)
            ok = counts <= max_objects
            if not ok.any():  # every square of this size holds too many: larger ones too
                break
            candidates += [(int(c), int(x), int(y), s) for c, x, y in zip(counts[ok], gx[ok], gy[ok])]
        if any(c[0] >= min_objects for c in candidates):
            break
    if not candidates:  # tiny image: the whole image
        return Crop(0, 0, W, H)
    counts = np.array([c[0] for c in candidates])
    best = int(counts.max())
    if best >= min_objects:
        band = np.flatnonzero(counts >= max(min_objects, best - max(1, int(0.1 * max_objects))))
    else:
        band = np.flatnonzero(counts == best)
    pick = candidates[int(band[np.random.default_rng(seed).integers(band.size)])]
    _, x0, y0, s = pick
    return Crop(x0, y0, x0 + s, y0 + s)


def training_set(sample: Sample, crop: Crop, image_path: str | os.PathLike | None = None,
                 label: str = "particle") -> AnnotationSet:
    """The annotation set of one training image: the crop and the ellipses of all boxes
    intersecting it."""
    objs = ellipse_objects(sample.boxes[boxes_intersecting(sample.boxes, crop)], label=label)
    return AnnotationSet(
        image_path=None if image_path is None else str(image_path),
        image_height=sample.shape[0],
        image_width=sample.shape[1],
        crops=[crop],
        objects=objs,
    )


def make_training_labelme(
    samples: Sequence[Sample],
    names: Iterable[str],
    out_dir: str | os.PathLike,
    max_objects: int = 50,
    min_objects: int = 20,
    seed: int = 0,
) -> list[Path]:
    """For each named sample, write ``<name>.png`` (the uint8 grey image) and
    ``<name>.json`` (LabelMe: one ``crop`` rectangle from :func:`choose_crop` and one
    ``particle`` polygon per box intersecting it) into ``out_dir``. Returns the JSON paths
    in the order of ``names``."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {s.name: s for s in samples}
    paths = []
    for name in names:
        if name not in by_name:
            raise KeyError(f"no sample named {name!r}")
        s = by_name[name]
        png = (out_dir / f"{name}.png").resolve()
        Image.fromarray(s.image).save(png)
        crop = choose_crop(s, max_objects=max_objects, min_objects=min_objects, seed=seed)
        aset = training_set(s, crop, image_path=png)
        paths.append(write_labelme(aset, out_dir / f"{name}.json"))
    return paths


if __name__ == "__main__":  # quick look: crops and object counts per image
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_ROOT
    for s in load_dataset(root):
        c = choose_crop(s)
        n = int(boxes_intersecting(s.boxes, c).sum())
        print(f"{s.name:12s} {s.shape[1]}x{s.shape[0]} boxes {len(s.boxes):4d}  crop x{c.x0:.0f}-{c.x1:.0f} "
              f"y{c.y0:.0f}-{c.y1:.0f} ({c.x1 - c.x0:.0f} px) objects {n}")
