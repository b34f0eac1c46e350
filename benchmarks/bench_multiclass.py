"""Multi-class instance segmentation end to end: ``particle`` + ``single_site``.

    python benchmarks/bench_multiclass.py [--iterations 440] [--out DIR] [--json out.json] [--skip-real]

Two object classes are labelled in crops, the shipped (one-class) starter model is
fine-tuned with a two-class head (the trainer adds the class channels to the starter's
output head) for a FIXED number of steps, ``--iterations`` rounded to whole epochs (not a
time budget: the figures do not depend on the load of the machine; the wall time is
printed too; one torch thread, validation only at the end), whole held-out images are
predicted, and each class is scored on its own.

Part A, synthetic (exact ground truth): ``make_particles`` HAADF images, 512², 0.2 nm/px,
particles with a median ECD of 4 nm (20 px) and 50 single sites (single atoms, 2–4 px)
each. One square crop holding <= 25 objects (both classes) in each of two training images
(<= 50 objects in all); four other images are predicted with the scale given by the two
pixel sizes.

Part B, real backgrounds ("HAADF_Atom_Detection-like"): the ten real HAADF-STEM images of
a Pt single-atom catalyst in ../shared/data/real/HAADF_Atom_Detection (MIT, 512² uint16,
hand-labelled atom positions, pixel size unknown) with their labelled atoms as class
``single_site`` (a disk of radius 3 px around each position: the mean atom profile in these
images has a FWHM of ~5.5 px, so a 3-px radius covers it) and procedural HAADF particles
pasted onto them as class ``particle`` (5–15 per image, ECD ~10–30 px, >= 8 px from every
atom disk; peak contrast 3.5–5x the image's robust standard deviation, blurred by a
probe-like PSF, with shot noise at the gain estimated from the image's own pixel noise).
Zelenka et al. (2022) pasted real particles onto real backgrounds; here they are
procedural (``make_particles``), so the particle ground truth is exact while the atoms are
the human labels. One crop with <= 25 objects in each of two training images, the other
eight images predicted at the training scale (same microscope setting, no pixel size).
Beside ours, for single sites: a classical Laplacian-of-Gaussian peak detector (particles
masked by a smoothed-image threshold), its sigma and both thresholds fitted on the same
training crops.

Matching (one-to-one, Hungarian on centroid distance): a predicted object matches a truth
object of the same class when its centroid lies inside the truth object or within
``max(r_min, truth radius)`` of the truth centroid (``r_min`` 3 px synthetic; 4 px to the
labelled atom positions in part B). The class confusion is the same matching with the
classes ignored. Counts, precision/recall/F1 are pooled over the test images.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from stem_catalyst_data import SHARED  # noqa: E402  (data root: NANODEFECT_SHARED or ../shared)

from napari_nanodefect.core.annotations import Crop, LabelImage, labels_to_set  # noqa: E402
from napari_nanodefect.core.evaluate import detection_scores  # noqa: E402
from napari_nanodefect.core.synthetic import make_particles  # noqa: E402

CLASSES = ("particle", "single_site")
ATOM_DATA = SHARED / "data" / "real" / "HAADF_Atom_Detection" / "Atom_Detection_Demo" / "data"
#: disk radius (px) given to each labelled atom position
ATOM_RADIUS = 3.0
#: synthetic images of part A
SYN = dict(shape=(512, 512), n=30, median_diameter_nm=4.0, sigma=0.25, pixel_size_nm=0.2, mode="haadf",
           single_sites=50, single_site_contrast=1.2, support_texture=0.3, touching=0.15)


# ----------------------------------------------------------------------------- helpers

def objects_of(labels: np.ndarray, classes: dict[int, str], centres: dict[int, tuple[float, float]] | None = None):
    """ids, centroids (row, col; pixel indices), radii sqrt(area/pi), class names, areas."""
    ids = np.unique(labels[labels > 0])
    if ids.size == 0:
        return ids, np.zeros((0, 2)), np.zeros(0), np.array([], dtype=object), np.zeros(0)
    area = ndi.sum_labels(np.ones(labels.shape), labels, ids)
    cen = np.array(ndi.center_of_mass(np.ones(labels.shape), labels, ids), float).reshape(-1, 2)
    if centres:
        for k, i in enumerate(ids):
            if int(i) in centres:
                cen[k] = centres[int(i)]
    names = np.array([classes.get(int(i), CLASSES[0]) for i in ids], dtype=object)
    return ids, cen, np.sqrt(area / np.pi), names, area


def match(truth, pred, t_lab: np.ndarray, r_min: float) -> list[tuple[int, int]]:
    """One-to-one pairs (truth index, pred index): pred centroid inside the truth object or
    within max(r_min, truth radius) of the truth centroid; Hungarian on the distance."""
    t_ids, t_c, t_r = truth[0], truth[1], truth[2]
    p_c = pred[1]
    if len(t_ids) == 0 or len(p_c) == 0:
        return []
    d = np.hypot(t_c[:, None, 0] - p_c[None, :, 0], t_c[:, None, 1] - p_c[None, :, 1])
    ok = d <= np.maximum(r_min, t_r)[:, None]
    py = np.clip(np.round(p_c[:, 0]).astype(int), 0, t_lab.shape[0] - 1)
    px = np.clip(np.round(p_c[:, 1]).astype(int), 0, t_lab.shape[1] - 1)
    under = t_lab[py, px]
    ok |= t_ids[:, None] == under[None, :]
    if not ok.any():
        return []
    cost = np.where(ok, d, 1e6)
    r, c = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(r, c) if ok[i, j]]


def score_image(t_lab, t_cls, p_lab, p_cls, r_min, t_centres=None) -> dict:
    """Per-class counts/tp, class confusion among class-agnostic matches, ECDs (px)."""
    truth = objects_of(t_lab, t_cls, t_centres)
    pred = objects_of(p_lab, p_cls)
    out = {"per_class": {}, "confusion": {a: {b: 0 for b in CLASSES} for a in CLASSES}}
    for c in CLASSES:
        ti, pi = np.flatnonzero(truth[3] == c), np.flatnonzero(pred[3] == c)
        sub_t = tuple(a[ti] for a in truth)
        sub_p = tuple(a[pi] for a in pred)
        tp = len(match(sub_t, sub_p, np.where(np.isin(t_lab, truth[0][ti]), t_lab, 0), r_min))
        out["per_class"][c] = {"n_truth": int(ti.size), "n_pred": int(pi.size), "tp": tp,
                               "ecd_truth_px": (2 * truth[2][ti]).tolist(), "ecd_pred_px": (2 * pred[2][pi]).tolist()}
    for i, j in match(truth, pred, t_lab, r_min):
        out["confusion"][truth[3][i]][pred[3][j]] += 1
    return out


def pool(results: list[dict], pixel_size_nm: float | None) -> dict:
    f = pixel_size_nm or 1.0
    per = {}
    for c in CLASSES:
        rs = [r["per_class"][c] for r in results]
        nt, npd, tp = (sum(r[k] for r in rs) for k in ("n_truth", "n_pred", "tp"))
        et = np.concatenate([r["ecd_truth_px"] for r in rs]) * f
        ep = np.concatenate([r["ecd_pred_px"] for r in rs]) * f
        per[c] = {**detection_scores(tp, nt, npd), "n_truth": nt, "n_pred": npd, "tp": tp,
                  "median_ecd_truth": float(np.median(et)) if et.size else None,
                  "median_ecd_pred": float(np.median(ep)) if ep.size else None}
    conf = {a: {b: sum(r["confusion"][a][b] for r in results) for b in CLASSES} for a in CLASSES}
    return {"per_class": per, "confusion": conf, "unit": "nm" if pixel_size_nm else "px"}


def choose_crop(labels: np.ndarray, classes: dict[int, str], size: int, max_objects: int = 25,
                min_per_class: tuple[int, int] = (3, 5), step: int = 16) -> tuple[int, int, int, int]:
    """A deterministic square crop (x0, y0, x1, y1): among the windows holding at most
    ``max_objects`` objects (every object whose box intersects it) and at least
    ``min_per_class`` of each class, the one holding the most objects (first one wins)."""
    H, W = labels.shape
    boxes = [(i + 1, sl) for i, sl in enumerate(ndi.find_objects(labels)) if sl is not None]
    best, best_n = None, -1
    for y0 in range(0, H - size + 1, step):
        for x0 in range(0, W - size + 1, step):
            cnt = {c: 0 for c in CLASSES}
            for i, (sy, sx) in boxes:
                if sy.start < y0 + size and sy.stop > y0 and sx.start < x0 + size and sx.stop > x0:
                    cnt[classes.get(i, CLASSES[0])] += 1
            n = sum(cnt.values())
            if n <= max_objects and all(cnt[c] >= m for c, m in zip(CLASSES, min_per_class)) and n > best_n:
                best, best_n = (x0, y0, x0 + size, y0 + size), n
    if best is None:
        raise RuntimeError(f"no {size}-px crop with <= {max_objects} objects and {min_per_class} per class")
    return best


def crop_set(labels: np.ndarray, classes: dict[int, str], crop: tuple[int, int, int, int],
             pixel_size_nm: float | None):
    """The annotation set a user would save: one crop, every object intersecting it."""
    aset = labels_to_set(LabelImage(labels.astype(np.int32), classes, pixel_size_nm))
    x0, y0, x1, y1 = crop
    aset.objects = [o for o in aset.objects
                    if o.bbox[0] < x1 and o.bbox[2] > x0 and o.bbox[1] < y1 and o.bbox[3] > y0]
    aset.crops = [Crop(x0, y0, x1, y1)]
    return aset


def epochs_for(items, iterations: int, batch_size: int = 8, patch: int = 128) -> tuple[int, int]:
    """Whole epochs giving about ``iterations`` training steps, and the steps per epoch.

    The trainer's epoch is as many steps as it takes to draw the annotated area ~4 times
    in patches, measured in network pixels, so its length depends on the crop sizes and
    the training scale; counting steps gives both parts the same amount of training."""
    from napari_nanodefect.core.segment import load_model
    from napari_nanodefect.core.segment.train import _scales

    scales, _ = _scales(items, load_model(device="cpu").config.object_diameter_px)
    area = sum((c.x1 - c.x0) * (c.y1 - c.y0) * s * s for it, s in zip(items, scales) for c in it.annotations.crops)
    per_epoch = max(10, math.ceil(4 * area / (batch_size * patch * patch)))
    return max(1, round(iterations / per_epoch)), per_epoch


def train_two_class(items, iterations: int, seed: int, keep: Path | None = None):
    from napari_nanodefect.core.segment.train import train

    epochs, per_epoch = epochs_for(items, iterations)
    t0 = time.perf_counter()
    # validation only once, at the end, on nothing held out: the run does not depend on timing
    res = train(items, keep, base="starter", classes=list(CLASSES), epochs=epochs, seed=seed,
                validate_every_s=1e9, val_fraction=0.0)
    wall = time.perf_counter() - t0
    s = res.summary
    info = {"epochs": epochs, "iterations": s["iterations"], "loop_s": s["loop_seconds"], "wall_s": round(wall, 1),
            "n_objects": s["n_objects"], "n_crops": s["n_crops"], "scales": s["scales"],
            "train_scale": res.model.config.train_scale, "model_pixel_size_nm": res.model.config.pixel_size_nm}
    print(f"  trained {len(CLASSES)}-class head from the starter on {s['n_objects']} objects in {s['n_crops']} crops: "
          f"{epochs} epochs = {s['iterations']} iterations, {s['loop_seconds']:.1f} s loop, {wall:.1f} s wall "
          f"(scales {s['scales']})", flush=True)
    return res.model, info


def class_counts(classes: dict[int, str], labels: np.ndarray | None = None) -> dict[str, int]:
    present = set(np.unique(labels).tolist()) if labels is not None else None
    return {c: sum(1 for k, v in classes.items() if v == c and (present is None or k in present)) for c in CLASSES}


def print_table(title: str, pooled: dict, extra: dict[str, dict] | None = None) -> None:
    u = pooled["unit"]
    print(f"\n{title}")
    print(f"  {'class':12s} {'truth':>6s} {'pred':>6s} {'P':>6s} {'R':>6s} {'F1':>6s} "
          f"{'med ECD truth':>14s} {'med ECD pred':>13s}")
    for c, r in pooled["per_class"].items():
        et = f"{r['median_ecd_truth']:.2f} {u}" if r["median_ecd_truth"] is not None else "-"
        ep = f"{r['median_ecd_pred']:.2f} {u}" if r["median_ecd_pred"] is not None else "-"
        print(f"  {c:12s} {r['n_truth']:6d} {r['n_pred']:6d} {r['precision']:6.3f} {r['recall']:6.3f} "
              f"{r['f1']:6.3f} {et:>14s} {ep:>13s}")
    for name, r in (extra or {}).items():
        print(f"  {name:12s} {r['n_truth']:6d} {r['n_pred']:6d} {r['precision']:6.3f} {r['recall']:6.3f} "
              f"{r['f1']:6.3f}")
    print("  class confusion among matched objects (rows truth, columns predicted):")
    print("  " + " " * 12 + "".join(f"{c:>13s}" for c in CLASSES))
    for a in CLASSES:
        print(f"  {a:12s}" + "".join(f"{pooled['confusion'][a][b]:13d}" for b in CLASSES))


def write_histogram(path: Path, labels: np.ndarray, classes: dict[int, str], image: np.ndarray,
                    pixel_size_nm: float | None, title: str) -> dict:
    from napari_nanodefect.core.measure.histogram import save_histogram
    from napari_nanodefect.core.measure.particles import measure_particles, region_bounds
    from napari_nanodefect.core.measure.population import summarize

    table = measure_particles(labels, pixel_size_nm, image, class_index=classes or None)
    summary = summarize(table, pixel_size_nm, region_bounds(labels.shape, None))
    save_histogram(path, table, summary, title=title)
    return {k: {"count": v["count"], "d50_nm": v["d50_nm"]} for k, v in summary["per_class"].items()}


# ----------------------------------------------------------------------------- part A

def part_synthetic(args, out_dir: Path) -> dict:
    from napari_nanodefect.core.segment.predict import predict_array
    from napari_nanodefect.core.segment.train import TrainingImage

    print("\nA. synthetic HAADF: particles + single sites "
          f"({SYN['shape'][0]}², {SYN['pixel_size_nm']} nm/px, {SYN['single_sites']} single sites per image)")
    train_seeds, test_seeds = [1000, 1001], [1002, 1003, 1004, 1005]
    items = []
    for sd in train_seeds:
        s = make_particles(seed=sd, **SYN)
        crop = choose_crop(s.labels, s.classes, 192, max_objects=25)
        aset = crop_set(s.labels, s.classes, crop, s.pixel_size_nm)
        n = {c: sum(o.label == c for o in aset.objects) for c in CLASSES}
        print(f"  training image seed {sd}: crop {crop}, labelled {n}")
        items.append(TrainingImage(aset, s.image, s.pixel_size_nm))
    model, info = train_two_class(items, args.iterations, args.seed, args.keep_models and Path(args.keep_models) / "synthetic")
    results, t_pred = [], 0.0
    for k, sd in enumerate(test_seeds):
        s = make_particles(seed=sd, **SYN)
        t = time.perf_counter()
        pred = predict_array(model, s.image, pixel_size_nm=s.pixel_size_nm)
        t_pred += time.perf_counter() - t
        r = score_image(s.labels, s.classes, pred.labels, pred.classes, r_min=3.0)
        results.append(r)
        print("  test seed {}: truth {} predicted {} (scale {:.2f})".format(
            sd, class_counts(s.classes), class_counts(pred.classes), pred.scale), flush=True)
        if k == 0:
            hist = write_histogram(out_dir / "synthetic_histogram.png", pred.labels, pred.classes, s.image,
                                   s.pixel_size_nm, f"synthetic seed {sd}: predicted, per class")
            print(f"  per-class histogram -> {out_dir / 'synthetic_histogram.png'} {hist}")
    pooled = pool(results, SYN["pixel_size_nm"])
    print_table(f"A. synthetic, pooled over {len(test_seeds)} held-out images (centroid matching, r >= 3 px); "
                f"prediction {t_pred:.1f} s", pooled)
    return {"train": info, "pooled": pooled, "predict_s": round(t_pred, 1)}


# ----------------------------------------------------------------------------- part B

def atom_files() -> list[tuple[str, Path, Path]]:
    tifs = sorted((ATOM_DATA / "tif_data").glob("Ptporph*.tif"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    return [(p.stem, p, ATOM_DATA / "label_coordinates" / f"{p.stem}.csv") for p in tifs
            if (ATOM_DATA / "label_coordinates" / f"{p.stem}.csv").exists()]


def read_atoms(csv: Path) -> np.ndarray:
    """(N, 2) row, col of the labelled atoms (the CSV's X, Y in pixels)."""
    data = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
    return data[:, ::-1].astype(float)


def atom_labels(shape: tuple[int, int], atoms: np.ndarray, radius: float = ATOM_RADIUS) -> np.ndarray:
    """A disk of ``radius`` px per atom (label k+1); overlapping disks split by the nearest atom."""
    lab = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for k, (y, x) in enumerate(atoms):
        y0, y1 = max(int(y - radius) - 1, 0), min(int(y + radius) + 2, shape[0])
        x0, x1 = max(int(x - radius) - 1, 0), min(int(x + radius) + 2, shape[1])
        d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
        m = (d2 <= radius * radius) & (d2 < best[y0:y1, x0:x1])
        lab[y0:y1, x0:x1][m] = k + 1
        best[y0:y1, x0:x1][m] = d2[m]
    return lab


def paste_particles(image: np.ndarray, atom_lab: np.ndarray, seed: int, n_range=(5, 15), gap_px: int = 8):
    """Procedural HAADF particles on a real image, away from the labelled atoms.

    Shapes and thickness profiles come from :func:`make_particles` (no support, no noise,
    no blur), ECD ~10–30 px; peak of a median particle = 3.5–5x the image's robust standard
    deviation above the local level, PSF blur sigma 1.2 px, Poisson-like noise with the
    gain (variance / mean) estimated from the image's own pixel-to-pixel noise.
    Returns the new uint16 image and the particle labels (1..n)."""
    rng = np.random.default_rng(seed)
    a = image.astype(np.float32)
    H, W = a.shape
    d = np.diff(a, axis=1)
    sig_n = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2.0)
    gain = sig_n**2 / max(float(np.median(a)), 1.0)
    q25, q75 = np.percentile(a, [25, 75])
    amp = float(rng.uniform(3.5, 5.0)) * (q75 - q25) / 1.349
    n_target = int(rng.integers(n_range[0], n_range[1] + 1))
    s = make_particles(shape=(H, W), n=3 * n_target + 10, median_diameter_nm=18.0, sigma=0.3, pixel_size_nm=1.0,
                       mode="haadf", support="none", noise=0.0, dose=None, blur=0.0, gradient=0.0, touching=0.1,
                       clip_percentiles=(0.0, 100.0), dtype="uint16", seed=int(rng.integers(2**31)))
    thick = s.image.astype(np.float32) / 65535.0
    near_atom = ndi.binary_dilation(atom_lab > 0, iterations=gap_px)
    keep = []
    for i, sl in enumerate(ndi.find_objects(s.labels), start=1):
        if sl is None or len(keep) >= n_target:
            continue
        m = s.labels == i
        touches_border = sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == H or sl[1].stop == W
        d_px = 2 * np.sqrt(m.sum() / np.pi)
        if touches_border or near_atom[m].any() or not 10 <= d_px <= 32:
            continue
        keep.append(i)
    plab = np.zeros((H, W), np.int32)
    for k, i in enumerate(keep, start=1):
        plab[s.labels == i] = k
    peaks = [thick[plab == k].max() for k in range(1, len(keep) + 1)]
    t = np.where(plab > 0, thick, 0.0) / max(float(np.median(peaks)) if peaks else 1.0, 1e-6)
    sig = amp * ndi.gaussian_filter(t, 1.2)
    noisy = a + sig + rng.standard_normal((H, W)).astype(np.float32) * np.sqrt(gain * sig)
    return np.clip(np.round(noisy), 0, 65535).astype(np.uint16), plab


def real_sample(name: str, tif: Path, csv: Path, seed: int) -> dict:
    import tifffile

    img = tifffile.imread(tif)
    img = img if img.ndim == 2 else img[..., 0]
    atoms = read_atoms(csv)
    alab = atom_labels(img.shape, atoms)
    new, plab = paste_particles(img, alab, seed)
    labels = alab.copy()
    n_atoms = len(atoms)
    labels[plab > 0] = plab[plab > 0] + n_atoms
    classes = {k: "single_site" for k in range(1, n_atoms + 1)}
    classes.update({n_atoms + k: "particle" for k in range(1, int(plab.max()) + 1)})
    centres = {k + 1: (float(y), float(x)) for k, (y, x) in enumerate(atoms)}
    return {"name": name, "image": new, "labels": labels, "classes": classes, "centres": centres,
            "n_atoms": n_atoms, "n_particles": int(plab.max())}


# -- classical baseline for single sites -----------------------------------------------------

def _norm(img: np.ndarray) -> np.ndarray:
    from napari_nanodefect.core.segment.predict import normalise, robust_range

    lo, hi = robust_range(img)
    return normalise(img, lo, hi)


def baseline_maps(img: np.ndarray, sigma: float):
    x = _norm(img)
    return -ndi.gaussian_laplace(x, sigma) * sigma**2, ndi.gaussian_filter(x, 3.0)


def baseline_detect(log: np.ndarray, smooth: np.ndarray, thr: float, p_thr: float, min_dist: int = 3):
    """LoG peaks above ``thr`` outside the particle mask (smoothed image > ``p_thr``,
    components >= 40 px, grown by 3 px). Returns (N, 2) peaks and the particle mask."""
    pm = smooth > p_thr
    lab, n = ndi.label(pm)
    if n:
        area = np.bincount(lab.ravel())
        big = area >= 40
        big[0] = False
        pm = ndi.binary_dilation(big[lab], iterations=3)
    peaks = (log == ndi.maximum_filter(log, size=2 * min_dist + 1)) & (log > thr) & ~pm
    return np.argwhere(peaks).astype(float), pm


def _points_tp(truth: np.ndarray, pts: np.ndarray, r: float) -> int:
    if len(truth) == 0 or len(pts) == 0:
        return 0
    d = np.hypot(truth[:, None, 0] - pts[None, :, 0], truth[:, None, 1] - pts[None, :, 1])
    ri, ci = linear_sum_assignment(np.where(d <= r, d, 1e6))
    return int(np.sum(d[ri, ci] <= r))


def fit_baseline(samples: list[dict], crops: list[tuple[int, int, int, int]], r: float = 4.0) -> dict:
    """sigma, LoG threshold and particle-mask threshold maximising single-site F1 on the crops."""
    best = None
    for sigma in (1.5, 2.0, 2.5, 3.0):
        maps = [baseline_maps(s["image"], sigma) for s in samples]
        for p_thr in (0.6, 0.7, 0.8, 0.9, 1.0):
            for thr in np.linspace(0.0, 0.3, 31):
                tp = nt = npd = 0
                for s, (lg, sm), (x0, y0, x1, y1) in zip(samples, maps, crops):
                    pts, _ = baseline_detect(lg, sm, thr, p_thr)
                    inside = lambda p: (p[:, 0] >= y0) & (p[:, 0] < y1) & (p[:, 1] >= x0) & (p[:, 1] < x1)  # noqa: E731
                    tr = np.array(list(s["centres"].values())).reshape(-1, 2)
                    tr, pts = tr[inside(tr)], pts[inside(pts)]
                    tp += _points_tp(tr, pts, r)
                    nt += len(tr)
                    npd += len(pts)
                f1 = detection_scores(tp, nt, npd)["f1"]
                if best is None or f1 > best["train_f1"]:
                    best = {"sigma": sigma, "thr": float(thr), "p_thr": p_thr, "train_f1": f1}
    return best


def part_real(args, out_dir: Path) -> dict | None:
    from napari_nanodefect.core.segment.predict import predict_array
    from napari_nanodefect.core.segment.train import TrainingImage

    files = atom_files()
    if not files:
        print(f"\nB. skipped: real data not found under {ATOM_DATA} (set NANODEFECT_SHARED or put it in ../shared)")
        return None
    print(f"\nB. real HAADF-STEM Pt single-atom images ({len(files)}) with pasted procedural particles")
    samples = [real_sample(n, t, c, seed=args.seed + 7 * k) for k, (n, t, c) in enumerate(files)]
    for s in samples:
        print(f"  {s['name']:10s} {s['n_atoms']:3d} labelled atoms, {s['n_particles']:2d} pasted particles")
    if args.save_examples:
        from PIL import Image

        for s in samples[:2]:
            x = np.clip(_norm(s["image"]), 0, 1)
            Image.fromarray((x * 255).astype(np.uint8)).save(out_dir / f"real_{s['name']}_pasted.png")
    train_s = [s for s in samples if s["name"] in args.train]
    test_s = [s for s in samples if s["name"] not in args.train]
    if len(train_s) != 2:
        raise SystemExit(f"--train must name two of {[s['name'] for s in samples]}")
    items, crops = [], []
    for s in train_s:
        crop = choose_crop(s["labels"], s["classes"], 192, max_objects=25)
        aset = crop_set(s["labels"], s["classes"], crop, None)
        n = {c: sum(o.label == c for o in aset.objects) for c in CLASSES}
        print(f"  training image {s['name']}: crop {crop}, labelled {n}")
        items.append(TrainingImage(aset, s["image"], None))
        crops.append(crop)
    model, info = train_two_class(items, args.iterations, args.seed, args.keep_models and Path(args.keep_models) / "real")
    scale = float(model.config.train_scale)
    t0 = time.perf_counter()
    bl = fit_baseline(train_s, crops)
    print(f"  baseline fitted on the crops in {time.perf_counter() - t0:.1f} s: LoG sigma {bl['sigma']} px, "
          f"threshold {bl['thr']:.2f}, particle mask > {bl['p_thr']} (crop F1 {bl['train_f1']:.3f})")
    results, per_image, t_pred = [], {}, 0.0
    b_tp = b_nt = b_np = 0
    for k, s in enumerate(test_s):
        t = time.perf_counter()
        pred = predict_array(model, s["image"], scale=scale)
        t_pred += time.perf_counter() - t
        r = score_image(s["labels"], s["classes"], pred.labels, pred.classes, r_min=4.0, t_centres=s["centres"])
        results.append(r)
        lg, sm = baseline_maps(s["image"], bl["sigma"])
        pts, _ = baseline_detect(lg, sm, bl["thr"], bl["p_thr"])
        tr = np.array(list(s["centres"].values())).reshape(-1, 2)
        btp = _points_tp(tr, pts, 4.0)
        b_tp, b_nt, b_np = b_tp + btp, b_nt + len(tr), b_np + len(pts)
        pc = r["per_class"]
        per_image[s["name"]] = {
            c: detection_scores(pc[c]["tp"], pc[c]["n_truth"], pc[c]["n_pred"])["f1"] for c in CLASSES}
        per_image[s["name"]]["baseline_single_site"] = detection_scores(btp, len(tr), len(pts))["f1"]
        print(f"  {s['name']:10s} truth {class_counts(s['classes'])} predicted {class_counts(pred.classes)}; "
              f"F1 particle {per_image[s['name']]['particle']:.3f}, single_site {per_image[s['name']]['single_site']:.3f} "
              f"(LoG baseline {per_image[s['name']]['baseline_single_site']:.3f})", flush=True)
        if k == 0:
            hist = write_histogram(out_dir / "real_histogram.png", pred.labels, pred.classes, s["image"], None,
                                   f"{s['name']} + pasted particles: predicted, per class (px)")
            print(f"  per-class histogram -> {out_dir / 'real_histogram.png'} {hist}")
    pooled = pool(results, None)
    base = {**detection_scores(b_tp, b_nt, b_np), "n_truth": b_nt, "n_pred": b_np, "tp": b_tp}
    print_table(f"B. real backgrounds, pooled over {len(test_s)} held-out images (atoms: within 4 px of the labelled "
                f"position); prediction at the training scale {scale:.2f}, {t_pred:.1f} s",
                pooled, {"LoG baseline": base})
    print("     (LoG baseline row: single_site only)")
    return {"train": info, "train_images": list(args.train), "pooled": pooled, "baseline_single_site": base,
            "baseline_params": bl, "per_image_f1": per_image, "predict_s": round(t_pred, 1), "scale": scale}


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=440,
                    help="fine-tuning steps (rounded to whole epochs; a fixed amount of training, not a time budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", nargs=2, default=["Ptporph10", "Ptporph25"], help="part B training images")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest on 2 shared cores)")
    ap.add_argument("--out", default=None, help="folder for the histogram PNGs (default: a temporary folder)")
    ap.add_argument("--save-examples", action="store_true", help="also save two part-B images as PNG (in --out)")
    ap.add_argument("--keep-models", default=None, metavar="DIR", help="save the two fine-tuned models here")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_multiclass_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out: dict = {"iterations": args.iterations, "seed": args.seed, "threads": args.threads}
    if not args.skip_synthetic:
        out["synthetic"] = part_synthetic(args, out_dir)
    if not args.skip_real:
        out["real"] = part_real(args, out_dir)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(f"\ntotal {out['total_s']:.1f} s; figures in {out_dir}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
