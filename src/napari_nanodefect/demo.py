"""``nanodefect demo``: the pipeline on a built-in synthetic micrograph, offline.

What it does today (the few-shot training and prediction steps join when they land):

1. draws a synthetic HAADF-like micrograph with exact ground truth and saves it as a
   calibrated TIFF (0.5 nm/px),
2. reads it back with :func:`read_image` (pixel size from the file),
3. labels two crops from the ground truth, as a user would, and writes them as LabelMe,
4. writes the full ground truth as COCO and as an instance label TIFF, converts the
   LabelMe file to COCO and back, checking that every polygon survives,
5. measures the equivalent circular diameter D = 2*sqrt(S/pi) of every particle, writes ``particles.csv`` and a size histogram PNG (nm axis), and prints
   the count, the median size and the pixel size with its source.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from .core.annotations import (
    AnnotationSet,
    Crop,
    LabelImage,
    convert,
    labels_to_set,
    read_labelme,
    write_coco,
    write_label_tiff,
    write_labelme,
)
from .core.atomic import atomic_write_bytes, atomic_write_text
from .core.io import read_image
from .core.io.write import write_tiff
from .core.synthetic import make_particles

CROPS = ((24, 24, 280, 280), (472, 424, 744, 696))  # (x0, y0, x1, y1) px


def _inside(obj, crop: Crop) -> bool:
    x0, y0, x1, y1 = obj.bbox
    return x0 >= crop.x0 and y0 >= crop.y0 and x1 <= crop.x1 and y1 <= crop.y1


def _histogram_png(path: Path, d_nm: np.ndarray, pixel_size_nm: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    ax.hist(d_nm, bins=20, color="#4a7fb0", edgecolor="white")
    ax.axvline(np.median(d_nm), color="k", ls="--", lw=1, label=f"median {np.median(d_nm):.2f} nm")
    ax.set_xlabel("equivalent circular diameter D (nm)")
    ax.set_ylabel("count")
    ax.set_title(f"synthetic demo, n = {len(d_nm)}, {pixel_size_nm:g} nm/px")
    ax.legend(frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_demo(out: Path, seed: int = 0, shape: tuple[int, int] = (768, 768), verbose: bool = True) -> dict:
    """Run the demo into ``out``; returns the printed figures as a dict."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)

    s = make_particles(shape=shape, n=260, median_diameter_nm=12.0, pixel_size_nm=0.5, mode="haadf", seed=seed)
    image_path = write_tiff(out / "demo.tif", s.image, pixel_size_nm=s.pixel_size_nm)
    m = read_image(image_path)
    say(f"image      {image_path}  {m.data.shape} {m.data.dtype}")
    say(f"pixel size {m.pixel_size_nm:g} nm  (from {m.pixel_size_source})")

    truth = labels_to_set(LabelImage(s.labels, s.classes, m.pixel_size_nm, image_path.name))
    truth.image_path = image_path.name

    crops = [Crop(*c) for c in CROPS]
    train = AnnotationSet(
        image_path=image_path.name,
        image_height=shape[0],
        image_width=shape[1],
        pixel_size_nm=m.pixel_size_nm,
        crops=crops,
        objects=[o for o in truth.objects if any(_inside(o, c) for c in crops)],
    )
    labelme_path = write_labelme(train, out / "demo.json")
    say(f"labelled   {len(train.objects)} particles in {len(crops)} crops -> {labelme_path.name}")

    coco_path = write_coco([truth], out / "demo_truth.coco.json")
    labels_path = write_label_tiff(out / "demo_truth_labels.tif", s.labels, classes=s.classes,
                                   pixel_size_nm=m.pixel_size_nm, image_path=image_path.name)

    # interop check: LabelMe -> COCO -> LabelMe keeps every polygon
    rt_dir = out / "roundtrip"
    coco_rt = convert(labelme_path, "coco", rt_dir / "crops.coco.json")[0]
    back = convert(coco_rt, "labelme", rt_dir / "labelme")[0]
    n_back = len(read_labelme(back).objects)
    if n_back != len(train.objects):
        raise RuntimeError(f"round trip lost polygons: {len(train.objects)} -> {n_back}")

    from skimage.measure import regionprops_table

    props = regionprops_table(s.labels, properties=("label", "area", "centroid"))
    area_nm2 = props["area"] * m.pixel_size_nm**2
    d_nm = 2 * np.sqrt(area_nm2 / np.pi)
    rows = ["label,class,area_nm2,ecd_nm,centroid_x_px,centroid_y_px"]
    for lab, a, d, cy, cx in zip(props["label"], area_nm2, d_nm, props["centroid-0"], props["centroid-1"]):
        rows.append(f"{lab},{s.classes[int(lab)]},{a:.3f},{d:.4f},{cx:.2f},{cy:.2f}")
    csv_path = atomic_write_text(out / "particles.csv", "\n".join(rows) + "\n")
    hist_path = out / "histogram.png"
    _histogram_png(hist_path, d_nm, m.pixel_size_nm)

    result = {
        "count": int(len(d_nm)),
        "median_ecd_nm": float(np.median(d_nm)),
        "drawn_median_ecd_nm": float(np.median(s.diameters_nm)),
        "pixel_size_nm": m.pixel_size_nm,
        "pixel_size_source": m.pixel_size_source,
        "labelled_in_crops": len(train.objects),
        "files": [str(p) for p in (image_path, labelme_path, coco_path, labels_path, csv_path, hist_path)],
        "seconds": time.perf_counter() - t0,
    }
    say(f"count      {result['count']} particles (ground truth)")
    say(f"median D   {result['median_ecd_nm']:.2f} nm  (drawn: {result['drawn_median_ecd_nm']:.2f} nm)")
    say(f"wrote      {', '.join(Path(f).name for f in result['files'])}")
    say(f"done in {result['seconds']:.1f} s -> {out}")
    return result
