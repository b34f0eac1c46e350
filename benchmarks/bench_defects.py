"""Defect segmenter on HIDDEN line defects (revealed only by particle ordering).

    python benchmarks/bench_defects.py [--budget 60] [--size 256] [--train 6] [--test 3]
                                       [--arch Unet] [--encoder resnet18] [--threshold 0.5] [--json out.json]

Protocol:
- images are :func:`~napari_nanodefect.core.defects.simulate.ordering_sample` micrographs
  (Monte Carlo deposition of 3 nm particles at 0.5 nm/px on random line defects,
  ``random_defects(kind="lines")``, 3 px = half a particle diameter wide, as Boiko et al.
  dilated their line annotations). The lines themselves are invisible: only the
  particles that stuck to them show where they run;
- train a ``grain_boundary`` channel on ``--train`` simulations (seeds 0, 1, ...) for
  ``--budget`` seconds of CPU (random init, full augmentation);
- choose the hysteresis low threshold on ``--val`` other simulations (seeds 2000, ...) with
  :func:`~napari_nanodefect.core.defects.segment.calibrate_thresholds` (the length of the
  thresholded skeleton closest to the truth; stored in the model like a user's calibration);
- predict ``--test`` held-out simulations (seeds 1000, 1001, ...), threshold at ``--threshold``
  with that hysteresis and measure with :func:`~napari_nanodefect.core.defects.segment.defect_statistics`;
- report per image: true centre-line length (polyline geometry clipped to the image),
  predicted skeleton length and its relative error, Dice/IoU of the mask, plus the
  length measured on the true mask (the skeleton code's own error) and, for scale, the
  Dice of the true mask dilated to 3x its width (a tolerant overlap figure).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage as ndi

from napari_nanodefect.core.defects.segment import (
    build_defect_model,
    calibrate_thresholds,
    defect_statistics,
    predict_defects,
    thresholds_from_config,
    train_defects,
)
from napari_nanodefect.core.defects.simulate import length_inside, ordering_sample, random_defects

CLASSES = ["grain_boundary"]


inside_length = length_inside


def sample(seed: int, size: int):
    image, _, defects, ps = ordering_sample((size, size), ordered=True, seed=seed)
    # replay ordering_sample's generator to get the line geometry it drew
    rng = np.random.default_rng(seed)
    n_lines = max(2, round(10 * np.sqrt(size * size) / 512))
    dm, geom = random_defects((size, size), "lines", n=n_lines, rng=rng, width_px=3)
    assert np.array_equal(dm, defects)
    return image, defects, ps, inside_length(geom["lines"], (size, size))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train", type=int, default=6)
    ap.add_argument("--test", type=int, default=3)
    ap.add_argument("--val", type=int, default=3, help="held-out simulations that calibrate the hysteresis threshold")
    ap.add_argument("--arch", default="Unet")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    train = [sample(s, args.size) for s in range(args.train)]
    test = [sample(1000 + s, args.size) for s in range(args.test)]
    val = [sample(2000 + s, args.size) for s in range(args.val)]
    print(f"simulated {len(train)} + {len(test)} images of {args.size}^2 in {time.perf_counter() - t0:.1f} s")
    model = build_defect_model(CLASSES, arch=args.arch, encoder=args.encoder, encoder_weights=None)
    model, info = train_defects([t[0] for t in train], [t[1][None] for t in train], CLASSES, model=model,
                                time_budget_s=args.budget, patch=args.patch, batch_size=8, seed=0,
                                pixel_size_nm=train[0][2], line_width_px=3)
    print(f"trained {args.arch}/{args.encoder}: {info['steps']} steps ({info['epochs']:.1f} epochs) "
          f"in {info['seconds']:.1f} s, final loss {info['final_loss'] or float('nan'):.3f}")
    lows = [None]
    if val:
        cal = calibrate_thresholds(model, [v[0] for v in val], [v[1][None] for v in val], threshold=args.threshold,
                                   point_classes=())
        _, lows = thresholds_from_config(model.config, CLASSES)
        errs = cal["classes"][CLASSES[0]]["length_error"]
        print(f"calibrated on {len(val)} validation simulations (seeds 2000...): hysteresis low threshold {lows[0]} "
              f"(validation length error by low threshold: "
              + ", ".join(f"{k:.2f}: {v:+.1%}" for k, v in errs.items()) + ")")
    rows = []
    for k, (img, truth, ps, true_px) in enumerate(test):
        prob = predict_defects(model, img)
        _, s_plain = defect_statistics(prob, CLASSES, ps, threshold=args.threshold, point_classes=(), min_area_px=10)
        _, s = defect_statistics(prob, CLASSES, ps, threshold=args.threshold, point_classes=(), min_area_px=10,
                                 low_threshold=lows)
        _, s_true = defect_statistics(truth[None], CLASSES, ps, point_classes=())
        from napari_nanodefect.core.defects.segment import threshold_masks

        pred = threshold_masks(prob, args.threshold, lows)[0]
        inter = int((pred & truth).sum())
        dice = 2 * inter / max(1, pred.sum() + truth.sum())
        iou = inter / max(1, (pred | truth).sum())
        wide = ndi.binary_dilation(truth, iterations=3)
        dice_wide = 2 * int((pred & wide).sum()) / max(1, pred.sum() + wide.sum())
        true_nm = true_px * ps
        row = {"seed": 1000 + k, "true_length_nm": true_nm,
               "pred_length_nm": s["total_length_nm"],
               "length_error": s["total_length_nm"] / true_nm - 1,
               "length_error_plain_threshold": s_plain["total_length_nm"] / true_nm - 1,
               "true_mask_length_error": s_true["total_length_nm"] / true_nm - 1,
               "n_pred_defects": s["n_defects"], "dice": dice, "iou": iou, "dice_3x_wide": dice_wide}
        rows.append(row)
        print(f"  seed {row['seed']}: true {true_nm:7.0f} nm  pred {row['pred_length_nm']:7.0f} nm  "
              f"error {row['length_error']:+.1%} (plain threshold {row['length_error_plain_threshold']:+.1%}, "
              f"true mask {row['true_mask_length_error']:+.1%})  "
              f"pieces {row['n_pred_defects']:3d}  Dice {dice:.3f}  IoU {iou:.3f}  Dice(3x wide) {dice_wide:.3f}")
    agg = {"mean_abs_length_error": float(np.mean([abs(r["length_error"]) for r in rows])),
           "pooled_length_error": float(sum(r["pred_length_nm"] for r in rows) / sum(r["true_length_nm"] for r in rows) - 1),
           "mean_dice": float(np.mean([r["dice"] for r in rows])),
           "mean_iou": float(np.mean([r["iou"] for r in rows])),
           "pooled_length_error_plain_threshold": float(
               sum((1 + r["length_error_plain_threshold"]) * r["true_length_nm"] for r in rows)
               / sum(r["true_length_nm"] for r in rows) - 1),
           "low_threshold": lows[0]}
    print(f"mean |length error| {agg['mean_abs_length_error']:.1%}, pooled length error "
          f"{agg['pooled_length_error']:+.1%} (plain threshold {agg['pooled_length_error_plain_threshold']:+.1%}), mean Dice {agg['mean_dice']:.3f}, mean IoU {agg['mean_iou']:.3f}")
    out = {"args": vars(args), "training": {k: v for k, v in info.items() if k != "losses"}, "images": rows, **agg}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
