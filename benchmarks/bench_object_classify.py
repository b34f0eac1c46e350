"""Per-object classifier engines on real atomic-resolution STEM patches (issue 7).

    python benchmarks/bench_object_classify.py [--cnn-epochs 60] [--json out.json]

Data: ../shared/data/real/defect-classification-in-stem-images (internal testing only,
never copied): 64x64 HAADF-STEM patches of CdTe (7 classes x 10: bulk, LC, stacking
faults SF1/SF2, twin boundary, vacancy, interstitial) and SrTiO3 (4 classes, 4-5 each),
class in the file name. Each patch is one "object".

Stratified k-fold cross-validation (k = 5, or the smallest class size) of
- the random forest (500 trees, class-balanced) on Groschner et al.'s five features
  (FFT radial-profile mean/std/centre of mass, real-space mean/std),
- the same forest on the extended features (plus the 16-bin radial profile, intensity
  percentiles, gradient),
- the CNN engine (resnet10t, class-balanced augmented training, ``--cnn-epochs``),
reported as balanced accuracy (mean ± std over folds) beside Groschner's 86 %.
Caveat (from the data's README): the patches look like shifted crops of a few images, so
neighbouring patches can fall in different folds; the figures are likely optimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_nanodefect.core.objects.classifier import cross_validate

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANODEFECT_SHARED", REPO.parent / "shared"))
ROOT = SHARED / "data" / "real" / "defect-classification-in-stem-images" / "Image Data"


def load(ds: str):
    files = sorted((ROOT / ds).glob("*.tif"))
    names = [re.sub(r"_\d+$", "", f.stem) for f in files]
    classes = sorted(set(names))
    X = np.stack([np.asarray(Image.open(f).convert("L"), np.float32) / 255 for f in files])
    return X, np.array([classes.index(n) for n in names]), classes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnn-epochs", type=int, default=60)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not ROOT.exists():
        print(f"data not found: {ROOT}")
        return 1
    out = {}
    for ds in ("DataSet_CdTe", "DataSet_STO"):
        X, y, classes = load(ds)
        print(f"{ds}: {len(X)} patches, classes {dict(zip(classes, np.bincount(y).tolist()))}")
        res = {}
        for name, kw in (("rf_groschner", {"engine": "rf", "feature_set": "groschner"}),
                         ("rf_extended", {"engine": "rf", "feature_set": "extended"}),
                         ("cnn", {"engine": "cnn", "epochs": args.cnn_epochs})):
            t = time.perf_counter()
            r = cross_validate(X, y, classes, k=5, **kw)
            res[name] = {"balanced_accuracy": r["balanced_accuracy"], "std": r["std"], "k": r["k"],
                         "pooled": r["pooled_balanced_accuracy"], "seconds": time.perf_counter() - t,
                         "confusion": r["confusion"].tolist()}
            print(f"  {name:13s} balanced accuracy {r['balanced_accuracy']:.3f} ± {r['std']:.3f} "
                  f"({r['k']}-fold; pooled {r['pooled_balanced_accuracy']:.3f}; {time.perf_counter() - t:.1f} s)",
                  flush=True)
        out[ds] = res
    print("Groschner et al. 2021 (random forest, HRTEM particles): 86 % balanced accuracy")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
