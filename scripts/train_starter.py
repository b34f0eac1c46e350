"""Train the shipped starter particle model (src/napari_nanodefect/models/starter-particles).

    python scripts/train_starter.py --minutes 25 [--out DIR] [--seed 0] [--init MODEL_DIR] [--lr 2e-3]
                                    [--extra-clouds FRACTION]

The shipped starter: 24.6 min from scratch (seed 0), then 24.6 min more with
``--init <that model> --lr 1e-3 --seed 1`` once the synthetic images had support clumps,
then (2026-12-06, once half the bright-field images were HRTEM on carbon) 30 min with
``--init <that model> --lr 1e-3 --seed 7 --background-size 0`` and 30 min more with
``--init <that model> --lr 5e-4 --seed 8 --background-size 0``, then (ninth session,
once half of the other bright-field images were crowded fields) 30 min with
``--init <that model> --lr 5e-4 --seed 10 --background-size 0``; ``background_size`` 3 is
set in the saved config afterwards (the weights were trained without flattening).
``--faint-haadf 0.4`` (faint HAADF draws, ``random_micrograph(faint_haadf=)``) was tried
for a further round and not kept (docs/model.md, Starter model).

Data: the project's own synthetic micrographs (core.synthetic.random_micrograph: HAADF,
bright-field, SEM and STM-like renderings, sizes 5-80 px, sparse to crowded, touching and
overlapping particles, weak to strong noise, soft particle-sized support clumps, faint
particles under HRTEM phase contrast, crowded bright-field fields), regenerated every round, plus MIT-licensed
real sets from ../shared when present:

- creme (ds25s fov200nm, COCO polygons of dislocation loops in BF-TEM, MIT),
- insitu-TEM-annealing-Ti (YOLO-segmentation polygons of defect clusters, BF-TEM, MIT).

stem-catalyst-nanoparticles (also MIT) is deliberately NOT used: it is the few-shot
benchmark set (benchmarks/bench_fewshot.py), and a starter that had seen it would make
that benchmark meaningless. Every image is rescaled so its median object is
``object_diameter_px`` wide (the scale normalisation the model relies on); polarity is
flipped at random so the model handles bright and dark particles.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import REAL  # noqa: E402

from napari_nanodefect.core.annotations import labels_to_set, objects_to_labels, read_coco  # noqa: E402,F401
from napari_nanodefect.core.io import read_image  # noqa: E402
from napari_nanodefect.core.segment.config import ModelConfig  # noqa: E402
from napari_nanodefect.core.segment.data import PatchSampler, region_from_labels  # noqa: E402
from napari_nanodefect.core.segment.rehearsal import flattened, synthetic_regions  # noqa: E402
from napari_nanodefect.core.segment.rehearsal import median_diameter as median_d  # noqa: E402
from napari_nanodefect.core.segment.model import build_model, resolve_device, save_model  # noqa: E402
from napari_nanodefect.core.segment.train import TrainProgress, fit, seed_everything  # noqa: E402

NOTICE = (ROOT / "src" / "napari_nanodefect" / "models" / "starter-particles" / "NOTICE.txt").read_text() \
    if (ROOT / "src" / "napari_nanodefect" / "models" / "starter-particles" / "NOTICE.txt").exists() else ""
DEFAULT_OUT = ROOT / "src" / "napari_nanodefect" / "models" / "starter-particles"


def tiles(img: np.ndarray, lab: np.ndarray, d0: float, name: str, rng: np.random.Generator,
          per_image: int = 8, side: int = 384, background_size: float = 0.0) -> list:
    """Up to ``per_image`` random tiles (``side`` px after scaling) of one labelled image;
    every fourth tile holds validation cells."""
    d = median_d(lab)
    if not d:
        return []
    scale = d0 / d
    img = flattened(img, d0 / scale, background_size)
    t = max(32, int(side / scale))
    H, W = img.shape
    out = []
    for k in range(per_image):
        y0 = int(rng.integers(0, max(H - t, 0) + 1))
        x0 = int(rng.integers(0, max(W - t, 0) + 1))
        sl = (slice(y0, y0 + t), slice(x0, x0 + t))
        if lab[sl].max() == 0:
            continue
        out.append(region_from_labels(img[sl], lab[sl], scale, val_fraction=0.25 if k % 4 == 0 else 0.0,
                                      seed=k, name=f"{name}#{k}"))
    return out


def real_regions(d0: float, seed: int = 0, background_size: float = 0.0) -> list:
    rng = np.random.default_rng(seed)
    regions = []
    creme = REAL / "creme" / "data" / "ds25s" / "fov200nm" / "clean.json"
    if creme.exists():
        for aset in read_coco(creme):
            img = read_image(aset.resolve_image_path(), detect_scale_bar=False).data
            lab = objects_to_labels(aset.objects, img.shape).labels
            regions += tiles(img, lab, d0, f"creme/{aset.image_path}", rng, per_image=2, background_size=background_size)
    ti = REAL / "insitu-TEM-annealing-Ti" / "Polygon Annotation Analysis"
    for txt in sorted((ti / "Annotation Data New").glob("*.txt")) if ti.exists() else []:
        jpg = ti / "Raw Images" / (txt.stem + ".jpg")
        if not jpg.exists():
            continue
        img = read_image(jpg, detect_scale_bar=False, detect_info_bar=False).data
        lab = yolo_polygons_to_labels(txt, img.shape)
        regions += tiles(img, lab, d0, f"insitu/{jpg.name}", rng, per_image=8, background_size=background_size)
    return regions


def yolo_polygons_to_labels(txt: Path, shape: tuple[int, int]) -> np.ndarray:
    from napari_nanodefect.core.annotations import ObjectAnnotation

    H, W = shape
    objs = []
    for line in txt.read_text().splitlines():
        v = line.split()
        if len(v) < 7:
            continue
        xy = np.asarray(v[1:], float).reshape(-1, 2) * [W, H]
        objs.append(ObjectAnnotation("particle", xy))
    return objects_to_labels(objs, shape).labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--rounds", type=int, default=4, help="fresh synthetic data each round")
    ap.add_argument("--synthetic", type=int, default=240, help="synthetic images per round")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--init", default=None,
                    help="start from this model folder's weights (e.g. the current starter) instead of a fresh network")
    ap.add_argument("--lr", type=float, default=2e-3, help="first round's learning rate (later rounds: lr / 2 / round)")
    ap.add_argument("--extra-clouds", type=float, default=0.0,
                    help="fraction of synthetic images given strong support clumps on top of random_micrograph's own")
    ap.add_argument("--faint-haadf", type=float, default=0.0,
                    help="fraction of HAADF synthetic images with a wide brightness spread (random_micrograph(faint_haadf=))")
    ap.add_argument("--background-size", type=float, default=3.0,
                    help="subtract the support (median filter this many particle diameters wide) before "
                         "normalising, as the model will at prediction; 0: global normalisation only")
    args = ap.parse_args()
    seed_everything(args.seed)
    dev = resolve_device(args.device)
    cfg = ModelConfig(classes=["particle"], background_size=max(args.background_size, 0.0))
    module = build_model(cfg, encoder_weights="auto")
    init_history = None
    if args.init:
        from napari_nanodefect.core.segment.model import load_model, read_config

        base = load_model(args.init, device="cpu")
        module.load_state_dict(base.module.state_dict(), strict=True)
        init_history = (read_config(args.init).training or {})
        del base
    t0 = time.perf_counter()
    real = real_regions(cfg.object_diameter_px, args.seed, cfg.background_size)
    print(f"real regions: {len(real)} ({', '.join(sorted({r.name.split('/')[0] for r in real})) or 'none'})", flush=True)
    history = []
    per_round = args.minutes * 60 / args.rounds
    for rnd in range(args.rounds):
        syn = synthetic_regions(args.synthetic, args.seed * 1000 + rnd, cfg.object_diameter_px, extra_clouds=args.extra_clouds,
                                background_size=cfg.background_size, faint_haadf=args.faint_haadf)
        regions = syn + real
        sampler = PatchSampler(regions, patch=128, seed=args.seed + rnd, scale_jitter=0.35, invert_p=0.5)
        lr = args.lr if rnd == 0 else args.lr / 2 / rnd
        print(f"round {rnd + 1}/{args.rounds}: {len(syn)} synthetic + {len(real)} real regions, lr {lr:g}", flush=True)

        def report(p: TrainProgress) -> None:
            print(f"  it {p.iteration:5d}  train {p.train_loss:.3f}  val {p.val_loss if p.val_loss is None else round(p.val_loss, 3)}"
                  f"  valF1 {p.val_f1 if p.val_f1 is None else round(p.val_f1, 3)}  {p.elapsed_s:5.0f}s", flush=True)

        # keep="best": how the shipped starter was made (before "auto" became the default)
        module, hist, it, best_it, best_loss, best_f1, _, _, _, _ = fit(
            module, cfg, regions, sampler, dev, lr=lr, batch_size=8, patch=128, time_budget_s=per_round,
            patience=10**6, validate_every_s=60.0, progress=report, keep="best")
        history.append({"round": rnd + 1, "iterations": it, "best_val_loss": best_loss, "best_val_f1": best_f1})
    cfg.train_scale = 1.0
    cfg.pixel_size_nm = None
    cfg.training = {
        "script": "scripts/train_starter.py",
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        "device": str(dev),
        "seed": args.seed,
        "data": "synthetic (random_micrograph, HRTEM on carbon in half of the BF images, crowded fields in half of the rest) + creme + insitu-TEM-annealing-Ti (MIT); stem-catalyst excluded",
        "rounds": history,
        "n_real_regions": len(real),
        "background_size": cfg.background_size,
        "faint_haadf": args.faint_haadf,
    }
    if args.init:
        cfg.training["initialised_from"] = {"folder": str(args.init), "training": init_history}
    module = module.to(memory_format=torch.contiguous_format)
    save_model(args.out, module, cfg, half=True)
    (Path(args.out) / "NOTICE.txt").write_text(NOTICE)
    size = sum(f.stat().st_size for f in Path(args.out).iterdir()) / 2**20
    print(f"saved {args.out} ({size:.1f} MiB) after {cfg.training['minutes']} min", flush=True)


if __name__ == "__main__":
    main()
