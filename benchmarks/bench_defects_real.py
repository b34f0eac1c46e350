"""Defect segmenter on real micrographs, trained on a few crops (issue 6's real-data figure).

    python benchmarks/bench_defects_real.py [--budget S] [--arch Unet|FPN] [--sets creme ti gsat] [--json out.json]

Data (../shared/data/real, never copied into the repository):

* ``creme`` (ai-atoms/creme ds25s, MIT): 16 bright-field TEM frames (512², 316L steel,
  ion-irradiated) with a binary mask of the annotated dislocation loops. Train on one
  256² crop in each of frames 1 and 2; test on frames 3–16 whole.
* ``ti`` (nomelabs insitu-TEM-annealing-Ti, MIT): 13 BF-TEM frames (2048²) of irradiated
  Ti with human polygon annotations of loops / defect clusters (YOLO-seg), heated from
  25 to 600 °C. Train on one 512² crop in each of two frames spread over the series (the
  first and the middle one, as a user would label two representative frames); test on
  the centre 1024² of the other 11.
* ``gsat`` (NIST GSAT, Ti-6Al-4V BSE SEM, 1024x768 at 111.6 nm/px) with a 1-px skeleton
  of the lath / grain boundaries (made by GSAT's classical pipeline, not by hand): the
  thin-line case. Lines are widened to 3 px for training (a physical width, 335 nm);
  train on the left 40 % (one crop), test on the right 60 %; Dice/IoU on the 3-px lines
  and the skeleton-length error.

Every set: the defect segmenter (``--arch`` Unet or FPN, resnet18, random init, masked BCE + Dice, heavy
augmentation) for ``--budget`` seconds on this machine's CPU, threshold 0.5; beside it a
classical baseline with its parameters fitted on the same crops (a smoothed global
threshold for the dark loops; a ridge filter + threshold for the boundaries).
Figures: pooled Dice and IoU over the test pixels (the paper reports IoU 0.31 for thin
line labels on real SEM). Each model also predicts its test images in float32: the Dice
and network seconds of the default reduced precision (bfloat16 on CPUs with native bf16)
are printed beside float32's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from napari_nanodefect.core.annotations.geometry import rings_to_mask
from napari_nanodefect.core.defects.segment import build_defect_model, predict_defects, train_defects

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANODEFECT_SHARED", REPO.parent / "shared"))
REAL = SHARED / "data" / "real"


def _grey(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        a = np.asarray(im.convert("L") if im.mode not in ("L", "I;16") else im)
    return a.astype(np.float32)


def load_creme():
    root = REAL / "creme" / "data" / "ds25s" / "fov200nm"
    items = []
    for i in range(1, 17):
        img = _grey(root / "imgs" / f"{i}.png")
        m = _grey(root / "masks1" / f"{i}.png") > 127
        items.append((f"creme-{i}", img, m))
    return items


def load_ti():
    root = REAL / "insitu-TEM-annealing-Ti" / "Polygon Annotation Analysis"
    frames = sorted((root / "Raw Images").glob("*.jpg"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    items = []
    for p in frames:
        img = _grey(p)
        H, W = img.shape
        rings = []
        for line in (root / "Annotation Data New" / (p.stem + ".txt")).read_text().splitlines():
            v = line.split()
            if len(v) < 7:
                continue
            xy = np.asarray(v[1:], float).reshape(-1, 2) * [W, H]
            rings.append(xy)
        mask = np.zeros((H, W), bool)
        for r in rings:
            mask |= rings_to_mask([r], (H, W))
        items.append((p.stem.replace("Chip-4-Heat-1-", "ti-"), img, mask))
    return items


def load_gsat():
    root = REAL / "grain-size-analysis-tools" / "ex_segmentation" / "sem_polished"
    img = np.asarray(Image.open(root / "sem_alpha_beta_ti_6al_4v.tif").convert("L"), np.float32)
    skel = np.asarray(Image.open(root / "sem_alpha_beta_ti_6al_4v_segmented.tif").convert("L")) > 127
    return img, skel


def scores(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict:
    if valid is not None:
        pred, truth = pred[valid], truth[valid]
    tp = float(np.count_nonzero(pred & truth))
    fp = float(np.count_nonzero(pred & ~truth))
    fn = float(np.count_nonzero(~pred & truth))
    return {"dice": 2 * tp / max(2 * tp + fp + fn, 1), "iou": tp / max(tp + fp + fn, 1), "tp": tp, "fp": fp, "fn": fn}


def pooled(parts: list[dict]) -> dict:
    tp, fp, fn = (sum(p[k] for p in parts) for k in ("tp", "fp", "fn"))
    return {"dice": 2 * tp / max(2 * tp + fp + fn, 1), "iou": tp / max(tp + fp + fn, 1)}


ARCH = "Unet"


def _train(images, masks, annotated, budget, seed, line_width_px=None):
    model = build_defect_model(["defect"], arch=ARCH, encoder="resnet18", encoder_weights=None)
    t0 = time.perf_counter()
    model, info = train_defects(images, [m[None] for m in masks], ["defect"], annotated=annotated, epochs=None,
                                time_budget_s=budget, seed=seed, model=model, line_width_px=line_width_px)
    return model, info, time.perf_counter() - t0


def _dark_threshold_fit(images, masks, annotated):
    """Classical baseline for dark loops: Gaussian-smoothed, background-flattened image
    below a threshold; sigma and threshold chosen to maximise Dice on the crops."""
    best = (-1.0, None)
    for sigma in (1.0, 2.0):
        feats = [_dark_feature(im, sigma) for im in images]
        vals = np.concatenate([f[a] for f, a in zip(feats, annotated)])
        for q in np.linspace(1, 40, 40):
            t = np.percentile(vals, q)
            parts = [scores(f < t, m, a) for f, m, a in zip(feats, masks, annotated)]
            d = pooled(parts)["dice"]
            if d > best[0]:
                best = (d, (sigma, q))
    return best[1]


def _dark_feature(im, sigma):
    return ndi.gaussian_filter(im, sigma) - ndi.gaussian_filter(im, 25)


def _predict(model, im, precision):
    """Probabilities of the first class and the seconds the network pass took, in
    ``precision`` ("auto": bfloat16 on CPUs with native bf16; "fp32")."""
    model.precision = precision
    t0 = time.perf_counter()
    prob = predict_defects(model, im)[0]
    return prob, time.perf_counter() - t0


def _precision_name(model) -> str:
    model.precision = "auto"
    low = model.autocast_dtype()
    return "float32" if low is None else str(low).removeprefix("torch.")


def run_area_set(name, train_items, test_items, crops, budget, seed):
    images = [it[1] for it in train_items]
    masks = [it[2] for it in train_items]
    annotated = []
    for im, (y0, x0, s) in zip(images, crops):
        a = np.zeros(im.shape, bool)
        a[y0:y0 + s, x0:x0 + s] = True
        annotated.append(a)
    model, info, secs = _train(images, masks, annotated, budget, seed)
    sigma, q = _dark_threshold_fit(images, masks, annotated)
    vals = np.concatenate([_dark_feature(im, sigma)[a] for im, a in zip(images, annotated)])
    thr = np.percentile(vals, q)
    ours, ours32, base, per = [], [], [], {}
    t0 = time.perf_counter()
    t_net = {"auto": 0.0, "fp32": 0.0}
    for n, im, m in test_items:
        prob32, dt = _predict(model, im, "fp32")
        t_net["fp32"] += dt
        ours32.append(scores(prob32 >= 128, m))
        prob, dt = _predict(model, im, "auto")
        t_net["auto"] += dt
        s = scores(prob >= 128, m)
        b = scores(_dark_feature(im, sigma) < thr, m)
        ours.append(s)
        base.append(b)
        per[n] = {"dice": round(s["dice"], 3), "iou": round(s["iou"], 3), "baseline_dice": round(b["dice"], 3)}
        print(f"  {name:6s} {n:16s} Dice {s['dice']:.3f} IoU {s['iou']:.3f}   (threshold baseline Dice {b['dice']:.3f})",
              flush=True)
    res = {"train": [it[0] for it in train_items], "crops": crops, "n_test": len(test_items),
           "annotated_px": int(sum(a.sum() for a in annotated)), "train_seconds": round(secs, 1),
           "steps": info["steps"], "predict_seconds": round(time.perf_counter() - t0, 1),
           "precision": _precision_name(model), "network_seconds": {k: round(v, 2) for k, v in t_net.items()},
           "ours": pooled(ours), "ours_fp32": pooled(ours32), "baseline": pooled(base), "per_image": per}
    return res


def run_gsat(budget, seed, width_px=3.0):
    from napari_nanodefect.core.measure.skeleton import skeleton_table

    img, skel = load_gsat()
    H, W = img.shape
    # the info bar (Zeiss databar at the bottom) is excluded from everything
    from napari_nanodefect.core.infobar import detect_info_bar

    bar = detect_info_bar(img.astype(np.uint8))
    y1 = int(bar["y0"]) if bar else H
    r = width_px / 2
    yy, xx = np.mgrid[-2:3, -2:3]
    disk = (yy ** 2 + xx ** 2) <= r * r + 1e-9
    target = ndi.binary_dilation(skel, disk)
    split = int(0.4 * W)
    ann = np.zeros((H, W), bool)
    ann[:y1, :split] = True
    test = np.zeros((H, W), bool)
    test[:y1, split + 16:] = True
    model, info, secs = _train([img], [target], [ann], budget, seed, line_width_px=width_px)
    t0 = time.perf_counter()
    prob32, t32 = _predict(model, img, "fp32")
    s32 = scores(prob32 >= 128, target, test)
    prob, tauto = _predict(model, img, "auto")
    pred = prob >= 128
    s = scores(pred, target, test)
    # classical: ridge (dark valleys or bright ridges, whichever fits the crop) + threshold fitted on the crop
    from skimage.filters import sato

    best = (-1.0, None)
    for black in (True, False):
        f = sato(img, sigmas=(1, 2), black_ridges=black)
        for q in np.linspace(50, 99, 50):
            t = np.percentile(f[ann], q)
            d = scores(f >= t, target, ann)["dice"]
            if d > best[0]:
                best = (d, (black, q, t))
    black, q, t = best[1]
    f = sato(img, sigmas=(1, 2), black_ridges=black)
    b = scores(f >= t, target, test)
    # skeleton length on the test part, in nm
    ps = 111.6
    sub = (slice(0, y1), slice(split + 16, W))
    _, s_true = skeleton_table(skel[sub][None], ps, class_names=["gb"])
    _, s_pred = skeleton_table(pred[sub][None], ps, class_names=["gb"])
    err = s_pred["total_length_nm"] / s_true["total_length_nm"] - 1
    print(f"  gsat   right 60 %          Dice {s['dice']:.3f} IoU {s['iou']:.3f}   (ridge-filter baseline Dice "
          f"{b['dice']:.3f} IoU {b['iou']:.3f}); skeleton length {s_pred['total_length_nm'] / 1e3:.0f} um vs "
          f"{s_true['total_length_nm'] / 1e3:.0f} um ({err:+.1%})", flush=True)
    return {"train_seconds": round(secs, 1), "steps": info["steps"], "predict_seconds": round(time.perf_counter() - t0, 1),
            "precision": _precision_name(model), "network_seconds": {"auto": round(tauto, 2), "fp32": round(t32, 2)},
            "ours": {"dice": s["dice"], "iou": s["iou"]}, "ours_fp32": {"dice": s32["dice"], "iou": s32["iou"]},
            "baseline": {"dice": b["dice"], "iou": b["iou"]},
            "length_error": err, "line_width_px": width_px, "annotated_px": int(ann.sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per set (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", nargs="+", default=["creme", "ti", "gsat"], choices=["creme", "ti", "gsat"])
    ap.add_argument("--arch", default="Unet", choices=["FPN", "Unet"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    global ARCH
    ARCH = args.arch
    if not REAL.exists():
        print(f"data not found: {REAL}")
        return 1
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out: dict = {"budget": args.budget, "arch": args.arch}
    if "creme" in args.sets:
        items = load_creme()
        out["creme"] = run_area_set("creme", items[:2], items[2:], [(128, 128, 256), (128, 128, 256)],
                                    args.budget, args.seed)
    if "ti" in args.sets:
        items = load_ti()
        # two labelled frames spread over the heating series (its first and its middle frame)
        k = [0, len(items) // 2]
        test = [(n, im[512:1536, 512:1536], m[512:1536, 512:1536]) for i, (n, im, m) in enumerate(items) if i not in k]
        out["ti"] = run_area_set("ti", [items[i] for i in k], test, [(768, 768, 512), (768, 768, 512)], args.budget,
                                 args.seed)
    if "gsat" in args.sets:
        out["gsat"] = run_gsat(args.budget, args.seed)
    print("\nset     train crops px   steps  train s   Dice   IoU    baseline Dice/IoU")
    for k in ("creme", "ti", "gsat"):
        if k in out:
            r = out[k]
            print(f"{k:6s}  {r['annotated_px']:14d}  {r['steps']:5d}  {r['train_seconds']:7.1f}  "
                  f"{r['ours']['dice']:.3f}  {r['ours']['iou']:.3f}   {r['baseline']['dice']:.3f}/{r['baseline']['iou']:.3f}")
    print("paper (Boiko et al. 2021): IoU 0.31 for thin line labels on real SEM")
    print("\nthe same models predicted in float32 (network seconds over the test images: reduced precision / float32)")
    for k in ("creme", "ti", "gsat"):
        if k in out:
            r = out[k]
            t = r["network_seconds"]
            print(f"{k:6s}  {r['precision']:8s} Dice {r['ours']['dice']:.3f}  float32 Dice {r['ours_fp32']['dice']:.3f}   "
                  f"{t['auto']:.2f} s / {t['fp32']:.2f} s = {t['fp32'] / max(t['auto'], 1e-9):.2f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
