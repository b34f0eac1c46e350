"""How much the scale could still give on the few-shot benchmark (issue 3; RESULTS.md,
eighteenth session).

    python benchmarks/bench_scale_sweep.py MODEL_DIR [MODEL_DIR ...] [--steps 3] [--factor 1.18]

For each fine-tuned model (``bench_fewshot.py --keep-model DIR``) every test image is
predicted at the scale the automatic probe chooses, then at that scale times
``factor ** k`` for k = -steps ... +steps (the whole default pipeline at a given scale).
Printed per image: F1 and the median object diameter in network pixels at each k; per
model: pooled F1 at each k, with the best k per image (an oracle that knows the boxes),
and with the rule "step up while the median diameter grows at least 1.10x per step, at
most two steps" (real particles grow with the zoom; a texture read as objects does not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from stem_catalyst_data import DATA_ROOT, load_dataset  # noqa: E402

from napari_nanodefect.core.evaluate import centroid_in_box  # noqa: E402
from napari_nanodefect.core.segment import load_model  # noqa: E402
from napari_nanodefect.core.segment.predict import predict_array  # noqa: E402


def sweep(model, samples, steps: int, factor: float) -> dict[str, list[dict]]:
    out = {}
    for s in samples:
        s0 = predict_array(model, s.image).scale
        rows = []
        for k in range(-steps, steps + 1):
            sc = s0 * factor**k
            p = predict_array(model, s.image, scale=sc)
            r = centroid_in_box(p.labels, s.boxes)
            area = np.bincount(p.labels.ravel())[1:]
            area = area[area > 0]
            d = float(np.median(2 * np.sqrt(area / np.pi))) * sc if area.size else float("nan")
            rows.append({"k": k, "tp": r["tp"], "n_pred": r["n_pred"], "n_truth": r["n_truth"], "f1": r["f1"], "d_net": d})
        out[s.name] = rows
        print(f"  {s.name:12s} scale {s0:.2f}  F1 " + " ".join(f"{w['f1']:.3f}" for w in rows)
              + "  d " + " ".join(f"{w['d_net']:.1f}" for w in rows), flush=True)
    return out


def pooled(rows: list[dict]) -> float:
    tp = sum(r["tp"] for r in rows)
    return 2 * tp / max(sum(r["n_pred"] + r["n_truth"] for r in rows), 1)


def step_up(rows: list[dict], centre: int, growth: float = 1.10, most: int = 2) -> dict:
    k = centre
    while k < min(centre + most, len(rows) - 1) and rows[k + 1]["d_net"] >= growth * rows[k]["d_net"]:
        k += 1
    return rows[k]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--train", nargs=2, default=["Cu1", "Cu3"], help="the fine-tunes' training images (left out)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--factor", type=float, default=1.18)
    args = ap.parse_args(argv)
    if not DATA_ROOT.exists():
        print(f"data not found: {DATA_ROOT}")
        return 1
    samples = [s for s in load_dataset() if s.name not in args.train]
    for path in args.models:
        print(path)
        res = sweep(load_model(path), samples, args.steps, args.factor)
        ks = range(-args.steps, args.steps + 1)
        line = "  ".join(f"k={k:+d} {pooled([r[i] for r in res.values()]):.4f}" for i, k in enumerate(ks))
        best = pooled([max(r, key=lambda w: w["f1"]) for r in res.values()])
        rule = pooled([step_up(r, args.steps) for r in res.values()])
        print(f"  pooled F1: {line}\n  best k per image (oracle) {best:.4f}   step up while objects grow {rule:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
