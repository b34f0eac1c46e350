"""The ``nanodefect`` command: every headless job of napari-nanodefect.

Sub-commands (``nanodefect COMMAND --help`` for each):

- ``info FILE... [--json]``: pixel size and where it came from, vendor, analysed plane,
  info bar (valid region) and scale bar.
- ``convert IN --to coco|labelme|labels --out OUT``: LabelMe <-> COCO <-> label TIFFs.
- ``train ANN.json... --out MODEL_DIR``: fine-tune the starter model (or train one) on crops.
- ``train --task defects|classify ...``: a defect segmenter from LabelMe lines/polygons/points,
  or an image classifier (ordered vs disordered) from class folders, a tag CSV or LabelMe flags.
- ``predict MODEL_DIR IMAGE... --out DIR``: tiled whole-image segmentation, label TIFF,
  LabelMe and COCO outputs; with a defect model ``<stem>_defects.tif`` + ``<stem>_defects.csv``;
  with a classifier ``classification.csv`` + probability maps.
- ``measure LABELS.tif|ANN.json --out DIR``: particle table (nm), population summary, histogram.
- ``skeleton MASK.tif --out DIR``: line-defect skeleton lengths (nm), branches, junctions.
- ``evaluate --truth T --pred P``: detection/segmentation scores of a prediction against the truth.
- ``models [--default]``: the shipped models.
- ``demo [--out DIR]``: runs the pipeline on a built-in synthetic micrograph.

Errors in the user's input print one line ``nanodefect: error: FILE: problem`` and exit
with status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .core.errors import NanodefectError


def _fmt_info(info: dict) -> str:
    ps = info["pixel_size_nm"]
    lines = [
        f"file:          {info['path']}",
        f"shape, dtype:  {tuple(info['shape'])} {info['dtype']}  ({info['plane_rule']})",
        f"vendor:        {info['vendor'] or 'unknown'}",
        f"pixel size:    {'unknown (type it in: --pixel-size NM)' if ps is None else f'{ps:.6g} nm'}"
        + (f"  from {info['pixel_size_source']}" if info["pixel_size_source"] else ""),
    ]
    vr = info["valid_region"]
    bar = info.get("info_bar")
    lines.append(
        f"valid region:  rows {vr['y0']}:{vr['y1']}, cols {vr['x0']}:{vr['x1']}"
        + (f"  (info bar of {bar['height']} rows: {bar['method']})" if bar else "  (no info bar)")
    )
    sb = info.get("scale_bar")
    if sb:
        label = f"{sb['value']:g} {sb['unit']}" if sb.get("value") else f"label not read (OCR {sb.get('ocr')}); type the number"
        lines.append(f"scale bar:     {sb['length_px']:.1f} px at row {sb['y0']}, {label}")
    else:
        lines.append("scale bar:     none found")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from .core.io import read_image

    infos = []
    for f in args.files:
        m = read_image(f, plane=args.plane, pixel_size_nm=args.pixel_size)
        infos.append(m.info())
    if args.json:
        out = infos[0] if len(infos) == 1 else infos
        if not args.metadata:
            for i in infos:
                i.pop("metadata", None)
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(_fmt_info(i) for i in infos))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .core.annotations.convert import convert

    written = convert(args.input, args.to, args.out, images=args.images)
    for p in written:
        print(p)
    return 0


def _train_defects(args: argparse.Namespace) -> int:
    from .core.defects.files import train_defect_files

    base = None if str(args.base).lower() in ("starter", "none") else args.base
    budget = args.time_budget if args.epochs is None else None
    last = [0.0]

    def report(step, total):
        import time

        now = time.monotonic()
        if not args.quiet and (now - last[0] > 2.0 or step == total):
            last[0] = now
            print(f"step {step}" + (f"/{total}" if total else ""), flush=True)

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    res = train_defect_files(args.annotations, args.out, classes=classes, images=args.images,
                             line_width_nm=args.line_width_nm, line_width_px=args.line_width_px, epochs=args.epochs,
                             time_budget_s=budget, device=args.device, base=base, arch=args.arch,
                             encoder=args.encoder or "resnet18", seed=args.seed, progress=report)
    cfg = res.model.config
    width = cfg.get("line_width_px")
    print(f"saved {res.path}: defect model ({cfg['arch']}/{cfg['encoder']}), classes {res.model.classes}, "
          f"{res.info['steps']} steps in {res.info['seconds']:.1f} s, final loss {res.info['final_loss']:.3f}, "
          f"pixel size {cfg.get('pixel_size_nm') or 'unknown'} nm, line width "
          f"{'-' if width is None else f'{width:.2f} px'}")
    if res.ignored:
        print(f"ignored labels (not defect classes): {res.ignored}")
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    import numpy as np

    from .core.defects.files import train_classifier_files

    budget = args.time_budget if args.epochs is None else None
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    clf, hist, path = train_classifier_files(args.annotations, args.out, classes=classes, epochs=args.epochs,
                                             time_budget_s=budget, seed=args.seed,
                                             encoder=args.encoder or "resnet10t")
    acc = float(np.mean(hist["acc"][-20:])) if hist["acc"] else float("nan")
    print(f"saved {path}: image classifier, classes {clf.classes}, {hist['n_images']} images, {hist['steps']} steps "
          f"in {hist['seconds']:.1f} s, recent training accuracy {acc:.2f}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .core.segment.train import train

    if args.task == "defects":
        return _train_defects(args)
    if args.task == "classify":
        return _train_classifier(args)

    base = {"starter": "starter", "none": None}.get(str(args.base).lower(), args.base)
    budget = args.time_budget if args.epochs is None else None

    def report(p) -> None:
        val = "" if p.val_loss is None else f"  val loss {p.val_loss:.3f}"
        f1 = "" if p.val_f1 is None else f"  val F1 {p.val_f1:.3f}"
        eta = "" if p.eta_s is None else f"  ETA {p.eta_s:4.0f} s"
        print(f"epoch {p.epoch:6.2f}  it {p.iteration:5d}  loss {p.train_loss:.3f}{val}{f1}{eta}{'  *' if p.improved else ''}",
              flush=True)

    res = train(args.annotations, args.out, base=base, images=args.images, time_budget_s=budget, epochs=args.epochs,
                device=args.device, seed=args.seed, progress=None if args.quiet else report,
                background_size=args.background_size, keep=args.keep, rehearsal=args.rehearsal, paste=args.paste)
    s = res.summary
    kept = "final weights" if s["kept"] == "last" else f"best checkpoint (iteration {s['best_iteration']})"
    print(f"saved {res.path}: {s['iterations']} iterations in {s['loop_seconds']:.1f} s on {s['device']}, "
          f"kept the {kept}, best val loss {s['best_val_loss'] if s['best_val_loss'] is None else round(s['best_val_loss'], 4)}, "
          f"best val F1 {s['best_val_f1'] if s['best_val_f1'] is None else round(s['best_val_f1'], 3)}, "
          f"classes {res.model.config.classes}"
          + (f", {s['rehearsal_images']} synthetic rehearsal images" if s.get("rehearsal_images") else ""))
    return 0


def _progress_bars(args: argparse.Namespace, bars: list):
    from tqdm import tqdm

    def on_image(path, i, n):
        if args.quiet:
            return None
        bar = tqdm(total=0, desc=f"[{i + 1}/{n}] {path.name}", unit="tile", leave=True)
        bars.append(bar)

        def cb(done, total):
            if bar.total != total:
                bar.reset(total=total)
            bar.n = done
            bar.refresh()
        return cb
    return on_image


def _predict_defects(args: argparse.Namespace) -> int:
    from .core.defects.files import predict_defect_files

    bars: list = []
    kw = {}
    if args.tile:
        kw["tile"] = args.tile
    if args.overlap is not None:
        kw["overlap"] = args.overlap
    results, summary = predict_defect_files(args.model, args.images, args.out, pixel_size_nm=args.pixel_size,
                                            threshold=args.threshold, low_threshold=args.low_threshold,
                                            device=args.device, precision=args.precision,
                                            probabilities=args.probabilities, on_image=_progress_bars(args, bars), **kw)
    for b in bars:
        b.close()
    for r in results:
        unit = r.summary["length_unit"]
        per = ", ".join(f"{c} {d['n_defects']}" + (f" ({d['total_length_nm']:.4g} {unit})" if "total_length_nm" in d
                                                    else "") for c, d in r.summary["per_class"].items())
        print(f"{r.image.name}: {per} -> {r.tiff.name}, {r.csv.name}")
    print(f"summary: {summary}")
    return 0


def _predict_classifier(args: argparse.Namespace) -> int:
    from .core.defects.files import predict_classifier_files

    table, csv = predict_classifier_files(args.model, args.images, args.out)
    for _, row in table.iterrows():
        probs = "  ".join(f"{k[2:]} {row[k]:.3f}" for k in table.columns if k.startswith("p_"))
        print(f"{row['image']}: {row['predicted']}  ({probs})")
    print(f"table: {csv}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .core.segment.model import load_model
    from .core.segment.outputs import predict_files

    if args.model not in ("starter", "default"):
        from .core.defects.files import model_task

        task = model_task(args.model)
        if task == "defects":
            return _predict_defects(args)
        if task == "classify":
            return _predict_classifier(args)
    model = load_model(None if args.model in ("starter", "default") else args.model, device=args.device,
                       precision=args.precision)
    scale = "auto" if args.scale == "auto" else float(args.scale)
    bars: list = []
    on_image = _progress_bars(args, bars)

    kwargs = {"scale": scale}
    if args.pixel_size is not None:
        kwargs["pixel_size_nm"] = args.pixel_size
    if args.tile:
        kwargs["tile_size"] = args.tile
    if args.overlap is not None:
        kwargs["overlap"] = args.overlap
    if args.tta:
        kwargs["tta"] = True
    if args.zoom:
        kwargs["zoom"] = True
    results, coco = predict_files(model, args.images, args.out, on_image=on_image, **kwargs)
    for b in bars:
        b.close()
    for r in results:
        print(f"{r.image.name}: {r.count} objects (scale {r.prediction.scale:.3g}, {r.prediction.scale_source}) -> "
              f"{r.labels.name}, {r.labelme.name}")
    print(f"COCO: {coco}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from .core.measure.files import measure_file

    res = measure_file(args.input, args.out, image=args.image, pixel_size_nm=args.pixel_size,
                       images=args.images, bins=args.bins, edge_correction=args.edge_correction,
                       refine=args.refine)
    s = res["summary"]
    for r in [s.get("refine")] + [i.get("refine") for i in s.get("per_image", [])]:
        if r:
            print(r["message"])
    def nm(v):
        return "n/a" if v is None else f"{v:.3g} nm"
    print(f"{s['count']} particles ({s.get('count_edge_touching', 0)} touching the edge), "
          f"d10/d50/d90 {nm(s['d10_nm'])} / {nm(s['d50_nm'])} / {nm(s['d90_nm'])}, "
          f"density {s['density_per_um2'] if s['density_per_um2'] is None else format(s['density_per_um2'], '.4g')} /um^2")
    for key in ("particles", "summary_json", "histogram"):
        if res.get(key):
            print(res[key])
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    """Ordering of the particles of a label image / annotation: Clark–Evans and Ripley's L."""
    from .core.defects.order import order_statistics
    from .core.measure.files import load_measure_inputs
    from .core.measure.particles import measure_particles, region_bounds

    rows = []
    for inp in load_measure_inputs(args.input, image=args.image, pixel_size_nm=args.pixel_size, images=args.images):
        regions = region_bounds(inp.labels.shape, inp.regions)
        if len(regions) != 1:
            raise NanodefectError(f"{inp.name}: order statistics need one analysed rectangle, found {len(regions)} crops")
        table = measure_particles(inp.labels, inp.pixel_size_nm, regions=regions)
        pts = table[["centroid_y_px", "centroid_x_px"]].to_numpy(float)
        st = order_statistics(pts, regions[0], pixel_size_nm=inp.pixel_size_nm, seed=args.seed)
        st["image"] = inp.name
        rows.append(st)
        if not args.json:
            r = st.get("clark_evans_R")
            print(f"{inp.name}: {st['n']} particles, Clark-Evans R {r if r is None else format(r, '.3f')} "
                  f"(p {st.get('clark_evans_p') if st.get('clark_evans_p') is None else format(st['clark_evans_p'], '.2g')})"
                  f", L(r)-r outside the CSR envelope: {st.get('outside_envelope')} -> {st.get('verdict')}")
    if args.json:
        curves = ("r_px", "r_nm", "L_minus_r_px", "L_minus_r_nm", "envelope_lo_px", "envelope_hi_px",
                  "envelope_lo_nm", "envelope_hi_nm")
        print(json.dumps([{k: v for k, v in st.items() if args.curves or k not in curves} for st in rows], indent=2))
    return 0


def cmd_skeleton(args: argparse.Namespace) -> int:
    from .core.measure.skeleton import measure_skeleton_file

    s = measure_skeleton_file(args.mask, args.out, pixel_size_nm=args.pixel_size, prune_nm=args.prune)
    print(f"{s['n_defects']} defects, total length {s['total_length_nm']:.4g} nm, "
          f"length density {s['length_density_nm_per_um2']:.4g} nm/um^2")
    print(s["defects_csv"])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.atomic import atomic_write_text
    from .core.evaluate import evaluate_files, format_evaluation

    res = evaluate_files(args.truth, args.pred, iou_threshold=args.iou, images=args.images)
    text = json.dumps(res, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else format_evaluation(res))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .core.segment.model import default_model_dir, read_config

    path = default_model_dir()
    if args.default:
        print(path)
        return 0
    cfg = read_config(path)
    print(f"starter (default): {path}\n  {cfg.arch}/{cfg.encoder}, classes {cfg.classes}, objects at ~{cfg.object_diameter_px:g} px")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), seed=args.seed, time_budget_s=args.time_budget)
    return 0


def cmd_classify_train(args: argparse.Namespace) -> int:
    from .core.objects.classifier import save_object_classifier
    from .core.objects.files import collect_labelled_objects, format_cv, train_from_objects

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    objs = collect_labelled_objects(args.sources, classes=classes, size=args.crop_size, pad=args.pad,
                                    image=args.image, images=args.images, default_class=args.ignore_class)
    for path, why in objs.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    counts = ", ".join(f"{c} {n}" for c, n in objs.counts().items())
    kind = "patches" if objs.masks is None else "objects with their shapes"
    print(f"{len(objs.targets)} {kind} from {len(set(objs.groups))} image(s): {counts}")
    kw = {"feature_set": args.features} if args.engine == "rf" else {"epochs": args.epochs}
    model, res = train_from_objects(objs, engine=args.engine, cv=args.cv, grouped=args.grouped, pad=args.pad,
                                    seed=args.seed, **kw)
    if res is not None:
        print(format_cv(res))
    path = save_object_classifier(model, args.out)
    print(f"saved {path}: {args.engine} object classifier, classes {model.classes}")
    return 0


def cmd_classify_apply(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .core.objects.files import classify_files, classify_patches

    if args.patches:
        from .core.atomic import atomic_write_text

        table = classify_patches(args.model, args.inputs)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "patch_classes.csv", table.to_csv(index=False))
        for c, n in table["class"].value_counts().sort_index().items():
            print(f"{c}: {n}")
        print(f"table: {out / 'patch_classes.csv'}")
        return 0
    res = classify_files(args.model, args.inputs, args.out, image=args.image, images=args.images,
                         pixel_size_nm=args.pixel_size)
    summ = res["summary"]
    for _, r in summ.iterrows():
        d50 = f", d50 {r['d50_nm']:.2f} nm" if r["d50_nm"] is not None and r["d50_nm"] == r["d50_nm"] else ""
        print(f"{r['image']}: {r['class']} {int(r['count'])}{d50}")
    print(f"summary: {res['summary_csv']}")
    if res["histogram"] is not None:
        print(f"histogram: {res['histogram']}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .core.batch import run_batch

    kwargs: dict = {}
    if args.pixel_size is not None:
        kwargs["pixel_size_nm"] = args.pixel_size
    if args.scale != "auto":
        kwargs["scale"] = float(args.scale)
    if args.zoom:
        kwargs["zoom"] = True
    if args.tta:
        kwargs["tta"] = True
    bar = None

    def progress(info: dict) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=info["total"], desc="images", unit="img", dynamic_ncols=True)
        bar.update(1)
        if info["status"] != "ok":
            tqdm.write(f"failed: {info['key']}: {info.get('error')}")

    try:
        res = run_batch(None if args.model in ("starter", "default") else args.model, args.inputs, args.out,
                        scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads,
                        groups=args.groups, device=args.device, retry_failed=not args.no_retry,
                        predict_kwargs=kwargs, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"{len(res.done)} images predicted, {len(res.skipped)} already done (skipped), {len(res.failed)} failed "
          f"in {res.seconds:.1f} s" + (f" ({res.throughput:.2f} images/s)" if res.done else ""))
    for key in res.failed:
        e = res.manifest["images"][key]
        print(f"  failed: {key}: {e.get('error')}")
    g = res.groups
    if g is not None and len(g):
        for _, r in g[g["class"] == "all"].iterrows():
            unit = "nm" if r["size_column"] == "ecd_nm" else "px"
            d50 = f"d50 {r['d50']:.3g} {unit}" if r["d50"] == r["d50"] and r["d50"] is not None else "d50 n/a"
            print(f"  {r['group']}: {int(r['n_images'])} images, {int(r['count'])} objects, {d50}")
    print(f"per-group statistics: {res.out / 'groups.csv'}; manifest: {res.out / 'manifest.json'}")
    return 1 if res.failed else 0


def _rehearsal(text: str):
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nanodefect",
        description="Count, measure and map nanoparticles and defects in micrographs (headless side of napari-nanodefect).",
    )
    p.add_argument("--version", action="version", version=f"napari-nanodefect {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="pixel size, vendor, info bar and scale bar of image files")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--json", action="store_true", help="print JSON (one object, or a list for several files)")
    s.add_argument("--metadata", action="store_true", help="include the vendor metadata in the JSON")
    s.add_argument("--plane", type=int, default=0, help="page/frame of a multi-page file (default 0)")
    s.add_argument("--pixel-size", type=float, default=None, metavar="NM", help="override the pixel size (nm)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("convert", help="convert annotations: LabelMe <-> COCO <-> label TIFFs")
    s.add_argument("input", metavar="IN", help="LabelMe JSON file or folder, COCO JSON, or label TIFF(s)")
    s.add_argument("--to", required=True, choices=["coco", "labelme", "labels"])
    s.add_argument("--out", required=True, help="output file (coco) or folder (labelme, labels)")
    s.add_argument("--images", default=None, metavar="DIR", help="folder with the images COCO refers to")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("train", help="fine-tune a particle model on annotated crops (LabelMe or COCO); "
                                     "or train a defect segmenter (--task defects) or an image classifier (--task classify)")
    s.add_argument("annotations", nargs="+", metavar="ANN.json",
                   help="LabelMe files/folders or COCO files; for --task classify: class folders "
                        "(one sub-folder per class), a CSV tag table (image,class) or LabelMe files with flags")
    s.add_argument("--task", default="particles", choices=["particles", "defects", "classify"],
                   help="particles (default), defects (multi-label line/area/point defect segmenter) or classify "
                        "(ordered vs disordered, or any image classes)")
    s.add_argument("--out", required=True, metavar="MODEL_DIR")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--time-budget", type=float, default=60.0, metavar="S", help="seconds of training (default 60); for particle models the whole call, data set-up and saving included")
    g.add_argument("--epochs", type=int, default=None, metavar="N")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--from", dest="base", default="starter", metavar="MODEL_DIR",
                   help="start from this model (default: the shipped starter; 'none' = a new model)")
    s.add_argument("--images", default=None, metavar="DIR", help="folder of the images a COCO file refers to")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--background-size", type=float, default=None, metavar="D",
                   help="particles: subtract the support (median filter D particle diameters wide) before "
                        "normalising; default: the base model's setting (the starter's); 0 = off")
    s.add_argument("--keep", default="auto", choices=["auto", "best", "last"],
                   help="particles: weights to save: 'auto' = the final ones, or the best validated ones when "
                        "cancelled (default); 'best' = the checkpoint with the lowest validation loss")
    s.add_argument("--rehearsal", default="auto", type=_rehearsal, metavar="N",
                   help="particles: synthetic micrographs mixed into the training patches so a short fine-tune "
                        "keeps what the starter knew (default 'auto': 8 when fine-tuning the starter on one "
                        "class, else 0; 0 = off)")
    s.add_argument("--paste", type=float, default=0.0, metavar="P",
                   help="particles: probability that a training patch gets 1-4 labelled particles pasted in "
                        "(copy-paste augmentation onto support like their own; default 0 = off)")
    s.add_argument("--classes", default=None, metavar="A,B,...",
                   help="defects/classify: class names in order (default: the labels found)")
    s.add_argument("--line-width-nm", type=float, default=None, metavar="NM",
                   help="defects: width lines are drawn at (default: half the annotated particle diameter)")
    s.add_argument("--line-width-px", type=float, default=None, metavar="PX", help="defects: line width in px")
    s.add_argument("--arch", default="Unet", choices=["FPN", "Unet"],
                   help="defects: network (default Unet: better than FPN on thin and hidden lines, see docs/defects.md)")
    s.add_argument("--encoder", default=None, help="defects/classify: encoder (default resnet18 / resnet10t)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("predict", help="segment whole images tile by tile")
    s.add_argument("model", metavar="MODEL_DIR", help="a model folder, or 'starter'")
    s.add_argument("images", nargs="+", metavar="IMAGE")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--scale", default="auto", help="network px per image px, or auto (default)")
    s.add_argument("--pixel-size", type=float, default=None, metavar="NM", help="pixel size of the images (nm)")
    s.add_argument("--tile", type=int, default=None, help="tile size in network px (default from the model)")
    s.add_argument("--overlap", type=int, default=None, help="tile overlap in network px")
    s.add_argument("--tta", action="store_true",
                   help="particle models: average the maps over 4 flipped/transposed views (~4x slower, fewer spurious objects)")
    s.add_argument("--zoom", action="store_true",
                   help="particle models: a second pass at 1.39x the scale adds particles too small for the first "
                        "(~2x the network time; docs/model.md)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--precision", default=None, choices=["auto", "fp32"],
                   help="particle and defect models: 'auto' (default; or $NANODEFECT_PRECISION) runs the network "
                        "in float16 on CUDA and bfloat16 on CPUs with native bf16 (~1.6x faster, same counts on the "
                        "benchmark); 'fp32' always float32")
    s.add_argument("--threshold", type=float, default=None,
                   help="defect models: probability threshold (default: the model's calibrated one, else 0.5)")
    s.add_argument("--low-threshold", type=float, default=None,
                   help="defect models: hysteresis low threshold (default: the model's calibrated one, else none)")
    s.add_argument("--probabilities", action="store_true",
                   help="defect models: also write <stem>_defects_prob.tif (probability x255 per class)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("batch", help="predict whole folders: resumable (manifest), grouped statistics, "
                                     "local processes or a dask cluster")
    s.add_argument("model", metavar="MODEL_DIR", help="a particle model folder, or 'starter'")
    s.add_argument("inputs", nargs="+", metavar="FOLDER_OR_GLOB", help="folders (searched recursively), globs, files")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--scheduler", default="local",
                   help="local (processes on this machine, default) or a dask scheduler address tcp://host:8786")
    s.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    s.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / workers)")
    s.add_argument("--groups", default=None, metavar="CSV",
                   help="CSV with columns image,group (or sample); default: group = sub-folder")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--pixel-size", type=float, default=None, metavar="NM", help="pixel size of all images (nm)")
    s.add_argument("--scale", default="auto", help="network px per image px, or auto (default)")
    s.add_argument("--zoom", action="store_true",
                   help="a second pass at 1.39x the scale adds particles too small for the first (~2x the network time)")
    s.add_argument("--tta", action="store_true",
                   help="average the network maps over 4 flipped views (~4x the network time, fewer spurious particles)")
    s.add_argument("--no-retry", action="store_true", help="do not retry images that failed in an earlier run")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_batch)

    s = sub.add_parser("order", help="particle ordering vs complete spatial randomness (Clark-Evans, Ripley's L)")
    s.add_argument("input", metavar="LABELS.tif|ANN.json", help="instance label TIFF, LabelMe JSON or COCO JSON")
    s.add_argument("--image", default=None, metavar="IMG", help="the micrograph (pixel size, info bar)")
    s.add_argument("--pixel-size", type=float, default=None, metavar="NM")
    s.add_argument("--images", default=None, metavar="DIR", help="folder of the images a COCO file refers to")
    s.add_argument("--seed", type=int, default=0, help="seed of the CSR envelope simulations")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.add_argument("--curves", action="store_true", help="with --json: include L(r)-r and its envelope")
    s.set_defaults(func=cmd_order)

    s = sub.add_parser("classify", help="per-object classes: train a classifier on labelled objects or patches, "
                                        "apply it to the objects of label images")
    csub = s.add_subparsers(dest="classify_command", required=True, metavar="ACTION")
    c = csub.add_parser("train", help="cross-validate, then train on all objects and save the classifier")
    c.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="LabelMe/COCO files (object label = class), label TIFFs with classes, or patch folders "
                        "(class sub-folders, or the class in the file name: SF1_3.tif)")
    c.add_argument("--out", required=True, metavar="MODEL_DIR")
    c.add_argument("--engine", default="rf", choices=["rf", "cnn"],
                   help="rf: random forest on FFT-radial + intensity + shape features (default); cnn: small CNN on crops")
    c.add_argument("--features", default="extended", choices=["extended", "groschner"],
                   help="rf features: extended (default) or Groschner et al.'s five")
    c.add_argument("--epochs", type=int, default=40, help="cnn: training epochs (default 40)")
    c.add_argument("--cv", type=int, default=5, metavar="K", help="cross-validation folds before training (0: none)")
    c.add_argument("--grouped", action="store_true", help="keep each image's objects in one fold")
    c.add_argument("--classes", default=None, metavar="A,B,...", help="class names in order (default: all found)")
    c.add_argument("--ignore-class", default=None, metavar="NAME",
                   help="leave out objects of this class (e.g. the unclassified 'particle')")
    c.add_argument("--crop-size", type=int, default=None, metavar="PX",
                   help="crop side in px (default 48; square patches of one size keep theirs)")
    c.add_argument("--pad", type=float, default=1.25, help="crop side / object size (default 1.25)")
    c.add_argument("--image", default=None, metavar="IMG", help="the micrograph of a single label TIFF")
    c.add_argument("--images", default=None, metavar="DIR", help="folder of the images a COCO file refers to")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_classify_train)
    c = csub.add_parser("apply", help="classify every object of label TIFFs / annotations (or patches)")
    c.add_argument("model", metavar="MODEL_DIR")
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="label TIFFs (from predict), LabelMe or COCO files; with --patches: patch files or folders")
    c.add_argument("--out", required=True, metavar="DIR")
    c.add_argument("--image", default=None, metavar="IMG", help="the micrograph of a single label TIFF")
    c.add_argument("--images", default=None, metavar="DIR", help="folder of the images a COCO file refers to")
    c.add_argument("--pixel-size", type=float, default=None, metavar="NM")
    c.add_argument("--patches", action="store_true", help="the inputs are patch images, one object each")
    c.set_defaults(func=cmd_classify_apply)

    s = sub.add_parser("measure", help="particle table in nm, population summary and size histogram")
    s.add_argument("input", metavar="LABELS.tif|ANN.json", help="instance label TIFF, LabelMe JSON or COCO JSON")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--image", default=None, metavar="IMG",
                   help="the micrograph: pixel size from its metadata, intensities, info bar")
    s.add_argument("--pixel-size", type=float, default=None, metavar="NM", help="pixel size (nm), overrides the image's")
    s.add_argument("--images", default=None, metavar="DIR", help="folder with the images a COCO file refers to")
    s.add_argument("--bins", default="auto", help="histogram bins: a number or 'auto' (default)")
    s.add_argument("--edge-correction", default="miles-lantuejoul", choices=["miles-lantuejoul", "exclude", "none"],
                   help="particles cut by the border: weighted out (default), dropped, or used as they are")
    s.add_argument("--refine", default=None, choices=["gaussian"],
                   help="refine contours by 2-D Gaussian fits to the image (STM height maps; needs the image)")
    s.set_defaults(func=cmd_measure)

    s = sub.add_parser("skeleton", help="line-defect skeleton lengths in nm from a mask")
    s.add_argument("mask", metavar="MASK.tif", help="binary mask, class-label image or one channel per class")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--pixel-size", type=float, default=None, metavar="NM",
                   help="pixel size (nm); default from the file's metadata")
    s.add_argument("--prune", type=float, default=None, metavar="NM", help="remove end branches shorter than this (nm)")
    s.set_defaults(func=cmd_skeleton)

    s = sub.add_parser("evaluate", help="score a prediction against the truth (LabelMe, COCO, label TIFFs)")
    s.add_argument("--truth", required=True, metavar="T", help="truth: file or folder (LabelMe, COCO, label TIFFs)")
    s.add_argument("--pred", required=True, metavar="P", help="prediction: file or folder")
    s.add_argument("--iou", type=float, default=0.5, help="IoU threshold of a match (default 0.5)")
    s.add_argument("--images", default=None, metavar="DIR", help="folder with the images COCO files refer to")
    s.add_argument("--json", action="store_true", help="print the full result as JSON")
    s.add_argument("--out", default=None, metavar="FILE", help="also write the JSON result to FILE")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("models", help="the shipped models")
    s.add_argument("--default", action="store_true", help="print the starter model's folder")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("demo", help="run the pipeline on a built-in synthetic micrograph")
    s.add_argument("--out", default="nanodefect-demo", help="output folder (default ./nanodefect-demo)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--time-budget", type=float, default=45.0, metavar="S", help="fine-tuning seconds (default 45)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NanodefectError as exc:
        print(f"nanodefect: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nanodefect: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
