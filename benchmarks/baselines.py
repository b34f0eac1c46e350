"""Classical baselines for the few-shot STEM catalyst benchmark (same protocol as the deep model).

Protocol: two training images (a parameter; by default the first two by name), each with
one square crop of at most 50 fully annotated objects (box-inscribed ellipses, written as
LabelMe by :func:`stem_catalyst_data.make_training_labelme` and read back exactly as the
plugin would). Every other image is a test image, scored with
:func:`napari_nanodefect.core.evaluate.centroid_in_box` against all its boxes.

Baselines, each returning an instance label image:

* **Otsu + watershed** (no training): Gaussian smoothing (σ = 1 px), Otsu threshold,
  polarity (particles brighter or darker than the background) taken from the training
  crops, then :func:`split_watershed`.
* **Random forest + watershed** ("ilastik-like" pixel classification): per-image
  percentile-normalised intensity, 36 features (Gaussian smoothing, gradient magnitude,
  Laplacian of Gaussian, difference of Gaussians σ − 0.66σ, two Hessian eigenvalues at
  σ = 0.7, 1, 1.6, 3.5, 5, 10 px), a 50-tree ``RandomForestClassifier`` (balanced class
  weights, as ilastik users paint roughly balanced scribbles) trained on up to 100 000
  pixels sampled from the crops (particle = inside an ellipse), particle probability
  ≥ 0.5, then :func:`split_watershed`.

:func:`split_watershed` (shared): fill holes, distance transform (smoothed σ = 1), one
marker per local maximum at least ``0.6 r`` apart, watershed, drop objects under a
quarter of the typical particle area, number the rest 1..n. ``r`` is the median
semi-axis of the training objects; the Otsu baseline uses it too (its only other use of
the training data is the polarity).

Run: ``python benchmarks/baselines.py [--train Cu1 Cu3] [--root DIR]`` prints per-image
and pooled precision / recall / F1 on the test images, and the run times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stem_catalyst_data import DATA_ROOT, Sample, load_dataset, make_training_labelme

from napari_nanodefect.core.annotations import read_labelme, set_to_labels
from napari_nanodefect.core.evaluate import centroid_in_box, detection_scores

#: feature scales (px), as in ilastik's default set
SIGMAS: tuple[float, ...] = (0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
FEATURE_NAMES: tuple[str, ...] = tuple(
    f"{kind}_{s:g}" for s in SIGMAS for kind in ("gauss", "gradmag", "log", "dog", "hess1", "hess2")
)


@dataclass(eq=False)
class TrainingCrop:
    """One fully annotated crop: the whole image (uint8), the crop's pixel slices and the
    instance labels of the objects (whole image), as read back from LabelMe."""

    name: str
    image: np.ndarray
    slices: tuple[slice, slice]
    labels: np.ndarray
    n_objects: int = 0

    @property
    def crop_image(self) -> np.ndarray:
        return self.image[self.slices]

    @property
    def crop_mask(self) -> np.ndarray:
        return self.labels[self.slices] > 0


@dataclass(eq=False)
class TrainingInfo:
    """What the baselines learn from the crops: ``polarity`` (+1 particles brighter than
    the background, -1 darker) and ``radius_px`` (median semi-axis of the objects)."""

    crops: list[TrainingCrop]
    polarity: int
    radius_px: float


def read_training(json_paths: Iterable[str | Path]) -> TrainingInfo:
    """Training crops from LabelMe files (one crop each, objects = particles)."""
    from PIL import Image

    crops: list[TrainingCrop] = []
    semi_axes: list[float] = []
    fg_sum = fg_n = bg_sum = bg_n = 0.0
    for p in json_paths:
        aset = read_labelme(p)
        if len(aset.crops) != 1:
            raise ValueError(f"{p}: expected one crop, found {len(aset.crops)}")
        with Image.open(aset.resolve_image_path()) as im:
            img = np.asarray(im.convert("L"))
        lab = set_to_labels(aset).labels
        sl = aset.crops[0].pixel_slices()
        tc = TrainingCrop(Path(p).stem, img, sl, lab, len(aset.objects))
        crops.append(tc)
        ci, cm = tc.crop_image.astype(np.float64), tc.crop_mask
        fg_sum += ci[cm].sum()
        fg_n += cm.sum()
        bg_sum += ci[~cm].sum()
        bg_n += (~cm).sum()
        for o in aset.objects:
            x0, y0, x1, y1 = o.bbox
            semi_axes.append(0.25 * ((x1 - x0) + (y1 - y0)))
    if not crops:
        raise ValueError("no training files")
    polarity = 1 if fg_sum / max(fg_n, 1) >= bg_sum / max(bg_n, 1) else -1
    radius = float(np.median(semi_axes)) if semi_axes else 5.0
    return TrainingInfo(crops, polarity, radius)


# ------------------------------------------------------------------ post-processing


def split_watershed(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Instance labels from a foreground mask: distance-transform watershed.

    Markers are the local maxima of the (σ = 1 smoothed) distance transform at least
    ``max(2, 0.6 radius_px)`` px apart; a connected component without a maximum keeps one
    marker of its own. Objects smaller than ``max(4, π r² / 4)`` px are dropped."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import relabel_sequential, watershed

    mask = ndi.binary_fill_holes(np.asarray(mask, bool))
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    cc, n = ndi.label(mask)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(mask).astype(np.float32), 1.0)
    md = max(2, int(round(0.6 * radius_px)))
    peaks = peak_local_max(dist, min_distance=md, labels=cc, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    has = np.zeros(n + 1, bool)
    has[cc[tuple(peaks.T)]] = True
    missing = np.flatnonzero(~has[1:]) + 1
    if missing.size:  # components without a peak: their own marker
        lut = np.zeros(n + 1, np.int32)
        lut[missing] = len(peaks) + np.arange(1, missing.size + 1)
        extra = lut[cc]
        markers = np.where(extra > 0, extra, markers)
    lab = watershed(-dist, markers, mask=mask)
    min_size = max(4, int(np.pi * radius_px**2 / 4))
    sizes = np.bincount(lab.ravel())
    small = sizes < min_size
    small[0] = False
    lab[small[lab]] = 0
    return relabel_sequential(lab.astype(np.int32))[0]


# ------------------------------------------------------------------ Otsu


def otsu_watershed(image: np.ndarray, polarity: int, radius_px: float) -> np.ndarray:
    """Otsu threshold of the σ = 1 smoothed image (foreground on the ``polarity`` side),
    then :func:`split_watershed`."""
    from skimage.filters import threshold_otsu

    sm = ndi.gaussian_filter(np.asarray(image, np.float32), 1.0)
    t = threshold_otsu(sm)
    mask = sm > t if polarity > 0 else sm < t
    return split_watershed(mask, radius_px)


# ------------------------------------------------------------------ random forest


def normalise(image: np.ndarray) -> np.ndarray:
    """float32, 1st / 99.5th percentile mapped to 0 / 1 (not clipped)."""
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, (1.0, 99.5))
    return (img - lo) / max(float(hi - lo), 1e-6)


def pixel_features(image: np.ndarray, sigmas: Sequence[float] = SIGMAS) -> np.ndarray:
    """``(6 * len(sigmas), H, W)`` float32 ilastik-style features of the normalised image:
    per σ, Gaussian, gradient magnitude, LoG, DoG (σ − 0.66σ), Hessian eigenvalues
    (larger, smaller). Derivatives are central differences of the Gaussian-smoothed image
    (two Gaussian filters per σ instead of seven; same features up to discretisation)."""
    img = normalise(image)
    H, W = img.shape
    out = np.empty((6 * len(sigmas), H, W), np.float32)
    k = 0
    for s in sigmas:
        g = ndi.gaussian_filter(img, s)
        out[k] = g
        gr, gc = np.gradient(g)
        np.hypot(gr, gc, out=out[k + 1])
        hrr, hrc = np.gradient(gr)
        hcc = np.gradient(gc, axis=1)
        np.add(hrr, hcc, out=out[k + 2])  # Laplacian of Gaussian
        ndi.gaussian_filter(img, 0.66 * s, output=out[k + 3])
        np.subtract(g, out[k + 3], out=out[k + 3])
        half_tr = 0.5 * out[k + 2]
        root = np.sqrt(0.25 * (hrr - hcc) ** 2 + hrc**2)
        np.add(half_tr, root, out=out[k + 4])
        np.subtract(half_tr, root, out=out[k + 5])
        k += 6
    return out


def train_pixel_classifier(info: TrainingInfo, n_trees: int = 50, max_pixels: int = 100_000,
                           seed: int = 0, n_jobs: int = -1):
    """A ``RandomForestClassifier`` (particle vs background) on pixels of the crops.
    Features are computed on the whole image (no crop-edge effects), then sampled."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    Xs, ys = [], []
    total = sum(c.crop_mask.size for c in info.crops)
    for c in info.crops:
        f = pixel_features(c.image)[(slice(None), *c.slices)].reshape(len(FEATURE_NAMES), -1).T
        y = c.crop_mask.ravel()
        n = min(len(y), int(round(max_pixels * len(y) / total)))
        pick = rng.choice(len(y), n, replace=False)
        Xs.append(f[pick])
        ys.append(y[pick])
    X, y = np.concatenate(Xs), np.concatenate(ys)
    rf = RandomForestClassifier(n_estimators=n_trees, class_weight="balanced", min_samples_leaf=2,
                                n_jobs=n_jobs, random_state=seed)
    rf.fit(X, y)
    return rf


def predict_probability(rf, image: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Particle probability per pixel (float32 H × W)."""
    f = pixel_features(image).reshape(len(FEATURE_NAMES), -1)
    out = np.empty(f.shape[1], np.float32)
    col = list(rf.classes_).index(True)
    for i in range(0, f.shape[1], chunk):
        out[i : i + chunk] = rf.predict_proba(np.ascontiguousarray(f[:, i : i + chunk].T))[:, col]
    return out.reshape(image.shape)


def rf_watershed(rf, image: np.ndarray, radius_px: float, threshold: float = 0.5) -> np.ndarray:
    """Random-forest probability ``>= threshold``, then :func:`split_watershed`."""
    return split_watershed(predict_probability(rf, image) >= threshold, radius_px)


# ------------------------------------------------------------------ benchmark


def default_train_names(samples: Sequence[Sample], n: int = 2) -> list[str]:
    """The first ``n`` sample names in sorted order."""
    return sorted(s.name for s in samples)[:n]


def run_baselines(
    samples: Sequence[Sample],
    train_names: Sequence[str],
    *,
    methods: Sequence[str] = ("otsu", "rf"),
    max_objects: int = 50,
    exclude_border_px: float = 0,
    n_trees: int = 50,
    seed: int = 0,
    work_dir: str | Path | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train on the crops of ``train_names``, predict every other image, score with
    centroid-in-box. Returns ``{"train": names, "polarity", "radius_px", "crops": {name:
    (x0, y0, x1, y1)}, "methods": {method: {"per_image": {name: scores}, "pooled": scores,
    "seconds": float}}, "seconds": {...}}``; pooled scores sum the counts of all test
    images."""
    t_all = time.perf_counter()
    train_names = list(train_names)
    test = [s for s in samples if s.name not in set(train_names)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(work_dir) if work_dir is not None else Path(tmp)
        paths = make_training_labelme(samples, train_names, folder, max_objects=max_objects, seed=seed)
        info = read_training(paths)
        crops = {}
        for p in paths:
            c = read_labelme(p).crops[0]
            crops[Path(p).stem] = (c.x0, c.y0, c.x1, c.y1)
    result: dict[str, Any] = {
        "train": train_names,
        "test": [s.name for s in test],
        "polarity": "bright" if info.polarity > 0 else "dark",
        "radius_px": info.radius_px,
        "crops": crops,
        "n_train_objects": {c.name: c.n_objects for c in info.crops},
        "exclude_border_px": exclude_border_px,
        "methods": {},
        "seconds": {},
    }
    rf = None
    if "rf" in methods:
        t0 = time.perf_counter()
        rf = train_pixel_classifier(info, n_trees=n_trees, seed=seed)
        result["seconds"]["rf_training"] = time.perf_counter() - t0
    for m in methods:
        t0 = time.perf_counter()
        per: dict[str, dict[str, Any]] = {}
        for s in test:
            t1 = time.perf_counter()
            if m == "otsu":
                lab = otsu_watershed(s.image, info.polarity, info.radius_px)
            elif m == "rf":
                lab = rf_watershed(rf, s.image, info.radius_px)
            else:
                raise ValueError(f"unknown method {m!r}")
            r = centroid_in_box(lab, s.boxes, exclude_border_px=exclude_border_px)
            r = {k: v for k, v in r.items() if k not in ("pairs", "centroids")}
            r["seconds"] = time.perf_counter() - t1
            per[s.name] = r
            if verbose:
                print(f"  {m:5s} {s.name:12s} P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f} "
                      f"({r['seconds']:.1f} s)", flush=True)
        tp = sum(r["tp"] for r in per.values())
        nt = sum(r["n_truth"] for r in per.values())
        npred = sum(r["n_pred"] for r in per.values())
        result["methods"][m] = {"per_image": per, "pooled": detection_scores(tp, nt, npred),
                                "mean_f1": float(np.mean([r["f1"] for r in per.values()])) if per else 0.0,
                                "seconds": time.perf_counter() - t0}
    result["seconds"]["total"] = time.perf_counter() - t_all
    return result


def format_table(result: dict[str, Any]) -> str:
    """Per-image and pooled P / R / F1 per method as a fixed-width table."""
    methods = list(result["methods"])
    head = f"{'image':12s} {'boxes':>5s} " + " ".join(f"{m + ' P/R/F1 (n_pred)':>28s}" for m in methods)
    lines = [head, "-" * len(head)]
    first = result["methods"][methods[0]]["per_image"]
    for name in first:
        row = f"{name:12s} {first[name]['n_truth']:5d} "
        for m in methods:
            r = result["methods"][m]["per_image"][name]
            row += f"{r['precision']:7.3f} {r['recall']:6.3f} {r['f1']:6.3f} ({r['n_pred']:5d}) "
        lines.append(row)
    lines.append("-" * len(head))
    pooled = f"{'pooled':12s} {sum(r['n_truth'] for r in first.values()):5d} "
    mean = f"{'mean F1':12s} {'':5s} "
    for m in methods:
        r = result["methods"][m]["pooled"]
        pooled += f"{r['precision']:7.3f} {r['recall']:6.3f} {r['f1']:6.3f} ({r['n_pred']:5d}) "
        mean += f"{'':14s} {result['methods'][m]['mean_f1']:6.3f} {'':7s} "
    lines += [pooled, mean]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(DATA_ROOT), help="data set folder (images/, labels/)")
    ap.add_argument("--train", nargs="+", default=None, help="training image names (default: first two by name)")
    ap.add_argument("--methods", nargs="+", default=["otsu", "rf"], choices=["otsu", "rf"])
    ap.add_argument("--exclude-border-px", type=float, default=0)
    ap.add_argument("--max-objects", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the full result here")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    root = Path(a.root)
    if not (root / "images").is_dir():
        print(f"data set not found: {root}", file=sys.stderr)
        return 2
    samples = load_dataset(root)
    train = a.train or default_train_names(samples)
    res = run_baselines(samples, train, methods=a.methods, max_objects=a.max_objects,
                        exclude_border_px=a.exclude_border_px, seed=a.seed, verbose=a.verbose)
    print(f"train: {', '.join(res['train'])}  crops: {res['crops']}  polarity: {res['polarity']}  "
          f"typical radius: {res['radius_px']:.1f} px  border excluded: {a.exclude_border_px:g} px")
    print(format_table(res))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res["seconds"].items())
          + ", " + ", ".join(f"{m} {v['seconds']:.1f}" for m, v in res["methods"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
