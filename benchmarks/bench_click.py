"""Click-to-label speed (``core.annotations.propose``): target <= 100 ms per click.

A 4096x4096 uint16 synthetic HAADF micrograph with 6000 particles 10-40 px across
(log-normal, median ~19 px) and its exact labels. 50 particles spread over the image
(every 100th label off the border, the first 50) are clicked at their centroid:

1. method ``"threshold"`` with the expected diameter given (the napari widget passes the
   median of the particles already labelled), with the whole label image passed as
   ``labels`` (the clicked particle removed from it, as when it is not labelled yet);
2. the same without a diameter (the first clicks: the size is estimated at the click);
3. method ``"model"`` with the shipped starter model on the CPU (10 clicks), which may
   exceed 100 ms.

Median and max time per click, their ratio to the 100 ms target, and the IoU of the
proposals with the true particles are printed; the first call in the process (imports
and first-use costs) is printed apart. Run: ``python benchmarks/bench_click.py``.
Timings on a shared 2-core machine vary by about +-30 %.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage as ndi

TARGET_MS = 100.0


def clicks(labels: np.ndarray, n: int = 50, step: int = 100) -> list[tuple[int, tuple[float, float]]]:
    """``(label, centroid)`` of every ``step``-th particle that does not touch the border."""
    objs = ndi.find_objects(labels)
    H, W = labels.shape
    out = []
    for k in range(1, len(objs) + 1, step):
        sl = objs[k - 1]
        if sl is None or sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == H or sl[1].stop == W:
            continue
        c = ndi.center_of_mass(labels[sl] == k)
        out.append((k, (c[0] + sl[0].start, c[1] + sl[1].start)))
        if len(out) == n:
            break
    return out


def run(image, labels, areas, picks, with_labels=False, **kw) -> tuple[list[float], list[float], list[str], int]:
    """Time one proposal per pick; returns times (ms), IoUs with the true particle, methods
    and the number of refused clicks. ``with_labels``: pass the whole label image, with the
    clicked particle unlabelled (as before it is labelled)."""
    from napari_nanodefect.core.annotations.propose import propose_object
    from napari_nanodefect.core.errors import NanodefectError

    times, ious, methods, refused = [], [], [], 0
    for k, c in picks:
        if with_labels:
            r, cc = int(round(c[0])), int(round(c[1]))
            sl = (slice(max(r - 300, 0), r + 300), slice(max(cc - 300, 0), cc + 300))
            saved = labels[sl].copy()
            labels[sl][saved == k] = 0
            kw["labels"] = labels
        t0 = time.perf_counter()
        try:
            p = propose_object(image, c, **kw)
        except NanodefectError:
            p = None
        times.append(1000 * (time.perf_counter() - t0))
        if with_labels:
            labels[sl] = saved
        if p is None:
            refused += 1
            ious.append(0.0)
            continue
        inter = int(np.count_nonzero(p.mask & (labels[p.bbox()] == k)))
        ious.append(inter / (p.area_px + int(areas[k]) - inter))
        methods.append(p.method)
    return times, ious, methods, refused


def report(name: str, times, ious, methods, refused) -> None:
    med, worst = float(np.median(times)), float(np.max(times))
    used = {m: methods.count(m) for m in sorted(set(methods))}
    print(f"| {name} | {len(times)} | {med:.1f} | {worst:.1f} | {med / TARGET_MS:.2f} | {worst / TARGET_MS:.2f} | "
          f"{np.median(ious):.3f} | {refused} | {used} |")


def main() -> None:
    from napari_nanodefect.core.synthetic import make_particles

    t0 = time.perf_counter()
    syn = make_particles(shape=(4096, 4096), n=6000, median_diameter_nm=10.0, sigma=0.35, pixel_size_nm=0.5,
                         mode="haadf", dtype="uint16", seed=0)
    gen = time.perf_counter() - t0
    image, labels = syn.image, syn.labels.astype(np.int32)
    diam = syn.diameters_nm / syn.pixel_size_nm
    d_med = float(np.median(diam))
    picks = clicks(labels)
    print(f"image {image.shape[0]}x{image.shape[1]} {image.dtype}, {labels.max()} particles, diameters "
          f"{np.percentile(diam, 5):.0f}-{np.percentile(diam, 95):.0f} px (5-95 %), median {d_med:.1f} px "
          f"(generated in {gen:.1f} s); {len(picks)} clicks at particle centroids")

    t0 = time.perf_counter()
    from napari_nanodefect.core.annotations.propose import propose_object

    imp = time.perf_counter() - t0
    c0 = picks[0][1]
    t0 = time.perf_counter()
    propose_object(image, c0, diameter_px=d_med)
    first = 1000 * (time.perf_counter() - t0)
    print(f"first call in the process: {first:.0f} ms (+{1000 * imp:.0f} ms import); warm figures below")
    print()
    print("| method | clicks | median ms | max ms | median / 100 ms | max / 100 ms | median IoU | refused | methods |")
    print("|---|---|---|---|---|---|---|---|---|")

    areas = np.bincount(labels.ravel())
    report("threshold, diameter given, labels given", *run(image, labels, areas, picks, True, diameter_px=d_med))
    report("threshold, diameter given", *run(image, labels, areas, picks, diameter_px=d_med))
    report("threshold, no diameter (estimated)", *run(image, labels, areas, picks))

    # 3. the starter model on the CPU
    from napari_nanodefect.core.segment import default_model_dir, load_model

    t0 = time.perf_counter()
    model = load_model(default_model_dir(), device="cpu")
    load = time.perf_counter() - t0
    propose_object(image, picks[0][1], diameter_px=d_med, model=model)  # warm-up (first forward pass)
    report("model (starter, CPU), diameter given", *run(image, labels, areas, picks[:10], diameter_px=d_med, model=model))
    report("model (starter, CPU), no diameter", *run(image, labels, areas, picks[:10], model=model))
    print()
    print(f"(model loaded in {load:.1f} s; the model window is 6 diameters, >= 192 network px: "
          f"one tile, a few tens of ms of network time per click on an idle 2-core CPU)")


if __name__ == "__main__":
    main()
