"""``nanodefect demo``: the whole few-shot pipeline on a built-in synthetic micrograph, offline.

1. draws a synthetic HAADF-like micrograph with exact ground truth and saves it as a
   calibrated TIFF (0.5 nm/px); reads it back with :func:`read_image`,
2. labels two crops from the ground truth, as a user would, and writes them as LabelMe,
3. fine-tunes the shipped starter model on those crops (default 45 s on the CPU),
4. predicts the whole image tile by tile and writes the instance label TIFF, LabelMe and
   COCO files, a particles CSV (area, D = 2*sqrt(S/pi)) and a size histogram PNG (nm),
5. prints the count, F1 against the ground truth (IoU >= 0.5) and the median size.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from .core.annotations import AnnotationSet, Crop, LabelImage, labels_to_set, write_coco, write_labelme
from .core.atomic import atomic_write_bytes, atomic_write_text
from .core.evaluate import match_instances
from .core.io import read_image
from .core.io.write import write_tiff
from .core.synthetic import make_particles

CROPS = ((24, 24, 280, 280), (472, 424, 744, 696))  # (x0, y0, x1, y1) px


def _inside(obj, crop: Crop) -> bool:
    x0, y0, x1, y1 = obj.bbox
    return x0 >= crop.x0 and y0 >= crop.y0 and x1 <= crop.x1 and y1 <= crop.y1


def histogram_png(path: Path, d_nm: np.ndarray, pixel_size_nm: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    ax.hist(d_nm, bins=20, color="#4a7fb0", edgecolor="white")
    if len(d_nm):
        ax.axvline(np.median(d_nm), color="k", ls="--", lw=1, label=f"median {np.median(d_nm):.2f} nm")
        ax.legend(frameon=False)
    ax.set_xlabel("equivalent circular diameter D (nm)")
    ax.set_ylabel("count")
    ax.set_title(f"{title}, n = {len(d_nm)}, {pixel_size_nm:g} nm/px")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def particles_csv(path: Path, labels: np.ndarray, classes: dict[int, str], pixel_size_nm: float) -> np.ndarray:
    """One row per object: label, class, area (nm^2), D (nm), centroid (px). Returns D."""
    from skimage.measure import regionprops_table

    props = regionprops_table(labels, properties=("label", "area", "centroid"))
    area_nm2 = props["area"] * pixel_size_nm**2
    d_nm = 2 * np.sqrt(area_nm2 / np.pi)
    rows = ["label,class,area_nm2,ecd_nm,centroid_x_px,centroid_y_px"]
    for lab, a, d, cy, cx in zip(props["label"], area_nm2, d_nm, props["centroid-0"], props["centroid-1"]):
        rows.append(f"{lab},{classes.get(int(lab), 'particle')},{a:.3f},{d:.4f},{cx:.2f},{cy:.2f}")
    atomic_write_text(path, "\n".join(rows) + "\n")
    return d_nm


def run_demo(out: Path, seed: int = 0, shape: tuple[int, int] = (768, 768), time_budget_s: float = 45.0,
             verbose: bool = True, epochs: int | None = None) -> dict:
    """Run the demo into ``out``; returns the printed figures as a dict. ``epochs`` (instead
    of the time budget) makes the amount of fine-tuning independent of the machine's load."""
    from .core.segment.outputs import write_prediction
    from .core.segment.predict import predict_image
    from .core.segment.train import train

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)

    s = make_particles(shape=shape, n=260, median_diameter_nm=12.0, pixel_size_nm=0.5, mode="haadf", seed=seed)
    image_path = write_tiff(out / "demo.tif", s.image, pixel_size_nm=s.pixel_size_nm)
    m = read_image(image_path)
    say(f"image      {image_path}  {m.data.shape} {m.data.dtype}, pixel size {m.pixel_size_nm:g} nm ({m.pixel_size_source})")

    truth = labels_to_set(LabelImage(s.labels, s.classes, m.pixel_size_nm, image_path.name))
    truth.image_path = image_path.name
    crops = [Crop(*c) for c in CROPS]
    labelled = AnnotationSet(image_path=image_path.name, image_height=shape[0], image_width=shape[1],
                             pixel_size_nm=m.pixel_size_nm, crops=crops,
                             objects=[o for o in truth.objects if any(_inside(o, c) for c in crops)])
    labelme_path = write_labelme(labelled, out / "demo_crops.json")
    say(f"labelled   {len(labelled.objects)} particles in {len(crops)} crops -> {labelme_path.name}")

    t1 = time.perf_counter()
    res = train([labelme_path], out / "model", base="starter",
                time_budget_s=None if epochs else time_budget_s, epochs=epochs, seed=seed)
    t_train = time.perf_counter() - t1
    say(f"trained    {res.summary['iterations']} iterations in {t_train:.1f} s "
        f"(from {res.summary['base'] or 'scratch'}) -> {res.path}")

    t2 = time.perf_counter()
    pred = predict_image(res.model, m)
    files = write_prediction(pred, image_path, out)
    coco_path = write_coco([files.annotations], out / "predictions.coco.json", categories=res.model.config.classes,
                           include_lines_points=False)
    d_nm = particles_csv(out / "particles.csv", pred.labels, pred.classes, m.pixel_size_nm)
    histogram_png(out / "histogram.png", d_nm, m.pixel_size_nm, "demo prediction")
    t_pred = time.perf_counter() - t2
    score = match_instances(s.labels, pred.labels, 0.5)
    result = {
        "count": pred.count,
        "true_count": int(s.labels.max()),
        "f1": score["f1"],
        "precision": score["precision"],
        "recall": score["recall"],
        "median_ecd_nm": float(np.median(d_nm)) if len(d_nm) else float("nan"),
        "true_median_ecd_nm": float(np.median(s.diameters_nm)),
        "pixel_size_nm": m.pixel_size_nm,
        "train_seconds": t_train,
        "predict_seconds": t_pred,
        "labelled_in_crops": len(labelled.objects),
        "files": [str(p) for p in (image_path, labelme_path, files.labels, files.labelme, coco_path,
                                   out / "particles.csv", out / "histogram.png", res.path)],
        "seconds": time.perf_counter() - t0,
    }
    say(f"predicted  {result['count']} particles in {t_pred:.1f} s (ground truth: {result['true_count']})")
    say(f"F1         {result['f1']:.3f}  (precision {result['precision']:.3f}, recall {result['recall']:.3f}, IoU >= 0.5)")
    say(f"median D   {result['median_ecd_nm']:.2f} nm  (ground truth {result['true_median_ecd_nm']:.2f} nm)")
    say(f"wrote      {', '.join(Path(f).name for f in result['files'])}")
    say(f"done in {result['seconds']:.1f} s -> {out}")
    return result
